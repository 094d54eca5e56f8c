//! Alert rules evaluated on a running system and delivered to a webhook.

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};

use super::helpers::{enrolled_sender, eventually, spawn_app_with, WireClient};

#[tokio::test]
async fn loss_and_an_offline_sender_are_delivered_by_webhook() {
    // The webhook receiver: a real HTTP server recording what it gets.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let hook = axum::Router::new().route(
        "/hook",
        post(move |Json(body): Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hook).await.unwrap() });

    let app = spawn_app_with(|c| {
        c.alerts.webhook = Some(hook_url.clone());
        c.alerts.loss_pct = 5.0;
        c.alerts.sender_offline_secs = 1;
        c.alerts.interval_ms = 100;
    })
    .await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let dest = app.destination(&admin, "live_ALERTKEY_000001").await;
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    agent
        .send(
            "device.status",
            json!({"hostname": "cam", "running_streams": []}),
        )
        .await;

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
    assert_eq!(start["payload"]["stream_id"], id.as_str());
    assert_eq!(
        start["payload"]["psk"].as_str().unwrap().len(),
        64,
        "a 32-byte key in hex"
    );
    assert_eq!(start["payload"]["receiver"]["port"], stream["port"]);
    // The stream's key went to the agent over the socket; it is nowhere on
    // disk (database, key files, receiver logs and sockets).
    let psk = start["payload"]["psk"].as_str().unwrap().to_owned();
    let mut dirs = vec![app.dir.path().to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let text = String::from_utf8_lossy(&bytes).to_lowercase();
                assert!(
                    !text.contains(&psk),
                    "{} holds the stream key",
                    path.display()
                );
            }
        }
    }
    agent
        .send("ack", json!({"in_reply_to": start["id"], "ok": true}))
        .await;
    eventually(15, "live", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["state"] == "live").then_some(())
    })
    .await;

    // 12% loss on one link: the loss rule fires.
    agent
        .send(
            "stream.stats",
            json!({"stream_id": id, "encoder_kbps": 4000.0, "links": [
                {"name": "wwan0", "bitrate_kbps": 2000.0, "rtt_ms": 40.0, "loss_pct": 0.5},
                {"name": "wwan1", "bitrate_kbps": 1500.0, "rtt_ms": 90.0, "loss_pct": 12.0}
            ]}),
        )
        .await;
    let loss = eventually(10, "a high_loss webhook", || async {
        got.lock()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == "high_loss" && a["status"] == "firing")
            .cloned()
    })
    .await;
    assert_eq!(loss["subject"], id.as_str());
    assert!(loss["detail"].as_str().unwrap().contains("12.0%"), "{loss}");

    // The agent drops off with the stream running: sender_offline fires.
    drop(agent);
    let offline = eventually(10, "a sender_offline webhook", || async {
        got.lock()
            .unwrap()
            .iter()
            .find(|a| a["rule"] == "sender_offline" && a["status"] == "firing")
            .cloned()
    })
    .await;
    assert_eq!(offline["subject"], sender_id.as_str());
    // The stream itself stays live: unobserved is not dead.
    let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
    assert_eq!(s["state"], "live");

    // Stopping the stream resolves both.
    let (status, _) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200);
    eventually(10, "both alerts resolved", || async {
        let got = got.lock().unwrap();
        let resolved = |rule: &str| {
            got.iter()
                .any(|a| a["rule"] == rule && a["status"] == "resolved")
        };
        (resolved("high_loss") && resolved("sender_offline")).then_some(())
    })
    .await;
    let firing_count = got
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "firing" && a["rule"] == "high_loss")
        .count();
    assert_eq!(firing_count, 1, "a firing alert is delivered once");
}
