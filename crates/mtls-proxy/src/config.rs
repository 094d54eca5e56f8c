//! The configuration file: TOML with environment overrides, typed and
//! validated, with errors that name the key and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::store::config::duration;

use crate::store::StoreConfig;

/// Prefix of environment overrides; nested keys use `__`, e.g.
/// `MTLS_PROXY_SERVER__ADMIN=127.0.0.1:9901`.
pub const ENV_PREFIX: &str = "MTLS_PROXY_";

/// A configuration problem, naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be parsed or a value has the wrong type.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A value parsed but makes no sense, or a file it names is unusable.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, limits and timeouts.
    #[serde(default)]
    pub server: ServerConfig,
    /// Server certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Revocation settings shared by every route.
    #[serde(default)]
    pub client_auth: ClientAuthConfig,
    /// Where and how exchanges are recorded; recording is off without it.
    pub store: Option<StoreConfig>,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// Routes, matched by host then longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The file the configuration came from, for messages and relative paths.
    #[serde(skip)]
    pub source: PathBuf,
}

/// Listeners, limits and timeouts. Changes here need a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTPS listener address.
    pub https: Option<String>,
    /// Plain HTTP listener address.
    pub http: Option<String>,
    /// Admin listener (metrics, health, log queries).
    pub admin: Option<String>,
    /// Connections served at once; more are closed right away.
    pub max_connections: usize,
    /// Time for a client to send a request head (slowloris defence).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections are closed after this.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Time for a TLS handshake.
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// Largest request head; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: u64,
    /// Offer HTTP/2.
    pub http2: bool,
    /// Time in-flight requests get on shutdown.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Header carrying the verified client identity upstream. The same
    /// header from a client is always removed.
    pub identity_header: String,
    /// `/readyz` fails when a server certificate expires within this.
    #[serde(deserialize_with = "duration")]
    pub cert_expiry_margin: Duration,
    /// How often referenced files are checked for changes (0 turns it off).
    #[serde(deserialize_with = "duration")]
    pub watch_interval: Duration,
    /// Connections one client IP may hold at once (0: no limit of its
    /// own). Whatever it is, the last tenth of `max_connections` is kept for
    /// clients that hold no connection yet, so one client's idle sockets
    /// never take every slot.
    pub max_connections_per_ip: usize,
    /// Bearer token the admin listener asks for, as `sha256:<hex>` of the
    /// token (`echo -n TOKEN | sha256sum`); unset leaves it open.
    pub admin_token_sha256: Option<String>,
    /// A file holding the admin token itself (first line; keep it 0600).
    pub admin_token_file: Option<PathBuf>,
    /// `Host` values the admin listener answers to, besides `localhost`,
    /// loopback addresses and its own address: the defence against DNS
    /// rebinding.
    pub admin_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            https: None,
            http: None,
            admin: None,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            http2: true,
            shutdown_grace: Duration::from_secs(30),
            identity_header: "x-forwarded-client-cert".into(),
            cert_expiry_margin: Duration::from_secs(7 * 24 * 3600),
            watch_interval: Duration::from_secs(2),
            max_connections_per_ip: 0,
            admin_token_sha256: None,
            admin_token_file: None,
            admin_hosts: Vec::new(),
        }
    }
}

/// A server certificate and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Server names it is for (`*.example.com` allowed); defaults to the
    /// certificate's SAN DNS names.
    #[serde(default)]
    pub names: Vec<String>,
}

/// Revocation settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM CRL files; when set, revoked client certificates are refused.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// What to do when a CRL is past its next update: `deny` or `allow`.
    #[serde(default)]
    pub stale_crl: StaleCrl,
    /// Whose revocation is checked: `leaf` (the end entity only, right for
    /// a root → intermediate → leaf PKI with the intermediate's CRL) or
    /// `chain` (every certificate; each issuer's CRL must be given).
    #[serde(default)]
    pub crl_scope: CrlScope,
    /// A certificate no CRL covers: `deny` or `allow`.
    #[serde(default)]
    pub unknown_revocation: UnknownRevocation,
}

/// Whose revocation status is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlScope {
    /// The end entity only.
    #[default]
    Leaf,
    /// Every certificate of the chain.
    Chain,
}

/// What an unknown revocation status means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownRevocation {
    /// Refuse the certificate.
    #[default]
    Deny,
    /// Accept it.
    Allow,
}

/// Which path a route's upstream gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamPath {
    /// The path the route matched on: unreserved escapes decoded, dot
    /// segments resolved, `//` merged. The upstream sees what was judged.
    #[default]
    Normalized,
    /// The path exactly as the client sent it.
    Original,
}

/// Request headers a route removes and sets before the upstream sees them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Header names removed from every request (`forwarded`,
    /// `x-forwarded-host`, `x-real-ip`...).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers set on every request, replacing any the client sent. Values
    /// may hold `{client.subject}`, `{client.uri}`, `{client.dns}`,
    /// `{client.cn}`, `{client.email}` and `{client.fingerprint}`, taken
    /// from the verified certificate; a header whose variable has no value
    /// is removed instead.
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
}

/// Policy for stale CRLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleCrl {
    /// Refuse certificates checked only against a stale CRL.
    #[default]
    Deny,
    /// Keep trusting the stale CRL.
    Allow,
}

/// Per-route client certificate policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// A verified certificate is required.
    Required,
    /// Verified when presented; anonymous clients pass.
    Optional,
    /// Not asked for; any presented identity is ignored.
    #[default]
    Off,
}

/// Identity patterns a route accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// Subject common names.
    #[serde(default)]
    pub cn: Vec<String>,
    /// SAN DNS names.
    #[serde(default)]
    pub dns: Vec<String>,
    /// SAN URIs (SPIFFE IDs).
    #[serde(default)]
    pub uri: Vec<String>,
    /// SAN emails.
    #[serde(default)]
    pub email: Vec<String>,
}

/// How a route reaches its upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Time to connect.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time to response headers.
    #[serde(deserialize_with = "duration")]
    pub header_timeout: Duration,
    /// Time for the whole exchange.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A failed upstream is skipped for this long.
    #[serde(deserialize_with = "duration")]
    pub fail_timeout: Duration,
    /// CA bundle for `https://` upstreams (system store when unset).
    pub ca: Option<PathBuf>,
    /// Client certificate chain presented to upstreams.
    pub cert: Option<PathBuf>,
    /// Key for `cert`.
    pub key: Option<PathBuf>,
    /// Name verified in the upstream certificate and sent as SNI.
    pub server_name: Option<String>,
    /// Skip upstream certificate verification. Logged as a warning.
    pub insecure: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let d = edge::UpstreamSettings::default();
        UpstreamConfig {
            connect_timeout: d.connect_timeout,
            header_timeout: d.header_timeout,
            request_timeout: d.request_timeout,
            idle_timeout: d.idle_timeout,
            fail_timeout: d.fail_timeout,
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            insecure: false,
        }
    }
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in records and metrics.
    pub name: String,
    /// Host to match (`*.example.com` allowed); any host when unset.
    pub host: Option<String>,
    /// Path prefix to match.
    #[serde(default = "slash")]
    pub path_prefix: String,
    /// Upstream URLs, `http://host:port` or `https://host:port`.
    pub upstreams: Vec<String>,
    /// Client certificate policy.
    #[serde(default)]
    pub client_auth: ClientCertMode,
    /// CA bundles client certificates must chain to.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// Identities let through; empty lets every verified certificate through.
    #[serde(default)]
    pub allow: AllowConfig,
    /// Bytes of each body kept in the record (0: none).
    #[serde(default)]
    pub capture_body: usize,
    /// Upstream connection settings.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// The path the upstream gets: `normalized` (default) or `original`.
    #[serde(default)]
    pub upstream_path: UpstreamPath,
    /// Accept paths that climb above `/` or hold an encoded `/`, `\\` or
    /// NUL; refused with 400 otherwise.
    #[serde(default)]
    pub allow_unusual_paths: bool,
    /// Request headers removed and set for this route.
    #[serde(default)]
    pub headers: HeaderRules,
    /// Overrides `client_auth.crl_scope` for this route.
    pub crl_scope: Option<CrlScope>,
    /// Overrides `client_auth.unknown_revocation` for this route.
    pub unknown_revocation: Option<UnknownRevocation>,
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

fn slash() -> String {
    "/".into()
}

impl Config {
    /// Loads `path`, then applies `MTLS_PROXY_*` environment overrides, then
    /// validates. Relative paths in the file are relative to the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        if !path.is_file() {
            return Err(ConfigError::Parse {
                file,
                message: "no such file".into(),
            });
        }
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            // `MTLS_PROXY_CONFIG` names the file itself (see `--config`); it
            // is not a key inside it.
            .merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"));
        let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse {
            file: file.clone(),
            message: e
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        config.source = path.to_path_buf();
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for c in &mut self.certificates {
            fix(&mut c.cert);
            fix(&mut c.key);
        }
        self.client_auth.crls.iter_mut().for_each(fix);
        if let Some(p) = &mut self.server.admin_token_file {
            fix(p);
        }
        if let Some(s) = &mut self.store {
            fix(&mut s.path);
        }
        for r in &mut self.routes {
            r.client_ca.iter_mut().for_each(fix);
            for p in [
                &mut r.upstream.ca,
                &mut r.upstream.cert,
                &mut r.upstream.key,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
    }

    /// An error about `key` in this file.
    pub fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.display().to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, addr) in [
            ("server.https", &s.https),
            ("server.http", &s.http),
            ("server.admin", &s.admin),
        ] {
            if let Some(a) = addr {
                a.parse::<std::net::SocketAddr>().map_err(|e| {
                    self.invalid(
                        key,
                        format!("{a:?} is not an address like 127.0.0.1:8443 ({e})"),
                    )
                })?;
            }
        }
        if s.https.is_none() && s.http.is_none() {
            return Err(self.invalid("server", "set at least one of `https` or `http`"));
        }
        if s.https.is_some() && self.certificates.is_empty() {
            return Err(self.invalid(
                "certificates",
                "an https listener needs at least one certificate",
            ));
        }
        if s.max_connections == 0 {
            return Err(self.invalid("server.max_connections", "must be at least 1"));
        }
        http::HeaderName::from_bytes(s.identity_header.as_bytes())
            .map_err(|_| self.invalid("server.identity_header", "not a valid header name"))?;
        if let Some(t) = &s.admin_token_sha256 {
            let hex = t.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.invalid(
                    "server.admin_token_sha256",
                    "must be `sha256:` and 64 hex digits (`echo -n TOKEN | sha256sum`)",
                ));
            }
        }
        if s.admin_token_sha256.is_some() && s.admin_token_file.is_some() {
            return Err(self.invalid(
                "server.admin_token_file",
                "set either admin_token_sha256 or admin_token_file, not both",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if !names.insert(&r.name) {
                return Err(self.invalid(
                    key("name"),
                    format!("route name {:?} is used twice", r.name),
                ));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(self.invalid(key("path_prefix"), "must start with `/`"));
            }
            if r.upstreams.is_empty() {
                return Err(self.invalid(key("upstreams"), "needs at least one upstream"));
            }
            if r.client_auth != ClientCertMode::Off && r.client_ca.is_empty() {
                return Err(self.invalid(
                    key("client_ca"),
                    "client_auth is on but no CA bundle is given",
                ));
            }
            if let Some(h) = &r.host {
                edge::HostPattern::parse(h).map_err(|e| {
                    self.invalid(
                        key("host"),
                        format!("{h:?} is not a host name or `*.suffix` ({e})"),
                    )
                })?;
            }
            for name in r.headers.remove.iter().chain(r.headers.set.keys()) {
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    self.invalid(key("headers"), format!("{name:?} is not a header name"))
                })?;
            }
            for (name, value) in &r.headers.set {
                crate::headers::HeaderTemplate::parse(value)
                    .map_err(|e| self.invalid(key(&format!("headers.set.{name}")), e))?;
            }
            if r.client_auth != ClientCertMode::Off && s.https.is_none() {
                return Err(self.invalid(
                    key("client_auth"),
                    "client certificates need the https listener",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("proxy.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn type_errors_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[server]\nhttp = \"127.0.0.1:0\"\nmax_connections = \"lots\"\n",
        );
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("proxy.toml"), "{err}");
        assert!(err.contains("server.max_connections"), "{err}");
    }

    #[test]
    fn the_example_configuration_loads_and_builds_its_header_rules() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mtls-proxy/mtls-proxy.toml");
        let c = Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
        let route = &c.routes[0];
        assert!(route.headers.remove.iter().any(|h| h == "x-real-ip"));
        crate::headers::HeaderRules::build(&route.headers).unwrap();
        assert_eq!(c.client_auth.crl_scope, CrlScope::Leaf);
    }

    #[test]
    fn a_bad_header_rule_names_the_route_and_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[server]\nhttp = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\nupstreams = [\"http://127.0.0.1:1\"]\n[routes.headers]\nset = { \"x-id\" = \"{client.secret}\" }\n",
        );
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("routes[0].headers.set.x-id"), "{err}");
        assert!(err.contains("unknown variable"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[server]\nhttp = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\nupstreams = [\"http://127.0.0.1:1\"]\npath_prefix = \"api\"\n",
        );
        let err = Config::load(&p).unwrap_err().to_string();
        assert!(err.contains("routes[0].path_prefix"), "{err}");
    }

    #[test]
    // figment's Jail has a large error type; it only lives in this test.
    #[allow(clippy::result_large_err)]
    fn environment_overrides_nested_keys_and_paths_resolve_beside_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "[server]\nhttp = \"127.0.0.1:0\"\n[store]\npath = \"records.db\"\n",
        );
        figment::Jail::expect_with(|jail| {
            jail.set_env("MTLS_PROXY_SERVER__HEADER_READ_TIMEOUT", "3s");
            jail.set_env("MTLS_PROXY_CONFIG", "ignored-here.toml");
            let c = Config::load(&p).map_err(|e| e.to_string())?;
            assert_eq!(c.server.header_read_timeout, Duration::from_secs(3));
            assert_eq!(c.store.unwrap().path, dir.path().join("records.db"));
            Ok(())
        });
    }
}
