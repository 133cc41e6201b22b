//! Text from the network made safe to print on a terminal: mDNS names from untrusted
//! VLANs may hold escape sequences, carriage returns or bidirectional overrides meant
//! to rewrite what an operator sees.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1), every bidirectional override or
/// isolate, and the backslash written as an escape (`\x1b`, `\u{202e}`, `\\`), so the
/// printed line is one line and shows exactly what was sent.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_kept() {
        assert!(matches!(escape("Kitchen speaker (2)"), Cow::Borrowed(_)));
        assert_eq!(escape("Küche"), "Küche");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("x\r\ny\tz\0"), "x\\x0d\\x0ay\\x09z\\x00");
        assert_eq!(escape("\u{85}\u{7f}"), "\\x85\\x7f");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(escape("a\\x1b"), "a\\\\x1b");
    }

    proptest! {
        /// Whatever comes in, what goes out holds no control character and reads back.
        #[test]
        fn output_is_printable_and_unambiguous(s in any::<String>()) {
            let e = escape(&s);
            prop_assert!(!e.chars().any(|c| c.is_control()));
            prop_assert!(!e.contains('\u{202e}'), "{}", e);
            prop_assert_eq!(unescape(&e), s);
        }
    }

    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('x') => {
                    let h: String = it.by_ref().take(2).collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                Some('u') => {
                    let h: String = it.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    out.push(char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap());
                }
                other => panic!("bad escape {other:?}"),
            }
        }
        out
    }
}
