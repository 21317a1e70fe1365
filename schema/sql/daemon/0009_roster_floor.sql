-- claudemesh daemon store, version 9: the op log's roster floor per mesh (the highest
-- roster place any folded op claimed; NULL while none did), so an op's author is checked
-- against the roster as it stood at the op's place in the log.
ALTER TABLE op_heads ADD COLUMN roster_floor INTEGER;
