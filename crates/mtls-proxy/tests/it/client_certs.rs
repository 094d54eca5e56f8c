//! Client certificate verification: each failure ends in a handshake
//! failure or the stated status, with a record and a metric naming why.

use crate::support::*;

/// A PKI plus a proxy whose only route requires a client certificate from
/// `ca`, optionally with an allowlist and a CRL.
struct Fixture {
    pki: Pki,
    ca: Issued,
    app: TestApp,
    _dir: tempfile::TempDir,
}

async fn fixture(route_extra: &str, client_auth_extra: &str) -> Fixture {
    fixture_with(route_extra, client_auth_extra, |_, _| {}).await
}

async fn fixture_with(
    route_extra: &str,
    client_auth_extra: &str,
    before: impl FnOnce(&Pki, &Issued),
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (pki, ca) = pki_with_server(dir.path());
    before(&pki, &ca);
    let backend = backend().await;
    let config = base_config(
        true,
        &format!(
            "{SERVER_CERT}\n[client_auth]\n{client_auth_extra}\n\n\
             [[routes]]\nname = \"secure\"\nhost = \"api.test\"\nupstreams = [\"{}\"]\nclient_auth = \"required\"\nclient_ca = [\"ca.pem\"]\n{route_extra}\n",
            backend.url
        ),
    );
    let app = spawn_app(dir.path(), &config).await;
    Fixture {
        pki,
        ca,
        app,
        _dir: dir,
    }
}

impl Fixture {
    fn client(&self, identity: Option<&Issued>) -> reqwest::Client {
        tls_client(
            &self.ca,
            identity,
            "api.test",
            self.app.https.unwrap(),
            false,
        )
    }

    /// Sends a request with `identity`, expects the handshake to fail, and
    /// checks the metric and the handshake record carry `reason`.
    async fn expect_handshake_failure(&self, identity: Option<&Issued>, reason: &str) {
        let before = metric(
            &self.app.metrics().await,
            "mtls_proxy_tls_handshake_failures_total",
            &[&format!("reason=\"{reason}\"")],
        );
        let result = self
            .client(identity)
            .get(self.app.https_url("api.test", "/"))
            .send()
            .await;
        assert!(
            result.is_err(),
            "expected a handshake failure ({reason}), got {:?}",
            result.map(|r| r.status())
        );
        let after = metric(
            &self.app.metrics().await,
            "mtls_proxy_tls_handshake_failures_total",
            &[&format!("reason=\"{reason}\"")],
        );
        assert!(
            after > before,
            "metric for {reason} did not move: {before} -> {after}"
        );
        let want = format!("tls:{reason}");
        let rows = self
            .app
            .records_where("kind=handshake", |r| r["error"] == want.as_str())
            .await;
        assert!(!rows.is_empty(), "no handshake record with {want}");
        // The server name the client asked for is kept; there is no path.
        assert_eq!(rows[0]["sni"], "api.test", "{}", rows[0]);
        assert!(rows[0]["path"].is_null(), "{}", rows[0]);
    }
}

#[tokio::test]
async fn a_valid_client_certificate_reaches_the_upstream_with_its_identity() {
    let f = fixture("", "").await;
    let id = f.pki.client(
        "good",
        Some(&f.ca),
        ClientSpec {
            cn: "svc-a",
            uris: &["spiffe://prod.test/ns/pay/sa/api"],
            ..Default::default()
        },
    );
    let resp = f
        .client(Some(&id))
        .get(f.app.https_url("api.test", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let xfcc = body["headers"]["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.contains("URI=spiffe://prod.test/ns/pay/sa/api"),
        "{xfcc}"
    );
    assert!(xfcc.contains("CN=svc-a"), "{xfcc}");
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    let rows = f.app.records("route=secure", 1).await;
    assert_eq!(
        rows[0]["client_identity"],
        "spiffe://prod.test/ns/pay/sa/api"
    );
    assert_eq!(rows[0]["tls_version"], "TLSv1.3");
    assert_eq!(rows[0]["status"], 200);
}

#[tokio::test]
async fn no_client_certificate_fails_the_handshake() {
    let f = fixture("", "").await;
    f.expect_handshake_failure(None, "no_client_certificate")
        .await;
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_fails_the_handshake() {
    let f = fixture("", "").await;
    let other = f.pki.ca("other");
    let id = f
        .pki
        .client("stranger", Some(&other), ClientSpec::default());
    f.expect_handshake_failure(Some(&id), "unknown_issuer")
        .await;
}

#[tokio::test]
async fn a_self_signed_leaf_fails_the_handshake() {
    let f = fixture("", "").await;
    let id = f.pki.client("selfie", None, ClientSpec::default());
    f.expect_handshake_failure(Some(&id), "unknown_issuer")
        .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_fail_the_handshake() {
    let f = fixture("", "").await;
    let expired = f.pki.client(
        "expired",
        Some(&f.ca),
        ClientSpec {
            not_before: (2000, 1, 1),
            not_after: (2001, 1, 1),
            ..Default::default()
        },
    );
    f.expect_handshake_failure(Some(&expired), "expired").await;
    let future = f.pki.client(
        "future",
        Some(&f.ca),
        ClientSpec {
            not_before: (2080, 1, 1),
            not_after: (2090, 1, 1),
            ..Default::default()
        },
    );
    f.expect_handshake_failure(Some(&future), "not_yet_valid")
        .await;
}

#[tokio::test]
async fn a_leaf_without_client_auth_usage_fails_the_handshake() {
    let f = fixture("", "").await;
    let id = f.pki.client(
        "server-only",
        Some(&f.ca),
        ClientSpec {
            client_auth_eku: false,
            ..Default::default()
        },
    );
    f.expect_handshake_failure(Some(&id), "bad_key_usage").await;
}

#[tokio::test]
async fn a_san_not_on_the_allowlist_gets_403_with_a_record_and_metric() {
    let f = fixture("[routes.allow]\ndns = [\"*.allowed.test\"]\n", "").await;
    let ok = f.pki.client(
        "ok",
        Some(&f.ca),
        ClientSpec {
            dns: &["a.allowed.test"],
            ..Default::default()
        },
    );
    let bad = f.pki.client(
        "bad",
        Some(&f.ca),
        ClientSpec {
            dns: &["a.denied.test"],
            serial: 7,
            ..Default::default()
        },
    );
    let url = f.app.https_url("api.test", "/x");
    assert_eq!(
        f.client(Some(&ok)).get(&url).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        f.client(Some(&bad))
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let rows = f.app.records("status=403", 1).await;
    assert_eq!(rows[0]["error"], "identity_not_allowed");
    assert_eq!(rows[0]["client_identity"], "a.denied.test");
    let m = f.app.metrics().await;
    assert!(
        metric(
            &m,
            "mtls_proxy_request_errors_total",
            &["route=\"secure\"", "reason=\"identity_not_allowed\""]
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn wildcard_edge_cases_on_the_allowlist() {
    let f = fixture(
        "[routes.allow]\ndns = [\"*.svc.test\"]\nuri = [\"spiffe://prod.test/ns/*/sa/**\"]\nemail = [\"*@ops.test\"]\ncn = [\"exact-name\"]\n",
        "",
    )
    .await;
    let url = f.app.https_url("api.test", "/");
    let cases: &[(ClientSpec, u16)] = &[
        (
            ClientSpec {
                dns: &["a.svc.test"],
                ..Default::default()
            },
            200,
        ),
        // `*` is one label: two labels do not match, nor does the bare suffix.
        (
            ClientSpec {
                dns: &["a.b.svc.test"],
                ..Default::default()
            },
            403,
        ),
        (
            ClientSpec {
                dns: &["svc.test"],
                ..Default::default()
            },
            403,
        ),
        // A suffix trick must not pass.
        (
            ClientSpec {
                dns: &["a.svc.test.evil.test"],
                ..Default::default()
            },
            403,
        ),
        (
            ClientSpec {
                uris: &["spiffe://prod.test/ns/pay/sa/api/v2"],
                ..Default::default()
            },
            200,
        ),
        (
            ClientSpec {
                uris: &["spiffe://prod.test/ns/pay/extra/sa/api"],
                ..Default::default()
            },
            403,
        ),
        (
            ClientSpec {
                uris: &["spiffe://dev.test/ns/pay/sa/api"],
                ..Default::default()
            },
            403,
        ),
        (
            ClientSpec {
                emails: &["alice@ops.test"],
                ..Default::default()
            },
            200,
        ),
        (
            ClientSpec {
                emails: &["alice@ops.test.evil"],
                ..Default::default()
            },
            403,
        ),
        (
            ClientSpec {
                cn: "exact-name",
                ..Default::default()
            },
            200,
        ),
        // A CN is never compared with DNS patterns.
        (
            ClientSpec {
                cn: "a.svc.test",
                ..Default::default()
            },
            403,
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let spec = ClientSpec {
            serial: 100 + i as u64,
            ..*spec
        };
        let id = f.pki.client(&format!("case{i}"), Some(&f.ca), spec);
        let got = f.client(Some(&id)).get(&url).send().await.unwrap().status();
        assert_eq!(got.as_u16(), *want, "case {i}");
    }
}

#[tokio::test]
async fn a_revoked_certificate_fails_the_handshake() {
    let f = fixture_with("", "crls = [\"ca.crl.pem\"]", |pki, ca| {
        pki.crl("ca", ca, &[666], true);
    })
    .await;
    let revoked = f.pki.client(
        "revoked",
        Some(&f.ca),
        ClientSpec {
            serial: 666,
            ..Default::default()
        },
    );
    f.expect_handshake_failure(Some(&revoked), "revoked").await;
    let fine = f.pki.client(
        "fine",
        Some(&f.ca),
        ClientSpec {
            serial: 667,
            ..Default::default()
        },
    );
    let resp = f
        .client(Some(&fine))
        .get(f.app.https_url("api.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_stale_crl_denies_or_allows_as_configured() {
    let deny = fixture_with(
        "",
        "crls = [\"ca.crl.pem\"]\nstale_crl = \"deny\"",
        |pki, ca| {
            pki.crl("ca", ca, &[1], false);
        },
    )
    .await;
    let id = deny.pki.client(
        "c",
        Some(&deny.ca),
        ClientSpec {
            serial: 5,
            ..Default::default()
        },
    );
    deny.expect_handshake_failure(Some(&id), "stale_crl").await;

    let allow = fixture_with(
        "",
        "crls = [\"ca.crl.pem\"]\nstale_crl = \"allow\"",
        |pki, ca| {
            pki.crl("ca", ca, &[1], false);
        },
    )
    .await;
    let id = allow.pki.client(
        "c",
        Some(&allow.ca),
        ClientSpec {
            serial: 5,
            ..Default::default()
        },
    );
    let resp = allow
        .client(Some(&id))
        .get(allow.app.https_url("api.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
