//! Write transactions that survive SQLite's automatic rollbacks.
//!
//! SQLite rolls a transaction back on its own after some errors (`SQLITE_FULL`,
//! `SQLITE_IOERR`, `SQLITE_BUSY`, `SQLITE_NOMEM`). sqlx's `Transaction` then
//! fails to issue its own `ROLLBACK` and keeps counting the connection as
//! inside a transaction, so every later `begin` on it fails: one full disk
//! would break the writer for good. Issuing `BEGIN`/`COMMIT`/`ROLLBACK`
//! ourselves keeps the connection usable whatever happened.

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};

/// An open `BEGIN IMMEDIATE` transaction on a pooled connection. Finish it
/// with [`WriteTx::commit`] or [`WriteTx::rollback`]; if it is dropped
/// unfinished (a cancelled task), the connection is closed rather than
/// returned to the pool in the middle of a transaction.
pub(crate) struct WriteTx {
    conn: PoolConnection<Sqlite>,
    finished: bool,
}

impl WriteTx {
    /// Starts a transaction that holds the write lock from the start, so
    /// waiting for another process's lock goes through the busy timeout
    /// instead of failing at the first write.
    pub(crate) async fn begin(pool: &SqlitePool) -> Result<WriteTx, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        Ok(WriteTx {
            conn,
            finished: false,
        })
    }

    /// The connection, for the statements of the transaction.
    pub(crate) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Commits if `result` is `Ok`, rolls back otherwise, and passes the
    /// result on (or the commit error).
    pub(crate) async fn finish<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match result {
            Ok(value) => self.commit().await.map(|()| value),
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    /// Commits; on failure the transaction is rolled back (unless SQLite
    /// already did) and the commit error returned.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        match sqlx::query("COMMIT").execute(&mut *self.conn).await {
            Ok(_) => {
                self.finished = true;
                Ok(())
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    /// Rolls back. Never fails: if SQLite already rolled back there is
    /// nothing to do, and if the rollback itself fails the connection is
    /// discarded so the next transaction starts on a clean one.
    pub(crate) async fn rollback(mut self) {
        match sqlx::query("ROLLBACK").execute(&mut *self.conn).await {
            Ok(_) => self.finished = true,
            Err(e) if e.to_string().contains("no transaction is active") => self.finished = true,
            Err(e) => {
                tracing::warn!(error = %e, "rollback failed; discarding the write connection");
            }
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}
