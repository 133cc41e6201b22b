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
    if !v["proxy"].is_null() {
        out.push_str(&render_proxy(&v["proxy"]));
    }
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "{} entries ({} templates)\n",
        entries.len(),
        v["templates"]
    ));
    for e in &entries {
        let oifs = names(&e["oifs"]);
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

/// `{"mode":"exclude","sources":[…]}` as `EXCLUDE {…}`.
fn filter(f: &serde_json::Value) -> String {
    let sources: Vec<&str> = f["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .collect();
    format!(
        "{} {{{}}}",
        f["mode"].as_str().unwrap_or("?").to_uppercase(),
        sources.join(", ")
    )
}

/// The MLD proxy's part of a status answer: downstream groups and their last listener,
/// the upstream joins, the routes it installed.
pub fn render_proxy(p: &serde_json::Value) -> String {
    let mut out = String::new();
    let up = p["upstream"].as_str().unwrap_or("");
    out.push_str(&format!(
        "MLD proxy: upstream {up}{}\n",
        if p["upstream_ifindex"].is_null() {
            " (missing)"
        } else {
            ""
        }
    ));
    for d in p["downstream"].as_array().into_iter().flatten() {
        let querier = match (d["we_query"].as_bool(), d["querier"].as_str()) {
            (Some(true), _) => "we are the querier".to_string(),
            (_, Some(q)) => format!("querier {q}"),
            _ => "no querier".to_string(),
        };
        out.push_str(&format!(
            "  downstream {}: {}{}\n",
            d["iface"].as_str().unwrap_or(""),
            if d["listening"] == true {
                querier
            } else {
                "not listening".to_string()
            },
            d["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
        for g in d["groups"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    {} {}{}\n",
                g["group"].as_str().unwrap_or(""),
                filter(&g["filter"]),
                g["last_reporter"]
                    .as_str()
                    .map(|h| format!(", last heard from {h}"))
                    .unwrap_or_default()
            ));
        }
    }
    for j in p["joins"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  joined upstream on {up}: {} {}\n",
            j["group"].as_str().unwrap_or(""),
            filter(&j["filter"])
        ));
    }
    for e in p["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("  error: {}\n", e.as_str().unwrap_or("")));
    }
    for r in p["routes"].as_array().into_iter().flatten() {
        let oifs = names(&r["oifs"]);
        out.push_str(&format!(
            "  route ({}, {}) {} -> {}  {} pkts\n",
            r["source"].as_str().unwrap_or(""),
            r["group"].as_str().unwrap_or(""),
            r["iif"].as_str().unwrap_or(""),
            oifs.join(" "),
            r["packets"]
        ));
    }
    out
}

/// The strings of a JSON array (the output interfaces of an entry).
fn names(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_in_text() {
        let v = serde_json::json!({
            "upstream": "up0", "upstream_ifindex": 3,
            "downstream": [{"iface": "br-lan", "error": null, "listening": true,
                "querier": "fe80::1", "we_query": true,
                "groups": [{"group": "ff3e::1", "filter": {"mode": "exclude", "sources": []},
                    "last_reporter": "fe80::9"}]}],
            "joins": [{"group": "ff3e::1", "filter": {"mode": "include", "sources": ["fd00::1"]}}],
            "errors": [],
            "routes": [{"source": "fd00::1", "group": "ff3e::1", "iif": "up0",
                "oifs": ["br-lan"], "packets": 5}]
        });
        let t = render_proxy(&v);
        assert!(t.contains("MLD proxy: upstream up0\n"), "{t}");
        assert!(t.contains("downstream br-lan: we are the querier"), "{t}");
        assert!(
            t.contains("ff3e::1 EXCLUDE {}, last heard from fe80::9"),
            "{t}"
        );
        assert!(
            t.contains("joined upstream on up0: ff3e::1 INCLUDE {fd00::1}"),
            "{t}"
        );
        assert!(
            t.contains("route (fd00::1, ff3e::1) up0 -> br-lan  5 pkts"),
            "{t}"
        );
    }
}
