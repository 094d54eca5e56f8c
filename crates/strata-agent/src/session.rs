//! The agent's session with the control plane, and the reconnect loop
//! around it.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use strata_protocol::{
    decode, encode, Ack, AuthHello, AuthResponse, DeviceStatus, ErrorCode, ErrorReply, Frame,
    Input, Interface, Message,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::backoff::reconnect_delay;
use crate::identity::{Enrolment, Identity};
use crate::media::Streams;
use crate::AgentError;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    pub hostname: String,
    /// How often running streams report stats.
    pub stats_interval: Duration,
    /// Links, encoding and RIST settings for every stream.
    pub media: crate::media::MediaOptions,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Conn {
    ws: Ws,
    next_id: u64,
}

impl Conn {
    async fn send(&mut self, message: &Message) -> Result<(), AgentError> {
        self.next_id += 1;
        let frame = encode(&format!("a{}", self.next_id), now_ms(), message);
        self.ws
            .send(WsMessage::text(frame))
            .await
            .map_err(|e| AgentError::Connect(e.to_string()))
    }

    /// The next decoded frame; protocol errors are answered and skipped.
    async fn recv(&mut self) -> Result<Frame, AgentError> {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .ok_or_else(|| AgentError::Connect("connection closed".into()))?
                .map_err(|e| AgentError::Connect(e.to_string()))?;
            let text = match msg {
                WsMessage::Text(t) => t.to_string(),
                WsMessage::Close(_) => {
                    return Err(AgentError::Connect("closed by the control plane".into()))
                }
                _ => continue,
            };
            match decode(&text) {
                Ok(frame) => return Ok(frame),
                Err(rejected) => {
                    tracing::warn!(error = %rejected.error, "unreadable frame from the control plane");
                    let reply = rejected.error.reply(rejected.id);
                    self.send(&Message::Error(reply)).await?;
                }
            }
        }
    }
}

fn ws_url(control_url: &str) -> String {
    let base = control_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/agent/ws")
}

/// Connects and logs in; returns the connection and the heartbeat period.
async fn login(enrolment: &Enrolment, identity: &Identity) -> Result<(Conn, Duration), AgentError> {
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(&enrolment.control_url))
        .await
        .map_err(|e| AgentError::Connect(e.to_string()))?;
    let mut conn = Conn { ws, next_id: 0 };
    conn.send(&Message::AuthHello(AuthHello {
        sender_id: enrolment.sender_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }))
    .await?;
    let challenge = match conn.recv().await?.message {
        Message::AuthChallenge(c) => c,
        Message::Error(e) => return Err(AgentError::Login(e.message)),
        other => {
            return Err(AgentError::Protocol(format!(
                "expected auth.challenge, got {}",
                other.kind()
            )))
        }
    };
    conn.send(&Message::AuthResponse(AuthResponse {
        signature: identity.sign_challenge(&enrolment.sender_id, &challenge.nonce),
    }))
    .await?;
    match conn.recv().await?.message {
        Message::AuthOk(ok) => Ok((
            conn,
            Duration::from_secs(u64::from(ok.heartbeat_secs.max(1))),
        )),
        Message::Error(e) => Err(AgentError::Login(e.message)),
        other => Err(AgentError::Protocol(format!(
            "expected auth.ok, got {}",
            other.kind()
        ))),
    }
}

/// The addresses of each interface, from getifaddrs.
fn addresses() -> std::collections::HashMap<String, Vec<String>> {
    let mut out: std::collections::HashMap<String, Vec<String>> = Default::default();
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for entry in all {
        let Some(addr) = entry.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().to_string()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().to_string()
        } else {
            continue;
        };
        out.entry(entry.interface_name).or_default().push(ip);
    }
    out
}

fn interfaces() -> Vec<Interface> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut addresses = addresses();
    let mut out: Vec<Interface> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let state = std::fs::read_to_string(e.path().join("operstate")).unwrap_or_default();
            Interface {
                up: state.trim() == "up" || name == "lo",
                addresses: addresses.remove(&name).unwrap_or_default(),
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn status(options: &Options, streams: &Streams) -> Message {
    Message::DeviceStatus(DeviceStatus {
        hostname: options.hostname.clone(),
        interfaces: interfaces(),
        inputs: vec![Input {
            name: "test-pattern".into(),
            kind: "pattern".into(),
        }],
        running_streams: streams.ids(),
    })
}

/// One logged-in session, until the connection drops.
async fn session(
    mut conn: Conn,
    mut heartbeat: Duration,
    options: &Options,
    streams: &mut Streams,
) -> Result<(), AgentError> {
    conn.send(&status(options, streams)).await?;
    let mut beat = tokio::time::interval(heartbeat);
    beat.tick().await;
    let mut stats = tokio::time::interval(options.stats_interval);
    loop {
        tokio::select! {
            _ = beat.tick() => conn.send(&status(options, streams)).await?,
            _ = stats.tick() => {
                for s in streams.stats() {
                    conn.send(&Message::StreamStats(s)).await?;
                }
            }
            frame = conn.recv() => {
                let frame = frame?;
                let result = match frame.message {
                    Message::StreamStart(start) => {
                        tracing::info!(stream_id = %start.stream_id, receiver = %format!("{}:{}", start.receiver.host, start.receiver.port), "starting stream");
                        Some(streams.start(&start).await)
                    }
                    Message::StreamStop(stop) => {
                        tracing::info!(stream_id = %stop.stream_id, "stopping stream");
                        streams.stop(&stop.stream_id);
                        Some(Ok(()))
                    }
                    Message::ConfigUpdate(update) => {
                        if let Some(secs) = update.heartbeat_secs.filter(|s| *s > 0) {
                            let period = Duration::from_secs(u64::from(secs));
                            if period != heartbeat {
                                heartbeat = period;
                                beat = tokio::time::interval(heartbeat);
                                beat.tick().await;
                            }
                        }
                        Some(Ok(()))
                    }
                    Message::Error(e) => {
                        tracing::warn!(code = ?e.code, message = %e.message, "control plane reported an error");
                        None
                    }
                    other => {
                        conn.send(&Message::Error(ErrorReply {
                            in_reply_to: Some(frame.id.clone()),
                            code: ErrorCode::Unexpected,
                            message: format!("{} is not sent to agents", other.kind()),
                        }))
                        .await?;
                        None
                    }
                };
                if let Some(result) = result {
                    let ack = match result {
                        Ok(()) => Ack { in_reply_to: frame.id, ok: true, error: None },
                        Err(e) => Ack { in_reply_to: frame.id, ok: false, error: Some(e) },
                    };
                    conn.send(&Message::Ack(ack)).await?;
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves: logs in, runs a session,
/// and after any failure waits 1, 2, 4 ... 30 s before trying again (back
/// to 1 s after a successful login).
pub async fn run(options: Options, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let identity = Identity::load_or_create(&options.state_dir)?;
    let enrolment = Enrolment::load(&options.state_dir)?;
    let mut streams = Streams::new(options.media.clone());
    let mut attempt = 0u32;
    tokio::pin!(shutdown);
    loop {
        let mut logged_in = false;
        let round = async {
            let (conn, heartbeat) = login(&enrolment, &identity).await?;
            logged_in = true;
            tracing::info!(sender_id = %enrolment.sender_id, "logged in");
            session(conn, heartbeat, &options, &mut streams).await
        };
        let result = tokio::select! {
            r = round => r,
            _ = &mut shutdown => return Ok(()),
        };
        match result {
            Err(AgentError::Login(reason)) => {
                tracing::warn!(%reason, "login refused");
            }
            Err(e) => tracing::warn!(error = %e, "connection lost"),
            Ok(()) => {}
        }
        // A session that got as far as logging in resets the backoff.
        if logged_in {
            attempt = 0;
        }
        let delay = reconnect_delay(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wss_is_supported() {
        // A closed port: the attempt must fail on the connection, not on a
        // missing TLS implementation.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = tokio_tungstenite::connect_async(format!("wss://127.0.0.1:{port}/agent/ws"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, tokio_tungstenite::tungstenite::Error::Io(_)),
            "{err:?}"
        );
    }

    #[test]
    fn loopback_is_reported_with_its_address() {
        let lo = interfaces()
            .into_iter()
            .find(|i| i.name == "lo")
            .expect("a loopback interface");
        assert!(lo.up);
        assert!(lo.addresses.iter().any(|a| a == "127.0.0.1"), "{lo:?}");
    }

    #[test]
    fn ws_url_follows_the_scheme() {
        assert_eq!(ws_url("http://h:1/"), "ws://h:1/agent/ws");
        assert_eq!(ws_url("https://h"), "wss://h/agent/ws");
    }
}
