//! Provider configuration as read from PiCode's config file. Parsing and
//! layering the file is the caller's job; this is the typed shape with
//! defaults, so a minimal entry is `name`, `kind` and `model`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Usage;
use crate::retry::RetryPolicy;

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProviderKind {
    /// OpenAI Chat Completions and compatibles (Ollama, llama.cpp server,
    /// vLLM, LM Studio, OpenRouter, Groq, ...).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages.
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ProviderKind {
    /// The base URL used when the config gives none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com/v1",
        }
    }
}

/// How tools are offered to the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolProtocol {
    /// The provider's own tool-calling fields. Tool calls that a model still
    /// writes as text are recovered by the text parser.
    #[default]
    Native,
    /// For models without native tool calling: tools are described in the
    /// system prompt with the exact answer format, no `tools` field is sent,
    /// tool results go back as user text, and calls are parsed from text.
    Prompt,
}

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pricing {
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
}

/// One configured provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used in messages and logs, e.g. `"local-qwen"`.
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL including the version segment, e.g. `http://localhost:11434/v1`.
    /// Empty means the kind's public endpoint.
    #[serde(default)]
    pub base_url: String,
    /// API key; local servers usually need none.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Model id sent to the provider.
    pub model: String,
    /// How tools are offered.
    #[serde(default)]
    pub tool_protocol: ToolProtocol,
    /// Prices, for cost reporting; `None` means free or unknown.
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Context window in tokens, used by the agent to decide when to compact.
    #[serde(default = "default_context_window")]
    pub context_window: u32,
    /// Output token limit used when a request sets none.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// How many times a failed request is retried before streaming starts.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Connect timeout, and the longest silence allowed while waiting for
    /// response bytes, in seconds. Not a cap on the whole answer, which can
    /// legitimately stream for minutes.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// First retry delay in milliseconds; doubles each attempt.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest retry delay in milliseconds, also the cap on `Retry-After`.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_context_window() -> u32 {
    128_000
}
fn default_max_retries() -> u32 {
    3
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    30_000
}

impl ProviderConfig {
    /// A config with every optional field at its default.
    pub fn new(name: impl Into<String>, kind: ProviderKind, model: impl Into<String>) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: String::new(),
            api_key: None,
            model: model.into(),
            tool_protocol: ToolProtocol::Native,
            pricing: None,
            context_window: default_context_window(),
            max_tokens: None,
            max_retries: default_max_retries(),
            timeout_secs: default_timeout_secs(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
        }
    }

    /// Builder-style base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// Builder-style API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The base URL to use: the configured one without a trailing slash, or
    /// the kind's default.
    pub fn effective_base_url(&self) -> String {
        let url = self.base_url.trim().trim_end_matches('/');
        if url.is_empty() {
            self.kind.default_base_url().to_string()
        } else {
            url.to_string()
        }
    }

    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_millis(self.retry_max_ms),
        }
    }
}

/// USD cost of a turn; zero when pricing is unknown.
pub fn cost(usage: &Usage, pricing: Option<&Pricing>) -> f64 {
    match pricing {
        None => 0.0,
        Some(p) => {
            (usage.input_tokens as f64 * p.input_per_mtok
                + usage.output_tokens as f64 * p.output_per_mtok)
                / 1_000_000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "local", "kind": "openai", "model": "qwen", "tool_protocol": "prompt"
        }))
        .unwrap();
        assert_eq!(cfg.kind, ProviderKind::OpenAi);
        assert_eq!(cfg.tool_protocol, ToolProtocol::Prompt);
        assert_eq!(cfg.max_retries, 3);
        assert_eq!(cfg.effective_base_url(), "https://api.openai.com/v1");
        let cfg: ProviderConfig = serde_json::from_value(serde_json::json!({
            "name": "c", "kind": "anthropic", "model": "m", "base_url": "http://x/v1/"
        }))
        .unwrap();
        assert_eq!(cfg.effective_base_url(), "http://x/v1");
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let usage = Usage {
            input_tokens: 2_000_000,
            output_tokens: 500_000,
            ..Default::default()
        };
        let pricing = Pricing {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        };
        assert!((cost(&usage, Some(&pricing)) - 13.5).abs() < 1e-9);
        assert_eq!(cost(&usage, None), 0.0);
    }
}
