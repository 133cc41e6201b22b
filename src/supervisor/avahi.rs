//! Talks to a VLAN's avahi over its private bus (zbus): its state, and the services it sees.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use zbus::OwnedObjectPath;
use zbus::{Connection, MatchRule, MessageStream};

const AVAHI: &str = "org.freedesktop.Avahi";
const SERVER: &str = "org.freedesktop.Avahi.Server";
/// `AVAHI_SERVER_RUNNING`.
pub const RUNNING: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum AvahiError {
    #[error("{op} over {bus}: {source}")]
    Bus {
        op: &'static str,
        bus: String,
        source: zbus::Error,
    },
    #[error("{op} over {bus}: no answer within {within:?}")]
    Timeout {
        op: &'static str,
        bus: String,
        within: Duration,
    },
}

/// The private bus of an avahi, reached through its own root.
pub fn bus_of(pid: u32, socket: &str) -> String {
    format!("unix:path=/proc/{pid}/root{socket}")
}

async fn connect(bus: &str) -> Result<Connection, AvahiError> {
    zbus::connection::Builder::address(bus)
        .build()
        .await
        .map_err(|source| AvahiError::Bus {
            op: "connecting",
            bus: bus.into(),
            source,
        })
}

/// `org.freedesktop.Avahi.Server.GetState` (2 = running).
pub async fn state(bus: &str, within: Duration) -> Result<i32, AvahiError> {
    let work = async {
        let conn = connect(bus).await?;
        let err = |source| AvahiError::Bus {
            op: "calling GetState",
            bus: bus.into(),
            source,
        };
        let reply = conn
            .call_method(Some(AVAHI), "/", Some(SERVER), "GetState", &())
            .await
            .map_err(err)?;
        reply.body().deserialize::<i32>().map_err(err)
    };
    tokio::time::timeout(within, work)
        .await
        .map_err(|_| AvahiError::Timeout {
            op: "calling GetState",
            bus: bus.into(),
            within,
        })?
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Service {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub domain: String,
    /// "ipv4" or "ipv6".
    pub protocol: String,
}

/// Every service the avahi sees: browse all types, then each type, until avahi says
/// "all for now" (or `within` passes).
pub async fn services(bus: &str, within: Duration) -> Result<Vec<Service>, AvahiError> {
    let conn = connect(bus).await?;
    let err = |op: &'static str| {
        let bus = bus.to_string();
        move |source| AvahiError::Bus { op, bus, source }
    };
    // Listen before creating browsers: avahi may signal before we could subscribe to a path.
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .build()
        .map_err(err("building a match rule"))?;
    let mut stream = MessageStream::for_match_rule(rule, &conn, None)
        .await
        .map_err(err("subscribing to signals"))?;
    let reply = conn
        .call_method(
            Some(AVAHI),
            "/",
            Some(SERVER),
            "ServiceTypeBrowserNew",
            &(-1i32, -1i32, "local", 0u32),
        )
        .await
        .map_err(err("calling ServiceTypeBrowserNew"))?;
    let types_path: OwnedObjectPath = reply
        .body()
        .deserialize()
        .map_err(err("reading ServiceTypeBrowserNew"))?;
    let mut types_done = false;
    let mut seen_types = HashSet::new();
    let mut pending: HashSet<String> = HashSet::new();
    // A browser may say "all for now" before its path is known here.
    let mut finished: HashSet<String> = HashSet::new();
    let mut found = BTreeSet::new();
    let collect = async {
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            let h = msg.header();
            let (Some(path), Some(member)) = (h.path(), h.member()) else {
                continue;
            };
            let path = path.to_string();
            let member = member.to_string();
            if path == types_path.as_str() {
                match member.as_str() {
                    "ItemNew" => {
                        if let Ok((_, _, kind, domain, _)) =
                            msg.body().deserialize::<(i32, i32, String, String, u32)>()
                            && seen_types.insert(kind.clone())
                        {
                            let r = conn
                                .call_method(
                                    Some(AVAHI),
                                    "/",
                                    Some(SERVER),
                                    "ServiceBrowserNew",
                                    &(-1i32, -1i32, kind.as_str(), domain.as_str(), 0u32),
                                )
                                .await;
                            if let Ok(r) = r
                                && let Ok(p) = r.body().deserialize::<OwnedObjectPath>()
                                && !finished.contains(p.as_str())
                            {
                                pending.insert(p.to_string());
                            }
                        }
                    }
                    "AllForNow" | "Failure" => types_done = true,
                    _ => {}
                }
            } else {
                match member.as_str() {
                    "ItemNew" => {
                        if let Ok((_, proto, name, kind, domain, _)) =
                            msg.body()
                                .deserialize::<(i32, i32, String, String, String, u32)>()
                        {
                            found.insert(Service {
                                name,
                                kind,
                                domain,
                                protocol: if proto == 1 { "ipv6" } else { "ipv4" }.into(),
                            });
                        }
                    }
                    "AllForNow" | "Failure" => {
                        pending.remove(&path);
                        finished.insert(path);
                    }
                    _ => {}
                }
            }
            if types_done && pending.is_empty() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, collect).await;
    Ok(found.into_iter().collect())
}
