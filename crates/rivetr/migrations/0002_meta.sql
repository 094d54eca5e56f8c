-- Facts about this installation, e.g. its instance id: the label that
-- tells its containers from those of another Rivetr on the same engine.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
