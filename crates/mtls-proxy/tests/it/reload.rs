//! Hot reload: routes and certificates swap atomically under load, and a bad
//! file leaves the running configuration in place.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

fn routes(url: &str) -> String {
    format!("[[routes]]\nname = \"main\"\nupstreams = [\"{url}\"]\n")
}

async fn backend_name(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(body["backend"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn reload_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let app = spawn_app(dir.path(), &base_config(false, &routes(&a.url))).await;
    let url = app.http_url("/");
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_b = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for i in 0..4 {
        let (url, failures, seen_b, total) =
            (url.clone(), failures.clone(), seen_b.clone(), total.clone());
        workers.push(tokio::spawn(async move {
            // Half the workers reuse connections, half open one per request.
            let client = if i % 2 == 0 {
                reqwest::Client::new()
            } else {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            };
            let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
            while tokio::time::Instant::now() < deadline {
                match backend_name(&client, &url).await {
                    Ok(name) if name == "b" => {
                        seen_b.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("request failed during reload: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::write(&app.config_path, base_config(false, &routes(&b.url))).unwrap();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {} requests",
        total.load(Ordering::Relaxed)
    );
    assert!(
        seen_b.load(Ordering::Relaxed) > 0,
        "the new route never took effect"
    );
    let m = app.metrics().await;
    assert!(
        metric(&m, "mtls_proxy_reloads_total", &["result=\"ok\""]) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_bad_config_is_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = named_backend("a").await;
    let app = spawn_app(dir.path(), &base_config(false, &routes(&a.url))).await;
    let client = reqwest::Client::new();
    let before = metric(
        &app.metrics().await,
        "mtls_proxy_reloads_total",
        &["result=\"error\""],
    );
    std::fs::write(&app.config_path, "[server\nthis is not toml").unwrap();
    let mut rejected = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if metric(
            &app.metrics().await,
            "mtls_proxy_reloads_total",
            &["result=\"error\""],
        ) > before
        {
            rejected = true;
            break;
        }
    }
    assert!(rejected, "the bad file was not noticed");
    assert_eq!(
        backend_name(&client, &app.http_url("/")).await.unwrap(),
        "a"
    );
    // A file that parses but names a missing certificate is rejected too.
    std::fs::write(
        &app.config_path,
        base_config(
            false,
            &format!(
                "{}\n[[certificates]]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
                routes(&a.url)
            ),
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        backend_name(&client, &app.http_url("/")).await.unwrap(),
        "a"
    );
}

#[tokio::test]
async fn certificates_and_ca_bundles_reload_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca1 = pki.ca("ca1");
    let ca2 = pki.ca("ca2");
    let s1 = pki.server("server", &ca1, &["api.test"]);
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "[[certificates]]\ncert = \"server.pem\"\nkey = \"server.key\"\n{}",
            routes(&b.url)
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    let url = app.https_url("api.test", "/");
    let trusts_ca1 = || tls_client(&ca1, None, "api.test", app.https.unwrap(), false);
    let trusts_ca2 = || tls_client(&ca2, None, "api.test", app.https.unwrap(), false);
    assert_eq!(trusts_ca1().get(&url).send().await.unwrap().status(), 200);
    assert!(trusts_ca2().get(&url).send().await.is_err());
    drop(s1);
    // New certificate from another CA, written in place.
    pki.server("server", &ca2, &["api.test"]);
    let mut switched = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if trusts_ca2().get(&url).send().await.is_ok() {
            switched = true;
            break;
        }
    }
    assert!(switched, "the new certificate was never served");
    assert!(trusts_ca1().get(&url).send().await.is_err());
}
