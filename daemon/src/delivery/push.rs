//! Pushing to sessions as messages arrive: the priority gate, and the hand-over of a
//! message to a caught-up push subscription as it is stored (no store round trip between
//! a message's arrival and its push): from the storing transaction, or (a message from
//! another daemon seen for the first time) right after its rows are queued.

use claudemesh_schema::ipc::methods::InboxMessage;
use claudemesh_schema::message::{PeerStatus, Priority};
use claudemesh_schema::{MessageId, SessionId};
use std::sync::Arc;

use crate::context::{Bell, Daemon};
use crate::mesh::{Channel, MeshCtx, lock};
use crate::store;

/// May a message of `priority` be pushed to (or shown by a hook in) a session that is
/// `status`? Idle sessions take `now` and `next`; busy ones only `now`; `low` waits to be
/// pulled.
pub(crate) fn push_allowed(priority: Priority, status: PeerStatus) -> bool {
    match (priority, status) {
        (Priority::Low, _) => false,
        (Priority::Now, _) => true,
        (Priority::Next, PeerStatus::Idle) => true,
        (Priority::Next, _) => false,
    }
}

/// Messages about to be stored, split into those a caught-up push subscription takes at
/// once and those its listeners look up after the commit.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    pushes: Vec<(Arc<Bell>, InboxMessage)>,
    wake: Vec<SessionId>,
    person: bool,
}

impl Handover {
    /// Plan the delivery of `rows`: a message a hosted session's push subscription may
    /// take now (caught up, channel not dropped, no pull waiting, the priority gate open;
    /// the person's messages go to their most recently active session) is marked in its
    /// row as pushed to it, so no hook or pull claims it while it is pushed.
    pub(crate) fn plan(d: &Daemon, m: &MeshCtx, rows: &mut [store::InboxRow]) -> Self {
        let mut h = Self::default();
        let designated = m.designated();
        for r in rows.iter_mut() {
            let target = if r.msg.for_member {
                designated
            } else if r.msg.session != m.keys.session {
                Some(r.msg.session)
            } else {
                None
            };
            let bell = target.and_then(|t| d.bell_if_any(t)).filter(|b| b.live());
            let takes = match (target, &bell) {
                (Some(t), Some(_)) => lock(&m.sessions).get(&t).is_some_and(|l| {
                    l.open
                        && l.pushes
                        && l.channel != Channel::Dropped
                        && l.pulling == 0
                        && push_allowed(r.msg.priority, l.profile.status)
                }),
                _ => false,
            };
            match (takes, target, bell) {
                (true, Some(t), Some(b)) => {
                    r.pushed_to = Some(t);
                    h.pushes.push((b, r.msg.clone()));
                }
                _ => {
                    h.person |= r.msg.for_member;
                    if !h.wake.contains(&r.msg.session) {
                        h.wake.push(r.msg.session);
                    }
                }
            }
        }
        h
    }

    /// The sessions to wake once the rows committed (those not handed over), and whether
    /// the person's other sessions are concerned.
    pub(crate) fn take_wake(&mut self) -> (Vec<SessionId>, bool) {
        (std::mem::take(&mut self.wake), self.person)
    }

    /// Push everything the plan handed over, ahead of the store: for a message that came
    /// in for the first time (no duplicate to filter). What the push leads to is queued
    /// after the rows, which the caller queued first.
    pub(crate) fn push_all(self) {
        for (b, msg) in self.pushes {
            b.hand(msg);
        }
    }

    /// Push what the plan handed over, of the rows that were `new` (a message stored
    /// already, resent by the relay, was dealt with the first time). Called in the
    /// storing transaction, before its commit: what the push leads to (Claude Code taking
    /// it) is stored after the rows. Should the commit fail, the relay sends the message
    /// again and the session dedupes it by id.
    pub(crate) fn push(self, new: &[(MessageId, SessionId)]) {
        for (b, msg) in self.pushes {
            if new.contains(&(msg.id, msg.session)) {
                b.hand(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_gate_follows_priority_and_status() {
        use PeerStatus::*;
        use Priority::*;
        for (p, s, want) in [
            (Now, Idle, true),
            (Now, Working, true),
            (Now, Dnd, true),
            (Next, Idle, true),
            (Next, Working, false),
            (Next, Dnd, false),
            (Low, Idle, false),
            (Low, Working, false),
        ] {
            assert_eq!(push_allowed(p, s), want, "{p:?} to a {s:?} session");
        }
    }
}
