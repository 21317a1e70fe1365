-- claudemesh daemon store, version 8: messages waiting to be shown, found without scanning
-- what was shown already (a session that never reads must not slow its own pushes).
CREATE INDEX inbox_pending ON inbox (session, received_at, id)
    WHERE read_at IS NULL AND shown_at IS NULL AND accepted_at IS NULL;
