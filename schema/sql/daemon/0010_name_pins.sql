-- Names bound to keys. The first member key seen with a person name in a mesh holds it
-- (trust on first use): a later member announcing the same name is shown with a warning.
-- A member's first name is kept too: announcing another later is shown ("was …").
-- Members the user checked (`claudemesh verify <peer> --confirm`) are shown verified.
CREATE TABLE name_pins (
    mesh        BLOB NOT NULL,
    name        TEXT NOT NULL,   -- the name's skeleton (names::skeleton)
    member      BLOB NOT NULL,
    first_seen  INTEGER NOT NULL,
    shown       TEXT NOT NULL DEFAULT '',  -- the name as announced
    PRIMARY KEY (mesh, name)
);
CREATE TABLE confirmed_members (
    mesh    BLOB NOT NULL,
    member  BLOB NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (mesh, member)
);
