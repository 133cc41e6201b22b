//! Checks a parsed site for everything serde cannot see: names, references between
//! sections, address ranges, kernel limits. Collects every problem; touches nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::model::*;
use crate::names::{self, SITE_NAME_MAX, check_ifname, check_object_name};

/// One problem: the field's path and what is wrong, saying what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// The kernel has this many multicast VIFs (MAXVIFS) and MIFs (MAXMIFS).
pub const MAX_VIFS: usize = 32;
/// RFC 3306 group ids carry a 31-bit service number.
pub const MAX_SERVICE_NUMBER: u32 = 0x7fff_ffff;
/// A namespace's name is also its host name and avahi's `host-name`: one DNS label
/// (RFC 1035: at most 63 bytes; `sethostname` takes at most 64).
pub const NETNS_NAME_MAX: usize = 63;
/// avahi's reflector misbehaves with longer filter lists (docs/architecture.md, "Facts").
pub const MAX_REFLECT_FILTERS_LEN: usize = 255;

struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn result(&mut self, path: impl Into<String>, r: Result<(), String>) {
        if let Err(m) = r {
            self.err(path, m);
        }
    }
}

/// Which parts of a site are whole. A part that did not deserialize is left out of the
/// `Site` checked, and the checks that need it whole (a name to derive from, the list of
/// VLANs to look names up in) are skipped rather than report what is not wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// `[site]` deserialized: its name is the real one.
    pub site: bool,
    /// Every `[[vlan]]` deserialized: a name not among them is unknown.
    pub vlans: bool,
}

impl Known {
    pub const ALL: Known = Known {
        site: true,
        vlans: true,
    };
}

pub fn validate(site: &Site) -> Vec<Problem> {
    validate_parts(site, Known::ALL)
}

/// `validate` of a site some parts of which did not deserialize (see `Known`).
pub fn validate_parts(site: &Site, known: Known) -> Vec<Problem> {
    let mut c = Check {
        problems: Vec::new(),
    };
    if known.site {
        check_site(&mut c, site);
    }
    check_vlans(&mut c, site);
    check_reflectors(&mut c, site, known.vlans);
    if let Some(m) = &site.multicast {
        check_multicast(&mut c, m);
    }
    if let Some(t) = &site.translator {
        check_translator(&mut c, t);
    }
    if let Some(h) = &site.headend {
        check_headend(&mut c, h);
    }
    check_monitors(&mut c, &site.monitor);
    if let Some(r) = &site.routing {
        check_routing(&mut c, site, r);
    }
    if known.site {
        check_derived_names(&mut c, site);
    }
    c.problems
}

fn check_site(c: &mut Check, site: &Site) {
    let name = &site.site.name;
    c.result("site.name", check_object_name(name));
    if name.len() > SITE_NAME_MAX {
        c.err(
            "site.name",
            format!(
                "{name:?} is {} bytes; at most {SITE_NAME_MAX}, because it prefixes derived \
                 interface names of at most 15 bytes (like {:?})",
                name.len(),
                format!("{name}-iot")
            ),
        );
    }
    if let Some(dir) = &site.site.state_dir {
        c.result("site.state_dir", crate::names::check_state_dir(dir));
    }
}

fn check_vlans(c: &mut Check, site: &Site) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bridges: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, v) in site.vlan.iter().enumerate() {
        let p = format!("vlan[{i}]");
        c.result(format!("{p}.name"), check_object_name(&v.name));
        if v.name.len() > names::IFNAME_MAX {
            c.err(
                format!("{p}.name"),
                format!(
                    "{:?} is {} bytes; at most {} since it names the VLAN's interface inside its namespace",
                    v.name,
                    v.name.len(),
                    names::IFNAME_MAX
                ),
            );
        }
        if let Some(first) = names.insert(&v.name, i) {
            c.err(
                format!("{p}.name"),
                format!(
                    "{:?} is the name of vlan[{first}] too; VLAN names must differ",
                    v.name
                ),
            );
            names.insert(&v.name, first);
        }
        c.result(format!("{p}.bridge"), check_ifname(&v.bridge));
        if let Some(other) = bridges.get(v.bridge.as_str()) {
            c.err(
                format!("{p}.bridge"),
                format!("{:?} is used by vlan {other:?} too", v.bridge),
            );
        } else {
            bridges.insert(&v.bridge, &v.name);
        }
        let trusted = v.trust == Trust::Trusted;
        match &v.address {
            Some(Address4::Static(net)) => {
                if trusted {
                    c.err(format!("{p}.address"), trusted_has_no_namespace("address"));
                } else if !net.addr().is_ipv4() {
                    c.err(
                        format!("{p}.address"),
                        format!("{net} is IPv6; put it in address6, and an IPv4 address here"),
                    );
                } else {
                    c.result(format!("{p}.address"), check_host_address(net));
                }
            }
            Some(Address4::Dhcp) if trusted => {
                c.err(format!("{p}.address"), trusted_has_no_namespace("address"))
            }
            _ => {}
        }
        if let Some(net) = &v.address6 {
            if trusted {
                c.err(
                    format!("{p}.address6"),
                    trusted_has_no_namespace("address6"),
                );
            } else if !net.addr().is_ipv6() {
                c.err(
                    format!("{p}.address6"),
                    format!("{net} is IPv4; put it in address, and an IPv6 address here"),
                );
            } else {
                c.result(format!("{p}.address6"), check_host_address(net));
            }
        }
        match v.mac {
            MacPolicy::Literal(m) if trusted => {
                let _ = m;
                c.err(format!("{p}.mac"), trusted_has_no_namespace("mac"));
            }
            MacPolicy::Literal(m) if !m.is_unicast() => c.err(
                format!("{p}.mac"),
                format!(
                    "{m} is a multicast MAC (lowest bit of the first byte set); give a unicast one"
                ),
            ),
            MacPolicy::Literal(m) if m.0 == [0; 6] => {
                c.err(format!("{p}.mac"), "00:00:00:00:00:00 is not a usable MAC")
            }
            _ => {}
        }
    }
}

fn trusted_has_no_namespace(key: &str) -> String {
    format!(
        "a trusted VLAN gets no namespace of its own, so {key} would be ignored; remove it, \
         or set trust = \"untrusted\""
    )
}

fn check_reflectors(c: &mut Check, site: &Site, vlans_known: bool) {
    let vlans: BTreeMap<&str, &Vlan> = site.vlan.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in site.reflector.iter().enumerate() {
        let p = format!("reflector[{i}]");
        c.result(format!("{p}.name"), check_object_name(&r.name));
        if let Some(first) = names.insert(&r.name, i) {
            c.err(
                format!("{p}.name"),
                format!(
                    "{:?} is the name of reflector[{first}] too; reflector names must differ",
                    r.name
                ),
            );
            names.insert(&r.name, first);
        }
        let distinct: BTreeSet<&str> = r.vlans.iter().map(String::as_str).collect();
        if distinct.len() < 2 {
            c.err(
                format!("{p}.vlans"),
                format!(
                    "a reflector needs at least two VLANs to reflect between; it names {}",
                    distinct.len()
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (j, v) in r.vlans.iter().enumerate() {
            if vlans_known && !vlans.contains_key(v.as_str()) {
                c.err(
                    format!("{p}.vlans[{j}]"),
                    format!("no vlan is named {v:?}; known: {}", known(vlans.keys())),
                );
            }
            if !seen.insert(v) {
                c.err(format!("{p}.vlans[{j}]"), format!("{v:?} is listed twice"));
            }
        }
        if let Some(services) = &r.services {
            if services.is_empty() {
                c.err(
                    format!("{p}.services"),
                    "an empty list lets nothing cross; remove the key to reflect every type",
                );
            }
            for (j, s) in services.iter().enumerate() {
                c.result(format!("{p}.services[{j}]"), check_service_type(s));
            }
            let filters = reflect_filters(services);
            if filters.len() > MAX_REFLECT_FILTERS_LEN {
                c.err(
                    format!("{p}.services"),
                    format!(
                        "the filter list is {} characters; avahi's reflector breaks past about \
                         {MAX_REFLECT_FILTERS_LEN}: split it across reflectors",
                        filters.len()
                    ),
                );
            }
        }
        for (vlan, addr) in &r.addresses {
            let ap = format!("{p}.addresses.{vlan}");
            if !r.vlans.contains(vlan) {
                c.err(
                    &ap,
                    format!(
                        "{vlan:?} is not one of this reflector's vlans ({})",
                        r.vlans.join(", ")
                    ),
                );
                continue;
            }
            c.result(&ap, check_host_address(addr));
            let Some(v) = vlans.get(vlan.as_str()) else {
                continue;
            };
            let same_family = match (addr, &v.address, &v.address6) {
                (IpNet::V4(_), Some(Address4::Static(n)), _) => Some(n),
                (IpNet::V6(_), _, Some(n)) => Some(n),
                _ => None,
            };
            if let Some(vnet) = same_family {
                if !vnet.trunc().contains(&addr.addr()) {
                    c.err(
                        &ap,
                        format!("{addr} is outside vlan {vlan:?}'s subnet {}", vnet.trunc()),
                    );
                } else if vnet.addr() == addr.addr() {
                    c.err(
                        &ap,
                        format!("{} is vlan {vlan:?}'s own address", addr.addr()),
                    );
                }
            }
        }
    }
}

/// avahi's `reflect-filters` value for a list of service types.
pub fn reflect_filters(services: &[String]) -> String {
    services
        .iter()
        .map(|s| {
            if s.ends_with(".local") {
                s.clone()
            } else {
                format!("{s}.local")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_service_type(s: &str) -> Result<(), String> {
    let base = s.strip_suffix(".local").unwrap_or(s);
    let mut parts = base.split('.');
    let (name, proto, rest) = (parts.next(), parts.next(), parts.next());
    let ok = match (name, proto, rest) {
        (Some(n), Some(p), None) => {
            n.len() > 1
                && n.starts_with('_')
                && n[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                && (p == "_tcp" || p == "_udp")
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS-SD service type like \"_raop._tcp\" or \"_ipp._tcp.local\""
        ))
    }
}

/// One `[[multicast.route]]`; `seen` holds the (from, source, group) of the routes
/// before it.
fn check_route<'a>(
    c: &mut Check,
    i: usize,
    r: &'a Route,
    seen: &mut BTreeMap<(&'a str, Option<IpAddr>, GroupSpec), usize>,
) {
    let p = format!("multicast.route[{i}]");
    c.result(format!("{p}.from"), check_ifname(&r.from));
    c.result(format!("{p}.group"), check_routable_group(&r.group));
    if let Some(src) = r.source {
        c.result(format!("{p}.source"), check_source(src, r.group.0.addr()));
    }
    if r.to.is_empty() {
        c.err(
            format!("{p}.to"),
            "name at least one interface to forward to",
        );
    }
    let mut outs = BTreeSet::new();
    for (j, t) in r.to.iter().enumerate() {
        c.result(format!("{p}.to[{j}]"), check_ifname(t));
        if *t == r.from {
            c.err(
                format!("{p}.to[{j}]"),
                format!(
                    "{t:?} is the route's own from; multicast is never sent back where it came from"
                ),
            );
        }
        if !outs.insert(t) {
            c.err(format!("{p}.to[{j}]"), format!("{t:?} is listed twice"));
        }
    }
    if r.ttl_threshold > 1 && r.group.0.addr().is_ipv6() {
        c.err(
            format!("{p}.ttl_threshold"),
            "the kernel's IPv6 multicast routes have no per-output hop-limit threshold \
             (they forward hop limit >= 2 everywhere); leave it at 1 for IPv6 groups",
        );
    }
    if r.ttl_threshold == 0 {
        c.err(
            format!("{p}.ttl_threshold"),
            "0 would forward TTL-1 packets off their link; use 1 (forward TTL >= 2) or more",
        );
    }
    let key = (r.from.as_str(), r.source, r.group);
    if let Some(first) = seen.insert(key, i) {
        c.err(
            format!("{p}.group"),
            format!(
                "multicast.route[{first}] has the same from, source and group; merge their to lists"
            ),
        );
    }
}

fn check_multicast(c: &mut Check, m: &Multicast) {
    let mut ifaces_v4 = BTreeSet::new();
    let mut ifaces_v6 = BTreeSet::new();
    let mut seen = BTreeMap::new();
    for (i, r) in m.route.iter().enumerate() {
        check_route(c, i, r, &mut seen);
        let set = if r.group.0.addr().is_ipv4() {
            &mut ifaces_v4
        } else {
            &mut ifaces_v6
        };
        set.insert(r.from.clone());
        set.extend(r.to.iter().cloned());
    }
    for (i, j) in m.join.iter().enumerate() {
        let p = format!("multicast.join[{i}]");
        c.result(format!("{p}.on"), check_ifname(&j.on));
        c.result(format!("{p}.group"), check_group(j.group));
        if let Some(src) = j.source {
            c.result(format!("{p}.source"), check_source(src, j.group));
        }
        // A joined interface becomes a VIF/MIF too.
        if j.group.is_ipv4() {
            ifaces_v4.insert(j.on.clone());
        } else {
            ifaces_v6.insert(j.on.clone());
        }
    }
    for (i, chain) in m.accept_in.iter().enumerate() {
        c.result(format!("multicast.accept_in[{i}]"), check_chain_ref(chain));
    }
    if let Some(s) = &m.ssdp {
        let distinct: BTreeSet<&String> = s.bridges.iter().collect();
        if distinct.len() < 2 {
            c.err(
                "multicast.ssdp.bridges",
                "name at least two bridges for SSDP to cross between",
            );
        }
        for (j, b) in s.bridges.iter().enumerate() {
            c.result(format!("multicast.ssdp.bridges[{j}]"), check_ifname(b));
        }
        if s.ports.is_empty() {
            c.err(
                "multicast.ssdp.ports",
                "name at least one UDP port, usually 1900",
            );
        }
        for (j, port) in s.ports.iter().enumerate() {
            if *port == 0 {
                c.err(format!("multicast.ssdp.ports[{j}]"), "port 0 is not a port");
            }
        }
        ifaces_v4.extend(s.bridges.iter().cloned());
    }
    if m.expire.as_secs() < 1 {
        c.err(
            "multicast.expire",
            "learned routes need at least \"1s\" before they expire",
        );
    }
    for (set, what) in [(&ifaces_v4, "IPv4 VIFs"), (&ifaces_v6, "IPv6 MIFs")] {
        if set.len() > MAX_VIFS {
            c.err(
                "multicast.route",
                format!(
                    "the routes and joins name {} interfaces, but the kernel has {MAX_VIFS} {what} at most",
                    set.len()
                ),
            );
        }
    }
}

fn check_routing(c: &mut Check, site: &Site, r: &Routing) {
    check_ifname_list(c, "routing.interfaces", &r.interfaces);
    if let Some(igmp) = &r.igmp {
        check_ifname_list(c, "routing.igmp", igmp);
    }
    match r.engine {
        Engine::Static => {
            for (key, set) in [
                ("routing.interfaces", !r.interfaces.is_empty()),
                ("routing.igmp", r.igmp.is_some()),
                ("routing.rp", r.rp.is_some()),
            ] {
                if set {
                    c.err(
                        key,
                        "only with engine = \"frr\" (the static engine routes only \
                         [[multicast.route]])",
                    );
                }
            }
        }
        Engine::Frr => {
            if r.interfaces.is_empty() {
                c.err(
                    "routing.interfaces",
                    "name the interfaces PIM runs on (towards other routers and receivers)",
                );
            }
            match &r.rp {
                None => c.err(
                    "routing.rp",
                    "missing: PIM-SM needs a rendezvous point for any-source groups, \
                     rp = \"ADDRESS\" or [[routing.rp]] tables",
                ),
                Some(RpSpec::Each(v)) if v.is_empty() => {
                    c.err("routing.rp", "name at least one rendezvous point")
                }
                Some(rp) => check_rps(c, rp),
            }
            check_frr_owns_ipv4(c, site);
        }
    }
    if let Some(p) = &r.mld_proxy {
        check_mld_proxy(c, site, p);
    }
}

fn check_ifname_list(c: &mut Check, key: &str, names: &[String]) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        c.result(format!("{key}[{i}]"), check_ifname(n));
        if !seen.insert(n) {
            c.err(format!("{key}[{i}]"), format!("{n:?} is named twice"));
        }
    }
}

fn check_rps(c: &mut Check, rp: &RpSpec) {
    let all: ipnet::Ipv4Net = "224.0.0.0/4".parse().expect("a valid prefix");
    let ssm: ipnet::Ipv4Net = "232.0.0.0/8".parse().expect("a valid prefix");
    let (at, ranges) = match rp {
        RpSpec::One(_) => (None, rp.ranges()),
        RpSpec::Each(v) => (Some(()), v.clone()),
    };
    let mut seen = BTreeSet::new();
    for (i, r) in ranges.iter().enumerate() {
        let p = match at {
            None => "routing.rp".to_string(),
            Some(()) => format!("routing.rp[{i}]"),
        };
        let a = r.address;
        if a.is_multicast() || a.is_unspecified() || a.is_broadcast() || a.is_loopback() {
            c.err(
                if at.is_some() {
                    format!("{p}.address")
                } else {
                    p.clone()
                },
                format!("{a} cannot be a rendezvous point: give a router's unicast address"),
            );
        }
        if at.is_some() {
            if !all.contains(&r.group) {
                c.err(
                    format!("{p}.group"),
                    format!("{} is not a multicast range (within 224.0.0.0/4)", r.group),
                );
            } else if ssm.contains(&r.group) {
                c.err(
                    format!("{p}.group"),
                    format!(
                        "{} is source-specific (232.0.0.0/8): SSM needs no rendezvous point",
                        r.group
                    ),
                );
            }
            if !seen.insert(r.group) {
                c.err(
                    format!("{p}.group"),
                    format!("{} has a rendezvous point already", r.group),
                );
            }
        }
    }
}

/// With `engine = "frr"` FRR's pimd owns the kernel's IPv4 multicast table (MRT_INIT is
/// one socket per table): the forwarder may not route IPv4 too.
fn check_frr_owns_ipv4(c: &mut Check, site: &Site) {
    let Some(m) = &site.multicast else { return };
    const WHY: &str = "with routing.engine = \"frr\" FRR's pimd owns the kernel's IPv4 \
                       multicast table; let PIM route it (routing.interfaces) or use \
                       engine = \"static\"";
    for (i, r) in m.route.iter().enumerate() {
        if r.group.0.addr().is_ipv4() {
            c.err(format!("multicast.route[{i}]"), WHY);
        }
    }
    for (i, j) in m.join.iter().enumerate() {
        if j.group.is_ipv4() {
            c.err(format!("multicast.join[{i}]"), WHY);
        }
    }
    if m.ssdp.is_some() {
        c.err("multicast.ssdp", WHY);
    }
}

fn check_mld_proxy(c: &mut Check, site: &Site, p: &MldProxy) {
    c.result("routing.mld_proxy.upstream", check_ifname(&p.upstream));
    check_ifname_list(c, "routing.mld_proxy.downstream", &p.downstream);
    if p.downstream.is_empty() {
        c.err(
            "routing.mld_proxy.downstream",
            "name at least one interface with receivers behind it",
        );
    }
    for (i, d) in p.downstream.iter().enumerate() {
        if *d == p.upstream {
            c.err(
                format!("routing.mld_proxy.downstream[{i}]"),
                format!("{d:?} is the upstream: a proxy never forwards to its upstream"),
            );
        }
    }
    if p.downstream.len() + 1 > MAX_VIFS {
        c.err(
            "routing.mld_proxy.downstream",
            format!("the kernel has {MAX_VIFS} IPv6 MIFs at most, upstream included"),
        );
    }
    if let Some(h) = &site.headend {
        for (i, d) in p.downstream.iter().enumerate() {
            if h.interfaces.contains(d) {
                c.err(
                    format!("routing.mld_proxy.downstream[{i}]"),
                    format!(
                        "the headend answers joins on {d:?} already; one querier per link \
                         and router"
                    ),
                );
            }
        }
    }
    check_querier_timers(
        c,
        "routing.mld_proxy",
        p.robustness,
        p.query_interval,
        p.query_response_interval,
        p.last_listener_interval,
    );
}

/// `::ffff:a.b.c.d` is an IPv4 address in IPv6 clothing: a socket bound to it, a
/// source matched against it or a route for it never sees the IPv4 packets it means.
fn check_not_mapped(ip: IpAddr) -> Result<(), String> {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Err(format!(
                "{v6} is an IPv4-mapped IPv6 address; write the IPv4 address {v4} itself"
            )),
            None => Ok(()),
        },
        IpAddr::V4(_) => Ok(()),
    }
}

fn check_translator(c: &mut Check, t: &Translator) {
    c.result("translator.unicast", check_not_mapped(t.unicast.ip()));
    for (i, net) in t.allow.iter().flatten().enumerate() {
        c.result(
            format!("translator.allow[{i}]"),
            check_not_mapped(net.addr()),
        );
    }
    if t.unicast.ip().is_multicast() {
        c.err(
            "translator.unicast",
            format!(
                "{} is multicast; give the unicast address sources send to",
                t.unicast.ip()
            ),
        );
    }
    if t.unicast.port() == 0 {
        c.err(
            "translator.unicast",
            "port 0; give the port sources send to, e.g. 9001",
        );
    }
    let space = t.space.trunc();
    let (max_len, least) = if space.addr().is_ipv4() {
        (30, "/30")
    } else {
        (126, "/126")
    };
    if !is_multicast_net(&space) {
        c.err(
            "translator.space",
            format!("{space} is not multicast; use a range such as 232.0.0.0/8 or ff3e::/96"),
        );
    } else if space.prefix_len() > max_len {
        c.err(
            "translator.space",
            format!(
                "{space} has fewer than 4 addresses, and the first and last are never used; \
                 give a {least} or wider"
            ),
        );
    } else if overlaps_link_local_groups(&space) {
        c.err(
            "translator.space",
            format!("{space} includes link-local groups, which are never routed"),
        );
    }
    if t.port == 0 {
        c.err(
            "translator.port",
            "port 0 is not a port; the original uses 9002",
        );
    }
    if t.ttl == 0 {
        c.err(
            "translator.ttl",
            "TTL 0 never leaves the host; the original uses 32",
        );
    }
    if t.idle.as_secs() < 1 {
        c.err("translator.idle", "at least \"1s\"; the default is \"60s\"");
    }
    if let Some(i) = &t.interface {
        c.result("translator.interface", check_ifname(i));
    }
    if t.max_flows == 0 {
        c.err("translator.max_flows", "0 would refuse every flow");
    }
    if let Some(url) = &t.menu {
        c.result("translator.menu", check_http_url(url));
    }
}

fn check_headend(c: &mut Check, h: &Headend) {
    if h.interfaces.is_empty() {
        c.err(
            "headend.interfaces",
            "name at least one interface where receivers' joins are heard",
        );
    }
    for (i, name) in h.interfaces.iter().enumerate() {
        c.result(format!("headend.interfaces[{i}]"), check_ifname(name));
    }
    if h.prefix.prefix_len() > 64 {
        c.err(
            "headend.prefix",
            format!(
                "{} is longer than /64; RFC 3306 groups carry at most 64 prefix bits: give a /64 or shorter",
                h.prefix
            ),
        );
    }
    if h.prefix.addr().is_multicast() {
        c.err(
            "headend.prefix",
            format!("{} is multicast; give the site's unicast prefix", h.prefix),
        );
    }
    let mut numbers = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (i, s) in h.service.iter().enumerate() {
        let p = format!("headend.service[{i}]");
        if s.number > MAX_SERVICE_NUMBER {
            c.err(
                format!("{p}.number"),
                format!(
                    "{} does not fit in 31 bits; service numbers go from 0 to {MAX_SERVICE_NUMBER}",
                    s.number
                ),
            );
        }
        if let Some(first) = numbers.insert(s.number, i) {
            c.err(
                format!("{p}.number"),
                format!("{} is the number of headend.service[{first}] too", s.number),
            );
        }
        if s.name.trim().is_empty() {
            c.err(
                format!("{p}.name"),
                "give the service a name; it goes into the SDP",
            );
        }
        if let Some(first) = names.insert(s.name.as_str(), i) {
            c.err(
                format!("{p}.name"),
                format!("{:?} is the name of headend.service[{first}] too", s.name),
            );
        }
        match (&s.command, &s.url) {
            (Some(_), Some(_)) => c.err(format!("{p}.url"), "give either command or url, not both"),
            (None, None) => c.err(
                format!("{p}.command"),
                "missing: give a command (with {rtp}) or a url",
            ),
            (Some(cmd), None) => match shell_words::split(cmd) {
                Err(e) => c.err(
                    format!("{p}.command"),
                    format!("cannot split into words: {e}"),
                ),
                Ok(words) if words.is_empty() => c.err(format!("{p}.command"), "empty command"),
                Ok(words) if !words.iter().any(|w| w.contains("{rtp}")) => c.err(
                    format!("{p}.command"),
                    "the command must send RTP to {rtp} (the headend fills in the URL)",
                ),
                Ok(_) => {}
            },
            (None, Some(url)) => c.result(format!("{p}.url"), check_http_url(url)),
        }
    }
    check_headend_timers(c, h);
    check_headend_sources(c, h);
    check_directories(c, h);
}

/// Timer limits of the exponential codes: IGMPv3's Max Resp Code reaches 31744 tenths of
/// a second, QQIC 31744 s (RFC 3376 §4.1.1, §4.1.7; MLDv2's are larger, RFC 9777 §5.1.3).
const MAX_RESPONSE_CODE: Duration = Duration::from_millis(3_174_400);
const MAX_QQIC: Duration = Duration::from_secs(31_744);

/// The querier's timers of `[headend]` and `[routing.mld_proxy]`.
fn check_querier_timers(
    c: &mut Check,
    section: &str,
    robustness: u8,
    query_interval: Duration,
    query_response_interval: Duration,
    last_listener_interval: Duration,
) {
    if robustness == 0 {
        c.err(
            format!("{section}.robustness"),
            "0 is not allowed (RFC 9777 §9.1); the default is 2, raise it on lossy links",
        );
    }
    if query_interval < Duration::from_secs(1) || query_interval > MAX_QQIC {
        c.err(
            format!("{section}.query_interval"),
            format!(
                "{} is outside 1s..{}; the default is \"125s\"",
                humantime::format_duration(query_interval),
                humantime::format_duration(MAX_QQIC)
            ),
        );
    }
    if query_response_interval < Duration::from_millis(100)
        || query_response_interval > MAX_RESPONSE_CODE
    {
        c.err(
            format!("{section}.query_response_interval"),
            format!(
                "{} is outside 100ms..{}; the default is \"10s\"",
                humantime::format_duration(query_response_interval),
                humantime::format_duration(MAX_RESPONSE_CODE)
            ),
        );
    } else if query_response_interval >= query_interval {
        c.err(
            format!("{section}.query_response_interval"),
            "must be shorter than query_interval (RFC 9777 §9.3), or listeners' answers \
             overlap the next query",
        );
    }
    if last_listener_interval < Duration::from_millis(100)
        || last_listener_interval > MAX_RESPONSE_CODE
    {
        c.err(
            format!("{section}.last_listener_interval"),
            format!(
                "{} is outside 100ms..{}; the default is \"1s\"",
                humantime::format_duration(last_listener_interval),
                humantime::format_duration(MAX_RESPONSE_CODE)
            ),
        );
    }
}

fn check_headend_timers(c: &mut Check, h: &Headend) {
    check_querier_timers(
        c,
        "headend",
        h.robustness,
        h.query_interval,
        h.query_response_interval,
        h.last_listener_interval,
    );
    if h.last_listener_count == Some(0) {
        c.err(
            "headend.last_listener_count",
            "0 would stop a stream on any leave without asking who still listens; at least 1",
        );
    }
    if h.startup_query_count == Some(0) {
        c.err("headend.startup_query_count", "at least 1");
    }
    if let Some(d) = h.startup_query_interval
        && (d < Duration::from_millis(100) || d > h.query_interval)
    {
        c.err(
            "headend.startup_query_interval",
            "between 100ms and query_interval; the default is a quarter of query_interval",
        );
    }
}

fn check_headend_sources(c: &mut Check, h: &Headend) {
    if h.user.is_empty() || h.user == "root" || h.user == "0" {
        c.err(
            "headend.user",
            format!(
                "{:?}: sources run as an unprivileged user; the default is \"nobody\"",
                h.user
            ),
        );
    }
    if let Some(d) = h.sap_interval
        && d < Duration::from_secs(1)
    {
        c.err(
            "headend.sap_interval",
            "at least \"1s\"; the default is RFC 2974's (300 s or more)",
        );
    }
    if h.max_sources == 0 {
        c.err("headend.max_sources", "0 would never start a source");
    }
    if h.stall < Duration::from_millis(100) {
        c.err("headend.stall", "at least \"100ms\"; the default is \"5s\"");
    }
    if let Some(space) = h.ipv4_space {
        let space = space.trunc();
        if !space.network().is_multicast() {
            c.err(
                "headend.ipv4_space",
                format!("{space} is not multicast; use a range such as 239.10.0.0/16"),
            );
        } else if overlaps_link_local_groups(&IpNet::V4(space)) {
            c.err(
                "headend.ipv4_space",
                format!("{space} includes link-local groups 224.0.0.0/24, which are never routed"),
            );
        }
        let size = 1u64 << (32 - space.prefix_len());
        for (i, s) in h.service.iter().enumerate() {
            if u64::from(s.number) >= size {
                c.err(
                    format!("headend.service[{i}].number"),
                    format!(
                        "{} has no IPv4 group: ipv4_space {space} holds numbers 0 to {}; \
                         widen it or renumber",
                        s.number,
                        size - 1
                    ),
                );
            }
        }
    }
}

/// The numbers a directory's block holds, as a half-open range.
pub fn directory_block(d: &Directory) -> Option<std::ops::Range<u64>> {
    let first = u64::from(d.first);
    match (d.count, d.bits) {
        (Some(n), None) => Some(first..first + u64::from(n)),
        (None, Some(b)) if b <= 31 => Some(first..first + (1u64 << b)),
        _ => None,
    }
}

fn check_directories(c: &mut Check, h: &Headend) {
    let mut names = BTreeMap::new();
    let mut blocks: Vec<(std::ops::Range<u64>, usize)> = vec![];
    for (i, d) in h.directory.iter().enumerate() {
        let p = format!("headend.directory[{i}]");
        c.result(format!("{p}.name"), check_object_name(&d.name));
        if let Some(first) = names.insert(d.name.as_str(), i) {
            c.err(
                format!("{p}.name"),
                format!("{:?} is the name of headend.directory[{first}] too", d.name),
            );
        }
        match (d.count, d.bits) {
            (Some(_), Some(_)) => c.err(format!("{p}.bits"), "give either count or bits, not both"),
            (None, None) => c.err(
                format!("{p}.count"),
                "missing: give count (how many numbers from first) or bits (2^bits numbers)",
            ),
            (Some(0), None) => c.err(format!("{p}.count"), "0 numbers: at least 1"),
            (None, Some(b)) if b > 31 => c.err(format!("{p}.bits"), "at most 31"),
            (None, Some(b)) if b < 31 && d.first & ((1u32 << b) - 1) != 0 => c.err(
                format!("{p}.first"),
                format!(
                    "{:#x} is not a multiple of 2^{b}: with bits, the high bits pick the \
                     directory and the low {b} the entry",
                    d.first
                ),
            ),
            _ => {}
        }
        if let Some(r) = directory_block(d) {
            if r.end - 1 > u64::from(MAX_SERVICE_NUMBER) {
                c.err(
                    format!("{p}.first"),
                    format!(
                        "the block {:#x}..={:#x} goes past the 31-bit service numbers",
                        r.start,
                        r.end - 1
                    ),
                );
            }
            for (other, j) in &blocks {
                if other.start < r.end && r.start < other.end {
                    c.err(
                        format!("{p}.first"),
                        format!("its block overlaps headend.directory[{j}]'s"),
                    );
                }
            }
            for (j, s) in h.service.iter().enumerate() {
                if r.contains(&u64::from(s.number)) {
                    c.err(
                        format!("headend.service[{j}].number"),
                        format!(
                            "{} is in the block of headend.directory[{i}] ({:?}); give it a \
                             number outside",
                            s.number, d.name
                        ),
                    );
                }
            }
            blocks.push((r, i));
        }
        match (&d.playlist, &d.commands) {
            (Some(_), Some(_)) => c.err(
                format!("{p}.commands"),
                "give either playlist or commands, not both",
            ),
            (None, None) => c.err(
                format!("{p}.playlist"),
                "missing: give a playlist (M3U, PLS or JSON; a file or an http(s) URL) or \
                 commands (a file of number = command lines)",
            ),
            (Some(pl), None) if pl.contains("://") => {
                c.result(format!("{p}.playlist"), check_http_url(pl))
            }
            (Some(pl), None) if pl.trim().is_empty() => {
                c.err(format!("{p}.playlist"), "empty path")
            }
            _ => {}
        }
    }
}

fn check_monitors(c: &mut Check, monitors: &[Monitor]) {
    let mut names = BTreeMap::new();
    let mut flows = BTreeMap::new();
    for (i, m) in monitors.iter().enumerate() {
        let p = format!("monitor[{i}]");
        c.result(format!("{p}.name"), check_object_name(&m.name));
        if let Some(first) = names.insert(m.name.as_str(), i) {
            c.err(
                format!("{p}.name"),
                format!("{:?} is the name of monitor[{first}] too", m.name),
            );
        }
        c.result(format!("{p}.interface"), check_ifname(&m.interface));
        c.result(format!("{p}.group"), check_group(m.group));
        if m.port == 0 {
            c.err(format!("{p}.port"), "port 0 is not a port");
        }
        let d = m.deliver;
        if let Err(e) = check_not_mapped(d.ip()) {
            c.err(format!("{p}.deliver"), e);
        } else if d.ip().is_multicast() {
            c.err(
                format!("{p}.deliver"),
                format!("{} is multicast; give the local daemon's address", d.ip()),
            );
        } else if d.ip().is_ipv4() != m.group.is_ipv4() {
            c.err(
                format!("{p}.deliver"),
                format!(
                    "{} and the group {} are of different IP versions; a rewrite cannot cross them",
                    d.ip(),
                    m.group
                ),
            );
        }
        if d.port() == 0 {
            c.err(format!("{p}.deliver"), "port 0 is not a port");
        }
        if d.ip().is_ipv6() && d.ip().is_loopback() {
            c.err(
                format!("{p}.deliver"),
                "::1 cannot receive packets that arrive from outside; give [::]:PORT (join only) \
                 or a local address",
            );
        }
        if let Some(first) = flows.insert((m.interface.as_str(), m.group, m.port), i) {
            c.err(
                format!("{p}.group"),
                format!("monitor[{first}] takes the same interface, group and port"),
            );
        }
    }
}

/// Names the plan derives (namespaces, host-side veths) must not clash with each other
/// nor with the bridges the site names.
fn check_derived_names(c: &mut Check, site: &Site) {
    let s = &site.site.name;
    let mut netns: BTreeMap<String, String> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for v in &site.vlan {
        links.insert(v.bridge.clone(), format!("the bridge of vlan {:?}", v.name));
    }
    let mut seen = BTreeSet::new();
    for (i, v) in site.vlan.iter().enumerate() {
        // A repeated name is reported once, as a duplicate, not again as a clash.
        if v.trust == Trust::Trusted || !seen.insert(v.name.as_str()) {
            continue;
        }
        let owner = format!("vlan {:?}", v.name);
        let path = format!("vlan[{i}].name");
        claim(
            c,
            &mut netns,
            names::vlan_netns(s, &v.name),
            owner.clone(),
            path.clone(),
        );
        claim(
            c,
            &mut links,
            names::vlan_veth_host(s, &v.name),
            owner,
            path,
        );
    }
    let mut seen = BTreeSet::new();
    for (i, r) in site.reflector.iter().enumerate() {
        if !seen.insert(r.name.as_str()) {
            continue;
        }
        let owner = format!("reflector {:?}", r.name);
        let path = format!("reflector[{i}].name");
        let ns = names::reflector_netns(s, &r.name);
        if ns.len() > NETNS_NAME_MAX {
            c.err(
                &path,
                format!(
                    "the name is {} bytes, so its namespace and host name {:?} would be {} bytes; a host \
                     name is at most {NETNS_NAME_MAX}: give a reflector name of at most {}",
                    r.name.len(),
                    format!("{}…", &ns[..ns.floor_char_boundary(20)]),
                    ns.len(),
                    NETNS_NAME_MAX - (ns.len() - r.name.len())
                ),
            );
            continue;
        }
        claim(
            c,
            &mut netns,
            names::reflector_netns(s, &r.name),
            owner.clone(),
            path.clone(),
        );
        for v in &r.vlans {
            claim(
                c,
                &mut links,
                names::reflector_veth_host(s, &r.name, v),
                owner.clone(),
                path.clone(),
            );
        }
    }
}

fn claim(
    c: &mut Check,
    map: &mut BTreeMap<String, String>,
    name: String,
    owner: String,
    path: String,
) {
    if let Some(prev) = map.get(&name) {
        c.err(
            path,
            format!("derives the name {name:?}, which {prev} has already; rename one of them"),
        );
    } else {
        map.insert(name, owner);
    }
}

/// An address for an interface on a VLAN: a unicast host address inside a sane prefix.
pub fn check_host_address(net: &IpNet) -> Result<(), String> {
    let a = net.addr();
    match net {
        IpNet::V4(n) => {
            let ip = n.addr();
            if !(8..=30).contains(&n.prefix_len()) {
                return Err(format!(
                    "{net}: a VLAN's prefix is /8 to /30 (so it has room for other hosts)"
                ));
            }
            if let Some(why) = bad_v4_host(ip) {
                return Err(format!("{ip} is {why}; give a unicast host address"));
            }
            if ip == n.network() {
                return Err(format!("{ip} is the network address of {}", n.trunc()));
            }
            if ip == n.broadcast() {
                return Err(format!("{ip} is the broadcast address of {}", n.trunc()));
            }
        }
        IpNet::V6(n) => {
            let ip = n.addr();
            if !(16..=128).contains(&n.prefix_len()) {
                return Err(format!("{net}: a VLAN's IPv6 prefix is /16 to /128"));
            }
            if let Some(why) = bad_v6_host(ip) {
                return Err(format!("{ip} is {why}; give a ULA or global address"));
            }
        }
    }
    let _ = a;
    Ok(())
}

fn bad_v4_host(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("in 0.0.0.0/8")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("the limited broadcast address")
    } else if o[0] >= 240 {
        Some("in the reserved 240.0.0.0/4")
    } else if ip.is_link_local() {
        Some("link-local (169.254.0.0/16), which avahi does not reflect")
    } else {
        None
    }
}

fn bad_v6_host(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local, which the kernel adds by itself and avahi does not reflect")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

fn is_multicast_net(net: &IpNet) -> bool {
    let n = net.trunc();
    n.network().is_multicast() && n.broadcast().is_multicast()
}

fn overlaps_link_local_groups(net: &IpNet) -> bool {
    match net.trunc() {
        IpNet::V4(n) => {
            let ll: ipnet::Ipv4Net = "224.0.0.0/24".parse().expect("literal");
            n.contains(&ll.network()) || ll.contains(&n.network())
        }
        IpNet::V6(n) => {
            // Scope nibble 1 (interface-local) or 2 (link-local) of the first group.
            let scope = n.network().segments()[0] & 0x000f;
            n.prefix_len() >= 16 && scope <= 2
        }
    }
}

fn check_group(g: IpAddr) -> Result<(), String> {
    if g.is_multicast() {
        Ok(())
    } else {
        Err(format!(
            "{g} is not a multicast group (IPv4 224.0.0.0/4, IPv6 ff00::/8)"
        ))
    }
}

/// A group a route may forward: multicast, and not link-local scope.
fn check_routable_group(g: &GroupSpec) -> Result<(), String> {
    if !is_multicast_net(&g.0) {
        return Err(format!(
            "{g} is not multicast (IPv4 224.0.0.0/4, IPv6 ff00::/8)"
        ));
    }
    if overlaps_link_local_groups(&g.0) {
        return Err(format!(
            "{g} is link-local scope (224.0.0.0/24 or ff02::/16), which is never forwarded"
        ));
    }
    Ok(())
}

fn check_source(src: IpAddr, group: IpAddr) -> Result<(), String> {
    check_not_mapped(src)?;
    if src.is_ipv4() != group.is_ipv4() {
        return Err(format!(
            "{src} and group {group} are of different IP versions"
        ));
    }
    if src.is_multicast() || src.is_unspecified() || src.is_loopback() {
        return Err(format!("{src} is not a unicast source address"));
    }
    Ok(())
}

/// `"FAMILY TABLE CHAIN"` of an nftables chain that routed packets traverse.
fn check_chain_ref(s: &str) -> Result<(), String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let ident = |w: &str| {
        w.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
    };
    match words.as_slice() {
        [fam, table, chain]
            if ["ip", "ip6", "inet"].contains(fam) && ident(table) && ident(chain) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{s:?} is not \"FAMILY TABLE CHAIN\" of an nftables chain with family ip, ip6 or \
             inet, like \"inet filter forward\""
        )),
    }
}

/// An http:// or https:// URL with a host, parsed as the HTTP client parses it (ureq's
/// `http::Uri`), with a port that is a number from 1 to 65535 when given.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{url:?} is not an http:// or https:// URL: {why}"));
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("it holds a space or a control character");
    }
    let uri = match url.parse::<ureq::http::Uri>() {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return bad("the scheme must be http or https");
    }
    let Some(authority) = uri.authority() else {
        return bad("no host");
    };
    if authority.host().is_empty() {
        return bad("no host");
    }
    if authority.as_str().contains('@') {
        return bad("credentials in the URL are not supported");
    }
    // `host:` with an empty port parses; the client would then use no port at all.
    if let Some((_, port)) = authority.as_str().rsplit_once(':')
        && !authority.as_str().ends_with(']')
    {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return bad(&format!(
                    "the port {port:?} is not a number from 1 to 65535"
                ));
            }
        }
    }
    Ok(())
}

fn known<'a>(names: impl Iterator<Item = &'a &'a str>) -> String {
    let v: Vec<&str> = names.copied().collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}
