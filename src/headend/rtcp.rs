//! RTCP (RFC 3550 §6) compound packets, as far as the headend reads them: who sends
//! receiver reports (the "reporting receivers" of a service) and who says goodbye. Parsing
//! never panics and never allocates more than the input's size.

/// One report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    SenderReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    Bye {
        ssrcs: Vec<u32>,
    },
    /// SDES, APP and anything else, by payload type.
    Other {
        pt: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP: {0} bytes left, shorter than a header")]
    Short(usize),
    #[error("RTCP: version {0}, only 2 is known")]
    Version(u8),
    #[error("RTCP: length {words} words runs past the {left} bytes left")]
    Length { words: usize, left: usize },
    #[error("RTCP: {count} report blocks do not fit in {len} bytes")]
    Blocks { count: usize, len: usize },
    #[error("RTCP: payload type {0} is not RTCP (RTP sent to the RTCP port?)")]
    NotRtcp(u8),
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn blocks(body: &[u8], count: usize) -> Result<Vec<ReportBlock>, RtcpError> {
    if body.len() < count * 24 {
        return Err(RtcpError::Blocks {
            count,
            len: body.len(),
        });
    }
    Ok((0..count)
        .map(|k| {
            let b = &body[k * 24..k * 24 + 24];
            let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
            // Sign-extend 24 bits.
            let lost = ((lost << 8) as i32) >> 8;
            ReportBlock {
                ssrc: u32_at(b, 0),
                fraction_lost: b[4],
                cumulative_lost: lost,
                highest_seq: u32_at(b, 8),
                jitter: u32_at(b, 12),
                lsr: u32_at(b, 16),
                dlsr: u32_at(b, 20),
            }
        })
        .collect())
}

/// Parses a compound RTCP packet.
pub fn parse(mut buf: &[u8]) -> Result<Vec<Packet>, RtcpError> {
    let mut out = vec![];
    while !buf.is_empty() {
        if buf.len() < 4 {
            return Err(RtcpError::Short(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtcpError::Version(version));
        }
        let count = (buf[0] & 0x1f) as usize;
        let pt = buf[1];
        if !(192..=223).contains(&pt) {
            return Err(RtcpError::NotRtcp(pt));
        }
        let words = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        let len = 4 + words * 4;
        if len > buf.len() {
            return Err(RtcpError::Length {
                words,
                left: buf.len(),
            });
        }
        let mut body = &buf[4..len];
        // Padding (P bit): the last byte counts the padding bytes.
        if buf[0] & 0x20 != 0
            && let Some(&pad) = body.last()
        {
            body = &body[..body.len().saturating_sub(pad as usize)];
        }
        let p = match pt {
            200 | 201 => {
                let fixed = if pt == 200 { 24 } else { 4 };
                if body.len() < fixed {
                    return Err(RtcpError::Short(body.len()));
                }
                let ssrc = u32_at(body, 0);
                let reports = blocks(&body[fixed..], count)?;
                if pt == 200 {
                    Packet::SenderReport { ssrc, reports }
                } else {
                    Packet::ReceiverReport { ssrc, reports }
                }
            }
            203 => {
                if body.len() < count * 4 {
                    return Err(RtcpError::Short(body.len()));
                }
                Packet::Bye {
                    ssrcs: (0..count).map(|k| u32_at(body, k * 4)).collect(),
                }
            }
            _ => Packet::Other { pt },
        };
        out.push(p);
        buf = &buf[len..];
    }
    Ok(out)
}

/// Builds a receiver report (for tests and the benchmark's receivers).
pub fn receiver_report(ssrc: u32, reports: &[ReportBlock]) -> Vec<u8> {
    let words = 1 + reports.len() * 6;
    let mut v = vec![
        0x80 | reports.len().min(31) as u8,
        201,
        (words >> 8) as u8,
        words as u8,
    ];
    v.extend_from_slice(&ssrc.to_be_bytes());
    for r in reports.iter().take(31) {
        v.extend_from_slice(&r.ssrc.to_be_bytes());
        v.push(r.fraction_lost);
        v.extend_from_slice(&(r.cumulative_lost as u32).to_be_bytes()[1..]);
        for x in [r.highest_seq, r.jitter, r.lsr, r.dlsr] {
            v.extend_from_slice(&x.to_be_bytes());
        }
    }
    v
}

/// A BYE for these sources.
pub fn bye(ssrcs: &[u32]) -> Vec<u8> {
    let n = ssrcs.len().min(31);
    let mut v = vec![0x80 | n as u8, 203, 0, n as u8];
    for s in &ssrcs[..n] {
        v.extend_from_slice(&s.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 3,
            cumulative_lost: lost,
            highest_seq: 70000,
            jitter: 12,
            lsr: 0xdead_beef,
            dlsr: 655,
        }
    }

    #[test]
    fn a_receiver_report_round_trips() {
        let rr = receiver_report(0x1234, &[block(9, -2), block(10, 5)]);
        assert_eq!(
            parse(&rr).unwrap(),
            vec![Packet::ReceiverReport {
                ssrc: 0x1234,
                reports: vec![block(9, -2), block(10, 5)]
            }]
        );
    }

    #[test]
    fn a_compound_packet_rr_sdes_bye() {
        let mut c = receiver_report(7, &[]);
        // SDES with one CNAME chunk: ssrc, CNAME "ab", end, padded to 4.
        c.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 7, 1, 2, b'a', b'b', 0, 0, 0, 0]);
        c.truncate(c.len() - 4);
        c.extend_from_slice(&bye(&[7]));
        let p = parse(&c).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], Packet::Other { pt: 202 });
        assert_eq!(p[2], Packet::Bye { ssrcs: vec![7] });
    }

    #[test]
    fn a_sender_report_of_ffmpeg() {
        // V=2 RC=0 PT=200 len=6: ssrc, NTP (8), RTP ts, packets, octets.
        let mut sr = vec![0x80, 200, 0, 6];
        sr.extend_from_slice(&0xabcdu32.to_be_bytes());
        sr.extend_from_slice(&[0; 20]);
        assert_eq!(
            parse(&sr).unwrap(),
            vec![Packet::SenderReport {
                ssrc: 0xabcd,
                reports: vec![]
            }]
        );
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(parse(&[0x80, 201]), Err(RtcpError::Short(2)));
        assert_eq!(
            parse(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::Version(1))
        );
        assert!(matches!(
            parse(&[0x80, 201, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::Length { .. })
        ));
        assert!(matches!(
            parse(&[0x82, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::Blocks { .. })
        ));
        // An RTP packet (PT 96 with the marker bit: 0xe0) is not RTCP.
        assert_eq!(
            parse(&[0x80, 0xe0, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::NotRtcp(0xe0))
        );
    }

    proptest! {
        #[test]
        fn random_input_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&buf);
        }

        #[test]
        fn mutated_reports_never_panic(
            ssrc in any::<u32>(),
            n in 0usize..5,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let blocks: Vec<ReportBlock> = (0..n as u32).map(|i| block(i, i as i32 - 2)).collect();
            let mut b = receiver_report(ssrc, &blocks);
            b.extend_from_slice(&bye(&[ssrc]));
            prop_assert_eq!(parse(&b).unwrap().len(), 2);
            for (i, x) in flips {
                let len = b.len();
                b[i % len] ^= x;
            }
            let keep = cut % (b.len() + 1);
            b.truncate(keep);
            if let Ok(p) = parse(&b) {
                // Never more packets than 4-byte headers fit.
                prop_assert!(p.len() <= b.len() / 4);
            }
        }

        #[test]
        fn reports_round_trip(ssrc in any::<u32>(), lost in -0x80_0000i32..0x80_0000, seq in any::<u32>()) {
            let mut blk = block(1, lost);
            blk.highest_seq = seq;
            let rr = receiver_report(ssrc, &[blk]);
            prop_assert_eq!(parse(&rr).unwrap(), vec![Packet::ReceiverReport { ssrc, reports: vec![blk] }]);
        }
    }
}
