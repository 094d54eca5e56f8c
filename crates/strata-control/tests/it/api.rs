//! The REST API: setup, sign-in, token rotation, roles, destinations.

use serde_json::json;

use super::helpers::{spawn_app, ADMIN_EMAIL, PASSWORD};

#[tokio::test]
async fn setup_runs_once_and_sign_in_checks_the_password() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (status, body) = app
        .post(
            "/api/setup",
            None,
            json!({"email": "b@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("setup is done"));

    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": ADMIN_EMAIL, "password": "wrong password!"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": "nobody@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, me) = app.get("/api/me", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(me["role"], "admin");
}

#[tokio::test]
async fn requests_without_valid_tokens_are_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    assert_eq!(app.get("/api/senders", None).await.0, 401);
    assert_eq!(app.get("/api/senders", Some("garbage")).await.0, 401);
    // A token signed by another key (a forged one) is refused.
    let other =
        auth::AccessTokens::from_pkcs8(&auth::tokens::generate_ed25519_pkcs8().unwrap(), 3600)
            .unwrap();
    let claims = app
        .control
        .principal(&admin, strata_control::service::now_ms() / 1000)
        .await
        .unwrap();
    let forged = other
        .issue(
            &claims.user_id,
            "admin",
            strata_control::service::now_ms() / 1000,
        )
        .unwrap();
    let (status, body) = app.get("/api/senders", Some(&forged)).await;
    assert_eq!(status, 401, "{body}");
    // An expired token of the right key is refused.
    let key = std::fs::read(app.dir.path().join("jwt-ed25519.key")).unwrap();
    let same_key = auth::AccessTokens::from_pkcs8(&key, 60).unwrap();
    let expired = same_key.issue(&claims.user_id, "admin", 1_000).unwrap();
    assert_eq!(app.get("/api/senders", Some(&expired)).await.0, 401);
    let fresh = same_key
        .issue(
            &claims.user_id,
            "admin",
            strata_control::service::now_ms() / 1000,
        )
        .unwrap();
    assert_eq!(app.get("/api/senders", Some(&fresh)).await.0, 200);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    let app = spawn_app().await;
    app.admin().await;
    let (_, pair) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
        )
        .await;
    let first = pair["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": first}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(
        app.get("/api/me", rotated["access_token"].as_str()).await.0,
        200
    );

    // The spent token comes back: someone copied it. Both are now dead.
    let (status, _) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": first}))
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": second}))
        .await;
    assert_eq!(status, 401, "the reuse revoked the whole family");
    let audit = app.control.store().list_audit(10).await.unwrap();
    assert!(audit.iter().any(|a| a.action == "token.reuse"));

    // Malformed and forged tokens.
    for bad in [
        "",
        "nodot",
        "rt_x.secret",
        &format!("{}.AAAA", second.split('.').next().unwrap()),
    ] {
        let (status, _) = app
            .post("/api/auth/refresh", None, json!({"refresh_token": bad}))
            .await;
        assert_eq!(status, 401, "{bad:?}");
    }

    // Logout revokes.
    let (_, pair) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
        )
        .await;
    let token = pair["refresh_token"].as_str().unwrap();
    let resp = app
        .client
        .post(app.url("/api/auth/logout"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": token}))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn roles_are_enforced() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let operator = app.user(&admin, "op@example.com", "operator").await;
    let viewer = app.user(&admin, "view@example.com", "viewer").await;
    let (sender, _) = app.sender(&admin, "cam").await;
    let dest = app.destination(&admin, "key-key-key-1234").await;

    // Viewer: reads, nothing else.
    assert_eq!(app.get("/api/senders", Some(&viewer)).await.0, 200);
    assert_eq!(app.get("/api/streams", Some(&viewer)).await.0, 200);
    assert_eq!(app.get("/api/destinations", Some(&viewer)).await.0, 200);
    let (status, body) = app
        .post(
            "/api/streams",
            Some(&viewer),
            json!({"sender_id": sender, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 403, "a viewer cannot start a stream: {body}");
    assert!(body["error"].as_str().unwrap().contains("viewer"));
    assert_eq!(
        app.post("/api/senders", Some(&viewer), json!({"name": "x"}))
            .await
            .0,
        403
    );
    assert_eq!(
        app.post("/api/destinations", Some(&viewer),
            json!({"name": "t", "platform": "twitch", "url": "rtmp://live.twitch.tv/app", "stream_key": "live_123456789"}))
            .await
            .0,
        403
    );
    assert_eq!(app.get("/api/users", Some(&viewer)).await.0, 403);
    assert_eq!(app.get("/api/audit", Some(&viewer)).await.0, 403);

    // Operator: runs streams and devices, not accounts or the audit log.
    assert_eq!(
        app.post("/api/senders", Some(&operator), json!({"name": "cam2"}))
            .await
            .0,
        201
    );
    assert_eq!(app.get("/api/users", Some(&operator)).await.0, 403);
    assert_eq!(
        app.post(
            "/api/users",
            Some(&operator),
            json!({"email": "x@example.com", "password": PASSWORD, "role": "admin"})
        )
        .await
        .0,
        403
    );
    assert_eq!(app.get("/api/audit", Some(&operator)).await.0, 403);
    // The operator may try to start; it fails on the sender being offline, not the role.
    let (status, body) = app
        .post(
            "/api/streams",
            Some(&operator),
            json!({"sender_id": sender, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Admin sees the audit log of it all.
    let (status, log) = app.get("/api/audit", Some(&admin)).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"sender.create") && actions.contains(&"user.create"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn invalid_input_is_named() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (status, body) = app
        .post(
            "/api/users",
            Some(&admin),
            json!({"email": "not-an-email", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("email"), "{body}");
    let (status, body) = app
        .post(
            "/api/users",
            Some(&admin),
            json!({"email": "a@b.c", "password": PASSWORD, "role": "root"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("role"), "{body}");
    let (status, body) = app
        .post(
            "/api/destinations",
            Some(&admin),
            json!({"name": "s", "platform": "srt", "url": "rtmp://wrong", "stream_key": "k"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("url"), "{body}");
    // Unknown fields are refused rather than ignored.
    let (status, _) = app
        .post(
            "/api/senders",
            Some(&admin),
            json!({"name": "x", "owner": "me"}),
        )
        .await;
    assert!((400..500).contains(&status));
    assert_eq!(
        app.get("/api/streams/str_..%2F..", Some(&admin)).await.0,
        422
    );
    assert_eq!(app.get("/api/streams/str_0000", Some(&admin)).await.0, 404);
}

#[tokio::test]
async fn destination_keys_are_sealed_at_rest_and_never_returned() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let key = "live_SUPERSECRETSTREAMKEY_4711";
    let url = "rtmp://ingest.example.net/secretapp-PRIVATEPATH";
    let (status, created) = app
        .post(
            "/api/destinations",
            Some(&admin),
            json!({"name": "custom", "platform": "custom_rtmp", "url": url, "stream_key": key}),
        )
        .await;
    assert_eq!(status, 201);
    let text = created.to_string();
    assert!(
        !text.contains("SUPERSECRET") && !text.contains("PRIVATEPATH"),
        "{text}"
    );
    assert_eq!(created["key_hint"], "****4711");
    assert_eq!(created["url_hint"], "rtmp://ingest.example.net/…");
    let (_, listed) = app.get("/api/destinations", Some(&admin)).await;
    assert!(!listed.to_string().contains("SUPERSECRET"));

    // Nothing on disk holds the key or the URL's path in plain text.
    app.control.store().close().await;
    for entry in std::fs::read_dir(app.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for needle in [key.as_bytes(), b"PRIVATEPATH".as_slice()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds a secret in plain text",
                    path.display()
                );
            }
        }
    }
    // And the key file itself is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(app.dir.path().join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(app.dir.path().join("strata.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_control_plane_runs_on_postgres_and_seals_keys_there_too() {
    let pg = tokio::task::spawn_blocking(super::postgres::Postgres::start)
        .await
        .unwrap();
    let url = pg.url();
    let app = super::helpers::spawn_app_with(move |c| c.database_url = Some(url)).await;
    assert_eq!(
        app.control.store().backend(),
        strata_control::store::Backend::Postgres
    );
    let admin = app.admin().await;
    let viewer = app.user(&admin, "viewer@example.com", "viewer").await;
    let key = "live_POSTGRES_PLAINTEXT_CHECK_77";
    let dest = app.destination(&admin, key).await;
    let (sender, _) = app.sender(&admin, "cam").await;
    let (status, _) = app
        .post(
            "/api/streams",
            Some(&viewer),
            json!({"sender_id": sender, "destination_ids": [dest]}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, listed) = app.get("/api/destinations", Some(&viewer)).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["key_hint"], "****K_77");
    // Look for the key in every file of the cluster (tables and WAL alike;
    // the WAL holds each committed insert).
    app.control.store().close().await;
    drop(app);
    let mut dirs = vec![pg.data_dir()];
    let mut files = 0;
    let mut hint_seen = false;
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                hint_seen |= bytes.windows(8).any(|w| w == b"****K_77");
                assert!(
                    !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                    "{} holds the stream key in plain text",
                    path.display()
                );
            }
        }
    }
    assert!(files > 100, "the cluster's files were read ({files})");
    // The scan does see the row: the masked hint is stored in plain text.
    assert!(
        hint_seen,
        "the destination row was not found on disk at all"
    );
    drop(pg);
}
