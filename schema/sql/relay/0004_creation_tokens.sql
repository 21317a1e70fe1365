-- claudemesh relay store, version 4: mesh-creation tokens the operator issues
-- (`claudemesh-relay token create`) for `admission = "token"`. Only a SHA-256 of each token
-- is kept; the token itself is printed once, when it is created. Times are unix ms.

CREATE TABLE creation_tokens (
    -- The token's first characters after `cmrt_`, as `token list` shows them.
    id            TEXT PRIMARY KEY,
    -- SHA-256 of the whole token (prefix included).
    hash          BLOB NOT NULL UNIQUE,
    max_uses      INTEGER NOT NULL,
    uses          INTEGER NOT NULL DEFAULT 0,
    -- NULL: never expires.
    expires_at    INTEGER,
    note          TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
