//! The flow table: which unicast sender owns which group. Pure logic, no I/O, so every rule
//! (random pick, never first/last, never one in use, caps, idle expiry) is unit tested.
//!
//! Compact on purpose: a group is kept as its 32-bit offset in the space and time as a
//! 100 ms tick, so 100,000 flows cost a few megabytes.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rand::RngExt;

/// Time in the table: 100 ms ticks since the translator started (u32 lasts 13 years).
pub type Tick = u32;
pub const TICKS_PER_SEC: u32 = 10;

/// A multicast address space groups are picked from. Only the first 2^32 addresses of a
/// larger (IPv6) space are used: RFC 3307 puts group ids in the low 32 bits anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub net: IpNet,
    base: u128,
    /// Highest usable offset (the last address of the space, or 2^32-1, excluded).
    last: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    #[error("multicast address space {0} is not multicast")]
    NotMulticast(IpNet),
    #[error("multicast address space {0} has no usable group (the first and last are never used)")]
    TooSmall(IpNet),
}

impl Space {
    pub fn new(net: IpNet) -> Result<Space, SpaceError> {
        let net = net.trunc();
        if !net.addr().is_multicast() {
            return Err(SpaceError::NotMulticast(net));
        }
        let host_bits = (net.max_prefix_len() - net.prefix_len()) as u32;
        let size: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        if size < 3 {
            return Err(SpaceError::TooSmall(net));
        }
        let last = (size - 2).min(u32::MAX as u128 - 1) as u32;
        let base = match net.addr() {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        Ok(Space { net, base, last })
    }

    /// How many groups can be handed out.
    pub fn usable(&self) -> u32 {
        self.last
    }

    pub fn addr(&self, offset: u32) -> IpAddr {
        let v = self.base + offset as u128;
        match self.net {
            IpNet::V4(_) => IpAddr::V4((v as u32).into()),
            IpNet::V6(_) => IpAddr::V6(v.into()),
        }
    }

    /// The offset of a usable group of this space.
    pub fn offset(&self, group: IpAddr) -> Option<u32> {
        if !self.net.contains(&group) {
            return None;
        }
        let v = match group {
            IpAddr::V4(a) => u32::from(a) as u128,
            IpAddr::V6(a) => u128::from(a),
        };
        let off = v - self.base;
        (off >= 1 && off <= self.last as u128).then_some(off as u32)
    }
}

/// One flow: 8 bytes beside its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub group: u32,
    pub last_seen: Tick,
}

/// Why a new flow got no group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    SpaceFull,
    TooManyFlows,
    RateLimited,
    TotalRateLimited,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotAllowed => "its address is not in the allow-list",
            Refusal::SpaceFull => "every group of the space is in use",
            Refusal::TooManyFlows => "the translator has its maximum number of flows",
            Refusal::RateLimited => "its address opens new flows too fast",
            Refusal::TotalRateLimited => "new flows arrive too fast from all senders together",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Known(u32),
    New(u32),
    Refused(Refusal),
}

/// Limits on who may open flows.
#[derive(Debug, Clone)]
pub struct Limits {
    pub allow: Vec<IpNet>,
    pub max_flows: u32,
    /// New flows per source address per second.
    pub new_per_sec: u32,
    /// New flows per second from all sources together.
    pub new_total_per_sec: u32,
}

pub struct FlowTable {
    pub space: Space,
    limits: Limits,
    flows: HashMap<SocketAddr, Flow>,
    used: HashSet<u32>,
    /// Per source address: (second, new flows in it).
    opened: HashMap<IpAddr, (u32, u32)>,
    /// All sources: (second, new flows in it).
    opened_total: (u32, u32),
}

impl FlowTable {
    pub fn new(space: Space, limits: Limits) -> FlowTable {
        FlowTable {
            space,
            limits,
            flows: HashMap::new(),
            used: HashSet::new(),
            opened: HashMap::new(),
            opened_total: (0, 0),
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.limits.allow.is_empty() || self.limits.allow.iter().any(|n| n.contains(&ip))
    }

    /// The group of `src`, allocating one for a new flow if the limits let it.
    pub fn admit(&mut self, src: SocketAddr, now: Tick) -> Admit {
        if let Some(f) = self.flows.get_mut(&src) {
            f.last_seen = now;
            return Admit::Known(f.group);
        }
        if !self.allowed(src.ip()) {
            return Admit::Refused(Refusal::NotAllowed);
        }
        if self.flows.len() >= self.limits.max_flows as usize {
            return Admit::Refused(Refusal::TooManyFlows);
        }
        if self.used.len() >= self.space.usable() as usize {
            return Admit::Refused(Refusal::SpaceFull);
        }
        let sec = now / TICKS_PER_SEC;
        if self.opened_total.0 != sec {
            self.opened_total = (sec, 0);
        }
        if self.opened_total.1 >= self.limits.new_total_per_sec {
            return Admit::Refused(Refusal::TotalRateLimited);
        }
        let e = self.opened.entry(src.ip()).or_insert((sec, 0));
        if e.0 != sec {
            *e = (sec, 0);
        }
        if e.1 >= self.limits.new_per_sec {
            return Admit::Refused(Refusal::RateLimited);
        }
        e.1 += 1;
        self.opened_total.1 += 1;
        let Some(group) = self.pick() else {
            return Admit::Refused(Refusal::SpaceFull);
        };
        self.used.insert(group);
        self.flows.insert(
            src,
            Flow {
                group,
                last_seen: now,
            },
        );
        Admit::New(group)
    }

    /// A random free offset: random tries first (like the original), then a scan from a
    /// random point, so a nearly full space still finds the last free group.
    fn pick(&self) -> Option<u32> {
        let mut rng = rand::rng();
        let last = self.space.last;
        for _ in 0..16 {
            let g = rng.random_range(1..=last);
            if !self.used.contains(&g) {
                return Some(g);
            }
        }
        let start = rng.random_range(1..=last);
        (start..=last)
            .chain(1..start)
            .find(|g| !self.used.contains(g))
    }

    /// Gives `src` back the group it had before a restart, if that group is still free.
    pub fn restore(&mut self, src: SocketAddr, group: IpAddr, now: Tick) -> Option<u32> {
        let off = self.space.offset(group)?;
        if self.flows.contains_key(&src)
            || self.used.contains(&off)
            || !self.allowed(src.ip())
            || self.flows.len() >= self.limits.max_flows as usize
        {
            return None;
        }
        self.used.insert(off);
        self.flows.insert(
            src,
            Flow {
                group: off,
                last_seen: now,
            },
        );
        Some(off)
    }

    /// Removes flows silent for `idle` ticks; calls `gone` for each.
    pub fn expire(&mut self, now: Tick, idle: Tick, mut gone: impl FnMut(SocketAddr, u32)) {
        let used = &mut self.used;
        self.flows.retain(|src, f| {
            let keep = now.wrapping_sub(f.last_seen) < idle;
            if !keep {
                used.remove(&f.group);
                gone(*src, f.group);
            }
            keep
        });
        let sec = now / TICKS_PER_SEC;
        self.opened.retain(|_, (s, _)| *s == sec);
    }

    pub fn flows(&self) -> impl Iterator<Item = (&SocketAddr, &Flow)> {
        self.flows.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(space: &str, max: u32) -> FlowTable {
        FlowTable::new(
            Space::new(space.parse().unwrap()).unwrap(),
            Limits {
                allow: vec![],
                max_flows: max,
                new_per_sec: 1000,
                new_total_per_sec: u32::MAX,
            },
        )
    }

    fn src(port: u16) -> SocketAddr {
        SocketAddr::new("192.0.2.7".parse().unwrap(), port)
    }

    #[test]
    fn a_slash_29_has_six_groups_and_never_first_or_last() {
        let mut t = table("232.1.2.0/29", 100);
        let mut groups = HashSet::new();
        for p in 0..6 {
            match t.admit(src(p), 0) {
                Admit::New(g) => {
                    let a = t.space.addr(g);
                    assert_ne!(a.to_string(), "232.1.2.0");
                    assert_ne!(a.to_string(), "232.1.2.7");
                    assert!(groups.insert(g), "group {a} given twice");
                }
                other => panic!("flow {p}: {other:?}"),
            }
        }
        assert_eq!(t.admit(src(6), 0), Admit::Refused(Refusal::SpaceFull));
        // a known flow still passes
        assert!(matches!(t.admit(src(3), 1), Admit::Known(_)));
    }

    #[test]
    fn idle_flows_free_their_group() {
        let mut t = table("232.1.2.0/30", 100); // 2 usable
        assert!(matches!(t.admit(src(1), 0), Admit::New(_)));
        assert!(matches!(t.admit(src(2), 0), Admit::New(_)));
        assert!(matches!(t.admit(src(3), 0), Admit::Refused(_)));
        assert!(matches!(t.admit(src(2), 15), Admit::Known(_)));
        let mut gone = vec![];
        t.expire(20, 10, |s, _| gone.push(s));
        assert_eq!(gone, vec![src(1)]);
        assert!(matches!(t.admit(src(3), 21), Admit::New(_)));
    }

    #[test]
    fn allow_list_caps_and_rate() {
        let mut t = FlowTable::new(
            Space::new("ff3e::/96".parse().unwrap()).unwrap(),
            Limits {
                allow: vec![
                    "192.0.2.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                max_flows: 3,
                new_per_sec: 2,
                new_total_per_sec: u32::MAX,
            },
        );
        let other = SocketAddr::new("198.51.100.1".parse().unwrap(), 1);
        assert_eq!(t.admit(other, 0), Admit::Refused(Refusal::NotAllowed));
        assert!(matches!(t.admit(src(1), 0), Admit::New(_)));
        assert!(matches!(t.admit(src(2), 0), Admit::New(_)));
        assert_eq!(t.admit(src(3), 0), Admit::Refused(Refusal::RateLimited));
        // next second
        assert!(matches!(t.admit(src(3), 10), Admit::New(_)));
        let v6 = SocketAddr::new("2001:db8::7".parse().unwrap(), 9);
        assert_eq!(t.admit(v6, 10), Admit::Refused(Refusal::TooManyFlows));
        let g = match t.admit(src(1), 10) {
            Admit::Known(g) => t.space.addr(g),
            o => panic!("{o:?}"),
        };
        assert!(g.to_string().starts_with("ff3e::"), "{g}");
    }

    #[test]
    fn restore_gives_the_same_group_back() {
        let mut t = table("232.0.0.0/8", 100);
        let g: IpAddr = "232.9.8.7".parse().unwrap();
        assert!(t.restore(src(1), g, 0).is_some());
        assert_eq!(t.admit(src(1), 1), Admit::Known(t.space.offset(g).unwrap()));
        // a group in use or outside the space is not restored
        assert!(t.restore(src(2), g, 0).is_none());
        assert!(t.restore(src(3), "239.1.1.1".parse().unwrap(), 0).is_none());
        assert!(t.restore(src(3), "232.0.0.0".parse().unwrap(), 0).is_none());
    }

    #[test]
    fn spaces() {
        assert!(Space::new("10.0.0.0/8".parse().unwrap()).is_err());
        assert!(Space::new("232.1.1.0/31".parse().unwrap()).is_err());
        assert_eq!(
            Space::new("232.1.1.0/30".parse().unwrap())
                .unwrap()
                .usable(),
            2
        );
        assert_eq!(
            Space::new("232.0.0.0/8".parse().unwrap()).unwrap().usable(),
            (1 << 24) - 2
        );
        let big = Space::new("ff3e::/32".parse().unwrap()).unwrap();
        assert_eq!(big.usable(), u32::MAX - 1);
    }

    #[test]
    fn the_total_new_flow_rate_holds_across_sources() {
        let mut t = FlowTable::new(
            Space::new("232.1.0.0/16".parse().unwrap()).unwrap(),
            Limits {
                allow: vec![],
                max_flows: 10_000,
                new_per_sec: 10,
                new_total_per_sec: 5,
            },
        );
        // Seven senders, one flow each, in the same second: five get a group.
        let admitted: Vec<Admit> = (1..=7u8)
            .map(|i| t.admit(SocketAddr::from(([127, 0, 0, i], 5000)), 3))
            .collect();
        assert!(admitted[..5].iter().all(|a| matches!(a, Admit::New(_))));
        assert_eq!(admitted[5], Admit::Refused(Refusal::TotalRateLimited));
        // A known flow still passes; the next second opens five more.
        assert!(matches!(
            t.admit(SocketAddr::from(([127, 0, 0, 1], 5000)), 4),
            Admit::Known(_)
        ));
        assert!(matches!(
            t.admit(SocketAddr::from(([127, 0, 0, 6], 5000)), TICKS_PER_SEC + 3),
            Admit::New(_)
        ));
    }
}
