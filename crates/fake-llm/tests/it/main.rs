//! fake-llm integration tests: the real server on port 0, spoken to over HTTP.

use fake_llm::{FakeLlm, Script};
use serde_json::{json, Value};

async fn post(fake: &FakeLlm, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .json(&body)
        .send()
        .await
        .expect("fake-llm answers")
}

#[tokio::test]
async fn openai_stream_is_byte_exact() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text("Hi there").usage(5, 2));
    let resp = post(
        &fake,
        "/chat/completions",
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let body = resp.text().await.unwrap();
    let head = r#"{"id":"chatcmpl-fake1","object":"chat.completion.chunk","created":1700000000,"model":"m","system_fingerprint":"fp_fake","choices":"#;
    let expected = [
        format!("data: {head}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"),
        format!("data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"Hi \"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"),
        format!("data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"there\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"),
        format!("data: {head}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"),
        format!("data: {head}[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}}}\n\n"),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    assert_eq!(body, expected);
    assert_eq!(fake.requests()[0]["messages"][0]["content"], "hello");
}

#[tokio::test]
async fn openai_tool_call_stream_snapshot() {
    let fake = FakeLlm::start().await;
    fake.push(Script::tool_call("bash", json!({"cmd": "ls -la"})).chunks(3));
    let body = post(
        &fake,
        "/chat/completions",
        json!({"model": "m", "stream": true, "messages": []}),
    )
    .await
    .text()
    .await
    .unwrap();
    insta::assert_snapshot!(body);
}

#[tokio::test]
async fn anthropic_stream_snapshot() {
    let fake = FakeLlm::start().await;
    fake.push(
        Script::tool_call("read_file", json!({"path": "src/main.rs"}))
            .with_text("Let me look.")
            .chunks(2)
            .usage(30, 9),
    );
    let body = post(
        &fake,
        "/messages",
        json!({"model": "claude-x", "max_tokens": 100, "stream": true, "messages": []}),
    )
    .await
    .text()
    .await
    .unwrap();
    insta::assert_snapshot!(body);
}

#[tokio::test]
async fn non_streaming_and_models() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text("plain answer"));
    fake.push(Script::tool_call("bash", json!({"cmd": "pwd"})));
    let openai: Value = post(
        &fake,
        "/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(openai["choices"][0]["message"]["content"], "plain answer");
    assert_eq!(openai["choices"][0]["finish_reason"], "stop");
    let anthropic: Value = post(&fake, "/messages", json!({"model": "c", "messages": []}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(anthropic["content"][0]["type"], "tool_use");
    assert_eq!(anthropic["content"][0]["input"], json!({"cmd": "pwd"}));
    assert_eq!(anthropic["stop_reason"], "tool_use");

    let client = reqwest::Client::new();
    let models: Value = client
        .get(format!("{}/models", fake.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "fake-model");
    assert_eq!(models["object"], "list");
    let models: Value = client
        .get(format!("{}/models", fake.base_url()))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["type"], "model");
}

#[tokio::test]
async fn errors_echo_and_cut_short() {
    let fake = FakeLlm::start().await;
    fake.push(Script::error(429).retry_after("1"));
    fake.push(Script::echo());
    fake.push(Script::cut_short("never finished", 2));
    let resp = post(&fake, "/messages", json!({"model": "c", "messages": []})).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "rate_limit_error");

    let echo: Value = post(
        &fake,
        "/chat/completions",
        json!({"model": "m", "messages": [{"role": "user", "content": "say this"}]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(echo["choices"][0]["message"]["content"], "say this");

    let resp = post(
        &fake,
        "/chat/completions",
        json!({"model": "m", "stream": true, "messages": []}),
    )
    .await;
    assert!(resp.text().await.is_err(), "the connection must break");

    // An empty queue is reported, not hung on.
    let resp = post(&fake, "/chat/completions", json!({"model": "m"})).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(fake.requests().len(), 4);
}

#[test]
fn help_documents_the_script_format() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-llm"))
        .arg("--help")
        .output()
        .expect("run fake-llm --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "[[turns]]",
        "type = \"tool_calls\"",
        "type = \"error\"",
        "[default]",
        "read_file",
        "example.toml",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

/// The Python interpreter of the SDK venv `scripts/setup-test-deps` makes.
fn sdk_python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PICODE_SDK_PYTHON") {
        return path.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let python = cache.join("picode-sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps (it installs the OpenAI SDK)",
        python.display()
    );
    python
}

#[tokio::test]
async fn responses_api_streams_text_and_function_calls_in_order() {
    let fake = FakeLlm::start().await;
    fake.push(
        Script::tool_call("shell", json!({"command": "ls"}))
            .with_text("Looking.")
            .usage(7, 3),
    );
    let resp = post(
        &fake,
        "/responses",
        json!({"model": "m", "stream": true, "input": "list files"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let mut events = Vec::new();
    let mut name = String::new();
    for line in body.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let value: Value = serde_json::from_str(data).unwrap();
            assert_eq!(value["type"], name.as_str());
            assert_eq!(value["sequence_number"], events.len());
            events.push(value);
        }
    }
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "response.created");
    assert_eq!(*types.last().unwrap(), "response.completed");
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Looking.");
    let args: String = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"command": "ls"})
    );
    let done = events.last().unwrap();
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);
    assert_eq!(done["response"]["output"][1]["type"], "function_call");
    assert_eq!(done["response"]["output"][1]["name"], "shell");
}

#[tokio::test]
async fn the_openai_sdk_reads_the_responses_api() {
    let python = sdk_python();
    let fake = FakeLlm::start().await;
    fake.push(
        Script::tool_call("shell", json!({"command": "ls"}))
            .with_text("Looking.")
            .usage(7, 3),
    );
    fake.push(Script::echo());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/responses.py");
    let out = tokio::process::Command::new(python)
        .args([script, &fake.base_url()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed:\n{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["stream"]["text"], "Looking.");
    assert_eq!(got["stream"]["calls"][0]["name"], "shell");
    assert_eq!(
        serde_json::from_str::<Value>(got["stream"]["calls"][0]["arguments"].as_str().unwrap())
            .unwrap(),
        json!({"command": "ls"})
    );
    assert_eq!(got["stream"]["usage"], 3);
    assert!(got["types"]
        .as_array()
        .unwrap()
        .contains(&json!("response.function_call_arguments.delta")));
    assert_eq!(got["plain"], "echo me");
    assert_eq!(fake.recorded()[0].path, "/v1/responses");
}
