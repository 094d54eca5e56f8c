//! Issuance by HTTP-01 and TLS-ALPN-01, what is stored, reuse after a
//! restart, and renewal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use acme::{ChallengeKind, Domain, Manager, RenewalPolicy, Status};
use tokio::net::TcpListener;

use crate::support::{self, mode, Options, Pebble};

#[tokio::test]
async fn http01_issues_a_certificate_that_verifies_and_is_stored_0600() {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let pebble = Pebble::start(Options {
        http_port: http.local_addr().unwrap().port(),
        tls_port: tls_addr.port(),
        ..Options::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let manager = Arc::new(Manager::new(pebble.config(state.path())).unwrap());
    let http_addr = http.local_addr().unwrap();
    let http_task = support::serve_http01(http, manager.clone());
    let tls_task = support::serve_tls(tls, manager.clone());
    let domain = Domain::parse("app.example.test").unwrap();

    // While pending, the listener serves a self-signed placeholder.
    assert_eq!(
        manager.add_domain(&domain, ChallengeKind::Http01).unwrap(),
        Status::Pending
    );
    assert!(!manager.has_certificate("app.example.test"));
    let placeholder = support::served_certificate(tls_addr, "app.example.test").await;
    let (issuer, subject, names) = support::describe(&placeholder);
    assert_eq!(issuer, subject, "placeholder is self-signed");
    assert!(subject.contains("certificate pending"), "{subject}");
    assert_eq!(names, ["app.example.test"]);

    let not_after = manager.issue(&domain, ChallengeKind::Http01).await.unwrap();
    assert_eq!(manager.status(&domain), Some(Status::Valid { not_after }));
    assert!(not_after > SystemTime::now());
    assert!(manager.has_certificate("APP.example.test."));

    // The issued chain verifies against pebble's root and names the domain,
    // and it is what the listener now serves.
    let issued = manager.certified_key("app.example.test").unwrap();
    let root = pebble.issuing_root().await;
    support::verify_chain(&issued.cert, &root, "app.example.test");
    assert_eq!(support::describe(&issued.cert[0]).2, ["app.example.test"]);
    let served = support::served_certificate(tls_addr, "app.example.test").await;
    assert_eq!(served, issued.cert[0]);

    // Challenge answers are gone once the order ended.
    assert!(manager
        .http01_response_for_path("/.well-known/acme-challenge/x")
        .is_none());

    // Keys, chains and account credentials are 0600 in 0700 directories.
    let certs = state.path().join("certs");
    let accounts = state.path().join("accounts");
    assert_eq!(mode(state.path()), 0o700);
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("app.example.test.key.pem")), 0o600);
    assert_eq!(mode(&certs.join("app.example.test.crt.pem")), 0o600);
    let account_files: Vec<_> = std::fs::read_dir(&accounts).unwrap().collect();
    assert_eq!(account_files.len(), 1);
    let account_file = account_files[0].as_ref().unwrap().path();
    assert_eq!(mode(&account_file), 0o600);

    // A restart on the same state directory: the certificate is loaded
    // without an order, and the account is reused, not registered again.
    let account_id = manager.account_id().await.unwrap();
    let account_json = std::fs::read(&account_file).unwrap();
    http_task.abort();
    tls_task.abort();
    drop(manager);
    let again = Arc::new(Manager::new(pebble.config(state.path())).unwrap());
    assert_eq!(
        again.add_domain(&domain, ChallengeKind::Http01).unwrap(),
        Status::Valid { not_after }
    );
    assert_eq!(
        again.certified_key("app.example.test").unwrap().cert,
        issued.cert
    );
    assert!(again.due(SystemTime::now()).is_empty());
    assert_eq!(again.account_id().await.unwrap(), account_id);
    let _http = support::serve_http01(support::rebind(http_addr).await, again.clone());
    let other = Domain::parse("second.example.test").unwrap();
    again.issue(&other, ChallengeKind::Http01).await.unwrap();
    assert_eq!(std::fs::read(&account_file).unwrap(), account_json);
    assert_eq!(std::fs::read_dir(&accounts).unwrap().count(), 1);
}

#[tokio::test]
async fn tls_alpn01_issues_a_certificate_that_verifies() {
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    let pebble = Pebble::start(Options {
        http_port: support::free_port(),
        tls_port: tls_addr.port(),
        ..Options::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let manager = Arc::new(Manager::new(pebble.config(state.path())).unwrap());
    let _tls = support::serve_tls(tls, manager.clone());
    let domain = Domain::parse("alpn.example.test").unwrap();

    // Two orders for one name at once (an explicit one beside the
    // background loop's) take turns rather than remove each other's answer.
    let (a, b) = tokio::join!(
        manager.issue(&domain, ChallengeKind::TlsAlpn01),
        manager.issue(&domain, ChallengeKind::TlsAlpn01)
    );
    a.unwrap();
    b.unwrap();
    let issued = manager.certified_key("alpn.example.test").unwrap();
    support::verify_chain(
        &issued.cert,
        &pebble.issuing_root().await,
        "alpn.example.test",
    );
    assert_eq!(support::describe(&issued.cert[0]).2, ["alpn.example.test"]);
    assert!(manager.alpn_config("alpn.example.test").is_none());
    assert_eq!(
        support::served_certificate(tls_addr, "alpn.example.test").await,
        issued.cert[0]
    );
}

#[tokio::test]
async fn run_orders_pending_domains_and_renews_inside_the_window() {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(Options {
        http_port: http.local_addr().unwrap().port(),
        tls_port: support::free_port(),
        ..Options::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut config = pebble.config(state.path());
    // Renew at once: the whole lifetime is inside the renewal window.
    config.renewal = RenewalPolicy {
        fraction: 1.0,
        at_most: Duration::from_secs(100 * 365 * 86_400),
    };
    let manager = Arc::new(Manager::new(config).unwrap());
    let _http = support::serve_http01(http, manager.clone());
    let domain = Domain::parse("renew.example.test").unwrap();
    manager.add_domain(&domain, ChallengeKind::Http01).unwrap();

    // The background loop orders the pending domain.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(manager.clone().run(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !manager.has_certificate("renew.example.test") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            manager.status(&domain)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();

    // With the window covering the whole lifetime, a fresh certificate is
    // due, though no sooner than a failure would be retried (one minute by
    // default), and renewing replaces it (served and stored).
    let first = manager.certified_key("renew.example.test").unwrap();
    let key_file = state.path().join("certs/renew.example.test.key.pem");
    let first_key = std::fs::read(&key_file).unwrap();
    assert!(manager.due(SystemTime::now()).is_empty());
    assert_eq!(
        manager.due(SystemTime::now() + Duration::from_secs(61)),
        std::slice::from_ref(&domain)
    );
    assert_eq!(
        manager
            .run_due(SystemTime::now() + Duration::from_secs(61))
            .await,
        1
    );
    let second = manager.certified_key("renew.example.test").unwrap();
    assert_ne!(first.cert[0], second.cert[0]);
    assert_ne!(std::fs::read(&key_file).unwrap(), first_key);
    assert_eq!(mode(&key_file), 0o600);
    support::verify_chain(
        &second.cert,
        &pebble.issuing_root().await,
        "renew.example.test",
    );

    // With the default policy the same certificate is far from due.
    let mut config = pebble.config(state.path());
    config.renewal = RenewalPolicy::default();
    let fresh = Manager::new(config).unwrap();
    fresh.add_domain(&domain, ChallengeKind::Http01).unwrap();
    assert!(fresh.due(SystemTime::now()).is_empty());
    let Some(Status::Valid { not_after }) = fresh.status(&domain) else {
        panic!("loaded certificate is not valid");
    };
    assert_eq!(
        fresh.due(not_after - Duration::from_secs(29 * 86_400)),
        std::slice::from_ref(&domain)
    );
}
