//! Upstream groups: round robin over several targets, passive health, and a
//! pooled HTTP/1.1 client (plain or TLS, with optional client certificates).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::ServerName;

use crate::body::Body;
use crate::error::SetupError;
use crate::tls::{upstream_client_config, UpstreamTlsSpec};

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

/// The HTTP client used for upstream requests.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// One target of a group.
#[derive(Debug)]
pub struct Upstream {
    /// Scheme and authority, e.g. `https://10.0.0.5:8443`.
    pub base: Uri,
    /// `base` as text without a trailing slash, for records and logs.
    pub label: Arc<str>,
    /// Milliseconds since [`epoch`] until which the target is skipped.
    down_until_ms: AtomicU64,
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

/// A set of equivalent upstream targets sharing one client and settings.
pub struct UpstreamGroup {
    /// Name used in logs and records.
    pub name: String,
    targets: Vec<Upstream>,
    next: AtomicUsize,
    client: UpstreamClient,
    settings: UpstreamSettings,
}

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        let mut targets = Vec::with_capacity(urls.len());
        let mut any_tls = false;
        for url in urls {
            let uri: Uri = url
                .parse()
                .map_err(|e| SetupError::Invalid(format!("upstream {url:?}: {e}")))?;
            match uri.scheme_str() {
                Some("http") => {}
                Some("https") => any_tls = true,
                _ => {
                    return Err(SetupError::Invalid(format!(
                        "upstream {url:?}: scheme must be http or https"
                    )))
                }
            }
            if uri.authority().is_none() {
                return Err(SetupError::Invalid(format!("upstream {url:?}: no host")));
            }
            if uri.path() != "/" && !uri.path().is_empty() {
                return Err(SetupError::Invalid(format!(
                    "upstream {url:?}: a path is not supported; give scheme://host:port"
                )));
            }
            targets.push(Upstream {
                label: format!(
                    "{}://{}",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map(|a| a.as_str()).unwrap_or_default()
                )
                .into(),
                base: uri,
                down_until_ms: AtomicU64::new(0),
            });
        }
        let client = build_client(&settings, any_tls)?;
        Ok(UpstreamGroup {
            name: name.to_owned(),
            targets,
            next: AtomicUsize::new(0),
            client,
            settings,
        })
    }

    /// The group's settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// The pooled client.
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// The targets, in configuration order.
    pub fn targets(&self) -> &[Upstream] {
        &self.targets
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

fn build_client(settings: &UpstreamSettings, tls: bool) -> Result<UpstreamClient, SetupError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    http.set_nodelay(true);
    let tls_config = if tls {
        upstream_client_config(&settings.tls)?
    } else {
        // A plain group still needs a config to build the connector; it is
        // never used because every target is http://, so it trusts nothing.
        crate::tls::unused_client_config()?
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let builder = match &settings.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| SetupError::Invalid(format!("server_name {name:?}: {e}")))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(settings.max_idle_per_host)
        // See the server side: flattened writes are cheaper here too.
        .http1_writev(false)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
