//! A small Server-Sent Events parser, written to the WHATWG event-stream
//! rules: lines end in `\r\n`, `\n` or `\r`; `data:` lines accumulate with
//! `\n` between them; lines starting with `:` are comments; a blank line
//! dispatches the event. Bytes may be split anywhere, including inside a
//! `\r\n` pair or a multi-byte character, so the parser keeps what it has not
//! yet seen a line end for.
//!
//! Why our own and not `eventsource-stream` or `sse-stream`: those wrap the
//! response's byte stream, while the adapters' `drive` loop (`stream.rs`)
//! feeds each chunk to this push parser and, when the body ends, flushes an
//! unterminated last event and asks the decoder whether the stream ended
//! properly: the cut-stream detection that errors and the fallback chain
//! rely on. A push parser keeps that in one loop; a wrapping stream would
//! need the same end-of-body handling around it. The parser is small (it
//! skips `id:` and `retry:`, which matter only for browser reconnection)
//! and its tests split the bytes at every point. A stated reason, not a
//! measured one.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any (Anthropic names every event; OpenAI none).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser; feed it bytes as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// A `\r` ended the previous line, so a `\n` right after it is the same
    /// line ending and must be skipped, even if it comes in the next chunk.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes and returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    /// Signals end of input. A final event without its blank line is still
    /// returned, since some servers omit the last one; callers decide whether
    /// the stream as a whole was complete.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut events);
        }
        self.end_line(&mut events);
        events.pop()
    }

    /// Whether some bytes are buffered that did not form an event yet.
    pub fn has_pending(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                events.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.has_data = false;
            } else {
                // A blank line with no data resets the event name, per spec.
                self.event = None;
            }
            return;
        }
        // Splitting happens only at ASCII line ends, so a whole line holds
        // whole characters; invalid UTF-8 from a broken server is replaced
        // rather than failing the parse, and then fails as malformed JSON.
        let line = String::from_utf8_lossy(&line);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            // `id` and `retry` matter for browser reconnection only.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_bytewise(input: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for b in input {
            out.extend(parser.push(std::slice::from_ref(b)));
        }
        out.extend(parser.finish());
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn openai_style_stream_fed_one_byte_at_a_time() {
        let input = "data: {\"a\":1}\n\ndata: {\"b\":\"é\"}\n\ndata: [DONE]\n\n";
        assert_eq!(
            feed_bytewise(input.as_bytes()),
            vec![
                ev(None, "{\"a\":1}"),
                ev(None, "{\"b\":\"é\"}"),
                ev(None, "[DONE]")
            ]
        );
    }

    #[test]
    fn crlf_cr_comments_event_names_and_multiline_data() {
        let input = b": keep-alive\r\n\r\nevent: ping\r\ndata: {}\r\n\r\nevent: x\rdata: one\rdata:two\r\rdata\n\n";
        assert_eq!(
            feed_bytewise(input),
            vec![
                ev(Some("ping"), "{}"),
                ev(Some("x"), "one\ntwo"),
                ev(None, ""),
            ]
        );
    }

    #[test]
    fn chunk_boundaries_anywhere_give_the_same_events() {
        let input = b"event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n: c\n\ndata: a\ndata: b\n\n";
        let whole = {
            let mut p = SseParser::new();
            let mut v = p.push(input);
            v.extend(p.finish());
            v
        };
        for split in 0..input.len() {
            let mut p = SseParser::new();
            let mut v = p.push(&input[..split]);
            v.extend(p.push(&input[split..]));
            v.extend(p.finish());
            assert_eq!(v, whole, "split at {split}");
        }
        assert_eq!(whole.len(), 2);
    }

    #[test]
    fn unterminated_last_event_is_returned_by_finish() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: tail").is_empty());
        assert!(p.has_pending());
        assert_eq!(p.finish(), Some(ev(None, "tail")));
    }
}
