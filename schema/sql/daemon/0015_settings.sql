-- claudemesh daemon store, version 15: this machine's own choices that are not
-- configuration a user edits by hand (`claudemesh mesh use` sets `default_mesh`).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
