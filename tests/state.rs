//! What `up` changes on the host is recorded in its state directory and undone by a clean
//! stop and by `down` after a crash: sysctls and bridges' multicast snooping (unless the
//! operator changed them since). As root, each test in a sandbox of its own.

mod common;

use std::time::Duration;

use common::{Sandbox, Up, check, wait_until};

const T: Duration = Duration::from_secs(20);

/// A monitor handing a group to 127.0.0.1 on br-mgmt: `up` sets route_localnet there.
const MONITOR: &str = r#"
[site]
name = "mon"

[[monitor]]
name = "traps"
interface = "br-mgmt"
group = "234.192.168.2"
port = 162
deliver = "127.0.0.1:1162"
"#;

/// One VLAN whose bridge the forwarder joins a group on, with snooping turned off.
const SNOOPING: &str = r#"
[site]
name = "lab"

[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"

[multicast]
snooping = false

[[multicast.join]]
on = "br-iot"
group = "239.1.2.3"
"#;

fn status_code(sb: &Sandbox) -> Option<i32> {
    sb.appliance().arg("status").output().ok()?.status.code()
}

fn wait_healthy(sb: &Sandbox, up: &mut Up) {
    wait_until("the site to be healthy", T, || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!("appliance up exited ({st}):\n{}", up.log());
        }
        (status_code(sb) == Some(0)).then_some(())
    });
}

fn route_localnet(sb: &Sandbox) -> String {
    sb.sh("cat /proc/sys/net/ipv4/conf/br-mgmt/route_localnet")
        .trim()
        .to_string()
}

fn snooping(sb: &Sandbox, bridge: &str) -> u64 {
    let out = sb.sh(&format!("ip -j -d link show dev {bridge}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["linkinfo"]["info_data"]["mcast_snooping"]
        .as_u64()
        .unwrap_or_else(|| panic!("no mcast_snooping in {out}"))
}

fn monitor_lab() -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    sb.bridge("br-mgmt");
    sb.sh("ip addr add 10.9.0.1/24 dev br-mgmt");
    let site = sb.write("site.toml", MONITOR);
    (sb, site)
}

#[test]
fn route_localnet_is_put_back_by_down_after_a_crash() {
    let (sb, site) = monitor_lab();
    assert_eq!(route_localnet(&sb), "0");
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up);
    assert_eq!(route_localnet(&sb), "1");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.pid as i32, 9) };
    let _ = up.child.wait();
    // The crash left it set: nothing of the site puts it back...
    assert_eq!(route_localnet(&sb), "1");
    // ... but the record says what it was, and down puts it back.
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down after SIGKILL");
    assert_eq!(route_localnet(&sb), "0");
}

#[test]
fn multicast_snooping_is_put_back_after_a_clean_stop() {
    common::require_program("nft");
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    assert_eq!(snooping(&sb, "br-iot"), 1, "the kernel's default");
    let site = sb.write("site.toml", SNOOPING);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up);
    wait_until("snooping off on br-iot", T, || {
        (snooping(&sb, "br-iot") == 0).then_some(())
    });
    assert_eq!(up.stop(), Some(0), "{}", up.log());
    assert_eq!(snooping(&sb, "br-iot"), 1, "{}", up.log());
}

#[test]
fn a_value_the_operator_changed_since_is_left_alone_and_said_so() {
    let (sb, site) = monitor_lab();
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up);
    assert_eq!(route_localnet(&sb), "1");
    // The operator sets a value of their own while the site runs.
    sb.sh("echo 2 > /proc/sys/net/ipv4/conf/br-mgmt/route_localnet");
    assert_eq!(up.stop(), Some(0), "{}", up.log());
    assert_eq!(route_localnet(&sb), "2", "{}", up.log());
    let log = up.log();
    assert!(
        log.contains("net.ipv4.conf.br-mgmt.route_localnet is 2, not the 1 up set: changed since, left as it is"),
        "{log}"
    );
}

/// Two VLANs, so one can be dropped from the site file while it runs.
const TWO_VLANS: &str = r#"
[site]
name = "lab"

[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"

[[vlan]]
name = "guest"
bridge = "br-guest"
address = "10.20.3.2/24"
"#;

fn crashed_two_vlans() -> (Sandbox, std::path::PathBuf) {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    sb.bridge("br-guest");
    let site = sb.write("site.toml", TWO_VLANS);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up);
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.pid as i32, 9) };
    let _ = up.child.wait();
    (sb, site)
}

#[test]
fn a_corrupt_record_is_kept_and_down_finds_the_rest_by_scanning() {
    let (sb, site) = crashed_two_vlans();
    sb.sh("truncate -s 20 /run/appliance/lab/state.json");
    // The operator dropped a VLAN from the file meanwhile: the plan no longer names it.
    std::fs::write(
        &site,
        TWO_VLANS
            .split("[[vlan]]\nname = \"guest\"")
            .next()
            .unwrap(),
    )
    .unwrap();
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down with a corrupt record");
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("is corrupt"), "{err}");
    assert!(err.contains("state.json.corrupt"), "{err}");
    let netns = sb.sh("ip netns list");
    assert!(netns.trim().is_empty(), "namespaces left: {netns}");
    let kept = sb.sh("wc -c < /run/appliance/lab/state.json.corrupt");
    assert_eq!(kept.trim(), "20");
}

/// A new `up` after a crash whose record is corrupt removes the leftovers first, as `down`
/// does (the plan plus a scan), instead of building over them.
#[test]
fn up_after_a_crash_with_a_corrupt_record_removes_the_leftovers_first() {
    let (sb, site) = crashed_two_vlans();
    sb.sh("truncate -s 20 /run/appliance/lab/state.json");
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up);
    let logs = up.log();
    assert!(logs.contains("is corrupt"), "{logs}");
    assert!(logs.contains("removing what the plan and a scan"), "{logs}");
    let kept = sb.sh("wc -c < /run/appliance/lab/state.json.corrupt");
    assert_eq!(kept.trim(), "20");
    up.stop();
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down");
}

#[test]
fn the_record_stays_until_a_teardown_without_errors() {
    let (sb, site) = crashed_two_vlans();
    // nft cannot run: removing the tables fails, so the record must stay.
    let failed = sb
        .cmd("env")
        .arg("PATH=/nonexistent")
        .arg(common::appliance_bin())
        .arg("down")
        .arg(&site)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("nft"),
        "{failed:?}"
    );
    let rec = sb.sh("cat /run/appliance/lab/state.json");
    assert!(rec.contains("lab-guest"), "{rec}");
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down again");
    assert!(
        !sb.try_sh("test -e /run/appliance/lab/state.json")
            .status
            .success()
    );
}

#[test]
fn up_refuses_a_state_dir_others_can_write_or_own() {
    let sb = Sandbox::new();
    sb.bridge("br-mgmt");
    for (name, setup, says) in [
        ("open", "chmod 0777", "writable by its group or by anyone"),
        ("theirs", "chown 65534", "owned by uid 65534"),
    ] {
        let dir = sb.path(name);
        std::fs::create_dir(&dir).unwrap();
        sb.sh(&format!("chmod 0700 {0} && {setup} {0}", dir.display()));
        let before = sb.sh(&format!("stat -c '%a %u' {}", dir.display()));
        let site = sb.write(
            &format!("{name}.toml"),
            &MONITOR.replace(
                "name = \"mon\"",
                &format!("name = \"mon\"\nstate_dir = \"{}\"", dir.display()),
            ),
        );
        let mut up = Up::start(&sb, &site);
        let code = wait_until("up to refuse the state directory", T, || {
            up.child.try_wait().unwrap().map(|st| st.code())
        });
        let err = up.log();
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(says), "{err}");
        // Nothing was changed: not the directory, not the host.
        assert_eq!(sb.sh(&format!("stat -c '%a %u' {}", dir.display())), before);
        assert_eq!(route_localnet(&sb), "0");
    }
}

// SAFETY: this declaration matches the C prototype of kill(2) (integers in, an integer out).
unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
