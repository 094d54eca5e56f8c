//! The router: Rivetr's side of the `edge` engine. Each host name (an app's
//! `<app>.<base domain>` and its custom domains) maps to the app's current
//! backend, a round-robin group over its replicas. The table is immutable
//! and swapped whole (`ArcSwap`), so a request sees the old backend or the
//! new one, never a half-built table.
//!
//! A request holds its backend (`Arc<Backend>`) until its exchange is over,
//! which is how a deploy knows when an old backend has drained.
//!
//! The router does not decide what runs: the engine tells it which backend
//! an app has.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use edge::route::HostPattern;
use edge::{Error, Exchange, HostMap, Peer, ProxyHttp, Session, UpstreamGroup};
use http::StatusCode;

/// One deployment's replicas, as the router sends traffic to them.
#[derive(Debug)]
pub struct Backend {
    pub app: String,
    pub deployment: i64,
    pub group: Arc<UpstreamGroup>,
    /// `rivetr_router_requests_total` by status class, looked up once
    /// rather than per request.
    counters: [metrics::Counter; 6],
}

/// Status classes counted per app; the last is "no status".
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn counters_for(app: &str) -> [metrics::Counter; 6] {
    CLASSES.map(|class| {
        metrics::counter!("rivetr_router_requests_total", "app" => app.to_owned(), "class" => class)
    })
}

fn class_index(status: Option<StatusCode>) -> usize {
    match status.map(|s| s.as_u16()) {
        Some(s @ 100..=599) => (s / 100 - 1) as usize,
        _ => 5,
    }
}

impl Backend {
    pub fn new(app: &str, deployment: i64, group: Arc<UpstreamGroup>) -> Backend {
        Backend {
            app: app.to_owned(),
            deployment,
            group,
            counters: counters_for(app),
        }
    }

    /// Requests in flight on this backend: every holder but the one asking
    /// (and the route table, while it is still routed).
    pub fn holders(self: &Arc<Self>) -> usize {
        Arc::strong_count(self)
    }
}

#[derive(Default)]
struct Table {
    hosts: HostMap<Arc<Backend>>,
}

/// What the router serves for one app.
#[derive(Clone)]
struct AppRoute {
    hosts: Vec<String>,
    backend: Arc<Backend>,
}

/// Host-name routing over the apps' current backends.
pub struct Router {
    table: ArcSwap<Table>,
    /// The source the table is rebuilt from; writers hold the lock, readers
    /// never touch it.
    apps: Mutex<BTreeMap<String, AppRoute>>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl Router {
    pub fn new() -> Router {
        Router {
            table: ArcSwap::from_pointee(Table::default()),
            apps: Mutex::new(BTreeMap::new()),
        }
    }

    /// Routes `hosts` to `backend` for `app`, replacing whatever the app had,
    /// in one swap. Returns the backend it replaced.
    pub fn set(
        &self,
        app: &str,
        hosts: Vec<String>,
        backend: Arc<Backend>,
    ) -> Option<Arc<Backend>> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let old = apps.insert(app.to_owned(), AppRoute { hosts, backend });
        self.rebuild(&apps);
        old.map(|r| r.backend)
    }

    /// Stops routing `app`; returns its backend.
    pub fn remove(&self, app: &str) -> Option<Arc<Backend>> {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let old = apps.remove(app);
        self.rebuild(&apps);
        old.map(|r| r.backend)
    }

    /// The app's backend, if routed.
    pub fn backend(&self, app: &str) -> Option<Arc<Backend>> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.get(app).map(|r| r.backend.clone())
    }

    /// Host names routed right now, with their app.
    pub fn hosts(&self) -> Vec<(String, String)> {
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.iter()
            .flat_map(|(app, r)| r.hosts.iter().map(move |h| (h.clone(), app.clone())))
            .collect()
    }

    fn rebuild(&self, apps: &BTreeMap<String, AppRoute>) {
        let mut hosts = HostMap::default();
        for route in apps.values() {
            for host in &route.hosts {
                match HostPattern::parse(host) {
                    Ok(pattern) => {
                        hosts.insert(Some(pattern), route.backend.clone());
                    }
                    Err(e) => tracing::warn!(host, error = ?e, "host name not routable"),
                }
            }
        }
        self.table.store(Arc::new(Table { hosts }));
    }
}

/// Per-request state: the backend chosen, held until the exchange ends.
pub struct Ctx {
    backend: Option<Arc<Backend>>,
}

impl ProxyHttp for Router {
    type Ctx = Ctx;

    fn new_ctx(&self, _session: &Session) -> Ctx {
        Ctx { backend: None }
    }

    fn exchange_headers(&self, _ctx: &Ctx) -> bool {
        false
    }

    fn upstream_peer(&self, session: &Session, ctx: &mut Ctx) -> Result<Peer, Error> {
        let table = self.table.load();
        let backend = table.hosts.lookup(session.host()).ok_or_else(|| {
            Error::refused(
                StatusCode::NOT_FOUND,
                "no_app",
                format!("no app answers on {:?}", session.host().unwrap_or("")),
            )
        })?;
        let group = backend.group.clone();
        ctx.backend = Some(backend.clone());
        Ok(group)
    }

    fn logging(&self, exchange: Exchange, ctx: Ctx) {
        match &ctx.backend {
            Some(backend) => backend.counters[class_index(exchange.status)].increment(1),
            None => metrics::counter!(
                "rivetr_router_requests_total",
                "app" => "none",
                "class" => CLASSES[class_index(exchange.status)]
            )
            .increment(1),
        }
    }
}
