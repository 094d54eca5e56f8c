//! The control plane's operations. Every user-facing operation takes the
//! [`Principal`] asking and checks it with [`Control::authorize`] first; the
//! HTTP API, the pages and the WebSocket all come through here, so the role
//! policy ([`crate::domain::allows`]) is enforced in this one place.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth::{AccessTokens, SplitToken};
use secrets::SecretBox;
use serde::Serialize;
use strata_protocol::{DeviceStatus, Message, StreamEnded, StreamStart, StreamStats, StreamStop};
use tokio::sync::{broadcast, mpsc};

use crate::agents::Hub;
use crate::config::Config;
use crate::domain::{
    allows, new_id, parse_id, Action, AgentKey, DestinationUrl, Email, Invalid, Name, NewPassword,
    Platform, Presence, Principal, Psk, Role, StreamKey, StreamState,
};
use crate::receivers::{receiver_secrets, Receivers, RxEvent};
use crate::store::{
    DestinationRow, EnrolmentRow, RefreshRow, SenderRow, Store, StoreError, StreamRow, UserRow,
};

mod accounts;
mod events;
mod senders;
mod streams;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What went wrong in an operation, in terms a client may see (except
/// `Internal`, whose detail is logged and hidden).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not signed in, or the credentials are not valid")]
    Unauthenticated,
    #[error("the role {0} may not do this")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl From<secrets::SecretsError> for ControlError {
    fn from(e: secrets::SecretsError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

impl From<auth::AuthError> for ControlError {
    fn from(e: auth::AuthError) -> Self {
        match e {
            auth::AuthError::MalformedToken
            | auth::AuthError::InvalidToken
            | auth::AuthError::Expired => ControlError::Unauthenticated,
            other => ControlError::Internal(other.to_string()),
        }
    }
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Access token lifetime: one hour.
pub const ACCESS_TTL_SECS: i64 = 3600;
/// Refresh token lifetime: thirty days.
pub const REFRESH_TTL_MS: i64 = 30 * 24 * 3600 * 1000;
/// Default enrolment token lifetime: one day.
pub const ENROLMENT_TTL_SECS: i64 = 24 * 3600;
/// How long an agent has to acknowledge a command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

// ---- views: what operations return ------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub role: &'static str,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
    pub role: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderView {
    pub id: String,
    pub name: String,
    pub enrolled: bool,
    pub hostname: Option<String>,
    pub presence: &'static str,
    pub last_seen_at: Option<i64>,
    pub interfaces: Vec<strata_protocol::Interface>,
    pub inputs: Vec<strata_protocol::Input>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewSender {
    pub sender: SenderView,
    /// Shown once; only its hash is kept.
    pub enrolment_token: String,
    pub enrolment_expires_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationView {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub url_hint: String,
    pub key_hint: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    pub id: String,
    pub sender_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub port: u16,
    pub destination_ids: Vec<String>,
    pub created_by: String,
    pub created_at: i64,
    pub live_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub receiver_pid: Option<u32>,
    /// The receiver has said `ready` and is reporting.
    pub receiver_ready: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A change the dashboard shows live.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UiEvent {
    Presence {
        sender_id: String,
        presence: &'static str,
    },
    StreamState {
        stream_id: String,
        state: String,
        reason: Option<String>,
    },
    StreamStats {
        stream_id: String,
        encoder_kbps: f64,
        receiver_kbps: f64,
        links: Vec<strata_protocol::LinkStats>,
    },
}

/// What the control plane knows of a running stream beyond its row; kept in
/// memory only (the key above all).
#[derive(Default)]
struct Runtime {
    sender_id: String,
    /// The key the agent and receiver share, when this process made it.
    psk: Option<Psk>,
    /// The key a replacement receiver of an adopted one gets.
    standby: Option<Psk>,
    /// The agent must be sent `stream.start` (again), with `psk`.
    needs_start: bool,
    receiver_ready: bool,
    agent_started: bool,
    agent_stats: Option<(i64, StreamStats)>,
    receiver_stats_at: Option<i64>,
    receiver_kbps: f64,
}

/// Live facts about senders that are not stored.
#[derive(Default)]
struct SenderLive {
    status: Option<DeviceStatus>,
    unobserved_since: Option<i64>,
    seen_written_at: i64,
}

/// How often a heartbeat updates a sender's stored `last_seen_at`.
const SEEN_WRITE_MS: i64 = 30_000;

/// Argon2id costs 19 MiB and tens of milliseconds per call: it runs on the
/// blocking pool, at most two at a time, so a burst of sign-ins or
/// enrolments neither stalls the async workers nor balloons memory.
static SLOW_HASHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn slow<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = SLOW_HASHES
        .acquire()
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))
}

async fn slow_hash(secret: &str) -> Result<String> {
    let secret = secret.to_owned();
    Ok(slow(move || auth::hash_password(&secret)).await??)
}

async fn slow_verify(secret: &str, phc: &str) -> Result<bool> {
    let (secret, phc) = (secret.to_owned(), phc.to_owned());
    Ok(slow(move || auth::verify_password(&secret, &phc)).await??)
}

async fn slow_dummy(secret: &str) {
    let secret = secret.to_owned();
    let _ = slow(move || auth::password::dummy_verify(&secret)).await;
}

/// The control plane.
pub struct Control {
    config: Config,
    store: Store,
    secrets: SecretBox,
    tokens: AccessTokens,
    hub: Hub,
    receivers: Receivers,
    runtime: Mutex<HashMap<String, Runtime>>,
    senders: Mutex<HashMap<String, SenderLive>>,
    port_lock: tokio::sync::Mutex<()>,
    ui: broadcast::Sender<UiEvent>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    /// Opens the store and keys under the configured data directory,
    /// starts the receiver event loop and re-adopts running receivers.
    pub async fn open(config: Config) -> Result<Arc<Control>> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|e| ControlError::Internal(format!("creating the data directory: {e}")))?;
        let store = Store::connect(&config.database_url()).await?;
        let secrets = SecretBox::load_or_create(&config.data_dir.join("master.key"))?;
        let tokens = AccessTokens::load_or_create(
            &config.data_dir.join("jwt-ed25519.key"),
            ACCESS_TTL_SECS,
        )?;
        let program = config
            .receiver_bin
            .clone()
            .unwrap_or_else(default_receiver_bin);
        let (rx_tx, mut rx_rx) = mpsc::unbounded_channel();
        let receivers = Receivers::new(program, crate::receivers::run_dir(&config.data_dir), rx_tx)
            .map_err(|e| ControlError::Internal(format!("creating the run directory: {e}")))?;
        let (ui, _) = broadcast::channel(1024);
        let control = Arc::new(Control {
            config,
            store,
            secrets,
            tokens,
            hub: Hub::default(),
            receivers,
            runtime: Mutex::new(HashMap::new()),
            senders: Mutex::new(HashMap::new()),
            port_lock: tokio::sync::Mutex::new(()),
            ui,
        });
        let watchdog = Arc::downgrade(&control);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(control) = watchdog.upgrade() else {
                    return;
                };
                control.check_receivers(now_ms()).await;
            }
        });
        let weak = Arc::downgrade(&control);
        tokio::spawn(async move {
            while let Some((stream_id, event)) = rx_rx.recv().await {
                let Some(control) = weak.upgrade() else {
                    return;
                };
                control.on_receiver_event(&stream_id, event).await;
            }
        });
        control.recover().await?;
        Ok(control)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn hub(&self) -> &Hub {
        &self.hub
    }
    pub fn subscribe(&self) -> broadcast::Receiver<UiEvent> {
        self.ui.subscribe()
    }

    /// Lets running receivers go on without supervision (shutdown).
    pub fn detach(&self) {
        self.receivers.detach_all();
    }

    fn emit(&self, event: UiEvent) {
        let _ = self.ui.send(event);
    }

    /// The one check of the role policy.
    pub fn authorize(&self, who: &Principal, action: Action) -> Result<()> {
        if allows(who.role, action) {
            Ok(())
        } else {
            tracing::info!(user = %who.email, role = who.role.as_str(), ?action, "forbidden");
            Err(ControlError::Forbidden(who.role.as_str()))
        }
    }

    async fn audit(&self, who: &str, action: &str, target: &str, detail: &str) {
        if let Err(e) = self
            .store
            .audit(now_ms(), who, action, target, detail)
            .await
        {
            tracing::error!(error = %e, action, target, "audit log write failed");
        }
    }
}

fn user_view(row: UserRow) -> UserView {
    UserView {
        role: Role::parse(&row.role).map(Role::as_str).unwrap_or("viewer"),
        id: row.id,
        email: row.email,
        created_at: row.created_at,
    }
}

fn destination_view(row: DestinationRow) -> DestinationView {
    DestinationView {
        id: row.id,
        name: row.name,
        platform: row.platform,
        url_hint: row.url_hint,
        key_hint: row.key_hint,
        created_at: row.created_at,
    }
}

/// The sealing contexts bind each ciphertext to its row and column.
fn url_context(id: &str) -> String {
    format!("strata:destination:{id}:url")
}
fn key_context(id: &str) -> String {
    format!("strata:destination:{id}:stream_key")
}

/// `strata-receiver` beside the running binary, else on the `PATH`.
fn default_receiver_bin() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("strata-receiver")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "strata-receiver".into())
}
