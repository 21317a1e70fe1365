//! Mesh-key rotation (`schema::epoch`): after a member leaves or is removed, an admin's
//! daemon writes a `key_epoch` op with a fresh key boxed to every member that stays; the
//! fold accepts the next epoch by an admin, and every daemon opens its own box from the
//! folded row (`key_epochs`, ciphertext only) when it loads the mesh or applies the op.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::epoch;
use claudemesh_schema::op::Op;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{MeshCtx, lock};

/// Whether a removal stands after the newest epoch was made (so the member removed there
/// still holds the key new things are sealed with), and this daemon is to rotate: it is
/// an admin, has applied the whole log and has no rotation of its own in flight.
fn due(m: &MeshCtx) -> bool {
    if !m.op_caught_up.load(Ordering::Acquire) || !m.role().is_admin() {
        return false;
    }
    let last_removal = lock(&m.roster).last_removal;
    let e = lock(&m.epochs);
    !e.rotating && last_removal.is_some_and(|r| r >= e.newest_roster_len)
}

/// A rotation this daemon is to write (or has written and not yet seen folded).
pub(crate) fn owed(m: &MeshCtx) -> bool {
    due(m) || lock(&m.epochs).rotating
}

/// Rotate the mesh key if a removal calls for it (see [`due`]). Concurrent admins may
/// both write one: the first in log order stands, the other is skipped by the fold.
pub(crate) async fn maybe_rotate(d: &Arc<Daemon>, m: &Arc<MeshCtx>) -> Result<bool, Error> {
    if !due(m) {
        return Ok(false);
    }
    let (members, roster_len, roster_hash) = {
        let r = lock(&m.roster);
        let head = r.roster.head();
        let members: Vec<MemberKey> = r.roster.members().map(|(k, _)| *k).collect();
        (members, head.len, head.hash)
    };
    let next = {
        let mut e = lock(&m.epochs);
        if e.rotating {
            return Ok(false);
        }
        e.rotating = true;
        e.newest + 1
    };
    let made = epoch::make_epoch(&m.id, next, &m.keys.member, &members);
    let (_key, boxes) = match made {
        Ok(x) => x,
        Err(err) => {
            lock(&m.epochs).rotating = false;
            return Err(Error::internal(format!(
                "cannot seal the new key epoch: {err}"
            )));
        }
    };
    tracing::info!(mesh = %m.id.short(), epoch = next, members = members.len(), roster_len, "rotating the mesh key after a removal");
    let r = super::oplog::write(
        d,
        m,
        None,
        Op::KeyEpoch {
            epoch: next,
            roster_len,
            roster_hash,
            boxes,
        },
        Some(0),
    )
    .await;
    if let Err(err) = r {
        lock(&m.epochs).rotating = false;
        return Err(err);
    }
    Ok(true)
}

/// [`maybe_rotate`] as a task: failures are logged (the next removal, applied epoch or
/// link start tries again).
pub(crate) async fn maybe_rotate_owned(d: Arc<Daemon>, m: Arc<MeshCtx>) {
    if let Err(e) = maybe_rotate(&d, &m).await {
        tracing::warn!(mesh = %m.id.short(), error = %e, "key rotation failed");
    }
}
