//! External account binding against a pebble that requires it.

use acme::{ExternalAccount, Manager};

use crate::support::{Options, Pebble};

// A MAC key made for this test (base64url of 32 bytes).
const KID: &str = "kid-test";
const HMAC: &str = "dGhpcy1pcy1hLXRlc3QtbWFjLWtleS0zMi1ieXRlcyE";

#[tokio::test]
async fn accounts_bind_to_an_external_account_when_the_ca_requires_it() {
    let pebble = Pebble::start(Options {
        http_port: crate::support::free_port(),
        tls_port: crate::support::free_port(),
        eab: vec![(KID.into(), HMAC.into())],
    })
    .await;

    // Without binding, the CA refuses to register the account.
    let state = tempfile::tempdir().unwrap();
    let unbound = Manager::new(pebble.config(state.path())).unwrap();
    let error = unbound.account_id().await.unwrap_err();
    assert!(
        error.to_string().to_lowercase().contains("external"),
        "{error}"
    );

    // With the key id and MAC key, it registers; a wrong key is refused.
    let mut config = pebble.config(state.path());
    config.external_account = Some(ExternalAccount {
        key_id: KID.into(),
        hmac_key: HMAC.into(),
    });
    let bound = Manager::new(config.clone()).unwrap();
    assert!(bound.account_id().await.unwrap().starts_with("https://"));

    let other_state = tempfile::tempdir().unwrap();
    let mut wrong = pebble.config(other_state.path());
    wrong.external_account = Some(ExternalAccount {
        key_id: KID.into(),
        hmac_key: "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktISE".into(),
    });
    assert!(Manager::new(wrong).unwrap().account_id().await.is_err());
}
