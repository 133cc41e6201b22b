//! Headend sources, run for real: ffmpeg command sources, and url sources played from a real
//! icecast2 and from the test's own small HTTP server. Each test runs in a fresh network
//! namespace (a `Sandbox`), its sources forked from a thread inside it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use appliance::headend::source::{Source, SourceConfig, SourceSpec};
use common::*;

/// Runs `f` on a current-thread tokio runtime on a thread inside the sandbox's network
/// namespace (sources forked there live there too).
fn run<T: Send + 'static>(
    sb: &Sandbox,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    sb.in_netns(None, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// A UDP socket on the sandbox's loopback for the source's RTP, with a read timeout.
fn rtp_socket(sb: &Sandbox) -> (UdpSocket, SocketAddr) {
    let s = udp_in(sb, None, "127.0.0.1:0");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Waits for one RTP packet (version 2) and returns its payload type.
fn rtp_payload_type(s: &UdpSocket) -> u8 {
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("an RTP packet within 10 s");
        if n >= 12 && buf[0] >> 6 == 2 {
            return buf[1] & 0x7f;
        }
    }
}

fn tone(rtp_codec: &[&str]) -> SourceSpec {
    let mut argv: Vec<String> = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(rtp_codec.iter().map(|s| s.to_string()));
    argv.extend(["-f", "rtp", "-sdp_file", "{sdp}", "{rtp}"].map(String::from));
    SourceSpec::Command { argv }
}

/// Waits until no live process is left in group `pgid` (a SIGKILLed process takes a
/// moment to die).
fn group_gone(pgid: u32) {
    wait_until(
        &format!("process group {pgid} to be empty"),
        Duration::from_secs(5),
        || group_members(pgid).is_empty().then_some(()),
    );
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Live processes whose process group is `pgid` (zombies, already dead, left out).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
        let after = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && f.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn test_tone_command_runs_unprivileged_and_stop_leaves_nothing() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let (sock, rtp) = rtp_socket(&sb);
    let sdp2 = sb.path("tone.sdp");
    let (pid, uid, gid, capeff, capbnd, nnp, pt, st, sdp_text) = run(&sb, move || {
        Box::pin(async move {
            let spec = tone(&["-c:a", "libopus"]);
            let mut src = Source::start("tone", &spec, rtp, &sdp2, &SourceConfig::default())
                .await
                .expect("start the tone");
            let pid = src.pid();
            let pt = rtp_payload_type(&sock);
            let uid = status_field(pid, "Uid");
            let gid = status_field(pid, "Gid");
            let capeff = status_field(pid, "CapEff");
            let capbnd = status_field(pid, "CapBnd");
            let nnp = status_field(pid, "NoNewPrivs");
            let sdp_text = std::fs::read_to_string(&sdp2).unwrap_or_default();
            let st = src.stop().await;
            (pid, uid, gid, capeff, capbnd, nnp, pt, st, sdp_text)
        })
    });
    assert!(pid > 0);
    assert_eq!(uid, "65534\t65534\t65534\t65534", "runs as nobody");
    assert_eq!(gid, "65534\t65534\t65534\t65534", "runs as nogroup");
    assert_eq!(capeff, "0000000000000000", "no effective capability");
    assert_eq!(capbnd, "0000000000000000", "empty bounding set");
    assert_eq!(nnp, "1", "no_new_privs set");
    assert_eq!(pt, 97, "Opus on a dynamic payload type");
    assert!(sdp_text.contains("opus/48000"), "SDP written: {sdp_text}");
    group_gone(pid);
    // ffmpeg ends on SIGTERM with status 255.
    assert_eq!(st.code(), Some(255), "stopped by SIGTERM: {st}");
}

#[test]
fn stop_kills_the_whole_group_even_when_sigterm_is_ignored() {
    let sb = Sandbox::new();
    let sdp = sb.path("x.sdp");
    let (pid, before, signal) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: [
                    "sh",
                    "-c",
                    "trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait",
                ]
                .map(String::from)
                .to_vec(),
            };
            let cfg = SourceConfig {
                stop_grace: Duration::from_millis(300),
                ..SourceConfig::default()
            };
            let mut src =
                Source::start("ignorer", &spec, "127.0.0.1:9".parse().unwrap(), &sdp, &cfg)
                    .await
                    .expect("start");
            let pid = src.pid();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !src.recent_output().iter().any(|l| l == "ready") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no 'ready' from the shell"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = group_members(pid).len();
            let st = src.stop().await;
            use std::os::unix::process::ExitStatusExt;
            (pid, before, st.signal())
        })
    });
    assert!(
        before >= 3,
        "the shell and its two sleeps ({before}) in group {pid}"
    );
    group_gone(pid);
    assert_eq!(signal, Some(9), "SIGKILL after the grace time");
}

#[test]
fn a_leader_that_exits_takes_its_group_with_it() {
    let sb = Sandbox::new();
    let sdp = sb.path("x.sdp");
    let (pid, code, output) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: ["sh", "-c", "sleep 1000 & echo to stderr >&2; exit 3"]
                    .map(String::from)
                    .to_vec(),
            };
            let mut src = Source::start(
                "quitter",
                &spec,
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .expect("start");
            let pid = src.pid();
            let st = tokio::time::timeout(Duration::from_secs(10), src.exited())
                .await
                .expect("the shell exits");
            // Its output is read on the runtime: give the reader a moment to finish.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while src.recent_output().is_empty() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (pid, st.code(), src.recent_output())
        })
    });
    assert_eq!(code, Some(3));
    group_gone(pid);
    assert_eq!(output, vec!["to stderr".to_string()]);
}

#[test]
fn a_missing_program_or_user_is_a_clear_error() {
    let sb = Sandbox::new();
    let sdp: PathBuf = sb.path("x.sdp");
    let (no_prog, no_user) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: vec!["/nonexistent/ffmpeg".into()],
            };
            let a = Source::start(
                "p",
                &spec,
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .unwrap_err()
            .to_string();
            let cfg = SourceConfig {
                user: "no-such-user".into(),
                ..SourceConfig::default()
            };
            let b = Source::start("u", &spec, "127.0.0.1:9".parse().unwrap(), &sdp, &cfg)
                .await
                .unwrap_err()
                .to_string();
            (a, b)
        })
    });
    assert!(no_prog.contains("/nonexistent/ffmpeg"), "{no_prog}");
    assert!(no_user.contains("no-such-user"), "{no_user}");
}
