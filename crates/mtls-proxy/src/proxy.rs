//! The mtls-proxy phases: route lookup on the normalised host and path,
//! per-route client certificate policy (judged against the policy in force,
//! also for connections opened before a reload), the identity header and
//! the route's header rules, and one record plus metrics per exchange,
//! refusals included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use edge::proxy::{error_response, forward_headers, strip_hop_by_hop};
use edge::{ClientHello, ConnInfo, Error, ErrorKind, Exchange, Peer, ProxyHttp, Session};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use rustls::ServerConfig;

use crate::config::{ClientCertMode, UpstreamPath};
use crate::identity::ClientIdentity;
use crate::runtime::{Route, Runtime};
use crate::store::{Kind, Record, Recorder, StoredHeaders};

/// The reason given when a chain verified under an earlier policy fails
/// the one in force; its connection is closed after the answer.
const NO_LONGER_TRUSTED: &str = "client_cert_no_longer_trusted";

/// What a connection's client certificate says, read once per connection.
struct ConnState {
    identity: Option<Arc<ClientIdentity>>,
    /// The runtime generation whose policy last accepted the chain.
    checked: AtomicU64,
}

impl ConnState {
    fn new(conn: &ConnInfo, runtime: &Runtime) -> Self {
        let tls = conn.tls.as_ref();
        let identity = tls
            .and_then(|t| t.peer_chain.first())
            .and_then(|leaf| ClientIdentity::from_der(leaf.as_ref()).ok())
            .map(Arc::new);
        // The handshake verified the chain; under this runtime's policy if
        // it used this runtime's configuration.
        let current = tls.is_some_and(|t| {
            runtime
                .tls_for(t.sni.as_deref())
                .is_some_and(|set| Arc::ptr_eq(&set.config, &t.config))
        });
        ConnState {
            identity,
            checked: AtomicU64::new(if current { runtime.generation } else { 0 }),
        }
    }
}

/// The proxy: the current runtime (swapped on reload) and the recorder.
pub struct MtlsProxy {
    runtime: ArcSwap<Runtime>,
    recorder: Recorder,
}

/// Per-request state.
pub struct Ctx {
    /// The runtime this request started with; a reload mid-request does not
    /// change its route.
    runtime: Arc<Runtime>,
    route: Option<Arc<Route>>,
    /// The identity that passed the route's policy and goes upstream.
    forwarded: Option<Arc<ClientIdentity>>,
    /// Headers for the record, encoded while the phases still hold them;
    /// `None` when recording is off.
    request_headers: Option<StoredHeaders>,
    response_headers: Option<StoredHeaders>,
}

impl MtlsProxy {
    /// A proxy serving `runtime` and recording into `recorder`.
    pub fn new(runtime: Runtime, recorder: Recorder) -> Self {
        MtlsProxy {
            runtime: ArcSwap::from_pointee(runtime),
            recorder,
        }
    }

    /// The runtime in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the runtime; requests already running keep the old one.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// The recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The connection's verified identity under the policy in force: a
    /// chain verified under an earlier runtime is verified again first.
    fn identity(
        &self,
        session: &Session,
        runtime: &Runtime,
    ) -> Result<Option<Arc<ClientIdentity>>, Error> {
        let Some(tls) = session
            .conn
            .tls
            .as_ref()
            .filter(|t| !t.peer_chain.is_empty())
        else {
            return Ok(None);
        };
        let state = session
            .conn
            .state(|c| ConnState::new(c, runtime))
            .ok_or_else(|| Error::new(ErrorKind::Internal, "connection state of another type"))?;
        if state.checked.load(Ordering::Relaxed) != runtime.generation {
            let trusted = runtime.tls_for(tls.sni.as_deref()).is_some_and(|set| {
                set.verifier.offer_client_auth()
                    && edge::tls::verify_chain(set.verifier.as_ref(), &tls.peer_chain).is_ok()
            });
            if !trusted {
                return Err(Error::refused(
                    StatusCode::FORBIDDEN,
                    NO_LONGER_TRUSTED,
                    "the client certificate fails the policy reloaded since the handshake",
                ));
            }
            state.checked.store(runtime.generation, Ordering::Relaxed);
        }
        Ok(state.identity.clone())
    }

    fn check_client(
        &self,
        session: &Session,
        route: &Route,
        runtime: &Runtime,
    ) -> Result<Option<Arc<ClientIdentity>>, Error> {
        if route.mode == ClientCertMode::Off {
            return Ok(None);
        }
        let Some(identity) = self.identity(session, runtime)? else {
            return match route.mode {
                ClientCertMode::Required => Err(Error::refused(
                    StatusCode::UNAUTHORIZED,
                    "client_cert_required",
                    format!("route {} requires a client certificate", route.name),
                )),
                _ => Ok(None),
            };
        };
        if let (Some(verifier), Some(tls)) = (&route.recheck, session.conn.tls.as_ref()) {
            edge::tls::verify_chain(verifier.as_ref(), &tls.peer_chain).map_err(|e| {
                Error::refused(
                    StatusCode::FORBIDDEN,
                    "identity_not_allowed",
                    format!("certificate not trusted by route {}: {e}", route.name),
                )
            })?;
        }
        if !route.allow.allows(&identity) {
            return Err(Error::refused(
                StatusCode::FORBIDDEN,
                "identity_not_allowed",
                format!(
                    "{} is not on the allowlist of route {}",
                    identity.primary(),
                    route.name
                ),
            ));
        }
        Ok(Some(identity))
    }
}

impl ProxyHttp for MtlsProxy {
    type Ctx = Ctx;

    fn new_ctx(&self, _session: &Session) -> Ctx {
        Ctx {
            runtime: self.runtime.load_full(),
            route: None,
            forwarded: None,
            request_headers: None,
            response_headers: None,
        }
    }

    fn exchange_headers(&self, _ctx: &Ctx) -> bool {
        // The record's headers are encoded in the phases instead, which costs
        // one small buffer rather than two copied maps.
        false
    }

    async fn tls_config(&self, hello: &ClientHello) -> Option<Arc<ServerConfig>> {
        let runtime = self.runtime.load();
        runtime
            .tls_for(hello.server_name.as_deref())
            .map(|set| set.config.clone())
    }

    fn request_refused(&self, conn: &ConnInfo, status: StatusCode, reason: &'static str) {
        tracing::info!(peer = %conn.peer, %status, reason, "request refused while parsing");
        metrics::counter!("mtls_proxy_requests_total", "route" => "-", "status" => status.as_u16().to_string()).increment(1);
        metrics::counter!("mtls_proxy_request_errors_total", "route" => "-", "reason" => reason)
            .increment(1);
        if !self.recorder.is_enabled() {
            return;
        }
        let runtime = self.runtime.load();
        let tls = conn.tls.as_ref();
        let mut rec = Record::new(Kind::Request);
        rec.status = Some(status.as_u16());
        rec.error = Some(reason.to_owned());
        rec.peer = Some(conn.peer);
        rec.tls_version = tls.map(|t| t.version);
        rec.sni = tls.and_then(|t| t.sni.clone());
        rec.client_identity = conn
            .state(|c| ConnState::new(c, &runtime))
            .and_then(|s| s.identity.as_ref())
            .map(|i| i.primary().to_owned());
        self.recorder.record(rec);
    }

    fn handshake_failed(&self, peer: SocketAddr, sni: Option<&str>, reason: &'static str) {
        tracing::info!(%peer, ?sni, reason, "TLS handshake failed");
        let mut rec = Record::new(Kind::Handshake);
        rec.peer = Some(peer);
        rec.error = Some(format!("tls:{reason}"));
        rec.sni = sni.map(str::to_owned);
        self.recorder.record(rec);
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<Response<edge::Body>>, Error> {
        if self.recorder.is_enabled() {
            ctx.request_headers = Some(self.recorder.encode_headers(&session.headers));
        }
        let host = session.host();
        let path = session.normal_path();
        let route =
            ctx.runtime.route(host, path).cloned().ok_or_else(|| {
                Error::new(ErrorKind::NoRoute, format!("host {host:?} path {path}"))
            })?;
        session.capture_request_body = route.capture_body;
        session.capture_response_body = route.capture_body;
        ctx.route = Some(route.clone());
        if let Some(reason) = session.path_check.reason() {
            if !route.allow_unusual_paths {
                return Err(Error::refused(
                    StatusCode::BAD_REQUEST,
                    reason,
                    format!("route {} does not accept this path", route.name),
                ));
            }
        }
        if route.upstream_path == UpstreamPath::Normalized {
            session.forward_normalized_path();
        }
        ctx.forwarded = self.check_client(session, &route, &ctx.runtime)?;
        Ok(None)
    }

    fn upstream_peer(&self, _session: &Session, ctx: &mut Ctx) -> Result<Peer, Error> {
        ctx.route
            .as_ref()
            .map(|r| r.group.clone())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "no route chosen"))
    }

    fn upstream_request_filter(
        &self,
        session: &Session,
        headers: &mut HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<(), Error> {
        forward_headers(session, headers);
        // Whatever a client claims about its certificate never reaches the
        // upstream; only what the handshake verified does.
        let name = &ctx.runtime.identity_header;
        headers.remove(name);
        if let Some(id) = &ctx.forwarded {
            let value = id.forwarded_header_value().ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    "the client certificate's identity cannot be sent as a header",
                )
            })?;
            headers.insert(name.clone(), value.clone());
        }
        if let Some(route) = &ctx.route {
            if !route.headers.is_empty() {
                route.headers.apply(headers, ctx.forwarded.as_deref());
            }
        }
        Ok(())
    }

    fn response_filter(
        &self,
        _session: &Session,
        status: StatusCode,
        headers: &mut HeaderMap,
        ctx: &mut Ctx,
    ) {
        strip_hop_by_hop(headers, status == StatusCode::SWITCHING_PROTOCOLS);
        if self.recorder.is_enabled() {
            ctx.response_headers = Some(self.recorder.encode_headers(headers));
        }
    }

    fn fail_to_proxy(
        &self,
        _session: &Session,
        err: &Error,
        ctx: &mut Ctx,
    ) -> Response<edge::Body> {
        let mut resp = error_response(err);
        if err.kind.reason() == NO_LONGER_TRUSTED {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.recorder.is_enabled() {
            ctx.response_headers = Some(self.recorder.encode_headers(resp.headers()));
        }
        resp
    }

    fn logging(&self, ex: Exchange, ctx: Ctx) {
        let status = ex.status.map(|s| s.as_u16()).unwrap_or(0);
        let seconds = ex.duration.as_secs_f64();
        match &ctx.route {
            Some(r) => {
                r.metrics.requests(status).increment(1);
                r.metrics.duration.record(seconds);
            }
            None => {
                metrics::counter!("mtls_proxy_requests_total", "route" => "-", "status" => status.to_string()).increment(1);
                metrics::histogram!("mtls_proxy_request_duration_seconds", "route" => "-")
                    .record(seconds);
            }
        }
        if let Some(e) = &ex.error {
            let route = ctx.route.as_ref().map_or("-", |r| &r.name).to_owned();
            metrics::counter!("mtls_proxy_request_errors_total", "route" => route, "reason" => e.kind.reason())
                .increment(1);
        }
        if !self.recorder.is_enabled() {
            return;
        }
        let tls = ex.conn.tls.as_ref();
        let truncated = ex.request_body.as_ref().is_some_and(|c| c.truncated)
            || ex.response_body.as_ref().is_some_and(|c| c.truncated);
        let rec = Record {
            ts: ex.started.min(SystemTime::now()),
            duration: ex.duration,
            kind: Kind::Request,
            route: ctx.route.as_ref().map(|r| r.name.clone()),
            upstream: ex.upstream,
            method: Some(ex.method),
            path: Some(ex.uri.path().to_owned()),
            query: ex.uri.query().map(str::to_owned),
            status: ex.status.map(|s| s.as_u16()),
            bytes_in: ex.bytes_in,
            bytes_out: ex.bytes_out,
            client_identity: ctx
                .forwarded
                .as_ref()
                .map(|i| i.primary().to_owned())
                .or_else(|| {
                    // A refused client's identity is recorded too.
                    ex.conn
                        .state(|c| ConnState::new(c, &ctx.runtime))
                        .and_then(|s| s.identity.as_ref())
                        .map(|i| i.primary().to_owned())
                }),
            peer: Some(ex.conn.peer),
            tls_version: tls.map(|t| t.version),
            sni: tls.and_then(|t| t.sni.clone()),
            error: ex.error.map(|e| e.kind.reason().to_owned()),
            request_headers: ctx.request_headers.unwrap_or_default(),
            response_headers: ctx.response_headers.unwrap_or_default(),
            request_body: ex.request_body.map(|c| c.data),
            response_body: ex.response_body.map(|c| c.data),
            truncated,
        };
        self.recorder.record(rec);
    }
}
