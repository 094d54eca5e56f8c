//! The part of streaming shared by every adapter: reading the response body,
//! splitting it into SSE events, handing those to the protocol's decoder, and
//! post-processing text (reasoning removal, tool calls written as text).

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::config::ToolProtocol;
use crate::error::LlmError;
use crate::model::{ChatRequest, EventStream, StopReason, StreamEvent, ToolDef};
use crate::sse::{SseEvent, SseParser};
use crate::text_tools::{generate_call_id, parse_tool_calls, TextFilter};

/// One provider's streaming protocol. Decoders push events in the order the
/// caller should see them and push `Done` when the protocol says the answer
/// is complete.
pub(crate) trait Decoder: Send + 'static {
    /// Handles one SSE event.
    fn on_event(&mut self, event: SseEvent, out: &mut Vec<StreamEvent>) -> Result<(), LlmError>;

    /// Handles the end of the body without a `Done`: finishes the turn if
    /// the protocol allows (the stop reason was already seen), else fails.
    fn on_eof(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), LlmError>;
}

/// How text is post-processed.
pub(crate) struct TextOptions {
    /// Look for tool calls in the text when no native call arrived. Set when
    /// tools were offered.
    pub text_tool_calls: bool,
    /// Names of the offered tools.
    pub known_tools: Vec<String>,
    /// The offered tools, for fitting arguments to their schemas.
    pub tools: Vec<ToolDef>,
}

impl TextOptions {
    /// A call with its arguments fitted to the tool's schema (see
    /// [`crate::fit_arguments`]); calls of unknown tools pass unchanged.
    fn fitted(&self, name: &str, mut arguments: serde_json::Value) -> serde_json::Value {
        if let Some(tool) = self.tools.iter().find(|t| t.name == name) {
            crate::pythonic::fit_arguments(&mut arguments, tool);
        }
        arguments
    }
}

impl TextOptions {
    /// What every adapter does first: decide how to read tool calls out of
    /// text, and rewrite the request for the prompt-based tool protocol.
    pub(crate) fn prepare(
        req: &ChatRequest,
        protocol: ToolProtocol,
    ) -> (TextOptions, std::borrow::Cow<'_, ChatRequest>) {
        let text = TextOptions {
            text_tool_calls: !req.tools.is_empty(),
            known_tools: req.tools.iter().map(|t| t.name.clone()).collect(),
            tools: req.tools.clone(),
        };
        let req = match protocol {
            ToolProtocol::Native => std::borrow::Cow::Borrowed(req),
            ToolProtocol::Prompt => std::borrow::Cow::Owned(crate::prompt_tools::apply(req)),
        };
        (text, req)
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

struct State<D> {
    provider: String,
    body: Body,
    parser: SseParser,
    decoder: D,
    post: PostProcess,
    queue: VecDeque<Result<StreamEvent, LlmError>>,
    finished: bool,
}

/// Turns a successful streaming response into an [`EventStream`]. The
/// response body is owned by the stream, so dropping the stream closes the
/// connection.
pub(crate) fn drive<D: Decoder>(
    provider: &str,
    resp: reqwest::Response,
    decoder: D,
    text: TextOptions,
) -> EventStream {
    let state = State {
        provider: provider.to_string(),
        body: Box::pin(resp.bytes_stream()),
        parser: SseParser::new(),
        decoder,
        post: PostProcess::new(text),
        queue: VecDeque::new(),
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, st));
            }
            if st.finished {
                return None;
            }
            let mut raw = Vec::new();
            let step = match st.body.next().await {
                Some(Ok(bytes)) => st
                    .parser
                    .push(&bytes)
                    .into_iter()
                    .try_for_each(|ev| st.decoder.on_event(ev, &mut raw)),
                Some(Err(err)) => {
                    st.finished = true;
                    Err(LlmError::Stream(format!(
                        "{}: stream ended before completion: {}",
                        st.provider,
                        crate::retry::error_chain(&err)
                    )))
                }
                None => {
                    st.finished = true;
                    let tail = st.parser.finish();
                    tail.into_iter()
                        .try_for_each(|ev| st.decoder.on_event(ev, &mut raw))
                        .and_then(|()| {
                            if raw.iter().any(|e| matches!(e, StreamEvent::Done(_))) {
                                Ok(())
                            } else {
                                st.decoder.on_eof(&mut raw)
                            }
                        })
                }
            };
            // Events decoded before an error still reach the caller; an
            // error after the end marker is ignored along with the rest.
            let mut done = false;
            for event in raw {
                let is_done = matches!(event, StreamEvent::Done(_));
                st.post.push(event, &mut st.queue);
                if is_done {
                    done = true;
                    break;
                }
            }
            if done {
                st.finished = true;
            } else if let Err(err) = step {
                st.queue.push_back(Err(err));
                st.finished = true;
            }
        }
    }))
}

/// Reasoning removal and text tool-call recovery, applied to any decoder's
/// output.
struct PostProcess {
    options: TextOptions,
    filter: TextFilter,
    raw_text: String,
    native_calls: bool,
}

impl PostProcess {
    fn new(options: TextOptions) -> Self {
        PostProcess {
            filter: TextFilter::new(options.text_tool_calls),
            options,
            raw_text: String::new(),
            native_calls: false,
        }
    }

    fn push(&mut self, event: StreamEvent, out: &mut VecDeque<Result<StreamEvent, LlmError>>) {
        match event {
            StreamEvent::TextDelta(delta) => {
                self.raw_text.push_str(&delta);
                let visible = self.filter.push(&delta);
                if !visible.is_empty() {
                    out.push_back(Ok(StreamEvent::TextDelta(visible)));
                }
            }
            StreamEvent::ToolCall {
                id,
                name,
                arguments,
            } => {
                self.native_calls = true;
                let arguments = self.options.fitted(&name, arguments);
                out.push_back(Ok(StreamEvent::ToolCall {
                    id,
                    name,
                    arguments,
                }));
            }
            StreamEvent::Usage(_) | StreamEvent::Provider(_) => out.push_back(Ok(event)),
            StreamEvent::Done(mut stop) => {
                let tail = self.filter.finish();
                if !tail.is_empty() {
                    out.push_back(Ok(StreamEvent::TextDelta(tail)));
                }
                if self.options.text_tool_calls && !self.native_calls {
                    let parsed = parse_tool_calls(&self.raw_text, &self.options.known_tools);
                    if !parsed.calls.is_empty() {
                        stop = StopReason::ToolUse;
                    }
                    // Usage, when already sent, came before the calls; the
                    // order among non-Done events carries no meaning.
                    for call in parsed.calls {
                        let arguments = self.options.fitted(&call.name, call.arguments);
                        out.push_back(Ok(StreamEvent::ToolCall {
                            id: generate_call_id(),
                            name: call.name,
                            arguments,
                        }));
                    }
                }
                out.push_back(Ok(StreamEvent::Done(stop)));
            }
        }
    }
}
