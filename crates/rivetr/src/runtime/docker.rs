//! [`ContainerRuntime`] over the Docker Engine API (bollard), on a Unix
//! socket or `tcp://`. Docker's daemon answers it, and so does Podman's API
//! service; requests use API version 1.41, which both speak (Podman 4.3
//! implements the compatibility API at that level).
//!
//! The build context is tarred here ([`super::context`]) and streamed in the
//! request; build output arrives as `{"stream": ...}` messages, and a failed
//! step as an `errorDetail` message or an error status, both turned into
//! [`RuntimeError::Build`] carrying the engine's message.
//!
//! Bollard's models are strict about enumerations, and Podman sometimes
//! reports a passing container state they do not list (`"stopped"`, while
//! another client stops and removes the container): reads of containers are
//! tried again for up to 3 s before the error is returned.
//!
//! This does not speak TLS (no `https://` Docker hosts: bollard's TLS
//! features would bring a second TLS stack), pull images or publish ports.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, NetworkCreateRequest,
    RestartPolicy as ApiRestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use super::context::{check_dockerfile_path, tar_stream};
use super::{
    full_image_id, label_filters, parse_ip, pick_ip, short_name, BuildSpec, ContainerInfo,
    ContainerRuntime, ImageInfo, LineSplitter, LogLine, LogStream, RestartPolicy, RunSpec,
    RuntimeError, MANAGED_LABEL,
};

/// API version of the requests; see the module's documentation.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Seconds bollard waits for an answer's head. Builds and followed logs
/// stream for longer; their bodies are not under this limit.
const REQUEST_TIMEOUT_S: u64 = 600;

/// The Docker Engine API at one address.
pub struct DockerApi {
    docker: Docker,
    host: String,
}

impl DockerApi {
    /// A client for `host` (`unix:///path`, a bare socket path, or
    /// `tcp://host:port`). Nothing is sent until the first call; a Unix
    /// socket that does not exist is an error at once.
    pub fn connect(host: &str) -> Result<Self, RuntimeError> {
        let docker = if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            Docker::connect_with_http(&format!("tcp://{addr}"), REQUEST_TIMEOUT_S, &API_VERSION)
        } else if host.starts_with("unix://") || host.starts_with('/') {
            Docker::connect_with_unix(host, REQUEST_TIMEOUT_S, &API_VERSION)
        } else {
            return Err(RuntimeError::Invalid(format!(
                "Docker host {host:?}: only unix:// and tcp:// are supported"
            )));
        };
        let docker = docker.map_err(|source| RuntimeError::Api {
            op: "connect",
            source,
        })?;
        Ok(DockerApi {
            docker,
            host: host.to_owned(),
        })
    }

    /// The address this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn inspect_raw(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        // Podman reports some passing states bollard's model does not know
        // (`"stopped"`, seen while another client stopped and removed the
        // container); the answer cannot be read until the state moves on.
        let mut unreadable_tries = 0;
        loop {
            match self.docker.inspect_container(id_or_name, None).await {
                Ok(c) => return Ok(Some(c)),
                Err(e) if status_of(&e) == Some(404) => return Ok(None),
                Err(BollardError::JsonDataError { message, .. }) if unreadable_tries < 30 => {
                    tracing::debug!(container = id_or_name, message, "inspect unreadable; again");
                    unreadable_tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(RuntimeError::Api {
                        op: "inspect container",
                        source,
                    })
                }
            }
        }
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn api(op: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    move |source| RuntimeError::Api { op, source }
}

fn to_btree(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

fn container_info(c: ContainerInspectResponse, preferred_network: Option<&str>) -> ContainerInfo {
    let config = c.config.unwrap_or_default();
    let networks: BTreeMap<_, _> = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, endpoint)| (name, parse_ip(endpoint.ip_address.as_deref())))
        .collect();
    let memory_bytes = c.host_config.and_then(|h| h.memory).filter(|m| *m > 0);
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: short_name(&config.image.unwrap_or_default()),
        labels: to_btree(config.labels),
        running: c.state.and_then(|s| s.running).unwrap_or(false),
        ip: pick_ip(&networks, preferred_network),
        networks,
        memory_bytes,
    }
}

fn filters(labels: &[(&str, &str)]) -> HashMap<String, Vec<String>> {
    let mut map = HashMap::new();
    if !labels.is_empty() {
        map.insert("label".to_owned(), label_filters(labels));
    }
    map
}

/// A log stream being cut into lines: the engine's frames need not end at
/// line ends, and a last line without one is still a line.
struct LogState {
    raw: BoxStream<'static, Result<LogOutput, BollardError>>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    ready: VecDeque<Result<LogLine, RuntimeError>>,
    ended: bool,
}

impl LogState {
    async fn pull(&mut self) {
        match self.raw.next().await {
            Some(Ok(output)) => {
                let (stream, message) = match output {
                    LogOutput::StdErr { message } => (LogStream::Stderr, message),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        (LogStream::Stdout, message)
                    }
                    LogOutput::StdIn { .. } => return,
                };
                let splitter = match stream {
                    LogStream::Stdout => &mut self.stdout,
                    LogStream::Stderr => &mut self.stderr,
                };
                for text in splitter.push(&message) {
                    self.ready.push_back(Ok(LogLine { stream, text }));
                }
            }
            Some(Err(source)) => {
                self.ready
                    .push_back(Err(RuntimeError::Api { op: "logs", source }));
                self.ended = true;
            }
            None => {
                for (stream, splitter) in [
                    (LogStream::Stdout, &mut self.stdout),
                    (LogStream::Stderr, &mut self.stderr),
                ] {
                    if let Some(text) = splitter.finish() {
                        self.ready.push_back(Ok(LogLine { stream, text }));
                    }
                }
                self.ended = true;
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerApi {
    fn kind(&self) -> &'static str {
        "docker-api"
    }

    async fn ping(&self) -> Result<String, RuntimeError> {
        self.docker.ping().await.map_err(api("ping"))?;
        let version = self.docker.version().await.map_err(api("version"))?;
        let name = version
            .components
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.name.clone())
            .or_else(|| version.platform.as_ref().map(|p| p.name.clone()))
            .unwrap_or_else(|| "Docker Engine".to_owned());
        Ok(format!("{name} {}", version.version.unwrap_or_default()))
    }

    async fn build(
        &self,
        spec: &BuildSpec,
        log: UnboundedSender<String>,
    ) -> Result<String, RuntimeError> {
        let dockerfile = check_dockerfile_path(&spec.dockerfile).map_err(RuntimeError::Invalid)?;
        let build_args: HashMap<&str, &str> = spec
            .build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let labels: HashMap<&str, &str> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let options = BuildImageOptionsBuilder::new()
            .dockerfile(&dockerfile.to_string_lossy())
            .t(&spec.tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&build_args)
            .labels(&labels)
            .build();
        let (body, tar_task) = tar_stream(spec.context_dir.clone(), dockerfile);
        let mut output =
            self.docker
                .build_image(options, None, Some(bollard::body_try_stream(body)));
        let mut failure = None;
        while let Some(item) = output.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                        for line in text.lines().filter(|l| !l.trim().is_empty()) {
                            let _ = log.send(line.to_owned());
                        }
                    }
                }
                Err(BollardError::DockerStreamError { error }) => {
                    let message = error.trim_end().to_owned();
                    let _ = log.send(message.clone());
                    failure = Some(RuntimeError::Build { message });
                    break;
                }
                Err(BollardError::DockerResponseServerError { message, .. }) => {
                    let message = message.trim_end().to_owned();
                    let _ = log.send(message.clone());
                    failure = Some(RuntimeError::Build { message });
                    break;
                }
                Err(source) => {
                    failure = Some(RuntimeError::Api {
                        op: "build",
                        source,
                    });
                    break;
                }
            }
        }
        // Dropping the request stops the tar writer if it is still going.
        drop(output);
        let tar_result = tar_task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match (tar_result, failure) {
            // A context that could not be read explains a failure better
            // than whatever the engine made of the cut-off tar.
            (Err(e), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(RuntimeError::io("build context", e))
            }
            // The engine stopped reading because the build had failed.
            (_, Some(failure)) => return Err(failure),
            (Err(e), None) => return Err(RuntimeError::io("build context", e)),
            (Ok(()), None) => {}
        }
        let image = self
            .docker
            .inspect_image(&spec.tag)
            .await
            .map_err(api("inspect built image"))?;
        image
            .id
            .map(|id| full_image_id(&id))
            .ok_or_else(|| RuntimeError::Decode {
                op: "inspect built image",
                message: "no image id".to_owned(),
            })
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(source) => {
                return Err(RuntimeError::Api {
                    op: "inspect network",
                    source,
                })
            }
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            internal: Some(false),
            labels: Some(HashMap::from([(
                MANAGED_LABEL.to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(source) => {
                // Created by someone else since the inspect (Docker answers
                // 409, Podman 500): what was asked for.
                match self.docker.inspect_network(name, None).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(RuntimeError::Api {
                        op: "create network",
                        source,
                    }),
                }
            }
        }
    }

    async fn run(&self, spec: &RunSpec) -> Result<ContainerInfo, RuntimeError> {
        let restart_policy = match spec.restart {
            RestartPolicy::No => ApiRestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            RestartPolicy::UnlessStopped => ApiRestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            },
            RestartPolicy::OnFailure { max } => ApiRestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(i64::from(max)),
            },
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(
                spec.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.clone()),
                memory: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                restart_policy: Some(restart_policy),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(api("create container"))?;
        if let Err(source) = self.docker.start_container(&created.id, None).await {
            // Leave nothing half made behind.
            let remove = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self
                .docker
                .remove_container(&created.id, Some(remove))
                .await;
            return Err(RuntimeError::Api {
                op: "start container",
                source,
            });
        }
        let inspected =
            self.inspect_raw(&created.id)
                .await?
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "container",
                    name: spec.name.clone(),
                })?;
        Ok(container_info(inspected, Some(&spec.network)))
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self
            .inspect_raw(id_or_name)
            .await?
            .map(|c| container_info(c, None)))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters(labels))
            .build();
        // The summaries carry a state too, which may be one bollard cannot
        // read for a moment (see `inspect_raw`).
        let mut unreadable_tries = 0;
        let summaries = loop {
            match self.docker.list_containers(Some(options.clone())).await {
                Ok(summaries) => break summaries,
                Err(BollardError::JsonDataError { .. }) if unreadable_tries < 30 => {
                    unreadable_tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(RuntimeError::Api {
                        op: "list containers",
                        source,
                    })
                }
            }
        };
        // The summaries lack the memory limit and, on Podman, the addresses:
        // inspect each so `list` and `inspect` report the same things.
        let mut out = Vec::with_capacity(summaries.len());
        for id in summaries.into_iter().filter_map(|s| s.id) {
            if let Some(c) = self.inspect_raw(&id).await? {
                out.push(container_info(c, None));
            }
        }
        Ok(out)
    }

    async fn stop_and_remove(&self, id_or_name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::new().t(secs).build();
        match self.docker.stop_container(id_or_name, Some(stop)).await {
            // 304: already stopped; 404: already gone.
            Ok(()) => {}
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
            Err(source) => {
                return Err(RuntimeError::Api {
                    op: "stop container",
                    source,
                })
            }
        }
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id_or_name, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(source) => Err(RuntimeError::Api {
                op: "remove container",
                source,
            }),
        }
    }

    async fn logs(
        &self,
        id_or_name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<LogLine, RuntimeError>>, RuntimeError> {
        if self.inspect_raw(id_or_name).await?.is_none() {
            return Err(RuntimeError::NotFound {
                kind: "container",
                name: id_or_name.to_owned(),
            });
        }
        let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        // The stream borrows nothing: bollard's client is a cheap handle.
        let docker = self.docker.clone();
        let raw = docker.logs(id_or_name, Some(options)).boxed();
        let state = LogState {
            raw,
            stdout: LineSplitter::default(),
            stderr: LineSplitter::default(),
            ready: VecDeque::new(),
            ended: false,
        };
        let lines = futures_util::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.ready.pop_front() {
                    return Some((item, state));
                }
                if state.ended {
                    return None;
                }
                state.pull().await;
            }
        });
        Ok(lines.boxed())
    }

    async fn image_exists(&self, tag: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(source) => Err(RuntimeError::Api {
                op: "inspect image",
                source,
            }),
        }
    }

    async fn list_images(&self, labels: &[(&str, &str)]) -> Result<Vec<ImageInfo>, RuntimeError> {
        let options = ListImagesOptionsBuilder::new()
            .filters(&filters(labels))
            .build();
        // Podman reads each image after listing it, and fails the whole
        // answer when one was removed in between ("image not known");
        // asking again sees the store without it.
        let mut attempt = 0;
        let images = loop {
            match self.docker.list_images(Some(options.clone())).await {
                Err(e) if e.to_string().contains("not known") && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other.map_err(api("list images"))?,
            }
        };
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: full_image_id(&i.id),
                tags: i
                    .repo_tags
                    .iter()
                    .filter(|t| t.as_str() != "<none>:<none>")
                    .map(|t| short_name(t))
                    .collect(),
                labels: i.labels.into_iter().collect(),
                created: i.created,
            })
            .collect())
    }

    async fn remove_image(&self, tag_or_id: &str) -> Result<(), RuntimeError> {
        let options = RemoveImageOptionsBuilder::new().build();
        match self
            .docker
            .remove_image(tag_or_id, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(source) => Err(RuntimeError::Api {
                op: "remove image",
                source,
            }),
        }
    }
}
