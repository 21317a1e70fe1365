//! Invites minted here and join claims waiting for an admin's decision.

use claudemesh_schema::roster::InviteCap;
use claudemesh_schema::{InviteId, MeshId};
use rusqlite::{Connection, params};

use super::{Result, Store, StoreError, id16};

/// A claim parked for approval: id, mesh, request JSON, capability JSON, arrival time.
pub(crate) type StoredClaim = (claudemesh_schema::ClaimId, MeshId, String, String, i64);

impl Store {
    /// Record an invite minted here.
    pub(crate) async fn insert_invite(&self, cap: &InviteCap, at: i64) -> Result<()> {
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
    pub(crate) async fn invite_used(&self, id: InviteId) -> Result<()> {
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
    pub(crate) async fn invite_revoked(&self, id: InviteId) -> Result<()> {
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
    pub(crate) async fn insert_claim(
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
    pub(crate) async fn delete_claim(&self, id: claudemesh_schema::ClaimId) -> Result<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM claims WHERE id = ?1", params![id.as_bytes()])
                .map(|_| ())
        })
        .await
    }
}

/// Invites minted here: capability, uses seen, revoked.
pub(crate) fn q_invites(conn: &Connection) -> Result<Vec<(InviteCap, u32, bool)>> {
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
pub(crate) fn q_claims(conn: &Connection) -> Result<Vec<StoredClaim>> {
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
