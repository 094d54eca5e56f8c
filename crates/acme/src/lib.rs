//! Automatic HTTPS through ACME (RFC 8555): one certificate per domain,
//! issued and renewed from any ACME directory (Let's Encrypt production or
//! staging by name, any URL otherwise, with external account binding).
//!
//! What it gives a product:
//! - [`Manager`]: per domain the certificate to serve ([`rustls::sign::CertifiedKey`]),
//!   a self-signed placeholder while none is issued, and a [`Status`]
//!   (pending, valid until, failed with a reason and the next attempt).
//!   It is a [`rustls::server::ResolvesServerCert`], so it chooses by SNI.
//! - Challenge answers the product's own listeners serve: HTTP-01 through
//!   [`Manager::http01_response`], TLS-ALPN-01 through [`Manager::alpn_config`]
//!   for a client hello that offers [`ACME_TLS_ALPN`].
//! - [`Manager::issue`] and [`Manager::run`]: renewal well before expiry,
//!   failed attempts retried with capped exponential backoff.
//! - A state directory (mode 0700) with the account credentials (JSON) and
//!   each domain's certificate chain and key (PEM), every file mode 0600,
//!   loaded again at start so a restart neither re-registers nor re-issues.
//!
//! What it does **not** do: bind ports or serve HTTP/TLS itself (the
//! product's router answers challenges from what this crate holds), decide
//! which domains deserve certificates, know any product, or speak DNS-01
//! (wildcards are therefore refused). Time is passed in where a decision
//! depends on it ([`Manager::due`], [`RenewalPolicy::renew_at`]), so tests
//! reproduce.
//!
//! Plugging it into a listener (edge's `ProxyHttp::tls_config` gets the
//! hello's server name and ALPN list; any rustls acceptor can do the same):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn example(manager: Arc<acme::Manager>, sni: Option<&str>, alpn: &[Vec<u8>]) {
//! let config = match sni {
//!     Some(name) if acme::is_acme_tls_alpn(alpn) => manager.alpn_config(name),
//!     _ => Some(manager.server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])),
//! };
//! # let _ = config;
//! # }
//! ```
//!
//! and on port 80: answer `manager.http01_response_for_path(path)` with 200
//! when it is `Some`, redirect to HTTPS when `manager.has_certificate(host)`,
//! serve plain HTTP otherwise.

mod account;
mod certs;
mod challenge;
mod config;
mod error;
mod http;
mod manager;
mod store;

pub use certs::Status;
pub use challenge::{is_acme_tls_alpn, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use config::{
    AcmeConfig, Backoff, ChallengeKind, Directory, Domain, ExternalAccount, RenewalPolicy, Trust,
};
pub use error::Error;
pub use manager::Manager;
