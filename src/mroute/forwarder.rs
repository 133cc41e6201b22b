//! The forwarder's kernel state: one routing socket per family, its VIFs/MIFs, every (S,G)
//! entry it installed and why, and the group memberships. Applying a new [`Config`] changes
//! only what differs, so unchanged entries keep forwarding through a reload.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::MrouteError;
use super::config::{Config, Iface, Resolution};
use super::kernel::{self, MAXVIFS, TTL_NOT_OUTPUT};
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

/// One family's routing socket and what the forwarder put into it.
struct Table {
    sock: RouteSocket,
    vifs: Vec<Option<Vif>>,
    entries: HashMap<(IpAddr, IpAddr), Entry>,
    generation: u64,
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
                ..config.clone()
            },
            v4: None,
            v6: None,
            joins: BTreeMap::new(),
            retired: None,
        };
        let changes = f.apply(config)?;
        Ok((f, changes))
    }

    /// When `new` differs from the running configuration only in a run of routes (one
    /// changed, added or removed among many), the old and new index ranges of that run.
    fn delta(&self, new: &Config) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let old = &self.config;
        if old.vifs != new.vifs || old.mifs != new.mifs || self.v4.is_none() && self.v6.is_none() {
            return None;
        }
        let (a, b) = (&old.routes, &new.routes);
        let same = |x: &Arc<super::config::Route>, y: &Arc<super::config::Route>| {
            Arc::ptr_eq(x, y) || x == y
        };
        let prefix = a.iter().zip(b).take_while(|(x, y)| same(x, y)).count();
        let suffix = a[prefix..]
            .iter()
            .rev()
            .zip(b[prefix..].iter().rev())
            .take_while(|(x, y)| same(x, y))
            .count();
        let (ro, rn) = (prefix..a.len() - suffix, prefix..b.len() - suffix);
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
                });
            }
            if let Some(t) = slot.as_mut() {
                match &delta {
                    Some((ro, rn)) => {
                        if t.sync_vifs(fam, &new, &mut ch)? {
                            t.sync_entries(fam, &new, &mut ch)?;
                        } else {
                            let removed = &self.config.routes[ro.clone()];
                            t.sync_delta(fam, &new, removed, &new.routes[rn.clone()], &mut ch)?;
                        }
                    }
                    None => t.sync(fam, &new, &mut ch)?,
                }
            }
        }
        self.sync_joins(&new, &mut ch);
        self.retired = Some(std::mem::replace(&mut self.config, new));
        Ok(ch)
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
        Status {
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
        }
    }
}

impl Table {
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
            Resolution::Stop(why) => ([TTL_NOT_OUTPUT; MAXVIFS], Origin::Stop, why.into()),
        };
        Some(Entry::new(iif, ttls, origin, why, self.generation))
    }

    fn install(&mut self, s: IpAddr, g: IpAddr, e: Entry) -> Result<(), std::io::Error> {
        self.sock.add_mfc(s, g, e.iif, &e.ttls)?;
        self.entries.insert((s, g), e);
        Ok(())
    }

    fn upcall(&mut self, cfg: &Config, u: Upcall) {
        let key = (u.source, u.group);
        let existing = self.entries.get(&key);
        if existing.is_none() && self.entries.len() >= MAX_ENTRIES {
            // A flood of new sources: the kernel drops their queued packets after 10 s.
            tracing::debug!(
                "({},{}): {MAX_ENTRIES} entries already; not installed",
                u.source,
                u.group
            );
            return;
        }
        match u.kind {
            kernel::MSG_NOCACHE => {
                if existing.is_some_and(|e| e.origin == Origin::Configured) {
                    return;
                }
            }
            kernel::MSG_WRONGVIF => match existing {
                // A configured entry stays as configured; the kernel counts wrong_if.
                Some(e) if e.origin == Origin::Configured => return,
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
        if let Err(err) = self.install(s, g, e) {
            tracing::warn!("installing ({s},{g}) from an upcall: {err}");
        }
    }

    /// Makes this family's VIFs and entries match `cfg`.
    fn sync(&mut self, fam: Family, cfg: &Config, ch: &mut Changes) -> Result<(), MrouteError> {
        self.sync_vifs(fam, cfg, ch)?;
        self.sync_entries(fam, cfg, ch)
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

    /// A reload that changed only `removed` (old) into `added` (new) routes: only the
    /// (S,G) entries those routes name are looked at, and learned entries only when a
    /// template changed. Same result as `sync_entries`, without a pass over every route.
    fn sync_delta(
        &mut self,
        fam: Family,
        cfg: &Config,
        removed: &[Arc<super::config::Route>],
        added: &[Arc<super::config::Route>],
        ch: &mut Changes,
    ) -> Result<(), MrouteError> {
        let before = ch.added + ch.changed;
        let key = |r: &super::config::Route| (r.source.expect("static").addr(), r.group.addr());
        let changed = || removed.iter().chain(added).filter(|r| r.family() == fam);
        let mut keys: Vec<(IpAddr, IpAddr)> = changed()
            .filter(|r| r.is_static())
            .map(|r| key(r))
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (s, g) = k;
            // The first configured route for (S,G) whose input is a VIF wins, as in a full sync.
            let want = cfg
                .routes
                .iter()
                .filter(|r| r.family() == fam && r.is_static() && key(r) == k)
                .find_map(|r| self.vif_of(&r.from).map(|iif| (iif, self.ttls(&r.to), r)));
            match (want, self.entries.get_mut(&k)) {
                (Some((iif, ttls, r)), Some(e)) if e.iif == iif && e.ttls == ttls => {
                    e.origin = Origin::Configured;
                    if e.why != r.origin {
                        e.why = r.origin.clone();
                    }
                }
                (Some((iif, ttls, r)), old) => {
                    let old_iif = old.map(|e| e.iif);
                    if old_iif.is_some_and(|o| o != iif) {
                        let _ = self.sock.del_mfc(s, g, old_iif.unwrap_or(0));
                    }
                    let e = Entry::new(
                        iif,
                        ttls,
                        Origin::Configured,
                        r.origin.clone(),
                        self.generation,
                    );
                    self.install(s, g, e).map_err(|err| MrouteError::Mfc {
                        op: format!("adding ({s},{g})"),
                        source: err,
                    })?;
                    if old_iif.is_some() {
                        ch.changed += 1;
                    } else {
                        ch.added += 1;
                    }
                }
                (None, Some(e)) if e.origin == Origin::Configured => {
                    let iif = e.iif;
                    self.entries.remove(&k);
                    if let Err(err) = self.sock.del_mfc(s, g, iif) {
                        tracing::warn!("removing ({s},{g}): {err}");
                    }
                    ch.removed += 1;
                }
                (None, _) => {}
            }
        }
        if changed().any(|r| !r.is_static()) {
            let learned: Vec<(IpAddr, IpAddr)> = self
                .entries
                .iter()
                .filter(|(_, e)| e.origin != Origin::Configured)
                .map(|(k, _)| *k)
                .collect();
            for (s, g) in learned {
                let iif = self.entries[&(s, g)].iif;
                match self.resolve(cfg, iif, s, g) {
                    Some(e) => {
                        let old = &self.entries[&(s, g)];
                        if e.ttls != old.ttls || e.origin != old.origin {
                            self.install(s, g, e).map_err(|err| MrouteError::Mfc {
                                op: format!("replacing ({s},{g})"),
                                source: err,
                            })?;
                            ch.changed += 1;
                        } else if let Some(o) = self.entries.get_mut(&(s, g)) {
                            o.why = e.why;
                        }
                    }
                    None => {
                        self.entries.remove(&(s, g));
                        let _ = self.sock.del_mfc(s, g, iif);
                        ch.removed += 1;
                    }
                }
            }
        }
        ch.kept += self
            .entries
            .len()
            .saturating_sub(ch.added + ch.changed - before);
        Ok(())
    }

    /// Makes the (S,G) entries match `cfg`, looking at every route and entry.
    fn sync_entries(
        &mut self,
        fam: Family,
        cfg: &Config,
        ch: &mut Changes,
    ) -> Result<(), MrouteError> {
        // 2. Static entries: one lookup per configured route; an unchanged entry is only
        // marked with this sync's generation (20,000 unchanged routes allocate nothing).
        self.generation += 1;
        let generation = self.generation;
        let mut install: Vec<((IpAddr, IpAddr), Entry, bool)> = Vec::new();
        for r in cfg
            .routes
            .iter()
            .filter(|r| r.family() == fam && r.is_static())
        {
            let Some(iif) = self.vif_of(&r.from) else {
                continue;
            };
            let key = (r.source.expect("static").addr(), r.group.addr());
            let ttls = self.ttls(&r.to);
            match self.entries.get_mut(&key) {
                // The first of two routes for one (S,G) wins.
                Some(e) if e.generation == generation => {}
                Some(e) if e.iif == iif && e.ttls == ttls => {
                    e.generation = generation;
                    if e.origin != Origin::Configured || e.why != r.origin {
                        e.origin = Origin::Configured;
                        e.why = r.origin.clone();
                    }
                    ch.kept += 1;
                }
                found => {
                    let old_iif = found.map(|e| {
                        e.generation = generation;
                        e.iif
                    });
                    let e = Entry::new(iif, ttls, Origin::Configured, r.origin.clone(), generation);
                    if old_iif.is_some_and(|o| o != iif) {
                        let _ = self.sock.del_mfc(key.0, key.1, old_iif.unwrap_or(0));
                    }
                    install.push((key, e, old_iif.is_some()));
                }
            }
        }
        // Entries no configured route confirmed: configured ones go, learned and stop ones
        // are resolved again against the new templates.
        let unconfirmed: Vec<(IpAddr, IpAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.generation != generation)
            .map(|(k, _)| *k)
            .collect();
        for key in unconfirmed {
            let (s, g) = key;
            let old = &self.entries[&key];
            let new = if old.origin == Origin::Configured {
                None
            } else {
                self.resolve(cfg, old.iif, s, g)
            };
            let old = self.entries.get_mut(&key).expect("present");
            match new {
                Some(e) if e.iif == old.iif && e.ttls == old.ttls => {
                    old.generation = generation;
                    old.origin = e.origin;
                    old.why = e.why;
                    ch.kept += 1;
                }
                Some(e) => {
                    if e.iif != old.iif {
                        let _ = self.sock.del_mfc(s, g, old.iif);
                    }
                    install.push((key, e, true));
                }
                None => {
                    let iif = old.iif;
                    self.entries.remove(&key);
                    if let Err(err) = self.sock.del_mfc(s, g, iif) {
                        tracing::warn!("removing ({s},{g}): {err}");
                    }
                    ch.removed += 1;
                }
            }
        }
        self.entries.reserve(install.len());
        for ((s, g), mut e, replaces) in install {
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
