//! One test per kind of error `check` reports, each asserting the line, column and field.

use super::*;

/// The single diagnostic of `text`, asserting there is exactly one.
fn one(text: &str) -> Diagnostic {
    let errs = parse("site.toml", text)
        .expect_err("should be invalid")
        .diags;
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", show(&errs));
    errs.into_iter().next().unwrap()
}

fn all(text: &str) -> Vec<Diagnostic> {
    parse("site.toml", text)
        .expect_err("should be invalid")
        .diags
}

#[track_caller]
fn at(d: &Diagnostic, line: usize, col: usize, field: &str, says: &str) {
    assert_eq!(
        (d.line, d.col, d.field.as_str()),
        (line, col, field),
        "wrong place in: {d}"
    );
    assert!(d.message.contains(says), "{d:?} does not say {says:?}");
    assert!(
        d.to_string()
            .starts_with(&format!("site.toml:{line}:{col}: {field}: "))
            || field.is_empty()
    );
}

const SITE: &str = "[site]\nname = \"lab\"\n";

#[test]
fn the_example_site_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/site.toml")).unwrap();
    parse("site.toml", &text).unwrap();
}

#[test]
fn syntax_error() {
    let d = one("[site]\nname = \"lab\n");
    assert_eq!(d.line, 2);
    assert!(d.message.starts_with("syntax:"), "{d}");
}

#[test]
fn unknown_key() {
    let d = one(
        "[site]\nname = \"lab\"\n\n[[vlan]]\nname = \"iot\"\nbridge = \"br-iot\"\ncolour = \"red\"\n",
    );
    at(&d, 7, 1, "vlan[0].colour", "unknown field `colour`");
}

#[test]
fn unknown_section() {
    let d = one("[site]\nname = \"lab\"\n[vlans]\nx = 1\n");
    at(&d, 3, 2, "vlans", "unknown section");
}

#[test]
fn wrong_type() {
    let d = one("[site]\nname = \"lab\"\ncreate_bridges = \"yes\"\n");
    at(&d, 3, 18, "site.create_bridges", "invalid type");
}

#[test]
fn wrong_value_in_a_typed_string() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br-iot\"\naddress = \"10.0.0.300/24\"\n"
    ));
    at(
        &d,
        6,
        11,
        "vlan[0].address",
        "neither \"dhcp\" nor an address",
    );
}

#[test]
fn missing_field() {
    let d = one(&format!("{SITE}[[vlan]]\nname = \"iot\"\n"));
    assert_eq!(d.field, "vlan[0].bridge");
    assert!(d.message.contains("missing"), "{d}");
}

#[test]
fn errors_in_several_sections_are_all_reported() {
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = 3\n[[vlan]]\nname = \"b\"\nbridge = \"br-b\"\nx = 1\n[translator]\nunicast = \"nope\"\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["vlan[0].bridge", "vlan[1].x", "translator.unicast"]
    );
}

#[test]
fn duplicate_vlan_name() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br-a\"\n[[vlan]]\nname = \"iot\"\nbridge = \"br-b\"\n"
    ));
    at(&d, 7, 8, "vlan[1].name", "name of vlan[0] too");
}

#[test]
fn bridge_used_twice() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"guest\"\nbridge = \"br-iot\"\n[[vlan]]\nname = \"iot\"\n  bridge = \"br-iot\"\n"
    ));
    at(
        &d,
        8,
        12,
        "vlan[1].bridge",
        "\"br-iot\" is used by vlan \"guest\" too",
    );
}

#[test]
fn duplicate_reflector_name() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[vlan]]\nname = \"b\"\nbridge = \"br-b\"\n\
         [[reflector]]\nname = \"r\"\nvlans = [\"a\", \"b\"]\n[[reflector]]\nname = \"r\"\nvlans = [\"a\", \"b\"]\n"
    ));
    at(&d, 13, 8, "reflector[1].name", "name of reflector[0] too");
}

#[test]
fn reflector_names_unknown_vlan() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[reflector]]\nname = \"r\"\nvlans = [\"a\", \"nope\"]\n"
    ));
    at(
        &d,
        8,
        15,
        "reflector[0].vlans[1]",
        "no vlan is named \"nope\"",
    );
}

#[test]
fn reflector_with_fewer_than_two_vlans() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[reflector]]\nname = \"r\"\nvlans = [\"a\"]\n"
    ));
    at(&d, 8, 9, "reflector[0].vlans", "at least two VLANs");
}

#[test]
fn reflector_service_type_and_address_checks() {
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\naddress = \"10.1.0.2/24\"\n[[vlan]]\nname = \"b\"\nbridge = \"br-b\"\n\
         [[reflector]]\nname = \"r\"\nvlans = [\"a\", \"b\"]\nservices = [\"raop\"]\naddresses = {{ a = \"10.2.0.3/24\", c = \"10.3.0.3/24\" }}\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "reflector[0].services[0]",
            "reflector[0].addresses.a",
            "reflector[0].addresses.c"
        ]
    );
    assert!(
        errs[1]
            .message
            .contains("outside vlan \"a\"'s subnet 10.1.0.0/24")
    );
}

#[test]
fn bridge_name_too_long() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br-0123456789abc\"\n"
    ));
    at(&d, 5, 10, "vlan[0].bridge", "at most 15");
}

#[test]
fn interface_name_with_bad_characters() {
    let d = one(&format!(
        "{SITE}[[monitor]]\nname = \"m\"\ninterface = \"br/x\"\ngroup = \"239.1.1.1\"\nport = 514\ndeliver = \"0.0.0.0:514\"\n"
    ));
    at(&d, 5, 13, "monitor[0].interface", "cannot hold '/'");
}

#[test]
fn site_name_too_long_for_derived_names() {
    let d = one("[site]\nname = \"warehouse9\"\n");
    at(&d, 2, 8, "site.name", "at most 8");
}

#[test]
fn vlan_name_too_long_for_an_interface() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"building-7-cameras\"\nbridge = \"br-c\"\n"
    ));
    at(&d, 4, 8, "vlan[0].name", "at most 15");
}

#[test]
fn address_outside_a_sane_range() {
    for (addr, says) in [
        ("224.1.1.1/24", "multicast"),
        ("127.0.0.2/8", "loopback"),
        ("10.20.2.0/24", "network address"),
        ("10.20.2.255/24", "broadcast address"),
        ("10.20.2.2/2", "/8 to /30"),
        ("169.254.1.1/16", "link-local"),
    ] {
        let d = one(&format!(
            "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br\"\naddress = \"{addr}\"\n"
        ));
        at(&d, 6, 11, "vlan[0].address", says);
    }
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br\"\naddress6 = \"fe80::2/64\"\n"
    ));
    at(&d, 6, 12, "vlan[0].address6", "link-local");
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br\"\naddress = \"fd00::2/64\"\n"
    ));
    at(&d, 6, 11, "vlan[0].address", "is IPv6");
}

#[test]
fn trusted_vlan_with_namespace_settings() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"t\"\nbridge = \"br\"\ntrust = \"trusted\"\naddress = \"dhcp\"\n"
    ));
    at(
        &d,
        7,
        11,
        "vlan[0].address",
        "trusted VLAN gets no namespace",
    );
}

#[test]
fn literal_mac_must_be_unicast() {
    let d = one(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br\"\nmac = \"01:00:5e:00:00:01\"\n"
    ));
    at(&d, 6, 7, "vlan[0].mac", "multicast MAC");
}

#[test]
fn route_group_not_multicast() {
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\ngroup = \"10.1.2.3\"\nto = [\"br-b\"]\n"
    ));
    at(&d, 6, 9, "multicast.route[0].group", "not multicast");
}

#[test]
fn route_group_link_local_scope() {
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\ngroup = \"ff02::fb\"\nto = [\"br-b\"]\n"
    ));
    at(&d, 6, 9, "multicast.route[0].group", "never forwarded");
}

#[test]
fn route_to_includes_from() {
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\ngroup = \"239.1.0.0/16\"\nto = [\"br-b\", \"br-a\"]\n"
    ));
    at(&d, 7, 15, "multicast.route[0].to[1]", "own from");
}

#[test]
fn route_source_of_other_family() {
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\nsource = \"fd00::1\"\ngroup = \"239.1.2.3\"\nto = [\"br-b\"]\n"
    ));
    at(
        &d,
        6,
        10,
        "multicast.route[0].source",
        "different IP versions",
    );
}

#[test]
fn ipv6_route_with_a_hop_limit_threshold() {
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\ngroup = \"ff3e::1\"\nto = [\"br-b\"]\nttl_threshold = 4\n"
    ));
    at(
        &d,
        8,
        17,
        "multicast.route[0].ttl_threshold",
        "no per-output",
    );
}

#[test]
fn too_many_vifs() {
    let outs: Vec<String> = (0..32).map(|i| format!("\"br{i}\"")).collect();
    let d = one(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"br-a\"\ngroup = \"239.1.2.3\"\nto = [{}]\n",
        outs.join(", ")
    ));
    assert_eq!(d.field, "multicast.route");
    assert!(d.message.contains("33 interfaces"), "{d}");
}

#[test]
fn service_number_above_31_bits() {
    let d = one(&format!(
        "{SITE}[headend]\ninterfaces = [\"br\"]\nprefix = \"fd20:1::/64\"\n[[headend.service]]\nnumber = 2147483648\nname = \"x\"\nurl = \"http://radio.example/s\"\n"
    ));
    at(&d, 7, 10, "headend.service[0].number", "31 bits");
}

#[test]
fn service_number_used_twice() {
    let d = one(&format!(
        "{SITE}[headend]\ninterfaces = [\"br\"]\nprefix = \"fd20:1::/64\"\n\
         [[headend.service]]\nnumber = 7\nname = \"a\"\nurl = \"http://radio.example/a\"\n\
         [[headend.service]]\nnumber = 7\nname = \"b\"\nurl = \"http://radio.example/b\"\n"
    ));
    at(
        &d,
        11,
        10,
        "headend.service[1].number",
        "headend.service[0] too",
    );
}

#[test]
fn service_command_without_rtp() {
    let d = one(&format!(
        "{SITE}[headend]\ninterfaces = [\"br\"]\nprefix = \"fd20:1::/64\"\n[[headend.service]]\nnumber = 1\nname = \"a\"\ncommand = \"ffmpeg -i x\"\n"
    ));
    at(&d, 9, 11, "headend.service[0].command", "{rtp}");
}

#[test]
fn headend_prefix_longer_than_64() {
    let d = one(&format!(
        "{SITE}[headend]\ninterfaces = [\"br\"]\nprefix = \"fd20:1::/80\"\n"
    ));
    at(&d, 5, 10, "headend.prefix", "/64 or shorter");
}

#[test]
fn translator_space_not_multicast() {
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nspace = \"10.0.0.0/8\"\n"
    ));
    at(&d, 5, 9, "translator.space", "not multicast");
}

#[test]
fn translator_space_smaller_than_30() {
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nspace = \"232.1.1.0/31\"\n"
    ));
    at(&d, 5, 9, "translator.space", "/30 or wider");
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"[::1]:9001\"\nspace = \"ff3e::/127\"\n"
    ));
    at(&d, 5, 9, "translator.space", "/126 or wider");
}

#[test]
fn translator_bad_duration() {
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nidle = \"soon\"\n"
    ));
    at(&d, 5, 8, "translator.idle", "not a duration");
}

#[test]
fn monitor_group_not_multicast() {
    let d = one(&format!(
        "{SITE}[[monitor]]\nname = \"syslog\"\ninterface = \"br\"\ngroup = \"192.168.1.1\"\nport = 514\ndeliver = \"127.0.0.1:514\"\n"
    ));
    at(&d, 6, 9, "monitor[0].group", "not a multicast group");
}

#[test]
fn derived_names_must_not_collide() {
    // vlan "refl-r" would get the namespace a reflector named "r" gets.
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[vlan]]\nname = \"refl-r\"\nbridge = \"br-b\"\n\
         [[reflector]]\nname = \"r\"\nvlans = [\"a\", \"refl-r\"]\n"
    ));
    assert!(
        errs.iter()
            .any(|d| d.field == "reflector[0].name" && d.message.contains("lab-refl-r")),
        "{}",
        show(&errs)
    );
}

#[test]
fn every_error_of_the_validation_pass_at_once() {
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n\
         [translator]\nunicast = \"127.0.0.1:9001\"\nspace = \"10.0.0.0/8\"\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        ["vlan[1].name", "vlan[1].bridge", "translator.space"]
    );
}

#[test]
fn accept_in_names_an_nftables_chain() {
    let d = one(&format!(
        "{SITE}[multicast]\naccept_in = [\"inet filter forward\", \"bridge filter forward\"]\n"
    ));
    at(&d, 4, 37, "multicast.accept_in[1]", "FAMILY TABLE CHAIN");
}

fn show(errs: &[Diagnostic]) -> String {
    errs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The issue's example: three bad keys in a section that does not deserialize, and a
/// value error in each of two sections that do. All five, each at its place.
#[test]
fn every_bad_key_and_every_value_error_in_one_run() {
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"iot\"\nbridge = \"br-0123456789abcdefghijklmnopq\"\n\
         [[multicast.route]]\nfrom = \"br-iot\"\nto = [\"eth0:1\"]\ngroup = \"239.1.0.0/16\"\n\
         [translator]\nport = 70000\nttl = 300\nidle = \"soon\"\nunicast = \"127.0.0.1:9001\"\n"
    ));
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|d| (d.line, d.col, d.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (5, 10, "vlan[0].bridge"),
            (8, 7, "multicast.route[0].to[0]"),
            (11, 8, "translator.port"),
            (12, 7, "translator.ttl"),
            (13, 8, "translator.idle"),
        ],
        "{}",
        show(&errs)
    );
}

#[test]
fn a_section_missing_a_key_still_reports_its_bad_keys() {
    let errs = all(&format!(
        "{SITE}[translator]\nport = \"x\"\nsap = 3\n[[monitor]]\nname = \"m\"\ninterface = \"br\"\ngroup = \"10.0.0.1\"\nport = 1\ndeliver = \"0.0.0.0:1\"\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "translator.unicast",
            "translator.port",
            "translator.sap",
            "monitor[0].group"
        ],
        "{}",
        show(&errs)
    );
}

/// An element that does not deserialize is left out of the value checks; the others keep
/// the indices they have in the file, and names in the failed one are not "unknown".
#[test]
fn value_checks_after_a_bad_element_name_the_file_indices() {
    let errs = all(&format!(
        "{SITE}[[vlan]]\nname = \"a\"\nbridge = 3\n[[vlan]]\nname = \"b\"\nbridge = \"br-b\"\n\
         [[vlan]]\nname = \"c\"\nbridge = \"br-b\"\n\
         [[reflector]]\nname = \"r\"\nvlans = [\"a\", \"b\"]\n"
    ));
    let got: Vec<(&str, &str)> = errs
        .iter()
        .map(|d| (d.field.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "vlan[0].bridge",
                "invalid type: integer `3`, expected a string"
            ),
            ("vlan[2].bridge", "\"br-b\" is used by vlan \"b\" too"),
        ],
        "{}",
        show(&errs)
    );
    let errs = all(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = 1\ngroup = \"239.1.1.1\"\nto = [\"b\"]\n\
         [[multicast.route]]\nfrom = \"a\"\ngroup = \"239.1.1.1\"\nto = [\"b\"]\n\
         [[multicast.route]]\nfrom = \"a\"\ngroup = \"239.1.1.1\"\nto = [\"c\"]\n"
    ));
    let d = errs.last().unwrap();
    at(
        d,
        14,
        9,
        "multicast.route[2].group",
        "multicast.route[1] has the same",
    );
}

#[test]
fn an_integer_too_large_for_toml_is_placed_and_named() {
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nmax_flows = 123456789012345678901234\n"
    ));
    at(
        &d,
        5,
        13,
        "translator.max_flows",
        "does not fit in a TOML integer",
    );
}

#[test]
fn bytes_that_are_not_utf8_are_placed_and_named() {
    let errs = parse_bytes(
        "site.toml",
        b"[site]\nname = \"lab\"\n[[vlan]]\nname = \"iot\"\nbridge = \"br-\xe9\xff\"\n",
    )
    .expect_err("not UTF-8")
    .diags;
    let got: Vec<(usize, usize, &str, &str)> = errs
        .iter()
        .map(|d| (d.line, d.col, d.field.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                5,
                14,
                "vlan[0].bridge",
                "not UTF-8: byte 0xe9 (a site file is UTF-8 text)"
            ),
            (
                5,
                15,
                "vlan[0].bridge",
                "not UTF-8: byte 0xff (a site file is UTF-8 text)"
            ),
        ],
        "{}",
        show(&errs)
    );
}

/// Placing errors is linear, and past `MAX_ERRORS` they are only counted.
#[test]
fn errors_past_the_cap_are_counted_not_printed() {
    let mut text = String::from(SITE);
    for i in 0..3 * MAX_ERRORS {
        text.push_str(&format!("x{i} = = 1\n"));
    }
    let e = parse("site.toml", &text).expect_err("invalid");
    assert_eq!(e.diags.len(), MAX_ERRORS);
    // Each of those lines holds two mistakes.
    assert_eq!(e.total(), 6 * MAX_ERRORS, "{e}");
    assert_eq!(e.omitted, 5 * MAX_ERRORS);
    assert_eq!((e.diags[0].line, e.diags[0].col), (3, 6));
    assert!(
        e.to_string()
            .ends_with("site.toml: 500 more errors not shown (the first 100 are)"),
        "{e}"
    );
}

#[test]
fn menu_url_must_parse_as_the_client_parses_it() {
    for (url, says) in [
        ("http://menu.example:eighty/", "the port \"eighty\""),
        ("http://menu.example:0/", "the port \"0\""),
        ("http://menu.example:99999/", "not an http"),
        ("ftp://menu.example/", "scheme"),
        ("http://", "not an http"),
        ("http://menu.example/a b", "space"),
        ("http://user:pw@menu.example/", "credentials"),
    ] {
        let d = one(&format!(
            "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nmenu = \"{url}\"\n"
        ));
        at(&d, 5, 8, "translator.menu", says);
    }
    for url in [
        "http://menu.example",
        "https://menu.example:8443/menu/",
        "http://[::1]:81/",
        "http://[::1]/",
    ] {
        parse(
            "site.toml",
            &format!("{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\nmenu = \"{url}\"\n"),
        )
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn ipv4_mapped_addresses_are_refused() {
    let errs = all(&format!(
        "{SITE}[multicast]\n[[multicast.join]]\non = \"br\"\ngroup = \"ff3e::1\"\nsource = \"::ffff:10.0.0.1\"\n\
         [translator]\nunicast = \"[::ffff:127.0.0.1]:9001\"\nallow = [\"fd00::/8\", \"::ffff:10.0.0.0/104\"]\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "multicast.join[0].source",
            "translator.unicast",
            "translator.allow[1]"
        ],
        "{}",
        show(&errs)
    );
    assert!(errs.iter().all(|d| d.message.contains("IPv4-mapped")));
}

#[test]
fn control_characters_in_an_interface_name() {
    let d = one(&format!(
        "{SITE}[translator]\nunicast = \"127.0.0.1:9001\"\ninterface = \"br\\u0007\"\n"
    ));
    at(&d, 5, 13, "translator.interface", "control character");
}

#[test]
fn reflector_name_too_long_for_a_host_name() {
    let vlans =
        "[[vlan]]\nname = \"a\"\nbridge = \"br-a\"\n[[vlan]]\nname = \"b\"\nbridge = \"br-b\"\n";
    let name = "r".repeat(55);
    let d = one(&format!(
        "{SITE}{vlans}[[reflector]]\nname = \"{name}\"\nvlans = [\"a\", \"b\"]\n"
    ));
    at(&d, 10, 8, "reflector[0].name", "at most 54");
    let name = "r".repeat(54);
    parse(
        "site.toml",
        &format!("{SITE}{vlans}[[reflector]]\nname = \"{name}\"\nvlans = [\"a\", \"b\"]\n"),
    )
    .unwrap();
}

#[test]
fn a_state_dir_that_is_not_dedicated_is_refused() {
    for (dir, says) in [
        ("/", "system directory"),
        ("/tmp", "system directory"),
        ("/run/appliance/../../etc", "\"..\""),
    ] {
        let d = one(&format!("[site]\nname = \"lab\"\nstate_dir = \"{dir}\"\n"));
        at(&d, 3, 13, "site.state_dir", says);
    }
}

#[test]
fn routing_errors_point_at_their_keys() {
    let errs = all(&format!(
        "{SITE}[multicast]\n[[multicast.route]]\nfrom = \"a\"\ngroup = \"239.1.1.1\"\nto = [\"b\"]\n\
         [routing]\nengine = \"frr\"\ninterfaces = [\"up0\", \"up0\"]\n\
         [[routing.rp]]\ngroup = \"232.0.0.0/8\"\naddress = \"224.0.0.1\"\n\
         [routing.mld_proxy]\nupstream = \"up0\"\ndownstream = [\"up0\"]\n"
    ));
    assert_eq!(errs.len(), 5, "{}", show(&errs));
    at(&errs[0], 4, 1, "multicast.route[0]", "FRR's pimd owns");
    at(&errs[1], 10, 22, "routing.interfaces[1]", "named twice");
    at(
        &errs[2],
        12,
        9,
        "routing.rp[0].group",
        "SSM needs no rendezvous point",
    );
    at(
        &errs[3],
        13,
        11,
        "routing.rp[0].address",
        "cannot be a rendezvous point",
    );
    at(
        &errs[4],
        16,
        15,
        "routing.mld_proxy.downstream[0]",
        "never forwards to its upstream",
    );
}

#[test]
fn frr_needs_interfaces_and_an_rp_and_static_takes_neither() {
    let errs = all(&format!("{SITE}[routing]\nengine = \"frr\"\n"));
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    assert!(errs.iter().any(|d| d.field == "routing.interfaces"));
    assert!(
        errs.iter()
            .any(|d| d.field == "routing.rp" && d.message.contains("missing"))
    );
    let d = one(&format!("{SITE}[routing]\nrp = \"10.0.0.1\"\n"));
    at(&d, 4, 6, "routing.rp", "only with engine = \"frr\"");
    let d = one(&format!("{SITE}[routing]\nrp = \"nope\"\n"));
    at(&d, 4, 6, "routing.rp", "not an IPv4 address");
}

#[test]
fn the_access_router_site_is_valid() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sites/access-router.toml"
    ))
    .unwrap();
    let site = parse("access-router.toml", &text).unwrap();
    let r = site.routing.unwrap();
    assert_eq!(r.engine, Engine::Frr);
    assert_eq!(r.rp.unwrap().ranges()[0].group.to_string(), "224.0.0.0/4");
}
