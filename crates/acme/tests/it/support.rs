//! Starting pebble and its DNS server, the challenge listeners a product
//! would run, and checks on what was issued.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acme::{AcmeConfig, Directory, Manager, Trust};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpListener;

const INSTALL: &str = "scripts/setup-test-deps (or: apt-get install -y pebble)";

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What pebble is started with.
#[derive(Default)]
pub struct Options {
    /// Where pebble's validation authority connects for HTTP-01.
    pub http_port: u16,
    /// Where it connects for TLS-ALPN-01.
    pub tls_port: u16,
    /// External account MAC keys (`kid` → base64url key); makes EAB required.
    pub eab: Vec<(String, String)>,
}

/// A running pebble with its own DNS server answering 127.0.0.1 for every
/// name; both are killed when dropped.
pub struct Pebble {
    children: Vec<Child>,
    _dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    management: u16,
    dns_management: u16,
    /// The CA that signed pebble's own HTTPS certificate.
    pub tls_ca: CertificateDer<'static>,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn require(binary: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
        .unwrap_or(false);
    assert!(found, "{binary} is not installed; run {INSTALL}");
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}; run {INSTALL}"))
}

async fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not listen on {port} within 10 s; its output:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Pebble {
    pub async fn start(options: Options) -> Self {
        require("pebble");
        require("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();

        // Pebble's HTTPS listener needs a certificate; the package ships
        // none, so a throwaway CA signs one for localhost and 127.0.0.1.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();

        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let mac_keys: serde_json::Map<String, serde_json::Value> = options
            .eab
            .iter()
            .map(|(kid, key)| (kid.clone(), key.clone().into()))
            .collect();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": !options.eab.is_empty(),
                "externalAccountMACKeys": mac_keys,
            }
        });
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();

        let dns_log = dir.path().join("challtestsrv.log");
        let challtestsrv = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            &dns_log,
        );
        let mut children = vec![challtestsrv];
        wait_for_port(dns_management, "pebble-challtestsrv", &dns_log).await;

        let log = dir.path().join("pebble.log");
        children.push(spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            &log,
        ));
        let pebble = Self {
            children,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            dns_management,
            tls_ca: ca.der().clone(),
            _dir: dir,
        };
        wait_for_port(listen, "pebble", &log).await;
        pebble
    }

    /// A manager configuration for this pebble, with its state in `state`.
    pub fn config(&self, state: &Path) -> AcmeConfig {
        let mut config = AcmeConfig::new(Directory::Url(self.directory.clone()), state);
        config.trust = Trust::Only(vec![self.tls_ca.clone()]);
        config.order_timeout = Duration::from_secs(20);
        config
    }

    /// Makes the DNS server answer SERVFAIL for `host`: a name that
    /// resolves nowhere.
    pub async fn resolve_nowhere(&self, host: &str) {
        reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/set-servfail",
                self.dns_management
            ))
            .json(&serde_json::json!({ "host": format!("{host}.") }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// The root pebble issues under (from its management interface).
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.tls_ca.clone()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        let pem = client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    }
}

/// Checks that `chain` (leaf first) verifies up to `root` for `domain`.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    domain: &str,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(domain.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("chain for {domain} does not verify: {e}"));
}

/// Binds `addr` again once the task that held it has let go.
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    for _ in 0..200 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} stayed busy");
}

/// Serves HTTP-01 answers from the manager on `listener`, as a product's
/// port-80 router would.
pub fn serve_http01(listener: TcpListener, manager: Arc<Manager>) -> tokio::task::JoinHandle<()> {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            get(
                |State(m): State<Arc<Manager>>, UrlPath(token): UrlPath<String>| async move {
                    match m.http01_response(&token) {
                        Some(body) => (StatusCode::OK, body),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                },
            ),
        )
        .with_state(manager);
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

/// Serves TLS on `listener` as a product's port-443 listener would: the
/// TLS-ALPN-01 answer for hellos offering `acme-tls/1`, the manager's
/// certificates otherwise.
pub fn serve_tls(listener: TcpListener, manager: Arc<Manager>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let manager = manager.clone();
            tokio::spawn(async move {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else {
                    return;
                };
                let hello = start.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn: Vec<Vec<u8>> = hello
                    .alpn()
                    .map(|a| a.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                let config = match sni.as_deref() {
                    Some(name) if acme::is_acme_tls_alpn(&alpn) => manager.alpn_config(name),
                    _ => Some(manager.server_config(vec![b"http/1.1".to_vec()])),
                };
                let Some(config) = config else {
                    return;
                };
                if let Ok(mut tls) = start.into_stream(config).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}

/// Records the certificate a server presents and accepts it: how a test
/// sees what a listener serves, placeholders included.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The leaf certificate served at `addr` for `sni` in a real handshake.
pub async fn served_certificate(addr: SocketAddr, sni: &str) -> CertificateDer<'static> {
    let recorder = Arc::new(Recorder::default());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let cert = recorder.0.lock().unwrap().take();
    cert.expect("no certificate presented")
}

/// The issuer and subject alternative DNS names of a certificate.
pub fn describe(cert: &CertificateDer<'_>) -> (String, String, Vec<String>) {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let names = parsed
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        parsed.issuer().to_string(),
        parsed.subject().to_string(),
        names,
    )
}

/// The permission bits of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
