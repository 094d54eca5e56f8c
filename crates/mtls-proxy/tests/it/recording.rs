//! The record store seen from outside: redaction, body capture, the `logs`
//! command, and a full or read-only database never stopping the proxy.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test]
async fn records_redact_secrets_and_capture_bounded_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"cap\"\nupstreams = [\"{}\"]\ncapture_body = 16\n",
            b.url
        ),
    )
    .replace(
        "flush_interval = \"10ms\"",
        "flush_interval = \"10ms\"\nredact_headers = [\"x-api-key\"]\nredact_query_params = [\"session_id\"]",
    );
    let app = spawn_app(dir.path(), &config).await;
    let resp = reqwest::Client::new()
        .post(app.http_url("/submit?x=1&access_token=t0ken&Session_ID=s1d"))
        .header("authorization", "Bearer s3cret")
        .header("x-api-key", "k3y")
        .header("cookie", "session=abc")
        .body("0123456789abcdefghijklmnop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rows = app.records("route=cap", 1).await;
    let row = &rows[0];
    let text = row.to_string();
    for secret in ["s3cret", "k3y", "session=abc", "t0ken", "s1d"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("[redacted]"));
    assert_eq!(row["request_body"], "0123456789abcdef");
    assert_eq!(row["truncated"], true);
    assert_eq!(
        row["query"],
        "x=1&access_token=[redacted]&Session_ID=[redacted]"
    );
    assert_eq!(row["bytes_in"], 26);
    app.stop().await;
    // The database file itself holds no secret either.
    let raw = std::fs::read(dir.path().join("records.db")).unwrap();
    assert!(!raw.windows(6).any(|w| w == b"s3cret"));
    assert!(!raw.windows(5).any(|w| w == b"t0ken"));
}

fn logs(db: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mtls-proxy"))
        .arg("logs")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_logs_command_filters_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"live\"\npath_prefix = \"/api\"\nupstreams = [\"{}\"]\n\
             [[routes]]\nname = \"dead\"\npath_prefix = \"/down\"\nupstreams = [\"http://{dead}\"]\n",
            b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    for path in [
        "/api/users/1",
        "/api/users/2",
        "/api/orders",
        "/down/x",
        "/nowhere",
    ] {
        reqwest::get(app.http_url(path)).await.unwrap();
    }
    app.records("", 5).await;
    let db = dir.path().join("records.db");

    let out = logs(&db, &["--status", "5xx", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["route"], "dead");
    assert_eq!(lines[0]["status"], 502);

    let out = logs(
        &db,
        &[
            "--path",
            "/api/users/*",
            "--since",
            "10m",
            "--format",
            "json",
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");

    let out = logs(&db, &["--route", "live"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("STATUS"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let out = logs(&db, &["--status", "9xx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("status") && err.contains("9xx"), "{err}");

    let out = logs(&dir.path().join("missing.db"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"));
}

/// A small tmpfs, so the store can really run out of space or be made
/// read-only. Needs root, which the test command has in CI.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (run the test command as root)"
        );
        Tmpfs { dir }
    }

    fn remount(&self, mode: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn ready(app: &TestApp) -> (u16, serde_json::Value) {
    let r = app
        .admin_client
        .get(format!("http://{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_ready(app: &TestApp, want: u16) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, body) = ready(app).await;
        if status == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("readyz never answered {want}: {last}");
}

#[tokio::test]
async fn a_full_database_never_stops_the_proxy() {
    let fs = Tmpfs::new("2m");
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let db = fs.dir.path().join("records.db");
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"r\"\nupstreams = [\"{}\"]\ncapture_body = 65536\n",
            b.url
        ),
    )
    .replace(
        "path = \"records.db\"",
        &format!("path = \"{}\"", db.display()),
    );
    let app = spawn_app(dir.path(), &config).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(app.http_url("/")).send().await.unwrap().status(),
        200
    );
    wait_ready(&app, 200).await;

    // Fill the file system, then keep sending requests with large bodies.
    let filler = fs.dir.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 4 * 1024 * 1024]);
    for _ in 0..20 {
        let resp = client
            .post(app.http_url("/full"))
            .body(vec![b'z'; 60_000])
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "the proxy must keep serving on a full disk"
        );
    }
    let body = wait_ready(&app, 503).await;
    assert_eq!(body["store_writable"], false, "{body}");
    let m = app.metrics().await;
    assert!(
        metric(&m, "mtls_proxy_records_failed_total", &[]) >= 1.0,
        "{m}"
    );

    // Space comes back: the store recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_ready(&app, 200).await;
    assert_eq!(
        client
            .get(app.http_url("/after-full"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.records("path=/after-full", 1).await.len(), 1);

    app.stop().await;
}

#[tokio::test]
async fn a_read_only_database_never_stops_the_proxy() {
    let fs = Tmpfs::new("2m");
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let db = fs.dir.path().join("records.db");
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"r\"\nupstreams = [\"{}\"]\n", b.url),
    )
    .replace(
        "path = \"records.db\"",
        &format!("path = \"{}\"", db.display()),
    );
    // A first run creates the database; then the file system turns read-only.
    let first = spawn_app(dir.path(), &config).await;
    reqwest::get(first.http_url("/")).await.unwrap();
    first.records("", 1).await;
    first.stop().await;
    // A file system cannot turn read-only under open files, so the second
    // run starts on the read-only database.
    fs.remount("ro");
    let app = spawn_app(dir.path(), &config).await;
    for _ in 0..5 {
        assert_eq!(
            reqwest::get(app.http_url("/ro")).await.unwrap().status(),
            200
        );
    }
    let body = wait_ready(&app, 503).await;
    assert_eq!(body["store_writable"], false, "{body}");
    app.stop().await;
    fs.remount("rw");
}
