-- claudemesh daemon store, version 4: where each mesh's applied log starts (0, or the
-- snapshot it was loaded from), so the chain can be checked from there.

ALTER TABLE op_heads ADD COLUMN base_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE op_heads ADD COLUMN base_hash BLOB;
