//! The part of the configuration that hot reload swaps: routes, upstream
//! groups, certificates, CA bundles and CRLs, built and checked up front so
//! a bad file never replaces a good runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use edge::tls::{self, ClientAuthMode, ClientTrust, SniCertResolver, StaleCrlPolicy};
use edge::{Allowlist, UpstreamGroup, UpstreamSettings};
use http::HeaderName;
use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;
use rustls_pki_types::CertificateRevocationListDer;

use crate::config::{ClientCertMode, Config, ConfigError, StaleCrl};

/// A route ready to serve.
pub struct Route {
    /// Name for records and metrics.
    pub name: Arc<str>,
    host: Option<HostPattern>,
    prefix: String,
    /// Where requests go.
    pub group: Arc<UpstreamGroup>,
    /// Client certificate policy.
    pub mode: ClientCertMode,
    /// Verifier for this route's own CA bundles, when they differ from what
    /// the listener checked during the handshake.
    pub recheck: Option<Arc<dyn ClientCertVerifier>>,
    /// Identities let through.
    pub allow: Allowlist,
    /// Body capture limit.
    pub capture_body: usize,
    /// Metric handles, resolved once instead of on every request.
    pub metrics: RouteMetrics,
}

/// Per-route metric handles. Looking a labelled metric up in the registry
/// allocates and hashes; these handles make recording an atomic add.
pub struct RouteMetrics {
    name: String,
    /// Request latency.
    pub duration: metrics::Histogram,
    by_status: Box<[std::sync::OnceLock<metrics::Counter>]>,
}

impl RouteMetrics {
    fn new(name: &str) -> Self {
        RouteMetrics {
            name: name.to_owned(),
            duration: metrics::histogram!("mtls_proxy_request_duration_seconds", "route" => name.to_owned()),
            by_status: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// The request counter for `status` (0 when no response was sent).
    pub fn requests(&self, status: u16) -> &metrics::Counter {
        let slot = &self.by_status[usize::from(status) % self.by_status.len()];
        slot.get_or_init(|| {
            metrics::counter!("mtls_proxy_requests_total", "route" => self.name.clone(), "status" => status.to_string())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    Exact(String),
    /// `*.suffix`: one label in front of `suffix`.
    Wildcard(String),
}

impl HostPattern {
    fn parse(s: &str) -> Self {
        let s = s.to_ascii_lowercase();
        match s.strip_prefix("*.") {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(s),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        }
    }

    fn specificity(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
        }
    }
}

/// Everything reload swaps at once.
pub struct Runtime {
    /// Routes, most specific first.
    pub routes: Vec<Arc<Route>>,
    tls: HashMap<Option<HostPattern>, Arc<ServerConfig>>,
    /// Header carrying the verified identity upstream.
    pub identity_header: HeaderName,
    /// Server certificates: name and expiry of each leaf.
    pub certificates: Vec<(String, SystemTime)>,
    /// Every file the runtime was built from, for change detection.
    pub files: Vec<PathBuf>,
}

impl Runtime {
    /// Builds the runtime, loading every certificate, key, CA and CRL.
    pub fn build(config: &Config) -> Result<Runtime, ConfigError> {
        let mut files = vec![config.source.clone()];
        let mut resolver = SniCertResolver::default();
        let mut certificates = Vec::new();
        for (i, c) in config.certificates.iter().enumerate() {
            let key = tls::load_certified_key(&c.cert, &c.key)
                .map_err(|e| config.invalid(format!("certificates[{i}]"), e.to_string()))?;
            let leaf = key
                .end_entity_cert()
                .map_err(|e| config.invalid(format!("certificates[{i}].cert"), e.to_string()))?;
            let id = edge::ClientIdentity::from_der(leaf.as_ref())
                .map_err(|e| config.invalid(format!("certificates[{i}].cert"), e.to_string()))?;
            let names = if c.names.is_empty() {
                id.dns.clone()
            } else {
                c.names.clone()
            };
            if names.is_empty() {
                return Err(config.invalid(
                    format!("certificates[{i}].names"),
                    "the certificate has no DNS names; list the names it serves",
                ));
            }
            certificates.push((names.join(","), not_after(leaf.as_ref())));
            resolver.add(&names, key);
            files.extend([c.cert.clone(), c.key.clone()]);
        }
        let resolver = Arc::new(resolver);

        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for (i, path) in config.client_auth.crls.iter().enumerate() {
            crls.extend(
                tls::load_crls(path)
                    .map_err(|e| config.invalid(format!("client_auth.crls[{i}]"), e.to_string()))?,
            );
            files.push(path.clone());
        }
        let stale_crl = match config.client_auth.stale_crl {
            StaleCrl::Deny => StaleCrlPolicy::Deny,
            StaleCrl::Allow => StaleCrlPolicy::Allow,
        };

        // Each route: its upstream group, allowlist and CA set.
        struct Draft {
            route: Route,
            cas: Vec<PathBuf>,
        }
        let mut drafts = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let u = &r.upstream;
            let settings = UpstreamSettings {
                connect_timeout: u.connect_timeout,
                header_timeout: u.header_timeout,
                request_timeout: u.request_timeout,
                idle_timeout: u.idle_timeout,
                fail_timeout: u.fail_timeout,
                tls: tls::UpstreamTlsSpec {
                    ca: u.ca.clone(),
                    cert: u.cert.clone(),
                    key: u.key.clone(),
                    insecure: u.insecure,
                },
                server_name: u.server_name.clone(),
                ..Default::default()
            };
            files.extend(u.ca.iter().chain(&u.cert).chain(&u.key).cloned());
            let group = UpstreamGroup::new(&r.name, &r.upstreams, settings)
                .map_err(|e| config.invalid(key("upstreams"), e.to_string()))?;
            let allow = Allowlist::parse(&r.allow.cn, &r.allow.dns, &r.allow.uri, &r.allow.email)
                .map_err(|e| config.invalid(key("allow"), e.to_string()))?;
            let mut cas = r.client_ca.clone();
            cas.sort();
            cas.dedup();
            for (j, ca) in cas.iter().enumerate() {
                tls::load_roots(&[ca]).map_err(|e| {
                    config.invalid(format!("routes[{i}].client_ca[{j}]"), e.to_string())
                })?;
            }
            files.extend(cas.iter().cloned());
            drafts.push(Draft {
                route: Route {
                    name: r.name.as_str().into(),
                    host: r.host.as_deref().map(HostPattern::parse),
                    prefix: r.path_prefix.clone(),
                    group: Arc::new(group),
                    mode: r.client_auth,
                    recheck: None,
                    allow,
                    capture_body: r.capture_body,
                    metrics: RouteMetrics::new(&r.name),
                },
                cas,
            });
        }

        // One TLS config per host pattern (and one for any other name):
        // certificates are requested when a route that may serve the name
        // wants them, and required only when every such route requires them.
        let mut hosts: Vec<Option<HostPattern>> =
            drafts.iter().map(|d| d.route.host.clone()).collect();
        hosts.push(None);
        hosts.sort_by_key(|h| format!("{h:?}"));
        hosts.dedup();
        let mut tls_configs = HashMap::new();
        let mut handshake_cas: HashMap<Option<HostPattern>, Vec<PathBuf>> = HashMap::new();
        for host in hosts {
            let serving: Vec<&Draft> = drafts
                .iter()
                .filter(|d| match (&host, &d.route.host) {
                    (_, None) => true,
                    (Some(h), Some(rh)) => h == rh,
                    (None, Some(_)) => false,
                })
                .collect();
            // Names no route claims fall back to every route's policy, so a
            // client with an unexpected SNI is still asked for a certificate.
            let serving = if host.is_none() && serving.is_empty() {
                drafts.iter().collect()
            } else {
                serving
            };
            let wants: Vec<&&Draft> = serving
                .iter()
                .filter(|d| d.route.mode != ClientCertMode::Off)
                .collect();
            let mode = if wants.is_empty() {
                ClientAuthMode::Off
            } else if serving
                .iter()
                .all(|d| d.route.mode == ClientCertMode::Required)
            {
                ClientAuthMode::Required
            } else {
                ClientAuthMode::Optional
            };
            let mut cas: Vec<PathBuf> = wants.iter().flat_map(|d| d.cas.iter().cloned()).collect();
            cas.sort();
            cas.dedup();
            let verifier = if mode == ClientAuthMode::Off {
                tls::client_verifier(mode, &trust(&[], &crls, stale_crl)?)
            } else {
                tls::client_verifier(mode, &trust(&cas, &crls, stale_crl)?)
            }
            .map_err(|e| config.invalid("routes", e.to_string()))?;
            let server = tls::server_config(resolver.clone(), verifier, config.server.http2)
                .map_err(|e| config.invalid("certificates", e.to_string()))?;
            tls_configs.insert(host.clone(), server);
            handshake_cas.insert(host, cas);
        }

        let mut routes = Vec::new();
        for d in drafts {
            let mut route = d.route;
            if route.mode != ClientCertMode::Off {
                // The handshake checked the chain against every CA of the
                // routes sharing this host; a route with fewer CAs checks again.
                let differs = handshake_cas
                    .iter()
                    .filter(|(h, _)| route.host.is_none() || **h == route.host)
                    .any(|(_, cas)| *cas != d.cas);
                if differs {
                    let v = tls::client_verifier(
                        ClientAuthMode::Required,
                        &trust(&d.cas, &crls, stale_crl)?,
                    )
                    .map_err(|e| {
                        config.invalid(format!("routes.{}.client_ca", route.name), e.to_string())
                    })?;
                    route.recheck = Some(v);
                }
            }
            routes.push(Arc::new(route));
        }
        routes.sort_by(|a, b| {
            let spec = |r: &Route| r.host.as_ref().map_or(0, HostPattern::specificity);
            spec(b)
                .cmp(&spec(a))
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        files.sort();
        files.dedup();
        Ok(Runtime {
            routes,
            tls: tls_configs,
            identity_header: HeaderName::from_bytes(config.server.identity_header.as_bytes())
                .map_err(|_| config.invalid("server.identity_header", "not a valid header name"))?,
            certificates,
            files,
        })
    }

    /// The route for a host and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(p), Some(h)) => p.matches(h),
                (Some(_), None) => false,
            };
            host_ok && prefix_matches(&r.prefix, path)
        })
    }

    /// The TLS config for a server name.
    pub fn tls_for(&self, sni: Option<&str>) -> Option<Arc<ServerConfig>> {
        if let Some(name) = sni.map(str::to_ascii_lowercase) {
            let exact = HostPattern::Exact(name.clone());
            if let Some(c) = self.tls.get(&Some(exact)) {
                return Some(c.clone());
            }
            if let Some((_, suffix)) = name.split_once('.') {
                if let Some(c) = self
                    .tls
                    .get(&Some(HostPattern::Wildcard(suffix.to_owned())))
                {
                    return Some(c.clone());
                }
            }
        }
        self.tls.get(&None).cloned()
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let p = prefix.trim_end_matches('/');
    path == p
        || path
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn trust(
    cas: &[PathBuf],
    crls: &[CertificateRevocationListDer<'static>],
    stale_crl: StaleCrlPolicy,
) -> Result<ClientTrust, ConfigError> {
    let roots = tls::load_roots(cas).map_err(|e| ConfigError::Invalid {
        file: cas
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        key: "client_ca".into(),
        message: e.to_string(),
    })?;
    Ok(ClientTrust {
        roots: Arc::new(roots),
        crls: crls.to_vec(),
        stale_crl,
    })
}

/// The leaf's notAfter, or the epoch when unreadable (treated as expired).
pub fn not_after(der: &[u8]) -> SystemTime {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok())
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The file fingerprint used to notice changes: path, size and mtime.
pub fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    files
        .iter()
        .map(|p: &PathBuf| {
            let meta = std::fs::metadata(Path::new(p)).ok();
            (
                p.clone(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
    }

    #[test]
    fn host_wildcards_cover_one_label() {
        let p = HostPattern::parse("*.Example.com");
        assert!(p.matches("a.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a.b.example.com"));
    }
}
