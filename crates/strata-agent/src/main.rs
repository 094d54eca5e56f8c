//! `strata-agent`: enrol a sender with the control plane, then run it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use strata_agent::media::{parse_psk, LinkSpec, MediaOptions};
use strata_agent::sender::{Source, Stream};
use strata_agent::session::Options;

#[derive(Parser)]
#[command(version, about = "Strata sender agent")]
struct Cli {
    /// Where the agent keeps its key and enrolment.
    #[arg(
        long,
        global = true,
        env = "STRATA_AGENT_STATE_DIR",
        default_value = "strata-agent"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol with a one-time token (`id.secret`) from the dashboard or API.
    Enrol {
        /// The control plane's base URL, e.g. http://control:8080.
        #[arg(long)]
        control: String,
        /// The token; read from STRATA_ENROLMENT_TOKEN when not given.
        #[arg(long, env = "STRATA_ENROLMENT_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Connect to the control plane and carry out its commands.
    Run {
        #[arg(long, default_value_t = 1000)]
        stats_interval_ms: u64,
        #[arg(long)]
        hostname: Option<String>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Send one stream without a control plane (tests, benchmarks, field
    /// checks): the key is read as hex from standard input, stats are
    /// printed as JSON lines once a second.
    Send {
        #[arg(long, default_value = "manual")]
        stream_id: String,
        /// The receiver's `HOST:PORT`, for links without an address.
        #[arg(long)]
        receiver: String,
        /// `test-pattern`, `file:PATH` or `v4l2:/dev/videoN`.
        #[arg(long)]
        input: Option<String>,
        #[command(flatten)]
        media: MediaArgs,
    },
}

#[derive(Args)]
struct MediaArgs {
    /// A path to the receiver: `NAME[=HOST[:PORT]][@WEIGHT]` (repeatable).
    /// Without any, one link to the receiver the control plane names.
    #[arg(long = "link", value_parser = LinkSpec::parse)]
    links: Vec<LinkSpec>,
    /// RIST buffer (ms): how long a lost packet may be resent.
    #[arg(long, default_value_t = 1000)]
    buffer_ms: u32,
    /// Encoded picture size, `WIDTHxHEIGHT`.
    #[arg(long, default_value = "1280x720")]
    video_size: String,
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Starting video bitrate; adaptive bitrate moves it between the bounds.
    #[arg(long, default_value_t = 2500)]
    bitrate_kbps: u32,
    #[arg(long, default_value_t = 300)]
    min_kbps: u32,
    #[arg(long, default_value_t = 6000)]
    max_kbps: u32,
    /// Benchmarks: append `hash unix_ns` of sampled datagrams to this file.
    #[arg(long, env = "STRATA_PACKET_TRACE")]
    packet_trace: Option<PathBuf>,
}

impl MediaArgs {
    fn options(self) -> anyhow::Result<MediaOptions> {
        let (w, h) = self
            .video_size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .context("--video-size must be WIDTHxHEIGHT")?;
        Ok(MediaOptions {
            links: self.links,
            buffer_ms: self.buffer_ms,
            width: w,
            height: h,
            fps: self.fps.max(1),
            start_kbps: self.bitrate_kbps,
            min_kbps: self.min_kbps.min(self.bitrate_kbps),
            max_kbps: self.max_kbps.max(self.bitrate_kbps),
            packet_trace: self.packet_trace,
        })
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn hostname(given: Option<String>) -> String {
    given
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "strata-sender".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging("info", telemetry::LogFormat::Text);
    match cli.command {
        Command::Enrol {
            control,
            token,
            hostname: name,
        } => {
            let enrolment =
                strata_agent::identity::enrol(&cli.state_dir, &control, &token, &hostname(name))
                    .await
                    .context("enrolling")?;
            println!("enrolled as {}", enrolment.sender_id);
            Ok(())
        }
        Command::Run {
            stats_interval_ms,
            hostname: name,
            media,
        } => {
            let options = Options {
                state_dir: cli.state_dir,
                hostname: hostname(name),
                stats_interval: Duration::from_millis(stats_interval_ms.max(10)),
                media: media.options()?,
            };
            strata_agent::session::run(options, shutdown_signal()).await?;
            Ok(())
        }
        Command::Send {
            stream_id,
            receiver,
            input,
            media,
        } => {
            let mut key = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut key)
                .context("reading the key on stdin")?;
            let psk = parse_psk(&key).map_err(anyhow::Error::msg)?;
            let (host, port) = receiver
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .context("--receiver must be HOST:PORT")?;
            let source = Source::parse(input.as_deref()).map_err(anyhow::Error::msg)?;
            let config = media.options()?.send_config(&host, port, psk, source);
            let stream = Stream::start(&stream_id, config).map_err(anyhow::Error::msg)?;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let shutdown = shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(stats) = stream.stats() {
                            println!("{}", serde_json::to_string(&stats)?);
                        }
                        for e in stream.take_errors() {
                            eprintln!("{e}");
                        }
                    }
                    _ = &mut shutdown => break,
                }
            }
            drop(stream);
            Ok(())
        }
    }
}
