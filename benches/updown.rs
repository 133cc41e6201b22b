//! Figures of issue 3: time from `up` to ready (every avahi answering on its bus and every
//! namespace address past duplicate address detection; status exit 0), time from
//! SIGTERM to nothing left, and resident memory of the supervisor and of each VLAN's
//! dbus + avahi, for 1, 8 and 32 untrusted VLANs. Runs as root, in sandboxes of its own.
//!
//! `cargo bench --profile dev --bench updown` (or `-- 1 8` for other sizes).

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
    wait_until(
        "nothing of the site to be left",
        Duration::from_secs(10),
        || {
            let ns = sb.sh("ip netns list");
            let links = sb.sh("ip -o link show | grep -c bench- || true");
            (ns.trim().is_empty() && links.trim() == "0").then_some(())
        },
    );
    let t_down = t1.elapsed();
    assert_eq!(code, Some(0), "up exit code after SIGTERM:\n{}", up.log());
    per_vlan.sort();
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
