//! Running streams on the agent. Until the media path exists this sends
//! placeholder datagrams (1316 bytes, ten a second) to the receiver's port
//! and counts them; see the crate docs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrets::Redacted;
use strata_protocol::{LinkStats, StreamStart, StreamStats};

struct Running {
    /// Held for the media path; never logged or written.
    _psk: Redacted<String>,
    sent: Arc<AtomicU64>,
    last: (Instant, u64),
    task: tokio::task::JoinHandle<()>,
}

/// The streams this agent is sending.
#[derive(Default)]
pub struct Streams {
    running: HashMap<String, Running>,
}

impl Streams {
    /// Starts a stream, or restarts it with a new key or address.
    pub async fn start(&mut self, start: &StreamStart) -> Result<(), String> {
        let key = hex::decode(&start.psk).map_err(|_| "the key is not hex".to_owned())?;
        if key.len() != 32 {
            return Err(format!("the key is {} bytes, expected 32", key.len()));
        }
        self.stop(&start.stream_id);
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
            .await
            .map_err(|e| format!("binding a UDP socket: {e}"))?;
        socket
            .connect((start.receiver.host.as_str(), start.receiver.port))
            .await
            .map_err(|e| format!("receiver address: {e}"))?;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            let packet = vec![0x47u8; 1316];
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if let Ok(n) = socket.send(&packet).await {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        self.running.insert(
            start.stream_id.clone(),
            Running {
                _psk: Redacted::new(start.psk.clone()),
                sent,
                last: (Instant::now(), 0),
                task,
            },
        );
        Ok(())
    }

    pub fn stop(&mut self, stream_id: &str) -> bool {
        match self.running.remove(stream_id) {
            Some(r) => {
                r.task.abort();
                true
            }
            None => false,
        }
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.running.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Stats since the last call, one entry per running stream.
    pub fn stats(&mut self) -> Vec<StreamStats> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, r) in &mut self.running {
            let total = r.sent.load(Ordering::Relaxed);
            let secs = now.duration_since(r.last.0).as_secs_f64().max(0.001);
            let kbps = (total - r.last.1) as f64 * 8.0 / 1000.0 / secs;
            r.last = (now, total);
            out.push(StreamStats {
                stream_id: id.clone(),
                encoder_kbps: kbps,
                links: vec![LinkStats {
                    name: "placeholder".into(),
                    bitrate_kbps: kbps,
                    rtt_ms: 0.0,
                    loss_pct: 0.0,
                }],
            });
        }
        out
    }
}
