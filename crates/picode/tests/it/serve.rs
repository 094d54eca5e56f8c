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
        let mut child = env
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("PICODE_SERVE_TOKEN", TOKEN)
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
        assert!(base.starts_with("http://127.0.0.1:"), "{line}");
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
