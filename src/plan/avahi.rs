//! avahi-daemon configurations: one instance per untrusted VLAN (its own private bus, no
//! reflection) and one per reflector (no bus, reflecting between its legs).

use crate::site::reflect_filters;

/// Inside the instance's private `/run`.
pub const CONF_PATH: &str = "/run/avahi-daemon/appliance.conf";

/// avahi drops root to its own user (it needs CAP_CHOWN for its runtime directory, and
/// CAP_SETUID/CAP_SETGID to switch; it has none left afterwards). No chroot: the private
/// mounts already hide the host's /run.
pub const CAPS: [&str; 3] = ["CAP_CHOWN", "CAP_SETGID", "CAP_SETUID"];

/// avahi's pid file (in the private `/run`). After avahi drops root it cannot remove a
/// stale one of a killed instance itself, so the supervisor removes it before each start.
pub const PID_FILE: &str = "/run/avahi-daemon/pid";

pub fn argv() -> Vec<String> {
    ["avahi-daemon", "--no-chroot", "-f", CONF_PATH]
        .map(String::from)
        .to_vec()
}

/// The avahi of one untrusted VLAN: serves only that VLAN's interface, over its private bus.
pub fn vlan_conf(hostname: &str, interface: &str, ipv6: bool) -> String {
    let mut s = header(
        hostname,
        "the VLAN's own avahi, on its private bus",
        &[interface],
        ipv6,
        true,
    );
    s.push_str(
        "ratelimit-interval-usec=1000000\n\
         ratelimit-burst=1000\n\
         \n\
         [publish]\n\
         publish-hinfo=no\n\
         publish-workstation=no\n\
         \n\
         [reflector]\n\
         enable-reflector=no\n",
    );
    s
}

/// A reflector: one leg per VLAN, no bus, only the listed service types cross.
pub fn reflector_conf(
    hostname: &str,
    interfaces: &[String],
    services: Option<&[String]>,
    ipv6: bool,
) -> String {
    let what = format!("reflects mDNS between {}", interfaces.join(", "));
    let names: Vec<&str> = interfaces.iter().map(String::as_str).collect();
    let mut s = header(hostname, &what, &names, ipv6, false);
    s.push_str(
        "\n\
         [publish]\n\
         disable-publishing=yes\n\
         \n\
         [reflector]\n\
         enable-reflector=yes\n\
         reflect-ipv=no\n",
    );
    if let Some(list) = services {
        s.push_str(&format!("reflect-filters={}\n", reflect_filters(list)));
    }
    s
}

/// The comment line and the `[server]` section every instance has.
fn header(hostname: &str, what: &str, interfaces: &[&str], ipv6: bool, dbus: bool) -> String {
    format!(
        "# Written by appliance for {hostname}: {what}.\n\
         [wide-area]\n\
         enable-wide-area=no\n\
         \n\
         [server]\n\
         host-name={hostname}\n\
         use-ipv4=yes\n\
         use-ipv6={}\n\
         allow-interfaces={}\n\
         enable-dbus={}\n",
        yes_no(ipv6),
        interfaces.join(","),
        yes_no(dbus),
    )
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
