//! Context compaction: older turns are replaced by a summary the model
//! writes, the most recent turns are kept verbatim.
//!
//! The cut is always made at the start of a user turn, so a tool call is
//! never separated from its result (providers reject that). The summary goes
//! in as a user message followed by a short assistant acknowledgement, which
//! keeps the user/assistant alternation that Anthropic requires.

use picode_llm::{collect, ChatRequest, ContentPart, LlmError, Message, Provider, Role, Usage};

use crate::store::StoredMessage;

const SUMMARY_PROMPT: &str = "You are compacting the history of a coding session between a user \
and an AI coding assistant so the session can continue in a smaller context. Write a concise \
summary that keeps everything needed to continue: the user's goals and constraints, decisions \
made, files read or changed (with paths), commands run and their outcomes, errors still open, \
and what was about to happen next. Use short bullet points. Do not invent anything.";

/// Marks the summary message so it is recognisable in a stored session.
pub const SUMMARY_HEADER: &str = "[Summary of the earlier conversation]";

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("nothing to compact yet: the conversation is only the most recent turns")]
    NothingToCompact,
    #[error("the model could not summarise: {0}")]
    Model(#[from] LlmError),
    #[error("the model returned an empty summary")]
    EmptySummary,
}

/// The result of a compaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// Usage of the summarising call, when reported.
    pub usage: Option<Usage>,
}

/// A rough token count: about four characters per token, plus a little per
/// message for the framing. Good enough to decide when to compact; the
/// provider's own count (when it reports one) takes precedence.
pub fn estimate_tokens<'a>(system: &str, messages: impl Iterator<Item = &'a Message>) -> u64 {
    let mut chars = system.len();
    let mut count = 0;
    for m in messages {
        count += 1;
        for part in &m.content {
            chars += match part {
                ContentPart::Text { text } => text.len(),
                ContentPart::ToolCall {
                    name, arguments, ..
                } => name.len() + arguments.to_string().len(),
                ContentPart::ToolResult { content, .. } => content.len(),
            };
        }
    }
    (chars / 4) as u64 + count * 4
}

/// Index of the first message to keep verbatim: the start of the
/// `keep_turns`-th most recent user turn. `None` when there is nothing older.
fn split_point(history: &[StoredMessage], keep_turns: usize) -> Option<usize> {
    let starts: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            m.message.role == Role::User
                && m.message
                    .content
                    .iter()
                    .all(|p| matches!(p, ContentPart::Text { .. }))
        })
        .map(|(i, _)| i)
        .collect();
    let keep = keep_turns.max(1);
    if starts.len() <= keep {
        return None;
    }
    let cut = starts[starts.len() - keep];
    (cut > 0).then_some(cut)
}

/// Renders messages as a plain transcript for the summariser, so the request
/// carries no tool-call structure a provider might validate.
fn transcript(messages: &[StoredMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        let who = match m.message.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool => "Tool",
        };
        for part in &m.message.content {
            match part {
                ContentPart::Text { text } => out.push_str(&format!("{who}: {text}\n")),
                ContentPart::ToolCall {
                    name, arguments, ..
                } => out.push_str(&format!("{who} called {name} {arguments}\n")),
                ContentPart::ToolResult {
                    content, is_error, ..
                } => {
                    let label = if *is_error { "error" } else { "result" };
                    // Long outputs matter less than the fact they happened.
                    let short: String = content.chars().take(2000).collect();
                    out.push_str(&format!("{who} {label}: {short}\n"));
                }
            }
        }
    }
    out
}

/// Summarises everything before the kept turns with `provider`.
pub async fn compact(
    provider: &dyn Provider,
    history: &[StoredMessage],
    keep_turns: usize,
) -> Result<(Vec<StoredMessage>, Option<Usage>), CompactError> {
    let cut = split_point(history, keep_turns).ok_or(CompactError::NothingToCompact)?;
    let (old, recent) = history.split_at(cut);
    let request = ChatRequest {
        model: String::new(),
        system: Some(SUMMARY_PROMPT.to_owned()),
        messages: vec![Message::user(format!(
            "Summarise this conversation:\n\n{}",
            transcript(old)
        ))],
        tools: Vec::new(),
        max_tokens: Some(2048),
        temperature: None,
        tool_choice: None,
    };
    let output = collect(provider.stream(&request).await?).await?;
    let summary = output.message.text();
    if summary.trim().is_empty() {
        return Err(CompactError::EmptySummary);
    }
    // Turn 0 marks messages no `/undo` can remove: the summary stands for
    // several turns at once.
    let mut compacted = vec![
        StoredMessage {
            turn: 0,
            message: Message::user(format!("{SUMMARY_HEADER}\n\n{}", summary.trim())),
        },
        StoredMessage {
            turn: 0,
            message: Message::assistant_text("Understood. I will continue from that summary."),
        },
    ];
    compacted.extend_from_slice(recent);
    Ok((compacted, output.usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(turn: u32, message: Message) -> StoredMessage {
        StoredMessage { turn, message }
    }

    fn history() -> Vec<StoredMessage> {
        vec![
            msg(1, Message::user("one")),
            msg(
                1,
                Message {
                    role: Role::Assistant,
                    content: vec![ContentPart::ToolCall {
                        id: "c".into(),
                        name: "read_file".into(),
                        arguments: serde_json::json!({"path": "a"}),
                    }],
                },
            ),
            msg(1, Message::tool_result("c", "text", false)),
            msg(1, Message::assistant_text("done one")),
            msg(2, Message::user("two")),
            msg(2, Message::assistant_text("done two")),
            msg(3, Message::user("three")),
            msg(3, Message::assistant_text("done three")),
        ]
    }

    #[test]
    fn split_keeps_whole_recent_turns() {
        let h = history();
        assert_eq!(split_point(&h, 1), Some(6));
        assert_eq!(split_point(&h, 2), Some(4));
        assert_eq!(split_point(&h, 3), None);
    }

    #[test]
    fn estimate_grows_with_content() {
        let h = history();
        let small = estimate_tokens("", h.iter().take(1).map(|m| &m.message));
        let big = estimate_tokens("", h.iter().map(|m| &m.message));
        assert!(big > small);
        assert!(transcript(&h).contains("called read_file"));
    }
}
