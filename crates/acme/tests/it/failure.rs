//! A challenge nobody answers: the domain ends `failed` with the CA's
//! reason, and the next attempt is scheduled with doubling backoff.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use acme::{Backoff, ChallengeKind, Domain, Error, Manager, Status};

use crate::support::{self, Options, Pebble};

#[tokio::test]
async fn an_unanswered_challenge_fails_with_a_reason_and_backs_off() {
    // Nothing listens on the port pebble validates HTTP-01 on.
    let pebble = Pebble::start(Options {
        http_port: support::free_port(),
        tls_port: support::free_port(),
        ..Options::default()
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut config = pebble.config(state.path());
    config.backoff = Backoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(150),
    };
    let manager = Arc::new(Manager::new(config).unwrap());
    let domain = Domain::parse("down.example.test").unwrap();

    let before = SystemTime::now();
    let error = manager
        .issue(&domain, ChallengeKind::Http01)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Validation { .. }), "{error:?}");
    let Some(Status::Failed {
        reason,
        failures,
        next_attempt,
    }) = manager.status(&domain)
    else {
        panic!("not failed: {:?}", manager.status(&domain));
    };
    assert!(
        reason.contains("connect") || reason.contains("refused"),
        "{reason}"
    );
    assert_eq!(failures, 1);
    let delay = next_attempt.duration_since(before).unwrap();
    assert!(
        (Duration::from_secs(60)..Duration::from_secs(80)).contains(&delay),
        "{delay:?}"
    );

    // Not retried before its time; due once it has come.
    assert!(manager.due(SystemTime::now()).is_empty());
    assert_eq!(manager.due(next_attempt), std::slice::from_ref(&domain));
    assert_eq!(manager.next_due(), Some(next_attempt));

    // The placeholder is still what is served, and no redirect to HTTPS.
    assert!(!manager.has_certificate("down.example.test"));
    let served = manager.certified_key("down.example.test").unwrap();
    let (issuer, subject, _) = support::describe(&served.cert[0]);
    assert_eq!(issuer, subject);

    // Each further failure doubles the delay, up to the cap.
    let mut delays = Vec::new();
    for _ in 0..2 {
        let start = SystemTime::now();
        manager
            .issue(&domain, ChallengeKind::Http01)
            .await
            .unwrap_err();
        let Some(Status::Failed {
            next_attempt,
            failures,
            ..
        }) = manager.status(&domain)
        else {
            panic!("not failed");
        };
        delays.push((
            failures,
            next_attempt.duration_since(start).unwrap().as_secs(),
        ));
    }
    assert_eq!(delays[0].0, 2);
    assert!((120..125).contains(&delays[0].1), "{delays:?}");
    assert_eq!(delays[1].0, 3);
    assert!((150..155).contains(&delays[1].1), "{delays:?}");
}

#[tokio::test]
async fn a_name_that_resolves_nowhere_fails_with_the_dns_reason() {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pebble = Pebble::start(Options {
        http_port: http.local_addr().unwrap().port(),
        tls_port: support::free_port(),
        ..Options::default()
    })
    .await;
    pebble.resolve_nowhere("nowhere.example.test").await;
    let state = tempfile::tempdir().unwrap();
    let manager = Arc::new(Manager::new(pebble.config(state.path())).unwrap());
    let _http = support::serve_http01(http, manager.clone());
    let domain = Domain::parse("nowhere.example.test").unwrap();

    manager
        .issue(&domain, ChallengeKind::Http01)
        .await
        .unwrap_err();
    let Some(Status::Failed {
        reason, failures, ..
    }) = manager.status(&domain)
    else {
        panic!("not failed: {:?}", manager.status(&domain));
    };
    assert_eq!(failures, 1);
    assert!(reason.contains("could not resolve"), "{reason}");

    // The same CA and router still issue for a name that resolves.
    let fine = Domain::parse("fine.example.test").unwrap();
    manager.issue(&fine, ChallengeKind::Http01).await.unwrap();
}
