//! The interactive terminal session: a line-based REPL over stdin/stdout.
//!
//! It stays line-based on purpose: it works the same in any terminal, over
//! ssh, under tmux and through a pseudo-terminal in tests. Answers stream as
//! they arrive, tool calls and diffs are shown, edits and commands that need
//! approval ask `[y/N]`, and a status line after each turn shows the model,
//! the context size, tokens and cost. Ctrl-C cancels the running turn (the
//! partial answer is kept, marked as interrupted) and the session goes on;
//! Ctrl-D or `/exit` leaves.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use crossterm::style::{Color, Stylize};
use picode_tools::{ApprovalRequest, Approver};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentEvent, TurnOutcome, TurnReport};
use crate::cli::{fail, Exit};
use crate::session::{App, CommandOutput, Session, SessionOptions, Status};

/// Lines typed by the user, read on a plain thread so a blocked read never
/// holds up the runtime. `None` from the channel means end of input.
type Lines = Arc<Mutex<mpsc::UnboundedReceiver<String>>>;

fn spawn_stdin_reader() -> Lines {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Arc::new(Mutex::new(rx))
}

/// Colours when writing to a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy)]
struct Painter {
    color: bool,
}

impl Painter {
    fn new() -> Painter {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Painter {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn paint(&self, text: &str, color: Color) -> String {
        if self.color {
            text.with(color).to_string()
        } else {
            text.to_owned()
        }
    }

    fn dim(&self, text: &str) -> String {
        if self.color {
            text.dark_grey().to_string()
        } else {
            text.to_owned()
        }
    }

    fn diff(&self, diff: &str) -> String {
        let mut out = String::new();
        for line in diff.lines() {
            let colored = if line.starts_with("+++") || line.starts_with("---") {
                self.dim(line)
            } else if line.starts_with('+') {
                self.paint(line, Color::Green)
            } else if line.starts_with('-') {
                self.paint(line, Color::Red)
            } else if line.starts_with("@@") {
                self.paint(line, Color::Cyan)
            } else {
                line.to_owned()
            };
            out.push_str(&colored);
            out.push('\n');
        }
        out
    }
}

/// Asks on the terminal; anything but `y`/`yes` declines.
struct TerminalApprover {
    lines: Lines,
    painter: Painter,
}

#[async_trait]
impl Approver for TerminalApprover {
    async fn approve(&self, req: &ApprovalRequest) -> bool {
        {
            let mut out = std::io::stdout().lock();
            if let Some(diff) = &req.diff {
                let _ = write!(out, "{}", self.painter.diff(diff));
            }
            let question = format!("Allow {}? [y/N] ", req.summary);
            let _ = write!(out, "{}", self.painter.paint(&question, Color::Yellow));
            let _ = out.flush();
        }
        let answer = self.lines.lock().await.recv().await;
        matches!(
            answer.as_deref().map(str::trim),
            Some("y" | "Y" | "yes" | "Yes")
        )
    }
}

pub async fn run(app: App, options: SessionOptions, first: Option<String>) -> ExitCode {
    let mut session = match Session::open(app, options).await {
        Ok(s) => s,
        Err(e) => return fail(Exit::of_session_error(&e), e),
    };
    let painter = Painter::new();
    let lines = spawn_stdin_reader();
    let current: Arc<StdMutex<Option<CancellationToken>>> = Arc::new(StdMutex::new(None));
    spawn_interrupt_handler(Arc::clone(&current), painter);
    let approver = TerminalApprover {
        lines: Arc::clone(&lines),
        painter,
    };

    let status = session.status();
    println!(
        "{}",
        painter.dim(&format!(
            "PiCode {} · {} ({}) · {} mode · session {} · /help for commands",
            env!("CARGO_PKG_VERSION"),
            status.model,
            status.provider,
            status.mode,
            status.session_id
        ))
    );
    let mut pending = first;
    loop {
        let line = match pending.take() {
            Some(l) => l,
            None => {
                print!("{}", painter.paint("> ", Color::Cyan));
                let _ = std::io::stdout().flush();
                match lines.lock().await.recv().await {
                    Some(l) => l,
                    None => {
                        println!();
                        return Exit::Ok.into();
                    }
                }
            }
        };
        let line = line.trim().to_owned();
        if line.is_empty() {
            continue;
        }
        let prompt = match session.parse_command(&line) {
            None => line,
            Some(command) => match session.command(command).await {
                Ok(CommandOutput::Text(text)) => {
                    let text = if text.starts_with("diff --git") || text.starts_with("--- ") {
                        painter.diff(&text)
                    } else {
                        text
                    };
                    println!("{}", text.trim_end());
                    continue;
                }
                Ok(CommandOutput::Exit) => return Exit::Ok.into(),
                Ok(CommandOutput::Prompt(p)) => p,
                Err(e) => {
                    eprintln!("{}", painter.paint(&format!("error: {e}"), Color::Red));
                    continue;
                }
            },
        };
        let cancel = CancellationToken::new();
        set_current(&current, Some(cancel.clone()));
        let mut sink = move |event: AgentEvent| show_event(painter, event);
        let result = session
            .run_turn(&prompt, &approver, &cancel, &mut sink)
            .await;
        set_current(&current, None);
        match result {
            Ok(report) => finish_turn(painter, &report, &session.status()),
            Err(e) => eprintln!("{}", painter.paint(&format!("error: {e}"), Color::Red)),
        }
    }
}

fn set_current(current: &StdMutex<Option<CancellationToken>>, token: Option<CancellationToken>) {
    if let Ok(mut slot) = current.lock() {
        *slot = token;
    }
}

/// Ctrl-C cancels the running turn; at the prompt it only explains how to leave.
fn spawn_interrupt_handler(current: Arc<StdMutex<Option<CancellationToken>>>, painter: Painter) {
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            let token = current.lock().ok().and_then(|slot| slot.clone());
            match token {
                Some(token) => token.cancel(),
                None => {
                    print!(
                        "\n{}\n{}",
                        painter.dim("(Ctrl-D or /exit to leave)"),
                        painter.paint("> ", Color::Cyan)
                    );
                    let _ = std::io::stdout().flush();
                }
            }
        }
    });
}

fn show_event(painter: Painter, event: AgentEvent) {
    let mut out = std::io::stdout().lock();
    match event {
        AgentEvent::TextDelta { text } => {
            let _ = write!(out, "{text}");
        }
        AgentEvent::ToolCall {
            name, arguments, ..
        } => {
            let args = arguments.to_string();
            let args: String = args.chars().take(160).collect();
            let _ = writeln!(
                out,
                "\n{}",
                painter.paint(&format!("● {name} {args}"), Color::Blue)
            );
        }
        AgentEvent::ToolResult {
            content,
            is_error,
            diff,
            ..
        } => {
            if let Some(diff) = diff {
                let _ = write!(out, "{}", painter.diff(&diff));
            }
            let first = content
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect::<String>();
            let more = content.lines().count().saturating_sub(1);
            let suffix = if more > 0 {
                format!(" (+{more} lines)")
            } else {
                String::new()
            };
            if is_error {
                let _ = writeln!(
                    out,
                    "{}",
                    painter.paint(&format!("  ✗ {first}{suffix}"), Color::Red)
                );
            } else {
                let _ = writeln!(out, "{}", painter.dim(&format!("  ✓ {first}{suffix}")));
            }
        }
        AgentEvent::Warning { message } => {
            let _ = writeln!(
                out,
                "{}",
                painter.paint(&format!("warning: {message}"), Color::Yellow)
            );
        }
        AgentEvent::Error { message } => {
            let _ = writeln!(
                out,
                "\n{}",
                painter.paint(&format!("error: {message}"), Color::Red)
            );
        }
        AgentEvent::Compacted {
            tokens_before,
            tokens_after,
        } => {
            let _ = writeln!(
                out,
                "{}",
                painter.dim(&format!(
                    "(context compacted: {tokens_before} → {tokens_after} tokens)"
                ))
            );
        }
        AgentEvent::TurnStarted { .. }
        | AgentEvent::TurnEnded { .. }
        | AgentEvent::Usage { .. } => {}
    }
    let _ = out.flush();
}

fn finish_turn(painter: Painter, report: &TurnReport, status: &Status) {
    match report.outcome {
        TurnOutcome::Completed | TurnOutcome::ProviderError => println!(),
        TurnOutcome::Cancelled => println!("\n{}", painter.paint("(interrupted)", Color::Yellow)),
        TurnOutcome::StepLimit => println!(
            "\n{}",
            painter.paint(
                &format!(
                    "(stopped after {} model calls; say \"continue\" to go on)",
                    report.steps
                ),
                Color::Yellow
            )
        ),
    }
    println!("{}", painter.dim(&status_line(report, status)));
}

/// `[model · ctx 1.2k/128k · turn 300↑ 50↓ $0.0012 · session $0.0040]`
pub fn status_line(report: &TurnReport, status: &Status) -> String {
    format!(
        "[{} · ctx {}/{} · turn {} in {} out ${:.4} · session {} in {} out ${:.4}]",
        status.model,
        human(status.context_tokens),
        human(status.context_window as u64),
        human(report.usage.input_tokens),
        human(report.usage.output_tokens),
        report.cost_usd,
        human(status.session_usage.input_tokens),
        human(status.session_usage.output_tokens),
        status.session_cost,
    )
}

fn human(n: u64) -> String {
    if n >= 1000 {
        format!("{:.1}k", n as f64 / 1000.0)
    } else {
        n.to_string()
    }
}
