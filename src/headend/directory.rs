//! Directories: blocks of service numbers filled from a list instead of one
//! `[[headend.service]]` each.
//!
//! A block is `first` and `count`, or a bit range (the high bits pick the directory, the
//! `low_bits` low bits the entry: numbers `high << low_bits` to `(high + 1) << low_bits` - 1).
//! Its entries come from
//! - a station list (PLS, M3U or JSON; a local file or an http(s) URL): entry `i` (from 0,
//!   in list order) is number `first + i`, a `Url` source; entries past the block are left
//!   out (and logged);
//! - or a command table, dvblast-style: one `N = command args…` line per entry, `N` the
//!   entry's place in the block (decimal or `0x` hex, from 0), the command split like a
//!   shell does (quotes, no expansion) and run as a `Command` source (`{rtp}`, `{sdp}`).
//!   `#` starts a comment line.
//!
//! [`load`] reads the list again each time it is called (on reload). It blocks (file or
//! HTTP): call it off the runtime's thread.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::http::{self, HttpConfig};
use super::playlist;
use super::source::SourceSpec;

/// The largest local list or command file read.
pub const MAX_FILE: u64 = 1024 * 1024;

/// Which numbers a directory fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberBlock {
    Range {
        first: u32,
        count: u32,
    },
    /// Numbers `high << low_bits` … `((high + 1) << low_bits) - 1`.
    Bits {
        high: u32,
        low_bits: u8,
    },
}

impl NumberBlock {
    /// (first, count), or why the block is not one.
    pub fn span(&self) -> Result<(u32, u32), String> {
        let (first, count) = match *self {
            NumberBlock::Range { first, count } => (u64::from(first), u64::from(count)),
            NumberBlock::Bits { high, low_bits } => {
                if low_bits >= 32 {
                    return Err(format!("low_bits {low_bits} leaves no high bits"));
                }
                (u64::from(high) << low_bits, 1u64 << low_bits)
            }
        };
        if count == 0 {
            return Err("the block holds no number".into());
        }
        if first + count - 1 > u64::from(u32::MAX) {
            return Err(format!(
                "the block {first:#x} + {count} runs past {:#x}",
                u32::MAX
            ));
        }
        Ok((first as u32, count as u32))
    }

    pub fn contains(&self, number: u32) -> bool {
        self.span()
            .is_ok_and(|(f, c)| number >= f && u64::from(number) < u64::from(f) + u64::from(c))
    }
}

/// Where a directory's entries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// A station list: a local path or an http(s) URL.
    List(String),
    /// A command table in a file.
    CommandFile(PathBuf),
    /// A command table given inline.
    Commands(String),
}

/// One `[[headend.directory]]` (the headend maps the site's keys onto it).
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// For names and errors.
    pub name: String,
    pub block: NumberBlock,
    pub source: DirectorySource,
    /// Limits for lists fetched over HTTP.
    pub http: HttpConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub number: u32,
    pub name: String,
    pub spec: SourceSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory {dir}: {why}")]
    Block { dir: String, why: String },
    #[error("directory {dir}: reading {path}: {source}")]
    Read {
        dir: String,
        path: String,
        source: std::io::Error,
    },
    #[error("directory {dir}: {path} is larger than {MAX_FILE} bytes")]
    TooBig { dir: String, path: String },
    #[error("directory {dir}: {path}: not a PLS, M3U or JSON station list")]
    NotAList { dir: String, path: String },
    #[error("directory {dir}: {path}: {source}")]
    List {
        dir: String,
        path: String,
        source: playlist::PlaylistError,
    },
    #[error("directory {dir}: {source}")]
    Http {
        dir: String,
        source: http::HttpError,
    },
    #[error("directory {dir}: {path}: {}", .errors.join("; "))]
    Commands {
        dir: String,
        path: String,
        errors: Vec<String>,
    },
}

/// Reads the directory's entries, numbered into its block.
pub fn load(cfg: &DirectoryConfig) -> Result<Vec<DirectoryEntry>, DirectoryError> {
    let dir = cfg.name.clone();
    let (first, count) = cfg.block.span().map_err(|why| DirectoryError::Block {
        dir: dir.clone(),
        why,
    })?;
    match &cfg.source {
        DirectorySource::List(loc) => {
            let lower = loc.to_ascii_lowercase();
            let (base, kind, text) = if lower.starts_with("http://")
                || lower.starts_with("https://")
            {
                let list =
                    http::fetch_list(loc, &cfg.http).map_err(|source| DirectoryError::Http {
                        dir: dir.clone(),
                        source,
                    })?;
                let kind = playlist::detect(list.content_type.as_deref(), &list.body)
                    .or_else(|| kind_by_name(&list.url))
                    .ok_or_else(|| DirectoryError::NotAList {
                        dir: dir.clone(),
                        path: list.url.clone(),
                    })?;
                let text = String::from_utf8_lossy(&list.body).into_owned();
                (Some(list.url), kind, text)
            } else {
                let body = read_file(&dir, Path::new(loc))?;
                let kind = kind_by_name(loc)
                    .or_else(|| playlist::detect(None, &body))
                    .ok_or_else(|| DirectoryError::NotAList {
                        dir: dir.clone(),
                        path: loc.clone(),
                    })?;
                (None, kind, String::from_utf8_lossy(&body).into_owned())
            };
            let entries = playlist::parse(kind, &text).map_err(|source| DirectoryError::List {
                dir: dir.clone(),
                path: loc.clone(),
                source,
            })?;
            Ok(from_list(&dir, first, count, base.as_deref(), entries))
        }
        DirectorySource::CommandFile(path) => {
            let body = read_file(&dir, path)?;
            from_commands(
                &dir,
                first,
                count,
                &path.display().to_string(),
                &String::from_utf8_lossy(&body),
            )
        }
        DirectorySource::Commands(text) => from_commands(&dir, first, count, "commands", text),
    }
}

fn kind_by_name(name: &str) -> Option<playlist::Kind> {
    let path = name
        .split(['?', '#'])
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase();
    if path.ends_with(".pls") {
        Some(playlist::Kind::Pls)
    } else if path.ends_with(".m3u") || path.ends_with(".m3u8") {
        Some(playlist::Kind::M3u)
    } else if path.ends_with(".json") {
        Some(playlist::Kind::Json)
    } else {
        None
    }
}

fn read_file(dir: &str, path: &Path) -> Result<Vec<u8>, DirectoryError> {
    use std::io::Read;
    let err = |source| DirectoryError::Read {
        dir: dir.into(),
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut body = vec![];
    f.take(MAX_FILE + 1).read_to_end(&mut body).map_err(err)?;
    if body.len() as u64 > MAX_FILE {
        return Err(DirectoryError::TooBig {
            dir: dir.into(),
            path: path.display().to_string(),
        });
    }
    Ok(body)
}

/// Numbers a station list into the block (`base`: the URL it came from, for relative
/// entries).
pub fn from_list(
    dir: &str,
    first: u32,
    count: u32,
    base: Option<&str>,
    entries: Vec<playlist::Entry>,
) -> Vec<DirectoryEntry> {
    let total = entries.len();
    if total as u64 > u64::from(count) {
        warn!(
            "directory {dir}: {total} entries, {count} numbers: entries past {count} are left out"
        );
    }
    entries
        .into_iter()
        .take(count as usize)
        .enumerate()
        .map(|(i, e)| DirectoryEntry {
            number: first + i as u32,
            name: e.name.unwrap_or_else(|| format!("{dir} {i}")),
            spec: SourceSpec::Url {
                url: match base {
                    Some(b) => http::join_url(b, &e.url),
                    None => e.url,
                },
            },
        })
        .collect()
}

fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads a command table (`N = command args…` lines); every bad line is reported.
pub fn from_commands(
    dir: &str,
    first: u32,
    count: u32,
    path: &str,
    text: &str,
) -> Result<Vec<DirectoryEntry>, DirectoryError> {
    let mut out: Vec<DirectoryEntry> = vec![];
    let mut errors = vec![];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((num, cmd)) = line.split_once('=') else {
            errors.push(format!("line {n}: expected `N = command`"));
            continue;
        };
        let Some(offset) = parse_number(num) else {
            errors.push(format!("line {n}: {:?} is not a number", num.trim()));
            continue;
        };
        if offset >= count {
            errors.push(format!(
                "line {n}: entry {offset} is outside the block of {count}"
            ));
            continue;
        }
        let number = first + offset;
        if out.iter().any(|e| e.number == number) {
            errors.push(format!("line {n}: entry {offset} is given twice"));
            continue;
        }
        match shell_words::split(cmd) {
            Ok(argv) if !argv.is_empty() => out.push(DirectoryEntry {
                number,
                name: format!("{dir} {offset}"),
                spec: SourceSpec::Command { argv },
            }),
            Ok(_) => errors.push(format!("line {n}: the command is empty")),
            Err(e) => errors.push(format!("line {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(DirectoryError::Commands {
            dir: dir.into(),
            path: path.into(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(block: NumberBlock, source: DirectorySource) -> DirectoryConfig {
        DirectoryConfig {
            name: "radio".into(),
            block,
            source,
            http: HttpConfig::default(),
        }
    }

    #[test]
    fn blocks() {
        let b = NumberBlock::Bits {
            high: 0x9000,
            low_bits: 16,
        };
        assert_eq!(b.span(), Ok((0x9000_0000, 0x1_0000)));
        assert!(b.contains(0x9000_ffff) && !b.contains(0x9001_0000) && !b.contains(0x8fff_ffff));
        let r = NumberBlock::Range {
            first: 100,
            count: 3,
        };
        assert!(r.contains(102) && !r.contains(103));
        assert!(NumberBlock::Range { first: 1, count: 0 }.span().is_err());
        assert!(
            NumberBlock::Range {
                first: u32::MAX,
                count: 2
            }
            .span()
            .is_err()
        );
        assert!(
            NumberBlock::Bits {
                high: 1,
                low_bits: 32
            }
            .span()
            .is_err()
        );
        assert!(
            NumberBlock::Bits {
                high: 0x1_0000,
                low_bits: 16
            }
            .span()
            .is_err()
        );
    }

    #[test]
    fn a_local_list_fills_the_block_in_order() {
        let dir = std::env::temp_dir().join(format!("dir-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stations.m3u");
        std::fs::write(
            &path,
            "#EXTM3U\n#EXTINF:-1,One\nhttp://a/1\nhttp://a/2\n#EXTINF:-1,Three\nhttp://a/3\n",
        )
        .unwrap();
        let got = load(&cfg(
            NumberBlock::Range {
                first: 10,
                count: 2,
            },
            DirectorySource::List(path.display().to_string()),
        ))
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            got,
            vec![
                DirectoryEntry {
                    number: 10,
                    name: "One".into(),
                    spec: SourceSpec::Url {
                        url: "http://a/1".into()
                    }
                },
                DirectoryEntry {
                    number: 11,
                    name: "radio 1".into(),
                    spec: SourceSpec::Url {
                        url: "http://a/2".into()
                    }
                },
            ]
        );
    }

    #[test]
    fn missing_or_unknown_lists_say_which() {
        let e = load(&cfg(
            NumberBlock::Range { first: 0, count: 4 },
            DirectorySource::List("/nonexistent/list.pls".into()),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("directory radio") && e.contains("/nonexistent/list.pls"),
            "{e}"
        );
    }

    #[test]
    fn relative_entries_follow_the_list_url() {
        let got = from_list(
            "d",
            5,
            10,
            Some("http://h/lists/x.pls"),
            vec![playlist::Entry {
                name: None,
                url: "live.mp3".into(),
            }],
        );
        assert_eq!(
            got[0].spec,
            SourceSpec::Url {
                url: "http://h/lists/live.mp3".into()
            }
        );
    }

    #[test]
    fn command_tables() {
        let text = "# Astra 28.2E\n\
                    0 = dvblast -f 11426500 -v 18 -5 DVBS -s 27500000 -F 23\n\
                    0x2 = ffmpeg -re -f lavfi -i 'sine=frequency=440' -f rtp {rtp}\n";
        let got = load(&cfg(
            NumberBlock::Bits {
                high: 0x10,
                low_bits: 8,
            },
            DirectorySource::Commands(text.into()),
        ))
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].number, 0x1000);
        assert_eq!(got[1].number, 0x1002);
        assert_eq!(got[1].name, "radio 2");
        let SourceSpec::Command { argv } = &got[1].spec else {
            panic!("a command")
        };
        assert_eq!(argv[5], "sine=frequency=440");
        assert_eq!(argv.last().unwrap(), "{rtp}");
    }

    #[test]
    fn bad_command_lines_are_all_reported() {
        let text = "x = a\n9 = b\nno equals\n1 = 'unclosed\n2 =\n3 = ok\n3 = again\n";
        let e = from_commands("d", 0, 4, "cmds", text)
            .unwrap_err()
            .to_string();
        for want in [
            "line 1: \"x\" is not a number",
            "line 2: entry 9 is outside the block of 4",
            "line 3: expected `N = command`",
            "line 4:",
            "line 5: the command is empty",
            "line 7: entry 3 is given twice",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
        assert!(!e.contains("line 6"), "{e}");
    }
}
