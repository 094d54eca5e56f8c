//! `picode serve`: auth, the OpenAI-compatible endpoint through the fallback
//! chain (streaming and not), agent completions over SSE, sessions, metrics.

use std::process::Stdio;
use std::time::Duration;

use fake_llm::{FakeLlm, Script};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::helpers::{provider_toml, TestEnv};

const TOKEN: &str = "s3cret-token";

struct Server {
    _child: Child,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(env: &TestEnv) -> Server {
        Server::start_with(env, &["serve", "--listen", "127.0.0.1:0"], TOKEN).await
    }

    async fn start_with(env: &TestEnv, args: &[&str], token: &str) -> Server {
        let mut child = env
            .command()
            .args(args)
            .env("PICODE_SERVE_TOKEN", token)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn picode serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("serve printed its address in time")
            .unwrap()
            .expect("a line");
        let base = line.split_whitespace().last().expect("address").to_owned();
        assert!(base.starts_with("http://"), "{line}");
        Server {
            _child: child,
            base,
            http: reqwest::Client::new(),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }
}

/// A primary provider that always fails and a backup that answers.
async fn two_providers() -> (TestEnv, FakeLlm, FakeLlm) {
    let primary = FakeLlm::start().await;
    let backup = FakeLlm::start().await;
    primary.set_default(Some(Script::error(500)));
    let env = TestEnv::new();
    let mut config = provider_toml("primary", "openai", &primary.base_url());
    config = config.replace("default_provider = \"primary\"\n", "");
    let backup_toml = provider_toml("backup", "anthropic", &backup.base_url())
        .replace("default_provider = \"backup\"\n", "");
    env.write_user_config(&format!(
        "default_provider = \"primary\"\nfallback = [\"backup\"]\n{config}{backup_toml}"
    ));
    (env, primary, backup)
}

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let (env, _primary, _backup) = two_providers().await;
    let server = Server::start(&env).await;
    for path in ["/api/sessions", "/api/providers", "/metrics"] {
        let res = server
            .http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
    }
    let res = server
        .http
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth("wrong")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    let res = server
        .http
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn openai_compatible_streaming_falls_back_to_the_backup() {
    let (env, primary, backup) = two_providers().await;
    backup.push(Script::text("Hello from the backup provider"));
    let server = Server::start(&env).await;
    let res = server
        .post("/v1/chat/completions")
        .json(&json!({
            "model": "primary",
            "stream": true,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = res.text().await.unwrap();
    let mut text = String::new();
    let mut finish = None;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(choice) = chunk["choices"].get(0) {
            text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
    }
    assert_eq!(text, "Hello from the backup provider");
    assert_eq!(finish.as_deref(), Some("stop"));
    assert!(body.trim_end().ends_with("data: [DONE]"));
    // The primary was tried (with its retry), then the backup got the
    // system prompt in Anthropic's system slot.
    assert_eq!(primary.requests().len(), 2);
    let sent = &backup.requests()[0];
    assert!(sent["system"].to_string().contains("Be brief."), "{sent}");
    assert_eq!(sent["messages"][0]["role"], "user");
}

#[tokio::test]
async fn openai_compatible_non_streaming_and_a_total_failure() {
    let (env, _primary, backup) = two_providers().await;
    backup.push(Script::text("plain answer").usage(7, 3));
    let server = Server::start(&env).await;
    let res = server
        .post("/v1/chat/completions")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "plain answer");
    assert_eq!(body["usage"]["prompt_tokens"], 7);

    backup.set_default(Some(Script::error(503)));
    let res = server
        .post("/v1/chat/completions")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_error");
}

#[tokio::test]
async fn agent_completions_stream_events_and_sessions_and_metrics_list_them() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("x.txt", "hello\n");
    fake.push(Script::tool_call("read_file", json!({"path": "x.txt"})));
    fake.push(Script::text("x.txt says hello."));
    let server = Server::start(&env).await;

    let res = server
        .post("/api/completions")
        .json(&json!({"prompt": "what is in x.txt?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"turn_started"), "{body}");
    assert!(
        events.contains(&"tool_call") && events.contains(&"tool_result"),
        "{body}"
    );
    assert_eq!(events.last(), Some(&"result"), "{body}");
    let result: serde_json::Value = serde_json::from_str(
        body.lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["report"]["text"], "x.txt says hello.");
    let session_id = result["session_id"].as_str().unwrap().to_owned();

    let sessions: serde_json::Value = server
        .get("/api/sessions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = sessions["sessions"].as_array().unwrap();
    assert!(
        listed.iter().any(|s| s["id"] == session_id.as_str()),
        "{sessions}"
    );
    assert_eq!(listed[0]["title"], "what is in x.txt?");

    let providers: serde_json::Value = server
        .get("/api/providers")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(providers["providers"][0]["name"], "fake");
    assert!(
        !providers.to_string().contains("test-key"),
        "keys never leave the server"
    );

    let models: serde_json::Value = server
        .get("/api/models")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        models["providers"][0]["models"],
        json!(["fake-model"]),
        "{models}"
    );

    let metrics = server
        .get("/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("picode_http_requests_total"), "{metrics}");
    assert!(metrics.contains("picode_turns_total"), "{metrics}");
    assert!(metrics.contains("picode_tool_calls_total"), "{metrics}");
}

#[tokio::test]
async fn without_flags_it_listens_on_the_documented_loopback_port() {
    let (env, _primary, _backup) = two_providers().await;
    let server = Server::start_with(&env, &["serve"], TOKEN).await;
    assert_eq!(server.base, "http://127.0.0.1:8787");
    let res = server.get("/healthz").send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn beyond_loopback_needs_an_explicit_listen_and_a_long_token() {
    let (env, _primary, _backup) = two_providers().await;
    let short = env
        .command()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("PICODE_SERVE_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(short.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");

    let long = "0123456789abcdef0123456789abcdef";
    let mut child = env
        .command()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("PICODE_SERVE_TOKEN", long)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(line.contains("0.0.0.0:"), "{line}");
    child.kill().await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("beyond loopback"), "{stderr}");

    // In a config file alone, a public address is refused.
    let config = std::fs::read_to_string(env.config_dir.join("picode.toml")).unwrap();
    env.write_user_config(&format!("{config}[serve]\nlisten = \"0.0.0.0:0\"\n"));
    let run = env
        .command()
        .arg("serve")
        .env("PICODE_SERVE_TOKEN", long)
        .output()
        .await
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("pass --listen 0.0.0.0:0"), "{stderr}");
}

/// Parses an Anthropic SSE body into (event name, data) pairs.
fn anthropic_events(body: &str) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in body.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(value["type"], name.as_str(), "event name and type agree");
            out.push((name.clone(), value));
        }
    }
    out
}

#[tokio::test]
async fn anthropic_messages_stream_text_and_tool_use_through_the_fallback_chain() {
    let (env, primary, backup) = two_providers().await;
    backup.push(
        Script::tool_call("get_weather", json!({"city": "Paris"}))
            .with_text("Let me check.")
            .usage(12, 5),
    );
    let server = Server::start(&env).await;
    let res = server
        .http
        .post(format!("{}/v1/messages", server.base))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({
            "model": "primary",
            "max_tokens": 256,
            "stream": true,
            "system": [{"type": "text", "text": "Be brief."}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "tools": [{"name": "get_weather", "description": "Weather of a city",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                        "required": ["city"]}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = anthropic_events(&res.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let text: String = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "text_delta")
        .map(|(_, v)| v["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Let me check.");
    let tool_start = events
        .iter()
        .find(|(_, v)| v["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(tool_start.1["content_block"]["name"], "get_weather");
    let index = tool_start.1["index"].clone();
    let partial: String = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "input_json_delta" && v["index"] == index)
        .map(|(_, v)| v["delta"]["partial_json"].as_str().unwrap())
        .collect();
    let input: serde_json::Value = serde_json::from_str(&partial).unwrap();
    assert_eq!(input, json!({"city": "Paris"}));
    // Every started block is stopped, in order.
    let started: Vec<_> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| v["index"].clone())
        .collect();
    let stopped: Vec<_> = events
        .iter()
        .filter(|(n, _)| n == "content_block_stop")
        .map(|(_, v)| v["index"].clone())
        .collect();
    assert_eq!(started, stopped);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(primary.requests().len(), 2, "the primary was tried first");
    assert!(backup.requests()[0]["system"]
        .to_string()
        .contains("Be brief."));
}

#[tokio::test]
async fn anthropic_messages_carry_tool_results_and_answer_without_streaming() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(Script::text("It is sunny.").usage(30, 4));
    let server = Server::start(&env).await;
    let res = server
        .http
        .post(format!("{}/v1/messages", server.base))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({
            "model": "fake-model",
            "max_tokens": 256,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01",
                     "content": [{"type": "text", "text": "sunny, 21 C"}]}]}
            ]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "It is sunny."}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 30, "output_tokens": 4})
    );
    // Upstream (OpenAI wire) got the call and its result in its own shape.
    let sent = &fake.requests()[0];
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "toolu_01");
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["tool_call_id"], "toolu_01");
    assert_eq!(sent["messages"][2]["content"], "sunny, 21 C");

    let res = server
        .http
        .post(format!("{}/v1/messages", server.base))
        .header("x-api-key", "wrong")
        .json(&json!({"max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
}
