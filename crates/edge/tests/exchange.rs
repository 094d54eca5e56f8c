//! The engine with its default phases, seen from outside: a real listener, a
//! real upstream, and what `logging` is handed for each exchange.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge::{Error, Exchange, Peer, ProxyHttp, Server, ServerSettings, Session, Transport};
use edge::{UpstreamGroup, UpstreamSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one exchange looked like to `logging`.
#[derive(Debug, Clone)]
struct Seen {
    host: Option<String>,
    request_headers: Vec<String>,
    response_headers: Option<Vec<String>>,
    status: Option<u16>,
    upstream: Option<String>,
}

/// A proxy that sends everything to one group and keeps what it saw.
struct Watching {
    group: Arc<UpstreamGroup>,
    keep_headers: bool,
    seen: Mutex<Vec<Seen>>,
}

impl ProxyHttp for Watching {
    type Ctx = ();

    fn new_ctx(&self, _session: &Session) {}

    fn exchange_headers(&self, _ctx: &()) -> bool {
        self.keep_headers
    }

    fn upstream_peer(&self, _session: &Session, _ctx: &mut ()) -> Result<Peer, Error> {
        Ok(self.group.clone())
    }

    fn logging(&self, ex: Exchange, _ctx: ()) {
        let names = |m: &http::HeaderMap| m.keys().map(|k| k.as_str().to_owned()).collect();
        let seen = Seen {
            host: ex.authority.map(|a| a.host),
            request_headers: names(&ex.request_headers),
            response_headers: ex.response_headers.as_ref().map(names),
            status: ex.status.map(|s| s.as_u16()),
            upstream: ex.upstream.as_deref().map(str::to_owned),
        };
        self.seen.lock().unwrap().push(seen);
    }
}

/// An upstream that answers every request with the `x-forwarded-for` it got
/// (and 400 when the request has no Host header).
async fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        let xff = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-forwarded-for: "))
                            .unwrap_or("none")
                            .to_owned();
                        // HTTP/1.1 requires a Host header.
                        let status = if head.contains("\r\nhost: ") {
                            "200 OK"
                        } else {
                            "400 Bad Request"
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-upstream: yes\r\n\r\n{xff}",
                            xff.len()
                        );
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
    url
}

/// Starts the engine around a `Watching` proxy; returns its address.
async fn start(keep_headers: bool) -> (Arc<Watching>, std::net::SocketAddr) {
    let group =
        UpstreamGroup::new("g", &[echo_upstream().await], UpstreamSettings::default()).unwrap();
    let proxy = Arc::new(Watching {
        group: Arc::new(group),
        keep_headers,
        seen: Mutex::new(Vec::new()),
    });
    let server = Server::new(proxy.clone(), ServerSettings::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { server.serve(listener, Transport::Plain).await });
    (proxy, addr)
}

/// Sends one HTTP/1.1 request and returns the whole response text.
async fn get(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("no response")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn first_seen(proxy: &Watching) -> Seen {
    for _ in 0..200 {
        if let Some(seen) = proxy.seen.lock().unwrap().first() {
            return seen.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("logging never ran");
}

const REQUEST: &str = "GET /x?y=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Test: 1\r\n\
                       X-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn logging_gets_the_headers_when_the_proxy_asks_for_them() {
    let (proxy, addr) = start(true).await;
    let resp = get(addr, REQUEST).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The default phases append the client to x-forwarded-for.
    assert!(resp.ends_with("10.9.9.9, 127.0.0.1"), "{resp}");
    let seen = first_seen(&proxy).await;
    assert_eq!(seen.host.as_deref(), Some("example.com"));
    assert!(
        seen.request_headers.contains(&"x-test".to_owned()),
        "{seen:?}"
    );
    let response = seen.response_headers.expect("response headers kept");
    assert!(response.contains(&"x-upstream".to_owned()), "{response:?}");
    // Hop-by-hop headers never reach the client, nor the record.
    assert!(!response.contains(&"connection".to_owned()), "{response:?}");
    assert_eq!(seen.status, Some(200));
    assert!(seen
        .upstream
        .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
}

#[tokio::test]
async fn logging_gets_no_headers_when_the_proxy_does_not_want_them() {
    let (proxy, addr) = start(false).await;
    let resp = get(addr, REQUEST).await;
    // Proxying is the same either way.
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("10.9.9.9, 127.0.0.1"), "{resp}");
    let seen = first_seen(&proxy).await;
    assert!(seen.request_headers.is_empty(), "{seen:?}");
    assert_eq!(seen.response_headers, None);
    // The authority routed on is kept either way.
    assert_eq!(seen.host.as_deref(), Some("example.com"));
    assert_eq!(seen.status, Some(200));
}

#[tokio::test]
async fn a_request_without_a_host_reaches_the_upstream_with_one() {
    let (proxy, addr) = start(false).await;
    let resp = get(addr, "GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    assert_eq!(first_seen(&proxy).await.status, Some(200));
}

/// A TLS proxy that keeps every client hello its `tls_config` was given.
struct Hellos {
    config: Arc<rustls::ServerConfig>,
    group: Arc<UpstreamGroup>,
    seen: Mutex<Vec<edge::ClientHello>>,
}

impl ProxyHttp for Hellos {
    type Ctx = ();

    fn new_ctx(&self, _session: &Session) {}

    async fn tls_config(&self, hello: &edge::ClientHello) -> Option<Arc<rustls::ServerConfig>> {
        self.seen.lock().unwrap().push(hello.clone());
        // Waiting here is allowed (a certificate issued on demand).
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some(self.config.clone())
    }

    fn upstream_peer(&self, _session: &Session, _ctx: &mut ()) -> Result<Peer, Error> {
        Ok(self.group.clone())
    }
}

#[tokio::test]
async fn the_tls_hook_sees_the_server_name_and_alpn_and_sessions_resume() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("edge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), key.serialize_pem()).unwrap();
    let mut resolver = edge::tls::SniCertResolver::default();
    resolver
        .add(
            &["a.test".to_owned()],
            edge::tls::load_certified_key(&dir.join("c.pem"), &dir.join("c.key")).unwrap(),
        )
        .unwrap();
    let verifier = edge::tls::client_verifier(
        edge::tls::ClientAuthMode::Off,
        &edge::tls::ClientTrust {
            roots: Arc::new(rustls::RootCertStore::empty()),
            crls: Vec::new(),
            stale_crl: Default::default(),
            revocation: Default::default(),
        },
    )
    .unwrap();
    let config = edge::tls::server_config(Arc::new(resolver), verifier, false).unwrap();
    let group =
        UpstreamGroup::new("g", &[echo_upstream().await], UpstreamSettings::default()).unwrap();
    let proxy = Arc::new(Hellos {
        config,
        group: Arc::new(group),
        seen: Mutex::new(Vec::new()),
    });
    let server = Server::new(proxy.clone(), ServerSettings::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        server
            .run(vec![(listener, Transport::Tls)], async move {
                let _ = stopped.await;
            })
            .await
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(edge::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"acme-tls/1".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        kinds.push(tls.get_ref().1.handshake_kind());
    }
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(seen[0].server_name.as_deref(), Some("a.test"));
    assert_eq!(seen[0].alpn, [b"acme-tls/1".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
    // `run` returns once its shutdown future completes and the drain ends.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run did not return after shutdown")
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
