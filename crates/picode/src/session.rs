//! A session: an [`Agent`] bound to a project, a stored conversation and the
//! slash commands that act on both. Every surface (terminal, headless, HTTP)
//! drives a `Session`; none of them touches the store or the toolbox itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use picode_llm::Usage;
use picode_tools::{
    load_agents_md, Approver, CheckpointId, PermissionMode, SandboxConfig, ToolError, Toolbox,
    ToolboxConfig,
};
use tokio_util::sync::CancellationToken;

use crate::agent::{system_prompt, Agent, AgentEvent, AgentSettings, CompactError, TurnReport};
use crate::commands::{self, Command, CustomCommand};
use crate::config::{Config, Paths};
use crate::providers::{build_chain, ProviderSetupError, Resolved};
use crate::secrets::SecretStore;
use crate::store::{self, NewSession, SessionInfo, Store, StoreError, TurnSave, UsageRecord};
use crate::trust::ProjectTrust;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Provider(#[from] ProviderSetupError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("project: {0}")]
    Tools(#[from] ToolError),
    #[error("no earlier session in this project to continue")]
    NoLastSession,
}

/// Everything long-lived that sessions share: config, paths, database.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    pub paths: Paths,
    pub store: Store,
    /// Whether the project's own commands and `AGENTS.md` are used.
    pub trust: ProjectTrust,
}

impl App {
    /// The session database is opened on first use (see [`Store::deferred`]).
    pub fn new(config: Config, paths: Paths, trust: ProjectTrust) -> App {
        let store = Store::deferred(&paths.database_file());
        App {
            config,
            paths,
            store,
            trust,
        }
    }

    /// The sandbox and environment policy of this user's commands.
    pub fn sandbox(&self) -> SandboxConfig {
        SandboxConfig {
            mode: self.config.sandbox,
            allow_network: self.config.sandbox_network,
            writable: self.config.sandbox_writable.clone(),
            hidden: vec![self.paths.config_dir.clone(), self.paths.data_dir.clone()],
            env_allow: self.config.shell_env_allow.clone(),
            env_deny: self
                .config
                .providers
                .values()
                .filter_map(|p| p.api_key_env.clone())
                .collect(),
        }
    }

    /// The secret store, opened lazily: probing the keyring costs a D-Bus
    /// round trip that most runs (keys in the environment) never need.
    pub fn secrets(&self) -> SecretStore {
        SecretStore::open(self.config.secret_store, &self.paths.config_dir)
    }

    /// Builds the provider chain, preferring `provider` and overriding the model.
    pub fn resolve(
        &self,
        provider: Option<&str>,
        model: Option<&str>,
    ) -> Result<Resolved, ProviderSetupError> {
        let secrets = || self.secrets();
        build_chain(&self.config, provider, model, &secrets)
    }

    /// The project key sessions are filed under.
    pub fn project_key(&self) -> String {
        project_key(&self.paths.project)
    }
}

fn project_key(project: &Path) -> String {
    std::fs::canonicalize(project)
        .unwrap_or_else(|_| project.to_owned())
        .display()
        .to_string()
}

/// Which conversation to start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    New,
    /// The most recent session of this project (`-c`).
    Last,
    /// A session id or unique prefix (`--resume`).
    Id(String),
}

/// How a session is opened.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub mode: PermissionMode,
    pub max_steps: u32,
    pub resume: Resume,
}

/// What a command asks the surface to do.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutput {
    /// Show this text.
    Text(String),
    /// Send this prompt to the model (custom commands).
    Prompt(String),
    /// Leave.
    Exit,
}

/// A snapshot for the status line and `/cost`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub session_id: String,
    pub provider: String,
    pub model: String,
    pub mode: PermissionMode,
    pub context_tokens: u64,
    pub context_window: u32,
    pub session_usage: Usage,
    pub session_cost: f64,
}

pub struct Session {
    app: App,
    id: String,
    agent: Agent,
    provider_name: String,
    model: String,
    custom: BTreeMap<String, CustomCommand>,
    session_usage: Usage,
    session_cost: f64,
    /// The agent's rewrite count and history length at the last save.
    saved: Option<(u64, usize)>,
    /// The session has a row in the database. A new session gets one with
    /// its first turn, so nothing is written (or read) before the first
    /// request, and a session left without a prompt leaves nothing behind.
    stored: bool,
}

impl Session {
    pub async fn open(app: App, options: SessionOptions) -> Result<Session, SessionError> {
        let resolved = app.resolve(options.provider.as_deref(), options.model.as_deref())?;
        let toolbox = Toolbox::new(ToolboxConfig {
            project_root: app.paths.project.clone(),
            mode: options.mode,
            shell_timeout: Duration::from_secs(app.config.shell_timeout_secs),
            output_cap_bytes: ToolboxConfig::DEFAULT_OUTPUT_CAP,
            checkpoint_dir: Some(app.paths.checkpoint_dir()),
            mcp_servers: app.config.mcp_servers.clone(),
            sandbox: app.sandbox(),
            redact_secrets: app.config.redact_secrets,
        })
        .await?;
        let trusted = app.trust.uses_project_files();
        let agents_md = load_agents_md(&app.paths.project, Some(&app.paths.config_dir), trusted);
        let system = system_prompt(&app.paths.project, options.mode, agents_md.as_deref());
        let settings = AgentSettings {
            max_steps: options.max_steps,
            context_window: resolved.context_window,
            compact_threshold: app.config.compact_threshold,
            keep_turns: app.config.compact_keep_turns,
            max_tokens: None,
        };
        let agent = Agent::new(
            Arc::clone(&resolved.provider),
            resolved.pricing,
            Arc::new(toolbox),
            system,
            settings,
        );
        let custom = commands::load_custom(
            trusted.then_some(app.paths.project.as_path()),
            &app.paths.config_dir,
        );
        let stored_id = match &options.resume {
            Resume::New => None,
            Resume::Last => Some(
                app.store
                    .latest_session(&app.project_key())
                    .await?
                    .ok_or(SessionError::NoLastSession)?,
            ),
            Resume::Id(id) => Some(app.store.resolve_session(id).await?),
        };
        let mut session = Session {
            app,
            id: String::new(),
            agent,
            provider_name: resolved.primary,
            model: resolved.model,
            custom,
            session_usage: Usage::default(),
            session_cost: 0.0,
            saved: None,
            stored: false,
        };
        match stored_id {
            Some(id) => session.load(&id).await?,
            None => session.start_new(),
        }
        Ok(session)
    }

    /// Starts an empty conversation under a new id, stored with its first turn.
    fn start_new(&mut self) {
        self.agent.clear();
        self.saved = Some((self.agent.rewrites(), 0));
        self.session_usage = Usage::default();
        self.session_cost = 0.0;
        self.id = store::new_session_id();
        self.stored = false;
    }

    /// Switches to a stored session.
    async fn load(&mut self, id: &str) -> Result<(), SessionError> {
        let messages = self.app.store.load_messages(id).await?;
        let turn = self
            .app
            .store
            .turns(id)
            .await?
            .last()
            .map(|t| t.turn)
            .unwrap_or(0)
            .max(messages.iter().map(|m| m.turn).max().unwrap_or(0));
        self.agent.set_history(messages, turn);
        // What was just loaded is what is stored.
        self.saved = Some((self.agent.rewrites(), self.agent.history().len()));
        let (usage, cost) = self.app.store.usage_totals(id).await?;
        self.session_usage = usage;
        self.session_cost = cost;
        self.id = id.to_owned();
        self.stored = true;
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn toolbox(&self) -> &Arc<Toolbox> {
        self.agent.toolbox()
    }

    pub fn custom_commands(&self) -> &BTreeMap<String, CustomCommand> {
        &self.custom
    }

    pub fn history(&self) -> &[crate::store::StoredMessage] {
        self.agent.history()
    }

    pub fn status(&self) -> Status {
        Status {
            session_id: self.id.clone(),
            provider: self.provider_name.clone(),
            model: self.model.clone(),
            mode: self.agent.toolbox().mode(),
            context_tokens: self.agent.context_tokens(),
            context_window: self.agent.settings().context_window,
            session_usage: self.session_usage,
            session_cost: self.session_cost,
        }
    }

    /// Runs one user turn: checkpoint, agent loop, then persistence.
    pub async fn run_turn(
        &mut self,
        prompt: &str,
        approver: &dyn Approver,
        cancel: &CancellationToken,
        sink: &mut (dyn FnMut(AgentEvent) + Send),
    ) -> Result<TurnReport, SessionError> {
        let turn = self.agent.turn() + 1;
        let label = format!("picode session {} turn {turn}", self.id);
        // The checkpoint (a few git processes) starts once the model has
        // started answering, or when the turn ends without an answer: started
        // with the request, its processes took half the CPU time of a short
        // headless run and competed with sending the request on a busy
        // machine. Tools wait for it, so it still precedes every edit.
        let toolbox = Arc::clone(self.agent.toolbox());
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let checkpointing = tokio::spawn(async move {
            // A dropped sender (the turn is over) starts it too.
            let _ = start_rx.await;
            let result = toolbox.begin_turn(&label).await;
            let _ = done_tx.send(true);
            result
        });
        self.agent.gate_tools(done_rx);
        let mut start = Some(start_tx);
        let downstream = &mut *sink;
        // Owns the sender, so that dropping it after the turn starts a
        // checkpoint that no answer started.
        let mut relay = move |event: AgentEvent| {
            let answering = !matches!(event, AgentEvent::TurnStarted { .. });
            downstream(event);
            if answering {
                if let Some(start) = start.take() {
                    let _ = start.send(());
                }
            }
        };
        let report = self
            .agent
            .run_turn(prompt, approver, cancel, &mut relay)
            .await;
        drop(relay);
        // A missing checkpoint only costs `/undo` for this turn; the user's
        // request still got its answer.
        let checkpoint = match checkpointing.await {
            Ok(Ok(id)) => Some(id.to_string()),
            Ok(Err(err)) => {
                sink(AgentEvent::Warning {
                    message: format!(
                        "no checkpoint for this turn, /undo will not restore files: {err}"
                    ),
                });
                None
            }
            Err(err) => {
                sink(AgentEvent::Warning {
                    message: format!("no checkpoint for this turn: {err}"),
                });
                None
            }
        };
        self.persist(prompt, checkpoint.as_deref(), &report).await?;
        Ok(report)
    }

    /// Stores the conversation: only what was appended since the last save,
    /// or all of it after a rewrite (compaction, `/undo`, `/clear`, resume).
    /// A session not stored yet has nothing to save.
    async fn save_history(&mut self) -> Result<(), StoreError> {
        if !self.stored {
            return Ok(());
        }
        let history = self.agent.history();
        let keep = self.saved_prefix();
        self.app
            .store
            .save_messages(&self.id, history, keep, &self.provider_name, &self.model)
            .await?;
        self.saved = Some((self.agent.rewrites(), history.len()));
        Ok(())
    }

    /// How many messages at the start of the history are stored as they are.
    fn saved_prefix(&self) -> usize {
        match self.saved {
            Some((rewrites, len)) if rewrites == self.agent.rewrites() => len,
            _ => 0,
        }
    }

    /// Stores a finished turn, with the session itself when it is new.
    async fn persist(
        &mut self,
        prompt: &str,
        checkpoint: Option<&str>,
        report: &TurnReport,
    ) -> Result<(), SessionError> {
        let project = (!self.stored).then(|| self.app.project_key());
        let usage = (report.usage != Usage::default()).then(|| UsageRecord {
            provider: self.provider_name.clone(),
            model: self.model.clone(),
            usage: report.usage,
            cost_usd: report.cost_usd,
        });
        let history = self.agent.history();
        self.app
            .store
            .save_turn(&TurnSave {
                session: &self.id,
                create: project.as_deref().map(|project| NewSession { project }),
                turn: report.turn,
                prompt,
                checkpoint,
                messages: history,
                keep: self.saved_prefix(),
                provider: &self.provider_name,
                model: &self.model,
                tool_calls: &report.tool_calls,
                usage: usage.as_ref(),
            })
            .await?;
        self.saved = Some((self.agent.rewrites(), history.len()));
        self.stored = true;
        self.session_usage.add(report.usage);
        self.session_cost += report.cost_usd;
        Ok(())
    }

    /// Parses a line as a slash command; `None` for ordinary prompts.
    pub fn parse_command(&self, line: &str) -> Option<Command> {
        commands::parse(line, &self.custom)
    }

    /// Executes a slash command. Errors worth showing become text; only
    /// database failures are returned as errors.
    pub async fn command(&mut self, command: Command) -> Result<CommandOutput, SessionError> {
        let text = match command {
            Command::Help => commands::help_text(&self.custom),
            Command::Exit => return Ok(CommandOutput::Exit),
            Command::Custom { prompt, .. } => return Ok(CommandOutput::Prompt(prompt)),
            Command::Unknown(name) => format!("unknown command /{name}; /help lists them"),
            Command::Model(None) => {
                format!("model: {} (provider {})", self.model, self.provider_name)
            }
            Command::Model(Some(model)) => {
                let provider = self.provider_name.clone();
                self.switch(Some(&provider), Some(&model))
            }
            Command::Provider(None) => self.provider_list(),
            Command::Provider(Some(name)) => self.switch(Some(&name), None),
            Command::Clear => {
                self.start_new();
                format!("started a new session {}", self.id)
            }
            Command::Redact(on) => {
                let toolbox = self.agent.toolbox();
                if let Some(on) = on {
                    toolbox.set_redacting(on);
                }
                if toolbox.redacting() {
                    "secret-looking tool output is redacted before it is stored or sent".to_owned()
                } else {
                    "redaction is off for this session: tool output is stored and sent as it is"
                        .to_owned()
                }
            }
            Command::Compact => self.compact().await,
            Command::Cost => self.cost_text(),
            Command::Undo => self.undo().await?,
            Command::Diff { all } => self.diff(all).await?,
            Command::Sessions => self.sessions_text().await?,
            Command::Resume(id) => match self.app.store.resolve_session(&id).await {
                Ok(id) => {
                    self.load(&id).await?;
                    format!(
                        "resumed session {id} ({} messages)",
                        self.agent.history().len()
                    )
                }
                Err(e @ (StoreError::NoSuchSession(_) | StoreError::AmbiguousSession(_))) => {
                    e.to_string()
                }
                Err(e) => return Err(e.into()),
            },
        };
        Ok(CommandOutput::Text(text))
    }

    fn switch(&mut self, provider: Option<&str>, model: Option<&str>) -> String {
        match self.app.resolve(provider, model) {
            Ok(resolved) => {
                self.agent.set_provider(
                    Arc::clone(&resolved.provider),
                    resolved.pricing,
                    resolved.context_window,
                );
                self.provider_name = resolved.primary;
                self.model = resolved.model;
                format!("now using {} ({})", self.model, self.provider_name)
            }
            Err(e) => format!("cannot switch: {e}"),
        }
    }

    fn provider_list(&self) -> String {
        let mut out = String::new();
        for (name, entry) in &self.app.config.providers {
            let mark = if *name == self.provider_name {
                "*"
            } else {
                " "
            };
            let _ = writeln!(
                out,
                "{mark} {name}  {} {}",
                entry.kind.as_str(),
                entry.model
            );
        }
        if out.is_empty() {
            out.push_str("no providers configured\n");
        }
        out
    }

    async fn compact(&mut self) -> String {
        match self.agent.compact().await {
            Ok(done) => {
                if let Some(usage) = done.usage {
                    self.session_usage.add(usage);
                }
                if let Err(e) = self.save_history().await {
                    return format!("compacted, but saving failed: {e}");
                }
                format!(
                    "compacted: about {} → {} tokens",
                    done.tokens_before, done.tokens_after
                )
            }
            Err(CompactError::NothingToCompact) => CompactError::NothingToCompact.to_string(),
            Err(e) => format!("compaction failed: {e}"),
        }
    }

    fn cost_text(&self) -> String {
        let s = self.status();
        format!(
            "session {}: {} input + {} output tokens, ${:.4}; context ≈ {} of {} tokens",
            s.session_id,
            s.session_usage.input_tokens,
            s.session_usage.output_tokens,
            s.session_cost,
            s.context_tokens,
            s.context_window
        )
    }

    /// Restores files and conversation to the start of the last turn.
    pub async fn undo(&mut self) -> Result<String, SessionError> {
        let turns = self.app.store.turns(&self.id).await?;
        let Some(last) = turns.last() else {
            return Ok("nothing to undo".to_owned());
        };
        let mut note = String::new();
        match &last.checkpoint {
            Some(cp) => {
                let restored = match CheckpointId::parse(cp) {
                    Ok(id) => self.agent.toolbox().checkpoints().restore(&id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = restored {
                    return Ok(format!("undo failed, nothing changed: {e}"));
                }
            }
            None => note.push_str(" (this turn had no checkpoint: files were not restored)"),
        }
        self.agent.truncate_to_turn(last.turn);
        self.app.store.delete_turn(&self.id, last.turn).await?;
        self.save_history().await?;
        Ok(format!(
            "undid turn {}: {}{note}",
            last.turn,
            last.prompt.lines().next().unwrap_or("")
        ))
    }

    async fn diff(&self, all: bool) -> Result<String, SessionError> {
        let turns = self.app.store.turns(&self.id).await?;
        let turn = if all { turns.first() } else { turns.last() };
        let Some(cp) = turn.and_then(|t| t.checkpoint.clone()) else {
            return Ok("no checkpoint yet in this session".to_owned());
        };
        let result = match CheckpointId::parse(&cp) {
            Ok(id) => self.agent.toolbox().checkpoints().diff_since(&id).await,
            Err(e) => Err(e),
        };
        Ok(match result {
            Ok(diff) if diff.trim().is_empty() => "no changes".to_owned(),
            Ok(diff) => diff,
            Err(e) => format!("diff failed: {e}"),
        })
    }

    async fn sessions_text(&self) -> Result<String, SessionError> {
        let sessions = self
            .app
            .store
            .list_sessions(Some(&self.app.project_key()), 20)
            .await?;
        Ok(format_sessions(&sessions, &self.id))
    }

    /// The project directory the session works in.
    pub fn project(&self) -> &Path {
        &self.app.paths.project
    }
}

/// The `/sessions` table.
pub fn format_sessions(sessions: &[SessionInfo], current: &str) -> String {
    if sessions.is_empty() {
        return "no sessions yet".to_owned();
    }
    let mut out = String::new();
    for s in sessions {
        let mark = if s.id == current { "*" } else { " " };
        let _ = writeln!(
            out,
            "{mark} {}  {:>3} turns  ${:.4}  {}  {}",
            s.id, s.turns, s.cost_usd, s.model, s.title
        );
    }
    out
}

/// Cancels `token` when dropped; lets HTTP handlers stop a turn whose client left.
pub struct CancelOnDrop(pub CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
