//! Control plane ↔ receiver messages over the receiver's Unix socket: one
//! JSON object per line. The receiver listens; the control plane connects
//! (again after its own restart, which is how it re-adopts a receiver).

use serde::{Deserialize, Serialize};

/// What a receiver reports. `ready` is sent first on every connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ReceiverEvent {
    Ready {
        stream_id: String,
        pid: u32,
        port: u16,
    },
    /// Once a second. `bytes_in`/`packets_in` count what RIST delivered
    /// (decrypted, in order); the rest is optional so older readers and
    /// writers keep working.
    Stats {
        stream_id: String,
        bytes_in: u64,
        packets_in: u64,
        bitrate_kbps: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rist: Option<RistInStats>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        egress: Vec<EgressStats>,
    },
    Error {
        stream_id: String,
        message: String,
    },
    Stopped {
        stream_id: String,
        reason: String,
    },
}

/// The receiver's RIST flow over all links together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RistInStats {
    /// Links (sender peers) seen, and how many are alive now.
    pub links: u64,
    pub links_alive: u64,
    pub bitrate_kbps: f64,
    /// Packets missing at first, recovered by retransmission, and lost for
    /// good (since the start).
    pub missing: u64,
    pub recovered: u64,
    pub lost: u64,
    pub rtt_ms: f64,
    /// Datagrams that were not MPEG-TS (a wrong key decrypts to noise).
    pub undecodable: u64,
}

/// One destination's output.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EgressStats {
    /// The destination's platform and, for logs, its scheme and host only.
    pub platform: String,
    pub target: String,
    /// `starting`, `live` or `stalled`.
    pub state: String,
    pub bytes_out: u64,
    pub bitrate_kbps: f64,
    /// Times the watchdog or an error rebuilt this output.
    pub restarts: u64,
}

/// What the control plane asks of a receiver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ReceiverCommand {
    Stop,
}

/// What the control plane hands a receiver on its standard input at spawn:
/// the stream's RIST key and where to push. It never travels any other way.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverSecrets {
    /// Hex of the 32-byte RIST pre-shared key.
    pub psk: String,
    pub destinations: Vec<ReceiverDestination>,
}

impl std::fmt::Debug for ReceiverSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReceiverSecrets(psk: ***, {} destinations)",
            self.destinations.len()
        )
    }
}

/// One place a receiver pushes the stream to.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverDestination {
    pub platform: String,
    pub url: String,
    pub stream_key: String,
}

/// One line of the local protocol, newline included.
pub fn line<T: Serialize>(message: &T) -> String {
    let mut text = serde_json::to_string(message).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_lines() {
        let text = line(&ReceiverEvent::Ready {
            stream_id: "str_1".into(),
            pid: 7,
            port: 20000,
        });
        assert_eq!(
            text,
            "{\"event\":\"ready\",\"stream_id\":\"str_1\",\"pid\":7,\"port\":20000}\n"
        );
        let back: ReceiverEvent = serde_json::from_str(text.trim()).unwrap();
        assert!(matches!(back, ReceiverEvent::Ready { pid: 7, .. }));
        assert_eq!(line(&ReceiverCommand::Stop), "{\"cmd\":\"stop\"}\n");
        assert!(serde_json::from_str::<ReceiverCommand>(r#"{"cmd":"explode"}"#).is_err());
    }
}
