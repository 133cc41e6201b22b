//! The forwarder's control socket: one JSON request line in, one JSON answer line out.
//! `{"cmd":"status"}` answers VIFs and every (S,G) entry with counters and origin;
//! `{"cmd":"reload"}` re-reads the configuration and applies only the difference.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MrouteError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Reload,
}

/// Sends one request and returns the answer (`{"ok":true,…}` or `{"ok":false,"error":…}`).
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value, MrouteError> {
    crate::jsonl::request(socket, req, Duration::from_secs(30)).map_err(|e| MrouteError::Control {
        op: e.op,
        path: socket.to_path_buf(),
        source: e.source,
    })
}

/// A human view of a status answer, for `appliance mroute --status`.
pub fn render(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let table = v["table"]
        .as_u64()
        .map_or("default".into(), |t| t.to_string());
    out.push_str(&format!(
        "multicast routing table {table}, learned entries expire after {}\n",
        v["expire"].as_str().unwrap_or("?")
    ));
    for vif in v["vifs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {:>2} {:<16} ifindex {:<4} threshold {}\n",
            if vif["family"] == "ipv4" {
                "VIF"
            } else {
                "MIF"
            },
            vif["vif"].as_u64().unwrap_or(0),
            vif["name"].as_str().unwrap_or(""),
            vif["ifindex"].as_u64().unwrap_or(0),
            vif["threshold"]
        ));
    }
    for j in v["joins"].as_array().into_iter().flatten() {
        let what = match j["source"].as_str() {
            Some(s) => format!("({s},{})", j["group"].as_str().unwrap_or("")),
            None => j["group"].as_str().unwrap_or("").to_string(),
        };
        out.push_str(&format!(
            "  joined {what} on {}\n",
            j["on"].as_str().unwrap_or("")
        ));
    }
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "{} entries ({} templates)\n",
        entries.len(),
        v["templates"]
    ));
    for e in &entries {
        let oifs: Vec<&str> = e["oifs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
            .collect();
        out.push_str(&format!(
            "  ({}, {}) {} -> {}  {} pkts {} bytes  {} [{}]\n",
            e["source"].as_str().unwrap_or(""),
            e["group"].as_str().unwrap_or(""),
            e["iif"].as_str().unwrap_or(""),
            if oifs.is_empty() {
                "(stop)".to_string()
            } else {
                oifs.join(" ")
            },
            e["packets"],
            e["bytes"],
            e["origin"].as_str().unwrap_or(""),
            e["why"].as_str().unwrap_or("")
        ));
    }
    out
}
