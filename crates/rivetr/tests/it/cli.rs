//! The CLI as a user types it, against a running server.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::rivetr::{AppRepo, Server};

fn rivetr(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rivetr"))
        .args(["--api", &format!("http://{}", server.api)])
        .args(args)
        .env("RIVETR_TOKEN", &server.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_env_deploy_follow_logs_list_and_delete_from_the_cli() {
    let mut server = Server::start();
    let repo = AppRepo::new("c1");
    let out = rivetr(
        &server,
        &[
            "app",
            "create",
            "cli",
            "--git",
            &repo.url(),
            "--domain",
            "cli.example.test",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("cli.apps.test, cli.example.test"),
        "{}",
        text(&out)
    );

    // A bare KEY reads its value from stdin, so it is never in argv.
    let out = rivetr(
        &server,
        &["env", "set", "cli", "GREETING", "--secret"],
        Some("from-stdin-7c1\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = rivetr(&server, &["env", "list", "cli"], None);
    assert!(
        text(&out).contains("GREETING=******** (secret)"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("from-stdin-7c1"));

    // --follow prints the build log live and ends with the status.
    let out = rivetr(&server, &["deploy", "cli", "--follow"], None);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for expected in [
        "cloning",
        "building rivetr/cli:d",
        "health check",
        "traffic switched",
        "==> running",
    ] {
        assert!(log.contains(expected), "{expected:?} missing from:\n{log}");
    }
    assert_eq!(
        server.get("cli.example.test", "/greeting").await.unwrap().1,
        "from-stdin-7c1\n"
    );

    let out = rivetr(&server, &["logs", "cli"], None);
    assert!(text(&out).contains("app started"), "{}", text(&out));
    let out = rivetr(&server, &["app", "list"], None);
    assert!(
        text(&out).contains("cli") && text(&out).contains("running"),
        "{}",
        text(&out)
    );

    // Nothing to roll back to yet: a clear error and a failing exit code.
    let out = rivetr(&server, &["rollback", "cli"], None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no earlier good deployment"),
        "{}",
        text(&out)
    );
    // An unknown app, a bad token.
    let out = rivetr(&server, &["status", "nope"], None);
    assert!(
        !out.status.success() && text(&out).contains("app \"nope\" not found"),
        "{}",
        text(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rivetr"))
        .args([
            "--api",
            &format!("http://{}", server.api),
            "--token",
            "rvt_1.bad",
            "app",
            "list",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("HTTP 401"),
        "{}",
        text(&out)
    );

    let out = rivetr(&server, &["app", "delete", "cli"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(server.containers_of("cli").is_empty());
    assert_eq!(server.get("cli.example.test", "/").await.unwrap().0, 404);
    server.cleanup(&["cli"]);
}
