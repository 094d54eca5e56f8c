//! Strata's control plane: users and roles, senders and their enrolment,
//! destinations with keys sealed at rest, streams and their state machine,
//! the port pool, the agents' WebSocket, receiver supervision, metrics,
//! alerts and the dashboard.
//!
//! Layers: [`domain`] (types, policy, state machine: no I/O), [`store`]
//! (SQL, SQLite or PostgreSQL), [`service::Control`] (operations; the one
//! place roles are checked), [`agents`] and [`receivers`] (the processes it
//! talks to), and [`http`] (axum delivery: thin handlers).
//!
//! It does not carry media: receivers and agents do (`strata-receiver`,
//! `strata-agent`). It never stores a stream's RIST key, and stores
//! destination URLs and keys only sealed with the key in `master.key`.

pub mod agents;
pub mod alerts;
pub mod config;
pub mod domain;
pub mod http;
pub mod receivers;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use service::Control;

/// Serves the control plane on `listener` until `shutdown` resolves. Running
/// receivers are left running for the next start to adopt.
pub async fn run(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = telemetry::metrics().ok();
    let alerts = alerts::spawn(control.clone());
    let csrf_key =
        secrets::KeyFile::load_or_create(&control.config().data_dir.join("csrf.key"), || {
            secrets::random_bytes::<32>().map(|k| k.to_vec())
        })
        .map_err(std::io::Error::other)?;
    let csrf_key: [u8; 32] = csrf_key
        .try_into()
        .map_err(|_| std::io::Error::other("csrf.key does not hold 32 bytes"))?;
    let state = http::AppState {
        control: control.clone(),
        metrics,
        csrf: Arc::new(auth::csrf::Csrf::new(&csrf_key)),
    };
    let result = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    alerts.abort();
    control.detach();
    result
}
