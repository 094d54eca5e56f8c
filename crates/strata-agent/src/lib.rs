//! The control side of Strata's sender agent: its identity (an Ed25519 key
//! made on first run), enrolment with a one-time token, and the session with
//! the control plane over WebSocket (challenge login, heartbeats, stats,
//! commands), reconnecting with backoff 1, 2, 4 ... 30 s. Running streams
//! outlive a lost connection: the agent keeps sending and reports them in
//! its next heartbeat.
//!
//! A started stream is encoded by a GStreamer pipeline (`sender`: test
//! pattern, file or camera → x264 zerolatency + AAC → MPEG-TS) and sent
//! with RIST over every configured link with its weight, encrypted with the
//! stream's key (librist through the `rist` crate), with adaptive bitrate
//! (`abr`) judged on what the links delivered. The key is held in memory
//! only. The agent does not talk to receivers except through RIST, and
//! knows nothing about destinations.

pub mod abr;
pub mod backoff;
pub mod identity;
pub mod media;
pub mod sender;
pub mod session;

/// Errors of the agent's library parts.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("identity: {0}")]
    Identity(String),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("state file {path}: {message}")]
    State { path: String, message: String },
    #[error("enrolment refused ({status}): {message}")]
    Enrol { status: u16, message: String },
    #[error("connecting to the control plane: {0}")]
    Connect(String),
    #[error("login refused: {0}")]
    Login(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
}
