-- Rivetr's state. SQLite is the source of truth: the router, the
-- containers and the queue are rebuilt from these rows at start.

CREATE TABLE apps (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    git_url       TEXT    NOT NULL,
    branch        TEXT    NOT NULL,
    -- A pinned commit, deployed instead of the branch's head.
    commit_pin    TEXT,
    -- The app's SSH private key, sealed with the master key (never plain).
    ssh_key       TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE domains (
    domain        TEXT    PRIMARY KEY,
    app_id        INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE
);
CREATE INDEX domains_app ON domains(app_id);

CREATE TABLE env_vars (
    app_id        INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    -- Sealed with the master key when secret = 1, plain otherwise.
    value         TEXT    NOT NULL,
    secret        INTEGER NOT NULL,
    PRIMARY KEY (app_id, key)
);

-- Deployments are also the queue: rows in 'queued' wait, rows in
-- 'cloning', 'building' or 'starting' were being worked on and go back to
-- 'queued' when the server starts again.
CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id        INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    status        TEXT    NOT NULL,
    reason        TEXT,
    -- 'build' (from source) or 'rollback' (an earlier image, no build).
    kind          TEXT    NOT NULL,
    rollback_of   INTEGER,
    commit_sha    TEXT,
    image         TEXT,
    -- The rivetr.toml the deployment ran with, as JSON: a rollback and a
    -- restart run it exactly as it was.
    config        TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX deployments_app ON deployments(app_id, id);
CREATE INDEX deployments_status ON deployments(status);

CREATE TABLE deployment_logs (
    deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    line          TEXT    NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE api_tokens (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    -- SHA-256 of the token's secret part; the token itself is shown once.
    secret_sha256 TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
