//! The unicast-to-multicast translator (TreeDN), a drop-in for the original: each unicast
//! flow (source address, source port) gets a group picked at random from a space, and
//! every payload of the flow goes out unchanged to (group, multicast port).
//!
//! Two threads. The data path (this module) owns the sockets and the flow table and does
//! nothing but batched receive, lookup and batched send. The control thread
//! ([`control`]) gets an event per new, refused or expired flow and does everything slow:
//! log lines, SAP, the Multicast Menu, the state file.

pub mod batch;
pub mod control;
pub mod flows;
pub mod menu;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{sched, signals, sockets};
use batch::Batch;
use flows::{Admit, FlowTable, Limits, Refusal, Space, TICKS_PER_SEC, Tick};

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{0}")]
    Space(#[from] flows::SpaceError),
    #[error("finding the address of the interface holding the default route: {0}")]
    DefaultAddress(String),
    #[error("{what} {object}: {source}")]
    Socket {
        what: &'static str,
        object: String,
        source: std::io::Error,
    },
    #[error("multicast interface {0}: no such interface")]
    NoInterface(String),
    #[error("dropping capabilities: {0}")]
    Caps(String),
    #[error("menu URL {0:?}: give http[s]://HOST[:PORT][/PATH]")]
    MenuUrl(String),
    #[error("receiving on {object}: {source}")]
    Recv {
        object: String,
        source: std::io::Error,
    },
}

fn sock_err(
    what: &'static str,
    object: impl ToString,
) -> impl FnOnce(std::io::Error) -> TranslateError {
    let object = object.to_string();
    move |source| TranslateError::Socket {
        what,
        object,
        source,
    }
}

/// Everything the translator needs, resolved (see `appliance translate --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub unicast: SocketAddr,
    pub space: IpNet,
    pub port: u16,
    pub interface: Option<String>,
    pub ttl: u8,
    pub idle: Duration,
    pub allow: Vec<IpNet>,
    pub max_flows: u32,
    pub new_flows_per_sec: u32,
    /// New flows per second from all sources together.
    pub new_flows_total_per_sec: u32,
    /// A new flow is announced (SAP) and registered (Menu) once it has lived this long.
    pub announce_after: Duration,
    pub sap: bool,
    /// None: the RFC 2974 interval (at least 300 s).
    pub sap_interval: Option<Duration>,
    pub menu: Option<String>,
    pub state_file: Option<PathBuf>,
    /// Where it answers `{"cmd":"status"}` (the supervisor's health check), if anywhere.
    pub control_socket: Option<PathBuf>,
    /// Receive batch size.
    pub batch: usize,
}

impl Config {
    /// The checks clap cannot make: a menu URL the control thread can use.
    pub fn check(&self) -> Result<(), TranslateError> {
        if let Some(m) = &self.menu {
            menu::MenuUrl::parse(m).ok_or_else(|| TranslateError::MenuUrl(m.clone()))?;
        }
        Ok(())
    }
}

/// The warning for a translator anyone upstream can use: its unicast address is not a
/// loopback one and no `allow` list limits who may open flows. None when it is closed.
pub fn open_to_anyone(unicast: SocketAddr, allow: &[IpNet]) -> Option<String> {
    (allow.is_empty() && !unicast.ip().is_loopback()).then(|| {
        format!(
            "the translator on {unicast} is open to anyone who can reach it: any sender \
             may open flows (announced by SAP, registered with the Menu); set \
             [translator] allow to the senders' prefixes"
        )
    })
}

/// The original's default unicast address: that of the interface holding the IPv4 default
/// route.
pub fn default_unicast_ip() -> Result<IpAddr, TranslateError> {
    sockets::default_route_address().map_err(TranslateError::DefaultAddress)
}

/// The translator's sockets, bound (so capabilities can be dropped right after).
pub struct Bound {
    pub unicast: Socket,
    pub multicast: Socket,
    /// The multicast source address receivers see (for SDP and the amt:// URL).
    pub source: IpAddr,
    pub ifindex: u32,
    /// The buffer sizes the kernel granted: (unicast receive, multicast send), in bytes
    /// as getsockopt reports them (twice what was asked: the kernel's bookkeeping).
    pub buffers: (usize, usize),
}

const SOCKET_BUFFER: usize = 8 << 20;

/// Binds the unicast socket to exactly the configured address and sets up the
/// multicast one (TTL, interface, buffers).
pub fn bind(cfg: &Config) -> Result<Bound, TranslateError> {
    let space = Space::new(cfg.space)?;
    let ifindex = match &cfg.interface {
        Some(name) => {
            sockets::ifindex(name).ok_or_else(|| TranslateError::NoInterface(name.clone()))?
        }
        None => 0,
    };
    let u = Socket::new(
        Domain::for_address(cfg.unicast),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(sock_err("creating unicast socket for", cfg.unicast))?;
    if cfg.unicast.is_ipv6() {
        let _ = u.set_only_v6(true);
    }
    let rcvbuf = big_buffers(&u, true);
    u.bind(&cfg.unicast.into())
        .map_err(sock_err("binding unicast socket to", cfg.unicast))?;
    u.set_nonblocking(true)
        .map_err(sock_err("making non-blocking", cfg.unicast))?;

    let v6 = space.net.addr().is_ipv6();
    let m = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(sock_err("creating multicast socket for", cfg.space))?;
    let sndbuf = big_buffers(&m, false);
    let same_family = cfg.unicast.is_ipv6() == v6 && !cfg.unicast.ip().is_unspecified();
    if same_family {
        // Sent from the translator's own address, the one the SDP and amt:// URL name.
        m.bind(&SocketAddr::new(cfg.unicast.ip(), 0).into())
            .map_err(sock_err("binding multicast socket to", cfg.unicast.ip()))?;
    }
    sockets::set_multicast(&m, v6, cfg.ttl, ifindex).map_err(sock_err(
        "setting TTL and interface of multicast socket for",
        cfg.space,
    ))?;
    let source = if same_family {
        cfg.unicast.ip()
    } else {
        sockets::interface_address(cfg.interface.as_deref(), v6).unwrap_or(if v6 {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        })
    };
    Ok(Bound {
        unicast: u,
        multicast: m,
        source,
        ifindex,
        buffers: (rcvbuf, sndbuf),
    })
}

/// Socket buffers sized for bursts: forced past net.core.rmem_max/wmem_max with
/// CAP_NET_ADMIN, else as large as those allow. Returns the size the kernel granted.
fn big_buffers(s: &Socket, recv: bool) -> usize {
    let size = SOCKET_BUFFER as libc::c_int;
    let (force, plain) = if recv {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    for opt in [force, plain] {
        if sockets::setsockopt(s, libc::SOL_SOCKET, opt, &size).is_ok() {
            break;
        }
    }
    let got = if recv {
        s.recv_buffer_size()
    } else {
        s.send_buffer_size()
    };
    got.unwrap_or(0)
}

/// Counters of the data path.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub received: u64,
    pub sent: u64,
    pub refused: u64,
    pub send_errors: u64,
}

/// What the data path tells the control thread.
#[derive(Debug)]
pub enum Event {
    Added {
        src: SocketAddr,
        group: IpAddr,
        restored: bool,
    },
    Removed {
        src: SocketAddr,
        group: IpAddr,
        idle: Duration,
    },
    Refused {
        src: SocketAddr,
        why: Refusal,
    },
    SendFailed(String),
    Stopped(Stats),
}

/// The data path: batched receive, flow lookup, batched send.
pub struct Engine {
    table: FlowTable,
    batch: Box<Batch>,
    started: Instant,
    idle: Tick,
    port: u16,
    /// The multicast interface by name, and the index the socket sends by.
    interface: Option<(String, u32)>,
    ttl: u8,
    events: mpsc::Sender<Event>,
    /// Senders already told they were refused (bounded), so a refused flow logs once.
    refused: HashMap<SocketAddr, Tick>,
    stats: Stats,
    send_error_reported: bool,
}

const REFUSED_REMEMBERED: usize = 4096;

/// Full batches forwarded per wakeup before the loop looks at the stop signal and the
/// clock again (16 × 64 datagrams: well under a millisecond of work).
pub const MAX_BATCHES_PER_WAKEUP: usize = 16;

impl Engine {
    pub fn new(cfg: &Config, events: mpsc::Sender<Event>) -> Result<Engine, TranslateError> {
        let space = Space::new(cfg.space)?;
        let idle = ((cfg.idle.as_millis() as u64 * TICKS_PER_SEC as u64 / 1000).max(1))
            .min(u32::MAX as u64 / 2) as Tick;
        Ok(Engine {
            table: FlowTable::new(
                space,
                Limits {
                    allow: cfg.allow.clone(),
                    max_flows: cfg.max_flows,
                    new_per_sec: cfg.new_flows_per_sec,
                    new_total_per_sec: cfg.new_flows_total_per_sec,
                },
            ),
            batch: Batch::new(cfg.batch.max(1)),
            started: Instant::now(),
            idle,
            port: cfg.port,
            interface: cfg
                .interface
                .as_ref()
                .map(|n| (n.clone(), sockets::ifindex(n).unwrap_or(0))),
            ttl: cfg.ttl,
            events,
            refused: HashMap::new(),
            stats: Stats::default(),
            send_error_reported: false,
        })
    }

    fn now(&self) -> Tick {
        (self.started.elapsed().as_millis() / (1000 / TICKS_PER_SEC as u128)) as Tick
    }

    /// Gives restored flows their groups back (from the state file).
    pub fn restore(&mut self, flows: &[(SocketAddr, IpAddr)]) {
        let now = self.now();
        for (src, group) in flows {
            if self.table.restore(*src, *group, now).is_some() {
                let _ = self.events.send(Event::Added {
                    src: *src,
                    group: *group,
                    restored: true,
                });
            }
        }
    }

    pub fn flows(&self) -> usize {
        self.table.len()
    }

    /// Runs until `stop` is readable (a signalfd or eventfd).
    pub fn run(&mut self, bound: &Bound, stop: RawFd) -> Result<Stats, TranslateError> {
        let ufd = bound.unicast.as_raw_fd();
        let object = bound
            .unicast
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map_or_else(|| "unicast socket".to_string(), |a| a.to_string());
        // A woken data path preempts whatever else shares its CPU instead of waiting out
        // that task's slice (see `sched`); its share of the CPU is unchanged.
        if let Err(e) = sched::short_slice(sched::SHORTEST_SLICE) {
            tracing::debug!("no short scheduler slice for the data path: {e}");
        }
        let mut next_sweep = self.now() + TICKS_PER_SEC.min(self.idle);
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: ufd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(TranslateError::Recv { object, source: e });
                }
            }
            if fds[1].revents != 0 {
                break;
            }
            if fds[0].revents != 0 {
                self.drain(ufd, &bound.multicast, &object)?;
            }
            let now = self.now();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + TICKS_PER_SEC.min(self.idle);
            }
        }
        let _ = self.events.send(Event::Stopped(self.stats));
        Ok(self.stats)
    }

    /// Receives and forwards until the socket is empty or [`MAX_BATCHES_PER_WAKEUP`]
    /// batches went through, so that under a flood the stop signal and the idle sweep are
    /// still looked at between rounds.
    fn drain(&mut self, ufd: RawFd, msock: &Socket, object: &str) -> Result<(), TranslateError> {
        let mfd = msock.as_raw_fd();
        for _ in 0..MAX_BATCHES_PER_WAKEUP {
            let n = self
                .batch
                .recv(ufd)
                .map_err(|source| TranslateError::Recv {
                    object: object.to_string(),
                    source,
                })?;
            if n == 0 {
                return Ok(());
            }
            let now = self.now();
            self.stats.received += n as u64;
            // Consecutive datagrams of one sender skip the lookup.
            let mut last: Option<(SocketAddr, SocketAddr)> = None;
            for i in 0..n {
                let (Some(src), _len) = self.batch.received(i) else {
                    continue;
                };
                let dst = match last {
                    Some((s, d)) if s == src => Some(d),
                    _ => self.route(src, now),
                };
                if let Some(d) = dst {
                    self.batch.queue(i, &d);
                    last = Some((src, d));
                } else {
                    self.stats.refused += 1;
                }
            }
            let (sent, failed, err) = self.batch.flush(mfd);
            self.stats.sent += sent as u64;
            self.stats.send_errors += failed as u64;
            if let Some(e) = err {
                if !self.send_error_reported {
                    self.send_error_reported = true;
                    let _ = self.events.send(Event::SendFailed(e.to_string()));
                }
                self.reattach(msock);
            }
            if n < self.batch.slots() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The multicast interface was re-created (a new index): send by the new one.
    fn reattach(&mut self, msock: &Socket) {
        let Some((name, index)) = &mut self.interface else {
            return;
        };
        if let Some(now) = sockets::ifindex(name)
            && now != *index
            && sockets::set_multicast(msock, self.table.space.net.addr().is_ipv6(), self.ttl, now)
                .is_ok()
        {
            tracing::info!("multicast interface {name} is back as index {now}; sending by it");
            *index = now;
            self.send_error_reported = false;
        }
    }

    fn route(&mut self, src: SocketAddr, now: Tick) -> Option<SocketAddr> {
        match self.table.admit(src, now) {
            Admit::Known(g) => Some(SocketAddr::new(self.table.space.addr(g), self.port)),
            Admit::New(g) => {
                let group = self.table.space.addr(g);
                self.refused.remove(&src);
                let _ = self.events.send(Event::Added {
                    src,
                    group,
                    restored: false,
                });
                Some(SocketAddr::new(group, self.port))
            }
            Admit::Refused(why) => {
                if !self.refused.contains_key(&src) && self.refused.len() < REFUSED_REMEMBERED {
                    self.refused.insert(src, now);
                    let _ = self.events.send(Event::Refused { src, why });
                }
                None
            }
        }
    }

    fn sweep(&mut self, now: Tick) {
        let space = self.table.space;
        let idle = self.idle;
        let events = &self.events;
        self.table.expire(now, idle, |src, g| {
            let _ = events.send(Event::Removed {
                src,
                group: space.addr(g),
                idle: Duration::from_millis(idle as u64 * 1000 / TICKS_PER_SEC as u64),
            });
        });
        // A refused sender may try again (and be told again) after an idle period.
        self.refused.retain(|_, t| now.wrapping_sub(*t) < idle);
    }
}

/// Drops every capability of this process: called after binding, before any thread starts
/// (capabilities are per thread and inherited by threads started later).
pub fn drop_capabilities() -> Result<(), TranslateError> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| TranslateError::Caps(e.to_string());
    // The bounding set needs CAP_SETPCAP, which is dropped with the rest just below.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        caps::clear(None, CapSet::Bounding).map_err(err)?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(err)?;
    }
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Ok(())
}

/// Answers `{"cmd":"status"}` on its control socket, on a thread of its own (started
/// after the capabilities are dropped): healthy, with the addresses its sockets are bound
/// to. Any other request is told what is accepted.
fn serve_status(
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    bound: &Bound,
    open: Option<String>,
) -> Result<(), TranslateError> {
    let addr = |s: &Socket| {
        s.local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.to_string())
    };
    let answer = serde_json::json!({
        "healthy": true,
        "unicast": addr(&bound.unicast),
        "multicast": addr(&bound.multicast),
        "source": bound.source,
        "ifindex": bound.ifindex,
        // Said while it holds: anyone upstream may open flows.
        "open_to_anyone": open,
    });
    listener
        .set_nonblocking(false)
        .map_err(sock_err("making blocking", path.display()))?;
    std::thread::Builder::new()
        .name("translate-status".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                let _ = crate::jsonl::answer_one(
                    stream,
                    Duration::from_millis(500),
                    move |req: Result<serde_json::Value, _>| match req {
                        Ok(r) if r["cmd"] == "status" => answer,
                        _ => serde_json::json!({"error": "send {\"cmd\":\"status\"}"}),
                    },
                );
            }
        })
        .map_err(sock_err("starting thread", "translate-status"))?;
    Ok(())
}

/// `appliance translate`: bind, drop capabilities, run until SIGTERM/SIGINT.
pub fn main(cfg: Config) -> Result<(), TranslateError> {
    let stop = signals::block_termination()
        .map_err(sock_err("creating a signalfd for", "SIGTERM/SIGINT"))?;
    cfg.check()?;
    let bound = bind(&cfg)?;
    let saved = cfg
        .state_file
        .as_deref()
        .map(|p| control::load_state(p, cfg.idle))
        .unwrap_or_default();
    let status = match &cfg.control_socket {
        Some(path) => Some((
            path.clone(),
            crate::jsonl::listen(path).map_err(sock_err("listening on", path.display()))?,
        )),
        None => None,
    };
    drop_capabilities()?;
    if let Some((path, listener)) = status {
        serve_status(
            path,
            listener,
            &bound,
            open_to_anyone(cfg.unicast, &cfg.allow),
        )?;
    }
    tracing::info!(
        unicast = %cfg.unicast,
        space = %cfg.space,
        port = cfg.port,
        interface = cfg.interface.as_deref().unwrap_or("(routing table)"),
        "translating unicast to multicast"
    );
    if let Some(w) = open_to_anyone(cfg.unicast, &cfg.allow) {
        tracing::warn!("{w}");
    }
    // getsockopt reports twice the size set (the kernel's bookkeeping share).
    let wanted = 2 * SOCKET_BUFFER;
    let (rcv, snd) = bound.buffers;
    if rcv < wanted || snd < wanted {
        tracing::warn!(
            receive = rcv,
            send = snd,
            wanted,
            "socket buffers smaller than wanted (no CAP_NET_ADMIN while binding, and \
             net.core.rmem_max/wmem_max lower): bursts may be dropped"
        );
    } else {
        tracing::info!(receive = rcv, send = snd, "socket buffers");
    }
    let (tx, rx) = mpsc::channel();
    let mut engine = Engine::new(&cfg, tx)?;
    let ctl = control::Control::new(&cfg, &bound)?;
    ctl.prune_menu(&saved.iter().map(|(_, g)| *g).collect::<Vec<_>>());
    let control_thread = std::thread::Builder::new()
        .name("translate-control".into())
        .spawn(move || ctl.run(rx))
        .map_err(sock_err("starting thread", "translate-control"))?;
    engine.restore(&saved);
    let result = engine.run(&bound, stop.as_raw_fd());
    drop(engine);
    let _ = control_thread.join();
    result.map(|stats| {
        tracing::info!(
            received = stats.received,
            sent = stats.sent,
            refused = stats.refused,
            send_errors = stats.send_errors,
            "translator stopped"
        );
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket full of datagrams: one wakeup forwards a bounded number of batches and
    /// returns to the poll (where the stop signal and the idle sweep are looked at)
    /// instead of draining the flood first.
    #[test]
    fn a_flood_does_not_hold_the_data_path_in_one_wakeup() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("needs root (SO_RCVBUFFORCE for a socket that holds the flood)");
        }
        // Through the CLI, as `appliance translate` builds it.
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "appliance",
            "translate",
            "--unicast-nif-ip",
            "127.0.0.1",
            "--unicast-port",
            "0",
            "--multicast-interface",
            "lo",
            "--ttl",
            "0",
            "--multicast-addr-space",
            "232.250.0.0/16",
            "--multicast-port",
            "9",
            "--max-flows",
            "10",
            "--no-sap",
        ])
        .unwrap();
        let crate::cli::Command::Translate(args) = cli.command else {
            unreachable!("parsed as translate")
        };
        let cfg = args.config().unwrap();
        let bound = bind(&cfg).expect("bind on loopback");
        let to = bound.unicast.local_addr().unwrap().as_socket().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..5000 {
            let _ = tx.send_to(b"flood", to);
        }
        let (events, _rx) = mpsc::channel();
        let mut engine = Engine::new(&cfg, events).unwrap();
        // One wakeup's work.
        engine
            .drain(bound.unicast.as_raw_fd(), &bound.multicast, "test")
            .unwrap();
        let stats = engine.stats;
        let mut left = 0;
        let mut buf = [0u8; 64];
        while bound.unicast.recv(unsafe_buf(&mut buf)).is_ok() {
            left += 1;
        }
        let queued = stats.received + left;
        assert!(
            queued > 2 * (MAX_BATCHES_PER_WAKEUP * 64) as u64,
            "only {queued} queued"
        );
        assert!(
            stats.received <= (MAX_BATCHES_PER_WAKEUP * 64) as u64,
            "{} of {queued} datagrams forwarded in one wakeup",
            stats.received
        );
    }

    fn unsafe_buf(b: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
        // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv only writes.
        unsafe { &mut *(b as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
    }
}
