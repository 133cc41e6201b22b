//! The translator's control thread: everything that may be slow, off the data path. Log
//! lines (the original's, exactly), SAP announcements and deletions, the Multicast Menu
//! (on a thread of its own), and the state file that lets a restart keep every live
//! source's group.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use super::flows::Refusal;
use super::menu::{Menu, MenuJob};
use super::{Bound, Config, Event, TranslateError};
use crate::sap::{self, SapPacket, Sdp};
use crate::sockets as net;

/// An announced flow.
/// Kept small (the SDP is rendered when sent): there may be 100,000 of them.
struct Session {
    group: IpAddr,
    hash: u16,
    /// The SDP's session id (o= line).
    id: u32,
    /// Due time of the next announcement, in 100 ms ticks of [`Control::tick`].
    next_announce: u32,
    /// Announced by SAP and registered with the Menu (a new flow is once it has lived
    /// `announce_after`).
    announced: bool,
}

pub struct Control {
    source: IpAddr,
    port: u16,
    ttl: u8,
    interface: Option<String>,
    sap_v4: Option<UdpSocket>,
    sap_v6: Option<UdpSocket>,
    sap_interval: Option<Duration>,
    sessions: HashMap<SocketAddr, Session>,
    /// New flows not announced yet, oldest first, with the tick they are due.
    unannounced: std::collections::VecDeque<(SocketAddr, u32)>,
    /// In 100 ms ticks.
    announce_after: u32,
    menu: Option<mpsc::Sender<MenuJob>>,
    state_file: Option<PathBuf>,
    dirty: bool,
    last_saved: Instant,
    refresh_every: Duration,
    refusals: RateLimit,
    session_ids: u32,
    started: Instant,
    /// Where the original's lines go: stdout (a sink in the benchmark).
    out: Box<dyn Write + Send>,
}

/// At most one refusal line a second; the rest are counted and summed up in the next one.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl Control {
    pub fn new(cfg: &Config, bound: &Bound) -> Result<Control, TranslateError> {
        let (mut sap_v4, mut sap_v6) = (None, None);
        if cfg.sap {
            let v6 = cfg.space.addr().is_ipv6();
            let s = Socket::new(
                if v6 { Domain::IPV6 } else { Domain::IPV4 },
                Type::DGRAM,
                Some(Protocol::UDP),
            )
            .map_err(super::sock_err("creating SAP socket for", cfg.space))?;
            if bound.source.is_ipv6() == v6 && !bound.source.is_unspecified() {
                let _ = s.bind(&SocketAddr::new(bound.source, 0).into());
            }
            net::set_multicast(&s, v6, cfg.ttl, bound.ifindex)
                .map_err(super::sock_err("setting up SAP socket for", cfg.space))?;
            if v6 {
                sap_v6 = Some(s.into());
            } else {
                sap_v4 = Some(s.into());
            }
        }
        let codes_file = cfg
            .state_file
            .as_ref()
            .map(|p| p.with_extension("menu.json"));
        let menu = cfg.menu.as_ref().map(|url| Menu::start(url, codes_file));
        Ok(Control {
            source: bound.source,
            port: cfg.port,
            ttl: cfg.ttl,
            interface: cfg.interface.clone(),
            sap_v4,
            sap_v6,
            sap_interval: cfg.sap_interval,
            sessions: HashMap::new(),
            unannounced: std::collections::VecDeque::new(),
            announce_after: (cfg.announce_after.as_millis() / 100).min(u32::MAX as u128 / 2) as u32,
            menu,
            state_file: cfg.state_file.clone(),
            dirty: false,
            last_saved: Instant::now(),
            refresh_every: (cfg.idle / 3)
                .clamp(Duration::from_millis(500), Duration::from_secs(20)),
            refusals: RateLimit {
                last: None,
                suppressed: 0,
            },
            // Ids differ from a previous run's: SDP clients tell sessions apart by them.
            session_ids: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as u32),
            started: Instant::now(),
            out: Box::new(std::io::stdout()),
        })
    }

    /// Sends the per-flow lines elsewhere (the benchmark opens 100,000 flows).
    pub fn with_output(mut self, out: Box<dyn Write + Send>) -> Control {
        self.out = out;
        self
    }

    pub fn flows(&self) -> usize {
        self.sessions.len()
    }

    /// After a restart: streams on the Menu that are not among `live` groups come off it.
    pub fn prune_menu(&self, live: &[IpAddr]) {
        if let Some(m) = &self.menu {
            let keep = live.iter().map(|g| self.amt_url(*g)).collect();
            let _ = m.send(MenuJob::Prune { keep });
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<Event>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Event::Stopped(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            // Handle a burst of events before the periodic work.
            while let Ok(ev) = rx.try_recv() {
                if matches!(ev, Event::Stopped(_)) {
                    self.shutdown();
                    return;
                }
                self.handle(ev);
            }
            self.periodic();
        }
        self.shutdown();
    }

    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Added {
                src,
                group,
                restored,
            } => self.added(src, group, restored),
            Event::Removed { src, group, idle } => {
                let _ = writeln!(
                    self.out,
                    "Multicast address ({group}, {}) freed: {} silent for {}.",
                    self.port,
                    py_addr(src),
                    humantime::format_duration(idle)
                );
                // A flow never announced goes without a word to SAP or the Menu.
                if let Some(s) = self.sessions.remove(&src)
                    && s.announced
                {
                    self.send_sap(src, &s, true);
                    if let Some(m) = &self.menu {
                        let _ = m.send(MenuJob::Remove {
                            id: self.amt_url(group),
                        });
                    }
                }
                self.dirty = true;
            }
            Event::Refused { src, why } => self.refused(src, why),
            Event::SendFailed(e) => {
                tracing::warn!("sending multicast failed (reported once): {e}");
            }
            Event::Stopped(_) => {}
        }
    }

    fn amt_url(&self, group: IpAddr) -> String {
        sap::amt_url(self.source, group, self.port)
    }

    fn added(&mut self, src: SocketAddr, group: IpAddr, restored: bool) {
        let url = self.amt_url(group);
        if restored {
            let _ = writeln!(
                self.out,
                "Multicast address ({group}, {}) restored for {}.",
                self.port,
                py_addr(src)
            );
        } else {
            // The original's line, exactly.
            let _ = writeln!(
                self.out,
                "Multicast address ({group}, {}) allocated for {}.",
                self.port,
                py_addr(src)
            );
        }
        let _ = writeln!(self.out, "Stream {url} translated from {}.", py_addr(src));
        self.session_ids = self.session_ids.wrapping_add(1);
        let id = self.session_ids;
        let sdp = self.sdp(src, group, id);
        // A restored flow lived before the restart; a new one is announced once it has
        // lived `announce_after`, so a burst of one-datagram senders announces nothing.
        let due = if restored {
            self.tick()
        } else {
            self.tick().saturating_add(self.announce_after)
        };
        let s = Session {
            group,
            hash: sap::msg_id_hash(&sdp),
            id,
            next_announce: due,
            announced: false,
        };
        self.sessions.insert(src, s);
        self.unannounced.push_back((src, due));
        self.dirty = true;
        self.announce_due();
    }

    /// Announces and registers the new flows that have lived long enough.
    fn announce_due(&mut self) {
        let tick = self.tick();
        while let Some(&(src, due)) = self.unannounced.front() {
            if due > tick {
                break;
            }
            self.unannounced.pop_front();
            // Gone meanwhile, or a later flow of the same sender (with its own entry).
            let Some(s) = self.sessions.get_mut(&src) else {
                continue;
            };
            if s.announced || s.next_announce != due {
                continue;
            }
            s.announced = true;
            let group = s.group;
            if let Some(m) = &self.menu {
                let _ = m.send(MenuJob::Add {
                    id: self.amt_url(group),
                    source: self.source.to_string(),
                    group: group.to_string(),
                });
            }
        }
    }

    fn refused(&mut self, src: SocketAddr, why: Refusal) {
        let now = Instant::now();
        if self
            .refusals
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.refusals.suppressed += 1;
            return;
        }
        let more = match std::mem::take(&mut self.refusals.suppressed) {
            0 => String::new(),
            n => format!(" ({n} more flows refused since the last line)"),
        };
        tracing::error!("new flow from {src} refused: {why}; its datagrams are dropped{more}");
        self.refusals.last = Some(now);
    }

    fn periodic(&mut self) {
        self.announce_due();
        let now = Instant::now();
        if self.sap_v4.is_some() || self.sap_v6.is_some() {
            let interval = self.sap_interval.unwrap_or_else(|| {
                // A translated flow's SDP is about 300 bytes, its SAP header 24.
                sap::interval(self.sessions.len(), 330)
            });
            let mut due = vec![];
            let tick = self.tick();
            for (src, s) in self.sessions.iter_mut() {
                if s.announced && s.next_announce <= tick {
                    // ±1/3 jitter (RFC 2974 §3.1) so announcers never synchronise.
                    let jitter = 2.0 / 3.0 + rand::random::<f64>() * 2.0 / 3.0;
                    let wait = (interval.as_secs_f64() * jitter * 10.0).max(1.0) as u32;
                    s.next_announce = tick.saturating_add(wait);
                    due.push(*src);
                }
            }
            for src in due {
                if let Some(s) = self.sessions.get(&src) {
                    self.send_sap(src, s, false);
                }
            }
        }
        let refresh = !self.sessions.is_empty() && now - self.last_saved >= self.refresh_every;
        // The whole map is rewritten each time: with many flows, less often (100,000
        // flows: every 10 s), so churn never turns into a disk-writing loop.
        let gap =
            Duration::from_millis(100) + Duration::from_micros(100) * self.sessions.len() as u32;
        if (self.dirty || refresh) && now - self.last_saved >= gap {
            self.save();
        }
    }

    /// 100 ms ticks since the control thread started (u32: 13 years).
    fn tick(&self) -> u32 {
        (self.started.elapsed().as_millis() / 100) as u32
    }

    fn sdp(&self, src: SocketAddr, group: IpAddr, id: u32) -> String {
        Sdp::translated(self.source, src, group, self.port, self.ttl, id as u64).render()
    }

    fn send_sap(&self, src: SocketAddr, s: &Session, deletion: bool) {
        let sdp = self.sdp(src, s.group, s.id);
        let packet = SapPacket::sdp(deletion, s.hash, self.source, &sdp).encode();
        let to = sap::sap_address(s.group);
        let sock = if to.is_ipv6() {
            &self.sap_v6
        } else {
            &self.sap_v4
        };
        if let Some(sock) = sock
            && let Err(e) = sock.send_to(&packet, to)
        {
            tracing::debug!("sending SAP to {to}: {e}");
            // The interface may have been re-created with a new index.
            if let Some(name) = &self.interface
                && let Some(index) = net::ifindex(name)
            {
                let _ = net::set_multicast(
                    &socket2::SockRef::from(sock),
                    to.is_ipv6(),
                    self.ttl,
                    index,
                );
            }
        }
    }

    fn save(&mut self) {
        self.dirty = false;
        self.last_saved = Instant::now();
        let Some(path) = &self.state_file else {
            return;
        };
        let state = State {
            saved_at: unix_now(),
            flows: self
                .sessions
                .iter()
                .map(|(src, s)| SavedFlow {
                    source: *src,
                    group: s.group,
                    url: self.amt_url(s.group),
                })
                .collect(),
        };
        if let Err(e) = write_atomically(path, &serde_json::to_vec(&state).unwrap_or_default()) {
            tracing::warn!("saving translator state to {}: {e}", path.display());
        }
    }

    fn shutdown(&mut self) {
        for (src, s) in &self.sessions {
            if s.announced {
                self.send_sap(*src, s, true);
            }
        }
        self.save();
    }
}

/// A sender the way Python prints it: `('192.0.2.7', 31380)`.
fn py_addr(a: SocketAddr) -> String {
    format!("('{}', {})", a.ip(), a.port())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    saved_at: u64,
    flows: Vec<SavedFlow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedFlow {
    source: SocketAddr,
    group: IpAddr,
    /// The stream's amt:// URL, for `status` and for people reading the file.
    #[serde(default)]
    url: String,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The flows of a previous run that may still be alive (saved less than `idle` ago).
pub fn load_state(path: &Path, idle: Duration) -> Vec<(SocketAddr, IpAddr)> {
    let Ok(bytes) = std::fs::read(path) else {
        return vec![];
    };
    let state: State = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("ignoring translator state {}: {e}", path.display());
            return vec![];
        }
    };
    if unix_now().saturating_sub(state.saved_at) > idle.as_secs().max(1) {
        tracing::info!(
            "translator state {} is older than the idle timeout: starting afresh",
            path.display()
        );
        return vec![];
    }
    state
        .flows
        .into_iter()
        .map(|f| (f.source, f.group))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_style_sender() {
        assert_eq!(
            py_addr("192.0.2.7:31380".parse().unwrap()),
            "('192.0.2.7', 31380)"
        );
    }

    #[test]
    fn state_round_trip_and_age() {
        let dir = std::env::temp_dir().join(format!("appliance-state-{}", std::process::id()));
        let path = dir.join("flows.json");
        let state = State {
            saved_at: unix_now(),
            flows: vec![SavedFlow {
                source: "192.0.2.7:31380".parse().unwrap(),
                group: "232.1.2.3".parse().unwrap(),
                url: String::new(),
            }],
        };
        write_atomically(&path, &serde_json::to_vec(&state).unwrap()).unwrap();
        let back = load_state(&path, Duration::from_secs(60));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.to_string(), "232.1.2.3");
        let old = State {
            saved_at: unix_now() - 120,
            flows: state.flows,
        };
        write_atomically(&path, &serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(load_state(&path, Duration::from_secs(60)).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
