//! The reminder scheduler: delivers the reminders this daemon's member scheduled.
//!
//! **Who fires.** Exactly one daemon per reminder: the one that scheduled it (it records
//! its own in `own_reminders`, so a row that arrived in a snapshot, whose author column a
//! member could have forged, never fires here). Others only fold the `reminder_fired` ops.
//!
//! **Exactly once per due time.** A firing sends the message under an id derived from
//! (reminder, due time) and keyed with the member's secret (every member folds the
//! reminder, so an unkeyed id could be predicted and used first by another member, and
//! the relay would refuse the real firing as `id_taken`), then appends `reminder_fired { due }` to the log. A crash between
//! the two resends the same id after restart, which every hop dedupes; a fired due time
//! (sequenced or still in the op outbox) is never fired again. A recurring reminder whose
//! daemon was down over several due times fires once, for the latest, on its return.
//!
//! Only reminders the log has sequenced fire; one scheduled offline fires once the link
//! has published it.

use claudemesh_schema::crypto::MemberSecret;
use claudemesh_schema::ipc::methods::{InboxMessage, SendParams};
use claudemesh_schema::ipc::shared::{Reminder, ScheduledResult};
use claudemesh_schema::message::{KIND_REMINDER, Priority};
use claudemesh_schema::op::Op;
use claudemesh_schema::{ItemId, MeshId, MessageId, SessionId, now_ms};
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::MeshCtx;
use crate::shared::cron::Cron;
use crate::shared::query;
use crate::store::{InboxRow, Result, StoreError};

/// A reminder as stored, with what the scheduler needs.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    id: ItemId,
    session: SessionId,
    author: Vec<u8>,
    author_name: String,
    to: String,
    body: String,
    deliver_at: Option<i64>,
    cron: Option<String>,
    status: String,
    last_due: Option<i64>,
    fired: u64,
    created_at: i64,
}

impl Row {
    /// The next due time, given the last one delivered (`None`: nothing left to fire).
    fn next_due(&self, last: Option<i64>) -> Option<i64> {
        if self.status != "scheduled" {
            return None;
        }
        match (&self.cron, self.deliver_at) {
            (Some(c), _) => c
                .parse::<Cron>()
                .ok()?
                .next_after(last.unwrap_or(self.created_at)),
            (None, Some(at)) => last.is_none().then_some(at),
            (None, None) => None,
        }
    }

    fn public(&self, last: Option<i64>) -> Reminder {
        Reminder {
            id: self.id,
            author: query::by(self.author_name.clone(), &self.author),
            to: self.to.clone(),
            message: self.body.clone(),
            deliver_at: self.deliver_at,
            cron: self.cron.clone(),
            next_due: self.next_due(last),
            last_due: last,
            fired: self.fired,
            status: self.status.clone(),
        }
    }
}

fn q_rows(conn: &Connection, mesh: MeshId) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, session, author, author_name, to_label, body, deliver_at, cron, status,
                last_due, fired, created_at
         FROM reminders WHERE mesh = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            Row {
                id: ItemId::from_bytes([0; 16]),
                session: SessionId::from_bytes([0; 16]),
                author: r.get(2)?,
                author_name: r.get(3)?,
                to: r.get(4)?,
                body: r.get(5)?,
                deliver_at: r.get(6)?,
                cron: r.get(7)?,
                status: r.get(8)?,
                last_due: r.get(9)?,
                fired: r.get::<_, i64>(10)? as u64,
                created_at: r.get(11)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, session, mut r) = row?;
        r.id = ItemId::from_slice(&id).ok_or(StoreError::Corrupt("reminder id"))?;
        r.session = SessionId::from_slice(&session).ok_or(StoreError::Corrupt("session id"))?;
        out.push(r);
    }
    Ok(out)
}

/// Reminders this daemon scheduled itself (the only ones it fires).
fn own_ids(conn: &Connection, mesh: MeshId) -> Result<std::collections::HashSet<ItemId>> {
    let mut stmt = conn.prepare_cached("SELECT id FROM own_reminders WHERE mesh = ?1")?;
    let rows = stmt.query_map(params![mesh.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?;
    let mut out = std::collections::HashSet::new();
    for row in rows {
        if let Some(id) = ItemId::from_slice(&row?) {
            out.insert(id);
        }
    }
    Ok(out)
}

/// Reminders with the last due time delivered, counting fired ops still in the outbox.
fn q_effective(conn: &Connection, mesh: MeshId) -> Result<Vec<(Row, Option<i64>)>> {
    let mut pending: HashMap<ItemId, i64> = HashMap::new();
    for b in query::q_pending(conn, mesh)? {
        if let Op::ReminderFired { reminder, due } = b.op {
            let e = pending.entry(reminder).or_insert(due);
            *e = (*e).max(due);
        }
    }
    Ok(q_rows(conn, mesh)?
        .into_iter()
        .map(|r| {
            let last = match (r.last_due, pending.get(&r.id)) {
                (Some(a), Some(b)) => Some(a.max(*b)),
                (a, b) => a.or(b.copied()),
            };
            (r, last)
        })
        .collect())
}

/// The scheduler's clock (wall clock plus the debug shift): reminders and inbox retention
/// run on it.
pub(crate) fn clock(d: &Daemon) -> i64 {
    now_ms() + d.clock_offset.load(Ordering::Relaxed)
}

pub(crate) async fn run(d: Arc<Daemon>) {
    let mut changes = d.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let now = clock(&d);
        let mut wake = now + 60_000;
        for m in d.meshes() {
            let (mesh, me) = (m.id, m.member().0.to_vec());
            let rows = match d
                .store
                .read(move |c| {
                    let own = own_ids(c, mesh)?;
                    Ok(q_effective(c, mesh)?
                        .into_iter()
                        .filter(|(r, _)| own.contains(&r.id))
                        .collect::<Vec<_>>())
                })
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read reminders");
                    continue;
                }
            };
            for (r, last) in rows.into_iter().filter(|(r, _)| r.author == me) {
                let Some(mut due) = r.next_due(last) else {
                    continue;
                };
                if due > now {
                    wake = wake.min(due);
                    continue;
                }
                // Missed several periods (daemon was down): fire once, for the latest.
                if let Some(c) = r.cron.as_deref().and_then(|c| c.parse::<Cron>().ok()) {
                    while let Some(n) = c.next_after(due).filter(|n| *n <= now) {
                        due = n;
                    }
                }
                if let Err(e) = fire(&d, &m, &r, due).await {
                    tracing::warn!(reminder = %r.id.short(), error = %e, "reminder not delivered; will retry");
                    wake = wake.min(now + 5_000);
                }
            }
        }
        let sleep = Duration::from_millis((wake - clock(&d)).clamp(10, 60_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            r = changes.changed() => if r.is_err() { return },
            _ = d.shutdown.cancelled() => return,
        }
    }
}

/// The message id of a reminder's firing for `due`: the same on every attempt of this
/// member, unpredictable to anyone without its secret.
fn firing_id(secret: &MemberSecret, r: &ItemId, due: i64) -> MessageId {
    let key = blake3::derive_key("claudemesh 2026 reminder firing v2", &secret.to_bytes()[..]);
    let mut input = r.as_bytes().to_vec();
    input.extend_from_slice(&due.to_le_bytes());
    let h = blake3::keyed_hash(&key, &input);
    let h = h.as_bytes();
    let mut rand = [0u8; 10];
    rand.copy_from_slice(&h[..10]);
    let ms = u64::try_from(due).unwrap_or(0);
    MessageId(uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid())
}

async fn fire(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    r: &Row,
    due: i64,
) -> std::result::Result<(), Error> {
    let id = firing_id(&m.keys.member, &r.id, due);
    let session = if m.is_local(&r.session) {
        r.session
    } else {
        m.keys.session
    };
    if r.to.is_empty() || r.to == "me" {
        let msg = InboxMessage {
            id,
            session,
            mesh: m.id,
            mesh_name: m.name(),
            from_id: session,
            from_member: m.member().to_b64(),
            from_name: "reminder".into(),
            to: m.session_name(&session).unwrap_or_default(),
            priority: Priority::Next,
            sent_at: due,
            received_at: now_ms(),
            body: r.body.clone(),
            verified: true,
            surfaced_at: None,
            for_member: false,
            from_label: String::new(),
            kind: KIND_REMINDER.into(),
        };
        d.store.insert_inbox(vec![InboxRow::new(msg)]).await?;
        d.arrived(m, &[session], false);
    } else {
        let known = d
            .store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM sent WHERE id = ?1",
                    params![id.as_bytes()],
                    |x| x.get::<_, i64>(0),
                )? > 0)
            })
            .await?;
        if !known {
            let p = SendParams {
                to: r.to.clone(),
                body: r.body.clone(),
                priority: Priority::Next,
                mesh: Some(m.id.to_string()),
                session: Some(session),
                wait_ms: Some(0),
                id: None,
            };
            match crate::delivery::send::send_as(d, p, id, KIND_REMINDER).await {
                Ok(_) => {}
                // Nobody to deliver to (the peer left): count it as fired, say so.
                Err(e @ Error::NotFound(_)) => {
                    tracing::warn!(reminder = %r.id.short(), error = %e, "reminder recipient not found");
                }
                Err(e) => return Err(e),
            }
        }
    }
    tracing::info!(mesh = %m.id.short(), reminder = %r.id.short(), due, "reminder fired");
    crate::shared::oplog::write(
        d,
        m,
        Some(session),
        Op::ReminderFired {
            reminder: r.id,
            due,
        },
        Some(0),
    )
    .await?;
    Ok(())
}

/// `list_scheduled`.
pub(crate) async fn list(
    d: &Arc<Daemon>,
    p: claudemesh_schema::ipc::shared::ScheduledQuery,
) -> std::result::Result<ScheduledResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let mesh = m.id;
    let after: Option<(i64, ItemId)> = crate::shared::position(&p.page)?;
    let rows = d.store.read(move |c| q_effective(c, mesh)).await?;
    let mut reminders: Vec<Reminder> = rows
        .iter()
        .map(|(r, last)| r.public(*last))
        .filter(|r| p.all || r.status == "scheduled")
        .collect();
    // The order is computed (a cron's next time), not stored: sort here, then take the
    // page after the cursor's (due time, id). Reminders are few next to keys or tasks.
    let key = |r: &Reminder| (r.next_due.unwrap_or(i64::MAX), r.id);
    reminders.sort_by_key(key);
    let mut pager = p.page.pager();
    for r in reminders
        .into_iter()
        .filter(|r| after.is_none_or(|a| key(r) > a))
    {
        if !pager.push(r) {
            break;
        }
    }
    let (reminders, next_cursor) = pager.finish(key);
    Ok(ScheduledResult {
        mesh,
        reminders,
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_ids_are_stable_per_due_time_and_time_ordered() {
        let r = ItemId::new();
        let me = MemberSecret::generate();
        assert_eq!(firing_id(&me, &r, 60_000), firing_id(&me, &r, 60_000));
        assert_ne!(firing_id(&me, &r, 60_000), firing_id(&me, &r, 120_000));
        assert_ne!(
            firing_id(&me, &r, 60_000),
            firing_id(&me, &ItemId::new(), 60_000)
        );
        assert_eq!(firing_id(&me, &r, 60_000).0.get_version_num(), 7);
        // Another member, knowing the reminder and its due time, cannot predict the id.
        let other = MemberSecret::generate();
        assert_ne!(firing_id(&me, &r, 60_000), firing_id(&other, &r, 60_000));
    }
}
