//! MAC addresses of the veths the appliance makes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Locally administered unicast, from a hash of (site, vlan, role), like systemd's
    /// `MACAddressPolicy=persistent`: the same names give the same MAC on every `up`.
    pub fn stable(site: &str, vlan: &str, role: &str) -> Mac {
        let mut h = Sha256::new();
        for part in ["appliance-mac", site, vlan, role] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let d = h.finalize();
        Mac([0x02, d[0], d[1], d[2], d[3], d[4]])
    }

    /// The manual setup's scheme: `fe:ff:` + the netns inode XOR 0xf0000000, big-endian
    /// (docs/architecture.md).
    /// Not stable across re-creation of the namespace; kept for those who rely on it.
    pub fn from_netns_inode(inode: u64) -> Mac {
        let v = (inode as u32) ^ 0xf000_0000;
        let b = v.to_be_bytes();
        Mac([0xfe, 0xff, b[0], b[1], b[2], b[3]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0
    }

    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (six hex bytes separated by ':')"
            ));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(format!(
                    "{s:?} is not a MAC address (each byte is two hex digits)"
                ));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address ({p:?} is not hex)"))?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_is_stable_local_unicast_and_distinct() {
        let a = Mac::stable("lab", "iot", "ns");
        assert_eq!(a, Mac::stable("lab", "iot", "ns"));
        assert!(a.is_unicast() && a.is_locally_administered());
        assert_ne!(a, Mac::stable("lab", "iot", "host"));
        assert_ne!(a, Mac::stable("lab", "guest", "ns"));
        assert_ne!(a, Mac::stable("lab2", "iot", "ns"));
        // Field separators keep ("ab","c") and ("a","bc") apart.
        assert_ne!(Mac::stable("ab", "c", "ns"), Mac::stable("a", "bc", "ns"));
    }

    #[test]
    fn netns_scheme_matches_the_field_notes() {
        // printf '%08x' $(( 4026532281 ^ 0xf0000000 )) = 000001b9
        let m = Mac::from_netns_inode(4026532281);
        assert_eq!(m.to_string(), "fe:ff:00:00:01:b9");
        assert!(m.is_unicast() && m.is_locally_administered());
    }

    #[test]
    fn parse_and_print_round_trip() {
        let m: Mac = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert!("02:ab:cd:00:01".parse::<Mac>().is_err());
        assert!("02:ab:cd:00:01:fg".parse::<Mac>().is_err());
        assert!("2:ab:cd:00:01:ff".parse::<Mac>().is_err());
    }
}
