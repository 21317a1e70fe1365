-- Receipts waiting for the sender's daemon: a recipient member acknowledged envelope `id`
-- (with its signed proof). Kept until the sender's daemon says it recorded the receipt
-- (`receipts_seen`), so a sender offline when the recipient acknowledged still learns it
-- was delivered; sent again at each of the sender's links; dropped at `expires_at`.
CREATE TABLE receipts (
    mesh        BLOB NOT NULL,
    sender      BLOB NOT NULL,
    id          BLOB NOT NULL,
    member      BLOB NOT NULL,
    at          INTEGER NOT NULL,
    proof       BLOB,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (mesh, sender, id, member)
);
CREATE INDEX receipts_expiry ON receipts (expires_at);
