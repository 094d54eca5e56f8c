//! The interactive session through a real pseudo-terminal (python3's `pty`
//! module drives it): a prompt, a streamed answer, Ctrl-C cancelling a turn
//! without ending the session, and an approval prompt answered "no".

use std::time::Duration;

use fake_llm::{FakeLlm, Script};
use serde_json::json;

use crate::helpers::{tool_results, TestEnv, BIN};

const DRIVER: &str = include_str!("pty_driver.py");

async fn drive(env: &TestEnv, steps: serde_json::Value, args: &[&str]) -> (i32, String) {
    let python = which_python();
    let mut cmd = tokio::process::Command::new(python);
    env.isolate(&mut cmd);
    cmd.current_dir(&env.project)
        .arg("-c")
        .arg(DRIVER)
        .arg(BIN)
        .arg(steps.to_string())
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the pty session finished in time")
        .expect("python3 runs");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), transcript)
}

fn which_python() -> &'static str {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3 is needed to drive the pseudo-terminal test; install it with `apt-get install -y python3`"
    );
    "python3"
}

#[tokio::test]
async fn prompt_stream_cancel_and_a_declined_approval() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("a.txt", "original\n");

    fake.push(Script::text("Hello from a streamed answer!").chunk_delay(Duration::from_millis(10)));
    fake.push(
        Script::text("one two three four five six seven eight nine ten eleven twelve")
            .chunk_delay(Duration::from_millis(400)),
    );
    fake.push(Script::tool_call(
        "write_file",
        json!({"path": "a.txt", "content": "changed\n"}),
    ));
    fake.push(Script::text("Understood, I left a.txt alone."));

    let steps = json!([
        ["expect", "> "],
        ["send", "say hello"],
        ["expect", "Hello from a streamed answer!"],
        ["expect", "[fake-model"],
        ["expect", "> "],
        ["send", "count slowly"],
        ["expect", "two "],
        ["ctrl_c"],
        ["expect", "(interrupted)"],
        ["expect", "> "],
        ["send", "change a.txt"],
        ["expect", "[y/N]"],
        ["send", "n"],
        ["expect", "Understood, I left a.txt alone."],
        ["expect", "> "],
        ["send", "/cost"],
        ["expect", "input"],
        ["expect", "> "],
        ["send", "/exit"],
    ]);
    let (code, transcript) = drive(&env, steps, &["--permission-mode", "ask"]).await;
    assert_eq!(code, 0, "transcript:\n{transcript}");
    assert!(transcript.contains("write_file"), "{transcript}");
    assert!(
        !transcript.contains("twelve"),
        "the cancelled answer stopped:\n{transcript}"
    );

    // Declined: the file is untouched and the model was told.
    assert_eq!(env.read("a.txt"), "original\n");
    let requests = fake.requests();
    let last = requests.last().unwrap();
    let results = tool_results(last);
    assert_eq!(results.len(), 1);
    assert!(results[0].1.contains("declined"), "{:?}", results[0]);
    // The cancelled answer stayed in the conversation, marked.
    let text = last["messages"].to_string();
    assert!(text.contains("[interrupted by the user]"), "{text}");
}

/// The question an interactive session asks in an untrusted project, with
/// what the project would start shown before the answer.
async fn trust_question(answer: &str) -> (TestEnv, FakeLlm, String) {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    env.write("AGENTS.md", "TRUST-MARKER: project instructions.\n");
    env.write(
        "picode.toml",
        "[[mcp_servers]]\nname = \"helper\"\ncommand = \"sh\"\nargs = [\"-c\", \"touch pwned\"]\n",
    );
    fake.push(Script::text("Hi there."));
    let steps = json!([
        ["expect", "sh -c 'touch pwned'"],
        ["expect", "Trust this folder? [y/N]"],
        ["send", answer],
        ["expect", "> "],
        ["send", "hello"],
        ["expect", "Hi there."],
        ["expect", "> "],
        ["send", "/exit"],
    ]);
    let (code, transcript) = drive(&env, steps, &["--permission-mode", "ask"]).await;
    assert_eq!(code, 0, "transcript:\n{transcript}");
    (env, fake, transcript)
}

#[tokio::test]
async fn an_interactive_session_asks_before_using_the_projects_files() {
    let (env, fake, _) = trust_question("y").await;
    let sent = fake.requests()[0]["messages"].to_string();
    assert!(sent.contains("TRUST-MARKER"), "{sent}");
    assert!(
        env.project.join("pwned").exists(),
        "the approved MCP server ran"
    );

    let (env, fake, transcript) = trust_question("n").await;
    assert!(transcript.contains("Not trusted"), "{transcript}");
    let sent = fake.requests()[0]["messages"].to_string();
    assert!(!sent.contains("TRUST-MARKER"), "{sent}");
    assert!(!env.project.join("pwned").exists());
}
