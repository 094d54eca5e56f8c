//! Receiver processes, one per active stream, under the `supervisor` crate.
//!
//! The control plane starts `strata-receiver` with the stream's secrets on
//! its standard input (a pipe closed right after: never an argument, an
//! environment variable or a file, so neither `ps` nor `/proc/PID/environ`
//! nor the disk shows them) and connects to the Unix socket the receiver
//! serves in the run directory (mode 0700). Everything it reports arrives
//! as [`RxEvent`]s on one channel.
//!
//! A receiver is not tied to the control plane's process: it runs in its own
//! process group and outlives a restart; the next control plane finds its
//! socket and adopts it ([`Receivers::adopt`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use strata_protocol::local::{line, ReceiverCommand, ReceiverEvent, ReceiverSecrets};
use supervisor::{Backoff, Event, Spec, Supervisor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// What a receiver (or its supervisor) reported about a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RxEvent {
    Ready {
        pid: u32,
    },
    Stats {
        bytes_in: u64,
        bitrate_kbps: f64,
    },
    Error(String),
    Stopped(String),
    /// A new process was started for a stream whose earlier one exited.
    Respawned {
        pid: u32,
    },
    /// The supervisor stopped restarting it.
    GaveUp(String),
}

struct Handle {
    supervisor: Supervisor,
    commands: mpsc::Sender<ReceiverCommand>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The receivers this control plane supervises.
pub struct Receivers {
    program: PathBuf,
    run_dir: PathBuf,
    backoff: Backoff,
    handles: Mutex<HashMap<String, Handle>>,
    events: mpsc::UnboundedSender<(String, RxEvent)>,
}

/// How long a receiver has to serve its socket after it starts.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Receivers {
    pub fn new(
        program: PathBuf,
        run_dir: PathBuf,
        events: mpsc::UnboundedSender<(String, RxEvent)>,
    ) -> std::io::Result<Receivers> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&run_dir)?;
        Ok(Receivers {
            program,
            run_dir,
            backoff: Backoff::default(),
            handles: Mutex::new(HashMap::new()),
            events,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn socket_path(&self, stream_id: &str) -> PathBuf {
        self.run_dir.join(format!("{stream_id}.sock"))
    }

    fn spec_factory(
        &self,
        stream_id: &str,
        port: u16,
        secrets: ReceiverSecrets,
    ) -> impl FnMut() -> Spec + Send + 'static {
        let program = self.program.clone();
        let socket = self.socket_path(stream_id);
        let log_file = self.run_dir.join(format!("{stream_id}.log"));
        let stream_id = stream_id.to_owned();
        // Serialised once; the bytes live only in this closure's memory.
        let payload = serde_json::to_vec(&secrets).unwrap_or_default();
        move || Spec {
            program: program.clone(),
            args: vec![
                "--stream-id".into(),
                stream_id.clone().into(),
                "--socket".into(),
                socket.clone().into_os_string(),
                "--port".into(),
                port.to_string().into(),
            ],
            env: Vec::new(),
            stdin_secret: Some(payload.clone()),
            log_file: Some(log_file.clone()),
        }
    }

    /// Starts a receiver for a stream.
    pub fn spawn(&self, stream_id: &str, port: u16, secrets: ReceiverSecrets) {
        let factory = self.spec_factory(stream_id, port, secrets);
        self.supervise(stream_id, None, factory);
    }

    /// Adopts the receiver of a stream left running by an earlier control
    /// plane. Returns false when none answers on its socket. `standby` are
    /// the secrets a replacement gets should the adopted process die (the
    /// control plane does not know the old key: it was never stored).
    pub async fn adopt(&self, stream_id: &str, port: u16, standby: ReceiverSecrets) -> bool {
        let path = self.socket_path(stream_id);
        let Ok(Ok(conn)) =
            tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(&path)).await
        else {
            return false;
        };
        let mut lines = BufReader::new(conn).lines();
        let first = tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await;
        let pid = match first {
            Ok(Ok(Some(text))) => match serde_json::from_str::<ReceiverEvent>(&text) {
                Ok(ReceiverEvent::Ready {
                    stream_id: sid,
                    pid,
                    ..
                }) if sid == stream_id => pid,
                _ => return false,
            },
            _ => return false,
        };
        if !supervisor::pid_alive(pid) {
            return false;
        }
        let factory = self.spec_factory(stream_id, port, standby);
        self.supervise(stream_id, Some(pid), factory);
        true
    }

    fn supervise(
        &self,
        stream_id: &str,
        adopted: Option<u32>,
        factory: impl FnMut() -> Spec + Send + 'static,
    ) {
        let (sup_tx, mut sup_rx) = mpsc::unbounded_channel();
        let supervisor = match adopted {
            Some(pid) => Supervisor::adopt(pid, factory, self.backoff, sup_tx),
            None => Supervisor::start(factory, self.backoff, sup_tx),
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let events = self.events.clone();
        let id = stream_id.to_owned();
        let supervision = tokio::spawn(async move {
            let mut starts = 0u32;
            while let Some(event) = sup_rx.recv().await {
                match event {
                    Event::Started { pid, adopted } => {
                        starts += 1;
                        if starts > 1 && !adopted {
                            let _ = events.send((id.clone(), RxEvent::Respawned { pid }));
                        }
                    }
                    Event::Exited { pid, code } => {
                        tracing::warn!(stream_id = %id, pid, ?code, "receiver exited");
                    }
                    Event::Restarting { attempt, delay } => {
                        tracing::info!(stream_id = %id, attempt, ?delay, "restarting receiver");
                    }
                    Event::GaveUp { reason } => {
                        let _ = events.send((id.clone(), RxEvent::GaveUp(reason)));
                    }
                    Event::Stopped => {}
                }
            }
        });
        let link = tokio::spawn(link(
            self.socket_path(stream_id),
            stream_id.to_owned(),
            self.events.clone(),
            cmd_rx,
        ));
        self.lock().insert(
            stream_id.to_owned(),
            Handle {
                supervisor,
                commands: cmd_tx,
                tasks: vec![supervision, link],
            },
        );
    }

    pub fn is_supervised(&self, stream_id: &str) -> bool {
        self.lock().contains_key(stream_id)
    }

    pub fn pid(&self, stream_id: &str) -> Option<u32> {
        self.lock().get(stream_id).and_then(|h| h.supervisor.pid())
    }

    /// Kills a stream's receiver so that its supervisor starts a new one
    /// (with the same secrets) after the usual backoff.
    pub fn restart(&self, stream_id: &str) {
        if let Some(handle) = self.lock().get(stream_id) {
            handle.supervisor.restart();
        }
    }

    /// Stops a stream's receiver: asks it over its socket, then SIGTERM,
    /// then SIGKILL after a grace period.
    pub async fn stop(&self, stream_id: &str) {
        let Some(handle) = self.lock().remove(stream_id) else {
            return;
        };
        let _ = handle.commands.try_send(ReceiverCommand::Stop);
        handle.supervisor.stop(Duration::from_secs(5)).await;
        for task in handle.tasks {
            task.abort();
        }
        let _ = std::fs::remove_file(self.socket_path(stream_id));
    }

    /// Stops supervising every receiver and leaves them running (for a
    /// control plane that shuts down: the next one adopts them).
    pub fn detach_all(&self) {
        for (_, handle) in self.lock().drain() {
            for task in handle.tasks {
                task.abort();
            }
            drop(handle.supervisor);
        }
    }
}

/// Keeps a connection to a receiver's socket, reconnecting after the
/// process is restarted, and forwards its events and our commands.
async fn link(
    path: PathBuf,
    stream_id: String,
    events: mpsc::UnboundedSender<(String, RxEvent)>,
    mut commands: mpsc::Receiver<ReceiverCommand>,
) {
    loop {
        let Some(conn) = connect(&path).await else {
            tracing::warn!(%stream_id, "receiver socket did not appear");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (read, mut write) = conn.into_split();
        let mut lines = BufReader::new(read).lines();
        loop {
            tokio::select! {
                next = lines.next_line() => match next {
                    Ok(Some(text)) => match serde_json::from_str::<ReceiverEvent>(&text) {
                        Ok(event) => {
                            let event = match event {
                                ReceiverEvent::Ready { pid, .. } => RxEvent::Ready { pid },
                                ReceiverEvent::Stats { bytes_in, bitrate_kbps, .. } => {
                                    RxEvent::Stats { bytes_in, bitrate_kbps }
                                }
                                ReceiverEvent::Error { message, .. } => RxEvent::Error(message),
                                ReceiverEvent::Stopped { reason, .. } => RxEvent::Stopped(reason),
                            };
                            let _ = events.send((stream_id.clone(), event));
                        }
                        Err(e) => tracing::warn!(%stream_id, error = %e, "unreadable receiver event"),
                    },
                    Ok(None) | Err(_) => break,
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        let _ = write.write_all(line(&command).as_bytes()).await;
                    }
                    None => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(path: &Path) -> Option<UnixStream> {
    let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(conn) = UnixStream::connect(path).await {
            return Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Shared with tests: the receivers' run directory inside the data dir.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

/// A receiver's stdin payload, built from the stream's secrets.
pub fn receiver_secrets(
    psk_hex: String,
    destinations: Vec<(String, String, String)>,
) -> ReceiverSecrets {
    ReceiverSecrets {
        psk: psk_hex,
        destinations: destinations
            .into_iter()
            .map(
                |(platform, url, key)| strata_protocol::local::ReceiverDestination {
                    platform,
                    url,
                    stream_key: key,
                },
            )
            .collect(),
    }
}
