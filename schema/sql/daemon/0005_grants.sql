-- claudemesh daemon store, version 5: per-peer grants, a local policy of this daemon
-- (enforced here, on what arrives; never shared). A member without a row has every
-- capability.

CREATE TABLE grants (
    mesh        BLOB NOT NULL,
    member      BLOB NOT NULL,
    caps        TEXT NOT NULL,
    blocked     INTEGER NOT NULL DEFAULT 0,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (mesh, member)
);
