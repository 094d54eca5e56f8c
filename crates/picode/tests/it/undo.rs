//! `/undo` restores the files and the conversation to before the last turn,
//! across processes (`picode -c -p /undo`).

use fake_llm::{FakeLlm, Script};
use serde_json::json;

use crate::helpers::TestEnv;

#[tokio::test]
async fn undo_restores_files_and_conversation() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("src/app.rs", "fn main() {}\n");

    fake.push(Script::text("Nothing to change yet."));
    env.run(&["-p", "first turn", "--permission-mode", "full-auto"])
        .await
        .assert_code(0);

    fake.push(Script::tool_call(
        "write_file",
        json!({"path": "src/app.rs", "content": "fn main() { broken }\n"}),
    ));
    fake.push(Script::tool_call(
        "write_file",
        json!({"path": "new.txt", "content": "new\n"}),
    ));
    fake.push(Script::text("Rewrote it."));
    env.run(&["-c", "-p", "second turn", "--permission-mode", "full-auto"])
        .await
        .assert_code(0);
    assert_eq!(env.read("src/app.rs"), "fn main() { broken }\n");

    let run = env.run(&["-c", "-p", "/diff"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("broken"), "{}", run.stdout);

    let run = env.run(&["-c", "-p", "/undo"]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("undid turn 2"), "{}", run.stdout);
    assert_eq!(env.read("src/app.rs"), "fn main() {}\n");
    assert!(!env.project.join("new.txt").exists());

    // The conversation lost the second turn but kept the first.
    fake.push(Script::echo());
    env.run(&["-c", "-p", "third turn"]).await.assert_code(0);
    let messages = fake.requests().last().unwrap()["messages"].to_string();
    assert!(messages.contains("first turn"), "{messages}");
    assert!(!messages.contains("second turn"), "{messages}");
    assert!(messages.contains("third turn"));

    let run = env.run(&["sessions"]).await;
    run.assert_code(0);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.contains("first turn"));
}
