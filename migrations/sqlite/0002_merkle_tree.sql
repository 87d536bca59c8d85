-- RFC 6962 Merkle tree over the events (issue 14): complete subtree hashes at level 4 and
-- above (lower levels are rehashed from the records), the C2SP checkpoints signed over its
-- root, and the witnesses' cosignatures of those checkpoints.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle nodes are append-only: UPDATE refused'); END;
CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
BEGIN SELECT RAISE(ABORT, 'merkle nodes are append-only: DELETE refused'); END;

CREATE TABLE tlog_checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT    NOT NULL
);
CREATE TRIGGER tlog_checkpoints_no_update BEFORE UPDATE ON tlog_checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE refused'); END;
CREATE TRIGGER tlog_checkpoints_no_delete BEFORE DELETE ON tlog_checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE refused'); END;

CREATE TABLE tlog_cosignatures (
    size    INTEGER NOT NULL,
    witness TEXT    NOT NULL,
    line    TEXT    NOT NULL,
    time    REAL    NOT NULL,
    PRIMARY KEY (size, witness)
);
