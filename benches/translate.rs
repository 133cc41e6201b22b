//! Translator figures, one run: `cargo bench --bench translate` (as root).
//!
//! In a network namespace of its own (lo for the unicast side, a veth whose
//! looped-back multicast the receiver reads), one harness drives three relays: the
//! translator as `up` runs it (the `appliance translate` process with only the
//! capabilities the plan gives it), a model of the original in CPython (its loop: one
//! `recvfrom(1514)`, a dict lookup, one `sendto`; its socket setup: default buffers,
//! TTL 32, no multicast interface), and a plain batched relay with no flow logic at all
//! (the ceiling), equipped like the translator (forced socket buffers, the same scheduler
//! slice). For each: the highest packet rate delivered without loss, found by bisection to
//! within 2% with trials of 2 s (1,316-byte payloads, 1 and 100 sources), and the latency
//! it adds. The receiver's own buffer is forced large, and a direct send at the ceiling's
//! rate checks that the receiver is not what loses packets.
//! Latency runs from the sender's clock just before `sendto` to the kernel's receive
//! timestamp of the multicast copy (SO_TIMESTAMPNS), so the receiving thread's own
//! wakeup is not counted; "added" is that minus the same for a direct send. Then the
//! memory of 100,000 flows (flow table and control thread), by a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use appliance::translate::{self, Config, Event, batch::Batch, control::Control};
use appliance::{signals, sockets as net};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards its arguments unchanged to the system allocator, which keeps GlobalAlloc's contract; the counting is atomics only.
unsafe impl GlobalAlloc for Counting {
    // SAFETY: the caller keeps GlobalAlloc's contract for these arguments; they are passed on as they are.
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the arguments come unchanged from our caller, who keeps GlobalAlloc's contract.
        unsafe { System.alloc(l) }
    }
    // SAFETY: the caller keeps GlobalAlloc's contract for these arguments; they are passed on as they are.
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: the arguments come unchanged from our caller, who keeps GlobalAlloc's contract.
        unsafe { System.dealloc(p, l) }
    }
    // SAFETY: the caller keeps GlobalAlloc's contract for these arguments; they are passed on as they are.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: the arguments come unchanged from our caller, who keeps GlobalAlloc's contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const PAYLOAD: usize = 1316;
const MPORT: u16 = 9002;
const SPACE: &str = "232.1.0.0/25";
const TRIAL: Duration = Duration::from_secs(2);
/// Bisection ends when the passing and the failing rate are this close.
const PRECISION: f64 = 1.02;

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-ec", cmd])
        .status()
        .expect("sh");
    assert!(st.success(), "{cmd} failed");
}

/// CLOCK_REALTIME, the clock of the kernel's receive timestamps.
fn wall_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec into `t`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One datagram without waiting: (the sender's stamp, the kernel's receive time).
fn recv_stamped(fd: i32, buf: &mut [u8]) -> Option<(u64, u64)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: a plain C struct of integers and pointers: all-zero is a valid value.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_iov = &mut iov;
    h.msg_iovlen = 1;
    h.msg_control = cbuf.as_mut_ptr().cast();
    h.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: `h` points to `iov` and `cbuf`, both live and of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut h, libc::MSG_DONTWAIT) };
    if n < 16 {
        return None;
    }
    let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
    // SAFETY: `h` was filled by recvmsg and its control buffer is still live.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&h) };
    while !c.is_null() {
        // SAFETY: c is non-null (checked) and points into the live control buffer.
        let cm = unsafe { &*c };
        if cm.cmsg_level == libc::SOL_SOCKET && cm.cmsg_type == libc::SO_TIMESTAMPNS {
            // SAFETY: an SO_TIMESTAMPNS message carries one timespec; read_unaligned copes with any alignment.
            let ts: libc::timespec = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
            return Some((sent, ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64));
        }
        // SAFETY: `h` was filled by recvmsg and its control buffer is still live.
        c = unsafe { libc::CMSG_NXTHDR(&h, c) };
    }
    None
}

fn groups() -> Vec<Ipv4Addr> {
    (1..127).map(|i| Ipv4Addr::new(232, 1, 0, i)).collect()
}

/// Counts (and optionally times) what arrives on every group of the space.
struct Receiver {
    count: Arc<AtomicU64>,
    timing: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
}

impl Receiver {
    fn start(ifaddr: Ipv4Addr) -> Receiver {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        force_buffers(&s, 64 << 20);
        s.bind(&SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), MPORT).into())
            .unwrap();
        for g in groups() {
            s.join_multicast_v4(&g, &ifaddr).unwrap();
        }
        let s: UdpSocket = s.into();
        let r = Receiver {
            count: Arc::new(AtomicU64::new(0)),
            timing: Arc::new(AtomicBool::new(false)),
            samples: Arc::new(Mutex::new(Vec::with_capacity(100_000))),
        };
        let (count, timing, samples) = (r.count.clone(), r.timing.clone(), r.samples.clone());
        std::thread::spawn(move || {
            let mut b = Batch::new(64);
            let mut one = vec![0u8; 65536];
            let fd = s.as_raw_fd();
            let on: libc::c_int = 1;
            appliance::sockets::setsockopt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &on)
                .expect("SO_TIMESTAMPNS");
            loop {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one live pollfd, count 1.
                unsafe { libc::poll(&mut p, 1, 1000) };
                if timing.load(Ordering::Relaxed) {
                    // One at a time with the kernel's receive timestamp: when the datagram
                    // reached this host's stack, whatever this thread's scheduling.
                    let mut n = 0;
                    let mut v = samples.lock().unwrap();
                    while let Some((ts, at)) = recv_stamped(fd, &mut one) {
                        v.push(at.saturating_sub(ts));
                        n += 1;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                let n = b.recv(fd).unwrap();
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        r
    }
}

/// Sends `n` packets at `rate` per second round-robin from the sources to `to`.
fn send(sources: &[UdpSocket], to: SocketAddr, rate: f64, n: u64) {
    let mut buf = vec![0xabu8; PAYLOAD];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(n);
        if due <= sent {
            let ahead = (sent + 1) as f64 / rate - start.elapsed().as_secs_f64();
            if ahead > 0.000_06 {
                std::thread::sleep(Duration::from_secs_f64(ahead - 0.000_05));
            }
            continue;
        }
        while sent < due {
            buf[..8].copy_from_slice(&sent.to_be_bytes());
            buf[8..16].copy_from_slice(&wall_ns().to_be_bytes());
            let s = &sources[(sent % sources.len() as u64) as usize];
            let _ = s.send_to(&buf, to);
            sent += 1;
        }
    }
}

/// Loss of one trial: sends at `rate` for TRIAL, waits for the stragglers.
fn trial(rx: &Receiver, sources: &[UdpSocket], to: SocketAddr, rate: f64) -> u64 {
    let n = (rate * TRIAL.as_secs_f64()) as u64;
    rx.count.store(0, Ordering::Relaxed);
    send(sources, to, rate, n);
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let c = rx.count.load(Ordering::Relaxed);
        if c >= n || c == last {
            return n.saturating_sub(c);
        }
        last = c;
    }
}

/// The highest rate (packets/s) `to` delivers without loss: up by 4x from 1,000 until a
/// rate fails, then geometric bisection until the passing and failing rates are within
/// [`PRECISION`]. A rate passes when one of two trials of [`TRIAL`] loses nothing.
fn lossless_rate(rx: &Receiver, sources: &[UdpSocket], to: SocketAddr) -> f64 {
    let passes = |rate: f64| trial(rx, sources, to, rate) == 0 || trial(rx, sources, to, rate) == 0;
    let mut lo = 1_000.0;
    if !passes(lo) {
        return 0.0;
    }
    let mut hi = lo * 4.0;
    while passes(hi) {
        lo = hi;
        hi *= 4.0;
        if hi > 4_000_000.0 {
            return lo;
        }
    }
    while hi / lo > PRECISION {
        let mid = (lo * hi).sqrt();
        if passes(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// SO_RCVBUFFORCE and SO_SNDBUFFORCE (past net.core.rmem_max/wmem_max), as the
/// translator sets them.
fn force_buffers(s: &socket2::Socket, size: usize) {
    let size = size as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        net::setsockopt(s, libc::SOL_SOCKET, opt, &size).expect("forcing a socket buffer");
    }
}

const LAT_RATE: f64 = 10_000.0;
/// One latency round: 10,000 datagrams, so that one stall of the VM does not make the p99.
const LAT_ROUND: Duration = Duration::from_secs(1);

/// p50, p90 and p99 one-way latency through `to` at a moderate rate, in µs: the sender's
/// CLOCK_REALTIME stamp in the payload to the kernel's receive timestamp.
fn latency(rx: &Receiver, sources: &[UdpSocket], to: SocketAddr) -> [f64; 3] {
    rx.samples.lock().unwrap().clear();
    rx.timing.store(true, Ordering::Relaxed);
    let n = (LAT_RATE * LAT_ROUND.as_secs_f64()) as u64;
    rx.count.store(0, Ordering::Relaxed);
    send(sources, to, LAT_RATE, n);
    let deadline = Instant::now() + Duration::from_secs(1);
    while rx.count.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    rx.timing.store(false, Ordering::Relaxed);
    let mut v = std::mem::take(&mut *rx.samples.lock().unwrap());
    v.sort_unstable();
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize] as f64 / 1000.0;
    [q(0.5), q(0.9), q(0.99)]
}

/// Latency of the direct path and of each relay: interleaved rounds, the median round of
/// each reported, so one scheduling hiccup of the VM does not decide.
fn latencies(
    rx: &Receiver,
    direct: &[UdpSocket],
    sources: &[UdpSocket],
    relays: &[(&str, SocketAddr)],
    how: &str,
) {
    const ROUNDS: usize = 7;
    let mut rounds: Vec<Vec<[f64; 3]>> = vec![vec![]; relays.len() + 1];
    for _ in 0..ROUNDS {
        rounds[0].push(latency(rx, direct, "232.1.0.1:9002".parse().unwrap()));
        for (k, (_, addr)) in relays.iter().enumerate() {
            rounds[k + 1].push(latency(rx, sources, *addr));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let stat = |k: usize, q: usize| median(rounds[k].iter().map(|r| r[q]).collect());
    let added = |k: usize, q: usize| {
        median(
            rounds[k]
                .iter()
                .zip(&rounds[0])
                .map(|(r, d)| r[q] - d[q])
                .collect(),
        )
    };
    println!(
        "  latency ({how}), one source at {LAT_RATE} packets/s, median of {ROUNDS} rounds (p50 / p90 / p99, µs):"
    );
    println!(
        "    {:<42} {:>7.1} / {:>7.1} / {:>7.1}",
        "direct (no relay)",
        stat(0, 0),
        stat(0, 1),
        stat(0, 2)
    );
    for (k, (name, _)) in relays.iter().enumerate() {
        println!(
            "    {name:<42} {:>7.1} / {:>7.1} / {:>7.1}   added: {:>6.1} / {:>6.1} / {:>6.1}",
            stat(k + 1, 0),
            stat(k + 1, 1),
            stat(k + 1, 2),
            added(k + 1, 0),
            added(k + 1, 1),
            added(k + 1, 2)
        );
    }
}

/// The guest's halt-polling window (cpuidle-haltpoll), when this is a VM that has one.
const HALTPOLL: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// Sets the guest's halt-polling window for as long as it lives, then puts the old value
/// back (also when the benchmark panics).
struct HaltPoll(String);

impl HaltPoll {
    fn set(ns: u64) -> Option<HaltPoll> {
        let old = std::fs::read_to_string(HALTPOLL).ok()?.trim().to_string();
        std::fs::write(HALTPOLL, ns.to_string()).ok()?;
        Some(HaltPoll(old))
    }
}

impl Drop for HaltPoll {
    fn drop(&mut self) {
        let _ = std::fs::write(HALTPOLL, &self.0);
    }
}

fn mcast_socket(ifindex: u32) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    force_buffers(&s, 8 << 20);
    net::set_multicast(&s, false, 32, ifindex).unwrap();
    s.into()
}

/// The original's loop in CPython, with its socket setup (default buffers, TTL 32, no
/// multicast interface: the route 224.0.0.0/4 of this namespace picks bench0). Groups are
/// handed out round-robin from the space instead of `randint` (a new flow is rare here).
const ORIGINAL_PY: &str = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("10.99.0.1", 0))
m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
m.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 32)
groups = ["232.1.0.%d" % i for i in range(1, 127)]
flows = {}
print(u.getsockname()[1], flush=True)
while True:
    data, src = u.recvfrom(1514)
    g = flows.get(src)
    if g is None:
        g = flows[src] = (groups[len(flows) % len(groups)], 9002)
    m.sendto(data, g)
"#;

fn original_python() -> (SocketAddr, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", ORIGINAL_PY])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (the original's model runs in CPython)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the model's port");
    (SocketAddr::from(([10, 99, 0, 1], port)), child)
}

/// The translator as `up` runs it: the release binary, with only the capabilities the
/// plan gives it (CAP_NET_ADMIN, for its forced buffers until it has bound).
fn translator_process() -> (SocketAddr, std::process::Child) {
    let addr: SocketAddr = "10.99.0.1:19003".parse().unwrap();
    let child = std::process::Command::new("setpriv")
        .arg("--bounding-set=-all,+net_admin")
        .arg(env!("CARGO_BIN_EXE_appliance"))
        .args([
            "translate",
            "--unicast-nif-ip",
            "10.99.0.1",
            "--unicast-port",
            "19003",
            "--multicast-interface",
            "bench0",
            "--multicast-addr-space",
            SPACE,
            "--multicast-port",
            "9002",
            "--idle",
            "600s",
            "--max-flows",
            "200000",
            "--new-flows-per-second",
            "1000000",
            "--new-flows-total-per-second",
            "1000000",
            "--no-sap",
        ])
        .env("APPLIANCE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv and the appliance binary");
    // Its first log lines say it is bound and what buffers it got.
    let mut child = child;
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("socket buffers") {
                let _ = tx.send(l.clone());
            }
        }
    });
    let l = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the translator's socket buffer line");
    println!("  translator process: {}", l.trim());
    (addr, child)
}

/// The ceiling: batched receive and send to one group, nothing else; buffers and
/// scheduler slice like the translator's.
fn plain_batched(stop: Arc<AtomicBool>, ifindex: u32) -> SocketAddr {
    let u = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    force_buffers(&u, 8 << 20);
    u.bind(&"10.99.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let u: UdpSocket = u.into();
    let addr = u.local_addr().unwrap();
    let m = mcast_socket(ifindex);
    std::thread::spawn(move || {
        let _ = appliance::sched::short_slice(appliance::sched::SHORTEST_SLICE);
        let mut b = Batch::new(64);
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(232, 1, 0, 1)), MPORT);
        let (ufd, mfd) = (u.as_raw_fd(), m.as_raw_fd());
        while !stop.load(Ordering::Relaxed) {
            let mut p = libc::pollfd {
                fd: ufd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, count 1.
            unsafe { libc::poll(&mut p, 1, 100) };
            loop {
                let n = b.recv(ufd).unwrap();
                for i in 0..n {
                    b.queue(i, &to);
                }
                b.flush(mfd);
                if n < b.slots() {
                    break;
                }
            }
        }
    });
    addr
}

fn config(unicast: SocketAddr) -> Config {
    Config {
        unicast,
        space: SPACE.parse().unwrap(),
        port: MPORT,
        interface: Some("bench0".into()),
        ttl: 32,
        idle: Duration::from_secs(600),
        allow: vec![],
        max_flows: 200_000,
        new_flows_per_sec: u32::MAX,
        new_flows_total_per_sec: u32::MAX,
        announce_after: Duration::ZERO,
        sap: false,
        sap_interval: None,
        menu: None,
        state_file: None,
        control_socket: None,
        batch: 64,
    }
}

/// The translator's own data path (and control thread), in-process.
fn ours(stop: &std::os::fd::OwnedFd) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let cfg = config("10.99.0.1:19001".parse().unwrap());
    let bound = translate::bind(&cfg).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut engine = translate::Engine::new(&cfg, tx).unwrap();
    let ctl = Control::new(&cfg, &bound)
        .unwrap()
        .with_output(Box::new(std::io::sink()));
    std::thread::spawn(move || ctl.run(rx));
    let fd = stop.as_raw_fd();
    let h = std::thread::Builder::new()
        .name("translator".into())
        .spawn(move || {
            engine.run(&bound, fd).unwrap();
        })
        .unwrap();
    (cfg.unicast, h)
}

fn memory_per_flow() -> (f64, f64) {
    const N: u32 = 100_000;
    let cfg = config("10.99.0.1:19002".parse().unwrap());
    let mut space_cfg = cfg.clone();
    space_cfg.space = "232.0.0.0/8".parse().unwrap();
    let space = translate::flows::Space::new(space_cfg.space).unwrap();
    let mut added = Vec::with_capacity(N as usize); // not counted: made before `before`
    let before = LIVE.load(Ordering::Relaxed);
    let mut table = translate::flows::FlowTable::new(
        space,
        translate::flows::Limits {
            allow: vec![],
            max_flows: 200_000,
            new_per_sec: u32::MAX,
            new_total_per_sec: u32::MAX,
        },
    );
    for i in 0..N {
        let src = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i / 100)),
            10_000 + (i % 100) as u16,
        );
        if let translate::flows::Admit::New(g) = table.admit(src, 0) {
            added.push((src, space.addr(g)));
        }
    }
    table.expire(20, 1000, |_, _| {}); // a sweep clears the per-second counters
    let table_bytes = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(table.len(), N as usize);
    let bound = translate::bind(&cfg).unwrap();
    let mut ctl = Control::new(&cfg, &bound)
        .unwrap()
        .with_output(Box::new(std::io::sink()));
    let before = LIVE.load(Ordering::Relaxed);
    for (src, group) in added.drain(..) {
        ctl.handle(Event::Added {
            src,
            group,
            restored: false,
        });
    }
    let ctl_bytes = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(ctl.flows(), N as usize);
    (table_bytes as f64 / N as f64, ctl_bytes as f64 / N as f64)
}

fn main() {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the translator benchmark makes a network namespace and must run as root");
        std::process::exit(1);
    }
    // A network namespace of our own: the machine's network is never touched.
    assert_eq!(
        // SAFETY: unshare(2) with a constant flag; this process is single-threaded here.
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    sh("ip link set lo up\n\
        ip link add bench0 type veth peer name bench1\n\
        ip link set bench1 up\n\
        ip addr add 10.99.0.1/24 dev bench0\n\
        ip link set bench0 up\n\
        ip route add 224.0.0.0/4 dev bench0\n\
        echo 512 > /proc/sys/net/ipv4/igmp_max_memberships");
    let ifindex = net::ifindex("bench0").unwrap();
    // Memory first, while this is the only thread: the counting allocator sees only it.
    let (table, ctl) = memory_per_flow();
    let rx = Receiver::start(Ipv4Addr::new(10, 99, 0, 1));

    println!("translator benchmark (one run)");
    println!(
        "  inputs: {PAYLOAD}-byte payloads over loopback, multicast looped back on a veth; \
         trials of {TRIAL:?}; a rate passes when one of two trials loses nothing; the rate \
         found by bisection to within {:.0}%; space {SPACE}",
        (PRECISION - 1.0) * 100.0
    );
    println!(
        "  cores: {} (sender, relay and receiver share them)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    println!(
        "  memory with 100,000 flows: flow table {table:.0} bytes/flow + control thread {ctl:.0} \
         bytes/flow = {:.0} bytes/flow",
        table + ctl
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stop_fd = signals::eventfd().unwrap();
    // In-process, for counting its allocations.
    let (ours_addr, ours_thread) = ours(&stop_fd);
    let (process_addr, mut process) = translator_process();
    let (python_addr, mut python) = original_python();
    let relays = [
        ("appliance translate (as `up` runs it)", process_addr),
        ("original's loop in CPython", python_addr),
        (
            "plain batched relay (ceiling)",
            plain_batched(stop.clone(), ifindex),
        ),
    ];
    let direct = [mcast_socket(ifindex)];
    let group: SocketAddr = "232.1.0.1:9002".parse().unwrap();
    // `cargo bench --bench translate -- latency` measures only the latency.
    let latency_only = std::env::args().any(|a| a == "latency");
    let mut results: Vec<(String, usize, f64)> = vec![];
    let mut source_sets: Vec<Vec<UdpSocket>> = vec![];
    for nsrc in [1usize, 100] {
        let sources: Vec<UdpSocket> = (0..nsrc)
            .map(|_| {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
                    .unwrap();
                force_buffers(&s, 4 << 20);
                s.bind(&"10.99.0.1:0".parse::<SocketAddr>().unwrap().into())
                    .unwrap();
                s.into()
            })
            .collect();
        if latency_only {
            source_sets.push(sources);
            continue;
        }
        for (name, to) in &relays {
            trial(&rx, &sources, *to, 2_000.0); // warm-up: every flow gets its group
            let r = lossless_rate(&rx, &sources, *to);
            println!("  {nsrc:>3} source(s)  {name:<42} {r:>10.0} packets/s without loss");
            let _ = std::io::stdout().flush();
            results.push((name.to_string(), nsrc, r));
        }
        let ceiling = results.last().map_or(0.0, |r| r.2);
        let lost = trial(&rx, &direct, group, ceiling);
        println!(
            "  {nsrc:>3} source(s)  receiver check: a direct send at the ceiling's {ceiling:.0} \
             packets/s for {TRIAL:?}: {lost} lost{}",
            if lost == 0 {
                ""
            } else {
                " (the receiver limits the figures)"
            }
        );
        source_sets.push(sources);
    }
    // Allocations on the data path in steady state (100 known flows, 50,000 packets/s).
    if !latency_only {
        let sources = &source_sets[1];
        trial(&rx, sources, ours_addr, 2_000.0);
        let before = ALLOCS.load(Ordering::Relaxed);
        let lost = trial(&rx, sources, ours_addr, 50_000.0);
        let n = ALLOCS.load(Ordering::Relaxed) - before;
        println!(
            "  allocations in the whole process while the in-process translator relayed {} packets of 100 flows: {n}",
            (50_000.0 * TRIAL.as_secs_f64()) as u64 - lost
        );
    }
    let get = |name: &str, n: usize| {
        results
            .iter()
            .find(|r| r.0.starts_with(name) && r.1 == n)
            .map_or(0.0, |r| r.2)
    };
    for n in [1, 100].into_iter().filter(|_| !latency_only) {
        let (o, c, p) = (get("appliance", n), get("plain", n), get("original", n));
        println!(
            "  {n:>3} source(s): translator = {:.0}% of the ceiling, {:.1}x the original's loop in CPython",
            100.0 * o / c,
            o / p,
        );
    }

    // Latency twice. A relay's added latency is mostly the wakeup of its thread, and on a
    // VM whose idle vCPUs halt at once (`haltpoll.guest_halt_poll_ns=0`), waking a thread on
    // the other, halted vCPU goes through the hypervisor: tens of µs, now and then
    // milliseconds, for any relay. So the second run lets idle vCPUs poll for 200 µs before
    // halting, as on bare metal or a tuned VM, and puts the machine's value back after.
    let booted = std::fs::read_to_string(HALTPOLL).ok();
    let how = match &booted {
        Some(ns) => format!("guest halt-polling {} ns, as booted", ns.trim()),
        None => "no guest halt-polling driver".to_string(),
    };
    latencies(&rx, &direct, &source_sets[0], &relays, &how);
    if booted.is_some_and(|ns| ns.trim() == "0") {
        match HaltPoll::set(200_000) {
            Some(_restore) => latencies(
                &rx,
                &direct,
                &source_sets[0],
                &relays,
                "guest halt-polling 200 µs for this run",
            ),
            None => println!("  ({HALTPOLL} not writable: no second latency run)"),
        }
    }

    stop.store(true, Ordering::Relaxed);
    signals::signal_eventfd(&stop_fd);
    let _ = ours_thread.join();
    for c in [&mut process, &mut python] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
