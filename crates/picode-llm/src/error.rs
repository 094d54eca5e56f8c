//! Errors of the provider layer, named for what went wrong so the agent can
//! tell the user something useful and decide whether to retry or fall back.

use std::time::Duration;

/// Everything that can go wrong talking to a model provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// The provider configuration is unusable (bad URL, missing key, ...).
    #[error("invalid provider configuration: {0}")]
    Config(String),

    /// The provider could not be reached (DNS, refused, TLS, ...).
    #[error("{provider}: could not connect: {message}")]
    Connect {
        /// Provider name from the config.
        provider: String,
        /// Underlying error text.
        message: String,
    },

    /// No response (or no further bytes) within the configured timeout.
    #[error("{provider}: timed out: {message}")]
    Timeout {
        /// Provider name from the config.
        provider: String,
        /// Underlying error text.
        message: String,
    },

    /// The provider rejected the credentials (401 / 403).
    #[error("{provider}: authentication failed (HTTP {status}): {body}")]
    Auth {
        /// Provider name from the config.
        provider: String,
        /// HTTP status.
        status: u16,
        /// Response body, truncated.
        body: String,
    },

    /// The provider asked us to slow down (429), possibly saying for how long.
    #[error("{provider}: rate limited (retry after {retry_after:?}): {body}")]
    RateLimited {
        /// Provider name from the config.
        provider: String,
        /// Parsed `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// Response body, truncated.
        body: String,
    },

    /// Any other non-success HTTP status.
    #[error("{provider}: HTTP {status}: {body}")]
    Http {
        /// Provider name from the config.
        provider: String,
        /// HTTP status.
        status: u16,
        /// Response body, truncated.
        body: String,
    },

    /// The stream broke: cut short, transport error mid-body, or an error
    /// event sent by the provider inside the stream.
    #[error("stream error: {0}")]
    Stream(String),

    /// A chunk that is not the JSON the protocol promises.
    #[error("{provider}: malformed stream chunk ({reason}): {text}")]
    MalformedChunk {
        /// Provider name from the config.
        provider: String,
        /// What was wrong, e.g. the JSON parser's message.
        reason: String,
        /// The offending text, truncated.
        text: String,
    },

    /// A non-streaming response body could not be decoded.
    #[error("{provider}: unexpected response: {message}")]
    Decode {
        /// Provider name from the config.
        provider: String,
        /// What was wrong.
        message: String,
    },

    /// The turn was cancelled by the user.
    #[error("cancelled")]
    Cancelled,

    /// Every provider of a [`crate::FallbackChain`] failed; each failure is listed.
    #[error("all providers failed: {}", summarize(.0))]
    AllProvidersFailed(Vec<LlmError>),
}

fn summarize(errors: &[LlmError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LlmError {
    /// Whether sending the same request again may succeed: transport
    /// failures, timeouts, 429 and 5xx. Only meaningful before any of the
    /// answer was streamed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Connect { .. } | LlmError::Timeout { .. } | LlmError::RateLimited { .. } => {
                true
            }
            LlmError::Http { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// Whether a fallback chain should try its next provider: a retryable
    /// failure (after the retries ran out), bad credentials, or a broken
    /// stream before any content arrived.
    pub fn should_fall_back(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                LlmError::Auth { .. }
                    | LlmError::Stream(_)
                    | LlmError::MalformedChunk { .. }
                    | LlmError::Http { status: 404, .. }
            )
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Cuts provider-supplied text to a size fit for an error message.
pub(crate) fn truncate(text: &str) -> String {
    const LIMIT: usize = 2000;
    if text.len() <= LIMIT {
        return text.to_string();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}
