//! `appliance`: turns a Linux router into a multicast-first site appliance.
//!
//! `site.toml` → [`site::Site`] (validated) → [`plan::Plan`] (pure data) → apply or render.

pub mod cli;
pub mod firewall;
pub mod monitor;
pub mod mroute;
pub mod plan;
pub mod sap;
pub mod site;
pub mod translate;
