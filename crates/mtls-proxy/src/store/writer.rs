//! The write path: a non-blocking [`Recorder`] handle in front of a writer
//! thread that inserts records in batches.
//!
//! The proxy calls [`Recorder::record`] on its hot path, so that call only
//! bumps a counter and does a `try_send` on a bounded channel; it wakes the
//! writer only when the queue goes from empty to busy or a batch fills up.
//! Headers arrive already encoded and redacted ([`Recorder::encode_headers`]:
//! one small buffer per map, so a record holds nothing of the connection's).
//! Everything that can be slow (SQLite) happens on the writer thread. When the writer falls behind, the channel fills and
//! records are dropped and counted: losing log rows is better than slowing
//! traffic.
//!
//! The writer owns its own SQLite connection through rusqlite: one prepared
//! statement, arguments bound straight from the records, no copies and no
//! hops between threads per statement. Queries and maintenance keep using the
//! store's sqlx pools.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, ToSql, TransactionBehavior};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::mpsc::{self, Receiver, Sender};
use tokio::sync::oneshot;

use super::checkpoint::Checkpointer;
use super::{
    retention, schema, to_micros, Filter, Kind, Record, RecordRow, Redactor, Store, StoreError,
    StoreHealth, StoredHeaders, WarnLimiter, METRIC_RECORDS_DROPPED, METRIC_RECORDS_FAILED,
    METRIC_RECORDS_WRITTEN,
};

/// While the database is failing and no records arrive, the writer tries a
/// tiny write this often, so the store reports healthy again without
/// waiting for traffic (which a failing readiness probe may be holding off).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle writer looks whether its senders are all gone.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The least time between two identical warnings about failing writes.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How long the writer's connection waits for another connection's lock
/// (maintenance, a `logs` query) before a batch fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the writer sleeps between two tries of a lock another
/// connection holds. SQLite's own busy handler backs off to 100 ms between
/// tries; maintenance gives the lock back after each short transaction and
/// pauses, and a writer asleep for 25 to 100 ms at a time missed those
/// pauses: `strace` of the writer thread in `bench/mtls-proxy/writer`
/// showed waits of up to 105 ms at 10,000 records a second.
const LOCK_RETRY: Duration = Duration::from_micros(250);

/// What travels from the handles to the writer. Flush and shutdown share the
/// channel with records so that they are ordered after every record sent
/// before them.
// Boxing the record would cost an allocation per proxied request; the
// channel stores messages inline, so the size difference is harmless.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(Record),
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
    /// Runs one statement on the writer's connection (tests flip pragmas).
    #[cfg(test)]
    Exec(String, oneshot::Sender<()>),
}

/// The proxy's handle for recording exchanges. Cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

struct RecorderInner {
    /// `None` for a disabled recorder.
    queue: Option<Queue>,
    redactor: Redactor,
    store: Option<Store>,
    dropped: AtomicU64,
}

/// The sending side of the writer's channel plus what it needs to wake it.
#[derive(Clone)]
struct Queue {
    /// tokio's bounded channel allocates its slots as they fill, so an idle
    /// queue costs next to no memory; both ends are used without awaiting.
    tx: Sender<Msg>,
    signal: Arc<Signal>,
    writer: Thread,
}

/// What senders and the writer share besides the channel.
struct Signal {
    /// Records sent and not yet taken by the writer. Counted before the send,
    /// so it is never below the true queue length.
    queued: AtomicUsize,
    /// A control message waits: the writer stops gathering at once.
    urgent: AtomicBool,
    /// Set once the writer has stopped; control messages stop waiting.
    stopped: AtomicBool,
    batch_size: usize,
}

impl Queue {
    fn send_record(&self, rec: Record) -> bool {
        let n = self.signal.queued.fetch_add(1, Ordering::SeqCst) + 1;
        match self.tx.try_send(Msg::Record(rec)) {
            Ok(()) => {
                // The writer parks while the queue is empty and while a batch
                // gathers; wake it for the first record and for a full batch.
                if n == 1 || n == self.signal.batch_size {
                    self.writer.unpark();
                }
                true
            }
            Err(_) => {
                self.signal.queued.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Sends a control message, waiting for queue space if need be. Returns
    /// false when the writer has stopped.
    async fn send_control(&self, msg: Msg) -> bool {
        let mut msg = msg;
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    self.signal.urgent.store(true, Ordering::SeqCst);
                    self.writer.unpark();
                    return true;
                }
                Err(TrySendError::Full(back)) => {
                    if self.signal.stopped.load(Ordering::SeqCst) {
                        return false;
                    }
                    msg = back;
                    self.signal.urgent.store(true, Ordering::SeqCst);
                    self.writer.unpark();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
    }

    /// Sends a control message carrying an acknowledgement and waits for it.
    async fn round_trip(&self, msg: impl FnOnce(oneshot::Sender<()>) -> Msg) {
        let (ack, done) = oneshot::channel();
        if self.send_control(msg(ack)).await {
            // An error means the writer stopped, which also ends the wait.
            let _ = done.await;
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("store", &self.inner.store)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The background work behind a [`Recorder`]: the writer thread and the
/// maintenance task. Call [`StoreTasks::shutdown`] on the way out to write
/// what is still queued; merely dropping this value leaves them running
/// until the process ends.
pub struct StoreTasks {
    queue: Queue,
    writer: JoinHandle<()>,
    checkpointer: Checkpointer,
    maintenance: tokio::task::JoinHandle<()>,
    stop_maintenance: Arc<tokio::sync::Notify>,
    store: Store,
}

impl std::fmt::Debug for StoreTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTasks")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Opens the writer's connection, starts the writer thread and, on the
    /// current tokio runtime, the maintenance task; returns the handle plus
    /// the tasks.
    ///
    /// Fails with [`StoreError::ReadOnly`] for a store opened read-only, and
    /// with [`StoreError::OpenWriter`] if the writer's connection cannot be
    /// opened.
    pub fn start(store: Store) -> Result<(Recorder, StoreTasks), StoreError> {
        let side = store.write_side()?;
        let config = side.config.clone();
        let open_err = |source| StoreError::OpenWriter {
            path: store.path().to_path_buf(),
            source,
        };
        let conn = open_connection(store.path(), &config).map_err(open_err)?;
        let restart_after =
            i64::try_from(schema::wal_limit(&config) / u64::from(schema::PAGE_SIZE))
                .unwrap_or(i64::MAX);
        let checkpointer = Checkpointer::start(store.path(), restart_after).map_err(open_err)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let signal = Arc::new(Signal {
            queued: AtomicUsize::new(0),
            urgent: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            batch_size: config.batch_size,
        });
        let writer = Writer {
            store: store.clone(),
            conn,
            rx,
            signal: signal.clone(),
            redactor: side.redactor.clone(),
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            warn: WarnLimiter::new(WARN_EVERY),
            peer: String::new(),
            next_probe: Instant::now(),
            insert_lean: InsertSql::new(Shape::Lean),
            insert_full: InsertSql::new(Shape::Full),
            checkpoints: checkpointer.waker(),
        };
        let handle = thread::Builder::new()
            .name("recorder".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Task(format!("cannot start the writer thread: {e}")))?;
        let queue = Queue {
            tx,
            signal,
            writer: handle.thread().clone(),
        };
        let stop_maintenance = Arc::new(tokio::sync::Notify::new());
        let maintenance = tokio::spawn(retention::run_maintenance_loop(
            store.clone(),
            config.maintenance_interval,
            stop_maintenance.clone(),
        ));
        let recorder = Recorder {
            inner: Arc::new(RecorderInner {
                queue: Some(queue.clone()),
                redactor: side.redactor.clone(),
                store: Some(store.clone()),
                dropped: AtomicU64::new(0),
            }),
        };
        let tasks = StoreTasks {
            queue,
            writer: handle,
            checkpointer,
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
                queue: None,
                redactor: Redactor::default(),
                store: None,
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Whether records go anywhere; callers skip building them when not.
    pub fn is_enabled(&self) -> bool {
        self.inner.queue.is_some()
    }

    /// Encodes headers for a [`Record`], redacting the store's sensitive
    /// names.
    pub fn encode_headers(&self, headers: &http::HeaderMap) -> StoredHeaders {
        StoredHeaders::encode(headers, &self.inner.redactor)
    }

    /// Queues `rec` for writing. Never waits: if the queue is full, the
    /// store is disabled or the writer has stopped, the record is dropped
    /// and counted.
    pub fn record(&self, rec: Record) {
        let sent = match &self.inner.queue {
            Some(queue) => queue.send_record(rec),
            None => false,
        };
        if !sent {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(METRIC_RECORDS_DROPPED).increment(1);
        }
    }

    /// How many records wait for the writer right now: how far behind it
    /// is. A benchmark samples it to find the writer's stalls.
    pub fn queued(&self) -> usize {
        self.inner
            .queue
            .as_ref()
            .map_or(0, |q| q.signal.queued.load(Ordering::Relaxed))
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
        if self
            .inner
            .queue
            .as_ref()
            .is_some_and(|q| q.signal.stopped.load(Ordering::SeqCst))
        {
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
        if let Some(queue) = &self.inner.queue {
            queue.round_trip(Msg::Flush).await;
        }
    }

    /// Runs one statement on the writer's connection, so tests can flip
    /// per-connection pragmas such as `query_only` or `max_page_count`.
    #[cfg(test)]
    async fn exec_on_writer(&self, sql: &str) {
        let queue = self.inner.queue.as_ref().expect("an enabled recorder");
        queue.round_trip(|ack| Msg::Exec(sql.to_owned(), ack)).await;
    }
}

impl StoreTasks {
    /// Writes everything queued so far, stops the writer and maintenance and
    /// closes the database. Records sent afterwards are dropped and counted.
    pub async fn shutdown(self) {
        self.queue.round_trip(Msg::Shutdown).await;
        let writer = self.writer;
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the store writer thread panicked"),
            Err(e) => tracing::error!(error = %e, "waiting for the store writer failed"),
        }
        let checkpointer = self.checkpointer;
        if let Err(e) = tokio::task::spawn_blocking(move || checkpointer.stop()).await {
            tracing::error!(error = %e, "waiting for the checkpoint thread failed");
        }
        self.stop_maintenance.notify_one();
        if let Err(e) = self.maintenance.await {
            tracing::error!(error = %e, "the store maintenance task failed");
        }
        self.store.close().await;
    }
}

/// Opens the writer's own connection to a database the store has already
/// created and migrated. `synchronous`, the busy handler, the log's
/// automatic checkpoints and its size limit are per-connection settings;
/// WAL mode is a property of the file.
fn open_connection(path: &Path, config: &super::StoreConfig) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_handler(Some(retry_lock))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints run on their own thread (see `checkpoint.rs`), not inside
    // this connection's commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // This connection is the one that starts the log over after a
    // checkpoint, so its limit is the one that cuts the file back.
    conn.pragma_update(None, "journal_size_limit", schema::wal_limit(config))?;
    // The values this connection writes satisfy the schema's CHECK
    // constraints by construction: `kind` comes from [`Kind`], `truncated`
    // from a bool, and `body_encoding` is left to its default. Evaluating
    // the checks anyway was about 5% of the writer's instructions per row.
    // Other connections (maintenance, a user's `sqlite3`) still enforce them.
    conn.pragma_update(None, "ignore_check_constraints", true)?;
    Ok(conn)
}

/// The writer's busy handler: tries again every [`LOCK_RETRY`] until
/// [`BUSY_TIMEOUT`] has passed.
fn retry_lock(tries: i32) -> bool {
    let waited = LOCK_RETRY * u32::try_from(tries).unwrap_or(u32::MAX);
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    thread::sleep(LOCK_RETRY);
    true
}

/// The columns the writer fills, in the order [`bind_record`] binds them.
/// The first [`LEAN_PARAMS`] are the ones every request fills; the rest are
/// empty for most rows (see [`Shape`]).
const COLUMNS: [&str; PARAMS_PER_ROW] = [
    "ts",
    "duration_us",
    "route",
    "upstream",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "client_identity",
    "peer",
    "tls_version",
    "request_headers",
    "response_headers",
    "sni",
    // Not bound for lean rows:
    "kind",
    "query",
    "error",
    "truncated",
    "request_body",
    "response_body",
];

/// Parameters per full row: one per column in [`COLUMNS`].
const PARAMS_PER_ROW: usize = 21;

/// Parameters per lean row: the leading columns of [`COLUMNS`].
const LEAN_PARAMS: usize = 15;

/// Rows per multi-row `INSERT`. Each statement execution opens a cursor on
/// the table and every index and runs the statement's prologue and
/// epilogue; sharing that among eight rows cut the writer's CPU time per
/// row by about a third in a standalone loop with this schema (more rows
/// per statement gained nothing more).
const ROWS_PER_INSERT: usize = 8;

/// Which columns a row needs bound.
///
/// Nearly every row is a request without a query string, an error or
/// captured bodies. Its statement names `kind` as a literal and leaves the
/// empty columns to their defaults, so the writer binds 15 parameters
/// instead of 21; each bound parameter costs the writer one pass through
/// rusqlite and SQLite's bind path (text is copied), and skipping six took
/// about 6% off the writer's instructions per row in a standalone loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Lean,
    Full,
}

impl Shape {
    fn of(rec: &Record) -> Shape {
        let lean = rec.kind == Kind::Request
            && rec.query.is_none()
            && rec.error.is_none()
            && !rec.truncated
            && rec.request_body.is_none()
            && rec.response_body.is_none();
        if lean {
            Shape::Lean
        } else {
            Shape::Full
        }
    }

    fn params(self) -> usize {
        match self {
            Shape::Lean => LEAN_PARAMS,
            Shape::Full => PARAMS_PER_ROW,
        }
    }
}

/// `INSERT OR ROLLBACK INTO exchanges (...) VALUES (?, ...), ...` for
/// `rows` rows of `shape`.
///
/// `OR ROLLBACK` matters for speed, not only for failures: a plain `INSERT`
/// of several rows could fail halfway, so SQLite keeps a statement journal
/// (a temporary file) to undo just that statement, which cost more than the
/// multi-row statement saved. A failed batch is given up whole anyway (see
/// [`Writer::write_batch`]), so rolling back the whole transaction on a
/// constraint error loses nothing.
fn insert_sql(shape: Shape, rows: usize) -> String {
    let n = shape.params();
    let mut columns = COLUMNS[..n].join(", ");
    let mut row = vec!["?"; n].join(", ");
    if shape == Shape::Lean {
        columns.push_str(", kind");
        row.push_str(", 'request'");
    }
    format!(
        "INSERT OR ROLLBACK INTO exchanges ({columns}) VALUES {}",
        vec![format!("({row})"); rows].join(", ")
    )
}

/// The prepared statements' SQL for one [`Shape`].
struct InsertSql {
    one: String,
    many: String,
}

impl InsertSql {
    fn new(shape: Shape) -> InsertSql {
        InsertSql {
            one: insert_sql(shape, 1),
            many: insert_sql(shape, ROWS_PER_INSERT),
        }
    }
}

/// The writer thread's state.
struct Writer {
    store: Store,
    conn: Connection,
    rx: Receiver<Msg>,
    signal: Arc<Signal>,
    /// Redacts query strings; headers arrive redacted.
    redactor: Redactor,
    batch_size: usize,
    flush_interval: Duration,
    warn: WarnLimiter,
    /// Reused for every row.
    peer: String,
    /// While the database fails, no probe before this: one failure is
    /// followed by the next try a full probe interval later, even when the
    /// writer wakes sooner.
    next_probe: Instant,
    /// The SQL of the single-row and the multi-row inserts, per shape.
    insert_lean: InsertSql,
    insert_full: InsertSql,
    /// The checkpoint thread, woken after each commit.
    checkpoints: Thread,
}

/// What the writer does after a message.
enum Next {
    Continue,
    Stop,
}

impl Writer {
    /// Gathers up to `batch_size` records or whatever arrived within
    /// `flush_interval` of the first one, and inserts them in one
    /// transaction. Never returns early on errors; it ends only on shutdown
    /// or when every sender is gone.
    fn run(mut self) {
        let mut batch: Vec<Record> = Vec::with_capacity(self.batch_size.min(1024));
        loop {
            if !self.pending() {
                // Idle: a sender wakes us for the first record; wake anyway
                // now and then to notice that the senders are gone, and to
                // probe a failing database.
                let writable = self.store.health_state().is_writable();
                thread::park_timeout(if writable { IDLE_WAKE } else { PROBE_INTERVAL });
                if !self.pending() {
                    match self.rx.try_recv() {
                        Err(TryRecvError::Disconnected) => break,
                        Err(TryRecvError::Empty) => {
                            if !self.store.health_state().is_writable()
                                && Instant::now() >= self.next_probe
                            {
                                self.probe();
                            }
                            continue;
                        }
                        Ok(msg) => {
                            if let Next::Stop = self.handle(msg, &mut batch) {
                                break;
                            }
                        }
                    }
                }
            }
            // Let the batch fill for up to the flush interval.
            let deadline = Instant::now() + self.flush_interval;
            while self.signal.queued.load(Ordering::SeqCst) < self.batch_size
                && !self.signal.urgent.load(Ordering::SeqCst)
            {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                thread::park_timeout(deadline - now);
            }
            self.signal.urgent.store(false, Ordering::SeqCst);
            if let Next::Stop = self.drain(&mut batch) {
                break;
            }
        }
        self.write_batch(&mut batch);
        self.signal.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether records or a control message wait.
    fn pending(&self) -> bool {
        self.signal.queued.load(Ordering::SeqCst) > 0 || self.signal.urgent.load(Ordering::SeqCst)
    }

    /// Takes everything queued now, writing a batch whenever one fills.
    fn drain(&mut self, batch: &mut Vec<Record>) -> Next {
        loop {
            match self.rx.try_recv() {
                Ok(msg) => {
                    if let Next::Stop = self.handle(msg, batch) {
                        return Next::Stop;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Next::Stop,
            }
        }
        self.write_batch(batch);
        Next::Continue
    }

    fn handle(&mut self, msg: Msg, batch: &mut Vec<Record>) -> Next {
        match msg {
            Msg::Record(rec) => {
                self.signal.queued.fetch_sub(1, Ordering::SeqCst);
                batch.push(rec);
                if batch.len() >= self.batch_size {
                    self.write_batch(batch);
                }
            }
            Msg::Flush(ack) => {
                self.write_batch(batch);
                let _ = ack.send(());
            }
            Msg::Shutdown(ack) => {
                self.write_batch(batch);
                self.signal.stopped.store(true, Ordering::SeqCst);
                let _ = ack.send(());
                return Next::Stop;
            }
            #[cfg(test)]
            Msg::Exec(sql, ack) => {
                self.write_batch(batch);
                self.conn.execute_batch(&sql).expect("test statement");
                let _ = ack.send(());
            }
        }
        Next::Continue
    }

    /// Writes and empties `batch`, updating health and metrics either way.
    fn write_batch(&mut self, batch: &mut Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let result = self.insert(batch);
        batch.clear();
        let store = &self.store;
        match result {
            Ok(()) => {
                self.checkpoints.unpark();
                metrics::counter!(METRIC_RECORDS_WRITTEN).increment(count);
                if !store.health_state().is_writable() {
                    tracing::info!("the recording database is writable again");
                }
                store.health_state().mark_ok();
            }
            Err(e) => {
                self.next_probe = Instant::now() + PROBE_INTERVAL;
                // The batch is given up rather than retried: a database that
                // is full or read-only stays so for longer than the queue can
                // hold, and holding on to rows would only delay the newest.
                metrics::counter!(METRIC_RECORDS_FAILED).increment(count);
                store
                    .health_state()
                    .failed
                    .fetch_add(count, Ordering::Relaxed);
                store.health_state().mark_failed(e.to_string());
                if let Some(suppressed) = self.warn.check() {
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

    /// Inserts `batch` in one transaction. If anything fails the transaction
    /// is rolled back (SQLite may already have done so itself after a full
    /// disk or an I/O error; the connection stays usable either way).
    fn insert(&mut self, batch: &[Record]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (shape, sql) in [
            (Shape::Lean, &self.insert_lean),
            (Shape::Full, &self.insert_full),
        ] {
            let rows: Vec<&Record> = batch.iter().filter(|r| Shape::of(r) == shape).collect();
            let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
            if chunks.len() > 0 {
                let mut many = tx.prepare_cached(&sql.many)?;
                for chunk in chunks.by_ref() {
                    for (i, rec) in chunk.iter().enumerate() {
                        let offset = i * shape.params();
                        bind_record(
                            &mut many,
                            offset,
                            shape,
                            rec,
                            &self.redactor,
                            &mut self.peer,
                        )?;
                    }
                    many.raw_execute()?;
                }
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut one = tx.prepare_cached(&sql.one)?;
                for rec in rest {
                    bind_record(&mut one, 0, shape, rec, &self.redactor, &mut self.peer)?;
                    one.raw_execute()?;
                }
            }
        }
        tx.commit()
    }

    /// A one-row write that tells whether the database accepts writes again.
    fn probe(&mut self) {
        let result = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .and_then(|tx| {
                tx.execute(
                    "INSERT INTO writer_probe (id, ts) VALUES (1, ?1) \
                     ON CONFLICT (id) DO UPDATE SET ts = excluded.ts",
                    [to_micros(std::time::SystemTime::now())],
                )?;
                tx.commit()
            });
        let store = &self.store;
        match result {
            Ok(()) => {
                tracing::info!("the recording database is writable again");
                store.health_state().mark_ok();
            }
            Err(e) => {
                self.next_probe = Instant::now() + PROBE_INTERVAL;
                store.health_state().mark_failed(e.to_string());
            }
        }
        store.refresh_size();
    }
}

/// Binds the columns of `rec` that `shape` names, in [`COLUMNS`] order, to
/// the parameters after `offset`. Query strings are redacted here; headers
/// arrive redacted. `peer` is scratch space for the client address (text
/// parameters are copied when bound, so one buffer serves every row).
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    offset: usize,
    shape: Shape,
    rec: &Record,
    redactor: &Redactor,
    peer: &mut String,
) -> rusqlite::Result<()> {
    peer.clear();
    if let Some(addr) = rec.peer {
        write_peer(peer, addr);
    }
    let lean: [&dyn ToSql; LEAN_PARAMS] = [
        &to_micros(rec.ts),
        &i64::try_from(rec.duration.as_micros()).unwrap_or(i64::MAX),
        &rec.route.as_deref(),
        &rec.upstream.as_deref(),
        &rec.method.as_ref().map(http::Method::as_str),
        &rec.path.as_deref(),
        &rec.status,
        &i64::try_from(rec.bytes_in).unwrap_or(i64::MAX),
        &i64::try_from(rec.bytes_out).unwrap_or(i64::MAX),
        &rec.client_identity.as_deref(),
        &rec.peer.map(|_| peer.as_str()),
        &rec.tls_version,
        &rec.request_headers.as_str(),
        &rec.response_headers.as_str(),
        &rec.sni.as_deref(),
    ];
    for (i, value) in lean.into_iter().enumerate() {
        stmt.raw_bind_parameter(offset + i + 1, value)?;
    }
    if shape == Shape::Lean {
        return Ok(());
    }
    let query = rec.query.as_deref().map(|q| redactor.redact_query(q));
    let rest: [&dyn ToSql; PARAMS_PER_ROW - LEAN_PARAMS] = [
        &rec.kind.as_str(),
        &query.as_deref(),
        &rec.error.as_deref(),
        &rec.truncated,
        &rec.request_body.as_deref(),
        &rec.response_body.as_deref(),
    ];
    for (i, value) in rest.into_iter().enumerate() {
        stmt.raw_bind_parameter(offset + LEAN_PARAMS + i + 1, value)?;
    }
    Ok(())
}

/// Writes `addr` as `Display` does (`1.2.3.4:5` or `[::1]:5`), without
/// the formatting machinery for the common IPv4 case: it runs once per row.
fn write_peer(out: &mut String, addr: std::net::SocketAddr) {
    let std::net::SocketAddr::V4(v4) = addr else {
        use std::fmt::Write as _;
        let _ = write!(out, "{addr}");
        return;
    };
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
    out.push(':');
    out.push_str(digits.format(v4.port()));
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use bytes::Bytes;

    use crate::store::testing::{count_rows, header_map, request, start, temp_config};

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

    /// 38 records in one batch, half of them lean (a plain request) and half
    /// full (a query string, an error, a body, a failed handshake), mixed:
    /// per shape two multi-row statements and three single rows. Every row
    /// must come back with its own values, none shifted into a neighbour's
    /// columns, and a lean row's unbound columns must hold their defaults.
    #[tokio::test]
    async fn every_row_of_a_multi_row_insert_keeps_its_own_values() {
        let (_dir, mut cfg) = temp_config();
        cfg.flush_interval = Duration::from_secs(3600);
        let (recorder, tasks) = start(&cfg).await;
        let count = 2 * (2 * ROWS_PER_INSERT + 3);
        let full = |i: usize| i % 2 == 1;
        for i in 0..count {
            let mut rec = request(&format!("/r/{i}"));
            rec.status = Some(200 + i as u16);
            rec.bytes_out = i as u64 * 10;
            rec.peer = Some(format!("10.0.0.{i}:{}", 4000 + i).parse().unwrap());
            rec.client_identity = (i % 4 == 0).then(|| format!("spiffe://t/{i}"));
            rec.request_headers = recorder.encode_headers(&header_map(&[("x-n", &i.to_string())]));
            if full(i) {
                rec.query = (i % 3 != 0).then(|| format!("n={i}&token=secret{i}"));
                rec.error = (i % 3 == 0).then(|| format!("reason_{i}"));
                rec.response_body = (i % 5 == 1).then(|| Bytes::from(format!("body {i}")));
                rec.truncated = i % 5 == 1;
                if i % 7 == 0 {
                    rec.kind = Kind::Handshake;
                }
            }
            assert_eq!(Shape::of(&rec) == Shape::Full, full(i), "record {i}");
            recorder.record(rec);
        }
        recorder.flush().await;
        let filter = Filter {
            limit: 100,
            ..Filter::default()
        };
        let rows = recorder.query(&filter).await.unwrap();
        assert_eq!(rows.len(), count);
        for i in 0..count {
            let path = format!("/r/{i}");
            let row = rows
                .iter()
                .find(|r| r.path.as_deref() == Some(path.as_str()))
                .unwrap_or_else(|| panic!("no row for {path}"));
            assert_eq!(row.status, Some(200 + i as u16), "{path}");
            assert_eq!(row.bytes_out, i as u64 * 10, "{path}");
            assert_eq!(
                row.peer.as_deref(),
                Some(format!("10.0.0.{i}:{}", 4000 + i).as_str())
            );
            assert_eq!(
                row.client_identity,
                (i % 4 == 0).then(|| format!("spiffe://t/{i}"))
            );
            assert_eq!(
                row.request_headers,
                vec![("x-n".to_owned(), i.to_string())],
                "{path}"
            );
            let kind = if full(i) && i % 7 == 0 {
                Kind::Handshake
            } else {
                Kind::Request
            };
            assert_eq!(row.kind, kind, "{path}");
            let query = (full(i) && i % 3 != 0).then(|| format!("n={i}&token=[redacted]"));
            assert_eq!(row.query, query, "{path}");
            let error = (full(i) && i % 3 == 0).then(|| format!("reason_{i}"));
            assert_eq!(row.error, error, "{path}");
            let body = (full(i) && i % 5 == 1).then(|| Bytes::from(format!("body {i}")));
            assert_eq!(row.response_body, body, "{path}");
            assert_eq!(row.truncated, full(i) && i % 5 == 1, "{path}");
            assert_eq!(row.request_body, None, "{path}");
        }
        tasks.shutdown().await;
    }

    /// A row that fails inside a batch takes the whole batch with it (no
    /// half-written batch), and the writer carries on with the next one.
    #[tokio::test]
    async fn a_failing_row_fails_its_whole_batch_and_the_next_batch_is_written() {
        let (_dir, mut cfg) = temp_config();
        cfg.flush_interval = Duration::from_secs(3600);
        let (recorder, tasks) = start(&cfg).await;
        recorder
            .exec_on_writer(
                "CREATE TEMP TRIGGER refuse_bad BEFORE INSERT ON exchanges \
                 WHEN NEW.path = '/bad' BEGIN SELECT RAISE(ABORT, 'bad row'); END",
            )
            .await;
        for i in 0..ROWS_PER_INSERT + 2 {
            recorder.record(request(&format!("/ok/{i}")));
        }
        recorder.record(request("/bad"));
        recorder.flush().await;
        let store = recorder.store().unwrap().clone();
        assert_eq!(count_rows(&store).await, 0);
        assert_eq!(recorder.failed(), ROWS_PER_INSERT as u64 + 3);
        let health = recorder.health();
        assert!(!health.writable, "{health:?}");
        assert!(
            health
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("bad row"),
            "{health:?}"
        );

        recorder.record(request("/after"));
        recorder.flush().await;
        assert_eq!(count_rows(&store).await, 1);
        assert!(recorder.health().writable);
        tasks.shutdown().await;
    }

    /// The writer's connection skips the CHECK constraints; any other
    /// connection to the file still enforces them.
    #[tokio::test]
    async fn other_connections_still_enforce_the_check_constraints() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        recorder.record(request("/fine"));
        recorder.flush().await;
        let other = Connection::open(&cfg.path).unwrap();
        for values in ["(1, 1, 'bogus', 0)", "(1, 1, 'request', 7)"] {
            let err = other
                .execute(
                    &format!(
                        "INSERT INTO exchanges (ts, duration_us, kind, truncated) VALUES {values}"
                    ),
                    [],
                )
                .unwrap_err();
            assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        }
        assert_eq!(count_rows(recorder.store().unwrap()).await, 1);
        tasks.shutdown().await;
    }

    #[test]
    fn peers_are_written_as_display_writes_them() {
        for text in [
            "127.0.0.1:443",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:8443",
            "[fe80::1%2]:1",
        ] {
            let addr: std::net::SocketAddr = text.parse().unwrap();
            let mut out = String::from("stale");
            out.clear();
            write_peer(&mut out, addr);
            assert_eq!(out, addr.to_string());
        }
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
        // The writer waits for a batch to fill (it cannot: the batch is
        // larger than the queue) or for the interval, so exactly
        // `queue_capacity` records fit until the flush below.
        cfg.flush_interval = Duration::from_secs(3600);
        let (recorder, tasks) = start(&cfg).await;
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

        recorder.exec_on_writer("PRAGMA query_only = ON").await;
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
        recorder.exec_on_writer("PRAGMA query_only = OFF").await;
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
        recorder
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

        recorder
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
