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

/// Directories the state directory must not be: `up` makes it 0700 and `down` removes
/// what it finds in it, so it must be one of the appliance's own.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/run",
    "/var/tmp",
    "/run/user",
    "/run/netns",
    "/run/lock",
    "/run/appliance",
    "/usr/local",
    "/usr/lib",
    "/var/log",
    "/var/cache",
];

/// A state directory must be dedicated: absolute, no `..` or `.`, not `/` nor a system
/// directory itself.
pub fn check_state_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::path::Component;
    if !dir.is_absolute() {
        return Err(format!(
            "{:?} is relative; give an absolute path",
            dir.display()
        ));
    }
    if dir
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || dir
            .to_string_lossy()
            .split('/')
            .any(|p| p == "." || p == "..")
    {
        return Err(format!(
            "{:?} contains \"..\" or \".\"; give the directory's own path",
            dir.display()
        ));
    }
    let plain = dir.to_string_lossy();
    let plain = plain.trim_end_matches('/');
    let plain = if plain.is_empty() { "/" } else { plain };
    if SYSTEM_DIRS.contains(&plain) {
        return Err(format!(
            "{plain:?} is a system directory; give one of the appliance's own, like /run/appliance/SITE"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_must_be_dedicated() {
        use std::path::Path;
        for bad in [
            "/",
            "/tmp",
            "/tmp/",
            "/etc",
            "/usr",
            "/var",
            "/run",
            "/run/appliance",
            "/run/appliance/../../etc",
            "/run/appliance/./lab",
            "run/appliance/lab",
        ] {
            assert!(check_state_dir(Path::new(bad)).is_err(), "{bad} passed");
        }
        for good in [
            "/run/appliance/lab",
            "/var/lib/appliance-lab",
            "/tmp/appliance-test-1/state",
        ] {
            assert_eq!(check_state_dir(Path::new(good)), Ok(()), "{good}");
        }
    }

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
