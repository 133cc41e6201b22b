//! A link watcher: a raw `NETLINK_ROUTE` socket subscribed to `RTMGRP_LINK`
//! (rtnetlink(7)), readable whenever a link appears, goes or changes. Users poll its fd
//! with their other fds and, when it is readable, [`LinkWatch::drain`] it and re-check
//! the interfaces they care about by name (a re-created interface has a new index).
//! The messages are not parsed: "something changed, look again" is all any user needs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking netlink socket that hears link events of this network namespace (the
/// one the opening thread is in).
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    pub fn open() -> io::Result<LinkWatch> {
        Self::open_groups(libc::RTMGRP_LINK as u32)
    }

    /// Also hears addresses come and go (RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR), an IPv6
    /// address finishing DAD included.
    pub fn open_with_addresses() -> io::Result<LinkWatch> {
        Self::open_groups(
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32,
        )
    }

    fn open_groups(groups: u32) -> io::Result<LinkWatch> {
        // SAFETY: socket(2) with constant arguments; the fd is checked and owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain integers; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a live sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(LinkWatch { fd })
    }

    /// Reads every waiting notification; true if there was any. ENOBUFS (notifications
    /// were lost) counts as a change: the caller's re-check covers them all anyway.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.raw_os_error() == Some(libc::ENOBUFS) {
                    any = true;
                    continue;
                }
                return any;
            }
            any = true;
        }
    }
}

impl AsFd for LinkWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for LinkWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
