//! `picode provider add|list|remove|test` with the encrypted-file secret store.

use fake_llm::{FakeLlm, Script};
use tokio::io::AsyncWriteExt;

use crate::helpers::{Run, TestEnv};

async fn add_with_key(env: &TestEnv, args: &[&str], key: &str) -> Run {
    let mut child = env
        .command()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(key.as_bytes()).await.unwrap();
    drop(stdin);
    Run::from(child.wait_with_output().await.unwrap())
}

#[tokio::test]
async fn add_list_test_and_remove_a_provider_with_a_stored_key() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new();
    let base = fake.base_url();
    let run = add_with_key(
        &env,
        &[
            "provider",
            "add",
            "local",
            "--kind",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            &base,
            "--api-key-stdin",
        ],
        "sk-very-secret\n",
    )
    .await;
    run.assert_code(0);
    assert!(run.stdout.contains("encrypted file"), "{}", run.stdout);

    // The key is stored encrypted, never in the config.
    let config = std::fs::read_to_string(env.config_dir.join("picode.toml")).unwrap();
    assert!(config.contains("[providers.local]"), "{config}");
    assert!(!config.contains("sk-very-secret"));
    let secrets = std::fs::read_to_string(env.config_dir.join("secrets.json")).unwrap();
    assert!(!secrets.contains("sk-very-secret"));

    let run = env.run(&["provider", "list"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("* local"), "{}", run.stdout);
    assert!(run.stdout.contains("secret store"), "{}", run.stdout);

    fake.push(Script::text("ok"));
    let run = env.run(&["provider", "test", "local"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("local: ok"), "{}", run.stdout);
    assert!(run.stdout.contains("models: fake-model"), "{}", run.stdout);
    // The stored key was decrypted and sent.
    let auth = fake.recorded()[0]
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    assert_eq!(auth, "Bearer sk-very-secret");

    fake.set_default(Some(Script::error(500)));
    let run = env.run(&["provider", "test"]).await;
    run.assert_code(3);
    assert!(run.stdout.contains("FAILED"), "{}", run.stdout);

    env.run(&["provider", "remove", "local"])
        .await
        .assert_code(0);
    let run = env.run(&["provider", "list"]).await;
    assert!(run.stdout.contains("no providers"), "{}", run.stdout);
    let secrets = std::fs::read_to_string(env.config_dir.join("secrets.json")).unwrap();
    assert!(!secrets.contains("provider:local"), "{secrets}");
}
