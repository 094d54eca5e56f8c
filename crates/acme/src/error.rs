//! What can go wrong, by layer: configuration, the state directory, the
//! ACME conversation, the CA's validation of a challenge, and certificates.

/// An error of the `acme` capability.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable (names the value).
    #[error("invalid {what}: {reason}")]
    Config {
        /// Which value.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Reading or writing the state directory failed.
    #[error("state file {path}: {source}")]
    Storage {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored file could not be understood.
    #[error("state file {path} is unreadable: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The conversation with the ACME server failed (network, protocol, or a
    /// problem document the server returned).
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The server offered no challenge of the kind asked for.
    #[error("the ACME server offers no {kind} challenge for {domain}")]
    NoChallenge {
        /// The domain.
        domain: String,
        /// The challenge kind asked for.
        kind: &'static str,
    },
    /// The CA could not validate the domain (its reason, as reported).
    #[error("validation of {domain} failed: {reason}")]
    Validation {
        /// The domain.
        domain: String,
        /// The CA's explanation.
        reason: String,
    },
    /// Making a key, CSR or certificate, or loading one into rustls, failed.
    #[error("certificate for {domain}: {reason}")]
    Certificate {
        /// The domain.
        domain: String,
        /// What failed.
        reason: String,
    },
    /// The domain was never added to the manager.
    #[error("unknown domain {0}")]
    UnknownDomain(String),
}
