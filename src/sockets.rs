//! Socket and interface helpers that std and socket2 lack: a typed `setsockopt` for any
//! option (multicast routing, raw IGMP/MLD, buffers), multicast by interface index,
//! interface indexes and addresses, and the default route's interface. Used by the
//! translator, the monitor relay and the multicast forwarder.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use socket2::Socket;

/// Index of interface `name` in this network namespace, None if there is none.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
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

/// setsockopt(2) of option `opt` at `level` to the value `v`, passed with its exact size.
/// `T` must be the type the kernel expects for that option (an int, `ip_mreqn`,
/// `vifctl`, ...): the kernel checks the length, not the layout.
pub fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: `v` points to a live T and the length passed is exactly its size, so the
    // kernel reads only memory we own.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
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
            // SAFETY: getifaddrs gives every node a NUL-terminated name.
            let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: ifa_addr is non-null (checked) and points to a sockaddr.
            let fam = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if fam == libc::AF_INET {
                // SAFETY: sa_family AF_INET means the sockaddr is a sockaddr_in.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push((
                    name,
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                ));
            } else if fam == libc::AF_INET6 {
                // SAFETY: sa_family AF_INET6 means the sockaddr is a sockaddr_in6.
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
