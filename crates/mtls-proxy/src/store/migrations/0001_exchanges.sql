-- One row per proxied exchange or failed TLS handshake.
--
-- Column order matters: SQLite stores large values in overflow pages that are
-- chained one after another, so reading a column that sits behind a large
-- body means walking the body's whole chain. The small columns that filters
-- and the table view read come first; the headers and bodies come last.
CREATE TABLE exchanges (
    id               INTEGER PRIMARY KEY,
    ts               INTEGER NOT NULL,               -- unix micros when the exchange started
    duration_us      INTEGER NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('request', 'handshake')),
    route            TEXT,
    upstream         TEXT,
    method           TEXT,
    path             TEXT,
    query            TEXT,
    status           INTEGER,
    bytes_in         INTEGER NOT NULL DEFAULT 0,
    bytes_out        INTEGER NOT NULL DEFAULT 0,
    client_identity  TEXT,
    peer             TEXT,
    tls_version      TEXT,
    error            TEXT,
    body_encoding    TEXT    NOT NULL DEFAULT 'identity' CHECK (body_encoding IN ('identity', 'zstd')),
    truncated        INTEGER NOT NULL DEFAULT 0 CHECK (truncated IN (0, 1)),
    request_headers  TEXT    NOT NULL DEFAULT '[]',  -- JSON array of [name, value] pairs, redacted
    response_headers TEXT    NOT NULL DEFAULT '[]',
    request_body     BLOB,
    response_body    BLOB
);

-- Every query orders by time, and the other filters are almost always
-- combined with a time window, so each secondary index ends with ts.
CREATE INDEX exchanges_ts ON exchanges (ts);
CREATE INDEX exchanges_status_ts ON exchanges (status, ts);
CREATE INDEX exchanges_route_ts ON exchanges (route, ts);
CREATE INDEX exchanges_identity_ts ON exchanges (client_identity, ts);

-- Maintenance looks for rows whose bodies are still uncompressed. A partial
-- index keeps that lookup cheap without indexing the (many) rows that have
-- no body or are already compressed.
CREATE INDEX exchanges_uncompressed_ts ON exchanges (ts)
    WHERE body_encoding = 'identity'
      AND (request_body IS NOT NULL OR response_body IS NOT NULL);

-- A single row the writer rewrites to find out whether the database has
-- become writable again while no records are arriving.
CREATE TABLE writer_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    ts INTEGER NOT NULL
);
