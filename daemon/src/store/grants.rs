//! Per-member grants of this daemon (its local policy; see the daemon's `grants`).

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::trust::CAPABILITIES;
use claudemesh_schema::{MeshId, now_ms};
use rusqlite::{Connection, params};
use std::collections::{BTreeSet, HashMap};

use super::{Result, Store, StoreError};

/// One peer's grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Capabilities granted.
    pub caps: BTreeSet<String>,
    /// Everything this member sends is dropped.
    pub blocked: bool,
}

impl Default for Grant {
    fn default() -> Self {
        Self {
            caps: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            blocked: false,
        }
    }
}

impl Grant {
    /// May this member do `cap`?
    pub(crate) fn allows(&self, cap: &str) -> bool {
        !self.blocked && self.caps.contains(cap)
    }
}

/// Stored grants of `mesh`.
pub(crate) fn q_grants(conn: &Connection, mesh: MeshId) -> Result<HashMap<MemberKey, Grant>> {
    let mut stmt =
        conn.prepare_cached("SELECT member, caps, blocked FROM grants WHERE mesh = ?1")?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, bool>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (m, caps, blocked) = row?;
        let m: [u8; 32] = m
            .try_into()
            .map_err(|_| StoreError::Corrupt("grant member"))?;
        let caps: BTreeSet<String> =
            serde_json::from_str(&caps).map_err(|_| StoreError::Corrupt("grant caps"))?;
        out.insert(MemberKey(m), Grant { caps, blocked });
    }
    Ok(out)
}

impl Store {
    /// Store a member's grants (`None`: back to the default, every capability).
    pub(crate) async fn put_grant(
        &self,
        mesh: MeshId,
        member: MemberKey,
        caps: Option<BTreeSet<String>>,
        blocked: bool,
    ) -> Result<()> {
        let caps = match caps {
            Some(c) => {
                Some(serde_json::to_string(&c).map_err(|_| StoreError::Corrupt("grant caps"))?)
            }
            None => None,
        };
        self.write(move |tx| {
            match caps {
                None => tx.execute(
                    "DELETE FROM grants WHERE mesh = ?1 AND member = ?2",
                    params![mesh.as_bytes(), member.0],
                )?,
                Some(caps) => tx.execute(
                    "INSERT INTO grants (mesh, member, caps, blocked, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (mesh, member) DO UPDATE SET caps = excluded.caps,
                       blocked = excluded.blocked, updated_at = excluded.updated_at",
                    params![mesh.as_bytes(), member.0, caps, blocked, now_ms()],
                )?,
            };
            Ok(())
        })
        .await
    }
}
