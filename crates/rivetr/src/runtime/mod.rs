//! The container runtime layer: everything Rivetr asks of a container engine
//! (build an image, make a network, run, inspect, list, stop and remove
//! containers, read their logs, list and remove images) behind one trait,
//! [`ContainerRuntime`], with two implementations.
//!
//! - [`docker::DockerApi`] speaks the Docker Engine API (bollard) over a Unix
//!   socket or `tcp://`. Docker answers it, and so does Podman's
//!   `podman system service` (`scripts/start-podman` starts one). This is the
//!   preferred path: typed requests, streamed build output, no process per
//!   call and no parsing of human-oriented output.
//! - [`podman::PodmanCli`] runs the `podman` binary through
//!   `tokio::process`. It exists because a machine may have Podman installed
//!   without its API service running (Podman is daemonless; nothing starts
//!   the socket by default), and Rivetr should still deploy there.
//!
//! [`connect`] picks one: the first socket that answers a ping, else the CLI
//! when a `podman` binary is on `PATH`, else an error naming every place
//! tried.
//!
//! Both behave the same as far as the trait says; the integration tests run
//! one set of tests against each. Where they differ underneath:
//! - The API path sends the build context as a tar made here; the CLI
//!   hands the directory to `podman build`. Both leave out what the
//!   context's `.dockerignore` names, and `.git` always (the CLI through an
//!   `--ignorefile` holding the context's patterns plus `.git`).
//! - Environment values reach the CLI through an env file (mode 0600,
//!   removed as soon as the container is created), never argv; that format
//!   cannot carry a newline, so the CLI refuses values holding one, which the
//!   API accepts.
//! - Build arguments go in the API request, or in `podman build`'s argv.
//!   They are not for secrets either way: the engine records them in the
//!   image's history.
//!
//! Common to both: tags without a registry are reported as Docker shows
//! them, without the `localhost/` or `docker.io/` Podman puts before them;
//! image ids always carry the `sha256:` prefix, and container names never
//! the leading `/` of the Docker API.
//!
//! This module does not decide anything about deployments: no names, no
//! health checks, no routing, no retries. It never publishes ports (the
//! router reaches containers by their address on the private network) and
//! never pulls images.

mod context;
pub mod docker;
pub mod podman;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use tokio::sync::mpsc::UnboundedSender;

/// Label with value `"true"` on every container, image and network Rivetr
/// creates, so it can tell its own objects from anything else on the engine.
pub const MANAGED_LABEL: &str = "rivetr.managed";

/// What to build: a context directory, the Dockerfile in it, the tag.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub context_dir: PathBuf,
    /// Path relative to `context_dir`; usually `"Dockerfile"`.
    pub dockerfile: String,
    /// The image's tag, e.g. `"rivetr/web:dep-12"`.
    pub tag: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

impl BuildSpec {
    /// A spec with the default Dockerfile name and no arguments or labels.
    pub fn new(context_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        BuildSpec {
            context_dir: context_dir.into(),
            dockerfile: "Dockerfile".to_owned(),
            tag: tag.into(),
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// What to run. The image's own command runs; no port is published.
#[derive(Clone)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    /// Environment of the container. Values may be secrets: they never
    /// appear in argv or logs, and `Debug` prints only the names.
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// The network to attach to (see [`ContainerRuntime::ensure_network`]).
    pub network: String,
    pub memory_bytes: Option<i64>,
    /// CPU limit in billionths of a CPU (1_500_000_000 is one and a half).
    pub nano_cpus: Option<i64>,
    pub restart: RestartPolicy,
}

impl fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RunSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env_names", &env_names)
            .field("labels", &self.labels)
            .field("network", &self.network)
            .field("memory_bytes", &self.memory_bytes)
            .field("nano_cpus", &self.nano_cpus)
            .field("restart", &self.restart)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    UnlessStopped,
    OnFailure {
        max: u32,
    },
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/` the Docker API puts before names.
    pub name: String,
    /// The image as the container was created from it (a tag, normally).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// The address on the run's network ([`RunSpec::network`]) for
    /// [`ContainerRuntime::run`]; elsewhere the address on the first
    /// network, by name, that gave one.
    pub ip: Option<IpAddr>,
    /// Every network the container is on, with its address there.
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// The memory limit the engine applied, if any.
    pub memory_bytes: Option<i64>,
}

/// An image as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<hex>`.
    pub id: String,
    /// As Docker shows them: without Podman's `localhost/` or `docker.io/`.
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a container wrote, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The build failed; `message` is the engine's own reason (a missing
    /// Dockerfile, a step that failed, bad syntax).
    #[error("image build failed: {message}")]
    Build { message: String },
    /// The container, image or network named does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    /// The request cannot be expressed to this runtime.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The engine refused or failed an operation through its API.
    #[error("container engine API, {op}: {source}")]
    Api {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    /// `podman` failed; `message` is what it printed on stderr.
    #[error("podman {op}: {message}")]
    Cli { op: &'static str, message: String },
    /// The engine answered something this module cannot read.
    #[error("unexpected answer from the container engine ({op}): {message}")]
    Decode { op: &'static str, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// [`connect`] found no engine.
    #[error("no container engine found; tried: {}", tried.join("; "))]
    NoEngine { tried: Vec<String> },
}

impl RuntimeError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A container engine, reached through its API or its CLI.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// `"docker-api"` or `"podman-cli"`.
    fn kind(&self) -> &'static str;

    /// The engine's name and version, e.g. `"Podman Engine 4.3.1"`.
    async fn ping(&self) -> Result<String, RuntimeError>;

    /// Builds; every output line is sent to `log` as it arrives; returns the
    /// image id (`sha256:<hex>`). A failed build (Dockerfile missing, a RUN
    /// failing, bad syntax) is `Err(RuntimeError::Build { message })` whose
    /// message is the engine's own reason.
    async fn build(
        &self,
        spec: &BuildSpec,
        log: UnboundedSender<String>,
    ) -> Result<String, RuntimeError>;

    /// A bridge network labelled [`MANAGED_LABEL`], not internal (containers
    /// reach out; the host reaches them). Idempotent.
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError>;

    /// Creates, starts and inspects a container; never publishes ports.
    async fn run(&self, spec: &RunSpec) -> Result<ContainerInfo, RuntimeError>;

    /// `None` when no such container exists.
    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError>;

    /// Containers in any state carrying every one of `labels`.
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes. A container
    /// that does not exist is not an error.
    async fn stop_and_remove(&self, id_or_name: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// The container's output, line by line: the last `tail` lines (all when
    /// `None`), then, with `follow`, new lines until the container stops or
    /// the stream is dropped. `Err(NotFound)` when no such container exists.
    async fn logs(
        &self,
        id_or_name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<LogLine, RuntimeError>>, RuntimeError>;

    async fn image_exists(&self, tag: &str) -> Result<bool, RuntimeError>;

    /// Images carrying every one of `labels`.
    async fn list_images(&self, labels: &[(&str, &str)]) -> Result<Vec<ImageInfo>, RuntimeError>;

    /// Removes a tag (the image goes when its last tag does) or an image by
    /// id. One that does not exist is not an error.
    async fn remove_image(&self, tag_or_id: &str) -> Result<(), RuntimeError>;
}

/// Where [`connect`] looks, in order: `docker_host` or else `DOCKER_HOST`
/// (`unix://` or `tcp://`), `/var/run/docker.sock`, `/run/podman/podman.sock`
/// and `$XDG_RUNTIME_DIR/podman/podman.sock`.
pub fn default_hosts(docker_host: Option<&str>) -> Vec<String> {
    let mut hosts = Vec::new();
    match docker_host {
        Some(host) => hosts.push(host.to_owned()),
        None => {
            if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
                hosts.push(host);
            }
        }
    }
    hosts.push("unix:///var/run/docker.sock".to_owned());
    hosts.push("unix:///run/podman/podman.sock".to_owned());
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let socket = Path::new(&dir).join("podman/podman.sock");
        hosts.push(format!("unix://{}", socket.display()));
    }
    hosts.dedup();
    hosts
}

/// The `podman` binary on `PATH`, if there is one.
pub fn podman_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("podman"))
        .find(|candidate| candidate.is_file())
}

/// How long [`connect`] waits for one place to answer: a socket whose
/// daemon hangs must not stall the search.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the first engine that answers, looking where
/// [`default_hosts`] says, then falling back to the Podman CLI.
pub async fn connect(docker_host: Option<&str>) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
    connect_with(&default_hosts(docker_host), podman_on_path()).await
}

/// [`connect`] with the places to try given: each of `hosts` in order (the
/// first that answers a ping wins), then the `podman` binary at `podman`,
/// if given and if it answers. The error names every place tried and why
/// it did not do.
pub async fn connect_with(
    hosts: &[String],
    podman: Option<PathBuf>,
) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
    let mut tried = Vec::new();
    for host in hosts {
        match docker::DockerApi::connect(host) {
            Ok(api) => match tokio::time::timeout(PING_TIMEOUT, api.ping()).await {
                Ok(Ok(version)) => {
                    tracing::debug!(host, version, "container engine API answers");
                    return Ok(Arc::new(api));
                }
                Ok(Err(e)) => tried.push(format!("{host} ({e})")),
                Err(_) => tried.push(format!("{host} (no answer within {PING_TIMEOUT:?})")),
            },
            Err(e) => tried.push(format!("{host} ({e})")),
        }
    }
    match podman {
        Some(binary) => {
            let cli = podman::PodmanCli::new(binary.clone());
            match tokio::time::timeout(PING_TIMEOUT, cli.ping()).await {
                Ok(Ok(version)) => {
                    tracing::debug!(binary = %binary.display(), version, "using the podman CLI");
                    return Ok(Arc::new(cli));
                }
                Ok(Err(e)) => tried.push(format!("podman CLI {} ({e})", binary.display())),
                Err(_) => tried.push(format!(
                    "podman CLI {} (no answer within {PING_TIMEOUT:?})",
                    binary.display()
                )),
            }
        }
        None => tried.push("podman CLI (no podman binary on PATH)".to_owned()),
    }
    Err(RuntimeError::NoEngine { tried })
}

/// Filter arguments for label filters: `k=v`.
fn label_filters(labels: &[(&str, &str)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Names as Docker shows them: Podman's CLI stores unqualified names under
/// `localhost/`, and its compatibility API under `docker.io/`, which Docker
/// itself leaves out when it shows a name.
fn short_name(name: &str) -> String {
    ["localhost/", "docker.io/library/", "docker.io/"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name)
        .to_owned()
}

/// Image ids as `sha256:<hex>`, whichever form the engine answered.
fn full_image_id(id: &str) -> String {
    if id.starts_with("sha256:") {
        id.to_owned()
    } else {
        format!("sha256:{id}")
    }
}

/// The address to report as [`ContainerInfo::ip`]: on `preferred` when
/// given, else on the first network (by name) that has one.
fn pick_ip(networks: &BTreeMap<String, Option<IpAddr>>, preferred: Option<&str>) -> Option<IpAddr> {
    match preferred {
        Some(net) => networks.get(net).copied().flatten(),
        None => networks.values().find_map(|ip| *ip),
    }
}

fn parse_ip(text: Option<&str>) -> Option<IpAddr> {
    text.filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

/// Splits chunks of output into lines, whichever way the chunks fall.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }

    fn finish(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            None
        } else {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            Some(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_joins_chunks_and_strips_endings() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab"), Vec::<String>::new());
        assert_eq!(s.push(b"c\r\nde\nf"), vec!["abc", "de"]);
        assert_eq!(s.finish().as_deref(), Some("f"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn run_spec_debug_hides_env_values() {
        let spec = RunSpec {
            name: "n".into(),
            image: "i".into(),
            env: vec![("TOKEN".into(), "hunter2".into())],
            labels: BTreeMap::new(),
            network: "net".into(),
            memory_bytes: None,
            nano_cpus: None,
            restart: RestartPolicy::No,
        };
        let text = format!("{spec:?}");
        assert!(text.contains("TOKEN"));
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn ids_and_names_are_normalised() {
        assert_eq!(full_image_id("abc"), "sha256:abc");
        assert_eq!(full_image_id("sha256:abc"), "sha256:abc");
        assert_eq!(short_name("localhost/rivetr/web:1"), "rivetr/web:1");
        assert_eq!(short_name("docker.io/rivetr/web:1"), "rivetr/web:1");
        assert_eq!(short_name("docker.io/library/web:1"), "web:1");
        assert_eq!(short_name("quay.io/x:1"), "quay.io/x:1");
    }

    #[test]
    fn default_hosts_start_with_the_given_host() {
        let hosts = default_hosts(Some("tcp://127.0.0.1:2375"));
        assert_eq!(hosts[0], "tcp://127.0.0.1:2375");
        assert!(hosts.contains(&"unix:///run/podman/podman.sock".to_owned()));
    }
}
