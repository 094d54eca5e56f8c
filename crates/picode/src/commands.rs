//! Slash commands: the built-in ones and custom prompt templates from
//! `.picode/commands/*.md` (project) and `commands/*.md` in the user's config
//! dir. A custom command is a Markdown file whose text becomes the prompt,
//! with `$ARGUMENTS` replaced by whatever followed the command name.
//!
//! Built-in names win over custom ones, so a project cannot redefine `/undo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed slash command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Show or switch the model of the current provider.
    Model(Option<String>),
    /// Show or switch the provider.
    Provider(Option<String>),
    Clear,
    Compact,
    Cost,
    Undo,
    /// Changes since the last turn began, or (`/diff all`) since the session began.
    Diff {
        all: bool,
    },
    Sessions,
    Resume(String),
    /// Show, or turn on or off, redaction of secret-looking tool output.
    Redact(Option<bool>),
    Exit,
    /// A custom command, already expanded into a prompt.
    Custom {
        name: String,
        prompt: String,
    },
    Unknown(String),
}

/// The built-in commands with one line of help each.
pub const BUILTINS: &[(&str, &str)] = &[
    ("help", "list commands"),
    ("model [NAME]", "show or switch the model"),
    ("provider [NAME]", "show or switch the provider"),
    ("clear", "start a new, empty session"),
    ("compact", "summarise older turns to free context"),
    ("cost", "token usage and cost of this session"),
    (
        "undo",
        "restore files and conversation to before the last turn",
    ),
    (
        "diff [all]",
        "changes since the last turn (or the session) began",
    ),
    ("sessions", "list recent sessions of this project"),
    ("resume ID", "switch to another session"),
    (
        "redact [on|off]",
        "redaction of secret-looking tool output in this session",
    ),
    ("exit", "leave PiCode"),
];

/// A prompt template loaded from a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomCommand {
    pub name: String,
    /// The first non-empty line, without Markdown heading marks.
    pub description: String,
    pub template: String,
    pub source: PathBuf,
}

impl CustomCommand {
    /// The prompt with `$ARGUMENTS` replaced; arguments given to a template
    /// without the placeholder are appended, so they are never lost.
    pub fn expand(&self, arguments: &str) -> String {
        if self.template.contains("$ARGUMENTS") {
            self.template.replace("$ARGUMENTS", arguments)
        } else if arguments.is_empty() {
            self.template.clone()
        } else {
            format!("{}\n\n{arguments}", self.template.trim_end())
        }
    }
}

/// Loads custom commands; project files override user files of the same name.
/// `project` is `None` when the folder is not trusted: its commands are
/// then not loaded at all.
pub fn load_custom(project: Option<&Path>, config_dir: &Path) -> BTreeMap<String, CustomCommand> {
    let mut commands = BTreeMap::new();
    let dirs = [
        Some(config_dir.join("commands")),
        project.map(|p| p.join(".picode").join("commands")),
    ];
    for dir in dirs.into_iter().flatten() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(template) = std::fs::read_to_string(&path) else {
                continue;
            };
            let description = template
                .lines()
                .map(|l| l.trim().trim_start_matches('#').trim())
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .chars()
                .take(70)
                .collect();
            commands.insert(
                name.to_owned(),
                CustomCommand {
                    name: name.to_owned(),
                    description,
                    template,
                    source: path.clone(),
                },
            );
        }
    }
    commands
}

/// Parses a line; `None` when it is an ordinary prompt.
pub fn parse(line: &str, custom: &BTreeMap<String, CustomCommand>) -> Option<Command> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    // `/path/to/file is broken` is a prompt, not a command.
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let arg = || (!args.is_empty()).then(|| args.to_owned());
    Some(match name {
        "help" | "?" => Command::Help,
        "model" => Command::Model(arg()),
        "provider" => Command::Provider(arg()),
        "clear" | "new" => Command::Clear,
        "compact" => Command::Compact,
        "cost" => Command::Cost,
        "undo" => Command::Undo,
        "diff" => Command::Diff { all: args == "all" },
        "sessions" => Command::Sessions,
        "resume" => match arg() {
            Some(id) => Command::Resume(id),
            None => Command::Sessions,
        },
        "redact" => Command::Redact(match args {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        }),
        "exit" | "quit" => Command::Exit,
        other => match custom.get(other) {
            Some(c) => Command::Custom {
                name: c.name.clone(),
                prompt: c.expand(args),
            },
            None => Command::Unknown(other.to_owned()),
        },
    })
}

/// The `/help` text.
pub fn help_text(custom: &BTreeMap<String, CustomCommand>) -> String {
    let mut out = String::from("Commands:\n");
    for (usage, help) in BUILTINS {
        out.push_str(&format!("  /{usage:<18} {help}\n"));
    }
    if !custom.is_empty() {
        out.push_str("Custom commands:\n");
        for c in custom.values() {
            out.push_str(&format!("  /{:<18} {}\n", c.name, c.description));
        }
    }
    out.push_str(
        "Anything else is sent to the model. Ctrl-C cancels a running turn; Ctrl-D exits.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_builtins_and_leaves_prompts_alone() {
        let none = BTreeMap::new();
        assert_eq!(parse("/undo", &none), Some(Command::Undo));
        assert_eq!(
            parse("/model gpt-x", &none),
            Some(Command::Model(Some("gpt-x".into())))
        );
        assert_eq!(parse("/diff all", &none), Some(Command::Diff { all: true }));
        assert_eq!(
            parse("/redact off", &none),
            Some(Command::Redact(Some(false)))
        );
        assert_eq!(parse("fix /undo please", &none), None);
        assert_eq!(parse("/src/main.rs is broken", &none), None);
        assert_eq!(
            parse("/frobnicate", &none),
            Some(Command::Unknown("frobnicate".into()))
        );
    }

    #[test]
    fn custom_commands_expand_arguments_and_project_wins() {
        let project = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(user.path().join("commands")).unwrap();
        std::fs::create_dir_all(project.path().join(".picode/commands")).unwrap();
        std::fs::write(user.path().join("commands/review.md"), "user review").unwrap();
        std::fs::write(
            project.path().join(".picode/commands/review.md"),
            "# Review code\nReview $ARGUMENTS carefully.",
        )
        .unwrap();
        std::fs::write(user.path().join("commands/undo.md"), "shadow").unwrap();
        let custom = load_custom(Some(project.path()), user.path());
        assert_eq!(custom["review"].description, "Review code");
        assert_eq!(
            parse("/review src/lib.rs", &custom),
            Some(Command::Custom {
                name: "review".into(),
                prompt: "# Review code\nReview src/lib.rs carefully.".into()
            })
        );
        assert_eq!(parse("/undo", &custom), Some(Command::Undo));
        assert!(help_text(&custom).contains("/review"));
    }
}
