//! IPv4 routers for tests and benches of several routers through FRR: each a network
//! namespace of the sandbox running its own `appliance up` with `engine = "frr"` (zebra,
//! staticd, pimd and the `frr` part as its children).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// One router: its netns in the sandbox, its site file and state dir, `appliance up`
/// running inside it.
pub struct Router {
    pub name: &'static str,
    pub state: PathBuf,
    pub up: Background,
}

impl Router {
    /// `appliance up` inside the sandbox's netns `name`: FRR with PIM on `interfaces`,
    /// IGMP on `igmp`, `rp` the rendezvous point.
    pub fn start(
        sb: &Sandbox,
        name: &'static str,
        interfaces: &[&str],
        igmp: &[&str],
        rp: &str,
    ) -> Router {
        let state = sb.path(&format!("state-{name}"));
        let list = |l: &[&str]| {
            l.iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let site = sb.write(
            &format!("{name}.toml"),
            &format!(
                "[site]\nname = \"{name}\"\nstate_dir = \"{}\"\n\n\
                 [routing]\nengine = \"frr\"\ninterfaces = [{}]\nigmp = [{}]\nrp = \"{rp}\"\n",
                state.display(),
                list(interfaces),
                list(igmp)
            ),
        );
        let mut cmd = sb.cmd("ip");
        cmd.args(["netns", "exec", name])
            .arg(appliance_bin())
            .arg("up")
            .arg(&site);
        let up = Background::spawn(sb, &format!("up-{name}"), cmd);
        Router { name, state, up }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        status_at(&self.state)
    }

    pub fn healthy(&self) -> bool {
        self.status().is_some_and(|v| v["healthy"] == true)
    }

    pub fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy() {
            if let Ok(Some(st)) = self.up.child.try_wait() {
                panic!("{}: up exited ({st})\n{}", self.name, self.up.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{}: not healthy within {within:?}: {}\n{}",
                self.name,
                self.status().unwrap_or_default(),
                self.up.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn child_pid(&self, name: &str) -> u32 {
        let v = self.status().expect("status");
        v["children"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .and_then(|c| c["pid"].as_u64())
            .unwrap_or_else(|| panic!("{}: no pid of {name} in {v}", self.name)) as u32
    }

    /// `appliance status` (text) of this router, as an operator reads it.
    pub fn status_text(&self, json: bool) -> String {
        let mut c = Command::new(appliance_bin());
        c.arg("status").arg("--state-dir").arg(&self.state);
        if json {
            c.arg("--json");
        }
        let out = c.stdin(Stdio::null()).output().expect("appliance status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM to `up` and its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.up.signal(15).code()
    }
}

/// The supervisor's status (with the `frr` part's under "routing"), straight from its
/// control socket in `state` (the socket file is on the test's filesystem).
pub fn status_at(state: &Path) -> Option<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(state.join("control.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}
