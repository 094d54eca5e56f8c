//! Revocation in a two-level PKI (root → intermediate → leaf, the CRL from
//! the intermediate), CRLs made by rcgen with and without optional
//! extensions and by `openssl ca -gencrl`, unusable CRLs named by file, and
//! a reload that reaches connections opened before it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mtls_proxy::config::Config;
use mtls_proxy::runtime::Runtime;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use crate::support::*;

const GOOD: u64 = 2001;
const REVOKED: u64 = 2002;

struct TwoLevel {
    root: Issued,
    inter: Issued,
    good: Issued,
    revoked: Issued,
}

fn issue(dir: &Path, name: &str, params: CertificateParams, by: Option<&Issued>) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = match by {
        Some(ca) => params.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    Issued { cert, key }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn leaf_params(cn: &str, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

fn two_level(dir: &Path) -> TwoLevel {
    let root = issue(dir, "root", ca_params("Root CA"), None);
    let inter = issue(dir, "inter", ca_params("Issuing CA"), Some(&root));
    let good = issue(dir, "good", leaf_params("good", GOOD), Some(&inter));
    let revoked = issue(
        dir,
        "revoked",
        leaf_params("revoked", REVOKED),
        Some(&inter),
    );
    TwoLevel {
        root,
        inter,
        good,
        revoked,
    }
}

/// A CRL from `ca` revoking `serials`, made by rcgen; `idp` adds the
/// optional issuing distribution point extension.
fn rcgen_crl(dir: &Path, name: &str, ca: &Issued, serials: &[u64], idp: bool) -> PathBuf {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2021, 1, 1),
        next_update: rcgen::date_time_ymd(2090, 1, 1),
        crl_number: SerialNumber::from(7u64),
        issuing_distribution_point: idp.then(|| rcgen::CrlIssuingDistributionPoint {
            distribution_point: rcgen::CrlDistributionPoint {
                uris: vec!["http://crl.example.test/issuing.crl".into()],
            },
            scope: Some(rcgen::CrlScope::UserCertsOnly),
        }),
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let path = dir.join(format!("{name}.crl.pem"));
    std::fs::write(
        &path,
        params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap(),
    )
    .unwrap();
    path
}

/// A CRL made by `openssl ca -gencrl` from the intermediate's files,
/// revoking `serial`.
fn openssl_crl(dir: &Path, serial: u64) -> PathBuf {
    let ca_dir = dir.join("openssl-ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(
        ca_dir.join("index.txt"),
        format!("R\t900101000000Z\t210101000000Z\t{serial:04X}\tunknown\t/CN=revoked\n"),
    )
    .unwrap();
    std::fs::write(ca_dir.join("crlnumber"), "01\n").unwrap();
    let cnf = ca_dir.join("openssl.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = issuing\n[issuing]\ndatabase = {db}\ncrlnumber = {num}\n\
             default_md = sha256\ndefault_crl_days = 30\n",
            db = ca_dir.join("index.txt").display(),
            num = ca_dir.join("crlnumber").display(),
        ),
    )
    .unwrap();
    let out = dir.join("openssl.crl.pem");
    let status = Command::new("openssl")
        .args(["ca", "-gencrl", "-batch", "-config"])
        .arg(&cnf)
        .arg("-keyfile")
        .arg(dir.join("inter.key"))
        .arg("-cert")
        .arg(dir.join("inter.pem"))
        .arg("-out")
        .arg(&out)
        .output()
        .expect("openssl is installed by scripts/setup-test-deps");
    assert!(
        status.status.success(),
        "openssl ca -gencrl: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    out
}

/// A client presenting `leaf` with the intermediate, trusting `root`.
fn chain_client(pki: &TwoLevel, leaf: &Issued, addr: std::net::SocketAddr) -> reqwest::Client {
    let config = client_tls_config(&pki.root, &[leaf, &pki.inter], b"http/1.1");
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve("api.test", addr)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The server certificate for `api.test`, issued by the root.
fn server_cert(dir: &Path, pki: &TwoLevel) {
    let mut p = CertificateParams::new(vec!["api.test".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "api.test");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(dir, "server", p, Some(&pki.root));
}

async fn proxy(dir: &Path, crl: &Path, client_auth_extra: &str) -> TestApp {
    let b = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}\n[client_auth]\ncrls = [\"{crl}\"]\n{client_auth_extra}\n\n\
             [[routes]]\nname = \"secure\"\nupstreams = [\"{}\"]\nclient_auth = \"required\"\nclient_ca = [\"root.pem\"]\n",
            b.url,
            crl = crl.display(),
        ),
    );
    spawn_app(dir, &config).await
}

async fn answers(client: &reqwest::Client, app: &TestApp) -> Option<u16> {
    client
        .get(app.https_url("api.test", "/"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test]
async fn the_default_accepts_a_good_leaf_and_refuses_a_revoked_one_for_every_crl_shape() {
    let dir = tempfile::tempdir().unwrap();
    let pki = two_level(dir.path());
    server_cert(dir.path(), &pki);
    let crls = [
        rcgen_crl(dir.path(), "with-idp", &pki.inter, &[REVOKED], true),
        rcgen_crl(dir.path(), "plain", &pki.inter, &[REVOKED], false),
        openssl_crl(dir.path(), REVOKED),
    ];
    for crl in &crls {
        let app = proxy(dir.path(), crl, "").await;
        let addr = app.https.unwrap();
        assert_eq!(
            answers(&chain_client(&pki, &pki.good, addr), &app).await,
            Some(200),
            "good leaf with {}",
            crl.display()
        );
        assert_eq!(
            answers(&chain_client(&pki, &pki.revoked, addr), &app).await,
            None,
            "revoked leaf accepted with {}",
            crl.display()
        );
        let rows = app.records_where("", |r| r["error"] == "tls:revoked").await;
        assert!(!rows.is_empty(), "no revoked handshake record");
        app.stop().await;
    }
}

#[tokio::test]
async fn checking_the_whole_chain_needs_each_issuer_s_crl_unless_unknown_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = two_level(dir.path());
    server_cert(dir.path(), &pki);
    let crl = rcgen_crl(dir.path(), "inter", &pki.inter, &[REVOKED], false);
    // The root's CRL is missing: the intermediate's status is unknown.
    let app = proxy(dir.path(), &crl, "crl_scope = \"chain\"").await;
    let addr = app.https.unwrap();
    assert_eq!(
        answers(&chain_client(&pki, &pki.good, addr), &app).await,
        None
    );
    let rows = app
        .records_where("", |r| r["error"] == "tls:unknown_revocation_status")
        .await;
    assert!(!rows.is_empty());
    app.stop().await;
    let app = proxy(
        dir.path(),
        &crl,
        "crl_scope = \"chain\"\nunknown_revocation = \"allow\"",
    )
    .await;
    let addr = app.https.unwrap();
    assert_eq!(
        answers(&chain_client(&pki, &pki.good, addr), &app).await,
        Some(200)
    );
    assert_eq!(
        answers(&chain_client(&pki, &pki.revoked, addr), &app).await,
        None
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unusable_crl_is_named_by_file_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = two_level(dir.path());
    server_cert(dir.path(), &pki);
    let bad = dir.path().join("broken.crl.pem");
    std::fs::write(
        &bad,
        "-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}\n[client_auth]\ncrls = [\"broken.crl.pem\"]\n\n\
             [[routes]]\nname = \"s\"\nupstreams = [\"http://127.0.0.1:9\"]\nclient_auth = \"required\"\nclient_ca = [\"root.pem\"]\n"
        ),
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let err = Runtime::build(&Config::load(&path).unwrap())
        .err()
        .expect("a broken CRL was accepted")
        .to_string();
    assert!(err.contains("broken.crl.pem"), "{err}");
    assert!(err.contains("client_auth.crls[0]"), "{err}");
    assert!(err.contains("cannot be used"), "{err}");
}

#[tokio::test]
async fn a_reload_reaches_connections_opened_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = two_level(dir.path());
    server_cert(dir.path(), &pki);
    let crl = rcgen_crl(dir.path(), "live", &pki.inter, &[], false);
    let app = proxy(dir.path(), &crl, "").await;
    let client = chain_client(&pki, &pki.good, app.https.unwrap());
    assert_eq!(answers(&client, &app).await, Some(200));
    let reloads = |m: &str| metric(m, "mtls_proxy_reloads_total", &["result=\"ok\""]);
    let before = reloads(&app.metrics().await);
    // The good leaf is revoked now; the client's kept-alive connection was
    // verified before.
    rcgen_crl(dir.path(), "live", &pki.inter, &[GOOD], false);
    for _ in 0..100 {
        if reloads(&app.metrics().await) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloads(&app.metrics().await) > before, "no reload happened");
    // The same pooled connection: refused with 403 (a new one would fail
    // its handshake instead, giving no status at all).
    assert_eq!(answers(&client, &app).await, Some(403));
    let rows = app
        .records_where("status=4xx", |r| {
            r["error"] == "client_cert_no_longer_trusted"
        })
        .await;
    assert_eq!(rows[0]["status"], 403);
    // And it was closed after that answer.
    assert_eq!(answers(&client, &app).await, None);
}
