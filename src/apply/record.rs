//! What `up` made, recorded in the state directory as it goes (before each object is
//! made), so `down` finds it after a crash or a partial `up`.

use std::path::{Path, PathBuf};

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
}

pub const FILE: &str = "state.json";

impl Record {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    pub fn load(state_dir: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record atomically (a crash leaves the old or the new one).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let tmp = state_dir.join(format!("{FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("record serializes"),
        )?;
        std::fs::rename(&tmp, Self::path(state_dir))
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
