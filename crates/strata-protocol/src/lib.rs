//! Strata's wire protocol between the control plane and sender agents.
//!
//! Every message is one JSON text frame shaped as an [`Envelope`]:
//! `{"v": 1, "id": "...", "type": "stream.start", "ts": 1733580000000, "payload": {...}}`.
//! [`decode`] turns a frame into a typed [`Message`] or a [`ProtocolError`]
//! that says whether the frame was not JSON, carried an unsupported version,
//! an unknown type, or a payload that does not fit its type; the receiving
//! side answers each with an [`ErrorReply`] (see [`ProtocolError::reply`])
//! and keeps the connection.
//!
//! [`local`] holds the messages between the control plane and the receiver
//! processes it supervises, over a Unix socket on the same machine.
//!
//! These are wire types only: they carry strings and numbers as they travel.
//! The control plane and the agent parse them into their own domain types.
//! This crate does no I/O and knows nothing of sockets, databases or keys.

pub mod local;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. A peer sending another version
/// gets an `unsupported_version` error reply.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts, in bytes. Heartbeats and stats are
/// a few hundred bytes; anything near this is a bug or an attack.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What a frame looks like before its payload is interpreted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub v: u32,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Sender's clock, Unix milliseconds.
    pub ts: i64,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Why a frame could not be turned into a [`Message`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("frame is {0} bytes, over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("frame is not a JSON envelope: {0}")]
    Malformed(String),
    #[error("protocol version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("payload of {kind:?} does not fit its type: {reason}")]
    BadPayload { kind: String, reason: String },
}

impl ProtocolError {
    /// The stable code sent back to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::TooLarge(_) => ErrorCode::TooLarge,
            ProtocolError::Malformed(_) => ErrorCode::Malformed,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtocolError::UnknownType(_) => ErrorCode::UnknownType,
            ProtocolError::BadPayload { .. } => ErrorCode::BadPayload,
        }
    }

    /// The error reply for this failure. `in_reply_to` is the offending
    /// frame's id when it could be read.
    pub fn reply(&self, in_reply_to: Option<String>) -> ErrorReply {
        ErrorReply {
            in_reply_to,
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Machine-readable error codes of [`ErrorReply`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    TooLarge,
    Malformed,
    UnsupportedVersion,
    UnknownType,
    BadPayload,
    /// A well-formed message that is not allowed now (for example a stream
    /// command before login).
    Unexpected,
    AuthFailed,
    /// The peer understood the command but could not carry it out.
    Failed,
    Internal,
}

/// `error`: the answer to a frame that could not be used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorReply {
    /// Id of the frame this answers, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

// ---------------------------------------------------------------------------
// Payloads, agent to control plane.

/// `auth.hello`: the first frame of an agent, naming the sender it claims to be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthHello {
    pub sender_id: String,
    pub agent_version: String,
}

/// `auth.response`: the agent's Ed25519 signature over [`challenge_message`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthResponse {
    /// Base64 (standard alphabet) of the 64-byte signature.
    pub signature: String,
}

/// One network interface of the sender.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub up: bool,
}

/// One media input of the sender (camera, capture card, test pattern).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Input {
    pub name: String,
    pub kind: String,
}

/// `device.status`: the heartbeat, sent on login and then periodically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceStatus {
    pub hostname: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Streams the agent is sending right now.
    #[serde(default)]
    pub running_streams: Vec<String>,
}

/// Statistics of one bonded link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkStats {
    pub name: String,
    pub bitrate_kbps: f64,
    pub rtt_ms: f64,
    /// Share of packets lost, 0.0 to 100.0.
    pub loss_pct: f64,
    /// `up` or `down`; empty from agents that do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// `stream.stats`: once a second per running stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamStats {
    pub stream_id: String,
    /// What the encoder produced (measured, not asked for).
    #[serde(default)]
    pub encoder_kbps: f64,
    /// The rate adaptive bitrate currently asks of the encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kbps: Option<f64>,
    #[serde(default)]
    pub links: Vec<LinkStats>,
}

/// `stream.ended`: the agent stopped sending a stream by itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamEnded {
    pub stream_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `ack`: a command was carried out (`ok`) or refused (`error` says why).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    pub in_reply_to: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// Payloads, control plane to agent.

/// `auth.challenge`: random bytes the agent must sign.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthChallenge {
    /// Base64 (standard alphabet) of 32 random bytes.
    pub nonce: String,
}

/// `auth.ok`: the login succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthOk {
    pub sender_id: String,
    /// How often the control plane wants a heartbeat.
    pub heartbeat_secs: u32,
}

/// Where the sender sends a stream's RIST packets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverAddr {
    pub host: String,
    pub port: u16,
}

/// `stream.start`: start (or, for a running stream, re-key) a stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamStart {
    pub stream_id: String,
    /// Hex of the 32-byte RIST pre-shared key. Never logged.
    pub psk: String,
    pub receiver: ReceiverAddr,
    #[serde(default)]
    pub input: Option<String>,
}

/// `stream.stop`: stop sending a stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamStop {
    pub stream_id: String,
}

/// `config.update`: settings the agent applies without reconnecting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_interval_ms: Option<u32>,
}

/// Every message either side may send, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    AuthHello(AuthHello),
    AuthChallenge(AuthChallenge),
    AuthResponse(AuthResponse),
    AuthOk(AuthOk),
    DeviceStatus(DeviceStatus),
    StreamStart(StreamStart),
    StreamStop(StreamStop),
    StreamStats(StreamStats),
    StreamEnded(StreamEnded),
    ConfigUpdate(ConfigUpdate),
    Ack(Ack),
    Error(ErrorReply),
}

impl Message {
    /// The `type` string on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::AuthHello(_) => "auth.hello",
            Message::AuthChallenge(_) => "auth.challenge",
            Message::AuthResponse(_) => "auth.response",
            Message::AuthOk(_) => "auth.ok",
            Message::DeviceStatus(_) => "device.status",
            Message::StreamStart(_) => "stream.start",
            Message::StreamStop(_) => "stream.stop",
            Message::StreamStats(_) => "stream.stats",
            Message::StreamEnded(_) => "stream.ended",
            Message::ConfigUpdate(_) => "config.update",
            Message::Ack(_) => "ack",
            Message::Error(_) => "error",
        }
    }

    fn payload(&self) -> serde_json::Value {
        let value = match self {
            Message::AuthHello(p) => serde_json::to_value(p),
            Message::AuthChallenge(p) => serde_json::to_value(p),
            Message::AuthResponse(p) => serde_json::to_value(p),
            Message::AuthOk(p) => serde_json::to_value(p),
            Message::DeviceStatus(p) => serde_json::to_value(p),
            Message::StreamStart(p) => serde_json::to_value(p),
            Message::StreamStop(p) => serde_json::to_value(p),
            Message::StreamStats(p) => serde_json::to_value(p),
            Message::StreamEnded(p) => serde_json::to_value(p),
            Message::ConfigUpdate(p) => serde_json::to_value(p),
            Message::Ack(p) => serde_json::to_value(p),
            Message::Error(p) => serde_json::to_value(p),
        };
        // Every payload is a plain struct of strings, numbers and lists.
        value.unwrap_or(serde_json::Value::Null)
    }

    fn from_parts(kind: &str, payload: serde_json::Value) -> Result<Message, ProtocolError> {
        fn typed<T: DeserializeOwned>(
            kind: &str,
            payload: serde_json::Value,
        ) -> Result<T, ProtocolError> {
            serde_json::from_value(payload).map_err(|e| ProtocolError::BadPayload {
                kind: kind.to_owned(),
                reason: e.to_string(),
            })
        }
        Ok(match kind {
            "auth.hello" => Message::AuthHello(typed(kind, payload)?),
            "auth.challenge" => Message::AuthChallenge(typed(kind, payload)?),
            "auth.response" => Message::AuthResponse(typed(kind, payload)?),
            "auth.ok" => Message::AuthOk(typed(kind, payload)?),
            "device.status" => Message::DeviceStatus(typed(kind, payload)?),
            "stream.start" => Message::StreamStart(typed(kind, payload)?),
            "stream.stop" => Message::StreamStop(typed(kind, payload)?),
            "stream.stats" => Message::StreamStats(typed(kind, payload)?),
            "stream.ended" => Message::StreamEnded(typed(kind, payload)?),
            "config.update" => Message::ConfigUpdate(typed(kind, payload)?),
            "ack" => Message::Ack(typed(kind, payload)?),
            "error" => Message::Error(typed(kind, payload)?),
            other => return Err(ProtocolError::UnknownType(other.to_owned())),
        })
    }
}

/// A decoded frame: its id and time as sent, and the typed message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: String,
    pub ts: i64,
    pub message: Message,
}

/// Encodes a message into a text frame.
pub fn encode(id: &str, ts: i64, message: &Message) -> String {
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        id: id.to_owned(),
        kind: message.kind().to_owned(),
        ts,
        payload: message.payload(),
    };
    // An envelope of owned strings and a JSON value always serialises.
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// What [`decode`] could learn about a frame it rejected: its id, so the
/// error reply can point at it.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub id: Option<String>,
    pub error: ProtocolError,
}

/// Decodes one text frame.
pub fn decode(text: &str) -> Result<Frame, Rejected> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(Rejected {
            id: None,
            error: ProtocolError::TooLarge(text.len()),
        });
    }
    let envelope: Envelope = match serde_json::from_str(text) {
        Ok(envelope) => envelope,
        Err(e) => {
            // Try to recover the id for the reply, from anything JSON-shaped.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
            return Err(Rejected {
                id,
                error: ProtocolError::Malformed(e.to_string()),
            });
        }
    };
    let id = Some(envelope.id.clone());
    if envelope.v != PROTOCOL_VERSION {
        return Err(Rejected {
            id,
            error: ProtocolError::UnsupportedVersion(envelope.v),
        });
    }
    match Message::from_parts(&envelope.kind, envelope.payload) {
        Ok(message) => Ok(Frame {
            id: envelope.id,
            ts: envelope.ts,
            message,
        }),
        Err(error) => Err(Rejected { id, error }),
    }
}

/// The bytes an agent signs to log in: domain-separated so a signature made
/// for this purpose cannot be replayed as anything else, and bound to the
/// sender id so one sender's answer does not log in another.
pub fn challenge_message(sender_id: &str, nonce: &str) -> Vec<u8> {
    format!("strata-agent-login/v1\n{sender_id}\n{nonce}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(message: Message) {
        let text = encode("m1", 42, &message);
        let frame = decode(&text).expect("decodes");
        assert_eq!(frame.id, "m1");
        assert_eq!(frame.ts, 42);
        assert_eq!(frame.message, message);
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(Message::AuthHello(AuthHello {
            sender_id: "snd_1".into(),
            agent_version: "0.1.0".into(),
        }));
        roundtrip(Message::AuthChallenge(AuthChallenge {
            nonce: "abc".into(),
        }));
        roundtrip(Message::AuthResponse(AuthResponse {
            signature: "sig".into(),
        }));
        roundtrip(Message::AuthOk(AuthOk {
            sender_id: "snd_1".into(),
            heartbeat_secs: 5,
        }));
        roundtrip(Message::DeviceStatus(DeviceStatus {
            hostname: "cam-1".into(),
            interfaces: vec![Interface {
                name: "wwan0".into(),
                addresses: vec!["10.0.0.2".into()],
                up: true,
            }],
            inputs: vec![Input {
                name: "test".into(),
                kind: "pattern".into(),
            }],
            running_streams: vec!["str_1".into()],
        }));
        roundtrip(Message::StreamStart(StreamStart {
            stream_id: "str_1".into(),
            psk: "00".repeat(32),
            receiver: ReceiverAddr {
                host: "203.0.113.1".into(),
                port: 5000,
            },
            input: None,
        }));
        roundtrip(Message::StreamStop(StreamStop {
            stream_id: "str_1".into(),
        }));
        roundtrip(Message::StreamStats(StreamStats {
            stream_id: "str_1".into(),
            encoder_kbps: 4000.0,
            target_kbps: Some(4200.0),
            links: vec![LinkStats {
                name: "wwan0".into(),
                bitrate_kbps: 2000.0,
                rtt_ms: 40.0,
                loss_pct: 0.5,
                state: "up".into(),
            }],
        }));
        roundtrip(Message::StreamEnded(StreamEnded {
            stream_id: "str_1".into(),
            reason: Some("input lost".into()),
        }));
        roundtrip(Message::ConfigUpdate(ConfigUpdate {
            heartbeat_secs: Some(10),
            stats_interval_ms: None,
        }));
        roundtrip(Message::Ack(Ack {
            in_reply_to: "m0".into(),
            ok: false,
            error: Some("no such input".into()),
        }));
        roundtrip(Message::Error(ErrorReply {
            in_reply_to: None,
            code: ErrorCode::UnknownType,
            message: "x".into(),
        }));
    }

    #[test]
    fn wire_shape_is_the_documented_envelope() {
        let text = encode(
            "m7",
            1000,
            &Message::StreamStop(StreamStop {
                stream_id: "str_9".into(),
            }),
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "v": 1, "id": "m7", "type": "stream.stop", "ts": 1000,
                "payload": {"stream_id": "str_9"}
            })
        );
    }

    #[test]
    fn not_json_is_malformed() {
        let rejected = decode("{not json").unwrap_err();
        assert_eq!(rejected.id, None);
        assert_eq!(rejected.error.code(), ErrorCode::Malformed);
    }

    #[test]
    fn envelope_without_type_is_malformed_but_keeps_its_id() {
        let rejected = decode(r#"{"v":1,"id":"m3","ts":0,"payload":{}}"#).unwrap_err();
        assert_eq!(rejected.id.as_deref(), Some("m3"));
        assert_eq!(rejected.error.code(), ErrorCode::Malformed);
    }

    #[test]
    fn unknown_type_is_named() {
        let rejected =
            decode(r#"{"v":1,"id":"m4","type":"stream.explode","ts":0,"payload":{}}"#).unwrap_err();
        assert_eq!(rejected.id.as_deref(), Some("m4"));
        assert_eq!(
            rejected.error,
            ProtocolError::UnknownType("stream.explode".into())
        );
        let reply = rejected.error.reply(rejected.id.clone());
        assert_eq!(reply.in_reply_to.as_deref(), Some("m4"));
        assert!(
            reply.message.contains("stream.explode"),
            "{}",
            reply.message
        );
    }

    #[test]
    fn payload_of_wrong_shape_is_bad_payload() {
        let rejected =
            decode(r#"{"v":1,"id":"m5","type":"stream.stop","ts":0,"payload":{"stream":"str_1"}}"#)
                .unwrap_err();
        match rejected.error {
            ProtocolError::BadPayload { kind, reason } => {
                assert_eq!(kind, "stream.stop");
                assert!(reason.contains("stream"), "{reason}");
            }
            other => panic!("expected BadPayload, got {other:?}"),
        }
        let wrong_type =
            decode(r#"{"v":1,"id":"m6","type":"stream.stats","ts":0,"payload":{"stream_id":5}}"#)
                .unwrap_err();
        assert_eq!(wrong_type.error.code(), ErrorCode::BadPayload);
    }

    #[test]
    fn other_versions_are_refused() {
        let rejected = decode(r#"{"v":2,"id":"m8","type":"ack","ts":0,"payload":{}}"#).unwrap_err();
        assert_eq!(rejected.error, ProtocolError::UnsupportedVersion(2));
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = format!(
            r#"{{"v":1,"id":"m","type":"ack","ts":0,"payload":{{"x":"{}"}}}}"#,
            "a".repeat(MAX_FRAME_BYTES)
        );
        assert_eq!(decode(&big).unwrap_err().error.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn challenge_message_binds_sender_and_nonce() {
        assert_ne!(
            challenge_message("snd_a", "n"),
            challenge_message("snd_b", "n")
        );
        assert_ne!(
            challenge_message("snd_a", "n1"),
            challenge_message("snd_a", "n2")
        );
    }
}
