//! Conversions between the internal model and OpenAI wire types, both ways:
//! requests out, stream chunks in.

use std::collections::BTreeMap;

use super::wire;
use crate::error::{truncate, LlmError};
use crate::model::{ChatRequest, ContentPart, Role, StopReason, StreamEvent, ToolChoice, Usage};
use crate::sse::SseEvent;
use crate::stream::Decoder;
use crate::text_tools::{generate_call_id, parse_arguments};

/// Builds the request body. `model` is the configured model, used when the
/// request names none.
pub(crate) fn to_wire(
    req: &ChatRequest,
    model: &str,
    max_tokens: Option<u32>,
) -> wire::ChatCompletionRequest {
    let mut messages = Vec::new();
    if let Some(system) = req.system.as_deref().filter(|s| !s.is_empty()) {
        messages.push(text_message("system", system.to_string()));
    }
    for msg in &req.messages {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for part in &msg.content {
            match part {
                ContentPart::Text { text: t } => text.push_str(t),
                ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                } => calls.push(wire::RequestToolCall {
                    id: id.clone(),
                    kind: "function",
                    function: wire::RequestFunction {
                        name: name.clone(),
                        arguments: match arguments {
                            // Raw text the model produced is passed back as is.
                            serde_json::Value::String(raw) => raw.clone(),
                            other => other.to_string(),
                        },
                    },
                }),
                ContentPart::ToolResult {
                    call_id,
                    content,
                    is_error,
                } => results.push(wire::RequestMessage {
                    role: "tool",
                    // The protocol has no error flag, so the model is told in words.
                    content: if *is_error {
                        format!("Error: {content}")
                    } else {
                        content.clone()
                    },
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call_id.clone()),
                }),
            }
        }
        // Tool results must directly follow the assistant message that made
        // the calls, so they go before any text of the same message.
        messages.extend(results);
        match msg.role {
            Role::Assistant if !text.is_empty() || !calls.is_empty() => {
                // An empty string, not null, for a message of tool calls
                // only: OpenAI accepts either, but llama-cpp-python's server
                // rejects null with a 500, which would end every agent turn
                // that follows a bare tool call.
                messages.push(wire::RequestMessage {
                    role: "assistant",
                    content: text,
                    tool_calls: calls,
                    tool_call_id: None,
                });
            }
            Role::System if !text.is_empty() => messages.push(text_message("system", text)),
            Role::User | Role::Tool if !text.is_empty() => {
                messages.push(text_message("user", text))
            }
            _ => {}
        }
    }
    wire::ChatCompletionRequest {
        model: if req.model.is_empty() {
            model.to_string()
        } else {
            req.model.clone()
        },
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| wire::Tool {
                kind: "function",
                function: wire::FunctionDef {
                    name: t.name.clone(),
                    description: t.description.clone(),
                    parameters: t.parameters.clone(),
                },
            })
            .collect(),
        stream: true,
        stream_options: Some(wire::StreamOptions {
            include_usage: true,
        }),
        max_tokens: req.max_tokens.or(max_tokens),
        temperature: req.temperature,
        tool_choice: tool_choice(req),
    }
}

/// OpenAI's `tool_choice`, only when tools are offered.
fn tool_choice(req: &ChatRequest) -> Option<serde_json::Value> {
    if req.tools.is_empty() {
        return None;
    }
    Some(match req.tool_choice.as_ref()? {
        ToolChoice::Auto => serde_json::json!("auto"),
        ToolChoice::Required => serde_json::json!("required"),
        ToolChoice::None => serde_json::json!("none"),
        ToolChoice::Tool(name) => {
            serde_json::json!({"type": "function", "function": {"name": name}})
        }
    })
}

fn text_message(role: &'static str, text: String) -> wire::RequestMessage {
    wire::RequestMessage {
        role,
        content: text,
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

fn stop_reason(finish: Option<&str>, had_calls: bool) -> StopReason {
    match finish {
        // Some servers say "stop" even when they returned calls.
        _ if had_calls => StopReason::ToolUse,
        Some("stop") | None => StopReason::EndTurn,
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_string()),
    }
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Assembles a Chat Completions stream. Tool-call fragments are keyed by
/// their `index` and emitted, complete, when the turn ends.
pub(crate) struct ChunkDecoder {
    provider: String,
    calls: BTreeMap<u32, PartialCall>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// Size of the request, for estimating usage the server does not report.
    prompt_chars: usize,
    /// Text and tool-call argument characters received.
    output_chars: usize,
}

impl ChunkDecoder {
    /// `prompt_chars` is the size of the request body; it only matters when
    /// the server sends no usage.
    pub(crate) fn new(provider: &str, prompt_chars: usize) -> Self {
        ChunkDecoder {
            provider: provider.to_string(),
            calls: BTreeMap::new(),
            finish: None,
            usage: None,
            prompt_chars,
            output_chars: 0,
        }
    }

    fn finalize(&mut self, out: &mut Vec<StreamEvent>) {
        let had_calls = !self.calls.is_empty();
        for (_, call) in std::mem::take(&mut self.calls) {
            out.push(StreamEvent::ToolCall {
                id: if call.id.is_empty() {
                    generate_call_id()
                } else {
                    call.id
                },
                name: call.name,
                arguments: parse_arguments(&call.arguments),
            });
        }
        // Servers that ignore `stream_options.include_usage` (llama-cpp-python
        // among them) send no counts; an estimate marked as such beats
        // reporting zero tokens and zero cost.
        let usage = self.usage.take().unwrap_or(Usage {
            input_tokens: self.prompt_chars.div_ceil(4) as u64,
            output_tokens: self.output_chars.div_ceil(4) as u64,
            estimated: true,
        });
        out.push(StreamEvent::Usage(usage));
        out.push(StreamEvent::Done(stop_reason(
            self.finish.as_deref(),
            had_calls,
        )));
    }
}

impl Decoder for ChunkDecoder {
    fn on_event(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finalize(out);
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: wire::ChatChunk =
            serde_json::from_str(data).map_err(|e| LlmError::MalformedChunk {
                provider: self.provider.clone(),
                reason: e.to_string(),
                text: truncate(data),
            })?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(|m| m.as_str())
                .map_or_else(|| error.to_string(), str::to_string);
            return Err(LlmError::Stream(format!("{}: {message}", self.provider)));
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                estimated: false,
            });
        }
        // PiCode never asks for more than one choice.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta.unwrap_or_default();
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.output_chars += text.chars().count();
                out.push(StreamEvent::TextDelta(text));
            }
            for (position, fragment) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
            {
                // `index` is required by OpenAI but missing from some
                // compatibles, which then send each call whole.
                let index = fragment.index.unwrap_or_else(|| {
                    self.calls.keys().next_back().map_or(0, |k| k + 1) + position as u32
                });
                let call = self.calls.entry(index).or_default();
                if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
                    call.id = id;
                }
                if let Some(function) = fragment.function {
                    // OpenAI sends the name once, in the call's first
                    // fragment; llama.cpp's server repeats the whole name in
                    // every fragment, which appended would read
                    // `read_fileread_file...`.
                    if let Some(name) = function.name.filter(|n| *n != call.name) {
                        call.name.push_str(&name);
                    }
                    if let Some(args) = function.arguments {
                        self.output_chars += args.chars().count();
                        call.arguments.push_str(&args);
                    }
                }
            }
            if let Some(finish) = choice.finish_reason {
                self.finish = Some(finish);
            }
        }
        Ok(())
    }

    fn on_eof(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
        // Some servers close after the finish reason without `[DONE]`; the
        // answer is complete then. Without a finish reason it was cut short.
        if self.finish.is_some() {
            self.finalize(out);
            Ok(())
        } else {
            Err(LlmError::Stream(format!(
                "{}: stream ended before completion",
                self.provider
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Message, ToolDef};

    #[test]
    fn request_shape_with_tool_round_trip() {
        let req = ChatRequest {
            system: Some("sys".into()),
            messages: vec![
                Message::user("hi"),
                crate::Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::text("checking"),
                        ContentPart::ToolCall {
                            id: "c1".into(),
                            name: "bash".into(),
                            arguments: json!({"cmd": "ls"}),
                        },
                    ],
                },
                Message::tool_result("c1", "boom", true),
            ],
            tools: vec![ToolDef {
                name: "bash".into(),
                description: "run".into(),
                parameters: json!({"type": "object"}),
            }],
            ..ChatRequest::default()
        };
        let body = serde_json::to_value(to_wire(&req, "m", Some(100))).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "checking", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}}
                    ]},
                    {"role": "tool", "content": "Error: boom", "tool_call_id": "c1"}
                ],
                "tools": [{"type": "function", "function": {"name": "bash", "description": "run", "parameters": {"type": "object"}}}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 100
            })
        );
    }

    fn decode(decoder: &mut ChunkDecoder, data: &str) -> Result<Vec<StreamEvent>, LlmError> {
        let mut out = Vec::new();
        decoder.on_event(
            SseEvent {
                event: None,
                data: data.to_string(),
            },
            &mut out,
        )?;
        Ok(out)
    }

    #[test]
    fn compatible_server_quirks() {
        // Whole calls without `index` or `id`, usage inside the last choice
        // chunk, "stop" although calls were made, no `[DONE]`.
        let mut d = ChunkDecoder::new("local", 0);
        assert!(decode(
            &mut d,
            r#"{"choices":[{"delta":{"role":"assistant","reasoning_content":"hm"}}]}"#
        )
        .unwrap()
        .is_empty());
        decode(&mut d, r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"a","arguments":"{\"x\":1}"}},{"function":{"name":"b","arguments":""}}]}}]}"#).unwrap();
        decode(&mut d, r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#).unwrap();
        let mut out = Vec::new();
        d.on_eof(&mut out).unwrap();
        assert!(
            matches!(&out[0], StreamEvent::ToolCall { name, arguments, id } if name == "a" && arguments == &json!({"x": 1}) && !id.is_empty())
        );
        assert!(
            matches!(&out[1], StreamEvent::ToolCall { name, arguments, .. } if name == "b" && arguments == &json!({}))
        );
        assert_eq!(
            out[2],
            StreamEvent::Usage(Usage {
                input_tokens: 3,
                output_tokens: 4,
                ..Default::default()
            })
        );
        assert_eq!(out[3], StreamEvent::Done(StopReason::ToolUse));
    }

    #[test]
    fn a_name_repeated_in_every_fragment_is_taken_once() {
        // llama-cpp-python with a forced tool: the whole name in each chunk.
        let mut d = ChunkDecoder::new("local", 0);
        for args in [r#"{"path""#, r#":"hello.txt"}"#] {
            let chunk = json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"name":"read_file","arguments":args}}]}}]});
            decode(&mut d, &chunk.to_string()).unwrap();
        }
        decode(
            &mut d,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        d.on_eof(&mut out).unwrap();
        assert!(
            matches!(&out[0], StreamEvent::ToolCall { name, arguments, .. } if name == "read_file" && arguments == &json!({"path": "hello.txt"})),
            "{out:?}"
        );
        // A name split over fragments (as OpenAI may) still joins.
        let mut d = ChunkDecoder::new("local", 0);
        for name in ["read_", "file"] {
            let chunk = json!({"choices":[{"index":0,"delta":{"tool_calls":[
                {"index":0,"function":{"name":name,"arguments":""}}]}}]});
            decode(&mut d, &chunk.to_string()).unwrap();
        }
        decode(
            &mut d,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        d.on_eof(&mut out).unwrap();
        assert!(
            matches!(&out[0], StreamEvent::ToolCall { name, .. } if name == "read_file"),
            "{out:?}"
        );
    }

    #[test]
    fn usage_is_estimated_and_marked_when_the_server_sends_none() {
        let mut d = ChunkDecoder::new("local", 400);
        decode(
            &mut d,
            r#"{"choices":[{"index":0,"delta":{"content":"twelve chars"}}]}"#,
        )
        .unwrap();
        let out = decode(&mut d, "[DONE]").unwrap();
        assert_eq!(
            out[0],
            StreamEvent::Usage(Usage {
                input_tokens: 100,
                output_tokens: 3,
                estimated: true
            })
        );
        // Reported counts are passed on untouched.
        let mut d = ChunkDecoder::new("local", 400);
        decode(
            &mut d,
            r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}"#,
        )
        .unwrap();
        let out = decode(&mut d, "[DONE]").unwrap();
        assert!(matches!(
            out[0],
            StreamEvent::Usage(Usage {
                input_tokens: 7,
                output_tokens: 2,
                estimated: false
            })
        ));
    }

    #[test]
    fn error_payload_and_eof_without_finish() {
        let mut d = ChunkDecoder::new("local", 0);
        let err = decode(&mut d, r#"{"error":{"message":"model not loaded"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "stream error: local: model not loaded");
        let mut d = ChunkDecoder::new("local", 0);
        decode(&mut d, r#"{"choices":[{"delta":{"content":"par"}}]}"#).unwrap();
        let err = d.on_eof(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("stream ended before completion"));
    }
}
