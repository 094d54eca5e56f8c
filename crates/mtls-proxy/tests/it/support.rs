//! Test support: a PKI made with rcgen, an echo backend, the proxy started
//! on port 0 with a fresh database, and clients with or without certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use mtls_proxy::app::{self, Listeners};
use mtls_proxy::config::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use tokio::net::TcpListener;

/// The `[[certificates]]` block for the server certificate that
/// [`pki_with_server`] writes.
pub const SERVER_CERT: &str = "[[certificates]]\ncert = \"server.pem\"\nkey = \"server.key\"\n";

/// A PKI in `dir` with a CA (`ca.pem`) and a server certificate for
/// `api.test` signed by it (`server.pem`, `server.key`).
pub fn pki_with_server(dir: &Path) -> (Pki, Issued) {
    let pki = Pki::new(dir);
    let ca = pki.ca("ca");
    pki.server("server", &ca, &["api.test", "localhost"]);
    (pki, ca)
}

/// A certificate with its key, written to disk as PEM.
pub struct Issued {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// What a client certificate should look like.
pub struct ClientSpec<'a> {
    pub cn: &'a str,
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub emails: &'a [&'a str],
    pub client_auth_eku: bool,
    pub not_before: (i32, u8, u8),
    pub not_after: (i32, u8, u8),
    pub serial: u64,
}

impl Default for ClientSpec<'_> {
    fn default() -> Self {
        ClientSpec {
            cn: "client",
            dns: &[],
            uris: &[],
            emails: &[],
            client_auth_eku: true,
            not_before: (2020, 1, 1),
            not_after: (2090, 1, 1),
            serial: 1000,
        }
    }
}

/// A directory of PEM files.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn write(&self, name: &str, cert: rcgen::Certificate, key: KeyPair) -> Issued {
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        Issued { cert, key }
    }

    /// A self-signed CA.
    pub fn ca(&self, name: &str) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        self.write(name, cert, key)
    }

    /// A server certificate for `names`, signed by `ca`.
    pub fn server(&self, name: &str, ca: &Issued, names: &[&str]) -> Issued {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if names.contains(&"localhost") {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        self.write(name, cert, key)
    }

    /// A client certificate signed by `ca`, or self-signed when `ca` is None.
    pub fn client(&self, name: &str, ca: Option<&Issued>, spec: ClientSpec<'_>) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, spec.cn);
        for d in spec.dns {
            p.subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in spec.uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        for e in spec.emails {
            p.subject_alt_names
                .push(SanType::Rfc822Name((*e).try_into().unwrap()));
        }
        p.extended_key_usages = if spec.client_auth_eku {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        let (y, m, d) = spec.not_before;
        p.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = spec.not_after;
        p.not_after = rcgen::date_time_ymd(y, m, d);
        p.serial_number = Some(SerialNumber::from(spec.serial));
        let key = KeyPair::generate().unwrap();
        let cert = match ca {
            Some(ca) => p.signed_by(&key, &ca.cert, &ca.key).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        self.write(name, cert, key)
    }

    /// A CRL from `ca` revoking `serials`; `fresh` decides whether its next
    /// update lies in the future or the past.
    pub fn crl(&self, name: &str, ca: &Issued, serials: &[u64], fresh: bool) -> PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2021, 1, 1),
            next_update: if fresh {
                rcgen::date_time_ymd(2090, 1, 1)
            } else {
                rcgen::date_time_ymd(2022, 1, 1)
            },
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&ca.cert, &ca.key).unwrap();
        let path = self.dir.join(format!("{name}.crl.pem"));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

/// An echo backend: answers with the request line and headers as JSON,
/// echoes WebSocket messages on `/ws` and streams request bodies back as
/// they arrive on `/stream-back`.
pub struct Backend {
    pub url: String,
}

pub async fn backend() -> Backend {
    named_backend("backend").await
}

/// An echo backend that puts `name` in every answer.
pub async fn named_backend(name: &'static str) -> Backend {
    let echo = move |req: Request| async move {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        axum::Json(serde_json::json!({
            "backend": name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "headers": headers,
            "body_len": body.len(),
        }))
    };
    async fn ws(up: WebSocketUpgrade) -> impl IntoResponse {
        up.on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if let Message::Text(t) = msg {
                    let _ = socket
                        .send(Message::Text(format!("echo: {t}").into()))
                        .await;
                }
            }
        })
    }
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(300)).await;
        "slow"
    }
    // Streams the request body back as it arrives: the answer begins
    // before the request ends, as in a full-duplex exchange.
    async fn stream_back(req: Request) -> axum::body::Body {
        axum::body::Body::from_stream(req.into_body().into_data_stream())
    }
    let app = Router::new()
        .route("/ws", any(ws))
        .route("/stream-back", any(stream_back))
        .route("/slow", any(slow))
        .fallback(echo);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Backend {
        url: format!("http://{addr}"),
    }
}

/// A running proxy with its own directory and database.
pub struct TestApp {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub admin_client: reqwest::Client,
}

/// The config header every test uses: listeners on port 0 and a store in
/// the test directory. `extra` is appended (routes, certificates...).
pub fn base_config(https: bool, extra: &str) -> String {
    let https = if https {
        "https = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        "[server]\n{https}http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nwatch_interval = \"100ms\"\nshutdown_grace = \"5s\"\n\
         [store]\npath = \"records.db\"\nflush_interval = \"10ms\"\n\n{extra}"
    )
}

/// A proxy with one plain route to an echo backend, with `server_extra`
/// added to its `[server]` table.
pub async fn plain_app(server_extra: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let b = backend().await;
    let config = base_config(
        false,
        &format!(
            "[[routes]]\nname = \"plain\"\nupstreams = [\"{}\"]\n",
            b.url
        ),
    )
    .replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1);
    (spawn_app(dir.path(), &config).await, dir)
}

pub async fn spawn_app(dir: &Path, config_text: &str) -> TestApp {
    let config_path = dir.join("proxy.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let listeners = Listeners::bind(&config).await.unwrap();
    let https = listeners.https.as_ref().map(|l| l.local_addr().unwrap());
    let http = listeners.http.as_ref().map(|l| l.local_addr().unwrap());
    let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app::run(config, listeners, async move {
        let _ = rx.await;
    }));
    TestApp {
        https,
        http,
        admin,
        config_path,
        stop: Some(tx),
        task: Some(task),
        admin_client: reqwest::Client::new(),
    }
}

impl TestApp {
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.http.unwrap(), path)
    }

    /// An https URL for `host`; the client must resolve the host to the proxy.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{}", self.https.unwrap().port(), path)
    }

    pub async fn metrics(&self) -> String {
        self.admin_client
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Records matching an admin API query string, as JSON values. Waits
    /// for the batch writer by retrying for a while.
    pub async fn records(&self, query: &str, at_least: usize) -> Vec<serde_json::Value> {
        let mut rows = Vec::new();
        for _ in 0..100 {
            let text = self
                .admin_client
                .get(format!("http://{}/api/logs?{query}", self.admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            rows = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            if rows.len() >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        rows
    }

    /// Like [`TestApp::records`], but waits until some row satisfies `pred`
    /// and returns those rows.
    pub async fn records_where(
        &self,
        query: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let rows: Vec<_> = self
                .records(query, 0)
                .await
                .into_iter()
                .filter(|r| pred(r))
                .collect();
            if !rows.is_empty() {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Vec::new()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A metric's value summed over the series whose labels contain every one
/// of `labels` (e.g. `reason="expired"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TLS client trusting `ca`, optionally presenting `identity`, resolving
/// `host` to the proxy, one fresh connection per client.
pub fn tls_client(
    ca: &Issued,
    identity: Option<&Issued>,
    host: &str,
    addr: SocketAddr,
    h2: bool,
) -> reqwest::Client {
    let chain: Vec<&Issued> = identity.into_iter().collect();
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let config = client_tls_config(ca, &chain, alpn);
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve(host, addr)
        .timeout(Duration::from_secs(10));
    if !h2 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A rustls client configuration trusting `ca`, presenting `chain` (leaf
/// first; its key is the leaf's) when not empty, offering one ALPN protocol.
pub fn client_tls_config(ca: &Issued, chain: &[&Issued], alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match chain.first() {
        Some(leaf) => builder
            .with_client_auth_cert(
                chain.iter().map(|c| c.cert.der().clone()).collect(),
                rustls_pki_types::PrivateKeyDer::try_from(leaf.key.serialize_der()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}
