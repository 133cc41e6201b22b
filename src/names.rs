//! Names the appliance derives: namespaces and interfaces. Interface names fit the
//! kernel's 15 bytes; a name that would not fit is cut and given a short hash, so two
//! long names never end up the same.

use sha2::{Digest, Sha256};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest site name: it prefixes interface names and must leave room for the rest.
pub const SITE_NAME_MAX: usize = 8;

/// The kernel's rule for interface names (`dev_valid_name`), plus our length limit.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty interface name".into());
    }
    if name.len() > IFNAME_MAX {
        return Err(format!(
            "{name:?} is {} bytes; interface names are at most {IFNAME_MAX}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{name:?} has the control character {c:?}; interface names are printable"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "{name:?} has {c:?}; interface names cannot hold '/', ':' or spaces"
        ));
    }
    Ok(())
}

/// Names of sites, VLANs, reflectors and monitors: letters, digits, '-' and '_',
/// starting with a letter or digit, so they are safe in paths, units and interface names.
pub fn check_object_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok_first || !ok_rest {
        return Err(format!(
            "{name:?} is not a valid name: use letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A derived interface name, cut to 15 bytes with a 4-hex-digit hash when too long.
pub fn fit_ifname(candidate: &str) -> String {
    if candidate.len() <= IFNAME_MAX {
        return candidate.to_string();
    }
    let digest = Sha256::digest(candidate.as_bytes());
    let tag = format!("{:02x}{:02x}", digest[0], digest[1]);
    let mut keep = IFNAME_MAX - tag.len();
    while !candidate.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{tag}", &candidate[..keep])
}

/// Network namespace of an untrusted VLAN, pinned at `/run/netns/<this>`.
pub fn vlan_netns(site: &str, vlan: &str) -> String {
    format!("{site}-{vlan}")
}

/// Network namespace of a reflector.
pub fn reflector_netns(site: &str, reflector: &str) -> String {
    format!("{site}-refl-{reflector}")
}

/// Host end of a VLAN namespace's veth (the end that joins the bridge).
pub fn vlan_veth_host(site: &str, vlan: &str) -> String {
    fit_ifname(&format!("{site}-{vlan}"))
}

/// Host end of a reflector's leg into one VLAN's bridge.
pub fn reflector_veth_host(site: &str, reflector: &str, vlan: &str) -> String {
    fit_ifname(&format!("{site}-{reflector}-{vlan}"))
}

/// Path a namespace is pinned at, so `ip netns exec NAME` works.
pub fn netns_pin(netns: &str) -> String {
    format!("/run/netns/{netns}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept() {
        assert_eq!(vlan_veth_host("lab", "iot"), "lab-iot");
        assert_eq!(reflector_veth_host("lab", "media", "iot"), "lab-media-iot");
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = reflector_veth_host("longsite", "reflector", "cameras");
        let b = reflector_veth_host("longsite", "reflector", "camerasX");
        assert!(a.len() <= IFNAME_MAX && b.len() <= IFNAME_MAX);
        assert_ne!(a, b);
        assert!(a.starts_with("longsite-r"));
        assert!(check_ifname(&a).is_ok());
        assert_eq!(a, reflector_veth_host("longsite", "reflector", "cameras"));
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("br-iot").is_ok());
        assert!(check_ifname("0123456789abcdef").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("eth0:1").is_err());
        assert!(check_ifname("..").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("br\0x").is_err());
        assert!(check_ifname("br\u{1b}[2J").is_err());
    }

    #[test]
    fn object_name_rules() {
        assert!(check_object_name("guest-wifi_2").is_ok());
        assert!(check_object_name("-x").is_err());
        assert!(check_object_name("a.b").is_err());
        assert!(check_object_name("").is_err());
    }
}
