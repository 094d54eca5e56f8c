//! The dashboard: forms, CSRF and Origin checks over plain HTTP, and the
//! whole flow in a real headless Chromium driven through WebDriver.
//!
//! The WebDriver client is a few W3C endpoints over reqwest (already in the
//! tree): a WebDriver crate would bring a second HTTP client stack for the
//! eight calls this test makes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::helpers::{eventually, other_bins, spawn_app, TestApp, ADMIN_EMAIL, PASSWORD};

fn client_no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form; returns the session cookie.
async fn sign_in(app: &TestApp, email: &str) -> String {
    let resp = client_no_redirects()
        .post(app.url("/login"))
        .form(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn forms_need_the_session_csrf_token_and_our_origin() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.user(&admin, "viewer@example.com", "viewer").await;
    let http = client_no_redirects();

    // Not signed in: pages send you to the sign-in form.
    let resp = http.get(app.url("/streams")).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    let resp = http
        .post(app.url("/login"))
        .form(&[("email", ADMIN_EMAIL), ("password", "wrong password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Wrong email or password"));

    let cookie = sign_in(&app, ADMIN_EMAIL).await;
    let page = http
        .get(app.url("/senders"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);

    // Without the token, with a wrong one, or from another origin: refused.
    for (token, origin) in [
        ("", None),
        ("forged", None),
        (csrf.as_str(), Some("http://evil.example")),
    ] {
        let mut req = http
            .post(app.url("/senders"))
            .header("cookie", &cookie)
            .form(&[("name", "cam"), ("csrf", token)]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "token {token:?} origin {origin:?}");
    }
    assert!(app.control.store().list_senders().await.unwrap().is_empty());

    // With it: the sender is made and its token shown once.
    let resp = http
        .post(app.url("/senders"))
        .header("cookie", &cookie)
        .header("origin", app.url(""))
        .form(&[("name", "cam"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("id=\"enrolment-token\">enr_"), "{html}");

    // A viewer's page has no start form, and a forged post is refused by role.
    let viewer = sign_in(&app, "viewer@example.com").await;
    let page = http
        .get(app.url("/streams"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"start-form\""));
    let csrf = csrf_of(&page);
    let resp = http
        .post(app.url("/streams/start"))
        .header("cookie", &viewer)
        .form(&[
            ("sender_id", "snd_0000"),
            ("destination_ids", "dst_0000"),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("viewer"));
    // Viewers do not see the users page either.
    let resp = http
        .get(app.url("/users"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

// ---- headless Chromium ------------------------------------------------------

struct Driver {
    process: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    async fn start() -> Driver {
        for bin in ["chromedriver", "chromium"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                found,
                "{bin} is missing; install it with: apt-get install -y chromium chromium-driver \
                 (or run scripts/setup-test-deps)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--no-first-run", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let session = eventually(20, "chromedriver to create a session", || {
            let http = http.clone();
            let url = format!("{base}/session");
            let caps = caps.clone();
            async move {
                let resp = http.post(url).json(&caps).send().await.ok()?;
                let v: Value = resp.json().await.ok()?;
                v["value"]["sessionId"].as_str().map(str::to_owned)
            }
        })
        .await;
        Driver {
            process,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url})).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    async fn wait_for(&self, css: &str) -> String {
        eventually(15, &format!("element {css}"), || self.find(css)).await
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.wait_for(css).await;
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let el = self.wait_for(css).await;
        self.call("POST", &format!("/element/{el}/click"), json!({}))
            .await;
    }

    async fn text(&self, css: &str) -> Option<String> {
        let el = self.find(css).await?;
        self.call("GET", &format!("/element/{el}/text"), Value::Null)
            .await
            .as_str()
            .map(str::to_owned)
    }

    async fn wait_text(&self, css: &str, want: &str) {
        eventually(20, &format!("{css} to read {want:?}"), || async {
            self.text(css)
                .await
                .filter(|t| t.trim() == want)
                .map(|_| ())
        })
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let v = self.call("GET", "/screenshot", Value::Null).await;
        if let Some(b64) = v.as_str() {
            let dir =
                std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("strata-screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sign_in_watch_a_sender_come_online_and_start_a_stream_in_chromium() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (sender_id, token) = app.sender(&admin, "field-cam").await;
    app.destination(&admin, "live_BROWSER_KEY_0001").await;
    let (agent_bin, _) = other_bins();
    let agent_dir = tempfile::tempdir().unwrap();
    // Async: the server runs on this test's runtime and must keep serving.
    let out = tokio::process::Command::new(&agent_bin)
        .arg("--state-dir")
        .arg(agent_dir.path())
        .args(["enrol", "--control", &app.url(""), "--token", &token])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let driver = Driver::start().await;
    driver.goto(&app.url("/login")).await;
    driver.type_into("#email", ADMIN_EMAIL).await;
    driver.type_into("#password", PASSWORD).await;
    driver.click("#submit").await;
    driver.wait_text("main h1", "Streams").await;
    driver.screenshot("streams-empty").await;

    driver.goto(&app.url("/senders")).await;
    let badge = format!("[data-live=\"presence:{sender_id}\"]");
    driver.wait_text(&badge, "offline").await;
    // The page's live socket is up before the agent connects.
    eventually(10, "the live socket", || async {
        let v = driver
            .call(
                "POST",
                "/execute/sync",
                json!({"script": "return document.body.dataset.live || ''", "args": []}),
            )
            .await;
        (v == "connected").then_some(())
    })
    .await;
    let _agent = Proc(
        Command::new(&agent_bin)
            .arg("--state-dir")
            .arg(agent_dir.path())
            .args(["run", "--stats-interval-ms", "250"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // No reload: the badge changes through the live WebSocket.
    driver.wait_text(&badge, "online").await;
    driver.screenshot("senders-online").await;

    driver.goto(&app.url("/streams")).await;
    driver.click(".start-destination").await;
    driver.click("#start-button").await;
    let stream_id = eventually(15, "the stream row", || async {
        app.control
            .store()
            .list_streams(true, 10)
            .await
            .ok()?
            .first()
            .map(|s| s.id.clone())
    })
    .await;
    let state = format!("[data-live=\"state:{stream_id}\"]");
    driver.wait_text(&state, "live").await;
    // Bitrate arrives live from the agent's stats.
    eventually(15, "a live bitrate", || async {
        driver
            .text(&format!("[data-live=\"bitrate:{stream_id}\"]"))
            .await
            .filter(|t| t.ends_with("kb/s"))
    })
    .await;
    driver.screenshot("stream-live").await;

    driver.click(".stop-button").await;
    eventually(15, "the stream to end", || async {
        let s = app.control.store().stream(&stream_id).await.ok()??;
        (s.state == "ended").then_some(())
    })
    .await;
    driver.goto(&app.url("/streams")).await;
    let history = driver.text("#stream-history").await.unwrap_or_default();
    assert!(
        history.contains(&stream_id) && history.contains("ended"),
        "{history}"
    );
    driver.screenshot("stream-history").await;
    driver.call("DELETE", "", Value::Null).await;
}
