//! One stream's media: a GStreamer pipeline (source → x264 zerolatency +
//! AAC → `mpegtsmux alignment=7` → `appsink`) whose 1316-byte datagrams go
//! to a librist sender bonding every link with its weight, encrypted with
//! the stream's key. A control thread reads librist's per-link statistics
//! once a second, runs adaptive bitrate (`abr`) and publishes a snapshot
//! for the session to send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use strata_protocol::{LinkStats, StreamStats};

use crate::abr::{Abr, LinkSample, Sample};

/// What to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Colour bars (or another `videotestsrc` pattern: `snow` is noise no
    /// encoder can shrink, for filling links), a 440 Hz tone and the
    /// running time burnt in.
    Pattern(String),
    /// A media file, played in real time.
    File(std::path::PathBuf),
    /// A V4L2 camera (audio: ALSA's default capture device).
    Device(String),
}

impl Source {
    /// Reads a stream's `input`: `test-pattern[:NAME]` (or none),
    /// `file:PATH`, `v4l2:/dev/videoN`.
    pub fn parse(input: Option<&str>) -> Result<Source, String> {
        match input.map(str::trim) {
            None | Some("") | Some("test-pattern") | Some("pattern") => {
                Ok(Source::Pattern("smpte".into()))
            }
            Some(s) if s.starts_with("test-pattern:") => {
                let name = &s["test-pattern:".len()..];
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(format!("unknown test pattern {name:?}"));
                }
                Ok(Source::Pattern(name.into()))
            }
            Some(s) if s.starts_with("file:") => Ok(Source::File(s["file:".len()..].into())),
            Some(s) if s.starts_with("v4l2:") => Ok(Source::Device(s["v4l2:".len()..].into())),
            Some(other) => Err(format!("unknown input {other:?}")),
        }
    }
}

/// One path to the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTarget {
    /// Shown in stats; letters, digits, `-`, `_`.
    pub name: String,
    /// `host:port` of the receiver as reached over this link.
    pub address: String,
    pub weight: u32,
}

/// Settings of one stream's sender.
#[derive(Clone)]
pub struct SendConfig {
    pub source: Source,
    pub links: Vec<LinkTarget>,
    pub psk: [u8; 32],
    /// RIST retransmission buffer, ms.
    pub buffer_ms: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub start_kbps: u32,
    pub min_kbps: u32,
    pub max_kbps: u32,
    /// Write `hash time_ns` of sampled datagrams here (latency benchmark).
    pub packet_trace: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendConfig")
            .field("source", &self.source)
            .field("links", &self.links)
            .field("psk", &"***")
            .finish_non_exhaustive()
    }
}

fn pipeline_description(config: &SendConfig) -> String {
    let (w, h, fps) = (config.width, config.height, config.fps);
    let raw_video = format!("video/x-raw,width={w},height={h},framerate={fps}/1");
    let encode_video = format!(
        "timeoverlay halignment=left valignment=bottom ! videoconvert ! queue max-size-buffers=2 ! \
         x264enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max={fps} \
         vbv-buf-capacity=1000 ! video/x-h264,stream-format=byte-stream ! h264parse ! queue ! mux.",
        kbps = config.start_kbps,
    );
    let encode_audio =
        "audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 ! avenc_aac bitrate=64000 ! \
         aacparse ! queue ! mux.";
    let (video, audio, sync) = match &config.source {
        Source::Pattern(pattern) => (
            format!("videotestsrc is-live=true pattern={pattern} ! {raw_video} ! {encode_video}"),
            format!("audiotestsrc is-live=true wave=sine freq=440 volume=0.2 ! {encode_audio}"),
            false,
        ),
        Source::File(path) => (
            format!(
                "filesrc location=\"{}\" ! decodebin name=dec dec. ! queue ! videoconvert ! videoscale ! \
                 videorate ! {raw_video} ! {encode_video}",
                path.display().to_string().replace('"', "")
            ),
            format!("dec. ! queue ! {encode_audio}"),
            // A file has no pace of its own: play it at its timestamps.
            true,
        ),
        Source::Device(device) => (
            format!(
                "v4l2src device=\"{}\" ! videoconvert ! videoscale ! videorate ! {raw_video} ! {encode_video}",
                device.replace('"', "")
            ),
            format!("alsasrc ! queue ! {encode_audio}"),
            false,
        ),
    };
    format!(
        "{video} {audio} mpegtsmux name=mux alignment=7 ! \
         appsink name=out sync={sync} max-buffers=500 drop=false"
    )
}

/// One link's latest librist report.
#[derive(Debug, Clone, Default)]
struct LinkReport {
    at: Option<Instant>,
    /// The receiver answered on this link in the last interval.
    heard: bool,
    sent_kbps: f64,
    retransmitted_share: f64,
    quality: f64,
    rtt_ms: f64,
}

/// A link that has not reported for this long is down.
const LINK_SILENT: Duration = Duration::from_millis(2500);

struct Shared {
    encoded_bytes: AtomicU64,
    links: Mutex<HashMap<String, LinkReport>>,
    snapshot: Mutex<Option<StreamStats>>,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
}

/// A running stream; dropping it stops the pipeline and RIST.
pub struct Stream {
    stream_id: String,
    pipeline: gst::Pipeline,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.pipeline.set_state(gst::State::Null);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Stream {
    pub fn start(stream_id: &str, config: SendConfig) -> Result<Stream, String> {
        if config.links.is_empty() {
            return Err("no link to send on".into());
        }
        gst::init().map_err(|e| format!("GStreamer: {e}"))?;
        let pipeline = gst::parse::launch(&pipeline_description(&config))
            .map_err(|e| format!("building the pipeline: {e}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| "not a pipeline".to_owned())?;
        let appsink = pipeline
            .by_name("out")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or("no appsink")?;
        let encoder = pipeline.by_name("venc").ok_or("no encoder")?;

        let shared = Arc::new(Shared {
            encoded_bytes: AtomicU64::new(0),
            links: Mutex::new(HashMap::new()),
            snapshot: Mutex::new(None),
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let rist_config = rist::Config {
            profile: rist::Profile::Main,
            links: config
                .links
                .iter()
                .map(|l| rist::Link {
                    name: l.name.clone(),
                    address: l.address.clone(),
                    weight: l.weight,
                })
                .collect(),
            passphrase: Some(hex::encode(config.psk)),
            buffer_ms: config.buffer_ms,
            stats_interval_ms: 1000,
            cname: "strata-agent".into(),
        };
        let on_event = {
            let shared = shared.clone();
            move |event: rist::Event| match event {
                rist::Event::Stats(rist::Stats::SenderPeer(p)) => {
                    let mut links = shared.links.lock().unwrap_or_else(|e| e.into_inner());
                    links.insert(
                        p.link.clone(),
                        LinkReport {
                            at: Some(Instant::now()),
                            heard: p.received > 0,
                            sent_kbps: p.bandwidth_bps / 1000.0,
                            retransmitted_share: if p.sent > 0 {
                                p.retransmitted as f64 / p.sent as f64
                            } else {
                                0.0
                            },
                            quality: p.quality,
                            rtt_ms: p.rtt_ms,
                        },
                    );
                }
                rist::Event::Stats(_) => {}
                rist::Event::Log { level, message } => {
                    if level <= rist::Level::Notice {
                        tracing::info!(target: "librist", "{message}");
                    } else {
                        tracing::debug!(target: "librist", "{message}");
                    }
                }
            }
        };
        let mut sender =
            rist::Sender::new(&rist_config, on_event).map_err(|e| format!("RIST: {e}"))?;

        let mut threads = Vec::new();
        let mut trace = match &config.packet_trace {
            Some(path) => Some(
                rist::trace::PacketTrace::open(path).map_err(|e| format!("packet trace: {e}"))?,
            ),
            None => None,
        };
        {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("rist-out".into())
                    .spawn(move || {
                        while !shared.stop.load(Ordering::Relaxed) {
                            let Some(sample) =
                                appsink.try_pull_sample(gst::ClockTime::from_mseconds(100))
                            else {
                                // `is_eos` is also true before the pipeline
                                // plays (this thread starts first): only
                                // wait, never leave, until told to stop.
                                if appsink.is_eos() {
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                                continue;
                            };
                            let Some(buffer) = sample.buffer() else {
                                continue;
                            };
                            let Ok(map) = buffer.map_readable() else {
                                continue;
                            };
                            shared
                                .encoded_bytes
                                .fetch_add(map.len() as u64, Ordering::Relaxed);
                            for datagram in map.chunks(1316) {
                                if let Some(t) = trace.as_mut() {
                                    t.record(datagram);
                                }
                                if sender.write(datagram).is_err() {
                                    tracing::warn!("RIST refused a datagram");
                                }
                            }
                        }
                    })
                    .map_err(|e| e.to_string())?,
            );
        }
        {
            let shared = shared.clone();
            let stream_id = stream_id.to_owned();
            let names: Vec<String> = config.links.iter().map(|l| l.name.clone()).collect();
            let mut abr = Abr::new(
                f64::from(config.start_kbps),
                f64::from(config.min_kbps),
                f64::from(config.max_kbps),
            );
            let bus = pipeline.bus().ok_or("no bus")?;
            threads.push(
                std::thread::Builder::new()
                    .name("abr".into())
                    .spawn(move || {
                        control_loop(&stream_id, &names, &shared, &mut abr, &encoder, &bus)
                    })
                    .map_err(|e| e.to_string())?,
            );
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| format!("starting the pipeline: {e}"))?;
        Ok(Stream {
            stream_id: stream_id.to_owned(),
            pipeline,
            shared,
            threads,
        })
    }

    /// The latest one-second snapshot.
    pub fn stats(&self) -> Option<StreamStats> {
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pipeline errors since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.errors.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn id(&self) -> &str {
        &self.stream_id
    }
}

fn control_loop(
    stream_id: &str,
    names: &[String],
    shared: &Shared,
    abr: &mut Abr,
    encoder: &gst::Element,
    bus: &gst::Bus,
) {
    let mut last = (Instant::now(), 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
            if let Some(message) = bus.timed_pop(gst::ClockTime::from_mseconds(100)) {
                if let gst::MessageView::Error(e) = message.view() {
                    let text = format!("pipeline: {}", e.error());
                    tracing::warn!(%stream_id, "{text}");
                    shared
                        .errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(text);
                }
            }
        }
        let now = Instant::now();
        let bytes = shared.encoded_bytes.load(Ordering::Relaxed);
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let encoder_kbps = (bytes - last.1) as f64 * 8.0 / 1000.0 / secs;
        last = (now, bytes);

        let reports = shared
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut links = Vec::new();
        let mut samples = Vec::new();
        for name in names {
            let report = reports.get(name).cloned().unwrap_or_default();
            let up = report.heard && report.at.is_some_and(|t| t.elapsed() < LINK_SILENT);
            samples.push(LinkSample {
                sent_kbps: report.sent_kbps,
                retransmitted_share: report.retransmitted_share,
                quality: report.quality,
                up,
            });
            links.push(LinkStats {
                name: name.clone(),
                bitrate_kbps: if up { report.sent_kbps } else { 0.0 },
                rtt_ms: report.rtt_ms,
                loss_pct: if up {
                    (100.0 - report.quality).clamp(0.0, 100.0)
                } else {
                    100.0
                },
                state: if up { "up" } else { "down" }.into(),
            });
        }
        if let Some(target) = abr.step(&Sample {
            encoder_kbps,
            links: samples,
        }) {
            tracing::info!(%stream_id, target_kbps = target.round(), "encoder bitrate changed");
            encoder.set_property("bitrate", target.round().max(1.0) as u32);
        }
        *shared.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(StreamStats {
            stream_id: stream_id.to_owned(),
            encoder_kbps,
            target_kbps: Some(abr.target_kbps),
            links,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_named_sources() {
        let bars = Source::Pattern("smpte".into());
        assert_eq!(Source::parse(None), Ok(bars.clone()));
        assert_eq!(Source::parse(Some("test-pattern")), Ok(bars));
        assert_eq!(
            Source::parse(Some("test-pattern:snow")),
            Ok(Source::Pattern("snow".into()))
        );
        assert!(Source::parse(Some("test-pattern:a b")).is_err());
        assert_eq!(
            Source::parse(Some("file:/m/a.mp4")),
            Ok(Source::File("/m/a.mp4".into()))
        );
        assert_eq!(
            Source::parse(Some("v4l2:/dev/video0")),
            Ok(Source::Device("/dev/video0".into()))
        );
        assert!(Source::parse(Some("hdmi")).is_err());
    }

    #[test]
    fn the_pattern_pipeline_parses() {
        gst::init().unwrap();
        let config = SendConfig {
            source: Source::Pattern("snow".into()),
            links: vec![],
            psk: [0; 32],
            buffer_ms: 1000,
            width: 320,
            height: 240,
            fps: 25,
            start_kbps: 500,
            min_kbps: 200,
            max_kbps: 800,
            packet_trace: None,
        };
        gst::parse::launch(&pipeline_description(&config)).unwrap();
    }
}
