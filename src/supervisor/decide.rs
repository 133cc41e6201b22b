//! The supervisor's decisions as a pure function: `next(state, event) -> actions`. Time comes
//! in with the events, so every decision is testable without processes or clocks.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::plan::RestartPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Waiting for the children it runs after.
    Waiting,
    /// Spawned, not yet ready.
    Starting,
    Running,
    /// Died; restarts when its timer fires.
    Backoff,
    /// Asked to stop because a child it runs after restarts; starts again after it.
    Stopping,
    /// A part this binary does not have: never started, and the site is not healthy.
    Missing,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct ChildState {
    pub name: String,
    pub after: Vec<String>,
    /// Restarted when one of these runs again after a restart (see `plan::Child`).
    pub refresh_on: Vec<String>,
    pub policy: RestartPolicy,
    pub phase: Phase,
    pub pid: Option<u32>,
    pub since: Option<Instant>,
    pub restarts: u32,
    /// Restarts that came within `stable_after` of the previous one.
    pub quick_restarts: u32,
    pub delay: Duration,
    pub crash_loop: bool,
    pub healthy: Option<bool>,
    /// Healthy only once its health check said so (not merely running).
    pub checked: bool,
    /// Why it is not healthy, as its check or its readiness said.
    pub why: Option<String>,
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    pub children: Vec<ChildState>,
    pub shutting_down: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start every child whose dependencies allow it.
    Begin,
    /// The child is running and ready (its socket is there).
    Ready {
        name: String,
        pid: u32,
        at: Instant,
    },
    /// Spawned (not yet ready).
    Spawned {
        name: String,
        pid: u32,
    },
    SpawnFailed {
        name: String,
        error: String,
        at: Instant,
    },
    Exited {
        name: String,
        code: Option<i32>,
        signal: Option<i32>,
        at: Instant,
    },
    /// It did not become ready in time (its socket never appeared): it is stopped and
    /// restarted with backoff, and what runs after it does not start.
    NotReady {
        name: String,
        why: String,
    },
    /// A backoff timer fired.
    Timer {
        name: String,
    },
    Health {
        name: String,
        ok: bool,
        /// Why not, when not.
        why: Option<String>,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Spawn(String),
    /// SIGTERM its process group, SIGKILL after a timeout.
    Stop(String),
    /// Send `Timer` for this child after the delay.
    Schedule(String, Duration),
    /// Stop everything (dependents first) and tear the site down.
    StopAll,
    Log(String),
}

impl State {
    /// `missing`: the parts this binary does not have, by child name, with why (see
    /// `spawn::missing_part`): they are never started.
    pub fn new(children: &[crate::plan::Child]) -> State {
        State::with_missing(children, |_| None)
    }

    pub fn with_missing(
        children: &[crate::plan::Child],
        missing: impl Fn(&crate::plan::Child) -> Option<String>,
    ) -> State {
        State {
            children: children
                .iter()
                .map(|c| {
                    let why = missing(c);
                    ChildState {
                        name: c.name.clone(),
                        after: c.after.clone(),
                        refresh_on: c.refresh_on.clone(),
                        policy: c.restart.clone(),
                        phase: if why.is_some() {
                            Phase::Missing
                        } else {
                            Phase::Waiting
                        },
                        pid: None,
                        since: None,
                        restarts: 0,
                        quick_restarts: 0,
                        delay: c.restart.first_delay,
                        crash_loop: false,
                        healthy: None,
                        checked: !matches!(c.health, crate::plan::Health::Running),
                        why,
                        last_exit: None,
                    }
                })
                .collect(),
            shutting_down: false,
        }
    }

    pub fn get(&self, name: &str) -> Option<&ChildState> {
        self.children.iter().find(|c| c.name == name)
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.name == name)
    }

    fn deps_ready(&self, c: &ChildState) -> bool {
        c.after
            .iter()
            .all(|d| self.get(d).is_none_or(|d| d.phase == Phase::Running))
    }

    /// Healthy: every child runs (and answers its health check). A missing part, a child
    /// waiting, starting or backing off is not healthy.
    pub fn healthy(&self) -> bool {
        !self.shutting_down
            && self.children.iter().all(|c| match c.phase {
                Phase::Running if c.checked => c.healthy == Some(true),
                Phase::Running => c.healthy != Some(false),
                _ => false,
            })
    }
}

/// The order to stop in: waves of children, each to be stopped (and waited for) before
/// the next. A child comes in an earlier wave than every child it runs after, so
/// dependents go before their dependencies (a cycle, which the plan never makes, would be
/// stopped in one last wave).
pub fn stop_waves(s: &State) -> Vec<Vec<String>> {
    let mut left: Vec<&ChildState> = s.children.iter().collect();
    let mut waves = vec![];
    while !left.is_empty() {
        let needed =
            |c: &ChildState, left: &[&ChildState]| left.iter().any(|d| d.after.contains(&c.name));
        let (wave, rest): (Vec<&ChildState>, Vec<&ChildState>) =
            left.iter().partition(|c| !needed(c, &left));
        if wave.is_empty() {
            waves.push(rest.iter().map(|c| c.name.clone()).collect());
            break;
        }
        waves.push(wave.iter().map(|c| c.name.clone()).collect());
        left = rest;
    }
    waves
}

fn describe(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown cause".into(),
    }
}

/// Starts every waiting child whose dependencies run.
fn start_waiting(s: &mut State, out: &mut Vec<Action>) {
    for i in 0..s.children.len() {
        if s.children[i].phase == Phase::Waiting && s.deps_ready(&s.children[i]) {
            s.children[i].phase = Phase::Starting;
            out.push(Action::Spawn(s.children[i].name.clone()));
        }
    }
}

/// `name` runs again after a restart: the children that refresh on it start afresh.
fn refresh(s: &mut State, name: &str, out: &mut Vec<Action>) {
    for d in s.children.iter_mut() {
        if d.phase == Phase::Running && d.refresh_on.iter().any(|r| r == name) {
            d.phase = Phase::Stopping;
            out.push(Action::Log(format!(
                "{}: restarting to forget what it learnt through {name}",
                d.name
            )));
            out.push(Action::Stop(d.name.clone()));
        }
    }
}

/// The decision for one event.
pub fn next(s: &mut State, ev: Event) -> Vec<Action> {
    let mut out = vec![];
    if s.shutting_down {
        if let Event::Exited { name, .. } | Event::SpawnFailed { name, .. } = &ev
            && let Some(i) = s.idx(name)
        {
            s.children[i].phase = Phase::Stopped;
            s.children[i].pid = None;
        }
        return out;
    }
    match ev {
        Event::Begin => start_waiting(s, &mut out),
        Event::Spawned { name, pid } => {
            if let Some(i) = s.idx(&name) {
                s.children[i].pid = Some(pid);
            }
        }
        Event::Ready { name, pid, at } => {
            let Some(i) = s.idx(&name) else {
                return out;
            };
            let c = &mut s.children[i];
            if c.phase != Phase::Starting {
                return out;
            }
            c.phase = Phase::Running;
            c.pid = Some(pid);
            c.since = Some(at);
            c.healthy = None;
            c.why = None;
            out.push(Action::Log(format!("{name}: running (pid {pid})")));
            if c.restarts > 0 {
                refresh(s, &name, &mut out);
            }
            start_waiting(s, &mut out);
        }
        Event::Exited {
            name,
            code,
            signal,
            at,
        } => exited(s, &name, code, signal, None, at, &mut out),
        Event::SpawnFailed { name, error, at } => {
            exited(s, &name, None, None, Some(error), at, &mut out)
        }
        Event::NotReady { name, why } => {
            let Some(i) = s.idx(&name) else {
                return out;
            };
            let c = &mut s.children[i];
            if c.phase != Phase::Starting {
                return out;
            }
            // Still Starting: its exit counts as a crash and it restarts with backoff.
            out.push(Action::Log(format!(
                "{name}: not ready: {why}; stopping it"
            )));
            c.why = Some(format!("not ready: {why}"));
            out.push(Action::Stop(name));
        }
        Event::Timer { name } => {
            let Some(i) = s.idx(&name) else {
                return out;
            };
            if s.children[i].phase != Phase::Backoff {
                return out;
            }
            s.children[i].phase = Phase::Waiting;
            start_waiting(s, &mut out);
        }
        Event::Health { name, ok, why } => {
            if let Some(i) = s.idx(&name) {
                let c = &mut s.children[i];
                if c.phase != Phase::Running {
                    return out;
                }
                let why = if ok { None } else { why };
                if c.healthy != Some(ok) {
                    // Not yet answering while it starts is not news; losing health is.
                    let news = ok || c.healthy == Some(true);
                    c.healthy = Some(ok);
                    if news {
                        out.push(Action::Log(match &why {
                            None if ok => format!("{name}: healthy"),
                            None => format!("{name}: unhealthy"),
                            Some(w) => format!("{name}: unhealthy: {w}"),
                        }));
                    }
                }
                c.why = why;
            }
        }
        Event::Shutdown => {
            s.shutting_down = true;
            out.push(Action::StopAll);
        }
    }
    out
}

fn exited(
    s: &mut State,
    name: &str,
    code: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
    at: Instant,
    out: &mut Vec<Action>,
) {
    let Some(i) = s.idx(name) else {
        return;
    };
    let c = &mut s.children[i];
    let mut why = error.unwrap_or_else(|| describe(code, signal));
    if let Some(w) = c.why.take().filter(|w| w.starts_with("not ready")) {
        why = format!("{w}; then {why}");
    }
    let was = c.phase;
    c.pid = None;
    c.healthy = None;
    c.last_exit = Some(why.clone());
    if was == Phase::Stopping {
        // Stopped on purpose: it starts again once what it runs after is back.
        c.phase = Phase::Waiting;
        start_waiting(s, out);
        return;
    }
    // A crash: restart with backoff; running long enough resets the backoff.
    let stable = c
        .since
        .is_some_and(|t| at.saturating_duration_since(t) >= c.policy.stable_after);
    if stable {
        c.delay = c.policy.first_delay;
        c.quick_restarts = 0;
        c.crash_loop = false;
    }
    let delay = c.delay;
    c.delay = (c.delay * 2).min(c.policy.max_delay);
    c.restarts += 1;
    c.quick_restarts += 1;
    c.phase = Phase::Backoff;
    c.since = None;
    out.push(Action::Log(format!(
        "{name}: died ({why}); restart {} in {delay:?}",
        c.restarts
    )));
    if c.quick_restarts >= c.policy.crash_loop_restarts && !c.crash_loop {
        c.crash_loop = true;
        out.push(Action::Log(format!(
            "{name}: crash loop: {} restarts within {:?}; backing off up to {:?}",
            c.quick_restarts, c.policy.stable_after, c.policy.max_delay
        )));
    }
    out.push(Action::Schedule(name.to_string(), delay));
    // Whatever runs after it restarts after it.
    for j in 0..s.children.len() {
        if !s.children[j].after.iter().any(|a| a == name) {
            continue;
        }
        let d = &mut s.children[j];
        match d.phase {
            Phase::Running | Phase::Starting => {
                d.phase = Phase::Stopping;
                out.push(Action::Log(format!(
                    "{}: stopping, restarts after {name}",
                    d.name
                )));
                out.push(Action::Stop(d.name.clone()));
            }
            Phase::Backoff => d.phase = Phase::Waiting,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Child, Health, Program, RestartPolicy};

    fn child(name: &str, after: &[&str]) -> Child {
        Child {
            name: name.into(),
            program: Program::External,
            argv: vec!["true".into()],
            netns: None,
            caps: vec![],
            user: None,
            groups: vec![],
            after: after.iter().map(|s| s.to_string()).collect(),
            refresh_on: vec![],
            restart: RestartPolicy::default(),
            health: Health::Running,
        }
    }

    fn pair() -> State {
        State::new(&[child("dbus@iot", &[]), child("avahi@iot", &["dbus@iot"])])
    }

    #[test]
    fn a_checked_child_is_healthy_only_once_its_check_says_so() {
        let mut c = child("avahi@iot", &[]);
        c.health = Health::AvahiBus {
            bus: "/run/dbus/system_bus_socket".into(),
        };
        let mut s = State::new(&[c]);
        let t = Instant::now();
        next(&mut s, Event::Begin);
        ready(&mut s, "avahi@iot", 3, t);
        assert!(!s.healthy());
        next(
            &mut s,
            Event::Health {
                name: "avahi@iot".into(),
                ok: true,
                why: None,
            },
        );
        assert!(s.healthy());
    }

    fn spawns(a: &[Action]) -> Vec<&str> {
        a.iter()
            .filter_map(|a| match a {
                Action::Spawn(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    fn ready(s: &mut State, name: &str, pid: u32, at: Instant) -> Vec<Action> {
        next(
            s,
            Event::Ready {
                name: name.into(),
                pid,
                at,
            },
        )
    }

    fn exit(s: &mut State, name: &str, code: Option<i32>, at: Instant) -> Vec<Action> {
        next(
            s,
            Event::Exited {
                name: name.into(),
                code,
                signal: if code.is_none() { Some(9) } else { None },
                at,
            },
        )
    }

    fn up(s: &mut State, t: Instant) {
        assert_eq!(spawns(&next(s, Event::Begin)), ["dbus@iot"]);
        assert_eq!(spawns(&ready(s, "dbus@iot", 10, t)), ["avahi@iot"]);
        ready(s, "avahi@iot", 11, t);
    }

    #[test]
    fn dependents_start_after_their_dependency_is_ready() {
        let mut s = pair();
        let t = Instant::now();
        assert_eq!(spawns(&next(&mut s, Event::Begin)), ["dbus@iot"]);
        assert_eq!(s.get("avahi@iot").unwrap().phase, Phase::Waiting);
        assert!(!s.healthy());
        assert_eq!(spawns(&ready(&mut s, "dbus@iot", 10, t)), ["avahi@iot"]);
        ready(&mut s, "avahi@iot", 11, t);
        assert!(s.healthy());
    }

    #[test]
    fn first_restart_is_within_a_second_and_backs_off() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        let a = exit(&mut s, "avahi@iot", None, t);
        let first = a
            .iter()
            .find_map(|a| match a {
                Action::Schedule(n, d) if n == "avahi@iot" => Some(*d),
                _ => None,
            })
            .unwrap();
        assert!(first <= Duration::from_secs(1));
        assert_eq!(
            spawns(&next(
                &mut s,
                Event::Timer {
                    name: "avahi@iot".into()
                }
            )),
            ["avahi@iot"]
        );
        ready(&mut s, "avahi@iot", 12, t);
        let a = exit(&mut s, "avahi@iot", None, t + Duration::from_millis(10));
        assert!(a.contains(&Action::Schedule("avahi@iot".into(), first * 2)));
        assert_eq!(s.get("avahi@iot").unwrap().restarts, 2);
    }

    #[test]
    fn backoff_is_capped_and_a_crash_loop_is_reported_once() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        let mut loops = 0;
        let mut last = Duration::ZERO;
        for i in 0..20 {
            let a = exit(&mut s, "avahi@iot", Some(1), t);
            loops += a
                .iter()
                .filter(|a| matches!(a, Action::Log(l) if l.contains("crash loop")))
                .count();
            for a in &a {
                if let Action::Schedule(_, d) = a {
                    assert!(*d >= last, "never shorter: a hot loop");
                    last = *d;
                }
            }
            next(
                &mut s,
                Event::Timer {
                    name: "avahi@iot".into(),
                },
            );
            ready(&mut s, "avahi@iot", 100 + i, t);
        }
        assert_eq!(last, RestartPolicy::default().max_delay);
        assert_eq!(loops, 1);
        assert!(s.get("avahi@iot").unwrap().crash_loop);
    }

    #[test]
    fn running_long_enough_resets_the_backoff() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        for _ in 0..4 {
            exit(&mut s, "avahi@iot", None, t);
            next(
                &mut s,
                Event::Timer {
                    name: "avahi@iot".into(),
                },
            );
            ready(&mut s, "avahi@iot", 20, t);
        }
        let later = t + Duration::from_secs(120);
        let a = exit(&mut s, "avahi@iot", None, later);
        assert!(a.contains(&Action::Schedule(
            "avahi@iot".into(),
            RestartPolicy::default().first_delay
        )));
    }

    #[test]
    fn a_dbus_restart_restarts_its_avahi_after_it() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        let a = exit(&mut s, "dbus@iot", None, t);
        assert!(a.contains(&Action::Stop("avahi@iot".into())));
        assert!(spawns(&a).is_empty());
        // avahi dies of the stop (or of losing its bus): it waits for dbus.
        let a = exit(&mut s, "avahi@iot", None, t);
        assert!(spawns(&a).is_empty());
        assert_eq!(s.get("avahi@iot").unwrap().phase, Phase::Waiting);
        assert_eq!(
            s.get("avahi@iot").unwrap().restarts,
            0,
            "a stop is not a crash"
        );
        assert_eq!(
            spawns(&next(
                &mut s,
                Event::Timer {
                    name: "dbus@iot".into()
                }
            )),
            ["dbus@iot"]
        );
        assert_eq!(spawns(&ready(&mut s, "dbus@iot", 30, t)), ["avahi@iot"]);
        ready(&mut s, "avahi@iot", 31, t);
        assert!(s.healthy());
    }

    #[test]
    fn a_reflector_back_from_a_restart_refreshes_the_vlan_avahis_without_holding_them() {
        let mut avahi = child("avahi@iot", &["dbus@iot"]);
        avahi.refresh_on = vec!["reflector@media".into()];
        let mut s = State::new(&[child("dbus@iot", &[]), avahi, child("reflector@media", &[])]);
        let t = Instant::now();
        // The reflector does not hold up the VLAN's avahi.
        assert_eq!(
            spawns(&next(&mut s, Event::Begin)),
            ["dbus@iot", "reflector@media"]
        );
        assert_eq!(spawns(&ready(&mut s, "dbus@iot", 10, t)), ["avahi@iot"]);
        ready(&mut s, "avahi@iot", 11, t);
        // Its first start refreshes nobody.
        let a = ready(&mut s, "reflector@media", 12, t);
        assert!(!a.contains(&Action::Stop("avahi@iot".into())));
        // It dies: the avahi keeps running meanwhile.
        let a = exit(&mut s, "reflector@media", None, t);
        assert!(!a.contains(&Action::Stop("avahi@iot".into())));
        assert_eq!(s.get("avahi@iot").unwrap().phase, Phase::Running);
        next(
            &mut s,
            Event::Timer {
                name: "reflector@media".into(),
            },
        );
        // Back: the avahi restarts, at once, and is not counted as a crash.
        let a = ready(&mut s, "reflector@media", 20, t);
        assert!(a.contains(&Action::Stop("avahi@iot".into())));
        assert!(!a.contains(&Action::Stop("dbus@iot".into())));
        assert_eq!(spawns(&exit(&mut s, "avahi@iot", None, t)), ["avahi@iot"]);
        assert_eq!(s.get("avahi@iot").unwrap().restarts, 0);
    }

    #[test]
    fn an_exit_69_is_a_crash_restarted_with_backoff() {
        let mut s = State::new(&[child("headend", &[])]);
        let t = Instant::now();
        next(&mut s, Event::Begin);
        ready(&mut s, "headend", 5, t);
        let a = exit(&mut s, "headend", Some(69), t);
        assert!(a.contains(&Action::Schedule(
            "headend".into(),
            RestartPolicy::default().first_delay
        )));
        let c = s.get("headend").unwrap();
        assert_eq!(c.phase, Phase::Backoff);
        assert_eq!(c.last_exit.as_deref(), Some("exit code 69"));
        assert!(!s.healthy());
        // Exiting 69 over and over is a crash loop like any other.
        for i in 0..10 {
            next(
                &mut s,
                Event::Timer {
                    name: "headend".into(),
                },
            );
            ready(&mut s, "headend", 6 + i, t);
            exit(&mut s, "headend", Some(69), t);
        }
        assert!(s.get("headend").unwrap().crash_loop);
        assert!(!s.healthy());
    }

    #[test]
    fn a_missing_part_is_never_started_and_the_site_is_not_healthy() {
        let children = [child("mroute", &[]), child("headend", &[])];
        let mut s = State::with_missing(&children, |c| {
            (c.name == "headend").then(|| "this binary has no role \"headend\"".into())
        });
        let t = Instant::now();
        assert_eq!(spawns(&next(&mut s, Event::Begin)), ["mroute"]);
        ready(&mut s, "mroute", 3, t);
        let h = s.get("headend").unwrap();
        assert_eq!(h.phase, Phase::Missing);
        assert!(h.why.as_deref().unwrap().contains("headend"));
        assert!(!s.healthy());
        // Nothing wakes it: not a timer, not a restart of another child.
        assert!(
            spawns(&next(
                &mut s,
                Event::Timer {
                    name: "headend".into()
                }
            ))
            .is_empty()
        );
        exit(&mut s, "mroute", None, t);
        next(
            &mut s,
            Event::Timer {
                name: "mroute".into(),
            },
        );
        assert_eq!(s.get("headend").unwrap().phase, Phase::Missing);
    }

    #[test]
    fn a_child_never_ready_is_stopped_restarted_with_backoff_and_holds_its_dependents() {
        let mut s = pair();
        let t = Instant::now();
        assert_eq!(spawns(&next(&mut s, Event::Begin)), ["dbus@iot"]);
        next(
            &mut s,
            Event::Spawned {
                name: "dbus@iot".into(),
                pid: 10,
            },
        );
        let a = next(
            &mut s,
            Event::NotReady {
                name: "dbus@iot".into(),
                why: "its socket did not appear within 5s".into(),
            },
        );
        assert!(a.contains(&Action::Stop("dbus@iot".into())));
        assert!(spawns(&a).is_empty(), "its dependents started: {a:?}");
        assert_eq!(s.get("avahi@iot").unwrap().phase, Phase::Waiting);
        let a = exit(&mut s, "dbus@iot", None, t);
        assert!(spawns(&a).is_empty());
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Schedule(n, _) if n == "dbus@iot"))
        );
        let d = s.get("dbus@iot").unwrap();
        assert_eq!(d.phase, Phase::Backoff);
        assert_eq!(d.restarts, 1);
        assert!(
            d.last_exit
                .as_deref()
                .unwrap()
                .contains("socket did not appear")
        );
        assert_eq!(s.get("avahi@iot").unwrap().phase, Phase::Waiting);
        assert!(!s.healthy());
    }

    #[test]
    fn an_unhealthy_child_says_why_until_it_is_healthy_again() {
        let mut c = child("mroute", &[]);
        c.health = Health::Control {
            socket: "/run/appliance/x/mroute.sock".into(),
        };
        let mut s = State::new(&[c]);
        next(&mut s, Event::Begin);
        ready(&mut s, "mroute", 3, Instant::now());
        next(
            &mut s,
            Event::Health {
                name: "mroute".into(),
                ok: false,
                why: Some("VIF br-b missing".into()),
            },
        );
        assert_eq!(
            s.get("mroute").unwrap().why.as_deref(),
            Some("VIF br-b missing")
        );
        assert!(!s.healthy());
        next(
            &mut s,
            Event::Health {
                name: "mroute".into(),
                ok: true,
                why: None,
            },
        );
        assert_eq!(s.get("mroute").unwrap().why, None);
        assert!(s.healthy());
    }

    #[test]
    fn dependents_stop_in_an_earlier_wave_than_what_they_run_after() {
        assert_eq!(
            stop_waves(&pair()),
            [vec!["avahi@iot".to_string()], vec!["dbus@iot".to_string()]]
        );
        let s = State::new(&[
            child("c", &["b"]),
            child("a", &[]),
            child("b", &["a"]),
            child("x", &[]),
        ]);
        assert_eq!(
            stop_waves(&s),
            [
                vec!["c".to_string(), "x".into()],
                vec!["b".into()],
                vec!["a".into()]
            ]
        );
        // A cycle still stops everything.
        let s = State::new(&[child("p", &["q"]), child("q", &["p"])]);
        assert_eq!(stop_waves(&s).concat().len(), 2);
    }

    #[test]
    fn unhealthy_avahi_makes_the_site_unhealthy() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        next(
            &mut s,
            Event::Health {
                name: "avahi@iot".into(),
                ok: false,
                why: Some("its bus does not answer".into()),
            },
        );
        assert!(!s.healthy());
        next(
            &mut s,
            Event::Health {
                name: "avahi@iot".into(),
                ok: true,
                why: None,
            },
        );
        assert!(s.healthy());
    }

    #[test]
    fn shutdown_stops_all_and_restarts_nothing() {
        let mut s = pair();
        let t = Instant::now();
        up(&mut s, t);
        assert_eq!(next(&mut s, Event::Shutdown), [Action::StopAll]);
        assert!(exit(&mut s, "dbus@iot", None, t).is_empty());
        assert!(exit(&mut s, "avahi@iot", None, t).is_empty());
        assert!(!s.healthy());
    }

    #[test]
    fn a_timer_for_a_running_child_does_nothing() {
        let mut s = pair();
        up(&mut s, Instant::now());
        assert!(
            next(
                &mut s,
                Event::Timer {
                    name: "avahi@iot".into()
                }
            )
            .is_empty()
        );
    }
}
