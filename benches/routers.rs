//! Several routers, one run: `cargo bench --bench routers` (as root).
//!
//! In a fresh namespace, three routers in a chain, each a network namespace running its
//! own `appliance up`: A runs the headend (the test-tone service,
//! `ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}`) on its
//! link to B and on its own LAN; B proxies MLD (upstream A, downstream C's link and its
//! own LAN); C proxies (upstream B, downstream its LAN). A receiver host on each LAN,
//! whose own kernel sends the MLDv2 reports. Default querier timers everywhere
//! (last-listener interval 1 s, count 2).
//! - IPv6 join to the first RTP packet: on A's LAN (the headend alone), behind B (one
//!   proxy hop), behind C (two proxy hops), every join cold (it starts the source);
//! - IPv6 leave to the source stopped on A, from each LAN;
//! - IPv6 join to the first packet behind one and two proxies while the source already
//!   runs for a receiver on A's LAN (what the proxies add).
//!
//! IPv4 through FRR (PIM-SM), in the same run, in namespaces of their own: a source host
//! — router A — router B — router C, each router `appliance up` with `engine = "frr"`
//! (PIM on every interface, IGMPv3 towards its LAN, A's address the RP), a receiver host
//! on each router's LAN (A's is not the source's link). The source sends a small UDP
//! datagram to the group every 1 ms (a thread of the bench, paced by sleep, so a little
//! more), which adds half that interval on average (about 0.5 ms) to each join figure. It
//! sends from the start, so a new group's first packet, which FRR loses on the register
//! path, is in none of the figures.
//! - IPv4 join (the receiver's socket join, IGMPv3) to the first packet: on A's LAN (the
//!   source's router alone), behind B (one router hop), behind C (two router hops);
//! - IPv4 leave to stopped: the receiver's leave to the last packet of the group on its
//!   LAN, seen by a packet socket on the receiver host (no packet for 250 ms = stopped).
//!   FRR's IGMP defaults set it: last member query interval 1 s, count 2.
//!
//! `cargo bench --bench routers -- ipv4` (or `ipv6`) runs one half only.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/figures.rs"]
mod figures;
#[path = "../tests/common/routers4.rs"]
mod routers4;
#[path = "../tests/common/routers6.rs"]
mod routers6;

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use figures::*;
use routers6::*;
use socket2::{Domain, Protocol, Socket, Type};

const T: Duration = Duration::from_secs(20);
const G1: &str = "ff3e:40:fd00::8000:1";
const TONE: &str = "ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}";
const RUNS: usize = 10;

/// Joins G1 on `host`'s eth0 (its kernel reports at once); the socket and when.
fn join(sb: &Sandbox, host: &str) -> (UdpSocket, Instant) {
    let g: IpAddr = G1.parse().unwrap();
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::new(g, 5004).into()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let IpAddr::V6(g6) = g else { unreachable!() };
        let t = Instant::now();
        s.join_multicast_v6(&g6, idx).unwrap();
        (s.into(), t)
    })
}

/// RUNS cold joins from `host`, each followed by its leave: (join to first packet, leave
/// to the source stopped on A).
fn joins_and_leaves(sb: &Sandbox, a: &Router, host: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (mut joins, mut leaves) = (vec![], vec![]);
    for _ in 0..RUNS {
        wait_until("the service idle on A", T, || {
            (service_state(a) == "idle").then_some(())
        });
        let (u, t) = join(sb, host);
        joins.push(first_packet(&u, t, T));
        wait_until("the service running on A", T, || {
            (service_state(a) == "running").then_some(())
        });
        let t = Instant::now();
        drop(u);
        wait_until("the source stopped on A", T, || {
            (service_state(a) != "running").then_some(())
        });
        leaves.push(t.elapsed());
    }
    (joins, leaves)
}

/// The headend's listener interfaces for service 1 on A.
fn listeners(a: &Router) -> Vec<String> {
    a.ask("headend.sock")
        .and_then(|v| {
            let s = v["services"]
                .as_array()?
                .iter()
                .find(|s| s["number"] == 1)?;
            Some(s["listeners"].as_object()?.keys().cloned().collect())
        })
        .unwrap_or_default()
}

/// RUNS joins from `host` while the source already runs for a receiver on A's LAN: what
/// the proxies add to a join (reports up the chain, routes down it). Each leave is waited
/// out until A no longer sends on its link to B.
fn warm_joins(sb: &Sandbox, a: &Router, host: &str) -> Vec<Duration> {
    let mut v = vec![];
    for _ in 0..RUNS {
        wait_until("A not sending towards B", T, || {
            (!listeners(a).iter().any(|l| l == "ab")).then_some(())
        });
        let (u, t) = join(sb, host);
        v.push(first_packet(&u, t, T));
        drop(u);
    }
    v
}

fn main() {
    require_root();
    // `cargo bench` passes `--bench`; a bare word picks one half.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let sb = Sandbox::new();
    println!(
        "routers figures (`cargo bench --bench routers`, one run, {RUNS} joins each, \
         default querier timers)"
    );
    if only.as_deref().is_none_or(|o| o == "ipv6") {
        ipv6(&sb);
    }
    if only.as_deref().is_none_or(|o| o == "ipv4") {
        ipv4(&sb);
    }
}

/// The IPv6 half: three routers, the headend on A, MLD proxies on B and C.
fn ipv6(sb: &Sandbox) {
    require_program("ffmpeg");
    routers(
        sb,
        &["ra", "rb", "rc"],
        &[("ra", "ab", "rb", "ba"), ("rb", "bc", "rc", "cb")],
    );
    sb.sh("ip -n ra addr add fd00:ab::1/64 dev ab nodad\n\
           ip -n rb addr add fd00:ab::2/64 dev ba nodad\n\
           ip -n rb addr add fd00:bc::1/64 dev bc nodad\n\
           ip -n rc addr add fd00:bc::2/64 dev cb nodad");
    lan(sb, "ra", "br-a", "fd00:a::1/64", "ha", "fd00:a::11/64");
    lan(sb, "rb", "br-b", "fd00:b::1/64", "hb", "fd00:b::11/64");
    lan(sb, "rc", "br-c", "fd00:c::1/64", "hc", "fd00:c::11/64");
    link_locals(
        sb,
        &[
            ("ra", "ab"),
            ("ra", "br-a"),
            ("rb", "ba"),
            ("rb", "bc"),
            ("rb", "br-b"),
            ("rc", "cb"),
            ("rc", "br-c"),
            ("ha", "eth0"),
            ("hb", "eth0"),
            ("hc", "eth0"),
        ],
    );
    let mut a = Router::start(
        sb,
        "ra",
        &format!(
            "[headend]\ninterfaces = [\"ab\", \"br-a\"]\nprefix = \"fd00::/64\"\n\
             [[headend.service]]\nnumber = 1\nname = \"Tone 1\"\ncommand = \"{TONE}\"\n"
        ),
    );
    a.wait_part("headend.sock");
    let mut b = Router::start(
        sb,
        "rb",
        "[routing.mld_proxy]\nupstream = \"ba\"\ndownstream = [\"bc\", \"br-b\"]\n",
    );
    b.wait_part("mroute.sock");
    let mut c = Router::start(
        sb,
        "rc",
        "[routing.mld_proxy]\nupstream = \"cb\"\ndownstream = [\"br-c\"]\n",
    );
    c.wait_part("mroute.sock");

    for (what, host) in [
        ("IPv6 headend alone (A's LAN)", "ha"),
        ("IPv6 one proxy hop (behind B)", "hb"),
        ("IPv6 two proxy hops (behind C)", "hc"),
    ] {
        let (mut j, mut l) = joins_and_leaves(sb, &a, host);
        println!(
            "  {what:<36} join to first packet p50 {:>9} p95 {:>9}   leave to stopped p50 {:>9} max {:>9}",
            ms(pct(&mut j, 0.5)),
            ms(pct(&mut j, 0.95)),
            ms(pct(&mut l, 0.5)),
            ms(*l.iter().max().unwrap())
        );
    }
    // Warm: a receiver on A's LAN keeps the source running.
    let (keep, t) = join(sb, "ha");
    first_packet(&keep, t, T);
    for (what, host) in [
        ("IPv6 one proxy hop, source running", "hb"),
        ("IPv6 two proxy hops, source running", "hc"),
    ] {
        let mut j = warm_joins(sb, &a, host);
        println!(
            "  {what:<36} join to first packet p50 {:>9} p95 {:>9}",
            ms(pct(&mut j, 0.5)),
            ms(pct(&mut j, 0.95)),
        );
    }
    drop(keep);
    drop((a, b, c));
}

const G4: Ipv4Addr = Ipv4Addr::new(239, 4, 0, 1);
const PORT4: u16 = 5004;
/// No packet of the group on a LAN for this long: its router stopped forwarding there.
const QUIET: Duration = Duration::from_millis(250);

/// The IPv4 namespaces: src4 (10.41.0.2) — a-s|A|a-b,a-h (10.41.0.1, 10.40.1.1,
/// 10.42.0.1) — b-a|B|b-c,b-h (10.40.1.2, 10.40.2.1, 10.43.0.1) — c-b|C|c-h (10.40.2.2,
/// 10.44.0.1); receivers h4a (10.42.0.2), h4b (10.43.0.2), h4c (10.44.0.2). Unicast
/// routes towards the source and the RP for RPF, each a prefix of its own: FRR's
/// nexthop tracking, which pimd's RPF uses, does not resolve through a default route
/// (unless `ip nht resolve-via-default`), so C with only a default route never joins.
fn ipv4_topology(sb: &Sandbox) {
    sb.sh(
        "for n in src4 fa fb fc h4a h4b h4c; do ip netns add $n; ip -n $n link set lo up; done\n\
         link() { ip link add $2 netns $1 type veth peer name $4 netns $3; \
                  ip -n $1 addr add $5 dev $2; ip -n $3 addr add $6 dev $4; \
                  ip -n $1 link set $2 up; ip -n $3 link set $4 up; }\n\
         link src4 eth0 fa a-s 10.41.0.2/24 10.41.0.1/24\n\
         link fa a-b fb b-a 10.40.1.1/24 10.40.1.2/24\n\
         link fb b-c fc c-b 10.40.2.1/24 10.40.2.2/24\n\
         link fa a-h h4a eth0 10.42.0.1/24 10.42.0.2/24\n\
         link fb b-h h4b eth0 10.43.0.1/24 10.43.0.2/24\n\
         link fc c-h h4c eth0 10.44.0.1/24 10.44.0.2/24\n\
         ip -n src4 route add default via 10.41.0.1\n\
         ip -n h4a route add default via 10.42.0.1\n\
         ip -n h4b route add default via 10.43.0.1\n\
         ip -n h4c route add default via 10.44.0.1\n\
         ip -n fa route add 10.40.2.0/24 via 10.40.1.2\n\
         ip -n fa route add 10.43.0.0/24 via 10.40.1.2\n\
         ip -n fa route add 10.44.0.0/24 via 10.40.1.2\n\
         ip -n fb route add 10.41.0.0/24 via 10.40.1.1\n\
         ip -n fb route add 10.42.0.0/24 via 10.40.1.1\n\
         ip -n fb route add 10.44.0.0/24 via 10.40.2.2\n\
         for n in 10.40.1.0/24 10.41.0.0/24 10.42.0.0/24 10.43.0.0/24; do \
             ip -n fc route add $n via 10.40.2.1; done\n\
         for n in fa fb fc; do ip netns exec $n sysctl -qw net.ipv4.ip_forward=1; done\n",
    );
}

/// The source: a thread sending a small numbered datagram to G4 every 1 ms from src4,
/// until the flag is set.
fn ipv4_source(sb: &Sandbox) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let s = in_netns(sb, Some("src4"), || {
        let s = UdpSocket::bind("10.41.0.2:0").expect("bind");
        s.set_multicast_ttl_v4(16).expect("ttl");
        s.connect(SocketAddrV4::new(G4, PORT4)).expect("connect");
        s
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut n = 0u32;
        while !flag.load(Ordering::Relaxed) {
            let _ = s.send(&n.to_be_bytes());
            n = n.wrapping_add(1);
            // Pacing the source, not waiting for an event.
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (stop, t)
}

/// Joins G4 on `host`'s eth0 (`addr`; its kernel sends the IGMPv3 report at once); the
/// socket and when.
fn join4(sb: &Sandbox, host: &str, addr: Ipv4Addr) -> (UdpSocket, Instant) {
    in_netns(sb, Some(host), move || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(SocketAddrV4::new(G4, PORT4)).into())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let t = Instant::now();
        s.join_multicast_v4(&G4, &addr).unwrap();
        (s.into(), t)
    })
}

/// The time from `since` to the first datagram on `u`, None after T.
fn first_packet4(u: &UdpSocket, since: Instant) -> Option<Duration> {
    let mut buf = [0u8; 64];
    while since.elapsed() < T {
        if u.recv(&mut buf).is_ok() {
            return Some(since.elapsed());
        }
    }
    None
}

/// A packet socket on `host` (every IPv4 packet its interfaces see, joined or not).
fn tap(sb: &Sandbox, host: &str) -> Socket {
    in_netns(sb, Some(host), || {
        const ETH_P_IP: u16 = 0x0800;
        let proto = Protocol::from(i32::from(ETH_P_IP.to_be()));
        let s = Socket::new(Domain::PACKET, Type::DGRAM, Some(proto)).expect("packet socket");
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        s
    })
}

/// Leaves (drops `u`) on `host` and returns the time to the last packet of G4 its LAN
/// got, once none came for QUIET.
fn leave4(sb: &Sandbox, host: &str, u: UdpSocket) -> Duration {
    let mut tap = tap(sb, host);
    let t = Instant::now();
    drop(u);
    let mut last = t;
    let mut buf = [0u8; 2048];
    loop {
        if let Ok(n) = tap.read(&mut buf) {
            // IPv4 header: protocol at 9, destination at 16..20.
            if n >= 20 && buf[9] == 17 && buf[16..20] == G4.octets() {
                last = Instant::now();
            }
        }
        if last.elapsed() >= QUIET {
            return last - t;
        }
        assert!(
            t.elapsed() < T,
            "{host}'s LAN still gets {G4} {T:?} after the leave"
        );
    }
}

/// The IPv4 half: FRR on three routers, the source on A.
fn ipv4(sb: &Sandbox) {
    for p in [
        "/usr/lib/frr/zebra",
        "/usr/lib/frr/staticd",
        "/usr/lib/frr/pimd",
    ] {
        assert!(
            std::path::Path::new(p).is_file(),
            "{p} is missing: scripts/install-deps installs frr"
        );
    }
    require_program("vtysh");
    ipv4_topology(sb);
    const RP: &str = "10.40.1.1";
    let mut a = routers4::Router::start(sb, "fa", &["a-s", "a-b", "a-h"], &["a-h"], RP);
    let mut b = routers4::Router::start(sb, "fb", &["b-a", "b-c", "b-h"], &["b-h"], RP);
    let mut c = routers4::Router::start(sb, "fc", &["c-b", "c-h"], &["c-h"], RP);
    for r in [&mut a, &mut b, &mut c] {
        r.wait_healthy(Duration::from_secs(30));
    }
    for (r, nb, on) in [(&b, "10.40.1.1", "b-a"), (&c, "10.40.2.1", "c-b")] {
        wait_until(
            &format!("{} to list {nb} as its PIM neighbour", r.name),
            Duration::from_secs(40),
            || {
                r.status()?["routing"]["neighbors"]
                    .as_array()?
                    .iter()
                    .any(|n| n["address"] == nb && n["interface"] == on)
                    .then_some(())
            },
        );
    }
    let (stop, sender) = ipv4_source(sb);
    for (what, host, addr) in [
        ("IPv4 FRR source's router (A's LAN)", "h4a", [10, 42, 0, 2]),
        ("IPv4 FRR one router hop (behind B)", "h4b", [10, 43, 0, 2]),
        ("IPv4 FRR two router hops (behind C)", "h4c", [10, 44, 0, 2]),
    ] {
        let (mut j, mut l) = (vec![], vec![]);
        for _ in 0..RUNS {
            let (u, t) = join4(sb, host, Ipv4Addr::from(addr));
            j.push(first_packet4(&u, t).unwrap_or_else(|| {
                panic!(
                    "{what}: no packet of {G4} within {T:?} of the join; the routers say:\n\
                     A {}\nB {}\nC {}",
                    a.status_text(true),
                    b.status_text(true),
                    c.status_text(true)
                )
            }));
            l.push(leave4(sb, host, u));
        }
        println!(
            "  {what:<36} join to first packet p50 {:>9} p95 {:>9}   leave to stopped p50 {:>9} max {:>9}",
            ms(pct(&mut j, 0.5)),
            ms(pct(&mut j, 0.95)),
            ms(pct(&mut l, 0.5)),
            ms(*l.iter().max().unwrap())
        );
    }
    println!(
        "  (IPv4: the source sends every 1 ms, which adds about 0.5 ms to a join on average; \
         it runs throughout, so the first packet of a new group, lost on FRR's register \
         path, is in no figure; leave to stopped is the last packet on the receiver's LAN, \
         set by FRR's IGMP defaults: last member query interval 1 s, count 2)"
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("source thread");
    for r in [&mut a, &mut b, &mut c] {
        let name = r.name;
        assert_eq!(r.stop(), Some(0), "{name}: {}", r.up.logs());
    }
}
