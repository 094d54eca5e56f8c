//! Live build logs: each line a deployment writes is stored (so it is kept
//! per deployment) and broadcast to whoever follows it right now.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// One event of a deployment's log.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line, numbered from 0 within its deployment.
    Line { seq: i64, text: String },
    /// The deployment reached a final status.
    End {
        status: String,
        reason: Option<String>,
    },
}

/// Senders of deployments being worked on.
#[derive(Default)]
pub struct LogHub {
    live: Mutex<HashMap<i64, broadcast::Sender<LogEvent>>>,
}

impl LogHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, broadcast::Sender<LogEvent>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows a deployment, whether its worker started yet or not (the
    /// worker takes up the same channel).
    pub fn subscribe(&self, deployment: i64) -> broadcast::Receiver<LogEvent> {
        self.open(deployment).subscribe()
    }

    /// Drops the channel of a deployment that already ended, once nobody
    /// follows it.
    pub fn forget_ended(&self, deployment: i64) {
        let mut live = self.lock();
        if live
            .get(&deployment)
            .is_some_and(|s| s.receiver_count() == 0)
        {
            live.remove(&deployment);
        }
    }

    pub(crate) fn open(&self, deployment: i64) -> broadcast::Sender<LogEvent> {
        self.lock()
            .entry(deployment)
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    pub(crate) fn close(&self, deployment: i64, end: LogEvent) {
        if let Some(sender) = self.lock().remove(&deployment) {
            let _ = sender.send(end);
        }
    }
}
