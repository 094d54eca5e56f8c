//! From config entries to live providers: resolving API keys, building the
//! fallback chain, and the one-turn probe behind `picode provider test`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use picode_llm::{
    build_provider, ChatRequest, FallbackChain, LlmError, Message, Pricing, Provider,
    ProviderConfig, StreamEvent, ToolProtocol,
};
use serde::Serialize;

use crate::config::{Config, ProviderEntry, ProviderKind};
use crate::secrets::{provider_key_name, SecretStore};

#[derive(Debug, thiserror::Error)]
pub enum ProviderSetupError {
    #[error("no provider is configured; add one with `picode provider add` or a [providers.NAME] table in picode.toml")]
    NoProviders,
    #[error("unknown provider `{0}`")]
    Unknown(String),
    #[error("provider `{provider}`: environment variable {var} (from `api_key_env`) is not set")]
    MissingKeyEnv { provider: String, var: String },
    #[error("provider `{provider}`: reading its key from {store}: {message}")]
    Secret {
        provider: String,
        store: String,
        message: String,
    },
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// Where a provider's key comes from, for `provider list` (never the key).
///
/// `stored` says whether the secret store holds a key for the provider
/// (`None` when it was not asked); a provider with no key anywhere is shown
/// as having none, which is normal for local servers.
pub fn key_source(entry: &ProviderEntry, stored: Option<bool>) -> String {
    if let Some(var) = &entry.api_key_env {
        let set = std::env::var(var).map(|v| !v.is_empty()).unwrap_or(false);
        return format!("env {var}{}", if set { "" } else { " (not set)" });
    }
    if entry.api_key.is_some() {
        return "inline in config".to_owned();
    }
    match stored {
        Some(true) => "secret store".to_owned(),
        Some(false) => "no key".to_owned(),
        None => "secret store, if any".to_owned(),
    }
}

/// Turns a config entry into the provider layer's config, resolving the key.
///
/// The secret store is consulted only when the entry names neither an
/// environment variable nor an inline key, so the common cases never wait on
/// a keyring.
pub fn resolve(
    name: &str,
    entry: &ProviderEntry,
    secrets: &dyn Fn() -> SecretStore,
) -> Result<ProviderConfig, ProviderSetupError> {
    let kind = match entry.kind {
        ProviderKind::Openai => picode_llm::ProviderKind::OpenAi,
        ProviderKind::Anthropic => picode_llm::ProviderKind::Anthropic,
    };
    let api_key = if let Some(var) = &entry.api_key_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(ProviderSetupError::MissingKeyEnv {
                    provider: name.to_owned(),
                    var: var.clone(),
                })
            }
        }
    } else if let Some(key) = &entry.api_key {
        Some(key.clone())
    } else {
        let store = secrets();
        store
            .get(&provider_key_name(name))
            .map_err(|e| ProviderSetupError::Secret {
                provider: name.to_owned(),
                store: store.describe(),
                message: e.to_string(),
            })?
    };
    let mut cfg = ProviderConfig::new(name, kind, entry.model.clone());
    cfg.base_url = entry.base_url.clone().unwrap_or_default();
    cfg.api_key = api_key;
    cfg.tool_protocol = match entry.tool_protocol.as_deref() {
        Some("prompt") => ToolProtocol::Prompt,
        _ => ToolProtocol::Native,
    };
    if let Some(window) = entry.context_window {
        cfg.context_window = window;
    }
    cfg.max_tokens = entry.max_tokens;
    cfg.pricing = entry.pricing.map(|p| Pricing {
        input_per_mtok: p.input_per_mtok,
        output_per_mtok: p.output_per_mtok,
    });
    if let Some(n) = entry.max_retries {
        cfg.max_retries = n;
    }
    if let Some(ms) = entry.retry_base_ms {
        cfg.retry_base_ms = ms;
    }
    if let Some(secs) = entry.timeout_secs {
        cfg.timeout_secs = secs;
    }
    Ok(cfg)
}

/// A ready provider (maybe a chain) with what the agent needs to know about it.
#[derive(Clone)]
pub struct Resolved {
    pub provider: Arc<dyn Provider>,
    /// Name of the first provider of the chain.
    pub primary: String,
    pub model: String,
    pub pricing: Prices,
    pub context_window: u32,
}

/// The rates of every provider of a chain, so an answer from a fallback is
/// priced at the fallback's rates, not the first provider's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// The first provider's rates.
    pub primary: Option<Pricing>,
    /// Every provider's rates by name (the first one included).
    pub by_provider: std::collections::BTreeMap<String, Option<Pricing>>,
}

impl Prices {
    /// The rates of `provider`, or the first provider's if it is unknown.
    pub fn of(&self, provider: &str) -> Option<Pricing> {
        self.by_provider
            .get(provider)
            .copied()
            .unwrap_or(self.primary)
    }
}

/// Builds the provider for a session: `preferred` (or the default) followed
/// by the configured fallbacks. `model` overrides the first provider's model.
pub fn build_chain(
    config: &Config,
    preferred: Option<&str>,
    model: Option<&str>,
    secrets: &dyn Fn() -> SecretStore,
) -> Result<Resolved, ProviderSetupError> {
    let names = config.chain(preferred);
    if names.is_empty() {
        return Err(ProviderSetupError::NoProviders);
    }
    let mut providers = Vec::new();
    let mut first: Option<ProviderConfig> = None;
    let mut by_provider = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let entry = config
            .providers
            .get(name)
            .ok_or_else(|| ProviderSetupError::Unknown(name.clone()))?;
        let mut cfg = resolve(name, entry, secrets)?;
        if i == 0 {
            if let Some(m) = model {
                cfg.model = m.to_owned();
            }
            first = Some(cfg.clone());
        }
        by_provider.insert(cfg.name.clone(), cfg.pricing);
        providers.push(build_provider(&cfg)?);
    }
    let first = first.ok_or(ProviderSetupError::NoProviders)?;
    let provider: Arc<dyn Provider> = if providers.len() == 1 {
        providers.remove(0)
    } else {
        Arc::new(FallbackChain::new(providers)?)
    };
    Ok(Resolved {
        provider,
        primary: first.name.clone(),
        model: first.model.clone(),
        pricing: Prices {
            primary: first.pricing,
            by_provider,
        },
        context_window: first.context_window,
    })
}

/// What `picode provider test` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub provider: String,
    pub model: String,
    pub ok: bool,
    /// Time to the first streamed event.
    pub first_event_ms: Option<u128>,
    pub total_ms: u128,
    pub reply: String,
    pub models: Result<Vec<String>, String>,
    pub error: Option<String>,
}

/// Sends a one-turn request and lists the models.
pub async fn probe(provider: &dyn Provider) -> ProbeReport {
    let started = Instant::now();
    let request = ChatRequest {
        model: String::new(),
        system: None,
        messages: vec![Message::user("Reply with the single word: ok")],
        tools: Vec::new(),
        max_tokens: Some(16),
        temperature: Some(0.0),
        tool_choice: None,
    };
    let mut report = ProbeReport {
        provider: provider.name().to_owned(),
        model: provider.model().to_owned(),
        ok: false,
        first_event_ms: None,
        total_ms: 0,
        reply: String::new(),
        models: Ok(Vec::new()),
        error: None,
    };
    let turn = async {
        let mut stream = provider.stream(&request).await?;
        while let Some(event) = stream.next().await {
            report
                .first_event_ms
                .get_or_insert_with(|| started.elapsed().as_millis());
            match event? {
                StreamEvent::TextDelta(t) => report.reply.push_str(&t),
                StreamEvent::Done(_) => return Ok(()),
                StreamEvent::Provider(name) => report.provider = name,
                _ => {}
            }
        }
        Err(LlmError::Stream("stream ended early".into()))
    };
    match tokio::time::timeout(Duration::from_secs(60), turn).await {
        Ok(Ok(())) => report.ok = true,
        Ok(Err(e)) => report.error = Some(e.to_string()),
        Err(_) => report.error = Some("no answer within 60 s".to_owned()),
    }
    report.total_ms = started.elapsed().as_millis();
    report.models = provider.models().await.map_err(|e| e.to_string());
    report
}
