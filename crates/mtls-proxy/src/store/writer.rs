//! The write path: a non-blocking [`Recorder`] handle in front of a writer
//! task that inserts records in batches.
//!
//! The proxy calls [`Recorder::record`] on its hot path, so that call only
//! ever does a `try_send` on a bounded channel. Everything that can be slow
//! (redaction, JSON encoding, SQLite) happens on the writer task. When the
//! writer falls behind, the channel fills and records are dropped and
//! counted: losing log rows is better than slowing traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::tx::WriteTx;
use super::{
    retention, to_micros, Filter, Record, RecordRow, Redactor, Store, StoreError, StoreHealth,
    WarnLimiter, METRIC_RECORDS_DROPPED, METRIC_RECORDS_FAILED, METRIC_RECORDS_WRITTEN,
};

/// While the database is failing and no records arrive, the writer tries a
/// tiny write this often, so the store reports healthy again without
/// waiting for traffic (which a failing readiness probe may be holding off).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two identical warnings about failing writes.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What travels from the handles to the writer task. Flush and shutdown
/// share the channel with records so that they are ordered after every
/// record sent before them.
// Boxing the record would cost an allocation per proxied request; the
// channel stores messages inline, so the size difference is harmless.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Record),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The proxy's handle for recording exchanges. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    /// `None` for a disabled recorder.
    tx: Option<mpsc::Sender<Msg>>,
    store: Option<Store>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("store", &self.inner.store)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The background tasks behind a [`Recorder`]. Call [`StoreTasks::shutdown`]
/// on the way out to write what is still queued; merely dropping this value
/// leaves the tasks running until the runtime stops.
#[derive(Debug)]
pub struct StoreTasks {
    tx: mpsc::Sender<Msg>,
    writer: JoinHandle<()>,
    maintenance: JoinHandle<()>,
    stop_maintenance: Arc<Notify>,
    store: Store,
}

impl Recorder {
    /// Starts the writer and maintenance tasks for `store` on the current
    /// tokio runtime and returns the handle plus the tasks.
    ///
    /// Fails with [`StoreError::ReadOnly`] for a store opened read-only.
    pub fn start(store: Store) -> Result<(Recorder, StoreTasks), StoreError> {
        let config = store.write_side()?.config.clone();
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let writer = tokio::spawn(run_writer(store.clone(), rx));
        let stop_maintenance = Arc::new(Notify::new());
        let maintenance = tokio::spawn(retention::run_maintenance_loop(
            store.clone(),
            config.maintenance_interval,
            stop_maintenance.clone(),
        ));
        let recorder = Recorder {
            inner: Arc::new(RecorderInner {
                tx: Some(tx.clone()),
                store: Some(store.clone()),
                dropped: AtomicU64::new(0),
            }),
        };
        let tasks = StoreTasks {
            tx,
            writer,
            maintenance,
            stop_maintenance,
            store,
        };
        Ok((recorder, tasks))
    }

    /// A recorder without a store, for running the proxy when the database
    /// cannot be opened: every record is dropped and counted.
    pub fn disabled() -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                tx: None,
                store: None,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Whether records go anywhere; callers skip building them when not.
    pub fn is_enabled(&self) -> bool {
        self.inner.tx.is_some()
    }

    /// Queues `rec` for writing. Never waits: if the queue is full, the
    /// store is disabled or the writer has stopped, the record is dropped
    /// and counted.
    pub fn record(&self, rec: Record) {
        let sent = match &self.inner.tx {
            Some(tx) => tx.try_send(Msg::Record(rec)).is_ok(),
            None => false,
        };
        if !sent {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(METRIC_RECORDS_DROPPED).increment(1);
        }
    }

    /// How many records this recorder (and its clones) dropped.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// How many records reached the writer but failed to be written.
    pub fn failed(&self) -> u64 {
        self.inner.store.as_ref().map_or(0, Store::failed_count)
    }

    /// The store's health, for readiness probes.
    pub fn health(&self) -> StoreHealth {
        let Some(store) = &self.inner.store else {
            return StoreHealth {
                enabled: false,
                writable: false,
                last_error: Some("recording is disabled".to_owned()),
                size_bytes: 0,
            };
        };
        let mut health = store.health();
        if self.inner.tx.as_ref().is_some_and(mpsc::Sender::is_closed) {
            health.writable = false;
            health.last_error = Some("the store writer has stopped".to_owned());
        }
        health
    }

    /// The store behind this recorder, `None` when disabled.
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// Runs `filter` against the store, e.g. for the admin API.
    pub async fn query(&self, filter: &Filter) -> Result<Vec<RecordRow>, StoreError> {
        match &self.inner.store {
            Some(store) => store.query(filter).await,
            None => Err(StoreError::Disabled),
        }
    }

    /// Waits until every record queued before this call has been written (or
    /// has failed). Unlike [`Recorder::record`] this waits for queue space;
    /// it is meant for tests and orderly shutdown, not the request path.
    pub async fn flush(&self) {
        let Some(tx) = &self.inner.tx else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Flush(ack)).await.is_ok() {
            // An error means the writer stopped, which also ends the wait.
            let _ = done.await;
        }
    }
}

impl StoreTasks {
    /// Writes everything queued so far, stops both tasks and closes the
    /// database. Records sent afterwards are dropped and counted.
    pub async fn shutdown(self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        if let Err(e) = self.writer.await {
            tracing::error!(error = %e, "the store writer task failed");
        }
        self.stop_maintenance.notify_one();
        if let Err(e) = self.maintenance.await {
            tracing::error!(error = %e, "the store maintenance task failed");
        }
        self.store.close().await;
    }
}

/// The writer task: gathers up to `batch_size` records or whatever arrived
/// within `flush_interval` of the first one, and inserts them in one
/// transaction. It never returns early on errors; it ends only on shutdown
/// or when every sender is gone.
async fn run_writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let Ok(side) = store.write_side() else {
        return;
    };
    let batch_size = side.config.batch_size;
    let flush_interval = side.config.flush_interval;
    let mut batch: Vec<Record> = Vec::with_capacity(batch_size.min(1024));
    let mut warn = WarnLimiter::new(WARN_EVERY);

    loop {
        let first = if store.health_state().is_writable() {
            rx.recv().await
        } else {
            match tokio::time::timeout(PROBE_INTERVAL, rx.recv()).await {
                Ok(msg) => msg,
                Err(_idle) => {
                    probe(&store, &side.pool).await;
                    continue;
                }
            }
        };
        let control = match first {
            None => return,
            Some(Msg::Record(rec)) => {
                batch.push(rec);
                fill_batch(&mut rx, &mut batch, batch_size, flush_interval).await
            }
            Some(Msg::Flush(ack)) => Control::Flush(ack),
            Some(Msg::Shutdown(ack)) => Control::Shutdown(ack),
        };
        write_batch(&store, &side.pool, &side.redactor, &mut batch, &mut warn).await;
        match control {
            Control::None => {}
            Control::Flush(ack) => {
                let _ = ack.send(());
            }
            Control::Shutdown(ack) => {
                let _ = ack.send(());
                return;
            }
            Control::Closed => return,
        }
    }
}

/// What interrupted a batch besides it filling up or its time running out.
enum Control {
    None,
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
    Closed,
}

/// Adds records to `batch` until it is full, the interval since the first
/// record is over, or a control message arrives.
async fn fill_batch(
    rx: &mut mpsc::Receiver<Msg>,
    batch: &mut Vec<Record>,
    batch_size: usize,
    flush_interval: Duration,
) -> Control {
    let deadline = tokio::time::Instant::now() + flush_interval;
    while batch.len() < batch_size {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Msg::Record(rec))) => batch.push(rec),
            Ok(Some(Msg::Flush(ack))) => return Control::Flush(ack),
            Ok(Some(Msg::Shutdown(ack))) => return Control::Shutdown(ack),
            Ok(None) => return Control::Closed,
            Err(_elapsed) => break,
        }
    }
    Control::None
}

/// A record turned into column values, with headers redacted.
struct NewRow {
    rec: Record,
    request_headers: String,
    response_headers: String,
}

impl NewRow {
    fn prepare(mut rec: Record, redactor: &Redactor) -> NewRow {
        redactor.redact(&mut rec.request_headers);
        redactor.redact(&mut rec.response_headers);
        let request_headers = headers_json(&rec.request_headers);
        let response_headers = headers_json(&rec.response_headers);
        NewRow {
            rec,
            request_headers,
            response_headers,
        }
    }
}

fn headers_json(headers: &[(String, String)]) -> String {
    // Serialising string pairs cannot fail; fall back to an empty list
    // rather than panic if that ever changes.
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".to_owned())
}

/// Writes and empties `batch`, updating health and metrics either way.
async fn write_batch(
    store: &Store,
    pool: &SqlitePool,
    redactor: &Redactor,
    batch: &mut Vec<Record>,
    warn: &mut WarnLimiter,
) {
    if batch.is_empty() {
        return;
    }
    let rows: Vec<NewRow> = batch
        .drain(..)
        .map(|rec| NewRow::prepare(rec, redactor))
        .collect();
    let count = rows.len() as u64;
    match insert_rows(pool, &rows).await {
        Ok(()) => {
            metrics::counter!(METRIC_RECORDS_WRITTEN).increment(count);
            if !store.health_state().is_writable() {
                tracing::info!("the recording database is writable again");
            }
            store.health_state().mark_ok();
        }
        Err(e) => {
            // The batch is given up rather than retried: a database that is
            // full or read-only stays so for longer than the queue can hold,
            // and holding on to rows would only delay the newest ones.
            metrics::counter!(METRIC_RECORDS_FAILED).increment(count);
            store
                .health_state()
                .failed
                .fetch_add(count, Ordering::Relaxed);
            store.health_state().mark_failed(e.to_string());
            if let Some(suppressed) = warn.check() {
                tracing::warn!(
                    error = %e,
                    records = count,
                    suppressed_warnings = suppressed,
                    path = %store.path().display(),
                    "cannot write records to the recording database; dropping them"
                );
            }
        }
    }
    store.refresh_size();
}

const INSERT_HEAD: &str = "INSERT INTO exchanges (ts, duration_us, kind, route, upstream, method, \
     path, query, status, bytes_in, bytes_out, client_identity, peer, tls_version, error, \
     body_encoding, truncated, request_headers, response_headers, request_body, response_body) ";

/// Rows per INSERT statement: 20 parameters each stays far below SQLite's
/// limit of 32766 bound parameters per statement.
const ROWS_PER_STATEMENT: usize = 200;

async fn insert_rows(pool: &SqlitePool, rows: &[NewRow]) -> Result<(), sqlx::Error> {
    let mut tx = WriteTx::begin(pool).await?;
    let result = insert_all(tx.conn(), rows).await;
    tx.finish(result).await
}

/// Inserts with one multi-row statement per chunk. Each statement is one
/// round trip to SQLite's worker thread, which is what recording costs the
/// proxy, so fewer statements means less CPU taken from proxying.
async fn insert_all(conn: &mut SqliteConnection, rows: &[NewRow]) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(INSERT_HEAD);
        query.push_values(chunk, |mut b, row| {
            let rec = &row.rec;
            b.push_bind(to_micros(rec.ts))
                .push_bind(i64::try_from(rec.duration.as_micros()).unwrap_or(i64::MAX))
                .push_bind(rec.kind.as_str())
                .push_bind(rec.route.as_deref())
                .push_bind(rec.upstream.as_deref())
                .push_bind(rec.method.as_deref())
                .push_bind(rec.path.as_deref())
                .push_bind(rec.query.as_deref())
                .push_bind(rec.status.map(i64::from))
                .push_bind(i64::try_from(rec.bytes_in).unwrap_or(i64::MAX))
                .push_bind(i64::try_from(rec.bytes_out).unwrap_or(i64::MAX))
                .push_bind(rec.client_identity.as_deref())
                .push_bind(rec.peer.map(|p| p.to_string()))
                .push_bind(rec.tls_version.as_deref())
                .push_bind(rec.error.as_deref())
                .push("'identity'")
                .push_bind(rec.truncated)
                .push_bind(row.request_headers.as_str())
                .push_bind(row.response_headers.as_str())
                .push_bind(rec.request_body.as_deref())
                .push_bind(rec.response_body.as_deref());
        });
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A one-row write that tells whether the database accepts writes again.
async fn probe(store: &Store, pool: &SqlitePool) {
    let result = async {
        let mut tx = WriteTx::begin(pool).await?;
        let written = sqlx::query(
            "INSERT INTO writer_probe (id, ts) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET ts = excluded.ts",
        )
        .bind(to_micros(std::time::SystemTime::now()))
        .execute(tx.conn())
        .await
        .map(drop);
        tx.finish(written).await
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!("the recording database is writable again");
            store.health_state().mark_ok();
        }
        Err(e) => store.health_state().mark_failed(e.to_string()),
    }
    store.refresh_size();
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::store::testing::{count_rows, request, start, temp_config};

    #[tokio::test]
    async fn records_are_written_in_batches() {
        let (_dir, mut cfg) = temp_config();
        cfg.batch_size = 10;
        let (recorder, tasks) = start(&cfg).await;
        for i in 0..25 {
            recorder.record(request(&format!("/r/{i}")));
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();
        assert_eq!(count_rows(store).await, 25);
        assert_eq!(recorder.dropped(), 0);
        assert_eq!(recorder.failed(), 0);
        let health = recorder.health();
        assert!(health.enabled && health.writable, "{health:?}");
        assert!(health.size_bytes > 0);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn flush_interval_writes_a_partial_batch_without_a_flush() {
        let (_dir, mut cfg) = temp_config();
        cfg.batch_size = 1000;
        cfg.flush_interval = Duration::from_millis(20);
        let (recorder, tasks) = start(&cfg).await;
        recorder.record(request("/alone"));
        let store = recorder.store().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        while count_rows(&store).await == 0 {
            assert!(
                Instant::now() < deadline,
                "the lone record was never written"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let (_dir, mut cfg) = temp_config();
        cfg.queue_capacity = 4;
        let (recorder, tasks) = start(&cfg).await;
        // On the single-threaded test runtime the writer cannot run between
        // these calls, so exactly `queue_capacity` records fit.
        let started = Instant::now();
        for i in 0..1000 {
            recorder.record(request(&format!("/r/{i}")));
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(500),
            "record() waited: {elapsed:?}"
        );
        assert_eq!(recorder.dropped(), 996);
        // A clone shares the counter.
        assert_eq!(recorder.clone().dropped(), 996);
        recorder.flush().await;
        assert_eq!(count_rows(recorder.store().unwrap()).await, 4);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn disabled_recorder_drops_and_counts() {
        let recorder = Recorder::disabled();
        recorder.record(request("/x"));
        recorder.record(request("/y"));
        recorder.flush().await;
        assert_eq!(recorder.dropped(), 2);
        let health = recorder.health();
        assert!(!health.enabled && !health.writable);
        assert!(matches!(
            recorder.query(&Filter::default()).await,
            Err(StoreError::Disabled)
        ));
    }

    #[tokio::test]
    async fn shutdown_writes_queued_records_and_later_ones_are_dropped() {
        let (_dir, mut cfg) = temp_config();
        cfg.flush_interval = Duration::from_secs(3600);
        let (recorder, tasks) = start(&cfg).await;
        for i in 0..3 {
            recorder.record(request(&format!("/r/{i}")));
        }
        tasks.shutdown().await;
        recorder.record(request("/late"));
        assert_eq!(recorder.dropped(), 1);
        assert!(!recorder.health().writable);

        let store = Store::open_read_only(&cfg.path).await.unwrap();
        assert_eq!(count_rows(&store).await, 3);
    }

    #[tokio::test]
    async fn read_only_store_cannot_start_a_recorder() {
        let (_dir, cfg) = temp_config();
        Store::open(&cfg).await.unwrap().close().await;
        let store = Store::open_read_only(&cfg.path).await.unwrap();
        assert!(matches!(Recorder::start(store), Err(StoreError::ReadOnly)));
    }

    /// The writer's connection is switched to `query_only`, which makes
    /// every write fail with SQLITE_READONLY (file permissions would not
    /// stop root, who runs the tests).
    #[tokio::test]
    async fn read_only_database_makes_the_store_unhealthy_until_it_recovers() {
        let (_dir, mut cfg) = temp_config();
        cfg.flush_interval = Duration::from_millis(5);
        let (recorder, tasks) = start(&cfg).await;
        let store = recorder.store().unwrap().clone();

        recorder.record(request("/before"));
        recorder.flush().await;
        assert!(recorder.health().writable);

        store.exec_on_writer("PRAGMA query_only = ON").await;
        let started = Instant::now();
        for i in 0..50 {
            recorder.record(request(&format!("/during/{i}")));
        }
        assert!(started.elapsed() < Duration::from_millis(500));
        recorder.flush().await;
        let health = recorder.health();
        assert!(!health.writable, "{health:?}");
        let error = health.last_error.unwrap();
        assert!(error.contains("readonly"), "{error}");
        assert_eq!(recorder.failed(), 50);

        // The writer survives more traffic while failing.
        recorder.record(request("/still-failing"));
        recorder.flush().await;
        assert_eq!(recorder.failed(), 51);

        // Once writes work again, the idle probe notices without traffic.
        store.exec_on_writer("PRAGMA query_only = OFF").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !recorder.health().writable {
            assert!(Instant::now() < deadline, "the store never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(recorder.health().last_error, None);

        recorder.record(request("/after"));
        recorder.flush().await;
        assert_eq!(count_rows(&store).await, 2);
        tasks.shutdown().await;
    }

    /// `max_page_count` caps the file where it is, so the next insert that
    /// needs a page fails with SQLITE_FULL, exactly like a full disk.
    #[tokio::test]
    async fn full_database_makes_the_store_unhealthy_until_it_recovers() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        let store = recorder.store().unwrap().clone();

        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&store.write_side().unwrap().pool)
            .await
            .unwrap();
        store
            .exec_on_writer(&format!("PRAGMA max_page_count = {pages}"))
            .await;

        let body = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..5 {
            let mut rec = request("/big");
            rec.response_body = Some(body.clone());
            recorder.record(rec);
        }
        recorder.flush().await;
        let health = recorder.health();
        assert!(!health.writable, "{health:?}");
        assert!(
            health.last_error.as_deref().unwrap_or("").contains("full"),
            "{health:?}"
        );
        assert_eq!(recorder.failed(), 5);

        // SQLite rolled the failed transaction back by itself; the next
        // batch must fail for the same reason, not because the connection
        // was left in a broken transaction state.
        let mut rec = request("/big");
        rec.response_body = Some(body.clone());
        recorder.record(rec);
        recorder.flush().await;
        let health = recorder.health();
        assert!(
            health.last_error.as_deref().unwrap_or("").contains("full"),
            "{health:?}"
        );
        assert_eq!(recorder.failed(), 6);

        store
            .exec_on_writer("PRAGMA max_page_count = 1073741823")
            .await;
        let mut rec = request("/big");
        rec.response_body = Some(body);
        recorder.record(rec);
        recorder.flush().await;
        let health = recorder.health();
        assert!(health.writable, "{health:?}");
        assert_eq!(count_rows(&store).await, 1);
        tasks.shutdown().await;
    }
}
