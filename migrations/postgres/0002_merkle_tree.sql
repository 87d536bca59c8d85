-- RFC 6962 Merkle tree over the events (issue 14): complete subtree hashes at level 4 and
-- above (lower levels are rehashed from the records), the C2SP checkpoints signed over its
-- root, and the witnesses' cosignatures of those checkpoints.
CREATE TABLE merkle_nodes (
    level integer NOT NULL,
    idx   bigint  NOT NULL,
    hash  bytea   NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE OR DELETE ON merkle_nodes
    FOR EACH ROW EXECUTE FUNCTION lh_append_only();

CREATE TABLE tlog_checkpoints (
    size bigint PRIMARY KEY,
    note text   NOT NULL
);
CREATE TRIGGER tlog_checkpoints_no_update BEFORE UPDATE OR DELETE ON tlog_checkpoints
    FOR EACH ROW EXECUTE FUNCTION lh_append_only();

CREATE TABLE tlog_cosignatures (
    size    bigint           NOT NULL,
    witness text             NOT NULL,
    line    text             NOT NULL,
    time    double precision NOT NULL,
    PRIMARY KEY (size, witness)
);
