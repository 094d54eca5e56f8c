//! The command line: argument definitions and dispatch to the surfaces.
//!
//! Parsing happens before anything else in `main` (no runtime, no config, no
//! database), so `picode --version` and `--help` return in a few
//! milliseconds.
//!
//! Exit codes, the same for every mode:
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 1    | other error (database, I/O, internal) |
//! | 2    | usage or configuration error (bad flag, bad config key, missing key) |
//! | 3    | provider error (unreachable, 429/5xx after retries and fallbacks, stream cut) |
//! | 4    | the turn hit the step limit (`--max-turns` / `max_steps`) |
//! | 130  | interrupted with Ctrl-C |

mod provider;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use picode_tools::PermissionMode;

use crate::agent::TurnOutcome;
use crate::config::{Config, ConfigError, Paths};
use crate::session::{App, Resume, SessionError, SessionOptions};
use crate::trust::{self, ProjectTrust, TrustError, TrustStore};

/// What an exit code says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    Provider = 3,
    TurnLimit = 4,
    Interrupted = 130,
}

impl Exit {
    pub fn of(outcome: TurnOutcome) -> Exit {
        match outcome {
            TurnOutcome::Completed => Exit::Ok,
            TurnOutcome::Cancelled => Exit::Interrupted,
            TurnOutcome::StepLimit => Exit::TurnLimit,
            TurnOutcome::ProviderError => Exit::Provider,
        }
    }

    pub fn of_session_error(err: &SessionError) -> Exit {
        match err {
            SessionError::Provider(_) | SessionError::NoLastSession => Exit::Usage,
            SessionError::Store(crate::store::StoreError::NoSuchSession(_))
            | SessionError::Store(crate::store::StoreError::AmbiguousSession(_)) => Exit::Usage,
            SessionError::Store(_) | SessionError::Tools(_) => Exit::Error,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "picode",
    version,
    about = "An AI coding assistant for the terminal that works with any LLM",
    after_help = "Exit codes: 0 ok, 1 error, 2 usage/config error, 3 provider error, 4 step limit reached, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Sub>,

    /// Run one task without interaction and print the result ("-" reads it from stdin).
    #[arg(short = 'p', long = "print", value_name = "PROMPT")]
    pub print: Option<String>,

    /// Output of --print.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,

    #[command(flatten)]
    pub session: SessionArgs,

    /// A first prompt for the interactive session.
    #[arg(value_name = "PROMPT")]
    pub prompt: Option<String>,
}

/// Flags shared by the interactive and headless modes.
#[derive(Debug, Args)]
pub struct SessionArgs {
    /// ask, auto-edit, full-auto or plan (default from config, else ask).
    #[arg(long, value_parser = parse_mode)]
    pub permission_mode: Option<PermissionMode>,
    /// Continue the most recent session of this project.
    #[arg(short = 'c', long = "continue", conflicts_with = "resume")]
    pub continue_last: bool,
    /// Resume a session by id (or unique prefix).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Provider to use (a name from the config).
    #[arg(long)]
    pub provider: Option<String>,
    /// Model to use instead of the provider's configured one.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Model calls allowed per prompt before the turn stops (exit code 4).
    #[arg(long = "max-turns", alias = "max-steps", value_name = "N")]
    pub max_turns: Option<u32>,
    /// Project directory (default: the current directory).
    #[arg(short = 'C', long = "cwd", value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Trust this project's picode.toml, .picode/commands and AGENTS.md as
    /// they are now (MCP servers still need `picode trust`).
    #[arg(long, global = true)]
    pub trust: bool,
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

fn parse_mode(s: &str) -> Result<PermissionMode, String> {
    s.parse::<PermissionMode>().map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    StreamJson,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Serve the HTTP API (agent completions, OpenAI-compatible proxy, metrics).
    Serve {
        /// Address to listen on (default from config `serve.listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Manage model providers in the user config.
    Provider {
        #[command(subcommand)]
        action: provider::ProviderAction,
    },
    /// Review this project's own configuration and trust it (and approve
    /// the MCP servers it starts).
    Trust,
    /// List recent sessions of this project.
    Sessions {
        /// Sessions of every project.
        #[arg(long)]
        all: bool,
    },
}

/// Prints an error the way every mode does and returns its exit code.
pub fn fail(exit: Exit, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("picode: {message}");
    exit.into()
}

/// Everything after argument parsing.
pub fn run(cli: Cli) -> ExitCode {
    let filter = match cli.session.verbose {
        0 => "error",
        1 => "info,picode=debug",
        _ => "debug",
    };
    telemetry::init_logging(filter, telemetry::LogFormat::Text);
    // Non-dumpable: no core file with the keys in it, and `/proc/PID/environ`
    // and `/proc/PID/mem` closed to the commands PiCode runs as the same
    // user (sandboxed or not). Failure only leaves things as they were.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "could not make the process non-dumpable");
    }
    let project = match &cli.session.cwd {
        Some(dir) => dir.clone(),
        None => match std::env::current_dir() {
            Ok(d) => d,
            Err(e) => return fail(Exit::Error, format!("current directory: {e}")),
        },
    };
    if !project.is_dir() {
        return fail(
            Exit::Usage,
            format!("{} is not a directory", project.display()),
        );
    }
    let paths = Paths::from_env(project);
    for name in Config::unknown_env_vars() {
        eprintln!("picode: warning: ignoring {name}: it names no config key");
    }
    let interactive = cli.command.is_none()
        && cli.print.is_none()
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    let trust = match decide_trust(&paths, &cli, interactive) {
        Ok(t) => t,
        Err(e) => return fail(Exit::Usage, e),
    };
    if let Some(Sub::Trust) = cli.command {
        return Exit::Ok.into();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Exit::Error, format!("starting the runtime: {e}")),
    };
    // Provider management must work even when the config is broken, so it
    // loads (and reports) the config itself.
    if let Some(Sub::Provider { action }) = cli.command {
        return runtime.block_on(provider::run(action, paths, trust));
    }
    let config = match Config::load(&paths, &trust) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    runtime.block_on(dispatch(cli, config, paths, trust))
}

/// Whether the project's own files are used: the stored decision, `--trust`,
/// `picode trust`, or the question an interactive session asks.
fn decide_trust(paths: &Paths, cli: &Cli, interactive: bool) -> Result<ProjectTrust, TrustError> {
    let store = TrustStore::new(&paths.config_dir);
    if let Some(Sub::Trust) = cli.command {
        let stdin = std::io::stdin();
        let trust = trust::ask(
            &store,
            &paths.project,
            &mut stdin.lock(),
            &mut std::io::stdout(),
        )?;
        if trust == ProjectTrust::Nothing {
            println!(
                "{} has no PiCode configuration of its own",
                paths.project.display()
            );
        }
        return Ok(trust);
    }
    let trust = store.lookup(&paths.project)?;
    if trust != ProjectTrust::Untrusted {
        return Ok(trust);
    }
    if cli.session.trust {
        return store.trust(&paths.project, None);
    }
    if interactive {
        let stdin = std::io::stdin();
        return trust::ask(
            &store,
            &paths.project,
            &mut stdin.lock(),
            &mut std::io::stderr(),
        );
    }
    eprintln!(
        "picode: warning: {} has its own configuration ({}) that you have not trusted; \
         it is ignored. Review it, then run `picode trust` (or pass --trust).",
        paths.project.display(),
        trust::PROJECT_FILES
            .iter()
            .filter(|f| paths.project.join(f).exists())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(trust)
}

fn config_failure(err: &ConfigError) -> ExitCode {
    fail(Exit::Usage, err)
}

async fn dispatch(cli: Cli, config: Config, paths: Paths, trust: ProjectTrust) -> ExitCode {
    let app = App::new(config, paths, trust);
    match cli.command {
        Some(Sub::Serve { listen }) => crate::serve::run_cli(app, listen).await,
        Some(Sub::Sessions { all }) => {
            let project = app.project_key();
            let filter = (!all).then_some(project.as_str());
            match app.store.list_sessions(filter, 50).await {
                Ok(list) => {
                    print!("{}", crate::session::format_sessions(&list, ""));
                    Exit::Ok.into()
                }
                Err(e) => fail(Exit::Error, e),
            }
        }
        Some(Sub::Provider { .. } | Sub::Trust) => Exit::Ok.into(),
        None => {
            let options = session_options(&app, &cli.session);
            match cli.print {
                Some(prompt) => crate::headless::run(app, options, prompt, cli.output_format).await,
                None => crate::repl::run(app, options, cli.prompt).await,
            }
        }
    }
}

fn session_options(app: &App, args: &SessionArgs) -> SessionOptions {
    SessionOptions {
        provider: args.provider.clone(),
        model: args.model.clone(),
        mode: args.permission_mode.unwrap_or(app.config.permission_mode),
        max_steps: args.max_turns.unwrap_or(app.config.max_steps).max(1),
        resume: if args.continue_last {
            Resume::Last
        } else if let Some(id) = &args.resume {
            Resume::Id(id.clone())
        } else {
            Resume::New
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "picode",
            "-p",
            "task",
            "--output-format",
            "stream-json",
            "--permission-mode",
            "auto-edit",
            "-c",
        ])
        .unwrap();
        assert_eq!(cli.output_format, OutputFormat::StreamJson);
        assert_eq!(cli.session.permission_mode, Some(PermissionMode::AutoEdit));
        assert!(cli.session.continue_last);
        assert!(Cli::try_parse_from(["picode", "--permission-mode", "yolo"]).is_err());
        assert!(Cli::try_parse_from(["picode", "-c", "--resume", "x"]).is_err());
    }

    #[test]
    fn outcomes_map_to_documented_exit_codes() {
        assert_eq!(Exit::of(TurnOutcome::Completed) as u8, 0);
        assert_eq!(Exit::of(TurnOutcome::ProviderError) as u8, 3);
        assert_eq!(Exit::of(TurnOutcome::StepLimit) as u8, 4);
        assert_eq!(Exit::of(TurnOutcome::Cancelled) as u8, 130);
    }
}
