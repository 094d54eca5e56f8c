//! Enrolment tokens and the agents' challenge login.

use serde_json::json;

use super::helpers::{enrolled_sender, spawn_app, TestKey, WireClient};

#[tokio::test]
async fn a_good_token_enrols_once() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, token) = app.sender(&admin, "cam").await;
    assert!(token.starts_with("enr_") && token.contains('.'));
    let key = TestKey::new();
    let body = json!({"token": token, "public_key": key.public(), "hostname": "cam-1"});
    let (status, answer) = app.post("/api/enrol", None, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sender_id"], sender_id.as_str());
    let (_, sender) = app
        .get(&format!("/api/senders/{sender_id}"), Some(&admin))
        .await;
    assert_eq!(sender["enrolled"], true);
    assert_eq!(sender["hostname"], "cam-1");

    // Reused: refused, and the enrolled key is unchanged.
    let other = TestKey::new();
    let (status, answer) = app
        .post(
            "/api/enrol",
            None,
            json!({"token": token, "public_key": other.public(), "hostname": "evil"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("used already"));
    let row = app
        .control
        .store()
        .sender(&sender_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.public_key.as_deref(), Some(key.public().as_str()));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (status, created) = app
        .post(
            "/api/senders",
            Some(&admin),
            json!({"name": "cam", "enrolment_ttl_secs": 1}),
        )
        .await;
    assert_eq!(status, 201);
    let token = created["enrolment_token"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, answer) = app
        .post(
            "/api/enrol",
            None,
            json!({"token": token, "public_key": TestKey::new().public(), "hostname": "h"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn wrong_or_malformed_tokens_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (_, token) = app.sender(&admin, "cam").await;
    let id = token.split('.').next().unwrap();
    let pk = TestKey::new().public();
    for (bad, expect) in [
        (
            format!("{id}.wrongsecretwrongsecretwrongsecretwrongsecr"),
            401,
        ),
        ("enr_0000000000000000.abc".to_string(), 401),
        ("no-dot-at-all".to_string(), 401),
    ] {
        let (status, answer) = app
            .post(
                "/api/enrol",
                None,
                json!({"token": bad, "public_key": pk, "hostname": "h"}),
            )
            .await;
        assert_eq!(status, expect, "{bad}: {answer}");
    }
    // A public key that is not an Ed25519 key.
    let (status, answer) = app
        .post(
            "/api/enrol",
            None,
            json!({"token": token, "public_key": "AAAA", "hostname": "h"}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    // The failed attempts did not consume the token.
    let (status, _) = app
        .post(
            "/api/enrol",
            None,
            json!({"token": token, "public_key": pk, "hostname": "h"}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_forged_signature_does_not_log_in() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, _key) = enrolled_sender(&app, &admin, "cam").await;
    let impostor = TestKey::new();
    let mut c = WireClient::connect(&app.ws_url()).await;
    c.send(
        "auth.hello",
        json!({"sender_id": sender_id, "agent_version": "x"}),
    )
    .await;
    let challenge = c.recv_type("auth.challenge").await;
    let nonce = challenge["payload"]["nonce"].as_str().unwrap();
    let sig = impostor.sign(&strata_protocol::challenge_message(&sender_id, nonce));
    c.send("auth.response", json!({"signature": sig})).await;
    let answer = c.recv().await.expect("an error reply before the close");
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["payload"]["code"], "auth_failed");
    assert!(c.recv().await.is_none(), "the connection is closed");
    let (_, sender) = app
        .get(&format!("/api/senders/{sender_id}"), Some(&admin))
        .await;
    assert_eq!(sender["presence"], "offline");
}

#[tokio::test]
async fn a_signature_over_another_nonce_or_sender_does_not_log_in() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, key) = enrolled_sender(&app, &admin, "cam").await;
    // A replayed signature: made for a nonce of an earlier connection.
    let mut c = WireClient::connect(&app.ws_url()).await;
    c.send(
        "auth.hello",
        json!({"sender_id": sender_id, "agent_version": "x"}),
    )
    .await;
    c.recv_type("auth.challenge").await;
    let stale = key.sign(&strata_protocol::challenge_message(
        &sender_id,
        "an-old-nonce",
    ));
    c.send("auth.response", json!({"signature": stale})).await;
    assert_eq!(c.recv().await.unwrap()["payload"]["code"], "auth_failed");

    // A sender that is not enrolled cannot log in at all.
    let (unenrolled, _) = app.sender(&admin, "cam2").await;
    let mut c = WireClient::connect(&app.ws_url()).await;
    c.send(
        "auth.hello",
        json!({"sender_id": unenrolled, "agent_version": "x"}),
    )
    .await;
    let challenge = c.recv_type("auth.challenge").await;
    let nonce = challenge["payload"]["nonce"].as_str().unwrap();
    c.send(
        "auth.response",
        json!({"signature": key.sign(&strata_protocol::challenge_message(&unenrolled, nonce))}),
    )
    .await;
    assert_eq!(c.recv().await.unwrap()["payload"]["code"], "auth_failed");

    // The real key logs in and shows the sender online.
    let _agent = WireClient::login(&app.ws_url(), &sender_id, &key).await;
    let (_, sender) = app
        .get(&format!("/api/senders/{sender_id}"), Some(&admin))
        .await;
    assert_eq!(sender["presence"], "online");
}
