//! RFC 3306 unicast-prefix-based groups of the headend's services:
//! `ff3e:00PL:<64-bit prefix>:<group id>`, the group id being 0x80000000 | service number.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Top bit of the 32-bit group id: dynamically allocated id space of RFC 3306/3307.
pub const GROUP_ID_FLAG: u32 = 0x8000_0000;

/// The group receivers join for service `number` of a site with this unicast prefix.
pub fn service_group(prefix: Ipv6Net, number: u32) -> Ipv6Addr {
    let p = prefix.trunc().addr().segments();
    let id = GROUP_ID_FLAG | (number & !GROUP_ID_FLAG);
    Ipv6Addr::new(
        0xff3e,
        u16::from(prefix.prefix_len()),
        p[0],
        p[1],
        p[2],
        p[3],
        (id >> 16) as u16,
        id as u16,
    )
}

/// The service number a group stands for, if it is one of this prefix's service groups.
pub fn service_number(prefix: Ipv6Net, group: Ipv6Addr) -> Option<u32> {
    let s = group.segments();
    let id = (u32::from(s[6]) << 16) | u32::from(s[7]);
    let number = id & !GROUP_ID_FLAG;
    (id & GROUP_ID_FLAG != 0 && service_group(prefix, number) == group).then_some(number)
}

/// The IPv4 group of service `number` in `space` (its `number`-th address), if it fits.
pub fn service_group4(space: Ipv4Net, number: u32) -> Option<Ipv4Addr> {
    let space = space.trunc();
    let size = 1u64 << (32 - space.prefix_len());
    (u64::from(number) < size).then(|| Ipv4Addr::from(u32::from(space.network()) + number))
}

/// The service number an IPv4 group stands for in `space`.
pub fn service_number4(space: Ipv4Net, group: Ipv4Addr) -> Option<u32> {
    let space = space.trunc();
    space
        .contains(&group)
        .then(|| u32::from(group) - u32::from(space.network()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_field_notes_example() {
        let g = service_group(net("2001:db8:d0be:f00d::/64"), 0);
        assert_eq!(
            g,
            "ff3e:40:2001:db8:d0be:f00d:8000:0"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
    }

    #[test]
    fn highest_number_and_shorter_prefixes() {
        let g = service_group(net("fd20:1::/64"), 0x7fff_ffff);
        assert_eq!(g, "ff3e:40:fd20:1::ffff:ffff".parse::<Ipv6Addr>().unwrap());
        // A /48 puts 48 in the plen byte and zeroes the host bits of the prefix.
        let g = service_group(net("2001:db8:1:ffff::/48"), 5);
        assert_eq!(
            g,
            "ff3e:30:2001:db8:1:0:8000:5".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn round_trip() {
        let p = net("fd20:1::/64");
        for n in [0, 1, 2, 0xd0bef00d & 0x7fff_ffff, 0x7fff_ffff] {
            assert_eq!(service_number(p, service_group(p, n)), Some(n));
        }
        assert_eq!(
            service_number(p, "ff3e:40:fd20:2::8000:1".parse().unwrap()),
            None
        );
        assert_eq!(
            service_number(p, "ff3e:40:fd20:1::1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn ipv4_groups() {
        let space: Ipv4Net = "239.10.0.0/16".parse().unwrap();
        assert_eq!(service_group4(space, 1), Some(Ipv4Addr::new(239, 10, 0, 1)));
        assert_eq!(
            service_group4(space, 0xffff),
            Some(Ipv4Addr::new(239, 10, 255, 255))
        );
        assert_eq!(service_group4(space, 0x10000), None);
        assert_eq!(
            service_number4(space, Ipv4Addr::new(239, 10, 1, 2)),
            Some(258)
        );
        assert_eq!(service_number4(space, Ipv4Addr::new(239, 11, 0, 0)), None);
    }
}
