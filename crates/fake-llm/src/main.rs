//! `fake-llm`: serves a scripted fake LLM provider for manual testing and
//! benchmarks.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use fake_llm::{FakeState, Script, ScriptFile};

/// The script format, printed by `--help` (the README has the same text).
const SCRIPT_HELP: &str = r#"Script files (--script FILE; TOML when FILE ends in .toml, else JSON):

  [[turns]]            one scripted answer per chat request, in order
  type = "text"        text = "..."
  type = "tool_calls"  text = "..." (optional, before the calls)
                       calls = [{ name = "read_file", arguments = { path = "src/lib.rs" } }]
                       (id = "call_1" optional; names are the client's tool names,
                       for PiCode: read_file, write_file, edit_file, list_files,
                       grep, shell, git_status, git_diff)
  type = "error"       status = 429, message = "...", retry_after = "1"
  type = "cut_short"   text = "...", after_events = 3 (connection dropped mid-stream)
  type = "malformed"   text = "...", bad = "{not json" (a broken SSE chunk)
  type = "echo"        answers with the last user message

  Each turn may also set: chunks = N, first_byte_delay_ms = N,
  chunk_delay_ms = N, usage = { input_tokens = N, output_tokens = N }.

  [default]            served (forever) once the turns are used up;
                       without it, requests past the script get an error.

Endpoints: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic),
POST /v1/responses (OpenAI Responses API, as Codex CLI uses), GET /v1/models;
all streaming with tool calls as the real APIs send them.
Example: crates/fake-llm/scripts/example.toml."#;

/// A fake OpenAI / Anthropic provider answering from a script.
#[derive(Debug, Parser)]
#[command(version, about, after_long_help = SCRIPT_HELP, after_help = "Run with --help for the script format.")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: String,
    /// Script file (JSON, or TOML when the name ends in `.toml`) with
    /// `turns` and an optional `default`.
    #[arg(long, conflicts_with_all = ["echo", "repeat"])]
    script: Option<PathBuf>,
    /// Answer every request with the last user message.
    #[arg(long, conflicts_with = "repeat")]
    echo: bool,
    /// Answer every request with this text.
    #[arg(long)]
    repeat: Option<String>,
    /// Delay before the first byte of each answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Delay between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Split text into this many chunks (default: a word per chunk).
    #[arg(long)]
    chunks: Option<usize>,
    /// Model ids listed by GET /v1/models.
    #[arg(long, default_value = "fake-model", value_delimiter = ',')]
    models: Vec<String>,
}

fn load_script(path: &PathBuf) -> anyhow::Result<ScriptFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading script {}", path.display()))?;
    let file = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).with_context(|| format!("parsing TOML script {}", path.display()))?
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("parsing JSON script {}", path.display()))?
    };
    Ok(file)
}

/// Applies the command-line timing options to scripts that set none.
fn tune(mut script: Script, args: &Args) -> Script {
    if script.first_byte_delay_ms == 0 {
        script.first_byte_delay_ms = args.first_token_delay_ms;
    }
    if script.chunk_delay_ms == 0 {
        script.chunk_delay_ms = args.chunk_delay_ms;
    }
    if script.chunks.is_none() {
        script.chunks = args.chunks;
    }
    script
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = match (&args.script, args.echo, &args.repeat) {
        (Some(path), _, _) => load_script(path)?,
        (None, true, _) => ScriptFile {
            turns: Vec::new(),
            default: Some(Script::echo()),
        },
        (None, false, Some(text)) => ScriptFile {
            turns: Vec::new(),
            default: Some(Script::text(text.clone())),
        },
        (None, false, None) => bail!("give one of --script FILE, --echo or --repeat TEXT"),
    };

    let state = FakeState::new(args.models.clone());
    for turn in file.turns {
        state.push(tune(turn, &args));
    }
    state.set_default(file.default.map(|s| tune(s, &args)));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("fake-llm listening on http://{addr}/v1");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    fake_llm::serve(listener, state, shutdown)
        .await
        .context("serving")?;
    Ok(())
}
