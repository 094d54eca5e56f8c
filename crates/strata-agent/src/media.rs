//! Running streams on the agent: one [`sender::Stream`] each, started and
//! stopped by the control plane's `stream.start`/`stream.stop`, reported by
//! `stream.stats` once a second.
//!
//! Which paths a stream takes is the agent's own configuration (its
//! links: a name, optionally the receiver's address as reached over that
//! path, a weight); the control plane names only the receiver's host and
//! port, which every link without an address of its own uses.

use std::collections::HashMap;

use strata_protocol::{StreamStart, StreamStats};

use crate::sender::{LinkTarget, SendConfig, Source, Stream};

/// One configured link: `NAME[=HOST[:PORT]][@WEIGHT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
}

impl LinkSpec {
    pub fn parse(text: &str) -> Result<LinkSpec, String> {
        let (rest, weight) = match text.rsplit_once('@') {
            Some((rest, w)) => (
                rest,
                w.parse::<u32>()
                    .map_err(|_| format!("link {text:?}: the weight is not a number"))?,
            ),
            None => (text, 5),
        };
        let (name, address) = match rest.split_once('=') {
            Some((name, address)) => (name, Some(address)),
            None => (rest, None),
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "link {text:?}: the name must be letters, digits, - or _"
            ));
        }
        let (host, port) = match address {
            None => (None, None),
            Some(a) => match a.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (
                    Some(h.to_owned()),
                    Some(
                        p.parse::<u16>()
                            .map_err(|_| format!("link {text:?}: bad port"))?,
                    ),
                ),
                _ => (Some(a.to_owned()), None),
            },
        };
        Ok(LinkSpec {
            name: name.to_owned(),
            host,
            port,
            weight,
        })
    }
}

/// How the agent encodes and sends, for every stream.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    pub links: Vec<LinkSpec>,
    pub buffer_ms: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub start_kbps: u32,
    pub min_kbps: u32,
    pub max_kbps: u32,
    pub packet_trace: Option<std::path::PathBuf>,
}

impl Default for MediaOptions {
    fn default() -> MediaOptions {
        MediaOptions {
            links: Vec::new(),
            buffer_ms: 1000,
            width: 1280,
            height: 720,
            fps: 25,
            start_kbps: 2500,
            min_kbps: 300,
            max_kbps: 6000,
            packet_trace: None,
        }
    }
}

impl MediaOptions {
    /// The sender's settings for one stream.
    pub fn send_config(
        &self,
        receiver_host: &str,
        receiver_port: u16,
        psk: [u8; 32],
        source: Source,
    ) -> SendConfig {
        let links = if self.links.is_empty() {
            vec![LinkTarget {
                name: "default".into(),
                address: format!("{receiver_host}:{receiver_port}"),
                weight: 5,
            }]
        } else {
            self.links
                .iter()
                .map(|l| LinkTarget {
                    name: l.name.clone(),
                    address: format!(
                        "{}:{}",
                        l.host.as_deref().unwrap_or(receiver_host),
                        l.port.unwrap_or(receiver_port)
                    ),
                    weight: l.weight,
                })
                .collect()
        };
        SendConfig {
            source,
            links,
            psk,
            buffer_ms: self.buffer_ms,
            width: self.width,
            height: self.height,
            fps: self.fps,
            start_kbps: self.start_kbps,
            min_kbps: self.min_kbps,
            max_kbps: self.max_kbps,
            packet_trace: self.packet_trace.clone(),
        }
    }
}

/// Reads a hex 32-byte key.
pub fn parse_psk(hex_text: &str) -> Result<[u8; 32], String> {
    let key = hex::decode(hex_text.trim()).map_err(|_| "the key is not hex".to_owned())?;
    key.try_into()
        .map_err(|k: Vec<u8>| format!("the key is {} bytes, expected 32", k.len()))
}

/// The streams this agent is sending.
pub struct Streams {
    options: MediaOptions,
    running: HashMap<String, Stream>,
}

impl Streams {
    pub fn new(options: MediaOptions) -> Streams {
        Streams {
            options,
            running: HashMap::new(),
        }
    }

    /// Starts a stream, or restarts it with a new key or address.
    pub async fn start(&mut self, start: &StreamStart) -> Result<(), String> {
        let psk = parse_psk(&start.psk)?;
        let source = Source::parse(start.input.as_deref())?;
        self.stop(&start.stream_id);
        let config =
            self.options
                .send_config(&start.receiver.host, start.receiver.port, psk, source);
        let stream_id = start.stream_id.clone();
        let stream = tokio::task::spawn_blocking(move || Stream::start(&stream_id, config))
            .await
            .map_err(|e| e.to_string())??;
        self.running.insert(start.stream_id.clone(), stream);
        Ok(())
    }

    pub fn stop(&mut self, stream_id: &str) -> bool {
        // Dropping a stream stops its pipeline and joins its threads.
        self.running.remove(stream_id).is_some()
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.running.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The latest stats, one entry per running stream that has any.
    pub fn stats(&mut self) -> Vec<StreamStats> {
        let mut out: Vec<StreamStats> = self.running.values().filter_map(Stream::stats).collect();
        out.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        for stream in self.running.values() {
            for e in stream.take_errors() {
                tracing::warn!(stream_id = %stream.id(), "{e}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_specs() {
        assert_eq!(
            LinkSpec::parse("wwan0").unwrap(),
            LinkSpec {
                name: "wwan0".into(),
                host: None,
                port: None,
                weight: 5
            }
        );
        let l = LinkSpec::parse("a=10.1.0.2:7000@3").unwrap();
        assert_eq!(
            (l.host.as_deref(), l.port, l.weight),
            (Some("10.1.0.2"), Some(7000), 3)
        );
        let l = LinkSpec::parse("b=rx.example").unwrap();
        assert_eq!((l.host.as_deref(), l.port), (Some("rx.example"), None));
        assert!(LinkSpec::parse("bad name").is_err());
        assert!(LinkSpec::parse("a@x").is_err());
    }

    #[test]
    fn links_default_to_the_receivers_address() {
        let mut options = MediaOptions::default();
        let c = options.send_config("rx", 7000, [0; 32], Source::Pattern("smpte".into()));
        assert_eq!(c.links[0].address, "rx:7000");
        options.links = vec![
            LinkSpec::parse("a=10.1.0.2@3").unwrap(),
            LinkSpec::parse("b").unwrap(),
        ];
        let c = options.send_config("rx", 7000, [0; 32], Source::Pattern("smpte".into()));
        let addresses: Vec<&str> = c.links.iter().map(|l| l.address.as_str()).collect();
        assert_eq!(addresses, ["10.1.0.2:7000", "rx:7000"]);
    }
}
