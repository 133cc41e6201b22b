//! What `up` made, recorded in the state directory as it goes (before each object is
//! made), so `down` finds it after a crash or a partial `up`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub site: String,
    /// The supervisor's pid.
    pub pid: u32,
    /// Bridges `up` created (only these are removed).
    pub bridges: Vec<String>,
    pub netns: Vec<PathBuf>,
    pub mount_pins: Vec<PathBuf>,
    /// Host ends of veths.
    pub veths: Vec<String>,
    /// Children as (pid, start time in clock ticks), to kill them after a crash without
    /// hitting a reused pid.
    pub children: Vec<(u32, u64)>,
    /// Sysctls `up` changed, with their values from before.
    #[serde(default)]
    pub sysctls: Vec<super::host::Changed>,
    /// Bridges whose `multicast_snooping` `up` changed, with their values from before.
    #[serde(default)]
    pub snooping: Vec<super::host::Changed>,
    /// The plan's nftables tables (`FAMILY NAME`), applied by the children that own them,
    /// with the rules they insert into the router's chains: removed by teardown in one
    /// transaction.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Directories `up` made for mount spaces (under the state directory), removed whole.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

pub const FILE: &str = "state.json";
/// Where a record that cannot be read is kept for the operator.
pub const CORRUPT: &str = "state.json.corrupt";

/// Opens the state directory itself, refusing a symlink in its place.
fn open_dir(state_dir: &Path) -> std::io::Result<OwnedFd> {
    open(
        state_dir,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
}

/// Opens `name` in the directory `dir`, never following a symlink there.
fn open_in(dir: &OwnedFd, name: &str, flags: OFlag, mode: Mode) -> std::io::Result<File> {
    openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )
    .map(File::from)
    .map_err(std::io::Error::from)
}

/// Makes the state directory (0700) if it is missing, and refuses one that is not a
/// dedicated directory, is a symlink, is not owned by root, or that others may write to.
pub fn prepare_dir(state_dir: &Path) -> Result<(), String> {
    crate::names::check_state_dir(state_dir)?;
    if let Some(parent) = state_dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    match nix::unistd::mkdir(state_dir, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(nix::Error::EEXIST) => {}
        Err(e) => return Err(format!("creating {}: {e}", state_dir.display())),
    }
    let fd = open_dir(state_dir).map_err(|e| {
        format!(
            "opening state directory {}: {e} (a symlink is refused)",
            state_dir.display()
        )
    })?;
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| format!("checking state directory {}: {e}", state_dir.display()))?;
    check_owner(st.st_uid, st.st_mode).map_err(|why| {
        format!(
            "state directory {} {why}; give a directory only root controls",
            state_dir.display()
        )
    })
}

/// Root's own, and no one else may write to it.
pub fn check_owner(uid: u32, mode: u32) -> Result<(), String> {
    if uid != 0 {
        return Err(format!("is owned by uid {uid}, not root"));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by its group or by anyone (mode {:o})",
            mode & 0o7777
        ));
    }
    Ok(())
}

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The record, if there is a readable one (see [`Record::load_checked`]).
    pub fn load(state_dir: &Path) -> Option<Record> {
        Self::load_checked(state_dir).ok().flatten()
    }

    /// The record: `Ok(None)` when there is none; an error when it cannot be read, after
    /// moving it aside to `state.json.corrupt` (a truncated or damaged file).
    pub fn load_checked(state_dir: &Path) -> Result<Option<Record>, String> {
        let Ok(dir) = open_dir(state_dir) else {
            return Ok(None);
        };
        let mut text = Vec::new();
        match open_in(&dir, FILE, OFlag::O_RDONLY, Mode::empty()) {
            Ok(mut f) => f
                .read_to_end(&mut text)
                .map_err(|e| format!("reading {}: {e}", Self::path(state_dir).display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("opening {}: {e}", Self::path(state_dir).display())),
        };
        match serde_json::from_slice(&text) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let kept = renameat(&dir, FILE, &dir, CORRUPT)
                    .map(|()| format!("kept as {}", state_dir.join(CORRUPT).display()))
                    .unwrap_or_else(|e| format!("could not be moved aside: {e}"));
                Err(format!(
                    "the record {} is corrupt ({e}); {kept}",
                    Self::path(state_dir).display()
                ))
            }
        }
    }

    /// Writes the record atomically and durably (a crash or a power cut leaves the old or
    /// the new one): a new file synced, renamed over the old, and the directory synced.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let dir = open_dir(state_dir)?;
        let tmp = format!("{FILE}.tmp");
        let mut f = open_in(
            &dir,
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
            Mode::from_bits_truncate(0o600),
        )?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("record serializes"))?;
        f.sync_all()?;
        renameat(&dir, tmp.as_str(), &dir, FILE).map_err(std::io::Error::from)?;
        nix::unistd::fsync(&dir).map_err(std::io::Error::from)
    }

    /// Removes the record (when teardown had no errors).
    pub fn remove(state_dir: &Path) {
        if let Ok(dir) = open_dir(state_dir) {
            let _ = unlinkat(&dir, FILE, UnlinkatFlags::NoRemoveDir);
            // A save a crash cut short (between its write and its rename): the object it
            // was about to record was not made yet.
            let _ = unlinkat(
                &dir,
                format!("{FILE}.tmp").as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
            let _ = nix::unistd::fsync(&dir);
        }
    }

    pub fn add<T: PartialEq>(list: &mut Vec<T>, item: T) {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Start time of a process (field 22 of /proc/PID/stat), to tell it from a later one
/// with the same pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "appliance-record-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_saved_record_loads_back() {
        let d = dir();
        let r = Record {
            site: "lab".into(),
            pid: 7,
            veths: vec!["lab-iot".into()],
            ..Default::default()
        };
        r.save(&d).unwrap();
        assert_eq!(Record::load_checked(&d), Ok(Some(r)));
        Record::remove(&d);
        assert_eq!(Record::load_checked(&d), Ok(None));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_truncated_record_is_kept_aside_and_reported() {
        let d = dir();
        let r = Record {
            site: "lab".into(),
            ..Default::default()
        };
        r.save(&d).unwrap();
        let text = std::fs::read(d.join(FILE)).unwrap();
        std::fs::write(d.join(FILE), &text[..text.len() / 2]).unwrap();
        let err = Record::load_checked(&d).unwrap_err();
        assert!(err.contains("is corrupt"), "{err}");
        assert!(err.contains(CORRUPT), "{err}");
        assert_eq!(
            std::fs::read(d.join(CORRUPT)).unwrap(),
            &text[..text.len() / 2]
        );
        assert!(!d.join(FILE).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn remove_takes_a_save_a_crash_cut_short_too() {
        let d = dir();
        Record::default().save(&d).unwrap();
        std::fs::write(d.join(format!("{FILE}.tmp")), "{").unwrap();
        Record::remove(&d);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_in_place_of_the_record_is_not_followed() {
        let d = dir();
        let target = d.join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, d.join(format!("{FILE}.tmp"))).unwrap();
        std::os::unix::fs::symlink(&target, d.join(FILE)).unwrap();
        let r = Record::default();
        assert!(r.save(&d).is_err(), "wrote through a symlink");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(Record::load_checked(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn only_roots_own_unshared_directory_will_do() {
        assert_eq!(check_owner(0, 0o040700), Ok(()));
        assert_eq!(check_owner(0, 0o040755), Ok(()));
        assert!(
            check_owner(1000, 0o040700)
                .unwrap_err()
                .contains("uid 1000")
        );
        assert!(check_owner(0, 0o041777).unwrap_err().contains("1777"));
        assert!(check_owner(0, 0o040770).unwrap_err().contains("group"));
    }

    #[test]
    fn prepare_dir_refuses_others_directories_and_symlinks() {
        let d = dir();
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        assert!(prepare_dir(&open).unwrap_err().contains("writable"));
        let link = d.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(prepare_dir(&link).unwrap_err().contains("symlink"));
        let new = d.join("new");
        assert_eq!(prepare_dir(&new), Ok(()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(prepare_dir(Path::new("/tmp")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
