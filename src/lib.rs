//! `appliance`: turns a Linux router into a multicast-first site appliance.
//!
//! `site.toml` → [`site::Site`] (validated) → [`plan::Plan`] (pure data) → apply or render.

pub mod apply;
pub mod cli;
pub mod exit;
pub mod firewall;
pub mod frr;
pub mod headend;
pub mod jsonl;
pub mod mac;
pub mod monitor;
pub mod mroute;
pub mod names;
pub mod netlink;
pub mod ns;
pub mod plan;
pub mod printable;
pub mod render;
pub mod sap;
pub mod sched;
pub mod signals;
pub mod site;
pub mod sockets;
pub mod supervisor;
pub mod translate;
