//! The `up`, `down`, `status` and `services` subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::control::{self, ControlError};
use crate::apply::{self, Record};
use crate::plan::{self, Plan};
use crate::site;

use crate::exit::EXIT_INVALID;
pub use crate::exit::{EXIT_FAILED, EXIT_NOT_RUNNING};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn load(path: &Path, state_dir: Option<PathBuf>) -> Result<Plan, ExitCode> {
    match site::load(path) {
        Ok(l) => Ok(plan::plan(&l.site.with_state_dir(state_dir), &l.path)),
        Err(errors) => {
            eprintln!("{errors}");
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

pub fn up(path: &Path, state_dir: Option<PathBuf>, dad_wait: Duration) -> ExitCode {
    let mut plan = match load(path, state_dir) {
        Ok(p) => p,
        Err(c) => return c,
    };
    if plan.routing.as_ref().is_some_and(|r| r.frr.is_some())
        && std::env::var(plan::routing::FRR_ENV).as_deref() == Ok("system")
    {
        tracing::info!(
            "{}=system: FRR's daemons are the system's (frr.service); up runs only the frr part",
            plan::routing::FRR_ENV
        );
        plan::routing::leave_frr_to_the_system(&mut plan);
    }
    let problems = super::preflight(&plan);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("appliance up: {p}");
        }
        eprintln!("appliance up: nothing was changed");
        return ExitCode::from(EXIT_FAILED);
    }
    let lock = match super::lock(&plan) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("appliance up: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    ExitCode::from(runtime().block_on(super::up(plan, lock, dad_wait)))
}

pub fn down(path: &Path, state_dir: Option<PathBuf>) -> ExitCode {
    let plan = match load(path, state_dir) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let dir = plan.state_dir.clone();
    if super::is_running(&dir) {
        match control::request(&plan.control_socket, "down", Duration::from_secs(30)) {
            Ok(v) => eprintln!("appliance down: the supervisor tore the site down: {v}"),
            Err(e) => {
                eprintln!("appliance down: {e}; stopping the supervisor by its pid");
                if let Some(r) = Record::load(&dir) {
                    let pid = nix::unistd::Pid::from_raw(r.pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while super::is_running(&dir) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if super::is_running(&dir) {
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while super::is_running(&dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Whatever is left (a supervisor killed with SIGKILL, a partial up) goes now.
    let errors = runtime().block_on(apply::teardown(&plan.site, Some(&plan), &dir));
    crate::render::machine::remove_all_cgroups(&plan);
    super::remove_parts(&plan);
    let _ = std::fs::remove_file(dir.join("lock"));
    let _ = std::fs::remove_dir(&dir);
    if errors.is_empty() {
        eprintln!(
            "appliance down: site {} is down; nothing of it is left",
            plan.site
        );
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("appliance down: {e}");
        }
        ExitCode::from(EXIT_FAILED)
    }
}

/// The state directory to ask: the given one, or the only site under /run/appliance.
fn state_dir(given: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    if let Some(d) = given {
        return Ok(d);
    }
    let running: Vec<PathBuf> = std::fs::read_dir("/run/appliance")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("control.sock").exists())
        .collect();
    match running.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            eprintln!("no site is running under /run/appliance");
            Err(ExitCode::from(EXIT_NOT_RUNNING))
        }
        many => {
            eprintln!(
                "several sites run ({}): choose one with --state-dir",
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

fn ask(dir: &Path, cmd: &str, within: Duration) -> Result<Value, ExitCode> {
    match control::request(&dir.join("control.sock"), cmd, within) {
        Ok(v) => Ok(v),
        Err(e @ ControlError::NotRunning(_)) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_NOT_RUNNING))
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_FAILED))
        }
    }
}

pub fn status(given: Option<PathBuf>, json: bool) -> ExitCode {
    let dir = match state_dir(given) {
        Ok(d) => d,
        Err(c) => return c,
    };
    let v = match ask(&dir, "status", Duration::from_secs(10)) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let healthy = v["healthy"].as_bool().unwrap_or(false);
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", status_text(&v));
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

use crate::printable::escape as esc;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn status_text(v: &Value) -> String {
    let mut out = format!(
        "site {}: {} (supervisor pid {}, up {} s, state in {})\n",
        s(&v["site"]),
        if v["healthy"].as_bool() == Some(true) {
            "healthy"
        } else {
            "UNHEALTHY"
        },
        s(&v["pid"]),
        v["uptime_ms"].as_u64().unwrap_or(0) / 1000,
        s(&v["state_dir"])
    );
    let a = &v["addresses"];
    if a["state"].as_str().is_some_and(|st| st != "usable") {
        out.push_str(&format!("addresses: {}\n", s(&a["state"])));
    }
    for c in a["conflicts"].as_array().into_iter().flatten() {
        out.push_str(&format!("  conflict: {}\n", s(c)));
    }
    for p in a["pending"].as_array().into_iter().flatten() {
        out.push_str(&format!("  still tentative: {}\n", s(p)));
    }
    for e in a["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("  error: {}\n", s(e)));
    }
    for m in a["missing"].as_array().into_iter().flatten() {
        out.push_str(&format!("  missing: {}\n", s(m)));
    }
    out.push_str("namespaces:\n");
    for n in v["namespaces"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {:<20} {}\n", s(&n["name"]), s(&n["pin"])));
    }
    for m in v["mount_spaces"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<20} the host's network, private mounts: {}\n",
            s(&m["name"]),
            m["binds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push_str("veths:\n");
    for n in v["veths"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<15} on {:<12} <-> {} in {} (MAC {}){}\n",
            s(&n["host"]),
            s(&n["bridge"]),
            s(&n["peer"]),
            s(&n["netns"]),
            s(&n["peer_mac"]),
            if n["dhcp"].as_bool() == Some(true) {
                " dhcp"
            } else {
                ""
            }
        ));
    }
    out.push_str("children:\n");
    for c in v["children"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<20} {:<24} pid {:<8} restarts {}{}\n",
            s(&c["name"]),
            s(&c["health"]),
            s(&c["pid"]),
            s(&c["restarts"]),
            match &c["note"] {
                Value::String(n) => format!(" ({n})"),
                _ => String::new(),
            }
        ));
        if let Some(user) = c["user"].as_str() {
            let caps: Vec<&str> = c["caps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            out.push_str(&format!(
                "    as {user}; caps {}\n",
                if caps.is_empty() {
                    "none".to_string()
                } else {
                    caps.join(",")
                }
            ));
        }
        if let Some(why) = c["why"].as_str() {
            out.push_str(&format!("    why: {why}\n"));
        }
        if c["health"] != "healthy"
            && c["health"] != "running"
            && let Some(last) = c["last_exit"].as_str()
        {
            out.push_str(&format!("    last exit: {last}\n"));
        }
    }
    if !v["mroute"].is_null() {
        out.push_str(&format!("mroute: {}\n", v["mroute"]));
    }
    if !v["mroute"]["proxy"].is_null() {
        out.push_str(&crate::mroute::control::render_proxy(&v["mroute"]["proxy"]));
    }
    if let Some(w) = v["translate"]["open_to_anyone"].as_str() {
        out.push_str(&format!("translate: warning: {w}\n"));
    }
    if !v["headend"].is_null() {
        out.push_str(&headend_text(&v["headend"]));
    }
    if !v["routing"].is_null() {
        out.push_str(&routing_text(&v["routing"]));
    }
    out
}

/// What FRR says (the `frr` part's status): daemons, configuration, PIM neighbours, the
/// (S,G) and (*,G) state, IGMP groups.
fn routing_text(r: &Value) -> String {
    if let Some(e) = r["error"].as_str() {
        return format!("routing (FRR): {e}\n");
    }
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let mut out = format!(
        "routing (FRR): {}{}\n",
        if r["healthy"] == true {
            "healthy"
        } else {
            "unhealthy"
        },
        r["why"]
            .as_str()
            .map(|w| format!(" ({})", esc(w)))
            .unwrap_or_default()
    );
    let daemons: Vec<String> = r["daemons"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let ok = if d["answers"] == true {
                "answers"
            } else {
                "silent"
            };
            format!("{} {ok}", s(&d["name"]))
        })
        .collect();
    out.push_str(&format!(
        "  daemons: {}; configuration pushed {} time(s)\n",
        daemons.join(", "),
        r["pushes"]
    ));
    out.push_str(&format!(
        "  PIM on: {}; IGMP on: {}\n",
        list(&r["pim_interfaces"]).join(" "),
        list(&r["igmp_interfaces"]).join(" ")
    ));
    for rp in r["rps"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  RP {} for {}\n",
            s(&rp["address"]),
            s(&rp["group"])
        ));
    }
    let neighbors = r["neighbors"].as_array().cloned().unwrap_or_default();
    if neighbors.is_empty() {
        out.push_str("  no PIM neighbours\n");
    }
    for n in neighbors {
        out.push_str(&format!(
            "  neighbour {} on {} (up {})\n",
            s(&n["address"]),
            s(&n["interface"]),
            n["uptime"].as_str().unwrap_or("?")
        ));
    }
    for m in r["mroutes"].as_array().into_iter().flatten() {
        let source = m["source"].as_str().unwrap_or("*");
        out.push_str(&format!(
            "  ({source}, {}) in {} -> {}{}\n",
            s(&m["group"]),
            m["iif"].as_str().unwrap_or("?"),
            list(&m["oil"]).join(" "),
            if m["installed"] == true {
                ""
            } else {
                " (not installed)"
            }
        ));
    }
    for g in r["igmp_groups"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  IGMP receivers of {} on {}\n",
            s(&g["group"]),
            s(&g["interface"])
        ));
    }
    out
}

pub fn services(given: Option<PathBuf>) -> ExitCode {
    let dir = match state_dir(given) {
        Ok(d) => d,
        Err(c) => return c,
    };
    let v = match ask(&dir, "services", Duration::from_secs(30)) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let mut failed = false;
    for vl in v["vlans"].as_array().into_iter().flatten() {
        let vlan = s(&vl["vlan"]);
        if let Some(e) = vl["error"].as_str() {
            println!("{vlan}: error: {}", esc(e));
            failed = true;
            continue;
        }
        let list = vl["services"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("{vlan}: no services");
        }
        for sv in list {
            // Names come from hosts on untrusted VLANs: escape control characters.
            println!(
                "{vlan}\t{}\t{}\t{}\t{}",
                esc(&s(&sv["type"])),
                esc(&s(&sv["name"])),
                esc(&s(&sv["domain"])),
                esc(&s(&sv["protocol"]))
            );
        }
    }
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The headend's services: state, listeners per interface, reporting receivers, packets
/// relayed, restarts.
fn headend_text(h: &Value) -> String {
    if let Some(e) = h["error"].as_str() {
        return format!("headend: {e}\n");
    }
    let mut out = format!(
        "headend: {} source(s) running of at most {}\n",
        s(&h["sources_running"]),
        s(&h["max_sources"])
    );
    for sv in h["services"].as_array().into_iter().flatten() {
        let listeners: Vec<String> = sv["listeners"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(iface, fams)| {
                let f: Vec<&str> = fams
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!("{iface} ({})", f.join("+"))
            })
            .collect();
        out.push_str(&format!(
            "  {:<6} {:<24} {:<9} listeners {:<20} reporting {:<3} packets {:<8} restarts {}\n",
            s(&sv["number"]),
            s(&sv["name"]),
            s(&sv["state"]),
            if listeners.is_empty() {
                "none".to_string()
            } else {
                listeners.join(", ")
            },
            s(&sv["reporting_receivers"]),
            s(&sv["packets"]),
            s(&sv["restarts"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_what_frr_says() {
        let v = serde_json::json!({"site": "b", "healthy": false, "children": [],
            "mount_spaces": [{"name": "frr", "binds": ["/s/frr/run over /run/frr"]}],
            "routing": {"healthy": false, "why": "pimd: its vty socket is not there yet",
                "daemons": [{"name": "zebra", "answers": true}, {"name": "pimd", "answers": false}],
                "pushes": 2, "pim_interfaces": ["b-a", "b-r1"], "igmp_interfaces": ["b-r1"],
                "rps": [{"address": "10.0.0.1", "group": "239.0.0.0/8"}],
                "neighbors": [{"interface": "b-a", "address": "10.0.0.1", "uptime": "00:00:42"}],
                "mroutes": [
                    {"source": null, "group": "239.1.2.3", "iif": "b-a", "oil": ["b-r1"], "installed": true},
                    {"source": "10.1.0.2", "group": "239.1.2.3", "iif": "b-a", "oil": ["b-r1"], "installed": false}],
                "igmp_groups": [{"interface": "b-r1", "group": "239.1.2.3"}]}});
        let t = status_text(&v);
        for line in [
            "frr                  the host's network, private mounts: /s/frr/run over /run/frr",
            "routing (FRR): unhealthy (pimd: its vty socket is not there yet)",
            "daemons: zebra answers, pimd silent; configuration pushed 2 time(s)",
            "PIM on: b-a b-r1; IGMP on: b-r1",
            "RP 10.0.0.1 for 239.0.0.0/8",
            "neighbour 10.0.0.1 on b-a (up 00:00:42)",
            "(*, 239.1.2.3) in b-a -> b-r1\n",
            "(10.1.0.2, 239.1.2.3) in b-a -> b-r1 (not installed)",
            "IGMP receivers of 239.1.2.3 on b-r1",
        ] {
            assert!(t.contains(line), "{line:?} not in:\n{t}");
        }
    }

    #[test]
    fn status_says_when_the_translator_is_open_to_anyone() {
        let mut v = serde_json::json!({
            "site": "lab", "pid": 1, "healthy": true, "uptime_ms": 0, "state_dir": "/run/x",
            "children": [],
            "translate": {"healthy": true, "open_to_anyone": null},
        });
        assert!(!status_text(&v).contains("open to anyone"));
        v["translate"]["open_to_anyone"] =
            crate::translate::open_to_anyone("192.0.2.1:9001".parse().unwrap(), &[]).into();
        let t = status_text(&v);
        assert!(
            t.contains("translate: warning: the translator on 192.0.2.1:9001 is open to anyone"),
            "{t}"
        );
    }

    #[test]
    fn status_says_why_a_part_is_unhealthy_or_missing() {
        let v = serde_json::json!({
            "site": "lab", "pid": 1, "healthy": false, "uptime_ms": 0, "state_dir": "/run/x",
            "addresses": {"state": "tentative", "pending": ["fd00::1 on v1 in n1"],
                          "missing": ["fd00::2/64 on v1 in n1: not on the link"]},
            "children": [
                {"name": "mroute", "health": "unhealthy", "pid": 7, "restarts": 0,
                 "user": "appliance", "caps": ["CAP_NET_ADMIN", "CAP_NET_RAW"],
                 "why": "no VIF/MIF in the kernel for br-b (Ipv4)"},
                {"name": "headend", "health": "missing", "pid": null, "restarts": 0,
                 "why": "this build of appliance has no part \"headend\""},
                {"name": "translate", "health": "down", "pid": null, "restarts": 2,
                 "last_exit": "exit code 69"},
            ],
        });
        let t = status_text(&v);
        assert!(t.contains("UNHEALTHY"), "{t}");
        assert!(t.contains("addresses: tentative"), "{t}");
        assert!(t.contains("still tentative: fd00::1"), "{t}");
        assert!(t.contains("missing: fd00::2/64 on v1 in n1"), "{t}");
        assert!(t.contains("why: no VIF/MIF in the kernel for br-b"), "{t}");
        assert!(
            t.contains("missing") && t.contains("no part \"headend\""),
            "{t}"
        );
        assert!(t.contains("last exit: exit code 69"), "{t}");
        assert!(
            t.contains("as appliance; caps CAP_NET_ADMIN,CAP_NET_RAW"),
            "{t}"
        );
    }
}
