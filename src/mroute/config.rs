//! What the forwarder should do, from a site's plan or an smcroute.conf: interfaces, routes,
//! joins. Resolution of an upcall against the route templates is a pure function here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::plan::{Plan, firewall::Firewall};

use super::proxy::ProxyConfig;
use super::sys::Family;

/// An interface that becomes a VIF (IPv4) or MIF (IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// smcroute's `phyint … ttl-threshold`: the VIF's threshold (default 1).
    pub threshold: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where it was configured: `multicast.route[0]`, `smcroute.conf:12`.
    pub origin: String,
    pub from: String,
    /// None: any source. A /32 (/128) with a single group is a static (S,G).
    pub source: Option<IpNet>,
    pub group: IpNet,
    /// Outputs, each with the TTL a packet must exceed to leave there.
    pub to: Vec<(String, u8)>,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(self.group.addr())
    }

    /// A single (S,G), installed at start; otherwise a template resolved on upcalls.
    pub fn is_static(&self) -> bool {
        let single = |n: &IpNet| n.prefix_len() == n.max_prefix_len();
        self.source.as_ref().is_some_and(single) && single(&self.group)
    }

    fn matches(&self, iif: &str, source: IpAddr, group: IpAddr) -> bool {
        self.from == iif
            && self.group.contains(&group)
            && self.source.is_none_or(|s| s.contains(&source))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub origin: String,
    pub on: String,
    pub group: IpAddr,
    pub source: Option<IpAddr>,
}

/// The forwarder's whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub table: Option<u32>,
    pub expire: Duration,
    pub vifs: Vec<Iface>,
    pub mifs: Vec<Iface>,
    /// Shared, so a reload that reuses a parsed line reuses its route without a copy.
    pub routes: Vec<Arc<Route>>,
    pub joins: Vec<Join>,
    /// The forwarder's own nftables table (SSDP rewrite, forward accepts).
    pub firewall: Option<Firewall>,
    /// Bridges whose multicast snooping is set.
    pub snooping: Vec<(String, bool)>,
    pub state_dir: PathBuf,
    /// IPv6 by MLD proxying (`[routing.mld_proxy]`); its interfaces are among `mifs`.
    pub proxy: Option<ProxyConfig>,
}

impl Config {
    pub fn from_plan(plan: &Plan) -> Config {
        let m = &plan.multicast;
        let iface = |n: &String| Iface {
            name: n.clone(),
            threshold: 1,
        };
        let routes = m
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    origin: r.origin.clone(),
                    from: r.from.clone(),
                    source: r.source.map(IpNet::from),
                    group: r.group.0,
                    to: r.to.iter().map(|t| (t.clone(), r.ttl_threshold)).collect(),
                })
            })
            .collect();
        let used: Vec<&String> = m
            .vifs
            .iter()
            .chain(&m.mifs)
            .chain(m.joins.iter().map(|j| &j.on))
            .collect();
        Config {
            table: m.table,
            expire: m.expire,
            vifs: m.vifs.iter().map(iface).collect(),
            mifs: m.mifs.iter().map(iface).collect(),
            routes,
            joins: m
                .joins
                .iter()
                .map(|j| Join {
                    origin: j.origin.clone(),
                    on: j.on.clone(),
                    group: j.group,
                    source: j.source,
                })
                .collect(),
            firewall: plan.firewall.iter().find(|f| f.owner == "mroute").cloned(),
            snooping: plan
                .bridges
                .iter()
                .filter(|b| used.contains(&&b.name))
                .filter_map(|b| b.snooping.map(|s| (b.name.clone(), s)))
                .collect(),
            state_dir: plan.state_dir.clone(),
            proxy: plan
                .routing
                .as_ref()
                .and_then(|r| r.mld_proxy.as_ref())
                .map(ProxyConfig::from_plan),
        }
    }

    pub fn ifaces(&self, f: Family) -> &[Iface] {
        match f {
            Family::Ipv4 => &self.vifs,
            Family::Ipv6 => &self.mifs,
        }
    }

    pub fn uses(&self, f: Family) -> bool {
        !self.ifaces(f).is_empty()
    }

    /// What to do with a packet from `source` to `group` that came in on `iif` and has no
    /// entry yet: the first template that matches forwards it, anything else is stopped.
    pub fn resolve(&self, iif: &str, source: IpAddr, group: IpAddr) -> Resolution<'_> {
        if is_link_local(source) {
            return Resolution::Stop("link-local source");
        }
        match self
            .routes
            .iter()
            .find(|r| !r.is_static() && r.matches(iif, source, group))
        {
            Some(r) => Resolution::Forward(r.as_ref()),
            None => Resolution::Stop("no route matches"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution<'a> {
    Forward(&'a Route),
    Stop(&'static str),
}

/// Link-local sources (169.254/16, fe80::/10) never leave their link.
pub fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(from: &str, source: Option<&str>, group: &str, to: &[&str]) -> Route {
        Route {
            origin: format!("r-{group}"),
            from: from.into(),
            source: source.map(|s| s.parse::<IpAddr>().map(IpNet::from).unwrap()),
            group: group
                .parse::<IpNet>()
                .or_else(|_| group.parse::<IpAddr>().map(IpNet::from))
                .unwrap(),
            to: to.iter().map(|t| (t.to_string(), 1)).collect(),
        }
    }

    fn config(routes: Vec<Route>) -> Config {
        Config {
            table: None,
            expire: Duration::from_secs(60),
            vifs: vec![],
            mifs: vec![],
            routes: routes.into_iter().map(Arc::new).collect(),
            joins: vec![],
            firewall: None,
            snooping: vec![],
            state_dir: "/tmp".into(),
            proxy: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn templates_match_on_interface_group_and_source() {
        let c = config(vec![
            route("a", Some("10.0.0.1"), "239.1.1.1", &["b"]),
            route("a", None, "239.2.0.0/16", &["b"]),
            route("b", None, "239.3.3.3", &["a"]),
            route("a", None, "ff3e::/16", &["b"]),
        ]);
        assert!(c.routes[0].is_static());
        assert!(!c.routes[1].is_static());
        match c.resolve("a", ip("10.0.0.9"), ip("239.2.7.7")) {
            Resolution::Forward(r) => assert_eq!(r.origin, "r-239.2.0.0/16"),
            other => panic!("{other:?}"),
        }
        // Wrong interface, unmatched group, and the static route is not a template.
        assert!(matches!(
            c.resolve("b", ip("10.0.0.9"), ip("239.2.7.7")),
            Resolution::Stop(_)
        ));
        assert!(matches!(
            c.resolve("a", ip("10.0.0.9"), ip("239.9.9.9")),
            Resolution::Stop(_)
        ));
        assert!(matches!(
            c.resolve("a", ip("10.0.0.2"), ip("239.1.1.1")),
            Resolution::Stop(_)
        ));
        assert!(matches!(
            c.resolve("a", ip("fd00::1"), ip("ff3e::1234")),
            Resolution::Forward(_)
        ));
    }

    #[test]
    fn link_local_sources_are_stopped() {
        let c = config(vec![
            route("a", None, "239.2.0.0/16", &["b"]),
            route("a", None, "ff3e::/16", &["b"]),
        ]);
        assert_eq!(
            c.resolve("a", ip("169.254.1.1"), ip("239.2.0.1")),
            Resolution::Stop("link-local source")
        );
        assert_eq!(
            c.resolve("a", ip("fe80::1"), ip("ff3e::1")),
            Resolution::Stop("link-local source")
        );
    }
}
