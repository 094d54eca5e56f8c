//! Typed configuration: where the ACME directory is, whom to trust when
//! talking to it, how and when to renew, and the domain names themselves.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::error::Error;

/// The ACME directory certificates are ordered from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Directory {
    /// Let's Encrypt's production directory (`letsencrypt`).
    LetsEncrypt,
    /// Let's Encrypt's staging directory (`letsencrypt-staging`): untrusted
    /// certificates, generous rate limits.
    LetsEncryptStaging,
    /// Any other directory, by its `https` URL.
    Url(String),
}

impl Directory {
    /// The directory's URL.
    pub fn url(&self) -> &str {
        match self {
            Self::LetsEncrypt => instant_acme::LetsEncrypt::Production.url(),
            Self::LetsEncryptStaging => instant_acme::LetsEncrypt::Staging.url(),
            Self::Url(url) => url,
        }
    }
}

impl FromStr for Directory {
    type Err = Error;

    /// `letsencrypt`, `letsencrypt-staging`, or an `https://` URL.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "letsencrypt" => Ok(Self::LetsEncrypt),
            "letsencrypt-staging" => Ok(Self::LetsEncryptStaging),
            url if url.starts_with("https://") && url.len() > "https://".len() => {
                Ok(Self::Url(url.to_owned()))
            }
            other => Err(Error::Config {
                what: "ACME directory",
                reason: format!(
                    "{other:?} is neither letsencrypt, letsencrypt-staging nor an https:// URL"
                ),
            }),
        }
    }
}

impl TryFrom<String> for Directory {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

/// External account binding (RFC 8555 section 7.3.4): a key id and HMAC
/// key the CA handed out, binding the new ACME account to an existing one.
#[derive(Clone, Deserialize)]
pub struct ExternalAccount {
    /// The key identifier.
    pub key_id: String,
    /// The HMAC key, base64url-encoded as CAs hand it out (padding optional).
    pub hmac_key: String,
}

impl fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"***")
            .finish()
    }
}

impl ExternalAccount {
    pub(crate) fn key(&self) -> Result<instant_acme::ExternalAccountKey, Error> {
        use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
        use base64::Engine;
        let raw = self.hmac_key.trim();
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .or_else(|_| URL_SAFE.decode(raw))
            .map_err(|e| Error::Config {
                what: "external account HMAC key",
                reason: format!("not base64url: {e}"),
            })?;
        Ok(instant_acme::ExternalAccountKey::new(
            self.key_id.clone(),
            &bytes,
        ))
    }
}

/// Which certificates the HTTPS client that talks to the ACME server trusts.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// The operating system's roots (right for public CAs).
    #[default]
    System,
    /// Only these roots (a private or test CA).
    Only(Vec<CertificateDer<'static>>),
}

/// How a domain is proven to the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChallengeKind {
    /// HTTP-01: the CA fetches `/.well-known/acme-challenge/TOKEN` on port 80.
    #[default]
    Http01,
    /// TLS-ALPN-01: the CA opens TLS on port 443 offering `acme-tls/1`.
    TlsAlpn01,
}

impl ChallengeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }

    pub(crate) fn wire(self) -> instant_acme::ChallengeType {
        match self {
            Self::Http01 => instant_acme::ChallengeType::Http01,
            Self::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
        }
    }
}

/// When a certificate is renewed: once the time it has left falls below
/// both `fraction` of its lifetime and `at_most`. With the defaults (1/3,
/// 30 days), a 90-day certificate renews 30 days before expiry, a 6-day one
/// 2 days before, and a year-long one 30 days before.
#[derive(Debug, Clone, Copy)]
pub struct RenewalPolicy {
    /// Renew when less than this share of the lifetime remains.
    pub fraction: f64,
    /// Cap on how long before expiry renewal starts.
    pub at_most: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            fraction: 1.0 / 3.0,
            at_most: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl RenewalPolicy {
    /// The moment a certificate valid from `not_before` to `not_after` is
    /// due for renewal.
    pub fn renew_at(&self, not_before: SystemTime, not_after: SystemTime) -> SystemTime {
        let lifetime = not_after
            .duration_since(not_before)
            .unwrap_or(Duration::ZERO);
        let share = lifetime.mul_f64(self.fraction.clamp(0.0, 1.0));
        let before = share.min(self.at_most);
        not_after.checked_sub(before).unwrap_or(not_before)
    }
}

/// Delays between failed attempts: `initial`, doubled after each failure,
/// never more than `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay after the first failure.
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(6 * 3600),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }
}

/// Everything the manager needs to know.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Where certificates are ordered.
    pub directory: Directory,
    /// Whom the HTTPS client trusts when talking to the directory.
    pub trust: Trust,
    /// Contact URIs for the account (`mailto:ops@example.com`).
    pub contact: Vec<String>,
    /// External account binding, when the CA requires one.
    pub external_account: Option<ExternalAccount>,
    /// The state directory (account, certificates, keys).
    pub state_dir: PathBuf,
    /// When to renew.
    pub renewal: RenewalPolicy,
    /// How failed attempts are retried.
    pub backoff: Backoff,
    /// How long one order may wait for the CA (validation, issuance).
    pub order_timeout: Duration,
}

impl AcmeConfig {
    /// A configuration with default policies.
    pub fn new(directory: Directory, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            directory,
            trust: Trust::System,
            contact: Vec::new(),
            external_account: None,
            state_dir: state_dir.into(),
            renewal: RenewalPolicy::default(),
            backoff: Backoff::default(),
            order_timeout: Duration::from_secs(90),
        }
    }
}

/// A DNS name a certificate can be ordered for: lower case, without a
/// trailing dot, letters, digits and hyphens in labels of 1 to 63 bytes. No
/// wildcards: they need DNS-01, which this crate does not speak. Being this
/// narrow, it is also a safe file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Checks and normalises a name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Config {
            what: "domain",
            reason: format!("{name:?}: {reason}"),
        };
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 {
            return Err(bad("must have 1 to 253 characters"));
        }
        if !lower.contains('.') {
            return Err(bad("must have at least two labels"));
        }
        for label in lower.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("every label must have 1 to 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a label may not start or end with '-'"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad(
                    "only letters, digits and '-' are allowed (no wildcards)",
                ));
            }
        }
        if lower
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("an IP address is not a domain"));
        }
        Ok(Self(lower))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_by_name_or_url() {
        assert_eq!(
            "letsencrypt".parse::<Directory>().unwrap(),
            Directory::LetsEncrypt
        );
        assert!(Directory::LetsEncryptStaging.url().contains("staging"));
        let url: Directory = "https://ca.example.net/dir".parse().unwrap();
        assert_eq!(url.url(), "https://ca.example.net/dir");
        assert!("http://ca.example.net/dir".parse::<Directory>().is_err());
        assert!("letsencrypt-prod".parse::<Directory>().is_err());
    }

    #[test]
    fn domains_are_normalised_and_narrow() {
        assert_eq!(
            Domain::parse("Example.COM.").unwrap().as_str(),
            "example.com"
        );
        for bad in [
            "",
            "localhost",
            "*.example.com",
            "a..b",
            "-a.com",
            "a_b.com",
            "../x.com",
            "10.0.0.1",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn renewal_is_a_third_of_the_lifetime_capped_at_thirty_days() {
        let day = Duration::from_secs(86_400);
        let start = SystemTime::UNIX_EPOCH + 1000 * day;
        let policy = RenewalPolicy::default();
        // 90 days: 30 days before expiry.
        assert_eq!(policy.renew_at(start, start + 90 * day), start + 60 * day);
        // 6 days: 2 days before.
        assert_eq!(policy.renew_at(start, start + 6 * day), start + 4 * day);
        // A year: the 30-day cap.
        assert_eq!(policy.renew_at(start, start + 365 * day), start + 335 * day);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(100),
        };
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.delay(1000).as_secs(), 100);
    }

    #[test]
    fn hmac_key_is_hidden_and_decoded() {
        let eab = ExternalAccount {
            key_id: "kid-1".into(),
            hmac_key: "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0aW5nLW9ubHk".into(),
        };
        assert!(!format!("{eab:?}").contains("c2Vj"));
        assert!(eab.key().is_ok());
        let bad = ExternalAccount {
            key_id: "kid-1".into(),
            hmac_key: "not base64!".into(),
        };
        assert!(bad.key().is_err());
    }
}
