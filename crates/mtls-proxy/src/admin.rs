//! The admin listener: Prometheus metrics, health and readiness probes, and
//! record queries. Handlers are thin; the store and runtime do the work.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::proxy::MtlsProxy;
use crate::store::{format, Filter, FilterParams, OutputFormat, METRIC_STORE_SIZE};

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy (runtime and recorder).
    pub proxy: Arc<MtlsProxy>,
    /// The metrics registry.
    pub metrics: telemetry::Metrics,
    /// Readiness fails when a certificate expires within this.
    pub cert_expiry_margin: Duration,
}

/// The whole admin surface.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/logs", get(logs))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let recorder = s.proxy.recorder();
    let health = recorder.health();
    metrics::gauge!(METRIC_STORE_SIZE).set(health.size_bytes as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    store_writable: bool,
    store_error: Option<String>,
    certificates: Vec<CertificateStatus>,
}

#[derive(Serialize)]
struct CertificateStatus {
    names: String,
    expires_in_seconds: i64,
    ok: bool,
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let health = s.proxy.recorder().health();
    let now = SystemTime::now();
    let certificates: Vec<CertificateStatus> = s
        .proxy
        .runtime()
        .certificates
        .iter()
        .map(|(names, not_after)| {
            let left = match not_after.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            };
            CertificateStatus {
                names: names.clone(),
                expires_in_seconds: left,
                ok: left > s.cert_expiry_margin.as_secs() as i64,
            }
        })
        .collect();
    let ready = health.writable && certificates.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        store_writable: health.writable,
        store_error: health.last_error,
        certificates,
    };
    (status, Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(flatten)]
    filter: std::collections::HashMap<String, String>,
}

async fn logs(State(s): State<AdminState>, Query(q): Query<LogQuery>) -> Response {
    let params: FilterParams =
        match serde_json::to_value(&q.filter).and_then(serde_json::from_value) {
            Ok(p) => p,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        };
    let filter = match Filter::parse(&params) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let fmt = match q.format.as_deref().unwrap_or("json") {
        "json" => OutputFormat::Json,
        "table" => OutputFormat::Table,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid `format` value {other:?}: expected json or table\n"),
            )
                .into_response()
        }
    };
    let rows = match s.proxy.recorder().query(&filter).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!("log query failed: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the record store is unavailable\n",
            )
                .into_response();
        }
    };
    let mut out = Vec::new();
    if let Err(e) = format::write_rows(&mut out, &rows, fmt) {
        tracing::error!("formatting records failed: {e}");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let content_type = match fmt {
        OutputFormat::Json => "application/x-ndjson",
        OutputFormat::Table => "text/plain; charset=utf-8",
    };
    ([(header::CONTENT_TYPE, content_type)], out).into_response()
}
