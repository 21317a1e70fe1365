-- claudemesh relay store, version 2: the shared-state op log.
-- Ops are sealed with the mesh key; the relay stores the envelope JSON (id, author,
-- ciphertext) and the sequence number and time it assigned. No plaintext.

CREATE TABLE ops (
    mesh    BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    id      BLOB NOT NULL,
    author  BLOB NOT NULL,
    op      BLOB NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (mesh, seq)
) WITHOUT ROWID;

CREATE UNIQUE INDEX ops_id ON ops (mesh, id);

-- The newest sequence of each mesh's log (kept when old ops are dropped), and the oldest
-- one still stored.
CREATE TABLE op_heads (
    mesh   BLOB PRIMARY KEY,
    head   INTEGER NOT NULL,
    first  INTEGER NOT NULL DEFAULT 1
);
