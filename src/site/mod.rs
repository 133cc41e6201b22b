//! `site.toml`: parse, locate, validate. Every problem is reported at once, each as
//! `FILE:LINE:COL: FIELD: why`.

pub mod model;
pub mod spans;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use model::*;
pub use validate::{Problem, directory_block, reflect_filters, validate};

use spans::{SpanIndex, line_col};

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

/// Everything wrong with a site file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SiteErrors(pub Vec<Diagnostic>);

impl fmt::Display for SiteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        SiteErrors(vec![Diagnostic {
            file: label.clone(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    let site = parse(&label, &text)?;
    Ok(LoadedSite {
        site,
        path: path.to_path_buf(),
    })
}

/// Parse and validate site text; `file` is the name errors are reported under.
pub fn parse(file: &str, text: &str) -> Result<Site, SiteErrors> {
    let mut ctx = Ctx {
        file,
        text,
        spans: SpanIndex::default(),
        diags: Vec::new(),
    };
    let table = match text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(_) => {
            ctx.syntax_errors();
            return Err(SiteErrors(ctx.diags));
        }
    };
    ctx.spans = SpanIndex::build(text);
    let site = ctx.structure(table);
    match site {
        Some(site) if ctx.diags.is_empty() => {
            for p in validate(&site) {
                ctx.error(&p.path, p.message);
            }
            if ctx.diags.is_empty() {
                Ok(site)
            } else {
                Err(SiteErrors(ctx.diags))
            }
        }
        _ => Err(SiteErrors(ctx.diags)),
    }
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    spans: SpanIndex,
    diags: Vec<Diagnostic>,
}

const TOP_KEYS: &[&str] = &[
    "site",
    "vlan",
    "reflector",
    "multicast",
    "translator",
    "headend",
    "monitor",
];

impl Ctx<'_> {
    fn push(&mut self, offset: usize, field: &str, message: String) {
        let (line, col) = line_col(self.text, offset);
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

    fn syntax_errors(&mut self) {
        let (_, errors) = toml::de::DeTable::parse_recoverable(self.text);
        let index = SpanIndex::build(self.text);
        for e in errors {
            let at = e.span().map_or(0, |s| s.start);
            let field = index.path_containing(at);
            let msg = format!("syntax: {}", one_line(e.message()));
            self.push(at, &field, msg);
        }
        if self.diags.is_empty() {
            self.push(0, "", "syntax: the file is not valid TOML".into());
        }
    }

    /// Deserialize each section (and each element of each array of tables) on its own,
    /// so one bad VLAN does not hide the errors of the next.
    fn structure(&mut self, mut table: toml::Table) -> Option<Site> {
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
        let vlan = self.array::<Vlan>(&mut table, "vlan");
        let reflector = self.array::<Reflector>(&mut table, "reflector");
        let monitor = self.array::<Monitor>(&mut table, "monitor");
        let multicast = self.optional::<Multicast>(&mut table, "multicast");
        let translator = self.optional::<Translator>(&mut table, "translator");
        let headend = self.optional::<Headend>(&mut table, "headend");
        Some(Site {
            site: site?,
            vlan: vlan?,
            reflector: reflector?,
            multicast: multicast?,
            translator: translator?,
            headend: headend?,
            monitor: monitor?,
        })
    }

    fn optional<T: DeserializeOwned>(
        &mut self,
        table: &mut toml::Table,
        key: &str,
    ) -> Option<Option<T>> {
        match table.remove(key) {
            None => Some(None),
            Some(v) => self.section(key, v).map(Some),
        }
    }

    fn array<T: DeserializeOwned>(&mut self, table: &mut toml::Table, key: &str) -> Option<Vec<T>> {
        let items = match table.remove(key) {
            None => return Some(Vec::new()),
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.error(
                    key,
                    format!("expected an array of tables, written [[{key}]]"),
                );
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            match self.section::<T>(&format!("{key}[{i}]"), item) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn section<T: DeserializeOwned>(&mut self, path: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let mut field = if inner == "." {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                let msg = one_line(e.inner().message());
                // Point at the offending key itself when serde names it.
                if let Some(name) = backticked(&msg, "unknown field `") {
                    // serde_path_to_error already ends the path with the unknown key.
                    if !field.ends_with(&format!(".{name}")) {
                        field = format!("{field}.{name}");
                    }
                    let at = self.spans.key_at(&field);
                    self.push(at, &field, msg);
                } else if let Some(name) = backticked(&msg, "missing field `") {
                    let at = self.spans.value_at(&field);
                    field = format!("{field}.{name}");
                    self.push(at, &field, format!("missing: {name} is required"));
                } else {
                    let at = self.spans.value_at(&field);
                    self.push(at, &field, msg);
                }
                None
            }
        }
    }
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
