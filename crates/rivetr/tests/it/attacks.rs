//! What an attacker tries: against the API, through the router, and from
//! inside a repository someone asks Rivetr to deploy.

use std::io::{Read, Write};

use reqwest::Method;
use serde_json::json;

use crate::support::rivetr::{AppRepo, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_it_must() {
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("a1");
    assert_eq!(api.create_app("target", &repo.url(), &[]).await.0, 201);
    let base = format!("http://{}", server.api);
    let http = reqwest::Client::new();

    // A token in the URL is not a credential.
    let resp = http
        .get(format!("{base}/api/apps?token={}", server.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Malformed JSON, unknown fields, oversized and hostile values.
    let resp = http
        .post(format!("{base}/api/apps"))
        .bearer_auth(&server.token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let (status, v) = api
        .call(
            Method::POST,
            "/api/apps",
            Some(json!({ "name": "x", "git": repo.url(), "admin": true })),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    for (key, value) in [("A=B", "x"), ("1X", "x"), ("", "x"), ("OK", "nul\u{0}byte")] {
        let (status, v) = api
            .call(
                Method::PUT,
                "/api/apps/target/env",
                Some(json!({ "vars": [{ "key": key, "value": value }] })),
            )
            .await;
        assert_eq!(status, 422, "{key:?}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with("env"), "{v}");
    }
    for path in ["/api/apps/..%2Fetc", "/api/apps/TARGET", "/api/apps/a%00b"] {
        let (status, _) = api.call(Method::GET, path, None).await;
        assert!(status == 422 || status == 404, "{path}: {status}");
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/api/apps/target/rollback",
            Some(json!({ "to": 999_999 })),
        )
        .await;
    assert_eq!(status, 404);

    // A viewer reads, and does nothing else.
    let (status, v) = api
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({ "name": "ro", "role": "viewer" })),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let viewer = v["token"].as_str().unwrap().to_owned();
    let as_viewer = |method: Method, path: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(&viewer)
    };
    assert_eq!(
        as_viewer(Method::GET, "/api/apps")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for (method, path) in [
        (Method::POST, "/api/apps/target/deploy"),
        (Method::POST, "/api/apps/target/rollback"),
        (Method::DELETE, "/api/apps/target"),
        (Method::DELETE, "/api/apps/target/env/X"),
    ] {
        let resp = as_viewer(method.clone(), path).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
    }
    let resp = as_viewer(Method::POST, "/api/tokens")
        .json(&json!({ "name": "escalate", "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = as_viewer(Method::PUT, "/api/apps/target/env")
        .json(&json!({ "vars": [{ "key": "X", "value": "y" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The token's stored form is a hash: the database never holds it.
    server.kill9();
    let db = std::fs::read(server.state.join("rivetr.db")).unwrap();
    let secret = viewer.split_once('.').unwrap().1.as_bytes().to_vec();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_slice()));
    server.cleanup(&["target"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_repository_cannot_read_the_host_or_escape_its_checkout() {
    let mut server = Server::start();
    let api = server.client();
    // A file only the host has, which the repository links to.
    let host_dir = tempfile::tempdir().unwrap();
    let host_secret = host_dir.path().join("host-only.txt");
    std::fs::write(&host_secret, "host-secret-3b9f\n").unwrap();

    let repo = AppRepo::new("h1");
    std::os::unix::fs::symlink(&host_secret, repo.path().join("www/leak")).unwrap();
    repo.commit_version("h1");
    assert_eq!(api.create_app("hostile", &repo.url(), &[]).await.0, 201);
    let d = api.deploy("hostile").await;
    let done = api.wait(d).await;
    // Whether the engine copies the link or refuses it, the host file's
    // content never reaches the image.
    if done["status"] == "running" {
        let (status, body) = server
            .get(&server.host_of("hostile"), "/leak")
            .await
            .unwrap();
        assert!(!body.contains("host-secret-3b9f"), "{status}: {body}");
    }
    let (_, log) = api
        .call(Method::GET, &format!("/api/deployments/{d}/logs"), None)
        .await;
    assert!(!log.to_string().contains("host-secret-3b9f"));

    // A Dockerfile or rivetr.toml that is a link to a host file is not read.
    let linked = AppRepo::new("h2");
    linked.git(&["rm", "-q", "Dockerfile", "rivetr.toml"]);
    std::os::unix::fs::symlink(&host_secret, linked.path().join("Dockerfile")).unwrap();
    std::os::unix::fs::symlink(&host_secret, linked.path().join("rivetr.toml")).unwrap();
    linked.commit_version("h2");
    assert_eq!(api.create_app("linked", &linked.url(), &[]).await.0, 201);
    let done = api.wait(api.deploy("linked").await).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["reason"].as_str().unwrap().contains("no Dockerfile"),
        "{done}"
    );

    // A rivetr.toml that points the Dockerfile outside the repository.
    let climbing = AppRepo::new("h3");
    climbing.write("rivetr.toml", "dockerfile = \"../../../../etc/passwd\"\n");
    climbing.commit_version("h3");
    assert_eq!(
        api.create_app("climbing", &climbing.url(), &[]).await.0,
        201
    );
    let done = api.wait(api.deploy("climbing").await).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("must not climb out"),
        "{done}"
    );
    server.cleanup(&["hostile", "linked", "climbing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_decides_on_one_authority() {
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("r1");
    assert_eq!(api.create_app("front", &repo.url(), &[]).await.0, 201);
    assert_eq!(
        api.wait(api.deploy("front").await).await["status"],
        "running"
    );
    let raw = |request: String| {
        let mut s = std::net::TcpStream::connect(&server.router).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    // Two Host headers, or a target that names another host: refused.
    let two = raw("GET /version HTTP/1.1\r\nHost: front.apps.test\r\nHost: other.apps.test\r\nConnection: close\r\n\r\n".into());
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let absolute = raw(
        "GET http://other.apps.test/version HTTP/1.1\r\nHost: front.apps.test\r\nConnection: close\r\n\r\n".into(),
    );
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");
    // Case, a trailing dot and a port do not change which app answers.
    let ok = raw(
        "GET /version HTTP/1.1\r\nHost: FRONT.apps.test.:80\r\nConnection: close\r\n\r\n".into(),
    );
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("r1\n"),
        "{ok}"
    );
    // Unknown hosts get 404 and reach no app.
    let none =
        raw("GET /version HTTP/1.1\r\nHost: nothing.apps.test\r\nConnection: close\r\n\r\n".into());
    assert!(
        none.starts_with("HTTP/1.1 404") && !none.contains("r1"),
        "{none}"
    );
    server.cleanup(&["front"]);
}
