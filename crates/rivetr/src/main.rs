//! The `rivetr` binary: `serve` runs the server, every other command is a
//! client of its API.

use clap::Parser;
use figment::providers::Serialized;
use rivetr::cli::{Cli, Command, ServeArgs};
use rivetr::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // On one CPU (a small VM, or pinned with taskset) a single-threaded
    // runtime avoids work stealing: the router measured about a fifth
    // slower on a one-worker multi-threaded runtime than mtls-proxy on this
    // one. With more CPUs, one worker each.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| 0),
            _ => rivetr::cli::run_client(cli).await,
        }
    });
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn overrides(args: &ServeArgs) -> figment::Figment {
    let mut f = figment::Figment::new();
    let mut set = |key: &str, value: serde_json::Value| {
        f = std::mem::take(&mut f).merge(Serialized::default(key, value));
    };
    if let Some(v) = &args.database {
        set("database", serde_json::json!(v));
    }
    if let Some(v) = &args.data_dir {
        set("data_dir", serde_json::json!(v));
    }
    if let Some(v) = &args.key_file {
        set("key_file", serde_json::json!(v));
    }
    if !args.router_listen.is_empty() {
        set("router_listen", serde_json::json!(args.router_listen));
    }
    if let Some(v) = &args.api_listen {
        set("api_listen", serde_json::json!(v));
    }
    if let Some(v) = &args.base_domain {
        set("base_domain", serde_json::json!(v));
    }
    if let Some(v) = &args.docker_host {
        set("docker_host", serde_json::json!(v));
    }
    f
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), overrides(&args))?;
    telemetry::init_logging(&config.log, telemetry::LogFormat::Text);
    let listeners = rivetr::server::Listeners::bind(&config).await?;
    let api = listeners.api.local_addr()?;
    let routers: Vec<String> = listeners
        .router
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    rivetr::server::run(config, listeners, shutdown, move |started| {
        println!(
            "rivetr: API on http://{api}, router on {}",
            routers.join(", ")
        );
        if let Some(token) = started.admin_token {
            println!("rivetr: admin token (shown once, keep it): {token}");
            println!("rivetr: use it with `rivetr login {token}` or RIVETR_TOKEN");
        }
    })
    .await
}
