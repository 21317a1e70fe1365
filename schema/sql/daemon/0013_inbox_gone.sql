-- claudemesh daemon store, version 13: the ids of messages inbox retention deleted. The
-- inbox row was also the dedupe record; without this, a relay sending a deleted message
-- again (a replay) would make it new. A record is kept for another retention period;
-- messages older than both together are refused by their sealed send time.
CREATE TABLE inbox_gone (
    id      BLOB NOT NULL,
    session BLOB NOT NULL,
    gone_at INTEGER NOT NULL,
    PRIMARY KEY (id, session)
) WITHOUT ROWID;
CREATE INDEX inbox_gone_at ON inbox_gone (gone_at);
