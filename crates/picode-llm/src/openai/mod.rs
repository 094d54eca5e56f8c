//! Adapter for OpenAI Chat Completions and the servers that copy it
//! (Ollama, llama.cpp server, vLLM, LM Studio, OpenRouter, Groq). The base
//! URL includes the version segment, e.g. `http://localhost:11434/v1`.

mod convert;
mod wire;

use async_trait::async_trait;

use crate::config::ProviderConfig;
use crate::model::{ChatRequest, EventStream};
use crate::retry::{send_with_retry, transport_error, RetryPolicy};
use crate::stream::{drive, TextOptions};
use crate::{LlmError, Provider};

pub(crate) struct OpenAiProvider {
    cfg: ProviderConfig,
    base_url: String,
    client: reqwest::Client,
    retry: RetryPolicy,
}

impl OpenAiProvider {
    pub(crate) fn new(cfg: &ProviderConfig) -> Result<Self, LlmError> {
        Ok(OpenAiProvider {
            base_url: cfg.effective_base_url(),
            client: crate::provider::http_client(cfg)?,
            retry: cfg.retry_policy(),
            cfg: cfg.clone(),
        })
    }

    fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn model(&self) -> &str {
        &self.cfg.model
    }

    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, LlmError> {
        let (text, req) = TextOptions::prepare(req, self.cfg.tool_protocol);
        let req = req.as_ref();
        let body = convert::to_wire(req, &self.cfg.model, self.cfg.max_tokens);
        let prompt_chars = serde_json::to_string(&body).map_or(0, |s| s.len());
        let url = format!("{}/chat/completions", self.base_url);
        tracing::debug!(provider = %self.cfg.name, %url, model = %body.model, "starting chat completion stream");
        let resp = send_with_retry(&self.cfg.name, &self.retry, || {
            self.authorize(self.client.post(&url))
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .json(&body)
        })
        .await?;
        Ok(drive(
            &self.cfg.name,
            resp,
            convert::ChunkDecoder::new(&self.cfg.name, prompt_chars),
            text,
        ))
    }

    async fn models(&self) -> Result<Vec<String>, LlmError> {
        let url = format!("{}/models", self.base_url);
        let resp = send_with_retry(&self.cfg.name, &self.retry, || {
            self.authorize(self.client.get(&url))
        })
        .await?;
        let list: wire::ModelList = resp.json().await.map_err(|e| match e.is_decode() {
            true => LlmError::Decode {
                provider: self.cfg.name.clone(),
                message: e.to_string(),
            },
            false => transport_error(&self.cfg.name, &e),
        })?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }
}
