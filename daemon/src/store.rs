//! The daemon's SQLite store: the machine's copy of every joined mesh.
//!
//! Writes go through the single writer thread (group commit, `synchronous=FULL`, so an
//! acknowledged `send` survives power loss); reads use a separate read-only connection,
//! so `peers` and `inbox` never wait behind writes. The `q_*` read functions take a plain
//! connection so the CLI can answer from the file with the daemon down.

use claudemesh_relay::sqlite::{self, Durability, SqliteError, Writer};
use claudemesh_schema::crypto::{BoxPublic, MemberKey};
use claudemesh_schema::ipc::methods::{InboxMessage, PeerInfo};
use claudemesh_schema::message::{PeerStatus, Priority, Profile};
use claudemesh_schema::roster::{InviteCap, MeshGenesis, Role, RosterEntry};
use claudemesh_schema::{InviteId, MeshId, MessageId, SessionId, migrations};
use rusqlite::{Connection, Row, params};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    /// A row does not parse.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(SqliteError::Query(e))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One joined mesh, with our identity and profile in it.
#[derive(Debug, Clone)]
pub struct MeshRow {
    /// The mesh.
    pub id: MeshId,
    /// Its name.
    pub name: String,
    /// Relay address.
    pub relay: String,
    /// Pinned relay certificate fingerprint.
    pub relay_fp: [u8; 32],
    /// Our member key.
    pub member: MemberKey,
    /// Our daemon session.
    pub session: SessionId,
    /// Our role.
    pub role: Role,
    /// Our display name.
    pub display_name: String,
    /// Our groups.
    pub groups: Vec<String>,
    /// Our summary.
    pub summary: String,
    /// Our status.
    pub status: PeerStatus,
    /// Mesh genesis.
    pub genesis: MeshGenesis,
    /// Joined at, unix ms.
    pub joined_at: i64,
}

/// A cached presence.
#[derive(Debug, Clone)]
pub struct PresenceRow {
    /// The mesh.
    pub mesh: MeshId,
    /// The session.
    pub session: SessionId,
    /// Its member.
    pub member: MemberKey,
    /// Its box key.
    pub session_key: BoxPublic,
    /// Presence version.
    pub seq: i64,
    /// Opened profile.
    pub profile: Profile,
    /// Online as last known.
    pub online: bool,
    /// Last seen, unix ms.
    pub last_seen: i64,
}

/// A received message to store, for the local session named in `msg.session`.
#[derive(Debug, Clone)]
pub struct InboxRow {
    /// The message as shown.
    pub msg: InboxMessage,
}

/// A session hosted by this daemon (besides its own).
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The mesh.
    pub mesh: MeshId,
    /// The session.
    pub session: SessionId,
    /// The client's stable key (keys derive from it).
    pub client_key: String,
    /// Its profile.
    pub profile: Profile,
    /// Open (not closed).
    pub open: bool,
    /// The Claude Code session id, when known.
    pub claude_session: Option<String>,
}

fn blob32(v: Vec<u8>, what: &'static str) -> Result<[u8; 32]> {
    v.try_into().map_err(|_| StoreError::Corrupt(what))
}

fn id16<T>(v: Vec<u8>, f: impl Fn(&[u8]) -> Option<T>, what: &'static str) -> Result<T> {
    f(&v).ok_or(StoreError::Corrupt(what))
}

fn parse<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt(what))
}

/// A claim parked for approval: id, mesh, request JSON, capability JSON, arrival time.
pub type StoredClaim = (claudemesh_schema::ClaimId, MeshId, String, String, i64);

/// A sent message's progress: created, then relayed, delivered, surfaced, read (unix ms).
#[derive(Debug, Clone, Copy)]
pub struct SentStages {
    /// Queued.
    pub created: i64,
    /// Stored by the relay.
    pub relayed: Option<i64>,
    /// Acknowledged by a recipient daemon.
    pub delivered: Option<i64>,
    /// Handed to a recipient session.
    pub surfaced: Option<i64>,
    /// Read by a recipient session.
    pub read: Option<i64>,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    writer: Writer,
    reader: Arc<Mutex<Connection>>,
}

impl Store {
    /// Open (creating and migrating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = sqlite::open(path, migrations::DAEMON, Durability::Full)?;
        let reader = sqlite::open_reader(path)?;
        let (writer, _t) = Writer::spawn(conn, "daemon-store")
            .map_err(|e| SqliteError::Commit(format!("cannot start store thread: {e}")))?;
        Ok(Self {
            writer,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Run a read on the reader connection off the async threads.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Sqlite(SqliteError::Commit(format!("read task failed: {e}"))))?
    }

    /// Run a write and wait for its commit.
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    {
        Ok(self.writer.call(f).await?)
    }

    /// Queue a write without waiting; `done` runs on the writer thread after the commit,
    /// in submission order. It must be quick and must not block.
    pub async fn write_then<R, F, D>(&self, f: F, done: D) -> Result<()>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
        D: FnOnce(Result<R>) + Send + 'static,
    {
        self.writer
            .call_then(f, move |r| done(r.map_err(StoreError::from)))
            .await?;
        Ok(())
    }

    /// Wait until everything queued so far is committed.
    pub async fn flush(&self) -> Result<()> {
        self.write(|_| Ok(())).await
    }

    /// Add a joined mesh.
    pub async fn insert_mesh(&self, m: MeshRow) -> Result<()> {
        let genesis =
            serde_json::to_string(&m.genesis).map_err(|_| StoreError::Corrupt("genesis"))?;
        let groups = serde_json::to_string(&m.groups).map_err(|_| StoreError::Corrupt("groups"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO meshes (id, name, relay, relay_fp, member, session, role, display_name,
                    groups, summary, status, genesis, joined_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    m.id.as_bytes(),
                    m.name,
                    m.relay,
                    m.relay_fp,
                    m.member.0,
                    m.session.as_bytes(),
                    m.role.as_str(),
                    m.display_name,
                    groups,
                    m.summary,
                    m.status.as_str(),
                    genesis,
                    m.joined_at
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forget a mesh and everything stored for it.
    pub async fn delete_mesh(&self, mesh: MeshId) -> Result<()> {
        self.write(move |tx| {
            for t in [
                "meshes", "roster", "presence", "inbox", "outbox", "sent", "invites", "claims",
                "sessions",
            ] {
                let col = if t == "meshes" { "id" } else { "mesh" };
                tx.execute(
                    &format!("DELETE FROM {t} WHERE {col} = ?1"),
                    params![mesh.as_bytes()],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Change our profile in a mesh (fields left `None` stay).
    pub async fn update_profile(
        &self,
        mesh: MeshId,
        name: Option<String>,
        groups: Option<Vec<String>>,
        summary: Option<String>,
        status: Option<PeerStatus>,
    ) -> Result<()> {
        let groups = match groups {
            Some(g) => Some(serde_json::to_string(&g).map_err(|_| StoreError::Corrupt("groups"))?),
            None => None,
        };
        self.write(move |tx| {
            tx.execute(
                "UPDATE meshes SET display_name = coalesce(?2, display_name),
                    groups = coalesce(?3, groups), summary = coalesce(?4, summary),
                    status = coalesce(?5, status) WHERE id = ?1",
                params![
                    mesh.as_bytes(),
                    name,
                    groups,
                    summary,
                    status.map(|s| s.as_str())
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Store a roster entry at `seq` (idempotent).
    pub async fn put_roster(&self, mesh: MeshId, seq: u64, entry: &RosterEntry) -> Result<()> {
        let json = serde_json::to_string(entry).map_err(|_| StoreError::Corrupt("roster"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO roster (mesh, seq, entry) VALUES (?1, ?2, ?3)",
                params![mesh.as_bytes(), seq as i64, json],
            )
            .map(|_| ())
        })
        .await
    }

    /// Cache a presence (kept only if not older than what is cached).
    pub async fn upsert_presence(&self, p: PresenceRow) -> Result<()> {
        let groups =
            serde_json::to_string(&p.profile.groups).map_err(|_| StoreError::Corrupt("groups"))?;
        let delivery = serde_json::to_string(&p.profile.delivery)
            .map_err(|_| StoreError::Corrupt("delivery"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO presence (mesh, session, member, session_key, seq, name, kind, status,
                    summary, groups, hostname, cwd, visible, online, last_seen, delivery, role, client)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                 ON CONFLICT (mesh, session) DO UPDATE SET
                    member = excluded.member, session_key = excluded.session_key,
                    seq = excluded.seq, name = excluded.name, kind = excluded.kind,
                    status = excluded.status, summary = excluded.summary, groups = excluded.groups,
                    hostname = excluded.hostname, cwd = excluded.cwd, visible = excluded.visible,
                    online = excluded.online, last_seen = max(presence.last_seen, excluded.last_seen),
                    delivery = excluded.delivery, role = excluded.role, client = excluded.client
                 WHERE excluded.seq >= presence.seq",
                params![
                    p.mesh.as_bytes(),
                    p.session.as_bytes(),
                    p.member.0,
                    p.session_key.0,
                    p.seq,
                    p.profile.name,
                    p.profile.kind,
                    p.profile.status.as_str(),
                    p.profile.summary,
                    groups,
                    p.profile.hostname,
                    p.profile.cwd,
                    p.profile.visible,
                    p.online,
                    p.last_seen,
                    delivery,
                    p.profile.role,
                    p.profile.client
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Mark a session offline.
    pub async fn presence_offline(&self, mesh: MeshId, session: SessionId, at: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE presence SET online = 0, last_seen = max(last_seen, ?3)
                 WHERE mesh = ?1 AND session = ?2",
                params![mesh.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Mark every cached session of a mesh offline (link lost, or a fresh snapshot comes).
    pub async fn all_offline(&self, mesh: MeshId) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE presence SET online = 0 WHERE mesh = ?1",
                params![mesh.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Store received messages, ignoring ids already stored; returns how many were new.
    pub async fn insert_inbox(&self, rows: Vec<InboxRow>) -> Result<usize> {
        self.write(move |tx| insert_inbox_rows(tx, rows)).await
    }

    /// Queue received messages for storage; `done` runs on the writer thread after the
    /// commit (this is where the caller acknowledges them to the relay).
    pub async fn insert_inbox_then(
        &self,
        rows: Vec<InboxRow>,
        done: impl FnOnce(Result<usize>) + Send + 'static,
    ) -> Result<()> {
        self.writer
            .call_then(
                move |tx| insert_inbox_rows(tx, rows),
                move |r| done(r.map_err(StoreError::from)),
            )
            .await?;
        Ok(())
    }

    /// Mark messages read (each for the session it was delivered to).
    pub async fn mark_read(&self, ids: Vec<(MessageId, SessionId)>, at: i64) -> Result<()> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE inbox SET read_at = ?3 WHERE id = ?1 AND session = ?2 AND read_at IS NULL",
            )?;
            for (id, session) in ids {
                stmt.execute(params![id.as_bytes(), session.as_bytes(), at])?;
            }
            Ok(())
        })
        .await
    }

    /// Record that a message was pushed to its session.
    pub async fn mark_surfaced(&self, id: MessageId, session: SessionId, at: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE inbox SET surfaced_at = coalesce(surfaced_at, ?3) WHERE id = ?1 AND session = ?2",
                params![id.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record a hosted session as open (reopening clears its close time).
    pub async fn open_session(&self, r: SessionRow, at: i64) -> Result<()> {
        let profile =
            serde_json::to_string(&r.profile).map_err(|_| StoreError::Corrupt("profile"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (mesh, session, client_key, profile, opened_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (mesh, session) DO UPDATE SET
                    profile = excluded.profile, opened_at = excluded.opened_at, closed_at = NULL",
                params![
                    r.mesh.as_bytes(),
                    r.session.as_bytes(),
                    r.client_key,
                    profile,
                    at
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Remember the Claude Code session id of a hosted session.
    pub async fn set_claude_session(
        &self,
        mesh: MeshId,
        session: SessionId,
        claude: String,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET claude_session = ?3 WHERE mesh = ?1 AND session = ?2",
                params![mesh.as_bytes(), session.as_bytes(), claude],
            )
            .map(|_| ())
        })
        .await
    }

    /// Route a client key to an existing session (a resumed Claude session).
    pub async fn set_alias(
        &self,
        mesh: MeshId,
        client_key: String,
        session: SessionId,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO session_aliases (mesh, client_key, session) VALUES (?1, ?2, ?3)",
                params![mesh.as_bytes(), client_key, session.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record a hosted session as closed.
    pub async fn close_session(&self, mesh: MeshId, session: SessionId, at: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET closed_at = ?3 WHERE mesh = ?1 AND session = ?2",
                params![mesh.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Durably queue an envelope for the relay and (for messages, not receipts) record it
    /// as sent.
    #[allow(clippy::too_many_arguments)]
    pub async fn enqueue(
        &self,
        mesh: MeshId,
        id: MessageId,
        envelope: Vec<u8>,
        to_label: String,
        priority: Priority,
        at: i64,
        record: bool,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO outbox (id, mesh, envelope, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_bytes(), mesh.as_bytes(), envelope, at],
            )?;
            if !record {
                return Ok(());
            }
            tx.execute(
                "INSERT OR IGNORE INTO sent (id, mesh, to_label, priority, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id.as_bytes(),
                    mesh.as_bytes(),
                    to_label,
                    priority.as_str(),
                    at
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The relay stored an envelope: drop it from the outbox.
    pub async fn relayed(&self, id: MessageId, at: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![id.as_bytes()])?;
            tx.execute(
                "UPDATE sent SET relayed_at = coalesce(relayed_at, ?2) WHERE id = ?1",
                params![id.as_bytes(), at],
            )?;
            Ok(())
        })
        .await
    }

    /// The relay refused an envelope for good: drop it from the outbox, keep the reason.
    pub async fn undeliverable(&self, id: MessageId, reason: String) -> Result<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM outbox WHERE id = ?1", params![id.as_bytes()])?;
            tx.execute(
                "UPDATE sent SET to_label = to_label || ' (undeliverable: ' || ?2 || ')' WHERE id = ?1",
                params![id.as_bytes(), reason],
            )?;
            Ok(())
        })
        .await
    }

    /// A recipient daemon acknowledged an envelope we sent.
    pub async fn delivered(&self, id: MessageId, at: i64) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sent SET delivered_at = coalesce(delivered_at, ?2),
                    relayed_at = coalesce(relayed_at, ?2) WHERE id = ?1",
                params![id.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// A recipient reported that a message we sent was surfaced or read.
    pub async fn sent_stage(&self, id: MessageId, read: bool, at: i64) -> Result<()> {
        self.write(move |tx| {
            let sql = if read {
                "UPDATE sent SET read_at = coalesce(read_at, ?2), surfaced_at = coalesce(surfaced_at, ?2),
                    delivered_at = coalesce(delivered_at, ?2), relayed_at = coalesce(relayed_at, ?2)
                 WHERE id = ?1"
            } else {
                "UPDATE sent SET surfaced_at = coalesce(surfaced_at, ?2),
                    delivered_at = coalesce(delivered_at, ?2), relayed_at = coalesce(relayed_at, ?2)
                 WHERE id = ?1"
            };
            tx.execute(sql, params![id.as_bytes(), at]).map(|_| ())
        })
        .await
    }

    /// Record an invite minted here.
    pub async fn insert_invite(&self, cap: &InviteCap, at: i64) -> Result<()> {
        let json = serde_json::to_string(cap).map_err(|_| StoreError::Corrupt("invite"))?;
        let (id, mesh) = (cap.id, cap.mesh);
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO invites (id, mesh, cap, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id.as_bytes(), mesh.as_bytes(), json, at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Count a use of an invite (as seen here) or mark it revoked.
    pub async fn invite_used(&self, id: InviteId) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE invites SET uses = uses + 1 WHERE id = ?1",
                params![id.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Mark an invite revoked.
    pub async fn invite_revoked(&self, id: InviteId) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE invites SET revoked = 1 WHERE id = ?1",
                params![id.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record a claim waiting for approval.
    pub async fn insert_claim(
        &self,
        id: claudemesh_schema::ClaimId,
        mesh: MeshId,
        request: String,
        cap: String,
        at: i64,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO claims (id, mesh, request, cap, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_bytes(), mesh.as_bytes(), request, cap, at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forget a claim.
    pub async fn delete_claim(&self, id: claudemesh_schema::ClaimId) -> Result<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM claims WHERE id = ?1", params![id.as_bytes()])
                .map(|_| ())
        })
        .await
    }
}

pub(crate) fn insert_inbox_rows(
    tx: &rusqlite::Transaction<'_>,
    rows: Vec<InboxRow>,
) -> rusqlite::Result<usize> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO inbox (id, session, mesh, from_session, from_member,
            from_name, to_label, priority, kind, body, sent_at, received_at, verified)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?13, ?9, ?10, ?11, ?12)",
    )?;
    let mut n = 0;
    for r in rows {
        let m = r.msg;
        let from_member = claudemesh_schema::encoding::unb64(&m.from_member).unwrap_or_default();
        n += stmt.execute(params![
            m.id.as_bytes(),
            m.session.as_bytes(),
            m.mesh.as_bytes(),
            m.from_id.as_bytes(),
            from_member,
            m.from_name,
            m.to,
            m.priority.as_str(),
            m.body,
            m.sent_at,
            m.received_at,
            m.verified,
            m.kind
        ])?;
    }
    Ok(n)
}

#[allow(clippy::type_complexity)]
fn mesh_row(
    r: &Row<'_>,
) -> rusqlite::Result<(
    Vec<u8>,
    String,
    String,
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
    ))
}

/// All joined meshes.
pub fn q_meshes(conn: &Connection) -> Result<Vec<MeshRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, relay, relay_fp, member, session, role, display_name, groups, summary,
            status, genesis, joined_at FROM meshes ORDER BY joined_at",
    )?;
    let rows = stmt.query_map([], mesh_row)?;
    let mut out = Vec::new();
    for r in rows {
        let (
            id,
            name,
            relay,
            fp,
            member,
            session,
            role,
            display_name,
            groups,
            summary,
            status,
            genesis,
            joined_at,
        ) = r?;
        out.push(MeshRow {
            id: id16(id, MeshId::from_slice, "mesh id")?,
            name,
            relay,
            relay_fp: blob32(fp, "relay fingerprint")?,
            member: MemberKey(blob32(member, "member key")?),
            session: id16(session, SessionId::from_slice, "session id")?,
            role: parse(&role, "role")?,
            display_name,
            groups: serde_json::from_str(&groups).map_err(|_| StoreError::Corrupt("groups"))?,
            summary,
            status: parse(&status, "status")?,
            genesis: serde_json::from_str(&genesis).map_err(|_| StoreError::Corrupt("genesis"))?,
            joined_at,
        });
    }
    Ok(out)
}

/// Roster entries of a mesh, in order.
pub fn q_roster(conn: &Connection, mesh: MeshId) -> Result<Vec<(u64, RosterEntry)>> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, entry FROM roster WHERE mesh = ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (seq, e) = r?;
        out.push((
            seq as u64,
            serde_json::from_str(&e).map_err(|_| StoreError::Corrupt("roster"))?,
        ));
    }
    Ok(out)
}

/// The cached presence of one session.
pub fn q_presence_of(
    conn: &Connection,
    mesh: MeshId,
    session: SessionId,
) -> Result<Option<PresenceRow>> {
    Ok(presence_rows(conn, mesh, Some(session))?.into_iter().next())
}

/// Cached presences of a mesh.
pub fn q_presence(conn: &Connection, mesh: MeshId) -> Result<Vec<PresenceRow>> {
    presence_rows(conn, mesh, None)
}

fn presence_rows(
    conn: &Connection,
    mesh: MeshId,
    only: Option<SessionId>,
) -> Result<Vec<PresenceRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT session, member, session_key, seq, name, kind, status, summary, groups, hostname,
            cwd, visible, online, last_seen, delivery, role, client FROM presence
         WHERE mesh = ?1 AND (?2 IS NULL OR session = ?2)",
    )?;
    let only = only.map(|s| s.as_bytes().to_vec());
    let rows = stmt.query_map(params![mesh.as_bytes(), only], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, String>(9)?,
            r.get::<_, String>(10)?,
            r.get::<_, bool>(11)?,
            r.get::<_, bool>(12)?,
            r.get::<_, i64>(13)?,
            r.get::<_, String>(14)?,
            r.get::<_, String>(15)?,
            r.get::<_, String>(16)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (
            session,
            member,
            key,
            seq,
            name,
            kind,
            status,
            summary,
            groups,
            hostname,
            cwd,
            visible,
            online,
            last_seen,
            delivery,
            role,
            client,
        ) = r?;
        out.push(PresenceRow {
            mesh,
            session: id16(session, SessionId::from_slice, "session id")?,
            member: MemberKey(blob32(member, "member key")?),
            session_key: BoxPublic(blob32(key, "session key")?),
            seq,
            profile: Profile {
                name,
                kind,
                status: parse(&status, "status")?,
                summary,
                groups: serde_json::from_str(&groups).map_err(|_| StoreError::Corrupt("groups"))?,
                hostname,
                cwd,
                visible,
                delivery: serde_json::from_str(&delivery).unwrap_or_default(),
                role,
                client,
            },
            online,
            last_seen,
        });
    }
    Ok(out)
}

/// Peers of a mesh as shown by `peers`: online first, then by name. Our own daemon
/// session is left out; our other sessions are marked `me`.
pub fn q_peers(conn: &Connection, mesh: &MeshRow) -> Result<Vec<PeerInfo>> {
    // Live file reservations, by holder (a store from before shared state has none).
    let mut held: std::collections::HashMap<SessionId, Vec<String>> = Default::default();
    for r in crate::shared::query::q_reservations(conn, mesh.id, false, claudemesh_schema::now_ms())
        .unwrap_or_default()
    {
        held.entry(r.holder_id).or_default().extend(r.patterns);
    }
    let grants = crate::grants::q_grants(conn, mesh.id).unwrap_or_default();
    let mut peers: Vec<PeerInfo> = q_presence(conn, mesh.id)?
        .into_iter()
        .filter(|p| p.session != mesh.session)
        .map(|p| PeerInfo {
            id: p.session,
            member: p.member.to_b64(),
            name: p.profile.name,
            kind: p.profile.kind,
            status: p.profile.status,
            summary: p.profile.summary,
            groups: p.profile.groups,
            hostname: p.profile.hostname,
            online: p.online,
            last_seen: p.last_seen,
            me: p.member == mesh.member,
            delivery: p.profile.delivery,
            role: p.profile.role,
            client: p.profile.client,
            reservations: held.remove(&p.session).unwrap_or_default(),
            grants: grants
                .get(&p.member)
                .map(|g| g.caps.iter().cloned().collect()),
            blocked: grants.get(&p.member).is_some_and(|g| g.blocked),
        })
        .collect();
    peers.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    Ok(peers)
}

/// Unread messages of the given local sessions (optionally of one mesh), oldest first.
pub fn q_unread(
    conn: &Connection,
    mesh: Option<MeshId>,
    sessions: &[SessionId],
    limit: u32,
) -> Result<Vec<InboxMessage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT i.id, i.session, i.mesh, m.name, i.from_session, i.from_member, i.from_name,
            i.to_label, i.priority, i.sent_at, i.received_at, i.body, i.verified, i.surfaced_at,
            i.kind
         FROM inbox i LEFT JOIN meshes m ON m.id = i.mesh
         WHERE i.session = ?1 AND i.read_at IS NULL AND (?2 IS NULL OR i.mesh = ?2)
         ORDER BY i.received_at, i.id LIMIT ?3",
    )?;
    let mesh = mesh.map(|m| m.as_bytes().to_vec());
    let mut out = Vec::new();
    for session in sessions {
        let rows = stmt.query_map(params![session.as_bytes(), mesh, limit as i64], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, String>(11)?,
                r.get::<_, bool>(12)?,
                r.get::<_, Option<i64>>(13)?,
                r.get::<_, String>(14)?,
            ))
        })?;
        for r in rows {
            let (
                id,
                sess,
                mesh,
                mesh_name,
                from,
                from_member,
                from_name,
                to,
                priority,
                sent_at,
                received_at,
                body,
                verified,
                surfaced_at,
                kind,
            ) = r?;
            out.push(InboxMessage {
                id: id16(id, MessageId::from_slice, "message id")?,
                session: id16(sess, SessionId::from_slice, "session id")?,
                mesh: id16(mesh, MeshId::from_slice, "mesh id")?,
                mesh_name: mesh_name.unwrap_or_default(),
                from_id: id16(from, SessionId::from_slice, "session id")?,
                from_member: claudemesh_schema::encoding::b64(&from_member),
                from_name,
                to,
                priority: parse::<Priority>(&priority, "priority")?,
                sent_at,
                received_at,
                body,
                verified,
                surfaced_at,
                kind,
            });
        }
    }
    out.sort_by_key(|m| (m.received_at, m.id));
    out.truncate(limit as usize);
    Ok(out)
}

/// Hosted sessions, open and closed.
pub fn q_sessions(conn: &Connection) -> Result<Vec<SessionRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT mesh, session, client_key, profile, closed_at IS NULL, claude_session FROM sessions",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (mesh, session, client_key, profile, open, claude_session) = r?;
        out.push(SessionRow {
            mesh: id16(mesh, MeshId::from_slice, "mesh id")?,
            session: id16(session, SessionId::from_slice, "session id")?,
            client_key,
            profile: serde_json::from_str(&profile).map_err(|_| StoreError::Corrupt("profile"))?,
            open,
            claude_session,
        });
    }
    Ok(out)
}

/// Envelopes waiting in the outbox of a mesh, oldest first.
pub fn q_outbox(conn: &Connection, mesh: MeshId) -> Result<Vec<(MessageId, Vec<u8>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, envelope FROM outbox WHERE mesh = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, env) = r?;
        out.push((id16(id, MessageId::from_slice, "message id")?, env));
    }
    Ok(out)
}

/// Outbox size and unread count of a mesh.
pub fn q_counts(conn: &Connection, mesh: MeshId) -> Result<(u64, u64)> {
    let outbox: i64 = conn.query_row(
        "SELECT count(*) FROM outbox WHERE mesh = ?1",
        params![mesh.as_bytes()],
        |r| r.get(0),
    )?;
    let unread: i64 = conn.query_row(
        "SELECT count(*) FROM inbox WHERE mesh = ?1 AND read_at IS NULL",
        params![mesh.as_bytes()],
        |r| r.get(0),
    )?;
    Ok((outbox as u64, unread as u64))
}

/// Invites minted here: capability, uses seen, revoked.
pub fn q_invites(conn: &Connection) -> Result<Vec<(InviteCap, u32, bool)>> {
    let mut stmt =
        conn.prepare_cached("SELECT cap, uses, revoked FROM invites ORDER BY created_at")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (cap, uses, revoked) = r?;
        out.push((
            serde_json::from_str(&cap).map_err(|_| StoreError::Corrupt("invite"))?,
            uses as u32,
            revoked,
        ));
    }
    Ok(out)
}

/// Claims waiting for approval: id, mesh, request JSON, cap JSON, time.
pub fn q_claims(conn: &Connection) -> Result<Vec<StoredClaim>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, mesh, request, cap, at FROM claims ORDER BY at")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, mesh, req, cap, at) = r?;
        out.push((
            id16(id, claudemesh_schema::ClaimId::from_slice, "claim id")?,
            id16(mesh, MeshId::from_slice, "mesh id")?,
            req,
            cap,
            at,
        ));
    }
    Ok(out)
}

/// Client-key aliases of hosted sessions: (mesh, client key, session).
pub fn q_aliases(conn: &Connection) -> Result<Vec<(MeshId, String, SessionId)>> {
    let mut stmt = conn.prepare_cached("SELECT mesh, client_key, session FROM session_aliases")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (mesh, key, session) = r?;
        out.push((
            id16(mesh, MeshId::from_slice, "mesh id")?,
            key,
            id16(session, SessionId::from_slice, "session id")?,
        ));
    }
    Ok(out)
}

/// A sent message by full id or by the hex of its id's end (as `short()` shows it).
pub fn q_sent_find(conn: &Connection, id: &str) -> Result<Vec<(MessageId, String, SentStages)>> {
    let hex = id.trim().to_uppercase().replace('-', "");
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT id, to_label, created_at, relayed_at, delivered_at, surfaced_at, read_at FROM sent
         WHERE hex(id) = ?1 OR hex(id) LIKE '%' || ?1 LIMIT 5",
    )?;
    let rows = stmt.query_map(params![hex], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            SentStages {
                created: r.get(2)?,
                relayed: r.get(3)?,
                delivered: r.get(4)?,
                surfaced: r.get(5)?,
                read: r.get(6)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, to, st) = r?;
        out.push((id16(id, MessageId::from_slice, "message id")?, to, st));
    }
    Ok(out)
}

/// Open the store file read-only (for the CLI when the daemon is down).
pub fn open_readonly(path: &Path) -> Result<Connection> {
    Ok(sqlite::open_reader(path)?)
}
