//! A headend source: the process that makes one service's RTP.
//!
//! API (what the headend's service machine calls; restart, backoff and stall policy are
//! its own):
//! - [`SourceSpec`]: `Command { argv }` (placeholders `{rtp}` → [`rtp_url`] of the local
//!   port the relay listens on, `{sdp}` → a file the source may write its SDP to) or
//!   `Url { url }` (a station: see [`super::http`]; its media bytes are piped into an
//!   ffmpeg that sends RTP to the same local port and writes the SDP).
//! - [`Source::start`]`(name, &spec, rtp, sdp_path, &SourceConfig)` (async: a `Url` first
//!   resolves the station, following redirects and playlists, and fails with what came
//!   back when it is not media). Call it from a thread that lives as long as the source
//!   (the runtime's thread): PR_SET_PDEATHSIG fires when the forking *thread* ends.
//! - [`Source::pid`], [`Source::exited`] (cancel-safe; the process's exit status),
//!   [`Source::stop`] (SIGTERM to the group, SIGKILL after [`SourceConfig::stop_grace`]),
//!   [`Source::metadata`] (a watch of [`StreamMeta`]: ICY values for a `Url`, empty for a
//!   command), [`Source::recent_output`] (last lines of its stderr/stdout) and
//!   [`Source::feed_error`] (why a `Url`'s stream ended).
//! - Beside it: [`super::http::HttpConfig`] (every HTTP size and timeout, inside
//!   [`SourceConfig::http`]), [`super::directory::load`]`(&DirectoryConfig)` →
//!   `Vec<DirectoryEntry { number, name, spec }>` (blocking: file or HTTP), and the pure
//!   parsers [`super::icy`] and [`super::playlist`].
//!
//! Every source runs as [`SourceConfig::user`] (default `nobody`) with no capabilities
//! (bounding set dropped when we hold CAP_SETPCAP, PR_SET_NO_NEW_PRIVS, non-root uid so
//! the kernel clears the rest, inheritable cleared), in a process group of its own that is
//! killed whole when its leader exits or is stopped, with PR_SET_PDEATHSIG=SIGKILL, its
//! environment reduced to PATH, its working directory `/`. Its stdout and stderr are logged
//! line by line under the service's name, lines cut at [`MAX_LINE`] bytes and at most
//! [`LOG_BURST`] lines per [`LOG_WINDOW`]. The caller needs CAP_SETUID, CAP_SETGID,
//! CAP_KILL (to signal another uid's processes) and CAP_CHOWN (to hand the SDP file over).
//! An ffmpeg sending to [`rtp_url`]`(port)` also sends RTCP sender reports to `port + 1`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// Longest line of a source's output that is logged (the rest is cut).
pub const MAX_LINE: usize = 512;
/// Lines of a source's output logged per [`LOG_WINDOW`]; the rest are counted.
pub const LOG_BURST: u32 = 40;
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Lines kept for [`Source::recent_output`].
pub const RECENT_LINES: usize = 20;

/// What a service plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A program and its arguments, with `{rtp}` and `{sdp}` replaced.
    Command { argv: Vec<String> },
    /// An internet radio station (or a playlist of them), over http or https.
    Url { url: String },
}

/// How sources are run.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The user sources run as (its primary group too); default `nobody`.
    pub user: String,
    /// Time between SIGTERM and SIGKILL on [`Source::stop`]; default 2 s.
    pub stop_grace: Duration,
    /// The ffmpeg that `Url` sources pipe into; default `ffmpeg` (found on PATH).
    pub ffmpeg: PathBuf,
    /// HTTP limits for `Url` sources.
    pub http: super::http::HttpConfig,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            user: "nobody".into(),
            stop_grace: Duration::from_secs(2),
            ffmpeg: PathBuf::from("ffmpeg"),
            http: super::http::HttpConfig::default(),
        }
    }
}

/// What a station says about itself and what it plays now (all empty for commands).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// `icy-name`.
    pub name: Option<String>,
    /// The current `StreamTitle`.
    pub title: Option<String>,
    /// The current `StreamUrl`, or else the station's `icy-url`.
    pub url: Option<String>,
    /// `icy-description`.
    pub description: Option<String>,
    /// The media type of the stream (`audio/mpeg`, …).
    pub content_type: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {name}: the command is empty")]
    EmptyCommand { name: String },
    #[error("source {name}: user {user:?} {why}")]
    User {
        name: String,
        user: String,
        why: String,
    },
    #[error("source {name}: preparing the SDP file {path}: {source}")]
    SdpFile {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("source {name}: starting {program}: {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("source {name}: {source}")]
    Http {
        name: String,
        source: super::http::HttpError,
    },
}

/// The URL ffmpeg's RTP muxer sends to: `pkt_size=1316` keeps every packet (RTP header
/// included) small enough to be relayed over IPv6 within a 1500-byte MTU (1316 + 48 bytes
/// of IPv6 and UDP headers), and is 7 MPEG-TS packets for sources that send TS.
pub fn rtp_url(addr: SocketAddr) -> String {
    format!("rtp://{addr}?pkt_size=1316")
}

/// `argv` with `{rtp}` and `{sdp}` replaced (inside any argument).
pub fn expand(argv: &[String], rtp: SocketAddr, sdp: &Path) -> Vec<String> {
    let rtp = rtp_url(rtp);
    let sdp = sdp.to_string_lossy();
    argv.iter()
        .map(|a| a.replace("{rtp}", &rtp).replace("{sdp}", &sdp))
        .collect()
}

/// The user a source runs as, looked up before forking.
#[derive(Debug, Clone, Copy)]
struct Creds {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(name: &str, user: &str) -> Result<Creds, SourceError> {
    let err = |why: String| SourceError::User {
        name: name.to_string(),
        user: user.to_string(),
        why,
    };
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Creds {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        }),
        Ok(None) => Err(err("does not exist".into())),
        Err(e) => Err(err(format!("cannot be looked up: {e}"))),
    }
}

/// Makes sure the SDP file exists and belongs to the source's user (it may rewrite it);
/// what is in it already is kept.
fn prepare_sdp(name: &str, path: &Path, c: Creds) -> Result<(), SourceError> {
    let err = |source| SourceError::SdpFile {
        name: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    std::os::unix::fs::chown(path, Some(c.uid), Some(c.gid)).map_err(err)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_VERSION_3: u32 = 0x2008_0522;

fn last_cap() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// A command that runs unprivileged, in its own process group, dying with this thread.
fn unprivileged(program: &str, args: &[String], c: Creds) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/")
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let last = last_cap();
    // SAFETY: only raw system calls (prctl, setgroups, setresgid, setresuid, capset,
    // getppid, _exit) between fork and exec: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            // Needs CAP_SETPCAP; without it the uid change below still leaves no
            // capability, and NO_NEW_PRIVS forbids gaining one through exec.
            for cap in 0..=last {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(c.gid, c.gid, c.gid) != 0
                || libc::setresuid(c.uid, c.uid, c.uid) != 0
            {
                return fail();
            }
            let mut hdr = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let data = [CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            if libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) != 0 {
                return fail();
            }
            // After the uid change: changing credentials clears the death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return fail();
            }
            // The headend died between fork and prctl: nothing would kill us later.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd
}

/// Output lines of a source: logged (bounded) and the last few kept.
#[derive(Debug, Default)]
struct OutputLog {
    recent: VecDeque<String>,
    window_start: Option<Instant>,
    in_window: u32,
    dropped: u64,
}

impl OutputLog {
    fn line(&mut self, name: &str, line: &str) {
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_string());
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= LOG_WINDOW)
        {
            if self.dropped > 0 {
                warn!(target: "appliance::source", "{name}: {} lines not logged", self.dropped);
                self.dropped = 0;
            }
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < LOG_BURST {
            self.in_window += 1;
            info!(target: "appliance::source", "{name}: {line}");
        } else {
            self.dropped += 1;
        }
    }
}

/// Reads a child's output and logs it line by line (`\n` or `\r` ends a line: ffmpeg
/// rewrites its progress line with `\r`).
async fn forward(name: String, mut r: impl AsyncRead + Unpin, log: Arc<Mutex<OutputLog>>) {
    let mut buf = vec![0u8; 4096];
    let mut line: Vec<u8> = Vec::with_capacity(MAX_LINE);
    let mut overlong = false;
    let emit = |line: &mut Vec<u8>, overlong: &mut bool| {
        if !line.is_empty() {
            let mut text = String::from_utf8_lossy(line).into_owned();
            if *overlong {
                text.push('…');
            }
            if let Ok(mut l) = log.lock() {
                l.line(&name, &text);
            }
        }
        line.clear();
        *overlong = false;
    };
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                emit(&mut line, &mut overlong);
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                overlong = true;
            }
        }
    }
    emit(&mut line, &mut overlong);
}

/// A running source.
pub struct Source {
    name: String,
    /// Taken only by `Drop`, which hands it to a reaper thread.
    child: Option<std::process::Child>,
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
    grace: Duration,
    output: Arc<Mutex<OutputLog>>,
    meta: watch::Receiver<StreamMeta>,
    feed: Option<super::http::Feed>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish()
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

impl Source {
    /// Starts `spec` for service `name`, sending RTP to `rtp` (a local port) and writing its
    /// SDP to `sdp_path` (created if missing and given to the source's user). Must run
    /// inside a tokio runtime.
    pub async fn start(
        name: &str,
        spec: &SourceSpec,
        rtp: SocketAddr,
        sdp_path: &Path,
        cfg: &SourceConfig,
    ) -> Result<Source, SourceError> {
        let creds = lookup_user(name, &cfg.user)?;
        match spec {
            SourceSpec::Command { argv } => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(SourceError::EmptyCommand { name: name.into() });
                }
                prepare_sdp(name, sdp_path, creds)?;
                let argv = expand(argv, rtp, sdp_path);
                let mut cmd = unprivileged(&argv[0], &argv[1..], creds);
                cmd.stdin(Stdio::null());
                let (_tx, meta) = watch::channel(StreamMeta::default());
                Source::spawn(name, cmd, &argv[0], meta, cfg, |_| {})
            }
            SourceSpec::Url { url } => {
                let (u, http) = (url.clone(), cfg.http.clone());
                let station =
                    tokio::task::spawn_blocking(move || super::http::open_station(&u, &http))
                        .await
                        .map_err(|e| SourceError::Spawn {
                            name: name.into(),
                            program: "the HTTP side".into(),
                            source: std::io::Error::other(e.to_string()),
                        })?
                        .map_err(|source| SourceError::Http {
                            name: name.into(),
                            source,
                        })?;
                info!(target: "appliance::source", "{name}: {url} plays from {} ({})", station.url,
                      station.content_type.as_deref().unwrap_or("no content type"));
                prepare_sdp(name, sdp_path, creds)?;
                let argv = super::http::ffmpeg_argv(
                    &cfg.ffmpeg.to_string_lossy(),
                    station.input_format(),
                    rtp,
                    sdp_path,
                );
                let mut cmd = unprivileged(&argv[0], &argv[1..], creds);
                cmd.stdin(Stdio::piped());
                let (tx, meta) = watch::channel(station.meta());
                let mut child_stdin = None;
                let mut source = Source::spawn(name, cmd, &argv[0], meta, cfg, |c| {
                    child_stdin = c.stdin.take();
                })?;
                if let Some(stdin) = child_stdin {
                    source.feed = Some(station.feed(name, stdin, tx));
                }
                Ok(source)
            }
        }
    }

    fn spawn(
        name: &str,
        mut cmd: std::process::Command,
        program: &str,
        meta: watch::Receiver<StreamMeta>,
        cfg: &SourceConfig,
        take: impl FnOnce(&mut std::process::Child),
    ) -> Result<Source, SourceError> {
        let err = |source| SourceError::Spawn {
            name: name.into(),
            program: program.into(),
            source,
        };
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(err)?;
        let pid = child.id();
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open until it is dropped.
        let registered = pidfd_open(pid)
            .and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from));
        let pidfd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait();
                return Err(err(e));
            }
        };
        take(&mut child);
        let output = Arc::new(Mutex::new(OutputLog::default()));
        if let Some(out) = child.stdout.take()
            && let Ok(out) = tokio::process::ChildStdout::from_std(out)
        {
            tokio::spawn(forward(name.into(), out, output.clone()));
        }
        if let Some(e) = child.stderr.take()
            && let Ok(e) = tokio::process::ChildStderr::from_std(e)
        {
            tokio::spawn(forward(name.into(), e, output.clone()));
        }
        info!(target: "appliance::source", "{name}: started {program} as pid {pid}");
        Ok(Source {
            name: name.into(),
            child: Some(child),
            pid,
            pidfd,
            status: None,
            grace: cfg.stop_grace,
            output,
            meta,
            feed: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the source's leader (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the station says (a watch: `changed().await` for titles as they come).
    pub fn metadata(&self) -> watch::Receiver<StreamMeta> {
        self.meta.clone()
    }

    /// The last lines the source printed.
    pub fn recent_output(&self) -> Vec<String> {
        self.output
            .lock()
            .map(|l| l.recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Why a `Url` source's stream ended (connection closed, stall, …), once it has.
    pub fn feed_error(&self) -> Option<String> {
        self.feed.as_ref().and_then(|f| f.error())
    }

    /// Its exit status, if it has exited (and been reaped by [`Source::exited`]).
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Waits until the source's leader exits; then kills what is left of its process group
    /// and returns the exit status. Cancel-safe; returns at once once known.
    pub async fn exited(&mut self) -> ExitStatus {
        loop {
            if let Some(st) = self.status {
                return st;
            }
            match self.pidfd.readable().await {
                Ok(mut guard) => {
                    // The leader has exited but is not reaped: its pid (the group id)
                    // cannot be reused yet, so signalling the group is safe.
                    kill_group(self.pid, libc::SIGKILL);
                    match self.child.as_mut().map(|c| c.try_wait()) {
                        Some(Ok(Some(st))) => self.finish(st),
                        Some(Ok(None)) => guard.clear_ready(),
                        Some(Err(e)) => {
                            warn!(target: "appliance::source", "{}: waiting for pid {}: {e}", self.name, self.pid);
                            self.finish(ExitStatus::from_raw(libc::SIGKILL));
                        }
                        None => self.finish(ExitStatus::from_raw(libc::SIGKILL)),
                    }
                }
                Err(e) => {
                    warn!(target: "appliance::source", "{}: polling pid {}: {e}", self.name, self.pid);
                    kill_group(self.pid, libc::SIGKILL);
                    let st = self
                        .child
                        .as_mut()
                        .and_then(|c| c.wait().ok())
                        .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
                    self.finish(st);
                }
            }
        }
    }

    fn finish(&mut self, st: ExitStatus) {
        if let Some(f) = &self.feed {
            f.shutdown();
        }
        info!(target: "appliance::source", "{}: pid {} exited ({st})", self.name, self.pid);
        self.status = Some(st);
    }

    /// Stops the source: SIGTERM to its process group, SIGKILL after the grace time; waits
    /// for the leader and kills the rest of the group. Returns the exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        if let Some(f) = &self.feed {
            f.shutdown();
        }
        kill_group(self.pid, libc::SIGTERM);
        if let Ok(st) = tokio::time::timeout(self.grace, self.exited()).await {
            return st;
        }
        warn!(target: "appliance::source", "{}: pid {} still running {:?} after SIGTERM: SIGKILL", self.name, self.pid, self.grace);
        kill_group(self.pid, libc::SIGKILL);
        self.exited().await
    }
}

impl Drop for Source {
    /// A source dropped while running is killed (the whole group) and reaped on a thread.
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Some(f) = &self.feed {
                f.shutdown();
            }
            kill_group(self.pid, libc::SIGKILL);
            if let Some(mut child) = self.child.take() {
                let _ = std::thread::Builder::new()
                    .name("source-reap".into())
                    .spawn(move || child.wait());
            }
        }
    }
}

fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        let argv: Vec<String> = [
            "ffmpeg",
            "-sdp_file",
            "{sdp}",
            "-f",
            "rtp",
            "{rtp}",
            "x{rtp}y",
        ]
        .map(String::from)
        .to_vec();
        let out = expand(
            &argv,
            "127.0.0.1:40000".parse().unwrap(),
            Path::new("/s/a.sdp"),
        );
        assert_eq!(out[2], "/s/a.sdp");
        assert_eq!(out[5], "rtp://127.0.0.1:40000?pkt_size=1316");
        assert_eq!(out[6], "xrtp://127.0.0.1:40000?pkt_size=1316y");
        assert_eq!(
            rtp_url("[::1]:5000".parse().unwrap()),
            "rtp://[::1]:5000?pkt_size=1316"
        );
    }

    #[test]
    fn output_log_is_bounded() {
        let mut l = OutputLog::default();
        for i in 0..1000 {
            l.line("t", &format!("line {i}"));
        }
        assert_eq!(l.recent.len(), RECENT_LINES);
        assert_eq!(l.recent.back().map(String::as_str), Some("line 999"));
        assert_eq!(l.in_window, LOG_BURST);
        assert_eq!(l.dropped, 1000 - u64::from(LOG_BURST));
    }

    #[test]
    fn unknown_user_is_named() {
        let e = lookup_user("svc", "no-such-user-here").unwrap_err();
        assert!(e.to_string().contains("no-such-user-here"), "{e}");
    }
}
