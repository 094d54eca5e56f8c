//! The shell tool: exit codes, timeouts that kill the process tree, output
//! caps and working-directory confinement.

use std::time::{Duration, Instant};

use picode_tools::PermissionMode;
use serde_json::json;

use crate::support::Project;

#[tokio::test]
async fn runs_in_the_project_and_reports_exit_codes() {
    let p = Project::new(PermissionMode::FullAuto).await;
    p.write("sub/file.txt", "x");

    let ok = p.call("shell", json!({"command": "echo hello; pwd"})).await;
    assert!(!ok.is_error, "{}", ok.content);
    assert!(ok.content.starts_with("hello\n"));
    assert!(ok
        .content
        .contains(&format!("{}\n", p.toolbox.project_root().display())));
    assert!(ok.content.ends_with("[exit code: 0]"), "{}", ok.content);

    let failed = p
        .call("shell", json!({"command": "echo oops >&2; exit 3"}))
        .await;
    assert!(failed.is_error);
    assert!(
        failed.content.contains("[stderr]\noops\n"),
        "{}",
        failed.content
    );
    assert!(failed.content.ends_with("[exit code: 3]"));

    let in_sub = p
        .call("shell", json!({"command": "ls", "cwd": "sub"}))
        .await;
    assert!(
        in_sub.content.starts_with("file.txt\n"),
        "{}",
        in_sub.content
    );

    assert_eq!(
        p.toolbox.executed_commands(),
        ["echo hello; pwd", "echo oops >&2; exit 3", "ls"]
    );
}

fn is_running(pid: u32) -> bool {
    // A zombie has exited; it only waits for its (new) parent to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn times_out_and_kills_the_whole_process_tree() {
    let p = Project::with(PermissionMode::FullAuto, |cfg| {
        cfg.shell_timeout = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let out = p
        .call(
            "shell",
            json!({"command": "echo before; sleep 30 & echo $! > child.pid; wait; echo after"}),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.is_error);
    assert!(out.content.contains("before"), "{}", out.content);
    assert!(!out.content.lines().any(|l| l == "after"));
    assert!(
        out.content.contains("timed out after 1s"),
        "{}",
        out.content
    );

    let pid: u32 = p.read("child.pid").trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_running(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !is_running(pid),
        "the grandchild sleep {pid} survived the timeout"
    );

    // The model may ask for its own limit.
    let quick = p
        .call("shell", json!({"command": "sleep 5", "timeout_secs": 1}))
        .await;
    assert!(quick.content.contains("timed out after 1s"));
}

#[tokio::test]
async fn caps_output_and_says_so() {
    let p = Project::with(PermissionMode::FullAuto, |cfg| cfg.output_cap_bytes = 2000).await;
    let out = p.call("shell", json!({"command": "seq 1 100000"})).await;
    assert!(!out.is_error);
    assert!(out.content.len() <= 2000, "{} bytes", out.content.len());
    assert!(out.content.starts_with("1\n2\n3\n"));
    assert!(out.content.contains("output truncated"), "{}", out.content);
    // The end of the output and the exit code survive the cut.
    assert!(
        out.content.contains("100000\n[exit code: 0]"),
        "{}",
        out.content
    );
}

#[tokio::test]
async fn refuses_a_working_directory_outside_the_project() {
    let p = Project::new(PermissionMode::FullAuto).await;
    for cwd in ["..", "../outside", "/tmp", "/"] {
        let out = p
            .call("shell", json!({"command": "touch escaped.txt", "cwd": cwd}))
            .await;
        assert!(out.is_error, "cwd {cwd} was accepted");
        assert!(
            out.content.contains("outside the project"),
            "{}",
            out.content
        );
    }
    assert!(!p.outside().join("escaped.txt").exists());
    assert!(p.toolbox.executed_commands().is_empty());

    let missing = p
        .call("shell", json!({"command": "true", "cwd": "no/such/dir"}))
        .await;
    assert!(missing.is_error);
    assert!(missing.content.contains("does not exist"));
}

#[tokio::test]
async fn background_jobs_do_not_hang_the_call() {
    let p = Project::new(PermissionMode::FullAuto).await;
    let started = Instant::now();
    let out = p
        .call("shell", json!({"command": "sleep 30 & echo started"}))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(out.content.starts_with("started\n"), "{}", out.content);
    assert!(out.content.contains("[exit code: 0]"));
}
