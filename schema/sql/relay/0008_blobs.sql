-- The blob store's index: sealed file chunks the relay keeps for a mesh (it cannot read
-- them), content-addressed by `id` (BLAKE3 of the sealed bytes). The bytes are files under
-- `<data>/blobs/`; a row here is written only once its file is durable, so every row names
-- bytes on disk (a file without a row is an interrupted upload, never served).
CREATE TABLE chunks (
    mesh        BLOB NOT NULL,
    id          BLOB NOT NULL,
    size        INTEGER NOT NULL,
    stored_at   INTEGER NOT NULL,
    PRIMARY KEY (mesh, id)
) WITHOUT ROWID;
-- Which file uses which chunk, who uploaded it for that file, and until when (NULL: until
-- the file is deleted). A chunk is kept while a reference to it is; the same chunk used by
-- two files is stored once.
CREATE TABLE chunk_refs (
    mesh        BLOB NOT NULL,
    file        BLOB NOT NULL,
    id          BLOB NOT NULL,
    uploader    BLOB NOT NULL,
    expires_at  INTEGER,
    at          INTEGER NOT NULL,
    PRIMARY KEY (mesh, file, id)
) WITHOUT ROWID;
CREATE INDEX chunk_refs_chunk ON chunk_refs (mesh, id);
CREATE INDEX chunk_refs_expiry ON chunk_refs (expires_at) WHERE expires_at IS NOT NULL;
