//! [`ContainerRuntime`] through the `podman` command line, for machines
//! where Podman is installed but its API service is not running. Each call
//! runs `podman` once (or twice) through `tokio::process` and reads its
//! JSON output (`--format json`) or exit status; nothing goes through a
//! shell.
//!
//! Secrets stay out of argv: a container's environment is written to an
//! env file (created 0600 by `tempfile`, removed as soon as `podman create`
//! returned) and passed as `--env-file`. That format has one variable per
//! line, so a value holding a newline is refused here.
//!
//! Builds hand the context directory to `podman build` with an
//! `--ignorefile` holding the context's `.dockerignore` plus `.git`, so the
//! same files reach the build as through the API path.
//!
//! This does not parse Podman's human-readable output, except the last
//! `Error:` line of a failed command, which becomes the error's message. It
//! does not pull images or publish ports.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;

use super::context::check_dockerfile_path;
use super::{
    full_image_id, parse_ip, pick_ip, short_name, BuildSpec, ContainerInfo, ContainerRuntime,
    ImageInfo, LogLine, LogStream, RestartPolicy, RunSpec, RuntimeError, MANAGED_LABEL,
};

/// Lines of a failed build's stderr kept to find its reason in.
const STDERR_TAIL: usize = 40;

/// The `podman` binary, run once per operation.
pub struct PodmanCli {
    binary: PathBuf,
}

impl PodmanCli {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        PodmanCli {
            binary: binary.into(),
        }
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `podman args...` to the end, whatever its exit status.
    async fn output<I, S>(&self, op: &'static str, args: I) -> Result<Output, RuntimeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args)
            .output()
            .await
            .map_err(|e| RuntimeError::io(format!("running {} ({op})", self.binary.display()), e))
    }

    /// Runs `podman args...` and returns its stdout; a failure is an error
    /// carrying Podman's message.
    async fn run_ok<I, S>(&self, op: &'static str, args: I) -> Result<Vec<u8>, RuntimeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.output(op, args).await?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuntimeError::Cli {
                op,
                message: error_message(&String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    async fn inspect_one(
        &self,
        id_or_name: &str,
    ) -> Result<Option<InspectedContainer>, RuntimeError> {
        let out = self
            .output(
                "inspect container",
                ["container", "inspect", "--format", "json", "--", id_or_name],
            )
            .await?;
        if !out.status.success() {
            let message = error_message(&String::from_utf8_lossy(&out.stderr));
            if message.contains("no such container") {
                return Ok(None);
            }
            return Err(RuntimeError::Cli {
                op: "inspect container",
                message,
            });
        }
        let mut list: Vec<InspectedContainer> = decode("inspect container", &out.stdout)?;
        Ok(list.pop())
    }

    async fn image_id(&self, tag: &str) -> Result<String, RuntimeError> {
        let out = self
            .run_ok(
                "inspect image",
                ["image", "inspect", "--format", "{{.Id}}", "--", tag],
            )
            .await?;
        Ok(full_image_id(String::from_utf8_lossy(&out).trim()))
    }
}

/// The reason a `podman` command gave: its last `Error:` line, else its
/// last line.
fn error_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("Error: "))
        .or_else(|| lines.last().copied())
        .unwrap_or("failed without a message")
        .to_owned()
}

fn decode<T: serde::de::DeserializeOwned>(
    op: &'static str,
    bytes: &[u8],
) -> Result<T, RuntimeError> {
    serde_json::from_slice(bytes).map_err(|e| RuntimeError::Decode {
        op,
        message: e.to_string(),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectedContainer {
    id: String,
    name: String,
    image_name: String,
    config: InspectedConfig,
    state: InspectedState,
    network_settings: InspectedNetworkSettings,
    host_config: InspectedHostConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectedConfig {
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectedState {
    running: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectedNetworkSettings {
    networks: Option<BTreeMap<String, InspectedEndpoint>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InspectedEndpoint {
    #[serde(rename = "IPAddress")]
    ip_address: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct InspectedHostConfig {
    memory: i64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ListedImage {
    id: String,
    names: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    created: i64,
}

fn container_info(c: InspectedContainer, preferred_network: Option<&str>) -> ContainerInfo {
    let networks: BTreeMap<_, _> = c
        .network_settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, endpoint)| (name, parse_ip(Some(&endpoint.ip_address))))
        .collect();
    ContainerInfo {
        id: c.id,
        name: c.name.trim_start_matches('/').to_owned(),
        image: short_name(&c.image_name),
        labels: c.config.labels.unwrap_or_default(),
        running: c.state.running,
        ip: pick_ip(&networks, preferred_network),
        networks,
        memory_bytes: Some(c.host_config.memory).filter(|m| *m > 0),
    }
}

fn label_args(labels: &[(&str, &str)]) -> Vec<String> {
    labels
        .iter()
        .flat_map(|(k, v)| ["--filter".to_owned(), format!("label={k}={v}")])
        .collect()
}

/// An env file for `--env-file`, 0600, removed when dropped.
fn env_file(env: &[(String, String)]) -> Result<tempfile::NamedTempFile, RuntimeError> {
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\n') {
            return Err(RuntimeError::Invalid(format!(
                "environment variable name {name:?} is not valid"
            )));
        }
        if value.contains('\n') {
            // The value itself is never put in an error or a log.
            return Err(RuntimeError::Invalid(format!(
                "the value of environment variable {name} holds a newline, which the podman CLI cannot pass"
            )));
        }
    }
    let mut file = tempfile::Builder::new()
        .prefix("rivetr-env-")
        .tempfile()
        .map_err(|e| RuntimeError::io("creating an env file", e))?;
    for (name, value) in env {
        writeln!(file, "{name}={value}").map_err(|e| RuntimeError::io("writing an env file", e))?;
    }
    file.flush()
        .map_err(|e| RuntimeError::io("writing an env file", e))?;
    Ok(file)
}

/// The context's `.dockerignore` with `.git` added, for `--ignorefile`, so
/// the CLI sends what the API path sends.
fn ignore_file(context_dir: &std::path::Path) -> Result<tempfile::NamedTempFile, RuntimeError> {
    let mut text = match std::fs::read_to_string(context_dir.join(".dockerignore")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(RuntimeError::io("reading .dockerignore", e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    // Last, so no exception in the file brings it back.
    text.push_str(".git\n");
    let mut file = tempfile::Builder::new()
        .prefix("rivetr-ignore-")
        .tempfile()
        .map_err(|e| RuntimeError::io("creating an ignore file", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| RuntimeError::io("writing an ignore file", e))?;
    Ok(file)
}

/// Lines of a child's pipe as a stream.
fn pipe_lines<R>(
    pipe: Option<R>,
    stream: LogStream,
) -> BoxStream<'static, Result<LogLine, RuntimeError>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Some(pipe) = pipe else {
        return futures_util::stream::empty().boxed();
    };
    futures_util::stream::unfold(
        Some(BufReader::new(pipe).lines()),
        move |lines| async move {
            let mut lines = lines?;
            match lines.next_line().await {
                Ok(Some(text)) => Some((Ok(LogLine { stream, text }), Some(lines))),
                Ok(None) => None,
                Err(e) => Some((Err(RuntimeError::io("reading podman logs", e)), None)),
            }
        },
    )
    .boxed()
}

#[async_trait::async_trait]
impl ContainerRuntime for PodmanCli {
    fn kind(&self) -> &'static str {
        "podman-cli"
    }

    async fn ping(&self) -> Result<String, RuntimeError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Version {
            client: Client,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Client {
            version: String,
        }
        let out = self
            .run_ok("version", ["version", "--format", "json"])
            .await?;
        let version: Version = decode("version", &out)?;
        Ok(format!("Podman {}", version.client.version))
    }

    async fn build(
        &self,
        spec: &BuildSpec,
        log: UnboundedSender<String>,
    ) -> Result<String, RuntimeError> {
        let dockerfile = check_dockerfile_path(&spec.dockerfile).map_err(RuntimeError::Invalid)?;
        let mut args: Vec<std::ffi::OsString> = vec!["build".into(), "--file".into()];
        args.push(spec.context_dir.join(&dockerfile).into());
        // As the API path asks (`forcerm`): no build container is left
        // behind, even when a step fails.
        args.extend(["--tag".into(), spec.tag.clone().into(), "--force-rm".into()]);
        for (k, v) in &spec.build_args {
            args.extend(["--build-arg".into(), format!("{k}={v}").into()]);
        }
        for (k, v) in &spec.labels {
            args.extend(["--label".into(), format!("{k}={v}").into()]);
        }
        let ignore = ignore_file(&spec.context_dir)?;
        args.extend(["--ignorefile".into(), ignore.path().into()]);
        args.extend(["--".into(), spec.context_dir.clone().into()]);

        let mut child = self
            .command(&args)
            .spawn()
            .map_err(|e| RuntimeError::io(format!("running {} build", self.binary.display()), e))?;
        let stdout = pipe_lines(child.stdout.take(), LogStream::Stdout);
        let stderr = pipe_lines(child.stderr.take(), LogStream::Stderr);
        let mut lines = futures_util::stream::select(stdout, stderr);
        let mut stderr_tail = VecDeque::with_capacity(STDERR_TAIL);
        while let Some(line) = lines.next().await {
            let line = line?;
            if line.stream == LogStream::Stderr {
                if stderr_tail.len() == STDERR_TAIL {
                    stderr_tail.pop_front();
                }
                stderr_tail.push_back(line.text.clone());
            }
            let _ = log.send(line.text);
        }
        let status = child
            .wait()
            .await
            .map_err(|e| RuntimeError::io("waiting for podman build", e))?;
        if !status.success() {
            let tail: Vec<String> = stderr_tail.into();
            return Err(RuntimeError::Build {
                message: error_message(&tail.join("\n")),
            });
        }
        self.image_id(&spec.tag).await
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        let exists = self
            .output("network exists", ["network", "exists", "--", name])
            .await?;
        if exists.status.success() {
            return Ok(());
        }
        let label = format!("{MANAGED_LABEL}=true");
        let created = self
            .output(
                "create network",
                [
                    "network", "create", "--driver", "bridge", "--label", &label, "--", name,
                ],
            )
            .await?;
        if created.status.success() {
            return Ok(());
        }
        // Made by someone else in between: what was asked for.
        let again = self
            .output("network exists", ["network", "exists", "--", name])
            .await?;
        if again.status.success() {
            return Ok(());
        }
        Err(RuntimeError::Cli {
            op: "create network",
            message: error_message(&String::from_utf8_lossy(&created.stderr)),
        })
    }

    async fn run(&self, spec: &RunSpec) -> Result<ContainerInfo, RuntimeError> {
        let env = env_file(&spec.env)?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "create".into(),
            "--name".into(),
            spec.name.clone().into(),
            "--network".into(),
            spec.network.clone().into(),
            "--env-file".into(),
            env.path().into(),
        ];
        for (k, v) in &spec.labels {
            args.extend(["--label".into(), format!("{k}={v}").into()]);
        }
        if let Some(bytes) = spec.memory_bytes {
            args.extend(["--memory".into(), bytes.to_string().into()]);
        }
        if let Some(nano) = spec.nano_cpus {
            // Podman takes CPUs as a decimal; nano-CPUs are exact in f64 up
            // to far more CPUs than a machine has.
            args.extend(["--cpus".into(), (nano as f64 / 1e9).to_string().into()]);
        }
        let restart = match spec.restart {
            RestartPolicy::No => "no".to_owned(),
            RestartPolicy::UnlessStopped => "unless-stopped".to_owned(),
            // As with the API, no maximum means no limit.
            RestartPolicy::OnFailure { max: 0 } => "on-failure".to_owned(),
            RestartPolicy::OnFailure { max } => format!("on-failure:{max}"),
        };
        args.extend(["--restart".into(), restart.into()]);
        args.extend(["--".into(), spec.image.clone().into()]);
        let created = self.run_ok("create container", &args).await;
        drop(env);
        let id = String::from_utf8_lossy(&created?).trim().to_owned();
        if let Err(e) = self.run_ok("start container", ["start", "--", &id]).await {
            let _ = self
                .output("remove container", ["rm", "--force", "--ignore", "--", &id])
                .await;
            return Err(e);
        }
        let inspected = self
            .inspect_one(&id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "container",
                name: spec.name.clone(),
            })?;
        Ok(container_info(inspected, Some(&spec.network)))
    }

    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self
            .inspect_one(id_or_name)
            .await?
            .map(|c| container_info(c, None)))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut args = vec![
            "ps".to_owned(),
            "--all".to_owned(),
            "--no-trunc".to_owned(),
            "--format".to_owned(),
            "{{.ID}}".to_owned(),
        ];
        args.extend(label_args(labels));
        let out = self.run_ok("list containers", &args).await?;
        let mut result = Vec::new();
        for id in String::from_utf8_lossy(&out)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if let Some(c) = self.inspect_one(id).await? {
                result.push(container_info(c, None));
            }
        }
        Ok(result)
    }

    async fn stop_and_remove(&self, id_or_name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let secs = grace.as_secs().to_string();
        self.run_ok(
            "stop container",
            ["stop", "--ignore", "--time", &secs, "--", id_or_name],
        )
        .await?;
        self.run_ok(
            "remove container",
            ["rm", "--ignore", "--force", "--", id_or_name],
        )
        .await?;
        Ok(())
    }

    async fn logs(
        &self,
        id_or_name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<LogLine, RuntimeError>>, RuntimeError> {
        if self.inspect_one(id_or_name).await?.is_none() {
            return Err(RuntimeError::NotFound {
                kind: "container",
                name: id_or_name.to_owned(),
            });
        }
        let mut args = vec!["logs".to_owned()];
        if follow {
            args.push("--follow".to_owned());
        }
        if let Some(n) = tail {
            args.extend(["--tail".to_owned(), n.to_string()]);
        }
        args.extend(["--".to_owned(), id_or_name.to_owned()]);
        let mut child = self
            .command(&args)
            .spawn()
            .map_err(|e| RuntimeError::io(format!("running {} logs", self.binary.display()), e))?;
        let stdout = pipe_lines(child.stdout.take(), LogStream::Stdout);
        let stderr = pipe_lines(child.stderr.take(), LogStream::Stderr);
        // The stream owns the child: dropping the stream kills `podman logs`.
        let lines = futures_util::stream::select(stdout, stderr).map(move |line| {
            let _owned = &child;
            line
        });
        Ok(lines.boxed())
    }

    async fn image_exists(&self, tag: &str) -> Result<bool, RuntimeError> {
        let out = self
            .output("image exists", ["image", "exists", "--", tag])
            .await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(RuntimeError::Cli {
                op: "image exists",
                message: error_message(&String::from_utf8_lossy(&out.stderr)),
            }),
        }
    }

    async fn list_images(&self, labels: &[(&str, &str)]) -> Result<Vec<ImageInfo>, RuntimeError> {
        let mut args = vec![
            "images".to_owned(),
            "--format".to_owned(),
            "json".to_owned(),
        ];
        args.extend(label_args(labels));
        // `podman images` reads each image after listing it; one removed in
        // between (another build's cleanup, a prune) fails the whole
        // listing with "image not known". Listing again sees the store
        // without it.
        let mut attempt = 0;
        let out = loop {
            match self.run_ok("list images", &args).await {
                Err(RuntimeError::Cli { message, .. })
                    if message.contains("not known") && attempt < 3 =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        let images: Vec<ListedImage> = decode("list images", &out)?;
        Ok(images
            .into_iter()
            .map(|i| ImageInfo {
                id: full_image_id(&i.id),
                tags: i
                    .names
                    .unwrap_or_default()
                    .iter()
                    .map(|t| short_name(t))
                    .collect(),
                labels: i.labels.unwrap_or_default(),
                created: i.created,
            })
            .collect())
    }

    async fn remove_image(&self, tag_or_id: &str) -> Result<(), RuntimeError> {
        self.run_ok("remove image", ["rmi", "--ignore", "--", tag_or_id])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_message_prefers_the_error_line() {
        let stderr = "STEP 2/2: RUN x\nerror running container: exit status 1\nError: building at STEP \"RUN x\": exit status 1\n";
        assert_eq!(
            error_message(stderr),
            "building at STEP \"RUN x\": exit status 1"
        );
        assert_eq!(error_message("something odd\n"), "something odd");
        assert_eq!(error_message(""), "failed without a message");
    }

    #[test]
    fn env_file_is_private_and_refuses_newlines() {
        use std::os::unix::fs::PermissionsExt;
        let file = env_file(&[("A".into(), "1 2".into()), ("B".into(), "x=y".into())]).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "A=1 2\nB=x=y\n"
        );
        let path = file.path().to_owned();
        drop(file);
        assert!(!path.exists());
        let err = env_file(&[("S".into(), "line1\nsecret".into())]).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
