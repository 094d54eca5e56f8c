//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): the upstream
//! HTTP/1.1 response parser and body decoders of the crate's own client
//! (`h1`), which products never reach directly.
//!
//! A connection reads only from a socket, so each input goes through a
//! real loopback TCP connection: the fuzzer's bytes are what the upstream
//! answers, and the client reads the head and then the body as a proxied
//! request would. Besides not panicking or hanging, the client must keep
//! the promises the engine relies on, checked here with assertions (a
//! failed one is a crash to the fuzzer):
//!
//! - no hop-by-hop header (`connection`, `transfer-encoding`, `keep-alive`,
//!   ...) reaches the header map, except on a 101, whose upgrade needs them;
//! - a chunked body leaves no `content-length` beside it;
//! - a body framed by length never yields more bytes than the length, and
//!   one that ends without error yields exactly that many;
//! - a decoded body is never longer than what the upstream sent.
//!
//! Not part of the engine's interface: hidden from the docs and used by
//! nothing but the fuzz targets.
#![doc(hidden)]

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::h1::{Conn, Decoder, Outgoing, Stream};

/// The longest one input may take; a hang beyond it is a finding.
const DEADLINE: Duration = Duration::from_secs(5);

/// What reading one response found, for the targets to look at.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The final status, when the head parsed.
    pub status: Option<u16>,
    /// Body bytes decoded.
    pub body_bytes: u64,
    /// Whether the body ended cleanly (rather than with an error).
    pub body_complete: bool,
    /// Whether the connection would go back to the pool.
    pub keep_alive: bool,
}

struct Loopback {
    runtime: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

thread_local! {
    static LOOPBACK: RefCell<Option<Loopback>> = const { RefCell::new(None) };
}

fn with_loopback<T>(f: impl FnOnce(&Loopback) -> T) -> T {
    LOOPBACK.with(|cell| {
        let mut cell = cell.borrow_mut();
        let loopback = cell.get_or_insert_with(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let listener = runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .expect("a loopback listener");
            let addr = listener.local_addr().expect("its address");
            Loopback {
                runtime,
                listener,
                addr,
            }
        });
        f(loopback)
    })
}

/// Sends a GET through a fresh connection to an upstream that answers
/// `response` and then closes, and reads the answer as the proxy would.
pub fn response(response: &[u8]) -> Outcome {
    with_loopback(|lb| {
        lb.runtime.block_on(async {
            let (client, accepted) =
                tokio::join!(TcpStream::connect(lb.addr), lb.listener.accept());
            let client = client.expect("connect to the loopback listener");
            let (mut upstream, _) = accepted.expect("accept on the loopback listener");
            let answer = response.to_vec();
            let writer = tokio::spawn(async move {
                // The client may stop reading early (a bad head); a failed
                // write is fine then.
                let _ = upstream.write_all(&answer).await;
                let _ = upstream.shutdown().await;
                // Keep the socket until the client is done, so that an
                // unread request does not turn into a reset.
                upstream
            });
            let outcome = tokio::time::timeout(DEADLINE, exchange(client, response.len()))
                .await
                .unwrap_or_else(|_| panic!("no answer within {DEADLINE:?}"));
            writer.abort();
            outcome
        })
    })
}

/// Like [`response`], for a chunked body: `body` follows a head that says
/// `transfer-encoding: chunked`.
pub fn chunked(body: &[u8]) -> Outcome {
    let mut input = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(body);
    let outcome = response(&input);
    assert_eq!(outcome.status, Some(200), "the head is valid");
    outcome
}

async fn exchange(client: TcpStream, sent: usize) -> Outcome {
    let mut conn = Conn::new(Stream::Plain(client));
    let mut out = Outgoing::new(crate::body::empty());
    let mut outcome = Outcome::default();
    let Ok(head) = conn
        .exchange(&Method::GET, "/", &HeaderMap::new(), &mut out)
        .await
    else {
        return outcome;
    };
    outcome.status = Some(head.status.as_u16());
    outcome.keep_alive = head.keep_alive;
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(
                !head.headers.contains_key(name),
                "hop-by-hop header {name} kept: {:?}",
                head.headers
            );
        }
    }
    let mut decoder = head.body;
    if matches!(decoder, Decoder::Chunked(_)) {
        assert!(
            !head.headers.contains_key(http::header::CONTENT_LENGTH),
            "content-length kept beside chunked"
        );
    }
    let length = match decoder {
        Decoder::Length(n) => Some(n),
        _ => None,
    };
    loop {
        match poll_fn(|cx| decoder.poll_data(&mut conn, cx)).await {
            Some(Ok(data)) => {
                outcome.body_bytes += data.len() as u64;
                if let Some(n) = length {
                    assert!(outcome.body_bytes <= n, "more body than content-length {n}");
                }
                assert!(
                    outcome.body_bytes <= sent as u64,
                    "decoded {} body bytes from {sent} sent",
                    outcome.body_bytes
                );
            }
            Some(Err(_)) => return outcome,
            None => break,
        }
    }
    outcome.body_complete = true;
    if let Some(n) = length {
        assert_eq!(
            outcome.body_bytes, n,
            "a complete body of content-length {n}"
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points themselves work: they see a valid response whole,
    /// a chunked body decoded, and a broken head refused.
    #[test]
    fn the_fuzz_entry_points_read_responses_through_a_socket() {
        let o = response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            (o.status, o.body_bytes, o.body_complete, o.keep_alive),
            (Some(200), 5, true, true)
        );

        let o = chunked(b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n");
        assert_eq!((o.body_bytes, o.body_complete), (8, true));

        let o = chunked(b"zz\r\nhello\r\n0\r\n\r\n");
        assert!(!o.body_complete);

        let o = response(b"HTTP/1.1 2OO OK\r\n\r\n");
        assert_eq!(o.status, None);

        let o = response(b"HTTP/1.0 200 OK\r\n\r\nuntil close");
        assert_eq!(
            (o.body_bytes, o.body_complete, o.keep_alive),
            (11, true, false)
        );
    }
}
