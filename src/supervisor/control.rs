//! The control socket (`<state_dir>/control.sock`, mode 0600): one JSON request per line
//! (`{"cmd":"status"}`, `{"cmd":"services"}`, `{"cmd":"down"}`), one JSON answer per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{Msg, avahi};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no site is running in {0} (no control socket answers there)")]
    NotRunning(PathBuf),
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        source: std::io::Error,
    },
    #[error("reading the answer of {0}: {1}")]
    Answer(String, String),
}

pub enum Request {
    Status(oneshot::Sender<Value>),
    /// The bus of each VLAN's avahi, as (vlan, bus address).
    Services(oneshot::Sender<Vec<(String, String)>>),
    Down(oneshot::Sender<Value>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Command {
    cmd: String,
}

/// Listens on `path` and hands requests to the supervisor's loop.
pub fn serve(path: &Path, tx: mpsc::UnboundedSender<Msg>) -> Result<(), ControlError> {
    let io = |op, source| ControlError::Io {
        op,
        object: path.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| io("listening on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600 of", e))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, tx.clone(), dir.clone()));
        }
    });
    Ok(())
}

async fn connection(stream: tokio::net::UnixStream, tx: mpsc::UnboundedSender<Msg>, dir: PathBuf) {
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match serde_json::from_str::<Command>(&line) {
            Err(e) => json!({"error": format!("not a request: {e}")}),
            Ok(c) => answer(&c.cmd, &tx, &dir).await,
        };
        let mut text = answer.to_string();
        text.push('\n');
        if w.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
}

async fn answer(cmd: &str, tx: &mpsc::UnboundedSender<Msg>, dir: &Path) -> Value {
    let gone = || json!({"error": "the supervisor is going down"});
    match cmd {
        "status" => {
            let (o, r) = oneshot::channel();
            let _ = tx.send(Msg::Control(Request::Status(o)));
            let Ok(mut v) = r.await else { return gone() };
            let mroute = dir.join("mroute.sock");
            if mroute.exists() {
                v["mroute"] = ask_mroute(&mroute).await;
            }
            let headend = dir.join("headend.sock");
            if headend.exists() {
                v["headend"] = ask_status(&headend).await;
            }
            v
        }
        "services" => {
            let (o, r) = oneshot::channel();
            let _ = tx.send(Msg::Control(Request::Services(o)));
            let Ok(buses) = r.await else { return gone() };
            let work = buses.into_iter().map(|(vlan, bus)| async move {
                match avahi::services(&bus, Duration::from_secs(3)).await {
                    Ok(s) => json!({"vlan": vlan, "services": s}),
                    Err(e) => json!({"vlan": vlan, "error": e.to_string()}),
                }
            });
            json!({"vlans": futures_util::future::join_all(work).await})
        }
        "down" => {
            let (o, r) = oneshot::channel();
            let _ = tx.send(Msg::Control(Request::Down(o)));
            r.await.unwrap_or_else(|_| gone())
        }
        other => {
            json!({"error": format!("unknown command {other:?}: use status, services or down")})
        }
    }
}

/// What the multicast forwarder says about itself, passed through as it is.
async fn ask_mroute(sock: &Path) -> Value {
    ask_status(sock).await
}

/// `{"cmd":"status"}` to a child's control socket; its answer, or `{"error": …}`.
pub async fn ask_status(sock: &Path) -> Value {
    let work = async {
        let mut s = tokio::net::UnixStream::connect(sock).await?;
        s.write_all(b"{\"cmd\":\"status\"}\n").await?;
        let mut line = String::new();
        tokio::io::BufReader::new(s).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(Duration::from_secs(1), work).await {
        Ok(Ok(line)) => serde_json::from_str(&line)
            .unwrap_or_else(|e| json!({"error": format!("not JSON: {e}"), "answer": line})),
        Ok(Err(e)) => json!({"error": format!("asking {}: {e}", sock.display())}),
        Err(_) => json!({"error": format!("{} did not answer within 1s", sock.display())}),
    }
}

/// Client side: sends one command and reads the answer (blocking).
pub fn request(sock: &Path, cmd: &str, within: Duration) -> Result<Value, ControlError> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound | ConnectionRefused => {
                ControlError::NotRunning(sock.parent().unwrap_or(sock).to_path_buf())
            }
            _ => ControlError::Io {
                op: "connecting to",
                object: sock.display().to_string(),
                source: e,
            },
        }
    })?;
    let io = |op, source| ControlError::Io {
        op,
        object: sock.display().to_string(),
        source,
    };
    s.set_read_timeout(Some(within))
        .map_err(|e| io("setting timeout on", e))?;
    let line = serde_json::to_string(&Command { cmd: cmd.into() }).expect("serializes") + "\n";
    s.write_all(line.as_bytes())
        .map_err(|e| io("writing to", e))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| io("reading from", e))?;
    serde_json::from_str(&answer)
        .map_err(|e| ControlError::Answer(sock.display().to_string(), e.to_string()))
}
