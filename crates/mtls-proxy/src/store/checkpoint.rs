//! Checkpoints of the write-ahead log, on a thread of their own.
//!
//! In WAL mode every committed page goes to the log first; a checkpoint
//! copies the log back into the database file and syncs both, so that the
//! log can start over. SQLite runs one by itself, on the committing
//! connection, whenever the log passes 1,000 pages: that put the copy and
//! two `fsync` calls (up to 126 ms each, seen with `strace` on the writer
//! thread during `bench/mtls-proxy/writer`) inside the writer's commit,
//! with records piling up in the queue meanwhile. The writer's connection
//! therefore turns that off (`wal_autocheckpoint = 0`) and wakes this
//! thread after each commit instead. Its `PASSIVE` checkpoints never take
//! the write lock: the writer goes on appending while pages are copied.
//!
//! Checkpointing soon after each commit keeps each one small. The log
//! starts over (and the writer's `journal_size_limit` cuts the file back)
//! only when a checkpoint reached its end before the next write; under
//! steady writes and maintenance a passive checkpoint may never get there,
//! and the log grew to gigabytes in `bench/mtls-proxy/writer`. So once the
//! log holds more than its limit, a `RESTART` checkpoint follows the passive
//! one: it holds writers off only while it copies what the passive one left
//! (little) and waits at most [`RESTART_WAIT`] for readers, and makes the
//! next write start the log over.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::WarnLimiter;

/// The least time between two checkpoints: each one syncs the database
/// file, so a burst of small commits shares one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How long the thread sleeps when nothing wakes it.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// How long a `RESTART` checkpoint waits for readers (and so holds the
/// writer off) before it gives up until the next try.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// The checkpoint thread and what stops it.
pub(crate) struct Checkpointer {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens a connection of its own to the database at `path` and starts
    /// the thread.
    /// Once the log holds more than `restart_after` pages, it is made to
    /// start over.
    pub(crate) fn start(path: &Path, restart_after: i64) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(RESTART_WAIT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("recorder-wal".to_owned())
                .spawn(move || run(&conn, restart_after, &stop))
                .map_err(|e| {
                    rusqlite::Error::ToSqlConversionFailure(
                        format!("cannot start the checkpoint thread: {e}").into(),
                    )
                })?
        };
        Ok(Checkpointer { thread, stop })
    }

    /// The handle that [`Checkpointer::wake`]s the thread after a commit.
    pub(crate) fn waker(&self) -> Thread {
        self.thread.thread().clone()
    }

    /// Stops the thread after a last checkpoint and waits for it.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

fn run(conn: &Connection, restart_after: i64, stop: &AtomicBool) {
    let mut warn = WarnLimiter::new(Duration::from_secs(300));
    let mut last = Instant::now();
    loop {
        thread::park_timeout(IDLE_WAKE);
        let stopping = stop.load(Ordering::SeqCst);
        let since = last.elapsed();
        if since < CHECKPOINT_EVERY && !stopping {
            thread::sleep(CHECKPOINT_EVERY - since);
        }
        last = Instant::now();
        // (busy, pages in the log, pages copied); a checkpoint that cannot
        // go all the way (a reader still needs old pages) is finished by a
        // later one.
        let checkpoint = |mode: &str| {
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                row.get::<_, i64>(1)
            })
        };
        let result = checkpoint("PASSIVE").and_then(|pages| {
            if pages > restart_after {
                checkpoint("RESTART")
            } else {
                Ok(pages)
            }
        });
        if let Err(e) = result {
            if let Some(suppressed) = warn.check() {
                tracing::warn!(
                    error = %e,
                    suppressed_warnings = suppressed,
                    "checkpointing the recording database's log failed"
                );
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::schema::wal_path;
    use crate::store::testing::{request, start, temp_config};

    /// With the writer's own checkpoints off, the log still starts over:
    /// after a burst, the checkpoint thread copies it back and the next
    /// commit reuses it from the start, so the file stays near the size of
    /// one burst's pages rather than growing with every batch.
    #[tokio::test]
    async fn the_log_is_checkpointed_and_reused_while_records_arrive() {
        let (_dir, mut cfg) = temp_config();
        cfg.batch_size = 256;
        let (recorder, tasks) = start(&cfg).await;
        let mut largest = 0;
        for round in 0..40 {
            for i in 0..500 {
                let mut rec = request(&format!("/round/{round}/{i}"));
                rec.response_body = Some(bytes::Bytes::from(vec![b'x'; 1024]));
                recorder.record(rec);
            }
            recorder.flush().await;
            // Give the checkpoint thread its turn between bursts.
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            largest = largest.max(std::fs::metadata(wal_path(&cfg.path)).unwrap().len());
        }
        let db = std::fs::metadata(&cfg.path).unwrap().len();
        // 40 bursts wrote about 20 MiB; the log never held more than a few
        // bursts' worth, and the database file holds the rows.
        assert!(largest < 8 << 20, "log grew to {largest} bytes");
        assert!(db > 16 << 20, "database file only {db} bytes");
        assert_eq!(recorder.dropped(), 0);
        tasks.shutdown().await;
    }
}
