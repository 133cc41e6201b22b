//! Reads an smcroute.conf (smcroute 2.5 syntax: `phyint`, `mroute`, `mgroup`, `include`)
//! into the forwarder's [`Config`], so an smcroute user can switch with the same file.
//! Every error names FILE:LINE.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::config::{Config, Iface, Join, Route};

/// smcroute's `-c` default: dynamic routes are flushed after 60 s.
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(60);
/// Most groups one `mgroup … /LEN` line may expand to.
const MAX_MGROUP_EXPANSION: u128 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SmcrouteError {
    #[error("{}:{line}: {msg}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("reading {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Default)]
struct Parsed {
    phyints: Vec<(String, bool, u8)>,
    /// Every file read, so routes point at theirs by index (no path copy per line).
    files: Vec<PathBuf>,
    routes: Vec<(usize, usize, Arc<Route>)>,
    joins: Vec<Join>,
}

/// Parses `file` (and what it includes) into a configuration served from `state_dir`.
pub fn load(file: &Path, state_dir: PathBuf) -> Result<Config, Vec<SmcrouteError>> {
    load_cached(file, state_dir, &mut Cache::default())
}

/// As [`load`], re-parsing only the lines that changed since the load that filled `cache`.
pub fn load_cached(
    file: &Path,
    state_dir: PathBuf,
    cache: &mut Cache,
) -> Result<Config, Vec<SmcrouteError>> {
    let mut p = Parsed::default();
    let mut errors = Vec::new();
    let mut next = Cache::default();
    std::mem::swap(cache, &mut next);
    parse_file(file, &mut p, &mut errors, 0, &mut next);
    // Only the files read this time stay cached.
    let read: Vec<PathBuf> = p.files.clone();
    next.files.retain(|f, _| read.contains(f));
    *cache = next;
    let threshold = |name: &str| {
        p.phyints
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .map_or(1, |(_, _, t)| *t)
    };
    let disabled = |name: &str| {
        p.phyints
            .iter()
            .rev()
            .find(|(n, _, _)| n == name)
            .is_some_and(|(_, en, _)| !en)
    };
    let mut vifs: Vec<Iface> = Vec::new();
    let mut mifs: Vec<Iface> = Vec::new();
    let add = |list: &mut Vec<Iface>, name: &str| {
        if !list.iter().any(|i| i.name == name) {
            list.push(Iface {
                name: name.to_string(),
                threshold: threshold(name),
            });
        }
    };
    // smcroute -N: every enabled phyint becomes both a VIF and a MIF.
    for (name, enabled, _) in &p.phyints {
        if *enabled {
            add(&mut vifs, name);
            add(&mut mifs, name);
        }
    }
    let mut routes = Vec::with_capacity(p.routes.len());
    for (f, line, mut r) in p.routes {
        for i in std::iter::once(&r.from).chain(r.to.iter().map(|(n, _)| n)) {
            if disabled(i) {
                errors.push(SmcrouteError::Line {
                    file: p.files[f].clone(),
                    line,
                    msg: format!("interface {i} is disabled by a phyint line"),
                });
            }
        }
        // Outputs take their phyint's threshold (a copy only when one is not the default).
        if r.to.iter().any(|(name, t)| threshold(name) != *t) {
            for (name, t) in Arc::make_mut(&mut r).to.iter_mut() {
                *t = threshold(name);
            }
        }
        let list = if r.group.addr().is_ipv4() {
            &mut vifs
        } else {
            &mut mifs
        };
        add(list, &r.from);
        for (n, _) in &r.to {
            add(list, n);
        }
        routes.push(r);
    }
    let joins = p.joins;
    for (family, list) in [("VIFs", &vifs), ("MIFs", &mifs)] {
        if list.len() > super::kernel::MAXVIFS {
            errors.push(SmcrouteError::Line {
                file: file.to_path_buf(),
                line: 0,
                msg: format!(
                    "the file names {} interfaces for {family}, the kernel has {} at most",
                    list.len(),
                    super::kernel::MAXVIFS
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        table: None,
        expire: DEFAULT_EXPIRE,
        vifs,
        mifs,
        routes,
        joins,
        firewall: None,
        snooping: Vec::new(),
        state_dir,
        proxy: None,
    })
}

/// What one line said, kept between loads so that a reload that changed one line among
/// 20,000 parses one line (the origin `FILE:LINE` is part of it, so a reused line is the
/// same line at the same place).
#[derive(Debug, Clone)]
enum Item {
    Nothing,
    Phyint(String, bool, u8),
    Route(Arc<Route>),
    Joins(Vec<Join>),
    Include(String),
    Error(String),
}

/// The lines of every file read by the last load, and what each said.
#[derive(Debug, Default, Clone)]
pub struct Cache {
    files: HashMap<PathBuf, (String, Vec<Item>)>,
}

fn parse_line(raw: &str, file_name: &str, line: usize) -> Item {
    let words: Vec<&str> = raw
        .split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let Some((&kw, rest)) = words.split_first() else {
        return Item::Nothing;
    };
    let origin = || format!("{file_name}:{line}");
    let r = match kw {
        "phyint" => phyint(rest).map(|(n, e, t)| Item::Phyint(n, e, t)),
        "mroute" => mroute(rest, origin()).map(|r| Item::Route(Arc::new(r))),
        "mgroup" => mgroup(rest, &origin()).map(Item::Joins),
        "include" => {
            if rest.len() != 1 {
                Err("include takes one path or pattern".to_string())
            } else {
                Ok(Item::Include(rest[0].to_string()))
            }
        }
        other => Err(format!(
            "unknown directive {other:?}; expected phyint, mroute, mgroup or include"
        )),
    };
    r.unwrap_or_else(Item::Error)
}

fn parse_file(
    file: &Path,
    p: &mut Parsed,
    errors: &mut Vec<SmcrouteError>,
    depth: usize,
    cache: &mut Cache,
) {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(source) => {
            errors.push(SmcrouteError::Read {
                file: file.to_path_buf(),
                source,
            });
            return;
        }
    };
    let (old_text, old_items) = cache.files.remove(file).unwrap_or_default();
    let old_lines: Vec<&str> = old_text.lines().collect();
    let mut items = Vec::with_capacity(old_items.len().max(16));
    p.routes.reserve(text.len() / 48);
    let file_ix = p.files.len();
    p.files.push(file.to_path_buf());
    let file_name = file.display().to_string();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let item = match (old_lines.get(i), old_items.get(i)) {
            (Some(old), Some(item)) if *old == raw => item.clone(),
            _ => parse_line(raw, &file_name, line),
        };
        let err = |msg: String| SmcrouteError::Line {
            file: file.to_path_buf(),
            line,
            msg,
        };
        match &item {
            Item::Nothing => {}
            Item::Phyint(n, e, t) => p.phyints.push((n.clone(), *e, *t)),
            Item::Route(r) => p.routes.push((file_ix, line, r.clone())),
            Item::Joins(js) => p.joins.extend(js.iter().cloned()),
            Item::Error(msg) => errors.push(err(msg.clone())),
            Item::Include(pattern) => {
                if depth > 8 {
                    errors.push(err("includes nest deeper than 8 files (a loop?)".into()));
                } else {
                    for f in expand_include(file, pattern) {
                        parse_file(&f, p, errors, depth + 1, cache);
                    }
                }
            }
        }
        items.push(item);
    }
    drop(old_lines);
    cache.files.insert(file.to_path_buf(), (text, items));
}

fn phyint(w: &[&str]) -> Result<(String, bool, u8), String> {
    let Some((name, rest)) = w.split_first() else {
        return Err("phyint needs an interface name".into());
    };
    let mut enabled = true;
    let mut ttl = 1u8;
    let mut it = rest.iter();
    while let Some(&k) = it.next() {
        match k {
            "enable" => enabled = true,
            "disable" => enabled = false,
            "mrdisc" => {}
            "ttl-threshold" => {
                let v = it.next().ok_or("ttl-threshold needs a value 1-255")?;
                ttl = v
                    .parse::<u8>()
                    .ok()
                    .filter(|t| *t >= 1)
                    .ok_or_else(|| format!("ttl-threshold {v:?} is not 1-255"))?;
            }
            other => {
                return Err(format!(
                    "phyint: unexpected {other:?}; expected enable, disable, mrdisc or ttl-threshold N"
                ));
            }
        }
    }
    Ok((name.to_string(), enabled, ttl))
}

/// `from IIF`, `source S[/LEN]`, `group G[/LEN]` in any order, then (for mroute) `to OIF…`.
struct Args {
    from: Option<String>,
    source: Option<IpNet>,
    group: Option<IpNet>,
    to: Vec<String>,
}

fn args(w: &[&str], what: &str) -> Result<Args, String> {
    let mut a = Args {
        from: None,
        source: None,
        group: None,
        to: Vec::new(),
    };
    let mut i = 0;
    while i < w.len() {
        let val = || {
            w.get(i + 1)
                .copied()
                .ok_or_else(|| format!("{what}: {} needs a value", w[i]))
        };
        match w[i] {
            "from" => a.from = Some(val()?.to_string()),
            "source" => a.source = Some(net(val()?)?),
            "group" => a.group = Some(net(val()?)?),
            "to" => {
                a.to = w[i + 1..].iter().map(|s| s.to_string()).collect();
                break;
            }
            other => {
                return Err(format!(
                    "{what}: unexpected {other:?}; expected from, source, group or to"
                ));
            }
        }
        i += 2;
    }
    let from = a
        .from
        .as_deref()
        .ok_or_else(|| format!("{what} needs from IIF"))?;
    if from.contains('+') {
        return Err(format!(
            "{what}: interface wildcards ({from}) are not supported; name each interface"
        ));
    }
    let g = a.group.ok_or_else(|| format!("{what} needs group GROUP"))?;
    if !g.addr().is_multicast() {
        return Err(format!("{what}: {g} is not a multicast group"));
    }
    // 0.0.0.0 or :: means any source, as in smcroute.
    if a.source.is_some_and(|s| s.addr().is_unspecified()) {
        a.source = None;
    }
    if let Some(s) = a.source
        && s.addr().is_ipv4() != g.addr().is_ipv4()
    {
        return Err(format!(
            "{what}: source {s} and group {g} are of different families"
        ));
    }
    Ok(a)
}

fn net(s: &str) -> Result<IpNet, String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(a));
    }
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not an address or ADDRESS/LEN"))
}

fn mroute(w: &[&str], origin: String) -> Result<Route, String> {
    let a = args(w, "mroute")?;
    if a.to.is_empty() {
        return Err("mroute needs to OIF [OIF ...]".into());
    }
    let from = a.from.unwrap_or_default();
    if a.to.contains(&from) {
        return Err(format!(
            "mroute: {from} is both the inbound and an outbound interface"
        ));
    }
    Ok(Route {
        origin,
        from,
        source: a.source,
        group: a.group.expect("checked"),
        to: a.to.into_iter().map(|t| (t, 1)).collect(),
    })
}

fn mgroup(w: &[&str], origin: &str) -> Result<Vec<Join>, String> {
    let a = args(w, "mgroup")?;
    if !a.to.is_empty() {
        return Err("mgroup takes no to".into());
    }
    let expand = |n: IpNet| -> Result<Vec<IpAddr>, String> {
        let count = 1u128 << (n.max_prefix_len() - n.prefix_len()).min(127);
        if count > MAX_MGROUP_EXPANSION {
            return Err(format!(
                "mgroup: {n} expands to {count} addresses, more than {MAX_MGROUP_EXPANSION}"
            ));
        }
        Ok(n.hosts_all())
    };
    let groups = expand(a.group.expect("checked"))?;
    let sources: Vec<Option<IpAddr>> = match a.source {
        Some(s) => expand(s)?.into_iter().map(Some).collect(),
        None => vec![None],
    };
    let on = a.from.unwrap_or_default();
    let mut out = Vec::new();
    for g in &groups {
        for s in &sources {
            out.push(Join {
                origin: origin.to_string(),
                on: on.clone(),
                group: *g,
                source: *s,
            });
        }
    }
    Ok(out)
}

/// Every address of a prefix, network and broadcast included.
trait AllHosts {
    fn hosts_all(&self) -> Vec<IpAddr>;
}

impl AllHosts for IpNet {
    fn hosts_all(&self) -> Vec<IpAddr> {
        let n = 1u128 << (self.max_prefix_len() - self.prefix_len()).min(127);
        (0..n)
            .map(|i| match self.addr() {
                IpAddr::V4(a) => IpAddr::V4((u32::from(a) + i as u32).into()),
                IpAddr::V6(a) => IpAddr::V6((u128::from(a) + i).into()),
            })
            .collect()
    }
}

/// An include path: a file, or a pattern with `*`/`?` in its last part (matches sorted,
/// as glob(3) does). A relative path is taken from the including file's directory.
fn expand_include(including: &Path, pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let p = if p.is_relative() {
        including.parent().unwrap_or(Path::new(".")).join(p)
    } else {
        p.to_path_buf()
    };
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![p];
    }
    let dir = p.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn wildcard(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    fn m(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| m(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && m(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && m(rest, &t[1..]),
        }
    }
    m(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smcroute-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_man_page_example_parses() {
        let d = tmp("man");
        std::fs::create_dir_all(d.join("smcroute.d")).unwrap();
        write(
            &d.join("smcroute.d"),
            "10-more.conf",
            "mroute from eth1 group ff0e::1234 to eth2\n",
        );
        let f = write(
            &d,
            "smcroute.conf",
            "# comment\n\
             phyint eth0 enable ttl-threshold 11\n\
             phyint eth1 enable ttl-threshold 3\n\
             phyint eth2 enable ttl-threshold 5\n\
             mgroup from eth0 group 225.1.2.3\n\
             mroute from eth0 source 192.168.1.42 group 225.1.2.3 to eth1 eth2\n\
             mgroup from eth0 source 192.168.123.110 group 225.1.2.4\n\
             mroute from eth0 group 225.0.0.0/24 to eth1 eth2   # a range\n\
             mroute from eth0 source 0.0.0.0 group 225.3.2.1 to eth1\n\
             include smcroute.d/*.conf\n",
        );
        let c = load(&f, "/tmp/x".into()).unwrap();
        let names: Vec<&str> = c.vifs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "eth2"]);
        assert_eq!(c.routes.len(), 4);
        assert!(c.routes[0].is_static());
        assert_eq!(c.routes[0].to, vec![("eth1".into(), 3), ("eth2".into(), 5)]);
        assert!(!c.routes[1].is_static());
        assert_eq!(c.routes[2].source, None);
        assert_eq!(c.routes[3].group.to_string(), "ff0e::1234/128");
        assert!(c.routes[3].origin.ends_with("10-more.conf:1"));
        assert_eq!(c.joins.len(), 2);
        assert_eq!(c.joins[1].source, Some("192.168.123.110".parse().unwrap()));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tmp("err");
        let f = write(
            &d,
            "bad.conf",
            "phyint eth0 enable\n\nmroute from eth0 group 10.1.1.1 to eth1\nfoo bar\nmroute from eth0 group 239.1.1.1\nphyint eth1 ttl-threshold 0\n",
        );
        let errs = load(&f, "/tmp/x".into()).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let at = |n: usize| format!("{}:{n}: ", f.display());
        assert!(
            text[0].starts_with(&at(3)) && text[0].contains("not a multicast"),
            "{text:?}"
        );
        assert!(text[1].starts_with(&at(4)) && text[1].contains("unknown directive"));
        assert!(text[2].starts_with(&at(5)) && text[2].contains("to OIF"));
        assert!(text[3].starts_with(&at(6)) && text[3].contains("ttl-threshold"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_cached_reload_equals_a_fresh_load() {
        let d = tmp("cache");
        let text = |g: &str| {
            format!(
                "phyint a enable\nmroute from a source 10.0.0.1 group 239.1.1.1 to b\n\
                 mroute from a group {g} to b\nbogus\nmgroup from a group 239.5.5.5\n"
            )
        };
        let f = write(&d, "c.conf", &text("239.2.0.0/16"));
        let mut cache = Cache::default();
        assert!(load_cached(&f, "/x".into(), &mut cache).is_err());
        write(&d, "c.conf", &text("239.3.0.0/16").replace("bogus\n", ""));
        let cached = load_cached(&f, "/x".into(), &mut cache).unwrap();
        let fresh = load(&f, "/x".into()).unwrap();
        assert_eq!(cached, fresh);
        assert_eq!(cached.routes[1].group.to_string(), "239.3.0.0/16");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mgroup_prefixes_expand() {
        let js = mgroup(&["from", "a", "group", "239.0.0.0/30"], "x").unwrap();
        assert_eq!(js.len(), 4);
        assert!(mgroup(&["from", "a", "group", "239.0.0.0/8"], "x").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.conf", "10-a.conf"));
        assert!(!wildcard("*.conf", "10-a.conf~"));
        assert!(wildcard("a?c", "abc"));
    }
}
