//! Rows as stored, decoded by column name.

use sqlx::any::AnyRow;

use super::{get, StoreError};

pub(crate) const USER_COLS: &str = "id, email, password_hash, role, created_at";
pub(crate) const REFRESH_COLS: &str =
    "id, user_id, family, secret_hash, expires_at, used_at, revoked_at, created_at";
pub(crate) const SENDER_COLS: &str =
    "id, name, public_key, hostname, enrolled_at, last_seen_at, created_at";
pub(crate) const DESTINATION_COLS: &str =
    "id, name, platform, url_sealed, url_hint, key_sealed, key_hint, created_at";
pub(crate) const STREAM_COLS: &str =
    "id, sender_id, state, reason, port, created_by, created_at, live_at, ended_at";

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
}

impl UserRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(UserRow {
            id: get(r, "id")?,
            email: get(r, "email")?,
            password_hash: get(r, "password_hash")?,
            role: get(r, "role")?,
            created_at: get(r, "created_at")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshRow {
    pub id: String,
    pub user_id: String,
    pub family: String,
    pub secret_hash: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

impl RefreshRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(RefreshRow {
            id: get(r, "id")?,
            user_id: get(r, "user_id")?,
            family: get(r, "family")?,
            secret_hash: get(r, "secret_hash")?,
            expires_at: get(r, "expires_at")?,
            used_at: get(r, "used_at")?,
            revoked_at: get(r, "revoked_at")?,
            created_at: get(r, "created_at")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SenderRow {
    pub id: String,
    pub name: String,
    pub public_key: Option<String>,
    pub hostname: Option<String>,
    pub enrolled_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub created_at: i64,
}

impl SenderRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(SenderRow {
            id: get(r, "id")?,
            name: get(r, "name")?,
            public_key: get(r, "public_key")?,
            hostname: get(r, "hostname")?,
            enrolled_at: get(r, "enrolled_at")?,
            last_seen_at: get(r, "last_seen_at")?,
            created_at: get(r, "created_at")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnrolmentRow {
    pub id: String,
    pub sender_id: String,
    pub secret_hash: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub created_at: i64,
}

impl EnrolmentRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(EnrolmentRow {
            id: get(r, "id")?,
            sender_id: get(r, "sender_id")?,
            secret_hash: get(r, "secret_hash")?,
            expires_at: get(r, "expires_at")?,
            used_at: get(r, "used_at")?,
            created_at: get(r, "created_at")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRow {
    pub id: String,
    pub name: String,
    pub platform: String,
    pub url_sealed: String,
    pub url_hint: String,
    pub key_sealed: String,
    pub key_hint: String,
    pub created_at: i64,
}

impl DestinationRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(DestinationRow {
            id: get(r, "id")?,
            name: get(r, "name")?,
            platform: get(r, "platform")?,
            url_sealed: get(r, "url_sealed")?,
            url_hint: get(r, "url_hint")?,
            key_sealed: get(r, "key_sealed")?,
            key_hint: get(r, "key_hint")?,
            created_at: get(r, "created_at")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamRow {
    pub id: String,
    pub sender_id: String,
    pub state: String,
    pub reason: Option<String>,
    pub port: i64,
    pub created_by: String,
    pub created_at: i64,
    pub live_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub destination_ids: Vec<String>,
}

impl StreamRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(StreamRow {
            id: get(r, "id")?,
            sender_id: get(r, "sender_id")?,
            state: get(r, "state")?,
            reason: get(r, "reason")?,
            port: get(r, "port")?,
            created_by: get(r, "created_by")?,
            created_at: get(r, "created_at")?,
            live_at: get(r, "live_at")?,
            ended_at: get(r, "ended_at")?,
            destination_ids: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl AuditRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(AuditRow {
            id: get(r, "id")?,
            at: get(r, "at")?,
            actor: get(r, "actor")?,
            action: get(r, "action")?,
            target: get(r, "target")?,
            detail: get(r, "detail")?,
        })
    }
}
