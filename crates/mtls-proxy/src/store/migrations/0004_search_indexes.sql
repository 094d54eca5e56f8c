-- Every filter `logs` and `/api/logs` offer must answer quickly on a large
-- store (under 50 ms on 10 M rows). A query walks one index, chosen per
-- search from how many entries each candidate holds (see `query.rs`); these
-- give each filter an index of its own:
--
-- - paths, for a path glob with a literal prefix (`/api/*` reads the range
--   of paths that start with `/api/`) and for an exact path;
-- - statuses: besides redirects and errors, the rare 1xx statuses (101 for
--   upgrades), which the time index could only find by reading everything;
-- - failed handshakes, a few rows among many requests.
--
-- The path index costs the writer one index entry per row; the other two
-- hold only rows that are rare.
--
-- Building them reads the whole table once, at the first start of this
-- version.
CREATE INDEX exchanges_path_ts ON exchanges (path, ts);
DROP INDEX exchanges_status_ts;
CREATE INDEX exchanges_status_ts ON exchanges (status, ts) WHERE status < 200 OR status >= 300;
CREATE INDEX exchanges_handshake_ts ON exchanges (kind, ts) WHERE kind = 'handshake';
