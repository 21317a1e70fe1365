//! Messages: the inbox (what arrived, per local session), the outbox (what waits for the
//! relay) and the record of what we sent with how far it got.

use claudemesh_schema::ipc::methods::InboxMessage;
use claudemesh_schema::message::Priority;
use claudemesh_schema::{MeshId, MessageId, SessionId};
use rusqlite::{Connection, params};

use super::{Result, Store, StoreError, id16, parse};

/// A received message to store, for the local session named in `msg.session`.
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    /// The message as shown.
    pub msg: InboxMessage,
}

/// A sent message's progress: created, then relayed, delivered, surfaced, read (unix ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentStages {
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

impl Store {
    /// Store received messages, ignoring ids already stored; returns how many were new.
    pub(crate) async fn insert_inbox(&self, rows: Vec<InboxRow>) -> Result<usize> {
        self.write(move |tx| insert_inbox_rows(tx, rows)).await
    }

    /// Queue received messages for storage; `done` runs on the writer thread after the
    /// commit (this is where the caller acknowledges them to the relay).
    pub(crate) async fn insert_inbox_then(
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
    pub(crate) async fn mark_read(&self, ids: Vec<(MessageId, SessionId)>, at: i64) -> Result<()> {
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
    pub(crate) async fn mark_surfaced(
        &self,
        id: MessageId,
        session: SessionId,
        at: i64,
    ) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE inbox SET surfaced_at = coalesce(surfaced_at, ?3) WHERE id = ?1 AND session = ?2",
                params![id.as_bytes(), session.as_bytes(), at],
            )
            .map(|_| ())
        })
        .await
    }

    /// Durably queue an envelope for the relay and (for messages, not receipts) record it
    /// as sent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn enqueue(
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
    pub(crate) async fn relayed(&self, id: MessageId, at: i64) -> Result<()> {
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
    pub(crate) async fn undeliverable(&self, id: MessageId, reason: String) -> Result<()> {
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
    pub(crate) async fn delivered(&self, id: MessageId, at: i64) -> Result<()> {
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
    pub(crate) async fn sent_stage(&self, id: MessageId, read: bool, at: i64) -> Result<()> {
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

/// Unread messages of the given local sessions (optionally of one mesh), oldest first.
pub(crate) fn q_unread(
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

/// Envelopes waiting in the outbox of a mesh, oldest first.
pub(crate) fn q_outbox(conn: &Connection, mesh: MeshId) -> Result<Vec<(MessageId, Vec<u8>)>> {
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

/// A sent message by full id or by the hex of its id's end (as `short()` shows it).
pub(crate) fn q_sent_find(
    conn: &Connection,
    id: &str,
) -> Result<Vec<(MessageId, String, SentStages)>> {
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
