//! The HTTP surface: routes, shared state and thin handlers that take the
//! next scripted turn and hand it to a protocol renderer.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::answer::Answer;
use crate::script::{Reply, Script};
use crate::{anthropic, openai, responses};

/// A request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers, lower-case names (the last value wins for repeated ones).
    pub headers: BTreeMap<String, String>,
    /// Body as JSON; a JSON string with the raw text when it was not JSON,
    /// and `null` when empty.
    pub body: Value,
}

/// Shared state: the script queue and the request log.
#[derive(Debug)]
pub struct FakeState {
    queue: Mutex<VecDeque<Script>>,
    default: Mutex<Option<Script>>,
    recorded: Mutex<Vec<RecordedRequest>>,
    models: Vec<String>,
    seq: AtomicU64,
}

impl FakeState {
    /// Empty queue, no default, the given model list.
    pub fn new(models: Vec<String>) -> Arc<Self> {
        Arc::new(FakeState {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(None),
            recorded: Mutex::new(Vec::new()),
            models,
            seq: AtomicU64::new(0),
        })
    }

    /// Queues a turn.
    pub fn push(&self, script: Script) {
        lock(&self.queue).push_back(script);
    }

    /// Sets the turn served whenever the queue is empty.
    pub fn set_default(&self, script: Option<Script>) {
        *lock(&self.default) = script;
    }

    /// Turns not yet served.
    pub fn pending(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Every request received so far.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.recorded).clone()
    }

    fn next_script(&self) -> Option<Script> {
        lock(&self.queue)
            .pop_front()
            .or_else(|| lock(&self.default).clone())
    }
}

/// A poisoned lock only means another handler panicked; the data is still
/// usable for a test fake.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole HTTP surface.
pub fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses_api))
        .route("/v1/models", get(models))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<FakeState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API (Codex CLI).
    Responses,
}

fn record(
    state: &FakeState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Value {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    lock(&state.recorded).push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers,
        body: body.clone(),
    });
    body
}

async fn chat_completions(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = record(&state, &method, &uri, &headers, &body);
    respond(&state, Protocol::OpenAi, &body).await
}

async fn messages(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = record(&state, &method, &uri, &headers, &body);
    respond(&state, Protocol::Anthropic, &body).await
}

async fn responses_api(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = record(&state, &method, &uri, &headers, &body);
    respond(&state, Protocol::Responses, &body).await
}

async fn models(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    record(&state, &method, &uri, &headers, &Bytes::new());
    // Both APIs serve this path; Anthropic clients identify themselves
    // with their version header.
    if headers.contains_key("anthropic-version") {
        Json(anthropic::models_body(&state.models)).into_response()
    } else {
        Json(openai::models_body(&state.models)).into_response()
    }
}

fn error_response(
    protocol: Protocol,
    status: u16,
    message: &str,
    retry_after: Option<&str>,
) -> Response {
    let body = match protocol {
        Protocol::OpenAi | Protocol::Responses => openai::error_body(status, message),
        Protocol::Anthropic => anthropic::error_body(status, message),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(body)).into_response();
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, value);
    }
    resp
}

async fn respond(state: &FakeState, protocol: Protocol, body: &Value) -> Response {
    let seq = state.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(script) = state.next_script() else {
        return error_response(protocol, 500, "fake-llm: no scripted turn left", None);
    };
    if script.first_byte_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.first_byte_delay_ms)).await;
    }
    if let Reply::Error {
        status,
        message,
        retry_after,
    } = &script.reply
    {
        let message = message
            .clone()
            .unwrap_or_else(|| format!("fake-llm scripted error {status}"));
        return error_response(protocol, *status, &message, retry_after.as_deref());
    }

    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("fake-model");
    let last_user = match protocol {
        Protocol::OpenAi => openai::last_user_text(body),
        Protocol::Anthropic => anthropic::last_user_text(body),
        Protocol::Responses => responses::last_user_text(body),
    };
    let answer = Answer::resolve(&script, seq, model, &last_user);

    let streaming = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !streaming {
        return Json(match protocol {
            Protocol::OpenAi => openai::complete_body(&answer),
            Protocol::Anthropic => anthropic::complete_body(&answer),
            Protocol::Responses => responses::complete_body(&answer),
        })
        .into_response();
    }

    let mut frames = match protocol {
        Protocol::OpenAi => {
            let include_usage = body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            openai::stream_frames(&answer, include_usage)
        }
        Protocol::Anthropic => anthropic::stream_frames(&answer),
        Protocol::Responses => responses::stream_frames(&answer),
    };
    let cut_after = match script.reply {
        Reply::CutShort { after_events, .. } => {
            frames.truncate(after_events);
            true
        }
        _ => false,
    };
    let body = frame_body(
        frames,
        Duration::from_millis(script.chunk_delay_ms),
        cut_after,
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("static response parts are valid")
}

/// A body sending `frames` with `delay` between them. With `abort` the body
/// ends in an error, which makes the server drop the connection without the
/// final chunk, as a provider crashing mid-answer would.
fn frame_body(frames: Vec<String>, delay: Duration, abort: bool) -> Body {
    enum Item {
        Frame(String),
        Abort,
    }
    let mut items: VecDeque<Item> = frames.into_iter().map(Item::Frame).collect();
    if abort {
        items.push_back(Item::Abort);
    }
    let stream =
        futures_util::stream::unfold((items, true), move |(mut items, first)| async move {
            let item = items.pop_front()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result: Result<Bytes, std::io::Error> = match item {
                Item::Frame(frame) => Ok(Bytes::from(frame)),
                Item::Abort => {
                    // Let the server flush what was sent so far; otherwise it
                    // may drop the connection before even the headers went out.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "fake-llm: stream cut short",
                    ))
                }
            };
            Some((result, (items, false)))
        });
    Body::from_stream(stream)
}
