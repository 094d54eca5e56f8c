//! Strata's domain: the types input is parsed into, the role policy and the
//! stream state machine. Nothing here knows HTTP, SQL or sockets.

use std::fmt;

use secrets::Redacted;

/// Input that does not parse into a domain type; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// A new random id with a type prefix, such as `str_8f3a...`.
pub fn new_id(prefix: &str) -> String {
    let bytes = secrets::random_bytes::<8>().unwrap_or_else(|_| {
        // The OS generator does not fail on Linux; should it, a time-based
        // id is still unique enough for a row id (never for a secret).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos.to_le_bytes()
    });
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Parses an id of the given prefix (for ids that arrive from outside).
pub fn parse_id(field: &'static str, prefix: &str, text: &str) -> Result<String, Invalid> {
    let rest = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or_else(|| invalid(field, format!("must start with {prefix}_")))?;
    if rest.is_empty() || rest.len() > 64 || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(field, "malformed id"));
    }
    Ok(text.to_owned())
}

/// What a user may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Operator,
    Viewer,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, Invalid> {
        match text {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            _ => Err(invalid("role", "must be admin, operator or viewer")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

/// Everything a user can ask of the control plane, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read senders, streams, destinations (masked), stats.
    View,
    ViewAudit,
    ManageUsers,
    ManageSenders,
    ManageDestinations,
    StartStream,
    StopStream,
}

/// The one place that decides what a role may do. The API, the agent
/// WebSocket's admin paths and the pages all ask it through
/// [`crate::service::Control::authorize`].
pub fn allows(role: Role, action: Action) -> bool {
    match (role, action) {
        (Role::Admin, _) => true,
        (Role::Operator, Action::ManageUsers | Action::ViewAudit) => false,
        (Role::Operator, _) => true,
        (Role::Viewer, Action::View) => true,
        (Role::Viewer, _) => false,
    }
}

/// Who is asking: an authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub email: String,
    pub role: Role,
}

/// A login name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(text: &str) -> Result<Email, Invalid> {
        let text = text.trim().to_lowercase();
        let (local, domain) = text
            .split_once('@')
            .ok_or_else(|| invalid("email", "must contain @"))?;
        if local.is_empty()
            || domain.is_empty()
            || domain.contains('@')
            || text.len() > 254
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("email", "is not an email address"));
        }
        Ok(Email(text))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password (checked for length only: long passphrases are welcome).
pub struct NewPassword(Redacted<String>);

impl NewPassword {
    pub fn parse(text: &str) -> Result<NewPassword, Invalid> {
        let n = text.chars().count();
        if n < 10 {
            return Err(invalid("password", "must be at least 10 characters"));
        }
        if n > 1024 {
            return Err(invalid("password", "must be at most 1024 characters"));
        }
        Ok(NewPassword(Redacted::new(text.to_owned())))
    }
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// A human-readable name (sender, destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, text: &str) -> Result<Name, Invalid> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 64 {
            return Err(invalid(field, "must be 1 to 64 characters"));
        }
        if text.chars().any(char::is_control) {
            return Err(invalid(field, "must not contain control characters"));
        }
        Ok(Name(text.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a destination sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Youtube,
    Twitch,
    CustomRtmp,
    Srt,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Platform, Invalid> {
        match text {
            "youtube" => Ok(Platform::Youtube),
            "twitch" => Ok(Platform::Twitch),
            "custom_rtmp" => Ok(Platform::CustomRtmp),
            "srt" => Ok(Platform::Srt),
            _ => Err(invalid(
                "platform",
                "must be youtube, twitch, custom_rtmp or srt",
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Youtube => "youtube",
            Platform::Twitch => "twitch",
            Platform::CustomRtmp => "custom_rtmp",
            Platform::Srt => "srt",
        }
    }
    fn schemes(self) -> &'static [&'static str] {
        match self {
            Platform::Youtube | Platform::Twitch | Platform::CustomRtmp => &["rtmp", "rtmps"],
            Platform::Srt => &["srt"],
        }
    }
}

/// An ingest URL, checked against its platform's schemes.
pub struct DestinationUrl {
    url: Redacted<String>,
    /// Scheme and host only: what may be shown after creation.
    hint: String,
}

impl DestinationUrl {
    pub fn parse(platform: Platform, text: &str) -> Result<DestinationUrl, Invalid> {
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("url", "must be scheme://host[:port]/path"))?;
        if !platform.schemes().contains(&scheme) {
            return Err(invalid(
                "url",
                format!(
                    "{} takes {} URLs",
                    platform.as_str(),
                    platform.schemes().join(" or ")
                ),
            ));
        }
        let host = rest.split(['/', '?']).next().unwrap_or("");
        if host.is_empty()
            || text.len() > 2048
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("url", "has no host or contains spaces"));
        }
        // Credentials in the authority part are secret too.
        let host = host.rsplit('@').next().unwrap_or(host);
        Ok(DestinationUrl {
            url: Redacted::new(text.to_owned()),
            hint: format!("{scheme}://{host}/…"),
        })
    }
    pub fn expose(&self) -> &str {
        self.url.expose()
    }
    pub fn hint(&self) -> &str {
        &self.hint
    }
}

/// A destination's stream key.
pub struct StreamKey(Redacted<String>);

impl StreamKey {
    pub fn parse(text: &str) -> Result<StreamKey, Invalid> {
        let text = text.trim();
        if text.is_empty() || text.len() > 512 {
            return Err(invalid("stream_key", "must be 1 to 512 characters"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("stream_key", "must not contain spaces"));
        }
        Ok(StreamKey(Redacted::new(text.to_owned())))
    }
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// An agent's Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKey([u8; 32]);

impl AgentKey {
    pub fn parse(text: &str) -> Result<AgentKey, Invalid> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| invalid("public_key", "must be base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| invalid("public_key", "must be a 32-byte Ed25519 key"))?;
        Ok(AgentKey(key))
    }
    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamState {
    Starting,
    Live,
    Stopping,
    Ended,
    Failed,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stream cannot go from {from} to {to}")]
pub struct BadTransition {
    pub from: StreamState,
    pub to: StreamState,
}

impl StreamState {
    pub const ALL: [StreamState; 5] = [
        StreamState::Starting,
        StreamState::Live,
        StreamState::Stopping,
        StreamState::Ended,
        StreamState::Failed,
    ];

    pub fn parse(text: &str) -> Result<StreamState, Invalid> {
        match text {
            "starting" => Ok(StreamState::Starting),
            "live" => Ok(StreamState::Live),
            "stopping" => Ok(StreamState::Stopping),
            "ended" => Ok(StreamState::Ended),
            "failed" => Ok(StreamState::Failed),
            _ => Err(invalid("state", "unknown stream state")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Starting => "starting",
            StreamState::Live => "live",
            StreamState::Stopping => "stopping",
            StreamState::Ended => "ended",
            StreamState::Failed => "failed",
        }
    }

    /// Whether the stream still holds a port and a receiver.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            StreamState::Starting | StreamState::Live | StreamState::Stopping
        )
    }

    /// Checks a transition: starting → live → stopping → ended, and failed
    /// from any state that is not over.
    pub fn to(self, next: StreamState) -> Result<StreamState, BadTransition> {
        use StreamState::*;
        let ok = matches!(
            (self, next),
            (Starting, Live | Stopping | Failed)
                | (Live, Stopping | Failed)
                | (Stopping, Ended | Failed)
        );
        if ok {
            Ok(next)
        } else {
            Err(BadTransition {
                from: self,
                to: next,
            })
        }
    }
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sender's connection state as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Enrolled but never connected since this control plane started.
    Offline,
    /// Connected and logged in now.
    Online,
    /// Was connected; the socket dropped. Its streams keep their state
    /// until the next heartbeat says otherwise.
    Unobserved,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Offline => "offline",
            Presence::Online => "online",
            Presence::Unobserved => "unobserved",
        }
    }
}

/// The RIST pre-shared key of a stream: 32 random bytes, kept in memory.
#[derive(Clone)]
pub struct Psk(Redacted<[u8; 32]>);

impl Psk {
    pub fn generate() -> Result<Psk, secrets::SecretsError> {
        Ok(Psk(Redacted::new(secrets::random_bytes::<32>()?)))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.expose())
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        use Action::*;
        let all = [
            View,
            ViewAudit,
            ManageUsers,
            ManageSenders,
            ManageDestinations,
            StartStream,
            StopStream,
        ];
        for a in all {
            assert!(allows(Role::Admin, a));
        }
        assert!(allows(Role::Operator, StartStream));
        assert!(allows(Role::Operator, ManageDestinations));
        assert!(!allows(Role::Operator, ManageUsers));
        assert!(!allows(Role::Operator, ViewAudit));
        assert!(allows(Role::Viewer, View));
        for a in [
            ViewAudit,
            ManageUsers,
            ManageSenders,
            ManageDestinations,
            StartStream,
            StopStream,
        ] {
            assert!(!allows(Role::Viewer, a), "viewer allowed {a:?}");
        }
    }

    #[test]
    fn state_machine() {
        use StreamState::*;
        assert_eq!(Starting.to(Live), Ok(Live));
        assert_eq!(Live.to(Stopping), Ok(Stopping));
        assert_eq!(Stopping.to(Ended), Ok(Ended));
        assert_eq!(Live.to(Failed), Ok(Failed));
        assert!(Ended.to(Live).is_err());
        assert!(Failed.to(Starting).is_err());
        assert!(Live.to(Starting).is_err());
        assert!(Starting.to(Ended).is_err());
        let err = Ended.to(Live).unwrap_err();
        assert_eq!(err.to_string(), "a stream cannot go from ended to live");
        for s in StreamState::ALL {
            assert_eq!(StreamState::parse(s.as_str()), Ok(s));
        }
    }

    #[test]
    fn emails_and_names() {
        assert_eq!(
            Email::parse(" A@Example.com ").unwrap().as_str(),
            "a@example.com"
        );
        for bad in ["", "nobody", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Name::parse("name", "").is_err());
        assert!(Name::parse("name", &"x".repeat(65)).is_err());
        assert!(Name::parse("name", "cam\u{7}").is_err());
        assert!(NewPassword::parse("short").is_err());
    }

    #[test]
    fn destination_urls_follow_their_platform() {
        let u =
            DestinationUrl::parse(Platform::Youtube, "rtmp://a.rtmp.youtube.com/live2").unwrap();
        assert_eq!(u.hint(), "rtmp://a.rtmp.youtube.com/…");
        assert!(DestinationUrl::parse(Platform::Youtube, "srt://x:9000").is_err());
        assert!(DestinationUrl::parse(Platform::Srt, "srt://x:9000?passphrase=abc").is_ok());
        assert!(DestinationUrl::parse(Platform::Srt, "srt://").is_err());
        let with_creds =
            DestinationUrl::parse(Platform::CustomRtmp, "rtmp://u:pw@host/app").unwrap();
        assert!(!with_creds.hint().contains("pw"));
        assert!(Platform::parse("myspace").is_err());
        assert!(StreamKey::parse("has space").is_err());
    }

    #[test]
    fn ids() {
        let id = new_id("str");
        assert!(parse_id("stream_id", "str", &id).is_ok());
        assert!(parse_id("stream_id", "snd", &id).is_err());
        assert!(parse_id("stream_id", "str", "str_../../etc").is_err());
        assert!(parse_id("stream_id", "str", "str_").is_err());
    }

    #[test]
    fn agent_keys() {
        assert!(AgentKey::parse("not base64!").is_err());
        assert!(AgentKey::parse("AAAA").is_err());
        let k = AgentKey::parse(&AgentKey([3; 32]).to_base64()).unwrap();
        assert!(!k.verifies(b"m", &[0; 64]));
    }
}
