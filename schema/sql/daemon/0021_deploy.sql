-- Hosted services (see `schema::deploy`). Folded from the log: each service's newest
-- manifest, held by the member that first deployed its name.
CREATE TABLE deployments (
    mesh BLOB NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    author BLOB NOT NULL,
    author_name TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    seq INTEGER,
    PRIMARY KEY (mesh, name)
) WITHOUT ROWID;
-- Folded: member daemons offering to host services, as each last said.
CREATE TABLE service_hosts (
    mesh BLOB NOT NULL,
    member BLOB NOT NULL,
    member_name TEXT NOT NULL,
    session BLOB NOT NULL,
    enabled INTEGER NOT NULL,
    sandbox TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (mesh, member)
) WITHOUT ROWID;
