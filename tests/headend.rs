//! The on-demand headend end to end: `appliance headend SITE` in a fresh namespace with a
//! bridge and receiver hosts (netns + veth) whose own kernels send the MLD/IGMP reports,
//! a test-tone ffmpeg as the source, short querier timers. What the receivers get is
//! real RTP on the group; what the headend says comes from its control socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const T: Duration = Duration::from_secs(15);
const G1: &str = "ff3e:40:fd00::8000:1";
const G2: &str = "ff3e:40:fd00::8000:2";
const TONE: &str = "ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}";

/// br0 with 10.0.0.1/24 and fd00::1/64, receiver hosts 10.0.0.1N / fd00::1N.
fn lan(sb: &Sandbox, hosts: &[&str]) {
    sb.bridge("br0");
    sb.sh("ip link set br0 type bridge mcast_snooping 0 \
           && ip addr add 10.0.0.1/24 dev br0 && ip addr add fd00::1/64 dev br0 nodad");
    for (i, h) in hosts.iter().enumerate() {
        let v4 = format!("10.0.0.{}/24", 11 + i);
        let v6 = format!("fd00::{}/64", 11 + i);
        sb.host(h, "br0", &[&v4, &v6]);
        // Receivers (ffmpeg's sap:// too) need a multicast route to join.
        sb.sh(&format!(
            "ip -n {h} -6 route add ff00::/8 dev eth0 table local metric 1 || true\n\
             ip -n {h} route add 224.0.0.0/4 dev eth0"
        ));
    }
    for h in hosts {
        wait_link_local(sb, h);
    }
    // Our queries leave from br0's link-local address, once its DAD is over.
    wait_until("br0's link-local address", T, || {
        let out = sb.sh("ip -6 -o addr show dev br0 scope link");
        (out.contains("inet6") && !out.contains("tentative")).then_some(())
    });
}

fn wait_link_local(sb: &Sandbox, host: &str) {
    wait_until(&format!("{host}'s link-local address"), T, || {
        let out = sb.sh(&format!("ip -n {host} -6 -o addr show dev eth0 scope link"));
        (out.contains("inet6") && !out.contains("tentative")).then_some(())
    });
}

/// A site with a [headend] on br0, short timers, and these services (TOML).
fn site(sb: &Sandbox, extra: &str, services: &str) -> PathBuf {
    let state = sb.path("state");
    sb.write(
        "site.toml",
        &format!(
            r#"[site]
name = "hl"
state_dir = "{}"
[headend]
interfaces = ["br0"]
prefix = "fd00::/64"
query_interval = "2s"
query_response_interval = "1s"
last_listener_interval = "200ms"
sap_interval = "1s"
stall = "3s"
{extra}
{services}
"#,
            state.display()
        ),
    )
}

fn tone(number: u32, extra: &str) -> String {
    format!(
        "[[headend.service]]\nnumber = {number}\nname = \"Tone {number}\"\ncommand = \"{TONE}\"\n{extra}\n"
    )
}

fn headend(sb: &Sandbox, site: &Path, name: &str) -> Background {
    let mut cmd = sb.appliance();
    cmd.arg("headend")
        .arg(site)
        .env("APPLIANCE_LOG", "info,appliance=debug");
    let mut bg = Background::spawn(sb, name, cmd);
    bg.wait_for("headend: listening", T);
    bg
}

fn status(sb: &Sandbox) -> Value {
    let sock = sb.path("state/parts/headend.sock");
    let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn service(sb: &Sandbox, number: u32) -> Value {
    status(sb)["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["number"] == number)
        .cloned()
        .unwrap_or_else(|| panic!("no service {number} in status"))
}

fn wait_state(sb: &Sandbox, bg: &Background, number: u32, state: &str, within: Duration) -> Value {
    let what = format!("service {number} {state}");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(&what, within, || {
            let s = service(sb, number);
            (s["state"] == state).then_some(s)
        })
    }));
    r.unwrap_or_else(|_| panic!("no {what}: {}\n{}", service(sb, number), bg.logs()))
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A receiver on `host`: a UDP socket on port 5004 that joined `group` on eth0 (its kernel
/// sends the report), until dropped.
fn receiver(sb: &Sandbox, host: &str, group: &str) -> UdpSocket {
    let group: IpAddr = group.parse().unwrap();
    in_netns(sb, Some(host), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let s = match group {
            IpAddr::V6(g) => {
                let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                s.set_reuse_address(true).unwrap();
                s.bind(&SocketAddr::new(group, 5004).into()).unwrap();
                s.join_multicast_v6(&g, idx).unwrap();
                s
            }
            IpAddr::V4(g) => {
                let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                s.set_reuse_address(true).unwrap();
                s.bind(&SocketAddr::new(group, 5004).into()).unwrap();
                s.join_multicast_v4_n(&g, &socket2::InterfaceIndexOrAddress::Index(idx))
                    .unwrap();
                s
            }
        };
        let u: UdpSocket = s.into();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        u
    })
}

/// Waits for an RTP packet on the receiver.
fn rtp(u: &UdpSocket, bg: &Background) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("an RTP packet at the receiver", T, || {
            u.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
        })
    }));
    let p = r.unwrap_or_else(|_| panic!("no RTP\n{}", bg.logs()));
    assert_eq!(p[0] >> 6, 2, "not RTP version 2");
    p
}

/// Drops what is queued already, so the next packet is a fresh one.
fn drain(u: &UdpSocket) {
    let mut buf = [0u8; 2048];
    u.set_nonblocking(true).unwrap();
    while u.recv(&mut buf).is_ok() {}
    u.set_nonblocking(false).unwrap();
}

#[test]
fn a_join_brings_rtp_one_leave_of_two_keeps_it_the_last_stops_it() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1", "h2"]);
    let site = site(&sb, "", &tone(1, ""));
    let bg = headend(&sb, &site, "headend");
    assert_eq!(service(&sb, 1)["state"], "idle");
    let r1 = receiver(&sb, "h1", G1);
    let p = rtp(&r1, &bg);
    assert_eq!(p[1] & 0x7f, 97, "Opus is dynamic payload type 97");
    let s = wait_state(&sb, &bg, 1, "running", T);
    assert_eq!(s["listeners"]["br0"][0], "ipv6", "{s}");
    let pid = s["pid"].as_u64().expect("source pid");
    // The source runs as nobody.
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = st
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(uid.contains("65534"), "{uid}");
    let r2 = receiver(&sb, "h2", G1);
    rtp(&r2, &bg);
    drop(r1);
    // After the last-listener queries (2 × 200 ms), h2 still gets the stream. This waits
    // out the window in which a wrong stop would happen (no event marks its absence); the
    // membership tests check the queries and h2's answer themselves.
    std::thread::sleep(Duration::from_millis(1500));
    drain(&r2);
    rtp(&r2, &bg);
    assert_eq!(service(&sb, 1)["state"], "running");
    assert_eq!(service(&sb, 1)["pid"].as_u64(), Some(pid));
    drop(r2);
    wait_state(&sb, &bg, 1, "idle", T);
    wait_until("the source to be gone", T, || {
        (!pid_alive(pid)).then_some(())
    });
    assert!(service(&sb, 1)["packets"].as_u64().unwrap() > 10);
}

#[test]
fn a_vanished_receiver_is_timed_out() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let site = site(&sb, "", &tone(1, ""));
    let bg = headend(&sb, &site, "headend");
    let r = receiver(&sb, "h1", G1);
    rtp(&r, &bg);
    // The host goes silent: no leave, no answers to queries.
    sb.sh("ip link set h-h1 down");
    // Listener interval: 2 × 2 s + 1 s.
    wait_state(&sb, &bg, 1, "idle", Duration::from_secs(20));
    assert!(bg.err().contains("service 1"), "{}", bg.logs());
}

#[test]
fn an_igmpv3_receiver_gets_the_ipv4_group() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    sb.sh("ip netns exec h1 sysctl -qw net.ipv4.conf.eth0.force_igmp_version=3");
    let site = site(&sb, "ipv4_space = \"239.10.0.0/16\"", &tone(1, ""));
    let bg = headend(&sb, &site, "headend");
    let r = receiver(&sb, "h1", "239.10.0.1");
    rtp(&r, &bg);
    let s = service(&sb, 1);
    assert_eq!(s["group4"], "239.10.0.1");
    assert_eq!(s["listeners"]["br0"][0], "ipv4", "{s}");
    drop(r);
    wait_state(&sb, &bg, 1, "idle", T);
}

#[test]
fn a_sap_client_finds_an_idle_service_and_plays_it() {
    require_program("ffmpeg");
    require_program("timeout");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let site = site(&sb, "", &tone(1, ""));
    let bg = headend(&sb, &site, "headend");
    // The first run tells the headend the source's media (rtpmap); it keeps it.
    let r = receiver(&sb, "h1", G1);
    rtp(&r, &bg);
    wait_until("the service announced", T, || {
        (service(&sb, 1)["announced"] == true).then_some(())
    });
    drop(r);
    wait_state(&sb, &bg, 1, "idle", T);
    // A SAP client alone: it reads the menu, joins, and the join starts the source.
    let wav = sb.path("out.wav");
    let out = sb
        .in_host("h1", "timeout")
        .args([
            "20",
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "warning",
            "-y",
            "-i",
        ])
        .arg("sap://[ff0e::2:7ffe]")
        .args(["-t", "2"])
        .arg(&wav)
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg sap:// failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bg.logs()
    );
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&wav)
        .output()
        .expect("ffprobe");
    let secs: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!(secs >= 1.9, "decoded {secs} s");
}

#[test]
fn warm_and_lingering_services_answer_a_join_without_starting_a_process() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let services = tone(1, "warm = true") + &tone(2, "linger = \"60s\"");
    let site = site(&sb, "", &services);
    let bg = headend(&sb, &site, "headend");
    // Warm: running before anyone joins.
    let s = wait_state(&sb, &bg, 1, "running", T);
    let warm_pid = s["pid"].as_u64().unwrap();
    let r = receiver(&sb, "h1", G1);
    rtp(&r, &bg);
    assert_eq!(service(&sb, 1)["pid"].as_u64(), Some(warm_pid));
    drop(r);
    wait_until("the warm service without listeners", T, || {
        service(&sb, 1)["listeners"]
            .as_object()
            .is_some_and(|m| m.is_empty())
            .then_some(())
    });
    assert_eq!(service(&sb, 1)["state"], "running");
    assert_eq!(service(&sb, 1)["pid"].as_u64(), Some(warm_pid));
    // Lingering: the first join starts it; after the leave it lingers; a join takes it back.
    let r = receiver(&sb, "h1", G2);
    rtp(&r, &bg);
    let pid = service(&sb, 2)["pid"].as_u64().unwrap();
    drop(r);
    wait_state(&sb, &bg, 2, "lingering", T);
    let r = receiver(&sb, "h1", G2);
    rtp(&r, &bg);
    let s = service(&sb, 2);
    assert_eq!(s["state"], "running");
    assert_eq!(s["pid"].as_u64(), Some(pid), "no new process");
    assert_eq!(s["restarts"], 0);
}

#[test]
fn a_killed_source_is_restarted_while_someone_listens() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let site = site(&sb, "", &tone(1, ""));
    let bg = headend(&sb, &site, "headend");
    let r = receiver(&sb, "h1", G1);
    rtp(&r, &bg);
    let pid = wait_state(&sb, &bg, 1, "running", T)["pid"]
        .as_u64()
        .unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let s = wait_until("a new source", T, || {
        let s = service(&sb, 1);
        (s["pid"].as_u64().is_some_and(|p| p != pid) && s["state"] == "running").then_some(s)
    });
    assert_eq!(s["restarts"], 1, "{s}");
    drain(&r);
    rtp(&r, &bg);
}

/// The supervisor's status, from its control socket.
fn site_status(sb: &Sandbox) -> Option<Value> {
    let sock = sb.path("state/control.sock");
    let mut s = UnixStream::connect(&sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

fn child<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["children"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no child {name}: {v}"))
}

#[test]
fn the_supervisor_restarts_a_killed_headend_which_finds_its_listeners_again() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let site = site(&sb, "", &tone(1, ""));
    let up = Up::start(&sb, &site);
    let v = wait_until(
        "the headend healthy under up",
        Duration::from_secs(30),
        || {
            let v = site_status(&sb)?;
            (child(&v, "headend")["health"] == "healthy").then_some(v)
        },
    );
    let pid = child(&v, "headend")["pid"].as_u64().unwrap();
    let r = receiver(&sb, "h1", G1);
    let logs = || up.log();
    let mut buf = [0u8; 2048];
    wait_until(&format!("RTP under up\n{}", logs()), T, || {
        r.recv(&mut buf).ok()
    });
    assert_eq!(ffmpegs(&sb), 1);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // A new headend; its startup queries find the receiver, and the stream comes back.
    wait_until("a new headend", Duration::from_secs(30), || {
        let v = site_status(&sb)?;
        let c = child(&v, "headend");
        (c["pid"].as_u64().is_some_and(|p| p != pid) && c["health"] == "healthy").then_some(())
    });
    // The old source died with its headend: one ffmpeg runs (pids under `up` are those
    // of its PID namespace, so count them by name).
    wait_until("one source", T, || (ffmpegs(&sb) == 1).then_some(()));
    drain(&r);
    wait_until(&format!("RTP again\n{}", logs()), T, || {
        r.recv(&mut buf).ok()
    });
    let s = service(&sb, 1);
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["listeners"]["br0"][0], "ipv6", "{s}");
    let v = site_status(&sb).unwrap();
    assert!(child(&v, "headend")["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(v["headend"]["services"][0]["state"], "running", "{v}");
    // `appliance status` shows it per service, as text.
    let out = sb
        .appliance()
        .args(["status", "--state-dir"])
        .arg(sb.path("state"))
        .output()
        .expect("appliance status");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Tone 1"))
        .unwrap_or_else(|| panic!("no service line in:\n{text}"));
    assert!(
        line.contains("running") && line.contains("br0 (ipv6)") && line.contains("restarts 0"),
        "{line}"
    );
}

/// Live ffmpeg processes in the sandbox.
fn ffmpegs(sb: &Sandbox) -> usize {
    sb.processes()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ffmpeg")
                && pid_alive(u64::from(*p))
        })
        .count()
}

#[test]
fn a_directory_entry_plays_and_a_number_without_one_is_ignored() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    sb.write("cmds.txt", &format!("# dvblast-style\n0 = {TONE}\n"));
    let dir = "[[headend.directory]]\nname = \"tones\"\nfirst = 256\ncount = 16\ncommands = \"cmds.txt\"\n";
    let site = site(&sb, "", dir);
    let bg = headend(&sb, &site, "headend");
    wait_until("the directory read", T, || {
        status(&sb)["services"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["number"] == 256))
            .then_some(())
    });
    let r = receiver(&sb, "h1", "ff3e:40:fd00::8000:100");
    rtp(&r, &bg);
    let _empty = receiver(&sb, "h1", "ff3e:40:fd00::8000:101");
    wait_until("the empty entry logged", T, || {
        bg.err().contains("service 257").then_some(())
    });
    assert_eq!(status(&sb)["sources_running"], 1);
}

/// SAP announcements heard on h1 at the scope's SAP address.
fn sap_listener(sb: &Sandbox) -> UdpSocket {
    in_netns(sb, Some("h1"), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let g: std::net::Ipv6Addr = "ff0e::2:7ffe".parse().unwrap();
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::new(g.into(), 9875).into()).unwrap();
        s.join_multicast_v6(&g, idx).unwrap();
        let u: UdpSocket = s.into();
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        u
    })
}

/// The next announcement whose SDP satisfies `pred`: (hash, SDP).
fn announcement(u: &UdpSocket, what: &str, pred: impl Fn(&str) -> bool) -> (u16, String) {
    let mut buf = [0u8; 4096];
    wait_until(what, Duration::from_secs(20), || {
        let n = u.recv(&mut buf).ok()?;
        let p = appliance::sap::SapPacket::parse(&buf[..n]).ok()?;
        let sdp = String::from_utf8_lossy(&p.payload).into_owned();
        (!p.deletion && pred(&sdp)).then_some((p.msg_id_hash, sdp))
    })
}

#[test]
fn a_url_service_from_icecast_carries_its_title_into_the_sdp() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let ice = Icecast::start(&sb, 8000, &["/test.mp3"]);
    let _feeder = ice.feed(&sb, "/test.mp3", "Test FM");
    ice.set_title(&sb, "/test.mp3", "First Song");
    let svc = format!(
        "[[headend.service]]\nnumber = 1\nname = \"Radio\"\nurl = \"http://{}/test.mp3\"\n",
        ice.addr
    );
    let site = site(&sb, "", &svc);
    let bg = headend(&sb, &site, "headend");
    let menu = sap_listener(&sb);
    let r = receiver(&sb, "h1", G1);
    let p = rtp(&r, &bg);
    assert_eq!(p[1] & 0x7f, 14, "MP3 on RTP payload type 14");
    let (h1, sdp) = announcement(&menu, "the station's first title on the menu", |s| {
        s.contains("i=First Song")
    });
    assert!(sdp.contains("s=Test FM"), "{sdp}");
    assert!(sdp.contains(&format!("c=IN IP6 {G1}")), "{sdp}");
    assert!(sdp.contains("m=audio 5004 RTP/AVP 14"), "{sdp}");
    ice.set_title(&sb, "/test.mp3", "Second Song");
    let (h2, _) = announcement(&menu, "the new title on the menu", |s| {
        s.contains("i=Second Song")
    });
    assert_ne!(h1, h2, "the message id hash changes with the SDP");
}

/// `max_sources`: a join storm to more services than the cap starts no more sources than
/// the cap (counted as real ffmpeg processes), says so in the log and in `status`, and a
/// leave frees a slot that a waiting service takes.
#[test]
fn a_join_storm_starts_no_more_sources_than_max_sources() {
    require_program("ffmpeg");
    const CAP: usize = 3;
    const SERVICES: u32 = 8;
    let sb = Sandbox::new();
    lan(&sb, &["h1"]);
    let services: String = (1..=SERVICES).map(|n| tone(n, "")).collect();
    let site = site(&sb, &format!("max_sources = {CAP}"), &services);
    let mut bg = headend(&sb, &site, "headend");
    let group = |n: u32| format!("ff3e:40:fd00::8000:{n:x}");
    let mut receivers: std::collections::BTreeMap<u32, UdpSocket> = (1..=SERVICES)
        .map(|n| (n, receiver(&sb, "h1", &group(n))))
        .collect();
    // Every join is heard (all eight have listeners) while only CAP sources run.
    let most = std::cell::Cell::new(0);
    let running = || {
        let v = status(&sb);
        let procs = ffmpegs(&sb);
        most.set(most.get().max(procs));
        let svcs = v["services"].as_array().cloned().unwrap_or_default();
        let with_listeners = svcs
            .iter()
            .filter(|s| s["listeners"].as_object().is_some_and(|m| !m.is_empty()))
            .count();
        let up: Vec<u32> = svcs
            .iter()
            .filter(|s| s["state"] == "running")
            .filter_map(|s| s["number"].as_u64().map(|n| n as u32))
            .collect();
        (v, procs, with_listeners, up)
    };
    let (v, up) = wait_until("every join heard and the cap's sources running", T, || {
        let (v, _, heard, up) = running();
        (heard == SERVICES as usize && up.len() == CAP).then_some((v, up))
    });
    bg.wait_for(&format!("max_sources {CAP} reached"), T);
    assert_eq!(v["sources_running"], CAP, "{v}");
    assert_eq!(v["max_sources"], CAP, "{v}");
    let waiting: Vec<u32> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["waiting_for_slot"] == true)
        .filter_map(|s| s["number"].as_u64().map(|n| n as u32))
        .collect();
    assert_eq!(
        waiting.len(),
        SERVICES as usize - CAP,
        "services waiting for a slot: {v}"
    );
    // The running ones relay to their listeners.
    for n in &up {
        rtp(&receivers[n], &bg);
    }
    // A leave of a running service frees its slot; a waiting one takes it.
    let left = up[0];
    drop(receivers.remove(&left));
    let (v, now_up) = wait_until("a waiting service in the freed slot", T, || {
        let (v, _, _, now) = running();
        (now.len() == CAP && !now.contains(&left) && now.iter().any(|n| waiting.contains(n)))
            .then_some((v, now))
    });
    assert_eq!(v["sources_running"], CAP, "{v}");
    let taken = *now_up.iter().find(|n| waiting.contains(n)).unwrap();
    drain(&receivers[&taken]);
    rtp(&receivers[&taken], &bg);
    wait_until("the real processes settle at the cap", T, || {
        (ffmpegs(&sb) == CAP).then_some(())
    });
    assert!(
        most.get() <= CAP,
        "{} ffmpeg processes at once with max_sources {CAP}\n{}",
        most.get(),
        bg.logs()
    );
}
