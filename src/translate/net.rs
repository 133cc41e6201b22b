//! Small socket and interface helpers that std and socket2 lack: multicast by interface
//! index, interface addresses, the default route's interface, and a signalfd for a clean
//! SIGTERM. Shared with the monitor relay.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::Socket;

/// Index of interface `name`.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Multicast TTL (hop limit) and egress interface; loopback stays on so local receivers
/// see the groups too.
pub fn set_multicast(s: &Socket, v6: bool, ttl: u8, ifindex: u32) -> io::Result<()> {
    if v6 {
        s.set_multicast_hops_v6(ttl as u32)?;
        if ifindex != 0 {
            s.set_multicast_if_v6(ifindex)?;
        }
    } else {
        s.set_multicast_ttl_v4(ttl as u32)?;
        if ifindex != 0 {
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr { s_addr: 0 },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as i32,
            };
            setsockopt(s, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)?;
        }
    }
    Ok(())
}

/// Joins `group` on interface `ifindex` (any-source).
pub fn join(s: &Socket, group: IpAddr, ifindex: u32) -> io::Result<()> {
    match group {
        IpAddr::V4(g) => {
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from(g).to_be(),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as i32,
            };
            setsockopt(s, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)
        }
        IpAddr::V6(g) => s.join_multicast_v6(&g, ifindex),
    }
}

fn setsockopt<T>(s: &Socket, level: i32, opt: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid T of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every (interface, address) of this network namespace.
pub fn addresses() -> Vec<(String, IpAddr)> {
    let mut out = vec![];
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`; we free it below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            let fam = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if fam == libc::AF_INET {
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push((
                    name,
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                ));
            } else if fam == libc::AF_INET6 {
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push((name, IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr))));
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// A usable (not link-local) address of `iface` (any interface when None) of one family.
pub fn interface_address(iface: Option<&str>, v6: bool) -> Option<IpAddr> {
    addresses()
        .into_iter()
        .filter(|(n, _)| iface.is_none_or(|i| i == n))
        .map(|(_, a)| a)
        .find(|a| {
            a.is_ipv6() == v6
                && !a.is_loopback()
                && match a {
                    IpAddr::V6(x) => (x.segments()[0] & 0xffc0) != 0xfe80,
                    IpAddr::V4(x) => !x.is_link_local(),
                }
        })
}

/// The original's default: the address of the interface holding the IPv4 default route.
pub fn default_route_address() -> Result<IpAddr, String> {
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| format!("reading /proc/net/route: {e}"))?;
    let iface = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())
        .ok_or("there is no IPv4 default route; give --unicast-nif-ip")?;
    interface_address(Some(&iface), false)
        .ok_or_else(|| format!("interface {iface} has no IPv4 address; give --unicast-nif-ip"))
}

/// Blocks SIGTERM and SIGINT in this thread (and the threads it starts later) and returns
/// a signalfd that becomes readable when one arrives.
pub fn block_termination_signals() -> io::Result<OwnedFd> {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Which signal a readable signalfd holds (consumes it).
pub fn read_signal(fd: &OwnedFd) -> Option<u32> {
    // SAFETY: reading one signalfd_siginfo into a buffer of its size.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let n = libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            std::mem::size_of::<libc::signalfd_siginfo>(),
        );
        (n == std::mem::size_of::<libc::signalfd_siginfo>() as isize).then_some(info.ssi_signo)
    }
}

/// An eventfd: a stop switch for the data path when it runs in-process (the benchmark).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd with constant flags.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable.
pub fn signal_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}
