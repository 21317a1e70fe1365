//! The messages half of a link: envelopes out of the outbox until the relay says
//! `relayed` (each send's waiter travels with it), refusals retried or recorded, envelopes
//! in to the inbox (acknowledged only after the commit), receipts.

use bytes::Bytes;
use claudemesh_relay::Connection;
use claudemesh_schema::MessageId;
use claudemesh_schema::wire::{Envelope, ErrorCode, ReceiptSeen};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::End;
use crate::context::Daemon;
use crate::delivery::push::Handover;
use crate::delivery::receive::{self, Opened};

/// Most envelopes a link keeps while they wait for their key epoch.
const LATER_CAP: usize = 4096;
use crate::mesh::{MeshCtx, RelayedWaiter, lock};

/// Most message ids in one `ack` frame.
pub(super) const ACK_BATCH: usize = 1024;

/// An envelope the relay has not confirmed yet.
struct InFlight {
    frame: Bytes,
    /// The `send` call waiting to hear `relayed`, if it still waits.
    waiter: Option<RelayedWaiter>,
}

/// Outgoing envelopes of one connection. Dropped with it: a waiter still waiting learns
/// the link dropped (its message stays queued in the outbox and goes out on reconnect).
pub(super) struct Outbound {
    in_flight: HashMap<MessageId, InFlight>,
    /// Envelopes the relay confirmed lately (a `send` hands its envelope over twice:
    /// before and after its outbox commit).
    done: claudemesh_schema::dedupe::Recent<MessageId>,
    /// Envelopes the relay asked us to send again later, by when.
    later: BTreeMap<(Instant, MessageId), ()>,
    /// Received envelopes committed to the inbox, to acknowledge.
    pub(super) acks: mpsc::UnboundedReceiver<MessageId>,
    ack_tx: mpsc::UnboundedSender<MessageId>,
    /// Receipts recorded (or refused for good), to tell the relay it need not keep them.
    pub(super) seen: mpsc::UnboundedReceiver<ReceiptSeen>,
    seen_tx: mpsc::UnboundedSender<ReceiptSeen>,
}

impl Outbound {
    /// Send everything queued in the outbox, oldest first.
    pub(super) async fn start(d: &Daemon, m: &MeshCtx, c: &mut Connection) -> Result<Self, End> {
        let mesh = m.id;
        let queued = d
            .store
            .read(move |conn| crate::store::q_outbox(conn, mesh))
            .await?;
        if lock(&m.received).is_empty() {
            // What came in before a restart: the relay may send it again. Anything sent
            // before now may have been seen (and deleted by retention since): only the
            // store can tell.
            let floor = claudemesh_schema::now_ms();
            let recent = d
                .store
                .read(move |conn| {
                    crate::store::q_recent_received(
                        conn,
                        mesh,
                        claudemesh_schema::dedupe::FirstSeen::<(
                            claudemesh_schema::SessionId,
                            MessageId,
                        )>::KEEP,
                    )
                })
                .await?;
            // A send time far ahead of this clock counts as a few minutes ahead (see
            // `deliver`).
            lock(&m.received).start(
                floor,
                recent
                    .into_iter()
                    .rev()
                    .map(|(k, t)| (k, t.min(floor + 600_000))),
            );
        }
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let mut out = Self {
            in_flight: HashMap::with_capacity(queued.len()),
            done: Default::default(),
            later: BTreeMap::new(),
            acks,
            ack_tx,
            seen,
            seen_tx,
        };
        for (id, frame) in queued {
            let frame = Bytes::from(frame);
            c.writer.feed(frame.clone()).await?;
            out.in_flight.insert(
                id,
                InFlight {
                    frame,
                    waiter: None,
                },
            );
        }
        c.writer.flush().await?;
        Ok(out)
    }

    /// Send an outbox entry (already durable) unless it is in flight already.
    pub(super) async fn send(
        &mut self,
        c: &mut Connection,
        id: MessageId,
        frame: Bytes,
        waiter: Option<RelayedWaiter>,
    ) -> Result<(), End> {
        if self.done.contains(&id) {
            if let Some(w) = waiter {
                let _ = w.send(Ok(()));
            }
            return Ok(());
        }
        match self.in_flight.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if waiter.is_some() {
                    o.get_mut().waiter = waiter;
                }
                Ok(())
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(InFlight {
                    frame: frame.clone(),
                    waiter,
                });
                Ok(c.writer.send(frame).await?)
            }
        }
    }

    /// When the next envelope the relay refused for now is due again.
    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.later.keys().next().map(|(at, _)| *at)
    }

    /// Send again what the relay asked to retry by now.
    pub(super) async fn retry_due(&mut self, c: &mut Connection) -> Result<(), End> {
        let now = Instant::now();
        while let Some(((at, id), ())) = self.later.first_key_value() {
            if *at > now {
                break;
            }
            let id = *id;
            self.later.pop_first();
            if let Some(f) = self.in_flight.get(&id) {
                c.writer.feed(f.frame.clone()).await?;
            }
        }
        Ok(c.writer.flush().await?)
    }

    /// The relay committed envelope `id`.
    pub(super) async fn relayed(&mut self, d: &Arc<Daemon>, id: MessageId, at: i64) {
        self.done.insert(id);
        if let Some(f) = self.in_flight.remove(&id)
            && let Some(w) = f.waiter
        {
            let _ = w.send(Ok(()));
        }
        let d2 = d.clone();
        let r = d
            .store
            .relayed_then(id, at, move |r| match r {
                Ok(()) => d2.bump_changes(),
                Err(e) => tracing::warn!(%id, error = %e, "cannot record relayed message"),
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%id, error = %e, "cannot record relayed message");
        }
    }

    /// The relay refused envelope `id`: for now (it goes out again after `retry_ms`) or
    /// for good (the sender is told, the outbox forgets it).
    pub(super) async fn refused(
        &mut self,
        d: &Daemon,
        id: MessageId,
        code: ErrorCode,
        message: String,
        retry_ms: Option<u64>,
    ) {
        let temporary = matches!(
            code,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::Internal
        );
        if temporary && self.in_flight.contains_key(&id) {
            let delay = Duration::from_millis(retry_ms.unwrap_or(1000).clamp(10, 60_000));
            tracing::debug!(%id, %code, "relay asked to retry later");
            self.later.insert((Instant::now() + delay, id), ());
            return;
        }
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        tracing::warn!(%id, %code, %message, "relay refused a message for good");
        if let Some(w) = f.waiter {
            let _ = w.send(Err(format!(
                "the relay refused the message ({code}): {message}"
            )));
        }
        let r = d
            .store
            .undeliverable_then(id, format!("{code}: {message}"), move |r| {
                if let Err(e) = r {
                    tracing::warn!(%id, error = %e, "cannot record an undeliverable message");
                }
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%id, error = %e, "cannot record an undeliverable message");
        }
    }

    /// A recipient daemon acknowledged envelope `id` we sent: recorded, then the relay
    /// hears it need not keep the receipt (a crash before the commit gets it again).
    pub(super) async fn delivered(
        &self,
        d: &Arc<Daemon>,
        id: MessageId,
        member: claudemesh_schema::crypto::MemberKey,
        at: i64,
    ) {
        let d2 = d.clone();
        let seen = self.seen_tx.clone();
        let r = d
            .store
            .delivered_then(id, member, at, move |r| {
                if r.is_ok() {
                    d2.bump_changes();
                    let _ = seen.send(ReceiptSeen { id, member });
                }
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%id, error = %e, "cannot record a delivery");
        }
    }

    /// An envelope for us: open it, store its rows and acknowledge it after the commit (a
    /// crash before then makes the relay send it again; the inbox dedupes by id).
    /// Deliver again what waited for a key epoch (see [`Opened::Later`]), now that one
    /// was applied or opened.
    pub(super) async fn deliver_later(&self, d: &Arc<Daemon>, m: &Arc<MeshCtx>) {
        let waiting = std::mem::take(&mut *lock(&m.later));
        for (env, at) in waiting {
            self.deliver(d, m, env, at).await;
        }
    }

    pub(super) async fn deliver(&self, d: &Arc<Daemon>, m: &Arc<MeshCtx>, env: Envelope, at: i64) {
        let id = env.id;
        // Our own `ping_mesh` probe back from the relay: it went the whole way; it is
        // acknowledged (the relay forgets it) and never stored.
        if env.from == m.keys.session
            && env.from_member == m.member()
            && let Some(done) = lock(&m.probes).remove(&id)
        {
            let _ = done.send(());
            let _ = self.ack_tx.send(id);
            return;
        }
        let (mesh, from) = (m.id, env.from);
        let known = lock(&m.senders).get(&from).cloned();
        let sender = match known {
            Some(s) => Some(s),
            None => {
                let row = d
                    .store
                    .read(move |c| crate::store::q_presence_of(c, mesh, from))
                    .await
                    .ok()
                    .flatten();
                row.map(|r| {
                    m.learn_sender(&r);
                    crate::mesh::Sender {
                        seq: r.seq,
                        member: r.member,
                        session_key: r.session_key,
                        names: r.names(),
                        name_holder: r.name_holder,
                        confirmed: r.confirmed,
                        renamed_from: r.renamed_from.clone(),
                    }
                })
            }
        };
        let ack = self.ack_tx.clone();
        match receive::open(m, &env, at, sender.as_ref()) {
            Opened::Rows(rows)
                if crate::delivery::inbox::replay_floor(d)
                    .is_some_and(|floor| rows.iter().any(|r| r.msg.sent_at < floor)) =>
            {
                tracing::warn!(%id, "message sent before the inbox retention could recognise it again (a replay, or a sender's clock far behind); dropped");
                let _ = ack.send(id);
            }
            Opened::Rows(mut rows) => {
                // Sessions taking pushes get a message seen for the first time as soon as
                // its rows are queued, before the store writes them; a resend only once
                // the store found it new. The relay hears `ack` only after the commit: a
                // crash before it makes the relay resend, and the session dedupes by id.
                let mut plan = Handover::plan(d, m, &mut rows);
                let (targets, person) = plan.take_wake();
                // A send time far ahead of this clock must not raise the window's floor
                // for long (it would turn off early pushes for the whole mesh).
                let sent_at = rows
                    .first()
                    .map_or(i64::MIN, |r| r.msg.sent_at)
                    .min(claudemesh_schema::now_ms() + 600_000);
                let first = lock(&m.received).first((env.from, id), sent_at);
                let (early, late) = if first {
                    (Some(plan), None)
                } else {
                    (None, Some(plan))
                };
                let (d2, m2, m3) = (d.clone(), m.clone(), m.clone());
                let inserted = move |new: &[(MessageId, claudemesh_schema::SessionId)]| {
                    m3.count_in(new);
                    if let Some(p) = late {
                        p.push(new);
                    }
                };
                let r = d
                    .store
                    .insert_inbox_then(rows, inserted, move |r| match r {
                        Ok(_) => {
                            d2.arrived(&m2, &targets, person);
                            let _ = ack.send(id);
                        }
                        Err(e) => {
                            if !crate::recovery::failed(&d2, "received messages", &e) {
                                tracing::error!(%id, error = %e, "cannot store a received message; it stays at the relay");
                            }
                        }
                    })
                    .await;
                match r {
                    Ok(()) => {
                        if let Some(p) = early {
                            p.push_all();
                        }
                    }
                    Err(e) => {
                        if !crate::recovery::failed(d, "received messages", &e) {
                            tracing::error!(%id, error = %e, "store unavailable; the message stays at the relay");
                        }
                    }
                }
            }
            Opened::Receipt(r) => {
                let d2 = d.clone();
                let res = d
                    .store
                    // Only a member the message was addressed to moves it on.
                    .sent_stage_then(r.of, env.from_member, r.stage == "read", r.at, move |res| {
                        if res.is_ok() {
                            d2.bump_changes();
                            let _ = ack.send(id);
                        }
                    })
                    .await;
                if let Err(e) = res {
                    tracing::warn!(%id, error = %e, "cannot record a receipt; it stays at the relay");
                }
            }
            Opened::StatsAsk { sent_at } => {
                let _ = ack.send(id);
                let (m2, from) = (m.clone(), env.from_member);
                d.spawn(async move { crate::stats::answer(&m2, from, id, sent_at).await });
            }
            Opened::File { kind, body } => {
                let _ = ack.send(id);
                let (d2, m2, from) = (d.clone(), m.clone(), env.from_member);
                d.spawn(
                    async move { crate::files::on_message(&d2, &m2, from, &kind, &body).await },
                );
            }
            Opened::Stats(b) => {
                let _ = ack.send(id);
                crate::stats::answered(m, env.from_member, b);
            }
            // Peer folders.
            Opened::PeerFileAsk { sent_at, ask } => {
                let _ = ack.send(id);
                let (d2, m2, from) = (d.clone(), m.clone(), env.from_member);
                d.spawn(async move {
                    crate::peer_files::answer(&d2, &m2, from, id, sent_at, ask).await
                });
            }
            Opened::PeerFile(b) => {
                let _ = ack.send(id);
                crate::peer_files::answered(m, env.from_member, b);
            }
            // Shared tools.
            Opened::ToolCall { sent_at, call } => {
                let _ = ack.send(id);
                let (d2, m2, from, session) = (d.clone(), m.clone(), env.from_member, env.from);
                d.spawn(async move {
                    crate::tools::serve(&d2, &m2, from, session, id, sent_at, call).await
                });
            }
            Opened::ToolResult(b) => {
                let _ = ack.send(id);
                crate::tools::answered(m, env.from_member, b);
            }
            Opened::DeployLogs { sent_at, ask } => {
                let _ = ack.send(id);
                let (d2, m2, from, session) = (d.clone(), m.clone(), env.from_member, env.from);
                d.spawn(async move {
                    crate::deploy::serve_logs(&d2, &m2, from, session, id, sent_at, ask).await
                });
            }
            // Not for us or not openable: acknowledge so the relay stops resending it.
            Opened::Nothing => {
                let _ = ack.send(id);
            }
            // Kept until the epoch is applied (the link delivers it again then); past the
            // cap, left to the relay, which sends it again on the next link.
            Opened::Later => {
                let mut later = lock(&m.later);
                if later.len() < LATER_CAP {
                    later.push((env, at));
                }
            }
        }
    }
}

impl Outbound {
    /// A receipt this daemon will never record (no proof): the relay may forget it.
    pub(super) fn ignore_receipt(
        &self,
        id: MessageId,
        member: claudemesh_schema::crypto::MemberKey,
    ) {
        let _ = self.seen_tx.send(ReceiptSeen { id, member });
    }
}

/// Take up to [`wire::MAX_RECEIPTS_SEEN`] receipts that are ready now, after `first`.
pub(super) fn seen_batch(
    first: ReceiptSeen,
    rx: &mut mpsc::UnboundedReceiver<ReceiptSeen>,
) -> Vec<ReceiptSeen> {
    let mut v = vec![first];
    while v.len() < claudemesh_schema::wire::MAX_RECEIPTS_SEEN {
        match rx.try_recv() {
            Ok(r) => v.push(r),
            Err(_) => break,
        }
    }
    v
}

/// Take up to [`ACK_BATCH`] ids that are ready now, after `first`.
pub(super) fn ack_batch(
    first: MessageId,
    rx: &mut mpsc::UnboundedReceiver<MessageId>,
) -> Vec<MessageId> {
    let mut ids = vec![first];
    while ids.len() < ACK_BATCH {
        match rx.try_recv() {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
    }
    ids
}
