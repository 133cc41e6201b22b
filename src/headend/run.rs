//! The headend's loop: one tokio runtime (current thread). Membership events, source
//! starts and exits, relay traffic, timers and control requests come in over channels;
//! the pure [`Services`] machine decides; this file carries its actions out.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::announce::{self, Announcer, Meta};
use super::directory::{self, DirectoryConfig, DirectoryEntry, DirectorySource, NumberBlock};
use super::listen::{Listener as Membership, MembershipEvent};
use super::membership::{QuerierConfig, QuerierMode};
use super::relay::{Counters, Output, Relay};
use super::service::{Action, Event, Listener, Phase, ServiceConfig, Services};
use super::source::{Source, SourceConfig, SourceSpec};
use crate::plan::{HeadendPlan, ServiceSource, groups};

#[derive(Debug, thiserror::Error)]
pub enum HeadendError {
    #[error("starting the tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("listening on {path}: {source}")]
    Control {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Listen(String),
}

/// One service the headend can play.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    group6: Ipv6Addr,
    group4: Option<Ipv4Addr>,
    spec: SourceSpec,
}

enum Msg {
    Membership(MembershipEvent),
    Started {
        number: u32,
        pid: u32,
        stop: oneshot::Sender<()>,
        meta: Option<tokio::sync::watch::Receiver<super::source::StreamMeta>>,
    },
    StartFailed {
        number: u32,
        error: String,
    },
    Exited {
        number: u32,
        why: String,
    },
    Meta {
        number: u32,
        meta: Meta,
    },
    Status(oneshot::Sender<Value>),
    /// A directory was (re-)read: its entries now.
    Directory {
        index: usize,
        entries: Vec<DirectoryEntry>,
    },
}

struct Running {
    pid: u32,
    stop: Option<oneshot::Sender<()>>,
}

struct Headend {
    plan: HeadendPlan,
    entries: HashMap<u32, Entry>,
    services: Services,
    relays: HashMap<u32, Relay>,
    counters: HashMap<u32, Arc<Counters>>,
    sources: HashMap<u32, Running>,
    /// Services whose SDP file was read since their source started.
    sdp_read: HashSet<u32>,
    announcer: Announcer,
    source_cfg: SourceConfig,
    tx: mpsc::UnboundedSender<Msg>,
    traffic_tx: mpsc::UnboundedSender<u32>,
    membership: Option<Membership>,
    started: Instant,
    /// The numbers each directory filled last time.
    filled: HashMap<usize, Vec<u32>>,
}

/// For an ffmpeg command that does not write its SDP anywhere (`{sdp}` absent), ask it to:
/// `-sdp_file {sdp}` just before the output. Other programs are left as they are.
pub fn with_sdp_file(argv: &[String]) -> Vec<String> {
    let is_ffmpeg = argv
        .first()
        .is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == "ffmpeg"));
    if !is_ffmpeg
        || argv.iter().any(|a| a.contains("{sdp}") || a == "-sdp_file")
        || !argv.iter().any(|a| a.contains("{rtp}"))
    {
        return argv.to_vec();
    }
    let mut out = vec![];
    for a in argv {
        if a.contains("{rtp}") {
            out.push("-sdp_file".to_string());
            out.push("{sdp}".to_string());
        }
        out.push(a.clone());
    }
    out
}

/// The querier's configuration from the plan.
pub fn querier_config(plan: &HeadendPlan) -> QuerierConfig {
    querier_of(&plan.querier)
}

/// A planned querier (the headend's, the MLD proxy's downstreams') as the machine's config.
pub fn querier_of(q: &crate::plan::QuerierPlan) -> QuerierConfig {
    QuerierConfig {
        robustness: q.robustness,
        query_interval: q.query_interval,
        query_response_interval: q.query_response_interval,
        last_listener_interval: q.last_listener_interval,
        last_listener_count: Some(q.last_listener_count),
        startup_interval: Some(q.startup_query_interval),
        startup_count: Some(q.startup_query_count),
        querier: match q.mode {
            crate::site::QuerierMode::Auto => QuerierMode::Auto,
            crate::site::QuerierMode::Never => QuerierMode::Never,
        },
    }
}

/// Runs the headend until SIGTERM/SIGINT.
pub fn main(plan: HeadendPlan) -> Result<(), HeadendError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HeadendError::Runtime)?;
    rt.block_on(run(plan))
}

fn entries(plan: &HeadendPlan) -> HashMap<u32, Entry> {
    plan.services
        .iter()
        .map(|s| {
            let spec = match &s.source {
                ServiceSource::Command(argv) => SourceSpec::Command {
                    argv: with_sdp_file(argv),
                },
                ServiceSource::Url(u) => SourceSpec::Url { url: u.clone() },
            };
            (
                s.number,
                Entry {
                    name: s.name.clone(),
                    group6: s.group,
                    group4: s.group4,
                    spec,
                },
            )
        })
        .collect()
}

async fn run(plan: HeadendPlan) -> Result<(), HeadendError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let (traffic_tx, mut traffic_rx) = mpsc::unbounded_channel::<u32>();
    let mut services = Services::new(plan.max_sources as usize, plan.stall);
    let mut announcer = Announcer::new(
        plan.interfaces.clone(),
        plan.sap_interval,
        plan.sdp_dir.clone(),
    );
    let entries = entries(&plan);
    for s in &plan.services {
        services.add(
            s.number,
            ServiceConfig {
                name: s.name.clone(),
                linger: s.linger,
                warm: s.warm,
            },
        );
        announcer.add(s.number, &s.name, s.group, s.group4);
    }
    serve_control(&plan.control_socket, tx.clone())?;
    source_sdp_dir(&plan.source_sdp_dir);
    let (mtx, mut mrx) = mpsc::unbounded_channel();
    let membership = Membership::start(plan.interfaces.clone(), querier_config(&plan), mtx)
        .map_err(|e| HeadendError::Listen(e.to_string()))?;
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = mrx.recv().await {
                if tx.send(Msg::Membership(ev)).is_err() {
                    break;
                }
            }
        });
    }
    let source_cfg = SourceConfig {
        user: plan.user.clone(),
        ..Default::default()
    };
    let mut h = Headend {
        entries,
        services,
        relays: HashMap::new(),
        counters: HashMap::new(),
        sources: HashMap::new(),
        sdp_read: HashSet::new(),
        announcer,
        source_cfg,
        tx,
        traffic_tx,
        membership: Some(membership),
        started: Instant::now(),
        filled: HashMap::new(),
        plan,
    };
    h.load_directories();
    info!(
        "headend: listening on {} for {} service(s); control {}",
        h.plan.interfaces.join(", "),
        h.plan.services.len(),
        h.plan.control_socket.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(HeadendError::Runtime)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(HeadendError::Runtime)?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(HeadendError::Runtime)?;
    h.feed(Event::Begin);
    let mut announce_at = tokio::time::Instant::now();
    loop {
        let deadline = h
            .services
            .next_deadline()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(m) = rx.recv() => h.message(m),
            Some(n) = traffic_rx.recv() => h.traffic(n),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                h.feed(Event::Tick);
            }
            _ = tokio::time::sleep_until(announce_at) => {
                announce_at = tokio::time::Instant::from_std(h.announcer.tick(Instant::now()));
            }
            _ = hup.recv() => {
                info!("SIGHUP: reading the directories again");
                h.load_directories();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // Announcements due now (a new SDP, a title) go out without waiting.
        announce_at = announce_at.min(tokio::time::Instant::now() + Duration::from_millis(50));
    }
    info!("headend: stopping {} source(s)", h.sources.len());
    h.membership.take();
    for r in h.sources.values_mut() {
        if let Some(s) = r.stop.take() {
            let _ = s.send(());
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while !h.sources.is_empty() {
        tokio::select! {
            Some(m) = rx.recv() => {
                if let Msg::Exited { number, .. } = m {
                    h.sources.remove(&number);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = std::fs::remove_file(&h.plan.control_socket);
    let _ = std::fs::remove_dir_all(&h.plan.source_sdp_dir);
    Ok(())
}

/// The directory sources write their SDP to: 0711 (under `up` the supervisor made it, the
/// headend's user owns it), so the sources' user reaches its own file by name but cannot
/// list or add others.
fn source_sdp_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)))
    {
        warn!(
            "{}: {e}; sources cannot tell their media, services are announced only once known",
            dir.display()
        );
    }
}

impl Headend {
    fn message(&mut self, m: Msg) {
        match m {
            Msg::Membership(ev) => self.membership_event(ev),
            Msg::Started {
                number,
                pid,
                stop,
                meta,
            } => {
                self.sources.insert(
                    number,
                    Running {
                        pid,
                        stop: Some(stop),
                    },
                );
                // The source may have been stopped while it started.
                if !matches!(
                    self.services.phase(number),
                    Some(Phase::Starting | Phase::Running | Phase::Lingering)
                ) {
                    self.stop_source(number);
                }
                if let Some(mut meta) = meta {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        loop {
                            let m = meta.borrow_and_update().clone();
                            let _ = tx.send(Msg::Meta {
                                number,
                                meta: Meta {
                                    name: m.name,
                                    title: m.title,
                                    url: m.url,
                                },
                            });
                            if meta.changed().await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
            Msg::StartFailed { number, error } => {
                self.sources.remove(&number);
                self.feed(Event::StartFailed { number, error });
            }
            Msg::Exited { number, why } => {
                self.sources.remove(&number);
                self.feed(Event::Exited { number, why });
            }
            Msg::Meta { number, meta } => self.announcer.set_meta(number, meta),
            Msg::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Msg::Directory { index, entries } => self.directory(index, entries),
        }
    }

    /// Reads every directory off the runtime's thread; the entries come back as messages.
    fn load_directories(&self) {
        for (index, d) in self.plan.directories.iter().enumerate() {
            let source = match (&d.playlist, &d.commands) {
                (Some(p), _) => DirectorySource::List(p.clone()),
                (None, Some(c)) => DirectorySource::CommandFile(c.clone()),
                (None, None) => continue,
            };
            let cfg = DirectoryConfig {
                name: d.name.clone(),
                block: NumberBlock::Range {
                    first: d.first,
                    count: d.count.min(u64::from(u32::MAX)) as u32,
                },
                source,
                http: Default::default(),
            };
            let tx = self.tx.clone();
            tokio::task::spawn_blocking(move || match directory::load(&cfg) {
                Ok(entries) => {
                    let _ = tx.send(Msg::Directory { index, entries });
                }
                Err(e) => error!("directory {:?}: {e}; keeping what it had", cfg.name),
            });
        }
    }

    /// A directory's entries become services; those it no longer lists go away.
    fn directory(&mut self, index: usize, list: Vec<DirectoryEntry>) {
        let Some(d) = self.plan.directories.get(index).cloned() else {
            return;
        };
        let now: Vec<u32> = list.iter().map(|e| e.number).collect();
        for old in self.filled.remove(&index).unwrap_or_default() {
            if !now.contains(&old) {
                let actions = self.services.remove(old);
                for a in actions {
                    match a {
                        Action::Stop(n) => self.stop_source(n),
                        Action::Outputs(n, l) => self.outputs(n, &l),
                        _ => {}
                    }
                }
                self.announcer.remove(old);
                self.entries.remove(&old);
                self.relays.remove(&old);
            }
        }
        info!(
            "directory {:?}: {} entr{} in {}..={}",
            d.name,
            list.len(),
            if list.len() == 1 { "y" } else { "ies" },
            d.first,
            u64::from(d.first) + d.count.saturating_sub(1)
        );
        for e in list {
            let group6 = groups::service_group(self.plan.prefix, e.number);
            let group4 = self
                .plan
                .ipv4_space
                .and_then(|s| groups::service_group4(s, e.number));
            let spec = match e.spec {
                SourceSpec::Command { argv } => SourceSpec::Command {
                    argv: with_sdp_file(&argv),
                },
                other => other,
            };
            self.entries.insert(
                e.number,
                Entry {
                    name: e.name.clone(),
                    group6,
                    group4,
                    spec,
                },
            );
            self.services.add(
                e.number,
                ServiceConfig {
                    name: e.name.clone(),
                    linger: d.linger,
                    warm: false,
                },
            );
            self.announcer.add(e.number, &e.name, group6, group4);
        }
        self.filled.insert(index, now.clone());
        self.rejoin(&now);
    }

    /// Listeners already heard for numbers that only now have a service (a directory read
    /// after their join): the membership state knows them, so they need not join again.
    fn rejoin(&mut self, numbers: &[u32]) {
        let Some(m) = &self.membership else {
            return;
        };
        let mut wanted = vec![];
        for i in m.status() {
            for g in i.membership.iter().flat_map(|m| m.groups.iter()) {
                if g.wanted {
                    wanted.push((i.iface.clone(), g.group));
                }
            }
        }
        for (iface, group) in wanted {
            let number = match group {
                IpAddr::V6(g) => groups::service_number(self.plan.prefix, g),
                IpAddr::V4(g) => self
                    .plan
                    .ipv4_space
                    .and_then(|s| groups::service_number4(s, g)),
            };
            if number.is_some_and(|n| numbers.contains(&n)) {
                self.membership_event(MembershipEvent::Wanted {
                    iface,
                    ifindex: 0,
                    group,
                    wanted: true,
                    why: super::membership::Why::OurAddresses,
                });
            }
        }
    }

    fn membership_event(&mut self, ev: MembershipEvent) {
        let MembershipEvent::Wanted {
            iface,
            group,
            wanted,
            ..
        } = ev
        else {
            return;
        };
        let number = match group {
            IpAddr::V6(g) => groups::service_number(self.plan.prefix, g),
            IpAddr::V4(g) => self
                .plan
                .ipv4_space
                .and_then(|s| groups::service_number4(s, g)),
        };
        let Some(number) = number else {
            return;
        };
        self.feed(Event::Wanted {
            number,
            listener: Listener {
                iface,
                v4: group.is_ipv4(),
            },
            wanted,
        });
    }

    fn traffic(&mut self, number: u32) {
        if !self.sdp_read.contains(&number) {
            let path = announce::source_sdp_path(&self.plan.source_sdp_dir, number);
            if let Ok(text) = std::fs::read_to_string(&path)
                && !text.trim().is_empty()
            {
                self.sdp_read.insert(number);
                self.announcer.learn_sdp(number, &text);
            }
        }
        self.feed(Event::Traffic { number });
    }

    fn feed(&mut self, ev: Event) {
        let actions = self.services.next(Instant::now(), ev);
        for a in actions {
            match a {
                Action::Start(n) => self.start_source(n),
                Action::Stop(n) => self.stop_source(n),
                Action::Outputs(n, listeners) => self.outputs(n, &listeners),
                Action::Log(l) => info!("{l}"),
            }
        }
        // The announcer follows the phases.
        for st in self.services.status() {
            let running = matches!(st.state, Phase::Running | Phase::Starting);
            let outs = if running {
                st.listeners.iter().filter_map(Output::resolve).collect()
            } else {
                vec![]
            };
            self.announcer.set_running(st.number, running, outs);
        }
    }

    fn outputs(&mut self, number: u32, listeners: &[Listener]) {
        let outs: Vec<Output> = listeners.iter().filter_map(Output::resolve).collect();
        if let Some(r) = self.relays.get(&number) {
            r.set_outputs(outs);
        } else if !listeners.is_empty()
            && let Err(e) = self.relay(number)
        {
            error!("service {number}: cannot relay: {e}");
        }
    }

    /// The service's relay, made on first use and kept (its port stays the same).
    fn relay(&mut self, number: u32) -> std::io::Result<&Relay> {
        if !self.relays.contains_key(&number) {
            let e = self
                .entries
                .get(&number)
                .ok_or_else(|| std::io::Error::other("no such service"))?;
            let counters = self.counters.entry(number).or_default().clone();
            let r = Relay::start(
                number,
                e.group6,
                e.group4,
                counters,
                self.traffic_tx.clone(),
            )?;
            let listeners: Vec<Output> = self
                .services
                .status()
                .into_iter()
                .find(|s| s.number == number)
                .map(|s| s.listeners.iter().filter_map(Output::resolve).collect())
                .unwrap_or_default();
            r.set_outputs(listeners);
            self.relays.insert(number, r);
        }
        Ok(&self.relays[&number])
    }

    fn start_source(&mut self, number: u32) {
        let port = match self.relay(number) {
            Ok(r) => {
                r.source_changed();
                r.rtp_port
            }
            Err(e) => {
                let _ = self.tx.send(Msg::StartFailed {
                    number,
                    error: format!("binding its local RTP port: {e}"),
                });
                return;
            }
        };
        let Some(e) = self.entries.get(&number).cloned() else {
            return;
        };
        self.sdp_read.remove(&number);
        let sdp = announce::source_sdp_path(&self.plan.source_sdp_dir, number);
        let _ = std::fs::remove_file(&sdp);
        let cfg = self.source_cfg.clone();
        let tx = self.tx.clone();
        let rtp = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        tokio::spawn(async move {
            let name = format!("service {number} {:?}", e.name);
            match Source::start(&name, &e.spec, rtp, &sdp, &cfg).await {
                Err(err) => {
                    let _ = tx.send(Msg::StartFailed {
                        number,
                        error: err.to_string(),
                    });
                }
                Ok(mut src) => {
                    let (stop_tx, stop_rx) = oneshot::channel();
                    let meta = matches!(e.spec, SourceSpec::Url { .. }).then(|| src.metadata());
                    let _ = tx.send(Msg::Started {
                        number,
                        pid: src.pid(),
                        stop: stop_tx,
                        meta,
                    });
                    let st = tokio::select! {
                        st = src.exited() => st,
                        _ = stop_rx => src.stop().await,
                    };
                    let why = match (
                        st.code(),
                        std::os::unix::process::ExitStatusExt::signal(&st),
                    ) {
                        (Some(c), _) => format!("exit code {c}"),
                        (None, Some(s)) => format!("signal {s}"),
                        _ => st.to_string(),
                    };
                    let _ = tx.send(Msg::Exited { number, why });
                }
            }
        });
    }

    fn stop_source(&mut self, number: u32) {
        if let Some(r) = self.relays.get(&number) {
            r.source_changed();
        }
        if let Some(r) = self.sources.get_mut(&number)
            && let Some(s) = r.stop.take()
        {
            let _ = s.send(());
        }
    }

    fn status(&self) -> Value {
        let now = Instant::now();
        let interfaces: Vec<Value> = self
            .membership
            .as_ref()
            .map(|m| {
                m.status()
                    .into_iter()
                    .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default();
        let services: Vec<Value> = self
            .services
            .status()
            .into_iter()
            .map(|s| {
                let e = self.entries.get(&s.number);
                let c = self.counters.get(&s.number);
                let mut per_iface: std::collections::BTreeMap<String, Vec<&str>> =
                    Default::default();
                for l in &s.listeners {
                    per_iface.entry(l.iface.clone()).or_default().push(if l.v4 {
                        "ipv4"
                    } else {
                        "ipv6"
                    });
                }
                json!({
                    "number": s.number,
                    "name": s.name,
                    "group": e.map(|e| e.group6.to_string()),
                    "group4": e.and_then(|e| e.group4).map(|g| g.to_string()),
                    "state": s.state,
                    "listeners": per_iface,
                    "reporting_receivers": c.map_or(0, |c| c.reporting_receivers(now)),
                    "packets": c.map_or(0, |c| c.packets.load(Ordering::Relaxed)),
                    "bytes": c.map_or(0, |c| c.bytes.load(Ordering::Relaxed)),
                    "restarts": s.restarts,
                    "warm": s.warm,
                    "waiting_for_slot": s.waiting_for_slot,
                    "pid": self.sources.get(&s.number).map(|r| r.pid),
                    "announced": self.announcer.has_media(s.number),
                })
            })
            .collect();
        // Healthy: the listeners (and queriers) run on every interface.
        let healthy = self.membership.is_some()
            && !interfaces.is_empty()
            && interfaces.iter().all(|i| i["error"].is_null());
        json!({
            "healthy": healthy,
            "pid": std::process::id(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "sources_running": self.services.running_sources(),
            "max_sources": self.plan.max_sources,
            "interfaces": interfaces,
            "services": services,
        })
    }
}

/// A request on the control socket.
#[derive(serde::Deserialize)]
struct Request {
    cmd: String,
}

/// `{"cmd":"status"}` on the control socket (JSON lines, mode 0600).
fn serve_control(path: &Path, tx: mpsc::UnboundedSender<Msg>) -> Result<(), HeadendError> {
    let err = |source| HeadendError::Control {
        path: path.display().to_string(),
        source,
    };
    let listener = crate::jsonl::listen(path).map_err(err)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(err)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(crate::jsonl::serve_lines(
                stream,
                move |r: Result<Request, serde_json::Error>| {
                    let tx = tx.clone();
                    async move {
                        match r {
                            Ok(r) if r.cmd == "status" => {
                                let (o, rx) = oneshot::channel();
                                let _ = tx.send(Msg::Status(o));
                                rx.await
                                    .unwrap_or_else(|_| json!({"error": "the headend is stopping"}))
                            }
                            Ok(r) => {
                                json!({"error": format!("unknown command {:?}: use status", r.cmd)})
                            }
                            Err(e) => json!({"error": format!("not a request: {e}")}),
                        }
                    }
                },
            ));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ffmpeg_is_asked_for_its_sdp() {
        let a = v(&["ffmpeg", "-re", "-i", "x", "-f", "rtp", "{rtp}"]);
        assert_eq!(
            with_sdp_file(&a),
            v(&[
                "ffmpeg",
                "-re",
                "-i",
                "x",
                "-f",
                "rtp",
                "-sdp_file",
                "{sdp}",
                "{rtp}"
            ])
        );
        let b = v(&["ffmpeg", "-sdp_file", "{sdp}", "{rtp}"]);
        assert_eq!(with_sdp_file(&b), b);
        let c = v(&["dvblast", "-D", "{rtp}"]);
        assert_eq!(with_sdp_file(&c), c);
    }
}
