//! Figures of issue 11:
//! - render time (plan + render, pure) for the example site and a 32-VLAN site;
//! - a VLAN's avahi started as a systemd-nspawn machine (`avahi = "machines"`) against the
//!   same VLAN's avahi as a direct child: from "started" to "healthy" (GetState = 2 over its
//!   bus) in the supervisor's log, one-VLAN site, in sandboxes of its own (root);
//! - with `BENCH_IMAGE=1`: scripts/build-image of the example site, time and size.
//!
//! `cargo bench --profile dev --bench render` (`-- render` for the render times only).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use appliance::{plan, render, site};
use common::{Sandbox, Up, repo, wait_until};

fn big_site(n: usize) -> String {
    let mut s = String::from("[site]\nname = \"bench\"\ncreate_bridges = true\n");
    s.push_str("[[vlan]]\nname = \"lan\"\nbridge = \"br-lan\"\ntrust = \"trusted\"\n");
    for i in 0..n {
        s.push_str(&format!(
            "[[vlan]]\nname = \"v{i}\"\nbridge = \"br-v{i}\"\naddress = \"10.50.{i}.2/24\"\n"
        ));
    }
    for r in 0..n / 8 {
        let legs: Vec<String> = (r * 8..r * 8 + 8).map(|i| format!("\"v{i}\"")).collect();
        s.push_str(&format!(
            "[[reflector]]\nname = \"r{r}\"\nvlans = [\"lan\", {}]\nservices = [\"_ipp._tcp\"]\n",
            legs.join(", ")
        ));
    }
    s
}

fn time_render(label: &str, text: &str) {
    let s = site::parse(label, text).expect("bench site is valid");
    let runs = 200;
    let mut plan_render = vec![];
    let mut render_only = vec![];
    let mut files = 0;
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let p = plan::plan(&s, Path::new(label));
        let t_plan = t.elapsed();
        let tree = render::render(&p, text);
        let total = t.elapsed();
        plan_render.push(total);
        render_only.push(total - t_plan);
        files = tree.len();
        bytes = tree.values().map(|f| f.bytes.len()).sum();
    }
    plan_render.sort();
    render_only.sort();
    println!(
        "render {label}: {files} files, {bytes} bytes; plan+render median {:?} (p90 {:?}), render alone median {:?}",
        plan_render[runs / 2],
        plan_render[runs * 9 / 10],
        render_only[runs / 2]
    );
}

const ONE_VLAN: &str = "[site]\nname = \"mb\"\ncreate_bridges = true\n@MODE@\n\
[[vlan]]\nname = \"iot\"\nbridge = \"br-iot\"\naddress = \"10.20.2.2/24\"\n";

/// Seconds between two `2026-…Z` timestamps of the supervisor's log lines.
fn stamp(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let hms = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = hms.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn start_to_healthy(mode: &str) -> Duration {
    let sb = Sandbox::new();
    let text = ONE_VLAN.replace("@MODE@", &format!("avahi = \"{mode}\""));
    let path = sb.write("site.toml", &text);
    let mut up = Up::start(&sb, &path);
    let log = wait_until("avahi@iot to be healthy", Duration::from_secs(60), || {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!("up exited ({st}):\n{}", up.log());
        }
        let l = up.log();
        l.contains("avahi@iot: healthy").then_some(l)
    });
    let started = log
        .lines()
        .find(|l| l.contains("avahi@iot: started"))
        .and_then(stamp)
        .expect("start line");
    let healthy = log
        .lines()
        .find(|l| l.contains("avahi@iot: healthy"))
        .and_then(stamp)
        .expect("healthy line");
    assert_eq!(up.stop(), Some(0), "{}", up.log());
    Duration::from_secs_f64(healthy - started)
}

fn machine_vs_child() {
    for mode in ["children", "machines"] {
        let mut v: Vec<Duration> = (0..5).map(|_| start_to_healthy(mode)).collect();
        v.sort();
        println!(
            "avahi = {mode:9}: started -> healthy median {:?} (min {:?}, max {:?}, 5 runs)",
            v[2], v[0], v[4]
        );
    }
}

fn image() {
    let out = std::env::temp_dir().join(format!("appliance-bench-image-{}", std::process::id()));
    let t = Instant::now();
    let st = std::process::Command::new(repo().join("scripts/build-image"))
        .arg(repo().join("site.toml"))
        .arg(&out)
        .status()
        .expect("scripts/build-image");
    let took = t.elapsed();
    assert!(st.success(), "build-image failed");
    let du = std::process::Command::new("du")
        .args(["-sx", "--block-size=1M"])
        .arg(&out)
        .output()
        .expect("du");
    println!(
        "image of site.toml: built in {:.0} s, {} MiB",
        took.as_secs_f64(),
        String::from_utf8_lossy(&du.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn main() {
    let only_render = std::env::args().any(|a| a == "render");
    let example = std::fs::read_to_string(repo().join("site.toml")).expect("site.toml");
    time_render("site.toml", &example);
    time_render("32 VLANs", &big_site(32));
    if only_render {
        return;
    }
    machine_vs_child();
    if std::env::var_os("BENCH_IMAGE").is_some() {
        image();
    }
}
