//! The serde types of `site.toml`: exactly the keys of the contract in docs/contract.md,
//! plus a few optional ones an operator needs. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub site: SiteSection,
    #[serde(default)]
    pub vlan: Vec<Vlan>,
    #[serde(default)]
    pub reflector: Vec<Reflector>,
    #[serde(default)]
    pub multicast: Option<Multicast>,
    #[serde(default)]
    pub translator: Option<Translator>,
    #[serde(default)]
    pub headend: Option<Headend>,
    #[serde(default)]
    pub monitor: Vec<Monitor>,
    #[serde(default)]
    pub routing: Option<Routing>,
}

impl Site {
    /// The same site with its state directory overridden (`--state-dir`): the plan then
    /// derives every path under it (control socket, mroute.sock, the translator's state).
    pub fn with_state_dir(&self, dir: Option<PathBuf>) -> Site {
        let mut site = self.clone();
        if let Some(dir) = dir {
            site.site.state_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        }
        site
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Short: it goes into namespace and interface names.
    pub name: String,
    /// Defaults to `/run/appliance/<name>`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Make missing bridges (a lab); on a router they must exist already.
    #[serde(default)]
    pub create_bridges: bool,
    /// How each VLAN's and reflector's avahi runs: children of the supervisor, or
    /// systemd-nspawn machines with the rendered settings.
    #[serde(default)]
    pub avahi: AvahiMode,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AvahiMode {
    /// avahi-daemon (and a VLAN's dbus-daemon) as direct children, in the namespace's
    /// private mounts.
    #[default]
    Children,
    /// A systemd-nspawn machine per VLAN and reflector, booting dbus and avahi.
    Machines,
}

impl AvahiMode {
    pub fn is_children(&self) -> bool {
        *self == AvahiMode::Children
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    Trusted,
    /// The safe default: a VLAN nobody marked trusted gets isolated.
    #[default]
    Untrusted,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    pub name: String,
    pub bridge: String,
    #[serde(default)]
    pub trust: Trust,
    #[serde(default)]
    pub address: Option<Address4>,
    #[serde(default)]
    pub address6: Option<IpNet>,
    #[serde(default)]
    pub mac: MacPolicy,
}

/// The IPv4 side of a VLAN namespace: a static address or a DHCP lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address4 {
    Static(IpNet),
    Dhcp,
}

impl FromStr for Address4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "dhcp" {
            return Ok(Address4::Dhcp);
        }
        s.parse::<IpNet>().map(Address4::Static).map_err(|_| {
            format!("{s:?} is neither \"dhcp\" nor an address with prefix like \"10.20.2.2/24\"")
        })
    }
}

impl fmt::Display for Address4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address4::Static(n) => write!(f, "{n}"),
            Address4::Dhcp => f.write_str("dhcp"),
        }
    }
}

/// How the MAC of a VLAN namespace's veth is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacPolicy {
    /// Locally administered unicast, hashed from (site, vlan, role): survives re-creation.
    #[default]
    Stable,
    /// The manual setup's scheme: `fe:ff:` + 4 bytes of the netns inode XOR 0xf0000000
    /// (docs/architecture.md).
    Netns,
    /// Taken as given.
    Literal(crate::mac::Mac),
}

impl FromStr for MacPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stable" => Ok(MacPolicy::Stable),
            "netns" => Ok(MacPolicy::Netns),
            _ => s.parse().map(MacPolicy::Literal).map_err(|e| {
                format!("{e}; expected \"stable\", \"netns\" or a MAC like \"02:00:5e:10:00:01\"")
            }),
        }
    }
}

impl fmt::Display for MacPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacPolicy::Stable => f.write_str("stable"),
            MacPolicy::Netns => f.write_str("netns"),
            MacPolicy::Literal(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reflector {
    pub name: String,
    pub vlans: Vec<String>,
    /// Only these service types cross; absent = all.
    #[serde(default)]
    pub services: Option<Vec<String>>,
    /// Address of the reflector's leg in each VLAN (optional, per VLAN).
    #[serde(default)]
    pub addresses: BTreeMap<String, IpNet>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Multicast {
    /// Set `multicast_snooping` on every bridge the multicast section names.
    #[serde(default)]
    pub snooping: Option<bool>,
    /// Kernel multicast routing table (MRT_TABLE); absent = the default table.
    #[serde(default)]
    pub table: Option<u32>,
    /// Learned (*,G) entries idle this long are removed.
    #[serde(default = "default_route_expiry", with = "duration")]
    pub expire: Duration,
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub join: Vec<Join>,
    #[serde(default)]
    pub ssdp: Option<Ssdp>,
    /// Chains of the router's own firewall, written `"FAMILY TABLE CHAIN"` (e.g.
    /// `"inet filter forward"`), whose drop policy would eat the forwarded groups: the
    /// forwarder inserts its accept rules at their top, tagged, and removes them on exit.
    #[serde(default)]
    pub accept_in: Vec<String>,
}

fn default_route_expiry() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub from: String,
    /// Absent: (*,G), learnt on demand.
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// A group or a prefix of groups.
    pub group: GroupSpec,
    pub to: Vec<String>,
    /// Packets need a TTL above this to leave (smcroute's default: 1, i.e. TTL >= 2).
    #[serde(default = "default_ttl_threshold")]
    pub ttl_threshold: u8,
}

fn default_ttl_threshold() -> u8 {
    1
}

/// A group address or a prefix of groups, written `"239.1.2.3"` or `"239.1.0.0/16"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupSpec(pub IpNet);

impl GroupSpec {
    pub fn is_single(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }
}

impl FromStr for GroupSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(GroupSpec(IpNet::from(a)));
        }
        s.parse::<IpNet>()
            .map(|n| GroupSpec(n.trunc()))
            .map_err(|_| format!("{s:?} is not a group address or prefix like \"239.1.0.0/16\""))
    }
}

impl fmt::Display for GroupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub on: String,
    pub group: IpAddr,
    /// Source-specific join when given.
    #[serde(default)]
    pub source: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssdp {
    pub bridges: Vec<String>,
    #[serde(default = "default_ssdp_ports")]
    pub ports: Vec<u16>,
}

fn default_ssdp_ports() -> Vec<u16> {
    vec![1900]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Translator {
    /// Address and port unicast sources send to.
    pub unicast: SocketAddr,
    #[serde(default = "default_space")]
    pub space: IpNet,
    #[serde(default = "default_mcast_port")]
    pub port: u16,
    /// Where the multicast leaves.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default = "default_translator_ttl")]
    pub ttl: u8,
    #[serde(default = "default_idle", with = "duration")]
    pub idle: Duration,
    /// Source prefixes allowed to send; absent = anyone.
    #[serde(default)]
    pub allow: Option<Vec<IpNet>>,
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    /// Announce every flow with SAP.
    #[serde(default = "default_true")]
    pub sap: bool,
    /// Base URL of a Multicast Menu to register flows with.
    #[serde(default)]
    pub menu: Option<String>,
}

fn default_space() -> IpNet {
    "232.0.0.0/8".parse().expect("literal")
}
fn default_mcast_port() -> u16 {
    9002
}
fn default_translator_ttl() -> u8 {
    32
}
fn default_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_max_flows() -> u32 {
    10_000
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Headend {
    /// Where receivers' MLD/IGMP joins are heard.
    pub interfaces: Vec<String>,
    /// RFC 3306 groups ff3e:PL:<prefix>:<0x80000000|number>.
    pub prefix: Ipv6Net,
    /// IPv4 groups for IGMP receivers: service `n` is the space's `n`-th address.
    #[serde(default)]
    pub ipv4_space: Option<ipnet::Ipv4Net>,
    /// Whether the headend may act as MLD/IGMP querier on its interfaces.
    #[serde(default)]
    pub querier: QuerierMode,
    /// RFC 9777 §9.1 / RFC 3376 §8.1.
    #[serde(default = "default_robustness")]
    pub robustness: u8,
    #[serde(default = "default_query_interval", with = "duration")]
    pub query_interval: Duration,
    #[serde(default = "default_query_response_interval", with = "duration")]
    pub query_response_interval: Duration,
    #[serde(default = "default_last_listener_interval", with = "duration")]
    pub last_listener_interval: Duration,
    /// Default: `robustness`.
    #[serde(default)]
    pub last_listener_count: Option<u8>,
    /// Default: a quarter of `query_interval`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub startup_query_interval: Option<Duration>,
    /// Default: `robustness`.
    #[serde(default)]
    pub startup_query_count: Option<u8>,
    /// The unprivileged user sources run as.
    #[serde(default = "default_source_user")]
    pub user: String,
    /// At most this many sources run at once.
    #[serde(default = "default_max_sources")]
    pub max_sources: u32,
    /// A running source that sends nothing for this long is restarted.
    #[serde(default = "default_stall", with = "duration")]
    pub stall: Duration,
    /// Re-announce each service on the SAP menu this often; default: RFC 2974's (at
    /// least 300 s).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub sap_interval: Option<Duration>,
    #[serde(default)]
    pub service: Vec<Service>,
    #[serde(default)]
    pub directory: Vec<Directory>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuerierMode {
    /// Query when elected (the lowest address on the link queries).
    #[default]
    Auto,
    /// Only listen; another router queries.
    Never,
}

fn default_robustness() -> u8 {
    2
}
fn default_query_interval() -> Duration {
    Duration::from_secs(125)
}
fn default_query_response_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_last_listener_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_source_user() -> String {
    "nobody".into()
}
fn default_max_sources() -> u32 {
    16
}
fn default_stall() -> Duration {
    Duration::from_secs(5)
}

/// A block of service numbers filled from a station list or a command file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Names the directory in logs and status.
    pub name: String,
    /// The first service number of the block.
    pub first: u32,
    /// How many numbers the block holds; or `bits`: the block is `first` plus 2^bits.
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub bits: Option<u8>,
    /// M3U, PLS or a JSON station list: a local file or an http(s) URL.
    #[serde(default)]
    pub playlist: Option<String>,
    /// A file of `number = command` lines (numbers relative to `first`).
    #[serde(default)]
    pub commands: Option<PathBuf>,
    /// As for a service.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub linger: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// 31-bit service number.
    pub number: u32,
    pub name: String,
    /// A source command; `{rtp}` becomes the RTP URL it must send to.
    #[serde(default)]
    pub command: Option<String>,
    /// An internet-radio URL, resolved by the headend's HTTP handler.
    #[serde(default)]
    pub url: Option<String>,
    /// Keep the source running this long after the last listener left (channel zapping).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub linger: Option<Duration>,
    /// Run the source from the start; joins only switch the relay.
    #[serde(default)]
    pub warm: bool,
}

/// `[routing]`: how multicast crosses several routers of one site.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    /// Who routes IPv4 multicast between routers.
    #[serde(default)]
    pub engine: Engine,
    /// Where PIM runs (`ip pim`), with `engine = "frr"`.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Where IGMP is heard from receivers (`ip igmp`); default: `interfaces`.
    #[serde(default)]
    pub igmp: Option<Vec<String>>,
    /// The rendezvous point: one address for 224.0.0.0/4, or `[[routing.rp]]` per group range.
    #[serde(default)]
    pub rp: Option<RpSpec>,
    /// IPv6: RFC 4605 MLD proxying towards the router that has the sources.
    #[serde(default)]
    pub mld_proxy: Option<MldProxy>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// `[[multicast.route]]` only: the appliance's own forwarder.
    #[default]
    Static,
    /// FRR's zebra, staticd and pimd (PIM-SM, IGMPv3) own the IPv4 multicast table.
    Frr,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Static => "static",
            Engine::Frr => "frr",
        })
    }
}

/// `rp = "10.0.0.1"` (for 224.0.0.0/4) or `[[routing.rp]]` tables.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RpSpec {
    One(std::net::Ipv4Addr),
    Each(Vec<Rp>),
}

impl<'de> Deserialize<'de> for RpSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RpSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an IPv4 address (\"10.0.0.1\") or [[routing.rp]] tables with group and address",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RpSpec, E> {
                v.parse().map(RpSpec::One).map_err(|_| {
                    E::custom(format!(
                        "{v:?} is not an IPv4 address (the RP's, like \"10.0.0.1\")"
                    ))
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RpSpec, A::Error> {
                Vec::<Rp>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RpSpec::Each)
            }
        }
        d.deserialize_any(V)
    }
}

impl RpSpec {
    /// Every (group range, RP address), the single form covering 224.0.0.0/4.
    pub fn ranges(&self) -> Vec<Rp> {
        match self {
            RpSpec::One(a) => vec![Rp {
                group: "224.0.0.0/4".parse().expect("a valid prefix"),
                address: *a,
            }],
            RpSpec::Each(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rp {
    pub group: ipnet::Ipv4Net,
    pub address: std::net::Ipv4Addr,
}

/// `[routing.mld_proxy]`: one upstream, the querier on each downstream (RFC 4605).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MldProxy {
    pub upstream: String,
    pub downstream: Vec<String>,
    /// RFC 9777 §9 timers of the downstream querier, as in `[headend]`.
    #[serde(default = "default_robustness")]
    pub robustness: u8,
    #[serde(default = "default_query_interval", with = "duration")]
    pub query_interval: Duration,
    #[serde(default = "default_query_response_interval", with = "duration")]
    pub query_response_interval: Duration,
    #[serde(default = "default_last_listener_interval", with = "duration")]
    pub last_listener_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    pub name: String,
    pub interface: String,
    pub group: IpAddr,
    pub port: u16,
    /// The local daemon's address and port.
    pub deliver: SocketAddr,
}

/// Strings parsed with `FromStr`, so the error text is ours and names what is valid.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serde_via_str!(Address4, MacPolicy, GroupSpec);

/// Durations written like `"60s"`, `"250ms"`, `"5m"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like \"60s\", \"250ms\" or \"5m\" ({e})"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*v))
    }
}

/// An optional duration written like `"10s"`.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::duration::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}
