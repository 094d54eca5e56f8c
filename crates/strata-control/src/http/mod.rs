//! The HTTP surface: the REST API, the agent WebSocket, metrics and health.
//! Handlers are thin: they parse wire types, call [`Control`] and turn its
//! answer or [`ControlError`] into a response. They hold no SQL and make no
//! role decisions.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::domain::Principal;
use crate::service::{now_ms, Control, ControlError};

mod agent_ws;
mod api;
mod pages;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub control: Arc<Control>,
    pub metrics: Option<telemetry::Metrics>,
    /// Makes and checks the dashboard forms' CSRF tokens.
    pub csrf: Arc<auth::csrf::Csrf>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/agent/ws", get(agent_ws::upgrade))
        .route("/api/setup", post(api::setup))
        .route("/api/auth/login", post(api::login))
        .route("/api/auth/refresh", post(api::refresh))
        .route("/api/auth/logout", post(api::logout))
        .route("/api/me", get(api::me))
        .route("/api/users", get(api::list_users).post(api::create_user))
        .route(
            "/api/senders",
            get(api::list_senders).post(api::create_sender),
        )
        .route("/api/senders/{id}", get(api::get_sender))
        .route(
            "/api/senders/{id}/enrolment-token",
            post(api::new_enrolment_token),
        )
        .route("/api/senders/{id}/ping", post(api::ping_sender))
        .route("/api/enrol", post(api::enrol))
        .route(
            "/api/destinations",
            get(api::list_destinations).post(api::create_destination),
        )
        .route("/api/destinations/{id}", delete(api::delete_destination))
        .route(
            "/api/streams",
            get(api::list_streams).post(api::start_stream),
        )
        .route("/api/streams/{id}", get(api::get_stream))
        .route("/api/streams/{id}/stop", post(api::stop_stream))
        .route("/api/audit", get(api::audit))
        .merge(pages::routes())
        .merge(web::assets_router())
        .with_state(state)
}

async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    state.control.refresh_gauges().await;
    match &state.metrics {
        Some(m) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            m.render(),
        )
            .into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// The error of every API handler: a status and `{"error": "..."}`.
pub struct ApiError(pub ControlError);

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ControlError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(serde_json::json!({"error": "internal error"})),
                )
                    .into_response();
            }
        };
        (
            status,
            Json(serde_json::json!({"error": self.0.to_string()})),
        )
            .into_response()
    }
}

/// The name of the dashboard's session cookie (it holds an access token).
pub const SESSION_COOKIE: &str = "strata_session";

/// An authenticated user, from `Authorization: Bearer` or the session cookie.
pub struct Authed(pub Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = auth::http_creds::bearer(&parts.headers)
            .or_else(|| auth::http_creds::cookie(&parts.headers, SESSION_COOKIE))
            .ok_or(ApiError(ControlError::Unauthenticated))?;
        let principal = state.control.principal(token, now_ms() / 1000).await?;
        Ok(Authed(principal))
    }
}
