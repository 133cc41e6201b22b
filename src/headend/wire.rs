//! MLD and IGMP messages on the wire: parse and build, never panic.
//!
//! MLDv1 (RFC 2710: Query 130, Report 131, Done 132), MLDv2 (RFC 9777: Query 130 of 28+
//! bytes, Report 143), IGMPv1/v2 (RFC 1112, RFC 2236: Query 0x11 of 8 bytes, Reports 0x12 and
//! 0x16, Leave 0x17) and IGMPv3 (RFC 3376: Query 0x11 of 12+ bytes, Report 0x22).
//!
//! The MLD functions see the ICMPv6 message only: the kernel checks and fills the ICMPv6
//! checksum of raw ICMPv6 sockets (it covers the IPv6 pseudo-header), so [`Message::to_mld`]
//! leaves it zero. IGMP carries its own checksum: [`parse_igmp`] checks it and
//! [`Message::to_igmp`] computes it. [`split_ipv4`] takes the IPv4 header off what a raw
//! IGMP socket reads.
//!
//! Raw codes are kept as they came (`max_resp_code`, `qqic`), so build(parse(x)) == x; the
//! durations come from [`Query::max_resp`] and [`Query::qqi`], and [`Query::general`] and
//! friends encode durations with the exponential codes of RFC 9777 §5.1.3 / RFC 3376 §4.1.1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Serialize;

/// Why a message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what}: {len} bytes is too short")]
    Short { what: &'static str, len: usize },
    #[error("bad IGMP checksum")]
    Checksum,
    #[error("not an IGMP/MLD membership message (type {0:#04x})")]
    NotMembership(u8),
    #[error("{what} of {len} bytes has no valid length for its version")]
    Length { what: &'static str, len: usize },
    #[error("not an IPv4 packet carrying IGMP")]
    NotIgmp,
}

/// The protocol and version a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    Mld1,
    Mld2,
    Igmp1,
    Igmp2,
    Igmp3,
}

impl Version {
    /// True for the versions of MLD (IPv6).
    pub fn is_mld(self) -> bool {
        matches!(self, Version::Mld1 | Version::Mld2)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::Mld1 => "MLDv1",
            Version::Mld2 => "MLDv2",
            Version::Igmp1 => "IGMPv1",
            Version::Igmp2 => "IGMPv2",
            Version::Igmp3 => "IGMPv3",
        })
    }
}

/// A query. A general query has the unspecified group; a group-specific one names it; a
/// group-and-source-specific one also lists sources (v2/v3 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub version: Version,
    /// Raw Max Resp Code: 16 bits for MLD (ms), 8 bits for IGMP (tenths of a second).
    pub max_resp_code: u16,
    pub group: IpAddr,
    /// S flag: Suppress Router-Side Processing (v2/v3).
    pub suppress: bool,
    /// Querier's Robustness Variable, 0..=7 (v2/v3).
    pub qrv: u8,
    /// Querier's Query Interval Code (v2/v3).
    pub qqic: u8,
    pub sources: Vec<IpAddr>,
}

/// Record types of MLDv2/IGMPv3 reports (RFC 9777 §5.2.12, RFC 3376 §4.2.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    IsInclude = 1,
    IsExclude = 2,
    ToInclude = 3,
    ToExclude = 4,
    AllowNew = 5,
    BlockOld = 6,
}

impl RecordType {
    fn from_u8(v: u8) -> Option<RecordType> {
        Some(match v {
            1 => RecordType::IsInclude,
            2 => RecordType::IsExclude,
            3 => RecordType::ToInclude,
            4 => RecordType::ToExclude,
            5 => RecordType::AllowNew,
            6 => RecordType::BlockOld,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub kind: RecordType,
    pub group: IpAddr,
    pub sources: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Query(Query),
    /// MLDv1 Report (131), IGMPv1 (0x12) or IGMPv2 (0x16) Membership Report.
    OldReport {
        version: Version,
        group: IpAddr,
    },
    /// MLDv2 (143) or IGMPv3 (0x22) report. Records of unknown types are left out (RFC 9777
    /// §5.2.12: ignore them).
    Report {
        version: Version,
        records: Vec<GroupRecord>,
    },
    /// MLDv1 Done (132) or IGMPv2 Leave Group (0x17).
    Leave {
        version: Version,
        group: IpAddr,
    },
}

pub const MLD_QUERY: u8 = 130;
pub const MLD_REPORT: u8 = 131;
pub const MLD_DONE: u8 = 132;
pub const MLD2_REPORT: u8 = 143;
pub const IGMP_QUERY: u8 = 0x11;
pub const IGMP1_REPORT: u8 = 0x12;
pub const IGMP2_REPORT: u8 = 0x16;
pub const IGMP_LEAVE: u8 = 0x17;
pub const IGMP3_REPORT: u8 = 0x22;

/// The ICMPv6 types of MLD, for the socket's ICMP6_FILTER.
pub const MLD_TYPES: [u8; 4] = [MLD_QUERY, MLD_REPORT, MLD_DONE, MLD2_REPORT];

// ---- exponential codes ----------------------------------------------------------------

/// Decodes an 8-bit code (IGMPv3 Max Resp Code, QQIC of both): below 128 the value itself,
/// else `(mant | 0x10) << (exp + 3)` (RFC 3376 §4.1.1, §4.1.7; RFC 9777 §5.1.9).
pub fn decode_code8(code: u8) -> u32 {
    if code < 0x80 {
        u32::from(code)
    } else {
        let exp = u32::from((code >> 4) & 0x7);
        let mant = u32::from(code & 0xf);
        (mant | 0x10) << (exp + 3)
    }
}

/// Encodes `value` as an 8-bit code, rounding down to a representable value and capping
/// at the largest (31744).
pub fn encode_code8(value: u32) -> u8 {
    if value < 0x80 {
        return value as u8;
    }
    // value has bit length 8 + exp (mant is the 4 bits under the leading one).
    let exp = (32 - value.leading_zeros()) - 8;
    if exp > 7 {
        return 0xff;
    }
    let mant = (value >> (exp + 3)) & 0xf;
    0x80 | ((exp as u8) << 4) | mant as u8
}

/// Decodes MLDv2's 16-bit Maximum Response Code to milliseconds (RFC 9777 §5.1.3).
pub fn decode_code16(code: u16) -> u32 {
    if code < 0x8000 {
        u32::from(code)
    } else {
        let exp = u32::from((code >> 12) & 0x7);
        let mant = u32::from(code & 0xfff);
        (mant | 0x1000) << (exp + 3)
    }
}

/// Encodes milliseconds as MLDv2's 16-bit code, rounding down, capped at 8387584 ms.
pub fn encode_code16(value: u32) -> u16 {
    if value < 0x8000 {
        return value as u16;
    }
    let exp = (32 - value.leading_zeros()) - 16;
    if exp > 7 {
        return 0xffff;
    }
    let mant = (value >> (exp + 3)) & 0xfff;
    0x8000 | ((exp as u16) << 12) | mant as u16
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

impl Query {
    /// A general query of `version` (MLD: Mld1/Mld2, IGMP: Igmp2/Igmp3).
    pub fn general(version: Version, max_resp: Duration, qrv: u8, qqi: Duration) -> Query {
        let group = if version.is_mld() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Query::specific(version, group, Vec::new(), false, max_resp, qrv, qqi)
    }

    /// A group-specific (no sources) or group-and-source-specific query.
    pub fn specific(
        version: Version,
        group: IpAddr,
        sources: Vec<IpAddr>,
        suppress: bool,
        max_resp: Duration,
        qrv: u8,
        qqi: Duration,
    ) -> Query {
        let max_resp_code = match version {
            Version::Mld1 => millis(max_resp).min(0xffff) as u16,
            Version::Mld2 => encode_code16(millis(max_resp)),
            Version::Igmp1 => 0,
            Version::Igmp2 => (millis(max_resp) / 100).clamp(1, 0xff) as u16,
            Version::Igmp3 => u16::from(encode_code8(millis(max_resp) / 100)),
        };
        let v1 = matches!(version, Version::Mld1 | Version::Igmp1 | Version::Igmp2);
        Query {
            version,
            max_resp_code,
            group,
            suppress: suppress && !v1,
            // A robustness above 7 does not fit: QRV 0 (RFC 9777 §5.1.8, RFC 3376 §4.1.6).
            qrv: if v1 || qrv > 7 { 0 } else { qrv },
            qqic: if v1 {
                0
            } else {
                encode_code8(qqi.as_secs().min(u64::from(u32::MAX)) as u32)
            },
            sources: if v1 { Vec::new() } else { sources },
        }
    }

    /// The Maximum Response Delay the code stands for.
    pub fn max_resp(&self) -> Duration {
        match self.version {
            Version::Mld1 => Duration::from_millis(u64::from(self.max_resp_code)),
            Version::Mld2 => Duration::from_millis(u64::from(decode_code16(self.max_resp_code))),
            // IGMPv1 queries carry 0: hosts answer within 10 s (RFC 2236 §4).
            Version::Igmp1 => Duration::from_secs(10),
            Version::Igmp2 => Duration::from_millis(u64::from(self.max_resp_code) * 100),
            Version::Igmp3 => {
                Duration::from_millis(u64::from(decode_code8(self.max_resp_code as u8)) * 100)
            }
        }
    }

    /// The querier's query interval (QQI), None when the query carries none (v1/v2 or 0).
    pub fn qqi(&self) -> Option<Duration> {
        (self.qqic != 0).then(|| Duration::from_secs(u64::from(decode_code8(self.qqic))))
    }

    pub fn is_general(&self) -> bool {
        self.group.is_unspecified()
    }
}

// ---- parsing --------------------------------------------------------------------------

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn v6(b: &[u8], at: usize) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    IpAddr::V6(Ipv6Addr::from(o))
}

fn v4(b: &[u8], at: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
}

/// Reads `n` addresses of `size` bytes at `at`; None if the buffer is too short.
fn addrs(b: &[u8], at: usize, n: usize, size: usize) -> Option<Vec<IpAddr>> {
    let end = at.checked_add(n.checked_mul(size)?)?;
    if end > b.len() {
        return None;
    }
    Some(
        b[at..end]
            .chunks_exact(size)
            .map(|c| if size == 16 { v6(c, 0) } else { v4(c, 0) })
            .collect(),
    )
}

/// Parses an ICMPv6 message (from its type byte on) as MLD.
pub fn parse_mld(b: &[u8]) -> Result<Message, WireError> {
    if b.len() < 4 {
        return Err(WireError::Short {
            what: "ICMPv6 message",
            len: b.len(),
        });
    }
    match b[0] {
        MLD_QUERY | MLD_REPORT | MLD_DONE => {
            if b.len() < 24 {
                return Err(WireError::Short {
                    what: "MLD message",
                    len: b.len(),
                });
            }
            let group = v6(b, 8);
            match b[0] {
                MLD_REPORT => Ok(Message::OldReport {
                    version: Version::Mld1,
                    group,
                }),
                MLD_DONE => Ok(Message::Leave {
                    version: Version::Mld1,
                    group,
                }),
                // RFC 9777 §8.1: 24 bytes is MLDv1, 28 or more MLDv2, anything else ignored.
                _ if b.len() == 24 => Ok(Message::Query(Query {
                    version: Version::Mld1,
                    max_resp_code: be16(b, 4),
                    group,
                    suppress: false,
                    qrv: 0,
                    qqic: 0,
                    sources: Vec::new(),
                })),
                _ if b.len() >= 28 => {
                    let n = usize::from(be16(b, 26));
                    let sources = addrs(b, 28, n, 16).ok_or(WireError::Short {
                        what: "MLDv2 query source list",
                        len: b.len(),
                    })?;
                    Ok(Message::Query(Query {
                        version: Version::Mld2,
                        max_resp_code: be16(b, 4),
                        group,
                        suppress: b[24] & 0x08 != 0,
                        qrv: b[24] & 0x07,
                        qqic: b[25],
                        sources,
                    }))
                }
                _ => Err(WireError::Length {
                    what: "MLD query",
                    len: b.len(),
                }),
            }
        }
        MLD2_REPORT => {
            if b.len() < 8 {
                return Err(WireError::Short {
                    what: "MLDv2 report",
                    len: b.len(),
                });
            }
            let n = usize::from(be16(b, 6));
            let records = records(b, 8, n, 16)?;
            Ok(Message::Report {
                version: Version::Mld2,
                records,
            })
        }
        t => Err(WireError::NotMembership(t)),
    }
}

/// Reads `n` group records with addresses of `size` bytes, from `at`.
fn records(b: &[u8], mut at: usize, n: usize, size: usize) -> Result<Vec<GroupRecord>, WireError> {
    let short = WireError::Short {
        what: "report group records",
        len: b.len(),
    };
    // Each record takes at least 4 + size bytes: a count that cannot fit is a lie.
    if n > b.len().saturating_sub(at) / (4 + size) {
        return Err(short);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if at + 4 + size > b.len() {
            return Err(short);
        }
        let kind = b[at];
        let aux_words = usize::from(b[at + 1]);
        let nsrc = usize::from(be16(b, at + 2));
        let group = if size == 16 {
            v6(b, at + 4)
        } else {
            v4(b, at + 4)
        };
        let sources = addrs(b, at + 4 + size, nsrc, size).ok_or(short.clone())?;
        at = at + 4 + size + nsrc * size + aux_words * 4;
        if at > b.len() {
            return Err(short);
        }
        if let Some(kind) = RecordType::from_u8(kind) {
            out.push(GroupRecord {
                kind,
                group,
                sources,
            });
        }
    }
    Ok(out)
}

/// The Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses an IGMP message (the IP payload), checking its checksum.
pub fn parse_igmp(b: &[u8]) -> Result<Message, WireError> {
    if b.len() < 8 {
        return Err(WireError::Short {
            what: "IGMP message",
            len: b.len(),
        });
    }
    if checksum(b) != 0 {
        return Err(WireError::Checksum);
    }
    let group = v4(b, 4);
    match b[0] {
        IGMP_QUERY => {
            // RFC 3376 §7.1: 8 bytes is v1 (code 0) or v2, 12 or more v3, others ignored.
            if b.len() == 8 {
                let version = if b[1] == 0 {
                    Version::Igmp1
                } else {
                    Version::Igmp2
                };
                Ok(Message::Query(Query {
                    version,
                    max_resp_code: u16::from(b[1]),
                    group,
                    suppress: false,
                    qrv: 0,
                    qqic: 0,
                    sources: Vec::new(),
                }))
            } else if b.len() >= 12 {
                let n = usize::from(be16(b, 10));
                let sources = addrs(b, 12, n, 4).ok_or(WireError::Short {
                    what: "IGMPv3 query source list",
                    len: b.len(),
                })?;
                Ok(Message::Query(Query {
                    version: Version::Igmp3,
                    max_resp_code: u16::from(b[1]),
                    group,
                    suppress: b[8] & 0x08 != 0,
                    qrv: b[8] & 0x07,
                    qqic: b[9],
                    sources,
                }))
            } else {
                Err(WireError::Length {
                    what: "IGMP query",
                    len: b.len(),
                })
            }
        }
        IGMP1_REPORT => Ok(Message::OldReport {
            version: Version::Igmp1,
            group,
        }),
        IGMP2_REPORT => Ok(Message::OldReport {
            version: Version::Igmp2,
            group,
        }),
        IGMP_LEAVE => Ok(Message::Leave {
            version: Version::Igmp2,
            group,
        }),
        IGMP3_REPORT => {
            let n = usize::from(be16(b, 6));
            Ok(Message::Report {
                version: Version::Igmp3,
                records: records(b, 8, n, 4)?,
            })
        }
        t => Err(WireError::NotMembership(t)),
    }
}

/// What the IPv4 header of a received IGMP packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
    /// The Router Alert option (RFC 2113) is present.
    pub router_alert: bool,
}

/// Splits what a raw IGMP socket reads into the IPv4 header and the IGMP message.
pub fn split_ipv4(b: &[u8]) -> Result<(Ipv4Header, &[u8]), WireError> {
    if b.len() < 20 {
        return Err(WireError::Short {
            what: "IPv4 packet",
            len: b.len(),
        });
    }
    if b[0] >> 4 != 4 || b[9] != 2 {
        return Err(WireError::NotIgmp);
    }
    let ihl = usize::from(b[0] & 0xf) * 4;
    let total = usize::from(be16(b, 2));
    if ihl < 20 || ihl > b.len() {
        return Err(WireError::Short {
            what: "IPv4 header",
            len: b.len(),
        });
    }
    // The kernel hands raw sockets the whole datagram; trust the shorter of the two.
    let end = if total >= ihl {
        total.min(b.len())
    } else {
        b.len()
    };
    let mut router_alert = false;
    let mut i = 20;
    while i < ihl {
        match b[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = b.get(i + 1).map_or(0, |l| usize::from(*l));
                if kind == 0x94 {
                    router_alert = true;
                }
                if len < 2 {
                    break;
                }
                i += len;
            }
        }
    }
    let ip = Ipv4Header {
        source: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
        destination: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        ttl: b[8],
        router_alert,
    };
    Ok((ip, &b[ihl..end]))
}

// ---- building -------------------------------------------------------------------------

fn put_addr(out: &mut Vec<u8>, a: &IpAddr, mld: bool) {
    match (a, mld) {
        (IpAddr::V6(a), true) => out.extend_from_slice(&a.octets()),
        (IpAddr::V4(a), false) => out.extend_from_slice(&a.octets()),
        // A family mismatch is a caller's bug; write the mapped form rather than panic.
        (IpAddr::V4(a), true) => out.extend_from_slice(&a.to_ipv6_mapped().octets()),
        (IpAddr::V6(a), false) => {
            out.extend_from_slice(&a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED).octets())
        }
    }
}

fn put_records(out: &mut Vec<u8>, records: &[GroupRecord], mld: bool) {
    for r in records {
        out.push(r.kind as u8);
        out.push(0);
        out.extend_from_slice(&(r.sources.len().min(0xffff) as u16).to_be_bytes());
        put_addr(out, &r.group, mld);
        for s in r.sources.iter().take(0xffff) {
            put_addr(out, s, mld);
        }
    }
}

impl Message {
    /// The ICMPv6 bytes of an MLD message (checksum left zero: the kernel fills it).
    /// An IGMP-only message gives an empty vector.
    pub fn to_mld(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28);
        match self {
            Message::Query(q) if q.version.is_mld() => {
                out.extend_from_slice(&[MLD_QUERY, 0, 0, 0]);
                out.extend_from_slice(&q.max_resp_code.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                put_addr(&mut out, &q.group, true);
                if q.version == Version::Mld2 {
                    out.push((u8::from(q.suppress) << 3) | (q.qrv & 7));
                    out.push(q.qqic);
                    out.extend_from_slice(&(q.sources.len().min(0xffff) as u16).to_be_bytes());
                    for s in q.sources.iter().take(0xffff) {
                        put_addr(&mut out, s, true);
                    }
                }
            }
            Message::OldReport {
                version: Version::Mld1,
                group,
            }
            | Message::Leave {
                version: Version::Mld1,
                group,
            } => {
                let t = if matches!(self, Message::OldReport { .. }) {
                    MLD_REPORT
                } else {
                    MLD_DONE
                };
                out.extend_from_slice(&[t, 0, 0, 0, 0, 0, 0, 0]);
                put_addr(&mut out, group, true);
            }
            Message::Report {
                version: Version::Mld2,
                records,
            } => {
                out.extend_from_slice(&[MLD2_REPORT, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&(records.len().min(0xffff) as u16).to_be_bytes());
                put_records(&mut out, &records[..records.len().min(0xffff)], true);
            }
            _ => {}
        }
        out
    }

    /// The IGMP bytes of an IGMP message, checksum included. An MLD-only message gives an
    /// empty vector.
    pub fn to_igmp(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        match self {
            Message::Query(q) if !q.version.is_mld() => {
                out.extend_from_slice(&[IGMP_QUERY, q.max_resp_code as u8, 0, 0]);
                put_addr(&mut out, &q.group, false);
                if q.version == Version::Igmp3 {
                    out.push((u8::from(q.suppress) << 3) | (q.qrv & 7));
                    out.push(q.qqic);
                    out.extend_from_slice(&(q.sources.len().min(0xffff) as u16).to_be_bytes());
                    for s in q.sources.iter().take(0xffff) {
                        put_addr(&mut out, s, false);
                    }
                }
            }
            Message::OldReport { version, group } if !version.is_mld() => {
                let t = if *version == Version::Igmp1 {
                    IGMP1_REPORT
                } else {
                    IGMP2_REPORT
                };
                out.extend_from_slice(&[t, 0, 0, 0]);
                put_addr(&mut out, group, false);
            }
            Message::Leave { version, group } if !version.is_mld() => {
                out.extend_from_slice(&[IGMP_LEAVE, 0, 0, 0]);
                put_addr(&mut out, group, false);
            }
            Message::Report { version, records } if !version.is_mld() => {
                out.extend_from_slice(&[IGMP3_REPORT, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&(records.len().min(0xffff) as u16).to_be_bytes());
                put_records(&mut out, &records[..records.len().min(0xffff)], false);
            }
            _ => return out,
        }
        let c = checksum(&out);
        out[2..4].copy_from_slice(&c.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn code8_examples() {
        assert_eq!(decode_code8(100), 100);
        assert_eq!(decode_code8(0x80), 128);
        assert_eq!(decode_code8(0xff), 31744);
        assert_eq!(encode_code8(125), 125);
        assert_eq!(encode_code8(128), 0x80);
        assert_eq!(encode_code8(1_000_000), 0xff);
        // 260 s is 0x80|(1<<4)|0 → (16)<<4 = 256: rounded down.
        assert_eq!(decode_code8(encode_code8(260)), 256);
    }

    #[test]
    fn code16_examples() {
        assert_eq!(decode_code16(10_000), 10_000);
        assert_eq!(encode_code16(32768), 0x8000);
        assert_eq!(decode_code16(0x8000), 32768);
        assert_eq!(decode_code16(0xffff), 8_387_584);
        assert_eq!(encode_code16(u32::MAX), 0xffff);
    }

    proptest! {
        #[test]
        fn code8_rounds_down_closely(v in 0u32..40_000) {
            let d = decode_code8(encode_code8(v));
            prop_assert!(d <= v.max(31744));
            if v <= 31744 {
                // One mantissa step is 1/16 of the value.
                prop_assert!(v - d <= v / 16);
            }
        }

        #[test]
        fn code16_rounds_down_closely(v in 0u32..9_000_000) {
            let d = decode_code16(encode_code16(v));
            prop_assert!(d <= v.max(8_387_584));
            if v <= 8_387_584 {
                prop_assert!(v - d <= v / 4096);
            }
        }

        #[test]
        fn codes_decode_encode_identity(c in any::<u8>(), c16 in any::<u16>()) {
            prop_assert_eq!(encode_code8(decode_code8(c)), c);
            prop_assert_eq!(encode_code16(decode_code16(c16)), c16);
        }
    }

    #[test]
    fn mld2_general_query_bytes() {
        let q = Query::general(
            Version::Mld2,
            Duration::from_secs(10),
            2,
            Duration::from_secs(125),
        );
        let b = Message::Query(q.clone()).to_mld();
        assert_eq!(b.len(), 28);
        assert_eq!(b[0], 130);
        assert_eq!(be16(&b, 4), 10_000);
        assert_eq!(b[24], 2);
        assert_eq!(b[25], 125);
        assert_eq!(parse_mld(&b), Ok(Message::Query(q.clone())));
        assert_eq!(q.max_resp(), Duration::from_secs(10));
        assert_eq!(q.qqi(), Some(Duration::from_secs(125)));
    }

    #[test]
    fn mld2_long_max_resp_uses_exponential_code() {
        let q = Query::general(
            Version::Mld2,
            Duration::from_secs(40),
            2,
            Duration::from_secs(300),
        );
        assert!(q.max_resp_code >= 0x8000);
        assert!(q.qqic >= 0x80);
        assert!(q.max_resp() <= Duration::from_secs(40));
        assert!(q.max_resp() > Duration::from_secs(39));
        assert_eq!(q.qqi(), Some(Duration::from_secs(288)));
    }

    #[test]
    fn a_robustness_above_7_is_sent_as_0() {
        let q = Query::general(
            Version::Mld2,
            Duration::from_secs(10),
            8,
            Duration::from_secs(125),
        );
        assert_eq!(q.qrv, 0);
        let q = Query::general(
            Version::Igmp3,
            Duration::from_secs(10),
            7,
            Duration::from_secs(125),
        );
        assert_eq!(q.qrv, 7);
    }

    #[test]
    fn igmp3_query_has_checksum_and_parses() {
        let q = Query::specific(
            Version::Igmp3,
            a6("239.1.2.3"),
            vec![a6("10.0.0.1")],
            true,
            Duration::from_secs(1),
            2,
            Duration::from_secs(125),
        );
        let b = Message::Query(q.clone()).to_igmp();
        assert_eq!(b.len(), 16);
        assert_eq!(checksum(&b), 0);
        assert_eq!(b[1], 10);
        assert_eq!(b[8], 0x0a);
        assert_eq!(parse_igmp(&b), Ok(Message::Query(q)));
    }

    #[test]
    fn igmp_versions_by_length_and_code() {
        let v2 = Message::Query(Query::general(
            Version::Igmp2,
            Duration::from_secs(10),
            2,
            Duration::from_secs(125),
        ))
        .to_igmp();
        assert_eq!(v2.len(), 8);
        let Ok(Message::Query(q)) = parse_igmp(&v2) else {
            panic!()
        };
        assert_eq!(q.version, Version::Igmp2);
        let mut v1 = v2.clone();
        v1[1] = 0;
        v1[2] = 0;
        v1[3] = 0;
        let c = checksum(&v1);
        v1[2..4].copy_from_slice(&c.to_be_bytes());
        let Ok(Message::Query(q)) = parse_igmp(&v1) else {
            panic!()
        };
        assert_eq!(q.version, Version::Igmp1);
        assert_eq!(q.max_resp(), Duration::from_secs(10));
        // 10 bytes: neither v1/v2 nor v3 (RFC 3376 §7.1), ignored.
        let mut odd = v2.clone();
        odd.extend_from_slice(&[0, 0]);
        odd[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(&odd);
        odd[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            parse_igmp(&odd),
            Err(WireError::Length {
                what: "IGMP query",
                len: 10
            })
        );
    }

    #[test]
    fn bad_igmp_checksum_is_refused() {
        let mut b = Message::Leave {
            version: Version::Igmp2,
            group: a6("239.1.1.1"),
        }
        .to_igmp();
        b[7] ^= 1;
        assert_eq!(parse_igmp(&b), Err(WireError::Checksum));
    }

    /// An MLDv2 report as a Linux host sends it for an ASM join: CHANGE_TO_EXCLUDE {}.
    #[test]
    fn mld2_report_from_linux() {
        let mut b = vec![143, 0, 0x12, 0x34, 0, 0, 0, 1, 4, 0, 0, 0];
        b.extend_from_slice(&"ff3e:40:fd00::8000:1".parse::<Ipv6Addr>().unwrap().octets());
        let m = parse_mld(&b).unwrap();
        assert_eq!(
            m,
            Message::Report {
                version: Version::Mld2,
                records: vec![GroupRecord {
                    kind: RecordType::ToExclude,
                    group: a6("ff3e:40:fd00::8000:1"),
                    sources: vec![],
                }],
            }
        );
    }

    #[test]
    fn unknown_record_types_are_skipped_with_their_aux_data() {
        let mut b = vec![0x22, 0, 0, 0, 0, 0, 0, 2];
        b.extend_from_slice(&[
            9, 1, 0, 1, 239, 0, 0, 1, 10, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd,
        ]);
        b.extend_from_slice(&[5, 0, 0, 1, 239, 0, 0, 2, 10, 0, 0, 2]);
        let c = checksum(&b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
        let Ok(Message::Report { records, .. }) = parse_igmp(&b) else {
            panic!()
        };
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].kind, RecordType::AllowNew);
        assert_eq!(records[0].sources, vec![a6("10.0.0.2")]);
    }

    #[test]
    fn ipv4_header_with_router_alert() {
        let igmp = Message::OldReport {
            version: Version::Igmp2,
            group: a6("239.1.1.1"),
        }
        .to_igmp();
        let mut p = vec![
            0x46, 0xc0, 0, 32, 0, 0, 0, 0, 1, 2, 0, 0, 10, 0, 0, 9, 239, 1, 1, 1,
        ];
        p.extend_from_slice(&[0x94, 4, 0, 0]);
        p.extend_from_slice(&igmp);
        let (h, rest) = split_ipv4(&p).unwrap();
        assert!(h.router_alert);
        assert_eq!(h.ttl, 1);
        assert_eq!(h.source, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(rest, &igmp[..]);
        assert!(matches!(parse_igmp(rest), Ok(Message::OldReport { .. })));
    }

    // ---- property tests ----

    fn arb_v6() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
    }
    fn arb_v4() -> impl Strategy<Value = IpAddr> {
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
    }
    fn arb_kind() -> impl Strategy<Value = RecordType> {
        (1u8..=6).prop_map(|k| RecordType::from_u8(k).unwrap())
    }

    fn arb_message(mld: bool) -> BoxedStrategy<Message> {
        let addr = if mld {
            arb_v6().boxed()
        } else {
            arb_v4().boxed()
        };
        let (old, new, oldq) = if mld {
            (Version::Mld1, Version::Mld2, vec![Version::Mld1])
        } else {
            (
                Version::Igmp2,
                Version::Igmp3,
                vec![Version::Igmp1, Version::Igmp2],
            )
        };
        let record = (
            arb_kind(),
            addr.clone(),
            prop::collection::vec(addr.clone(), 0..5),
        )
            .prop_map(|(kind, group, sources)| GroupRecord {
                kind,
                group,
                sources,
            });
        let v3query = (
            any::<u16>(),
            addr.clone(),
            any::<bool>(),
            0u8..8,
            any::<u8>(),
            prop::collection::vec(addr.clone(), 0..5),
        )
            .prop_map(move |(code, group, suppress, qrv, qqic, sources)| {
                Message::Query(Query {
                    version: new,
                    max_resp_code: if mld { code } else { code & 0xff },
                    group,
                    suppress,
                    qrv,
                    qqic,
                    sources,
                })
            });
        let oldquery = (prop::sample::select(oldq), 1u16..=255, addr.clone()).prop_map(
            move |(version, code, group)| {
                Message::Query(Query {
                    version,
                    max_resp_code: if version == Version::Igmp1 { 0 } else { code },
                    group,
                    suppress: false,
                    qrv: 0,
                    qqic: 0,
                    sources: vec![],
                })
            },
        );
        let old_versions = if mld {
            vec![Version::Mld1]
        } else {
            vec![Version::Igmp1, Version::Igmp2]
        };
        prop_oneof![
            v3query,
            oldquery,
            (prop::sample::select(old_versions), addr.clone())
                .prop_map(|(version, group)| Message::OldReport { version, group }),
            addr.clone().prop_map(move |group| Message::Leave {
                version: old,
                group
            }),
            prop::collection::vec(record, 0..6).prop_map(move |records| Message::Report {
                version: new,
                records
            }),
        ]
        .boxed()
    }

    proptest! {
        #[test]
        fn mld_roundtrip(m in arb_message(true)) {
            let b = m.to_mld();
            prop_assert_eq!(parse_mld(&b), Ok(m.clone()));
            prop_assert_eq!(parse_mld(&b).unwrap().to_mld(), b);
        }

        #[test]
        fn igmp_roundtrip(m in arb_message(false)) {
            let b = m.to_igmp();
            prop_assert_eq!(checksum(&b), 0);
            prop_assert_eq!(parse_igmp(&b), Ok(m.clone()));
        }

        #[test]
        fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_mld(&b);
            let _ = parse_igmp(&b);
            if let Ok((_, rest)) = split_ipv4(&b) {
                let _ = parse_igmp(rest);
            }
        }

        /// Valid packets with bytes flipped, cut or appended: errors or messages, no panic,
        /// and never more sources than bytes could carry.
        #[test]
        fn mutated_packets_never_panic(
            m6 in arb_message(true),
            m4 in arb_message(false),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            for (mut b, mld) in [(m6.to_mld(), true), (m4.to_igmp(), false)] {
                if b.is_empty() { continue; }
                for (i, v) in &flips {
                    let i = i.index(b.len());
                    b[i] ^= v;
                }
                b.truncate(cut.index(b.len() + 1));
                b.extend_from_slice(&tail);
                let parsed = if mld { parse_mld(&b) } else { parse_igmp(&b) };
                if let Ok(m) = parsed {
                    let n = match &m {
                        Message::Query(q) => q.sources.len(),
                        Message::Report { records, .. } => {
                            records.iter().map(|r| r.sources.len() + 1).sum()
                        }
                        _ => 1,
                    };
                    prop_assert!(n * 4 <= b.len());
                }
            }
        }
    }
}
