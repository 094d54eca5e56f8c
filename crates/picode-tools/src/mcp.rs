//! MCP servers as tools, through `rmcp`, the protocol's official Rust SDK
//! (current protocol revision): servers started as a command (stdio) and
//! running servers at a `url` (streamable HTTP). rmcp's HTTP client is
//! reqwest 0.13, a second copy beside the workspace's 0.12 until the
//! workspace moves; it shares rustls and ring with the rest.
//!
//! Servers from the config are started lazily, on the first [`McpManager::specs`]
//! or tool call, and all at once: each gets its own startup timeout, and a
//! server that fails to start is logged and left out while the others work.
//! rmcp runs the handshake, answers the server's pings and pages through
//! `tools/list`; this module names the tools for the model (`mcp__server__tool`)
//! and renders results as text.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use crate::{McpServerConfig, ToolError, ToolOutput, ToolSpec};

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
        let result = tool.client.call_tool(&tool.name, arguments).await?;
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
    let client = Arc::new(McpClient::start(&config, &cwd, env).await?);
    let mut tools = Vec::new();
    for tool in client.list_tools().await? {
        let schema = Value::Object(tool.input_schema.as_ref().clone());
        tools.push(RemoteTool {
            exposed: exposed_name(&config.name, &tool.name),
            name: tool.name.to_string(),
            description: tool.description.as_deref().unwrap_or_default().to_owned(),
            input_schema: schema,
            client: client.clone(),
        });
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

/// A connection to one server process, through rmcp.
struct McpClient {
    server: String,
    /// Owns the child process (killed when dropped) and the message loop,
    /// which also answers the server's pings.
    service: RunningService<RoleClient, ClientConfig>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// Spawns the server and runs the `initialize` handshake.
    async fn start(
        config: &McpServerConfig,
        cwd: &std::path::Path,
        env: &[(OsString, OsString)],
    ) -> Result<McpClient, ToolError> {
        let server = config.name.clone();
        let fail = |message: String| ToolError::Mcp {
            server: server.clone(),
            message,
        };
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("picode", env!("CARGO_PKG_VERSION")),
        );
        if let Some(url) = &config.url {
            if !config.command.is_empty() {
                return Err(fail("give either `command` or `url`, not both".into()));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(fail(format!("`{url}` is not an http(s) URL")));
            }
            install_tls_provider();
            let transport = StreamableHttpClientTransport::from_uri(url.as_str());
            let service = info
                .serve(transport)
                .await
                .map_err(|e| fail(format!("initialize over HTTP at {url} failed: {e}")))?;
            return Ok(McpClient { server, service });
        }
        if config.command.is_empty() {
            return Err(fail("needs a `command` to start or a `url`".into()));
        }
        let mut command = tokio::process::Command::new(&config.command);
        command
            .args(&config.args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(&config.env)
            .current_dir(cwd)
            // Its own process group, so Ctrl-C in the terminal (meant to
            // interrupt the agent) does not also kill the servers.
            .process_group(0)
            .kill_on_drop(true);
        let (transport, stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("could not start `{}`: {e}", config.command)))?;
        if let Some(stderr) = stderr {
            let name = server.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(server = %name, "{line}");
                }
            });
        }
        let service = info
            .serve(transport)
            .await
            .map_err(|e| fail(format!("initialize failed: {e}")))?;
        Ok(McpClient { server, service })
    }

    /// Every tool, following `nextCursor` pages.
    async fn list_tools(&self) -> Result<Vec<rmcp::model::Tool>, ToolError> {
        self.service
            .list_all_tools()
            .await
            .map_err(|e| self.error(format!("tools/list failed: {e}")))
    }

    /// Calls a tool; the result in the protocol's JSON shape.
    async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, ToolError> {
        let Value::Object(arguments) = arguments else {
            return Err(self.error("tool arguments must be a JSON object".into()));
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        let result = tokio::time::timeout(CALL_TIMEOUT, self.service.call_tool(params))
            .await
            .map_err(|_| self.error(format!("tools/call timed out after {CALL_TIMEOUT:?}")))?
            .map_err(|e| self.error(format!("tools/call failed: {e}")))?;
        serde_json::to_value(result).map_err(|e| self.error(format!("tools/call result: {e}")))
    }

    fn error(&self, message: String) -> ToolError {
        ToolError::Mcp {
            server: self.server.clone(),
            message,
        }
    }
}

/// rmcp's HTTP client is built on rustls without a crypto provider of its
/// own (so that it does not bring a second one); the workspace's is ring.
fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Locks a std mutex, recovering from poisoning (a list of failures stays valid).
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
