//! `strata-receiver --stream-id ...`: the process that receives one stream.
//!
//! The control plane starts one per stream under its supervisor and hands it
//! the stream's 32-byte RIST pre-shared key and its destinations (URLs and
//! stream keys) on standard input as one JSON document, which is read
//! to the end and closed: the key is never in the argument list, the
//! environment or a file. The receiver binds the stream's UDP port (the
//! media path, RIST in and RTMP/SRT out, arrives with the next stage and
//! takes this port and key as they are) and serves a Unix socket on which it
//! reports `ready`, `stats` once a second (what arrived on the port),
//! `error` and `stopped`, and accepts `stop`.
//!
//! The socket, not its parent process, is its tie to the control plane: a
//! restarted control plane connects to it again and finds it running. It
//! does not talk to agents, touch the database, or write the key anywhere.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use secrets::Redacted;
use strata_protocol::local::{
    line, ReceiverCommand, ReceiverDestination, ReceiverEvent, ReceiverSecrets,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener, UnixStream};
use tokio::sync::broadcast;

#[derive(Debug, Parser)]
#[command(version, about = "Receives one Strata stream")]
struct Args {
    /// The stream this process serves.
    #[arg(long)]
    stream_id: String,
    /// Unix socket to serve events and commands on.
    #[arg(long)]
    socket: PathBuf,
    /// UDP port assigned by the control plane.
    #[arg(long)]
    port: u16,
    /// Address to bind the UDP port on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// How often to report stats, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    stats_interval_ms: u64,
}

/// Length of the RIST pre-shared key.
const PSK_LEN: usize = 32;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("info", telemetry::LogFormat::Text);
    let (psk, destinations) = read_secrets().context("reading the stream's secrets on stdin")?;
    tracing::info!(
        stream_id = %args.stream_id,
        destinations = destinations.len(),
        "secrets received"
    );
    run(args, psk).await
}

/// Reads the stream's secrets (JSON) from stdin until EOF. Blocking is
/// fine: nothing else runs before the key is known.
fn read_secrets() -> anyhow::Result<(Redacted<[u8; PSK_LEN]>, Vec<ReceiverDestination>)> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin().take(64 * 1024).read_to_string(&mut text)?;
    let secrets: ReceiverSecrets =
        serde_json::from_str(&text).context("stdin is not the receiver's secrets document")?;
    let bytes = hex::decode(secrets.psk.trim()).context("the key is not hex")?;
    let key: [u8; PSK_LEN] = match bytes.try_into() {
        Ok(key) => key,
        Err(bytes) => bail!("the key is {} bytes, expected {PSK_LEN}", bytes.len()),
    };
    Ok((Redacted::new(key), secrets.destinations))
}

struct Shared {
    stream_id: String,
    port: u16,
    bytes_in: AtomicU64,
    packets_in: AtomicU64,
    events: broadcast::Sender<ReceiverEvent>,
}

async fn run(args: Args, _psk: Redacted<[u8; PSK_LEN]>) -> anyhow::Result<()> {
    let udp = UdpSocket::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("binding UDP port {}", args.port))?;
    let listener = bind_socket(&args.socket)?;
    let (events, _) = broadcast::channel(64);
    let shared = Arc::new(Shared {
        stream_id: args.stream_id.clone(),
        port: args.port,
        bytes_in: AtomicU64::new(0),
        packets_in: AtomicU64::new(0),
        events,
    });
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<String>(4);
    tracing::info!(stream_id = %args.stream_id, port = args.port, "receiver ready");

    tokio::spawn(count_udp(udp, shared.clone()));
    tokio::spawn(report_stats(
        shared.clone(),
        Duration::from_millis(args.stats_interval_ms.max(10)),
    ));
    let accept_shared = shared.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_controller(
                conn,
                accept_shared.clone(),
                stop_tx.clone(),
            ));
        }
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let reason = tokio::select! {
        Some(reason) = stop_rx.recv() => reason,
        _ = term.recv() => "terminated".to_owned(),
        _ = tokio::signal::ctrl_c() => "interrupted".to_owned(),
    };
    let _ = shared.events.send(ReceiverEvent::Stopped {
        stream_id: shared.stream_id.clone(),
        reason: reason.clone(),
    });
    // Give connected controllers a moment to read the last event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!(stream_id = %args.stream_id, %reason, "receiver stopped");
    Ok(())
}

fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    // A socket file left by a crashed predecessor would make bind fail.
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn count_udp(udp: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match udp.recv_from(&mut buf).await {
            Ok((n, _)) => {
                shared.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                shared.packets_in.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let _ = shared.events.send(ReceiverEvent::Error {
                    stream_id: shared.stream_id.clone(),
                    message: format!("UDP receive failed: {e}"),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn report_stats(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bytes = 0u64;
    loop {
        tick.tick().await;
        let bytes = shared.bytes_in.load(Ordering::Relaxed);
        let bitrate_kbps = (bytes - last_bytes) as f64 * 8.0 / 1000.0 / every.as_secs_f64();
        last_bytes = bytes;
        let _ = shared.events.send(ReceiverEvent::Stats {
            stream_id: shared.stream_id.clone(),
            bytes_in: bytes,
            packets_in: shared.packets_in.load(Ordering::Relaxed),
            bitrate_kbps,
        });
    }
}

async fn serve_controller(
    conn: UnixStream,
    shared: Arc<Shared>,
    stop: tokio::sync::mpsc::Sender<String>,
) {
    let (read, mut write) = conn.into_split();
    let mut events = shared.events.subscribe();
    let ready = ReceiverEvent::Ready {
        stream_id: shared.stream_id.clone(),
        pid: std::process::id(),
        port: shared.port,
    };
    if write.write_all(line(&ready).as_bytes()).await.is_err() {
        return;
    }
    let mut lines = BufReader::new(read).lines();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if write.write_all(line(&event).as_bytes()).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            next = lines.next_line() => match next {
                Ok(Some(text)) => match serde_json::from_str::<ReceiverCommand>(&text) {
                    Ok(ReceiverCommand::Stop) => {
                        let _ = stop.send("stopped by the control plane".into()).await;
                    }
                    Err(e) => {
                        let error = ReceiverEvent::Error {
                            stream_id: shared.stream_id.clone(),
                            message: format!("unknown command: {e}"),
                        };
                        if write.write_all(line(&error).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                },
                // The controller went away (for example it restarted): keep
                // receiving and wait for it to connect again.
                Ok(None) | Err(_) => return,
            }
        }
    }
}
