//! Integration tests: the real `picode` binary against `fake-llm` servers on
//! port 0, in temporary projects, config and data directories.
//! `live` runs against a real model server instead, only when asked
//! (`scripts/live-llm`).

mod compaction;
mod config;
mod errors;
mod first_run;
mod headless;
mod helpers;
mod interactive;
mod live;
mod provider;
mod sdk;
mod secrets;
mod serve;
mod sessions;
mod trust;
mod undo;
