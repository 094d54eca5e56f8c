//! `picode serve` as the official OpenAI and Anthropic Python SDKs see it:
//! streaming with tool calls, a tool result going back, and a refused key.
//! The SDKs come from the venv `scripts/setup-test-deps` makes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fake_llm::{FakeLlm, Script};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::TestEnv;

const TOKEN: &str = "sdk-test-token";

/// The venv's interpreter; the test fails, with the fix, when it is missing.
fn sdk_python() -> PathBuf {
    if let Some(path) = std::env::var_os("PICODE_SDK_PYTHON") {
        return path.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let python = cache.join("picode-sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps (it installs the OpenAI and Anthropic SDKs)",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_official_sdks_stream_tool_calls_through_picode_serve() {
    let python = sdk_python();
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(
        Script::tool_call("get_weather", json!({"city": "Paris"}))
            .with_text("Checking.")
            .usage(9, 4),
    );
    fake.push(
        Script::tool_call("get_weather", json!({"city": "Paris"}))
            .with_text("Let me look.")
            .usage(9, 6),
    );
    fake.push(Script::text("It is sunny in Paris."));

    let mut server = env
        .command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PICODE_SERVE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let base = line.split_whitespace().last().unwrap().to_owned();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clients.py");
    let out = tokio::process::Command::new(&python)
        .args([script, &base, TOKEN])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the SDK script failed:\n{stderr}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let openai = &got["openai_stream"];
    assert_eq!(openai["text"], "Checking.");
    assert_eq!(openai["calls"][0]["name"], "get_weather");
    let args: serde_json::Value =
        serde_json::from_str(openai["calls"][0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(fake.requests()[0]["tool_choice"], "required");

    let anthropic = &got["anthropic_stream"];
    assert_eq!(anthropic["stop_reason"], "tool_use");
    assert_eq!(anthropic["content"][0]["type"], "text");
    assert_eq!(anthropic["content"][0]["text"], "Let me look.");
    assert_eq!(anthropic["content"][1]["type"], "tool_use");
    assert_eq!(anthropic["content"][1]["name"], "get_weather");
    assert_eq!(anthropic["content"][1]["input"], json!({"city": "Paris"}));
    assert_eq!(anthropic["output_tokens"], 6);

    assert_eq!(got["anthropic_plain"]["text"], "It is sunny in Paris.");
    assert_eq!(got["anthropic_plain"]["stop_reason"], "end_turn");
    let sent = &fake.requests()[2];
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"][2]["content"], "sunny");

    assert_eq!(got["anthropic_bad_key"], "AuthenticationError");
}
