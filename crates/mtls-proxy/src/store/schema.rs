//! Opening the database and keeping its schema current.
//!
//! The schema lives in `.sql` files under `migrations/`, embedded at compile
//! time by `sqlx::migrate!` and applied by its [`Migrator`], which records
//! what it applied (with each file's checksum) in `_sqlx_migrations`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::{StoreConfig, StoreError};

/// Every migration, oldest first, named `NNNN_description.sql`. Never edit
/// a released file: sqlx refuses to start when a checksum changes.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations");

/// Page size of new databases, in bytes.
pub(crate) const PAGE_SIZE: u32 = 16 * 1024;

/// How long a statement waits for another connection's lock before failing
/// with `SQLITE_BUSY`. Long enough to ride out a checkpoint or a `logs`
/// query from another process, short enough that a stuck lock shows up in
/// the health status.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The newest schema version this build understands.
pub(crate) fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies every pending migration.
pub(crate) async fn migrate(pool: &SqlitePool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// The size, in bytes, the write-ahead log is cut back to when it starts
/// over. Without a limit the log keeps the size of its largest burst
/// forever; it counts against `max_bytes`, so it is a small share of it.
pub(crate) fn wal_limit(config: &StoreConfig) -> u64 {
    (config.max_bytes / 16).clamp(64 << 10, 64 << 20)
}

/// Opens the single write connection, creating the file if needed.
pub(crate) async fn open_writer(
    path: &Path,
    config: &StoreConfig,
) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // Rows are appended in batches; larger pages mean fewer page splits
        // and fewer log frames per batch (about a fifth less CPU per row
        // than the default 4 KiB). Takes effect only on a new file.
        .page_size(PAGE_SIZE)
        // Must be set before the first table exists; sqlx issues it before
        // `journal_mode`, which is what SQLite needs on a fresh file. On an
        // existing file it is a no-op.
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode can lose the last transactions on power loss but
        // never corrupts the file; for an audit log of a proxy that is the
        // right trade for not syncing on every batch.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .pragma("journal_size_limit", wal_limit(config).to_string());
    SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        // Keep the one connection for the life of the store: reopening it
        // would lose per-connection state for no benefit.
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens a small pool of read-only connections for queries.
pub(crate) async fn open_reader(path: &Path) -> Result<SqlitePool, StoreError> {
    // Read-only connections must not set `journal_mode` or `auto_vacuum`:
    // both are writes. The file's WAL mode is persistent anyway.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes sure a file opened read-only really is a recording database this
/// build can read, so the CLI fails with a clear message instead of a
/// "no such table" error later.
pub(crate) async fn check_schema(pool: &SqlitePool, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let has_table: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' \
         AND name IN ('exchanges', '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await
    .map_err(open_err)?;
    if has_table < 2 {
        return Err(StoreError::NotAStore {
            path: path.to_path_buf(),
        });
    }
    let found: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .map_err(open_err)?;
    let supported = schema_version();
    match found {
        Some(found) if found > supported => Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported,
        }),
        _ => Ok(()),
    }
}

/// The write-ahead log that sits next to the database in WAL mode.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Size of the database file plus its write-ahead log; missing files count
/// as empty, since a size probe must never fail.
pub(crate) fn file_size(path: &Path) -> u64 {
    len(path) + len(&wal_path(path))
}

/// Size of one file, 0 when missing.
pub(crate) fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_config;
    use crate::store::Store;

    #[tokio::test]
    async fn open_creates_wal_database_with_incremental_vacuum() {
        let (_dir, cfg) = temp_config();
        let store = Store::open(&cfg).await.unwrap();
        let pool = &store.write_side().unwrap().pool;

        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        // 1 = NORMAL.
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(sync, 1);
        // 2 = INCREMENTAL.
        let vacuum: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(vacuum, 2);
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(page_size, i64::from(PAGE_SIZE));
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(busy, 5000);

        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'exchanges' \
             ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            indexes,
            [
                "exchanges_handshake_ts",
                "exchanges_identity_ts",
                "exchanges_path_ts",
                "exchanges_route_ts",
                "exchanges_status_ts",
                "exchanges_ts",
                "exchanges_uncompressed_ts"
            ]
        );
        store.close().await;

        // Opening again finds the migrations applied and changes nothing.
        let store = Store::open(&cfg).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&store.inner.reader)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2, 3, 4]);
        assert_eq!(versions.last(), Some(&schema_version()));
    }

    /// Leaves at `cfg.path` a database as schema version `version` left it,
    /// holding the rows `insert` adds: the first `version` files of
    /// `migrations/`, applied by a migrator that reads them from a folder.
    async fn file_at_version(cfg: &StoreConfig, version: usize, insert: &str) {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&source)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let older = tempfile::tempdir().unwrap();
        for file in &files[..version] {
            std::fs::copy(file, older.path().join(file.file_name().unwrap())).unwrap();
        }
        let pool = open_writer(&cfg.path, cfg).await.unwrap();
        Migrator::new(older.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(insert).execute(&pool).await.unwrap();
        pool.close().await;
    }

    #[tokio::test]
    async fn version_two_moves_the_server_name_of_old_handshake_rows() {
        let (_dir, cfg) = temp_config();
        // A file as the first schema version left it: handshakes kept the
        // server name in `path`.
        file_at_version(
            &cfg,
            1,
            "INSERT INTO exchanges (ts, duration_us, kind, path, error) VALUES \
             (1, 0, 'handshake', 'api.test', 'tls:unknown_issuer'), \
             (2, 0, 'request', '/v1', NULL)",
        )
        .await;

        let store = Store::open(&cfg).await.unwrap();
        let rows = store.query(&crate::store::Filter::default()).await.unwrap();
        assert_eq!(rows.len(), 2);
        let (request, handshake) = (&rows[0], &rows[1]);
        assert_eq!(handshake.sni.as_deref(), Some("api.test"));
        assert_eq!(handshake.path, None);
        assert_eq!(request.path.as_deref(), Some("/v1"));
        assert_eq!(request.sni, None);
        store.close().await;
    }

    /// A database that mtls-proxy wrote with schema version 3, before its
    /// migrations were embedded by `sqlx::migrate!` (the file was made by
    /// the release of that version: six requests, one with a query string
    /// and a body, and a failed handshake). It must open, take migration 4,
    /// and give back every row through the new indexes.
    #[tokio::test]
    async fn a_database_of_schema_version_three_upgrades_and_keeps_its_rows() {
        let (_dir, cfg) = temp_config();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/records-schema-v3.sqlite");
        std::fs::copy(&fixture, &cfg.path).unwrap();

        let store = Store::open(&cfg).await.unwrap();
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&store.inner.reader)
                .await
                .unwrap();
        assert_eq!(versions, [1, 2, 3, 4]);

        let paths = |rows: Vec<crate::store::RecordRow>| -> Vec<String> {
            rows.into_iter()
                .map(|r| r.path.unwrap_or_else(|| "-".to_owned()))
                .collect()
        };
        let all = store.query(&crate::store::Filter::default()).await.unwrap();
        assert_eq!(all.len(), 7);
        let items = &all[1];
        assert_eq!(items.path.as_deref(), Some("/v1/items"));
        assert_eq!(items.query.as_deref(), Some("page=2"));
        assert_eq!(items.response_body.as_deref(), Some(&b"{\"items\":[]}"[..]));
        assert_eq!(items.client_identity.as_deref(), Some("spiffe://corp/web"));
        assert_eq!(items.ts_us, 1_764_547_500_000_000);
        assert_eq!(all[0].kind, crate::store::Kind::Handshake);
        assert_eq!(all[0].error.as_deref(), Some("tls:unknown_issuer"));

        let search = |params: &[(&str, &str)]| {
            let params = crate::store::FilterParams {
                path: params
                    .iter()
                    .find(|p| p.0 == "path")
                    .map(|p| p.1.to_owned()),
                status: params
                    .iter()
                    .find(|p| p.0 == "status")
                    .map(|p| p.1.to_owned()),
                kind: params
                    .iter()
                    .find(|p| p.0 == "kind")
                    .map(|p| p.1.to_owned()),
                ..Default::default()
            };
            let filter = crate::store::Filter::parse(&params).unwrap();
            let store = store.clone();
            async move { paths(store.query(&filter).await.unwrap()) }
        };
        assert_eq!(
            search(&[("path", "/v1/*")]).await,
            ["/v1/items", "/v1/orders", "/v1/users"]
        );
        assert_eq!(search(&[("status", "1xx")]).await, ["/socket"]);
        assert_eq!(
            search(&[("status", "5xx")]).await,
            ["/v2/users", "/v1/orders"]
        );
        assert_eq!(search(&[("kind", "handshake")]).await, ["-"]);
        store.close().await;
    }

    #[tokio::test]
    async fn version_three_keeps_only_redirects_and_errors_in_the_status_index() {
        let (_dir, cfg) = temp_config();
        file_at_version(
            &cfg,
            2,
            "INSERT INTO exchanges (ts, duration_us, kind, path, status) VALUES \
             (1, 0, 'request', '/ok', 200), (2, 0, 'request', '/moved', 301), \
             (3, 0, 'request', '/down', 503), (4, 0, 'handshake', NULL, NULL)",
        )
        .await;

        let store = Store::open(&cfg).await.unwrap();
        let indexed: Vec<String> = sqlx::query_scalar(
            "SELECT path FROM exchanges INDEXED BY exchanges_status_ts \
             WHERE status >= 300 ORDER BY status",
        )
        .fetch_all(&store.inner.reader)
        .await
        .unwrap();
        assert_eq!(indexed, ["/moved", "/down"]);
        let definition: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'exchanges_status_ts'")
                .fetch_one(&store.inner.reader)
                .await
                .unwrap();
        // Migration 4 added the 1xx statuses.
        assert!(
            definition.ends_with("WHERE status < 200 OR status >= 300"),
            "{definition}"
        );
        let rows = store.query(&crate::store::Filter::default()).await.unwrap();
        assert_eq!(rows.len(), 4, "no row was lost");
        store.close().await;
    }

    #[tokio::test]
    async fn read_only_open_rejects_missing_foreign_and_newer_files() {
        let dir = tempfile::tempdir().unwrap();

        let missing = dir.path().join("missing.db");
        let err = Store::open_read_only(&missing).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            !missing.exists(),
            "a read-only open must not create the file"
        );

        // A SQLite file that is not ours.
        let foreign = dir.path().join("foreign.db");
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(&foreign)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let err = Store::open_read_only(&foreign).await.unwrap_err();
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");

        // A recording database from a newer build.
        let (_dir2, cfg) = temp_config();
        let store = Store::open(&cfg).await.unwrap();
        store
            .exec_on_writer(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                 execution_time) VALUES (99, 'future', TRUE, x'00', 0)",
            )
            .await;
        store.close().await;
        let err = Store::open_read_only(&cfg.path).await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn open_fails_when_the_directory_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig::new(dir.path().join("no/such/dir/records.db"));
        let err = Store::open(&cfg).await.unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("records.db"), "{err}");
    }
}
