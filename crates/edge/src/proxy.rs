//! The proxy's phases, in the order the engine calls them for each request.
//!
//! A product implements [`ProxyHttp`]; every method but
//! [`ProxyHttp::upstream_peer`] has a documented default, so a minimal proxy
//! only says where requests go.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version,
};
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;

use crate::body::{self, Body, Captured};
use crate::error::Error;
use crate::route::{self, Authority, PathCheck};
use crate::upstream::UpstreamGroup;

/// What the engine knows about a downstream connection.
#[derive(Debug)]
pub struct ConnInfo {
    /// Unique per process.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the client connected to.
    pub local: SocketAddr,
    /// Present for TLS connections.
    pub tls: Option<TlsInfo>,
    /// The peer's IP as a header value, made on first use.
    peer_ip: OnceLock<HeaderValue>,
    /// The product's own state for this connection, made on first use.
    state: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl ConnInfo {
    /// Describes a connection.
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr, tls: Option<TlsInfo>) -> Self {
        ConnInfo {
            id,
            peer,
            local,
            tls,
            peer_ip: OnceLock::new(),
            state: OnceLock::new(),
        }
    }

    /// The product's state for this connection (what it read from the
    /// client certificate, say), made by `init` on first use. A product
    /// keeps one type here; asking for another type gives `None`.
    pub fn state<T: Any + Send + Sync>(&self, init: impl FnOnce(&ConnInfo) -> T) -> Option<&T> {
        self.state
            .get_or_init(|| Box::new(init(self)))
            .downcast_ref()
    }

    /// The client's IP address as a header value (for `x-forwarded-for`).
    pub fn peer_ip_header(&self) -> &HeaderValue {
        self.peer_ip.get_or_init(|| {
            HeaderValue::from_str(&self.peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        })
    }
}

/// The negotiated TLS parameters of a connection.
#[derive(Debug)]
pub struct TlsInfo {
    /// Server name the client asked for.
    pub sni: Option<String>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// Negotiated application protocol.
    pub alpn: Option<Vec<u8>>,
    /// The client's certificate chain as presented (leaf first), verified by
    /// the listener's verifier; empty when the client sent none.
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// The configuration the handshake used: a product that reloads its
    /// policy compares it with the one in force to know whether the chain
    /// was verified under the current policy.
    pub config: Arc<ServerConfig>,
}

/// What a client's TLS hello asked for, for choosing the configuration of
/// its handshake.
#[derive(Debug, Clone, Default)]
pub struct ClientHello {
    /// The server name (SNI), when one was sent.
    pub server_name: Option<String>,
    /// The application protocols offered (ALPN), in the client's order;
    /// `acme-tls/1` among them marks an ACME TLS-ALPN-01 validation.
    pub alpn: Vec<Vec<u8>>,
}

/// One request as seen by the phases.
#[derive(Debug)]
pub struct Session {
    /// The connection the request arrived on.
    pub conn: Arc<ConnInfo>,
    /// Request method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// HTTP version spoken downstream.
    pub version: Version,
    /// Request headers; phases may change them before they are forwarded.
    pub headers: HeaderMap,
    /// The one authority the request addresses, checked by the engine
    /// before any phase runs; `None` only for HTTP/1.0 without a host.
    pub authority: Option<Authority>,
    /// The path normalised for matching, when it differs from the
    /// request's (see [`route::normalize_path`] and [`Self::normal_path`]).
    normalized: Option<String>,
    /// What normalising the path found.
    pub path_check: PathCheck,
    /// The path and query sent upstream; the request's own when `None`.
    pub upstream_path: Option<http::uri::PathAndQuery>,
    /// Keep up to this many bytes of the request body for [`Exchange`].
    pub capture_request_body: usize,
    /// Keep up to this many bytes of the response body for [`Exchange`].
    pub capture_response_body: usize,
    /// Whether the request asked for a protocol upgrade, decided on arrival.
    upgrade: bool,
}

impl Session {
    /// The host the client addressed, normalised: lowercase, no port, no
    /// trailing dot.
    pub fn host(&self) -> Option<&str> {
        self.authority.as_ref().map(|a| a.host.as_str())
    }

    /// A session for a request that just arrived, and whether its
    /// authority is usable: one that is ambiguous or malformed is refused
    /// before any phase runs.
    pub fn new(
        conn: Arc<ConnInfo>,
        parts: http::request::Parts,
    ) -> (Self, Result<(), route::AuthorityError>) {
        let upgrade = parts.version == Version::HTTP_11
            && parts.headers.contains_key(header::UPGRADE)
            && parts
                .headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let authority = route::authority_of(&parts.uri, &parts.headers, parts.version);
        let normal = route::normalize_path(parts.uri.path());
        let path_check = normal.check;
        let normalized = match normal.path {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(p) => Some(p),
        };
        let mut session = Session {
            conn,
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            authority: None,
            normalized,
            path_check,
            upstream_path: None,
            capture_request_body: 0,
            capture_response_body: 0,
            upgrade,
        };
        let checked = authority.map(|a| session.authority = a);
        (session, checked)
    }

    /// The normalised path routes match on.
    pub fn normal_path(&self) -> &str {
        self.normalized.as_deref().unwrap_or(self.uri.path())
    }

    /// Sends the normalised path (with the request's query) upstream
    /// instead of the path as received. Nothing changes when normalising
    /// left the path as it was.
    pub fn forward_normalized_path(&mut self) {
        let Some(path) = &self.normalized else {
            return;
        };
        let target = match self.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        self.upstream_path = http::uri::PathAndQuery::try_from(target).ok();
    }

    /// Whether this is an HTTP/1.1 protocol upgrade (WebSocket and friends),
    /// as the request arrived.
    pub fn is_upgrade(&self) -> bool {
        self.upgrade
    }
}

/// Everything the engine observed about one finished exchange.
#[derive(Debug)]
pub struct Exchange {
    /// The connection it arrived on.
    pub conn: Arc<ConnInfo>,
    /// When the request headers arrived.
    pub started: SystemTime,
    /// Until the response body finished (or the exchange failed).
    pub duration: Duration,
    /// Request method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// The authority the request was routed on, when it had a usable one.
    pub authority: Option<Authority>,
    /// Request headers as received from the client, after any changes
    /// [`ProxyHttp::request_filter`] made (not the copy sent upstream).
    /// Empty when [`ProxyHttp::exchange_headers`] said no.
    pub request_headers: HeaderMap,
    /// Response headers as sent to the client; `None` when
    /// [`ProxyHttp::exchange_headers`] said no.
    pub response_headers: Option<HeaderMap>,
    /// Status sent to the client.
    pub status: Option<StatusCode>,
    /// The upstream target that served it, `scheme://host:port`.
    pub upstream: Option<Arc<str>>,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// What went wrong, if anything.
    pub error: Option<Error>,
    /// Captured request body prefix, when asked for.
    pub request_body: Option<Captured>,
    /// Captured response body prefix, when asked for.
    pub response_body: Option<Captured>,
}

/// Where a request goes: a group of upstream targets.
pub type Peer = Arc<UpstreamGroup>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How many names [`HOP_BY_HOP`] holds.
const HOP_COUNT: usize = 9;

/// Hop-by-hop headers that never cross a proxy. A static rather than a
/// constant, so that the loops below read one array instead of building a
/// fresh one at every use.
static HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. Upgrade requests keep `Connection: upgrade` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One look at the few names present finds which of the nine to remove;
    // most messages carry none of them, or only `connection`, and removing
    // an absent name costs as much as removing a present one.
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // Names `Connection` lists besides the hop-by-hop ones removed anyway
    // (`keep-alive`, `upgrade`...) and `close`, which names no header. Those
    // are nearly all it ever lists, so they are recognised as text before
    // anything is parsed into a header name.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !removed_anyway(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let mut upgrade = None;
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        let removed = headers.remove(name);
        if name == header::UPGRADE {
            upgrade = removed;
        }
    }
    if keep_upgrade {
        if let Some(u) = upgrade {
            headers.insert(header::UPGRADE, u);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// Where header name `name` (any case) stands in [`HOP_BY_HOP`], if it is
/// one: the one list of hop-by-hop headers, used for requests here and for
/// raw upstream response heads in `h1`. A `match` on the length leaves at
/// most two comparisons, cheaper than comparing against all nine names.
pub(crate) fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let candidates: &[usize] = match name.len() {
        2 => &[5],
        7 => &[6, 8],
        10 => &[0, 1],
        16 => &[2],
        17 => &[7],
        18 => &[3],
        19 => &[4],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|&i| name.eq_ignore_ascii_case(HOP_BY_HOP[i].as_str().as_bytes()))
}

/// Whether a `Connection` token needs no removal of its own: `close`, or a
/// header [`strip_hop_by_hop`] removes in any case.
fn removed_anyway(token: &str) -> bool {
    token.eq_ignore_ascii_case("close")
        || HOP_BY_HOP
            .iter()
            .any(|name| name.as_str().eq_ignore_ascii_case(token))
}

/// What a plain reverse proxy does to request headers: hop-by-hop headers
/// are removed and `x-forwarded-for` / `x-forwarded-proto` set.
pub fn forward_headers(session: &Session, headers: &mut HeaderMap) {
    strip_hop_by_hop(headers, session.is_upgrade());
    let ip = session.conn.peer_ip_header();
    let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", session.conn.peer.ip())).ok(),
        None => Some(ip.clone()),
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if session.conn.tls.is_some() {
        "https"
    } else {
        "http"
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// The response [`ProxyHttp::fail_to_proxy`] gives by default: the error's
/// status with its reason as a short plain-text body.
pub fn error_response(err: &Error) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{}\n", err.kind.reason())));
    *resp.status_mut() = err.kind.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The phases. Each default is what a plain reverse proxy does.
pub trait ProxyHttp: Send + Sync + 'static {
    /// Per-request state shared by the phases, handed to [`Self::logging`] at
    /// the end.
    type Ctx: Send + 'static;

    /// Creates the per-request state.
    fn new_ctx(&self, session: &Session) -> Self::Ctx;

    /// Whether [`Self::logging`] needs the request and response headers in
    /// its [`Exchange`]. Keeping them costs a copy of each header map per
    /// request, so a proxy that does not look at them says no. Default: yes.
    fn exchange_headers(&self, ctx: &Self::Ctx) -> bool {
        let _ = ctx;
        true
    }

    /// Picks the TLS configuration for a connection from what the client's
    /// hello asked for (server name, ALPN protocols). Called before every
    /// handshake, so a reload takes effect on the next connection; it may
    /// wait, e.g. for a certificate issued on demand. Default: no TLS (the
    /// handshake is refused).
    fn tls_config(
        &self,
        hello: &ClientHello,
    ) -> impl Future<Output = Option<Arc<ServerConfig>>> + Send {
        let _ = hello;
        async { None }
    }

    /// A TLS handshake failed; no request exists. Default: a debug log line.
    fn handshake_failed(&self, peer: SocketAddr, sni: Option<&str>, reason: &'static str) {
        tracing::debug!(%peer, ?sni, reason, "TLS handshake failed");
    }

    /// A request was refused before it could become a [`Session`]: its head
    /// was malformed (400), too large (431), its URI too long (414), or it
    /// did not arrive within the header timeout (408, the connection is
    /// closed without an answer). Default: a debug log line.
    fn request_refused(&self, conn: &ConnInfo, status: StatusCode, reason: &'static str) {
        tracing::debug!(peer = %conn.peer, %status, reason, "request refused while parsing");
    }

    /// First look at a request. Return a response to answer it without an
    /// upstream, or an error to fail it. Default: continue.
    fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Result<Option<Response<Body>>, Error>> + Send {
        let _ = (session, ctx);
        async { Ok(None) }
    }

    /// Chooses the upstream group. The only phase without a default.
    fn upstream_peer(&self, session: &Session, ctx: &mut Self::Ctx) -> Result<Peer, Error>;

    /// Adjusts the headers sent upstream. `headers` starts as the request's
    /// headers; `session.headers` still holds them only when
    /// [`Self::exchange_headers`] said yes (otherwise they were moved here
    /// rather than copied). Default: [`forward_headers`].
    fn upstream_request_filter(
        &self,
        session: &Session,
        headers: &mut HeaderMap,
        ctx: &mut Self::Ctx,
    ) -> Result<(), Error> {
        let _ = ctx;
        forward_headers(session, headers);
        Ok(())
    }

    /// Adjusts the upstream's response headers before they go downstream.
    /// Default: hop-by-hop headers are removed.
    fn response_filter(
        &self,
        session: &Session,
        status: StatusCode,
        headers: &mut HeaderMap,
        ctx: &mut Self::Ctx,
    ) {
        let _ = (session, ctx);
        strip_hop_by_hop(headers, status == StatusCode::SWITCHING_PROTOCOLS);
    }

    /// Turns an error into the response the client sees. Default: the
    /// error's status with its reason as a short plain-text body; details
    /// stay in the logs.
    fn fail_to_proxy(&self, session: &Session, err: &Error, ctx: &mut Self::Ctx) -> Response<Body> {
        let _ = (session, ctx);
        error_response(err)
    }

    /// Called once per request when the exchange is over: the response body
    /// was sent or abandoned. The exchange is handed over, so its headers can
    /// be kept without copying. Default: nothing.
    fn logging(&self, exchange: Exchange, ctx: Self::Ctx) {
        let _ = (exchange, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = map(&[
            ("connection", "Keep-Alive, X-Trace, close, TE"),
            ("x-trace", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(names(&headers), ["accept"]);
    }

    #[test]
    fn the_index_of_each_hop_by_hop_name_is_its_place_in_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(
                hop_by_hop_index(name.as_str().as_bytes()),
                Some(i),
                "{name}"
            );
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(hop_by_hop_index(upper.as_bytes()), Some(i), "{upper}");
        }
        assert_eq!(hop_by_hop_index(b"host"), None);
        assert_eq!(hop_by_hop_index(b"connections"), None);
    }

    #[test]
    fn every_value_of_every_connection_header_counts() {
        let mut headers = map(&[
            ("connection", "x-one"),
            ("connection", " , X-TWO ,"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("x-three", "3"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(names(&headers), ["x-three"]);
    }

    #[test]
    fn end_to_end_headers_alone_are_left_as_they_are() {
        let mut headers = map(&[("accept", "*/*"), ("x-a", "1"), ("x-a", "2")]);
        let before = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers, before);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_a_fresh_connection_header() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
        ]);
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(names(&headers), ["connection", "upgrade"]);
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::UPGRADE], "websocket");

        let mut plain = map(&[("upgrade", "websocket")]);
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.is_empty());
    }
}
