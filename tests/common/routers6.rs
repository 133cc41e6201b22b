//! Routers for tests and benches of several routers: each a network namespace of the
//! sandbox running its own `appliance up`, linked by veths, with receiver hosts on
//! bridges behind them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::*;

const T: Duration = Duration::from_secs(20);

/// `appliance up SITE` inside one router's network namespace; SIGTERM and a wait for
/// its teardown when dropped.
pub struct Router {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub state: PathBuf,
}

impl Router {
    pub fn start(sb: &Sandbox, name: &str, site_body: &str) -> Router {
        let state = sb.path(&format!("{name}-state"));
        let site = sb.write(
            &format!("{name}.toml"),
            &format!(
                "[site]\nname = \"{name}\"\nstate_dir = \"{}\"\n{site_body}",
                state.display()
            ),
        );
        let log = sb.path(&format!("{name}-up.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = sb
            .cmd("ip")
            .args(["netns", "exec", name])
            .arg(appliance_bin())
            .arg("up")
            .arg(&site)
            .env("APPLIANCE_LOG", "info,appliance=debug")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("start appliance up");
        Router {
            name: name.into(),
            child,
            log,
            state,
        }
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    pub fn socket(&self, part: &str) -> PathBuf {
        self.state.join("parts").join(part)
    }

    /// The answer of a part's control socket, None while it does not answer.
    pub fn ask(&self, part: &str) -> Option<Value> {
        ask(&self.socket(part))
    }

    /// Waits until the part answers status.
    pub fn wait_part(&mut self, part: &str) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(&format!("{} on router {}", part, self.name), T, || {
                self.ask(part)
            })
        }));
        if r.is_err() {
            panic!("router {}: no {part}:\n{}", self.name, self.log());
        }
    }

    /// The forwarder's proxy status.
    pub fn proxy(&self) -> Value {
        self.ask("mroute.sock")
            .map(|v| v["proxy"].clone())
            .unwrap_or(Value::Null)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ask(sock: &Path) -> Option<Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

/// Network namespaces named `routers` and veth links `(a, a_if, b, b_if)`, IPv6 up.
pub fn routers(sb: &Sandbox, routers: &[&str], links: &[(&str, &str, &str, &str)]) {
    let mut s = String::new();
    for r in routers {
        s.push_str(&format!(
            "ip netns add {r}\nip -n {r} link set lo up\n\
             ip netns exec {r} sysctl -qw net.ipv6.conf.all.forwarding=1\n"
        ));
    }
    for (a, ai, b, bi) in links {
        s.push_str(&format!(
            "ip link add {ai} netns {a} type veth peer name {bi} netns {b}\n\
             ip -n {a} link set {ai} up\nip -n {b} link set {bi} up\n"
        ));
    }
    sb.sh(&s);
}

/// A bridge `br` in `router` with `addr`, and a receiver host `host` behind it
/// (`host_addr`), which has a multicast route to join with.
pub fn lan(sb: &Sandbox, router: &str, br: &str, addr: &str, host: &str, host_addr: &str) {
    sb.sh(&format!(
        "ip -n {router} link add {br} type bridge mcast_snooping 0\n\
         ip -n {router} link set {br} up\n\
         ip -n {router} addr add {addr} dev {br} nodad\n\
         ip netns add {host}\n\
         ip link add h-{host} netns {router} type veth peer name eth0 netns {host}\n\
         ip -n {router} link set h-{host} master {br} up\n\
         ip -n {host} link set lo up\nip -n {host} link set eth0 up\n\
         ip -n {host} addr add {host_addr} dev eth0 nodad\n\
         ip -n {host} -6 route add ff00::/8 dev eth0 table local metric 1\n"
    ));
}

/// Waits until every named (netns, interface) has a usable link-local address: MLD
/// packets leave from it, and the kernel drops MLD from any other source.
pub fn link_locals(sb: &Sandbox, ifaces: &[(&str, &str)]) {
    for (ns, i) in ifaces {
        wait_until(&format!("{ns}'s link-local address on {i}"), T, || {
            let out = sb.sh(&format!("ip -n {ns} -6 -o addr show dev {i} scope link"));
            (out.contains("inet6") && !out.contains("tentative")).then_some(())
        });
    }
}

pub fn service_state(a: &Router) -> String {
    a.ask("headend.sock")
        .and_then(|v| {
            v["services"]
                .as_array()?
                .iter()
                .find(|s| s["number"] == 1)
                .map(|s| s["state"].as_str().unwrap_or("").to_string())
        })
        .unwrap_or_default()
}

/// The link-local address of `iface` in router `ns`.
pub fn link_local(sb: &Sandbox, ns: &str, iface: &str) -> String {
    let out = sb.sh(&format!(
        "ip -n {ns} -6 -o addr show dev {iface} scope link"
    ));
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no link-local address on {ns}'s {iface}: {out}"))
        .to_string()
}
