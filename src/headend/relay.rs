//! The relay of one service: the source sends RTP to a local UDP port (and RTCP sender
//! reports to the port above it); the relay sends both to the service's group, ports 5004
//! and 5005, out of exactly the interfaces that have listeners. Each output is a socket of
//! its own whose interface is set with IPV6_MULTICAST_IF / IP_MULTICAST_IF, never left to
//! the order of the ff00::/8 routes in the local table. It also reads the receivers'
//! RTCP reports sent to the group on 5005, to count who reports.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::rtcp;
use super::service::Listener;
use crate::plan::{RTCP_PORT, RTP_PORT};
use crate::sockets as mnet;

/// Hop limit / TTL of the relayed RTP and RTCP: the groups are site-wide.
pub const HOPS: u8 = 32;
/// A receiver that sent no report this long is no longer counted.
pub const REPORT_WINDOW: Duration = Duration::from_secs(30);
/// At most one traffic note a service per this.
const TRAFFIC_EVERY: Duration = Duration::from_millis(200);
/// A new output gets the last RTP packet at once when it is younger than this: a join to
/// a running (warm, lingering, shared) service then need not wait for the source's next
/// packet (up to one packet time, 20 ms for Opus). Older, it would only be a stale frame.
pub const HELD_FRESH: Duration = Duration::from_millis(100);

/// Where a listener's interface is, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub listener: Listener,
    pub ifindex: u32,
}

impl Output {
    pub fn resolve(l: &Listener) -> Option<Output> {
        mnet::ifindex(&l.iface).map(|ifindex| Output {
            listener: l.clone(),
            ifindex,
        })
    }
}

/// Counters of one service, kept across source restarts.
#[derive(Debug, Default)]
pub struct Counters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub sender_reports: AtomicU64,
    /// Dropped because an output socket was full.
    pub dropped: AtomicU64,
    /// Receiver SSRC → when it last reported.
    receivers: Mutex<HashMap<u32, Instant>>,
}

impl Counters {
    /// Receivers that sent an RTCP receiver report within [`REPORT_WINDOW`].
    pub fn reporting_receivers(&self, now: Instant) -> usize {
        let mut r = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, t| now.duration_since(*t) < REPORT_WINDOW);
        r.len()
    }

    fn heard(&self, packets: &[rtcp::Packet], now: Instant) {
        let mut r = self.receivers.lock().unwrap_or_else(|e| e.into_inner());
        for p in packets {
            match p {
                // Bounded: a flood of made-up SSRCs must not eat memory.
                rtcp::Packet::ReceiverReport { ssrc, .. }
                    if r.len() < 65_536 || r.contains_key(ssrc) =>
                {
                    r.insert(*ssrc, now);
                }
                rtcp::Packet::Bye { ssrcs } => {
                    for s in ssrcs {
                        r.remove(s);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The relay of one service, running as a task while it lives.
pub struct Relay {
    /// The local port the source sends RTP to (RTCP to the one above).
    pub rtp_port: u16,
    pub counters: Arc<Counters>,
    outputs: watch::Sender<Vec<Output>>,
    /// Bumped when the source starts or stops: a packet held from before is never sent.
    source_gen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two adjacent local ports, RTP and RTCP (ffmpeg sends RTCP to the RTP port + 1).
fn local_pair() -> io::Result<(UdpSocket, UdpSocket)> {
    for _ in 0..64 {
        let rtp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = rtp.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port + 1)) {
            return Ok((rtp, rtcp));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no two adjacent free local UDP ports for RTP and RTCP",
    ))
}

fn out_socket(o: &Output) -> io::Result<UdpSocket> {
    let v6 = !o.listener.v4;
    let s = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    mnet::set_multicast(&s, v6, HOPS, o.ifindex)?;
    if v6 {
        s.set_multicast_loop_v6(false)?;
    } else {
        s.set_multicast_loop_v4(false)?;
    }
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Receives the receivers' RTCP on `group`:5005 (bound to the group, so only its packets).
fn report_socket(group: IpAddr) -> io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(
        if group.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    if group.is_ipv6() {
        s.set_only_v6(true)?;
        s.set_multicast_loop_v6(false)?;
    } else {
        s.set_multicast_loop_v4(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(group, RTCP_PORT).into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

impl Relay {
    /// Binds the local ports and starts relaying (to no interface until told).
    /// `traffic` gets the service number when RTP arrives (at most every 200 ms).
    pub fn start(
        number: u32,
        group6: Ipv6Addr,
        group4: Option<Ipv4Addr>,
        counters: Arc<Counters>,
        traffic: mpsc::UnboundedSender<u32>,
    ) -> io::Result<Relay> {
        let (rtp, sr) = local_pair()?;
        let rtp_port = rtp.local_addr()?.port();
        rtp.set_nonblocking(true)?;
        sr.set_nonblocking(true)?;
        let rtp = tokio::net::UdpSocket::from_std(rtp)?;
        let sr = tokio::net::UdpSocket::from_std(sr)?;
        let rr6 = report_socket(group6.into())?;
        let rr4 = match group4 {
            Some(g) => Some(report_socket(g.into())?),
            None => None,
        };
        let (tx, rx) = watch::channel(Vec::new());
        let source_gen = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(Task {
            number,
            group6,
            group4,
            rtp,
            sr,
            rr6,
            rr4,
            outputs: rx,
            counters: counters.clone(),
            traffic,
            source_gen: source_gen.clone(),
        }));
        Ok(Relay {
            rtp_port,
            counters,
            outputs: tx,
            source_gen,
            task,
        })
    }

    /// The source (re)starts or stops: the packet held for new outputs is from an old
    /// stream and must not be sent.
    pub fn source_changed(&self) {
        self.source_gen.fetch_add(1, Ordering::Relaxed);
    }

    /// Relays out of exactly these from now on.
    pub fn set_outputs(&self, outputs: Vec<Output>) {
        self.outputs.send_replace(outputs);
    }

    /// The `{rtp}` URL the source sends to. `pkt_size` keeps ffmpeg's packets under an
    /// IPv6 MTU of 1280 with room for the headers.
    pub fn rtp_url(&self) -> String {
        format!("rtp://127.0.0.1:{}?pkt_size=1200", self.rtp_port)
    }
}

struct Task {
    number: u32,
    group6: Ipv6Addr,
    group4: Option<Ipv4Addr>,
    rtp: tokio::net::UdpSocket,
    sr: tokio::net::UdpSocket,
    rr6: tokio::net::UdpSocket,
    rr4: Option<tokio::net::UdpSocket>,
    outputs: watch::Receiver<Vec<Output>>,
    counters: Arc<Counters>,
    traffic: mpsc::UnboundedSender<u32>,
    source_gen: Arc<AtomicU64>,
}

struct Out {
    sock: UdpSocket,
    rtp: SocketAddr,
    rtcp: SocketAddr,
    iface: String,
    /// When the output was added, until its first RTP packet went out (for the log).
    added: Option<Instant>,
}

impl Out {
    /// Sends one RTP packet; the first one is logged with how long it took since the
    /// output was added (the relay's share of join → first packet).
    fn rtp(&mut self, number: u32, packet: &[u8], held: bool) -> io::Result<usize> {
        let r = self.sock.send_to(packet, self.rtp);
        if r.is_ok()
            && let Some(t) = self.added.take()
        {
            debug!(
                "service {number}: first RTP packet out of {} {:.1} ms after the output was added{}",
                self.iface,
                t.elapsed().as_secs_f64() * 1000.0,
                if held { " (the one held)" } else { "" }
            );
        }
        r
    }
}

async fn recv_opt(s: &Option<tokio::net::UdpSocket>, buf: &mut [u8]) -> io::Result<usize> {
    match s {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(mut t: Task) {
    let mut outs: BTreeMap<(u32, bool), Out> = BTreeMap::new();
    let mut joined: Vec<(u32, bool)> = vec![];
    let mut buf = vec![0u8; 65_536];
    // The last RTP packet (swapped with `buf`, not copied) and when it came.
    let mut held = vec![0u8; 65_536];
    let mut held_len = 0usize;
    let mut held_at: Option<Instant> = None;
    let mut held_gen = 0u64;
    let mut sbuf = vec![0u8; 2048];
    let mut rbuf6 = vec![0u8; 2048];
    let mut rbuf4 = vec![0u8; 2048];
    let mut last_note: Option<Instant> = None;
    loop {
        tokio::select! {
            r = t.rtp.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                t.counters.packets.fetch_add(1, Ordering::Relaxed);
                t.counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
                for o in outs.values_mut() {
                    if o.rtp(t.number, &buf[..n], false).is_err() {
                        t.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let now = Instant::now();
                std::mem::swap(&mut buf, &mut held);
                held_len = n;
                held_at = Some(now);
                held_gen = t.source_gen.load(Ordering::Relaxed);
                if last_note.is_none_or(|l| now.duration_since(l) >= TRAFFIC_EVERY) {
                    last_note = Some(now);
                    let _ = t.traffic.send(t.number);
                }
            }
            r = t.sr.recv(&mut sbuf) => {
                let Ok(n) = r else { continue };
                t.counters.sender_reports.fetch_add(1, Ordering::Relaxed);
                for o in outs.values() {
                    let _ = o.sock.send_to(&sbuf[..n], o.rtcp);
                }
            }
            r = t.rr6.recv(&mut rbuf6) => {
                if let Ok(n) = r {
                    heard(&t.counters, &rbuf6[..n]);
                }
            }
            r = recv_opt(&t.rr4, &mut rbuf4) => {
                if let Ok(n) = r {
                    heard(&t.counters, &rbuf4[..n]);
                }
            }
            r = t.outputs.changed() => {
                if r.is_err() {
                    return;
                }
                let want = t.outputs.borrow_and_update().clone();
                let added = apply_outputs(&mut t, &want, &mut outs, &mut joined);
                if held_at.is_some_and(|h| h.elapsed() < HELD_FRESH)
                    && held_gen == t.source_gen.load(Ordering::Relaxed)
                {
                    for k in added {
                        if let Some(o) = outs.get_mut(&k)
                            && o.rtp(t.number, &held[..held_len], true).is_err()
                        {
                            t.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

fn heard(c: &Counters, b: &[u8]) {
    match rtcp::parse(b) {
        Ok(p) => c.heard(&p, Instant::now()),
        Err(e) => debug!("ignoring a packet on the RTCP port: {e}"),
    }
}

/// Makes the outputs match `want`; returns the keys of those it added.
fn apply_outputs(
    t: &mut Task,
    want: &[Output],
    outs: &mut BTreeMap<(u32, bool), Out>,
    joined: &mut Vec<(u32, bool)>,
) -> Vec<(u32, bool)> {
    let mut added = vec![];
    let keys: Vec<(u32, bool)> = want
        .iter()
        .filter(|o| !o.listener.v4 || t.group4.is_some())
        .map(|o| (o.ifindex, o.listener.v4))
        .collect();
    outs.retain(|k, _| keys.contains(k));
    for o in want {
        let k = (o.ifindex, o.listener.v4);
        if outs.contains_key(&k) {
            continue;
        }
        let group: IpAddr = match (o.listener.v4, t.group4) {
            (false, _) => t.group6.into(),
            (true, Some(g)) => g.into(),
            (true, None) => continue,
        };
        match out_socket(o) {
            Ok(sock) => {
                added.push(k);
                outs.insert(
                    k,
                    Out {
                        sock,
                        rtp: SocketAddr::new(group, RTP_PORT),
                        rtcp: SocketAddr::new(group, RTCP_PORT),
                        iface: o.listener.iface.clone(),
                        added: Some(Instant::now()),
                    },
                );
            }
            Err(e) => warn!(
                "service {}: cannot send to {group} on {}: {e}",
                t.number, o.listener.iface
            ),
        }
    }
    // Receiver reports come to the group: be a member where we send.
    for k in joined.clone() {
        if !keys.contains(&k) {
            let (ifindex, v4) = k;
            let _ = leave(t, v4, ifindex);
            joined.retain(|j| *j != k);
        }
    }
    for k in keys {
        if !joined.contains(&k) {
            let (ifindex, v4) = k;
            match join(t, v4, ifindex) {
                Ok(()) => joined.push(k),
                Err(e) => debug!("service {}: joining for RTCP: {e}", t.number),
            }
        }
    }
    added
}

fn join(t: &Task, v4: bool, ifindex: u32) -> io::Result<()> {
    if v4 {
        let (Some(s), Some(g)) = (&t.rr4, t.group4) else {
            return Ok(());
        };
        mnet::join(&socket2::SockRef::from(s), g.into(), ifindex)
    } else {
        socket2::SockRef::from(&t.rr6).join_multicast_v6(&t.group6, ifindex)
    }
}

fn leave(t: &Task, v4: bool, ifindex: u32) -> io::Result<()> {
    if v4 {
        let (Some(s), Some(g)) = (&t.rr4, t.group4) else {
            return Ok(());
        };
        socket2::SockRef::from(s)
            .leave_multicast_v4_n(&g, &socket2::InterfaceIndexOrAddress::Index(ifindex))
    } else {
        socket2::SockRef::from(&t.rr6).leave_multicast_v6(&t.group6, ifindex)
    }
}
