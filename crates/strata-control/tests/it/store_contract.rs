//! The store contract, run against SQLite and PostgreSQL alike.

use strata_control::store::{
    Backend, DestinationRow, EnrolmentRow, RefreshRow, SenderRow, Store, StoreError, StreamRow,
    UserRow,
};

use super::postgres::Postgres;

fn user(id: &str, email: &str) -> UserRow {
    UserRow {
        id: id.into(),
        email: email.into(),
        password_hash: "$argon2id$x".into(),
        role: "admin".into(),
        created_at: 1,
    }
}

fn stream(id: &str, port: i64) -> StreamRow {
    StreamRow {
        id: id.into(),
        sender_id: "snd_1".into(),
        state: "starting".into(),
        reason: None,
        port,
        created_by: "a@b.c".into(),
        created_at: port,
        live_at: None,
        ended_at: None,
        destination_ids: vec!["dst_1".into()],
    }
}

/// Everything the control plane relies on the store for.
async fn contract(store: Store) {
    // Users: first-user setup is atomic, emails are unique.
    assert_eq!(store.count_users().await.unwrap(), 0);
    assert!(store
        .insert_first_user(&user("usr_1", "a@b.c"))
        .await
        .unwrap());
    assert!(!store
        .insert_first_user(&user("usr_2", "x@b.c"))
        .await
        .unwrap());
    assert!(matches!(
        store.insert_user(&user("usr_3", "a@b.c")).await,
        Err(StoreError::Duplicate)
    ));
    store.insert_user(&user("usr_4", "v@b.c")).await.unwrap();
    assert_eq!(
        store.user_by_email("a@b.c").await.unwrap().unwrap(),
        user("usr_1", "a@b.c")
    );
    assert!(store.user_by_id("usr_nope").await.unwrap().is_none());
    let emails: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert_eq!(emails, ["a@b.c", "v@b.c"]);

    // Refresh tokens: used once, revoked by family.
    let rt = |id: &str| RefreshRow {
        id: id.into(),
        user_id: "usr_1".into(),
        family: "fam_1".into(),
        secret_hash: "h".into(),
        expires_at: 100,
        used_at: None,
        revoked_at: None,
        created_at: 1,
    };
    store.insert_refresh(&rt("rt_1")).await.unwrap();
    store.insert_refresh(&rt("rt_2")).await.unwrap();
    assert!(store.use_refresh("rt_1", 5).await.unwrap());
    assert!(
        !store.use_refresh("rt_1", 6).await.unwrap(),
        "a token is used once"
    );
    assert_eq!(
        store.refresh_by_id("rt_1").await.unwrap().unwrap().used_at,
        Some(5)
    );
    assert_eq!(store.revoke_family("fam_1", 7).await.unwrap(), 2);
    assert!(
        !store.use_refresh("rt_2", 8).await.unwrap(),
        "a revoked token is not used"
    );

    // Senders and enrolment: a token completes once.
    store
        .insert_sender(&SenderRow {
            id: "snd_1".into(),
            name: "cam".into(),
            public_key: None,
            hostname: None,
            enrolled_at: None,
            last_seen_at: None,
            created_at: 1,
        })
        .await
        .unwrap();
    store
        .insert_enrolment(&EnrolmentRow {
            id: "enr_1".into(),
            sender_id: "snd_1".into(),
            secret_hash: "h".into(),
            expires_at: 100,
            used_at: None,
            created_at: 1,
        })
        .await
        .unwrap();
    assert!(store
        .complete_enrolment("enr_1", "snd_1", "PK", "host", 9)
        .await
        .unwrap());
    assert!(!store
        .complete_enrolment("enr_1", "snd_1", "PK2", "host", 10)
        .await
        .unwrap());
    let s = store.sender("snd_1").await.unwrap().unwrap();
    assert_eq!(s.public_key.as_deref(), Some("PK"));
    assert_eq!(s.enrolled_at, Some(9));
    store.sender_seen("snd_1", None, 11).await.unwrap();
    store
        .sender_seen("snd_1", Some("new-host"), 12)
        .await
        .unwrap();
    let s = store.sender("snd_1").await.unwrap().unwrap();
    assert_eq!(
        (s.hostname.as_deref(), s.last_seen_at),
        (Some("new-host"), Some(12))
    );
    assert_eq!(store.list_senders().await.unwrap().len(), 1);

    // Destinations: deletable only while no stream refers to them.
    let dest = |id: &str| DestinationRow {
        id: id.into(),
        name: "yt".into(),
        platform: "youtube".into(),
        url_sealed: "v1.xx".into(),
        url_hint: "rtmp://h/…".into(),
        key_sealed: "v1.yy".into(),
        key_hint: "****abcd".into(),
        created_at: 1,
    };
    store.insert_destination(&dest("dst_1")).await.unwrap();
    store.insert_destination(&dest("dst_2")).await.unwrap();
    assert_eq!(
        store.destination("dst_1").await.unwrap().unwrap(),
        dest("dst_1")
    );

    // Streams: the port pool, compare-and-set transitions.
    store.insert_stream(&stream("str_1", 20000)).await.unwrap();
    assert!(
        matches!(
            store.insert_stream(&stream("str_2", 20000)).await,
            Err(StoreError::Duplicate)
        ),
        "an active stream's port is not handed out twice"
    );
    assert!(
        store.stream("str_2").await.unwrap().is_none(),
        "nothing of the failed insert remains"
    );
    assert!(!store.delete_destination("dst_1").await.unwrap());
    assert!(store.delete_destination("dst_2").await.unwrap());
    assert_eq!(store.ports_in_use().await.unwrap(), [20000]);
    assert!(store
        .transition_stream("str_1", "starting", "live", None, 50)
        .await
        .unwrap());
    assert!(!store
        .transition_stream("str_1", "starting", "live", None, 51)
        .await
        .unwrap());
    assert!(store
        .transition_stream("str_1", "live", "failed", Some("gone"), 60)
        .await
        .unwrap());
    let s = store.stream("str_1").await.unwrap().unwrap();
    assert_eq!(s.state, "failed");
    assert_eq!(s.reason.as_deref(), Some("gone"));
    assert_eq!((s.live_at, s.ended_at), (Some(50), Some(60)));
    assert_eq!(s.destination_ids, ["dst_1"]);
    assert!(store.ports_in_use().await.unwrap().is_empty());
    let mut later = stream("str_3", 20000);
    later.created_at = 30000;
    store.insert_stream(&later).await.unwrap();
    assert_eq!(store.list_streams(true, 10).await.unwrap().len(), 1);
    let all: Vec<String> = store
        .list_streams(false, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(all, ["str_3", "str_1"], "newest first");
    let mut counts = store.count_streams_by_state().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [("failed".to_string(), 1), ("starting".to_string(), 1)]
    );

    // Audit: newest first.
    store
        .audit(1, "a@b.c", "stream.start", "str_1", "")
        .await
        .unwrap();
    store
        .audit(2, "a@b.c", "stream.stop", "str_1", "why")
        .await
        .unwrap();
    let log = store.list_audit(10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "stream.stop");
    assert_eq!(log[0].detail, "why");
}

#[tokio::test]
async fn sqlite_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/strata.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the database file is private");
    contract(store.clone()).await;
    store.close().await;
    // Migrations are recorded: opening again applies nothing twice.
    let again = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(again.count_users().await.unwrap(), 2);
}

#[tokio::test]
async fn postgres_store_contract() {
    let pg = tokio::task::spawn_blocking(Postgres::start).await.unwrap();
    let store = Store::connect(&pg.url())
        .await
        .expect("connects to the throwaway cluster");
    assert_eq!(store.backend(), Backend::Postgres);
    contract(store.clone()).await;
    store.close().await;
    let again = Store::connect(&pg.url()).await.unwrap();
    assert_eq!(again.count_users().await.unwrap(), 2);
    again.close().await;
    drop(pg);
}

#[tokio::test]
async fn unknown_database_urls_are_refused() {
    let err = Store::connect("mysql://x").await.unwrap_err();
    assert!(err.to_string().contains("sqlite://"), "{err}");
}
