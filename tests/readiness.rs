//! Readiness fails closed, for real, as root, each test in a sandbox of its own: an IPv6
//! address of a VLAN namespace that is not usable (another host has it, it is still
//! tentative when the wait ends, or it is gone) keeps `status` unhealthy, naming it, and
//! `READY=1` is never sent to the `NOTIFY_SOCKET` (a socket the test binds, as systemd
//! would).

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Sandbox, Up};

/// Site with one VLAN, an IPv4 and an IPv6 address, on a bridge the test makes.
const V6_VLAN: &str = r#"
[site]
name = "lab"
[[vlan]]
name = "iot"
bridge = "br-iot"
address = "10.20.2.2/24"
address6 = "fd20:2::2/64"
"#;

/// `appliance up SITE ARGS…` with `NOTIFY_SOCKET` on a datagram socket of the test's.
fn up_notified(sb: &Sandbox, args: &[&str]) -> (Up, UnixDatagram) {
    let site = sb.write("site.toml", V6_VLAN);
    let notify_path = sb.path("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let log = sb.path("up.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = sb
        .appliance()
        .arg("up")
        .arg(&site)
        .args(args)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    (
        Up {
            pid: child.id(),
            child,
            log,
        },
        notify,
    )
}

/// Waits until `status` reports the addresses in `state`, every child running and healthy
/// (so a `READY=1` that does not wait for the addresses would have been sent by now: the
/// supervisor notifies before it answers the next status request).
fn wait_unhealthy_with(sb: &Sandbox, up: &mut Up, state: &str) -> serde_json::Value {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = up.child.try_wait() {
            panic!("appliance up exited ({st}):\n{}", up.log());
        }
        if let Some((code, v)) = sb.status_json() {
            let all_healthy = v["children"].as_array().is_some_and(|c| {
                // "running": a child with no health check of its own (dbus).
                !c.is_empty()
                    && c.iter()
                        .all(|c| c["health"] == "healthy" || c["health"] == "running")
            });
            if v["addresses"]["state"] == state && all_healthy {
                assert_eq!(
                    code, 1,
                    "status must exit 1 while an address is {state}: {v}"
                );
                assert_eq!(v["healthy"], false, "{v}");
                return v;
            }
            last = Some(v);
        }
        assert!(
            Instant::now() < deadline,
            "status did not say addresses {state} with every child healthy within 30 s; \
             last status: {last:?}\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every message the supervisor has sent to the notify socket so far.
fn notified(notify: &UnixDatagram) -> Vec<String> {
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    std::iter::from_fn(|| {
        let n = notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .collect()
}

/// READY=1 never came, and the last status line systemd got says unhealthy.
fn assert_ready_held_back(notify: &UnixDatagram, up: &Up) {
    let msgs = notified(notify);
    assert!(
        !msgs.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "READY=1 was sent while an address is not usable: {msgs:?}\n{}",
        up.log()
    );
    let last = msgs
        .iter()
        .rev()
        .find(|m| m.starts_with("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= line: {msgs:?}"));
    assert!(last.contains("unhealthy"), "{msgs:?}");
}

fn status_text(sb: &Sandbox) -> (Option<i32>, String) {
    let out = sb.appliance().arg("status").output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn an_ipv6_address_another_host_has_holds_ready_back() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    // The host on the bridge had the address first: the namespace's DAD fails.
    sb.host("c1", "br-iot", &["fd20:2::2/64"]);
    let (mut up, notify) = up_notified(&sb, &[]);
    let v = wait_unhealthy_with(&sb, &mut up, "conflict");
    let conflict = v["addresses"]["conflicts"][0].as_str().unwrap_or_default();
    assert!(
        conflict.starts_with("fd20:2::2/64 on ") && conflict.contains("bridge br-iot"),
        "{v}"
    );
    assert_ready_held_back(&notify, &up);
    let (code, text) = status_text(&sb);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("UNHEALTHY") && text.contains("conflict: fd20:2::2/64"),
        "{text}"
    );
    assert!(
        up.log().contains("READY=1 is held back"),
        "the log must say why READY=1 is not sent:\n{}",
        up.log()
    );
    assert_eq!(up.stop(), Some(0));
}

#[test]
fn an_ipv6_address_still_tentative_when_the_wait_ends_holds_ready_back() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    // No wait at all: the kernel's duplicate address detection takes at least one
    // retransmission time (1 s here: net.ipv6.neigh.default.retrans_time_ms), so the
    // address is still tentative when the supervisor first reads it.
    let (mut up, notify) = up_notified(&sb, &["--dad-wait", "0s"]);
    let v = wait_unhealthy_with(&sb, &mut up, "tentative");
    let pending: Vec<&str> = v["addresses"]["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        pending.iter().any(|p| p.starts_with("fd20:2::2/64 on ")),
        "the tentative address must be named: {v}"
    );
    assert_ready_held_back(&notify, &up);
    let (code, text) = status_text(&sb);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("UNHEALTHY")
            && text.contains("addresses: tentative")
            && text.contains("still tentative: fd20:2::2/64 on "),
        "{text}"
    );
    let log = up.log();
    assert!(
        log.lines().any(|l| l.contains("fd20:2::2/64 on ")
            && l.contains("still tentative after 0.0 s")
            && l.contains("READY=1 is held back")),
        "{log}"
    );
    assert_eq!(up.stop(), Some(0));
}

#[test]
fn an_ipv6_address_removed_before_it_was_usable_holds_ready_back() {
    let sb = Sandbox::new();
    sb.bridge("br-iot");
    // Started before up: as soon as the namespace's address appears (tentative), it is
    // removed, long before duplicate address detection could end (at least 1 s).
    let remover = sb
        .cmd("timeout")
        .args([
            "30",
            "sh",
            "-c",
            "until line=$(ip -n lab-iot -o -6 addr show 2>/dev/null | grep 'fd20:2::2/64'); \
             do :; done; \
             echo \"$line\"; \
             ip -n lab-iot addr del fd20:2::2/64 dev $(echo \"$line\" | awk '{print $2}')",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut up, notify) = up_notified(&sb, &["--dad-wait", "3s"]);
    let out = remover.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "removing the address: {seen}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen.contains("tentative"),
        "the test could not remove the address before duplicate address detection ended \
         (the machine too slow to run this test?): {seen}"
    );
    let v = wait_unhealthy_with(&sb, &mut up, "missing");
    let missing = v["addresses"]["missing"][0].as_str().unwrap_or_default();
    assert!(
        missing.starts_with("fd20:2::2/64 on ") && missing.contains("in lab-iot"),
        "{v}"
    );
    assert_ready_held_back(&notify, &up);
    let (code, text) = status_text(&sb);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("UNHEALTHY") && text.contains("missing: fd20:2::2/64 on "),
        "{text}"
    );
    assert_eq!(up.stop(), Some(0));
}
