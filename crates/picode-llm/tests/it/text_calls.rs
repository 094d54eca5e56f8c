//! Tool calls written as text, and the prompt-based tool protocol.

use fake_llm::{FakeLlm, Script};
use picode_llm::{Message, ProviderKind, StopReason, StreamEvent, ToolProtocol};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn text_tool_calls_are_recovered_from_streamed_text() {
    let cases = [
        "<think>The user wants files.</think>\nI'll check.\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}\n</tool_call>",
        "I'll check.\n```json\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}\n```",
        "I'll check. {\"name\": \"bash\", \"parameters\": {\"cmd\": \"ls\"}}",
    ];
    for kind in KINDS {
        for text in cases {
            let fake = FakeLlm::start().await;
            fake.push(Script::text(text).chunks(9));
            let p = provider(&config(kind, &fake));
            let out = turn(p.as_ref(), &request("list", vec![bash_tool()]))
                .await
                .unwrap();
            assert_eq!(out.stop, StopReason::ToolUse, "{kind:?} {text}");
            let calls: Vec<_> = out.message.tool_calls().collect();
            assert_eq!(calls.len(), 1, "{kind:?} {text}");
            assert_eq!(calls[0].1, "bash");
            assert_eq!(calls[0].2, &json!({"cmd": "ls"}));
            // Reasoning and <tool_call> markup never reach the caller.
            let shown = out.message.text();
            assert!(shown.starts_with("I'll check."), "{kind:?}: {shown:?}");
            assert!(
                !shown.contains("think") && !shown.contains("<tool_call>"),
                "{shown:?}"
            );
        }
    }
}

#[tokio::test]
async fn text_is_left_alone_when_no_tools_were_offered() {
    let fake = FakeLlm::start().await;
    let answer = "Use {\"name\": \"bash\", \"arguments\": {}} in your config.";
    fake.push(Script::text(format!("<think>hm</think>{answer}")));
    let p = provider(&config(ProviderKind::OpenAi, &fake));
    let out = turn(p.as_ref(), &request("x", vec![])).await.unwrap();
    assert_eq!(out.stop, StopReason::EndTurn);
    assert_eq!(out.message.text(), answer);
}

#[tokio::test]
async fn prompt_protocol_round_trip() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::text(
            "Let me list them.\n<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}\n</tool_call>",
        ));
        fake.push(Script::text("There is a.rs."));
        let mut cfg = config(kind, &fake);
        cfg.tool_protocol = ToolProtocol::Prompt;
        let p = provider(&cfg);

        let mut req = request("list files", vec![bash_tool()]);
        let events = events(p.as_ref(), &req).await.unwrap();
        let call_id = events
            .iter()
            .find_map(|e| match e {
                StreamEvent::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    assert_eq!(name, "bash");
                    assert_eq!(arguments, &json!({"cmd": "ls"}));
                    Some(id.clone())
                }
                _ => None,
            })
            .expect("a tool call");
        assert_eq!(events.last(), Some(&StreamEvent::Done(StopReason::ToolUse)));

        let first = &fake.requests()[0];
        assert!(
            first.get("tools").is_none(),
            "{kind:?}: no native tools field"
        );
        let system = match kind {
            ProviderKind::OpenAi => first["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            ProviderKind::Anthropic => first["system"].as_str().unwrap().to_string(),
        };
        assert!(system.starts_with("You are a test."));
        assert!(system.contains("## bash\nRun a shell command"), "{system}");
        assert!(system.contains("<tool_call>\n{\"name\": \"TOOL_NAME\""));

        // Second turn: the call and its result go back as plain text.
        req.messages.push(Message {
            role: picode_llm::Role::Assistant,
            content: vec![
                picode_llm::ContentPart::text("Let me list them."),
                picode_llm::ContentPart::ToolCall {
                    id: call_id.clone(),
                    name: "bash".into(),
                    arguments: json!({"cmd": "ls"}),
                },
            ],
        });
        req.messages
            .push(Message::tool_result(&call_id, "a.rs", false));
        let out = turn(p.as_ref(), &req).await.unwrap();
        assert_eq!(out.message.text(), "There is a.rs.");
        assert_eq!(out.stop, StopReason::EndTurn);

        let second = &fake.requests()[1];
        assert!(second.get("tools").is_none());
        let messages = second["messages"].as_array().unwrap();
        let last = messages.last().unwrap();
        assert_eq!(last["role"], "user");
        let last_text = match kind {
            ProviderKind::OpenAi => last["content"].as_str().unwrap().to_string(),
            ProviderKind::Anthropic => last["content"][0]["text"].as_str().unwrap().to_string(),
        };
        assert_eq!(
            last_text,
            format!("<tool_result id=\"{call_id}\" status=\"ok\">\na.rs\n</tool_result>")
        );
        let assistant = &messages[messages.len() - 2];
        assert_eq!(assistant["role"], "assistant");
        assert!(assistant.to_string().contains("<tool_call>"), "{assistant}");
        assert!(assistant.get("tool_calls").is_none());
    }
}

fn read_file_tool() -> picode_llm::ToolDef {
    picode_llm::ToolDef {
        name: "read_file".into(),
        description: "Read a file".into(),
        parameters: json!({"type": "object",
            "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}},
            "required": ["path"]}),
    }
}

#[tokio::test]
async fn pythonic_calls_are_recovered_and_fitted_to_the_schema() {
    // What SmolLM2-135M wrote, and the list form of Llama 3.2.
    let cases = [
        ("read_file(filename: \"hello.txt\")", 1),
        ("[read_file(path='hello.txt'), bash(cmd=\"ls\")]", 2),
        ("read_file(\"hello.txt\")", 1),
    ];
    for kind in KINDS {
        for (text, n) in cases {
            let fake = FakeLlm::start().await;
            fake.push(Script::text(text).chunks(5));
            let p = provider(&config(kind, &fake));
            let req = request("show hello.txt", vec![read_file_tool(), bash_tool()]);
            let out = turn(p.as_ref(), &req).await.unwrap();
            assert_eq!(out.stop, StopReason::ToolUse, "{kind:?} {text}");
            let calls: Vec<_> = out.message.tool_calls().collect();
            assert_eq!(calls.len(), n, "{kind:?} {text}");
            assert_eq!(calls[0].1, "read_file");
            assert_eq!(calls[0].2, &json!({"path": "hello.txt"}), "{text}");
            if n == 2 {
                assert_eq!(calls[1].2, &json!({"cmd": "ls"}));
            }
        }
    }
}

#[tokio::test]
async fn a_native_call_with_a_misnamed_lone_argument_is_fitted() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::tool_call(
            "read_file",
            json!({"file_path": "hello.txt"}),
        ));
        let p = provider(&config(kind, &fake));
        let out = turn(p.as_ref(), &request("show", vec![read_file_tool()]))
            .await
            .unwrap();
        let calls: Vec<_> = out.message.tool_calls().collect();
        assert_eq!(calls[0].2, &json!({"path": "hello.txt"}), "{kind:?}");
    }
}
