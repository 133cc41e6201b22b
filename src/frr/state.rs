//! What FRR says, read from the JSON its `show … json` commands print (FRR 8.4), and what
//! that means for health. Pure functions: anything FRR prints (or a damaged answer) gives
//! a value, never a panic; keys that are not what we look for are skipped.

use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::{Value, json};

use crate::plan::routing::FrrPlan;

/// A PIM neighbour (`show ip pim neighbor json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbor {
    pub interface: String,
    pub address: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One multicast route of pimd (`show ip mroute json`): (S,G), or (*,G) with no source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mroute {
    /// None: (*,G).
    pub source: Option<Ipv4Addr>,
    pub group: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    pub oil: Vec<String>,
    pub installed: bool,
}

/// A group an IGMP receiver joined (`show ip igmp groups json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IgmpGroup {
    pub interface: String,
    pub group: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// A rendezvous point pimd knows (`show ip pim rp-info json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpInfo {
    pub address: String,
    pub group: String,
}

/// What pimd's `show running-config` says it was given: `ip pim` and `ip igmp` per
/// interface and the static RPs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Configured {
    pub pim: Vec<String>,
    pub igmp: Vec<String>,
    /// (address, group) as written.
    pub rps: Vec<(String, String)>,
}

/// Reads pimd's running configuration (FRR's own text format: `interface NAME` blocks
/// ended by `exit`, one-space indented lines inside).
pub fn configured(text: &str) -> Configured {
    let mut c = Configured::default();
    let mut iface: Option<String> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["interface", name, ..] => iface = Some(name.to_string()),
            ["exit"] | ["!"] => iface = None,
            ["ip", "pim"] => c.pim.extend(iface.clone()),
            ["ip", "igmp"] => c.igmp.extend(iface.clone()),
            ["ip", "pim", "rp", addr, group, ..] if iface.is_none() => {
                c.rps.push((addr.to_string(), group.to_string()));
            }
            _ => {}
        }
    }
    c
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Each daemon, and why it did not answer over its vty socket (None: it answered).
    pub daemons: Vec<(String, Option<String>)>,
    /// What pimd was given (None: not read).
    pub configured: Option<Configured>,
    pub pim_interfaces: Vec<String>,
    pub igmp_interfaces: Vec<String>,
    pub rps: Vec<RpInfo>,
    pub neighbors: Vec<Neighbor>,
    pub mroutes: Vec<Mroute>,
    pub igmp_groups: Vec<IgmpGroup>,
    /// Questions pimd did not answer (its state may be incomplete).
    pub errors: Vec<String>,
}

impl Observed {
    /// Nothing asked yet: `waiting` have no vty socket.
    pub fn waiting(daemons: &[String], waiting: &[String]) -> Observed {
        Observed {
            daemons: daemons
                .iter()
                .map(|d| {
                    let why = waiting
                        .contains(d)
                        .then(|| format!("its vty socket /run/frr/{d}.vty is not there yet"));
                    (d.clone(), why)
                })
                .collect(),
            ..Default::default()
        }
    }

    pub fn all_answer(&self) -> bool {
        !self.daemons.is_empty() && self.daemons.iter().all(|(_, e)| e.is_none())
    }
}

fn objects(v: &Value) -> impl Iterator<Item = (&String, &serde_json::Map<String, Value>)> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_object().map(|o| (k, o)))
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// The interfaces of `show ip pim interface json` / `show ip igmp interface json`: an
/// object per interface name (pimd's own `pimreg` left out).
pub fn interfaces(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = objects(v)
        .map(|(k, _)| k.clone())
        .filter(|k| k != "pimreg")
        .collect();
    out.sort();
    out
}

/// The interfaces of `show ip igmp interface json` where IGMP runs: pimd lists every PIM
/// interface there, those without `ip igmp` as `"mtraceOnly": true`.
pub fn igmp_interfaces(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = objects(v)
        .filter(|(k, o)| *k != "pimreg" && o.get("mtraceOnly") != Some(&Value::Bool(true)))
        .map(|(k, _)| k.clone())
        .collect();
    out.sort();
    out
}

/// `{"ADDRESS": [{"rpAddress", "group", …}, …]}`.
pub fn rps(v: &Value) -> Vec<RpInfo> {
    let mut out = vec![];
    for (addr, list) in v.as_object().into_iter().flatten() {
        for e in list.as_array().into_iter().flatten() {
            if let Some(group) = e.get("group").and_then(text) {
                out.push(RpInfo {
                    address: e.get("rpAddress").and_then(text).unwrap_or(addr.clone()),
                    group,
                });
            }
        }
    }
    out
}

/// `{"IFACE": {"ADDRESS": {"upTime", "holdTime", …}}}`.
pub fn neighbors(v: &Value) -> Vec<Neighbor> {
    let mut out = vec![];
    for (iface, list) in objects(v) {
        for (addr, n) in list {
            let Ok(address) = addr.parse() else { continue };
            out.push(Neighbor {
                interface: iface.clone(),
                address,
                uptime: n.get("upTime").and_then(text),
                expires: n.get("holdTime").and_then(text),
            });
        }
    }
    out
}

/// `{"GROUP": {"SOURCE" or "*": {"iif", "installed", "oil": {"IFACE": {…}}}}}`.
pub fn mroutes(v: &Value) -> Vec<Mroute> {
    let mut out = vec![];
    for (group, sources) in objects(v) {
        let Ok(group) = group.parse() else { continue };
        for (source, e) in sources {
            let source = match source.as_str() {
                "*" => None,
                s => match s.parse() {
                    Ok(a) => Some(a),
                    Err(_) => continue,
                },
            };
            let Some(e) = e.as_object() else { continue };
            let oil = e
                .get("oil")
                .and_then(Value::as_object)
                .map(|o| o.keys().filter(|k| *k != "pimreg").cloned().collect())
                .unwrap_or_default();
            out.push(Mroute {
                source,
                group,
                iif: e.get("iif").and_then(text),
                oil,
                installed: e
                    .get("installed")
                    .is_some_and(|i| i.as_u64().is_some_and(|n| n > 0) || i == true),
            });
        }
    }
    out.sort_by_key(|m| (m.group, m.source));
    out
}

/// `{"IFACE": {"groups": [{"group", "version", …}]}, "totalGroups": N, …}`.
pub fn igmp_groups(v: &Value) -> Vec<IgmpGroup> {
    let mut out = vec![];
    for (iface, o) in objects(v) {
        for g in o
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(Ok(group)) = g.get("group").and_then(Value::as_str).map(str::parse) else {
                continue;
            };
            out.push(IgmpGroup {
                interface: iface.clone(),
                group,
                version: g.get("version").and_then(Value::as_u64),
            });
        }
    }
    out
}

/// What of the plan's configuration pimd was not given: PIM and IGMP on each
/// interface, each RP. Empty: it is in place (pushing it again would change nothing).
pub fn missing(frr: &FrrPlan, o: &Observed) -> Vec<String> {
    let Some(c) = &o.configured else {
        return vec!["pimd's running configuration (not read)".into()];
    };
    let mut out = vec![];
    for i in &frr.pim {
        if !c.pim.contains(i) {
            out.push(format!("PIM on {i}"));
        }
    }
    for i in &frr.igmp {
        if !c.igmp.contains(i) {
            out.push(format!("IGMP on {i}"));
        }
    }
    for rp in &frr.rps {
        let (a, g) = (rp.address.to_string(), rp.group.to_string());
        if !c.rps.iter().any(|(ca, cg)| *ca == a && *cg == g) {
            out.push(format!("RP {a} for {g}"));
        }
    }
    out
}

/// Configured interfaces pimd does not run PIM or IGMP on (one without an IPv4 address,
/// or gone), and RPs it does not know.
pub fn inactive(frr: &FrrPlan, o: &Observed) -> Vec<String> {
    let mut out = vec![];
    for i in &frr.pim {
        if !o.pim_interfaces.contains(i) {
            out.push(format!("PIM is not active on {i}"));
        }
    }
    for i in &frr.igmp {
        if !o.igmp_interfaces.contains(i) {
            out.push(format!(
                "IGMP is not active on {i} (has it an IPv4 address?)"
            ));
        }
    }
    for rp in &frr.rps {
        let (a, g) = (rp.address.to_string(), rp.group.to_string());
        if !o.rps.iter().any(|r| r.address == a && r.group == g) {
            out.push(format!("pimd does not use RP {a} for {g}"));
        }
    }
    out
}

/// Healthy only when every daemon answers, the configuration is in place and pimd runs
/// it on every interface; else why.
pub fn health(frr: &FrrPlan, o: &Observed) -> (bool, Option<String>) {
    let silent: Vec<String> = o
        .daemons
        .iter()
        .filter_map(|(d, e)| e.as_ref().map(|e| format!("{d}: {e}")))
        .collect();
    if o.daemons.is_empty() {
        return (false, Some("FRR not asked yet".into()));
    }
    if !silent.is_empty() {
        return (false, Some(silent.join("; ")));
    }
    let missing = missing(frr, o);
    if !missing.is_empty() {
        return (
            false,
            Some(format!(
                "FRR does not have the configuration yet: no {}",
                missing.join(", no ")
            )),
        );
    }
    let inactive = inactive(frr, o);
    if !inactive.is_empty() {
        return (false, Some(inactive.join("; ")));
    }
    (true, None)
}

/// The part's answer to `{"cmd":"status"}`.
pub fn status(frr: &FrrPlan, o: &Observed, pushes: u32, push_error: Option<&str>) -> Value {
    let (healthy, why) = health(frr, o);
    json!({
        "healthy": healthy,
        "why": why,
        "daemons": o.daemons.iter().map(|(d, e)| json!({
            "name": d, "answers": e.is_none(), "error": e,
        })).collect::<Vec<_>>(),
        "pushes": pushes,
        "push_error": push_error,
        "missing": missing(frr, o),
        "inactive": inactive(frr, o),
        "pim_interfaces": o.pim_interfaces,
        "igmp_interfaces": o.igmp_interfaces,
        "rps": o.rps,
        "neighbors": o.neighbors,
        "mroutes": o.mroutes,
        "igmp_groups": o.igmp_groups,
        "errors": o.errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::Rp;

    fn plan() -> FrrPlan {
        FrrPlan {
            dir: "/s/frr".into(),
            run_dir: "/s/frr/run".into(),
            etc_dir: "/s/frr/etc".into(),
            tmp_dir: "/s/frr/tmp".into(),
            control_socket: "/s/parts/frr.sock".into(),
            daemons: vec!["zebra".into(), "staticd".into(), "pimd".into()],
            pim: vec!["up0".into(), "br-lan".into()],
            igmp: vec!["br-lan".into()],
            rps: vec![Rp {
                group: "239.0.0.0/8".parse().unwrap(),
                address: "10.0.0.1".parse().unwrap(),
            }],
            config: String::new(),
        }
    }

    /// As FRR 8.4.4 printed them here.
    const PIM_IFACES: &str = r#"{"lo":{"name":"lo","state":"up","address":"10.0.0.1"},
        "up0":{"name":"up0","state":"up"},"br-lan":{"name":"br-lan","state":"up"},
        "pimreg":{"name":"pimreg","state":"up","address":"0.0.0.0"}}"#;
    const RP_INFO: &str = r#"{"10.0.0.1":[{"rpAddress":"10.0.0.1","outboundInterface":"lo",
        "iAmRP":true,"group":"239.0.0.0/8","source":"Static","groupType":"ASM"}]}"#;

    const RUNNING: &str = "Building configuration...\n\nCurrent configuration:\n!\n\
        frr version 8.4.4\nfrr defaults traditional\nhostname b\n\
        ip pim rp 10.0.0.1 239.0.0.0/8\nservice integrated-vtysh-config\n!\n\
        interface br-lan\n ip pim\n ip igmp\n ip igmp version 3\nexit\n!\n\
        interface up0\n ip pim\nexit\n!\nend\n";

    fn answered() -> Observed {
        Observed {
            configured: Some(configured(RUNNING)),
            daemons: ["zebra", "staticd", "pimd"]
                .map(|d| (d.to_string(), None))
                .to_vec(),
            pim_interfaces: interfaces(&serde_json::from_str(PIM_IFACES).unwrap()),
            igmp_interfaces: vec!["br-lan".into()],
            rps: rps(&serde_json::from_str(RP_INFO).unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn igmp_interfaces_leave_out_pims_mtrace_only_entries() {
        // As FRR 8.4's pimd answers with `ip pim` on va and `ip pim` + `ip igmp` on vb.
        let v: Value = serde_json::from_str(
            r#"{"va":{"name":"va","state":"up","version":3,"mtraceOnly":true},
                "vb":{"name":"vb","state":"up","version":3,"querier":true},
                "pimreg":{"name":"pimreg"}}"#,
        )
        .unwrap();
        assert_eq!(igmp_interfaces(&v), ["vb"]);
        assert_eq!(interfaces(&v), ["va", "vb"]);
    }

    #[test]
    fn healthy_when_every_daemon_answers_and_the_configuration_is_there() {
        let o = answered();
        assert_eq!(o.pim_interfaces, ["br-lan", "lo", "up0"]);
        assert_eq!(health(&plan(), &o), (true, None));
    }

    #[test]
    fn the_running_configuration_is_read() {
        let c = configured(RUNNING);
        assert_eq!(c.pim, ["br-lan", "up0"]);
        assert_eq!(c.igmp, ["br-lan"]);
        assert_eq!(c.rps, [("10.0.0.1".to_string(), "239.0.0.0/8".to_string())]);
    }

    #[test]
    fn an_interface_without_igmp_running_is_unhealthy_but_needs_no_push() {
        let mut o = answered();
        o.igmp_interfaces.clear();
        assert!(missing(&plan(), &o).is_empty());
        let (ok, why) = health(&plan(), &o);
        assert!(!ok);
        assert!(why.unwrap().contains("IGMP is not active on br-lan"));
    }

    #[test]
    fn a_restarted_pimd_without_its_configuration_is_unhealthy_and_says_what_is_missing() {
        let mut o = answered();
        o.configured = Some(configured("Current configuration:\n!\nend\n"));
        let (ok, why) = health(&plan(), &o);
        assert!(!ok);
        let why = why.unwrap();
        assert!(
            why.contains("no PIM on up0, no PIM on br-lan, no IGMP on br-lan"),
            "{why}"
        );
        assert!(why.contains("RP 10.0.0.1 for 239.0.0.0/8"), "{why}");
    }

    #[test]
    fn a_daemon_that_does_not_answer_is_named() {
        let mut o = answered();
        o.daemons[2].1 = Some("its vty socket /run/frr/pimd.vty is not there yet".into());
        let (ok, why) = health(&plan(), &o);
        assert!(!ok);
        assert!(why.unwrap().starts_with("pimd: its vty socket"));
        assert!(!health(&plan(), &Observed::default()).0);
    }

    #[test]
    fn neighbors_mroutes_and_groups_are_read() {
        let n: Value = serde_json::from_str(
            r#"{"up0":{"10.1.0.2":{"interface":"up0","neighbor":"10.1.0.2",
            "upTime":"00:00:42","holdTime":"00:01:33","holdTimeMax":105,"drPriority":1}}}"#,
        )
        .unwrap();
        assert_eq!(
            neighbors(&n),
            [Neighbor {
                interface: "up0".into(),
                address: "10.1.0.2".parse().unwrap(),
                uptime: Some("00:00:42".into()),
                expires: Some("00:01:33".into()),
            }]
        );
        let m: Value = serde_json::from_str(
            r#"{"239.1.2.3":{"*":{"installed":0,"iif":"up0","oil":{"br-lan":{}}},
            "10.2.0.5":{"installed":1,"iif":"up0","oil":{"br-lan":{},"pimreg":{}}}}}"#,
        )
        .unwrap();
        let m = mroutes(&m);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].source, None);
        assert!(!m[0].installed);
        assert_eq!(m[1].source, Some("10.2.0.5".parse().unwrap()));
        assert_eq!(m[1].oil, ["br-lan"]);
        assert!(m[1].installed);
        let g: Value = serde_json::from_str(
            r#"{"totalGroups":1,"watermarkLimit":0,"br-lan":{"name":"br-lan","state":"up",
            "groups":[{"source":"10.3.0.1","group":"239.1.2.3","timer":"00:04:10",
            "sourcesCount":1,"version":3,"uptime":"00:00:05"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            igmp_groups(&g),
            [IgmpGroup {
                interface: "br-lan".into(),
                group: "239.1.2.3".parse().unwrap(),
                version: Some(3),
            }]
        );
    }

    proptest::proptest! {
        /// Whatever pimd (or a damaged pipe) prints, reading it gives a value.
        #[test]
        fn any_json_is_read_without_panic(text in ".{0,400}") {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let _ = (interfaces(&v), rps(&v), neighbors(&v), mroutes(&v), igmp_groups(&v));
            let _ = configured(&text);
        }

        /// Mutated real answers: the same.
        #[test]
        fn mutated_answers_are_read_without_panic(
            at in 0usize..200, byte in proptest::prelude::any::<u8>(), pick in 0usize..2,
        ) {
            let mut b = [PIM_IFACES, RP_INFO][pick].as_bytes().to_vec();
            let i = at % b.len();
            b[i] = byte;
            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
            let _ = (interfaces(&v), rps(&v), neighbors(&v), mroutes(&v), igmp_groups(&v));
        }
    }
}
