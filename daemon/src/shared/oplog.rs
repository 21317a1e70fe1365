//! The daemon's side of the shared-state op log (brief §4): write, publish, apply, audit.
//!
//! - **Write:** an op is sealed, committed to `op_outbox` together with its optimistic
//!   local effect (the durable point: it survives a crash and goes out on reconnect), then
//!   handed to the link. Reads never wait for the network.
//! - **Publish:** on every link-up the link asks for the log from the last applied
//!   sequence (`op_sync`) and resends the outbox in write order; the relay dedupes by id.
//! - **Apply:** sequenced ops are applied strictly in order (ops that arrive early wait in
//!   memory), each run in one transaction that also extends the hash chain, stores the op,
//!   folds it ([`crate::shared::fold`]), drops it from the outbox and records notices for
//!   local authors who lost a race.
//! - **Audit:** re-derive the chain from the stored ops and compare every op the relay
//!   still holds with the one applied here.

use bytes::Bytes;
use claudemesh_relay::Connection;
use claudemesh_schema::ipc::methods::InboxMessage;
use claudemesh_schema::ipc::shared::{AuditResult, WriteResult};
use claudemesh_schema::message::Priority;
use claudemesh_schema::op::{self, Op, OpBody, Reorder, SequencedOp};
use claudemesh_schema::roster::{RosterHistory, op_standing};
use claudemesh_schema::wire::{self, ClientFrame, ErrorCode, MAX_CIPHERTEXT};
use claudemesh_schema::{MeshId, MessageId, OpId, SessionId, now_ms};
use rusqlite::{OptionalExtension as _, Transaction, params};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{LinkCmd, MeshCtx, OpPage, RelayRefusal, Withheld, lock};
use crate::shared::fold::{self, Applying, Notice};
use crate::shared::{query, snapshot};
use claudemesh_schema::crypto::MemberKey;

#[cfg(test)]
mod convergence;

/// Ops buffered ahead of a gap before the link gives up and asks for a fresh sync.
const MAX_AHEAD: usize = 200_000;
/// Ops opened per blocking task while catching up.
const OPEN_CHUNK: usize = 512;

/// The op log's state on one live link.
#[derive(Debug, Default)]
pub(crate) struct LinkOps {
    order: Reorder,
    /// Sent, not yet acknowledged by the relay.
    in_flight: HashMap<OpId, Bytes>,
    /// A snapshot the relay offered could not be used: asking again would get the same
    /// one, so the link stops asking (and says so) instead of looping.
    stalled: bool,
    /// A snapshot being received: seq, author, parts, bytes so far.
    download: Option<(u64, MemberKey, u32, Vec<u8>, u32)>,
    /// Audit reads waiting for their page.
    pub(crate) reads: HashMap<u64, oneshot::Sender<Result<OpPage, RelayRefusal>>>,
    /// The highest sequence this relay has shown on this link (in ops or as a head). A
    /// page's head was read before the page was sent, so live ops sequenced since can
    /// overtake it: only what the relay never showed means its log is behind ours.
    shown: u64,
    /// The relay was found behind this daemon, and said so once.
    behind: bool,
}

/// Append `op` by `session` (a local session of `m`) to the mesh's log. Durable when this
/// returns; waits up to `wait_ms` (default: 2 s with a live link, 0 without) for it to be
/// sequenced and applied.
pub(crate) async fn write(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    session: Option<SessionId>,
    op: Op,
    wait_ms: Option<u64>,
) -> Result<WriteResult, Error> {
    let session = session.unwrap_or(m.keys.session);
    let name = m
        .session_name(&session)
        .ok_or_else(|| Error::not_found(format!("session {session} is not hosted here")))?;
    let body = OpBody {
        id: OpId::new(),
        session,
        name,
        at: now_ms(),
        // Where this write stands in the roster: the entries this daemon has applied.
        roster: Some(lock(&m.roster).len()),
        op,
    };
    let id = body.id;
    let (epoch, key) = m.seal_key();
    let env = op::seal_op_at(epoch, &key, &m.id, &m.keys.member, &body).map_err(Error::internal)?;
    if env.ct.len() > MAX_CIPHERTEXT {
        return Err(Error::invalid(format!(
            "this write is {} bytes sealed; the limit is {MAX_CIPHERTEXT}: store less per key",
            env.ct.len()
        )));
    }
    let frame = wire::encode(&ClientFrame::Op(env)).map_err(Error::internal)?;
    let body_json = serde_json::to_string(&body).map_err(Error::internal)?;
    let (tx, rx) = oneshot::channel();
    lock(&m.op_waiters).entry(id).or_default().push(tx);
    let (mesh, author, frame2) = (m.id, m.member(), frame.clone());
    let stored = d
        .store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO op_outbox (id, mesh, frame, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_bytes(), mesh.as_bytes(), frame2, body_json, body.at],
            )?;
            if let Op::ScheduleReminder { reminder, .. } = &body.op {
                tx.execute(
                    "INSERT OR IGNORE INTO own_reminders (mesh, id) VALUES (?1, ?2)",
                    params![mesh.as_bytes(), reminder.as_bytes()],
                )?;
            }
            fold::apply_pending(tx, &mesh, &author, &body)
        })
        .await;
    if let Err(e) = stored {
        lock(&m.op_waiters).remove(&id);
        return Err(Error::internal(e));
    }
    d.bump_changes();
    let _ = m.link.tx.send(LinkCmd::Op(id, Bytes::from(frame))).await;
    let wait = wait_ms.unwrap_or(if m.link.connected() { 2_000 } else { 0 });
    let seq = if wait == 0 {
        None
    } else {
        tokio::time::timeout(Duration::from_millis(wait.min(600_000)), rx)
            .await
            .ok()
            .and_then(|r| r.ok())
    };
    if seq.is_none() {
        lock(&m.op_waiters).remove(&id);
    }
    Ok(WriteResult {
        mesh: m.id,
        op: id,
        id: None,
        seq,
    })
}

/// On link-up, after `ready`: ask for the log from the last applied op on, and resend
/// the outbox in write order.
pub(crate) async fn start(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    c: &mut Connection,
) -> Result<LinkOps, String> {
    // Applies queued by the previous connection must be visible before reading the head.
    d.store.flush().await.map_err(|e| e.to_string())?;
    let mesh = m.id;
    let (head, outbox) = d
        .store
        .read(move |c| {
            let head = query::q_head(c, mesh)?.map(|h| h.0).unwrap_or(0);
            let mut stmt =
                c.prepare_cached("SELECT id, frame FROM op_outbox WHERE mesh = ?1 ORDER BY n")?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, f) = row?;
                if let Some(id) = OpId::from_slice(&id) {
                    out.push((id, f));
                }
            }
            Ok((head, out))
        })
        .await
        .map_err(|e| format!("cannot read the op log: {e}"))?;
    load_epochs(d, m)
        .await
        .map_err(|e| format!("cannot read the key epochs: {e}"))?;
    m.op_caught_up.store(false, Ordering::Release);
    // Uploads of a previous connection are lost with it.
    m.snapshots_pending.store(0, Ordering::Release);
    let mut lo = LinkOps {
        order: Reorder::new(head + 1),
        ..Default::default()
    };
    let sync = wire::encode(&ClientFrame::OpSync {
        from: lo.order.next,
    })
    .map_err(|e| e.to_string())?;
    c.writer
        .feed(Bytes::from(sync))
        .await
        .map_err(|e| e.to_string())?;
    for (id, f) in outbox {
        let b = Bytes::from(f);
        c.writer.feed(b.clone()).await.map_err(|e| e.to_string())?;
        lo.in_flight.insert(id, b);
    }
    c.writer.flush().await.map_err(|e| e.to_string())?;
    Ok(lo)
}

impl LinkOps {
    /// An op to send now; `None` if it is already in flight.
    pub(crate) fn send(&mut self, id: OpId, frame: Bytes) -> Option<Bytes> {
        match self.in_flight.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(frame.clone());
                Some(frame)
            }
        }
    }

    /// The relay sequenced an own op (it is applied when it comes back in `ops`).
    pub(crate) fn acked(&mut self, d: &Arc<Daemon>, id: OpId, seq: u64) {
        self.in_flight.remove(&id);
        // Sequenced before what this daemon has applied (a snapshot covered it while the
        // ack was lost): its effect is in the fold already; drop it from the outbox.
        if seq < self.order.next {
            let store = d.store.clone();
            let d2 = d.clone();
            d.spawn(async move {
                let r = store
                    .write(move |tx| {
                        tx.execute(
                            "DELETE FROM op_outbox WHERE id = ?1",
                            params![id.as_bytes()],
                        )
                    })
                    .await;
                if r.is_ok() {
                    d2.bump_changes();
                }
            });
        }
    }

    /// The relay refused an own op. Temporary refusals (rate limit, relay trouble) return
    /// true: the link must reconnect and resend the whole outbox in order, since resending
    /// this one op alone would let later writes overtake it in the log.
    pub(crate) fn refused(
        &mut self,
        d: &Arc<Daemon>,
        m: &Arc<MeshCtx>,
        id: OpId,
        code: ErrorCode,
        message: &str,
    ) -> bool {
        if self.in_flight.remove(&id).is_none() {
            return false;
        }
        // A full op log at the relay (quota_exceeded) frees when a snapshot compacts it:
        // the op stays in the outbox like one refused for rate.
        if matches!(
            code,
            ErrorCode::RateLimited | ErrorCode::Internal | ErrorCode::QuotaExceeded
        ) {
            tracing::debug!(op = %id.short(), %code, "relay asked to retry; resending the outbox in order");
            return true;
        }
        tracing::warn!(op = %id.short(), %code, message, "relay refused a shared-state write for good; dropping it");
        lock(&m.op_waiters).remove(&id);
        // If it was a key rotation, the next trigger may write another.
        lock(&m.epochs).rotating = false;
        let (d2, mesh) = (d.clone(), m.id);
        d.spawn(async move {
            let r = d2
                .store
                .write(move |tx| {
                    let body: Option<String> = tx
                        .query_row(
                            "DELETE FROM op_outbox WHERE id = ?1 RETURNING body",
                            params![id.as_bytes()],
                            |r| r.get(0),
                        )
                        .ok();
                    if let Some(b) = body.and_then(|b| serde_json::from_str::<OpBody>(&b).ok()) {
                        fold::undo_pending(tx, &mesh, &b)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot drop a refused op");
            }
            d2.bump_changes();
        });
        false
    }

    /// Sequenced ops arrived (live, or a sync page). Applies every op that is next in
    /// line; returns a frame to send when the log has a gap only a fresh sync can fill.
    /// An op placed after roster entries this daemon was not given is an error: the relay
    /// withholds them.
    pub(crate) async fn received(
        &mut self,
        d: &Arc<Daemon>,
        m: &Arc<MeshCtx>,
        ops: Vec<SequencedOp>,
        head: Option<u64>,
    ) -> Result<Option<ClientFrame>, Withheld> {
        let newest = ops.iter().map(|o| o.seq).max().unwrap_or(0);
        self.shown = self.shown.max(newest).max(head.unwrap_or(0));
        let run = self.order.push(ops);
        if !run.is_empty() {
            submit(d, m, run).await?;
        }
        let next = self.order.next;
        if let Some(h) = head {
            if op::relay_behind(self.shown, next) {
                if !self.behind {
                    tracing::error!(mesh = %m.id.short(), relay_head = h, applied = next - 1, "the relay's log is behind this daemon's (restored from an old backup, or another relay?); new ops will not apply until that is fixed");
                }
                self.behind = true;
            } else {
                self.behind = false;
            }
        }
        let gap =
            !self.stalled && (head.is_some_and(|h| next <= h) || self.order.waiting() > MAX_AHEAD);
        if head.is_some() && !gap {
            // Caught up once everything queued so far commits (applies commit in order).
            let (d2, m2) = (d.clone(), m.clone());
            let _ = d
                .store
                .write_then(
                    |_| Ok(()),
                    move |r| {
                        if r.is_ok() {
                            m2.op_caught_up.store(true, Ordering::Release);
                            d2.bump_changes();
                            // A removal seen while offline may still call for a new key.
                            m2.rekey.notify_one();
                        }
                    },
                )
                .await;
        }
        if gap {
            tracing::warn!(mesh = %m.id.short(), next, "op log has a gap; syncing again");
            self.order = Reorder::new(next);
            return Ok(Some(ClientFrame::OpSync { from: next }));
        }
        Ok(None)
    }

    /// A part of the relay's newest snapshot (sent when this daemon is behind the oldest op
    /// the relay still has). After the last part: check it, load it in place of the ops it
    /// covers, and go on from there.
    pub(crate) async fn snapshot_part(
        &mut self,
        d: &Arc<Daemon>,
        m: &Arc<MeshCtx>,
        (seq, author, part, parts, data): (u64, MemberKey, u32, u32, Vec<u8>),
    ) {
        if part == 0 {
            self.download = Some((seq, author, parts, Vec::new(), 0));
        }
        let Some((s, a, n, buf, next)) = self.download.as_mut() else {
            return;
        };
        if *s != seq
            || *a != author
            || *n != parts
            || *next != part
            || buf.len() + data.len() > op::MAX_SNAPSHOT
        {
            tracing::warn!(mesh = %m.id.short(), seq, "snapshot parts out of order; ignored");
            self.download = None;
            return;
        }
        buf.extend_from_slice(&data);
        *next += 1;
        if *next < parts {
            return;
        }
        let Some((seq, author, _, ct, _)) = self.download.take() else {
            return;
        };
        if seq < self.order.next {
            return; // Already past it.
        }
        if !m.is_member(&author) {
            tracing::error!(mesh = %m.id.short(), seq, "the relay's snapshot is from a non-member; not syncing further until a member uploads a newer one");
            self.stalled = true;
            return;
        }
        let (ring, mesh) = (m.keys_newest_first(), m.id);
        // Snapshot frames do not name an epoch: it is sealed with the newest its author
        // held, so try the keys held, newest first.
        let opened = tokio::task::spawn_blocking(move || {
            let mut last = None;
            for key in &ring {
                match op::open_snapshot(key, &mesh, seq, &author, &ct) {
                    Ok(b) => return Ok(b),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or(claudemesh_schema::message::OpenError::Mismatch))
        })
        .await;
        let body = match opened {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(mesh = %m.id.short(), seq, error = %e, "the relay's snapshot does not open; not syncing further until a member uploads a newer one");
                self.stalled = true;
                return;
            }
            Err(_) => return,
        };
        let loaded = d
            .store
            .write(move |tx| {
                snapshot::load(tx, mesh, &body).map_err(|e| match e {
                    snapshot::LoadError::Sql(e) => e,
                    other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
                })?;
                follow_relay(tx, mesh)
            })
            .await;
        match loaded {
            Ok(moved) => {
                tracing::info!(mesh = %m.id.short(), seq, "started from a snapshot");
                relay_moved(m, moved);
                if let Err(e) = load_epochs(d, m).await {
                    tracing::error!(mesh = %m.id.short(), error = %e, "cannot read the snapshot's key epochs");
                }
                self.order.skip_to(seq.saturating_add(1));
                let run = self.order.push(Vec::new());
                if !run.is_empty()
                    && let Err(w) = submit(d, m, run).await
                {
                    tracing::error!(mesh = %m.id.short(), error = %w, "relay withholds roster entries");
                }
                d.bump_changes();
            }
            Err(e) => {
                tracing::error!(mesh = %m.id.short(), seq, error = %e, "cannot load the relay's snapshot; not syncing further until a member uploads a newer one");
                self.stalled = true;
            }
        }
    }

    /// Forget what the relay was sent or asked; the next link starts from the store.
    pub(crate) fn fail_reads(&mut self) {
        for (_, r) in self.reads.drain() {
            let _ = r.send(Err(RelayRefusal {
                code: None,
                message: "the relay link dropped".into(),
            }));
        }
    }

    /// The applied head moved backwards (a failed apply): restart from the store.
    pub(crate) fn reset(&mut self, next: u64) {
        self.order = Reorder::new(next);
    }
}

type Opened = (SequencedOp, Result<OpBody, String>);

/// Decrypt and verify a run of ops off the async threads (in parallel chunks: signature
/// checks dominate a catch-up), then queue their application in order. Refused (nothing
/// applied) if one of them claims more roster entries than this daemon holds.
async fn submit(d: &Arc<Daemon>, m: &Arc<MeshCtx>, run: Vec<SequencedOp>) -> Result<(), Withheld> {
    let mesh = m.id;
    // An op names the epoch it is sealed under; a run may carry the `key_epoch` op that
    // makes one and then ops sealed under it, so its keys (boxed to this member) are tried
    // for the ops after it in the run. Whether the epoch stands is the fold's decision; a
    // key that opens an op's AEAD is that epoch's real key either way.
    let ring = m.keyring();
    // Keys opened from earlier runs' `key_epoch` ops (their fold may not have committed).
    let mut run_keys: Vec<(
        claudemesh_schema::epoch::Epoch,
        claudemesh_schema::crypto::MeshKey,
    )> = lock(&m.epochs).candidates.clone();
    let me = m.keys.member.public();
    let open_one = move |ring: &claudemesh_schema::epoch::Keyring,
                         extra: &[(
        claudemesh_schema::epoch::Epoch,
        claudemesh_schema::crypto::MeshKey,
    )],
                         o: SequencedOp|
          -> Opened {
        let e = o.op.epoch;
        let keys = ring
            .get(e)
            .into_iter()
            .chain(extra.iter().filter(|(x, _)| *x == e).map(|(_, k)| k));
        let mut b = Err(format!(
            "sealed under key epoch {e}, which this member does not hold"
        ));
        for key in keys {
            b = op::open_op(key, &mesh, &o.op).map_err(|e| e.to_string());
            if b.is_ok() {
                break;
            }
        }
        (o, b)
    };
    let learn = |run_keys: &mut Vec<_>, (o, b): &Opened| {
        if let Ok(OpBody {
            op: Op::KeyEpoch { epoch, boxes, .. },
            ..
        }) = b
            && let Some(bx) = boxes.iter().find(|x| x.member == me)
            && let Ok(k) = claudemesh_schema::epoch::open_epoch_box(
                &mesh,
                *epoch,
                bx,
                &o.op.author,
                &m.keys.member,
            )
        {
            run_keys.push((*epoch, k));
        }
    };
    let sequential = run.len() <= 8
        || run.iter().any(|o| {
            ring.get(o.op.epoch).is_none() && !run_keys.iter().any(|(e, _)| *e == o.op.epoch)
        });
    let opened: Vec<Opened> = if sequential {
        // Sequentially, so a key made in the run opens the ops after it.
        let mut out = Vec::with_capacity(run.len());
        let known = run_keys.len();
        for o in run {
            let x = open_one(&ring, &run_keys, o);
            learn(&mut run_keys, &x);
            out.push(x);
        }
        if run_keys.len() > known {
            let mut e = lock(&m.epochs);
            for k in run_keys.drain(known..) {
                if !e
                    .candidates
                    .iter()
                    .any(|(x, c)| x == &k.0 && c.as_bytes() == k.1.as_bytes())
                {
                    e.candidates.push(k);
                }
            }
            drop(e);
            // Messages that waited for this key open now.
            m.rekey.notify_one();
        }
        out
    } else {
        let key = Arc::new((ring, run_keys));
        let mut tasks = Vec::new();
        let mut it = run.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<SequencedOp> = it.by_ref().take(OPEN_CHUNK).collect();
            let key = key.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|o| open_one(&key.0, &key.1, o))
                    .collect::<Vec<_>>()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            match t.await {
                Ok(v) => out.extend(v),
                Err(e) => {
                    tracing::error!(error = %e, "op opening task failed");
                    return Ok(());
                }
            }
        }
        out
    };
    // The relay sends roster entries before the ops that stand after them: a signed claim
    // beyond the entries held means it withholds some.
    let known = lock(&m.roster).len();
    if let Some((o, claimed)) = opened
        .iter()
        .filter_map(|(o, b)| Some((o, b.as_ref().ok()?.roster?)))
        .find(|(_, claimed)| *claimed > known)
    {
        return Err(Withheld {
            seq: o.seq,
            author: o.op.author.short(),
            claimed,
            known,
        });
    }
    let local: HashMap<SessionId, String> = {
        let mut l: HashMap<SessionId, String> = lock(&m.sessions)
            .iter()
            .map(|(s, x)| (*s, x.profile.name.clone()))
            .collect();
        l.insert(m.keys.session, lock(&m.row).display_name.clone());
        l
    };
    let (d2, m2) = (d.clone(), m.clone());
    let mesh_name = m.name();
    let daemon_session = m.keys.session;
    let member = m.member();
    let capture = Some((d.cfg.state.snapshot_every, member));
    // The roster as held now: the relay sends entries before the ops that stand after them.
    let roster = lock(&m.roster).history.clone();
    let rt = tokio::runtime::Handle::current();
    let m3 = m.clone();
    let r = d
        .store
        .write_then(
            move |tx| {
                let mut a =
                    apply_run(tx, mesh, opened, capture, &roster, |tx, author, notices| {
                        // Only for ops this daemon's member wrote: the session an op names is
                        // the author's claim, and another member's op must not reach ours.
                        if *author != member {
                            return Ok(());
                        }
                        record_notices(
                            tx,
                            mesh,
                            &mesh_name,
                            daemon_session,
                            &member,
                            &local,
                            notices,
                        )
                    })?;
                // Learned before the commit is visible, so whoever sees the log applied
                // (`wait synced`, a write's waiter) seals with the new key. A rollback
                // leaves a real key in memory, which only opens what it sealed.
                for (epoch, author, roster_len, boxes) in &a.epochs {
                    m3.learn_epoch(*epoch, author, *roster_len, boxes);
                }
                a.learned = !a.epochs.is_empty();
                if a.kinds.contains("set_relay") {
                    a.relay = follow_relay(tx, mesh)?;
                }
                Ok(a)
            },
            move |r| after_apply(&d2, &m2, &rt, r),
        )
        .await;
    if let Err(e) = r {
        // Synced again once the store takes writes (`recovery`), not at once: at once
        // would fail the same way, as fast as the relay answers.
        if !crate::recovery::failed(d, "shared-state ops", &e) {
            tracing::error!(error = %e, "cannot apply ops; syncing again");
            m.resync.notify_one();
        }
    }
    Ok(())
}

/// Learn every epoch folded for `m` from the store (at link start, after a snapshot).
pub(crate) async fn load_epochs(d: &Daemon, m: &MeshCtx) -> Result<(), Error> {
    let mesh = m.id;
    let rows = d
        .store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT epoch, author, roster_len, boxes FROM key_epochs WHERE mesh = ?1 ORDER BY epoch",
            )?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
        .map_err(Error::internal)?;
    for (e, author, roster_len, boxes) in rows {
        let (Ok(e), Ok(author)) = (
            claudemesh_schema::epoch::Epoch::try_from(e),
            <[u8; 32]>::try_from(author),
        ) else {
            tracing::warn!(mesh = %m.id.short(), "a stored key epoch is damaged; skipped");
            continue;
        };
        let boxes: Vec<claudemesh_schema::epoch::EpochBox> =
            serde_json::from_str(&boxes).unwrap_or_default();
        m.learn_epoch(e, &MemberKey(author), roster_len.max(0) as u64, &boxes);
    }
    Ok(())
}

/// What a run of applied ops changed.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) ops: Vec<(OpId, u64)>,
    pub(crate) kinds: HashSet<&'static str>,
    /// Shared keys set or deleted, in order, with their author.
    pub(crate) state: Vec<(
        String,
        serde_json::Value,
        String,
        SessionId,
        u64,
        i64,
        MemberKey,
    )>,
    /// A snapshot this daemon is to upload.
    pub(crate) snapshot: Option<op::SnapshotBody>,
    /// Key epochs the fold accepted: (epoch, author, roster length, boxes).
    pub(crate) epochs: Vec<(
        claudemesh_schema::epoch::Epoch,
        MemberKey,
        u64,
        Vec<claudemesh_schema::epoch::EpochBox>,
    )>,
    /// Those epochs were learned (the keys boxed to this member opened into its ring).
    pub(crate) learned: bool,
    /// The mesh's relay moved to this address and certificate (a `set_relay` record
    /// folded; the `meshes` row follows in the same transaction).
    pub(crate) relay: Option<(String, [u8; 32])>,
}

/// Make the `meshes` row of `mesh` name the relay its folded `set_relay` record names, in
/// the transaction that folded it (so a crash never leaves the two apart). Returns the
/// new address and fingerprint if the row changed.
pub(crate) fn follow_relay(
    tx: &Transaction<'_>,
    mesh: MeshId,
) -> rusqlite::Result<Option<(String, [u8; 32])>> {
    let rec: Option<(String, Vec<u8>)> = tx
        .query_row(
            "SELECT relay, fingerprint FROM mesh_relay WHERE mesh = ?1",
            params![mesh.as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((relay, fp)) = rec else {
        return Ok(None);
    };
    let Ok(fp) = <[u8; 32]>::try_from(fp.as_slice()) else {
        return Ok(None);
    };
    let n = tx.execute(
        "UPDATE meshes SET relay = ?2, relay_fp = ?3
         WHERE id = ?1 AND (relay != ?2 OR relay_fp != ?3)",
        params![mesh.as_bytes(), relay, &fp[..]],
    )?;
    Ok((n > 0).then_some((relay, fp)))
}

/// After a commit that moved the mesh's relay: the in-memory row follows and the link
/// dials the new address.
fn relay_moved(m: &MeshCtx, moved: Option<(String, [u8; 32])>) {
    let Some((relay, fp)) = moved else {
        return;
    };
    {
        let mut row = lock(&m.row);
        tracing::info!(mesh = %m.id.short(), from = %row.relay, to = %relay, "the mesh's relay moved (signed by an admin)");
        row.relay = relay;
        row.relay_fp = fp;
    }
    m.redial.notify_one();
}

/// Apply a run of consecutive sequenced ops on top of the stored head.
///
/// An op is folded only if its author is a member at the op's standing in the roster
/// (`roster::op_standing`: the highest roster place claimed by the log up to it), with the
/// role it had there; other ops are kept in the log and the chain but change nothing. The
/// standing depends on the log alone, so every daemon skips the same ops. An op standing
/// beyond the roster entries held here rolls the run back: it is applied once they came.
pub(crate) fn apply_run(
    tx: &Transaction<'_>,
    mesh: MeshId,
    ops: Vec<Opened>,
    capture: Option<(u64, MemberKey)>,
    roster: &RosterHistory,
    mut notices_to: impl FnMut(&Transaction<'_>, &MemberKey, Vec<Notice>) -> rusqlite::Result<()>,
) -> rusqlite::Result<Applied> {
    let (mut seq, mut hash, mut floor) = tx
        .query_row(
            "SELECT seq, hash, roster_floor FROM op_heads WHERE mesh = ?1",
            params![mesh.as_bytes()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<i64>>(2)?.map(|f| f.max(0) as u64),
                ))
            },
        )
        .map(|(s, h, f)| (s, h.try_into().unwrap_or([0u8; 32]), f))
        .unwrap_or((0, op::chain_origin(&mesh), None));
    let mut applied = Applied::default();
    for (o, body) in ops {
        if o.seq <= seq {
            continue;
        }
        if o.seq != seq + 1 {
            // Roll the run back; the link syncs again from the stored head.
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!("op log gap: expected seq {}, got {}", seq + 1, o.seq).into(),
            ));
        }
        hash = op::chain_next(&hash, &o);
        let (kind, body_json, error) = match &body {
            Ok(b) => (b.op.kind(), serde_json::to_string(b).ok(), None),
            Err(e) => ("invalid", None, Some(e.clone())),
        };
        tx.prepare_cached(
            "INSERT OR REPLACE INTO op_log (mesh, seq, id, author, at, ct, hash, kind, body, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            mesh.as_bytes(),
            o.seq as i64,
            o.op.id.as_bytes(),
            o.op.author.0,
            o.at,
            o.op.ct,
            hash,
            kind,
            body_json,
            error
        ])?;
        // Where the op stands in the roster, and its author's role there.
        let role = match &body {
            Ok(b) => {
                let (standing, next_floor) = op_standing(floor, b.roster, roster.len())
                    .map_err(|needs| {
                        rusqlite::Error::ToSqlConversionFailure(
                            format!(
                                "op {} stands after roster entry {needs}, but only {} are known here; applied once they arrive",
                                o.seq,
                                roster.len()
                            )
                            .into(),
                        )
                    })?;
                floor = next_floor;
                let role = roster.role_of(&o.op.author, standing);
                if role.is_none() {
                    tracing::warn!(mesh = %mesh.short(), seq = o.seq, author = %o.op.author.short(), ?standing, "op by a non-member at its place in the roster; skipped");
                }
                role
            }
            Err(_) => None,
        };
        match (&body, role) {
            (Ok(_), None) => {}
            (Ok(b), Some(role)) => {
                let notices = fold::apply(
                    tx,
                    &Applying {
                        mesh,
                        seq: o.seq,
                        at: o.at,
                        author: &o.op.author,
                        role,
                        body: b,
                    },
                )?;
                if !notices.is_empty() {
                    notices_to(tx, &o.op.author, notices)?;
                }
                if let Op::SetState { key, value } = &b.op {
                    applied.state.push((
                        key.clone(),
                        value.clone(),
                        fold::shown_name(&b.name),
                        b.session,
                        o.seq,
                        o.at,
                        o.op.author,
                    ));
                }
                if let Op::KeyEpoch {
                    epoch,
                    roster_len,
                    boxes,
                    ..
                } = &b.op
                {
                    let folded: Option<i64> = tx
                        .query_row(
                            "SELECT seq FROM key_epochs WHERE mesh = ?1 AND epoch = ?2",
                            params![mesh.as_bytes(), epoch],
                            |r| r.get(0),
                        )
                        .ok();
                    if folded == Some(o.seq as i64) {
                        applied
                            .epochs
                            .push((*epoch, o.op.author, *roster_len, boxes.clone()));
                    }
                }
                applied.kinds.insert(b.op.kind());
            }
            (Err(e), _) => {
                tracing::warn!(mesh = %mesh.short(), seq = o.seq, error = %e, "op does not open; skipped (run `claudemesh audit verify`)");
            }
        }
        tx.prepare_cached("DELETE FROM op_outbox WHERE id = ?1")?
            .execute(params![o.op.id.as_bytes()])?;
        seq = o.seq;
        applied.ops.push((o.op.id, o.seq));
        // The author of every `every`-th op captures a snapshot right after it.
        if let Some((every, me)) = &capture
            && *every > 0
            && seq % every == 0
            && o.op.author == *me
        {
            applied.snapshot = Some(snapshot::capture(tx, mesh, seq, hash, floor)?);
        }
    }
    tx.prepare_cached(
        "INSERT INTO op_heads (mesh, seq, hash, roster_floor) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (mesh) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
           roster_floor = excluded.roster_floor",
    )?
    .execute(params![
        mesh.as_bytes(),
        seq as i64,
        hash,
        floor.map(|f| f as i64)
    ])?;
    Ok(applied)
}

/// Put notices for local sessions into their inboxes, from this daemon.
fn record_notices(
    tx: &Transaction<'_>,
    mesh: MeshId,
    mesh_name: &str,
    daemon_session: SessionId,
    member: &MemberKey,
    local: &HashMap<SessionId, String>,
    notices: Vec<Notice>,
) -> rusqlite::Result<()> {
    let now = now_ms();
    for n in notices {
        let Some(name) = local.get(&n.session) else {
            continue;
        };
        let msg = InboxMessage {
            id: MessageId::new(),
            session: n.session,
            mesh,
            mesh_name: mesh_name.to_string(),
            from_id: daemon_session,
            from_member: member.to_b64(),
            from_name: "claudemesh".into(),
            to: name.clone(),
            priority: Priority::Next,
            sent_at: now,
            received_at: now,
            body: n.text,
            verified: true,
            surfaced_at: None,
            for_member: false,
            from_label: String::new(),
            kind: n.kind.into(),
        };
        crate::store::insert_inbox_rows(tx, vec![crate::store::InboxRow::new(msg)])?;
    }
    Ok(())
}

fn after_apply(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    rt: &tokio::runtime::Handle,
    r: crate::store::Result<Applied>,
) {
    match r {
        Ok(mut a) => {
            relay_moved(m, a.relay.take());
            if a.learned {
                // A rotation may have lost a race to one made before a later removal.
                m.rekey.notify_one();
            }
            if let Some(body) = a.snapshot.take() {
                m.snapshots_pending.fetch_add(1, Ordering::AcqRel);
                d.tasks.spawn_on(upload_snapshot(m.clone(), body), rt);
            }
            {
                let mut w = lock(&m.op_waiters);
                for (id, seq) in &a.ops {
                    if let Some(ws) = w.remove(id) {
                        for tx in ws {
                            let _ = tx.send(*seq);
                        }
                    }
                }
            }
            if !a.ops.is_empty() {
                // Notices of lost races may have arrived for our sessions.
                d.arrived(m, &[], true);
                d.bump_changes();
            }
            if ["register_mcp", "remove_mcp", "undeploy_mcp"]
                .iter()
                .any(|k| a.kinds.contains(*k))
            {
                let _ = d.tools_events.send(m.id);
            }
            if !a.state.is_empty() && d.state_events.receiver_count() > 0 {
                let mesh_name = m.name();
                for (key, value, by, by_id, seq, at, author) in a.state {
                    if !m.allows(&author, "state-write") {
                        continue;
                    }
                    let _ = d
                        .state_events
                        .send(claudemesh_schema::ipc::shared::StateChange {
                            mesh: m.id,
                            mesh_name: mesh_name.clone(),
                            key,
                            value,
                            by,
                            by_id,
                            seq,
                            at,
                        });
                }
            }
        }
        Err(e) => {
            if !crate::recovery::failed(d, "shared-state ops", &e) {
                tracing::error!(mesh = %m.id.short(), error = %e, "cannot apply ops; syncing again");
                m.resync.notify_one();
            }
        }
    }
}

/// Seal a captured snapshot and hand its parts to the link.
async fn upload_snapshot(m: Arc<MeshCtx>, body: op::SnapshotBody) {
    let seq = body.seq;
    let m2 = m.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        op::seal_snapshot(&m2.seal_key().1, &m2.keys.member, &body)
    })
    .await;
    let ct = match sealed {
        Ok(Ok(ct)) if ct.len() <= op::MAX_SNAPSHOT => ct,
        Ok(Ok(ct)) => {
            tracing::warn!(mesh = %m.id.short(), seq, bytes = ct.len(), "snapshot too large to upload; the relay keeps the full log");
            m.snapshots_pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        _ => {
            tracing::error!(mesh = %m.id.short(), seq, "cannot seal snapshot");
            m.snapshots_pending.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    };
    let chunks: Vec<&[u8]> = ct.chunks(op::SNAPSHOT_PART).collect();
    let parts = chunks.len() as u32;
    let mut frames = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.into_iter().enumerate() {
        match wire::encode(&ClientFrame::SnapshotPart {
            seq,
            part: i as u32,
            parts,
            data: c.to_vec(),
        }) {
            Ok(f) => frames.push(Bytes::from(f)),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode snapshot part");
                m.snapshots_pending.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        }
    }
    tracing::debug!(mesh = %m.id.short(), seq, parts, "uploading snapshot");
    if m.link.tx.send(LinkCmd::Snapshot(frames)).await.is_err() {
        m.snapshots_pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Check the op log: re-derive the hash chain over the ops stored here, then compare every
/// op the relay holds with the one applied here (and check that ops not applied yet open).
pub(crate) async fn audit(d: &Arc<Daemon>, m: &Arc<MeshCtx>) -> Result<AuditResult, Error> {
    d.store.flush().await?;
    let mesh = m.id;
    /// An applied op: as sequenced, its stored chain hash, and why it did not open.
    type LocalOp = (SequencedOp, Vec<u8>, Option<String>);
    let local: Vec<LocalOp> = d
        .store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, at, id, author, ct, hash, error FROM op_log WHERE mesh = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![mesh.as_bytes()], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at, id, author, ct, hash, error) = row?;
                let (Some(id), Ok(author)) = (
                    OpId::from_slice(&id),
                    <[u8; 32]>::try_from(author.as_slice()),
                ) else {
                    return Err(crate::store::StoreError::Corrupt("op log row"));
                };
                let o = SequencedOp {
                    seq,
                    at,
                    op: op::OpEnvelope {
                        epoch: 0,
                        id,
                        author: MemberKey(author),
                        ct,
                        roster: None,
                    },
                };
                out.push((o, hash, error));
            }
            Ok(out)
        })
        .await
        ?;
    let mut result = AuditResult {
        mesh,
        checked: 0,
        local_head: local.last().map(|x| x.0.seq).unwrap_or(0),
        relay_head: None,
        relay_first: None,
        first_broken: None,
        problem: None,
    };
    let broken = |r: &mut AuditResult, seq: u64, why: String| {
        if r.first_broken.is_none_or(|s| seq < s) {
            r.first_broken = Some(seq);
            r.problem = Some(why);
        }
    };
    // 1. The chain as stored here.
    // From the start of the log, or from the snapshot this daemon started from.
    let base = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT base_seq, base_hash FROM op_heads WHERE mesh = ?1",
                params![mesh.as_bytes()],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<Vec<u8>>>(1)?)),
            )
            .ok())
        })
        .await?;
    let (base_seq, base_hash) = match base {
        Some((s, Some(h))) if s > 0 => (s, <[u8; 32]>::try_from(h.as_slice()).ok()),
        _ => (0, None),
    };
    let mut hash = base_hash.unwrap_or_else(|| op::chain_origin(&mesh));
    let mut by_seq: HashMap<u64, [u8; 32]> = HashMap::with_capacity(local.len());
    for (expect, (o, stored, error)) in (base_seq + 1..).zip(local.iter()) {
        let seq = &o.seq;
        if *seq != expect {
            broken(
                &mut result,
                expect,
                format!("op {expect} is missing from the local log"),
            );
            break;
        }
        hash = op::chain_next(&hash, o);
        if hash[..] != stored[..] {
            broken(
                &mut result,
                *seq,
                format!("local op log was altered at seq {seq}"),
            );
            break;
        }
        if let Some(e) = error {
            broken(
                &mut result,
                *seq,
                format!("op at seq {seq} does not open ({e}): altered at the relay, or forged"),
            );
            break;
        }
        by_seq.insert(*seq, op::chain_next(&[0u8; 32], o));
        result.checked += 1;
    }
    // 2. The relay's copy.
    let mut from = 1u64;
    loop {
        let (tx, rx) = oneshot::channel();
        if m.link
            .tx
            .send(LinkCmd::ReadOps(from, 2048, tx))
            .await
            .is_err()
        {
            break;
        }
        let Ok(Ok(Ok(page))) = tokio::time::timeout(Duration::from_secs(30), rx).await else {
            if result.problem.is_none() {
                result.problem =
                    Some("the relay could not be asked; only the local log was checked".into());
            }
            return Ok(result);
        };
        result.relay_head = Some(page.head);
        result.relay_first = Some(page.first);
        if page.first > from {
            // Older ops were dropped after a snapshot: check what is still there.
            from = page.first;
            continue;
        }
        let Some(last) = page.ops.last().map(|o| o.seq) else {
            break;
        };
        for o in &page.ops {
            let same = match by_seq.get(&o.seq) {
                Some(h) => *h == op::chain_next(&[0u8; 32], o),
                None if o.seq <= result.local_head => true,
                None => m
                    .key_of(o.op.epoch)
                    .is_some_and(|k| op::open_op(&k, &mesh, &o.op).is_ok()),
            };
            if !same {
                let why = if o.seq <= result.local_head {
                    format!(
                        "the relay's op at seq {} differs from the one applied here: altered at the relay",
                        o.seq
                    )
                } else {
                    format!(
                        "the relay's op at seq {} does not open: altered or forged",
                        o.seq
                    )
                };
                broken(&mut result, o.seq, why);
                return Ok(result);
            }
        }
        if last >= page.head {
            break;
        }
        from = last + 1;
    }
    let local_head = result.local_head;
    if let Some(h) = result.relay_head
        && h < local_head
    {
        broken(
            &mut result,
            h + 1,
            format!("the relay's log ends at seq {h} but ops up to {local_head} were applied here"),
        );
    }
    Ok(result)
}
