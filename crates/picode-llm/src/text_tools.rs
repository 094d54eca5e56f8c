//! Tool calls written as text, and reasoning sections to hide.
//!
//! Local models served through OpenAI-compatible servers often ignore the
//! native tool-calling fields and write the call into their answer instead,
//! in one of a few habitual shapes: `<tool_call>{...}</tool_call>` (Qwen,
//! Hermes), a fenced ```` ```json ```` block, a bare JSON object with
//! `name` and `arguments` (or `parameters`), or a Python-style call
//! `read_file(path="a.txt")` (Llama 3.2, many small models; see `pythonic`). Reasoning models also wrap their
//! thoughts in `<think>...</think>`, which is not part of the answer. This
//! module recovers the calls and strips the reasoning, both for a whole text
//! ([`parse_tool_calls`], [`strip_think`]) and incrementally while streaming
//! ([`TextFilter`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// A tool call found in text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToolCall {
    /// Tool name.
    pub name: String,
    /// Arguments; a JSON string holding the raw text if it was not JSON.
    pub arguments: Value,
}

/// The result of scanning a model's answer for tool calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedText {
    /// The answer with reasoning and the recognised call blocks removed.
    pub text: String,
    /// Calls in order of appearance.
    pub calls: Vec<TextToolCall>,
}

/// Removes `<think>...</think>` sections. An opening tag that is never
/// closed hides everything after it (the model ran out of tokens while
/// thinking); a closing tag with no opening one hides everything before it
/// (chat templates that open the section themselves).
pub fn strip_think(text: &str) -> String {
    let mut rest = text;
    // A stray closing tag before any opening one ends a section that the
    // template opened.
    if let Some(close) = rest.find(THINK_CLOSE) {
        if rest.find(THINK_OPEN).is_none_or(|open| open > close) {
            rest = &rest[close + THINK_CLOSE.len()..];
        }
    }
    let mut out = String::with_capacity(rest.len());
    while let Some(open) = rest.find(THINK_OPEN) {
        out.push_str(&rest[..open]);
        let after = &rest[open + THINK_OPEN.len()..];
        match after.find(THINK_CLOSE) {
            Some(close) => rest = &after[close + THINK_CLOSE.len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// Finds tool calls written as text. Reasoning is stripped first. Explicit
/// `<tool_call>` blocks are taken whatever tool they name; fenced and bare
/// JSON must name one of `known_tools` (when that list is not empty) and
/// carry `arguments` or `parameters`, so that ordinary JSON in an answer is
/// not mistaken for a call. Only the first shape that yields calls is used.
pub fn parse_tool_calls(text: &str, known_tools: &[String]) -> ParsedText {
    let text = strip_think(text);
    let is_known = |name: &str| known_tools.is_empty() || known_tools.iter().any(|t| t == name);

    // 1. <tool_call> blocks.
    if text.contains(CALL_OPEN) {
        let mut calls = Vec::new();
        let mut visible = String::new();
        let mut rest = text.as_str();
        while let Some(open) = rest.find(CALL_OPEN) {
            visible.push_str(&rest[..open]);
            let after = &rest[open + CALL_OPEN.len()..];
            let (inner, next) = match after.find(CALL_CLOSE) {
                Some(close) => (&after[..close], &after[close + CALL_CLOSE.len()..]),
                None => (after, ""),
            };
            for value in json_values(strip_fence(inner.trim())) {
                calls.extend(calls_from_value(&value, false));
            }
            rest = next;
        }
        visible.push_str(rest);
        if !calls.is_empty() {
            return ParsedText {
                text: visible.trim().to_string(),
                calls,
            };
        }
    }

    // 2. Fenced blocks.
    let mut calls = Vec::new();
    let mut visible = String::new();
    let mut rest = text.as_str();
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        let Some(newline) = after.find('\n') else {
            break;
        };
        let info = after[..newline].trim().to_ascii_lowercase();
        let body = &after[newline + 1..];
        let Some(close) = body.find("```") else { break };
        let found: Vec<_> = if matches!(info.as_str(), "" | "json" | "tool_call" | "tool") {
            json_values(body[..close].trim())
                .iter()
                .flat_map(|v| calls_from_value(v, true))
                .filter(|c| is_known(&c.name))
                .collect()
        } else {
            Vec::new()
        };
        let end = open + 3 + newline + 1 + close + 3;
        if found.is_empty() {
            visible.push_str(&rest[..end]);
        } else {
            visible.push_str(&rest[..open]);
            calls.extend(found);
        }
        rest = &rest[end..];
    }
    visible.push_str(rest);
    if !calls.is_empty() {
        return ParsedText {
            text: visible.trim().to_string(),
            calls,
        };
    }

    // 3. Bare JSON objects (or arrays of them) anywhere in the text.
    let mut calls = Vec::new();
    let mut visible = String::new();
    let mut copied_to = 0;
    let mut i = 0;
    while i < text.len() {
        let c = text.as_bytes()[i];
        if c != b'{' && c != b'[' {
            i += 1;
            continue;
        }
        let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                let end = i + stream.byte_offset();
                let found: Vec<_> = calls_from_value(&value, true)
                    .into_iter()
                    .filter(|c| is_known(&c.name))
                    .collect();
                if !found.is_empty() {
                    visible.push_str(&text[copied_to..i]);
                    copied_to = end;
                    calls.extend(found);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    visible.push_str(&text[copied_to..]);
    if !calls.is_empty() {
        return ParsedText {
            text: visible.trim().to_string(),
            calls,
        };
    }

    // 4. Python-style calls of known tools: `read_file(path="a.txt")`.
    let found = crate::pythonic::find_calls(&text, known_tools);
    if found.is_empty() {
        return ParsedText { text, calls };
    }
    let mut visible = String::new();
    let mut copied_to = 0;
    for (range, call) in found {
        visible.push_str(&text[copied_to..range.start]);
        copied_to = range.end;
        calls.push(call);
    }
    visible.push_str(&text[copied_to..]);
    // What is left of a `[call(), call()]` list is punctuation.
    let visible = visible.trim();
    let visible = if visible.chars().all(|c| "[], \n".contains(c)) {
        ""
    } else {
        visible
    };
    ParsedText {
        text: visible.to_string(),
        calls,
    }
}

/// Drops a surrounding Markdown fence, which models like to put inside
/// `<tool_call>` blocks too.
fn strip_fence(s: &str) -> &str {
    let Some(after) = s.strip_prefix("```") else {
        return s;
    };
    let body = after.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

/// Every JSON value in `s`, one after another (some models put several
/// objects in one block); stops at the first thing that is not JSON.
fn json_values(s: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(s)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

/// Interprets a JSON value as one or more calls. With `strict`, an object
/// must also have an arguments key, which is what tells a call apart from
/// data that happens to have a `name`.
fn calls_from_value(value: &Value, strict: bool) -> Vec<TextToolCall> {
    match value {
        Value::Array(items) => {
            let calls: Vec<_> = items
                .iter()
                .filter_map(|v| v.as_object().and_then(|o| call_from_object(o, strict)))
                .collect();
            // Half-matching arrays are data, not calls.
            if calls.len() == items.len() {
                calls
            } else {
                Vec::new()
            }
        }
        Value::Object(obj) => call_from_object(obj, strict).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn call_from_object(obj: &Map<String, Value>, strict: bool) -> Option<TextToolCall> {
    // OpenAI-shaped `{"function": {"name", "arguments"}}` written as text.
    if let Some(Value::Object(function)) = obj.get("function") {
        return call_from_object(function, strict);
    }
    let name = ["name", "tool", "tool_name", "function"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_str))?
        .trim();
    if name.is_empty() {
        return None;
    }
    let args = ["arguments", "parameters", "input", "args"]
        .iter()
        .find_map(|k| obj.get(*k));
    let arguments = match args {
        None if strict => return None,
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(raw)) => parse_arguments(raw),
        Some(other) => other.clone(),
    };
    Some(TextToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// Parses a tool call's argument text; empty means no arguments, and text
/// that is not JSON is kept as a JSON string so the tool layer can report it.
pub(crate) fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Map::new());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A fresh id for calls whose provider gave none (text calls, some local
/// servers). Unique within the process, which is what conversations need.
pub(crate) fn generate_call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "call_{nanos:08x}{:04x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Streaming counterpart of [`strip_think`]: feed it text deltas, get back
/// the text to show. With `hide_tool_calls` it also hides `<tool_call>`
/// blocks, which the caller parses from the full text at the end; fenced and
/// bare JSON calls cannot be recognised before they are complete and so
/// stay visible. Tags split across deltas are held back until decided.
#[derive(Debug, Default)]
pub struct TextFilter {
    pending: String,
    state: FilterState,
    hide_tool_calls: bool,
    emitted_any: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FilterState {
    #[default]
    Text,
    Think,
    ToolCall,
}

impl TextFilter {
    /// A filter; `hide_tool_calls` also hides `<tool_call>` blocks.
    pub fn new(hide_tool_calls: bool) -> Self {
        TextFilter {
            hide_tool_calls,
            ..Self::default()
        }
    }

    /// Feeds a delta; returns the visible text it completes (may be empty).
    pub fn push(&mut self, delta: &str) -> String {
        self.pending.push_str(delta);
        let mut out = String::new();
        loop {
            match self.state {
                FilterState::Text => {
                    let mut found: Option<(usize, &str, FilterState)> = None;
                    let mut consider = |tag: &'static str, state| {
                        if let Some(i) = self.pending.find(tag) {
                            if found.is_none_or(|(j, _, _)| i < j) {
                                found = Some((i, tag, state));
                            }
                        }
                    };
                    consider(THINK_OPEN, FilterState::Think);
                    if self.hide_tool_calls {
                        consider(CALL_OPEN, FilterState::ToolCall);
                    }
                    match found {
                        Some((i, tag, state)) => {
                            out.push_str(&self.pending[..i]);
                            self.pending.drain(..i + tag.len());
                            self.state = state;
                        }
                        None => {
                            let keep = self.partial_tag_len();
                            let cut = self.pending.len() - keep;
                            out.push_str(&self.pending[..cut]);
                            self.pending.drain(..cut);
                            break;
                        }
                    }
                }
                FilterState::Think | FilterState::ToolCall => {
                    let close = if self.state == FilterState::Think {
                        THINK_CLOSE
                    } else {
                        CALL_CLOSE
                    };
                    match self.pending.find(close) {
                        Some(i) => {
                            self.pending.drain(..i + close.len());
                            self.state = FilterState::Text;
                        }
                        None => {
                            let keep = suffix_prefix_len(&self.pending, close);
                            let cut = self.pending.len() - keep;
                            self.pending.drain(..cut);
                            break;
                        }
                    }
                }
            }
        }
        self.visible(out)
    }

    /// Ends the input, returning held-back text. An unclosed section stays hidden.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        if self.state == FilterState::Text {
            self.visible(rest)
        } else {
            String::new()
        }
    }

    /// Leading whitespace (typically what followed `</think>`) is dropped
    /// until the first visible character.
    fn visible(&mut self, mut text: String) -> String {
        if !self.emitted_any {
            let trimmed = text.trim_start().len();
            text.drain(..text.len() - trimmed);
            self.emitted_any = !text.is_empty();
        }
        text
    }

    fn partial_tag_len(&self) -> usize {
        let mut keep = suffix_prefix_len(&self.pending, THINK_OPEN);
        if self.hide_tool_calls {
            keep = keep.max(suffix_prefix_len(&self.pending, CALL_OPEN));
        }
        keep
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn suffix_prefix_len(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && s.ends_with(&tag[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools() -> Vec<String> {
        vec!["read_file".into(), "bash".into()]
    }

    #[test]
    fn think_sections_are_stripped() {
        assert_eq!(strip_think("<think>hmm</think>\n\nHello"), "Hello");
        assert_eq!(strip_think("a<think>x</think>b<think>y</think>c"), "abc");
        assert_eq!(strip_think("Answer<think>never closed"), "Answer");
        assert_eq!(strip_think("<think>only thinking"), "");
        assert_eq!(
            strip_think("template opened it</think>The answer"),
            "The answer"
        );
        assert_eq!(strip_think("no tags"), "no tags");
    }

    #[test]
    fn tool_call_tags() {
        let text = "<think>I should read it</think>Let me look.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a.rs\"}}\n</tool_call>\n<tool_call>{\"name\":\"bash\",\"arguments\":\"{\\\"cmd\\\":\\\"ls\\\"}\"}</tool_call>";
        let parsed = parse_tool_calls(text, &tools());
        assert_eq!(parsed.text, "Let me look.");
        assert_eq!(
            parsed.calls,
            vec![
                TextToolCall {
                    name: "read_file".into(),
                    arguments: json!({"path": "a.rs"})
                },
                TextToolCall {
                    name: "bash".into(),
                    arguments: json!({"cmd": "ls"})
                },
            ]
        );
    }

    #[test]
    fn unclosed_tool_call_tag_and_fence_inside() {
        let parsed = parse_tool_calls(
            "<tool_call>\n```json\n{\"name\": \"bash\", \"parameters\": {\"cmd\": \"pwd\"}}\n```",
            &tools(),
        );
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].arguments, json!({"cmd": "pwd"}));
        assert_eq!(parsed.text, "");
    }

    #[test]
    fn fenced_json_block() {
        let text = "I'll run it:\n```json\n{\"name\": \"bash\", \"arguments\": {\"cmd\": \"ls\"}}\n```\nThen we see.";
        let parsed = parse_tool_calls(text, &tools());
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].name, "bash");
        assert_eq!(parsed.text, "I'll run it:\n\nThen we see.");
    }

    #[test]
    fn fenced_json_that_is_not_a_call_stays() {
        let text = "Config:\n```json\n{\"name\": \"my-app\", \"version\": 1}\n```";
        let parsed = parse_tool_calls(text, &tools());
        assert!(parsed.calls.is_empty());
        assert_eq!(parsed.text, text);
    }

    #[test]
    fn bare_json_objects() {
        let parsed = parse_tool_calls(
            "{\"name\": \"read_file\", \"parameters\": {\"path\": \"x\"}}",
            &tools(),
        );
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].arguments, json!({"path": "x"}));
        assert_eq!(parsed.text, "");

        let parsed = parse_tool_calls(
            "Sure. {\"function\": {\"name\": \"bash\", \"arguments\": \"{}\"}} done",
            &tools(),
        );
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].arguments, json!({}));
        assert_eq!(parsed.text, "Sure.  done");
    }

    #[test]
    fn bare_json_naming_unknown_tool_or_without_arguments_is_text() {
        for text in [
            "{\"name\": \"delete_everything\", \"arguments\": {}}",
            "{\"name\": \"bash\"}",
            "The object {\"a\": [1, 2]} is data.",
        ] {
            let parsed = parse_tool_calls(text, &tools());
            assert!(parsed.calls.is_empty(), "{text}");
            assert_eq!(parsed.text, text);
        }
    }

    #[test]
    fn invalid_argument_json_is_kept_as_a_string() {
        let parsed = parse_tool_calls(
            "<tool_call>{\"name\": \"bash\", \"arguments\": \"{not json\"}</tool_call>",
            &tools(),
        );
        assert_eq!(parsed.calls[0].arguments, json!("{not json"));
    }

    fn filter_all(deltas: &[&str], hide: bool) -> String {
        let mut f = TextFilter::new(hide);
        let mut out: String = deltas.iter().map(|d| f.push(d)).collect();
        out.push_str(&f.finish());
        out
    }

    #[test]
    fn filter_strips_think_split_across_deltas() {
        assert_eq!(
            filter_all(
                &["<th", "ink>rea", "soning</th", "ink>\n\nHel", "lo <", "b>"],
                false
            ),
            "Hello <b>"
        );
        assert_eq!(filter_all(&["Hi<think>forever"], false), "Hi");
        // Every split point of a sample gives the same visible text.
        let text = "<think>x</think>Answer <tool_call>{\"name\":\"bash\"}</tool_call> end<";
        for i in 1..text.len() {
            assert_eq!(
                filter_all(&[&text[..i], &text[i..]], true),
                "Answer  end<",
                "split {i}"
            );
        }
        assert_eq!(
            filter_all(&[text], false),
            "Answer <tool_call>{\"name\":\"bash\"}</tool_call> end<"
        );
    }
}
