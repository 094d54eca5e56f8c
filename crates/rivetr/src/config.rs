//! The server's configuration: defaults, then an optional TOML file, then
//! `RIVETR_*` environment variables, then command-line flags. Zero config
//! works: state in `./rivetr.db`, router on `:8080`, API on
//! `127.0.0.1:8000`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for repository caches and build contexts.
    pub data_dir: PathBuf,
    /// The SQLite database.
    pub database: PathBuf,
    /// The master key sealing secret env vars and SSH keys, kept apart from
    /// the database so a copy of one is useless without the other.
    pub key_file: PathBuf,
    /// Plain-HTTP listeners of the router (`0.0.0.0:80` in production).
    pub router_listen: Vec<SocketAddr>,
    /// The API's listener. Loopback by default: put it behind the router
    /// or a tunnel to reach it from elsewhere.
    pub api_listen: SocketAddr,
    /// Apps answer on `<app>.<base_domain>`.
    pub base_domain: String,
    /// The container network apps join.
    pub network: String,
    /// `unix:///path` or `tcp://host:port` of a Docker-compatible API;
    /// unset: `DOCKER_HOST`, then the usual sockets, then the podman CLI.
    pub docker_host: Option<String>,
    /// Builds at once across all apps.
    pub max_concurrent_builds: usize,
    /// Good images kept per app for rollbacks.
    pub keep_images: usize,
    /// Seconds an old version gets to finish its requests after a switch.
    pub drain_timeout_secs: u64,
    /// Seconds a stopping container gets before it is killed.
    pub stop_grace_secs: u64,
    /// `info`, `debug`, ... (tracing's filter syntax).
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("rivetr-data"),
            database: PathBuf::from("rivetr.db"),
            key_file: PathBuf::from("rivetr.key"),
            router_listen: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            base_domain: "localhost".into(),
            network: "rivetr".into(),
            docker_host: None,
            max_concurrent_builds: 2,
            keep_images: 5,
            drain_timeout_secs: 30,
            stop_grace_secs: 10,
            log: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads defaults, `file` (if given), the environment, and `overrides`.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("RIVETR_").ignore(&["token", "api"]))
            .merge(overrides)
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::domain::Domain::parse(&format!("x.{}", self.base_domain)).map_err(|e| {
            ConfigError::Invalid {
                key: "base_domain",
                reason: e.reason,
            }
        })?;
        if self.network.is_empty()
            || !self
                .network
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::Invalid {
                key: "network",
                reason: "letters, digits, '-' and '_' only".into(),
            });
        }
        if self.max_concurrent_builds == 0 {
            return Err(ConfigError::Invalid {
                key: "max_concurrent_builds",
                reason: "must be at least 1".into(),
            });
        }
        if self.keep_images == 0 {
            return Err(ConfigError::Invalid {
                key: "keep_images",
                reason: "must be at least 1 (the running image)".into(),
            });
        }
        if self.router_listen.is_empty() {
            return Err(ConfigError::Invalid {
                key: "router_listen",
                reason: "at least one address".into(),
            });
        }
        Ok(())
    }
}
