//! IPv6 multicast by MLD proxying (RFC 4605): each downstream interface runs the querier
//! and membership state of the headend (`headend::listen::Listener`, IPv6 only); the
//! merge of the downstream memberships is joined on the upstream interface by the
//! kernel's own MLDv2 host stack (one socket per group, its source filter set with
//! MCAST_MSFILTER), which reports it to the upstream querier and answers its queries; the
//! forwarder routes (S,G) from the upstream to the downstream interfaces that want it.
//!
//! The pure parts are here ([`Filter`], [`merge`], [`interest`], [`oifs`]); the edge is
//! [`Proxy`] (the listener's runtime thread and the upstream sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::kernel::{self, zeroed};
use crate::headend::listen::{InterfaceStatus, ListenOptions, Listener, TABLE_BASE};
use crate::headend::membership::{Family as MldFamily, FilterMode, GroupStatus, QuerierConfig};
use crate::sockets::setsockopt;

/// The proxy's part of the forwarder's configuration (`[routing.mld_proxy]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub upstream: String,
    pub downstream: Vec<String>,
    pub querier: QuerierConfig,
}

impl ProxyConfig {
    pub fn from_plan(p: &crate::plan::routing::MldProxyPlan) -> ProxyConfig {
        ProxyConfig {
            upstream: p.upstream.clone(),
            downstream: p.downstream.clone(),
            querier: crate::headend::run::querier_of(&p.querier),
        }
    }

    /// Upstream and downstream: the interfaces whose packets the proxy routes.
    pub fn ifaces(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.upstream).chain(&self.downstream)
    }
}

/// The private multicast routing tables of the proxy's listener: apart from the headend's
/// (a router may run both), so neither takes the other's.
pub const PROXY_TABLE_BASE: u32 = TABLE_BASE + 1_000;

/// Sources a socket's filter holds at most (the kernel's `net.ipv6.mld_max_msf` default);
/// a longer list is widened (see [`Filter::capped`]).
pub const MAX_SOURCES: usize = 64;

/// What the listeners on one interface (or the proxy as a whole) want of a group:
/// INCLUDE(sources) or EXCLUDE(sources), as RFC 9777 and the socket API (RFC 3678) say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub mode: FilterMode,
    pub sources: BTreeSet<IpAddr>,
}

impl Filter {
    /// EXCLUDE {}: any source (an any-source join).
    pub fn any() -> Filter {
        Filter {
            mode: FilterMode::Exclude,
            sources: BTreeSet::new(),
        }
    }

    pub fn include(sources: impl IntoIterator<Item = IpAddr>) -> Filter {
        Filter {
            mode: FilterMode::Include,
            sources: sources.into_iter().collect(),
        }
    }

    pub fn exclude(sources: impl IntoIterator<Item = IpAddr>) -> Filter {
        Filter {
            mode: FilterMode::Exclude,
            sources: sources.into_iter().collect(),
        }
    }

    /// Whether traffic from `s` is wanted.
    pub fn forwards(&self, s: IpAddr) -> bool {
        match self.mode {
            FilterMode::Include => self.sources.contains(&s),
            FilterMode::Exclude => !self.sources.contains(&s),
        }
    }

    /// INCLUDE {}: nothing is wanted (no membership at all).
    pub fn is_empty(&self) -> bool {
        self.mode == FilterMode::Include && self.sources.is_empty()
    }

    /// A router's state for a group as a filter: INCLUDE(A), or EXCLUDE(Y) where Y are the
    /// excluded sources (the requested ones, X, are forwarded as any other not in Y).
    pub fn of(g: &GroupStatus) -> Filter {
        match g.mode {
            FilterMode::Include => Filter::include(g.sources.iter().map(|s| s.source)),
            FilterMode::Exclude => Filter::exclude(
                g.sources
                    .iter()
                    .filter(|s| s.timer_ms.is_none())
                    .map(|s| s.source),
            ),
        }
    }

    /// The filter within `max` sources that forwards at least what this one does: an
    /// INCLUDE too long becomes EXCLUDE {}, an EXCLUDE keeps `max` of its exclusions.
    pub fn capped(mut self, max: usize) -> Filter {
        if self.sources.len() <= max {
            return self;
        }
        match self.mode {
            FilterMode::Include => Filter::any(),
            FilterMode::Exclude => {
                self.sources = self.sources.into_iter().take(max).collect();
                self
            }
        }
    }
}

/// The merge of several filters for one group, as RFC 3376 §3.2 merges a socket's
/// filters into an interface's and RFC 4605 §4.1 the downstream memberships into the
/// upstream's: any EXCLUDE makes an EXCLUDE of the sources every EXCLUDE excludes and no
/// INCLUDE asks for; otherwise the INCLUDE of every source asked for. It forwards S
/// exactly when one of the filters does.
pub fn merge<'a>(filters: impl IntoIterator<Item = &'a Filter>) -> Filter {
    let mut included = BTreeSet::new();
    let mut excluded: Option<BTreeSet<IpAddr>> = None;
    for f in filters {
        match f.mode {
            FilterMode::Include => included.extend(f.sources.iter().copied()),
            FilterMode::Exclude => {
                excluded = Some(match excluded {
                    None => f.sources.clone(),
                    Some(x) => &x & &f.sources,
                })
            }
        }
    }
    match excluded {
        Some(x) => Filter::exclude(&x - &included),
        None => Filter::include(included),
    }
}

/// Per group, per downstream interface: what its listeners want (empty filters left out).
pub type Interest = BTreeMap<IpAddr, BTreeMap<String, Filter>>;

/// The interest of every downstream from the listener's status (IPv6 slots only).
pub fn interest(status: &[InterfaceStatus]) -> Interest {
    let mut out = Interest::new();
    for i in status {
        let Some(m) = &i.membership else { continue };
        if i.family != MldFamily::Ipv6 {
            continue;
        }
        for g in &m.groups {
            let f = Filter::of(g);
            if !f.is_empty() {
                out.entry(g.group).or_default().insert(i.iface.clone(), f);
            }
        }
    }
    out
}

/// What the upstream joins: per group, the merge of the downstreams' filters, within the
/// kernel's limit of sources.
pub fn upstream_filters(i: &Interest) -> BTreeMap<IpAddr, Filter> {
    i.iter()
        .map(|(g, by)| (*g, merge(by.values()).capped(MAX_SOURCES)))
        .filter(|(_, f)| !f.is_empty())
        .collect()
}

/// The downstream interfaces a packet from `s` to `g` that came in on `iif` goes to:
/// those whose listeners want it, never `iif` itself (and never the upstream, which has
/// no interest).
pub fn oifs(i: &Interest, iif: &str, s: IpAddr, g: IpAddr) -> Vec<String> {
    i.get(&g)
        .into_iter()
        .flatten()
        .filter(|(name, f)| name.as_str() != iif && f.forwards(s))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The upstream interface's memberships: one UDP socket per group, never read, whose
/// source filter is the group's merged filter. The kernel's MLD host stack reports them.
struct Upstream {
    name: String,
    ifindex: Option<u32>,
    joins: BTreeMap<IpAddr, (Socket, Filter)>,
}

/// `MCAST_MSFILTER` (linux/in.h) and the filter modes of `struct group_filter`.
const MCAST_MSFILTER: libc::c_int = 48;
const MCAST_EXCLUDE: u32 = 0;
const MCAST_INCLUDE: u32 = 1;

/// `struct group_filter` (linux/in.h) with room for [`MAX_SOURCES`] sources; only
/// `GROUP_FILTER_SIZE(n)` bytes of it are passed.
#[repr(C)]
#[derive(Clone, Copy)]
struct GroupFilter {
    gf_interface: u32,
    gf_group: libc::sockaddr_storage,
    gf_fmode: u32,
    gf_numsrc: u32,
    gf_slist: [libc::sockaddr_storage; MAX_SOURCES],
}

/// `GROUP_FILTER_SIZE(n)`: the header and `n` sources.
fn group_filter_size(n: usize) -> usize {
    std::mem::offset_of!(GroupFilter, gf_slist) + n * std::mem::size_of::<libc::sockaddr_storage>()
}

fn storage6(a: IpAddr) -> io::Result<libc::sockaddr_storage> {
    let IpAddr::V6(a) = a else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{a} is not an IPv6 address"),
        ));
    };
    let mut ss: libc::sockaddr_storage = zeroed();
    let sin = super::sys::sin6(a);
    // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
    unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
    Ok(ss)
}

/// Sets the socket's source filter for `group` on `ifindex` (the socket has joined it).
fn set_filter(sock: &Socket, ifindex: u32, group: IpAddr, f: &Filter) -> io::Result<()> {
    let f = f.clone().capped(MAX_SOURCES);
    let mut gf: Box<GroupFilter> = Box::new(zeroed());
    gf.gf_interface = ifindex;
    gf.gf_group = storage6(group)?;
    gf.gf_fmode = match f.mode {
        FilterMode::Include => MCAST_INCLUDE,
        FilterMode::Exclude => MCAST_EXCLUDE,
    };
    gf.gf_numsrc = f.sources.len() as u32;
    for (slot, s) in gf.gf_slist.iter_mut().zip(&f.sources) {
        *slot = storage6(*s)?;
    }
    let len = group_filter_size(f.sources.len());
    // SAFETY: `gf` is a live, fully initialised GroupFilter and `len` is at most its size,
    // so the kernel reads only memory we own.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            MCAST_MSFILTER,
            (&*gf as *const GroupFilter).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket that joined `group` on `ifindex` with filter `f` (not empty).
fn join(ifindex: u32, group: IpAddr, f: &Filter) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    let first = match f.mode {
        FilterMode::Include => f.sources.first().copied(),
        FilterMode::Exclude => None,
    };
    match first {
        // A source-specific join first, so the group never appears as any-source.
        Some(s) => {
            let mut r: kernel::group_source_req = zeroed();
            r.gsr_interface = ifindex;
            r.gsr_group = storage6(group)?;
            r.gsr_source = storage6(s)?;
            setsockopt(
                &sock,
                libc::IPPROTO_IPV6,
                kernel::MCAST_JOIN_SOURCE_GROUP,
                &r,
            )?;
        }
        None => {
            let mut r: kernel::group_req = zeroed();
            r.gr_interface = ifindex;
            r.gr_group = storage6(group)?;
            setsockopt(&sock, libc::IPPROTO_IPV6, kernel::MCAST_JOIN_GROUP, &r)?;
        }
    }
    if f.sources.len() > usize::from(first.is_some()) {
        set_filter(&sock, ifindex, group, f)?;
    }
    Ok(sock)
}

fn what(group: IpAddr, f: &Filter) -> String {
    let list: Vec<String> = f.sources.iter().map(|s| s.to_string()).collect();
    let mode = match f.mode {
        FilterMode::Include => "INCLUDE",
        FilterMode::Exclude => "EXCLUDE",
    };
    format!("{group} {mode} {{{}}}", list.join(", "))
}

impl Upstream {
    /// Makes the memberships match `want`; an interface that went or was re-created loses
    /// them all first (the kernel dropped them with it). Errors are logged and kept.
    fn sync(&mut self, want: &BTreeMap<IpAddr, Filter>) -> Vec<String> {
        let mut errors = Vec::new();
        let ix = crate::sockets::ifindex(&self.name);
        if ix != self.ifindex {
            if !self.joins.is_empty() {
                tracing::info!(iface = %self.name, "upstream went or was re-created: joining again");
            }
            self.joins.clear();
            self.ifindex = ix;
        }
        let Some(ix) = ix else {
            return errors;
        };
        self.joins.retain(|g, _| {
            let keep = want.contains_key(g);
            if !keep {
                tracing::info!(iface = %self.name, group = %g, "upstream: left (no downstream listener)");
            }
            keep
        });
        for (g, f) in want {
            match self.joins.get_mut(g) {
                Some((_, have)) if have == f => {}
                Some((sock, have)) => match set_filter(sock, ix, *g, f) {
                    Ok(()) => {
                        tracing::info!(iface = %self.name, "upstream: {}", what(*g, f));
                        *have = f.clone();
                    }
                    Err(e) => {
                        let msg = format!("setting the upstream filter {}: {e}", what(*g, f));
                        tracing::warn!(iface = %self.name, "{msg}");
                        errors.push(msg);
                    }
                },
                None => match join(ix, *g, f) {
                    Ok(sock) => {
                        tracing::info!(iface = %self.name, "upstream: joined {}", what(*g, f));
                        self.joins.insert(*g, (sock, f.clone()));
                    }
                    Err(e) => {
                        let msg = format!("joining {} upstream: {e}", what(*g, f));
                        tracing::warn!(iface = %self.name, "{msg}");
                        errors.push(msg);
                    }
                },
            }
        }
        errors
    }
}

/// The running proxy: the downstream listener on a runtime thread of its own, and the
/// upstream memberships. Dropping it stops the listener and leaves every group.
pub struct Proxy {
    cfg: ProxyConfig,
    listener: Option<Listener>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Readable when the listener's state may have changed.
    wake: UnixStream,
    interest: Interest,
    upstream: Upstream,
    /// The last upstream errors (joins or filters that failed).
    errors: Vec<String>,
}

impl Proxy {
    pub fn start(cfg: ProxyConfig) -> io::Result<Proxy> {
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        let waker = Arc::new(waker);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let opts = ListenOptions {
            families: vec![MldFamily::Ipv6],
            table_base: PROXY_TABLE_BASE,
            on_change: Some(Arc::new(move |_: &str| {
                // A full buffer already holds a wake-up.
                let _ = (&*waker).write(&[1]);
            })),
        };
        let listener = {
            let _in = rt.enter();
            Listener::start_with(cfg.downstream.clone(), cfg.querier.clone(), events, opts)
                .map_err(io::Error::other)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mld-proxy".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        tracing::info!(
            upstream = %cfg.upstream,
            downstream = %cfg.downstream.join(" "),
            "MLD proxy started"
        );
        Ok(Proxy {
            upstream: Upstream {
                name: cfg.upstream.clone(),
                ifindex: None,
                joins: BTreeMap::new(),
            },
            cfg,
            listener: Some(listener),
            stop: Some(stop),
            thread: Some(thread),
            wake,
            interest: Interest::new(),
            errors: Vec::new(),
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Readable when [`Proxy::refresh`] has something to look at.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub fn interest(&self) -> &Interest {
        &self.interest
    }

    /// Reads the downstream state again and makes the upstream memberships follow it;
    /// true when the interest (and so the routes) changed.
    pub fn refresh(&mut self) -> bool {
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let status = self
            .listener
            .as_ref()
            .map(|l| l.status())
            .unwrap_or_default();
        let new = interest(&status);
        let changed = new != self.interest;
        self.interest = new;
        self.errors = self.upstream.sync(&upstream_filters(&self.interest));
        changed
    }

    pub fn status(&self) -> ProxyStatus {
        let listeners = self
            .listener
            .as_ref()
            .map(|l| l.status())
            .unwrap_or_default();
        let downstream = self
            .cfg
            .downstream
            .iter()
            .map(|name| {
                let st = listeners.iter().find(|s| &s.iface == name);
                let m = st.and_then(|s| s.membership.as_ref());
                DownstreamStatus {
                    iface: name.clone(),
                    error: st.and_then(|s| s.error.clone()),
                    listening: m.is_some(),
                    querier: m.and_then(|m| m.querier),
                    we_query: m.is_some_and(|m| m.we_query),
                    groups: m
                        .map(|m| {
                            m.groups
                                .iter()
                                .map(|g| DownstreamGroup {
                                    group: g.group,
                                    filter: Filter::of(g),
                                    last_reporter: g.last_reporter,
                                })
                                .filter(|g| !g.filter.is_empty())
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        ProxyStatus {
            upstream: self.cfg.upstream.clone(),
            upstream_ifindex: self.upstream.ifindex,
            downstream,
            joins: self
                .upstream
                .joins
                .iter()
                .map(|(g, (_, f))| UpstreamJoin {
                    group: *g,
                    filter: f.clone(),
                })
                .collect(),
            errors: self.errors.clone(),
            routes: Vec::new(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener = None;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub upstream: String,
    /// None while the upstream interface is missing.
    pub upstream_ifindex: Option<u32>,
    pub downstream: Vec<DownstreamStatus>,
    /// What the upstream interface reports (the kernel's MLDv2 host stack).
    pub joins: Vec<UpstreamJoin>,
    pub errors: Vec<String>,
    /// The (S,G) entries the proxy installed (the forwarder fills them in).
    pub routes: Vec<crate::mroute::forwarder::EntryStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownstreamStatus {
    pub iface: String,
    /// Why it does not listen, or what is degraded.
    pub error: Option<String>,
    pub listening: bool,
    pub querier: Option<IpAddr>,
    pub we_query: bool,
    pub groups: Vec<DownstreamGroup>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownstreamGroup {
    pub group: IpAddr,
    pub filter: Filter,
    /// The last listener heard (an MLDv2 router keeps no list of hosts).
    pub last_reporter: Option<IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamJoin {
    pub group: IpAddr,
    pub filter: Filter,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const G: &str = "ff3e:40:fd00::8000:1";

    fn set(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn merge_follows_the_socket_filter_rules() {
        let inc = |v: &[&str]| Filter::include(set(v));
        let exc = |v: &[&str]| Filter::exclude(set(v));
        assert_eq!(merge([]), Filter::include([]));
        assert_eq!(
            merge([&inc(&["fd00::1"]), &inc(&["fd00::2"])]),
            inc(&["fd00::1", "fd00::2"])
        );
        // Any EXCLUDE wins; its exclusions stay only where every EXCLUDE has them and no
        // INCLUDE asks for them.
        assert_eq!(
            merge([
                &exc(&["fd00::1", "fd00::2", "fd00::3"]),
                &exc(&["fd00::2", "fd00::3"]),
                &inc(&["fd00::3"])
            ]),
            exc(&["fd00::2"])
        );
        assert_eq!(merge([&Filter::any(), &inc(&["fd00::1"])]), Filter::any());
    }

    #[test]
    fn capped_filters_only_widen() {
        let many: Vec<IpAddr> = (1..=70u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)))
            .collect();
        assert_eq!(
            Filter::include(many.clone()).capped(MAX_SOURCES),
            Filter::any()
        );
        let x = Filter::exclude(many.clone()).capped(MAX_SOURCES);
        assert_eq!(x.sources.len(), MAX_SOURCES);
        assert!(
            many.iter()
                .all(|s| !Filter::exclude(many.clone()).forwards(*s))
        );
        assert!(many[MAX_SOURCES..].iter().all(|s| x.forwards(*s)));
    }

    #[test]
    fn routes_go_to_the_downstreams_that_want_the_source_never_back() {
        let mut i = Interest::new();
        let g = ip(G);
        i.entry(g).or_default().insert("lan1".into(), Filter::any());
        i.entry(g)
            .or_default()
            .insert("lan2".into(), Filter::include(set(&["fd00::9"])));
        i.entry(g)
            .or_default()
            .insert("lan3".into(), Filter::exclude(set(&["fd00::1"])));
        assert_eq!(oifs(&i, "up0", ip("fd00::1"), g), ["lan1"]);
        assert_eq!(oifs(&i, "up0", ip("fd00::9"), g), ["lan1", "lan2", "lan3"]);
        // A downstream's own packets go to the others only.
        assert_eq!(oifs(&i, "lan1", ip("fd00::9"), g), ["lan2", "lan3"]);
        assert!(oifs(&i, "up0", ip("fd00::9"), ip("ff3e::2")).is_empty());
        assert_eq!(
            upstream_filters(&i)[&g],
            Filter::any(),
            "an any-source listener makes an any-source join"
        );
    }

    #[test]
    fn the_group_filter_has_the_kernels_layout() {
        // linux/in.h on 64-bit: gf_interface, padding, gf_group at 8, gf_fmode at 136,
        // gf_numsrc at 140, gf_slist at 144.
        assert_eq!(std::mem::offset_of!(GroupFilter, gf_group), 8);
        assert_eq!(std::mem::offset_of!(GroupFilter, gf_fmode), 136);
        assert_eq!(group_filter_size(0), 144);
        assert_eq!(group_filter_size(1), 272);
    }

    fn filter() -> impl Strategy<Value = Filter> {
        let src = (1u16..6).prop_map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)));
        (any::<bool>(), prop::collection::btree_set(src, 0..4)).prop_map(|(inc, sources)| Filter {
            mode: if inc {
                FilterMode::Include
            } else {
                FilterMode::Exclude
            },
            sources,
        })
    }

    proptest! {
        /// The upstream asks for a source exactly when some downstream wants it, and each
        /// (S,G) goes out exactly where it is wanted, never where it came in.
        #[test]
        fn the_union_forwards_what_some_downstream_wants(
            filters in prop::collection::vec(filter(), 0..5),
            s in 0u16..7,
            iif in 0usize..6,
        ) {
            let s = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, s));
            let g = ip(G);
            let m = merge(&filters);
            prop_assert_eq!(m.forwards(s), filters.iter().any(|f| f.forwards(s)));
            let mut i = Interest::new();
            for (n, f) in filters.iter().enumerate() {
                if !f.is_empty() {
                    i.entry(g).or_default().insert(format!("d{n}"), f.clone());
                }
            }
            let iif = format!("d{iif}");
            let out = oifs(&i, &iif, s, g);
            for (n, f) in filters.iter().enumerate() {
                let name = format!("d{n}");
                prop_assert_eq!(out.contains(&name), f.forwards(s) && name != iif);
            }
            let up = upstream_filters(&i);
            prop_assert_eq!(
                up.get(&g).is_some_and(|f| f.forwards(s)),
                filters.iter().any(|f| f.forwards(s))
            );
        }
    }
}
