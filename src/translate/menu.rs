//! Registration with a Multicast Menu, on a thread of its own so a slow or absent Menu
//! never delays anything else. `POST {url}/api/add/` with `{unique_identifier, source,
//! group}` answers 201 and an access code; `POST {url}/api/remove/` with
//! `{unique_identifier, access_code}` takes the stream off. Failed calls are retried with
//! exponential backoff; the first failure is logged, then nothing until a call succeeds.
//! http:// is plain HTTP/1.1 over a TcpStream; https:// goes through the system's `curl`
//! (Debian keeps its TLS up to date; these calls are rare and off the data path).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum MenuJob {
    Add {
        /// The stream's amt:// URL: unique per stream.
        id: String,
        source: String,
        group: String,
    },
    Remove {
        id: String,
    },
    /// After a restart: streams registered before that are not among these are removed.
    Prune {
        keep: Vec<String>,
    },
}

/// `http[s]://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl MenuUrl {
    pub fn parse(url: &str) -> Option<MenuUrl> {
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (false, url.strip_prefix("http://")?),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']')?;
            (
                h.to_string(),
                p.strip_prefix(':').map(str::parse).transpose().ok()?,
            )
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(MenuUrl {
            tls,
            host,
            port: port.unwrap_or(if tls { 443 } else { 80 }),
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MenuError {
    #[error("POST {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("POST {url}: answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("POST {url}: unreadable answer")]
    Garbled { url: String },
}

pub struct Menu;

struct Pending {
    job: MenuJob,
    attempts: u32,
    due: Instant,
}

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
const GIVE_UP_AFTER: u32 = 10;

impl Menu {
    /// Starts the Menu thread; the URL was checked by `Config`. Access codes are kept in
    /// `codes_file` so a restarted translator neither registers a stream twice nor loses
    /// the code it needs to remove it.
    pub fn start(url: &str, codes_file: Option<PathBuf>) -> mpsc::Sender<MenuJob> {
        let (tx, rx) = mpsc::channel();
        let url = MenuUrl::parse(url).unwrap_or(MenuUrl {
            tls: false,
            host: "localhost".into(),
            port: 80,
            path: String::new(),
        });
        let _ = std::thread::Builder::new()
            .name("translate-menu".into())
            .spawn(move || run(url, rx, codes_file));
        tx
    }
}

fn load_codes(path: Option<&Path>) -> HashMap<String, String> {
    path.and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_codes(path: Option<&Path>, codes: &HashMap<String, String>) {
    if let Some(p) = path {
        let tmp = p.with_extension("tmp");
        let r = std::fs::write(&tmp, serde_json::to_vec(codes).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, p));
        if let Err(e) = r {
            tracing::warn!("saving Multicast Menu access codes to {}: {e}", p.display());
        }
    }
}

fn run(url: MenuUrl, rx: mpsc::Receiver<MenuJob>, codes_file: Option<PathBuf>) {
    let file = codes_file.as_deref();
    let mut codes = load_codes(file);
    let mut queue: Vec<Pending> = Vec::new();
    let mut failing = false;
    loop {
        let wait = queue
            .iter()
            .map(|p| p.due.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(MenuJob::Prune { keep }) => {
                for id in codes.keys().filter(|id| !keep.contains(id)) {
                    queue.push(Pending {
                        job: MenuJob::Remove { id: id.clone() },
                        attempts: 0,
                        due: Instant::now(),
                    });
                }
            }
            Ok(MenuJob::Add { id, .. }) if codes.contains_key(&id) => {
                tracing::info!("{id} is on the Multicast Menu already");
            }
            Ok(job) => {
                // A removal of a stream whose add never went through cancels the add.
                if let MenuJob::Remove { id } = &job
                    && !codes.contains_key(id)
                {
                    let before = queue.len();
                    queue.retain(|p| !matches!(&p.job, MenuJob::Add { id: a, .. } if a == id));
                    if queue.len() != before {
                        continue;
                    }
                }
                queue.push(Pending {
                    job,
                    attempts: 0,
                    due: Instant::now(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut i = 0;
        while i < queue.len() {
            if queue[i].due > now {
                i += 1;
                continue;
            }
            let result = match &queue[i].job {
                MenuJob::Add { id, source, group } => add(&url, id, source, group).map(|code| {
                    tracing::info!("Added {id} to the Multicast Menu (access code {code})");
                    codes.insert(id.clone(), code);
                    save_codes(file, &codes);
                }),
                MenuJob::Remove { id } => match codes.get(id) {
                    Some(code) => remove(&url, id, code).map(|_| {
                        tracing::info!("Removed {id} from the Multicast Menu");
                        codes.remove(id);
                        save_codes(file, &codes);
                    }),
                    None => Ok(()),
                },
                MenuJob::Prune { .. } => Ok(()),
            };
            match result {
                Ok(()) => {
                    failing = false;
                    queue.swap_remove(i);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            "Multicast Menu call failed, retrying with backoff (further failures are not logged): {e}"
                        );
                        failing = true;
                    }
                    let p = &mut queue[i];
                    p.attempts += 1;
                    if p.attempts >= GIVE_UP_AFTER {
                        queue.swap_remove(i);
                        continue;
                    }
                    p.due = now + (FIRST_RETRY * 2u32.pow(p.attempts - 1)).min(MAX_RETRY);
                    i += 1;
                }
            }
        }
    }
}

fn add(url: &MenuUrl, id: &str, source: &str, group: &str) -> Result<String, MenuError> {
    let body = serde_json::json!({"unique_identifier": id, "source": source, "group": group});
    let (status, text, full) = post(url, "/api/add/", &body.to_string())?;
    if status != 201 && status != 200 {
        return Err(MenuError::Status {
            url: full,
            status,
            body: text,
        });
    }
    // The code comes as JSON ({"access_code": …}) or as the bare body.
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Object(m) => m.get("access_code").map(|c| match c {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| text.trim().to_string());
    Ok(code)
}

fn remove(url: &MenuUrl, id: &str, code: &str) -> Result<(), MenuError> {
    let body = serde_json::json!({"unique_identifier": id, "access_code": code});
    let (status, text, full) = post(url, "/api/remove/", &body.to_string())?;
    if !(200..300).contains(&status) {
        return Err(MenuError::Status {
            url: full,
            status,
            body: text,
        });
    }
    Ok(())
}

/// One POST with a JSON body; returns (status, body, URL for messages).
fn post(url: &MenuUrl, api: &str, body: &str) -> Result<(u16, String, String), MenuError> {
    let path = format!("{}{api}", url.path);
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let scheme = if url.tls { "https" } else { "http" };
    let full = format!("{scheme}://{host}:{}{path}", url.port);
    if url.tls {
        return curl(&full, body).map(|(status, text)| (status, text, full));
    }
    let io = |source| MenuError::Io {
        url: full.clone(),
        source,
    };
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| io(std::io::Error::other("no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: appliance-translate\r\n\r\n{body}",
        url.port,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(MenuError::Garbled { url: full.clone() })?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body, full))
}

/// An https POST through curl: the body on stdin, the status code on the last line.
fn curl(full: &str, body: &str) -> Result<(u16, String), MenuError> {
    use std::process::{Command, Stdio};
    let io = |source| MenuError::Io {
        url: full.to_string(),
        source,
    };
    let mut child = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "--request",
            "POST",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Accept: application/json",
            "--user-agent",
            "appliance-translate",
            "--data-binary",
            "@-",
            "--write-out",
            "\n%{http_code}",
            "--",
            full,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(io(std::io::Error::other(format!("curl: {why}"))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().map_err(|_| MenuError::Garbled {
        url: full.to_string(),
    })?;
    Ok((status, body.to_string()))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = MenuUrl::parse("http://127.0.0.1:8080/menu/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/menu")
        );
        let u = MenuUrl::parse("http://menu.example").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, ""));
        let u = MenuUrl::parse("http://[::1]:81").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        let u = MenuUrl::parse("https://menu.example/x").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/x"));
        assert!(MenuUrl::parse("ftp://menu.example").is_none());
        assert!(MenuUrl::parse("http://:80").is_none());
    }

    #[test]
    fn chunked() {
        assert_eq!(dechunk("4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), "abcdef");
    }
}
