//! The `frr` part: pushes the site's generated FRR configuration into the daemons with
//! `vtysh -b`, pushes it again when a daemon comes back without it (a restarted pimd is
//! empty), and answers `{"cmd":"status"}` with what FRR itself says: which daemons answer
//! over their vty sockets, whether the configuration is in place, the PIM neighbours, the
//! (S,G) and (*,G) state and the IGMP groups.
//!
//! It runs in FRR's mount space (the site's `/run/frr` and `/etc/frr`) as the parts' user
//! with the `frrvty` group, the group FRR gives its vty sockets; it faces no network.

pub mod state;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::plan::routing::{FRR_RUN, FrrPlan};
pub use state::{Observed, status};

#[derive(Debug, thiserror::Error)]
pub enum FrrError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// How long one `vtysh` may take before it is killed.
const VTYSH_WAIT: Duration = Duration::from_secs(5);
/// The most output read from one `vtysh` (a large multicast table is some 100 KiB).
const VTYSH_MAX: u64 = 8 << 20;
/// How often FRR is asked while nobody asks us (the supervisor asks every 2 s).
const OBSERVE_EVERY: Duration = Duration::from_secs(2);
/// The configuration is pushed again at most this often while it is not in place.
const PUSH_EVERY: Duration = Duration::from_secs(2);

/// Runs `vtysh ARGS`; its standard output, or why it failed (its standard error, less
/// the PAM account warning Debian's vtysh prints for a user that is not root).
pub fn vtysh(args: &[&str]) -> Result<String, String> {
    let mut child = Command::new("vtysh")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting vtysh: {e}"))?;
    let out = child.stdout.take().map(|o| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = o.take(VTYSH_MAX).read_to_end(&mut buf);
            buf
        })
    });
    let err = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.take(64 << 10).read_to_end(&mut buf);
            buf
        })
    });
    let deadline = Instant::now() + VTYSH_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = err.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = String::from_utf8_lossy(&err)
        .replace(
            "vtysh_pam: Failed in account validation: Authentication failure(7)",
            "",
        )
        .trim()
        .to_string();
    match status {
        None => Err(format!(
            "vtysh {} took longer than {VTYSH_WAIT:?}",
            args.join(" ")
        )),
        Some(s) if !s.success() => Err(format!(
            "vtysh {} failed ({s}){}",
            args.join(" "),
            if err.is_empty() {
                String::new()
            } else {
                format!(": {}", err.replace('\n', " "))
            }
        )),
        Some(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

/// One `vtysh -d DAEMON -c COMMAND` whose answer is JSON.
fn ask_json(daemon: &str, command: &str) -> Result<Value, String> {
    let text = vtysh(&["-d", daemon, "-c", command])?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{daemon} answered {command:?} with something not JSON: {e}"))
}

/// Asks FRR what it has: each daemon over its vty socket, then pimd's state.
pub fn observe(frr: &FrrPlan) -> Observed {
    let mut o = Observed::default();
    for d in &frr.daemons {
        let answer = if d == "pimd" {
            vtysh(&["-d", d, "-c", "show running-config"]).map(|text| {
                o.configured = Some(state::configured(&text));
            })
        } else {
            vtysh(&["-d", d, "-c", "show running-config"]).map(|_| ())
        };
        o.daemons.push((d.clone(), answer.err()));
    }
    if o.daemons.iter().any(|(d, e)| d == "pimd" && e.is_none()) {
        let mut errors = vec![];
        let mut ask = |cmd: &str| {
            ask_json("pimd", cmd)
                .map_err(|e| errors.push(e))
                .unwrap_or(Value::Null)
        };
        o.pim_interfaces = state::interfaces(&ask("show ip pim interface json"));
        o.igmp_interfaces = state::interfaces(&ask("show ip igmp interface json"));
        o.rps = state::rps(&ask("show ip pim rp-info json"));
        o.neighbors = state::neighbors(&ask("show ip pim neighbor json"));
        o.mroutes = state::mroutes(&ask("show ip mroute json"));
        o.igmp_groups = state::igmp_groups(&ask("show ip igmp groups json"));
        o.errors = errors;
    }
    o
}

/// The daemons' vty sockets that are not there yet.
fn missing_sockets(frr: &FrrPlan) -> Vec<String> {
    frr.daemons
        .iter()
        .filter(|d| !Path::new(FRR_RUN).join(format!("{d}.vty")).exists())
        .cloned()
        .collect()
}

/// What the part knows between requests.
struct Part {
    observed: Observed,
    at: Option<Instant>,
    pushes: u32,
    last_push: Option<Instant>,
    push_error: Option<String>,
}

impl Part {
    /// Asks FRR again, and pushes the configuration when every daemon answers but it is
    /// not (or no longer) in place.
    fn refresh(&mut self, frr: &FrrPlan) {
        let waiting = missing_sockets(frr);
        if !waiting.is_empty() {
            self.observed = Observed::waiting(&frr.daemons, &waiting);
            self.at = Some(Instant::now());
            return;
        }
        self.observed = observe(frr);
        self.at = Some(Instant::now());
        let due = self.last_push.is_none_or(|t| t.elapsed() >= PUSH_EVERY);
        if due && self.observed.all_answer() && !state::missing(frr, &self.observed).is_empty() {
            self.push(frr);
            self.observed = observe(frr);
            self.at = Some(Instant::now());
        }
    }

    fn push(&mut self, frr: &FrrPlan) {
        self.pushes += 1;
        self.last_push = Some(Instant::now());
        match vtysh(&["-b"]) {
            Ok(_) => {
                tracing::info!(
                    "configuration pushed into {} (push {})",
                    frr.daemons.join(", "),
                    self.pushes
                );
                self.push_error = None;
            }
            Err(e) => {
                tracing::warn!("pushing the configuration: {e}");
                self.push_error = Some(e);
            }
        }
    }

    fn status(&self, frr: &FrrPlan) -> Value {
        status(frr, &self.observed, self.pushes, self.push_error.as_deref())
    }
}

/// Runs the part until SIGTERM or SIGINT.
pub fn main(frr: &FrrPlan) -> Result<(), FrrError> {
    let io = |what: String| move |source| FrrError::Io { what, source };
    let stop =
        crate::signals::block_termination().map_err(io("blocking the stop signals".into()))?;
    let sock = &frr.control_socket;
    let control =
        crate::jsonl::listen(sock).map_err(io(format!("listening on {}", sock.display())))?;
    tracing::info!(
        "frr: waiting for {} in {FRR_RUN}; status on {}",
        frr.daemons.join(", "),
        sock.display()
    );
    let mut part = Part {
        observed: Observed::waiting(&frr.daemons, &frr.daemons),
        at: None,
        pushes: 0,
        last_push: None,
        push_error: None,
    };
    loop {
        // Quickly while the daemons come up, then every OBSERVE_EVERY.
        let settled = part.pushes > 0 && part.observed.all_answer();
        let every = if settled {
            OBSERVE_EVERY
        } else {
            Duration::from_millis(100)
        };
        if part.at.is_none_or(|t| t.elapsed() >= every) {
            part.refresh(frr);
        }
        let mut fds = [
            libc::pollfd {
                fd: control.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait = every.as_millis() as libc::c_int;
        // SAFETY: two valid pollfds of live fds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait) };
        if fds[1].revents != 0 {
            let sig = crate::signals::next(&stop).map_or("a signal", |s| s.as_str());
            tracing::info!("{sig}: stopping");
            break;
        }
        if fds[0].revents != 0 {
            // An answer says what FRR says now, not two seconds ago.
            if part
                .at
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                part.refresh(frr);
            }
            while let Ok((stream, _)) = control.accept() {
                let v = part.status(frr);
                let _ = crate::jsonl::answer_one(
                    stream,
                    Duration::from_millis(500),
                    |_: Result<Value, _>| v,
                );
            }
        }
    }
    let _ = std::fs::remove_file(sock);
    Ok(())
}
