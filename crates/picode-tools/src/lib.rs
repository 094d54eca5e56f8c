//! The tool layer of the PiCode coding agent.
//!
//! This crate is everything the model can *do*: read, write and edit files,
//! list and search the project, run shell commands, look at the user's git
//! state, and call tools offered by MCP servers. It also owns the safety net
//! around those actions: the permission modes, the approval hook, and the
//! shadow checkpoint store that makes `/undo` possible.
//!
//! What it must not do:
//!
//! - It never touches the user's git history. Checkpoints live in a separate
//!   git directory with its own index (`git --git-dir=<store> --work-tree=<project>`);
//!   `git_status` and `git_diff` only read the user's repository.
//! - It never reads or writes outside the project root. Every path the model
//!   gives is resolved (`..`, absolute paths, symlinks) and refused if it
//!   escapes; shell commands may only start inside the project.
//! - It never hands secrets to a command: shell commands and MCP servers get
//!   a scrubbed environment, and in `auto-edit` and `full-auto` shell
//!   commands run in a Landlock sandbox (see `sandbox`). Tool output that
//!   looks like a key is redacted before anyone stores or sends it.
//! - It never lets `plan` mode change anything: the refusal happens here, in
//!   the tool layer, not in a prompt the model could ignore.
//! - It knows nothing about LLM providers, the agent loop, the CLI or HTTP;
//!   `picode` adapts these types to its wire formats.
//!
//! The entry point is [`Toolbox`]: build it from a [`ToolboxConfig`], hand
//! [`Toolbox::specs`] to the model, and route each tool call through
//! [`Toolbox::call`] with an [`Approver`] that asks the user.

mod agents_md;
mod args;
mod checkpoint;
mod error;
mod fs_tools;
mod git;
mod mcp;
mod output;
mod paths;
pub mod private_fs;
mod redact;
mod sandbox;
mod search;
mod shell;
mod specs;
mod toolbox;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Re-exported so implementors of [`Approver`] need no extra dependency.
pub use async_trait::async_trait;

pub use agents_md::load_agents_md;
pub use checkpoint::{CheckpointId, Checkpoints};
pub use error::ToolError;
pub use redact::{redact, REDACTED};
pub use sandbox::{is_secret_name, scrubbed_env, Confinement, SandboxConfig, SandboxMode};
pub use toolbox::Toolbox;

/// How much the agent may do without asking the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermissionMode {
    /// Reads are free; every edit and every command needs approval.
    #[default]
    Ask,
    /// File edits are approved automatically; commands still ask.
    AutoEdit,
    /// Nothing asks. The project-root confinement still applies.
    FullAuto,
    /// Read-only: edits, commands and MCP tools are refused outright.
    Plan,
}

impl PermissionMode {
    /// All modes, in the order a UI would cycle through them.
    pub const ALL: [PermissionMode; 4] = [
        PermissionMode::Ask,
        PermissionMode::AutoEdit,
        PermissionMode::FullAuto,
        PermissionMode::Plan,
    ];

    /// The kebab-case name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionMode::Ask => "ask",
            PermissionMode::AutoEdit => "auto-edit",
            PermissionMode::FullAuto => "full-auto",
            PermissionMode::Plan => "plan",
        }
    }
}

impl fmt::Display for PermissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PermissionMode {
    type Err = ToolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PermissionMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ToolError::InvalidMode(s.to_owned()))
    }
}

/// A tool as described to the model (name, description, JSON Schema of its arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema `object` describing the arguments.
    pub parameters: serde_json::Value,
}

/// What a tool does to the world; the permission mode decides per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolKind {
    /// Only looks (files, search, git status). Never needs approval.
    Read,
    /// Changes files in the project.
    Edit,
    /// Runs a program (shell commands, MCP tools): anything can happen.
    Execute,
}

/// What the user is asked to approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The tool name as the model called it.
    pub tool: String,
    pub kind: ToolKind,
    /// One line for the prompt: the command, or e.g. `edit src/lib.rs`.
    pub summary: String,
    /// For edits, the unified diff that would be applied.
    pub diff: Option<String>,
}

/// Asks the user (or a policy) whether an action may go ahead.
#[async_trait::async_trait]
pub trait Approver: Send + Sync {
    /// Returns `true` to allow the action, `false` to decline it.
    async fn approve(&self, req: &ApprovalRequest) -> bool;
}

/// An [`Approver`] that allows everything (useful in tests and scripts).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysApprove;

#[async_trait::async_trait]
impl Approver for AlwaysApprove {
    async fn approve(&self, _req: &ApprovalRequest) -> bool {
        true
    }
}

/// An [`Approver`] that declines everything (for non-interactive runs).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysDeny;

#[async_trait::async_trait]
impl Approver for AlwaysDeny {
    async fn approve(&self, _req: &ApprovalRequest) -> bool {
        false
    }
}

/// The result of a tool call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Text returned to the model.
    pub content: String,
    /// Whether the call failed; the content then explains why.
    pub is_error: bool,
    /// A unified diff of what changed, for display to the user.
    pub diff: Option<String>,
}

impl ToolOutput {
    /// A successful output.
    pub fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: false,
            diff: None,
        }
    }

    /// A failed output; the message is what the model reads.
    pub fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: true,
            diff: None,
        }
    }
}

impl From<ToolError> for ToolOutput {
    fn from(err: ToolError) -> ToolOutput {
        ToolOutput::error(err.to_string())
    }
}

/// A tool call as the model issued it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's call id, echoed back with the result.
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// How to reach one MCP server: a command to start (stdio transport) or
/// the `url` of a running one (streamable HTTP transport).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct McpServerConfig {
    /// Short name; tools appear to the model as `mcp__<name>__<tool>`.
    pub name: String,
    /// The program to start; empty when `url` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// A streamable-HTTP endpoint, e.g. `http://127.0.0.1:8000/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables for the server process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Everything a [`Toolbox`] needs to know; passed explicitly, never global.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolboxConfig {
    /// The directory the agent works in; nothing outside it is touched.
    pub project_root: PathBuf,
    pub mode: PermissionMode,
    /// Default time limit for a shell command (the model may ask for another).
    pub shell_timeout: Duration,
    /// Maximum size of the text a tool returns to the model.
    pub output_cap_bytes: usize,
    /// Where shadow checkpoint stores live; `None` means the user's data dir
    /// (see [`default_checkpoint_dir`]).
    pub checkpoint_dir: Option<PathBuf>,
    pub mcp_servers: Vec<McpServerConfig>,
    /// The environment and sandbox of shell commands and MCP servers.
    pub sandbox: SandboxConfig,
    /// Whether secret-looking tool output is redacted.
    pub redact_secrets: bool,
}

impl ToolboxConfig {
    /// Default shell timeout: long enough for a test suite, short enough to notice a hang.
    pub const DEFAULT_SHELL_TIMEOUT: Duration = Duration::from_secs(120);
    /// Default output cap: about 8k tokens, enough for a build error, not a whole log.
    pub const DEFAULT_OUTPUT_CAP: usize = 30_000;

    /// A config with defaults (ask mode, default limits, no MCP servers).
    pub fn new(project_root: impl Into<PathBuf>) -> ToolboxConfig {
        ToolboxConfig {
            project_root: project_root.into(),
            mode: PermissionMode::default(),
            shell_timeout: Self::DEFAULT_SHELL_TIMEOUT,
            output_cap_bytes: Self::DEFAULT_OUTPUT_CAP,
            checkpoint_dir: None,
            mcp_servers: Vec::new(),
            sandbox: SandboxConfig::default(),
            redact_secrets: true,
        }
    }
}

/// Where checkpoint stores live when the config does not say:
/// `$XDG_DATA_HOME/picode/checkpoints`, else `~/.local/share/picode/checkpoints`,
/// else a directory under the system temp dir.
pub fn default_checkpoint_dir() -> PathBuf {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(data) = non_empty("XDG_DATA_HOME") {
        return PathBuf::from(data).join("picode").join("checkpoints");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("picode")
            .join("checkpoints");
    }
    std::env::temp_dir().join("picode-checkpoints")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_mode_round_trips_through_strings_and_serde() {
        for mode in PermissionMode::ALL {
            assert_eq!(mode.to_string().parse::<PermissionMode>().unwrap(), mode);
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<PermissionMode>(&json).unwrap(), mode);
        }
        assert!("yolo".parse::<PermissionMode>().is_err());
        assert_eq!(PermissionMode::default(), PermissionMode::Ask);
    }
}
