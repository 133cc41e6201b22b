//! Applies and removes the appliance's nftables tables with the real `nft`. Each table is
//! replaced whole in one transaction, so applying twice changes nothing and a half-applied
//! table never exists.

use std::io::Write;
use std::process::{Command, Stdio};

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
}

/// Replaces the table with the plan's version of it, and its rules inserted into the
/// router's own chains (`accept_in`) with the plan's: one transaction each.
pub fn apply(fw: &Firewall) -> Result<(), FirewallError> {
    let what = format!("apply table {} {}", fw.family, fw.table);
    nft(&["-f", "-"], Some(&fw.ruleset()), &what)?;
    let mut script: Vec<String> = tagged_rules(|tag| tag == fw.table)?
        .iter()
        .map(TaggedRule::delete)
        .collect();
    script.extend(fw.insertions());
    if !script.is_empty() {
        let what = format!(
            "insert the accept rules of {} into {}",
            fw.table,
            fw.accept_in.join(", ")
        );
        nft(&["-f", "-"], Some(&(script.join("\n") + "\n")), &what)?;
    }
    Ok(())
}

/// Removes one table and the rules it inserted into other chains; what is not there is
/// already removed.
pub fn remove(family: &str, table: &str) -> Result<(), FirewallError> {
    remove_tagged(|tag| tag == table)?;
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

/// Every rule of the ruleset whose comment satisfies `want`.
pub fn tagged_rules(want: impl Fn(&str) -> bool) -> Result<Vec<TaggedRule>, FirewallError> {
    let listing = nft(&["-a", "list", "ruleset"], None, "list the ruleset")?;
    Ok(parse_tagged(&listing, want))
}

fn remove_tagged(want: impl Fn(&str) -> bool) -> Result<(), FirewallError> {
    let rules = tagged_rules(want)?;
    if rules.is_empty() {
        return Ok(());
    }
    let script: Vec<String> = rules.iter().map(TaggedRule::delete).collect();
    nft(
        &["-f", "-"],
        Some(&(script.join("\n") + "\n")),
        "delete the appliance's rules from the router's chains",
    )
    .map(|_| ())
}

/// Reads `nft -a list ruleset`: rules carrying a `comment "…"` that `want` accepts.
fn parse_tagged(listing: &str, want: impl Fn(&str) -> bool) -> Vec<TaggedRule> {
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    let mut out = vec![];
    for line in listing.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", fam, name, ..] => {
                family = fam.to_string();
                table = name.to_string();
                continue;
            }
            ["chain", name, ..] => {
                chain = name.to_string();
                continue;
            }
            _ => {}
        }
        let Some((_, after)) = line.split_once("comment \"") else {
            continue;
        };
        let Some((tag, _)) = after.split_once('"') else {
            continue;
        };
        let handle = line
            .rsplit_once("# handle ")
            .and_then(|(_, h)| h.trim().parse().ok());
        if let Some(handle) = handle
            && want(tag)
        {
            out.push(TaggedRule {
                family: family.clone(),
                table: table.clone(),
                chain: chain.clone(),
                handle,
                tag: tag.to_string(),
            });
        }
    }
    out
}

/// Every table of `site` now in the kernel, as (family, name).
pub fn tables_of(site: &str) -> Result<Vec<(String, String)>, FirewallError> {
    let out = nft(&["list", "tables"], None, "list tables")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(fam), Some(name)) if is_table_of(site, name) => {
                    Some((fam.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect())
}

/// Removes every table of `site` and every rule they inserted into the router's own
/// chains (for `down`, also after a crash).
pub fn remove_all(site: &str) -> Result<(), FirewallError> {
    remove_tagged(|tag| is_table_of(site, tag))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tagged_rules_in_a_listing() {
        let listing = r#"table inet filter { # handle 3
	chain forward { # handle 1
		type filter hook forward priority filter; policy drop;
		iifname "br-a" oifname "br-b" ip daddr 239.1.2.3 accept comment "appliance-lab-mroute" # handle 7
		ct state established accept # handle 2
		tcp dport 22 accept comment "ssh" # handle 3
	}
}
table ip nat { # handle 4
	chain post { # handle 1
		oifname "wan" masquerade comment "appliance-lab2-mroute" # handle 9
	}
}
"#;
        let mine = parse_tagged(listing, |t| t == "appliance-lab-mroute");
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
        let all = parse_tagged(listing, |t| t.starts_with("appliance-"));
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].family, "ip");
    }
}
