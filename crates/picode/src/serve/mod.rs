//! `picode serve`: the HTTP surface.
//!
//! - `POST /api/completions` runs one agent turn and streams its events as
//!   server-sent events (`event: <type>`, `data: <json>`), ending with a
//!   `result` event. Nobody can answer approval prompts over this API, so in
//!   `ask` mode edits and commands are declined, as in headless mode.
//! - `GET /api/providers`, `GET /api/models`, `GET /api/sessions`.
//! - `POST /v1/chat/completions`: an OpenAI-compatible proxy (streaming and
//!   not) that sends the request through the configured fallback chain.
//! - `POST /v1/messages`: the same for Anthropic's Messages API.
//! - `GET /metrics`: Prometheus text format.
//!
//! Every route except `/healthz` needs `Authorization: Bearer <token>` (or
//! `x-api-key: <token>`, as Anthropic's SDKs send it); the token comes from
//! `PICODE_SERVE_TOKEN` or `serve.token`, and the server refuses to start
//! without one. It listens on 127.0.0.1:8787 unless told otherwise; an
//! address beyond loopback must be given with `--listen` (never only in a
//! config file), is warned about, and needs a token of at least 32 bytes. Handlers are thin: they parse, call the
//! session or provider layer, and render.

mod anthropic;
mod openai;

use std::convert::Infallible;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use picode_tools::{AlwaysDeny, PermissionMode};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentEvent;
use crate::cli::{fail, Exit};
use crate::config::DEFAULT_LISTEN;
use crate::providers::key_source;
use crate::session::{App, CancelOnDrop, Resume, Session, SessionError, SessionOptions};
use crate::store::StoreError;

/// Shared by all handlers.
#[derive(Clone)]
pub struct ServeState {
    pub app: App,
    token: Arc<str>,
    metrics: Option<telemetry::Metrics>,
}

impl ServeState {
    pub fn new(app: App, token: String) -> ServeState {
        let metrics = match telemetry::metrics() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "metrics are unavailable");
                None
            }
        };
        ServeState {
            app,
            token: token.into(),
            metrics,
        }
    }
}

/// The one error type of the HTTP surface. Server-side failures are logged
/// in full and answered with a generic message, so internal details (paths,
/// upstream bodies) never reach clients.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    BadRequest(String),
    NotFound(String),
    Upstream(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid bearer token".to_owned(),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request_error", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found_error", m),
            ApiError::Upstream(detail) => {
                tracing::warn!(%detail, "upstream provider failure");
                (
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the model provider failed; see the server log".to_owned(),
                )
            }
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            // `type: error` at the top is Anthropic's shape; OpenAI clients
            // read only `error`.
            Json(json!({"type": "error", "error": {"message": message, "type": kind}})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

impl From<SessionError> for ApiError {
    fn from(err: SessionError) -> ApiError {
        match err {
            SessionError::Provider(e) => ApiError::BadRequest(e.to_string()),
            SessionError::NoLastSession => ApiError::NotFound(err.to_string()),
            SessionError::Store(
                e @ (StoreError::NoSuchSession(_) | StoreError::AmbiguousSession(_)),
            ) => ApiError::NotFound(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The whole HTTP surface.
pub fn router(state: ServeState) -> Router {
    let api = Router::new()
        .route("/api/completions", post(completions))
        .route("/api/providers", get(providers))
        .route("/api/models", get(models))
        .route("/api/sessions", get(sessions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/messages", post(anthropic::messages))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Serves until `shutdown` completes. Takes a bound listener so tests can
/// use port 0.
pub async fn run(
    state: ServeState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `picode serve` from the command line.
pub async fn run_cli(app: App, listen: Option<String>) -> ExitCode {
    let token = std::env::var("PICODE_SERVE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| app.config.serve.token.clone().filter(|t| !t.is_empty()));
    let Some(token) = token else {
        return fail(
            Exit::Usage,
            "picode serve needs a bearer token: set PICODE_SERVE_TOKEN or `serve.token` in picode.toml",
        );
    };
    let explicit = listen.is_some();
    let addr = listen.unwrap_or_else(|| app.config.serve.listen.clone());
    let addr = if addr.trim().is_empty() {
        DEFAULT_LISTEN.to_owned()
    } else {
        addr
    };
    let loopback = match tokio::net::lookup_host(&addr).await {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(e) => return fail(Exit::Usage, format!("cannot listen on {addr}: {e}")),
    };
    if !loopback {
        if !explicit {
            return fail(
                Exit::Usage,
                format!(
                    "serve.listen is {addr}, beyond loopback; pass --listen {addr} \
                     to mean it (the token then grants shell access to anyone who can reach it)"
                ),
            );
        }
        if token.len() < MIN_PUBLIC_TOKEN {
            return fail(
                Exit::Usage,
                format!(
                    "listening on {addr}, beyond loopback, needs a token of at least \
                     {MIN_PUBLIC_TOKEN} bytes (this one has {}); e.g. `openssl rand -hex 32`",
                    token.len()
                ),
            );
        }
        eprintln!(
            "picode: warning: listening on {addr}, beyond loopback: anyone who reaches it \
             with the token can run commands in {}",
            app.paths.project.display()
        );
    }
    // A server opens its database before it takes requests, so that a
    // broken one stops it at start rather than failing every session.
    if let Err(e) = app.store.ready().await {
        return fail(Exit::Error, e);
    }
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => return fail(Exit::Usage, format!("cannot listen on {addr}: {e}")),
    };
    match listener.local_addr() {
        Ok(local) => println!("picode serve listening on http://{local}"),
        Err(e) => return fail(Exit::Error, e),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match run(ServeState::new(app, token), listener, shutdown).await {
        Ok(()) => Exit::Ok.into(),
        Err(e) => fail(Exit::Error, e),
    }
}

/// The shortest token accepted on an address beyond loopback.
const MIN_PUBLIC_TOKEN: usize = 32;

/// Compares in constant time so the token cannot be guessed byte by byte.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

async fn require_token(
    State(state): State<ServeState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if given.is_empty() || !token_matches(given.as_bytes(), state.token.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics::counter!(
        "picode_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

async fn metrics(State(state): State<ServeState>) -> Result<Response, ApiError> {
    let metrics = state
        .metrics
        .ok_or_else(|| ApiError::Internal("metrics recorder not installed".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionRequest {
    prompt: String,
    /// Continue this session; a new one is started when absent.
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    permission_mode: Option<PermissionMode>,
    #[serde(default)]
    max_turns: Option<u32>,
}

async fn completions(
    State(state): State<ServeState>,
    Json(body): Json<CompletionRequest>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if body.prompt.trim().is_empty() {
        return Err(ApiError::BadRequest("`prompt` is empty".into()));
    }
    let config = &state.app.config;
    let options = SessionOptions {
        provider: body.provider,
        model: body.model,
        mode: body.permission_mode.unwrap_or(config.permission_mode),
        max_steps: body.max_turns.unwrap_or(config.max_steps).max(1),
        resume: match body.session_id {
            Some(id) => Resume::Id(id),
            None => Resume::New,
        },
    };
    let mut session = Session::open(state.app.clone(), options).await?;
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let cancel = CancellationToken::new();
    let turn_cancel = cancel.clone();
    let prompt = body.prompt;
    tokio::spawn(async move {
        let events = tx.clone();
        let mut sink = move |event: AgentEvent| {
            let _ = events.send(sse_event(&event));
        };
        let result = session
            .run_turn(&prompt, &AlwaysDeny, &turn_cancel, &mut sink)
            .await;
        let last = match result {
            Ok(report) => json!({"session_id": session.id(), "report": report}),
            Err(e) => json!({"session_id": session.id(), "error": e.to_string()}),
        };
        let _ = tx.send(Event::default().event("result").data(last.to_string()));
    });
    // The guard travels with the stream: when the client goes away the
    // stream is dropped and the turn is cancelled with it.
    let guard = CancelOnDrop(cancel);
    let stream = futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        rx.recv().await.map(|event| (Ok(event), (rx, guard)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(event: &AgentEvent) -> Event {
    let value = serde_json::to_value(event).unwrap_or_default();
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("event")
        .to_owned();
    Event::default().event(kind).data(value.to_string())
}

async fn providers(State(state): State<ServeState>) -> Json<serde_json::Value> {
    let config = &state.app.config;
    let default = config.chain(None).into_iter().next();
    let list: Vec<_> = config
        .providers
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "kind": p.kind.as_str(),
                "model": p.model,
                "base_url": p.base_url,
                "default": Some(name) == default.as_ref(),
                "fallback": config.fallback.contains(name),
                "key": key_source(p, None),
            })
        })
        .collect();
    Json(json!({ "providers": list }))
}

async fn models(State(state): State<ServeState>) -> Json<serde_json::Value> {
    let mut out = Vec::new();
    let mut single = state.app.config.clone();
    single.fallback.clear();
    let single_app = App {
        config: single,
        ..state.app.clone()
    };
    for name in state.app.config.providers.keys() {
        let entry = match single_app.resolve(Some(name), None) {
            Ok(resolved) => {
                let listed =
                    tokio::time::timeout(Duration::from_secs(10), resolved.provider.models()).await;
                match listed {
                    Ok(Ok(models)) => {
                        json!({"provider": name, "model": resolved.model, "models": models})
                    }
                    Ok(Err(e)) => {
                        json!({"provider": name, "model": resolved.model, "error": e.to_string()})
                    }
                    Err(_) => {
                        json!({"provider": name, "model": resolved.model, "error": "timed out"})
                    }
                }
            }
            Err(e) => json!({"provider": name, "error": e.to_string()}),
        };
        out.push(entry);
    }
    Json(json!({ "providers": out }))
}

async fn sessions(State(state): State<ServeState>) -> Result<Json<serde_json::Value>, ApiError> {
    let list = state
        .app
        .store
        .list_sessions(None, 100)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "sessions": list })))
}
