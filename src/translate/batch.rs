//! Batched UDP receive and send (recvmmsg/sendmmsg). Every buffer, iovec and address is
//! allocated once; a packet is received into its slot and sent from the same slot, so the
//! data path copies nothing and allocates nothing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// The largest UDP payload over IPv4.
pub const MAX_PAYLOAD: usize = 65_507;
/// Slot size: one more byte than the largest payload so truncation would show.
const SLOT: usize = 65_536;

pub struct Batch {
    slots: usize,
    bufs: Vec<u8>,
    recv_iov: Vec<libc::iovec>,
    recv_addr: Vec<libc::sockaddr_storage>,
    recv_hdr: Vec<libc::mmsghdr>,
    send_iov: Vec<libc::iovec>,
    send_addr: Vec<libc::sockaddr_storage>,
    send_hdr: Vec<libc::mmsghdr>,
    queued: usize,
}

// SAFETY: the raw pointers inside point only into the Batch's own heap vectors, which
// move with it (the Box and Vecs never reallocate after `new`); nothing else shares them.
unsafe impl Send for Batch {}

impl Batch {
    pub fn new(slots: usize) -> Box<Batch> {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut b = Box::new(Batch {
            slots,
            bufs: vec![0u8; slots * SLOT],
            recv_iov: vec![zero_iov; slots],
            recv_addr: vec![zero_addr; slots],
            recv_hdr: vec![zero_hdr; slots],
            send_iov: vec![zero_iov; slots],
            send_addr: vec![zero_addr; slots],
            send_hdr: vec![zero_hdr; slots],
            queued: 0,
        });
        let base = b.bufs.as_mut_ptr();
        for i in 0..slots {
            b.recv_iov[i] = libc::iovec {
                // SAFETY: i < slots, so the offset stays inside `bufs` (slots * SLOT bytes).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
        }
        b
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Receives up to `slots` datagrams without blocking; 0 when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..self.slots {
            let h = &mut self.recv_hdr[i].msg_hdr;
            h.msg_name = (&mut self.recv_addr[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_iov = &mut self.recv_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.recv_hdr[i].msg_len = 0;
        }
        // SAFETY: every header points at this Batch's own live iovec, address and buffer
        // slot, of the lengths set above; `slots` headers exist.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdr.as_mut_ptr(),
                self.slots as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.queued = 0;
        Ok(n as usize)
    }

    /// Sender and length of received datagram `i`.
    pub fn received(&self, i: usize) -> (Option<SocketAddr>, usize) {
        let len = self.recv_hdr[i].msg_len as usize;
        (from_storage(&self.recv_addr[i]), len)
    }

    /// Payload of received datagram `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let len = self.recv_hdr[i].msg_len as usize;
        &self.bufs[i * SLOT..i * SLOT + len]
    }

    /// Queues received datagram `i` to be sent to `to`, unchanged.
    pub fn queue(&mut self, i: usize, to: &SocketAddr) {
        let j = self.queued;
        let len = self.recv_hdr[i].msg_len as usize;
        self.send_iov[j] = libc::iovec {
            iov_base: self.recv_iov[i].iov_base,
            iov_len: len,
        };
        let alen = to_storage(to, &mut self.send_addr[j]);
        let h = &mut self.send_hdr[j].msg_hdr;
        h.msg_name = (&mut self.send_addr[j] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = alen;
        h.msg_iov = &mut self.send_iov[j];
        h.msg_iovlen = 1;
        self.queued += 1;
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Sends everything queued, in order. A datagram the kernel refuses is skipped and
    /// counted, so one bad destination never stalls the rest. Returns (sent, failed, last error).
    pub fn flush(&mut self, fd: RawFd) -> (usize, usize, Option<io::Error>) {
        let mut at = 0;
        let mut failed = 0;
        let mut last = None;
        while at < self.queued {
            // SAFETY: the `queued - at` headers from `at` were filled by `push` and point at
            // this Batch's own live buffers and addresses.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdr[at..].as_mut_ptr(),
                    (self.queued - at) as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed: skip it and go on.
                failed += 1;
                at += 1;
                last = Some(e);
            } else {
                at += n as usize;
            }
        }
        let sent = self.queued - failed;
        self.queued = 0;
        (sent, failed, last)
    }
}

pub fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            // A dual-stack socket shows IPv4 senders as ::ffff:a.b.c.d: key them as IPv4.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

pub fn to_storage(a: &SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = 0;
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        // SAFETY: a plain C struct of integers and pointers: all-zero is a valid value.
        let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        for a in ["192.0.2.7:31380", "[2001:db8::7]:9", "[::ffff:10.0.0.1]:5"] {
            let a: SocketAddr = a.parse().unwrap();
            to_storage(&a, &mut s);
            let back = from_storage(&s).unwrap();
            if a.to_string().contains("ffff") {
                assert_eq!(back.to_string(), "10.0.0.1:5");
            } else {
                assert_eq!(back, a);
            }
        }
    }
}
