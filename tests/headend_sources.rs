//! Headend sources, run for real: ffmpeg command sources, and url sources played from a real
//! icecast2 and from the test's own small HTTP server. Each test runs in a fresh network
//! namespace (a `Sandbox`), its sources forked from a thread inside it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use appliance::headend::source::{Source, SourceConfig, SourceSpec};
use common::*;

/// Runs `f` on a current-thread tokio runtime on a thread inside the sandbox's network
/// namespace (sources forked there live there too).
fn run<T: Send + 'static>(
    sb: &Sandbox,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    sb.in_netns(None, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

/// A UDP socket on the sandbox's loopback for the source's RTP, with a read timeout.
fn rtp_socket(sb: &Sandbox) -> (UdpSocket, SocketAddr) {
    let s = udp_in(sb, None, "127.0.0.1:0");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Waits for one RTP packet (version 2) and returns its payload type.
fn rtp_payload_type(s: &UdpSocket) -> u8 {
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = s.recv_from(&mut buf).expect("an RTP packet within 10 s");
        if n >= 12 && buf[0] >> 6 == 2 {
            return buf[1] & 0x7f;
        }
    }
}

fn tone(rtp_codec: &[&str]) -> SourceSpec {
    let mut argv: Vec<String> = [
        "ffmpeg",
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(rtp_codec.iter().map(|s| s.to_string()));
    argv.extend(["-f", "rtp", "-sdp_file", "{sdp}", "{rtp}"].map(String::from));
    SourceSpec::Command { argv }
}

/// Waits until no live process is left in group `pgid` (a SIGKILLed process takes a
/// moment to die).
fn group_gone(pgid: u32) {
    wait_until(
        &format!("process group {pgid} to be empty"),
        Duration::from_secs(5),
        || group_members(pgid).is_empty().then_some(()),
    );
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Live processes whose process group is `pgid` (zombies, already dead, left out).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces, so split after the last ')'.
        let after = &stat[stat.rfind(')').map(|i| i + 1).unwrap_or(0)..];
        let f: Vec<&str> = after.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && f.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn test_tone_command_runs_unprivileged_and_stop_leaves_nothing() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let (sock, rtp) = rtp_socket(&sb);
    let sdp2 = sb.path("tone.sdp");
    let (pid, uid, gid, capeff, capbnd, nnp, pt, st, sdp_text) = run(&sb, move || {
        Box::pin(async move {
            let spec = tone(&["-c:a", "libopus"]);
            let mut src = Source::start("tone", &spec, rtp, &sdp2, &SourceConfig::default())
                .await
                .expect("start the tone");
            let pid = src.pid();
            let pt = rtp_payload_type(&sock);
            let uid = status_field(pid, "Uid");
            let gid = status_field(pid, "Gid");
            let capeff = status_field(pid, "CapEff");
            let capbnd = status_field(pid, "CapBnd");
            let nnp = status_field(pid, "NoNewPrivs");
            let sdp_text = std::fs::read_to_string(&sdp2).unwrap_or_default();
            let st = src.stop().await;
            (pid, uid, gid, capeff, capbnd, nnp, pt, st, sdp_text)
        })
    });
    assert!(pid > 0);
    assert_eq!(uid, "65534\t65534\t65534\t65534", "runs as nobody");
    assert_eq!(gid, "65534\t65534\t65534\t65534", "runs as nogroup");
    assert_eq!(capeff, "0000000000000000", "no effective capability");
    assert_eq!(capbnd, "0000000000000000", "empty bounding set");
    assert_eq!(nnp, "1", "no_new_privs set");
    assert_eq!(pt, 97, "Opus on a dynamic payload type");
    assert!(sdp_text.contains("opus/48000"), "SDP written: {sdp_text}");
    group_gone(pid);
    // ffmpeg ends on SIGTERM with status 255.
    assert_eq!(st.code(), Some(255), "stopped by SIGTERM: {st}");
}

#[test]
fn stop_kills_the_whole_group_even_when_sigterm_is_ignored() {
    let sb = Sandbox::new();
    let sdp = sb.path("x.sdp");
    let (pid, before, signal) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: [
                    "sh",
                    "-c",
                    "trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait",
                ]
                .map(String::from)
                .to_vec(),
            };
            let cfg = SourceConfig {
                stop_grace: Duration::from_millis(300),
                ..SourceConfig::default()
            };
            let mut src =
                Source::start("ignorer", &spec, "127.0.0.1:9".parse().unwrap(), &sdp, &cfg)
                    .await
                    .expect("start");
            let pid = src.pid();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !src.recent_output().iter().any(|l| l == "ready") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no 'ready' from the shell"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let before = group_members(pid).len();
            let st = src.stop().await;
            use std::os::unix::process::ExitStatusExt;
            (pid, before, st.signal())
        })
    });
    assert!(
        before >= 3,
        "the shell and its two sleeps ({before}) in group {pid}"
    );
    group_gone(pid);
    assert_eq!(signal, Some(9), "SIGKILL after the grace time");
}

#[test]
fn a_leader_that_exits_takes_its_group_with_it() {
    let sb = Sandbox::new();
    let sdp = sb.path("x.sdp");
    let (pid, code, output) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: ["sh", "-c", "sleep 1000 & echo to stderr >&2; exit 3"]
                    .map(String::from)
                    .to_vec(),
            };
            let mut src = Source::start(
                "quitter",
                &spec,
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .expect("start");
            let pid = src.pid();
            let st = tokio::time::timeout(Duration::from_secs(10), src.exited())
                .await
                .expect("the shell exits");
            // Its output is read on the runtime: give the reader a moment to finish.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while src.recent_output().is_empty() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (pid, st.code(), src.recent_output())
        })
    });
    assert_eq!(code, Some(3));
    group_gone(pid);
    assert_eq!(output, vec!["to stderr".to_string()]);
}

#[test]
fn a_missing_program_or_user_is_a_clear_error() {
    let sb = Sandbox::new();
    let sdp: PathBuf = sb.path("x.sdp");
    let (no_prog, no_user) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: vec!["/nonexistent/ffmpeg".into()],
            };
            let a = Source::start(
                "p",
                &spec,
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .unwrap_err()
            .to_string();
            let cfg = SourceConfig {
                user: "no-such-user".into(),
                ..SourceConfig::default()
            };
            let b = Source::start("u", &spec, "127.0.0.1:9".parse().unwrap(), &sdp, &cfg)
                .await
                .unwrap_err()
                .to_string();
            (a, b)
        })
    });
    assert!(no_prog.contains("/nonexistent/ffmpeg"), "{no_prog}");
    assert!(no_user.contains("no-such-user"), "{no_user}");
}

/// Waits (at most 20 s) until the source's metadata satisfies `ok`; returns it.
async fn meta_until(
    src: &Source,
    ok: impl Fn(&appliance::headend::source::StreamMeta) -> bool,
) -> appliance::headend::source::StreamMeta {
    let mut rx = src.metadata();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = rx.borrow_and_update().clone();
            if ok(&m) {
                return m;
            }
            if rx.changed().await.is_err() {
                return m;
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("metadata never matched: {:?}", *src.metadata().borrow()))
}

/// Sets an icecast2 mount's title from a thread already inside the sandbox.
fn set_title_here(addr: SocketAddr, mount: &str, title: &str) {
    use std::io::{Read, Write};
    let enc: String = title
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut s = std::net::TcpStream::connect(addr).expect("connect to icecast2");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /admin/metadata?mount={mount}&mode=updinfo&song={enc} HTTP/1.0\r\n\
         Authorization: Basic YWRtaW46aGFja21l\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(
        r.starts_with("HTTP/1.0 200"),
        "icecast2 refused the title: {r}"
    );
}

#[test]
fn url_source_from_icecast_carries_the_title_and_its_changes() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let ice = Icecast::start(&sb, 8000, &["/test.mp3"]);
    let _feeder = ice.feed(&sb, "/test.mp3", "Test FM");
    ice.set_title(&sb, "/test.mp3", "First Song");
    let (sock, rtp) = rtp_socket(&sb);
    let sdp = sb.path("radio.sdp");
    let addr = ice.addr;
    let (first, second, pt, sdp_text) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Url {
                url: format!("http://{addr}/test.mp3"),
            };
            let mut src = Source::start("radio", &spec, rtp, &sdp, &SourceConfig::default())
                .await
                .expect("start the url source");
            let first = meta_until(&src, |m| m.title.as_deref() == Some("First Song")).await;
            let pt = rtp_payload_type(&sock);
            set_title_here(addr, "/test.mp3", "Second Song – café");
            let second =
                meta_until(&src, |m| m.title.as_deref() == Some("Second Song – café")).await;
            let sdp_text = std::fs::read_to_string(&sdp).unwrap_or_default();
            src.stop().await;
            (first, second, pt, sdp_text)
        })
    });
    assert_eq!(first.name.as_deref(), Some("Test FM"), "{first:?}");
    assert_eq!(first.content_type.as_deref(), Some("audio/mpeg"));
    assert_eq!(second.title.as_deref(), Some("Second Song – café"));
    assert_eq!(pt, 14, "MP3 copied onto RTP payload type 14");
    assert!(sdp_text.contains("m=audio"), "SDP: {sdp_text}");
}

/// A few seconds of MP3 made by ffmpeg.
fn mp3_bytes(sb: &Sandbox, secs: u32) -> Vec<u8> {
    require_program("ffmpeg");
    let out = sb.path("tone.mp3");
    let st = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("sine=frequency=440")
        .arg("-t")
        .arg(secs.to_string())
        .args(["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"])
        .arg(&out)
        .status()
        .expect("run ffmpeg");
    assert!(st.success(), "ffmpeg could not make an MP3");
    std::fs::read(out).expect("read the MP3")
}

/// A SHOUTcast v1 answer: `ICY 200 OK`, icy headers, the MP3 with a title block every
/// `metaint` bytes.
fn icy_answer(mp3: &[u8], metaint: usize, title: &str) -> Vec<u8> {
    use appliance::headend::icy::encode_block;
    let mut r = format!(
        "ICY 200 OK\r\nicy-name:Old School FM\r\ncontent-type:audio/mpeg\r\nicy-metaint:{metaint}\r\n\r\n"
    )
    .into_bytes();
    for (i, chunk) in mp3.chunks(metaint).enumerate() {
        r.extend_from_slice(chunk);
        if chunk.len() == metaint {
            if i == 0 {
                r.extend(encode_block(format!("StreamTitle='{title}';").as_bytes()));
            } else {
                r.push(0);
            }
        }
    }
    r
}

#[test]
fn shoutcast_icy_200_ok_plays_with_its_title() {
    let sb = Sandbox::new();
    let mp3 = mp3_bytes(&sb, 4);
    let server = HttpServer::start(&sb, |_| {
        vec![(
            "/;stream.mp3".into(),
            icy_answer(&mp3, 8192, "It's Old ';-) School"),
        )]
    });
    let (sock, rtp) = rtp_socket(&sb);
    let sdp = sb.path("icy.sdp");
    let url = server.url("/;stream.mp3");
    let (meta, pt, code) = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Url { url };
            let mut src = Source::start("icy", &spec, rtp, &sdp, &SourceConfig::default())
                .await
                .expect("start the url source");
            let meta = meta_until(&src, |m| m.title.is_some()).await;
            let pt = rtp_payload_type(&sock);
            // The stream is finite: ffmpeg ends when it does.
            let st = tokio::time::timeout(Duration::from_secs(30), src.exited())
                .await
                .expect("ffmpeg ends with the stream");
            (meta, pt, st.code())
        })
    });
    // ureq alone refuses the status line; the shim is what makes it play.
    let plain = sb.in_netns(None, {
        let url = server.url("/;stream.mp3");
        move || {
            ureq::get(&url)
                .call()
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    assert!(plain.is_err(), "ureq accepted ICY 200 OK by itself");
    assert_eq!(meta.name.as_deref(), Some("Old School FM"));
    assert_eq!(
        meta.title.as_deref(),
        Some("It's Old "),
        "up to the first `';`"
    );
    assert_eq!(pt, 14);
    assert_eq!(code, Some(0));
}

fn open(sb: &Sandbox, url: String) -> Result<appliance::headend::http::Station, String> {
    sb.in_netns(None, move || {
        appliance::headend::http::open_station(&url, &Default::default()).map_err(|e| e.to_string())
    })
}

#[test]
fn redirects_and_playlists_are_followed() {
    let sb = Sandbox::new();
    let mp3 = mp3_bytes(&sb, 1);
    let server = HttpServer::start(&sb, |a| {
        let u = |p: &str| format!("http://{a}{p}");
        let pls = format!(
            "[playlist]\nNumberOfEntries=2\nFile1={}\nTitle1=Dead one\nFile2={}\nTitle2=PLS Radio\n",
            u("/gone.mp3"),
            u("/live.mp3")
        );
        let m3u = format!("#EXTM3U\n#EXTINF:-1,M3U Radio\n{}\n", u("/live.mp3"));
        let json = format!(
            r#"[{{"name":"Dead","url":"{}"}},{{"name":"JSON Radio","url":"{}"}}]"#,
            u("/page.html"),
            u("/live.mp3")
        );
        vec![
            (
                "/live.mp3".into(),
                http_response("200 OK", "audio/mpeg", &mp3),
            ),
            ("/r1".into(), http_redirect(&u("/r2"))),
            ("/r2".into(), http_redirect("/station.pls")),
            (
                "/station.pls".into(),
                http_response("200 OK", "audio/x-scpls", pls.as_bytes()),
            ),
            (
                "/list.m3u".into(),
                http_response("200 OK", "audio/x-mpegurl", m3u.as_bytes()),
            ),
            // A bare M3U served as text/plain, relative entry.
            (
                "/plain.m3u".into(),
                http_response("200 OK", "text/plain", b"live.mp3\n"),
            ),
            (
                "/list.json".into(),
                http_response("200 OK", "application/json", json.as_bytes()),
            ),
            (
                "/page.html".into(),
                http_response(
                    "200 OK",
                    "text/html; charset=utf-8",
                    b"<!DOCTYPE html><html><body>Listen live!</body></html>",
                ),
            ),
        ]
    });
    let live = server.url("/live.mp3");
    for (path, name) in [
        ("/r1", Some("PLS Radio")),
        ("/list.m3u", Some("M3U Radio")),
        ("/list.json", Some("JSON Radio")),
    ] {
        let st = open(&sb, server.url(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(st.url, live, "{path}");
        assert_eq!(st.meta().name.as_deref(), name, "{path}");
        assert_eq!(st.input_format(), Some("mp3"));
    }
    // A plain text list is M3U only when it starts with a URL: a relative one is not media.
    let e = open(&sb, server.url("/plain.m3u")).unwrap_err();
    assert!(e.contains("text/plain"), "{e}");
}

#[test]
fn an_html_page_is_refused_saying_what_came_back() {
    let sb = Sandbox::new();
    let server = HttpServer::start(&sb, |_| {
        vec![(
            "/listen".into(),
            http_response(
                "200 OK",
                "text/html; charset=utf-8",
                b"<!DOCTYPE html><html><body>Listen live!</body></html>",
            ),
        )]
    });
    let e = open(&sb, server.url("/listen")).unwrap_err();
    assert!(e.contains("not a media stream"), "{e}");
    assert!(e.contains("200"), "{e}");
    assert!(e.contains("text/html"), "{e}");
    assert!(e.contains("<!DOCTYPE html>"), "{e}");
    // And as a source: start fails with the same words, nothing is spawned.
    let sdp = sb.path("html.sdp");
    let url = server.url("/listen");
    let e = run(&sb, move || {
        Box::pin(async move {
            Source::start(
                "web",
                &SourceSpec::Url { url },
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .unwrap_err()
            .to_string()
        })
    });
    assert!(e.contains("source web") && e.contains("text/html"), "{e}");
}

#[test]
fn too_many_redirects_and_missing_streams_are_clear_errors() {
    let sb = Sandbox::new();
    let server = HttpServer::start(&sb, |a| {
        let mut r: Vec<(String, Vec<u8>)> = (0..10)
            .map(|i| {
                (
                    format!("/hop{i}"),
                    http_redirect(&format!("http://{a}/hop{}", i + 1)),
                )
            })
            .collect();
        r.push(("/loop".into(), http_redirect("/loop")));
        r
    });
    let e = open(&sb, server.url("/loop")).unwrap_err();
    assert!(e.contains("more than 5 redirects"), "{e}");
    let e = open(&sb, server.url("/hop0")).unwrap_err();
    assert!(e.contains("more than 5 redirects"), "{e}");
    // From /hop5, five redirects are followed to /hop10, which is not there.
    let e = open(&sb, server.url("/hop5")).unwrap_err();
    assert!(e.contains("404"), "{e}");
    let e = open(&sb, "file:///etc/passwd".into()).unwrap_err();
    assert!(e.contains("not an http or https URL"), "{e}");
}

#[test]
fn a_directory_reads_a_station_list_over_http() {
    use appliance::headend::directory::{self, DirectoryConfig, DirectorySource, NumberBlock};
    let sb = Sandbox::new();
    let server = HttpServer::start(&sb, |a| {
        let json = format!(
            r#"[{{"name":"One","url":"http://{a}/one.mp3"}},{{"name":"Two","url_resolved":"two.mp3","url":"x"}}]"#
        );
        vec![
            ("/stations".into(), http_redirect("/stations.json")),
            (
                "/stations.json".into(),
                http_response("200 OK", "application/json", json.as_bytes()),
            ),
            (
                "/stream".into(),
                http_response("200 OK", "audio/mpeg", b"ID3\x03\0\0\0\0\0\0"),
            ),
        ]
    });
    let (list, stream) = (server.url("/stations"), server.url("/stream"));
    let (got, err) = sb.in_netns(None, move || {
        let cfg = |loc: String| DirectoryConfig {
            name: "web".into(),
            block: NumberBlock::Bits {
                high: 0x9000,
                low_bits: 16,
            },
            source: DirectorySource::List(loc),
            http: Default::default(),
        };
        (
            directory::load(&cfg(list)),
            directory::load(&cfg(stream))
                .map(|_| ())
                .unwrap_err()
                .to_string(),
        )
    });
    let got = got.expect("the list loads");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].number, got[0].name.as_str()), (0x9000_0000, "One"));
    assert_eq!(
        got[1].spec,
        SourceSpec::Url {
            url: server.url("/two.mp3")
        },
        "relative to the list's final URL"
    );
    assert!(
        err.contains("not a station list") && err.contains("audio/mpeg"),
        "{err}"
    );
}

#[test]
fn a_stalled_station_ends_the_source_saying_why() {
    let sb = Sandbox::new();
    let mp3 = mp3_bytes(&sb, 1);
    let server = HttpServer::start(&sb, |_| {
        let mut r = b"HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\n\r\n".to_vec();
        r.extend_from_slice(&mp3);
        vec![("/hold/silent.mp3".into(), r)]
    });
    let url = server.url("/hold/silent.mp3");
    let sdp = sb.path("stall.sdp");
    let (exited, why) = run(&sb, move || {
        Box::pin(async move {
            let mut cfg = SourceConfig::default();
            cfg.http.stall_timeout = Duration::from_secs(1);
            let mut src = Source::start(
                "stall",
                &SourceSpec::Url { url },
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &cfg,
            )
            .await
            .expect("start");
            let exited = tokio::time::timeout(Duration::from_secs(30), src.exited())
                .await
                .is_ok();
            (exited, src.feed_error())
        })
    });
    assert!(exited, "ffmpeg ends once the station stalls");
    let why = why.expect("the feed says why it ended");
    assert!(why.contains("reading from"), "{why}");
}

#[test]
fn a_source_dies_with_the_thread_that_started_it() {
    let sb = Sandbox::new();
    let sdp = sb.path("x.sdp");
    // The thread of `run` ends right after the start; the source is leaked, not stopped.
    let pid = run(&sb, move || {
        Box::pin(async move {
            let spec = SourceSpec::Command {
                argv: vec!["sleep".into(), "1000".into()],
            };
            let src = Source::start(
                "orphan",
                &spec,
                "127.0.0.1:9".parse().unwrap(),
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .expect("start");
            let pid = src.pid();
            std::mem::forget(src);
            pid
        })
    });
    wait_until(
        "the orphaned source to be killed by PR_SET_PDEATHSIG",
        Duration::from_secs(5),
        || {
            let state = status_field(pid, "State");
            (state.is_empty() || state.starts_with('Z')).then_some(())
        },
    );
    // Reap it (our process is still its parent).
    unsafe { libc_waitpid(pid as i32, std::ptr::null_mut(), 0) };
}

unsafe extern "C" {
    #[link_name = "waitpid"]
    fn libc_waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

#[test]
fn https_is_spoken_and_an_untrusted_certificate_refused() {
    require_program("openssl");
    let sb = Sandbox::new();
    let (key, cert) = (sb.path("key.pem"), sb.path("cert.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl req");
    assert!(st.success(), "openssl could not make a certificate");
    let mut cmd = sb.cmd("openssl");
    cmd.args([
        "s_server",
        "-quiet",
        "-accept",
        "127.0.0.1:8443",
        "-WWW",
        "-cert",
    ])
    .arg(&cert)
    .arg("-key")
    .arg(&key)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let _server = Group::spawn(cmd, "openssl s_server");
    wait_until(
        "openssl s_server to listen",
        Duration::from_secs(10),
        || {
            sb.in_netns(None, || {
                std::net::TcpStream::connect("127.0.0.1:8443")
                    .ok()
                    .map(|_| ())
            })
        },
    );
    let e = open(&sb, "https://127.0.0.1:8443/stream.mp3".into()).unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn an_aac_station_is_transcoded_to_opus() {
    require_program("ffmpeg");
    let sb = Sandbox::new();
    let aac_path = sb.path("tone.aac");
    let st = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .args([
            "sine=frequency=440",
            "-t",
            "3",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "adts",
        ])
        .arg(&aac_path)
        .status()
        .expect("run ffmpeg");
    assert!(st.success(), "ffmpeg could not make AAC");
    let aac = std::fs::read(&aac_path).unwrap();
    let server = HttpServer::start(&sb, |_| {
        vec![("/aac".into(), http_response("200 OK", "audio/aacp", &aac))]
    });
    let (sock, rtp) = rtp_socket(&sb);
    let sdp = sb.path("aac.sdp");
    let url = server.url("/aac");
    let (pt, sdp_text) = run(&sb, move || {
        Box::pin(async move {
            let mut src = Source::start(
                "aac",
                &SourceSpec::Url { url },
                rtp,
                &sdp,
                &SourceConfig::default(),
            )
            .await
            .expect("start");
            let pt = rtp_payload_type(&sock);
            let text = std::fs::read_to_string(&sdp).unwrap_or_default();
            src.stop().await;
            (pt, text)
        })
    });
    assert_eq!(pt, 97, "Opus on a dynamic payload type");
    assert!(sdp_text.contains("opus/48000"), "SDP: {sdp_text}");
}
