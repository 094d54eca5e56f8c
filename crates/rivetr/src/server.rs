//! `rivetr serve`: opens the state, connects the container engine,
//! reconciles, and runs the router, the API and the deploy queue until the
//! shutdown future completes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::engine::{Engine, EngineSettings};
use crate::router::Router;
use crate::store::Store;

/// What `serve` prints once at first start: the admin token.
pub struct Started {
    pub admin_token: Option<String>,
}

/// Listeners bound by the caller (tests bind port 0).
pub struct Listeners {
    pub router: Vec<TcpListener>,
    pub api: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let mut router = Vec::new();
        for addr in &config.router_listen {
            router.push(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("router_listen: cannot listen on {addr}"))?,
            );
        }
        let api = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("api_listen: cannot listen on {}", config.api_listen))?;
        Ok(Listeners { router, api })
    }
}

/// Runs everything until `shutdown`. `on_start` hears the one-time admin
/// token (printed by the binary) once the API is about to answer.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_start: impl FnOnce(Started),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: creating {}", config.data_dir.display()))?;
    let store = Store::open(&config.database)
        .await
        .with_context(|| format!("database: {}", config.database.display()))?;
    let secrets = secrets::SecretBox::load_or_create(&config.key_file)
        .with_context(|| format!("key_file: {}", config.key_file.display()))?;
    let runtime = crate::runtime::connect(config.docker_host.as_deref())
        .await
        .context("container engine")?;
    match runtime.ping().await {
        Ok(version) => tracing::info!(kind = runtime.kind(), %version, "container engine"),
        Err(e) => tracing::warn!(error = %e, "container engine did not answer a ping"),
    }
    let admin_token = if store.token_count().await? == 0 {
        Some(crate::issue_token(&store, "admin (first start)", "admin").await?)
    } else {
        None
    };
    let instance = store.instance_id().await?;
    let router = Arc::new(Router::new());
    let engine = Engine::new(
        store,
        runtime,
        router.clone(),
        Arc::new(secrets),
        EngineSettings {
            data_dir: config.data_dir.clone(),
            base_domain: config.base_domain.clone(),
            network: config.network.clone(),
            instance,
            max_concurrent: config.max_concurrent_builds,
            keep_images: config.keep_images,
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            stop_grace: Duration::from_secs(config.stop_grace_secs),
        },
    );
    if let Err(e) = engine.reconcile().await {
        tracing::error!(error = %e, "reconciling with the container engine; going on");
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics = telemetry::metrics().ok().map(Arc::new);
    let app = api::router(ApiState {
        engine: engine.clone(),
        metrics,
    });
    let api_stop = stopped();
    let api_task = tokio::spawn(async move {
        axum::serve(listeners.api, app)
            .with_graceful_shutdown(api_stop)
            .await
    });

    let settings = edge::ServerSettings {
        metric_prefix: "rivetr_router".into(),
        http2: false,
        shutdown_grace: Duration::from_secs(10),
        ..edge::ServerSettings::default()
    };
    let server = edge::Server::new(router, settings);
    let router_stop = stopped();
    let router_task = {
        let listeners = listeners
            .router
            .into_iter()
            .map(|l| (l, edge::Transport::Plain))
            .collect();
        tokio::spawn(async move { server.run(listeners, router_stop).await })
    };

    let queue_task = tokio::spawn(engine.clone().run_queue(stopped()));
    on_start(Started { admin_token });

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = queue_task.await;
    let _ = router_task.await;
    api_task.await?.context("API server")?;
    Ok(())
}
