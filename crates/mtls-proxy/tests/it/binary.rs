//! The `mtls-proxy` binary itself: `check`, and `run` with SIGHUP reload and
//! a draining shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mtls-proxy"))
}

#[test]
fn check_names_the_offending_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nhttp = \"127.0.0.1:0\"\n[[routes]]\nname = \"a\"\nupstreams = [\"http://127.0.0.1:1\"]\nclient_auth = \"sometimes\"\n",
    )
    .unwrap();
    let out = bin().arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("client_auth"),
        "{err}"
    );

    std::fs::write(
        &path,
        "[server]\nhttps = \"127.0.0.1:0\"\n[[certificates]]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n",
    )
    .unwrap();
    let out = bin().arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificates[0]") && err.contains("missing.pem"),
        "{err}"
    );

    std::fs::write(&path, "[server]\nhttp = \"127.0.0.1:0\"\n").unwrap();
    let out = bin().arg("check").arg("-c").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, admin: u16, upstream: &str) -> String {
    format!(
        "[server]\nhttp = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\nwatch_interval = \"0s\"\n\
         [[routes]]\nname = \"main\"\nupstreams = [\"{upstream}\"]\n"
    )
}

async fn name_at(url: &str) -> Option<String> {
    let body: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    body["backend"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let (port, admin) = (free_port(), free_port());
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(port, admin, &a.url)).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mtls-proxy"))
        .arg("run")
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let mut up = false;
    for _ in 0..100 {
        if name_at(&url).await.as_deref() == Some("a") {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "the proxy never served");

    // File watching is off: only SIGHUP makes it read the file again.
    std::fs::write(&path, config(port, admin, &b.url)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(name_at(&url).await.as_deref(), Some("a"));
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut switched = false;
    for _ in 0..100 {
        if name_at(&url).await.as_deref() == Some("b") {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(switched, "SIGHUP did not reload");

    // A slow request in flight when SIGTERM arrives still completes.
    let slow =
        tokio::spawn(async move { reqwest::get(format!("http://127.0.0.1:{port}/slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let resp = slow.await.unwrap().expect("in-flight request was cut off");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
