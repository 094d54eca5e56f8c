//! The admin listener: Prometheus metrics, health and readiness probes, and
//! record queries. Handlers are thin; the store and runtime do the work.
//!
//! Every request first passes [`AdminGuard`]: a `Host` check against DNS
//! rebinding (a web page cannot make a browser talk to it under a name of
//! the page's choosing), then the bearer token when one is configured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sha2::{Digest, Sha256};

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
    /// Who may ask.
    pub guard: Arc<AdminGuard>,
}

/// Who the admin listener answers.
#[derive(Debug, Clone, Default)]
pub struct AdminGuard {
    /// SHA-256 of the bearer token every request but `/healthz` must carry.
    pub token_sha256: Option<[u8; 32]>,
    /// Host names answered besides `localhost`, loopback addresses and the
    /// listener's own address.
    pub hosts: Vec<String>,
    /// The listener's address.
    pub local: Option<SocketAddr>,
}

impl AdminGuard {
    /// Reads the token settings: a `sha256:<hex>` digest, or a file whose
    /// first line is the token.
    pub fn from_config(
        server: &crate::config::ServerConfig,
        local: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let token_sha256 = match (&server.admin_token_sha256, &server.admin_token_file) {
            (Some(digest), _) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
                let bytes = hex::decode(hex).context("server.admin_token_sha256 is not hex")?;
                Some(
                    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                        anyhow::anyhow!("server.admin_token_sha256 is not 32 bytes")
                    })?,
                )
            }
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token file {}", path.display()))?;
                let token = text.lines().next().unwrap_or("").trim();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the admin token in {} is shorter than 16 characters",
                    path.display()
                );
                Some(Sha256::digest(token.as_bytes()).into())
            }
            (None, None) => None,
        };
        Ok(AdminGuard {
            token_sha256,
            hosts: server
                .admin_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            local,
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        let Ok(name) = edge::route::normalize_host(host) else {
            return false;
        };
        if name == "localhost" || self.hosts.contains(&name) {
            return true;
        }
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || self.local.is_some_and(|l| l.ip() == ip),
            Err(_) => false,
        }
    }

    fn token_ok(&self, req: &Request) -> bool {
        let Some(want) = &self.token_sha256 else {
            return true;
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        // Comparing digests leaks nothing useful about the token itself.
        given.is_some_and(|g| g.as_slice() == want.as_slice())
    }
}

async fn guard(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = host {
        if !s.guard.host_allowed(&host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "this host name is not served here\n",
            )
                .into_response();
        }
    }
    if req.uri().path() != "/healthz" && !s.guard.token_ok(&req) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The whole admin surface.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/logs", get(logs))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
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
