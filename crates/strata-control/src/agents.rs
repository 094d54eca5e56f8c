//! The agents' side of the control plane: who is connected, commands sent
//! to them and their acknowledgements, and one agent session's protocol
//! (login by Ed25519 challenge, then heartbeats, stats and acks).
//!
//! A session is driven by text frames in and out; the HTTP layer adapts a
//! WebSocket to it. A frame that does not decode gets an `error` reply and
//! the session goes on.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use strata_protocol::{
    challenge_message, decode, encode, Ack, AuthChallenge, AuthOk, ErrorCode, ErrorReply, Message,
};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{AgentKey, Presence};
use crate::service::{now_ms, Control};

/// Errors from sending a command to an agent.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("sender {0} is not connected")]
    NotConnected(String),
    #[error("sender {0} did not answer in time")]
    Timeout(String),
    #[error("sender {0} refused: {1}")]
    Refused(String, String),
}

struct Session {
    conn: u64,
    tx: mpsc::Sender<String>,
}

/// Connected agents and commands awaiting their acknowledgement.
#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<String, Session>>,
    /// Keyed by (sender, message id): only the sender a command went to can
    /// acknowledge it.
    pending: Mutex<HashMap<(String, String), oneshot::Sender<Ack>>>,
    seen: Mutex<HashSet<String>>,
    next: AtomicU64,
}

/// How many frames may queue for one agent before it counts as stuck.
const OUTBOX: usize = 64;

impl Hub {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh message id.
    pub fn message_id(&self) -> String {
        format!("c{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a logged-in agent; an older session of the same sender is
    /// replaced (its outbox closes, which ends it).
    pub fn register(&self, sender_id: &str) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        Self::lock(&self.sessions).insert(sender_id.to_owned(), Session { conn, tx });
        Self::lock(&self.seen).insert(sender_id.to_owned());
        (conn, rx)
    }

    /// Forgets a session, unless a newer one replaced it already.
    pub fn unregister(&self, sender_id: &str, conn: u64) {
        let mut sessions = Self::lock(&self.sessions);
        if sessions.get(sender_id).is_some_and(|s| s.conn == conn) {
            sessions.remove(sender_id);
        }
    }

    pub fn presence(&self, sender_id: &str) -> Presence {
        if Self::lock(&self.sessions).contains_key(sender_id) {
            Presence::Online
        } else if Self::lock(&self.seen).contains(sender_id) {
            Presence::Unobserved
        } else {
            Presence::Offline
        }
    }

    pub fn online_count(&self) -> usize {
        Self::lock(&self.sessions).len()
    }

    /// Queues a frame for an agent without waiting for an answer.
    pub fn send(&self, sender_id: &str, message: &Message) -> bool {
        let frame = encode(&self.message_id(), now_ms(), message);
        let tx = Self::lock(&self.sessions)
            .get(sender_id)
            .map(|s| s.tx.clone());
        tx.is_some_and(|tx| tx.try_send(frame).is_ok())
    }

    /// Sends a command and waits for its `ack`; returns the round-trip time.
    pub async fn command(
        &self,
        sender_id: &str,
        message: &Message,
        timeout: Duration,
    ) -> Result<Duration, HubError> {
        let id = self.message_id();
        let frame = encode(&id, now_ms(), message);
        let tx = Self::lock(&self.sessions)
            .get(sender_id)
            .map(|s| s.tx.clone())
            .ok_or_else(|| HubError::NotConnected(sender_id.to_owned()))?;
        let (ack_tx, ack_rx) = oneshot::channel();
        let key = (sender_id.to_owned(), id);
        Self::lock(&self.pending).insert(key.clone(), ack_tx);
        let began = Instant::now();
        if tx.send(frame).await.is_err() {
            Self::lock(&self.pending).remove(&key);
            return Err(HubError::NotConnected(sender_id.to_owned()));
        }
        let answer = tokio::time::timeout(timeout, ack_rx).await;
        Self::lock(&self.pending).remove(&key);
        let rtt = began.elapsed();
        metrics::histogram!("strata_agent_command_rtt_seconds").record(rtt.as_secs_f64());
        match answer {
            Ok(Ok(ack)) if ack.ok => Ok(rtt),
            Ok(Ok(ack)) => Err(HubError::Refused(
                sender_id.to_owned(),
                ack.error.unwrap_or_else(|| "no reason given".into()),
            )),
            Ok(Err(_)) => Err(HubError::NotConnected(sender_id.to_owned())),
            Err(_) => Err(HubError::Timeout(sender_id.to_owned())),
        }
    }

    /// Hands an `ack` from `sender_id` to the command waiting for it.
    /// Returns false when no command of that sender has that id.
    fn resolve(&self, sender_id: &str, ack: Ack) -> bool {
        let key = (sender_id.to_owned(), ack.in_reply_to.clone());
        match Self::lock(&self.pending).remove(&key) {
            Some(tx) => {
                let _ = tx.send(ack);
                true
            }
            None => false,
        }
    }
}

/// How long an agent has to say hello and answer the challenge.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

enum Phase {
    AwaitHello,
    AwaitResponse { sender_id: String, nonce: String },
    LoggedIn { sender_id: String, conn: u64 },
}

/// One agent connection's protocol state.
pub struct AgentSession {
    control: Arc<Control>,
    phase: Phase,
    /// Frames to write to the agent.
    out: mpsc::Sender<String>,
}

/// What the transport should do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Login failed or the session was replaced: close the connection.
    Close,
}

impl AgentSession {
    pub fn new(control: Arc<Control>, out: mpsc::Sender<String>) -> AgentSession {
        AgentSession {
            control,
            phase: Phase::AwaitHello,
            out,
        }
    }

    /// The sender this session logged in as, once it has.
    pub fn sender_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::LoggedIn { sender_id, .. } => Some(sender_id),
            _ => None,
        }
    }

    async fn reply(&self, message: Message) {
        let id = self.control.hub().message_id();
        let _ = self.out.send(encode(&id, now_ms(), &message)).await;
    }

    async fn error(&self, in_reply_to: Option<String>, code: ErrorCode, message: String) {
        metrics::counter!("strata_protocol_errors_total", "code" => format!("{code:?}"))
            .increment(1);
        self.reply(Message::Error(ErrorReply {
            in_reply_to,
            code,
            message,
        }))
        .await;
    }

    /// Handles one text frame from the agent. `outbox` receives the
    /// logged-in session's queue when login succeeds.
    pub async fn on_frame(
        &mut self,
        text: &str,
        outbox: &mut Option<mpsc::Receiver<String>>,
    ) -> Next {
        let frame = match decode(text) {
            Ok(frame) => frame,
            Err(rejected) => {
                tracing::warn!(sender = ?self.sender_id(), error = %rejected.error, "rejected agent frame");
                let reply = rejected.error.reply(rejected.id);
                self.error(reply.in_reply_to, reply.code, reply.message)
                    .await;
                return Next::Continue;
            }
        };
        let phase = std::mem::replace(&mut self.phase, Phase::AwaitHello);
        match (phase, frame.message) {
            (Phase::AwaitHello, Message::AuthHello(hello)) => {
                let nonce = match secrets::random_bytes::<32>() {
                    Ok(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
                    Err(_) => return Next::Close,
                };
                self.phase = Phase::AwaitResponse {
                    sender_id: hello.sender_id,
                    nonce: nonce.clone(),
                };
                self.reply(Message::AuthChallenge(AuthChallenge { nonce }))
                    .await;
                Next::Continue
            }
            (Phase::AwaitResponse { sender_id, nonce }, Message::AuthResponse(response)) => {
                if !self
                    .verify_login(&sender_id, &nonce, &response.signature)
                    .await
                {
                    tracing::warn!(%sender_id, "agent login refused");
                    self.error(
                        Some(frame.id),
                        ErrorCode::AuthFailed,
                        "login refused: unknown sender or bad signature".into(),
                    )
                    .await;
                    return Next::Close;
                }
                let (conn, rx) = self.control.hub().register(&sender_id);
                *outbox = Some(rx);
                self.reply(Message::AuthOk(AuthOk {
                    sender_id: sender_id.clone(),
                    heartbeat_secs: self.control.config().heartbeat_secs,
                }))
                .await;
                tracing::info!(%sender_id, "agent logged in");
                self.control.agent_connected(&sender_id).await;
                self.phase = Phase::LoggedIn { sender_id, conn };
                Next::Continue
            }
            (Phase::LoggedIn { sender_id, conn }, message) => {
                self.phase = Phase::LoggedIn {
                    sender_id: sender_id.clone(),
                    conn,
                };
                self.logged_in(&sender_id, frame.id, message).await;
                Next::Continue
            }
            (phase @ (Phase::AwaitHello | Phase::AwaitResponse { .. }), message) => {
                let expected = match phase {
                    Phase::AwaitHello => "auth.hello",
                    _ => "auth.response",
                };
                self.phase = phase;
                self.error(
                    Some(frame.id),
                    ErrorCode::Unexpected,
                    format!("expected {expected} before {}", message.kind()),
                )
                .await;
                Next::Continue
            }
        }
    }

    async fn verify_login(&self, sender_id: &str, nonce: &str, signature: &str) -> bool {
        let Ok(Some(sender)) = self.control.store().sender(sender_id).await else {
            return false;
        };
        let Some(key) = sender
            .public_key
            .as_deref()
            .and_then(|k| AgentKey::parse(k).ok())
        else {
            return false;
        };
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature) else {
            return false;
        };
        key.verifies(&challenge_message(sender_id, nonce), &signature)
    }

    async fn logged_in(&self, sender_id: &str, id: String, message: Message) {
        match message {
            Message::DeviceStatus(status) => self.control.heartbeat(sender_id, status).await,
            Message::StreamStats(stats) => self.control.agent_stats(sender_id, stats).await,
            Message::StreamEnded(ended) => self.control.agent_stream_ended(sender_id, ended).await,
            Message::Ack(ack) => {
                if !self.control.hub().resolve(sender_id, ack) {
                    self.error(
                        Some(id),
                        ErrorCode::Unexpected,
                        "ack for no pending command".into(),
                    )
                    .await;
                }
            }
            Message::Error(e) => {
                tracing::warn!(%sender_id, code = ?e.code, message = %e.message, "agent reported an error");
            }
            other => {
                self.error(
                    Some(id),
                    ErrorCode::Unexpected,
                    format!("{} is not sent by agents", other.kind()),
                )
                .await;
            }
        }
    }

    /// Called when the connection ends.
    pub async fn closed(self) {
        if let Phase::LoggedIn { sender_id, conn } = self.phase {
            self.control.hub().unregister(&sender_id, conn);
            self.control.agent_disconnected(&sender_id).await;
        }
    }
}
