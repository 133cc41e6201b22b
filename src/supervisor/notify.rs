//! sd_notify: readiness and status lines to systemd, when it asked for them.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `STATUS=…`) to `$NOTIFY_SOCKET`; nothing when it is not set.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::warn!("notifying systemd at {}: {e}", path.to_string_lossy());
    }
}
