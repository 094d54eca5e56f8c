//! Retries before the stream starts, and falling back across providers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_llm::{FakeLlm, Script};
use picode_llm::{FallbackChain, LlmError, Provider, ProviderConfig, ProviderKind};

use crate::*;

#[tokio::test]
async fn rate_limit_honours_retry_after_then_succeeds() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::error(429).retry_after("1"));
        fake.push(Script::text("after the wait"));
        let p = provider(&config(kind, &fake));
        let started = Instant::now();
        let out = turn(p.as_ref(), &request("x", vec![])).await.unwrap();
        let waited = started.elapsed();
        assert_eq!(out.message.text(), "after the wait");
        assert!(
            waited >= Duration::from_millis(950) && waited < Duration::from_secs(3),
            "{kind:?}: waited {waited:?}"
        );
        assert_eq!(fake.requests().len(), 2);
    }
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::error(500));
        fake.push(Script::error(503));
        fake.push(Script::text("third time lucky"));
        let p = provider(&config(kind, &fake));
        let out = turn(p.as_ref(), &request("x", vec![])).await.unwrap();
        assert_eq!(out.message.text(), "third time lucky", "{kind:?}");
        assert_eq!(fake.requests().len(), 3);
    }
}

#[tokio::test]
async fn retries_exhausted_is_an_error() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        for _ in 0..3 {
            fake.push(Script::error(500));
        }
        fake.push(Script::text("never reached"));
        let p = provider(&config(kind, &fake));
        let err = turn(p.as_ref(), &request("x", vec![])).await.unwrap_err();
        assert!(
            matches!(&err, LlmError::Http { status: 500, body, .. } if body.contains("scripted error")),
            "{kind:?}: {err}"
        );
        // One attempt plus max_retries (2).
        assert_eq!(fake.requests().len(), 3);
        assert_eq!(fake.pending(), 1);
    }
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Script::error(401));
    fake.push(Script::text("unused"));
    let p = provider(&config(ProviderKind::Anthropic, &fake));
    let err = turn(p.as_ref(), &request("x", vec![])).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 401, .. }), "{err}");
    assert_eq!(fake.requests().len(), 1);
}

/// An address where nothing listens.
async fn dead_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn fallback_moves_on_after_server_errors() {
    let first = FakeLlm::start().await;
    let second = FakeLlm::start().await;
    for _ in 0..3 {
        first.push(Script::error(500));
    }
    second.push(Script::text("from the backup"));
    let chain = FallbackChain::new(vec![
        provider(&config(ProviderKind::OpenAi, &first)),
        provider(&config(ProviderKind::Anthropic, &second)),
    ])
    .unwrap();
    let out = turn(&chain, &request("x", vec![])).await.unwrap();
    assert_eq!(out.message.text(), "from the backup");
    assert_eq!(first.requests().len(), 3);
    assert_eq!(second.requests().len(), 1);
    assert_eq!(chain.name(), "fake-OpenAi > fake-Anthropic");
}

#[tokio::test]
async fn fallback_moves_on_when_unreachable_or_broken_before_content() {
    let broken = FakeLlm::start().await;
    broken.push(Script::cut_short("lost", 0));
    let good = FakeLlm::start().await;
    good.push(Script::text("still here"));
    let mut dead =
        ProviderConfig::new("dead", ProviderKind::OpenAi, "m").with_base_url(dead_base_url().await);
    dead.max_retries = 1;
    dead.retry_base_ms = 10;
    let mut broken_cfg = config(ProviderKind::Anthropic, &broken);
    broken_cfg.max_retries = 0;
    let chain = FallbackChain::new(vec![
        provider(&dead),
        provider(&broken_cfg),
        provider(&config(ProviderKind::OpenAi, &good)),
    ])
    .unwrap();
    let out = turn(&chain, &request("x", vec![])).await.unwrap();
    assert_eq!(out.message.text(), "still here");
}

#[tokio::test]
async fn fallback_reports_every_failure() {
    let fake = FakeLlm::start().await;
    fake.push(Script::error(401));
    let mut dead =
        ProviderConfig::new("dead", ProviderKind::OpenAi, "m").with_base_url(dead_base_url().await);
    dead.max_retries = 0;
    let chain: Arc<dyn Provider> = Arc::new(
        FallbackChain::new(vec![
            provider(&config(ProviderKind::OpenAi, &fake)),
            provider(&dead),
        ])
        .unwrap(),
    );
    let err = turn(chain.as_ref(), &request("x", vec![]))
        .await
        .unwrap_err();
    let LlmError::AllProvidersFailed(errors) = &err else {
        panic!("{err}")
    };
    assert!(matches!(errors[0], LlmError::Auth { .. }));
    assert!(
        matches!(errors[1], LlmError::Connect { .. }),
        "{}",
        errors[1]
    );
    assert!(err.to_string().contains("dead: could not connect"), "{err}");
}
