//! The built binary: `check` and `plan` on good and bad files, and the exit codes of the
//! contract.

mod common;

use std::process::Command;

use common::{Sandbox, appliance_bin, repo};

fn appliance(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(appliance_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run appliance")
}

#[test]
fn check_accepts_the_example() {
    let out = appliance(&["check", "site.toml"], &repo());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "check printed warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file in tests/bad/ says what `check` must print about it in `# expect:` lines.
#[test]
fn check_rejects_each_bad_file_with_its_message() {
    let dir = repo().join("tests/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/bad") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Lossy: one file is not UTF-8 on purpose.
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!expects.is_empty(), "{name} has no '# expect:' line");
        let out = appliance(&["check", &name], &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit {:?}\n{stderr}",
            out.status
        );
        for e in expects {
            assert!(stderr.contains(e), "{name}: expected {e:?} in:\n{stderr}");
        }
        // plan refuses the same file the same way.
        let out = appliance(&["plan", &name], &dir);
        assert_eq!(out.status.code(), Some(2), "plan {name}");
        n += 1;
    }
    assert!(n >= 5, "only {n} bad files");
}

#[test]
fn check_of_a_missing_file_says_so() {
    let out = appliance(&["check", "no-such-site.toml"], &repo());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-site.toml:0:0: cannot read"));
}

#[test]
fn plan_prints_text_and_json() {
    let out = appliance(&["plan", "site.toml"], &repo());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let golden = std::fs::read_to_string(repo().join("tests/golden/plan.txt")).unwrap();
    assert_eq!(text, golden);
    let out = appliance(&["plan", "--json", "site.toml"], &repo());
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --json is JSON");
    assert_eq!(v["site"], "lab");
    assert_eq!(v["namespaces"][0]["pin"], "/run/netns/lab-iot");
}

#[test]
fn every_contract_subcommand_exists() {
    for sub in [
        "up",
        "down",
        "check",
        "plan",
        "status",
        "render",
        "services",
        "translate",
        "headend",
        "mroute",
        "monitor",
    ] {
        let out = appliance(&[sub, "--help"], &repo());
        assert!(out.status.success(), "appliance {sub} --help failed");
    }
    let out = appliance(&["translate", "--help"], &repo());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--unicast-nif-ip",
        "--unicast-port",
        "--multicast-addr-space",
        "--multicast-port",
    ] {
        assert!(help.contains(flag), "translate lacks {flag}");
    }
}

/// The rendered ruleset of the example is accepted by the real nft (a dry run, in a
/// namespace of the test's own).
#[test]
fn nft_accepts_the_planned_ruleset() {
    common::require_program("nft");
    let sb = Sandbox::new();
    let rules = sb.write(
        "ruleset.nft",
        &std::fs::read_to_string(repo().join("tests/golden/ruleset.nft")).unwrap(),
    );
    sb.sh(&format!("nft -c -f {}", rules.display()));
    // Applying twice is the same as once: the file replaces the whole table.
    sb.sh(&format!("nft -f {0} && nft -f {0}", rules.display()));
    let listed = sb.sh("nft list table inet appliance-lab-mroute");
    assert_eq!(
        listed
            .matches("notrack ip daddr set 239.255.255.250")
            .count(),
        1
    );
}
