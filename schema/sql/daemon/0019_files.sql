-- Shared files (see `schema::file`). Folded from the log: `files` holds each share's
-- sealed manifest, `file_keys` the file key boxed per reader (`member` NULL: under the
-- mesh key of `epoch`), with the member that wrote each box (to open it).
CREATE TABLE files (
    mesh BLOB NOT NULL,
    id BLOB NOT NULL,
    author BLOB NOT NULL,
    author_name TEXT NOT NULL,
    session BLOB NOT NULL,
    manifest BLOB NOT NULL,
    to_label TEXT NOT NULL,
    stored INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    seq INTEGER,
    PRIMARY KEY (mesh, id)
) WITHOUT ROWID;
CREATE INDEX files_newest ON files (mesh, created_at DESC, id);
CREATE TABLE file_keys (
    mesh BLOB NOT NULL,
    file BLOB NOT NULL,
    n INTEGER NOT NULL,
    member BLOB,
    epoch INTEGER,
    ct BLOB NOT NULL,
    granter BLOB NOT NULL,
    seq INTEGER,
    PRIMARY KEY (mesh, file, n)
) WITHOUT ROWID;
-- Local only (never folded): who fetched files this daemon's members shared (from their
-- boxed "fetched" receipts), and transfers to resume after a restart.
CREATE TABLE file_fetches (
    mesh BLOB NOT NULL,
    file BLOB NOT NULL,
    member BLOB NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (mesh, file, member)
) WITHOUT ROWID;
CREATE TABLE file_transfers (
    mesh BLOB NOT NULL,
    file BLOB NOT NULL,
    direction TEXT NOT NULL,
    path TEXT NOT NULL,
    -- For an upload: the file key and what the share op will say (JSON), kept until
    -- the op is written.
    key BLOB,
    share TEXT,
    started_at INTEGER NOT NULL,
    PRIMARY KEY (mesh, file, direction)
) WITHOUT ROWID;
