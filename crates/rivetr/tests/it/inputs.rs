//! Bad input: each ends clearly, and what runs is not disturbed.

use reqwest::Method;
use serde_json::json;

use crate::support::rivetr::{AppRepo, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_leaves_the_running_app_alone() {
    let mut server = Server::start();
    let api = server.client();
    let good = AppRepo::new("ok");
    assert_eq!(
        api.create_app("good", &good.url(), &["good.example.test"])
            .await
            .0,
        201
    );
    let d = api.deploy("good").await;
    assert_eq!(api.wait(d).await["status"], "running", "{}", server.logs());

    // Rejected at the API, naming the field.
    for (body, field) in [
        (json!({ "name": "Bad_Name", "git": good.url() }), "name"),
        (
            json!({ "name": "x", "git": "http://example.test/r.git" }),
            "git",
        ),
        (
            json!({ "name": "x", "git": "--upload-pack=touch /tmp/x" }),
            "git",
        ),
        (
            json!({ "name": "x", "git": good.url(), "branch": "a..b" }),
            "branch",
        ),
        (
            json!({ "name": "x", "git": good.url(), "domains": ["*.example.test"] }),
            "domain",
        ),
    ] {
        let (status, v) = api
            .call(Method::POST, "/api/apps", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap().starts_with(field),
            "{body}: {v}"
        );
    }
    // A domain another app has, or the name of another app's host.
    let (status, v) = api
        .create_app("dup", &good.url(), &["good.example.test"])
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("already used by app \"good\""),
        "{v}"
    );
    let (status, _) = api
        .create_app("dup", &good.url(), &["good.apps.test"])
        .await;
    assert_eq!(status, 409);
    let (status, _) = api.create_app("good", &good.url(), &[]).await;
    assert_eq!(status, 409);
    // No token, a wrong one.
    let resp = reqwest::get(format!("http://{}/api/apps", server.api))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::Client::new()
        .get(format!("http://{}/api/apps", server.api))
        .bearer_auth("rvt_0000.wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Deployments that fail, each with its reason.
    let no_dockerfile = AppRepo::new("x");
    no_dockerfile.git(&["rm", "-q", "Dockerfile"]);
    no_dockerfile.commit_version("x2");
    let failing_build = AppRepo::new("y");
    failing_build.write(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n",
    );
    failing_build.commit_version("y2");
    let wrong_port = AppRepo::new("z");
    wrong_port.write(
        "rivetr.toml",
        "port = 9999\n[health]\ntimeout_secs = 2\ninterval_ms = 100\n",
    );
    wrong_port.commit_version("z2");
    let bad_toml = AppRepo::new("t");
    bad_toml.write("rivetr.toml", "replicas = 500\n");
    bad_toml.commit_version("t2");
    let cases = [
        (
            "unreachable",
            "/nonexistent/repository".to_owned(),
            "cannot reach the repository",
        ),
        (
            "nodockerfile",
            no_dockerfile.url(),
            "no Dockerfile at \"Dockerfile\"",
        ),
        ("failedbuild", failing_build.url(), "build failed"),
        ("wrongport", wrong_port.url(), "port 9999 not open"),
        ("badtoml", bad_toml.url(), "rivetr.toml: replicas"),
    ];
    for (name, url, expected) in cases {
        assert_eq!(api.create_app(name, &url, &[]).await.0, 201);
        let d = api.deploy(name).await;
        let done = api.wait(d).await;
        assert_eq!(done["status"], "failed", "{name}: {done}");
        let reason = done["reason"].as_str().unwrap();
        assert!(reason.contains(expected), "{name}: {reason}");
        let (_, status) = api
            .call(Method::GET, &format!("/api/apps/{name}"), None)
            .await;
        assert_eq!(status["deployments"][0]["reason"], reason);
        assert!(
            server.containers_of(name).is_empty(),
            "{name} left containers"
        );
        // The good app still answers.
        assert_eq!(
            server.get("good.example.test", "/version").await.unwrap(),
            (200, "ok\n".into())
        );
    }
    // The CLI shows the reason too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rivetr"))
        .args([
            "--api",
            &format!("http://{}", server.api),
            "--token",
            &server.token,
            "status",
            "wrongport",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("failed") && text.contains("port 9999 not open"),
        "{text}"
    );

    server.cleanup(&[
        "good",
        "unreachable",
        "nodockerfile",
        "failedbuild",
        "wrongport",
        "badtoml",
    ]);
}
