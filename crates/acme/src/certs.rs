//! Certificates held per domain: the issued one (from the CA, kept as PEM
//! files 0600) or a self-signed placeholder while none is, and each
//! domain's status.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::{ChallengeKind, Domain};
use crate::error::Error;
use crate::store;

/// Where a domain's certificate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// No certificate issued yet (the placeholder is served); an order may
    /// be under way.
    Pending,
    /// An issued certificate is served.
    Valid {
        /// When it expires.
        not_after: SystemTime,
    },
    /// The last attempt failed. A previously issued certificate, if any, is
    /// still served; otherwise the placeholder.
    Failed {
        /// What went wrong, as the CA or the network reported it.
        reason: String,
        /// Consecutive failures so far.
        failures: u32,
        /// When the next attempt is due.
        next_attempt: SystemTime,
    },
}

/// A certificate issued by the CA.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

/// One domain's state.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) kind: ChallengeKind,
    pub(crate) issued: Option<Issued>,
    pub(crate) placeholder: Arc<CertifiedKey>,
    pub(crate) status: Status,
    /// Held while an order for the domain runs: two orders at once would
    /// publish TLS-ALPN-01 answers under the same name and remove each
    /// other's.
    pub(crate) ordering: Arc<tokio::sync::Mutex<()>>,
    /// When this process last got a certificate for the domain.
    pub(crate) last_issued: Option<SystemTime>,
}

impl Entry {
    pub(crate) fn serving(&self) -> Arc<CertifiedKey> {
        match &self.issued {
            Some(issued) => issued.key.clone(),
            None => self.placeholder.clone(),
        }
    }
}

pub(crate) fn cert_path(state_dir: &Path, domain: &Domain) -> PathBuf {
    state_dir.join("certs").join(format!("{domain}.crt.pem"))
}

pub(crate) fn key_path(state_dir: &Path, domain: &Domain) -> PathBuf {
    state_dir.join("certs").join(format!("{domain}.key.pem"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `domain`, served until the CA's arrives so
/// TLS clients get a handshake (with a warning) rather than a reset.
pub(crate) fn placeholder(domain: &Domain) -> Result<Arc<CertifiedKey>, Error> {
    let fail = |reason: String| Error::Certificate {
        domain: domain.to_string(),
        reason,
    };
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![domain.to_string()]).map_err(|e| fail(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certificate pending");
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    CertifiedKey::from_der(vec![cert.der().clone()], key, &provider())
        .map(Arc::new)
        .map_err(|e| fail(e.to_string()))
}

/// Parses a PEM chain (leaf first) and key into an [`Issued`], checking that
/// they belong together.
pub(crate) fn parse_issued(
    domain: &Domain,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Issued, Error> {
    let fail = |reason: String| Error::Certificate {
        domain: domain.to_string(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("bad certificate PEM: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| fail("no certificate in the chain".into()))?;
    let (not_before, not_after) = validity(leaf).map_err(fail)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| fail(format!("bad key PEM: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| fail(e.to_string()))?;
    Ok(Issued {
        key: Arc::new(key),
        not_before,
        not_after,
    })
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("leaf certificate does not parse: {e}"))?;
    let at = |secs: i64| {
        u64::try_from(secs)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| "validity before 1970".to_string())
    };
    let validity = cert.validity();
    Ok((
        at(validity.not_before.timestamp())?,
        at(validity.not_after.timestamp())?,
    ))
}

/// Stores an issued chain and its key (both 0600), key first so a chain on
/// disk always has its key.
pub(crate) fn save(
    state_dir: &Path,
    domain: &Domain,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(), Error> {
    store::write_private(&key_path(state_dir, domain), key_pem)?;
    store::write_private(&cert_path(state_dir, domain), chain_pem)
}

/// The stored certificate for `domain`, if there is one.
pub(crate) fn load(state_dir: &Path, domain: &Domain) -> Result<Option<Issued>, Error> {
    let cert_file = cert_path(state_dir, domain);
    let Some(chain) = store::read_optional(&cert_file)? else {
        return Ok(None);
    };
    let key_file = key_path(state_dir, domain);
    let Some(key) = store::read_optional(&key_file)? else {
        return Err(Error::Corrupt {
            path: key_file.display().to_string(),
            reason: format!("missing, though {} exists", cert_file.display()),
        });
    };
    parse_issued(domain, &chain, &key).map(Some)
}
