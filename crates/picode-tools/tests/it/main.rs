//! Integration tests for picode-tools: real files in temp dirs, a real git,
//! real processes. One binary, one module per area.

mod agents;
mod checkpoints;
mod confinement;
mod files;
mod mcp;
mod paths;
mod permissions;
mod shell;
mod support;
