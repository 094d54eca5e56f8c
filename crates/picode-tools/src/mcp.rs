//! A small MCP client over stdio (JSON-RPC 2.0, one message per line).
//!
//! Servers from the config are started lazily, on the first [`McpManager::specs`]
//! or tool call, and all at once: each gets its own startup timeout, and a
//! server that fails to start is logged and left out while the others work.
//! Only the client side of the tools feature is implemented (`initialize`,
//! `notifications/initialized`, `tools/list`, `tools/call`, answering `ping`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{oneshot, OnceCell};
use tokio::task::JoinSet;

use crate::{McpServerConfig, ToolError, ToolOutput, ToolSpec};

/// The protocol revision we speak.
const PROTOCOL_VERSION: &str = "2024-11-05";
/// Time for a server to start, initialise and list its tools.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for one tool call; tools may do real work (builds, web requests).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Prefix of MCP tool names as the model sees them.
const PREFIX: &str = "mcp__";
/// Providers reject longer function names.
const MAX_NAME_LEN: usize = 64;

/// All configured servers, started on first use.
#[derive(Debug)]
pub(crate) struct McpManager {
    configs: Vec<McpServerConfig>,
    cwd: PathBuf,
    /// The scrubbed environment servers start with (their own `env` is added).
    env: Arc<Vec<(OsString, OsString)>>,
    servers: OnceCell<Vec<RemoteTool>>,
    /// Servers that failed to start, with the reason, for the UI to show.
    failures: Mutex<Vec<(String, String)>>,
}

/// One tool of one running server.
#[derive(Debug, Clone)]
struct RemoteTool {
    /// `mcp__<server>__<tool>`, sanitised for provider function-name rules.
    exposed: String,
    /// The name the server knows it by.
    name: String,
    description: String,
    input_schema: Value,
    client: Arc<McpClient>,
}

impl McpManager {
    /// Remembers the servers; nothing is started yet. `cwd` is where servers run.
    pub(crate) fn new(
        configs: Vec<McpServerConfig>,
        cwd: PathBuf,
        env: Vec<(OsString, OsString)>,
    ) -> McpManager {
        McpManager {
            configs,
            cwd,
            env: Arc::new(env),
            servers: OnceCell::new(),
            failures: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn is_mcp_name(name: &str) -> bool {
        name.starts_with(PREFIX)
    }

    /// Whether any server has been started (for diagnostics and tests).
    pub(crate) fn started(&self) -> bool {
        self.servers.initialized()
    }

    /// Servers that failed to start (name, reason), in no particular order.
    pub(crate) fn failures(&self) -> Vec<(String, String)> {
        lock(&self.failures).clone()
    }

    /// The tools of all servers that started, starting them if needed.
    pub(crate) async fn specs(&self) -> Vec<ToolSpec> {
        self.tools()
            .await
            .iter()
            .map(|tool| ToolSpec {
                name: tool.exposed.clone(),
                description: tool.description.clone(),
                parameters: tool.input_schema.clone(),
            })
            .collect()
    }

    pub(crate) async fn has_tool(&self, exposed: &str) -> bool {
        self.tools().await.iter().any(|t| t.exposed == exposed)
    }

    /// Calls a tool by its exposed name.
    pub(crate) async fn call(&self, exposed: &str, args: &Value) -> Result<ToolOutput, ToolError> {
        let tool = self
            .tools()
            .await
            .iter()
            .find(|t| t.exposed == exposed)
            .ok_or_else(|| ToolError::UnknownTool(exposed.to_owned()))?;
        let arguments = if args.is_null() {
            json!({})
        } else {
            args.clone()
        };
        let result = tool
            .client
            .request(
                "tools/call",
                json!({"name": tool.name, "arguments": arguments}),
                CALL_TIMEOUT,
            )
            .await?;
        Ok(render_call_result(&result))
    }

    async fn tools(&self) -> &[RemoteTool] {
        self.servers.get_or_init(|| self.start_all()).await
    }

    /// Starts every server concurrently; failures are logged and skipped.
    async fn start_all(&self) -> Vec<RemoteTool> {
        let mut set = JoinSet::new();
        for (index, config) in self.configs.iter().cloned().enumerate() {
            let cwd = self.cwd.clone();
            let env = Arc::clone(&self.env);
            set.spawn(async move {
                let name = config.name.clone();
                let started =
                    tokio::time::timeout(STARTUP_TIMEOUT, start_server(config, cwd, &env))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ToolError::Mcp {
                                server: name.clone(),
                                message: format!("did not start within {STARTUP_TIMEOUT:?}"),
                            })
                        });
                (index, name, started)
            });
        }
        let mut started = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((index, _, Ok(tools))) => started.push((index, tools)),
                Ok((_, name, Err(err))) => {
                    tracing::warn!(server = %name, error = %err, "MCP server skipped");
                    lock(&self.failures).push((name, err.to_string()));
                }
                Err(err) => tracing::warn!(error = %err, "MCP server startup task failed"),
            }
        }
        // Config order, so the tool list the model sees is stable between runs.
        started.sort_by_key(|(index, _)| *index);
        let mut tools: Vec<RemoteTool> = Vec::new();
        for tool in started.into_iter().flat_map(|(_, tools)| tools) {
            if tools.iter().any(|t| t.exposed == tool.exposed) {
                tracing::warn!(tool = %tool.exposed, "duplicate MCP tool name skipped");
                continue;
            }
            tools.push(tool);
        }
        tools
    }
}

/// Spawns, initialises and lists the tools of one server.
async fn start_server(
    config: McpServerConfig,
    cwd: PathBuf,
    env: &[(OsString, OsString)],
) -> Result<Vec<RemoteTool>, ToolError> {
    let client = Arc::new(McpClient::spawn(&config, &cwd, env)?);
    client
        .request(
            "initialize",
            json!({
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "picode", "version": env!("CARGO_PKG_VERSION")},
            }),
            STARTUP_TIMEOUT,
        )
        .await?;
    client
        .notify("notifications/initialized", json!({}))
        .await?;

    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let page = client
            .request("tools/list", params, STARTUP_TIMEOUT)
            .await?;
        for tool in page["tools"].as_array().into_iter().flatten() {
            let Some(name) = tool["name"].as_str() else {
                continue;
            };
            let mut schema = tool["inputSchema"].clone();
            if !schema.is_object() {
                schema = json!({"type": "object", "properties": {}});
            }
            tools.push(RemoteTool {
                exposed: exposed_name(&config.name, name),
                name: name.to_owned(),
                description: tool["description"].as_str().unwrap_or_default().to_owned(),
                input_schema: schema,
                client: client.clone(),
            });
        }
        cursor = page["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    tracing::info!(server = %config.name, tools = tools.len(), "MCP server started");
    Ok(tools)
}

/// `mcp__<server>__<tool>` with characters outside `[A-Za-z0-9_-]` replaced.
fn exposed_name(server: &str, tool: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{PREFIX}{}__{}", clean(server), clean(tool));
    name.truncate(MAX_NAME_LEN);
    name
}

/// Turns a `tools/call` result into text for the model.
fn render_call_result(result: &Value) -> ToolOutput {
    let mut parts = Vec::new();
    for item in result["content"].as_array().into_iter().flatten() {
        let part = match item["type"].as_str() {
            Some("text") => item["text"].as_str().unwrap_or_default().to_owned(),
            Some("resource") => match item["resource"]["text"].as_str() {
                Some(text) => text.to_owned(),
                None => format!("[resource {}]", item["resource"]["uri"]),
            },
            Some(other) => format!(
                "[{other} content ({}) not shown]",
                item["mimeType"].as_str().unwrap_or("unknown type")
            ),
            None => item.to_string(),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        if let Some(structured) = result.get("structuredContent") {
            parts.push(structured.to_string());
        }
    }
    ToolOutput {
        content: parts.join("\n"),
        is_error: result["isError"].as_bool().unwrap_or(false),
        diff: None,
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A connection to one server process.
#[derive(Debug)]
struct McpClient {
    server: String,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    /// Held so the process is killed when the client is dropped.
    _child: Child,
}

impl McpClient {
    fn spawn(
        config: &McpServerConfig,
        cwd: &std::path::Path,
        env: &[(OsString, OsString)],
    ) -> Result<McpClient, ToolError> {
        let server = config.name.clone();
        let fail = |message: String| ToolError::Mcp {
            server: server.clone(),
            message,
        };
        let mut child = tokio::process::Command::new(&config.command)
            .args(&config.args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(&config.env)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so Ctrl-C in the terminal (meant to
            // interrupt the agent) does not also kill the servers.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("could not start `{}`: {e}", config.command)))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(fail("no stdio pipes".into()));
        };
        let stdin = Arc::new(tokio::sync::Mutex::new(stdin));
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));

        tokio::spawn(read_messages(
            server.clone(),
            BufReader::new(stdout),
            stdin.clone(),
            pending.clone(),
            closed.clone(),
        ));
        let name = server.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(server = %name, "{line}");
            }
        });

        Ok(McpClient {
            server,
            stdin,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            _child: child,
        })
    }

    async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, ToolError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.closed.load(Ordering::SeqCst) {
            lock(&self.pending).remove(&id);
            return Err(self.error("the server has exited".into()));
        }
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(err) = self.send(&message).await {
            lock(&self.pending).remove(&id);
            return Err(err);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(message))) => Err(self.error(format!("{method} failed: {message}"))),
            Ok(Err(_)) => Err(self.error(format!("the server exited during {method}"))),
            Err(_) => {
                lock(&self.pending).remove(&id);
                // Tell the server to stop working on it; failure here changes nothing.
                let _ = self
                    .notify(
                        "notifications/cancelled",
                        json!({"requestId": id, "reason": "timed out"}),
                    )
                    .await;
                Err(self.error(format!("{method} timed out after {timeout:?}")))
            }
        }
    }

    async fn notify(&self, method: &str, params: Value) -> Result<(), ToolError> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await
    }

    async fn send(&self, message: &Value) -> Result<(), ToolError> {
        write_line(&self.stdin, message)
            .await
            .map_err(|e| self.error(format!("write failed: {e}")))
    }

    fn error(&self, message: String) -> ToolError {
        ToolError::Mcp {
            server: self.server.clone(),
            message,
        }
    }
}

async fn write_line(
    stdin: &tokio::sync::Mutex<ChildStdin>,
    message: &Value,
) -> std::io::Result<()> {
    let mut line = message.to_string();
    line.push('\n');
    let mut stdin = stdin.lock().await;
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await
}

/// Routes responses to their waiting requests and answers server requests,
/// until the server closes stdout; then fails everything still pending.
async fn read_messages(
    server: String,
    stdout: BufReader<tokio::process::ChildStdout>,
    stdin: Arc<tokio::sync::Mutex<ChildStdin>>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    let mut lines = stdout.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::debug!(server = %server, "ignoring non-JSON line from MCP server");
            continue;
        };
        let method = message.get("method").and_then(Value::as_str);
        let id = message.get("id").filter(|id| !id.is_null());
        match (method, id) {
            (None, Some(id)) => {
                let Some(sender) = id.as_u64().and_then(|id| lock(&pending).remove(&id)) else {
                    continue;
                };
                let outcome = match message.get("error") {
                    Some(error) => Err(error["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| error.to_string())),
                    None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
                };
                // The requester may have timed out and gone; that is fine.
                let _ = sender.send(outcome);
            }
            (Some(method), Some(id)) => {
                let reply = if method == "ping" {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32601, "message": format!("method not supported: {method}")}})
                };
                if write_line(&stdin, &reply).await.is_err() {
                    break;
                }
            }
            (Some(method), None) => {
                tracing::debug!(server = %server, method, "MCP notification ignored");
            }
            (None, None) => {}
        }
    }
    closed.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting request with an error.
    lock(&pending).clear();
    tracing::debug!(server = %server, "MCP server closed its output");
}

/// Locks a std mutex, recovering from poisoning (a map of senders stays valid).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_sanitised_and_bounded() {
        assert_eq!(exposed_name("calc", "add"), "mcp__calc__add");
        assert_eq!(exposed_name("my server", "do.it"), "mcp__my_server__do_it");
        assert_eq!(exposed_name("s", &"x".repeat(100)).len(), MAX_NAME_LEN);
    }

    #[test]
    fn call_results_become_text() {
        let out = render_call_result(&json!({
            "content": [{"type": "text", "text": "3"}, {"type": "image", "mimeType": "image/png", "data": ""}],
            "isError": false,
        }));
        assert_eq!(out.content, "3\n[image content (image/png) not shown]");
        assert!(!out.is_error);
        assert!(render_call_result(&json!({"content": [], "isError": true})).is_error);
    }
}
