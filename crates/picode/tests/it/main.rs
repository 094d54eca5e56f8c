//! Integration tests: the real `picode` binary against `fake-llm` servers on
//! port 0, in temporary projects, config and data directories.

mod compaction;
mod config;
mod errors;
mod headless;
mod helpers;
mod interactive;
mod provider;
mod serve;
mod undo;
