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
    Stats {
        stream_id: String,
        bytes_in: u64,
        packets_in: u64,
        bitrate_kbps: f64,
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
