-- claudemesh daemon store, version 3: shared mesh state.
--
-- `op_log` is this daemon's copy of each mesh's log (ciphertext as sequenced, plus the
-- opened body); every other table here is the fold of that log in sequence order, except
-- rows with `seq IS NULL`, which are this daemon's own writes applied ahead of the log
-- (pending) and confirmed when their op comes back sequenced.

-- Writes not yet sequenced by the relay, in the order they were made.
CREATE TABLE op_outbox (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB NOT NULL UNIQUE,
    mesh        BLOB NOT NULL,
    frame       BLOB NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    seq         INTEGER
);

CREATE INDEX op_outbox_mesh ON op_outbox (mesh, n);

CREATE TABLE op_log (
    mesh    BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    id      BLOB NOT NULL,
    author  BLOB NOT NULL,
    at      INTEGER NOT NULL,
    ct      BLOB NOT NULL,
    hash    BLOB NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT,
    error   TEXT,
    PRIMARY KEY (mesh, seq)
) WITHOUT ROWID;

-- Last applied sequence and chain hash per mesh.
CREATE TABLE op_heads (
    mesh  BLOB PRIMARY KEY,
    seq   INTEGER NOT NULL,
    hash  BLOB NOT NULL
);

CREATE TABLE state_kv (
    mesh          BLOB NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    author        BLOB NOT NULL,
    author_name   TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (mesh, key)
);

CREATE TABLE memories (
    n            INTEGER PRIMARY KEY,
    mesh         BLOB NOT NULL,
    id           BLOB NOT NULL,
    text         TEXT NOT NULL,
    tags         TEXT NOT NULL,
    author       BLOB NOT NULL,
    author_name  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    seq          INTEGER,
    UNIQUE (mesh, id)
);

CREATE VIRTUAL TABLE memories_fts USING fts5(
    text, tags, content = 'memories', content_rowid = 'n', tokenize = 'porter unicode61'
);

CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts (rowid, text, tags) VALUES (new.n, new.text, new.tags);
END;
CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text, tags)
    VALUES ('delete', old.n, old.text, old.tags);
END;

CREATE TABLE tasks (
    mesh             BLOB NOT NULL,
    id               BLOB NOT NULL,
    title            TEXT NOT NULL,
    body             TEXT NOT NULL,
    priority         TEXT NOT NULL,
    tags             TEXT NOT NULL,
    suggested        TEXT,
    status           TEXT NOT NULL,
    assignee         BLOB,
    assignee_member  BLOB,
    assignee_name    TEXT,
    result           TEXT NOT NULL DEFAULT '',
    author           BLOB NOT NULL,
    author_name      TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    seq              INTEGER,
    PRIMARY KEY (mesh, id)
);

CREATE TABLE reservations (
    mesh         BLOB NOT NULL,
    id           BLOB NOT NULL,
    session      BLOB NOT NULL,
    author       BLOB NOT NULL,
    author_name  TEXT NOT NULL,
    patterns     TEXT NOT NULL,
    exclusive    INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    status       TEXT NOT NULL,
    conflict     TEXT,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (mesh, id)
);

CREATE TABLE contexts (
    mesh          BLOB NOT NULL,
    id            BLOB NOT NULL,
    session       BLOB NOT NULL,
    author        BLOB NOT NULL,
    author_name   TEXT NOT NULL,
    summary       TEXT NOT NULL,
    files_read    TEXT NOT NULL,
    key_findings  TEXT NOT NULL,
    tags          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    seq           INTEGER,
    PRIMARY KEY (mesh, id)
);

CREATE TABLE skills (
    mesh          BLOB NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    instructions  TEXT NOT NULL,
    tags          TEXT NOT NULL,
    when_to_use   TEXT NOT NULL,
    author        BLOB NOT NULL,
    author_name   TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    seq           INTEGER NOT NULL,
    PRIMARY KEY (mesh, name)
);

CREATE TABLE reminders (
    mesh         BLOB NOT NULL,
    id           BLOB NOT NULL,
    session      BLOB NOT NULL,
    author       BLOB NOT NULL,
    author_name  TEXT NOT NULL,
    to_label     TEXT NOT NULL,
    body         TEXT NOT NULL,
    deliver_at   INTEGER,
    cron         TEXT,
    status       TEXT NOT NULL,
    last_due     INTEGER,
    fired        INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (mesh, id)
);
