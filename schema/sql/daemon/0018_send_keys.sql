-- Idempotency keys of `send --id`: the key (hashed with the mesh and the sending session)
-- names the time-ordered message id chosen the first time it was used, so a retry reuses
-- that id and the message keeps its place in every mailbox's order.
CREATE TABLE send_keys (
    key BLOB PRIMARY KEY,
    id BLOB NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX send_keys_at ON send_keys (at);
