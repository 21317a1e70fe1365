-- Shared MCP servers (see `schema::tools`). Folded from the log: the mesh's catalog.
CREATE TABLE mcp_servers (
    mesh BLOB NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    tools TEXT NOT NULL,
    host BLOB NOT NULL,
    persistent INTEGER NOT NULL,
    scope TEXT NOT NULL,
    author BLOB NOT NULL,
    author_name TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    seq INTEGER,
    PRIMARY KEY (mesh, name)
) WITHOUT ROWID;
-- Local only (never folded): the servers this daemon runs, as declared by
-- `mcp-host add` or an MCP client's `mesh_mcp_register` (then `session` is set and the
-- server ends with it).
CREATE TABLE mcp_hosted (
    mesh BLOB NOT NULL,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    cwd TEXT,
    env TEXT NOT NULL,
    description TEXT NOT NULL,
    allow TEXT NOT NULL,
    scope TEXT NOT NULL,
    session BLOB,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (mesh, name)
) WITHOUT ROWID;
-- Local only: every call this daemon's hosted servers were asked to run (never the
-- arguments or results). The call id is also the replay guard: a call seen once is
-- never run again.
CREATE TABLE tool_audit (
    call BLOB PRIMARY KEY,
    mesh BLOB NOT NULL,
    at INTEGER NOT NULL,
    caller BLOB NOT NULL,
    caller_name TEXT NOT NULL,
    server TEXT NOT NULL,
    tool TEXT NOT NULL,
    outcome TEXT NOT NULL,
    ms INTEGER NOT NULL,
    arguments_bytes INTEGER NOT NULL,
    result_bytes INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX tool_audit_newest ON tool_audit (at DESC);
