//! Adapter for Anthropic Messages. The base URL may be given with or
//! without the `/v1` segment (`https://api.anthropic.com` as in Anthropic's
//! own tools, or `.../v1` as for OpenAI-style configs).

mod convert;
mod wire;

use async_trait::async_trait;

use crate::config::ProviderConfig;
use crate::model::{ChatRequest, EventStream};
use crate::retry::{send_with_retry, transport_error, RetryPolicy};
use crate::stream::{drive, TextOptions};
use crate::{LlmError, Provider};

/// The API version PiCode's wire types follow.
const API_VERSION: &str = "2023-06-01";

pub(crate) struct AnthropicProvider {
    cfg: ProviderConfig,
    /// Base URL ending in `/v1`.
    base_url: String,
    client: reqwest::Client,
    retry: RetryPolicy,
}

impl AnthropicProvider {
    pub(crate) fn new(cfg: &ProviderConfig) -> Result<Self, LlmError> {
        let mut base_url = cfg.effective_base_url();
        if !base_url.ends_with("/v1") {
            base_url.push_str("/v1");
        }
        Ok(AnthropicProvider {
            base_url,
            client: crate::provider::http_client(cfg)?,
            retry: cfg.retry_policy(),
            cfg: cfg.clone(),
        })
    }

    fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let builder = builder.header("anthropic-version", API_VERSION);
        match self.cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => builder.header("x-api-key", key),
            None => builder,
        }
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
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
        let url = format!("{}/messages", self.base_url);
        tracing::debug!(provider = %self.cfg.name, %url, model = %body.model, "starting messages stream");
        let resp = send_with_retry(&self.cfg.name, &self.retry, || {
            self.authorize(self.client.post(&url))
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .json(&body)
        })
        .await?;
        Ok(drive(
            &self.cfg.name,
            resp,
            convert::EventDecoder::new(&self.cfg.name),
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
