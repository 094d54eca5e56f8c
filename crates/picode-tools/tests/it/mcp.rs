//! MCP over stdio against a real (tiny, Python) server from `tests/mcp_server.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use picode_tools::{AlwaysApprove, McpServerConfig, PermissionMode};
use serde_json::json;

use crate::support::{Project, Recorder};

fn python_server(name: &str, marker: &Path) -> McpServerConfig {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_server.py");
    McpServerConfig {
        name: name.to_owned(),
        url: None,
        command: "python3".to_owned(),
        args: vec![script.display().to_string()],
        env: BTreeMap::from([(
            "PICODE_TEST_MARKER".to_owned(),
            marker.display().to_string(),
        )]),
    }
}

async fn project_with(mode: PermissionMode, servers: Vec<McpServerConfig>) -> Project {
    Project::with(mode, |cfg| cfg.mcp_servers = servers).await
}

#[tokio::test]
async fn tools_are_listed_and_called() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("calc.started");
    let p = project_with(
        PermissionMode::FullAuto,
        vec![python_server("calc", &marker)],
    )
    .await;

    let specs = p.toolbox.specs().await;
    let add = specs
        .iter()
        .find(|s| s.name == "mcp__calc__add")
        .expect("the MCP tool is offered to the model");
    assert_eq!(add.description, "Add two numbers.");
    assert_eq!(add.parameters["required"], json!(["a", "b"]));
    assert!(specs.iter().any(|s| s.name == "read_file"));

    let sum = p.call("mcp__calc__add", json!({"a": 2, "b": 3})).await;
    assert!(!sum.is_error, "{}", sum.content);
    assert_eq!(sum.content, "5");

    let bad = p.call("mcp__calc__add", json!({"a": 2})).await;
    assert!(bad.is_error);
    assert!(bad.content.contains("bad arguments"));

    let unknown = p.call("mcp__calc__multiply", json!({})).await;
    assert!(unknown.is_error);
    assert!(unknown.content.contains("unknown tool"));

    // Started once, however many calls.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "started\n");
}

#[tokio::test]
async fn servers_start_lazily_on_first_use() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("calc.started");
    let p = project_with(
        PermissionMode::FullAuto,
        vec![python_server("calc", &marker)],
    )
    .await;

    // Built-in tools work without starting anything.
    p.call("list_files", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!marker.exists(), "server started before first use");
    assert!(!p.toolbox.mcp_started());

    // A call is a first use too, not only specs().
    let sum = p.call("mcp__calc__add", json!({"a": 1.5, "b": 1.5})).await;
    assert_eq!(sum.content, "3");
    assert!(marker.exists());
    assert!(p.toolbox.mcp_started());
}

#[tokio::test]
async fn a_broken_server_does_not_break_the_others() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("good.started");
    let missing = McpServerConfig {
        name: "missing".to_owned(),
        command: "picode-no-such-mcp-server".to_owned(),
        ..McpServerConfig::default()
    };
    let crashing = McpServerConfig {
        name: "crashing".to_owned(),
        command: "python3".to_owned(),
        args: vec!["-c".into(), "import sys; sys.exit(1)".into()],
        ..McpServerConfig::default()
    };
    let garbage = McpServerConfig {
        name: "garbage".to_owned(),
        command: "bash".to_owned(),
        args: vec![
            "-c".into(),
            "echo not json; read line; echo '{}'; exit 0".into(),
        ],
        ..McpServerConfig::default()
    };
    let p = project_with(
        PermissionMode::FullAuto,
        vec![missing, crashing, python_server("good", &marker), garbage],
    )
    .await;

    let started = std::time::Instant::now();
    let mcp: Vec<String> = p
        .toolbox
        .specs()
        .await
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("mcp__"))
        .collect();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(mcp, ["mcp__good__add"]);
    let mut failed: Vec<String> = p.toolbox.mcp_failures().into_iter().map(|f| f.0).collect();
    failed.sort();
    assert_eq!(failed, ["crashing", "garbage", "missing"]);
    let sum = p.call("mcp__good__add", json!({"a": 20, "b": 22})).await;
    assert_eq!(sum.content, "42");
    let gone = p.call("mcp__missing__anything", json!({})).await;
    assert!(gone.is_error);
}

#[tokio::test]
async fn mcp_calls_follow_the_permission_mode() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("calc.started");
    let p = project_with(PermissionMode::Plan, vec![python_server("calc", &marker)]).await;

    let refused = p.call("mcp__calc__add", json!({"a": 1, "b": 2})).await;
    assert!(refused.is_error);
    assert!(refused.content.contains("plan mode"));

    // In auto-edit, MCP tools count as commands and still ask.
    p.toolbox.set_mode(PermissionMode::AutoEdit);
    let no = Recorder::new(false);
    let declined = p
        .toolbox
        .call("mcp__calc__add", json!({"a": 1, "b": 2}), &no)
        .await;
    assert!(
        declined.content.contains("declined"),
        "{}",
        declined.content
    );
    let asked = no.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].kind, picode_tools::ToolKind::Execute);

    let allowed = p
        .toolbox
        .call("mcp__calc__add", json!({"a": 1, "b": 2}), &AlwaysApprove)
        .await;
    assert_eq!(allowed.content, "3");
}

/// The SDK venv's interpreter (`scripts/setup-test-deps` installs the
/// official `mcp` Python SDK there); the test fails with the fix if missing.
fn sdk_python() -> PathBuf {
    if let Some(path) = std::env::var_os("PICODE_SDK_PYTHON") {
        return path.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let python = cache.join("picode-sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup-test-deps (it installs the MCP Python SDK)",
        python.display()
    );
    python
}

/// A streamable-HTTP server made with the official Python SDK, on a free port.
async fn http_server() -> (tokio::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_http_server.py");
    let child = tokio::process::Command::new(sdk_python())
        .arg(script)
        .arg(port.to_string())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the MCP HTTP server");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, format!("http://127.0.0.1:{port}/mcp"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the MCP HTTP server did not listen on {port} within 10 s");
}

#[tokio::test]
async fn a_streamable_http_server_is_listed_and_called() {
    let (_server, url) = http_server().await;
    let web = McpServerConfig {
        name: "web".into(),
        url: Some(url),
        ..McpServerConfig::default()
    };
    let gone = McpServerConfig {
        name: "gone".into(),
        url: Some("http://127.0.0.1:9/mcp".into()),
        ..McpServerConfig::default()
    };
    let p = project_with(PermissionMode::FullAuto, vec![web, gone]).await;
    let specs = p.toolbox.specs().await;
    let add = specs
        .iter()
        .find(|s| s.name == "mcp__web__add")
        .unwrap_or_else(|| panic!("no mcp__web__add in {specs:?}"));
    assert_eq!(add.parameters["required"], json!(["a", "b"]));
    let out = p.call("mcp__web__add", json!({"a": 2, "b": 3})).await;
    assert!(!out.is_error, "{}", out.content);
    assert_eq!(out.content.trim(), "5");
    let failures = p.toolbox.mcp_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "gone");
}
