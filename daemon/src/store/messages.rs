//! Messages out: the outbox (what waits for the relay) and the record of what we sent
//! with how far it got; and the counts `status` shows.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::message::Priority;
use claudemesh_schema::{MeshId, MessageId};
use rusqlite::{Connection, params};

use super::{Result, Store, StoreError, id16};
use claudemesh_relay::sqlite::SqliteError;

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

impl SentStages {
    /// How far the message got.
    pub(crate) fn stage(&self) -> claudemesh_schema::ipc::methods::Stage {
        use claudemesh_schema::ipc::methods::Stage;
        if self.read.is_some() {
            Stage::Read
        } else if self.surfaced.is_some() {
            Stage::Surfaced
        } else if self.delivered.is_some() {
            Stage::Delivered
        } else if self.relayed.is_some() {
            Stage::Relayed
        } else {
            Stage::Queued
        }
    }
}

impl Store {
    /// Queue an envelope in the outbox (and, with `record`, its `sent` row naming the
    /// members whose receipts count: empty for every member) and wait
    /// for the commit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn enqueue(
        &self,
        mesh: MeshId,
        id: MessageId,
        envelope: Vec<u8>,
        to_label: String,
        priority: Priority,
        at: i64,
        record: Option<Vec<MemberKey>>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue_then(
            mesh,
            id,
            envelope,
            to_label,
            priority,
            at,
            record,
            move |r| {
                let _ = tx.send(r);
            },
        )
        .await?;
        rx.await
            .map_err(|_| StoreError::Sqlite(SqliteError::Closed))?
    }

    /// [`Store::enqueue`] without waiting: `done` runs after the commit (on the writer
    /// thread: quick, never blocking). Writes queued after this one commit after it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn enqueue_then(
        &self,
        mesh: MeshId,
        id: MessageId,
        envelope: Vec<u8>,
        to_label: String,
        priority: Priority,
        at: i64,
        record: Option<Vec<MemberKey>>,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(
            move |tx| {
                tx.prepare_cached(
                    "INSERT INTO outbox (id, mesh, envelope, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![id.as_bytes(), mesh.as_bytes(), envelope, at])?;
                let Some(members) = record else {
                    return Ok(());
                };
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO sent (id, mesh, to_label, priority, created_at,
                        recipients)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    id.as_bytes(),
                    mesh.as_bytes(),
                    to_label,
                    priority.as_str(),
                    at,
                    recipients_json(&members)
                ])?;
                Ok(())
            },
            done,
        )
        .await
    }

    /// Deliver a message to sessions on this daemon without the relay: its `sent` row
    /// (already delivered) and its inbox rows in one transaction. `done` runs after the
    /// commit (on the writer thread: quick, never blocking).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deliver_local_then(
        &self,
        mesh: MeshId,
        id: MessageId,
        to_label: String,
        priority: Priority,
        at: i64,
        rows: Vec<super::InboxRow>,
        inserted: impl FnOnce(&[(MessageId, claudemesh_schema::SessionId)]) + Send + 'static,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(
            move |tx| {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO sent (id, mesh, to_label, priority, created_at, relayed_at,
                        delivered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5)",
                )?
                .execute(params![
                    id.as_bytes(),
                    mesh.as_bytes(),
                    to_label,
                    priority.as_str(),
                    at
                ])?;
                let new = super::insert_inbox_rows(tx, rows)?;
                inserted(&new);
                Ok(())
            },
            done,
        )
        .await
    }

    /// The relay committed an envelope we sent: it leaves the outbox. `done` runs after
    /// the commit (on the writer thread: quick, never blocking).
    pub(crate) async fn relayed_then(
        &self,
        id: MessageId,
        at: i64,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(
            move |tx| {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                    .execute(params![id.as_bytes()])?;
                tx.prepare_cached(
                    "UPDATE sent SET relayed_at = coalesce(relayed_at, ?2) WHERE id = ?1",
                )?
                .execute(params![id.as_bytes(), at])?;
                Ok(())
            },
            done,
        )
        .await
    }

    /// The relay refused an envelope for good: drop it from the outbox, keep the reason.
    pub(crate) async fn undeliverable_then(
        &self,
        id: MessageId,
        reason: String,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(
            move |tx| {
                tx.execute("DELETE FROM outbox WHERE id = ?1", params![id.as_bytes()])?;
                tx.execute(
                    "UPDATE sent SET to_label = to_label || ' (undeliverable: ' || ?2 || ')' WHERE id = ?1",
                    params![id.as_bytes(), reason],
                )?;
                Ok(())
            },
            done,
        )
        .await
    }

    /// A recipient daemon acknowledged an envelope we sent.
    pub(crate) async fn delivered_then(
        &self,
        id: MessageId,
        member: MemberKey,
        at: i64,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(
            move |tx| {
                tx.prepare_cached(&format!(
                    "UPDATE sent SET delivered_at = coalesce(delivered_at, ?2),
                        relayed_at = coalesce(relayed_at, ?2) WHERE id = ?1 AND {ADDRESSED}"
                ))?
                .execute(params![id.as_bytes(), at, quoted(&member)])
                .map(|_| ())
            },
            done,
        )
        .await
    }

    /// A recipient reported that a message we sent was surfaced or read.
    pub(crate) async fn sent_stage(
        &self,
        id: MessageId,
        member: MemberKey,
        read: bool,
        at: i64,
    ) -> Result<()> {
        self.write(move |tx| sent_stage(tx, id, member, read, at))
            .await
    }

    /// [`Store::sent_stage`], without waiting: `done` runs after the commit.
    pub(crate) async fn sent_stage_then(
        &self,
        id: MessageId,
        member: MemberKey,
        read: bool,
        at: i64,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.write_then(move |tx| sent_stage(tx, id, member, read, at), done)
            .await
    }
}

/// The condition on `sent` that `?3` (a quoted member key) may move the row: a member it
/// was addressed to, or any member for a broadcast (and rows from before recipients were
/// kept).
const ADDRESSED: &str = "(recipients IS NULL OR instr(recipients, ?3) > 0)";

/// A member key as it appears in `sent.recipients`.
fn quoted(m: &MemberKey) -> String {
    format!("\"{}\"", m.to_b64())
}

/// `sent.recipients` for `members` (none: every member).
fn recipients_json(members: &[MemberKey]) -> Option<String> {
    if members.is_empty() {
        return None;
    }
    let keys: Vec<String> = members.iter().map(|m| m.to_b64()).collect();
    serde_json::to_string(&keys).ok()
}

fn sent_stage(
    tx: &rusqlite::Transaction<'_>,
    id: MessageId,
    member: MemberKey,
    read: bool,
    at: i64,
) -> rusqlite::Result<()> {
    let sql = if read {
        format!(
            "UPDATE sent SET read_at = coalesce(read_at, ?2), surfaced_at = coalesce(surfaced_at, ?2),
                delivered_at = coalesce(delivered_at, ?2), relayed_at = coalesce(relayed_at, ?2)
             WHERE id = ?1 AND {ADDRESSED}"
        )
    } else {
        format!(
            "UPDATE sent SET surfaced_at = coalesce(surfaced_at, ?2),
                delivered_at = coalesce(delivered_at, ?2), relayed_at = coalesce(relayed_at, ?2)
             WHERE id = ?1 AND {ADDRESSED}"
        )
    };
    tx.prepare_cached(&sql)?
        .execute(params![id.as_bytes(), at, quoted(&member)])
        .map(|_| ())
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

/// Sent messages by full id, a prefix of it, or a prefix of its short form (the hex of
/// the id's end, as `short()` shows it).
pub(crate) fn q_sent_find(
    conn: &Connection,
    id: &str,
) -> Result<Vec<(MessageId, String, SentStages)>> {
    let hex = id.trim().to_uppercase().replace('-', "");
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    // The full id or a prefix of it, or a prefix of the short form `send` prints (the
    // last 8 hex digits of a time-ordered id).
    let mut stmt = conn.prepare_cached(
        "SELECT id, to_label, created_at, relayed_at, delivered_at, surfaced_at, read_at FROM sent
         WHERE substr(hex(id), 1, length(?1)) = ?1
            OR (length(?1) <= 8 AND substr(hex(id), 25, length(?1)) = ?1)
         LIMIT 5",
    )?;
    sent_rows(&mut stmt, params![hex])
}

/// A sent message by its full id: its mesh, recipient label and stages.
pub(crate) fn q_sent_by_id(
    conn: &Connection,
    id: MessageId,
) -> Result<Option<(MeshId, String, SentStages)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, to_label, created_at, relayed_at, delivered_at, surfaced_at, read_at FROM sent
         WHERE id = ?1",
    )?;
    let Some((_, to, st)) = sent_rows(&mut stmt, params![id.as_bytes()])?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let mesh: Vec<u8> = conn
        .prepare_cached("SELECT mesh FROM sent WHERE id = ?1")?
        .query_row(params![id.as_bytes()], |r| r.get(0))?;
    Ok(Some((id16(mesh, MeshId::from_slice, "mesh id")?, to, st)))
}

/// The message id an idempotency key names: the one recorded at its first use, else
/// `fresh`, recorded now (a retry after any crash finds it). Its bytes: see [`id16`].
pub(crate) fn id_for_send_key(
    conn: &Connection,
    key: &[u8; 32],
    fresh: MessageId,
    now: i64,
) -> rusqlite::Result<Vec<u8>> {
    conn.prepare_cached("INSERT OR IGNORE INTO send_keys (key, id, at) VALUES (?1, ?2, ?3)")?
        .execute(params![&key[..], fresh.as_bytes(), now])?;
    let id: Vec<u8> = conn
        .prepare_cached("SELECT id FROM send_keys WHERE key = ?1")?
        .query_row(params![&key[..]], |r| r.get(0))?;
    Ok(id)
}

/// The `limit` messages sent last, newest first.
pub(crate) fn q_sent_recent(
    conn: &Connection,
    limit: u32,
) -> Result<Vec<(MessageId, String, SentStages)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, to_label, created_at, relayed_at, delivered_at, surfaced_at, read_at FROM sent
         ORDER BY created_at DESC, id DESC LIMIT ?1",
    )?;
    sent_rows(&mut stmt, params![limit as i64])
}

fn sent_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    p: impl rusqlite::Params,
) -> Result<Vec<(MessageId, String, SentStages)>> {
    let rows = stmt.query_map(p, |r| {
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

/// Ids of the messages received or sent last, newest first, each with a few words of
/// who and what (for shell completion of `reply` and `sent`).
pub fn q_recent_ids(
    conn: &Connection,
    received: bool,
    limit: u32,
) -> Result<Vec<(MessageId, String)>> {
    let sql = if received {
        "SELECT id, 'from ' || from_name || ': ' || substr(body, 1, 40) FROM inbox
         ORDER BY received_at DESC LIMIT ?1"
    } else {
        "SELECT id, 'to ' || to_label FROM sent ORDER BY created_at DESC LIMIT ?1"
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, what) = r?;
        out.push((id16(id, MessageId::from_slice, "message id")?, what));
    }
    Ok(out)
}
