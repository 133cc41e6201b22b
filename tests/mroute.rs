//! `appliance mroute` against the real kernel: a sender host on bridge br-a, a receiver host
//! on bridge br-b, the forwarder between them, each test in its own sandbox.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use appliance::mroute::control::{Request, request};
use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const PORT: u16 = 5000;
const SND4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 10);
const SND4_LL: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 10);
const RCV4: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 10);
const SND6: Ipv6Addr = Ipv6Addr::new(0xfd01, 0, 0, 0, 0, 0, 0, 0x10);
const SND6_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);

/// br-a (10.1.0.1, fd01::1) with host snd; br-b (10.2.0.1, fd02::1) with host rcv.
fn topology() -> Sandbox {
    let sb = Sandbox::new();
    sb.bridge("br-a");
    sb.bridge("br-b");
    sb.sh("ip addr add 10.1.0.1/24 dev br-a\n\
         ip addr add fd01::1/64 dev br-a nodad\n\
         ip addr add 10.2.0.1/24 dev br-b\n\
         ip addr add fd02::1/64 dev br-b nodad");
    sb.host(
        "snd",
        "br-a",
        &[
            "10.1.0.10/24",
            "169.254.1.10/16",
            "fd01::10/64",
            "fe80::10/64",
        ],
    );
    sb.host("rcv", "br-b", &["10.2.0.10/24", "fd02::10/64"]);
    sb.sh("ip -n snd route add default via 10.1.0.1\n\
         ip -n rcv route add default via 10.2.0.1\n\
         ip -n snd -6 route add default via fd01::1\n\
         ip -n rcv -6 route add default via fd02::1");
    sb
}

/// Writes a site whose state dir is the test's own, with `body` after `[site]`.
fn site(sb: &Sandbox, name: &str, body: &str) -> PathBuf {
    let state = sb.path("state");
    sb.write(
        &format!("{name}.toml"),
        &format!(
            "[site]\nname = \"{name}\"\nstate_dir = \"{}\"\n{body}",
            state.display()
        ),
    )
}

struct Mroute {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Mroute {
    fn start(sb: &Sandbox, args: &[&str], state_dir: &Path) -> Mroute {
        let log = sb.path(&format!("mroute-{}.log", args.len()));
        let child = sb
            .appliance()
            .arg("mroute")
            .args(args)
            .env("APPLIANCE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn appliance mroute");
        let mut m = Mroute {
            child,
            sock: state_dir.join("mroute.sock"),
            log,
        };
        wait_until(
            "appliance mroute to answer status",
            Duration::from_secs(15),
            || {
                if let Ok(Some(st)) = m.child.try_wait() {
                    panic!("appliance mroute exited ({st}):\n{}", read(&m.log));
                }
                m.try_status()
            },
        );
        m
    }

    fn try_status(&self) -> Option<Value> {
        request(&self.sock, &Request::Status)
            .ok()
            .filter(|v| v["ok"] == true)
    }

    fn status(&self) -> Value {
        request(&self.sock, &Request::Status).expect("status answer")
    }

    fn entry(&self, source: &str, group: &str) -> Option<Value> {
        self.status()["entries"]
            .as_array()?
            .iter()
            .find(|e| e["source"] == source && e["group"] == group)
            .cloned()
    }

    fn wait_entry(&self, source: &str, group: &str, origin: &str) -> Value {
        wait_until(
            &format!("({source},{group}) as a {origin} entry"),
            Duration::from_secs(5),
            || self.entry(source, group).filter(|e| e["origin"] == origin),
        )
    }

    /// SIGTERM, and the exit code.
    fn stop(mut self) -> i32 {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { kill(self.child.id() as i32, 15) };
        let st = wait_until("appliance mroute to exit", Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        st.code().unwrap_or(-1)
    }
}

impl Drop for Mroute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A UDP socket in host `host` that has joined `groups` on its eth0.
fn receiver(sb: &Sandbox, host: &str, groups: Vec<IpAddr>) -> UdpSocket {
    let v6 = groups.first().is_some_and(|g| g.is_ipv6());
    let any = if v6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT))
    };
    receiver_on(sb, host, groups, any)
}

/// A UDP socket in host `host` bound to `any`, joined to `groups` on eth0.
fn receiver_on(sb: &Sandbox, host: &str, groups: Vec<IpAddr>, any: SocketAddr) -> UdpSocket {
    sb.in_netns(Some(host), move || {
        let domain = if any.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_reuse_address(true).expect("reuseaddr");
        s.bind(&any.into()).expect("bind receiver");
        let ix = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        for g in groups {
            match g {
                IpAddr::V4(g) => s.join_multicast_v4(&g, &RCV4).expect("join v4"),
                IpAddr::V6(g) => s.join_multicast_v6(&g, ix).expect("join v6"),
            }
        }
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        s.into()
    })
}

/// A UDP socket in host snd bound to `src`, sending multicast out of eth0.
fn sender(sb: &Sandbox, src: IpAddr) -> UdpSocket {
    sb.in_netns(Some("snd"), move || {
        let ix = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let (s, bind) = match src {
            IpAddr::V4(a) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                s.set_multicast_if_v4(&a).expect("multicast if");
                s.set_broadcast(true).expect("broadcast");
                (s, SocketAddr::from((a, 0)))
            }
            IpAddr::V6(a) => {
                let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                s.set_multicast_if_v6(ix).expect("multicast if");
                let scope = if (a.segments()[0] & 0xffc0) == 0xfe80 {
                    ix
                } else {
                    0
                };
                (s, SocketAddr::V6(SocketAddrV6::new(a, 0, 0, scope)))
            }
        };
        s.bind(&bind.into())
            .unwrap_or_else(|e| panic!("bind sender to {bind}: {e}"));
        s.into()
    })
}

fn send(s: &UdpSocket, group: IpAddr, ttl: u32, payload: &str) {
    send_to(s, SocketAddr::from((group, PORT)), ttl, payload)
}

fn send_to(s: &UdpSocket, to: SocketAddr, ttl: u32, payload: &str) {
    let group = to.ip();
    match group {
        IpAddr::V4(_) => s.set_multicast_ttl_v4(ttl).expect("ttl"),
        IpAddr::V6(_) => SockRef::from(s).set_multicast_hops_v6(ttl).expect("hops"),
    }
    s.send_to(payload.as_bytes(), to)
        .unwrap_or_else(|e| panic!("send to {to}: {e}"));
}

/// Receives until `done` holds for what arrived (every datagram as a string); panics
/// with what did arrive after `within`.
fn collect(
    rx: &UdpSocket,
    got: &mut Vec<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    while !done(got) {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}; received {got:?}"
        );
        if let Ok(n) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

/// TTL 8, three packets to each group: every one arrives, the first of each (*,G) stream
/// too (the kernel queues it while the forwarder answers the upcall).
fn every_packet_arrives(tx: &UdpSocket, rx: &UdpSocket, got: &mut Vec<String>, groups: &[&str]) {
    for g in groups {
        for seq in 0..3 {
            send(tx, ip(g), 8, &format!("{g} {seq}"));
        }
    }
    collect(rx, got, Duration::from_secs(5), |got| {
        groups
            .iter()
            .all(|g| (0..3).all(|s| has(got, &format!("{g} {s}"))))
    });
}

/// A TTL-1 (hop limit 1) packet to each group is not forwarded: a TTL-8 marker sent after
/// it arrives, it does not.
fn one_hop_stays_on_its_link(
    tx: &UdpSocket,
    rx: &UdpSocket,
    got: &mut Vec<String>,
    groups: &[&str],
) {
    for g in groups {
        send(tx, ip(g), 1, &format!("{g} ttl1"));
        send(tx, ip(g), 8, &format!("{g} marker"));
    }
    collect(rx, got, Duration::from_secs(5), |got| {
        groups.iter().all(|g| has(got, &format!("{g} marker")))
    });
    assert!(
        !got.iter().any(|g| g.ends_with("ttl1")),
        "TTL 1 forwarded: {got:?}"
    );
}

fn has(got: &[String], m: &str) -> bool {
    got.iter().any(|g| g == m)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv4_sg_star_g_and_prefix_routes_forward_ttl_and_link_local_are_not() {
    let sb = topology();
    let site = site(
        &sb,
        "t4",
        r#"
[multicast]
snooping = false
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "239.3.3.3"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "239.2.0.0/16"
to = ["br-b"]
[[multicast.join]]
on = "br-a"
group = "239.5.5.5"
[[multicast.join]]
on = "br-a"
group = "232.1.1.1"
source = "10.1.0.10"
"#,
    );
    let m = Mroute::start(&sb, &[site.to_str().unwrap()], &sb.path("state"));
    let st = m.status();
    let vifs: Vec<&str> = st["vifs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vifs, ["br-a", "br-b"]);
    m.wait_entry("10.1.0.10", "239.1.1.1", "configured");
    // Snooping off, as the site says, on both bridges; joins held on br-a.
    let links = sb.sh("ip -d link show br-a; ip -d link show br-b");
    assert_eq!(links.matches("mcast_snooping 0").count(), 2, "{links}");
    let igmp = sb.sh("cat /proc/net/igmp");
    assert!(
        igmp.contains("050505EF"),
        "239.5.5.5 joined on br-a:\n{igmp}"
    );
    assert!(
        igmp.contains("010101E8"),
        "232.1.1.1 joined on br-a:\n{igmp}"
    );
    let filters = sb.sh("cat /proc/net/mcfilter");
    assert!(
        filters.contains("0x0a01000a"),
        "(10.1.0.10, 232.1.1.1) SSM join:\n{filters}"
    );

    let groups = [
        "239.1.1.1",
        "239.3.3.3",
        "239.2.7.7",
        "239.2.9.9",
        "239.2.5.5",
        "239.9.9.9",
    ];
    let rx = receiver(&sb, "rcv", groups.iter().map(|g| ip(g)).collect());
    let tx = sender(&sb, SND4.into());
    let mut got = Vec::new();
    every_packet_arrives(&tx, &rx, &mut got, &["239.1.1.1", "239.3.3.3", "239.2.7.7"]);
    m.wait_entry("10.1.0.10", "239.3.3.3", "learned");
    let e = m.wait_entry("10.1.0.10", "239.2.7.7", "learned");
    assert_eq!(e["oifs"], serde_json::json!(["br-b"]));
    assert_eq!(e["why"], "multicast.route[2]");

    // For a static and for a learned entry.
    one_hop_stays_on_its_link(&tx, &rx, &mut got, &["239.1.1.1", "239.2.9.9"]);

    // A link-local source never leaves its link, even for a group a template matches.
    let tx_ll = sender(&sb, SND4_LL.into());
    send(&tx_ll, ip("239.2.5.5"), 8, "239.2.5.5 link-local");
    m.wait_entry("169.254.1.10", "239.2.5.5", "stop");
    send(&tx, ip("239.2.5.5"), 8, "239.2.5.5 marker");
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        has(got, "239.2.5.5 marker")
    });
    assert!(!has(&got, "239.2.5.5 link-local"), "{got:?}");

    // A group no route matches gets a stop entry: no outputs.
    send(&tx, ip("239.9.9.9"), 8, "239.9.9.9 unmatched");
    let stop = m.wait_entry("10.1.0.10", "239.9.9.9", "stop");
    assert_eq!(stop["oifs"], serde_json::json!([]));
    assert!(!has(&got, "239.9.9.9 unmatched"));

    // Counters and origins, also through the CLI.
    let e = m.entry("10.1.0.10", "239.1.1.1").unwrap();
    assert!(e["packets"].as_u64().unwrap() >= 4, "{e}");
    assert!(e["bytes"].as_u64().unwrap() > 0, "{e}");
    let out = sb
        .appliance()
        .args(["mroute", site.to_str().unwrap(), "--status"])
        .output()
        .unwrap();
    check(&out, "appliance mroute --status");
    let text = String::from_utf8_lossy(&out.stdout);
    for w in ["configured", "learned", "stop", "VIF  0 br-a"] {
        assert!(text.contains(w), "{w} missing in:\n{text}");
    }

    let log = m.log.clone();
    assert_eq!(m.stop(), 0, "clean exit:\n{}", read(&log));
    let left = sb.sh("ip mroute show");
    assert!(left.trim().is_empty(), "routes left after exit: {left}");
}

#[test]
fn ipv6_routes_forward_ula_sources_and_stop_the_rest() {
    let sb = topology();
    let site = site(
        &sb,
        "t6",
        r#"
[multicast]
snooping = false
[[multicast.route]]
from = "br-a"
source = "fd01::10"
group = "ff3e::1:1"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "ff0e::2:7ffe"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "ff3e::100:0/112"
to = ["br-b"]
[[multicast.join]]
on = "br-a"
group = "ff3e::5:5"
[[multicast.join]]
on = "br-a"
group = "ff3e::6:6"
source = "fd01::10"
"#,
    );
    let m = Mroute::start(&sb, &[site.to_str().unwrap()], &sb.path("state"));
    m.wait_entry("fd01::10", "ff3e::1:1", "configured");
    let igmp6 = sb.sh("cat /proc/net/igmp6");
    assert!(
        igmp6.contains("ff3e0000000000000000000000050005"),
        "ff3e::5:5 joined:\n{igmp6}"
    );
    let filters6 = sb.sh("cat /proc/net/mcfilter6");
    assert!(
        filters6.contains("ff3e0000000000000000000000060006")
            && filters6.contains("fd010000000000000000000000000010"),
        "(fd01::10, ff3e::6:6) SSM join:\n{filters6}"
    );
    let groups = [
        "ff3e::1:1",
        "ff0e::2:7ffe",
        "ff3e::100:7",
        "ff3e::100:9",
        "ff3e::9:9",
    ];
    let rx = receiver(&sb, "rcv", groups.iter().map(|g| ip(g)).collect());
    let tx = sender(&sb, SND6.into());
    let mut got = Vec::new();
    every_packet_arrives(
        &tx,
        &rx,
        &mut got,
        &["ff3e::1:1", "ff0e::2:7ffe", "ff3e::100:7"],
    );
    m.wait_entry("fd01::10", "ff0e::2:7ffe", "learned");
    m.wait_entry("fd01::10", "ff3e::100:7", "learned");

    one_hop_stays_on_its_link(&tx, &rx, &mut got, &["ff3e::1:1", "ff3e::100:9"]);

    // A link-local source is stopped; so is an unmatched group.
    let tx_ll = sender(&sb, SND6_LL.into());
    send(&tx_ll, ip("ff3e::100:7"), 8, "ff3e::100:7 link-local");
    m.wait_entry("fe80::10", "ff3e::100:7", "stop");
    send(&tx, ip("ff3e::9:9"), 8, "ff3e::9:9 unmatched");
    m.wait_entry("fd01::10", "ff3e::9:9", "stop");
    send(&tx, ip("ff3e::100:7"), 8, "ff3e::100:7 marker");
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        has(got, "ff3e::100:7 marker")
    });
    assert!(!has(&got, "ff3e::100:7 link-local"), "{got:?}");
    assert!(!has(&got, "ff3e::9:9 unmatched"), "{got:?}");
    // Counters of IPv6 entries (SIOCGETSGCNT_IN6).
    let e = m.entry("fd01::10", "ff3e::1:1").unwrap();
    assert!(e["packets"].as_u64().unwrap() >= 4, "{e}");
    assert_eq!(m.stop(), 0);
}

const RELOAD_ROUTES: &str = r#"
[multicast]
snooping = false
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "239.3.0.0/16"
to = ["br-b"]
"#;
const ROUTE_X: &str = r#"
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.2"
to = ["br-b"]
"#;
const ROUTE_Y: &str = r#"
[[multicast.route]]
from = "br-a"
group = "239.4.0.0/16"
to = ["br-b"]
"#;

/// Sequence numbers of `group` among what arrived.
fn seqs(got: &[String], group: &str) -> Vec<u64> {
    got.iter()
        .filter_map(|g| g.strip_prefix(&format!("{group} ")))
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn reload_removes_one_route_and_keeps_the_others_flowing_without_loss() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let sb = topology();
    let site_v1 = format!("{RELOAD_ROUTES}{ROUTE_X}{ROUTE_Y}");
    let path = site(&sb, "tr", &site_v1);
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let groups = ["239.1.1.1", "239.3.3.3", "239.1.1.2", "239.4.4.4"];
    let rx = receiver(&sb, "rcv", groups.iter().map(|g| ip(g)).collect());
    let tx = sender(&sb, SND4.into());
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender_thread = {
        let (seq, stop) = (seq.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = seq.load(Ordering::SeqCst);
                for g in groups {
                    send(&tx, ip(g), 8, &format!("{g} {n}"));
                }
                seq.store(n + 1, Ordering::SeqCst);
                // Pacing of the stream (not a wait for a condition).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut got = Vec::new();
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        groups.iter().all(|g| seqs(got, g).len() >= 20)
    });

    // Reload 1, through the control socket: the static route X goes.
    let path_v2 = format!("{RELOAD_ROUTES}{ROUTE_Y}");
    site(&sb, "tr", &path_v2);
    let answer = request(&m.sock, &Request::Reload).expect("reload answer");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["reload"]["removed"], 1, "{answer}");
    assert_eq!(answer["reload"]["added"], 0, "{answer}");
    let after_x = seq.load(Ordering::SeqCst);
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        seqs(got, "239.1.1.1").iter().any(|s| *s > after_x + 20)
    });
    assert!(
        seqs(&got, "239.1.1.2").iter().all(|s| *s <= after_x),
        "239.1.1.2 still forwarded after its route was removed"
    );

    // Reload 2, by SIGHUP: the template Y goes; its learned entry becomes a stop entry.
    site(&sb, "tr", RELOAD_ROUTES);
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { kill(m.child.id() as i32, 1) };
    m.wait_entry("10.1.0.10", "239.4.4.4", "stop");
    let after_y = seq.load(Ordering::SeqCst);
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        seqs(got, "239.3.3.3").iter().any(|s| *s > after_y + 20)
    });
    assert!(
        seqs(&got, "239.4.4.4").iter().all(|s| *s <= after_y),
        "239.4.4.4 still forwarded after its template was removed"
    );
    stop.store(true, Ordering::SeqCst);
    sender_thread.join().unwrap();
    let last = seq.load(Ordering::SeqCst) - 1;
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        ["239.1.1.1", "239.3.3.3"]
            .iter()
            .all(|g| seqs(got, g).contains(&last))
    });
    // The routes that stayed lost nothing through both reloads.
    for g in ["239.1.1.1", "239.3.3.3"] {
        let mut s = seqs(&got, g);
        s.sort();
        s.dedup();
        assert_eq!(s, (0..=last).collect::<Vec<_>>(), "{g} lost packets");
    }
    assert_eq!(m.stop(), 0);
}

#[test]
fn learned_and_stop_entries_expire_when_idle_and_busy_ones_stay() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = topology();
    let path = site(
        &sb,
        "te",
        r#"
[multicast]
expire = "1s"
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
group = "239.2.0.0/16"
to = ["br-b"]
"#,
    );
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let tx = sender(&sb, SND4.into());
    send(&tx, ip("239.2.1.1"), 8, "once");
    send(&tx, ip("239.9.9.9"), 8, "once");
    m.wait_entry("10.1.0.10", "239.2.1.1", "learned");
    m.wait_entry("10.1.0.10", "239.9.9.9", "stop");
    // 239.2.2.2 keeps passing packets while the others idle.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                send(&tx, ip("239.2.2.2"), 8, "busy");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    m.wait_entry("10.1.0.10", "239.2.2.2", "learned");
    wait_until("idle entries to expire", Duration::from_secs(8), || {
        (m.entry("10.1.0.10", "239.2.1.1").is_none() && m.entry("10.1.0.10", "239.9.9.9").is_none())
            .then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    busy.join().unwrap();
    assert!(
        m.entry("10.1.0.10", "239.2.2.2").is_some(),
        "a busy entry expired"
    );
    assert!(
        m.entry("10.1.0.10", "239.1.1.1").is_some(),
        "a configured entry expired"
    );
    let cache = sb.sh("ip mroute show");
    assert!(
        !cache.contains("239.2.1.1"),
        "expired entry left in the kernel: {cache}"
    );
    assert_eq!(m.stop(), 0);
}

#[test]
fn ssdp_broadcast_arrives_as_multicast_on_the_other_bridge() {
    let sb = topology();
    let path = site(
        &sb,
        "ts",
        r#"
[multicast]
snooping = false
[multicast.ssdp]
bridges = ["br-a", "br-b"]
ports = [1900]
"#,
    );
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let table = sb.sh("nft list table inet appliance-ts-mroute");
    assert!(table.contains("239.255.255.250"), "{table}");
    // Bound to the group itself: only datagrams addressed to 239.255.255.250 arrive.
    let ssdp: IpAddr = ip("239.255.255.250");
    let rx = receiver_on(&sb, "rcv", vec![ssdp], SocketAddr::from((ssdp, 1900)));
    let tx = sender(&sb, SND4.into());
    let msearch = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n";
    send_to(
        &tx,
        SocketAddr::from((Ipv4Addr::BROADCAST, 1900)),
        64,
        msearch,
    );
    let mut got = Vec::new();
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        has(got, msearch)
    });
    m.wait_entry("10.1.0.10", "239.255.255.250", "learned");
    // The subnet's broadcast address too, and a TTL-1 sender (given one more hop).
    send_to(
        &tx,
        SocketAddr::from(([10, 1, 0, 255], 1900)),
        64,
        "subnet broadcast",
    );
    tx.set_ttl(1).unwrap();
    send_to(
        &tx,
        SocketAddr::from((Ipv4Addr::BROADCAST, 1900)),
        1,
        "ttl 1 broadcast",
    );
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        has(got, "subnet broadcast") && has(got, "ttl 1 broadcast")
    });
    assert_eq!(m.stop(), 0);
    let tables = sb.sh("nft list tables");
    assert!(
        !tables.contains("appliance-ts-mroute"),
        "table left: {tables}"
    );
}

const SMCROUTE_CONF: &str = "\
# the same topology for smcroute and for appliance mroute
phyint br-a enable
phyint br-b enable ttl-threshold 3
mroute from br-a source 10.1.0.10 group 239.1.1.1 to br-b
mroute from br-a source 10.1.0.11 group 239.1.1.2 to br-b
mroute from br-b source 10.2.0.10 group 239.7.7.7 to br-a
mroute from br-a source fd01::10 group ff3e::1:1 to br-b
mroute from br-a group 239.2.0.0/16 to br-b   # (*,G) range
mgroup from br-a group 239.5.5.5
";

/// The kernel's multicast routing state, without counters, sorted.
fn kernel_table(sb: &Sandbox) -> String {
    let mut out = String::new();
    for (cmd, cols) in [
        ("ip mroute show", None),
        ("ip -6 mroute show", None),
        ("tail -n +2 /proc/net/ip_mr_vif", Some(vec![0, 1, 6, 7, 8])),
        ("tail -n +2 /proc/net/ip6_mr_vif", Some(vec![0, 1, 6])),
        (
            "tail -n +2 /proc/net/ip_mr_cache",
            Some(vec![0, 1, 2, 6, 7, 8]),
        ),
    ] {
        let text = sb.sh(cmd);
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match &cols {
                    Some(c) => c
                        .iter()
                        .filter_map(|i| w.get(*i).copied())
                        .collect::<Vec<_>>()
                        .join(" "),
                    None => w.join(" "),
                }
            })
            .filter(|l| !l.is_empty())
            .collect();
        lines.sort();
        out.push_str(&format!("== {cmd}\n{}\n", lines.join("\n")));
    }
    out
}

fn wait_table(sb: &Sandbox, what: &str, want: &[&str]) -> String {
    wait_until(what, Duration::from_secs(10), || {
        let t = kernel_table(sb) + &sb.sh("cat /proc/net/igmp");
        want.iter().all(|w| t.contains(w)).then_some(())
    });
    kernel_table(sb)
}

#[test]
fn smcroute_conf_gives_the_same_kernel_table_as_smcroute() {
    require_program("smcrouted");
    let sb = topology();
    let conf = sb.write("smcroute.conf", SMCROUTE_CONF);
    let want = [
        "(10.1.0.10,239.1.1.1)",
        "(10.1.0.11,239.1.1.2)",
        "(10.2.0.10,239.7.7.7)",
        "(fd01::10,ff3e::1:1)",
        "050505EF",
    ];
    let learned = ["(10.1.0.10,239.2.1.1)"];
    let tx = sender(&sb, SND4.into());

    // The real smcroute (Debian's), in the foreground with its own socket and pid file.
    let smc_log = sb.path("smcrouted.log");
    let mut smc = sb
        .cmd("smcrouted")
        .args(["-n", "-N", "-l", "debug", "-f"])
        .arg(&conf)
        .args([
            "-u",
            "/run/smcroute-test.sock",
            "-P",
            "/run/smcroute-test.pid",
        ])
        .stdout(Stdio::null())
        .stderr(File::create(&smc_log).unwrap())
        .spawn()
        .expect("spawn smcrouted");
    let theirs = wait_table(&sb, "smcroute's routes in the kernel", &want);
    send(&tx, ip("239.2.1.1"), 8, "template");
    let theirs_learned = wait_table(&sb, "smcroute to learn (*,G)", &learned);

    // While smcroute holds the API, appliance mroute says so and exits.
    let out = sb
        .appliance()
        .args(["mroute", "--smcroute-conf"])
        .arg(&conf)
        .arg("--state-dir")
        .arg(sb.path("busy"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("EADDRINUSE") && err.contains("smcroute"),
        "{err}"
    );

    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { kill(smc.id() as i32, 15) };
    wait_until("smcrouted to exit", Duration::from_secs(10), || {
        smc.try_wait().ok().flatten()
    });
    wait_until("the kernel table to empty", Duration::from_secs(10), || {
        sb.sh("ip mroute show; ip -6 mroute show")
            .trim()
            .is_empty()
            .then_some(())
    });

    // appliance mroute with the same file.
    let state = sb.path("state");
    let m = Mroute::start(
        &sb,
        &[
            "--smcroute-conf",
            conf.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &state,
    );
    let ours = wait_table(&sb, "our routes in the kernel", &want);
    assert_eq!(ours, theirs, "static routes differ from smcroute's");
    send(&tx, ip("239.2.1.1"), 8, "template");
    let ours_learned = wait_table(&sb, "us to learn (*,G)", &learned);
    assert_eq!(
        ours_learned, theirs_learned,
        "learned routes differ from smcroute's"
    );
    assert_eq!(m.stop(), 0);
}

#[test]
fn smcroute_conf_errors_name_the_line_and_too_many_interfaces_fail() {
    let sb = Sandbox::new();
    let conf = sb.write(
        "bad.conf",
        "phyint a enable\nmroute from a group 239.1.1.1\n",
    );
    let out = sb
        .appliance()
        .args(["mroute", "--smcroute-conf"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2: ", conf.display())), "{err}");

    // 33 interfaces exist, the file enables them all: the kernel has 32 VIFs.
    let mut text = String::new();
    let mut script = String::new();
    for i in 0..33 {
        script.push_str(&format!("ip link add d{i} type bridge\n"));
        text.push_str(&format!("phyint d{i} enable\n"));
    }
    sb.sh(&script);
    let conf = sb.write("many.conf", &text);
    let out = sb
        .appliance()
        .args(["mroute", "--smcroute-conf"])
        .arg(&conf)
        .arg("--state-dir")
        .arg(sb.path("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("33 interfaces") && err.contains("32"), "{err}");
}

#[test]
fn a_source_that_moves_is_re_resolved_on_wrongvif() {
    let sb = topology();
    // The same source address reappears behind br-b (a host that moved), and a receiver
    // listens on br-a.
    sb.host("mov", "br-b", &["10.1.0.10/24"]);
    sb.host("rcva", "br-a", &["10.1.0.20/24"]);
    let path = site(
        &sb,
        "tw",
        r#"
[multicast]
snooping = false
[[multicast.route]]
from = "br-a"
group = "239.6.0.0/16"
to = ["br-b"]
[[multicast.route]]
from = "br-b"
group = "239.6.0.0/16"
to = ["br-a"]
"#,
    );
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let g = ip("239.6.6.6");
    let rx_b = receiver(&sb, "rcv", vec![g]);
    let rx_a: UdpSocket = sb.in_netns(Some("rcva"), move || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())
            .unwrap();
        s.join_multicast_v4(&Ipv4Addr::new(239, 6, 6, 6), &Ipv4Addr::new(10, 1, 0, 20))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s.into()
    });
    let tx = sender(&sb, SND4.into());
    send(&tx, g, 8, "from br-a");
    let mut got = Vec::new();
    collect(&rx_b, &mut got, Duration::from_secs(5), |got| {
        has(got, "from br-a")
    });
    let e = m.wait_entry("10.1.0.10", "239.6.6.6", "learned");
    assert_eq!(e["iif"], "br-a");

    let moved: UdpSocket = sb.in_netns(Some("mov"), || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_multicast_if_v4(&SND4).unwrap();
        s.into()
    });
    let mut got_a = Vec::new();
    let mut n = 0;
    wait_until(
        "the moved source's packets on br-a",
        Duration::from_secs(10),
        || {
            n += 1;
            send(&moved, g, 8, &format!("moved {n}"));
            let mut buf = [0u8; 256];
            if let Ok(k) = rx_a.recv(&mut buf) {
                got_a.push(String::from_utf8_lossy(&buf[..k]).into_owned());
            }
            got_a.iter().any(|p| p.starts_with("moved")).then_some(())
        },
    );
    let e = m.wait_entry("10.1.0.10", "239.6.6.6", "learned");
    assert_eq!(e["iif"], "br-b", "{e}");
    assert_eq!(e["oifs"], serde_json::json!(["br-a"]), "{e}");
    assert_eq!(m.stop(), 0);
}

#[test]
fn a_configured_table_is_used() {
    let sb = topology();
    let path = site(
        &sb,
        "tt",
        r#"
[multicast]
table = 10
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
"#,
    );
    // --state-dir overrides the site's (as `up --state-dir` needs for its child).
    let state = sb.path("elsewhere");
    let m = Mroute::start(
        &sb,
        &[
            path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &state,
    );
    assert_eq!(m.status()["table"], 10);
    let t10 = sb.sh("ip mroute show table 10");
    assert!(t10.contains("(10.1.0.10,239.1.1.1)"), "{t10}");
    let main = sb.sh("ip mroute show");
    assert!(!main.contains("239.1.1.1"), "{main}");
    assert_eq!(m.stop(), 0);
}

#[test]
fn smcroute_conf_reload_by_sighup_changes_only_the_edited_route() {
    let sb = topology();
    let text = |g: &str| {
        format!(
            "phyint br-a enable\nphyint br-b enable\n\
             mroute from br-a source 10.1.0.10 group 239.1.1.1 to br-b\n\
             mroute from br-a source 10.1.0.10 group {g} to br-b\n\
             mroute from br-a source 10.1.0.10 group 239.1.1.3 to br-b\n"
        )
    };
    let conf = sb.write("smcroute.conf", &text("239.1.1.2"));
    let state = sb.path("state");
    let m = Mroute::start(
        &sb,
        &[
            "--smcroute-conf",
            conf.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &state,
    );
    m.wait_entry("10.1.0.10", "239.1.1.2", "configured");
    sb.write("smcroute.conf", &text("239.1.1.9"));
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { kill(m.child.id() as i32, 1) };
    let e = m.wait_entry("10.1.0.10", "239.1.1.9", "configured");
    assert!(
        e["why"].as_str().unwrap().ends_with("smcroute.conf:4"),
        "{e}"
    );
    assert!(m.entry("10.1.0.10", "239.1.1.2").is_none());
    let table = sb.sh("ip mroute show");
    assert!(
        !table.contains("239.1.1.2") && table.contains("239.1.1.9"),
        "{table}"
    );
    assert!(
        table.contains("239.1.1.1") && table.contains("239.1.1.3"),
        "{table}"
    );
    // An invalid file changes nothing and says where it is wrong.
    sb.write(
        "smcroute.conf",
        "phyint br-a enable\nmroute from br-a group 10.0.0.1 to br-b\n",
    );
    let answer = request(&m.sock, &Request::Reload).unwrap();
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("smcroute.conf:2"),
        "{answer}"
    );
    assert!(m.entry("10.1.0.10", "239.1.1.9").is_some());
    assert_eq!(m.stop(), 0);
}

#[test]
fn a_re_created_bridge_gets_its_vif_join_and_routes_back() {
    let sb = topology();
    let path = site(
        &sb,
        "tl",
        r#"
[multicast]
snooping = false
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
[[multicast.join]]
on = "br-b"
group = "239.5.5.5"
"#,
    );
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let vif_b = |m: &Mroute| {
        m.status()["vifs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "br-b")
            .map(|v| v["ifindex"].as_u64().unwrap())
    };
    let before = vif_b(&m).expect("br-b is a VIF");
    sb.sh("ip link del br-b\n\
         ip link add br-b type bridge\n\
         ip link set br-b up\n\
         ip addr add 10.2.0.1/24 dev br-b\n\
         ip link set h-rcv master br-b");
    let after = wait_until("br-b's VIF to come back", Duration::from_secs(5), || {
        vif_b(&m).filter(|ix| *ix != before)
    });
    assert_ne!(after, before);
    wait_until(
        "239.5.5.5 joined on br-b again",
        Duration::from_secs(5),
        || {
            let igmp = sb.sh("cat /proc/net/igmp");
            let on_b = igmp.split("br-b").nth(1).unwrap_or("");
            on_b.contains("050505EF").then_some(())
        },
    );
    let links = sb.sh("ip -d link show br-b");
    assert!(links.contains("mcast_snooping 0"), "{links}");
    m.wait_entry("10.1.0.10", "239.1.1.1", "configured");
    let rx = receiver(&sb, "rcv", vec![ip("239.1.1.1")]);
    let tx = sender(&sb, SND4.into());
    send(&tx, ip("239.1.1.1"), 8, "after re-creation");
    let mut got = Vec::new();
    collect(&rx, &mut got, Duration::from_secs(5), |got| {
        has(got, "after re-creation")
    });
    assert_eq!(m.stop(), 0);
}

/// The router's own firewall drops forwarded packets by policy. An accept in the
/// appliance's own table cannot overrule that (nftables ends an accept's effect at its
/// base chain), so with `accept_in` the forwarder puts tagged accepts into that chain,
/// and takes them out again when it stops.
#[test]
fn accept_in_lets_routed_groups_through_a_drop_policy_and_is_removed_on_exit() {
    let sb = topology();
    sb.sh("nft add table inet filter\n\
           nft add chain inet filter forward '{ type filter hook forward priority 0; policy drop; }'\n\
           nft add rule inet filter forward tcp dport 22 accept comment '\"ssh\"'");
    let site = site(
        &sb,
        "fw",
        r#"
[multicast]
accept_in = ["inet filter forward"]
[[multicast.route]]
from = "br-a"
source = "10.1.0.10"
group = "239.1.1.1"
to = ["br-b"]
[[multicast.route]]
from = "br-a"
source = "fd01::10"
group = "ff3e::1:1"
to = ["br-b"]
"#,
    );
    let rx = receiver(&sb, "rcv", vec![ip("239.1.1.1")]);
    let m = Mroute::start(&sb, &[site.to_str().unwrap()], &sb.path("state"));
    m.wait_entry("10.1.0.10", "239.1.1.1", "configured");
    let chain = sb.sh("nft list chain inet filter forward");
    assert_eq!(
        chain.matches("comment \"appliance-fw-mroute\"").count(),
        2,
        "one accept per route, both families in an inet chain:\n{chain}"
    );
    let tx = sender(&sb, ip("10.1.0.10"));
    let mut got = vec![];
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has(&got, "through") {
        assert!(Instant::now() < deadline, "nothing crossed the drop policy");
        n += 1;
        send(&tx, ip("239.1.1.1"), 8, "through");
        collect(&rx, &mut got, Duration::from_secs(5), |g| {
            has(g, "through") || g.len() >= n
        });
    }
    assert_eq!(m.stop(), 0);
    let chain = sb.sh("nft list chain inet filter forward");
    assert!(!chain.contains("appliance-"), "left behind:\n{chain}");
    assert!(
        chain.contains("comment \"ssh\""),
        "the operator's rule went:\n{chain}"
    );
    assert!(chain.contains("policy drop"), "{chain}");
}

#[test]
fn a_dripping_control_client_does_not_hold_up_learning_or_other_clients() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sb = topology();
    let path = site(
        &sb,
        "cd",
        r#"
[[multicast.route]]
from = "br-a"
group = "239.2.0.0/16"
to = ["br-b"]
"#,
    );
    let m = Mroute::start(&sb, &[path.to_str().unwrap()], &sb.path("state"));
    let mode = std::fs::metadata(&m.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mroute.sock is for root only");
    // A client that sends a byte every 100 ms and never a newline, reconnecting when it
    // is cut off: each read is quick, the request never ends.
    let stop = Arc::new(AtomicBool::new(false));
    let dripped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drip = {
        let (stop, dripped, sock) = (stop.clone(), dripped.clone(), m.sock.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut c) = std::os::unix::net::UnixStream::connect(&sock) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                while !stop.load(Ordering::SeqCst) && c.write_all(b" ").is_ok() {
                    dripped.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    // The forwarder is reading the dripping request before anything else is asked.
    wait_until(
        "the dripping client connected and writing",
        Duration::from_secs(5),
        || (dripped.load(Ordering::SeqCst) >= 3).then_some(()),
    );
    // Upcalls are still served: a new (S,G) reaches the kernel's table...
    let tx = sender(&sb, SND4.into());
    wait_until(
        "(10.1.0.10,239.2.7.7) in the kernel's table while a client drips",
        Duration::from_secs(5),
        || {
            send(&tx, ip("239.2.7.7"), 8, "x");
            sb.sh("ip mroute show")
                .contains("(10.1.0.10,239.2.7.7)")
                .then_some(())
        },
    );
    // ...and another client gets its answer.
    let v = wait_until(
        "a status answer while a client drips",
        Duration::from_secs(5),
        || m.try_status(),
    );
    assert!(
        v["entries"].as_array().is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    stop.store(true, Ordering::SeqCst);
    drip.join().unwrap();
    assert_eq!(m.stop(), 0);
}

/// A host on br-a sends from 60 spoofed sources; the table holds 40 learned entries, 20
/// per input interface: br-a's senders get their 20, and a legitimate sender on br-b is
/// still learned and reaches its receiver on br-a.
#[test]
fn a_spoofing_vlan_cannot_take_the_other_vlans_share_of_the_table() {
    let sb = topology();
    let path = site(
        &sb,
        "sp",
        r#"
[[multicast.route]]
from = "br-a"
group = "239.2.0.0/16"
to = ["br-b"]
[[multicast.route]]
from = "br-b"
group = "239.3.0.0/16"
to = ["br-a"]
"#,
    );
    let m = Mroute::start(
        &sb,
        &[path.to_str().unwrap(), "--max-entries", "40"],
        &sb.path("state"),
    );
    let spoofed: Vec<IpAddr> = (100..160)
        .map(|i| IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)))
        .collect();
    sb.sh(&spoofed
        .iter()
        .map(|a| format!("ip -n snd addr add {a}/24 dev eth0"))
        .collect::<Vec<_>>()
        .join("\n"));
    for a in &spoofed {
        send(&sender(&sb, *a), ip("239.2.1.1"), 8, "spoofed");
    }
    let from_a = |v: &Value| {
        v["entries"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["iif"] == "br-a").count())
    };
    wait_until("br-a's share to fill", Duration::from_secs(10), || {
        (from_a(&m.status()) >= 20).then_some(())
    });
    // The legitimate sender on the other VLAN, and a receiver on br-a.
    let rx = sb.in_netns(Some("snd"), || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())
            .unwrap();
        s.join_multicast_v4(&Ipv4Addr::new(239, 3, 1, 1), &SND4)
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        UdpSocket::from(s)
    });
    let tx = sb.in_netns(Some("rcv"), || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_multicast_if_v4(&RCV4).unwrap();
        s.bind(&SocketAddr::from((RCV4, 0)).into()).unwrap();
        UdpSocket::from(s)
    });
    let mut got = Vec::new();
    collect(&rx, &mut got, Duration::from_secs(10), |got| {
        send(&tx, ip("239.3.1.1"), 8, "legit");
        has(got, "legit")
    });
    m.wait_entry("10.2.0.10", "239.3.1.1", "learned");
    let st = m.status();
    assert_eq!(from_a(&st), 20, "br-a holds exactly its share: {st}");
    assert!(
        read(&m.log).contains("its interface has its share of the table"),
        "{}",
        read(&m.log)
    );
    assert_eq!(m.stop(), 0);
}

/// An interface whose index does not fit an IPv6 MIF's 16 bits is refused, naming it,
/// instead of being truncated to another interface's index.
#[test]
fn an_ifindex_beyond_16_bits_is_refused_for_ipv6() {
    let sb = topology();
    sb.sh("ip link add dm0 index 70000 type bridge\nip link set dm0 up");
    let path = site(
        &sb,
        "bi",
        r#"
[[multicast.route]]
from = "dm0"
group = "ff3e::1:0/112"
to = ["br-b"]
"#,
    );
    let out = sb
        .appliance()
        .arg("mroute")
        .arg(&path)
        .env("APPLIANCE_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("dm0") && err.contains("ifindex 70000 does not fit the 16 bits"),
        "{err}"
    );
}
