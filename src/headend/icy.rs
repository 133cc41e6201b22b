//! The ICY (SHOUTcast/Icecast) metadata demuxer.
//!
//! A client that sends `Icy-MetaData: 1` gets `icy-metaint: N` in the answer; the body is
//! then N media bytes, one length byte L, L*16 bytes of metadata (`StreamTitle='…';` padded
//! with NULs), N media bytes, and so on. Quotes inside values are not escaped, so a value
//! runs up to the next `';`. [`IcyDemux`] splits any byte stream (fed in pieces of any
//! size) into media bytes and metadata blocks; it never panics and holds at most one block
//! (4080 bytes).

/// The largest `icy-metaint` accepted (servers use 8192 or 16000).
pub const MAX_METAINT: usize = 1 << 20;

/// The largest metadata block: the length byte counts 16-byte units.
pub const MAX_BLOCK: usize = 255 * 16;

/// One metadata block, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IcyMetadata {
    /// `StreamTitle`, if the block has it.
    pub title: Option<String>,
    /// `StreamUrl`, if the block has it.
    pub url: Option<String>,
    /// Every `key='value'` pair, in order (title and url included).
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many media bytes before the next length byte.
    Media(usize),
    /// The next byte is a length byte.
    Length,
    /// This many metadata bytes still to come.
    Meta(usize),
}

/// Splits an ICY body into media bytes and metadata blocks.
#[derive(Debug, Clone)]
pub struct IcyDemux {
    metaint: Option<usize>,
    state: State,
    block: Vec<u8>,
}

/// Parses an `icy-metaint` header value: a whole number from 1 to [`MAX_METAINT`].
pub fn parse_metaint(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_METAINT).contains(&n) => Ok(n),
        _ => Err(format!(
            "icy-metaint {v:?} is not a number from 1 to {MAX_METAINT}"
        )),
    }
}

impl IcyDemux {
    /// `metaint`: the `icy-metaint` value (`None`: no metadata, every byte is media).
    /// Values above [`MAX_METAINT`] are clamped; 0 means no metadata.
    pub fn new(metaint: Option<usize>) -> IcyDemux {
        let metaint = metaint.filter(|&n| n > 0).map(|n| n.min(MAX_METAINT));
        IcyDemux {
            metaint,
            state: match metaint {
                Some(n) => State::Media(n),
                None => State::Media(usize::MAX),
            },
            block: Vec::new(),
        }
    }

    /// Feeds the next bytes of the body: media bytes are appended to `media`, and every
    /// metadata block completed by these bytes is appended to `metas` (empty blocks,
    /// the common case, give nothing).
    pub fn feed(&mut self, mut input: &[u8], media: &mut Vec<u8>, metas: &mut Vec<IcyMetadata>) {
        let Some(metaint) = self.metaint else {
            media.extend_from_slice(input);
            return;
        };
        while !input.is_empty() {
            match self.state {
                State::Media(left) => {
                    let n = left.min(input.len());
                    media.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if left == n {
                        State::Length
                    } else {
                        State::Media(left - n)
                    };
                }
                State::Length => {
                    let len = usize::from(input[0]) * 16;
                    input = &input[1..];
                    self.block.clear();
                    self.state = if len == 0 {
                        State::Media(metaint)
                    } else {
                        State::Meta(len)
                    };
                }
                State::Meta(left) => {
                    let n = left.min(input.len());
                    self.block.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if left == n {
                        metas.push(parse_block(&self.block));
                        self.block.clear();
                        self.state = State::Media(metaint);
                    } else {
                        self.state = State::Meta(left - n);
                    }
                }
            }
        }
    }
}

/// Decodes text that should be UTF-8 but may be Latin-1 (icecast sends Latin-1 titles
/// unless the mount says `<charset>UTF-8</charset>`).
pub fn decode_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|&c| char::from(c)).collect(),
    }
}

/// Parses one metadata block: `Key='value';Key2='value2';` followed by NUL padding.
/// Anything malformed ends the parse; what was read so far is kept.
pub fn parse_block(block: &[u8]) -> IcyMetadata {
    let end = block
        .iter()
        .rposition(|&b| b != 0)
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut rest = &block[..end.min(MAX_BLOCK)];
    let mut meta = IcyMetadata::default();
    loop {
        // Skip separators and stray whitespace between pairs.
        while let [b';' | b' ' | b'\r' | b'\n' | 0, tail @ ..] = rest {
            rest = tail;
        }
        let Some(eq) = rest.iter().position(|&b| b == b'=') else {
            break;
        };
        let key = decode_text(&rest[..eq]).trim().to_string();
        rest = &rest[eq + 1..];
        let value: &[u8];
        if let [b'\'', tail @ ..] = rest {
            // Up to the next `';`; failing that, up to the last quote, or the end.
            match find(tail, b"';") {
                Some(i) => {
                    value = &tail[..i];
                    rest = &tail[i + 2..];
                }
                None => {
                    let stop = tail.iter().rposition(|&b| b == b'\'').unwrap_or(tail.len());
                    value = &tail[..stop];
                    rest = &[];
                }
            }
        } else {
            let stop = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
            value = &rest[..stop];
            rest = &rest[stop..];
        }
        if key.is_empty() {
            continue;
        }
        let value = decode_text(value);
        if key.eq_ignore_ascii_case("StreamTitle") {
            meta.title = Some(value.clone());
        } else if key.eq_ignore_ascii_case("StreamUrl") {
            meta.url = Some(value.clone());
        }
        meta.fields.push((key, value));
    }
    meta
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Builds one metadata block (length byte included) for `text`, as a server does: used by
/// tests and by anything that needs to speak ICY. Text longer than [`MAX_BLOCK`] is cut.
pub fn encode_block(text: &[u8]) -> Vec<u8> {
    let text = &text[..text.len().min(MAX_BLOCK)];
    let units = text.len().div_ceil(16);
    let mut out = Vec::with_capacity(1 + units * 16);
    out.push(units as u8);
    out.extend_from_slice(text);
    out.resize(1 + units * 16, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn demux_all(
        metaint: Option<usize>,
        input: &[u8],
        splits: &[usize],
    ) -> (Vec<u8>, Vec<IcyMetadata>) {
        let mut d = IcyDemux::new(metaint);
        let (mut media, mut metas) = (vec![], vec![]);
        let mut rest = input;
        for &s in splits {
            let s = s.min(rest.len());
            d.feed(&rest[..s], &mut media, &mut metas);
            rest = &rest[s..];
        }
        d.feed(rest, &mut media, &mut metas);
        (media, metas)
    }

    #[test]
    fn title_and_url() {
        let m = parse_block(b"StreamTitle='Artist - It's a song';StreamUrl='http://x/';\0\0\0");
        assert_eq!(m.title.as_deref(), Some("Artist - It's a song"));
        assert_eq!(m.url.as_deref(), Some("http://x/"));
        assert_eq!(m.fields.len(), 2);
    }

    #[test]
    fn unterminated_value_is_kept() {
        let m = parse_block(b"StreamTitle='half a title");
        assert_eq!(m.title.as_deref(), Some("half a title"));
        let m = parse_block(b"StreamTitle='closed'\0\0");
        assert_eq!(m.title.as_deref(), Some("closed"));
    }

    #[test]
    fn latin1_titles_decode() {
        let m = parse_block(b"StreamTitle='Caf\xe9';");
        assert_eq!(m.title.as_deref(), Some("Café"));
        let m = parse_block("StreamTitle='Café';".as_bytes());
        assert_eq!(m.title.as_deref(), Some("Café"));
    }

    #[test]
    fn garbage_gives_nothing() {
        assert_eq!(parse_block(b"no equals sign here"), IcyMetadata::default());
        assert_eq!(parse_block(b""), IcyMetadata::default());
        assert_eq!(parse_block(b"=';;'"), IcyMetadata::default());
    }

    #[test]
    fn demux_splits_media_and_blocks() {
        let mut s = b"abcd".to_vec();
        s.extend(encode_block(b"StreamTitle='One';"));
        s.extend(b"efgh");
        s.push(0);
        s.extend(b"ij");
        let (media, metas) = demux_all(Some(4), &s, &[1, 5, 3]);
        assert_eq!(media, b"abcdefghij");
        assert_eq!(metas.len(), 1);
        assert_eq!(metas[0].title.as_deref(), Some("One"));
    }

    #[test]
    fn no_metaint_is_all_media() {
        let (media, metas) = demux_all(None, b"\x05StreamTitle='x';", &[2]);
        assert_eq!(media, b"\x05StreamTitle='x';");
        assert!(metas.is_empty());
        let (media, _) = demux_all(Some(0), b"abc", &[]);
        assert_eq!(media, b"abc");
    }

    #[test]
    fn metaint_values() {
        assert_eq!(parse_metaint("16000"), Ok(16000));
        assert!(parse_metaint("0").is_err());
        assert!(parse_metaint("-1").is_err());
        assert!(parse_metaint("99999999999").is_err());
    }

    proptest! {
        /// Any bytes, any metaint, any split: no panic, and the media bytes are exactly
        /// what the framing says.
        #[test]
        fn random_input_never_panics(
            input in proptest::collection::vec(any::<u8>(), 0..20_000),
            metaint in prop_oneof![Just(None), (0usize..5000).prop_map(Some)],
            splits in proptest::collection::vec(0usize..3000, 0..8),
        ) {
            let (media, metas) = demux_all(metaint, &input, &splits);
            prop_assert!(media.len() <= input.len());
            for m in &metas {
                prop_assert!(m.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= 2 * MAX_BLOCK);
            }
            // Feeding in one piece gives the same result as in pieces.
            let whole = demux_all(metaint, &input, &[]);
            prop_assert_eq!(whole, (media, metas));
        }

        #[test]
        fn random_blocks_never_panic(block in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let m = parse_block(&block);
            prop_assert!(m.fields.len() <= block.len());
        }

        /// A stream built as a server builds it comes apart into the same media and titles.
        #[test]
        fn roundtrip(
            metaint in 1usize..600,
            titles in proptest::collection::vec(proptest::option::of("[a-zA-Z0-9 ',;=.-]{0,300}"), 1..6),
            seed in any::<u8>(),
            splits in proptest::collection::vec(0usize..700, 0..10),
        ) {
            let mut stream = vec![];
            let mut media: Vec<u8> = vec![];
            let mut want = vec![];
            for t in titles.iter().flatten() {
                prop_assume!(!t.contains("';"));
            }
            for (i, t) in titles.iter().enumerate() {
                let chunk: Vec<u8> = (0..metaint).map(|j| (i + j) as u8 ^ seed).collect();
                stream.extend(&chunk);
                media.extend(&chunk);
                match t {
                    Some(t) => {
                        let text = format!("StreamTitle='{t}';");
                        stream.extend(encode_block(text.as_bytes()));
                        want.push(t.clone());
                    }
                    None => stream.push(0),
                }
            }
            let (got_media, metas) = demux_all(Some(metaint), &stream, &splits);
            prop_assert_eq!(got_media, media);
            let got: Vec<String> = metas.into_iter().filter_map(|m| m.title).collect();
            prop_assert_eq!(got, want);
        }

        /// Valid streams with random bytes flipped: no panic, media never longer than input.
        #[test]
        fn mutated_streams_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..20),
        ) {
            let mut stream = vec![];
            for i in 0..10u8 {
                stream.extend(std::iter::repeat_n(i, 100));
                stream.extend(encode_block(format!("StreamTitle='Song {i}';StreamUrl='http://x/{i}';").as_bytes()));
            }
            for (at, b) in flips {
                let n = stream.len();
                stream[at % n] = b;
            }
            let (media, _) = demux_all(Some(100), &stream, &[17, 250]);
            prop_assert!(media.len() <= stream.len());
        }
    }
}
