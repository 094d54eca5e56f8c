//! The recording store: every exchange the proxy handles, and every TLS
//! handshake it rejects, becomes one row in a local SQLite database that
//! operators can search with `mtls-proxy logs` or the admin API.
//!
//! The pieces:
//!
//! - [`Store`] owns the database: it opens it (running the migrations in
//!   `migrations/`), answers [`Filter`] queries and runs retention.
//! - [`Recorder`] is the handle the proxy holds. [`Recorder::record`] never
//!   waits: records go through a bounded queue to a writer thread that inserts
//!   them in batches, one transaction per batch.
//! - A maintenance task deletes rows by age and by size and compresses old
//!   bodies in place.
//! - [`format`](mod@format) renders rows as an aligned table or as JSON lines.
//!
//! What this module must not do:
//!
//! - It never blocks or slows the proxy. When the queue is full or the
//!   database is failing, records are dropped and counted instead.
//! - It never stores a secret header: `authorization`, `proxy-authorization`,
//!   `cookie`, `set-cookie` and any configured names are replaced by
//!   `[redacted]` before a row is written. Query parameters that carry
//!   credentials (`access_token`, `api_key`, signatures and configured names)
//!   are redacted the same way.
//! - It never stores more of a body than the proxy handed it; truncation
//!   happens in the proxy, and the row only remembers that it happened.
//! - It never panics or stops on a database error: a failing database makes
//!   the store unhealthy (see [`StoreHealth`]) until a write succeeds again.
//! - It knows nothing about HTTP servers or CLIs; callers adapt it.

mod checkpoint;
pub(crate) mod config;
pub mod format;
mod plan;
mod query;
mod record;
mod redact;
mod retention;
mod schema;
mod tx;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::SqlitePool;

pub use config::StoreConfig;
pub use format::OutputFormat;
pub use query::{Filter, FilterError, FilterParams, StatusFilter, DEFAULT_LIMIT, MAX_LIMIT};
pub use record::{Kind, Record, RecordRow, StoredHeaders};
pub use redact::{Redactor, REDACTED};
pub use retention::MaintenanceReport;
pub use writer::{Recorder, StoreTasks};

/// Metric: records dropped because the queue was full, the store was
/// disabled, or the writer had stopped.
pub const METRIC_RECORDS_DROPPED: &str = "mtls_proxy_records_dropped_total";
/// Metric: records that reached the writer but could not be written.
pub const METRIC_RECORDS_FAILED: &str = "mtls_proxy_records_failed_total";
/// Metric: records written to the database.
pub const METRIC_RECORDS_WRITTEN: &str = "mtls_proxy_records_written_total";
/// Metric: size of the database file plus its write-ahead log, in bytes.
pub const METRIC_STORE_SIZE: &str = "mtls_proxy_store_size_bytes";

/// Registers descriptions for the store's metrics with the installed
/// recorder, so that exporters can show help text.
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_RECORDS_DROPPED,
        "Records dropped before reaching the database (queue full, store disabled or stopped)."
    );
    metrics::describe_counter!(
        METRIC_RECORDS_FAILED,
        "Records the writer could not insert because the database write failed."
    );
    metrics::describe_counter!(METRIC_RECORDS_WRITTEN, "Records written to the database.");
    metrics::describe_gauge!(
        METRIC_STORE_SIZE,
        metrics::Unit::Bytes,
        "Size of the recording database file plus its write-ahead log."
    );
}

/// Everything that can go wrong while opening, querying or maintaining the
/// store. Failures of the background writer are not errors here: they are
/// reported through [`StoreHealth`] and metrics instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configuration cannot work; `key` names the offending setting.
    #[error("invalid store setting `{key}`: {reason}")]
    InvalidConfig {
        /// The configuration key, as written in the config file.
        key: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// SQLite could not open (or create) the database file.
    #[error("cannot open recording database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },
    /// The record writer could not open its own connection to the database.
    #[error("cannot open recording database {} for writing records", path.display())]
    OpenWriter {
        /// The database file.
        path: PathBuf,
        /// The underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The schema migrations failed to apply.
    #[error("cannot migrate recording database {}", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The underlying migration error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// The file is a SQLite database but holds no recording schema.
    #[error("{} is not an mtls-proxy recording database", path.display())]
    NotAStore {
        /// The database file.
        path: PathBuf,
    },
    /// The database was migrated by a newer mtls-proxy than this one.
    #[error(
        "recording database {} has schema version {found}, newer than the supported {supported}",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The newest migration applied to the file.
        found: i64,
        /// The newest migration this build knows.
        supported: i64,
    },
    /// The operation writes, but the store was opened read-only.
    #[error("the recording database was opened read-only")]
    ReadOnly,
    /// Recording is disabled, so there is no database to ask.
    #[error("recording is disabled")]
    Disabled,
    /// A query against the database failed.
    #[error("querying the recording database failed")]
    Query(#[source] sqlx::Error),
    /// A maintenance step (retention or compression) failed.
    #[error("maintenance of the recording database failed while {step}")]
    Maintenance {
        /// What maintenance was doing, e.g. "deleting rows older than max_age".
        step: &'static str,
        /// The underlying SQLite error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row could not be decoded (bad header JSON, unknown kind, or a
    /// body that does not decompress).
    #[error("record {id} in the recording database is corrupt: {reason}")]
    CorruptRow {
        /// The row id.
        id: i64,
        /// What could not be decoded.
        reason: String,
    },
    /// A blocking helper task died; this is a bug, not a database problem.
    #[error("a background task of the store failed: {0}")]
    Task(String),
}

/// A snapshot of the store's health, for readiness probes and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// False when recording was disabled at startup ([`Recorder::disabled`]).
    pub enabled: bool,
    /// Whether the last write (a batch, a probe or maintenance) succeeded.
    pub writable: bool,
    /// Why the store is not writable; `None` while it is.
    pub last_error: Option<String>,
    /// Size of the database file plus its write-ahead log, in bytes.
    pub size_bytes: u64,
}

/// A handle to the recording database. Cloning is cheap and shares the pools.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Queries go through their own read-only pool, so a long `logs` query
    /// never holds the single write connection.
    reader: SqlitePool,
    /// `None` for stores opened with [`Store::open_read_only`].
    writer: Option<WriteSide>,
    health: HealthState,
}

/// What only a writable store has.
struct WriteSide {
    /// Exactly one connection, for migrations and maintenance; records go
    /// through the writer thread's own connection (see [`Recorder`]). The two
    /// take turns on SQLite's write lock through the busy timeout.
    pool: SqlitePool,
    config: StoreConfig,
    redactor: Redactor,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("read_only", &self.inner.writer.is_none())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `config.path` for recording,
    /// in WAL mode with `synchronous=NORMAL`, and applies pending migrations.
    ///
    /// This does not start the writer; pass the store to [`Recorder::start`].
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let path = config.path.clone();
        let writer = schema::open_writer(&path, config).await?;
        schema::migrate(&writer)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        let reader = schema::open_reader(&path).await?;
        let store = Store {
            inner: Arc::new(Inner {
                path,
                reader,
                writer: Some(WriteSide {
                    pool: writer,
                    redactor: Redactor::new(&config.redact_headers)
                        .with_query_params(&config.redact_query_params),
                    config: config.clone(),
                }),
                health: HealthState::new(),
            }),
        };
        store.refresh_size();
        Ok(store)
    }

    /// Opens an existing recording database for queries only, e.g. from the
    /// `logs` command while the proxy keeps writing to it.
    pub async fn open_read_only(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let reader = schema::open_reader(&path).await?;
        schema::check_schema(&reader, &path).await?;
        let store = Store {
            inner: Arc::new(Inner {
                path,
                reader,
                writer: None,
                health: HealthState::new(),
            }),
        };
        store
            .inner
            .health
            .mark_failed("opened read-only".to_owned());
        store.refresh_size();
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether this store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.writer.is_none()
    }

    /// The current health; `size_bytes` is measured now.
    pub fn health(&self) -> StoreHealth {
        self.refresh_size();
        self.inner.health.snapshot(true)
    }

    /// Size of the database file plus its write-ahead log, in bytes.
    pub fn size_bytes(&self) -> u64 {
        schema::file_size(&self.inner.path)
    }

    /// Records that reached the writer but could not be written.
    pub fn failed_count(&self) -> u64 {
        self.inner.health.failed.load(Ordering::Relaxed)
    }

    /// Closes both pools, letting SQLite checkpoint and remove the
    /// write-ahead log. Later queries on any clone fail.
    pub async fn close(&self) {
        if let Some(w) = &self.inner.writer {
            w.pool.close().await;
        }
        self.inner.reader.close().await;
    }

    fn write_side(&self) -> Result<&WriteSide, StoreError> {
        self.inner.writer.as_ref().ok_or(StoreError::ReadOnly)
    }

    fn health_state(&self) -> &HealthState {
        &self.inner.health
    }

    /// Measures the files and publishes the size gauge. A few `stat` calls;
    /// cheap enough to run after every batch.
    fn refresh_size(&self) -> u64 {
        let size = schema::file_size(&self.inner.path);
        self.inner.health.size_bytes.store(size, Ordering::Relaxed);
        metrics::gauge!(METRIC_STORE_SIZE).set(size as f64);
        size
    }

    /// Runs one statement on the writer's only connection, so tests can flip
    /// per-connection pragmas such as `query_only` or `max_page_count`.
    #[cfg(test)]
    async fn exec_on_writer(&self, sql: &str) {
        let pool = &self.write_side().expect("writable store").pool;
        sqlx::query(sql).execute(pool).await.expect(sql);
    }
}

/// Shared, lock-light health state updated by the writer and maintenance.
struct HealthState {
    writable: AtomicBool,
    last_error: Mutex<Option<String>>,
    size_bytes: AtomicU64,
    failed: AtomicU64,
}

impl HealthState {
    fn new() -> Self {
        HealthState {
            writable: AtomicBool::new(true),
            last_error: Mutex::new(None),
            size_bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    fn mark_ok(&self) {
        // Take the lock first so a reader never sees writable=true together
        // with a stale error message.
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = None;
        self.writable.store(true, Ordering::Release);
    }

    fn mark_failed(&self, error: String) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *last = Some(error);
        self.writable.store(false, Ordering::Release);
    }

    fn snapshot(&self, enabled: bool) -> StoreHealth {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        StoreHealth {
            enabled,
            writable: self.writable.load(Ordering::Acquire),
            last_error: last.clone(),
            size_bytes: self.size_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Logs a repeated warning at most once per period, saying how many were
/// suppressed in between, so a dead disk does not flood the logs.
struct WarnLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn new(every: Duration) -> Self {
        WarnLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed)` when a warning should be logged now.
    fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Unix microseconds for a time; times before 1970 become negative.
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(us: i64) -> SystemTime {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

#[cfg(test)]
mod testing;
