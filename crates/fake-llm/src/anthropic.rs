//! Anthropic Messages rendering: `event: NAME\ndata: {json}\n\n` frames in
//! the API's order (message_start, content blocks with a ping after the
//! first start, message_delta, message_stop), plus non-streaming bodies and
//! error bodies.

use serde::Serialize;
use serde_json::{json, Value};

use crate::answer::Answer;

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageHead<'a>,
}

#[derive(Serialize)]
struct MessageHead<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct UsageOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    input_tokens: Option<u64>,
    output_tokens: u64,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    content_block: Block<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: Delta<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: UsageOut,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

fn message_id(answer: &Answer) -> String {
    format!("msg_fake{}", answer.seq)
}

fn tool_id(answer: &Answer, i: usize, given: Option<&String>) -> String {
    given
        .cloned()
        .unwrap_or_else(|| format!("toolu_fake{}_{i}", answer.seq))
}

fn stop_reason(answer: &Answer) -> &'static str {
    if answer.calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}

fn event(name: &str, payload: &impl Serialize) -> String {
    format!(
        "event: {name}\ndata: {}\n\n",
        serde_json::to_string(payload).expect("event serializes")
    )
}

/// The stream as SSE events, each a complete frame.
pub(crate) fn stream_frames(answer: &Answer) -> Vec<String> {
    let id = message_id(answer);
    let mut frames = vec![event(
        "message_start",
        &MessageStart {
            kind: "message_start",
            message: MessageHead {
                id: &id,
                kind: "message",
                role: "assistant",
                model: &answer.model,
                content: [],
                stop_reason: None,
                stop_sequence: None,
                usage: UsageOut {
                    input_tokens: Some(answer.input_tokens),
                    output_tokens: 1,
                },
            },
        },
    )];
    let mut index = 0;
    let mut pinged = false;
    let mut ping = |frames: &mut Vec<String>| {
        // The API sends one ping after the first block starts.
        if !pinged {
            frames.push("event: ping\ndata: {\"type\": \"ping\"}\n\n".to_string());
            pinged = true;
        }
    };
    if !answer.text_chunks.is_empty() || answer.malformed.is_some() {
        frames.push(event(
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: Block::Text { text: "" },
            },
        ));
        ping(&mut frames);
        for piece in &answer.text_chunks {
            frames.push(event(
                "content_block_delta",
                &BlockDelta {
                    kind: "content_block_delta",
                    index,
                    delta: Delta::TextDelta { text: piece },
                },
            ));
        }
        if let Some(bad) = &answer.malformed {
            frames.push(format!("event: content_block_delta\ndata: {bad}\n\n"));
        }
        frames.push(event(
            "content_block_stop",
            &BlockStop {
                kind: "content_block_stop",
                index,
            },
        ));
        index += 1;
    }
    for (i, call) in answer.calls.iter().enumerate() {
        let call_id = tool_id(answer, i, call.id.as_ref());
        frames.push(event(
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: Block::ToolUse {
                    id: &call_id,
                    name: &call.name,
                    input: json!({}),
                },
            },
        ));
        ping(&mut frames);
        // The API opens input with an empty fragment.
        for piece in std::iter::once("").chain(call.argument_chunks.iter().map(String::as_str)) {
            frames.push(event(
                "content_block_delta",
                &BlockDelta {
                    kind: "content_block_delta",
                    index,
                    delta: Delta::InputJsonDelta {
                        partial_json: piece,
                    },
                },
            ));
        }
        frames.push(event(
            "content_block_stop",
            &BlockStop {
                kind: "content_block_stop",
                index,
            },
        ));
        index += 1;
    }
    frames.push(event(
        "message_delta",
        &MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: stop_reason(answer),
                stop_sequence: None,
            },
            usage: UsageOut {
                input_tokens: None,
                output_tokens: answer.output_tokens,
            },
        },
    ));
    frames.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    frames
}

/// A non-streaming `message` body.
pub(crate) fn complete_body(answer: &Answer) -> Value {
    let mut content = Vec::new();
    let text = answer.text();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for (i, call) in answer.calls.iter().enumerate() {
        content.push(json!({
            "type": "tool_use",
            "id": tool_id(answer, i, call.id.as_ref()),
            "name": call.name,
            "input": call.arguments
        }));
    }
    json!({
        "id": message_id(answer),
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop_reason(answer),
        "stop_sequence": null,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens}
    })
}

/// The API's error body.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The last user message's text, for echo replies.
pub(crate) fn last_user_text(body: &Value) -> String {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Model list in the API's shape.
pub(crate) fn models_body(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2024-01-01T00:00:00Z"}))
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": models.first(),
        "last_id": models.last()
    })
}
