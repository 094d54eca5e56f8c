//! Running the proxy: listeners, the recorder, hot reload (SIGHUP and file
//! changes) and graceful shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use edge::{Server, ServerSettings, Transport};
use tokio::net::TcpListener;

use crate::admin::{self, AdminGuard, AdminState};
use crate::config::Config;
use crate::proxy::MtlsProxy;
use crate::runtime::{fingerprint, Runtime};
use crate::store::{Recorder, Store, StoreTasks};

/// Listeners bound before the server starts, so tests can bind port 0 and
/// read the addresses back.
#[derive(Debug, Default)]
pub struct Listeners {
    /// HTTPS listener.
    pub https: Option<TcpListener>,
    /// Plain HTTP listener.
    pub http: Option<TcpListener>,
    /// Admin listener.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        async fn bind(addr: &Option<String>, what: &str) -> anyhow::Result<Option<TcpListener>> {
            match addr {
                Some(a) => {
                    Ok(Some(TcpListener::bind(a).await.with_context(|| {
                        format!("binding the {what} listener on {a}")
                    })?))
                }
                None => Ok(None),
            }
        }
        Ok(Listeners {
            https: bind(&config.server.https, "https").await?,
            http: bind(&config.server.http, "http").await?,
            admin: bind(&config.server.admin, "admin").await?,
        })
    }
}

/// Opens the store and starts its tasks. A store that cannot be opened is
/// logged and replaced by a disabled recorder: recording problems never keep
/// the proxy from serving.
pub async fn open_recorder(config: &Config) -> (Recorder, Option<StoreTasks>) {
    let Some(store_config) = &config.store else {
        return (Recorder::disabled(), None);
    };
    let opened = Store::open(store_config).await.and_then(Recorder::start);
    match opened {
        Ok((recorder, tasks)) => (recorder, Some(tasks)),
        Err(e) => {
            tracing::error!(
                "recording is off: cannot open {}: {e}",
                store_config.path.display()
            );
            (Recorder::disabled(), None)
        }
    }
}

/// Engine settings from the configuration.
pub fn server_settings(config: &Config) -> ServerSettings {
    let s = &config.server;
    ServerSettings {
        max_connections: s.max_connections,
        handshake_timeout: s.handshake_timeout,
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        max_header_bytes: s.max_header_bytes,
        max_body_bytes: s.max_body_bytes,
        http2: s.http2,
        shutdown_grace: s.shutdown_grace,
        max_connections_per_ip: s.max_connections_per_ip,
        metric_prefix: "mtls_proxy".into(),
    }
}

/// Loads the configuration again and swaps the runtime if it builds. A bad
/// file is logged and counted; the old runtime keeps serving.
pub fn reload(proxy: &MtlsProxy, path: &Path) -> Result<(), String> {
    let result = Config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|c| Runtime::build(&c).map_err(|e| e.to_string()));
    match result {
        Ok(runtime) => {
            proxy.swap(runtime);
            metrics::counter!("mtls_proxy_reloads_total", "result" => "ok").increment(1);
            tracing::info!("configuration reloaded from {}", path.display());
            Ok(())
        }
        Err(e) => {
            metrics::counter!("mtls_proxy_reloads_total", "result" => "error").increment(1);
            tracing::error!("reload rejected, the previous configuration stays in force: {e}");
            Err(e)
        }
    }
}

/// Runs the proxy until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let metrics = telemetry::metrics().context("setting up metrics")?;
    crate::store::describe_metrics();
    let runtime = Runtime::build(&config)?;
    let (recorder, store_tasks) = open_recorder(&config).await;
    let proxy = Arc::new(MtlsProxy::new(runtime, recorder.clone()));
    let server = Server::new(proxy.clone(), server_settings(&config));

    let mut tasks = tokio::task::JoinSet::new();
    let mut serving = Vec::new();
    for (listener, transport) in [
        (listeners.https, Transport::Tls),
        (listeners.http, Transport::Plain),
    ] {
        if let Some(l) = listener {
            tracing::info!("listening on {} ({transport:?})", l.local_addr()?);
            serving.push((l, transport));
        }
    }
    let (stop_proxy, proxy_stopped) = tokio::sync::watch::channel(false);
    let proxying = {
        let server = server.clone();
        let mut stopped = proxy_stopped;
        tokio::spawn(async move {
            server
                .run(serving, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    if let Some(l) = listeners.admin {
        tracing::info!("admin listening on {}", l.local_addr()?);
        let state = AdminState {
            proxy: proxy.clone(),
            metrics,
            cert_expiry_margin: config.server.cert_expiry_margin,
            guard: Arc::new(AdminGuard::from_config(
                &config.server,
                l.local_addr().ok(),
            )?),
        };
        let mut stopped = admin_stopped.clone();
        tasks.spawn(async move {
            let app = admin::router(state);
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    let watcher = tokio::spawn(watch_for_reload(
        proxy.clone(),
        config.source.clone(),
        config.server.watch_interval,
    ));

    shutdown.await;
    tracing::info!("shutting down: draining connections");
    watcher.abort();
    stop_proxy.send_replace(true);
    let _ = proxying.await;
    stop_admin.send_replace(true);
    while tasks.join_next().await.is_some() {}
    if let Some(t) = store_tasks {
        t.shutdown().await;
    }
    Ok(())
}

/// Reloads on SIGHUP and whenever a file the runtime was built from changes.
async fn watch_for_reload(proxy: Arc<MtlsProxy>, path: PathBuf, interval: std::time::Duration) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: {e}");
            None
        }
    };
    let mut seen = fingerprint(&proxy.runtime().files);
    let poll = !interval.is_zero();
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hup_recv => {
                tracing::info!("SIGHUP received");
                let _ = reload(&proxy, &path);
                seen = fingerprint(&proxy.runtime().files);
            }
            _ = tokio::time::sleep(interval), if poll => {
                let now = fingerprint(&proxy.runtime().files);
                if now != seen {
                    tracing::info!("configuration files changed");
                    // Remember this state even when the reload fails, so a
                    // broken file is reported once, not every interval.
                    let _ = reload(&proxy, &path);
                    seen = fingerprint(&proxy.runtime().files);
                }
            }
        }
    }
}
