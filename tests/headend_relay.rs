//! The headend's relay (`headend::relay::Relay`) on its own, in a fresh namespace: a
//! bridge with a receiver host, the relay run on a tokio runtime in the sandbox's
//! namespace, a UDP socket playing the source. What is checked is which packets reach the
//! receiver, never how fast.

mod common;

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use appliance::headend::relay::{Counters, Output, Relay};
use appliance::headend::service::Listener;
use common::*;
use socket2::{Domain, Protocol, Socket, Type};

const G: &str = "ff3e:40:fd00::8000:1";

/// An RTP-looking packet whose last byte names it.
fn packet(name: u8) -> Vec<u8> {
    let mut p = vec![0x80, 97, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    p.push(name);
    p
}

/// Lets the relay's task run (the runtime has one thread: a yield hands it over).
async fn let_the_relay_run() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_new_output_gets_the_last_packet_at_once_but_never_one_of_an_old_source() {
    let sb = Sandbox::new();
    sb.bridge("br0");
    sb.sh("ip link set br0 type bridge mcast_snooping 0 && ip addr add fd00::1/64 dev br0 nodad");
    sb.host("h1", "br0", &["fd00::11/64"]);
    let group: Ipv6Addr = G.parse().unwrap();
    let receiver: UdpSocket = in_netns(&sb, Some("h1"), move || {
        let idx = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::new(group.into(), 5004).into()).unwrap();
        s.join_multicast_v6(&group, idx).unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    });
    in_netns(&sb, None, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let receiver = tokio::net::UdpSocket::from_std(receiver).expect("receiver");
            let next = || async {
                let mut buf = [0u8; 2048];
                let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf))
                    .await
                    .expect("no packet at the receiver within 5 s")
                    .expect("recv");
                buf[n - 1]
            };
            let (traffic, _notes) = tokio::sync::mpsc::unbounded_channel();
            let counters = Arc::new(Counters::default());
            let relay =
                Relay::start(1, group, None, counters.clone(), traffic).expect("relay start");
            let source = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = ("127.0.0.1", relay.rtp_port);
            let out = vec![
                Output::resolve(&Listener {
                    iface: "br0".into(),
                    v4: false,
                })
                .expect("br0"),
            ];
            // The source sent one packet while nobody listened, then nothing: a listener
            // that comes now still gets it (the relay held it).
            source.send_to(&packet(b'A'), to).unwrap();
            wait_until_async(|| counters.packets.load(Ordering::Relaxed) == 1).await;
            relay.set_outputs(out.clone());
            assert_eq!(next().await, b'A', "the held packet");
            // The listener goes, the source is replaced: the next listener must not get
            // the old stream's packet, only the new one's.
            relay.set_outputs(vec![]);
            let_the_relay_run().await;
            relay.source_changed();
            relay.set_outputs(out);
            let_the_relay_run().await;
            source.send_to(&packet(b'B'), to).unwrap();
            assert_eq!(next().await, b'B', "a packet of the old source was sent");
            assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        });
    });
}

/// Yields to the runtime until `cond` holds (at most 5 s).
async fn wait_until_async(cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the relay did not count the source's packet within 5 s");
}
