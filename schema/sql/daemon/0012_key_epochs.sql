-- claudemesh daemon store, version 12: mesh-key epochs folded from the op log (`key_epoch`
-- ops). A row holds the boxes as the admin made them (ciphertext only: each member opens
-- its own with its member key when it loads the mesh), so the fold stays the same on every
-- member and nothing secret is stored here.
CREATE TABLE key_epochs (
    mesh        BLOB NOT NULL,
    epoch       INTEGER NOT NULL,
    author      BLOB NOT NULL,
    roster_len  INTEGER NOT NULL,
    roster_hash BLOB NOT NULL,
    boxes       TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (mesh, epoch)
);
