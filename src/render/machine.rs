//! `[site] avahi = "machines"`: each VLAN's and reflector's avahi runs as a systemd-nspawn
//! machine that boots dbus and avahi, from the same templates `render` writes for an image.
//! `up` starts systemd-nspawn inside the namespace's network and private mounts, where the
//! plan has put the machine's settings file (trusted: /run/systemd/nspawn), its /etc, and
//! the host's root bound for it. Everything of a machine lives in those private mounts and
//! goes with them.

use std::path::{Path, PathBuf};

use super::{FileKind, RenderedFile};
use crate::plan::{DBUS_SOCKET, FileSpec, Health, Mount, Namespace, NamespaceKind, Plan};

/// Where the host's root is bound for the machine, inside the namespace's private /run.
pub const ROOT: &str = "/run/machine/root";
/// The machine's /etc, inside the namespace's private /run.
pub const ETC: &str = "/run/machine/etc";
/// A trusted place for settings files (systemd-nspawn(1), --settings=).
pub const SETTINGS_DIR: &str = "/run/systemd/nspawn";
/// `st_mode` type bits of a symbolic link: a [`FileSpec`] with them is a link to its
/// `contents`.
pub const S_IFLNK: u32 = 0o120000;

/// What systemd-nspawn keeps for a booted machine by default (systemd-nspawn(1),
/// --capability=): it can only hand on what it has. CAP_NET_ADMIN is not among them: the
/// machine shares the namespace's network and never configures it.
pub const CAPS: [&str; 26] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_NICE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TTY_CONFIG",
];

/// The program `up` runs for a machine.
pub const PROGRAM: &str = "systemd-nspawn";

/// systemd-nspawn as systemd-nspawn@.service runs it, with the settings file overriding
/// the command line (so `Private=off`/`VirtualEthernet=no` keep the namespace's network),
/// no machined to register with, and the root `up` bound. `up` runs its children in a PID
/// namespace of the site's own: systemd-nspawn reads /proc/PID of the machine it forked, so
/// it gets a /proc of that namespace first (unshare(1), --mount-proc).
pub fn argv(machine: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--mount-proc",
        "--",
        PROGRAM,
        "--quiet",
        "--keep-unit",
        "--register=no",
        "--boot",
        "--link-journal=no",
        "--settings=override",
        &format!("--machine={machine}"),
        &format!("--directory={ROOT}"),
    ]
    .map(String::from)
    .to_vec()
}

/// True for a child that runs a machine.
pub fn is_machine(c: &crate::plan::Child) -> bool {
    c.argv.iter().any(|a| a == PROGRAM)
}

/// The machine's own /etc, relative to it: the overlay's links and the filled templates.
pub fn etc_files(site: &str, ns: &Namespace) -> Vec<(PathBuf, RenderedFile)> {
    super::machine_etc(site, ns)
}

/// Turns a plan's avahi children into machines: for each namespace, the host's root bound
/// at [`ROOT`], the machine's /etc at [`ETC`] and its settings file, all in the private
/// mounts; the VLAN's dbus child goes (dbus runs inside the machine), and the avahi child
/// becomes systemd-nspawn with the same name, restarts and health (over the machine's bus).
pub fn into_machines(plan: &mut Plan) {
    let site = plan.site.clone();
    for ns in plan.namespaces.iter_mut() {
        for m in ns.mounts.iter_mut() {
            if let Mount::Tmpfs { target, dirs, .. } = m
                && target == "/run"
            {
                dirs.push(ROOT.into());
            }
        }
        ns.mounts.push(Mount::Bind {
            source: "/".into(),
            target: ROOT.into(),
        });
        let etc = etc_files(&site, ns);
        for (rel, f) in etc {
            ns.files.push(FileSpec {
                path: Path::new(ETC).join(rel).display().to_string(),
                mode: match f.kind {
                    FileKind::Regular { mode } => mode,
                    FileKind::Symlink => S_IFLNK | 0o777,
                },
                contents: f.as_str().to_string(),
            });
        }
        ns.files.push(FileSpec {
            path: format!("{SETTINGS_DIR}/{}.nspawn", ns.name),
            mode: 0o644,
            contents: super::nspawn_settings(&site, &ns.name, ETC),
        });
        let (child, gone) = match ns.kind {
            NamespaceKind::Vlan => (
                format!("avahi@{}", ns.owner),
                Some(format!("dbus@{}", ns.owner)),
            ),
            NamespaceKind::Reflector => (format!("reflector@{}", ns.owner), None),
        };
        if let Some(g) = &gone {
            plan.children.retain(|c| &c.name != g);
            for c in plan.children.iter_mut() {
                c.after.retain(|a| a != g);
            }
        }
        if let Some(c) = plan.children.iter_mut().find(|c| c.name == child) {
            c.argv = argv(&ns.name);
            c.caps = CAPS.iter().map(|s| s.to_string()).collect();
            if ns.kind == NamespaceKind::Vlan {
                c.health = Health::MachineBus {
                    bus: DBUS_SOCKET.into(),
                };
            }
        }
    }
}

/// The machine's init: the child of systemd-nspawn (it forks the machine's PID 1 and waits).
pub fn leader(nspawn: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The name of a machine's cgroup, beside the supervisor's own processes.
fn cgroup_name(machine: &str) -> String {
    format!("appliance-{machine}")
}

/// The cgroup directories a machine gets: one in each hierarchy systemd-nspawn uses (the
/// unified one and the named `systemd` one of a hybrid setup), under the caller's cgroup.
/// Without systemd as PID 1 systemd-nspawn makes its `payload` and `supervisor` groups
/// under its caller's cgroup: two machines there would share them.
pub fn cgroup_dirs(machine: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = vec![];
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mount = if id == "0" && ctrl.is_empty() {
            mount_of(&mounts, |fstype, _| fstype == "cgroup2")
        } else if ctrl == "name=systemd" {
            mount_of(&mounts, |fstype, opts| {
                fstype == "cgroup" && opts.split(',').any(|o| o == "name=systemd")
            })
        } else {
            None
        };
        if let Some(m) = mount {
            out.push(
                Path::new(&m)
                    .join(path.trim_start_matches('/'))
                    .join(cgroup_name(machine)),
            );
        }
    }
    out
}

/// The mount point of the first mount in mountinfo whose type and super options match.
fn mount_of(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let target = pre.split_whitespace().nth(4)?;
        let mut p = post.split_whitespace();
        let fstype = p.next()?;
        let opts = p.nth(1).unwrap_or_default();
        want(fstype, opts).then(|| target.to_string())
    })
}

/// Makes the machine's cgroups afresh (what a killed run left is removed first) and returns
/// their `cgroup.procs` files, for the child to move itself into before exec.
pub fn prepare_cgroups(machine: &str) -> Vec<PathBuf> {
    remove_cgroups(machine);
    cgroup_dirs(machine)
        .into_iter()
        .filter(|d| std::fs::create_dir(d).is_ok())
        .map(|d| d.join("cgroup.procs"))
        .collect()
}

/// Kills whatever is left of a machine (its init outlives a systemd-nspawn killed with
/// SIGKILL) and removes its cgroups, deepest first. Waits up to 3 s for the processes to go.
pub fn remove_cgroups(machine: &str) {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(d.to_path_buf());
    }
    let mut dirs = vec![];
    for d in cgroup_dirs(machine) {
        if d.is_dir() {
            walk(&d, &mut dirs);
        }
    }
    if dirs.is_empty() {
        return;
    }
    let pids = |dirs: &[PathBuf]| -> Vec<i32> {
        dirs.iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let left = pids(&dirs);
        if left.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        for pid in left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for d in &dirs {
        let _ = std::fs::remove_dir(d);
    }
}

/// Removes the cgroups of every machine of the plan (after `up` or in `down`).
pub fn remove_all_cgroups(plan: &Plan) {
    if plan.avahi == crate::site::AvahiMode::Machines {
        for ns in &plan.namespaces {
            remove_cgroups(&ns.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup_mounts_in_mountinfo() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  40 31 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
                  41 31 0:36 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n";
        assert_eq!(
            mount_of(mi, |t, _| t == "cgroup2").as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            mount_of(mi, |t, o| t == "cgroup" && o.contains("name=systemd")).as_deref(),
            Some("/sys/fs/cgroup/systemd")
        );
    }
}
