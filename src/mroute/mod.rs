//! Multicast forwarding between interfaces on the kernel's multicast routing API, IPv4
//! and IPv6: a native smcroute. Static (S,G) routes are installed at start; templates
//! ((*,G), group prefixes) are resolved on the kernel's upcalls; a control socket answers
//! `status` and `reload`.

pub mod config;
pub mod control;
pub mod forwarder;
pub mod kernel;
pub mod proxy;
pub mod run;
pub mod smcroute;
pub mod sys;

use std::path::PathBuf;

pub use sys::Family;

/// Where `appliance mroute --smcroute-conf` keeps its control socket unless told.
pub const SMCROUTE_STATE_DIR: &str = "/run/appliance/smcroute";
/// The control socket's name under the state directory.
pub const SOCKET_NAME: &str = "mroute.sock";

#[derive(Debug, thiserror::Error)]
pub enum MrouteError {
    #[error("{0}")]
    Load(String),
    #[error(
        "taking the kernel's {family} multicast routing API (table {}): EADDRINUSE: another \
         multicast router (smcroute, pimd, igmpproxy, another appliance mroute) holds it in \
         this network namespace; stop it first",
        table.map_or("default".to_string(), |t| t.to_string())
    )]
    InUse { family: Family, table: Option<u32> },
    #[error("taking the kernel's {family} multicast routing API: {source}")]
    Init {
        family: Family,
        source: std::io::Error,
    },
    #[error(
        "the routes name {} {family} interfaces ({}), but the kernel has {} {}s at most",
        names.len(), names.join(" "), kernel::MAXVIFS, family.vif()
    )]
    TooManyVifs { family: Family, names: Vec<String> },
    #[error("{op}: {source}")]
    Vif { op: String, source: std::io::Error },
    #[error("{op}: {source}")]
    Mfc { op: String, source: std::io::Error },
    #[error("reading upcalls from the {family} routing socket: {source}")]
    Upcall {
        family: Family,
        source: std::io::Error,
    },
    #[error(
        "the routing table changed from {} to {}: restart the forwarder to move tables",
        from.map_or("default".into(), |t| t.to_string()),
        to.map_or("default".into(), |t| t.to_string())
    )]
    TableChanged { from: Option<u32>, to: Option<u32> },
    #[error("{op} {}: {source}", path.display())]
    Control {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error("setting multicast snooping of bridge {bridge} to {value}: {msg}")]
    Snooping {
        bridge: String,
        value: bool,
        msg: String,
    },
    #[error("{op}: {source}")]
    Proxy { op: String, source: std::io::Error },
    #[error("{op}: {source}")]
    Signal {
        op: &'static str,
        source: std::io::Error,
    },
}

/// What `appliance mroute` is asked to do: serve a source, or ask the running forwarder.
#[derive(Debug)]
pub struct Invocation {
    /// The site or smcroute.conf served (and where its control socket lives).
    pub source: run::Source,
    /// Ask the running forwarder this instead of starting one.
    pub ask: Option<control::Request>,
    /// Print a status answer as JSON.
    pub json: bool,
    /// Limits on learned entries and upcalls.
    pub limits: forwarder::Limits,
}

/// `appliance mroute (SITE | --smcroute-conf FILE) [--status [--json] | --reload]`.
pub fn main(inv: Invocation) -> std::process::ExitCode {
    use crate::exit::{EXIT_FAILED, EXIT_INVALID, EXIT_NOT_RUNNING};
    use std::process::ExitCode;
    let Invocation {
        source,
        ask,
        json,
        limits,
    } = inv;
    if let Some(req) = ask {
        let answer = source
            .socket()
            .and_then(|sock| control::request(&sock, &req));
        return match answer {
            Ok(v) if v["ok"] == true => {
                if req == control::Request::Status && !json {
                    print!("{}", control::render(&v));
                } else {
                    println!("{v}");
                }
                ExitCode::SUCCESS
            }
            Ok(v) => {
                eprintln!(
                    "appliance mroute: {}",
                    v["error"].as_str().unwrap_or("failed")
                );
                ExitCode::from(EXIT_FAILED)
            }
            Err(e) => {
                eprintln!("appliance mroute: {e}");
                ExitCode::from(EXIT_NOT_RUNNING)
            }
        };
    }
    match run::serve(source, limits) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ MrouteError::Load(_)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("appliance mroute: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
