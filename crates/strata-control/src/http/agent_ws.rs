//! Adapts an axum WebSocket to [`AgentSession`].

use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::AppState;
use crate::agents::{AgentSession, Next, LOGIN_TIMEOUT};

/// Read buffer of an agent's socket. tungstenite's default is 128 KiB per
/// socket, which made nearly all of the control plane's memory with 1,000
/// agents (about 120 KiB each); an agent's messages are a few hundred
/// bytes, and the buffer still grows for a larger one.
pub const AGENT_READ_BUFFER: usize = 4 * 1024;

pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(strata_protocol::MAX_FRAME_BYTES)
        .read_buffer_size(AGENT_READ_BUFFER)
        // Each message goes out when it is sent: commands are rare and
        // small, and waiting to fill a buffer would only delay them.
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve(state, socket))
}

async fn next_queued(outbox: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match outbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn serve(state: AppState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(16);
    let mut session = AgentSession::new(state.control.clone(), out_tx);
    let mut outbox: Option<mpsc::Receiver<String>> = None;
    let login_deadline = tokio::time::sleep(LOGIN_TIMEOUT);
    tokio::pin!(login_deadline);
    loop {
        tokio::select! {
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(WsMessage::Text(text))) => text.to_string(),
                    Some(Ok(WsMessage::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                };
                if session.on_frame(&text, &mut outbox).await == Next::Close {
                    while let Ok(frame) = out_rx.try_recv() {
                        let _ = sink.send(WsMessage::Text(frame.into())).await;
                    }
                    break;
                }
            }
            Some(frame) = out_rx.recv() => {
                if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                    break;
                }
            }
            frame = next_queued(&mut outbox) => match frame {
                Some(frame) => {
                    if sink.send(WsMessage::Text(frame.into())).await.is_err() {
                        break;
                    }
                }
                // A newer session of the same sender replaced this one.
                None => break,
            },
            _ = &mut login_deadline, if session.sender_id().is_none() => {
                tracing::warn!("agent did not log in in time");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    session.closed().await;
}
