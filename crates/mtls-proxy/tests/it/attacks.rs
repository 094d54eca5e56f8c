//! The conformance and attack suite: what an attacker sends to make the
//! proxy and its upstream disagree about a request (its host, its path, its
//! framing, who sent it), and what a broken upstream sends back. Each test
//! speaks raw bytes where a client library would tidy them up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Two routes on the plain listener: `/admin` to the `admin` backend and
/// everything else to `public`, plus `admin.internal` by host.
async fn two_routes(extra_route: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let admin = named_backend("admin").await;
    let public = named_backend("public").await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstreams = [\"{a}\"]\n{extra_route}\n\
             [[routes]]\nname = \"internal\"\nhost = \"admin.internal\"\nupstreams = [\"{a}\"]\n\
             [[routes]]\nname = \"public\"\nupstreams = [\"{p}\"]\n",
            a = admin.url,
            p = public.url,
        ),
    );
    (spawn_app(dir.path(), &config).await, dir)
}

/// Sends raw bytes, half-closes nothing, and reads until the proxy closes
/// or `wait` passes; returns what came back.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request with `Connection: close`; the whole response.
async fn send(app: &TestApp, head: &str) -> String {
    raw(app.http.unwrap(), head.as_bytes(), Duration::from_secs(5)).await
}

fn status(resp: &str) -> u16 {
    resp.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

/// The JSON the echo backend answered with.
fn echoed(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn a_request_has_exactly_one_authority() {
    let (app, _dir) = two_routes("").await;
    let cases = [
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
            "duplicate_host",
        ),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "missing_host"),
        (
            "GET http://admin.internal/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
            "host_mismatch",
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@admin.internal\r\nConnection: close\r\n\r\n",
            "invalid_host",
        ),
    ];
    for (request, reason) in cases {
        let resp = send(&app, request).await;
        assert_eq!(status(&resp), 400, "{request:?} gave {resp}");
        assert!(!resp.contains("\"backend\""), "reached a backend: {resp}");
        let rows = app
            .records_where("status=4xx", |r| r["error"] == reason)
            .await;
        assert!(!rows.is_empty(), "no record with reason {reason}");
    }
}

#[tokio::test]
async fn hosts_are_matched_normalised_and_sent_upstream_as_routed() {
    let (app, _dir) = two_routes("").await;
    let resp = send(&app, &get("/x", "ADMIN.Internal.:80")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = echoed(&resp);
    assert_eq!(body["backend"], "admin");
    assert_eq!(body["headers"]["host"], "ADMIN.Internal.:80");
    // The absolute form routes on its authority, and the upstream gets it.
    let resp = send(
        &app,
        "GET http://admin.internal/y HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echoed(&resp)["backend"], "admin");
}

#[tokio::test]
async fn path_tricks_reach_the_route_that_judges_what_the_upstream_sees() {
    let (app, _dir) = two_routes("").await;
    for (path, backend, upstream_path) in [
        ("/public/../admin/x", "admin", "/admin/x"),
        ("/%61dmin", "admin", "/admin"),
        ("//admin", "admin", "/admin"),
        ("/./admin/./x", "admin", "/admin/x"),
        ("/public/%2e%2e/admin", "admin", "/admin"),
        ("/admin;jsessionid=1/x", "admin", "/admin;jsessionid=1/x"),
        ("/administrator", "public", "/administrator"),
        ("/Admin", "public", "/Admin"),
    ] {
        let resp = send(&app, &get(path, "a.test")).await;
        assert_eq!(status(&resp), 200, "{path}: {resp}");
        let body = echoed(&resp);
        assert_eq!(body["backend"], backend, "{path}");
        assert_eq!(body["path"], upstream_path, "{path}");
    }
    for (path, reason) in [
        ("/../admin", "path_climbs_above_root"),
        ("/%2e%2e/%2e%2e/etc/passwd", "path_climbs_above_root"),
        ("/admin%2fsecret", "path_encoded_slash"),
        ("/admin%5Csecret", "path_encoded_slash"),
        ("/a%00b", "path_encoded_nul"),
    ] {
        let resp = send(&app, &get(path, "a.test")).await;
        assert_eq!(status(&resp), 400, "{path}: {resp}");
        assert!(!resp.contains("\"backend\""), "{path} reached a backend");
        let rows = app
            .records_where("status=4xx", |r| r["error"] == reason)
            .await;
        assert!(!rows.is_empty(), "no record for {path}");
    }
}

#[tokio::test]
async fn a_route_may_opt_in_to_unusual_paths_and_to_the_original_path() {
    let (app, _dir) =
        two_routes("allow_unusual_paths = true\nupstream_path = \"original\"\n").await;
    let resp = send(&app, &get("/admin/a%2Fb/../c", "a.test")).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let body = echoed(&resp);
    assert_eq!(body["backend"], "admin");
    // axum decodes nothing in the path: this is what went on the wire.
    assert_eq!(body["path"], "/admin/a%2Fb/../c");
}

/// Each smuggling shape is refused, or framed one way only: the proxy never
/// forwards a request it did not itself parse as one.
#[tokio::test]
async fn request_smuggling_shapes_are_refused() {
    let (app, _dir) = two_routes("").await;
    let smuggled = "GET /admin/smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let shapes = [
        // CL.TE and TE.CL.
        format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Two different lengths.
        format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // A chunk size that is not hex, and one that overflows.
        format!("POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"),
        format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff1\r\n{smuggled}"
        ),
        // An obsolete line fold hiding a header.
        format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // A transfer coding that is not chunked last.
        format!(
            "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for shape in &shapes {
        let resp = raw(app.http.unwrap(), shape.as_bytes(), Duration::from_secs(3)).await;
        let statuses: Vec<&str> = resp.matches("HTTP/1.1 ").collect();
        assert!(
            resp.starts_with("HTTP/1.1 400")
                || resp.is_empty()
                || !resp.contains("\"backend\":\"admin\""),
            "{shape:?} gave {resp}"
        );
        assert!(statuses.len() <= 2, "{shape:?} gave {resp}");
    }
    // Whatever the shapes did, the admin backend never saw the smuggled path.
    let rows = app.records("path=/admin/smuggled", 0).await;
    assert!(
        rows.is_empty(),
        "a smuggled request was forwarded: {rows:?}"
    );
}

#[tokio::test]
async fn bare_line_feeds_are_framed_one_way_only() {
    let (app, _dir) = two_routes("").await;
    // Bare LF line ends: either refused or read as the one request they
    // spell; never as two.
    let resp = send(&app, "GET /x HTTP/1.1\nHost: a.test\nConnection: close\n\n").await;
    assert!(matches!(status(&resp), 200 | 400), "{resp}");
    assert!(resp.matches("HTTP/1.1 ").count() == 1, "{resp}");
}

#[tokio::test]
async fn spoofed_forwarding_and_identity_headers_never_reach_the_upstream() {
    let (app, _dir) = two_routes(
        "[routes.headers]\nremove = [\"forwarded\", \"x-forwarded-host\", \"x-real-ip\", \"x-client-cert-subject\"]\n",
    )
    .await;
    let resp = send(
        &app,
        "GET /admin HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\
         X-Forwarded-Host: admin.internal\r\nX-Real-IP: 10.0.0.1\r\nX-Client-Cert-Subject: CN=admin\r\n\
         X-Forwarded-Client-Cert: Hash=00;URI=spiffe://corp/admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    let headers = &echoed(&resp)["headers"];
    for name in [
        "forwarded",
        "x-forwarded-host",
        "x-real-ip",
        "x-client-cert-subject",
        "x-forwarded-client-cert",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the upstream: {headers}"
        );
    }
    // The client's own address is appended, so the last hop is the truth.
    assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
}

#[tokio::test]
async fn a_body_less_request_never_carries_the_client_s_length() {
    let (app, _dir) = two_routes("").await;
    let resp = send(
        &app,
        "GET /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let headers = &echoed(&resp)["headers"];
    assert!(headers.get("content-length").is_none(), "{headers}");
}

/// An upstream that answers every request with `reply` and counts the
/// connections it accepted.
async fn scripted_upstream(reply: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (url, accepted)
}

/// Sends two requests one after the other through a route to `reply`'s
/// upstream; returns the first answer and how many upstream connections
/// they took.
async fn two_requests_to(reply: &'static str) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (url, accepted) = scripted_upstream(reply).await;
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"s\"\nupstreams = [\"{url}\"]\n"),
    );
    let app = spawn_app(dir.path(), &config).await;
    let first = send(&app, &get("/1", "a.test")).await;
    let _ = send(&app, &get("/2", "a.test")).await;
    (first, accepted.load(Ordering::SeqCst))
}

#[tokio::test]
async fn malformed_upstream_responses_never_put_their_connection_back() {
    // A well-framed HTTP/1.1 answer: the connection is reused.
    let (first, conns) = two_requests_to("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(conns, 1, "a good connection was not reused");
    // Both a length and chunked: the body is read as chunked, the
    // connection is dropped.
    let (first, conns) = two_requests_to(
        "HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        first.starts_with("HTTP/1.1 200") && first.contains("\r\nok\r\n"),
        "{first}"
    );
    assert_eq!(conns, 2, "a CL+TE connection was reused");
    // HTTP/1.0 with keep-alive: answered as HTTP/1.1, never pooled.
    let (first, conns) =
        two_requests_to("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok")
            .await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_eq!(conns, 2, "an HTTP/1.0 connection was reused");
    // Two lengths that disagree: a 502, and no reuse.
    let (first, conns) =
        two_requests_to("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")
            .await;
    assert!(first.starts_with("HTTP/1.1 502"), "{first}");
    assert_eq!(conns, 2);
}

#[tokio::test]
async fn requests_refused_while_parsing_are_recorded() {
    let (app, _dir) = two_routes("").await;
    let resp = send(
        &app,
        "GET /x HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), 400, "{resp}");
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "a".repeat(70_000)
    );
    let resp = send(&app, &long).await;
    assert!(matches!(status(&resp), 414 | 431), "{resp}");
    for reason in ["malformed_request"] {
        let rows = app
            .records_where("status=4xx", |r| r["error"] == reason)
            .await;
        assert!(!rows.is_empty(), "no record for {reason}");
    }
    let rows = app
        .records_where("status=4xx", |r| {
            r["error"] == "uri_too_long" || r["error"] == "headers_too_large"
        })
        .await;
    assert!(!rows.is_empty(), "the over-long URI was not recorded");
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "mtls_proxy_requests_refused_total",
            &["malformed_request"]
        ) >= 1.0,
        "{metrics}"
    );
}

/// Reads until the proxy closes the connection; how long that took.
async fn time_to_close(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_head_sent_one_byte_a_second_is_cut_off_by_the_header_timeout() {
    let (app, _dir) = plain_app("header_read_timeout = \"2s\"\nidle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(app.http.unwrap()).await.unwrap();
    let head = b"GET /slowloris HTTP/1.1\r\nHost: a.test\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let t0 = Instant::now();
    let mut closed = None;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed = Some(t0.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(t0.elapsed());
                break;
            }
            _ => {}
        }
    }
    let closed = closed.expect("the slow head was never cut off");
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(6),
        "closed after {closed:?}"
    );
    let rows = app
        .records_where("status=4xx", |r| r["error"] == "header_timeout")
        .await;
    assert_eq!(rows[0]["status"], 408);
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_header_timeout() {
    let (app, _dir) = plain_app("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(app.http.unwrap()).await.unwrap();
    let took = time_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("a silent connection stayed open");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn keep_alive_connections_live_by_the_idle_timeout_between_requests() {
    let (app, _dir) = plain_app("header_read_timeout = \"1s\"\nidle_timeout = \"4s\"").await;
    let mut s = TcpStream::connect(app.http.unwrap()).await.unwrap();
    let req = b"GET /ka HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut buf = vec![0u8; 8192];
    s.write_all(req).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Longer than the header timeout, shorter than the idle timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(req).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the idle keep-alive connection was closed early"
    );
    let took = time_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("the idle connection was never closed");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(7),
        "{took:?}"
    );
}

#[tokio::test]
async fn one_client_cannot_take_every_connection_slot() {
    let (app, _dir) = plain_app("max_connections_per_ip = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.http.unwrap()).await.unwrap());
    }
    let mut extra = TcpStream::connect(app.http.unwrap()).await.unwrap();
    let took = time_to_close(&mut extra, Duration::from_secs(3)).await;
    assert!(took.is_some(), "a fourth connection from one IP was kept");
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "mtls_proxy_connections_refused_total",
            &["per_ip_limit"]
        ) >= 1.0,
        "{metrics}"
    );
    drop(held);
    // Slots come back when connections close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = send(&app, &get("/after", "a.test")).await;
    assert_eq!(status(&resp), 200, "{resp}");
}

#[tokio::test]
async fn the_last_slots_are_kept_for_clients_holding_none() {
    let (app, _dir) = plain_app("max_connections = 10").await;
    // One client fills the slots it may: all but the reserve (a tenth).
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(TcpStream::connect(app.http.unwrap()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut greedy = TcpStream::connect(app.http.unwrap()).await.unwrap();
    assert!(
        time_to_close(&mut greedy, Duration::from_secs(3))
            .await
            .is_some(),
        "the client holding connections took the reserve"
    );
    // Another client (another loopback address) still gets in.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = other.connect(app.http.unwrap()).await.unwrap();
    s.write_all(b"GET /other HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "mtls_proxy_connections_refused_total",
            &["reason=\"reserve\""]
        ) >= 1.0,
        "{metrics}"
    );
    drop(held);
}

#[tokio::test]
async fn the_admin_listener_checks_host_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    // sha256("correct horse battery staple")
    let digest = "c4bbcb1fbec99d65bf59d85c8cb62ee2db963f0fe106f483d9afa73bd4e39a8a";
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"t\"\nupstreams = [\"{}\"]\n", b.url),
    )
    .replacen(
        "[server]\n",
        &format!("[server]\nadmin_token_sha256 = \"sha256:{digest}\"\n"),
        1,
    );
    let app = spawn_app(dir.path(), &config).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", app.admin);
    let none = client.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth("correct horse battery staple")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    // A page on another name (DNS rebinding) is refused even with a token.
    let rebound = client
        .get(&url)
        .header("host", "evil.example:9901")
        .bearer_auth("correct horse battery staple")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 421);
    // The liveness probe needs no token.
    let health = client
        .get(format!("http://{}/healthz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// A proxy with one mTLS route for `api.test`, and a raw TLS connection to
/// it presenting `client` (made by the same CA).
async fn mtls_raw(
    server_extra: &str,
) -> (
    TestApp,
    tempfile::TempDir,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (pki, ca) = pki_with_server(dir.path());
    let client = pki.client(
        "client",
        Some(&ca),
        ClientSpec {
            uris: &["spiffe://corp/ns/a/sa/b"],
            ..Default::default()
        },
    );
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}\n[[routes]]\nname = \"m\"\nupstreams = [\"{}\"]\nclient_auth = \"required\"\nclient_ca = [\"ca.pem\"]\n",
            b.url
        ),
    )
    .replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1);
    let app = spawn_app(dir.path(), &config).await;
    let tls = client_tls_config(&ca, &[&client], b"http/1.1");
    let tcp = TcpStream::connect(app.https.unwrap()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(
            rustls_pki_types::ServerName::try_from("api.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    (app, dir, stream)
}

#[tokio::test]
async fn a_malformed_request_over_mtls_is_recorded_with_the_client_s_identity() {
    let (app, _dir, mut s) = mtls_raw("").await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let rows = app
        .records_where("status=4xx", |r| r["error"] == "malformed_request")
        .await;
    assert_eq!(
        rows[0]["client_identity"], "spiffe://corp/ns/a/sa/b",
        "{rows:?}"
    );
}

#[tokio::test]
async fn a_connection_silent_after_its_tls_handshake_is_closed_by_the_header_timeout() {
    let (app, _dir, mut s) = mtls_raw("header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent TLS connection stayed open");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let rows = app
        .records_where("status=4xx", |r| r["error"] == "header_timeout")
        .await;
    assert_eq!(rows[0]["client_identity"], "spiffe://corp/ns/a/sa/b");
}

#[tokio::test]
async fn a_san_with_header_syntax_can_neither_add_fields_nor_pass_a_wildcard() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, ca) = pki_with_server(dir.path());
    let evil = "spiffe://corp/ns/a;URI=spiffe://corp/ns/admin,By=x";
    let client = pki.client(
        "evil",
        Some(&ca),
        ClientSpec {
            uris: &[evil],
            ..Default::default()
        },
    );
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}\n\
             [[routes]]\nname = \"strict\"\npath_prefix = \"/strict\"\nupstreams = [\"{u}\"]\nclient_auth = \"required\"\nclient_ca = [\"ca.pem\"]\n\
             [routes.allow]\nuri = [\"spiffe://corp/ns/**\"]\n\
             [[routes]]\nname = \"open\"\nupstreams = [\"{u}\"]\nclient_auth = \"required\"\nclient_ca = [\"ca.pem\"]\n",
            u = b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    let http = tls_client(&ca, Some(&client), "api.test", app.https.unwrap(), false);
    let strict = http
        .get(app.https_url("api.test", "/strict"))
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status(), 403);
    let open: serde_json::Value = http
        .get(app.https_url("api.test", "/open"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let xfcc = open["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.ends_with(&format!(";URI=\"{evil}\"")),
        "the URI was not quoted: {xfcc}"
    );
    // Split as a reader of the header would: on `;` outside quotes.
    let (mut fields, mut quoted, mut escaped, mut field) =
        (Vec::new(), false, false, String::new());
    for c in xfcc.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ';' | ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                continue;
            }
            _ => {}
        }
        field.push(c);
    }
    fields.push(field);
    let keys: Vec<&str> = fields
        .iter()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(keys, ["Hash", "Subject", "URI"], "{xfcc}");
}

/// Sends one HTTP/2 request (prior knowledge, plain) with `authority` in
/// `:authority` and, when given, a `host` header; the status.
async fn h2_status(app: &TestApp, authority: &str, host: Option<&str>) -> u16 {
    let tcp = TcpStream::connect(app.http.unwrap()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(format!("http://{authority}/x"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp = send
        .send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    resp.status().as_u16()
}

#[tokio::test]
async fn an_http2_authority_that_disagrees_with_host_is_refused() {
    let (app, _dir) = two_routes("").await;
    assert_eq!(h2_status(&app, "admin.internal", None).await, 200);
    assert_eq!(
        h2_status(&app, "admin.internal", Some("admin.internal")).await,
        200
    );
    assert_eq!(
        h2_status(&app, "admin.internal", Some("public.test")).await,
        400
    );
    let rows = app
        .records_where("status=4xx", |r| r["error"] == "host_mismatch")
        .await;
    assert!(!rows.is_empty());
}
