//! The outputs: one GStreamer pipeline per destination, each fed the
//! stream's MPEG-TS through its own `appsrc`. Keeping them apart is what
//! lets the watchdog rebuild one wedged output (a dead RTMP connection, an
//! SRT listener that went away) while the RIST input and the other outputs
//! carry on untouched.
//!
//! - RTMP/RTMPS: `tsdemux` → `h264parse`/`aacparse` → `flvmux
//!   streamable=true` → `queue` → `rtmp2sink`. No re-encoding.
//! - SRT (caller): `tsdemux` → parsers → `mpegtsmux alignment=7` →
//!   `srtsink`, with the destination's key as the SRT passphrase.
//! - File: the TS as it arrived, written to disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use secrets::Redacted;
use strata_protocol::local::{EgressStats, ReceiverDestination};

/// What kind of output a destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rtmp,
    Srt,
    File,
}

/// A destination parsed for the pipeline: the full location (with the
/// stream key in it) is a secret; `hint` is scheme and host only.
pub struct Target {
    pub kind: Kind,
    pub platform: String,
    pub hint: String,
    location: Redacted<String>,
    passphrase: Option<Redacted<String>>,
}

impl Target {
    pub fn parse(destination: &ReceiverDestination) -> anyhow::Result<Target> {
        let url = destination.url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{} destination has no scheme", destination.platform))?;
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let hint = format!("{scheme}://{host}");
        let key = destination.stream_key.trim();
        let (kind, location, passphrase) = match scheme {
            "rtmp" | "rtmps" => {
                let location = if key.is_empty() {
                    url.to_owned()
                } else {
                    format!("{}/{key}", url.trim_end_matches('/'))
                };
                (Kind::Rtmp, location, None)
            }
            "srt" => {
                // SRT's passphrase is 10 to 79 characters; an empty key
                // means an unencrypted listener.
                let passphrase = match key.len() {
                    0 => None,
                    10..=79 => Some(Redacted::new(key.to_owned())),
                    _ => bail!("an SRT passphrase must be 10 to 79 characters"),
                };
                (Kind::Srt, url.to_owned(), passphrase)
            }
            "file" => (Kind::File, rest.to_owned(), None),
            other => bail!("unsupported destination scheme {other}"),
        };
        Ok(Target {
            kind,
            platform: destination.platform.clone(),
            hint,
            location: Redacted::new(location),
            passphrase,
        })
    }
}

const TS_CAPS: &str = "video/mpegts,systemstream=true,packetsize=188";

fn description(kind: Kind) -> &'static str {
    match kind {
        Kind::Rtmp => {
            "appsrc name=src ! tsdemux name=d \
             d. ! video/x-h264 ! queue ! h264parse ! queue ! mux. \
             d. ! audio/mpeg ! queue ! aacparse ! queue ! mux. \
             flvmux name=mux streamable=true ! queue ! rtmp2sink name=sink sync=false"
        }
        Kind::Srt => {
            "appsrc name=src ! tsdemux name=d \
             d. ! video/x-h264 ! queue ! h264parse ! queue ! mux. \
             d. ! audio/mpeg ! queue ! aacparse ! queue ! mux. \
             mpegtsmux name=mux alignment=7 ! queue ! srtsink name=sink sync=false"
        }
        Kind::File => "appsrc name=src ! queue ! filesink name=sink sync=false",
    }
}

/// One running output pipeline and what it has written.
pub struct Egress {
    pub target: Target,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    bytes_out: Arc<AtomicU64>,
    /// Milliseconds after `epoch` of the last buffer the sink took.
    last_out_ms: Arc<AtomicU64>,
    epoch: Instant,
    pub started: Instant,
    pub restarts: u64,
    /// Set when the pipeline reported an error; the watchdog rebuilds it.
    pub failed: Option<String>,
    last_bytes: u64,
}

impl Egress {
    pub fn start(target: Target, restarts: u64) -> anyhow::Result<Egress> {
        let pipeline = gst::parse::launch(description(target.kind))
            .context("building the output pipeline")?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .context("no appsrc")?;
        src.set_caps(Some(&gst::Caps::from_str(TS_CAPS)?));
        src.set_is_live(true);
        src.set_format(gst::Format::Time);
        src.set_do_timestamp(true);
        // A wedged output must not hold the stream in memory: at most about
        // 4 s at 8 Mb/s, then the oldest data goes.
        src.set_max_bytes(4 * 1024 * 1024);
        src.set_property_from_str("leaky-type", "downstream");
        let sink = pipeline.by_name("sink").context("no sink")?;
        match target.kind {
            Kind::Rtmp | Kind::File => {
                sink.set_property("location", target.location.expose().as_str())
            }
            Kind::Srt => {
                sink.set_property("uri", target.location.expose().as_str());
                if let Some(p) = &target.passphrase {
                    sink.set_property("passphrase", p.expose().as_str());
                    sink.set_property_from_str("pbkeylen", "32");
                }
            }
        }
        let bytes_out = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let last_out_ms = Arc::new(AtomicU64::new(0));
        let pad = sink.static_pad("sink").context("the sink has no pad")?;
        let (bytes, last) = (bytes_out.clone(), last_out_ms.clone());
        pad.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, info| {
                let size = match &info.data {
                    Some(gst::PadProbeData::Buffer(b)) => b.size(),
                    Some(gst::PadProbeData::BufferList(l)) => l.calculate_size(),
                    _ => 0,
                };
                bytes.fetch_add(size as u64, Ordering::Relaxed);
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            },
        );
        pipeline
            .set_state(gst::State::Playing)
            .context("starting the output pipeline")?;
        Ok(Egress {
            target,
            pipeline,
            src,
            bytes_out,
            last_out_ms,
            epoch,
            started: Instant::now(),
            restarts,
            failed: None,
            last_bytes: 0,
        })
    }

    /// Hands one datagram of TS to this output; never blocks.
    pub fn push(&self, data: &[u8]) {
        let _ = self.src.push_buffer(gst::Buffer::from_slice(data.to_vec()));
    }

    /// How long since the sink last took data (since the start, when it
    /// never did).
    pub fn quiet_for(&self) -> Duration {
        let last = self.last_out_ms.load(Ordering::Relaxed);
        let since = Duration::from_millis(last);
        self.epoch.elapsed().saturating_sub(since)
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Reads the pipeline's bus; an error marks the output failed.
    pub fn poll_bus(&mut self) {
        let Some(bus) = self.pipeline.bus() else {
            return;
        };
        while let Some(message) = bus.pop() {
            match message.view() {
                gst::MessageView::Error(e) => {
                    self.failed = Some(format!("{} ({})", e.error(), self.target.hint));
                }
                gst::MessageView::Eos(_) => {
                    self.failed = Some(format!("end of stream at {}", self.target.hint));
                }
                _ => {}
            }
        }
    }

    /// This output's stats since the last call `interval` ago.
    pub fn stats(&mut self, interval: Duration, stalled: bool) -> EgressStats {
        let bytes = self.bytes_out();
        let kbps = (bytes - self.last_bytes) as f64 * 8.0 / 1000.0 / interval.as_secs_f64();
        self.last_bytes = bytes;
        EgressStats {
            platform: self.target.platform.clone(),
            target: self.target.hint.clone(),
            state: if stalled || self.failed.is_some() {
                "stalled"
            } else if bytes == 0 {
                "starting"
            } else {
                "live"
            }
            .into(),
            bytes_out: bytes,
            bitrate_kbps: kbps,
            restarts: self.restarts,
        }
    }

    pub fn stop(self) {
        let _ = self.src.end_of_stream();
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

use std::str::FromStr;

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(platform: &str, url: &str, key: &str) -> ReceiverDestination {
        ReceiverDestination {
            platform: platform.into(),
            url: url.into(),
            stream_key: key.into(),
        }
    }

    #[test]
    fn destinations_become_targets_without_showing_keys() {
        let t = Target::parse(&dest("custom_rtmp", "rtmp://h:1935/live/", "sk")).unwrap();
        assert_eq!((t.kind, t.hint.as_str()), (Kind::Rtmp, "rtmp://h:1935"));
        assert_eq!(t.location.expose(), "rtmp://h:1935/live/sk");
        let t = Target::parse(&dest("srt", "srt://h:9000", "0123456789ab")).unwrap();
        assert_eq!(t.kind, Kind::Srt);
        assert!(t.passphrase.is_some());
        assert!(Target::parse(&dest("srt", "srt://h:9000", "short")).is_err());
        assert!(Target::parse(&dest("x", "http://h", "")).is_err());
        let t = Target::parse(&dest("file", "file:///tmp/x.ts", "")).unwrap();
        assert_eq!(t.location.expose(), "/tmp/x.ts");
    }
}
