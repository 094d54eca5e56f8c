//! mtls-proxy: a reverse proxy that terminates and originates mutual TLS,
//! checks client certificates against per-route allowlists, and records
//! every exchange in SQLite.
//!
//! The engine (listeners, TLS, upstream pools, limits) is the `edge` crate;
//! this crate holds what makes the product: the configuration file
//! ([`config`]), the runtime that hot reload swaps ([`runtime`]), the proxy
//! phases ([`proxy`]), the recording store ([`store`]), the admin surface
//! ([`admin`]) and the glue that runs it all ([`app`]).
//!
//! It must never let recording slow or stop proxying: records go through a
//! bounded queue and are dropped (and counted) when it is full.

pub mod admin;
pub mod app;
pub mod config;
pub mod headers;
pub mod identity;
pub mod proxy;
pub mod runtime;
pub mod store;
