//! Conversions between the internal model and Anthropic wire types, both
//! ways: requests out, stream events in.

use std::collections::HashMap;

use super::wire;
use crate::error::{truncate, LlmError};
use crate::model::{ChatRequest, ContentPart, Role, StopReason, StreamEvent, ToolChoice, Usage};
use crate::sse::SseEvent;
use crate::stream::Decoder;
use crate::text_tools::parse_arguments;

/// The API requires `max_tokens`; this is used when neither the request nor
/// the config sets one.
const DEFAULT_MAX_TOKENS: u32 = 8192;

/// Builds the request body. System messages inside the conversation join the
/// top-level system prompt; tool results travel in user messages;
/// consecutive messages of one role are merged because the API wants the
/// roles to alternate.
pub(crate) fn to_wire(
    req: &ChatRequest,
    model: &str,
    max_tokens: Option<u32>,
) -> wire::MessagesRequest {
    let mut system: Vec<String> = req
        .system
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    let mut messages: Vec<wire::RequestMessage> = Vec::new();
    for msg in &req.messages {
        let role = match msg.role {
            Role::System => {
                let text = msg.text();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User | Role::Tool => "user",
            Role::Assistant => "assistant",
        };
        let blocks = msg.content.iter().filter_map(|part| match part {
            ContentPart::Text { text } if !text.is_empty() => {
                Some(wire::RequestBlock::Text { text: text.clone() })
            }
            ContentPart::Text { .. } => None,
            ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => Some(wire::RequestBlock::ToolUse {
                id: id.clone(),
                name: name.clone(),
                input: match arguments {
                    serde_json::Value::Object(_) => arguments.clone(),
                    // `input` must be an object; keep what the model wrote.
                    other => serde_json::json!({ "raw_arguments": other }),
                },
            }),
            ContentPart::ToolResult {
                call_id,
                content,
                is_error,
            } => Some(wire::RequestBlock::ToolResult {
                tool_use_id: call_id.clone(),
                content: content.clone(),
                is_error: *is_error,
            }),
        });
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(wire::RequestMessage {
                role,
                content: blocks.collect(),
            }),
        }
    }
    messages.retain(|m| !m.content.is_empty());
    // Tool results must open the user message that follows the calls.
    for msg in &mut messages {
        msg.content
            .sort_by_key(|b| !matches!(b, wire::RequestBlock::ToolResult { .. }));
    }
    wire::MessagesRequest {
        model: if req.model.is_empty() {
            model.to_string()
        } else {
            req.model.clone()
        },
        max_tokens: req.max_tokens.or(max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| wire::Tool {
                name: t.name.clone(),
                description: t.description.clone(),
                input_schema: t.parameters.clone(),
            })
            .collect(),
        stream: true,
        temperature: req.temperature,
        tool_choice: tool_choice(req),
    }
}

/// Anthropic's `tool_choice`, only when tools are offered.
fn tool_choice(req: &ChatRequest) -> Option<serde_json::Value> {
    if req.tools.is_empty() {
        return None;
    }
    Some(match req.tool_choice.as_ref()? {
        ToolChoice::Auto => serde_json::json!({"type": "auto"}),
        ToolChoice::Required => serde_json::json!({"type": "any"}),
        ToolChoice::None => serde_json::json!({"type": "none"}),
        ToolChoice::Tool(name) => serde_json::json!({"type": "tool", "name": name}),
    })
}

fn stop_reason(reason: Option<&str>) -> StopReason {
    match reason {
        Some("end_turn" | "stop_sequence") | None => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        Some(other) => StopReason::Other(other.to_string()),
    }
}

enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        json: String,
        initial: Option<serde_json::Value>,
    },
    Other,
}

/// Assembles a Messages stream: text deltas pass straight through, tool
/// input JSON is collected per block and emitted at `content_block_stop`.
pub(crate) struct EventDecoder {
    provider: String,
    blocks: HashMap<u32, Block>,
    usage: Usage,
    usage_seen: bool,
    stop: Option<String>,
}

impl EventDecoder {
    pub(crate) fn new(provider: &str) -> Self {
        EventDecoder {
            provider: provider.to_string(),
            blocks: HashMap::new(),
            usage: Usage::default(),
            usage_seen: false,
            stop: None,
        }
    }

    fn add_usage(&mut self, usage: &wire::WireUsage) {
        let input = usage.input_tokens.unwrap_or(0)
            + usage.cache_creation_input_tokens.unwrap_or(0)
            + usage.cache_read_input_tokens.unwrap_or(0);
        if input > 0 {
            self.usage.input_tokens = input;
        }
        // Output tokens are cumulative in `message_delta`.
        if let Some(output) = usage.output_tokens {
            self.usage.output_tokens = output;
        }
        self.usage_seen = true;
    }

    fn finalize(&mut self, out: &mut Vec<StreamEvent>) {
        if self.usage_seen {
            out.push(StreamEvent::Usage(self.usage));
        }
        out.push(StreamEvent::Done(stop_reason(self.stop.as_deref())));
    }
}

impl Decoder for EventDecoder {
    fn on_event(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let payload: wire::StreamPayload =
            serde_json::from_str(data).map_err(|e| LlmError::MalformedChunk {
                provider: self.provider.clone(),
                reason: e.to_string(),
                text: truncate(data),
            })?;
        match payload {
            wire::StreamPayload::MessageStart { message } => {
                if let Some(usage) = message.usage {
                    self.add_usage(&usage);
                }
            }
            wire::StreamPayload::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    wire::BlockStart::Text { text } => {
                        if !text.is_empty() {
                            out.push(StreamEvent::TextDelta(text));
                        }
                        Block::Text
                    }
                    wire::BlockStart::ToolUse { id, name, input } => Block::ToolUse {
                        id,
                        name,
                        json: String::new(),
                        initial: input,
                    },
                    wire::BlockStart::Other => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            wire::StreamPayload::ContentBlockDelta { index, delta } => {
                match (self.blocks.get_mut(&index), delta) {
                    (_, wire::BlockDelta::TextDelta { text }) => {
                        out.push(StreamEvent::TextDelta(text));
                    }
                    (
                        Some(Block::ToolUse { json, .. }),
                        wire::BlockDelta::InputJsonDelta { partial_json },
                    ) => {
                        json.push_str(&partial_json);
                    }
                    _ => {}
                }
            }
            wire::StreamPayload::ContentBlockStop { index } => {
                if let Some(Block::ToolUse {
                    id,
                    name,
                    json,
                    initial,
                }) = self.blocks.remove(&index)
                {
                    // Input arrives as deltas; the start event's `input` is
                    // only used when no delta came (it is `{}` otherwise).
                    let arguments = match initial {
                        Some(value) if json.trim().is_empty() && !value.is_null() => value,
                        _ => parse_arguments(&json),
                    };
                    out.push(StreamEvent::ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
            }
            wire::StreamPayload::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop = Some(reason);
                }
                if let Some(usage) = usage {
                    self.add_usage(&usage);
                }
            }
            wire::StreamPayload::MessageStop => self.finalize(out),
            wire::StreamPayload::Ping | wire::StreamPayload::Unknown => {}
            wire::StreamPayload::Error { error } => {
                return Err(LlmError::Stream(format!(
                    "{}: {}: {}",
                    self.provider, error.kind, error.message
                )));
            }
        }
        Ok(())
    }

    fn on_eof(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError> {
        // `message_delta` carries the stop reason; after it only
        // `message_stop` is missing, and the answer is complete.
        if self.stop.is_some() && self.blocks.is_empty() {
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
                Message {
                    role: Role::Assistant,
                    content: vec![
                        ContentPart::text("checking"),
                        ContentPart::ToolCall {
                            id: "t1".into(),
                            name: "bash".into(),
                            arguments: json!({"cmd": "ls"}),
                        },
                    ],
                },
                Message::tool_result("t1", "a.rs", false),
                Message::user("and now?"),
            ],
            tools: vec![ToolDef {
                name: "bash".into(),
                description: "run".into(),
                parameters: json!({"type": "object"}),
            }],
            ..ChatRequest::default()
        };
        let body = serde_json::to_value(to_wire(&req, "claude", None)).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude",
                "max_tokens": 8192,
                "system": "sys",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "checking"},
                        {"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}}
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "a.rs"},
                        {"type": "text", "text": "and now?"}
                    ]}
                ],
                "tools": [{"name": "bash", "description": "run", "input_schema": {"type": "object"}}],
                "stream": true
            })
        );
    }

    fn feed(d: &mut EventDecoder, data: &str) -> Result<Vec<StreamEvent>, LlmError> {
        let mut out = Vec::new();
        d.on_event(
            SseEvent {
                event: None,
                data: data.to_string(),
            },
            &mut out,
        )?;
        Ok(out)
    }

    #[test]
    fn thinking_blocks_are_skipped_and_cache_tokens_counted() {
        let mut d = EventDecoder::new("claude");
        feed(&mut d, r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}"#).unwrap();
        feed(&mut d, r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#).unwrap();
        let out = feed(&mut d, r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#).unwrap();
        assert!(out.is_empty());
        feed(&mut d, r#"{"type":"content_block_stop","index":0}"#).unwrap();
        feed(&mut d, r#"{"type":"some_future_event"}"#).unwrap();
        feed(&mut d, r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}"#).unwrap();
        let out = feed(&mut d, r#"{"type":"message_stop"}"#).unwrap();
        assert_eq!(
            out,
            [
                StreamEvent::Usage(Usage {
                    input_tokens: 105,
                    output_tokens: 7,
                    ..Default::default()
                }),
                StreamEvent::Done(StopReason::MaxTokens)
            ]
        );
    }

    #[test]
    fn error_event_fails_the_stream() {
        let mut d = EventDecoder::new("claude");
        let err = feed(
            &mut d,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream error: claude: overloaded_error: Overloaded"
        );
        assert!(err.should_fall_back());
    }
}
