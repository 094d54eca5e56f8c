//! Configuration: defaults, then an optional TOML file, then `STRATA_*`
//! environment variables (`STRATA_LISTEN=0.0.0.0:8080`,
//! `STRATA_ALERTS__WEBHOOK=...`). Every key has a default, so
//! `strata-control serve` runs with none.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP server (API, agent WebSocket, dashboard, metrics).
    pub listen: String,
    /// Where the SQLite database, the key files and receiver sockets live.
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://...`; defaults to `data_dir/strata.db`.
    pub database_url: Option<String>,
    /// Host name or address agents send media to (the receivers' host).
    pub public_host: String,
    /// First and last UDP port of the receivers' pool (inclusive).
    pub port_range: (u16, u16),
    /// The receiver program; defaults to `strata-receiver` beside this binary.
    pub receiver_bin: Option<PathBuf>,
    /// Seconds between agent heartbeats.
    pub heartbeat_secs: u32,
    /// A receiver that reports no stats this long (milliseconds) is judged
    /// wedged and restarted.
    pub receiver_stall_ms: u64,
    /// Whether the dashboard is served over HTTPS (sets `Secure` cookies).
    pub secure_cookies: bool,
    pub alerts: AlertConfig,
}

/// Alert rules and where they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// URL alerts are POSTed to as JSON; no URL, no delivery (rules are
    /// still evaluated and shown).
    pub webhook: Option<String>,
    /// Loss above this share (percent) on any link of a live stream fires.
    pub loss_pct: f64,
    /// A sender unobserved this long while it has an active stream fires.
    pub sender_offline_secs: u64,
    /// How often rules are evaluated, in milliseconds.
    pub interval_ms: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook: None,
            loss_pct: 5.0,
            sender_offline_secs: 30,
            interval_ms: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("strata-data"),
            database_url: None,
            public_host: "127.0.0.1".into(),
            port_range: (20000, 20999),
            receiver_bin: None,
            heartbeat_secs: 5,
            receiver_stall_ms: 5000,
            secure_cookies: false,
            alerts: AlertConfig::default(),
        }
    }
}

/// A configuration that could not be loaded; names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("configuration{}: {message}", file.as_ref().map(|f| format!(" {}", f.display())).unwrap_or_default())]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub message: String,
}

impl Config {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        use figment::providers::{Env, Format, Toml};
        let mut fig = figment::Figment::new();
        if let Some(file) = file {
            fig = fig.merge(Toml::file_exact(file));
        }
        fig = fig.merge(Env::prefixed("STRATA_").split("__"));
        let config: Config = fig.extract().map_err(|e| ConfigError {
            file: file.map(Path::to_owned),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError {
            file: file.map(Path::to_owned),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.port_range;
        if lo == 0 || lo > hi {
            return Err(format!("port_range: {lo}..{hi} is not a range of ports"));
        }
        if self.heartbeat_secs == 0 {
            return Err("heartbeat_secs: must be at least 1".into());
        }
        if self.receiver_stall_ms < 100 {
            return Err("receiver_stall_ms: must be at least 100".into());
        }
        if self.alerts.interval_ms < 10 {
            return Err("alerts.interval_ms: must be at least 10".into());
        }
        Ok(())
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("strata.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_config_has_defaults() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.port_range, (20000, 20999));
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn bad_values_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, "port_range = [30000, 20000]\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("port_range") && err.contains("strata.toml"),
            "{err}"
        );
        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("listne"), "{err}");
    }
}
