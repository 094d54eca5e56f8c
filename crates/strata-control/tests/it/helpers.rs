//! Starting the control plane and talking to it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use strata_control::{Config, Control};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Each test gets its own slice of receiver ports, so parallel tests never
/// bind the same UDP port.
pub fn port_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 21000 + (std::process::id() % 200) as u16 * 100 + n * 10;
    (base, base + 9)
}

/// The directory cargo put this package's binaries in.
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata-control"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Builds the agent and receiver binaries once per test run (cargo only
/// builds this package's own binaries for its tests).
pub fn other_bins() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "strata-agent", "-p", "strata-receiver"])
            .status()
            .expect("running cargo build for strata-agent and strata-receiver");
        assert!(
            status.success(),
            "cargo build -p strata-agent -p strata-receiver failed"
        );
    });
    let dir = bin_dir();
    (dir.join("strata-agent"), dir.join("strata-receiver"))
}

pub fn config(data_dir: &Path, database_url: Option<String>) -> Config {
    let (_, receiver) = other_bins();
    let mut config = Config::load(None).unwrap();
    config.data_dir = data_dir.to_owned();
    config.database_url = database_url;
    config.port_range = port_range();
    config.receiver_bin = Some(receiver);
    config.heartbeat_secs = 1;
    config.listen = "127.0.0.1:0".into();
    config
}

/// A control plane served in this process on port 0.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub control: Arc<Control>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), None);
    tweak(&mut config);
    serve(config, dir).await
}

async fn serve(config: Config, dir: tempfile::TempDir) -> TestApp {
    let control = Control::open(config).await.expect("control plane opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let control = control.clone();
        async move {
            strata_control::run(control, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }
    });
    TestApp {
        addr,
        control,
        client: reqwest::Client::new(),
        dir,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Stops this control plane the way a process exits (receivers keep
    /// running) and starts a new one on the same data directory.
    pub async fn restart(mut self) -> TestApp {
        let config = self.control.config().clone();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        self.control.detach();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        serve(config, dir).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const PASSWORD: &str = "correct horse battery";

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Runs setup and returns the admin's access token.
    pub async fn admin(&self) -> String {
        let (status, body) = self
            .post(
                "/api/setup",
                None,
                json!({"email": ADMIN_EMAIL, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.login(ADMIN_EMAIL, PASSWORD).await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Creates a user with `role` and returns their access token.
    pub async fn user(&self, admin: &str, email: &str, role: &str) -> String {
        let (status, body) = self
            .post(
                "/api/users",
                Some(admin),
                json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.login(email, PASSWORD).await
    }

    /// Creates a sender; returns its id and enrolment token.
    pub async fn sender(&self, token: &str, name: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/senders", Some(token), json!({"name": name}))
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["sender"]["id"].as_str().unwrap().to_owned(),
            body["enrolment_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn destination(&self, token: &str, key: &str) -> String {
        let (status, body) = self
            .post(
                "/api/destinations",
                Some(token),
                json!({"name": "yt", "platform": "youtube",
                       "url": "rtmp://a.rtmp.youtube.com/live2", "stream_key": key}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/agent/ws", self.addr)
    }
}

/// Polls `check` until it returns Some, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent key pair generated in the test.
pub struct TestKey(Ed25519KeyPair);

impl TestKey {
    pub fn new() -> TestKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        TestKey(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }
    pub fn public(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.public_key().as_ref())
    }
    pub fn sign(&self, msg: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.sign(msg).as_ref())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol-level client: what a hostile or simulated agent can send.
pub struct WireClient {
    pub ws: Ws,
    n: u64,
}

impl WireClient {
    pub async fn connect(url: &str) -> WireClient {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        WireClient { ws, n: 0 }
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, kind: &str, payload: Value) -> String {
        self.n += 1;
        let id = format!("t{}", self.n);
        let frame = json!({"v": 1, "id": id, "type": kind, "ts": 0, "payload": payload});
        self.send_raw(&frame.to_string()).await;
        id
    }

    /// The next text frame as JSON, or None when the connection closed.
    pub async fn recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s");
            match next {
                Some(Ok(WsMessage::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed before {kind}"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Logs in as `sender_id` with `key`.
    pub async fn login(url: &str, sender_id: &str, key: &TestKey) -> WireClient {
        let mut c = WireClient::connect(url).await;
        c.send(
            "auth.hello",
            json!({"sender_id": sender_id, "agent_version": "test"}),
        )
        .await;
        let challenge = c.recv_type("auth.challenge").await;
        let nonce = challenge["payload"]["nonce"].as_str().unwrap().to_owned();
        let sig = key.sign(&strata_protocol::challenge_message(sender_id, &nonce));
        c.send("auth.response", json!({"signature": sig})).await;
        let ok = c.recv().await.expect("an answer to the login");
        assert_eq!(ok["type"], "auth.ok", "{ok}");
        c
    }
}

/// Enrols a test key for a new sender; returns (sender id, key).
pub async fn enrolled_sender(app: &TestApp, admin: &str, name: &str) -> (String, TestKey) {
    let (id, token) = app.sender(admin, name).await;
    let key = TestKey::new();
    let (status, body) = app
        .post(
            "/api/enrol",
            None,
            json!({"token": token, "public_key": key.public(), "hostname": name}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sender_id"], id.as_str());
    (id, key)
}
