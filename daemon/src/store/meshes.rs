//! Joined meshes (our identity and profile in each) and their roster entries.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::message::PeerStatus;
use claudemesh_schema::roster::{MeshGenesis, Role, RosterEntry};
use claudemesh_schema::{MeshId, SessionId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{Result, Store, StoreError, blob32, id16, parse};

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

impl Store {
    /// Add a joined mesh.
    pub(crate) async fn insert_mesh(&self, m: MeshRow) -> Result<()> {
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

    /// Set (or with `None` remove) one of this machine's settings.
    pub(crate) async fn set_setting(&self, key: &'static str, value: Option<String>) -> Result<()> {
        self.write(move |tx| {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, v],
                )?,
                None => tx.execute("DELETE FROM settings WHERE key = ?1", params![key])?,
            };
            Ok(())
        })
        .await
    }

    /// Give a joined mesh another local name (what `--mesh` and listings use here).
    pub(crate) async fn rename_mesh(&self, mesh: MeshId, name: String) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE meshes SET name = ?2 WHERE id = ?1",
                params![mesh.as_bytes(), name],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forget a mesh and everything stored for it.
    pub(crate) async fn delete_mesh(&self, mesh: MeshId) -> Result<()> {
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
    pub(crate) async fn update_profile(
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
    pub(crate) async fn put_roster(
        &self,
        mesh: MeshId,
        seq: u64,
        entry: &RosterEntry,
    ) -> Result<()> {
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
pub(crate) fn q_roster(conn: &Connection, mesh: MeshId) -> Result<Vec<(u64, RosterEntry)>> {
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

/// One of this machine's settings.
pub(crate) fn q_setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM settings WHERE key = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()?)
}
