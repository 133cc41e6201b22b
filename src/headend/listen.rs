//! The edge of the membership machine: raw MLD and IGMP sockets on each interface, the
//! queries we send, and the events the headend acts on.
//!
//! Per interface name and family, one tokio task:
//! - IPv6: a raw ICMPv6 socket, ICMP6_FILTER passing 130/131/132/143, bound to the device,
//!   joined to ff02::16 (MLDv2 reports) and ff02::2 (MLDv1 Done); queries leave from the
//!   interface's lowest link-local address (IPV6_PKTINFO), hop limit 1, with the hop-by-hop
//!   Router Alert option (RFC 2711, value 0 = MLD) set through IPV6_HOPOPTS.
//! - IPv4: a raw IGMP socket bound to the device, joined to 224.0.0.22 (IGMPv3 reports) and
//!   224.0.0.2 (IGMPv2 Leave); queries leave from the interface's first IPv4 address
//!   (IP_PKTINFO), TTL 1, with the Router Alert IP option (RFC 2113: 94 04 00 00).
//! - MLDv1 and IGMPv1/v2 reports go to the group's own address, which the kernel drops
//!   before any socket sees it unless multicast forwarding is on (`ip6_mc_input`,
//!   `ip_route_input_mc`). So each task also takes the multicast routing API in a private
//!   table of its own ([`TABLE_BASE`] + n; IPv4 with one VIF on the interface) and never
//!   installs a route: that sets `mc_forwarding`, the kernel then hands MLD packets with a
//!   Router Alert to raw ICMPv6 sockets and IGMP packets with a Router Alert to
//!   IP_ROUTER_ALERT sockets, which ours is. A failure there is logged and only v1/v2
//!   reports go unheard.
//! - Our own packets (any source address of this host) are ignored.
//! - Interfaces are looked at again on every netlink link or address event (rtnetlink(7)
//!   RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR; [`LinkWatch`]): one missing at
//!   start is picked up when it appears; one re-created (a new ifindex) gets fresh sockets
//!   and a fresh state (its groups first become not wanted); address changes (a link-local
//!   address finishing DAD) reach the state machine. Only when that netlink socket cannot
//!   be had do they fall back to a check every [`RECHECK`]; a listener that failed to open
//!   its sockets also tries again after [`RECHECK`].
//!
//! Every join, leave, timeout and querier change is logged (interface, group, host).

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::membership::{Action, Family, Heard, Membership, MembershipStatus, QuerierConfig, Why};
use super::wire::{self, Message};
use crate::mroute::kernel;
use crate::netlink::LinkWatch;
use crate::sockets::{ifindex, set_multicast, setsockopt};

/// How often interfaces and addresses are looked up again without netlink events, and how
/// soon a listener whose sockets failed tries again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// What wakes a listener to look at its interface and addresses again.
enum Changes {
    /// Netlink link and address events.
    Events(AsyncFd<LinkWatch>),
    /// A check every [`RECHECK`]: only when the netlink socket could not be had.
    Poll(tokio::time::Interval),
}

impl Changes {
    fn open(name: &str, family: Family) -> Changes {
        let watch = LinkWatch::open_with_addresses().and_then(|w| {
            // SAFETY: the AsyncFd owns the watch and deregisters it before closing it.
            unsafe { AsyncFd::register(w) }.map_err(io::Error::from)
        });
        match watch {
            Ok(w) => Changes::Events(w),
            Err(e) => {
                tracing::warn!(iface = %name, "{} listener: no netlink link events ({e}): looking at the interface every {RECHECK:?} instead", proto(family));
                let mut i = tokio::time::interval(RECHECK);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Changes::Poll(i)
            }
        }
    }

    /// What the log says woke us.
    fn how(&self) -> &'static str {
        match self {
            Changes::Events(_) => "a netlink event",
            Changes::Poll(_) => "the periodic check",
        }
    }

    /// Waits until something may have changed (cancel safe: nothing is lost when dropped).
    async fn next(&mut self) {
        match self {
            Changes::Events(w) => loop {
                let Ok(mut guard) = w.readable().await else {
                    tokio::time::sleep(RECHECK).await;
                    return;
                };
                let any = guard.get_inner().drain();
                // Tokio keeps the readiness if an event came in after the drain.
                guard.clear_ready();
                if any {
                    return;
                }
            },
            Changes::Poll(i) => {
                i.tick().await;
            }
        }
    }
}

/// First of the private multicast routing tables the listeners take (one per interface
/// and family), far from the ids routing daemons use; ip6mr takes ids below 10^8 (ipmr
/// below 10^9).
pub const TABLE_BASE: u32 = 68_640_000;

/// What the headend hears from the listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum MembershipEvent {
    /// Whether any listener on `iface` wants traffic for `group` from one of our addresses.
    Wanted {
        iface: String,
        ifindex: u32,
        group: IpAddr,
        wanted: bool,
        why: Why,
    },
    QuerierChanged {
        iface: String,
        ifindex: u32,
        family: Family,
        querier: Option<IpAddr>,
        we_query: bool,
    },
}

/// One interface and family, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct InterfaceStatus {
    pub iface: String,
    pub family: Family,
    /// None while the interface is missing.
    pub ifindex: Option<u32>,
    /// Why it does not listen, or what is degraded.
    pub error: Option<String>,
    pub membership: Option<MembershipStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("the membership listener needs a tokio runtime: {0}")]
    Runtime(String),
}

#[derive(Default)]
struct Slot {
    ifindex: Option<u32>,
    error: Option<String>,
    state: Option<Membership>,
}

/// Called after an interface's membership state may have changed (a packet was heard, a
/// timer ran, addresses changed), with the interface's name; read [`Listener::status`].
pub type OnChange = Arc<dyn Fn(&str) + Send + Sync>;

/// What a [`Listener`] listens for besides its interfaces and timers.
#[derive(Clone)]
pub struct ListenOptions {
    /// The families listened to on every interface (the headend: both).
    pub families: Vec<Family>,
    /// The first private multicast routing table (see the module comment); a second
    /// listener in the same network namespace needs ids of its own.
    pub table_base: u32,
    pub on_change: Option<OnChange>,
}

impl Default for ListenOptions {
    fn default() -> ListenOptions {
        ListenOptions {
            families: vec![Family::Ipv6, Family::Ipv4],
            table_base: TABLE_BASE,
            on_change: None,
        }
    }
}

/// The listeners of every interface; dropping it stops them.
pub struct Listener {
    slots: Vec<(String, Family, Arc<Mutex<Slot>>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Starts listening (and querying, unless `cfg.querier` is never) on each interface,
    /// IPv6 and IPv4, from inside a tokio runtime.
    pub fn start(
        ifaces: Vec<String>,
        cfg: QuerierConfig,
        events: mpsc::UnboundedSender<MembershipEvent>,
    ) -> Result<Listener, ListenError> {
        Listener::start_with(ifaces, cfg, events, ListenOptions::default())
    }

    /// [`Listener::start`] with a choice of families, tables and a change callback.
    pub fn start_with(
        ifaces: Vec<String>,
        cfg: QuerierConfig,
        events: mpsc::UnboundedSender<MembershipEvent>,
        opts: ListenOptions,
    ) -> Result<Listener, ListenError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| ListenError::Runtime(e.to_string()))?;
        let mut slots = Vec::new();
        let mut tasks = Vec::new();
        for (i, name) in ifaces.iter().enumerate() {
            for (j, family) in [Family::Ipv6, Family::Ipv4].into_iter().enumerate() {
                if !opts.families.contains(&family) {
                    continue;
                }
                let slot = Arc::new(Mutex::new(Slot::default()));
                slots.push((name.clone(), family, slot.clone()));
                let task = Task {
                    name: name.clone(),
                    family,
                    table: opts.table_base + (i as u32) * 2 + j as u32,
                    cfg: cfg.clone(),
                    events: events.clone(),
                    slot,
                    on_change: opts.on_change.clone(),
                };
                tasks.push(rt.spawn(task.run()));
            }
        }
        Ok(Listener { slots, tasks })
    }

    pub fn status(&self) -> Vec<InterfaceStatus> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|(name, family, slot)| {
                let s = slot.lock().unwrap_or_else(|e| e.into_inner());
                InterfaceStatus {
                    iface: name.clone(),
                    family: *family,
                    ifindex: s.ifindex,
                    error: s.error.clone(),
                    membership: s.state.as_ref().map(|m| m.status(now)),
                }
            })
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Task {
    name: String,
    family: Family,
    table: u32,
    cfg: QuerierConfig,
    events: mpsc::UnboundedSender<MembershipEvent>,
    slot: Arc<Mutex<Slot>>,
    on_change: Option<OnChange>,
}

fn proto(family: Family) -> &'static str {
    match family {
        Family::Ipv6 => "MLD",
        Family::Ipv4 => "IGMP",
    }
}

impl Task {
    fn set_slot(&self, f: impl FnOnce(&mut Slot)) {
        f(&mut self.slot.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn run(self) {
        // Opened before the first look, so no change between the two is missed.
        let mut changes = Changes::open(&self.name, self.family);
        let mut said_missing = false;
        let mut said_error: Option<String> = None;
        loop {
            let Some(ifindex) = ifindex(&self.name) else {
                self.set_slot(|s| {
                    *s = Slot {
                        error: Some("no such interface".into()),
                        ..Slot::default()
                    }
                });
                if !said_missing {
                    tracing::warn!(iface = %self.name, "no such interface (yet): {} listener waits for it", proto(self.family));
                    said_missing = true;
                    // Its state is gone.
                    if let Some(f) = &self.on_change {
                        f(&self.name);
                    }
                }
                changes.next().await;
                continue;
            };
            if said_missing {
                tracing::info!(iface = %self.name, ifindex, "the interface appeared (seen by {})", changes.how());
            }
            said_missing = false;
            let link = match Link::open(self.family, &self.name, ifindex, self.table) {
                Ok(l) => l,
                Err(e) => {
                    let e = e.to_string();
                    if said_error.as_deref() != Some(&e) {
                        tracing::error!(iface = %self.name, "{} listener: {e}", proto(self.family));
                        said_error = Some(e.clone());
                    }
                    self.set_slot(|s| {
                        *s = Slot {
                            ifindex: Some(ifindex),
                            error: Some(e),
                            state: None,
                        }
                    });
                    tokio::select! {
                        _ = changes.next() => {}
                        _ = tokio::time::sleep(RECHECK) => {}
                    }
                    continue;
                }
            };
            said_error = None;
            tracing::info!(iface = %self.name, ifindex, "{} listener started", proto(self.family));
            self.serve(link, ifindex, &mut changes).await;
        }
    }

    /// Runs one incarnation of the interface until it goes or is re-created.
    async fn serve(&self, link: Link, ifindex: u32, changes: &mut Changes) {
        let mut m = Membership::new(self.family, self.cfg.clone());
        let (me, ours) = addresses(self.family, &self.name, ifindex);
        let mut actions = m.set_addresses(Instant::now(), me, ours);
        let mut buf = vec![0u8; 65_536];
        let mut version = m.querier_version();
        loop {
            self.act(&link, ifindex, &m, std::mem::take(&mut actions));
            if m.querier_version() != version {
                version = m.querier_version();
                match m.older_querier() {
                    Some(q) => tracing::warn!(
                        iface = %self.name, querier = %q,
                        "an older querier on the link: our queries are {version} until it has \
                         been silent for {:?}",
                        m.older_querier_interval()
                    ),
                    None => tracing::info!(
                        iface = %self.name,
                        "no older querier heard for {:?}: our queries are {version} again",
                        m.older_querier_interval()
                    ),
                }
            }
            self.set_slot(|s| {
                s.ifindex = Some(ifindex);
                s.error = link.degraded.clone();
                s.state = Some(m.clone());
            });
            if let Some(f) = &self.on_change {
                f(&self.name);
            }
            let deadline = m
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = link.sock.readable() => {
                    let Ok(mut guard) = r else { return };
                    loop {
                        match link.recv(&mut buf) {
                            Ok(Some((msg, from))) => {
                                actions.extend(m.on_packet(Instant::now(), &msg, from));
                            }
                            Ok(None) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                guard.clear_ready();
                                break;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                tracing::warn!(iface = %self.name, "reading {} packets: {e}", proto(self.family));
                                guard.clear_ready();
                                break;
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    actions = m.on_timer(Instant::now());
                }
                _ = changes.next() => {
                    if self::ifindex(&self.name) != Some(ifindex) {
                        tracing::warn!(iface = %self.name, ifindex, "interface went away or was re-created (seen by {}): {} state dropped", changes.how(), proto(self.family));
                        for group in m.wanted_groups() {
                            self.emit_wanted(ifindex, group, false, Why::InterfaceGone);
                        }
                        return;
                    }
                    let (me, ours) = addresses(self.family, &self.name, ifindex);
                    actions = m.set_addresses(Instant::now(), me, ours);
                }
            }
        }
    }

    fn emit_wanted(&self, ifindex: u32, group: IpAddr, wanted: bool, why: Why) {
        if wanted {
            tracing::info!(iface = %self.name, %group, %why, "listeners want the group");
        } else {
            tracing::info!(iface = %self.name, %group, %why, "no listener wants the group any more");
        }
        let _ = self.events.send(MembershipEvent::Wanted {
            iface: self.name.clone(),
            ifindex,
            group,
            wanted,
            why,
        });
    }

    fn act(&self, link: &Link, ifindex: u32, m: &Membership, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendQuery { to, query } => {
                    let msg = Message::Query(query.clone());
                    let me = m.address();
                    if let Err(e) = link.send(&msg, to, me) {
                        tracing::warn!(iface = %self.name, %to, "sending a {} query: {e}", query.version);
                    } else {
                        tracing::debug!(iface = %self.name, %to, group = %query.group, "sent a {} query", query.version);
                    }
                }
                Action::Wanted { group, wanted, why } => {
                    self.emit_wanted(ifindex, group, wanted, why)
                }
                Action::QuerierChanged { querier, we_query } => {
                    match (querier, we_query) {
                        (Some(q), true) => {
                            tracing::info!(iface = %self.name, querier = %q, "we are the {} querier", proto(self.family))
                        }
                        (Some(q), false) => {
                            tracing::info!(iface = %self.name, querier = %q, "another {} querier took over: we only listen", proto(self.family))
                        }
                        (None, _) => {
                            tracing::info!(iface = %self.name, "no {} querier on the link", proto(self.family))
                        }
                    }
                    let _ = self.events.send(MembershipEvent::QuerierChanged {
                        iface: self.name.clone(),
                        ifindex,
                        family: self.family,
                        querier,
                        we_query,
                    });
                }
                Action::Heard {
                    group,
                    host,
                    what,
                    version,
                } => match what {
                    Heard::Join => {
                        tracing::info!(iface = %self.name, %group, %host, %version, "join")
                    }
                    Heard::Leave => {
                        tracing::info!(iface = %self.name, %group, %host, %version, "leave")
                    }
                    Heard::Refresh => {
                        tracing::debug!(iface = %self.name, %group, %host, %version, "still listening")
                    }
                },
            }
        }
    }
}

/// The address we query from and every address of this host (of any family).
fn addresses(family: Family, name: &str, ifindex: u32) -> (Option<IpAddr>, Vec<IpAddr>) {
    let all = crate::sockets::addresses();
    let me = match family {
        Family::Ipv4 => all
            .iter()
            .find(|(n, ip)| n == name && ip.is_ipv4())
            .map(|(_, ip)| *ip),
        Family::Ipv6 => link_local(ifindex).map(IpAddr::V6),
    };
    (me, all.into_iter().map(|(_, ip)| ip).collect())
}

/// The lowest usable (not tentative, not failed DAD) link-local address of an interface,
/// from /proc/net/if_inet6 (the only place with the flags short of a netlink dump).
fn link_local(ifindex: u32) -> Option<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    link_local_in(&text, ifindex)
}

/// Lines of /proc/net/if_inet6: address, ifindex, prefix length, scope, flags (hex), name.
fn link_local_in(text: &str, ifindex: u32) -> Option<Ipv6Addr> {
    const IFA_F_DADFAILED: u32 = 0x08;
    const IFA_F_TENTATIVE: u32 = 0x40;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let idx = u32::from_str_radix(f[1], 16).ok()?;
            let flags = u32::from_str_radix(f[4], 16).ok()?;
            let addr = Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?);
            (idx == ifindex
                && addr.is_unicast_link_local()
                && flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0)
                .then_some(addr)
        })
        .min()
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The sockets of one interface and family.
struct Link {
    family: Family,
    ifindex: u32,
    sock: AsyncFd<Socket>,
    /// Holds the private multicast routing table open (see the module comment).
    _forwarding: Option<Socket>,
    /// Set when v1/v2 reports cannot be heard.
    degraded: Option<String>,
}

/// `IPV6_HOPOPTS` (linux/in6.h): sticky hop-by-hop options of sent packets.
const IPV6_HOPOPTS: libc::c_int = 54;
/// Hop-by-hop header: next header and length (filled by the kernel), Router Alert
/// (type 5, length 2, value 0 = MLD), PadN of 0 bytes.
const HOPOPTS_RA: [u8; 8] = [0, 0, 5, 2, 0, 0, 1, 0];
/// IPv4 Router Alert option (RFC 2113).
const IPOPT_RA: [u8; 4] = [0x94, 0x04, 0, 0];

impl Link {
    fn open(family: Family, name: &str, ifindex: u32, table: u32) -> io::Result<Link> {
        let sock = match family {
            Family::Ipv6 => {
                let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(|e| annotate(e, "opening a raw ICMPv6 socket"))?;
                let mut filter = [u32::MAX; 8];
                for t in wire::MLD_TYPES {
                    filter[usize::from(t >> 5)] &= !(1u32 << (t & 31));
                }
                setsockopt(&s, libc::IPPROTO_ICMPV6, kernel::ICMP6_FILTER, &filter)
                    .map_err(|e| annotate(e, "setting ICMP6_FILTER"))?;
                s.bind_device(Some(name.as_bytes()))
                    .map_err(|e| annotate(e, &format!("binding to device {name}")))?;
                for g in [
                    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
                    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
                ] {
                    s.join_multicast_v6(&g, ifindex)
                        .map_err(|e| annotate(e, &format!("joining {g} on {name}")))?;
                }
                set_multicast(&s, true, 1, ifindex)
                    .map_err(|e| annotate(e, "setting IPV6_MULTICAST_IF and hop limit 1"))?;
                s.set_multicast_loop_v6(false)?;
                setsockopt(&s, libc::IPPROTO_IPV6, IPV6_HOPOPTS, &HOPOPTS_RA)
                    .map_err(|e| annotate(e, "setting the Router Alert option (IPV6_HOPOPTS)"))?;
                s
            }
            Family::Ipv4 => {
                let s = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_IGMP)),
                )
                .map_err(|e| annotate(e, "opening a raw IGMP socket"))?;
                s.bind_device(Some(name.as_bytes()))
                    .map_err(|e| annotate(e, &format!("binding to device {name}")))?;
                for g in [Ipv4Addr::new(224, 0, 0, 22), Ipv4Addr::new(224, 0, 0, 2)] {
                    s.join_multicast_v4_n(&g, &InterfaceIndexOrAddress::Index(ifindex))
                        .map_err(|e| annotate(e, &format!("joining {g} on {name}")))?;
                }
                set_multicast(&s, false, 1, ifindex)
                    .map_err(|e| annotate(e, "setting IP_MULTICAST_IF and TTL 1"))?;
                s.set_multicast_loop_v4(false)?;
                setsockopt(&s, libc::IPPROTO_IP, libc::IP_OPTIONS, &IPOPT_RA)
                    .map_err(|e| annotate(e, "setting the Router Alert option (IP_OPTIONS)"))?;
                let one: libc::c_int = 1;
                setsockopt(&s, libc::IPPROTO_IP, libc::IP_ROUTER_ALERT, &one)
                    .map_err(|e| annotate(e, "setting IP_ROUTER_ALERT"))?;
                s
            }
        };
        sock.set_nonblocking(true)?;
        let (forwarding, degraded) = match forwarding(family, ifindex, table) {
            Ok(s) => (Some(s), None),
            Err(e) => {
                let msg = format!(
                    "{} reports sent to a group's own address are not heard: taking \
                     multicast routing table {table}: {e}",
                    if family == Family::Ipv6 {
                        "MLDv1"
                    } else {
                        "IGMPv1/v2"
                    }
                );
                tracing::warn!(iface = %name, "{msg}");
                (None, Some(msg))
            }
        };
        Ok(Link {
            family,
            ifindex,
            // SAFETY: the AsyncFd owns the socket and deregisters it before closing it.
            sock: unsafe { AsyncFd::register(sock) }.map_err(io::Error::from)?,
            _forwarding: forwarding,
            degraded,
        })
    }

    /// One packet: Ok(None) when it is not a membership message we understand.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(Message, IpAddr)>> {
        let fd = self.sock.get_ref().as_raw_fd();
        let (n, from) = nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(fd, buf)
            .map_err(io::Error::from)?;
        let b = &buf[..n];
        Ok(match self.family {
            Family::Ipv6 => {
                let Some(from) = from.as_ref().and_then(|f| f.as_sockaddr_in6()) else {
                    return Ok(None);
                };
                wire::parse_mld(b).ok().map(|m| (m, IpAddr::V6(from.ip())))
            }
            Family::Ipv4 => match wire::split_ipv4(b) {
                Ok((h, igmp)) => wire::parse_igmp(igmp)
                    .ok()
                    .map(|m| (m, IpAddr::V4(h.source))),
                Err(_) => None,
            },
        })
    }

    fn send(&self, msg: &Message, to: IpAddr, from: Option<IpAddr>) -> io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, SockaddrIn6, sendmsg};
        let fd = self.sock.get_ref().as_raw_fd();
        match (to, from) {
            (IpAddr::V6(to), Some(IpAddr::V6(from))) => {
                let bytes = msg.to_mld();
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: from.octets(),
                    },
                    ipi6_ifindex: self.ifindex,
                };
                let dst = SockaddrIn6::from(SocketAddrV6::new(to, 0, 0, self.ifindex));
                sendmsg(
                    fd,
                    &[IoSlice::new(&bytes)],
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&dst),
                )
                .map_err(io::Error::from)?;
            }
            (IpAddr::V4(to), Some(IpAddr::V4(from))) => {
                let bytes = msg.to_igmp();
                let info = libc::in_pktinfo {
                    ipi_ifindex: self.ifindex as libc::c_int,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(from.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let dst = SockaddrIn::from(SocketAddrV4::new(to, 0));
                sendmsg(
                    fd,
                    &[IoSlice::new(&bytes)],
                    &[ControlMessage::Ipv4PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&dst),
                )
                .map_err(io::Error::from)?;
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    "no address to query from",
                ));
            }
        }
        Ok(())
    }
}

/// Takes the multicast routing API in a private table so the kernel passes v1/v2 reports
/// up (see the module comment). IPv4 needs a VIF on the interface; no route is ever added.
fn forwarding(family: Family, ifindex: u32, table: u32) -> io::Result<Socket> {
    let (s, level) = match family {
        Family::Ipv6 => {
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
            // Nothing is read from it: block every ICMPv6 type.
            setsockopt(
                &s,
                libc::IPPROTO_ICMPV6,
                kernel::ICMP6_FILTER,
                &[u32::MAX; 8],
            )?;
            (s, libc::IPPROTO_IPV6)
        }
        Family::Ipv4 => (
            Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_IGMP)),
            )?,
            libc::IPPROTO_IP,
        ),
    };
    // Nothing is read from it either: the smallest buffer, so copies are dropped early.
    let _ = s.set_recv_buffer_size(1);
    setsockopt(&s, level, kernel::MRT_TABLE, &table).map_err(|e| annotate(e, "MRT_TABLE"))?;
    let one: libc::c_int = 1;
    setsockopt(&s, level, kernel::MRT_INIT, &one).map_err(|e| annotate(e, "MRT_INIT"))?;
    if family == Family::Ipv4 {
        // SAFETY: vifctl is a plain C struct of integers; all-zero is a valid value.
        let mut v: kernel::vifctl = unsafe { std::mem::zeroed() };
        v.vifc_vifi = 0;
        v.vifc_flags = kernel::VIFF_USE_IFINDEX;
        v.vifc_threshold = 1;
        v.vifc_lcl_ifindex = ifindex as libc::c_int;
        setsockopt(&s, level, kernel::MRT_ADD_VIF, &v).map_err(|e| annotate(e, "MRT_ADD_VIF"))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_usable_link_local_address() {
        let text = "\
fd000000000000000000000000000001 02 40 00 80     br0
fe800000000000000000000000000009 02 40 20 c0     br0
fe800000000000000000000000000002 02 40 20 80     br0
fe800000000000000000000000000001 02 40 20 c8     br0
fe800000000000000000000000000001 03 40 20 80     eth9
";
        // fe80::1 on ifindex 2 failed DAD (0x08); fe80::9 is tentative (0x40).
        assert_eq!(link_local_in(text, 2), Some("fe80::2".parse().unwrap()));
        assert_eq!(link_local_in(text, 3), Some("fe80::1".parse().unwrap()));
        assert_eq!(link_local_in(text, 4), None);
        assert_eq!(link_local_in("garbage\n1 2 3", 2), None);
    }

    #[test]
    fn router_alert_options() {
        // Hop-by-hop: 2 header bytes, RA (type 5, len 2, value 0), PadN of 0: 8 bytes.
        assert_eq!(HOPOPTS_RA.len() % 8, 0);
        assert_eq!(&HOPOPTS_RA[2..6], &[5, 2, 0, 0]);
        assert_eq!(IPOPT_RA, [0x94, 0x04, 0, 0]);
    }
}
