//! Directories and files `up` makes on the host for a mount space, owned by a user other
//! than root (FRR's `frr`): made without following a symbolic link in their place, then
//! handed over by fd, so a link planted there changes nothing else.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn ids(user: &str, group: &str) -> Result<(u32, u32), String> {
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| format!("user {user} does not exist (scripts/install-deps installs frr)"))?;
    let g = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| {
            format!("group {group} does not exist (scripts/install-deps installs frr)")
        })?;
    Ok((u.uid.as_raw(), g.gid.as_raw()))
}

/// Makes `path` (if missing) and gives it to `user:group` with `mode`.
pub fn dir(path: &Path, user: &str, group: &str, mode: u32) -> Result<(), String> {
    let (uid, gid) = ids(user, group)?;
    let at = |op: &str, e: std::io::Error| format!("{op} {}: {e}", path.display());
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(at("creating", e));
        }
        _ => {}
    }
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| at("opening (a symbolic link is refused)", e))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| at("handing over", e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| at("setting the mode of", e))
}

/// Writes `contents` to `path` (replacing it) and gives it to `user:group` with `mode`.
pub fn file(path: &Path, user: &str, group: &str, mode: u32, contents: &str) -> Result<(), String> {
    let (uid, gid) = ids(user, group)?;
    let at = |op: &str, e: std::io::Error| format!("{op} {}: {e}", path.display());
    let mut f = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| at("writing (a symbolic link is refused)", e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| at("writing", e))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| at("handing over", e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| at("setting the mode of", e))
}
