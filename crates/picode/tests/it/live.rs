//! PiCode against a real model server: an OpenAI-compatible llama.cpp server
//! that `scripts/live-llm` starts with a small local model. The fake server
//! proves what PiCode does with well-formed answers; these tests prove that
//! a real server's stream, usage reports and message rules agree with it.
//!
//! They check the protocol, not the quality of the answers: a 135M model
//! writes poor prose and calls tools at random, so nothing here depends on
//! what it says. The tests are `#[ignore]`d so that CI never counts them as
//! passed without a model; `scripts/live-llm` runs them with `--ignored` and
//! sets `PICODE_LIVE_BASE_URL` (and, optionally, `PICODE_LIVE_MODEL`).
//!
//! Each test prints a `live:` line with its figures; the script collects
//! those lines into its report.
//!
//! `forced_tool_choice_yields_the_call` checks that a server honours
//! `ChatRequest::tool_choice` as PiCode sends it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use picode_llm::{
    build_provider, collect, ChatRequest, ContentPart, Message, Provider, ProviderConfig,
    ProviderKind, Role, StopReason, StreamEvent, ToolDef, Usage,
};
use serde_json::json;

use crate::helpers::TestEnv;

/// A generous bound on any one model call: prompt evaluation of PiCode's
/// system prompt on two slow cores takes seconds, not minutes.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The live server, or `None` (with a note) when none was given.
struct Live {
    base_url: String,
    model: String,
    provider: Arc<dyn Provider>,
}

async fn live_server(test: &str) -> Option<Live> {
    let Some(base_url) = std::env::var("PICODE_LIVE_BASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
    else {
        println!("{test}: PICODE_LIVE_BASE_URL is not set; run scripts/live-llm to test against a real model");
        return None;
    };
    let mut cfg = ProviderConfig::new("live", ProviderKind::OpenAi, "pending")
        .with_base_url(base_url.clone());
    cfg.max_retries = 0;
    let model = match std::env::var("PICODE_LIVE_MODEL") {
        Ok(model) if !model.trim().is_empty() => model,
        // The server's own name for its model, which also exercises `models()`.
        _ => build_provider(&cfg)
            .expect("provider config")
            .models()
            .await
            .expect("GET /models on the live server")
            .into_iter()
            .next()
            .expect("the live server lists at least one model"),
    };
    cfg.model = model.clone();
    let provider = build_provider(&cfg).expect("provider config");
    Some(Live {
        base_url,
        model,
        provider,
    })
}

fn request(prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        system: Some("You are a helpful assistant. Answer briefly.".into()),
        messages: vec![Message::user(prompt)],
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..ChatRequest::default()
    }
}

/// One streamed turn as the adapter delivered it, with its timing.
struct Timed {
    deltas: usize,
    text: String,
    usage: Option<Usage>,
    stop: Option<StopReason>,
    ttft: Option<Duration>,
    /// From the first text delta to the last.
    decode: Duration,
    total: Duration,
}

impl Timed {
    /// Generated tokens per second after the first token, so that prompt
    /// evaluation (what the time to first token measures) is not counted
    /// twice. Counts the server's tokens when it reports usage, else text
    /// deltas (llama.cpp sends one per token).
    fn tokens_per_sec(&self) -> (f64, &'static str) {
        let (tokens, source) = match self.usage {
            Some(usage) if !usage.estimated => (usage.output_tokens, "usage"),
            _ => (self.deltas as u64, "deltas"),
        };
        let rate = match self.decode.is_zero() {
            true => 0.0,
            false => tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64(),
        };
        (rate, source)
    }
}

async fn timed_stream(provider: &dyn Provider, req: &ChatRequest) -> Timed {
    let started = Instant::now();
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, provider.stream(req))
        .await
        .expect("the server answers in time")
        .expect("the stream starts");
    let mut turn = Timed {
        deltas: 0,
        text: String::new(),
        usage: None,
        stop: None,
        ttft: None,
        decode: Duration::ZERO,
        total: Duration::ZERO,
    };
    let mut first_token = None;
    while let Some(event) = tokio::time::timeout(CALL_TIMEOUT, stream.next())
        .await
        .expect("the stream keeps flowing")
    {
        let event = event.expect("no stream error");
        assert!(turn.stop.is_none(), "an event after Done: {event:?}");
        match event {
            StreamEvent::TextDelta(delta) => {
                let now = Instant::now();
                let first = *first_token.get_or_insert(now);
                turn.ttft.get_or_insert(now - started);
                turn.decode = now - first;
                turn.deltas += 1;
                turn.text.push_str(&delta);
            }
            StreamEvent::ToolCall { .. } => {}
            StreamEvent::Provider(name) => panic!("a single provider announced {name}"),
            StreamEvent::Usage(u) => {
                assert!(turn.usage.is_none(), "usage reported twice");
                turn.usage = Some(u);
            }
            StreamEvent::Done(stop) => turn.stop = Some(stop),
        }
    }
    turn.total = started.elapsed();
    turn
}

/// (a): the adapter's stream from a real server carries several text
/// deltas and ends with `Done`. Its figures are the benchmark.
#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn stream_has_deltas_and_done() {
    let Some(live) = live_server("stream_has_deltas_and_done").await else {
        return;
    };
    let req = request("Write a short poem about the sea.", 128);
    let turn = timed_stream(live.provider.as_ref(), &req).await;

    let (rate, counted) = turn.tokens_per_sec();
    println!(
        "live: stream model={} deltas={} stop={:?} ttft_ms={} tokens_per_s={rate:.1} (from {counted}) \
         usage={} total_ms={}",
        live.model,
        turn.deltas,
        turn.stop,
        turn.ttft.map_or(0, |t| t.as_millis()),
        turn.usage.map_or("none".to_string(), |u| format!(
            "{}in/{}out",
            u.input_tokens, u.output_tokens
        )),
        turn.total.as_millis(),
    );
    let stop = turn.stop.expect("the stream ended with Done");
    assert!(
        matches!(stop, StopReason::EndTurn | StopReason::MaxTokens),
        "stop reason: {stop:?}"
    );
    assert!(
        turn.deltas > 1,
        "more than one text delta, got {}: {:?}",
        turn.deltas,
        turn.text
    );
    assert!(!turn.text.trim().is_empty(), "the answer has text");
}

/// (b): the stream reports usage, both counts non-zero. PiCode asks for it
/// with `stream_options.include_usage`; cost and compaction depend on it.
/// Servers that ignore the option get an estimate marked `estimated`, which
/// is what llama-cpp-python's server produces; the line printed says which.
#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn stream_reports_usage() {
    let Some(live) = live_server("stream_reports_usage").await else {
        return;
    };
    let turn = timed_stream(live.provider.as_ref(), &request("Say hi.", 16)).await;
    assert!(turn.stop.is_some(), "the stream ended with Done");
    let usage = turn
        .usage
        .expect("the server reported usage in the stream (stream_options.include_usage)");
    println!(
        "live: usage input_tokens={} output_tokens={} estimated={}",
        usage.input_tokens, usage.output_tokens, usage.estimated
    );
    assert!(usage.input_tokens > 0, "input tokens: {usage:?}");
    assert!(usage.output_tokens > 0, "output tokens: {usage:?}");
}

/// A conversation that replays a tool call and its result, the shape of
/// every agent turn after the first. llama.cpp's server rejects assistant
/// messages whose `content` is null, which the fake server cannot show.
#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn tool_call_history_is_accepted() {
    let Some(live) = live_server("tool_call_history_is_accepted").await else {
        return;
    };
    let mut req = request("What is in notes.txt?", 32);
    req.tools = vec![ToolDef {
        name: "read_file".into(),
        description: "Read a file of the project.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        }),
    }];
    req.messages.push(Message {
        role: Role::Assistant,
        content: vec![ContentPart::ToolCall {
            id: "call_1".into(),
            name: "read_file".into(),
            arguments: json!({"path": "notes.txt"}),
        }],
    });
    req.messages
        .push(Message::tool_result("call_1", "alpha\nbeta\n", false));

    let stream = tokio::time::timeout(CALL_TIMEOUT, live.provider.stream(&req))
        .await
        .expect("the server answers in time")
        .expect("the server accepts a tool-call turn and its result");
    let turn = tokio::time::timeout(CALL_TIMEOUT, collect(stream))
        .await
        .expect("the stream finishes in time")
        .expect("the turn completes");
    // Usage is `stream_reports_usage`'s business; this test is about the
    // server accepting the conversation.
    println!(
        "live: tool_history accepted stop={:?} answer_chars={} tool_calls={}",
        turn.stop,
        turn.message.text().chars().count(),
        turn.message.tool_calls().count(),
    );
}

#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn forced_tool_choice_yields_the_call() {
    let Some(live) = live_server("forced_tool_choice_yields_the_call").await else {
        return;
    };
    let mut req = request("Show me hello.txt.", 64);
    req.tools = vec![ToolDef {
        name: "read_file".into(),
        description: "Read a file of the project.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        }),
    }];
    req.tool_choice = Some(picode_llm::ToolChoice::Tool("read_file".into()));
    let stream = tokio::time::timeout(CALL_TIMEOUT, live.provider.stream(&req))
        .await
        .expect("the server answers in time")
        .expect("the server accepts a forced tool choice");
    let turn = tokio::time::timeout(CALL_TIMEOUT, collect(stream))
        .await
        .expect("the stream finishes in time")
        .expect("the turn completes");
    let names: Vec<&str> = turn.message.tool_calls().map(|(_, n, _)| n).collect();
    println!(
        "live: forced_tool_choice calls={names:?} stop={:?}",
        turn.stop
    );
    assert_eq!(names.first(), Some(&"read_file"), "{turn:?}");
}

/// (c): one headless turn through the real binary, configured by a
/// `picode.toml` that points at the live server.
#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn headless_chat_through_the_binary() {
    let Some(live) = live_server("headless_chat_through_the_binary").await else {
        return;
    };
    let env = TestEnv::new();
    // TOML basic strings share JSON's escapes, so a JSON string literal is a
    // safe way to write a model id that may be a file path.
    env.write_user_config(&format!(
        "default_provider = \"live\"\n\
         [providers.live]\n\
         kind = \"openai\"\n\
         base_url = {}\n\
         model = {}\n\
         max_tokens = 64\n\
         max_retries = 0\n\
         context_window = 8192\n",
        json!(live.base_url),
        json!(live.model),
    ));

    let started = Instant::now();
    let output = tokio::time::timeout(
        CALL_TIMEOUT,
        env.command()
            .args([
                "-p",
                "Say hello in one short sentence.",
                "--permission-mode",
                "plan",
                "--max-turns",
                "3",
                "--output-format",
                "json",
            ])
            .output(),
    )
    .await
    .expect("picode finishes in time")
    .expect("run picode");
    let elapsed = started.elapsed();
    let run = crate::helpers::Run::from(output);
    run.assert_code(0);
    let out = run.json();

    let result = out["result"].as_str().unwrap_or_default();
    let input = out["usage"]["input_tokens"].as_u64().unwrap_or(0);
    let output_tokens = out["usage"]["output_tokens"].as_u64().unwrap_or(0);
    println!(
        "live: headless exit=0 status={} answer_chars={} input_tokens={input} \
         output_tokens={output_tokens} tool_calls={} wall_ms={}",
        out["status"],
        result.chars().count(),
        out["tool_calls"].as_array().map_or(0, Vec::len),
        elapsed.as_millis(),
    );
    assert_eq!(out["status"], "completed", "{out:#}");
    assert!(!result.trim().is_empty(), "non-empty answer: {out:#}");
    assert!(input > 0, "input tokens reported: {out:#}");
    assert!(output_tokens > 0, "output tokens reported: {out:#}");
}

/// How often the model reads a file when asked to, through the real binary,
/// per tool protocol. A figure, not a verdict: a 135M model fails most
/// tries, and the point is to see the parsing changes move the number.
/// `PICODE_LIVE_TRIES` sets the tries per protocol (default 10).
#[tokio::test]
#[ignore = "needs a live model: run scripts/live-llm"]
async fn read_file_success_rate() {
    let Some(live) = live_server("read_file_success_rate").await else {
        return;
    };
    let tries: usize = std::env::var("PICODE_LIVE_TRIES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(10);
    const MARKER: &str = "The secret word is PAPAYA.";
    for protocol in ["native", "prompt"] {
        let mut successes = 0;
        let mut calls_seen = 0;
        for _ in 0..tries {
            let env = TestEnv::new();
            env.write("hello.txt", &format!("{MARKER}\n"));
            env.write_user_config(&format!(
                "default_provider = \"live\"\n\
                 [providers.live]\n\
                 kind = \"openai\"\n\
                 base_url = {}\n\
                 model = {}\n\
                 max_tokens = 96\n\
                 max_retries = 0\n\
                 context_window = 8192\n\
                 tool_protocol = \"{protocol}\"\n",
                json!(live.base_url),
                json!(live.model),
            ));
            let output = tokio::time::timeout(
                CALL_TIMEOUT,
                env.command()
                    .args([
                        "-p",
                        "Read the file hello.txt with the read_file tool.",
                        "--permission-mode",
                        "plan",
                        "--max-turns",
                        "2",
                        "--output-format",
                        "json",
                    ])
                    .output(),
            )
            .await
            .expect("picode finishes in time")
            .expect("run picode");
            let run = crate::helpers::Run::from(output);
            assert!(
                run.code == 0 || run.code == 4,
                "exit {}: {}",
                run.code,
                run.stderr
            );
            let out = run.json();
            let calls = out["tool_calls"].as_array().cloned().unwrap_or_default();
            calls_seen += calls.len();
            let read = calls.iter().any(|c| {
                c["name"] == "read_file"
                    && c["is_error"] == false
                    && c["output"].as_str().unwrap_or("").contains(MARKER)
            });
            successes += usize::from(read);
        }
        println!(
            "live: read_file_success protocol={protocol} {successes}/{tries} tool_calls_total={calls_seen}"
        );
    }
}
