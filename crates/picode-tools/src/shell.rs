//! The `shell` tool: `bash -c` in the project, with a time limit and an output cap.
//!
//! The command runs in its own process group so that a timeout kills the
//! whole tree (`make` and its compilers, `sh -c "sleep 100"`), not just bash:
//! a surviving grandchild would keep our pipes open and hang the agent.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::args::{optional_str, optional_u64, required_str};
use crate::output::cap_middle;
use crate::paths::ProjectRoot;
use crate::sandbox::{self, Confinement, Policy};
use crate::{ToolError, ToolOutput};

/// The longest time limit the model may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output kept in memory per stream; the rest is counted and dropped, so a
/// runaway command cannot exhaust memory before the cap is applied.
const MAX_BUFFERED: usize = 8 << 20;
/// How long to wait for pipes to close after bash exits, in case background
/// jobs it started still hold them.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A validated `shell` call.
#[derive(Debug, Clone)]
pub(crate) struct ShellRequest {
    pub(crate) command: String,
    cwd: PathBuf,
    timeout: Duration,
}

impl ShellRequest {
    /// Checks the arguments; `cwd` must be a directory inside the project.
    pub(crate) fn parse(
        root: &ProjectRoot,
        args: &Value,
        default_timeout: Duration,
    ) -> Result<ShellRequest, ToolError> {
        const TOOL: &str = "shell";
        let command = required_str(TOOL, args, "command")?;
        if command.trim().is_empty() {
            return Err(ToolError::args(TOOL, "command must not be empty"));
        }
        let cwd = root.resolve(optional_str(TOOL, args, "cwd")?.unwrap_or("."))?;
        if !cwd.is_dir() {
            return Err(ToolError::Invalid(format!(
                "working directory {} does not exist",
                root.display(&cwd)
            )));
        }
        let timeout = optional_u64(TOOL, args, "timeout_secs")?
            .map(|s| Duration::from_secs(s.max(1)).min(MAX_TIMEOUT))
            .unwrap_or(default_timeout);
        Ok(ShellRequest {
            command: command.to_owned(),
            cwd,
            timeout,
        })
    }
}

/// How the command ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
}

/// How a command is started: its environment and its confinement.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) policy: Option<Policy>,
    pub(crate) required: bool,
}

/// Runs the command and reports its output and exit status to the model,
/// with how it was confined.
pub(crate) async fn run(
    req: &ShellRequest,
    cap: usize,
    launch: &Launch,
) -> (ToolOutput, Confinement) {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(&req.command)
        .current_dir(&req.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        // Pagers would wait for a terminal that is not there.
        .env("PAGER", "cat")
        .env("GIT_PAGER", "cat")
        .process_group(0)
        .kill_on_drop(true);
    let (child, confinement) =
        match sandbox::spawn(cmd, launch.policy.clone(), launch.required).await {
            Ok(spawned) => spawned,
            Err(e) => {
                return (
                    ToolOutput::error(format!("could not start bash: {e}")),
                    Confinement::NotRequested,
                )
            }
        };
    (run_child(req, cap, child).await, confinement)
}

async fn run_child(req: &ShellRequest, cap: usize, mut child: tokio::process::Child) -> ToolOutput {
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    let kill_group = || {
        if let Some(group) = group {
            // The group may already be gone; there is nothing to do then.
            let _ = killpg(group, Signal::SIGKILL);
        }
    };
    let stdout = spawn_reader(child.stdout.take());
    let stderr = spawn_reader(child.stderr.take());

    let ending = match tokio::time::timeout(req.timeout, child.wait()).await {
        Ok(Ok(status)) => Ending::Exited(status),
        Ok(Err(e)) => {
            kill_group();
            return ToolOutput::error(format!("waiting for the command failed: {e}"));
        }
        Err(_) => {
            kill_group();
            let _ = child.wait().await;
            Ending::TimedOut
        }
    };

    // Background jobs (`server &`) inherit the pipes; give them a moment,
    // then kill the group rather than hang waiting for EOF.
    let deadline = tokio::time::Instant::now() + PIPE_GRACE;
    let mut lingering = false;
    let mut collect = async |mut handle: JoinHandle<Captured>| match tokio::time::timeout_at(
        deadline,
        &mut handle,
    )
    .await
    {
        Ok(result) => result.unwrap_or_default(),
        Err(_) => {
            kill_group();
            lingering = true;
            finish_reader(handle).await
        }
    };
    let out = collect(stdout).await;
    let err = collect(stderr).await;
    let mut notes = Vec::new();
    if lingering {
        notes.push("background processes still holding the output were killed".to_owned());
    }

    let mut text = String::from_utf8_lossy(&out.bytes).into_owned();
    if !err.bytes.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("[stderr]\n");
        text.push_str(&String::from_utf8_lossy(&err.bytes));
    }
    let dropped = out.dropped + err.dropped;
    if dropped > 0 {
        notes.push(format!("{dropped} bytes of output were discarded unread"));
    }
    // Leave room for the status line so the overall cap never cuts it off.
    let mut content = cap_middle(&text, cap.saturating_sub(200).max(64));
    if !content.is_empty() && !content.ends_with('\n') {
        content.push('\n');
    }
    let (status_line, is_error) = match ending {
        Ending::TimedOut => (
            format!(
                "[timed out after {}s; the command and its children were killed]",
                req.timeout.as_secs()
            ),
            true,
        ),
        Ending::Exited(status) => match (status.code(), signal_of(&status)) {
            (Some(code), _) => (format!("[exit code: {code}]"), code != 0),
            (None, Some(signal)) => (format!("[killed by signal {signal}]"), true),
            (None, None) => ("[exited with unknown status]".to_owned(), true),
        },
    };
    content.push_str(&status_line);
    for note in notes {
        content.push_str(&format!("\n[{note}]"));
    }
    ToolOutput {
        content,
        is_error,
        diff: None,
    }
}

fn signal_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

fn spawn_reader<R>(pipe: Option<R>) -> JoinHandle<Captured>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut captured = Captured::default();
        let Some(mut pipe) = pipe else {
            return captured;
        };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_BUFFERED.saturating_sub(captured.bytes.len());
                    let keep = n.min(room);
                    captured.bytes.extend_from_slice(&buf[..keep]);
                    captured.dropped += n - keep;
                }
            }
        }
        captured
    })
}

/// Waits briefly for a reader after its process group was killed; a process
/// that escaped the group (e.g. via `setsid`) could hold the pipe forever.
async fn finish_reader(mut handle: JoinHandle<Captured>) -> Captured {
    match tokio::time::timeout(Duration::from_millis(500), &mut handle).await {
        Ok(result) => result.unwrap_or_default(),
        Err(_) => {
            handle.abort();
            Captured::default()
        }
    }
}
