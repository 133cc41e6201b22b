//! Applies and removes the appliance's nftables tables with the real `nft`. A table, and
//! the rules it inserts into the router's own chains (`accept_in`), are replaced or removed
//! together in one `nft -f` transaction, so applying twice changes nothing and a
//! half-applied table never exists. A table this process applied is kept in place: an
//! operator's `nft flush ruleset` (what `systemctl reload nftables` does) is seen on
//! `nft monitor` and the table applied again at once.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::plan::firewall::{Firewall, is_table_of};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft to {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("nft refused to {what}: {stderr}")]
    Refused { what: String, stderr: String },
    #[error("reading nft's JSON to {what}: {msg}")]
    Json { what: String, msg: String },
}

/// The tables this process applied and has not removed: kept in place by [`watch`].
static KEPT: Mutex<Vec<Firewall>> = Mutex::new(Vec::new());

/// Replaces the table with the plan's version of it, and its rules inserted into the
/// router's own chains (`accept_in`) with the plan's, in one transaction; from now on the
/// table is put back if someone removes it.
pub fn apply(fw: &Firewall) -> Result<(), FirewallError> {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    apply_now(fw)?;
    kept.retain(|k| k.table != fw.table);
    kept.push(fw.clone());
    watch();
    Ok(())
}

fn apply_now(fw: &Firewall) -> Result<(), FirewallError> {
    let mut script = fw.ruleset();
    for r in tagged_rules(|tag| tag == fw.table)? {
        script.push_str(&r.delete());
        script.push('\n');
    }
    for i in fw.insertions() {
        script.push_str(&i);
        script.push('\n');
    }
    let what = if fw.accept_in.is_empty() {
        format!("apply table {} {}", fw.family, fw.table)
    } else {
        format!(
            "apply table {} {} and insert its accept rules into {}",
            fw.family,
            fw.table,
            fw.accept_in.join(", ")
        )
    };
    nft(&["-f", "-"], Some(&script), &what).map(|_| ())
}

/// Removes one table and the rules it inserted into other chains, in one transaction;
/// what is not there is already removed.
pub fn remove(family: &str, table: &str) -> Result<(), FirewallError> {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|k| k.table != table);
    let rules = tagged_rules(|tag| tag == table)?;
    let tables = [(family.to_string(), table.to_string())];
    nft(
        &["-f", "-"],
        Some(&removal(&rules, &tables)),
        &format!("delete table {family} {table} and the rules it inserted"),
    )
    .map(|_| ())
}

/// One `nft -f` script deleting `rules` and then `tables` (declaring each table first, so
/// one that is already gone is no error).
fn removal(rules: &[TaggedRule], tables: &[(String, String)]) -> String {
    let mut s = String::new();
    for r in rules {
        s.push_str(&r.delete());
        s.push('\n');
    }
    for (fam, name) in tables {
        s.push_str(&format!("table {fam} {name}\ndelete table {fam} {name}\n"));
    }
    s
}

/// A rule the appliance inserted into a chain of the router's own firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// The `comment` it carries: the name of the appliance table it belongs to.
    pub tag: String,
}

impl TaggedRule {
    fn delete(&self) -> String {
        format!(
            "delete rule {} {} {} handle {}",
            self.family, self.table, self.chain, self.handle
        )
    }
}

/// `nft -j list ruleset`, parsed.
fn ruleset() -> Result<Value, FirewallError> {
    let what = "list the ruleset";
    let out = nft(&["-j", "list", "ruleset"], None, what)?;
    serde_json::from_str(&out).map_err(|e| FirewallError::Json {
        what: what.into(),
        msg: e.to_string(),
    })
}

/// The objects of an `nft -j` listing: `{"nftables": [{"table": {...}}, {"rule": {...}}]}`.
fn objects<'a>(listing: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// Every rule of the ruleset whose comment satisfies `want`.
pub fn tagged_rules(want: impl Fn(&str) -> bool) -> Result<Vec<TaggedRule>, FirewallError> {
    Ok(parse_tagged(&ruleset()?, want))
}

/// Reads an `nft -j list ruleset`: rules carrying a `comment` that `want` accepts.
fn parse_tagged(listing: &Value, want: impl Fn(&str) -> bool) -> Vec<TaggedRule> {
    objects(listing, "rule")
        .filter_map(|r| {
            let tag = r["comment"].as_str()?;
            want(tag).then_some(())?;
            Some(TaggedRule {
                family: r["family"].as_str()?.to_string(),
                table: r["table"].as_str()?.to_string(),
                chain: r["chain"].as_str()?.to_string(),
                handle: r["handle"].as_u64()?,
                tag: tag.to_string(),
            })
        })
        .collect()
}

/// The tables of a listing, as (family, name).
fn parse_tables(listing: &Value) -> Vec<(String, String)> {
    objects(listing, "table")
        .filter_map(|t| Some((t["family"].as_str()?.into(), t["name"].as_str()?.into())))
        .collect()
}

/// Every table of `site` now in the kernel, as (family, name).
pub fn tables_of(site: &str) -> Result<Vec<(String, String)>, FirewallError> {
    let mut t = parse_tables(&ruleset()?);
    t.retain(|(_, name)| is_table_of(site, name));
    Ok(t)
}

/// Removes every table of `site` and every rule they inserted into the router's own
/// chains (for `down`, also after a crash), in one transaction.
pub fn remove_all(site: &str) -> Result<(), FirewallError> {
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    kept.retain(|k| !is_table_of(site, &k.table));
    let listing = ruleset()?;
    let rules = parse_tagged(&listing, |tag| is_table_of(site, tag));
    let mut tables = parse_tables(&listing);
    tables.retain(|(_, name)| is_table_of(site, name));
    if rules.is_empty() && tables.is_empty() {
        return Ok(());
    }
    nft(
        &["-f", "-"],
        Some(&removal(&rules, &tables)),
        &format!("delete the tables of site {site} and the rules they inserted"),
    )
    .map(|_| ())
}

/// True if `fw` is whole in `listing`: its table, and as many tagged rules as it inserts.
fn in_place(fw: &Firewall, listing: &Value) -> bool {
    parse_tables(listing)
        .iter()
        .any(|(f, n)| *f == fw.family && *n == fw.table)
        && parse_tagged(listing, |tag| tag == fw.table).len() == fw.insertions().len()
}

/// Applies again every kept table that is not whole; returns their names.
fn restore_kept() -> Result<Vec<String>, FirewallError> {
    let kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if kept.is_empty() {
        return Ok(vec![]);
    }
    let listing = ruleset()?;
    let mut done = vec![];
    for fw in kept.iter().filter(|fw| !in_place(fw, &listing)) {
        apply_now(fw)?;
        done.push(format!("{} {}", fw.family, fw.table));
    }
    Ok(done)
}

/// Starts (once per process) a thread that follows `nft -j monitor` and, after anything
/// is deleted, applies again the kept tables that are no longer whole.
fn watch() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("nft-watch".into())
            .spawn(|| {
                loop {
                    if let Err(e) = follow_monitor() {
                        tracing::warn!("watching the nftables ruleset: {e}; again in 1 s");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("not watching the nftables ruleset (no thread: {e})");
        }
    });
}

/// Runs one `nft -j monitor` (killed with this thread's process) until it ends.
fn follow_monitor() -> Result<(), FirewallError> {
    use std::os::unix::process::CommandExt;
    let what = "monitor the ruleset";
    let spawn_err = |source| FirewallError::Spawn {
        what: what.into(),
        source,
    };
    let mut cmd = Command::new("nft");
    cmd.args(["-j", "monitor"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; the watching thread lives as long as the process.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let out = child.stdout.take().expect("stdout is piped");
    // A flush between an apply and the monitor's start would go unseen: look once now.
    check_kept();
    for line in BufReader::new(out).lines() {
        let line = line.map_err(spawn_err)?;
        if line.starts_with("{\"delete\"") {
            check_kept();
        }
    }
    let st = child.wait().map_err(spawn_err)?;
    Err(FirewallError::Refused {
        what: what.into(),
        stderr: format!("nft monitor ended ({st})"),
    })
}

fn check_kept() {
    match restore_kept() {
        Ok(done) => {
            for t in done {
                tracing::warn!(
                    "nftables table {t} was removed (nft flush ruleset?): applied it again"
                );
            }
        }
        Err(e) => tracing::error!("putting back the appliance's nftables tables: {e}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tagged_rules_in_a_listing() {
        // `nft -j list ruleset` of an operator's forward chain with one rule of ours, and
        // another site's rule in a nat table.
        let listing: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"table": {"family": "inet", "name": "filter", "handle": 3}},
 {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 7, "comment": "appliance-lab-mroute", "expr": [{"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 2, "expr": [{"accept": null}]}},
 {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 3, "comment": "ssh", "expr": [{"accept": null}]}},
 {"table": {"family": "ip", "name": "nat", "handle": 4}},
 {"chain": {"family": "ip", "table": "nat", "name": "post", "handle": 1}},
 {"rule": {"family": "ip", "table": "nat", "chain": "post", "handle": 9, "comment": "appliance-lab2-mroute", "expr": [{"masquerade": null}]}}]}"#,
        )
        .unwrap();
        let mine = parse_tagged(&listing, |t| t == "appliance-lab-mroute");
        assert_eq!(
            mine,
            [TaggedRule {
                family: "inet".into(),
                table: "filter".into(),
                chain: "forward".into(),
                handle: 7,
                tag: "appliance-lab-mroute".into(),
            }]
        );
        assert_eq!(mine[0].delete(), "delete rule inet filter forward handle 7");
        let all = parse_tagged(&listing, |t| t.starts_with("appliance-"));
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].family, "ip");
        assert_eq!(
            parse_tables(&listing),
            [
                ("inet".into(), "filter".into()),
                ("ip".into(), "nat".into())
            ]
        );
    }

    #[test]
    fn a_removal_is_one_script_that_tolerates_a_missing_table() {
        let rule = TaggedRule {
            family: "inet".into(),
            table: "filter".into(),
            chain: "forward".into(),
            handle: 7,
            tag: "appliance-lab-mroute".into(),
        };
        assert_eq!(
            removal(&[rule], &[("inet".into(), "appliance-lab-mroute".into())]),
            "delete rule inet filter forward handle 7\n\
             table inet appliance-lab-mroute\n\
             delete table inet appliance-lab-mroute\n"
        );
    }

    #[test]
    fn junk_from_nft_finds_nothing() {
        for text in [
            "{}",
            "[]",
            r#"{"nftables": 3}"#,
            r#"{"nftables": [{"rule": 1}]}"#,
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert!(parse_tagged(&v, |_| true).is_empty());
            assert!(parse_tables(&v).is_empty());
        }
    }
}
