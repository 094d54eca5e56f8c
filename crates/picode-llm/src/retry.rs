//! Retrying a request before its answer starts streaming.
//!
//! Once the first byte of an answer has been handed to the caller a retry
//! would duplicate text the user has already seen, so retries happen only
//! around sending the request and reading the response status.

use std::time::{Duration, SystemTime};

use crate::error::{truncate, LlmError};

/// Exponential backoff settings. The delay before retry `n` (0-based) is
/// `base_delay * 2^n`, capped at `max_delay`; a `Retry-After` sent by the
/// provider replaces it (also capped, so a hostile value cannot stall us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base_delay: Duration,
    /// Upper bound for any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// How long to wait before retry number `attempt` (0-based) after `error`.
    pub fn delay(&self, attempt: u32, error: &LlmError) -> Duration {
        if let Some(asked) = error.retry_after() {
            return asked.min(self.max_delay);
        }
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Parses a `Retry-After` header value: delta seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some servers send fractional seconds although the RFC does not allow it.
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs));
        }
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sends the request built by `build` until it yields a success status, a
/// non-retryable error, or the retries run out. `build` is called once per
/// attempt because a `RequestBuilder` is consumed by sending it.
pub(crate) async fn send_with_retry(
    provider: &str,
    policy: &RetryPolicy,
    mut build: impl FnMut() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, LlmError> {
    let mut attempt = 0;
    loop {
        let result = match build().send().await {
            Ok(resp) => check_status(provider, resp).await,
            Err(err) => Err(transport_error(provider, &err)),
        };
        match result {
            Ok(resp) => return Ok(resp),
            Err(err) if err.is_retryable() && attempt < policy.max_retries => {
                let delay = policy.delay(attempt, &err);
                tracing::warn!(provider, attempt, ?delay, error = %err, "retrying LLM request");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Turns a non-success response into the matching error, reading its body.
pub(crate) async fn check_status(
    provider: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, LlmError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = truncate(&resp.text().await.unwrap_or_default());
    let provider = provider.to_string();
    let status = status.as_u16();
    Err(match status {
        401 | 403 => LlmError::Auth {
            provider,
            status,
            body,
        },
        429 => LlmError::RateLimited {
            provider,
            retry_after,
            body,
        },
        _ => LlmError::Http {
            provider,
            status,
            body,
        },
    })
}

/// Classifies a reqwest error raised while sending or reading.
pub(crate) fn transport_error(provider: &str, err: &reqwest::Error) -> LlmError {
    let message = error_chain(err);
    let provider = provider.to_string();
    if err.is_timeout() {
        LlmError::Timeout { provider, message }
    } else if err.is_connect() || err.is_request() {
        LlmError::Connect { provider, message }
    } else {
        LlmError::Stream(format!("{provider}: {message}"))
    }
}

/// An error with its sources, which carry the useful part ("connection refused").
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        let future = SystemTime::now() + Duration::from_secs(120);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let err = LlmError::Http {
            provider: "p".into(),
            status: 500,
            body: String::new(),
        };
        assert_eq!(policy.delay(0, &err), Duration::from_millis(100));
        assert_eq!(policy.delay(1, &err), Duration::from_millis(200));
        assert_eq!(policy.delay(2, &err), Duration::from_millis(350));
        let limited = LlmError::RateLimited {
            provider: "p".into(),
            retry_after: Some(Duration::from_secs(60)),
            body: String::new(),
        };
        assert_eq!(policy.delay(0, &limited), Duration::from_millis(350));
    }
}
