//! The engine: the deploy queue and what a deployment does, rollbacks,
//! pruning and reconciling the container engine with the database.
//!
//! A deployment goes queued → cloning → building → starting → running (or
//! failed, with its reason). Starting means: new containers on the private
//! network, each health-checked over that network (the image needs no curl),
//! then one swap of the app's route in the router, a drain of the old
//! backend's requests, and the old containers stopped. Whatever fails before
//! the swap leaves the running version untouched.
//!
//! The engine knows neither HTTP handlers nor the CLI; the API calls it.

pub mod logs;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge::{UpstreamGroup, UpstreamSettings};
use secrets::SecretBox;
use tokio::sync::Notify;

use crate::domain::{DeploymentStatus, GitUrl, RepoConfig};
use crate::router::{Backend, Router};
use crate::runtime::{
    BuildSpec, ContainerInfo, ContainerRuntime, RestartPolicy, RunSpec, MANAGED_LABEL,
};
use crate::source::{self, SourceSpec};
use crate::store::{App, Deployment, Store, StoreError};
use logs::{LogEvent, LogHub};

pub const APP_LABEL: &str = "rivetr.app";
pub const DEPLOYMENT_LABEL: &str = "rivetr.deployment";
/// Which Rivetr installation owns a container or image: the orphan sweep
/// and pruning never touch another's.
pub const INSTANCE_LABEL: &str = "rivetr.instance";

/// Settings of the engine, from the server's config.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Where repository caches and build directories live.
    pub data_dir: PathBuf,
    /// Apps answer on `<app>.<base_domain>`.
    pub base_domain: String,
    /// The private network containers join.
    pub network: String,
    /// This installation's id (see [`INSTANCE_LABEL`]).
    pub instance: String,
    /// Builds running at once across all apps.
    pub max_concurrent: usize,
    /// Good images kept per app for rollbacks.
    pub keep_images: usize,
    /// Longest wait for an old backend's requests to finish.
    pub drain_timeout: Duration,
    /// Time a stopping container gets before it is killed.
    pub stop_grace: Duration,
}

/// Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a deployment failed, for its `reason`.
#[derive(Debug)]
struct Failed(String);

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed(e.to_string())
    }
}

/// The deploy engine; shared by the API and the worker.
pub struct Engine {
    pub store: Store,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub router: Arc<Router>,
    pub secrets: Arc<SecretBox>,
    pub settings: EngineSettings,
    pub logs: LogHub,
    wake: Notify,
    /// Apps with a deployment being worked on by this process.
    busy: Mutex<HashSet<i64>>,
    /// Timestamps of the last switch, for the benchmark and status.
    pub last_switch: Mutex<Option<SwitchTiming>>,
}

/// How long the last switch took, from "image ready" to "route swapped".
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SwitchTiming {
    pub deployment: i64,
    pub image_to_traffic_ms: f64,
}

impl Engine {
    pub fn new(
        store: Store,
        runtime: Arc<dyn ContainerRuntime>,
        router: Arc<Router>,
        secrets: Arc<SecretBox>,
        settings: EngineSettings,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            runtime,
            router,
            secrets,
            settings,
            logs: LogHub::default(),
            wake: Notify::new(),
            busy: Mutex::new(HashSet::new()),
            last_switch: Mutex::new(None),
        })
    }

    /// Host names an app answers on.
    pub fn hosts_of(&self, app: &App) -> Vec<String> {
        let mut hosts = vec![format!("{}.{}", app.name, self.settings.base_domain)];
        hosts.extend(app.domains.iter().cloned());
        hosts
    }

    fn cache_dir(&self, app: &str) -> PathBuf {
        self.settings
            .data_dir
            .join("cache")
            .join(format!("{app}.git"))
    }

    /// Wakes the worker: something was queued.
    pub fn kick(&self) {
        self.wake.notify_one();
    }

    /// Queues a build of the app's source.
    pub async fn queue_build(&self, app: &App) -> Result<i64, StoreError> {
        let id = self.store.enqueue(app.id, "build", None, now()).await?;
        self.kick();
        Ok(id)
    }

    /// Queues a rollback to `target` (a deployment of the same app whose
    /// image is kept).
    pub async fn queue_rollback(&self, app: &App, target: i64) -> Result<i64, StoreError> {
        let id = self
            .store
            .enqueue(app.id, "rollback", Some(target), now())
            .await?;
        self.kick();
        Ok(id)
    }

    /// Runs queued deployments until `shutdown`, at most
    /// `max_concurrent` at once and one per app.
    pub async fn run_queue(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < self.settings.max_concurrent {
                let busy: Vec<i64> = self.lock_busy().iter().copied().collect();
                match self.store.claim_next(&busy, now()).await {
                    Ok(Some(dep)) => {
                        self.lock_busy().insert(dep.app_id);
                        let engine = self.clone();
                        running.spawn(async move {
                            let app_id = dep.app_id;
                            engine.process(dep).await;
                            engine.lock_busy().remove(&app_id);
                            engine.kick();
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the deploy queue");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        // Deployments cut off here are taken up again at the next start.
        running.abort_all();
    }

    fn lock_busy(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works one claimed deployment to its end.
    async fn process(self: &Arc<Self>, dep: Deployment) {
        let sender = self.logs.open(dep.id);
        let mut log = DeployLog {
            engine: self.clone(),
            id: dep.id,
            seq: 0,
            sender,
        };
        // A deployment taken up again after a restart starts its log over.
        if let Err(e) = self.store.clear_log(dep.id).await {
            tracing::warn!(error = %e, "clearing an old log");
        }
        let result = self.deploy(&dep, &mut log).await;
        let (status, reason) = match result {
            Ok(()) => (DeploymentStatus::Running, None),
            Err(Failed(reason)) => {
                log.line(format!("deployment failed: {reason}")).await;
                if let Err(e) = self
                    .store
                    .set_status(dep.id, DeploymentStatus::Failed, Some(&reason), now())
                    .await
                {
                    tracing::error!(error = %e, "recording a failed deployment");
                }
                (DeploymentStatus::Failed, Some(reason))
            }
        };
        tracing::info!(app = %dep.app, deployment = dep.id, status = status.as_str(), "deployment ended");
        metrics::counter!("rivetr_deployments_total", "status" => status.as_str()).increment(1);
        self.logs.close(
            dep.id,
            LogEvent::End {
                status: status.as_str().into(),
                reason,
            },
        );
    }

    async fn deploy(self: &Arc<Self>, dep: &Deployment, log: &mut DeployLog) -> Result<(), Failed> {
        let app = self
            .store
            .app_by_id(dep.app_id)
            .await?
            .ok_or_else(|| Failed("the app was deleted".into()))?;
        let (image, config) = if dep.kind == "rollback" {
            self.rollback_image(dep, log).await?
        } else {
            self.build(&app, dep, log).await?
        };
        self.store
            .set_status(dep.id, DeploymentStatus::Starting, None, now())
            .await?;
        let ready = Instant::now();
        log.line(format!(
            "starting {} replica(s) of {image}",
            config.replicas
        ))
        .await;
        let started = self
            .start_replicas(&app, dep.id, &image, &config, log)
            .await?;
        self.switch(&app, dep.id, &config, started, log, ready)
            .await?;
        self.prune_images(&app).await;
        Ok(())
    }

    async fn rollback_image(
        &self,
        dep: &Deployment,
        log: &mut DeployLog,
    ) -> Result<(String, RepoConfig), Failed> {
        let target_id = dep
            .rollback_of
            .ok_or_else(|| Failed("a rollback without a target".into()))?;
        let target = self
            .store
            .deployment(target_id)
            .await?
            .filter(|t| t.app_id == dep.app_id)
            .ok_or_else(|| Failed(format!("deployment {target_id} is not one of this app's")))?;
        let (Some(image), Some(config)) = (target.image.clone(), target.config.clone()) else {
            return Err(Failed(format!(
                "deployment {target_id} has no image to roll back to"
            )));
        };
        if !self.runtime.image_exists(&image).await? {
            return Err(Failed(format!(
                "the image of deployment {target_id} ({image}) was pruned; deploy from source instead"
            )));
        }
        let config: RepoConfig = serde_json::from_str(&config)?;
        log.line(format!(
            "rolling back to deployment {target_id} ({image}), no build"
        ))
        .await;
        self.store
            .set_build_result(
                dep.id,
                target.commit_sha.as_deref(),
                Some(&image),
                Some(&config_json(&config)),
            )
            .await?;
        Ok((image, config))
    }

    async fn build(
        self: &Arc<Self>,
        app: &App,
        dep: &Deployment,
        log: &mut DeployLog,
    ) -> Result<(String, RepoConfig), Failed> {
        let url = GitUrl::parse(&app.git_url)?;
        let ssh_key = match &app.ssh_key {
            Some(sealed) => Some(self.secrets.open_string(&ssh_context(app.id), sealed)?),
            None => None,
        };
        let cache = self.cache_dir(&app.name);
        std::fs::create_dir_all(cache.parent().expect("cache has a parent"))?;
        let branch = app.branch.clone();
        let pin = app.commit_pin.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let fetch = {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || {
                let spec = SourceSpec {
                    url: &url,
                    branch: &branch,
                    commit: pin.as_deref(),
                    ssh_key: ssh_key.as_deref(),
                };
                source::fetch(&cache, &spec, &mut |line| {
                    let _ = tx.send(line);
                })
            })
        };
        while let Some(line) = rx.recv().await {
            log.line(line).await;
        }
        let commit = fetch.await.map_err(|e| Failed(e.to_string()))??;
        let config = match source::read_file(&cache, &commit, "rivetr.toml")? {
            None => {
                log.line("no rivetr.toml; using the defaults").await;
                RepoConfig::default()
            }
            Some(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| Failed("rivetr.toml: not UTF-8 text".into()))?;
                RepoConfig::parse(&text)?
            }
        };
        if source::read_file(&cache, &commit, &config.dockerfile)?.is_none() {
            return Err(Failed(format!(
                "no Dockerfile at {:?} in commit {}",
                config.dockerfile,
                &commit[..12]
            )));
        }
        self.store
            .set_build_result(dep.id, Some(&commit), None, Some(&config_json(&config)))
            .await?;
        self.store
            .set_status(dep.id, DeploymentStatus::Building, None, now())
            .await?;
        let builds = self.settings.data_dir.join("builds");
        std::fs::create_dir_all(&builds)?;
        let context = tempfile::Builder::new()
            .prefix(&format!("{}-{}-", app.name, dep.id))
            .tempdir_in(&builds)?;
        {
            let cache = cache.clone();
            let commit = commit.clone();
            let dir = context.path().to_owned();
            tokio::task::spawn_blocking(move || source::export(&cache, &commit, &dir))
                .await
                .map_err(|e| Failed(e.to_string()))??;
        }
        let tag = image_tag(&app.name, dep.id);
        let mut labels = managed_labels(&self.settings.instance, &app.name);
        labels.insert(DEPLOYMENT_LABEL.into(), dep.id.to_string());
        let spec = BuildSpec {
            context_dir: context.path().to_owned(),
            dockerfile: config.dockerfile.clone(),
            tag: tag.clone(),
            build_args: config.build_args.clone(),
            labels,
        };
        log.line(format!("building {tag} with {}", self.runtime.kind()))
            .await;
        let mut attempt = 0;
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let runtime = self.runtime.clone();
            let spec = spec.clone();
            let build = tokio::spawn(async move { runtime.build(&spec, tx).await });
            while let Some(line) = rx.recv().await {
                log.line(line.trim_end().to_owned()).await;
            }
            match build.await.map_err(|e| Failed(e.to_string()))? {
                Ok(_) => break,
                // Podman's layer cache lookup fails when another build's
                // image is removed under it ("layer not known"); the store
                // is consistent again right after.
                Err(crate::runtime::RuntimeError::Build { message })
                    if message.contains("not known") && attempt < 2 =>
                {
                    attempt += 1;
                    log.line(format!("the engine's image store changed during the build ({message}); building again"))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        drop(context);
        self.store
            .set_build_result(dep.id, None, Some(&tag), None)
            .await?;
        log.line(format!("built {tag}")).await;
        Ok((tag, config))
    }

    /// The env a deployment's containers get: the repository's defaults,
    /// then the app's own (secrets opened here, in memory only).
    async fn env_for(
        &self,
        app: &App,
        config: &RepoConfig,
    ) -> Result<Vec<(String, String)>, Failed> {
        let mut env: BTreeMap<String, String> = config.env.clone();
        for var in self.store.env(app.id).await? {
            let value = if var.secret {
                self.secrets
                    .open_string(&env_context(app.id, &var.key), &var.value)?
            } else {
                var.value
            };
            env.insert(var.key, value);
        }
        env.insert("PORT".into(), config.port.to_string());
        Ok(env.into_iter().collect())
    }

    /// Starts the replicas and waits until each passes its health check;
    /// on any failure removes what it started.
    async fn start_replicas(
        &self,
        app: &App,
        deployment: i64,
        image: &str,
        config: &RepoConfig,
        log: &mut DeployLog,
    ) -> Result<Vec<ContainerInfo>, Failed> {
        self.runtime.ensure_network(&self.settings.network).await?;
        let env = self.env_for(app, config).await?;
        let mut started = Vec::new();
        let result = async {
            for replica in 0..config.replicas {
                let info = self
                    .run_replica(app, deployment, replica, image, config, env.clone())
                    .await?;
                started.push(info.clone());
                let ip = info.ip.ok_or_else(|| {
                    Failed(format!(
                        "container {} has no address on {}",
                        info.name, self.settings.network
                    ))
                })?;
                log.line(format!(
                    "replica {replica}: {} at {ip}; health check GET {} on port {}",
                    info.name, config.health.path, config.port
                ))
                .await;
                health_check(ip, config).await.map_err(|reason| {
                    Failed(format!(
                        "replica {replica} failed its health check (GET {} on port {}): {reason}",
                        config.health.path, config.port
                    ))
                })?;
                log.line(format!("replica {replica}: healthy")).await;
            }
            Ok::<(), Failed>(())
        }
        .await;
        if let Err(e) = result {
            for info in &started {
                if let Err(err) = self
                    .runtime
                    .stop_and_remove(&info.id, self.settings.stop_grace)
                    .await
                {
                    tracing::warn!(container = %info.name, error = %err, "removing a failed replica");
                }
            }
            return Err(e);
        }
        Ok(started)
    }

    async fn run_replica(
        &self,
        app: &App,
        deployment: i64,
        replica: u32,
        image: &str,
        config: &RepoConfig,
        env: Vec<(String, String)>,
    ) -> Result<ContainerInfo, Failed> {
        let mut labels = managed_labels(&self.settings.instance, &app.name);
        labels.insert(DEPLOYMENT_LABEL.into(), deployment.to_string());
        let name = container_name(&app.name, deployment, replica);
        // A leftover of an interrupted attempt would block the name.
        self.runtime.stop_and_remove(&name, Duration::ZERO).await?;
        let spec = RunSpec {
            name,
            image: image.to_owned(),
            env,
            labels,
            network: self.settings.network.clone(),
            memory_bytes: config
                .resources
                .memory_mb
                .map(|mb| i64::from(mb) * 1024 * 1024),
            nano_cpus: config.resources.cpus.map(|c| (c * 1e9) as i64),
            restart: RestartPolicy::UnlessStopped,
        };
        Ok(self.runtime.run(&spec).await?)
    }

    /// Swaps the app's route to the new replicas, drains the old backend
    /// and stops its containers.
    async fn switch(
        &self,
        app: &App,
        deployment: i64,
        config: &RepoConfig,
        started: Vec<ContainerInfo>,
        log: &mut DeployLog,
        ready: Instant,
    ) -> Result<(), Failed> {
        let backend = backend_for(&app.name, deployment, config.port, &started)?;
        let old = self.router.set(&app.name, self.hosts_of(app), backend);
        let took = ready.elapsed();
        *self.last_switch.lock().unwrap_or_else(|e| e.into_inner()) = Some(SwitchTiming {
            deployment,
            image_to_traffic_ms: took.as_secs_f64() * 1000.0,
        });
        self.store.promote(app.id, deployment, now()).await?;
        log.line(format!(
            "traffic switched to deployment {deployment} ({} ms after the image was ready)",
            took.as_millis()
        ))
        .await;
        if let Some(old) = old {
            self.drain(old).await;
        }
        // Everything of this app that is not the new deployment goes.
        let keep = deployment.to_string();
        for c in self
            .runtime
            .list(&[
                (INSTANCE_LABEL, &self.settings.instance),
                (APP_LABEL, &app.name),
            ])
            .await?
        {
            if c.labels.get(DEPLOYMENT_LABEL) != Some(&keep) {
                self.runtime
                    .stop_and_remove(&c.id, self.settings.stop_grace)
                    .await?;
            }
        }
        Ok(())
    }

    /// Waits until no request holds `old` any more, or the drain timeout.
    async fn drain(&self, old: Arc<Backend>) {
        let deadline = Instant::now() + self.settings.drain_timeout;
        // Our own handle is the only one left once every exchange ended.
        while old.holders() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if old.holders() > 1 {
            tracing::warn!(app = %old.app, deployment = old.deployment, "drain timed out; stopping the old version anyway");
        }
    }

    /// Removes Rivetr's images of this app beyond the newest `keep_images`
    /// good ones (never one a live deployment uses).
    async fn prune_images(&self, app: &App) {
        let result: Result<(), Failed> = async {
            let deployments = self.store.deployments(app.id, 1000).await?;
            let mut kept = 0;
            let mut keep: HashSet<String> = HashSet::new();
            for d in &deployments {
                if let Some(image) = &d.image {
                    if matches!(
                        d.status,
                        DeploymentStatus::Running | DeploymentStatus::Superseded
                    ) && !keep.contains(image)
                        && kept < self.settings.keep_images
                    {
                        keep.insert(image.clone());
                        kept += 1;
                    }
                    if !d.status.is_final() {
                        keep.insert(image.clone());
                    }
                }
            }
            for image in self.images_of(&app.name).await? {
                // Tags come back as Docker shows them (`rivetr/app:dN`).
                // Untagged images are a build's intermediate layers: they
                // go with the tagged image they lead to.
                if image.tags.is_empty() || image.tags.iter().any(|t| keep.contains(t)) {
                    continue;
                }
                for tag in &image.tags {
                    tracing::info!(app = %app.name, image = %tag, "pruning an old image");
                    if let Err(e) = self.runtime.remove_image(tag).await {
                        tracing::warn!(app = %app.name, image = %tag, error = %e, "pruning");
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(Failed(e)) = result {
            tracing::warn!(app = %app.name, error = %e, "pruning images");
        }
    }

    /// This installation's images of an app. Podman's image list answers
    /// nothing to two label filters at once (seen with 4.3), so the app's
    /// label is checked here.
    async fn images_of(
        &self,
        app: &str,
    ) -> Result<Vec<crate::runtime::ImageInfo>, crate::runtime::RuntimeError> {
        let mut images = self
            .runtime
            .list_images(&[(INSTANCE_LABEL, &self.settings.instance)])
            .await?;
        images.retain(|i| i.labels.get(APP_LABEL).map(String::as_str) == Some(app));
        Ok(images)
    }

    /// Removes an app: route, containers, images, cache, rows.
    pub async fn delete_app(&self, app: &App) -> Result<(), String> {
        if let Some(old) = self.router.remove(&app.name) {
            self.drain(old).await;
        }
        let labels = [
            (INSTANCE_LABEL, self.settings.instance.as_str()),
            (APP_LABEL, app.name.as_str()),
        ];
        for c in self
            .runtime
            .list(&labels)
            .await
            .map_err(|e| e.to_string())?
        {
            self.runtime
                .stop_and_remove(&c.id, self.settings.stop_grace)
                .await
                .map_err(|e| e.to_string())?;
        }
        for image in self.images_of(&app.name).await.map_err(|e| e.to_string())? {
            for tag in &image.tags {
                let _ = self.runtime.remove_image(tag).await;
            }
        }
        let cache = self.cache_dir(&app.name);
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_file(cache.with_extension("hostkey"));
        self.store
            .delete_app(app.id)
            .await
            .map_err(|e| e.to_string())
    }

    /// Brings the container engine in line with the database: interrupted
    /// deployments back to the queue, each app's running deployment up and
    /// routed (missing replicas recreated), containers Rivetr owns but no
    /// running deployment claims removed.
    pub async fn reconcile(&self) -> Result<(), String> {
        let requeued = self
            .store
            .requeue_interrupted()
            .await
            .map_err(|e| e.to_string())?;
        if requeued > 0 {
            tracing::info!(
                requeued,
                "deployments interrupted by a stop go back to the queue"
            );
        }
        self.runtime
            .ensure_network(&self.settings.network)
            .await
            .map_err(|e| e.to_string())?;
        let existing = self
            .runtime
            .list(&[
                (MANAGED_LABEL, "true"),
                (INSTANCE_LABEL, &self.settings.instance),
            ])
            .await
            .map_err(|e| e.to_string())?;
        let mut wanted: HashSet<String> = HashSet::new();
        for app in self.store.apps().await.map_err(|e| e.to_string())? {
            let Some(dep) = self
                .store
                .running(app.id)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let (Some(image), Some(config)) = (&dep.image, &dep.config) else {
                continue;
            };
            let Ok(config) = serde_json::from_str::<RepoConfig>(config) else {
                tracing::error!(app = %app.name, "stored config unreadable; not starting");
                continue;
            };
            let mut infos = Vec::new();
            for replica in 0..config.replicas {
                let name = container_name(&app.name, dep.id, replica);
                wanted.insert(name.clone());
                let current = existing
                    .iter()
                    .find(|c| c.name.trim_start_matches('/') == name);
                let info = match current {
                    Some(c) if c.running && c.ip.is_some() => c.clone(),
                    _ => {
                        tracing::info!(app = %app.name, container = %name, "recreating a missing replica");
                        let env = match self.env_for(&app, &config).await {
                            Ok(env) => env,
                            Err(Failed(e)) => {
                                tracing::error!(app = %app.name, error = %e, "env unreadable");
                                continue;
                            }
                        };
                        match self
                            .run_replica(&app, dep.id, replica, image, &config, env)
                            .await
                        {
                            Ok(info) => info,
                            Err(Failed(e)) => {
                                tracing::error!(app = %app.name, error = %e, "recreating a replica");
                                continue;
                            }
                        }
                    }
                };
                infos.push(info);
            }
            if infos.is_empty() {
                continue;
            }
            match backend_for(&app.name, dep.id, config.port, &infos) {
                Ok(backend) => {
                    self.router.set(&app.name, self.hosts_of(&app), backend);
                }
                Err(Failed(e)) => tracing::error!(app = %app.name, error = %e, "routing"),
            }
        }
        for c in existing {
            let name = c.name.trim_start_matches('/').to_owned();
            if !wanted.contains(&name) {
                tracing::info!(container = %name, "removing an orphan container");
                let _ = self
                    .runtime
                    .stop_and_remove(&c.id, self.settings.stop_grace)
                    .await;
            }
        }
        Ok(())
    }
}

/// The deployment's log: stored line by line and broadcast.
struct DeployLog {
    engine: Arc<Engine>,
    id: i64,
    seq: i64,
    sender: tokio::sync::broadcast::Sender<LogEvent>,
}

impl DeployLog {
    async fn line(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        let seq = self.seq;
        self.seq += 1;
        if let Err(e) = self.engine.store.append_log(self.id, seq, &text).await {
            tracing::warn!(error = %e, "storing a log line");
        }
        let _ = self.sender.send(LogEvent::Line { seq, text });
    }
}

fn config_json(config: &RepoConfig) -> String {
    serde_json::json!({
        "port": config.port,
        "dockerfile": config.dockerfile,
        "build_args": config.build_args,
        "env": config.env,
        "health": {
            "path": config.health.path,
            "timeout_secs": config.health.timeout_secs,
            "interval_ms": config.health.interval_ms,
        },
        "resources": {
            "memory_mb": config.resources.memory_mb,
            "cpus": config.resources.cpus,
        },
        "replicas": config.replicas,
    })
    .to_string()
}

pub fn image_tag(app: &str, deployment: i64) -> String {
    format!("rivetr/{app}:d{deployment}")
}

pub fn container_name(app: &str, deployment: i64, replica: u32) -> String {
    format!("rivetr-{app}-d{deployment}-r{replica}")
}

fn managed_labels(instance: &str, app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_LABEL.to_owned(), "true".to_owned()),
        (INSTANCE_LABEL.to_owned(), instance.to_owned()),
        (APP_LABEL.to_owned(), app.to_owned()),
    ])
}

/// Associated data binding a sealed env value to its app and key.
pub fn env_context(app_id: i64, key: &str) -> String {
    format!("rivetr.env:{app_id}:{key}")
}

/// Associated data binding a sealed SSH key to its app.
pub fn ssh_context(app_id: i64) -> String {
    format!("rivetr.ssh:{app_id}")
}

fn backend_for(
    app: &str,
    deployment: i64,
    port: u16,
    replicas: &[ContainerInfo],
) -> Result<Arc<Backend>, Failed> {
    let urls: Vec<String> = replicas
        .iter()
        .filter_map(|c| c.ip)
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => format!("http://{v4}:{port}"),
            std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
        })
        .collect();
    let settings = UpstreamSettings {
        connect_timeout: Duration::from_secs(2),
        ..UpstreamSettings::default()
    };
    let group = UpstreamGroup::new(app, &urls, settings)?;
    Ok(Arc::new(Backend::new(app, deployment, Arc::new(group))))
}

/// GETs the health path over the network until it answers 2xx or 3xx, or
/// the timeout; the error says what was seen last.
async fn health_check(ip: std::net::IpAddr, config: &RepoConfig) -> Result<(), String> {
    let deadline = Instant::now() + config.health_timeout();
    loop {
        let last = match probe(ip, config.port, &config.health.path).await {
            Ok(status) if (200..400).contains(&status) => return Ok(()),
            Ok(status) => format!("answered {status}"),
            Err(e) => e,
        };
        if Instant::now() + config.health_interval() > deadline {
            return Err(format!("{last} after {} s", config.health.timeout_secs));
        }
        tokio::time::sleep(config.health_interval()).await;
    }
}

/// One HTTP/1.1 GET on a fresh connection; the status code.
async fn probe(ip: std::net::IpAddr, port: u16, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::net::SocketAddr::new(ip, port);
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("port {port} not open ({e})"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: rivetr-health\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "not an HTTP answer".to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
}
