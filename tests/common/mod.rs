//! Test harness shared by the integration tests.
//!
//! Each [`Sandbox`] is a fresh network, mount and UTS namespace (made by `unshare`) with a
//! private tmpfs over `/run`, so tests run in parallel and never touch the machine's own
//! network. Commands run inside it through `nsenter`. Waiting is always on a condition with
//! a deadline ([`wait_until`]), never a bare sleep.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `appliance` binary under test.
pub fn appliance_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_appliance"))
}

/// Root of the repository (for `site.toml` and test data).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Integration tests that build namespaces need root. Without it they fail, saying why:
/// a skipped test must never look like a passed one.
pub fn require_root() {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let uid = unsafe { libc_geteuid() };
    assert_eq!(
        uid, 0,
        "this test builds network namespaces and must run as root (euid is {uid}); \
         run the suite as in the README: sudo scripts/test-all"
    );
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Fails the test, naming the program, when a tool the test drives is missing.
pub fn require_program(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; scripts/test-all installs every tool the tests use"
    );
}

/// Polls `cond` until it is true or `within` has passed; panics naming `what` on timeout.
pub fn wait_until<T>(what: &str, within: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A fresh network + mount + UTS namespace, alive while this value is.
pub struct Sandbox {
    holder: Child,
    pub pid: u32,
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        require_root();
        require_program("unshare");
        require_program("nsenter");
        let dir = std::env::temp_dir().join(format!(
            "appliance-test-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).expect("test dir");
        // Private tmpfs over /run: the sandbox's /run/netns, /run/appliance and any
        // daemon sockets never reach the host's.
        let script = "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/netns \
                      && ip link set lo up && echo ready && exec sleep infinity";
        let mut holder = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
            ])
            .args(["sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read from sandbox");
        assert_eq!(line.trim(), "ready", "sandbox did not start");
        let pid = holder.id();
        Sandbox { holder, pid, dir }
    }

    /// A command that runs inside the sandbox.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid.to_string())
            .args(["-n", "-m", "-u", "--"])
            .arg(program);
        c
    }

    /// The appliance binary, inside the sandbox.
    pub fn appliance(&self) -> Command {
        self.cmd(appliance_bin())
    }

    /// `appliance status --json` of the site running in the sandbox: its exit code and
    /// answer; None while it cannot answer.
    pub fn status_json(&self) -> Option<(i32, serde_json::Value)> {
        let out = self.appliance().args(["status", "--json"]).output().ok()?;
        let v = serde_json::from_slice(&out.stdout).ok()?;
        Some((out.status.code()?, v))
    }

    /// Runs a shell script inside the sandbox; panics with its output if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self
            .cmd("sh")
            .args(["-ec", script])
            .output()
            .expect("run sh");
        check(&out, script);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script inside the sandbox and returns its output, whatever its status.
    pub fn try_sh(&self, script: &str) -> Output {
        self.cmd("sh")
            .args(["-c", script])
            .output()
            .expect("run sh")
    }

    /// A bridge, up, inside the sandbox.
    pub fn bridge(&self, name: &str) {
        self.sh(&format!(
            "ip link add {name} type bridge && ip link set {name} up"
        ));
    }

    /// A client "host": a network namespace of the sandbox's own (pinned at
    /// /run/netns/NAME inside the sandbox) joined to `bridge` by a veth, with `addrs`.
    pub fn host(&self, name: &str, bridge: &str, addrs: &[&str]) {
        let mut s = format!(
            "ip netns add {name}\n\
             ip link add h-{name} type veth peer name eth0 netns {name}\n\
             ip link set h-{name} master {bridge} up\n\
             ip -n {name} link set lo up\n\
             ip -n {name} link set eth0 up\n"
        );
        for a in addrs {
            s.push_str(&format!("ip -n {name} addr add {a} dev eth0 nodad\n"));
        }
        self.sh(&s);
    }

    /// A command run inside one of the sandbox's hosts.
    pub fn in_host(&self, host: &str, program: &str) -> Command {
        let mut c = self.cmd("ip");
        c.args(["netns", "exec", host, program]);
        c
    }

    /// A file path in this test's own directory (on the host filesystem).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file in the test's directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }

    /// Network namespace inode of the sandbox (to find processes still inside it).
    fn netns_inode(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid))
            .ok()
            .map(|m| m.ino())
    }

    /// Every process whose network namespace is the sandbox's (the holder aside).
    pub fn processes(&self) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let Some(ino) = self.netns_inode() else {
            return vec![];
        };
        let mut pids = vec![];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == self.pid {
                continue;
            }
            if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Processes left in the sandbox's namespace (a failed test's daemons) die with it.
        for pid in self.processes() {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours.
            unsafe { kill(pid as i32, 9) };
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Panics with the command's output if it failed.
pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a file, or an empty string when it is not there yet.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Sandbox {
    /// Runs `f` on a fresh thread inside the network namespace of one of the sandbox's
    /// hosts (`Some(name)`) or of the sandbox itself (`None`). Sockets made there stay in
    /// that namespace, so a test can send and receive from its hosts without helpers.
    pub fn in_netns<T: Send + 'static>(
        &self,
        host: Option<&str>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        use std::os::fd::AsRawFd;
        let path = match host {
            Some(h) => format!("/proc/{}/root/run/netns/{h}", self.pid),
            None => format!("/proc/{}/ns/net", self.pid),
        };
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        std::thread::spawn(move || {
            const CLONE_NEWNET: i32 = 0x4000_0000;
            // SAFETY: setns(2) on an fd we own; it moves only the calling thread.
            let r = unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "setns into {path}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("thread in namespace")
    }
}

/// The same as [`Sandbox::in_netns`], as a function.
pub fn in_netns<T: Send + 'static>(
    sb: &Sandbox,
    host: Option<&str>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    sb.in_netns(host, f)
}

// SAFETY: these declarations match the C prototypes of their man pages (integers in, an integer out).
unsafe extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// A UDP socket bound to `addr` inside the sandbox (`host: None`) or one of its hosts.
pub fn udp_in(sb: &Sandbox, host: Option<&str>, addr: &str) -> std::net::UdpSocket {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    in_netns(sb, host, move || {
        std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"))
    })
}

/// A background process of the sandbox whose stdout and stderr go to files of the test.
pub struct Background {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Background {
    pub fn spawn(sb: &Sandbox, name: &str, mut cmd: Command) -> Background {
        let stdout = sb.path(&format!("{name}.out"));
        let stderr = sb.path(&format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Background {
            child,
            stdout,
            stderr,
        }
    }

    pub fn out(&self) -> String {
        read(&self.stdout)
    }

    pub fn err(&self) -> String {
        read(&self.stderr)
    }

    /// Both outputs, for failure messages.
    pub fn logs(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.out(), self.err())
    }

    /// Waits until stdout or stderr contains `text`; panics with the logs on timeout or exit.
    pub fn wait_for(&mut self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.out().contains(text) || self.err().contains(text) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("exited ({st}) before printing {text:?}\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {text:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (by pid) and waits for the exit status.
    pub fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // nsenter passes signals on to the program it runs.
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { kill(self.child.id() as i32, sig) };
        self.child.wait().expect("wait")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process group started by a test, killed (the whole group) when dropped.
pub struct Group {
    pub child: Child,
    pub pid: u32,
}

impl Group {
    /// Starts `cmd` in a process group of its own.
    pub fn spawn(mut cmd: Command, what: &str) -> Group {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let pid = child.id();
        Group { child, pid }
    }

    /// True while the group's leader has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { kill(-(self.pid as i32), 9) };
        let _ = self.child.wait();
    }
}

/// `appliance up SITE` running in the sandbox, its log in the test directory. Dropping it
/// sends SIGTERM and waits for the teardown (then SIGKILL as a last resort).
pub struct Up {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Up {
    pub fn start(sb: &Sandbox, site: &Path) -> Up {
        let log = sb.path(&format!("up-{}.log", unique()));
        let f = std::fs::File::create(&log).expect("log file");
        let child = sb
            .appliance()
            .arg("up")
            .arg(site)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("start appliance up");
        let pid = child.id();
        Up { child, pid, log }
    }

    pub fn log(&self) -> String {
        read(&self.log)
    }

    /// SIGTERM and wait for it to exit; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { kill(self.pid as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours.
                unsafe { kill(self.pid as i32, 9) };
                let _ = self.child.wait();
                panic!(
                    "appliance up did not exit within 20 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
    }
}

/// A client "host"'s own dbus and avahi (a private /run, docs/architecture.md), for
/// publishing and browsing from a namespace made with [`Sandbox::host`].
pub struct ClientAvahi {
    pub group: Group,
    pub host: String,
}

impl ClientAvahi {
    pub fn start(sb: &Sandbox, host: &str) -> ClientAvahi {
        require_program("avahi-daemon");
        require_program("dbus-daemon");
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/dbus /run/avahi-daemon\n\
             printf '[server]\\nhost-name=client-{host}\\nuse-ipv6=no\\nallow-interfaces=eth0\\n\
             [wide-area]\\nenable-wide-area=no\\n[publish]\\npublish-workstation=no\\n' \
             > /run/avahi-daemon/client.conf\n\
             dbus-daemon --system --address=unix:path=/run/dbus/system_bus_socket --nofork --nopidfile &\n\
             while [ ! -S /run/dbus/system_bus_socket ]; do sleep 0.01; done\n\
             exec avahi-daemon --no-chroot -f /run/avahi-daemon/client.conf 2>/dev/null"
        );
        let mut cmd = sb.in_host(host, "unshare");
        cmd.args(["-m", "--propagation", "slave", "sh", "-c", &script]);
        let c = ClientAvahi {
            group: Group::spawn(cmd, &format!("avahi of client {host}")),
            host: host.to_string(),
        };
        let me = &c;
        wait_until(
            &format!("avahi of client {host} on its bus"),
            Duration::from_secs(10),
            || {
                let out = me
                    .tool("avahi-browse")
                    .args(["-t", "-p", "_x._tcp"])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            },
        );
        c
    }

    /// The avahi's pid: the nsenter/ip/unshare chain execs down to it.
    fn avahi_pid(&self) -> u32 {
        self.group.pid
    }

    /// An avahi tool (avahi-browse, avahi-publish) talking to this client's bus.
    pub fn tool(&self, program: &str) -> Command {
        let mut c = Command::new("env");
        c.arg(format!(
            "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            self.avahi_pid()
        ))
        .arg(program);
        c
    }

    /// Publishes a service until the returned group is dropped.
    pub fn publish(&self, name: &str, kind: &str, port: u16) -> Group {
        let mut c = self.tool("avahi-publish");
        c.args(["-s", name, kind, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Group::spawn(c, &format!("avahi-publish {name} {kind}"))
    }

    /// `avahi-browse -a -t -p`: every (type, name) the client sees now.
    pub fn browse(&self) -> Vec<(String, String)> {
        let out = self
            .tool("avahi-browse")
            .args(["-a", "-t", "-p", "-k"])
            .output()
            .expect("avahi-browse");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(';').collect();
                (f.len() >= 5 && f[0] == "+").then(|| (f[4].to_string(), f[3].to_string()))
            })
            .collect()
    }

    pub fn sees(&self, kind: &str, name: &str) -> bool {
        self.browse().iter().any(|(k, n)| k == kind && n == name)
    }
}

/// One HTTP/1.0 GET from inside the sandbox (`host: None`) or one of its hosts: the raw
/// response (status line, headers and body), read until the server closes or `limit`
/// bytes have come.
pub fn http_get_raw(
    sb: &Sandbox,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    in_netns(sb, None, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut out = vec![];
        let mut buf = [0u8; 8192];
        while out.len() < limit {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    })
}

/// A real icecast2 on the sandbox's 127.0.0.1:`port`, run as its own user with a config
/// of the test's own (source and admin password `hackme`, admin user `admin`).
pub struct Icecast {
    pub group: Group,
    pub addr: std::net::SocketAddr,
}

impl Icecast {
    pub fn start(sb: &Sandbox, port: u16, mounts: &[&str]) -> Icecast {
        require_program("icecast2");
        require_program("setpriv");
        let logdir = sb.path("icecast-log");
        std::fs::create_dir_all(&logdir).expect("icecast log dir");
        Command::new("chmod")
            .arg("0777")
            .arg(&logdir)
            .status()
            .expect("chmod");
        let mounts: String = mounts
            .iter()
            .map(|m| format!("<mount type=\"normal\"><mount-name>{m}</mount-name><charset>UTF-8</charset></mount>"))
            .collect();
        let conf = format!(
            "<icecast><location>test</location><admin>test@localhost</admin>\
             <limits><clients>20</clients><sources>4</sources><queue-size>524288</queue-size>\
             <client-timeout>30</client-timeout><header-timeout>15</header-timeout>\
             <source-timeout>10</source-timeout><burst-on-connect>1</burst-on-connect>\
             <burst-size>65535</burst-size></limits>\
             <authentication><source-password>hackme</source-password>\
             <relay-password>hackme</relay-password><admin-user>admin</admin-user>\
             <admin-password>hackme</admin-password></authentication>\
             <hostname>127.0.0.1</hostname>\
             <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>\
             {mounts}<fileserve>1</fileserve>\
             <paths><basedir>/usr/share/icecast2</basedir><logdir>{log}</logdir>\
             <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot></paths>\
             <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>3</loglevel></logging>\
             <security><chroot>0</chroot></security></icecast>\n",
            log = logdir.display()
        );
        let conf_path = sb.write("icecast.xml", &conf);
        let mut cmd = sb.cmd("setpriv");
        cmd.args([
            "--reuid=icecast2",
            "--regid=icecast",
            "--clear-groups",
            "icecast2",
            "-c",
        ])
        .arg(&conf_path)
        .stdout(Stdio::null());
        let group = Group::spawn(cmd, "icecast2");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("icecast2 to answer", Duration::from_secs(10), || {
            let r = http_get_raw(sb, addr, "/status-json.xsl", &[], 65536).ok()?;
            r.starts_with(b"HTTP/1.0 200").then_some(())
        });
        Icecast { group, addr }
    }

    /// ffmpeg feeding `mount` a 440 Hz tone as MP3, named `name`; waits until the mount is
    /// listed.
    pub fn feed(&self, sb: &Sandbox, mount: &str, name: &str) -> Group {
        require_program("ffmpeg");
        let mut cmd = sb.cmd("ffmpeg");
        cmd.args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
            "-content_type",
            "audio/mpeg",
            "-ice_name",
            name,
            "-f",
            "mp3",
        ])
        .arg(format!("icecast://source:hackme@{}{mount}", self.addr))
        .stdout(Stdio::null());
        let g = Group::spawn(cmd, "ffmpeg feeding icecast2");
        wait_until(
            &format!("icecast2 to list {mount}"),
            Duration::from_secs(10),
            || {
                let r = http_get_raw(sb, self.addr, "/status-json.xsl", &[], 1 << 20).ok()?;
                String::from_utf8_lossy(&r)
                    .contains(&format!("{mount}\""))
                    .then_some(())
            },
        );
        g
    }

    /// Sets the title of `mount` through the admin interface, as a station's playout does.
    pub fn set_title(&self, sb: &Sandbox, mount: &str, title: &str) {
        let enc: String = title
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let path = format!("/admin/metadata?mount={mount}&mode=updinfo&song={enc}");
        // admin:hackme
        let r = http_get_raw(
            sb,
            self.addr,
            &path,
            &[("Authorization", "Basic YWRtaW46aGFja21l")],
            65536,
        )
        .expect("admin request");
        assert!(
            r.starts_with(b"HTTP/1.0 200") || r.starts_with(b"HTTP/1.1 200"),
            "icecast2 refused the title: {}",
            String::from_utf8_lossy(&r)
        );
    }
}

/// The test's own small HTTP server on the sandbox's 127.0.0.1 (a std listener on a
/// thread): each path answers with the raw bytes its route gives (status line included),
/// then closes the connection; paths that start with `/hold/` keep it open, silent, until
/// the client goes (a stalled station). Unknown paths get 404.
pub struct HttpServer {
    pub addr: std::net::SocketAddr,
}

impl HttpServer {
    pub fn start(
        sb: &Sandbox,
        routes: impl FnOnce(std::net::SocketAddr) -> Vec<(String, Vec<u8>)>,
    ) -> HttpServer {
        use std::io::{Read, Write};
        let listener = in_netns(sb, None, || {
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test HTTP server")
        });
        let addr = listener.local_addr().unwrap();
        let routes = std::sync::Arc::new(routes(addr));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let routes = routes.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = vec![];
                    let mut b = [0u8; 1];
                    while head.len() < 16384 && !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let answer = routes
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, a)| a.clone())
                        .unwrap_or_else(|| {
                            b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such path\n"
                                .to_vec()
                        });
                    let _ = conn.write_all(&answer);
                    if path.starts_with("/hold/") {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                        let _ = conn.read(&mut b);
                    }
                });
            }
        });
        HttpServer { addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A full HTTP/1.0 response with `status` ("200 OK"), a content type and a body.
pub fn http_response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A redirect to `location`.
pub fn http_redirect(location: &str) -> Vec<u8> {
    format!("HTTP/1.0 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}
