//! Hostile frames on the agent WebSocket: each gets an error reply, and the
//! connection and server go on.

use serde_json::json;

use super::helpers::{enrolled_sender, spawn_app, WireClient};

#[tokio::test]
async fn malformed_frames_get_error_replies_and_the_connection_goes_on() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;

    let mut c = WireClient::connect(&app.ws_url()).await;
    c.send_raw("this is not json").await;
    let e = c.recv().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["payload"]["code"], "malformed");

    c.send_raw(r#"{"v":1,"id":"x1","type":"stream.explode","ts":0,"payload":{}}"#)
        .await;
    let e = c.recv().await.unwrap();
    assert_eq!(e["payload"]["code"], "unknown_type");
    assert_eq!(e["payload"]["in_reply_to"], "x1");
    assert!(e["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("stream.explode"));

    c.send_raw(r#"{"v":7,"id":"x2","type":"auth.hello","ts":0,"payload":{}}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap()["payload"]["code"],
        "unsupported_version"
    );

    c.send("auth.hello", json!({"sender": 5})).await;
    assert_eq!(c.recv().await.unwrap()["payload"]["code"], "bad_payload");

    // A command before login is refused, not obeyed.
    c.send("device.status", json!({"hostname": "h"})).await;
    let e = c.recv().await.unwrap();
    assert_eq!(e["payload"]["code"], "unexpected");
    assert!(e["payload"]["message"]
        .as_str()
        .unwrap()
        .contains("auth.hello"));
    drop(c);

    // After login too: garbage is answered and the session stays up.
    let mut agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    agent.send_raw("{\"v\":1}").await;
    assert_eq!(
        agent.recv_type("error").await["payload"]["code"],
        "malformed"
    );
    agent.send("stream.stats", json!({"stream_id": 12})).await;
    assert_eq!(
        agent.recv_type("error").await["payload"]["code"],
        "bad_payload"
    );
    agent
        .send("ack", json!({"in_reply_to": "never-sent", "ok": true}))
        .await;
    assert_eq!(
        agent.recv_type("error").await["payload"]["code"],
        "unexpected"
    );
    agent
        .send(
            "stream.start",
            json!({"stream_id": "str_1", "psk": "00", "receiver": {"host": "h", "port": 1}}),
        )
        .await;
    assert_eq!(
        agent.recv_type("error").await["payload"]["code"],
        "unexpected"
    );
    // Stats for a stream that is not this sender's are ignored.
    agent
        .send(
            "stream.stats",
            json!({"stream_id": "str_someone_else", "links": []}),
        )
        .await;
    agent
        .send(
            "device.status",
            json!({"hostname": "cam-1", "running_streams": []}),
        )
        .await;
    super::helpers::eventually(5, "the heartbeat to be recorded", || async {
        let (_, s) = app
            .get(&format!("/api/senders/{sender_id}"), Some(&admin))
            .await;
        (s["hostname"] == "cam-1" && s["presence"] == "online").then_some(())
    })
    .await;
    // The server still serves everything else.
    assert_eq!(app.get("/healthz", None).await.0, 200);
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
        metrics.contains("strata_protocol_errors_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_second_login_replaces_the_first_session() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let mut first = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    let _second = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    assert!(first.recv().await.is_none(), "the older session is closed");
    let (_, s) = app
        .get(&format!("/api/senders/{sender_id}"), Some(&admin))
        .await;
    assert_eq!(s["presence"], "online");
}

#[tokio::test]
async fn a_dropped_socket_makes_the_sender_unobserved() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    let agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    drop(agent);
    super::helpers::eventually(5, "the sender to be unobserved", || async {
        let (_, s) = app
            .get(&format!("/api/senders/{sender_id}"), Some(&admin))
            .await;
        (s["presence"] == "unobserved").then_some(())
    })
    .await;
}
