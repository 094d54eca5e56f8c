//! The internal conversation model: what PiCode says to and hears from any
//! provider. Provider wire formats are converted to and from these types in
//! each adapter's `convert` module, so nothing else in PiCode sees them.

use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::LlmError;

/// Who authored a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions; most adapters move these into the provider's system slot.
    System,
    /// The person using PiCode (and, for some providers, tool results).
    User,
    /// The model.
    Assistant,
    /// Results of tool calls, sent back to the model.
    Tool,
}

/// One piece of a message. A message can mix text with tool calls (assistant)
/// or tool results (tool / user), which is how both providers model it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A request by the model to run a tool.
    ToolCall {
        /// Provider-assigned id, echoed back in the matching [`ContentPart::ToolResult`].
        id: String,
        /// Tool name as offered in [`ToolDef::name`].
        name: String,
        /// Arguments, normally a JSON object. When the model produced text
        /// that is not valid JSON this is a JSON string holding that raw
        /// text, so the tool layer can reject it and tell the model why.
        arguments: serde_json::Value,
    },
    /// The outcome of running a tool.
    ToolResult {
        /// The [`ContentPart::ToolCall::id`] this answers.
        call_id: String,
        /// What the tool printed or returned.
        content: String,
        /// Whether the tool failed; providers that support it are told so.
        is_error: bool,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }
}

/// One turn of the conversation. Serializable because sessions are stored as
/// JSON; the format is ours and stable, not any provider's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Ordered parts.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// A message made of one text part.
    pub fn new_text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![ContentPart::text(text)],
        }
    }

    /// A user message with text.
    pub fn user(text: impl Into<String>) -> Self {
        Self::new_text(Role::User, text)
    }

    /// A system message with text.
    pub fn system(text: impl Into<String>) -> Self {
        Self::new_text(Role::System, text)
    }

    /// An assistant message with text only.
    pub fn assistant_text(text: impl Into<String>) -> Self {
        Self::new_text(Role::Assistant, text)
    }

    /// A tool message carrying one result.
    pub fn tool_result(
        call_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        Message {
            role: Role::Tool,
            content: vec![ContentPart::ToolResult {
                call_id: call_id.into(),
                content: content.into(),
                is_error,
            }],
        }
    }

    /// All text parts joined together (tool calls and results left out).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                out.push_str(text);
            }
        }
        out
    }

    /// The tool calls in this message, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = (&str, &str, &serde_json::Value)> {
        self.content.iter().filter_map(|part| match part {
            ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => Some((id.as_str(), name.as_str(), arguments)),
            _ => None,
        })
    }
}

/// A tool the model may call. `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    /// Name the model uses to call it.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// Everything a provider needs for one model turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model id; empty means the provider's configured model.
    pub model: String,
    /// System prompt, sent in the provider's system slot.
    pub system: Option<String>,
    /// Conversation so far.
    pub messages: Vec<Message>,
    /// Tools offered for this turn.
    pub tools: Vec<ToolDef>,
    /// Output limit; adapters that require one fill in a default.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Whether and which tool the model must call; `None` leaves it to the
    /// provider's default (the model decides). Not sent when no tools are
    /// offered natively.
    pub tool_choice: Option<ToolChoice>,
}

/// How the model is told to use tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// The model must call some tool (OpenAI `required`, Anthropic `any`).
    Required,
    /// The model must not call tools.
    None,
    /// The model must call this tool.
    Tool(String),
}

/// Token counts for one turn, as reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (for Anthropic including cache reads and writes).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// True when the provider reported no counts and these were estimated
    /// from text length (about four characters a token). Some
    /// OpenAI-compatible servers never send usage while streaming.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl Usage {
    /// Sum of two usages, for session totals.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.estimated |= other.estimated;
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Finished its answer.
    EndTurn,
    /// Wants tools run; the turn carried at least one [`StreamEvent::ToolCall`].
    ToolUse,
    /// Hit the output limit.
    MaxTokens,
    /// Anything else, with the provider's own word for it.
    Other(String),
}

/// What a provider stream yields, in order: text deltas and completed tool
/// calls interleaved, then at most one `Usage`, then exactly one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A piece of answer text (reasoning sections already removed).
    TextDelta(String),
    /// A tool call, emitted once its arguments are complete.
    ToolCall {
        /// Call id (generated when the provider sent none).
        id: String,
        /// Tool name.
        name: String,
        /// Parsed arguments; see [`ContentPart::ToolCall::arguments`].
        arguments: serde_json::Value,
    },
    /// Token usage for the turn.
    Usage(Usage),
    /// The provider that answers, when a fallback chain moved past its first
    /// one; sent before that provider's first event, so that its usage can
    /// be priced at its own rates.
    Provider(String),
    /// The turn is complete. A stream that ends without this yielded an error.
    Done(StopReason),
}

/// A running model turn.
///
/// Dropping the stream drops the underlying HTTP response, which closes the
/// connection and so cancels generation on the provider side; this is how
/// the agent implements Ctrl-C.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_json_round_trip_is_stable() {
        let msg = Message {
            role: Role::Assistant,
            content: vec![
                ContentPart::text("let me look"),
                ContentPart::ToolCall {
                    id: "c1".into(),
                    name: "read".into(),
                    arguments: serde_json::json!({"path": "a.rs"}),
                },
            ],
        };
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "let me look"},
                    {"type": "tool_call", "id": "c1", "name": "read", "arguments": {"path": "a.rs"}}
                ]
            })
        );
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.text(), "let me look");
        assert_eq!(back.tool_calls().count(), 1);
    }
}
