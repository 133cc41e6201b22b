//! `appliance render SITE --out DIR | --root DIR`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Layout, render, write};
use crate::{plan, site};

pub fn run(site_file: &Path, out: Option<PathBuf>, root: Option<PathBuf>) -> ExitCode {
    let (dir, layout) = match (out, root) {
        (Some(d), None) => (d, Layout::Out),
        (None, Some(d)) => (d, Layout::Root),
        // clap's group makes exactly one of them required.
        _ => return ExitCode::from(crate::exit::EXIT_INVALID),
    };
    let loaded = match site::load(site_file) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("appliance render: the site is invalid; nothing was written");
            return ExitCode::from(crate::exit::EXIT_INVALID);
        }
    };
    let text = match std::fs::read_to_string(site_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("appliance render: reading {}: {e}", site_file.display());
            return ExitCode::FAILURE;
        }
    };
    let p = plan::plan(&loaded.site, &loaded.path);
    let tree = render(&p, &text);
    match write(&tree, &p.site, &dir, layout) {
        Ok(r) => {
            println!(
                "rendered site {} into {}: {} file(s) written, {} old file(s) removed",
                p.site,
                dir.display(),
                r.written.len(),
                r.removed.len()
            );
            for rel in &r.removed {
                println!("removed {}", rel.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("appliance render: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `appliance pin SITE`: makes (or finds) the site's network namespaces pinned under
/// /run/netns, as `up` would, and nothing else. appliance@.service runs it before `up`, in
/// PID 1's mount namespace: `up` runs in the unit's sandbox, a mount namespace whose mounts
/// never propagate back (systemd.exec(5), MountFlags=), so pins it made would be invisible
/// to PID 1 and to the systemd-nspawn@ units that join them. `up` finds these pins and
/// fills the namespaces; `down` (also in PID 1's mount namespace) removes them.
pub fn pin(site_file: &Path) -> ExitCode {
    let loaded = match site::load(site_file) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("appliance pin: the site is invalid; nothing was pinned");
            return ExitCode::from(crate::exit::EXIT_INVALID);
        }
    };
    let p = plan::plan(&loaded.site, &loaded.path);
    let mut failed = false;
    for n in &p.namespaces {
        match crate::ns::create_netns(&n.name) {
            Ok((_, made)) => println!(
                "{}: {}",
                n.pin.display(),
                if made { "pinned" } else { "already pinned" }
            ),
            Err(e) => {
                eprintln!("appliance pin: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(crate::exit::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}
