//! Proxying behaviour: the identity header, WebSockets, HTTP/2, upstream
//! failures and mutual TLS towards upstreams.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test]
async fn a_spoofed_identity_header_is_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, ca) = pki_with_server(dir.path());
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}[[routes]]\nname = \"opt\"\nupstreams = [\"{}\"]\nclient_auth = \"optional\"\nclient_ca = [\"ca.pem\"]\n",
            b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    let spoof = "Hash=deadbeef;URI=spiffe://prod.test/admin";
    // Plain HTTP: no certificate at all, and the claim must vanish.
    let resp: serde_json::Value = reqwest::Client::new()
        .get(app.http_url("/"))
        .header("x-forwarded-client-cert", spoof)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        resp["headers"].get("x-forwarded-client-cert").is_none(),
        "{resp}"
    );
    // TLS without a certificate on an optional route: same.
    let anon = tls_client(&ca, None, "api.test", app.https.unwrap(), false);
    let resp: serde_json::Value = anon
        .get(app.https_url("api.test", "/"))
        .header("X-Forwarded-Client-Cert", spoof)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        resp["headers"].get("x-forwarded-client-cert").is_none(),
        "{resp}"
    );
    // With a certificate, the header carries the verified identity only.
    let id = pki.client(
        "c",
        Some(&ca),
        ClientSpec {
            uris: &["spiffe://prod.test/real"],
            ..Default::default()
        },
    );
    let resp: serde_json::Value = tls_client(&ca, Some(&id), "api.test", app.https.unwrap(), false)
        .get(app.https_url("api.test", "/"))
        .header("x-forwarded-client-cert", spoof)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let xfcc = resp["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.contains("spiffe://prod.test/real") && !xfcc.contains("deadbeef"),
        "{xfcc}"
    );
    app.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"ws\"\nupstreams = [\"{}\"]\n", b.url),
    );
    let app = spawn_app(dir.path(), &config).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.http.unwrap()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo: hi");
    ws.close(None).await.unwrap();
    drop(ws);
    let rows = app.records("route=ws", 1).await;
    assert_eq!(rows[0]["status"], 101);
    assert!(rows[0]["bytes_out"].as_u64().unwrap() > 0, "{:?}", rows[0]);
}

#[tokio::test]
async fn a_response_streams_while_the_request_body_is_still_coming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"duplex\"\nupstreams = [\"{}\"]\n",
            b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    // Each piece of the body is sent only once the previous one came back,
    // so the exchange completes only if the proxy carries both directions
    // at once.
    let mut s = tokio::net::TcpStream::connect(app.http.unwrap())
        .await
        .unwrap();
    s.write_all(
        b"POST /stream-back HTTP/1.1\r\nhost: duplex.test\r\n\
          transfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut wait_for = async |s: &mut tokio::net::TcpStream, want: &str| {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(want) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{want:?} never came back; got {:?}",
                        String::from_utf8_lossy(&seen)
                    )
                })
                .unwrap();
            assert!(n > 0, "the proxy closed the connection");
            seen.extend_from_slice(&buf[..n]);
        }
    };
    wait_for(&mut s, "first").await;
    s.write_all(b"6\r\nsecond\r\n").await.unwrap();
    wait_for(&mut s, "second").await;
    s.write_all(b"0\r\n\r\n").await.unwrap();
    // The answer's last chunk closes it.
    wait_for(&mut s, "\r\n0\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let rows = app.records("route=duplex", 1).await;
    assert_eq!(rows[0]["status"], 200);
    app.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_with_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let (_pki, ca) = pki_with_server(dir.path());
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}[[routes]]\nname = \"h2\"\nupstreams = [\"{}\"]\n",
            b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    let resp = tls_client(&ca, None, "api.test", app.https.unwrap(), true)
        .get(app.https_url("api.test", "/two"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/two");
}

#[tokio::test]
async fn an_upstream_that_is_down_gives_502_and_a_record() {
    let dir = tempfile::tempdir().unwrap();
    // Bind then drop to get a port nothing listens on.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"dead\"\nupstreams = [\"http://{dead}\"]\n"),
    );
    let app = spawn_app(dir.path(), &config).await;
    let resp = reqwest::get(app.http_url("/x")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let rows = app.records("route=dead&status=5xx", 1).await;
    assert_eq!(rows[0]["error"], "upstream_connect_failed");
    assert_eq!(rows[0]["upstream"], format!("http://{dead}"));
}

#[tokio::test]
async fn a_failed_upstream_is_skipped_and_the_healthy_one_serves() {
    let dir = tempfile::tempdir().unwrap();
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"pair\"\nupstreams = [\"http://{dead}\", \"{}\"]\n",
            b.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    // A body-less request is retried on the other target; the dead one is
    // then skipped, so every request succeeds.
    for _ in 0..6 {
        assert_eq!(reqwest::get(app.http_url("/")).await.unwrap().status(), 200);
    }
}

/// An HTTPS backend requiring a client certificate from `ca`.
async fn tls_backend(pki: &Pki, ca: &Issued) -> std::net::SocketAddr {
    let server = pki.server("backend", ca, &["backend.test"]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::try_from(server.key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| mtls_proxy::identity::ClientIdentity::from_der(c.as_ref()).ok())
                    .and_then(|i| i.common_name)
                    .unwrap_or_default();
                let svc = hyper::service::service_fn(move |_req| {
                    let cn = cn.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(format!("peer={cn}"))),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn mutual_tls_towards_the_upstream_and_an_unknown_upstream_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let ca = pki.ca("ca");
    pki.ca("wrong");
    pki.client(
        "proxy-client",
        Some(&ca),
        ClientSpec {
            cn: "the-proxy",
            ..Default::default()
        },
    );
    let addr = tls_backend(&pki, &ca).await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"good\"\npath_prefix = \"/good\"\nupstreams = [\"https://127.0.0.1:{port}\"]\n\
             [routes.upstream]\nca = \"ca.pem\"\ncert = \"proxy-client.pem\"\nkey = \"proxy-client.key\"\nserver_name = \"backend.test\"\n\
             [[routes]]\nname = \"bad\"\npath_prefix = \"/bad\"\nupstreams = [\"https://127.0.0.1:{port}\"]\n\
             [routes.upstream]\nca = \"wrong.pem\"\ncert = \"proxy-client.pem\"\nkey = \"proxy-client.key\"\nserver_name = \"backend.test\"\n",
            port = addr.port()
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    let resp = reqwest::get(app.http_url("/good")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "peer=the-proxy");
    let resp = reqwest::get(app.http_url("/bad")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let rows = app.records("route=bad", 1).await;
    assert_eq!(rows[0]["error"], "upstream_tls");
}

#[tokio::test]
async fn an_upstream_slower_than_the_header_timeout_gives_504() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!("[[routes]]\nname = \"slowpoke\"\nupstreams = [\"{}\"]\n[routes.upstream]\nheader_timeout = \"100ms\"\n", b.url),
    );
    let app = spawn_app(dir.path(), &config).await;
    let resp = reqwest::get(app.http_url("/slow")).await.unwrap();
    assert_eq!(resp.status(), 504);
    let rows = app.records("route=slowpoke", 1).await;
    assert_eq!(rows[0]["error"], "upstream_header_timeout");
    // Fast paths on the same route are unaffected.
    assert_eq!(
        reqwest::get(app.http_url("/fast")).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn readiness_fails_when_a_certificate_expires_within_the_margin() {
    let dir = tempfile::tempdir().unwrap();
    pki_with_server(dir.path());
    let b = backend().await;
    let certs = format!(
        "{SERVER_CERT}[[routes]]\nname = \"r\"\nupstreams = [\"{}\"]\n",
        b.url
    );
    // rcgen's default validity runs for decades: a one-day margin is fine...
    let app = spawn_app(dir.path(), &base_config(true, &certs)).await;
    let ready = app
        .admin_client
        .get(format!("http://{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
    // ...while a margin of ten thousand years is not.
    let config = base_config(true, &certs).replacen(
        "[server]\n",
        "[server]\ncert_expiry_margin = \"87600000h\"\n",
        1,
    );
    let app = spawn_app(dir.path(), &config).await;
    let ready = app
        .admin_client
        .get(format!("http://{}/readyz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["certificates"][0]["ok"], false, "{body}");
    assert_eq!(body["store_writable"], true, "{body}");
}
