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

    // ---- accounts -------------------------------------------------------------

    /// Who an access token belongs to. The role comes from the store, so a
    /// changed role applies at once.
    pub async fn principal(&self, access_token: &str, now_secs: i64) -> Result<Principal> {
        let claims = self.tokens.verify(access_token, now_secs)?;
        let user = self
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        Ok(Principal {
            user_id: user.id,
            email: user.email,
            role: Role::parse(&user.role).map_err(|_| ControlError::Unauthenticated)?,
        })
    }

    pub async fn needs_setup(&self) -> Result<bool> {
        Ok(self.store.count_users().await? == 0)
    }

    /// Creates the first admin; refused once any user exists.
    pub async fn setup(&self, email: &str, password: &str, now: i64) -> Result<UserView> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let row = UserRow {
            id: new_id("usr"),
            email: email.as_str().to_owned(),
            password_hash: slow_hash(password.expose()).await?,
            role: Role::Admin.as_str().into(),
            created_at: now,
        };
        if !self.store.insert_first_user(&row).await? {
            return Err(ControlError::Conflict("setup is done already".into()));
        }
        self.audit(&row.email, "setup", &row.id, "first admin")
            .await;
        Ok(user_view(row))
    }

    pub async fn create_user(
        &self,
        who: &Principal,
        email: &str,
        password: &str,
        role: &str,
        now: i64,
    ) -> Result<UserView> {
        self.authorize(who, Action::ManageUsers)?;
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let role = Role::parse(role)?;
        let row = UserRow {
            id: new_id("usr"),
            email: email.as_str().to_owned(),
            password_hash: slow_hash(password.expose()).await?,
            role: role.as_str().into(),
            created_at: now,
        };
        match self.store.insert_user(&row).await {
            Err(StoreError::Duplicate) => {
                return Err(ControlError::Conflict(
                    "a user with this email exists".into(),
                ))
            }
            other => other?,
        }
        self.audit(
            &who.email,
            "user.create",
            &row.id,
            &format!("{} as {}", row.email, row.role),
        )
        .await;
        Ok(user_view(row))
    }

    pub async fn list_users(&self, who: &Principal) -> Result<Vec<UserView>> {
        self.authorize(who, Action::ManageUsers)?;
        Ok(self
            .store
            .list_users()
            .await?
            .into_iter()
            .map(user_view)
            .collect())
    }

    /// Signs in with a password.
    pub async fn login(&self, email: &str, password: &str, now: i64) -> Result<TokenPair> {
        let Ok(email) = Email::parse(email) else {
            slow_dummy(password).await;
            return Err(ControlError::Unauthenticated);
        };
        let Some(user) = self.store.user_by_email(email.as_str()).await? else {
            slow_dummy(password).await;
            return Err(ControlError::Unauthenticated);
        };
        if !slow_verify(password, &user.password_hash).await? {
            return Err(ControlError::Unauthenticated);
        }
        self.issue_pair(&user, &new_id("fam"), now).await
    }

    async fn issue_pair(&self, user: &UserRow, family: &str, now: i64) -> Result<TokenPair> {
        let role = Role::parse(&user.role).map_err(|_| ControlError::Unauthenticated)?;
        let access_token = self.tokens.issue(&user.id, role.as_str(), now / 1000)?;
        let refresh = SplitToken::generate("rt")?;
        self.store
            .insert_refresh(&RefreshRow {
                id: refresh.id.clone(),
                user_id: user.id.clone(),
                family: family.to_owned(),
                secret_hash: refresh.sha256_hex(),
                expires_at: now + REFRESH_TTL_MS,
                used_at: None,
                revoked_at: None,
                created_at: now,
            })
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh.reveal(),
            expires_in: self.tokens.ttl_secs(),
            role: role.as_str(),
        })
    }

    /// Trades a refresh token for a new pair; the old one is spent. A spent
    /// token presented again means it leaked: its whole family is revoked.
    pub async fn refresh(&self, token: &str, now: i64) -> Result<TokenPair> {
        let token = SplitToken::parse(token)?;
        let row = self
            .store
            .refresh_by_id(&token.id)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        if !token.matches_sha256(&row.secret_hash) || row.revoked_at.is_some() {
            return Err(ControlError::Unauthenticated);
        }
        if row.used_at.is_some() || !self.store.use_refresh(&row.id, now).await? {
            let revoked = self.store.revoke_family(&row.family, now).await?;
            tracing::warn!(user = %row.user_id, revoked, "refresh token reused; family revoked");
            self.audit(
                &row.user_id,
                "token.reuse",
                &row.family,
                "refresh token reused; sessions revoked",
            )
            .await;
            return Err(ControlError::Unauthenticated);
        }
        if row.expires_at <= now {
            return Err(ControlError::Unauthenticated);
        }
        let user = self
            .store
            .user_by_id(&row.user_id)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        self.issue_pair(&user, &row.family, now).await
    }

    /// Revokes the session a refresh token belongs to.
    pub async fn logout(&self, token: &str, now: i64) -> Result<()> {
        let token = SplitToken::parse(token)?;
        let Some(row) = self.store.refresh_by_id(&token.id).await? else {
            return Ok(());
        };
        if token.matches_sha256(&row.secret_hash) {
            self.store.revoke_family(&row.family, now).await?;
        }
        Ok(())
    }

    // ---- senders ------------------------------------------------------------

    pub async fn create_sender(
        &self,
        who: &Principal,
        name: &str,
        enrolment_ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<NewSender> {
        self.authorize(who, Action::ManageSenders)?;
        let name = Name::parse("name", name)?;
        let row = SenderRow {
            id: new_id("snd"),
            name: name.as_str().to_owned(),
            public_key: None,
            hostname: None,
            enrolled_at: None,
            last_seen_at: None,
            created_at: now,
        };
        self.store.insert_sender(&row).await?;
        let (token, expires_at) = self
            .issue_enrolment(&row.id, enrolment_ttl_secs, now)
            .await?;
        self.audit(&who.email, "sender.create", &row.id, &row.name)
            .await;
        Ok(NewSender {
            sender: self.sender_view(row),
            enrolment_token: token,
            enrolment_expires_at: expires_at,
        })
    }

    /// A new enrolment token for an existing sender (re-enrolment replaces
    /// its key on use).
    pub async fn new_enrolment_token(
        &self,
        who: &Principal,
        sender_id: &str,
        ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<(String, i64)> {
        self.authorize(who, Action::ManageSenders)?;
        let sender_id = parse_id("sender_id", "snd", sender_id)?;
        self.store
            .sender(&sender_id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        let out = self.issue_enrolment(&sender_id, ttl_secs, now).await?;
        self.audit(&who.email, "sender.enrolment_token", &sender_id, "")
            .await;
        Ok(out)
    }

    async fn issue_enrolment(
        &self,
        sender_id: &str,
        ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<(String, i64)> {
        let ttl = ttl_secs.unwrap_or(ENROLMENT_TTL_SECS);
        if !(1..=30 * 24 * 3600).contains(&ttl) {
            return Err(Invalid {
                field: "enrolment_ttl_secs",
                reason: "must be between 1 s and 30 days".into(),
            }
            .into());
        }
        let token = SplitToken::generate("enr")?;
        let expires_at = now + ttl * 1000;
        self.store
            .insert_enrolment(&EnrolmentRow {
                id: token.id.clone(),
                sender_id: sender_id.to_owned(),
                secret_hash: slow_hash(token.secret()).await?,
                expires_at,
                used_at: None,
                created_at: now,
            })
            .await?;
        Ok((token.reveal(), expires_at))
    }

    /// An agent enrols: one use of a token, before it expires, binds the
    /// agent's public key to the sender.
    pub async fn enrol(
        &self,
        token: &str,
        public_key: &str,
        hostname: &str,
        now: i64,
    ) -> Result<String> {
        let token = SplitToken::parse(token)?;
        let key = AgentKey::parse(public_key)?;
        let hostname = Name::parse("hostname", hostname)?;
        let Some(row) = self.store.enrolment(&token.id).await? else {
            slow_dummy(token.secret()).await;
            return Err(ControlError::Unauthenticated);
        };
        if !slow_verify(token.secret(), &row.secret_hash).await? {
            return Err(ControlError::Unauthenticated);
        }
        if row.used_at.is_some() {
            return Err(ControlError::Conflict(
                "this enrolment token was used already".into(),
            ));
        }
        if row.expires_at <= now {
            return Err(ControlError::Conflict(
                "this enrolment token has expired".into(),
            ));
        }
        if !self
            .store
            .complete_enrolment(
                &row.id,
                &row.sender_id,
                &key.to_base64(),
                hostname.as_str(),
                now,
            )
            .await?
        {
            return Err(ControlError::Conflict(
                "this enrolment token was used already".into(),
            ));
        }
        self.audit(
            &row.sender_id,
            "sender.enrol",
            &row.sender_id,
            hostname.as_str(),
        )
        .await;
        Ok(row.sender_id)
    }

    fn sender_view(&self, row: SenderRow) -> SenderView {
        let presence = self.hub.presence(&row.id);
        let status = lock(&self.senders)
            .get(&row.id)
            .and_then(|s| s.status.clone());
        SenderView {
            enrolled: row.public_key.is_some(),
            presence: presence.as_str(),
            interfaces: status
                .as_ref()
                .map(|s| s.interfaces.clone())
                .unwrap_or_default(),
            inputs: status.map(|s| s.inputs).unwrap_or_default(),
            id: row.id,
            name: row.name,
            hostname: row.hostname,
            last_seen_at: row.last_seen_at,
        }
    }

    pub async fn list_senders(&self, who: &Principal) -> Result<Vec<SenderView>> {
        self.authorize(who, Action::View)?;
        Ok(self
            .store
            .list_senders()
            .await?
            .into_iter()
            .map(|r| self.sender_view(r))
            .collect())
    }

    pub async fn sender(&self, who: &Principal, id: &str) -> Result<SenderView> {
        self.authorize(who, Action::View)?;
        let id = parse_id("sender_id", "snd", id)?;
        let row = self
            .store
            .sender(&id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        Ok(self.sender_view(row))
    }

    /// Sends a harmless command and returns its round-trip time.
    pub async fn ping_sender(&self, who: &Principal, id: &str) -> Result<Duration> {
        self.authorize(who, Action::View)?;
        let id = parse_id("sender_id", "snd", id)?;
        let update = Message::ConfigUpdate(strata_protocol::ConfigUpdate {
            heartbeat_secs: Some(self.config.heartbeat_secs),
            stats_interval_ms: None,
        });
        self.hub
            .command(&id, &update, COMMAND_TIMEOUT)
            .await
            .map_err(|e| ControlError::Conflict(e.to_string()))
    }

    // ---- destinations ---------------------------------------------------------

    pub async fn create_destination(
        &self,
        who: &Principal,
        name: &str,
        platform: &str,
        url: &str,
        stream_key: &str,
        now: i64,
    ) -> Result<DestinationView> {
        self.authorize(who, Action::ManageDestinations)?;
        let name = Name::parse("name", name)?;
        let platform = Platform::parse(platform)?;
        let url = DestinationUrl::parse(platform, url)?;
        let key = StreamKey::parse(stream_key)?;
        let id = new_id("dst");
        let row = DestinationRow {
            url_sealed: self
                .secrets
                .seal(&url_context(&id), url.expose().as_bytes())?,
            url_hint: url.hint().to_owned(),
            key_sealed: self
                .secrets
                .seal(&key_context(&id), key.expose().as_bytes())?,
            key_hint: secrets::mask_hint(key.expose()),
            id,
            name: name.as_str().to_owned(),
            platform: platform.as_str().to_owned(),
            created_at: now,
        };
        self.store.insert_destination(&row).await?;
        self.audit(&who.email, "destination.create", &row.id, &row.name)
            .await;
        Ok(destination_view(row))
    }

    pub async fn list_destinations(&self, who: &Principal) -> Result<Vec<DestinationView>> {
        self.authorize(who, Action::View)?;
        Ok(self
            .store
            .list_destinations()
            .await?
            .into_iter()
            .map(destination_view)
            .collect())
    }

    pub async fn delete_destination(&self, who: &Principal, id: &str) -> Result<()> {
        self.authorize(who, Action::ManageDestinations)?;
        let id = parse_id("destination_id", "dst", id)?;
        self.store
            .destination(&id)
            .await?
            .ok_or(ControlError::NotFound("destination"))?;
        if !self.store.delete_destination(&id).await? {
            return Err(ControlError::Conflict(
                "streams refer to this destination".into(),
            ));
        }
        self.audit(&who.email, "destination.delete", &id, "").await;
        Ok(())
    }

    /// Opens a destination's URL and key for a receiver.
    async fn open_destinations(&self, ids: &[String]) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = self
                .store
                .destination(id)
                .await?
                .ok_or(ControlError::NotFound("destination"))?;
            let url = self
                .secrets
                .open_string(&url_context(id), &row.url_sealed)?;
            let key = self
                .secrets
                .open_string(&key_context(id), &row.key_sealed)?;
            out.push((row.platform, url, key));
        }
        Ok(out)
    }

    // ---- streams ----------------------------------------------------------------

    fn stream_view(&self, row: StreamRow) -> StreamView {
        StreamView {
            receiver_pid: self.receivers.pid(&row.id),
            receiver_ready: lock(&self.runtime)
                .get(&row.id)
                .is_some_and(|rt| rt.receiver_ready),
            port: u16::try_from(row.port).unwrap_or(0),
            id: row.id,
            sender_id: row.sender_id,
            state: row.state,
            reason: row.reason,
            destination_ids: row.destination_ids,
            created_by: row.created_by,
            created_at: row.created_at,
            live_at: row.live_at,
            ended_at: row.ended_at,
        }
    }

    pub async fn list_streams(&self, who: &Principal, limit: i64) -> Result<Vec<StreamView>> {
        self.authorize(who, Action::View)?;
        let rows = self.store.list_streams(false, limit.clamp(1, 1000)).await?;
        Ok(rows.into_iter().map(|r| self.stream_view(r)).collect())
    }

    pub async fn stream(&self, who: &Principal, id: &str) -> Result<StreamView> {
        self.authorize(who, Action::View)?;
        let id = parse_id("stream_id", "str", id)?;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        Ok(self.stream_view(row))
    }

    /// Picks the lowest free even port of the pool (RIST takes P and P+1).
    async fn allocate_port(&self) -> Result<u16> {
        let used: HashSet<i64> = self.store.ports_in_use().await?.into_iter().collect();
        let (lo, hi) = self.config.port_range;
        let first = lo + lo % 2;
        (first..hi)
            .step_by(2)
            .find(|p| !used.contains(&i64::from(*p)))
            .ok_or_else(|| ControlError::Conflict("no free receiver port in the pool".into()))
    }

    /// Starts a stream from a sender to destinations: spawns its receiver
    /// and tells the agent, with a fresh pre-shared key for both.
    pub async fn start_stream(
        self: &Arc<Self>,
        who: &Principal,
        sender_id: &str,
        destination_ids: &[String],
        now: i64,
    ) -> Result<StreamView> {
        self.authorize(who, Action::StartStream)?;
        let sender_id = parse_id("sender_id", "snd", sender_id)?;
        let mut dest_ids = Vec::new();
        for d in destination_ids {
            let d = parse_id("destination_ids", "dst", d)?;
            if !dest_ids.contains(&d) {
                dest_ids.push(d);
            }
        }
        if dest_ids.is_empty() || dest_ids.len() > 8 {
            return Err(Invalid {
                field: "destination_ids",
                reason: "give 1 to 8 destinations".into(),
            }
            .into());
        }
        let sender = self
            .store
            .sender(&sender_id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        if sender.public_key.is_none() {
            return Err(ControlError::Conflict("the sender is not enrolled".into()));
        }
        if self.hub.presence(&sender_id) != Presence::Online {
            return Err(ControlError::Conflict("the sender is not connected".into()));
        }
        let destinations = self.open_destinations(&dest_ids).await?;

        let psk = Psk::generate()?;
        let row = {
            let _guard = self.port_lock.lock().await;
            if self
                .store
                .list_streams(true, 1000)
                .await?
                .iter()
                .any(|s| s.sender_id == sender_id)
            {
                return Err(ControlError::Conflict(
                    "the sender is already streaming".into(),
                ));
            }
            let port = self.allocate_port().await?;
            let row = StreamRow {
                id: new_id("str"),
                sender_id: sender_id.clone(),
                state: StreamState::Starting.as_str().into(),
                reason: None,
                port: i64::from(port),
                created_by: who.email.clone(),
                created_at: now,
                live_at: None,
                ended_at: None,
                destination_ids: dest_ids.clone(),
            };
            self.store.insert_stream(&row).await?;
            row
        };
        let port = row.port as u16;
        lock(&self.runtime).insert(
            row.id.clone(),
            Runtime {
                sender_id: sender_id.clone(),
                psk: Some(psk.clone()),
                ..Runtime::default()
            },
        );
        self.receivers
            .spawn(&row.id, port, receiver_secrets(psk.to_hex(), destinations));
        self.audit(
            &who.email,
            "stream.start",
            &row.id,
            &format!("sender {sender_id} to {}", dest_ids.join(",")),
        )
        .await;
        self.emit(UiEvent::StreamState {
            stream_id: row.id.clone(),
            state: row.state.clone(),
            reason: None,
        });
        self.spawn_agent_start(row.id.clone());
        Ok(self.stream_view(row))
    }

    /// Tells the agent to start (or re-key) a stream, in the background.
    fn spawn_agent_start(self: &Arc<Self>, stream_id: String) {
        let control = self.clone();
        tokio::spawn(async move {
            let (sender_id, psk) = {
                let runtime = lock(&control.runtime);
                let Some(rt) = runtime.get(&stream_id) else {
                    return;
                };
                let Some(psk) = rt.psk.clone() else { return };
                (rt.sender_id.clone(), psk)
            };
            let Ok(Some(row)) = control.store.stream(&stream_id).await else {
                return;
            };
            let start = Message::StreamStart(StreamStart {
                stream_id: stream_id.clone(),
                psk: psk.to_hex(),
                receiver: strata_protocol::ReceiverAddr {
                    host: control.config.public_host.clone(),
                    port: row.port as u16,
                },
                input: None,
            });
            match control
                .hub
                .command(&sender_id, &start, COMMAND_TIMEOUT)
                .await
            {
                Ok(rtt) => {
                    tracing::info!(%stream_id, ?rtt, "agent started the stream");
                    if let Some(rt) = lock(&control.runtime).get_mut(&stream_id) {
                        rt.agent_started = true;
                        rt.needs_start = false;
                    }
                    control.maybe_live(&stream_id).await;
                }
                Err(e) => {
                    tracing::warn!(%stream_id, error = %e, "agent did not start the stream");
                    if row.state == "starting" {
                        control
                            .fail_stream(&stream_id, &format!("agent: {e}"))
                            .await;
                    } else if let Some(rt) = lock(&control.runtime).get_mut(&stream_id) {
                        rt.needs_start = true;
                    }
                }
            }
        });
    }

    async fn maybe_live(&self, stream_id: &str) {
        let ready = lock(&self.runtime)
            .get(stream_id)
            .is_some_and(|rt| rt.receiver_ready && rt.agent_started);
        if ready {
            self.transition(stream_id, StreamState::Starting, StreamState::Live, None)
                .await;
        }
    }

    /// Applies a checked transition if the stream is still in `from`.
    async fn transition(
        &self,
        stream_id: &str,
        from: StreamState,
        to: StreamState,
        reason: Option<&str>,
    ) -> bool {
        if from.to(to).is_err() {
            return false;
        }
        match self
            .store
            .transition_stream(stream_id, from.as_str(), to.as_str(), reason, now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(%stream_id, from = %from, to = %to, ?reason, "stream state");
                self.emit(UiEvent::StreamState {
                    stream_id: stream_id.to_owned(),
                    state: to.as_str().into(),
                    reason: reason.map(str::to_owned),
                });
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(%stream_id, error = %e, "stream transition failed");
                false
            }
        }
    }

    /// Marks a stream failed from whatever active state it is in, and
    /// tears it down.
    async fn fail_stream(&self, stream_id: &str, reason: &str) {
        for from in [
            StreamState::Starting,
            StreamState::Live,
            StreamState::Stopping,
        ] {
            if self
                .transition(stream_id, from, StreamState::Failed, Some(reason))
                .await
            {
                break;
            }
        }
        let sender = lock(&self.runtime).remove(stream_id).map(|rt| rt.sender_id);
        if let Some(sender) = sender {
            self.hub.send(
                &sender,
                &Message::StreamStop(StreamStop {
                    stream_id: stream_id.to_owned(),
                }),
            );
        }
        self.receivers.stop(stream_id).await;
        self.audit("control", "stream.failed", stream_id, reason)
            .await;
    }

    /// Stops a stream: the agent stops sending, the receiver is stopped,
    /// the stream ends.
    pub async fn stop_stream(&self, who: &Principal, id: &str) -> Result<StreamView> {
        self.authorize(who, Action::StopStream)?;
        let id = parse_id("stream_id", "str", id)?;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        let state = StreamState::parse(&row.state)?;
        state
            .to(StreamState::Stopping)
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        if !self
            .transition(&id, state, StreamState::Stopping, None)
            .await
        {
            return Err(ControlError::Conflict(
                "the stream changed state meanwhile; try again".into(),
            ));
        }
        self.audit(&who.email, "stream.stop", &id, "").await;
        let stop = Message::StreamStop(StreamStop {
            stream_id: id.clone(),
        });
        if let Err(e) = self
            .hub
            .command(&row.sender_id, &stop, Duration::from_secs(5))
            .await
        {
            tracing::warn!(stream_id = %id, error = %e, "agent did not confirm the stop");
        }
        self.receivers.stop(&id).await;
        lock(&self.runtime).remove(&id);
        self.transition(&id, StreamState::Stopping, StreamState::Ended, None)
            .await;
        let row = self
            .store
            .stream(&id)
            .await?
            .ok_or(ControlError::NotFound("stream"))?;
        Ok(self.stream_view(row))
    }

    pub async fn audit_log(&self, who: &Principal, limit: i64) -> Result<Vec<AuditView>> {
        self.authorize(who, Action::ViewAudit)?;
        Ok(self
            .store
            .list_audit(limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|r| AuditView {
                at: r.at,
                actor: r.actor,
                action: r.action,
                target: r.target,
                detail: r.detail,
            })
            .collect())
    }

    // ---- events from agents -------------------------------------------------

    pub(crate) async fn agent_connected(self: &Arc<Self>, sender_id: &str) {
        lock(&self.senders)
            .entry(sender_id.to_owned())
            .or_default()
            .unobserved_since = None;
        let _ = self.store.sender_seen(sender_id, None, now_ms()).await;
        self.emit(UiEvent::Presence {
            sender_id: sender_id.to_owned(),
            presence: Presence::Online.as_str(),
        });
    }

    pub(crate) async fn agent_disconnected(&self, sender_id: &str) {
        if self.hub.presence(sender_id) == Presence::Online {
            return; // a newer session took over
        }
        lock(&self.senders)
            .entry(sender_id.to_owned())
            .or_default()
            .unobserved_since = Some(now_ms());
        tracing::info!(%sender_id, "agent unobserved");
        self.emit(UiEvent::Presence {
            sender_id: sender_id.to_owned(),
            presence: Presence::Unobserved.as_str(),
        });
    }

    /// A heartbeat: record it and reconcile streams with what the agent runs.
    pub(crate) async fn heartbeat(self: &Arc<Self>, sender_id: &str, status: DeviceStatus) {
        let now = now_ms();
        let hostname = Name::parse("hostname", &status.hostname).ok();
        let running: HashSet<String> = status.running_streams.iter().cloned().collect();
        let write_seen = {
            let mut senders = lock(&self.senders);
            let live = senders.entry(sender_id.to_owned()).or_default();
            let hostname_changed =
                live.status.as_ref().map(|s| &s.hostname) != Some(&status.hostname);
            live.status = Some(status);
            // `last_seen_at` is for people: one write per sender every
            // SEEN_WRITE_MS keeps 1,000 heartbeats a second off the disk.
            let due = hostname_changed || now - live.seen_written_at >= SEEN_WRITE_MS;
            if due {
                live.seen_written_at = now;
            }
            due
        };
        if write_seen {
            let _ = self
                .store
                .sender_seen(sender_id, hostname.as_ref().map(Name::as_str), now)
                .await;
        }

        let active: Vec<StreamRow> = match self.store.active_streams_of(sender_id).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "reading streams for a heartbeat");
                return;
            }
        };
        let active_ids: HashSet<&str> = active.iter().map(|s| s.id.as_str()).collect();
        for id in running
            .iter()
            .filter(|id| !active_ids.contains(id.as_str()))
        {
            tracing::info!(%sender_id, stream_id = %id, "agent runs a stream that is over; stopping it");
            self.hub.send(
                sender_id,
                &Message::StreamStop(StreamStop {
                    stream_id: id.clone(),
                }),
            );
        }
        for stream in active.iter().filter(|s| s.state != "stopping") {
            let mut resend = false;
            {
                let mut runtime = lock(&self.runtime);
                let rt = runtime.entry(stream.id.clone()).or_insert_with(|| Runtime {
                    sender_id: sender_id.to_owned(),
                    ..Runtime::default()
                });
                if running.contains(&stream.id) && !rt.needs_start {
                    rt.agent_started = true;
                } else if rt.psk.is_some() && (rt.needs_start || rt.agent_started) {
                    // The agent lost the stream (restarted) or must be
                    // re-keyed: send it again.
                    rt.agent_started = false;
                    rt.needs_start = true;
                    resend = true;
                }
            }
            if resend {
                self.spawn_agent_start(stream.id.clone());
            }
            self.maybe_live(&stream.id).await;
        }
    }

    fn owns(&self, sender_id: &str, stream_id: &str) -> bool {
        lock(&self.runtime)
            .get(stream_id)
            .is_some_and(|rt| rt.sender_id == sender_id)
    }

    pub(crate) async fn agent_stats(&self, sender_id: &str, stats: StreamStats) {
        if !self.owns(sender_id, &stats.stream_id) {
            tracing::debug!(%sender_id, stream_id = %stats.stream_id, "stats for a stream not of this sender");
            return;
        }
        for link in &stats.links {
            let labels = [
                ("stream_id", stats.stream_id.clone()),
                ("link", link.name.clone()),
            ];
            metrics::gauge!("strata_stream_link_bitrate_kbps", &labels).set(link.bitrate_kbps);
            metrics::gauge!("strata_stream_link_loss_pct", &labels).set(link.loss_pct);
            metrics::gauge!("strata_stream_link_rtt_ms", &labels).set(link.rtt_ms);
        }
        metrics::gauge!("strata_stream_encoder_kbps", "stream_id" => stats.stream_id.clone())
            .set(stats.encoder_kbps);
        let receiver_kbps = {
            let mut runtime = lock(&self.runtime);
            let Some(rt) = runtime.get_mut(&stats.stream_id) else {
                return;
            };
            rt.agent_stats = Some((now_ms(), stats.clone()));
            rt.receiver_kbps
        };
        self.emit(UiEvent::StreamStats {
            stream_id: stats.stream_id,
            encoder_kbps: stats.encoder_kbps,
            receiver_kbps,
            links: stats.links,
        });
    }

    pub(crate) async fn agent_stream_ended(&self, sender_id: &str, ended: StreamEnded) {
        if !self.owns(sender_id, &ended.stream_id) {
            return;
        }
        let reason = format!(
            "the sender ended it: {}",
            ended.reason.as_deref().unwrap_or("no reason given")
        );
        self.fail_stream(&ended.stream_id, &reason).await;
    }

    // ---- events from receivers ------------------------------------------------

    async fn on_receiver_event(self: &Arc<Self>, stream_id: &str, event: RxEvent) {
        match event {
            RxEvent::Ready { pid } => {
                tracing::info!(%stream_id, pid, "receiver ready");
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_ready = true;
                    // Health is judged from stats; count from readiness.
                    rt.receiver_stats_at = Some(now_ms());
                }
                self.maybe_live(stream_id).await;
            }
            RxEvent::Stats {
                bytes_in,
                bitrate_kbps,
            } => {
                metrics::gauge!("strata_receiver_bitrate_kbps", "stream_id" => stream_id.to_owned())
                    .set(bitrate_kbps);
                metrics::gauge!("strata_receiver_bytes_in", "stream_id" => stream_id.to_owned())
                    .set(bytes_in as f64);
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_stats_at = Some(now_ms());
                    rt.receiver_kbps = bitrate_kbps;
                }
            }
            RxEvent::Error(message) => {
                tracing::warn!(%stream_id, %message, "receiver error");
            }
            RxEvent::Stopped(reason) => {
                tracing::info!(%stream_id, %reason, "receiver stopped");
                if let Some(rt) = lock(&self.runtime).get_mut(stream_id) {
                    rt.receiver_ready = false;
                }
            }
            RxEvent::Respawned { pid } => {
                tracing::warn!(%stream_id, pid, "receiver replaced");
                let rekey = {
                    let mut runtime = lock(&self.runtime);
                    match runtime.get_mut(stream_id) {
                        Some(rt) if rt.psk.is_none() => {
                            rt.psk = rt.standby.take();
                            rt.needs_start = true;
                            true
                        }
                        _ => false,
                    }
                };
                if rekey {
                    self.spawn_agent_start(stream_id.to_owned());
                }
            }
            RxEvent::GaveUp(reason) => {
                self.fail_stream(stream_id, &format!("receiver: {reason}"))
                    .await;
            }
        }
    }

    /// After a restart: adopts the receivers of streams still active, or
    /// replaces those that are gone.
    async fn recover(self: &Arc<Self>) -> Result<()> {
        let active = self.store.list_streams(true, 1000).await?;
        for stream in active {
            let port = stream.port as u16;
            if stream.state == "stopping" {
                let standby = receiver_secrets(Psk::generate()?.to_hex(), Vec::new());
                if self.receivers.adopt(&stream.id, port, standby).await {
                    self.receivers.stop(&stream.id).await;
                }
                self.transition(&stream.id, StreamState::Stopping, StreamState::Ended, None)
                    .await;
                continue;
            }
            let destinations = match self.open_destinations(&stream.destination_ids).await {
                Ok(d) => d,
                Err(e) => {
                    self.fail_stream(&stream.id, &format!("destinations: {e}"))
                        .await;
                    continue;
                }
            };
            let fresh = Psk::generate()?;
            let secrets = receiver_secrets(fresh.to_hex(), destinations);
            if self
                .receivers
                .adopt(&stream.id, port, secrets.clone())
                .await
            {
                tracing::info!(stream_id = %stream.id, "receiver re-adopted");
                lock(&self.runtime).insert(
                    stream.id.clone(),
                    Runtime {
                        sender_id: stream.sender_id.clone(),
                        psk: None,
                        standby: Some(fresh),
                        receiver_ready: true,
                        ..Runtime::default()
                    },
                );
                self.audit("control", "receiver.adopt", &stream.id, "")
                    .await;
            } else {
                tracing::warn!(stream_id = %stream.id, "receiver gone; starting a new one with a new key");
                lock(&self.runtime).insert(
                    stream.id.clone(),
                    Runtime {
                        sender_id: stream.sender_id.clone(),
                        psk: Some(fresh),
                        needs_start: true,
                        ..Runtime::default()
                    },
                );
                self.receivers.spawn(&stream.id, port, secrets);
                self.audit("control", "receiver.respawn", &stream.id, "")
                    .await;
            }
        }
        Ok(())
    }

    /// Restarts receivers that stopped reporting stats (health from their
    /// stats: a process that is alive but wedged is as good as dead).
    async fn check_receivers(&self, now: i64) {
        let stall = self.config.receiver_stall_ms as i64;
        let wedged: Vec<String> = {
            let mut runtime = lock(&self.runtime);
            runtime
                .iter_mut()
                .filter(|(_, rt)| rt.receiver_ready)
                .filter(|(_, rt)| rt.receiver_stats_at.is_some_and(|at| now - at > stall))
                .map(|(id, rt)| {
                    // Not again until the replacement reports.
                    rt.receiver_ready = false;
                    id.clone()
                })
                .collect()
        };
        for id in wedged {
            tracing::warn!(stream_id = %id, stall_ms = stall, "receiver silent; restarting it");
            self.receivers.restart(&id);
            self.audit("control", "receiver.restart", &id, "no stats")
                .await;
        }
    }

    // ---- observations for metrics and alerts -----------------------------------

    /// Updates the gauges that are computed rather than counted.
    pub async fn refresh_gauges(&self) {
        metrics::gauge!("strata_senders_online").set(self.hub.online_count() as f64);
        if let Ok(counts) = self.store.count_streams_by_state().await {
            let counts: HashMap<String, i64> = counts.into_iter().collect();
            for state in StreamState::ALL {
                let n = counts.get(state.as_str()).copied().unwrap_or(0);
                metrics::gauge!("strata_streams", "state" => state.as_str()).set(n as f64);
            }
        }
    }

    /// What the alert rules look at.
    pub async fn observe(&self, now: i64) -> Result<crate::alerts::Observations> {
        use crate::alerts::{Observations, SenderObs, StreamObs};
        let streams = self.store.list_streams(false, 200).await?;
        let runtime = lock(&self.runtime);
        let stream_obs = streams
            .into_iter()
            .filter(|s| s.state != "ended")
            .map(|s| {
                let rt = runtime.get(&s.id);
                StreamObs {
                    max_loss_pct: rt.and_then(|rt| rt.agent_stats.as_ref()).and_then(
                        |(at, stats)| {
                            (now - at < 5_000).then(|| {
                                stats
                                    .links
                                    .iter()
                                    .map(|l| l.loss_pct)
                                    .fold(0.0_f64, f64::max)
                            })
                        },
                    ),
                    receiver_stats_at: rt.and_then(|rt| rt.receiver_stats_at),
                    id: s.id,
                    sender_id: s.sender_id,
                    state: s.state,
                    reason: s.reason,
                    ended_at: s.ended_at,
                    live_at: s.live_at,
                }
            })
            .collect();
        drop(runtime);
        let senders = lock(&self.senders);
        let sender_obs = senders
            .iter()
            .map(|(id, live)| SenderObs {
                id: id.clone(),
                online: self.hub.presence(id) == Presence::Online,
                unobserved_since: live.unobserved_since,
            })
            .collect();
        Ok(Observations {
            now,
            streams: stream_obs,
            senders: sender_obs,
        })
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
