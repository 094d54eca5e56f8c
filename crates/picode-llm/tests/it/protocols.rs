//! What each protocol adapter sends and how it reads streams.

use std::time::Duration;

use fake_llm::{FakeLlm, Script, ScriptedCall};
use picode_llm::{
    ContentPart, LlmError, Message, ProviderKind, Role, StopReason, StreamEvent, Usage,
};
use serde_json::json;

use crate::*;

#[tokio::test]
async fn text_streams_in_deltas_with_usage() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::text("Hello from the fake model").usage(11, 5));
        let p = provider(&config(kind, &fake));
        let events = events(p.as_ref(), &request("hi", vec![])).await.unwrap();
        let deltas: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            deltas,
            ["Hello ", "from ", "the ", "fake ", "model"],
            "{kind:?}"
        );
        let n = events.len();
        assert_eq!(
            events[n - 2],
            StreamEvent::Usage(Usage {
                input_tokens: 11,
                output_tokens: 5,
                ..Default::default()
            }),
            "{kind:?}"
        );
        assert_eq!(
            events[n - 1],
            StreamEvent::Done(StopReason::EndTurn),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn tool_call_deltas_are_assembled() {
    let long = "x".repeat(300);
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(
            Script::tool_calls(vec![
                ScriptedCall {
                    id: Some("call_a".into()),
                    name: "bash".into(),
                    arguments: json!({"cmd": "grep -rn \"fn main\" .", "nested": {"list": [1, 2, 3]}}),
                },
                ScriptedCall {
                    id: None,
                    name: "write_file".into(),
                    arguments: json!({"path": "a.txt", "content": long}),
                },
            ])
            .with_text("Running two tools.")
            .chunks(17),
        );
        let p = provider(&config(kind, &fake));
        let out = turn(p.as_ref(), &request("go", vec![bash_tool()]))
            .await
            .unwrap();
        assert_eq!(out.stop, StopReason::ToolUse, "{kind:?}");
        assert_eq!(out.message.text(), "Running two tools.");
        let calls: Vec<_> = out.message.tool_calls().collect();
        assert_eq!(calls.len(), 2, "{kind:?}");
        assert_eq!(calls[0].0, "call_a");
        assert_eq!(calls[0].1, "bash");
        assert_eq!(
            calls[0].2,
            &json!({"cmd": "grep -rn \"fn main\" .", "nested": {"list": [1, 2, 3]}})
        );
        assert_eq!(calls[1].1, "write_file");
        assert_eq!(calls[1].2, &json!({"path": "a.txt", "content": long}));
        assert!(!calls[1].0.is_empty());
    }
}

#[tokio::test]
async fn openai_request_after_tool_result_has_wire_shape() {
    let fake = FakeLlm::start().await;
    fake.push(Script::tool_calls(vec![ScriptedCall {
        id: Some("call_1".into()),
        name: "bash".into(),
        arguments: json!({"cmd": "ls"}),
    }]));
    fake.push(Script::text("There is one file."));
    let p = provider(&config(ProviderKind::OpenAi, &fake));
    let mut req = request("list files", vec![bash_tool()]);
    let first = turn(p.as_ref(), &req).await.unwrap();
    req.messages.push(first.message);
    req.messages
        .push(Message::tool_result("call_1", "a.rs", false));
    let second = turn(p.as_ref(), &req).await.unwrap();
    assert_eq!(second.message.text(), "There is one file.");

    let sent = &fake.requests()[1];
    assert_eq!(sent["model"], "test-model");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "bash");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": "list files"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a.rs"}
        ])
    );
    let rec = &fake.recorded()[1];
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(rec.headers["authorization"], "Bearer sk-test");
}

#[tokio::test]
async fn anthropic_request_after_tool_result_has_wire_shape() {
    let fake = FakeLlm::start().await;
    fake.push(
        Script::tool_calls(vec![ScriptedCall {
            id: Some("toolu_1".into()),
            name: "bash".into(),
            arguments: json!({"cmd": "ls"}),
        }])
        .with_text("Looking."),
    );
    fake.push(Script::text("There is one file."));
    let p = provider(&config(ProviderKind::Anthropic, &fake));
    let mut req = request("list files", vec![bash_tool()]);
    let first = turn(p.as_ref(), &req).await.unwrap();
    req.messages.push(first.message);
    req.messages
        .push(Message::tool_result("toolu_1", "no such dir", true));
    turn(p.as_ref(), &req).await.unwrap();

    let sent = &fake.requests()[1];
    assert_eq!(sent["system"], "You are a test.");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["max_tokens"], 8192);
    assert_eq!(sent["tools"][0]["name"], "bash");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"cmd": "ls"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such dir", "is_error": true}
            ]}
        ])
    );
    let rec = &fake.recorded()[1];
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.headers["x-api-key"], "sk-test");
    assert_eq!(rec.headers["anthropic-version"], "2023-06-01");
}

#[tokio::test]
async fn anthropic_base_url_without_version_segment_works() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text("ok"));
    let cfg = config(ProviderKind::Anthropic, &fake)
        .with_base_url(fake.base_url().trim_end_matches("/v1").to_string());
    let out = turn(provider(&cfg).as_ref(), &request("x", vec![]))
        .await
        .unwrap();
    assert_eq!(out.message.text(), "ok");
}

#[tokio::test]
async fn stream_cut_short_is_an_error() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        // Enough events for some text to arrive before the cut.
        fake.push(Script::cut_short("one two three four five", 4));
        let p = provider(&config(kind, &fake));
        use futures_util::StreamExt;
        let mut stream = p.stream(&request("x", vec![])).await.unwrap();
        let mut text = String::new();
        let err = loop {
            match stream.next().await {
                Some(Ok(StreamEvent::TextDelta(t))) => text.push_str(&t),
                Some(Ok(other)) => panic!("{kind:?}: unexpected {other:?}"),
                Some(Err(err)) => break err,
                None => panic!("{kind:?}: ended without error"),
            }
        };
        assert!(!text.is_empty(), "{kind:?}: some text came first");
        assert!(
            matches!(&err, LlmError::Stream(m) if m.contains("stream ended before completion")),
            "{kind:?}: {err}"
        );
        assert!(stream.next().await.is_none());
    }
}

#[tokio::test]
async fn malformed_chunk_is_an_error_naming_provider_and_text() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        fake.push(Script::malformed("fine so far", "{\"choices\": [oops"));
        let p = provider(&config(kind, &fake));
        let err = turn(p.as_ref(), &request("x", vec![])).await.unwrap_err();
        match &err {
            LlmError::MalformedChunk {
                provider,
                reason,
                text,
            } => {
                assert_eq!(provider, &format!("fake-{kind:?}"));
                assert!(!reason.is_empty());
                assert_eq!(text, "{\"choices\": [oops");
            }
            other => panic!("{kind:?}: {other}"),
        }
        assert!(err.to_string().contains("oops"));
    }
}

#[tokio::test]
async fn models_are_listed() {
    for kind in KINDS {
        let fake = FakeLlm::start().await;
        let p = provider(&config(kind, &fake));
        assert_eq!(p.models().await.unwrap(), ["fake-model"], "{kind:?}");
    }
}

#[tokio::test]
async fn silent_provider_times_out() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text("late").first_byte_delay(Duration::from_millis(2500)));
    let mut cfg = config(ProviderKind::OpenAi, &fake);
    cfg.timeout_secs = 1;
    cfg.max_retries = 0;
    let err = turn(provider(&cfg).as_ref(), &request("x", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn dropping_the_stream_stops_reading() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text("a b c d e f g h").chunk_delay(Duration::from_millis(300)));
    fake.push(Script::text("next"));
    let p = provider(&config(ProviderKind::OpenAi, &fake));
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    let mut stream = p.stream(&request("x", vec![])).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, StreamEvent::TextDelta("a ".into()));
    drop(stream);
    // The rest of the slow answer is never waited for.
    let out = turn(p.as_ref(), &request("y", vec![])).await.unwrap();
    assert_eq!(out.message.text(), "next");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn message_history_round_trips_through_json() {
    // The agent stores turns as JSON; what `collect` builds must survive that.
    let fake = FakeLlm::start().await;
    fake.push(Script::tool_call("bash", json!({"cmd": "ls"})).with_text("Sure."));
    let p = provider(&config(ProviderKind::OpenAi, &fake));
    let out = turn(p.as_ref(), &request("x", vec![bash_tool()]))
        .await
        .unwrap();
    let stored = serde_json::to_string(&out.message).unwrap();
    let back: Message = serde_json::from_str(&stored).unwrap();
    assert_eq!(back.role, Role::Assistant);
    assert!(matches!(&back.content[1], ContentPart::ToolCall { name, .. } if name == "bash"));
}

#[tokio::test]
async fn a_forced_tool_choice_goes_out_in_each_protocols_shape() {
    let cases = [
        (
            picode_llm::ToolChoice::Tool("bash".into()),
            json!({"type": "function", "function": {"name": "bash"}}),
            json!({"type": "tool", "name": "bash"}),
        ),
        (
            picode_llm::ToolChoice::Required,
            json!("required"),
            json!({"type": "any"}),
        ),
    ];
    for (choice, openai, anthropic) in cases {
        for kind in KINDS {
            let fake = FakeLlm::start().await;
            fake.push(Script::tool_call("bash", json!({"cmd": "ls"})));
            fake.push(Script::text("no tools here"));
            let p = provider(&config(kind, &fake));
            let mut req = request("list files", vec![bash_tool()]);
            req.tool_choice = Some(choice.clone());
            turn(p.as_ref(), &req).await.unwrap();
            // Without tools there is nothing to force: the field is left out.
            let mut bare = request("hi", vec![]);
            bare.tool_choice = Some(choice.clone());
            turn(p.as_ref(), &bare).await.unwrap();
            let sent = fake.requests();
            let expected = match kind {
                ProviderKind::OpenAi => &openai,
                ProviderKind::Anthropic => &anthropic,
            };
            assert_eq!(&sent[0]["tool_choice"], expected, "{kind:?}");
            assert!(
                sent[1].get("tool_choice").is_none(),
                "{kind:?}: {}",
                sent[1]
            );
        }
    }
}

#[tokio::test]
async fn the_prompt_protocol_says_a_forced_choice_in_words() {
    let fake = FakeLlm::start().await;
    fake.push(Script::text(
        "<tool_call>\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}\n</tool_call>",
    ));
    let mut cfg = config(ProviderKind::OpenAi, &fake);
    cfg.tool_protocol = picode_llm::ToolProtocol::Prompt;
    let p = provider(&cfg);
    let mut req = request("list files", vec![bash_tool()]);
    req.tool_choice = Some(picode_llm::ToolChoice::Tool("bash".into()));
    turn(p.as_ref(), &req).await.unwrap();
    let sent = &fake.requests()[0];
    assert!(sent.get("tool_choice").is_none(), "{sent}");
    assert!(sent.get("tools").is_none(), "{sent}");
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("You must call the tool `bash`"),
        "{sent}"
    );
}
