-- claudemesh relay store, version 6: invite claims wait here for an admin, across the
-- claimant's reconnects and relay restarts (a claimant comes back by sending the same
-- request). `outcome` is the admin's answer (or the relay's refusal) once decided, kept
-- until the new member says hello or `expires_at`; rows past `expires_at` are pruned.

CREATE TABLE claims (
    id          BLOB PRIMARY KEY,
    mesh        BLOB NOT NULL,
    invite      BLOB NOT NULL,
    member      BLOB NOT NULL,
    request     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    outcome     TEXT
) WITHOUT ROWID;

CREATE UNIQUE INDEX claims_by_claimant ON claims (invite, member);
