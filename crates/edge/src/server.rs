//! Serving: accepting connections (plain or TLS), connection limits, idle
//! and slow-client timeouts, graceful drain, and the per-request flow that
//! calls the [`ProxyHttp`] phases.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify, Semaphore};
use tokio_rustls::LazyConfigAcceptor;

use crate::body::{self, Body, BoxError, Tap, Tapped};
use crate::error::{Error, ErrorKind};
use crate::proxy::{ClientHello, ConnInfo, Exchange, ProxyHttp, Session, TlsInfo};
use crate::tls::handshake_failure_reason;
use crate::upstream::SendError;

/// Limits and timeouts of the downstream side. Changing these needs a restart.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Connections served at once across all listeners; more are closed at
    /// once without touching the ones already open.
    pub max_connections: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a client to send a complete request head: the
    /// defence against slowloris.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no traffic for this long is
    /// closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted (request line plus headers); larger ones
    /// get 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Offer HTTP/2 over TLS (ALPN) and accept prior-knowledge h2c.
    pub http2: bool,
    /// Time given to in-flight requests when shutting down.
    pub shutdown_grace: Duration,
    /// Connections one client IP may hold at once; 0 for no limit of its
    /// own. Whatever it is, the last tenth of `max_connections` is kept for
    /// clients that hold none yet, so that one client's idle sockets cannot
    /// lock everyone else out.
    pub max_connections_per_ip: usize,
    /// Prefix of the metrics this crate records, e.g. `mtls_proxy`.
    pub metric_prefix: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            http2: true,
            shutdown_grace: Duration::from_secs(30),
            max_connections_per_ip: 0,
            metric_prefix: "edge".into(),
        }
    }
}

/// Whether a listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP.
    Plain,
    /// TLS, configured per connection by [`ProxyHttp::tls_config`].
    Tls,
}

/// A proxy server: one [`ProxyHttp`] served on any number of listeners that
/// share the connection limit and the shutdown signal.
pub struct Server<P: ProxyHttp> {
    proxy: Arc<P>,
    settings: Arc<ServerSettings>,
    permits: Arc<Semaphore>,
    next_conn: AtomicU64,
    shutting_down: tokio::sync::watch::Sender<bool>,
    closed: Notify,
    builder: auto::Builder<TokioExecutor>,
    /// Open connections per client IP.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl<P: ProxyHttp> Server<P> {
    /// Builds a server around `proxy`.
    pub fn new(proxy: Arc<P>, settings: ServerSettings) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper answers 431 by itself past its buffer; keep that well above
        // our own limit so oversized heads reach the phases and get recorded.
        let hyper_buf = (settings.max_header_bytes * 2 + 8192).max(8192);
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper's own header timer starts as soon as it waits for a
            // head, so it would end idle keep-alive connections too; the
            // connection's watcher times heads instead (see
            // `watch_connection`).
            .header_read_timeout(None)
            .max_buf_size(hyper_buf)
            .keep_alive(true)
            // One flattened write per message measured about a microsecond
            // cheaper per request than a vectored one on loopback.
            .writev(false);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(hyper_buf as u32);
        let builder = if settings.http2 {
            builder
        } else {
            builder.http1_only()
        };
        let (tx, _) = tokio::sync::watch::channel(false);
        Arc::new(Server {
            proxy,
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            settings: Arc::new(settings),
            next_conn: AtomicU64::new(1),
            shutting_down: tx,
            closed: Notify::new(),
            builder,
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// The proxy being served.
    pub fn proxy(&self) -> &Arc<P> {
        &self.proxy
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        self.settings.max_connections - self.permits.available_permits()
    }

    /// Accepts connections on `listener` until [`Server::shutdown`] is called.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener, transport: Transport) {
        let mut stop = self.shutting_down.subscribe();
        let refused = format!("{}_connections_refused_total", self.settings.metric_prefix);
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly
                    // rather than spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                metrics::counter!(refused.clone(), "reason" => "max_connections").increment(1);
                // Dropping the stream closes it right away; the client gets
                // a quick refusal instead of a hang.
                drop(stream);
                continue;
            };
            if let Err(reason) = self.take_ip_slot(peer.ip()) {
                metrics::counter!(refused.clone(), "reason" => reason).increment(1);
                drop(stream);
                continue;
            }
            let server = self.clone();
            tokio::spawn(async move {
                let local = stream.local_addr().unwrap_or(peer);
                server.connection(stream, peer, local, transport).await;
                server.release_ip_slot(peer.ip());
                drop(permit);
                server.closed.notify_waiters();
            });
        }
    }

    /// Counts a new connection from `ip`, or says why it is refused: the
    /// client holds its limit, or only the reserve is left and the client
    /// already holds a connection.
    fn take_ip_slot(&self, ip: IpAddr) -> Result<(), &'static str> {
        let mut open = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let held = open.get(&ip).copied().unwrap_or(0);
        let limit = self.settings.max_connections_per_ip;
        if limit > 0 && held >= limit {
            return Err("per_ip_limit");
        }
        // The permit for this connection is already taken.
        let reserve = self.settings.max_connections / 10;
        if held > 0 && self.permits.available_permits() < reserve {
            return Err("reserve");
        }
        *open.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    fn release_ip_slot(&self, ip: IpAddr) {
        let mut open = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }

    /// Serves every listener until `shutdown` completes, then drains open
    /// connections (see [`Server::shutdown`]) and returns.
    pub async fn run(
        self: &Arc<Self>,
        listeners: Vec<(TcpListener, Transport)>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut serving = tokio::task::JoinSet::new();
        for (listener, transport) in listeners {
            let server = self.clone();
            serving.spawn(async move { server.serve(listener, transport).await });
        }
        shutdown.await;
        self.shutdown().await;
        while serving.join_next().await.is_some() {}
    }

    /// Stops accepting, asks open connections to finish their current
    /// request, and waits for them up to the shutdown grace period.
    pub async fn shutdown(&self) {
        self.shutting_down.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        while self.active_connections() > 0 {
            let notified = self.closed.notified();
            if self.active_connections() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    open = self.active_connections(),
                    "shutdown grace period over; closing remaining connections"
                );
                break;
            }
        }
    }

    async fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        transport: Transport,
    ) {
        let _ = stream.set_nodelay(true);
        let active = format!("{}_connections_active", self.settings.metric_prefix);
        metrics::gauge!(active.clone()).increment(1.0);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        match transport {
            Transport::Plain => {
                let conn = Arc::new(ConnInfo::new(id, peer, local, None));
                self.serve_http(stream, conn).await;
            }
            Transport::Tls => {
                if let Some((tls, info)) = self.handshake(stream, peer).await {
                    let conn = Arc::new(ConnInfo::new(id, peer, local, Some(info)));
                    self.serve_http(tls, conn).await;
                }
            }
        }
        metrics::gauge!(active).decrement(1.0);
    }

    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo)> {
        let mut sni = None;
        let attempt = async {
            let start =
                LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
            let hello = start.client_hello();
            let hello = ClientHello {
                server_name: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            };
            sni = hello.server_name.clone();
            let Some(config) = self.proxy.tls_config(&hello).await else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    rustls::Error::General("no certificate for this server name".into()),
                ));
            };
            start
                .into_stream(config.clone())
                .await
                .map(|tls| (tls, config))
        };
        let result = tokio::time::timeout(self.settings.handshake_timeout, attempt).await;
        let failure = |reason: &'static str| {
            metrics::counter!(
                format!("{}_tls_handshake_failures_total", self.settings.metric_prefix),
                "reason" => reason
            )
            .increment(1);
            self.proxy.handshake_failed(peer, sni.as_deref(), reason);
        };
        let (tls, config) = match result {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                failure(handshake_failure_reason(&e));
                return None;
            }
            Err(_) => {
                failure("timeout");
                return None;
            }
        };
        let (_, session) = tls.get_ref();
        let kind = match session.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        metrics::counter!(
            format!("{}_tls_handshakes_total", self.settings.metric_prefix),
            "kind" => kind
        )
        .increment(1);
        let peer_chain: Vec<_> = session
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let info = TlsInfo {
            sni: session.server_name().map(str::to_owned),
            version: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            peer_chain,
            config,
        };
        Some((tls, info))
    }

    async fn serve_http<I>(self: &Arc<Self>, io: I, conn: Arc<ConnInfo>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Tracked {
            inner: io,
            activity: activity.clone(),
        });
        let server = self.clone();
        let act = activity.clone();
        let info = conn.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            let conn = conn.clone();
            let act = act.clone();
            async move { Ok::<_, Infallible>(server.handle(req, conn, act).await) }
        });
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        // The shutdown signal and the timeouts are watched by a task of
        // their own, which says when to close. Polled here, they would be
        // polled again at every wake-up of the connection, several times
        // per request.
        let (close_tx, mut close) = oneshot::channel();
        tokio::spawn(watch_connection(
            self.shutting_down.subscribe(),
            activity,
            Timeouts {
                idle: self.settings.idle_timeout,
                header: self.settings.header_read_timeout,
            },
            close_tx,
        ));
        let mut closing = false;
        loop {
            tokio::select! {
                biased;
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        match e.downcast_ref::<hyper::Error>() {
                            Some(e) => self.refused_while_parsing(&info, e),
                            None => tracing::debug!("connection ended with an error: {e}"),
                        }
                    }
                    break;
                }
                why = &mut close, if !closing => {
                    closing = true;
                    match why {
                        Ok(Close::HeaderTimeout) => {
                            // hyper would wait for the head it is reading;
                            // dropping the connection closes the socket.
                            self.refused(&info, StatusCode::REQUEST_TIMEOUT, "header_timeout");
                            break;
                        }
                        _ => connection.as_mut().graceful_shutdown(),
                    }
                }
            }
        }
    }

    /// Reports a request hyper refused before it became one (a malformed
    /// head, one too large, an over-long URI), with the status hyper sent.
    fn refused_while_parsing(&self, conn: &ConnInfo, e: &hyper::Error) {
        let (status, reason) = if e.is_parse_too_large() {
            if e.to_string().contains("URI") {
                (StatusCode::URI_TOO_LONG, "uri_too_long")
            } else {
                (
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "headers_too_large",
                )
            }
        } else if e.is_parse() || e.is_parse_status() {
            (StatusCode::BAD_REQUEST, "malformed_request")
        } else {
            tracing::debug!("connection ended with an error: {e}");
            return;
        };
        tracing::debug!("request refused while parsing: {e}");
        self.refused(conn, status, reason);
    }

    fn refused(&self, conn: &ConnInfo, status: StatusCode, reason: &'static str) {
        metrics::counter!(
            format!("{}_requests_refused_total", self.settings.metric_prefix),
            "reason" => reason
        )
        .increment(1);
        self.proxy.request_refused(conn, status, reason);
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        activity: Arc<Activity>,
    ) -> Response<Body> {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.started.fetch_add(1, Ordering::Relaxed);
        let upgrade =
            if req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE) {
                Some(hyper::upgrade::on(&mut req))
            } else {
                None
            };
        let (parts, body) = req.into_parts();
        let (mut session, checked) = Session::new(conn, parts);
        let refused = checked.err().map(|e| {
            Error::refused(
                StatusCode::BAD_REQUEST,
                e.reason(),
                "the request's authority is ambiguous or malformed",
            )
        });
        let mut ctx = self.proxy.new_ctx(&session);
        let keep_headers = self.proxy.exchange_headers(&ctx);
        let finish = Arc::new(Finish {
            proxy: self.proxy.clone(),
            t0: Instant::now(),
            req_tap: Mutex::new(None),
            resp_tap: Mutex::new(None),
            activity,
            state: Mutex::new(None),
        });
        let mut route = Routed::default();
        let outcome = match refused {
            Some(err) => Err(err),
            None => {
                let mut fwd = Forwarding {
                    session: &mut session,
                    ctx: &mut ctx,
                    finish: &finish,
                    route: &mut route,
                    keep_headers,
                };
                self.forward(&mut fwd, body, upgrade).await
            }
        };
        let (response, error) = match outcome {
            Ok(resp) => (resp, None),
            Err(err) => {
                if err.side() != crate::error::ErrorSide::Downstream {
                    tracing::warn!(method = %session.method, uri = %session.uri, "proxying failed: {err}");
                }
                let resp = self.proxy.fail_to_proxy(&session, &err, &mut ctx);
                (resp, Some(err))
            }
        };
        let exchange = Exchange {
            conn: session.conn.clone(),
            started: SystemTime::now() - finish.t0.elapsed(),
            duration: Duration::ZERO,
            method: session.method,
            uri: session.uri,
            authority: session.authority,
            request_headers: session.headers,
            response_headers: keep_headers.then(|| response.headers().clone()),
            status: Some(response.status()),
            upstream: route.upstream,
            bytes_in: 0,
            bytes_out: 0,
            error,
            request_body: None,
            response_body: None,
        };
        *finish.state.lock().unwrap_or_else(|p| p.into_inner()) = Some((exchange, ctx));
        // The response body holds `finish`, so logging runs when the client
        // has the whole body (or gave up on it).
        let (parts, body) = response.into_parts();
        let body = Tapped::new(
            body,
            finish.resp_tap(session.capture_response_body),
            None,
            route.deadline,
            ErrorKind::UpstreamProtocol,
            finish,
        );
        Response::from_parts(parts, body.boxed())
    }

    /// The steps of one proxied request: the head's limits, the request
    /// phases, the headers for the upstream, the exchange with it (retried
    /// on another target when that is safe), an upgrade's splice, and the
    /// response phase.
    async fn forward(
        &self,
        fwd: &mut Forwarding<'_, P>,
        body: Incoming,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<Body>, Error> {
        self.check_head(fwd.session)?;
        if let Some(resp) = self.proxy.request_filter(fwd.session, fwd.ctx).await? {
            return Ok(resp);
        }
        let group = self.proxy.upstream_peer(fwd.session, fwd.ctx)?;
        let headers = self.upstream_headers(fwd)?;
        let deadline = tokio::time::Instant::now() + group.settings().request_timeout;
        fwd.route.deadline = Some(deadline);
        let empty_body = body.is_end_stream();
        let req_tap = fwd.finish.req_tap(fwd.session.capture_request_body);
        let body = Tapped::new(
            body,
            req_tap.clone(),
            Some(self.settings.max_body_bytes),
            Some(deadline),
            ErrorKind::DownstreamProtocol,
            fwd.finish.clone(),
        )
        .boxed();
        let attempt = Attempt {
            group: &group,
            headers,
            body: (!empty_body).then_some(body),
            req_tap: &req_tap,
            deadline,
        };
        let response = self.exchange(fwd, attempt).await?;
        let response = splice_upgrade(response, upgrade, fwd.finish);
        let (mut parts, body) = response.into_parts();
        // The client hears the version it spoke, whatever the upstream did.
        parts.version = fwd.session.version;
        self.proxy
            .response_filter(fwd.session, parts.status, &mut parts.headers, fwd.ctx);
        Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ))
    }

    /// Refuses a request head over the size limit, or one whose declared
    /// body is.
    fn check_head(&self, session: &Session) -> Result<(), Error> {
        let head = head_size(session);
        if head > self.settings.max_header_bytes {
            return Err(Error::new(
                ErrorKind::HeadersTooLarge,
                format!(
                    "request head is {head} bytes, limit {}",
                    self.settings.max_header_bytes
                ),
            ));
        }
        let declared = session
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > self.settings.max_body_bytes) {
            return Err(Error::new(
                ErrorKind::BodyTooLarge,
                format!(
                    "content-length {n} over limit {}",
                    self.settings.max_body_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The headers the upstream gets: the request's, with `Host` set to the
    /// authority the request was routed on, then whatever
    /// [`ProxyHttp::upstream_request_filter`] changes.
    fn upstream_headers(&self, fwd: &mut Forwarding<'_, P>) -> Result<HeaderMap, Error> {
        // The exchange keeps the headers as they arrived only if the proxy
        // asked for them; otherwise they move to the upstream request.
        let mut headers = if fwd.keep_headers {
            fwd.session.headers.clone()
        } else {
            std::mem::take(&mut fwd.session.headers)
        };
        if let Some(a) = &fwd.session.authority {
            // HTTP/2 carries the host in `:authority`, an absolute-form
            // target in the request line; the upstream speaks HTTP/1.1,
            // which needs the header, and gets the authority routed on.
            if headers
                .get(header::HOST)
                .is_none_or(|h| h.as_bytes() != a.raw.as_bytes())
            {
                let v = HeaderValue::from_str(&a.raw)
                    .map_err(|_| Error::refused(StatusCode::BAD_REQUEST, "invalid_host", ""))?;
                headers.insert(header::HOST, v);
            }
        }
        self.proxy
            .upstream_request_filter(fwd.session, &mut headers, fwd.ctx)?;
        Ok(headers)
    }

    /// Sends the request to a target of the group and waits for the
    /// response head; a body-less request that never reached a target is
    /// sent to the next one.
    async fn exchange(
        &self,
        fwd: &mut Forwarding<'_, P>,
        mut attempt: Attempt<'_>,
    ) -> Result<Response<crate::upstream::PooledBody>, Error> {
        let group = attempt.group;
        let session = &*fwd.session;
        if session.authority.is_none() && !attempt.headers.contains_key(header::HOST) {
            // An HTTP/1.0 client may send no host at all; HTTP/1.1 needs one.
            if let Some(v) = group.targets()[0]
                .base
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                attempt.headers.insert(header::HOST, v);
            }
        }
        let path = session
            .upstream_path
            .clone()
            .or_else(|| session.uri.path_and_query().cloned())
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let header_timeout = group.settings().header_timeout;
        let empty_body = attempt.body.is_none();
        // Targets that failed this request; allocated only on a retry.
        let mut tried = Vec::new();
        let mut attempts = 0;
        loop {
            let Some(index) = group.pick(&tried) else {
                return Err(Error::new(
                    ErrorKind::ConnectFailed,
                    "no upstream left to try",
                ));
            };
            attempts += 1;
            fwd.route.upstream = Some(group.targets()[index].label.clone());
            let mut builder = Request::builder()
                .method(session.method.clone())
                .uri(http::Uri::from(path.clone()))
                .version(Version::HTTP_11);
            // Only a body-less request is ever retried; the last attempt
            // takes the headers instead of copying them.
            let last = !empty_body || attempts == group.targets().len();
            if let Some(h) = builder.headers_mut() {
                *h = if last {
                    std::mem::take(&mut attempt.headers)
                } else {
                    attempt.headers.clone()
                };
            }
            let req_body = attempt.body.take().unwrap_or_else(body::empty);
            let req = builder
                .body(req_body)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
            let wait = header_timeout.min(
                attempt
                    .deadline
                    .saturating_duration_since(tokio::time::Instant::now()),
            );
            let err = match tokio::time::timeout(wait, group.send(index, req)).await {
                Ok(Ok(resp)) => {
                    group.mark_ok(index);
                    return Ok(resp);
                }
                Ok(Err(e)) => classify_send_error(e, attempt.req_tap),
                Err(_) => Error::new(
                    ErrorKind::HeaderTimeout,
                    format!("no response headers within {wait:?}"),
                ),
            };
            if matches!(
                err.kind,
                ErrorKind::ConnectFailed
                    | ErrorKind::ConnectTimeout
                    | ErrorKind::UpstreamTls
                    | ErrorKind::HeaderTimeout
            ) {
                group.mark_failed(index);
            }
            let more = attempts < group.targets().len();
            if !(err.kind.retry_safe() && empty_body && more) {
                return Err(err);
            }
            tried.push(index);
            tracing::debug!("retrying on another upstream after: {err}");
        }
    }
}

/// One request on its way through [`Server::forward`]: the pieces
/// [`Server::handle`] keeps using afterwards.
struct Forwarding<'a, P: ProxyHttp> {
    session: &'a mut Session,
    ctx: &'a mut P::Ctx,
    finish: &'a Arc<Finish<P>>,
    route: &'a mut Routed,
    keep_headers: bool,
}

/// What [`Server::exchange`] sends: headers ready for the upstream and the
/// body, `None` when the request has none (and may be sent again).
struct Attempt<'a> {
    group: &'a crate::upstream::UpstreamGroup,
    headers: HeaderMap,
    body: Option<Body>,
    req_tap: &'a Tap,
    deadline: tokio::time::Instant,
}

/// After a 101, joins the client's upgraded connection to the upstream's
/// in a task of its own, counting the bytes each way.
fn splice_upgrade<P: ProxyHttp>(
    mut response: Response<crate::upstream::PooledBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    finish: &Arc<Finish<P>>,
) -> Response<crate::upstream::PooledBody> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    if let (Some(down), Some(mut up)) = (upgrade, response.body_mut().take_upgraded()) {
        let finish = finish.clone();
        tokio::spawn(async move {
            let Ok(down) = down.await else {
                tracing::debug!("upgrade did not complete");
                return;
            };
            let mut down = TokioIo::new(down);
            if let Ok((to_up, to_down)) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                finish.req_tap(0).add(to_up);
                finish.resp_tap(0).add(to_down);
            }
            drop(finish);
        });
    }
    response
}

/// Where [`Server::exchange`] sent a request, for the exchange record and the
/// response body's deadline.
#[derive(Default)]
struct Routed {
    upstream: Option<Arc<str>>,
    deadline: Option<tokio::time::Instant>,
}

/// Size of the request head as it would appear on the wire.
fn head_size(session: &Session) -> usize {
    let uri = &session.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = session.method.as_str().len() + target + 12;
    session
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

fn classify_send_error(e: SendError, req_tap: &Tap) -> Error {
    if req_tap.over_limit() {
        return Error::new(ErrorKind::BodyTooLarge, "request body over the limit");
    }
    if let Some(f) = req_tap.failure() {
        return f;
    }
    let kind = match &e {
        SendError::Connect(io) if io.kind() == io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        SendError::Connect(io) if wraps_rustls_error(io) => ErrorKind::UpstreamTls,
        SendError::Connect(_) => ErrorKind::ConnectFailed,
        SendError::ConnectTimeout(_) => ErrorKind::ConnectTimeout,
        SendError::Tls(_) => ErrorKind::UpstreamTls,
        SendError::Closed(_) | SendError::Io(_) | SendError::Protocol(_) | SendError::Body(_) => {
            ErrorKind::UpstreamProtocol
        }
    };
    Error::new(kind, e.to_string())
}

/// Whether `e` is, or wraps through `io::Error`s, a rustls error. The
/// source chain alone misses it: `io::Error::source` skips the error it
/// wraps and reports that error's source instead.
fn wraps_rustls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    e.downcast_ref::<io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| wraps_rustls_error(inner))
}

/// Runs [`ProxyHttp::logging`] when the last body of an exchange is gone.
struct Finish<P: ProxyHttp> {
    proxy: Arc<P>,
    t0: Instant,
    req_tap: Mutex<Option<Arc<Tap>>>,
    resp_tap: Mutex<Option<Arc<Tap>>>,
    activity: Arc<Activity>,
    state: Mutex<Option<(Exchange, P::Ctx)>>,
}

impl<P: ProxyHttp> Finish<P> {
    fn tap(slot: &Mutex<Option<Arc<Tap>>>, capture: usize) -> Arc<Tap> {
        slot.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| Tap::new(capture))
            .clone()
    }

    fn req_tap(&self, capture: usize) -> Arc<Tap> {
        Self::tap(&self.req_tap, capture)
    }

    fn resp_tap(&self, capture: usize) -> Arc<Tap> {
        Self::tap(&self.resp_tap, capture)
    }
}

impl<P: ProxyHttp> Drop for Finish<P> {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
        let Some((mut exchange, ctx)) = self
            .state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        exchange.duration = self.t0.elapsed();
        let req = self
            .req_tap
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let resp = self
            .resp_tap
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = req {
            exchange.bytes_in = t.bytes();
            exchange.request_body = t.captured();
            if exchange.error.is_none() {
                exchange.error = t.failure();
            }
        }
        if let Some(t) = resp {
            exchange.bytes_out = t.bytes();
            exchange.response_body = t.captured();
            if exchange.error.is_none() {
                exchange.error = t.failure();
            }
        }
        self.proxy.logging(exchange, ctx);
    }
}

/// Traffic and requests on one connection, for its timeouts. The IO path
/// only bumps counters; the connection's watcher, which looks a few times
/// per timeout, notices whether they moved. That keeps clock reads off
/// every read and write.
#[derive(Debug, Default)]
struct Activity {
    /// Successful reads and writes.
    ops: AtomicU64,
    /// Successful reads alone: bytes of a next request.
    reads: AtomicU64,
    /// Requests whose exchange is not over.
    in_flight: AtomicUsize,
    /// Requests that began on this connection.
    started: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a connection's watcher ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// Finish the request in flight, then close (shutdown, idle keep-alive).
    Graceful,
    /// A request head did not arrive in time: close now.
    HeaderTimeout,
}

/// The timeouts a connection's watcher enforces.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle: Duration,
    header: Duration,
}

/// Tells a connection to close, through `close`, once the server shuts
/// down, a request head takes longer than the header timeout (counted from
/// the connection's start for the first request, from the first byte of
/// the head for later ones), or the connection has been idle between
/// requests for the idle timeout. Ends without a word when the connection
/// ends first.
async fn watch_connection(
    mut stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    mut close: oneshot::Sender<Close>,
) {
    let every = (timeouts.idle.min(timeouts.header) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut watch = ConnWatch::new();
    let why = loop {
        tokio::select! {
            _ = close.closed() => return,
            _ = stop.wait_for(|s| *s) => break Close::Graceful,
            _ = tokio::time::sleep(every) => {
                if let Some(why) = watch.check(&activity, timeouts) {
                    break why;
                }
            }
        }
    };
    let _ = close.send(why);
}

/// The watcher's view of an [`Activity`].
struct ConnWatch {
    seen_ops: u64,
    seen_started: u64,
    /// When traffic or a request was last seen.
    active_at: Instant,
    /// Reads counted when the connection last fell idle, and when.
    idle_reads: Option<(u64, Instant)>,
    /// When the bytes of a next request head were first seen.
    head_from: Option<Instant>,
    opened: Instant,
}

impl ConnWatch {
    fn new() -> Self {
        let now = Instant::now();
        ConnWatch {
            seen_ops: 0,
            seen_started: 0,
            active_at: now,
            idle_reads: None,
            head_from: None,
            opened: now,
        }
    }

    /// Whether the connection must close now (to within one check).
    fn check(&mut self, activity: &Activity, t: Timeouts) -> Option<Close> {
        let now = Instant::now();
        let ops = activity.ops.load(Ordering::Relaxed);
        let reads = activity.reads.load(Ordering::Relaxed);
        let started = activity.started.load(Ordering::Relaxed);
        // A request that came and went between two checks is activity too,
        // and the bytes it was read from are no next head.
        if activity.in_flight.load(Ordering::Relaxed) > 0 || started != self.seen_started {
            self.seen_started = started;
            self.seen_ops = ops;
            self.active_at = now;
            self.idle_reads = None;
            self.head_from = None;
            return None;
        }
        if started == 0 {
            // No request yet: silence and a slow first head alike get the
            // header timeout from the start.
            return (now.duration_since(self.opened) >= t.header).then_some(Close::HeaderTimeout);
        }
        if ops != self.seen_ops {
            self.seen_ops = ops;
            self.active_at = now;
        }
        let (idle_reads, _) = *self.idle_reads.get_or_insert((reads, now));
        if reads != idle_reads {
            let from = *self.head_from.get_or_insert(now);
            return (now.duration_since(from) >= t.header).then_some(Close::HeaderTimeout);
        }
        (now.duration_since(self.active_at) >= t.idle).then_some(Close::Graceful)
    }
}

/// An IO wrapper that counts every successful read and write.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
            this.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
