//! Multicast telemetry to real local daemons: a "switch" host sends a syslog line and an
//! SNMP trap to groups; `appliance monitor` joins them (and rewrites the trap to another
//! address and port with the nft table of the plan); rsyslogd and snmptrapd record the
//! switch's own address.

mod common;

use std::time::Duration;

use common::{Background, Sandbox, read, require_program, wait_until};

const T: Duration = Duration::from_secs(15);

fn site(sb: &Sandbox) -> std::path::PathBuf {
    let state = sb.path("state");
    sb.write(
        "site.toml",
        &format!(
            r#"
[site]
name = "mon"
state_dir = "{}"

[[monitor]]
name = "syslog"
interface = "br-mgmt"
group = "234.192.168.1"
port = 514
deliver = "0.0.0.0:514"

[[monitor]]
name = "traps"
interface = "br-mgmt"
group = "234.192.168.2"
port = 162
deliver = "127.0.0.1:1162"
"#,
            state.display()
        ),
    )
}

fn lab() -> Sandbox {
    let sb = Sandbox::new();
    sb.bridge("br-mgmt");
    sb.sh("ip addr add 10.9.0.1/24 dev br-mgmt");
    sb.host("sw", "br-mgmt", &["10.9.0.2/24"]);
    sb.sh("ip -n sw route add default via 10.9.0.1");
    sb
}

fn monitor(sb: &Sandbox) -> Background {
    let path = site(sb);
    let mut c = sb.appliance();
    c.arg("monitor").arg(&path).env("APPLIANCE_LOG", "info");
    let mut bg = Background::spawn(sb, "monitor", c);
    bg.wait_for("monitor syslog: joined 234.192.168.1", T);
    bg.wait_for("monitor traps: joined 234.192.168.2", T);
    bg
}

#[test]
fn rsyslogd_and_snmptrapd_record_the_switch_address() {
    for p in ["rsyslogd", "snmptrapd", "snmptrap", "logger"] {
        require_program(p);
    }
    let sb = lab();
    let mut mon = monitor(&sb);
    // rsyslogd on the wildcard address and the same port: the join alone delivers.
    let syslog_out = sb.path("syslog.log");
    let conf = sb.write(
        "rsyslog.conf",
        &format!(
            "global(workDirectory=\"{dir}\")\n\
             module(load=\"imudp\")\n\
             input(type=\"imudp\" port=\"514\")\n\
             template(name=\"from\" type=\"string\" string=\"%fromhost-ip% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{out}\" template=\"from\")\n",
            dir = sb.dir.display(),
            out = syslog_out.display()
        ),
    );
    let pid = sb.path("rsyslogd.pid");
    let _rsyslog = Background::spawn(&sb, "rsyslogd", {
        let mut c = sb.cmd("rsyslogd");
        c.arg("-n").arg("-f").arg(&conf).arg("-i").arg(&pid);
        c
    });
    // snmptrapd on 127.0.0.1:1162: the monitor's nft table rewrites 234.192.168.2:162 to it.
    let traps = sb.path("traps.log");
    let tconf = sb.write("snmptrapd.conf", "disableAuthorization yes\n");
    let _snmptrapd = Background::spawn(&sb, "snmptrapd", {
        let mut c = sb.cmd("env");
        c.arg("MIBS=")
            .arg(format!("SNMP_PERSISTENT_DIR={}", sb.dir.display()))
            .args(["snmptrapd", "-f", "-Lf"])
            .arg(&traps)
            .arg("-C")
            .arg("-c")
            .arg(&tconf)
            .arg("-p")
            .arg(sb.path("snmptrapd.pid"))
            .arg("udp:127.0.0.1:1162");
        c
    });
    wait_until("rsyslogd and snmptrapd to listen", T, || {
        let ss = sb.sh("ss -ulnH");
        (ss.contains(":514 ") && ss.contains("127.0.0.1:1162")).then_some(())
    });
    // The rules and sysctl of the plan are in place.
    let ruleset = sb.sh("nft list table inet appliance-mon-monitor");
    assert!(ruleset.contains("ip daddr set 127.0.0.1"), "{ruleset}");
    assert_eq!(
        sb.sh("cat /proc/sys/net/ipv4/conf/br-mgmt/route_localnet")
            .trim(),
        "1"
    );
    // Datagrams may be sent before a daemon is fully ready: send again until seen.
    let line = wait_until("rsyslogd to log the switch's line", T, || {
        sb.sh("ip netns exec sw logger -d -n 234.192.168.1 -P 514 'link up on port 7'");
        read(&syslog_out)
            .lines()
            .find(|l| l.contains("link up on port 7"))
            .map(str::to_string)
    });
    assert!(
        line.starts_with("10.9.0.2 "),
        "rsyslog did not name the switch: {line}"
    );
    let trap = wait_until("snmptrapd to log the trap", T, || {
        sb.sh(
            "ip netns exec sw env MIBS= snmptrap -v 2c -c public 234.192.168.2:162 '' \
             1.3.6.1.6.3.1.1.5.3 1.3.6.1.2.1.2.2.1.1.7 i 7",
        );
        let t = read(&traps);
        t.contains("6.3.1.1.5.3").then_some(t)
    });
    assert!(
        trap.contains("[10.9.0.2]"),
        "snmptrapd did not name the switch:\n{trap}"
    );
    // SIGTERM undoes the table and the sysctl.
    let st = mon.signal(15);
    assert!(st.success(), "{st}\n{}", mon.logs());
    let out = sb.try_sh("nft list table inet appliance-mon-monitor");
    assert!(!out.status.success(), "the monitor table is still there");
    assert_eq!(
        sb.sh("cat /proc/sys/net/ipv4/conf/br-mgmt/route_localnet")
            .trim(),
        "0"
    );
}

#[test]
fn memberships_come_back_when_the_interface_is_recreated() {
    let sb = lab();
    let mut mon = monitor(&sb);
    let joined = |sb: &Sandbox| sb.sh("ip maddr show dev br-mgmt").contains("234.192.168.1");
    assert!(joined(&sb));
    sb.sh("ip link del br-mgmt");
    mon.wait_for("interface br-mgmt is gone", T);
    sb.bridge("br-mgmt");
    wait_until("the group to be joined again on the new br-mgmt", T, || {
        joined(&sb).then_some(())
    });
    assert!(sb.sh("ip maddr show dev br-mgmt").contains("234.192.168.2"));
    // A new interface starts from the defaults: the monitor sets route_localnet again.
    wait_until("route_localnet on the new br-mgmt", T, || {
        (sb.sh("cat /proc/sys/net/ipv4/conf/br-mgmt/route_localnet")
            .trim()
            == "1")
            .then_some(())
    });
}
