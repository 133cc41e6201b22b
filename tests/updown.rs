//! `up`, `down`, `status` and `services` for real, as root, each test in a sandbox of its
//! own: VLAN namespaces with private dbus and avahi, reflectors, DHCP, restarts, teardown.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ClientAvahi, Sandbox, Up, check, wait_until};

/// Site with one untrusted VLAN on a bridge the test makes.
const ONE_VLAN: &str = r#"
[site]
name = "lab"
[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"
"#;

fn wait_healthy(sb: &Sandbox, up: &mut Up, within: Duration) -> serde_json::Value {
    wait_until("the site to be healthy", within, || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!(
                "appliance up exited ({st}) before the site was healthy:\n{}",
                up.log()
            );
        }
        match sb.status_json() {
            Some((0, v)) => Some(v),
            _ => None,
        }
    })
}

fn child_pid(v: &serde_json::Value, name: &str) -> Option<u32> {
    v["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?["pid"]
        .as_u64()
        .map(|p| p as u32)
}

fn child_field(v: &serde_json::Value, name: &str, field: &str) -> serde_json::Value {
    v["children"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .map(|c| c[field].clone())
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Asserts nothing of site `lab` is left in the sandbox: namespaces, links other than
/// `keep`, mounts, state directory, and none of `pids` alive.
fn assert_nothing_left(sb: &Sandbox, keep: &[&str], pids: &[u32]) {
    let netns = sb.sh("ip netns list");
    assert!(netns.trim().is_empty(), "namespaces left: {netns}");
    let links = sb.sh("ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1");
    for l in links.lines() {
        assert!(
            l == "lo" || keep.contains(&l),
            "link {l} left; all links:\n{links}"
        );
    }
    let mounts = sb.sh("cat /proc/mounts");
    for m in mounts.lines() {
        assert!(
            !m.contains("/run/netns/") && !m.contains("/run/appliance"),
            "mount left: {m}"
        );
    }
    let state = sb.sh("ls -A /run/appliance 2>/dev/null || true");
    assert!(state.trim().is_empty(), "state directory left: {state}");
    wait_until(
        "the site's processes to be gone",
        Duration::from_secs(5),
        || (!pids.iter().any(|p| alive(*p))).then_some(()),
    );
}

#[test]
fn mdns_stays_in_its_vlan_and_a_reflector_passes_only_listed_types() {
    let sb = Sandbox::new();
    for b in ["br-trusted", "br-iot", "br-guest"] {
        sb.bridge(b);
    }
    let site = sb.write(
        "site.toml",
        r#"
[site]
name = "lab"
[[vlan]]
name = "trusted"
bridge = "br-trusted"
trust = "trusted"
[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"
[[vlan]]
name = "guest"
bridge = "br-guest"
address = "10.20.3.2/24"
[[reflector]]
name = "media"
vlans = ["trusted", "iot"]
services = ["_raop._tcp"]
addresses = { trusted = "10.20.1.3/24", iot = "10.20.2.3/24" }
"#,
    );
    sb.host("iot1", "br-iot", &["10.20.2.10/24"]);
    sb.host("iot2", "br-iot", &["10.20.2.11/24"]);
    sb.host("guest1", "br-guest", &["10.20.3.10/24"]);
    sb.host("trust1", "br-trusted", &["10.20.1.10/24"]);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let iot1 = ClientAvahi::start(&sb, "iot1");
    let iot2 = ClientAvahi::start(&sb, "iot2");
    let guest1 = ClientAvahi::start(&sb, "guest1");
    let trust1 = ClientAvahi::start(&sb, "trust1");
    let _speaker = iot1.publish("Speaker", "_raop._tcp", 7000);
    let _printer = iot1.publish("Printer", "_ipp._tcp", 631);
    // A host on an untrusted VLAN names its service with terminal escapes and a newline.
    let _hostile = iot1.publish("Evil\u{1b}[2J\nline", "_http._tcp", 8080);

    let d = Duration::from_secs(20);
    wait_until("iot2 to see the printer and the speaker", d, || {
        (iot2.sees("_ipp._tcp", "Printer") && iot2.sees("_raop._tcp", "Speaker")).then_some(())
    });
    wait_until("appliance services to list the printer on iot", d, || {
        let out = sb.appliance().arg("services").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains("iot\t_ipp._tcp\tPrinter") && text.contains("iot\t_raop._tcp\tSpeaker"))
            .then_some(text)
    });
    // `services` prints it escaped: one line, no control character reaches the terminal.
    let text = wait_until("appliance services to list the hostile name", d, || {
        let out = sb.appliance().arg("services").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("iot\t_http._tcp\tEvil\\x1b[2J\\x0aline")
            .then_some(text)
    });
    assert!(
        !text.contains(|c: char| c.is_control() && c != '\n' && c != '\t'),
        "{text:?}"
    );
    wait_until(
        "the trusted VLAN to see the listed type (_raop._tcp)",
        d,
        || trust1.sees("_raop._tcp", "Speaker").then_some(()),
    );
    // The positive checks above bound how long mDNS needs here; by now, an unlisted type
    // or another VLAN would have seen it too.
    let seen_trusted = trust1.browse();
    assert!(
        !seen_trusted.iter().any(|(k, _)| k == "_ipp._tcp"),
        "an unlisted type crossed the reflector: {seen_trusted:?}"
    );
    let seen_guest = guest1.browse();
    assert!(
        !seen_guest
            .iter()
            .any(|(_, n)| n == "Printer" || n == "Speaker"),
        "a service crossed into a VLAN without a reflector: {seen_guest:?}"
    );
    let out = sb.appliance().arg("services").output().expect("services");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("guest\t_ipp._tcp"),
        "guest's avahi saw iot's printer:\n{text}"
    );
}

#[test]
fn killed_avahi_and_dbus_are_restarted_and_healthy_again() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write("site.toml", ONE_VLAN);
    let mut up = Up::start(&sb, &site);
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));

    let avahi = child_pid(&v, "avahi@iot").expect("avahi pid");
    // Children keep only the plan's capabilities: avahi CHOWN+SETGID+SETUID, dbus SETGID+SETUID.
    assert_eq!(cap_bounding(avahi), 0xc1);
    assert_eq!(cap_bounding(child_pid(&v, "dbus@iot").unwrap()), 0xc0);
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(avahi as i32, 9) };
    let v = wait_until(
        "avahi to be restarted and healthy",
        Duration::from_secs(10),
        || {
            let (code, v) = sb.status_json()?;
            (code == 0 && child_pid(&v, "avahi@iot").is_some_and(|p| p != avahi)).then_some(v)
        },
    );
    assert_eq!(child_field(&v, "avahi@iot", "restarts"), 1);
    assert_eq!(child_field(&v, "avahi@iot", "health"), "healthy");

    let dbus = child_pid(&v, "dbus@iot").expect("dbus pid");
    let avahi = child_pid(&v, "avahi@iot").expect("avahi pid");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(dbus as i32, 9) };
    let v = wait_until(
        "dbus, then its avahi, to be restarted and healthy",
        Duration::from_secs(10),
        || {
            let (code, v) = sb.status_json()?;
            (code == 0
                && child_pid(&v, "dbus@iot").is_some_and(|p| p != dbus)
                && child_pid(&v, "avahi@iot").is_some_and(|p| p != avahi))
            .then_some(v)
        },
    );
    assert_eq!(child_field(&v, "dbus@iot", "restarts"), 1);
    let text = sb.appliance().arg("status").output().expect("status");
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("healthy"), "{text}");
    let log = up.log();
    assert!(log.contains("dbus@iot: died"), "{log}");
    // avahi may die of losing its bus before the supervisor stops it: either way its new
    // instance starts only once the new dbus is ready.
    let dbus_ready = log
        .rfind("dbus@iot: running (pid")
        .expect("dbus ready line");
    let avahi_start = log
        .rfind("avahi@iot: started (pid")
        .expect("avahi start line");
    assert!(
        avahi_start > dbus_ready,
        "avahi restarted before dbus:\n{log}"
    );
}

/// The bounding capability set of a process.
fn cap_bounding(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn dhcp_lease_comes_from_the_bridge_and_the_host_is_untouched() {
    common::require_program("dnsmasq");
    common::require_program("dhclient");
    let sb = Sandbox::new();
    sb.bridge("br-lan");
    sb.sh("ip addr add 10.30.0.1/24 dev br-lan");
    let leases = sb.path("dnsmasq.leases");
    let mut dns = sb.cmd("dnsmasq");
    dns.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--interface=br-lan",
        "--bind-interfaces",
        "--except-interface=lo",
        "--dhcp-range=10.30.0.10,10.30.0.50,1h",
        "--port=0",
        "--pid-file",
        "--dhcp-option=option:dns-server,10.30.0.1",
    ])
    .arg(format!("--dhcp-leasefile={}", leases.display()))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _dnsmasq = common::Group::spawn(dns, "dnsmasq");
    let before = host_files();
    let site = sb.write(
        "site.toml",
        "[site]\nname = \"lab\"\n[[vlan]]\nname = \"lan\"\nbridge = \"br-lan\"\naddress = \"dhcp\"\n",
    );
    let mut up = Up::start(&sb, &site);
    let addr = wait_until(
        "a DHCP lease on lan in lab-lan",
        Duration::from_secs(20),
        || {
            let out = sb.try_sh("ip -n lab-lan -4 -o addr show dev lan");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("10.30.0.").then_some(text)
        },
    );
    assert!(addr.contains("/24"), "{addr}");
    let lease = common::read(&leases);
    let mac = sb.sh("ip -n lab-lan -o link show dev lan | grep -o 'link/ether [0-9a-f:]*'");
    let mac = mac.trim().trim_start_matches("link/ether ").to_string();
    assert!(lease.contains(&mac), "dnsmasq leases {lease:?} lack {mac}");
    // The namespace has its own host name: the router's never goes out on the VLAN.
    assert!(
        lease.contains(" lab-lan "),
        "dnsmasq leases {lease:?} lack host name lab-lan"
    );
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let dhcp = child_pid(&v, "dhcp@lan").expect("dhclient pid");
    // Its resolv.conf and leases live on the private mounts.
    let resolv = format!("/proc/{dhcp}/root/etc/resolv.conf");
    wait_until(
        "dhclient to write resolv.conf",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&resolv).ok()?;
            text.contains("nameserver 10.30.0.1").then_some(())
        },
    );
    let leases_file = format!("/proc/{dhcp}/root/var/lib/dhcp/dhclient.leases");
    wait_until(
        "dhclient to write its lease file",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&leases_file).ok()?;
            text.contains("10.30.0.").then_some(())
        },
    );
    assert_eq!(
        before,
        host_files(),
        "the host's resolv.conf or lease files changed"
    );
    drop(up);
    assert_eq!(
        before,
        host_files(),
        "the host's resolv.conf or lease files changed"
    );
}

/// The host's resolv.conf and DHCP lease directory, to prove they are untouched.
fn host_files() -> (String, Vec<(String, u64)>, Vec<String>) {
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut leases: Vec<(String, u64)> = std::fs::read_dir("/var/lib/dhcp")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    leases.sort();
    let mut etc: Vec<String> = std::fs::read_dir("/etc")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("resolv.conf"))
        .collect();
    etc.sort();
    (resolv, leases, etc)
}

#[test]
fn down_after_the_supervisor_was_killed_leaves_nothing_and_twice_is_fine() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write(
        "site.toml",
        &format!("{ONE_VLAN}\n[[reflector]]\nname = \"r\"\nvlans = [\"iot\", \"guest\"]\n[[vlan]]\nname = \"guest\"\nbridge = \"br-guest\"\n")
            .replace("[site]\nname = \"lab\"", "[site]\nname = \"lab\"\ncreate_bridges = true"),
    );
    let mut up = Up::start(&sb, &site);
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let pids: Vec<u32> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
        .collect();
    assert_eq!(pids.len(), 5, "{v}");

    // A second up is refused and changes nothing.
    let again = sb.appliance().arg("up").arg(&site).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(sb.status_json().map(|s| s.0), Some(0));

    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.pid as i32, 9) };
    let _ = up.child.wait();
    // The children die with it, even those that switched user (dbus, avahi): they run in
    // a PID namespace whose init dies with the supervisor.
    wait_until(
        "the children to die with the supervisor",
        Duration::from_secs(5),
        || (!pids.iter().any(|p| alive(*p))).then_some(()),
    );
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down after SIGKILL");
    // br-iot was the test's own: it stays; br-guest was made by up: it goes.
    assert_nothing_left(&sb, &["br-iot"], &pids);
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down a second time");
    let st = sb.appliance().arg("status").output().unwrap();
    assert_eq!(st.status.code(), Some(3), "status with no site running");
}

#[test]
fn twenty_up_down_cycles_leave_nothing_and_keep_the_macs() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write("site.toml", ONE_VLAN);
    let plan = sb
        .appliance()
        .args(["plan", "--json"])
        .arg(&site)
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let want_peer = plan["veths"][0]["peer_mac"].as_str().unwrap().to_string();
    let want_host = plan["veths"][0]["host_mac"].as_str().unwrap().to_string();
    for i in 0..20 {
        let mut up = Up::start(&sb, &site);
        eprintln!("cycle {i}");
        let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));
        let pids: Vec<u32> = v["children"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
            .collect();
        let peer = sb.sh("ip -n lab-iot -o link show dev iot");
        let host = sb.sh("ip -o link show dev lab-iot");
        assert!(peer.contains(&want_peer), "cycle {i}: peer MAC {peer}");
        assert!(host.contains(&want_host), "cycle {i}: host MAC {host}");
        if i % 2 == 0 {
            assert_eq!(
                up.stop(),
                Some(0),
                "cycle {i}: up after SIGTERM:\n{}",
                up.log()
            );
        } else {
            let down = sb.appliance().arg("down").arg(&site).output().unwrap();
            check(&down, "appliance down");
            assert_eq!(
                up.stop(),
                Some(0),
                "cycle {i}: up after down:\n{}",
                up.log()
            );
        }
        assert_nothing_left(&sb, &["br-iot"], &pids);
    }
}

#[test]
fn a_missing_bridge_is_refused_before_anything_changes() {
    let sb = Sandbox::new();
    let site = sb.write("site.toml", ONE_VLAN);
    let out = sb.appliance().arg("up").arg(&site).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interface br-iot is missing"), "{err}");
    assert_nothing_left(&sb, &[], &[]);
    // The control socket's mode: checked on a running site.
    sb.bridge("br-iot");
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let mode = sb.sh("stat -c %a /run/appliance/lab/control.sock");
    assert_eq!(mode.trim(), "600");
    assert!(Path::new(&format!("/proc/{}", up.pid)).exists());
}

#[test]
fn readiness_goes_to_systemd_and_status_passes_mroute_through() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    sb.bridge("br-up");
    // A route, so that `up` runs the multicast forwarder whose status is passed through.
    let site = sb.write(
        "site.toml",
        &format!(
            "{ONE_VLAN}[[multicast.route]]\nfrom = \"br-iot\"\ngroup = \"239.7.0.0/16\"\nto = [\"br-up\"]\n"
        ),
    );
    let notify_path = sb.path("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = sb.path("up.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = sb
        .appliance()
        .arg("up")
        .arg(&site)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let mut up = Up {
        pid: child.id(),
        child,
        log,
    };
    let mut got = vec![];
    let mut buf = [0u8; 512];
    while !got.iter().any(|m: &String| m.contains("READY=1")) {
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}); got {got:?}:\n{}", up.log()));
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got.iter().any(|m| m.starts_with("STATUS=")), "{got:?}");
    // READY=1 comes when every avahi answers on its bus: status agrees at once.
    let (code, _) = sb.status_json().expect("status");
    assert_eq!(code, 0);

    // The real forwarder's answer (its VIFs, its templates) is passed through.
    let v = wait_until("mroute's status in status", Duration::from_secs(10), || {
        sb.status_json()
            .filter(|(_, v)| v["mroute"]["vifs"].is_array())
    })
    .1;
    let vifs: Vec<&str> = v["mroute"]["vifs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(vifs.contains(&"br-iot") && vifs.contains(&"br-up"), "{v}");
    assert_eq!(v["mroute"]["templates"], 1, "{v}");
    wait_healthy(&sb, &mut up, Duration::from_secs(5));
    assert_eq!(up.stop(), Some(0));
    let msgs: Vec<String> = std::iter::from_fn(|| {
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let n = notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect();
    assert!(msgs.iter().any(|m| m.contains("STOPPING=1")), "{msgs:?}");
}

#[test]
fn down_after_a_partial_up_leaves_nothing() {
    let sb = Sandbox::new();
    let mut site = String::from("[site]\nname = \"part\"\ncreate_bridges = true\n");
    for i in 0..8 {
        site.push_str(&format!(
            "[[vlan]]\nname = \"v{i}\"\nbridge = \"br-v{i}\"\naddress = \"10.60.{i}.2/24\"\n"
        ));
    }
    let site = sb.write("site.toml", &site);
    let mut up = Up::start(&sb, &site);
    // Killed as soon as the first namespace exists: in the middle of building.
    wait_until("the first namespace", Duration::from_secs(10), || {
        let out = sb.try_sh("ls /run/netns");
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.pid as i32, 9) };
    let _ = up.child.wait();
    let down = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&down, "appliance down after a partial up");
    // The bridges were made by up: they go too.
    assert_nothing_left(&sb, &[], &[]);
    // Any dbus or avahi whose private /run holds this site's avahi config is a leftover.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("avahi-daemon") && !comm.starts_with("dbus-daemon") {
            continue;
        }
        let conf =
            std::fs::read_to_string(format!("/proc/{pid}/root/run/avahi-daemon/appliance.conf"))
                .unwrap_or_default();
        assert!(
            !conf.contains("host-name=part-"),
            "{} {pid} of the site is left",
            comm.trim()
        );
    }
}

#[test]
fn a_stuck_avahi_makes_status_exit_1_until_it_answers_again() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write("site.toml", ONE_VLAN);
    let mut up = Up::start(&sb, &site);
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let avahi = child_pid(&v, "avahi@iot").expect("avahi pid");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(avahi as i32, 19) }; // SIGSTOP: alive, but its bus calls go unanswered
    let v = wait_until("status to say unhealthy", Duration::from_secs(15), || {
        let (code, v) = sb.status_json()?;
        (code == 1).then_some(v)
    });
    assert_eq!(child_field(&v, "avahi@iot", "health"), "unhealthy", "{v}");
    assert_eq!(v["healthy"], false);
    let text = sb.appliance().arg("status").output().unwrap();
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("UNHEALTHY"));
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(avahi as i32, 18) }; // SIGCONT
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(15));
    assert_eq!(
        child_pid(&v, "avahi@iot"),
        Some(avahi),
        "the same avahi, not restarted"
    );
}

#[test]
fn up_after_a_crash_removes_the_leftovers_first() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    let site = sb.write("site.toml", ONE_VLAN);
    let mut up = Up::start(&sb, &site);
    wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let mac_before = sb.sh("ip -n lab-iot -o link show dev iot");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.pid as i32, 9) };
    let _ = up.child.wait();
    // The namespace and veth are still there; a new up takes over without duplicates.
    assert!(sb.sh("ip netns list").contains("lab-iot"));
    let mut again = Up::start(&sb, &site);
    wait_healthy(&sb, &mut again, Duration::from_secs(20));
    assert!(again.log().contains("removing it first"), "{}", again.log());
    assert_eq!(sb.sh("ip netns list").lines().count(), 1);
    let mac_after = sb.sh("ip -n lab-iot -o link show dev iot");
    let mac = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(mac(&mac_before), mac(&mac_after));
    assert_eq!(again.stop(), Some(0), "{}", again.log());
    assert_nothing_left(&sb, &["br-iot"], &[]);
}

/// A restarted reflector restarts the avahis of its untrusted VLANs once it runs again,
/// so they do not keep what they learnt through it (up to 75 minutes: docs/architecture.md);
/// VLANs it does not serve are left alone.
#[test]
fn a_restarted_reflector_refreshes_the_avahis_of_its_vlans() {
    let sb = Sandbox::new();
    for b in ["br-a", "br-b", "br-c"] {
        sb.bridge(b);
    }
    let site = sb.write(
        "site.toml",
        r#"
[site]
name = "lab"
[[vlan]]
name = "a"
bridge = "br-a"
address = "10.20.1.2/24"
[[vlan]]
name = "b"
bridge = "br-b"
address = "10.20.2.2/24"
[[vlan]]
name = "c"
bridge = "br-c"
address = "10.20.3.2/24"
[[reflector]]
name = "ab"
vlans = ["a", "b"]
"#,
    );
    let mut up = Up::start(&sb, &site);
    let v = wait_healthy(&sb, &mut up, Duration::from_secs(20));
    let pid = |v: &serde_json::Value, n: &str| child_pid(v, n).expect(n);
    let (refl, a, b, c) = (
        pid(&v, "reflector@ab"),
        pid(&v, "avahi@a"),
        pid(&v, "avahi@b"),
        pid(&v, "avahi@c"),
    );
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(refl as i32, 9) };
    let v = wait_until(
        "the reflector and the avahis of a and b to be back, healthy",
        Duration::from_secs(15),
        || {
            let (code, v) = sb.status_json()?;
            (code == 0
                && child_pid(&v, "reflector@ab").is_some_and(|p| p != refl)
                && child_pid(&v, "avahi@a").is_some_and(|p| p != a)
                && child_pid(&v, "avahi@b").is_some_and(|p| p != b))
            .then_some(v)
        },
    );
    assert_eq!(pid(&v, "avahi@c"), c, "avahi@c is not behind the reflector");
    assert_eq!(child_field(&v, "reflector@ab", "restarts"), 1);
    assert_eq!(
        child_field(&v, "avahi@a", "restarts"),
        0,
        "a refresh is not a crash"
    );
    let log = up.log();
    assert!(
        log.contains("avahi@a: restarting to forget what it learnt through reflector@ab"),
        "{log}"
    );
}

/// [`ONE_VLAN`] with an IPv6 address as well.
fn v6_vlan() -> String {
    format!("{ONE_VLAN}address6 = \"fd20:2::2/64\"\n")
}

#[test]
fn the_site_is_ready_only_when_its_ipv6_addresses_are_usable() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    sb.host("c1", "br-iot", &["fd20:2::9/64"]);
    let site = sb.write("site.toml", &v6_vlan());
    let mut up = Up::start(&sb, &site);
    // The addresses' flags read right after status first answers healthy, not later:
    // duplicate address detection ends on its own within about two seconds, so only a
    // look at that moment catches a readiness that did not wait for it. (An address
    // does not go back to tentative once DAD has passed.)
    let (v, at_healthy) = wait_until("the site to be healthy", Duration::from_secs(20), || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!("appliance up exited ({st}):\n{}", up.log());
        }
        let (code, v) = sb.status_json()?;
        if code != 0 {
            return None;
        }
        let out = sb
            .cmd("ip")
            .args(["-n", "lab-iot", "-6", "addr", "show"])
            .output()
            .expect("ip addr");
        Some((v, String::from_utf8_lossy(&out.stdout).into_owned()))
    });
    assert!(
        at_healthy.contains("fd20:2::2/64") && !at_healthy.contains("tentative"),
        "status said healthy while an address was not usable yet:\n{at_healthy}\n{v}"
    );
    assert_eq!(v["addresses"]["state"], "usable", "{v}");
    // Healthy means usable: no address of the namespace is still tentative.
    let addrs = sb.sh("ip -n lab-iot -6 addr show");
    assert!(addrs.contains("fd20:2::2/64"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    // A tentative address cannot even be bound; this one can, and a host reaches it.
    let inside = common::udp_in(&sb, Some("lab-iot"), "[fd20:2::2]:5000");
    inside
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = common::udp_in(&sb, Some("c1"), "[fd20:2::9]:0");
    client.send_to(b"hello", "[fd20:2::2]:5000").unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = inside
        .recv_from(&mut buf)
        .expect("the datagram from the host");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.ip().to_string(), "fd20:2::9");
    assert_eq!(up.stop(), Some(0));
}

#[test]
fn an_ipv6_address_another_host_has_is_reported_and_the_site_is_unhealthy() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    // The host on the bridge had the address first.
    sb.host("c1", "br-iot", &["fd20:2::2/64"]);
    let site = sb.write("site.toml", &v6_vlan());
    let mut up = Up::start(&sb, &site);
    let v = wait_until(
        "the conflict in status",
        Duration::from_secs(20),
        || match sb.status_json() {
            Some((1, v)) if v["addresses"]["state"] == "conflict" => Some(v),
            _ => None,
        },
    );
    let conflict = v["addresses"]["conflicts"][0].as_str().unwrap_or_default();
    assert!(
        conflict.starts_with("fd20:2::2/64 on ") && conflict.contains("bridge br-iot"),
        "{v}"
    );
    let text = sb.appliance().arg("status").output().unwrap();
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("UNHEALTHY") && text.contains("conflict: fd20:2::2/64"),
        "{text}"
    );
    wait_until("the conflict in the log", Duration::from_secs(5), || {
        up.log()
            .contains("address conflict: fd20:2::2/64")
            .then_some(())
    });
    // The children still run; only the address is in question.
    assert!(
        v["children"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["phase"] == "running"),
        "{v}"
    );
    assert_eq!(up.stop(), Some(0));
}
