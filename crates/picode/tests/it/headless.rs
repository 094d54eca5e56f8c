//! `picode -p`: files changed, commands run and the requests sent back, for
//! both wire protocols; the end-to-end fix of a failing test; plan mode.

use fake_llm::{FakeLlm, Script};
use serde_json::json;

use crate::helpers::{provider_toml, tool_call_ids, tool_results, TestEnv};

async fn tool_round_trip(kind: &str) {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider(kind, &fake);
    env.write("notes.txt", "alpha\nbeta\n");
    fake.push(
        Script::tool_call("read_file", json!({"path": "notes.txt"})).with_text("Let me look."),
    );
    fake.push(Script::tool_call(
        "edit_file",
        json!({"path": "notes.txt", "old_string": "beta", "new_string": "gamma"}),
    ));
    fake.push(Script::tool_call(
        "shell",
        json!({"command": "echo ran > marker.txt"}),
    ));
    fake.push(Script::text("Replaced beta with gamma.").usage(120, 30));

    let run = env
        .run(&[
            "-p",
            "replace beta",
            "--permission-mode",
            "full-auto",
            "--output-format",
            "json",
        ])
        .await;
    run.assert_code(0);
    let out = run.json();

    // The files PiCode changed and the command it ran.
    assert_eq!(env.read("notes.txt"), "alpha\ngamma\n");
    assert_eq!(env.read("marker.txt").trim(), "ran");
    assert_eq!(out["commands"], json!(["echo ran > marker.txt"]));

    // What it reported.
    assert_eq!(out["status"], "completed");
    assert_eq!(out["result"], "Replaced beta with gamma.");
    let names: Vec<&str> = out["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["read_file", "edit_file", "shell"]);
    assert!(out["usage"]["input_tokens"].as_u64().unwrap() >= 120);
    assert!(out["cost_usd"].as_f64().unwrap() > 0.0);

    // What it sent back: every tool call answered, by id, in the wire shape
    // of the protocol.
    let requests = fake.requests();
    assert_eq!(requests.len(), 4);
    let last = &requests[3];
    let ids = tool_call_ids(last);
    let results = tool_results(last);
    assert_eq!(ids.len(), 3, "{last:#}");
    assert_eq!(
        results.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        ids,
        "results answer the calls in order: {last:#}"
    );
    assert!(
        results[0].1.contains("beta"),
        "read_file result: {}",
        results[0].1
    );
    assert!(results[1].1.contains("gamma") || !results[1].1.is_empty());
    // The system prompt and the tools went out with the first request.
    let first = &requests[0];
    let tools = first["tools"].as_array().expect("tools offered");
    assert!(tools.len() >= 3);
    match kind {
        "anthropic" => {
            assert!(first["system"].to_string().contains("PiCode"));
            let user_turns: Vec<_> = last["messages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "user")
                .collect();
            assert!(user_turns
                .iter()
                .any(|m| m["content"][0]["type"] == "tool_result"));
        }
        _ => {
            assert_eq!(first["messages"][0]["role"], "system");
            assert!(first["messages"][0]["content"]
                .as_str()
                .unwrap()
                .contains("PiCode"));
        }
    }
}

#[tokio::test]
async fn openai_tool_calls_change_files_and_results_go_back() {
    tool_round_trip("openai").await;
}

#[tokio::test]
async fn anthropic_tool_calls_change_files_and_results_go_back() {
    tool_round_trip("anthropic").await;
}

#[tokio::test]
async fn fixes_a_failing_test_in_a_small_crate() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write(
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    env.write(
        "src/lib.rs",
        "pub fn add(a: i32, b: i32) -> i32 {\n    a - b\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n",
    );
    // The build writes outside the project, so the sandbox is told where.
    let target = env.project.parent().unwrap().join("target");
    std::fs::create_dir_all(&target).unwrap();
    env.write_user_config(&format!(
        "sandbox_writable = [\"{}\", \"{}\"]\n{}",
        target.display(),
        env.home.display(),
        provider_toml("fake", "openai", &fake.base_url()),
    ));
    let cargo_test = format!(
        "CARGO_TARGET_DIR={} cargo test --offline 2>&1",
        target.display()
    );
    fake.push(Script::tool_call(
        "read_file",
        json!({"path": "src/lib.rs"}),
    ));
    fake.push(Script::tool_call(
        "edit_file",
        json!({"path": "src/lib.rs", "old_string": "    a - b\n", "new_string": "    a + b\n"}),
    ));
    fake.push(Script::tool_call(
        "shell",
        json!({"command": cargo_test, "timeout_secs": 300}),
    ));
    fake.push(Script::text("Fixed `add`: it subtracted. The test passes now.").usage(900, 40));

    let run = env
        .run(&[
            "-p",
            "the test fails, fix it",
            "--permission-mode",
            "full-auto",
            "--output-format",
            "json",
        ])
        .await;
    run.assert_code(0);
    let out = run.json();
    assert!(env.read("src/lib.rs").contains("a + b"));
    let calls = out["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2]["name"], "shell");
    let test_output = calls[2]["output"].as_str().unwrap();
    assert!(
        test_output.contains("test result: ok"),
        "cargo test output:\n{test_output}"
    );
    assert_eq!(calls[2]["is_error"], false);
    assert!(out["commands"][0]
        .as_str()
        .unwrap()
        .contains("cargo test --offline"));
    assert_eq!(
        out["result"],
        "Fixed `add`: it subtracted. The test passes now."
    );
    assert!(out["usage"]["output_tokens"].as_u64().unwrap() >= 40);
    // The model saw the passing test run.
    let results = tool_results(&fake.requests()[3]);
    assert!(results[2].1.contains("test result: ok"));
}

#[tokio::test]
async fn plan_mode_refuses_a_write_even_when_the_model_insists() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("main.py", "print('hi')\n");
    let write = || {
        Script::tool_call(
            "write_file",
            json!({"path": "main.py", "content": "rm -rf /\n"}),
        )
    };
    fake.push(write());
    fake.push(write().with_text("I really must write it."));
    fake.push(Script::tool_call(
        "shell",
        json!({"command": "touch pwned"}),
    ));
    fake.push(Script::text("Plan: change the greeting."));

    let run = env
        .run(&[
            "-p",
            "change the greeting",
            "--permission-mode",
            "plan",
            "--output-format",
            "json",
        ])
        .await;
    run.assert_code(0);
    assert_eq!(env.read("main.py"), "print('hi')\n");
    assert!(!env.project.join("pwned").exists());
    let out = run.json();
    for call in out["tool_calls"].as_array().unwrap() {
        assert_eq!(call["is_error"], true, "{call}");
        assert!(
            call["output"].as_str().unwrap().contains("plan mode"),
            "{call}"
        );
    }
    assert_eq!(out["commands"], json!([]));
    // The model was told, in the tool result, that plan mode refused it.
    let results = tool_results(&fake.requests()[3]);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|(_, c)| c.contains("plan mode")));
}

#[tokio::test]
async fn headless_ask_mode_declines_edits_and_stream_json_reports_events() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("a.txt", "one\n");
    fake.push(Script::tool_call(
        "write_file",
        json!({"path": "a.txt", "content": "two\n"}),
    ));
    fake.push(Script::text("The user declined."));
    let run = env
        .run(&["-p", "write two", "--output-format", "stream-json"])
        .await;
    run.assert_code(0);
    assert_eq!(env.read("a.txt"), "one\n");
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"turn_started"));
    assert!(kinds.contains(&"tool_call"));
    assert!(kinds.contains(&"text_delta"));
    assert_eq!(kinds.last(), Some(&"result"));
    let result = events.iter().find(|e| e["type"] == "tool_result").unwrap();
    assert_eq!(result["is_error"], true);
    assert!(result["content"].as_str().unwrap().contains("declined"));
}

#[tokio::test]
async fn text_output_streams_the_answer_and_the_step_limit_exits_4() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(Script::text("Hello from the fake model."));
    let run = env.run(&["-p", "hi"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout.trim(), "Hello from the fake model.");

    fake.set_default(Some(Script::tool_call("list_files", json!({}))));
    let run = env.run(&["-p", "loop forever", "--max-turns", "3"]).await;
    run.assert_code(4);
    assert!(run.stderr.contains("step limit"), "{}", run.stderr);
    assert_eq!(fake.pending(), 0);
}
