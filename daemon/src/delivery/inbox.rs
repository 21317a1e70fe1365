//! Reading what arrived: `inbox` (with `--wait`), `mark_read`, the push subscription of a
//! hosted session with its priority gate, the evidence that moves a message to `read`
//! (Claude Code took a push; a model answered a context holding it), receipts to senders,
//! and the status of messages we sent.
//!
//! A message moves forward only on evidence: pushing a notification or printing a hook's
//! context makes it *shown*; the session's transcript (or the prompt of a channel-started
//! turn) makes it *accepted* (in Claude Code's queue or conversation) and then *surfaced*
//! and *read* once a model answered. Shown-but-unaccepted messages fall back to the next
//! path after a short deadline; accepted ones are never shown again.

use claudemesh_schema::ipc::Notification;
use claudemesh_schema::ipc::methods::{self as m, InboxMessage, InboxParams, InboxResult};
use claudemesh_schema::message::{PeerStatus, Priority};
use claudemesh_schema::{MeshId, MessageId, SessionId, now_ms};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::push::push_allowed;
use super::send::send_receipts;
use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{Channel, MeshCtx, lock};
use crate::store::{self, Reader, Unread};
use claudemesh_schema::message::DeliveryPath;

/// How long a push may wait for Claude Code to take it before other paths may show the
/// message (and, for a session whose channel never worked, before pushing stops).
pub(crate) const PUSH_DEADLINE: Duration = Duration::from_secs(3);
/// The same, once the session's channel has been seen to work (a slow disk or a busy
/// machine must not make a working channel look dropped).
const PUSH_DEADLINE_WORKING: Duration = Duration::from_secs(10);
/// Rows scanned per query when paging through a backlog.
const PAGE: u32 = 256;
/// How often messages read longer ago than `[inbox] keep_read_days` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const DAY_MS: i64 = 86_400_000;

/// Inbox retention: deletes what was read longer ago than `[inbox] keep_read_days` (and
/// the record of messages sent that long ago), at start, hourly, and when the scheduler's
/// debug clock moves. Unread messages are never deleted.
pub(crate) async fn retention(d: Arc<Daemon>) {
    let keep = d.cfg.inbox.keep_read_days;
    if keep == 0 {
        return;
    }
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    let mut changes = d.changes.subscribe();
    let offset = || d.clock_offset.load(std::sync::atomic::Ordering::Relaxed);
    let mut seen = offset();
    loop {
        tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                if offset() == seen {
                    continue;
                }
            }
        }
        seen = offset();
        let now = crate::reminders::clock(&d);
        let before = now - keep as i64 * DAY_MS;
        let forget_before = now - gone_days(keep as i64) * DAY_MS;
        match d.store.prune_read(before, now, forget_before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                n,
                keep_read_days = keep,
                "deleted messages read before the retention"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot apply inbox retention; will retry"),
        }
    }
}

/// How long the id of a message retention deleted is kept (`inbox_gone`), in days: as
/// long as the retention, and always longer than a relay keeps an undelivered message
/// (7 days by default), so an honest message that waited at a relay is never refused as
/// too old.
fn gone_days(keep: i64) -> i64 {
    keep.max(8)
}

/// Messages sent before this are refused on arrival (`None`: no retention, nothing is
/// ever deleted, the inbox dedupes every id). Retention deletes a read message after
/// `keep_read_days` and its id [`gone_days`] later; anything older than both is a replay
/// this daemon could no longer recognise by its id, or a sender's clock far behind.
pub(crate) fn replay_floor(d: &Daemon) -> Option<i64> {
    let keep = d.cfg.inbox.keep_read_days as i64;
    (keep > 0).then(|| crate::reminders::clock(d) - (keep + gone_days(keep)) * DAY_MS)
}

/// How long a message handed to `session` may wait for evidence before another path
/// may show it.
pub(crate) fn deadline_for(m: &MeshCtx, session: SessionId) -> Duration {
    match lock(&m.sessions).get(&session).map(|l| l.channel) {
        Some(Channel::Works) => PUSH_DEADLINE_WORKING,
        _ => PUSH_DEADLINE,
    }
}

/// Is `u` free to be shown now (not waiting in Claude Code, not just handed to a path)?
pub(crate) fn ready(u: &Unread, now: i64, deadline: Duration) -> bool {
    u.accepted_at.is_none()
        && u.shown_at
            .is_none_or(|t| now - t > deadline.as_millis() as i64)
}

/// The reader of `session`'s messages. A hosted session reads the person's messages too
/// when `person` holds: always when it asks (a pull), and for pushes and hooks only while
/// it is the person's most recently active session.
pub(crate) fn reader(
    d: &Daemon,
    session: SessionId,
    person: bool,
) -> Option<(Arc<MeshCtx>, Reader)> {
    for m in d.meshes() {
        if m.keys.session == session {
            return Some((m.clone(), Reader::session(session)));
        }
        if lock(&m.sessions).contains_key(&session) {
            let member_rows = person.then_some(m.keys.session);
            return Some((
                m.clone(),
                Reader {
                    sessions: vec![session],
                    member_rows,
                    mesh: Some(m.id),
                },
            ));
        }
    }
    None
}

/// The person's rows count for automatic delivery to `session` only while it is the most
/// recently active session.
fn designated(m: &MeshCtx, session: SessionId) -> bool {
    m.designated() == Some(session)
}

/// The unread messages of `who` that pass `keep`, oldest first, at most `max`, paging
/// through any backlog.
pub(crate) async fn unread_where(
    d: &Daemon,
    who: &Reader,
    max: usize,
    keep: impl Fn(&Unread) -> bool,
) -> Result<Vec<Unread>, Error> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let w = who.clone();
        let page = d
            .store
            .read(move |c| store::q_unread(c, &w, after, PAGE))
            .await?;
        let full = page.len() as u32 == PAGE;
        if let Some(last) = page.last() {
            after = Some((last.msg.received_at, last.msg.id));
        }
        out.extend(page.into_iter().filter(|u| keep(u)));
        if out.len() >= max || !full {
            out.truncate(max);
            return Ok(out);
        }
    }
}

/// `inbox`: unread messages of a session (default: the daemon's own in each mesh), read
/// unless `peek`; with `wait_ms`, waits for one.
pub(crate) async fn read(d: &Arc<Daemon>, p: InboxParams) -> Result<InboxResult, Error> {
    let mesh = match &p.mesh {
        Some(s) => Some(d.select(Some(s))?.id),
        None => None,
    };
    let mut readers: Vec<(Option<Arc<MeshCtx>>, SessionId, Reader)> = match p.session {
        Some(s) => {
            let Some((m, r)) = reader(d, s, true) else {
                return Err(Error::not_found(format!("no session {s} on this daemon")));
            };
            let hosted = m.keys.session != s;
            vec![(hosted.then_some(m), s, r)]
        }
        None => d
            .meshes()
            .iter()
            .map(|m| (None, m.keys.session, Reader::session(m.keys.session)))
            .collect(),
    };
    for (_, _, r) in &mut readers {
        if mesh.is_some() {
            r.mesh = mesh;
        }
    }
    // A hosted session pulling: what Claude Code already holds (a push it queued) or was
    // handed a moment ago is not returned again, and no push competes while it waits.
    let hosted = readers
        .first()
        .and_then(|(m, s, _)| m.clone().map(|m| (m, *s)));
    // Only a reader that takes messages counts as the session pulling: a peek or the
    // history (a user watching the session's inbox) must not hold its pushes back or
    // make it the person's most recent session.
    let _pulling = match &hosted {
        Some((m, s)) if !p.peek && !p.all => {
            crate::sessions::touch(d, m, *s).await;
            crate::sessions::path_seen(d, m, *s, DeliveryPath::Pull).await;
            crate::sessions::pulling(d, m, *s)
        }
        _ => None,
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    if p.all {
        let mut messages = Vec::new();
        for (_, _, r) in &readers {
            let r = r.clone();
            messages.extend(
                d.store
                    .read(move |c| store::q_history(c, &r, limit))
                    .await?,
            );
        }
        messages.sort_by_key(|m: &InboxMessage| std::cmp::Reverse((m.received_at, m.id)));
        messages.truncate(limit as usize);
        // The newest that fit in one answer line.
        claudemesh_schema::ipc::page::fit(&mut messages);
        messages.reverse();
        return Ok(InboxResult { messages });
    }
    let after = match p.after {
        Some(id) => d
            .store
            .read(move |c| store::q_received_at(c, id))
            .await?
            .map(|at| (at, id)),
        None => None,
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(3_600_000));
    let wakers: Vec<_> = readers.iter().map(|(_, s, _)| d.bell(*s)).collect();
    let messages = loop {
        // Armed before looking: an arrival between the look and the wait still wakes us.
        let mut rings: Vec<_> = wakers.iter().map(|w| Box::pin(w.notified())).collect();
        for r in &mut rings {
            r.as_mut().enable();
        }
        let mut msgs = Vec::new();
        let now = now_ms();
        // The soonest a message handed to another path becomes free for this pull.
        let mut free_at: Option<i64> = None;
        for (_, _, r) in &readers {
            let r = r.clone();
            let mut page = d
                .store
                .read(move |c| store::q_unread(c, &r, after, limit))
                .await?;
            if hosted.is_some() {
                for u in &page {
                    if u.accepted_at.is_none()
                        && let Some(t) = u.shown_at
                    {
                        let at = t + PUSH_DEADLINE.as_millis() as i64 + 1;
                        free_at = Some(free_at.map_or(at, |f| f.min(at)));
                    }
                }
                page.retain(|u| ready(u, now, PUSH_DEADLINE));
            }
            msgs.extend(page);
        }
        msgs.sort_by_key(|u| (u.msg.received_at, u.msg.id));
        msgs.truncate(limit as usize);
        if !msgs.is_empty() || tokio::time::Instant::now() >= deadline {
            break msgs;
        }
        let wake_at = match free_at {
            Some(at) if at > now => {
                deadline.min(tokio::time::Instant::now() + Duration::from_millis((at - now) as u64))
            }
            _ => deadline,
        };
        tokio::select! {
            // With no mesh to read (none joined yet) nothing can ring: wait for the
            // deadline alone (`select_all` panics on an empty list, and the panicked
            // request left its caller waiting for ever).
            _ = async {
                if rings.is_empty() {
                    std::future::pending::<()>().await
                } else {
                    futures_util::future::select_all(rings).await;
                }
            } => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = d.shutdown.cancelled() => break msgs,
        }
    };
    let mut messages: Vec<InboxMessage> = messages.into_iter().map(|u| u.msg).collect();
    // What does not fit in one answer line stays unread, for the next call (oldest first,
    // so the next call resumes where this one stopped).
    claudemesh_schema::ipc::page::fit(&mut messages);
    if !p.peek && !messages.is_empty() {
        let now = now_ms();
        let mut read = Vec::new();
        let mut claimed = std::collections::HashSet::new();
        for (_, s, r) in &readers {
            let ids: Vec<MessageId> = messages
                .iter()
                .filter(|x| x.session == *s || (r.member_rows == Some(x.session) && x.for_member))
                .map(|x| x.id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            // A hosted session claims them first: a push racing this pull shows each once.
            let ids = if hosted.is_some() {
                let stale = now - PUSH_DEADLINE.as_millis() as i64;
                d.store
                    .claim_shown(*s, r.member_rows, ids, now, "pull", stale)
                    .await?
            } else {
                ids
            };
            if p.confirm {
                // Read once the asker says it has them (`mark_read`).
                claimed.extend(ids);
                continue;
            }
            // Returned to the asker, so in its context: read and surfaced.
            read.extend(
                d.store
                    .mark_read(*s, r.member_rows, ids, now, "pull", true, false)
                    .await?,
            );
        }
        if p.confirm {
            messages.retain(|x| claimed.contains(&x.id));
            return Ok(InboxResult { messages });
        }
        send_receipts(d, &read, true).await;
        let got: std::collections::HashSet<MessageId> = read.iter().map(|x| x.id).collect();
        messages.retain(|x| got.contains(&x.id));
        for msg in &mut messages {
            if msg.surfaced_at.is_none() {
                msg.surfaced_at = Some(now);
            }
        }
    }
    Ok(InboxResult { messages })
}

/// `mark_read`: mark some of a session's unread messages read, and tell their senders.
pub(crate) async fn mark_read(d: &Arc<Daemon>, p: m::MarkReadParams) -> Result<(), Error> {
    let Some((_, r)) = reader(d, p.session, true) else {
        return Err(Error::not_found(format!(
            "no session {} on this daemon",
            p.session
        )));
    };
    let read = d
        .store
        .mark_read(
            p.session,
            r.member_rows,
            p.ids,
            now_ms(),
            "pull",
            p.surfaced,
            false,
        )
        .await?;
    send_receipts(d, &read, true).await;
    Ok(())
}

/// Claude Code took these messages of `session` (into its queue or its conversation):
/// no other path shows them again. A queued push proves the session's channel works.
pub(crate) async fn accepted(
    d: &Arc<Daemon>,
    mesh: MeshId,
    session: SessionId,
    ids: Vec<MessageId>,
    via: DeliveryPath,
) {
    let Some(m) = d.mesh(&mesh) else { return };
    if let Err(e) = d
        .store
        .mark_accepted(session, Some(m.keys.session), ids, now_ms(), via.as_str())
        .await
    {
        tracing::warn!(session = %session.short(), error = %e, "cannot record an accepted message");
        return;
    }
    crate::sessions::path_seen(d, &m, session, via).await;
}

/// A model answered a context that held these messages of `session`: they are surfaced
/// and read, and their senders hear so.
pub(crate) async fn confirmed(
    d: &Arc<Daemon>,
    mesh: MeshId,
    session: SessionId,
    ids: Vec<MessageId>,
    via: DeliveryPath,
) {
    let Some(m) = d.mesh(&mesh) else { return };
    let read = match d
        .store
        .mark_read(
            session,
            Some(m.keys.session),
            ids,
            now_ms(),
            via.as_str(),
            true,
            true,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(session = %session.short(), error = %e, "cannot record a surfaced message");
            return;
        }
    };
    if !read.is_empty() {
        tracing::debug!(session = %session.short(), n = read.len(), via = via.as_str(), "messages reached the model");
        send_receipts(d, &read, true).await;
        crate::sessions::path_seen(d, &m, session, via).await;
    }
}

/// The session's status and channel, as this daemon knows them.
/// `(open, status, channel, has a transcript, a pull is waiting)`.
fn session_state(
    m: &MeshCtx,
    session: SessionId,
) -> Option<(bool, PeerStatus, Channel, bool, bool)> {
    if session == m.keys.session {
        return Some((true, PeerStatus::Idle, Channel::Untried, false, false));
    }
    lock(&m.sessions).get(&session).map(|l| {
        (
            l.open,
            l.profile.status,
            l.channel,
            l.transcript.is_some(),
            l.pulling > 0,
        )
    })
}

fn closed_note() -> Notification {
    Notification {
        jsonrpc: "2.0".into(),
        method: m::NOTIFY_SESSION_CLOSED.into(),
        params: Value::Null,
    }
}

/// A subscription to `session`'s messages, for as long as the connection lives: it holds
/// the session's lease, and with `push` sends each message the session may take now as a
/// `message` notification, once, gated by priority on the session's status. A push counts
/// only when Claude Code is seen taking it (the transcript's queue entry); one not taken
/// within [`PUSH_DEADLINE`] is left to hooks and pulls, and a session whose channel never
/// took one is not pushed to again.
pub(crate) async fn subscription(
    d: Arc<Daemon>,
    session: SessionId,
    push: bool,
    tx: mpsc::Sender<Notification>,
) {
    let Some(m) = d.meshes().into_iter().find(|x| x.is_local(&session)) else {
        let _ = tx.send(closed_note()).await;
        return;
    };
    let hosted = session != m.keys.session;
    let _hold = if hosted {
        match crate::sessions::hold(&d, session, push) {
            Some(h) => Some(h),
            None => {
                let _ = tx.send(closed_note()).await;
                return;
            }
        }
    } else {
        None
    };
    let bell = d.bell(session);
    let mut live = Live {
        bell: bell.clone(),
        on: false,
    };
    // Pushes not yet seen taken, with when they went out.
    let mut waiting: Vec<(MessageId, tokio::time::Instant)> = Vec::new();
    // Ids pushed lately: a message handed over and then found in the store (or resent by
    // the relay) is pushed once.
    let mut recent = claudemesh_schema::dedupe::Recent::default();
    // A full batch means more may wait: look again at once.
    let mut more;
    let mut look = true;
    loop {
        more = false;
        // Armed before looking: what arrives while we look still wakes us.
        let rung = bell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        let Some((open, status, channel, transcript, pulling)) = session_state(&m, session) else {
            let _ = tx.send(closed_note()).await;
            return;
        };
        if !open {
            // Closed or replaced: the client may reopen and subscribe again.
            let _ = tx.send(closed_note()).await;
            return;
        }
        // Claude Code's pushes are confirmed in its transcript. A client without one
        // (another MCP client that declared channel support) is pushed to as well, but
        // nothing can confirm what its model saw: those messages stay `delivered` until
        // it reads them.
        let can_push = push && channel != Channel::Dropped && !pulling;
        let member_rows = (hosted && designated(&m, session)).then_some(m.keys.session);
        // Handed over: claimed for this channel as they were stored.
        let mut lapsed = Vec::new();
        for msg in bell.take_fresh() {
            if !can_push {
                // Not pushable after all (the gate closed meanwhile): free for the others.
                lapsed.push(msg.id);
                continue;
            }
            if !recent.insert(msg.id) {
                continue;
            }
            let id = msg.id;
            let n = Notification {
                jsonrpc: "2.0".into(),
                method: m::NOTIFY_MESSAGE.into(),
                params: serde_json::to_value(&msg).unwrap_or(Value::Null),
            };
            if tx.send(n).await.is_err() {
                return;
            }
            if transcript {
                waiting.push((id, tokio::time::Instant::now()));
            }
        }
        if !lapsed.is_empty() {
            let _ = d.store.unclaim_push(session, lapsed).await;
            d.arrived(&m, &[session], member_rows.is_some());
        }
        look |= bell.take_dirty();
        if can_push && look {
            look = false;
            let who = Reader {
                sessions: vec![session],
                member_rows,
                mesh: Some(m.id),
            };
            let next_too = push_allowed(Priority::Next, status);
            let Ok(batch) = d
                .store
                .read(move |c| store::q_pushable(c, &who, next_too, PAGE))
                .await
            else {
                return;
            };
            more = batch.len() == PAGE as usize;
            let ids: Vec<MessageId> = batch.iter().map(|u| u.msg.id).collect();
            let Ok(claimed) = d
                .store
                .claim_shown(session, member_rows, ids, now_ms(), "channel", i64::MIN)
                .await
            else {
                return;
            };
            for u in batch.into_iter().filter(|u| claimed.contains(&u.msg.id)) {
                if !recent.insert(u.msg.id) {
                    continue;
                }
                let n = Notification {
                    jsonrpc: "2.0".into(),
                    method: m::NOTIFY_MESSAGE.into(),
                    params: serde_json::to_value(&u.msg).unwrap_or(Value::Null),
                };
                if tx.send(n).await.is_err() {
                    return;
                }
                if transcript {
                    waiting.push((u.msg.id, tokio::time::Instant::now()));
                }
            }
        }
        // Pushes past their deadline: taken, or dropped by Claude Code.
        let limit = if channel == Channel::Works {
            PUSH_DEADLINE_WORKING
        } else {
            PUSH_DEADLINE
        };
        let due: Vec<MessageId> = waiting
            .iter()
            .filter(|(_, t)| t.elapsed() >= limit)
            .map(|(id, _)| *id)
            .collect();
        if !due.is_empty() {
            waiting.retain(|(id, _)| !due.contains(id));
            let own = Some(m.keys.session);
            let taken = d
                .store
                .read(move |c| store::q_taken(c, session, own, &due))
                .await
                .unwrap_or_default();
            if taken.iter().any(|(_, t)| !*t) {
                let dropped = match lock(&m.sessions).get_mut(&session) {
                    Some(l) if l.channel == Channel::Untried => {
                        l.channel = Channel::Dropped;
                        true
                    }
                    _ => false,
                };
                if dropped {
                    tracing::warn!(
                        session = %session.short(),
                        "Claude Code did not take a channel push (channels are off for this session); hooks and check_messages carry its messages"
                    );
                }
            }
        }
        // Caught up with the store: what arrives next may be handed over directly.
        live.set(can_push && !more);
        if more {
            look = true;
            continue;
        }
        let next_due = waiting.iter().map(|(_, t)| *t + limit).min();
        tokio::select! {
            _ = &mut rung => {}
            _ = async {
                match next_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = d.shutdown.cancelled() => return,
        }
    }
}

/// Marks a push subscription caught up on its session's bell while it is; unmarks it when
/// the subscription ends.
struct Live {
    bell: Arc<crate::context::Bell>,
    on: bool,
}

impl Live {
    fn set(&mut self, on: bool) {
        self.bell.set_live(self.on, on);
        self.on = on;
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// `message_status`: how far a message we sent got (optionally waiting for a stage).
/// How far a sent message got, from its stored stages.
fn status(id: MessageId, to: String, st: &store::SentStages) -> m::MessageStatusResult {
    m::MessageStatusResult {
        id,
        stage: st.stage(),
        queued_at: st.created,
        relayed_at: st.relayed,
        delivered_at: st.delivered,
        surfaced_at: st.surfaced,
        read_at: st.read,
        to,
    }
}

/// `sent_list`: the messages sent last, newest first.
pub(crate) async fn sent_list(
    d: &Arc<Daemon>,
    p: m::SentListParams,
) -> Result<m::SentListResult, Error> {
    let limit = p.limit.unwrap_or(20).clamp(1, 1000);
    let rows = d
        .store
        .read(move |c| store::q_sent_recent(c, limit))
        .await?;
    let mut messages: Vec<_> = rows
        .into_iter()
        .map(|(id, to, st)| status(id, to, &st))
        .collect();
    // The newest that fit in one answer line (a status names its recipients, not the body).
    claudemesh_schema::ipc::page::fit(&mut messages);
    Ok(m::SentListResult { messages })
}

pub(crate) async fn message_status(
    d: &Arc<Daemon>,
    p: m::MessageStatusParams,
) -> Result<m::MessageStatusResult, Error> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(600_000));
    let mut changes = d.changes.subscribe();
    // Resolved once: a prefix unique now stays this message while waiting, whatever is
    // sent meanwhile.
    let mut query = p.id.clone();
    loop {
        changes.borrow_and_update();
        let q = query.clone();
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
        query = id.to_string();
        let r = status(id, to, &st);
        let done =
            p.wait_for.is_none_or(|w| r.stage >= w) || tokio::time::Instant::now() >= deadline;
        if done {
            return Ok(r);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = d.shutdown.cancelled() => {}
        }
    }
}
