//! Sessions hosted by this daemon (besides its own) and the client keys that alias them.

use claudemesh_schema::message::Profile;
use claudemesh_schema::{MeshId, SessionId};
use rusqlite::{Connection, params};

use super::{Result, Store, StoreError, id16};

/// A session hosted by this daemon (besides its own).
#[derive(Debug, Clone)]
pub(crate) struct SessionRow {
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
    /// The process it lives in (`<pid>-<start>`), when known.
    pub process: Option<String>,
    /// A subscription has held it (so it ends when none does and its process is gone).
    pub held: bool,
    /// Its Claude Code transcript, when known.
    pub transcript: Option<String>,
    /// Its presence was sent.
    pub announced: bool,
}

impl Store {
    /// Record a hosted session as open (reopening clears its close time).
    pub(crate) async fn open_session(&self, r: SessionRow, at: i64) -> Result<()> {
        let profile =
            serde_json::to_string(&r.profile).map_err(|_| StoreError::Corrupt("profile"))?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (mesh, session, client_key, profile, opened_at, claude_session,
                    process, held, transcript, announced)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (mesh, session) DO UPDATE SET
                    profile = excluded.profile, opened_at = excluded.opened_at, closed_at = NULL,
                    claude_session = coalesce(excluded.claude_session, claude_session),
                    process = excluded.process, held = excluded.held,
                    transcript = coalesce(excluded.transcript, transcript),
                    announced = excluded.announced",
                params![
                    r.mesh.as_bytes(),
                    r.session.as_bytes(),
                    r.client_key,
                    profile,
                    at,
                    r.claude_session,
                    r.process,
                    r.held,
                    r.transcript,
                    r.announced
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Route a client key to an existing session (a resumed Claude session).
    pub(crate) async fn set_alias(
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
    pub(crate) async fn close_session(
        &self,
        mesh: MeshId,
        session: SessionId,
        at: i64,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE sessions SET closed_at = ?3 WHERE mesh = ?1 AND session = ?2",
                params![mesh.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }
}

/// Hosted sessions, open and closed.
pub(crate) fn q_sessions(conn: &Connection) -> Result<Vec<SessionRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT mesh, session, client_key, profile, closed_at IS NULL, claude_session, process,
            held, transcript, announced FROM sessions",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ),
            SessionRow {
                mesh: MeshId::from_bytes([0; 16]),
                session: SessionId::from_bytes([0; 16]),
                client_key: String::new(),
                profile: Profile::default(),
                open: r.get(4)?,
                claude_session: r.get(5)?,
                process: r.get(6)?,
                held: r.get(7)?,
                transcript: r.get(8)?,
                announced: r.get(9)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let ((mesh, session, client_key, profile), row) = r?;
        out.push(SessionRow {
            mesh: id16(mesh, MeshId::from_slice, "mesh id")?,
            session: id16(session, SessionId::from_slice, "session id")?,
            client_key,
            profile: serde_json::from_str(&profile).map_err(|_| StoreError::Corrupt("profile"))?,
            ..row
        });
    }
    Ok(out)
}

/// Client-key aliases of hosted sessions: (mesh, client key, session).
pub(crate) fn q_aliases(conn: &Connection) -> Result<Vec<(MeshId, String, SessionId)>> {
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
