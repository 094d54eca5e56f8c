//! The `mtls-proxy` command: run the proxy, check a configuration, or query
//! the recorded exchanges.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mtls_proxy::app::{self, Listeners};
use mtls_proxy::config::Config;
use mtls_proxy::runtime::Runtime;
use mtls_proxy::store::{format, Filter, FilterParams, OutputFormat, Store};

// Every proxied request allocates and frees a few dozen blocks (header maps,
// read buffers, futures, records). With mimalloc the proxy runs about 3%
// fewer instructions per request, and recording about 6% fewer, than with
// the C library's allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mtls-proxy",
    version,
    about = "A mutual-TLS reverse proxy that records every exchange"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(
            short,
            long,
            env = "MTLS_PROXY_CONFIG",
            default_value = "mtls-proxy.toml"
        )]
        config: PathBuf,
    },
    /// Validate a configuration: parse it and load every file it names.
    Check {
        /// Configuration file.
        #[arg(
            short,
            long,
            env = "MTLS_PROXY_CONFIG",
            default_value = "mtls-proxy.toml"
        )]
        config: PathBuf,
    },
    /// Query recorded exchanges.
    Logs(Box<LogsArgs>),
}

#[derive(clap::Args)]
struct LogsArgs {
    /// The record database; taken from the configuration when omitted.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Configuration file naming the database.
    #[arg(
        short,
        long,
        env = "MTLS_PROXY_CONFIG",
        default_value = "mtls-proxy.toml"
    )]
    config: PathBuf,
    /// Start time: RFC 3339 or a duration ago such as `15m`.
    #[arg(long)]
    since: Option<String>,
    /// End time, same forms as `--since`.
    #[arg(long)]
    until: Option<String>,
    /// Status class (`4xx`, `5xx`) or exact status.
    #[arg(long)]
    status: Option<String>,
    /// Route name.
    #[arg(long)]
    route: Option<String>,
    /// Client identity, exact or a glob.
    #[arg(long)]
    identity: Option<String>,
    /// Path glob, e.g. `/api/*`.
    #[arg(long)]
    path: Option<String>,
    /// `request` or `handshake`.
    #[arg(long)]
    kind: Option<String>,
    /// Most rows to print (newest first).
    #[arg(long)]
    limit: Option<String>,
    /// `table` or `json` (JSON lines).
    #[arg(long, default_value = "table")]
    format: OutputFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // On one CPU (a small VM, or pinned with taskset) a single-threaded
    // runtime avoids work-stealing overhead; with more, use them all.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let format = match config.log.format.as_str() {
                "json" => telemetry::LogFormat::Json,
                _ => telemetry::LogFormat::Text,
            };
            telemetry::init_logging(&config.log.level, format);
            let listeners = Listeners::bind(&config).await?;
            app::run(config, listeners, shutdown_signal()).await
        }
        Command::Check { config } => {
            let config = Config::load(&config)?;
            Runtime::build(&config)?;
            println!(
                "{}: ok ({} routes)",
                config.source.display(),
                config.routes.len()
            );
            Ok(())
        }
        Command::Logs(args) => {
            let LogsArgs {
                db,
                config,
                since,
                until,
                status,
                route,
                identity,
                path,
                kind,
                limit,
                format,
            } = *args;
            let db = match db {
                Some(db) => db,
                None => Config::load(&config)?
                    .store
                    .map(|s| s.path)
                    .context("the configuration has no [store]; pass --db")?,
            };
            let filter = Filter::parse(&FilterParams {
                since,
                until,
                status,
                route,
                identity,
                path,
                kind,
                limit,
            })?;
            let store = Store::open_read_only(&db).await?;
            let rows = store.query(&filter).await?;
            format::write_rows(std::io::stdout().lock(), &rows, format)?;
            Ok(())
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
