//! Edge: the HTTP proxy engine shared by the products that terminate traffic
//! (mtls-proxy today, Rivetr's router next).
//!
//! It is shaped like pingora: a product implements [`ProxyHttp`], whose
//! methods are the phases of a request, each with a documented default, and
//! [`Server`] drives them on hyper 1 (the downstream side), tokio and
//! rustls; the upstream side is the crate's own HTTP/1.1 client on
//! httparse, driven by each request's task. The crate also holds the
//! building blocks products configure the phases with: the request's one
//! authority, normalised paths and a host and prefix route table
//! ([`route`]), certificates by SNI and client certificate verifiers
//! ([`tls`]), and upstream groups with pooled connections and passive
//! health ([`upstream`]).
//!
//! What it does not do: read configuration files, own routing rules, store
//! records or serve metrics. Those are product decisions; the engine only
//! reports what it observed through [`ProxyHttp::logging`] and a few
//! connection-level metrics under a prefix the product chooses.

pub mod body;
pub mod error;
pub mod fuzzing;
mod h1;
pub mod proxy;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;

pub use body::{Body, BoxError, Captured};
pub use error::{Error, ErrorKind, ErrorSide, SetupError};
pub use proxy::{ClientHello, ConnInfo, Exchange, Peer, ProxyHttp, Session, TlsInfo};
pub use route::{HostMap, HostPattern, RouteTable};
pub use server::{Server, ServerSettings, Transport};
pub use upstream::{UpstreamGroup, UpstreamSettings};
