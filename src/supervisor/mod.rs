//! `up`: builds the site, runs and restarts its children, checks avahi health, answers the
//! control socket, and tears everything down on SIGTERM/SIGINT or `down`.

pub mod avahi;
pub mod commands;
pub mod control;
pub mod decide;
pub mod notify;
pub mod spawn;
pub mod spawner;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How long `up` waits for duplicate address detection by default (the kernel takes 1–2 s
/// with its defaults); `up --dad-wait` changes it.
pub const DAD_WAIT: Duration = Duration::from_secs(10);

use crate::apply::{self, Built, Record};
use crate::plan::{Health, Plan};
use decide::{Action, Event, Phase, State};

/// How long a child has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// How long a child has to make its socket (see [`spawn::ready_socket`]) before it is
/// stopped as not ready and restarted with backoff.
pub const READY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("site {site} is already running in {dir} (supervisor pid {pid}); nothing was changed")]
    Running {
        site: String,
        dir: String,
        pid: String,
    },
    #[error("{0}")]
    StateDir(String),
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        source: std::io::Error,
    },
}

/// The parts' sockets go, and the sources' SDP files; the translator's flows and the
/// headend's learnt SDPs stay for the next up (and keep `parts/`).
pub fn remove_parts(plan: &Plan) {
    if let Ok(list) = std::fs::read_dir(&plan.parts_dir) {
        for e in list.flatten() {
            if e.path().extension().is_some_and(|x| x == "sock") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(&plan.parts_dir);
    if let Some(h) = &plan.headend {
        let _ = std::fs::remove_dir_all(&h.source_sdp_dir);
    }
}

/// Takes the site's lock in its state directory: only one supervisor per site.
pub fn lock(plan: &Plan) -> Result<Flock<File>, UpError> {
    let dir = &plan.state_dir;
    crate::apply::record::prepare_dir(dir).map_err(UpError::StateDir)?;
    // Only root lists or changes it; the parts' user may pass through to its own parts/,
    // and with a headend anyone may (its sources, as their own user, reach sources/).
    if let Some(u) = plan.children.iter().find_map(|c| c.user.as_ref())
        && let Ok(Some(u)) = nix::unistd::User::from_name(u)
        && std::os::unix::fs::chown(dir, Some(0), Some(u.gid.as_raw())).is_ok()
    {
        let mode = if plan.headend.is_some() { 0o711 } else { 0o710 };
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    }
    let path = dir.join("lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| UpError::Io {
            op: "opening lock",
            object: path.display().to_string(),
            source,
        })?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| UpError::Running {
        site: plan.site.clone(),
        dir: dir.display().to_string(),
        pid: Record::load(dir)
            .map(|r| r.pid.to_string())
            .unwrap_or_else(|| "unknown".into()),
    })
}

/// True if a supervisor holds the lock of this state directory.
pub fn is_running(state_dir: &Path) -> bool {
    let Ok(f) = File::options()
        .read(true)
        .write(true)
        .open(state_dir.join("lock"))
    else {
        return false;
    };
    Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err()
}

/// What `up` needs from the machine before it changes anything: every external program
/// of the plan on PATH, and the users dbus and avahi switch to (avahi needs its user even
/// when it keeps root). Returns every problem found.
pub fn preflight(plan: &Plan) -> Vec<String> {
    let mut problems = vec![];
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut seen = HashSet::new();
    let mut users = HashSet::new();
    for c in &plan.children {
        if let Some(u) = &c.user
            && users.insert(u.clone())
            && !matches!(nix::unistd::User::from_name(u), Ok(Some(_)))
        {
            problems.push(format!(
                "user {u} (for {}) does not exist: scripts/install-deps creates it \
                 (useradd --system --no-create-home --shell /usr/sbin/nologin {u})",
                c.name
            ));
        }
    }
    for c in &plan.children {
        for g in &c.groups {
            if users.insert(format!("group {g}"))
                && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_)))
            {
                problems.push(format!(
                    "group {g} (for {}) does not exist: scripts/install-deps installs the \
                     package that makes it",
                    c.name
                ));
            }
        }
    }
    // The frr part pushes FRR's configuration with vtysh.
    let vtysh = plan
        .routing
        .as_ref()
        .is_some_and(|r| r.frr.is_some())
        .then(|| ("vtysh".to_string(), crate::plan::routing::PART.to_string()));
    let programs = plan
        .children
        .iter()
        .filter(|c| c.program == crate::plan::Program::External)
        .map(|c| (c.argv[0].clone(), c.name.clone()))
        .chain(vtysh);
    for (program, name) in programs {
        if !seen.insert(program.clone()) {
            continue;
        }
        let p = Path::new(&program);
        let found = if p.is_absolute() {
            p.is_file()
        } else {
            std::env::split_paths(&path).any(|d| d.join(p).is_file())
        };
        if !found {
            problems.push(format!(
                "{program} (for {name}) is not installed or not on PATH"
            ));
        }
        let user = match program.as_str() {
            "avahi-daemon" => Some("avahi"),
            "dbus-daemon" => Some("messagebus"),
            d if d.starts_with(crate::plan::routing::FRR_BIN) => {
                Some(crate::plan::routing::FRR_USER)
            }
            _ => None,
        };
        if let Some(u) = user
            && !matches!(nix::unistd::User::from_name(u), Ok(Some(_)))
        {
            problems.push(format!("user {u} (for {program}) does not exist"));
        }
    }
    problems
}

/// A pidfd for one of our children, to await its exit without waitpid(-1) or a thread.
fn pidfd(pid: u32) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new fd (or -1); nothing else owns it.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is the new, valid (checked) pidfd, owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the fd and deregisters it before closing it.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into())
}

/// The private bus of a child with a bus health check: in its own root, or in the root of
/// the machine it runs (`avahi = "machines"`).
fn bus_address(health: &Health, pid: u32) -> Option<String> {
    match health {
        Health::Running => None,
        Health::AvahiBus { bus } => Some(avahi::bus_of(pid, bus)),
        Health::MachineBus { bus } => {
            crate::render::machine::leader(pid).map(|init| avahi::bus_of(init, bus))
        }
        Health::Control { .. } => None,
    }
}

/// Messages into the supervisor's loop.
pub enum Msg {
    Decide(Event),
    /// A stopped child still had this pid after the grace time.
    KillIfStill {
        name: String,
        pid: u32,
    },
    Control(control::Request),
    /// Duplicate address detection of the namespaces' IPv6 addresses is over.
    Settled(apply::Settled),
}

struct Running {
    pid: u32,
    last_check: Option<Instant>,
}

struct Sup {
    plan: Plan,
    built: Built,
    state: State,
    record: Record,
    procs: HashMap<String, Running>,
    checking: HashSet<String>,
    tx: mpsc::UnboundedSender<Msg>,
    exe: PathBuf,
    spawner: spawner::Spawner,
    started: Instant,
    ready: bool,
    /// How long duplicate address detection may take before an address still tentative
    /// makes the site unhealthy.
    dad_wait: Duration,
    /// None while duplicate address detection runs.
    settled: Option<apply::Settled>,
    last_status: String,
}

/// SIGTERM and SIGINT as tokio streams: both tear the site down.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }
}

/// Runs `up` to the end: returns the exit code. `dad_wait`: how long IPv6 duplicate
/// address detection may take (see [`DAD_WAIT`]).
pub async fn up(plan: Plan, lock: Flock<File>, dad_wait: Duration) -> u8 {
    let started = Instant::now();
    // First, while few fds are open: the PID namespace's init is a fork that keeps copies.
    let spawner = spawner::Spawner::start();
    remove_leftovers(&plan).await;
    let mut record = Record {
        site: plan.site.clone(),
        pid: std::process::id(),
        ..Default::default()
    };
    info!(
        "site {}: up from {} (state in {})",
        plan.site,
        plan.site_file.display(),
        plan.state_dir.display()
    );
    notify::send(&format!("STATUS=building site {}", plan.site));
    let built = match apply::build(&plan, &mut record).await {
        Ok(b) => b,
        Err(e) => {
            error!("up failed: {e}");
            undo_failed_build(&plan, lock).await;
            return 1;
        }
    };
    info!(
        "fabric built in {} ms: {} namespace(s), {} veth(s)",
        started.elapsed().as_millis(),
        plan.namespaces.len(),
        plan.veths.len()
    );
    if let Err(e) = parts_dir(&plan) {
        error!("{e}");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    watch_dad(&plan, &built, &tx, dad_wait).await;
    if let Err(e) = control::serve(&plan.control_socket, tx.clone()) {
        error!("{e}");
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let state = State::with_missing(&plan.children, spawn::missing_part);
    for c in &state.children {
        if let (Phase::Missing, Some(why)) = (c.phase, &c.why) {
            error!("{}: not started: {why}; the site is not healthy", c.name);
        }
    }
    let mut sup = Sup {
        plan,
        built,
        state,
        record,
        procs: HashMap::new(),
        checking: HashSet::new(),
        tx,
        exe,
        spawner,
        started,
        ready: false,
        dad_wait,
        settled: None,
        last_status: String::new(),
    };
    let mut signals = StopSignals::new();
    let down_waiters = sup.supervise(&mut rx, &mut signals).await;
    sup.tear_down(&mut rx, &mut signals, lock, down_waiters)
        .await
}

/// Makes `<state_dir>/parts`, where the parts that run as [`crate::plan::PARTS_USER`]
/// keep their sockets and state: owned by that user, mode 0700 (not followed if a link).
/// With a headend also `<state_dir>/sources`, owned by that user, mode 0711: the headend
/// makes each source's SDP file there and hands it to the source's user, who reaches it by
/// name and can list nothing.
fn parts_dir(plan: &Plan) -> Result<(), UpError> {
    let Some(user) = plan.children.iter().find_map(|c| c.user.as_ref()) else {
        return Ok(());
    };
    owned_dir(&plan.parts_dir, user, 0o700)?;
    if let Some(h) = &plan.headend {
        owned_dir(&h.source_sdp_dir, user, 0o711)?;
    }
    Ok(())
}

/// Makes `dir` (if missing) and hands it to `user` with `mode`; a link is not followed.
fn owned_dir(dir: &Path, user: &str, mode: u32) -> Result<(), UpError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |op, source| UpError::Io {
        op,
        object: dir.display().to_string(),
        source,
    };
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io("creating", e));
        }
        _ => {}
    }
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(|e| io("opening", e))?;
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| io("finding its user for", std::io::ErrorKind::NotFound.into()))?;
    std::os::unix::fs::fchown(&f, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
        .map_err(|e| io("handing to its user", e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("setting the mode of", e))?;
    Ok(())
}

/// What an earlier `up` left in the state directory (it crashed or was killed) goes first.
async fn remove_leftovers(plan: &Plan) {
    let dir = &plan.state_dir;
    match Record::load_checked(dir) {
        Ok(None) => return,
        Ok(Some(old)) => info!(
            "found what an earlier up (pid {}) left in {}: removing it first",
            old.pid,
            dir.display()
        ),
        // Kept aside as state.json.corrupt; the plan and a scan find the rest, as in down.
        Err(e) => warn!(
            "{e}: removing what the plan and a scan for the site's names find of an earlier \
             up first"
        ),
    }
    for e in apply::teardown(&plan.site, Some(plan), dir).await {
        warn!("removing leftovers: {e}");
    }
    let _ = std::fs::create_dir_all(dir);
}

/// A build that failed half-way: remove what it made, and the state directory.
async fn undo_failed_build(plan: &Plan, lock: Flock<File>) {
    let dir = &plan.state_dir;
    info!("removing what was made");
    for e in apply::teardown(&plan.site, Some(plan), dir).await {
        error!("teardown: {e}");
    }
    drop(lock);
    let _ = std::fs::remove_file(dir.join("lock"));
    let _ = std::fs::remove_dir(dir);
}

/// IPv6 addresses are unusable until duplicate address detection is done (a second or
/// two): the site is not ready before, and an address another host has is reported. The
/// loop hears the outcome as [`Msg::Settled`].
async fn watch_dad(plan: &Plan, built: &Built, tx: &mpsc::UnboundedSender<Msg>, within: Duration) {
    match apply::dad_checks(plan, built).await {
        Ok(checks) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                let s = apply::settle(checks, within).await;
                let _ = tx.send(Msg::Settled(s));
            });
        }
        Err(e) => {
            // Addresses that cannot be checked are not known to be usable.
            let _ = tx.send(Msg::Settled(apply::Settled {
                errors: vec![format!(
                    "cannot check IPv6 duplicate address detection: {e}"
                )],
                ..Default::default()
            }));
        }
    }
}

impl Sup {
    /// The supervisor's loop, until the decisions, a signal or `down` end it; returns who
    /// asked for `down` over the control socket (they get the outcome of the teardown).
    async fn supervise(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        signals: &mut StopSignals,
    ) -> Vec<tokio::sync::oneshot::Sender<Value>> {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut down_waiters = vec![];
        self.handle(Event::Begin);
        loop {
            tokio::select! {
                Some(m) = rx.recv() => match m {
                    Msg::Decide(ev) => {
                        if self.handle(ev) {
                            break;
                        }
                    }
                    Msg::KillIfStill { name, pid } => self.kill_if_still(&name, pid),
                    Msg::Control(control::Request::Down(reply)) => {
                        info!("down asked over the control socket");
                        down_waiters.push(reply);
                        self.handle(Event::Shutdown);
                        break;
                    }
                    Msg::Control(r) => self.answer(r),
                    Msg::Settled(s) => self.settled(s),
                },
                _ = signals.term.recv() => {
                    info!("SIGTERM: tearing the site down");
                    self.handle(Event::Shutdown);
                    break;
                }
                _ = signals.int.recv() => {
                    info!("SIGINT: tearing the site down");
                    self.handle(Event::Shutdown);
                    break;
                }
                _ = tick.tick() => self.health_tick(),
            }
        }
        down_waiters
    }

    /// Stops the children, removes the site and the state directory; returns the exit code.
    async fn tear_down(
        mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        signals: &mut StopSignals,
        lock: Flock<File>,
        down_waiters: Vec<tokio::sync::oneshot::Sender<Value>>,
    ) -> u8 {
        notify::send("STOPPING=1\nSTATUS=tearing down");
        let t = Instant::now();
        self.stop_all(rx, &mut signals.term, &mut signals.int).await;
        self.spawner.stop();
        crate::render::machine::remove_all_cgroups(&self.plan);
        let dir = self.plan.state_dir.clone();
        // Our fds would keep the namespaces alive.
        self.built.spaces.clear();
        let errors = apply::teardown(&self.plan.site, Some(&self.plan), &dir).await;
        for e in &errors {
            error!("teardown: {e}");
        }
        info!(
            "site {}: down in {} ms{}",
            self.plan.site,
            t.elapsed().as_millis(),
            if errors.is_empty() {
                String::new()
            } else {
                format!(" with {} error(s)", errors.len())
            }
        );
        remove_parts(&self.plan);
        let _ = std::fs::remove_file(dir.join("lock"));
        let _ = std::fs::remove_dir(&dir);
        drop(lock);
        for w in down_waiters {
            let _ = w.send(json!({"ok": errors.is_empty(), "errors": errors}));
        }
        if errors.is_empty() { 0 } else { 1 }
    }
}

impl Sup {
    /// Feeds one event to the decisions and carries out the actions. True: shut down.
    fn handle(&mut self, ev: Event) -> bool {
        if let Event::Exited { name, .. } | Event::SpawnFailed { name, .. } = &ev {
            self.procs.remove(name);
            self.checking.remove(name);
        }
        if let Event::Health { name, .. } = &ev {
            self.checking.remove(name);
        }
        let actions = decide::next(&mut self.state, ev);
        let mut stop = false;
        for a in actions {
            match a {
                Action::Spawn(name) => self.spawn(&name),
                Action::Stop(name) => self.stop(&name),
                Action::Schedule(name, d) => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = tx.send(Msg::Decide(Event::Timer { name }));
                    });
                }
                Action::StopAll => stop = true,
                Action::Log(l) => info!("{l}"),
            }
        }
        self.after_change();
        stop
    }

    fn spawn(&mut self, name: &str) {
        let Some(c) = self.plan.children.iter().find(|c| c.name == name).cloned() else {
            return;
        };
        let space = c.netns.as_ref().and_then(|n| self.built.spaces.get(n));
        let tx = self.tx.clone();
        let started =
            spawn::command(&c, space, &self.exe, self.spawner.in_pid_ns()).and_then(|cmd| {
                self.spawner
                    .spawn(cmd)
                    .map_err(|source| spawn::SpawnError::Exec {
                        name: c.name.clone(),
                        program: c.argv[0].clone(),
                        source,
                    })
            });
        match started {
            Err(e) => {
                let _ = tx.send(Msg::Decide(Event::SpawnFailed {
                    name: name.into(),
                    error: e.to_string(),
                    at: Instant::now(),
                }));
            }
            Ok(mut child) => {
                let pid = child.id();
                spawn::forward_output(name, &mut child);
                info!(
                    "{name}: started (pid {pid}{}): {}",
                    c.netns
                        .as_ref()
                        .map(|n| format!(", in {n}"))
                        .unwrap_or_default(),
                    c.argv.join(" ")
                );
                if let Some(st) = apply::record::start_time(pid) {
                    self.record
                        .children
                        .retain(|(p, _)| Path::new(&format!("/proc/{p}")).exists());
                    Record::add(&mut self.record.children, (pid, st));
                    let _ = self.record.save(&self.plan.state_dir);
                }
                self.procs.insert(
                    name.into(),
                    Running {
                        pid,
                        last_check: None,
                    },
                );
                let _ = tx.send(Msg::Decide(Event::Spawned {
                    name: name.into(),
                    pid,
                }));
                let sock = spawn::ready_socket(&c);
                let n = name.to_string();
                let tx2 = tx.clone();
                tokio::spawn(async move {
                    if let Some(sock) = sock {
                        // Seen from inside its mount namespace.
                        let p = PathBuf::from(format!("/proc/{pid}/root{}", sock.display()));
                        let deadline = Instant::now() + READY_WAIT;
                        while !p.exists() {
                            if Instant::now() >= deadline {
                                let why = format!(
                                    "its socket {} did not appear within {READY_WAIT:?}",
                                    sock.display()
                                );
                                let _ = tx2.send(Msg::Decide(Event::NotReady { name: n, why }));
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    let _ = tx2.send(Msg::Decide(Event::Ready {
                        name: n,
                        pid,
                        at: Instant::now(),
                    }));
                });
                let n = name.to_string();
                let machine = c
                    .netns
                    .clone()
                    .filter(|_| crate::render::machine::is_machine(&c));
                let exited = pidfd(pid);
                tokio::spawn(async move {
                    // Its pidfd turns readable when it exits; then wait() does not block.
                    if let Ok(fd) = exited {
                        let _ = fd.readable().await;
                    }
                    let st = child.wait();
                    if let Some(m) = machine {
                        crate::render::machine::remove_cgroups(&m);
                    }
                    let (code, signal) = match st {
                        Ok(s) => {
                            use std::os::unix::process::ExitStatusExt;
                            (s.code(), s.signal())
                        }
                        Err(_) => (None, None),
                    };
                    let _ = tx.send(Msg::Decide(Event::Exited {
                        name: n,
                        code,
                        signal,
                        at: Instant::now(),
                    }));
                });
            }
        }
    }

    fn stop(&mut self, name: &str) {
        let Some(r) = self.procs.get(name) else {
            return;
        };
        let pid = r.pid;
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let tx = self.tx.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_GRACE).await;
            let _ = tx.send(Msg::KillIfStill { name, pid });
        });
    }

    fn kill_if_still(&mut self, name: &str, pid: u32) {
        if self.procs.get(name).is_some_and(|r| r.pid == pid) {
            warn!("{name}: still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Starts the health checks that are due.
    fn health_tick(&mut self) {
        let now = Instant::now();
        for c in &self.plan.children {
            if matches!(c.health, Health::Running) {
                continue;
            }
            let Some(st) = self.state.get(&c.name) else {
                continue;
            };
            if st.phase != Phase::Running || self.checking.contains(&c.name) {
                continue;
            }
            let Some(r) = self.procs.get_mut(&c.name) else {
                continue;
            };
            let every = if st.healthy == Some(true) {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(100)
            };
            if r.last_check.is_some_and(|t| now.duration_since(t) < every) {
                continue;
            }
            r.last_check = Some(now);
            self.checking.insert(c.name.clone());
            let tx = self.tx.clone();
            let name = c.name.clone();
            if let Health::Control { socket } = &c.health {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let v = control::ask_status(&socket).await;
                    let (ok, why) = control::health_of(&v);
                    let _ = tx.send(Msg::Decide(Event::Health { name, ok, why }));
                });
                continue;
            }
            let addr = bus_address(&c.health, r.pid);
            tokio::spawn(async move {
                let (ok, why) = match addr {
                    Some(addr) => match avahi::state(&addr, Duration::from_secs(2)).await {
                        Ok(avahi::RUNNING) => (true, None),
                        Ok(st) => (false, Some(format!("avahi's state is {st}, not running"))),
                        Err(e) => (false, Some(format!("asking avahi over its bus: {e}"))),
                    },
                    // A machine whose init is not there yet.
                    None => (false, Some("its machine's init is not there yet".into())),
                };
                let _ = tx.send(Msg::Decide(Event::Health { name, ok, why }));
            });
        }
    }

    fn settled(&mut self, s: apply::Settled) {
        for c in &s.conflicts {
            error!("address conflict: {c}: the site is not healthy and READY=1 is held back");
        }
        for e in &s.errors {
            error!("{e}: the site is not healthy and READY=1 is held back");
        }
        for p in &s.pending {
            error!(
                "{p}: still tentative after {:.1} s of duplicate address detection: the site is \
                 not healthy and READY=1 is held back",
                self.dad_wait.as_secs_f64()
            );
        }
        for m in &s.missing {
            error!("{m}: the site is not healthy and READY=1 is held back");
        }
        self.settled = Some(s);
        self.after_change();
    }

    /// Children healthy and every namespace address usable (none in conflict, none still
    /// tentative).
    fn healthy(&self) -> bool {
        self.state.healthy()
            && self.settled.as_ref().is_some_and(|s| {
                s.conflicts.is_empty()
                    && s.pending.is_empty()
                    && s.errors.is_empty()
                    && s.missing.is_empty()
            })
    }

    fn after_change(&mut self) {
        let healthy = self.healthy();
        if healthy && !self.ready {
            self.ready = true;
            info!(
                "site {}: ready in {} ms: {} namespace(s), {} child(ren)",
                self.plan.site,
                self.started.elapsed().as_millis(),
                self.plan.namespaces.len(),
                self.plan.children.len()
            );
            notify::send("READY=1");
        }
        let status = self.status_line();
        if status != self.last_status {
            notify::send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    fn status_line(&self) -> String {
        let running = self
            .state
            .children
            .iter()
            .filter(|c| c.phase == Phase::Running)
            .count();
        format!(
            "{}: {} ({} of {} children running)",
            self.plan.site,
            if self.healthy() {
                "healthy"
            } else {
                "unhealthy"
            },
            running,
            self.state.children.len()
        )
    }

    fn status(&self) -> Value {
        let children: Vec<Value> = self
            .state
            .children
            .iter()
            .map(|c| {
                let note = c.crash_loop.then_some("crash loop");
                let planned = self.plan.children.iter().find(|p| p.name == c.name);
                json!({
                    "name": c.name,
                    "user": planned.map(|p| p.user.as_deref().unwrap_or("root")),
                    "caps": planned.map(|p| &p.caps),
                    "pid": c.pid,
                    "phase": c.phase,
                    "restarts": c.restarts,
                    "health": match (c.phase, c.healthy) {
                        (Phase::Missing, _) => "missing",
                        (Phase::Running, Some(true)) => "healthy",
                        (Phase::Running, Some(false)) => "unhealthy",
                        (Phase::Running, None) if c.checked => "starting",
                        (Phase::Running, None) => "running",
                        _ => "down",
                    },
                    "why": c.why,
                    "last_exit": c.last_exit,
                    "note": note,
                })
            })
            .collect();
        json!({
            "site": self.plan.site,
            "pid": std::process::id(),
            "state_dir": self.plan.state_dir,
            "healthy": self.healthy(),
            "addresses": match &self.settled {
                None => json!({"state": "duplicate address detection running"}),
                Some(s) if !s.conflicts.is_empty() => json!({"state": "conflict", "conflicts": s.conflicts, "pending": s.pending, "errors": s.errors, "missing": s.missing}),
                Some(s) if !s.errors.is_empty() => json!({"state": "unknown", "errors": s.errors, "pending": s.pending, "missing": s.missing}),
                Some(s) if !s.missing.is_empty() => json!({"state": "missing", "missing": s.missing, "pending": s.pending}),
                Some(s) if !s.pending.is_empty() => json!({"state": "tentative", "pending": s.pending}),
                Some(s) => json!({"state": "usable", "pending": s.pending}),
            },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "namespaces": self.plan.namespaces.iter().map(|n| json!({
                "name": n.name, "kind": n.kind, "pin": n.pin, "mounts": n.mount_pin,
            })).collect::<Vec<_>>(),
            "mount_spaces": self.plan.mount_spaces.iter().map(|m| json!({
                "name": m.name, "owner": m.owner,
                "binds": m.mounts.iter().filter_map(|x| match x {
                    crate::plan::Mount::Bind { source, target } => Some(format!("{source} over {target}")),
                    _ => None,
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "veths": self.plan.veths.iter().map(|v| json!({
                "host": v.host, "bridge": v.bridge, "netns": v.netns, "peer": v.peer,
                "host_mac": v.host_mac, "peer_mac": v.peer_mac, "addresses": v.addresses,
                "dhcp": v.dhcp,
            })).collect::<Vec<_>>(),
            "children": children,
        })
    }

    fn answer(&mut self, r: control::Request) {
        match r {
            control::Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            control::Request::Services(reply) => {
                let mut buses = vec![];
                for c in &self.plan.children {
                    if let Some(r) = self.procs.get(&c.name)
                        && let Some(bus) = bus_address(&c.health, r.pid)
                    {
                        let vlan = c.name.split('@').nth(1).unwrap_or(&c.name).to_string();
                        buses.push((vlan, bus));
                    }
                }
                let _ = reply.send(buses);
            }
            control::Request::Down(_) => {}
        }
    }

    /// Stops every child in waves (`decide::stop_waves`): dependents first, each wave
    /// SIGTERMed and waited for up to the grace time (then SIGKILLed) before the next;
    /// what is left at the end is SIGKILLed. A second SIGTERM/SIGINT kills all at once.
    async fn stop_all(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) {
        for wave in decide::stop_waves(&self.state) {
            let wave: Vec<String> = wave
                .into_iter()
                .filter(|n| self.procs.contains_key(n))
                .collect();
            if wave.is_empty() {
                continue;
            }
            info!("stopping {}", wave.join(", "));
            for n in &wave {
                if let Some(r) = self.procs.get(n) {
                    let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGTERM);
                }
            }
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            let left = |s: &Sup| wave.iter().any(|n| s.procs.contains_key(n));
            if !self.wait_stopped(rx, term, int, deadline, &left).await {
                return self.kill_the_rest(rx).await;
            }
            if left(self) {
                warn!(
                    "{}: still running {STOP_GRACE:?} after SIGTERM: SIGKILL",
                    wave.iter()
                        .filter(|n| self.procs.contains_key(*n))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                for n in &wave {
                    if let Some(r) = self.procs.get(n) {
                        let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
                    }
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                if !self.wait_stopped(rx, term, int, deadline, &left).await {
                    return self.kill_the_rest(rx).await;
                }
            }
        }
        self.kill_the_rest(rx).await;
    }

    /// Handles messages until `left` is false (true) or the deadline passes (true) or a
    /// second stop signal comes (false).
    async fn wait_stopped(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Msg>,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        deadline: tokio::time::Instant,
        left: &dyn Fn(&Sup) -> bool,
    ) -> bool {
        while left(self) {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.while_stopping(m),
                    None => return true,
                },
                _ = term.recv() => return false,
                _ = int.recv() => return false,
                _ = tokio::time::sleep_until(deadline) => return true,
            }
        }
        true
    }

    /// SIGKILL to whatever still runs, and up to 2 s for the exits to be heard.
    async fn kill_the_rest(&mut self, rx: &mut mpsc::UnboundedReceiver<Msg>) {
        if self.procs.is_empty() {
            return;
        }
        let mut left: Vec<&String> = self.procs.keys().collect();
        left.sort();
        warn!(
            "SIGKILL to what is left: {}",
            left.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.kill_all();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.procs.is_empty() {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => self.while_stopping(m),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// One message while the children stop: exits are heard and logged; status answers.
    fn while_stopping(&mut self, m: Msg) {
        match m {
            Msg::Decide(ev) => {
                if let Event::Exited {
                    name, code, signal, ..
                } = &ev
                {
                    info!(
                        "{name}: stopped ({})",
                        match (code, signal) {
                            (Some(c), _) => format!("exit code {c}"),
                            (None, Some(s)) => format!("signal {s}"),
                            _ => "gone".into(),
                        }
                    );
                }
                self.handle(ev);
            }
            Msg::Control(control::Request::Status(reply)) => {
                let _ = reply.send(self.status());
            }
            Msg::Control(control::Request::Down(reply)) => {
                let _ = reply.send(json!({"ok": true, "note": "already going down"}));
            }
            _ => {}
        }
    }

    fn kill_all(&self) -> bool {
        for r in self.procs.values() {
            let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
        }
        true
    }
}
