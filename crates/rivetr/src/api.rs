//! The REST API (JSON), the only way in: the CLI is a client of it.
//!
//! Every `/api` route needs a bearer token (`id.secret`, looked up by id,
//! its secret checked against the stored SHA-256). Handlers are thin: they
//! parse input into domain types, ask [`authorize`] and call the engine or
//! the store. Secret env values never leave the server: they are listed
//! masked. Live logs are Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::{
    parse_branch, parse_commit, AppName, DeploymentStatus, Domain, EnvKey, GitUrl, Invalid,
};
use crate::engine::logs::LogEvent;
use crate::engine::{env_context, now, ssh_context, Engine};
use crate::store::{App, EnvVar, NewApp, StoreError};

/// What a token may do. Roles: `admin` (everything), `developer`
/// (deploy, env, logs), `viewer` (read only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Deploy,
    ManageApps,
    ManageTokens,
}

/// The one place roles are decided.
pub fn authorize(role: &str, action: Action) -> bool {
    match role {
        "admin" => true,
        "developer" => matches!(action, Action::Read | Action::Deploy | Action::ManageApps),
        "viewer" => action == Action::Read,
        _ => false,
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub engine: Arc<Engine>,
    pub metrics: Option<Arc<telemetry::Metrics>>,
}

/// The API's error: a status and a message for the client. 5xx details go
/// to the log only.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate(what) => {
                ApiError::new(StatusCode::CONFLICT, format!("{what} exists already"))
            }
            other => {
                tracing::error!(error = %other, "store");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<secrets::SecretsError> for ApiError {
    fn from(e: secrets::SecretsError) -> Self {
        tracing::error!(error = %e, "secrets");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who called: the token's id and role.
struct Caller {
    role: String,
}

async fn caller(state: &ApiState, headers: &HeaderMap, action: Action) -> ApiResult<Caller> {
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    let token = auth::http_creds::bearer(headers).ok_or_else(unauthorized)?;
    let token = auth::SplitToken::parse(token).map_err(|_| unauthorized())?;
    let stored = state
        .engine
        .store
        .token(&token.id)
        .await?
        .ok_or_else(unauthorized)?;
    if !token.matches_sha256(&stored.secret_sha256) {
        return Err(unauthorized());
    }
    if !authorize(&stored.role, action) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the role {:?} may not do this", stored.role),
        ));
    }
    Ok(Caller { role: stored.role })
}

/// The whole HTTP surface of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/apps", get(list_apps).post(create_app))
        .route(
            "/api/apps/{name}",
            get(app_status).delete(delete_app).patch(update_app),
        )
        .route("/api/apps/{name}/env", get(list_env).put(set_env))
        .route(
            "/api/apps/{name}/env/{key}",
            axum::routing::delete(unset_env),
        )
        .route("/api/apps/{name}/deploy", post(deploy))
        .route("/api/apps/{name}/rollback", post(rollback))
        .route("/api/apps/{name}/logs", get(app_logs))
        .route("/api/deployments/{id}", get(deployment))
        .route("/api/deployments/{id}/logs", get(deployment_logs))
        .route("/api/tokens", post(create_token))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match &state.metrics {
        Some(m) => m.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off").into_response(),
    }
}

async fn load_app(state: &ApiState, name: &str) -> ApiResult<App> {
    let name = AppName::parse(name)?;
    state
        .engine
        .store
        .app(name.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("app {:?}", name.as_str())))
}

async fn app_json(state: &ApiState, app: &App, history: i64) -> ApiResult<Value> {
    let deployments = state.engine.store.deployments(app.id, history).await?;
    let running = state.engine.store.running(app.id).await?;
    let routed = state.engine.router.backend(&app.name).map(|b| {
        json!({
            "deployment": b.deployment,
            "upstreams": b.group.targets().iter().map(|t| t.label.to_string()).collect::<Vec<_>>(),
        })
    });
    Ok(json!({
        "name": app.name,
        "git": app.git_url,
        "branch": app.branch,
        "commit": app.commit_pin,
        "has_ssh_key": app.has_ssh_key,
        "domains": app.domains,
        "hosts": state.engine.hosts_of(app),
        "created_at": app.created_at,
        "running": running,
        "routed": routed,
        "deployments": deployments,
    }))
}

async fn list_apps(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::Read).await?;
    let mut out = Vec::new();
    for app in state.engine.store.apps().await? {
        let latest = state.engine.store.deployments(app.id, 1).await?;
        let running = state.engine.store.running(app.id).await?;
        out.push(json!({
            "name": app.name,
            "hosts": state.engine.hosts_of(&app),
            "running_deployment": running.map(|d| d.id),
            "latest": latest.first(),
        }));
    }
    Ok(Json(json!({ "apps": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: String,
    git: String,
    #[serde(default = "default_branch")]
    branch: String,
    commit: Option<String>,
    #[serde(default)]
    domains: Vec<String>,
    /// PEM private key for ssh sources; stored sealed.
    ssh_key: Option<String>,
}

fn default_branch() -> String {
    "main".into()
}

/// Checks domains for format and that no other app has them.
async fn parse_domains(
    state: &ApiState,
    raw: &[String],
    app: Option<&str>,
) -> ApiResult<Vec<String>> {
    let mut domains = Vec::new();
    for d in raw {
        let d = Domain::parse(d)?;
        if d.as_str()
            .ends_with(&format!(".{}", state.engine.settings.base_domain))
        {
            let label =
                &d.as_str()[..d.as_str().len() - state.engine.settings.base_domain.len() - 1];
            if !label.contains('.') && Some(label) != app {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "domain {d}: names under the base domain belong to the app of that name"
                    ),
                ));
            }
        }
        if let Some(owner) = state.engine.store.domain_owner(d.as_str()).await? {
            if Some(owner.as_str()) != app {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("domain {d} is already used by app {owner:?}"),
                ));
            }
        }
        if !domains.contains(&d.as_str().to_owned()) {
            domains.push(d.as_str().to_owned());
        }
    }
    Ok(domains)
}

fn check_ssh_key(key: &str) -> ApiResult<()> {
    let trimmed = key.trim();
    if !(trimmed.starts_with("-----BEGIN ") && trimmed.contains("PRIVATE KEY-----"))
        || key.len() > 16 * 1024
    {
        return Err(Invalid::new("ssh_key", "must be a PEM or OpenSSH private key").into());
    }
    Ok(())
}

async fn create_app(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<CreateApp>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller(&state, &headers, Action::ManageApps).await?;
    let name = AppName::parse(&body.name)?;
    let git = GitUrl::parse(&body.git)?;
    let branch = parse_branch(&body.branch)?;
    let commit = body.commit.as_deref().map(parse_commit).transpose()?;
    if let Some(key) = &body.ssh_key {
        check_ssh_key(key)?;
    }
    let domains = parse_domains(&state, &body.domains, Some(name.as_str())).await?;
    if state.engine.store.app(name.as_str()).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("app {:?} exists already", name.as_str()),
        ));
    }
    let app = state
        .engine
        .store
        .create_app(
            &NewApp {
                name: name.as_str(),
                git_url: git.as_str(),
                branch: &branch,
                commit_pin: commit.as_deref(),
                ssh_key_sealed: None,
                domains: &domains,
            },
            now(),
        )
        .await?;
    if let Some(key) = &body.ssh_key {
        let sealed = state
            .engine
            .secrets
            .seal(&ssh_context(app.id), key.as_bytes())?;
        state
            .engine
            .store
            .update_app_source(app.id, None, None, None, Some(Some(&sealed)))
            .await?;
    }
    let app = load_app(&state, name.as_str()).await?;
    Ok((StatusCode::CREATED, Json(app_json(&state, &app, 0).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateApp {
    git: Option<String>,
    branch: Option<String>,
    /// `""` removes the pin.
    commit: Option<String>,
    domains: Option<Vec<String>>,
    ssh_key: Option<String>,
}

async fn update_app(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<UpdateApp>,
) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::ManageApps).await?;
    let app = load_app(&state, &name).await?;
    let git = body.git.as_deref().map(GitUrl::parse).transpose()?;
    let branch = body.branch.as_deref().map(parse_branch).transpose()?;
    let commit = match body.commit.as_deref() {
        None => None,
        Some("") => Some(None),
        Some(c) => Some(Some(parse_commit(c)?)),
    };
    let sealed = match &body.ssh_key {
        None => None,
        Some(k) if k.is_empty() => Some(None),
        Some(k) => {
            check_ssh_key(k)?;
            Some(Some(
                state
                    .engine
                    .secrets
                    .seal(&ssh_context(app.id), k.as_bytes())?,
            ))
        }
    };
    if let Some(domains) = &body.domains {
        let domains = parse_domains(&state, domains, Some(&app.name)).await?;
        state.engine.store.set_domains(app.id, &domains).await?;
        // A routed app answers on its new names at once.
        if let Some(backend) = state.engine.router.backend(&app.name) {
            let app = load_app(&state, &name).await?;
            state
                .engine
                .router
                .set(&app.name, state.engine.hosts_of(&app), backend);
        }
    }
    state
        .engine
        .store
        .update_app_source(
            app.id,
            git.as_ref().map(|g| g.as_str()),
            branch.as_deref(),
            commit.as_ref().map(|c| c.as_deref()),
            sealed.as_ref().map(|s| s.as_deref()),
        )
        .await?;
    let app = load_app(&state, &name).await?;
    Ok(Json(app_json(&state, &app, 0).await?))
}

async fn app_status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::Read).await?;
    let app = load_app(&state, &name).await?;
    Ok(Json(app_json(&state, &app, 20).await?))
}

async fn delete_app(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller(&state, &headers, Action::ManageApps).await?;
    let app = load_app(&state, &name).await?;
    state.engine.delete_app(&app).await.map_err(|e| {
        tracing::error!(error = %e, app = %app.name, "deleting");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "deleting the app failed; see the server log",
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_env(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::Read).await?;
    let app = load_app(&state, &name).await?;
    let vars: Vec<Value> = state
        .engine
        .store
        .env(app.id)
        .await?
        .into_iter()
        .map(|v| {
            if v.secret {
                json!({ "key": v.key, "secret": true, "value": null, "masked": "********" })
            } else {
                json!({ "key": v.key, "secret": false, "value": v.value })
            }
        })
        .collect();
    Ok(Json(json!({ "env": vars })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetEnv {
    vars: Vec<SetVar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetVar {
    key: String,
    value: String,
    #[serde(default)]
    secret: bool,
}

async fn set_env(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<SetEnv>,
) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::Deploy).await?;
    let app = load_app(&state, &name).await?;
    let mut vars = Vec::new();
    for v in body.vars {
        let key = EnvKey::parse(&v.key)?;
        if v.value.len() > 64 * 1024 || v.value.contains('\0') {
            return Err(Invalid::new(
                "env",
                format!("{}: a value is at most 64 KiB without NUL", key.as_str()),
            )
            .into());
        }
        let value = if v.secret {
            state
                .engine
                .secrets
                .seal(&env_context(app.id, key.as_str()), v.value.as_bytes())?
        } else {
            v.value
        };
        vars.push(EnvVar {
            key: key.as_str().to_owned(),
            value,
            secret: v.secret,
        });
    }
    state.engine.store.set_env(app.id, &vars).await?;
    let keys: Vec<&str> = vars.iter().map(|v| v.key.as_str()).collect();
    Ok(Json(
        json!({ "set": keys, "note": "takes effect at the next deploy" }),
    ))
}

async fn unset_env(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller(&state, &headers, Action::Deploy).await?;
    let app = load_app(&state, &name).await?;
    let key = EnvKey::parse(&key)?;
    if state.engine.store.unset_env(app.id, key.as_str()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&format!("env var {:?}", key.as_str())))
    }
}

async fn deploy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller(&state, &headers, Action::Deploy).await?;
    let app = load_app(&state, &name).await?;
    let id = state.engine.queue_build(&app).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployment": id, "status": "queued" })),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to: Option<i64>,
}

async fn rollback(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Option<Json<RollbackBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller(&state, &headers, Action::Deploy).await?;
    let app = load_app(&state, &name).await?;
    let to = body.and_then(|Json(b)| b.to);
    let history = state.engine.store.deployments(app.id, 1000).await?;
    let target = match to {
        Some(id) => history.iter().find(|d| d.id == id).ok_or_else(|| {
            ApiError::not_found(&format!("deployment {id} of app {:?}", app.name))
        })?,
        None => {
            let current = history
                .iter()
                .find(|d| d.status == DeploymentStatus::Running);
            let current_image = current.and_then(|d| d.image.clone());
            history
                .iter()
                .filter(|d| d.status == DeploymentStatus::Superseded && d.image.is_some())
                .find(|d| d.image != current_image)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "no earlier good deployment to roll back to",
                    )
                })?
        }
    };
    if !matches!(
        target.status,
        DeploymentStatus::Running | DeploymentStatus::Superseded
    ) || target.image.is_none()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "deployment {} never ran; only a deployment that served can be rolled back to",
                target.id
            ),
        ));
    }
    let id = state.engine.queue_rollback(&app, target.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deployment": id, "status": "queued", "rollback_of": target.id })),
    ))
}

async fn deployment(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    caller(&state, &headers, Action::Read).await?;
    let dep = state
        .engine
        .store
        .deployment(id)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("deployment {id}")))?;
    Ok(Json(serde_json::to_value(dep).unwrap_or(Value::Null)))
}

#[derive(Deserialize)]
struct FollowQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<usize>,
}

fn sse_event(event: &LogEvent) -> Event {
    Event::default().data(serde_json::to_string(event).unwrap_or_default())
}

async fn deployment_logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<FollowQuery>,
) -> ApiResult<Response> {
    caller(&state, &headers, Action::Read).await?;
    let dep = state
        .engine
        .store
        .deployment(id)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("deployment {id}")))?;
    // Subscribe before reading the stored lines and the status, then skip
    // what was read: no line and no end is lost between them.
    let live = q.follow.then(|| state.engine.logs.subscribe(id));
    let stored = state.engine.store.log_lines(id, 0).await?;
    let dep = state.engine.store.deployment(id).await?.unwrap_or(dep);
    let next = stored.last().map(|(s, _)| s + 1).unwrap_or(0);
    let past = stream::iter(
        stored
            .into_iter()
            .map(|(seq, text)| Ok(sse_event(&LogEvent::Line { seq, text }))),
    );
    let tail: BoxStream<'static, Result<Event, Infallible>> = match live {
        Some(rx) if !dep.status.is_final() => tokio_stream_from(rx, next).boxed(),
        live => {
            drop(live);
            state.engine.logs.forget_ended(id);
            if dep.status.is_final() {
                let end = LogEvent::End {
                    status: dep.status.as_str().to_owned(),
                    reason: dep.reason.clone(),
                };
                stream::once(async move { Ok(sse_event(&end)) }).boxed()
            } else {
                stream::empty().boxed()
            }
        }
    };
    Ok(Sse::new(past.chain(tail))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Live events from `from_seq` on, ending after the end event.
fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<LogEvent>,
    from_seq: i64,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    stream::unfold((rx, false), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(LogEvent::Line { seq, .. }) if seq < from_seq => continue,
                Ok(event) => {
                    let end = matches!(event, LogEvent::End { .. });
                    return Some((Ok(sse_event(&event)), (rx, end)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = LogEvent::Line {
                        seq: -1,
                        text: format!("({n} lines skipped: the reader was too slow)"),
                    };
                    return Some((Ok(sse_event(&note)), (rx, false)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

async fn app_logs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<FollowQuery>,
) -> ApiResult<Response> {
    caller(&state, &headers, Action::Read).await?;
    let app = load_app(&state, &name).await?;
    let running = state.engine.store.running(app.id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("app {:?} is not running", app.name),
        )
    })?;
    let containers = state
        .engine
        .runtime
        .list(&[
            (
                crate::engine::INSTANCE_LABEL,
                state.engine.settings.instance.as_str(),
            ),
            (crate::engine::APP_LABEL, app.name.as_str()),
            (crate::engine::DEPLOYMENT_LABEL, &running.id.to_string()),
        ])
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("container engine: {e}")))?;
    let mut streams = Vec::new();
    for c in containers {
        let s = state
            .engine
            .runtime
            .logs(&c.id, q.follow, Some(q.tail.unwrap_or(100)))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("container engine: {e}"))
            })?;
        let replica = c.name.rsplit('-').next().unwrap_or("").to_owned();
        streams.push(
            s.map(move |line| {
                let value = match line {
                    Ok(l) => json!({
                        "replica": replica,
                        "stream": match l.stream { crate::runtime::LogStream::Stdout => "stdout", crate::runtime::LogStream::Stderr => "stderr" },
                        "text": l.text,
                    }),
                    Err(e) => json!({ "replica": replica, "error": e.to_string() }),
                };
                Ok::<_, Infallible>(Event::default().data(value.to_string()))
            })
            .boxed(),
        );
    }
    Ok(Sse::new(stream::select_all(streams))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
}

async fn create_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Json(body): Json<CreateToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = caller(&state, &headers, Action::ManageTokens).await?;
    if !["admin", "developer", "viewer"].contains(&body.role.as_str()) {
        return Err(Invalid::new("role", "must be admin, developer or viewer").into());
    }
    if body.name.is_empty() || body.name.len() > 100 || body.name.chars().any(char::is_control) {
        return Err(Invalid::new("name", "must be 1 to 100 printable characters").into());
    }
    let token = crate::issue_token(&state.engine.store, &body.name, &body.role).await?;
    tracing::info!(by_role = %who.role, name = %body.name, role = %body.role, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "role": body.role })),
    ))
}
