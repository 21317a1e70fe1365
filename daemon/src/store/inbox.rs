//! The inbox: what arrived for this daemon's sessions, and how far each message got
//! towards a reader: shown (handed to a channel push or a hook), accepted (Claude Code
//! queued the push), surfaced (seen in a context a model answered), read.
//!
//! A message to a person (`for_member`) is stored once, on the daemon's own session; any
//! of the person's sessions here reads it through a [`Reader`] that includes member rows.

use claudemesh_schema::ipc::methods::InboxMessage;
use claudemesh_schema::message::Priority;
use claudemesh_schema::{MeshId, MessageId, SessionId};
use rusqlite::{Connection, Row, params};

use super::{Result, Store, StoreError, corrupt, unwrap_corrupt};

/// A received message to store, for the local session named in `msg.session`.
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    /// The message as shown.
    pub msg: InboxMessage,
    /// Stored as already handed to this session's channel (a push that goes out as the
    /// row commits, so no other path claims it meanwhile).
    pub pushed_to: Option<SessionId>,
}

impl InboxRow {
    pub(crate) fn new(msg: InboxMessage) -> Self {
        Self {
            msg,
            pushed_to: None,
        }
    }
}

/// An unread message with its delivery progress.
#[derive(Debug, Clone)]
pub(crate) struct Unread {
    /// The message.
    pub msg: InboxMessage,
    /// Handed to a path (a push or a hook) at, unix ms.
    pub shown_at: Option<i64>,
    /// Claude Code took the push into its queue at, unix ms.
    pub accepted_at: Option<i64>,
}

/// Whose unread messages a query reads: some sessions, and (for a session of the person)
/// the person's messages kept on the daemon's own session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reader {
    /// Sessions whose own rows count.
    pub sessions: Vec<SessionId>,
    /// The daemon session whose `for_member` rows count too.
    pub member_rows: Option<SessionId>,
    /// Only this mesh.
    pub mesh: Option<MeshId>,
}

impl Reader {
    /// One session's own rows.
    pub(crate) fn session(s: SessionId) -> Self {
        Self {
            sessions: vec![s],
            ..Self::default()
        }
    }
}

const COLUMNS: &str = "i.id, i.session, i.mesh, m.name, i.from_session, i.from_member, i.from_name,
    i.from_label, i.to_label, i.priority, i.sent_at, i.received_at, i.body, i.verified,
    i.surfaced_at, i.kind, i.for_member, i.shown_at, i.accepted_at";

fn unread_row(r: &Row<'_>) -> rusqlite::Result<Unread> {
    let id = |i: usize, what| -> rusqlite::Result<[u8; 16]> {
        r.get::<_, Vec<u8>>(i)?
            .try_into()
            .map_err(|_| corrupt(what))
    };
    let priority: String = r.get(9)?;
    Ok(Unread {
        msg: InboxMessage {
            id: MessageId::from_bytes(id(0, "message id")?),
            session: SessionId::from_bytes(id(1, "session id")?),
            mesh: MeshId::from_bytes(id(2, "mesh id")?),
            mesh_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            from_id: SessionId::from_bytes(id(4, "session id")?),
            from_member: claudemesh_schema::encoding::b64(&r.get::<_, Vec<u8>>(5)?),
            from_name: r.get(6)?,
            from_label: r.get(7)?,
            to: r.get(8)?,
            priority: priority
                .parse::<Priority>()
                .map_err(|_| corrupt("priority"))?,
            sent_at: r.get(10)?,
            received_at: r.get(11)?,
            body: r.get(12)?,
            verified: r.get(13)?,
            surfaced_at: r.get(14)?,
            kind: r.get(15)?,
            for_member: r.get(16)?,
        },
        shown_at: r.get(17)?,
        accepted_at: r.get(18)?,
    })
}

/// Unread messages for `who`, oldest first, after `after` (arrival time and id of the
/// last one seen), at most `limit`. Pages through any backlog.
pub(crate) fn q_unread(
    conn: &Connection,
    who: &Reader,
    after: Option<(i64, MessageId)>,
    limit: u32,
) -> Result<Vec<Unread>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM inbox i LEFT JOIN meshes m ON m.id = i.mesh
         WHERE i.session = ?1 AND i.read_at IS NULL AND (?2 IS NULL OR i.mesh = ?2)
           AND (?3 = 0 OR i.for_member = 1)
           AND (i.received_at > ?4 OR (i.received_at = ?4 AND i.id > ?5))
         ORDER BY i.received_at, i.id LIMIT ?6"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mesh = who.mesh.map(|m| m.as_bytes().to_vec());
    let (after_at, after_id) = match after {
        Some((at, id)) => (at, id.as_bytes().to_vec()),
        None => (i64::MIN, Vec::new()),
    };
    let mut out = Vec::new();
    let mut scan = |session: &SessionId, only_member: bool| -> Result<()> {
        let rows = stmt.query_map(
            params![
                session.as_bytes(),
                mesh,
                only_member,
                after_at,
                after_id,
                limit as i64
            ],
            unread_row,
        )?;
        for r in rows {
            out.push(r.map_err(unwrap_corrupt)?);
        }
        Ok(())
    };
    for s in &who.sessions {
        scan(s, false)?;
    }
    if let Some(own) = who.member_rows
        && !who.sessions.contains(&own)
    {
        scan(&own, true)?;
    }
    out.sort_by_key(|u| (u.msg.received_at, u.msg.id));
    out.dedup_by_key(|u| (u.msg.id, u.msg.session));
    out.truncate(limit as usize);
    Ok(out)
}

/// The newest `limit` messages of `who`, read or not, newest first: the history.
pub(crate) fn q_history(conn: &Connection, who: &Reader, limit: u32) -> Result<Vec<InboxMessage>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM inbox i LEFT JOIN meshes m ON m.id = i.mesh
         WHERE i.session = ?1 AND (?2 IS NULL OR i.mesh = ?2) AND (?3 = 0 OR i.for_member = 1)
         ORDER BY i.received_at DESC, i.id DESC LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mesh = who.mesh.map(|m| m.as_bytes().to_vec());
    let mut out = Vec::new();
    let mut scan = |session: &SessionId, only_member: bool| -> Result<()> {
        let rows = stmt.query_map(
            params![session.as_bytes(), mesh, only_member, limit as i64],
            unread_row,
        )?;
        for r in rows {
            out.push(r.map_err(unwrap_corrupt)?.msg);
        }
        Ok(())
    };
    for s in &who.sessions {
        scan(s, false)?;
    }
    if let Some(own) = who.member_rows
        && !who.sessions.contains(&own)
    {
        scan(&own, true)?;
    }
    out.sort_by_key(|m| std::cmp::Reverse((m.received_at, m.id)));
    out.dedup_by_key(|m| (m.id, m.session));
    out.truncate(limit as usize);
    Ok(out)
}

/// Messages of `who` waiting to be shown at all (not shown, not taken, unread), oldest
/// first, of priority `now`, or `now` and `next` with `next_too`; at most `limit`.
pub(crate) fn q_pushable(
    conn: &Connection,
    who: &Reader,
    next_too: bool,
    limit: u32,
) -> Result<Vec<Unread>> {
    // The conditions are spelled out rather than bound: SQLite re-plans a statement whose
    // WHERE clause a bound value could simplify, and this one runs for every arrival.
    let sql = |only_member: bool| {
        format!(
            "SELECT {COLUMNS} FROM inbox i LEFT JOIN meshes m ON m.id = i.mesh
             WHERE i.session = ?1 AND i.read_at IS NULL AND i.shown_at IS NULL
               AND i.accepted_at IS NULL{}{}
             ORDER BY i.received_at, i.id LIMIT ?2",
            if only_member {
                " AND i.for_member = 1"
            } else {
                ""
            },
            if next_too {
                " AND i.priority IN ('now', 'next')"
            } else {
                " AND i.priority = 'now'"
            },
        )
    };
    let mut out = Vec::new();
    let mut scan = |session: &SessionId, only_member: bool| -> Result<()> {
        let mut stmt = conn.prepare_cached(&sql(only_member))?;
        let rows = stmt.query_map(params![session.as_bytes(), limit as i64], unread_row)?;
        for r in rows {
            out.push(r.map_err(unwrap_corrupt)?);
        }
        Ok(())
    };
    for s in &who.sessions {
        scan(s, false)?;
    }
    if let Some(own) = who.member_rows
        && !who.sessions.contains(&own)
    {
        scan(&own, true)?;
    }
    out.sort_by_key(|u| (u.msg.received_at, u.msg.id));
    out.truncate(limit as usize);
    Ok(out)
}

/// Whether each of `ids` (rows of `reader`, or the person's on `member_rows`) was taken by
/// Claude Code (accepted) or read: `(id, accepted or read)`.
pub(crate) fn q_taken(
    conn: &Connection,
    reader: SessionId,
    member_rows: Option<SessionId>,
    ids: &[MessageId],
) -> Result<Vec<(MessageId, bool)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT accepted_at IS NOT NULL OR read_at IS NOT NULL FROM inbox
         WHERE id = ?3 AND (session = ?1 OR (?2 IS NOT NULL AND session = ?2 AND for_member = 1))",
    )?;
    let own = member_rows.map(|s| s.as_bytes().to_vec());
    let mut out = Vec::new();
    for id in ids {
        let taken: Option<bool> = stmt
            .query_row(params![reader.as_bytes(), own, id.as_bytes()], |r| r.get(0))
            .ok();
        out.push((*id, taken.unwrap_or(true)));
    }
    Ok(out)
}

/// The last `limit` messages stored for `mesh` (newest first), as (sending session, id)
/// with their send times: what the relay may still resend after a restart (their
/// acknowledgement can have been lost with the process).
pub(crate) fn q_recent_received(
    conn: &Connection,
    mesh: MeshId,
    limit: usize,
) -> Result<Vec<((SessionId, MessageId), i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT from_session, id, sent_at FROM inbox WHERE mesh = ?1 ORDER BY rowid DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![mesh.as_bytes(), limit as i64], |r| {
        let id = |i: usize, what| -> rusqlite::Result<[u8; 16]> {
            r.get::<_, Vec<u8>>(i)?
                .try_into()
                .map_err(|_| corrupt(what))
        };
        Ok((
            (
                SessionId::from_bytes(id(0, "session id")?),
                MessageId::from_bytes(id(1, "message id")?),
            ),
            r.get::<_, i64>(2)?,
        ))
    })?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(unwrap_corrupt)
}

/// The arrival time of a message of `session`, to page after it.
pub(crate) fn q_received_at(conn: &Connection, id: MessageId) -> Result<Option<i64>> {
    let mut stmt = conn.prepare_cached("SELECT min(received_at) FROM inbox WHERE id = ?1")?;
    Ok(stmt.query_row(params![id.as_bytes()], |r| r.get(0))?)
}

/// Which rows of `who` a change by message id touches (SQL condition on `inbox` with
/// parameters ?1 = reader session, ?2 = member-rows session or NULL).
const OWNED: &str = "(session = ?1 OR (?2 IS NOT NULL AND session = ?2 AND for_member = 1))";

impl Store {
    /// Delete messages read before `before` (unix ms), and the record of messages sent
    /// before it; returns how many inbox rows went.
    pub(crate) async fn prune_read(
        &self,
        before: i64,
        now: i64,
        forget_before: i64,
    ) -> Result<usize> {
        self.write(move |tx| {
            // The ids stay, so a relay sending one again cannot make it new; they go
            // after another period, when the message's age alone refuses it
            // ([`replay_floor`]).
            tx.execute(
                "INSERT OR IGNORE INTO inbox_gone (id, session, gone_at)
                 SELECT id, session, ?2 FROM inbox WHERE read_at IS NOT NULL AND read_at < ?1",
                params![before, now],
            )?;
            let n = tx.execute(
                "DELETE FROM inbox WHERE read_at IS NOT NULL AND read_at < ?1",
                params![before],
            )?;
            tx.execute(
                "DELETE FROM inbox_gone WHERE gone_at < ?1",
                params![forget_before],
            )?;
            tx.execute("DELETE FROM sent WHERE created_at < ?1", params![before])?;
            // A key outlives its message's record as long as recipients remember the id,
            // so a late retry is still the same message to them.
            tx.execute(
                "DELETE FROM send_keys WHERE at < ?1",
                params![forget_before],
            )?;
            Ok(n)
        })
        .await
    }

    /// Store received messages, ignoring ids already stored; returns how many were new.
    pub(crate) async fn insert_inbox(&self, rows: Vec<InboxRow>) -> Result<usize> {
        self.write(move |tx| insert_inbox_rows(tx, rows).map(|n| n.len()))
            .await
    }

    /// Queue received messages for storage. `inserted` runs inside the transaction, before
    /// its commit, with the rows that were new (`(id, session)`: pushes go out from
    /// there); `done` runs after the commit (this is where the caller acknowledges them to
    /// the relay). Both run on the writer thread and must be quick.
    pub(crate) async fn insert_inbox_then(
        &self,
        rows: Vec<InboxRow>,
        inserted: impl FnOnce(&[(MessageId, SessionId)]) + Send + 'static,
        done: impl FnOnce(Result<usize>) + Send + 'static,
    ) -> Result<()> {
        self.writer
            .call_then(
                move |tx| {
                    let new = insert_inbox_rows(tx, unseen(tx, rows)?)?;
                    inserted(&new);
                    Ok(new.len())
                },
                move |r| done(r.map_err(StoreError::from)),
            )
            .await?;
        Ok(())
    }

    /// Mark messages of `reader` (and of the person, with `member_rows`) read through
    /// `via`; `surfaced` also records that they are in a model's context; `confirm` counts
    /// only messages handed to `reader` through `via` (evidence from a transcript). Returns
    /// the rows that changed (already read ones are left alone), for receipts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn mark_read(
        &self,
        reader: SessionId,
        member_rows: Option<SessionId>,
        ids: Vec<MessageId>,
        at: i64,
        via: &'static str,
        surfaced: bool,
        confirm: bool,
    ) -> Result<Vec<InboxMessage>> {
        let rows = self
            .write(move |tx| {
                let sql = format!(
                    "UPDATE inbox SET read_at = ?4, read_via = ?5,
                        surfaced_at = CASE WHEN ?6 THEN coalesce(surfaced_at, ?4) ELSE surfaced_at END
                     WHERE id = ?3 AND read_at IS NULL AND {OWNED}
                       AND (NOT ?7 OR (shown_to = ?1 AND shown_via = ?5))
                     RETURNING id, session"
                );
                let mut stmt = tx.prepare_cached(&sql)?;
                let own = member_rows.map(|s| s.as_bytes().to_vec());
                let mut changed = Vec::new();
                for id in ids {
                    let hit = stmt.query_map(
                        params![reader.as_bytes(), own, id.as_bytes(), at, via, surfaced, confirm],
                        |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
                    )?;
                    for h in hit {
                        changed.push(h?);
                    }
                }
                let sql = format!(
                    "SELECT {COLUMNS} FROM inbox i LEFT JOIN meshes m ON m.id = i.mesh
                     WHERE i.id = ?1 AND i.session = ?2"
                );
                let mut get = tx.prepare_cached(&sql)?;
                let mut out = Vec::new();
                for (id, session) in changed {
                    out.push(get.query_row(params![id, session], unread_row)?);
                }
                Ok(out)
            })
            .await;
        match rows {
            Ok(r) => Ok(r.into_iter().map(|u| u.msg).collect()),
            Err(StoreError::Sqlite(claudemesh_relay::sqlite::SqliteError::Query(e))) => {
                Err(unwrap_corrupt(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Claim messages of `reader` for showing through `via` (`channel`, `hooks`): a
    /// message is claimed only if it is unread, not in Claude Code's hands, and not shown
    /// since `stale_before` (unix ms). Returns the claimed ids: two paths racing for one
    /// message cannot both show it.
    pub(crate) async fn claim_shown(
        &self,
        reader: SessionId,
        member_rows: Option<SessionId>,
        ids: Vec<MessageId>,
        at: i64,
        via: &'static str,
        stale_before: i64,
    ) -> Result<Vec<MessageId>> {
        self.write(move |tx| {
            let sql = format!(
                "UPDATE inbox SET shown_at = ?4, shown_via = ?5, shown_to = ?1
                 WHERE id = ?3 AND read_at IS NULL AND accepted_at IS NULL
                   AND (shown_at IS NULL OR shown_at < ?6) AND {OWNED}"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let own = member_rows.map(|s| s.as_bytes().to_vec());
            let mut claimed = Vec::new();
            for id in ids {
                if stmt.execute(params![
                    reader.as_bytes(),
                    own,
                    id.as_bytes(),
                    at,
                    via,
                    stale_before
                ])? > 0
                {
                    claimed.push(id);
                }
            }
            Ok(claimed)
        })
        .await
    }

    /// Record that Claude Code took messages it was handed through `via` into its queue or
    /// its conversation (they reach the model on its schedule; no other path shows them
    /// again). Only messages handed to `reader` by `via` count: text that merely looks like
    /// ours (a peer's body, a file the model read) cannot claim another message.
    pub(crate) async fn mark_accepted(
        &self,
        reader: SessionId,
        member_rows: Option<SessionId>,
        ids: Vec<MessageId>,
        at: i64,
        via: &'static str,
    ) -> Result<()> {
        self.write(move |tx| {
            let sql = format!(
                "UPDATE inbox SET accepted_at = coalesce(accepted_at, ?4)
                 WHERE id = ?3 AND read_at IS NULL AND shown_to = ?1 AND shown_via = ?5
                   AND {OWNED}"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let own = member_rows.map(|s| s.as_bytes().to_vec());
            for id in ids {
                stmt.execute(params![reader.as_bytes(), own, id.as_bytes(), at, via])?;
            }
            Ok(())
        })
        .await
    }

    /// Pushes planned for `session` that its subscription did not make after all: free
    /// for the other paths again.
    pub(crate) async fn unclaim_push(&self, session: SessionId, ids: Vec<MessageId>) -> Result<()> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE inbox SET shown_at = NULL, shown_via = NULL, shown_to = NULL
                 WHERE id = ?1 AND shown_to = ?2 AND shown_via = 'channel'
                   AND accepted_at IS NULL AND read_at IS NULL",
            )?;
            for id in ids {
                stmt.execute(params![id.as_bytes(), session.as_bytes()])?;
            }
            Ok(())
        })
        .await
    }

    /// What was handed to `session` and never confirmed is gone with its process (it
    /// ended, or resumed in a new one): it may be shown again, there or (a message to the
    /// person) in another of the person's sessions.
    pub(crate) async fn forget_shown(&self, session: SessionId) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE inbox SET shown_at = NULL, shown_via = NULL, shown_to = NULL,
                    accepted_at = NULL
                 WHERE shown_to = ?1 AND read_at IS NULL",
                params![session.as_bytes()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Forget everything stored for a session that was never announced.
    pub(crate) async fn forget_session_rows(&self, mesh: MeshId, session: SessionId) -> Result<()> {
        self.write(move |tx| {
            for sql in [
                "DELETE FROM inbox WHERE mesh = ?1 AND session = ?2",
                "DELETE FROM sessions WHERE mesh = ?1 AND session = ?2",
                "DELETE FROM session_aliases WHERE mesh = ?1 AND session = ?2",
                "DELETE FROM presence WHERE mesh = ?1 AND session = ?2",
            ] {
                tx.execute(sql, params![mesh.as_bytes(), session.as_bytes()])?;
            }
            Ok(())
        })
        .await
    }
}

/// Insert `rows`, ignoring those stored already; returns the new ones (`(id, session)`).
/// The rows of envelopes this daemon never stored under any session. A relay's envelope is
/// stored once, for the sessions it was for when it arrived: sent again later (a replay),
/// it must not become new for a session opened since (a broadcast's targets are the
/// sessions open at arrival).
fn unseen(tx: &rusqlite::Transaction<'_>, rows: Vec<InboxRow>) -> rusqlite::Result<Vec<InboxRow>> {
    let mut stmt = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE id = ?1)
             OR EXISTS (SELECT 1 FROM inbox_gone WHERE id = ?1)",
    )?;
    let mut known: std::collections::HashMap<MessageId, bool> = Default::default();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id = r.msg.id;
        let seen = match known.get(&id) {
            Some(k) => *k,
            None => {
                let k: bool = stmt.query_row(params![id.as_bytes()], |x| x.get(0))?;
                known.insert(id, k);
                k
            }
        };
        if !seen {
            out.push(r);
        }
    }
    Ok(out)
}

pub(crate) fn insert_inbox_rows(
    tx: &rusqlite::Transaction<'_>,
    rows: Vec<InboxRow>,
) -> rusqlite::Result<Vec<(MessageId, SessionId)>> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO inbox (id, session, mesh, from_session, from_member,
            from_name, from_label, to_label, priority, kind, body, sent_at, received_at,
            verified, for_member, shown_at, shown_via, shown_to)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
            CASE WHEN ?16 IS NULL THEN NULL ELSE ?13 END,
            CASE WHEN ?16 IS NULL THEN NULL ELSE 'channel' END, ?16
         WHERE NOT EXISTS (SELECT 1 FROM inbox_gone WHERE id = ?1 AND session = ?2)",
    )?;
    let mut new = Vec::new();
    for r in rows {
        let pushed_to = r.pushed_to.map(|s| s.as_bytes().to_vec());
        let m = r.msg;
        let key = (m.id, m.session);
        let from_member = claudemesh_schema::encoding::unb64(&m.from_member).unwrap_or_default();
        let n = stmt.execute(params![
            m.id.as_bytes(),
            m.session.as_bytes(),
            m.mesh.as_bytes(),
            m.from_id.as_bytes(),
            from_member,
            m.from_name,
            m.from_label,
            m.to,
            m.priority.as_str(),
            m.kind,
            m.body,
            m.sent_at,
            m.received_at,
            m.verified,
            m.for_member,
            pushed_to
        ])?;
        if n > 0 {
            new.push(key);
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("daemon.db")).unwrap();
        (dir, s)
    }

    fn row(session: SessionId, mesh: MeshId, n: i64, for_member: bool) -> InboxRow {
        InboxRow {
            pushed_to: None,
            msg: InboxMessage {
                id: MessageId::new(),
                session,
                mesh,
                mesh_name: String::new(),
                from_id: SessionId::new(),
                from_member: claudemesh_schema::encoding::b64(&[7u8; 32]),
                from_name: "alice".into(),
                from_label: String::new(),
                to: "bob".into(),
                priority: Priority::Next,
                sent_at: n,
                received_at: n,
                body: format!("m{n}"),
                verified: true,
                surfaced_at: None,
                kind: "text".into(),
                for_member,
            },
        }
    }

    /// Store rows as a relay's envelope (the link's path); how many were new.
    async fn from_relay(s: &Store, rows: Vec<InboxRow>) -> usize {
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.insert_inbox_then(
            rows,
            |_| {},
            move |r| {
                let _ = tx.send(r.unwrap());
            },
        )
        .await
        .unwrap();
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn an_envelope_stored_once_is_new_for_no_session_opened_since_nor_after_retention() {
        let (_d, s) = store();
        let (own, mesh) = (SessionId::new(), MeshId::new());
        let first = row(own, mesh, 1, false);
        let id = first.msg.id;
        assert_eq!(from_relay(&s, vec![first.clone()]).await, 1);
        // The relay sends the broadcast again, now also for a session opened since.
        let mut later = first.clone();
        later.msg.session = SessionId::new();
        assert_eq!(from_relay(&s, vec![first.clone(), later.clone()]).await, 0);
        // Read, then deleted by retention: its id still makes it old.
        s.mark_read(own, None, vec![id], 10, "pull", false, false)
            .await
            .unwrap();
        assert_eq!(s.prune_read(11, 12, 0).await.unwrap(), 1);
        assert_eq!(from_relay(&s, vec![later]).await, 0);
        // Once the id is forgotten too, only the age rule (replay_floor) refuses it.
        s.prune_read(11, 13, 13).await.unwrap();
        assert_eq!(from_relay(&s, vec![first]).await, 1);
    }

    #[tokio::test]
    async fn any_backlog_pages_through_and_can_all_be_marked_read() {
        let (_d, s) = store();
        let (me, mesh) = (SessionId::new(), MeshId::new());
        let rows: Vec<InboxRow> = (0..1100).map(|n| row(me, mesh, n, false)).collect();
        assert_eq!(s.insert_inbox(rows).await.unwrap(), 1100);
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .read({
                    let who = Reader::session(me);
                    move |c| q_unread(c, &who, after, 256)
                })
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.msg.received_at, last.msg.id));
            seen.extend(page.into_iter().map(|u| u.msg.id));
        }
        assert_eq!(seen.len(), 1100);
        let read = s
            .mark_read(me, None, seen, 1, "pull", false, false)
            .await
            .unwrap();
        assert_eq!(read.len(), 1100);
        let left = s
            .read(move |c| q_unread(c, &Reader::session(me), None, 10))
            .await
            .unwrap();
        assert!(left.is_empty());
    }

    #[tokio::test]
    async fn a_persons_messages_are_read_once_by_any_of_their_sessions() {
        let (_d, s) = store();
        let (own, hosted, mesh) = (SessionId::new(), SessionId::new(), MeshId::new());
        let to_person = row(own, mesh, 1, true);
        let to_cli = row(own, mesh, 2, false);
        let id = to_person.msg.id;
        s.insert_inbox(vec![to_person, to_cli]).await.unwrap();
        let who = Reader {
            sessions: vec![hosted],
            member_rows: Some(own),
            mesh: None,
        };
        let got = s
            .read({
                let who = who.clone();
                move |c| q_unread(c, &who, None, 10)
            })
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "only the person's row, not the CLI's own");
        assert!(got[0].msg.for_member);
        let read = s
            .mark_read(hosted, Some(own), vec![id], 5, "hooks", true, false)
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].surfaced_at, Some(5));
        let again = s
            .mark_read(hosted, Some(own), vec![id], 6, "hooks", true, false)
            .await
            .unwrap();
        assert!(again.is_empty(), "read once");
        let cli = s
            .read(move |c| q_unread(c, &Reader::session(own), None, 10))
            .await
            .unwrap();
        assert_eq!(cli.len(), 1, "the CLI still has its own message");
    }
}
