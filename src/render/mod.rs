//! `render`: the site as files for a router image. A pure function of the plan (and the
//! site file's text, copied as it is): systemd units, nspawn machines with their own
//! `/etc`, systemd-networkd bridges, a sysctl.d file and an nftables ruleset. The words come
//! from the repository's templates (`units/`, `nspawn/`, `network/`, `sysctl/`,
//! `firewall/`, `overlays/`); their `@NAME@` placeholders are filled with
//! `plan::machine::fill`.
//! Writing the files (and removing those an older render left) is [`write`]'s job.

pub mod cli;
pub mod machine;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::plan::machine::{EtcFile, machine_etc, nspawn_settings};
pub use crate::plan::machine::{OVERLAY_LINKS, fill, machine_id, placeholders};
use crate::plan::{Namespace, Plan};

pub use write::{Layout, WriteError, WriteReport, manifest_path, write};

/// What one rendered path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file with these permission bits.
    Regular { mode: u32 },
    /// A symbolic link; `bytes` is its target.
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub bytes: Vec<u8>,
    pub kind: FileKind,
}

impl RenderedFile {
    fn text(s: String) -> RenderedFile {
        RenderedFile {
            bytes: s.into_bytes(),
            kind: FileKind::Regular { mode: 0o644 },
        }
    }

    fn link(target: &str) -> RenderedFile {
        RenderedFile {
            bytes: target.as_bytes().to_vec(),
            kind: FileKind::Symlink,
        }
    }

    /// The contents as text (units and settings are UTF-8).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes).unwrap_or("")
    }
}

/// Root-relative path → contents, in path order.
pub type Tree = BTreeMap<PathBuf, RenderedFile>;

/// Where the parts go in an image root.
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const NSPAWN_DIR: &str = "etc/systemd/nspawn";
pub const NETWORK_DIR: &str = "etc/systemd/network";
pub const SYSCTL_DIR: &str = "etc/sysctl.d";
pub const SITE_DIR: &str = "etc/appliance";
/// Where Debian's frr package reads its configuration.
pub const FRR_DIR: &str = "etc/frr";
pub const MACHINES_DIR: &str = "var/lib/appliance/machines";
/// Where each machine's root (the host's `/`, bound read-only) is mounted:
/// systemd-nspawn@NAME.service looks for NAME there.
pub const MACHINE_ROOTS: &str = "/var/lib/machines";
/// Where the units run the binary from.
pub const BINARY: &str = "/usr/local/bin/appliance";

const SITE_UNIT: &str = include_str!("../../units/appliance@.service");
const SITE_DROPIN: &str = include_str!("../../units/appliance-site.conf");
const NSPAWN_DROPIN: &str = include_str!("../../units/nspawn-machine.conf");
const ROOT_MOUNT: &str = include_str!("../../units/machine-root.mount");
const ROOT_AUTOMOUNT: &str = include_str!("../../units/machine-root.automount");
const NETDEV: &str = include_str!("../../network/bridge.netdev");
const NETWORK: &str = include_str!("../../network/bridge.network");
const SYSCTL: &str = include_str!("../../sysctl/appliance.conf");
const RULESET: &str = include_str!("../../firewall/ruleset.nft");
const FRR_DAEMONS: &str = include_str!("../../frr/daemons");
const FRR_VTYSH: &str = include_str!("../../frr/vtysh.conf");
const FRR_DROPIN: &str = include_str!("../../units/appliance-frr.conf");

/// What the supervisor itself needs, whatever its children keep (the site drop-in says why).
pub const SUPERVISOR_CAPS: [&str; 7] = [
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_NET_ADMIN",
    "CAP_SETPCAP",
    "CAP_SYS_ADMIN",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
];

/// The plan as the rendered unit's `up` runs it: with `engine = "frr"` the drop-in sets
/// `APPLIANCE_FRR=system`, so FRR's daemons are frr.service's, not the site's children.
pub fn as_the_unit_runs_it(plan: &Plan) -> Plan {
    let mut p = plan.clone();
    crate::plan::routing::leave_frr_to_the_system(&mut p);
    p
}

/// Everything the site needs, as files at their paths in an image root.
pub fn render(plan: &Plan, site_toml: &str) -> Tree {
    let plan = &as_the_unit_runs_it(plan);
    let mut t = Tree::new();
    let site = plan.site.as_str();
    let unit = format!("appliance@{site}.service");
    t.insert(
        Path::new(UNIT_DIR).join("appliance@.service"),
        RenderedFile::text(SITE_UNIT.to_string()),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("{unit}.d/render.conf")),
        RenderedFile::text(site_dropin(plan)),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("multi-user.target.wants/{unit}")),
        RenderedFile::link("/etc/systemd/system/appliance@.service"),
    );
    t.insert(
        Path::new(SITE_DIR).join(format!("{site}.toml")),
        RenderedFile::text(site_toml.to_string()),
    );
    for ns in &plan.namespaces {
        machine(&mut t, plan, ns);
    }
    network(&mut t, plan);
    frr(&mut t, plan);
    if !plan.sysctls.is_empty() {
        let lines: Vec<String> = plan
            .sysctls
            .iter()
            .map(|s| {
                format!(
                    "# {} ({})\n{} = {}",
                    s.why,
                    s.owner,
                    sysctl_key(&s.key),
                    s.value
                )
            })
            .collect();
        t.insert(
            Path::new(SYSCTL_DIR).join(format!("60-appliance-{site}.conf")),
            RenderedFile::text(fill(
                SYSCTL,
                &[("SITE", site), ("SYSCTLS", &lines.join("\n"))],
            )),
        );
    }
    if !plan.firewall.is_empty() {
        let tables: String = plan.firewall.iter().map(|f| f.ruleset()).collect();
        t.insert(
            Path::new(SITE_DIR).join(format!("{site}.nft")),
            RenderedFile::text(fill(
                RULESET,
                &[("SITE", site), ("TABLES", tables.trim_end())],
            )),
        );
    }
    t
}

/// A key as sysctl.d(5) reads it: an interface name with a dot in it (`br0.10`) needs the
/// `/` separator, else its dot would split the name.
pub fn sysctl_key(key: &str) -> String {
    for prefix in [
        "net.ipv4.conf.",
        "net.ipv6.conf.",
        "net.ipv4.neigh.",
        "net.ipv6.neigh.",
    ] {
        if let Some(rest) = key.strip_prefix(prefix)
            && let Some((iface, leaf)) = rest.rsplit_once('.')
            && iface.contains('.')
        {
            return format!(
                "{}/{iface}/{leaf}",
                prefix.trim_end_matches('.').replace('.', "/")
            );
        }
    }
    key.to_string()
}

/// What the supervisor needs to run a part as another user (the site drop-in says why).
pub const SWITCH_USER_CAPS: [&str; 4] = ["CAP_CHOWN", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID"];

/// True if a child runs as a user of its own (`user` in the plan).
fn switches_user(plan: &Plan) -> bool {
    plan.children.iter().any(|c| c.user.is_some())
}

/// The capabilities `appliance@SITE.service` keeps: the supervisor's (with those to switch
/// user when a child runs as its own) and every child's.
pub fn site_caps(plan: &Plan) -> Vec<String> {
    let mut caps: Vec<String> = SUPERVISOR_CAPS.iter().map(|s| s.to_string()).collect();
    if switches_user(plan) {
        caps.extend(SWITCH_USER_CAPS.iter().map(|s| s.to_string()));
    }
    caps.extend(plan.children.iter().flat_map(|c| c.caps.iter().cloned()));
    caps.sort();
    caps.dedup();
    caps
}

fn site_dropin(plan: &Plan) -> String {
    let mut child_caps: Vec<String> = plan
        .children
        .iter()
        .flat_map(|c| c.caps.iter().cloned())
        .collect();
    child_caps.sort();
    child_caps.dedup();
    let child_caps = if child_caps.is_empty() {
        "none".to_string()
    } else {
        child_caps.join(" ")
    };
    let machines = plan.avahi == crate::site::AvahiMode::Machines;
    let (nnp, nnp_why, delegate) = if machines {
        (
            "no",
            "The machines boot systemd, whose units may run set-user-ID helpers.",
            "# systemd-nspawn makes each machine's cgroups under the unit's.\nDelegate=yes",
        )
    } else {
        (
            "yes",
            "The children switch user with their capabilities, not through set-user-ID programs.",
            "",
        )
    };
    let users: Vec<&str> = {
        let mut u: Vec<&str> = plan
            .children
            .iter()
            .filter_map(|c| c.user.as_deref())
            .collect();
        u.sort();
        u.dedup();
        u
    };
    let user_caps = if users.is_empty() {
        "No part runs as a user of its own.".to_string()
    } else {
        format!(
            "Parts run as their own user ({}): CAP_CHOWN and CAP_FOWNER (handing them their\n\
             # directories, and setting the mode of what is then theirs), CAP_SETUID and\n\
             # CAP_SETGID (switching to it, setgroups(2) included).",
            users.join(", ")
        )
    };
    fill(
        SITE_DROPIN,
        &[
            ("SITE", &plan.site),
            ("USER_CAPS", &user_caps),
            ("CHILD_CAPS", &child_caps),
            ("CAPS", &site_caps(plan).join(" ")),
            ("NNP_WHY", nnp_why),
            ("NNP", nnp),
            ("DELEGATE", delegate),
        ],
    )
    .trim_end()
    .to_string()
        + "\n"
}

/// One VLAN's or reflector's machine: its settings, its unit drop-in, the mount of its root
/// and its own /etc.
fn machine(t: &mut Tree, plan: &Plan, ns: &Namespace) {
    let m = ns.name.as_str();
    let vars = [("MACHINE", m), ("SITE", plan.site.as_str())];
    let etc = Path::new(MACHINES_DIR).join(m).join("etc");
    t.insert(
        Path::new(NSPAWN_DIR).join(format!("{m}.nspawn")),
        RenderedFile::text(nspawn_settings(&plan.site, m, &etc_dir(m))),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("systemd-nspawn@{m}.service.d/appliance.conf")),
        RenderedFile::text(fill(NSPAWN_DROPIN, &vars)),
    );
    let mount = escape_path(&format!("{MACHINE_ROOTS}/{m}"));
    t.insert(
        Path::new(UNIT_DIR).join(format!("{mount}.mount")),
        RenderedFile::text(fill(ROOT_MOUNT, &vars)),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("{mount}.automount")),
        RenderedFile::text(fill(ROOT_AUTOMOUNT, &vars)),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("local-fs.target.wants/{mount}.automount")),
        RenderedFile::link(&format!("/etc/systemd/system/{mount}.automount")),
    );
    for (rel, f) in machine_etc(&plan.site, ns) {
        let f = match f {
            EtcFile::Text(s) => RenderedFile::text(s),
            EtcFile::Link(target) => RenderedFile::link(&target),
        };
        t.insert(etc.join(rel), f);
    }
}

/// FRR's configuration for a site with `engine = "frr"`: the plan's `frr.conf`, the
/// daemons Debian's frr.service starts, vtysh's integrated configuration, and frr.service
/// enabled and ordered before the site.
fn frr(t: &mut Tree, plan: &Plan) {
    let Some(frr) = plan.routing.as_ref().and_then(|r| r.frr.as_ref()) else {
        return;
    };
    let site = plan.site.as_str();
    let daemons: String = crate::plan::routing::FRR_DAEMONS
        .iter()
        .filter(|d| !ALWAYS_STARTED.contains(d))
        .map(|d| {
            let on = frr.daemons.iter().any(|x| x == d);
            format!("{d}={}\n", if on { "yes" } else { "no" })
        })
        .collect();
    let vars = [("SITE", site), ("DAEMONS", daemons.trim_end())];
    t.insert(
        Path::new(FRR_DIR).join("frr.conf"),
        RenderedFile::text(frr.config.clone()),
    );
    t.insert(
        Path::new(FRR_DIR).join("daemons"),
        RenderedFile::text(fill(FRR_DAEMONS, &vars)),
    );
    t.insert(
        Path::new(FRR_DIR).join("vtysh.conf"),
        RenderedFile::text(fill(FRR_VTYSH, &vars)),
    );
    t.insert(
        Path::new(UNIT_DIR).join("multi-user.target.wants/frr.service"),
        RenderedFile::link("/lib/systemd/system/frr.service"),
    );
    t.insert(
        Path::new(UNIT_DIR).join(format!("appliance@{site}.service.d/frr.conf")),
        RenderedFile::text(fill(FRR_DROPIN, &vars)),
    );
}

/// Daemons frr.service starts whatever /etc/frr/daemons says (frrinit.sh).
const ALWAYS_STARTED: [&str; 2] = ["zebra", "staticd"];

/// A machine's /etc in an image.
pub fn etc_dir(machine: &str) -> String {
    format!("/{MACHINES_DIR}/{machine}/etc")
}

/// networkd files for the bridges the site creates.
fn network(t: &mut Tree, plan: &Plan) {
    let site = plan.site.as_str();
    for b in plan.bridges.iter().filter(|b| b.create_if_missing) {
        let snooping = match b.snooping {
            Some(on) => format!(
                "\n[Bridge]\n# [multicast] snooping = {on}\nMulticastSnooping={}",
                if on { "yes" } else { "no" }
            ),
            None => String::new(),
        };
        let used_by = format!("used by {}", b.used_by.join(", "));
        let vars = [
            ("SITE", site),
            ("BRIDGE", b.name.as_str()),
            ("USED_BY", used_by.as_str()),
            ("SNOOPING", snooping.as_str()),
        ];
        let base = format!("60-appliance-{site}-{}", b.name);
        t.insert(
            Path::new(NETWORK_DIR).join(format!("{base}.netdev")),
            RenderedFile::text(fill(NETDEV, &vars).trim_end().to_string() + "\n"),
        );
        t.insert(
            Path::new(NETWORK_DIR).join(format!("{base}.network")),
            RenderedFile::text(fill(NETWORK, &vars)),
        );
    }
}

/// A path as a unit name, as `systemd-escape --path` writes it (systemd.unit(5), "String
/// Escaping for Inclusion in Unit Names").
pub fn escape_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return "-".into();
    }
    let joined = parts.join("/");
    let mut out = String::new();
    for (i, byte) in joined.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_known_placeholders_only() {
        assert_eq!(
            fill("a@X@b@@c@Y@ d@e.f", &[("X", "1"), ("Y", "2")]),
            "a1b@@c2 d@e.f"
        );
        assert_eq!(
            fill("appliance@@SITE@.service", &[("SITE", "lab")]),
            "appliance@lab.service"
        );
        assert_eq!(placeholders("x@A@ y@b@ @C_D@"), ["A", "C_D"]);
    }

    #[test]
    fn sysctl_keys_with_dotted_interfaces_use_slashes() {
        assert_eq!(
            sysctl_key("net.ipv4.conf.br-lan.route_localnet"),
            "net.ipv4.conf.br-lan.route_localnet"
        );
        assert_eq!(
            sysctl_key("net.ipv4.conf.br0.10.route_localnet"),
            "net/ipv4/conf/br0.10/route_localnet"
        );
        assert_eq!(sysctl_key("net.ipv4.ip_forward"), "net.ipv4.ip_forward");
    }

    #[test]
    fn escape_path_as_systemd_escape() {
        assert_eq!(
            escape_path("/var/lib/machines/lab-iot"),
            "var-lib-machines-lab\\x2diot"
        );
        assert_eq!(escape_path("/"), "-");
        assert_eq!(escape_path("//a//.b/c_d:e/"), "a-.b-c_d:e");
        assert_eq!(escape_path("/.x"), "\\x2ex");
    }

    /// A site whose only child runs as `appliance` (the access router: the forwarder alone)
    /// keeps what switching to that user takes; children of avahi and dbus bring those
    /// capabilities along anyway, so the example never showed it missing.
    #[test]
    fn a_child_of_its_own_user_gives_the_site_the_caps_to_switch() {
        let rel = "tests/sites/access-router.toml";
        let s = crate::site::parse(rel, include_str!("../../tests/sites/access-router.toml"))
            .expect("valid");
        let plan = as_the_unit_runs_it(&crate::plan::plan(&s, Path::new(rel)));
        assert!(
            plan.children
                .iter()
                .all(|c| c.user.as_deref() == Some("appliance"))
        );
        let caps = site_caps(&plan);
        for c in SWITCH_USER_CAPS {
            assert!(caps.iter().any(|x| x == c), "{c} missing from {caps:?}");
        }
        let dropin = site_dropin(&plan);
        assert!(
            dropin.contains("Parts run as their own user (appliance)"),
            "{dropin}"
        );
    }

    #[test]
    fn machine_ids_are_fixed_distinct_and_valid() {
        let a = machine_id("lab", "lab-iot");
        assert_eq!(a, machine_id("lab", "lab-iot"));
        assert_ne!(a, machine_id("lab", "lab-guest"));
        assert_ne!(a, machine_id("lab2", "lab-iot"));
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(&a[12..13], "4");
    }
}
