//! State reconciled from what agents report.

use serde_json::json;

use super::helpers::{enrolled_sender, eventually, spawn_app, WireClient};

#[tokio::test]
async fn heartbeats_and_ended_streams_reconcile_the_state() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let dest = app.destination(&admin, "live_RECONCILE_00001").await;
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;

    // The agent says it runs a stream the control plane knows nothing of:
    // it is told to stop it.
    agent
        .send(
            "device.status",
            json!({"hostname": "cam", "running_streams": ["str_0123456789abcdef"]}),
        )
        .await;
    let stop = agent.recv_type("stream.stop").await;
    assert_eq!(stop["payload"]["stream_id"], "str_0123456789abcdef");

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
        (s["state"] == "live").then_some(s)
    })
    .await;
    let pid = live["receiver_pid"].as_u64().unwrap() as u32;

    // The agent reconnects having lost the stream (say it restarted): the
    // control plane sends the start again, with the same key.
    drop(agent);
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    agent
        .send(
            "device.status",
            json!({"hostname": "cam", "running_streams": []}),
        )
        .await;
    let again = agent.recv_type("stream.start").await;
    assert_eq!(again["payload"]["stream_id"], id.as_str());
    assert_eq!(again["payload"]["psk"], start["payload"]["psk"]);
    agent
        .send("ack", json!({"in_reply_to": again["id"], "ok": true}))
        .await;

    // The sender ends the stream by itself: it fails, with the reason.
    agent
        .send(
            "stream.ended",
            json!({"stream_id": id, "reason": "camera unplugged"}),
        )
        .await;
    let failed = eventually(10, "failed", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["state"] == "failed").then_some(s)
    })
    .await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("camera unplugged"),
        "{failed}"
    );
    eventually(10, "the receiver to be stopped", || async {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                        .unwrap_or(true)
                })
                .unwrap_or(true))
        .then_some(())
    })
    .await;
    // The port is free again for the next stream.
    assert!(app.control.store().ports_in_use().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_adopted_stream_the_agent_lost_is_re_keyed() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let dest = app.destination(&admin, "live_REKEY_000000001").await;
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    let (_, stream) = app
        .post(
            "/api/streams",
            Some(&admin),
            json!({"sender_id": sender_id, "destination_ids": [dest]}),
        )
        .await;
    let id = stream["id"].as_str().unwrap().to_owned();
    let start = agent.recv_type("stream.start").await;
    agent
        .send("ack", json!({"in_reply_to": start["id"], "ok": true}))
        .await;
    let live = eventually(15, "live", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["state"] == "live").then_some(s)
    })
    .await;
    let old_pid = live["receiver_pid"].as_u64().unwrap();

    // The control plane restarts; the agent restarts too and lost the key.
    drop(agent);
    let app = app.restart().await;
    let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
    assert_eq!(
        s["receiver_pid"].as_u64(),
        Some(old_pid),
        "adopted, not replaced"
    );
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    agent
        .send(
            "device.status",
            json!({"hostname": "cam", "running_streams": []}),
        )
        .await;
    // A new receiver with a new key, and that key sent to the agent.
    let again = agent.recv_type("stream.start").await;
    assert_eq!(again["payload"]["stream_id"], id.as_str());
    assert_ne!(
        again["payload"]["psk"], start["payload"]["psk"],
        "a fresh key"
    );
    agent
        .send("ack", json!({"in_reply_to": again["id"], "ok": true}))
        .await;
    let s = eventually(15, "a new ready receiver", || async {
        let (_, s) = app.get(&format!("/api/streams/{id}"), Some(&admin)).await;
        (s["receiver_ready"] == true && s["receiver_pid"].as_u64().is_some_and(|p| p != old_pid))
            .then_some(s)
    })
    .await;
    assert_eq!(s["state"], "live");
    let (status, _) = app
        .post(&format!("/api/streams/{id}/stop"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200);
}
