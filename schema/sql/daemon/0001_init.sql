-- claudemesh daemon store, version 1.
-- Ids are 16-byte BLOBs, keys 32-byte BLOBs, times unix milliseconds.
-- Secrets (member keys, mesh keys, session keys) are NOT here: they live in keys/<mesh>.key.

-- Meshes this daemon has joined, with our own identity and profile in each.
CREATE TABLE meshes (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL,
    relay         TEXT NOT NULL,
    relay_fp      BLOB NOT NULL,
    member        BLOB NOT NULL,
    session       BLOB NOT NULL,
    role          TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    groups        TEXT NOT NULL DEFAULT '[]',
    summary       TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL DEFAULT 'idle',
    genesis       TEXT NOT NULL,
    joined_at     INTEGER NOT NULL
);

-- Roster entries in relay order (the fold gives members and roles).
CREATE TABLE roster (
    mesh   BLOB NOT NULL,
    seq    INTEGER NOT NULL,
    entry  TEXT NOT NULL,
    PRIMARY KEY (mesh, seq)
);

-- Presence cache: the last known profile of every session, with last-seen time.
CREATE TABLE presence (
    mesh         BLOB NOT NULL,
    session      BLOB NOT NULL,
    member       BLOB NOT NULL,
    session_key  BLOB NOT NULL,
    seq          INTEGER NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    summary      TEXT NOT NULL,
    groups       TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    cwd          TEXT NOT NULL,
    visible      INTEGER NOT NULL,
    online       INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    PRIMARY KEY (mesh, session)
);

-- Received messages, decrypted: one row per message and local session it is for (a
-- broadcast reaches every local session). Unique by (id, session): redeliveries are ignored.
CREATE TABLE inbox (
    id            BLOB NOT NULL,
    session       BLOB NOT NULL,
    mesh          BLOB NOT NULL,
    from_session  BLOB NOT NULL,
    from_member   BLOB NOT NULL,
    from_name     TEXT NOT NULL,
    to_label      TEXT NOT NULL,
    priority      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    body          TEXT NOT NULL,
    sent_at       INTEGER NOT NULL,
    received_at   INTEGER NOT NULL,
    read_at       INTEGER,
    verified      INTEGER NOT NULL,
    PRIMARY KEY (id, session)
);
CREATE INDEX inbox_unread ON inbox (session, read_at, received_at);

-- Sessions this daemon hosts besides its own (e.g. Claude Code sessions through the MCP
-- shim). Their keys are derived from the member key and `client_key`, so nothing secret is
-- stored and a session reopened with the same client key is the same peer.
CREATE TABLE sessions (
    mesh        BLOB NOT NULL,
    session     BLOB NOT NULL,
    client_key  TEXT NOT NULL,
    profile     TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    closed_at   INTEGER,
    PRIMARY KEY (mesh, session)
);

-- Sealed envelopes not yet acknowledged by the relay. A row is deleted only after the
-- relay answers `relayed`, so a crash at any point resends (the relay dedupes by id).
CREATE TABLE outbox (
    id          BLOB PRIMARY KEY,
    mesh        BLOB NOT NULL,
    envelope    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE INDEX outbox_mesh ON outbox (mesh, created_at);

-- Messages we sent, and how far each got.
CREATE TABLE sent (
    id            BLOB PRIMARY KEY,
    mesh          BLOB NOT NULL,
    to_label      TEXT NOT NULL,
    priority      TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    relayed_at    INTEGER,
    delivered_at  INTEGER
);

-- Invites minted here.
CREATE TABLE invites (
    id          BLOB PRIMARY KEY,
    mesh        BLOB NOT NULL,
    cap         TEXT NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    revoked     INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

-- Claims waiting for an admin's approval.
CREATE TABLE claims (
    id       BLOB PRIMARY KEY,
    mesh     BLOB NOT NULL,
    request  TEXT NOT NULL,
    cap      TEXT NOT NULL,
    at       INTEGER NOT NULL
);
