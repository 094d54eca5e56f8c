//! The Anthropic-compatible endpoint: `POST /v1/messages`, streaming and
//! not, with tools, so Anthropic's SDKs (and tools built on them) can use
//! PiCode's providers and fallback chain as they use the OpenAI endpoint.
//!
//! The wire types are Anthropic's Messages API (version `2023-06-01`) and
//! stay in this module. The stream follows the documented event order:
//! `message_start`, then per content block `content_block_start`,
//! `content_block_delta`s and `content_block_stop`, then `message_delta`
//! (stop reason and output tokens) and `message_stop`. A tool call arrives
//! from the providers complete, so it is sent as one `input_json_delta`.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use picode_llm::{
    collect, ChatRequest, ContentPart, Message, Role, StopReason, StreamEvent, ToolChoice, ToolDef,
    Usage,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::preferred_provider;
use super::{ApiError, ServeState};

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    system: Option<WireContent>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    tool_choice: Option<WireToolChoice>,
}

/// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name"}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireToolChoice {
    Auto,
    Any,
    None,
    Tool { name: String },
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: WireContent,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Blocks(Vec<WireBlock>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<WireContent>,
        #[serde(default)]
        is_error: bool,
    },
    /// Images, documents, thinking: not carried to the providers.
    #[serde(other)]
    Unsupported,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    input_schema: Option<Value>,
}

impl WireContent {
    fn text(&self) -> String {
        match self {
            WireContent::Text(t) => t.clone(),
            WireContent::Blocks(blocks) => blocks
                .iter()
                .filter_map(|b| match b {
                    WireBlock::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// Anthropic request → our model. Tool results travel in user messages
/// there and in tool messages here.
fn to_chat_request(req: &MessagesRequest) -> Result<ChatRequest, ApiError> {
    let mut messages = Vec::new();
    for m in &req.messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported message role `{other}` (use `system` for system text)"
                )))
            }
        };
        let single;
        let blocks: &[WireBlock] = match &m.content {
            WireContent::Text(t) => {
                single = [WireBlock::Text { text: t.clone() }];
                &single
            }
            WireContent::Blocks(b) => b,
        };
        let mut content = Vec::new();
        for block in blocks {
            match block {
                WireBlock::Text { text } => content.push(ContentPart::text(text.clone())),
                WireBlock::ToolUse { id, name, input } if role == Role::Assistant => {
                    content.push(ContentPart::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: input.clone(),
                    })
                }
                WireBlock::ToolResult {
                    tool_use_id,
                    content: result,
                    is_error,
                } if role == Role::User => messages.push(Message::tool_result(
                    tool_use_id.clone(),
                    result.as_ref().map(WireContent::text).unwrap_or_default(),
                    *is_error,
                )),
                WireBlock::ToolUse { .. } => {
                    return Err(ApiError::BadRequest(
                        "`tool_use` blocks belong in assistant messages".into(),
                    ))
                }
                WireBlock::ToolResult { .. } => {
                    return Err(ApiError::BadRequest(
                        "`tool_result` blocks belong in user messages".into(),
                    ))
                }
                WireBlock::Unsupported => {}
            }
        }
        if !content.is_empty() {
            messages.push(Message { role, content });
        }
    }
    if messages.is_empty() {
        return Err(ApiError::BadRequest("`messages` is empty".into()));
    }
    Ok(ChatRequest {
        model: String::new(),
        system: req.system.as_ref().map(WireContent::text),
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| ToolDef {
                name: t.name.clone(),
                description: t.description.clone().unwrap_or_default(),
                parameters: t
                    .input_schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
            .collect(),
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            WireToolChoice::Auto => ToolChoice::Auto,
            WireToolChoice::Any => ToolChoice::Required,
            WireToolChoice::None => ToolChoice::None,
            WireToolChoice::Tool { name } => ToolChoice::Tool(name.clone()),
        }),
    })
}

fn stop_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::Other(_) => "end_turn",
        StopReason::ToolUse => "tool_use",
        StopReason::MaxTokens => "max_tokens",
    }
}

fn message_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::getrandom(&mut bytes);
    format!("msg_{}", hex::encode(bytes))
}

fn event(kind: &str, data: Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

pub async fn messages(
    State(state): State<ServeState>,
    Json(body): Json<MessagesRequest>,
) -> Result<Response, ApiError> {
    let request = to_chat_request(&body)?;
    let preferred = preferred_provider(&state, &body.model);
    let resolved = state
        .app
        .resolve(preferred.as_deref(), None)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let model = resolved.model.clone();
    let stream = resolved
        .provider
        .stream(&request)
        .await
        .map_err(|e| ApiError::Upstream(e.to_string()))?;
    let id = message_id();
    if !body.stream {
        let output = collect(stream)
            .await
            .map_err(|e| ApiError::Upstream(e.to_string()))?;
        let mut content = Vec::new();
        let text = output.message.text();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        for (id, name, input) in output.message.tool_calls() {
            content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
        let usage = output.usage.unwrap_or_default();
        return Ok(Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason(&output.stop),
            "stop_sequence": null,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        }))
        .into_response());
    }

    let start = event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }}),
    );
    let mut blocks = Blocks::default();
    let body_stream = stream.flat_map(move |item| futures_util::stream::iter(blocks.on(item)));
    let events = futures_util::stream::once(async move { start })
        .chain(body_stream)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events).into_response())
}

/// The content-block state of one streamed message.
#[derive(Default)]
struct Blocks {
    /// Index of the next block.
    next: usize,
    /// Whether a text block is open (its index is `next - 1`).
    text_open: bool,
    usage: Usage,
    failed: bool,
}

impl Blocks {
    fn close_text(&mut self, out: &mut Vec<Event>) {
        if self.text_open {
            self.text_open = false;
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next - 1}),
            ));
        }
    }

    fn on(&mut self, item: Result<StreamEvent, picode_llm::LlmError>) -> Vec<Event> {
        let mut out = Vec::new();
        match item {
            Ok(StreamEvent::TextDelta(text)) => {
                if !self.text_open {
                    self.text_open = true;
                    out.push(event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": self.next,
                               "content_block": {"type": "text", "text": ""}}),
                    ));
                    self.next += 1;
                }
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.next - 1,
                           "delta": {"type": "text_delta", "text": text}}),
                ));
            }
            Ok(StreamEvent::ToolCall {
                id,
                name,
                arguments,
            }) => {
                self.close_text(&mut out);
                let index = self.next;
                self.next += 1;
                out.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index,
                           "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                ));
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": arguments.to_string()}}),
                ));
                out.push(event(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
            }
            Ok(StreamEvent::Usage(u)) => self.usage = u,
            Ok(StreamEvent::Provider(_)) => {}
            Ok(StreamEvent::Done(stop)) => {
                self.close_text(&mut out);
                out.push(event(
                    "message_delta",
                    json!({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason(&stop), "stop_sequence": null},
                           "usage": {"input_tokens": self.usage.input_tokens,
                                     "output_tokens": self.usage.output_tokens}}),
                ));
                out.push(event("message_stop", json!({"type": "message_stop"})));
            }
            Err(e) if !self.failed => {
                self.failed = true;
                tracing::warn!(error = %e, "stream failed after it started");
                out.push(event(
                    "error",
                    json!({"type": "error", "error": {"type": "api_error",
                           "message": "the model stream broke off"}}),
                ));
            }
            Err(_) => {}
        }
        out
    }
}
