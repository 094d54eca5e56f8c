//! `strata-receiver --stream-id ...`: the process that receives one stream.
//!
//! The control plane starts one per stream under its supervisor and hands it
//! the stream's 32-byte RIST pre-shared key and its destinations (URLs and
//! stream keys) on standard input as one JSON document, which is read
//! to the end and closed: the key is never in the argument list, the
//! environment or a file. The receiver listens for RIST on the stream's UDP
//! port with that key (librist in-process, see the `rist` crate), pushes the
//! stream to every destination at once (`egress`), rebuilds an output that
//! wedges (`media`), and serves a Unix socket on which it reports `ready`,
//! `stats` once a second (RIST in, each output), `error` and `stopped`, and
//! accepts `stop`.
//!
//! The socket, not its parent process, is its tie to the control plane: a
//! restarted control plane connects to it again and finds it running. It
//! does not talk to agents, touch the database, or write the key anywhere.

mod egress;
mod media;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use secrets::Redacted;
use strata_protocol::local::{
    line, ReceiverCommand, ReceiverDestination, ReceiverEvent, ReceiverSecrets,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
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
    /// RIST buffer in milliseconds: how long a lost packet is waited for
    /// (and so the added latency).
    #[arg(long, default_value_t = 1000)]
    latency_ms: u32,
    /// Rebuild an output that wrote nothing for this many seconds while
    /// the input kept arriving.
    #[arg(long, default_value_t = 5)]
    egress_stall_secs: u64,
    /// Also record the stream (MPEG-TS as received) to this file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Benchmarks: append `hash unix_ns` of sampled datagrams to this file.
    #[arg(long, env = "STRATA_PACKET_TRACE")]
    packet_trace: Option<PathBuf>,
}

/// Length of the RIST pre-shared key.
const PSK_LEN: usize = 32;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init_logging("info", telemetry::LogFormat::Text);
    gstreamer::init().context("initialising GStreamer")?;
    let (psk, destinations) = read_secrets().context("reading the stream's secrets on stdin")?;
    tracing::info!(
        stream_id = %args.stream_id,
        destinations = destinations.len(),
        "secrets received"
    );
    run(args, psk, destinations).await
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
    media: Arc<media::MediaState>,
    events: broadcast::Sender<ReceiverEvent>,
}

async fn run(
    args: Args,
    psk: Redacted<[u8; PSK_LEN]>,
    mut destinations: Vec<ReceiverDestination>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.record {
        destinations.push(ReceiverDestination {
            platform: "recording".into(),
            url: format!("file://{}", path.display()),
            stream_key: String::new(),
        });
    }
    let (events, _) = broadcast::channel(64);
    let media = media::start(
        media::MediaConfig {
            stream_id: args.stream_id.clone(),
            bind: args.bind.clone(),
            port: args.port,
            latency_ms: args.latency_ms,
            stall_after: Duration::from_secs(args.egress_stall_secs.max(1)),
            packet_trace: args.packet_trace.clone(),
        },
        psk.expose(),
        destinations,
        events.clone(),
    )?;
    let listener = bind_socket(&args.socket)?;
    let shared = Arc::new(Shared {
        stream_id: args.stream_id.clone(),
        port: args.port,
        media: media.state.clone(),
        events,
    });
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<String>(4);
    tracing::info!(stream_id = %args.stream_id, port = args.port, "receiver ready");

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
    tokio::task::spawn_blocking(move || drop(media)).await?;
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

async fn report_stats(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bytes = 0u64;
    loop {
        tick.tick().await;
        let media = &shared.media;
        let bytes = media.bytes_in.load(Ordering::Relaxed);
        let bitrate_kbps = (bytes - last_bytes) as f64 * 8.0 / 1000.0 / every.as_secs_f64();
        last_bytes = bytes;
        let mut rist = media.rist.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rist.undecodable = media.undecodable.load(Ordering::Relaxed);
        let egress = media
            .egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = shared.events.send(ReceiverEvent::Stats {
            stream_id: shared.stream_id.clone(),
            bytes_in: bytes,
            packets_in: media.packets_in.load(Ordering::Relaxed),
            bitrate_kbps,
            rist: Some(rist),
            egress,
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
