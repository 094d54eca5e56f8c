//! Searching the store: [`Filter`] (the typed query), [`FilterParams`] (the
//! same as strings, from a CLI or a query string) and [`Store::query`].

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

use super::plan::{self, Plan};
use super::record::BodyEncoding;
use super::{Kind, RecordRow, Store, StoreError};

/// How many rows a query returns when no limit is given.
pub const DEFAULT_LIMIT: usize = 100;

/// The most rows one query may return, so that a careless `limit` cannot
/// pull the whole database into memory.
pub const MAX_LIMIT: usize = 10_000;

/// Which rows to return. Every set field narrows the result; rows come back
/// newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only rows that started at or after this time.
    pub since: Option<SystemTime>,
    /// Only rows that started before this time.
    pub until: Option<SystemTime>,
    /// Only rows with this status or status class. Failed handshakes have no
    /// status, so any status filter excludes them.
    pub status: Option<StatusFilter>,
    /// Only rows of this route (exact match).
    pub route: Option<String>,
    /// Only rows of this client identity: an exact match, or a SQLite GLOB
    /// pattern when it contains `*`, `?` or `[`.
    pub identity: Option<String>,
    /// Only rows whose path matches this SQLite GLOB pattern, e.g. `/api/*`.
    pub path_glob: Option<String>,
    /// Only requests or only failed handshakes.
    pub kind: Option<Kind>,
    /// The most rows to return; capped at [`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            since: None,
            until: None,
            status: None,
            route: None,
            identity: None,
            path_glob: None,
            kind: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// A status filter: a whole class such as `5xx`, or one exact status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// The hundreds digit of a class: `5` means 500-599.
    Class(u8),
    /// One status code.
    Exact(u16),
}

impl StatusFilter {
    /// Parses `1xx`..`5xx` (case-insensitive) or a number from 100 to 599.
    pub fn parse(text: &str) -> Option<StatusFilter> {
        let text = text.trim();
        if let Some(digit) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
            return match digit {
                "1" | "2" | "3" | "4" | "5" => digit.parse().ok().map(StatusFilter::Class),
                _ => None,
            };
        }
        match text.parse::<u16>() {
            Ok(code @ 100..=599) => Some(StatusFilter::Exact(code)),
            _ => None,
        }
    }

    /// The half-open range of statuses this filter accepts.
    pub(crate) fn range(self) -> (i64, i64) {
        match self {
            StatusFilter::Class(c) => (i64::from(c) * 100, i64::from(c) * 100 + 100),
            StatusFilter::Exact(s) => (i64::from(s), i64::from(s) + 1),
        }
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusFilter::Class(c) => write!(f, "{c}xx"),
            StatusFilter::Exact(s) => write!(f, "{s}"),
        }
    }
}

/// A filter as text, the way `mtls-proxy logs --since 15m` or
/// `/api/logs?status=5xx` spell it. Turn it into a [`Filter`] with
/// [`Filter::parse`]. Unknown keys are rejected when deserialising.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// RFC3339 time (`2024-05-01T12:00:00Z`, offsets allowed; UTC when
    /// omitted) or a duration meaning "that long ago" (`15m`, `2h`, `1d`).
    pub since: Option<String>,
    /// Same forms as `since`.
    pub until: Option<String>,
    /// `2xx`..`5xx` (also `1xx`) or an exact status 100-599.
    pub status: Option<String>,
    /// Exact route name.
    pub route: Option<String>,
    /// Exact identity, or a GLOB pattern with `*`, `?` or `[`.
    pub identity: Option<String>,
    /// GLOB pattern for the path.
    pub path: Option<String>,
    /// `request` or `handshake`.
    pub kind: Option<String>,
    /// 1 to 10000; 100 when omitted.
    pub limit: Option<String>,
}

/// A filter value that could not be parsed; it names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}` value {value:?}: expected {expected}")]
pub struct FilterError {
    /// The field name as the user wrote it (`since`, `status`, ...).
    pub field: &'static str,
    /// The rejected value.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

const TIME_EXPECTED: &str =
    "an RFC3339 time like 2024-05-01T12:00:00Z or a duration ago like 15m, 2h or 7d";

impl Filter {
    /// Parses string parameters into a filter, resolving durations against
    /// the current time.
    pub fn parse(params: &FilterParams) -> Result<Filter, FilterError> {
        Filter::parse_at(params, SystemTime::now())
    }

    /// Like [`Filter::parse`], with "now" given, so callers and tests get
    /// reproducible results.
    pub fn parse_at(params: &FilterParams, now: SystemTime) -> Result<Filter, FilterError> {
        let mut filter = Filter::default();

        if let Some(text) = present(&params.since) {
            filter.since = Some(parse_time("since", text, now)?);
        }
        if let Some(text) = present(&params.until) {
            let until = parse_time("until", text, now)?;
            if filter.since.is_some_and(|since| until <= since) {
                return Err(FilterError {
                    field: "until",
                    value: text.to_owned(),
                    expected: "a time after `since`",
                });
            }
            filter.until = Some(until);
        }
        if let Some(text) = present(&params.status) {
            filter.status = Some(StatusFilter::parse(text).ok_or_else(|| FilterError {
                field: "status",
                value: text.to_owned(),
                expected: "a status class 1xx to 5xx or a status code from 100 to 599",
            })?);
        }
        filter.route = present(&params.route).map(str::to_owned);
        filter.identity = present(&params.identity).map(str::to_owned);
        filter.path_glob = present(&params.path).map(str::to_owned);
        if let Some(text) = present(&params.kind) {
            filter.kind = Some(text.parse().map_err(|()| FilterError {
                field: "kind",
                value: text.to_owned(),
                expected: "`request` or `handshake`",
            })?);
        }
        if let Some(text) = present(&params.limit) {
            filter.limit = match text.parse::<usize>() {
                Ok(n @ 1..=MAX_LIMIT) => n,
                _ => {
                    return Err(FilterError {
                        field: "limit",
                        value: text.to_owned(),
                        expected: "a whole number from 1 to 10000",
                    })
                }
            };
        }
        Ok(filter)
    }
}

/// A parameter's trimmed value; empty counts as absent, as it does in
/// query strings like `?status=&route=api`.
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_time(field: &'static str, text: &str, now: SystemTime) -> Result<SystemTime, FilterError> {
    let error = || FilterError {
        field,
        value: text.to_owned(),
        expected: TIME_EXPECTED,
    };
    if text == "now" {
        return Ok(now);
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return now.checked_sub(ago).ok_or_else(error);
    }
    parse_timestamp(text).ok_or_else(error)
}

/// RFC 3339 with `Z`, `+hh:mm` or `-hh:mm`; without any offset the time is
/// taken as UTC.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;
    let parsed = OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
        .ok()?;
    Some(parsed.into())
}

/// The columns a query reads, by the names [`StoredRow`] gives them.
const COLUMNS: &str = "SELECT id, ts, duration_us, kind, route, upstream, method, path, query, \
     status, bytes_in, bytes_out, client_identity, peer, tls_version, error, body_encoding, \
     truncated, request_headers, response_headers, request_body, response_body, sni";

impl Store {
    /// Returns the rows matching `filter`, newest first, with bodies
    /// decompressed. Runs on the read-only pool, so it never delays writes.
    pub async fn query(&self, filter: &Filter) -> Result<Vec<RecordRow>, StoreError> {
        self.query_with_probe(filter, plan::PROBE).await
    }

    /// [`Store::query`] with the planner's count limit given, so that tests
    /// take every branch of the choice on a few rows.
    pub(crate) async fn query_with_probe(
        &self,
        filter: &Filter,
        probe: i64,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let pool = &self.inner.reader;
        let access = match plan::plan(pool, filter, probe)
            .await
            .map_err(StoreError::Query)?
        {
            Plan::Empty => return Ok(Vec::new()),
            Plan::Through(access) => access,
        };
        let raw: Vec<StoredRow> = plan::select(COLUMNS, &access, filter)
            .build_query_as()
            .fetch_all(pool)
            .await
            .map_err(StoreError::Query)?;
        // Decompressing and parsing JSON is CPU work; keep it off the async
        // workers, which also serve the proxy.
        tokio::task::spawn_blocking(move || raw.into_iter().map(decode_row).collect())
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A row as stored, before decoding; read by column name.
#[derive(sqlx::FromRow)]
struct StoredRow {
    id: i64,
    ts: i64,
    duration_us: i64,
    kind: String,
    route: Option<String>,
    upstream: Option<String>,
    method: Option<String>,
    path: Option<String>,
    query: Option<String>,
    status: Option<i64>,
    bytes_in: i64,
    bytes_out: i64,
    client_identity: Option<String>,
    peer: Option<String>,
    tls_version: Option<String>,
    sni: Option<String>,
    error: Option<String>,
    body_encoding: String,
    truncated: bool,
    request_headers: String,
    response_headers: String,
    request_body: Option<Vec<u8>>,
    response_body: Option<Vec<u8>>,
}

fn decode_row(raw: StoredRow) -> Result<RecordRow, StoreError> {
    let id = raw.id;
    let corrupt = |reason: String| StoreError::CorruptRow { id, reason };
    let unsigned = |v: i64| v.max(0).unsigned_abs();

    let kind = raw
        .kind
        .parse()
        .map_err(|()| corrupt(format!("unknown kind {:?}", raw.kind)))?;
    let encoding = BodyEncoding::parse(&raw.body_encoding)
        .ok_or_else(|| corrupt(format!("unknown body encoding {:?}", raw.body_encoding)))?;
    let headers = |json: &str| {
        serde_json::from_str::<Vec<(String, String)>>(json)
            .map_err(|e| corrupt(format!("headers are not a JSON list of pairs: {e}")))
    };
    let body = |stored: Option<Vec<u8>>| -> Result<Option<Bytes>, StoreError> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        match encoding {
            BodyEncoding::Identity => Ok(Some(Bytes::from(stored))),
            BodyEncoding::Zstd => zstd::stream::decode_all(stored.as_slice())
                .map(|plain| Some(Bytes::from(plain)))
                .map_err(|e| corrupt(format!("body does not decompress: {e}"))),
        }
    };
    Ok(RecordRow {
        id,
        ts_us: raw.ts,
        duration_us: raw.duration_us,
        kind,
        route: raw.route,
        upstream: raw.upstream,
        method: raw.method,
        path: raw.path,
        query: raw.query,
        status: raw.status.and_then(|s| u16::try_from(s).ok()),
        bytes_in: unsigned(raw.bytes_in),
        bytes_out: unsigned(raw.bytes_out),
        client_identity: raw.client_identity,
        peer: raw.peer,
        tls_version: raw.tls_version,
        sni: raw.sni,
        error: raw.error,
        request_headers: headers(&raw.request_headers)?,
        response_headers: headers(&raw.response_headers)?,
        request_body: body(raw.request_body)?,
        response_body: body(raw.response_body)?,
        truncated: raw.truncated,
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use std::time::Duration;

    use super::*;
    use crate::store::testing::{header_map, request, start, temp_config};
    use crate::store::Record;

    fn params(pairs: &[(&str, &str)]) -> FilterParams {
        let mut p = FilterParams::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "since" => p.since = value,
                "until" => p.until = value,
                "status" => p.status = value,
                "route" => p.route = value,
                "identity" => p.identity = value,
                "path" => p.path = value,
                "kind" => p.kind = value,
                "limit" => p.limit = value,
                other => panic!("unknown test key {other}"),
            }
        }
        p
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parse_accepts_durations_timestamps_and_statuses() {
        let now = at(1_714_564_800); // 2024-05-01T12:00:00Z
        let f = Filter::parse_at(
            &params(&[
                ("since", "15m"),
                ("until", "now"),
                ("status", "5xx"),
                ("route", "api"),
                ("identity", "spiffe://corp/*"),
                ("path", "/v1/*"),
                ("kind", "request"),
                ("limit", "20"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(f.since, Some(at(1_714_564_800 - 900)));
        assert_eq!(f.until, Some(now));
        assert_eq!(f.status, Some(StatusFilter::Class(5)));
        assert_eq!(f.route.as_deref(), Some("api"));
        assert_eq!(f.identity.as_deref(), Some("spiffe://corp/*"));
        assert_eq!(f.path_glob.as_deref(), Some("/v1/*"));
        assert_eq!(f.kind, Some(Kind::Request));
        assert_eq!(f.limit, 20);

        let f = Filter::parse_at(
            &params(&[
                ("since", "2024-05-01T10:00:00Z"),
                ("until", "2024-05-01T13:30:00.5+02:00"),
                ("status", "404"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(f.since, Some(at(1_714_557_600)));
        assert_eq!(
            f.until,
            Some(at(1_714_564_800 - 1800) + Duration::from_millis(500))
        );
        assert_eq!(f.status, Some(StatusFilter::Exact(404)));

        let f = Filter::parse_at(&params(&[("since", "2024-05-01T07:00:00-05:00")]), now).unwrap();
        assert_eq!(f.since, Some(now));

        // Empty values count as absent, as they do in query strings.
        let f = Filter::parse_at(&params(&[("since", ""), ("status", " ")]), now).unwrap();
        assert_eq!(f, Filter::default());
    }

    #[test]
    fn parse_errors_name_the_field() {
        let now = at(1_714_564_800);
        let cases = [
            ("since", "yesterday-ish"),
            ("until", "2024-13-01T00:00:00Z"),
            ("status", "6xx"),
            ("status", "99"),
            ("status", "abc"),
            ("kind", "tcp"),
            ("limit", "0"),
            ("limit", "10001"),
            ("limit", "-5"),
        ];
        for (field, value) in cases {
            let err = Filter::parse_at(&params(&[(field, value)]), now).unwrap_err();
            assert_eq!(err.field, field, "{value}");
            assert_eq!(err.value, value);
            let text = err.to_string();
            assert!(text.contains(&format!("`{field}`")), "{text}");
            assert!(text.contains(value), "{text}");
        }

        let err = Filter::parse_at(&params(&[("since", "1h"), ("until", "2h")]), now).unwrap_err();
        assert_eq!(err.field, "until");
    }

    #[test]
    fn params_reject_unknown_keys() {
        let err = serde_json::from_str::<FilterParams>(r#"{"sinse": "1h"}"#).unwrap_err();
        assert!(err.to_string().contains("sinse"), "{err}");
        let ok: FilterParams = serde_json::from_str(r#"{"since": "1h", "limit": "5"}"#).unwrap();
        assert_eq!(ok.limit.as_deref(), Some("5"));
    }

    #[test]
    fn status_filter_parses_and_displays() {
        assert_eq!(StatusFilter::parse("2XX"), Some(StatusFilter::Class(2)));
        assert_eq!(StatusFilter::parse("100"), Some(StatusFilter::Exact(100)));
        assert_eq!(StatusFilter::parse("600"), None);
        assert_eq!(StatusFilter::parse("0xx"), None);
        assert_eq!(StatusFilter::Class(4).to_string(), "4xx");
        assert_eq!(StatusFilter::Exact(503).range(), (503, 504));
    }

    fn exchange(
        secs_ago: u64,
        route: &str,
        path: &str,
        status: Option<u16>,
        identity: &str,
    ) -> Record {
        let mut rec = request(path);
        rec.ts = SystemTime::now() - Duration::from_secs(secs_ago);
        rec.route = Some(route.into());
        rec.status = status;
        rec.client_identity = Some(identity.to_owned());
        rec
    }

    #[tokio::test]
    async fn every_filter_narrows_the_result() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        let mut handshake = Record::new(Kind::Handshake);
        handshake.ts = SystemTime::now() - Duration::from_secs(5);
        handshake.error = Some("tls:unknown_issuer".to_owned());
        handshake.peer = Some("10.0.0.9:5555".parse().unwrap());
        for rec in [
            exchange(3600, "api", "/v1/users", Some(200), "spiffe://corp/web"),
            exchange(1800, "api", "/v1/orders", Some(503), "spiffe://corp/batch"),
            exchange(600, "admin", "/admin/x", Some(404), "spiffe://corp/web"),
            exchange(60, "api", "/v2/users", Some(502), "spiffe://other/web"),
            handshake,
        ] {
            recorder.record(rec);
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();

        let paths = |rows: Vec<RecordRow>| -> Vec<String> {
            rows.into_iter()
                .map(|r| r.path.unwrap_or_else(|| "-".to_owned()))
                .collect()
        };
        let run = |filter: Filter| async move { paths(store.query(&filter).await.unwrap()) };

        assert_eq!(
            run(Filter::default()).await,
            ["-", "/v2/users", "/admin/x", "/v1/orders", "/v1/users"],
            "newest first"
        );
        let now = SystemTime::now();
        assert_eq!(
            run(Filter {
                since: Some(now - Duration::from_secs(900)),
                ..Filter::default()
            })
            .await,
            ["-", "/v2/users", "/admin/x"]
        );
        assert_eq!(
            run(Filter {
                until: Some(now - Duration::from_secs(900)),
                ..Filter::default()
            })
            .await,
            ["/v1/orders", "/v1/users"]
        );
        assert_eq!(
            run(Filter {
                status: Some(StatusFilter::Class(5)),
                ..Filter::default()
            })
            .await,
            ["/v2/users", "/v1/orders"]
        );
        assert_eq!(
            run(Filter {
                status: Some(StatusFilter::Exact(404)),
                ..Filter::default()
            })
            .await,
            ["/admin/x"]
        );
        // Successes are not in the status index; they are found all the same.
        assert_eq!(
            run(Filter {
                status: Some(StatusFilter::Class(2)),
                ..Filter::default()
            })
            .await,
            ["/v1/users"]
        );
        assert_eq!(
            run(Filter {
                route: Some("api".to_owned()),
                ..Filter::default()
            })
            .await,
            ["/v2/users", "/v1/orders", "/v1/users"]
        );
        assert_eq!(
            run(Filter {
                identity: Some("spiffe://corp/web".to_owned()),
                ..Filter::default()
            })
            .await,
            ["/admin/x", "/v1/users"]
        );
        assert_eq!(
            run(Filter {
                identity: Some("spiffe://corp/*".to_owned()),
                ..Filter::default()
            })
            .await,
            ["/admin/x", "/v1/orders", "/v1/users"]
        );
        assert_eq!(
            run(Filter {
                path_glob: Some("/v?/users".to_owned()),
                ..Filter::default()
            })
            .await,
            ["/v2/users", "/v1/users"]
        );
        assert_eq!(
            run(Filter {
                kind: Some(Kind::Handshake),
                ..Filter::default()
            })
            .await,
            ["-"]
        );
        assert_eq!(
            run(Filter {
                limit: 2,
                ..Filter::default()
            })
            .await,
            ["-", "/v2/users"]
        );
        // Filters combine.
        assert_eq!(
            run(Filter {
                route: Some("api".to_owned()),
                status: Some(StatusFilter::Class(5)),
                identity: Some("spiffe://corp/*".to_owned()),
                ..Filter::default()
            })
            .await,
            ["/v1/orders"]
        );

        let handshake = &store
            .query(&Filter {
                kind: Some(Kind::Handshake),
                ..Filter::default()
            })
            .await
            .unwrap()[0];
        assert_eq!(handshake.error.as_deref(), Some("tls:unknown_issuer"));
        assert_eq!(handshake.peer.as_deref(), Some("10.0.0.9:5555"));
        assert_eq!(handshake.status, None);
        tasks.shutdown().await;
    }

    /// Rows of every kind the filters tell apart, spread over an hour:
    /// routes, identities, paths, statuses (successes, redirects, errors,
    /// upgrades) and a few failed handshakes.
    fn varied(n: u64) -> Vec<Record> {
        let routes = ["api", "admin", "ws", "static"];
        let identities = [
            "spiffe://corp/web",
            "spiffe://corp/batch",
            "spiffe://other/web",
        ];
        let statuses = [
            200, 200, 200, 201, 204, 301, 304, 404, 404, 429, 500, 502, 503, 101,
        ];
        let now = SystemTime::now();
        let step = 3_600_000 / n;
        let at = move |i: u64| now - Duration::from_millis(3_600_000 - i * step);
        (0..n)
            .map(|i| {
                if i % 97 == 13 {
                    let mut rec = Record::new(Kind::Handshake);
                    rec.ts = at(i);
                    rec.error = Some("tls:unknown_issuer".to_owned());
                    return rec;
                }
                let route = routes[(i % 4) as usize];
                let path = match i % 5 {
                    0 => format!("/api/v1/users/{}", i % 7),
                    1 => format!("/api/v2/orders/{i}"),
                    2 => "/admin/panel".to_owned(),
                    3 => format!("/static/caf\u{e9}/{}", i % 3),
                    _ => format!("/x{}", i % 11),
                };
                let mut rec = exchange(0, route, &path, Some(statuses[(i % 14) as usize]), "");
                rec.ts = at(i);
                rec.client_identity = (i % 6 != 5).then(|| identities[(i % 3) as usize].to_owned());
                rec
            })
            .collect()
    }

    /// Filters of every kind, alone and combined, that match many rows, a
    /// few, or none.
    fn searches(now: SystemTime) -> Vec<FilterParams> {
        let one = |k: &str, v: &str| params(&[(k, v)]);
        let since = humantime::format_rfc3339(now - Duration::from_secs(1200)).to_string();
        let until = humantime::format_rfc3339(now - Duration::from_secs(600)).to_string();
        vec![
            FilterParams::default(),
            one("limit", "7"),
            one("status", "5xx"),
            one("status", "4xx"),
            one("status", "3xx"),
            one("status", "2xx"),
            one("status", "1xx"),
            one("status", "404"),
            one("status", "101"),
            one("status", "418"),
            one("status", "200"),
            one("route", "api"),
            one("route", "nowhere"),
            one("identity", "spiffe://corp/web"),
            one("identity", "spiffe://corp/*"),
            one("identity", "*web"),
            one("identity", "spiffe://none/*"),
            one("path", "/api/*"),
            one("path", "/api/v1/users/3"),
            one("path", "/static/caf\u{e9}/*"),
            one("path", "/x?"),
            one("path", "*/orders/*"),
            one("path", "/nothing/*"),
            one("path", "/api/v[12]/*"),
            one("kind", "handshake"),
            one("kind", "request"),
            one("since", &since),
            params(&[("since", &since), ("until", &until)]),
            params(&[("since", &since), ("status", "5xx"), ("limit", "3")]),
            params(&[("route", "api"), ("status", "5xx")]),
            params(&[("route", "admin"), ("path", "/api/*")]),
            params(&[
                ("route", "api"),
                ("identity", "spiffe://corp/*"),
                ("path", "/api/v2/*"),
            ]),
            params(&[("kind", "handshake"), ("since", &since)]),
            params(&[
                ("status", "404"),
                ("path", "/admin/*"),
                ("identity", "spiffe://other/web"),
            ]),
        ]
    }

    /// Whatever index the planner picks, a search returns exactly the rows a
    /// scan of the whole table without any index returns, in the same
    /// order. Small count limits send the planner down each of its branches
    /// on a few hundred rows.
    #[tokio::test]
    async fn the_chosen_index_never_changes_the_result() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        for rec in varied(700) {
            recorder.record(rec);
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();
        let now = SystemTime::now();
        let mut seen = std::collections::BTreeSet::new();
        for params in searches(now) {
            let filter = Filter::parse_at(&params, now).unwrap();
            let expected: Vec<i64> = plan::select_by_scan(&filter)
                .build_query_scalar()
                .fetch_all(&store.inner.reader)
                .await
                .unwrap();
            for probe in [1, 3, 40, 200, plan::PROBE] {
                let chosen = plan::plan(&store.inner.reader, &filter, probe)
                    .await
                    .unwrap();
                seen.insert(match &chosen {
                    Plan::Empty => "none",
                    Plan::Through(access) => access.index,
                });
                let got: Vec<i64> = store
                    .query_with_probe(&filter, probe)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.id)
                    .collect();
                assert_eq!(got, expected, "{params:?} with probe {probe}: {chosen:?}");
            }
        }
        // Every index served some search, and some searches ended early.
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [
                "exchanges_handshake_ts",
                "exchanges_identity_ts",
                "exchanges_path_ts",
                "exchanges_route_ts",
                "exchanges_status_ts",
                "exchanges_ts",
                "none"
            ]
        );
        tasks.shutdown().await;
    }

    /// What SQLite does with the chosen index: no search reads the table
    /// without an index, and only an index whose entries are not in time
    /// order is sorted.
    #[tokio::test]
    async fn searches_read_through_their_index_and_sort_only_unordered_ranges() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        for rec in varied(300) {
            recorder.record(rec);
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();
        let now = SystemTime::now();
        let explain = |access: plan::Access, filter: Filter| async move {
            let head = "EXPLAIN QUERY PLAN SELECT id";
            let rows: Vec<(i64, i64, i64, String)> = plan::select(head, &access, &filter)
                .build_query_as()
                .fetch_all(&store.inner.reader)
                .await
                .unwrap();
            rows.into_iter().map(|r| r.3).collect::<Vec<_>>()
        };
        let cases = [
            (params(&[("status", "5xx")]), "exchanges_status_ts", false),
            (params(&[("status", "1xx")]), "exchanges_status_ts", false),
            (params(&[("status", "404")]), "exchanges_status_ts", true),
            (params(&[("path", "/api/*")]), "exchanges_path_ts", false),
            (
                params(&[("path", "/admin/panel")]),
                "exchanges_path_ts",
                true,
            ),
            (
                params(&[("identity", "spiffe://corp/*")]),
                "exchanges_identity_ts",
                false,
            ),
            (
                params(&[("identity", "spiffe://corp/web")]),
                "exchanges_identity_ts",
                true,
            ),
            (params(&[("route", "admin")]), "exchanges_route_ts", true),
            (
                params(&[("kind", "handshake")]),
                "exchanges_handshake_ts",
                true,
            ),
            (params(&[("since", "10m")]), "exchanges_ts", true),
        ];
        for (params, index, ordered) in cases {
            let filter = Filter::parse_at(&params, now).unwrap();
            let access = plan::candidates(&filter)
                .into_iter()
                .find(|a| a.index == index)
                .unwrap_or_else(|| panic!("{params:?}: no candidate {index}"));
            assert_eq!(access.ordered, ordered, "{params:?}");
            let steps = explain(access, filter).await;
            let text = steps.join("; ");
            assert!(
                text.contains(&format!("INDEX {index}")),
                "{params:?}: {text}"
            );
            assert!(
                !steps.iter().any(|s| s == "SCAN exchanges"),
                "{params:?} reads the whole table: {text}"
            );
            // The outer ORDER BY sorts the few rows selected; a sort inside
            // the subquery means the index range was sorted.
            let sorts = steps
                .iter()
                .filter(|s| s.contains("USE TEMP B-TREE FOR ORDER BY"))
                .count();
            assert_eq!(sorts, if ordered { 1 } else { 2 }, "{params:?}: {text}");
        }
        tasks.shutdown().await;
    }

    /// Counts decide the index: the one with the fewest entries in the time
    /// window, none at all when a count finds nothing, and a walk in time
    /// order when every candidate holds many.
    #[tokio::test]
    async fn the_planner_takes_the_index_with_the_fewest_entries() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        for rec in varied(300) {
            recorder.record(rec);
        }
        recorder.flush().await;
        let store = recorder.store().unwrap();
        let now = SystemTime::now();
        let chosen = |pairs: &'static [(&'static str, &'static str)], probe: i64| async move {
            let filter = Filter::parse_at(&params(pairs), now).unwrap();
            match plan::plan(&store.inner.reader, &filter, probe)
                .await
                .unwrap()
            {
                Plan::Empty => "none",
                Plan::Through(access) => access.index,
            }
        };
        assert_eq!(chosen(&[("path", "/nothing/*")], 1000).await, "none");
        assert_eq!(
            chosen(&[("route", "nowhere"), ("status", "5xx")], 1000).await,
            "none"
        );
        assert_eq!(
            chosen(&[("path", "/admin/*")], 1000).await,
            "exchanges_path_ts"
        );
        // 1 in 14 rows is 404, 1 in 4 is on route api: the status wins.
        assert_eq!(
            chosen(&[("route", "api"), ("status", "404")], 1000).await,
            "exchanges_status_ts"
        );
        // A window narrows what an index in time order holds, not what a
        // range of values holds: the 25 rows of the last five minutes win
        // over the 64 4xx of the whole hour, and the 6 rows of route api
        // in the window over both.
        assert_eq!(
            chosen(&[("since", "5m"), ("status", "4xx")], 1000).await,
            "exchanges_ts"
        );
        assert_eq!(
            chosen(
                &[("since", "5m"), ("status", "4xx"), ("route", "api")],
                1000
            )
            .await,
            "exchanges_route_ts"
        );
        assert_eq!(
            chosen(&[("since", "5m"), ("status", "2xx")], 1000).await,
            "exchanges_ts"
        );
        // Every candidate over the limit: walk in time order, through the
        // route's index rather than all rows.
        assert_eq!(chosen(&[("status", "5xx")], 5).await, "exchanges_ts");
        assert_eq!(
            chosen(&[("route", "api"), ("path", "/api/*")], 5).await,
            "exchanges_route_ts"
        );
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn every_field_round_trips() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        let mut rec = Record::new(Kind::Request);
        rec.ts = UNIX_EPOCH + Duration::from_micros(1_714_564_800_123_456);
        rec.duration = Duration::from_micros(12_345);
        rec.route = Some("api".into());
        rec.upstream = Some("10.1.2.3:8080".into());
        rec.method = Some(http::Method::POST);
        rec.path = Some("/v1/items".into());
        rec.query = Some("page=2".into());
        rec.status = Some(201);
        rec.bytes_in = 11;
        rec.bytes_out = 22;
        rec.client_identity = Some("spiffe://corp/web".into());
        rec.peer = Some("[::1]:4433".parse().unwrap());
        rec.tls_version = Some("TLSv1.3");
        rec.sni = Some("api.corp".into());
        rec.error = None;
        rec.request_headers =
            recorder.encode_headers(&header_map(&[("content-type", "application/json")]));
        rec.response_headers = recorder.encode_headers(&header_map(&[("x-id", "7")]));
        rec.request_body = Some(Bytes::from_static(b"{\"a\":1}"));
        rec.response_body = Some(Bytes::from_static(&[0, 159, 146, 150]));
        rec.truncated = true;
        recorder.record(rec.clone());
        recorder.flush().await;

        let rows = recorder.query(&Filter::default()).await.unwrap();
        let row = &rows[0];
        assert_eq!(row.ts_us, 1_714_564_800_123_456);
        assert_eq!(row.time(), rec.ts);
        assert_eq!(row.duration(), rec.duration);
        assert_eq!(row.kind, Kind::Request);
        assert_eq!(row.route.as_deref(), Some("api"));
        assert_eq!(row.upstream.as_deref(), Some("10.1.2.3:8080"));
        assert_eq!(row.method.as_deref(), Some("POST"));
        assert_eq!(row.path, rec.path);
        assert_eq!(row.query, rec.query);
        assert_eq!(row.status, Some(201));
        assert_eq!((row.bytes_in, row.bytes_out), (11, 22));
        assert_eq!(row.client_identity, rec.client_identity);
        assert_eq!(row.peer.as_deref(), Some("[::1]:4433"));
        assert_eq!(row.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(row.sni.as_deref(), Some("api.corp"));
        assert_eq!(row.error, None);
        assert_eq!(
            row.request_headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(row.response_headers, [("x-id".to_owned(), "7".to_owned())]);
        assert_eq!(row.request_body, rec.request_body);
        assert_eq!(row.response_body, rec.response_body);
        assert!(row.truncated);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn secrets_are_redacted_before_they_reach_the_file() {
        let (_dir, mut cfg) = temp_config();
        cfg.redact_headers = vec!["X-Api-Key".to_owned()];
        cfg.redact_query_params = vec!["otp".to_owned()];
        let (recorder, tasks) = start(&cfg).await;
        let mut rec = request("/login");
        rec.query = Some("next=/home&access_token=s3cr3t-query&OTP=s3cr3t-otp".to_owned());
        rec.request_headers = recorder.encode_headers(&header_map(&[
            ("Authorization", "Bearer s3cr3t-token"),
            ("Cookie", "session=s3cr3t-cookie"),
            ("x-api-key", "s3cr3t-key"),
            ("accept", "text/html"),
        ]));
        rec.response_headers =
            recorder.encode_headers(&header_map(&[("set-cookie", "session=s3cr3t-new")]));
        recorder.record(rec);
        recorder.flush().await;
        let store = recorder.store().unwrap().clone();

        let row = &store.query(&Filter::default()).await.unwrap()[0];
        assert_eq!(
            row.request_headers,
            [
                ("authorization".to_owned(), "[redacted]".to_owned()),
                ("cookie".to_owned(), "[redacted]".to_owned()),
                ("x-api-key".to_owned(), "[redacted]".to_owned()),
                ("accept".to_owned(), "text/html".to_owned()),
            ]
        );
        assert_eq!(row.response_headers[0].1, "[redacted]");
        assert_eq!(
            row.query.as_deref(),
            Some("next=/home&access_token=[redacted]&OTP=[redacted]")
        );

        // Nothing secret anywhere in the database or its log.
        tasks.shutdown().await;
        let mut raw = std::fs::read(&cfg.path).unwrap();
        if let Ok(wal) = std::fs::read(crate::store::schema::wal_path(&cfg.path)) {
            raw.extend(wal);
        }
        assert!(
            !raw.windows(6).any(|w| w == b"s3cr3t"),
            "a secret reached the file"
        );
    }

    #[tokio::test]
    async fn a_separately_opened_read_only_store_sees_the_writers_rows() {
        let (_dir, cfg) = temp_config();
        let (recorder, tasks) = start(&cfg).await;
        recorder.record(request("/one"));
        recorder.flush().await;

        // While the proxy is running, e.g. `mtls-proxy logs` in a shell.
        let reader = Store::open_read_only(&cfg.path).await.unwrap();
        assert_eq!(reader.query(&Filter::default()).await.unwrap().len(), 1);
        recorder.record(request("/two"));
        recorder.flush().await;
        assert_eq!(reader.query(&Filter::default()).await.unwrap().len(), 2);
        assert!(!reader.health().writable);
        reader.close().await;

        // After the proxy stopped and the log was folded away.
        tasks.shutdown().await;
        let reader = Store::open_read_only(&cfg.path).await.unwrap();
        let rows = reader.query(&Filter::default()).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].path.as_deref(), Some("/two"));
    }
}
