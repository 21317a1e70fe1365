-- claudemesh relay store, version 5: hello nonces seen within the replay window, so a
-- captured hello cannot be replayed after a relay restart. Rows past `expires_at` are
-- pruned; a hello older than the window is refused by its timestamp anyway.

CREATE TABLE hello_nonces (
    nonce       BLOB PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
