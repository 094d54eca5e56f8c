//! Server-rendered pages shared by every product with a dashboard: the page
//! layout (Askama), the static assets (HTMX, fetched from the npm registry at
//! build time; this workspace's own small live-update script and style
//! sheet) and response helpers.
//!
//! A product renders its content with its own Askama templates and wraps it
//! in [`Page`]; it mounts [`assets_router`] under `/assets`. This crate knows
//! no product, no user store and no roles: the product passes in what the
//! navigation shows. Pages work without JavaScript; HTMX (`hx-boost`) makes
//! navigation and forms partial, and `live.js` applies updates pushed over a
//! WebSocket to elements marked with `data-live` attributes.

use askama::Template;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// HTMX, from the npm registry at build time (see `build.rs`).
pub const HTMX_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/htmx.min.js"));
/// The live-update script (this workspace's own).
pub const LIVE_JS: &str = include_str!("../assets/live.js");
/// The style sheet.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Serves `/assets/htmx.min.js`, `/assets/live.js`, `/assets/style.css`.
pub fn assets_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    fn asset(body: &'static str, kind: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response()
    }
    Router::new()
        .route(
            "/assets/htmx.min.js",
            get(|| async { asset(HTMX_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/live.js",
            get(|| async { asset(LIVE_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// One entry of the navigation bar.
#[derive(Debug, Clone)]
pub struct NavItem {
    pub href: String,
    pub label: String,
    pub active: bool,
}

impl NavItem {
    pub fn new(href: &str, label: &str, current: &str) -> NavItem {
        NavItem {
            href: href.to_owned(),
            label: label.to_owned(),
            active: href == current,
        }
    }
}

/// The page around a product's content.
#[derive(Template)]
#[template(path = "page.html")]
pub struct Page<'a> {
    pub product: &'a str,
    pub title: &'a str,
    pub nav: Vec<NavItem>,
    /// Who is signed in, shown beside the sign-out button.
    pub user: Option<&'a str>,
    /// The CSRF token for the sign-out form (and read by `live.js`).
    pub csrf: &'a str,
    /// Where the sign-out form posts.
    pub logout_action: &'a str,
    /// WebSocket path for live updates, if the page has any.
    pub live_url: Option<&'a str>,
    /// Already-rendered content (from the product's own templates).
    pub body: &'a str,
}

/// Renders a template into an HTML response, or a plain 500 if it fails.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed").into_response(),
    }
}

/// A friendly error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub product: &'a str,
    pub status: u16,
    pub message: &'a str,
}

pub fn error_page(product: &str, status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        product,
        status: status.as_u16(),
        message,
    };
    let mut response = render(&page);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htmx_is_embedded() {
        assert!(HTMX_JS.len() > 10_000);
        assert!(HTMX_JS.contains("htmx"));
    }

    #[test]
    fn page_escapes_its_fields_but_not_the_body() {
        let html = Page {
            product: "Strata",
            title: "<script>x</script>",
            nav: vec![NavItem::new("/a", "A", "/a"), NavItem::new("/b", "B", "/a")],
            user: Some("a@b.c"),
            csrf: "tok",
            logout_action: "/logout",
            live_url: Some("/ui/ws"),
            body: "<p id=\"content\">hi</p>",
        }
        .render()
        .unwrap();
        assert!(!html.contains("<script>x"), "the title is escaped");
        assert!(html.contains("<p id=\"content\">hi</p>"));
        assert!(html.contains("aria-current=\"page\""));
        assert!(html.contains("data-live-url=\"/ui/ws\""));
        assert!(html.contains("name=\"csrf\" value=\"tok\""));
    }

    #[test]
    fn error_page_has_the_status() {
        let r = error_page("Strata", StatusCode::FORBIDDEN, "no");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
