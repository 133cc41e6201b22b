//! Several routers, IPv4 through FRR: source — router A — router B — two receivers, each
//! router a network namespace of the sandbox running its own `appliance up` with
//! `engine = "frr"` (zebra, staticd, pimd and the `frr` part as its children). PIM on the
//! transit link, IGMPv3 towards the receivers, A's address the RP; the receivers' socket
//! joins bring the source's packets across both routers, and a `kill -9` of pimd on
//! either router is healed by the supervisor and the part's configuration push.

mod common;
#[path = "common/routers4.rs"]
mod routers4;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use routers4::*;

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
const PORT: u16 = 5004;

/// The five namespaces and their links: src (10.1.0.2) — a-src|A|a-b (10.1.0.1,
/// 10.0.0.1) — b-a|B|b-r1,b-r2 (10.0.0.2, 10.2.0.1, 10.3.0.1) — r1 (10.2.0.2), r2
/// (10.3.0.2). Unicast routes for RPF: B reaches the source's network through A.
fn topology(sb: &Sandbox) {
    sb.sh(
        "for n in src ra rb r1 r2; do ip netns add $n; ip -n $n link set lo up; done\n\
         link() { ip link add $2 netns $1 type veth peer name $4 netns $3; \
                  ip -n $1 addr add $5 dev $2; ip -n $3 addr add $6 dev $4; \
                  ip -n $1 link set $2 up; ip -n $3 link set $4 up; }\n\
         link src eth0 ra a-src 10.1.0.2/24 10.1.0.1/24\n\
         link ra a-b rb b-a 10.0.0.1/24 10.0.0.2/24\n\
         link rb b-r1 r1 eth0 10.2.0.1/24 10.2.0.2/24\n\
         link rb b-r2 r2 eth0 10.3.0.1/24 10.3.0.2/24\n\
         ip -n src route add default via 10.1.0.1\n\
         ip -n r1 route add default via 10.2.0.1\n\
         ip -n r2 route add default via 10.3.0.1\n\
         ip -n rb route add 10.1.0.0/24 via 10.0.0.1\n\
         ip -n ra route add 10.2.0.0/16 via 10.0.0.2\n\
         ip -n ra route add 10.3.0.0/16 via 10.0.0.2\n\
         for n in ra rb; do ip netns exec $n sysctl -qw net.ipv4.ip_forward=1; done\n",
    );
}

/// A receiver: an IGMPv3 (ASM) socket join of GROUP on the host's eth0.
fn receiver(sb: &Sandbox, host: &str, addr: Ipv4Addr) -> UdpSocket {
    sb.in_netns(Some(host), move || {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).expect("bind");
        s.join_multicast_v4(&GROUP, &addr).expect("join");
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        s
    })
}

/// The source's socket: to GROUP out of eth0, TTL 16.
fn source(sb: &Sandbox) -> UdpSocket {
    sb.in_netns(Some("src"), || {
        let s = UdpSocket::bind("10.1.0.2:0").expect("bind");
        s.set_multicast_ttl_v4(16).expect("ttl");
        s.connect(SocketAddrV4::new(GROUP, PORT)).expect("connect");
        s
    })
}

/// Drains what a receiver has, as the sequence numbers of the packets (`tag` first).
fn drain(r: &UdpSocket, tag: u8) -> Vec<u32> {
    let mut out = vec![];
    let mut buf = [0u8; 64];
    while let Ok(n) = r.recv(&mut buf) {
        if n >= 5 && buf[0] == tag {
            out.push(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]));
        }
    }
    out
}

/// Sends probes (tag `tag`) until every receiver got one, at most `within`. Returns how
/// long the first took.
fn until_delivered(src: &UdpSocket, rs: &[&UdpSocket], tag: u8, within: Duration) -> Duration {
    let t = Instant::now();
    let mut got = vec![false; rs.len()];
    let mut n = 0u32;
    while got.iter().any(|g| !g) {
        assert!(
            t.elapsed() < within,
            "no packet through both routers within {within:?} (receivers reached: {got:?})"
        );
        let mut p = vec![tag];
        p.extend(n.to_be_bytes());
        let _ = src.send(&p);
        n += 1;
        for (i, r) in rs.iter().enumerate() {
            got[i] |= !drain(r, tag).is_empty();
        }
    }
    t.elapsed()
}

/// Sends 100 numbered packets 2 ms apart (tag `tag`) and returns what each receiver got.
fn hundred(src: &UdpSocket, rs: &[&UdpSocket], tag: u8) -> Vec<Vec<u32>> {
    let mut got = vec![vec![]; rs.len()];
    for n in 0..100u32 {
        let mut p = vec![tag];
        p.extend(n.to_be_bytes());
        src.send(&p).expect("send");
        // Pacing the sender, not waiting for an event.
        std::thread::sleep(Duration::from_millis(2));
        for (i, r) in rs.iter().enumerate() {
            got[i].extend(drain(r, tag));
        }
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        for (i, r) in rs.iter().enumerate() {
            got[i].extend(drain(r, tag));
        }
    }
    got
}

fn assert_in_order(got: &[u32], who: &str) {
    assert!(got.len() >= 99, "{who} got {} of 100: {got:?}", got.len());
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{who}: out of order: {got:?}"
    );
}

/// True if no file or directory of the router's state is left.
fn gone(state: &Path) -> bool {
    !state.exists()
}

#[test]
fn a_join_behind_two_frr_routers_brings_the_source_and_pimd_recovers_from_kill_9() {
    require_root();
    for p in [
        "/usr/lib/frr/zebra",
        "/usr/lib/frr/staticd",
        "/usr/lib/frr/pimd",
    ] {
        assert!(
            Path::new(p).is_file(),
            "{p} is missing: scripts/install-deps installs frr"
        );
    }
    require_program("vtysh");
    let sb = Sandbox::new();
    topology(&sb);
    let mut a = Router::start(&sb, "ra", &["a-src", "a-b"], &[], "10.0.0.1");
    let mut b = Router::start(
        &sb,
        "rb",
        &["b-a", "b-r1", "b-r2"],
        &["b-r1", "b-r2"],
        "10.0.0.1",
    );
    a.wait_healthy(Duration::from_secs(30));
    b.wait_healthy(Duration::from_secs(30));
    // The routers see each other as PIM neighbours.
    wait_until(
        "B to list A as its PIM neighbour",
        Duration::from_secs(40),
        || {
            let v = b.status()?;
            v["routing"]["neighbors"]
                .as_array()?
                .iter()
                .any(|n| n["address"] == "10.0.0.1" && n["interface"] == "b-a")
                .then_some(())
        },
    );

    let r1 = receiver(&sb, "r1", Ipv4Addr::new(10, 2, 0, 2));
    let r2 = receiver(&sb, "r2", Ipv4Addr::new(10, 3, 0, 2));
    let src = source(&sb);
    let first = until_delivered(&src, &[&r1, &r2], 1, Duration::from_secs(30));
    eprintln!("join to first packet at both receivers, two routers: {first:?}");
    let got = hundred(&src, &[&r1, &r2], 2);
    assert_in_order(&got[0], "r1");
    assert_in_order(&got[1], "r2");

    // What status shows: B's neighbour, the (*,G) and (S,G) state, the IGMP receivers.
    let text = b.status_text(false);
    assert!(text.contains("routing (FRR): healthy"), "{text}");
    assert!(text.contains("neighbour 10.0.0.1 on b-a"), "{text}");
    assert!(text.contains("(*, 239.1.2.3)"), "{text}");
    assert!(text.contains("(10.1.0.2, 239.1.2.3)"), "{text}");
    assert!(
        text.contains("IGMP receivers of 239.1.2.3 on b-r1"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&b.status_text(true)).expect("status --json");
    assert!(
        json["routing"]["mroutes"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["source"] == "10.1.0.2")),
        "{json}"
    );

    // kill -9 of pimd, on B then on A: status says unhealthy, the supervisor restarts it,
    // the part pushes the configuration again, and delivery resumes.
    for (tag, router) in [(3u8, &mut b), (5u8, &mut a)] {
        let pid = router.child_pid("pimd");
        // SAFETY: kill(2) with plain integers, on the pimd the router's status named.
        assert_eq!(unsafe { libc_kill(pid as i32, 9) }, 0, "kill -9 {pid}");
        wait_until(
            &format!("{} to say unhealthy after kill -9 of pimd", router.name),
            Duration::from_secs(10),
            || (!router.healthy()).then_some(()),
        );
        router.wait_healthy(Duration::from_secs(30));
        assert_ne!(router.child_pid("pimd"), pid, "pimd was restarted");
        let back = until_delivered(&src, &[&r1, &r2], tag, Duration::from_secs(120));
        eprintln!(
            "after kill -9 of pimd on {}: healthy again, delivery resumed {back:?} later",
            router.name
        );
        let got = hundred(&src, &[&r1, &r2], tag + 1);
        assert_in_order(&got[0], "r1");
        assert_in_order(&got[1], "r2");
    }

    // down leaves nothing: no state, no FRR process.
    let frr_pids: Vec<u32> = ["zebra", "staticd", "pimd", "frr"]
        .iter()
        .flat_map(|c| [a.child_pid(c), b.child_pid(c)])
        .collect();
    assert_eq!(a.stop(), Some(0), "{}", a.up.logs());
    assert_eq!(b.stop(), Some(0), "{}", b.up.logs());
    for r in [&a, &b] {
        assert!(gone(&r.state), "{} left {}", r.name, r.state.display());
    }
    for pid in frr_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "pid {pid} of FRR still runs after down"
        );
    }
}

/// Processes whose executable is one of FRR's daemons and whose mounts show `state`'s
/// run directory over /run/frr (they belong to this router, not another test's).
fn frr_processes_of(state: &Path) -> Vec<u32> {
    let run = state.join("frr/run");
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !["zebra", "staticd", "pimd"].contains(&comm.trim()) {
            continue;
        }
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        if mounts.contains(&*run.to_string_lossy()) {
            out.push(pid);
        }
    }
    out
}

/// `up` killed with SIGKILL twice: once in the middle of building (as soon as FRR's
/// configuration is written), once with FRR healthy. Either way its FRR daemons die with
/// it (its PID namespace), no mount is left in the sandbox, and `down` removes FRR's
/// directories with the rest of the state; a second `down` is fine.
#[test]
fn a_killed_up_leaves_no_frr_and_down_removes_its_directories() {
    require_root();
    require_program("vtysh");
    for healthy_first in [false, true] {
        let sb = Sandbox::new();
        sb.sh("ip link add x0 type veth peer name x1\n\
             ip addr add 10.9.0.1/24 dev x0\nip addr add 10.9.1.1/24 dev x1\n\
             ip link set x0 up\nip link set x1 up\n");
        let state = sb.path("state");
        let site = sb.write(
            "r.toml",
            &format!(
                "[site]\nname = \"r\"\nstate_dir = \"{}\"\n\n\
                 [routing]\nengine = \"frr\"\ninterfaces = [\"x0\", \"x1\"]\nrp = \"10.9.0.1\"\n",
                state.display()
            ),
        );
        let mut up = Up::start(&sb, &site);
        let conf = state.join("frr/etc/frr.conf");
        wait_until(
            "FRR's configuration written",
            Duration::from_secs(20),
            || conf.exists().then_some(()),
        );
        if healthy_first {
            wait_until("the router healthy", Duration::from_secs(30), || {
                status_at(&state)
                    .is_some_and(|v| v["healthy"] == true)
                    .then_some(())
            });
            assert_eq!(frr_processes_of(&state).len(), 3, "{}", up.log());
        }
        // SAFETY: kill(2) with plain integers, on the up this test started.
        unsafe { libc_kill(up.pid as i32, 9) };
        let _ = up.child.wait();
        wait_until(
            "FRR's daemons gone with up",
            Duration::from_secs(10),
            || frr_processes_of(&state).is_empty().then_some(()),
        );
        for _ in 0..2 {
            let down = sb.appliance().arg("down").arg(&site).output().unwrap();
            check(&down, "appliance down after up was killed");
        }
        assert!(
            gone(&state),
            "down left {}: {}",
            state.display(),
            sb.sh(&format!("find {} -ls", state.display()))
        );
        let mounts = sb.sh("cat /proc/self/mountinfo");
        assert!(
            !mounts.contains(&*state.to_string_lossy()),
            "a mount of the site is left:\n{mounts}"
        );
    }
}

/// As a rendered image runs it: the system runs FRR (here the test, in place of Debian's
/// frr.service, with the sandbox's own /run/frr and /var/tmp/frr) and pushes the site's
/// configuration; `up` with `APPLIANCE_FRR=system` (what the rendered unit sets) runs no
/// daemon of its own, only the frr part, whose status is what the system's FRR says.
#[test]
fn with_the_systems_frr_up_runs_only_the_part_and_reports_frr() {
    require_root();
    require_program("vtysh");
    let sb = Sandbox::new();
    let tmp = sb.path("var-tmp-frr");
    std::fs::create_dir_all(&tmp).unwrap();
    sb.sh(&format!(
        "ip link add x0 type veth peer name x1\n\
         ip addr add 10.9.0.1/24 dev x0\nip addr add 10.9.1.1/24 dev x1\n\
         ip link set x0 up\nip link set x1 up\n\
         mkdir -p /run/frr && chown frr:frr /run/frr\n\
         chown frr:frr {0} && mount --bind {0} /var/tmp/frr\n",
        tmp.display()
    ));
    let mut daemons = vec![];
    for d in ["zebra", "staticd", "pimd"] {
        let mut cmd = sb.cmd(format!("/usr/lib/frr/{d}"));
        cmd.args([
            "-u",
            "frr",
            "-g",
            "frr",
            "-A",
            "127.0.0.1",
            "-P",
            "0",
            "--log",
            "stdout",
        ]);
        daemons.push(Background::spawn(&sb, d, cmd));
        let vty = format!("/proc/{}/root/run/frr/{d}.vty", sb.pid);
        wait_until(
            &format!("{d}'s vty socket"),
            Duration::from_secs(20),
            || Path::new(&vty).exists().then_some(()),
        );
    }
    let state = sb.path("state");
    let site = sb.write(
        "s.toml",
        &format!(
            "[site]\nname = \"s\"\nstate_dir = \"{}\"\n\n\
             [routing]\nengine = \"frr\"\ninterfaces = [\"x0\", \"x1\"]\nrp = \"10.9.0.1\"\n",
            state.display()
        ),
    );
    // What frr.service's watchfrr does with the rendered /etc/frr/frr.conf.
    let plan = sb
        .appliance()
        .args(["plan", "--json"])
        .arg(&site)
        .output()
        .unwrap();
    check(&plan, "appliance plan --json");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let conf = sb.write(
        "frr.conf",
        plan["routing"]["frr"]["config"].as_str().unwrap(),
    );
    check(
        &sb.cmd("vtysh").arg("-f").arg(&conf).output().unwrap(),
        "vtysh -f frr.conf",
    );
    // What the rendered unit's drop-in sets (units/appliance-frr.conf).
    let mut cmd = sb.cmd("env");
    cmd.arg("APPLIANCE_FRR=system")
        .arg(appliance_bin())
        .arg("up")
        .arg(&site);
    let mut up = Background::spawn(&sb, "up-system", cmd);
    wait_until(
        "the site healthy on the system's FRR",
        Duration::from_secs(30),
        || {
            status_at(&state)
                .is_some_and(|v| v["healthy"] == true)
                .then_some(())
        },
    );
    let v = status_at(&state).unwrap();
    let children: Vec<&str> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(children, ["frr"], "{v}");
    assert_eq!(
        v["routing"]["pim_interfaces"],
        serde_json::json!(["x0", "x1"]),
        "{v}"
    );
    assert_eq!(v["routing"]["pushes"], 0, "the part only observes: {v}");
    assert!(up.logs().contains("APPLIANCE_FRR=system"), "{}", up.logs());
    assert_eq!(up.signal(15).code(), Some(0), "{}", up.logs());
    // The system's daemons are not up's: they still run.
    for d in &mut daemons {
        assert!(matches!(d.child.try_wait(), Ok(None)), "{}", d.logs());
    }
    assert!(gone(&state), "down left {}", state.display());
}

// SAFETY: matches kill(2)'s C prototype (integers in, an integer out).
unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
