-- claudemesh daemon store, version 14: where each mesh's relay is, folded from the op log
-- (`set_relay` ops by an owner or admin, the highest version standing). The `meshes` row's
-- `relay`/`relay_fp` follow it in the same transaction; this table is the signed record
-- they came from, identical on every member.
CREATE TABLE mesh_relay (
    mesh        BLOB PRIMARY KEY,
    relay       TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    version     INTEGER NOT NULL,
    author      BLOB NOT NULL,
    seq         INTEGER NOT NULL
);
