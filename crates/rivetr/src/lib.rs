//! Rivetr: a self-hosted PaaS in one binary. It clones an app's git
//! repository, builds an image, runs containers on a private network,
//! health-checks them and routes traffic to them.
//!
//! This crate so far holds the container runtime layer ([`runtime`]); the
//! store, deployment engine, router, API and CLI come beside it.

pub mod runtime;
