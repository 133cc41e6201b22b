//! IPv6 across several routers by MLD proxying (RFC 4605), end to end: each router is a
//! network namespace of the test's sandbox running its own `appliance up`, linked by
//! veths; router A runs the headend (a test-tone service) on its link to B, the routers
//! behind it proxy (`[routing.mld_proxy]`), and a receiver host's own kernel sends the
//! MLDv2 join. What the receiver gets is real RTP; what the routers say comes from their
//! control sockets.

mod common;
#[path = "common/routers6.rs"]
mod routers6;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use routers6::*;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const T: Duration = Duration::from_secs(20);
const G1: &str = "ff3e:40:fd00::8000:1";
const TONE: &str = "ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}";
/// Short querier timers, on the headend and on every proxy's downstreams.
const TIMERS: &str = "query_interval = \"2s\"\nquery_response_interval = \"1s\"\n\
                      last_listener_interval = \"200ms\"\n";

fn headend_site() -> String {
    format!(
        "[headend]\ninterfaces = [\"ab\"]\nprefix = \"fd00::/64\"\n{TIMERS}\
         [[headend.service]]\nnumber = 1\nname = \"Tone 1\"\ncommand = \"{TONE}\"\n"
    )
}

fn proxy_site(upstream: &str, downstream: &str) -> String {
    format!(
        "[routing.mld_proxy]\nupstream = \"{upstream}\"\ndownstream = [\"{downstream}\"]\n{TIMERS}"
    )
}

/// A receiver on `host`: a UDP socket on port 5004 that joined `group` on eth0 (its
/// kernel sends the MLDv2 report), until dropped.
fn receiver(sb: &Sandbox, host: &str, group: &str) -> UdpSocket {
    let group: IpAddr = group.parse().unwrap();
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let IpAddr::V6(g) = group else { unreachable!() };
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::new(group, 5004).into()).unwrap();
        s.join_multicast_v6(&g, idx).unwrap();
        let u: UdpSocket = s.into();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        u
    })
}

/// Waits for an RTP packet at the receiver; panics with the routers' logs.
fn rtp(u: &UdpSocket, routers: &[&Router]) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("an RTP packet at the receiver", T, || {
            u.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        })
    }));
    let p = r.unwrap_or_else(|_| {
        let logs: Vec<String> = routers
            .iter()
            .map(|r| format!("--- router {}:\n{}\nproxy: {}", r.name, r.log(), r.proxy()))
            .collect();
        panic!("no RTP at the receiver\n{}", logs.join("\n"))
    });
    assert_eq!(p[0] >> 6, 2, "not RTP version 2");
    p
}

fn wait_for(what: &str, routers: &[&Router], mut cond: impl FnMut() -> bool) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(what, T, || cond().then_some(()))
    }));
    if r.is_err() {
        let logs: Vec<String> = routers
            .iter()
            .map(|r| format!("--- router {}:\n{}\nproxy: {}", r.name, r.log(), r.proxy()))
            .collect();
        panic!("{what}: not so\n{}", logs.join("\n"));
    }
}

/// Raw sockets of `protocol` open in a router's network namespace (/proc/net/raw shows
/// a raw socket's protocol as its local port).
fn raw_sockets(sb: &Sandbox, ns: &str, file: &str, protocol: u16) -> usize {
    let text = sb.sh(&format!("ip netns exec {ns} cat /proc/net/{file}"));
    let port = format!(":{protocol:04X} ");
    text.lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&port))
        })
        .count()
}

/// tshark on `iface` of router `ns`, printing each MLDv2 report as "source, record types,
/// groups, sources" (tab-separated, lists comma-separated); started and capturing.
fn reports(sb: &Sandbox, ns: &str, iface: &str) -> Background {
    require_program("tshark");
    let mut cmd = sb.cmd("ip");
    cmd.args(["netns", "exec", ns, "tshark", "-l", "-n", "-i", iface])
        // MLD comes behind a hop-by-hop header (Router Alert): BPF's `icmp6` misses it.
        .args(["-f", "ip6[6] == 0"])
        .args(["-Y", "icmpv6.type == 143", "-T", "fields", "-e", "ipv6.src"])
        .args(["-e", "icmpv6.mldr.mar.record_type"])
        .args(["-e", "icmpv6.mldr.mar.multicast_address"])
        .args(["-e", "icmpv6.mldr.mar.source_address"]);
    let mut bg = Background::spawn(sb, &format!("tshark-{ns}-{iface}"), cmd);
    bg.wait_for("Capturing on", T);
    bg
}

/// Whether tshark printed a report from `from` with a record of `kind` (RFC 9777
/// §5.2.12: 1 IS_IN, 2 IS_EX, 3 TO_IN, 4 TO_EX, 5 ALLOW, 6 BLOCK) for `group`, naming
/// `source` when given.
fn reported(t: &Background, from: &str, kind: u8, group: &str, source: Option<&str>) -> bool {
    t.out().lines().any(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 3 || f[0] != from {
            return false;
        }
        let kinds: Vec<&str> = f[1].split(',').collect();
        let groups: Vec<&str> = f[2].split(',').collect();
        kinds.iter().zip(&groups).any(|(k, g)| {
            *k == kind.to_string()
                && *g == group
                && source.is_none_or(|s| f.get(3).is_some_and(|l| l.split(',').any(|x| x == s)))
        })
    })
}

fn has_group(v: &Value, list: &str, group: &str) -> bool {
    v[list]
        .as_array()
        .into_iter()
        .flatten()
        .any(|j| j["group"] == group)
}

/// Router A with the headend on its link `ab` to router B, which proxies MLD from `ba`
/// to its LAN `br-lan` with host h1; both running, A's headend and B's forwarder answering.
fn headend_and_proxy(sb: &Sandbox) -> (Router, Router) {
    routers(sb, &["ra", "rb"], &[("ra", "ab", "rb", "ba")]);
    sb.sh("ip -n ra addr add fd00:ab::1/64 dev ab nodad\n\
           ip -n rb addr add fd00:ab::2/64 dev ba nodad");
    lan(sb, "rb", "br-lan", "fd00:b::1/64", "h1", "fd00:b::11/64");
    link_locals(
        sb,
        &[("ra", "ab"), ("rb", "ba"), ("rb", "br-lan"), ("h1", "eth0")],
    );
    let mut a = Router::start(sb, "ra", &headend_site());
    a.wait_part("headend.sock");
    let mut b = Router::start(sb, "rb", &proxy_site("ba", "br-lan"));
    b.wait_part("mroute.sock");
    (a, b)
}

#[test]
fn a_join_behind_a_proxy_starts_the_headends_source_and_the_last_leave_stops_it() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let (a, b) = headend_and_proxy(&sb);
    assert_eq!(service_state(&a), "idle");

    // The proxy takes no IPv4 multicast routing (FRR's pimd may own it): no raw IGMP
    // socket in its namespace at all.
    assert_eq!(
        raw_sockets(&sb, "rb", "raw", libc::IPPROTO_IGMP as u16),
        0,
        "a raw IGMP socket is open in the proxy's namespace:\n{}",
        sb.sh("ip netns exec rb cat /proc/net/raw")
    );

    let up = reports(&sb, "rb", "ba");
    let me = link_local(&sb, "rb", "ba");
    let r = receiver(&sb, "h1", G1);
    let p = rtp(&r, &[&a, &b]);
    assert_eq!(p[1] & 0x7f, 97, "Opus is dynamic payload type 97");
    // B's kernel reported the any-source join on its upstream (a MIF) as a host does,
    // and answers A's general queries (every 2 s) with the current state.
    wait_for("B's TO_EX and IS_EX reports upstream", &[&a, &b], || {
        reported(&up, &me, 4, G1, None) && reported(&up, &me, 2, G1, None)
    });

    // B: the receiver's group downstream, joined upstream, routed from ba to br-lan.
    let st = b.proxy();
    let down = &st["downstream"][0];
    assert_eq!(down["iface"], "br-lan", "{st}");
    assert_eq!(down["we_query"], true, "{st}");
    assert!(has_group(down, "groups", G1), "{st}");
    assert!(has_group(&st, "joins", G1), "{st}");
    let routes = st["routes"].as_array().cloned().unwrap_or_default();
    assert!(
        routes.iter().any(|e| e["group"] == G1
            && e["source"] == "fd00:ab::1"
            && e["iif"] == "ba"
            && e["oifs"] == serde_json::json!(["br-lan"])),
        "{st}"
    );
    // A heard B's kernel report it, from B's link-local address on the link.
    let st = a.ask("headend.sock").unwrap();
    let heard = st["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["iface"] == "ab" && i["family"] == "ipv6")
        .flat_map(|i| {
            i["membership"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .any(|g| g["group"] == G1 && g["last_reporter"] == me.as_str());
    assert!(heard, "A did not hear {me} report {G1}: {st}");
    wait_for("the service running on A", &[&a, &b], || {
        service_state(&a) == "running"
    });
    let full = b.ask("mroute.sock").unwrap();
    assert_eq!(full["healthy"], true, "{full}");
    let text = sb
        .cmd("ip")
        .args(["netns", "exec", "rb"])
        .arg(appliance_bin())
        .args(["status", "--state-dir"])
        .arg(&b.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("MLD proxy: upstream ba"), "{text}");
    assert!(
        text.contains(&format!("joined upstream on ba: {G1} EXCLUDE {{}}")),
        "{text}"
    );

    // The last leave behind B: B leaves upstream, its route goes, A stops the source.
    drop(r);
    wait_for("B's route and upstream join gone", &[&a, &b], || {
        let st = b.proxy();
        !has_group(&st, "joins", G1) && st["routes"].as_array().is_some_and(|r| r.is_empty())
    });
    wait_for("B's TO_IN {} upstream", &[&a, &b], || {
        reported(&up, &me, 3, G1, None)
    });
    wait_for("the source stopped on A", &[&a, &b], || {
        service_state(&a) != "running"
    });
}

/// A source-specific receiver on `host`: a UDP socket on port 5004 and a
/// MCAST_JOIN_SOURCE_GROUP of (`source`, `group`) on eth0, until dropped.
fn ssm_receiver(
    sb: &Sandbox,
    host: &str,
    source: &str,
    group: &str,
) -> (UdpSocket, appliance::mroute::sys::JoinSocket) {
    let (s, g): (IpAddr, IpAddr) = (source.parse().unwrap(), group.parse().unwrap());
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let u = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        u.set_reuse_address(true).unwrap();
        u.bind(&SocketAddr::new(g, 5004).into()).unwrap();
        let u: UdpSocket = u.into();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let j = appliance::mroute::sys::JoinSocket::join(idx, g, Some(s)).expect("SSM join");
        (u, j)
    })
}

#[test]
fn a_source_specific_join_is_proxied_with_its_source_list() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let (a, b) = headend_and_proxy(&sb);
    let up = reports(&sb, "rb", "ba");
    let me = link_local(&sb, "rb", "ba");

    let (r, join) = ssm_receiver(&sb, "h1", "fd00:ab::1", G1);
    rtp(&r, &[&a, &b]);
    let st = b.proxy();
    let joined = st["joins"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["group"] == G1).cloned())
        .unwrap_or_else(|| panic!("no upstream join of {G1}: {st}"));
    assert_eq!(
        joined["filter"],
        serde_json::json!({"mode": "include", "sources": ["fd00:ab::1"]}),
        "{st}"
    );
    // Upstream, B asks for that source only: ALLOW {fd00:ab::1} (or IS_IN when queried).
    wait_for("B's ALLOW {fd00:ab::1} upstream", &[&a, &b], || {
        reported(&up, &me, 5, G1, Some("fd00:ab::1"))
    });
    assert!(
        !reported(&up, &me, 4, G1, None),
        "B ({me}) made an any-source join of a source-specific one:\n{}",
        up.out()
    );

    drop(join);
    wait_for("the source stopped on A", &[&a, &b], || {
        service_state(&a) != "running"
    });
    wait_for(
        "B's BLOCK {fd00:ab::1} or TO_IN {} upstream",
        &[&a, &b],
        || reported(&up, &me, 6, G1, Some("fd00:ab::1")) || reported(&up, &me, 3, G1, None),
    );
}

#[test]
fn three_routers_in_a_chain_two_proxies_work_the_same() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    routers(
        &sb,
        &["ra", "rb", "rc"],
        &[("ra", "ab", "rb", "ba"), ("rb", "bc", "rc", "cb")],
    );
    sb.sh("ip -n ra addr add fd00:ab::1/64 dev ab nodad\n\
           ip -n rb addr add fd00:ab::2/64 dev ba nodad\n\
           ip -n rb addr add fd00:bc::1/64 dev bc nodad\n\
           ip -n rc addr add fd00:bc::2/64 dev cb nodad");
    lan(&sb, "rc", "br-lan", "fd00:c::1/64", "h1", "fd00:c::11/64");
    link_locals(
        &sb,
        &[
            ("ra", "ab"),
            ("rb", "ba"),
            ("rb", "bc"),
            ("rc", "cb"),
            ("rc", "br-lan"),
            ("h1", "eth0"),
        ],
    );
    let mut a = Router::start(&sb, "ra", &headend_site());
    a.wait_part("headend.sock");
    let mut b = Router::start(&sb, "rb", &proxy_site("ba", "bc"));
    b.wait_part("mroute.sock");
    let mut c = Router::start(&sb, "rc", &proxy_site("cb", "br-lan"));
    c.wait_part("mroute.sock");
    assert_eq!(service_state(&a), "idle");

    let r = receiver(&sb, "h1", G1);
    rtp(&r, &[&a, &b, &c]);
    // Each proxy routes from its upstream to its downstream and joined upstream.
    for (router, iif, oif) in [(&b, "ba", "bc"), (&c, "cb", "br-lan")] {
        let st = router.proxy();
        assert!(has_group(&st, "joins", G1), "{st}");
        assert!(
            st["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["group"] == G1
                    && e["iif"] == iif
                    && e["oifs"] == serde_json::json!([oif])),
            "{st}"
        );
    }
    wait_for("the service running on A", &[&a, &b, &c], || {
        service_state(&a) == "running"
    });

    drop(r);
    wait_for(
        "both proxies left and the source stopped on A",
        &[&a, &b, &c],
        || {
            !has_group(&b.proxy(), "joins", G1)
                && !has_group(&c.proxy(), "joins", G1)
                && service_state(&a) != "running"
        },
    );
}

#[test]
fn the_proxy_is_unhealthy_while_its_upstream_or_a_downstream_is_missing() {
    let sb = Sandbox::new();
    routers(&sb, &["rb"], &[]);
    let add_ba = "ip -n rb link add ba type veth peer name xa\n\
                  ip -n rb link set xa up && ip -n rb link set ba up";
    sb.sh(add_ba);
    sb.sh("ip -n rb link add br-lan type bridge && ip -n rb link set br-lan up");
    let mut b = Router::start(&sb, "rb", &proxy_site("ba", "br-lan"));
    b.wait_part("mroute.sock");
    let status = |b: &Router| b.ask("mroute.sock").unwrap_or(Value::Null);
    wait_for("the proxy healthy", &[&b], || status(&b)["healthy"] == true);
    // The upstream goes: not healthy, and it says why.
    sb.sh("ip -n rb link del ba");
    wait_for("the proxy unhealthy without ba", &[&b], || {
        let st = status(&b);
        st["healthy"] == false
            && st["why"].as_str().unwrap_or("").contains("ba")
            && st["proxy"]["upstream_ifindex"].is_null()
    });
    // It comes back: healthy again.
    sb.sh(add_ba);
    wait_for("the proxy healthy again", &[&b], || {
        status(&b)["healthy"] == true
    });
    // A downstream goes: unhealthy again, naming it.
    sb.sh("ip -n rb link del br-lan");
    wait_for("the proxy unhealthy without br-lan", &[&b], || {
        let st = status(&b);
        st["healthy"] == false && st["why"].as_str().unwrap_or("").contains("br-lan")
    });
}

#[test]
fn a_reload_that_changes_the_proxy_restarts_it_and_the_stream_comes_back() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let (a, b) = headend_and_proxy(&sb);
    let r = receiver(&sb, "h1", G1);
    rtp(&r, &[&a, &b]);

    // Other downstream timers: the proxy restarts (it left upstream and removed its
    // routes); its startup queries bring the receiver's report and the stream back.
    let site = sb.path("rb.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text.replace("query_interval = \"2s\"", "query_interval = \"3s\""),
    )
    .unwrap();
    let out = sb
        .cmd("ip")
        .args(["netns", "exec", "rb"])
        .arg(appliance_bin())
        .arg("mroute")
        .arg(&site)
        .arg("--state-dir")
        .arg(b.state.join("parts"))
        .arg("--reload")
        .output()
        .unwrap();
    check(&out, "appliance mroute --reload");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("\"ok\":true"), "{answer}");
    wait_for("the proxy started again", &[&a, &b], || {
        b.log().matches("MLD proxy started").count() == 2
            && b.ask("mroute.sock")
                .is_some_and(|v| v["proxy"]["downstream"][0]["listening"] == true)
    });
    let mut buf = [0u8; 2048];
    r.set_nonblocking(true).unwrap();
    while r.recv(&mut buf).is_ok() {}
    r.set_nonblocking(false).unwrap();
    rtp(&r, &[&a, &b]);
    wait_for("the route back", &[&a, &b], || {
        has_group(&b.proxy(), "joins", G1)
            && b.proxy()["routes"]
                .as_array()
                .is_some_and(|r| r.iter().any(|e| e["group"] == G1))
    });
}
