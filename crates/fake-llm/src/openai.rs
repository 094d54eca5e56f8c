//! OpenAI Chat Completions rendering: stream chunks byte for byte as the
//! real API frames them (`data: {json}\n\n`, then `data: [DONE]\n\n`), with
//! fields in the API's order, plus non-streaming bodies and error bodies.

use serde::Serialize;
use serde_json::{json, Value};

use crate::answer::Answer;

/// Fixed so that transcripts are reproducible.
const CREATED: u64 = 1_700_000_000;
const FINGERPRINT: &str = "fp_fake";

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<Choice>,
    /// Absent without `include_usage`; `null` on every chunk but the last
    /// with it, as the API does.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut>>,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    delta: Delta,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<()>>,
}

#[derive(Serialize)]
struct ToolCallDelta {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta,
}

#[derive(Serialize)]
struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    arguments: String,
}

#[derive(Serialize, Clone, Copy)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

fn completion_id(answer: &Answer) -> String {
    format!("chatcmpl-fake{}", answer.seq)
}

fn call_id(answer: &Answer, i: usize, given: Option<&String>) -> String {
    given
        .cloned()
        .unwrap_or_else(|| format!("call_fake{}_{i}", answer.seq))
}

fn finish_reason(answer: &Answer) -> &'static str {
    if answer.calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

/// The stream as SSE events, each a complete `data: ...\n\n` frame.
pub(crate) fn stream_frames(answer: &Answer, include_usage: bool) -> Vec<String> {
    let id = completion_id(answer);
    let usage = UsageOut {
        prompt_tokens: answer.input_tokens,
        completion_tokens: answer.output_tokens,
        total_tokens: answer.input_tokens + answer.output_tokens,
    };
    let frame = |delta: Delta, finish: Option<&'static str>| {
        let chunk = Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created: CREATED,
            model: &answer.model,
            system_fingerprint: FINGERPRINT,
            choices: vec![Choice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: include_usage.then_some(None),
        };
        data(&serde_json::to_string(&chunk).expect("chunk serializes"))
    };

    let mut frames = vec![frame(
        Delta {
            role: Some("assistant"),
            content: Some(Some(String::new())),
            refusal: Some(None),
            ..Delta::default()
        },
        None,
    )];
    for piece in &answer.text_chunks {
        frames.push(frame(
            Delta {
                content: Some(Some(piece.clone())),
                ..Delta::default()
            },
            None,
        ));
    }
    if let Some(bad) = &answer.malformed {
        frames.push(data(bad));
    }
    for (i, call) in answer.calls.iter().enumerate() {
        // The first fragment names the call; the rest carry arguments only.
        frames.push(frame(
            Delta {
                tool_calls: Some(vec![ToolCallDelta {
                    index: i,
                    id: Some(call_id(answer, i, call.id.as_ref())),
                    kind: Some("function"),
                    function: FunctionDelta {
                        name: Some(call.name.clone()),
                        arguments: String::new(),
                    },
                }]),
                ..Delta::default()
            },
            None,
        ));
        for piece in &call.argument_chunks {
            frames.push(frame(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: i,
                        id: None,
                        kind: None,
                        function: FunctionDelta {
                            name: None,
                            arguments: piece.clone(),
                        },
                    }]),
                    ..Delta::default()
                },
                None,
            ));
        }
    }
    frames.push(frame(Delta::default(), Some(finish_reason(answer))));
    if include_usage {
        let chunk = Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created: CREATED,
            model: &answer.model,
            system_fingerprint: FINGERPRINT,
            choices: Vec::new(),
            usage: Some(Some(usage)),
        };
        frames.push(data(
            &serde_json::to_string(&chunk).expect("chunk serializes"),
        ));
    }
    frames.push(data("[DONE]"));
    frames
}

fn data(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

/// A non-streaming `chat.completion` body.
pub(crate) fn complete_body(answer: &Answer) -> Value {
    let text = answer.text();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }, "refusal": null});
    if !answer.calls.is_empty() {
        message["tool_calls"] = answer
            .calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "id": call_id(answer, i, c.id.as_ref()),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments.to_string()}
                })
            })
            .collect();
    }
    json!({
        "id": completion_id(answer),
        "object": "chat.completion",
        "created": CREATED,
        "model": answer.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason(answer)}],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens
        }
    })
}

/// The API's error body.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        429 => "rate_limit_exceeded",
        401 | 403 => "invalid_request_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
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
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Model list in the API's shape.
pub(crate) fn models_body(models: &[String]) -> Value {
    json!({
        "object": "list",
        "data": models.iter().map(|id| json!({"id": id, "object": "model", "created": CREATED, "owned_by": "fake-llm"})).collect::<Vec<_>>()
    })
}
