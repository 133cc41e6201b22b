//! The unicast-to-multicast translator, for real: `appliance translate` in a fresh
//! namespace, sources and receivers in hosts on a bridge, SAP seen by the library's parser
//! and by ffprobe, a Multicast Menu of the test's own.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use appliance::sap::{SapPacket, Sdp};
use common::{Background, Sandbox, in_netns, require_program, udp_in, wait_until};

const T: Duration = Duration::from_secs(10);
const TRANSLATOR: &str = "10.1.0.1";

/// A bridge with the translator's address, a source host and a receiver host.
fn lab() -> Sandbox {
    let sb = Sandbox::new();
    sb.bridge("br0");
    sb.sh(&format!(
        "ip link set br0 type bridge mcast_snooping 0\nip addr add {TRANSLATOR}/24 dev br0"
    ));
    sb.host("src", "br0", &["10.1.0.11/24"]);
    sb.host("rx", "br0", &["10.1.0.20/24"]);
    // Receivers (ffprobe too) need a multicast route to join.
    sb.sh("ip -n rx route add 224.0.0.0/4 dev eth0");
    sb
}

fn translator(sb: &Sandbox, name: &str, extra: &[&str]) -> Background {
    let mut cmd = sb.appliance();
    cmd.args([
        "translate",
        "--unicast-nif-ip",
        TRANSLATOR,
        "--multicast-interface",
        "br0",
    ])
    .args(extra)
    .env("APPLIANCE_LOG", "info");
    let mut bg = Background::spawn(sb, name, cmd);
    bg.wait_for("translating unicast to multicast", T);
    bg
}

/// Groups allocated so far, by the source port in the original's log line.
fn allocations(bg: &Background) -> HashMap<u16, IpAddr> {
    let mut m = HashMap::new();
    for l in bg.out().lines() {
        let Some(rest) = l.strip_prefix("Multicast address (") else {
            continue;
        };
        if !l.contains(" allocated for ") && !l.contains(" restored for ") {
            continue;
        }
        let group: IpAddr = rest.split(',').next().unwrap().parse().unwrap();
        let port: u16 = l
            .rsplit(", ")
            .next()
            .unwrap()
            .trim_end_matches(").")
            .parse()
            .unwrap();
        m.insert(port, group);
    }
    m
}

fn wait_allocations(bg: &Background, n: usize) -> HashMap<u16, IpAddr> {
    wait_until(&format!("{n} allocations\n{}", bg.logs()), T, || {
        let a = allocations(bg);
        (a.len() >= n).then_some(a)
    })
}

fn source(sb: &Sandbox) -> UdpSocket {
    let s = udp_in(sb, Some("src"), "10.1.0.11:0");
    s.connect((TRANSLATOR, 9001)).unwrap();
    s
}

/// A receiver in the rx host for one group (or several, bound to the wildcard).
fn receiver(sb: &Sandbox, groups: &[IpAddr], port: u16) -> UdpSocket {
    let groups = groups.to_vec();
    in_netns(sb, Some("rx"), move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_recv_buffer_size(8 << 20).unwrap();
        let bind: IpAddr = if groups.len() == 1 {
            groups[0]
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        s.bind(&SocketAddr::new(bind, port).into()).unwrap();
        for g in &groups {
            let IpAddr::V4(g) = g else { panic!("v4 only") };
            s.join_multicast_v4(g, &"10.1.0.20".parse().unwrap())
                .unwrap();
        }
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    })
}

fn recv_until(s: &UdpSocket, within: Duration, mut done: impl FnMut(&[u8]) -> bool) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 70_000];
    while Instant::now() < deadline {
        if let Ok(n) = s.recv(&mut buf)
            && done(&buf[..n])
        {
            return true;
        }
    }
    false
}

fn payload(flow: usize, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&seq.to_be_bytes());
    while p.len() < len {
        p.push((flow as u8).wrapping_mul(31).wrapping_add(p.len() as u8) ^ seq as u8);
    }
    p
}

#[test]
fn three_sources_three_groups_payloads_identical_and_in_order() {
    let sb = lab();
    let bg = translator(
        &sb,
        "translate",
        &["--multicast-addr-space", "232.1.0.0/16"],
    );
    let sources: Vec<UdpSocket> = (0..3).map(|_| source(&sb)).collect();
    for s in &sources {
        s.send(b"hello").unwrap();
    }
    let alloc = wait_allocations(&bg, 3);
    let mut groups = vec![];
    for s in &sources {
        let port = s.local_addr().unwrap().port();
        let g = alloc[&port];
        assert!(
            g.to_string().starts_with("232.1.")
                && g.to_string() != "232.1.0.0"
                && g.to_string() != "232.1.255.255",
            "{g}"
        );
        groups.push(g);
    }
    assert_eq!(groups.iter().collect::<HashSet<_>>().len(), 3, "{groups:?}");
    // The original's log line, exactly.
    let p0 = sources[0].local_addr().unwrap().port();
    assert!(
        bg.out().contains(&format!(
            "Multicast address ({}, 9002) allocated for ('10.1.0.11', {p0}).",
            groups[0]
        )),
        "{}",
        bg.logs()
    );
    assert!(
        bg.out()
            .contains(&format!("amt://{TRANSLATOR}@{}:9002", groups[0]))
    );
    let rx: Vec<UdpSocket> = groups.iter().map(|g| receiver(&sb, &[*g], 9002)).collect();
    const N: u32 = 300;
    let sizes = [1316usize, 188, 1400];
    for seq in 0..N {
        for (f, s) in sources.iter().enumerate() {
            s.send(&payload(f, seq, sizes[f])).unwrap();
        }
        if seq % 50 == 49 {
            std::thread::sleep(Duration::from_millis(2)); // pacing, not waiting
        }
    }
    // One more big datagram: it must arrive whole (the original cut at 1,514 bytes).
    sources[0].send(&payload(0, N, 9000)).unwrap();
    for (f, r) in rx.iter().enumerate() {
        let mut expect = 0u32;
        let mut big = false;
        let ok = recv_until(r, T, |d| {
            let seq = u32::from_be_bytes(d[..4].try_into().unwrap());
            if seq == N {
                assert_eq!(
                    d,
                    payload(f, N, 9000),
                    "flow {f}: 9000-byte datagram changed"
                );
                big = true;
                return true;
            }
            assert_eq!(seq, expect, "flow {f}: out of order or lost");
            assert_eq!(d, payload(f, seq, sizes[f]), "flow {f} seq {seq} changed");
            expect += 1;
            f != 0 && expect == N
        });
        if f == 0 {
            assert!(
                ok && big,
                "flow 0: the 9000-byte datagram never came (got {expect})"
            );
        }
        assert_eq!(expect, N, "flow {f}: got {expect} of {N}");
    }
}

#[test]
fn largest_datagram_arrives_whole() {
    let sb = lab();
    let bg = translator(
        &sb,
        "translate",
        &["--multicast-addr-space", "232.2.0.0/24"],
    );
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let g = wait_allocations(&bg, 1)[&s.local_addr().unwrap().port()];
    let r = receiver(&sb, &[g], 9002);
    for len in [9000, 65_507] {
        let p = payload(1, 7, len);
        s.send(&p).unwrap();
        assert!(
            recv_until(&r, T, |d| d == p.as_slice()),
            "{len}-byte datagram did not arrive whole\n{}",
            bg.logs()
        );
    }
}

/// Listens for SAP on the well-known global IPv4 address, in the rx host.
fn sap_listener(sb: &Sandbox) -> UdpSocket {
    receiver(sb, &["224.2.127.254".parse().unwrap()], 9875)
}

#[test]
fn idle_flow_frees_its_group_with_a_sap_deletion() {
    let sb = lab();
    let sap = sap_listener(&sb);
    let bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.3.0.0/30",
            "--idle",
            "1s",
            "--sap-interval",
            "1s",
            "--announce-after",
            "0s",
        ],
    );
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let port = s.local_addr().unwrap().port();
    let g = wait_allocations(&bg, 1)[&port];
    let mut announced = false;
    let mut deleted = false;
    recv_until(&sap, T, |d| {
        let p = SapPacket::parse(d).expect("a SAP packet our parser reads");
        let sdp = Sdp::parse(std::str::from_utf8(&p.payload).unwrap()).unwrap();
        assert_eq!(p.origin.to_string(), TRANSLATOR);
        assert_eq!(sdp.connection, Some(g), "SDP names the group");
        assert!(
            sdp.name.contains(&format!("10.1.0.11:{port}")),
            "SDP names the sender: {}",
            sdp.name
        );
        if p.deletion {
            deleted = true;
        } else {
            announced = true;
        }
        deleted
    });
    assert!(announced, "no SAP announcement\n{}", bg.logs());
    assert!(
        deleted,
        "no SAP deletion after the idle timeout\n{}",
        bg.logs()
    );
    assert!(
        bg.out()
            .contains(&format!("Multicast address ({g}, 9002) freed")),
        "{}",
        bg.logs()
    );
    // The freed group can be given again: a /30 has two; three flows fit one after another.
    let s2 = source(&sb);
    let s3 = source(&sb);
    s2.send(b"x").unwrap();
    s3.send(b"x").unwrap();
    wait_allocations(&bg, 3);
}

#[test]
fn a_restarted_translator_gives_each_source_its_group_back() {
    let sb = lab();
    let state = sb.path("flows.json");
    let state_s = state.display().to_string();
    let args = [
        "--multicast-addr-space",
        "232.4.0.0/16",
        "--idle",
        "30s",
        "--state-file",
        &state_s,
    ];
    let mut bg = translator(&sb, "first", &args);
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let port = s.local_addr().unwrap().port();
    let g = wait_allocations(&bg, 1)[&port];
    wait_until("the state file to hold the flow", T, || {
        common::read(&state).contains(&g.to_string()).then_some(())
    });
    let st = bg.signal(9);
    assert!(!st.success());
    let mut bg2 = translator(&sb, "second", &args);
    bg2.wait_for(
        &format!("Multicast address ({g}, 9002) restored for ('10.1.0.11', {port})."),
        T,
    );
    let r = receiver(&sb, &[g], 9002);
    s.send(b"after restart").unwrap();
    assert!(
        recv_until(&r, T, |d| d == b"after restart"),
        "the source's datagram did not reach its old group {g}\n{}",
        bg2.logs()
    );
    assert!(!bg2.out().contains("allocated for"), "{}", bg2.logs());
}

/// Every usable group of a /29, on one receiver socket.
fn all_of_slash_29(net: &str) -> Vec<IpAddr> {
    let base: Ipv4Addr = net.parse().unwrap();
    (1..7)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(base) + i)))
        .collect()
}

#[test]
fn a_source_outside_the_allow_list_gets_nothing_forwarded() {
    let sb = lab();
    sb.host("bad", "br0", &["10.1.0.66/24"]);
    let mut bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.5.0.0/29",
            "--allow",
            "10.1.0.11/32",
        ],
    );
    let r = receiver(&sb, &all_of_slash_29("232.5.0.0"), 9002);
    let bad = udp_in(&sb, Some("bad"), "10.1.0.66:0");
    for _ in 0..20 {
        bad.send_to(b"forbidden", (TRANSLATOR, 9001)).unwrap();
    }
    bg.wait_for("not in the allow-list", T);
    // An allowed source after it: once its datagram is through, the bad ones were handled.
    let good = source(&sb);
    good.send(b"allowed").unwrap();
    let mut got = vec![];
    recv_until(&r, T, |d| {
        got.push(d.to_vec());
        d == b"allowed"
    });
    assert_eq!(got, vec![b"allowed".to_vec()], "{}", bg.logs());
    assert!(!bg.out().contains("10.1.0.66"), "{}", bg.logs());
}

#[test]
fn a_full_slash_29_refuses_the_seventh_flow_with_one_line() {
    let sb = lab();
    let bg = translator(
        &sb,
        "translate",
        &["--multicast-addr-space", "232.6.0.0/29"],
    );
    let r = receiver(&sb, &all_of_slash_29("232.6.0.0"), 9002);
    let sources: Vec<UdpSocket> = (0..7).map(|_| source(&sb)).collect();
    for s in &sources[..6] {
        s.send(b"hello").unwrap();
    }
    let alloc = wait_allocations(&bg, 6);
    let groups: HashSet<IpAddr> = alloc.values().copied().collect();
    assert_eq!(groups, all_of_slash_29("232.6.0.0").into_iter().collect());
    for _ in 0..200 {
        sources[6].send(b"seventh").unwrap();
    }
    sources[0].send(b"sentinel").unwrap();
    let mut seventh = 0;
    let ok = recv_until(&r, T, |d| {
        if d == b"seventh" {
            seventh += 1;
        }
        d == b"sentinel"
    });
    assert!(ok, "{}", bg.logs());
    assert_eq!(seventh, 0);
    wait_until("the refusal line", T, || {
        bg.err()
            .contains("every group of the space is in use")
            .then_some(())
    });
    let lines = bg.err().lines().filter(|l| l.contains("refused")).count();
    assert_eq!(lines, 1, "{}", bg.logs());
    assert_eq!(allocations(&bg).len(), 6);
}

#[test]
fn ffprobe_lists_an_announced_flow() {
    require_program("ffmpeg");
    require_program("ffprobe");
    require_program("timeout");
    let sb = lab();
    let _bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.7.0.0/16",
            "--sap-interval",
            "1s",
        ],
    );
    let _ffmpeg = Background::spawn(&sb, "ffmpeg", {
        let mut c = sb.cmd("ip");
        c.args([
            "netns",
            "exec",
            "src",
            "ffmpeg",
            "-nostdin",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=25",
            "-t",
            "60",
            "-c:v",
            "mpeg2video",
            "-f",
            "mpegts",
            "udp://10.1.0.1:9001?pkt_size=1316",
        ]);
        c
    });
    let out = sb
        .cmd("ip")
        .args([
            "netns",
            "exec",
            "rx",
            "timeout",
            "25",
            "ffprobe",
            "-hide_banner",
            "sap://224.2.127.254",
        ])
        .output()
        .expect("ffprobe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Input #0, sap"),
        "ffprobe did not list the flow:\n{err}"
    );
    assert!(err.contains("Stream #0"), "{err}");
    assert!(err.contains("mpeg2video"), "the stream ffmpeg sent: {err}");
}

/// A Multicast Menu of the test's own: answers add with 201 and an access code.
fn menu_server(sb: &Sandbox) -> (u16, std::sync::mpsc::Receiver<(String, serde_json::Value)>) {
    let l = in_netns(sb, None, || {
        std::net::TcpListener::bind("10.1.0.1:0").unwrap()
    });
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let answer = if path.ends_with("/api/add/") {
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 26\r\n\r\n{\"access_code\": \"code-42\"}"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            };
            c.write_all(answer.as_bytes()).unwrap();
            if tx.send((path, json)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn the_menu_receives_add_and_remove_also_across_a_restart() {
    let sb = lab();
    let (port, calls) = menu_server(&sb);
    let url = format!("http://10.1.0.1:{port}/");
    let state = sb.path("flows.json");
    let state_s = state.display().to_string();
    let args = [
        "--multicast-addr-space",
        "232.8.0.0/16",
        "--idle",
        "2s",
        "--menu",
        &url,
        "--state-file",
        &state_s,
    ];
    let mut bg = translator(&sb, "first", &args);
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let g = wait_allocations(&bg, 1)[&s.local_addr().unwrap().port()];
    let (path, add) = calls
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("no add call\n{}", bg.logs()));
    assert_eq!(path, "/api/add/");
    assert_eq!(add["source"], TRANSLATOR);
    assert_eq!(add["group"], g.to_string());
    let id = add["unique_identifier"].as_str().unwrap().to_string();
    assert_eq!(id, format!("amt://{TRANSLATOR}@{g}:9002"));
    // The access code survives a crash: the restarted translator does not add the stream
    // again, and removes it with the code it got.
    wait_until("the access code on disk", T, || {
        common::read(&sb.path("flows.menu.json"))
            .contains("code-42")
            .then_some(())
    });
    wait_until("the flow on disk", T, || {
        common::read(&state).contains(&id).then_some(())
    });
    bg.signal(9);
    let mut bg2 = translator(&sb, "second", &args);
    bg2.wait_for("restored for", T);
    s.send(b"still here").unwrap();
    let (path, rm) = calls
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("no remove call\n{}", bg2.logs()));
    assert_eq!(path, "/api/remove/", "{rm}");
    assert_eq!(rm["unique_identifier"], id.as_str());
    assert_eq!(rm["access_code"], "code-42");
}

/// A Menu that cannot be reached costs one log line, however many flows and retries.
#[test]
fn menu_failures_are_logged_once() {
    let sb = lab();
    // Nothing listens on port 9: every call fails at once.
    let bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.10.0.0/16",
            "--idle",
            "2s",
            "--menu",
            "http://10.1.0.1:9/",
        ],
    );
    let sources: Vec<UdpSocket> = (0..3).map(|_| source(&sb)).collect();
    for s in &sources {
        s.send(b"hello").unwrap();
    }
    wait_allocations(&bg, 3);
    // By the time all three flows have expired, the adds were retried (1 s, 2 s backoff).
    wait_until("three flows to expire", T, || {
        (bg.out().matches(" freed: ").count() == 3).then_some(())
    });
    let n = bg.err().matches("Multicast Menu call failed").count();
    assert_eq!(n, 1, "{}", bg.logs());
}

#[test]
fn ipv6_sources_and_an_ipv6_space() {
    let sb = lab();
    sb.sh(
        "ip addr add fd01::1/64 dev br0 nodad\nip -n src addr add fd01::11/64 dev eth0 nodad\n\
           ip -n rx addr add fd01::20/64 dev eth0 nodad",
    );
    let mut cmd = sb.appliance();
    cmd.args([
        "translate",
        "--unicast-nif-ip",
        "fd01::1",
        "--multicast-interface",
        "br0",
        "--multicast-addr-space",
        "ff3e::/96",
    ]);
    // SAP for an ff3e:: (global scope) group goes to ff0e::2:7ffe.
    let sap = in_netns(&sb, Some("rx"), || {
        let a: std::net::Ipv6Addr = "ff0e::2:7ffe".parse().unwrap();
        let s = UdpSocket::bind(SocketAddr::new(a.into(), 9875)).unwrap();
        // SAFETY: a NUL-terminated literal, alive for the whole program.
        let idx = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        s.join_multicast_v6(&a, idx).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    let mut bg = Background::spawn(&sb, "translate", cmd);
    bg.wait_for("translating unicast to multicast", T);
    let s = udp_in(&sb, Some("src"), "[fd01::11]:0");
    s.connect("[fd01::1]:9001").unwrap();
    s.send(b"hello").unwrap();
    bg.wait_for("allocated for ('fd01::11'", T);
    let line = bg
        .out()
        .lines()
        .find(|l| l.contains("allocated"))
        .unwrap()
        .to_string();
    let g: std::net::Ipv6Addr = line["Multicast address (".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(g.segments()[0] == 0xff3e, "{g}");
    let r = in_netns(&sb, Some("rx"), move || {
        let s = UdpSocket::bind(SocketAddr::new(g.into(), 9002)).unwrap();
        // SAFETY: a NUL-terminated literal, alive for the whole program.
        let idx = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        s.join_multicast_v6(&g, idx).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    s.send(b"over v6").unwrap();
    assert!(recv_until(&r, T, |d| d == b"over v6"), "{}", bg.logs());
    let mut sdp = None;
    recv_until(&sap, T, |d| {
        let p = SapPacket::parse(d).unwrap();
        assert_eq!(p.origin.to_string(), "fd01::1");
        sdp = Some(Sdp::parse(std::str::from_utf8(&p.payload).unwrap()).unwrap());
        true
    });
    let sdp = sdp.unwrap_or_else(|| panic!("no SAP on ff0e::2:7ffe\n{}", bg.logs()));
    assert_eq!(sdp.connection, Some(g.into()));
    assert_eq!(
        sdp.info.as_deref(),
        Some(format!("amt://[fd01::1]@[{g}]:9002").as_str())
    );
}

#[test]
fn it_runs_without_capabilities_and_stops_cleanly_on_sigterm() {
    let sb = lab();
    let mut bg = translator(&sb, "translate", &[]);
    let status = common::read(std::path::Path::new(&format!(
        "/proc/{}/status",
        bg.child.id()
    )));
    for want in [
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(want), "{want} not in\n{status}");
    }
    let st = bg.signal(15);
    assert!(st.success(), "exit {st}\n{}", bg.logs());
    assert!(bg.err().contains("translator stopped"), "{}", bg.logs());
}

/// `up` starts the translator with the argv of the plan: those flags must all work.
#[test]
fn the_plans_argv_runs() {
    let sb = lab();
    let site = sb.write(
        "site.toml",
        &format!(
            r#"
[site]
name = "tr"
state_dir = "{}"

[translator]
unicast = "10.1.0.1:9001"
space = "232.9.0.0/16"
interface = "br0"
idle = "30s"
allow = ["10.1.0.0/24"]
menu = "http://10.1.0.1:9/"
"#,
            sb.path("state").display()
        ),
    );
    let out = sb
        .appliance()
        .arg("plan")
        .arg("--json")
        .arg(&site)
        .output()
        .unwrap();
    common::check(&out, "appliance plan --json");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let child = plan["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "translate")
        .expect("a translate child");
    let argv: Vec<String> = child["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(argv.contains(&"--allow".to_string()), "{argv:?}");
    // With the capabilities the plan gives it (and no others), as `up` starts it.
    require_program("setpriv");
    let caps: Vec<String> = child["caps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_str().unwrap().to_ascii_lowercase();
            format!("+{}", c.trim_start_matches("cap_"))
        })
        .collect();
    let bounding = std::iter::once("-all".to_string())
        .chain(caps)
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = sb.cmd("setpriv");
    cmd.arg(format!("--bounding-set={bounding}"))
        .arg(common::appliance_bin())
        .args(&argv[1..])
        .env("APPLIANCE_LOG", "info");
    let mut bg = Background::spawn(&sb, "translate", cmd);
    bg.wait_for("translating unicast to multicast", T);
    // The buffers are forced past net.core.rmem_max as in the benchmark.
    bg.wait_for("socket buffers", T);
    assert!(
        !bg.err().contains("smaller than wanted"),
        "the translator as `up` runs it has small buffers:\n{}",
        bg.logs()
    );
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let g = wait_allocations(&bg, 1)[&s.local_addr().unwrap().port()];
    assert!(g.to_string().starts_with("232.9."), "{g}");
    wait_until("the state file of the plan", T, || {
        common::read(&sb.path("state").join("parts/translator-flows.json"))
            .contains(&g.to_string())
            .then_some(())
    });
}

/// Without --unicast-nif-ip it binds the address of the interface holding the default
/// route, as the original does.
#[test]
fn default_address_is_that_of_the_default_route() {
    let sb = lab();
    sb.sh("ip route add default via 10.1.0.254 dev br0");
    let mut cmd = sb.appliance();
    cmd.args(["translate", "--multicast-interface", "br0"])
        .env("APPLIANCE_LOG", "info");
    let mut bg = Background::spawn(&sb, "translate", cmd);
    bg.wait_for("translating unicast to multicast", T);
    assert!(bg.err().contains("10.1.0.1:9001"), "{}", bg.logs());
    let s = source(&sb);
    s.send(b"hello").unwrap();
    bg.wait_for("allocated for ('10.1.0.11'", T);
}

/// An https Menu (the real one is): the calls go through curl, which checks the server's
/// certificate against the CA given in CURL_CA_BUNDLE.
#[test]
fn the_menu_over_https() {
    require_program("openssl");
    require_program("python3");
    let sb = lab();
    // A CA, and the Menu's certificate issued by it (a self-signed CA certificate cannot
    // be a server's: rustls refuses a CA used as end entity).
    let (ca, cert, key) = (sb.path("ca.crt"), sb.path("menu.crt"), sb.path("menu.key"));
    let dir = sb.path("");
    sb.sh(&format!(
        "cd {dir} && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca \
           -keyout ca.key -out {ca} 2>/dev/null && \
         openssl req -newkey rsa:2048 -nodes -subj /CN=10.1.0.1 -keyout {key} -out menu.csr \
           2>/dev/null && \
         printf 'subjectAltName=IP:10.1.0.1\\nbasicConstraints=CA:FALSE\\n' > ext && \
         openssl x509 -req -in menu.csr -CA {ca} -CAkey ca.key -CAcreateserial -days 1 \
           -extfile ext -out {cert} 2>/dev/null",
        dir = dir.display(),
        ca = ca.display(),
        key = key.display(),
        cert = cert.display()
    ));
    let calls = sb.path("calls.jsonl");
    let server = sb.write(
        "menu.py",
        &format!(
            r#"
import http.server, json, ssl
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open("{calls}", "a") as f:
            f.write(json.dumps({{"path": self.path, "body": body}}) + "\n")
        if self.path.endswith("/api/add/"):
            answer, code = b'{{"access_code": "code-7"}}', 201
        else:
            answer, code = b"", 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
s = http.server.HTTPServer(("10.1.0.1", 8443), H)
c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
c.load_cert_chain("{cert}", "{key}")
s.socket = c.wrap_socket(s.socket, server_side=True)
print("ready", flush=True)
s.serve_forever()
"#,
            calls = calls.display(),
            cert = cert.display(),
            key = key.display()
        ),
    );
    let mut py = Background::spawn(&sb, "menu", {
        let mut c = sb.cmd("python3");
        c.arg(&server);
        c
    });
    py.wait_for("ready", T);
    let mut cmd = sb.appliance();
    cmd.args([
        "translate",
        "--unicast-nif-ip",
        TRANSLATOR,
        "--multicast-interface",
        "br0",
        "--multicast-addr-space",
        "232.11.0.0/16",
        "--idle",
        "1s",
        "--announce-after",
        "0s",
        "--menu",
        "https://10.1.0.1:8443/",
    ])
    .env("APPLIANCE_LOG", "info")
    .env("SSL_CERT_FILE", &ca);
    let mut bg = Background::spawn(&sb, "translate", cmd);
    bg.wait_for("translating unicast to multicast", T);
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let g = wait_allocations(&bg, 1)[&s.local_addr().unwrap().port()];
    let log = wait_until(
        &format!("the add and remove calls\n{}", bg.logs()),
        T,
        || {
            let t = common::read(&calls);
            t.contains("/api/remove/").then_some(t)
        },
    );
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["path"], "/api/add/");
    assert_eq!(lines[0]["body"]["group"], g.to_string());
    assert_eq!(lines[1]["path"], "/api/remove/");
    assert_eq!(lines[1]["body"]["access_code"], "code-7");
}

/// The multicast interface is re-created (a new index): the translator sends by the new one.
#[test]
fn a_recreated_multicast_interface_is_used_again() {
    let sb = lab();
    let mut bg = translator(
        &sb,
        "translate",
        &["--multicast-addr-space", "232.12.0.0/16"],
    );
    let s = source(&sb);
    s.send(b"hello").unwrap();
    let g = wait_allocations(&bg, 1)[&s.local_addr().unwrap().port()];
    sb.sh(&format!(
        "ip link del br0\n\
         ip link add br0 type bridge mcast_snooping 0\n\
         ip addr add {TRANSLATOR}/24 dev br0\n\
         ip link set h-src master br0\n\
         ip link set h-rx master br0\n\
         ip link set br0 up"
    ));
    let r = receiver(&sb, &[g], 9002);
    // Datagrams sent before the kernel has the new index in place may be lost: resend.
    let got = wait_until("a datagram by the new br0", T, || {
        s.send(b"again").unwrap();
        let mut buf = [0u8; 64];
        r.recv(&mut buf).ok().filter(|n| &buf[..*n] == b"again")
    });
    assert_eq!(got, 5);
    bg.wait_for("multicast interface br0 is back", T);
}

/// A Menu whose first connection answers one header line every 4 s, forever, and whose
/// later connections answer at once. Returns the port and the adds that were answered.
fn dripping_menu_server(sb: &Sandbox) -> (u16, std::sync::mpsc::Receiver<serde_json::Value>) {
    let l = in_netns(sb, None, || {
        std::net::TcpListener::bind("10.1.0.1:0").unwrap()
    });
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 {
                    break;
                }
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            if n == 0 {
                std::thread::spawn(move || {
                    let _ = c.write_all(b"HTTP/1.1 201 Created\r\n");
                    for i in 0.. {
                        std::thread::sleep(Duration::from_secs(4));
                        if c.write_all(format!("X-Drip-{i}: x\r\n").as_bytes())
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                continue;
            }
            let answer =
                "HTTP/1.1 201 Created\r\nContent-Length: 22\r\n\r\n{\"access_code\": \"c-1\"}";
            let _ = c.write_all(answer.as_bytes());
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if tx.send(json).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// One call to a Menu that drips its answer ends at the call's deadline; the next flow's
/// add still goes through.
#[test]
fn a_menu_dripping_its_answer_holds_up_one_call_only() {
    let sb = lab();
    let (port, adds) = dripping_menu_server(&sb);
    let url = format!("http://10.1.0.1:{port}/");
    let bg = translator(
        &sb,
        "translate",
        &["--multicast-addr-space", "232.12.0.0/16", "--menu", &url],
    );
    let a = source(&sb);
    a.send(b"first").unwrap();
    wait_allocations(&bg, 1);
    let b = source(&sb);
    b.send(b"second").unwrap();
    wait_allocations(&bg, 2);
    // The held call ends within its 5 s deadline and is retried; the other flow's add is
    // answered meanwhile (a drip of 4 s per line would hold a per-read timeout forever).
    let add = adds
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no add answered while the Menu drips\n{}", bg.logs()));
    assert!(add["group"].is_string(), "{add}");
}

/// A chunked answer whose chunk boundary falls inside a UTF-8 character: the access code
/// arrives whole, is kept in a 0600 file and used for the removal, and never logged.
#[test]
fn a_chunk_boundary_inside_a_character_and_the_access_code_stays_secret() {
    use std::os::unix::fs::PermissionsExt;
    let sb = lab();
    let l = in_netns(&sb, None, || {
        std::net::TcpListener::bind("10.1.0.1:0").unwrap()
    });
    let port = l.local_addr().unwrap().port();
    let (tx, calls) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if path.ends_with("/api/add/") {
                // {"access_code": "sécret-9"} with the 'é' (c3 a9) cut between chunks.
                let answer = "{\"access_code\": \"sécret-9\"}".as_bytes();
                let cut = answer.iter().position(|&b| b == 0xc3).unwrap() + 1;
                let mut out =
                    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for part in [&answer[..cut], &answer[cut..]] {
                    out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                c.write_all(&out).unwrap();
            } else {
                c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
            }
            if tx.send((path, json)).is_err() {
                return;
            }
        }
    });
    let url = format!("http://10.1.0.1:{port}/");
    let state = sb.path("flows.json");
    let state_s = state.display().to_string();
    let mut bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.13.0.0/16",
            "--idle",
            "1s",
            "--announce-after",
            "0s",
            "--menu",
            &url,
            "--state-file",
            &state_s,
        ],
    );
    let s = source(&sb);
    s.send(b"hello").unwrap();
    wait_allocations(&bg, 1);
    let (path, _) = calls.recv_timeout(T).expect("an add call");
    assert_eq!(path, "/api/add/");
    let codes = sb.path("flows.menu.json");
    wait_until("the access code on disk", T, || {
        common::read(&codes).contains("sécret-9").then_some(())
    });
    let mode = std::fs::metadata(&codes).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the file holding access codes");
    let (path, rm) = calls
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("no remove call\n{}", bg.logs()));
    assert_eq!(path, "/api/remove/");
    assert_eq!(rm["access_code"], "sécret-9");
    bg.signal(15);
    assert!(
        !bg.logs().contains("sécret"),
        "an access code was logged:\n{}",
        bg.logs()
    );
}

/// 3,000 senders (loopback addresses 127.0.x.y, one datagram each): the total new-flow
/// rate holds them to 100 flows a second, none of their short flows is announced by SAP
/// or registered with the Menu, and a steady sender beside them is.
#[test]
fn a_burst_of_3000_sources_is_rate_limited_and_never_announced() {
    let sb = lab();
    let sap = sap_listener(&sb);
    let (port, calls) = menu_server(&sb);
    let url = format!("http://10.1.0.1:{port}/");
    let bg = translator(
        &sb,
        "translate",
        &[
            "--multicast-addr-space",
            "232.14.0.0/16",
            "--idle",
            "500ms",
            "--announce-after",
            "3s",
            "--sap-interval",
            "1s",
            "--menu",
            &url,
        ],
    );
    let t0 = Instant::now();
    in_netns(&sb, None, || {
        for i in 0..3000u32 {
            let a = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
            let s = UdpSocket::bind((a, 0)).unwrap();
            s.send_to(b"spoofed", (TRANSLATOR, 9001)).unwrap();
        }
    });
    let secs = t0.elapsed().as_secs() + 1;
    // The steady sender, from a real host, every 200 ms until announced.
    let steady = source(&sb);
    let steady_port = steady.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = steady.send(b"steady");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut sap_names = vec![];
    let heard = recv_until(&sap, Duration::from_secs(15), |d| {
        let p = SapPacket::parse(d).expect("a SAP packet our parser reads");
        let sdp = Sdp::parse(std::str::from_utf8(&p.payload).unwrap()).unwrap();
        sap_names.push(sdp.name.clone());
        sdp.name.contains(&format!("10.1.0.11:{steady_port}"))
    });
    let (_, add) = calls
        .recv_timeout(T)
        .unwrap_or_else(|_| panic!("the steady flow was not registered\n{}", bg.logs()));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    assert!(heard, "the steady flow was not announced\n{}", bg.logs());
    let burst: Vec<&String> = sap_names.iter().filter(|n| n.contains("127.0.")).collect();
    assert!(burst.is_empty(), "short flows announced: {burst:?}");
    assert!(add["unique_identifier"].is_string(), "{add}");
    assert!(calls.try_recv().is_err(), "a short flow was registered");
    let allocated = bg
        .out()
        .lines()
        .filter(|l| l.contains(" allocated for ('127.0."))
        .count() as u64;
    assert!(
        allocated <= 100 * (secs + 1),
        "{allocated} flows in {secs} s: the total rate is 100 a second"
    );
    assert!(
        bg.err()
            .contains("new flows arrive too fast from all senders together"),
        "{}",
        bg.logs()
    );
}

/// `check` warns (exit 0) about a translator on a non-loopback address with no allow-list,
/// and not when either closes it.
#[test]
fn check_warns_when_the_translator_is_open_to_anyone() {
    let sb = Sandbox::new();
    let run = |name: &str, translator: &str| {
        let site = sb.write(
            &format!("{name}.toml"),
            &format!("[site]\nname = \"{name}\"\n[translator]\n{translator}"),
        );
        let out = sb.appliance().arg("check").arg(&site).output().unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let open = run("open", "unicast = \"192.0.2.1:9001\"\n");
    assert!(
        open.contains("warning: ") && open.contains("open to anyone"),
        "{open}"
    );
    let allowed = run(
        "allowed",
        "unicast = \"192.0.2.1:9001\"\nallow = [\"198.51.100.0/24\"]\n",
    );
    assert!(!allowed.contains("warning"), "{allowed}");
    let local = run("local", "unicast = \"127.0.0.1:9001\"\n");
    assert!(!local.contains("warning"), "{local}");
}
