//! `[routing]`: several routers in one site. IPv4 through FRR (zebra, staticd, pimd) with
//! the configuration generated here; IPv6 by RFC 4605 MLD proxying in the forwarder.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::{
    Child, Health, Mount, MountSpace, OwnedFile, OwnedPath, PARTS_USER, Program, QuerierPlan,
    RestartPolicy,
};
use crate::site::{Engine, MldProxy, QuerierMode, Routing, Rp};

/// The FRR daemons `up` runs, in start order (staticd and pimd talk to zebra).
pub const FRR_DAEMONS: &[&str] = &["zebra", "staticd", "pimd"];

/// Where Debian's `frr` package puts the daemons.
pub const FRR_BIN: &str = "/usr/lib/frr";
/// The user and group the daemons switch to (`-u`, `-g`), and the group whose members
/// may talk to their vty sockets (Debian's `frr` package makes them).
pub const FRR_USER: &str = "frr";
pub const FRR_GROUP: &str = "frr";
pub const VTY_GROUP: &str = "frrvty";
/// Where FRR keeps its sockets and pid files, its configuration, and its crash logs; the
/// mount space binds the site's own directories over them.
pub const FRR_RUN: &str = "/run/frr";
pub const FRR_ETC: &str = "/etc/frr";
pub const FRR_TMP: &str = "/var/tmp/frr";
/// The mount space the daemons and the `frr` part run in.
pub const MOUNT_SPACE: &str = "frr";
/// The `frr` part's name (and role): it pushes the configuration and answers status.
pub const PART: &str = "frr";
/// Its control socket, in the parts directory.
pub const PART_SOCKET: &str = "frr.sock";

/// What the daemons need beyond their user switch: zebra and pimd netlink, raw sockets and
/// the multicast routing socket (NET_ADMIN, NET_RAW, SYS_ADMIN); SETUID and SETGID for
/// `-u`/`-g`; DAC_OVERRIDE, CHOWN and FOWNER for their directories before they switch.
/// They drop the rest themselves once they run as `frr`.
pub const DAEMON_CAPS: &[&str] = &[
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_SYS_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_DAC_OVERRIDE",
    "CAP_CHOWN",
    "CAP_FOWNER",
];

/// Who owns the kernel's IPv4 multicast routing table (MRT_INIT: one socket per table).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Owner {
    /// FRR's pimd (`engine = "frr"`); the forwarder leaves IPv4 alone.
    Frr,
    /// The appliance's forwarder (`[[multicast.route]]`, SSDP, IPv4 joins).
    Forwarder,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoutingPlan {
    pub engine: Engine,
    /// None: nothing routes IPv4 multicast on this router.
    pub ipv4_table: Option<Ipv4Owner>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frr: Option<FrrPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mld_proxy: Option<MldProxyPlan>,
}

/// FRR for one router: its directories (bound privately over `/run/frr` and `/etc/frr`
/// for its daemons, owned by `frr`) and the configuration `vtysh` pushes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FrrPlan {
    /// `<state_dir>/frr`.
    pub dir: PathBuf,
    /// Bound over `/run/frr`: the daemons' vty sockets, pid files, `zserv.api`.
    pub run_dir: PathBuf,
    /// Bound over `/etc/frr`: `frr.conf` (`config`) and `vtysh.conf`.
    pub etc_dir: PathBuf,
    /// Bound over `/var/tmp/frr`: the daemons' crash logs.
    pub tmp_dir: PathBuf,
    /// The `frr` part's control socket.
    pub control_socket: PathBuf,
    pub daemons: Vec<String>,
    /// `ip pim` here.
    pub pim: Vec<String>,
    /// `ip igmp` here.
    pub igmp: Vec<String>,
    pub rps: Vec<Rp>,
    /// The whole `frr.conf`, pushed with `vtysh -b` at start and after a daemon restarts.
    pub config: String,
}

/// RFC 4605: the union of the downstream memberships reported upstream as a host would;
/// routes from the upstream to the downstream interfaces that want each group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MldProxyPlan {
    pub upstream: String,
    pub downstream: Vec<String>,
    /// The querier each downstream interface runs.
    pub querier: QuerierPlan,
}

/// The routing plan of a site; `forwarder_ipv4`: whether the forwarder has IPv4 work
/// (routes, SSDP, joins), which `check` refuses together with `engine = "frr"`.
pub fn plan(
    site_name: &str,
    state_dir: &std::path::Path,
    r: Option<&Routing>,
    forwarder_ipv4: bool,
) -> Option<RoutingPlan> {
    let owner_static = forwarder_ipv4.then_some(Ipv4Owner::Forwarder);
    let r = r?;
    let frr = (r.engine == Engine::Frr).then(|| {
        let dir = state_dir.join("frr");
        let pim = r.interfaces.clone();
        let igmp = r.igmp.clone().unwrap_or_else(|| r.interfaces.clone());
        let rps = r.rp.as_ref().map(|rp| rp.ranges()).unwrap_or_default();
        FrrPlan {
            run_dir: dir.join("run"),
            etc_dir: dir.join("etc"),
            tmp_dir: dir.join("tmp"),
            control_socket: state_dir.join(super::PARTS_DIR).join(PART_SOCKET),
            dir,
            daemons: FRR_DAEMONS.iter().map(|d| d.to_string()).collect(),
            config: frr_conf(site_name, &pim, &igmp, &rps),
            pim,
            igmp,
            rps,
        }
    });
    Some(RoutingPlan {
        engine: r.engine,
        ipv4_table: match r.engine {
            Engine::Frr => Some(Ipv4Owner::Frr),
            Engine::Static => owner_static,
        },
        frr,
        mld_proxy: r.mld_proxy.as_ref().map(mld_proxy),
    })
}

/// The private mounts FRR runs in: the site's directories over `/run/frr`, `/etc/frr`
/// and `/var/tmp/frr`, so several routers (or the host's own FRR) never share a socket or
/// a configuration file.
pub fn mount_space(frr: &FrrPlan) -> MountSpace {
    let dir = |path: &PathBuf, user: &str, group: &str, mode: u32| OwnedPath {
        path: path.clone(),
        user: user.into(),
        group: group.into(),
        mode,
    };
    // The part reads the configuration as a member of frrvty; the daemons own it.
    let file = |name: &str, contents: String| OwnedFile {
        path: frr.etc_dir.join(name),
        user: FRR_USER.into(),
        group: VTY_GROUP.into(),
        mode: 0o640,
        contents,
    };
    let bind = |source: &PathBuf, target: &str| Mount::Bind {
        source: source.display().to_string(),
        target: target.into(),
    };
    MountSpace {
        name: MOUNT_SPACE.into(),
        owner: "routing".into(),
        dirs: vec![
            dir(&frr.dir, "root", "root", 0o755),
            dir(&frr.run_dir, FRR_USER, FRR_GROUP, 0o755),
            dir(&frr.etc_dir, FRR_USER, VTY_GROUP, 0o750),
            dir(&frr.tmp_dir, FRR_USER, FRR_GROUP, 0o700),
        ],
        files: vec![
            file("frr.conf", frr.config.clone()),
            file("vtysh.conf", "service integrated-vtysh-config\n".into()),
        ],
        mounts: vec![
            bind(&frr.run_dir, FRR_RUN),
            bind(&frr.etc_dir, FRR_ETC),
            bind(&frr.tmp_dir, FRR_TMP),
        ],
    }
}

/// The FRR daemons and the `frr` part, as children of `up`: the daemons in the
/// foreground (the pid is the daemon's), logging to stdout (the supervisor logs each line
/// under the daemon's name), without a TCP vty; staticd and pimd after zebra; the part
/// after all three, so it pushes the configuration again whenever one restarts (a
/// restarted daemon comes back empty).
pub fn children(
    frr: &FrrPlan,
    site_file: &std::path::Path,
    state_dir: &std::path::Path,
) -> Vec<Child> {
    let mut out = vec![];
    for d in &frr.daemons {
        let argv = [
            format!("{FRR_BIN}/{d}"),
            "-u".into(),
            FRR_USER.into(),
            "-g".into(),
            FRR_GROUP.into(),
            "-A".into(),
            "127.0.0.1".into(),
            "-P".into(),
            "0".into(),
            // The default, said so the supervisor knows which socket means ready.
            "--vty_socket".into(),
            FRR_RUN.into(),
            "--log".into(),
            "stdout".into(),
        ]
        .to_vec();
        out.push(Child {
            name: d.clone(),
            program: Program::External,
            argv,
            netns: Some(MOUNT_SPACE.into()),
            caps: DAEMON_CAPS.iter().map(|c| c.to_string()).collect(),
            user: None,
            groups: vec![],
            after: if d == "zebra" {
                vec![]
            } else {
                vec!["zebra".into()]
            },
            refresh_on: vec![],
            restart: RestartPolicy::default(),
            health: Health::Running,
        });
    }
    out.push(Child {
        name: PART.into(),
        program: Program::SelfExe,
        argv: vec![
            "appliance".into(),
            PART.into(),
            site_file.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ],
        netns: Some(MOUNT_SPACE.into()),
        caps: vec![],
        user: Some(PARTS_USER.into()),
        groups: vec![VTY_GROUP.into()],
        after: frr.daemons.clone(),
        refresh_on: vec![],
        restart: RestartPolicy::default(),
        health: Health::Control {
            socket: frr.control_socket.clone(),
        },
    });
    out
}

/// The environment variable the rendered site unit sets to `system` (see
/// `units/appliance-frr.conf`): FRR's daemons are Debian's `frr.service`'s, not `up`'s.
pub const FRR_ENV: &str = "APPLIANCE_FRR";

/// The plan as `up` runs it when the system runs FRR (a rendered image: Debian's
/// `frr.service`, whose watchfrr pushes `/etc/frr/frr.conf` itself): no daemons and no
/// mount space of its own; the `frr` part runs in the host's mounts, where `/run/frr` is
/// the system's, and only observes (`--system`).
pub fn leave_frr_to_the_system(plan: &mut super::Plan) {
    let Some(frr) = plan.routing.as_ref().and_then(|r| r.frr.as_ref()) else {
        return;
    };
    let daemons = frr.daemons.clone();
    plan.children.retain(|c| !daemons.contains(&c.name));
    plan.mount_spaces.retain(|m| m.name != MOUNT_SPACE);
    for c in plan.children.iter_mut().filter(|c| c.name == PART) {
        c.netns = None;
        c.after.clear();
        c.argv.push("--system".into());
    }
}

fn mld_proxy(p: &MldProxy) -> MldProxyPlan {
    let rv = p.robustness;
    MldProxyPlan {
        upstream: p.upstream.clone(),
        downstream: p.downstream.clone(),
        querier: QuerierPlan {
            mode: QuerierMode::Auto,
            robustness: rv,
            query_interval: p.query_interval,
            query_response_interval: p.query_response_interval,
            last_listener_interval: p.last_listener_interval,
            last_listener_count: rv,
            startup_query_interval: p.query_interval / 4,
            startup_query_count: rv,
        },
    }
}

/// FRR 8.4's integrated configuration: PIM-SM with IGMPv3 towards receivers.
pub fn frr_conf(hostname: &str, pim: &[String], igmp: &[String], rps: &[Rp]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "! Generated by appliance from the site's [routing]; do not edit."
    );
    let _ = writeln!(s, "frr defaults traditional");
    let _ = writeln!(s, "hostname {hostname}");
    let _ = writeln!(s, "service integrated-vtysh-config");
    let _ = writeln!(s, "!");
    for rp in rps {
        let _ = writeln!(s, "ip pim rp {} {}", rp.address, rp.group);
    }
    let _ = writeln!(s, "!");
    let mut names: Vec<&String> = pim.iter().collect();
    for i in igmp {
        if !names.contains(&i) {
            names.push(i);
        }
    }
    for name in names {
        let _ = writeln!(s, "interface {name}");
        if pim.contains(name) {
            let _ = writeln!(s, " ip pim");
        }
        if igmp.contains(name) {
            let _ = writeln!(s, " ip igmp");
            let _ = writeln!(s, " ip igmp version 3");
        }
        let _ = writeln!(s, "exit");
        let _ = writeln!(s, "!");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frr() -> FrrPlan {
        let site: crate::site::Routing = toml::from_str(
            "engine = \"frr\"\ninterfaces = [\"up0\", \"br-lan\"]\nrp = \"10.0.0.1\"\n",
        )
        .unwrap();
        plan(
            "b",
            std::path::Path::new("/run/appliance/b"),
            Some(&site),
            false,
        )
        .unwrap()
        .frr
        .unwrap()
    }

    #[test]
    fn the_daemons_run_in_the_foreground_in_the_mount_space_and_the_part_after_them() {
        let f = frr();
        let c = children(
            &f,
            "/etc/appliance/b.toml".as_ref(),
            "/run/appliance/b".as_ref(),
        );
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["zebra", "staticd", "pimd", "frr"]);
        for d in &c[..3] {
            assert_eq!(d.netns.as_deref(), Some(MOUNT_SPACE));
            assert!(!d.argv.contains(&"-d".to_string()), "in the foreground");
            let argv = d.argv.join(" ");
            assert!(argv.contains("-u frr -g frr -A 127.0.0.1 -P 0"), "{argv}");
            assert!(
                argv.ends_with("--vty_socket /run/frr --log stdout"),
                "{argv}"
            );
            assert_eq!(
                crate::supervisor::spawn::ready_socket(d),
                Some(format!("/run/frr/{}.vty", d.name).into())
            );
        }
        assert!(c[0].after.is_empty());
        assert_eq!(c[1].after, ["zebra"]);
        assert_eq!(c[2].after, ["zebra"]);
        let part = &c[3];
        assert_eq!(part.after, ["zebra", "staticd", "pimd"]);
        assert_eq!(part.user.as_deref(), Some(crate::plan::PARTS_USER));
        assert_eq!(part.groups, [VTY_GROUP]);
        assert!(part.caps.is_empty());
        assert_eq!(
            part.health,
            Health::Control {
                socket: "/run/appliance/b/parts/frr.sock".into()
            }
        );
    }

    #[test]
    fn with_the_systems_frr_up_runs_only_the_part_and_it_only_observes() {
        let site = crate::site::Site {
            routing: Some(
                toml::from_str("engine = \"frr\"\ninterfaces = [\"up0\"]\nrp = \"10.0.0.1\"\n")
                    .unwrap(),
            ),
            ..toml::from_str("[site]\nname = \"b\"\n").unwrap()
        };
        let mut p = super::super::plan(&site, "/etc/appliance/b.toml".as_ref());
        assert_eq!(p.children.len(), 4);
        leave_frr_to_the_system(&mut p);
        assert!(p.mount_spaces.is_empty());
        let names: Vec<&str> = p.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [PART]);
        let part = &p.children[0];
        assert_eq!(part.netns, None);
        assert!(part.after.is_empty());
        assert_eq!(part.argv.last().map(String::as_str), Some("--system"));
    }

    #[test]
    fn the_mount_space_binds_the_sites_directories_over_frrs() {
        let m = mount_space(&frr());
        let binds: Vec<String> = m
            .mounts
            .iter()
            .map(|x| match x {
                Mount::Bind { source, target } => format!("{source} {target}"),
                _ => panic!("binds only"),
            })
            .collect();
        assert_eq!(
            binds,
            [
                "/run/appliance/b/frr/run /run/frr",
                "/run/appliance/b/frr/etc /etc/frr",
                "/run/appliance/b/frr/tmp /var/tmp/frr"
            ]
        );
        assert_eq!(m.dirs[0].path, std::path::Path::new("/run/appliance/b/frr"));
        let conf = m
            .files
            .iter()
            .find(|f| f.path.ends_with("frr.conf"))
            .unwrap();
        assert_eq!((conf.user.as_str(), conf.group.as_str()), ("frr", "frrvty"));
        assert!(conf.contents.contains("ip pim rp 10.0.0.1 224.0.0.0/4"));
    }

    #[test]
    fn frr_conf_has_pim_igmp_and_rps() {
        let rps = vec![Rp {
            group: "239.0.0.0/8".parse().unwrap(),
            address: "10.0.0.1".parse().unwrap(),
        }];
        let c = frr_conf(
            "b",
            &["up0".into(), "br-lan".into()],
            &["br-lan".into()],
            &rps,
        );
        assert!(c.contains("hostname b\n"));
        assert!(c.contains("ip pim rp 10.0.0.1 239.0.0.0/8\n"));
        assert!(c.contains("interface up0\n ip pim\nexit\n"));
        assert!(c.contains("interface br-lan\n ip pim\n ip igmp\n ip igmp version 3\nexit\n"));
    }
}
