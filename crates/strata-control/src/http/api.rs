//! REST handlers and their wire types.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, Authed};
use crate::service::{
    now_ms, AuditView, DestinationView, NewSender, SenderView, StreamView, TokenPair, UserView,
};

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
}

pub async fn setup(
    State(s): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let user = s
        .control
        .setup(&body.email, &body.password, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn login(
    State(s): State<AppState>,
    Json(body): Json<Credentials>,
) -> ApiResult<TokenPair> {
    Ok(Json(
        s.control
            .login(&body.email, &body.password, now_ms())
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(
    State(s): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> ApiResult<TokenPair> {
    Ok(Json(
        s.control.refresh(&body.refresh_token, now_ms()).await?,
    ))
}

pub async fn logout(
    State(s): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    s.control.logout(&body.refresh_token, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(Authed(who): Authed) -> Json<Value> {
    Json(json!({"id": who.user_id, "email": who.email, "role": who.role.as_str()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    password: String,
    role: String,
}

pub async fn create_user(
    State(s): State<AppState>,
    Authed(who): Authed,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let user = s
        .control
        .create_user(&who, &body.email, &body.password, &body.role, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

pub async fn list_users(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> ApiResult<Vec<UserView>> {
    Ok(Json(s.control.list_users(&who).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSenderBody {
    name: String,
    #[serde(default)]
    enrolment_ttl_secs: Option<i64>,
}

pub async fn create_sender(
    State(s): State<AppState>,
    Authed(who): Authed,
    Json(body): Json<NewSenderBody>,
) -> Result<(StatusCode, Json<NewSender>), ApiError> {
    let out = s
        .control
        .create_sender(&who, &body.name, body.enrolment_ttl_secs, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn list_senders(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> ApiResult<Vec<SenderView>> {
    Ok(Json(s.control.list_senders(&who).await?))
}

pub async fn get_sender(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> ApiResult<SenderView> {
    Ok(Json(s.control.sender(&who, &id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TtlBody {
    #[serde(default)]
    ttl_secs: Option<i64>,
}

pub async fn new_enrolment_token(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
    Json(body): Json<TtlBody>,
) -> ApiResult<Value> {
    let (token, expires_at) = s
        .control
        .new_enrolment_token(&who, &id, body.ttl_secs, now_ms())
        .await?;
    Ok(Json(
        json!({"enrolment_token": token, "enrolment_expires_at": expires_at}),
    ))
}

pub async fn ping_sender(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> ApiResult<Value> {
    let rtt = s.control.ping_sender(&who, &id).await?;
    Ok(Json(json!({"rtt_ms": rtt.as_secs_f64() * 1000.0})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolBody {
    token: String,
    public_key: String,
    hostname: String,
}

pub async fn enrol(State(s): State<AppState>, Json(body): Json<EnrolBody>) -> ApiResult<Value> {
    let sender_id = s
        .control
        .enrol(&body.token, &body.public_key, &body.hostname, now_ms())
        .await?;
    Ok(Json(json!({"sender_id": sender_id})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDestination {
    name: String,
    platform: String,
    url: String,
    stream_key: String,
}

pub async fn create_destination(
    State(s): State<AppState>,
    Authed(who): Authed,
    Json(body): Json<NewDestination>,
) -> Result<(StatusCode, Json<DestinationView>), ApiError> {
    let d = s
        .control
        .create_destination(
            &who,
            &body.name,
            &body.platform,
            &body.url,
            &body.stream_key,
            now_ms(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn list_destinations(
    State(s): State<AppState>,
    Authed(who): Authed,
) -> ApiResult<Vec<DestinationView>> {
    Ok(Json(s.control.list_destinations(&who).await?))
}

pub async fn delete_destination(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.control.delete_destination(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    sender_id: String,
    destination_ids: Vec<String>,
}

pub async fn start_stream(
    State(s): State<AppState>,
    Authed(who): Authed,
    Json(body): Json<StartBody>,
) -> Result<(StatusCode, Json<StreamView>), ApiError> {
    let stream = s
        .control
        .start_stream(&who, &body.sender_id, &body.destination_ids, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(stream)))
}

#[derive(Deserialize)]
pub struct Limit {
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

pub async fn list_streams(
    State(s): State<AppState>,
    Authed(who): Authed,
    Query(q): Query<Limit>,
) -> ApiResult<Vec<StreamView>> {
    Ok(Json(s.control.list_streams(&who, q.limit).await?))
}

pub async fn get_stream(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> ApiResult<StreamView> {
    Ok(Json(s.control.stream(&who, &id).await?))
}

pub async fn stop_stream(
    State(s): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> ApiResult<StreamView> {
    Ok(Json(s.control.stop_stream(&who, &id).await?))
}

pub async fn audit(
    State(s): State<AppState>,
    Authed(who): Authed,
    Query(q): Query<Limit>,
) -> ApiResult<Vec<AuditView>> {
    Ok(Json(s.control.audit_log(&who, q.limit).await?))
}
