//! The prompt-based tool protocol, for models without native tool calling.
//!
//! Tools are described in the system prompt together with the exact format
//! to answer in (`<tool_call>` blocks, which [`crate::text_tools`] parses),
//! and the conversation is rewritten so that it holds text only: earlier
//! calls become the `<tool_call>` text the model would have written, and
//! tool results become user text in `<tool_result>` blocks. The adapters
//! then send no `tools` field at all.

use crate::model::{ChatRequest, ContentPart, Message, Role, ToolChoice, ToolDef};

/// Rewrites `req` for the prompt protocol. Requests without tools pass
/// through unchanged.
pub(crate) fn apply(req: &ChatRequest) -> ChatRequest {
    if req.tools.is_empty() {
        return req.clone();
    }
    let mut tools_prompt = describe_tools(&req.tools);
    // Without a `tool_choice` field, a forced choice is said in words.
    match &req.tool_choice {
        Some(ToolChoice::Required) => {
            tools_prompt.push_str("\n\nYou must call a tool in this answer.")
        }
        Some(ToolChoice::Tool(name)) => tools_prompt.push_str(&format!(
            "\n\nYou must call the tool `{name}` in this answer."
        )),
        Some(ToolChoice::Auto | ToolChoice::None) | None => {}
    }
    let system = match &req.system {
        Some(system) if !system.trim().is_empty() => format!("{system}\n\n{tools_prompt}"),
        _ => tools_prompt,
    };
    ChatRequest {
        model: req.model.clone(),
        system: Some(system),
        messages: req.messages.iter().map(rewrite_message).collect(),
        tools: Vec::new(),
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        tool_choice: None,
    }
}

/// The system-prompt section describing the tools and the answer format.
pub fn describe_tools(tools: &[ToolDef]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou can call tools. Each tool is listed with a JSON Schema of its arguments.\n",
    );
    for tool in tools {
        out.push_str(&format!(
            "\n## {}\n{}\nArguments schema: {}\n",
            tool.name,
            tool.description.trim(),
            tool.parameters
        ));
    }
    out.push_str(
        "\n# How to call a tool\n\n\
         To call a tool, answer with a block in exactly this format, where \"arguments\" \
         is a JSON object matching the tool's schema:\n\n\
         <tool_call>\n{\"name\": \"TOOL_NAME\", \"arguments\": {\"ARGUMENT\": \"VALUE\"}}\n</tool_call>\n\n\
         You may write a short sentence before the block. To call several tools, write \
         several blocks. Write nothing after the last block: the results will come back \
         in a user message, in <tool_result> blocks. When no tool is needed, answer \
         normally without any <tool_call> block.",
    );
    if let Some(example) = one_shot(tools) {
        out.push_str("\n\nFor example:\n\n");
        out.push_str(&example);
    }
    out
}

/// One worked exchange with the first tool: small models follow an example
/// far better than a description of the format.
fn one_shot(tools: &[ToolDef]) -> Option<String> {
    let tool = tools.first()?;
    let params = &tool.parameters;
    let argument = params["required"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|v| v.as_str())
        .or_else(|| {
            params["properties"]
                .as_object()?
                .keys()
                .next()
                .map(String::as_str)
        });
    let arguments = match argument {
        Some(name) => serde_json::json!({ name: example_value(name) }),
        None => serde_json::json!({}),
    };
    // Written by hand so that `name` comes first, as in the format above.
    let call = format!(
        "{{\"name\": {}, \"arguments\": {arguments}}}",
        serde_json::Value::String(tool.name.clone())
    );
    Some(format!(
        "User: Please use {name}.\nAssistant: I will call {name}.\n<tool_call>\n{call}\n</tool_call>",
        name = tool.name
    ))
}

/// A plausible value for an argument, going by its name.
fn example_value(name: &str) -> &'static str {
    match name {
        n if n.contains("path") || n.contains("file") => "README.md",
        n if n.contains("command") || n == "cmd" => "ls",
        n if n.contains("pattern") || n.contains("query") => "TODO",
        _ => "value",
    }
}

fn rewrite_message(msg: &Message) -> Message {
    let mut text = String::new();
    let mut push = |piece: &str| {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(piece);
    };
    for part in &msg.content {
        match part {
            ContentPart::Text { text } => push(text),
            ContentPart::ToolCall {
                name, arguments, ..
            } => {
                let call = serde_json::json!({"name": name, "arguments": arguments});
                push(&format!("<tool_call>\n{call}\n</tool_call>"));
            }
            ContentPart::ToolResult {
                call_id,
                content,
                is_error,
            } => {
                let status = if *is_error { "error" } else { "ok" };
                push(&format!(
                    "<tool_result id=\"{call_id}\" status=\"{status}\">\n{content}\n</tool_result>"
                ));
            }
        }
    }
    let role = match msg.role {
        // Tool results travel as user text in this protocol.
        Role::Tool => Role::User,
        other => other,
    };
    Message::new_text(role, text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_prompt_carries_a_worked_example_that_parses_back() {
        let tools = [ToolDef {
            name: "read_file".into(),
            description: "Read a file".into(),
            parameters: json!({"type": "object",
                "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        }];
        let prompt = describe_tools(&tools);
        let example = &prompt[prompt.find("For example:").expect("an example")..];
        assert!(
            example.contains(r#"{"name": "read_file", "arguments": {"path":"README.md"}}"#),
            "{example}"
        );
        let parsed = crate::text_tools::parse_tool_calls(example, &["read_file".to_owned()]);
        assert_eq!(parsed.calls.len(), 1);
        assert_eq!(parsed.calls[0].arguments, json!({"path": "README.md"}));
    }

    #[test]
    fn calls_and_results_become_text() {
        let req = ChatRequest {
            system: Some("Be brief.".into()),
            messages: vec![
                Message::user("list files"),
                Message {
                    role: Role::Assistant,
                    content: vec![ContentPart::ToolCall {
                        id: "c1".into(),
                        name: "bash".into(),
                        arguments: json!({"cmd": "ls"}),
                    }],
                },
                Message::tool_result("c1", "a.rs", false),
            ],
            tools: vec![ToolDef {
                name: "bash".into(),
                description: "Run a command".into(),
                parameters: json!({"type": "object"}),
            }],
            ..ChatRequest::default()
        };
        let out = apply(&req);
        assert!(out.tools.is_empty());
        let system = out.system.unwrap();
        assert!(system.starts_with("Be brief.\n\n# Tools"));
        assert!(system.contains("## bash\nRun a command"));
        assert!(system.contains("<tool_call>"));
        assert_eq!(
            out.messages[1].text(),
            "<tool_call>\n{\"arguments\":{\"cmd\":\"ls\"},\"name\":\"bash\"}\n</tool_call>"
        );
        assert_eq!(out.messages[2].role, Role::User);
        assert_eq!(
            out.messages[2].text(),
            "<tool_result id=\"c1\" status=\"ok\">\na.rs\n</tool_result>"
        );
    }
}
