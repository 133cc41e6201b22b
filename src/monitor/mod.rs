//! Multicast telemetry to local daemons (`[[monitor]]`, `appliance monitor SITE`).
//!
//! Switches send syslog, SNMP traps and NTP to groups. Joining the group on the interface
//! is the whole job when the daemon listens on the wildcard address and the same port: the
//! kernel delivers the datagram to it with the switch's own source address. For another
//! address or port the plan's `monitor` nft table rewrites the destination statelessly
//! (`notrack ... ip daddr set`), which also keeps the source. Memberships are held as
//! long as this runs and re-made when an interface is re-created (netlink link events).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::firewall::{self, FirewallError};
use crate::netlink::LinkWatch;
use crate::plan::{MonitorPlan, Plan, Sysctl};
use crate::{signals, sockets};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("site {0} has no [[monitor]]: nothing to relay")]
    Nothing(String),
    #[error("{0}")]
    Firewall(#[from] FirewallError),
    #[error("setting sysctl {key} = {value}: {source}")]
    Sysctl {
        key: String,
        value: String,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// One group held joined on one interface.
pub struct Membership {
    pub monitor: MonitorPlan,
    /// The interface index it is joined on, and the socket holding it.
    joined: Option<(u32, Socket)>,
}

impl Membership {
    pub fn new(monitor: MonitorPlan) -> Membership {
        Membership {
            monitor,
            joined: None,
        }
    }

    pub fn joined_on(&self) -> Option<u32> {
        self.joined.as_ref().map(|(i, _)| *i)
    }

    /// Joins again if the interface appeared or was re-created (a new index); true then.
    pub fn refresh(&mut self) -> bool {
        let m = &self.monitor;
        let now = sockets::ifindex(&m.interface);
        if now == self.joined_on() {
            return false;
        }
        self.joined = None;
        let Some(index) = now else {
            tracing::warn!(
                "monitor {}: interface {} is gone; will join {} again when it is back",
                m.name,
                m.interface,
                m.group
            );
            return false;
        };
        match join(m.group, index) {
            Ok(s) => {
                tracing::info!(
                    "monitor {}: joined {} on {} (index {index}); datagrams to port {} go to {}",
                    m.name,
                    m.group,
                    m.interface,
                    m.port,
                    m.deliver
                );
                self.joined = Some((index, s));
                true
            }
            Err(e) => {
                tracing::warn!(
                    "monitor {}: joining {} on {}: {e}; will retry",
                    m.name,
                    m.group,
                    m.interface
                );
                false
            }
        }
    }
}

/// Its control socket in the state directory: `{"cmd":"status"}` answers [`status`].
pub const SOCKET_NAME: &str = "monitor.sock";

/// The supervisor's health check: healthy iff every group is joined (its membership
/// socket held on the interface), with each membership and why not.
pub fn status(members: &[Membership]) -> serde_json::Value {
    let missing: Vec<String> = members
        .iter()
        .filter(|m| m.joined_on().is_none())
        .map(|m| {
            format!(
                "monitor {}: {} not joined on {}",
                m.monitor.name, m.monitor.group, m.monitor.interface
            )
        })
        .collect();
    serde_json::json!({
        "healthy": missing.is_empty(),
        "why": (!missing.is_empty()).then(|| missing.join("; ")),
        "monitors": members.iter().map(|m| serde_json::json!({
            "name": m.monitor.name,
            "interface": m.monitor.interface,
            "group": m.monitor.group,
            "joined_on": m.joined_on(),
        })).collect::<Vec<_>>(),
    })
}

/// A socket that only holds a membership: unbound, it never takes a datagram from the
/// daemon's own socket.
fn join(group: IpAddr, ifindex: u32) -> io::Result<Socket> {
    let s = Socket::new(
        if group.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    sockets::join(&s, group, ifindex)?;
    Ok(s)
}

/// `/proc/sys` path of a sysctl key; the interface part of `net.ipv4.conf.IF.x` may hold dots.
fn sysctl_path(key: &str) -> String {
    for fam in ["net.ipv4.conf.", "net.ipv6.conf."] {
        if let Some(rest) = key.strip_prefix(fam)
            && let Some((iface, leaf)) = rest.rsplit_once('.')
        {
            return format!("/proc/sys/{}{iface}/{leaf}", fam.replace('.', "/"));
        }
    }
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Sets the monitor's sysctls and records the first value seen of each, to put back on
/// exit. A per-interface key of an interface not there yet is set when it appears (and
/// again when it is re-created: the kernel starts a new interface from the defaults).
fn set_sysctls(list: &[&Sysctl], old: &mut Vec<(String, String)>) -> Result<(), MonitorError> {
    for s in list {
        let path = sysctl_path(&s.key);
        let err = |source| MonitorError::Sysctl {
            key: s.key.clone(),
            value: s.value.clone(),
            source,
        };
        let before = match std::fs::read_to_string(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!("sysctl {} does not exist yet; set when it does", s.key);
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        if before.trim() == s.value {
            continue;
        }
        std::fs::write(&path, &s.value).map_err(err)?;
        if !old.iter().any(|(p, _)| *p == path) {
            old.push((path, before.trim().to_string()));
        }
    }
    Ok(())
}

/// `appliance monitor SITE`: apply, hold the joins until SIGTERM/SIGINT, undo.
pub fn main(plan: &Plan) -> Result<(), MonitorError> {
    if plan.monitors.is_empty() {
        return Err(MonitorError::Nothing(plan.site.clone()));
    }
    let stop = signals::block_termination().map_err(|source| MonitorError::Io {
        what: "creating a signalfd for SIGTERM/SIGINT".into(),
        source,
    })?;
    let links = LinkWatch::open().map_err(|source| MonitorError::Io {
        what: "opening a netlink socket for link events".into(),
        source,
    })?;
    let tables: Vec<_> = plan
        .firewall
        .iter()
        .filter(|f| f.owner == "monitor")
        .collect();
    let sysctls: Vec<&Sysctl> = plan
        .sysctls
        .iter()
        .filter(|s| s.owner == "monitor")
        .collect();
    let mut restore = vec![];
    let mut result = set_sysctls(&sysctls, &mut restore);
    for t in &tables {
        if result.is_err() {
            break;
        }
        if let Err(e) = firewall::apply(t) {
            result = Err(e.into());
            break;
        }
        tracing::info!("applied nft table {} {}", t.family, t.table);
    }
    let sock = plan.state_dir.join(SOCKET_NAME);
    let control = if result.is_ok() {
        crate::jsonl::listen(&sock)
            .map_err(|source| MonitorError::Io {
                what: format!("listening on {}", sock.display()),
                source,
            })
            .map_err(|e| result = Err(e))
            .ok()
    } else {
        None
    };
    if let Some(control) = control {
        let mut members: Vec<Membership> =
            plan.monitors.iter().cloned().map(Membership::new).collect();
        for m in &mut members {
            m.refresh();
        }
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: links.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: control.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three valid pollfds. The timeout is a safety net for missed events.
            unsafe { libc::poll(fds.as_mut_ptr(), 3, 5000) };
            if fds[2].revents != 0 {
                while let Ok((stream, _)) = control.accept() {
                    let v = status(&members);
                    let _ = crate::jsonl::answer_one(
                        stream,
                        std::time::Duration::from_millis(500),
                        |_: Result<serde_json::Value, _>| v,
                    );
                }
            }
            if fds[1].revents != 0 {
                let sig = signals::next(&stop).map_or("a signal", |s| s.as_str());
                tracing::info!("{sig}: leaving the groups and undoing the rules");
                break;
            }
            if fds[0].revents != 0 {
                links.drain();
            }
            let mut rejoined = false;
            for m in &mut members {
                rejoined |= m.refresh();
            }
            if rejoined && let Err(e) = set_sysctls(&sysctls, &mut restore) {
                tracing::warn!("{e}");
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    // Undo everything, keep going after an error, report the first.
    for t in &tables {
        if let Err(e) = firewall::remove(&t.family, &t.table) {
            tracing::warn!("{e}");
            if result.is_ok() {
                result = Err(e.into());
            }
        }
    }
    for (path, value) in restore {
        if let Err(e) = std::fs::write(&path, &value) {
            // The interface may be gone, and its sysctl with it.
            tracing::debug!("restoring {path} = {value}: {e}");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths_keep_dots_in_interface_names() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.10.route_localnet"),
            "/proc/sys/net/ipv4/conf/eth0.10/route_localnet"
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
    }
}
