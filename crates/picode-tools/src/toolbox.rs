//! [`Toolbox`]: dispatch of tool calls, the permission gate and checkpoints.
//!
//! Every call goes through the same sequence: refuse in plan mode if the
//! tool changes anything, validate the arguments and prepare the change (for
//! edits, the diff), ask the [`Approver`] if the mode requires it, take a
//! checkpoint, then act. Nothing touches the disk before approval.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::checkpoint::{CheckpointId, Checkpoints};
use crate::mcp::McpManager;
use crate::paths::ProjectRoot;
use crate::sandbox::{self, Confinement, Policy, SandboxConfig, SandboxMode};
use crate::{
    default_checkpoint_dir, fs_tools, git, output, redact, search, shell, specs, ApprovalRequest,
    Approver, PermissionMode, ToolCall, ToolError, ToolKind, ToolOutput, ToolSpec, ToolboxConfig,
};

/// The agent's tools for one project. Share it behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Toolbox {
    root: ProjectRoot,
    mode: Mutex<PermissionMode>,
    shell_timeout: Duration,
    output_cap: usize,
    checkpoints: Checkpoints,
    /// The checkpoint taken by the latest [`Toolbox::begin_turn`].
    turn_checkpoint: Mutex<Option<CheckpointId>>,
    mcp: McpManager,
    executed: Mutex<Vec<String>>,
    sandbox: SandboxConfig,
    /// The scrubbed environment of shell commands.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// Whether secret-looking tool output is redacted (on unless turned off).
    redact: AtomicBool,
    /// Whether the user was told the sandbox is weaker than configured.
    sandbox_noted: AtomicBool,
}

impl Toolbox {
    /// Checks the project root and prepares (but does not start) everything
    /// else: the checkpoint store is created on first use and MCP servers are
    /// started on the first [`Toolbox::specs`] or MCP call.
    pub async fn new(cfg: ToolboxConfig) -> Result<Toolbox, ToolError> {
        let root = ProjectRoot::new(&cfg.project_root)?;
        let store = cfg.checkpoint_dir.unwrap_or_else(default_checkpoint_dir);
        let checkpoints = Checkpoints::new(root.path(), &store);
        let env = sandbox::scrubbed_env(&cfg.sandbox);
        Ok(Toolbox {
            checkpoints,
            mcp: McpManager::new(cfg.mcp_servers, root.path().to_owned(), env.clone()),
            env,
            sandbox: cfg.sandbox,
            redact: AtomicBool::new(cfg.redact_secrets),
            sandbox_noted: AtomicBool::new(false),
            root,
            mode: Mutex::new(cfg.mode),
            shell_timeout: cfg.shell_timeout,
            // A cap of zero would hide every result; treat it as "tiny".
            output_cap: cfg.output_cap_bytes.max(256),
            turn_checkpoint: Mutex::new(None),
            executed: Mutex::new(Vec::new()),
        })
    }

    /// The canonical project root.
    pub fn project_root(&self) -> &Path {
        self.root.path()
    }

    pub fn mode(&self) -> PermissionMode {
        *lock(&self.mode)
    }

    /// Changes the mode; calls already past the permission gate finish as they are.
    pub fn set_mode(&self, m: PermissionMode) {
        *lock(&self.mode) = m;
    }

    /// The built-in tools followed by the tools of every MCP server that
    /// started (starting them now if this is the first use).
    pub async fn specs(&self) -> Vec<ToolSpec> {
        let mut all = specs::builtin();
        all.extend(self.mcp.specs().await);
        all
    }

    /// Runs one tool call. Never panics and never returns `Err`: problems
    /// become `is_error` outputs worded for the model.
    pub async fn call(&self, name: &str, args: Value, approver: &dyn Approver) -> ToolOutput {
        let mut out = match self.dispatch(name, &args, approver).await {
            Ok(out) => out,
            Err(err) => err.into(),
        };
        if self.redacting() {
            let (text, found) = redact::redact(&out.content);
            if found {
                out.content = text;
                out.content.push_str(
                    "\n[secret-looking text was replaced by [REDACTED] before storing or sending]",
                );
            }
        }
        out.content = output::cap_head(&out.content, self.output_cap);
        out
    }

    /// Whether tool output is redacted before it is stored or sent.
    pub fn redacting(&self) -> bool {
        self.redact.load(Ordering::Relaxed)
    }

    /// Turns redaction on or off for this session (`/redact off`).
    pub fn set_redacting(&self, on: bool) {
        self.redact.store(on, Ordering::Relaxed);
    }

    /// How a shell command is started in `mode`: always with the scrubbed
    /// environment; confined in `auto-edit` and `full-auto` (the modes where
    /// nobody looks at each command) unless the sandbox is off.
    fn launch(&self, mode: PermissionMode) -> shell::Launch {
        let confine = matches!(mode, PermissionMode::AutoEdit | PermissionMode::FullAuto)
            && self.sandbox.mode != SandboxMode::Off;
        shell::Launch {
            env: self.env.clone(),
            policy: confine.then(|| Policy::for_project(self.root.path(), &self.sandbox)),
            required: self.sandbox.mode == SandboxMode::Required,
        }
    }

    /// A note for the model and the user, the first time only, when the
    /// sandbox could not do all it was asked.
    fn note_confinement(&self, confinement: &Confinement) -> Option<String> {
        let why = match confinement {
            Confinement::Full | Confinement::NotRequested => return None,
            Confinement::Partial(why) => format!("the sandbox is partial here ({why})"),
            Confinement::Unavailable(why) => {
                format!("commands run without a sandbox: {why}")
            }
        };
        if self.sandbox_noted.swap(true, Ordering::Relaxed) {
            return None;
        }
        tracing::warn!("{why}");
        Some(format!(
            "note: {why}; set sandbox = \"required\" to refuse unconfined commands"
        ))
    }

    /// [`Toolbox::call`] for a [`ToolCall`] as parsed from a provider response.
    pub async fn call_tool(&self, call: &ToolCall, approver: &dyn Approver) -> ToolOutput {
        self.call(&call.name, call.arguments.clone(), approver)
            .await
    }

    /// Whether the MCP servers have been started (they start on first use).
    pub fn mcp_started(&self) -> bool {
        self.mcp.started()
    }

    /// MCP servers that failed to start, as (server name, reason); they are
    /// left out of [`Toolbox::specs`] while the others keep working.
    pub fn mcp_failures(&self) -> Vec<(String, String)> {
        self.mcp.failures()
    }

    /// Shell commands that actually ran (after approval), oldest first.
    pub fn executed_commands(&self) -> Vec<String> {
        lock(&self.executed).clone()
    }

    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// Marks the start of a user turn: snapshots the project and remembers
    /// the checkpoint, which is what `/undo` restores.
    ///
    /// Independently of turns, every change (edit, write, shell command, MCP
    /// call) is preceded by a checkpoint whenever the project differs from
    /// the latest one, so the first change of a turn reuses this snapshot and
    /// later ones can be undone one by one through [`Checkpoints::list`].
    pub async fn begin_turn(&self, label: &str) -> Result<CheckpointId, ToolError> {
        let id = self.checkpoints.snapshot(label).await?;
        *lock(&self.turn_checkpoint) = Some(id.clone());
        Ok(id)
    }

    /// The checkpoint of the latest [`Toolbox::begin_turn`], if any.
    pub fn turn_checkpoint(&self) -> Option<CheckpointId> {
        lock(&self.turn_checkpoint).clone()
    }

    async fn dispatch(
        &self,
        name: &str,
        args: &Value,
        approver: &dyn Approver,
    ) -> Result<ToolOutput, ToolError> {
        let mode = self.mode();
        let kind = if McpManager::is_mcp_name(name) {
            ToolKind::Execute
        } else {
            specs::kind_of(name).ok_or_else(|| ToolError::UnknownTool(name.to_owned()))?
        };
        // Plan mode is enforced before anything else, even argument parsing.
        if mode == PermissionMode::Plan && kind != ToolKind::Read {
            return Err(ToolError::PlanMode {
                tool: name.to_owned(),
            });
        }
        if !args.is_object() && !args.is_null() {
            return Err(ToolError::args(name, "arguments must be a JSON object"));
        }
        match name {
            "read_file" => fs_tools::read_file(&self.root, args),
            "list_files" => fs_tools::list_files(&self.root, args).await,
            "grep" => search::grep(&self.root, args).await,
            "git_status" => git::status(&self.root).await,
            "git_diff" => git::diff(&self.root, args).await,
            "write_file" | "edit_file" => {
                let edit = if name == "write_file" {
                    fs_tools::prepare_write(&self.root, args)?
                } else {
                    fs_tools::prepare_edit(&self.root, args)?
                };
                let req = ApprovalRequest {
                    tool: name.to_owned(),
                    kind,
                    summary: format!("{} {}", edit.verb(), edit.display),
                    diff: Some(edit.diff.clone()),
                };
                self.gate(mode, &req, approver).await?;
                let warning = self.checkpoint_before(&req.summary).await;
                Ok(with_warning(edit.apply()?, warning))
            }
            "shell" => {
                let request = shell::ShellRequest::parse(&self.root, args, self.shell_timeout)?;
                let req = ApprovalRequest {
                    tool: name.to_owned(),
                    kind,
                    summary: request.command.clone(),
                    diff: None,
                };
                self.gate(mode, &req, approver).await?;
                let warning = self
                    .checkpoint_before(&format!("before shell: {}", request.command))
                    .await;
                lock(&self.executed).push(request.command.clone());
                let (out, confinement) =
                    shell::run(&request, self.output_cap, &self.launch(mode)).await;
                let note = self.note_confinement(&confinement);
                Ok(with_warning(with_warning(out, warning), note))
            }
            _ => {
                let req = ApprovalRequest {
                    tool: name.to_owned(),
                    kind,
                    summary: format!("{name} {args}"),
                    diff: None,
                };
                // Unknown MCP tools are reported before bothering the user.
                if !self.mcp.has_tool(name).await {
                    return Err(ToolError::UnknownTool(name.to_owned()));
                }
                self.gate(mode, &req, approver).await?;
                let warning = self.checkpoint_before(&format!("before {name}")).await;
                Ok(with_warning(self.mcp.call(name, args).await?, warning))
            }
        }
    }

    /// Asks the approver when the mode requires it for this kind of tool.
    async fn gate(
        &self,
        mode: PermissionMode,
        req: &ApprovalRequest,
        approver: &dyn Approver,
    ) -> Result<(), ToolError> {
        let needs_approval = match (mode, req.kind) {
            (_, ToolKind::Read) => false,
            (PermissionMode::FullAuto, _) => false,
            (PermissionMode::AutoEdit, ToolKind::Edit) => false,
            (PermissionMode::AutoEdit | PermissionMode::Ask, _) => true,
            // Unreachable in practice (refused earlier), but refusing is the safe answer.
            (PermissionMode::Plan, _) => {
                return Err(ToolError::PlanMode {
                    tool: req.tool.clone(),
                })
            }
        };
        if needs_approval && !approver.approve(req).await {
            return Err(ToolError::Declined {
                tool: req.tool.clone(),
            });
        }
        Ok(())
    }

    /// Snapshots the project before a change. A failing checkpoint does not
    /// block the change (that would make the agent useless without a writable
    /// data dir); it is logged and reported back as a warning instead.
    async fn checkpoint_before(&self, label: &str) -> Option<String> {
        match self.checkpoints.snapshot_if_changed(label).await {
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(error = %err, "checkpoint failed; continuing without one");
                Some(format!(
                    "warning: no checkpoint could be taken ({err}); /undo will not cover this change"
                ))
            }
        }
    }
}

fn with_warning(mut out: ToolOutput, warning: Option<String>) -> ToolOutput {
    if let Some(warning) = warning {
        out.content.push_str("\n\n");
        out.content.push_str(&warning);
    }
    out
}

/// Locks a std mutex, recovering from poisoning: the data behind these
/// mutexes (a mode, a list of strings) stays valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AlwaysApprove;

    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync<T: Send + Sync>() {}

    /// The agent shares the toolbox across tasks and spawns tool calls.
    #[tokio::test]
    async fn toolbox_and_its_futures_can_cross_tasks() {
        assert_send_sync::<Toolbox>();
        let dir = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut cfg = ToolboxConfig::new(dir.path());
        cfg.checkpoint_dir = Some(store.path().to_owned());
        let toolbox = Toolbox::new(cfg).await.unwrap();
        let call = toolbox.call("git_status", Value::Null, &AlwaysApprove);
        assert_send(&call);
        let specs = toolbox.specs();
        assert_send(&specs);
        let turn = toolbox.begin_turn("t");
        assert_send(&turn);
    }

    #[tokio::test]
    async fn a_missing_project_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Toolbox::new(ToolboxConfig::new(dir.path().join("missing")))
            .await
            .unwrap_err();
        assert!(matches!(err, ToolError::ProjectRoot { .. }));
    }
}
