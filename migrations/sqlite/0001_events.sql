-- The append-only event log, its checkpoints, and the store's identity.
CREATE TABLE events (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    event_id   TEXT    NOT NULL UNIQUE,
    type       TEXT    NOT NULL,
    time       REAL    NOT NULL,
    actor      TEXT    NOT NULL,
    data       BLOB    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    digest     TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX events_type_position ON events (type, position);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END;

CREATE TABLE checkpoints (
    size        INTEGER PRIMARY KEY,
    store_id    TEXT    NOT NULL,
    head_hash   TEXT    NOT NULL,
    head_digest TEXT    NOT NULL,
    time        REAL    NOT NULL,
    signature   TEXT    NOT NULL
);
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE refused'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE refused'); END;

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
