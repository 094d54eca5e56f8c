//! Running the `git` CLI, and the read-only `git_status` / `git_diff` tools.
//!
//! We shell out to git instead of linking libgit2 so that behaviour matches
//! what the user sees in their terminal (config, attributes, ignore rules).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::paths::ProjectRoot;
use crate::{ToolError, ToolOutput};

/// Variables that would redirect git to another repository or index; they
/// may be set when PiCode itself runs from a git hook or a wrapper script.
const REDIRECTING_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// Runs `git <args>` in `cwd` and returns the raw output, whatever the exit code.
pub(crate) async fn run<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Result<Output, ToolError> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Never prompt for credentials or an editor; the agent has no terminal here.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_EDITOR", "true")
        .env("GIT_PAGER", "cat")
        // Keeps `git status` from refreshing the user's index: reads stay reads.
        .env("GIT_OPTIONAL_LOCKS", "0");
    for key in REDIRECTING_ENV {
        cmd.env_remove(key);
    }
    cmd.output().await.map_err(|e| ToolError::Git {
        args: describe(args),
        message: format!("could not run git: {e}"),
    })
}

/// Runs git and returns stdout, or an error carrying stderr if it failed.
pub(crate) async fn run_ok<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Result<String, ToolError> {
    let out = run(cwd, args).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ToolError::Git {
            args: describe(args),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .filter(|a| !a.starts_with("--git-dir") && !a.starts_with("--work-tree"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `git_status`: short status with branch information.
pub(crate) async fn status(root: &ProjectRoot) -> Result<ToolOutput, ToolError> {
    let out = run_ok(
        root.path(),
        &["-c", "core.quotepath=off", "status", "--short", "--branch"],
    )
    .await?;
    Ok(ToolOutput::ok(if out.trim().is_empty() {
        "(clean)".to_owned()
    } else {
        out
    }))
}

/// `git_diff`: unstaged (or with `staged: true`, staged) changes, optionally for one path.
pub(crate) async fn diff(root: &ProjectRoot, args: &Value) -> Result<ToolOutput, ToolError> {
    let staged = args.get("staged").and_then(Value::as_bool).unwrap_or(false);
    let mut git_args: Vec<String> = [
        "-c",
        "core.quotepath=off",
        "diff",
        "--no-color",
        "--no-ext-diff",
    ]
    .map(String::from)
    .to_vec();
    if staged {
        git_args.push("--cached".into());
    }
    if let Some(path) = args.get("path").and_then(Value::as_str) {
        let resolved = root.resolve(path)?;
        git_args.push("--".into());
        git_args.push(resolved.display().to_string());
    }
    let out = run_ok(root.path(), &git_args).await?;
    Ok(ToolOutput::ok(if out.trim().is_empty() {
        "(no changes)".to_owned()
    } else {
        out
    }))
}
