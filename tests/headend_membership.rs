//! The headend's membership listener against real kernel receivers: each test builds a
//! fresh namespace with a bridge and receiver hosts (netns + veth), runs the listener
//! (`examples/membership_probe.rs`, one JSON line per event) on the bridge with short
//! timers (query interval 2 s, response 1 s, last-listener interval 200 ms), and has the
//! hosts' own kernels send the MLD/IGMP reports by joining groups on UDP sockets.
//!
//! The probe is an example binary: a whole `cargo test` builds it; before running only
//! this file (`cargo test --test headend_membership`), run `cargo build --examples`.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use appliance::mroute::sys::JoinSocket;
use common::*;
use serde_json::Value;

const G6: &str = "ff3e:40:fd00::8000:1";
const G4: &str = "239.1.2.3";
const OUR6: &str = "fd00::1";
const TIMERS: [&str; 6] = ["--qi", "2000", "--qri", "1000", "--llqi", "200"];

fn probe_bin() -> PathBuf {
    // target/debug/deps/headend_membership-… → target/debug/examples/membership_probe
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples/membership_probe");
    assert!(
        p.is_file(),
        "{} is missing: `cargo test` builds the examples (or run `cargo build --examples`)",
        p.display()
    );
    p
}

/// A membership listener running in the sandbox (or one of its hosts).
struct Probe {
    bg: Background,
    /// Events already consumed by `wait`.
    seen: usize,
}

impl Probe {
    fn start(sb: &Sandbox, name: &str, host: Option<&str>, args: &[&str]) -> Probe {
        let bin = probe_bin();
        let mut cmd = match host {
            Some(h) => sb.in_host(h, bin.to_str().expect("path")),
            None => sb.cmd(&bin),
        };
        cmd.args(args).env("RUST_LOG", "debug");
        let mut bg = Background::spawn(sb, name, cmd);
        bg.wait_for("\"started\"", Duration::from_secs(10));
        Probe { bg, seen: 0 }
    }

    fn events(&self) -> Vec<Value> {
        self.bg
            .out()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for the next event (after those already consumed) that matches.
    fn wait(&mut self, what: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = self.seen;
        let (i, v) = wait_until(what, within, || {
            self.events()
                .into_iter()
                .enumerate()
                .skip(start)
                .find(|(_, e)| pred(e))
        });
        self.seen = i + 1;
        v
    }

    fn wanted(&mut self, group: &str, wanted: bool, within: Duration) -> Value {
        let g: IpAddr = group.parse().unwrap();
        let what = format!("wanted={wanted} for {group}");
        let logs = self.bg.logs();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait(&what, within, |e| {
                e["event"] == "wanted"
                    && e["group"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(g)
                    && e["wanted"] == wanted
            })
        }));
        r.unwrap_or_else(|_| panic!("no {what}\n{logs}\n{}", self.bg.logs()))
    }

    /// Waits until `wanted` events for every group in `groups` came, in any order, and
    /// consumes nothing.
    fn all_wanted(&self, groups: &[&str], wanted: bool, within: Duration) {
        let groups: Vec<IpAddr> = groups.iter().map(|g| g.parse().unwrap()).collect();
        let what = format!("wanted={wanted} for {groups:?}");
        wait_until(&what, within, || {
            let ev = self.events();
            groups
                .iter()
                .all(|g| {
                    ev.iter().any(|e| {
                        e["event"] == "wanted"
                            && e["group"].as_str().and_then(|s| s.parse::<IpAddr>().ok())
                                == Some(*g)
                            && e["wanted"] == wanted
                    })
                })
                .then_some(())
        });
    }

    /// The status, asked for with SIGUSR1.
    fn status(&mut self) -> Value {
        let before = self.events().len();
        let r = Command::new("kill")
            .args(["-USR1", &self.bg.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(r.success());
        let v = wait_until("a status line", Duration::from_secs(5), || {
            self.events()
                .into_iter()
                .skip(before)
                .find(|e| e["event"] == "status")
        });
        v["status"].clone()
    }

    fn group_status(&mut self, family: &str, group: &str) -> Option<Value> {
        let g: IpAddr = group.parse().unwrap();
        let st = self.status();
        st.as_array()?.iter().find(|s| s["family"] == family)?["membership"]["groups"]
            .as_array()?
            .iter()
            .find(|x| x["group"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(g))
            .cloned()
    }
}

/// br0 with 10.0.0.1/24 and fd00::1/64, and receiver hosts 10.0.0.1N / fd00::1N.
fn lan(sb: &Sandbox, hosts: &[&str]) {
    sb.bridge("br0");
    sb.sh("ip addr add 10.0.0.1/24 dev br0 && ip addr add fd00::1/64 dev br0 nodad");
    for (i, h) in hosts.iter().enumerate() {
        let v4 = format!("10.0.0.{}/24", 11 + i);
        let v6 = format!("fd00::{}/64", 11 + i);
        sb.host(h, "br0", &[&v4, &v6]);
    }
    for h in hosts {
        wait_link_local(sb, h);
    }
}

/// Waits until a host's link-local address has finished DAD: before that its kernel sends
/// MLD reports from :: (RFC 9777 §5.2.13), which routers ignore.
fn wait_link_local(sb: &Sandbox, host: &str) -> Ipv6Addr {
    wait_until(
        &format!("{host}'s link-local address"),
        Duration::from_secs(10),
        || {
            let out = sb.sh(&format!("ip -n {host} -6 -o addr show dev eth0 scope link"));
            if out.contains("tentative") {
                return None;
            }
            out.split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
        },
    )
}

/// A host's kernel joins `group` (from `source` only, if given) on eth0, until dropped.
fn join(sb: &Sandbox, host: &str, group: &str, source: Option<&str>) -> JoinSocket {
    let group: IpAddr = group.parse().unwrap();
    let source: Option<IpAddr> = source.map(|s| s.parse().unwrap());
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        JoinSocket::join(idx, group, source).expect("join")
    })
}

fn force(sb: &Sandbox, host: &str, sysctl: &str) {
    sb.sh(&format!("ip netns exec {host} sysctl -qw net.{sysctl}"));
}

fn version(e: &Value) -> &str {
    e["why"]["version"].as_str().unwrap_or("")
}

/// Waits until we query IPv6 (the bridge's link-local address has passed DAD); returns
/// our address. Consumes no event.
fn our_ipv6_querier(p: &mut Probe) -> String {
    let e = wait_until("our MLD querier", Duration::from_secs(10), || {
        p.events().into_iter().find(|e| {
            e["event"] == "querier-changed" && e["family"] == "ipv6" && e["we_query"] == true
        })
    });
    e["querier"].as_str().expect("querier").to_string()
}

#[test]
fn mldv2_join_then_last_leave_after_the_last_listener_queries() {
    let sb = Sandbox::new();
    lan(&sb, &["h1", "h2"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    // Only the querier sends last-listener queries: wait until we are it (br0's link-local
    // address has passed DAD), else a leave can only time out.
    our_ipv6_querier(&mut p);
    let j1 = join(&sb, "h1", G6, None);
    let e = p.wanted(G6, true, Duration::from_secs(10));
    assert_eq!(version(&e), "mld2", "{e}");
    let j2 = join(&sb, "h2", G6, None);
    let h2 = wait_link_local(&sb, "h2").to_string();
    // One leave: h2 answers the last-listener queries and the group stays wanted.
    drop(j1);
    wait_until(
        "h2 to answer the last-listener query",
        Duration::from_secs(10),
        || {
            let g = p.group_status("ipv6", G6)?;
            (g["last_reporter"] == h2.as_str() && g["wanted"] == true).then_some(())
        },
    );
    assert!(
        !p.events()
            .iter()
            .any(|e| e["event"] == "wanted" && e["wanted"] == false),
        "one of two listeners left and the group went:\n{}",
        p.bg.logs()
    );
    drop(j2);
    let e = p.wanted(G6, false, Duration::from_secs(10));
    assert_eq!(e["why"]["kind"], "last-listener-gone", "{e}");
}

#[test]
fn a_vanished_mld_listener_is_timed_out() {
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let _j = join(&sb, "h1", G6, None);
    p.wanted(G6, true, Duration::from_secs(10));
    // The host goes silent: no leave, no more reports.
    sb.sh("ip link set h-h1 down");
    // Listener interval: 2 × 2 s + 1 s.
    let e = p.wanted(G6, false, Duration::from_secs(15));
    assert_eq!(e["why"]["kind"], "timeout", "{e}");
}

#[test]
fn an_mldv1_host_joins_and_leaves() {
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    force(&sb, "h1", "ipv6.conf.eth0.force_mld_version=1");
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let j = join(&sb, "h1", G6, None);
    let e = p.wanted(G6, true, Duration::from_secs(10));
    assert_eq!(version(&e), "mld1", "{e}");
    let g = p.group_status("ipv6", G6).expect("group in status");
    assert_eq!(g["compat"], "mld1", "{g}");
    // It answers our (MLDv2) general queries as a v1 host: still wanted after them.
    our_ipv6_querier(&mut p);
    wait_until(
        "an answer to a general query",
        Duration::from_secs(10),
        || p.bg.err().contains("still listening").then_some(()),
    );
    drop(j);
    let e = p.wanted(G6, false, Duration::from_secs(10));
    assert_eq!(e["why"]["kind"], "last-listener-gone", "{e}");
}

fn igmp_host(version_sysctl: &str, expect: &str) {
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    force(
        &sb,
        "h1",
        &format!("ipv4.conf.eth0.force_igmp_version={version_sysctl}"),
    );
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let j = join(&sb, "h1", G4, None);
    let e = p.wanted(G4, true, Duration::from_secs(10));
    assert_eq!(version(&e), expect, "{e}");
    assert_eq!(e["why"]["host"], "10.0.0.11", "{e}");
    // Still there after a few general queries (5 s is the listener interval).
    wait_until(
        "two answers to general queries",
        Duration::from_secs(10),
        || (p.bg.err().matches("still listening").count() >= 2).then_some(()),
    );
    drop(j);
    let e = p.wanted(G4, false, Duration::from_secs(10));
    assert_eq!(e["why"]["kind"], "last-listener-gone", "{e}");
}

#[test]
fn an_igmpv2_host_joins_and_leaves() {
    igmp_host("2", "igmp2");
}

#[test]
fn an_igmpv3_host_joins_and_leaves() {
    igmp_host("3", "igmp3");
}

#[test]
fn an_include_join_of_another_source_is_not_wanted() {
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let other = "ff3e:40:fd00::8000:2";
    let _a = join(&sb, "h1", other, Some("fd00::99"));
    // A join of our own address afterwards proves the first report was heard and weighed.
    let _b = join(&sb, "h1", G6, Some(OUR6));
    p.wanted(G6, true, Duration::from_secs(10));
    let g = p
        .group_status("ipv6", other)
        .expect("the other source's group is tracked");
    assert_eq!(g["mode"], "include", "{g}");
    assert_eq!(g["wanted"], false, "{g}");
    assert!(
        !p.events().iter().any(|e| e["group"] == other),
        "a join of another source made the group wanted:\n{}",
        p.bg.logs()
    );
}

/// A raw ICMPv6 socket in a host that sees MLD queries (type 130).
fn query_sniffer(sb: &Sandbox, host: &str) -> socket2::Socket {
    in_netns(sb, Some(host), || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
        .expect("raw socket");
        let mut filter = [u32::MAX; 8];
        filter[130 >> 5] &= !(1u32 << (130 & 31));
        // SAFETY: a live array of the size we pass.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                1, // ICMP6_FILTER
                filter.as_ptr().cast(),
                std::mem::size_of_val(&filter) as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "ICMP6_FILTER");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        s
    })
}

/// Sources of the MLD queries the sniffer reads during `window`.
fn queriers_during(s: &socket2::Socket, window: Duration) -> Vec<IpAddr> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < end {
        if let Ok((_, from)) = s.recv_from(&mut buf)
            && let Some(a) = from.as_socket()
        {
            out.push(a.ip());
        }
    }
    out
}

#[test]
fn a_lower_querier_takes_over_and_ours_stops_until_it_goes_silent() {
    let sb = Sandbox::new();
    lan(&sb, &["h1", "q"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let ours: IpAddr = our_ipv6_querier(&mut p).parse().unwrap();
    let sniffer = query_sniffer(&sb, "h1");
    assert!(
        queriers_during(&sniffer, Duration::from_millis(2500)).contains(&ours),
        "h1 saw no query from us ({ours})"
    );
    // A router with a lower address: fe80::1 is below any EUI-64 or random link-local.
    sb.sh("ip -n q addr add fe80::1/64 dev eth0 nodad");
    let mut other = Probe::start(&sb, "other", Some("q"), &[&["eth0"][..], &TIMERS].concat());
    let e = p.wait("the other querier", Duration::from_secs(10), |e| {
        e["event"] == "querier-changed" && e["family"] == "ipv6" && e["we_query"] == false
    });
    assert_eq!(e["querier"], "fe80::1", "{e}");
    // IPv4 the other way round: 10.0.0.1 (ours) is below q's 10.0.0.12, so q steps down.
    let e = other.wait("q to hear our IGMP querier", Duration::from_secs(10), |e| {
        e["event"] == "querier-changed" && e["family"] == "ipv4" && e["we_query"] == false
    });
    assert_eq!(e["querier"], "10.0.0.1", "{e}");
    // Pending last-listener queries may still go out right after stepping down; after
    // that, two query intervals with queries from fe80::1 only.
    let _ = queriers_during(&sniffer, Duration::from_millis(500));
    let seen = queriers_during(&sniffer, Duration::from_secs(5));
    let lower: IpAddr = "fe80::1".parse().unwrap();
    assert!(
        seen.contains(&lower),
        "no query from fe80::1 seen: {seen:?}"
    );
    assert!(
        !seen.contains(&ours),
        "we kept querying after a lower querier took over: {seen:?}\n{}",
        p.bg.logs()
    );
    assert!(
        !p.events()
            .iter()
            .any(|e| e["family"] == "ipv4" && e["we_query"] == false),
        "we gave up IGMP querying to a higher address:\n{}",
        p.bg.logs()
    );
    // The other querier goes silent: after the other-querier-present interval
    // (2 × 2 s + 0.5 s) we query again.
    other.bg.signal(9);
    p.wait("us to take over again", Duration::from_secs(10), |e| {
        e["event"] == "querier-changed" && e["family"] == "ipv6" && e["we_query"] == true
    });
    assert!(
        queriers_during(&sniffer, Duration::from_millis(2500)).contains(&ours),
        "h1 saw no query from us after we took over again"
    );
}

#[test]
fn an_interface_that_appears_later_is_picked_up() {
    let sb = Sandbox::new();
    let mut p = Probe::start(&sb, "probe", None, &[&["br1"][..], &TIMERS].concat());
    p.bg.wait_for("no such interface", Duration::from_secs(5));
    sb.bridge("br1");
    sb.sh("ip addr add fd00::1/64 dev br1 nodad");
    sb.host("h1", "br1", &["fd00::11/64"]);
    wait_link_local(&sb, "h1");
    let _j = join(&sb, "h1", G6, None);
    let e = p.wanted(G6, true, Duration::from_secs(10));
    assert_eq!(e["iface"], "br1", "{e}");
    // Re-created: the state of the old one goes (not wanted), the new one hears the host.
    sb.sh("ip link del br1 && ip link add br1 type bridge && ip link set br1 up && ip link set h-h1 master br1");
    let e = p.wanted(G6, false, Duration::from_secs(10));
    assert_eq!(e["why"]["kind"], "interface-gone", "{e}");
    let e = p.wanted(G6, true, Duration::from_secs(15));
    assert_eq!(e["iface"], "br1", "{e}");
    // Both were seen by netlink events, not by a periodic check.
    let logs = p.bg.logs();
    assert!(
        logs.contains("the interface appeared (seen by a netlink event)")
            && logs.contains("re-created (seen by a netlink event)")
            && !logs.contains("periodic check"),
        "{logs}"
    );
}

#[test]
fn queries_leave_from_our_link_local_address_with_router_alert_and_hop_limit_1() {
    require_program("tcpdump");
    require_program("tshark");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    // tcpdump captures (it says when it listens; tshark says so before it does), tshark
    // decodes.
    let pcap = sb.path("queries.pcap");
    let mut cap = Background::spawn(&sb, "tcpdump", {
        let mut c = sb.in_host("h1", "tcpdump");
        // Immediate mode: packets still in a capture block are lost at SIGINT otherwise.
        c.args(["-i", "eth0", "--immediate-mode", "-U", "-w"])
            .arg(&pcap);
        c
    });
    cap.wait_for("listening on", Duration::from_secs(10));
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let ours = our_ipv6_querier(&mut p);
    let (j6, j4) = (join(&sb, "h1", G6, None), join(&sb, "h1", G4, None));
    p.all_wanted(&[G6, G4], true, Duration::from_secs(10));
    drop((j6, j4));
    p.all_wanted(&[G6, G4], false, Duration::from_secs(10));
    cap.signal(2);
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-Y",
            "icmpv6.type == 130 or igmp.type == 0x11",
            "-T",
            "fields",
        ])
        .args(["-E", "separator=|"])
        .args([
            "-e", "ipv6.src", "-e", "ip.src", "-e", "ipv6.dst", "-e", "ip.dst",
        ])
        .args(["-e", "ipv6.hlim", "-e", "ip.ttl"])
        .args(["-e", "ipv6.opt.router_alert", "-e", "ip.opt.ra"])
        .args(["-e", "icmpv6.checksum.status", "-e", "igmp.checksum.status"])
        .args([
            "-e",
            "icmpv6.mld.maximum_response_code",
            "-e",
            "igmp.max_resp",
        ])
        .output()
        .expect("tshark -r");
    check(&out, "tshark -r");
    let rows: Vec<Vec<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for r in &rows {
        assert_eq!(r.len(), 12, "{r:?}");
        let v6 = !r[0].is_empty();
        let (src, dst, hops, ra, sum, mrc) = if v6 {
            (&r[0], &r[2], &r[4], &r[6], &r[8], &r[10])
        } else {
            (&r[1], &r[3], &r[5], &r[7], &r[9], &r[11])
        };
        assert_eq!(src, if v6 { &ours } else { "10.0.0.1" }, "{r:?}");
        assert_eq!(hops, "1", "hop limit/TTL: {r:?}");
        assert_eq!(ra, "0", "Router Alert (value 0) missing: {r:?}");
        assert_eq!(sum, "1", "bad checksum: {r:?}");
        let general = dst == "ff02::1" || dst == "224.0.0.1";
        // 1 s (ms for MLD, tenths for IGMP) in general queries, 200 ms in specific ones.
        let want = match (v6, general) {
            (true, true) => "1000",
            (true, false) => "200",
            (false, true) => "10",
            (false, false) => "2",
        };
        assert_eq!(mrc, want, "max resp code: {r:?}");
        seen.insert(dst.clone());
    }
    for d in ["ff02::1", "224.0.0.1", G6, G4] {
        assert!(seen.contains(d), "no query to {d} seen: {rows:?}");
    }
}

/// MLD queries the sniffer reads during `window`: source and ICMPv6 length (24 bytes for
/// MLDv1, 28 or more for MLDv2).
fn queries_during(s: &socket2::Socket, window: Duration) -> Vec<(IpAddr, usize)> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf)
            && let Some(a) = from.as_socket()
        {
            out.push((a.ip(), n));
        }
    }
    out
}

/// Sends one MLDv1 general query from `from` on a host's eth0 (hop limit 1, Router Alert).
/// A stand-in for an MLDv1 router: none runs here (Debian's FRR has no pim6d).
fn mldv1_query(sb: &Sandbox, host: &str, from: Ipv6Addr) {
    use appliance::headend::wire::{Message, Query, Version};
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::ICMPV6),
        )
        .expect("raw socket");
        s.bind(&std::net::SocketAddrV6::new(from, 0, 0, idx).into())
            .expect("bind the querier's address");
        s.set_multicast_if_v6(idx).expect("IPV6_MULTICAST_IF");
        s.set_multicast_hops_v6(1).expect("hop limit");
        // Hop-by-hop Router Alert (value 0 = MLD), PadN.
        let ra: [u8; 8] = [0, 0, 5, 2, 0, 0, 1, 0];
        // SAFETY: a live array of the size we pass.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                54, // IPV6_HOPOPTS
                ra.as_ptr().cast(),
                ra.len() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "IPV6_HOPOPTS");
        let q = Query::general(Version::Mld1, Duration::from_secs(1), 0, Duration::ZERO);
        let bytes = Message::Query(q).to_mld();
        assert_eq!(bytes.len(), 24);
        let to = std::net::SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, idx);
        s.send_to(&bytes, &to.into())
            .expect("sending the MLDv1 query");
    });
}

#[test]
fn an_mldv1_querier_on_the_link_makes_ours_send_mldv1_queries_until_it_is_silent() {
    let sb = Sandbox::new();
    lan(&sb, &["h1", "q"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let ours: IpAddr = our_ipv6_querier(&mut p).parse().unwrap();
    let sniffer = query_sniffer(&sb, "h1");
    let ours_of = |seen: Vec<(IpAddr, usize)>| -> Vec<usize> {
        seen.into_iter()
            .filter(|(a, _)| *a == ours)
            .map(|(_, n)| n)
            .collect()
    };
    let v2 = ours_of(queries_during(&sniffer, Duration::from_millis(2500)));
    assert!(
        v2.iter().any(|n| *n >= 28),
        "no MLDv2 query from us ({ours}): {v2:?}"
    );
    // An MLDv1 router with a higher address (fe80::ffff:… is above any link-local of
    // ours): the election keeps us querying, in its version.
    let old: Ipv6Addr = "fe80::ffff:ffff:ffff:fffe".parse().unwrap();
    sb.sh(&format!("ip -n q addr add {old}/64 dev eth0 nodad"));
    mldv1_query(&sb, "q", old);
    p.bg.wait_for("an older querier on the link", Duration::from_secs(10));
    let st = p.status();
    let v6 = st
        .as_array()
        .and_then(|a| a.iter().find(|s| s["family"] == "ipv6"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(v6["membership"]["querier_version"], "mld1", "{v6}");
    assert_eq!(v6["membership"]["older_querier"], old.to_string(), "{v6}");
    assert_eq!(v6["membership"]["we_query"], true, "{v6}");
    // Our next general query (every 2 s) is MLDv1: 24 bytes.
    let seen = wait_until("an MLDv1 query from us", Duration::from_secs(5), || {
        let n = ours_of(queries_during(&sniffer, Duration::from_millis(200)));
        n.contains(&24).then_some(n)
    });
    assert!(seen.iter().all(|n| *n == 24), "{seen:?}");
    // Silent for the Older Version Querier Present timeout (2 × 2 s + 0.5 s): MLDv2 again.
    p.bg.wait_for("our queries are MLDv2 again", Duration::from_secs(10));
    wait_until(
        "an MLDv2 query from us again",
        Duration::from_secs(5),
        || {
            let n = ours_of(queries_during(&sniffer, Duration::from_millis(200)));
            n.iter().any(|n| *n >= 28).then_some(())
        },
    );
}

/// IGMP queries a host sees during `window`: source and IGMP length (8 bytes for v1/v2,
/// 12 or more for v3), from a raw IGMP socket (which reads the IP header too).
fn igmp_queries_during(s: &socket2::Socket, window: Duration) -> Vec<(IpAddr, usize)> {
    let end = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < end {
        if let Ok(n) = s.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            let b: Vec<u8> = buf[..n]
                .iter()
                .map(|x| unsafe { x.assume_init() })
                .collect();
            let ihl = usize::from(b.first().map_or(0, |v| v & 0x0f)) * 4;
            if n > ihl && n >= 20 && b[ihl] == 0x11 {
                let src = IpAddr::from([b[12], b[13], b[14], b[15]]);
                out.push((src, n - ihl));
            }
        }
    }
    out
}

#[test]
fn an_igmpv2_querier_from_frr_makes_ours_send_igmpv2_queries() {
    let (zebra, pimd) = ("/usr/lib/frr/zebra", "/usr/lib/frr/pimd");
    for p in [zebra, pimd] {
        assert!(
            std::path::Path::new(p).is_file(),
            "{p} is missing: scripts/install-deps installs frr"
        );
    }
    let sb = Sandbox::new();
    lan(&sb, &["h1", "q"]);
    let mut p = Probe::start(&sb, "probe", None, &[&["br0"][..], &TIMERS].concat());
    let sniffer = in_netns(&sb, Some("h1"), || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_IGMP)),
        )
        .expect("raw IGMP socket");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        s
    });
    let ours: IpAddr = "10.0.0.1".parse().unwrap();
    wait_until("an IGMPv3 query from us", Duration::from_secs(10), || {
        igmp_queries_during(&sniffer, Duration::from_millis(200))
            .contains(&(ours, 12))
            .then_some(())
    });
    // FRR's pimd on q (10.0.0.12, above ours), IGMPv2 on eth0: it queries at start, then
    // hears our lower address and only listens.
    let dir = sb.path("frr");
    sb.sh(&format!(
        "mkdir -p {d} && chown frr:frr {d}",
        d = dir.display()
    ));
    sb.write(
        "frr/pimd.conf",
        "interface eth0\n ip igmp\n ip igmp version 2\n ip igmp query-max-response-time 10\n \
         ip igmp query-interval 2\n",
    );
    let d = dir.display().to_string();
    let daemon = |prog: &str, name: &str, conf: Option<&str>| {
        let mut c = sb.in_host("q", prog);
        if let Some(f) = conf {
            c.args(["-f", f]);
        }
        c.args([
            "-i",
            &format!("{d}/{name}.pid"),
            "-z",
            &format!("{d}/zserv.api"),
        ])
        .args(["--vty_socket", &d, "-A", "127.0.0.1", "-P", "0"])
        .arg(format!("--log=file:{d}/{name}.log"));
        Background::spawn(&sb, name, c)
    };
    let _zebra = daemon(zebra, "zebra", None);
    wait_until("zebra's socket", Duration::from_secs(10), || {
        dir.join("zserv.api").exists().then_some(())
    });
    let conf = format!("{d}/pimd.conf");
    let _pimd = daemon(pimd, "pimd", Some(&conf));
    p.bg.wait_for("an older querier on the link", Duration::from_secs(10));
    let st = p.status();
    let v4 = st
        .as_array()
        .and_then(|a| a.iter().find(|s| s["family"] == "ipv4"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(v4["membership"]["querier_version"], "igmp2", "{v4}");
    assert_eq!(v4["membership"]["older_querier"], "10.0.0.12", "{v4}");
    assert_eq!(v4["membership"]["we_query"], true, "{v4}");
    // Our next general query is IGMPv2: 8 bytes.
    let seen = wait_until("an IGMPv2 query from us", Duration::from_secs(5), || {
        let q = igmp_queries_during(&sniffer, Duration::from_millis(200));
        q.contains(&(ours, 8)).then_some(q)
    });
    assert!(
        !seen.contains(&(ours, 12)),
        "IGMPv3 queries from us in v2 mode: {seen:?}"
    );
}
