//! Reading what arrived: `inbox` (with `--wait`), `mark_read`, the push subscription of a
//! hosted session with its priority gate, receipts to senders, and the status of messages
//! we sent.

use claudemesh_schema::ipc::Notification;
use claudemesh_schema::ipc::methods::{self as m, InboxParams, InboxResult};
use claudemesh_schema::now_ms;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::send::send_receipts;
use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::lock;
use crate::store;

pub(crate) async fn read(d: &Arc<Daemon>, p: InboxParams) -> Result<InboxResult, Error> {
    let mesh = match &p.mesh {
        Some(s) => Some(d.select(Some(s))?.id),
        None => None,
    };
    let sessions: Vec<_> = match p.session {
        Some(s) => {
            if !d.meshes().iter().any(|m| m.is_local(&s)) {
                return Err(Error::not_found(format!("no session {s} on this daemon")));
            }
            vec![s]
        }
        None => d.meshes().iter().map(|m| m.keys.session).collect(),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(3_600_000));
    let mut gen_rx = d.inbox_gen.subscribe();
    let messages = loop {
        gen_rx.borrow_and_update();
        let s2 = sessions.clone();
        let mut msgs = d
            .store
            .read(move |c| store::q_unread(c, mesh, &s2, 1000))
            .await?;
        if let Some(cursor) = p.after
            && let Some(pos) = msgs.iter().position(|x| x.id == cursor)
        {
            msgs.drain(..=pos);
        }
        msgs.truncate(limit as usize);
        if !msgs.is_empty() || tokio::time::Instant::now() >= deadline {
            break msgs;
        }
        tokio::select! {
            _ = gen_rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = d.shutdown.cancelled() => break msgs,
        }
    };
    if !p.peek && !messages.is_empty() {
        let ids = messages.iter().map(|m| (m.id, m.session)).collect();
        d.store.mark_read(ids, now_ms()).await?;
        send_receipts(d, &messages, true).await;
    }
    Ok(InboxResult { messages })
}
/// The session's status, as far as this daemon knows (hosted sessions; the daemon's own
/// session is always idle).
fn local_status(
    d: &Daemon,
    session: claudemesh_schema::SessionId,
) -> claudemesh_schema::message::PeerStatus {
    for x in d.meshes() {
        if let Some(l) = lock(&x.sessions).get(&session) {
            return l.profile.status;
        }
    }
    claudemesh_schema::message::PeerStatus::Idle
}

/// Push each new unread message of `session` once, as a `message` notification, for as
/// long as the connection lives, gated by priority on the session's status: an idle
/// session gets `now` and `next`, a working or dnd one only `now`, and `low` is never
/// pushed (it waits to be pulled). Held messages are pushed when the session turns idle.
/// Messages stay unread: reading is the client's call.
pub(crate) async fn subscription(
    d: Arc<Daemon>,
    session: claudemesh_schema::SessionId,
    tx: mpsc::Sender<Notification>,
) {
    use claudemesh_schema::message::{PeerStatus, Priority};
    let mut gen_rx = d.inbox_gen.subscribe();
    let mut changes = d.changes.subscribe();
    loop {
        gen_rx.borrow_and_update();
        changes.borrow_and_update();
        let Ok(msgs) = d
            .store
            .read(move |c| store::q_unread(c, None, &[session], 1000))
            .await
        else {
            return;
        };
        // The session was closed or replaced: tell the client so it can reopen.
        let open = d.meshes().iter().any(|x| {
            x.keys.session == session || lock(&x.sessions).get(&session).is_some_and(|l| l.open)
        });
        if !open {
            let n = Notification {
                jsonrpc: "2.0".into(),
                method: m::NOTIFY_SESSION_CLOSED.into(),
                params: Value::Null,
            };
            let _ = tx.send(n).await;
            return;
        }
        let status = local_status(&d, session);
        for msg in msgs {
            let allowed = match (msg.priority, status) {
                (Priority::Low, _) => false,
                (Priority::Now, _) => true,
                (Priority::Next, PeerStatus::Idle) => true,
                (Priority::Next, _) => false,
            };
            // Pushed once, ever: `surfaced_at` is durable, so a reconnecting client (or a
            // restarted daemon) does not get the same message into its context twice.
            if !allowed || msg.surfaced_at.is_some() {
                continue;
            }
            let n = Notification {
                jsonrpc: "2.0".into(),
                method: m::NOTIFY_MESSAGE.into(),
                params: serde_json::to_value(&msg).unwrap_or(Value::Null),
            };
            if tx.send(n).await.is_err() {
                return;
            }
            let _ = d.store.mark_surfaced(msg.id, msg.session, now_ms()).await;
            send_receipts(&d, std::slice::from_ref(&msg), false).await;
        }
        tokio::select! {
            r = gen_rx.changed() => if r.is_err() { return },
            r = changes.changed() => if r.is_err() { return },
            _ = d.shutdown.cancelled() => return,
        }
    }
}

pub(crate) async fn message_status(
    d: &Arc<Daemon>,
    p: m::MessageStatusParams,
) -> Result<m::MessageStatusResult, Error> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(600_000));
    let mut changes = d.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let q = p.id.clone();
        let hits = d.store.read(move |c| store::q_sent_find(c, &q)).await?;
        let (id, to, st) = match hits.len() {
            0 => return Err(Error::not_found(format!("no sent message {:?}", p.id))),
            1 => hits
                .into_iter()
                .next()
                .ok_or_else(|| Error::internal("vanished"))?,
            _ => {
                return Err(Error::ambiguous(
                    "several messages match; give more of the id",
                ));
            }
        };
        let stage = if st.read.is_some() {
            m::Stage::Read
        } else if st.surfaced.is_some() {
            m::Stage::Surfaced
        } else if st.delivered.is_some() {
            m::Stage::Delivered
        } else if st.relayed.is_some() {
            m::Stage::Relayed
        } else {
            m::Stage::Queued
        };
        let done = p.wait_for.is_none_or(|w| stage >= w) || tokio::time::Instant::now() >= deadline;
        if done {
            return Ok(m::MessageStatusResult {
                id,
                stage,
                queued_at: st.created,
                relayed_at: st.relayed,
                delivered_at: st.delivered,
                surfaced_at: st.surfaced,
                read_at: st.read,
                to,
            });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = d.shutdown.cancelled() => {}
        }
    }
}

/// `mark_read`: mark some of a session's unread messages read, and tell their senders.
pub(crate) async fn mark_read(d: &Arc<Daemon>, p: m::MarkReadParams) -> Result<(), Error> {
    let session = p.session;
    let unread = d
        .store
        .read(move |c| store::q_unread(c, None, &[session], 1000))
        .await?;
    let read: Vec<_> = unread
        .into_iter()
        .filter(|x| p.ids.contains(&x.id))
        .collect();
    let ids = read.iter().map(|x| (x.id, session)).collect();
    d.store.mark_read(ids, now_ms()).await?;
    send_receipts(d, &read, true).await;
    Ok(())
}
