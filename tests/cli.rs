//! The built binary: `check` and `plan` on good and bad files, and the exit codes of the
//! contract.

mod common;

use std::process::Command;

use std::time::Duration;

use common::{Background, Sandbox, appliance_bin, repo, udp_in, wait_until};

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

/// Exit code of `appliance ARGS` inside the sandbox, with its stdout and stderr.
fn run_in(sb: &Sandbox, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sb.appliance().args(args).output().expect("run appliance");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status`, `services` and `down` where no site runs: `status` and `services` exit 3
/// saying so, `down` has nothing to undo and succeeds, and nothing is left behind.
#[test]
fn status_services_and_down_where_nothing_runs() {
    let sb = Sandbox::new();
    let dir = sb.path("state");
    let dir = dir.to_str().unwrap();
    let (code, out, err) = run_in(&sb, &["status", "--state-dir", dir]);
    assert_eq!(code, Some(3), "status: {out}{err}");
    let (code, out, err) = run_in(&sb, &["status", "--state-dir", dir, "--json"]);
    assert_eq!(code, Some(3), "status --json: {out}{err}");
    let (code, out, err) = run_in(&sb, &["services", "--state-dir", dir]);
    assert_eq!(code, Some(3), "services: {out}{err}");
    let site = repo().join("site.toml");
    let (code, out, err) = run_in(&sb, &["down", site.to_str().unwrap(), "--state-dir", dir]);
    assert_eq!(code, Some(0), "down: {out}{err}");
    assert_eq!(sb.sh("ip -br link | cut -d' ' -f1").trim(), "lo");
    assert_eq!(sb.sh("ip netns list").trim(), "");
}

/// `translate` alone, with the original's flags: a unicast datagram gets a group, and the
/// original's line about it goes to stdout (where the original's print() put it) while
/// the log goes to stderr.
#[test]
fn translate_alone_translates_with_the_original_flags() {
    let sb = Sandbox::new();
    sb.bridge("br0");
    sb.sh("ip addr add 10.1.0.1/24 dev br0");
    let mut cmd = sb.appliance();
    cmd.args([
        "translate",
        "--unicast-nif-ip",
        "10.1.0.1",
        "--unicast-port",
        "9101",
        "--multicast-addr-space",
        "232.7.0.0/16",
        "--multicast-port",
        "9102",
        "--multicast-interface",
        "br0",
    ]);
    let mut bg = Background::spawn(&sb, "translate", cmd);
    bg.wait_for("translating unicast to multicast", Duration::from_secs(10));
    let s = udp_in(&sb, None, "10.1.0.1:31380");
    s.send_to(b"hello", "10.1.0.1:9101").unwrap();
    let line = wait_until("the allocation line", Duration::from_secs(10), || {
        bg.out()
            .lines()
            .find(|l| l.ends_with("allocated for ('10.1.0.1', 31380)."))
            .map(str::to_string)
    });
    assert!(line.starts_with("Multicast address (232.7."), "{line}");
    assert!(line.contains(", 9102) allocated"), "{line}");
    assert!(!bg.err().contains("allocated for"), "{}", bg.logs());
}

/// `mroute --smcroute-conf` alone: the kernel gets the file's routes, and `--status`
/// asks the running forwarder.
#[test]
fn mroute_alone_from_an_smcroute_conf() {
    let sb = Sandbox::new();
    sb.bridge("br-a");
    sb.bridge("br-b");
    let conf = sb.write(
        "smcroute.conf",
        "phyint br-a enable\nphyint br-b enable\nmroute from br-a source 10.9.0.5 group 239.9.9.9 to br-b\n",
    );
    let state = sb.path("mroute-state");
    let (conf, state) = (conf.to_str().unwrap(), state.to_str().unwrap());
    let mut cmd = sb.appliance();
    cmd.args(["mroute", "--smcroute-conf", conf, "--state-dir", state]);
    let bg = Background::spawn(&sb, "mroute", cmd);
    let status = wait_until("mroute --status to answer", Duration::from_secs(15), || {
        let (code, out, _) = run_in(
            &sb,
            &[
                "mroute",
                "--smcroute-conf",
                conf,
                "--state-dir",
                state,
                "--status",
                "--json",
            ],
        );
        (code == Some(0)).then_some(out)
    });
    let v: serde_json::Value = serde_json::from_str(&status).expect("--json is JSON");
    let vifs: Vec<&str> = v["vifs"]
        .as_array()
        .unwrap_or_else(|| panic!("no vifs: {v}\n{}", bg.logs()))
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    // As smcroute -N: every enabled phyint is an IPv4 VIF and an IPv6 MIF.
    assert_eq!(vifs, ["br-a", "br-b", "br-a", "br-b"], "{v}");
    let table = sb.sh("ip mroute show");
    assert!(table.contains("(10.9.0.5,239.9.9.9)"), "{table}");
}

/// `monitor SITE` alone: its nftables table appears and it keeps running.
#[test]
fn monitor_alone_installs_its_rewrite() {
    let sb = Sandbox::new();
    sb.bridge("br-m");
    let site = sb.write(
        "site.toml",
        "[site]\nname = \"lab\"\n[[monitor]]\nname = \"syslog\"\ninterface = \"br-m\"\n\
         group = \"234.1.1.1\"\nport = 5514\ndeliver = \"127.0.0.1:5515\"\n",
    );
    let mut cmd = sb.appliance();
    cmd.arg("monitor").arg(&site);
    let mut bg = Background::spawn(&sb, "monitor", cmd);
    wait_until(
        "the monitor's nftables table",
        Duration::from_secs(10),
        || {
            if let Ok(Some(st)) = bg.child.try_wait() {
                panic!("monitor exited ({st}): {}", bg.logs());
            }
            sb.sh("nft list tables")
                .contains("appliance-lab-monitor")
                .then_some(())
        },
    );
}

/// `render` writes the site's tree and `headend` serves until stopped, answering on its
/// control socket: neither is a stub that exits 69 ("not built").
#[test]
fn headend_and_render_do_their_job() {
    let sb = Sandbox::new();
    let site = repo().join("site.toml");
    let out = sb.path("rendered");
    let (code, o, e) = run_in(
        &sb,
        &[
            "render",
            site.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "render: {o}{e}");
    assert!(out.join("units").is_dir(), "render wrote no units/: {o}{e}");
    let headend = sb.write(
        "headend.toml",
        "[site]\nname = \"lab\"\n[headend]\ninterfaces = [\"lo\"]\nprefix = \"fd20:1::/64\"\n",
    );
    let state = sb.path("state");
    let mut cmd = sb.appliance();
    cmd.arg("headend")
        .arg(&headend)
        .arg("--state-dir")
        .arg(&state);
    let mut bg = Background::spawn(&sb, "headend", cmd);
    let sock = state.join("parts/headend.sock");
    wait_until(
        "the headend's control socket",
        Duration::from_secs(10),
        || sock.exists().then_some(()),
    );
    assert!(
        bg.child.try_wait().unwrap().is_none(),
        "headend exited: {}",
        bg.logs()
    );
}
