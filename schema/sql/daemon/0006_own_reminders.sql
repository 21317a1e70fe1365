-- claudemesh daemon store, version 6: reminders this daemon scheduled itself. Only these
-- fire here: a reminder row that arrived in another member's snapshot could name any
-- author, and firing sends messages in that author's name.

CREATE TABLE own_reminders (
    mesh  BLOB NOT NULL,
    id    BLOB NOT NULL,
    PRIMARY KEY (mesh, id)
);
