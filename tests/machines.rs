//! The rendered machines, run by the real systemd-nspawn: a VLAN's machine boots in the
//! VLAN's namespace and its avahi answers hosts on the VLAN's bridge.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use common::{
    ClientAvahi, Group, Sandbox, appliance_bin, check, repo, require_program, wait_until,
};

/// `Key=` of a rendered unit.
fn key<'a>(unit: &'a str, k: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}=")))
        .unwrap_or_else(|| panic!("no {k}= in\n{unit}"))
}

/// Processes (pid, comm) whose network namespace has inode `ino`.
fn in_netns(ino: u64) -> Vec<(u32, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// The iot VLAN of the example, as `appliance render` writes it, started the way
/// systemd-nspawn@lab-iot.service with the rendered drop-in starts it: systemd's own
/// ExecStart= of that unit, inside /run/netns/lab-iot. The host root is bound as the
/// rendered .mount unit says.
#[test]
fn a_rendered_vlan_machine_boots_in_its_namespace_and_answers_mdns() {
    require_program("systemd-nspawn");
    let sb = Sandbox::new();
    let out_dir = sb.path("render");
    let out = Command::new(appliance_bin())
        .args(["render"])
        .arg(repo().join("site.toml"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    check(&out, "appliance render");
    let m = "lab-iot";
    let mount_unit =
        std::fs::read_to_string(out_dir.join("units/var-lib-machines-lab\\x2diot.mount")).unwrap();
    let dropin = std::fs::read_to_string(
        out_dir.join(format!("units/systemd-nspawn@{m}.service.d/appliance.conf")),
    )
    .unwrap();
    let netns_path = key(&dropin, "NetworkNamespacePath");
    let nspawn_unit = std::fs::read_to_string("/lib/systemd/system/systemd-nspawn@.service")
        .expect("systemd-container's systemd-nspawn@.service");
    // Without systemd as PID 1 there is no machined to register with.
    let exec = key(&nspawn_unit, "ExecStart").replace("%i", m) + " --register=no";
    // The VLAN as `up` makes it: a namespace with a veth into br-iot and the plan's address.
    sb.bridge("br-iot");
    sb.sh(&format!(
        "ip netns add {m}\n\
         ip link add {m} type veth peer name iot netns {m}\n\
         ip link set {m} master br-iot up\n\
         ip -n {m} link set lo up\n\
         ip -n {m} link set iot up\n\
         ip -n {m} addr add 10.20.2.2/24 dev iot"
    ));
    // /var/lib gets a writable layer of the sandbox's own (the host's stays untouched); the
    // machine's /etc is the rendered one plus a service for the browse.
    let upper = sb.path("varlib");
    sb.sh(&format!(
        "mkdir -p {u} && mount -t tmpfs tmpfs {u} && mkdir -p {u}/up {u}/work\n\
         mount -t overlay overlay -o lowerdir=/var/lib,upperdir={u}/up,workdir={u}/work /var/lib\n\
         mkdir -p /var/lib/appliance/machines/{m} {where_}\n\
         cp -a {out}/machines/{m}/etc /var/lib/appliance/machines/{m}/\n\
         mkdir -p /var/lib/appliance/machines/{m}/etc/avahi/services\n\
         printf '<service-group><name>rendered-machine</name><service><type>_e2e._tcp</type><port>4242</port></service></service-group>\\n' \
           > /var/lib/appliance/machines/{m}/etc/avahi/services/e2e.service\n\
         mount -t {ty} -o {opts} {what} {where_}\n\
         mkdir -p /run/systemd/nspawn && cp {out}/nspawn/{m}.nspawn /run/systemd/nspawn/",
        u = upper.display(),
        out = out_dir.display(),
        where_ = key(&mount_unit, "Where"),
        what = key(&mount_unit, "What"),
        ty = key(&mount_unit, "Type"),
        opts = key(&mount_unit, "Options"),
    ));
    let console = sb.path("console");
    // Without systemd as PID 1, systemd-nspawn makes its cgroups under its caller's: it
    // gets one of its own (as `up` gives each machine), removed at the end.
    let cg_name = format!("test-{}-{m}", std::process::id());
    let enter: String = appliance::render::machine::prepare_cgroups(&cg_name)
        .iter()
        .map(|p| format!("echo $$ > '{}' && ", p.display()))
        .collect();
    let mut cmd = sb.cmd("sh");
    cmd.arg("-c").arg(format!(
        "{enter}exec nsenter --net={netns_path} -- {exec} >{} 2>&1",
        console.display()
    ));
    let mut machine = Group::spawn(cmd, "systemd-nspawn");
    sb.host("h1", "br-iot", &["10.20.2.50/24"]);
    let client = ClientAvahi::start(&sb, "h1");
    let log = || std::fs::read_to_string(&console).unwrap_or_default();
    wait_until(
        "the machine's service, browsed from a host on br-iot",
        Duration::from_secs(60),
        || {
            assert!(machine.running(), "systemd-nspawn exited:\n{}", log());
            client.sees("_e2e._tcp", "rendered-machine").then_some(())
        },
    );
    let resolved = client
        .tool("avahi-resolve")
        .args(["-4", "-n", &format!("{m}.local")])
        .output()
        .unwrap();
    let resolved = String::from_utf8_lossy(&resolved.stdout);
    assert!(
        resolved.contains("10.20.2.2"),
        "lab-iot.local resolved to {resolved:?}"
    );
    // Its avahi (and everything of the machine) is in the VLAN's namespace, and sees the
    // namespace's interfaces.
    let ino: u64 = sb
        .sh(&format!("stat -L -c %i {netns_path}"))
        .trim()
        .parse()
        .unwrap();
    let procs = in_netns(ino);
    let avahi = procs
        .iter()
        .find(|(pid, comm)| {
            comm == "avahi-daemon"
                && std::fs::read_to_string(format!("/proc/{pid}/root/etc/hostname"))
                    .is_ok_and(|h| h.trim() == m)
        })
        .unwrap_or_else(|| panic!("no avahi of the machine in {netns_path}: {procs:?}"));
    assert!(procs.iter().any(|(_, c)| c == "systemd"), "{procs:?}");
    let links = |args: &[&str]| -> Vec<String> {
        let o = Command::new("nsenter")
            .args(args)
            .args(["ip", "-o", "link"])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap().to_string())
            })
            .collect();
        v.sort();
        v
    };
    let inside = links(&["-t", &avahi.0.to_string(), "-n", "--"]);
    let ns_out = sb.sh(&format!("ip -n {m} -o link"));
    let mut ns_links: Vec<String> = ns_out
        .lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap().to_string())
        })
        .collect();
    ns_links.sort();
    assert_eq!(inside, ns_links);
    assert_eq!(inside, ["iot", "lo"]);
    // The machine's own /etc: its hostname and machine-id are the rendered ones.
    let id = std::fs::read_to_string(format!("/proc/{}/root/etc/machine-id", avahi.0)).unwrap();
    assert_eq!(id.trim(), appliance::render::machine_id("lab", m));
    // SIGTERM to systemd-nspawn shuts the machine down cleanly, and nothing is left behind.
    unsafe { libc_kill(machine.pid as i32, 15) };
    wait_until("the machine to shut down", Duration::from_secs(30), || {
        (!machine.running()).then_some(())
    });
    wait_until(
        "no process left in the VLAN namespace",
        Duration::from_secs(10),
        || in_netns(ino).is_empty().then_some(()),
    );
    appliance::render::machine::remove_cgroups(&cg_name);
    let left: Vec<_> = appliance::render::machine::cgroup_dirs(&cg_name)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn status(sb: &Sandbox) -> Option<(i32, serde_json::Value)> {
    let out = sb.appliance().args(["status", "--json"]).output().ok()?;
    Some((
        out.status.code()?,
        serde_json::from_slice(&out.stdout).ok()?,
    ))
}

fn child<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["children"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no child {name} in status: {v}"))
}

/// Directories named after a machine in any cgroup hierarchy.
fn machine_cgroups() -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("appliance-lab-") {
                out.push(e.path().display().to_string());
            } else if d.components().count() < 5 {
                stack.push(e.path());
            }
        }
    }
    out
}

/// The example site with `avahi = "machines"`: `up` runs each VLAN's and the reflector's
/// avahi as systemd-nspawn machines, reports them healthy over the machines' own buses,
/// answers `services` from them, and `down` leaves nothing, machines included.
#[test]
fn up_with_machines_brings_the_example_healthy_and_down_leaves_nothing() {
    require_program("systemd-nspawn");
    let sb = Sandbox::new();
    let text = std::fs::read_to_string(repo().join("site.toml"))
        .unwrap()
        .replacen(
            "\ncreate_bridges = true",
            "\navahi = \"machines\"\ncreate_bridges = true",
            1,
        );
    let site = sb.write("site.toml", &text);
    let mut up = common::Up::start(&sb, &site);
    let v = wait_until(
        "the site with machines to be healthy",
        Duration::from_secs(60),
        || {
            if let Ok(Some(st)) = up.child.try_wait() {
                panic!("appliance up exited ({st}):\n{}", up.log());
            }
            match status(&sb) {
                Some((0, v)) => Some(v),
                _ => None,
            }
        },
    );
    for name in ["avahi@iot", "avahi@guest"] {
        assert_eq!(child(&v, name)["health"], "healthy", "{v}");
    }
    assert_eq!(child(&v, "reflector@media")["health"], "running", "{v}");
    let names: Vec<&str> = v["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("dbus@")), "{names:?}");
    // Each is systemd-nspawn, and the machine inside it boots systemd with its own /etc.
    for (name, m) in [
        ("avahi@iot", "lab-iot"),
        ("reflector@media", "lab-refl-media"),
    ] {
        let pid = child(&v, name)["pid"].as_u64().unwrap() as u32;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "systemd-nspawn", "{name}");
        let init = appliance::render::machine::leader(pid).expect("the machine's init");
        let host = std::fs::read_to_string(format!("/proc/{init}/root/etc/hostname")).unwrap();
        assert_eq!(host.trim(), m);
    }
    assert_eq!(machine_cgroups().len() % 3, 0);
    assert!(
        !machine_cgroups().is_empty(),
        "machines without cgroups of their own"
    );
    // `services` answers from the machine's avahi: a printer published on br-iot.
    sb.host("iot1", "br-iot", &["10.20.2.10/24"]);
    let iot1 = ClientAvahi::start(&sb, "iot1");
    let _printer = iot1.publish("Printer", "_ipp._tcp", 631);
    wait_until(
        "appliance services to list the printer on iot",
        Duration::from_secs(20),
        || {
            let out = sb.appliance().arg("services").output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("iot\t_ipp._tcp\tPrinter").then_some(text)
        },
    );
    drop(iot1);
    // A killed machine is restarted like a killed avahi.
    let old = child(&v, "avahi@guest")["pid"].as_u64().unwrap() as i32;
    unsafe { libc_kill(old, 9) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    wait_until(
        "avahi@guest to be restarted and healthy",
        Duration::from_secs(90),
        || {
            assert!(
                std::time::Instant::now() < deadline,
                "avahi@guest not healthy again:\n{}\n{:?}",
                up.log(),
                status(&sb)
            );
            let (code, v) = status(&sb)?;
            let c = child(&v, "avahi@guest");
            (code == 0 && c["pid"].as_i64() != Some(old as i64) && c["restarts"] == 1).then_some(())
        },
    );
    let out = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&out, "appliance down");
    let code = wait_until("up to exit", Duration::from_secs(30), || {
        up.child.try_wait().ok().flatten()
    });
    assert_eq!(code.code(), Some(0), "{}", up.log());
    let netns = sb.sh("ip netns list");
    assert!(!netns.contains("lab-"), "{netns}");
    assert_eq!(sb.sh("nft list tables").trim(), "");
    let left = sb.processes();
    assert!(left.is_empty(), "processes left in the sandbox: {left:?}");
    let nspawns: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("--machine=lab-").then_some((p, cmd))
        })
        .collect();
    assert!(nspawns.is_empty(), "machines left: {nspawns:?}");
    assert!(
        machine_cgroups().is_empty(),
        "cgroups left: {:?}",
        machine_cgroups()
    );
}

/// appliance@.service as systemd runs it, without systemd: `appliance pin` in the
/// sandbox's mount namespace (PID 1's, in the unit), then `up` in a mount namespace of its
/// own that is a slave of it (what ProtectSystem= and PrivateTmp= give the unit), whose
/// own mounts never reach the sandbox. The pins are the sandbox's, so a process there
/// (systemd-nspawn@lab-iot.service) joins the namespace `up` filled; `up` stops cleanly
/// although it cannot remove them, and `down` in the sandbox then leaves nothing.
#[test]
fn namespaces_pinned_outside_ups_mount_namespace_are_filled_by_up_and_removed_by_down() {
    require_program("unshare");
    let sb = Sandbox::new();
    let site = sb.write(
        "site.toml",
        "[site]\nname = \"lab\"\ncreate_bridges = true\n\n\
         [[vlan]]\nname = \"iot\"\nbridge = \"br-iot\"\naddress = \"10.20.2.2/24\"\n",
    );
    // systemd's mounts are shared: a pin then lands twice, also on /run beneath the
    // /run/netns bind (of the same peer group), and the copy of that one in `up`'s
    // namespace keeps it from unlinking the pin there.
    sb.sh("mount --make-shared /run");
    for round in ["pinned", "already pinned"] {
        let out = sb.appliance().arg("pin").arg(&site).output().unwrap();
        check(&out, "appliance pin");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(said.trim(), format!("/run/netns/lab-iot: {round}"));
    }
    // Pinned, and still empty: `up` fills it.
    let links = sb.sh("ip -n lab-iot -o link show");
    assert_eq!(links.lines().count(), 1, "{links}");
    let log = sb.path("up.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut up = sb
        .cmd("unshare")
        .args(["--mount", "--propagation", "slave", "--"])
        .arg(appliance_bin())
        .arg("up")
        .arg(&site)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let up_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the site to be healthy", Duration::from_secs(30), || {
        if let Ok(Some(st)) = up.try_wait() {
            panic!("appliance up exited ({st}):\n{}", up_log());
        }
        status(&sb).filter(|(code, _)| *code == 0)
    });
    assert!(
        up_log().contains("namespace lab-iot: found at /run/netns/lab-iot"),
        "{}",
        up_log()
    );
    // Joined from the sandbox through its pin, the namespace is the one `up` filled.
    let inside = sb.sh("ip netns exec lab-iot ip -o -4 addr show dev iot");
    assert!(inside.contains("10.20.2.2/24"), "{inside}");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc_kill(up.id() as i32, 15) };
    let code = wait_until("up to exit", Duration::from_secs(30), || {
        up.try_wait().ok().flatten()
    });
    assert_eq!(code.code(), Some(0), "{}", up_log());
    assert!(
        up_log().contains("/run/netns/lab-iot: pinned in another mount namespace too"),
        "{}",
        up_log()
    );
    let out = sb.appliance().arg("down").arg(&site).output().unwrap();
    check(&out, "appliance down");
    let netns = sb.sh("ip netns list");
    assert!(!netns.contains("lab-"), "{netns}");
    let links = sb.sh("ip -o link show");
    assert!(!links.contains("lab-iot"), "{links}");
    let left = sb.processes();
    assert!(left.is_empty(), "processes left in the sandbox: {left:?}");
}
