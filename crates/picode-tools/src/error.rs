//! The one error type of this crate.
//!
//! Messages are written for two readers: the model, which gets them back as
//! an `is_error` tool output and should be able to correct its next call, and
//! the user, who sees them in the transcript.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the tool layer.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("unknown permission mode `{0}` (expected ask, auto-edit, full-auto or plan)")]
    InvalidMode(String),

    #[error("project root {path} is not a usable directory: {source}")]
    ProjectRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("unknown tool `{0}`")]
    UnknownTool(String),

    #[error("invalid arguments for `{tool}`: {message}")]
    InvalidArguments { tool: String, message: String },

    #[error("path `{path}` is outside the project; only files under the project root can be used")]
    OutsideProject { path: String },

    #[error("`{tool}` is not allowed in plan mode (read-only); describe the change instead of making it")]
    PlanMode { tool: String },

    #[error("the user declined `{tool}`; nothing was changed. Ask the user how to proceed")]
    Declined { tool: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("old_string was not found in {path}; read the file again and copy the text exactly")]
    NoMatch { path: String },

    #[error("old_string matched {count} times in {path}; it must match exactly once, so include more surrounding lines")]
    AmbiguousMatch { path: String, count: usize },

    #[error("{0}")]
    Invalid(String),

    #[error("command timed out after {0:?}")]
    Timeout(Duration),

    #[error("git {args}: {message}")]
    Git { args: String, message: String },

    #[error("MCP server `{server}`: {message}")]
    Mcp { server: String, message: String },
}

impl ToolError {
    /// An I/O error about a path, shown relative to the project when possible.
    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> ToolError {
        ToolError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn args(tool: &str, message: impl Into<String>) -> ToolError {
        ToolError::InvalidArguments {
            tool: tool.to_owned(),
            message: message.into(),
        }
    }
}
