//! What a command may reach: the Landlock sandbox (key files, writes outside
//! the project, the network), the scrubbed environment, private checkpoint
//! stores and redaction of secret-looking output. Every command here is a
//! real bash run by the real shell tool.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use picode_tools::{PermissionMode, SandboxMode, REDACTED};
use serde_json::json;

use crate::support::Project;

/// The hidden directory, removed with the test.
struct Keys(tempfile::TempDir);

impl Keys {
    fn join(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

const KEY: &str = "sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyzABCD";

/// A project whose toolbox hides a `keys` directory beside it, holding a
/// key file, as PiCode hides its config dir.
async fn with_keys(mode: PermissionMode, sandbox: SandboxMode, network: bool) -> (Project, Keys) {
    // Outside the temp dir: a hidden dir inside it would leave its top
    // level read-only in the sandbox (see the sandbox module).
    let keys = Keys(tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap());
    std::fs::write(keys.join("secrets.key"), "TOPSECRET-KEY-MATERIAL").unwrap();
    let hidden = keys.0.path().to_owned();
    let p = Project::with(mode, move |cfg| {
        cfg.sandbox.mode = sandbox;
        cfg.sandbox.allow_network = network;
        cfg.sandbox.hidden = vec![hidden];
    })
    .await;
    (p, keys)
}

#[tokio::test]
async fn a_sandboxed_command_cannot_read_the_key_files() {
    for mode in [PermissionMode::FullAuto, PermissionMode::AutoEdit] {
        let (p, keys) = with_keys(mode, SandboxMode::Auto, false).await;
        let command = format!("cat {}", keys.join("secrets.key").display());
        let out = p.call("shell", json!({ "command": command })).await;
        assert!(out.is_error, "{mode}: {}", out.content);
        assert!(out.content.contains("Permission denied"), "{}", out.content);
        assert!(!out.content.contains("TOPSECRET"), "{}", out.content);
        // Other files stay readable.
        let out = p
            .call("shell", json!({"command": "head -c 4 /etc/passwd"}))
            .await;
        assert!(!out.is_error, "{}", out.content);
    }
    // The same command without the sandbox does read it: the test can fail.
    let (p, keys) = with_keys(PermissionMode::FullAuto, SandboxMode::Off, false).await;
    let command = format!("cat {}", keys.join("secrets.key").display());
    let out = p.call("shell", json!({ "command": command })).await;
    assert!(out.content.contains("TOPSECRET"), "{}", out.content);
}

#[tokio::test]
async fn a_sandboxed_command_writes_only_to_the_project_and_temp_dirs() {
    let (p, _keys) = with_keys(PermissionMode::FullAuto, SandboxMode::Required, false).await;
    // Outside both the project and the temp dirs (which stay writable).
    let elsewhere = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let target = elsewhere.path().join("planted.txt");
    let command = format!("echo planted > {}", target.display());
    let out = p.call("shell", json!({ "command": command })).await;
    assert!(out.is_error, "{}", out.content);
    assert!(out.content.contains("Permission denied"), "{}", out.content);
    assert!(!target.exists());

    let out = p
        .call(
            "shell",
            json!({"command": "echo made > inside.txt && f=$(mktemp) && echo t > $f && rm $f && echo ok"}),
        )
        .await;
    assert!(!out.is_error, "{}", out.content);
    assert_eq!(p.read("inside.txt"), "made\n");
}

#[tokio::test]
async fn the_network_is_off_unless_allowed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let command = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");

    let (p, _keys) = with_keys(PermissionMode::FullAuto, SandboxMode::Auto, false).await;
    let out = p.call("shell", json!({ "command": &command })).await;
    assert!(out.is_error, "{}", out.content);
    assert!(out.content.contains("Permission denied"), "{}", out.content);
    assert!(!out.content.contains("connected\n"), "{}", out.content);

    let (p, _keys) = with_keys(PermissionMode::FullAuto, SandboxMode::Auto, true).await;
    let out = p.call("shell", json!({ "command": &command })).await;
    assert!(!out.is_error, "{}", out.content);
    assert!(out.content.starts_with("connected\n"), "{}", out.content);
}

#[tokio::test]
async fn ask_mode_commands_are_approved_one_by_one_and_not_confined() {
    let (p, keys) = with_keys(PermissionMode::Ask, SandboxMode::Auto, false).await;
    let command = format!("cat {}", keys.join("secrets.key").display());
    let out = p.call("shell", json!({ "command": command })).await;
    assert!(out.content.contains("TOPSECRET"), "{}", out.content);
}

#[tokio::test]
async fn commands_start_without_secret_variables() {
    // Set once, before any command of this test runs; the name is unique to
    // this test so parallel tests are unaffected.
    std::env::set_var("CONFINEMENT_TEST_API_KEY", "leaked-value");
    std::env::set_var("CONFINEMENT_TEST_PLAIN", "plain-value");
    let p = Project::with(PermissionMode::FullAuto, |cfg| {
        cfg.sandbox.env_allow = vec!["CONFINEMENT_TEST_ALLOWED_TOKEN".into()];
    })
    .await;
    let out = p
        .call(
            "shell",
            json!({"command": "echo \"key=$CONFINEMENT_TEST_API_KEY plain=$CONFINEMENT_TEST_PLAIN\"; env | grep -c '^PICODE_' || true"}),
        )
        .await;
    assert!(
        out.content.starts_with("key= plain=plain-value\n0\n"),
        "{}",
        out.content
    );
}

#[tokio::test]
async fn checkpoint_stores_are_private_and_tightened() {
    let p = Project::new(PermissionMode::FullAuto).await;
    std::fs::set_permissions(p.store.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p
        .call("write_file", json!({"path": "a.txt", "content": "x"}))
        .await;
    assert!(!out.is_error, "{}", out.content);
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(p.store.path()), 0o700);
    let git_dir = p.toolbox.checkpoints().git_dir().to_owned();
    assert_eq!(mode(&git_dir), 0o700);
}

#[tokio::test]
async fn secret_looking_output_is_redacted_unless_turned_off() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write(".env", &format!("ANTHROPIC_API_KEY={KEY}\nDEBUG=1\n"));
    let out = p.call("read_file", json!({"path": ".env"})).await;
    assert!(!out.content.contains(KEY), "{}", out.content);
    assert!(out.content.contains(REDACTED), "{}", out.content);
    assert!(out.content.contains("DEBUG=1"), "{}", out.content);
    let out = p.call("shell", json!({"command": "cat .env"})).await;
    assert!(!out.content.contains(KEY), "{}", out.content);

    p.toolbox.set_redacting(false);
    let out = p.call("read_file", json!({"path": ".env"})).await;
    assert!(out.content.contains(KEY), "{}", out.content);
}
