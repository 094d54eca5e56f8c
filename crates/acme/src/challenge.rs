//! Challenge answers while an order is open: HTTP-01 key authorizations by
//! token and TLS-ALPN-01 certificates by domain. The product's listeners
//! look them up; an answer is removed as soon as its order ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::Domain;
use crate::error::Error;

/// The ALPN protocol id of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix HTTP-01 requests arrive under (RFC 8555 section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Whether a client hello's ALPN list marks a TLS-ALPN-01 validation.
pub fn is_acme_tls_alpn(alpn: &[Vec<u8>]) -> bool {
    alpn.iter().any(|p| p == ACME_TLS_ALPN)
}

#[derive(Debug, Default)]
struct Answers {
    http01: HashMap<String, String>,
    alpn: HashMap<Domain, Arc<ServerConfig>>,
}

/// The answers currently published.
#[derive(Debug, Default, Clone)]
pub(crate) struct Challenges(Arc<Mutex<Answers>>);

impl Challenges {
    fn with<T>(&self, f: impl FnOnce(&mut Answers) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        self.with(|a| a.http01.get(token).cloned())
    }

    pub(crate) fn alpn(&self, domain: &Domain) -> Option<Arc<ServerConfig>> {
        self.with(|a| a.alpn.get(domain).cloned())
    }

    /// Publishes an HTTP-01 answer until the guard is dropped.
    pub(crate) fn publish_http01(&self, token: &str, key_authorization: &str) -> Published {
        self.with(|a| {
            a.http01
                .insert(token.to_owned(), key_authorization.to_owned())
        });
        Published {
            challenges: self.clone(),
            answer: Answer::Http01(token.to_owned()),
        }
    }

    /// Publishes a TLS-ALPN-01 certificate until the guard is dropped.
    pub(crate) fn publish_alpn(
        &self,
        domain: &Domain,
        key_authorization_digest: &[u8],
    ) -> Result<Published, Error> {
        let config = alpn_server_config(domain, key_authorization_digest)?;
        self.with(|a| a.alpn.insert(domain.clone(), config));
        Ok(Published {
            challenges: self.clone(),
            answer: Answer::Alpn(domain.clone()),
        })
    }
}

enum Answer {
    Http01(String),
    Alpn(Domain),
}

/// Removes its answer when dropped, however the order ended.
pub(crate) struct Published {
    challenges: Challenges,
    answer: Answer,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.challenges.with(|a| match &self.answer {
            Answer::Http01(token) => {
                a.http01.remove(token);
            }
            Answer::Alpn(domain) => {
                a.alpn.remove(domain);
            }
        });
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The self-signed certificate RFC 8737 asks for: the domain as its only
/// name and, in a critical `acmeIdentifier` extension, the SHA-256 of the
/// key authorization; served only to clients that offer `acme-tls/1`.
fn alpn_server_config(domain: &Domain, digest: &[u8]) -> Result<Arc<ServerConfig>, Error> {
    let fail = |reason: String| Error::Certificate {
        domain: domain.to_string(),
        reason,
    };
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![domain.to_string()]).map_err(|e| fail(e.to_string()))?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| fail(e.to_string()))?;
    // Not `with_single_cert`: rustls refuses a certificate with a critical
    // extension it does not know, and `acmeIdentifier` is one by design.
    let certified = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing_key,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certified)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_live_as_long_as_their_guard() {
        let challenges = Challenges::default();
        let domain = Domain::parse("a.example.com").unwrap();
        {
            let _h = challenges.publish_http01("tok", "tok.thumb");
            let _a = challenges.publish_alpn(&domain, &[7; 32]).unwrap();
            assert_eq!(challenges.http01("tok").as_deref(), Some("tok.thumb"));
            let config = challenges.alpn(&domain).unwrap();
            assert_eq!(config.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
        }
        assert!(challenges.http01("tok").is_none());
        assert!(challenges.alpn(&domain).is_none());
    }

    #[test]
    fn acme_alpn_is_recognised() {
        assert!(is_acme_tls_alpn(&[b"h2".to_vec(), ACME_TLS_ALPN.to_vec()]));
        assert!(!is_acme_tls_alpn(&[b"h2".to_vec()]));
    }
}
