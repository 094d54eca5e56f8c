//! Rivetr's domain types, parsed once at the edge (API, CLI, a cloned
//! repository's `rivetr.toml`) so that everything inside can trust them.
//!
//! Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Input that is not what it must be, naming the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field (or file key) that was wrong.
    pub field: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// An app's name: 1 to 40 characters of `a-z`, `0-9` and inner `-`. It is a
/// DNS label (it becomes `<name>.<base domain>`) and part of container and
/// image names, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn parse(raw: &str) -> Result<AppName, Invalid> {
        let bad = |reason: &str| Invalid::new("name", format!("{raw:?}: {reason}"));
        if raw.is_empty() || raw.len() > 40 {
            return Err(bad("must be 1 to 40 characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only lowercase letters, digits and '-' are allowed"));
        }
        if raw.starts_with('-') || raw.ends_with('-') {
            return Err(bad("must not start or end with '-'"));
        }
        Ok(AppName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name an app answers on: lowercase, no trailing dot, at least two
/// labels, each a valid DNS label. Wildcards are not domains of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Domain(String);

impl Domain {
    pub fn parse(raw: &str) -> Result<Domain, Invalid> {
        let bad = |reason: &str| Invalid::new("domain", format!("{raw:?}: {reason}"));
        let host = raw.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.len() > 253 {
            return Err(bad("must be 1 to 253 characters"));
        }
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() < 2 {
            return Err(bad("needs at least two labels, like app.example.com"));
        }
        for label in labels {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label must be 1 to 63 characters"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return Err(bad(
                    "labels hold letters, digits and inner '-' only (no wildcards, ports or paths)",
                ));
            }
        }
        Ok(Domain(host))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment variable's name: a letter or `_`, then letters, digits
/// and `_`, as POSIX shells accept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EnvKey(String);

impl EnvKey {
    pub fn parse(raw: &str) -> Result<EnvKey, Invalid> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(Invalid::new(
                "env",
                format!("{raw:?}: a name is a letter or '_' followed by letters, digits or '_'"),
            ));
        }
        Ok(EnvKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an app's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitUrl {
    /// `https://host/path` (plain `http://` is refused: credentials and code
    /// would travel in clear).
    Https(String),
    /// `ssh://user@host/path` or scp-like `user@host:path`.
    Ssh(String),
    /// A local repository: an absolute path or `file://` URL.
    Local(String),
}

impl GitUrl {
    pub fn parse(raw: &str) -> Result<GitUrl, Invalid> {
        let bad = |reason: &str| Invalid::new("git", format!("{raw:?}: {reason}"));
        if raw.is_empty() || raw.len() > 2048 {
            return Err(bad("must be 1 to 2048 characters"));
        }
        if raw.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad("must not contain spaces or control characters"));
        }
        // A leading '-' would read as an option to any git tool it reaches.
        if raw.starts_with('-') {
            return Err(bad("must not start with '-'"));
        }
        if let Some(rest) = raw.strip_prefix("https://") {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("has no host"));
            }
            return Ok(GitUrl::Https(raw.to_owned()));
        }
        if raw.starts_with("http://") {
            return Err(bad(
                "plain http is not accepted; use https, ssh or a local path",
            ));
        }
        if raw.starts_with("ssh://") {
            return Ok(GitUrl::Ssh(raw.to_owned()));
        }
        if let Some(path) = raw.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// URL needs an absolute path"));
            }
            return Ok(GitUrl::Local(path.to_owned()));
        }
        if raw.starts_with('/') {
            return Ok(GitUrl::Local(raw.to_owned()));
        }
        if let Some((user_host, path)) = raw.split_once(':') {
            if user_host.contains('@') && !path.is_empty() && !user_host.contains('/') {
                return Ok(GitUrl::Ssh(raw.to_owned()));
            }
        }
        Err(bad(
            "not a repository address: give https://..., ssh://..., user@host:path, file:///... or an absolute path",
        ))
    }

    pub fn as_str(&self) -> &str {
        match self {
            GitUrl::Https(s) | GitUrl::Ssh(s) | GitUrl::Local(s) => s,
        }
    }
}

/// A branch name as git accepts it (`git check-ref-format --branch`, the
/// parts that matter here).
pub fn parse_branch(raw: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= 200
        && !raw.starts_with('-')
        && !raw.starts_with('/')
        && !raw.ends_with('/')
        && !raw.ends_with(".lock")
        && !raw.contains("..")
        && !raw.contains("@{")
        && !raw.contains("//")
        && raw
            .chars()
            .all(|c| !c.is_control() && !" ~^:?*[\\".contains(c));
    if !ok {
        return Err(Invalid::new(
            "branch",
            format!("{raw:?} is not a valid branch name"),
        ));
    }
    Ok(raw.to_owned())
}

/// A full or abbreviated commit id (7 to 40 hex digits).
pub fn parse_commit(raw: &str) -> Result<String, Invalid> {
    if (7..=40).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(Invalid::new(
            "commit",
            format!("{raw:?}: a commit is 7 to 40 hex digits"),
        ))
    }
}

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Waiting in the queue.
    Queued,
    /// Cloning or fetching the source.
    Cloning,
    /// Building the image.
    Building,
    /// Starting containers and checking their health.
    Starting,
    /// Serving traffic.
    Running,
    /// Served traffic once and was replaced by a newer deployment; its
    /// image can be rolled back to.
    Superseded,
    /// Did not reach `running`; the reason says why.
    Failed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Queued => "queued",
            DeploymentStatus::Cloning => "cloning",
            DeploymentStatus::Building => "building",
            DeploymentStatus::Starting => "starting",
            DeploymentStatus::Running => "running",
            DeploymentStatus::Superseded => "superseded",
            DeploymentStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<DeploymentStatus> {
        Some(match raw {
            "queued" => DeploymentStatus::Queued,
            "cloning" => DeploymentStatus::Cloning,
            "building" => DeploymentStatus::Building,
            "starting" => DeploymentStatus::Starting,
            "running" => DeploymentStatus::Running,
            "superseded" => DeploymentStatus::Superseded,
            "failed" => DeploymentStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the deployment has ended one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Running | DeploymentStatus::Superseded | DeploymentStatus::Failed
        )
    }
}

/// The app's own `rivetr.toml`, read from the root of its repository.
/// Everything is optional; what the server allows caps what it may ask.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Port the app listens on inside its container.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Dockerfile path relative to the repository root.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// Environment defaults; the app's own env (CLI, API) wins.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path that must answer 2xx or 3xx over HTTP.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// How long a new container has to pass, in seconds.
    #[serde(default = "default_health_timeout")]
    pub timeout_secs: u64,
    /// Pause between attempts, in milliseconds.
    #[serde(default = "default_health_interval")]
    pub interval_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: default_health_path(),
            timeout_secs: default_health_timeout(),
            interval_ms: default_health_interval(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in MiB.
    pub memory_mb: Option<u32>,
    /// CPU limit in cores (0.5 = half a core).
    pub cpus: Option<f64>,
}

fn default_port() -> u16 {
    8080
}
fn default_dockerfile() -> String {
    "Dockerfile".into()
}
fn default_replicas() -> u32 {
    1
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_timeout() -> u64 {
    30
}
fn default_health_interval() -> u64 {
    200
}

/// Upper bounds a repository cannot exceed.
pub const MAX_REPLICAS: u32 = 10;
pub const MAX_HEALTH_TIMEOUT_SECS: u64 = 600;

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            port: default_port(),
            dockerfile: default_dockerfile(),
            build_args: BTreeMap::new(),
            env: BTreeMap::new(),
            health: HealthConfig::default(),
            resources: Resources::default(),
            replicas: default_replicas(),
        }
    }
}

impl RepoConfig {
    /// Parses and checks a `rivetr.toml`. Errors name the key.
    pub fn parse(text: &str) -> Result<RepoConfig, Invalid> {
        let config: RepoConfig = toml::from_str(text).map_err(|e| {
            // toml's message does not name the key; the line it sits on does.
            let at = match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!(" at line {line_no} (`{line}`)")
                }
                None => String::new(),
            };
            Invalid::new("rivetr.toml", format!("{}{at}", e.message()))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.port == 0 {
            return Err(Invalid::new("rivetr.toml: port", "must be 1 to 65535"));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(Invalid::new(
                "rivetr.toml: replicas",
                format!("must be 1 to {MAX_REPLICAS}"),
            ));
        }
        if !self.health.path.starts_with('/') || self.health.path.chars().any(char::is_control) {
            return Err(Invalid::new(
                "rivetr.toml: health.path",
                "must start with '/' and hold no control characters",
            ));
        }
        if self.health.timeout_secs == 0 || self.health.timeout_secs > MAX_HEALTH_TIMEOUT_SECS {
            return Err(Invalid::new(
                "rivetr.toml: health.timeout_secs",
                format!("must be 1 to {MAX_HEALTH_TIMEOUT_SECS}"),
            ));
        }
        if self.health.interval_ms < 10 || self.health.interval_ms > 60_000 {
            return Err(Invalid::new(
                "rivetr.toml: health.interval_ms",
                "must be 10 to 60000",
            ));
        }
        check_relative_path(&self.dockerfile)
            .map_err(|reason| Invalid::new("rivetr.toml: dockerfile", reason))?;
        for key in self.env.keys() {
            EnvKey::parse(key).map_err(|e| Invalid::new("rivetr.toml: env", e.reason))?;
        }
        for key in self.build_args.keys() {
            EnvKey::parse(key).map_err(|e| Invalid::new("rivetr.toml: build_args", e.reason))?;
        }
        if let Some(mb) = self.resources.memory_mb {
            if !(6..=1_048_576).contains(&mb) {
                return Err(Invalid::new(
                    "rivetr.toml: resources.memory_mb",
                    "must be 6 to 1048576",
                ));
            }
        }
        if let Some(cpus) = self.resources.cpus {
            if !(cpus.is_finite() && (0.01..=256.0).contains(&cpus)) {
                return Err(Invalid::new(
                    "rivetr.toml: resources.cpus",
                    "must be 0.01 to 256",
                ));
            }
        }
        Ok(())
    }

    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health.timeout_secs)
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health.interval_ms)
    }
}

/// A path inside the repository: relative, no `..`, no NUL. The build reads
/// it from the checkout, so one that climbs out would read the host.
pub fn check_relative_path(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > 512 {
        return Err("must be 1 to 512 characters".into());
    }
    if raw.starts_with('/') || raw.contains('\\') || raw.contains('\0') {
        return Err(format!(
            "{raw:?} must be a relative path inside the repository"
        ));
    }
    if raw.split('/').any(|part| part == "..") {
        return Err(format!("{raw:?} must not climb out of the repository"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels() {
        assert!(AppName::parse("web-1").is_ok());
        for bad in [
            "",
            "Web",
            "-web",
            "web-",
            "a_b",
            "a.b",
            "web/../x",
            &"a".repeat(41),
        ] {
            let err = AppName::parse(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
    }

    #[test]
    fn domains_are_normalised_and_wildcards_refused() {
        assert_eq!(
            Domain::parse("Web.Example.TEST.").unwrap().as_str(),
            "web.example.test"
        );
        for bad in [
            "localhost",
            "*.example.com",
            "a..b",
            "a.b:80",
            "a.b/x",
            "-a.b",
            "a b.c",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_urls_by_kind_and_bad_ones_named() {
        assert!(matches!(
            GitUrl::parse("https://h/r.git"),
            Ok(GitUrl::Https(_))
        ));
        assert!(matches!(GitUrl::parse("git@h:r.git"), Ok(GitUrl::Ssh(_))));
        assert!(matches!(GitUrl::parse("ssh://git@h/r"), Ok(GitUrl::Ssh(_))));
        assert!(matches!(GitUrl::parse("/srv/r"), Ok(GitUrl::Local(_))));
        assert!(matches!(GitUrl::parse("file:///srv/r"), Ok(GitUrl::Local(p)) if p == "/srv/r"));
        for bad in [
            "http://h/r",
            "--upload-pack=x",
            "r.git",
            "https://",
            "a b",
            "ext::sh -c x",
        ] {
            let err = GitUrl::parse(bad).unwrap_err();
            assert_eq!(err.field, "git", "{bad}");
        }
    }

    #[test]
    fn branches_and_commits() {
        assert!(parse_branch("feature/x").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a~1", "a:b"] {
            assert!(parse_branch(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_commit("ABCDEF1").unwrap(), "abcdef1");
        assert!(parse_commit("xyz").is_err());
    }

    #[test]
    fn repo_config_defaults_and_errors_name_the_key() {
        let c = RepoConfig::parse("").unwrap();
        assert_eq!(c, RepoConfig::default());
        let c = RepoConfig::parse(
            "port = 3000\nreplicas = 2\n[health]\npath = \"/up\"\n[resources]\nmemory_mb = 64\n",
        )
        .unwrap();
        assert_eq!(
            (c.port, c.replicas, c.health.path.as_str()),
            (3000, 2, "/up")
        );
        let cases = [
            ("port = 0", "port"),
            ("replicas = 50", "replicas"),
            ("dockerfile = \"../../etc/passwd\"", "dockerfile"),
            ("dockerfile = \"/etc/passwd\"", "dockerfile"),
            ("[health]\npath = \"up\"", "health.path"),
            ("[env]\n\"A B\" = \"x\"", "env"),
            ("surprise = 1", "rivetr.toml"),
            ("port = \"x\"", "rivetr.toml"),
            ("[resources]\ncpus = -1.0", "resources.cpus"),
        ];
        for (text, key) in cases {
            let err = RepoConfig::parse(text).unwrap_err();
            assert!(err.field.contains(key), "{text}: {err}");
        }
        let err = RepoConfig::parse("\n\nport = \"x\"").unwrap_err();
        assert!(err.reason.contains("line 3 (`port = \"x\"`)"), "{err}");
    }
}
