//! The dashboard: server-rendered pages on the `web` capability, signed in
//! with a session cookie (an access token, HttpOnly, SameSite=Strict), every
//! form carrying a CSRF token and every POST checked for a foreign Origin.
//! Roles are not checked here: the pages call the same [`Control`]
//! operations as the API, which check them.

use askama::Template;
use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use ring::digest;

use super::{AppState, Authed, SESSION_COOKIE};
use crate::domain::{Action, Principal, Role};
use crate::service::{
    now_ms, AuditView, ControlError, DestinationView, SenderView, StreamView, UserView,
};

const PRODUCT: &str = "Strata";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/setup", get(setup_page).post(setup_submit))
        .route("/login", get(login_page).post(login_submit))
        .route("/logout", post(logout))
        .route("/senders", get(senders_page).post(create_sender))
        .route("/streams", get(streams_page))
        .route("/streams/start", post(start_stream))
        .route("/streams/{id}/stop", post(stop_stream))
        .route(
            "/destinations",
            get(destinations_page).post(create_destination),
        )
        .route("/users", get(users_page).post(create_user))
        .route("/ui/ws", get(live_socket))
}

/// A signed-in page visitor: the principal, the session and its CSRF token.
pub struct Session {
    who: Principal,
    csrf: String,
}

fn session_id(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = auth::http_creds::cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/login").into_response());
        };
        let who = state
            .control
            .principal(token, now_ms() / 1000)
            .await
            .map_err(|_| Redirect::to("/login").into_response())?;
        let csrf = state.csrf.token(&session_id(token));
        Ok(Session { who, csrf })
    }
}

/// A submitted form: every pair, in order (repeated names allowed).
pub struct Form(Vec<(String, String)>);

impl Form {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        if !same_origin(req.headers()) {
            return Err(web::error_page(
                PRODUCT,
                StatusCode::FORBIDDEN,
                "Cross-origin form posts are refused.",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Form(
            form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// A POST whose Origin names another site is refused (browsers send Origin
/// on every cross-site POST; same-site ones carry ours or none).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin == format!("http://{host}") || origin == format!("https://{host}")
}

/// Whether the form carries this session's CSRF token. The expected token
/// is recomputed from the session, so a plain comparison leaks nothing an
/// attacker without the session cookie could use.
fn csrf_ok(session: &Session, form: &Form) -> bool {
    let given = form.get("csrf");
    !given.is_empty() && given.as_bytes() == session.csrf.as_bytes()
}

fn csrf_refused() -> Response {
    web::error_page(
        PRODUCT,
        StatusCode::FORBIDDEN,
        "The form's security token is missing or stale; reload the page and try again.",
    )
}

fn nav(who: Option<&Principal>, current: &str) -> Vec<web::NavItem> {
    let Some(who) = who else { return Vec::new() };
    let mut items = vec![
        web::NavItem::new("/streams", "Streams", current),
        web::NavItem::new("/senders", "Senders", current),
        web::NavItem::new("/destinations", "Destinations", current),
    ];
    if who.role == Role::Admin {
        items.push(web::NavItem::new("/users", "Users", current));
    }
    items
}

fn page(
    session: Option<&Session>,
    title: &str,
    current: &str,
    live: bool,
    body: &impl Template,
) -> Response {
    let Ok(body) = body.render() else {
        return web::error_page(
            PRODUCT,
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering failed",
        );
    };
    let who = session.map(|s| &s.who);
    web::render(&web::Page {
        product: PRODUCT,
        title,
        nav: nav(who, current),
        user: who.map(|w| w.email.as_str()),
        csrf: session.map(|s| s.csrf.as_str()).unwrap_or(""),
        logout_action: "/logout",
        live_url: live.then_some("/ui/ws"),
        body: &body,
    })
}

fn control_error(e: ControlError) -> Response {
    match e {
        ControlError::Unauthenticated => Redirect::to("/login").into_response(),
        ControlError::Forbidden(role) => web::error_page(
            PRODUCT,
            StatusCode::FORBIDDEN,
            &format!("Your role ({role}) may not do this."),
        ),
        ControlError::NotFound(what) => {
            web::error_page(PRODUCT, StatusCode::NOT_FOUND, &format!("No such {what}."))
        }
        ControlError::Internal(detail) => {
            tracing::error!(%detail, "internal error on a page");
            web::error_page(
                PRODUCT,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong.",
            )
        }
        other => web::error_page(PRODUCT, StatusCode::BAD_REQUEST, &other.to_string()),
    }
}

/// Errors a form shows inline rather than as an error page.
fn inline(e: &ControlError) -> bool {
    matches!(e, ControlError::Invalid(_) | ControlError::Conflict(_))
}

async fn index(State(s): State<AppState>) -> Response {
    match s.control.needs_setup().await {
        Ok(true) => Redirect::to("/setup").into_response(),
        _ => Redirect::to("/streams").into_response(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginForm<'a> {
    action: &'a str,
    button: &'a str,
    email: &'a str,
    error: Option<String>,
}

async fn setup_page(State(s): State<AppState>) -> Response {
    if !s.control.needs_setup().await.unwrap_or(false) {
        return Redirect::to("/login").into_response();
    }
    page(
        None,
        "Create the first admin",
        "",
        false,
        &LoginForm {
            action: "/setup",
            button: "Create admin",
            email: "",
            error: None,
        },
    )
}

async fn setup_submit(State(s): State<AppState>, form: Form) -> Response {
    match s
        .control
        .setup(form.get("email"), form.get("password"), now_ms())
        .await
    {
        Ok(_) => Redirect::to("/login").into_response(),
        Err(e) => page(
            None,
            "Create the first admin",
            "",
            false,
            &LoginForm {
                action: "/setup",
                button: "Create admin",
                email: form.get("email"),
                error: Some(e.to_string()),
            },
        ),
    }
}

async fn login_page(State(s): State<AppState>) -> Response {
    if s.control.needs_setup().await.unwrap_or(false) {
        return Redirect::to("/setup").into_response();
    }
    page(
        None,
        "Sign in",
        "",
        false,
        &LoginForm {
            action: "/login",
            button: "Sign in",
            email: "",
            error: None,
        },
    )
}

async fn login_submit(State(s): State<AppState>, form: Form) -> Response {
    match s
        .control
        .login(form.get("email"), form.get("password"), now_ms())
        .await
    {
        Ok(pair) => {
            let cookie = auth::http_creds::session_cookie(
                SESSION_COOKIE,
                &pair.access_token,
                pair.expires_in,
                s.control.config().secure_cookies,
            );
            let mut response = Redirect::to("/streams").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(_) => {
            let mut response = page(
                None,
                "Sign in",
                "",
                false,
                &LoginForm {
                    action: "/login",
                    button: "Sign in",
                    email: form.get("email"),
                    error: Some("Wrong email or password.".into()),
                },
            );
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

async fn logout(session: Session, form: Form) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    let mut response = Redirect::to("/login").into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

struct NewToken {
    name: String,
    token: String,
}

#[derive(Template)]
#[template(path = "senders.html")]
struct SendersPage {
    senders: Vec<SenderView>,
    can_manage: bool,
    csrf: String,
    new_token: Option<NewToken>,
}

async fn render_senders(s: &AppState, session: &Session, new_token: Option<NewToken>) -> Response {
    match s.control.list_senders(&session.who).await {
        Ok(senders) => page(
            Some(session),
            "Senders",
            "/senders",
            true,
            &SendersPage {
                senders,
                can_manage: crate::domain::allows(session.who.role, Action::ManageSenders),
                csrf: session.csrf.clone(),
                new_token,
            },
        ),
        Err(e) => control_error(e),
    }
}

async fn senders_page(State(s): State<AppState>, session: Session) -> Response {
    render_senders(&s, &session, None).await
}

async fn create_sender(State(s): State<AppState>, session: Session, form: Form) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    match s
        .control
        .create_sender(&session.who, form.get("name"), None, now_ms())
        .await
    {
        Ok(created) => {
            let token = NewToken {
                name: created.sender.name,
                token: created.enrolment_token,
            };
            render_senders(&s, &session, Some(token)).await
        }
        Err(e) => control_error(e),
    }
}

#[derive(Template)]
#[template(path = "streams.html")]
struct StreamsPage {
    senders: Vec<SenderView>,
    destinations: Vec<DestinationView>,
    active: Vec<StreamView>,
    history: Vec<StreamView>,
    can_start: bool,
    can_stop: bool,
    csrf: String,
    error: Option<String>,
}

async fn render_streams(s: &AppState, session: &Session, error: Option<String>) -> Response {
    let who = &session.who;
    let data = async {
        let senders = s.control.list_senders(who).await?;
        let destinations = s.control.list_destinations(who).await?;
        let streams = s.control.list_streams(who, 100).await?;
        Ok::<_, ControlError>((senders, destinations, streams))
    };
    match data.await {
        Ok((senders, destinations, streams)) => {
            let (active, history): (Vec<_>, Vec<_>) = streams
                .into_iter()
                .partition(|st| matches!(st.state.as_str(), "starting" | "live" | "stopping"));
            page(
                Some(session),
                "Streams",
                "/streams",
                true,
                &StreamsPage {
                    senders: senders.into_iter().filter(|x| x.enrolled).collect(),
                    destinations,
                    active,
                    history,
                    can_start: crate::domain::allows(who.role, Action::StartStream),
                    can_stop: crate::domain::allows(who.role, Action::StopStream),
                    csrf: session.csrf.clone(),
                    error,
                },
            )
        }
        Err(e) => control_error(e),
    }
}

async fn streams_page(State(s): State<AppState>, session: Session) -> Response {
    render_streams(&s, &session, None).await
}

async fn start_stream(State(s): State<AppState>, session: Session, form: Form) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    match s
        .control
        .start_stream(
            &session.who,
            form.get("sender_id"),
            &form.all("destination_ids"),
            now_ms(),
        )
        .await
    {
        Ok(_) => Redirect::to("/streams").into_response(),
        Err(e) if inline(&e) => render_streams(&s, &session, Some(e.to_string())).await,
        Err(e) => control_error(e),
    }
}

async fn stop_stream(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    form: Form,
) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    match s.control.stop_stream(&session.who, &id).await {
        Ok(_) => Redirect::to("/streams").into_response(),
        Err(e) if inline(&e) => render_streams(&s, &session, Some(e.to_string())).await,
        Err(e) => control_error(e),
    }
}

#[derive(Template)]
#[template(path = "destinations.html")]
struct DestinationsPage {
    destinations: Vec<DestinationView>,
    can_manage: bool,
    csrf: String,
    error: Option<String>,
}

async fn render_destinations(s: &AppState, session: &Session, error: Option<String>) -> Response {
    match s.control.list_destinations(&session.who).await {
        Ok(destinations) => page(
            Some(session),
            "Destinations",
            "/destinations",
            false,
            &DestinationsPage {
                destinations,
                can_manage: crate::domain::allows(session.who.role, Action::ManageDestinations),
                csrf: session.csrf.clone(),
                error,
            },
        ),
        Err(e) => control_error(e),
    }
}

async fn destinations_page(State(s): State<AppState>, session: Session) -> Response {
    render_destinations(&s, &session, None).await
}

async fn create_destination(State(s): State<AppState>, session: Session, form: Form) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    match s
        .control
        .create_destination(
            &session.who,
            form.get("name"),
            form.get("platform"),
            form.get("url"),
            form.get("stream_key"),
            now_ms(),
        )
        .await
    {
        Ok(_) => Redirect::to("/destinations").into_response(),
        Err(e) if inline(&e) => render_destinations(&s, &session, Some(e.to_string())).await,
        Err(e) => control_error(e),
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    users: Vec<UserView>,
    audit: Vec<AuditView>,
    csrf: String,
    error: Option<String>,
}

async fn render_users(s: &AppState, session: &Session, error: Option<String>) -> Response {
    let data = async {
        let users = s.control.list_users(&session.who).await?;
        let audit = s.control.audit_log(&session.who, 100).await?;
        Ok::<_, ControlError>((users, audit))
    };
    match data.await {
        Ok((users, audit)) => page(
            Some(session),
            "Users",
            "/users",
            false,
            &UsersPage {
                users,
                audit,
                csrf: session.csrf.clone(),
                error,
            },
        ),
        Err(e) => control_error(e),
    }
}

async fn users_page(State(s): State<AppState>, session: Session) -> Response {
    render_users(&s, &session, None).await
}

async fn create_user(State(s): State<AppState>, session: Session, form: Form) -> Response {
    if !csrf_ok(&session, &form) {
        return csrf_refused();
    }
    match s
        .control
        .create_user(
            &session.who,
            form.get("email"),
            form.get("password"),
            form.get("role"),
            now_ms(),
        )
        .await
    {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) if inline(&e) => render_users(&s, &session, Some(e.to_string())).await,
        Err(e) => control_error(e),
    }
}

/// Pushes [`crate::service::UiEvent`]s to a signed-in browser.
async fn live_socket(
    State(s): State<AppState>,
    Authed(who): Authed,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Err(e) = s.control.authorize(&who, Action::View) {
        return control_error(e);
    }
    let mut events = s.control.subscribe();
    // A browser only receives here; its socket needs no large read buffer.
    ws.read_buffer_size(super::agent_ws::AGENT_READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |mut socket: WebSocket| async move {
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => {
                            let text = serde_json::to_string(&event).unwrap_or_default();
                            if socket.send(WsMessage::Text(text.into())).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    incoming = socket.recv() => match incoming {
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                }
            }
        })
}
