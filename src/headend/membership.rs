//! The router side of MLDv2/MLDv1 (RFC 9777, RFC 2710) and IGMPv3/v2/v1 (RFC 3376, RFC 2236)
//! on one interface and one address family, as a pure state machine: parsed messages and
//! timer ticks come in with `now`, a list of [`Action`]s comes out. No sockets, no clock;
//! `listen.rs` is the edge that feeds it.
//!
//! # API
//!
//! What the headend uses (`super::listen`):
//! - `Listener::start(ifaces: Vec<String>, cfg: QuerierConfig,
//!   events: mpsc::UnboundedSender<MembershipEvent>) -> Result<Listener, ListenError>`
//!   (inside a tokio runtime; IPv6 and IPv4 on every interface; dropping it stops it);
//!   `Listener::status() -> Vec<InterfaceStatus>` (serializable).
//! - `MembershipEvent::Wanted { iface, ifindex, group, wanted, why: Why }` and
//!   `MembershipEvent::QuerierChanged { iface, ifindex, family, querier, we_query }`.
//!
//! This module:
//! - [`QuerierConfig`] (`Default` = the RFC values: robustness 2, query interval 125 s,
//!   query response interval 10 s, last-listener interval 1 s and count = robustness,
//!   startup interval QI/4 and count = robustness, querier [`QuerierMode::Auto`]; the
//!   `Option` fields derive from the others when None).
//! - [`Membership::new`]`(family, cfg)`, then [`Membership::set_addresses`]`(now, me, ours)`
//!   (`me`: the address we query from, the link-local one for IPv6; `ours`: every address
//!   of this host: packets from them are ours and ignored, and "wanted" means a listener
//!   wants traffic from one of them; see [`Membership::wanted_groups`]).
//! - [`Membership::on_packet`]`(now, &Message, source)` and [`Membership::on_timer`]`(now)`
//!   return `Vec<Action>`: [`Action::SendQuery`] (to whom, which query),
//!   [`Action::Wanted`] (group, wanted, [`Why`]), [`Action::QuerierChanged`], and
//!   [`Action::Heard`] (a join or leave, for the log).
//! - [`Membership::next_deadline`] says when to call `on_timer` next;
//!   [`Membership::status`]`(now)` is a serializable snapshot ([`MembershipStatus`]).
//! - [`Membership::querier_version`], [`Membership::older_querier`] and
//!   [`Membership::older_querier_interval`]: the version our queries use while an older
//!   querier is on the link (see below).
//!
//! Router state per group (RFC 9777 §7.2, RFC 3376 §6.2): INCLUDE(A) with a timer per
//! source, or EXCLUDE(X, Y) with a filter timer, X the requested sources (with timers) and
//! Y the excluded ones (no timers). Traffic from S is forwarded when S is in A (INCLUDE) or
//! S is not in Y (EXCLUDE). Groups of link-local scope (ff02::/16, 224.0.0.0/24) are not
//! tracked. Queries we send are MLDv2/IGMPv3, except group-specific ones for a group in
//! an older compatibility mode (MLDv1, IGMPv2; none for IGMPv1, whose leaves are ignored).
//!
//! Older queriers (RFC 9777 §8.3.1, RFC 3376 §7.3.1): the RFCs want every router on a
//! link to run the oldest version present and leave that to the administrator. We follow
//! it on our own: a query of an older version heard on the link (MLDv1; IGMPv2 or v1)
//! puts the link in that version's mode for the Older Version Querier Present timeout
//! (robustness × query interval + query response interval / 2, restarted by each such
//! query). Meanwhile our queries are of that version (an IGMPv1 one with Max Resp Time 0),
//! and every group is handled as in that compatibility mode (newer reports lose their
//! source lists, BLOCK records and, in IGMPv1 mode, leaves are ignored; no source-specific
//! queries). See [`Membership::querier_version`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::wire::{GroupRecord, Message, Query, RecordType, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// `querier = "auto" | "never"`: take part in the election, or only listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuerierMode {
    #[default]
    Auto,
    Never,
}

/// Timers and counts of RFC 9777 §9 / RFC 3376 §8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerierConfig {
    pub robustness: u8,
    pub query_interval: Duration,
    pub query_response_interval: Duration,
    pub last_listener_interval: Duration,
    /// None: the robustness variable.
    pub last_listener_count: Option<u8>,
    /// None: a quarter of the query interval.
    pub startup_interval: Option<Duration>,
    /// None: the robustness variable.
    pub startup_count: Option<u8>,
    pub querier: QuerierMode,
}

impl Default for QuerierConfig {
    fn default() -> QuerierConfig {
        QuerierConfig {
            robustness: 2,
            query_interval: Duration::from_secs(125),
            query_response_interval: Duration::from_secs(10),
            last_listener_interval: Duration::from_secs(1),
            last_listener_count: None,
            startup_interval: None,
            startup_count: None,
            querier: QuerierMode::Auto,
        }
    }
}

impl QuerierConfig {
    pub fn last_listener_count(&self) -> u8 {
        self.last_listener_count.unwrap_or(self.robustness).max(1)
    }
    pub fn startup_interval(&self) -> Duration {
        self.startup_interval.unwrap_or(self.query_interval / 4)
    }
    pub fn startup_count(&self) -> u8 {
        self.startup_count.unwrap_or(self.robustness).max(1)
    }
    /// Last Listener Query Time: interval × count.
    pub fn last_listener_time(&self) -> Duration {
        self.last_listener_interval * u32::from(self.last_listener_count())
    }
}

/// Why a group's "wanted" changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Why {
    /// A report from `host` changed it (a join, or an exclusion of our sources).
    Report { host: IpAddr, version: Version },
    /// Nobody answered the last-listener queries after a leave.
    LastListenerGone,
    /// No report for the listener interval: the listeners vanished.
    Timeout,
    /// Our own addresses changed.
    OurAddresses,
    /// The interface went away or was re-created.
    InterfaceGone,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Report { host, version } => write!(f, "{version} report from {host}"),
            Why::LastListenerGone => f.write_str("no answer to the last-listener queries"),
            Why::Timeout => f.write_str("listener timed out"),
            Why::OurAddresses => f.write_str("our addresses changed"),
            Why::InterfaceGone => f.write_str("the interface went away"),
        }
    }
}

/// What a host said about a group, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Heard {
    Join,
    Leave,
    /// A current-state answer to a query.
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `query` to `to` (ff02::1 / 224.0.0.1 for general queries, else the group).
    SendQuery { to: IpAddr, query: Query },
    Wanted {
        group: IpAddr,
        wanted: bool,
        why: Why,
    },
    /// The querier on the link changed: `querier` is its address (ours when `we_query`),
    /// None when nobody queries (we never do and heard nobody, or have no address yet).
    QuerierChanged {
        querier: Option<IpAddr>,
        we_query: bool,
    },
    Heard {
        group: IpAddr,
        host: IpAddr,
        what: Heard,
        version: Version,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    Include,
    Exclude,
}

#[derive(Debug, Clone)]
struct Group {
    mode: FilterMode,
    /// The filter timer (EXCLUDE only).
    timer: Option<Instant>,
    /// INCLUDE: every source has a timer. EXCLUDE: Some = requested (X), None = excluded (Y).
    sources: BTreeMap<IpAddr, Option<Instant>>,
    /// Older Version Host Present timers (RFC 9777 §8.3.2, RFC 3376 §7.3.2).
    v1_until: Option<Instant>,
    v2_until: Option<Instant>,
    wanted: bool,
    /// The filter timer was lowered to the last-listener time (a leave is being checked).
    leaving: bool,
    last_reporter: Option<IpAddr>,
}

impl Group {
    fn new() -> Group {
        Group {
            mode: FilterMode::Include,
            timer: None,
            sources: BTreeMap::new(),
            v1_until: None,
            v2_until: None,
            wanted: false,
            leaving: false,
            last_reporter: None,
        }
    }

    fn forwards(&self, s: &IpAddr) -> bool {
        match self.mode {
            FilterMode::Include => self.sources.contains_key(s),
            FilterMode::Exclude => !matches!(self.sources.get(s), Some(None)),
        }
    }

    fn is_empty(&self) -> bool {
        self.mode == FilterMode::Include && self.sources.is_empty()
    }
}

/// A group-specific or group-and-source-specific query still to be (re)sent.
#[derive(Debug, Clone)]
struct Pending {
    group: IpAddr,
    /// None: a group-specific query.
    sources: Option<BTreeSet<IpAddr>>,
    left: u8,
    next: Instant,
}

/// The membership and querier state of one interface and one family.
#[derive(Debug, Clone)]
pub struct Membership {
    family: Family,
    cfg: QuerierConfig,
    /// Robustness and query interval in use: ours, or adopted from the querier's queries
    /// (RFC 9777 §5.1.8, §5.1.9).
    rv: u8,
    qi: Duration,
    me: Option<IpAddr>,
    ours: BTreeSet<IpAddr>,
    /// The other querier we heard and when its Other Querier Present timer runs out.
    other: Option<(IpAddr, Instant)>,
    startup_left: u8,
    next_general: Option<Instant>,
    groups: BTreeMap<IpAddr, Group>,
    pending: Vec<Pending>,
    /// The last querier reported in a QuerierChanged: (address, we query).
    reported_querier: (Option<IpAddr>, bool),
    /// Older Version Querier Present timers (RFC 9777 §8.3.1, RFC 3376 §7.3.1): MLDv1 or
    /// IGMPv1 (`v1`), IGMPv2 (`v2`) queries heard until then, and from whom last.
    older_v1: Option<(Instant, IpAddr)>,
    older_v2: Option<(Instant, IpAddr)>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

fn left(now: Instant, t: Option<Instant>) -> Option<u64> {
    t.map(|t| ms(t.saturating_duration_since(now)))
}

impl Membership {
    pub fn new(family: Family, cfg: QuerierConfig) -> Membership {
        Membership {
            family,
            rv: cfg.robustness.max(1),
            qi: cfg.query_interval,
            startup_left: cfg.startup_count(),
            cfg,
            me: None,
            ours: BTreeSet::new(),
            other: None,
            next_general: None,
            groups: BTreeMap::new(),
            pending: Vec::new(),
            reported_querier: (None, false),
            older_v1: None,
            older_v2: None,
        }
    }

    /// The version our queries use and the link is handled in: MLDv2/IGMPv3, or an older
    /// one while an older querier was heard within the Older Version Querier Present
    /// timeout (see the module comment).
    pub fn querier_version(&self) -> Version {
        match (self.mld(), self.older_v1.is_some(), self.older_v2.is_some()) {
            (true, true, _) => Version::Mld1,
            (true, false, _) => Version::Mld2,
            (false, true, _) => Version::Igmp1,
            (false, false, true) => Version::Igmp2,
            (false, false, false) => Version::Igmp3,
        }
    }

    /// The older querier we heard last, while its mode lasts.
    pub fn older_querier(&self) -> Option<IpAddr> {
        self.older_v1.or(self.older_v2).map(|(_, q)| q)
    }

    /// The address we query from.
    pub fn address(&self) -> Option<IpAddr> {
        self.me
    }

    pub fn family(&self) -> Family {
        self.family
    }

    fn mld(&self) -> bool {
        self.family == Family::Ipv6
    }

    /// True when we are the querier on the link.
    pub fn we_query(&self) -> bool {
        self.cfg.querier == QuerierMode::Auto && self.me.is_some() && self.other.is_none()
    }

    fn all_hosts(&self) -> IpAddr {
        if self.mld() {
            IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1))
        }
    }

    /// Multicast Address Listening Interval / Group Membership Interval.
    fn listener_interval(&self) -> Duration {
        self.qi * u32::from(self.rv) + self.cfg.query_response_interval
    }

    fn other_querier_interval(&self) -> Duration {
        self.qi * u32::from(self.rv) + self.cfg.query_response_interval / 2
    }

    fn older_host_interval(&self) -> Duration {
        self.listener_interval()
    }

    /// Older Version Querier Present timeout: robustness × query interval + half the
    /// query response interval (RFC 3376 §8.12's formula, RFC 9777 §9.13's).
    pub fn older_querier_interval(&self) -> Duration {
        self.other_querier_interval()
    }

    /// Sets the address we query from (`me`) and every address of this host (`ours`).
    pub fn set_addresses(
        &mut self,
        now: Instant,
        me: Option<IpAddr>,
        ours: impl IntoIterator<Item = IpAddr>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let ours: BTreeSet<IpAddr> = ours.into_iter().collect();
        if me != self.me {
            self.me = me;
            // A better address than the other querier's: we take over right away.
            if let (Some(m), Some((o, _))) = (me, self.other)
                && m < o
            {
                self.other = None;
            }
            if self.we_query() && self.next_general.is_none() {
                self.next_general = Some(now);
            }
        }
        if ours != self.ours {
            self.ours = ours;
            self.update_wanted(&mut out, Why::OurAddresses);
        }
        self.report_querier(&mut out);
        out
    }

    /// The earliest time `on_timer` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |d| d.min(t)));
            }
        };
        if self.we_query() {
            at(self.next_general);
        }
        at(self.other.map(|o| o.1));
        at(self.older_v1.map(|o| o.0));
        at(self.older_v2.map(|o| o.0));
        for p in &self.pending {
            at(Some(p.next));
        }
        for g in self.groups.values() {
            at(g.timer);
            at(g.v1_until);
            at(g.v2_until);
            for t in g.sources.values() {
                at(*t);
            }
        }
        d
    }

    /// One step of time: expire timers, send due queries.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // The other querier went silent: we query again (RFC 9777 §7.6.2).
        if let Some((_, until)) = self.other
            && until <= now
        {
            self.other = None;
            self.rv = self.cfg.robustness.max(1);
            self.qi = self.cfg.query_interval;
            if self.we_query() {
                self.next_general = Some(now);
            }
        }
        self.report_querier(&mut out);
        // The older querier went silent: back to our own version.
        if self.older_v1.is_some_and(|(t, _)| t <= now) {
            self.older_v1 = None;
        }
        if self.older_v2.is_some_and(|(t, _)| t <= now) {
            self.older_v2 = None;
        }
        if self.we_query()
            && let Some(t) = self.next_general
            && t <= now
        {
            let q = Query::general(
                self.querier_version(),
                self.cfg.query_response_interval,
                self.rv,
                self.qi,
            );
            out.push(Action::SendQuery {
                to: self.all_hosts(),
                query: q,
            });
            let gap = if self.startup_left > 1 {
                self.startup_left -= 1;
                self.cfg.startup_interval()
            } else {
                self.startup_left = 0;
                self.qi
            };
            self.next_general = Some(now + gap);
        }
        self.send_pending(now, &mut out);
        for g in self.groups.values_mut() {
            if g.v1_until.is_some_and(|t| t <= now) {
                g.v1_until = None;
            }
            if g.v2_until.is_some_and(|t| t <= now) {
                g.v2_until = None;
            }
            if g.mode == FilterMode::Exclude && g.timer.is_some_and(|t| t <= now) {
                // EXCLUDE → INCLUDE of the requested sources (RFC 9777 §7.5).
                g.mode = FilterMode::Include;
                g.timer = None;
                g.sources.retain(|_, t| t.is_some());
            }
            let mode = g.mode;
            g.sources.retain(|_, t| match (mode, *t) {
                (FilterMode::Include, Some(t)) => t > now,
                _ => true,
            });
            if mode == FilterMode::Exclude {
                for t in g.sources.values_mut() {
                    if t.is_some_and(|t| t <= now) {
                        *t = None;
                    }
                }
            }
        }
        // Groups whose wanted turns false here went because of a timer.
        let leaving: BTreeSet<IpAddr> = self
            .groups
            .iter()
            .filter(|(_, g)| g.leaving)
            .map(|(a, _)| *a)
            .collect();
        for (a, want) in self.wanted_changes() {
            let why = if leaving.contains(&a) {
                Why::LastListenerGone
            } else {
                Why::Timeout
            };
            self.apply_wanted(a, want, &mut out, why);
        }
        self.groups.retain(|_, g| !g.is_empty());
        out
    }

    /// A message heard on the link from `source`.
    pub fn on_packet(&mut self, now: Instant, msg: &Message, source: IpAddr) -> Vec<Action> {
        let mut out = Vec::new();
        if self.ours.contains(&source) || Some(source) == self.me {
            return out;
        }
        // MLD messages come from link-local addresses (RFC 9777 §5, §6.3); others are dropped.
        if let IpAddr::V6(s) = source
            && !s.is_unicast_link_local()
        {
            return out;
        }
        if source.is_ipv6() != self.mld() {
            return out;
        }
        match msg {
            Message::Query(q) => self.on_query(now, q, source, &mut out),
            Message::OldReport { version, group } => {
                if !self.wants_group(group) {
                    return out;
                }
                let ohpi = self.older_host_interval();
                let new = !self.groups.contains_key(group);
                let g = self.groups.entry(*group).or_insert_with(Group::new);
                match version {
                    Version::Igmp1 => g.v1_until = Some(now + ohpi),
                    Version::Mld1 | Version::Igmp2 => {
                        if self.family == Family::Ipv6 {
                            g.v1_until = Some(now + ohpi)
                        } else {
                            g.v2_until = Some(now + ohpi)
                        }
                    }
                    _ => {}
                }
                self.record(now, *group, RecordType::IsExclude, &[], source, &mut out);
                out.push(Action::Heard {
                    group: *group,
                    host: source,
                    what: if new { Heard::Join } else { Heard::Refresh },
                    version: *version,
                });
                self.update_wanted(
                    &mut out,
                    Why::Report {
                        host: source,
                        version: *version,
                    },
                );
            }
            Message::Leave { version, group } => {
                if !self.wants_group(group) {
                    return out;
                }
                // IGMPv1 mode ignores leaves (RFC 3376 §7.3.2).
                if self.compat_or_link(group) == Version::Igmp1 {
                    return out;
                }
                out.push(Action::Heard {
                    group: *group,
                    host: source,
                    what: Heard::Leave,
                    version: *version,
                });
                self.record(now, *group, RecordType::ToInclude, &[], source, &mut out);
                self.update_wanted(
                    &mut out,
                    Why::Report {
                        host: source,
                        version: *version,
                    },
                );
            }
            Message::Report { version, records } => {
                for GroupRecord {
                    kind,
                    group,
                    sources,
                } in records
                {
                    if !self.wants_group(group) || sources.iter().any(|s| s.is_ipv6() != self.mld())
                    {
                        continue;
                    }
                    let (kind, sources) = match (Some(self.compat_or_link(group)), kind) {
                        // Older hosts present: BLOCK is ignored, TO_EX loses its sources
                        // (RFC 9777 §8.3.2, RFC 3376 §7.3.2).
                        (
                            Some(Version::Mld1 | Version::Igmp1 | Version::Igmp2),
                            RecordType::BlockOld,
                        ) => {
                            continue;
                        }
                        (Some(Version::Igmp1), RecordType::ToInclude) if sources.is_empty() => {
                            continue;
                        }
                        (
                            Some(Version::Mld1 | Version::Igmp1 | Version::Igmp2),
                            RecordType::ToExclude,
                        ) => (RecordType::ToExclude, &[][..]),
                        (_, k) => (*k, &sources[..]),
                    };
                    let what = match kind {
                        RecordType::IsInclude | RecordType::IsExclude => Heard::Refresh,
                        RecordType::ToExclude | RecordType::AllowNew => Heard::Join,
                        RecordType::ToInclude if !sources.is_empty() => Heard::Join,
                        RecordType::ToInclude | RecordType::BlockOld => Heard::Leave,
                    };
                    let what = match (what, self.groups.get(group)) {
                        (Heard::Refresh, None) => Heard::Join,
                        (w, _) => w,
                    };
                    out.push(Action::Heard {
                        group: *group,
                        host: source,
                        what,
                        version: *version,
                    });
                    self.record(now, *group, kind, sources, source, &mut out);
                }
                self.update_wanted(
                    &mut out,
                    Why::Report {
                        host: source,
                        version: *version,
                    },
                );
            }
        }
        self.groups.retain(|_, g| !g.is_empty());
        out
    }

    /// Groups we keep state for: multicast, of our family, wider than link-local scope.
    fn wants_group(&self, g: &IpAddr) -> bool {
        match g {
            IpAddr::V6(a) => self.mld() && a.is_multicast() && (a.segments()[0] & 0x000f) > 2,
            IpAddr::V4(a) => !self.mld() && a.is_multicast() && a.octets()[..3] != [224, 0, 0],
        }
    }

    /// The compatibility mode of a group we know: the oldest version heard recently, from
    /// its hosts or from a querier on the link.
    fn compat(&self, group: &IpAddr) -> Option<Version> {
        let g = self.groups.get(group)?;
        let hosts = match (self.mld(), g.v1_until.is_some(), g.v2_until.is_some()) {
            (true, true, _) => Version::Mld1,
            (true, false, _) => Version::Mld2,
            (false, true, _) => Version::Igmp1,
            (false, false, true) => Version::Igmp2,
            (false, false, false) => Version::Igmp3,
        };
        Some(oldest(hosts, self.querier_version()))
    }

    /// The compatibility mode a report for `group` is handled in (the link's own for a
    /// group we do not know yet).
    fn compat_or_link(&self, group: &IpAddr) -> Version {
        self.compat(group).unwrap_or_else(|| self.querier_version())
    }

    fn on_query(&mut self, now: Instant, q: &Query, source: IpAddr, out: &mut Vec<Action>) {
        if q.version.is_mld() != self.mld() {
            return;
        }
        // An older querier on the link: its version's mode, until it is silent for the
        // Older Version Querier Present timeout (RFC 9777 §8.3.1, RFC 3376 §7.3.1).
        let until = now + self.older_querier_interval();
        match q.version {
            Version::Mld1 | Version::Igmp1 => self.older_v1 = Some((until, source)),
            Version::Igmp2 => self.older_v2 = Some((until, source)),
            Version::Mld2 | Version::Igmp3 => {}
        }
        // Election (RFC 9777 §7.6.2, RFC 3376 §6.6.2): the lowest address queries. The
        // Other Querier Present timer is restarted only by the current querier or a better
        // one, so a worse router cannot keep us silent. A query from the unspecified
        // address (a snooping switch) takes no part.
        if !source.is_unspecified() {
            let better = match (self.other, self.me) {
                (Some((o, _)), _) => source <= o,
                (None, Some(m)) => source < m || self.cfg.querier == QuerierMode::Never,
                (None, None) => true,
            };
            if better {
                self.other = Some((source, now + self.other_querier_interval()));
                if q.qrv != 0 {
                    self.rv = q.qrv;
                }
                if let Some(qi) = q.qqi() {
                    self.qi = qi;
                }
            }
        }
        self.report_querier(out);
        if q.is_general() || q.suppress {
            return;
        }
        // A specific query lowers our timers to the last-listener time (RFC 9777
        // §7.6.3.1, RFC 3376 §6.6.1), querier or not.
        let llqt = self.cfg.last_listener_time();
        if let Some(g) = self.groups.get_mut(&q.group) {
            if q.sources.is_empty() {
                if g.mode == FilterMode::Exclude
                    && let Some(t) = g.timer
                    && t > now + llqt
                {
                    g.timer = Some(now + llqt);
                }
                g.leaving = true;
            } else {
                for s in &q.sources {
                    if let Some(Some(t)) = g.sources.get_mut(s)
                        && *t > now + llqt
                    {
                        *t = now + llqt;
                    }
                }
                g.leaving = true;
            }
        }
    }

    /// Applies one group record (RFC 9777 §7.4 tables; RFC 3376 §6.4).
    fn record(
        &mut self,
        now: Instant,
        group: IpAddr,
        kind: RecordType,
        sources: &[IpAddr],
        host: IpAddr,
        out: &mut Vec<Action>,
    ) {
        let mali = now + self.listener_interval();
        let b: BTreeSet<IpAddr> = sources.iter().copied().collect();
        let g = self.groups.entry(group).or_insert_with(Group::new);
        g.last_reporter = Some(host);
        // Queries to send: Some(set) a group-and-source query, None a group query.
        let mut queries: Vec<Option<BTreeSet<IpAddr>>> = Vec::new();
        let a: BTreeSet<IpAddr> = g.sources.keys().copied().collect();
        let x: BTreeSet<IpAddr> = g
            .sources
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(s, _)| *s)
            .collect();
        let y: BTreeSet<IpAddr> = &a - &x;
        match (g.mode, kind) {
            (FilterMode::Include, RecordType::IsInclude | RecordType::AllowNew) => {
                for s in &b {
                    g.sources.insert(*s, Some(mali));
                }
            }
            (FilterMode::Include, RecordType::BlockOld) => {
                queries.push(Some(&a & &b));
            }
            (FilterMode::Include, RecordType::ToInclude) => {
                for s in &b {
                    g.sources.insert(*s, Some(mali));
                }
                queries.push(Some(&a - &b));
            }
            (FilterMode::Include, RecordType::IsExclude | RecordType::ToExclude) => {
                // EXCLUDE(A*B, B-A): A*B keep their timers, B-A excluded, A-B deleted.
                g.mode = FilterMode::Exclude;
                g.sources.retain(|s, _| b.contains(s));
                for s in &b {
                    g.sources.entry(*s).or_insert(None);
                }
                g.timer = Some(mali);
                g.leaving = false;
                if kind == RecordType::ToExclude {
                    queries.push(Some(&a & &b));
                }
            }
            (FilterMode::Exclude, RecordType::IsInclude | RecordType::AllowNew) => {
                for s in &b {
                    g.sources.insert(*s, Some(mali));
                }
            }
            (FilterMode::Exclude, RecordType::ToInclude) => {
                for s in &b {
                    g.sources.insert(*s, Some(mali));
                }
                queries.push(Some(&x - &b));
                queries.push(None);
            }
            (FilterMode::Exclude, RecordType::BlockOld) => {
                let timer = g.timer;
                for s in &b {
                    if !a.contains(s) {
                        g.sources.insert(*s, timer);
                    }
                }
                queries.push(Some(&b - &y));
            }
            (FilterMode::Exclude, RecordType::IsExclude | RecordType::ToExclude) => {
                // EXCLUDE(A-Y, Y*A): new sources take the filter timer (TO_EX) or MALI
                // (IS_EX); X-A and Y-A are deleted.
                let fresh = if kind == RecordType::ToExclude {
                    g.timer
                } else {
                    Some(mali)
                };
                g.sources.retain(|s, _| b.contains(s));
                for s in &b {
                    if !a.contains(s) {
                        g.sources.insert(*s, fresh);
                    }
                }
                g.timer = Some(mali);
                g.leaving = false;
                if kind == RecordType::ToExclude {
                    queries.push(Some(&b - &y));
                }
            }
        }
        // Only the querier sends queries and lowers timers for them (RFC 9777 §7.4).
        if !self.we_query() {
            return;
        }
        for q in queries {
            if let Some(s) = &q
                && s.is_empty()
            {
                continue;
            }
            self.schedule_query(now, group, q, out);
        }
    }

    fn schedule_query(
        &mut self,
        now: Instant,
        group: IpAddr,
        sources: Option<BTreeSet<IpAddr>>,
        out: &mut Vec<Action>,
    ) {
        let llqt = self.cfg.last_listener_time();
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        match &sources {
            None => {
                if g.mode == FilterMode::Exclude
                    && let Some(t) = g.timer
                    && t > now + llqt
                {
                    g.timer = Some(now + llqt);
                }
                g.leaving = true;
            }
            Some(set) => {
                for s in set {
                    if let Some(Some(t)) = g.sources.get_mut(s)
                        && *t > now + llqt
                    {
                        *t = now + llqt;
                    }
                }
                if g.mode == FilterMode::Include {
                    g.leaving = true;
                }
            }
        }
        let count = self.cfg.last_listener_count();
        // A newer query for the same group (and kind) replaces the pending one.
        if let Some(p) = self
            .pending
            .iter_mut()
            .find(|p| p.group == group && p.sources.is_none() == sources.is_none())
        {
            if let (Some(old), Some(new)) = (&mut p.sources, &sources) {
                old.extend(new.iter().copied());
            }
            p.left = count;
            p.next = now;
        } else {
            self.pending.push(Pending {
                group,
                sources,
                left: count,
                next: now,
            });
        }
        self.send_pending(now, out);
    }

    /// Sends the group(-and-source)-specific queries that are due; keeps going after we
    /// stepped down, as RFC 9777 §7.6.3.1 wants the pending retransmissions sent.
    fn send_pending(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.cfg.querier == QuerierMode::Never || self.me.is_none() {
            self.pending.clear();
            return;
        }
        let llqt = self.cfg.last_listener_time();
        let llqi = self.cfg.last_listener_interval;
        let mut pending = std::mem::take(&mut self.pending);
        for p in pending.iter_mut() {
            if p.next > now || p.left == 0 {
                continue;
            }
            p.left -= 1;
            p.next = now + llqi;
            let Some(version) = self.compat(&p.group) else {
                p.left = 0;
                continue;
            };
            let g = &self.groups[&p.group];
            let mk = |sources: Vec<IpAddr>, suppress: bool| {
                let v = match version {
                    // IGMPv1 hosts know no specific queries; their leaves are ignored.
                    Version::Igmp1 => None,
                    v => Some(v),
                };
                v.map(|v| Query::specific(v, p.group, sources, suppress, llqi, self.rv, self.qi))
            };
            let mut queries = Vec::new();
            match &p.sources {
                None => {
                    // S set when a report raised the timer since (RFC 9777 §7.6.3.1).
                    let suppress = g.timer.is_some_and(|t| t > now + llqt);
                    queries.extend(mk(Vec::new(), suppress));
                }
                Some(set) => {
                    if matches!(version, Version::Mld1 | Version::Igmp2) {
                        continue;
                    }
                    let (hi, lo): (Vec<IpAddr>, Vec<IpAddr>) =
                        set.iter().filter(|s| g.sources.contains_key(s)).partition(
                            |s| matches!(g.sources.get(s), Some(Some(t)) if *t > now + llqt),
                        );
                    if !hi.is_empty() {
                        queries.extend(mk(hi, true));
                    }
                    if !lo.is_empty() {
                        queries.extend(mk(lo, false));
                    }
                }
            }
            for query in queries {
                out.push(Action::SendQuery { to: p.group, query });
            }
        }
        pending.retain(|p| p.left > 0);
        self.pending = pending;
    }

    /// The addresses our streams can come from: ours without loopback and, when there is
    /// anything else, without link-local ones (a group of wider scope gets a source of
    /// wider scope, RFC 6724 §5 rule 2).
    fn source_candidates(&self) -> Vec<IpAddr> {
        let usable: Vec<IpAddr> = self
            .ours
            .iter()
            .filter(|a| a.is_ipv6() == self.mld() && !a.is_loopback() && !a.is_unspecified())
            .copied()
            .collect();
        let wide: Vec<IpAddr> = usable
            .iter()
            .filter(|a| match a {
                IpAddr::V6(a) => !a.is_unicast_link_local(),
                IpAddr::V4(a) => !a.is_link_local(),
            })
            .copied()
            .collect();
        if wide.is_empty() { usable } else { wide }
    }

    fn computes_wanted(sources: &[IpAddr], g: &Group) -> bool {
        if g.is_empty() {
            return false;
        }
        if sources.is_empty() {
            // Without addresses nothing can be checked: any-source listeners want us.
            return g.mode == FilterMode::Exclude;
        }
        sources.iter().any(|s| g.forwards(s))
    }

    /// Groups whose wanted flag no longer matches their state, with the new value.
    fn wanted_changes(&self) -> Vec<(IpAddr, bool)> {
        let sources = self.source_candidates();
        self.groups
            .iter()
            .filter_map(|(a, g)| {
                let now = Self::computes_wanted(&sources, g);
                (now != g.wanted).then_some((*a, now))
            })
            .collect()
    }

    fn apply_wanted(&mut self, group: IpAddr, want: bool, out: &mut Vec<Action>, why: Why) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.wanted = want;
            if want {
                g.leaving = false;
            }
            out.push(Action::Wanted {
                group,
                wanted: want,
                why,
            });
        }
    }

    fn update_wanted(&mut self, out: &mut Vec<Action>, why: Why) {
        for (a, want) in self.wanted_changes() {
            self.apply_wanted(a, want, out, why.clone());
        }
    }

    fn report_querier(&mut self, out: &mut Vec<Action>) {
        let now = if self.we_query() {
            (self.me, true)
        } else {
            (self.other.map(|o| o.0), false)
        };
        if now != self.reported_querier {
            self.reported_querier = now;
            out.push(Action::QuerierChanged {
                querier: now.0,
                we_query: now.1,
            });
        }
    }

    /// Groups some listener here wants from one of our addresses.
    pub fn wanted_groups(&self) -> Vec<IpAddr> {
        self.groups
            .iter()
            .filter(|(_, g)| g.wanted)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn status(&self, now: Instant) -> MembershipStatus {
        MembershipStatus {
            family: self.family,
            mode: self.cfg.querier,
            we_query: self.we_query(),
            querier: if self.we_query() {
                self.me
            } else {
                self.other.map(|o| o.0)
            },
            address: self.me,
            other_querier_expires_ms: left(now, self.other.map(|o| o.1)),
            next_general_query_ms: if self.we_query() {
                left(now, self.next_general)
            } else {
                None
            },
            robustness: self.rv,
            query_interval_ms: ms(self.qi),
            querier_version: self.querier_version(),
            older_querier: self.older_querier(),
            older_querier_expires_ms: left(
                now,
                match (self.older_v1, self.older_v2) {
                    (Some((a, _)), Some((b, _))) => Some(a.max(b)),
                    (a, b) => a.or(b).map(|o| o.0),
                },
            ),
            groups: self
                .groups
                .iter()
                .map(|(a, g)| GroupStatus {
                    group: *a,
                    mode: g.mode,
                    compat: self.compat(a).unwrap_or(if self.mld() {
                        Version::Mld2
                    } else {
                        Version::Igmp3
                    }),
                    timer_ms: left(now, g.timer),
                    sources: g
                        .sources
                        .iter()
                        .map(|(s, t)| SourceStatus {
                            source: *s,
                            timer_ms: left(now, *t),
                        })
                        .collect(),
                    wanted: g.wanted,
                    last_reporter: g.last_reporter,
                })
                .collect(),
        }
    }
}

/// The older of two versions of the same protocol.
fn oldest(a: Version, b: Version) -> Version {
    let age = |v: Version| match v {
        Version::Mld1 | Version::Igmp1 => 0,
        Version::Igmp2 => 1,
        Version::Mld2 | Version::Igmp3 => 2,
    };
    if age(b) < age(a) { b } else { a }
}

/// A snapshot for `status` (timers as milliseconds left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipStatus {
    pub family: Family,
    pub mode: QuerierMode,
    pub we_query: bool,
    pub querier: Option<IpAddr>,
    /// The address we query from.
    pub address: Option<IpAddr>,
    pub other_querier_expires_ms: Option<u64>,
    pub next_general_query_ms: Option<u64>,
    pub robustness: u8,
    pub query_interval_ms: u64,
    /// The version our queries use ([`Membership::querier_version`]).
    pub querier_version: Version,
    /// The older querier heard last, and how long its mode lasts still.
    pub older_querier: Option<IpAddr>,
    pub older_querier_expires_ms: Option<u64>,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub group: IpAddr,
    pub mode: FilterMode,
    /// The oldest protocol version heard for it recently (from its hosts or a querier).
    pub compat: Version,
    pub timer_ms: Option<u64>,
    pub sources: Vec<SourceStatus>,
    pub wanted: bool,
    pub last_reporter: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    pub source: IpAddr,
    /// None: excluded (EXCLUDE mode's Y list).
    pub timer_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const G: &str = "ff3e:40:fd00::8000:1";
    const ME: &str = "fe80::10";
    const HOST: &str = "fe80::a";
    const HOST2: &str = "fe80::b";
    const OUR_SRC: &str = "2001:db8::1";
    const OTHER_SRC: &str = "2001:db8::99";

    fn setup(family: Family, cfg: QuerierConfig) -> (Membership, Instant) {
        let t0 = Instant::now();
        let never = cfg.querier == QuerierMode::Never;
        let mut m = Membership::new(family, cfg);
        let acts = match family {
            Family::Ipv6 => m.set_addresses(t0, Some(ip(ME)), [ip(ME), ip(OUR_SRC)]),
            Family::Ipv4 => m.set_addresses(t0, Some(ip("10.0.0.10")), [ip("10.0.0.10")]),
        };
        assert!(
            never
                || acts.contains(&Action::QuerierChanged {
                    querier: Some(if family == Family::Ipv6 {
                        ip(ME)
                    } else {
                        ip("10.0.0.10")
                    }),
                    we_query: true
                })
        );
        (m, t0)
    }

    fn v6() -> (Membership, Instant) {
        setup(Family::Ipv6, QuerierConfig::default())
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn rec(kind: RecordType, group: &str, sources: &[&str]) -> Message {
        let group = ip(group);
        Message::Report {
            version: if group.is_ipv6() {
                Version::Mld2
            } else {
                Version::Igmp3
            },
            records: vec![GroupRecord {
                kind,
                group,
                sources: sources.iter().map(|s| ip(s)).collect(),
            }],
        }
    }

    /// Runs every timer up to and including `to`, collecting the actions.
    fn run(m: &mut Membership, to: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(d) = m.next_deadline() {
            if d > to {
                break;
            }
            out.extend(m.on_timer(d));
        }
        out
    }

    fn wanted(acts: &[Action]) -> Vec<(IpAddr, bool)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Wanted { group, wanted, .. } => Some((*group, *wanted)),
                _ => None,
            })
            .collect()
    }

    fn why(acts: &[Action]) -> Vec<Why> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Wanted { why, .. } => Some(why.clone()),
                _ => None,
            })
            .collect()
    }

    fn queries(acts: &[Action]) -> Vec<(IpAddr, Query)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::SendQuery { to, query } => Some((*to, query.clone())),
                _ => None,
            })
            .collect()
    }

    fn general(acts: &[Action]) -> usize {
        queries(acts).iter().filter(|(_, q)| q.is_general()).count()
    }

    fn join(m: &mut Membership, t: Instant) -> Vec<Action> {
        m.on_packet(t, &rec(RecordType::ToExclude, G, &[]), ip(HOST))
    }

    #[test]
    fn defaults_are_the_rfc_values() {
        let c = QuerierConfig::default();
        assert_eq!(c.startup_interval(), Duration::from_millis(31_250));
        assert_eq!(c.startup_count(), 2);
        assert_eq!(c.last_listener_count(), 2);
        assert_eq!(c.last_listener_time(), Duration::from_secs(2));
        let m = Membership::new(Family::Ipv6, c);
        assert_eq!(m.listener_interval(), Duration::from_secs(260));
        assert_eq!(m.other_querier_interval(), Duration::from_secs(255));
    }

    #[test]
    fn startup_queries_then_every_query_interval() {
        let (mut m, t0) = v6();
        let a = run(&mut m, t0);
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, ip("ff02::1"));
        assert_eq!(q[0].1.version, Version::Mld2);
        assert_eq!(q[0].1.max_resp_code, 10_000);
        assert_eq!(q[0].1.qrv, 2);
        assert_eq!(q[0].1.qqic, 125);
        assert_eq!(m.next_deadline(), Some(at(t0, 31_250)));
        assert_eq!(general(&run(&mut m, at(t0, 31_250))), 1);
        assert_eq!(m.next_deadline(), Some(at(t0, 156_250)));
        assert_eq!(general(&run(&mut m, at(t0, 156_249))), 0);
        assert_eq!(general(&run(&mut m, at(t0, 156_250))), 1);
        assert_eq!(general(&run(&mut m, at(t0, 156_250 + 125_000))), 1);
    }

    #[test]
    fn no_queries_without_an_address() {
        let t0 = Instant::now();
        let mut m = Membership::new(Family::Ipv6, QuerierConfig::default());
        assert_eq!(m.next_deadline(), None);
        assert!(m.on_timer(t0).is_empty());
        let a = m.set_addresses(at(t0, 5), Some(ip(ME)), [ip(ME)]);
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip(ME)),
            we_query: true
        }));
        assert_eq!(general(&run(&mut m, at(t0, 5))), 1);
    }

    #[test]
    fn asm_join_is_wanted_once() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        let a = join(&mut m, at(t0, 10));
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        assert_eq!(
            why(&a),
            vec![Why::Report {
                host: ip(HOST),
                version: Version::Mld2
            }]
        );
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Heard {
                what: Heard::Join,
                ..
            }
        )));
        // The kernel sends every change twice: the repeat changes nothing.
        assert!(wanted(&join(&mut m, at(t0, 500))).is_empty());
        assert_eq!(m.wanted_groups(), vec![ip(G)]);
    }

    #[test]
    fn leave_sends_last_listener_queries_then_stops() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        join(&mut m, at(t0, 10));
        let a = m.on_packet(at(t0, 1000), &rec(RecordType::ToInclude, G, &[]), ip(HOST));
        assert!(wanted(&a).is_empty());
        assert!(a.iter().any(|a| matches!(
            a,
            Action::Heard {
                what: Heard::Leave,
                ..
            }
        )));
        let q = queries(&a);
        assert_eq!(q.len(), 1, "{a:?}");
        assert_eq!(q[0].0, ip(G));
        assert_eq!(q[0].1.group, ip(G));
        assert_eq!(q[0].1.max_resp(), Duration::from_secs(1));
        assert!(!q[0].1.suppress);
        let a = run(&mut m, at(t0, 2999));
        assert_eq!(queries(&a).len(), 1, "the second last-listener query");
        assert!(wanted(&a).is_empty());
        let a = run(&mut m, at(t0, 3000));
        assert_eq!(wanted(&a), vec![(ip(G), false)]);
        assert_eq!(why(&a), vec![Why::LastListenerGone]);
        assert!(m.status(at(t0, 3000)).groups.is_empty());
    }

    #[test]
    fn an_answer_to_the_last_listener_query_keeps_the_group() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        join(&mut m, at(t0, 10));
        m.on_packet(at(t0, 1000), &rec(RecordType::ToInclude, G, &[]), ip(HOST));
        let a = m.on_packet(at(t0, 1300), &rec(RecordType::IsExclude, G, &[]), ip(HOST2));
        assert!(wanted(&a).is_empty());
        let a = run(&mut m, at(t0, 2000));
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert!(q[0].1.suppress, "the timer was raised: S flag set");
        assert!(wanted(&run(&mut m, at(t0, 10_000))).is_empty());
        assert_eq!(m.wanted_groups(), vec![ip(G)]);
    }

    #[test]
    fn silent_listener_times_out_after_the_listener_interval() {
        let (mut m, t0) = v6();
        join(&mut m, t0);
        assert!(wanted(&run(&mut m, at(t0, 259_999))).is_empty());
        let a = run(&mut m, at(t0, 260_000));
        assert_eq!(wanted(&a), vec![(ip(G), false)]);
        assert_eq!(why(&a), vec![Why::Timeout]);
    }

    #[test]
    fn answers_to_general_queries_keep_it() {
        let (mut m, t0) = v6();
        join(&mut m, t0);
        for s in 1..6u64 {
            run(&mut m, at(t0, s * 125_000));
            m.on_packet(
                at(t0, s * 125_000 + 3000),
                &rec(RecordType::IsExclude, G, &[]),
                ip(HOST),
            );
        }
        assert!(wanted(&run(&mut m, at(t0, 700_000))).is_empty());
    }

    #[test]
    fn include_of_another_source_is_not_wanted() {
        let (mut m, t0) = v6();
        let a = m.on_packet(t0, &rec(RecordType::AllowNew, G, &[OTHER_SRC]), ip(HOST));
        assert!(wanted(&a).is_empty());
        let st = m.status(t0);
        assert_eq!(st.groups.len(), 1);
        assert_eq!(st.groups[0].mode, FilterMode::Include);
        assert_eq!(st.groups[0].sources[0].source, ip(OTHER_SRC));
        assert!(!st.groups[0].wanted);
    }

    #[test]
    fn include_of_our_source_is_wanted_until_blocked() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        let a = m.on_packet(t0, &rec(RecordType::AllowNew, G, &[OUR_SRC]), ip(HOST));
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        let a = m.on_packet(
            at(t0, 100),
            &rec(RecordType::BlockOld, G, &[OUR_SRC]),
            ip(HOST),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(
            q[0].1.sources,
            vec![ip(OUR_SRC)],
            "a group-and-source query"
        );
        let a = run(&mut m, at(t0, 2100));
        assert_eq!(wanted(&a), vec![(ip(G), false)]);
        assert_eq!(why(&a), vec![Why::LastListenerGone]);
    }

    #[test]
    fn to_include_queries_the_sources_left_out() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        m.on_packet(
            t0,
            &rec(RecordType::AllowNew, G, &[OUR_SRC, OTHER_SRC]),
            ip(HOST),
        );
        let a = m.on_packet(
            at(t0, 10),
            &rec(RecordType::ToInclude, G, &[OUR_SRC]),
            ip(HOST),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1.sources, vec![ip(OTHER_SRC)]);
    }

    #[test]
    fn exclude_of_our_source_is_not_wanted_but_another_hosts_asm_join_is() {
        let (mut m, t0) = v6();
        let a = m.on_packet(t0, &rec(RecordType::ToExclude, G, &[OUR_SRC]), ip(HOST));
        assert!(wanted(&a).is_empty());
        let a = m.on_packet(at(t0, 10), &rec(RecordType::ToExclude, G, &[]), ip(HOST2));
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
    }

    #[test]
    fn exclude_of_other_source_is_wanted() {
        let (mut m, t0) = v6();
        let a = m.on_packet(t0, &rec(RecordType::ToExclude, G, &[OTHER_SRC]), ip(HOST));
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
    }

    #[test]
    fn block_in_exclude_mode_queries_and_expires_the_source_into_the_exclude_list() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        join(&mut m, t0);
        let a = m.on_packet(
            at(t0, 10),
            &rec(RecordType::BlockOld, G, &[OUR_SRC]),
            ip(HOST),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1.sources, vec![ip(OUR_SRC)]);
        let a = run(&mut m, at(t0, 2010));
        assert_eq!(wanted(&a), vec![(ip(G), false)]);
        let st = m.status(at(t0, 2010));
        assert_eq!(st.groups[0].mode, FilterMode::Exclude);
        assert_eq!(st.groups[0].sources[0].timer_ms, None);
    }

    #[test]
    fn our_addresses_changing_re_evaluates() {
        let (mut m, t0) = v6();
        m.on_packet(t0, &rec(RecordType::AllowNew, G, &[OTHER_SRC]), ip(HOST));
        let a = m.set_addresses(at(t0, 5), Some(ip(ME)), [ip(ME), ip(OTHER_SRC)]);
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        assert_eq!(why(&a), vec![Why::OurAddresses]);
    }

    #[test]
    fn own_and_off_link_packets_are_ignored() {
        let (mut m, t0) = v6();
        assert!(join_from(&mut m, t0, ME).is_empty());
        assert!(join_from(&mut m, t0, OUR_SRC).is_empty());
        assert!(
            join_from(&mut m, t0, "2001:db8::7").is_empty(),
            "not link-local"
        );
        assert!(join_from(&mut m, t0, "::").is_empty());
        let a = m.on_packet(t0, &rec(RecordType::ToExclude, "ff02::fb", &[]), ip(HOST));
        assert!(a.is_empty(), "link-scope groups are not ours to track");
        assert!(m.status(t0).groups.is_empty());
    }

    fn join_from(m: &mut Membership, t: Instant, from: &str) -> Vec<Action> {
        m.on_packet(t, &rec(RecordType::ToExclude, G, &[]), ip(from))
    }

    #[test]
    fn mldv1_host_puts_the_group_in_v1_mode() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        let a = m.on_packet(
            t0,
            &Message::OldReport {
                version: Version::Mld1,
                group: ip(G),
            },
            ip(HOST),
        );
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        assert_eq!(m.status(t0).groups[0].compat, Version::Mld1);
        // BLOCK is ignored in v1 mode.
        let a = m.on_packet(
            at(t0, 5),
            &rec(RecordType::BlockOld, G, &[OUR_SRC]),
            ip(HOST2),
        );
        assert!(queries(&a).is_empty());
        let a = m.on_packet(
            at(t0, 10),
            &Message::Leave {
                version: Version::Mld1,
                group: ip(G),
            },
            ip(HOST),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1.version, Version::Mld1);
        assert_eq!(Message::Query(q[0].1.clone()).to_mld().len(), 24);
        assert_eq!(wanted(&run(&mut m, at(t0, 2010))), vec![(ip(G), false)]);
    }

    #[test]
    fn v1_mode_ends_after_the_older_host_interval() {
        let (mut m, t0) = v6();
        m.on_packet(
            t0,
            &Message::OldReport {
                version: Version::Mld1,
                group: ip(G),
            },
            ip(HOST),
        );
        m.on_packet(
            at(t0, 200_000),
            &rec(RecordType::IsExclude, G, &[]),
            ip(HOST2),
        );
        run(&mut m, at(t0, 260_001));
        assert_eq!(m.status(at(t0, 260_001)).groups[0].compat, Version::Mld2);
    }

    const G4: &str = "239.1.2.3";

    fn v4() -> (Membership, Instant) {
        setup(Family::Ipv4, QuerierConfig::default())
    }

    #[test]
    fn igmp_general_query_is_v3_to_all_hosts() {
        let (mut m, t0) = v4();
        let q = queries(&run(&mut m, t0));
        assert_eq!(q[0].0, ip("224.0.0.1"));
        assert_eq!(q[0].1.version, Version::Igmp3);
        assert_eq!(q[0].1.max_resp_code, 100);
    }

    #[test]
    fn igmpv2_join_and_leave() {
        let (mut m, t0) = v4();
        run(&mut m, t0);
        let g = ip(G4);
        let a = m.on_packet(
            t0,
            &Message::OldReport {
                version: Version::Igmp2,
                group: g,
            },
            ip("10.0.0.5"),
        );
        assert_eq!(wanted(&a), vec![(g, true)]);
        assert_eq!(m.status(t0).groups[0].compat, Version::Igmp2);
        let a = m.on_packet(
            at(t0, 10),
            &Message::Leave {
                version: Version::Igmp2,
                group: g,
            },
            ip("10.0.0.5"),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].1.version, Version::Igmp2);
        assert_eq!(q[0].1.max_resp_code, 10);
        assert_eq!(Message::Query(q[0].1.clone()).to_igmp().len(), 8);
        assert_eq!(wanted(&run(&mut m, at(t0, 2010))), vec![(g, false)]);
    }

    #[test]
    fn igmpv1_mode_ignores_leaves() {
        let (mut m, t0) = v4();
        let g = ip(G4);
        m.on_packet(
            t0,
            &Message::OldReport {
                version: Version::Igmp1,
                group: g,
            },
            ip("10.0.0.5"),
        );
        let a = m.on_packet(
            at(t0, 10),
            &Message::Leave {
                version: Version::Igmp2,
                group: g,
            },
            ip("10.0.0.6"),
        );
        assert!(a.is_empty());
        assert!(wanted(&run(&mut m, at(t0, 259_999))).is_empty());
        assert_eq!(wanted(&run(&mut m, at(t0, 260_000))), vec![(g, false)]);
    }

    #[test]
    fn igmpv3_ssm_join_of_our_address() {
        let (mut m, t0) = v4();
        let a = m.on_packet(
            t0,
            &rec(RecordType::AllowNew, G4, &["10.0.0.10"]),
            ip("10.0.0.5"),
        );
        assert_eq!(wanted(&a), vec![(ip(G4), true)]);
        let a = m.on_packet(
            t0,
            &rec(RecordType::AllowNew, "239.9.9.9", &["10.0.0.99"]),
            ip("10.0.0.5"),
        );
        assert!(wanted(&a).is_empty());
        assert!(
            m.on_packet(
                t0,
                &rec(RecordType::ToExclude, "224.0.0.251", &[]),
                ip("10.0.0.5")
            )
            .is_empty()
        );
    }

    fn query_from(m: &mut Membership, t: Instant, from: &str, qrv: u8, qi: u64) -> Vec<Action> {
        let q = Query::general(
            Version::Mld2,
            Duration::from_secs(10),
            qrv,
            Duration::from_secs(qi),
        );
        m.on_packet(t, &Message::Query(q), ip(from))
    }

    #[test]
    fn a_lower_querier_takes_over_and_we_resume_when_it_goes_silent() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        let a = query_from(&mut m, at(t0, 1000), "fe80::2", 2, 125);
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip("fe80::2")),
            we_query: false
        }));
        assert!(!m.status(at(t0, 1000)).we_query);
        // 255 s of other querier present: no general query from us.
        assert_eq!(general(&run(&mut m, at(t0, 255_999))), 0);
        let a = run(&mut m, at(t0, 256_000));
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip(ME)),
            we_query: true
        }));
        assert_eq!(general(&a), 1);
    }

    #[test]
    fn a_higher_querier_is_ignored() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        let a = query_from(&mut m, at(t0, 1000), "fe80::99", 2, 125);
        assert!(a.is_empty());
        assert!(m.we_query());
        assert_eq!(general(&run(&mut m, at(t0, 31_250))), 1);
    }

    #[test]
    fn only_the_current_querier_or_a_better_one_restarts_the_other_querier_timer() {
        let (mut m, t0) = v6();
        query_from(&mut m, t0, "fe80::2", 2, 125);
        // fe80::5 is better than us but worse than fe80::2: it keeps nothing alive.
        for s in 1..5u64 {
            query_from(&mut m, at(t0, s * 60_000), "fe80::5", 2, 125);
        }
        let a = run(&mut m, at(t0, 255_000));
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip(ME)),
            we_query: true
        }));
        // A better one replaces the current querier.
        let a = query_from(&mut m, at(t0, 256_000), "fe80::1", 2, 125);
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip("fe80::1")),
            we_query: false
        }));
    }

    #[test]
    fn pending_last_listener_queries_are_sent_while_stepping_down() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        join(&mut m, t0);
        let a = m.on_packet(at(t0, 100), &rec(RecordType::ToInclude, G, &[]), ip(HOST));
        assert_eq!(queries(&a).len(), 1);
        query_from(&mut m, at(t0, 200), "fe80::2", 2, 125);
        let a = run(&mut m, at(t0, 1100));
        assert_eq!(queries(&a).len(), 1, "the second query still goes out");
        assert_eq!(wanted(&run(&mut m, at(t0, 2100))), vec![(ip(G), false)]);
    }

    #[test]
    fn non_querier_waits_for_the_queriers_specific_query() {
        let (mut m, t0) = v6();
        query_from(&mut m, t0, "fe80::2", 2, 125);
        join(&mut m, t0);
        let a = m.on_packet(at(t0, 100), &rec(RecordType::ToInclude, G, &[]), ip(HOST));
        assert!(queries(&a).is_empty(), "only the querier queries");
        assert!(wanted(&run(&mut m, at(t0, 10_000))).is_empty());
        let gsq = Query::specific(
            Version::Mld2,
            ip(G),
            vec![],
            false,
            Duration::from_secs(1),
            2,
            Duration::from_secs(125),
        );
        m.on_packet(at(t0, 10_000), &Message::Query(gsq), ip("fe80::2"));
        assert_eq!(wanted(&run(&mut m, at(t0, 12_000))), vec![(ip(G), false)]);
    }

    #[test]
    fn querier_never_only_listens() {
        let (mut m, t0) = setup(
            Family::Ipv6,
            QuerierConfig {
                querier: QuerierMode::Never,
                ..QuerierConfig::default()
            },
        );
        assert!(queries(&run(&mut m, at(t0, 1_000_000))).is_empty());
        let a = join(&mut m, at(t0, 1_000_000));
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        let a = m.on_packet(
            at(t0, 1_000_100),
            &rec(RecordType::ToInclude, G, &[]),
            ip(HOST),
        );
        assert!(queries(&a).is_empty());
        // A querier heard is shown, even a worse one.
        let a = query_from(&mut m, at(t0, 1_000_200), "fe80::99", 2, 125);
        assert!(a.contains(&Action::QuerierChanged {
            querier: Some(ip("fe80::99")),
            we_query: false
        }));
    }

    #[test]
    fn qrv_and_qqi_of_the_querier_are_adopted() {
        let (mut m, t0) = v6();
        query_from(&mut m, t0, "fe80::2", 3, 60);
        let st = m.status(t0);
        assert_eq!(st.robustness, 3);
        assert_eq!(st.query_interval_ms, 60_000);
        // Listener interval now 3 × 60 + 10 = 190 s.
        join(&mut m, t0);
        query_from(&mut m, at(t0, 100_000), "fe80::2", 3, 60);
        query_from(&mut m, at(t0, 180_000), "fe80::2", 3, 60);
        assert_eq!(wanted(&run(&mut m, at(t0, 190_000))), vec![(ip(G), false)]);
    }

    #[test]
    fn long_intervals_use_the_exponential_codes() {
        let (mut m, t0) = setup(
            Family::Ipv6,
            QuerierConfig {
                query_interval: Duration::from_secs(300),
                query_response_interval: Duration::from_secs(40),
                ..QuerierConfig::default()
            },
        );
        let q = queries(&run(&mut m, t0));
        let q = &q[0].1;
        assert!(q.qqic >= 0x80);
        assert!(q.max_resp_code >= 0x8000);
        assert!(q.qqi().unwrap() <= Duration::from_secs(300));
        assert!(q.max_resp() <= Duration::from_secs(40));
        assert!(q.max_resp() > Duration::from_millis(39_900));
    }

    #[test]
    fn short_test_timers() {
        let (mut m, t0) = setup(
            Family::Ipv6,
            QuerierConfig {
                query_interval: Duration::from_secs(2),
                query_response_interval: Duration::from_secs(1),
                last_listener_interval: Duration::from_millis(200),
                ..QuerierConfig::default()
            },
        );
        run(&mut m, t0);
        assert_eq!(m.next_deadline(), Some(at(t0, 500)));
        join(&mut m, t0);
        m.on_packet(at(t0, 10), &rec(RecordType::ToInclude, G, &[]), ip(HOST));
        assert_eq!(wanted(&run(&mut m, at(t0, 410))), vec![(ip(G), false)]);
    }

    mod histories {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Packet {
                host: u8,
                msg: Message,
            },
            Query {
                from: u8,
                group: Option<u8>,
                sources: Vec<u8>,
            },
            Timer,
            Addresses {
                with_other: bool,
            },
            Wait(u32),
        }

        fn group(i: u8) -> IpAddr {
            IpAddr::V6(Ipv6Addr::new(
                0xff3e,
                0x40,
                0xfd00,
                0,
                0,
                0,
                0x8000,
                u16::from(i % 3),
            ))
        }
        fn source(i: u8) -> IpAddr {
            // 0 is ours, the others are not.
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                1 + u16::from(i % 3) * 0x98,
            ))
        }
        fn host(i: u8) -> IpAddr {
            IpAddr::V6(Ipv6Addr::new(
                0xfe80,
                0,
                0,
                0,
                0,
                0,
                0,
                2 + u16::from(i % 30),
            ))
        }

        fn op() -> impl Strategy<Value = Op> {
            let kind = (1u8..=6).prop_map(|k| match k {
                1 => RecordType::IsInclude,
                2 => RecordType::IsExclude,
                3 => RecordType::ToInclude,
                4 => RecordType::ToExclude,
                5 => RecordType::AllowNew,
                _ => RecordType::BlockOld,
            });
            let record = (kind, any::<u8>(), prop::collection::vec(any::<u8>(), 0..3)).prop_map(
                |(kind, g, s)| GroupRecord {
                    kind,
                    group: group(g),
                    sources: s.into_iter().map(source).collect(),
                },
            );
            prop_oneof![
                (any::<u8>(), prop::collection::vec(record, 1..3)).prop_map(|(h, records)| {
                    Op::Packet {
                        host: h,
                        msg: Message::Report {
                            version: Version::Mld2,
                            records,
                        },
                    }
                }),
                (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(h, g, leave)| Op::Packet {
                    host: h,
                    msg: if leave {
                        Message::Leave {
                            version: Version::Mld1,
                            group: group(g),
                        }
                    } else {
                        Message::OldReport {
                            version: Version::Mld1,
                            group: group(g),
                        }
                    },
                }),
                (
                    any::<u8>(),
                    prop::option::of(any::<u8>()),
                    prop::collection::vec(any::<u8>(), 0..2)
                )
                    .prop_map(|(from, group, sources)| Op::Query {
                        from,
                        group,
                        sources
                    }),
                Just(Op::Timer),
                any::<bool>().prop_map(|with_other| Op::Addresses { with_other }),
                (0u32..3_000).prop_map(Op::Wait),
            ]
        }

        proptest! {
            /// Any sequence of messages and timers: no panic, a timer call never leaves a
            /// deadline in the past (the edge would spin), and the Wanted actions add up to
            /// the groups the machine says are wanted.
            #[test]
            fn random_histories_keep_the_invariants(ops in prop::collection::vec(op(), 1..60)) {
                let cfg = QuerierConfig {
                    query_interval: Duration::from_secs(2),
                    query_response_interval: Duration::from_secs(1),
                    last_listener_interval: Duration::from_millis(200),
                    ..QuerierConfig::default()
                };
                let t0 = Instant::now();
                let mut now = t0;
                let mut m = Membership::new(Family::Ipv6, cfg);
                let mut wanted: BTreeSet<IpAddr> = BTreeSet::new();
                let mut acts = m.set_addresses(now, Some(ip(ME)), [ip(ME), source(0)]);
                for op in ops {
                    for a in acts.drain(..) {
                        if let Action::Wanted { group, wanted: w, .. } = a {
                            if w { wanted.insert(group); } else { wanted.remove(&group); }
                        }
                    }
                    acts = match op {
                        Op::Packet { host: h, msg } => m.on_packet(now, &msg, host(h)),
                        Op::Query { from, group: g, sources } => {
                            let q = Query::specific(
                                Version::Mld2,
                                g.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), group),
                                sources.into_iter().map(source).collect(),
                                false,
                                Duration::from_secs(1),
                                2,
                                Duration::from_secs(2),
                            );
                            m.on_packet(now, &Message::Query(q), host(from))
                        }
                        Op::Timer => {
                            let a = m.on_timer(now);
                            if let Some(d) = m.next_deadline() {
                                prop_assert!(d > now, "deadline {:?} not after now", d - t0);
                            }
                            a
                        }
                        Op::Addresses { with_other } => {
                            let mut ours = vec![ip(ME), source(0)];
                            if with_other { ours.push(source(1)); }
                            m.set_addresses(now, Some(ip(ME)), ours)
                        }
                        Op::Wait(ms) => {
                            now += Duration::from_millis(u64::from(ms));
                            let mut a = Vec::new();
                            while let Some(d) = m.next_deadline() {
                                if d > now { break; }
                                a.extend(m.on_timer(d));
                            }
                            a
                        }
                    };
                }
                for a in acts.drain(..) {
                    if let Action::Wanted { group, wanted: w, .. } = a {
                        if w { wanted.insert(group); } else { wanted.remove(&group); }
                    }
                }
                let said: BTreeSet<IpAddr> = m.wanted_groups().into_iter().collect();
                prop_assert_eq!(wanted, said);
                let _ = m.status(now);
            }
        }
    }

    #[test]
    fn a_join_storm_of_a_thousand_groups() {
        let (mut m, t0) = v6();
        let records: Vec<GroupRecord> = (0..1000u16)
            .map(|i| GroupRecord {
                kind: RecordType::ToExclude,
                group: IpAddr::V6(Ipv6Addr::new(0xff3e, 0x40, 0xfd00, 0, 0, 0, 0x8000, i)),
                sources: vec![],
            })
            .collect();
        let msg = Message::Report {
            version: Version::Mld2,
            records,
        };
        let a = m.on_packet(t0, &msg, ip(HOST));
        assert_eq!(wanted(&a).len(), 1000);
        assert_eq!(m.wanted_groups().len(), 1000);
        let a = run(&mut m, at(t0, 260_000));
        assert_eq!(wanted(&a).iter().filter(|(_, w)| !w).count(), 1000);
    }

    fn old_query(m: &mut Membership, t: Instant, version: Version, from: &str) -> Vec<Action> {
        let q = Query::general(
            version,
            Duration::from_secs(10),
            2,
            Duration::from_secs(125),
        );
        m.on_packet(t, &Message::Query(q), ip(from))
    }

    fn general_versions(acts: &[Action]) -> Vec<Version> {
        queries(acts)
            .iter()
            .filter(|(_, q)| q.is_general())
            .map(|(_, q)| q.version)
            .collect()
    }

    #[test]
    fn an_mldv1_querier_makes_our_queries_mldv1_until_it_is_silent() {
        let (mut m, t0) = v6();
        assert_eq!(general_versions(&run(&mut m, t0)), vec![Version::Mld2]);
        // A v1 querier with a higher address: we still query, in its version.
        let a = old_query(&mut m, at(t0, 1000), Version::Mld1, "fe80::20");
        assert!(queries(&a).is_empty());
        assert!(m.we_query());
        assert_eq!(m.querier_version(), Version::Mld1);
        assert_eq!(m.older_querier(), Some(ip("fe80::20")));
        // 2 × 125 s + 10 s / 2.
        assert_eq!(m.older_querier_interval(), Duration::from_secs(255));
        let a = run(&mut m, at(t0, 31_250));
        assert_eq!(general_versions(&a), vec![Version::Mld1]);
        let q = &queries(&a)[0].1;
        assert_eq!(Message::Query(q.clone()).to_mld().len(), 24);
        assert_eq!(q.max_resp_code, 10_000);
        let st = m.status(at(t0, 31_250));
        assert_eq!(st.querier_version, Version::Mld1);
        assert_eq!(st.older_querier, Some(ip("fe80::20")));
        assert_eq!(st.older_querier_expires_ms, Some(256_000 - 31_250));
        // Each v1 query restarts the timeout; 255 s after the last one, MLDv2 again.
        old_query(&mut m, at(t0, 100_000), Version::Mld1, "fe80::20");
        run(&mut m, at(t0, 354_999));
        assert_eq!(m.querier_version(), Version::Mld1);
        run(&mut m, at(t0, 355_000));
        assert_eq!(m.querier_version(), Version::Mld2);
        assert_eq!(m.older_querier(), None);
        assert_eq!(
            general_versions(&run(&mut m, at(t0, 31_250 + 3 * 125_000))),
            vec![Version::Mld2]
        );
    }

    #[test]
    fn under_an_mldv1_querier_groups_are_handled_as_v1() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        old_query(&mut m, t0, Version::Mld1, "fe80::20");
        // An MLDv2 host not yet fallen back: its join counts, without source lists.
        let a = m.on_packet(
            at(t0, 10),
            &rec(RecordType::ToExclude, G, &[OUR_SRC]),
            ip(HOST),
        );
        assert_eq!(wanted(&a), vec![(ip(G), true)]);
        assert!(
            queries(&a).is_empty(),
            "no source-specific query in v1 mode"
        );
        let g = &m.status(at(t0, 10)).groups[0];
        assert_eq!(g.compat, Version::Mld1);
        assert!(g.sources.is_empty(), "{g:?}");
        // BLOCK is ignored; a leave gets MLDv1 group-specific queries.
        assert!(
            m.on_packet(
                at(t0, 20),
                &rec(RecordType::BlockOld, G, &[OUR_SRC]),
                ip(HOST)
            )
            .iter()
            .all(|a| !matches!(a, Action::SendQuery { .. }))
        );
        let a = m.on_packet(
            at(t0, 30),
            &Message::Leave {
                version: Version::Mld1,
                group: ip(G),
            },
            ip(HOST),
        );
        let q = queries(&a);
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].0, q[0].1.version), (ip(G), Version::Mld1));
        assert_eq!(wanted(&run(&mut m, at(t0, 2030))), vec![(ip(G), false)]);
    }

    #[test]
    fn igmpv2_then_v1_queriers_and_back() {
        let (mut m, t0) = v4();
        assert_eq!(general_versions(&run(&mut m, t0)), vec![Version::Igmp3]);
        old_query(&mut m, at(t0, 1000), Version::Igmp2, "10.0.0.20");
        assert!(m.we_query());
        assert_eq!(m.querier_version(), Version::Igmp2);
        let a = run(&mut m, at(t0, 31_250));
        assert_eq!(general_versions(&a), vec![Version::Igmp2]);
        assert_eq!(Message::Query(queries(&a)[0].1.clone()).to_igmp().len(), 8);
        // An IGMPv1 querier too: v1 wins while it lasts; v1 queries say Max Resp Time 0.
        old_query(&mut m, at(t0, 40_000), Version::Igmp1, "10.0.0.30");
        assert_eq!(m.querier_version(), Version::Igmp1);
        let a = run(&mut m, at(t0, 156_250));
        assert_eq!(general_versions(&a), vec![Version::Igmp1]);
        assert_eq!(queries(&a)[0].1.max_resp_code, 0);
        // IGMPv1 mode: leaves are ignored.
        m.on_packet(
            at(t0, 156_300),
            &Message::OldReport {
                version: Version::Igmp2,
                group: ip(G4),
            },
            ip("10.0.0.5"),
        );
        let a = m.on_packet(
            at(t0, 156_400),
            &Message::Leave {
                version: Version::Igmp2,
                group: ip(G4),
            },
            ip("10.0.0.5"),
        );
        assert!(a.is_empty(), "{a:?}");
        // v1 ends 255 s after its query, v2 255 s after its own: then IGMPv3 again.
        old_query(&mut m, at(t0, 200_000), Version::Igmp2, "10.0.0.20");
        run(&mut m, at(t0, 294_999));
        assert_eq!(m.querier_version(), Version::Igmp1);
        run(&mut m, at(t0, 295_000));
        assert_eq!(m.querier_version(), Version::Igmp2);
        run(&mut m, at(t0, 454_999));
        assert_eq!(m.querier_version(), Version::Igmp2);
        run(&mut m, at(t0, 455_000));
        assert_eq!(m.querier_version(), Version::Igmp3);
    }

    #[test]
    fn a_querier_of_our_version_changes_no_version() {
        let (mut m, t0) = v6();
        run(&mut m, t0);
        query_from(&mut m, t0, "fe80::20", 2, 125);
        assert_eq!(m.querier_version(), Version::Mld2);
        assert_eq!(m.older_querier(), None);
        let (mut m, t0) = v4();
        old_query(&mut m, t0, Version::Igmp3, "10.0.0.20");
        assert_eq!(m.querier_version(), Version::Igmp3);
    }

    #[test]
    fn status_serializes() {
        let (mut m, t0) = v6();
        join(&mut m, t0);
        let j = serde_json::to_value(m.status(t0)).unwrap();
        assert_eq!(j["family"], "ipv6");
        assert_eq!(j["we_query"], true);
        assert_eq!(j["groups"][0]["mode"], "exclude");
        assert_eq!(j["groups"][0]["compat"], "mld2");
        assert_eq!(j["groups"][0]["timer_ms"], 260_000);
    }
}
