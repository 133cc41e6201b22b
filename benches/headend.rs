//! Headend figures, one run: `cargo bench --bench headend` (as root).
//!
//! In a fresh namespace: a bridge, a receiver host whose own kernel sends the MLDv2
//! reports, `appliance headend` with the test-tone service
//! (`ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}`).
//! - join to the first RTP packet at the receiver, p50 and p95 over 20 joins: cold (the
//!   join starts the source), lingering (the source still runs after the last leave) and
//!   warm (it runs from the start), each from no listener, beside ffmpeg's own
//!   launch-to-first-packet for the same command (sent to a local port) in the same run,
//!   and a new socket on a host that is a member already (no report at all); each split
//!   into join → the listener logging it heard the report, and the relay's share (its
//!   output added → first packet out), from the headend's log;
//! - leave to source stopped with the default timers (last-listener interval 1 s, count 2);
//! - 32 services running at once: the headend's CPU and RSS.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "common/figures.rs"]
mod figures;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use figures::*;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const T: Duration = Duration::from_secs(20);
const TONE: &str = "ffmpeg -nostdin -re -f lavfi -i sine=frequency=440 -c:a libopus -f rtp {rtp}";
const RUNS: usize = 20;

fn group(n: u32) -> String {
    format!("ff3e:40:fd00::8000:{n:x}")
}

fn lan(sb: &Sandbox) {
    sb.bridge("br0");
    sb.sh("ip link set br0 type bridge mcast_snooping 0 \
           && ip addr add fd00::1/64 dev br0 nodad");
    sb.host("h1", "br0", &["fd00::11/64"]);
    wait_until("link-local addresses", T, || {
        let a = sb.sh("ip -n h1 -6 -o addr show dev eth0 scope link");
        let b = sb.sh("ip -6 -o addr show dev br0 scope link");
        (a.contains("inet6")
            && !a.contains("tentative")
            && b.contains("inet6")
            && !b.contains("tentative"))
        .then_some(())
    });
}

fn site(sb: &Sandbox, name: &str, timers: &str, services: &str) -> PathBuf {
    let state = sb.path(&format!("{name}-state"));
    sb.write(
        &format!("{name}.toml"),
        &format!(
            "[site]\nname = \"b{name}\"\nstate_dir = \"{}\"\n[headend]\ninterfaces = [\"br0\"]\n\
             prefix = \"fd00::/64\"\nmax_sources = 64\n{timers}\n{services}",
            state.display()
        ),
    )
}

const SHORT: &str = "query_interval = \"2s\"\nquery_response_interval = \"1s\"\n\
                     last_listener_interval = \"200ms\"";

fn tone(n: u32, extra: &str) -> String {
    format!(
        "[[headend.service]]\nnumber = {n}\nname = \"Tone {n}\"\ncommand = \"{TONE}\"\n{extra}\n"
    )
}

fn start(sb: &Sandbox, site: &Path, name: &str) -> Background {
    let mut cmd = sb.appliance();
    // The relay's debug lines say when each output's first packet went out (its share);
    // the listener's say when it heard each join.
    cmd.arg("headend").arg(site).env(
        "APPLIANCE_LOG",
        "warn,appliance::headend::relay=debug,appliance::headend::listen=info",
    );
    let bg = Background::spawn(sb, name, cmd);
    let sock = site.with_file_name(format!("{name}-state/parts/headend.sock"));
    wait_until("the headend's control socket", T, || {
        UnixStream::connect(&sock).ok().map(|_| ())
    });
    bg
}

fn status(sock: &Path) -> Value {
    let mut s = UnixStream::connect(sock).expect("control socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn service(sock: &Path, n: u32) -> Value {
    status(sock)["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["number"] == n).cloned())
        .unwrap_or_default()
}

fn state(sock: &Path, n: u32) -> String {
    service(sock, n)["state"].as_str().unwrap_or("").to_string()
}

/// Every join: its group and wall-clock time (the headend's log has wall-clock times).
static JOINED: std::sync::Mutex<Vec<(IpAddr, SystemTime)>> = std::sync::Mutex::new(Vec::new());

/// Joins `group` on h1's eth0 (its kernel reports at once); returns the socket and when.
fn join(sb: &Sandbox, g: &str) -> (UdpSocket, Instant) {
    let g: IpAddr = g.parse().unwrap();
    in_netns(sb, Some("h1"), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::new(g, 5004).into()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let IpAddr::V6(g6) = g else { unreachable!() };
        JOINED.lock().unwrap().push((g, SystemTime::now()));
        let t = Instant::now();
        s.join_multicast_v6(&g6, idx).unwrap();
        (s.into(), t)
    })
}

/// The relay's share of each join of service `n`: output added → first packet out, from
/// its debug lines in the headend's log.
fn relay_share(bg: &Background, n: u32) -> Vec<Duration> {
    let head = format!("service {n}: first RTP packet out of ");
    bg.err()
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&head)? + head.len()..];
            let ms: f64 = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some(Duration::from_secs_f64(ms / 1000.0))
        })
        .collect()
}

/// Seconds since midnight UTC of a log line's RFC 3339 timestamp (`…T05:29:34.123456Z`).
fn log_time_of_day(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut f = t.trim_end_matches('Z').split(':');
    let (h, m, s): (f64, f64, f64) = (
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// For each join of service `n`: join → the headend's listener logging it heard the join
/// (the receiver's kernel sending its report, and our reading it).
fn heard_delays(bg: &Background, n: u32) -> Vec<Duration> {
    let g: IpAddr = group(n).parse().unwrap();
    let heard: Vec<f64> = bg
        .err()
        .lines()
        .filter(|l| l.contains(": join ") && l.contains(&format!("group={g} ")))
        .filter_map(log_time_of_day)
        .collect();
    JOINED
        .lock()
        .unwrap()
        .iter()
        .filter(|(j, _)| *j == g)
        .filter_map(|(_, at)| {
            let d = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()?
                .as_secs_f64()
                % 86_400.0;
            let h = heard.iter().copied().find(|h| *h >= d)?;
            Some(Duration::from_secs_f64(h - d))
        })
        .collect()
}

/// ffmpeg alone: launch to its first RTP packet on a local port.
fn ffmpeg_alone(sb: &Sandbox) -> Vec<Duration> {
    (0..RUNS)
        .map(|_| {
            let u = udp_in(sb, None, "127.0.0.1:0");
            u.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
            let port = u.local_addr().unwrap().port();
            let cmd = TONE.replace("{rtp}", &format!("rtp://127.0.0.1:{port}?pkt_size=1316"));
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let t = Instant::now();
            let mut c = sb
                .cmd(words[0])
                .args(&words[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ffmpeg");
            let d = first_packet(&u, t, T);
            let _ = c.kill();
            let _ = c.wait();
            d
        })
        .collect()
}

/// `RUNS` joins to service `n`, each after its last listener is gone and it is `settle`
/// again (the relay has no output left: the join must be heard and acted on).
fn joins(sb: &Sandbox, sock: &Path, n: u32, settle: &str) -> Vec<Duration> {
    let mut v = vec![];
    for _ in 0..RUNS {
        let (u, t) = join(sb, &group(n));
        v.push(first_packet(&u, t, T));
        drop(u);
        wait_until(
            &format!("service {n} {settle} without listeners"),
            T,
            || {
                let s = service(sock, n);
                (s["state"] == settle && s["listeners"].as_object().is_some_and(|l| l.is_empty()))
                    .then_some(())
            },
        );
    }
    v
}

/// A new socket on a host that is a member already (no report, nothing for the headend to
/// do) waits for the next packet of the flowing stream: what a join costs without a
/// packet sent at once.
fn joins_flowing(sb: &Sandbox, n: u32) -> Vec<Duration> {
    let (keep, t) = join(sb, &group(n));
    first_packet(&keep, t, T);
    let v = (0..RUNS)
        .map(|_| {
            let (u, t) = join(sb, &group(n));
            first_packet(&u, t, T)
        })
        .collect();
    drop(keep);
    v
}

fn ffmpegs(sb: &Sandbox) -> usize {
    sb.processes()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ffmpeg")
                && !std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        })
        .count()
}

/// The appliance process among the sandbox's (nsenter execs it).
fn cpu_ticks(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = st.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    require_root();
    require_program("ffmpeg");
    let sb = Sandbox::new();
    lan(&sb);
    println!("headend figures (one run, {RUNS} joins each; aims from issue 10)");

    let mut alone = ffmpeg_alone(&sb);
    let services = tone(1, "") + &tone(2, "linger = \"1h\"") + &tone(3, "warm = true");
    let site1 = site(&sb, "short", SHORT, &services);
    let bg = start(&sb, &site1, "short");
    let sock = sb.path("short-state/parts/headend.sock");
    wait_until("the warm service running", T, || {
        (state(&sock, 3) == "running").then_some(())
    });
    let mut cold = joins(&sb, &sock, 1, "idle");
    // Lingering: one first join starts it; the 20 measured joins find it lingering.
    let (u, t) = join(&sb, &group(2));
    first_packet(&u, t, T);
    drop(u);
    wait_until("lingering", T, || {
        (state(&sock, 2) == "lingering").then_some(())
    });
    let mut linger = joins(&sb, &sock, 2, "lingering");
    let mut warm = joins(&sb, &sock, 3, "running");
    let shares: Vec<Vec<Duration>> = [1, 2, 3].map(|n| relay_share(&bg, n)).into();
    let heard: Vec<Vec<Duration>> = [1, 2, 3].map(|n| heard_delays(&bg, n)).into();
    // After the figures above are taken: these joins send no report.
    let mut flowing = joins_flowing(&sb, 3);
    println!(
        "  ffmpeg alone, launch to first packet   p50 {:>9}  p95 {:>9}  (baseline, about 140 ms here)",
        ms(pct(&mut alone, 0.5)),
        ms(pct(&mut alone, 0.95))
    );
    println!(
        "  a new socket on a member host         p50 {:>9}  p95 {:>9}  (no report: the stream's next packet)",
        ms(pct(&mut flowing, 0.5)),
        ms(pct(&mut flowing, 0.95))
    );
    for (((what, v, aim), mut share), mut heard) in [
        ("cold join to first packet", &mut cold, "aim p50 < 250 ms"),
        (
            "lingering join to first packet",
            &mut linger,
            "aim p50 < 20 ms",
        ),
        ("warm join to first packet", &mut warm, "aim p50 < 20 ms"),
    ]
    .into_iter()
    .zip(shares)
    .zip(heard)
    {
        println!(
            "  {what:<38} p50 {:>9}  p95 {:>9}  ({aim})",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.95))
        );
        if !heard.is_empty() {
            println!(
                "    of which join to report heard ({} joins)                p50 {}  p95 {}",
                heard.len(),
                ms(pct(&mut heard, 0.5)),
                ms(pct(&mut heard, 0.95))
            );
        }
        if !share.is_empty() {
            println!(
                "    of which the relay (output added to first packet out, {} joins) p50 {}  p95 {}",
                share.len(),
                ms(pct(&mut share, 0.5)),
                ms(pct(&mut share, 0.95))
            );
        }
    }
    drop(bg);
    wait_until("no source left", T, || (ffmpegs(&sb) == 0).then_some(()));

    // Leave to stopped, default timers.
    let site2 = site(&sb, "default", "", &tone(1, ""));
    let bg = start(&sb, &site2, "default");
    let sock = sb.path("default-state/parts/headend.sock");
    let mut stops = vec![];
    for _ in 0..5 {
        let (u, t) = join(&sb, &group(1));
        first_packet(&u, t, T);
        wait_until("running", T, || {
            (state(&sock, 1) == "running").then_some(())
        });
        let t = Instant::now();
        drop(u);
        wait_until("the source gone", T, || (ffmpegs(&sb) == 0).then_some(()));
        stops.push(t.elapsed());
        wait_until("idle", T, || (state(&sock, 1) == "idle").then_some(()));
    }
    println!(
        "  leave to source stopped (defaults)     p50 {:>9}  max {:>9}  (aim < 2.5 s)",
        ms(pct(&mut stops, 0.5)),
        ms(*stops.iter().max().unwrap())
    );
    drop(bg);
    wait_until("no source left", T, || (ffmpegs(&sb) == 0).then_some(()));

    // 32 services at once.
    let all: String = (1..=32).map(|n| tone(n, "")).collect();
    let site3 = site(&sb, "many", SHORT, &all);
    let bg = start(&sb, &site3, "many");
    let sock = sb.path("many-state/parts/headend.sock");
    let pid = bg.child.id();
    let joined: Vec<UdpSocket> = (1..=32).map(|n| join(&sb, &group(n)).0).collect();
    wait_until("32 sources running", Duration::from_secs(60), || {
        let v = status(&sock);
        let running = v["services"]
            .as_array()?
            .iter()
            .filter(|s| s["state"] == "running")
            .count();
        (running == 32).then_some(())
    });
    let window = Duration::from_secs(10);
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    let (c1, t1) = (cpu_ticks(pid), Instant::now());
    let hz = 100.0;
    let cpu = (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0;
    let v = status(&sock);
    let packets: u64 = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["packets"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "  32 services running: headend CPU {cpu:.1}% of one core, RSS {} KiB, {packets} packets relayed so far",
        rss_kib(pid)
    );
    drop(joined);
    drop(bg);
}
