//! Before hello: mesh creation, the hello check, invite claims.

use claudemesh_schema::ClaimId;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{
    self, ClaimRequest, ErrorCode, Hello, MAX_CIPHERTEXT, RelayFrame, Welcome,
};
use std::sync::atomic::Ordering;

use super::envelopes::{MAILBOX_PAGE, replay_mailbox};

use super::{Conn, End, State};
use crate::hub::{MeshState, PendingClaim, error_frame, frame, lock};
use crate::store::{Store, StoreError, StoredClaim};

/// Most claims that may wait for an admin on one invite at once (stored claims count, so
/// the cap holds across restarts).
const MAX_CLAIMS_PER_INVITE: usize = 8;
/// Most claims that may wait for an admin in one mesh at once, over all its invites.
const MAX_CLAIMS_PER_MESH: usize = 64;

impl<S: Store> Conn<S> {
    pub(super) fn check_handshake_rate(&self) -> Result<(), End> {
        if let Err(wait) = self.hub.handshake_allowed(self.remote.ip()) {
            self.hub
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            self.link.push(
                frame(&RelayFrame::Error {
                    rid: None,
                    code: ErrorCode::RateLimited,
                    message: "too many handshakes from this address; retry later".into(),
                    fatal: true,
                    retry_ms: Some(wait.as_millis() as u64 + 1),
                })
                .unwrap_or_default(),
            );
            return Err(End::Refused(ErrorCode::RateLimited));
        }
        Ok(())
    }

    pub(super) async fn create_mesh(
        &mut self,
        rid: u64,
        genesis: claudemesh_schema::roster::MeshGenesis,
        token: Option<wire::CreationToken>,
    ) -> Result<(), End> {
        self.check_handshake_rate()?;
        let Ok(st) = MeshState::new(genesis.clone()) else {
            return Err(self.fatal(
                ErrorCode::BadSignature,
                "mesh genesis signature does not verify",
            ));
        };
        if self.hub.mesh(&genesis.mesh).is_some() {
            self.error(
                Some(rid),
                ErrorCode::MeshExists,
                "a mesh with this id already exists",
            );
            return Ok(());
        }
        if self.hub.mesh_count() as u64 >= self.hub.cfg.max_meshes {
            self.error(
                Some(rid),
                ErrorCode::QuotaExceeded,
                "this relay hosts as many meshes as it allows",
            );
            return Ok(());
        }
        // Admission last: a token's use is spent only for a creation that is stored next.
        let ip = self.remote.ip();
        if let Err(r) = self
            .hub
            .admission
            .admit(ip, &genesis.owner, token.as_ref())
            .await
        {
            self.push(&r.frame(rid));
            return Ok(());
        }
        match self.hub.store.create_mesh(genesis.clone(), ip).await {
            Ok(()) => {}
            Err(StoreError::Exists) => {
                self.error(
                    Some(rid),
                    ErrorCode::MeshExists,
                    "a mesh with this id already exists",
                );
                return Ok(());
            }
            Err(StoreError::Limit { what, retry_ms }) => {
                let code = if retry_ms.is_some() {
                    ErrorCode::RateLimited
                } else {
                    ErrorCode::QuotaExceeded
                };
                self.push(&RelayFrame::Error {
                    rid: Some(rid),
                    code,
                    message: what.into(),
                    fatal: false,
                    retry_ms,
                });
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store new mesh");
                self.error(
                    Some(rid),
                    ErrorCode::Internal,
                    "relay could not store the mesh; try again",
                );
                return Ok(());
            }
        }
        if !self.hub.insert_mesh(st) {
            self.error(
                Some(rid),
                ErrorCode::MeshExists,
                "a mesh with this id already exists",
            );
            return Ok(());
        }
        tracing::info!(mesh = %genesis.mesh.short(), "mesh created");
        self.push(&RelayFrame::Ok { rid });
        Ok(())
    }

    pub(super) async fn hello(&mut self, h: Hello) -> Result<(), End> {
        self.check_handshake_rate()?;
        let now = now_ms();
        let version = match h.check(now) {
            Ok(v) => v,
            Err(refusal) => return Err(self.fatal(refusal.code(), &refusal.to_string())),
        };
        // On a cluster the roster is read from the store first (another node may have
        // removed this member); if it cannot be read, the hello is not answered from a
        // memory that may be stale.
        if let Err(e) = self.hub.follow(&h.mesh).await {
            tracing::warn!(error = %e, "cannot read the mesh from the cluster");
            return Err(self.fatal(
                ErrorCode::Internal,
                "relay could not read the mesh's roster from its cluster; try again",
            ));
        }
        let Some(entry) = self.hub.mesh(&h.mesh) else {
            return Err(self.fatal(ErrorCode::UnknownMesh, "this relay does not know the mesh"));
        };
        if !lock(&entry.state).roster.is_member(&h.member) {
            return Err(self.fatal(
                ErrorCode::NotAMember,
                "this key is not a member of the mesh",
            ));
        }
        // Only a member's nonce is remembered: strangers cannot fill the cache.
        let fresh =
            lock(&self.hub.nonces).insert(h.nonce, now, now + 2 * wire::HELLO_WINDOW_MS + 1);
        if !fresh {
            return Err(self.fatal(
                ErrorCode::ReplayedHello,
                "hello nonce was already used (replay refused)",
            ));
        }
        // A member's nonce is persisted before the answer, so a restart does not reopen
        // the replay window.
        let expires = now + 2 * wire::HELLO_WINDOW_MS + 1;
        if let Err(e) = self.hub.store.put_nonce(h.nonce, expires).await {
            if matches!(e, StoreError::Replayed) {
                return Err(self.fatal(
                    ErrorCode::ReplayedHello,
                    "hello nonce was already used (replay refused)",
                ));
            }
            tracing::error!(error = %e, "cannot record a hello nonce");
            return Err(self.fatal(
                ErrorCode::Internal,
                "relay could not record the hello; try again",
            ));
        }
        let replaced;
        let (welcome, roster, presences, claims, fetched) = {
            let mut st = lock(&entry.state);
            if !st.roster.is_member(&h.member) {
                drop(st);
                return Err(self.fatal(
                    ErrorCode::NotAMember,
                    "this key is not a member of the mesh",
                ));
            }
            if let Some(theirs) = h.roster_head {
                let ours = st.roster.head();
                if theirs.len > ours.len || st.roster.hash_after(theirs.len) != Some(theirs.hash) {
                    tracing::warn!(mesh = %h.mesh.short(), member = %h.member.short(), theirs = theirs.len, ours = ours.len, "a member holds roster entries this relay does not (restored from an old backup?)");
                }
            }
            let old = st.links.insert(h.member, self.link.clone());
            replaced = old.is_some();
            if let Some(old) = old {
                old.push(error_frame(
                    None,
                    ErrorCode::Replaced,
                    "a newer connection of this member replaced this one",
                    true,
                ));
                old.close.cancel();
            }
            let welcome = Welcome {
                version,
                server_time: now,
                genesis: st.genesis.clone(),
                roster_entries: st.entries.len() as u64,
                roster_head: Some(st.roster.head()),
                presences: st.sessions.len() as u64,
                max_ciphertext: MAX_CIPHERTEXT as u64,
            };
            let roster: Vec<RelayFrame> = st
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| RelayFrame::Roster {
                    seq: i as u64,
                    entry: e.clone(),
                })
                .collect();
            let presences: Vec<RelayFrame> = st
                .sessions
                .values()
                .map(|s| RelayFrame::Presence(s.record()))
                .collect();
            // A member admitted through a claim says hello: it has its answer, which
            // the relay no longer needs to keep.
            let fetched: Vec<ClaimId> = st
                .claims
                .iter()
                .filter(|(_, c)| c.request.member == h.member)
                .map(|(id, _)| *id)
                .collect();
            for id in &fetched {
                st.claims.remove(id);
            }
            let is_admin = st.roster.role(&h.member).is_some_and(|r| r.is_admin());
            let claims: Vec<RelayFrame> = if is_admin {
                st.claims
                    .iter()
                    .filter(|(_, c)| c.waiting())
                    .map(|(id, c)| RelayFrame::ClaimPending {
                        claim: *id,
                        request: c.request.clone(),
                        cap: c.cap.clone(),
                        at: c.at,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (welcome, roster, presences, claims, fetched)
        };
        for id in &fetched {
            self.hub.bus_decided(&h.mesh, *id, None, 0);
        }
        if !fetched.is_empty() {
            let hub = self.hub.clone();
            self.hub.spawn(async move {
                if let Err(e) = hub.store.delete_claims(fetched).await {
                    tracing::warn!(error = %e, "cannot forget fetched claims (they expire anyway)");
                }
            });
        }
        self.authenticated();
        self.hub.stats.links.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(mesh = %h.mesh.short(), member = %h.member.short(), "link up");
        self.state = State::Linked {
            mesh: h.mesh,
            entry: entry.clone(),
            member: h.member,
        };
        self.push(&RelayFrame::Welcome(welcome));
        for f in roster.iter().chain(presences.iter()) {
            self.push(f);
        }
        // On a cluster, what other nodes send this member live: subscribed before the
        // mailbox is read, so an envelope is either in that read or comes live (or both:
        // the daemon dedupes).
        if let Some(bus) = self.hub.bus.clone() {
            bus.to_mesh(
                &h.mesh,
                crate::cluster::bus::Kind::Linked,
                Some(&h.member),
                &bytes::Bytes::new(),
            );
            match bus.member(&h.mesh, &h.member).await {
                Ok(sub) => {
                    self.hub
                        .spawn(super::envelopes::follow_member(bus, sub, self.link.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow this member's traffic from the other nodes; it gets it from its mailbox")
                }
            }
        }
        // Sends that resolved this member as offline just before the link was registered
        // may still be in the store queue: wait for them, so the mailbox read sees them.
        if let Err(e) = crate::store::flushed(&self.hub.store).await {
            tracing::error!(error = %e, "store flush failed");
        }
        // Count the mailbox for `ready`, then stream it from a task so acks are read
        // concurrently.
        let first = self
            .hub
            .store
            .mailbox(h.mesh, h.member, None, MAILBOX_PAGE)
            .await;
        let first = match first {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot read mailbox");
                Vec::new()
            }
        };
        self.push(&RelayFrame::Ready {
            queued: first.len() as u64,
        });
        for f in &claims {
            self.push(f);
        }
        // Receipts kept for this member while it was away (or not yet confirmed).
        self.hub.spawn(super::envelopes::replay_receipts(
            self.hub.clone(),
            self.link.clone(),
            h.mesh,
            h.member,
        ));
        if !first.is_empty() {
            self.drain = Some(self.hub.spawn(replay_mailbox(
                self.hub.clone(),
                self.link.clone(),
                h.mesh,
                h.member,
                Some(first),
            )));
        }
        // A send that chose the replaced link just before this one registered may have
        // been stored after the mailbox read above, its live copy gone to the dead link:
        // replay the mailbox once more when this replay is done (the daemon dedupes).
        if replaced {
            self.resync_pending = true;
            if self.drain.is_none() {
                self.resync();
            }
        }
        Ok(())
    }

    pub(super) async fn claim(&mut self, req: ClaimRequest) -> Result<(), End> {
        self.check_handshake_rate()?;
        if req.note.len() > wire::MAX_CLAIM_NOTE {
            return Err(self.fatal(
                ErrorCode::BadFrame,
                &format!("a claim's note is at most {} bytes", wire::MAX_CLAIM_NOTE),
            ));
        }
        // Through a cluster, the invite may have been published, revoked or spent
        // through another node: what the store holds now decides.
        if let Err(e) = self.hub.follow_invite(&req.invite).await {
            tracing::warn!(error = %e, "cannot read an invite from the cluster");
            return Err(self.fatal(
                ErrorCode::Internal,
                "the relay cannot read the invite right now; try again",
            ));
        }
        let now = now_ms();
        let Some(mesh) = self.hub.invite_mesh(&req.invite) else {
            return Err(self.fatal(
                ErrorCode::InviteUnknown,
                "this relay does not know the invite; check the link",
            ));
        };
        let Some(entry) = self.hub.mesh(&mesh) else {
            return Err(self.fatal(
                ErrorCode::InviteUnknown,
                "this relay does not know the invite; check the link",
            ));
        };
        let ttl = self.hub.cfg.claim_ttl_secs as i64 * 1000;
        let (claim, admins, cap, expires_at, new) = {
            let mut st = lock(&entry.state);
            let Some(inv) = st.invites.get(&req.invite).cloned() else {
                drop(st);
                return Err(self.fatal(
                    ErrorCode::InviteUnknown,
                    "this relay does not know the invite",
                ));
            };
            let admins = st.admin_links();
            // The claimant came back (a new connection, a restart on either side): the
            // same request finds its claim, and its answer if there is one. It spends
            // nothing again and takes no second place in the queue.
            let known = st
                .claims
                .iter_mut()
                .find(|(_, c)| c.request.invite == req.invite && c.request.member == req.member);
            if let Some((id, c)) = known {
                let id = *id;
                if c.request != req {
                    drop(st);
                    return Err(self.fatal(
                        ErrorCode::ClaimRefused,
                        "another claim with this key is kept here; claim with a fresh key",
                    ));
                }
                if c.outcome.is_some() {
                    c.claimant = Some(self.link.clone());
                    c.tell();
                    return Ok(());
                }
                if let Some(old) = c.claimant.replace(self.link.clone()) {
                    old.push(error_frame(
                        None,
                        ErrorCode::Replaced,
                        "the claimant came back on a newer connection",
                        true,
                    ));
                    old.close.cancel();
                }
                (id, admins, inv.cap, c.expires_at, false)
            } else {
                if let Some((code, msg)) = inv.refusal(now) {
                    drop(st);
                    return Err(self.fatal(code, msg));
                }
                if st.roster.is_member(&req.member) {
                    drop(st);
                    return Err(self.fatal(ErrorCode::ClaimRefused, "this key is already a member"));
                }
                // Only claims still waiting count: decided ones wait for nothing but
                // their claimant, and go when it fetches them or they expire.
                let waiting = st.claims.values().filter(|c| c.waiting());
                let (on_invite, in_mesh) = waiting.fold((0, 0), |(i, m), c| {
                    (i + usize::from(c.cap.id == req.invite), m + 1)
                });
                if on_invite >= MAX_CLAIMS_PER_INVITE || in_mesh >= MAX_CLAIMS_PER_MESH {
                    drop(st);
                    return Err(self.fatal(
                        ErrorCode::RateLimited,
                        if on_invite >= MAX_CLAIMS_PER_INVITE {
                            "too many claims already wait on this invite; try again later"
                        } else {
                            "too many claims already wait in this mesh; try again later"
                        },
                    ));
                }
                let id = ClaimId::new();
                st.claims.insert(
                    id,
                    PendingClaim {
                        request: req.clone(),
                        cap: inv.cap.clone(),
                        at: now,
                        expires_at: now + ttl,
                        claimant: Some(self.link.clone()),
                        outcome: None,
                    },
                );
                (id, admins, inv.cap, now + ttl, true)
            }
        };
        // A durable claim is stored before the claimant hears it waits: it outlives this
        // connection and a restart of the relay.
        if new && req.durable {
            let stored = StoredClaim {
                id: claim,
                mesh,
                request: req.clone(),
                at: now,
                expires_at,
                outcome: None,
            };
            if let Err(e) = self.hub.store.put_claim(stored).await {
                tracing::error!(error = %e, "cannot store a claim");
                lock(&entry.state).claims.remove(&claim);
                return Err(self.fatal(
                    ErrorCode::Internal,
                    "relay could not store the claim; try again",
                ));
            }
        }
        if new {
            tracing::info!(mesh = %mesh.short(), claim = %claim.short(), admins = admins.len(), "invite claim waiting");
            let pending = frame(&RelayFrame::ClaimPending {
                claim,
                request: req.clone(),
                cap: cap.clone(),
                at: now,
            });
            if let Some(p) = pending {
                for a in &admins {
                    a.push(p.clone());
                }
                // Admins linked through other nodes decide it there.
                self.hub
                    .bus_mesh(&mesh, crate::cluster::bus::Kind::Claim, None, &p);
            }
        }
        self.push(&RelayFrame::ClaimWaiting {
            claim,
            admins_online: admins.len() as u32,
            approve: cap.approve,
            kept_until: req.durable.then_some(expires_at),
        });
        self.state = State::Claiming {
            mesh,
            claim,
            durable: req.durable,
            until: std::time::Instant::now()
                + std::time::Duration::from_secs(self.hub.cfg.claim_wait_secs),
        };
        // A claimant stays under the pre-hello caps and frame budget: anyone who knows an
        // invite id can claim (the relay cannot check the proof).
        Ok(())
    }
}
