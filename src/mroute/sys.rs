//! The routing socket of one address family: MRT_INIT, VIFs/MIFs, MFC entries, counters
//! and upcalls. A thin layer over setsockopt/ioctl; every error names the operation.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::kernel::{self, zeroed};
use crate::sockets::setsockopt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(a: IpAddr) -> Family {
        if a.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
    /// What the kernel calls its interfaces of this family.
    pub fn vif(self) -> &'static str {
        match self {
            Family::Ipv4 => "VIF",
            Family::Ipv6 => "MIF",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// A kernel upcall: a packet with no (S,G) entry (NOCACHE), or one that came in on another
/// interface than its entry's (WRONGVIF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upcall {
    pub kind: u8,
    pub vif: u16,
    pub source: IpAddr,
    pub group: IpAddr,
}

/// Packet, byte and wrong-interface counters of one (S,G) entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub wrong_if: u64,
}

pub struct RouteSocket {
    sock: Socket,
    pub family: Family,
}

pub fn sin6(a: Ipv6Addr) -> libc::sockaddr_in6 {
    let mut s: libc::sockaddr_in6 = zeroed();
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_addr.s6_addr = a.octets();
    s
}

pub fn in4(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    }
}

fn from_in4(a: libc::in_addr) -> Ipv4Addr {
    Ipv4Addr::from(a.s_addr.to_ne_bytes())
}

impl RouteSocket {
    /// Opens the raw socket and takes the kernel's multicast routing API for `table`.
    /// EADDRINUSE means another multicast router holds it.
    pub fn open(family: Family, table: Option<u32>) -> io::Result<RouteSocket> {
        let (sock, level) = match family {
            Family::Ipv4 => (
                Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(libc::IPPROTO_IGMP)),
                )
                .map_err(|e| annotate(e, "opening a raw IGMP socket"))?,
                libc::IPPROTO_IP,
            ),
            Family::Ipv6 => {
                let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                    .map_err(|e| annotate(e, "opening a raw ICMPv6 socket"))?;
                // Upcalls bypass the filter; block every ICMPv6 message so only they arrive.
                let block_all = [u32::MAX; 8];
                setsockopt(&s, libc::IPPROTO_ICMPV6, kernel::ICMP6_FILTER, &block_all)
                    .map_err(|e| annotate(e, "setting ICMP6_FILTER"))?;
                (s, libc::IPPROTO_IPV6)
            }
        };
        sock.set_nonblocking(true)?;
        if let Some(t) = table {
            setsockopt(&sock, level, kernel::MRT_TABLE, &t)
                .map_err(|e| annotate(e, &format!("selecting table {t} (MRT_TABLE)")))?;
        }
        let one: libc::c_int = 1;
        // EADDRINUSE here: another multicast router holds the API; the caller says so.
        setsockopt(&sock, level, kernel::MRT_INIT, &one)?;
        // Ask for WRONGVIF upcalls: a source that moved is re-resolved.
        setsockopt(&sock, level, kernel::MRT_ASSERT, &one)
            .map_err(|e| annotate(e, "enabling MRT_ASSERT"))?;
        Ok(RouteSocket { sock, family })
    }

    fn level(&self) -> libc::c_int {
        match self.family {
            Family::Ipv4 => libc::IPPROTO_IP,
            Family::Ipv6 => libc::IPPROTO_IPV6,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn add_vif(&self, vifi: u16, ifindex: u32, threshold: u8) -> io::Result<()> {
        match self.family {
            Family::Ipv4 => {
                let mut v: kernel::vifctl = zeroed();
                v.vifc_vifi = vifi;
                v.vifc_flags = kernel::VIFF_USE_IFINDEX;
                v.vifc_threshold = threshold;
                v.vifc_lcl_ifindex = ifindex as libc::c_int;
                setsockopt(&self.sock, self.level(), kernel::MRT_ADD_VIF, &v)
            }
            Family::Ipv6 => {
                let mut m: kernel::mif6ctl = zeroed();
                m.mif6c_mifi = vifi;
                m.vifc_threshold = threshold;
                // struct mif6ctl holds the index in 16 bits: a larger one would name
                // another interface.
                m.mif6c_pifi = u16::try_from(ifindex).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "ifindex {ifindex} does not fit the 16 bits of an IPv6 MIF (struct mif6ctl)"
                        ),
                    )
                })?;
                setsockopt(&self.sock, self.level(), kernel::MRT6_ADD_MIF, &m)
            }
        }
    }

    pub fn del_vif(&self, vifi: u16) -> io::Result<()> {
        match self.family {
            Family::Ipv4 => {
                let mut v: kernel::vifctl = zeroed();
                v.vifc_vifi = vifi;
                setsockopt(&self.sock, self.level(), kernel::MRT_DEL_VIF, &v)
            }
            Family::Ipv6 => {
                let mifi: u16 = vifi;
                setsockopt(&self.sock, self.level(), kernel::MRT6_DEL_MIF, &mifi)
            }
        }
    }

    /// Adds or replaces the (S,G) entry. `ttls[vif]` is the TTL a packet must exceed to
    /// leave by that VIF; TTL_NOT_OUTPUT (255) everywhere makes a stop entry.
    pub fn add_mfc(
        &self,
        source: IpAddr,
        group: IpAddr,
        parent: u16,
        ttls: &[u8; kernel::MAXVIFS],
    ) -> io::Result<()> {
        self.mfc(source, group, parent, ttls, true)
    }

    pub fn del_mfc(&self, source: IpAddr, group: IpAddr, parent: u16) -> io::Result<()> {
        self.mfc(
            source,
            group,
            parent,
            &[kernel::TTL_NOT_OUTPUT; kernel::MAXVIFS],
            false,
        )
    }

    fn mfc(
        &self,
        source: IpAddr,
        group: IpAddr,
        parent: u16,
        ttls: &[u8; kernel::MAXVIFS],
        add: bool,
    ) -> io::Result<()> {
        match (self.family, source, group) {
            (Family::Ipv4, IpAddr::V4(s), IpAddr::V4(g)) => {
                let mut m: kernel::mfcctl = zeroed();
                m.mfcc_origin = in4(s);
                m.mfcc_mcastgrp = in4(g);
                m.mfcc_parent = parent;
                m.mfcc_ttls = *ttls;
                let op = if add {
                    kernel::MRT_ADD_MFC
                } else {
                    kernel::MRT_DEL_MFC
                };
                setsockopt(&self.sock, self.level(), op, &m)
            }
            (Family::Ipv6, IpAddr::V6(s), IpAddr::V6(g)) => {
                let mut m: kernel::mf6cctl = zeroed();
                m.mf6cc_origin = sin6(s);
                m.mf6cc_mcastgrp = sin6(g);
                m.mf6cc_parent = parent;
                for (i, t) in ttls.iter().enumerate() {
                    if *t != kernel::TTL_NOT_OUTPUT {
                        m.mf6cc_ifset.ifs_bits[i / 32] |= 1 << (i % 32);
                    }
                }
                let op = if add {
                    kernel::MRT6_ADD_MFC
                } else {
                    kernel::MRT6_DEL_MFC
                };
                setsockopt(&self.sock, self.level(), op, &m)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "address family does not match the socket",
            )),
        }
    }

    /// SIOCGETSGCNT / SIOCGETSGCNT_IN6.
    // c_ulong is u64 here but u32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    pub fn counters(&self, source: IpAddr, group: IpAddr) -> io::Result<Counters> {
        match (source, group) {
            (IpAddr::V4(s), IpAddr::V4(g)) => {
                let mut r: kernel::sioc_sg_req = zeroed();
                r.src = in4(s);
                r.grp = in4(g);
                // SAFETY: the ioctl fills the struct we pass.
                let rc =
                    unsafe { libc::ioctl(self.fd(), kernel::SIOCGETSGCNT as _, &mut r as *mut _) };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Counters {
                    packets: r.pktcnt as u64,
                    bytes: r.bytecnt as u64,
                    wrong_if: r.wrong_if as u64,
                })
            }
            (IpAddr::V6(s), IpAddr::V6(g)) => {
                let mut r: kernel::sioc_sg_req6 = zeroed();
                r.src = sin6(s);
                r.grp = sin6(g);
                // SAFETY: the ioctl fills the struct we pass.
                let rc = unsafe {
                    libc::ioctl(self.fd(), kernel::SIOCGETSGCNT_IN6 as _, &mut r as *mut _)
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Counters {
                    packets: r.pktcnt as u64,
                    bytes: r.bytecnt as u64,
                    wrong_if: r.wrong_if as u64,
                })
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mixed address families",
            )),
        }
    }

    /// The next upcall, None when none is waiting. Ordinary IGMP messages are skipped.
    pub fn read_upcall(&self) -> io::Result<Option<Upcall>> {
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            let msg = &buf[..n as usize];
            let upcall = match self.family {
                Family::Ipv4 => read_struct::<kernel::igmpmsg>(msg)
                    .filter(|m| m.im_mbz == 0)
                    .map(|m| Upcall {
                        kind: m.im_msgtype,
                        vif: u16::from(m.im_vif) | (u16::from(m.im_vif_hi) << 8),
                        source: IpAddr::V4(from_in4(m.im_src)),
                        group: IpAddr::V4(from_in4(m.im_dst)),
                    }),
                Family::Ipv6 => read_struct::<kernel::mrt6msg>(msg)
                    .filter(|m| m.im6_mbz == 0)
                    .map(|m| Upcall {
                        kind: m.im6_msgtype,
                        vif: m.im6_mif,
                        source: IpAddr::V6(Ipv6Addr::from(m.im6_src.s6_addr)),
                        group: IpAddr::V6(Ipv6Addr::from(m.im6_dst.s6_addr)),
                    }),
            };
            // Too short, or an ordinary IGMP/MLD message (mbz != 0): not an upcall.
            if upcall.is_some() {
                return Ok(upcall);
            }
        }
    }
}

/// One kernel message struct from the start of `buf`, if `buf` is long enough.
fn read_struct<T: Copy>(buf: &[u8]) -> Option<T> {
    // SAFETY: T is one of the plain `#[repr(C)]` integer structs of `kernel`, valid for any
    // bytes; the length is checked and read_unaligned copes with any alignment.
    (buf.len() >= std::mem::size_of::<T>())
        .then(|| unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A socket that holds group memberships ([[multicast.join]], smcroute's mgroup).
pub struct JoinSocket {
    sock: Socket,
    /// The interface it joined on: a re-created interface has a new index and lost it.
    pub ifindex: u32,
}

impl JoinSocket {
    pub fn join(ifindex: u32, group: IpAddr, source: Option<IpAddr>) -> io::Result<JoinSocket> {
        let (domain, level) = match group {
            IpAddr::V4(_) => (Domain::IPV4, libc::IPPROTO_IP),
            IpAddr::V6(_) => (Domain::IPV6, libc::IPPROTO_IPV6),
        };
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        match source {
            None => {
                let mut r: kernel::group_req = zeroed();
                r.gr_interface = ifindex;
                r.gr_group = storage(group);
                setsockopt(&sock, level, kernel::MCAST_JOIN_GROUP, &r)?;
            }
            Some(s) => {
                let mut r: kernel::group_source_req = zeroed();
                r.gsr_interface = ifindex;
                r.gsr_group = storage(group);
                r.gsr_source = storage(s);
                setsockopt(&sock, level, kernel::MCAST_JOIN_SOURCE_GROUP, &r)?;
            }
        }
        Ok(JoinSocket { sock, ifindex })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

fn storage(a: IpAddr) -> libc::sockaddr_storage {
    let mut ss: libc::sockaddr_storage = zeroed();
    match a {
        IpAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: in4(v4),
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        IpAddr::V6(v6) => {
            let sin = sin6(v6);
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
    }
    ss
}
