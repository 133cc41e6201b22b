//! `[site] avahi = "machines"`: each VLAN's and reflector's avahi runs as a systemd-nspawn
//! machine that boots dbus and avahi, from the same templates `render` writes for an image
//! (`nspawn/`, `overlays/avahi/etc`: filled here, pure, so that the plan shows them).
//! `up` starts systemd-nspawn inside the namespace's network and private mounts, where the
//! plan has put the machine's settings file (trusted: /run/systemd/nspawn), its /etc, and
//! the host's root bound for it. Everything of a machine lives in those private mounts and
//! goes with them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{DBUS_SOCKET, FileSpec, Health, Mount, Namespace, NamespaceKind, Plan, avahi};

/// Where the host's root is bound for the machine, inside the namespace's private /run.
pub const ROOT: &str = "/run/machine/root";
/// The machine's /etc, inside the namespace's private /run.
pub const ETC: &str = "/run/machine/etc";
/// A trusted place for settings files (systemd-nspawn(1), --settings=).
pub const SETTINGS_DIR: &str = "/run/systemd/nspawn";
/// `st_mode` type bits of a symbolic link: a [`FileSpec`] with them is a link to its
/// `contents`.
pub const S_IFLNK: u32 = 0o120000;

/// What systemd-nspawn keeps for a booted machine by default (systemd-nspawn(1),
/// --capability=): it can only hand on what it has. CAP_NET_ADMIN is not among them: the
/// machine shares the namespace's network and never configures it.
pub const CAPS: [&str; 26] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_NICE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TTY_CONFIG",
];

/// The program `up` runs for a machine.
pub const PROGRAM: &str = "systemd-nspawn";

/// systemd-nspawn as systemd-nspawn@.service runs it, with the settings file overriding
/// the command line (so `Private=off`/`VirtualEthernet=no` keep the namespace's network),
/// no machined to register with, and the root `up` bound. `up` runs its children in a PID
/// namespace of the site's own: systemd-nspawn reads /proc/PID of the machine it forked, so
/// it gets a /proc of that namespace first (unshare(1), --mount-proc).
pub fn argv(machine: &str) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--mount-proc",
        "--",
        PROGRAM,
        "--quiet",
        "--keep-unit",
        "--register=no",
        "--boot",
        "--link-journal=no",
        "--settings=override",
        &format!("--machine={machine}"),
        &format!("--directory={ROOT}"),
    ]
    .map(String::from)
    .to_vec()
}

/// True for a child that runs a machine.
pub fn is_machine(c: &crate::plan::Child) -> bool {
    c.argv.iter().any(|a| a == PROGRAM)
}

/// Turns a plan's avahi children into machines: for each namespace, the host's root bound
/// at [`ROOT`], the machine's /etc at [`ETC`] and its settings file, all in the private
/// mounts; the VLAN's dbus child goes (dbus runs inside the machine), and the avahi child
/// becomes systemd-nspawn with the same name, restarts and health (over the machine's bus).
pub fn into_machines(plan: &mut Plan) {
    let site = plan.site.clone();
    for ns in plan.namespaces.iter_mut() {
        for m in ns.mounts.iter_mut() {
            if let Mount::Tmpfs { target, dirs, .. } = m
                && target == "/run"
            {
                dirs.push(ROOT.into());
            }
        }
        ns.mounts.push(Mount::Bind {
            source: "/".into(),
            target: ROOT.into(),
        });
        let etc = machine_etc(&site, ns);
        for (rel, f) in etc {
            let (mode, contents) = match f {
                EtcFile::Text(t) => (0o644, t),
                EtcFile::Link(target) => (S_IFLNK | 0o777, target),
            };
            ns.files.push(FileSpec {
                path: Path::new(ETC).join(rel).display().to_string(),
                mode,
                contents,
            });
        }
        ns.files.push(FileSpec {
            path: format!("{SETTINGS_DIR}/{}.nspawn", ns.name),
            mode: 0o644,
            contents: nspawn_settings(&site, &ns.name, ETC),
        });
        let (child, gone) = match ns.kind {
            NamespaceKind::Vlan => (
                format!("avahi@{}", ns.owner),
                Some(format!("dbus@{}", ns.owner)),
            ),
            NamespaceKind::Reflector => (format!("reflector@{}", ns.owner), None),
        };
        if let Some(g) = &gone {
            plan.children.retain(|c| &c.name != g);
            for c in plan.children.iter_mut() {
                c.after.retain(|a| a != g);
            }
        }
        if let Some(c) = plan.children.iter_mut().find(|c| c.name == child) {
            c.argv = argv(&ns.name);
            c.caps = CAPS.iter().map(|s| s.to_string()).collect();
            if ns.kind == NamespaceKind::Vlan {
                c.health = Health::MachineBus {
                    bus: DBUS_SOCKET.into(),
                };
            }
        }
    }
}

/// A file of a machine's /etc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcFile {
    Text(String),
    /// A symbolic link to this target.
    Link(String),
}

const NSPAWN: &str = include_str!("../../nspawn/appliance-avahi.nspawn");
const ETC_HOSTNAME: &str = include_str!("../../overlays/avahi/etc/hostname");
const ETC_MACHINE_ID: &str = include_str!("../../overlays/avahi/etc/machine-id");
const ETC_AVAHI: &str = include_str!("../../overlays/avahi/etc/avahi/avahi-daemon.conf");

/// The links of `overlays/avahi/etc` (a test checks this list against the directory):
/// dbus and avahi enabled, logind masked.
pub const OVERLAY_LINKS: [(&str, &str); 3] = [
    (
        "systemd/system/multi-user.target.wants/avahi-daemon.service",
        "/lib/systemd/system/avahi-daemon.service",
    ),
    (
        "systemd/system/multi-user.target.wants/dbus.service",
        "/lib/systemd/system/dbus.service",
    ),
    ("systemd/system/systemd-logind.service", "/dev/null"),
];

/// The settings file of a machine whose /etc is `etc`.
pub fn nspawn_settings(site: &str, machine: &str, etc: &str) -> String {
    fill(
        NSPAWN,
        &[("MACHINE", machine), ("SITE", site), ("ETC", etc)],
    )
}

/// A machine's own /etc, relative to it: the overlay's links, and its templates filled
/// (avahi's config from the plan, host name, machine-id).
pub fn machine_etc(site: &str, ns: &Namespace) -> Vec<(PathBuf, EtcFile)> {
    let m = ns.name.as_str();
    let conf = ns
        .files
        .iter()
        .find(|f| f.path == avahi::CONF_PATH)
        .map(|f| f.contents.as_str())
        .unwrap_or_default();
    let mut out = vec![
        (
            PathBuf::from("avahi/avahi-daemon.conf"),
            EtcFile::Text(fill(ETC_AVAHI, &[("AVAHI_CONF", conf)])),
        ),
        (
            PathBuf::from("hostname"),
            EtcFile::Text(fill(ETC_HOSTNAME, &[("HOSTNAME", &ns.hostname)])),
        ),
        (
            PathBuf::from("machine-id"),
            EtcFile::Text(fill(
                ETC_MACHINE_ID,
                &[("MACHINE_ID", &machine_id(site, m))],
            )),
        ),
    ];
    for (path, target) in OVERLAY_LINKS {
        out.push((PathBuf::from(path), EtcFile::Link(target.to_string())));
    }
    out
}

/// A machine's `/etc/machine-id`: fixed for a site and machine name, 32 hex digits shaped
/// as a version 4 UUID (as systemd makes them; see machine-id(5)).
pub fn machine_id(site: &str, machine: &str) -> String {
    let d = Sha256::digest(format!("appliance machine-id\0{site}\0{machine}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fills a template's `@NAME@` placeholders. Every placeholder of the template must be
/// given (a template edited with a new one fails the render tests, not an image).
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find('@') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
            .count();
        let value = (name_len > 0 && after[name_len..].starts_with('@'))
            .then(|| &after[..name_len])
            .and_then(|name| vars.iter().find(|(k, _)| *k == name));
        match value {
            Some((_, v)) => {
                out.push_str(v);
                rest = &after[name_len + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `@NAME@` placeholders left in a text (for tests: a rendered file has none).
pub fn placeholders(text: &str) -> Vec<String> {
    let mut found = vec![];
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let n = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || *b == b'_')
            .count();
        if n > 0 && after[n..].starts_with('@') {
            found.push(after[..n].to_string());
        }
        rest = after;
    }
    found
}
