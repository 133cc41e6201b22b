//! Walks the plan against the live system: bridges, namespaces with their private mounts,
//! veths with MACs and addresses. `build` records every object in the state directory
//! before making it; `teardown` removes what the plan names and what the record lists,
//! keeps going after errors and reports them all.

pub mod host;
mod owned;
pub mod record;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::info;

use crate::netlink::{self, NetError, Netlink};
use crate::ns::{self, NsError};
use crate::plan::{Mac, MacSpec, Plan};
pub use record::Record;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "interface {} is missing (named by {}); create it (a bridge: or set create_bridges = true); nothing was changed",
        .0.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>().join(", "),
        .0.iter().map(|(_, u)| u.as_str()).collect::<Vec<_>>().join("; ")
    )]
    MissingBridges(Vec<(String, String)>),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Ns(#[from] NsError),
    #[error("{0}")]
    Host(String),
    #[error("recording state in {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The namespaces `build` made or found, held open.
pub struct Space {
    pub net: OwnedFd,
    pub mnt: OwnedFd,
    pub uts: OwnedFd,
}

pub struct Built {
    pub spaces: HashMap<String, Space>,
}

fn save(rec: &Record, plan: &Plan) -> Result<(), ApplyError> {
    rec.save(&plan.state_dir)
        .map_err(|source| ApplyError::Record {
            path: Record::path(&plan.state_dir),
            source,
        })
}

/// Makes the plan's bridges, namespaces and veths, recording each in `rec` first.
pub async fn build(plan: &Plan, rec: &mut Record) -> Result<Built, ApplyError> {
    let host = Netlink::host()?;
    build_bridges(&host, plan, rec).await?;
    host::set(plan, rec)?;
    for fw in &plan.firewall {
        Record::add(&mut rec.tables, format!("{} {}", fw.family, fw.table));
    }
    save(rec, plan)?;
    let mut spaces = HashMap::new();
    for n in &plan.namespaces {
        spaces.insert(n.name.clone(), build_namespace(n, plan, rec).await?);
    }
    for m in &plan.mount_spaces {
        spaces.insert(m.name.clone(), build_mount_space(m, plan, rec)?);
    }
    for v in &plan.veths {
        let space = spaces
            .get(&v.netns)
            .expect("the plan names only its own namespaces");
        build_veth(&host, v, space, plan, rec).await?;
    }
    Ok(Built { spaces })
}

/// Checks the bridges the plan needs: makes the missing ones it may create, and refuses
/// (naming them all, before making anything) when others are missing.
async fn build_bridges(host: &Netlink, plan: &Plan, rec: &mut Record) -> Result<(), ApplyError> {
    let mut missing = vec![];
    for b in &plan.bridges {
        if host.index(&b.name).await?.is_none() {
            missing.push(b);
        }
    }
    let refused: Vec<(String, String)> = missing
        .iter()
        .filter(|b| !b.create_if_missing)
        .map(|b| (b.name.clone(), b.used_by.join(", ")))
        .collect();
    if !refused.is_empty() {
        return Err(ApplyError::MissingBridges(refused));
    }
    for b in missing {
        Record::add(&mut rec.bridges, b.name.clone());
        save(rec, plan)?;
        match host.add_bridge(&b.name).await {
            Err(e) if !netlink::already(&e) => return Err(e.into()),
            _ => info!("bridge {}: created", b.name),
        }
    }
    Ok(())
}

/// Makes (or finds) one namespace: its pinned network namespace with `lo` up, and its
/// private mount and UTS namespaces.
async fn build_namespace(
    n: &crate::plan::Namespace,
    plan: &Plan,
    rec: &mut Record,
) -> Result<Space, ApplyError> {
    Record::add(&mut rec.netns, n.pin.clone());
    save(rec, plan)?;
    let (net, made) = ns::create_netns(&n.name)?;
    let private = ns::create_private(
        &n.name,
        Some(&n.hostname),
        n.mounts.clone(),
        n.files.clone(),
    )?;
    let nl = Netlink::in_netns(&net, &n.name)?;
    if let Some(lo) = nl.index("lo").await? {
        nl.set_up(lo, "lo").await?;
    }
    info!(
        "namespace {}: {} at {}, private mounts {} ({})",
        n.name,
        if made { "created" } else { "found" },
        n.pin.display(),
        "made",
        n.mounts
            .iter()
            .map(|m| match m {
                crate::plan::Mount::Tmpfs { target, .. } => format!("tmpfs {target}"),
                crate::plan::Mount::Bind { target, .. } => format!("bind {target}"),
                crate::plan::Mount::Overlay { target, .. } => format!("overlay {target}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Space {
        net,
        mnt: private.mnt,
        uts: private.uts,
    })
}

/// Makes one mount space: its directories and files on the host (recorded first, so
/// `down` removes them after a crash), then a private mount namespace with its binds, in
/// the host's network and UTS namespaces.
fn build_mount_space(
    m: &crate::plan::MountSpace,
    plan: &Plan,
    rec: &mut Record,
) -> Result<Space, ApplyError> {
    if let Some(top) = m.dirs.first() {
        Record::add(&mut rec.dirs, top.path.clone());
        save(rec, plan)?;
    }
    for d in &m.dirs {
        owned::dir(&d.path, &d.user, &d.group, d.mode).map_err(ApplyError::Host)?;
    }
    for f in &m.files {
        owned::file(&f.path, &f.user, &f.group, f.mode, &f.contents).map_err(ApplyError::Host)?;
    }
    let private = ns::create_private(&m.name, None, m.mounts.clone(), vec![])?;
    let open =
        |kind: &str| ns::open(Path::new(&format!("/proc/self/ns/{kind}"))).map_err(ApplyError::Ns);
    info!(
        "mount space {} ({}): {}",
        m.name,
        m.owner,
        m.mounts
            .iter()
            .map(|x| match x {
                crate::plan::Mount::Bind { source, target } => format!("{source} over {target}"),
                crate::plan::Mount::Tmpfs { target, .. } => format!("tmpfs {target}"),
                crate::plan::Mount::Overlay { target, .. } => format!("overlay {target}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Space {
        net: open("net")?,
        mnt: private.mnt,
        uts: open("uts")?,
    })
}

/// Makes one veth pair: the host end on its bridge, the peer in its namespace with its
/// MAC and addresses, both up.
async fn build_veth(
    host: &Netlink,
    v: &crate::plan::VethPair,
    space: &Space,
    plan: &Plan,
    rec: &mut Record,
) -> Result<(), ApplyError> {
    Record::add(&mut rec.veths, v.host.clone());
    save(rec, plan)?;
    let peer_mac = match v.peer_mac {
        MacSpec::Fixed(m) => m,
        MacSpec::NetnsInode => {
            Mac::from_netns_inode(ns::inode(&ns::netns_path(&v.netns)).unwrap_or(0))
        }
    };
    let inside = Netlink::in_netns(&space.net, &v.netns)?;
    if host.index(&v.host).await?.is_none() {
        host.add_veth(
            &v.host,
            v.host_mac,
            &v.peer,
            Some(peer_mac),
            space.net.as_raw_fd(),
        )
        .await?;
    }
    let hi = host.index(&v.host).await?.ok_or_else(|| NetError::Kernel {
        op: "finding veth",
        object: v.host.clone(),
        errno: nix::Error::ENODEV,
    })?;
    let bi = host
        .index(&v.bridge)
        .await?
        .ok_or_else(|| NetError::Kernel {
            op: "finding bridge",
            object: v.bridge.clone(),
            errno: nix::Error::ENODEV,
        })?;
    host.attach_up(hi, &v.host, bi, &v.bridge).await?;
    let pi = inside
        .index(&v.peer)
        .await?
        .ok_or_else(|| NetError::Kernel {
            op: "finding veth peer",
            object: format!("{} in {}", v.peer, v.netns),
            errno: nix::Error::ENODEV,
        })?;
    for a in &v.addresses {
        inside
            .add_address(pi, &v.peer, a.addr(), a.prefix_len())
            .await?;
    }
    inside.set_up(pi, &v.peer).await?;
    info!(
        "veth {} ({}) on {} <-> {} ({}) in {}{}",
        v.host,
        v.host_mac,
        v.bridge,
        v.peer,
        peer_mac,
        v.netns,
        if v.addresses.is_empty() {
            String::new()
        } else {
            format!(
                " with {}",
                v.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    Ok(())
}

/// One VLAN namespace's veth whose IPv6 addresses must pass duplicate address detection
/// before the site is ready.
pub struct DadCheck {
    nl: Netlink,
    link: u32,
    peer: String,
    netns: String,
    bridge: String,
    /// The IPv6 addresses the plan gives the link: each must be there to be usable.
    want: Vec<(IpAddr, u8)>,
}

/// The namespace links whose addresses `settle` waits for (opened now, while the
/// namespaces are at hand).
pub async fn dad_checks(plan: &Plan, built: &Built) -> Result<Vec<DadCheck>, ApplyError> {
    let mut out = vec![];
    for v in &plan.veths {
        let Some(space) = built.spaces.get(&v.netns) else {
            continue;
        };
        let nl = Netlink::in_netns(&space.net, &v.netns)?;
        if let Some(link) = nl.index(&v.peer).await? {
            out.push(DadCheck {
                nl,
                link,
                peer: v.peer.clone(),
                netns: v.netns.clone(),
                bridge: v.bridge.clone(),
                want: v
                    .addresses
                    .iter()
                    .filter(|a| a.addr().is_ipv6())
                    .map(|a| (a.addr(), a.prefix_len()))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// What `settle` found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Settled {
    /// Addresses another host on the bridge already has: never usable.
    pub conflicts: Vec<String>,
    /// Addresses still being checked when the time ran out.
    pub pending: Vec<String>,
    /// Links whose addresses could not be read (a netlink error until the time ran out):
    /// not known to be usable.
    pub errors: Vec<String>,
    /// Planned addresses the link no longer has (removed, or the link itself gone, since
    /// `up` added them): not usable.
    pub missing: Vec<String>,
}

/// Waits until no IPv6 address of the checked links is tentative (the kernel's duplicate
/// address detection takes a second or two), at most `within`.
pub async fn settle(checks: Vec<DadCheck>, within: Duration) -> Settled {
    let deadline = Instant::now() + within;
    let mut left = checks;
    let mut found = Settled::default();
    loop {
        let mut still = vec![];
        let mut tentative = vec![];
        let mut errors = vec![];
        let mut missing = vec![];
        for c in left {
            match c.nl.ipv6_dad(c.link, &c.peer).await {
                Ok(addrs) => {
                    let before = tentative.len() + missing.len();
                    // An address that is not listed is not usable, whatever the others say.
                    for (a, p) in &c.want {
                        if !addrs.iter().any(|(b, q, _)| b == a && q == p) {
                            missing.push(format!(
                                "{a}/{p} on {} in {}: not on the link (removed, or the link gone, since up added it)",
                                c.peer, c.netns
                            ));
                        }
                    }
                    for (a, p, d) in &addrs {
                        let at = format!("{a}/{p} on {} in {}", c.peer, c.netns);
                        match d {
                            netlink::Dad::Failed => {
                                let what = format!(
                                    "{at}: another host on bridge {} has it (duplicate address detection failed)",
                                    c.bridge
                                );
                                if !found.conflicts.contains(&what) {
                                    found.conflicts.push(what);
                                }
                            }
                            netlink::Dad::Tentative => tentative.push(at),
                            netlink::Dad::Done => {}
                        }
                    }
                    if tentative.len() + missing.len() > before {
                        still.push(c);
                    }
                }
                Err(e) => {
                    // Not usable until read: asked again until the time runs out.
                    errors.push(format!(
                        "checking the addresses of {} in {}: {e}",
                        c.peer, c.netns
                    ));
                    still.push(c);
                }
            }
        }
        if still.is_empty() {
            return found;
        }
        if Instant::now() >= deadline {
            found.pending = tentative;
            found.errors = errors;
            found.missing = missing;
            return found;
        }
        left = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What teardown removes: the plan's objects and the record's.
fn targets(
    plan: Option<&Plan>,
    rec: Option<&Record>,
) -> (Vec<String>, Vec<PathBuf>, Vec<PathBuf>, Vec<String>) {
    let mut veths = BTreeSet::new();
    let mut netns = BTreeSet::new();
    let mut mpins = BTreeSet::new();
    let mut bridges = BTreeSet::new();
    if let Some(p) = plan {
        veths.extend(p.veths.iter().map(|v| v.host.clone()));
        netns.extend(p.namespaces.iter().map(|n| n.pin.clone()));
        mpins.extend(p.namespaces.iter().map(|n| n.mount_pin.clone()));
    }
    if let Some(r) = rec {
        veths.extend(r.veths.iter().cloned());
        netns.extend(r.netns.iter().cloned());
        mpins.extend(r.mount_pins.iter().cloned());
        bridges.extend(r.bridges.iter().cloned());
    }
    (
        veths.into_iter().collect(),
        netns.into_iter().collect(),
        mpins.into_iter().collect(),
        bridges.into_iter().collect(),
    )
}

/// Every process inside one of these namespaces, or listed in the record (and still the
/// same process), except ourselves.
pub fn site_processes(pins: &[PathBuf], rec: Option<&Record>) -> Vec<u32> {
    let inodes: BTreeSet<u64> = pins.iter().filter_map(|p| ns::inode(p)).collect();
    let me = std::process::id();
    let mut pids = BTreeSet::new();
    if let Some(r) = rec {
        for (pid, start) in &r.children {
            if record::start_time(*pid) == Some(*start) {
                pids.insert(*pid);
            }
        }
    }
    if !inodes.is_empty() {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            for kind in ["net", "mnt"] {
                if ns::inode(Path::new(&format!("/proc/{pid}/ns/{kind}")))
                    .is_some_and(|i| inodes.contains(&i))
                {
                    pids.insert(pid);
                }
            }
        }
    }
    pids.into_iter().collect()
}

/// SIGTERM, then SIGKILL after `grace`; waits until they are gone.
pub async fn kill_all(pids: &[u32], grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(*pid);
    for p in pids {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in pids.iter().filter(|p| alive(p)) {
        info!("process {p}: still there after {grace:?}, SIGKILL");
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Removes everything of the site: processes left, veths, namespaces, mounts, bridges
/// `up` created, nftables tables, state files. Returns every error; keeps going.
/// The record is deleted only when nothing went wrong: it stays the list of what is left.
pub async fn teardown(site: &str, plan: Option<&Plan>, state_dir: &Path) -> Vec<String> {
    let mut errors = vec![];
    // Files in a directory that is not the site's own are not touched.
    let own_dir = match crate::names::check_state_dir(state_dir) {
        Ok(()) => true,
        Err(e) => {
            errors.push(format!("state directory: {e}; left its files alone"));
            false
        }
    };
    let rec = match own_dir.then(|| Record::load_checked(state_dir)) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            tracing::warn!(
                "{e}; removing what the plan names and what a scan for site {site} finds"
            );
            Some(scan(site, state_dir))
        }
        None => None,
    };
    let (veths, netns, mpins, bridges) = targets(plan, rec.as_ref());
    let pins: Vec<PathBuf> = netns.iter().chain(mpins.iter()).cloned().collect();
    let left = site_processes(&pins, rec.as_ref());
    if !left.is_empty() {
        info!("stopping {} process(es) of the site: {left:?}", left.len());
        kill_all(&left, Duration::from_secs(2)).await;
    }
    // The children are gone: nothing sets the host's settings again.
    if let Some(r) = &rec {
        errors.extend(host::restore(r));
    }
    // Unpinning first lets the kernel destroy the namespaces, and with them both ends of
    // every veth, in one batch: much faster than deleting veths one by one.
    let mut held = 0;
    for p in netns.iter().chain(mpins.iter()) {
        match ns::remove_pin(p) {
            Ok(()) => {}
            Err(e) if ns::held_elsewhere(&e) => {
                held += 1;
                info!(
                    "{}: pinned in another mount namespace too (appliance@.service pins in \
                     PID 1's): `appliance down` there removes it",
                    p.display()
                );
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    match Netlink::host() {
        Ok(host) => {
            // A namespace pinned elsewhere lives on with its veths: no use waiting for them.
            let wait = if held > 0 { 0 } else { 3 };
            let deadline = Instant::now() + Duration::from_secs(wait);
            loop {
                let mut left = 0;
                for v in &veths {
                    if host.index(v).await.ok().flatten().is_some() {
                        left += 1;
                    }
                }
                if left == 0 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Whatever a namespace still held (a process of someone else inside) goes now.
            for v in &veths {
                match host.del_link(v).await {
                    Ok(true) => info!("veth {v}: deleted"),
                    Ok(false) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            for b in &bridges {
                match host.del_link(b).await {
                    Ok(true) => info!("bridge {b}: deleted (up created it)"),
                    Ok(false) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    if held > 0 {
        info!(
            "namespaces emptied and their veths removed: {}; {held} pin(s) left to `appliance \
             down` in the mount namespace that made them",
            netns.len()
        );
    } else if !netns.is_empty() {
        info!("namespaces and their veths removed: {}", netns.len());
    }
    // The mount spaces' directories (their binds went with their namespaces): only
    // inside the site's own state directory.
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    if let Some(p) = plan {
        dirs.extend(
            p.mount_spaces
                .iter()
                .filter_map(|m| m.dirs.first())
                .map(|d| d.path.clone()),
        );
    }
    if let Some(r) = &rec {
        dirs.extend(r.dirs.iter().cloned());
    }
    for d in dirs.iter().filter(|d| own_dir && d.starts_with(state_dir)) {
        match std::fs::remove_dir_all(d) {
            Ok(()) => info!("{}: removed", d.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", d.display())),
        }
    }
    let mnt = state_dir.join("mnt");
    if own_dir && mnt.exists() {
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_dir(&mnt)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("removing {}: {e}", mnt.display()));
        }
    }
    if let Err(e) = crate::firewall::remove_all(site) {
        errors.push(e.to_string());
    }
    if own_dir && errors.is_empty() {
        Record::remove(state_dir);
        let _ = std::fs::remove_file(state_dir.join("control.sock"));
        // The lock file stays until the supervisor exits; the directory goes if it is empty.
        let _ = std::fs::remove_dir(state_dir);
    }
    errors
}

/// What a scan finds of `site` when its record cannot be read: namespaces pinned at
/// `/run/netns/<site>-*` (not those of another site whose name starts with `<site>-`), and
/// the mount pins in its state directory. Veths go with their namespaces; bridges `up`
/// made cannot be told from the operator's, so they stay.
fn scan(site: &str, state_dir: &Path) -> Record {
    let prefix = format!("{site}-");
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let others: Vec<String> = state_dir
        .parent()
        .map(&names)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n != site && n.starts_with(&prefix))
        .map(|n| format!("{n}-"))
        .collect();
    let mine = |n: &String| n.starts_with(&prefix) && !others.iter().any(|o| n.starts_with(o));
    let netns: Vec<PathBuf> = names(Path::new("/run/netns"))
        .into_iter()
        .filter(mine)
        .map(|n| PathBuf::from(crate::names::netns_pin(&n)))
        .collect();
    let mnt = state_dir.join("mnt");
    let mount_pins: Vec<PathBuf> = names(&mnt).into_iter().map(|n| mnt.join(n)).collect();
    info!(
        "scan for site {site}: namespaces {:?}, mount pins {:?}",
        netns, mount_pins
    );
    Record {
        site: site.to_string(),
        netns,
        mount_pins,
        ..Default::default()
    }
}
