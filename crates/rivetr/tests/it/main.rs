//! Rivetr's integration tests: the container runtimes against real Podman
//! (its Docker-compatible API and its CLI), and the real `rivetr` binary
//! deploying real git repositories behind its router.

mod support;

mod attacks;
mod cli;
mod deploy;
mod inputs;
mod restart;
mod runtime;
