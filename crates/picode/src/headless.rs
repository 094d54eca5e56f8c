//! `picode -p "task"`: one prompt, no interaction, machine-readable output.
//!
//! Nobody is there to answer approval prompts, so the approver declines
//! everything: in `ask` mode edits and commands are refused (the model gets
//! an error result saying the user declined), in `auto-edit` mode edits go
//! through but commands are refused, `full-auto` asks nothing, and `plan`
//! refuses every change in the tool layer. A prompt that starts with `/` runs
//! a slash command (`picode -c -p /undo`).

use std::io::{Read, Write};
use std::process::ExitCode;

use picode_tools::AlwaysDeny;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentEvent, TurnReport};
use crate::cli::{fail, Exit, OutputFormat};
use crate::session::{App, CommandOutput, Session, SessionOptions};

pub async fn run(
    app: App,
    options: SessionOptions,
    prompt: String,
    format: OutputFormat,
) -> ExitCode {
    let prompt = if prompt == "-" {
        let mut buf = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut buf) {
            return fail(Exit::Error, format!("reading the prompt from stdin: {e}"));
        }
        buf
    } else {
        prompt
    };
    if prompt.trim().is_empty() {
        return fail(Exit::Usage, "the prompt is empty");
    }
    let mut session = match Session::open(app, options).await {
        Ok(s) => s,
        Err(e) => return fail(Exit::of_session_error(&e), e),
    };
    let prompt = match session.parse_command(&prompt) {
        None => prompt,
        Some(command) => match session.command(command).await {
            Ok(CommandOutput::Prompt(p)) => p,
            Ok(CommandOutput::Exit) => return Exit::Ok.into(),
            Ok(CommandOutput::Text(text)) => {
                print_command(format, session.id(), &text);
                return Exit::Ok.into();
            }
            Err(e) => return fail(Exit::of_session_error(&e), e),
        },
    };

    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });

    let mut sink = sink_for(format);
    let report = match session
        .run_turn(&prompt, &AlwaysDeny, &cancel, &mut sink)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(Exit::of_session_error(&e), e),
    };
    let exit = Exit::of(report.outcome);
    match format {
        OutputFormat::Text => {
            println!();
            if let Some(err) = &report.error {
                eprintln!("picode: {err}");
            } else if exit == Exit::TurnLimit {
                eprintln!(
                    "picode: stopped after {} model calls (the step limit); continue with `picode -c`",
                    report.steps
                );
            }
        }
        OutputFormat::Json | OutputFormat::StreamJson => {
            let value = result_json(&session, &report);
            println!("{value}");
            if let Some(err) = &report.error {
                eprintln!("picode: {err}");
            }
        }
    }
    exit.into()
}

fn print_command(format: OutputFormat, session_id: &str, text: &str) {
    match format {
        OutputFormat::Text => println!("{}", text.trim_end()),
        OutputFormat::Json | OutputFormat::StreamJson => println!(
            "{}",
            json!({"type": "command", "session_id": session_id, "output": text})
        ),
    }
}

/// The final JSON object of `json` and `stream-json` output.
fn result_json(session: &Session, report: &TurnReport) -> serde_json::Value {
    let status = session.status();
    json!({
        "type": "result",
        "session_id": session.id(),
        "status": report.outcome,
        "result": report.text,
        "turn": report.turn,
        "steps": report.steps,
        "tool_calls": report.tool_calls,
        "commands": session.toolbox().executed_commands(),
        "usage": {
            "input_tokens": report.usage.input_tokens,
            "output_tokens": report.usage.output_tokens,
        },
        "cost_usd": report.cost_usd,
        "session_usage": {
            "input_tokens": status.session_usage.input_tokens,
            "output_tokens": status.session_usage.output_tokens,
            "cost_usd": status.session_cost,
        },
        "provider": status.provider,
        "model": status.model,
        "error": report.error,
    })
}

/// How events are shown while the turn runs.
fn sink_for(format: OutputFormat) -> impl FnMut(AgentEvent) + Send {
    let mut text = TextOut::default();
    move |event| match format {
        OutputFormat::Json => {}
        OutputFormat::StreamJson => {
            if let Ok(line) = serde_json::to_string(&event) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        OutputFormat::Text => text.event(event),
    }
}

/// Where the text on stdout stands, so the answers of consecutive steps
/// (text, tool calls, more text) do not run into one another.
#[derive(Debug, Default)]
struct TextOut {
    /// Text was written since the last tool call.
    wrote: bool,
    /// The last text written ended with a newline.
    at_line_start: bool,
    /// A tool call came after some text: the next text starts a new paragraph.
    pending_break: bool,
}

impl TextOut {
    /// Plain text: the answer on stdout, tool activity on stderr, so that
    /// `picode -p ... > answer.txt` captures only the answer.
    fn event(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::TextDelta { text } => self.write(&text),
            AgentEvent::ToolCall {
                name, arguments, ..
            } => {
                self.pending_break |= self.wrote;
                self.wrote = false;
                eprintln!("[tool] {name} {arguments}");
            }
            other => text_event(other),
        }
    }

    fn write(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.pending_break {
            let gap = if self.at_line_start { "\n" } else { "\n\n" };
            let _ = out.write_all(gap.as_bytes());
            self.pending_break = false;
        }
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        self.wrote = true;
        self.at_line_start = text.ends_with('\n');
    }
}

/// Tool results, warnings and notices of text output, all on stderr.
fn text_event(event: AgentEvent) {
    match event {
        AgentEvent::TextDelta { .. } | AgentEvent::ToolCall { .. } => {}
        AgentEvent::ToolResult {
            name,
            is_error,
            content,
            diff,
            ..
        } => {
            if is_error {
                let first = content.lines().next().unwrap_or("");
                eprintln!("[tool] {name} failed: {first}");
            }
            if let Some(diff) = diff {
                eprintln!("{diff}");
            }
        }
        AgentEvent::Warning { message } => eprintln!("picode: warning: {message}"),
        AgentEvent::Compacted {
            tokens_before,
            tokens_after,
        } => eprintln!("picode: compacted context {tokens_before} → {tokens_after} tokens"),
        AgentEvent::Error { .. }
        | AgentEvent::TurnStarted { .. }
        | AgentEvent::TurnEnded { .. }
        | AgentEvent::Usage { .. } => {}
    }
}
