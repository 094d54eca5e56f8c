//! The media path: RIST in (librist, every link on the stream's port,
//! decrypted with the stream's key) and out to each destination.
//!
//! One thread reads RIST datagrams and hands each to every output's
//! `appsrc`; another, the watchdog, reads the outputs' buses, rebuilds an
//! output that failed or has written nothing for `stall_after` while input
//! kept arriving, and keeps the outputs' stats. Neither touches the other's
//! work: a rebuilt output never drops the RIST input.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_protocol::local::{EgressStats, ReceiverDestination, ReceiverEvent, RistInStats};
use tokio::sync::broadcast;

use crate::egress::{Egress, Target};

/// Settings of the media path.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub stream_id: String,
    pub bind: String,
    pub port: u16,
    /// RIST buffer: how long a lost packet can be waited for.
    pub latency_ms: u32,
    /// An output that writes nothing for this long while input arrives is
    /// rebuilt.
    pub stall_after: Duration,
    /// Benchmarks: sampled datagrams' hashes and arrival times go here.
    pub packet_trace: Option<std::path::PathBuf>,
}

/// Counters shared by the media threads and the stats reporter.
pub struct MediaState {
    pub bytes_in: AtomicU64,
    pub packets_in: AtomicU64,
    pub undecodable: AtomicU64,
    /// Milliseconds after `epoch` of the last datagram.
    last_in_ms: AtomicU64,
    epoch: Instant,
    pub rist: Mutex<RistInStats>,
    pub egress: Mutex<Vec<EgressStats>>,
    stop: AtomicBool,
}

impl MediaState {
    fn input_recent(&self, within: Duration) -> bool {
        let last = self.last_in_ms.load(Ordering::Relaxed);
        last > 0 && self.epoch.elapsed() < Duration::from_millis(last) + within
    }
}

/// An output slot: what to build, and the pipeline when one runs.
struct Slot {
    destination: ReceiverDestination,
    egress: Option<Egress>,
    /// Rebuilds so far, and failures since the output last wrote.
    restarts: u64,
    failures: u64,
    retry_at: Instant,
}

/// The running media path; dropping it stops the threads.
pub struct Media {
    pub state: Arc<MediaState>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Media {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a datagram is whole MPEG-TS packets. A wrong key decrypts to
/// noise, which fails this at once.
fn is_ts(data: &[u8]) -> bool {
    !data.is_empty() && data.len().is_multiple_of(188) && data.chunks(188).all(|p| p[0] == 0x47)
}

/// librist's words for packets it could not decrypt or parse.
fn is_key_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("malformed packet") || m.contains("nonce") || m.contains("decrypt")
}

fn error_event(events: &broadcast::Sender<ReceiverEvent>, stream_id: &str, message: String) {
    tracing::warn!(%stream_id, %message);
    let _ = events.send(ReceiverEvent::Error {
        stream_id: stream_id.to_owned(),
        message,
    });
}

/// Starts RIST in and every output.
pub fn start(
    config: MediaConfig,
    psk: &[u8; 32],
    destinations: Vec<ReceiverDestination>,
    events: broadcast::Sender<ReceiverEvent>,
) -> anyhow::Result<Media> {
    let state = Arc::new(MediaState {
        bytes_in: AtomicU64::new(0),
        packets_in: AtomicU64::new(0),
        undecodable: AtomicU64::new(0),
        last_in_ms: AtomicU64::new(0),
        epoch: Instant::now(),
        rist: Mutex::new(RistInStats::default()),
        egress: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let mut slots = Vec::new();
    for destination in destinations {
        // A destination that cannot be understood is reported and left
        // out; the others still get the stream.
        if let Err(e) = Target::parse(&destination) {
            error_event(
                &events,
                &config.stream_id,
                format!("destination {}: {e:#}", destination.platform),
            );
            continue;
        }
        slots.push(Slot {
            destination,
            egress: None,
            restarts: 0,
            failures: 0,
            retry_at: Instant::now(),
        });
    }
    let slots = Arc::new(Mutex::new(slots));

    let rist_config = rist::Config {
        profile: rist::Profile::Main,
        links: vec![rist::Link {
            name: String::new(),
            address: format!("{}:{}", config.bind, config.port),
            weight: 0,
        }],
        passphrase: Some(hex::encode(psk)),
        buffer_ms: config.latency_ms,
        stats_interval_ms: 1000,
        cname: "strata-receiver".into(),
    };
    let on_event = {
        let state = state.clone();
        let events = events.clone();
        let stream_id = config.stream_id.clone();
        let last_key_error = Mutex::new(None::<Instant>);
        move |event: rist::Event| match event {
            rist::Event::Log { level, message } => {
                if level == rist::Level::Error && is_key_error(&message) {
                    state.undecodable.fetch_add(1, Ordering::Relaxed);
                    let mut last = last_key_error.lock().unwrap_or_else(|p| p.into_inner());
                    // Once every 5 s is enough to tell the operator.
                    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        *last = Some(Instant::now());
                        error_event(
                            &events,
                            &stream_id,
                            format!("RIST packets could not be decrypted (wrong key?): {message}"),
                        );
                    }
                } else if level <= rist::Level::Notice {
                    tracing::info!(target: "librist", "{message}");
                } else {
                    tracing::debug!(target: "librist", "{message}");
                }
            }
            rist::Event::Stats(rist::Stats::ReceiverFlow(flow)) => {
                let mut rist = state.rist.lock().unwrap_or_else(|p| p.into_inner());
                rist.links = flow.peers;
                rist.links_alive = flow.peers_alive;
                rist.bitrate_kbps = flow.bandwidth_bps / 1000.0;
                // librist reports these per interval; we keep totals.
                rist.missing += flow.missing;
                rist.recovered += flow.recovered;
                // Lost packets are a subset of missing ones; librist's
                // flow report now and then carries a wrapped counter
                // (65529 seen with 7 missing), which must not count.
                if flow.lost <= flow.missing {
                    rist.lost += flow.lost;
                }
                rist.rtt_ms = flow.rtt_ms;
            }
            rist::Event::Stats(_) => {}
        }
    };
    let receiver = rist::Receiver::new(&rist_config, on_event)
        .map_err(|e| anyhow::anyhow!("starting RIST on {}:{}: {e}", config.bind, config.port))?;

    let trace = match &config.packet_trace {
        Some(path) => Some(rist::trace::PacketTrace::open(path)?),
        None => None,
    };
    let mut threads = Vec::new();
    {
        let (state, slots) = (state.clone(), slots.clone());
        let events = events.clone();
        let stream_id = config.stream_id.clone();
        threads.push(
            std::thread::Builder::new()
                .name("rist-in".into())
                .spawn(move || ingress(receiver, state, slots, events, stream_id, trace))?,
        );
    }
    {
        let state = state.clone();
        threads.push(
            std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || watchdog(config, state, slots, events))?,
        );
    }
    Ok(Media { state, threads })
}

fn ingress(
    mut receiver: rist::Receiver,
    state: Arc<MediaState>,
    slots: Arc<Mutex<Vec<Slot>>>,
    events: broadcast::Sender<ReceiverEvent>,
    stream_id: String,
    mut trace: Option<rist::trace::PacketTrace>,
) {
    let mut reported_noise = false;
    while !state.stop.load(Ordering::Relaxed) {
        let block = match receiver.read(100) {
            Ok(Some(block)) => block,
            Ok(None) => continue,
            Err(e) => {
                error_event(&events, &stream_id, format!("RIST read failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let data = block.payload();
        if !is_ts(data) {
            state.undecodable.fetch_add(1, Ordering::Relaxed);
            if !reported_noise {
                reported_noise = true;
                error_event(
                    &events,
                    &stream_id,
                    "RIST delivers data that is not MPEG-TS (wrong key or wrong sender?)".into(),
                );
            }
            continue;
        }
        if let Some(t) = trace.as_mut() {
            t.record(data);
        }
        state
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        state.packets_in.fetch_add(1, Ordering::Relaxed);
        state.last_in_ms.store(
            state.epoch.elapsed().as_millis().max(1) as u64,
            Ordering::Relaxed,
        );
        let slots = slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.iter() {
            if let Some(egress) = &slot.egress {
                egress.push(data);
            }
        }
    }
}

/// Delay before rebuilding an output that failed `restarts` times.
fn retry_delay(restarts: u64) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << restarts.min(5))).min(Duration::from_secs(10))
}

fn watchdog(
    config: MediaConfig,
    state: Arc<MediaState>,
    slots: Arc<Mutex<Vec<Slot>>>,
    events: broadcast::Sender<ReceiverEvent>,
) {
    let tick = Duration::from_millis(250);
    let mut last_stats = Instant::now();
    while !state.stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        let now = Instant::now();
        let input = state.input_recent(Duration::from_secs(2));
        // Decide under the lock; stop and start pipelines outside it, so
        // the input thread is never held up while they change state.
        let mut to_stop = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            for (i, slot) in slots.iter_mut().enumerate() {
                let Some(egress) = &mut slot.egress else {
                    if now >= slot.retry_at {
                        to_start.push((i, slot.destination.clone(), slot.restarts));
                    }
                    continue;
                };
                egress.poll_bus();
                if egress.bytes_out() > 0 {
                    slot.failures = 0;
                }
                let stalled = input
                    && egress.started.elapsed() > config.stall_after
                    && egress.quiet_for() > config.stall_after;
                let reason = match (&egress.failed, stalled) {
                    (Some(error), _) => error.clone(),
                    (None, true) => format!("no output for {:?}", config.stall_after),
                    (None, false) => continue,
                };
                // An output that fails at once (a server that refuses) is
                // retried after a growing delay; a stalled one at once.
                let delay = if egress.failed.is_some() {
                    slot.failures += 1;
                    retry_delay(slot.failures - 1)
                } else {
                    Duration::ZERO
                };
                slot.restarts += 1;
                slot.retry_at = now + delay;
                if let Some(egress) = slot.egress.take() {
                    to_stop.push((egress, reason));
                }
            }
        }
        for (egress, reason) in to_stop {
            error_event(
                &events,
                &config.stream_id,
                format!("output {} restarts: {reason}", egress.target.hint),
            );
            egress.stop();
        }
        for (i, destination, restarts) in to_start {
            let started = Target::parse(&destination).and_then(|t| Egress::start(t, restarts));
            let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            match started {
                Ok(egress) => slots[i].egress = Some(egress),
                Err(e) => {
                    slots[i].failures += 1;
                    slots[i].retry_at = Instant::now() + retry_delay(slots[i].failures - 1);
                    drop(slots);
                    error_event(
                        &events,
                        &config.stream_id,
                        format!("output {}: {e:#}", destination.platform),
                    );
                }
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            let interval = last_stats.elapsed();
            last_stats = Instant::now();
            let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            let stats = slots
                .iter_mut()
                .map(|slot| match &mut slot.egress {
                    Some(e) => {
                        let stalled = input && e.quiet_for() > Duration::from_secs(2);
                        let mut stats = e.stats(interval, stalled);
                        stats.restarts = slot.restarts;
                        stats
                    }
                    None => EgressStats {
                        platform: slot.destination.platform.clone(),
                        state: "stalled".into(),
                        restarts: slot.restarts,
                        ..Default::default()
                    },
                })
                .collect();
            *state.egress.lock().unwrap_or_else(|p| p.into_inner()) = stats;
        }
    }
    let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
    for slot in slots.iter_mut() {
        if let Some(e) = slot.egress.take() {
            e.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_ts_packets_pass() {
        assert!(is_ts(&[0x47; 1316]));
        let mut noise = vec![0x47u8; 1316];
        noise[188] = 0x12;
        assert!(!is_ts(&noise));
        assert!(!is_ts(&[0x47; 100]));
        assert!(!is_ts(&[]));
    }

    #[test]
    fn rebuilds_back_off_to_ten_seconds() {
        assert_eq!(retry_delay(0), Duration::from_millis(500));
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(9), Duration::from_secs(10));
    }

    #[test]
    fn key_errors_are_recognised() {
        assert!(is_key_error(
            "Malformed packet, rtp flag value is e4 instead of 0x80."
        ));
        assert!(!is_key_error("Peer connected"));
    }
}
