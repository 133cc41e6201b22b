//! The appliance's nftables tables against the real `nft`, as root, each test in a sandbox
//! of its own: the loopback that `route_localnet` opens stays closed to the LAN, and the
//! tables come back after an operator's `nft flush ruleset`.

mod common;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Background, Sandbox, require_program, udp_in, wait_until};

const T: Duration = Duration::from_secs(15);

/// A monitor on br-mgmt handing 234.192.168.2:162 to 127.0.0.1:1162 (so the plan sets
/// route_localnet on br-mgmt).
fn site(sb: &Sandbox) -> std::path::PathBuf {
    sb.write(
        "site.toml",
        &format!(
            r#"
[site]
name = "mon"
state_dir = "{}"

[[monitor]]
name = "traps"
interface = "br-mgmt"
group = "234.192.168.2"
port = 162
deliver = "127.0.0.1:1162"
"#,
            sb.path("state").display()
        ),
    )
}

/// The router (the sandbox) on br-mgmt, and a LAN host `lan` on it that routes
/// 127.0.0.0/8 to the router instead of its own loopback: what a hostile LAN host can do.
fn lab() -> Sandbox {
    let sb = Sandbox::new();
    sb.bridge("br-mgmt");
    sb.sh("ip addr add 10.9.0.1/24 dev br-mgmt");
    sb.host("lan", "br-mgmt", &["10.9.0.2/24"]);
    sb.sh("ip -n lan route add default via 10.9.0.1\n\
         ip -n lan route del table local 127.0.0.0/8 dev lo\n\
         ip -n lan route del table local 127.0.0.1 dev lo\n\
         ip netns exec lan sh -c 'echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet'\n\
         ip -n lan route add 127.0.0.0/8 via 10.9.0.1 dev eth0");
    sb
}

fn monitor(sb: &Sandbox) -> Background {
    let path = site(sb);
    let mut c = sb.appliance();
    c.arg("monitor").arg(&path).env("APPLIANCE_LOG", "info");
    let mut bg = Background::spawn(sb, "monitor", c);
    bg.wait_for("monitor traps: joined 234.192.168.2", T);
    bg
}

/// Packets the loopback guard of br-mgmt dropped, from its counter.
fn guard_dropped(sb: &Sandbox) -> u64 {
    let out = sb.try_sh("nft -j list table inet appliance-mon-monitor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .filter(|e| e.iter().any(|x| x.get("drop").is_some()))
        .flat_map(|e| e.iter().filter_map(|x| x["counter"]["packets"].as_u64()))
        .sum()
}

#[test]
fn a_lan_host_cannot_reach_loopback_services_but_the_monitor_still_delivers() {
    require_program("nft");
    let sb = lab();
    // The router's loopback-bound services, and the daemon the monitor delivers to.
    let udp_service = udp_in(&sb, None, "127.0.0.1:9001");
    udp_service.set_nonblocking(true).unwrap();
    let tcp_service: TcpListener =
        sb.in_netns(None, || TcpListener::bind("127.0.0.1:9002").unwrap());
    let daemon = udp_in(&sb, None, "127.0.0.1:1162");
    daemon
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _mon = monitor(&sb);
    assert_eq!(
        sb.sh("cat /proc/sys/net/ipv4/conf/br-mgmt/route_localnet")
            .trim(),
        "1"
    );
    // The LAN host's sockets: a UDP one, and a TCP connect to 127.0.0.1:9002 whose SYNs
    // keep being retried in the background.
    let lan_udp = sb.in_netns(Some("lan"), || UdpSocket::bind("0.0.0.0:0").unwrap());
    let _connecting = sb.in_netns(Some("lan"), || {
        std::thread::spawn(|| TcpStream::connect_timeout(&"127.0.0.1:9002".parse().unwrap(), T))
    });
    // The monitor's flow still arrives at 127.0.0.1:1162, from the LAN host itself.
    let mut buf = [0u8; 64];
    let from = wait_until("the monitor to deliver the LAN host's datagram", T, || {
        lan_udp.send_to(b"to 9001", "127.0.0.1:9001").unwrap();
        lan_udp.send_to(b"trap", "234.192.168.2:162").unwrap();
        match daemon.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == b"trap" => Some(from),
            _ => None,
        }
    });
    assert_eq!(from.ip().to_string(), "10.9.0.2");
    // The datagrams to 9001 went the same way before the trap: none reached the service.
    match udp_service.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a LAN host reached 127.0.0.1:9001 on the router: {other:?}"),
    }
    // The guard counted them and the SYNs to 9002: dropped, and no half-open connection.
    wait_until(
        "the loopback guard to drop the LAN host's packets",
        T,
        || {
            lan_udp.send_to(b"to 9001", "127.0.0.1:9001").unwrap();
            (guard_dropped(&sb) >= 3).then_some(())
        },
    );
    let half_open = sb.sh("ss -Htn state syn-recv '( sport = :9002 )'");
    assert!(
        half_open.trim().is_empty(),
        "a LAN host's SYN reached 127.0.0.1:9002 on the router: {half_open}"
    );
    tcp_service.set_nonblocking(true).unwrap();
    assert!(tcp_service.accept().is_err());
}

#[test]
fn the_monitor_table_comes_back_after_an_operator_flushes_the_ruleset() {
    require_program("nft");
    let sb = lab();
    let mut mon = monitor(&sb);
    let has_table = |sb: &Sandbox| {
        sb.try_sh("nft list table inet appliance-mon-monitor")
            .status
            .success()
    };
    wait_until("the monitor's table", T, || has_table(&sb).then_some(()));
    // What `systemctl reload nftables` does first.
    sb.sh("nft flush ruleset");
    wait_until("the monitor's table to be applied again", T, || {
        has_table(&sb).then_some(())
    });
    mon.wait_for(
        "nftables table inet appliance-mon-monitor was removed (nft flush ruleset?): applied it again",
        T,
    );
    let listed = sb.sh("nft list table inet appliance-mon-monitor");
    assert!(listed.contains("ip daddr set 127.0.0.1"), "{listed}");
    assert!(listed.contains("127.0.0.0/8"), "{listed}");
    // Once the monitor stops, the table goes and stays gone.
    let st = mon.signal(15);
    assert!(st.success(), "{st}\n{}", mon.logs());
    assert!(!has_table(&sb), "the table outlived the monitor");
}
