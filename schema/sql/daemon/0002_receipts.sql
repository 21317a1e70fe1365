-- How far each sent message got beyond the recipient's daemon: shown to the session
-- (surfaced) and read by it, as reported back by the recipient's daemon.
ALTER TABLE sent ADD COLUMN surfaced_at INTEGER;
ALTER TABLE sent ADD COLUMN read_at INTEGER;

-- When a received message was handed to its session by a push (channel notification).
ALTER TABLE inbox ADD COLUMN surfaced_at INTEGER;

-- How messages reach each peer (JSON list: channel, hooks, pull), from its presence.
ALTER TABLE presence ADD COLUMN delivery TEXT NOT NULL DEFAULT '[]';
ALTER TABLE presence ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE presence ADD COLUMN client TEXT NOT NULL DEFAULT '';

-- The Claude Code session id behind a hosted session, when hooks have told us. A resumed
-- Claude session runs in a new process (a new client key); mapping that key to the session
-- that already carries its Claude session id keeps it the same peer.
ALTER TABLE sessions ADD COLUMN claude_session TEXT;
CREATE TABLE session_aliases (
    mesh        BLOB NOT NULL,
    client_key  TEXT NOT NULL,
    session     BLOB NOT NULL,
    PRIMARY KEY (mesh, client_key)
);
