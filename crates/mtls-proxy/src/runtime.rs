//! The part of the configuration that hot reload swaps: routes, upstream
//! groups, certificates, CA bundles and CRLs, built and checked up front so
//! a bad file never replaces a good runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use edge::route::normalize_host;
use edge::tls::{
    self, ClientAuthMode, ClientTrust, CrlScope, RevocationPolicy, SniCertResolver, StaleCrlPolicy,
    UnknownRevocation,
};
use edge::{HostMap, HostPattern, RouteTable, UpstreamGroup, UpstreamSettings};
use http::HeaderName;
use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;
use rustls_pki_types::CertificateRevocationListDer;

use crate::config::{self, ClientCertMode, Config, ConfigError, StaleCrl, UpstreamPath};
use crate::headers::HeaderRules;
use crate::identity::{Allowlist, ClientIdentity};

/// Counts runtimes built, so a connection can tell whether the policy it
/// was last checked against is still the one in force.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A route ready to serve.
pub struct Route {
    /// Name for records and metrics.
    pub name: Arc<str>,
    host: Option<HostPattern>,
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
    /// Which path the upstream gets.
    pub upstream_path: UpstreamPath,
    /// Whether paths that climb above `/` or hold encoded `/`, `\\` or NUL
    /// are let through.
    pub allow_unusual_paths: bool,
    /// Request headers removed and set.
    pub headers: HeaderRules,
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

/// The handshake settings for the names of one host pattern.
pub struct TlsSet {
    /// The server configuration handshakes use.
    pub config: Arc<ServerConfig>,
    /// Its client certificate verifier, to check again a chain verified
    /// under an earlier runtime.
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// Everything reload swaps at once.
pub struct Runtime {
    /// Routes by host and path prefix.
    pub routes: RouteTable<Arc<Route>>,
    tls: HostMap<TlsSet>,
    /// Which build this is; a later build has a larger number.
    pub generation: u64,
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
            let id = ClientIdentity::from_der(leaf.as_ref())
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
            resolver
                .add(&names, key)
                .map_err(|e| config.invalid(format!("certificates[{i}].names"), e.to_string()))?;
            files.extend([c.cert.clone(), c.key.clone()]);
        }
        let resolver = Arc::new(resolver);

        let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
        for (i, path) in config.client_auth.crls.iter().enumerate() {
            crls.extend(
                tls::check_crls(path)
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
            prefix: String,
            cas: Vec<PathBuf>,
            revocation: RevocationPolicy,
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
            let host = r
                .host
                .as_deref()
                .map(HostPattern::parse)
                .transpose()
                .map_err(|e| config.invalid(key("host"), e.to_string()))?;
            let headers =
                HeaderRules::build(&r.headers).map_err(|e| config.invalid(key("headers"), e))?;
            drafts.push(Draft {
                route: Route {
                    name: r.name.as_str().into(),
                    host,
                    group: Arc::new(group),
                    mode: r.client_auth,
                    recheck: None,
                    allow,
                    capture_body: r.capture_body,
                    metrics: RouteMetrics::new(&r.name),
                    upstream_path: r.upstream_path,
                    allow_unusual_paths: r.allow_unusual_paths,
                    headers,
                },
                prefix: r.path_prefix.clone(),
                cas,
                revocation: revocation(
                    r.crl_scope.unwrap_or(config.client_auth.crl_scope),
                    r.unknown_revocation
                        .unwrap_or(config.client_auth.unknown_revocation),
                ),
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
        let mut tls_configs = HostMap::default();
        let mut handshake: HashMap<Option<HostPattern>, (Vec<PathBuf>, RevocationPolicy)> =
            HashMap::new();
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
            // The handshake is as lenient as the most lenient route that
            // may serve the name; stricter routes check again.
            let policy = RevocationPolicy {
                scope: wants
                    .iter()
                    .map(|d| d.revocation.scope)
                    .min()
                    .unwrap_or_default(),
                unknown: wants
                    .iter()
                    .map(|d| d.revocation.unknown)
                    .max()
                    .unwrap_or_default(),
            };
            let verifier = if mode == ClientAuthMode::Off {
                tls::client_verifier(mode, &trust(&[], &crls, stale_crl, policy)?)
            } else {
                tls::client_verifier(mode, &trust(&cas, &crls, stale_crl, policy)?)
            }
            .map_err(|e| config.invalid("routes", e.to_string()))?;
            let server =
                tls::server_config(resolver.clone(), verifier.clone(), config.server.http2)
                    .map_err(|e| config.invalid("certificates", e.to_string()))?;
            tls_configs.insert(
                host.clone(),
                TlsSet {
                    config: server,
                    verifier,
                },
            );
            handshake.insert(host, (cas, policy));
        }

        let mut routes = RouteTable::default();
        for d in drafts {
            let mut route = d.route;
            if route.mode != ClientCertMode::Off {
                // The handshake checked the chain against every CA of the
                // routes sharing this host, as leniently as the most lenient
                // of them; a route with fewer CAs or a stricter revocation
                // policy checks again.
                let differs = handshake
                    .iter()
                    .filter(|(h, _)| route.host.is_none() || **h == route.host)
                    .any(|(_, (cas, policy))| *cas != d.cas || *policy != d.revocation);
                if differs {
                    let v = tls::client_verifier(
                        ClientAuthMode::Required,
                        &trust(&d.cas, &crls, stale_crl, d.revocation)?,
                    )
                    .map_err(|e| {
                        config.invalid(format!("routes.{}.client_ca", route.name), e.to_string())
                    })?;
                    route.recheck = Some(v);
                }
            }
            routes.add(route.host.clone(), &d.prefix, Arc::new(route));
        }
        files.sort();
        files.dedup();
        Ok(Runtime {
            routes,
            tls: tls_configs,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            identity_header: HeaderName::from_bytes(config.server.identity_header.as_bytes())
                .map_err(|_| config.invalid("server.identity_header", "not a valid header name"))?,
            certificates,
            files,
        })
    }

    /// The route for a normalised host and path.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.routes.lookup(host, path)
    }

    /// The handshake settings for a server name.
    pub fn tls_for(&self, sni: Option<&str>) -> Option<&TlsSet> {
        let name = sni.and_then(|n| normalize_host(n).ok());
        self.tls.lookup(name.as_deref())
    }
}

fn revocation(scope: config::CrlScope, unknown: config::UnknownRevocation) -> RevocationPolicy {
    RevocationPolicy {
        scope: match scope {
            config::CrlScope::Leaf => CrlScope::Leaf,
            config::CrlScope::Chain => CrlScope::Chain,
        },
        unknown: match unknown {
            config::UnknownRevocation::Deny => UnknownRevocation::Deny,
            config::UnknownRevocation::Allow => UnknownRevocation::Allow,
        },
    }
}

fn trust(
    cas: &[PathBuf],
    crls: &[CertificateRevocationListDer<'static>],
    stale_crl: StaleCrlPolicy,
    revocation: RevocationPolicy,
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
        revocation,
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
