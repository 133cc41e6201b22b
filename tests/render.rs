//! `appliance render`: golden trees, determinism, the manifest, and every generated file
//! read by the real parser that will read it (systemd-analyze, systemd-nspawn, nft,
//! systemd-networkd).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use appliance::plan::{self, Plan};
use appliance::render::{self, FileKind, Tree};
use appliance::site;
use common::{Sandbox, appliance_bin, repo, require_program, wait_until};

fn load(rel: &str) -> (Plan, String) {
    let text = std::fs::read_to_string(repo().join(rel)).expect("site file");
    let s = site::parse(rel, &text).expect("site is valid");
    (plan::plan(&s, Path::new(rel)), text)
}

fn rendered(rel: &str) -> Tree {
    let (p, text) = load(rel);
    render::render(&p, &text)
}

/// The tree as one text: each path, its kind, then its contents.
fn listing(t: &Tree) -> String {
    let mut s = String::new();
    for (path, f) in t {
        match f.kind {
            FileKind::Regular { mode } => {
                s.push_str(&format!("=== {} ({mode:04o})\n", path.display()));
                s.push_str(f.as_str());
                if !f.as_str().ends_with('\n') {
                    s.push_str("\n[no newline at end]\n");
                }
            }
            FileKind::Symlink => {
                s.push_str(&format!("=== {} -> {}\n", path.display(), f.as_str()));
            }
        }
    }
    s
}

/// Compares with a golden file; `UPDATE_GOLDEN=1 cargo test` rewrites it after a deliberate change.
fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 makes it)");
    assert!(
        expected == actual,
        "render differs from {}; if the change is meant, run UPDATE_GOLDEN=1 cargo test\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn golden_render_of_the_example() {
    golden("render-lab.txt", &listing(&rendered("site.toml")));
}

#[test]
fn golden_render_of_an_access_router() {
    golden(
        "render-access-router.txt",
        &listing(&rendered("tests/sites/access-router.toml")),
    );
}

#[test]
fn golden_render_of_a_site_with_every_option() {
    golden(
        "render-full.txt",
        &listing(&rendered("tests/sites/full.toml")),
    );
}

#[test]
fn render_is_pure_complete_and_filled() {
    for rel in [
        "site.toml",
        "tests/sites/full.toml",
        "tests/sites/access-router.toml",
    ] {
        let (p, text) = load(rel);
        let a = render::render(&p, &text);
        assert_eq!(a, render::render(&p, &text), "{rel}: two renders differ");
        for (path, f) in &a {
            assert!(path.is_relative(), "{}", path.display());
            let left = render::placeholders(f.as_str());
            assert!(left.is_empty(), "{}: {left:?} not filled", path.display());
        }
        for ns in &p.namespaces {
            let m = &ns.name;
            let conf = &a[&PathBuf::from(format!(
                "var/lib/appliance/machines/{m}/etc/avahi/avahi-daemon.conf"
            ))];
            assert_eq!(
                conf.as_str(),
                ns.files[0].contents,
                "{m}: not the plan's config"
            );
            let id = &a[&PathBuf::from(format!("var/lib/appliance/machines/{m}/etc/machine-id"))];
            assert_eq!(id.as_str(), format!("{}\n", render::machine_id(&p.site, m)));
            for part in [
                format!("etc/systemd/nspawn/{m}.nspawn"),
                format!("etc/systemd/system/systemd-nspawn@{m}.service.d/appliance.conf"),
                format!("var/lib/appliance/machines/{m}/etc/hostname"),
            ] {
                assert!(a.contains_key(Path::new(&part)), "{rel}: {part} missing");
            }
        }
        for b in p.bridges.iter().filter(|b| b.create_if_missing) {
            let netdev = format!(
                "etc/systemd/network/60-appliance-{}-{}.netdev",
                p.site, b.name
            );
            let text = a[Path::new(&netdev)].as_str();
            match b.snooping {
                Some(true) => assert!(text.contains("MulticastSnooping=yes"), "{netdev}"),
                Some(false) => assert!(text.contains("MulticastSnooping=no"), "{netdev}"),
                None => assert!(!text.contains("MulticastSnooping"), "{netdev}"),
            }
        }
        // Every capability a child keeps is in the unit's bounding set (the children the
        // unit's up runs: FRR's daemons are frr.service's there).
        let run = appliance::render::as_the_unit_runs_it(&p);
        let dropin = a[&PathBuf::from(format!(
            "etc/systemd/system/appliance@{}.service.d/render.conf",
            p.site
        ))]
            .as_str();
        let set = dropin
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .expect("a bounding set");
        for c in run.children.iter().flat_map(|c| &c.caps) {
            assert!(set.split(' ').any(|x| x == c), "{c} missing from {set}");
        }
    }
}

/// The links of `overlays/avahi/etc` are the ones render writes, and every file there is a
/// template render fills (the README aside).
#[test]
fn the_overlay_directory_is_what_render_copies() {
    let base = repo().join("overlays/avahi/etc");
    let mut links = BTreeMap::new();
    let mut files = vec![];
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&base).unwrap().display().to_string();
            let ty = e.file_type().unwrap();
            if ty.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                links.insert(rel, target.display().to_string());
            } else if ty.is_dir() {
                stack.push(e.path());
            } else if rel != "README" {
                files.push(rel);
            }
        }
    }
    let expected: BTreeMap<String, String> = render::OVERLAY_LINKS
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(links, expected);
    files.sort();
    assert_eq!(files, ["avahi/avahi-daemon.conf", "hostname", "machine-id"]);
}

#[test]
fn unit_names_are_escaped_as_systemd_escape_does() {
    require_program("systemd-escape");
    for p in [
        "/var/lib/machines/lab-refl-media",
        "/var/lib/machines/a_b.c:d",
        "/",
    ] {
        let out = Command::new("systemd-escape")
            .args(["--path", p])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            render::escape_path(p),
            "{p}"
        );
    }
}

fn run_render(site: &Path, flag: &str, dir: &Path) -> std::process::Output {
    Command::new(appliance_bin())
        .arg("render")
        .arg(site)
        .arg(flag)
        .arg(dir)
        .output()
        .unwrap()
}

/// Every file under `dir` (links as "-> target"), relative.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ty = e.file_type().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                out.insert(rel, format!("-> {}", t.display()).into_bytes());
            } else {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("appliance-render-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn render_twice_gives_the_same_bytes_in_both_layouts() {
    for flag in ["--root", "--out"] {
        let a = scratch(&format!("twice-a{flag}"));
        let b = scratch(&format!("twice-b{flag}"));
        for d in [&a, &a, &b] {
            let out = run_render(&repo().join("site.toml"), flag, d);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (sa, sb) = (snapshot(&a), snapshot(&b));
        assert_eq!(sa, sb, "{flag}: rendering twice changed something");
        let tree = rendered("site.toml");
        // Every file of the tree plus the manifest, nothing else.
        assert_eq!(sa.len(), tree.len() + 1, "{flag}: {:?}", sa.keys());
        if flag == "--root" {
            for p in tree.keys() {
                assert!(sa.contains_key(p), "{} missing", p.display());
            }
            let mode = std::fs::metadata(a.join("etc/appliance/lab.toml")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(mode.permissions().mode() & 0o7777, 0o644);
        } else {
            assert!(sa.contains_key(Path::new("units/appliance@.service")));
            assert!(sa.contains_key(Path::new("nspawn/lab-iot.nspawn")));
            assert!(sa.contains_key(Path::new("machines/lab-iot/etc/machine-id")));
        }
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}

#[test]
fn a_new_render_removes_exactly_what_the_site_no_longer_needs() {
    let root = scratch("rerender");
    let full = repo().join("site.toml");
    assert!(run_render(&full, "--root", &root).status.success());
    // Files that are not the render's, also beside its own and in its directories.
    let foreign = [
        "etc/systemd/system/sshd.service",
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "var/lib/appliance/machines/lab-guest/etc/extra.conf",
        "etc/appliance/other.toml",
    ];
    for f in foreign {
        std::fs::write(root.join(f), "mine\n").unwrap();
    }
    // The same site without the guest VLAN and without its reflector.
    let text = std::fs::read_to_string(&full).unwrap();
    let smaller = text
        .replace(
            "[[vlan]]\nname = \"guest\"               # namespace \"lab-guest\"\nbridge = \"br-guest\"          # its bridge\naddress = \"10.20.3.2/24\"     # trust and mac take their defaults: untrusted, stable\n",
            "",
        )
        .replace("[[reflector]]\nname = \"media\"", "[[reflector]]\nname = \"media\"\n# gone");
    assert_ne!(smaller, text, "site.toml changed: update this test's edit");
    let small_site = root.join("small-site.toml");
    std::fs::write(&small_site, &smaller).unwrap();
    let before = snapshot(&root);
    let out = run_render(&small_site, "--root", &root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = snapshot(&root);
    let gone: Vec<&PathBuf> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    let (p, _) = {
        let s = site::parse("small", &smaller).unwrap();
        (plan::plan(&s, Path::new("small")), ())
    };
    let new_tree = render::render(&p, &smaller);
    let old_tree = rendered("site.toml");
    let expected: Vec<&PathBuf> = old_tree
        .keys()
        .filter(|k| !new_tree.contains_key(*k))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(gone, expected, "removed other files than the stale ones");
    for f in foreign {
        assert_eq!(
            std::fs::read_to_string(root.join(f)).unwrap(),
            "mine\n",
            "{f}"
        );
    }
    // The guest machine's directory stays (a foreign file is in it); its drop-in directory
    // went with its only file.
    assert!(
        !root
            .join("etc/systemd/system/systemd-nspawn@lab-guest.service.d")
            .exists()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("removed etc/systemd/nspawn/lab-guest.nspawn"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_manifest_naming_a_foreign_path_stops_the_render() {
    let root = scratch("badmanifest");
    let m = root.join("var/lib/appliance/render");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("lab.manifest"), "etc/../../outside\n").unwrap();
    let out = run_render(&repo().join("site.toml"), "--root", &root);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etc/../../outside") && err.contains("nothing was removed"),
        "{err}"
    );
    assert!(
        !root.join("etc/appliance").exists(),
        "wrote files after a bad manifest"
    );
    let out = run_render(&repo().join("tests/bad/syntax.toml"), "--root", &root);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&root);
}

/// Every unit, under real instance names, through `systemd-analyze verify`: exit 0 and no
/// word on stderr about our files.
#[test]
fn systemd_analyze_verifies_every_rendered_unit() {
    require_program("systemd-analyze");
    for rel in [
        "site.toml",
        "tests/sites/full.toml",
        "tests/sites/access-router.toml",
    ] {
        let tree = rendered(rel);
        let dir = scratch(&format!("verify-{}", rel.replace('/', "_")));
        let bin = appliance_bin().display().to_string();
        let mut units = vec![];
        for (path, f) in &tree {
            let Ok(rel_unit) = path.strip_prefix("etc/systemd/system") else {
                continue;
            };
            if f.kind == FileKind::Symlink {
                continue;
            }
            let mut name = rel_unit.to_path_buf();
            let text = f.as_str().replace(render::BINARY, &bin);
            // The templates (appliance@, appliance-netns@), under the site's instance name.
            if let Some(t) = name.to_str().and_then(|n| n.strip_suffix("@.service")) {
                let (p, _) = load(rel);
                name = PathBuf::from(format!("{t}@{}.service", p.site));
            }
            let out = dir.join(&name);
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            std::fs::write(&out, text).unwrap();
            if name.parent() == Some(Path::new("")) {
                units.push(out);
            }
        }
        // The machines' units: systemd's own template under each machine's name, beside our
        // drop-in for it.
        let nspawn_unit = std::fs::read_to_string("/lib/systemd/system/systemd-nspawn@.service")
            .expect("systemd-container's systemd-nspawn@.service");
        for path in tree.keys() {
            let Some(m) = path
                .to_str()
                .and_then(|p| p.strip_prefix("etc/systemd/nspawn/"))
                .and_then(|p| p.strip_suffix(".nspawn"))
            else {
                continue;
            };
            let out = dir.join(format!("systemd-nspawn@{m}.service"));
            std::fs::write(&out, &nspawn_unit).unwrap();
            units.push(out);
        }
        assert!(!units.is_empty(), "{units:?}");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{rel}: verify failed:\n{stderr}");
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&dir.display().to_string()) || l.contains("appliance"))
            .collect();
        assert!(
            ours.is_empty(),
            "{rel}: systemd-analyze about our files:\n{stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// systemd-nspawn's own parse of each rendered settings file (from the trusted
/// /run/systemd/nspawn of a sandbox): it names any key it does not know, then refuses the
/// empty root.
#[test]
fn nspawn_files_hold_only_keys_nspawn_knows() {
    require_program("systemd-nspawn");
    let sb = Sandbox::new();
    let empty = sb.path("empty-root");
    std::fs::create_dir_all(empty.join("usr")).unwrap();
    for rel in ["site.toml", "tests/sites/full.toml"] {
        for (path, f) in rendered(rel) {
            let Some(name) = path
                .to_str()
                .and_then(|p| p.strip_prefix("etc/systemd/nspawn/"))
                .map(str::to_string)
            else {
                continue;
            };
            let m = name.trim_end_matches(".nspawn");
            let file = sb.write(&name, f.as_str());
            let out = sb.try_sh(&format!(
                "mkdir -p /run/systemd/nspawn && cp {} /run/systemd/nspawn/{name} \
                 && systemd-nspawn -D {} -M {m}",
                file.display(),
                empty.display()
            ));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("os-release"),
                "{m}: no root check:\n{stderr}"
            );
            assert!(
                !stderr.contains(&name),
                "{m}: nspawn about the file:\n{stderr}"
            );
        }
    }
}

#[test]
fn nft_accepts_the_rendered_ruleset_as_it_is() {
    require_program("nft");
    let sb = Sandbox::new();
    for rel in ["site.toml", "tests/sites/full.toml"] {
        let tree = rendered(rel);
        let (p, _) = load(rel);
        let f = &tree[&PathBuf::from(format!("etc/appliance/{}.nft", p.site))];
        let path = sb.write(&format!("{}.nft", p.site), f.as_str());
        sb.sh(&format!("nft -c -f {0} && nft -f {0}", path.display()));
        let once = sb.sh("nft list ruleset");
        // Loading it again replaces the tables instead of adding rules twice.
        sb.sh(&format!("nft -f {}", path.display()));
        assert_eq!(
            once,
            sb.sh("nft list ruleset"),
            "{rel}: a second load changed the ruleset"
        );
        for fw in &p.firewall {
            assert!(
                once.contains(&format!("table {} {} {{", fw.family, fw.table)),
                "{once}"
            );
        }
    }
}

/// systemd-networkd itself reads the rendered files in a sandbox: it names every unknown
/// key or section it meets, and makes the bridges with the snooping the site asked for.
#[test]
fn networkd_knows_every_key_and_makes_the_bridges() {
    let networkd = Path::new("/lib/systemd/systemd-networkd");
    assert!(networkd.is_file(), "systemd-networkd is not installed");
    let sb = Sandbox::new();
    let tree = rendered("tests/sites/full.toml");
    let (p, _) = load("tests/sites/full.toml");
    let src = sb.path("network");
    std::fs::create_dir_all(&src).unwrap();
    let mut n = 0;
    for (path, f) in &tree {
        if let Ok(name) = path.strip_prefix("etc/systemd/network") {
            std::fs::write(src.join(name), f.as_str()).unwrap();
            n += 1;
        }
    }
    assert_eq!(
        n,
        2 * p.bridges.iter().filter(|b| b.create_if_missing).count()
    );
    let log = sb.path("networkd.log");
    let mut daemon = sb
        .cmd("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p /run/systemd/network /run/systemd/netif && cp {}/* /run/systemd/network/ \
             && SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=debug exec {} >{} 2>&1",
            src.display(),
            networkd.display(),
            log.display()
        ))
        .spawn()
        .unwrap();
    let snooping = |b: &str| -> Option<String> {
        let out = sb.try_sh(&format!("ip -d link show {b}"));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.split("mcast_snooping ")
            .nth(1)
            .map(|r| r.chars().take(1).collect())
    };
    for b in p.bridges.iter().filter(|b| b.create_if_missing) {
        let want = match b.snooping {
            Some(false) => "0",
            _ => "1",
        };
        wait_until(
            &format!("networkd to make {}", b.name),
            std::time::Duration::from_secs(10),
            || (snooping(&b.name).as_deref() == Some(want)).then_some(()),
        );
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/run/systemd/network/"))
        .collect();
    assert!(
        complaints.is_empty(),
        "networkd about the rendered files:\n{}",
        complaints.join("\n")
    );
    assert!(
        text.contains("br-lan"),
        "networkd did not log the bridges:\n{text}"
    );
}

/// A site with `engine = "frr"`: FRR's own dry run (`vtysh --dryrun`, which names any line
/// it does not know) accepts the rendered frr.conf and vtysh.conf; the daemons file, read
/// as frrinit.sh reads it (sourced by sh), turns pimd on; frr.service is enabled and the
/// site unit wants it and starts after it.
#[test]
fn frr_accepts_the_rendered_configuration() {
    require_program("vtysh");
    let tree = rendered("tests/sites/access-router.toml");
    let dir = scratch("frr");
    for name in ["frr.conf", "vtysh.conf", "daemons"] {
        let f = &tree[Path::new("etc/frr").join(name).as_path()];
        std::fs::write(dir.join(name), &f.bytes).unwrap();
    }
    for name in ["frr.conf", "vtysh.conf"] {
        let out = Command::new("vtysh")
            .args(["--dryrun", "-f"])
            .arg(dir.join(name))
            .output()
            .unwrap();
        common::check(&out, &format!("vtysh --dryrun -f {name}"));
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains('%'), "vtysh about {name}:\n{said}");
    }
    // A line vtysh does not know fails the same dry run: the check can fail.
    std::fs::write(dir.join("bad.conf"), "interface x\n ip pim bogus\nexit\n").unwrap();
    let bad = Command::new("vtysh")
        .args(["--dryrun", "-f"])
        .arg(dir.join("bad.conf"))
        .output()
        .unwrap();
    assert!(!bad.status.success(), "vtysh accepted a bad line");
    let out = Command::new("sh")
        .arg("-c")
        .arg(". \"$1\"; echo \"pimd=$pimd vtysh_enable=$vtysh_enable\"")
        .arg("sh")
        .arg(dir.join("daemons"))
        .output()
        .unwrap();
    common::check(&out, "sourcing daemons");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pimd=yes vtysh_enable=yes"
    );
    let plan_conf = load("tests/sites/access-router.toml")
        .0
        .routing
        .and_then(|r| r.frr)
        .unwrap()
        .config;
    assert_eq!(tree[Path::new("etc/frr/frr.conf")].as_str(), plan_conf);
    let wants = &tree[Path::new("etc/systemd/system/multi-user.target.wants/frr.service")];
    assert_eq!(wants.kind, FileKind::Symlink);
    assert_eq!(wants.as_str(), "/lib/systemd/system/frr.service");
    let dropin = tree[Path::new("etc/systemd/system/appliance@floor1.service.d/frr.conf")].as_str();
    assert!(dropin.contains("\nWants=frr.service\n") && dropin.contains("\nAfter=frr.service\n"));
    // A site without [routing] gets none of it.
    assert!(
        !rendered("site.toml")
            .keys()
            .any(|p| p.starts_with("etc/frr") || p.ends_with("frr.service"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
