//! Station playlists: PLS, M3U/M3U8 (plain and extended) and JSON station lists (an array
//! of URL strings, or of objects with `url`/`url_resolved` and `name`, as radio-browser
//! answers) → entries (name, url), in file order.
//!
//! Pure functions of text; they never panic and return at most [`MAX_ENTRIES`] entries.
//! URLs are returned as written (relative ones are resolved by the caller, who knows
//! where the list came from).

use serde_json::Value;

/// The most entries read from one list (the rest are ignored).
pub const MAX_ENTRIES: usize = 10_000;

/// The longest URL or name kept (longer ones are skipped or cut).
pub const MAX_FIELD: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pls,
    M3u,
    Json,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pls => "PLS",
            Kind::M3u => "M3U",
            Kind::Json => "JSON",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaylistError {
    #[error("the {0} playlist lists no stream URL")]
    Empty(&'static str),
    #[error("this is an HLS media playlist (#EXT-X- tags): a list of segments, not of stations")]
    Hls,
    #[error("the JSON is not a station list: {0}")]
    Json(String),
}

/// What a content type (and, failing that, the first bytes) says the body is: a playlist
/// of some kind, or `None` (media, or something else).
pub fn detect(content_type: Option<&str>, body_start: &[u8]) -> Option<Kind> {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match ct.as_str() {
        "audio/x-scpls" | "application/pls+xml" | "audio/scpls" => return Some(Kind::Pls),
        "audio/x-mpegurl"
        | "audio/mpegurl"
        | "application/x-mpegurl"
        | "application/vnd.apple.mpegurl"
        | "audio/m3u" => return Some(Kind::M3u),
        "application/json" | "text/json" => return Some(Kind::Json),
        _ => {}
    }
    // Servers often send playlists as text/plain or application/octet-stream: sniff.
    if !(ct.is_empty()
        || ct.starts_with("text/plain")
        || ct == "application/octet-stream"
        || ct == "binary/octet-stream")
    {
        return None;
    }
    let head = String::from_utf8_lossy(&body_start[..body_start.len().min(512)]);
    let head = head.trim_start_matches('\u{feff}').trim_start();
    if head
        .get(..10)
        .is_some_and(|h| h.eq_ignore_ascii_case("[playlist]"))
    {
        Some(Kind::Pls)
    } else if head.starts_with("#EXTM3U") {
        Some(Kind::M3u)
    } else if head.starts_with('[') || head.starts_with('{') {
        Some(Kind::Json)
    } else if ct.starts_with("text/plain")
        && head
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("http://") || l.starts_with("https://"))
    {
        // A bare list of URLs served as text.
        Some(Kind::M3u)
    } else {
        None
    }
}

/// Parses `text` as a playlist of `kind`.
pub fn parse(kind: Kind, text: &str) -> Result<Vec<Entry>, PlaylistError> {
    let entries = match kind {
        Kind::Pls => parse_pls(text),
        Kind::M3u => parse_m3u(text)?,
        Kind::Json => parse_json(text)?,
    };
    if entries.is_empty() {
        return Err(PlaylistError::Empty(kind.as_str()));
    }
    Ok(entries)
}

/// A field worth keeping: trimmed, not empty, not absurdly long.
fn field(s: &str) -> Option<String> {
    let s = s.trim().trim_matches('\0');
    (!s.is_empty() && s.len() <= MAX_FIELD).then(|| s.to_string())
}

/// PLS: `[playlist]`, `FileN=url`, `TitleN=name` (any order, keys in any case), sorted by N.
pub fn parse_pls(text: &str) -> Vec<Entry> {
    let mut files: Vec<(u32, String)> = vec![];
    let mut titles: Vec<(u32, String)> = vec![];
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let starts = |p: &str| {
            k.len() > p.len() && k.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        let (prefix, target) = if starts("file") {
            (4, &mut files)
        } else if starts("title") {
            (5, &mut titles)
        } else {
            continue;
        };
        let Ok(n) = k[prefix..].parse::<u32>() else {
            continue;
        };
        if let Some(v) = field(v)
            && target.len() < MAX_ENTRIES
        {
            target.push((n, v));
        }
    }
    files.sort_by_key(|(n, _)| *n);
    files.dedup_by_key(|(n, _)| *n);
    files
        .into_iter()
        .map(|(n, url)| Entry {
            name: titles.iter().find(|(t, _)| *t == n).map(|(_, v)| v.clone()),
            url,
        })
        .collect()
}

/// M3U and M3U8, plain or extended: every non-comment line is a URL; `#EXTINF:…,Name`
/// names the next one. An HLS media playlist (`#EXT-X-TARGETDURATION`, `#EXT-X-MEDIA-SEQUENCE`)
/// is refused: its lines are segments. A master playlist (`#EXT-X-STREAM-INF`) lists
/// variant playlists and is read as a list of those.
pub fn parse_m3u(text: &str) -> Result<Vec<Entry>, PlaylistError> {
    let mut out = vec![];
    let mut name: Option<String> = None;
    for line in text.lines() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() {
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            if tag.starts_with("EXT-X-TARGETDURATION") || tag.starts_with("EXT-X-MEDIA-SEQUENCE") {
                return Err(PlaylistError::Hls);
            }
            if let Some(info) = tag.strip_prefix("EXTINF:") {
                name = info.split_once(',').and_then(|(_, n)| field(n));
            }
            continue;
        }
        if let Some(url) = field(line) {
            out.push(Entry {
                name: name.take(),
                url,
            });
            if out.len() >= MAX_ENTRIES {
                break;
            }
        }
    }
    Ok(out)
}

/// JSON: `["http://…", …]`, `[{"name": …, "url": …}, …]` (radio-browser's `url_resolved`
/// is preferred to its `url`), or an object holding such an array under `stations`.
pub fn parse_json(text: &str) -> Result<Vec<Entry>, PlaylistError> {
    let v: Value = serde_json::from_str(text).map_err(|e| PlaylistError::Json(e.to_string()))?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("stations") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(PlaylistError::Json(
                    "an object without a \"stations\" array".into(),
                ));
            }
        },
        _ => {
            return Err(PlaylistError::Json("neither an array nor an object".into()));
        }
    };
    let mut out = vec![];
    for item in list.iter().take(MAX_ENTRIES) {
        let entry = match item {
            Value::String(s) => field(s).map(|url| Entry { name: None, url }),
            Value::Object(o) => {
                let s = |k: &str| o.get(k).and_then(Value::as_str).and_then(field);
                s("url_resolved").or_else(|| s("url")).map(|url| Entry {
                    name: s("name"),
                    url,
                })
            }
            _ => None,
        };
        out.extend(entry);
    }
    Ok(out)
}

/// Renders entries as a PLS file (for tests and for anyone who wants to write one).
pub fn render_pls(entries: &[Entry]) -> String {
    let mut s = String::from("[playlist]\n");
    for (i, e) in entries.iter().enumerate() {
        s.push_str(&format!("File{}={}\n", i + 1, e.url));
        if let Some(n) = &e.name {
            s.push_str(&format!("Title{}={}\n", i + 1, n));
        }
    }
    s.push_str(&format!("NumberOfEntries={}\nVersion=2\n", entries.len()));
    s
}

/// Renders entries as an extended M3U file.
pub fn render_m3u(entries: &[Entry]) -> String {
    let mut s = String::from("#EXTM3U\n");
    for e in entries {
        if let Some(n) = &e.name {
            s.push_str(&format!("#EXTINF:-1,{n}\n"));
        }
        s.push_str(&e.url);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(name: Option<&str>, url: &str) -> Entry {
        Entry {
            name: name.map(str::to_string),
            url: url.to_string(),
        }
    }

    #[test]
    fn pls_in_number_order_with_titles() {
        let text = "[playlist]\r\nNumberOfEntries=2\r\nFile2=http://b/\r\nfile1=http://a/\r\n\
                    Title1=Station A\r\nLength1=-1\r\nVersion=2\r\n";
        assert_eq!(
            parse(Kind::Pls, text).unwrap(),
            vec![e(Some("Station A"), "http://a/"), e(None, "http://b/")]
        );
    }

    #[test]
    fn empty_pls_says_so() {
        assert_eq!(
            parse(Kind::Pls, "[playlist]\nNumberOfEntries=0\n"),
            Err(PlaylistError::Empty("PLS"))
        );
    }

    #[test]
    fn m3u_extended_and_plain() {
        let text = "#EXTM3U\n#EXTINF:-1,Jazz FM\nhttp://jazz/stream\n\n# a comment\nhttp://two/\n";
        assert_eq!(
            parse(Kind::M3u, text).unwrap(),
            vec![
                e(Some("Jazz FM"), "http://jazz/stream"),
                e(None, "http://two/")
            ]
        );
        assert_eq!(
            parse(Kind::M3u, "http://only/\n").unwrap(),
            vec![e(None, "http://only/")]
        );
    }

    #[test]
    fn hls_is_refused() {
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nseg1.ts\n";
        assert_eq!(parse(Kind::M3u, text), Err(PlaylistError::Hls));
    }

    #[test]
    fn json_lists() {
        assert_eq!(
            parse(Kind::Json, r#"["http://a/", 5, "http://b/"]"#).unwrap(),
            vec![e(None, "http://a/"), e(None, "http://b/")]
        );
        let rb = r#"[{"name":"R","url":"http://pls/x.pls","url_resolved":"http://r/live"},
                     {"name":"S","url":"http://s/"}, {"name":"no url"}]"#;
        assert_eq!(
            parse(Kind::Json, rb).unwrap(),
            vec![e(Some("R"), "http://r/live"), e(Some("S"), "http://s/")]
        );
        assert_eq!(
            parse(Kind::Json, r#"{"stations":["http://a/"]}"#).unwrap(),
            vec![e(None, "http://a/")]
        );
        assert!(matches!(
            parse(Kind::Json, r#"{"x":1}"#),
            Err(PlaylistError::Json(_))
        ));
        assert!(matches!(
            parse(Kind::Json, "not json"),
            Err(PlaylistError::Json(_))
        ));
    }

    #[test]
    fn detection() {
        assert_eq!(detect(Some("audio/x-scpls"), b""), Some(Kind::Pls));
        assert_eq!(
            detect(Some("audio/x-mpegurl; charset=utf-8"), b""),
            Some(Kind::M3u)
        );
        assert_eq!(detect(Some("application/json"), b"[]"), Some(Kind::Json));
        assert_eq!(
            detect(Some("text/plain"), b"\n[Playlist]\nFile1=x"),
            Some(Kind::Pls)
        );
        assert_eq!(
            detect(Some("application/octet-stream"), b"#EXTM3U\n"),
            Some(Kind::M3u)
        );
        assert_eq!(detect(Some("text/plain"), b"http://a/\n"), Some(Kind::M3u));
        assert_eq!(detect(Some("audio/mpeg"), b"[playlist]"), None);
        assert_eq!(detect(Some("text/html"), b"[playlist]"), None);
        assert_eq!(detect(None, b"ID3\x03"), None);
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            proptest::option::of("[A-Za-z0-9][A-Za-z0-9 .&-]{0,30}[A-Za-z0-9]"),
            "https?://[a-z0-9.]{1,20}(:[0-9]{1,5})?/[A-Za-z0-9/._;?=&-]{0,40}",
        )
            .prop_map(|(name, url)| Entry { name, url })
    }

    proptest! {
        #[test]
        fn pls_roundtrip(entries in proptest::collection::vec(entry(), 1..20)) {
            let text = render_pls(&entries);
            prop_assert_eq!(detect(None, text.as_bytes()), Some(Kind::Pls));
            prop_assert_eq!(parse(Kind::Pls, &text).unwrap(), entries);
        }

        #[test]
        fn m3u_roundtrip(entries in proptest::collection::vec(entry(), 1..20)) {
            let text = render_m3u(&entries);
            prop_assert_eq!(detect(Some("text/plain"), text.as_bytes()), Some(Kind::M3u));
            prop_assert_eq!(parse(Kind::M3u, &text).unwrap(), entries);
        }

        #[test]
        fn json_roundtrip(entries in proptest::collection::vec(entry(), 1..20)) {
            let v: Vec<Value> = entries.iter().map(|e| serde_json::json!({"name": e.name, "url": e.url})).collect();
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(parse(Kind::Json, &text).unwrap(), entries);
        }

        /// Any text, every parser: no panic, bounded output, no empty URL.
        #[test]
        fn random_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4000),
                                    ct in proptest::option::of("[a-z/+;= -]{0,30}")) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = detect(ct.as_deref(), &bytes);
            for kind in [Kind::Pls, Kind::M3u, Kind::Json] {
                if let Ok(entries) = parse(kind, &text) {
                    prop_assert!(!entries.is_empty() && entries.len() <= MAX_ENTRIES);
                    prop_assert!(entries.iter().all(|e| !e.url.is_empty() && e.url.len() <= MAX_FIELD));
                }
            }
        }

        /// Valid playlists with bytes flipped, cut or doubled: no panic.
        #[test]
        fn mutated_playlists_never_panic(
            entries in proptest::collection::vec(entry(), 1..8),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
            cut in any::<usize>(),
        ) {
            let v: Vec<Value> = entries.iter().map(|e| serde_json::json!({"name": e.name, "url": e.url})).collect();
            for text in [render_pls(&entries), render_m3u(&entries), serde_json::to_string(&v).unwrap()] {
                let mut b = text.into_bytes();
                for &(at, x) in &flips {
                    let n = b.len();
                    b[at % n] = x;
                }
                b.truncate(cut % (b.len() + 1));
                let t = String::from_utf8_lossy(&b);
                for kind in [Kind::Pls, Kind::M3u, Kind::Json] {
                    let _ = parse(kind, &t);
                }
                let _ = detect(Some("text/plain"), &b);
            }
        }
    }
}
