//! Applies and removes the appliance's nftables tables with the real `nft`. Each table is
//! replaced whole in one transaction, so applying twice changes nothing and a half-applied
//! table never exists.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::plan::firewall::{Firewall, table_prefix};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft to {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("nft refused to {what}: {stderr}")]
    Refused { what: String, stderr: String },
}

/// Replaces the table with the plan's version of it.
pub fn apply(fw: &Firewall) -> Result<(), FirewallError> {
    let what = format!("apply table {} {}", fw.family, fw.table);
    nft(&["-f", "-"], Some(&fw.ruleset()), &what).map(|_| ())
}

/// Removes one table; a table that is not there is already removed.
pub fn remove(family: &str, table: &str) -> Result<(), FirewallError> {
    let what = format!("delete table {family} {table}");
    match nft(&["delete", "table", family, table], None, &what) {
        Err(FirewallError::Refused { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Every table of `site` now in the kernel, as (family, name).
pub fn tables_of(site: &str) -> Result<Vec<(String, String)>, FirewallError> {
    let out = nft(&["list", "tables"], None, "list tables")?;
    let prefix = table_prefix(site);
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(fam), Some(name)) if name.starts_with(&prefix) => {
                    Some((fam.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect())
}

/// Removes every table of `site` (for `down`, also after a crash).
pub fn remove_all(site: &str) -> Result<(), FirewallError> {
    for (fam, name) in tables_of(site)? {
        remove(&fam, &name)?;
    }
    Ok(())
}

fn nft(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String, FirewallError> {
    let spawn_err = |source| FirewallError::Spawn {
        what: what.to_string(),
        source,
    };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Refused {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
