//! Tool calls written as Python function calls: `read_file(path="a.txt")`,
//! or a list of them, `[read_file(path="a.txt"), grep(pattern="x")]`. Llama
//! 3.2 is trained to answer this way and many small models drift into it;
//! vLLM's `pythonic` parser reads the same shape. Keyword arguments may use
//! `=` or `:` (`read_file(filename: "hello.txt")` was seen from SmolLM2);
//! values are Python literals (strings in either quote, numbers,
//! `True`/`False`/`None`, lists, dicts) or, failing that, the bare text up
//! to the next comma. A positional argument is kept under the key `_0`,
//! `_1`, ...; [`fit_arguments`] maps a lone one onto the tool's only
//! required parameter.
//!
//! Only names of offered tools are taken, so prose like `print(x)` is left
//! alone.

use serde_json::{Map, Value};

use crate::model::ToolDef;
use crate::text_tools::TextToolCall;

/// Finds `name(...)` calls of known tools. Returns each call with the byte
/// range it covers in `text`.
pub(crate) fn find_calls(
    text: &str,
    known_tools: &[String],
) -> Vec<(std::ops::Range<usize>, TextToolCall)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]);
        if !starts_word || !is_ident_start(bytes[i]) {
            i += 1;
            continue;
        }
        let name_end = i + bytes[i..].iter().take_while(|b| is_ident(**b)).count();
        let name = &text[i..name_end];
        let open = name_end + count_spaces(&bytes[name_end..]);
        if bytes.get(open) != Some(&b'(') || !known_tools.iter().any(|t| t == name) {
            i = name_end;
            continue;
        }
        let mut parser = Parser {
            s: text,
            pos: open + 1,
        };
        match parser.arguments() {
            Some(arguments) => {
                out.push((
                    i..parser.pos,
                    TextToolCall {
                        name: name.to_owned(),
                        arguments: Value::Object(arguments),
                    },
                ));
                i = parser.pos;
            }
            None => i = name_end,
        }
    }
    out
}

/// Puts a lone argument under the tool's only required parameter when its
/// key is not one of the tool's parameters: `read_file(filename="a")` or
/// `read_file("a")` for a tool whose one required parameter is `path`.
/// Anything else is left as it is, for the tool layer to judge.
pub fn fit_arguments(arguments: &mut Value, tool: &ToolDef) {
    let Value::Object(args) = arguments else {
        return;
    };
    if args.len() != 1 {
        return;
    }
    let required: Vec<&str> = tool.parameters["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let [only] = required.as_slice() else {
        return;
    };
    let properties = tool.parameters["properties"].as_object();
    let (key, value) = args.iter().next().expect("one argument");
    if key == only || properties.is_some_and(|p| p.contains_key(key)) {
        return;
    }
    let value = value.clone();
    args.clear();
    args.insert((*only).to_owned(), value);
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn count_spaces(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| **b == b' ').count()
}

/// A small recursive-descent reader of Python call arguments.
struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// After `(`: keyword and positional arguments up to `)`.
    fn arguments(&mut self) -> Option<Map<String, Value>> {
        let mut args = Map::new();
        let mut positional = 0;
        loop {
            if self.eat(b')') {
                return Some(args);
            }
            self.skip_ws();
            let start = self.pos;
            let key = self.keyword();
            let value = self.value(b')')?;
            match key {
                Some(key) => {
                    args.insert(key, value);
                }
                None => {
                    debug_assert!(self.pos > start);
                    args.insert(format!("_{positional}"), value);
                    positional += 1;
                }
            }
            if self.eat(b',') {
                continue;
            }
            if self.eat(b')') {
                return Some(args);
            }
            return None;
        }
    }

    /// `name=` or `name:` (not `==`); the position is restored otherwise.
    fn keyword(&mut self) -> Option<String> {
        let start = self.pos;
        let bytes = self.s.as_bytes();
        if !self.peek().is_some_and(is_ident_start) {
            return None;
        }
        let end = start + bytes[start..].iter().take_while(|b| is_ident(**b)).count();
        self.pos = end;
        self.skip_ws();
        let sep = self.peek();
        let next = bytes.get(self.pos + 1).copied();
        if (sep == Some(b'=') && next != Some(b'=')) || sep == Some(b':') {
            self.pos += 1;
            return Some(self.s[start..end].to_owned());
        }
        self.pos = start;
        None
    }

    /// A Python literal, or the bare text up to `,` or `close`.
    fn value(&mut self, close: u8) -> Option<Value> {
        self.skip_ws();
        match self.peek()? {
            b'"' | b'\'' => self.string().map(Value::String),
            b'[' | b'(' => {
                let end = if self.peek() == Some(b'[') {
                    b']'
                } else {
                    b')'
                };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(end) {
                        return Some(Value::Array(items));
                    }
                    items.push(self.value(end)?);
                    if !self.eat(b',') {
                        return self.eat(end).then_some(Value::Array(items));
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                let mut map = Map::new();
                loop {
                    if self.eat(b'}') {
                        return Some(Value::Object(map));
                    }
                    self.skip_ws();
                    let key = match self.value(b':')? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    if !self.eat(b':') {
                        return None;
                    }
                    map.insert(key, self.value(b'}')?);
                    if !self.eat(b',') {
                        return self.eat(b'}').then_some(Value::Object(map));
                    }
                }
            }
            _ => Some(self.bare(close)),
        }
    }

    /// A quoted string with the usual backslash escapes.
    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                c if c as u32 == u32::from(quote) => {
                    self.pos += i + 1;
                    return Some(out);
                }
                c => out.push(c),
            }
        }
        None
    }

    /// Numbers, `True`/`False`/`None`, or unquoted text up to a delimiter.
    fn bare(&mut self, close: u8) -> Value {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b',' || b == close || b == b'\n' {
                break;
            }
            self.pos += 1;
        }
        let word = self.s[start..self.pos].trim();
        match word {
            "True" | "true" => Value::Bool(true),
            "False" | "false" => Value::Bool(false),
            "None" | "null" => Value::Null,
            _ => serde_json::from_str::<serde_json::Number>(word)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(word.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Vec<String> {
        vec!["read_file".into(), "grep".into()]
    }

    fn calls(text: &str) -> Vec<(String, Value)> {
        find_calls(text, &known())
            .into_iter()
            .map(|(_, c)| (c.name, c.arguments))
            .collect()
    }

    #[test]
    fn keyword_calls_in_either_separator_and_quote() {
        assert_eq!(
            calls(r#"read_file(path="hello.txt")"#),
            [("read_file".into(), json!({"path": "hello.txt"}))]
        );
        assert_eq!(
            calls(r#"I will read it: read_file(filename: "hello.txt")"#),
            [("read_file".into(), json!({"filename": "hello.txt"}))]
        );
        assert_eq!(
            calls(
                r#"[read_file(path='a "b".txt'), grep(pattern="fn main", max_results=5, literal=True)]"#
            ),
            [
                ("read_file".into(), json!({"path": "a \"b\".txt"})),
                (
                    "grep".into(),
                    json!({"pattern": "fn main", "max_results": 5, "literal": true})
                )
            ]
        );
    }

    #[test]
    fn positional_lists_dicts_and_bare_words() {
        assert_eq!(
            calls(r#"read_file("src/lib.rs")"#),
            [("read_file".into(), json!({"_0": "src/lib.rs"}))]
        );
        assert_eq!(
            calls(r#"grep(pattern=x, paths=["a", 'b'], opts={"i": None})"#),
            [(
                "grep".into(),
                json!({"pattern": "x", "paths": ["a", "b"], "opts": {"i": null}})
            )]
        );
    }

    #[test]
    fn unknown_names_and_unclosed_calls_are_prose() {
        assert!(calls("print(x) and myread_file(path='a')").is_empty());
        assert!(calls("read_file(path='a'").is_empty());
        assert!(calls("call read_file when needed").is_empty());
    }

    #[test]
    fn a_lone_or_misnamed_argument_fits_the_only_required_parameter() {
        let tool = ToolDef {
            name: "read_file".into(),
            description: String::new(),
            parameters: json!({"type": "object",
                "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}},
                "required": ["path"]}),
        };
        for given in [
            json!({"filename": "a"}),
            json!({"_0": "a"}),
            json!({"path": "a"}),
        ] {
            let mut args = given;
            fit_arguments(&mut args, &tool);
            assert_eq!(args, json!({"path": "a"}));
        }
        // A known optional parameter, or two arguments, are left alone.
        for given in [json!({"offset": 3}), json!({"file": "a", "x": 1})] {
            let mut args = given.clone();
            fit_arguments(&mut args, &tool);
            assert_eq!(args, given);
        }
    }
}
