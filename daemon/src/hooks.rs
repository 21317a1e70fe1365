//! Claude Code hooks: every hook (`claudemesh hook <event>`) makes one `hook` call, and
//! this module answers it. It opens (or finds) the session the hook speaks for, records
//! its status and transcript, takes note of a channel message that starts a turn, and
//! picks what the model should see now:
//!
//! | event | shows |
//! |---|---|
//! | `SessionStart`, `UserPromptSubmit` | `now` and `next` (a turn starts: the session takes them) |
//! | `PostToolUse` | `now` only (mid-turn) |
//! | `Stop` | `now` only, as the reason to keep going; not for a session whose channel delivers |
//! | `SessionEnd` | nothing; the session goes offline (not for `/clear`) |
//!
//! `next` waits for the next turn: the channel starts one when the session turns idle, or
//! the next prompt's hook shows it. (Holding the turn for `next` too would show it sooner
//! without channels, but Claude Code replays a Stop hook's reason twice when a session is
//! resumed, so it is kept for what is urgent.)
//!
//! Messages already in Claude Code's hands (a push it queued, context a hook gave) are
//! never shown again; a push it did not take within the deadline falls back to here. What
//! a hook shows is *shown*, not read: the transcript confirms it once a model answered.

use claudemesh_schema::ipc::claude::{HookEvent, HookParams, HookResult};
use claudemesh_schema::ipc::methods::{SessionOpenParams, SessionUpdateParams, StatusSource};
use claudemesh_schema::message::{PeerStatus, Priority};
use claudemesh_schema::{MessageId, now_ms, render};
use std::sync::Arc;

use crate::context::Daemon;
use crate::delivery::inbox::{deadline_for, ready, unread_where};
use crate::delivery::send::send_receipts;
use crate::error::Error;
use crate::mesh::{Channel, lock};
use crate::store::Reader;
use claudemesh_schema::message::DeliveryPath;

/// Most messages one hook shows.
const MAX_SHOWN: usize = 20;
/// Most unread messages a hook looks at to choose from.
const MAX_SCAN: usize = 500;
/// Most bytes of message bodies one hook puts into context.
const HOOK_BUDGET: usize = 16 * 1024;

/// Of `msgs` (oldest first), the newest that fit `count` and `budget` bytes of body, in
/// their order, and how many are left out.
fn fit_budget(
    msgs: Vec<crate::store::Unread>,
    count: usize,
    budget: usize,
) -> (Vec<crate::store::Unread>, usize) {
    let total = msgs.len();
    let mut used = 0usize;
    let mut keep = Vec::new();
    for u in msgs.into_iter().rev() {
        if keep.len() >= count || used + u.msg.body.len() > budget {
            continue;
        }
        used += u.msg.body.len();
        keep.push(u);
    }
    keep.reverse();
    let left = total - keep.len();
    (keep, left)
}

/// `hook`.
pub(crate) async fn hook(d: &Arc<Daemon>, p: HookParams) -> Result<HookResult, Error> {
    let claude = p
        .claude_session
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let key = match (claude, p.process.as_deref()) {
        (Some(c), _) => format!("claude:{c}"),
        (None, Some(pr)) => format!("process:{pr}"),
        (None, None) => return Ok(HookResult::default()),
    };
    if p.event == HookEvent::SessionEnd {
        // `/clear` ends a conversation, not the session: the process (the peer) goes on.
        if p.reason.as_deref() != Some("clear") {
            crate::sessions::end(d, &key, p.process.as_deref()).await?;
        }
        return Ok(HookResult::default());
    }
    let opened = crate::sessions::open(
        d,
        SessionOpenParams {
            client_key: key,
            mesh: p.mesh.clone().filter(|s| !s.is_empty()),
            name: p.name.clone().filter(|s| !s.is_empty()),
            kind: Some("claude".into()),
            groups: p.groups.clone(),
            summary: None,
            cwd: p.cwd.clone(),
            delivery: Vec::new(),
            role: p.role.clone().filter(|s| !s.is_empty()),
            client: Some("claude-code".into()),
            claude_session: claude.map(str::to_string),
            process: p.process.clone(),
            transcript: p.transcript.clone(),
        },
    )
    .await?;
    let status = match p.event {
        HookEvent::UserPromptSubmit | HookEvent::PostToolUse => PeerStatus::Working,
        HookEvent::SessionStart | HookEvent::Stop | HookEvent::SessionEnd => PeerStatus::Idle,
    };
    let mut shown = Vec::new();
    // Messages ready to show that did not fit this hook's budget.
    let mut more = 0usize;
    // `launch --message-mode inbox|off`: the session reads its messages only when it asks.
    let held = matches!(p.message_mode.as_deref(), Some("inbox" | "off"));
    // In inbox mode, how many wait (said at the start of a turn, never their text).
    let mut waiting = 0usize;
    let mut first = None;
    for s in &opened.sessions {
        first.get_or_insert(s.session);
        let Some(m) = d.mesh(&s.mesh) else { continue };
        crate::sessions::path_seen(d, &m, s.session, DeliveryPath::Hooks).await;
        crate::sessions::update(
            d,
            SessionUpdateParams {
                session: s.session,
                name: None,
                summary: None,
                status: Some(status),
                source: StatusSource::Hook,
                delivery: Vec::new(),
                visible: None,
                join_groups: Vec::new(),
                leave_groups: Vec::new(),
                group_role: None,
                avatar: None,
                title: None,
                bio: None,
                capabilities: None,
            },
        )
        .await?;
        let (transcript, pushing) = lock(&m.sessions)
            .get(&s.session)
            .map(|l| {
                (
                    l.transcript.is_some(),
                    l.pushes && l.channel != Channel::Dropped,
                )
            })
            .unwrap_or_default();
        // A session whose channel delivers pushes gets its messages that way once the turn
        // ends (a push then starts the next turn); the Stop hook holds the turn only for
        // sessions without one.
        if p.event == HookEvent::Stop && pushing {
            continue;
        }
        let designated = m.designated() == Some(s.session);
        let member_rows = designated.then_some(m.keys.session);
        // A channel message starting this turn is in the prompt: Claude Code has it.
        if p.event == HookEvent::UserPromptSubmit
            && let Some(id) = p.prompt.as_deref().and_then(render::channel_tag_id)
        {
            crate::delivery::inbox::accepted(d, m.id, s.session, vec![id], DeliveryPath::Channel)
                .await;
            if !transcript {
                crate::delivery::inbox::confirmed(
                    d,
                    m.id,
                    s.session,
                    vec![id],
                    DeliveryPath::Channel,
                )
                .await;
            }
        }
        let who = Reader {
            sessions: vec![s.session],
            member_rows,
            mesh: Some(m.id),
        };
        let now = now_ms();
        let event = p.event;
        let deadline = deadline_for(&m, s.session);
        let take = unread_where(d, &who, MAX_SCAN, |u| {
            ready(u, now, deadline)
                && match event {
                    HookEvent::PostToolUse | HookEvent::Stop => u.msg.priority == Priority::Now,
                    HookEvent::SessionStart | HookEvent::UserPromptSubmit => {
                        u.msg.priority != Priority::Low
                    }
                    HookEvent::SessionEnd => false,
                }
        })
        .await?;
        if held {
            waiting += take.len();
            continue;
        }
        if take.is_empty() {
            continue;
        }
        // One hook adds a bounded amount of context: the newest messages that fit, the
        // rest left unread for the next hook or `check_messages` (and said so).
        let used: usize = shown
            .iter()
            .map(|m: &claudemesh_schema::ipc::methods::InboxMessage| m.body.len())
            .sum();
        let (take, left) = fit_budget(
            take,
            MAX_SHOWN.saturating_sub(shown.len()),
            HOOK_BUDGET.saturating_sub(used),
        );
        more += left;
        if take.is_empty() {
            continue;
        }
        // Claim them: a push racing this hook for one message leaves it to one of them.
        let ids: Vec<MessageId> = take.iter().map(|u| u.msg.id).collect();
        let stale = now - deadline.as_millis() as i64;
        let ids = d
            .store
            .claim_shown(s.session, member_rows, ids, now, "hooks", stale)
            .await?;
        let take: Vec<_> = take
            .into_iter()
            .filter(|u| ids.contains(&u.msg.id))
            .collect();
        if take.is_empty() {
            continue;
        }
        if !transcript {
            // No transcript to confirm it by: the hook's answer is the best evidence.
            let read = d
                .store
                .mark_read(s.session, member_rows, ids, now, "hooks", true, false)
                .await?;
            send_receipts(d, &read, true).await;
        }
        shown.extend(take.into_iter().map(|u| u.msg));
    }
    if held {
        let tell = p.message_mode.as_deref() == Some("inbox")
            && waiting > 0
            && matches!(
                p.event,
                HookEvent::SessionStart | HookEvent::UserPromptSubmit
            );
        return Ok(HookResult {
            session: first,
            context: tell.then(|| {
                format!(
                    "claudemesh: {waiting} message{} waiting; call check_messages to read {}.",
                    if waiting == 1 { "" } else { "s" },
                    if waiting == 1 { "it" } else { "them" }
                )
            }),
            block: None,
        });
    }
    if shown.is_empty() && more == 0 {
        return Ok(HookResult {
            session: first,
            ..HookResult::default()
        });
    }
    let text = render::hook_block_with_more(&shown, more);
    Ok(match p.event {
        HookEvent::Stop => HookResult {
            session: first,
            context: None,
            block: Some(text),
        },
        _ => HookResult {
            session: first,
            context: Some(text),
            block: None,
        },
    })
}
