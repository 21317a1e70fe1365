//! Envelopes: send (resolve, quota, forward live, store, `relayed`), ack (receipts),
//! and the mailbox replay on link-up or after lagging.

use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{Envelope, ErrorCode, MAX_CIPHERTEXT, RelayFrame, Route};
use claudemesh_schema::{MeshId, SessionId};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

use super::{Conn, State};
use crate::hub::{Hub, LinkHandle, MeshEntry, MeshState, deliver_frame, frame, lock};
use crate::store::{NewEnvelope, Store};

/// Stored envelopes sent per mailbox page on reconnect.
pub(super) const MAILBOX_PAGE: usize = 512;

impl<S: Store> Conn<S> {
    pub(super) fn refuse(
        &self,
        id: claudemesh_schema::MessageId,
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
        if let Err(wait) = self.rate.take(Instant::now()) {
            return self.refuse(
                id,
                ErrorCode::RateLimited,
                "member message rate exceeded".into(),
                Some(wait.as_millis() as u64 + 1),
            );
        }
        let now = now_ms();
        let tx = self.link.clone();
        // A resend of something recently accepted is not forwarded live again, but it goes
        // through the store like any send: the insert is a no-op if the first copy was
        // committed, and stores it if that write failed.
        let resend = lock(&self.hub.recent).contains(&id);
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
        let size = env_json.len() as u64;
        let (recipients, online) = {
            let mut st = lock(&entry.state);
            let recipients = match resolve(&st, &member, &env.to) {
                Ok(r) => r,
                Err(msg) => {
                    drop(st);
                    return self.refuse(id, ErrorCode::UnknownRecipient, msg, None);
                }
            };
            if recipients.is_empty() {
                // Nobody else in the mesh: nothing to store or forward.
                drop(st);
                self.push(&RelayFrame::Relayed { id, at: now });
                return;
            }
            if st.stored.0 + 1 > self.hub.cfg.mesh_quota_messages
                || st.stored.1 + size > self.hub.cfg.mesh_quota_bytes
            {
                drop(st);
                return self.refuse(
                    id,
                    ErrorCode::QuotaExceeded,
                    "the mesh's undelivered-message quota at the relay is full".into(),
                    Some(5_000),
                );
            }
            st.stored.0 += 1;
            st.stored.1 += size;
            let online: Vec<LinkHandle> = recipients
                .iter()
                .filter_map(|m| st.links.get(m).cloned())
                .collect();
            (recipients, online)
        };
        // Accepted: from now on a resend of this id is a duplicate (until a store failure
        // below takes that back).
        lock(&self.hub.recent).insert(id);
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
                l.push_data(deliver.clone());
            }
        }
        self.hub.stats.envelopes.fetch_add(1, Ordering::Relaxed);
        let relayed = frame(&RelayFrame::Relayed { id, at: now });
        let internal = frame(&RelayFrame::Refused {
            id,
            code: ErrorCode::Internal,
            message: "relay could not store the message; it will be retried".into(),
            retry_ms: Some(1_000),
        });
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
                    let release = |st: &mut MeshState| {
                        st.stored.0 = st.stored.0.saturating_sub(1);
                        st.stored.1 = st.stored.1.saturating_sub(size);
                    };
                    hub.stats.envelope_commit.observe(accepted.elapsed());
                    match r {
                        Ok(new) => {
                            if !new {
                                release(&mut lock(&entry2.state));
                            }
                            if let Some(f) = relayed {
                                tx.push(f);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot store envelope");
                            lock(&hub.recent).remove(&id);
                            release(&mut lock(&entry2.state));
                            if let Some(f) = internal {
                                tx.push(f);
                            }
                        }
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    pub(super) async fn ack(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        ids: Vec<claudemesh_schema::MessageId>,
    ) {
        if ids.is_empty() {
            return;
        }
        let now = now_ms();
        let entry2 = entry.clone();
        let dedupe_until = now + self.hub.cfg.dedupe_window_secs as i64 * 1000;
        let res = self
            .hub
            .store
            .ack(
                mesh,
                member,
                ids,
                dedupe_until,
                Box::new(move |r| {
                    let Ok(acked) = r else { return };
                    let mut st = lock(&entry2.state);
                    for a in acked {
                        if let Some(b) = a.freed {
                            st.stored.0 = st.stored.0.saturating_sub(1);
                            st.stored.1 = st.stored.1.saturating_sub(b);
                        }
                        if let Some(l) = st.links.get(&a.sender)
                            && let Some(f) = frame(&RelayFrame::Receipt {
                                id: a.id,
                                member,
                                at: now,
                            })
                        {
                            l.push(f);
                        }
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    pub(super) fn resync(&mut self) {
        let State::Linked { mesh, member, .. } = &self.state else {
            return;
        };
        tracing::debug!(link = self.link.id, "link lagging; replaying its mailbox");
        self.drain = Some(tokio::spawn(replay_mailbox(
            self.hub.clone(),
            self.link.data.clone(),
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
    data: mpsc::Sender<Bytes>,
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
            if data.send(deliver_frame(&s.envelope, s.at)).await.is_err() {
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
