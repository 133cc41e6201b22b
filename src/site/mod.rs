//! `site.toml`: parse, locate, validate. Every problem is reported at once, each as
//! `FILE:LINE:COL: FIELD: why`.

pub mod model;
pub mod spans;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use model::*;
pub use validate::{Known, Problem, directory_block, reflect_filters, validate, validate_parts};

use spans::{LineIndex, SpanIndex};

/// One thing wrong with a site file, with where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Path of the field: `vlan[1].bridge`; empty for a syntax error outside any field.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// At most this many problems are printed; the rest are counted. A file with thousands of
/// mistakes is not read by anyone line by line, and placing each costs time.
pub const MAX_ERRORS: usize = 100;

/// Everything wrong with a site file: the first `MAX_ERRORS` problems, sorted by place,
/// and how many more there were.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SiteErrors {
    pub diags: Vec<Diagnostic>,
    /// Problems found beyond `MAX_ERRORS`, not placed nor printed.
    pub omitted: usize,
}

impl SiteErrors {
    fn one(d: Diagnostic) -> SiteErrors {
        SiteErrors {
            diags: vec![d],
            omitted: 0,
        }
    }

    /// How many problems there are, printed or not.
    pub fn total(&self) -> usize {
        self.diags.len() + self.omitted
    }
}

impl fmt::Display for SiteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diags.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        if self.omitted > 0 {
            let file = self.diags.first().map_or("", |d| d.file.as_str());
            write!(
                f,
                "\n{file}: {} more error{} not shown (the first {MAX_ERRORS} are)",
                self.omitted,
                if self.omitted == 1 { "" } else { "s" }
            )?;
        }
        Ok(())
    }
}

/// A validated site and the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedSite {
    pub site: Site,
    pub path: PathBuf,
}

/// Read, parse and validate a site file.
pub fn load(path: &Path) -> Result<LoadedSite, SiteErrors> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        SiteErrors::one(Diagnostic {
            file: label.clone(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })
    })?;
    let site = parse_bytes(&label, &bytes)?;
    Ok(LoadedSite {
        site,
        path: path.to_path_buf(),
    })
}

/// Parse and validate a site file's bytes: text that is not UTF-8 is reported at each
/// bad byte, and the rest of the file is still checked (with the bad bytes replaced).
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Site, SiteErrors> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return parse(file, text);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut ctx = Ctx::new(file, &text);
    ctx.spans = SpanIndex::build(&text);
    // Each bad sequence stands where the lossy text has its U+FFFD, at the same byte
    // offset as in the file up to the first one; count those offsets in the lossy text.
    let mut offset = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(_) => break,
            Err(e) => {
                let at = offset + e.valid_up_to();
                let bad = e.error_len().unwrap_or(rest.len() - e.valid_up_to());
                let shown: Vec<String> = rest[e.valid_up_to()..e.valid_up_to() + bad]
                    .iter()
                    .map(|b| format!("0x{b:02x}"))
                    .collect();
                let field = ctx.spans.path_containing(at);
                ctx.push(
                    at,
                    &field,
                    format!(
                        "not UTF-8: byte{} {} (a site file is UTF-8 text)",
                        if bad == 1 { "" } else { "s" },
                        shown.join(" ")
                    ),
                );
                // The lossy text holds one U+FFFD (3 bytes) for this sequence.
                offset = at + '\u{fffd}'.len_utf8();
                rest = &rest[e.valid_up_to() + bad..];
            }
        }
    }
    // The UTF-8 problems are in `ctx`, so this is an Err.
    ctx.run()
}

/// Parse and validate site text; `file` is the name errors are reported under.
pub fn parse(file: &str, text: &str) -> Result<Site, SiteErrors> {
    Ctx::new(file, text).run()
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    lines: LineIndex,
    spans: SpanIndex,
    diags: Vec<Diagnostic>,
    omitted: usize,
    /// Keys taken out of sections because their values were bad (full paths): problems
    /// the value checks find there are about the default put in their place.
    removed: Vec<String>,
}

const TOP_KEYS: &[&str] = &[
    "site",
    "vlan",
    "reflector",
    "multicast",
    "translator",
    "headend",
    "monitor",
    "routing",
];

/// The elements of an array of tables that deserialized, with their places in the file's
/// array (`orig[i]` is the file index of `items[i]`).
struct Items<T> {
    items: Vec<T>,
    orig: Vec<usize>,
    whole: bool,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items {
            items: Vec::new(),
            orig: Vec::new(),
            whole: true,
        }
    }
}

/// Where each array's elements of the checked `Site` stand in the file.
type IndexMaps = Vec<(&'static str, Vec<usize>)>;

impl<'a> Ctx<'a> {
    fn new(file: &'a str, text: &'a str) -> Ctx<'a> {
        Ctx {
            file,
            text,
            lines: LineIndex::new(text),
            spans: SpanIndex::default(),
            diags: Vec::new(),
            omitted: 0,
            removed: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Site, SiteErrors> {
        let table = match self.text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                self.syntax_errors(&e);
                return Err(self.finish());
            }
        };
        self.spans = SpanIndex::build(self.text);
        let (site, known, maps) = self.structure(table);
        for p in validate_parts(&site, known) {
            if self.removed.iter().any(|r| within(&p.path, r)) {
                continue;
            }
            let path = remap(&p.path, &maps);
            let message = remap(&p.message, &maps);
            self.error(&path, message);
        }
        if self.diags.is_empty() && self.omitted == 0 {
            Ok(site)
        } else {
            Err(self.finish())
        }
    }

    fn finish(mut self) -> SiteErrors {
        self.diags.sort_by_key(|d| (d.line, d.col));
        SiteErrors {
            diags: self.diags,
            omitted: self.omitted,
        }
    }

    fn push(&mut self, offset: usize, field: &str, message: String) {
        if self.diags.len() >= MAX_ERRORS {
            self.omitted += 1;
            return;
        }
        let (line, col) = self.lines.line_col(self.text, offset);
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            field: field.to_string(),
            message,
        });
    }

    fn error(&mut self, path: &str, message: String) {
        let at = self.spans.value_at(path);
        self.push(at, path, message);
    }

    fn syntax_errors(&mut self, strict: &toml::de::Error) {
        let (root, errors) = toml::de::DeTable::parse_recoverable(self.text);
        let index = SpanIndex::of(&root);
        for e in errors {
            if self.diags.len() >= MAX_ERRORS {
                self.omitted += 1;
                continue;
            }
            let at = e.span().map_or(0, |s| s.start);
            let field = index.path_containing(at);
            let msg = format!("syntax: {}", one_line(e.message()));
            self.push(at, &field, msg);
        }
        if self.diags.is_empty() {
            // The document's shape is right but a value is not (an integer that does not
            // fit in 64 bits, say): the strict parse says where.
            let at = strict.span().map_or(0, |s| s.start);
            let field = index.path_containing(at);
            let literal = strict
                .span()
                .and_then(|s| self.text.get(s))
                .unwrap_or_default()
                .trim();
            let digits = literal.trim_start_matches(['+', '-']).replace('_', "");
            let msg = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                format!(
                    "{literal} does not fit in a TOML integer (64 bits, at most {})",
                    i64::MAX
                )
            } else {
                match one_line(strict.message()) {
                    m if m.is_empty() => "syntax: the file is not valid TOML".to_string(),
                    m => format!("syntax: {m}"),
                }
            };
            self.push(at, &field, msg);
        }
    }

    /// Deserialize each section (and each element of each array of tables, nested ones
    /// included) on its own, so one bad VLAN does not hide the errors of the next; what
    /// deserialized is returned for the value checks, with which parts are whole.
    fn structure(&mut self, mut table: toml::Table) -> (Site, Known, IndexMaps) {
        for key in table.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                let at = self.spans.key_at(key);
                self.push(
                    at,
                    key,
                    format!("unknown section; expected one of {}", TOP_KEYS.join(", ")),
                );
            }
        }
        let site = match table.remove("site") {
            Some(v) => self.section::<SiteSection>("site", v),
            None => {
                self.push(
                    0,
                    "site",
                    "missing: every site file needs a [site] table with a name".into(),
                );
                None
            }
        };
        let vlan = self.array::<Vlan>(table.remove("vlan"), "vlan");
        let reflector = self.array::<Reflector>(table.remove("reflector"), "reflector");
        let monitor = self.array::<Monitor>(table.remove("monitor"), "monitor");
        let (multicast, route, join) = match table.remove("multicast") {
            Some(toml::Value::Table(mut m)) => {
                let route = self.array::<Route>(m.remove("route"), "multicast.route");
                let join = self.array::<Join>(m.remove("join"), "multicast.join");
                let multicast = self.section::<Multicast>("multicast", toml::Value::Table(m));
                (multicast, route, join)
            }
            Some(other) => (
                self.section::<Multicast>("multicast", other),
                Items::default(),
                Items::default(),
            ),
            None => (None, Items::default(), Items::default()),
        };
        let (headend, service) = match table.remove("headend") {
            Some(toml::Value::Table(mut h)) => {
                let service = self.array::<Service>(h.remove("service"), "headend.service");
                (
                    self.section::<Headend>("headend", toml::Value::Table(h)),
                    service,
                )
            }
            Some(other) => (self.section::<Headend>("headend", other), Items::default()),
            None => (None, Items::default()),
        };
        let translator = table
            .remove("translator")
            .and_then(|v| self.section::<Translator>("translator", v));
        let routing = table
            .remove("routing")
            .and_then(|v| self.section::<Routing>("routing", v));
        let known = Known {
            site: site.is_some(),
            vlans: vlan.whole,
        };
        let maps: IndexMaps = vec![
            ("vlan", vlan.orig),
            ("reflector", reflector.orig),
            ("monitor", monitor.orig),
            ("multicast.route", route.orig),
            ("multicast.join", join.orig),
            ("headend.service", service.orig),
        ];
        let site = Site {
            // A placeholder the checks skip (`known.site` is false).
            site: site.unwrap_or(SiteSection {
                name: String::new(),
                state_dir: None,
                create_bridges: false,
                avahi: AvahiMode::default(),
            }),
            vlan: vlan.items,
            reflector: reflector.items,
            multicast: multicast.map(|mut m| {
                m.route = route.items;
                m.join = join.items;
                m
            }),
            translator,
            headend: headend.map(|mut h| {
                h.service = service.items;
                h
            }),
            monitor: monitor.items,
            routing,
        };
        (site, known, maps)
    }

    fn array<T: DeserializeOwned>(&mut self, value: Option<toml::Value>, key: &str) -> Items<T> {
        let items = match value {
            None => return Items::default(),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.error(
                    key,
                    format!("expected an array of tables, written [[{key}]]"),
                );
                return Items {
                    whole: false,
                    ..Items::default()
                };
            }
        };
        let mut out = Items::default();
        for (i, item) in items.into_iter().enumerate() {
            match self.section::<T>(&format!("{key}[{i}]"), item) {
                Some(t) => {
                    out.items.push(t);
                    out.orig.push(i);
                }
                None => out.whole = false,
            }
        }
        out
    }

    /// Deserialize one section. Each bad key is reported, taken out and the section tried
    /// again, so every bad key is reported; the section is returned if it deserialized
    /// with them out (their defaults in their place), for the value checks of the rest.
    fn section<T: DeserializeOwned>(&mut self, path: &str, mut value: toml::Value) -> Option<T> {
        let mut taken_out: Vec<String> = Vec::new();
        loop {
            let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let segments: Vec<Seg> = e
                .path()
                .iter()
                .map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Seg::Key(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Seg::Index(*index),
                    _ => Seg::Other,
                })
                .collect();
            let inner = e.path().to_string();
            let mut field = if inner == "." {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            };
            let msg = one_line(e.inner().message());
            if let Some(name) = backticked(&msg, "missing field `") {
                let missing = format!("{field}.{name}");
                // A key taken out for its bad value is not missing as well.
                if !taken_out.contains(&missing) {
                    let at = self.spans.value_at(&field);
                    self.push(at, &missing, format!("missing: {name} is required"));
                }
                return None;
            }
            // Point at the offending key itself when serde names it.
            if let Some(name) = backticked(&msg, "unknown field `") {
                // serde_path_to_error already ends the path with the unknown key.
                if !field.ends_with(&format!(".{name}")) {
                    field = format!("{field}.{name}");
                }
                let at = self.spans.key_at(&field);
                self.push(at, &field, msg);
            } else {
                let at = self.spans.value_at(&field);
                self.push(at, &field, msg);
            }
            // Take out the deepest key on the path and try again.
            let last_key = segments.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
            let key_path = path_of(path, &segments[..=last_key]);
            if !take_out(&mut value, &segments[..=last_key]) {
                return None;
            }
            self.removed.push(key_path.clone());
            taken_out.push(key_path);
        }
    }
}

/// One step of a serde path.
enum Seg {
    Key(String),
    Index(usize),
    Other,
}

fn path_of(prefix: &str, segments: &[Seg]) -> String {
    let mut p = prefix.to_string();
    for s in segments {
        match s {
            Seg::Key(k) => {
                p.push('.');
                p.push_str(k);
            }
            Seg::Index(i) => p.push_str(&format!("[{i}]")),
            Seg::Other => {}
        }
    }
    p
}

/// Remove the key the last segment names; false if the path does not lead there.
fn take_out(value: &mut toml::Value, segments: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = segments.split_last() else {
        return false;
    };
    let mut v = value;
    for s in parents {
        v = match (s, v) {
            (Seg::Key(k), toml::Value::Table(t)) => match t.get_mut(k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Index(i), toml::Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match v {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

/// `path` is `outer` or inside it.
fn within(path: &str, outer: &str) -> bool {
    path.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Put back the file's indices (`vlan[1]` of the checked site is `vlan[2]` of the file
/// when `vlan[1]` did not deserialize) in a path or message.
fn remap(s: &str, maps: &IndexMaps) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'scan: while i < s.len() {
        for (key, orig) in maps {
            let rest = &s[i..];
            let boundary = s[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
            if !boundary || !rest.starts_with(key) || !rest[key.len()..].starts_with('[') {
                continue;
            }
            let digits = &rest[key.len() + 1..];
            let n = digits.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 || !digits[n..].starts_with(']') {
                continue;
            }
            let Ok(ix) = digits[..n].parse::<usize>() else {
                continue;
            };
            let real = orig.get(ix).copied().unwrap_or(ix);
            out.push_str(&format!("{key}[{real}]"));
            i += key.len() + 1 + n + 1;
            continue 'scan;
        }
        let c = s[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn backticked<'m>(msg: &'m str, lead: &str) -> Option<&'m str> {
    let rest = msg.strip_prefix(lead)?;
    rest.split('`').next()
}

fn one_line(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
