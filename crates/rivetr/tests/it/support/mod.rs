//! Helpers shared by the integration tests.

pub mod podman;
pub mod rivetr;
