//! Trying providers in order.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;

use crate::model::{ChatRequest, EventStream, StreamEvent};
use crate::{LlmError, Provider};

/// A provider that delegates to a list of providers, moving to the next one
/// when the current one fails *before any content was streamed*: it cannot
/// connect, answers 5xx/429 after its own retries, rejects the credentials,
/// or its stream breaks before the first event. Failures after content has
/// reached the caller are passed through, since switching then would mix two
/// models' answers.
///
/// Each provider's request keeps `model` as given; leave `model` empty in the
/// request so that each provider uses its own configured model.
pub struct FallbackChain {
    name: String,
    providers: Vec<Arc<dyn Provider>>,
}

impl FallbackChain {
    /// A chain over `providers`, tried in the given order.
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Result<Self, LlmError> {
        if providers.is_empty() {
            return Err(LlmError::Config(
                "a fallback chain needs at least one provider".into(),
            ));
        }
        let name = providers
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" > ");
        Ok(FallbackChain { name, providers })
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.providers
    }
}

#[async_trait]
impl Provider for FallbackChain {
    fn name(&self) -> &str {
        &self.name
    }

    fn model(&self) -> &str {
        self.providers[0].model()
    }

    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, LlmError> {
        let mut failures = Vec::new();
        for (index, provider) in self.providers.iter().enumerate() {
            let mut stream = match provider.stream(req).await {
                Ok(stream) => stream,
                Err(err) if err.should_fall_back() => {
                    tracing::warn!(provider = provider.name(), error = %err, "provider failed, falling back");
                    failures.push(err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            // Wait for the first event so that a stream that breaks before
            // producing anything still counts as this provider failing.
            match stream.next().await {
                Some(Ok(first)) => {
                    // A fallback says who answers, so the caller prices its
                    // usage at that provider's rates.
                    let announce =
                        (index > 0).then(|| Ok(StreamEvent::Provider(provider.name().to_owned())));
                    let rest = futures_util::stream::iter(announce)
                        .chain(futures_util::stream::once(async move { Ok(first) }))
                        .chain(stream);
                    return Ok(Box::pin(rest));
                }
                Some(Err(err)) if err.should_fall_back() => {
                    tracing::warn!(provider = provider.name(), error = %err, "stream failed before content, falling back");
                    failures.push(err);
                }
                Some(Err(err)) => return Err(err),
                None => failures.push(LlmError::Stream(format!(
                    "{}: stream ended before completion",
                    provider.name()
                ))),
            }
        }
        Err(LlmError::AllProvidersFailed(failures))
    }

    async fn models(&self) -> Result<Vec<String>, LlmError> {
        let mut failures = Vec::new();
        for provider in &self.providers {
            match provider.models().await {
                Ok(models) => return Ok(models),
                Err(err) => failures.push(err),
            }
        }
        Err(LlmError::AllProvidersFailed(failures))
    }
}
