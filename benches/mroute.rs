//! Figures of `appliance mroute` beside Debian's smcroute, in one run, in a sandbox:
//! time to install N (S,G) routes from start, a reload that changes one route among
//! 20,000, and the time from the first packet of a new (*,G) stream to its delivery
//! through the freshly installed entry.
//!
//! Run as root: `cargo bench --bench mroute`. `BENCH_SMCROUTE_MAX` caps the route count
//! given to smcroute (default 20000; its time grows quadratically: minutes at 20,000).
//! `BENCH_MROUTE_PARTS` picks sections (default `install,reload,upcall`), e.g.
//! `BENCH_MROUTE_PARTS=reload` for the reload figures alone.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::mroute::control::{Request, request};
use common::*;
use socket2::{Domain, Protocol, Socket, Type};

const SIZES: [usize; 3] = [1_000, 5_000, 20_000];
const UPCALL_SAMPLES: usize = 200;
const PORT: u16 = 5000;

fn group(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(239, 10 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn conf(n: usize, changed: Option<usize>) -> String {
    let mut s = String::from("phyint br-a enable\nphyint br-b enable\n");
    for i in 0..n {
        let g = if changed == Some(i) {
            Ipv4Addr::new(239, 99, 99, 99)
        } else {
            group(i)
        };
        s.push_str(&format!(
            "mroute from br-a source 10.1.0.10 group {g} to br-b\n"
        ));
    }
    s
}

/// Entries in the sandbox's IPv4 multicast cache (read through /proc/PID/net).
fn mfc_count(sb: &Sandbox) -> usize {
    read(Path::new(&format!("/proc/{}/net/ip_mr_cache", sb.pid)))
        .lines()
        .count()
        .saturating_sub(1)
}

fn wait_count(sb: &Sandbox, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while mfc_count(sb) < n {
        assert!(
            Instant::now() < deadline,
            "{n} routes not installed within {within:?}"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn stop(sb: &Sandbox, mut child: Child) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { kill(child.id() as i32, 15) };
    let _ = child.wait();
    wait_until("the kernel table to empty", Duration::from_secs(30), || {
        (mfc_count(sb) == 0).then_some(())
    });
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn smcrouted(sb: &Sandbox, conf: &Path) -> Child {
    sb.cmd("smcrouted")
        .args(["-n", "-N", "-l", "err", "-f"])
        .arg(conf)
        .args([
            "-u",
            "/run/smcroute-bench.sock",
            "-P",
            "/run/smcroute-bench.pid",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn smcrouted")
}

fn ours(sb: &Sandbox, conf: &Path) -> Child {
    sb.appliance()
        .args(["mroute", "--smcroute-conf"])
        .arg(conf)
        .arg("--state-dir")
        .arg(sb.path("state"))
        .env("APPLIANCE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(File::create(sb.path("mroute.log")).unwrap())
        .spawn()
        .expect("spawn appliance mroute")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{} us", d.as_micros())
}

fn topology() -> Sandbox {
    let sb = Sandbox::new();
    sb.bridge("br-a");
    sb.bridge("br-b");
    sb.sh(
        "ip addr add 10.1.0.1/24 dev br-a\nip addr add 10.2.0.1/24 dev br-b\n\
         ip link set br-a type bridge mcast_snooping 0\n\
         ip link set br-b type bridge mcast_snooping 0",
    );
    sb.host("snd", "br-a", &["10.1.0.10/24"]);
    sb.host("rcv", "br-b", &["10.2.0.10/24"]);
    sb.sh("ip -n snd route add default via 10.1.0.1\n\
         ip -n rcv route add default via 10.2.0.1\n\
         ip netns exec rcv sysctl -qw net.ipv4.igmp_max_memberships=4096");
    sb
}

/// First-packet latency of UPCALL_SAMPLES new groups through a (*,G) template, and the
/// latency of a second packet through the installed entry; (median, p99, lost).
fn upcall_latency(sb: &Sandbox, base: u8) -> (Duration, Duration, Duration, usize) {
    let groups: Vec<Ipv4Addr> = (0..UPCALL_SAMPLES)
        .map(|i| Ipv4Addr::new(239, 200, base, i as u8))
        .collect();
    let gs = groups.clone();
    let rx: UdpSocket = sb.in_netns(Some("rcv"), move || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())
            .unwrap();
        for g in gs {
            s.join_multicast_v4(&g, &Ipv4Addr::new(10, 2, 0, 10))
                .unwrap();
        }
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.into()
    });
    let tx: UdpSocket = sb.in_netns(Some("snd"), || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_multicast_if_v4(&Ipv4Addr::new(10, 1, 0, 10)).unwrap();
        s.set_multicast_ttl_v4(8).unwrap();
        s.into()
    });
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut lost = 0;
    let mut buf = [0u8; 64];
    for g in &groups {
        for (round, out) in [(0, &mut first), (1, &mut second)] {
            let t0 = Instant::now();
            let to = SocketAddr::from((IpAddr::V4(*g), PORT));
            tx.send_to(format!("{g} {round}").as_bytes(), to).unwrap();
            loop {
                match rx.recv(&mut buf) {
                    Ok(n) if buf[..n] == *format!("{g} {round}").as_bytes() => {
                        out.push(t0.elapsed());
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        lost += 1;
                        break;
                    }
                }
            }
        }
    }
    first.sort();
    second.sort();
    let pick = |v: &Vec<Duration>, q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (
        pick(&first, 0.5),
        pick(&first, 0.99),
        pick(&second, 0.5),
        lost,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    require_program("smcrouted");
    let smc_max: usize = std::env::var("BENCH_SMCROUTE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let version = Command::new("smcrouted")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "appliance mroute vs {version} (Debian), in one sandbox; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "inputs: smcroute.conf with 2 phyints and N static (S,G) routes; smcroute capped at {smc_max} routes (BENCH_SMCROUTE_MAX)"
    );
    let sb = topology();
    let parts = std::env::var("BENCH_MROUTE_PARTS").unwrap_or("install,reload,upcall".into());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    let installed = parts.contains(&"install").then(|| install(&sb, smc_max));
    let reloaded = parts.contains(&"reload").then(|| reload(&sb, smc_max));
    let upcalled = parts.contains(&"upcall").then(|| upcall(&sb));
    println!(
        "\naims: 20,000 routes < 1 s and >= 20x smcroute; one-route reload < 50 ms; upcall to entry < 2 ms"
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let unmeasured = "not measured in this run";
    println!("verdicts:");
    match installed {
        Some((ours, smc)) => {
            println!(
                "   20,000 routes in {}: {}",
                ms(ours),
                verdict(ours < Duration::from_secs(1))
            );
            match smc {
                Some(smc) => {
                    let x = smc.as_secs_f64() / ours.as_secs_f64();
                    println!("   {x:.0}x smcroute: {}", verdict(x >= 20.0));
                }
                None => println!("   20x smcroute: {unmeasured} (BENCH_SMCROUTE_MAX)"),
            }
        }
        None => println!("   20,000 routes: {unmeasured}"),
    }
    match reloaded {
        Some(t) => println!(
            "   reload in {}: {}",
            ms(t),
            verdict(t < Duration::from_millis(50))
        ),
        None => println!("   reload: {unmeasured}"),
    }
    match upcalled {
        Some(t) => println!(
            "   upcall to entry ~ {}: {}",
            us(t),
            verdict(t < Duration::from_millis(2))
        ),
        None => println!("   upcall to entry: {unmeasured}"),
    }
}

/// Section 1: N routes installed from process start. Returns ours and smcroute's time for
/// the largest N.
fn install(sb: &Sandbox, smc_max: usize) -> (Duration, Option<Duration>) {
    let mut last = (Duration::ZERO, None);
    println!(
        "\n1. install N (S,G) routes from process start until all are in /proc/net/ip_mr_cache"
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>8}",
        "N", "appliance", "smcroute", "speedup"
    );
    for n in SIZES {
        let f = sb.write(&format!("bench-{n}.conf"), &conf(n, None));
        let t0 = Instant::now();
        let c = ours(sb, &f);
        wait_count(sb, n, Duration::from_secs(60));
        let t_ours = t0.elapsed();
        stop(sb, c);
        let t_smc = (n <= smc_max).then(|| {
            let t0 = Instant::now();
            let c = smcrouted(sb, &f);
            wait_count(sb, n, Duration::from_secs(600));
            let t = t0.elapsed();
            stop(sb, c);
            t
        });
        println!(
            "{n:>8}  {:>14}  {:>14}  {:>8}",
            ms(t_ours),
            t_smc.map_or("(skipped)".into(), ms),
            t_smc.map_or("-".into(), |t| format!(
                "{:.0}x",
                t.as_secs_f64() / t_ours.as_secs_f64()
            ))
        );
        last = (t_ours, t_smc);
    }
    last
}

/// Section 2: one changed route among 20,000, timed the same way for both. Returns ours.
fn reload(sb: &Sandbox, smc_max: usize) -> Duration {
    println!("\n2. reload that changes one route among 20,000 (route 12345 moves to 239.99.99.99)");
    let n = 20_000;
    let old = group(12345);
    let new = Ipv4Addr::new(239, 99, 99, 99);
    let src = Ipv4Addr::new(10, 1, 0, 10);
    let mfc = Mfc::open(sb);
    let f = sb.write("reload.conf", &conf(n, None));
    let c = ours(sb, &f);
    wait_count(sb, n, Duration::from_secs(60));
    let sock = sb.path("state").join("mroute.sock");
    wait_until("control socket", Duration::from_secs(10), || {
        request(&sock, &Request::Status).ok()
    });
    // Both timed the same way: from writing the changed file, through the reload
    // command (a process each: `appliance mroute --reload`, `smcroutectl reload`), to
    // the kernel's table holding the new route and no longer the old one (asked of the
    // kernel entry by entry, RTM_GETROUTE: reading all of /proc/net/ip_mr_cache takes
    // longer than the reload), then checked whole (every other route still in it).
    let t0 = Instant::now();
    std::fs::write(&f, conf(n, Some(12345))).unwrap();
    let out = sb
        .appliance()
        .args(["mroute", "--smcroute-conf"])
        .arg(&f)
        .arg("--state-dir")
        .arg(sb.path("state"))
        .arg("--reload")
        .output()
        .expect("appliance mroute --reload");
    let t_reload = mfc.until_moved(sb, t0, src, old, new, n);
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(answer["ok"], true, "{answer} {out:?}");
    println!(
        "   appliance: {} from writing the file, through `appliance mroute --reload`, until the new route is in and the old one out (inside the forwarder: {} us, of which re-reading the file {} us; changes {})",
        show(t_reload),
        answer["took_us"],
        answer["load_us"],
        answer["reload"]
    );
    stop(sb, c);
    if n <= smc_max {
        std::fs::write(&f, conf(n, None)).unwrap();
        let t0 = Instant::now();
        let c = smcrouted(sb, &f);
        wait_count(sb, n, Duration::from_secs(1800));
        let installed = t0.elapsed();
        let t0 = Instant::now();
        std::fs::write(&f, conf(n, Some(12345))).unwrap();
        let out = sb
            .cmd("smcroutectl")
            .args(["-u", "/run/smcroute-bench.sock", "reload"])
            .output()
            .expect("smcroutectl reload");
        let t = mfc.until_moved(sb, t0, src, old, new, n);
        let t = show(t);
        println!(
            "   smcroute:  {t} from writing the file, through `smcroutectl reload`, until the new route is in and the old one out ({}; its {n} routes took {} to install first)",
            if out.status.success() {
                "ok"
            } else {
                "smcroutectl failed"
            },
            ms(installed)
        );
        stop(sb, c);
    } else {
        println!("   smcroute:  (skipped: {n} > BENCH_SMCROUTE_MAX)");
    }
    t_reload.0
}

/// A reload's time, and when the table was whole only later than the move, both.
fn show((t, moved): (Duration, Option<Duration>)) -> String {
    match moved {
        None => ms(t),
        Some(m) => format!(
            "{} (moved after {}, the table whole only then)",
            ms(t),
            ms(m)
        ),
    }
}

/// A netlink socket in the sandbox that asks the kernel for single (S,G) entries of the
/// default IPv4 multicast table (RTM_GETROUTE, family RTNL_FAMILY_IPMR: one hash lookup).
struct Mfc(Socket);

impl Mfc {
    fn open(sb: &Sandbox) -> Mfc {
        Mfc(sb.in_netns(None, || {
            Socket::new(
                Domain::from(libc::AF_NETLINK),
                Type::RAW,
                Some(Protocol::from(libc::NETLINK_ROUTE)),
            )
            .expect("netlink socket")
        }))
    }

    /// Whether the kernel has an entry for (src, group).
    fn has(&self, src: Ipv4Addr, group: Ipv4Addr) -> bool {
        const RTM_GETROUTE: u16 = 26;
        const RTM_NEWROUTE: u16 = 24;
        const NLMSG_ERROR: u16 = 2;
        const RTNL_FAMILY_IPMR: u8 = 128;
        const RTA_DST: u16 = 1;
        const RTA_SRC: u16 = 2;
        let mut m = Vec::with_capacity(44);
        m.extend_from_slice(&44u32.to_ne_bytes());
        m.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        m.extend_from_slice(&[RTNL_FAMILY_IPMR, 32, 32, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&0u32.to_ne_bytes());
        for (kind, a) in [(RTA_SRC, src), (RTA_DST, group)] {
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&a.octets());
        }
        self.0.send(&m).expect("RTM_GETROUTE");
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let n = self.0.recv(&mut buf).expect("RTM_GETROUTE answer");
        // SAFETY: recv(2) initialised the first n bytes.
        let b: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        match kind {
            RTM_NEWROUTE => true,
            NLMSG_ERROR => {
                let errno = -i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                assert_eq!(
                    errno,
                    libc::ENOENT,
                    "RTM_GETROUTE of ({src}, {group}): {}",
                    std::io::Error::from_raw_os_error(errno)
                );
                false
            }
            other => panic!("RTM_GETROUTE answered message type {other}"),
        }
    }

    /// Polls until (src, new) is in the table and (src, old) is not, then checks that the
    /// table holds `n` entries: the time since `t0`, or, when the table was not whole yet,
    /// the time it was (found by reading /proc, so coarser) and that of the move.
    fn until_moved(
        &self,
        sb: &Sandbox,
        t0: Instant,
        src: Ipv4Addr,
        old: Ipv4Addr,
        new: Ipv4Addr,
        n: usize,
    ) -> (Duration, Option<Duration>) {
        let deadline = t0 + Duration::from_secs(1800);
        while !self.has(src, new) || self.has(src, old) {
            assert!(
                Instant::now() < deadline,
                "the reload did not finish in 30 min"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let t = t0.elapsed();
        if mfc_count(sb) == n {
            return (t, None);
        }
        while mfc_count(sb) != n {
            assert!(
                Instant::now() < deadline,
                "the table was not whole in 30 min"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        (t0.elapsed(), Some(t))
    }
}

/// Section 3: the first packet of a new (*,G) stream. Returns our upcall-to-entry time.
fn upcall(sb: &Sandbox) -> Duration {
    println!(
        "\n3. first packet of a new (*,G) stream: sent -> delivered through the entry the upcall installed ({UPCALL_SAMPLES} new groups)"
    );
    let tf = sb.write(
        "template.conf",
        "phyint br-a enable\nphyint br-b enable\nmroute from br-a group 239.200.0.0/16 to br-b\n",
    );
    let c = ours(sb, &tf);
    let sock = sb.path("state").join("mroute.sock");
    wait_until("ours ready", Duration::from_secs(10), || {
        request(&sock, &Request::Status).ok()
    });
    let (med, p99, steady, lost) = upcall_latency(sb, 1);
    let ours = med.saturating_sub(steady);
    println!(
        "   appliance: first packet median {}, p99 {}; a packet through an existing entry {}; upcall->entry ~ {}; lost {lost}",
        us(med),
        us(p99),
        us(steady),
        us(med.saturating_sub(steady))
    );
    stop(sb, c);
    let c = smcrouted(sb, &tf);
    wait_until("smcroute ready", Duration::from_secs(10), || {
        Path::new(&format!("/proc/{}/root/run/smcroute-bench.sock", sb.pid))
            .exists()
            .then_some(())
    });
    let (med, p99, steady, lost) = upcall_latency(sb, 2);
    println!(
        "   smcroute:  first packet median {}, p99 {}; a packet through an existing entry {}; upcall->entry ~ {}; lost {lost}",
        us(med),
        us(p99),
        us(steady),
        us(med.saturating_sub(steady))
    );
    stop(sb, c);
    ours
}
