//! A scripted turn resolved against the request it answers: the pieces both
//! protocol renderers need, so that they differ only in framing.

use serde_json::Value;

use crate::script::{split, Reply, Script};

/// A resolved answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// Sequence number of the request, used for ids.
    pub seq: u64,
    /// Model named in the request.
    pub model: String,
    /// Text, already split into stream chunks.
    pub text_chunks: Vec<String>,
    /// Tool calls.
    pub calls: Vec<Call>,
    /// A bad payload to send after the text.
    pub malformed: Option<String>,
    /// Prompt tokens to report.
    pub input_tokens: u64,
    /// Completion tokens to report.
    pub output_tokens: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// Call id, without protocol prefix when generated.
    pub id: Option<String>,
    pub name: String,
    pub arguments: Value,
    /// `arguments` serialised and split into stream chunks.
    pub argument_chunks: Vec<String>,
}

impl Answer {
    /// Resolves `script` (which must not be an error reply) for a request
    /// whose last user text is `last_user_text`.
    pub(crate) fn resolve(script: &Script, seq: u64, model: &str, last_user_text: &str) -> Answer {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut malformed = None;
        match &script.reply {
            Reply::Text { text: t } | Reply::CutShort { text: t, .. } => text = t.clone(),
            Reply::ToolCalls { text: t, calls: c } => {
                text = t.clone().unwrap_or_default();
                calls = c
                    .iter()
                    .map(|c| {
                        let serialized = c.arguments.to_string();
                        Call {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            argument_chunks: split(&serialized, Some(script.chunks.unwrap_or(3))),
                            arguments: c.arguments.clone(),
                        }
                    })
                    .collect();
            }
            Reply::Malformed { text: t, bad } => {
                text = t.clone();
                malformed = Some(bad.clone());
            }
            Reply::Echo => text = last_user_text.to_string(),
            Reply::Error { .. } => {}
        }
        let text_chunks = split(&text, script.chunks);
        let produced =
            text_chunks.len() + calls.iter().map(|c| c.argument_chunks.len()).sum::<usize>();
        let (input_tokens, output_tokens) = match script.usage {
            Some(u) => (u.input_tokens, u.output_tokens),
            None => (12, produced.max(1) as u64),
        };
        Answer {
            seq,
            model: model.to_string(),
            text_chunks,
            calls,
            malformed,
            input_tokens,
            output_tokens,
        }
    }

    /// The whole text.
    pub(crate) fn text(&self) -> String {
        self.text_chunks.concat()
    }
}
