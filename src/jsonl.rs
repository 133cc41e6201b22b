//! JSON-lines control sockets: a Unix stream socket where a client writes one JSON request
//! per line and the server writes one JSON answer per line. The supervisor
//! (`control.sock`) and the multicast forwarder (`mroute.sock`) speak it; any part with a
//! status to show can. Requests are whatever serde type the server reads; answers are
//! `serde_json::Value`s.
//!
//! - Server: [`listen`] binds the socket (blocking or, through
//!   `tokio::net::UnixListener::from_std`, async); [`answer_one`] answers one request on a
//!   blocking connection, [`serve_lines`] every request of an async one.
//! - Client: [`request`] (blocking) and [`request_async`] (tokio) send one request and
//!   return the answer; a [`RequestError`] says which step failed and whether anything
//!   listens there at all.

use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Binds a control socket at `path`: makes its directory, refuses with `AddrInUse` when a
/// server already answers there, replaces a stale socket file, and leaves the socket mode
/// 0600 (the requests change things) and non-blocking.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server already answers there",
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `v` as one line of JSON, newline included.
pub fn line(v: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a JSON value serializes");
    out.push(b'\n');
    out
}

/// The longest request line a server reads; a longer one is refused and the connection
/// closed, so a client cannot make a server buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// How long a server waits to hand its answer to a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("request line longer than {MAX_LINE} bytes"),
    )
}

/// Reads one request line (at most [`MAX_LINE`] bytes) from a blocking connection, all of
/// it within `within`: a client that drips bytes is given up as surely as a silent one.
pub fn read_line(stream: &UnixStream, within: Duration) -> io::Result<String> {
    use std::io::Read;
    stream.set_nonblocking(false)?;
    let deadline = std::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        };
        let end = chunk[..n].iter().position(|&b| b == b'\n');
        buf.extend_from_slice(&chunk[..end.unwrap_or(n)]);
        if buf.len() > MAX_LINE {
            return Err(too_long());
        }
        if end.is_some() || n == 0 {
            return String::from_utf8(buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Writes one answer line, giving up on a client that does not read within
/// [`WRITE_TIMEOUT`].
pub fn write_answer(stream: &UnixStream, reply: &Value) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    (&*stream).write_all(&line(reply))
}

/// Reads one request line from a blocking connection (see [`read_line`]: bounded in size
/// and, as a whole, in time), writes what `handle` answers to it, and closes. `handle`
/// gets the parse error when the line is not a `Q`, so the answer can say what is
/// accepted.
pub fn answer_one<Q: DeserializeOwned>(
    stream: UnixStream,
    within: Duration,
    handle: impl FnOnce(Result<Q, serde_json::Error>) -> Value,
) -> io::Result<()> {
    let text = read_line(&stream, within)?;
    let reply = handle(serde_json::from_str(&text));
    write_answer(&stream, &reply)
}

/// Answers every request line of an async connection with what `handle` returns, until
/// the client closes it. A line longer than [`MAX_LINE`] gets an error answer and the
/// connection is closed; an answer the client does not read within [`WRITE_TIMEOUT`]
/// closes it too.
pub async fn serve_lines<Q, F, Fut>(stream: tokio::net::UnixStream, mut handle: F)
where
    Q: DeserializeOwned,
    F: FnMut(Result<Q, serde_json::Error>) -> Fut,
    Fut: Future<Output = Value>,
{
    use tokio::io::AsyncReadExt;
    let (r, mut w) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(r);
    loop {
        let mut buf = Vec::new();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            let reply = serde_json::json!({"ok": false, "error": too_long().to_string()});
            let _ = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&line(&reply))).await;
            break;
        }
        let text = String::from_utf8_lossy(&buf);
        let reply = handle(serde_json::from_str(&text)).await;
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&line(&reply))).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
}

/// A request that failed: the step (`"connecting to"`, `"writing to"`, `"reading from"`,
/// `"parsing the answer of"`) and why.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct RequestError {
    pub op: &'static str,
    pub source: io::Error,
}

impl RequestError {
    /// Nothing listens there: no socket file, or a stale one.
    pub fn not_running(&self) -> bool {
        self.op == "connecting to"
            && matches!(
                self.source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            )
    }
}

fn step(op: &'static str) -> impl FnOnce(io::Error) -> RequestError {
    move |source| RequestError { op, source }
}

fn parse_answer(text: &str) -> Result<Value, RequestError> {
    serde_json::from_str(text).map_err(|e| RequestError {
        op: "parsing the answer of",
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// Sends `req` as one line to the server at `path` and returns its answer line, waiting
/// at most `within` for it (blocking).
pub fn request(path: &Path, req: &impl Serialize, within: Duration) -> Result<Value, RequestError> {
    let mut s = UnixStream::connect(path).map_err(step("connecting to"))?;
    s.set_read_timeout(Some(within))
        .map_err(step("connecting to"))?;
    s.write_all(&line(req)).map_err(step("writing to"))?;
    let mut text = String::new();
    BufReader::new(s)
        .read_line(&mut text)
        .map_err(step("reading from"))?;
    parse_answer(&text)
}

/// [`request`] for a tokio task.
pub async fn request_async(
    path: &Path,
    req: &impl Serialize,
    within: Duration,
) -> Result<Value, RequestError> {
    let work = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(step("connecting to"))?;
        s.write_all(&line(req)).await.map_err(step("writing to"))?;
        let mut text = String::new();
        tokio::io::BufReader::new(s)
            .read_line(&mut text)
            .await
            .map_err(step("reading from"))?;
        parse_answer(&text)
    };
    tokio::time::timeout(within, work)
        .await
        .unwrap_or_else(|_| Err(step("reading from")(io::ErrorKind::TimedOut.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize)]
    struct Ask {
        cmd: String,
    }

    #[test]
    fn a_request_gets_its_answer_and_a_second_server_is_refused() {
        let dir = std::env::temp_dir().join(format!("jsonl-test-{}", std::process::id()));
        let path = dir.join("x.sock");
        let l = listen(&path).expect("listen");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = std::thread::spawn(move || {
            l.set_nonblocking(false).unwrap();
            let (s, _) = l.accept().unwrap();
            answer_one(
                s,
                Duration::from_secs(5),
                |q: Result<Ask, _>| serde_json::json!({"echo": q.unwrap().cmd}),
            )
            .unwrap();
            l
        });
        let v = request(
            &path,
            &Ask {
                cmd: "status".into(),
            },
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(v["echo"], "status");
        let l = server.join().unwrap();
        let e = listen(&path).expect_err("a live server holds the socket");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        // The socket file is stale now: nobody answers, and a new server may take it.
        let e = request(&path, &Ask { cmd: "x".into() }, Duration::from_secs(1)).unwrap_err();
        assert!(e.not_running(), "{e}");
        listen(&path).expect("a stale socket is replaced");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("socketpair")
    }

    #[test]
    fn a_line_longer_than_the_cap_is_refused_unread() {
        let (server, mut client) = pair();
        let writer = std::thread::spawn(move || {
            let long = vec![b'a'; MAX_LINE * 4];
            let _ = client.write_all(&long);
            let _ = client.write_all(b"\n");
        });
        let mut called = false;
        let r = answer_one(server, Duration::from_secs(10), |_: Result<Ask, _>| {
            called = true;
            Value::Null
        });
        let e = r.expect_err("a too long line is an error");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(!called, "the handler never sees a too long line");
        drop(writer);
    }

    #[test]
    fn a_client_dripping_bytes_is_given_up_at_the_deadline() {
        let (server, mut client) = pair();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        // One byte every 50 ms for up to 20 s, then the newline: each read is quick, the
        // whole line is not.
        let writer = std::thread::spawn(move || {
            for _ in 0..400 {
                if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let _ = client.write_all(b" ");
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = client.write_all(b"{\"cmd\":\"x\"}\n");
        });
        let r = answer_one(server, Duration::from_millis(500), |_: Result<Ask, _>| {
            Value::Null
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = r.expect_err("a dripping client is given up");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        writer.join().unwrap();
    }

    #[test]
    fn serve_lines_refuses_a_too_long_line_and_closes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let server = tokio::spawn(serve_lines(a, |_: Result<Ask, _>| async {
                serde_json::json!({"handled": true})
            }));
            let (r, mut w) = b.into_split();
            let long = vec![b'a'; MAX_LINE * 2];
            let writer = tokio::spawn(async move {
                let _ = w.write_all(&long).await;
                let _ = w.write_all(b"\n").await;
                w
            });
            let mut text = String::new();
            tokio::io::BufReader::new(r)
                .read_line(&mut text)
                .await
                .unwrap();
            assert!(text.contains("longer than"), "{text}");
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server closes the connection")
                .unwrap();
            drop(writer);
        });
    }
}
