//! How a search reads the database: which index it walks.
//!
//! Every filter has an index holding the rows it can match: in time order
//! within one value (a route, an identity, an exact path or status, failed
//! handshakes), or not (a status class, the literal prefix of a path or
//! identity glob such as `/api/` in `/api/*`). SQLite's planner has no
//! statistics here and cannot tell a filter that matches three rows from
//! one that matches millions; a wrong guess reads the whole table (a path
//! glob that matched nothing took 961 ms on 1.8 M rows). So a search
//! decides itself, from counts it can take cheaply:
//!
//! 1. For each candidate index it counts the entries a query through it
//!    would read, stopping at [`PROBE`]: for an index in time order, the
//!    entries inside the filter's bounds and time window; for one that is
//!    not (a range of values), every entry in the range, since the time
//!    window does not narrow what is read there. Each count reads the index
//!    alone (every bound is on the index's own columns), at most `PROBE`
//!    entries.
//! 2. A candidate with no entries means that no row matches: the search
//!    ends there.
//! 3. The candidate with the fewest entries, if below `PROBE`, drives the
//!    query: at most `PROBE` entries are read (and sorted by time when the
//!    index does not hold them in time order).
//! 4. When every candidate has `PROBE` entries or more, matches are common:
//!    walking an index in time order (one value's index, or else the time
//!    index) meets `limit` of them after about `limit × rows / matches`
//!    rows, fewer than `limit × rows / PROBE`.
//!
//! The query then selects the ids through the chosen index (`INDEXED BY`,
//! so SQLite cannot pick another) and reads the rows of those ids only.

use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::QueryBuilder;

use super::query::{Filter, StatusFilter, MAX_LIMIT};
use super::{to_micros, Kind};

/// The most index entries a candidate's count reads.
///
/// It bounds both sides of the choice: a query through an index whose
/// entries are not in time order reads and sorts at most this many, and
/// when every candidate reaches it, a walk in time order reads about
/// `limit × rows / PROBE` rows (20,000 for 100 rows out of 10 M at worst).
/// Measured with `bench/mtls-proxy/queries` (BENCHMARKS.md).
pub(crate) const PROBE: i64 = 50_000;

/// The lowest status of the range the status index holds beside 1xx
/// (migrations 3 and 4); 2xx are found through the time index.
const INDEXED_STATUS: i64 = 300;

/// One condition of a search, as SQL with at most one bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    /// SQL without a parameter. Partial indexes need their condition
    /// spelled out literally: SQLite uses one only when it can prove the
    /// query's WHERE implies the index's.
    Literal(&'static str),
    /// `column op ?` with a text value.
    Text(&'static str, String),
    /// `column op ?` with a number.
    Int(&'static str, i64),
}

fn push_terms(sql: &mut QueryBuilder<'_, Sqlite>, terms: &[Term]) {
    for term in terms {
        sql.push(" AND ");
        match term {
            Term::Literal(text) => {
                sql.push(*text);
            }
            Term::Text(head, value) => {
                sql.push(*head).push_bind(value.clone());
            }
            Term::Int(head, value) => {
                sql.push(*head).push_bind(*value);
            }
        }
    }
}

/// A way into the table: an index and the conditions on its own columns
/// that bound the part of it a search can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Access {
    /// The index, by name.
    pub(crate) index: &'static str,
    terms: Vec<Term>,
    /// Whether the entries within the bounds come in time order, so that
    /// the newest `limit` are the last `limit` read.
    pub(crate) ordered: bool,
}

impl Access {
    fn time() -> Access {
        Access {
            index: "exchanges_ts",
            terms: Vec::new(),
            ordered: true,
        }
    }
}

/// What a search reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// A count found no entry: nothing matches, no query needed.
    Empty,
    /// Select through this index.
    Through(Access),
}

/// The literal start of a GLOB pattern, before its first `*`, `?` or `[`.
fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Conditions on `column` that hold for every value matching the GLOB
/// `pattern`: equality when it has no wildcard, else the range of values
/// that start with its literal prefix (cut to ASCII, so that the upper
/// bound stays valid UTF-8). `None` when the pattern starts with a
/// wildcard: no index range can help then.
fn glob_terms(
    pattern: &str,
    equal: &'static str,
    at_least: &'static str,
    below: &'static str,
) -> Option<(Vec<Term>, bool)> {
    let prefix = literal_prefix(pattern);
    if prefix.len() == pattern.len() {
        return Some((vec![Term::Text(equal, pattern.to_owned())], true));
    }
    let ascii = &prefix[..prefix.find(|c: char| !c.is_ascii()).unwrap_or(prefix.len())];
    if ascii.is_empty() {
        return None;
    }
    let mut terms = vec![Term::Text(at_least, ascii.to_owned())];
    // Every string that starts with the prefix sorts (bytewise, as SQLite's
    // BINARY collation does) below the prefix with its last byte raised
    // by one; a last byte of 0x7F cannot be raised within ASCII, so it is
    // dropped and the one before it raised.
    let mut upper = ascii.as_bytes().to_vec();
    while let Some(last) = upper.pop() {
        if last < 0x7F {
            upper.push(last + 1);
            // ASCII in, ASCII out.
            let upper = String::from_utf8(upper).unwrap_or_default();
            terms.push(Term::Text(below, upper));
            break;
        }
    }
    Some((terms, false))
}

/// The indexes that could drive a search for `filter`, the time index
/// first.
pub(crate) fn candidates(filter: &Filter) -> Vec<Access> {
    let mut out = vec![Access::time()];
    if filter.kind == Some(Kind::Handshake) {
        out.push(Access {
            index: "exchanges_handshake_ts",
            terms: vec![Term::Literal("kind = 'handshake'")],
            ordered: true,
        });
    }
    if let Some(route) = &filter.route {
        out.push(Access {
            index: "exchanges_route_ts",
            terms: vec![Term::Text("route = ", route.clone())],
            ordered: true,
        });
    }
    if let Some(identity) = &filter.identity {
        if let Some((terms, ordered)) = glob_terms(
            identity,
            "client_identity = ",
            "client_identity >= ",
            "client_identity < ",
        ) {
            out.push(Access {
                index: "exchanges_identity_ts",
                terms,
                ordered,
            });
        }
    }
    if let Some(glob) = &filter.path_glob {
        if let Some((terms, ordered)) = glob_terms(glob, "path = ", "path >= ", "path < ") {
            out.push(Access {
                index: "exchanges_path_ts",
                terms,
                ordered,
            });
        }
    }
    if let Some(status) = filter.status {
        let (low, high) = status.range();
        let partial = if low >= INDEXED_STATUS {
            Some("status >= 300")
        } else if high <= 200 {
            Some("status < 200")
        } else {
            // 2xx: not in the status index; the time index finds them.
            None
        };
        if let Some(partial) = partial {
            let (mut terms, ordered) = match status {
                StatusFilter::Exact(code) => (vec![Term::Int("status = ", i64::from(code))], true),
                StatusFilter::Class(_) => (
                    vec![Term::Int("status >= ", low), Term::Int("status < ", high)],
                    false,
                ),
            };
            terms.push(Term::Literal(partial));
            out.push(Access {
                index: "exchanges_status_ts",
                terms,
                ordered,
            });
        }
    }
    out
}

/// The time window of `filter`, a condition on `ts` that every index holds.
fn time_terms(filter: &Filter) -> Vec<Term> {
    let mut terms = Vec::new();
    if let Some(since) = filter.since {
        terms.push(Term::Int("ts >= ", to_micros(since)));
    }
    if let Some(until) = filter.until {
        terms.push(Term::Int("ts < ", to_micros(until)));
    }
    terms
}

/// Every condition of `filter`.
fn filter_terms(filter: &Filter) -> Vec<Term> {
    let mut terms = time_terms(filter);
    if let Some(status) = filter.status {
        let (low, high) = status.range();
        terms.push(Term::Int("status >= ", low));
        terms.push(Term::Int("status < ", high));
    }
    if let Some(route) = &filter.route {
        terms.push(Term::Text("route = ", route.clone()));
    }
    if let Some(identity) = &filter.identity {
        if identity.contains(['*', '?', '[']) {
            terms.push(Term::Text("client_identity GLOB ", identity.clone()));
        } else {
            terms.push(Term::Text("client_identity = ", identity.clone()));
        }
    }
    if let Some(glob) = &filter.path_glob {
        terms.push(Term::Text("path GLOB ", glob.clone()));
    }
    match filter.kind {
        Some(Kind::Handshake) => terms.push(Term::Literal("kind = 'handshake'")),
        Some(Kind::Request) => terms.push(Term::Literal("kind = 'request'")),
        None => {}
    }
    terms
}

/// How many entries of `access` lie within the filter's bounds, counted up
/// to `probe`.
async fn count(
    pool: &SqlitePool,
    access: &Access,
    filter: &Filter,
    probe: i64,
) -> Result<i64, sqlx::Error> {
    let mut sql =
        QueryBuilder::<Sqlite>::new("SELECT count(*) FROM (SELECT 1 FROM exchanges INDEXED BY ");
    sql.push(access.index).push(" WHERE 1 = 1");
    push_terms(&mut sql, &access.terms);
    // In an index in time order the window bounds what is read; in a range
    // of values it only filters what is read. (A "since 1h" search for
    // `/admin/*` read all 900,000 `/admin/` entries when the window was
    // counted here: 740 ms on 10 M rows.)
    if access.ordered {
        push_terms(&mut sql, &time_terms(filter));
    }
    sql.push(" LIMIT ").push_bind(probe).push(")");
    sql.build_query_scalar().fetch_one(pool).await
}

/// Chooses the index a search for `filter` walks (see the module's
/// comment), counting up to `probe` entries per candidate.
pub(crate) async fn plan(
    pool: &SqlitePool,
    filter: &Filter,
    probe: i64,
) -> Result<Plan, sqlx::Error> {
    let mut fewest: Option<(i64, Access)> = None;
    let mut walk: Option<Access> = None;
    for access in candidates(filter) {
        let n = count(pool, &access, filter, probe).await?;
        if n == 0 {
            return Ok(Plan::Empty);
        }
        if n < probe {
            // On a tie, an index in time order needs no sort.
            let better = fewest
                .as_ref()
                .is_none_or(|(m, best)| n < *m || (n == *m && access.ordered && !best.ordered));
            if better {
                fewest = Some((n, access));
            }
        } else if access.ordered {
            // The last such candidate: the time index comes first, and
            // any other ordered index holds fewer rows than it.
            walk = Some(access);
        }
    }
    Ok(Plan::Through(match (fewest, walk) {
        (Some((_, access)), _) => access,
        (None, Some(access)) => access,
        (None, None) => Access::time(),
    }))
}

/// The query that reads `columns` of the rows matching `filter` through
/// `access`, newest first: the ids through the index, then those rows.
pub(crate) fn select<'a>(
    columns: &str,
    access: &Access,
    filter: &'a Filter,
) -> QueryBuilder<'a, Sqlite> {
    let mut sql = QueryBuilder::<Sqlite>::new(columns);
    // `NOT INDEXED` keeps SQLite from walking an index for the outer ORDER
    // BY and testing each entry against the ids; the ids are looked up by
    // rowid, which it still allows.
    sql.push(" FROM exchanges NOT INDEXED WHERE id IN (SELECT id FROM exchanges INDEXED BY ")
        .push(access.index)
        .push(" WHERE 1 = 1");
    push_terms(&mut sql, &access.terms);
    push_terms(&mut sql, &filter_terms(filter));
    let limit = filter.limit.min(MAX_LIMIT);
    sql.push(" ORDER BY ts DESC, id DESC LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .push(") ORDER BY ts DESC, id DESC");
    sql
}

/// The ids matching `filter` by reading every row, without any index: what
/// a search must return, for tests to compare with.
#[cfg(test)]
pub(crate) fn select_by_scan(filter: &Filter) -> QueryBuilder<'_, Sqlite> {
    let mut sql = QueryBuilder::<Sqlite>::new("SELECT id FROM exchanges NOT INDEXED WHERE 1 = 1");
    push_terms(&mut sql, &filter_terms(filter));
    let limit = filter.limit.min(MAX_LIMIT);
    sql.push(" ORDER BY ts DESC, id DESC LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_bound_their_literal_prefix() {
        let t = |p: &str| glob_terms(p, "c = ", "c >= ", "c < ");
        assert_eq!(
            t("/api/*"),
            Some((
                vec![
                    Term::Text("c >= ", "/api/".into()),
                    Term::Text("c < ", "/api0".into())
                ],
                false
            ))
        );
        assert_eq!(
            t("/exact"),
            Some((vec![Term::Text("c = ", "/exact".into())], true))
        );
        assert_eq!(t("*/users"), None);
        assert_eq!(t("?x"), None);
        assert_eq!(
            t("/v[12]/x"),
            Some((
                vec![
                    Term::Text("c >= ", "/v".into()),
                    Term::Text("c < ", "/w".into())
                ],
                false
            ))
        );
        // Only the ASCII start bounds the range.
        assert_eq!(
            t("/caf\u{e9}/*"),
            Some((
                vec![
                    Term::Text("c >= ", "/caf".into()),
                    Term::Text("c < ", "/cag".into())
                ],
                false
            ))
        );
        // A last byte that cannot be raised is dropped.
        assert_eq!(
            t("/a\u{7f}*"),
            Some((
                vec![
                    Term::Text("c >= ", "/a\u{7f}".into()),
                    Term::Text("c < ", "/b".into())
                ],
                false
            ))
        );
        assert_eq!(
            t("\u{7f}*"),
            Some((vec![Term::Text("c >= ", "\u{7f}".into())], false))
        );
    }
}
