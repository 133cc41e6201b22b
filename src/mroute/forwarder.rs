//! The forwarder's kernel state: one routing socket per family, its VIFs/MIFs, every (S,G)
//! entry it installed and why, and the group memberships. Applying a new [`Config`] changes
//! only what differs, so unchanged entries keep forwarding through a reload.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::MrouteError;
use super::config::{Config, Iface, Resolution, Route};
use super::kernel::{self, MAXVIFS, TTL_NOT_OUTPUT};
use super::proxy::{self, Interest, Proxy, ProxyStatus};
use super::sys::{Counters, Family, JoinSocket, RouteSocket, Upcall};

/// Most (S,G) entries per family: learned and stop entries past this are not installed.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A static (S,G) of the configuration.
    Configured,
    /// Resolved from a template on an upcall.
    Learned,
    /// No route matched: an entry with no outputs so the kernel drops the group quietly.
    Stop,
    /// The MLD proxy's: to the downstream interfaces whose listeners want it.
    Proxy,
}

#[derive(Debug, Clone)]
struct Entry {
    iif: u16,
    ttls: [u8; MAXVIFS],
    origin: Origin,
    /// The route (its origin string) or the reason of a stop entry.
    why: String,
    last_packets: u64,
    last_active: Instant,
    /// The sync that last confirmed it (entries not confirmed by a sync are re-checked).
    generation: u64,
}

impl Entry {
    /// A new entry, with no packets counted yet.
    fn new(iif: u16, ttls: [u8; MAXVIFS], origin: Origin, why: String, generation: u64) -> Entry {
        Entry {
            iif,
            ttls,
            origin,
            why,
            last_packets: 0,
            last_active: Instant::now(),
            generation,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vif {
    name: String,
    ifindex: u32,
    threshold: u8,
}

/// The kernel writes of a [`Table`]: the routing socket in the forwarder; a recorder in
/// the property test that compares a delta sync with a full one.
trait RouteWrite {
    fn add_vif(&self, vifi: u16, ifindex: u32, threshold: u8) -> std::io::Result<()>;
    fn del_vif(&self, vifi: u16) -> std::io::Result<()>;
    fn add_mfc(&self, s: IpAddr, g: IpAddr, iif: u16, ttls: &[u8; MAXVIFS]) -> std::io::Result<()>;
    fn del_mfc(&self, s: IpAddr, g: IpAddr, iif: u16) -> std::io::Result<()>;
}

impl RouteWrite for RouteSocket {
    fn add_vif(&self, vifi: u16, ifindex: u32, threshold: u8) -> std::io::Result<()> {
        RouteSocket::add_vif(self, vifi, ifindex, threshold)
    }
    fn del_vif(&self, vifi: u16) -> std::io::Result<()> {
        RouteSocket::del_vif(self, vifi)
    }
    fn add_mfc(&self, s: IpAddr, g: IpAddr, iif: u16, ttls: &[u8; MAXVIFS]) -> std::io::Result<()> {
        RouteSocket::add_mfc(self, s, g, iif, ttls)
    }
    fn del_mfc(&self, s: IpAddr, g: IpAddr, iif: u16) -> std::io::Result<()> {
        RouteSocket::del_mfc(self, s, g, iif)
    }
}

/// Which entries a sync looks at.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Every route and every entry.
    Every,
    /// A reload that changed only `removed` (old) into `added` (new) routes: the (S,G)
    /// entries those routes name, and learned ones only when a template changed.
    Routes {
        removed: &'a [Arc<Route>],
        added: &'a [Arc<Route>],
    },
}

/// The kernel writes a sync decided, made after every entry is decided.
#[derive(Default)]
struct Install {
    /// Replaced entries whose input changes: deleted from the old input first.
    leave: Vec<(IpAddr, IpAddr, u16)>,
    remove: Vec<(IpAddr, IpAddr, u16)>,
    /// New or replacing entries (true: replaces one).
    add: Vec<((IpAddr, IpAddr), Entry, bool)>,
    /// Static (S,G)s already decided by an earlier route in this sync.
    planned: std::collections::HashSet<(IpAddr, IpAddr)>,
}

type Run = std::ops::Range<usize>;

/// The run of routes that differs between `a` and `b` (after their common prefix and
/// suffix), as index ranges of each.
fn changed_run(a: &[Arc<Route>], b: &[Arc<Route>]) -> (Run, Run) {
    let same = |x: &Arc<Route>, y: &Arc<Route>| Arc::ptr_eq(x, y) || x == y;
    let prefix = a.iter().zip(b).take_while(|(x, y)| same(x, y)).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| same(x, y))
        .count();
    (prefix..a.len() - suffix, prefix..b.len() - suffix)
}

/// The (S,G) of a static route.
fn static_key(r: &Route) -> (IpAddr, IpAddr) {
    (r.source.expect("static").addr(), r.group.addr())
}

/// Limits on what upcalls may install, so that one input interface (an untrusted VLAN
/// with a host sending from spoofed sources) cannot take the others' share of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Learned and stop entries per family.
    pub max_entries: usize,
    /// Learned and stop entries per input interface; None: `max_entries` divided by the
    /// number of the family's interfaces.
    pub per_interface: Option<usize>,
    /// Upcalls that may install an entry, per input interface and second.
    pub upcalls_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: MAX_ENTRIES,
            per_interface: None,
            upcalls_per_sec: 1000,
        }
    }
}

/// Per input interface: learned and stop entries, and this second's upcalls.
#[derive(Debug, Clone, Copy, Default)]
struct Share {
    entries: usize,
    second: u64,
    upcalls: u32,
    /// Refusals not logged yet (one debug line a second per interface).
    refused: u64,
}

/// What the MLD proxy routes: packets that came in on one of `ifaces` (its upstream and
/// downstreams) go to the downstreams whose listeners want them.
#[derive(Debug, Clone, Default)]
struct ProxyRoutes {
    upstream: String,
    ifaces: Vec<String>,
    interest: Interest,
}

/// One family's routing socket and what the forwarder put into it.
struct Table<K = RouteSocket> {
    sock: K,
    vifs: Vec<Option<Vif>>,
    entries: HashMap<(IpAddr, IpAddr), Entry>,
    generation: u64,
    limits: Limits,
    shares: [Share; MAXVIFS],
    started: Instant,
    /// IPv6 only: the proxy's routes, consulted where no template matches.
    proxy: Option<ProxyRoutes>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changes {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub kept: usize,
    pub vifs_added: usize,
    pub vifs_removed: usize,
    pub joined: usize,
    pub left: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VifStatus {
    pub family: Family,
    pub vif: u16,
    pub name: String,
    pub ifindex: u32,
    pub threshold: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    pub family: Family,
    pub source: IpAddr,
    pub group: IpAddr,
    pub iif: String,
    pub oifs: Vec<String>,
    pub origin: Origin,
    /// The route that made it, or why it is a stop entry.
    pub why: String,
    pub packets: u64,
    pub bytes: u64,
    pub wrong_if: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub table: Option<u32>,
    #[serde(with = "crate::site::duration")]
    pub expire: Duration,
    pub vifs: Vec<VifStatus>,
    pub entries: Vec<EntryStatus>,
    pub joins: Vec<JoinStatus>,
    pub templates: usize,
    /// Every VIF/MIF of the configuration is in the kernel (the supervisor's health check).
    pub healthy: bool,
    /// Why not healthy: the interfaces without their VIF/MIF.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The MLD proxy: downstream memberships, upstream joins, the routes it installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinStatus {
    pub on: String,
    pub group: IpAddr,
    pub source: Option<IpAddr>,
}

type JoinKey = (String, IpAddr, Option<IpAddr>);

pub struct Forwarder {
    config: Config,
    v4: Option<Table>,
    v6: Option<Table>,
    joins: BTreeMap<JoinKey, JoinSocket>,
    /// The configuration a reload replaced, freed after the reload has answered.
    retired: Option<Config>,
    limits: Limits,
    proxy: Option<Proxy>,
}

impl Forwarder {
    /// Takes the routing API of every family the configuration uses and installs it.
    pub fn start(config: Config) -> Result<(Forwarder, Changes), MrouteError> {
        let mut f = Forwarder {
            config: Config {
                routes: Vec::new(),
                joins: Vec::new(),
                vifs: Vec::new(),
                mifs: Vec::new(),
                proxy: None,
                ..config.clone()
            },
            v4: None,
            v6: None,
            joins: BTreeMap::new(),
            retired: None,
            limits: Limits::default(),
            proxy: None,
        };
        let changes = f.apply(config)?;
        Ok((f, changes))
    }

    /// When `new` differs from the running configuration only in a run of routes (one
    /// changed, added or removed among many), the old and new index ranges of that run.
    fn delta(&self, new: &Config) -> Option<(Run, Run)> {
        let old = &self.config;
        if old.vifs != new.vifs || old.mifs != new.mifs || self.v4.is_none() && self.v6.is_none() {
            return None;
        }
        let (ro, rn) = changed_run(&old.routes, &new.routes);
        // Many changes: a full pass is as cheap and simpler.
        (ro.len() + rn.len() <= 64).then_some((ro, rn))
    }

    /// After links changed: VIFs of re-created interfaces are made again (the kernel
    /// dropped them with their entries), missing ones added, joins renewed.
    pub fn resync(&mut self) -> Result<Changes, MrouteError> {
        let c = self.config.clone();
        let ch = self.apply(c)?;
        self.drop_retired();
        Ok(ch)
    }

    /// Sets the limits on learned entries and upcalls (see [`Limits`]).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        for t in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
            t.limits = limits;
        }
    }

    /// Frees what the last reload replaced (20,000 routes take a few ms to free).
    pub fn drop_retired(&mut self) {
        self.retired = None;
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn table(&self, fam: Family) -> Option<&Table> {
        match fam {
            Family::Ipv4 => self.v4.as_ref(),
            Family::Ipv6 => self.v6.as_ref(),
        }
    }

    /// Raw fds to poll for upcalls, with their family.
    pub fn upcall_fds(&self) -> Vec<(Family, i32)> {
        [(Family::Ipv4, &self.v4), (Family::Ipv6, &self.v6)]
            .into_iter()
            .filter_map(|(f, t)| t.as_ref().map(|t| (f, t.sock.fd())))
            .collect()
    }

    /// Makes the kernel match `new`, touching only what differs.
    pub fn apply(&mut self, new: Config) -> Result<Changes, MrouteError> {
        if new.table != self.config.table && (self.v4.is_some() || self.v6.is_some()) {
            return Err(MrouteError::TableChanged {
                from: self.config.table,
                to: new.table,
            });
        }
        let mut ch = Changes::default();
        let delta = self.delta(&new);
        for fam in [Family::Ipv4, Family::Ipv6] {
            let slot = match fam {
                Family::Ipv4 => &mut self.v4,
                Family::Ipv6 => &mut self.v6,
            };
            if slot.is_none() && new.uses(fam) {
                let sock = RouteSocket::open(fam, new.table).map_err(|e| {
                    if e.raw_os_error() == Some(libc::EADDRINUSE) {
                        MrouteError::InUse {
                            family: fam,
                            table: new.table,
                        }
                    } else {
                        MrouteError::Init {
                            family: fam,
                            source: e,
                        }
                    }
                })?;
                *slot = Some(Table {
                    sock,
                    vifs: Vec::new(),
                    entries: HashMap::new(),
                    generation: 0,
                    limits: self.limits,
                    shares: [Share::default(); MAXVIFS],
                    started: Instant::now(),
                    proxy: None,
                });
            }
            if let Some(t) = slot.as_mut() {
                match &delta {
                    // Only a run of routes changed and no VIF did: look at their entries only.
                    Some((ro, rn)) if !t.sync_vifs(fam, &new, &mut ch)? => {
                        let scope = Scope::Routes {
                            removed: &self.config.routes[ro.clone()],
                            added: &new.routes[rn.clone()],
                        };
                        t.sync_entries(fam, &new, scope, &mut ch)?;
                    }
                    Some(_) => t.sync_entries(fam, &new, Scope::Every, &mut ch)?,
                    None => t.sync(fam, &new, &mut ch)?,
                }
            }
        }
        self.sync_joins(&new, &mut ch);
        let proxy_changed = new.proxy != self.config.proxy;
        self.retired = Some(std::mem::replace(&mut self.config, new));
        for t in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
            t.recount();
        }
        if proxy_changed {
            self.restart_proxy(&mut ch)?;
        }
        // Links may have changed: the upstream joins follow its interface.
        self.proxy_changed_into(&mut ch)?;
        Ok(ch)
    }

    /// Stops the running proxy (its routes go, its upstream groups are left) and starts
    /// the configured one.
    fn restart_proxy(&mut self, ch: &mut Changes) -> Result<(), MrouteError> {
        if let Some(old) = self.proxy.take() {
            let ifaces = old.config().ifaces().cloned().collect();
            drop(old);
            if let Some(t) = self.v6.as_mut() {
                t.proxy = Some(ProxyRoutes {
                    upstream: String::new(),
                    ifaces,
                    interest: Interest::new(),
                });
                t.reproxy(&self.config, ch)?;
                t.proxy = None;
            }
        }
        if let Some(pc) = self.config.proxy.clone() {
            let p = Proxy::start(pc.clone()).map_err(|source| MrouteError::Proxy {
                op: format!(
                    "starting the MLD proxy (upstream {}, downstream {})",
                    pc.upstream,
                    pc.downstream.join(" ")
                ),
                source,
            })?;
            self.proxy = Some(p);
        }
        Ok(())
    }

    /// The proxy's wake-up fd: readable when its downstream memberships may have changed.
    pub fn proxy_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.proxy.as_ref().map(|p| p.wake_fd().as_raw_fd())
    }

    /// Reads the proxy's downstream memberships again: the upstream joins and the routes
    /// follow them.
    pub fn proxy_changed(&mut self) -> Result<Changes, MrouteError> {
        let mut ch = Changes::default();
        self.proxy_changed_into(&mut ch)?;
        Ok(ch)
    }

    fn proxy_changed_into(&mut self, ch: &mut Changes) -> Result<(), MrouteError> {
        let Some(p) = self.proxy.as_mut() else {
            return Ok(());
        };
        let changed = p.refresh();
        let routes = ProxyRoutes {
            upstream: p.config().upstream.clone(),
            ifaces: p.config().ifaces().cloned().collect(),
            interest: p.interest().clone(),
        };
        if let Some(t) = self.v6.as_mut()
            && (changed || t.proxy.is_none())
        {
            t.proxy = Some(routes);
            t.reproxy(&self.config, ch)?;
        }
        Ok(())
    }

    fn sync_joins(&mut self, new: &Config, ch: &mut Changes) {
        let want: Vec<JoinKey> = new
            .joins
            .iter()
            .map(|j| (j.on.clone(), j.group, j.source))
            .collect();
        let before = self.joins.len();
        // Memberships die with their interface: one whose interface is gone or was
        // re-created (another index) is dropped here and joined again below.
        self.joins
            .retain(|k, s| want.contains(k) && crate::sockets::ifindex(&k.0) == Some(s.ifindex));
        ch.left += before - self.joins.len();
        for k in want {
            if self.joins.contains_key(&k) {
                continue;
            }
            let (on, group, source) = &k;
            let Some(ix) = crate::sockets::ifindex(on) else {
                tracing::warn!(
                    "joining {group} on {on}: no such interface; joined when it appears"
                );
                continue;
            };
            match JoinSocket::join(ix, *group, *source) {
                Ok(s) => {
                    ch.joined += 1;
                    self.joins.insert(k, s);
                }
                Err(e) => {
                    let what = match source {
                        Some(s) => format!("({s},{group})"),
                        None => group.to_string(),
                    };
                    tracing::warn!("joining {what} on {on}: {e}");
                }
            }
        }
    }

    /// Handles every upcall waiting on the family's socket.
    pub fn upcalls(&mut self, fam: Family) -> Result<usize, MrouteError> {
        let Some(t) = (match fam {
            Family::Ipv4 => self.v4.as_mut(),
            Family::Ipv6 => self.v6.as_mut(),
        }) else {
            return Ok(0);
        };
        let mut n = 0;
        while let Some(u) = t.sock.read_upcall().map_err(|e| MrouteError::Upcall {
            family: fam,
            source: e,
        })? {
            n += 1;
            t.upcall(&self.config, u);
        }
        Ok(n)
    }

    /// Removes learned and stop entries that passed no packet for `expire`.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expire = self.config.expire;
        let mut removed = 0;
        for t in [self.v4.as_mut(), self.v6.as_mut()].into_iter().flatten() {
            let sock = &t.sock;
            t.entries.retain(|(s, g), e| {
                if e.origin == Origin::Configured {
                    return true;
                }
                let pk = sock.counters(*s, *g).map(|c| c.packets).unwrap_or(0);
                if pk != e.last_packets {
                    e.last_packets = pk;
                    e.last_active = now;
                    return true;
                }
                if now.duration_since(e.last_active) < expire {
                    return true;
                }
                if let Err(err) = sock.del_mfc(*s, *g, e.iif) {
                    tracing::warn!("removing idle ({s},{g}): {err}");
                }
                tracing::info!("({s},{g}) idle for {expire:?}: removed");
                removed += 1;
                false
            });
            t.recount();
        }
        removed
    }

    pub fn status(&self) -> Status {
        let mut vifs = Vec::new();
        let mut entries = Vec::new();
        for fam in [Family::Ipv4, Family::Ipv6] {
            let Some(t) = self.table(fam) else { continue };
            for (i, v) in t.vifs.iter().enumerate() {
                if let Some(v) = v {
                    vifs.push(VifStatus {
                        family: fam,
                        vif: i as u16,
                        name: v.name.clone(),
                        ifindex: v.ifindex,
                        threshold: v.threshold,
                    });
                }
            }
            let mut keys: Vec<&(IpAddr, IpAddr)> = t.entries.keys().collect();
            keys.sort_by_key(|(s, g)| (*g, *s));
            for k in keys {
                let e = &t.entries[k];
                let c: Counters = t.sock.counters(k.0, k.1).unwrap_or_default();
                entries.push(EntryStatus {
                    family: fam,
                    source: k.0,
                    group: k.1,
                    iif: t.vif_name(e.iif),
                    oifs: (0..MAXVIFS)
                        .filter(|i| e.ttls[*i] != TTL_NOT_OUTPUT)
                        .map(|i| t.vif_name(i as u16))
                        .collect(),
                    origin: e.origin,
                    why: e.why.clone(),
                    packets: c.packets,
                    bytes: c.bytes,
                    wrong_if: c.wrong_if,
                });
            }
        }
        let mut missing = vec![];
        for (fam, want) in [
            (Family::Ipv4, &self.config.vifs),
            (Family::Ipv6, &self.config.mifs),
        ] {
            for i in want {
                if !vifs.iter().any(|v| v.family == fam && v.name == i.name) {
                    missing.push(format!("{} ({fam:?})", i.name));
                }
            }
        }
        let mut why: Vec<String> = Vec::new();
        if !missing.is_empty() {
            why.push(format!(
                "no VIF/MIF in the kernel for {}",
                missing.join(", ")
            ));
        }
        if let Some(p) = &self.proxy {
            for d in &p.status().downstream {
                if !d.listening {
                    why.push(format!(
                        "{} (the MLD proxy does not listen there: {})",
                        d.iface,
                        d.error.as_deref().unwrap_or("starting")
                    ));
                }
            }
        }
        let proxy = self.proxy.as_ref().map(|p| {
            let mut st = p.status();
            st.routes = entries
                .iter()
                .filter(|e| e.origin == Origin::Proxy)
                .cloned()
                .collect();
            st
        });
        Status {
            proxy,
            table: self.config.table,
            expire: self.config.expire,
            vifs,
            entries,
            joins: self
                .joins
                .keys()
                .map(|(on, group, source)| JoinStatus {
                    on: on.clone(),
                    group: *group,
                    source: *source,
                })
                .collect(),
            templates: self.config.routes.iter().filter(|r| !r.is_static()).count(),
            healthy: why.is_empty(),
            why: (!why.is_empty()).then(|| why.join("; ")),
        }
    }
}

impl<K: RouteWrite> Table<K> {
    fn vif_of(&self, name: &str) -> Option<u16> {
        self.vifs
            .iter()
            .position(|v| v.as_ref().is_some_and(|v| v.name == name))
            .map(|i| i as u16)
    }

    fn vif_name(&self, i: u16) -> String {
        self.vifs
            .get(i as usize)
            .and_then(|v| v.as_ref())
            .map_or_else(|| format!("vif{i}"), |v| v.name.clone())
    }

    fn ttls(&self, to: &[(String, u8)]) -> [u8; MAXVIFS] {
        let mut ttls = [TTL_NOT_OUTPUT; MAXVIFS];
        for (name, t) in to {
            if let Some(v) = self.vif_of(name) {
                // 0 would mean "not an output" to the kernel: TTL > 0 is everything.
                ttls[v as usize] = (*t).max(1);
            }
        }
        ttls
    }

    /// The entry `cfg` wants for a packet of (S,G) arriving on VIF `iif`.
    fn resolve(&self, cfg: &Config, iif: u16, s: IpAddr, g: IpAddr) -> Option<Entry> {
        let name = self.vifs.get(iif as usize)?.as_ref()?.name.clone();
        let (ttls, origin, why) = match cfg.resolve(&name, s, g) {
            Resolution::Forward(r) => (self.ttls(&r.to), Origin::Learned, r.origin.clone()),
            Resolution::Stop(why) => match self.proxy_oifs(&name, s, g) {
                Some(to) => (self.ttls(&to), Origin::Proxy, "mld proxy".into()),
                None => ([TTL_NOT_OUTPUT; MAXVIFS], Origin::Stop, why.into()),
            },
        };
        Some(Entry::new(iif, ttls, origin, why, self.generation))
    }

    /// The proxy's outputs for a packet of (S,G) from `iif`, when it has any.
    fn proxy_oifs(&self, iif: &str, s: IpAddr, g: IpAddr) -> Option<Vec<(String, u8)>> {
        let p = self.proxy.as_ref()?;
        if !p.ifaces.iter().any(|i| i == iif) || super::config::is_link_local(s) {
            return None;
        }
        let to: Vec<(String, u8)> = proxy::oifs(&p.interest, iif, s, g)
            .into_iter()
            .map(|o| (o, 1))
            .collect();
        (!to.is_empty()).then_some(to)
    }

    /// After the proxy's interest changed: its entries (and stop entries from its
    /// interfaces) are resolved again, so routes follow joins and leaves.
    fn reproxy(&mut self, cfg: &Config, ch: &mut Changes) -> Result<(), MrouteError> {
        let Some(p) = &self.proxy else {
            return Ok(());
        };
        let ifaces: Vec<u16> = p.ifaces.iter().filter_map(|i| self.vif_of(i)).collect();
        self.generation += 1;
        let generation = self.generation;
        let keys: Vec<(IpAddr, IpAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.origin != Origin::Configured && ifaces.contains(&e.iif))
            .map(|(k, _)| *k)
            .collect();
        let mut install = Install::default();
        for k in keys {
            self.recheck(k, cfg, generation, &mut install);
        }
        self.write(install, generation, ch)?;
        self.recount();
        Ok(())
    }

    fn install(&mut self, s: IpAddr, g: IpAddr, e: Entry) -> Result<(), std::io::Error> {
        self.sock.add_mfc(s, g, e.iif, &e.ttls)?;
        self.entries.insert((s, g), e);
        Ok(())
    }

    /// Counts learned and stop entries per input interface again (after a sync or an
    /// expiry sweep changed the table).
    fn recount(&mut self) {
        for s in &mut self.shares {
            s.entries = 0;
        }
        for e in self.entries.values() {
            if e.origin != Origin::Configured
                && let Some(s) = self.shares.get_mut(e.iif as usize)
            {
                s.entries += 1;
            }
        }
    }

    /// Whether an upcall on `vif` for a new entry may install one: within the table's
    /// cap, the interface's share of it, and the interface's upcall rate.
    fn admit(&mut self, vif: u16) -> Result<(), &'static str> {
        let interfaces = self.vifs.iter().filter(|v| v.is_some()).count().max(1);
        let limits = self.limits;
        let share = limits
            .per_interface
            .unwrap_or(limits.max_entries / interfaces);
        let second = self.started.elapsed().as_secs();
        let total: usize = self.shares.iter().map(|s| s.entries).sum();
        let Some(s) = self.shares.get_mut(vif as usize) else {
            return Err("no such VIF");
        };
        if s.second != second {
            s.second = second;
            s.upcalls = 0;
        }
        if s.upcalls >= limits.upcalls_per_sec {
            return Err("its interface's upcall rate is used up");
        }
        s.upcalls += 1;
        if total >= limits.max_entries || self.entries.len() >= MAX_ENTRIES {
            return Err("the table is full");
        }
        if s.entries >= share {
            return Err("its interface has its share of the table");
        }
        Ok(())
    }

    fn upcall(&mut self, cfg: &Config, u: Upcall) {
        let key = (u.source, u.group);
        if !self.entries.contains_key(&key)
            && let Err(why) = self.admit(u.vif)
        {
            // A flood of new sources: the kernel drops their queued packets after 10 s.
            let s = &mut self.shares[(u.vif as usize).min(MAXVIFS - 1)];
            s.refused += 1;
            let refused = s.refused;
            if refused.is_power_of_two() {
                tracing::info!(
                    "({},{}) on {}: not installed: {why} ({refused} refused on it so far)",
                    u.source,
                    u.group,
                    self.vif_name(u.vif),
                );
            }
            return;
        }
        let existing = self.entries.get(&key);
        match u.kind {
            kernel::MSG_NOCACHE => {
                if existing.is_some_and(|e| e.origin == Origin::Configured) {
                    return;
                }
            }
            kernel::MSG_WRONGVIF => match existing {
                // A configured entry stays as configured; the kernel counts wrong_if.
                Some(e) if e.origin == Origin::Configured => return,
                // A proxied (S,G) from the upstream stays so: the same packets looping
                // back on a downstream never move it there.
                Some(e)
                    if e.origin == Origin::Proxy
                        && self
                            .proxy
                            .as_ref()
                            .is_some_and(|p| self.vif_of(&p.upstream) == Some(e.iif)) =>
                {
                    return;
                }
                _ => {}
            },
            _ => return,
        }
        let Some(e) = self.resolve(cfg, u.vif, u.source, u.group) else {
            return;
        };
        if u.kind == kernel::MSG_WRONGVIF && e.origin == Origin::Stop {
            return;
        }
        let (s, g) = key;
        tracing::debug!(
            "upcall ({s},{g}) on {}: {:?} ({})",
            self.vif_name(u.vif),
            e.origin,
            e.why
        );
        if let Some(old) = self.entries.get(&key)
            && old.iif != e.iif
        {
            let _ = self.sock.del_mfc(s, g, old.iif);
        }
        let old = self
            .entries
            .get(&key)
            .filter(|o| o.origin != Origin::Configured)
            .map(|o| o.iif);
        let new_iif = (e.origin != Origin::Configured).then_some(e.iif);
        match self.install(s, g, e) {
            Ok(()) => {
                if let Some(i) = old
                    && let Some(sh) = self.shares.get_mut(i as usize)
                {
                    sh.entries = sh.entries.saturating_sub(1);
                }
                if let Some(i) = new_iif
                    && let Some(sh) = self.shares.get_mut(i as usize)
                {
                    sh.entries += 1;
                }
            }
            Err(err) => tracing::warn!("installing ({s},{g}) from an upcall: {err}"),
        }
    }

    /// Makes this family's VIFs and entries match `cfg`.
    fn sync(&mut self, fam: Family, cfg: &Config, ch: &mut Changes) -> Result<(), MrouteError> {
        self.sync_vifs(fam, cfg, ch)?;
        self.sync_entries(fam, cfg, Scope::Every, ch)
    }

    /// Makes the VIFs match `cfg`; true when any was added or removed.
    fn sync_vifs(
        &mut self,
        fam: Family,
        cfg: &Config,
        ch: &mut Changes,
    ) -> Result<bool, MrouteError> {
        let before = (ch.vifs_added, ch.vifs_removed);
        let want: &[Iface] = cfg.ifaces(fam);
        // 1. New VIFs first (entries may name them), old ones after the entries moved away.
        let mut gone = Vec::new();
        for (i, v) in self.vifs.iter().enumerate() {
            if let Some(v) = v {
                let still = want.iter().find(|w| w.name == v.name);
                let same = still.is_some_and(|w| {
                    w.threshold == v.threshold
                        && crate::sockets::ifindex(&w.name) == Some(v.ifindex)
                });
                if !same {
                    gone.push(i as u16);
                }
            }
        }
        for &i in &gone {
            self.remove_vif(fam, i, ch)?;
        }
        let missing: Vec<&Iface> = want
            .iter()
            .filter(|w| self.vif_of(&w.name).is_none())
            .collect();
        let free = self.vifs.iter().filter(|v| v.is_none()).count() + MAXVIFS - self.vifs.len();
        if missing.len() > free {
            return Err(MrouteError::TooManyVifs {
                family: fam,
                names: want.iter().map(|w| w.name.clone()).collect(),
            });
        }
        for w in missing {
            let Some(ifindex) = crate::sockets::ifindex(&w.name) else {
                tracing::warn!(
                    "{fam} {} for {}: no such interface; routes through it wait until it appears",
                    fam.vif(),
                    w.name
                );
                continue;
            };
            let i = match self.vifs.iter().position(|v| v.is_none()) {
                Some(i) => i,
                None => {
                    self.vifs.push(None);
                    self.vifs.len() - 1
                }
            };
            self.sock
                .add_vif(i as u16, ifindex, w.threshold)
                .map_err(|e| MrouteError::Vif {
                    op: format!(
                        "adding {fam} {} {i} for {} (ifindex {ifindex})",
                        fam.vif(),
                        w.name
                    ),
                    source: e,
                })?;
            self.vifs[i] = Some(Vif {
                name: w.name.clone(),
                ifindex,
                threshold: w.threshold,
            });
            ch.vifs_added += 1;
        }

        Ok(before != (ch.vifs_added, ch.vifs_removed))
    }

    /// Makes the (S,G) entries in `scope` match `cfg`. Every entry is decided the same way
    /// ([`Table::confirm_static`], then [`Table::recheck`]); a [`Scope::Routes`] sync only
    /// looks at fewer of them, with the same result as a full one.
    fn sync_entries(
        &mut self,
        fam: Family,
        cfg: &Config,
        scope: Scope<'_>,
        ch: &mut Changes,
    ) -> Result<(), MrouteError> {
        let before = ch.added + ch.changed;
        // An unchanged entry is only marked with this sync's generation (20,000 unchanged
        // routes allocate nothing).
        self.generation += 1;
        let generation = self.generation;
        let statics = |r: &&Arc<Route>| r.family() == fam && r.is_static();
        let mut install = Install::default();
        // 1. Static entries: the first configured route for an (S,G) whose input is a VIF.
        let relearn = match scope {
            Scope::Every => {
                for r in cfg.routes.iter().filter(statics) {
                    self.confirm_static(r, generation, &mut install);
                }
                true
            }
            Scope::Routes { removed, added } => {
                let changed = || removed.iter().chain(added).filter(statics);
                let mut keys: Vec<(IpAddr, IpAddr)> = changed().map(|r| static_key(r)).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let first = cfg
                        .routes
                        .iter()
                        .filter(statics)
                        .find(|r| static_key(r) == k && self.vif_of(&r.from).is_some());
                    match first {
                        Some(r) => self.confirm_static(r, generation, &mut install),
                        None => self.recheck(k, cfg, generation, &mut install),
                    }
                }
                // Learned and stop entries depend on the templates only.
                removed
                    .iter()
                    .chain(added)
                    .any(|r| r.family() == fam && !r.is_static())
            }
        };
        // 2. Entries no configured route confirmed: configured ones go, learned and stop
        // ones are resolved again against the new templates.
        if relearn {
            let unconfirmed: Vec<(IpAddr, IpAddr)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.generation != generation)
                .filter(|(_, e)| matches!(scope, Scope::Every) || e.origin != Origin::Configured)
                .map(|(k, _)| *k)
                .collect();
            for key in unconfirmed {
                self.recheck(key, cfg, generation, &mut install);
            }
        }
        // 3. The kernel writes: replaced entries leave their old input first.
        self.write(install, generation, ch)?;
        ch.kept += self
            .entries
            .len()
            .saturating_sub(ch.added + ch.changed - before);
        Ok(())
    }

    /// Makes the kernel writes a sync decided: replaced entries leave their old input
    /// first, then removals, then additions.
    fn write(
        &mut self,
        install: Install,
        generation: u64,
        ch: &mut Changes,
    ) -> Result<(), MrouteError> {
        for (s, g, iif) in install.leave {
            let _ = self.sock.del_mfc(s, g, iif);
        }
        for (s, g, iif) in install.remove {
            self.entries.remove(&(s, g));
            if let Err(err) = self.sock.del_mfc(s, g, iif) {
                tracing::warn!("removing ({s},{g}): {err}");
            }
            ch.removed += 1;
        }
        self.entries.reserve(install.add.len());
        for ((s, g), mut e, replaces) in install.add {
            e.generation = generation;
            let from = self.vif_name(e.iif);
            self.install(s, g, e).map_err(|err| MrouteError::Mfc {
                op: format!("adding ({s},{g}) from {from}"),
                source: err,
            })?;
            if replaces {
                ch.changed += 1;
            } else {
                ch.added += 1;
            }
        }
        Ok(())
    }

    /// Static route `r` wants its (S,G) from its input VIF to its outputs: an entry that
    /// already is so is confirmed, any other is planned. Later routes for an (S,G) already
    /// decided in this sync are ignored (the first wins).
    fn confirm_static(&mut self, r: &Route, generation: u64, install: &mut Install) {
        let Some(iif) = self.vif_of(&r.from) else {
            return;
        };
        let key = static_key(r);
        if install.planned.contains(&key) {
            return;
        }
        let ttls = self.ttls(&r.to);
        match self.entries.get_mut(&key) {
            Some(e) if e.generation == generation => {}
            Some(e) if e.iif == iif && e.ttls == ttls => {
                e.generation = generation;
                if e.origin != Origin::Configured || e.why != r.origin {
                    e.origin = Origin::Configured;
                    e.why = r.origin.clone();
                }
            }
            found => {
                let old_iif = found.map(|e| {
                    e.generation = generation;
                    e.iif
                });
                if let Some(o) = old_iif.filter(|o| *o != iif) {
                    install.leave.push((key.0, key.1, o));
                }
                let e = Entry::new(iif, ttls, Origin::Configured, r.origin.clone(), generation);
                install.planned.insert(key);
                install.add.push((key, e, old_iif.is_some()));
            }
        }
    }

    /// An entry no static route wants: a configured one goes; a learned or stop one is
    /// resolved again and kept, replaced or removed.
    fn recheck(
        &mut self,
        key: (IpAddr, IpAddr),
        cfg: &Config,
        generation: u64,
        install: &mut Install,
    ) {
        let (s, g) = key;
        let Some(old) = self.entries.get(&key) else {
            return;
        };
        if old.generation == generation {
            return;
        }
        let new = if old.origin == Origin::Configured {
            None
        } else {
            self.resolve(cfg, old.iif, s, g)
        };
        let old = self.entries.get_mut(&key).expect("present");
        // The last listener of a proxied (S,G) left: its route goes (traffic that still
        // comes makes a stop entry on its upcall, as for any unwanted group).
        let new = new.filter(|e| !(old.origin == Origin::Proxy && e.origin == Origin::Stop));
        match new {
            Some(e) if e.iif == old.iif && e.ttls == old.ttls => {
                old.generation = generation;
                old.origin = e.origin;
                old.why = e.why;
            }
            Some(e) => {
                old.generation = generation;
                if e.iif != old.iif {
                    install.leave.push((s, g, old.iif));
                }
                install.add.push((key, e, true));
            }
            None => {
                old.generation = generation;
                install.remove.push((s, g, old.iif));
            }
        }
    }

    fn remove_vif(&mut self, fam: Family, i: u16, ch: &mut Changes) -> Result<(), MrouteError> {
        // Entries through it go first; the rest of sync re-resolves or re-installs them.
        let keys: Vec<(IpAddr, IpAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.iif == i || e.ttls[i as usize] != TTL_NOT_OUTPUT)
            .map(|(k, _)| *k)
            .collect();
        for (s, g) in keys {
            if let Some(e) = self.entries.remove(&(s, g)) {
                let _ = self.sock.del_mfc(s, g, e.iif);
                ch.removed += 1;
            }
        }
        let name = self.vif_name(i);
        match self.sock.del_vif(i) {
            Ok(()) => {}
            // The interface is gone, and its VIF with it.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => {
                return Err(MrouteError::Vif {
                    op: format!("removing {fam} {} {i} ({name})", fam.vif()),
                    source: e,
                });
            }
        }
        self.vifs[i as usize] = None;
        ch.vifs_removed += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::net::Ipv4Addr;

    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;
    use crate::mroute::config::Iface;

    /// A kernel write, as the recorder saw it.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Op {
        AddMfc(IpAddr, IpAddr, u16, Vec<u8>),
        DelMfc(IpAddr, IpAddr, u16),
        AddVif(u16, u32),
        DelVif(u16),
    }

    /// Records the writes instead of making them (the test runs unprivileged).
    #[derive(Default)]
    struct Recorder(RefCell<Vec<Op>>);

    impl RouteWrite for Recorder {
        fn add_vif(&self, vifi: u16, ifindex: u32, _: u8) -> std::io::Result<()> {
            self.0.borrow_mut().push(Op::AddVif(vifi, ifindex));
            Ok(())
        }
        fn del_vif(&self, vifi: u16) -> std::io::Result<()> {
            self.0.borrow_mut().push(Op::DelVif(vifi));
            Ok(())
        }
        fn add_mfc(
            &self,
            s: IpAddr,
            g: IpAddr,
            iif: u16,
            ttls: &[u8; MAXVIFS],
        ) -> std::io::Result<()> {
            self.0
                .borrow_mut()
                .push(Op::AddMfc(s, g, iif, ttls.to_vec()));
            Ok(())
        }
        fn del_mfc(&self, s: IpAddr, g: IpAddr, iif: u16) -> std::io::Result<()> {
            self.0.borrow_mut().push(Op::DelMfc(s, g, iif));
            Ok(())
        }
    }

    const VIFS: [&str; 4] = ["a", "b", "c", "d"];

    fn config(routes: Vec<Arc<Route>>) -> Config {
        Config {
            table: None,
            expire: Duration::from_secs(60),
            vifs: VIFS
                .iter()
                .map(|n| Iface {
                    name: n.to_string(),
                    threshold: 1,
                })
                .collect(),
            mifs: vec![],
            routes,
            joins: vec![],
            firewall: None,
            snooping: vec![],
            state_dir: Default::default(),
            proxy: None,
        }
    }

    /// A table whose VIFs 0..4 are a, b, c, d, set up from `cfg` and then `upcalls`.
    fn table(cfg: &Config, upcalls: &[(u16, u8, u8)]) -> Table<Recorder> {
        let mut t = Table {
            sock: Recorder::default(),
            vifs: VIFS
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Some(Vif {
                        name: n.to_string(),
                        ifindex: i as u32 + 10,
                        threshold: 1,
                    })
                })
                .collect(),
            entries: HashMap::new(),
            generation: 0,
            limits: Limits::default(),
            shares: [Share::default(); MAXVIFS],
            started: Instant::now(),
            proxy: None,
        };
        t.sync_entries(Family::Ipv4, cfg, Scope::Every, &mut Changes::default())
            .unwrap();
        for &(vif, s, g) in upcalls {
            t.upcall(
                cfg,
                Upcall {
                    kind: kernel::MSG_NOCACHE,
                    vif,
                    source: source(s),
                    group: group(g),
                },
            );
        }
        t.sock.0.borrow_mut().clear();
        t
    }

    fn source(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i % 3))
    }

    fn group(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1 + i % 3))
    }

    /// Few sources, groups and interfaces, so routes collide and shadow each other; "x"
    /// is not a VIF.
    fn route() -> impl Strategy<Value = Arc<Route>> {
        let from = prop::sample::select(vec!["a", "b", "c", "x"]);
        let to = prop::collection::vec(
            (prop::sample::select(vec!["a", "b", "c", "d", "x"]), 1u8..4),
            0..3,
        );
        (from, 0u8..4, 0u8..4, any::<bool>(), to, 0u32..1000).prop_map(
            |(from, s, g, template, to, n)| {
                let (source, grp) = if template {
                    (
                        (s != 3).then(|| IpNet::new(source(s), 24).unwrap()),
                        IpNet::new(group(g), 30).unwrap(),
                    )
                } else {
                    (
                        Some(IpNet::new(source(s), 32).unwrap()),
                        IpNet::new(group(g), 32).unwrap(),
                    )
                };
                Arc::new(Route {
                    origin: format!("route {n}"),
                    from: from.to_string(),
                    source,
                    group: grp,
                    to: to.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
                })
            },
        )
    }

    type Seen = (
        Vec<Op>,
        BTreeMap<(IpAddr, IpAddr), (u16, Vec<u8>, Origin, String)>,
        [usize; 4],
    );

    fn seen(t: &Table<Recorder>, ch: &Changes) -> Seen {
        let mut ops = t.sock.0.borrow().clone();
        ops.sort();
        let entries = t
            .entries
            .iter()
            .map(|(k, e)| (*k, (e.iif, e.ttls.to_vec(), e.origin, e.why.clone())))
            .collect();
        (ops, entries, [ch.added, ch.changed, ch.removed, ch.kept])
    }

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Only `a` (the upstream) and `b`, `c` (downstreams) are the proxy's; `d` is not.
    fn proxied(interest: &[(&str, proxy::Filter)]) -> ProxyRoutes {
        let mut i = Interest::new();
        for (iface, f) in interest {
            i.entry(v6("ff3e::1"))
                .or_default()
                .insert(iface.to_string(), f.clone());
        }
        ProxyRoutes {
            upstream: "a".into(),
            ifaces: vec!["a".into(), "b".into(), "c".into()],
            interest: i,
        }
    }

    fn nocache(vif: u16, s: &str) -> Upcall {
        Upcall {
            kind: kernel::MSG_NOCACHE,
            vif,
            source: v6(s),
            group: v6("ff3e::1"),
        }
    }

    fn oifs_of(t: &Table<Recorder>, s: &str) -> Option<(Origin, Vec<usize>)> {
        t.entries.get(&(v6(s), v6("ff3e::1"))).map(|e| {
            let o = (0..MAXVIFS).filter(|i| e.ttls[*i] != TTL_NOT_OUTPUT);
            (e.origin, o.collect())
        })
    }

    #[test]
    fn proxy_routes_follow_the_downstream_listeners() {
        let cfg = config(vec![]);
        let mut t = table(&cfg, &[]);
        t.proxy = Some(proxied(&[("b", proxy::Filter::any())]));
        // From the upstream: to b only.
        t.upcall(&cfg, nocache(0, "fd00::1"));
        assert_eq!(oifs_of(&t, "fd00::1"), Some((Origin::Proxy, vec![1])));
        // c joins for that source only: the entry is updated in place.
        t.proxy = Some(proxied(&[
            ("b", proxy::Filter::any()),
            ("c", proxy::Filter::include([v6("fd00::1")])),
        ]));
        t.reproxy(&cfg, &mut Changes::default()).unwrap();
        assert_eq!(oifs_of(&t, "fd00::1"), Some((Origin::Proxy, vec![1, 2])));
        // The same (S,G) arriving on a downstream (WRONGVIF) does not move the route.
        t.upcall(
            &cfg,
            Upcall {
                kind: kernel::MSG_WRONGVIF,
                ..nocache(1, "fd00::1")
            },
        );
        assert_eq!(oifs_of(&t, "fd00::1"), Some((Origin::Proxy, vec![1, 2])));
        assert_eq!(t.entries[&(v6("fd00::1"), v6("ff3e::1"))].iif, 0);
        // d is not the proxy's: its packets are stopped.
        t.upcall(&cfg, nocache(3, "fd00::9"));
        assert_eq!(oifs_of(&t, "fd00::9"), Some((Origin::Stop, vec![])));
        // The last listeners leave: the routes go.
        t.sock.0.borrow_mut().clear();
        t.proxy = Some(proxied(&[]));
        t.reproxy(&cfg, &mut Changes::default()).unwrap();
        assert_eq!(oifs_of(&t, "fd00::1"), None);
        assert!(
            t.sock
                .0
                .borrow()
                .contains(&Op::DelMfc(v6("fd00::1"), v6("ff3e::1"), 0)),
            "{:?}",
            t.sock.0.borrow()
        );
        // A stop entry from the upstream becomes a route when a listener comes.
        t.upcall(&cfg, nocache(0, "fd00::2"));
        assert_eq!(oifs_of(&t, "fd00::2"), Some((Origin::Stop, vec![])));
        t.proxy = Some(proxied(&[("c", proxy::Filter::any())]));
        t.reproxy(&cfg, &mut Changes::default()).unwrap();
        assert_eq!(oifs_of(&t, "fd00::2"), Some((Origin::Proxy, vec![2])));
    }

    #[test]
    fn a_downstream_source_goes_to_the_other_downstreams_only() {
        let cfg = config(vec![]);
        let mut t = table(&cfg, &[]);
        t.proxy = Some(proxied(&[
            ("b", proxy::Filter::any()),
            ("c", proxy::Filter::any()),
        ]));
        t.upcall(&cfg, nocache(1, "fd00::5"));
        assert_eq!(oifs_of(&t, "fd00::5"), Some((Origin::Proxy, vec![2])));
        // Link-local sources never leave their link.
        t.upcall(&cfg, nocache(0, "fe80::5"));
        assert_eq!(oifs_of(&t, "fe80::5"), Some((Origin::Stop, vec![])));
    }

    proptest! {
        /// A reload that changed a run of routes writes to the kernel exactly what a full
        /// sync writes, and leaves the same entries and counts.
        #[test]
        fn a_delta_sync_writes_what_a_full_sync_writes(
            old in prop::collection::vec(route(), 0..10),
            cut in 0usize..10,
            drop in 0usize..4,
            insert in prop::collection::vec(route(), 0..4),
            upcalls in prop::collection::vec((0u16..4, 0u8..4, 0u8..4), 0..8),
        ) {
            let cut = cut.min(old.len());
            let drop = drop.min(old.len() - cut);
            let mut routes = old[..cut].to_vec();
            routes.extend(insert);
            routes.extend_from_slice(&old[cut + drop..]);
            let (old_cfg, new_cfg) = (config(old), config(routes));
            let (ro, rn) = changed_run(&old_cfg.routes, &new_cfg.routes);

            let mut full = table(&old_cfg, &upcalls);
            let mut ch_full = Changes::default();
            full.sync_entries(Family::Ipv4, &new_cfg, Scope::Every, &mut ch_full).unwrap();

            let mut delta = table(&old_cfg, &upcalls);
            let mut ch_delta = Changes::default();
            let scope = Scope::Routes {
                removed: &old_cfg.routes[ro],
                added: &new_cfg.routes[rn],
            };
            delta.sync_entries(Family::Ipv4, &new_cfg, scope, &mut ch_delta).unwrap();

            prop_assert_eq!(seen(&delta, &ch_delta), seen(&full, &ch_full));
        }
    }
}
