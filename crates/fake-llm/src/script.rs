//! What the fake answers: a queue of scripted turns, each consumed by one
//! chat request. Scripts are plain data so that the binary can read them
//! from JSON or TOML files as well as tests building them in code.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One scripted answer, plus how to deliver it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    /// What to answer.
    #[serde(flatten)]
    pub reply: Reply,
    /// Split text and each tool call's arguments into this many chunks.
    /// Unset: text goes out a word at a time, arguments in 3 pieces.
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Wait this long before sending anything (headers included).
    #[serde(default)]
    pub first_byte_delay_ms: u64,
    /// Wait this long between stream events.
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// Token counts to report; unset gives fixed small numbers.
    #[serde(default)]
    pub usage: Option<ScriptUsage>,
}

/// The kinds of answer the fake can give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A plain text answer.
    Text {
        /// The answer.
        text: String,
    },
    /// Tool calls, optionally preceded by text.
    ToolCalls {
        /// Text before the calls.
        #[serde(default)]
        text: Option<String>,
        /// The calls.
        calls: Vec<ScriptedCall>,
    },
    /// An HTTP error instead of an answer.
    Error {
        /// Status code, e.g. 429 or 500.
        status: u16,
        /// Error message put in the provider's error body.
        #[serde(default)]
        message: Option<String>,
        /// `Retry-After` header value, e.g. `"1"` or an HTTP date.
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// A text answer whose connection is closed after `after_events` stream
    /// events, without the end marker.
    CutShort {
        /// The answer that would have been sent.
        text: String,
        /// Events sent before the connection is dropped.
        after_events: usize,
    },
    /// A text answer with a chunk that is not JSON after the text.
    Malformed {
        /// Text sent before the bad chunk.
        #[serde(default)]
        text: String,
        /// The bad `data:` payload.
        bad: String,
    },
    /// Answers with the text of the last user message.
    Echo,
}

/// A tool call to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptedCall {
    /// Call id; unset gives a generated one.
    #[serde(default)]
    pub id: Option<String>,
    /// Tool name.
    pub name: String,
    /// Arguments object.
    pub arguments: Value,
}

/// Reported token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// A script file: turns served in order, then `default` forever (if set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScriptFile {
    /// Turns, consumed one per chat request.
    #[serde(default)]
    pub turns: Vec<Script>,
    /// Served when `turns` is used up.
    #[serde(default)]
    pub default: Option<Script>,
}

impl Script {
    fn new(reply: Reply) -> Self {
        Script {
            reply,
            chunks: None,
            first_byte_delay_ms: 0,
            chunk_delay_ms: 0,
            usage: None,
        }
    }

    /// A text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Reply::Text { text: text.into() })
    }

    /// One tool call.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Self::tool_calls(vec![ScriptedCall {
            id: None,
            name: name.into(),
            arguments,
        }])
    }

    /// Several tool calls.
    pub fn tool_calls(calls: Vec<ScriptedCall>) -> Self {
        Self::new(Reply::ToolCalls { text: None, calls })
    }

    /// An HTTP error with the given status.
    pub fn error(status: u16) -> Self {
        Self::new(Reply::Error {
            status,
            message: None,
            retry_after: None,
        })
    }

    /// A stream closed after `after_events` events.
    pub fn cut_short(text: impl Into<String>, after_events: usize) -> Self {
        Self::new(Reply::CutShort {
            text: text.into(),
            after_events,
        })
    }

    /// Text followed by a malformed chunk.
    pub fn malformed(text: impl Into<String>, bad: impl Into<String>) -> Self {
        Self::new(Reply::Malformed {
            text: text.into(),
            bad: bad.into(),
        })
    }

    /// Echo the last user message.
    pub fn echo() -> Self {
        Self::new(Reply::Echo)
    }

    /// Text before tool calls (tool-call replies only).
    pub fn with_text(mut self, before: impl Into<String>) -> Self {
        if let Reply::ToolCalls { text, .. } = &mut self.reply {
            *text = Some(before.into());
        }
        self
    }

    /// Sets the `Retry-After` header (error replies only).
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        if let Reply::Error { retry_after, .. } = &mut self.reply {
            *retry_after = Some(value.into());
        }
        self
    }

    /// Splits text and arguments into `n` chunks.
    pub fn chunks(mut self, n: usize) -> Self {
        self.chunks = Some(n);
        self
    }

    /// Delay before the first byte.
    pub fn first_byte_delay(mut self, delay: Duration) -> Self {
        self.first_byte_delay_ms = delay.as_millis() as u64;
        self
    }

    /// Delay between stream events.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay_ms = delay.as_millis() as u64;
        self
    }

    /// Token counts to report.
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Some(ScriptUsage {
            input_tokens,
            output_tokens,
        });
        self
    }
}

/// Splits `text` into `n` pieces of about equal length (on character
/// boundaries), or word by word (each word with the spaces after it) when
/// `n` is unset. Never returns an empty list for non-empty text.
pub(crate) fn split(text: &str, n: Option<usize>) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let chars: Vec<char> = text.chars().collect();
    match n {
        Some(n) => {
            let n = n.clamp(1, chars.len());
            let base = chars.len() / n;
            let extra = chars.len() % n;
            let mut out = Vec::with_capacity(n);
            let mut start = 0;
            for i in 0..n {
                let len = base + usize::from(i < extra);
                out.push(chars[start..start + len].iter().collect());
                start += len;
            }
            out
        }
        None => {
            let mut out = Vec::new();
            let mut current = String::new();
            let mut in_space = false;
            for c in chars {
                if !c.is_whitespace() && in_space {
                    out.push(std::mem::take(&mut current));
                }
                in_space = c.is_whitespace();
                current.push(c);
            }
            out.push(current);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        assert_eq!(split("Hello big world", None), ["Hello ", "big ", "world"]);
        assert_eq!(split("abcdefg", Some(3)), ["abc", "de", "fg"]);
        assert_eq!(split("ab", Some(5)), ["a", "b"]);
        assert!(split("", Some(2)).is_empty());
    }

    #[test]
    fn scripts_read_from_json_and_toml() {
        let json: ScriptFile = serde_json::from_str(
            r#"{"turns": [{"type": "text", "text": "hi", "chunk_delay_ms": 5},
                          {"type": "error", "status": 429, "retry_after": "1"}],
                "default": {"type": "echo"}}"#,
        )
        .unwrap();
        assert_eq!(
            json.turns[0],
            Script::text("hi").chunk_delay(Duration::from_millis(5))
        );
        assert_eq!(json.turns[1], Script::error(429).retry_after("1"));
        assert_eq!(json.default, Some(Script::echo()));
        let toml: ScriptFile = toml::from_str(
            "[[turns]]\ntype = \"tool_calls\"\ncalls = [{ name = \"bash\", arguments = { cmd = \"ls\" } }]\nchunks = 4\n",
        )
        .unwrap();
        assert_eq!(
            toml.turns[0],
            Script::tool_call("bash", serde_json::json!({"cmd": "ls"})).chunks(4)
        );
    }

    #[test]
    fn example_script_parses() {
        let file: ScriptFile = toml::from_str(include_str!("../scripts/example.toml")).unwrap();
        assert_eq!(file.turns.len(), 4);
        assert_eq!(file.default, Some(Script::echo()));
    }
}
