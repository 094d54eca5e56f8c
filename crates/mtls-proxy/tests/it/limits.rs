//! Limits: header and body sizes, the connection limit and slow clients.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn oversized_headers_get_431_and_a_record() {
    let (app, _dir) = plain_app("max_header_bytes = 4096").await;
    let client = reqwest::Client::new();
    let ok = client
        .get(app.http_url("/"))
        .header("x-pad", "a".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = client
        .get(app.http_url("/big"))
        .header("x-pad", "a".repeat(6000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 431);
    let rows = app.records("path=/big", 1).await;
    assert_eq!(rows[0]["status"], 431);
    assert_eq!(rows[0]["error"], "headers_too_large");
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_a_length() {
    let (app, _dir) = plain_app("max_body_bytes = 1000").await;
    let client = reqwest::Client::new();
    let ok = client
        .post(app.http_url("/small"))
        .body(vec![b'x'; 900])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let declared = client
        .post(app.http_url("/declared"))
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    // A chunked body has no length up front; it is cut off while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'y'; 200])).collect();
    let stream = futures_util::stream::iter(chunks);
    let chunked = client
        .post(app.http_url("/chunked"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 413);
    for path in ["/declared", "/chunked"] {
        let rows = app.records(&format!("path={path}"), 1).await;
        assert_eq!(rows[0]["error"], "body_too_large", "{path}: {:?}", rows[0]);
    }
}

async fn request_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_connection_limit_refuses_fast_and_spares_open_connections() {
    let (app, _dir) = plain_app("max_connections = 2").await;
    let addr = app.http.unwrap();
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    assert!(request_on(&mut a).await.starts_with("HTTP/1.1 200"));
    assert!(request_on(&mut b).await.starts_with("HTTP/1.1 200"));
    // The third is accepted by the kernel and closed by the proxy at once.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .expect("refusal must be fast");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "third connection was served: {read:?}"
    );
    // The open ones are unaffected.
    assert!(request_on(&mut a).await.starts_with("HTTP/1.1 200"));
    drop(b);
    // Once a slot frees up, new connections are served again.
    let mut served = false;
    for _ in 0..50 {
        let mut d = TcpStream::connect(addr).await.unwrap();
        if d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_ok()
        {
            let mut buf = vec![0u8; 1024];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), d.read(&mut buf)).await
            {
                if n > 0 && buf.starts_with(b"HTTP/1.1 200") {
                    served = true;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a freed slot was never reused");
    let m = app.metrics().await;
    assert!(
        metric(&m, "mtls_proxy_connections_refused_total", &[]) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn slow_clients_and_idle_connections_are_closed() {
    let (app, _dir) = plain_app("header_read_timeout = \"300ms\"\nidle_timeout = \"300ms\"").await;
    let addr = app.http.unwrap();
    // Slowloris: a request head that never ends.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), slow.read(&mut buf))
        .await
        .expect("slow client not cut off");
    // hyper may answer 408 before closing; either way the connection ends.
    if let Ok(n) = n {
        if n > 0 {
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
    // Idle keep-alive: served once, then closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert!(request_on(&mut idle).await.starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(Duration::from_secs(4), idle.read(&mut buf))
        .await
        .expect("idle connection kept open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
