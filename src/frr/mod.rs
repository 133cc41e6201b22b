//! The `frr` part: pushes the site's generated FRR configuration into the daemons with
//! `vtysh -b`, pushes it again when pimd lacks it (a restarted pimd comes back empty),
//! and answers `{"cmd":"status"}` with what FRR itself says: which daemons answer
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
/// The most output read from one `vtysh`: memory stays bounded whatever FRR prints.
const VTYSH_MAX: u64 = 8 << 20;
/// How often FRR is asked once it is healthy (every 100 ms until then).
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

/// pimd's questions whose answers are JSON, asked in one `vtysh`.
const PIM_QUESTIONS: &[&str] = &[
    "show ip pim interface json",
    "show ip igmp interface json",
    "show ip pim rp-info json",
    "show ip pim neighbor json",
    "show ip mroute json",
    "show ip igmp groups json",
];

/// Asks one daemon several questions in one `vtysh -d DAEMON -c Q …` and splits the
/// answers (one JSON document each); a missing or damaged answer is Null, and said.
fn ask_json(daemon: &str, questions: &[&str]) -> Result<(Vec<Value>, Option<String>), String> {
    let mut args = vec!["-d", daemon];
    for q in questions {
        args.extend(["-c", q]);
    }
    let text = vtysh(&args)?;
    let mut out: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .take(questions.len())
        .collect();
    let n = out.len();
    let short = (n < questions.len()).then(|| {
        format!(
            "{daemon} answered {n} of {} questions with JSON (the first left: {:?})",
            questions.len(),
            questions[n]
        )
    });
    out.resize(questions.len(), Value::Null);
    Ok((out, short))
}

/// Asks FRR what it has: each daemon over its vty socket, then pimd's state.
pub fn observe(frr: &FrrPlan) -> Observed {
    let mut o = Observed::default();
    for d in &frr.daemons {
        let answer = vtysh(&["-d", d, "-c", "show running-config"]).map(|text| {
            if d == "pimd" {
                o.configured = Some(state::configured(&text));
            }
        });
        o.daemons.push((d.clone(), answer.err()));
    }
    if o.daemons.iter().any(|(d, e)| d == "pimd" && e.is_none()) {
        match ask_json("pimd", PIM_QUESTIONS) {
            Ok((a, short)) => {
                o.errors.extend(short);
                o.pim_interfaces = state::interfaces(&a[0]);
                o.igmp_interfaces = state::igmp_interfaces(&a[1]);
                o.rps = state::rps(&a[2]);
                o.neighbors = state::neighbors(&a[3]);
                o.mroutes = state::mroutes(&a[4]);
                o.igmp_groups = state::igmp_groups(&a[5]);
            }
            Err(e) => o.errors.push(e),
        }
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
    /// FRR is the system's: its watchfrr pushes, the part only observes.
    system: bool,
    observed: Observed,
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
            return;
        }
        self.observed = observe(frr);
        let due = self.last_push.is_none_or(|t| t.elapsed() >= PUSH_EVERY);
        if !self.system
            && due
            && self.observed.all_answer()
            && !state::missing(frr, &self.observed).is_empty()
        {
            self.push(frr);
            self.observed = observe(frr);
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

/// Runs the part until SIGTERM or SIGINT: a thread asks FRR (every 100 ms until it is
/// healthy, then every [`OBSERVE_EVERY`]) and pushes (unless `system`: the system's
/// watchfrr does); requests are answered at once with what it last found.
pub fn main(frr: &FrrPlan, system: bool) -> Result<(), FrrError> {
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
    let latest = std::sync::Arc::new(std::sync::Mutex::new(status(
        frr,
        &Observed::waiting(&frr.daemons, &frr.daemons),
        0,
        None,
    )));
    {
        let latest = latest.clone();
        let frr = frr.clone();
        std::thread::Builder::new()
            .name("frr-observe".into())
            .spawn(move || {
                let mut part = Part {
                    system,
                    observed: Observed::default(),
                    pushes: 0,
                    last_push: None,
                    push_error: None,
                };
                loop {
                    part.refresh(&frr);
                    let v = part.status(&frr);
                    let settled = v["healthy"] == true;
                    if let Ok(mut l) = latest.lock() {
                        *l = v;
                    }
                    // A poll interval, not a wait for an event: FRR tells nobody.
                    std::thread::sleep(if settled {
                        OBSERVE_EVERY
                    } else {
                        Duration::from_millis(100)
                    });
                }
            })
            .map_err(io("starting the observer thread".into()))?;
    }
    loop {
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
        // SAFETY: two valid pollfds of live fds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[1].revents != 0 {
            let sig = crate::signals::next(&stop).map_or("a signal", |s| s.as_str());
            tracing::info!("{sig}: stopping");
            break;
        }
        if fds[0].revents != 0 {
            while let Ok((stream, _)) = control.accept() {
                let v = latest.lock().map(|v| v.clone()).unwrap_or(Value::Null);
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
