//! Deploy, redeploy under load, rollback, a failing health check, secrets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::rivetr::{AppRepo, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_redeploy_under_load_rollback_and_a_failed_health_check() {
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("v1");
    let (status, created) = api
        .create_app("web", &repo.url(), &["web.example.test"])
        .await;
    assert_eq!(status, 201, "{created}");

    // v1: through the router by host name, the app's own and a custom one.
    let d1 = api.deploy("web").await;
    let v1 = api.wait(d1).await;
    assert_eq!(v1["status"], "running", "{v1}\n{}", server.logs());
    assert_eq!(
        server
            .get(&server.host_of("web"), "/version")
            .await
            .unwrap(),
        (200, "v1\n".into())
    );
    assert_eq!(
        server.get("web.example.test", "/version").await.unwrap(),
        (200, "v1\n".into())
    );
    assert_eq!(
        server.get("other.apps.test", "/version").await.unwrap().0,
        404
    );

    // The build log was kept, and says what happened.
    let (_, log) = api
        .call(Method::GET, &format!("/api/deployments/{d1}/logs"), None)
        .await;
    let log = log.as_str().unwrap_or_default().to_owned();
    assert!(log.contains("built rivetr/web:d"), "{log}");
    assert!(log.contains("traffic switched"), "{log}");

    // v2 while a client loop requests without pause: no request fails.
    repo.commit_version("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, saw_v2) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, saw_v2) = (stop.clone(), ok.clone(), failed.clone(), saw_v2.clone());
        let router = server.router.clone();
        let host = server.host_of("web");
        loops.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .get(format!("http://{router}/version"))
                    .header("host", &host)
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status() == 200 => match resp.text().await.as_deref() {
                        Ok("v1\n") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok("v2\n") => {
                            saw_v2.store(true, Ordering::Relaxed);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{other:?}"));
                        }
                    },
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{:?}", other.map(|r| r.status())));
                    }
                }
            }
            failures
        }));
    }
    let d2 = api.deploy("web").await;
    let v2 = api.wait(d2).await;
    assert_eq!(v2["status"], "running", "{v2}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for l in loops {
        failures.extend(l.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the redeploy: {failures:?}"
    );
    assert!(saw_v2.load(Ordering::Relaxed), "the loop never saw v2");
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "too few requests to judge: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        server
            .get(&server.host_of("web"), "/version")
            .await
            .unwrap()
            .1,
        "v2\n"
    );
    assert_eq!(api.deployment(d1).await["status"], "superseded");
    // Only the new deployment's container is left.
    server
        .wait_containers("web", &[format!("rivetr-web-d{d2}-r0")])
        .await;

    // Rollback: back to v1's image, no build.
    let (status, rb) = api
        .call(Method::POST, "/api/apps/web/rollback", Some(json!({})))
        .await;
    assert_eq!(status, 202, "{rb}");
    assert_eq!(rb["rollback_of"], d1);
    let d_rb = rb["deployment"].as_i64().unwrap();
    let r = api.wait(d_rb).await;
    assert_eq!(r["status"], "running", "{r}");
    assert_eq!(r["kind"], "rollback");
    assert_eq!(r["image"], v1["image"]);
    let (_, log) = api
        .call(Method::GET, &format!("/api/deployments/{d_rb}/logs"), None)
        .await;
    let log = log.as_str().unwrap_or_default().to_owned();
    assert!(
        log.contains("no build") && !log.contains("building"),
        "{log}"
    );
    assert_eq!(
        server
            .get(&server.host_of("web"), "/version")
            .await
            .unwrap()
            .1,
        "v1\n"
    );

    // v3 never passes its health check: it fails with the reason and the
    // version before it keeps serving.
    repo.write(
        "rivetr.toml",
        "[health]\npath = \"/missing\"\ntimeout_secs = 2\ninterval_ms = 50\n",
    );
    repo.commit_version("v3");
    let d3 = api.deploy("web").await;
    let v3 = api.wait(d3).await;
    assert_eq!(v3["status"], "failed");
    let reason = v3["reason"].as_str().unwrap();
    assert!(
        reason.contains("health check") && reason.contains("404"),
        "{reason}"
    );
    assert_eq!(
        server
            .get(&server.host_of("web"), "/version")
            .await
            .unwrap()
            .1,
        "v1\n"
    );
    assert_eq!(
        server.containers_of("web"),
        vec![format!("rivetr-web-d{d_rb}-r0")]
    );
    let (_, status) = api.call(Method::GET, "/api/apps/web", None).await;
    assert_eq!(status["running"]["id"], d_rb);

    server.cleanup(&["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_app_and_nowhere_else_in_plain_text() {
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("s1");
    assert_eq!(api.create_app("sec", &repo.url(), &[]).await.0, 201);
    let secret = "hunter2-7f3a9c1e-plain";
    let (status, v) = api
        .call(
            Method::PUT,
            "/api/apps/sec/env",
            Some(json!({ "vars": [{ "key": "GREETING", "value": secret, "secret": true }, { "key": "MODE", "value": "prod" }] })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let d = api.deploy("sec").await;
    assert_eq!(api.wait(d).await["status"], "running", "{}", server.logs());
    // The container got it.
    assert_eq!(
        server
            .get(&server.host_of("sec"), "/greeting")
            .await
            .unwrap()
            .1,
        format!("{secret}\n")
    );
    // The API never gives it back.
    let (_, env) = api.call(Method::GET, "/api/apps/sec/env", None).await;
    assert!(!env.to_string().contains(secret), "{env}");
    assert!(env.to_string().contains("prod"), "{env}");
    for path in [
        "/api/apps/sec",
        &format!("/api/deployments/{d}"),
        &format!("/api/deployments/{d}/logs"),
    ] {
        let (_, v) = api.call(Method::GET, path, None).await;
        assert!(!v.to_string().contains(secret), "{path}: {v}");
    }
    // Not in the database files (WAL included), nor in the server's log.
    server.kill9();
    for entry in std::fs::read_dir(&server.state).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret in plain text",
                path.display()
            );
        }
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.state.join("rivetr.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.state.join("rivetr.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    server.cleanup(&["sec"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_traffic_with_their_limits_and_metrics_count_it() {
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("m1");
    repo.write(
        "rivetr.toml",
        "replicas = 2\n[resources]\nmemory_mb = 48\ncpus = 0.5\n[health]\npath = \"/version\"\ninterval_ms = 50\n",
    );
    repo.commit_version("m1");
    assert_eq!(api.create_app("multi", &repo.url(), &[]).await.0, 201);
    let d = api.deploy("multi").await;
    assert_eq!(api.wait(d).await["status"], "running", "{}", server.logs());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = server.get(&server.host_of("multi"), "/host").await.unwrap();
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "round robin over two replicas: {seen:?}");
    for replica in 0..2 {
        let out = std::process::Command::new("podman")
            .args([
                "inspect",
                "--format",
                "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
                &format!("rivetr-multi-d{d}-r{replica}"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{} 500000000", 48 * 1024 * 1024)
        );
    }
    let metrics = reqwest::get(format!("http://{}/metrics", server.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("rivetr_router_requests_total")
                && l.contains("app=\"multi\"")
                && l.contains("2xx")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 10.0, "{line}");
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", server.api))
            .await
            .unwrap()
            .status(),
        200
    );
    server.cleanup(&["multi"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_past_the_newest_good_ones_are_pruned_and_cannot_be_rolled_back_to() {
    // The test servers keep 2 good images per app.
    let mut server = Server::start();
    let api = server.client();
    let repo = AppRepo::new("p1");
    assert_eq!(api.create_app("prune", &repo.url(), &[]).await.0, 201);
    let mut ids = Vec::new();
    for version in ["p1", "p2", "p3"] {
        if version != "p1" {
            repo.commit_version(version);
        }
        let d = api.deploy("prune").await;
        assert_eq!(api.wait(d).await["status"], "running", "{}", server.logs());
        ids.push(d);
    }
    let images = |server: &Server| {
        let out = std::process::Command::new("podman")
            .args([
                "images",
                "--format",
                "{{.Repository}}:{{.Tag}}",
                "--filter",
                "label=rivetr.app=prune",
            ])
            .output()
            .unwrap();
        let _ = server;
        let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // Untagged images are intermediate layers, or leftovers of other
            // runs whose tags this one reused.
            .filter(|t| *t != "<none>:<none>")
            .map(str::to_owned)
            .collect();
        tags.sort();
        tags
    };
    // Pruning follows the switch and the old version's drain.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let tags = loop {
        let tags = images(&server);
        if tags.len() == 2 || std::time::Instant::now() > deadline {
            break tags;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(tags.len(), 2, "{tags:?}\n{}", server.logs());
    assert_eq!(tags.len(), 2, "{tags:?}\n{}", server.logs());
    assert!(
        tags.iter().all(|t| !t.ends_with(&format!(":d{}", ids[0]))),
        "{tags:?}"
    );
    // The newest two can be returned to; the pruned one says why not.
    let (status, v) = api
        .call(
            Method::POST,
            "/api/apps/prune/rollback",
            Some(json!({ "to": ids[0] })),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let done = api.wait(v["deployment"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["reason"].as_str().unwrap().contains("was pruned"),
        "{done}"
    );
    assert_eq!(
        server
            .get(&server.host_of("prune"), "/version")
            .await
            .unwrap()
            .1,
        "p3\n"
    );
    let (status, v) = api
        .call(
            Method::POST,
            "/api/apps/prune/rollback",
            Some(json!({ "to": ids[1] })),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(
        api.wait(v["deployment"].as_i64().unwrap()).await["status"],
        "running"
    );
    assert_eq!(
        server
            .get(&server.host_of("prune"), "/version")
            .await
            .unwrap()
            .1,
        "p2\n"
    );
    server.cleanup(&["prune"]);
}
