-- The append-only event log, the head row every writer serializes on, checkpoints,
-- and the store's identity.
CREATE TABLE events (
    position   bigint           PRIMARY KEY,
    stream     text             NOT NULL,
    version    bigint           NOT NULL,
    event_id   text             NOT NULL UNIQUE,
    type       text             NOT NULL,
    time       double precision NOT NULL,
    actor      text             NOT NULL,
    data       bytea            NOT NULL,
    prev_hash  text             NOT NULL,
    hash       text             NOT NULL,
    digest     text             NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX events_type_position ON events (type, position);

-- One row: the last committed position and its hashes. Every batch locks it
-- (SELECT ... FOR UPDATE), so batches from all bridges commit one after another and
-- positions become visible in order.
CREATE TABLE lh_head (
    id        integer PRIMARY KEY CHECK (id = 1),
    position  bigint  NOT NULL,
    hash      text    NOT NULL,
    digest    text    NOT NULL
);
INSERT INTO lh_head (id, position, hash, digest) VALUES (
    1, 0,
    '0000000000000000000000000000000000000000000000000000000000000000',
    '0000000000000000000000000000000000000000000000000000000000000000'
);

CREATE TABLE checkpoints (
    size        bigint           PRIMARY KEY,
    store_id    text             NOT NULL,
    head_hash   text             NOT NULL,
    head_digest text             NOT NULL,
    time        double precision NOT NULL,
    signature   text             NOT NULL
);

CREATE FUNCTION lh_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only: % refused', TG_TABLE_NAME, TG_OP;
END;
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION lh_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION lh_append_only();
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION lh_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION lh_append_only();

CREATE TABLE store_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
