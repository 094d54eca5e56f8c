//! Settings of the recording store, as they appear in the config file.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::StoreError;

/// Settings of the recording store. Every field but `path` has a default;
/// durations are written like `"100ms"` or `"7d"`, sizes as a number of bytes
/// or like `"1GiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database file. Its directory must exist.
    pub path: PathBuf,
    /// How many records may wait for the writer before new ones are dropped.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// The most records inserted in one transaction.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// The longest a record waits for its batch to fill before it is written.
    #[serde(default = "defaults::flush_interval", deserialize_with = "duration")]
    pub flush_interval: Duration,
    /// Rows older than this are deleted.
    #[serde(default = "defaults::max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// When the database file plus its log grows past this, the oldest rows
    /// are deleted until it is below again.
    #[serde(default = "defaults::max_bytes", deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Bodies of rows older than this are compressed with zstd in place.
    #[serde(default = "defaults::compress_after", deserialize_with = "duration")]
    pub compress_after: Duration,
    /// How often retention and compression run.
    #[serde(
        default = "defaults::maintenance_interval",
        deserialize_with = "duration"
    )]
    pub maintenance_interval: Duration,
    /// Header names whose values are replaced by `[redacted]` before storage,
    /// in addition to the built-in `authorization`, `proxy-authorization`,
    /// `cookie` and `set-cookie`. Case does not matter.
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// Query parameter names whose values are replaced by `[redacted]`, in
    /// addition to the built-in `access_token`, `id_token`, `refresh_token`,
    /// `token`, `api_key`, `apikey`, `password`, `secret`, `client_secret`,
    /// `sig`, `signature` and the `x-amz-*` signing parameters. Case does not
    /// matter.
    #[serde(default)]
    pub redact_query_params: Vec<String>,
}

mod defaults {
    use std::time::Duration;

    pub(super) fn queue_capacity() -> usize {
        10_000
    }
    pub(super) fn batch_size() -> usize {
        1024
    }
    pub(super) fn flush_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn max_age() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub(super) fn max_bytes() -> u64 {
        1 << 30
    }
    pub(super) fn compress_after() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn maintenance_interval() -> Duration {
        Duration::from_secs(60)
    }
}

/// Tokio refuses (by panicking) bounded channels above this capacity; we
/// stay far below it and reject anything larger as a configuration error.
const MAX_QUEUE_CAPACITY: usize = 10_000_000;

impl StoreConfig {
    /// A configuration for `path` with every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            queue_capacity: defaults::queue_capacity(),
            batch_size: defaults::batch_size(),
            flush_interval: defaults::flush_interval(),
            max_age: defaults::max_age(),
            max_bytes: defaults::max_bytes(),
            compress_after: defaults::compress_after(),
            maintenance_interval: defaults::maintenance_interval(),
            redact_headers: Vec::new(),
            redact_query_params: Vec::new(),
        }
    }

    /// Rejects values that would make tokio panic or the store useless; the
    /// error names the key.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |key, reason: &str| {
            Err(StoreError::InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.path.as_os_str().is_empty() {
            return invalid("path", "must not be empty");
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return invalid("queue_capacity", "must be between 1 and 10000000");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return invalid("flush_interval", "must be longer than zero");
        }
        if self.maintenance_interval.is_zero() {
            return invalid("maintenance_interval", "must be longer than zero");
        }
        if self.max_bytes == 0 {
            return invalid("max_bytes", "must be larger than zero");
        }
        Ok(())
    }
}

/// Reads a duration written like `250ms`, `10s` or `7d`; shared with the
/// rest of the configuration file.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim())
        .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct ByteSize;

    impl Visitor<'_> for ByteSize {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number of bytes or a size like \"512MiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_byte_size(v).ok_or_else(|| {
                E::custom(format!(
                    "invalid size {v:?}: expected bytes or a number with a unit \
                     (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
                ))
            })
        }
    }

    d.deserialize_any(ByteSize)
}

/// Parses `"1024"`, `"64 KiB"`, `"1GiB"`, `"500MB"`; units are case-insensitive.
pub(crate) fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_only_path_is_given() {
        let cfg: StoreConfig = toml::from_str(r#"path = "/tmp/x.db""#).unwrap();
        assert_eq!(cfg, StoreConfig::new("/tmp/x.db"));
        assert_eq!(cfg.queue_capacity, 10_000);
        assert_eq!(cfg.batch_size, 1024);
        assert_eq!(cfg.flush_interval, Duration::from_millis(100));
        assert_eq!(cfg.max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.max_bytes, 1 << 30);
        assert_eq!(cfg.compress_after, Duration::from_secs(3600));
        assert_eq!(cfg.maintenance_interval, Duration::from_secs(60));
        assert!(cfg.redact_headers.is_empty());
        assert!(cfg.redact_query_params.is_empty());
        cfg.validate().unwrap();
    }

    #[test]
    fn durations_and_sizes_parse_from_human_strings() {
        let cfg: StoreConfig = toml::from_str(
            r#"
            path = "r.db"
            flush_interval = "250ms"
            max_age = "2d"
            compress_after = "30m"
            maintenance_interval = "5s"
            max_bytes = "512MiB"
            redact_headers = ["X-Api-Key"]
            redact_query_params = ["session"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.flush_interval, Duration::from_millis(250));
        assert_eq!(cfg.max_age, Duration::from_secs(2 * 86_400));
        assert_eq!(cfg.compress_after, Duration::from_secs(1800));
        assert_eq!(cfg.maintenance_interval, Duration::from_secs(5));
        assert_eq!(cfg.max_bytes, 512 << 20);
        assert_eq!(cfg.redact_headers, vec!["X-Api-Key".to_owned()]);
        assert_eq!(cfg.redact_query_params, vec!["session".to_owned()]);

        let cfg: StoreConfig = toml::from_str("path = \"r.db\"\nmax_bytes = 4096").unwrap();
        assert_eq!(cfg.max_bytes, 4096);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = toml::from_str::<StoreConfig>("path = \"r.db\"\nqueue_size = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue_size"), "{err}");

        let err = toml::from_str::<StoreConfig>("path = \"r.db\"\nflush_interval = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration \"soon\""), "{err}");

        let err = toml::from_str::<StoreConfig>("path = \"r.db\"\nmax_bytes = \"1 parsec\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid size"), "{err}");

        assert!(toml::from_str::<StoreConfig>("max_bytes = 1").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = StoreConfig::new("r.db");
        cfg.queue_capacity = 0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("`queue_capacity`"), "{err}");

        let mut cfg = StoreConfig::new("r.db");
        cfg.flush_interval = Duration::ZERO;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("`flush_interval`"), "{err}");

        let mut cfg = StoreConfig::new("r.db");
        cfg.batch_size = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1024"), Some(1024));
        assert_eq!(parse_byte_size("64 KiB"), Some(64 << 10));
        assert_eq!(parse_byte_size("1gib"), Some(1 << 30));
        assert_eq!(parse_byte_size("500MB"), Some(500_000_000));
        assert_eq!(parse_byte_size("MB"), None);
        assert_eq!(parse_byte_size("5 furlongs"), None);
        assert_eq!(parse_byte_size("99999999999999999999"), None);
        assert_eq!(parse_byte_size("99999999 TiB"), None);
    }
}
