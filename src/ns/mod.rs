//! Network and mount namespaces, held as owned fds. A namespace is made or entered only on
//! a dedicated `std::thread` that exits afterwards, never on an async worker: a thread that
//! changed namespace must not run anything else.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::plan::{FileSpec, Mount};

/// Where iproute2 pins network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{op} {object}: {source}")]
    Sys {
        op: &'static str,
        object: String,
        source: nix::Error,
    },
    #[error("{op} {object}: {source}")]
    Io {
        op: &'static str,
        object: String,
        source: std::io::Error,
    },
    #[error("namespace thread for {0} died")]
    Thread(String),
}

fn sys(op: &'static str, object: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> NsError {
    let object = object.to_string();
    move |source| NsError::Sys { op, object, source }
}

fn io(op: &'static str, object: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> NsError {
    let object = object.to_string();
    move |source| NsError::Io { op, object, source }
}

/// Runs `f` on a fresh thread that exits afterwards, so whatever namespace `f` enters
/// never leaks into another task.
pub fn on_thread<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, NsError> + Send + 'static,
) -> Result<T, NsError> {
    std::thread::Builder::new()
        .name(format!("ns-{what}"))
        .spawn(f)
        .map_err(io("spawning a thread for", what))?
        .join()
        .map_err(|_| NsError::Thread(what.to_string()))?
}

/// Makes `dir` a mount point of itself with the given propagation (iproute2 does this
/// for /run/netns with MS_SHARED, so unmounting a pin reaches every mount namespace).
pub fn ensure_mount_dir(dir: &Path, propagation: MsFlags) -> Result<(), NsError> {
    std::fs::create_dir_all(dir).map_err(io("creating directory", dir.display()))?;
    let flags = propagation | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => return Ok(()),
        Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(sys("setting propagation of", dir.display())(e)),
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind-mounting over itself", dir.display()))?;
    mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
        .map_err(sys("setting propagation of", dir.display()))
}

/// True if `path` is a namespace file (a pin that is mounted).
fn is_pinned(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Opens a namespace file read-only.
pub fn open(path: &Path) -> Result<OwnedFd, NsError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(io("opening namespace", path.display()))
}

/// Path of a pinned network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the network namespace `name` pinned at /run/netns/NAME like `ip netns add`,
/// or opens it if it is there already. Returns it and whether it was made now.
pub fn create_netns(name: &str) -> Result<(OwnedFd, bool), NsError> {
    let pin = netns_path(name);
    if is_pinned(&pin) {
        return Ok((open(&pin)?, false));
    }
    ensure_mount_dir(Path::new(NETNS_DIR), MsFlags::MS_SHARED)?;
    touch(&pin)?;
    let p = pin.clone();
    let made = on_thread(name, move || {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(sys("unsharing network namespace for", p.display()))?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("pinning network namespace at", p.display()))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&pin);
        return Err(e);
    }
    Ok((open(&pin)?, true))
}

fn touch(path: &Path) -> Result<(), NsError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(path)
        .map(|_| ())
        .map_err(io("creating pin file", path.display()))
}

/// Unmounts a pin and removes its file; a pin that is not there is already removed.
pub fn remove_pin(pin: &Path) -> Result<(), NsError> {
    match umount2(pin, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(sys("unmounting", pin.display())(e)),
    }
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", pin.display())(e)),
    }
}

/// True if removing a pin failed because it is still mounted in another mount namespace
/// (unlink(2): EBUSY), where an unmount here does not reach: one that `appliance pin`
/// made in PID 1's mount namespace while `up` runs in a unit's own. `down` run there
/// removes it.
pub fn held_elsewhere(e: &NsError) -> bool {
    matches!(e, NsError::Io { op: "removing", source, .. } if source.raw_os_error() == Some(nix::libc::EBUSY))
}

/// A private mount namespace and UTS namespace, held by fd.
pub struct Private {
    pub mnt: OwnedFd,
    pub uts: OwnedFd,
}

/// Creates a private mount namespace (a slave of the host's: host unmounts reach it, its
/// own mounts stay inside) set up with `mounts` and `files`, and a UTS namespace with
/// `hostname` (None: no UTS namespace of its own; `uts` is the caller's). `label` names
/// them in messages. They live as long as the fds or a process inside them.
///
/// They are held by fd, not bind-mounted under the state dir: on this kernel (6.18)
/// binding a mount namespace file fails with EINVAL now and then (its loop check compares
/// namespace ids, which do not follow creation order across CPUs).
pub fn create_private(
    label: &str,
    hostname: Option<&str>,
    mounts: Vec<Mount>,
    files: Vec<FileSpec>,
) -> Result<Private, NsError> {
    let l = label.to_string();
    let host = hostname.map(str::to_string);
    on_thread(label, move || {
        let flags = match host {
            Some(_) => CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS,
            None => CloneFlags::CLONE_NEWNS,
        };
        unshare(flags).map_err(sys("unsharing mount and UTS namespaces for", &l))?;
        if let Some(host) = &host {
            nix::unistd::sethostname(host).map_err(sys("setting host name", host))?;
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(sys("making / a slave mount in", &l))?;
        for m in &mounts {
            apply_mount(m)?;
        }
        for f in &files {
            write_file(f)?;
        }
        let open = |kind: &str| {
            File::open(format!("/proc/thread-self/ns/{kind}"))
                .map(OwnedFd::from)
                .map_err(io("opening namespace of", &l))
        };
        Ok(Private {
            mnt: open("mnt")?,
            uts: open("uts")?,
        })
    })
}

fn apply_mount(m: &Mount) -> Result<(), NsError> {
    match m {
        Mount::Tmpfs {
            target,
            options,
            dirs,
        } => {
            std::fs::create_dir_all(target).map_err(io("creating mount point", target))?;
            mount(
                Some("tmpfs"),
                target.as_str(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_str()),
            )
            .map_err(sys("mounting tmpfs on", target))?;
            for d in dirs {
                std::fs::create_dir_all(d).map_err(io("creating directory", d))?;
            }
        }
        Mount::Bind { source, target } => {
            // A mount point the host lacks (FRR makes /var/tmp/frr only once it runs).
            if !Path::new(target).exists() && Path::new(source).is_dir() {
                std::fs::create_dir_all(target).map_err(io("creating mount point", target))?;
            }
            mount(
                Some(source.as_str()),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mounting", format!("{source} on {target}")))?;
        }
        Mount::Overlay { target, upper } => {
            let up = format!("{upper}/upper");
            let work = format!("{upper}/work");
            for d in [&up, &work] {
                std::fs::create_dir_all(d).map_err(io("creating directory", d))?;
            }
            let opts = format!("lowerdir={target},upperdir={up},workdir={work}");
            mount(
                Some("overlay"),
                target.as_str(),
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(sys("mounting overlay on", target))?;
        }
    }
    Ok(())
}

fn write_file(f: &FileSpec) -> Result<(), NsError> {
    if let Some(dir) = Path::new(&f.path).parent() {
        std::fs::create_dir_all(dir).map_err(io("creating directory", dir.display()))?;
    }
    // A symbolic link (a machine's enablement links): `contents` is its target.
    if f.mode & 0o170000 == 0o120000 {
        let _ = std::fs::remove_file(&f.path);
        return std::os::unix::fs::symlink(&f.contents, &f.path).map_err(io("linking", &f.path));
    }
    let mut file = File::create(&f.path).map_err(io("writing", &f.path))?;
    file.write_all(f.contents.as_bytes())
        .map_err(io("writing", &f.path))?;
    file.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(io("setting mode of", &f.path))
}

/// Runs `f` on a fresh thread inside the network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    what: &str,
    netns: &OwnedFd,
    f: impl FnOnce() -> Result<T, NsError> + Send + 'static,
) -> Result<T, NsError> {
    let fd = netns
        .try_clone()
        .map_err(io("duplicating namespace fd of", what))?;
    let label = what.to_string();
    on_thread(what, move || {
        setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(sys("entering network namespace", &label))?;
        f()
    })
}

/// Inode of a namespace file (to find processes inside it).
pub fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}
