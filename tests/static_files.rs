//! The static files a router image gets: the systemd unit and the nspawn settings file are
//! checked by systemd's own parsers.

mod common;

use common::{Sandbox, appliance_bin, repo, require_program};

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_program("systemd-analyze");
    let dir = std::env::temp_dir().join(format!("appliance-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Templates are verified under a real instance name, with a binary that exists.
    let unit = std::fs::read_to_string(repo().join("units/appliance@.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/appliance",
            &appliance_bin().display().to_string(),
        );
    let path = dir.join("appliance@lab.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("appliance@lab.service"),
        "warnings about the unit:\n{stderr}"
    );
}

#[test]
fn the_nspawn_file_has_no_unknown_keys() {
    require_program("systemd-nspawn");
    // A trusted settings file lives under /run/systemd/nspawn: the sandbox's own /run.
    let sb = Sandbox::new();
    let file = repo().join("nspawn/appliance-avahi.nspawn");
    let root = sb.path("root");
    std::fs::create_dir_all(root.join("usr")).unwrap();
    let out = sb.try_sh(&format!(
        "mkdir -p /run/systemd/nspawn && cp {} /run/systemd/nspawn/lab-iot.nspawn \
         && systemd-nspawn -D {} -M lab-iot",
        file.display(),
        root.display()
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Boot=on (from the file) makes it look for os-release, then refuse the empty root:
    // what matters is that it read every key first.
    assert!(
        stderr.contains("os-release"),
        "nspawn did not get to the root check:\n{stderr}"
    );
    assert!(
        !stderr.contains("lab-iot.nspawn"),
        "nspawn complained about the settings file:\n{stderr}"
    );
}
