//! Whole-system tests: the real `strata-control`, `strata-agent` and
//! `strata-receiver` binaries as separate processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::helpers::{
    bin_dir, eventually, other_bins, port_range, spawn_app, ADMIN_EMAIL, PASSWORD,
};

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pid: u32) -> bool {
    supervisor_pid_alive(pid)
}

fn supervisor_pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Kills a receiver left behind by a failed test.
struct ReceiverGuard(Option<u32>);

impl Drop for ReceiverGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Enrols and starts a real agent process against `control_url`.
async fn start_agent(control_url: &str, token: &str, state_dir: &Path) -> Proc {
    let (agent_bin, _) = other_bins();
    let out = tokio::process::Command::new(&agent_bin)
        .args(["--state-dir"])
        .arg(state_dir)
        .args([
            "enrol",
            "--control",
            control_url,
            "--token",
            token,
            "--hostname",
            "field-cam",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "enrol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = Command::new(&agent_bin)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["run", "--stats-interval-ms", "200"])
        // The agent really encodes and sends now: small and light is
        // enough to see bytes reach the receiver.
        .args(["--video-size", "320x240", "--bitrate-kbps", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

async fn stream_state(app_get: impl std::future::Future<Output = (u16, Value)>) -> Value {
    app_get.await.1
}

#[tokio::test]
async fn start_and_stop_through_a_real_agent_and_receiver() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let viewer = app.user(&admin, "viewer@example.com", "viewer").await;
    let (sender_id, token) = app.sender(&admin, "cam").await;
    let dest = app.destination(&admin, "live_PSK_TEST_KEY_0001").await;
    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&app.url(""), &token, agent_dir.path()).await;
    eventually(15, "the agent to come online", || async {
        let (_, s) = app
            .get(&format!("/api/senders/{sender_id}"), Some(&admin))
            .await;
        (s["presence"] == "online").then_some(())
    })
    .await;

    // A viewer cannot start it.
    let (status, _) = app
        .post(
            "/api/streams",
            Some(&viewer),
            json!({"sender_id": sender_id, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 403);

    let (status, stream) = app
        .post(
            "/api/streams",
            Some(&admin),
            json!({"sender_id": sender_id, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 201, "{stream}");
    let id = stream["id"].as_str().unwrap().to_owned();
    assert_eq!(stream["state"], "starting");
    let port = stream["port"].as_u64().unwrap();
    let (lo, hi) = app.control.config().port_range;
    assert!((u64::from(lo)..=u64::from(hi)).contains(&port));

    let live = eventually(15, "the stream to go live", || async {
        let s = stream_state(app.get(&format!("/api/streams/{id}"), Some(&admin))).await;
        (s["state"] == "live").then_some(s)
    })
    .await;
    let pid = live["receiver_pid"].as_u64().expect("a receiver pid") as u32;
    let mut guard = ReceiverGuard(Some(pid));
    assert!(alive(pid));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&id) && cmdline.contains(&port.to_string()),
        "{cmdline}"
    );
    // The receiver got its secrets on stdin: not in argv or environ.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("PSK_TEST_KEY"));
    assert!(!cmdline.contains("PSK_TEST_KEY"));

    // The agent's RIST stream, encrypted with the stream's key, reaches the
    // receiver and shows in its stats.
    eventually(15, "the receiver to count incoming bytes", || async {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("strata_receiver_bytes_in") && l.contains(&id))?
            .to_owned();
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n > 0.0).then_some(())
    })
    .await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_streams{state=\"live\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("strata_senders_online 1"));
    assert!(metrics.contains("strata_stream_link_bitrate_kbps"));

    // A second stream from the same sender is refused while one runs.
    let (status, _) = app
        .post(
            "/api/streams",
            Some(&admin),
            json!({"sender_id": sender_id, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 409);

    // Viewer cannot stop; admin can.
    let (status, _) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&viewer), json!({}))
        .await;
    assert_eq!(status, 403);
    let (status, stopped) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "ended");
    eventually(10, "the receiver to exit", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    guard.0 = None;
    // Stopping again is a conflict, named by the state machine.
    let (status, body) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 409);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("ended to stopping"),
        "{body}"
    );
    let (_, log) = app.get("/api/audit", Some(&admin)).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"stream.start") && actions.contains(&"stream.stop"),
        "{actions:?}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct ControlProcess {
    config_file: PathBuf,
    url: String,
}

impl ControlProcess {
    fn new(dir: &Path) -> ControlProcess {
        let (_, receiver) = other_bins();
        let (lo, hi) = port_range();
        let port = free_port();
        let config_file = dir.join("strata.toml");
        std::fs::write(
            &config_file,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nreceiver_bin = \"{}\"\n\
                 port_range = [{lo}, {hi}]\nheartbeat_secs = 1\n",
                dir.join("data").display(),
                receiver.display()
            ),
        )
        .unwrap();
        ControlProcess {
            config_file,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn start(&self) -> Proc {
        let child = Command::new(bin_dir().join("strata-control"))
            .arg("--config")
            .arg(&self.config_file)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", self.url);
        eventually(15, "strata-control to answer", || {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Proc(child)
    }
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url).json(&body),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_restarted_control_plane_re_adopts_the_running_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let control = ControlProcess::new(dir.path());
    let first = control.start().await;
    let base = control.url.clone();

    let (status, _) = call(
        "POST",
        &format!("{base}/api/setup"),
        None,
        json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201);
    let (_, pair) = call(
        "POST",
        &format!("{base}/api/auth/login"),
        None,
        json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
    )
    .await;
    let admin = pair["access_token"].as_str().unwrap().to_owned();
    let (_, created) = call(
        "POST",
        &format!("{base}/api/senders"),
        Some(&admin),
        json!({"name": "cam"}),
    )
    .await;
    let sender_id = created["sender"]["id"].as_str().unwrap().to_owned();
    let token = created["enrolment_token"].as_str().unwrap().to_owned();
    let (_, dest) = call(
        "POST",
        &format!("{base}/api/destinations"),
        Some(&admin),
        json!({"name": "srt", "platform": "srt", "url": "srt://127.0.0.1:9000", "stream_key": "passphrase-1234"}),
    )
    .await;
    let dest = dest["id"].as_str().unwrap().to_owned();

    let agent_dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&base, &token, agent_dir.path()).await;
    eventually(15, "the agent online", || async {
        let (_, s) = call(
            "GET",
            &format!("{base}/api/senders/{sender_id}"),
            Some(&admin),
            Value::Null,
        )
        .await;
        (s["presence"] == "online").then_some(())
    })
    .await;
    let (status, stream) = call(
        "POST",
        &format!("{base}/api/streams"),
        Some(&admin),
        json!({"sender_id": sender_id, "destination_ids": [dest]}),
    )
    .await;
    assert_eq!(status, 201, "{stream}");
    let id = stream["id"].as_str().unwrap().to_owned();
    let live = eventually(15, "live", || async {
        let (_, s) = call(
            "GET",
            &format!("{base}/api/streams/{id}"),
            Some(&admin),
            Value::Null,
        )
        .await;
        (s["state"] == "live").then_some(s)
    })
    .await;
    let pid = live["receiver_pid"].as_u64().unwrap() as u32;
    let mut guard = ReceiverGuard(Some(pid));

    // The control plane dies hard; the receiver goes on.
    drop(first);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(alive(pid), "the receiver died with the control plane");

    let _second = control.start().await;
    // The access token survives the restart (the signing key is on disk).
    let (_, s) = call(
        "GET",
        &format!("{base}/api/streams/{id}"),
        Some(&admin),
        Value::Null,
    )
    .await;
    assert_eq!(s["state"], "live", "{s}");
    assert_eq!(
        s["receiver_pid"].as_u64(),
        Some(u64::from(pid)),
        "the same receiver is supervised again"
    );
    let (_, log) = call(
        "GET",
        &format!("{base}/api/audit"),
        Some(&admin),
        Value::Null,
    )
    .await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "receiver.adopt" && a["target"] == id.as_str()),
        "{log}"
    );
    // The agent reconnects by itself (backoff) and reports the stream running.
    eventually(20, "the agent back online", || async {
        let (_, s) = call(
            "GET",
            &format!("{base}/api/senders/{sender_id}"),
            Some(&admin),
            Value::Null,
        )
        .await;
        (s["presence"] == "online").then_some(())
    })
    .await;
    // The adopted receiver still reports stats to the new control plane.
    eventually(10, "stats from the adopted receiver", || async {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l.starts_with("strata_receiver_bitrate_kbps") && l.contains(&id))
            .then_some(())
    })
    .await;

    // And the new control plane can stop it.
    let (status, stopped) = call(
        "POST",
        &format!("{base}/api/streams/{id}/stop"),
        Some(&admin),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["state"], "ended");
    eventually(10, "the adopted receiver to exit", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    guard.0 = None;
}

#[tokio::test]
async fn a_wedged_receiver_is_restarted_from_its_silence() {
    use super::helpers::{enrolled_sender, spawn_app_with, WireClient};
    let app = spawn_app_with(|c| c.receiver_stall_ms = 1500).await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let dest = app.destination(&admin, "live_WEDGE_KEY_00001").await;
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    let (status, stream) = app
        .post(
            "/api/streams",
            Some(&admin),
            json!({"sender_id": sender_id, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 201, "{stream}");
    let id = stream["id"].as_str().unwrap().to_owned();
    let start = agent.recv_type("stream.start").await;
    agent
        .send("ack", json!({"in_reply_to": start["id"], "ok": true}))
        .await;
    let live = eventually(15, "live", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["state"] == "live" && s["receiver_pid"].is_u64()).then_some(s)
    })
    .await;
    let old = live["receiver_pid"].as_u64().unwrap() as u32;
    let _guard = ReceiverGuard(Some(old));

    // Freeze it: alive, but silent.
    kill(old, nix::sys::signal::Signal::SIGSTOP);
    let new = eventually(20, "a new receiver", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        s["receiver_pid"]
            .as_u64()
            .map(|p| p as u32)
            .filter(|p| *p != old && alive(*p))
    })
    .await;
    let _new_guard = ReceiverGuard(Some(new));
    assert!(!alive(old), "the wedged receiver was killed");
    // The replacement says ready over its socket, and the stream never left live.
    eventually(10, "the replacement ready", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["receiver_ready"] == true && s["receiver_pid"] == new).then_some(())
    })
    .await;
    let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
    assert_eq!(s["state"], "live");
    let log = app.control.store().list_audit(20).await.unwrap();
    assert!(log
        .iter()
        .any(|a| a.action == "receiver.restart" && a.target == id));
    let (status, _) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200);
}
