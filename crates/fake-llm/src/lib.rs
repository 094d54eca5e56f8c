//! # fake-llm
//!
//! A scripted stand-in for an LLM provider, for PiCode's tests and
//! benchmarks. It speaks the OpenAI Chat Completions and Anthropic Messages
//! protocols, streaming and not, framed byte for byte as the real APIs frame
//! them, and OpenAI's Responses API (event for event, for Codex CLI), and
//! answers each chat request with the next turn of a script: text,
//! tool calls split into chunks, an HTTP error, a stream cut short, a
//! malformed chunk, with delays. It records every request so tests can check
//! what the client sent.
//!
//! What it must not do: depend on PiCode's own crates (it stands for the
//! outside world, so it must not share the client's idea of the protocol),
//! or do anything but follow its script: no model, no real tokenizer.
//!
//! ```no_run
//! # async fn demo() {
//! use fake_llm::{FakeLlm, Script};
//! let fake = FakeLlm::start().await;
//! fake.push(Script::text("Hello there"));
//! // Point a client at fake.base_url() (ends in /v1) ...
//! let bodies = fake.requests();
//! # }
//! ```

mod answer;
mod anthropic;
mod openai;
mod responses;
mod script;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;

pub use script::{Reply, Script, ScriptFile, ScriptUsage, ScriptedCall};
pub use server::{router, serve, FakeState, RecordedRequest};

/// A running fake on a local port; stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    state: Arc<FakeState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FakeLlm {
    /// Starts a fake on `127.0.0.1` with an OS-chosen port. Must be called
    /// inside a Tokio runtime.
    pub async fn start() -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 should work");
        Self::start_on(listener, vec!["fake-model".to_string()])
    }

    /// Starts a fake on an already bound listener, listing `models`.
    pub fn start_on(listener: tokio::net::TcpListener, models: Vec<String>) -> FakeLlm {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let state = FakeState::new(models);
        let (tx, rx) = oneshot::channel();
        let served = state.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(err) = serve(listener, served, shutdown).await {
                tracing::error!(error = %err, "fake-llm server failed");
            }
        });
        FakeLlm {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL for either protocol.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a turn.
    pub fn push(&self, script: Script) {
        self.state.push(script);
    }

    /// Sets the turn served whenever the queue is empty.
    pub fn set_default(&self, script: Option<Script>) {
        self.state.set_default(script);
    }

    /// Turns not yet served.
    pub fn pending(&self) -> usize {
        self.state.pending()
    }

    /// Bodies of the chat requests received (`POST`s), in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.state
            .recorded()
            .into_iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.body)
            .collect()
    }

    /// Every request received, with method, path and headers.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.state.recorded()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
