//! Test helpers: a running `rivetr serve`, an API client with its admin
//! token, and git repositories whose Dockerfile builds a busybox web server
//! `FROM scratch` (no image can be pulled here).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::podman::unique;

/// Podman's API, started by the project's script; its address.
pub fn container_engine() -> String {
    super::podman::podman_socket()
}

pub fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "/bin/busybox missing: apt-get install -y busybox-static"
    );
    p
}

/// A git repository of a test app.
pub struct AppRepo {
    pub dir: tempfile::TempDir,
}

impl AppRepo {
    /// A repository serving `version` at `/version`, on port 8080.
    pub fn new(version: &str) -> AppRepo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(busybox(), dir.path().join("busybox")).unwrap();
        let repo = AppRepo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "t@example.test"]);
        repo.git(&["config", "user.name", "t"]);
        repo.write(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
             CMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo \\\"$GREETING\\\" > /www/greeting; /bin/busybox hostname > /www/host; echo app started; exec /bin/busybox httpd -f -p 8080 -h /www\"]\n",
        );
        repo.write(
            "rivetr.toml",
            "[health]\npath = \"/version\"\ntimeout_secs = 20\ninterval_ms = 50\n",
        );
        repo.commit_version(version);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        self.path().to_str().unwrap().to_owned()
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn git(&self, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sets `/version` to `version` and commits everything.
    pub fn commit_version(&self, version: &str) {
        self.write("www/version", &format!("{version}\n"));
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", version]);
    }
}

/// A `rivetr serve` process with its own state directory and network.
pub struct Server {
    pub child: Child,
    pub state: PathBuf,
    pub api: String,
    pub router: String,
    pub token: String,
    pub base_domain: String,
    pub network: String,
    pub stderr_log: PathBuf,
    _dir: Option<tempfile::TempDir>,
    _serial: Option<std::sync::MutexGuard<'static, ()>>,
}

impl Server {
    pub fn start() -> Server {
        container_engine();
        let serial = super::podman::one_at_a_time();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_owned();
        let network = unique("rvt-net");
        let mut s = Server::start_in(&state, &network, None);
        s._dir = Some(dir);
        s._serial = Some(serial);
        s
    }

    /// Starts (or starts again) on an existing state directory.
    pub fn start_in(state: &Path, network: &str, token: Option<String>) -> Server {
        let base_domain = "apps.test".to_owned();
        let config = state.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ndatabase = {:?}\nkey_file = {:?}\nrouter_listen = [\"127.0.0.1:0\"]\n\
                 api_listen = \"127.0.0.1:0\"\nbase_domain = {base_domain:?}\nnetwork = {network:?}\n\
                 drain_timeout_secs = 5\nstop_grace_secs = 1\nkeep_images = 2\nlog = \"info,rivetr=debug\"\n",
                state.join("data"),
                state.join("rivetr.db"),
                state.join("rivetr.key"),
            ),
        )
        .unwrap();
        let stderr_log = state.join(format!("{}.log", unique("stderr")));
        let mut child = Command::new(env!("CARGO_BIN_EXE_rivetr"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RIVETR_TOKEN")
            .env("DOCKER_HOST", container_engine())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "rivetr serve said nothing:\n{}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .unwrap();
        // "rivetr: API on http://ADDR, router on ADDR"
        let api = first
            .split("API on http://")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_owned();
        let router = first.split("router on ").nth(1).unwrap().trim().to_owned();
        let token = match token {
            Some(t) => t,
            None => {
                let line = lines.next().unwrap().unwrap();
                line.rsplit(' ').next().unwrap().to_owned()
            }
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            state: state.to_owned(),
            api,
            router,
            token,
            base_domain,
            network: network.to_owned(),
            stderr_log,
            _dir: None,
            _serial: None,
        }
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.api.clone(),
            token: self.token.clone(),
        }
    }

    pub fn host_of(&self, app: &str) -> String {
        format!("{app}.{}", self.base_domain)
    }

    /// GETs `path` through the router with `Host: host`.
    pub async fn get(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let resp = client
            .get(format!("http://{}{path}", self.router))
            .header("host", host)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Names of the containers this server's apps own right now.
    pub fn containers_of(&self, app: &str) -> Vec<String> {
        let out = Command::new("podman")
            .args([
                "ps",
                "-a",
                "--format",
                "{{.Names}}",
                "--filter",
                &format!("label=rivetr.app={app}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits (up to 30 s) until the app's containers are exactly `names`:
    /// an old version is stopped after its requests drained.
    pub async fn wait_containers(&self, app: &str, names: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.containers_of(app);
            if now == names {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containers of {app}: {now:?}, expected {names:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server and removes what it created in the engine.
    pub fn cleanup(&mut self, apps: &[&str]) {
        self.kill9();
        for app in apps {
            for name in self.containers_of(app) {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0", &name])
                    .output();
            }
            let out = Command::new("podman")
                .args([
                    "images",
                    "-q",
                    "--filter",
                    &format!("label=rivetr.app={app}"),
                ])
                .output()
                .unwrap();
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("podman").args(["rmi", "-f", id]).output();
            }
        }
        let _ = Command::new("podman")
            .args(["network", "rm", "-f", &self.network])
            .output();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API, with the admin token.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn create_app(&self, name: &str, git: &str, domains: &[&str]) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/api/apps",
            Some(json!({ "name": name, "git": git, "domains": domains })),
        )
        .await
    }

    pub async fn deploy(&self, app: &str) -> i64 {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/apps/{app}/deploy"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{v}");
        v["deployment"].as_i64().unwrap()
    }

    pub async fn deployment(&self, id: i64) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/api/deployments/{id}"),
            None,
        )
        .await
        .1
    }

    /// Waits until the deployment ends; its final record.
    pub async fn wait(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self.deployment(id).await;
            if matches!(
                d["status"].as_str(),
                Some("running" | "failed" | "superseded")
            ) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} did not end: {d}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
