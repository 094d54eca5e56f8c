//! Child processes that are started, watched, restarted with backoff and
//! stopped on request.
//!
//! A [`Supervisor`] runs one logical service: it spawns the program described
//! by a [`Spec`] (made afresh for every start, so a restart can carry new
//! arguments or secrets), waits for it to exit, and starts it again after a
//! growing delay ([`Backoff`]) until [`Supervisor::stop`] is called or the
//! restart budget is spent. It can also take over a process it did not start
//! ([`Supervisor::adopt`]), for example one left running by an earlier
//! instance of the product, and watch it by pid until it exits.
//!
//! Children run in their own process group and are not killed when the
//! supervisor or its owner goes away: a product that wants its children to
//! outlive a restart (Strata's receivers) gets that by default, and one that
//! does not calls `stop`. A secret can be handed to a child on its standard
//! input ([`Spec::stdin_secret`]), which is closed right after, so it never
//! appears in the argument list, the environment or a file.
//!
//! This crate knows nothing about what its children do; it reports
//! [`Event`]s and leaves health judgements to the product.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

/// Errors from starting a child.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("opening log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("handing the secret to {program}: {source}")]
    Stdin {
        program: PathBuf,
        source: std::io::Error,
    },
}

/// How to start the program once.
#[derive(Clone, Default)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Bytes written to the child's standard input, which is then closed.
    pub stdin_secret: Option<Vec<u8>>,
    /// Where the child's stdout and stderr go (appended, mode 0600). Without
    /// one they are discarded: a pipe to the supervisor would break, and
    /// could kill the child, once the supervisor's process is gone.
    pub log_file: Option<PathBuf>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("stdin_secret", &self.stdin_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Delays between restarts: `initial`, doubled each time up to `max`, reset
/// once a child has stayed up for `stable`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable: Duration,
    /// Restarts allowed in a row without a stable run; `None` is unlimited.
    pub max_restarts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            stable: Duration::from_secs(60),
            max_restarts: Some(10),
        }
    }
}

impl Backoff {
    /// The delay before restart number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What happened to the supervised service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A process is running (spawned by us, or adopted).
    Started { pid: u32, adopted: bool },
    /// The process exited; `code` is `None` when a signal ended it.
    Exited { pid: u32, code: Option<i32> },
    /// A restart is scheduled after `delay`.
    Restarting { attempt: u32, delay: Duration },
    /// The restart budget is spent; nothing runs any more.
    GaveUp { reason: String },
    /// `stop` was called and the process is gone.
    Stopped,
}

/// A handle on one supervised service. Dropping it leaves the process
/// running and stops supervising it.
pub struct Supervisor {
    stop_tx: watch::Sender<Option<Duration>>,
    pid_rx: watch::Receiver<Option<u32>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts one process from `spec`, in its own process group.
pub fn spawn_once(spec: &Spec) -> Result<tokio::process::Child, SupervisorError> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .kill_on_drop(false)
        .stdin(if spec.stdin_secret.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    match &spec.log_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| SupervisorError::Log {
                        path: path.clone(),
                        source,
                    })
            };
            cmd.stdout(open()?).stderr(open()?);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    Ok(child)
}

async fn hand_secret(
    child: &mut tokio::process::Child,
    spec: &Spec,
) -> Result<(), SupervisorError> {
    let Some(secret) = &spec.stdin_secret else {
        return Ok(());
    };
    let err = |source| SupervisorError::Stdin {
        program: spec.program.clone(),
        source,
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(secret).await.map_err(err)?;
        stdin.shutdown().await.map_err(err)?;
    }
    Ok(())
}

/// Whether a process with this pid exists (and is not a zombie we could reap).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    // A zombie still answers signal 0; its state in /proc says it is gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// How often an adopted process (which we cannot wait on) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

enum Running {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Child(c) => c.id(),
            Running::Adopted(pid) => Some(*pid),
        }
    }

    /// Waits for the process to exit; returns its exit code when known.
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Running::Child(c) => c.wait().await.ok().and_then(|s| s.code()),
            Running::Adopted(pid) => {
                while pid_alive(*pid) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                None
            }
        }
    }
}

impl Supervisor {
    /// Starts supervising: spawns `make_spec()` now and again after each exit.
    pub fn start<F>(make_spec: F, backoff: Backoff, events: mpsc::UnboundedSender<Event>) -> Self
    where
        F: FnMut() -> Spec + Send + 'static,
    {
        Supervisor::run(None, make_spec, backoff, events)
    }

    /// Takes over a running process by pid; when it exits, restarts from
    /// `make_spec()` like [`Supervisor::start`].
    pub fn adopt<F>(
        pid: u32,
        make_spec: F,
        backoff: Backoff,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self
    where
        F: FnMut() -> Spec + Send + 'static,
    {
        Supervisor::run(Some(pid), make_spec, backoff, events)
    }

    fn run<F>(
        adopted: Option<u32>,
        mut make_spec: F,
        backoff: Backoff,
        events: mpsc::UnboundedSender<Event>,
    ) -> Self
    where
        F: FnMut() -> Spec + Send + 'static,
    {
        let (stop_tx, mut stop_rx) = watch::channel::<Option<Duration>>(None);
        let (pid_tx, pid_rx) = watch::channel::<Option<u32>>(None);
        let task = tokio::spawn(async move {
            let mut attempt = 0u32;
            let mut next = adopted.map(Running::Adopted);
            loop {
                let mut running = match next.take() {
                    Some(r) => r,
                    None => {
                        let spec = make_spec();
                        match spawn_once(&spec) {
                            Ok(mut child) => {
                                if let Err(e) = hand_secret(&mut child, &spec).await {
                                    tracing::warn!(error = %e, "child did not take its secret");
                                }
                                Running::Child(child)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "spawn failed");
                                let _ = events.send(Event::GaveUp {
                                    reason: e.to_string(),
                                });
                                return;
                            }
                        }
                    }
                };
                let pid = running.pid().unwrap_or(0);
                let adopted = matches!(running, Running::Adopted(_));
                let _ = pid_tx.send(Some(pid));
                let _ = events.send(Event::Started { pid, adopted });
                let started = tokio::time::Instant::now();

                let stop_grace = tokio::select! {
                    code = running.wait() => {
                        let _ = pid_tx.send(None);
                        let _ = events.send(Event::Exited { pid, code });
                        None
                    }
                    changed = stop_rx.changed() => match changed {
                        Ok(()) => *stop_rx.borrow(),
                        // The handle was dropped: leave the process running.
                        Err(_) => return,
                    }
                };
                if let Some(grace) = stop_grace {
                    signal(pid, Signal::SIGTERM);
                    if tokio::time::timeout(grace, running.wait()).await.is_err() {
                        signal(pid, Signal::SIGKILL);
                        running.wait().await;
                    }
                    let _ = pid_tx.send(None);
                    let _ = events.send(Event::Stopped);
                    return;
                }

                if started.elapsed() >= backoff.stable {
                    attempt = 0;
                }
                if backoff.max_restarts.is_some_and(|max| attempt >= max) {
                    let _ = events.send(Event::GaveUp {
                        reason: format!("exited {attempt} times in a row"),
                    });
                    return;
                }
                let delay = backoff.delay(attempt);
                let _ = events.send(Event::Restarting { attempt, delay });
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    changed = stop_rx.changed() => {
                        if changed.is_ok() {
                            let _ = events.send(Event::Stopped);
                        }
                        return;
                    }
                }
            }
        });
        Supervisor {
            stop_tx,
            pid_rx,
            task,
        }
    }

    /// The pid of the running process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid_rx.borrow()
    }

    /// Stops the service: SIGTERM, then SIGKILL after `grace`. Returns once
    /// the process is gone and no restart will follow.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop_tx.send(Some(grace));
        let _ = self.task.await;
    }

    /// Kills the running process so that it is restarted (for a child
    /// judged unhealthy). The restart follows the backoff.
    pub fn restart(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            ..Backoff::default()
        };
        let delays: Vec<u64> = (0..7).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(1000).as_secs(), 30);
    }
}
