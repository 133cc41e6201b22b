//! Registration with a Multicast Menu, on a thread of its own so a slow or absent Menu
//! never delays anything else. `POST {url}/api/add/` with `{unique_identifier, source,
//! group}` answers 201 and an access code; `POST {url}/api/remove/` with
//! `{unique_identifier, access_code}` takes the stream off. Failed calls are retried with
//! exponential backoff; the first failure is logged, then nothing until a call succeeds.
//!
//! The calls go through `ureq` (rustls for https, trusting the system's CA bundle or
//! `SSL_CERT_FILE`), each within [`CALL_DEADLINE`] as a whole and with an answer of at most
//! [`MAX_ANSWER`] bytes, so a Menu that drips or floods its answers costs one call's
//! deadline, not the thread. Access codes are never logged; the file keeping them is 0600.
//! A panic in the thread is logged and the thread started again.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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
    Http { url: String, source: ureq::Error },
    #[error("POST {url}: answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
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
/// One call, connecting, sending and reading the whole answer included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// The largest answer read (an access code fits many times over).
pub const MAX_ANSWER: u64 = 64 * 1024;

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
            .spawn(move || {
                let agent = agent();
                restarting(FIRST_RETRY, || {
                    run(&agent, &url, &rx, codes_file.as_deref())
                })
            });
        tx
    }
}

/// Runs `body` until it returns; a panic is logged and `body` started again after
/// `pause`. (A panic is a bug; the calls still due are retried by the next Prune or flow
/// event, and the codes are on disk.)
fn restarting(pause: Duration, mut body: impl FnMut()) {
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body)) {
            Ok(()) => return,
            Err(p) => {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!("the Multicast Menu thread failed ({why}); starting it again");
                std::thread::sleep(pause);
            }
        }
    }
}

/// The roots https calls trust: `SSL_CERT_FILE` if set, else the system's bundle, else
/// the Mozilla roots built in.
fn roots() -> ureq::tls::RootCerts {
    let file = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let certs: Vec<_> = std::fs::read(&file)
        .map(|pem| {
            ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if certs.is_empty() {
        tracing::debug!(
            "no CA certificates in {}: using the built-in roots",
            file.display()
        );
        return ureq::tls::RootCerts::WebPki;
    }
    ureq::tls::RootCerts::new_with_certs(&certs)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(CALL_DEADLINE))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("appliance-translate")
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots()).build())
        .build()
        .into()
}

fn load_codes(path: Option<&Path>) -> HashMap<String, String> {
    path.and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the codes to `path` (0600: a code removes a stream from the Menu).
fn save_codes(path: Option<&Path>, codes: &HashMap<String, String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(p) = path {
        let tmp = p.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let r = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&serde_json::to_vec(codes).unwrap_or_default())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, p))
            // A file from before codes were kept private.
            .and_then(|_| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)));
        if let Err(e) = r {
            tracing::warn!("saving Multicast Menu access codes to {}: {e}", p.display());
        }
    }
}

fn run(agent: &ureq::Agent, url: &MenuUrl, rx: &mpsc::Receiver<MenuJob>, file: Option<&Path>) {
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
                MenuJob::Add { id, source, group } => {
                    add(agent, url, id, source, group).map(|code| {
                        tracing::info!("Added {id} to the Multicast Menu");
                        codes.insert(id.clone(), code);
                        save_codes(file, &codes);
                    })
                }
                MenuJob::Remove { id } => match codes.get(id) {
                    Some(code) => remove(agent, url, id, code).map(|_| {
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

fn add(
    agent: &ureq::Agent,
    url: &MenuUrl,
    id: &str,
    source: &str,
    group: &str,
) -> Result<String, MenuError> {
    let body = serde_json::json!({"unique_identifier": id, "source": source, "group": group});
    let (status, text, full) = post(agent, url, "/api/add/", &body.to_string())?;
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

fn remove(agent: &ureq::Agent, url: &MenuUrl, id: &str, code: &str) -> Result<(), MenuError> {
    let body = serde_json::json!({"unique_identifier": id, "access_code": code});
    let (status, text, full) = post(agent, url, "/api/remove/", &body.to_string())?;
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
fn post(
    agent: &ureq::Agent,
    url: &MenuUrl,
    api: &str,
    body: &str,
) -> Result<(u16, String, String), MenuError> {
    let path = format!("{}{api}", url.path);
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let scheme = if url.tls { "https" } else { "http" };
    let full = format!("{scheme}://{host}:{}{path}", url.port);
    let err = |source| MenuError::Http {
        url: full.clone(),
        source,
    };
    let mut resp = agent
        .post(&full)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .send(body)
        .map_err(err)?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .lossy_utf8(true)
        .read_to_string()
        .map_err(err)?;
    Ok((status, text, full))
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
    fn a_panicking_menu_thread_is_started_again() {
        let mut runs = 0;
        restarting(Duration::from_millis(1), || {
            runs += 1;
            if runs == 1 {
                panic!("a bug");
            }
        });
        assert_eq!(runs, 2);
    }
}
