//! What the benches print figures with: percentiles, milliseconds, and the wait for a
//! stream's first packet.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// The `p` quantile (0.0..=1.0) of `v`, nearest rank; sorts `v`.
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// From `since` to the first datagram on `u` (which has a short read timeout); panics
/// after `within` without one.
pub fn first_packet(u: &UdpSocket, since: Instant, within: Duration) -> Duration {
    let mut buf = [0u8; 2048];
    let deadline = since + within;
    loop {
        if u.recv(&mut buf).is_ok() {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "no RTP within {within:?}");
    }
}
