-- Sessions of the PiCode agent. Messages are stored as JSON in PiCode's own
-- conversation format (picode-llm `Message`), never a provider's wire format.

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    project     TEXT NOT NULL,
    title       TEXT NOT NULL DEFAULT '',
    provider    TEXT NOT NULL DEFAULT '',
    model       TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_project ON sessions (project, updated_at);

-- The conversation as the model sees it, in order. `turn` is the user turn
-- that produced the message; `/undo` drops the messages of the last turn.
CREATE TABLE messages (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    turn        INTEGER NOT NULL,
    role        TEXT NOT NULL,
    content     TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
);

-- One row per user turn: the checkpoint taken before it, for `/undo` across
-- process restarts (`picode -c`).
CREATE TABLE turns (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn        INTEGER NOT NULL,
    prompt      TEXT NOT NULL,
    checkpoint  TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (session_id, turn)
);

-- Every tool call the agent executed, with its result; an audit log that
-- survives compaction and `/undo`.
CREATE TABLE tool_calls (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn        INTEGER NOT NULL,
    call_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    output      TEXT NOT NULL,
    is_error    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Token usage and cost of each model call.
CREATE TABLE usage (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id     TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn           INTEGER NOT NULL,
    provider       TEXT NOT NULL,
    model          TEXT NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_usd       REAL NOT NULL,
    created_at     INTEGER NOT NULL
);
