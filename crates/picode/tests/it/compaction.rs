//! Context compaction (automatic near the window, and `/compact`), custom
//! slash commands, and `--resume`.

use fake_llm::{FakeLlm, Script};

use crate::helpers::{provider_toml, TestEnv};

/// A provider whose context window is so small that every turn after the
/// first one is compacted.
fn tiny_window(env: &TestEnv, fake: &FakeLlm) {
    let mut config = provider_toml("fake", "openai", &fake.base_url());
    config = config.replace(
        "max_retries = 1\n",
        "max_retries = 1\ncontext_window = 300\n",
    );
    env.write_user_config(&format!(
        "compact_threshold = 0.5\ncompact_keep_turns = 1\n{config}"
    ));
}

#[tokio::test]
async fn older_turns_are_summarised_when_the_context_fills_up() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new();
    tiny_window(&env, &fake);

    fake.push(Script::text("first answer"));
    env.run(&["-p", "first question"]).await.assert_code(0);

    fake.push(Script::text("SUMMARY: the user asked a first question."));
    fake.push(Script::text("second answer"));
    let run = env
        .run(&[
            "-c",
            "-p",
            "second question",
            "--output-format",
            "stream-json",
        ])
        .await;
    run.assert_code(0);
    assert!(
        run.stdout.contains("\"type\":\"compacted\""),
        "{}",
        run.stdout
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    // The summarising request: its own system prompt, the old turn as text.
    let summarise = requests[1].to_string();
    assert!(summarise.contains("compacting"), "{summarise}");
    assert!(summarise.contains("first question"), "{summarise}");
    // The real request: the summary replaced the first turn.
    let real = requests[2]["messages"].to_string();
    assert!(
        real.contains("[Summary of the earlier conversation]"),
        "{real}"
    );
    assert!(real.contains("SUMMARY: the user asked"), "{real}");
    assert!(!real.contains("first answer"), "{real}");
    assert!(real.contains("second question"));

    // Manual compaction keeps the latest turn only.
    fake.push(Script::text("SUMMARY TWO"));
    let run = env.run(&["-c", "-p", "/compact"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("compacted"), "{}", run.stdout);
    let summarise = fake.requests().last().unwrap().to_string();
    assert!(summarise.contains("SUMMARY: the user asked"), "{summarise}");
    // The window is so small that the next turn compacts again first; the
    // summariser then sees the previous summary.
    fake.push(Script::text("SUMMARY THREE"));
    fake.push(Script::echo());
    env.run(&["-c", "-p", "third"]).await.assert_code(0);
    let requests = fake.requests();
    let summarise = requests[requests.len() - 2].to_string();
    assert!(summarise.contains("SUMMARY TWO"), "{summarise}");
    let real = requests.last().unwrap()["messages"].to_string();
    assert!(real.contains("SUMMARY THREE"), "{real}");
}

#[tokio::test]
async fn custom_commands_expand_arguments_and_resume_picks_a_session() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write(
        ".picode/commands/review.md",
        "# Review a file\nReview $ARGUMENTS for bugs and list them.\n",
    );
    std::fs::create_dir_all(env.config_dir.join("commands")).unwrap();
    std::fs::write(
        env.config_dir.join("commands/hello.md"),
        "Say hello to $ARGUMENTS.",
    )
    .unwrap();

    fake.push(Script::text("No bugs."));
    let run = env
        .run(&[
            "--trust",
            "-p",
            "/review src/lib.rs",
            "--output-format",
            "json",
        ])
        .await;
    run.assert_code(0);
    let session = run.json()["session_id"].as_str().unwrap().to_owned();
    let sent = fake.requests()[0]["messages"].to_string();
    assert!(
        sent.contains("Review src/lib.rs for bugs and list them."),
        "{sent}"
    );

    fake.push(Script::text("Hello, Ada!"));
    env.run(&["-p", "/hello Ada"]).await.assert_code(0);
    assert!(fake.requests()[1]["messages"]
        .to_string()
        .contains("Say hello to Ada."));

    let run = env.run(&["-p", "/help"]).await;
    assert!(
        run.stdout.contains("/review") && run.stdout.contains("/hello"),
        "{}",
        run.stdout
    );

    // `--resume` takes the first session back even though it is not the latest.
    fake.push(Script::echo());
    env.run(&["--resume", &session[..6], "-p", "and again"])
        .await
        .assert_code(0);
    let sent = fake.requests()[2]["messages"].to_string();
    assert!(sent.contains("Review src/lib.rs"), "{sent}");
    assert!(!sent.contains("Say hello"), "{sent}");

    let run = env.run(&["--resume", "nope", "-p", "x"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("no session matches"), "{}", run.stderr);
}
