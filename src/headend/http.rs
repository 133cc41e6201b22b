//! The headend's HTTP side for `url` sources: find the station's media stream, then feed
//! its media bytes (ICY metadata stripped) into ffmpeg's stdin.
//!
//! [`open_station`] follows redirects (ureq, at most [`HttpConfig::max_redirects`]),
//! expands PLS, M3U and JSON playlists (entries tried in order, a playlist may name
//! playlists [`HttpConfig::max_depth`] deep, at most [`HttpConfig::max_attempts`] URLs in
//! all), refuses an HTML page or any other non-media answer with an error that says what
//! came back (status, content type, first bytes), speaks https (rustls), and asks for ICY
//! metadata (`Icy-MetaData: 1`).
//!
//! SHOUTcast v1 servers answer `ICY 200 OK` instead of `HTTP/1.x 200 OK`, which ureq's
//! parser (httparse) rejects. [`IcyConnector`], the last link of ureq's connector chain
//! (after TCP and TLS), rewrites exactly that status line to `HTTP/1.0 200 OK` at the start
//! of a connection and passes every other byte through unchanged.
//!
//! Bounds: connect (and DNS) timeout, response-header timeout and size, a whole-body time
//! and size limit for playlists, a stall timeout on every read of the stream, metadata
//! blocks of at most 4080 bytes (the format's own limit).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, LazyBuffers, NextTimeout, Transport,
};
use ureq::{Agent, BodyReader};

use super::icy::{IcyDemux, parse_metaint};
use super::playlist::{self, PlaylistError};
use super::source::{StreamMeta, rtp_url};

/// Limits of the HTTP side (every one bounded).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// DNS lookup and TCP (and TLS) connect; default 10 s.
    pub connect_timeout: Duration,
    /// From the request sent to the whole response header; default 10 s.
    pub response_timeout: Duration,
    /// A playlist body must have arrived within this (checked between reads, each read
    /// bounded by `stall_timeout`: at worst the sum); default 10 s.
    pub playlist_timeout: Duration,
    /// A stream that sends nothing for this long is ended; default 15 s.
    pub stall_timeout: Duration,
    /// Redirects followed per request; default 5.
    pub max_redirects: u32,
    /// Largest response header; default 16 KiB.
    pub max_header_bytes: usize,
    /// Largest playlist body; default 1 MiB.
    pub max_playlist_bytes: u64,
    /// Playlists inside playlists; default 2 (a list naming a PLS that names the stream).
    pub max_depth: u32,
    /// URLs tried in all for one station; default 10.
    pub max_attempts: usize,
    /// Sent as `User-Agent`.
    pub user_agent: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            playlist_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(15),
            max_redirects: 5,
            max_header_bytes: 16 * 1024,
            max_playlist_bytes: 1024 * 1024,
            max_depth: 2,
            max_attempts: 10,
            user_agent: concat!("appliance/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: not an http or https URL")]
    BadUrl { url: String },
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects { url: String, max: u32 },
    #[error("{url}: {source}")]
    Request { url: String, source: ureq::Error },
    #[error("{url}: HTTP status {status} (content type {content_type}, body starts {first:?})")]
    Status {
        url: String,
        status: u16,
        content_type: String,
        first: String,
    },
    #[error(
        "{url}: not a media stream or playlist: HTTP {status}, content type {content_type}, body starts {first:?}"
    )]
    NotMedia {
        url: String,
        status: u16,
        content_type: String,
        first: String,
    },
    #[error("{url}: {source}")]
    Playlist { url: String, source: PlaylistError },
    #[error("{url}: the playlist is larger than {limit} bytes")]
    PlaylistTooBig { url: String, limit: u64 },
    #[error("{url}: the playlist did not arrive within {within:?}")]
    PlaylistTooSlow { url: String, within: Duration },
    #[error("{url}: reading the playlist: {source}")]
    PlaylistRead { url: String, source: std::io::Error },
    #[error("{url}: a media stream ({content_type}), not a station list")]
    NotAList { url: String, content_type: String },
    #[error("{url}: playlists nested more than {max} deep")]
    TooDeep { url: String, max: u32 },
    #[error("{url}: gave up after trying {max} URLs")]
    TooManyAttempts { url: String, max: usize },
    #[error("{url}: bad icy-metaint: {why}")]
    BadMetaint { url: String, why: String },
    #[error("{url}: no entry of the {kind} playlist plays: {}", .tried.join("; "))]
    NoEntryPlays {
        url: String,
        kind: &'static str,
        tried: Vec<String>,
    },
}

/// Rewrites a SHOUTcast `ICY 200 OK` status line into `HTTP/1.0 200 OK` (see the module
/// comment); the last link of the connector chain.
#[derive(Debug)]
pub struct IcyConnector;

impl Connector<Box<dyn Transport>> for IcyConnector {
    type Out = IcyTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<IcyTransport>, ureq::Error> {
        Ok(chained.map(|inner| IcyTransport {
            inner,
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            checking: true,
        }))
    }
}

/// A transport that passes bytes through, rewriting a leading `ICY ` to `HTTP/1.0 `.
#[derive(Debug)]
pub struct IcyTransport {
    inner: Box<dyn Transport>,
    buffers: LazyBuffers,
    /// The start of the connection has not been seen yet.
    checking: bool,
}

const ICY: &[u8] = b"ICY ";
const HTTP10: &[u8] = b"HTTP/1.0 ";

impl Transport for IcyTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let mut done = 0;
        while done < amount {
            let out = self.inner.buffers().output();
            let n = out.len().min(amount - done);
            if n == 0 {
                return Err(ureq::Error::Io(std::io::Error::other(
                    "the inner transport has no output buffer",
                )));
            }
            out[..n].copy_from_slice(&self.buffers.output()[done..done + n]);
            self.inner.transmit_output(n, timeout)?;
            done += n;
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let mut progress = true;
        if self.inner.buffers().input().is_empty() {
            progress = self.inner.await_input(timeout)?;
        }
        // Read until the first four bytes tell whether this is `ICY `.
        while self.checking && progress {
            let input = self.inner.buffers().input();
            if input.len() >= ICY.len() || !ICY.starts_with(input) {
                break;
            }
            progress = self.inner.await_input(timeout)?;
        }
        let mut skip = 0;
        if self.checking {
            let input = self.inner.buffers().input();
            if input.len() >= ICY.len() || !ICY.starts_with(input) || !progress {
                self.checking = false;
                if input.starts_with(ICY) {
                    let dst = self.buffers.input_append_buf();
                    if dst.len() >= HTTP10.len() {
                        dst[..HTTP10.len()].copy_from_slice(HTTP10);
                        self.buffers.input_appended(HTTP10.len());
                        skip = ICY.len();
                    }
                }
            }
        }
        let input = &self.inner.buffers().input()[skip..];
        let dst = self.buffers.input_append_buf();
        let n = dst.len().min(input.len());
        dst[..n].copy_from_slice(&input[..n]);
        self.buffers.input_appended(n);
        self.inner.buffers().input_consume(skip + n);
        Ok(progress || n > 0)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// An agent with the limits of `cfg` and the ICY status-line shim.
pub fn agent(cfg: &HttpConfig) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(cfg.max_redirects)
        .max_redirects_will_error(true)
        .timeout_resolve(Some(cfg.connect_timeout))
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_send_request(Some(cfg.response_timeout))
        .timeout_recv_response(Some(cfg.response_timeout))
        .timeout_per_read(Some(cfg.stall_timeout))
        .timeout_per_write(Some(cfg.response_timeout))
        .max_response_header_size(cfg.max_header_bytes)
        .max_idle_connections(0)
        .proxy(None)
        .user_agent(cfg.user_agent.as_str())
        .build();
    Agent::with_parts(
        config,
        DefaultConnector::new().chain(IcyConnector),
        DefaultResolver::default(),
    )
}

/// A station's media stream, found and open, its first bytes read.
pub struct Station {
    /// Where the stream finally came from (after redirects and playlists).
    pub url: String,
    pub content_type: Option<String>,
    meta: StreamMeta,
    metaint: Option<usize>,
    prefix: Vec<u8>,
    reader: BodyReader<'static>,
    agent: Agent,
}

impl std::fmt::Debug for Station {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Station")
            .field("url", &self.url)
            .field("content_type", &self.content_type)
            .field("metaint", &self.metaint)
            .finish()
    }
}

/// How many bytes are read before deciding what a body is.
const SNIFF: usize = 512;

/// A response whose first bytes were read for sniffing, with what was needed to say what
/// came back.
struct Sniffed {
    final_url: String,
    /// The HTTP status (2xx: others are errors).
    status: u16,
    content_type: Option<String>,
    /// The content type as an error message shows it.
    ct_text: String,
    reader: BodyReader<'static>,
    prefix: Vec<u8>,
    started: Instant,
}

/// Reads the first bytes of a response (to tell media, playlists and pages apart); an
/// answer outside 2xx is an error naming its status, content type and first bytes.
fn sniff(resp: ureq::http::Response<ureq::Body>) -> Result<Sniffed, HttpError> {
    use ureq::ResponseExt;
    let final_url = resp.get_uri().to_string();
    let status = resp.status().as_u16();
    let content_type = header(&resp, "content-type");
    let ct_text = content_type.clone().unwrap_or_else(|| "(none)".into());
    let mut reader = resp.into_body().into_reader();
    let started = Instant::now();
    let prefix = read_up_to(&mut reader, SNIFF).unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            url: final_url,
            status,
            content_type: ct_text,
            first: first_bytes(&prefix),
        });
    }
    Ok(Sniffed {
        final_url,
        status,
        content_type,
        ct_text,
        reader,
        prefix,
        started,
    })
}

fn header(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| super::icy::decode_text(v.as_bytes()).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Reads up to `n` bytes (fewer at the end of the body).
fn read_up_to(r: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut out)?;
    Ok(out)
}

fn first_bytes(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(64)]);
    s.chars().take(64).collect()
}

/// The ffmpeg input format (`-f`) for a stream, from its content type or first bytes.
pub fn input_format(content_type: Option<&str>, first: &[u8]) -> Option<&'static str> {
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
        "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg" => return Some("mp3"),
        "audio/aac" | "audio/aacp" | "audio/x-aac" => return Some("aac"),
        "application/ogg" | "audio/ogg" | "audio/opus" | "audio/vorbis" => return Some("ogg"),
        "audio/flac" | "audio/x-flac" => return Some("flac"),
        "video/mp2t" => return Some("mpegts"),
        _ => {}
    }
    match first {
        [b'I', b'D', b'3', ..] => Some("mp3"),
        [b'O', b'g', b'g', b'S', ..] => Some("ogg"),
        [b'f', b'L', b'a', b'C', ..] => Some("flac"),
        // MPEG audio frame sync; layer bits 00 are AAC's ADTS.
        [0xFF, b, ..] if b & 0xE0 == 0xE0 => Some(if b & 0x06 == 0 { "aac" } else { "mp3" }),
        [0x47, ..] if first.len() > 188 && first[188] == 0x47 => Some("mpegts"),
        _ => None,
    }
}

/// True if a body with this content type and these first bytes is media ffmpeg can read.
fn is_media(content_type: Option<&str>, first: &[u8]) -> bool {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if ct.starts_with("audio/") || ct.starts_with("video/") || ct == "application/ogg" {
        return true;
    }
    (ct.is_empty() || ct == "application/octet-stream" || ct == "binary/octet-stream")
        && input_format(None, first).is_some()
}

/// Resolves `reference` (a playlist entry) against the URL of the list it came from.
pub fn join_url(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_string();
    }
    let Ok(uri) = base.parse::<ureq::http::Uri>() else {
        return reference.to_string();
    };
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = reference.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if reference.starts_with('/') {
        format!("{scheme}://{authority}{reference}")
    } else {
        let path = uri.path();
        let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{reference}")
    }
}

fn check_url(url: &str) -> Result<(), HttpError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(HttpError::BadUrl { url: url.into() })
    }
}

/// Finds and opens the media stream of `url` (blocking: run it off the runtime's thread).
pub fn open_station(url: &str, cfg: &HttpConfig) -> Result<Station, HttpError> {
    let agent = agent(cfg);
    let mut attempts = 0;
    open(&agent, url, cfg, 0, &mut attempts)
}

fn open(
    agent: &Agent,
    url: &str,
    cfg: &HttpConfig,
    depth: u32,
    attempts: &mut usize,
) -> Result<Station, HttpError> {
    check_url(url)?;
    *attempts += 1;
    if *attempts > cfg.max_attempts {
        return Err(HttpError::TooManyAttempts {
            url: url.into(),
            max: cfg.max_attempts,
        });
    }
    let resp = get(agent, url, cfg, true)?;
    let metaint = header(&resp, "icy-metaint");
    let meta = StreamMeta {
        name: header(&resp, "icy-name"),
        title: None,
        url: header(&resp, "icy-url"),
        description: header(&resp, "icy-description"),
        content_type: header(&resp, "content-type"),
    };
    let Sniffed {
        final_url,
        status,
        content_type,
        ct_text,
        reader,
        prefix,
        started,
    } = sniff(resp)?;
    // The first bytes of an ICY stream may hold a metadata block: sniff media only
    // from before it.
    let metaint = match metaint {
        Some(v) => Some(parse_metaint(&v).map_err(|why| HttpError::BadMetaint {
            url: final_url.clone(),
            why,
        })?),
        None => None,
    };
    let media_start = &prefix[..metaint.unwrap_or(usize::MAX).min(prefix.len())];
    if let Some(kind) = playlist::detect(content_type.as_deref(), &prefix) {
        let body = read_playlist(reader, prefix, &final_url, cfg, started)?;
        let text = String::from_utf8_lossy(&body);
        let entries = playlist::parse(kind, &text).map_err(|source| HttpError::Playlist {
            url: final_url.clone(),
            source,
        })?;
        if depth >= cfg.max_depth {
            return Err(HttpError::TooDeep {
                url: final_url,
                max: cfg.max_depth,
            });
        }
        let mut tried = vec![];
        for e in entries {
            let entry_url = join_url(&final_url, &e.url);
            match open(agent, &entry_url, cfg, depth + 1, attempts) {
                Ok(mut station) => {
                    if station.meta.name.is_none() {
                        station.meta.name = e.name;
                    }
                    return Ok(station);
                }
                Err(e @ HttpError::TooManyAttempts { .. }) => {
                    tried.push(e.to_string());
                    break;
                }
                Err(e) => {
                    info!(target: "appliance::source", "{final_url}: entry failed: {e}");
                    tried.push(e.to_string());
                }
            }
        }
        return Err(HttpError::NoEntryPlays {
            url: final_url,
            kind: kind.as_str(),
            tried,
        });
    }
    if !is_media(content_type.as_deref(), media_start) {
        return Err(HttpError::NotMedia {
            url: final_url,
            status,
            content_type: ct_text,
            first: first_bytes(&prefix),
        });
    }
    Ok(Station {
        url: final_url,
        content_type,
        meta,
        metaint,
        prefix,
        reader,
        agent: agent.clone(),
    })
}

fn get(
    agent: &Agent,
    url: &str,
    cfg: &HttpConfig,
    icy: bool,
) -> Result<ureq::http::Response<ureq::Body>, HttpError> {
    let mut req = agent.get(url);
    if icy {
        req = req.header("Icy-MetaData", "1");
    }
    req.call().map_err(|e| match e {
        ureq::Error::TooManyRedirects => HttpError::TooManyRedirects {
            url: url.into(),
            max: cfg.max_redirects,
        },
        source => HttpError::Request {
            url: url.into(),
            source,
        },
    })
}

/// A station list fetched over HTTP (for directories).
#[derive(Debug, Clone)]
pub struct FetchedList {
    /// Where it finally came from (after redirects).
    pub url: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Fetches a station list: redirects followed, size and time bounded, and a media stream
/// or an error page refused (blocking).
pub fn fetch_list(url: &str, cfg: &HttpConfig) -> Result<FetchedList, HttpError> {
    check_url(url)?;
    let agent = agent(cfg);
    let Sniffed {
        final_url,
        content_type,
        ct_text,
        reader,
        prefix,
        started,
        ..
    } = sniff(get(&agent, url, cfg, false)?)?;
    if playlist::detect(content_type.as_deref(), &prefix).is_none()
        && is_media(content_type.as_deref(), &prefix)
    {
        return Err(HttpError::NotAList {
            url: final_url,
            content_type: ct_text,
        });
    }
    let body = read_playlist(reader, prefix, &final_url, cfg, started)?;
    Ok(FetchedList {
        url: final_url,
        content_type,
        body,
    })
}

/// Reads the rest of a playlist body within the size and time limits.
fn read_playlist(
    mut reader: BodyReader<'static>,
    mut body: Vec<u8>,
    url: &str,
    cfg: &HttpConfig,
    started: Instant,
) -> Result<Vec<u8>, HttpError> {
    let limit = cfg.max_playlist_bytes;
    let mut buf = [0u8; 8192];
    loop {
        if started.elapsed() > cfg.playlist_timeout {
            return Err(HttpError::PlaylistTooSlow {
                url: url.into(),
                within: cfg.playlist_timeout,
            });
        }
        let n = reader
            .read(&mut buf)
            .map_err(|source| HttpError::PlaylistRead {
                url: url.into(),
                source,
            })?;
        if n == 0 {
            return Ok(body);
        }
        if body.len() as u64 + n as u64 > limit {
            return Err(HttpError::PlaylistTooBig {
                url: url.into(),
                limit,
            });
        }
        body.extend_from_slice(&buf[..n]);
    }
}

impl Station {
    /// The ffmpeg input format for this stream, if known.
    pub fn input_format(&self) -> Option<&'static str> {
        let end = self.metaint.unwrap_or(usize::MAX).min(self.prefix.len());
        input_format(self.content_type.as_deref(), &self.prefix[..end])
    }

    /// What the response headers said (name, description, station url, content type).
    pub fn meta(&self) -> StreamMeta {
        self.meta.clone()
    }

    /// Copies the stream's media bytes into `sink` on a thread of its own, updating `meta`
    /// with every metadata block, until the stream ends, stalls, or `sink` stops taking
    /// bytes; then closes `sink` (ffmpeg sees the end of its input and exits).
    pub fn feed(
        self,
        name: &str,
        sink: impl Write + Send + 'static,
        meta: watch::Sender<StreamMeta>,
    ) -> Feed {
        let error = Arc::new(Mutex::new(None));
        let stopping = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            agent: self.agent.clone(),
            error: error.clone(),
            stopping: stopping.clone(),
        };
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("feed-{name}"))
            .spawn(move || {
                let why = self.pump(sink, &meta);
                if !stopping.load(Ordering::SeqCst) {
                    warn!(target: "appliance::source", "{name}: station stream ended: {why}");
                }
                if let Ok(mut e) = error.lock() {
                    *e = Some(why);
                }
            });
        if let Err(e) = spawned
            && let Ok(mut slot) = feed.error.lock()
        {
            *slot = Some(format!("starting the feed thread: {e}"));
        }
        feed
    }

    /// The copy loop; returns why it ended.
    fn pump(mut self, mut sink: impl Write, meta: &watch::Sender<StreamMeta>) -> String {
        let mut demux = IcyDemux::new(self.metaint);
        let mut media = Vec::with_capacity(64 * 1024);
        let mut metas = vec![];
        let mut buf = vec![0u8; 16 * 1024];
        let mut first = std::mem::take(&mut self.prefix);
        loop {
            let chunk: &[u8] = if !first.is_empty() {
                &first
            } else {
                match self.reader.read(&mut buf) {
                    Ok(0) => return "the station closed the stream".into(),
                    Ok(n) => &buf[..n],
                    Err(e) => return format!("reading from {}: {e}", self.url),
                }
            };
            media.clear();
            metas.clear();
            demux.feed(chunk, &mut media, &mut metas);
            first.clear();
            for m in metas.drain(..) {
                if m.title.is_none() && m.url.is_none() {
                    continue;
                }
                meta.send_if_modified(|cur| {
                    let before = cur.clone();
                    // An empty StreamTitle means "no title now".
                    if let Some(t) = &m.title {
                        cur.title = Some(t.clone()).filter(|t| !t.is_empty());
                    }
                    if m.url.as_deref().is_some_and(|u| !u.is_empty()) {
                        cur.url = m.url.clone();
                    }
                    *cur != before
                });
            }
            if let Err(e) = sink.write_all(&media) {
                return format!("ffmpeg stopped reading: {e}");
            }
        }
    }
}

/// The running copy of a station's stream into ffmpeg.
#[derive(Debug)]
pub struct Feed {
    agent: Agent,
    error: Arc<Mutex<Option<String>>>,
    stopping: Arc<AtomicBool>,
}

impl Feed {
    /// Ends the copy: the connection is shut down, a blocked read returns at once.
    pub fn shutdown(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.agent.clone().shutdown();
        }
    }

    /// Why the copy ended, once it has.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// The ffmpeg command line a `url` source runs: the media on stdin, paced with `-re`,
/// RTP to `rtp`, the SDP to `sdp`. MP3 is copied (RTP payload type 14, playable without
/// an SDP); anything else is transcoded to Opus.
pub fn ffmpeg_argv(ffmpeg: &str, format: Option<&str>, rtp: SocketAddr, sdp: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        ffmpeg,
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "warning",
        "-re",
    ]
    .map(String::from)
    .to_vec();
    if let Some(f) = format {
        a.extend(["-f".into(), f.into()]);
    }
    a.extend(["-i", "pipe:0", "-map", "0:a:0"].map(String::from));
    if format == Some("mp3") {
        a.extend(["-c:a", "copy"].map(String::from));
    } else {
        a.extend(["-c:a", "libopus", "-b:a", "128k"].map(String::from));
    }
    a.extend(["-f".into(), "rtp".into(), "-sdp_file".into()]);
    a.push(sdp.to_string_lossy().into_owned());
    a.push(rtp_url(rtp));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// An in-memory transport that hands out `chunks` one per read.
    #[derive(Debug)]
    struct Mem {
        buffers: LazyBuffers,
        chunks: VecDeque<Vec<u8>>,
    }

    impl Transport for Mem {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }
        fn transmit_output(&mut self, _: usize, _: NextTimeout) -> Result<(), ureq::Error> {
            Ok(())
        }
        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            let Some(c) = self.chunks.pop_front() else {
                return Ok(false);
            };
            let dst = self.buffers.input_append_buf();
            let n = c.len().min(dst.len());
            dst[..n].copy_from_slice(&c[..n]);
            self.buffers.input_appended(n);
            if n < c.len() {
                self.chunks.push_front(c[n..].to_vec());
            }
            Ok(true)
        }
        fn is_open(&mut self) -> bool {
            true
        }
    }

    /// What ureq reads through the shim when the server sends `input` in `splits`.
    fn through_shim(input: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut chunks = VecDeque::new();
        let mut rest = input;
        for &s in splits {
            let s = s.min(rest.len());
            if s > 0 {
                chunks.push_back(rest[..s].to_vec());
                rest = &rest[s..];
            }
        }
        if !rest.is_empty() {
            chunks.push_back(rest.to_vec());
        }
        let mut t = IcyTransport {
            inner: Box::new(Mem {
                buffers: LazyBuffers::new(4096, 1024),
                chunks,
            }),
            buffers: LazyBuffers::new(4096, 1024),
            checking: true,
        };
        let mut out = vec![];
        loop {
            let progress = t.await_input(NextTimeout::default()).unwrap();
            let got = t.buffers().input().to_vec();
            t.buffers().input_consume(got.len());
            out.extend(got);
            if !progress {
                return out;
            }
        }
    }

    #[test]
    fn icy_status_line_becomes_http() {
        assert_eq!(
            through_shim(b"ICY 200 OK\r\nicy-metaint:8192\r\n\r\nbody", &[1, 1, 1]),
            b"HTTP/1.0 200 OK\r\nicy-metaint:8192\r\n\r\nbody"
        );
        assert_eq!(
            through_shim(b"HTTP/1.1 200 OK\r\n\r\nICY ", &[2]),
            b"HTTP/1.1 200 OK\r\n\r\nICY "
        );
        assert_eq!(through_shim(b"IC", &[1]), b"IC");
    }

    proptest! {
        /// Any bytes in any pieces: only a leading `ICY ` is rewritten, the rest passes.
        #[test]
        fn shim_passes_everything_else(
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            icy in any::<bool>(),
            splits in proptest::collection::vec(0usize..600, 0..12),
        ) {
            let mut input = if icy { b"ICY ".to_vec() } else { vec![] };
            input.extend(&body);
            let want = if input.starts_with(b"ICY ") {
                [b"HTTP/1.0 ".as_slice(), &input[4..]].concat()
            } else {
                input.clone()
            };
            prop_assert_eq!(through_shim(&input, &splits), want);
        }
    }

    #[test]
    fn joins_relative_entries() {
        let b = "http://h:8000/dir/list.pls?x=1";
        assert_eq!(join_url(b, "https://o/s"), "https://o/s");
        assert_eq!(join_url(b, "//o/s"), "http://o/s");
        assert_eq!(join_url(b, "/s"), "http://h:8000/s");
        assert_eq!(join_url(b, "s.mp3"), "http://h:8000/dir/s.mp3");
        assert_eq!(join_url("http://h", "s.mp3"), "http://h/s.mp3");
    }

    #[test]
    fn formats() {
        assert_eq!(input_format(Some("audio/mpeg"), b""), Some("mp3"));
        assert_eq!(input_format(Some("audio/aacp"), b""), Some("aac"));
        assert_eq!(input_format(None, b"OggS\0"), Some("ogg"));
        assert_eq!(input_format(None, &[0xFF, 0xFB, 0x90]), Some("mp3"));
        assert_eq!(input_format(None, &[0xFF, 0xF1, 0x50]), Some("aac"));
        assert_eq!(input_format(Some("text/html"), b"<html>"), None);
        assert!(is_media(Some("audio/mpeg"), b""));
        assert!(!is_media(Some("text/html"), b"ID3"));
        assert!(is_media(Some("application/octet-stream"), b"ID3"));
        assert!(!is_media(None, b"<html>"));
    }

    #[test]
    fn url_schemes() {
        assert!(check_url("HTTPS://x/").is_ok());
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(check_url("mms://x/").is_err());
    }

    #[test]
    fn ffmpeg_copies_mp3_and_transcodes_the_rest() {
        let rtp: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let a = ffmpeg_argv("ffmpeg", Some("mp3"), rtp, Path::new("/x.sdp"));
        assert!(a.windows(2).any(|w| w == ["-f", "mp3"]));
        assert!(a.windows(2).any(|w| w == ["-c:a", "copy"]));
        assert_eq!(a.last().unwrap(), "rtp://127.0.0.1:4000?pkt_size=1316");
        let a = ffmpeg_argv("ffmpeg", None, rtp, Path::new("/x.sdp"));
        assert!(a.windows(2).any(|w| w == ["-c:a", "libopus"]));
        assert!(!a.iter().any(|x| x == "-nostdin"));
    }
}
