-- The members a sent message was addressed to (JSON array of member keys; NULL: every
-- member, a broadcast, or a row from before this column): only their receipts move it.
ALTER TABLE sent ADD COLUMN recipients TEXT;
