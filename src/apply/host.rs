//! The host settings `up` changes: the plan's sysctls and the bridges' multicast snooping.
//! Each is recorded with the value it had before (in the record, before it is changed) and
//! put back by teardown, after a clean stop and after a crash alike; a value someone
//! changed since is left as it is, and said so.

use std::process::Command;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{ApplyError, Record, save};
use crate::plan::Plan;

/// One setting `up` changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changed {
    /// The sysctl key (`net.ipv4.conf.br-mgmt.route_localnet`), or the bridge's name.
    pub key: String,
    pub before: String,
    pub set: String,
}

/// What teardown does with a changed setting, given its value now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    /// Still what `up` set: write the value from before.
    Put,
    /// Already back to the value from before (a child put it back): nothing to do.
    AlreadyBack,
    /// Someone set another value since: theirs stays.
    ChangedSince,
}

pub fn restore_action(c: &Changed, now: &str) -> Restore {
    if now == c.set {
        Restore::Put
    } else if now == c.before {
        Restore::AlreadyBack
    } else {
        Restore::ChangedSince
    }
}

/// `/proc/sys` path of a sysctl key; the interface part of `net.ipv4.conf.IF.x` may hold dots.
pub fn sysctl_path(key: &str) -> String {
    for fam in ["net.ipv4.conf.", "net.ipv6.conf."] {
        if let Some(rest) = key.strip_prefix(fam)
            && let Some((iface, leaf)) = rest.rsplit_once('.')
        {
            return format!("/proc/sys/{}{iface}/{leaf}", fam.replace('.', "/"));
        }
    }
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> std::io::Result<String> {
    std::fs::read_to_string(sysctl_path(key)).map(|s| s.trim().to_string())
}

fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(sysctl_path(key), value)
}

/// A bridge's `mcast_snooping` ("0" or "1") from `ip -j -d link show`, which reads this
/// process's network namespace over netlink; `None` if the bridge is not there.
fn read_snooping(bridge: &str) -> Result<Option<String>, String> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", bridge])
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("does not exist") || err.contains("Cannot find device") {
            return Ok(None);
        }
        return Err(err.trim().to_string());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("reading ip's JSON: {e}"))?;
    v[0]["linkinfo"]["info_data"]["mcast_snooping"]
        .as_u64()
        .map(|n| Some(n.to_string()))
        .ok_or_else(|| format!("{bridge} has no mcast_snooping: not a bridge?"))
}

fn write_snooping(bridge: &str, value: &str) -> Result<(), String> {
    let out = Command::new("ip")
        .args([
            "link",
            "set",
            "dev",
            bridge,
            "type",
            "bridge",
            "mcast_snooping",
            value,
        ])
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn host_err(what: String) -> ApplyError {
    ApplyError::Host(what)
}

/// Sets the plan's sysctls and snooping values, recording each one's value from before
/// first (the earliest record wins: a second `up` does not lose the original).
pub fn set(plan: &Plan, rec: &mut Record) -> Result<(), ApplyError> {
    for s in &plan.sysctls {
        let now = match read_sysctl(&s.key) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(
                    "sysctl {} does not exist yet ({} sets it when it does)",
                    s.key, s.owner
                );
                continue;
            }
            Err(e) => return Err(host_err(format!("reading sysctl {}: {e}", s.key))),
        };
        if now == s.value {
            continue;
        }
        if !rec.sysctls.iter().any(|c| c.key == s.key) {
            rec.sysctls.push(Changed {
                key: s.key.clone(),
                before: now.clone(),
                set: s.value.clone(),
            });
            save(rec, plan)?;
        }
        write_sysctl(&s.key, &s.value)
            .map_err(|e| host_err(format!("setting sysctl {} = {}: {e}", s.key, s.value)))?;
        info!("sysctl {} = {} (was {now}): {}", s.key, s.value, s.why);
    }
    for b in &plan.bridges {
        let Some(want) = b.snooping else { continue };
        let want = u8::from(want).to_string();
        let now = read_snooping(&b.name)
            .map_err(|e| host_err(format!("reading multicast snooping of {}: {e}", b.name)))?;
        let Some(now) = now else { continue };
        if now == want {
            continue;
        }
        if !rec.snooping.iter().any(|c| c.key == b.name) {
            rec.snooping.push(Changed {
                key: b.name.clone(),
                before: now.clone(),
                set: want.clone(),
            });
            save(rec, plan)?;
        }
        write_snooping(&b.name, &want).map_err(|e| {
            host_err(format!(
                "setting multicast snooping of {} to {want}: {e}",
                b.name
            ))
        })?;
        info!("bridge {}: multicast_snooping = {want} (was {now})", b.name);
    }
    Ok(())
}

/// Puts back every recorded setting still at the value `up` set; returns the errors.
pub fn restore(rec: &Record) -> Vec<String> {
    let mut errors = vec![];
    for c in &rec.sysctls {
        let now = match read_sysctl(&c.key) {
            Ok(v) => v,
            // The interface is gone, and its settings with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(format!("reading sysctl {}: {e}", c.key));
                continue;
            }
        };
        match restore_action(c, &now) {
            Restore::Put => match write_sysctl(&c.key, &c.before) {
                Ok(()) => info!(
                    "sysctl {} = {} again (up had set {})",
                    c.key, c.before, c.set
                ),
                Err(e) => errors.push(format!("putting back sysctl {} = {}: {e}", c.key, c.before)),
            },
            Restore::AlreadyBack => {}
            Restore::ChangedSince => warn!(
                "sysctl {} is {now}, not the {} up set: changed since, left as it is (it was {} before up)",
                c.key, c.set, c.before
            ),
        }
    }
    for c in &rec.snooping {
        let now = match read_snooping(&c.key) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("reading multicast snooping of {}: {e}", c.key));
                continue;
            }
        };
        match restore_action(c, &now) {
            Restore::Put => match write_snooping(&c.key, &c.before) {
                Ok(()) => info!(
                    "bridge {}: multicast_snooping = {} again (up had set {})",
                    c.key, c.before, c.set
                ),
                Err(e) => errors.push(format!(
                    "putting back multicast snooping of {} to {}: {e}",
                    c.key, c.before
                )),
            },
            Restore::AlreadyBack => {}
            Restore::ChangedSince => warn!(
                "bridge {}: multicast_snooping is {now}, not the {} up set: changed since, left as it is (it was {} before up)",
                c.key, c.set, c.before
            ),
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_value_still_as_up_set_it_is_put_back() {
        let c = Changed {
            key: "net.ipv4.conf.br-mgmt.route_localnet".into(),
            before: "0".into(),
            set: "1".into(),
        };
        assert_eq!(restore_action(&c, "1"), Restore::Put);
        assert_eq!(restore_action(&c, "0"), Restore::AlreadyBack);
        assert_eq!(restore_action(&c, "2"), Restore::ChangedSince);
    }

    #[test]
    fn sysctl_paths_keep_dots_in_interface_names() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.10.route_localnet"),
            "/proc/sys/net/ipv4/conf/eth0.10/route_localnet"
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }

    #[test]
    fn an_old_record_without_settings_still_loads() {
        let old = r#"{"site":"lab","pid":1,"bridges":[],"netns":[],"mount_pins":[],"veths":[],"children":[]}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert!(r.sysctls.is_empty() && r.snooping.is_empty());
    }
}
