-- claudemesh relay store, version 3: the newest shared-state snapshot of each mesh
-- (sealed with the mesh key by the member that captured it). Ops up to `seq` are dropped
-- once it is stored.

CREATE TABLE snapshots (
    mesh    BLOB PRIMARY KEY,
    seq     INTEGER NOT NULL,
    author  BLOB NOT NULL,
    ct      BLOB NOT NULL,
    at      INTEGER NOT NULL
);
