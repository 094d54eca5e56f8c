//! # picode-llm
//!
//! PiCode's conversation model ([`Message`], [`ContentPart`], [`ChatRequest`],
//! [`StreamEvent`]) and the adapters that carry it to model providers: OpenAI
//! Chat Completions and its many compatibles (Ollama, llama.cpp server, vLLM,
//! LM Studio, OpenRouter, Groq) and Anthropic Messages. It streams answers
//! over SSE, assembles tool calls, recovers tool calls that local models write
//! as text, retries before a stream starts and falls back across providers.
//!
//! What it must not do: know how tools are executed, touch the terminal, the
//! session database or the file system, or read config files. The agent owns
//! those; this crate turns a [`ChatRequest`] into a stream of [`StreamEvent`]s
//! and nothing more. Provider wire types live in each adapter's `wire` module
//! and never leak out of it.

mod anthropic;
mod config;
mod error;
mod fallback;
mod model;
mod openai;
mod prompt_tools;
mod provider;
mod pythonic;
mod retry;
pub mod sse;
mod stream;
pub mod text_tools;

pub use config::{cost, Pricing, ProviderConfig, ProviderKind, ToolProtocol};
pub use error::LlmError;
pub use fallback::FallbackChain;
pub use model::{
    ChatRequest, ContentPart, EventStream, Message, Role, StopReason, StreamEvent, ToolChoice,
    ToolDef, Usage,
};
pub use prompt_tools::describe_tools;
pub use provider::{build_provider, collect, Provider, TurnOutput};
pub use pythonic::fit_arguments;
pub use retry::{parse_retry_after, RetryPolicy};
