//! Rivetr's integration tests: the real `rivetr` binary against the real
//! container engine (Podman's Docker-compatible API, started by
//! `scripts/start-podman`), real git repositories and real HTTP.

mod support;

mod deploy;
mod inputs;
mod restart;
