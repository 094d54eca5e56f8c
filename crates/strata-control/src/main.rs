//! `strata-control`: serve the control plane, or manage users offline.

use std::path::PathBuf;

/// Argon2id allocates 19 MiB per hash. Under glibc's allocator each thread
/// that ran one kept those pages (a burst of 100 enrolments left the
/// process at 650 MiB RSS); mimalloc returns them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use strata_control::{Config, Control};

#[derive(Parser)]
#[command(version, about = "Strata control plane")]
struct Cli {
    /// TOML configuration file (optional; STRATA_* variables override it).
    #[arg(long, short, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the agents' WebSocket, the dashboard and /metrics.
    Serve,
    /// Create a user; the password is read from standard input.
    AddUser {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging("info", telemetry::LogFormat::Text);
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::AddUser { email, role } => add_user(config, &email, &role).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, database = %redact_url(&config.database_url()), "strata-control serving");
    let control = Control::open(config)
        .await
        .context("opening the control plane")?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    strata_control::run(control, listener, shutdown).await?;
    Ok(())
}

async fn add_user(config: Config, email: &str, role: &str) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .context("reading the password")?;
    let store = strata_control::store::Store::connect(&config.database_url()).await?;
    let email = strata_control::domain::Email::parse(email)?;
    let role = strata_control::domain::Role::parse(role)?;
    let password = strata_control::domain::NewPassword::parse(password.trim_end_matches('\n'))?;
    store
        .insert_user(&strata_control::store::UserRow {
            id: strata_control::domain::new_id("usr"),
            email: email.as_str().to_owned(),
            password_hash: auth::hash_password(password.expose())?,
            role: role.as_str().into(),
            created_at: strata_control::service::now_ms(),
        })
        .await?;
    println!("created {} ({})", email.as_str(), role.as_str());
    Ok(())
}

/// A database URL without its password, for logs.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}
