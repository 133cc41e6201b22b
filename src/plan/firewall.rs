//! nftables rules of the site. Each component that needs rules (the multicast forwarder,
//! the monitor relay) has a table of its own, `inet appliance-<site>-<component>`: it
//! applies it when it starts, standalone or under `up`, and removes it when it stops;
//! `down` removes every `appliance-<site>-*` table. The operator's own rules are never touched.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use super::McRoute;
use crate::site::Monitor;

/// Where SSDP and broadcast discovery is turned into multicast.
pub const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Firewall {
    /// The component that applies this table.
    pub owner: String,
    /// `inet appliance-<site>-<owner>`.
    pub family: String,
    pub table: String,
    pub chains: Vec<Chain>,
    /// Chains of the router's own firewall (`"FAMILY TABLE CHAIN"`) that also get this
    /// table's forward rules, inserted at their top and tagged with the table's name:
    /// an `accept` here cannot overrule a `drop` there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accept_in: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Chain {
    pub name: String,
    /// `type filter hook prerouting priority raw; policy accept;`
    pub spec: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rule {
    pub rule: String,
    pub why: String,
}

const PREROUTING: &str = "prerouting";
const FORWARD: &str = "forward";

impl Firewall {
    pub fn new(site: &str, owner: &str) -> Firewall {
        Firewall {
            owner: owner.into(),
            family: "inet".into(),
            table: table_name(site, owner),
            chains: vec![
                Chain {
                    name: PREROUTING.into(),
                    // Stateless: before conntrack, so senders with a fixed source port are
                    // rewritten every time (a nat DNAT only sees a flow's first packet).
                    spec: "type filter hook prerouting priority raw; policy accept;".into(),
                    rules: vec![],
                },
                Chain {
                    name: FORWARD.into(),
                    spec: "type filter hook forward priority filter; policy accept;".into(),
                    rules: vec![],
                },
            ],
            accept_in: vec![],
        }
    }

    /// The `insert rule` commands that put this table's forward rules at the top of each
    /// `accept_in` chain, tagged with `comment "<table>"` so they can be found and removed.
    /// A rule of the other IP version than an `ip`/`ip6` chain is left out.
    pub fn insertions(&self) -> Vec<String> {
        let Some(fwd) = self.chains.iter().find(|c| c.name == FORWARD) else {
            return vec![];
        };
        let mut out = vec![];
        for target in &self.accept_in {
            let fam = target.split_whitespace().next().unwrap_or_default();
            // Inserted one by one at the top: reverse, so they end up in plan order.
            for r in fwd.rules.iter().rev() {
                let v6 = r.rule.contains(" ip6 ");
                if (fam == "ip" && v6) || (fam == "ip6" && !v6) {
                    continue;
                }
                let chain = target.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push(format!(
                    "insert rule {chain} {} comment \"{}\"",
                    r.rule, self.table
                ));
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.chains.iter().all(|c| c.rules.is_empty())
    }

    fn push(&mut self, chain: &str, rule: String, why: String) {
        let c = self
            .chains
            .iter_mut()
            .find(|c| c.name == chain)
            .expect("chain exists");
        if !c.rules.iter().any(|r| r.rule == rule) {
            c.rules.push(Rule { rule, why });
        }
    }

    /// Local broadcast to the SSDP ports becomes 239.255.255.250 so it can be routed.
    pub fn ssdp(&mut self, bridges: &[String], ports: &[u16]) {
        let ifs = set(bridges.iter().map(|b| format!("\"{b}\"")));
        let ports = set(ports.iter().map(u16::to_string));
        let m = format!("iifname {ifs} fib daddr type broadcast udp dport {ports}");
        self.push(
            PREROUTING,
            format!("{m} ip ttl 1 ip ttl set 2"),
            "a TTL-1 broadcast could not cross a router: give it one more hop".into(),
        );
        self.push(
            PREROUTING,
            format!("{m} notrack ip daddr set {SSDP_GROUP}"),
            "SSDP broadcast becomes multicast, to be forwarded like any group".into(),
        );
    }

    /// Let routed multicast through a default-drop forward policy.
    pub fn forward(&mut self, r: &McRoute) {
        let fam = family(r.group.0.addr());
        let src = r
            .source
            .map(|s| format!(" {fam} saddr {s}"))
            .unwrap_or_default();
        let outs = set(r.to.iter().map(|t| format!("\"{t}\"")));
        self.push(
            FORWARD,
            format!(
                "iifname \"{}\" oifname {outs}{src} {fam} daddr {} accept",
                r.from, r.group
            ),
            format!("{} forwards it", r.origin),
        );
    }

    /// Hand a monitor's datagrams to the local daemon's address and port, statelessly.
    /// Delivery to 127.0.0.0/8 needs `route_localnet` on the interface, which would let
    /// every host there reach every loopback-bound service of the router: a rule ahead of
    /// every rewrite drops what arrives there already addressed to 127.0.0.0/8, so only
    /// the monitor's own flow (rewritten after it) gets through.
    pub fn deliver(&mut self, m: &Monitor) {
        let fam = family(m.group);
        if let IpAddr::V4(d) = m.deliver.ip()
            && d.is_loopback()
        {
            self.guard_loopback(&m.interface);
        }
        let mut rule = format!(
            "iifname \"{}\" {fam} daddr {} udp dport {} notrack",
            m.interface, m.group, m.port
        );
        if !m.deliver.ip().is_unspecified() {
            rule.push_str(&format!(" {fam} daddr set {}", m.deliver.ip()));
        }
        if m.deliver.port() != m.port {
            rule.push_str(&format!(" udp dport set {}", m.deliver.port()));
        }
        self.push(
            PREROUTING,
            rule,
            format!("monitor {} delivers to {}", m.name, m.deliver),
        );
    }

    /// Drops what arrives on `iface` addressed to 127.0.0.0/8, at the top of prerouting
    /// (before any rewrite to a loopback address).
    fn guard_loopback(&mut self, iface: &str) {
        let rule = format!("iifname \"{iface}\" ip daddr 127.0.0.0/8 counter drop");
        let c = self
            .chains
            .iter_mut()
            .find(|c| c.name == PREROUTING)
            .expect("chain exists");
        if !c.rules.iter().any(|r| r.rule == rule) {
            c.rules.insert(
                0,
                Rule {
                    rule,
                    why: format!(
                        "route_localnet on {iface} opens the router's loopback services to that LAN: only the monitor's rewritten flow may reach them"
                    ),
                },
            );
        }
    }

    /// The whole table as one `nft -f` transaction that replaces any previous version.
    pub fn ruleset(&self) -> String {
        let t = format!("{} {}", self.family, self.table);
        let mut s = format!(
            "# Written by appliance. Replaces the whole table atomically.\ntable {t}\ndelete table {t}\ntable {t} {{\n"
        );
        for c in self.chains.iter().filter(|c| !c.rules.is_empty()) {
            s.push_str(&format!("\tchain {} {{\n\t\t{}\n", c.name, c.spec));
            for r in &c.rules {
                s.push_str(&format!("\t\t# {}\n\t\t{}\n", r.why, r.rule));
            }
            s.push_str("\t}\n");
        }
        s.push_str("}\n");
        s
    }
}

/// Name of a component's table.
pub fn table_name(site: &str, owner: &str) -> String {
    format!("{}{owner}", table_prefix(site))
}

fn table_prefix(site: &str) -> String {
    format!("appliance-{site}-")
}

/// The components that own a table.
pub const OWNERS: [&str; 2] = ["mroute", "monitor"];

/// True if `name` is one of the tables of `site` (exactly: site "lab" does not own the
/// tables of site "lab-2").
pub fn is_table_of(site: &str, name: &str) -> bool {
    OWNERS.iter().any(|o| table_name(site, o) == name)
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "ip" } else { "ip6" }
}

/// nft syntax: a lone value, or `{ a, b }`.
fn set(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.len() == 1 {
        v.into_iter().next().unwrap_or_default()
    } else {
        format!("{{ {} }}", v.join(", "))
    }
}
