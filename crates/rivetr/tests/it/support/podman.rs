//! Real Podman for tests: started through `scripts/start-podman`, images
//! built `FROM scratch` with busybox-static's binary (nothing is pulled),
//! unique names, and a janitor that removes what a test made even when it
//! panics. Public so the deployment engine's end-to-end tests can use it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// busybox-static's binary, copied into every test image.
pub const BUSYBOX: &str = "/bin/busybox";

/// What the test images run: an HTTP server on port 8080 serving `/www`
/// (where `env` holds `$GREETING`), and a line on stdout and on stderr
/// every second for the log tests. SIGTERM ends it within a second.
pub const WEB_COMMAND: &str = r#"trap 'exit 0' TERM
echo "$GREETING" > /www/env
echo started
/bin/busybox httpd -f -p 8080 -h /www &
i=0
while true; do
  i=$((i+1))
  echo "tick $i"
  echo "warn $i" >&2
  /bin/busybox sleep 1
done"#;

/// The workspace's `scripts/` directory.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Makes sure Podman's API socket answers (running `scripts/start-podman`,
/// which installs and starts what is missing) and returns its address as
/// `unix://...`. `DOCKER_HOST` wins when set. Panics with the install
/// command when Podman cannot be had.
pub fn podman_socket() -> String {
    static SOCKET: OnceLock<String> = OnceLock::new();
    SOCKET
        .get_or_init(|| {
            if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
                return host;
            }
            let script = scripts_dir().join("start-podman");
            let out = Command::new(&script)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "Rivetr's tests need Podman with its API socket: {} failed ({}). \
                 As root it installs what is missing; by hand: apt-get install -y podman runc busybox-static",
                script.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            format!("unix://{path}")
        })
        .clone()
}

/// The `podman` binary (after [`podman_socket`] made sure it is installed).
pub fn podman_binary() -> PathBuf {
    podman_socket();
    rivetr::runtime::podman_on_path()
        .expect("podman is not on PATH; install it with: apt-get install -y podman")
}

/// A name no other test (or earlier run) uses: `prefix-<pid><n><time>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{n:x}{nanos:x}", std::process::id())
}

/// Writes a build context into `dir`: a Dockerfile `FROM scratch` with
/// busybox, `/www/version` holding `version`, `LABEL version=$VERSION` from
/// a build argument, and [`WEB_COMMAND`] as its command.
pub fn write_web_context(dir: &Path, version: &str) {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing; install it with: apt-get install -y busybox-static"
    );
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
    std::fs::write(dir.join("www/version"), version).unwrap();
    let cmd = serde_json::to_string(&["/bin/busybox", "sh", "-c", WEB_COMMAND]).unwrap();
    let dockerfile = format!(
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         COPY www /www\n\
         ARG VERSION=unset\n\
         LABEL version=$VERSION\n\
         CMD {cmd}\n"
    );
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

/// Writes a context whose Dockerfile is `dockerfile` (with busybox beside
/// it, for `COPY busybox /bin/busybox`).
pub fn write_context(dir: &Path, dockerfile: &str) {
    std::fs::copy(BUSYBOX, dir.join("busybox")).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

/// `GET path` over plain HTTP/1.0 to `addr`, retried until `within` has
/// passed (a container's server takes a moment to listen). Returns the body
/// of a 200.
pub async fn http_get(addr: SocketAddr, path: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match get_once(addr, path).await {
            Ok(body) => return Ok(body),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("GET http://{addr}{path}: {last}"))
}

/// The status code of `GET path` to `addr` (one try).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let (head, _) = exchange(addr, path).await?;
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))
}

async fn get_once(addr: SocketAddr, path: &str) -> Result<String, String> {
    let (head, body) = exchange(addr, path).await?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body)
}

/// One HTTP/1.0 exchange: the response's head and body.
async fn exchange(addr: SocketAddr, path: &str) -> Result<(String, String), String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "read timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of head")?;
    Ok((head.to_owned(), body.to_owned()))
}

/// Labels of a network, as `podman network inspect` reports them.
pub fn network_labels(name: &str) -> BTreeMap<String, String> {
    let out = Command::new(podman_binary())
        .args(["network", "inspect", "--format", "{{json .Labels}}", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Option<BTreeMap<String, String>>>(&out.stdout)
        .unwrap()
        .unwrap_or_default()
}

/// Removes the containers, images and networks registered with it when
/// dropped, through the `podman` CLI, so a failed test leaves nothing.
#[derive(Default)]
pub struct Janitor {
    containers: Vec<String>,
    images: Vec<String>,
    networks: Vec<String>,
}

impl Janitor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }

    pub fn image(&mut self, tag: &str) {
        self.images.push(tag.to_owned());
    }

    pub fn network(&mut self, name: &str) {
        self.networks.push(name.to_owned());
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        let podman = podman_binary();
        let run = |args: &[&str], names: &[String]| {
            if names.is_empty() {
                return;
            }
            let _ = Command::new(&podman)
                .args(args)
                .args(names)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        run(
            &["rm", "--force", "--ignore", "--time", "0"],
            &self.containers,
        );
        for image in &self.images {
            // Not forced: a forced removal also removes containers using
            // the image, and a concurrent build may be using it as a cache
            // layer. Built contexts are unique per test, so this is rare.
            run(&["rmi", "--ignore"], std::slice::from_ref(image));
        }
        run(&["network", "rm", "--force"], &self.networks);
    }
}

/// Runs the tests that use the container engine one at a time. Podman 4.3
/// answers a build or an image listing with "layer not known" / "image not
/// known" when another client removes an image at that moment; the engine
/// retries those, but a suite that builds and removes images from every
/// test at once made it happen often enough to fail runs. Hold the guard
/// for the whole test.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
