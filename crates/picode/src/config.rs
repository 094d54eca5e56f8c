//! Layered configuration: built-in defaults, the user's `picode.toml`, the
//! project's `picode.toml`, then `PICODE_*` environment variables.
//!
//! Providers are a table keyed by name (`[providers.openai]`) rather than an
//! array, so that a project file can override one field of a provider the
//! user defined, and so that `PICODE_PROVIDERS__OPENAI__MODEL=...` works:
//! figment merges tables key by key but replaces arrays whole.
//!
//! The project's file is used only when the user trusts the folder (see
//! [`crate::trust`]), and even then it may not raise the permission mode,
//! touch a provider's endpoint or key source, set `serve`, the sandbox or
//! the environment allowlist, or add an MCP server the user has not seen
//! and approved: those are errors naming the key and the file.
//!
//! Every error names the key and the file (or environment variable) it came
//! from, because "invalid type" alone sends people hunting through three
//! layers of config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use picode_tools::{McpServerConfig, PermissionMode, SandboxMode};

use crate::trust::{mcp_command_line, ProjectTrust};
use serde::{Deserialize, Serialize};

/// The file name looked up in the project root and in the user's config dir.
pub const CONFIG_FILE: &str = "picode.toml";

/// Environment variables that share the `PICODE_` prefix but are not config
/// keys; they are read directly where they matter.
const NON_CONFIG_ENV: &[&str] = &[
    "CONFIG_DIR",
    "DATA_DIR",
    "KEY_PASSPHRASE",
    "SERVE_TOKEN",
    "LOG",
];

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong type or shape.
    #[error("config error for key `{key}` in {origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    /// A file could not be parsed at all.
    #[error("config error in {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A project file tried to set what only the user may.
    #[error("refused key `{key}` in {origin}: {message}")]
    Forbidden {
        key: String,
        origin: String,
        message: String,
    },
    /// A config file could not be written.
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Openai,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// Prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PricingEntry {
    #[serde(default)]
    pub input_per_mtok: f64,
    #[serde(default)]
    pub output_per_mtok: f64,
}

/// One `[providers.NAME]` table as written in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    #[serde(default)]
    pub kind: ProviderKind,
    /// Defaults per kind (the public endpoints) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    pub model: String,
    /// Name of an environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// An inline key. Allowed for local servers with throwaway keys; real keys
    /// belong in the environment or the keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// `native` (the API's tool calling) or `prompt` (tools described in the
    /// system prompt, for models without tool support).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<PricingEntry>,
    /// Retries before a stream starts (429, 5xx, connection errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// First retry delay; it doubles each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_base_ms: Option<u64>,
    /// Connect timeout and longest silence while waiting for bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Settings for `picode serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The bearer token clients must send. `PICODE_SERVE_TOKEN` wins.
    #[serde(default)]
    pub token: Option<String>,
    /// Address used when `picode serve` is given no `--listen`.
    #[serde(default = "default_listen")]
    pub listen: String,
}

/// The documented address of `picode serve`: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

fn default_listen() -> String {
    DEFAULT_LISTEN.to_owned()
}

// Written out because `#[derive(Default)]` would leave `listen` empty, and
// the defaults layer is serialised from `Config::default()`.
impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            token: None,
            listen: default_listen(),
        }
    }
}

/// Where API keys are kept when a provider has no `api_key_env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SecretBackend {
    /// The OS keyring when one answers, else the encrypted file.
    #[default]
    Auto,
    Keyring,
    File,
}

/// The whole configuration after all layers are merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub default_provider: Option<String>,
    /// Providers tried, in order, after the default one fails.
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderEntry>,
    #[serde(default)]
    pub permission_mode: PermissionMode,
    /// Model calls allowed for one user prompt before the turn is stopped.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Compact automatically when the estimate passes this share of the window.
    #[serde(default = "default_compact_threshold")]
    pub compact_threshold: f64,
    /// User turns kept verbatim when compacting.
    #[serde(default = "default_keep_turns")]
    pub compact_keep_turns: usize,
    #[serde(default = "default_shell_timeout")]
    pub shell_timeout_secs: u64,
    #[serde(default)]
    pub mcp_servers: Vec<McpServerConfig>,
    #[serde(default)]
    pub serve: ServeConfig,
    #[serde(default)]
    pub secret_store: SecretBackend,
    /// `off`, `auto` (confine shell commands where the kernel can) or
    /// `required` (refuse commands that cannot be confined).
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// Let sandboxed commands use the network (TCP).
    #[serde(default)]
    pub sandbox_network: bool,
    /// Directories sandboxed commands may write besides the project and the
    /// temp dirs (a shared build cache, `~/.cargo`).
    #[serde(default)]
    pub sandbox_writable: Vec<PathBuf>,
    /// Variables kept in commands' environment although they look secret.
    #[serde(default)]
    pub shell_env_allow: Vec<String>,
    /// Replace secret-looking tool output with `[REDACTED]` (`/redact off`
    /// turns it off for one session).
    #[serde(default = "default_true")]
    pub redact_secrets: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_steps() -> u32 {
    40
}
fn default_compact_threshold() -> f64 {
    0.8
}
fn default_keep_turns() -> usize {
    2
}
fn default_shell_timeout() -> u64 {
    120
}

impl Default for Config {
    fn default() -> Config {
        Config {
            default_provider: None,
            fallback: Vec::new(),
            providers: BTreeMap::new(),
            permission_mode: PermissionMode::default(),
            max_steps: default_max_steps(),
            compact_threshold: default_compact_threshold(),
            compact_keep_turns: default_keep_turns(),
            shell_timeout_secs: default_shell_timeout(),
            mcp_servers: Vec::new(),
            serve: ServeConfig::default(),
            secret_store: SecretBackend::default(),
            sandbox: SandboxMode::default(),
            sandbox_network: false,
            sandbox_writable: Vec::new(),
            shell_env_allow: Vec::new(),
            redact_secrets: true,
        }
    }
}

/// Where things live on disk; resolved once at start-up and passed around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The project the agent works in (the current directory by default).
    pub project: PathBuf,
    /// The user's config dir: `picode.toml`, `commands/`, `AGENTS.md`, secrets.
    pub config_dir: PathBuf,
    /// The user's data dir: the sessions database and checkpoint stores.
    pub data_dir: PathBuf,
}

impl Paths {
    /// Resolves the standard locations from the environment.
    ///
    /// `PICODE_CONFIG_DIR` and `PICODE_DATA_DIR` override the XDG locations so
    /// that tests (and people with unusual setups) can point PiCode elsewhere.
    pub fn from_env(project: PathBuf) -> Paths {
        let var = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let config_dir = var("PICODE_CONFIG_DIR")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("picode")))
            .or_else(|| home.as_ref().map(|h| h.join(".config").join("picode")))
            .unwrap_or_else(|| std::env::temp_dir().join("picode-config"));
        let data_dir = var("PICODE_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| var("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("picode")))
            .or_else(|| {
                home.as_ref()
                    .map(|h| h.join(".local").join("share").join("picode"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("picode-data"));
        Paths {
            project,
            config_dir,
            data_dir,
        }
    }

    pub fn user_config_file(&self) -> PathBuf {
        self.config_dir.join(CONFIG_FILE)
    }

    pub fn project_config_file(&self) -> PathBuf {
        self.project.join(CONFIG_FILE)
    }

    pub fn database_file(&self) -> PathBuf {
        self.data_dir.join("sessions.db")
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.data_dir.join("checkpoints")
    }
}

/// Top-level keys a project file may never set, even when trusted: they
/// decide where keys go, what may run unconfined and who may connect.
const USER_ONLY_KEYS: &[&str] = &[
    "serve",
    "secret_store",
    "sandbox",
    "sandbox_network",
    "sandbox_writable",
    "shell_env_allow",
    "redact_secrets",
];

/// Fields of a provider a project file may never set: its endpoint and its
/// key source (`kind` picks the default endpoint).
const USER_ONLY_PROVIDER_KEYS: &[&str] = &["base_url", "api_key_env", "api_key", "kind"];

impl Config {
    /// Merges every layer and validates the result. The project's file is a
    /// layer only when `trust` says so, and then only within the limits of
    /// [`check_project_table`].
    pub fn load(paths: &Paths, trust: &ProjectTrust) -> Result<Config, ConfigError> {
        let user = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(paths.user_config_file()));
        let mut figment = user.clone();
        if trust.uses_project_files() {
            let file = paths.project_config_file();
            if let Some(table) = read_table(&file)? {
                // The user's mode as the user's own layers set it.
                let own: Config = user
                    .clone()
                    .merge(env_layer())
                    .extract()
                    .map_err(|e| from_figment(&e))?;
                check_project_table(&table, &file, own.permission_mode, trust)?;
                figment = figment.merge(Toml::file(&file));
            }
        }
        let figment = figment.merge(env_layer());
        let config: Config = figment.extract().map_err(|e| from_figment(&e))?;
        config.validate(&figment)?;
        Ok(config)
    }

    /// `PICODE_*` variables that name no config key. They are ignored (a
    /// warning, not an error: a stray variable in a shell profile must not
    /// stop every command).
    pub fn unknown_env_vars() -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| {
                k.strip_prefix("PICODE_")
                    .is_some_and(|rest| !NON_CONFIG_ENV.contains(&rest) && !is_config_key(rest))
            })
            .collect()
    }
    /// Checks what serde cannot: references between keys and value ranges.
    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            origin: origin_of(figment, key),
            message,
        };
        if let Some(name) = &self.default_provider {
            if !self.providers.contains_key(name) {
                return Err(invalid(
                    "default_provider",
                    format!("no provider named `{name}` is configured{}", self.known()),
                ));
            }
        }
        for name in &self.fallback {
            if !self.providers.contains_key(name) {
                return Err(invalid(
                    "fallback",
                    format!("no provider named `{name}` is configured{}", self.known()),
                ));
            }
        }
        for (name, p) in &self.providers {
            if p.model.trim().is_empty() {
                let key = format!("providers.{name}.model");
                return Err(invalid(&key, "must not be empty".to_owned()));
            }
            if let Some(url) = &p.base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    let key = format!("providers.{name}.base_url");
                    return Err(invalid(&key, format!("`{url}` is not an http(s) URL")));
                }
            }
            if let Some(proto) = &p.tool_protocol {
                if proto != "native" && proto != "prompt" {
                    let key = format!("providers.{name}.tool_protocol");
                    return Err(invalid(
                        &key,
                        format!("`{proto}` is not one of `native`, `prompt`"),
                    ));
                }
            }
        }
        if !(0.1..=1.0).contains(&self.compact_threshold) {
            return Err(invalid(
                "compact_threshold",
                format!("{} is outside 0.1..=1.0", self.compact_threshold),
            ));
        }
        if self.max_steps == 0 {
            return Err(invalid("max_steps", "must be at least 1".to_owned()));
        }
        Ok(())
    }

    fn known(&self) -> String {
        if self.providers.is_empty() {
            " (no providers are configured; see `picode provider add`)".to_owned()
        } else {
            let names: Vec<&str> = self.providers.keys().map(String::as_str).collect();
            format!(" (known: {})", names.join(", "))
        }
    }

    /// The provider names to try, in order: the chosen one, then the fallbacks.
    ///
    /// With no default configured, the first provider by name is used, so a
    /// config with a single provider needs no `default_provider`.
    pub fn chain(&self, preferred: Option<&str>) -> Vec<String> {
        let first = preferred
            .map(str::to_owned)
            .or_else(|| self.default_provider.clone())
            .or_else(|| self.providers.keys().next().cloned());
        let mut chain: Vec<String> = first.into_iter().collect();
        for name in &self.fallback {
            if !chain.contains(name) {
                chain.push(name.clone());
            }
        }
        chain
    }
}

/// The environment layer: `PICODE_*` variables naming a config key.
fn env_layer() -> Env {
    Env::prefixed("PICODE_")
        .ignore(NON_CONFIG_ENV)
        .filter(|key| is_config_key(key.as_str()))
        .split("__")
}

/// Whether a (`__`-nested) variable name starts with a top-level key.
fn is_config_key(key: &str) -> bool {
    // The top-level keys, read once from the serialised defaults so the
    // list cannot fall out of step with `Config`.
    static KEYS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        });
    let key = key.to_ascii_lowercase();
    let top = key.split("__").next().unwrap_or("");
    KEYS.iter().any(|k| k == top)
}

/// How far a mode lets the agent go without asking, for comparisons.
fn reach(mode: PermissionMode) -> u8 {
    match mode {
        PermissionMode::Plan => 0,
        PermissionMode::Ask => 1,
        PermissionMode::AutoEdit => 2,
        PermissionMode::FullAuto => 3,
    }
}

/// Refuses what a project file may not do even when its folder is trusted.
fn check_project_table(
    table: &toml::Table,
    file: &Path,
    user_mode: PermissionMode,
    trust: &ProjectTrust,
) -> Result<(), ConfigError> {
    let refuse = |key: &str, message: String| ConfigError::Forbidden {
        key: key.to_owned(),
        origin: file.display().to_string(),
        message,
    };
    for key in USER_ONLY_KEYS {
        if table.contains_key(*key) {
            return Err(refuse(
                key,
                "a project file may not set this; only your own picode.toml and flags can"
                    .to_owned(),
            ));
        }
    }
    if let Some(value) = table.get("permission_mode") {
        let mode = value
            .as_str()
            .and_then(|m| m.parse::<PermissionMode>().ok())
            .ok_or_else(|| refuse("permission_mode", format!("`{value}` is not a mode")))?;
        if reach(mode) > reach(user_mode) {
            return Err(refuse(
                "permission_mode",
                format!(
                    "a project file may lower the permission mode but not raise it \
                     (`{mode}` is above your `{user_mode}`); use --permission-mode {mode} \
                     if you mean it"
                ),
            ));
        }
    }
    if let Some(providers) = table.get("providers").and_then(toml::Value::as_table) {
        for (name, entry) in providers {
            let Some(entry) = entry.as_table() else {
                continue;
            };
            for key in USER_ONLY_PROVIDER_KEYS {
                if entry.contains_key(*key) {
                    return Err(refuse(
                        &format!("providers.{name}.{key}"),
                        "a project file may not change where a provider's requests \
                         or keys go; only your own picode.toml can"
                            .to_owned(),
                    ));
                }
            }
        }
    }
    if let Some(servers) = table.get("mcp_servers") {
        let servers: Vec<McpServerConfig> = servers
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| refuse("mcp_servers", e.message().to_owned()))?;
        for server in &servers {
            let line = mcp_command_line(server);
            if !trust.approved_mcp().contains(&line) {
                return Err(refuse(
                    "mcp_servers",
                    format!(
                        "the project wants to start the MCP server `{}` as `{line}`, \
                         which you have not approved; run `picode trust` to review and approve it",
                        server.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Reads a TOML file as a table; `None` when it does not exist.
fn read_table(path: &Path) -> Result<Option<toml::Table>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse::<toml::Table>()
            .map(Some)
            .map_err(|e| ConfigError::Parse {
                origin: path.display().to_string(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Parse {
            origin: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// Describes where a key's value came from, for error messages.
fn origin_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) => describe(md),
        None => "the built-in defaults".to_owned(),
    }
}

/// Files are shown with their full path: figment's own display shortens
/// them relative to the current directory, which is ambiguous when the user
/// and the project file share a name.
fn describe(md: &figment::Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(source) => format!("{source} ({})", md.name),
        None => md.name.to_string(),
    }
}

fn from_figment(err: &figment::Error) -> ConfigError {
    let origin = match &err.metadata {
        Some(md) => describe(md),
        None => "configuration".to_owned(),
    };
    if err.path.is_empty() {
        return ConfigError::Parse {
            origin,
            message: err.kind.to_string(),
        };
    }
    ConfigError::Invalid {
        key: err.path.join("."),
        origin,
        message: err.kind.to_string(),
    }
}

/// Reads the user's config file for editing, or an empty document. Edits go
/// through `toml_edit` so the user's comments and layout survive them.
pub fn read_user_document(path: &Path) -> Result<toml_edit::DocumentMut, ConfigError> {
    let parse_err = |message: String| ConfigError::Parse {
        origin: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse::<toml_edit::DocumentMut>()
            .map_err(|e| parse_err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml_edit::DocumentMut::new()),
        Err(e) => Err(parse_err(e.to_string())),
    }
}

/// Writes the user's config file, creating its directory.
pub fn write_user_document(path: &Path, doc: &toml_edit::DocumentMut) -> Result<(), ConfigError> {
    let write_err = |e: &dyn std::fmt::Display| ConfigError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| write_err(&e))?;
    }
    std::fs::write(path, doc.to_string()).map_err(|e| write_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> Paths {
        Paths {
            project: dir.join("project"),
            config_dir: dir.join("config"),
            data_dir: dir.join("data"),
        }
    }

    #[test]
    fn project_overrides_one_field_of_a_user_provider() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(&p.project).unwrap();
        std::fs::create_dir_all(&p.config_dir).unwrap();
        std::fs::write(
            p.user_config_file(),
            "default_provider = \"a\"\n[providers.a]\nkind = \"anthropic\"\nmodel = \"m1\"\n",
        )
        .unwrap();
        std::fs::write(
            p.project_config_file(),
            "permission_mode = \"plan\"\n[providers.a]\nmodel = \"m2\"\n",
        )
        .unwrap();
        let config = Config::load(&p, &ProjectTrust::Trusted { mcp: Vec::new() }).unwrap();
        let a = &config.providers["a"];
        assert_eq!(a.kind, ProviderKind::Anthropic);
        assert_eq!(a.model, "m2");
        assert_eq!(config.permission_mode, PermissionMode::Plan);
        assert_eq!(config.chain(None), vec!["a".to_owned()]);
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(&p.project).unwrap();
        std::fs::write(p.project_config_file(), "max_steps = \"many\"\n").unwrap();
        let err = Config::load(&p, &ProjectTrust::Trusted { mcp: Vec::new() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_steps"), "{err}");
        assert!(err.contains("picode.toml"), "{err}");

        std::fs::write(p.project_config_file(), "default_provider = \"nope\"\n").unwrap();
        let err = Config::load(&p, &ProjectTrust::Trusted { mcp: Vec::new() })
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_provider"), "{err}");
        assert!(err.contains("picode.toml"), "{err}");
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn chain_puts_the_preferred_provider_first_without_duplicates() {
        let mut config = Config::default();
        for name in ["a", "b", "c"] {
            config.providers.insert(
                name.to_owned(),
                ProviderEntry {
                    model: "m".into(),
                    ..ProviderEntry::default()
                },
            );
        }
        config.default_provider = Some("b".into());
        config.fallback = vec!["a".into(), "b".into()];
        assert_eq!(config.chain(None), vec!["b", "a"]);
        assert_eq!(config.chain(Some("c")), vec!["c", "a", "b"]);
    }
}
