//! Secrets stay out of commands and other users' reach, end to end: the
//! real binary runs the model's shell calls in full-auto mode.

use std::os::unix::fs::PermissionsExt as _;

use fake_llm::{FakeLlm, Script};
use serde_json::json;

use crate::helpers::{tool_results, TestEnv};

#[tokio::test]
async fn commands_see_neither_provider_keys_nor_the_key_files() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    // PiCode's own key material, as `provider add --api-key-stdin` leaves it.
    std::fs::write(env.config_dir.join("secrets.key"), "KEY-FILE-CONTENT").unwrap();
    fake.push(Script::tool_call(
        "shell",
        json!({"command": "echo \"env=$ANTHROPIC_API_KEY$PICODE_SERVE_TOKEN\""}),
    ));
    let cat = format!("cat {}", env.config_dir.join("secrets.key").display());
    fake.push(Script::tool_call("shell", json!({ "command": cat })));
    let plant = format!("echo x > {}", env.config_dir.join("AGENTS.md").display());
    fake.push(Script::tool_call("shell", json!({ "command": plant })));

    fake.push(Script::text("done"));

    let run = env
        .command()
        .args(["-p", "look around", "--permission-mode", "full-auto"])
        .env(
            "ANTHROPIC_API_KEY",
            "sk-ant-api03-should-never-reach-a-command",
        )
        .env(
            "PICODE_SERVE_TOKEN",
            "serve-token-should-never-reach-a-command",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let last = fake.requests().last().unwrap().clone();
    let results = tool_results(&last);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(results[0].1.starts_with("env=\n"), "{}", results[0].1);
    assert!(
        results[1].1.contains("Permission denied"),
        "{}",
        results[1].1
    );
    assert!(
        !results[1].1.contains("KEY-FILE-CONTENT"),
        "{}",
        results[1].1
    );
    assert!(
        results[2].1.contains("Permission denied"),
        "{}",
        results[2].1
    );
    assert!(!env.config_dir.join("AGENTS.md").exists());
}

#[tokio::test]
async fn secret_output_is_redacted_before_it_is_sent() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    let key = "sk-proj-Abcdefghijklmnop0123456789QRSTUVWX";
    env.write(".env", &format!("OPENAI_API_KEY={key}\n"));
    fake.push(Script::tool_call("read_file", json!({"path": ".env"})));
    fake.push(Script::text("done"));
    env.run(&["-p", "read .env"]).await.assert_code(0);
    let sent = fake.requests()[1].to_string();
    assert!(!sent.contains(key), "{sent}");
    assert!(sent.contains("[REDACTED]"), "{sent}");
}

#[tokio::test]
async fn the_sessions_database_is_private_and_tightened_on_open() {
    let fake = FakeLlm::start().await;
    let env = TestEnv::new().with_provider("openai", &fake);
    let db = env.data_dir.join("sessions.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    fake.push(Script::text("ok"));
    env.run(&["-p", "hi"]).await.assert_code(0);
    assert_eq!(mode(&env.data_dir), 0o700);
    assert_eq!(mode(&db), 0o600);

    // Loosened by something else: the next run tightens them again.
    std::fs::set_permissions(&env.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    fake.push(Script::text("ok"));
    env.run(&["-p", "hi"]).await.assert_code(0);
    assert_eq!(mode(&env.data_dir), 0o700);
    assert_eq!(mode(&db), 0o600);
    let checkpoints = env.data_dir.join("checkpoints");
    assert_eq!(mode(&checkpoints), 0o700);
}

/// Makes everything under `dir` belong to `uid`.
fn chown_tree(dir: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            chown_tree(&path, uid);
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        }
    }
}

/// A command cannot read PiCode's own environment (where the provider keys
/// are) through `/proc/PID/environ`, with the sandbox (Landlock) and without
/// it (PiCode is non-dumpable, so those files belong to root). Both hold for
/// ordinary users; a command run as root read them on Linux 6.18 whatever
/// PiCode did (even without CAP_SYS_PTRACE), so when the tests run as root,
/// PiCode runs as `nobody`.
#[tokio::test]
async fn picodes_own_environment_is_closed_to_its_commands() {
    for sandbox in ["auto", "off"] {
        let fake = FakeLlm::start().await;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["project", "config", "data", "home"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        std::fs::write(
            root.join("config/picode.toml"),
            format!(
                "sandbox = \"{sandbox}\"\n{}",
                crate::helpers::provider_toml("fake", "openai", &fake.base_url())
            ),
        )
        .unwrap();
        let bin = root.join("picode");
        std::fs::copy(crate::helpers::BIN, &bin).unwrap();
        fake.push(Script::tool_call(
            "shell",
            json!({"command": "tr '\\0' '\\n' < /proc/$PPID/environ"}),
        ));
        fake.push(Script::text("done"));
        let mut cmd = if nix::unistd::geteuid().is_root() {
            const NOBODY: u32 = 65534;
            chown_tree(root, NOBODY);
            let mut cmd = tokio::process::Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin);
            cmd
        } else {
            tokio::process::Command::new(&bin)
        };
        let out = cmd
            .args(["-p", "look", "--permission-mode", "full-auto"])
            .current_dir(root.join("project"))
            .env("PICODE_CONFIG_DIR", root.join("config"))
            .env("PICODE_DATA_DIR", root.join("data"))
            .env("HOME", root.join("home"))
            .env("PICODE_SECRET_STORE", "file")
            .env("LEAK_PROBE", "marker-that-must-not-leak")
            .output()
            .await
            .expect("run picode (as nobody through setpriv when root)");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let results = tool_results(fake.requests().last().unwrap());
        let output = &results[0].1;
        assert!(
            output.contains("Permission denied"),
            "sandbox {sandbox}: {output}"
        );
        assert!(
            !output.contains("marker-that-must-not-leak"),
            "sandbox {sandbox}: {output}"
        );
    }
}
