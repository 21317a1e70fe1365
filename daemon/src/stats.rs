//! `mesh_stats`: usage per session (messages in and out, tool calls and errors, uptime).
//!
//! Each daemon counts for its own sessions only (`mesh::Usage`, in memory, from when a
//! session opened); the MCP shim reports its tool-call totals. Peers' counts are asked of
//! their daemons with a question boxed to each online member, answered with a boxed
//! [`StatsBody`]: end to end like messages, so the relay sees two small envelopes and
//! nothing of what they say. Counts are never put in presence, which every member's
//! daemon and the relay's timing would see on every tool call.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::methods::{
    MeshStatsParams, MeshStatsResult, PeerUsage, SessionStatsParams,
};
use claudemesh_schema::message::{self, MAX_STATS_SESSIONS, SessionUsage, StatsBody};
use claudemesh_schema::{MessageId, SessionId, now_ms};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;
use crate::delivery::send::boxed_to_member;
use crate::error::Error;
use crate::mesh::{LinkCmd, MeshCtx, lock};

/// How long `mesh_stats` waits for answers unless told.
const WAIT: Duration = Duration::from_secs(3);
/// A question older than this (or as far ahead of our clock) is not answered: a relay
/// replaying it, or one held for an offline member, gets nothing (its asker stopped
/// waiting long ago).
const ASK_MAX_AGE_MS: i64 = 60_000;
/// Answers per asking member per window: enough for someone looking a few times in a
/// row, too few for a member to spend our relay write budget by asking in a loop.
const ANSWERS_PER_WINDOW: u32 = 5;
const ANSWER_WINDOW_MS: i64 = 10_000;

/// `session_stats`: a hosted session's client reports its totals.
pub(crate) fn report(d: &Daemon, p: SessionStatsParams) -> Result<(), Error> {
    for x in d.meshes() {
        if let Some(l) = lock(&x.sessions).get_mut(&p.session) {
            // Totals only grow while a client lives (a new process starts the counts
            // again at its opening): an older report that arrives late changes nothing.
            let u = &mut l.usage;
            u.tool_calls = u.tool_calls.max(p.tool_calls);
            u.tool_errors = u.tool_errors.max(p.tool_errors.min(p.tool_calls));
            return Ok(());
        }
    }
    Err(Error::not_found(
        "no such session on this daemon; open it first (session_open)",
    ))
}

/// What this daemon says of its sessions: its own, and every open hosted one that is
/// visible (a hidden session is counted for nobody else).
fn ours(x: &MeshCtx, visible_only: bool) -> Vec<(SessionId, String, SessionUsage)> {
    let now = now_ms();
    let own = x.keys.session;
    let mut v = vec![(
        own,
        lock(&x.row).display_name.clone(),
        lock(&x.own_usage).report(own, now),
    )];
    let mut hosted: Vec<_> = lock(&x.sessions)
        .iter()
        .filter(|(_, l)| l.open && (l.profile.visible || !visible_only))
        .map(|(s, l)| (*s, l.profile.name.clone(), l.usage.report(*s, now)))
        .collect();
    hosted.sort_by_key(|h| h.1.to_lowercase());
    v.extend(hosted);
    v
}

/// A member's daemon asks for our counts: answer, boxed to that member, unless the
/// question is stale or the member may not message us.
pub(crate) async fn answer(x: &Arc<MeshCtx>, from: MemberKey, of: MessageId, sent_at: i64) {
    let now = now_ms();
    if now.saturating_sub(sent_at).unsigned_abs() > ASK_MAX_AGE_MS.unsigned_abs() {
        tracing::debug!(%of, "stale stats question ignored");
        return;
    }
    if !x.allows(&from, "dm") {
        tracing::debug!(%of, from = %from.short(), "stats question dropped by grants");
        return;
    }
    {
        let mut answered = lock(&x.stats_answered);
        answered.retain(|_, (since, _)| now - *since < ANSWER_WINDOW_MS);
        let (_, n) = answered.entry(from).or_insert((now, 0));
        if *n >= ANSWERS_PER_WINDOW {
            tracing::debug!(%of, from = %from.short(), "stats questions too often; not answered");
            return;
        }
        *n += 1;
    }
    let sessions: Vec<SessionUsage> = ours(x, true)
        .into_iter()
        .take(MAX_STATS_SESSIONS)
        .map(|(_, _, u)| u)
        .collect();
    let Ok(body) = serde_json::to_string(&StatsBody { of, sessions }) else {
        return;
    };
    let Some((id, frame)) = boxed_to_member(x, x.keys.session, &from, message::KIND_STATS, body)
    else {
        return;
    };
    // Not through the outbox: an answer nobody waits for any more is worth nothing.
    let _ = x
        .link
        .tx
        .send(LinkCmd::Send(id, bytes::Bytes::from(frame), None))
        .await;
}

/// An answer came: to the question waiting for it, if it is from the member asked.
pub(crate) fn answered(x: &MeshCtx, from: MemberKey, body: StatsBody) {
    let mut asks = lock(&x.stats_asks);
    if asks.get(&body.of).is_some_and(|(asked, _)| *asked == from)
        && let Some((_, tx)) = asks.remove(&body.of)
    {
        let _ = tx.send(body);
    }
}

/// `mesh_stats`: our sessions from our counters, every other listed session from its
/// daemon's answer (asked now, for each member with a session online).
pub(crate) async fn mesh_stats(
    d: &Arc<Daemon>,
    p: MeshStatsParams,
) -> Result<MeshStatsResult, Error> {
    let x = d.select(p.mesh.as_deref())?;
    let wait = p
        .wait_ms
        .map_or(WAIT, |ms| Duration::from_millis(ms.min(30_000)));
    let row = lock(&x.row).clone();
    let (id, me) = (x.id, row.member);
    let (presence, (shared, log_seq, log_pending)) = d
        .store
        .read(move |c| {
            Ok((
                crate::store::q_presence(c, id)?,
                crate::shared::query::q_counts(c, id)?,
            ))
        })
        .await?;
    let grace = d.cfg.peers.offline_grace_secs as i64 * 1000;
    let now = now_ms();
    // Listed as `peers` lists them: visible, not ended beyond the grace; ours apart.
    let others: Vec<_> = presence
        .iter()
        .filter(|p| !x.is_local(&p.session) && p.session != x.keys.session)
        .filter(|p| p.member == me || p.profile.visible)
        .filter(|p| !crate::delivery::send::stale(p, grace, now))
        .collect();
    let mut ask: Vec<MemberKey> = others
        .iter()
        .filter(|p| p.online && p.member != me)
        .map(|p| p.member)
        .collect();
    ask.sort();
    ask.dedup();
    let link_up = x.link.connected();
    let mut waiting = Vec::new();
    if link_up {
        for member in &ask {
            let Some((qid, frame)) = boxed_to_member(
                &x,
                x.keys.session,
                member,
                message::KIND_STATS_ASK,
                String::new(),
            ) else {
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            lock(&x.stats_asks).insert(qid, (*member, tx));
            let _ = x
                .link
                .tx
                .send(LinkCmd::Send(qid, bytes::Bytes::from(frame), None))
                .await;
            waiting.push((qid, *member, rx));
        }
    }
    // Questions are forgotten however this ends (a caller gone mid-wait drops it here).
    let _forget = Forget {
        x: x.clone(),
        ids: waiting.iter().map(|(q, _, _)| *q).collect(),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut answers: HashMap<MemberKey, Vec<SessionUsage>> = HashMap::new();
    for (_, member, rx) in waiting {
        if let Ok(Ok(b)) = tokio::time::timeout_at(deadline, rx).await {
            answers.insert(member, b.sessions);
        }
    }
    let fingerprint = me.fingerprint();
    let mut peers: Vec<PeerUsage> = ours(&x, false)
        .into_iter()
        .map(|(session, name, usage)| PeerUsage {
            name,
            member_name: row.display_name.clone(),
            session,
            fingerprint: fingerprint.clone(),
            me: true,
            online: true,
            answered: true,
            usage: Some(usage),
            note: String::new(),
        })
        .collect();
    let mut theirs: Vec<PeerUsage> = others
        .iter()
        .map(|p| {
            // Only counts for a session of the member that answered are taken.
            let usage = answers
                .get(&p.member)
                .and_then(|v| v.iter().find(|u| u.session == p.session))
                .cloned();
            let note = match (&usage, p.online) {
                (Some(_), _) => String::new(),
                (None, false) => "offline".into(),
                (None, true) if p.member == me => "another daemon of yours".into(),
                (None, true) if !link_up => "the relay link is down".into(),
                (None, true) if answers.contains_key(&p.member) => {
                    "its daemon did not list it".into()
                }
                (None, true) => format!("no answer within {} s", wait.as_secs_f32()),
            };
            PeerUsage {
                name: p.profile.name.clone(),
                member_name: p.names().0,
                session: p.session,
                fingerprint: p.member.fingerprint(),
                me: false,
                online: p.online,
                answered: usage.is_some(),
                usage,
                note,
            }
        })
        .collect();
    theirs.sort_by(|a, b| {
        b.online
            .cmp(&a.online)
            .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
    });
    peers.extend(theirs);
    Ok(MeshStatsResult {
        mesh: x.id,
        peers,
        shared,
        log_seq,
        log_pending,
    })
}

/// Removes questions from `stats_asks` when dropped.
struct Forget {
    x: Arc<MeshCtx>,
    ids: Vec<MessageId>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut asks = lock(&self.x.stats_asks);
        for id in &self.ids {
            asks.remove(id);
        }
    }
}
