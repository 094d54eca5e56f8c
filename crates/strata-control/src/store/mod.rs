//! The control plane's store: one schema for SQLite (the embedded default)
//! and PostgreSQL (production), reached through sqlx's `Any` driver so that
//! every query is written once. Queries use `$n` placeholders, which both
//! drivers accept, and only types both share (TEXT, BIGINT).
//!
//! The store keeps rows; it does not check passwords, seal secrets or decide
//! transitions. Secrets arrive here already sealed or hashed.

use std::path::Path;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod rows;
pub use rows::*;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Url(String),
    #[error("preparing the database file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a row with this value exists already")]
    Duplicate,
}

fn map_unique(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            return StoreError::Duplicate;
        }
    }
    StoreError::Db(e)
}

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const SQLITE_MIGRATIONS: &[db::EmbeddedMigration] = &[(
    1,
    "init",
    include_str!("../../migrations/sqlite/0001_init.sql"),
)];
const POSTGRES_MIGRATIONS: &[db::EmbeddedMigration] = &[(
    1,
    "init",
    include_str!("../../migrations/postgres/0001_init.sql"),
)];

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` and applies pending migrations. A SQLite file is
    /// created with mode 0600 first, so no other user can read it.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, max) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            prepare_sqlite_file(Path::new(path))?;
            (Backend::Sqlite, 4)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, 16)
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .connect(&url)
            .await?;
        let migrations = match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        };
        db::migrator(migrations).await?.run(&pool).await?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- users -----------------------------------------------------------

    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    pub async fn insert_user(&self, user: &UserRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(&user.role)
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    /// Inserts the first user only if there is none yet, atomically.
    pub async fn insert_first_user(&self, user: &UserRow) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (id, email, password_hash, role, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM users)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(&user.role)
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE email = $1"))
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(UserRow::from_row).transpose()
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(UserRow::from_row).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY email"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(UserRow::from_row).collect()
    }

    // ---- refresh tokens -----------------------------------------------------

    pub async fn insert_refresh(&self, t: &RefreshRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family, secret_hash, expires_at, used_at, revoked_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL, $6)",
        )
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.family)
        .bind(&t.secret_hash)
        .bind(t.expires_at)
        .bind(t.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    pub async fn refresh_by_id(&self, id: &str) -> Result<Option<RefreshRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {REFRESH_COLS} FROM refresh_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(RefreshRow::from_row).transpose()
    }

    /// Marks a refresh token used; false when it was used already (a race
    /// or a replay), so exactly one caller rotates it.
    pub async fn use_refresh(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn revoke_family(&self, family: &str, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    // ---- senders and enrolment -------------------------------------------

    pub async fn insert_sender(&self, s: &SenderRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO senders (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&s.id)
            .bind(&s.name)
            .bind(s.created_at)
            .execute(&self.pool)
            .await
            .map_err(map_unique)?;
        Ok(())
    }

    pub async fn sender(&self, id: &str) -> Result<Option<SenderRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {SENDER_COLS} FROM senders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(SenderRow::from_row).transpose()
    }

    pub async fn list_senders(&self) -> Result<Vec<SenderRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SENDER_COLS} FROM senders ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(SenderRow::from_row).collect()
    }

    pub async fn insert_enrolment(&self, e: &EnrolmentRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrolment_tokens (id, sender_id, secret_hash, expires_at, used_at, created_at) \
             VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(&e.id)
        .bind(&e.sender_id)
        .bind(&e.secret_hash)
        .bind(e.expires_at)
        .bind(e.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    pub async fn enrolment(&self, id: &str) -> Result<Option<EnrolmentRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, sender_id, secret_hash, expires_at, used_at, created_at FROM enrolment_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(EnrolmentRow::from_row).transpose()
    }

    /// Consumes an enrolment token and records the sender's key, in one
    /// transaction; false when the token was consumed by someone else first.
    pub async fn complete_enrolment(
        &self,
        token_id: &str,
        sender_id: &str,
        public_key: &str,
        hostname: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let used = sqlx::query(
            "UPDATE enrolment_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(token_id)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE senders SET public_key = $1, hostname = $2, enrolled_at = $3 WHERE id = $4",
        )
        .bind(public_key)
        .bind(hostname)
        .bind(now)
        .bind(sender_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn sender_seen(
        &self,
        id: &str,
        hostname: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE senders SET last_seen_at = $1, hostname = COALESCE($2, hostname) WHERE id = $3",
        )
        .bind(now)
        .bind(hostname)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- destinations -------------------------------------------------------

    pub async fn insert_destination(&self, d: &DestinationRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO destinations (id, name, platform, url_sealed, url_hint, key_sealed, key_hint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&d.id)
        .bind(&d.name)
        .bind(&d.platform)
        .bind(&d.url_sealed)
        .bind(&d.url_hint)
        .bind(&d.key_sealed)
        .bind(&d.key_hint)
        .bind(d.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    pub async fn destination(&self, id: &str) -> Result<Option<DestinationRow>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {DESTINATION_COLS} FROM destinations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(DestinationRow::from_row).transpose()
    }

    pub async fn list_destinations(&self) -> Result<Vec<DestinationRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DESTINATION_COLS} FROM destinations ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(DestinationRow::from_row).collect()
    }

    /// Deletes a destination no stream refers to; false when one does or it
    /// does not exist.
    pub async fn delete_destination(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM destinations WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM stream_destinations WHERE destination_id = $1)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    // ---- streams ------------------------------------------------------------

    /// Inserts a stream and its destinations in one transaction. A port
    /// already held by an active stream fails with [`StoreError::Duplicate`].
    pub async fn insert_stream(&self, s: &StreamRow) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO streams (id, sender_id, state, reason, port, created_by, created_at, live_at, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)",
        )
        .bind(&s.id)
        .bind(&s.sender_id)
        .bind(&s.state)
        .bind(&s.reason)
        .bind(s.port)
        .bind(&s.created_by)
        .bind(s.created_at)
        .execute(&mut *tx)
        .await
        .map_err(map_unique)?;
        for d in &s.destination_ids {
            sqlx::query(
                "INSERT INTO stream_destinations (stream_id, destination_id) VALUES ($1, $2)",
            )
            .bind(&s.id)
            .bind(d)
            .execute(&mut *tx)
            .await
            .map_err(map_unique)?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn destinations_of(&self, stream_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT destination_id FROM stream_destinations WHERE stream_id = $1 ORDER BY destination_id",
        )
        .bind(stream_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("destination_id").map_err(Into::into))
            .collect()
    }

    pub async fn stream(&self, id: &str) -> Result<Option<StreamRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {STREAM_COLS} FROM streams WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut s = StreamRow::from_row(&row)?;
        s.destination_ids = self.destinations_of(&s.id).await?;
        Ok(Some(s))
    }

    /// Streams, newest first; `active_only` keeps those holding a port.
    pub async fn list_streams(
        &self,
        active_only: bool,
        limit: i64,
    ) -> Result<Vec<StreamRow>, StoreError> {
        let filter = if active_only {
            "WHERE state IN ('starting', 'live', 'stopping')"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM streams {filter} ORDER BY created_at DESC, id LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = StreamRow::from_row(row)?;
            s.destination_ids = self.destinations_of(&s.id).await?;
            out.push(s);
        }
        Ok(out)
    }

    /// The streams of one sender that are not over (without destinations).
    pub async fn active_streams_of(&self, sender_id: &str) -> Result<Vec<StreamRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLS} FROM streams \
             WHERE sender_id = $1 AND state IN ('starting', 'live', 'stopping')"
        ))
        .bind(sender_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(StreamRow::from_row).collect()
    }

    /// Ports held by streams that are not over.
    pub async fn ports_in_use(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT port FROM streams WHERE state IN ('starting', 'live', 'stopping') ORDER BY port",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("port").map_err(Into::into))
            .collect()
    }

    /// Moves a stream from `from` to `to` if it is still in `from`
    /// (compare-and-set); false when another transition won.
    pub async fn transition_stream(
        &self,
        id: &str,
        from: &str,
        to: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE streams SET state = $1, reason = COALESCE($2, reason), \
             live_at = CASE WHEN $1 = 'live' THEN $3 ELSE live_at END, \
             ended_at = CASE WHEN $1 IN ('ended', 'failed') THEN $3 ELSE ended_at END \
             WHERE id = $4 AND state = $5",
        )
        .bind(to)
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn count_streams_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM streams GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    // ---- audit ----------------------------------------------------------------

    pub async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AuditRow::from_row).collect()
    }
}

fn prepare_sqlite_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(err)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    Ok(())
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(col)?)
}
