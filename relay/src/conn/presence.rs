//! Presence: signed session announcements fanned out to the mesh, and departures.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{ErrorCode, RelayFrame};
use claudemesh_schema::{MeshId, SessionId};
use std::sync::Arc;
use std::time::Instant;

use super::{Conn, End};
use crate::hub::{MeshEntry, SessionState, frame, lock};
use crate::store::Store;

/// Most sessions one member may have online in a mesh.
const MAX_SESSIONS_PER_MEMBER: usize = 256;
/// Most sessions, online or not, the relay remembers per member in a mesh.
const MAX_KNOWN_SESSIONS_PER_MEMBER: usize = 4096;
/// Largest sealed profile a presence may carry.
const MAX_PROFILE: usize = 16 * 1024;

impl<S: Store> Conn<S> {
    pub(super) async fn presence(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        p: claudemesh_schema::message::SignedPresence,
    ) -> Result<(), End> {
        if p.mesh != mesh || p.member != member {
            self.error(
                None,
                ErrorCode::NotAuthorized,
                "presence must be for this mesh and member",
            );
            return Ok(());
        }
        if p.profile.len() > MAX_PROFILE {
            self.error(
                None,
                ErrorCode::FrameTooLarge,
                "presence profile exceeds 16 KiB",
            );
            return Ok(());
        }
        // Presence fans out to every link of the mesh: it has its own, smaller budget.
        let allowed = lock(&entry.state)
            .limits(member, &self.hub.cfg)
            .presence
            .take(Instant::now());
        if allowed.is_err() {
            self.error(None, ErrorCode::RateLimited, "too many updates; slow down");
            return Ok(());
        }
        if p.verify().is_err() {
            self.error(
                None,
                ErrorCode::BadSignature,
                "presence signature does not verify",
            );
            return Ok(());
        }
        let now = now_ms();
        let record = {
            let mut st = lock(&entry.state);
            if let Some(old) = st.sessions.get(&p.session) {
                if old.presence.member != member {
                    drop(st);
                    self.error(
                        None,
                        ErrorCode::NotAuthorized,
                        "session belongs to another member",
                    );
                    return Ok(());
                }
                if old.presence.seq > p.seq && old.online {
                    return Ok(());
                }
            } else {
                // The cap counts sessions online now (sessions end all the time: each Claude
                // Code session is a new one). Offline sessions stay routable (their messages
                // wait for the member) up to a much larger bound; beyond it the member's
                // session offline longest is forgotten.
                let mine: Vec<(SessionId, bool, i64)> = st
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.presence.member == member)
                    .map(|(id, s)| (*id, s.online, s.last_seen))
                    .collect();
                if mine.iter().filter(|m| m.1).count() >= MAX_SESSIONS_PER_MEMBER {
                    drop(st);
                    self.error(
                        None,
                        ErrorCode::QuotaExceeded,
                        "too many sessions online for this member",
                    );
                    return Ok(());
                }
                if mine.len() >= MAX_KNOWN_SESSIONS_PER_MEMBER
                    && let Some(oldest) = mine.iter().filter(|m| !m.1).min_by_key(|m| m.2)
                {
                    st.sessions.remove(&oldest.0);
                }
            }
            let s = SessionState {
                presence: p.clone(),
                online: true,
                last_seen: now,
                node: None,
                lapsed: false,
            };
            let rec = s.record();
            st.sessions.insert(p.session, s);
            if let Some(f) = frame(&RelayFrame::Presence(rec.clone())) {
                st.broadcast(&f, Some(&member));
                self.hub.bus_mesh(
                    &p.mesh,
                    crate::cluster::bus::Kind::Presence,
                    Some(&member),
                    &f,
                );
            }
            rec
        };
        let _ = self.hub.store.put_presence(record.presence, now).await;
        Ok(())
    }

    pub(super) async fn depart(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        session: SessionId,
    ) {
        let now = now_ms();
        {
            let mut st = lock(&entry.state);
            let Some(s) = st.sessions.get_mut(&session) else {
                return;
            };
            if s.presence.member != member {
                return;
            }
            s.online = false;
            s.last_seen = now;
            if let Some(f) = frame(&RelayFrame::Depart { session, at: now }) {
                st.broadcast(&f, Some(&member));
                self.hub
                    .bus_mesh(&mesh, crate::cluster::bus::Kind::Depart, Some(&member), &f);
            }
        }
        let _ = self
            .hub
            .store
            .touch_presence(mesh, vec![session], now)
            .await;
    }
}
