-- The secret vault shared by every bridge of the store (security/pgvault.py): agent
-- secrets and content data keys, each wrapped by the master key (AES-256-GCM, the key id
-- as associated data). The master key is a file outside the database; rows are useless
-- without it. Rows are deleted on purpose: destroying a data key erases an agent's
-- contents (`agents forget`).
CREATE TABLE key_vault (
    key_id     text             PRIMARY KEY,
    nonce      bytea            NOT NULL,
    ciphertext bytea            NOT NULL,
    created    double precision NOT NULL
);

-- One row, written by the bridge that initialized the vault: an AES-GCM tag over a
-- constant under the master key. A bridge with another master key is refused even while
-- the vault holds no secret yet.
CREATE TABLE key_vault_check (
    id      integer          PRIMARY KEY CHECK (id = 1),
    nonce   bytea            NOT NULL,
    tag     bytea            NOT NULL,
    created double precision NOT NULL
);
