//! The supervisor's decisions as a pure function: `next(state, event) -> actions`. Time comes
//! in with the events, so every decision is testable without processes or clocks.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::exit::EXIT_NOT_BUILT;
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
    /// Exited with `EXIT_NOT_BUILT`: a part of this build that is not written yet.
    NotBuilt,
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
    /// A backoff timer fired.
    Timer {
        name: String,
    },
    Health {
        name: String,
        ok: bool,
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
    pub fn new(children: &[crate::plan::Child]) -> State {
        State {
            children: children
                .iter()
                .map(|c| ChildState {
                    name: c.name.clone(),
                    after: c.after.clone(),
                    refresh_on: c.refresh_on.clone(),
                    policy: c.restart.clone(),
                    phase: Phase::Waiting,
                    pid: None,
                    since: None,
                    restarts: 0,
                    quick_restarts: 0,
                    delay: c.restart.first_delay,
                    crash_loop: false,
                    healthy: None,
                    checked: !matches!(c.health, crate::plan::Health::Running),
                    last_exit: None,
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

    /// Healthy: every child runs (and answers its health check) or is not built.
    pub fn healthy(&self) -> bool {
        !self.shutting_down
            && self.children.iter().all(|c| match c.phase {
                Phase::NotBuilt => true,
                Phase::Running if c.checked => c.healthy == Some(true),
                Phase::Running => c.healthy != Some(false),
                _ => false,
            })
    }
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
        Event::Health { name, ok } => {
            if let Some(i) = s.idx(&name) {
                let c = &mut s.children[i];
                if c.phase == Phase::Running && c.healthy != Some(ok) {
                    // Not yet answering while it starts is not news; losing health is.
                    let news = ok || c.healthy == Some(true);
                    c.healthy = Some(ok);
                    if news {
                        out.push(Action::Log(format!(
                            "{name}: {}",
                            if ok { "healthy" } else { "unhealthy" }
                        )));
                    }
                }
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
    let why = error.unwrap_or_else(|| describe(code, signal));
    let c = &mut s.children[i];
    let was = c.phase;
    c.pid = None;
    c.healthy = None;
    c.last_exit = Some(why.clone());
    if code == Some(i32::from(EXIT_NOT_BUILT)) {
        c.phase = Phase::NotBuilt;
        out.push(Action::Log(format!(
            "{name}: unavailable (not built): exited with code {EXIT_NOT_BUILT}; not restarted"
        )));
        return;
    }
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
    fn not_built_is_reported_once_and_not_restarted_and_not_unhealthy() {
        let mut s = State::new(&[child("headend", &[])]);
        let t = Instant::now();
        next(&mut s, Event::Begin);
        ready(&mut s, "headend", 5, t);
        let a = exit(&mut s, "headend", Some(69), t);
        assert_eq!(a.len(), 1);
        assert!(matches!(&a[0], Action::Log(l) if l.contains("unavailable (not built)")));
        assert_eq!(s.get("headend").unwrap().phase, Phase::NotBuilt);
        assert!(s.healthy());
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
            },
        );
        assert!(!s.healthy());
        next(
            &mut s,
            Event::Health {
                name: "avahi@iot".into(),
                ok: true,
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
