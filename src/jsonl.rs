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

/// Reads one request line from a blocking connection (a silent client is given up after
/// `within`), writes what `handle` answers to it, and closes. `handle` gets the parse
/// error when the line is not a `Q`, so the answer can say what is accepted.
pub fn answer_one<Q: DeserializeOwned>(
    stream: UnixStream,
    within: Duration,
    handle: impl FnOnce(Result<Q, serde_json::Error>) -> Value,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(within))?;
    let mut text = String::new();
    BufReader::new(&stream).read_line(&mut text)?;
    let reply = handle(serde_json::from_str(&text));
    (&stream).write_all(&line(&reply))
}

/// Answers every request line of an async connection with what `handle` returns, until
/// the client closes it.
pub async fn serve_lines<Q, F, Fut>(stream: tokio::net::UnixStream, mut handle: F)
where
    Q: DeserializeOwned,
    F: FnMut(Result<Q, serde_json::Error>) -> Fut,
    Fut: Future<Output = Value>,
{
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        let reply = handle(serde_json::from_str(&text)).await;
        if w.write_all(&line(&reply)).await.is_err() {
            break;
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
}
