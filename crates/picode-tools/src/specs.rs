//! Names, kinds and JSON Schemas of the built-in tools, as the model sees them.

use serde_json::{json, Value};

use crate::{ToolKind, ToolSpec};

/// The kind of a built-in tool, or `None` if there is no such tool.
pub(crate) fn kind_of(name: &str) -> Option<ToolKind> {
    Some(match name {
        "read_file" | "list_files" | "grep" | "git_status" | "git_diff" => ToolKind::Read,
        "write_file" | "edit_file" => ToolKind::Edit,
        "shell" => ToolKind::Execute,
        _ => return None,
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn spec(name: &str, description: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    }
}

/// All built-in tools.
pub(crate) fn builtin() -> Vec<ToolSpec> {
    vec![
        spec(
            "read_file",
            "Read a text file from the project. Output lines are numbered (line number, tab, text). \
             Use offset and limit to read part of a large file.",
            object(
                json!({
                    "path": {"type": "string", "description": "Path relative to the project root."},
                    "offset": {"type": "integer", "minimum": 1, "description": "First line to read (1-based)."},
                    "limit": {"type": "integer", "minimum": 1, "description": "Maximum number of lines to read."},
                }),
                &["path"],
            ),
        ),
        spec(
            "write_file",
            "Create a file or replace its whole content. Parent directories are created. \
             Prefer edit_file for changing part of an existing file.",
            object(
                json!({
                    "path": {"type": "string", "description": "Path relative to the project root."},
                    "content": {"type": "string", "description": "The complete new content."},
                }),
                &["path", "content"],
            ),
        ),
        spec(
            "edit_file",
            "Replace one exact occurrence of old_string with new_string in a file. old_string must \
             match the file exactly (including indentation) and exactly once; include enough \
             surrounding lines to make it unique. Returns a unified diff.",
            object(
                json!({
                    "path": {"type": "string", "description": "Path relative to the project root."},
                    "old_string": {"type": "string", "description": "Exact text to replace; must occur exactly once."},
                    "new_string": {"type": "string", "description": "Replacement text."},
                }),
                &["path", "old_string", "new_string"],
            ),
        ),
        spec(
            "list_files",
            "List files matching a glob pattern, skipping files ignored by .gitignore. A pattern \
             without '/' matches file names anywhere (e.g. '*.rs'); with '/' it matches paths \
             relative to the project root (e.g. 'src/**/*.rs').",
            object(
                json!({
                    "pattern": {"type": "string", "description": "Glob pattern; defaults to all files."},
                    "path": {"type": "string", "description": "Directory to search in; defaults to the project root."},
                }),
                &[],
            ),
        ),
        spec(
            "grep",
            "Search file contents with a regular expression (Rust regex syntax), skipping ignored \
             and binary files. Results are 'path:line:text'.",
            object(
                json!({
                    "pattern": {"type": "string", "description": "Regular expression."},
                    "path": {"type": "string", "description": "File or directory to search; defaults to the project root."},
                    "glob": {"type": "string", "description": "Only search files matching this glob, e.g. '*.rs'."},
                    "case_insensitive": {"type": "boolean", "description": "Ignore case."},
                }),
                &["pattern"],
            ),
        ),
        spec(
            "shell",
            "Run a command with bash -c in the project (or a subdirectory). Output is captured and \
             may be truncated; the exit code is reported. Avoid interactive commands.",
            object(
                json!({
                    "command": {"type": "string", "description": "The bash command line."},
                    "cwd": {"type": "string", "description": "Working directory relative to the project root."},
                    "timeout_secs": {"type": "integer", "minimum": 1, "description": "Time limit in seconds."},
                }),
                &["command"],
            ),
        ),
        spec(
            "git_status",
            "Show the git status of the project (short format with branch). Read-only.",
            object(json!({}), &[]),
        ),
        spec(
            "git_diff",
            "Show uncommitted changes in the project's git repository as a unified diff. Read-only.",
            object(
                json!({
                    "staged": {"type": "boolean", "description": "Show staged changes instead of unstaged ones."},
                    "path": {"type": "string", "description": "Limit the diff to this path."},
                }),
                &[],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_a_kind_and_an_object_schema() {
        for spec in builtin() {
            assert!(kind_of(&spec.name).is_some(), "{}", spec.name);
            assert_eq!(spec.parameters["type"], "object");
        }
        assert_eq!(kind_of("nope"), None);
    }
}
