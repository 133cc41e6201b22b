//! Figures of issue 3: time from `up` to ready (every avahi answering on its bus and every
//! namespace address past duplicate address detection; status exit 0), time from
//! SIGTERM to nothing left, and resident memory of the supervisor and of each VLAN's
//! dbus + avahi, for 1, 8 and 32 untrusted VLANs. Runs as root, in sandboxes of its own.
//!
//! `cargo bench --bench updown` (a release build; `-- 1 8` for other sizes). After each
//! stop it checks that nothing of the site is left: no process in the sandbox, no mount
//! of its namespaces or state, no nftables table, no sysctl changed from before `up`, no
//! file in the state directory, no namespace or link.
//!
//! The aims it compares with (the README's Benchmarks table): ready within 3 s of `up`,
//! nothing left within 1 s of SIGTERM, 30 MB of resident memory per VLAN (dbus + avahi).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Sandbox, Up, wait_until};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn site(n: usize) -> String {
    let mut s = String::from("[site]\nname = \"bench\"\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[vlan]]\nname = \"v{i}\"\nbridge = \"br-v{i}\"\naddress = \"10.50.{i}.2/24\"\n"
        ));
    }
    s
}

const AIM_UP: Duration = Duration::from_secs(3);
const AIM_DOWN: Duration = Duration::from_secs(1);
const AIM_RSS_KIB: u64 = 30 * 1024;

/// The sysctls `up` may change, with their values in the sandbox: every bridge's
/// route_localnet and multicast snooping, and forwarding.
fn sysctls(sb: &Sandbox) -> String {
    sb.sh(
        "for f in /proc/sys/net/ipv4/conf/*/route_localnet /proc/sys/net/ipv4/conf/*/forwarding \
           /proc/sys/net/ipv6/conf/*/forwarding; do echo \"$f=$(cat $f)\"; done; \
         for b in $(ip -o link show type bridge | awk -F': ' '{print $2}'); do \
           echo \"$b snooping $(ip -d link show $b | grep -o 'mcast_snooping [0-9]')\"; done",
    )
}

/// What of the site is left after it stopped, one line each (empty: nothing).
fn leftovers(sb: &Sandbox, n: usize, sysctls_before: &str) -> Vec<String> {
    let mut left = vec![];
    for pid in sb.processes() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        left.push(format!("process {pid} ({})", comm.trim()));
    }
    let ns = sb.sh("ip netns list");
    if !ns.trim().is_empty() {
        left.push(format!("namespaces: {}", ns.trim()));
    }
    let links = sb.sh("ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1");
    for l in links.lines() {
        let ours = (0..n).any(|i| l == format!("br-v{i}"));
        if l != "lo" && !ours {
            left.push(format!("link {l}"));
        }
    }
    for m in sb.sh("cat /proc/mounts").lines() {
        if m.contains("/run/netns/") || m.contains("/run/appliance") {
            left.push(format!("mount {m}"));
        }
    }
    let tables = sb.sh("nft list tables 2>/dev/null || true");
    if !tables.trim().is_empty() {
        left.push(format!("nftables: {}", tables.trim()));
    }
    let state = sb.sh("find /run/appliance -mindepth 1 2>/dev/null || true");
    if !state.trim().is_empty() {
        left.push(format!("state files: {}", state.trim()));
    }
    let now = sysctls(sb);
    if now != sysctls_before {
        for (a, b) in sysctls_before.lines().zip(now.lines()) {
            if a != b {
                left.push(format!("sysctl {a} is now {b}"));
            }
        }
    }
    left
}

fn one(n: usize) {
    let sb = Sandbox::new();
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "ip link add br-v{i} type bridge && ip link set br-v{i} up\n"
        ));
    }
    sb.sh(&script);
    let path = sb.write("site.toml", &site(n));
    let sysctls_before = sysctls(&sb);
    let t0 = Instant::now();
    let mut up = Up::start(&sb, &path);
    let status = wait_until("the site to be ready", Duration::from_secs(60), || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!("up exited ({st}):\n{}", up.log());
        }
        let out = sb.appliance().args(["status", "--json"]).output().ok()?;
        (out.status.code() == Some(0))
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    });
    let t_up = t0.elapsed();
    let sup_rss = rss_kib(up.pid);
    let mut per_vlan = vec![];
    for i in 0..n {
        let mut sum = 0;
        for c in status["children"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("");
            if name == format!("dbus@v{i}") || name == format!("avahi@v{i}") {
                sum += rss_kib(c["pid"].as_u64().unwrap_or(0) as u32);
            }
        }
        per_vlan.push(sum);
    }
    let internal = up
        .log()
        .lines()
        .find_map(|l| {
            l.split("ready in ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let t1 = Instant::now();
    let code = up.stop();
    let t_exit = t1.elapsed();
    let mut last = vec![];
    let gone = wait_until_or(Duration::from_secs(10), || {
        last = leftovers(&sb, n, &sysctls_before);
        last.is_empty()
    });
    let t_down = t1.elapsed();
    if !gone {
        println!("{n:>3} VLANs: LEFT after 10 s: {}", last.join(" | "));
    }
    assert_eq!(code, Some(0), "up exit code after SIGTERM:\n{}", up.log());
    per_vlan.sort();
    let worst = *per_vlan.last().unwrap_or(&0);
    let verdict = |ok: bool| if ok { "within" } else { "OVER" };
    println!(
        "{n:>3} VLANs: aims: up->ready {} the {AIM_UP:?} aim, ->nothing left {} the {AIM_DOWN:?} aim, \
         dbus+avahi per VLAN {} the {} MiB aim",
        verdict(t_up <= AIM_UP),
        verdict(gone && t_down <= AIM_DOWN),
        verdict(worst <= AIM_RSS_KIB),
        AIM_RSS_KIB / 1024
    );
    println!(
        "{n:>3} VLANs: up->ready {:>6} ms (supervisor's own count {internal} ms) | \
         SIGTERM->exit {:>5} ms, ->nothing left {:>5} ms | RSS supervisor {:>6} KiB | \
         RSS dbus+avahi per VLAN min {} / median {} / max {} KiB",
        t_up.as_millis(),
        t_exit.as_millis(),
        t_down.as_millis(),
        sup_rss,
        per_vlan.first().unwrap_or(&0),
        per_vlan.get(per_vlan.len() / 2).unwrap_or(&0),
        per_vlan.last().unwrap_or(&0),
    );
}

/// Polls `done` every 10 ms until it holds (true) or `within` passed (false).
fn wait_until_or(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 8, 32]
    } else {
        sizes
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    if cfg!(debug_assertions) {
        println!("note: a debug build; the figures are for `cargo bench --bench updown` (release)");
    }
    println!(
        "aims: up->ready within {AIM_UP:?}, SIGTERM->nothing left within {AIM_DOWN:?}, \
         dbus+avahi within {} MiB per VLAN",
        AIM_RSS_KIB / 1024
    );
    println!(
        "inputs: untrusted VLANs {sizes:?}, one bridge each (made beforehand), static IPv4, \
         no reflector; kernel {}, {cpus} CPUs, build profile {}; each size in a fresh sandbox",
        kernel.trim(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for n in sizes {
        one(n);
    }
}
