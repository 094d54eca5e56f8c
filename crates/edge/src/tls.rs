//! TLS building blocks: PEM loading, certificates chosen by SNI, client
//! certificate verifiers, and client configurations for upstreams.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

use crate::error::SetupError;
use crate::route::{normalize_host, HostMap, HostPattern};

/// The crypto provider every config in this crate uses (ring: quick to build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Reads every certificate in a PEM file, in order (leaf first for chains).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::Pem {
            path: path.display().to_string(),
            what: format!("bad certificate PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(SetupError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| SetupError::Pem {
        path: path.display().to_string(),
        what: format!("no usable private key: {e}"),
    })
}

/// Reads every CRL in a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, SetupError> {
    let pem = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::Pem {
            path: path.display().to_string(),
            what: format!("bad CRL PEM: {e}"),
        })?;
    if crls.is_empty() {
        return Err(SetupError::Pem {
            path: path.display().to_string(),
            what: "no X509 CRL block found".into(),
        });
    }
    Ok(crls)
}

/// Builds a trust store from CA bundle files.
pub fn load_roots(paths: &[impl AsRef<Path>]) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let path = path.as_ref();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|source| SetupError::Tls {
                context: format!("CA bundle {}", path.display()),
                source,
            })?;
        }
    }
    Ok(roots)
}

/// Loads a certificate chain and its key into a [`CertifiedKey`], checking
/// that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, SetupError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map(Arc::new)
        .map_err(|source| SetupError::Tls {
            context: format!("certificate {} with key {}", cert.display(), key.display()),
            source,
        })
}

/// Server certificates chosen by SNI: exact names first, then `*.suffix`
/// wildcards, then a default for clients that send no (or an unknown) name.
/// Names are matched as [`crate::route`] matches request hosts.
#[derive(Debug, Default)]
pub struct SniCertResolver {
    names: HostMap<Arc<CertifiedKey>>,
}

impl SniCertResolver {
    /// Adds a certificate for `names` (`*.example.com` is a wildcard). The
    /// first certificate added becomes the default.
    pub fn add(&mut self, names: &[String], key: Arc<CertifiedKey>) -> Result<(), SetupError> {
        for name in names {
            let pattern = HostPattern::parse(name).map_err(|e| {
                SetupError::Invalid(format!("server name {name:?} is not a host name: {e}"))
            })?;
            self.names.insert(Some(pattern), key.clone());
        }
        if self.names.get_pattern(None).is_none() {
            self.names.insert(None, key);
        }
        Ok(())
    }

    /// The certificate for a server name.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni.and_then(|n| normalize_host(n).ok());
        self.names.lookup(name.as_deref()).cloned()
    }

    /// Every certificate chain held, for expiry checks.
    pub fn certificates(&self) -> impl Iterator<Item = &Arc<CertifiedKey>> {
        self.names.values()
    }
}

impl ResolvesServerCert for SniCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
    }
}

/// How a listener treats client certificates during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMode {
    /// No certificate is asked for.
    #[default]
    Off,
    /// A certificate is asked for; without one the handshake still succeeds,
    /// but a presented certificate must verify.
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

/// What to do when a CRL's `nextUpdate` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleCrlPolicy {
    /// Refuse certificates that can only be checked against a stale CRL.
    #[default]
    Deny,
    /// Keep using the stale CRL.
    Allow,
}

/// Which certificates of a client's chain revocation is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum CrlScope {
    /// The end entity only. Right for the common root → intermediate → leaf
    /// PKI whose one CRL comes from the intermediate: the intermediate's own
    /// status, which only the root's CRL could tell, is not asked for.
    #[default]
    Leaf,
    /// Every certificate of the chain up to the trust anchor.
    Chain,
}

/// What to do with a certificate whose revocation status no CRL tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub enum UnknownRevocation {
    /// Refuse it.
    #[default]
    Deny,
    /// Accept it.
    Allow,
}

/// How client certificates are checked for revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct RevocationPolicy {
    /// Which certificates are checked.
    pub scope: CrlScope,
    /// A certificate no CRL covers.
    pub unknown: UnknownRevocation,
}

/// Trust settings for verifying client certificates.
#[derive(Debug, Clone)]
pub struct ClientTrust {
    /// Trust anchors.
    pub roots: Arc<RootCertStore>,
    /// Revocation lists; empty turns revocation checking off.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Policy for expired CRLs.
    pub stale_crl: StaleCrlPolicy,
    /// Which certificates are checked and what an unknown status means.
    pub revocation: RevocationPolicy,
}

/// Checks that every CRL in a PEM file parses as the verifier will parse
/// it, naming the file and the reason when one does not.
pub fn check_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, SetupError> {
    let crls = load_crls(path)?;
    for (i, crl) in crls.iter().enumerate() {
        webpki::OwnedCertRevocationList::from_der(crl.as_ref()).map_err(|e| SetupError::Pem {
            path: path.display().to_string(),
            what: format!("CRL #{} cannot be used: {e:?}", i + 1),
        })?;
    }
    Ok(crls)
}

/// Builds a client certificate verifier for `mode`.
pub fn client_verifier(
    mode: ClientAuthMode,
    trust: &ClientTrust,
) -> Result<Arc<dyn ClientCertVerifier>, SetupError> {
    if mode == ClientAuthMode::Off {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider());
    if !trust.crls.is_empty() {
        builder = builder.with_crls(trust.crls.iter().cloned());
        if trust.stale_crl == StaleCrlPolicy::Deny {
            builder = builder.enforce_revocation_expiration();
        }
        if trust.revocation.scope == CrlScope::Leaf {
            builder = builder.only_check_end_entity_revocation();
        }
        if trust.revocation.unknown == UnknownRevocation::Allow {
            builder = builder.allow_unknown_revocation_status();
        }
    }
    if mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| SetupError::Verifier {
        context: "client certificate verifier".into(),
        detail: e.to_string(),
    })
}

/// Checks a presented chain against a verifier outside a handshake, as a
/// route with its own CA bundles does after the listener accepted the chain.
pub fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
}

/// Builds a server config with certificates from `certs`, the given client
/// verifier, and ALPN for HTTP/2 (when `http2`) and HTTP/1.1.
pub fn server_config(
    certs: Arc<SniCertResolver>,
    verifier: Arc<dyn ClientCertVerifier>,
    http2: bool,
) -> Result<Arc<ServerConfig>, SetupError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| SetupError::Tls {
            context: "server protocol versions".into(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    // Resumption: stateless tickets (keys rotated by rustls every six
    // hours) for clients that take them, and a session cache larger than
    // rustls' default of 256 entries for the ones that do not, so a busy
    // listener does not evict sessions before their clients come back.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|source| SetupError::Tls {
        context: "session ticket keys".into(),
        source,
    })?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// How the proxy authenticates an upstream and itself to it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsSpec {
    /// CA bundle for the upstream's certificate; the system store when unset.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate chain (leaf first; the whole file is sent).
    pub cert: Option<std::path::PathBuf>,
    /// Key for `cert`.
    pub key: Option<std::path::PathBuf>,
    /// Skip verifying the upstream's certificate. Dangerous; must be explicit.
    pub insecure: bool,
}

/// Builds the client config used to reach an upstream over TLS.
pub fn upstream_client_config(spec: &UpstreamTlsSpec) -> Result<ClientConfig, SetupError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| SetupError::Tls {
            context: "client protocol versions".into(),
            source,
        })?;
    let builder = if spec.insecure {
        tracing::warn!("upstream TLS verification is switched off (insecure = true)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match &spec.ca {
            Some(ca) => load_roots(&[ca])?,
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let cfg = match (&spec.cert, &spec.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| SetupError::Tls {
                context: format!("upstream client certificate {}", cert.display()),
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(SetupError::Invalid(
                "upstream TLS needs both `cert` and `key`, or neither".into(),
            ))
        }
    };
    // ALPN is left empty: upstreams speak HTTP/1.1 only, so WebSocket
    // upgrades and pooling behave the same for every upstream.
    Ok(cfg)
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    roots
}

/// Accepts any server certificate. Used only with `insecure = true`.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stable label for why a TLS handshake failed, for metrics and records.
pub fn handshake_failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as E};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "client_closed",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::InvalidData => "not_tls",
            _ => "io",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_client_certificate",
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_key_usage"
            }
            CertificateError::BadSignature => "bad_signature",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "stale_crl",
            CertificateError::UnknownRevocationStatus => "unknown_revocation_status",
            CertificateError::BadEncoding => "bad_encoding",
            _ => "invalid_certificate",
        },
        E::NoApplicationProtocol => "no_alpn",
        E::PeerIncompatible(_) => "peer_incompatible",
        E::PeerMisbehaved(_) => "peer_misbehaved",
        E::AlertReceived(_) => "alert_received",
        E::InappropriateHandshakeMessage { .. } | E::InappropriateMessage { .. } => "protocol",
        E::General(_) => "no_certificate_for_name",
        _ => "tls_error",
    }
}
