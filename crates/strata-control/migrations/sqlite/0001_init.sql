-- Strata control plane schema (SQLite). Times are Unix milliseconds.
-- Secrets are stored only sealed (AES-256-GCM, key outside the database)
-- or as hashes; see the crate docs.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);

CREATE TABLE senders (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT,
    hostname TEXT,
    enrolled_at BIGINT,
    last_seen_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE enrolment_tokens (
    id TEXT PRIMARY KEY,
    sender_id TEXT NOT NULL REFERENCES senders (id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE destinations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    platform TEXT NOT NULL,
    url_sealed TEXT NOT NULL,
    url_hint TEXT NOT NULL,
    key_sealed TEXT NOT NULL,
    key_hint TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE streams (
    id TEXT PRIMARY KEY,
    sender_id TEXT NOT NULL REFERENCES senders (id),
    state TEXT NOT NULL CHECK (state IN ('starting', 'live', 'stopping', 'ended', 'failed')),
    reason TEXT,
    port BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    live_at BIGINT,
    ended_at BIGINT
);
-- The port pool: a port belongs to at most one stream that is not over.
CREATE UNIQUE INDEX streams_active_port ON streams (port)
    WHERE state IN ('starting', 'live', 'stopping');
CREATE INDEX streams_sender ON streams (sender_id);

CREATE TABLE stream_destinations (
    stream_id TEXT NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    destination_id TEXT NOT NULL REFERENCES destinations (id),
    PRIMARY KEY (stream_id, destination_id)
);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
