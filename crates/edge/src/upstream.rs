//! Upstream groups: round robin over several targets, passive health, and a
//! pool of HTTP/1.1 connections per target (plain or TLS, with optional
//! client certificates).
//!
//! A connection is driven by the task of the request using it (the private
//! `h1` module holds the protocol), so a request costs no hand-over between tasks. It
//! goes back to its target's pool when the response body has been read to
//! the end, so a request never waits behind another one's body; a body-less
//! idempotent request that finds its pooled connection closed by the
//! upstream before any answer is sent again on a new one.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Body, BoxError};
use crate::error::SetupError;
use crate::h1::{Conn, Decoder, Failure, Outgoing, Stream};
use crate::tls::{upstream_client_config, UpstreamTlsSpec};

pub use crate::h1::Upgraded;

/// Timeouts and pool settings for one upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Time allowed to open a TCP connection (and finish TLS).
    pub connect_timeout: Duration,
    /// Time allowed between sending the request and receiving response headers.
    pub header_timeout: Duration,
    /// Time allowed for the whole exchange, bodies included.
    pub request_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream.
    pub max_idle_per_host: usize,
    /// How long an upstream that failed is skipped.
    pub fail_timeout: Duration,
    /// TLS settings for `https://` upstreams.
    pub tls: UpstreamTlsSpec,
    /// Name to verify the upstream certificate against (and send as SNI)
    /// instead of the URL's host.
    pub server_name: Option<String>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 64,
            fail_timeout: Duration::from_secs(10),
            tls: UpstreamTlsSpec::default(),
            server_name: None,
        }
    }
}

/// One target of a group.
pub struct Upstream {
    /// Scheme and authority, e.g. `https://10.0.0.5:8443`.
    pub base: Uri,
    /// `base` as text without a trailing slash, for records and logs.
    pub label: Arc<str>,
    /// Milliseconds since [`epoch`] until which the target is skipped.
    down_until_ms: AtomicU64,
    /// `host:port` to connect to.
    addr: String,
    /// For `https://` targets: the name sent as SNI and verified.
    tls_name: Option<ServerName<'static>>,
    pool: Arc<Pool>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Whether the target is currently being skipped after a failure.
    pub fn is_down(&self) -> bool {
        // Healthy targets (0) skip the clock.
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Idle connections of one target, most recently used last.
struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task closing expired connections runs yet.
    reaper: AtomicBool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    /// The most recently used connection that still works, if any.
    fn take(&self) -> Option<Conn> {
        loop {
            let mut idle = self.lock().pop()?;
            if idle.since.elapsed() <= self.idle_timeout && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        let now = Instant::now();
        {
            let mut idle = self.lock();
            Self::expire(&mut idle, now, self.idle_timeout);
            if idle.len() < self.max_idle {
                idle.push(Idle { conn, since: now });
            }
        }
        if !self.reaper.load(Ordering::Relaxed) && !self.reaper.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Lets connections idle past the timeout go, closing them. The oldest
    /// sit at the front.
    fn expire(idle: &mut Vec<Idle>, now: Instant, timeout: Duration) {
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) > timeout)
            .count();
        idle.drain(..expired);
    }

    /// Closes expired connections, and lets go of those the upstream
    /// closed, even when no request comes along to do it, checking twice per
    /// idle timeout; ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.lock();
                Self::expire(&mut idle, Instant::now(), pool.idle_timeout);
                // Those the upstream closed in the meantime are no use.
                idle.retain_mut(|c| c.conn.is_reusable());
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why an upstream gave no response.
#[derive(Debug)]
pub enum SendError {
    /// The TCP connection could not be opened (refused, unreachable, name
    /// not resolved).
    Connect(io::Error),
    /// Opening the connection, TLS included, took longer than the connect
    /// timeout.
    ConnectTimeout(Duration),
    /// The TLS handshake with the upstream failed.
    Tls(io::Error),
    /// The upstream closed or reset the connection before answering.
    Closed(io::Error),
    /// The connection failed while the response head was being read.
    Io(io::Error),
    /// The response head was not valid HTTP/1.x.
    Protocol(String),
    /// The request body could not be read from the client.
    Body(BoxError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::ConnectTimeout(t) => write!(f, "connect: timed out after {t:?}"),
            SendError::Tls(e) => write!(f, "TLS handshake: {e}"),
            SendError::Closed(e) => write!(f, "upstream closed the connection: {e}"),
            SendError::Io(e) => write!(f, "reading the response: {e}"),
            SendError::Protocol(e) => write!(f, "{e}"),
            SendError::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<Failure> for SendError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::ClosedEarly(e) => SendError::Closed(e),
            Failure::Io(e) => SendError::Io(e),
            Failure::Protocol(e) => SendError::Protocol(e),
            Failure::Body(e) => SendError::Body(e),
        }
    }
}

/// A response body read from its upstream connection, which goes back to
/// the pool once the body has been read to the end. Dropped early, it closes
/// the connection instead: what is left of the body would still be on the
/// wire.
pub struct PooledBody {
    conn: Option<Conn>,
    decoder: Decoder,
    /// Where the connection goes once the body is read; `None` when it may
    /// not be reused.
    pool: Option<Arc<Pool>>,
    /// The rest of a request body the upstream answered before it was all
    /// sent; sent while the response body is read.
    sending: Option<Outgoing>,
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody")
            .field("decoder", &self.decoder)
            .field("pooled", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    /// Hands the connection back, or lets it close, once the body is over.
    /// It is reused only when the whole request went out too: while
    /// `sending` is left, the upstream still expects the rest of it, and
    /// after a failed write it stopped reading.
    fn release(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) {
            if self.sending.is_none() && !conn.write_failed() {
                pool.put(conn);
            }
        }
    }

    /// For a 101 response: the connection, now carrying the upgraded
    /// protocol. `None` for any other response, or when already taken.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        if self.decoder != Decoder::Upgrade {
            return None;
        }
        self.conn.take().map(Conn::into_upgraded)
    }
}

/// A failure in words, without the kind's name.
struct FailureText(Failure);

impl fmt::Display for FailureText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Failure::ClosedEarly(e) | Failure::Io(e) => e.fmt(f),
            Failure::Protocol(e) => f.write_str(e),
            Failure::Body(e) => e.fmt(f),
        }
    }
}

/// The upstream failed in the middle of a response body.
#[derive(Debug)]
pub struct BodyError(String);

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "response body: {}", self.0)
    }
}

impl std::error::Error for BodyError {}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(out) = this.sending.as_mut() {
            match conn.poll_send(cx, out) {
                // All sent, or a write failed (the upstream stopped
                // reading; what it answered may still be read).
                Poll::Ready(Ok(())) => this.sending = None,
                Poll::Ready(Err(e)) => {
                    // The client's body failed; the response goes on, the
                    // connection is spent.
                    tracing::debug!(error = %FailureText(e), "request body ended early");
                    this.pool = None;
                    this.sending = None;
                }
                Poll::Pending => {}
            }
        }
        let polled = this.decoder.poll_data(conn, cx);
        match polled {
            Poll::Ready(Some(Ok(data))) => {
                if this.decoder.is_done() {
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                this.decoder = Decoder::Done;
                Poll::Ready(Some(Err(BodyError(FailureText(e).to_string()))))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done | Decoder::Upgrade => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// A set of equivalent upstream targets sharing settings and TLS setup.
pub struct UpstreamGroup {
    /// Name used in logs and records.
    pub name: String,
    targets: Vec<Upstream>,
    next: AtomicUsize,
    /// Present when some target is `https://`.
    tls: Option<TlsConnector>,
    settings: UpstreamSettings,
}

impl fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamGroup")
            .field("name", &self.name)
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl UpstreamGroup {
    /// Builds a group from target URLs (`http://host:port` or `https://...`).
    pub fn new(
        name: &str,
        urls: &[String],
        settings: UpstreamSettings,
    ) -> Result<Self, SetupError> {
        if urls.is_empty() {
            return Err(SetupError::Invalid(format!(
                "upstream group {name:?} has no targets"
            )));
        }
        let fixed_name = match &settings.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| SetupError::Invalid(format!("server_name {n:?}: {e}")))?,
            ),
            None => None,
        };
        let mut targets = Vec::with_capacity(urls.len());
        let mut any_tls = false;
        for url in urls {
            let uri: Uri = url
                .parse()
                .map_err(|e| SetupError::Invalid(format!("upstream {url:?}: {e}")))?;
            let tls = match uri.scheme_str() {
                Some("http") => false,
                Some("https") => true,
                _ => {
                    return Err(SetupError::Invalid(format!(
                        "upstream {url:?}: scheme must be http or https"
                    )))
                }
            };
            any_tls |= tls;
            let Some(authority) = uri.authority() else {
                return Err(SetupError::Invalid(format!("upstream {url:?}: no host")));
            };
            if uri.path() != "/" && !uri.path().is_empty() {
                return Err(SetupError::Invalid(format!(
                    "upstream {url:?}: a path is not supported; give scheme://host:port"
                )));
            }
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tls_name = if tls {
                Some(match &fixed_name {
                    Some(n) => n.clone(),
                    None => ServerName::try_from(host.to_owned()).map_err(|e| {
                        SetupError::Invalid(format!("upstream {url:?}: host name: {e}"))
                    })?,
                })
            } else {
                None
            };
            targets.push(Upstream {
                label: format!(
                    "{}://{}",
                    if tls { "https" } else { "http" },
                    authority.as_str()
                )
                .into(),
                base: uri.clone(),
                down_until_ms: AtomicU64::new(0),
                addr,
                tls_name,
                pool: Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                    max_idle: settings.max_idle_per_host,
                    idle_timeout: settings.idle_timeout,
                    reaper: AtomicBool::new(false),
                }),
            });
        }
        let tls = if any_tls {
            Some(TlsConnector::from(Arc::new(upstream_client_config(
                &settings.tls,
            )?)))
        } else {
            None
        };
        Ok(UpstreamGroup {
            name: name.to_owned(),
            targets,
            next: AtomicUsize::new(0),
            tls,
            settings,
        })
    }

    /// The group's settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The targets, in configuration order.
    pub fn targets(&self) -> &[Upstream] {
        &self.targets
    }

    /// Sends `req` to target `index` over a pooled connection, or a new one
    /// when none is idle. The request's URI must be in origin form (path and
    /// query) and its headers must carry `Host`.
    ///
    /// Upgrade responses (101) keep their connection: it belongs to the
    /// upgraded stream from then on ([`PooledBody::take_upgraded`]).
    pub async fn send(
        &self,
        index: usize,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, SendError> {
        let target = &self.targets[index];
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Outgoing::new(body);
        // Sent again when a pooled connection turns out closed: only what
        // is whole in hand and safe to repeat.
        let replayable = out.is_empty() && parts.method.is_idempotent();
        loop {
            let (mut conn, pooled) = match target.pool.take() {
                Some(conn) => (conn, true),
                // Boxed: the connect future (TCP, TLS) is large, and keeping
                // it out of this one saves copying it with every request
                // that reuses a connection.
                None => (Box::pin(self.connect(target)).await?, false),
            };
            let head = match conn
                .exchange(&parts.method, path, &parts.headers, &mut out)
                .await
            {
                Ok(head) => head,
                Err(Failure::ClosedEarly(_)) if pooled && replayable => {
                    out.rewind();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // The upstream may answer before the request body is all sent:
            // a full-duplex exchange, or an early refusal. The rest is then
            // sent while the response body is read (see `release` for when
            // the connection is reused).
            let sending = (!conn.sent_all(&out) && head.body != Decoder::Upgrade).then_some(out);
            let mut body = PooledBody {
                conn: Some(conn),
                decoder: head.body,
                pool: head.keep_alive.then(|| target.pool.clone()),
                sending,
            };
            if body.decoder == Decoder::Done {
                // Nothing to read (HEAD, 204, 304, an empty body): the
                // connection is free now.
                body.release();
            }
            let mut resp = Response::new(body);
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            return Ok(resp);
        }
    }

    /// Opens a connection to `target` (TCP, then TLS for `https://`) within
    /// the connect timeout and starts driving it.
    async fn connect(&self, target: &Upstream) -> Result<Conn, SendError> {
        let timeout = self.settings.connect_timeout;
        let open = async {
            let tcp = TcpStream::connect(target.addr.as_str())
                .await
                .map_err(SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let stream = match (&self.tls, &target.tls_name) {
                (Some(tls), Some(name)) => Stream::Tls(Box::new(
                    tls.connect(name.clone(), tcp)
                        .await
                        .map_err(SendError::Tls)?,
                )),
                _ => Stream::Plain(tcp),
            };
            Ok(Conn::new(stream))
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
    }

    /// Picks the next target by round robin, skipping targets marked down
    /// and any index in `exclude`. When every target is down, the next one in
    /// turn is tried anyway: a guess beats refusing all traffic.
    pub fn pick(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !exclude.contains(i));
        let mut fallback = None;
        for i in candidates {
            if !self.targets[i].is_down() {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Marks a target as failed: it is skipped for `fail_timeout`.
    pub fn mark_failed(&self, index: usize) {
        if let Some(t) = self.targets.get(index) {
            let until = now_ms() + self.settings.fail_timeout.as_millis() as u64;
            t.down_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(group = %self.name, target = %t.base, "upstream failed; skipping it for {:?}", self.settings.fail_timeout);
        }
    }

    /// Marks a target as healthy again.
    pub fn mark_ok(&self, index: usize) {
        if let Some(t) = self.targets.get(index) {
            if t.down_until_ms.load(Ordering::Relaxed) != 0 {
                t.down_until_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use http::StatusCode;

    /// How the test backend answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200 ok`, keeping the connection.
        Ok,
        /// `200 ok`, then closing the connection without saying so first,
        /// like a server whose keep-alive timeout just ran out.
        OkThenClose,
        /// `200 ok`, then closing the connection a moment later, once the
        /// proxy has put it back in its pool.
        OkThenCloseLater,
        /// `204`, no body.
        NoContent,
        /// Announces a large body and sends only part of it.
        Partial,
        /// `200 ok` to the first request of each connection; the next one
        /// is read and the connection closed without an answer.
        OnceThenHangUp,
    }

    /// A raw HTTP/1.1 backend that counts the connections it accepts.
    async fn backend(answer: Answer) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if matches!(answer, Answer::OnceThenHangUp) && answered == 1 {
                                return;
                            }
                            answered += 1;
                            let reply: &[u8] = match answer {
                                Answer::Ok
                                | Answer::OkThenClose
                                | Answer::OkThenCloseLater
                                | Answer::OnceThenHangUp => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                                }
                                Answer::NoContent => b"HTTP/1.1 204 No Content\r\n\r\n",
                                Answer::Partial => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial"
                                }
                            };
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            match answer {
                                Answer::OkThenClose => return,
                                Answer::OkThenCloseLater => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    return;
                                }
                                _ => {}
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "backend")
            .body(crate::body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read() {
        let (url, accepted) = backend(Answer::Ok).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..5 {
            let resp = g.send(0, get("/")).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // Bodiless answers are never polled to the end, and still give their
        // connection back.
        let (url, accepted) = backend(Answer::NoContent).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..3 {
            let resp = g.send(0, get("/")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced_without_an_error() {
        let (url, accepted) = backend(Answer::OkThenClose).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for i in 0..4 {
            let resp = g
                .send(0, get("/"))
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // Let the close arrive sometimes before and sometimes after the
            // next request is handed to the connection.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_response_abandoned_midway_does_not_return_its_connection() {
        let (url, accepted) = backend(Answer::Partial).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let resp = g.send(0, get("/")).await.unwrap();
        drop(resp);
        // The next request must not wait behind the unread body.
        let resp = tokio::time::timeout(Duration::from_secs(5), g.send(0, get("/")))
            .await
            .expect("the second request waited for the first one's body")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_that_comes_before_the_request_body_ends_is_not_followed_on_its_connection() {
        use futures_util::StreamExt;
        // The backend answers on the request head alone, while the request
        // body is still being sent; that connection is busy until the body
        // ends, which here it never does.
        let (url, accepted) = backend(Answer::Ok).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let endless = futures_util::stream::iter([Ok::<_, crate::body::BoxError>(Frame::data(
            Bytes::from_static(b"part"),
        ))])
        .chain(futures_util::stream::pending());
        let req = Request::builder()
            .method("POST")
            .uri("/upload")
            .header(http::header::HOST, "backend")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(endless)))
            .unwrap();
        let resp = g.send(0, req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        let resp = tokio::time::timeout(Duration::from_secs(5), g.send(0, get("/")))
            .await
            .expect("the next request waited behind the unfinished upload")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_that_begins_before_the_request_body_ends_goes_on_beside_it() {
        use futures_util::StreamExt;
        // An echo backend: it answers on the request head alone, then sends
        // back every byte of the (chunked) body as it reads it, so each piece
        // comes back only once it was sent.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head = loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let mut body = buf.split_off(head);
            let mut echoed = 0;
            loop {
                s.write_all(&body[echoed..]).await.unwrap();
                echoed = body.len();
                if body.ends_with(b"0\r\n\r\n") {
                    break;
                }
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request body never ended");
                body.extend_from_slice(&chunk[..n]);
            }
            // Stay open: the connection may be kept for another request.
            let _ = s.read(&mut chunk).await;
        });
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static [u8]>(1);
        let pieces = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p))));
        let req = Request::builder()
            .method("POST")
            .uri("/echo")
            .header(http::header::HOST, "backend")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(pieces)))
            .unwrap();
        tx.send(b"one").await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), g.send(0, req))
            .await
            .expect("no response head")
            .unwrap();
        let mut body = resp.into_body();
        let mut next = async |want: &[u8]| {
            let mut got = Vec::new();
            while got.len() < want.len() {
                let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{want:?} never came back"))
                    .expect("the body ended early")
                    .unwrap();
                got.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(got, want);
        };
        next(b"one").await;
        tx.send(b"two").await.unwrap();
        next(b"two").await;
        drop(tx);
        let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the response never ended");
        assert!(end.is_none(), "{end:?}");
        assert_eq!(
            g.targets()[0].pool.lock().len(),
            1,
            "both directions ended cleanly, so the connection is kept"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_let_go_before_it_expires() {
        // The reaper looks every half idle timeout; the one that closed goes
        // at its first look, the healthy one stays until it expires.
        let settings = UpstreamSettings {
            idle_timeout: Duration::from_millis(1000),
            ..Default::default()
        };
        let (closing, _) = backend(Answer::OkThenCloseLater).await;
        let (healthy, _) = backend(Answer::Ok).await;
        let g = UpstreamGroup::new("g", &[closing, healthy], settings).unwrap();
        for i in 0..2 {
            let resp = g.send(i, get("/")).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        let idle = |i: usize| g.targets()[i].pool.lock().len();
        assert_eq!(idle(0), 1);
        assert_eq!(idle(1), 1);
        tokio::time::sleep(Duration::from_millis(750)).await;
        assert_eq!(idle(0), 0, "the closed connection is still pooled");
        assert_eq!(idle(1), 1, "the healthy connection was let go early");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout_without_traffic() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // The proxy keeps the connection for the next request, until it
            // has been idle too long.
            let started = Instant::now();
            let n = s.read(&mut buf).await.unwrap_or(0);
            let _ = closed_tx.send((n, started.elapsed()));
        });
        let settings = UpstreamSettings {
            idle_timeout: Duration::from_millis(100),
            ..Default::default()
        };
        let g = UpstreamGroup::new("g", &[url], settings).unwrap();
        let resp = g.send(0, get("/")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        let (n, after) = tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the idle connection was never closed")
            .unwrap();
        assert_eq!(n, 0, "the proxy sent something instead of closing");
        assert!(after >= Duration::from_millis(90), "closed after {after:?}");
    }

    #[tokio::test]
    async fn connect_failures_say_what_failed() {
        // Nothing listens on port 1.
        let g =
            UpstreamGroup::new("g", &["http://127.0.0.1:1".into()], Default::default()).unwrap();
        let err = g.send(0, get("/")).await.unwrap_err();
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
        assert!(err.to_string().starts_with("connect: "), "{err}");
    }

    #[tokio::test]
    async fn round_robin_skips_failed_targets_until_they_recover() {
        let settings = UpstreamSettings {
            fail_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let urls = vec![
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2".to_owned(),
        ];
        let g = UpstreamGroup::new("g", &urls, settings).unwrap();
        let a = g.pick(&[]).unwrap();
        let b = g.pick(&[]).unwrap();
        assert_ne!(a, b);
        g.mark_failed(0);
        for _ in 0..4 {
            assert_eq!(g.pick(&[]), Some(1));
        }
        assert_eq!(
            g.pick(&[1]),
            Some(0),
            "all others excluded: a down target is still tried"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let picks: Vec<_> = (0..4).map(|_| g.pick(&[]).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn bad_targets_are_named() {
        let err = UpstreamGroup::new("g", &["ftp://x".into()], Default::default()).unwrap_err();
        assert!(err.to_string().contains("ftp://x"), "{err}");
        let err = UpstreamGroup::new("g", &[], Default::default()).unwrap_err();
        assert!(err.to_string().contains("no targets"));
    }

    /// A raw backend that answers every request with `reply` and keeps the
    /// bytes of each request it read (head and body), closing after each
    /// answer when `close` says so.
    async fn scripted(
        reply: &'static [u8],
        close: bool,
    ) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, log) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        if let Some(len) = whole_request(&buf) {
                            log.lock().unwrap().push(buf.drain(..len).collect());
                            if s.write_all(reply).await.is_err() || close {
                                return;
                            }
                            continue;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (url, accepted, seen)
    }

    /// The length of the first whole request in `buf`: its head, plus a
    /// `content-length` body or a chunked one up to its last chunk.
    fn whole_request(buf: &[u8]) -> Option<usize> {
        let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        if text.contains("transfer-encoding: chunked") {
            let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
            return Some(head + end + 5);
        }
        let length = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        (buf.len() >= head + length).then_some(head + length)
    }

    async fn body_of(resp: Response<PooledBody>) -> Result<Bytes, BodyError> {
        resp.into_body().collect().await.map(|b| b.to_bytes())
    }

    #[tokio::test]
    async fn a_chunked_response_is_decoded_and_its_connection_reused() {
        let (url, accepted, _) = scripted(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
            false,
        )
        .await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..3 {
            let resp = g.send(0, get("/")).await.unwrap();
            assert_eq!(&body_of(resp).await.unwrap()[..], b"hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_delimited_by_the_close_is_read_to_the_end_and_not_reused() {
        let (url, accepted, _) = scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..2 {
            let resp = g.send(0, get("/")).await.unwrap();
            assert_eq!(&body_of(resp).await.unwrap()[..], b"until the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn hop_by_hop_response_headers_and_those_connection_names_are_left_out() {
        let (url, accepted, _) = scripted(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
              Keep-Alive: timeout=5\r\nX-Public: 2\r\nContent-Length: 2\r\n\r\nok",
            false,
        )
        .await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..2 {
            let resp = g.send(0, get("/")).await.unwrap();
            let mut names: Vec<_> = resp.headers().keys().map(|k| k.as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["content-length", "x-public"]);
            assert_eq!(&body_of(resp).await.unwrap()[..], b"ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "keep-alive was not honoured"
        );
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (url, _, _) = scripted(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
            false,
        )
        .await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let resp = g.send(0, get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(resp.headers().get("link").is_none());
        assert_eq!(&body_of(resp).await.unwrap()[..], b"done");
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length_says() {
        let (url, accepted, _) =
            scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        for _ in 0..2 {
            let mut req = get("/");
            *req.method_mut() = http::Method::HEAD;
            let resp = g.send(0, req).await.unwrap();
            assert_eq!(resp.headers()["content-length"], "5");
            assert!(resp.body().is_end_stream());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalid_responses_are_protocol_errors_that_say_what_was_wrong() {
        for (reply, expect) in [
            (&b"SPDY/3 200 OK\r\n\r\n"[..], "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "invalid content-length",
            ),
        ] {
            let (url, _, _) = scripted(reply, false).await;
            let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
            let err = g.send(0, get("/")).await.unwrap_err();
            assert!(matches!(err, SendError::Protocol(_)), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_bad_chunk_too() {
        let (url, _, _) =
            scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let err = body_of(g.send(0, get("/")).await.unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("before the body ended"), "{err}");

        let (url, _, _) = scripted(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            false,
        )
        .await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let err = body_of(g.send(0, get("/")).await.unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid chunk size"), "{err}");
    }

    #[tokio::test]
    async fn request_bodies_go_out_with_their_length_or_chunked() {
        use futures_util::StreamExt;
        let (url, accepted, seen) =
            scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
        let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
        let known = Request::builder()
            .method("POST")
            .uri("/known")
            .header(http::header::HOST, "backend")
            .body(crate::body::full("twelve bytes"))
            .unwrap();
        assert_eq!(
            &body_of(g.send(0, known).await.unwrap()).await.unwrap()[..],
            b"ok"
        );
        let parts = futures_util::stream::iter(["one", "two"])
            .map(|p| Ok::<_, crate::body::BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
        let streamed = Request::builder()
            .method("PUT")
            .uri("/streamed")
            .header(http::header::HOST, "backend")
            .body(BodyExt::boxed(http_body_util::StreamBody::new(parts)))
            .unwrap();
        assert_eq!(
            &body_of(g.send(0, streamed).await.unwrap()).await.unwrap()[..],
            b"ok"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&seen[0]),
            "POST /known HTTP/1.1\r\nhost: backend\r\ncontent-length: 12\r\n\r\ntwelve bytes"
        );
        assert_eq!(
            String::from_utf8_lossy(&seen[1]),
            "PUT /streamed HTTP/1.1\r\nhost: backend\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn only_an_idempotent_request_is_sent_again_when_its_connection_dies_unanswered() {
        // Each connection answers one request and hangs up on the next one
        // once it has read it: the request was sent, and no answer came.
        for (method, replayed) in [(http::Method::GET, true), (http::Method::POST, false)] {
            let (url, accepted) = backend(Answer::OnceThenHangUp).await;
            let g = UpstreamGroup::new("g", &[url], Default::default()).unwrap();
            body_of(g.send(0, get("/")).await.unwrap()).await.unwrap();
            let mut req = get("/again");
            *req.method_mut() = method.clone();
            let sent = g.send(0, req).await;
            if replayed {
                let body = body_of(sent.unwrap()).await.unwrap();
                assert_eq!(&body[..], b"ok");
                assert_eq!(accepted.load(Ordering::SeqCst), 2);
            } else {
                let err = sent.unwrap_err();
                assert!(matches!(err, SendError::Closed(_)), "{method}: {err:?}");
                assert_eq!(accepted.load(Ordering::SeqCst), 1);
            }
        }
    }
}
