//! The kernel side of machines (`[site] avahi = "machines"`): finding a machine's init, and
//! the cgroups each machine gets. What a machine is made of is in `plan::machine`.

use std::path::{Path, PathBuf};

use crate::plan::Plan;
pub use crate::plan::machine::*;

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
