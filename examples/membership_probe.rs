//! Test driver for the headend's membership listener (used by tests/headend_membership.rs):
//! runs `headend::listen::Listener` on the given interfaces with the given timers and
//! prints one JSON line per event on stdout; SIGUSR1 prints the status as one JSON line.
//! Logs go to stderr.
//!
//! membership_probe IFACE... [--qi MS] [--qri MS] [--llqi MS] [--never]

use std::io::Write;
use std::time::Duration;

use appliance::headend::listen::Listener;
use appliance::headend::membership::{QuerierConfig, QuerierMode};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut cfg = QuerierConfig::default();
    let mut ifaces = Vec::new();
    let mut args = std::env::args().skip(1);
    let ms = |v: Option<String>| {
        Duration::from_millis(v.and_then(|v| v.parse().ok()).expect("a number of ms"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--qi" => cfg.query_interval = ms(args.next()),
            "--qri" => cfg.query_response_interval = ms(args.next()),
            "--llqi" => cfg.last_listener_interval = ms(args.next()),
            "--never" => cfg.querier = QuerierMode::Never,
            _ => ifaces.push(a),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listener = Listener::start(ifaces, cfg, tx).expect("listener");
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .expect("SIGUSR1");
        println!("{}", serde_json::json!({"event": "started"}));
        loop {
            let line = tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => serde_json::to_string(&e).expect("json"),
                    None => break,
                },
                _ = usr1.recv() => serde_json::json!({
                    "event": "status",
                    "status": listener.status(),
                })
                .to_string(),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
}
