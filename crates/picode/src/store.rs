//! Sessions in SQLite: conversations, turns (with their checkpoints), tool
//! calls and usage.
//!
//! The schema lives in `migrations/` and is embedded by `sqlx::migrate!`, so
//! the binary needs nothing beside it. Queries are runtime `sqlx::query`
//! calls (the workspace builds sqlx without its macros), kept in this one
//! module so no other code holds SQL.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use picode_llm::{Message, Usage};
use picode_tools::private_fs;
use serde::Serialize;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::Row;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating the session database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("session database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("stored message is not valid: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("no session matches `{0}`")]
    NoSuchSession(String),
    #[error("`{0}` matches several sessions; give more characters")]
    AmbiguousSession(String),
}

/// The schema's migrations, embedded at build time from `migrations/`
/// (`NNNN_description.sql`); sqlx records each applied one with its checksum.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// One row of `/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub project: String,
    pub title: String,
    pub provider: String,
    pub model: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub turns: i64,
    pub cost_usd: f64,
}

/// A user turn as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    pub turn: u32,
    pub prompt: String,
    pub checkpoint: Option<String>,
}

/// A message with the user turn that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub turn: u32,
    pub message: Message,
}

/// A tool call and its result, for the audit table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub output: String,
    pub is_error: bool,
}

/// Usage of one model call.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub provider: String,
    pub model: String,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// A session that exists only in memory until its first turn is saved.
#[derive(Debug, Clone, Copy)]
pub struct NewSession<'a> {
    pub project: &'a str,
}

/// Everything one user turn leaves in the database, written in one
/// transaction: the turn is stored whole or not at all.
#[derive(Debug, Clone, Copy)]
pub struct TurnSave<'a> {
    pub session: &'a str,
    /// Set for the first turn of a new session: its row is written here.
    pub create: Option<NewSession<'a>>,
    pub turn: u32,
    pub prompt: &'a str,
    pub checkpoint: Option<&'a str>,
    /// The whole conversation; the first `keep` messages are stored already.
    pub messages: &'a [StoredMessage],
    pub keep: usize,
    pub provider: &'a str,
    pub model: &'a str,
    pub tool_calls: &'a [ToolCallRecord],
    pub usage: Option<&'a UsageRecord>,
}

/// The session database, opened on its first use.
///
/// A new headless session needs nothing from the database until its first
/// turn is over, so opening it (the file modes, the connection's pragmas,
/// the migration check) waits until then instead of delaying the request.
#[derive(Debug, Clone)]
pub struct Store {
    path: Arc<PathBuf>,
    pool: Arc<tokio::sync::OnceCell<SqlitePool>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new session id: 12 random hex digits, short enough to type in `--resume`.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 6];
    // An id clash is caught by the primary key; a failing RNG falls back to the clock.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    hex::encode(bytes)
}

/// Opens (creating if needed) the database file and applies migrations.
async fn open_pool(path: &Path) -> Result<SqlitePool, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.display().to_string(),
        source,
    };
    // Transcripts hold whatever the model read: the directory is 0700
    // and the database files 0600, tightened when they already exist.
    // An empty file made here with 0600 is a valid new database, and
    // SQLite gives its -wal and -shm files the database file's mode.
    let io_err = |e| open_err(sqlx::Error::Io(e));
    if let Some(dir) = path.parent() {
        private_fs::create_private_dir(dir).map_err(io_err)?;
    }
    if !path.exists() {
        private_fs::write_private(path, b"").map_err(io_err)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        private_fs::tighten(Path::new(&file), 0o600).map_err(io_err)?;
    }
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(open_err)?
        .filename(path)
        .create_if_missing(true)
        // WAL lets `picode serve` read sessions while a terminal session writes.
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL loses at most the last turns on power loss,
        // never the database, and saves an fsync per write.
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(open_err)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

impl Store {
    /// Opens (creating if needed) the database file and applies migrations
    /// now, so that a broken database is reported at once.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let store = Store::deferred(path);
        store.pool().await?;
        Ok(store)
    }

    /// A store whose file is opened (created, migrated) on first use; an
    /// error opening it is returned by that first use.
    pub fn deferred(path: &Path) -> Store {
        Store {
            path: Arc::new(path.to_owned()),
            pool: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Opens the database now if it is not open yet.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.pool().await.map(|_| ())
    }

    async fn pool(&self) -> Result<&SqlitePool, StoreError> {
        self.pool.get_or_try_init(|| open_pool(&self.path)).await
    }

    /// Starts a new, empty session.
    pub async fn create_session(
        &self,
        project: &str,
        provider: &str,
        model: &str,
    ) -> Result<String, StoreError> {
        let id = new_session_id();
        let mut conn = self.pool().await?.acquire().await?;
        insert_session(&mut conn, &id, project, provider, model).await?;
        Ok(id)
    }

    /// Stores a finished user turn (and, for a new session, the session
    /// itself) in one transaction.
    ///
    /// A new session's row is written here rather than when the session is
    /// opened: the first write to the database can mean restarting the WAL
    /// and syncing it, which would otherwise come before the first request.
    pub async fn save_turn(&self, save: &TurnSave<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool().await?.begin().await?;
        if let Some(new) = save.create {
            insert_session(
                &mut tx,
                save.session,
                new.project,
                save.provider,
                save.model,
            )
            .await?;
        }
        insert_turn(
            &mut tx,
            save.session,
            save.turn,
            save.prompt,
            save.checkpoint,
        )
        .await?;
        write_messages(
            &mut tx,
            save.session,
            save.messages,
            save.keep,
            save.provider,
            save.model,
        )
        .await?;
        for call in save.tool_calls {
            insert_tool_call(&mut tx, save.session, save.turn, call).await?;
        }
        if let Some(usage) = save.usage {
            insert_usage(&mut tx, save.session, save.turn, usage).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Resolves a full id or a unique prefix of one.
    pub async fn resolve_session(&self, id_or_prefix: &str) -> Result<String, StoreError> {
        let pattern = format!("{}%", id_or_prefix.replace(['%', '_'], ""));
        let rows = sqlx::query("SELECT id FROM sessions WHERE id LIKE ? LIMIT 2")
            .bind(&pattern)
            .fetch_all(self.pool().await?)
            .await?;
        match rows.as_slice() {
            [] => Err(StoreError::NoSuchSession(id_or_prefix.to_owned())),
            [one] => Ok(one.get("id")),
            _ => Err(StoreError::AmbiguousSession(id_or_prefix.to_owned())),
        }
    }

    /// The most recently used session of a project.
    pub async fn latest_session(&self, project: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM sessions WHERE project = ? ORDER BY updated_at DESC, rowid DESC LIMIT 1",
        )
        .bind(project)
        .fetch_optional(self.pool().await?)
        .await?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Sessions, most recent first; all projects when `project` is `None`.
    pub async fn list_sessions(
        &self,
        project: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.id, s.project, s.title, s.provider, s.model, s.created_at, s.updated_at,
                    (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS turns,
                    (SELECT COALESCE(SUM(cost_usd), 0.0) FROM usage u WHERE u.session_id = s.id) AS cost
             FROM sessions s
             WHERE (?1 IS NULL OR s.project = ?1)
             ORDER BY s.updated_at DESC, s.rowid DESC
             LIMIT ?2",
        )
        .bind(project)
        .bind(limit)
        .fetch_all(self.pool().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SessionInfo {
                id: r.get("id"),
                project: r.get("project"),
                title: r.get("title"),
                provider: r.get("provider"),
                model: r.get("model"),
                created_at: r.get("created_at"),
                updated_at: r.get("updated_at"),
                turns: r.get("turns"),
                cost_usd: r.get("cost"),
            })
            .collect())
    }

    /// The session's conversation, in order.
    pub async fn load_messages(&self, session: &str) -> Result<Vec<StoredMessage>, StoreError> {
        let rows =
            sqlx::query("SELECT turn, content FROM messages WHERE session_id = ? ORDER BY seq")
                .bind(session)
                .fetch_all(self.pool().await?)
                .await?;
        rows.into_iter()
            .map(|r| {
                let turn: i64 = r.get("turn");
                let content: String = r.get("content");
                Ok(StoredMessage {
                    turn: turn as u32,
                    message: serde_json::from_str(&content)?,
                })
            })
            .collect()
    }

    /// Makes the stored conversation equal `messages`, whose first `keep`
    /// are stored already (after compaction, `/undo` or `/clear`).
    pub async fn save_messages(
        &self,
        session: &str,
        messages: &[StoredMessage],
        keep: usize,
        provider: &str,
        model: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().await?.begin().await?;
        write_messages(&mut tx, session, messages, keep, provider, model).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the start of a user turn; the first one also titles the session.
    pub async fn record_turn(
        &self,
        session: &str,
        turn: u32,
        prompt: &str,
        checkpoint: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().await?.begin().await?;
        insert_turn(&mut tx, session, turn, prompt, checkpoint).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session's turns, oldest first.
    pub async fn turns(&self, session: &str) -> Result<Vec<TurnRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT turn, prompt, checkpoint FROM turns WHERE session_id = ? ORDER BY turn",
        )
        .bind(session)
        .fetch_all(self.pool().await?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TurnRecord {
                turn: r.get::<i64, _>("turn") as u32,
                prompt: r.get("prompt"),
                checkpoint: r.get("checkpoint"),
            })
            .collect())
    }

    /// Forgets a turn (after `/undo`); its tool calls and usage stay as history.
    pub async fn delete_turn(&self, session: &str, turn: u32) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM turns WHERE session_id = ? AND turn = ?")
            .bind(session)
            .bind(turn as i64)
            .execute(self.pool().await?)
            .await?;
        Ok(())
    }

    pub async fn record_tool_call(
        &self,
        session: &str,
        turn: u32,
        call: &ToolCallRecord,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().await?.acquire().await?;
        insert_tool_call(&mut conn, session, turn, call).await
    }

    /// Every tool call of a session, oldest first.
    pub async fn tool_calls(&self, session: &str) -> Result<Vec<ToolCallRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT call_id, name, arguments, output, is_error FROM tool_calls
             WHERE session_id = ? ORDER BY id",
        )
        .bind(session)
        .fetch_all(self.pool().await?)
        .await?;
        rows.into_iter()
            .map(|r| {
                let arguments: String = r.get("arguments");
                Ok(ToolCallRecord {
                    call_id: r.get("call_id"),
                    name: r.get("name"),
                    arguments: serde_json::from_str(&arguments)?,
                    output: r.get("output"),
                    is_error: r.get("is_error"),
                })
            })
            .collect()
    }

    pub async fn record_usage(
        &self,
        session: &str,
        turn: u32,
        record: &UsageRecord,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool().await?.acquire().await?;
        insert_usage(&mut conn, session, turn, record).await
    }

    /// Total usage and cost of a session.
    pub async fn usage_totals(&self, session: &str) -> Result<(Usage, f64), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(input_tokens), 0) AS i, COALESCE(SUM(output_tokens), 0) AS o,
                    COALESCE(SUM(cost_usd), 0.0) AS c
             FROM usage WHERE session_id = ?",
        )
        .bind(session)
        .fetch_one(self.pool().await?)
        .await?;
        let usage = Usage {
            input_tokens: row.get::<i64, _>("i") as u64,
            output_tokens: row.get::<i64, _>("o") as u64,
            ..Default::default()
        };
        Ok((usage, row.get("c")))
    }
}

async fn insert_session(
    conn: &mut SqliteConnection,
    id: &str,
    project: &str,
    provider: &str,
    model: &str,
) -> Result<(), StoreError> {
    let t = now();
    sqlx::query(
        "INSERT INTO sessions (id, project, provider, model, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(project)
    .bind(provider)
    .bind(model)
    .bind(t)
    .bind(t)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Makes the stored conversation equal `messages`.
///
/// The first `keep` messages are known to be stored already and are left
/// alone, so saving after a turn writes only that turn's messages instead of
/// the whole (ever longer) history.
async fn write_messages(
    conn: &mut SqliteConnection,
    session: &str,
    messages: &[StoredMessage],
    keep: usize,
    provider: &str,
    model: &str,
) -> Result<(), StoreError> {
    let keep = keep.min(messages.len());
    sqlx::query("DELETE FROM messages WHERE session_id = ? AND seq >= ?")
        .bind(session)
        .bind(keep as i64)
        .execute(&mut *conn)
        .await?;
    for (seq, m) in messages.iter().enumerate().skip(keep) {
        let role = serde_json::to_value(m.message.role)?;
        sqlx::query(
            "INSERT INTO messages (session_id, seq, turn, role, content) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(session)
        .bind(seq as i64)
        .bind(m.turn as i64)
        .bind(role.as_str().unwrap_or_default())
        .bind(serde_json::to_string(&m.message)?)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE sessions SET updated_at = ?, provider = ?, model = ? WHERE id = ?")
        .bind(now())
        .bind(provider)
        .bind(model)
        .bind(session)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records a user turn; the first one also titles the session.
async fn insert_turn(
    conn: &mut SqliteConnection,
    session: &str,
    turn: u32,
    prompt: &str,
    checkpoint: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR REPLACE INTO turns (session_id, turn, prompt, checkpoint, created_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(session)
    .bind(turn as i64)
    .bind(prompt)
    .bind(checkpoint)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    let title: String = prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(80)
        .collect();
    sqlx::query("UPDATE sessions SET title = ? WHERE id = ? AND title = ''")
        .bind(title)
        .bind(session)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_tool_call(
    conn: &mut SqliteConnection,
    session: &str,
    turn: u32,
    call: &ToolCallRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tool_calls (session_id, turn, call_id, name, arguments, output, is_error, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(session)
    .bind(turn as i64)
    .bind(&call.call_id)
    .bind(&call.name)
    .bind(call.arguments.to_string())
    .bind(&call.output)
    .bind(call.is_error)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_usage(
    conn: &mut SqliteConnection,
    session: &str,
    turn: u32,
    record: &UsageRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO usage (session_id, turn, provider, model, input_tokens, output_tokens, cost_usd, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(session)
    .bind(turn as i64)
    .bind(&record.provider)
    .bind(&record.model)
    .bind(record.usage.input_tokens as i64)
    .bind(record.usage.output_tokens as i64)
    .bind(record.cost_usd)
    .bind(now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use picode_llm::Role;

    #[tokio::test]
    async fn saving_appends_after_the_kept_prefix_and_rewrites_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let id = store.create_session("/p", "prov", "m").await.unwrap();
        let msg = |turn: u32, text: &str| StoredMessage {
            turn,
            message: Message::user(text),
        };
        let mut history = vec![msg(1, "a"), msg(1, "b")];
        store
            .save_messages(&id, &history, 0, "prov", "m")
            .await
            .unwrap();
        history.extend([msg(2, "c"), msg(2, "d")]);
        store
            .save_messages(&id, &history, 2, "prov", "m")
            .await
            .unwrap();
        assert_eq!(store.load_messages(&id).await.unwrap(), history);
        // A rewrite (compaction, /undo) saves from zero and drops the rest.
        let rewritten = vec![msg(1, "summary"), msg(2, "d")];
        store
            .save_messages(&id, &rewritten, 0, "prov", "m")
            .await
            .unwrap();
        assert_eq!(store.load_messages(&id).await.unwrap(), rewritten);
    }

    #[tokio::test]
    async fn a_turn_is_saved_whole_with_its_new_session() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("s.db");
        let store = Store::deferred(&path);
        // Nothing is touched until the first use.
        assert!(!path.exists());
        let id = new_session_id();
        let messages = vec![
            StoredMessage {
                turn: 1,
                message: Message::user("list the files"),
            },
            StoredMessage {
                turn: 1,
                message: Message::assistant_text("two files"),
            },
        ];
        let call = ToolCallRecord {
            call_id: "c1".into(),
            name: "list_files".into(),
            arguments: serde_json::json!({"path": "."}),
            output: "a\nb".into(),
            is_error: false,
        };
        let usage = UsageRecord {
            provider: "prov".into(),
            model: "m".into(),
            usage: Usage {
                input_tokens: 7,
                output_tokens: 3,
                ..Default::default()
            },
            cost_usd: 0.25,
        };
        let save = TurnSave {
            session: &id,
            create: Some(NewSession { project: "/p" }),
            turn: 1,
            prompt: "list the files",
            checkpoint: Some("abc"),
            messages: &messages,
            keep: 0,
            provider: "prov",
            model: "m",
            tool_calls: std::slice::from_ref(&call),
            usage: Some(&usage),
        };
        store.save_turn(&save).await.unwrap();
        let list = store.list_sessions(Some("/p"), 10).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id.as_str(), list[0].turns), (id.as_str(), 1));
        assert_eq!(list[0].title, "list the files");
        assert_eq!(store.load_messages(&id).await.unwrap(), messages);
        assert_eq!(store.tool_calls(&id).await.unwrap(), vec![call.clone()]);
        let (totals, cost) = store.usage_totals(&id).await.unwrap();
        assert_eq!((totals.input_tokens, totals.output_tokens), (7, 3));
        assert!((cost - 0.25).abs() < 1e-9);

        // A save that fails (here: its session is created a second time)
        // leaves nothing of its turn behind.
        let second = TurnSave {
            turn: 2,
            prompt: "again",
            keep: 2,
            ..save
        };
        assert!(store.save_turn(&second).await.is_err());
        assert_eq!(store.turns(&id).await.unwrap().len(), 1);
        assert_eq!(store.tool_calls(&id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn sessions_round_trip_messages_turns_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let id = store.create_session("/p", "prov", "m").await.unwrap();
        store
            .record_turn(&id, 1, "fix the bug\nplease", None)
            .await
            .unwrap();
        let messages = vec![
            StoredMessage {
                turn: 1,
                message: Message::user("fix the bug"),
            },
            StoredMessage {
                turn: 1,
                message: Message::assistant_text("done"),
            },
        ];
        store
            .save_messages(&id, &messages, 0, "prov", "m")
            .await
            .unwrap();
        assert_eq!(store.load_messages(&id).await.unwrap(), messages);
        store
            .record_usage(
                &id,
                1,
                &UsageRecord {
                    provider: "prov".into(),
                    model: "m".into(),
                    usage: Usage {
                        input_tokens: 10,
                        output_tokens: 5,
                        ..Default::default()
                    },
                    cost_usd: 0.5,
                },
            )
            .await
            .unwrap();
        let (usage, cost) = store.usage_totals(&id).await.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (10, 5));
        assert!((cost - 0.5).abs() < 1e-9);

        let list = store.list_sessions(Some("/p"), 10).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].title, "fix the bug");
        assert_eq!(list[0].turns, 1);
        assert_eq!(store.latest_session("/p").await.unwrap(), Some(id.clone()));
        assert_eq!(store.resolve_session(&id[..4]).await.unwrap(), id);
        assert_eq!(messages[1].message.role, Role::Assistant);

        // Reopening applies no migration twice.
        drop(store);
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        assert_eq!(store.turns(&id).await.unwrap().len(), 1);
    }
}
