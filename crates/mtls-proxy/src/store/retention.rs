//! Keeping the database bounded: deleting rows by age and by size, and
//! compressing old bodies in place.
//!
//! Every step works in short write transactions on the store's maintenance
//! connection and pauses briefly after each one, so that the record writer
//! (which polls for the lock every 250 µs) takes the lock between them when
//! it waits; once it holds the lock, maintenance waits for its batch. Before, deletes ran back to back and freed
//! pages went back to the file in one transaction, followed by a
//! `TRUNCATE` checkpoint that blocks writers: the writer waited, its queue
//! filled and records were dropped (0.17% at 45,000 a second).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use super::record::BodyEncoding;
use super::tx::WriteTx;
use super::{schema, to_micros, Store, StoreError, WarnLimiter};

/// Rows deleted per statement; each statement is its own short transaction.
const DELETE_BATCH: u64 = 1000;

/// Free pages handed back to the file system per transaction (16 MiB of
/// 16 KiB pages).
const VACUUM_PAGES: i64 = 1024;

/// The least pause after a maintenance transaction, for the writer to take
/// the lock.
const MIN_PAUSE: Duration = Duration::from_millis(2);

/// Tries of a checkpoint that another one kept busy.
const CHECKPOINT_TRIES: usize = 20;

/// Rows compressed per transaction; bodies can be large, so this stays small.
const COMPRESS_BATCH: i64 = 64;

/// zstd's default level: a good ratio on text bodies at a modest CPU cost,
/// paid once per row in the background.
const ZSTD_LEVEL: i32 = 3;

/// Size retention aims this fraction below `max_bytes`, so that a store
/// hovering at its limit is trimmed once in a while rather than every pass.
const SIZE_HEADROOM_DIVISOR: u64 = 10;

/// An upper bound on delete-and-measure rounds per pass, in case the file
/// cannot shrink (e.g. a reader keeps the log from being truncated).
const MAX_SIZE_ROUNDS: usize = 16;

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceReport {
    /// Rows deleted because they were older than `max_age`.
    pub deleted_by_age: u64,
    /// Rows deleted (oldest first) to bring the file under `max_bytes`.
    pub deleted_by_size: u64,
    /// Rows whose bodies were compressed.
    pub compressed: u64,
    /// Database plus log size before the pass, in bytes.
    pub size_before: u64,
    /// Database plus log size after the pass, in bytes.
    pub size_after: u64,
}

impl Store {
    /// Runs retention and compression once, now. The background task calls
    /// this every `maintenance_interval`; tests and admin tools may call it
    /// directly.
    pub async fn run_maintenance_once(&self) -> Result<MaintenanceReport, StoreError> {
        let side = self.write_side()?;
        let result = self.maintain(&side.pool, &side.config).await;
        if let Err(e) = &result {
            // Maintenance writes too: if it cannot, the writer most likely
            // cannot either, and the readiness probe should know.
            self.health_state().mark_failed(error_chain(e));
        }
        self.refresh_size();
        result
    }

    async fn maintain(
        &self,
        pool: &SqlitePool,
        config: &super::StoreConfig,
    ) -> Result<MaintenanceReport, StoreError> {
        let mut report = MaintenanceReport {
            size_before: self.refresh_size(),
            ..MaintenanceReport::default()
        };
        let now = SystemTime::now();

        let age_cutoff = cutoff(now, config.max_age);
        report.deleted_by_age = delete_older_than(pool, age_cutoff)
            .await
            .map_err(step("deleting rows older than max_age"))?;

        let compress_cutoff = cutoff(now, config.compress_after);
        report.compressed = self.compress_bodies_before(pool, compress_cutoff).await?;

        if report.deleted_by_age > 0 || report.compressed > 0 {
            // Deleting and compressing leave free pages; hand them back to
            // the file system so the size budget sees the gain.
            shrink(pool).await.map_err(step("vacuuming freed pages"))?;
        }

        report.deleted_by_size = self
            .enforce_size(pool, config.max_bytes, schema::wal_limit(config))
            .await
            .map_err(step("deleting the oldest rows to stay under max_bytes"))?;

        report.size_after = self.refresh_size();
        Ok(report)
    }

    /// Deletes the oldest rows until the database plus its log is below
    /// `max_bytes` (less some headroom). Returns the number of rows deleted.
    async fn enforce_size(
        &self,
        pool: &SqlitePool,
        max_bytes: u64,
        wal_limit: u64,
    ) -> Result<u64, sqlx::Error> {
        if schema::file_size(self.path()) <= max_bytes {
            return Ok(0);
        }
        // The log may hold pages that are already in the main file; fold it
        // in before measuring so that we do not delete rows for nothing.
        checkpoint(pool).await?;
        let target = max_bytes - max_bytes / SIZE_HEADROOM_DIVISOR;
        let mut deleted = 0;
        for _ in 0..MAX_SIZE_ROUNDS {
            // What the files come to once free pages are returned and the
            // log starts over (cut back to its limit): the log may still
            // hold pages the database already has, and those are no rows'.
            let log = schema::len(&schema::wal_path(self.path()));
            let (rows, used_bytes) = usage(pool).await?;
            let size = used_bytes + log.min(wal_limit);
            if size <= max_bytes && deleted == 0 {
                break;
            }
            if size <= target {
                break;
            }
            if rows == 0 {
                break;
            }
            // Estimate how many rows hold the excess from the average row
            // size (indexes included), then measure again after shrinking.
            let per_row = (used_bytes / rows).max(1);
            let mut to_delete = (size - target).div_ceil(per_row).clamp(1, rows);
            while to_delete > 0 {
                let n = to_delete.min(DELETE_BATCH);
                let done = delete_oldest(pool, n).await?;
                deleted += done;
                if done < n {
                    break;
                }
                to_delete -= n;
            }
            shrink(pool).await?;
        }
        Ok(deleted)
    }

    /// Compresses the bodies of rows that started before `before` (unix
    /// micros) and are still stored as identity. Returns the row count.
    async fn compress_bodies_before(
        &self,
        pool: &SqlitePool,
        before: i64,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            // Reading through the reader pool keeps the write connection
            // free for the writer while we select and compress.
            let rows: Vec<BodyPair> = sqlx::query_as(
                "SELECT id, request_body, response_body FROM exchanges \
                 WHERE body_encoding = 'identity' \
                   AND (request_body IS NOT NULL OR response_body IS NOT NULL) \
                   AND ts < ? \
                 ORDER BY ts LIMIT ?",
            )
            .bind(before)
            .bind(COMPRESS_BATCH)
            .fetch_all(&self.inner.reader)
            .await
            .map_err(step("selecting bodies to compress"))?;
            let fetched = rows.len();
            if fetched == 0 {
                break;
            }

            // Compression is CPU work; keep it off the async workers.
            let compressed = tokio::task::spawn_blocking(move || compress_rows(rows))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;

            let mut tx = WriteTx::begin(pool)
                .await
                .map_err(step("storing compressed bodies"))?;
            let stored = store_compressed(tx.conn(), &compressed).await;
            total += tx
                .finish(stored)
                .await
                .map_err(step("storing compressed bodies"))?;
            pause().await;

            if fetched < COMPRESS_BATCH as usize {
                break;
            }
        }
        Ok(total)
    }
}

async fn store_compressed(
    conn: &mut SqliteConnection,
    rows: &[BodyPair],
) -> Result<u64, sqlx::Error> {
    let mut stored = 0;
    for (id, request, response) in rows {
        // The encoding guard makes a concurrent second pass harmless.
        let done = sqlx::query(
            "UPDATE exchanges SET request_body = ?, response_body = ?, body_encoding = ? \
             WHERE id = ? AND body_encoding = 'identity'",
        )
        .bind(request.as_deref())
        .bind(response.as_deref())
        .bind(BodyEncoding::Zstd.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await?;
        stored += done.rows_affected();
    }
    Ok(stored)
}

/// A row id with its request and response bodies.
type BodyPair = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn compress_rows(rows: Vec<BodyPair>) -> Result<Vec<BodyPair>, StoreError> {
    let compress = |id: i64, body: Option<Vec<u8>>| {
        body.map(|b| zstd::bulk::compress(&b, ZSTD_LEVEL))
            .transpose()
            .map_err(|e| StoreError::CorruptRow {
                id,
                reason: format!("body cannot be compressed: {e}"),
            })
    };
    rows.into_iter()
        .map(|(id, request, response)| Ok((id, compress(id, request)?, compress(id, response)?)))
        .collect()
}

/// Unix micros of `now - age`, clamped at the epoch.
fn cutoff(now: SystemTime, age: Duration) -> i64 {
    to_micros(now.checked_sub(age).unwrap_or(UNIX_EPOCH))
}

fn step(step: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| StoreError::Maintenance { step, source }
}

/// Leaves the write lock free for a moment after a transaction, long
/// enough for a waiting writer to take it. Longer pauses (as long as each
/// transaction) left retention slower than the records arriving at 20,000
/// a second in `bench/mtls-proxy/writer`, and the file grew past its limit.
async fn pause() {
    tokio::time::sleep(MIN_PAUSE).await;
}

async fn delete_older_than(pool: &SqlitePool, before: i64) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM exchanges WHERE id IN \
             (SELECT id FROM exchanges WHERE ts < ? ORDER BY ts LIMIT ?)",
        )
        .bind(before)
        .bind(DELETE_BATCH as i64)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += done;
        if done < DELETE_BATCH {
            return Ok(deleted);
        }
        pause().await;
    }
}

async fn delete_oldest(pool: &SqlitePool, n: u64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM exchanges WHERE id IN \
         (SELECT id FROM exchanges ORDER BY ts, id LIMIT ?)",
    )
    .bind(i64::try_from(n).unwrap_or(i64::MAX))
    .execute(pool)
    .await?;
    pause().await;
    Ok(done.rows_affected())
}

/// Row count and bytes in use (pages minus free pages).
async fn usage(pool: &SqlitePool) -> Result<(u64, u64), sqlx::Error> {
    let (rows, pages, free, page_size): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM exchanges), \
                (SELECT page_count FROM pragma_page_count()), \
                (SELECT freelist_count FROM pragma_freelist_count()), \
                (SELECT page_size FROM pragma_page_size())",
    )
    .fetch_one(pool)
    .await?;
    let used_pages = pages.saturating_sub(free).max(0).unsigned_abs();
    Ok((
        rows.max(0).unsigned_abs(),
        used_pages * page_size.max(0).unsigned_abs(),
    ))
}

/// Returns free pages to the file system, [`VACUUM_PAGES`] per
/// transaction, and copies the log into the database.
async fn shrink(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    loop {
        let free: i64 = sqlx::query_scalar("SELECT freelist_count FROM pragma_freelist_count()")
            .fetch_one(pool)
            .await?;
        if free == 0 {
            break;
        }
        // A pragma takes no bound parameters; the count is ours.
        sqlx::query(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))
            .execute(pool)
            .await?;
        pause().await;
    }
    checkpoint(pool).await
}

/// Copies the log into the database, so that the file sizes say what the
/// rows take. `PASSIVE`: unlike `TRUNCATE` it never holds the write lock,
/// so the writer goes on meanwhile; what it leaves (pages a reader still
/// uses, or written meanwhile) the checkpoint thread copies later, and the
/// log's size limit cuts the file back when it starts over.
async fn checkpoint(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    // The checkpoint thread may be copying at this moment; a `PASSIVE`
    // checkpoint then returns at once, busy. Try a few times.
    for _ in 0..CHECKPOINT_TRIES {
        let (busy, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
        if busy == 0 && log == copied {
            break;
        }
        tokio::time::sleep(MIN_PAUSE).await;
    }
    // A log copied to its end starts over at the next write, and that
    // write's commit cuts the file back to the size limit: one tiny write
    // makes the file sizes true now rather than at the writer's next batch.
    sqlx::query(
        "INSERT INTO writer_probe (id, ts) VALUES (1, ?) \
         ON CONFLICT (id) DO UPDATE SET ts = excluded.ts",
    )
    .bind(to_micros(SystemTime::now()))
    .execute(pool)
    .await
    .map(drop)
}

/// An error with its sources, for the health status where there is no
/// structured logging to walk the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The maintenance task: one pass every `interval` until told to stop.
pub(crate) async fn run_maintenance_loop(store: Store, interval: Duration, stop: Arc<Notify>) {
    let mut warn = WarnLimiter::new(Duration::from_secs(300));
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.notified() => return,
        }
        match store.run_maintenance_once().await {
            Ok(report) => {
                if report.deleted_by_age + report.deleted_by_size + report.compressed > 0 {
                    tracing::info!(
                        deleted_by_age = report.deleted_by_age,
                        deleted_by_size = report.deleted_by_size,
                        compressed = report.compressed,
                        size_before = report.size_before,
                        size_after = report.size_after,
                        "recording database maintenance"
                    );
                }
            }
            Err(e) => {
                if let Some(suppressed) = warn.check() {
                    tracing::warn!(
                        error = %error_chain(&e),
                        suppressed_warnings = suppressed,
                        "recording database maintenance failed"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::testing::{count_rows, request, start, temp_config};
    use crate::store::Filter;

    /// Bytes that zstd cannot shrink, so size tests measure real data.
    fn noise(len: usize, seed: u64) -> Bytes {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into()
    }

    #[tokio::test]
    async fn rows_older_than_max_age_are_deleted() {
        let (_dir, mut cfg) = temp_config();
        cfg.max_age = Duration::from_secs(7 * 86_400);
        let (recorder, tasks) = start(&cfg).await;
        let now = SystemTime::now();
        for (path, age_days) in [("/old", 8), ("/older", 30), ("/fresh", 6), ("/now", 0)] {
            let mut rec = request(path);
            rec.ts = now - Duration::from_secs(age_days * 86_400);
            recorder.record(rec);
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();

        let report = store.run_maintenance_once().await.unwrap();
        assert_eq!(report.deleted_by_age, 2);
        assert_eq!(report.deleted_by_size, 0);
        let mut paths: Vec<String> = store
            .query(&Filter::default())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|r| r.path)
            .collect();
        paths.sort();
        assert_eq!(paths, ["/fresh", "/now"]);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn oldest_rows_are_deleted_until_the_file_fits_max_bytes() {
        let (_dir, mut cfg) = temp_config();
        cfg.max_bytes = 512 * 1024;
        cfg.batch_size = 16;
        let (recorder, tasks) = start(&cfg).await;
        let store = recorder.store().unwrap().clone();
        let start_ts = SystemTime::now() - Duration::from_secs(600);
        for i in 0..200u64 {
            let mut rec = request(&format!("/r/{i}"));
            rec.ts = start_ts + Duration::from_millis(i);
            rec.response_body = Some(noise(16 * 1024, i));
            recorder.record(rec);
        }
        recorder.flush().await;
        assert_eq!(count_rows(&store).await, 200);
        let before = store.size_bytes();
        assert!(before > 3 * 1024 * 1024, "only {before} bytes written");

        let report = store.run_maintenance_once().await.unwrap();
        let after = store.size_bytes();
        assert!(after <= cfg.max_bytes, "still {after} bytes: {report:?}");
        assert!(report.deleted_by_size > 0);
        assert_eq!(report.size_after, after);
        assert_eq!(store.health().size_bytes, after);

        // What remains is the newest rows, without gaps.
        let remaining = count_rows(&store).await;
        assert!(remaining > 0 && remaining < 200, "{remaining} rows left");
        let filter = Filter {
            limit: 1000,
            ..Filter::default()
        };
        let rows = store.query(&filter).await.unwrap();
        let paths: Vec<String> = rows.into_iter().filter_map(|r| r.path).collect();
        let expected: Vec<String> = (200 - remaining..200)
            .rev()
            .map(|i| format!("/r/{i}"))
            .collect();
        assert_eq!(paths, expected);

        // A second pass has nothing to do.
        let report = store.run_maintenance_once().await.unwrap();
        assert_eq!(report.deleted_by_size, 0);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn old_bodies_are_compressed_in_place_and_read_back_identical() {
        let (_dir, mut cfg) = temp_config();
        cfg.compress_after = Duration::from_secs(3600);
        let (recorder, tasks) = start(&cfg).await;
        let store = recorder.store().unwrap().clone();

        let text: Bytes = "{\"hello\": \"world\", \"n\": 12345}\n"
            .repeat(2000)
            .into_bytes()
            .into();
        let binary = noise(4096, 7);
        let mut old = request("/old");
        old.ts = SystemTime::now() - Duration::from_secs(2 * 3600);
        old.request_body = Some(binary.clone());
        old.response_body = Some(text.clone());
        old.truncated = true;
        let mut fresh = request("/fresh");
        fresh.response_body = Some(text.clone());
        let mut no_body = request("/no-body");
        no_body.ts = old.ts;
        recorder.record(old);
        recorder.record(fresh);
        recorder.record(no_body);
        recorder.flush().await;

        let report = store.run_maintenance_once().await.unwrap();
        assert_eq!(report.compressed, 1);

        let stored: Vec<(String, String, Option<i64>)> = sqlx::query_as(
            "SELECT path, body_encoding, length(response_body) FROM exchanges ORDER BY path",
        )
        .fetch_all(&store.inner.reader)
        .await
        .unwrap();
        assert_eq!(stored[0].0, "/fresh");
        assert_eq!(stored[0].1, "identity");
        assert_eq!(stored[1].0, "/no-body");
        assert_eq!(stored[1].1, "identity");
        assert_eq!(stored[2].0, "/old");
        assert_eq!(stored[2].1, "zstd");
        let on_disk = stored[2].2.unwrap();
        assert!(
            on_disk * 10 < text.len() as i64,
            "compressed body is {on_disk} bytes"
        );

        let rows = store.query(&Filter::default()).await.unwrap();
        let old = rows
            .iter()
            .find(|r| r.path.as_deref() == Some("/old"))
            .unwrap();
        assert_eq!(old.response_body.as_ref(), Some(&text));
        assert_eq!(old.request_body.as_ref(), Some(&binary));
        assert!(old.truncated);
        let fresh = rows
            .iter()
            .find(|r| r.path.as_deref() == Some("/fresh"))
            .unwrap();
        assert_eq!(fresh.response_body.as_ref(), Some(&text));

        // Nothing left to compress on the next pass.
        assert_eq!(store.run_maintenance_once().await.unwrap().compressed, 0);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn maintenance_needs_a_writable_store() {
        let (_dir, cfg) = temp_config();
        Store::open(&cfg).await.unwrap().close().await;
        let store = Store::open_read_only(&cfg.path).await.unwrap();
        assert!(matches!(
            store.run_maintenance_once().await,
            Err(StoreError::ReadOnly)
        ));
    }

    #[tokio::test]
    async fn failing_maintenance_marks_the_store_unhealthy() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        let store = recorder.store().unwrap().clone();
        let mut rec = request("/old");
        rec.ts = SystemTime::now() - Duration::from_secs(30 * 86_400);
        recorder.record(rec);
        recorder.flush().await;

        store.exec_on_writer("PRAGMA query_only = ON").await;
        let err = store.run_maintenance_once().await.unwrap_err();
        assert!(matches!(err, StoreError::Maintenance { .. }), "{err:?}");
        let health = store.health();
        assert!(!health.writable);
        assert!(
            health.last_error.unwrap().contains("max_age"),
            "the health error should say what failed"
        );
        store.exec_on_writer("PRAGMA query_only = OFF").await;
        assert_eq!(
            store.run_maintenance_once().await.unwrap().deleted_by_age,
            1
        );
        tasks.shutdown().await;
    }
}
