//! The README's first command: `appliance up site.toml` on the example site, in a fresh
//! namespace standing in for a bare machine (`create_bridges = true` makes its bridges).
//! Every part comes up under the supervisor; SIGTERM leaves nothing behind.

mod common;

use std::time::Duration;

use common::{Sandbox, Up, repo, wait_until};

fn status(sb: &Sandbox) -> Option<(i32, serde_json::Value)> {
    let out = sb.appliance().args(["status", "--json"]).output().ok()?;
    Some((
        out.status.code()?,
        serde_json::from_slice(&out.stdout).ok()?,
    ))
}

#[test]
fn the_example_site_comes_up_whole_and_goes_away_without_a_trace() {
    let sb = Sandbox::new();
    let mut up = Up::start(&sb, &repo().join("site.toml"));
    let v = wait_until(
        "the example site to be healthy",
        Duration::from_secs(30),
        || {
            if let Ok(Some(st)) = up.child.try_wait() {
                panic!("appliance up exited ({st}):\n{}", up.log());
            }
            match status(&sb) {
                Some((0, v)) => Some(v),
                _ => None,
            }
        },
    );

    // Every child of the plan runs; the headend answers its health check.
    let state = |name: &str| -> String {
        v["children"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["health"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no child {name} in status: {v}"))
    };
    for name in ["avahi@iot", "avahi@guest"] {
        assert_eq!(state(name), "healthy", "{v}");
    }
    for name in [
        "dbus@iot",
        "dbus@guest",
        "reflector@media",
        "mroute",
        "translate",
        "monitor",
        "headend",
    ] {
        assert!(
            ["running", "healthy"].contains(&state(name).as_str()),
            "{name}: {v}"
        );
    }
    assert_eq!(state("headend"), "healthy", "{v}");
    // The translator's own answer comes through: on 127.0.0.1 it is not open to anyone.
    assert_eq!(v["translate"]["healthy"], true, "{v}");
    assert!(v["translate"]["open_to_anyone"].is_null(), "{v}");
    assert_eq!(v["headend"]["services"][0]["state"], "idle", "{v}");

    // The forwarder's own status comes through, with both bridges as VIFs.
    let vifs: Vec<&str> = v["mroute"]["vifs"]
        .as_array()
        .unwrap_or_else(|| panic!("no mroute status: {v}"))
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(vifs, ["br-trusted", "br-iot"]);
    // The forwarder joined the site's [[multicast.join]] group on its bridge.
    let maddr = sb.sh("ip maddr show dev br-trusted");
    assert!(maddr.contains("239.1.2.3"), "{maddr}");
    // The untrusted VLANs' namespaces are pinned where `ip netns` finds them, each with
    // its address, and its veth's host end is in the VLAN's bridge.
    let netns = sb.sh("ip netns list");
    assert!(
        netns.contains("lab-iot")
            && netns.contains("lab-guest")
            && netns.contains("lab-refl-media"),
        "{netns}"
    );
    let addr = sb.sh("ip -n lab-iot -br addr show dev iot");
    assert!(
        addr.contains("10.20.2.2/24") && addr.contains("fd20:2::2/64"),
        "{addr}"
    );
    let master = sb.sh("ip -br link show master br-iot");
    assert!(master.contains("lab-iot"), "{master}");
    // Each component's nftables table is in place.
    let tables = sb.sh("nft list tables");
    assert!(tables.contains("appliance-lab-mroute"), "{tables}");
    assert!(tables.contains("appliance-lab-monitor"), "{tables}");

    // A unicast source on the translator's port gets a group of the space.
    sb.sh("echo hello | socat -u - UDP4-SENDTO:127.0.0.1:9001,sourceport=31380");
    wait_until(
        "the translator to allocate a group",
        Duration::from_secs(10),
        || {
            up.log()
                .contains("allocated for ('127.0.0.1', 31380).")
                .then_some(())
        },
    );

    assert_eq!(up.stop(), Some(0), "{}", up.log());
    assert_eq!(sb.sh("ip -br link | cut -d' ' -f1").trim(), "lo");
    assert_eq!(sb.sh("ip netns list").trim(), "");
    assert_eq!(sb.sh("nft list tables").trim(), "");
    let left = sb.processes();
    assert!(left.is_empty(), "processes left in the sandbox: {left:?}");
}
