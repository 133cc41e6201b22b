//! The control socket (`<state_dir>/control.sock`, mode 0600): one JSON request per line
//! (`{"cmd":"status"}`, `{"cmd":"services"}`, `{"cmd":"down"}`), one JSON answer per line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Msg, avahi};
use crate::jsonl;

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
    let listener = jsonl::listen(path)
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|source| ControlError::Io {
            op: "listening on",
            object: path.display().to_string(),
            source,
        })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, dir) = (tx.clone(), dir.clone());
            tokio::spawn(jsonl::serve_lines(stream, move |c: Result<Command, _>| {
                let (tx, dir) = (tx.clone(), dir.clone());
                async move {
                    match c {
                        Err(e) => json!({"error": format!("not a request: {e}")}),
                        Ok(c) => answer(&c.cmd, &tx, &dir).await,
                    }
                }
            }));
        }
    });
    Ok(())
}

async fn answer(cmd: &str, tx: &mpsc::UnboundedSender<Msg>, dir: &Path) -> Value {
    let gone = || json!({"error": "the supervisor is going down"});
    match cmd {
        "status" => {
            let (o, r) = oneshot::channel();
            let _ = tx.send(Msg::Control(Request::Status(o)));
            let Ok(mut v) = r.await else { return gone() };
            let parts = dir.join(crate::plan::PARTS_DIR);
            let mroute = parts.join("mroute.sock");
            if mroute.exists() {
                v["mroute"] = ask_mroute(&mroute).await;
            }
            let translate = parts.join("translate.sock");
            if translate.exists() {
                v["translate"] = ask_status(&translate).await;
            }
            let headend = parts.join("headend.sock");
            if headend.exists() {
                v["headend"] = ask_status(&headend).await;
            }
            let frr = parts.join(crate::plan::routing::PART_SOCKET);
            if frr.exists() {
                v["routing"] = ask_status(&frr).await;
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
    let ask = Command {
        cmd: "status".into(),
    };
    match jsonl::request_async(sock, &ask, Duration::from_secs(1)).await {
        Ok(v) => v,
        Err(e) => json!({"error": format!("{} {}: {}", e.op, sock.display(), e.source)}),
    }
}

/// A status answer read as health: healthy iff it says `"healthy": true`; else why (its
/// `why`, its `error`, or that it said not healthy).
pub fn health_of(v: &Value) -> (bool, Option<String>) {
    if v["healthy"].as_bool() == Some(true) {
        return (true, None);
    }
    let why = v["why"]
        .as_str()
        .or(v["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| match v.get("healthy") {
            Some(h) => format!("its status says healthy: {h}"),
            None => "its status does not say it is healthy".into(),
        });
    (false, Some(why))
}

/// Client side: sends one command and reads the answer (blocking).
pub fn request(sock: &Path, cmd: &str, within: Duration) -> Result<Value, ControlError> {
    let ask = Command { cmd: cmd.into() };
    jsonl::request(sock, &ask, within).map_err(|e| {
        if e.not_running() {
            ControlError::NotRunning(sock.parent().unwrap_or(sock).to_path_buf())
        } else if e.op == "parsing the answer of" {
            ControlError::Answer(sock.display().to_string(), e.source.to_string())
        } else {
            ControlError::Io {
                op: e.op,
                object: sock.display().to_string(),
                source: e.source,
            }
        }
    })
}
