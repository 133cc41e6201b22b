//! `appliance`: turns a Linux router into a multicast-first site appliance.
//!
//! `site.toml` → [`site::Site`] (validated) → [`plan::Plan`] (pure data) → apply or render.

pub mod apply;
pub mod cli;
pub mod firewall;
pub mod monitor;
pub mod mroute;
pub mod net;
pub mod ns;
pub mod plan;
pub mod render;
pub mod sap;
pub mod sched;
pub mod site;
pub mod supervisor;
pub mod translate;
