//! The command line of the contract (docs/contract.md): every subcommand and its flags.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::mroute;
use crate::plan;
use crate::site;
use crate::supervisor;
use crate::translate;

pub use crate::exit::{EXIT_INVALID, EXIT_NOT_BUILT};

#[derive(Debug, Parser)]
#[command(
    name = "appliance",
    version,
    about = "A multicast-first site appliance for a Linux router",
    long_about = "Reads one site description (site.toml) and makes the site real: VLAN \
                  namespaces with private dbus and avahi, mDNS reflectors, multicast \
                  forwarding between bridges, a unicast-to-multicast translator, an \
                  on-demand headend and monitoring over multicast."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bring the site up and supervise it in the foreground; SIGTERM/SIGINT tear it down.
    Up {
        site: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// How long IPv6 duplicate address detection may take ("10s", "500ms") before an
        /// address still tentative keeps the site unhealthy and READY=1 back (the kernel's
        /// defaults take 1-2 s; a link with more `dad_transmits` needs longer).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = site::duration::parse)]
        dad_wait: std::time::Duration,
    },
    /// Remove everything `up` made, also after a crash.
    Down {
        site: PathBuf,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Validate a site file; print every error as FILE:LINE:COL: FIELD: why. Touches nothing.
    Check { site: PathBuf },
    /// Print every object `up` would create.
    Plan {
        site: PathBuf,
        /// Print the plan as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running site how it is: exit 0 healthy, 1 something unhealthy, 3 no site running.
    Status {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Pin the site's network namespaces under /run/netns, empty (`up` finds and fills
    /// them). appliance@.service runs it before `up`, in PID 1's mount namespace, where
    /// systemd-nspawn@ units find the pins.
    Pin { site: PathBuf },
    /// Write the site as systemd units, nspawn files and /etc overlays.
    Render {
        site: PathBuf,
        #[command(flatten)]
        target: RenderTarget,
    },
    /// List the mDNS services seen in each VLAN namespace.
    Services {
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Unicast-to-multicast translator; a drop-in for the TreeDN translator.
    Translate(TranslateArgs),
    /// The on-demand headend alone.
    Headend {
        site: PathBuf,
        /// The state dir: its control socket (headend.sock) and kept SDPs live in its parts/;
        /// default the site's.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// The multicast forwarder alone, from a site or an smcroute.conf.
    Mroute(MrouteArgs),
    /// FRR's configuration push and health (run by `up` in FRR's mount space).
    Frr {
        site: PathBuf,
        /// The state dir: FRR's directories are its frr/, the control socket (frr.sock) is
        /// in its parts/; default the site's.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// FRR is the system's (frr.service, whose watchfrr pushes the configuration):
        /// only observe.
        #[arg(long)]
        system: bool,
    },
    /// The monitoring relay alone.
    Monitor {
        site: PathBuf,
        /// Where its control socket (monitor.sock) lives; default the site's state dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RenderTarget {
    /// Write units/, nspawn/, overlays/ under this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write into an image root at the paths systemd reads them from.
    #[arg(long)]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MrouteArgs {
    /// A site file whose [multicast] section is served.
    #[arg(
        required_unless_present = "smcroute_conf",
        conflicts_with = "smcroute_conf"
    )]
    pub site: Option<PathBuf>,
    /// An smcroute.conf (phyint, mroute, mgroup, include).
    #[arg(long)]
    pub smcroute_conf: Option<PathBuf>,
    /// Where the control socket (mroute.sock) lives: default the site's state dir, or
    /// /run/appliance/smcroute with --smcroute-conf.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Ask the running forwarder for its VIFs and entries instead of starting one.
    #[arg(long)]
    pub status: bool,
    /// With --status: print the answer as JSON.
    #[arg(long, requires = "status")]
    pub json: bool,
    /// Ask the running forwarder to re-read its configuration (like SIGHUP).
    #[arg(long, conflicts_with = "status")]
    pub reload: bool,
    /// Most learned and stop entries per family.
    #[arg(long, default_value_t = mroute::forwarder::MAX_ENTRIES)]
    pub max_entries: usize,
    /// Most learned and stop entries one input interface may hold; default: --max-entries
    /// divided by the number of interfaces, so one VLAN cannot take the others' share.
    #[arg(long)]
    pub max_entries_per_interface: Option<usize>,
    /// Upcalls (new (S,G)s) one input interface may have installed per second.
    #[arg(long, default_value_t = 1000)]
    pub upcalls_per_second: u32,
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// Address to receive unicast on. Default: that of the interface holding the default route.
    #[arg(long)]
    pub unicast_nif_ip: Option<IpAddr>,
    #[arg(long, default_value_t = 9001)]
    pub unicast_port: u16,
    /// Groups are picked at random from here.
    #[arg(long, default_value = "232.0.0.0/8")]
    pub multicast_addr_space: IpNet,
    #[arg(long, default_value_t = 9002)]
    pub multicast_port: u16,
    /// Interface the multicast leaves by.
    #[arg(long)]
    pub multicast_interface: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub ttl: u8,
    /// A flow silent this long frees its group.
    #[arg(long, default_value = "60s", value_parser = site::duration::parse)]
    pub idle: std::time::Duration,
    /// Source prefixes allowed to send (repeat); default: anyone.
    #[arg(long)]
    pub allow: Vec<IpNet>,
    #[arg(long, default_value_t = 10_000)]
    pub max_flows: u32,
    /// New flows one source address may open per second.
    #[arg(long, default_value_t = 10)]
    pub new_flows_per_second: u32,
    /// New flows all source addresses together may open per second.
    #[arg(long, default_value_t = 100)]
    pub new_flows_total_per_second: u32,
    /// Announce (SAP) and register (Menu) a new flow only once it has lived this long.
    #[arg(long, default_value = "1s", value_parser = site::duration::parse)]
    pub announce_after: std::time::Duration,
    /// Do not announce flows with SAP.
    #[arg(long)]
    pub no_sap: bool,
    /// Re-announce every flow this often; default: RFC 2974's (at least 300 s).
    #[arg(long, value_parser = site::duration::parse)]
    pub sap_interval: Option<std::time::Duration>,
    /// Base URL of a Multicast Menu to register flows with.
    #[arg(long)]
    pub menu: Option<String>,
    /// Where the flow-to-group map survives restarts.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// A unix socket to answer `{"cmd":"status"}` on (the supervisor's health check).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { site } => check(&site),
        Command::Plan { site, json } => print_plan(&site, json),
        Command::Up {
            site,
            state_dir,
            dad_wait,
        } => supervisor::commands::up(&site, state_dir, dad_wait),
        Command::Down { site, state_dir } => supervisor::commands::down(&site, state_dir),
        Command::Status { state_dir, json } => supervisor::commands::status(state_dir, json),
        Command::Services { state_dir } => supervisor::commands::services(state_dir),
        Command::Render { site, target } => crate::render::cli::run(&site, target.out, target.root),
        Command::Pin { site } => crate::render::cli::pin(&site),
        Command::Mroute(args) => mroute(args),
        Command::Translate(args) => translate(&args),
        Command::Monitor { site, state_dir } => monitor(&site, state_dir),
        Command::Headend { site, state_dir } => headend(&site, state_dir),
        Command::Frr {
            site,
            state_dir,
            system,
        } => frr(&site, state_dir, system),
    }
}

impl TranslateArgs {
    /// The translator's configuration from its flags; the unicast address defaults to that
    /// of the interface holding the default route.
    pub fn config(&self) -> Result<translate::Config, translate::TranslateError> {
        let ip = match self.unicast_nif_ip {
            Some(ip) => ip,
            None => translate::default_unicast_ip()?,
        };
        Ok(translate::Config {
            unicast: std::net::SocketAddr::new(ip, self.unicast_port),
            space: self.multicast_addr_space.trunc(),
            port: self.multicast_port,
            interface: self.multicast_interface.clone(),
            ttl: self.ttl,
            idle: self.idle,
            allow: self.allow.clone(),
            max_flows: self.max_flows,
            new_flows_per_sec: self.new_flows_per_second,
            new_flows_total_per_sec: self.new_flows_total_per_second,
            announce_after: self.announce_after,
            sap: !self.no_sap,
            sap_interval: self.sap_interval,
            menu: self.menu.clone(),
            state_file: self.state_file.clone(),
            control_socket: self.control_socket.clone(),
            batch: 64,
        })
    }
}

fn translate(args: &TranslateArgs) -> ExitCode {
    match args.config().and_then(translate::main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appliance translate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Maps the flags of `appliance mroute` onto what the forwarder is asked to do.
fn mroute(args: MrouteArgs) -> ExitCode {
    let source = match (args.site, args.smcroute_conf) {
        (Some(path), _) => mroute::run::Source::Site {
            path,
            state_dir: args.state_dir,
        },
        (None, Some(file)) => mroute::run::Source::Smcroute {
            file,
            state_dir: args
                .state_dir
                .unwrap_or_else(|| PathBuf::from(mroute::SMCROUTE_STATE_DIR)),
            cache: Default::default(),
        },
        (None, None) => unreachable!("clap requires one of them"),
    };
    let ask = if args.status {
        Some(mroute::control::Request::Status)
    } else if args.reload {
        Some(mroute::control::Request::Reload)
    } else {
        None
    };
    mroute::main(mroute::Invocation {
        source,
        ask,
        json: args.json,
        limits: mroute::forwarder::Limits {
            max_entries: args.max_entries,
            per_interface: args.max_entries_per_interface,
            upcalls_per_sec: args.upcalls_per_second,
        },
    })
}

fn headend(path: &std::path::Path, state_dir: Option<PathBuf>) -> ExitCode {
    let loaded = match site::load(path) {
        Ok(l) => l,
        Err(errors) => return invalid(&errors),
    };
    let site = loaded.site.with_state_dir(state_dir);
    let p = plan::plan(&site, &loaded.path);
    let Some(h) = p.headend else {
        eprintln!(
            "appliance headend: {} has no [headend] section; nothing to do",
            path.display()
        );
        return ExitCode::from(EXIT_INVALID);
    };
    match crate::headend::main(h) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appliance headend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn frr(path: &std::path::Path, state_dir: Option<PathBuf>, system: bool) -> ExitCode {
    let loaded = match site::load(path) {
        Ok(l) => l,
        Err(errors) => return invalid(&errors),
    };
    let site = loaded.site.with_state_dir(state_dir);
    let p = plan::plan(&site, &loaded.path);
    let Some(f) = p.routing.and_then(|r| r.frr) else {
        eprintln!(
            "appliance frr: {} has no [routing] with engine = \"frr\"; nothing to do",
            path.display()
        );
        return ExitCode::from(EXIT_INVALID);
    };
    match crate::frr::main(&f, system) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appliance frr: {e}");
            ExitCode::FAILURE
        }
    }
}

fn monitor(path: &std::path::Path, state_dir: Option<PathBuf>) -> ExitCode {
    let loaded = match site::load(path) {
        Ok(l) => l,
        Err(errors) => return invalid(&errors),
    };
    let site = loaded.site.with_state_dir(state_dir);
    let p = plan::plan(&site, &loaded.path);
    match crate::monitor::main(&p) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("appliance monitor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match site::load(path) {
        Ok(loaded) => {
            println!("{}: valid", path.display());
            // Valid but worth knowing: a warning line, still exit 0.
            if let Some(t) = &loaded.site.translator
                && let Some(w) =
                    translate::open_to_anyone(t.unicast, t.allow.as_deref().unwrap_or_default())
            {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => invalid(&errors),
    }
}

fn print_plan(path: &std::path::Path, json: bool) -> ExitCode {
    match site::load(path) {
        Ok(loaded) => {
            let p = plan::plan(&loaded.site, &loaded.path);
            if json {
                println!("{}", p.to_json());
            } else {
                print!("{p}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => invalid(&errors),
    }
}

fn invalid(errors: &site::SiteErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.total();
    eprintln!("{n} error{}", if n == 1 { "" } else { "s" });
    ExitCode::from(EXIT_INVALID)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The roles the supervisor may start (`spawn::ROLES`) are this binary's subcommands,
    /// so a part it would call missing is truly missing.
    #[test]
    fn every_role_the_supervisor_starts_is_a_subcommand() {
        for role in supervisor::spawn::ROLES {
            let e = Cli::try_parse_from(["appliance", role, "--help"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{role}: {e}");
        }
        let e = Cli::try_parse_from(["appliance", "no-such-part", "--help"]).unwrap_err();
        assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn dad_wait_is_a_duration_and_defaults_to_ten_seconds() {
        use std::time::Duration;
        let wait = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Up { dad_wait, .. }) => Ok(dad_wait),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            wait(&["appliance", "up", "s.toml"]),
            Ok(supervisor::DAD_WAIT)
        );
        assert_eq!(
            wait(&["appliance", "up", "s.toml", "--dad-wait", "500ms"]),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            wait(&["appliance", "up", "s.toml", "--dad-wait", "0s"]),
            Ok(Duration::ZERO)
        );
        for bad in ["-1s", "ten", "10 parsecs"] {
            let e = wait(&["appliance", "up", "s.toml", &format!("--dad-wait={bad}")]).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }
}
