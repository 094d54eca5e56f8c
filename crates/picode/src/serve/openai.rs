//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and
//! `GET /v1/models`, so any OpenAI client can use PiCode's providers and
//! fallback chain.
//!
//! The wire types here are OpenAI's and stay in this module; requests are
//! converted to `picode-llm`'s model on the way in and back on the way out.
//! The `model` field picks the first provider of the chain: a configured
//! provider name, or a model configured for one; anything else uses the
//! default chain.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use picode_llm::{
    collect, ChatRequest, ContentPart, Message, Role, StopReason, StreamEvent, ToolChoice, ToolDef,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ServeState};

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    /// `"auto"`, `"required"`, `"none"` or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    tool_choice: Option<Value>,
}

/// OpenAI's `tool_choice` → ours.
fn parse_tool_choice(value: Option<&Value>) -> Result<Option<ToolChoice>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            "none" => Ok(Some(ToolChoice::None)),
            other => Err(ApiError::BadRequest(format!(
                "`tool_choice` `{other}` is not one of auto, required, none"
            ))),
        },
        Value::Object(_) => value["function"]["name"]
            .as_str()
            .map(|name| Some(ToolChoice::Tool(name.to_owned())))
            .ok_or_else(|| ApiError::BadRequest("`tool_choice.function.name` is missing".into())),
        _ => Err(ApiError::BadRequest(
            "`tool_choice` has the wrong type".into(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireContent {
    Text(String),
    Parts(Vec<WirePart>),
}

#[derive(Debug, Deserialize)]
struct WirePart {
    #[serde(default)]
    text: Option<String>,
}

impl WireContent {
    fn text(&self) -> String {
        match self {
            WireContent::Text(t) => t.clone(),
            WireContent::Parts(parts) => parts.iter().filter_map(|p| p.text.clone()).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

/// OpenAI request → our model. System messages go to the system slot.
fn to_chat_request(req: &ChatCompletionRequest) -> Result<ChatRequest, ApiError> {
    let mut system: Vec<String> = Vec::new();
    let mut messages = Vec::new();
    for m in &req.messages {
        let text = m
            .content
            .as_ref()
            .map(WireContent::text)
            .unwrap_or_default();
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => messages.push(Message::user(text)),
            "assistant" => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(ContentPart::text(text));
                }
                for call in &m.tool_calls {
                    let arguments = serde_json::from_str(&call.function.arguments)
                        .unwrap_or_else(|_| Value::String(call.function.arguments.clone()));
                    content.push(ContentPart::ToolCall {
                        id: call.id.clone(),
                        name: call.function.name.clone(),
                        arguments,
                    });
                }
                messages.push(Message {
                    role: Role::Assistant,
                    content,
                });
            }
            "tool" => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    ApiError::BadRequest("a `tool` message needs `tool_call_id`".into())
                })?;
                messages.push(Message::tool_result(id, text, false));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported message role `{other}`"
                )))
            }
        }
    }
    if messages.is_empty() {
        return Err(ApiError::BadRequest(
            "`messages` has no user message".into(),
        ));
    }
    Ok(ChatRequest {
        model: String::new(),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| ToolDef {
                name: t.function.name.clone(),
                description: t.function.description.clone().unwrap_or_default(),
                parameters: t
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
            .collect(),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        tool_choice: parse_tool_choice(req.tool_choice.as_ref())?,
    })
}

fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndTurn | StopReason::Other(_) => "stop",
        StopReason::ToolUse => "tool_calls",
        StopReason::MaxTokens => "length",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn completion_id() -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::getrandom(&mut bytes);
    format!("chatcmpl-{}", hex::encode(bytes))
}

/// Which provider goes first for a requested model name.
pub(super) fn preferred_provider(state: &ServeState, model: &str) -> Option<String> {
    let providers = &state.app.config.providers;
    if providers.contains_key(model) {
        return Some(model.to_owned());
    }
    providers
        .iter()
        .find(|(_, p)| p.model == model)
        .map(|(name, _)| name.clone())
}

pub async fn chat_completions(
    State(state): State<ServeState>,
    Json(body): Json<ChatCompletionRequest>,
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
    let id = completion_id();
    let created = unix_now();
    if !body.stream {
        let output = collect(stream)
            .await
            .map_err(|e| ApiError::Upstream(e.to_string()))?;
        let calls: Vec<Value> = output
            .message
            .tool_calls()
            .map(|(id, name, args)| {
                json!({"id": id, "type": "function",
                       "function": {"name": name, "arguments": args.to_string()}})
            })
            .collect();
        let text = output.message.text();
        let mut message = json!({"role": "assistant", "content": text});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        let usage = output.usage.unwrap_or_default();
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(&output.stop)}],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
        }))
        .into_response());
    }

    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let first = futures_util::stream::once({
        let c = chunk.clone();
        async move { c(json!({"role": "assistant", "content": ""}), None) }
    });
    let mut tool_index = 0usize;
    let mut failed = false;
    let body_stream = stream
        .map(move |event| match event {
            Ok(StreamEvent::TextDelta(text)) => Some(chunk(json!({"content": text}), None)),
            Ok(StreamEvent::ToolCall {
                id,
                name,
                arguments,
            }) => {
                let index = tool_index;
                tool_index += 1;
                Some(chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                           "function": {"name": name, "arguments": arguments.to_string()}}]}),
                    None,
                ))
            }
            Ok(StreamEvent::Usage(u)) => {
                let mut c = chunk(json!({}), None);
                c["choices"] = json!([]);
                c["usage"] = json!({
                    "prompt_tokens": u.input_tokens,
                    "completion_tokens": u.output_tokens,
                    "total_tokens": u.input_tokens + u.output_tokens,
                });
                Some(c)
            }
            Ok(StreamEvent::Done(stop)) => Some(chunk(json!({}), Some(finish_reason(&stop)))),
            Ok(StreamEvent::Provider(_)) => None,
            Err(e) if !failed => {
                failed = true;
                tracing::warn!(error = %e, "stream failed after it started");
                Some(json!({"error": {"message": "the model stream broke off", "type": "upstream_error"}}))
            }
            Err(_) => None,
        })
        .filter_map(|c| async move { c });
    let events = first
        .chain(body_stream)
        .map(|c| Ok::<_, Infallible>(Event::default().data(c.to_string())))
        .chain(futures_util::stream::once(async {
            Ok(Event::default().data("[DONE]"))
        }));
    Ok(Sse::new(events).into_response())
}

pub async fn list_models(State(state): State<ServeState>) -> Json<Value> {
    let data: Vec<Value> = state
        .app
        .config
        .providers
        .iter()
        .map(|(name, p)| json!({"id": p.model, "object": "model", "owned_by": name}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}
