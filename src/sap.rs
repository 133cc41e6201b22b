//! SAP (RFC 2974) packets and the small SDP (RFC 4566) sessions they carry. Shared by the
//! translator and the headend. Parsing never panics on any input (a test feeds it random
//! and mutated packets).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The UDP port of SAP.
pub const SAP_PORT: u16 = 9875;
/// The payload type real clients (VLC, ffmpeg) accept.
pub const SDP_MIME: &str = "application/sdp";
/// SAP over IPv4 for global scope.
pub const SAP_V4_GLOBAL: Ipv4Addr = Ipv4Addr::new(224, 2, 127, 254);
/// SAP over IPv4 for the administratively scoped 239/8.
pub const SAP_V4_ADMIN: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 255);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SapError {
    #[error("parsing SAP packet: {0} bytes is shorter than its header")]
    Short(usize),
    #[error("parsing SAP packet: version {0}, only 1 is known")]
    Version(u8),
    #[error("parsing SAP packet: encrypted payloads are not supported")]
    Encrypted,
    #[error("parsing SAP packet: compressed payloads are not supported")]
    Compressed,
    #[error("parsing SAP packet: the payload type is not terminated by NUL")]
    PayloadType,
    #[error("parsing SAP packet: message id hash 0 (clients drop it)")]
    ZeroHash,
    #[error("parsing SDP line {line}: {why}")]
    Sdp { line: usize, why: String },
}

/// One SAP packet (announcement or deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SapPacket {
    pub deletion: bool,
    /// Non-zero; changes whenever the SDP changes.
    pub msg_id_hash: u16,
    /// The announcing host.
    pub origin: IpAddr,
    /// `None` when the packet omits it (the SDP is then implied).
    pub payload_type: Option<String>,
    pub payload: Vec<u8>,
}

impl SapPacket {
    /// An announcement (or deletion) of an SDP.
    pub fn sdp(deletion: bool, msg_id_hash: u16, origin: IpAddr, sdp: &str) -> SapPacket {
        SapPacket {
            deletion,
            msg_id_hash,
            origin,
            payload_type: Some(SDP_MIME.into()),
            payload: sdp.as_bytes().to_vec(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let v6 = self.origin.is_ipv6();
        let mut flags = 1u8 << 5;
        if v6 {
            flags |= 1 << 4;
        }
        if self.deletion {
            flags |= 1 << 2;
        }
        let mut out = Vec::with_capacity(24 + 16 + self.payload.len());
        out.push(flags);
        out.push(0); // no authentication data
        out.extend_from_slice(&self.msg_id_hash.to_be_bytes());
        match self.origin {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
        if let Some(t) = &self.payload_type {
            out.extend_from_slice(t.as_bytes());
            out.push(0);
        }
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn parse(buf: &[u8]) -> Result<SapPacket, SapError> {
        let short = || SapError::Short(buf.len());
        let (&flags, rest) = buf.split_first().ok_or_else(short)?;
        let version = flags >> 5;
        if version != 1 {
            return Err(SapError::Version(version));
        }
        if flags & 0x02 != 0 {
            return Err(SapError::Encrypted);
        }
        if flags & 0x01 != 0 {
            return Err(SapError::Compressed);
        }
        let v6 = flags & 0x10 != 0;
        let deletion = flags & 0x04 != 0;
        let (&auth_words, rest) = rest.split_first().ok_or_else(short)?;
        let hash = rest.get(..2).ok_or_else(short)?;
        let msg_id_hash = u16::from_be_bytes([hash[0], hash[1]]);
        if msg_id_hash == 0 {
            return Err(SapError::ZeroHash);
        }
        let rest = &rest[2..];
        let alen = if v6 { 16 } else { 4 };
        let a = rest.get(..alen).ok_or_else(short)?;
        let origin = if v6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        let rest = rest
            .get(alen + auth_words as usize * 4..)
            .ok_or_else(short)?;
        // The payload type is optional: a payload that starts like an SDP has none.
        let (payload_type, payload) = if rest.starts_with(b"v=0") {
            (None, rest)
        } else {
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or(SapError::PayloadType)?;
            (
                Some(String::from_utf8_lossy(&rest[..nul]).into_owned()),
                &rest[nul + 1..],
            )
        };
        Ok(SapPacket {
            deletion,
            msg_id_hash,
            origin,
            payload_type,
            payload: payload.to_vec(),
        })
    }

    /// Whether the payload is an SDP (explicitly or by omission).
    pub fn is_sdp(&self) -> bool {
        self.payload_type.as_deref().is_none_or(|t| t == SDP_MIME)
    }
}

/// Where SAP for a group's scope goes (RFC 2974 §3): the well-known address that clients
/// such as VLC and ffmpeg listen on.
pub fn sap_address(group: IpAddr) -> SocketAddr {
    let a: IpAddr = match group {
        IpAddr::V4(g) if g.octets()[0] == 239 => SAP_V4_ADMIN.into(),
        IpAddr::V4(_) => SAP_V4_GLOBAL.into(),
        IpAddr::V6(g) => {
            // ff0X::2:7ffe with X the group's scope; non-multicast falls back to global.
            let scope = if g.segments()[0] >> 8 == 0xff {
                g.segments()[0] & 0x000f
            } else {
                0xe
            };
            let scope = if scope == 0 { 0xe } else { scope };
            Ipv6Addr::new(0xff00 | scope, 0, 0, 0, 0, 0, 2, 0x7ffe).into()
        }
    };
    SocketAddr::new(a, SAP_PORT)
}

/// The announcement interval of RFC 2974 §3.1: at least 300 s, more when many large
/// announcements share the scope's 4,000 bit/s.
pub fn interval(announcements: usize, size: usize) -> Duration {
    let bits = 8 * announcements as u64 * size as u64;
    Duration::from_secs((bits / 4000).max(300))
}

/// A 16-bit non-zero hash of an SDP, so the id changes whenever the SDP does.
pub fn msg_id_hash(sdp: &str) -> u16 {
    // FNV-1a folded to 16 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in sdp.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    let v = ((h >> 16) ^ (h & 0xffff)) as u16;
    if v == 0 { 1 } else { v }
}

/// The stream's AMT URL, `amt://SOURCE@GROUP:PORT` (IPv6 addresses in brackets).
pub fn amt_url(source: IpAddr, group: IpAddr, port: u16) -> String {
    let b = |a: IpAddr| match a {
        IpAddr::V6(v) => format!("[{v}]"),
        IpAddr::V4(v) => v.to_string(),
    };
    format!("amt://{}@{}:{port}", b(source), b(group))
}

/// The parts of an SDP session the appliance writes and reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdp {
    /// `o=`: username, session id, version, address.
    pub origin_user: String,
    pub session_id: u64,
    pub version: u64,
    pub origin_addr: Option<IpAddr>,
    /// `s=`
    pub name: String,
    /// `i=`
    pub info: Option<String>,
    /// `u=`
    pub uri: Option<String>,
    /// `c=`: the group (with `/ttl` for IPv4 multicast).
    pub connection: Option<IpAddr>,
    pub ttl: Option<u8>,
    pub media: Vec<Media>,
    /// `a=` lines without the `a=`, session level and media level in order.
    pub attributes: Vec<String>,
}

/// An `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
}

fn addr_type(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IP4" } else { "IP6" }
}

impl Sdp {
    /// The SDP of a stream the translator sends: `source` is the multicast source (the
    /// translator's address), `origin` the unicast sender it translates.
    pub fn translated(
        source: IpAddr,
        sender: SocketAddr,
        group: IpAddr,
        port: u16,
        ttl: u8,
        session_id: u64,
    ) -> Sdp {
        Sdp {
            origin_user: "-".into(),
            session_id,
            version: 1,
            origin_addr: Some(source),
            name: format!("Translated stream from {sender}"),
            info: Some(amt_url(source, group, port)),
            uri: None,
            connection: Some(group),
            ttl: Some(ttl),
            // MPEG-TS over plain UDP: what TreeDN sources send; ffmpeg opens it as raw UDP.
            media: vec![Media {
                kind: "video".into(),
                port,
                proto: "udp".into(),
                formats: vec!["33".into()],
            }],
            attributes: vec![
                "tool:appliance".into(),
                "type:broadcast".into(),
                format!(
                    "source-filter: incl IN {} {group} {source}",
                    addr_type(group)
                ),
            ],
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let oaddr = self
            .origin_addr
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let _ = write!(
            s,
            "v=0\r\no={} {} {} IN {} {oaddr}\r\ns={}\r\n",
            self.origin_user,
            self.session_id,
            self.version,
            addr_type(oaddr),
            if self.name.is_empty() {
                "-"
            } else {
                &self.name
            }
        );
        if let Some(i) = &self.info {
            let _ = write!(s, "i={i}\r\n");
        }
        if let Some(u) = &self.uri {
            let _ = write!(s, "u={u}\r\n");
        }
        if let Some(c) = self.connection {
            match (c, self.ttl) {
                (IpAddr::V4(_), Some(t)) => {
                    let _ = write!(s, "c=IN IP4 {c}/{t}\r\n");
                }
                _ => {
                    let _ = write!(s, "c=IN {} {c}\r\n", addr_type(c));
                }
            }
        }
        s.push_str("t=0 0\r\n");
        let (session_attrs, media_attrs) = self.split_attributes();
        for a in session_attrs {
            let _ = write!(s, "a={a}\r\n");
        }
        for m in &self.media {
            let _ = write!(
                s,
                "m={} {} {} {}\r\n",
                m.kind,
                m.port,
                m.proto,
                m.formats.join(" ")
            );
        }
        for a in media_attrs {
            let _ = write!(s, "a={a}\r\n");
        }
        s
    }

    /// Session-level attributes come before the first `m=`; rtpmap/fmtp belong to media.
    fn split_attributes(&self) -> (Vec<&String>, Vec<&String>) {
        self.attributes
            .iter()
            .partition(|a| !(a.starts_with("rtpmap:") || a.starts_with("fmtp:")))
    }

    /// Parses an SDP. Unknown lines are skipped; malformed known ones are errors.
    pub fn parse(text: &str) -> Result<Sdp, SapError> {
        let mut sdp = Sdp::default();
        let mut seen_v = false;
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let err = |why: &str| SapError::Sdp {
                line: i + 1,
                why: why.to_string(),
            };
            let (key, value) = match line.split_once('=') {
                Some((k, v)) if k.len() == 1 => (k, v),
                _ => return Err(err("not of the form x=value")),
            };
            match key {
                "v" => {
                    if value != "0" {
                        return Err(err("version is not 0"));
                    }
                    seen_v = true;
                }
                "o" => {
                    let f: Vec<&str> = value.split(' ').collect();
                    if f.len() != 6 {
                        return Err(err("o= needs 6 fields"));
                    }
                    sdp.origin_user = f[0].to_string();
                    sdp.session_id = f[1].parse().map_err(|_| err("bad session id"))?;
                    sdp.version = f[2].parse().map_err(|_| err("bad session version"))?;
                    sdp.origin_addr = f[5].parse().ok();
                }
                "s" => sdp.name = value.to_string(),
                "i" if sdp.media.is_empty() => sdp.info = Some(value.to_string()),
                "u" => sdp.uri = Some(value.to_string()),
                "c" => {
                    let f: Vec<&str> = value.split(' ').collect();
                    if f.len() != 3 || f[0] != "IN" {
                        return Err(err("c= needs IN, an address type and an address"));
                    }
                    let mut parts = f[2].split('/');
                    let addr = parts.next().unwrap_or_default();
                    sdp.connection = Some(addr.parse().map_err(|_| err("bad address"))?);
                    if f[1] == "IP4" {
                        sdp.ttl = match parts.next() {
                            Some(t) => Some(t.parse().map_err(|_| err("bad TTL"))?),
                            None => None,
                        };
                    }
                }
                "m" => {
                    let f: Vec<&str> = value.split(' ').collect();
                    if f.len() < 4 {
                        return Err(err("m= needs media, port, protocol and formats"));
                    }
                    let port = f[1]
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .parse()
                        .map_err(|_| err("bad port"))?;
                    sdp.media.push(Media {
                        kind: f[0].to_string(),
                        port,
                        proto: f[2].to_string(),
                        formats: f[3..].iter().map(|s| s.to_string()).collect(),
                    });
                }
                "a" => sdp.attributes.push(value.to_string()),
                _ => {}
            }
        }
        if !seen_v {
            return Err(SapError::Sdp {
                line: 1,
                why: "no v=0 line".into(),
            });
        }
        Ok(sdp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Sdp {
        Sdp::translated(
            "10.1.0.1".parse().unwrap(),
            "192.0.2.7:31380".parse().unwrap(),
            "232.1.2.3".parse().unwrap(),
            9002,
            32,
            42,
        )
    }

    #[test]
    fn sdp_round_trips() {
        let sdp = example();
        let text = sdp.render();
        assert!(text.contains("c=IN IP4 232.1.2.3/32\r\n"), "{text}");
        assert!(
            text.contains("i=amt://10.1.0.1@232.1.2.3:9002\r\n"),
            "{text}"
        );
        assert!(text.contains("m=video 9002 udp 33\r\n"), "{text}");
        assert_eq!(Sdp::parse(&text).unwrap(), sdp);
    }

    #[test]
    fn ipv6_sdp_round_trips() {
        let sdp = Sdp::translated(
            "fd00::1".parse().unwrap(),
            "[2001:db8::7]:4000".parse().unwrap(),
            "ff3e::8000:1".parse().unwrap(),
            9002,
            32,
            7,
        );
        let text = sdp.render();
        assert!(text.contains("c=IN IP6 ff3e::8000:1\r\n"), "{text}");
        let back = Sdp::parse(&text).unwrap();
        assert_eq!(back.connection, sdp.connection);
        assert_eq!(back.ttl, None);
        assert_eq!(
            back.info.as_deref(),
            Some("amt://[fd00::1]@[ff3e::8000:1]:9002")
        );
    }

    #[test]
    fn sap_round_trips_v4_and_v6() {
        for origin in ["10.1.0.1", "fd00::1"] {
            let text = example().render();
            let p = SapPacket::sdp(true, msg_id_hash(&text), origin.parse().unwrap(), &text);
            let bytes = p.encode();
            assert_eq!(bytes[0] >> 5, 1);
            assert_eq!(bytes[0] & 0x10 != 0, origin.contains(':'));
            assert_eq!(bytes[0] & 0x04, 0x04, "T bit for deletion");
            let back = SapPacket::parse(&bytes).unwrap();
            assert_eq!(back, p);
            assert!(back.is_sdp());
        }
    }

    #[test]
    fn payload_type_may_be_omitted() {
        let mut bytes = vec![0x20, 0, 0x12, 0x34, 10, 0, 0, 1];
        bytes.extend_from_slice(b"v=0\r\ns=x\r\n");
        let p = SapPacket::parse(&bytes).unwrap();
        assert_eq!(p.payload_type, None);
        assert!(p.is_sdp());
        assert_eq!(
            Sdp::parse(std::str::from_utf8(&p.payload).unwrap())
                .unwrap()
                .name,
            "x"
        );
    }

    #[test]
    fn refuses_what_clients_refuse() {
        assert_eq!(SapPacket::parse(&[]), Err(SapError::Short(0)));
        assert_eq!(
            SapPacket::parse(&[0x40, 0, 1, 1, 1, 1, 1, 1]),
            Err(SapError::Version(2))
        );
        assert_eq!(
            SapPacket::parse(&[0x20, 0, 0, 0, 1, 1, 1, 1]),
            Err(SapError::ZeroHash)
        );
        assert_eq!(
            SapPacket::parse(&[0x22, 0, 1, 1, 1, 1, 1, 1]),
            Err(SapError::Encrypted)
        );
        assert_eq!(
            SapPacket::parse(&[0x20, 0, 1, 1, 1, 1, 1, 1, b'a']),
            Err(SapError::PayloadType)
        );
        // auth length that runs past the end
        assert!(matches!(
            SapPacket::parse(&[0x20, 200, 1, 1, 1, 1, 1, 1]),
            Err(SapError::Short(_))
        ));
    }

    #[test]
    fn well_known_addresses_by_scope() {
        let a = |g: &str| sap_address(g.parse().unwrap()).to_string();
        assert_eq!(a("232.1.2.3"), "224.2.127.254:9875");
        assert_eq!(a("239.255.1.1"), "239.255.255.255:9875");
        assert_eq!(a("239.1.1.1"), "239.255.255.255:9875");
        assert_eq!(a("ff3e::8000:1"), "[ff0e::2:7ffe]:9875");
        assert_eq!(a("ff35::1"), "[ff05::2:7ffe]:9875");
        assert_eq!(a("ff12::1"), "[ff02::2:7ffe]:9875");
    }

    #[test]
    fn interval_is_at_least_five_minutes() {
        assert_eq!(interval(1, 300), Duration::from_secs(300));
        assert_eq!(interval(10_000, 300), Duration::from_secs(6000));
    }

    #[test]
    fn hash_is_never_zero_and_follows_the_sdp() {
        let a = msg_id_hash("v=0\r\ns=a\r\n");
        let b = msg_id_hash("v=0\r\ns=b\r\n");
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    /// A tiny deterministic generator, so the fuzz test needs no seed plumbing.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Random and mutated packets and SDPs never make the parsers panic.
    #[test]
    fn fuzz_parsers_never_panic() {
        let mut r = XorShift(0x9e37_79b9_7f4a_7c15);
        let text = example().render();
        let good = SapPacket::sdp(
            false,
            msg_id_hash(&text),
            "10.1.0.1".parse().unwrap(),
            &text,
        )
        .encode();
        let mut parsed_ok = 0;
        for i in 0..60_000 {
            let buf: Vec<u8> = if i % 3 == 0 {
                let len = (r.next() % 300) as usize;
                (0..len).map(|_| r.next() as u8).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..(1 + r.next() % 8) {
                    match r.next() % 4 {
                        0 if !b.is_empty() => {
                            let at = (r.next() as usize) % b.len();
                            b[at] = r.next() as u8;
                        }
                        1 if !b.is_empty() => {
                            let at = (r.next() as usize) % b.len();
                            b.truncate(at);
                        }
                        2 => {
                            let at = (r.next() as usize) % (b.len() + 1);
                            let c = [b'=', b' ', b'/', b'\n', 0, b'v', b'0'][r.next() as usize % 7];
                            b.insert(at, c);
                        }
                        _ if !b.is_empty() => {
                            let at = (r.next() as usize) % b.len();
                            b.remove(at);
                        }
                        _ => {}
                    }
                }
                b
            };
            if let Ok(p) = SapPacket::parse(&buf) {
                let again = SapPacket::parse(&p.encode()).expect("an encoded packet parses");
                assert_eq!(again, p);
                if Sdp::parse(&String::from_utf8_lossy(&p.payload)).is_ok() {
                    parsed_ok += 1;
                }
            }
            let _ = Sdp::parse(&String::from_utf8_lossy(&buf));
        }
        assert!(
            parsed_ok > 100,
            "mutations should often stay valid ({parsed_ok})"
        );
    }
}
