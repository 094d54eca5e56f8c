//! Provider failures as the user sees them: exit code 3 and a message that
//! names what went wrong, for 429, 500 and a stream cut mid-answer.

use fake_llm::{FakeLlm, Script};

use crate::helpers::TestEnv;

#[tokio::test]
async fn rate_limit_after_retries_exits_3_and_says_so() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.set_default(Some(Script::error(429).retry_after("0")));
    let run = env.run(&["-p", "hello"]).await;
    run.assert_code(3);
    assert!(run.stderr.contains("rate limited"), "{}", run.stderr);
    // One try plus the configured single retry.
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn retry_after_a_429_succeeds() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("anthropic", &fake);
    fake.push(Script::error(429).retry_after("0"));
    fake.push(Script::text("second time lucky"));
    let run = env.run(&["-p", "hello"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout.trim(), "second time lucky");
}

#[tokio::test]
async fn server_error_exits_3_with_json_error() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("anthropic", &fake);
    fake.set_default(Some(Script::error(500)));
    let run = env.run(&["-p", "hello", "--output-format", "json"]).await;
    run.assert_code(3);
    let out = run.json();
    assert_eq!(out["status"], "provider_error");
    assert!(out["error"].as_str().unwrap().contains("500"), "{out}");
    assert!(run.stderr.contains("500"));
}

#[tokio::test]
async fn stream_cut_mid_answer_keeps_the_partial_text_and_exits_3() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(Script::cut_short("The answer is forty two and more", 3));
    let run = env.run(&["-p", "hello", "--output-format", "json"]).await;
    run.assert_code(3);
    let out = run.json();
    assert_eq!(out["status"], "provider_error");
    assert!(out["error"].as_str().unwrap().contains("stream"), "{out}");
    let partial = out["result"].as_str().unwrap();
    assert!(partial.starts_with("The answer"), "{partial}");
    assert!(partial.contains("[interrupted"), "{partial}");

    // The session survives: the next turn continues it and the model sees
    // the partial answer, marked.
    fake.push(Script::text("Recovered."));
    let run = env
        .run(&["-c", "-p", "go on", "--output-format", "json"])
        .await;
    run.assert_code(0);
    let body = fake.requests().last().cloned().unwrap();
    let text = body["messages"].to_string();
    assert!(text.contains("The answer"), "{text}");
    assert!(text.contains("go on"));
}
