//! The plan of the example site: golden output, determinism, MACs and names.

use std::collections::BTreeSet;
use std::path::Path;

use appliance::plan::{self, MacSpec, Plan};
use appliance::site;

fn example() -> Plan {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("site.toml"))
        .expect("site.toml");
    let site = site::parse("site.toml", &text).expect("example is valid");
    plan::plan(&site, Path::new("site.toml"))
}

/// Compares with a golden file; `UPDATE_GOLDEN=1 cargo test` rewrites it after a deliberate change.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 makes it)");
    assert!(
        expected == actual,
        "plan differs from {}; if the change is meant, run UPDATE_GOLDEN=1 cargo test\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn golden_text_plan() {
    golden("plan.txt", &example().to_string());
}

#[test]
fn golden_json_plan() {
    golden("plan.json", &example().to_json());
}

#[test]
fn golden_nft_ruleset() {
    let rules: String = example().firewall.iter().map(|t| t.ruleset()).collect();
    golden("ruleset.nft", &rules);
}

#[test]
fn same_input_same_plan_byte_for_byte() {
    let a = example();
    let b = example();
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn macs_are_local_unicast_and_distinct() {
    let p = example();
    let mut seen = BTreeSet::new();
    for v in &p.veths {
        let peer = match v.peer_mac {
            MacSpec::Fixed(m) => m,
            MacSpec::NetnsInode => panic!("example uses stable MACs"),
        };
        for m in [v.host_mac, peer] {
            assert!(m.is_unicast() && m.is_locally_administered(), "{m}");
            assert!(seen.insert(m), "{m} used twice");
        }
    }
    assert_eq!(seen.len(), 2 * p.veths.len());
}

#[test]
fn interface_names_fit_and_never_collide() {
    let p = example();
    let mut host_side = BTreeSet::new();
    for v in &p.veths {
        assert!(v.host.len() <= 15 && v.peer.len() <= 15, "{v:?}");
        assert!(host_side.insert(v.host.clone()), "{} twice", v.host);
    }
    for b in &p.bridges {
        assert!(
            !host_side.contains(&b.name),
            "veth {} clashes with a bridge",
            b.name
        );
    }
}

#[test]
fn every_part_of_the_example_is_planned() {
    let p = example();
    let ns: Vec<&str> = p.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(ns, ["lab-iot", "lab-guest", "lab-refl-media"]);
    assert!(p.namespaces.iter().all(|n| n.pin.starts_with("/run/netns")));
    let children: Vec<&str> = p.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        children,
        [
            "dbus@iot",
            "avahi@iot",
            "dbus@guest",
            "avahi@guest",
            "reflector@media",
            "mroute",
            "translate",
            "headend",
            "monitor"
        ]
    );
    let h = p.headend.as_ref().expect("headend");
    assert_eq!(h.services[0].group.to_string(), "ff3e:40:fd20:1::8000:1");
    assert!(p.translator.is_some());
    assert_eq!(p.monitors.len(), 1);
    assert!(!p.multicast.routes.is_empty());
    let reflector_conf = &p.namespaces[2].files[0].contents;
    assert!(reflector_conf.contains("enable-reflector=yes"));
    assert!(reflector_conf.contains("reflect-filters=_raop._tcp.local,_airplay._tcp.local"));
    assert!(reflector_conf.contains("allow-interfaces=trusted,iot"));
}

#[test]
fn stable_macs_survive_a_changed_file() {
    // Adding a VLAN in front must not change the MACs of the others.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("site.toml")).unwrap();
    let extra = text.replacen(
        "[[vlan]]",
        "[[vlan]]\nname = \"cams\"\nbridge = \"br-cams\"\n\n[[vlan]]",
        1,
    );
    let a = example();
    let b = plan::plan(
        &site::parse("site.toml", &extra).unwrap(),
        Path::new("site.toml"),
    );
    let iot = |p: &Plan| {
        p.veths
            .iter()
            .find(|v| v.host == "lab-iot")
            .cloned()
            .unwrap()
    };
    assert_eq!(iot(&a).host_mac, iot(&b).host_mac);
    assert_eq!(iot(&a).peer_mac, iot(&b).peer_mac);
}

#[test]
fn a_state_dir_override_moves_every_path_under_it() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("site.toml")).unwrap();
    let site = site::parse("site.toml", &text).unwrap();
    let p = plan::plan(
        &site.with_state_dir(Some("/tmp/elsewhere".into())),
        Path::new("site.toml"),
    );
    assert_eq!(p.control_socket, Path::new("/tmp/elsewhere/control.sock"));
    let mroute = p.children.iter().find(|c| c.name == "mroute").unwrap();
    assert!(
        mroute
            .argv
            .windows(2)
            .any(|w| w == ["--state-dir", "/tmp/elsewhere/parts"])
    );
    let translate = p.children.iter().find(|c| c.name == "translate").unwrap();
    assert!(
        translate
            .argv
            .contains(&"/tmp/elsewhere/parts/translator-flows.json".to_string())
    );
    assert!(!p.to_json().contains("/run/appliance/lab"));
}

#[test]
fn accept_in_inserts_each_forward_rule_of_the_right_family() {
    let text = "[site]\nname = \"lab\"\n[multicast]\naccept_in = [\"ip filter FORWARD\", \"inet fw fwd\"]\n\
                [[multicast.route]]\nfrom = \"br-a\"\ngroup = \"239.1.0.0/16\"\nto = [\"br-b\"]\n\
                [[multicast.route]]\nfrom = \"br-a\"\ngroup = \"ff3e::/16\"\nto = [\"br-b\"]\n";
    let p = plan::plan(
        &site::parse("site.toml", text).unwrap(),
        Path::new("site.toml"),
    );
    let fw = p.firewall.iter().find(|f| f.owner == "mroute").unwrap();
    assert_eq!(
        fw.insertions(),
        [
            "insert rule ip filter FORWARD iifname \"br-a\" oifname \"br-b\" ip daddr 239.1.0.0/16 accept comment \"appliance-lab-mroute\"",
            "insert rule inet fw fwd iifname \"br-a\" oifname \"br-b\" ip6 daddr ff3e::/16 accept comment \"appliance-lab-mroute\"",
            "insert rule inet fw fwd iifname \"br-a\" oifname \"br-b\" ip daddr 239.1.0.0/16 accept comment \"appliance-lab-mroute\"",
        ]
    );
}

#[test]
fn an_access_router_plans_frr_and_the_mld_proxy() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sites/access-router.toml");
    let loaded = appliance::site::load(&path).unwrap();
    let p = appliance::plan::plan(&loaded.site, &path);
    let r = p.routing.as_ref().expect("a routing plan");
    assert_eq!(r.ipv4_table, Some(appliance::plan::routing::Ipv4Owner::Frr));
    let frr = r.frr.as_ref().unwrap();
    assert_eq!(frr.daemons, ["zebra", "staticd", "pimd"]);
    assert!(frr.config.contains("ip pim rp 10.0.0.1 224.0.0.0/4"));
    let proxy = r.mld_proxy.as_ref().unwrap();
    assert_eq!(
        (proxy.upstream.as_str(), proxy.downstream.as_slice()),
        ("up0", &["br-lan".to_string()][..])
    );
    // The proxy's routes are the forwarder's: its interfaces are MIFs, IPv4 is left alone.
    assert_eq!(p.multicast.mifs, ["up0", "br-lan"]);
    assert!(p.multicast.vifs.is_empty());
    assert!(p.children.iter().any(|c| c.name == "mroute"));
    let text = p.to_string();
    assert!(text.contains("MLD proxy (RFC 4605): upstream up0, downstream br-lan"));
    // FRR's daemons and the frr part are children in FRR's mount space, argv printed.
    for d in ["zebra", "staticd", "pimd"] {
        assert!(
            text.contains(&format!(
                "$ /usr/lib/frr/{d} -u frr -g frr -A 127.0.0.1 -P 0 --vty_socket /run/frr --log stdout"
            )),
            "{text}"
        );
    }
    assert!(text.contains("frr                in mount space frr; as appliance with group frrvty; caps none; after zebra, staticd, pimd"), "{text}");
    assert!(
        text.contains("bind /run/appliance/floor1/frr/run over /run/frr"),
        "{text}"
    );
    assert_eq!(p.mount_spaces.len(), 1);
}
