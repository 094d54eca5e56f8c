//! picode-llm integration tests: every adapter talks to a real `fake-llm`
//! server on port 0 over HTTP; nothing of reqwest is mocked.

mod protocols;
mod resilience;
mod text_calls;

use std::sync::Arc;

use fake_llm::FakeLlm;
use picode_llm::{
    build_provider, collect, ChatRequest, LlmError, Message, Provider, ProviderConfig,
    ProviderKind, StreamEvent, ToolDef, TurnOutput,
};
use serde_json::json;

/// Both protocols, for tests that must hold for each.
pub const KINDS: [ProviderKind; 2] = [ProviderKind::OpenAi, ProviderKind::Anthropic];

/// A config pointing at `fake`, with fast retries so tests stay quick.
pub fn config(kind: ProviderKind, fake: &FakeLlm) -> ProviderConfig {
    let mut cfg = ProviderConfig::new(format!("fake-{kind:?}"), kind, "test-model")
        .with_base_url(fake.base_url())
        .with_api_key("sk-test");
    cfg.retry_base_ms = 20;
    cfg.retry_max_ms = 2_000;
    cfg.max_retries = 2;
    cfg.timeout_secs = 5;
    cfg
}

pub fn provider(cfg: &ProviderConfig) -> Arc<dyn Provider> {
    build_provider(cfg).expect("valid config")
}

pub fn bash_tool() -> ToolDef {
    ToolDef {
        name: "bash".into(),
        description: "Run a shell command".into(),
        parameters: json!({"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}),
    }
}

pub fn request(text: &str, tools: Vec<ToolDef>) -> ChatRequest {
    ChatRequest {
        system: Some("You are a test.".into()),
        messages: vec![Message::user(text)],
        tools,
        ..ChatRequest::default()
    }
}

/// Every event of one turn, or the first error.
pub async fn events(
    provider: &dyn Provider,
    req: &ChatRequest,
) -> Result<Vec<StreamEvent>, LlmError> {
    use futures_util::StreamExt;
    let mut stream = provider.stream(req).await?;
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        out.push(event?);
    }
    Ok(out)
}

pub async fn turn(provider: &dyn Provider, req: &ChatRequest) -> Result<TurnOutput, LlmError> {
    collect(provider.stream(req).await?).await
}
