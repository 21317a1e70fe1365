-- claudemesh relay store, version 1.
-- The relay stores routing metadata and ciphertext only: no mesh key, no plaintext.
-- Ids are 16-byte BLOBs, keys 32-byte BLOBs, times unix milliseconds.

CREATE TABLE meshes (
    id          BLOB PRIMARY KEY,
    genesis     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Signed roster entries, in the order the relay accepted them.
CREATE TABLE roster (
    mesh   BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (mesh, seq)
);

-- Invite capabilities (signed, secret-free) and their use counts.
CREATE TABLE invites (
    id          BLOB PRIMARY KEY,
    mesh        BLOB NOT NULL,
    cap         TEXT NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Last signed presence of each session (profile sealed), for last-seen and routing.
CREATE TABLE presence (
    mesh       BLOB NOT NULL,
    session    BLOB NOT NULL,
    member     BLOB NOT NULL,
    record     TEXT NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (mesh, session)
);

-- Every accepted envelope id (the dedupe set) and, while some recipient still has to
-- acknowledge it, the sealed envelope itself.
CREATE TABLE messages (
    id          BLOB PRIMARY KEY,
    mesh        BLOB NOT NULL,
    sender      BLOB NOT NULL,
    envelope    BLOB,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX messages_expiry ON messages (expires_at);

-- Which member still has to acknowledge which envelope.
CREATE TABLE mailbox (
    mesh    BLOB NOT NULL,
    member  BLOB NOT NULL,
    id      BLOB NOT NULL,
    PRIMARY KEY (mesh, member, id)
) WITHOUT ROWID;
CREATE INDEX mailbox_id ON mailbox (id);
