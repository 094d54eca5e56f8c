//! Sessions in the database: a new session is written with its first turn
//! (not before the first request), and a finished turn is stored whole even
//! when the process is killed right after answering.

use fake_llm::{FakeLlm, Script};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::TestEnv;

#[tokio::test]
async fn a_turn_killed_right_after_its_answer_is_stored_and_resumes() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    fake.push(Script::text("The number is 42."));
    let mut child = env
        .command()
        .args([
            "-p",
            "remember the number",
            "--output-format",
            "stream-json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start picode");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut result = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["type"] == "result" {
            result = Some(event);
            break;
        }
    }
    // SIGKILL as soon as the answer is out: no exit path, no destructors.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let result = result.expect("a result line before the process ended");
    assert_eq!(result["result"], "The number is 42.");
    let id = result["session_id"].as_str().unwrap().to_owned();

    let list = env.run(&["sessions"]).await;
    list.assert_code(0);
    assert!(list.stdout.contains(&id), "{}", list.stdout);
    assert!(list.stdout.contains("1 turns"), "{}", list.stdout);
    assert!(
        list.stdout.contains("remember the number"),
        "{}",
        list.stdout
    );

    // `-c` continues it: the model sees the first turn, prompt and answer.
    fake.push(Script::text("Still 42."));
    let run = env
        .run(&["-c", "-p", "what was it?", "--output-format", "json"])
        .await;
    run.assert_code(0);
    assert_eq!(run.json()["session_id"], id.as_str());
    let body = fake.requests().last().cloned().unwrap();
    let messages = body["messages"].to_string();
    assert!(messages.contains("remember the number"), "{messages}");
    assert!(messages.contains("The number is 42."), "{messages}");
    assert!(messages.contains("what was it?"), "{messages}");
}

#[tokio::test]
async fn a_session_without_a_prompt_stores_nothing() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    let run = env.run(&["-p", "/help"]).await;
    run.assert_code(0);
    let list = env.run(&["sessions"]).await;
    list.assert_code(0);
    assert_eq!(list.stdout.trim(), "no sessions yet");
    let run = env.run(&["-c", "-p", "go on"]).await;
    run.assert_code(2);
    assert!(run.stderr.contains("no earlier session"), "{}", run.stderr);
    assert!(fake.requests().is_empty());
}
