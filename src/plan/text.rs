//! The plan printed for people: one line per object, grouped by kind.

use std::fmt::{self, Display, Formatter, Write};

use super::*;

impl Display for Plan {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "site {} (from {})", self.site, self.site_file.display())?;
        writeln!(f, "state dir {}", self.state_dir.display())?;
        writeln!(f, "control socket {}", self.control_socket.display())?;
        interfaces(self, f)?;
        namespaces(self, f)?;
        mount_spaces(self, f)?;
        veths(self, f)?;
        children(self, f)?;
        multicast(self, f)?;
        firewall(self, f)?;
        sysctls(self, f)?;
        headend(self, f)?;
        translator(self, f)?;
        monitors(self, f)?;
        routing(self, f)?;
        Ok(())
    }
}

/// The bridges the VLANs join.
fn interfaces(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "interfaces", p.bridges.len())?;
    for b in &p.bridges {
        let mut how = if b.create_if_missing {
            "bridge, created if missing".to_string()
        } else {
            "must exist".to_string()
        };
        if let Some(s) = b.snooping {
            write!(how, ", multicast_snooping={}", u8::from(s))?;
        }
        writeln!(
            f,
            "  {:<15} {how}; used by {}",
            b.name,
            b.used_by.join(", ")
        )?;
    }
    Ok(())
}

/// Each namespace: its pin, mounts and files.
fn namespaces(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "namespaces", p.namespaces.len())?;
    for n in &p.namespaces {
        let kind = match n.kind {
            NamespaceKind::Vlan => "vlan",
            NamespaceKind::Reflector => "reflector",
        };
        writeln!(
            f,
            "  {} ({kind} {}) pinned at {}, hostname {}",
            n.name,
            n.owner,
            n.pin.display(),
            n.hostname
        )?;
        writeln!(f, "    private mount namespace (held by the supervisor):")?;
        for m in &n.mounts {
            match m {
                Mount::Tmpfs {
                    target,
                    options,
                    dirs,
                } => {
                    write!(f, "    tmpfs {target} ({options})")?;
                    if !dirs.is_empty() {
                        write!(f, " with {}", dirs.join(" "))?;
                    }
                    writeln!(f)?;
                }
                Mount::Bind { source, target } => {
                    writeln!(f, "    bind {source} over {target}")?;
                }
                Mount::Overlay { target, upper } => {
                    writeln!(f, "    overlay over {target}, writes in {upper}")?;
                }
            }
        }
        for file in &n.files {
            writeln!(
                f,
                "    file {} (mode {:04o}, {} bytes)",
                file.path,
                file.mode,
                file.contents.len()
            )?;
        }
    }
    Ok(())
}

/// Each mount space: the host's network, private binds.
fn mount_spaces(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    if p.mount_spaces.is_empty() {
        return Ok(());
    }
    section(f, "mount spaces", p.mount_spaces.len())?;
    for m in &p.mount_spaces {
        writeln!(
            f,
            "  {} ({}): the host's network, private mounts (held by the supervisor):",
            m.name, m.owner
        )?;
        for d in &m.dirs {
            writeln!(
                f,
                "    dir {} ({}:{}, mode {:04o})",
                d.path.display(),
                d.user,
                d.group,
                d.mode
            )?;
        }
        for file in &m.files {
            writeln!(
                f,
                "    file {} ({}:{}, mode {:04o}, {} bytes)",
                file.path.display(),
                file.user,
                file.group,
                file.mode,
                file.contents.len()
            )?;
        }
        for x in &m.mounts {
            if let Mount::Bind { source, target } = x {
                writeln!(f, "    bind {source} over {target}")?;
            }
        }
    }
    Ok(())
}

/// The veth pairs, their MACs and addresses.
fn veths(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "veth pairs", p.veths.len())?;
    for v in &p.veths {
        write!(
            f,
            "  {} [{}] on {}  <->  {} [{}] in {}",
            v.host, v.host_mac, v.bridge, v.peer, v.peer_mac, v.netns
        )?;
        let mut addrs: Vec<String> = v.addresses.iter().map(|a| a.to_string()).collect();
        if v.dhcp {
            addrs.insert(0, "dhcp".into());
        }
        if !addrs.is_empty() {
            write!(f, "  {}", addrs.join(" "))?;
        }
        writeln!(f)?;
    }
    Ok(())
}

/// The children: where they run, their capabilities, order and argv.
fn children(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "children", p.children.len())?;
    for c in &p.children {
        let place = c.netns.as_ref().map_or("host".to_string(), |n| {
            if p.mount_spaces.iter().any(|m| &m.name == n) {
                format!("mount space {n}")
            } else {
                format!("netns {n}")
            }
        });
        let caps = if c.caps.is_empty() {
            "none".to_string()
        } else {
            c.caps.join(",")
        };
        let user = c
            .user
            .as_deref()
            .unwrap_or("root (switches user itself, if at all)");
        let groups = if c.groups.is_empty() {
            String::new()
        } else {
            format!(" with group {}", c.groups.join(","))
        };
        write!(
            f,
            "  {:<18} in {place}; as {user}{groups}; caps {caps}",
            c.name
        )?;
        if !c.after.is_empty() {
            write!(f, "; after {}", c.after.join(", "))?;
        }
        if !c.refresh_on.is_empty() {
            write!(f, "; restarted when {} restarts", c.refresh_on.join(", "))?;
        }
        match &c.health {
            Health::AvahiBus { bus } => write!(f, "; health: avahi GetState over {bus}")?,
            Health::Control { socket } => write!(f, "; health: status over {}", socket.display())?,
            Health::MachineBus { .. } | Health::Running => {}
        }
        writeln!(
            f,
            "; restart {}..{}",
            humantime::format_duration(c.restart.first_delay),
            humantime::format_duration(c.restart.max_delay)
        )?;
        let argv = shell_words::join(&c.argv);
        writeln!(f, "      $ {argv}")?;
    }
    Ok(())
}

/// The multicast forwarder's VIFs, routes and joins.
fn multicast(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    let m = &p.multicast;
    if !m.routes.is_empty() || !m.joins.is_empty() {
        let table = m.table.map_or("default".to_string(), |t| t.to_string());
        writeln!(
            f,
            "\nmulticast (table {table}; learned entries expire after {})",
            humantime::format_duration(m.expire)
        )?;
        if !m.vifs.is_empty() {
            writeln!(f, "  IPv4 VIFs: {}", m.vifs.join(" "))?;
        }
        if !m.mifs.is_empty() {
            writeln!(f, "  IPv6 MIFs: {}", m.mifs.join(" "))?;
        }
        for r in &m.routes {
            let sg = match (r.kind, r.source) {
                (RouteKind::Static, Some(s)) => format!("({s}, {})", r.group),
                (_, Some(s)) => format!("({s}, {}) on demand", r.group),
                (_, None) => format!("(*, {}) on demand", r.group),
            };
            writeln!(
                f,
                "  route {sg}: {} -> {}, TTL > {}  [{}]",
                r.from,
                r.to.join(" "),
                r.ttl_threshold,
                r.origin
            )?;
        }
        for j in &m.joins {
            match j.source {
                Some(s) => writeln!(f, "  join ({s}, {}) on {}  [{}]", j.group, j.on, j.origin)?,
                None => writeln!(f, "  join {} on {}  [{}]", j.group, j.on, j.origin)?,
            }
        }
    }
    Ok(())
}

/// The appliance's nftables tables.
fn firewall(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    for fw in &p.firewall {
        writeln!(
            f,
            "\nfirewall of {}: table {} {}",
            fw.owner, fw.family, fw.table
        )?;
        for c in fw.chains.iter().filter(|c| !c.rules.is_empty()) {
            writeln!(f, "  chain {} ({})", c.name, c.spec)?;
            for r in &c.rules {
                writeln!(f, "    {}\n      # {}", r.rule, r.why)?;
            }
        }
        for cmd in fw.insertions() {
            writeln!(f, "  into the router's own chain: {cmd}")?;
        }
    }
    Ok(())
}

/// The sysctls set.
fn sysctls(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "sysctls", p.sysctls.len())?;
    for s in &p.sysctls {
        writeln!(f, "  {} = {}  ({})", s.key, s.value, s.why)?;
    }
    Ok(())
}

/// The headend's querier, sources, services, directories and groups.
fn headend(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    let Some(h) = &p.headend else {
        return Ok(());
    };
    writeln!(f, "\nheadend: joins heard on {}", h.interfaces.join(" "))?;
    let q = &h.querier;
    let d = |d| humantime::format_duration(d).to_string();
    writeln!(
        f,
        "  querier {}: robustness {}, query every {} (startup {} x {}), response {}, \
         last listener {} x {}",
        match q.mode {
            crate::site::QuerierMode::Auto => "auto (when elected)",
            crate::site::QuerierMode::Never => "never (listen only)",
        },
        q.robustness,
        d(q.query_interval),
        q.startup_query_count,
        d(q.startup_query_interval),
        d(q.query_response_interval),
        q.last_listener_count,
        d(q.last_listener_interval),
    )?;
    writeln!(
        f,
        "  sources run as {}, at most {} at once, restarted after {} without a packet",
        h.user,
        h.max_sources,
        d(h.stall)
    )?;
    writeln!(
        f,
        "  groups of prefix {}; IPv4 groups in {}; control {}; SDPs kept in {}",
        h.prefix,
        h.ipv4_space.map_or("none".to_string(), |n| n.to_string()),
        h.control_socket.display(),
        h.sdp_dir.display()
    )?;
    for s in &h.services {
        let src = match &s.source {
            ServiceSource::Command(argv) => format!("command: {}", shell_words::join(argv)),
            ServiceSource::Url(u) => format!("url: {u}"),
        };
        let mut extra = String::new();
        if let Some(g4) = s.group4 {
            extra.push_str(&format!(", IPv4 {g4}"));
        }
        if s.warm {
            extra.push_str(", warm");
        }
        if let Some(l) = s.linger {
            extra.push_str(&format!(", linger {}", d(l)));
        }
        writeln!(
            f,
            "  service {} {:?}: group {}{extra} (RTP {}, RTCP {}, SAP {}); {src}",
            s.number, s.name, s.group, s.rtp_port, s.rtcp_port, s.sap_port
        )?;
    }
    for dir in &h.directories {
        let what = match (&dir.playlist, &dir.commands) {
            (Some(p), _) => format!("playlist {p}"),
            (None, Some(c)) => format!("commands {}", c.display()),
            (None, None) => String::new(),
        };
        writeln!(
            f,
            "  directory {:?}: numbers {}..={} from {what}{}",
            dir.name,
            dir.first,
            u64::from(dir.first) + dir.count.saturating_sub(1),
            dir.linger
                .map(|l| format!(", linger {}", d(l)))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// The translator's sockets and groups.
fn translator(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    if let Some(t) = &p.translator {
        writeln!(
            f,
            "\ntranslator: unicast {} -> groups of {} port {}, TTL {}, via {}, idle flows freed after {}",
            t.unicast,
            t.space,
            t.port,
            t.ttl,
            t.interface
                .as_deref()
                .unwrap_or("the routing table's choice"),
            humantime::format_duration(t.idle)
        )?;
        writeln!(f, "  flows kept in {}", t.state_file.display())?;
    }
    Ok(())
}

/// The monitors' joins and deliveries.
fn monitors(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    section(f, "monitors", p.monitors.len())?;
    for m in &p.monitors {
        let how = if m.rewrite {
            "rewritten statelessly to"
        } else {
            "joined; the daemon on the wildcard address receives it at"
        };
        writeln!(
            f,
            "  {}: join {} on {}, UDP {} {how} {}",
            m.name, m.group, m.interface, m.port, m.deliver
        )?;
    }
    Ok(())
}

/// Who routes IPv4 multicast, FRR's daemons and configuration, the MLD proxy.
fn routing(p: &Plan, f: &mut Formatter<'_>) -> fmt::Result {
    let Some(r) = &p.routing else {
        return Ok(());
    };
    writeln!(f, "\nrouting: engine {}", r.engine)?;
    writeln!(
        f,
        "  the kernel's IPv4 multicast table: {}",
        match r.ipv4_table {
            Some(routing::Ipv4Owner::Frr) => "FRR's pimd (the forwarder leaves IPv4 alone)",
            Some(routing::Ipv4Owner::Forwarder) => "the forwarder",
            None => "unused",
        }
    )?;
    if let Some(frr) = &r.frr {
        writeln!(
            f,
            "  FRR daemons {} in {} (bound over /run/frr and /etc/frr)",
            frr.daemons.join(", "),
            frr.dir.display()
        )?;
        writeln!(
            f,
            "  PIM on {}; IGMP on {}",
            frr.pim.join(" "),
            frr.igmp.join(" ")
        )?;
        for rp in &frr.rps {
            writeln!(f, "  rendezvous point {} for {}", rp.address, rp.group)?;
        }
        writeln!(f, "  frr.conf:")?;
        for line in frr.config.lines() {
            writeln!(f, "    {line}")?;
        }
    }
    if let Some(m) = &r.mld_proxy {
        let q = &m.querier;
        writeln!(
            f,
            "  MLD proxy (RFC 4605): upstream {}, downstream {}; querier on each downstream: \
             robustness {}, query every {}, response {}, last listener {} x {}",
            m.upstream,
            m.downstream.join(" "),
            q.robustness,
            humantime::format_duration(q.query_interval),
            humantime::format_duration(q.query_response_interval),
            q.last_listener_count,
            humantime::format_duration(q.last_listener_interval),
        )?;
    }
    Ok(())
}

fn section(f: &mut Formatter<'_>, title: &str, n: usize) -> fmt::Result {
    if n > 0 {
        writeln!(f, "\n{title}")?;
    }
    Ok(())
}
