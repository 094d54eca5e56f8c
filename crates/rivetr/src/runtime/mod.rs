//! Container runtime interface (the implementations arrive separately).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;

pub const MANAGED_LABEL: &str = "rivetr.managed";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("build failed: {message}")]
    Build { message: String },
    #[error("container engine: {0}")]
    Engine(String),
    #[error("no container engine: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub context_dir: PathBuf,
    pub dockerfile: String,
    pub tag: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy)]
pub enum RestartPolicy {
    No,
    UnlessStopped,
    OnFailure { max: u32 },
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub restart: RestartPolicy,
}

#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub stream: LogStream,
    pub text: String,
}

#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn ping(&self) -> Result<String, RuntimeError>;
    async fn build(
        &self,
        spec: &BuildSpec,
        log: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<String, RuntimeError>;
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError>;
    async fn run(&self, spec: &RunSpec) -> Result<ContainerInfo, RuntimeError>;
    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError>;
    async fn stop_and_remove(&self, id_or_name: &str, grace: Duration) -> Result<(), RuntimeError>;
    async fn logs(
        &self,
        id_or_name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<LogLine, RuntimeError>>, RuntimeError>;
    async fn image_exists(&self, tag: &str) -> Result<bool, RuntimeError>;
    async fn list_images(&self, labels: &[(&str, &str)]) -> Result<Vec<ImageInfo>, RuntimeError>;
    async fn remove_image(&self, tag_or_id: &str) -> Result<(), RuntimeError>;
}

pub async fn connect(docker_host: Option<&str>) -> Result<Arc<dyn ContainerRuntime>, RuntimeError> {
    Err(RuntimeError::Unavailable(format!("{docker_host:?}")))
}
