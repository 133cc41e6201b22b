//! The supervisor under `up`, for real, as root in a sandbox: the parts that face the
//! network run unprivileged with only their capabilities, every part has a health check
//! that says why it fails, and `down` stops dependents before what they run after.

mod common;

use std::time::Duration;

use common::{Sandbox, Up, wait_until};

/// Every part of the appliance's own that faces the network: mroute, translate, monitor
/// and the headend, on bridges the test makes.
const PARTS: &str = r#"
[site]
name = "lab"
[[vlan]]
name = "a"
bridge = "br-a"
trust = "trusted"
[[vlan]]
name = "b"
bridge = "br-b"
trust = "trusted"
[multicast]
[[multicast.route]]
from = "br-a"
group = "239.1.0.0/16"
to = ["br-b"]
[translator]
unicast = "127.0.0.1:19001"
space = "232.1.0.0/16"
port = 19002
interface = "br-a"
sap = false
[headend]
interfaces = ["br-a"]
prefix = "fd20:1::/64"
querier = "never"
[[headend.service]]
number = 1
name = "tone"
command = "ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}"
[[monitor]]
name = "syslog"
interface = "br-a"
group = "234.192.168.1"
port = 19514
deliver = "127.0.0.1:19515"
"#;

/// A VLAN with its private dbus and the avahi that runs after it.
const ONE_VLAN: &str = r#"
[site]
name = "lab"
[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"
"#;

fn wait_healthy(sb: &Sandbox, up: &mut Up, within: Duration) -> serde_json::Value {
    let mut last = None;
    wait_until("the site to be healthy", within, || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!(
                "appliance up exited ({st}) before the site was healthy:\n{}",
                up.log()
            );
        }
        match sb.status_json() {
            Some((0, v)) => Some(v),
            Some((_, v)) => {
                let now: Vec<String> = v["children"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} {} {}", c["name"], c["health"], c["why"]))
                    .collect();
                if last.as_ref() != Some(&now) {
                    eprintln!("not healthy yet: {now:?}");
                    last = Some(now);
                }
                None
            }
            None => None,
        }
    })
}

/// The capability mask of a list of names (`CAP_NET_ADMIN` …), as /proc shows masks.
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| {
            let i: u64 = match c.as_str() {
                "CAP_CHOWN" => 0,
                "CAP_KILL" => 5,
                "CAP_SETGID" => 6,
                "CAP_SETUID" => 7,
                "CAP_NET_BIND_SERVICE" => 10,
                "CAP_NET_ADMIN" => 12,
                "CAP_NET_RAW" => 13,
                other => panic!("the test does not know {other}"),
            };
            1 << i
        })
        .fold(0, |a, b| a | b)
}

/// One field of /proc/PID/status.
fn proc_field(pid: u64, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn hex(pid: u64, field: &str) -> u64 {
    u64::from_str_radix(&proc_field(pid, field), 16).expect("a hex mask")
}

#[test]
fn every_network_facing_part_runs_unprivileged_with_only_its_capabilities() {
    common::require_root();
    common::require_program("ffmpeg");
    let sb = Sandbox::new();
    sb.bridge("br-a");
    sb.bridge("br-b");
    let site = sb.write("site.toml", PARTS);
    let mut up = Up::start(&sb, &site);
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(30));
    let uid = nix_uid("appliance");
    let mut seen = vec![];
    for c in v["children"].as_array().expect("children") {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["user"], "appliance", "{name} in status: {c}");
        assert_eq!(c["health"], "healthy", "{name}: {c}");
        let caps: Vec<String> = serde_json::from_value(c["caps"].clone()).unwrap();
        let want = mask(&caps);
        let pid = c["pid"].as_u64().expect("pid");
        let uids: Vec<u32> = proc_field(pid, "Uid")
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(uids, [uid; 4], "{name}: Uid (real, effective, saved, fs)");
        assert_eq!(
            proc_field(pid, "Groups"),
            "",
            "{name}: supplementary groups"
        );
        assert_eq!(proc_field(pid, "NoNewPrivs"), "1", "{name}");
        assert_eq!(hex(pid, "CapBnd"), want, "{name}: CapBnd");
        let eff = hex(pid, "CapEff");
        assert_eq!(eff & !want, 0, "{name}: CapEff {eff:x} beyond {caps:?}");
        if name == "translate" {
            // It sets its forced buffers with CAP_NET_ADMIN, then drops everything.
            assert_eq!(eff, 0, "translate keeps capabilities after binding");
        } else {
            assert_eq!(eff, want, "{name}: CapEff");
            assert_eq!(hex(pid, "CapAmb"), want, "{name}: CapAmb");
        }
        seen.push(name.to_string());
    }
    seen.sort();
    assert_eq!(seen, ["headend", "monitor", "mroute", "translate"]);
    // `plan` says so too.
    let out = sb.appliance().arg("plan").arg(&site).output().unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("mroute             in host; as appliance; caps CAP_NET_ADMIN,CAP_NET_RAW"),
        "{plan}"
    );
    assert_eq!(up.stop(), Some(0), "{}", up.log());
}

fn nix_uid(user: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .expect("id");
    assert!(
        out.status.success(),
        "user {user} does not exist: run scripts/install-deps"
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_part_that_loses_what_the_plan_asks_is_unhealthy_and_status_says_why() {
    common::require_root();
    common::require_program("ffmpeg");
    let sb = Sandbox::new();
    sb.bridge("br-a");
    sb.bridge("br-b");
    let site = sb.write("site.toml", PARTS);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up, Duration::from_secs(30));
    // The route's output bridge goes: mroute keeps running, without its VIF.
    sb.sh("ip link del br-b");
    let v = wait_until("mroute to be unhealthy", Duration::from_secs(15), || {
        let (code, v) = sb.status_json()?;
        let m = v["children"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "mroute")?
            .clone();
        (code == 1 && m["health"] == "unhealthy").then_some(m)
    });
    assert!(v["why"].as_str().unwrap_or("").contains("br-b"), "{v}");
    let out = sb.appliance().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("why: no VIF/MIF in the kernel for br-b"),
        "{text}"
    );
    // Back: healthy again.
    sb.bridge("br-b");
    wait_healthy(&sb, &mut up, Duration::from_secs(15));
    assert_eq!(up.stop(), Some(0), "{}", up.log());
}

#[test]
fn down_stops_dependents_before_what_they_run_after() {
    common::require_root();
    common::require_program("avahi-daemon");
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write("site.toml", ONE_VLAN);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up, Duration::from_secs(30));
    assert_eq!(up.stop(), Some(0), "{}", up.log());
    let log = up.log();
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"))
    };
    assert!(at("stopping avahi@iot") < at("avahi@iot: stopped"), "{log}");
    assert!(
        at("avahi@iot: stopped") < at("stopping dbus@iot"),
        "dbus was stopped before its avahi was gone:\n{log}"
    );
    assert!(at("stopping dbus@iot") < at("dbus@iot: stopped"), "{log}");
}
