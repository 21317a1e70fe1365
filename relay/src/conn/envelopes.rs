//! Envelopes: send (resolve, quota, forward live, store, `relayed`), ack (receipts),
//! and the mailbox replay on link-up or after lagging.

use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{self, Envelope, ErrorCode, MAX_CIPHERTEXT, RelayFrame, Route};
use claudemesh_schema::{MeshId, MessageId, SessionId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Conn, State};
use crate::hub::{Hub, LinkHandle, MeshEntry, MeshState, deliver_frame, frame, lock};
use crate::store::{NewEnvelope, Put, Store};

/// Why a send was refused for the mesh's quota.
const MESH_FULL: &str = "the mesh's undelivered-message quota at the relay is full";

/// Bytes a `deliver` frame adds around the envelope JSON (`{"t":"deliver","at":…,"env":…}`,
/// with a 20-digit time).
const DELIVER_OVERHEAD: usize = 64;
/// Most sessions one send may name.
const MAX_ROUTE_SESSIONS: usize = 1024;

/// Most ids one `ack` frame may name (a daemon sends at most 1,024).
const MAX_ACK_IDS: usize = 4096;

/// The refusal of an id another sender (or mesh) owns.
fn taken(id: MessageId) -> RelayFrame {
    RelayFrame::Refused {
        id,
        code: ErrorCode::IdTaken,
        message: "another sender already used this message id; resend under a fresh id".into(),
        retry_ms: None,
    }
}

/// Stored envelopes sent per mailbox page on reconnect.
pub(super) const MAILBOX_PAGE: usize = 512;

impl<S: Store> Conn<S> {
    pub(super) fn refuse(
        &self,
        id: MessageId,
        code: ErrorCode,
        message: String,
        retry_ms: Option<u64>,
    ) {
        self.push(&RelayFrame::Refused {
            id,
            code,
            message,
            retry_ms,
        });
    }

    pub(super) async fn send(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        env: Envelope,
    ) {
        let id = env.id;
        if env.from_member != member {
            return self.refuse(
                id,
                ErrorCode::NotAuthorized,
                "from_member is not the member of this link".into(),
                None,
            );
        }
        if env.ct.len() > MAX_CIPHERTEXT {
            return self.refuse(
                id,
                ErrorCode::FrameTooLarge,
                format!("ciphertext exceeds the {MAX_CIPHERTEXT} byte limit"),
                None,
            );
        }
        let now = now_ms();
        let tx = self.link.clone();
        // An id belongs to its sender within its mesh. A resend of something recently
        // accepted is not forwarded live again, but it goes through the store like any
        // send: the insert is a no-op if the first copy was committed, and stores it if
        // that write failed.
        let owner = (mesh, member);
        let (known, unsure) = {
            let r = lock(&self.hub.recent);
            (r.owner(&id), r.may_be_known_elsewhere(&id))
        };
        let mut resend = match known {
            Some(o) if o != owner => return self.refuse_taken(id),
            Some(_) => true,
            None => false,
        };
        // An id from before what memory covers (a restart, or forgotten since): ask the
        // store before forwarding, so a squatter's copy never reaches anyone.
        if !resend && unsure {
            match self.hub.store.owner(id).await {
                Ok(Some(o)) if o != owner => return self.refuse_taken(id),
                Ok(Some(_)) => resend = true,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up an envelope id");
                    return self.refuse(
                        id,
                        ErrorCode::Internal,
                        "relay could not check the message id; it will be retried".into(),
                        Some(1_000),
                    );
                }
            }
        }
        let env_json = match serde_json::to_vec(&env) {
            Ok(v) => Bytes::from(v),
            Err(_) => {
                return self.refuse(
                    id,
                    ErrorCode::BadFrame,
                    "cannot encode envelope".into(),
                    None,
                );
            }
        };
        // The deliver frame around it must fit a frame too, or every recipient's link would
        // fail on it at each replay.
        if env_json.len() + DELIVER_OVERHEAD > wire::MAX_FRAME {
            return self.refuse(
                id,
                ErrorCode::FrameTooLarge,
                format!(
                    "the envelope is too large to deliver (over {} bytes with its route)",
                    wire::MAX_FRAME - DELIVER_OVERHEAD
                ),
                None,
            );
        }
        if let Route::Sessions { sessions } = &env.to
            && sessions.len() > MAX_ROUTE_SESSIONS
        {
            return self.refuse(
                id,
                ErrorCode::BadFrame,
                format!("a send names at most {MAX_ROUTE_SESSIONS} sessions"),
                None,
            );
        }
        let size = env_json.len() as u64;
        let (recipients, online, local) = {
            let mut st = lock(&entry.state);
            let recipients = match resolve(&st, &member, &env.to) {
                Ok(r) => r,
                Err(msg) => {
                    drop(st);
                    return self.refuse(id, ErrorCode::UnknownRecipient, msg, None);
                }
            };
            // Each recipient is a row the store writes: a send to everyone in a large
            // roster costs what that many sends cost.
            let cost = recipients.len().max(1) as f64;
            if let Err(wait) = st
                .limits(member, &self.hub.cfg)
                .writes
                .take_n(cost, Instant::now())
            {
                drop(st);
                return self.refuse(
                    id,
                    ErrorCode::RateLimited,
                    "member message rate exceeded (a send costs one per recipient)".into(),
                    Some(wait.as_millis() as u64 + 1),
                );
            }
            if recipients.is_empty() {
                // Nobody else in the mesh: nothing to store or forward.
                drop(st);
                self.push(&RelayFrame::Relayed { id, at: now });
                return;
            }
            if let Some(ms) = lock(&self.hub.storage).refusing(Instant::now()) {
                drop(st);
                return self.refuse(
                    id,
                    ErrorCode::Internal,
                    format!(
                        "the relay cannot store messages right now (its disk may be full); retry after {} s",
                        ms.div_ceil(1000)
                    ),
                    Some(ms),
                );
            }
            // Through a cluster the store counts the quota over every node (and refuses
            // with `Put::Full`); this node's own count is only what it stored itself.
            if self.hub.bus.is_none()
                && (st.stored.0 + 1 > self.hub.cfg.mesh_quota_messages
                    || st.stored.1 + size > self.hub.cfg.mesh_quota_bytes)
            {
                drop(st);
                return self.refuse(id, ErrorCode::QuotaExceeded, MESH_FULL.into(), Some(5_000));
            }
            if !self.hub.disk.room_for(size) {
                drop(st);
                return self.refuse(
                    id,
                    ErrorCode::QuotaExceeded,
                    "the relay's storage budget is full; it frees as recipients read".into(),
                    Some(5_000),
                );
            }
            st.charge(&self.hub.disk, size);
            let online: Vec<LinkHandle> = recipients
                .iter()
                .filter_map(|m| st.links.get(m).cloned())
                .collect();
            let local: Vec<MemberKey> = recipients
                .iter()
                .filter(|m| st.links.contains_key(m))
                .copied()
                .collect();
            (recipients, online, local)
        };
        // Accepted: from now on a resend of this id is a duplicate (until a store failure
        // below takes that back). Another sender that took the id meanwhile wins it.
        if !resend && !lock(&self.hub.recent).claim(id, owner, now) {
            lock(&entry.state).free(&self.hub.disk, 1, size);
            return self.refuse_taken(id);
        }
        let kind = match &env.to {
            Route::Session { .. } => 0,
            Route::Member { .. } => 1,
            Route::Sessions { .. } => 2,
            Route::All => 3,
        };
        self.hub.stats.routed[kind].fetch_add(1, Ordering::Relaxed);
        let accepted = Instant::now();
        // Forward at once; the relay's copy is committed in the background and the sender
        // hears `relayed` only after that commit.
        if !resend {
            let deliver = deliver_frame(&env_json, now);
            for l in &online {
                l.push_delivery(id, deliver.clone());
            }
        }
        // Recipients not connected here may be connected to another node: their live copy
        // goes once the envelope is stored (a node reads a member's mailbox after
        // subscribing for it, so a copy published after the commit is either read or
        // received there).
        let remote: Vec<MemberKey> = if !resend && self.hub.bus.is_some() {
            recipients
                .iter()
                .filter(|m| !local.contains(m))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        let live = if remote.is_empty() {
            Bytes::new()
        } else {
            deliver_frame(&env_json, now)
        };
        self.hub.stats.envelopes.fetch_add(1, Ordering::Relaxed);
        let entry2 = entry.clone();
        let hub = self.hub.clone();
        let rec = NewEnvelope {
            id,
            mesh,
            sender: member,
            envelope: env_json,
            recipients,
            at: now,
            expires_at: now + self.hub.cfg.message_ttl_secs as i64 * 1000,
        };
        let res = self
            .hub
            .store
            .put_envelope(
                rec,
                Box::new(move |r| {
                    hub.stats.envelope_commit.observe(accepted.elapsed());
                    if r.is_ok() && lock(&hub.storage).worked() {
                        tracing::warn!("envelopes are stored again");
                    }
                    let answer = match r {
                        Ok(Put::Stored) => {
                            for m in &remote {
                                hub.bus_member(&mesh, m, Some(id), &live);
                            }
                            RelayFrame::Relayed { id, at: now }
                        }
                        Ok(Put::Duplicate) => {
                            lock(&entry2.state).free(&hub.disk, 1, size);
                            RelayFrame::Relayed { id, at: now }
                        }
                        // Stored before this relay's memory of recent ids began (a restart)
                        // by someone else: refused, never acknowledged.
                        Ok(Put::Taken) => {
                            lock(&entry2.state).free(&hub.disk, 1, size);
                            lock(&hub.recent).release(&id, owner);
                            taken(id)
                        }
                        // Counted over every node of a cluster, the quota was full.
                        Ok(Put::Full) => {
                            lock(&entry2.state).free(&hub.disk, 1, size);
                            lock(&hub.recent).release(&id, owner);
                            RelayFrame::Refused {
                                id,
                                code: ErrorCode::QuotaExceeded,
                                message: MESH_FULL.into(),
                                retry_ms: Some(5_000),
                            }
                        }
                        Err(e) => {
                            let (retry_ms, say) = lock(&hub.storage).failed(Instant::now());
                            if say {
                                tracing::error!(error = %e, retry_ms, "cannot store envelopes (is the disk full?); senders are told to retry later, backing off; said at most once a minute");
                            }
                            lock(&hub.recent).release(&id, owner);
                            lock(&entry2.state).free(&hub.disk, 1, size);
                            RelayFrame::Refused {
                                id,
                                code: ErrorCode::Internal,
                                message: format!(
                                    "the relay could not store the message (its disk may be full); retry after {} s",
                                    retry_ms.div_ceil(1000)
                                ),
                                retry_ms: Some(retry_ms),
                            }
                        }
                    };
                    if let Some(f) = frame(&answer) {
                        tx.push(f);
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    fn refuse_taken(&self, id: MessageId) {
        self.push(&taken(id));
    }

    /// Acknowledgements from the recipient: only ids this link was given reach the store
    /// (an ack of anything else is dropped here), and each frame costs a write token.
    pub(super) async fn ack(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        mut ids: Vec<MessageId>,
        proofs: Vec<claudemesh_schema::crypto::Signature>,
    ) {
        if ids.len() > MAX_ACK_IDS {
            return self.error(
                None,
                ErrorCode::BadFrame,
                &format!("an ack names at most {MAX_ACK_IDS} ids; this one was ignored"),
            );
        }
        let allowed = lock(&entry.state)
            .limits(member, &self.hub.cfg)
            .writes
            .take(Instant::now());
        if allowed.is_err() {
            // Not acknowledged now: the envelopes stay in the mailbox and come again.
            self.hub
                .stats
                .acks_dropped
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            return;
        }
        // Proofs travel with their ids (the relay cannot check them: it forwards each to
        // the sender, who does). A frame whose proofs do not pair with its ids has none.
        let proofs: std::collections::HashMap<MessageId, claudemesh_schema::crypto::Signature> =
            if proofs.len() == ids.len() {
                ids.iter().copied().zip(proofs).collect()
            } else {
                Default::default()
            };
        let before = ids.len();
        self.link.queues.acknowledgeable(&mut ids);
        let dropped = (before - ids.len()) as u64;
        if dropped > 0 {
            self.hub
                .stats
                .acks_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if ids.is_empty() {
            return;
        }
        let now = now_ms();
        let entry2 = entry.clone();
        let hub = self.hub.clone();
        let dedupe_until = now + self.hub.cfg.dedupe_window_secs as i64 * 1000;
        // Kept for the sender as long as an envelope would be kept for a recipient.
        let receipts = crate::store::AckReceipts {
            at: now,
            proofs: proofs.clone(),
            until: now + self.hub.cfg.message_ttl_secs as i64 * 1000,
        };
        let res = self
            .hub
            .store
            .ack(
                mesh,
                member,
                ids,
                dedupe_until,
                receipts,
                Box::new(move |r| {
                    let Ok(acked) = r else { return };
                    let mut st = lock(&entry2.state);
                    for a in acked {
                        if let Some(b) = a.freed {
                            st.free(&hub.disk, 1, b);
                        }
                        let Some(f) = frame(&RelayFrame::Receipt {
                            id: a.id,
                            member,
                            at: now,
                            proof: proofs.get(&a.id).copied(),
                        }) else {
                            continue;
                        };
                        match st.links.get(&a.sender) {
                            Some(l) => {
                                l.push(f);
                            }
                            None => hub.bus_member(&mesh, &a.sender, None, &f),
                        }
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    /// The sender's daemon recorded these receipts: they are not kept for it any more.
    pub(super) async fn receipts_seen(
        &mut self,
        mesh: MeshId,
        member: MemberKey,
        receipts: Vec<wire::ReceiptSeen>,
    ) {
        if receipts.len() > wire::MAX_RECEIPTS_SEEN {
            self.error(
                None,
                ErrorCode::BadFrame,
                &format!(
                    "receipts_seen names at most {} receipts; this one was ignored",
                    wire::MAX_RECEIPTS_SEEN
                ),
            );
            return;
        }
        if let Err(e) = self.hub.store.receipts_seen(mesh, member, receipts).await {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    pub(super) fn resync(&mut self) {
        let State::Linked { mesh, member, .. } = &self.state else {
            return;
        };
        tracing::debug!(link = self.link.id, "link lagging; replaying its mailbox");
        self.drain = Some(self.hub.spawn(replay_mailbox(
            self.hub.clone(),
            self.link.clone(),
            *mesh,
            *member,
            None,
        )));
    }
}

/// Send a member its stored envelopes, oldest first. With `first` the first page is
/// already read; without, everything queued to the store is committed first, so envelopes
/// whose live copy was skipped are all in the mailbox.
pub(super) async fn replay_mailbox<S: Store>(
    hub: Arc<Hub<S>>,
    link: LinkHandle,
    mesh: MeshId,
    member: MemberKey,
    first: Option<Vec<crate::store::Stored>>,
) {
    let mut page = match first {
        Some(p) => p,
        None => {
            if crate::store::flushed(&hub.store).await.is_err() {
                return;
            }
            match hub.store.mailbox(mesh, member, None, MAILBOX_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read mailbox");
                    return;
                }
            }
        }
    };
    loop {
        let Some(last) = page.last().map(|s| s.id) else {
            return;
        };
        let full = page.len() == MAILBOX_PAGE;
        for s in page {
            // Stored before the size rule: skip it (it expires with its TTL) rather than
            // fail the link on it at every replay.
            if s.envelope.len() + DELIVER_OVERHEAD > wire::MAX_FRAME {
                tracing::warn!(id = %s.id, "a stored envelope is too large to deliver; skipping it");
                continue;
            }
            if link
                .send_data(Some(s.id), deliver_frame(&s.envelope, s.at))
                .await
                .is_err()
            {
                return;
            }
        }
        if !full {
            return;
        }
        page = match hub
            .store
            .mailbox(mesh, member, Some(last), MAILBOX_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read mailbox");
                return;
            }
        };
    }
}

/// Hand a member's link what the other relay nodes send it live, until the link ends.
pub(super) async fn follow_member(
    bus: Arc<crate::cluster::bus::Bus>,
    mut sub: async_nats::Subscriber,
    link: LinkHandle,
) {
    use futures_util::StreamExt as _;
    loop {
        let m = tokio::select! {
            biased;
            _ = link.close.cancelled() => return,
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let Some(ev) = bus.event(&m) else {
            continue;
        };
        match ev.id {
            Some(id) => link.push_delivery(id, ev.frame),
            None => {
                link.push(ev.frame);
            }
        }
    }
}

/// Which members an envelope goes to.
pub(super) fn resolve(
    st: &MeshState,
    sender: &MemberKey,
    route: &Route,
) -> Result<Vec<MemberKey>, String> {
    let member_of = |s: &SessionId| -> Option<MemberKey> {
        st.sessions
            .get(s)
            .map(|x| x.presence.member)
            .filter(|m| st.roster.is_member(m))
    };
    match route {
        Route::Session { session } => member_of(session)
            .map(|m| vec![m])
            .ok_or_else(|| format!("unknown session {}", session.short())),
        Route::Member { member } => {
            if st.roster.is_member(member) {
                Ok(vec![*member])
            } else {
                Err(format!("{} is not a member", member.short()))
            }
        }
        Route::Sessions { sessions } => {
            let mut out: Vec<MemberKey> = sessions.iter().filter_map(member_of).collect();
            out.sort();
            out.dedup();
            if out.is_empty() {
                Err("none of the listed sessions is known".into())
            } else {
                Ok(out)
            }
        }
        Route::All => Ok(st
            .roster
            .members()
            .map(|(m, _)| *m)
            .filter(|m| m != sender)
            .collect()),
    }
}

/// Receipts kept for `member` (the sender of what they are about): sent at each of its
/// links until its daemon says it has them.
pub(super) async fn replay_receipts<S: Store>(
    hub: Arc<Hub<S>>,
    link: LinkHandle,
    mesh: MeshId,
    member: MemberKey,
) {
    let mut after = None;
    loop {
        let page = match hub.store.receipts(mesh, member, after, MAILBOX_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read kept receipts");
                return;
            }
        };
        let full = page.len() == MAILBOX_PAGE;
        for r in &page {
            let Some(f) = frame(&RelayFrame::Receipt {
                id: r.id,
                member: r.member,
                at: r.at,
                proof: r.proof,
            }) else {
                continue;
            };
            if link.send_data(None, f).await.is_err() {
                return;
            }
        }
        match page.last() {
            Some(last) if full => {
                after = Some(wire::ReceiptSeen {
                    id: last.id,
                    member: last.member,
                })
            }
            _ => return,
        }
    }
}
