//! The agent loop: send the conversation to the model, run the tool calls it
//! asks for through the [`Toolbox`], feed the results back, and repeat until
//! the model answers without calling a tool.
//!
//! This module knows no terminal, HTTP or command line. A surface drives it
//! with a prompt, an [`Approver`] (how to ask the user), a cancellation token
//! (Ctrl-C, a dropped HTTP client) and a callback that receives
//! [`AgentEvent`]s as they happen. Persistence is the caller's business too
//! (see [`crate::session`]); the agent only keeps the conversation in memory.

mod compact;
mod prompt;

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use picode_llm::{
    ChatRequest, ContentPart, LlmError, Message, Pricing, Provider, Role, StopReason, StreamEvent,
    ToolDef, Usage,
};
use picode_tools::{Approver, Toolbox};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use compact::{estimate_tokens, CompactError};
pub use prompt::system_prompt;

use crate::providers::Prices;
use crate::store::{StoredMessage, ToolCallRecord};

/// The marker appended to an answer cut short by the user, so both the user
/// (on `-c`) and the model (next turn) can see the answer is incomplete.
pub const INTERRUPTED_MARK: &str = "[interrupted by the user]";

/// Something that happened during a turn, in order. Serialised as one JSON
/// object per event for `--output-format stream-json` and the SSE API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    TurnStarted {
        turn: u32,
    },
    TextDelta {
        text: String,
    },
    ToolCall {
        id: String,
        name: String,
        arguments: serde_json::Value,
    },
    ToolResult {
        id: String,
        name: String,
        content: String,
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        diff: Option<String>,
    },
    /// Usage of one model call.
    Usage {
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
    },
    /// Older messages were replaced by a summary.
    Compacted {
        tokens_before: u64,
        tokens_after: u64,
    },
    /// A problem that did not end the turn (for example a failed compaction).
    Warning {
        message: String,
    },
    /// The failure that ended the turn.
    Error {
        message: String,
    },
    TurnEnded {
        outcome: TurnOutcome,
    },
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// The model answered without asking for more tools.
    Completed,
    /// The user cancelled; the partial answer was kept and marked.
    Cancelled,
    /// The model kept calling tools past the step limit.
    StepLimit,
    /// The provider failed (after retries and fallbacks).
    ProviderError,
}

/// What a surface needs to report a finished turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnReport {
    pub turn: u32,
    pub outcome: TurnOutcome,
    /// The text of the model's last answer in this turn.
    pub text: String,
    pub tool_calls: Vec<ToolCallRecord>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// Model calls made in this turn.
    pub steps: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Limits and thresholds of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Model calls allowed per user turn.
    pub max_steps: u32,
    pub context_window: u32,
    /// Share of the context window at which compaction starts.
    pub compact_threshold: f64,
    /// User turns kept verbatim by compaction.
    pub keep_turns: usize,
    pub max_tokens: Option<u32>,
}

/// One conversation with a model, plus the tools it may use.
pub struct Agent {
    provider: Arc<dyn Provider>,
    prices: Prices,
    /// The rates of the provider answering the current model call.
    pricing: Option<Pricing>,
    toolbox: Arc<Toolbox>,
    /// Awaited before the first tool of the next turn runs: the turn's
    /// checkpoint, taken while the model is already answering.
    tools_gate: Option<ToolsGate>,
    /// Counts rewrites of `history` other than appends, so the session
    /// knows when the stored copy must be replaced rather than extended.
    rewrites: u64,
    system: String,
    history: Vec<StoredMessage>,
    turn: u32,
    settings: AgentSettings,
    /// Input tokens of the latest model call: the best estimate of the
    /// context size the provider actually saw.
    last_input_tokens: u64,
}

/// The callback that receives events; a plain `FnMut` keeps surfaces free to
/// print, send over a channel or collect.
pub type EventSink<'a> = &'a mut (dyn FnMut(AgentEvent) + Send);

/// Turns `true` when tools may run (see [`Agent::gate_tools`]).
pub type ToolsGate = tokio::sync::watch::Receiver<bool>;

impl Agent {
    pub fn new(
        provider: Arc<dyn Provider>,
        prices: Prices,
        toolbox: Arc<Toolbox>,
        system: String,
        settings: AgentSettings,
    ) -> Agent {
        Agent {
            provider,
            pricing: prices.primary,
            prices,
            toolbox,
            tools_gate: None,
            rewrites: 0,
            system,
            history: Vec::new(),
            turn: 0,
            settings,
            last_input_tokens: 0,
        }
    }

    /// Makes the next tool call wait until `gate` turns `true`. The session uses it so that
    /// the turn's checkpoint runs alongside the first model request instead
    /// of in front of it, yet still before anything can change a file.
    pub fn gate_tools(&mut self, gate: ToolsGate) {
        self.tools_gate = Some(gate);
    }

    /// Replaces the model endpoint (`/model`, `/provider`); the conversation stays.
    pub fn set_provider(
        &mut self,
        provider: Arc<dyn Provider>,
        prices: Prices,
        context_window: u32,
    ) {
        self.provider = provider;
        self.pricing = prices.primary;
        self.prices = prices;
        self.settings.context_window = context_window;
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    pub fn toolbox(&self) -> &Arc<Toolbox> {
        &self.toolbox
    }

    pub fn history(&self) -> &[StoredMessage] {
        &self.history
    }

    /// How many times the history was rewritten rather than appended to.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// Loads a stored conversation (for `--resume`, `-c`, `/undo`).
    pub fn set_history(&mut self, history: Vec<StoredMessage>, turn: u32) {
        self.history = history;
        self.turn = turn;
        self.last_input_tokens = 0;
        self.rewrites += 1;
    }

    /// The number of the latest user turn.
    pub fn turn(&self) -> u32 {
        self.turn
    }

    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The estimated size of the next request, in tokens.
    pub fn context_tokens(&self) -> u64 {
        let estimate = estimate_tokens(&self.system, self.history.iter().map(|m| &m.message));
        estimate.max(self.last_input_tokens)
    }

    fn push(&mut self, message: Message) {
        self.history.push(StoredMessage {
            turn: self.turn,
            message,
        });
    }

    async fn tool_defs(&self) -> Vec<ToolDef> {
        self.toolbox
            .specs()
            .await
            .into_iter()
            .map(|s| ToolDef {
                name: s.name,
                description: s.description,
                parameters: s.parameters,
            })
            .collect()
    }

    /// Runs one user turn to its end. Never returns an error: failures are
    /// reported in the [`TurnReport`] so the session always continues.
    pub async fn run_turn(
        &mut self,
        prompt: &str,
        approver: &dyn Approver,
        cancel: &CancellationToken,
        sink: EventSink<'_>,
    ) -> TurnReport {
        self.turn += 1;
        metrics::counter!("picode_turns_total").increment(1);
        sink(AgentEvent::TurnStarted { turn: self.turn });
        self.push(Message::user(prompt));
        let tools = self.tool_defs().await;
        let mut report = TurnReport {
            turn: self.turn,
            outcome: TurnOutcome::Completed,
            text: String::new(),
            tool_calls: Vec::new(),
            usage: Usage::default(),
            cost_usd: 0.0,
            steps: 0,
            error: None,
        };
        let outcome = self
            .step_loop(&tools, approver, cancel, sink, &mut report)
            .await;
        report.outcome = outcome;
        sink(AgentEvent::TurnEnded { outcome });
        report
    }

    async fn step_loop(
        &mut self,
        tools: &[ToolDef],
        approver: &dyn Approver,
        cancel: &CancellationToken,
        sink: EventSink<'_>,
        report: &mut TurnReport,
    ) -> TurnOutcome {
        while report.steps < self.settings.max_steps {
            if self.needs_compaction() {
                self.auto_compact(cancel, sink, report).await;
            }
            report.steps += 1;
            let step = self.model_call(tools, cancel, sink, report).await;
            let calls = match step {
                Step::Answer(calls) => calls,
                Step::Stop(outcome) => return outcome,
            };
            if calls.is_empty() {
                return TurnOutcome::Completed;
            }
            if self.run_tools(calls, approver, cancel, sink, report).await {
                return self.cancelled();
            }
        }
        TurnOutcome::StepLimit
    }

    /// One request to the model, streamed. The assistant message (with any
    /// partial text) is always added to the history before returning.
    async fn model_call(
        &mut self,
        tools: &[ToolDef],
        cancel: &CancellationToken,
        sink: EventSink<'_>,
        report: &mut TurnReport,
    ) -> Step {
        let request = ChatRequest {
            // Empty: each provider of a fallback chain uses its own model.
            model: String::new(),
            system: Some(self.system.clone()),
            messages: self.history.iter().map(|m| m.message.clone()).collect(),
            tools: tools.to_vec(),
            max_tokens: self.settings.max_tokens,
            temperature: None,
            tool_choice: None,
        };
        let started = Instant::now();
        // Until a fallback says otherwise, the first provider answers.
        self.pricing = self.prices.primary;
        let opened = tokio::select! {
            biased;
            () = cancel.cancelled() => return Step::Stop(self.cancelled()),
            opened = self.provider.stream(&request) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(err) => return Step::Stop(self.provider_failed(&err, sink, report)),
        };
        let mut text = String::new();
        let mut calls: Vec<ContentPart> = Vec::new();
        report.text.clear();
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    // Dropping the stream closes the connection, which stops generation.
                    drop(stream);
                    self.keep_partial(text, report);
                    return Step::Stop(self.cancelled());
                }
                next = stream.next() => next,
            };
            match next {
                Some(Ok(StreamEvent::TextDelta(delta))) => {
                    text.push_str(&delta);
                    report.text.push_str(&delta);
                    sink(AgentEvent::TextDelta { text: delta });
                }
                Some(Ok(StreamEvent::ToolCall {
                    id,
                    name,
                    arguments,
                })) => {
                    sink(AgentEvent::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                    });
                    calls.push(ContentPart::ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                Some(Ok(StreamEvent::Usage(usage))) => self.account(usage, sink, report),
                Some(Ok(StreamEvent::Provider(name))) => {
                    self.pricing = self.prices.of(&name);
                    sink(AgentEvent::Warning {
                        message: format!("answered by the fallback provider `{name}`"),
                    });
                }
                Some(Ok(StreamEvent::Done(stop))) => {
                    metrics::histogram!("picode_model_call_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if stop == StopReason::MaxTokens && calls.is_empty() {
                        sink(AgentEvent::Warning {
                            message: "the model hit its output token limit".to_owned(),
                        });
                    }
                    break;
                }
                Some(Err(err)) => {
                    self.keep_partial(text, report);
                    return Step::Stop(self.provider_failed(&err, sink, report));
                }
                None => {
                    self.keep_partial(text, report);
                    let err =
                        LlmError::Stream("the stream ended before the answer was complete".into());
                    return Step::Stop(self.provider_failed(&err, sink, report));
                }
            }
        }
        let ids: Vec<(String, String, serde_json::Value)> = calls
            .iter()
            .filter_map(|c| match c {
                ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                } => Some((id.clone(), name.clone(), arguments.clone())),
                _ => None,
            })
            .collect();
        let mut content = Vec::new();
        if !text.is_empty() {
            content.push(ContentPart::text(text));
        }
        content.extend(calls);
        if !content.is_empty() {
            self.push(Message {
                role: Role::Assistant,
                content,
            });
        }
        Step::Answer(ids)
    }

    /// Runs the calls in order. Returns `true` when the user cancelled; every
    /// call still gets a result then, because providers reject a conversation
    /// with a tool call left unanswered.
    async fn run_tools(
        &mut self,
        calls: Vec<(String, String, serde_json::Value)>,
        approver: &dyn Approver,
        cancel: &CancellationToken,
        sink: EventSink<'_>,
        report: &mut TurnReport,
    ) -> bool {
        if let Some(mut gate) = self.tools_gate.take() {
            // An error means the sender is gone, which also ends the wait.
            let _ = gate.wait_for(|ready| *ready).await;
        }
        let mut cancelled = false;
        for (id, name, arguments) in calls {
            let output = if cancelled {
                None
            } else {
                let toolbox = Arc::clone(&self.toolbox);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => None,
                    out = toolbox.call(&name, arguments.clone(), approver) => Some(out),
                }
            };
            let (content, is_error, diff) = match output {
                Some(out) => (out.content, out.is_error, out.diff),
                None => {
                    cancelled = true;
                    (
                        "cancelled by the user before this tool ran to completion".to_owned(),
                        true,
                        None,
                    )
                }
            };
            metrics::counter!("picode_tool_calls_total", "tool" => name.clone(), "error" => is_error.to_string())
                .increment(1);
            sink(AgentEvent::ToolResult {
                id: id.clone(),
                name: name.clone(),
                content: content.clone(),
                is_error,
                diff,
            });
            report.tool_calls.push(ToolCallRecord {
                call_id: id.clone(),
                name,
                arguments,
                output: content.clone(),
                is_error,
            });
            self.push(Message::tool_result(id, content, is_error));
        }
        cancelled
    }

    fn account(&mut self, usage: Usage, sink: EventSink<'_>, report: &mut TurnReport) {
        let cost = picode_llm::cost(&usage, self.pricing.as_ref());
        self.last_input_tokens = usage.input_tokens;
        report.usage.add(usage);
        report.cost_usd += cost;
        metrics::counter!("picode_tokens_total", "direction" => "input")
            .increment(usage.input_tokens);
        metrics::counter!("picode_tokens_total", "direction" => "output")
            .increment(usage.output_tokens);
        sink(AgentEvent::Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_usd: cost,
        });
    }

    /// Keeps what the model said before an interruption, marked as such.
    fn keep_partial(&mut self, text: String, report: &mut TurnReport) {
        let marked = if text.is_empty() {
            INTERRUPTED_MARK.to_owned()
        } else {
            format!("{text}\n\n{INTERRUPTED_MARK}")
        };
        report.text = marked.clone();
        self.push(Message::assistant_text(marked));
    }

    fn cancelled(&mut self) -> TurnOutcome {
        // A cancel between steps leaves the last message a user or tool
        // message; mark the turn so the next prompt is not read as a
        // continuation the model never saw an answer to.
        if !matches!(self.history.last(), Some(m) if m.message.role == Role::Assistant && m.message.text().ends_with(INTERRUPTED_MARK))
        {
            self.push(Message::assistant_text(INTERRUPTED_MARK));
        }
        TurnOutcome::Cancelled
    }

    fn provider_failed(
        &mut self,
        err: &LlmError,
        sink: EventSink<'_>,
        report: &mut TurnReport,
    ) -> TurnOutcome {
        if matches!(err, LlmError::Cancelled) {
            return self.cancelled();
        }
        metrics::counter!("picode_provider_errors_total").increment(1);
        tracing::warn!(error = %err, "model call failed");
        report.error = Some(err.to_string());
        sink(AgentEvent::Error {
            message: err.to_string(),
        });
        TurnOutcome::ProviderError
    }

    fn needs_compaction(&self) -> bool {
        let limit = self.settings.context_window as f64 * self.settings.compact_threshold;
        self.context_tokens() as f64 > limit
    }

    async fn auto_compact(
        &mut self,
        cancel: &CancellationToken,
        sink: EventSink<'_>,
        report: &mut TurnReport,
    ) {
        let compacted = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            c = self.compact() => c,
        };
        match compacted {
            Ok(done) => {
                if let Some(usage) = done.usage {
                    self.account(usage, sink, report);
                }
                sink(AgentEvent::Compacted {
                    tokens_before: done.tokens_before,
                    tokens_after: done.tokens_after,
                });
            }
            Err(CompactError::NothingToCompact) => {}
            Err(err) => sink(AgentEvent::Warning {
                message: format!("automatic compaction failed: {err}"),
            }),
        }
    }

    /// Replaces older turns with a model-written summary (`/compact`).
    pub async fn compact(&mut self) -> Result<compact::Compacted, CompactError> {
        let before = self.context_tokens();
        let (history, usage) =
            compact::compact(&*self.provider, &self.history, self.settings.keep_turns).await?;
        self.history = history;
        self.last_input_tokens = 0;
        self.rewrites += 1;
        Ok(compact::Compacted {
            tokens_before: before,
            tokens_after: self.context_tokens(),
            usage,
        })
    }

    /// Drops every message of turns `>= turn` (for `/undo`).
    pub fn truncate_to_turn(&mut self, turn: u32) {
        self.history.retain(|m| m.turn < turn);
        self.turn = turn.saturating_sub(1);
        self.last_input_tokens = 0;
        self.rewrites += 1;
    }

    /// Forgets the conversation (`/clear`).
    pub fn clear(&mut self) {
        self.history.clear();
        self.turn = 0;
        self.last_input_tokens = 0;
        self.rewrites += 1;
    }
}

enum Step {
    /// The model answered; these tool calls (maybe none) are to be run.
    Answer(Vec<(String, String, serde_json::Value)>),
    Stop(TurnOutcome),
}
