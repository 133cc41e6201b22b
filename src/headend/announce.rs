//! The SAP menu (RFC 2974): every service whose media description is known is announced
//! on the SAP address of its group's scope (ff3e → ff0e::2:7ffe; 239/8 → 239.255.255.255),
//! idle or not, so a client listening to SAP finds it and its join starts it. While a
//! service runs it is also announced on its own group, port 9875, out of the interfaces
//! that have its listeners. The media lines (rtpmap, fmtp) come from the source's own SDP,
//! kept in the state directory so an idle service is announced after a restart.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, info, warn};

use super::relay::Output;
use crate::plan::RTP_PORT;
use crate::sap::{self, Media, SapPacket, Sdp};
use crate::sockets as mnet;

/// Hop limit / TTL of SAP packets (RFC 2974 §3: the scope bounds them, not the TTL).
pub const SAP_HOPS: u8 = 255;
/// How often a running service is announced on its own group (as ffmpeg's SAP muxer does).
pub const GROUP_INTERVAL: Duration = Duration::from_secs(5);

/// The source's media description: the first `m=` line and its rtpmap/fmtp attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDesc {
    pub media: Media,
    pub attributes: Vec<String>,
}

impl MediaDesc {
    /// From the SDP a source wrote (ffmpeg's `-sdp_file`); None if it has no media.
    pub fn from_source_sdp(text: &str) -> Option<MediaDesc> {
        let sdp = Sdp::parse(text).ok()?;
        let m = sdp.media.first()?.clone();
        let attributes = sdp
            .attributes
            .iter()
            .filter(|a| a.starts_with("rtpmap:") || a.starts_with("fmtp:"))
            .cloned()
            .collect();
        Some(MediaDesc {
            media: Media {
                kind: m.kind,
                port: RTP_PORT,
                proto: m.proto,
                formats: m.formats,
            },
            attributes,
        })
    }
}

/// What the station says, for `s=`, `i=` and `u=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: Option<String>,
    pub title: Option<String>,
    pub url: Option<String>,
}

/// One line's worth of text: SDP values end at the line end.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .take(200)
        .collect()
}

/// The SDP of a service (pure: the same inputs give the same text).
pub fn render(
    number: u32,
    name: &str,
    meta: &Meta,
    group: IpAddr,
    origin: IpAddr,
    version: u64,
    media: &MediaDesc,
) -> String {
    let name = meta
        .name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or(name);
    let mut attributes = vec!["tool:appliance".to_string(), "type:broadcast".to_string()];
    attributes.extend(media.attributes.iter().cloned());
    Sdp {
        origin_user: "-".into(),
        session_id: u64::from(number),
        version,
        origin_addr: Some(origin),
        name: one_line(name),
        info: meta
            .title
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(one_line),
        uri: meta.url.as_deref().filter(|u| !u.is_empty()).map(one_line),
        connection: Some(group),
        ttl: group.is_ipv4().then_some(32),
        media: vec![media.media.clone()],
        attributes,
    }
    .render()
}

struct Session {
    name: String,
    group6: Ipv6Addr,
    group4: Option<Ipv4Addr>,
    media: Option<MediaDesc>,
    meta: Meta,
    running: bool,
    outputs: Vec<Output>,
    version: u64,
    /// Last SDP sent per family, with its hash (for deletions).
    sent6: Option<(String, u16)>,
    sent4: Option<(String, u16)>,
    menu_due: Instant,
    group_due: Instant,
}

/// The announcer: sessions, their pacing and the sockets.
pub struct Announcer {
    ifaces: Vec<String>,
    sessions: BTreeMap<u32, Session>,
    /// None: RFC 2974's (at least 300 s).
    interval: Option<Duration>,
    sdp_dir: PathBuf,
    sockets: BTreeMap<(u32, bool), UdpSocket>,
    jitter: u64,
}

fn socket(ifindex: u32, v6: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    mnet::set_multicast(&s, v6, SAP_HOPS, ifindex)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl Announcer {
    pub fn new(ifaces: Vec<String>, interval: Option<Duration>, sdp_dir: PathBuf) -> Announcer {
        if let Err(e) = std::fs::create_dir_all(&sdp_dir) {
            warn!("cannot keep SDPs in {}: {e}", sdp_dir.display());
        }
        Announcer {
            ifaces,
            sessions: BTreeMap::new(),
            interval,
            sdp_dir,
            sockets: BTreeMap::new(),
            jitter: 0x9e37_79b9,
        }
    }

    fn sdp_file(&self, number: u32) -> PathBuf {
        self.sdp_dir.join(format!("{number}.sdp"))
    }

    /// A service to announce (once its media is known). Its SDP kept from an earlier run
    /// is read back.
    pub fn add(&mut self, number: u32, name: &str, group6: Ipv6Addr, group4: Option<Ipv4Addr>) {
        let kept = std::fs::read_to_string(self.sdp_file(number))
            .ok()
            .and_then(|t| MediaDesc::from_source_sdp(&t));
        let now = Instant::now();
        // The first announcements go out soon after start, a few ms apart.
        let first = now + Duration::from_millis(20 * (self.sessions.len() as u64 % 50));
        let s = self.sessions.entry(number).or_insert(Session {
            name: name.to_string(),
            group6,
            group4,
            media: None,
            meta: Meta::default(),
            running: false,
            outputs: vec![],
            version: 1,
            sent6: None,
            sent4: None,
            menu_due: first,
            group_due: first,
        });
        s.name = name.to_string();
        if s.media.is_none() {
            s.media = kept;
        }
    }

    pub fn has_media(&self, number: u32) -> bool {
        self.sessions
            .get(&number)
            .is_some_and(|s| s.media.is_some())
    }

    /// The source wrote its SDP: keep it, and announce at once if it changed.
    pub fn learn_sdp(&mut self, number: u32, text: &str) {
        let Some(m) = MediaDesc::from_source_sdp(text) else {
            return;
        };
        let path = self.sdp_file(number);
        let Some(s) = self.sessions.get_mut(&number) else {
            return;
        };
        if s.media.as_ref() != Some(&m) {
            info!(
                "service {number} {:?}: media {} {} {}",
                s.name,
                m.media.kind,
                m.media.formats.join(" "),
                m.attributes.join("; ")
            );
            s.media = Some(m);
            s.version += 1;
            let now = Instant::now();
            s.menu_due = now;
            s.group_due = now;
            if let Err(e) = std::fs::write(&path, text) {
                warn!("keeping the SDP in {}: {e}", path.display());
            }
        }
    }

    /// New station metadata (a title change): the SDP and its hash change.
    pub fn set_meta(&mut self, number: u32, meta: Meta) {
        if let Some(s) = self.sessions.get_mut(&number)
            && s.meta != meta
        {
            s.meta = meta;
            s.version += 1;
            let now = Instant::now();
            s.menu_due = now;
            s.group_due = now;
        }
    }

    pub fn set_running(&mut self, number: u32, running: bool, outputs: Vec<Output>) {
        if let Some(s) = self.sessions.get_mut(&number) {
            if running && !s.running {
                s.group_due = Instant::now();
            }
            s.running = running;
            s.outputs = outputs;
        }
    }

    /// The service is gone: a deletion on the menu (clients like VLC ignore it; nothing
    /// depends on it).
    pub fn remove(&mut self, number: u32) {
        if let Some(s) = self.sessions.remove(&number) {
            for (sent, group) in [
                (s.sent6, IpAddr::V6(s.group6)),
                (s.sent4, s.group4.map_or(IpAddr::V6(s.group6), IpAddr::V4)),
            ] {
                if let Some((sdp, hash)) = sent {
                    self.send_menu(group, true, hash, &sdp);
                }
            }
        }
    }

    fn origin(&self, v6: bool) -> IpAddr {
        self.ifaces
            .iter()
            .find_map(|i| mnet::interface_address(Some(i), v6))
            .unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            })
    }

    fn sock(&mut self, ifindex: u32, v6: bool) -> Option<&UdpSocket> {
        if let std::collections::btree_map::Entry::Vacant(v) = self.sockets.entry((ifindex, v6)) {
            match socket(ifindex, v6) {
                Ok(s) => {
                    v.insert(s);
                }
                Err(e) => {
                    debug!("SAP socket on ifindex {ifindex}: {e}");
                    return None;
                }
            }
        }
        self.sockets.get(&(ifindex, v6))
    }

    /// To the scope's SAP address out of every headend interface.
    fn send_menu(&mut self, group: IpAddr, deletion: bool, hash: u16, sdp: &str) {
        let v6 = group.is_ipv6();
        let pkt = SapPacket::sdp(deletion, hash, self.origin(v6), sdp).encode();
        let to = sap::sap_address(group);
        for i in self.ifaces.clone() {
            let Some(ifindex) = mnet::ifindex(&i) else {
                continue;
            };
            if let Some(s) = self.sock(ifindex, v6)
                && let Err(e) = s.send_to(&pkt, to)
            {
                debug!("SAP to {to} on {i}: {e}");
            }
        }
    }

    fn base_interval(&self, size: usize) -> Duration {
        self.interval
            .unwrap_or_else(|| sap::interval(self.sessions.len().max(1), size))
    }

    /// RFC 2974 §3.1: the interval with ±1/3 random offset.
    fn jittered(&mut self, base: Duration) -> Duration {
        // xorshift: enough randomness for spreading packets.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let third = base.as_millis() as u64 / 3;
        let off = if third == 0 {
            0
        } else {
            self.jitter % (2 * third)
        };
        Duration::from_millis(base.as_millis() as u64 - third + off)
    }

    /// Sends what is due; returns when to come back.
    pub fn tick(&mut self, now: Instant) -> Instant {
        let numbers: Vec<u32> = self.sessions.keys().copied().collect();
        let mut next = now + Duration::from_secs(60);
        for n in numbers {
            let origin6 = self.origin(true);
            let origin4 = self.origin(false);
            let Some(s) = self.sessions.get(&n) else {
                continue;
            };
            let Some(media) = s.media.clone() else {
                continue;
            };
            let sdp6 = render(
                n,
                &s.name,
                &s.meta,
                s.group6.into(),
                origin6,
                s.version,
                &media,
            );
            let sdp4 = s
                .group4
                .map(|g| render(n, &s.name, &s.meta, g.into(), origin4, s.version, &media));
            let (menu_due, group_due, running) = (s.menu_due, s.group_due, s.running);
            let outputs = s.outputs.clone();
            let (group6, group4) = (s.group6, s.group4);
            if menu_due <= now {
                let h6 = sap::msg_id_hash(&sdp6);
                self.send_menu(group6.into(), false, h6, &sdp6);
                let mut sent4 = None;
                if let (Some(t), Some(g)) = (&sdp4, group4) {
                    let h4 = sap::msg_id_hash(t);
                    self.send_menu(g.into(), false, h4, t);
                    sent4 = Some((t.clone(), h4));
                }
                let base = self.base_interval(sdp6.len() + 24);
                let due = now + self.jittered(base);
                if let Some(s) = self.sessions.get_mut(&n) {
                    s.sent6 = Some((sdp6.clone(), h6));
                    s.sent4 = sent4;
                    s.menu_due = due;
                }
            }
            if running && group_due <= now {
                for o in &outputs {
                    let v6 = !o.listener.v4;
                    let (group, sdp) = match (v6, group4, &sdp4) {
                        (true, _, _) => (IpAddr::V6(group6), &sdp6),
                        (false, Some(g), Some(t)) => (IpAddr::V4(g), t),
                        _ => continue,
                    };
                    let pkt = SapPacket::sdp(
                        false,
                        sap::msg_id_hash(sdp),
                        if v6 { origin6 } else { origin4 },
                        sdp,
                    )
                    .encode();
                    if let Some(sock) = self.sock(o.ifindex, v6) {
                        let _ = sock.send_to(&pkt, SocketAddr::new(group, sap::SAP_PORT));
                    }
                }
                if let Some(s) = self.sessions.get_mut(&n) {
                    s.group_due = now + GROUP_INTERVAL;
                }
            }
            if let Some(s) = self.sessions.get(&n) {
                next = next.min(s.menu_due);
                if s.running {
                    next = next.min(s.group_due);
                }
            }
        }
        next
    }
}

/// Where a service's source writes its SDP.
pub fn source_sdp_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number}.source.sdp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:libavformat 59.27.100\r\nm=audio 40000 RTP/AVP 97\r\nb=AS:64\r\na=rtpmap:97 opus/48000/2\r\na=fmtp:97 sprop-stereo=0\r\n";

    fn media() -> MediaDesc {
        MediaDesc::from_source_sdp(FFMPEG_SDP).unwrap()
    }

    #[test]
    fn the_media_of_ffmpeg_sdp() {
        let m = media();
        assert_eq!(m.media.port, 5004);
        assert_eq!(m.media.formats, vec!["97"]);
        assert_eq!(
            m.attributes,
            vec!["rtpmap:97 opus/48000/2", "fmtp:97 sprop-stereo=0"]
        );
        assert_eq!(MediaDesc::from_source_sdp("v=0\r\ns=x\r\n"), None);
        assert_eq!(MediaDesc::from_source_sdp("garbage"), None);
    }

    #[test]
    fn the_sdp_names_the_service_and_its_group() {
        let g: IpAddr = "ff3e:40:fd20:1::8000:1".parse().unwrap();
        let o: IpAddr = "fd20:1::1".parse().unwrap();
        let t = render(1, "Test tone", &Meta::default(), g, o, 1, &media());
        let sdp = Sdp::parse(&t).unwrap();
        assert_eq!(sdp.name, "Test tone");
        assert_eq!(sdp.connection, Some(g));
        assert_eq!(sdp.media[0].port, 5004);
        assert!(t.contains("a=rtpmap:97 opus/48000/2\r\n"));
        // rtpmap follows the m= line.
        assert!(t.find("m=audio").unwrap() < t.find("a=rtpmap").unwrap());
        assert_eq!(sdp.info, None);
    }

    #[test]
    fn station_metadata_goes_into_s_i_u_and_changes_the_hash() {
        let g: IpAddr = "ff3e:40:fd20:1::8000:2".parse().unwrap();
        let o: IpAddr = "fd20:1::1".parse().unwrap();
        let mut meta = Meta {
            name: Some("Test FM".into()),
            title: Some("Song one".into()),
            url: Some("http://radio.example/".into()),
        };
        let a = render(2, "Radio", &meta, g, o, 1, &media());
        let sdp = Sdp::parse(&a).unwrap();
        assert_eq!(sdp.name, "Test FM");
        assert_eq!(sdp.info.as_deref(), Some("Song one"));
        assert_eq!(sdp.uri.as_deref(), Some("http://radio.example/"));
        meta.title = Some("Song two\r\nm=evil 1 x y".into());
        let b = render(2, "Radio", &meta, g, o, 2, &media());
        assert_ne!(sap::msg_id_hash(&a), sap::msg_id_hash(&b));
        // A title cannot add lines.
        assert_eq!(Sdp::parse(&b).unwrap().media.len(), 1);
    }

    #[test]
    fn ipv4_sdp_carries_a_ttl() {
        let g: IpAddr = "239.10.0.1".parse().unwrap();
        let o: IpAddr = "10.0.0.1".parse().unwrap();
        let t = render(1, "x", &Meta::default(), g, o, 1, &media());
        assert!(t.contains("c=IN IP4 239.10.0.1/32\r\n"), "{t}");
        assert_eq!(sap::sap_address(g), "239.255.255.255:9875".parse().unwrap());
    }

    #[test]
    fn a_kept_sdp_is_announced_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("announce-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let g: Ipv6Addr = "ff3e:40:fd20:1::8000:1".parse().unwrap();
        let mut a = Announcer::new(vec![], Some(Duration::from_secs(1)), dir.clone());
        a.add(1, "x", g, None);
        assert!(!a.has_media(1));
        a.learn_sdp(1, FFMPEG_SDP);
        assert!(a.has_media(1));
        let mut b = Announcer::new(vec![], Some(Duration::from_secs(1)), dir.clone());
        b.add(1, "x", g, None);
        assert!(b.has_media(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jitter_stays_within_a_third() {
        let mut a = Announcer::new(vec![], None, std::env::temp_dir());
        for _ in 0..1000 {
            let d = a.jittered(Duration::from_secs(300));
            assert!(d >= Duration::from_secs(200) && d <= Duration::from_secs(400));
        }
    }
}
