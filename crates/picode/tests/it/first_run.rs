//! A first run as the README describes it: the shipped fake-llm example,
//! provider management on a fresh config, stray environment variables and
//! the shape of headless text output.

use fake_llm::{FakeLlm, Script, ScriptFile};
use serde_json::json;

use crate::helpers::{provider_toml, TestEnv};

#[tokio::test]
async fn the_shipped_fake_llm_example_runs_picodes_real_tools() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fake-llm/scripts/example.toml"
    );
    let file: ScriptFile = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let fake = FakeLlm::start().await;
    let mut tool_turns = 0;
    for turn in file.turns {
        if matches!(turn.reply, fake_llm::Reply::ToolCalls { .. }) {
            tool_turns += 1;
        }
        fake.push(turn);
    }
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("a.rs", "fn main() {}\n");
    let run = env
        .run(&[
            "-p",
            "what is here?",
            "--permission-mode",
            "full-auto",
            "--output-format",
            "json",
        ])
        .await;
    run.assert_code(0);
    let calls = run.json()["tool_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), tool_turns, "{calls:?}");
    for call in &calls {
        assert_eq!(call["is_error"], false, "{call}");
    }
    assert!(calls[0]["output"].as_str().unwrap().contains("a.rs"));
}

#[tokio::test]
async fn provider_list_says_no_key_and_test_warns_about_an_unknown_model() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new();
    let base = fake.base_url();
    env.run(&[
        "provider",
        "add",
        "local",
        "--kind",
        "openai",
        "--model",
        "qwen-missing",
        "--base-url",
        &base,
    ])
    .await
    .assert_code(0);
    let run = env.run(&["provider", "list"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("key: no key"), "{}", run.stdout);

    fake.push(Script::text("ok"));
    let run = env.run(&["provider", "test", "local"]).await;
    run.assert_code(0);
    assert!(
        run.stdout.contains(
            "warning: the configured model `qwen-missing` is not in the server's model list"
        ),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn provider_add_keeps_the_comments_of_the_users_file() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new();
    env.write_user_config(
        "# My PiCode settings.\nmax_steps = 12 # a small budget\n\n[providers.old]\n# the old one\nkind = \"openai\"\nmodel = \"m\"\n",
    );
    let base = fake.base_url();
    env.run(&[
        "provider",
        "add",
        "new",
        "--kind",
        "openai",
        "--model",
        "fake-model",
        "--base-url",
        &base,
    ])
    .await
    .assert_code(0);
    let text = std::fs::read_to_string(env.config_dir.join("picode.toml")).unwrap();
    for kept in ["# My PiCode settings.", "# a small budget", "# the old one"] {
        assert!(text.contains(kept), "{kept} lost:\n{text}");
    }
    assert!(text.contains("[providers.new]"), "{text}");
    assert!(!text.contains("[providers]\n"), "{text}");
    env.run(&["provider", "remove", "old"]).await.assert_code(0);
    let text = std::fs::read_to_string(env.config_dir.join("picode.toml")).unwrap();
    assert!(text.contains("# a small budget"), "{text}");
    assert!(!text.contains("[providers.old]"), "{text}");
}

#[tokio::test]
async fn an_unknown_picode_variable_is_a_warning_not_an_error() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(Script::text("fine"));
    let out = env
        .command()
        .args(["-p", "hi"])
        .env("PICODE_NO_SUCH_SETTING", "1")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ignoring PICODE_NO_SUCH_SETTING"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "fine");
}

#[tokio::test]
async fn headless_text_keeps_the_steps_apart() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new();
    env.write_user_config(&provider_toml("fake", "openai", &fake.base_url()));
    env.write("a.txt", "x\n");
    fake.push(Script::tool_call("read_file", json!({"path": "a.txt"})).with_text("Let me look."));
    fake.push(Script::text("It holds an x."));
    let run = env.run(&["-p", "what is in a.txt?"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout, "Let me look.\n\nIt holds an x.\n");
}

#[tokio::test]
async fn a_fallback_answer_is_priced_at_the_fallback_rates() {
    let primary = FakeLlm::start().await;
    let backup = FakeLlm::start().await;
    primary.set_default(Some(Script::error(500)));
    backup.push(Script::text("from the backup").usage(1_000_000, 1_000_000));
    let env = TestEnv::new();
    // The primary costs 3 + 15 per million tokens (provider_toml), the
    // backup 1 + 2: one million of each is $3 at the backup's rates, $18 at
    // the primary's.
    let backup_toml = format!(
        "[providers.backup]\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"cheap\"\n\
         api_key = \"k\"\nmax_retries = 0\npricing = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\n",
        backup.base_url()
    );
    env.write_user_config(&format!(
        "fallback = [\"backup\"]\n{}{backup_toml}",
        provider_toml("fake", "openai", &primary.base_url())
    ));
    let run = env.run(&["-p", "hi", "--output-format", "json"]).await;
    run.assert_code(0);
    let json = run.json();
    assert_eq!(json["result"], "from the backup");
    let cost = json["cost_usd"].as_f64().unwrap();
    assert!((cost - 3.0).abs() < 1e-9, "cost {cost}");
}
