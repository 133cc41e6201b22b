//! The plan: every object `up` will create, as plain data. A pure function of the
//! validated site: no I/O, the same site gives the same plan byte for byte.

pub mod avahi;
pub mod firewall;
pub mod groups;
pub mod machine;
pub mod routing;
mod text;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

// Moved below `site` and `plan` (both use them); re-exported for the plan's readers.
pub use crate::mac::{self, Mac};
pub use crate::names;

use crate::site::{Address4, AvahiMode, GroupSpec, MacPolicy, Site, Trust};

/// The UDP ports of the on-demand headend (docs/architecture.md).
pub const RTP_PORT: u16 = 5004;
pub const RTCP_PORT: u16 = 5005;
pub const SAP_PORT: u16 = 9875;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub site: String,
    pub site_file: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    /// Where the parts that drop root (mroute, translate, monitor, headend) keep their
    /// sockets and state: `<state_dir>/parts`, owned by [`PARTS_USER`], mode 0700.
    pub parts_dir: PathBuf,
    pub bridges: Vec<Bridge>,
    pub namespaces: Vec<Namespace>,
    /// Private mount namespaces in the host's network namespace (FRR's `/run/frr` and
    /// `/etc/frr`); children name one as their `netns`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mount_spaces: Vec<MountSpace>,
    pub veths: Vec<VethPair>,
    pub children: Vec<Child>,
    pub sysctls: Vec<Sysctl>,
    pub multicast: MulticastPlan,
    /// nftables tables, one per component that needs rules (it applies and removes its own).
    pub firewall: Vec<firewall::Firewall>,
    pub headend: Option<HeadendPlan>,
    pub translator: Option<TranslatorPlan>,
    pub monitors: Vec<MonitorPlan>,
    /// `[routing]`: FRR for IPv4 and the MLD proxy for IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<routing::RoutingPlan>,
    /// `[site] avahi`: with machines, each VLAN's and reflector's avahi is a systemd-nspawn
    /// machine (see `machine`).
    #[serde(skip_serializing_if = "AvahiMode::is_children")]
    pub avahi: AvahiMode,
}

/// An interface the site names. With `create_bridges`, a missing one is made as a bridge.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bridge {
    pub name: String,
    pub create_if_missing: bool,
    /// `multicast_snooping` to set, if the site asks.
    pub snooping: Option<bool>,
    /// Which parts of the site name it, for messages.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    Vlan,
    Reflector,
}

/// A network namespace with a private mount namespace of its own.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub kind: NamespaceKind,
    /// The VLAN or reflector it serves.
    pub owner: String,
    /// Bind mount that keeps it alive and lets `ip netns exec` find it.
    pub pin: PathBuf,
    /// A name for the private mount namespace under the state dir. `up` holds the
    /// namespace by fd instead of bind-mounting it here: on kernel 6.18 binding a mount
    /// namespace file fails with EINVAL now and then (see `ns::create_mount_ns`).
    pub mount_pin: PathBuf,
    /// UTS host name, also avahi's `host-name`.
    pub hostname: String,
    pub mounts: Vec<Mount>,
    /// Files written inside the private mounts.
    pub files: Vec<FileSpec>,
}

/// A private mount namespace that keeps the host's network (and UTS) namespace: its
/// children see `mounts`, everything else the host's files. `up` makes `dirs` and writes
/// `files` on the host first (they are the sources of the binds), and removes `dirs` in
/// `down`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MountSpace {
    pub name: String,
    /// The part of the site it serves, for messages.
    pub owner: String,
    /// Made in this order (parents first), owned and with the mode given.
    pub dirs: Vec<OwnedPath>,
    pub files: Vec<OwnedFile>,
    /// Bind mounts only; a missing target directory is made.
    pub mounts: Vec<Mount>,
}

/// A directory `up` makes on the host for a mount space, owned by `user:group`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OwnedPath {
    pub path: PathBuf,
    pub user: String,
    pub group: String,
    pub mode: u32,
}

/// A file `up` writes on the host for a mount space, owned by `user:group`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OwnedFile {
    pub path: PathBuf,
    pub user: String,
    pub group: String,
    pub mode: u32,
    pub contents: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    /// A fresh tmpfs, then these directories made in it.
    Tmpfs {
        target: String,
        options: String,
        dirs: Vec<String>,
    },
    /// A file or directory of the private mounts bound over a host path.
    Bind { source: String, target: String },
    /// An overlay over a host directory whose writes land in `upper` (on the private
    /// mounts), so programs that write there never touch the host's.
    Overlay { target: String, upper: String },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileSpec {
    pub path: String,
    /// Permission bits; with the symbolic link type bits (0o120000) it is a link to
    /// `contents`.
    pub mode: u32,
    pub contents: String,
}

/// MAC of a namespace-side veth end: fixed now, or known only once the namespace exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSpec {
    Fixed(Mac),
    /// `fe:ff:` + (netns inode XOR 0xf0000000), resolved by `up`.
    NetnsInode,
}

impl Serialize for MacSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MacSpec::Fixed(m) => m.serialize(s),
            MacSpec::NetnsInode => s.serialize_str("fe:ff:<netns inode ^ 0xf0000000>"),
        }
    }
}

impl std::fmt::Display for MacSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MacSpec::Fixed(m) => write!(f, "{m}"),
            MacSpec::NetnsInode => f.write_str("fe:ff:<netns inode ^ 0xf0000000>"),
        }
    }
}

/// One veth pair: the host end joins `bridge`, the peer lives in `netns`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VethPair {
    pub host: String,
    pub host_mac: Mac,
    pub bridge: String,
    pub netns: String,
    pub peer: String,
    pub peer_mac: MacSpec,
    pub addresses: Vec<IpNet>,
    pub dhcp: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// This same binary in another role (argv[0] is replaced by the running executable).
    #[serde(rename = "self")]
    SelfExe,
    External,
}

/// A process the supervisor runs and restarts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Child {
    pub name: String,
    pub program: Program,
    pub argv: Vec<String>,
    /// Network namespace to run in (with its private mounts), or a [`MountSpace`] (the
    /// host's network, private mounts); None = the host's.
    pub netns: Option<String>,
    /// Capabilities it keeps; every other one is dropped before exec. A child with a
    /// `user` keeps them as ambient capabilities across its switch to that user.
    pub caps: Vec<String>,
    /// The unprivileged user it runs as (set before exec: no supplementary groups,
    /// `NoNewPrivs`); None: it starts as root and switches user itself, if at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Supplementary groups it keeps as `user` (every other one is cleared): FRR's
    /// `frrvty` to reach the daemons' vty sockets.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub groups: Vec<String>,
    /// Children that must be running before this one starts, and that restart it when they do.
    pub after: Vec<String>,
    /// Children whose restart restarts this one too, once they run again, without holding
    /// up its start: a VLAN's avahi keeps records learnt through a reflector for up to 75
    /// minutes after the reflector stops, so it starts afresh when the reflector does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refresh_on: Vec<String>,
    pub restart: RestartPolicy,
    pub health: Health,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Health {
    /// Alive is healthy.
    Running,
    /// `org.freedesktop.Avahi.Server.GetState` over this bus socket (inside the namespace) = 2.
    AvahiBus { bus: String },
    /// `{"cmd":"status"}` on this control socket answers `"healthy": true`.
    Control { socket: PathBuf },
    /// The same, over this bus socket inside the machine the child (systemd-nspawn) runs:
    /// under the root of its child, the machine's init.
    MachineBus { bus: String },
}

/// Restart with exponential backoff; never a hot loop.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RestartPolicy {
    #[serde(with = "crate::site::duration")]
    pub first_delay: Duration,
    #[serde(with = "crate::site::duration")]
    pub max_delay: Duration,
    /// Running this long resets the backoff.
    #[serde(with = "crate::site::duration")]
    pub stable_after: Duration,
    /// This many restarts within `stable_after` is reported as a crash loop.
    pub crash_loop_restarts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            crash_loop_restarts: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sysctl {
    /// The component that sets it (and puts back the old value when it stops).
    pub owner: String,
    pub key: String,
    pub value: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MulticastPlan {
    pub table: Option<u32>,
    #[serde(with = "crate::site::duration")]
    pub expire: Duration,
    /// Interfaces that become VIFs (IPv4) and MIFs (IPv6), in this order.
    pub vifs: Vec<String>,
    pub mifs: Vec<String>,
    pub routes: Vec<McRoute>,
    pub joins: Vec<McJoin>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// (S,G): installed at start.
    Static,
    /// (*,G) or a group prefix: resolved on the kernel's NOCACHE upcall.
    Template,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct McRoute {
    pub origin: String,
    pub kind: RouteKind,
    pub from: String,
    pub source: Option<IpAddr>,
    pub group: GroupSpec,
    pub to: Vec<String>,
    pub ttl_threshold: u8,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct McJoin {
    pub origin: String,
    pub on: String,
    pub group: IpAddr,
    pub source: Option<IpAddr>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeadendPlan {
    pub interfaces: Vec<String>,
    pub prefix: ipnet::Ipv6Net,
    pub ipv4_space: Option<ipnet::Ipv4Net>,
    pub querier: QuerierPlan,
    /// The unprivileged user sources run as.
    pub user: String,
    pub max_sources: u32,
    #[serde(with = "crate::site::duration")]
    pub stall: Duration,
    #[serde(
        with = "crate::site::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub sap_interval: Option<Duration>,
    /// Answers `{"cmd":"status"}`; the supervisor's health check of the headend.
    pub control_socket: PathBuf,
    /// SDPs learnt from sources, kept so idle services are announced after a restart.
    pub sdp_dir: PathBuf,
    /// Where sources write their SDP (`{sdp}`): `<state_dir>/sources`, mode 0711, outside
    /// `parts/` (0700), so the sources' user reaches its own file by name.
    pub source_sdp_dir: PathBuf,
    pub services: Vec<ServiceGroup>,
    pub directories: Vec<DirectoryPlan>,
}

/// The MLD/IGMP querier's timers (RFC 9777 §9, RFC 3376 §8), all filled in.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuerierPlan {
    pub mode: crate::site::QuerierMode,
    pub robustness: u8,
    #[serde(with = "crate::site::duration")]
    pub query_interval: Duration,
    #[serde(with = "crate::site::duration")]
    pub query_response_interval: Duration,
    #[serde(with = "crate::site::duration")]
    pub last_listener_interval: Duration,
    pub last_listener_count: u8,
    #[serde(with = "crate::site::duration")]
    pub startup_query_interval: Duration,
    pub startup_query_count: u8,
}

/// A block of service numbers filled at run time from a station list or command file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DirectoryPlan {
    pub name: String,
    pub first: u32,
    pub count: u64,
    /// A file (absolute; relative ones are taken from the site file's directory) or URL.
    pub playlist: Option<String>,
    pub commands: Option<PathBuf>,
    #[serde(
        with = "crate::site::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub linger: Option<Duration>,
}

/// A headend service and the RFC 3306 group its receivers join.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceGroup {
    pub number: u32,
    pub name: String,
    pub group: Ipv6Addr,
    pub rtp_port: u16,
    pub rtcp_port: u16,
    pub sap_port: u16,
    pub source: ServiceSource,
    /// The IPv4 group of IGMP receivers, with `ipv4_space`.
    pub group4: Option<std::net::Ipv4Addr>,
    #[serde(
        with = "crate::site::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub linger: Option<Duration>,
    pub warm: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceSource {
    Command(Vec<String>),
    Url(String),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TranslatorPlan {
    pub unicast: SocketAddr,
    pub space: IpNet,
    pub port: u16,
    pub interface: Option<String>,
    pub ttl: u8,
    #[serde(with = "crate::site::duration")]
    pub idle: Duration,
    pub state_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MonitorPlan {
    pub name: String,
    pub interface: String,
    pub group: IpAddr,
    pub port: u16,
    pub deliver: SocketAddr,
    /// Joining is enough when the daemon listens on the wildcard address and the same port;
    /// otherwise a stateless rewrite hands the datagrams on.
    pub rewrite: bool,
}

/// Builds the plan of a validated site read from `site_file`.
pub fn plan(site: &Site, site_file: &Path) -> Plan {
    let name = site.site.name.clone();
    let state_dir = site
        .site
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/run/appliance/{name}")));
    let mut b = Builder {
        site,
        mroute_fw: firewall::Firewall::new(&name, firewall::OWNERS[0]),
        monitor_fw: firewall::Firewall::new(&name, firewall::OWNERS[1]),
        plan: Plan {
            site: name.clone(),
            site_file: site_file.to_path_buf(),
            control_socket: state_dir.join("control.sock"),
            parts_dir: state_dir.join(PARTS_DIR),
            state_dir,
            bridges: Vec::new(),
            namespaces: Vec::new(),
            mount_spaces: Vec::new(),
            veths: Vec::new(),
            children: Vec::new(),
            sysctls: Vec::new(),
            multicast: MulticastPlan {
                table: site.multicast.as_ref().and_then(|m| m.table),
                expire: site
                    .multicast
                    .as_ref()
                    .map_or(Duration::from_secs(300), |m| m.expire),
                vifs: Vec::new(),
                mifs: Vec::new(),
                routes: Vec::new(),
                joins: Vec::new(),
            },
            firewall: Vec::new(),
            headend: None,
            translator: None,
            monitors: Vec::new(),
            routing: None,
            avahi: site.site.avahi,
        },
    };
    b.vlans();
    b.reflectors();
    b.multicast();
    b.routing();
    b.mroute_child();
    b.translator();
    b.headend();
    b.monitors();
    b.finish_interfaces();
    if b.plan.avahi == AvahiMode::Machines {
        machine::into_machines(&mut b.plan);
    }
    b.plan
}

struct Builder<'a> {
    site: &'a Site,
    mroute_fw: firewall::Firewall,
    monitor_fw: firewall::Firewall,
    plan: Plan,
}

impl Builder<'_> {
    fn site_name(&self) -> &str {
        &self.site.site.name
    }

    /// Record that a part of the site names an interface.
    fn uses(&mut self, iface: &str, by: String) {
        let create = self.site.site.create_bridges;
        match self.plan.bridges.iter_mut().find(|b| b.name == iface) {
            Some(b) => {
                if !b.used_by.contains(&by) {
                    b.used_by.push(by);
                }
            }
            None => self.plan.bridges.push(Bridge {
                name: iface.to_string(),
                create_if_missing: create,
                snooping: None,
                used_by: vec![by],
            }),
        }
    }

    fn vlans(&mut self) {
        let site = self.site;
        let s = self.site_name().to_string();
        for v in &site.vlan {
            self.uses(&v.bridge, format!("vlan {}", v.name));
            if v.trust == Trust::Trusted {
                continue;
            }
            let netns = names::vlan_netns(&s, &v.name);
            let dhcp = v.address == Some(Address4::Dhcp);
            let hostname = dns_label(&netns);
            let mut mounts = vec![Mount::Tmpfs {
                target: "/run".into(),
                options: "mode=0755,size=16m".into(),
                dirs: vec!["/run/dbus".into(), "/run/avahi-daemon".into()],
            }];
            if dhcp {
                mounts.push(Mount::Tmpfs {
                    target: "/var/lib/dhcp".into(),
                    options: "mode=0755,size=1m".into(),
                    dirs: vec![],
                });
                // dhclient-script writes /etc/resolv.conf through a temporary file beside
                // it: an overlay keeps both off the host's /etc.
                mounts.push(Mount::Overlay {
                    target: "/etc".into(),
                    upper: "/run/etc".into(),
                });
            }
            let files = vec![FileSpec {
                path: avahi::CONF_PATH.into(),
                mode: 0o644,
                contents: avahi::vlan_conf(&hostname, &v.name, v.address6.is_some()),
            }];
            self.plan.namespaces.push(Namespace {
                pin: names::netns_pin(&netns).into(),
                mount_pin: self.plan.state_dir.join("mnt").join(&netns),
                name: netns.clone(),
                kind: NamespaceKind::Vlan,
                owner: v.name.clone(),
                hostname,
                mounts,
                files,
            });
            let mut addresses = Vec::new();
            if let Some(Address4::Static(a)) = v.address {
                addresses.push(a);
            }
            addresses.extend(v.address6);
            self.plan.veths.push(VethPair {
                host: names::vlan_veth_host(&s, &v.name),
                host_mac: Mac::stable(&s, &v.name, "vlan-host"),
                bridge: v.bridge.clone(),
                netns: netns.clone(),
                peer: v.name.clone(),
                peer_mac: match v.mac {
                    MacPolicy::Stable => MacSpec::Fixed(Mac::stable(&s, &v.name, "vlan")),
                    MacPolicy::Netns => MacSpec::NetnsInode,
                    MacPolicy::Literal(m) => MacSpec::Fixed(m),
                },
                addresses,
                dhcp,
            });
            let dbus = format!("dbus@{}", v.name);
            self.plan.children.push(dbus_child(&dbus, &netns));
            self.plan.children.push(Child {
                name: format!("avahi@{}", v.name),
                program: Program::External,
                argv: avahi::argv(),
                netns: Some(netns.clone()),
                caps: caps(&avahi::CAPS),
                user: None,
                groups: vec![],
                after: vec![dbus],
                refresh_on: vec![],
                restart: RestartPolicy::default(),
                health: Health::AvahiBus {
                    bus: DBUS_SOCKET.into(),
                },
            });
            if dhcp {
                self.plan.children.push(Child {
                    name: format!("dhcp@{}", v.name),
                    program: Program::External,
                    argv: [
                        "dhclient",
                        "-d",
                        "-4",
                        "-pf",
                        "/run/dhclient.pid",
                        "-lf",
                        "/var/lib/dhcp/dhclient.leases",
                        &v.name,
                    ]
                    .map(String::from)
                    .to_vec(),
                    netns: Some(netns),
                    caps: caps(&["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]),
                    user: None,
                    groups: vec![],
                    after: vec![],
                    refresh_on: vec![],
                    restart: RestartPolicy::default(),
                    health: Health::Running,
                });
            }
        }
    }

    fn reflectors(&mut self) {
        let site = self.site;
        let s = self.site_name().to_string();
        for r in &site.reflector {
            let netns = names::reflector_netns(&s, &r.name);
            let hostname = dns_label(&netns);
            let role = format!("reflector-{}", r.name);
            for vname in &r.vlans {
                let Some(v) = site.vlan.iter().find(|v| &v.name == vname) else {
                    continue;
                };
                self.uses(&v.bridge, format!("reflector {}", r.name));
                self.plan.veths.push(VethPair {
                    host: names::reflector_veth_host(&s, &r.name, vname),
                    host_mac: Mac::stable(&s, vname, &format!("{role}-host")),
                    bridge: v.bridge.clone(),
                    netns: netns.clone(),
                    peer: vname.clone(),
                    peer_mac: MacSpec::Fixed(Mac::stable(&s, vname, &role)),
                    addresses: r.addresses.get(vname).copied().into_iter().collect(),
                    dhcp: false,
                });
            }
            let has_v6 = r.addresses.values().any(|a| a.addr().is_ipv6());
            self.plan.namespaces.push(Namespace {
                pin: names::netns_pin(&netns).into(),
                mount_pin: self.plan.state_dir.join("mnt").join(&netns),
                name: netns.clone(),
                kind: NamespaceKind::Reflector,
                owner: r.name.clone(),
                mounts: vec![Mount::Tmpfs {
                    target: "/run".into(),
                    options: "mode=0755,size=16m".into(),
                    dirs: vec!["/run/avahi-daemon".into()],
                }],
                files: vec![FileSpec {
                    path: avahi::CONF_PATH.into(),
                    mode: 0o644,
                    contents: avahi::reflector_conf(
                        &hostname,
                        &r.vlans,
                        r.services.as_deref(),
                        has_v6,
                    ),
                }],
                hostname,
            });
            let reflector = format!("reflector@{}", r.name);
            for vname in &r.vlans {
                let avahi = format!("avahi@{vname}");
                if let Some(c) = self.plan.children.iter_mut().find(|c| c.name == avahi) {
                    c.refresh_on.push(reflector.clone());
                }
            }
            self.plan.children.push(Child {
                name: reflector,
                program: Program::External,
                argv: avahi::argv(),
                netns: Some(netns),
                caps: caps(&avahi::CAPS),
                user: None,
                groups: vec![],
                after: vec![],
                refresh_on: vec![],
                restart: RestartPolicy::default(),
                health: Health::Running,
            });
        }
    }

    fn multicast(&mut self) {
        let Some(m) = &self.site.multicast else {
            return;
        };
        for (i, r) in m.route.iter().enumerate() {
            let origin = format!("multicast.route[{i}]");
            let kind = if r.source.is_some() && r.group.is_single() {
                RouteKind::Static
            } else {
                RouteKind::Template
            };
            self.add_route(McRoute {
                origin,
                kind,
                from: r.from.clone(),
                source: r.source,
                group: r.group,
                to: r.to.clone(),
                ttl_threshold: r.ttl_threshold,
            });
        }
        for (i, j) in m.join.iter().enumerate() {
            let origin = format!("multicast.join[{i}]");
            self.uses(&j.on, origin.clone());
            self.plan.multicast.joins.push(McJoin {
                origin,
                on: j.on.clone(),
                group: j.group,
                source: j.source,
            });
        }
        self.mroute_fw.accept_in = m.accept_in.clone();
        if let Some(ssdp) = &m.ssdp {
            let group: GroupSpec = GroupSpec(IpNet::from(IpAddr::from(firewall::SSDP_GROUP)));
            for from in &ssdp.bridges {
                let to: Vec<String> = ssdp
                    .bridges
                    .iter()
                    .filter(|b| *b != from)
                    .cloned()
                    .collect();
                self.add_route(McRoute {
                    origin: "multicast.ssdp".into(),
                    kind: RouteKind::Template,
                    from: from.clone(),
                    source: None,
                    group,
                    to,
                    ttl_threshold: 1,
                });
            }
            self.mroute_fw.ssdp(&ssdp.bridges, &ssdp.ports);
        }
        // A joined interface is a VIF/MIF too, as smcroute makes it (after the routes', so
        // route interfaces keep the lowest numbers).
        for j in &self.plan.multicast.joins {
            let list = if j.group.is_ipv4() {
                &mut self.plan.multicast.vifs
            } else {
                &mut self.plan.multicast.mifs
            };
            if !list.contains(&j.on) {
                list.push(j.on.clone());
            }
        }
        if let Some(snoop) = m.snooping {
            let named: Vec<String> = self
                .plan
                .multicast
                .routes
                .iter()
                .flat_map(|r| std::iter::once(r.from.clone()).chain(r.to.iter().cloned()))
                .chain(self.plan.multicast.joins.iter().map(|j| j.on.clone()))
                .collect();
            for b in self.plan.bridges.iter_mut() {
                if named.contains(&b.name) {
                    b.snooping = Some(snoop);
                }
            }
        }
    }

    /// The forwarder runs for routes and joins, and for the MLD proxy's routes.
    fn mroute_child(&mut self) {
        let proxy = self
            .plan
            .routing
            .as_ref()
            .is_some_and(|r| r.mld_proxy.is_some());
        if !self.plan.multicast.routes.is_empty() || !self.plan.multicast.joins.is_empty() || proxy
        {
            let argv = vec![
                "appliance".to_string(),
                "mroute".into(),
                self.plan.site_file.display().to_string(),
                // Its control socket, mroute.sock, in the directory its user owns.
                "--state-dir".into(),
                self.plan.parts_dir.display().to_string(),
            ];
            let mut child = self_child("mroute", argv, &["CAP_NET_ADMIN", "CAP_NET_RAW"]);
            // It answers status there, VIFs compared with its configuration.
            child.health = Health::Control {
                socket: self.plan.parts_dir.join("mroute.sock"),
            };
            self.plan.children.push(child);
        }
    }

    fn add_route(&mut self, r: McRoute) {
        self.uses(&r.from, r.origin.clone());
        for t in &r.to {
            self.uses(t, r.origin.clone());
        }
        let list = if r.group.0.addr().is_ipv4() {
            &mut self.plan.multicast.vifs
        } else {
            &mut self.plan.multicast.mifs
        };
        for i in std::iter::once(&r.from).chain(&r.to) {
            if !list.contains(i) {
                list.push(i.clone());
            }
        }
        self.mroute_fw.forward(&r);
        self.plan.multicast.routes.push(r);
    }

    fn translator(&mut self) {
        let Some(t) = &self.site.translator else {
            return;
        };
        if let Some(i) = &t.interface {
            self.uses(i, "translator".into());
        }
        let state_file = self.plan.parts_dir.join("translator-flows.json");
        let mut argv: Vec<String> = vec![
            "appliance".into(),
            "translate".into(),
            "--unicast-nif-ip".into(),
            t.unicast.ip().to_string(),
            "--unicast-port".into(),
            t.unicast.port().to_string(),
            "--multicast-addr-space".into(),
            t.space.trunc().to_string(),
            "--multicast-port".into(),
            t.port.to_string(),
            "--ttl".into(),
            t.ttl.to_string(),
            "--idle".into(),
            humantime::format_duration(t.idle).to_string(),
            "--max-flows".into(),
            t.max_flows.to_string(),
            "--state-file".into(),
            state_file.display().to_string(),
        ];
        if let Some(i) = &t.interface {
            argv.extend(["--multicast-interface".into(), i.clone()]);
        }
        for net in t.allow.iter().flatten() {
            argv.extend(["--allow".into(), net.to_string()]);
        }
        if !t.sap {
            argv.push("--no-sap".into());
        }
        if let Some(url) = &t.menu {
            argv.extend(["--menu".into(), url.clone()]);
        }
        // CAP_NET_ADMIN for SO_RCVBUFFORCE/SO_SNDBUFFORCE, CAP_NET_BIND_SERVICE for a low
        // port: it drops every capability itself once its sockets are set up.
        let caps_kept: &[&str] = if t.unicast.port() < 1024 {
            &["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
        } else {
            &["CAP_NET_ADMIN"]
        };
        let socket = self.plan.parts_dir.join("translate.sock");
        argv.extend(["--control-socket".into(), socket.display().to_string()]);
        let mut child = self_child("translate", argv, caps_kept);
        child.health = Health::Control { socket };
        self.plan.children.push(child);
        self.plan.translator = Some(TranslatorPlan {
            unicast: t.unicast,
            space: t.space.trunc(),
            port: t.port,
            interface: t.interface.clone(),
            ttl: t.ttl,
            idle: t.idle,
            state_file,
        });
    }

    fn routing(&mut self) {
        let Some(r) = &self.site.routing else {
            return;
        };
        for i in r.interfaces.iter().chain(r.igmp.iter().flatten()) {
            self.uses(i, "routing".into());
        }
        if let Some(p) = &r.mld_proxy {
            for i in std::iter::once(&p.upstream).chain(&p.downstream) {
                self.uses(i, "routing.mld_proxy".into());
                if !self.plan.multicast.mifs.contains(i) {
                    self.plan.multicast.mifs.push(i.clone());
                }
            }
        }
        self.plan.routing = routing::plan(
            &self.plan.site,
            &self.plan.state_dir,
            Some(r),
            !self.plan.multicast.vifs.is_empty(),
        );
        if let Some(frr) = self.plan.routing.as_ref().and_then(|r| r.frr.as_ref()) {
            self.plan.mount_spaces.push(routing::mount_space(frr));
            let children = routing::children(frr, &self.plan.site_file, &self.plan.state_dir);
            self.plan.children.extend(children);
        }
    }

    fn headend(&mut self) {
        let Some(h) = &self.site.headend else {
            return;
        };
        for i in &h.interfaces {
            self.uses(i, "headend".into());
        }
        let services = h
            .service
            .iter()
            .map(|s| ServiceGroup {
                number: s.number,
                name: s.name.clone(),
                group: groups::service_group(h.prefix, s.number),
                rtp_port: RTP_PORT,
                rtcp_port: RTCP_PORT,
                sap_port: SAP_PORT,
                source: match (&s.command, &s.url) {
                    (Some(cmd), _) => {
                        ServiceSource::Command(shell_words::split(cmd).unwrap_or_default())
                    }
                    (None, Some(url)) => ServiceSource::Url(url.clone()),
                    (None, None) => ServiceSource::Command(Vec::new()),
                },
                group4: h
                    .ipv4_space
                    .and_then(|space| groups::service_group4(space, s.number)),
                linger: s.linger,
                warm: s.warm,
            })
            .collect();
        let base = self
            .plan
            .site_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let directories = h
            .directory
            .iter()
            .map(|d| DirectoryPlan {
                name: d.name.clone(),
                first: d.first,
                count: crate::site::directory_block(d).map_or(0, |r| r.end - r.start),
                playlist: d.playlist.as_ref().map(|p| {
                    if p.contains("://") || Path::new(p).is_absolute() {
                        p.clone()
                    } else {
                        base.join(p).display().to_string()
                    }
                }),
                commands: d.commands.as_ref().map(|c| base.join(c)),
                linger: d.linger,
            })
            .collect();
        let rv = h.robustness;
        self.plan.headend = Some(HeadendPlan {
            interfaces: h.interfaces.clone(),
            prefix: h.prefix.trunc(),
            ipv4_space: h.ipv4_space.map(|n| n.trunc()),
            querier: QuerierPlan {
                mode: h.querier,
                robustness: rv,
                query_interval: h.query_interval,
                query_response_interval: h.query_response_interval,
                last_listener_interval: h.last_listener_interval,
                last_listener_count: h.last_listener_count.unwrap_or(rv),
                startup_query_interval: h.startup_query_interval.unwrap_or(h.query_interval / 4),
                startup_query_count: h.startup_query_count.unwrap_or(rv),
            },
            user: h.user.clone(),
            max_sources: h.max_sources,
            stall: h.stall,
            sap_interval: h.sap_interval,
            control_socket: self.plan.parts_dir.join("headend.sock"),
            sdp_dir: self.plan.parts_dir.join("headend"),
            source_sdp_dir: self.plan.state_dir.join("sources"),
            services,
            directories,
        });
        let argv = vec![
            "appliance".into(),
            "headend".into(),
            self.plan.site_file.display().to_string(),
            // Its socket and SDPs go under <state_dir>/parts (see HeadendPlan).
            "--state-dir".into(),
            self.plan.state_dir.display().to_string(),
        ];
        // Raw sockets for MLD/IGMP, multicast interfaces; setuid/setgid to start sources
        // as an unprivileged user, kill to stop them once they run as that user, chown to
        // hand them the file they write their SDP to.
        let mut child = self_child(
            "headend",
            argv,
            &[
                "CAP_NET_ADMIN",
                "CAP_NET_RAW",
                "CAP_SETUID",
                "CAP_SETGID",
                "CAP_KILL",
                "CAP_CHOWN",
            ],
        );
        child.health = Health::Control {
            socket: self.plan.parts_dir.join("headend.sock"),
        };
        self.plan.children.push(child);
    }

    fn monitors(&mut self) {
        let site = self.site;
        for m in &site.monitor {
            self.uses(&m.interface, format!("monitor {}", m.name));
            let rewrite = !(m.deliver.ip().is_unspecified() && m.deliver.port() == m.port);
            if rewrite {
                self.monitor_fw.deliver(m);
                if m.deliver.ip().is_loopback() && m.deliver.is_ipv4() {
                    let s = Sysctl {
                        owner: "monitor".into(),
                        key: format!("net.ipv4.conf.{}.route_localnet", m.interface),
                        value: "1".into(),
                        why: format!("monitor {} delivers to {}", m.name, m.deliver),
                    };
                    if !self.plan.sysctls.iter().any(|x| x.key == s.key) {
                        self.plan.sysctls.push(s);
                    }
                }
            }
            self.plan.monitors.push(MonitorPlan {
                name: m.name.clone(),
                interface: m.interface.clone(),
                group: m.group,
                port: m.port,
                deliver: m.deliver,
                rewrite,
            });
        }
        if !site.monitor.is_empty() {
            let argv = vec![
                "appliance".into(),
                "monitor".into(),
                self.plan.site_file.display().to_string(),
                // Its control socket, monitor.sock, in the directory its user owns.
                "--state-dir".into(),
                self.plan.parts_dir.display().to_string(),
            ];
            // nft and the sysctls need CAP_NET_ADMIN; joining alone needs nothing.
            let kept: &[&str] = if self.monitor_fw.is_empty() {
                &[]
            } else {
                &["CAP_NET_ADMIN"]
            };
            let mut child = self_child("monitor", argv, kept);
            child.health = Health::Control {
                socket: self.plan.parts_dir.join("monitor.sock"),
            };
            self.plan.children.push(child);
        }
    }

    fn finish_interfaces(&mut self) {
        self.plan.sysctls.sort();
        for fw in [&self.mroute_fw, &self.monitor_fw] {
            if !fw.is_empty() {
                self.plan.firewall.push(fw.clone());
            }
        }
    }
}

/// Where the private bus listens inside a VLAN namespace's mounts.
pub const DBUS_SOCKET: &str = "/run/dbus/system_bus_socket";

fn dbus_child(name: &str, netns: &str) -> Child {
    Child {
        name: name.to_string(),
        program: Program::External,
        argv: [
            "dbus-daemon",
            "--system",
            &format!("--address=unix:path={DBUS_SOCKET}"),
            "--nofork",
            "--nopidfile",
        ]
        .map(String::from)
        .to_vec(),
        netns: Some(netns.to_string()),
        // It switches to the messagebus user after binding its socket.
        caps: caps(&["CAP_SETGID", "CAP_SETUID"]),
        user: None,
        groups: vec![],
        after: vec![],
        refresh_on: vec![],
        restart: RestartPolicy::default(),
        health: Health::Running,
    }
}

/// The unprivileged system user the appliance's own network-facing parts run as
/// (`scripts/install-deps` creates it).
pub const PARTS_USER: &str = "appliance";

/// The directory under the state dir that [`PARTS_USER`] owns.
pub const PARTS_DIR: &str = "parts";

/// One of the appliance's own parts: it runs as [`PARTS_USER`] with `kept` as ambient
/// capabilities.
fn self_child(role: &str, argv: Vec<String>, kept: &[&str]) -> Child {
    Child {
        name: role.to_string(),
        program: Program::SelfExe,
        argv,
        netns: None,
        caps: caps(kept),
        user: Some(PARTS_USER.into()),
        groups: vec![],
        after: vec![],
        refresh_on: vec![],
        restart: RestartPolicy::default(),
        health: Health::Running,
    }
}

fn caps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A DNS label for avahi's host-name: '_' is not allowed there.
fn dns_label(s: &str) -> String {
    s.replace('_', "-")
}

impl Plan {
    /// The plan as JSON for scripts.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plan serializes")
    }
}
