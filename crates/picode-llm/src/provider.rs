//! The provider abstraction and its construction from config.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;

use crate::config::{ProviderConfig, ProviderKind};
use crate::model::{
    ChatRequest, ContentPart, EventStream, Message, Role, StopReason, StreamEvent, Usage,
};
use crate::{anthropic, openai, LlmError};

/// A model endpoint PiCode can talk to.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Configured name, for messages and logs.
    fn name(&self) -> &str;

    /// Model used when a request leaves `model` empty.
    fn model(&self) -> &str;

    /// Starts one model turn. Retries (per the provider's policy) happen
    /// inside this call, before the first event; once it returns `Ok`, no
    /// retry will duplicate output. Dropping the returned stream cancels the
    /// HTTP request.
    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, LlmError>;

    /// Model ids the endpoint offers.
    async fn models(&self) -> Result<Vec<String>, LlmError>;
}

/// Builds the adapter the config asks for.
pub fn build_provider(cfg: &ProviderConfig) -> Result<Arc<dyn Provider>, LlmError> {
    if cfg.name.trim().is_empty() {
        return Err(LlmError::Config("provider `name` must not be empty".into()));
    }
    if cfg.model.trim().is_empty() {
        return Err(LlmError::Config(format!(
            "provider `{}`: `model` must not be empty",
            cfg.name
        )));
    }
    let base = cfg.effective_base_url();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(LlmError::Config(format!(
            "provider `{}`: `base_url` must start with http:// or https://, got `{base}`",
            cfg.name
        )));
    }
    Ok(match cfg.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAiProvider::new(cfg)?),
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicProvider::new(cfg)?),
    })
}

/// Builds the shared HTTP client for an adapter.
pub(crate) fn http_client(cfg: &ProviderConfig) -> Result<reqwest::Client, LlmError> {
    let timeout = std::time::Duration::from_secs(cfg.timeout_secs.max(1));
    reqwest::Client::builder()
        .connect_timeout(timeout)
        // A read timeout (not a total one) because answers may stream for
        // minutes; what we want to catch is a provider gone silent.
        .read_timeout(timeout)
        .user_agent(concat!("picode/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LlmError::Config(format!("provider `{}`: {e}", cfg.name)))
}

/// A finished turn, gathered from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutput {
    /// The assistant message: text first, then tool calls in order.
    pub message: Message,
    /// Usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Why the model stopped.
    pub stop: StopReason,
}

/// Drains a stream into a [`TurnOutput`]; handy for non-interactive callers
/// and tests. Fails with the stream's first error.
pub async fn collect(mut stream: EventStream) -> Result<TurnOutput, LlmError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut usage = None;
    while let Some(event) = stream.next().await {
        match event? {
            StreamEvent::TextDelta(delta) => text.push_str(&delta),
            StreamEvent::ToolCall {
                id,
                name,
                arguments,
            } => calls.push(ContentPart::ToolCall {
                id,
                name,
                arguments,
            }),
            StreamEvent::Usage(u) => usage = Some(u),
            StreamEvent::Provider(_) => {}
            StreamEvent::Done(stop) => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(ContentPart::Text { text });
                }
                content.extend(calls);
                return Ok(TurnOutput {
                    message: Message {
                        role: Role::Assistant,
                        content,
                    },
                    usage,
                    stop,
                });
            }
        }
    }
    Err(LlmError::Stream("stream ended before completion".into()))
}
