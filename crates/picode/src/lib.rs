//! PiCode: an AI coding assistant for the terminal that works with any LLM.
//!
//! The crate is split into a domain and its surfaces. The domain is
//! [`agent`] (the model/tool loop), [`session`] (an agent bound to a stored
//! conversation, with slash commands), [`store`] (SQLite), [`config`],
//! [`providers`] and [`secrets`]. The surfaces adapt it: [`cli`] (argument
//! parsing and dispatch), [`headless`] (`picode -p`), [`repl`] (the
//! interactive terminal session) and [`serve`] (the HTTP API).
//!
//! What the domain must not do: know about clap, axum or the terminal. It
//! reports what happens through [`agent::AgentEvent`]s and asks for approval
//! through the [`picode_tools::Approver`] a surface hands it. Tools, their
//! sandboxing and checkpoints belong to `picode-tools`; provider protocols to
//! `picode-llm`.

pub mod agent;
pub mod commands;
pub mod config;
pub mod providers;
pub mod secrets;
pub mod session;
pub mod store;
pub mod trust;

pub mod cli;
pub mod headless;
pub mod repl;
pub mod serve;
