//! Changes admins make: roster entries, invites and their revocation, claim decisions.

use claudemesh_schema::ClaimId;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::roster::{RosterEntry, RosterError, RosterOp};
use claudemesh_schema::wire::{ClaimDecision, ClaimOutcome, ErrorCode, RelayFrame};
use std::sync::Arc;

use super::Conn;
use crate::hub::{InviteState, MeshEntry, REFUSAL_KEPT_MS, frame, lock};
use crate::store::Store;

impl<S: Store> Conn<S> {
    pub(super) async fn roster(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        e: RosterEntry,
    ) {
        if e.invite.is_some() {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "admissions through invites go through claims",
            );
        }
        if e.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "entries must be signed by this link's member",
            );
        }
        let guard = entry.admin.lock().await;
        let seq = {
            let st = lock(&entry.state);
            if let Err(err) = st.roster.check_next(&e) {
                drop(st);
                let (code, msg) = refusal(&err);
                return self.error(Some(rid), code, &msg);
            }
            if e.op == RosterOp::Add
                && st.roster.members().count() as u64 >= self.hub.cfg.max_members
            {
                drop(st);
                return self.error(
                    Some(rid),
                    ErrorCode::QuotaExceeded,
                    "the mesh has as many members as this relay allows",
                );
            }
            st.entries.len() as u64
        };
        if let Err(err) = self.hub.store.append_roster(seq, e.clone()).await {
            drop(guard);
            if self.lost_roster_race(entry, seq).await {
                return self.error(
                    Some(rid),
                    ErrorCode::RosterChanged,
                    "the roster changed through another relay node; sign the change again and retry",
                );
            }
            tracing::error!(error = %err, "cannot store roster entry");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the change; try again",
            );
        }
        let removed_link = {
            let mut st = lock(&entry.state);
            if st.roster.apply(&e).is_err() {
                return self.error(
                    Some(rid),
                    ErrorCode::Internal,
                    "roster changed concurrently; try again",
                );
            }
            st.entries.push(e.clone());
            if let Some(f) = frame(&RelayFrame::Roster {
                seq,
                entry: e.clone(),
            }) {
                st.broadcast(&f, None);
                self.hub
                    .bus_mesh(&e.mesh, crate::cluster::bus::Kind::Roster, None, &f);
            }
            if e.op == RosterOp::Remove {
                st.links.remove(&e.member)
            } else {
                None
            }
        };
        if let Some(l) = removed_link {
            l.end(
                ErrorCode::NotAMember,
                "this member was removed from the mesh",
            );
        }
        if e.op == RosterOp::Remove {
            match self.hub.store.drop_mailbox(e.mesh, e.member).await {
                Ok((n, bytes)) => {
                    let mut st = lock(&entry.state);
                    st.free(&self.hub.disk, n, bytes);
                }
                Err(err) => tracing::warn!(error = %err, "cannot drop a removed member's mailbox"),
            }
        }
        self.push(&RelayFrame::Ok { rid });
    }

    pub(super) async fn invite_publish(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        cap: claudemesh_schema::roster::InviteCap,
    ) {
        if cap.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "invites must be signed by this link's member",
            );
        }
        let _guard = entry.admin.lock().await;
        {
            let st = lock(&entry.state);
            if let Err(err) = cap.verify(&st.roster) {
                drop(st);
                return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
            }
        }
        if self.hub.invite_mesh(&cap.id).is_some() {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "an invite with this id already exists",
            );
        }
        if let Err(err) = self.hub.store.put_invite(cap.clone()).await {
            tracing::error!(error = %err, "cannot store invite");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the invite; try again",
            );
        }
        self.hub.index_invite(cap.id, cap.mesh);
        lock(&entry.state)
            .invites
            .entry(cap.id)
            .or_insert(InviteState {
                cap,
                uses: 0,
                revoked: false,
            });
        self.push(&RelayFrame::Ok { rid });
    }

    pub(super) async fn invite_revoke(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        rev: claudemesh_schema::roster::InviteRevocation,
    ) {
        if rev.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "revocations must be signed by this link's member",
            );
        }
        // Published through another node of a cluster, the invite is read from the store.
        if let Err(err) = self.hub.follow_invite(&rev.id).await {
            tracing::warn!(error = %err, "cannot read an invite from the cluster");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay cannot read the invite right now; try again",
            );
        }
        let _guard = entry.admin.lock().await;
        {
            let st = lock(&entry.state);
            if let Err(err) = rev.verify(&st.roster) {
                drop(st);
                return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
            }
            if !st.invites.contains_key(&rev.id) {
                drop(st);
                return self.error(Some(rid), ErrorCode::InviteUnknown, "no such invite");
            }
        }
        if let Err(err) = self.hub.store.revoke_invite(rev.id, rev.at).await {
            tracing::error!(error = %err, "cannot store revocation");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the revocation; try again",
            );
        }
        // Claims waiting on the invite are refused, and the refusal kept for claimants
        // that are away (they come back to hear it).
        let refusal = ClaimOutcome::Refused {
            code: ErrorCode::InviteRevoked,
            message: "the invite was revoked; ask for a new one".into(),
        };
        let keep_until = now_ms() + REFUSAL_KEPT_MS;
        let (stored, evicted) = {
            let mut st = lock(&entry.state);
            if let Some(i) = st.invites.get_mut(&rev.id) {
                i.revoked = true;
            }
            let ids: Vec<ClaimId> = st
                .claims
                .iter()
                .filter(|(_, c)| c.cap.id == rev.id && c.waiting())
                .map(|(k, _)| *k)
                .collect();
            let (mut stored, mut evicted) = (Vec::new(), Vec::new());
            for id in ids {
                if let Some(d) = st.decide(id, refusal.clone(), keep_until) {
                    self.hub
                        .bus_decided(&rev.mesh, id, Some(refusal.clone()), keep_until);
                    if d.durable {
                        stored.push(id);
                    }
                    evicted.extend(d.evicted);
                }
            }
            (stored, evicted)
        };
        self.keep_refusals(stored, refusal, keep_until, evicted)
            .await;
        self.push(&RelayFrame::Ok { rid });
    }

    pub(super) async fn claim_decision(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        d: ClaimDecision,
    ) {
        let now = now_ms();
        // Through a cluster, the claim's invite may have been revoked or spent through
        // another node: what the store holds now decides.
        let claim = match &d {
            ClaimDecision::Refuse { claim, .. } | ClaimDecision::Accept { claim, .. } => *claim,
        };
        let invite = lock(&entry.state).claims.get(&claim).map(|c| c.cap.id);
        if let Some(invite) = invite
            && let Err(err) = self.hub.follow_invite(&invite).await
        {
            tracing::warn!(error = %err, "cannot read an invite from the cluster");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay cannot read the claim's invite right now; try again",
            );
        }
        let mesh = lock(&entry.state).genesis.mesh;
        let guard = entry.admin.lock().await;
        match d {
            ClaimDecision::Refuse { claim, reason } => {
                let refusal = ClaimOutcome::Refused {
                    code: ErrorCode::ClaimRefused,
                    message: reason,
                };
                let keep_until = now + REFUSAL_KEPT_MS;
                let decided = {
                    let mut st = lock(&entry.state);
                    if !st.roster.role(&member).is_some_and(|r| r.is_admin()) {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "only admins decide claims",
                        );
                    }
                    st.decide(claim, refusal.clone(), keep_until)
                };
                let Some(d) = decided else {
                    return self.error(
                        Some(rid),
                        ErrorCode::Unexpected,
                        "claim already decided or withdrawn",
                    );
                };
                self.hub
                    .bus_decided(&mesh, claim, Some(refusal.clone()), keep_until);
                let stored = if d.durable { vec![claim] } else { Vec::new() };
                self.keep_refusals(stored, refusal, keep_until, d.evicted)
                    .await;
                self.push(&RelayFrame::Ok { rid });
            }
            ClaimDecision::Accept {
                claim,
                entry: e,
                sealed,
                mac,
            } => {
                let next = {
                    let mut st = lock(&entry.state);
                    if !st.roster.role(&member).is_some_and(|r| r.is_admin()) {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "only admins decide claims",
                        );
                    }
                    let Some(c) = st.claims.get(&claim).filter(|c| c.waiting()) else {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::Unexpected,
                            "claim already decided or withdrawn",
                        );
                    };
                    let durable = c.request.durable;
                    if !e.admits(&c.request.member, &c.cap, &member) {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "entry does not match the claim",
                        );
                    }
                    if let Err(err) = st.roster.check_next(&e) {
                        drop(st);
                        let (code, msg) = refusal(&err);
                        return self.error(Some(rid), code, &msg);
                    }
                    if st.roster.members().count() as u64 >= self.hub.cfg.max_members {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::QuotaExceeded,
                            "the mesh has as many members as this relay allows",
                        );
                    }
                    let cap_id = c.cap.id;
                    let refusal = st.invites.get(&cap_id).map(|i| i.refusal(now));
                    match refusal {
                        None => {
                            drop(st);
                            return self.error(
                                Some(rid),
                                ErrorCode::InviteUnknown,
                                "invite unknown",
                            );
                        }
                        Some(Some((code, msg))) => {
                            let refusal = ClaimOutcome::Refused {
                                code,
                                message: msg.into(),
                            };
                            let keep_until = now + REFUSAL_KEPT_MS;
                            let d = st.decide(claim, refusal.clone(), keep_until);
                            if d.is_some() {
                                self.hub.bus_decided(
                                    &mesh,
                                    claim,
                                    Some(refusal.clone()),
                                    keep_until,
                                );
                            }
                            Err((code, msg, d, refusal, keep_until))
                        }
                        Some(None) => Ok(()),
                    }
                    .map(|()| {
                        // Counted now, under the state lock, so no other decision can spend
                        // the same use; given back if the store fails. The admin lock held
                        // above keeps the claim waiting until this decision is recorded.
                        if let Some(i) = st.invites.get_mut(&cap_id) {
                            i.uses += 1;
                        }
                        (durable, cap_id, st.entries.len() as u64, st.genesis.clone())
                    })
                };
                let (durable, cap_id, seq, genesis) = match next {
                    Ok(n) => n,
                    Err((code, msg, d, refusal, keep_until)) => {
                        if let Some(d) = d {
                            let stored = if d.durable { vec![claim] } else { Vec::new() };
                            self.keep_refusals(stored, refusal, keep_until, d.evicted)
                                .await;
                        }
                        return self.error(Some(rid), code, msg);
                    }
                };
                let outcome = ClaimOutcome::Accepted {
                    claim,
                    genesis,
                    entry: e.clone(),
                    sealed,
                    mac,
                };
                let keep_until = now + self.hub.cfg.claim_ttl_secs as i64 * 1000;
                let stored = if durable {
                    self.hub
                        .store
                        .admit(seq, e.clone(), claim, outcome.clone(), keep_until)
                        .await
                } else {
                    self.hub.store.append_roster(seq, e.clone()).await
                };
                if let Err(err) = stored {
                    if let Some(i) = lock(&entry.state).invites.get_mut(&cap_id) {
                        i.uses = i.uses.saturating_sub(1);
                    }
                    drop(guard);
                    if matches!(err, crate::store::StoreError::Revoked) {
                        return self.error(
                            Some(rid),
                            ErrorCode::InviteRevoked,
                            "the invite was revoked meanwhile (through another relay node)",
                        );
                    }
                    if self.lost_roster_race(entry, seq).await {
                        return self.error(
                            Some(rid),
                            ErrorCode::RosterChanged,
                            "the roster changed through another relay node; sign the admission again and retry",
                        );
                    }
                    tracing::error!(error = %err, "cannot store admission");
                    return self.error(
                        Some(rid),
                        ErrorCode::Internal,
                        "relay could not store the admission; try again",
                    );
                }
                {
                    let mut st = lock(&entry.state);
                    if let Err(err) = st.roster.apply(&e) {
                        tracing::error!(error = %err, "admission no longer valid after store");
                    } else {
                        st.entries.push(e.clone());
                        if let Some(f) = frame(&RelayFrame::Roster {
                            seq,
                            entry: e.clone(),
                        }) {
                            st.broadcast(&f, None);
                            self.hub
                                .bus_mesh(&e.mesh, crate::cluster::bus::Kind::Roster, None, &f);
                        }
                    }
                }
                tracing::info!(mesh = %e.mesh.short(), member = %e.member.short(), "member admitted through invite");
                // An acceptance is never evicted: it is what the new member needs.
                let _ = lock(&entry.state).decide(claim, outcome.clone(), keep_until);
                self.hub
                    .bus_decided(&mesh, claim, Some(outcome), keep_until);
                self.push(&RelayFrame::Ok { rid });
            }
        }
    }
}

impl<S: Store> Conn<S> {
    /// After a roster write at `seq` failed: through a cluster, another node may have
    /// taken that place first (the store refuses a second entry at one sequence). The
    /// mesh is read again; if its roster grew, the change lost that race (its link has
    /// the newer entries now, so its daemon signs again); if not, the store failed.
    async fn lost_roster_race(&self, entry: &MeshEntry, seq: u64) -> bool {
        if self.hub.bus.is_none() {
            return false;
        }
        let mesh = lock(&entry.state).genesis.mesh;
        if let Err(e) = self.hub.follow(&mesh).await {
            tracing::warn!(error = %e, "cannot read the roster from the cluster");
            return false;
        }
        lock(&entry.state).entries.len() as u64 > seq
    }
}

/// How a roster entry the relay will not store is refused: one signed against an older
/// head lost a race with another admin's change (retryable: sign again); anything else
/// is not allowed.
fn refusal(err: &RosterError) -> (ErrorCode, String) {
    match err {
        RosterError::WrongPlace { signed, at } if signed < at => (
            ErrorCode::RosterChanged,
            format!(
                "the roster changed meanwhile (it has {at} entries now); sign the change again and retry"
            ),
        ),
        other => (ErrorCode::NotAuthorized, other.to_string()),
    }
}

impl<S: Store> Conn<S> {
    /// Record refusals of stored claims (for claimants that come back to hear them), and
    /// forget the refusals evicted to make room. A failure is logged: the claimant that was
    /// connected heard it already, and one that is away finds the claim waiting (an admin
    /// refuses it again).
    async fn keep_refusals(
        &self,
        stored: Vec<ClaimId>,
        refusal: ClaimOutcome,
        keep_until: i64,
        evicted: Vec<ClaimId>,
    ) {
        if !stored.is_empty()
            && let Err(e) = self
                .hub
                .store
                .decide_claims(stored, refusal, keep_until)
                .await
        {
            tracing::warn!(error = %e, "cannot record a claim's refusal");
        }
        if !evicted.is_empty()
            && let Err(e) = self.hub.store.delete_claims(evicted).await
        {
            tracing::warn!(error = %e, "cannot forget old claim refusals (they expire anyway)");
        }
    }
}
