//! Starts one child of the plan: in its network and mount namespaces, in a process group of
//! its own, dying with the supervisor, keeping only the plan's capabilities.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;

use caps::Capability;

use crate::apply::Space;
use crate::plan::{Child, Health, Program};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("starting {name} ({program}): {source}")]
    Exec {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("starting {name}: unknown capability {cap}")]
    Cap { name: String, cap: String },
    #[error("starting {name}: namespace {netns} is not there")]
    NoNamespace { name: String, netns: String },
    #[error("starting {name}: user {user} does not exist (scripts/install-deps creates it)")]
    NoUser { name: String, user: String },
    #[error("starting {name}: group {group} does not exist (scripts/install-deps creates it)")]
    NoGroup { name: String, group: String },
    #[error("starting {name}: more than {MAX_GROUPS} supplementary groups")]
    TooManyGroups { name: String },
}

/// The most supplementary groups a child keeps (a fixed array: nothing is allocated
/// between fork and exec).
const MAX_GROUPS: usize = 8;

/// Who a child becomes before exec: uid, gid, its supplementary groups (the first
/// `ngroups`), and the capabilities it keeps (a bit mask of indexes) as ambient ones.
#[derive(Debug, Clone, Copy)]
struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: [libc::gid_t; MAX_GROUPS],
    ngroups: usize,
    keep: u64,
}

/// The user `c` runs as, looked up before the fork (getpwnam may allocate).
fn become_of(c: &Child) -> Result<Option<Identity>, SpawnError> {
    let Some(user) = &c.user else {
        return Ok(None);
    };
    let u = match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => u,
        _ => {
            return Err(SpawnError::NoUser {
                name: c.name.clone(),
                user: user.clone(),
            });
        }
    };
    let mut keep = 0u64;
    for name in &c.caps {
        let cap = Capability::from_str(name).map_err(|_| SpawnError::Cap {
            name: c.name.clone(),
            cap: name.clone(),
        })?;
        keep |= 1 << cap.index();
    }
    if c.groups.len() > MAX_GROUPS {
        return Err(SpawnError::TooManyGroups {
            name: c.name.clone(),
        });
    }
    let mut groups = [0; MAX_GROUPS];
    for (i, g) in c.groups.iter().enumerate() {
        groups[i] = match nix::unistd::Group::from_name(g) {
            Ok(Some(g)) => g.gid.as_raw(),
            _ => {
                return Err(SpawnError::NoGroup {
                    name: c.name.clone(),
                    group: g.clone(),
                });
            }
        };
    }
    Ok(Some(Identity {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
        ngroups: c.groups.len(),
        keep,
    }))
}

/// The capabilities a child loses from its bounding set (what is not in its plan).
fn dropped(c: &Child) -> Result<Vec<Capability>, SpawnError> {
    let mut keep = vec![];
    for name in &c.caps {
        keep.push(Capability::from_str(name).map_err(|_| SpawnError::Cap {
            name: c.name.clone(),
            cap: name.clone(),
        })?);
    }
    let mut all: Vec<Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    Ok(all.into_iter().filter(|c| !keep.contains(c)).collect())
}

/// capget(2)/capset(2)'s header and data (linux/capability.h, version 3: two data words).
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

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective, permitted and inheritable sets to `keep` (a mask of
/// capability indexes) with raw capset: no allocation, so it may run between fork and exec.
fn set_caps(keep: u64) -> bool {
    let mut head = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |i: u32| CapData {
        effective: (keep >> (32 * i)) as u32,
        permitted: (keep >> (32 * i)) as u32,
        inheritable: (keep >> (32 * i)) as u32,
    };
    let data = [word(0), word(1)];
    // SAFETY: capset reads exactly a version-3 header and two data words, live locals of
    // the kernel's layout.
    unsafe { libc::syscall(libc::SYS_capset, &mut head, data.as_ptr()) == 0 }
}

/// Becomes `b` (between fork and exec, async-signal-safe): supplementary groups set to
/// `b.groups` (none for most),
/// gid and uid switched (real, effective, saved) while the permitted set is kept, then
/// `b.keep` raised as ambient capabilities (they survive exec into a non-root program),
/// `NoNewPrivs` set, and the parent-death signal set again (a credential change clears it).
fn become_user(b: Identity) -> std::io::Result<()> {
    let fail = || Err(std::io::Error::last_os_error());
    // SAFETY: prctl and the set*id calls take plain integers; setgroups reads `ngroups`
    // (at most MAX_GROUPS) gids from the array `b` holds; all are async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(b.ngroups, b.groups.as_ptr()) != 0
            || libc::setresgid(b.gid, b.gid, b.gid) != 0
            || libc::setresuid(b.uid, b.uid, b.uid) != 0
        {
            return fail();
        }
    }
    if !set_caps(b.keep) {
        return fail();
    }
    for cap in 0..64u64 {
        if b.keep & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with plain integers.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        if r != 0 {
            return fail();
        }
    }
    // SAFETY: prctl with plain integers.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
        {
            return fail();
        }
    }
    Ok(())
}

/// Empties this thread's inheritable set with raw capget/capset: no allocation, so it may
/// run between fork and exec (the `caps` crate allocates on its error paths). Best effort.
fn clear_inheritable() {
    let mut head = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset read and write exactly a version-3 header and two data words,
    // all live locals of the kernel's layout.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut head, data.as_mut_ptr()) != 0 {
            return;
        }
        for d in &mut data {
            d.inheritable = 0;
        }
        libc::syscall(libc::SYS_capset, &mut head, data.as_ptr());
    }
}

/// The command that starts `c`: run it with [`super::spawner::Spawner::spawn`].
/// `in_pid_ns`: the supervisor runs its children in a PID namespace (their getppid() is 0
/// while it lives).
pub fn command(
    c: &Child,
    space: Option<&Space>,
    self_exe: &Path,
    in_pid_ns: bool,
) -> Result<std::process::Command, SpawnError> {
    if let (Some(n), None) = (&c.netns, space) {
        return Err(SpawnError::NoNamespace {
            name: c.name.clone(),
            netns: n.clone(),
        });
    }
    let drop = dropped(c)?;
    let identity = become_of(c)?;
    let program = match c.program {
        Program::SelfExe => self_exe.to_path_buf(),
        Program::External => PathBuf::from(&c.argv[0]),
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&c.argv[1..])
        .stdin(Stdio::null())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .process_group(0);
    if c.program == Program::External {
        // Their output is logged line by line under the child's name (see
        // `forward_output`); the appliance's own roles log with tracing themselves.
        cmd.arg0(&c.argv[0])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let fds: Option<(RawFd, RawFd, RawFd)> =
        space.map(|s| (s.net.as_raw_fd(), s.mnt.as_raw_fd(), s.uts.as_raw_fd()));
    let parent = if in_pid_ns {
        0
    } else {
        std::process::id() as libc::pid_t
    };
    // Files a killed instance leaves in the private /run: avahi's pid file (it cannot
    // remove it itself once it dropped root) and a listening socket (whose presence is
    // how readiness is seen).
    let stale: Vec<std::ffi::CString> = (c.argv[0] == "avahi-daemon")
        .then(|| crate::plan::avahi::PID_FILE.to_string())
        .into_iter()
        .chain(ready_socket(c).map(|p| p.display().to_string()))
        .filter_map(|p| std::ffi::CString::new(p).ok())
        .collect();
    let drop: Vec<libc::c_ulong> = drop
        .iter()
        .map(|c| libc::c_ulong::from(c.index()))
        .collect();
    // A machine gets cgroups of its own (see `render::machine::cgroup_dirs`); the child
    // moves itself into them before exec.
    let cgroups: Vec<std::ffi::CString> = match &c.netns {
        Some(m) if crate::render::machine::is_machine(c) => {
            crate::render::machine::prepare_cgroups(m)
                .into_iter()
                .filter_map(|p| {
                    std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok()
                })
                .collect()
        }
        _ => vec![],
    };
    in_child_before_exec(&mut cmd, fds, stale, drop, parent, cgroups, identity);
    Ok(cmd)
}

/// What the forked child does before exec: enter the namespaces (`fds`: net, mnt, uts),
/// remove `stale` files (in its own mounts), die with the supervisor (`parent`: its pid
/// as the child sees it), drop the capabilities `drop` (indexes) from its bounding set,
/// move into the cgroups whose `cgroup.procs` files are `cgroups`, and become the user of
/// `identity`, if any.
fn in_child_before_exec(
    cmd: &mut std::process::Command,
    fds: Option<(RawFd, RawFd, RawFd)>,
    stale: Vec<std::ffi::CString>,
    drop: Vec<libc::c_ulong>,
    parent: libc::pid_t,
    cgroups: Vec<std::ffi::CString>,
    identity: Option<Identity>,
) {
    // SAFETY: between fork and exec the closure only reads values computed before the fork
    // (fds, `stale`, `drop`, `parent`, `cgroups`, `identity`) and makes async-signal-safe
    // system calls (setns, chdir, unlink, open, write, close, prctl, getppid,
    // capget/capset, setgroups, setres[ug]id, _exit); it allocates nothing (an io::Error
    // from errno does not allocate).
    unsafe {
        cmd.pre_exec(move || {
            if let Some((net, mnt, uts)) = fds {
                if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(uts, libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(mnt, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for p in &stale {
                libc::unlink(p.as_ptr());
            }
            for p in &cgroups {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor died between fork and prctl: nothing would kill us later.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // Ambient and inheritable capabilities are cleared best effort; the bounding
            // set must shrink, or the child does not start.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            clear_inheritable();
            for cap in &drop {
                if libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Last: dropping the bounding set needs CAP_SETPCAP, which it then loses.
            if let Some(b) = identity {
                become_user(b)?;
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
}

/// The unix socket a child listens on: its control socket (`Health::Control`) or what its
/// argv says (`--address=unix:path=P`; an FRR daemon's `--vty_socket DIR`: `DIR/NAME.vty`).
/// It is ready once that socket exists, and not ready (stopped, restarted with backoff) if
/// it never does.
pub fn ready_socket(c: &Child) -> Option<PathBuf> {
    if let Health::Control { socket } = &c.health {
        return Some(socket.clone());
    }
    if let Some(i) = c.argv.iter().position(|a| a == "--vty_socket")
        && let Some(dir) = c.argv.get(i + 1)
        && let Some(daemon) = Path::new(&c.argv[0]).file_name()
    {
        return Some(Path::new(dir).join(format!("{}.vty", daemon.to_string_lossy())));
    }
    c.argv
        .iter()
        .find_map(|a| a.strip_prefix("--address=unix:path="))
        .map(PathBuf::from)
}

/// The roles of this binary that the supervisor may start (`appliance ROLE …`).
pub const ROLES: &[&str] = &["mroute", "translate", "monitor", "headend", "frr"];

/// Why a child cannot be started by this build, if it cannot: one of the binary's own
/// roles that it does not have. Such a child is never started and keeps the site
/// unhealthy, naming the part.
pub fn missing_part(c: &Child) -> Option<String> {
    if c.program != Program::SelfExe {
        return None;
    }
    let role = c.argv.get(1).map(String::as_str).unwrap_or("");
    (!ROLES.contains(&role)).then(|| {
        format!(
            "this build of appliance has no part {role:?} (it has {})",
            ROLES.join(", ")
        )
    })
}

/// Logs what an external child prints, one line at a time, under its name, so that the
/// output of thirty avahis can be told apart.
pub fn forward_output(name: &str, child: &mut std::process::Child) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    fn forward<R: tokio::io::AsyncRead + Unpin + Send + 'static>(name: String, r: R) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "appliance::child", "{name}: {line}");
            }
        });
    }
    if let Some(out) = child.stdout.take()
        && let Ok(out) = tokio::process::ChildStdout::from_std(out)
    {
        forward(name.to_string(), out);
    }
    if let Some(err) = child.stderr.take()
        && let Ok(err) = tokio::process::ChildStderr::from_std(err)
    {
        forward(name.to_string(), err);
    }
}
