//! Where each field of a `site.toml` stands, so errors found after parsing (by
//! serde or by validation) can still name the line and column.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Key and value spans of every field, by path (`vlan[1].bridge`, `reflector[0].addresses.iot`).
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    key: Option<Range<usize>>,
    value: Range<usize>,
}

impl SpanIndex {
    /// Index a document that already parsed; a document that does not parse gives an empty index.
    pub fn build(text: &str) -> SpanIndex {
        let (root, _errors) = DeTable::parse_recoverable(text);
        SpanIndex::of(&root)
    }

    /// Index a document parsed already.
    pub fn of(root: &toml::Spanned<DeTable<'_>>) -> SpanIndex {
        let mut index = SpanIndex::default();
        let span = root.span();
        index.entries.insert(
            String::new(),
            Entry {
                key: None,
                value: span,
            },
        );
        index.walk_table("", root.get_ref());
        index
    }

    fn walk_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.entries.insert(
                path.clone(),
                Entry {
                    key: Some(key.span()),
                    value: value.span(),
                },
            );
            self.walk_value(&path, value.get_ref());
        }
    }

    fn walk_value(&mut self, path: &str, value: &DeValue<'_>) {
        match value {
            DeValue::Table(t) => self.walk_table(path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.entries.insert(
                        p.clone(),
                        Entry {
                            key: None,
                            value: item.span(),
                        },
                    );
                    self.walk_value(&p, item.get_ref());
                }
            }
            _ => {}
        }
    }

    /// Where the value of `path` starts; for a path not in the file (a missing key),
    /// the nearest enclosing one that is.
    pub fn value_at(&self, path: &str) -> usize {
        self.lookup(path, false)
    }

    /// Where the key of `path` starts (for unknown keys); else as `value_at`.
    pub fn key_at(&self, path: &str) -> usize {
        self.lookup(path, true)
    }

    fn lookup(&self, path: &str, want_key: bool) -> usize {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.get(p) {
                return match (&e.key, want_key) {
                    (Some(k), true) => k.start,
                    _ => e.value.start,
                };
            }
            match parent(p) {
                Some(up) => p = up,
                None => return 0,
            }
        }
    }

    /// The deepest field whose value contains `offset` (to name the field of a syntax error).
    pub fn path_containing(&self, offset: usize) -> String {
        self.entries
            .iter()
            .filter(|(_, e)| {
                e.value.contains(&offset) || e.key.as_ref().is_some_and(|k| k.contains(&offset))
            })
            .max_by_key(|(p, e)| (p.len(), std::cmp::Reverse(e.value.len())))
            .map(|(p, _)| p.clone())
            .unwrap_or_default()
    }
}

/// `vlan[1].bridge` → `vlan[1]` → `vlan` → `` → None.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Where each line of a text starts, computed once, so placing many errors stays linear.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// 1-based line and column (in characters) of a byte offset of `text`, the text
    /// the index was built from.
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(text, offset.min(text.len()));
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let col = text[start..offset].chars().count() + 1;
        (line, col)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(text, offset)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[site]\nname = \"lab\"\n\n[[vlan]]\nname = \"iot\"\nbridge = \"br-iot\"\n\n[[vlan]]\nname = \"guest\"\n  bridge = \"br-g\"\n";

    #[test]
    fn finds_values_and_keys() {
        let idx = SpanIndex::build(DOC);
        assert_eq!(line_col(DOC, idx.value_at("site.name")), (2, 8));
        assert_eq!(line_col(DOC, idx.value_at("vlan[1].bridge")), (10, 12));
        assert_eq!(line_col(DOC, idx.key_at("vlan[1].bridge")), (10, 3));
    }

    #[test]
    fn missing_paths_fall_back_to_the_enclosing_table() {
        let idx = SpanIndex::build(DOC);
        let at = idx.value_at("vlan[1].address");
        assert_eq!(idx.path_containing(at), "vlan[1]");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("vlan[1].bridge"), Some("vlan[1]"));
        assert_eq!(parent("vlan[1]"), Some("vlan"));
        assert_eq!(parent("vlan"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn columns_count_characters() {
        let t = "a = \"é\"\nb = 1\n";
        assert_eq!(line_col(t, t.find("b").unwrap()), (2, 1));
        assert_eq!(line_col(t, t.find('"').unwrap() + 3), (1, 7));
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, t.len()), (3, 1));
        assert_eq!(line_col(t, t.find('\n').unwrap()), (1, 8));
    }
}
