-- claudemesh daemon store, version 7: delivery confirmed by evidence, messages to a person,
-- and session leases.
--
-- An inbox row now records each step towards the model separately: `shown_at`/`shown_via`
-- (handed to a path: a channel push or a hook's context), `accepted_at` (Claude Code's
-- transcript shows it took the push into its queue), `surfaced_at` (seen in the context a
-- model answered: the transcript or the prompt of a channel-started turn) and `read_at`.
-- `shown_to` is the session it was handed to (for a message to the person, one of several).
-- Before this version `surfaced_at` meant "pushed"; such rows count as shown by channel.
ALTER TABLE inbox ADD COLUMN shown_at INTEGER;
ALTER TABLE inbox ADD COLUMN shown_via TEXT;
ALTER TABLE inbox ADD COLUMN shown_to BLOB;
ALTER TABLE inbox ADD COLUMN accepted_at INTEGER;
ALTER TABLE inbox ADD COLUMN read_via TEXT;
ALTER TABLE inbox ADD COLUMN from_label TEXT NOT NULL DEFAULT '';
UPDATE inbox SET shown_at = surfaced_at, shown_via = 'channel', shown_to = session,
    surfaced_at = NULL
    WHERE surfaced_at IS NOT NULL AND read_at IS NULL;

-- Addressed to the person (the member), stored on the daemon's own session: any of the
-- person's sessions here may show it, the most recently active first.
ALTER TABLE inbox ADD COLUMN for_member INTEGER NOT NULL DEFAULT 0;
CREATE INDEX inbox_member_unread ON inbox (mesh, for_member, read_at);

-- Session leases: the process a session lives in (`<pid>-<start>`), whether a
-- subscription has held it, and its Claude Code transcript.
ALTER TABLE sessions ADD COLUMN process TEXT;
ALTER TABLE sessions ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN transcript TEXT;
-- Whether its presence was ever sent (a session that was not is forgotten when it ends).
ALTER TABLE sessions ADD COLUMN announced INTEGER NOT NULL DEFAULT 1;

-- The person behind each session (the member's display name), from its presence.
ALTER TABLE presence ADD COLUMN member_name TEXT NOT NULL DEFAULT '';
