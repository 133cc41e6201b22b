//! The services' states, as a pure state machine after `src/supervisor/decide.rs`: joins,
//! leaves, source starts and exits, traffic and timers come in (with the time); what to
//! start, stop and where to relay goes out. No process, socket or clock here.
//!
//! A service is idle (nothing runs), starting (its source runs, no RTP yet), running,
//! lingering (no listener left; the source keeps running for `linger`), or failed (the
//! source died or stalled; it is started again after a backoff while listeners remain).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// First restart delay; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A source that ran this long before it died starts again from the first delay.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Idle,
    Starting,
    Running,
    Lingering,
    Failed,
}

/// Per-service settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub linger: Option<Duration>,
    pub warm: bool,
}

/// Where a listener is: an interface and the address family it joined with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Listener {
    pub iface: String,
    pub v4: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proc {
    None,
    /// Asked to start (or running).
    Up {
        since: Instant,
    },
    /// Asked to stop; its exit is still to come.
    Stopping,
}

#[derive(Debug, Clone)]
struct Svc {
    cfg: ServiceConfig,
    phase: Phase,
    listeners: BTreeSet<Listener>,
    proc: Proc,
    /// Last RTP seen (or the start, before the first packet): stall detection.
    last_traffic: Option<Instant>,
    linger_until: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    restarts: u32,
    /// Start it once the stopping source has exited.
    start_after_exit: bool,
}

impl Svc {
    fn wanted(&self) -> bool {
        !self.listeners.is_empty() || self.cfg.warm
    }
}

/// What comes in.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The headend starts: warm services start.
    Begin,
    /// Membership: does any listener on `iface` want this service's group?
    Wanted {
        number: u32,
        listener: Listener,
        wanted: bool,
    },
    /// The source could not be started.
    StartFailed { number: u32, error: String },
    /// The source process ended (asked to or not).
    Exited { number: u32, why: String },
    /// RTP from the source reached the relay (sent at most every few hundred ms).
    Traffic { number: u32 },
    /// A deadline of [`Services::next_deadline`] passed.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Start(u32),
    Stop(u32),
    /// Relay the service's stream out of exactly these (interface, family) pairs.
    Outputs(u32, Vec<Listener>),
    Log(String),
}

/// Every service of the headend, and the cap on running sources.
#[derive(Debug, Clone)]
pub struct Services {
    svcs: BTreeMap<u32, Svc>,
    max_sources: usize,
    stall: Duration,
    /// Services with listeners waiting for a free source slot, oldest first.
    waiting: VecDeque<u32>,
    /// Numbers joined that name no service: logged once each.
    unknown: BTreeSet<u32>,
    /// Joins refused by the cap since the last log line about it.
    capped: u64,
}

/// Status of one service, for `appliance status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub number: u32,
    pub name: String,
    pub state: Phase,
    pub listeners: Vec<Listener>,
    pub restarts: u32,
    pub warm: bool,
    pub waiting_for_slot: bool,
}

impl Services {
    pub fn new(max_sources: usize, stall: Duration) -> Services {
        Services {
            svcs: BTreeMap::new(),
            max_sources: max_sources.max(1),
            stall,
            waiting: VecDeque::new(),
            unknown: BTreeSet::new(),
            capped: 0,
        }
    }

    /// Adds (or reconfigures) a service. A new warm service starts at the next `Begin` or
    /// `Tick`.
    pub fn add(&mut self, number: u32, cfg: ServiceConfig) {
        self.unknown.remove(&number);
        if let Some(s) = self.svcs.get_mut(&number) {
            s.cfg = cfg;
            return;
        }
        self.svcs.insert(
            number,
            Svc {
                cfg,
                phase: Phase::Idle,
                listeners: BTreeSet::new(),
                proc: Proc::None,
                last_traffic: None,
                linger_until: None,
                retry_at: None,
                backoff: BACKOFF_FIRST,
                restarts: 0,
                start_after_exit: false,
            },
        );
    }

    /// Removes a service: its source is stopped.
    pub fn remove(&mut self, number: u32) -> Vec<Action> {
        let mut out = vec![];
        if let Some(s) = self.svcs.remove(&number) {
            if matches!(s.proc, Proc::Up { .. }) {
                out.push(Action::Stop(number));
            }
            if !s.listeners.is_empty() {
                out.push(Action::Outputs(number, vec![]));
            }
            self.waiting.retain(|n| *n != number);
        }
        out
    }

    pub fn contains(&self, number: u32) -> bool {
        self.svcs.contains_key(&number)
    }

    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.svcs.keys().copied()
    }

    pub fn phase(&self, number: u32) -> Option<Phase> {
        self.svcs.get(&number).map(|s| s.phase)
    }

    /// Sources started and not yet exited.
    pub fn running_sources(&self) -> usize {
        self.svcs.values().filter(|s| s.proc != Proc::None).count()
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.svcs
            .iter()
            .map(|(n, s)| ServiceStatus {
                number: *n,
                name: s.cfg.name.clone(),
                state: s.phase,
                listeners: s.listeners.iter().cloned().collect(),
                restarts: s.restarts,
                warm: s.cfg.warm,
                waiting_for_slot: self.waiting.contains(n),
            })
            .collect()
    }

    /// The earliest time a `Tick` is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.svcs
            .values()
            .flat_map(|s| {
                let stall = match (s.phase, s.last_traffic) {
                    (Phase::Starting | Phase::Running | Phase::Lingering, Some(t))
                        if matches!(s.proc, Proc::Up { .. }) =>
                    {
                        Some(t + self.stall)
                    }
                    _ => None,
                };
                [s.linger_until, s.retry_at, stall]
            })
            .flatten()
            .min()
    }

    /// Feeds one event; returns what to do.
    pub fn next(&mut self, now: Instant, ev: Event) -> Vec<Action> {
        let mut out = vec![];
        match ev {
            Event::Begin | Event::Tick => {}
            Event::Wanted {
                number,
                listener,
                wanted,
            } => self.wanted(now, number, listener, wanted, &mut out),
            Event::StartFailed { number, error } => {
                if let Some(s) = self.svcs.get_mut(&number) {
                    s.proc = Proc::None;
                    out.push(Action::Log(format!(
                        "service {number} {:?}: cannot start its source: {error}",
                        s.cfg.name
                    )));
                    fail(s, now, number, &mut out);
                }
            }
            Event::Exited { number, why } => self.exited(now, number, why, &mut out),
            Event::Traffic { number } => {
                if let Some(s) = self.svcs.get_mut(&number) {
                    if matches!(s.proc, Proc::Up { .. }) {
                        s.last_traffic = Some(now);
                    }
                    if s.phase == Phase::Starting {
                        s.phase = Phase::Running;
                    }
                }
            }
        }
        self.timers(now, &mut out);
        self.fill_slots(now, &mut out);
        out
    }

    fn wanted(
        &mut self,
        now: Instant,
        number: u32,
        listener: Listener,
        wanted: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.svcs.get_mut(&number) else {
            if wanted && self.unknown.insert(number) {
                out.push(Action::Log(format!(
                    "a listener on {} wants service {number}, which no service or directory \
                     entry has: ignored",
                    listener.iface
                )));
            }
            return;
        };
        let changed = if wanted {
            s.listeners.insert(listener)
        } else {
            s.listeners.remove(&listener)
        };
        if !changed {
            return;
        }
        out.push(Action::Outputs(
            number,
            s.listeners.iter().cloned().collect(),
        ));
        if wanted && s.listeners.len() == 1 {
            match s.phase {
                Phase::Lingering => {
                    s.linger_until = None;
                    s.phase = Phase::Running;
                    out.push(Action::Log(format!(
                        "service {number} {:?}: listened to again while lingering",
                        s.cfg.name
                    )));
                }
                Phase::Idle => {
                    if s.proc == Proc::Stopping {
                        s.start_after_exit = true;
                    } else if !self.waiting.contains(&number) {
                        self.waiting.push_back(number);
                    }
                }
                _ => {}
            }
        }
        if !wanted && s.listeners.is_empty() {
            self.last_left(now, number, out);
        }
    }

    /// The last listener left (or a warm service lost its warmth).
    fn last_left(&mut self, now: Instant, number: u32, out: &mut Vec<Action>) {
        self.waiting.retain(|n| *n != number);
        let Some(s) = self.svcs.get_mut(&number) else {
            return;
        };
        if s.cfg.warm {
            return;
        }
        s.start_after_exit = false;
        match (s.phase, s.cfg.linger) {
            (Phase::Starting | Phase::Running, Some(l)) if !l.is_zero() => {
                s.phase = Phase::Lingering;
                s.linger_until = Some(now + l);
                out.push(Action::Log(format!(
                    "service {number} {:?}: last listener left; lingering {}",
                    s.cfg.name,
                    humantime::format_duration(l)
                )));
            }
            (Phase::Idle | Phase::Lingering, _) => {}
            _ => {
                out.push(Action::Log(format!(
                    "service {number} {:?}: last listener left; stopping its source",
                    s.cfg.name
                )));
                stop(s, number, out);
            }
        }
    }

    fn exited(&mut self, now: Instant, number: u32, why: String, out: &mut Vec<Action>) {
        let Some(s) = self.svcs.get_mut(&number) else {
            return;
        };
        match s.proc {
            Proc::Stopping | Proc::None => {
                s.proc = Proc::None;
                if s.start_after_exit && s.wanted() {
                    s.start_after_exit = false;
                    self.waiting.push_back(number);
                }
            }
            Proc::Up { since } => {
                s.proc = Proc::None;
                if now.duration_since(since) >= BACKOFF_RESET {
                    s.backoff = BACKOFF_FIRST;
                }
                if s.phase == Phase::Lingering || !s.wanted() {
                    out.push(Action::Log(format!(
                        "service {number} {:?}: source ended ({why}); nobody listens",
                        s.cfg.name
                    )));
                    s.phase = Phase::Idle;
                    s.linger_until = None;
                } else {
                    out.push(Action::Log(format!(
                        "service {number} {:?}: source ended ({why})",
                        s.cfg.name
                    )));
                    fail(s, now, number, out);
                }
            }
        }
    }

    fn timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let stall = self.stall;
        let mut retry = vec![];
        for (&number, s) in self.svcs.iter_mut() {
            if s.linger_until.is_some_and(|t| t <= now) {
                s.linger_until = None;
                out.push(Action::Log(format!(
                    "service {number} {:?}: linger time over; stopping its source",
                    s.cfg.name
                )));
                stop(s, number, out);
                continue;
            }
            if s.retry_at.is_some_and(|t| t <= now) {
                s.retry_at = None;
                if s.wanted() {
                    retry.push(number);
                } else {
                    s.phase = Phase::Idle;
                }
                continue;
            }
            if matches!(s.proc, Proc::Up { .. })
                && matches!(s.phase, Phase::Starting | Phase::Running | Phase::Lingering)
                && s.last_traffic
                    .is_some_and(|t| now.duration_since(t) >= stall)
            {
                out.push(Action::Log(format!(
                    "service {number} {:?}: no RTP from its source for {}: restarting it",
                    s.cfg.name,
                    humantime::format_duration(stall)
                )));
                out.push(Action::Stop(number));
                s.proc = Proc::Stopping;
                s.last_traffic = None;
                if s.phase == Phase::Lingering {
                    s.phase = Phase::Idle;
                    s.linger_until = None;
                } else {
                    fail(s, now, number, out);
                }
            }
        }
        for n in retry {
            if !self.waiting.contains(&n) {
                self.waiting.push_back(n);
            }
        }
        // Warm services want their source whether or not anyone listens.
        for (&n, s) in &self.svcs {
            if s.cfg.warm
                && s.phase == Phase::Idle
                && s.proc == Proc::None
                && !self.waiting.contains(&n)
            {
                self.waiting.push_back(n);
            }
        }
    }

    /// Starts waiting services while the cap allows.
    fn fill_slots(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut running = self.running_sources();
        let mut kept = VecDeque::new();
        while let Some(n) = self.waiting.pop_front() {
            let Some(s) = self.svcs.get_mut(&n) else {
                continue;
            };
            if !s.wanted() {
                continue;
            }
            if s.proc == Proc::Stopping {
                s.start_after_exit = true;
                continue;
            }
            if matches!(s.proc, Proc::Up { .. }) {
                continue;
            }
            if running >= self.max_sources {
                kept.push_back(n);
                continue;
            }
            running += 1;
            s.proc = Proc::Up { since: now };
            s.phase = Phase::Starting;
            s.last_traffic = Some(now);
            out.push(Action::Log(format!(
                "service {n} {:?}: starting its source{}",
                s.cfg.name,
                if s.restarts > 0 {
                    format!(" (restart {})", s.restarts)
                } else {
                    String::new()
                }
            )));
            out.push(Action::Start(n));
        }
        if !kept.is_empty() {
            let newly = kept.iter().filter(|n| !self.waiting.contains(n)).count() as u64;
            self.capped += newly;
            if self.capped > 0 {
                out.push(Action::Log(format!(
                    "max_sources {} reached: {} service(s) with listeners wait for a source \
                     to stop",
                    self.max_sources,
                    kept.len()
                )));
                self.capped = 0;
            }
        }
        self.waiting = kept;
    }
}

/// The source is down while someone wants it: start again after the backoff.
fn fail(s: &mut Svc, now: Instant, number: u32, out: &mut Vec<Action>) {
    if !s.wanted() {
        s.phase = Phase::Idle;
        return;
    }
    s.phase = Phase::Failed;
    s.restarts += 1;
    s.retry_at = Some(now + s.backoff);
    out.push(Action::Log(format!(
        "service {number} {:?}: starting it again in {}",
        s.cfg.name,
        humantime::format_duration(s.backoff)
    )));
    s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
}

fn stop(s: &mut Svc, number: u32, out: &mut Vec<Action>) {
    s.phase = Phase::Idle;
    s.linger_until = None;
    s.retry_at = None;
    s.last_traffic = None;
    if matches!(s.proc, Proc::Up { .. }) {
        s.proc = Proc::Stopping;
        out.push(Action::Stop(number));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(5);

    fn l(iface: &str) -> Listener {
        Listener {
            iface: iface.into(),
            v4: false,
        }
    }

    fn cfg(name: &str) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            ..Default::default()
        }
    }

    fn one(c: ServiceConfig) -> (Services, Instant) {
        let mut s = Services::new(4, STALL);
        s.add(1, c);
        let t = Instant::now();
        s.next(t, Event::Begin);
        (s, t)
    }

    fn join(s: &mut Services, t: Instant, n: u32, iface: &str) -> Vec<Action> {
        s.next(
            t,
            Event::Wanted {
                number: n,
                listener: l(iface),
                wanted: true,
            },
        )
    }

    fn leave(s: &mut Services, t: Instant, n: u32, iface: &str) -> Vec<Action> {
        s.next(
            t,
            Event::Wanted {
                number: n,
                listener: l(iface),
                wanted: false,
            },
        )
    }

    fn starts(a: &[Action]) -> Vec<u32> {
        a.iter()
            .filter_map(|a| match a {
                Action::Start(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn stops(a: &[Action]) -> Vec<u32> {
        a.iter()
            .filter_map(|a| match a {
                Action::Stop(n) => Some(*n),
                _ => None,
            })
            .collect()
    }

    fn outputs(a: &[Action]) -> Option<Vec<Listener>> {
        a.iter().find_map(|a| match a {
            Action::Outputs(_, o) => Some(o.clone()),
            _ => None,
        })
    }

    fn logs(a: &[Action]) -> String {
        a.iter()
            .filter_map(|a| match a {
                Action::Log(l) => Some(l.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_until_joined() {
        let (s, _) = one(cfg("a"));
        assert_eq!(s.phase(1), Some(Phase::Idle));
        assert_eq!(s.running_sources(), 0);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn a_join_starts_the_source_and_relays_there() {
        let (mut s, t) = one(cfg("a"));
        let a = join(&mut s, t, 1, "br0");
        assert_eq!(starts(&a), vec![1]);
        assert_eq!(outputs(&a), Some(vec![l("br0")]));
        assert_eq!(s.phase(1), Some(Phase::Starting));
        s.next(t + ms(100), Event::Traffic { number: 1 });
        assert_eq!(s.phase(1), Some(Phase::Running));
    }

    #[test]
    fn a_second_listener_starts_nothing_more() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let a = join(&mut s, t, 1, "br1");
        assert!(starts(&a).is_empty());
        assert_eq!(outputs(&a), Some(vec![l("br0"), l("br1")]));
    }

    #[test]
    fn a_repeated_join_changes_nothing() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        assert!(join(&mut s, t, 1, "br0").is_empty());
    }

    #[test]
    fn one_leave_of_two_keeps_the_stream() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        join(&mut s, t, 1, "br1");
        let a = leave(&mut s, t, 1, "br0");
        assert!(stops(&a).is_empty());
        assert_eq!(outputs(&a), Some(vec![l("br1")]));
    }

    #[test]
    fn the_last_leave_stops_the_source() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        s.next(t, Event::Traffic { number: 1 });
        let a = leave(&mut s, t + ms(10), 1, "br0");
        assert_eq!(stops(&a), vec![1]);
        assert_eq!(outputs(&a), Some(vec![]));
        assert_eq!(s.phase(1), Some(Phase::Idle));
        // Its exit after the stop is no failure.
        let a = s.next(
            t + ms(20),
            Event::Exited {
                number: 1,
                why: "signal 15".into(),
            },
        );
        assert!(starts(&a).is_empty());
        assert_eq!(s.phase(1), Some(Phase::Idle));
        assert_eq!(s.status()[0].restarts, 0);
    }

    #[test]
    fn a_join_while_the_source_stops_starts_it_after_its_exit() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        leave(&mut s, t, 1, "br0");
        let a = join(&mut s, t + ms(5), 1, "br0");
        assert!(starts(&a).is_empty(), "not two sources at once");
        let a = s.next(
            t + ms(30),
            Event::Exited {
                number: 1,
                why: "signal 15".into(),
            },
        );
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn linger_keeps_the_source_and_a_join_needs_no_start() {
        let mut c = cfg("a");
        c.linger = Some(Duration::from_secs(10));
        let (mut s, t) = one(c);
        join(&mut s, t, 1, "br0");
        s.next(t, Event::Traffic { number: 1 });
        let a = leave(&mut s, t + ms(1), 1, "br0");
        assert!(stops(&a).is_empty());
        assert_eq!(s.phase(1), Some(Phase::Lingering));
        s.next(t + ms(900), Event::Traffic { number: 1 });
        let a = join(&mut s, t + Duration::from_secs(1), 1, "br0");
        assert!(starts(&a).is_empty());
        assert_eq!(outputs(&a), Some(vec![l("br0")]));
        assert_eq!(s.phase(1), Some(Phase::Running));
    }

    #[test]
    fn linger_ends_with_a_stop() {
        let mut c = cfg("a");
        c.linger = Some(Duration::from_secs(10));
        let (mut s, t) = one(c);
        join(&mut s, t, 1, "br0");
        leave(&mut s, t, 1, "br0");
        let due = s.next_deadline().unwrap();
        assert!(due <= t + Duration::from_secs(10));
        // The stall deadline comes first without traffic; feed traffic up to the linger end.
        let mut now = t;
        while now < t + Duration::from_secs(10) {
            now += Duration::from_secs(1);
            s.next(now, Event::Traffic { number: 1 });
        }
        assert_eq!(s.phase(1), Some(Phase::Idle));
        assert_eq!(s.running_sources(), 1, "stopping, its exit still to come");
    }

    #[test]
    fn warm_runs_from_the_start_and_joins_only_switch_the_relay() {
        let mut c = cfg("a");
        c.warm = true;
        let mut s = Services::new(4, STALL);
        s.add(1, c);
        let t = Instant::now();
        let a = s.next(t, Event::Begin);
        assert_eq!(starts(&a), vec![1]);
        s.next(t, Event::Traffic { number: 1 });
        let a = join(&mut s, t + ms(1), 1, "br0");
        assert!(starts(&a).is_empty());
        assert_eq!(outputs(&a), Some(vec![l("br0")]));
        let a = leave(&mut s, t + ms(2), 1, "br0");
        assert!(stops(&a).is_empty());
        assert_eq!(outputs(&a), Some(vec![]));
        assert_eq!(s.phase(1), Some(Phase::Running));
    }

    #[test]
    fn a_dead_source_restarts_with_backoff_while_listened_to() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        s.next(t, Event::Traffic { number: 1 });
        let a = s.next(
            t + ms(100),
            Event::Exited {
                number: 1,
                why: "signal 9".into(),
            },
        );
        assert!(starts(&a).is_empty());
        assert_eq!(s.phase(1), Some(Phase::Failed));
        assert_eq!(s.next_deadline(), Some(t + ms(100) + BACKOFF_FIRST));
        let a = s.next(t + ms(100) + BACKOFF_FIRST, Event::Tick);
        assert_eq!(starts(&a), vec![1]);
        assert_eq!(s.status()[0].restarts, 1);
        // It dies again at once: the delay doubles.
        let t2 = t + ms(400);
        s.next(
            t2,
            Event::Exited {
                number: 1,
                why: "exit code 1".into(),
            },
        );
        assert_eq!(s.next_deadline(), Some(t2 + BACKOFF_FIRST * 2));
    }

    #[test]
    fn backoff_is_bounded() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let mut now = t;
        for _ in 0..20 {
            now += ms(10);
            s.next(
                now,
                Event::Exited {
                    number: 1,
                    why: "exit code 1".into(),
                },
            );
            let due = s.next_deadline().unwrap();
            assert!(due - now <= BACKOFF_MAX);
            now = due;
            s.next(now, Event::Tick);
        }
        assert_eq!(s.status()[0].restarts, 20);
    }

    #[test]
    fn a_source_that_ran_long_restarts_quickly() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        for i in 0..5u64 {
            let now = t + ms(i);
            s.next(
                now,
                Event::Exited {
                    number: 1,
                    why: "x".into(),
                },
            );
            s.next(s.next_deadline().unwrap(), Event::Tick);
        }
        let start = s.next_deadline().unwrap() - STALL;
        let later = start + BACKOFF_RESET + ms(1);
        s.next(later, Event::Traffic { number: 1 });
        s.next(
            later,
            Event::Exited {
                number: 1,
                why: "x".into(),
            },
        );
        assert_eq!(s.next_deadline(), Some(later + BACKOFF_FIRST));
    }

    #[test]
    fn nobody_listening_means_no_restart() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        s.next(
            t,
            Event::Exited {
                number: 1,
                why: "x".into(),
            },
        );
        leave(&mut s, t + ms(10), 1, "br0");
        let a = s.next(t + Duration::from_secs(1), Event::Tick);
        assert!(starts(&a).is_empty());
        assert_eq!(s.phase(1), Some(Phase::Idle));
    }

    #[test]
    fn a_stalled_source_is_restarted() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        s.next(t + ms(100), Event::Traffic { number: 1 });
        assert_eq!(s.next_deadline(), Some(t + ms(100) + STALL));
        let a = s.next(t + ms(100) + STALL, Event::Tick);
        assert_eq!(stops(&a), vec![1]);
        assert!(logs(&a).contains("no RTP"), "{}", logs(&a));
        assert_eq!(s.phase(1), Some(Phase::Failed));
        // The stopped source exits; then the backoff passes and it starts again.
        s.next(
            t + ms(200) + STALL,
            Event::Exited {
                number: 1,
                why: "signal 15".into(),
            },
        );
        let a = s.next(t + ms(100) + STALL + BACKOFF_FIRST, Event::Tick);
        assert_eq!(starts(&a), vec![1]);
    }

    #[test]
    fn a_source_that_never_sends_counts_as_stalled() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let a = s.next(t + STALL, Event::Tick);
        assert_eq!(stops(&a), vec![1]);
    }

    #[test]
    fn a_start_failure_is_retried() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let a = s.next(
            t,
            Event::StartFailed {
                number: 1,
                error: "no such user".into(),
            },
        );
        assert!(logs(&a).contains("no such user"));
        assert_eq!(s.phase(1), Some(Phase::Failed));
        assert_eq!(s.running_sources(), 0);
    }

    #[test]
    fn the_cap_holds_in_a_join_storm_and_says_so() {
        let mut s = Services::new(3, STALL);
        for n in 0..1000 {
            s.add(n, cfg(&format!("s{n}")));
        }
        let t = Instant::now();
        let mut started = 0;
        let mut said = false;
        for n in 0..1000 {
            let a = join(&mut s, t, n, "br0");
            started += starts(&a).len();
            said |= logs(&a).contains("max_sources 3 reached");
        }
        assert_eq!(started, 3);
        assert_eq!(s.running_sources(), 3);
        assert!(said);
        // One leaves; its exit frees a slot for the oldest waiting service.
        leave(&mut s, t, 0, "br0");
        let a = s.next(
            t + ms(10),
            Event::Exited {
                number: 0,
                why: "signal 15".into(),
            },
        );
        assert_eq!(starts(&a), vec![3]);
        assert_eq!(s.running_sources(), 3);
    }

    #[test]
    fn a_waiting_service_whose_listeners_left_is_forgotten() {
        let mut s = Services::new(1, STALL);
        s.add(1, cfg("a"));
        s.add(2, cfg("b"));
        let t = Instant::now();
        join(&mut s, t, 1, "br0");
        join(&mut s, t, 2, "br0");
        assert!(s.status()[1].waiting_for_slot);
        leave(&mut s, t, 2, "br0");
        leave(&mut s, t, 1, "br0");
        let a = s.next(
            t,
            Event::Exited {
                number: 1,
                why: "signal 15".into(),
            },
        );
        assert!(starts(&a).is_empty());
    }

    #[test]
    fn an_unknown_number_is_logged_once() {
        let (mut s, t) = one(cfg("a"));
        let a = join(&mut s, t, 77, "br0");
        assert!(logs(&a).contains("service 77"));
        assert!(join(&mut s, t, 77, "br1").is_empty());
    }

    #[test]
    fn families_are_separate_listeners() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let v4 = Listener {
            iface: "br0".into(),
            v4: true,
        };
        let a = s.next(
            t,
            Event::Wanted {
                number: 1,
                listener: v4.clone(),
                wanted: true,
            },
        );
        assert_eq!(outputs(&a), Some(vec![l("br0"), v4]));
        let a = leave(&mut s, t, 1, "br0");
        assert!(stops(&a).is_empty());
    }

    #[test]
    fn removing_a_service_stops_its_source() {
        let (mut s, t) = one(cfg("a"));
        join(&mut s, t, 1, "br0");
        let a = s.remove(1);
        assert_eq!(stops(&a), vec![1]);
        assert!(!s.contains(1));
    }
}
