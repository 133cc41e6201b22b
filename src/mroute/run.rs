//! `appliance mroute`: the forwarder's process. One thread owns the forwarder: one poll
//! loop over the routing sockets (upcalls), a signalfd (SIGHUP reloads, SIGTERM/SIGINT
//! stop) and a wake-up from the control thread; idle learned entries are swept on a timer.
//! The control socket's clients are served off that path ([`Control`]): their reads and
//! writes happen on threads of their own, and only a parsed request reaches the forwarder's
//! thread, so a slow or silent client never delays an upcall.

use std::os::fd::BorrowedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::config::Config;
use super::control::Request;
use super::forwarder::Forwarder;
use super::{MrouteError, SOCKET_NAME, smcroute};
use crate::netlink::LinkWatch;
use crate::signals::{self, Signal, SignalFd};
use crate::{firewall, jsonl, plan, site};

/// Where the forwarder's configuration comes from (and is re-read from on reload).
#[derive(Debug, Clone)]
pub enum Source {
    /// A site file; its plan's state dir holds the control socket unless overridden
    /// (`up --state-dir DIR` passes its own to the child).
    Site {
        path: PathBuf,
        state_dir: Option<PathBuf>,
    },
    Smcroute {
        file: PathBuf,
        state_dir: PathBuf,
        /// The lines of the last load: a reload re-parses only the lines that changed.
        cache: std::rc::Rc<std::cell::RefCell<smcroute::Cache>>,
    },
}

impl Source {
    pub fn load(&self) -> Result<Config, MrouteError> {
        match self {
            Source::Site { path, state_dir } => match site::load(path) {
                Ok(l) => {
                    let mut c = Config::from_plan(&plan::plan(&l.site, &l.path));
                    if let Some(d) = state_dir {
                        c.state_dir = d.clone();
                    }
                    Ok(c)
                }
                Err(e) => Err(MrouteError::Load(e.to_string())),
            },
            Source::Smcroute {
                file,
                state_dir,
                cache,
            } => smcroute::load_cached(file, state_dir.clone(), &mut cache.borrow_mut()).map_err(
                |es| {
                    MrouteError::Load(
                        es.iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                },
            ),
        }
    }

    /// The control socket of the forwarder serving this source.
    pub fn socket(&self) -> Result<PathBuf, MrouteError> {
        Ok(match self {
            Source::Smcroute { state_dir, .. } => state_dir.join(SOCKET_NAME),
            Source::Site {
                state_dir: Some(d), ..
            } => d.join(SOCKET_NAME),
            Source::Site { .. } => self.load()?.state_dir.join(SOCKET_NAME),
        })
    }
}

/// How often idle learned entries are looked for.
fn sweep_interval(expire: Duration) -> Duration {
    (expire / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

/// Runs the forwarder until SIGTERM or SIGINT.
pub fn serve(source: Source, limits: super::forwarder::Limits) -> Result<(), MrouteError> {
    let sigfd =
        signals::block(&[Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT]).map_err(|source| {
            MrouteError::Signal {
                op: "blocking SIGHUP, SIGTERM and SIGINT (signalfd)",
                source,
            }
        })?;

    keep_heap();
    let config = source.load()?;
    let sock_path = config.state_dir.join(SOCKET_NAME);
    let listener = bind_control(&sock_path)?;
    set_snooping(&config.snooping)?;
    if let Some(fw) = &config.firewall {
        firewall::apply(fw)?;
    }
    let fw_table = config.firewall.clone();
    let result = (|| {
        let t0 = Instant::now();
        let (mut fwd, ch) = Forwarder::start(config)?;
        fwd.set_limits(limits);
        tracing::info!(
            "mroute ready in {:?}: {} static entries, {} templates, {} VIFs/MIFs, {} joins; control socket {}",
            t0.elapsed(),
            ch.added,
            fwd.config()
                .routes
                .iter()
                .filter(|r| !r.is_static())
                .count(),
            ch.vifs_added,
            ch.joined,
            sock_path.display()
        );
        let control = Control::start(listener).map_err(|source| MrouteError::Control {
            op: "starting the control thread for",
            path: sock_path.clone(),
            source,
        })?;
        event_loop(&source, fwd, &sigfd, &control)
    })();
    // Clean exit or failure: our table and socket go; the routes went with the sockets.
    if let Some(fw) = fw_table
        && let Err(e) = firewall::remove(&fw.family, &fw.table)
    {
        tracing::warn!("{e}");
    }
    let _ = std::fs::remove_file(&sock_path);
    result
}

fn bind_control(path: &Path) -> Result<UnixListener, MrouteError> {
    jsonl::listen(path).map_err(|source| MrouteError::Control {
        op: if source.kind() == std::io::ErrorKind::AddrInUse {
            "another forwarder already answers on"
        } else {
            "binding"
        },
        path: path.to_path_buf(),
        source,
    })
}

/// Bridge multicast snooping through netlink (`ip link`), which always acts in this
/// process's network namespace (a /sys mounted elsewhere may show another one's bridges).
fn set_snooping(list: &[(String, bool)]) -> Result<(), MrouteError> {
    for (bridge, value) in list {
        let out = Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                bridge,
                "type",
                "bridge",
                "mcast_snooping",
            ])
            .arg(if *value { "1" } else { "0" })
            .output()
            .map_err(|e| MrouteError::Snooping {
                bridge: bridge.clone(),
                value: *value,
                msg: format!("running ip: {e}"),
            })?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if msg.contains("Cannot find device") {
                tracing::warn!("multicast snooping of {bridge}: no such bridge yet");
                continue;
            }
            return Err(MrouteError::Snooping {
                bridge: bridge.clone(),
                value: *value,
                msg,
            });
        }
    }
    Ok(())
}

fn event_loop(
    source: &Source,
    mut fwd: Forwarder,
    sigfd: &SignalFd,
    control: &Control,
) -> Result<(), MrouteError> {
    use std::os::fd::AsFd;
    let mut next_sweep = Instant::now() + sweep_interval(fwd.config().expire);
    let links = LinkWatch::open().map_err(|e| MrouteError::Control {
        op: "watching links (netlink RTMGRP_LINK) for",
        path: PathBuf::from("the forwarder's interfaces"),
        source: e,
    })?;
    loop {
        let upcall_fds = fwd.upcall_fds();
        let proxy_fd = fwd.proxy_fd();
        let timeout = next_sweep.saturating_duration_since(Instant::now());
        let ready: Vec<bool> = {
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(control.wake.as_fd(), PollFlags::POLLIN),
                PollFd::new(links.as_fd(), PollFlags::POLLIN),
            ];
            for fd in proxy_fd.iter().chain(upcall_fds.iter().map(|(_, fd)| fd)) {
                // SAFETY: the forwarder owns these sockets and outlives this poll.
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(*fd) },
                    PollFlags::POLLIN,
                ));
            }
            let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as u32 + 1)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(source) => {
                    return Err(MrouteError::Signal {
                        op: "polling",
                        source: source.into(),
                    });
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let first_upcall = 3 + usize::from(proxy_fd.is_some());
        for (i, (fam, _)) in upcall_fds.iter().enumerate() {
            if ready[first_upcall + i] {
                fwd.upcalls(*fam)?;
            }
        }
        // The proxy's downstream memberships changed: upstream joins and routes follow.
        if proxy_fd.is_some() && ready[3] {
            match fwd.proxy_changed() {
                Ok(ch) if ch.added + ch.changed + ch.removed > 0 => tracing::info!(
                    "MLD proxy: {} routes added, {} changed, {} removed",
                    ch.added,
                    ch.changed,
                    ch.removed
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("MLD proxy: {e}"),
            }
        }
        // An interface appeared, went or was re-created: VIFs and joins follow it.
        if ready[2] && links.drain() {
            match fwd.resync() {
                Ok(ch) if ch.vifs_added + ch.vifs_removed + ch.joined + ch.left > 0 => {
                    // A re-created bridge has the kernel's default snooping again.
                    if let Err(e) = set_snooping(&fwd.config().snooping) {
                        tracing::warn!("{e}");
                    }
                    tracing::info!(
                        "links changed: {} VIFs/MIFs added, {} removed, {} joins renewed",
                        ch.vifs_added,
                        ch.vifs_removed,
                        ch.joined
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("links changed: {e}"),
            }
        }
        if ready[0] {
            while let Some(sig) = signals::next(sigfd) {
                match sig {
                    Signal::SIGHUP => {
                        let answer = reload(source, &mut fwd);
                        tracing::info!("SIGHUP: {answer}");
                        fwd.drop_retired();
                    }
                    s => {
                        tracing::info!("{s}: stopping");
                        return Ok(());
                    }
                }
            }
        }
        if ready[1] {
            for (req, reply) in control.pending() {
                let answer = match req {
                    Request::Status => {
                        let mut v = serde_json::to_value(fwd.status()).expect("status serializes");
                        v["ok"] = true.into();
                        v
                    }
                    Request::Reload => reload(source, &mut fwd),
                };
                let _ = reply.send(answer);
                fwd.drop_retired();
            }
        }
        let now = Instant::now();
        if now >= next_sweep {
            fwd.expire(now);
            next_sweep = now + sweep_interval(fwd.config().expire);
        }
    }
}

/// The control socket served off the forwarder's thread: an accept thread, and a thread
/// per client (at most [`MAX_CLIENTS`] at once) that reads the request line (capped in
/// size and time by `jsonl`), hands the parsed request to the forwarder's thread, and
/// writes the answer with a timeout.
struct Control {
    /// Readable when requests wait in `requests` (one byte per request).
    wake: UnixStream,
    requests: mpsc::Receiver<(Request, mpsc::SyncSender<serde_json::Value>)>,
}

/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;
/// A client has this long to send its whole request line.
const READ_WITHIN: Duration = Duration::from_secs(2);
/// A reload of a large configuration can take a while.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

impl Control {
    fn start(listener: UnixListener) -> std::io::Result<Control> {
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        listener.set_nonblocking(false)?;
        let (tx, rx) = mpsc::channel();
        let clients = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("mroute-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
                        let _ = jsonl::write_answer(
                            &stream,
                            &serde_json::json!({"ok": false, "error": "busy: too many control clients"}),
                        );
                        continue;
                    }
                    clients.fetch_add(1, Ordering::AcqRel);
                    let (tx, waker, clients) = (tx.clone(), waker.try_clone(), clients.clone());
                    let spawned = std::thread::Builder::new()
                        .name("mroute-client".into())
                        .spawn(move || {
                            if let Ok(waker) = waker
                                && let Err(e) = serve_client(&stream, &tx, &waker)
                            {
                                tracing::debug!("control client: {e}");
                            }
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        tracing::warn!("control socket: cannot start a thread for a client");
                    }
                }
            })?;
        Ok(Control { wake, requests: rx })
    }

    /// The requests waiting, each with where its answer goes.
    fn pending(&self) -> Vec<(Request, mpsc::SyncSender<serde_json::Value>)> {
        use std::io::Read;
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.requests.try_iter().collect()
    }
}

fn serve_client(
    stream: &UnixStream,
    to_forwarder: &mpsc::Sender<(Request, mpsc::SyncSender<serde_json::Value>)>,
    waker: &UnixStream,
) -> std::io::Result<()> {
    use std::io::Write;
    let answer = match jsonl::read_line(stream, READ_WITHIN) {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            serde_json::json!({"ok": false, "error": e.to_string()})
        }
        Err(e) => return Err(e),
        Ok(text) => match serde_json::from_str::<Request>(&text) {
            Err(e) => serde_json::json!({
                "ok": false,
                "error": format!("{e}; send {{\"cmd\":\"status\"}} or {{\"cmd\":\"reload\"}}"),
            }),
            Ok(req) => {
                let (tx, rx) = mpsc::sync_channel(1);
                if to_forwarder.send((req, tx)).is_err() {
                    return Ok(());
                }
                let _ = (&*waker).write(&[1]);
                match rx.recv_timeout(ANSWER_WITHIN) {
                    Ok(v) => v,
                    Err(_) => {
                        serde_json::json!({"ok": false, "error": "the forwarder did not answer"})
                    }
                }
            }
        },
    };
    jsonl::write_answer(stream, &answer)
}

/// Re-reads the configuration and applies the difference; an invalid file changes nothing.
fn reload(source: &Source, fwd: &mut Forwarder) -> serde_json::Value {
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    let new = match source.load() {
        Ok(c) => c,
        Err(e) => {
            return serde_json::json!({"ok": false, "error": format!("reload: {e}; kept the running configuration")});
        }
    };
    let loaded = t0.elapsed();
    let cpu_loaded = thread_cpu().saturating_sub(cpu0);
    let old_fw = fwd.config().firewall.clone();
    if new.firewall != old_fw {
        let r = match (&new.firewall, &old_fw) {
            (Some(fw), _) => firewall::apply(fw),
            (None, Some(old)) => firewall::remove(&old.family, &old.table),
            (None, None) => Ok(()),
        };
        if let Err(e) = r {
            return serde_json::json!({"ok": false, "error": format!("reload: {e}")});
        }
    }
    if new.snooping != fwd.config().snooping
        && let Err(e) = set_snooping(&new.snooping)
    {
        tracing::warn!("reload: {e}");
    }
    match fwd.apply(new) {
        Ok(ch) => {
            let took = t0.elapsed();
            serde_json::json!({
                "ok": true,
                "reload": ch,
                "took_us": took.as_micros() as u64,
                "load_us": loaded.as_micros() as u64,
                "cpu_us": thread_cpu().saturating_sub(cpu0).as_micros() as u64,
                "load_cpu_us": cpu_loaded.as_micros() as u64,
            })
        }
        Err(e) => serde_json::json!({"ok": false, "error": format!("reload: {e}")}),
    }
}

/// CPU time this thread has used (user + system), to tell work from waiting for a core.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A reload builds the new configuration beside the old one (megabytes for 20,000 routes):
/// keep freed memory in the heap instead of mapping and faulting in fresh pages each time.
fn keep_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes glibc's allocator; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}
