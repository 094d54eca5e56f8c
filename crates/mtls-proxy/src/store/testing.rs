//! Helpers shared by the store's unit tests: real SQLite files in temporary
//! directories, never mocks.

use super::{Kind, Record, Recorder, Store, StoreConfig, StoreTasks};

/// A fresh directory and a config pointing into it. Keep the directory alive
/// for the test's duration; dropping it deletes the database.
pub(crate) fn temp_config() -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = StoreConfig::new(dir.path().join("records.db"));
    (dir, config)
}

/// Opens the store and starts its tasks.
pub(crate) async fn start(config: &StoreConfig) -> (Recorder, StoreTasks) {
    let store = Store::open(config).await.expect("open store");
    Recorder::start(store).expect("start recorder")
}

/// A plain GET record for `path`, starting now.
pub(crate) fn request(path: &str) -> Record {
    let mut rec = Record::new(Kind::Request);
    rec.method = Some(http::Method::GET);
    rec.path = Some(path.to_owned());
    rec.status = Some(200);
    rec
}

/// A header map from `(name, value)` pairs, in order.
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

/// How many rows the database holds.
pub(crate) async fn count_rows(store: &Store) -> u64 {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM exchanges")
        .fetch_one(&store.inner.reader)
        .await
        .expect("count rows");
    n.unsigned_abs()
}
