//! OpenAI Responses API rendering (`POST /v1/responses`), the protocol
//! Codex CLI speaks: a streamed response is a sequence of named events
//! (`event: response.output_text.delta` + `data: {json}`), each carrying
//! `type` and a `sequence_number`, from `response.created` to
//! `response.completed`; a text answer is a `message` output item with one
//! `output_text` part, a tool call a `function_call` item whose arguments
//! stream as `response.function_call_arguments.delta`.

use serde_json::{json, Value};

use crate::answer::Answer;

const CREATED: u64 = 1_700_000_000;

fn response_id(answer: &Answer) -> String {
    format!("resp_fake{}", answer.seq)
}

fn message_id(answer: &Answer) -> String {
    format!("msg_fake{}", answer.seq)
}

fn call_item_id(answer: &Answer, i: usize) -> String {
    format!("fc_fake{}_{i}", answer.seq)
}

fn call_id(answer: &Answer, i: usize, given: Option<&String>) -> String {
    given
        .cloned()
        .unwrap_or_else(|| format!("call_fake{}_{i}", answer.seq))
}

/// The text of the last user input: `input` as a string, or the last
/// `user` item's `input_text` parts.
pub(crate) fn last_user_text(body: &Value) -> String {
    match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .rev()
            .find(|i| i["role"] == "user")
            .map(|item| match &item["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn message_item(answer: &Answer, status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([{"type": "output_text", "text": t, "annotations": []}]),
        None => json!([]),
    };
    json!({"id": message_id(answer), "type": "message", "status": status,
           "role": "assistant", "content": content})
}

fn call_item(answer: &Answer, i: usize, status: &str, arguments: &str) -> Value {
    let call = &answer.calls[i];
    json!({"id": call_item_id(answer, i), "type": "function_call", "status": status,
           "arguments": arguments, "call_id": call_id(answer, i, call.id.as_ref()),
           "name": call.name})
}

/// The finished output items.
fn output(answer: &Answer) -> Vec<Value> {
    let mut out = Vec::new();
    let text = answer.text();
    if !text.is_empty() {
        out.push(message_item(answer, "completed", Some(&text)));
    }
    for (i, call) in answer.calls.iter().enumerate() {
        out.push(call_item(
            answer,
            i,
            "completed",
            &call.arguments.to_string(),
        ));
    }
    out
}

fn response(answer: &Answer, status: &str, output: Vec<Value>, usage: bool) -> Value {
    let usage = if usage {
        json!({"input_tokens": answer.input_tokens,
               "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": answer.output_tokens,
               "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": answer.input_tokens + answer.output_tokens})
    } else {
        Value::Null
    };
    json!({"id": response_id(answer), "object": "response", "created_at": CREATED,
           "status": status, "error": null, "incomplete_details": null,
           "model": answer.model, "output": output, "parallel_tool_calls": true,
           "tool_choice": "auto", "tools": [], "usage": usage})
}

/// The body of a non-streamed response.
pub(crate) fn complete_body(answer: &Answer) -> Value {
    response(answer, "completed", output(answer), true)
}

/// Frames events with their `type` and running `sequence_number`.
#[derive(Default)]
struct Frames {
    frames: Vec<String>,
    seq: u64,
}

impl Frames {
    fn emit(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.frames.push(format!("event: {kind}\ndata: {data}\n\n"));
    }
}

/// Every event of a streamed response, framed.
pub(crate) fn stream_frames(answer: &Answer) -> Vec<String> {
    let mut out = Frames::default();
    out.emit(
        "response.created",
        json!({"response": response(answer, "in_progress", Vec::new(), false)}),
    );
    out.emit(
        "response.in_progress",
        json!({"response": response(answer, "in_progress", Vec::new(), false)}),
    );
    let mut index = 0;
    let text = answer.text();
    if !text.is_empty() || answer.malformed.is_some() {
        let item_id = message_id(answer);
        out.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": message_item(answer, "in_progress", None)}),
        );
        out.emit(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}}),
        );
        for chunk in &answer.text_chunks {
            out.emit(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": index, "content_index": 0,
                       "delta": chunk}),
            );
        }
        if let Some(bad) = &answer.malformed {
            out.frames.push(format!(
                "event: response.output_text.delta\ndata: {bad}\n\n"
            ));
        }
        out.emit(
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text}),
        );
        out.emit(
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": index, "content_index": 0,
                   "part": {"type": "output_text", "text": text, "annotations": []}}),
        );
        out.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": message_item(answer, "completed", Some(&text))}),
        );
        index += 1;
    }
    for (i, call) in answer.calls.iter().enumerate() {
        let item_id = call_item_id(answer, i);
        out.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": call_item(answer, i, "in_progress", "")}),
        );
        for chunk in &call.argument_chunks {
            out.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": chunk}),
            );
        }
        let arguments = call.arguments.to_string();
        out.emit(
            "response.function_call_arguments.done",
            json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
        );
        out.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": call_item(answer, i, "completed", &arguments)}),
        );
        index += 1;
    }
    out.emit(
        "response.completed",
        json!({"response": response(answer, "completed", output(answer), true)}),
    );
    out.frames
}
