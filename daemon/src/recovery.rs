//! Store faults (a full disk, an I/O error): said once when they start and once when they
//! end, retried with backoff, and what waited for them fetched again as soon as writes
//! work: the ops the links could not apply (a fresh sync) and the envelopes they could not
//! store (the relay still holds them and sends its mailbox again).
//!
//! Without this, each failed write asked for a new sync at once and each sync failed the
//! same way: hundreds of syncs and ERROR lines a second, and refused envelopes waited for
//! the next reconnect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::Daemon;
use crate::mesh::{LinkCmd, lock};

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// SQLite's words for a store that cannot take writes now (space, I/O, permissions), as
/// they reach us (commit failures arrive as text): a fault to wait out, not a logic error
/// (an op that does not apply, a constraint) to act on at once.
fn is_fault(error: &str) -> bool {
    [
        "database or disk is full",
        "disk I/O error",
        "attempt to write a readonly database",
        "unable to open database file",
    ]
    .iter()
    .any(|w| error.contains(w))
}

/// A store write failed: `what` could not be kept. A fault (see [`is_fault`]), or any
/// error while one lasts (ops after one that failed to apply find a gap): the first
/// failure says so (at most once a minute) and starts the probe; later ones are counted,
/// not logged; true. Any other error: false, for the caller to handle.
pub(crate) fn failed(d: &Daemon, what: &str, error: &dyn std::fmt::Display) -> bool {
    if !is_fault(&error.to_string()) && !lock(&d.store_health).failing {
        return false;
    }
    let minute = Duration::from_secs(60);
    let (first, say) = {
        let mut h = lock(&d.store_health);
        h.failures += 1;
        let first = !std::mem::replace(&mut h.failing, true);
        let say = first && h.said_at.is_none_or(|t| t.elapsed() > minute);
        if say {
            h.said_at = Some(Instant::now());
        }
        if first && h.ended_at.is_none_or(|t| t.elapsed() > minute) {
            h.wait = FIRST_RETRY;
        }
        (first, say)
    };
    if !first {
        tracing::debug!(what, %error, "store write failed again");
        return true;
    }
    if say {
        tracing::error!(
            what,
            %error,
            dir = %d.paths.dir.display(),
            "cannot write the local store (is the disk full?); nothing acknowledged is lost: \
             messages stay at the relay and shared-state ops are synced again once writes \
             work. Free space there; retrying with backoff"
        );
    } else {
        tracing::debug!(what, %error, "store writes fail again");
    }
    // Callers may be on the store's own thread: the probe task is woken, not spawned.
    d.store_fault.notify_one();
    true
}

/// The probe task (one per daemon): waits for a fault, then probes until it ends.
pub(crate) async fn run(d: Arc<Daemon>) {
    loop {
        tokio::select! {
            _ = d.store_fault.notified() => probe(&d).await,
            _ = d.shutdown.cancelled() => return,
        }
    }
}

/// Try a small real write with backoff until one succeeds; then say so once, sync every
/// mesh's op log again and ask each relay for its mailbox again.
async fn probe(d: &Arc<Daemon>) {
    let mut wait = lock(&d.store_health).wait.max(FIRST_RETRY);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.shutdown.cancelled() => return,
        }
        let now = claudemesh_schema::now_ms();
        let ok = d
            .store
            .write(move |tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES ('store_probe', ?1)",
                    [now.to_string()],
                )
            })
            .await
            .is_ok();
        if ok {
            break;
        }
        wait = (wait * 2).min(MAX_RETRY);
    }
    let failures = {
        let mut h = lock(&d.store_health);
        h.failing = false;
        h.wait = (wait * 2).min(MAX_RETRY);
        h.ended_at = Some(Instant::now());
        std::mem::take(&mut h.failures)
    };
    tracing::warn!(
        failures,
        "the local store takes writes again; fetching what waited"
    );
    for m in d.meshes() {
        m.resync.notify_one();
        let _ = m.link.tx.send(LinkCmd::Redeliver).await;
    }
    d.bump_changes();
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_space_io_and_permission_errors_are_faults_to_wait_out() {
        for (e, fault) in [
            ("database commit failed: database or disk is full", true),
            ("disk I/O error", true),
            ("attempt to write a readonly database", true),
            ("unable to open database file", true),
            ("op log gap: expected 5, got 7", false),
            ("UNIQUE constraint failed: inbox.id", false),
        ] {
            assert_eq!(super::is_fault(e), fault, "{e}");
        }
    }
}
