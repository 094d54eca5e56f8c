//! `strata-agent`: enrol a sender with the control plane, then run it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    },
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
        } => {
            let options = Options {
                state_dir: cli.state_dir,
                hostname: hostname(name),
                stats_interval: Duration::from_millis(stats_interval_ms.max(10)),
            };
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing the SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            strata_agent::session::run(options, shutdown).await?;
            Ok(())
        }
    }
}
