//! The relay's live state: every mesh with its roster, invites, connected links, known
//! sessions and pending claims. Durable parts are mirrored in the [`Store`]; the hub is
//! rebuilt from it at startup.
//!
//! Locking: one `std::sync::Mutex` per mesh, held only for in-memory work (never across
//! an `.await`); changes that must be durable before they take effect (roster entries,
//! invites) are serialized per mesh by an async `admin` lock held across the store write.

use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::message::SignedPresence;
use claudemesh_schema::roster::{InviteCap, MeshGenesis, Roster, RosterEntry};
use claudemesh_schema::wire::{self, ClaimRequest, ErrorCode, PresenceRecord, RelayFrame};
use claudemesh_schema::{ClaimId, InviteId, MeshId, MessageId, SessionId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::limits::{KeyedLimiter, NonceCache};
use crate::store::{Snapshot, Store};

/// Lock a std mutex, recovering from poisoning (a panicked holder leaves plain data).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Encode a relay frame. Only absurd sizes fail; those are logged and dropped.
pub(crate) fn frame(f: &RelayFrame) -> Option<Bytes> {
    match wire::encode(f) {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode relay frame");
            None
        }
    }
}

/// An error frame.
pub(crate) fn error_frame(rid: Option<u64>, code: ErrorCode, message: &str, fatal: bool) -> Bytes {
    frame(&RelayFrame::Error {
        rid,
        code,
        message: message.to_string(),
        fatal,
        retry_ms: None,
    })
    .unwrap_or_default()
}

/// A `deliver` frame around already-encoded envelope JSON, without re-encoding it.
pub(crate) fn deliver_frame(envelope_json: &[u8], at: i64) -> Bytes {
    let mut v = Vec::with_capacity(envelope_json.len() + 40);
    v.extend_from_slice(br#"{"t":"deliver","at":"#);
    v.extend_from_slice(at.to_string().as_bytes());
    v.extend_from_slice(br#","env":"#);
    v.extend_from_slice(envelope_json);
    v.push(b'}');
    Bytes::from(v)
}

/// Most bytes of control frames a connection may leave unread before it is closed.
pub(crate) const CONTROL_LIMIT: usize = 64 << 20;

/// The sending side of a connection, as the hub sees it.
///
/// Two queues: control frames (acks, receipts, presence, roster, claims), which cannot be
/// recovered if lost, and envelope deliveries, which can, because every envelope is in the
/// recipient's mailbox until acknowledged. A full control queue means the peer is stuck:
/// the connection is closed. A full delivery queue only marks the link as lagging: the live
/// copy is skipped and the connection replays its mailbox once it has caught up.
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes of control frames queued and not yet written.
    pub(crate) queued: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) data: mpsc::Sender<Bytes>,
    pub(crate) close: CancellationToken,
    pub(crate) lagged: Arc<tokio::sync::Notify>,
}

impl LinkHandle {
    /// Queue a control frame without waiting. Control frames come in bursts (a commit
    /// acknowledges a whole batch of sends at once), so the queue is not bounded by a
    /// channel; a peer that leaves more than [`CONTROL_LIMIT`] bytes unread is closed.
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        let n = frame.len();
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > CONTROL_LIMIT {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            tracing::warn!(
                link = self.id,
                "link does not read its control frames, closing it"
            );
            self.close.cancel();
            return false;
        }
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queue an envelope delivery without waiting; a full queue marks the link lagging.
    pub(crate) fn push_data(&self, frame: Bytes) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.data.try_send(frame) {
            self.lagged.notify_one();
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    pub(crate) presence: SignedPresence,
    pub(crate) online: bool,
    pub(crate) last_seen: i64,
}

impl SessionState {
    pub(crate) fn record(&self) -> PresenceRecord {
        PresenceRecord {
            presence: self.presence.clone(),
            online: self.online,
            last_seen: self.last_seen,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct InviteState {
    pub(crate) cap: InviteCap,
    pub(crate) uses: u32,
    pub(crate) revoked: bool,
}

impl InviteState {
    /// Why this invite cannot be claimed now, if it cannot.
    pub(crate) fn refusal(&self, now: i64) -> Option<(ErrorCode, &'static str)> {
        if self.revoked {
            Some((
                ErrorCode::InviteRevoked,
                "this invite was revoked; ask for a new one",
            ))
        } else if now > self.cap.expires_at {
            Some((
                ErrorCode::InviteExpired,
                "this invite has expired; ask for a new one",
            ))
        } else if self.uses >= self.cap.max_uses {
            Some((
                ErrorCode::InviteUsedUp,
                "this invite has no uses left; ask for a new one",
            ))
        } else {
            None
        }
    }
}

#[derive(Debug)]
pub(crate) struct PendingClaim {
    pub(crate) request: ClaimRequest,
    pub(crate) cap: InviteCap,
    pub(crate) at: i64,
    pub(crate) claimant: LinkHandle,
}

/// One mesh.
#[derive(Debug)]
pub(crate) struct MeshState {
    pub(crate) genesis: MeshGenesis,
    pub(crate) roster: Roster,
    pub(crate) entries: Vec<RosterEntry>,
    pub(crate) invites: HashMap<InviteId, InviteState>,
    pub(crate) links: HashMap<MemberKey, LinkHandle>,
    pub(crate) sessions: HashMap<SessionId, SessionState>,
    pub(crate) claims: HashMap<ClaimId, PendingClaim>,
    /// Undelivered envelopes stored, and their bytes (for the quota).
    pub(crate) stored: (u64, u64),
}

impl MeshState {
    pub(crate) fn new(
        genesis: MeshGenesis,
    ) -> Result<Self, claudemesh_schema::roster::RosterError> {
        let roster = Roster::from_genesis(&genesis)?;
        Ok(Self {
            genesis,
            roster,
            entries: Vec::new(),
            invites: HashMap::new(),
            links: HashMap::new(),
            sessions: HashMap::new(),
            claims: HashMap::new(),
            stored: (0, 0),
        })
    }

    /// Send a frame to every link except `except`.
    pub(crate) fn broadcast(&self, frame: &Bytes, except: Option<&MemberKey>) {
        for (m, l) in &self.links {
            if Some(m) != except {
                l.push(frame.clone());
            }
        }
    }

    pub(crate) fn admin_links(&self) -> Vec<LinkHandle> {
        self.links
            .iter()
            .filter(|(m, _)| self.roster.role(m).is_some_and(|r| r.is_admin()))
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// A mesh plus the lock serializing its durable changes.
#[derive(Debug)]
pub(crate) struct MeshEntry {
    pub(crate) state: Mutex<MeshState>,
    pub(crate) admin: tokio::sync::Mutex<()>,
}

/// Ids seen recently, so resends are acknowledged without being forwarded twice.
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

const RECENT_CAP: usize = 200_000;

impl RecentIds {
    /// Was `id` accepted recently?
    pub(crate) fn contains(&self, id: &MessageId) -> bool {
        self.set.contains(id)
    }

    /// Forget `id` (its store write failed; a resend must be stored).
    pub(crate) fn remove(&mut self, id: &MessageId) {
        self.set.remove(id);
    }

    /// Record `id`; false if it was already recent.
    pub(crate) fn insert(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// Counters for `/health` (and, later, `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) links: AtomicU64,
    pub(crate) envelopes: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    /// Envelopes by route kind ([`crate::metrics::ROUTE_KINDS`]).
    pub(crate) routed: [AtomicU64; 4],
    pub(crate) envelope_commit: crate::metrics::Histogram,
    pub(crate) op_commit: crate::metrics::Histogram,
}

/// Point-in-time sums over all meshes.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    pub(crate) stored: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) queued_bytes: u64,
}

/// The relay's shared state.
#[derive(Debug)]
pub(crate) struct Hub<S> {
    pub(crate) store: S,
    pub(crate) cfg: RelayConfig,
    /// Who may create meshes (policy, per-address limit, creation tokens).
    pub(crate) admission: crate::admission::Admission,
    meshes: RwLock<HashMap<MeshId, Arc<MeshEntry>>>,
    invite_index: Mutex<HashMap<InviteId, MeshId>>,
    pub(crate) nonces: Mutex<NonceCache>,
    pub(crate) handshakes: Mutex<KeyedLimiter<IpAddr>>,
    pub(crate) recent: Mutex<RecentIds>,
    next_id: AtomicU64,
    pub(crate) stats: Stats,
    /// Bytes of snapshot uploads held in memory across links.
    pub(crate) upload_bytes: Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) shutdown: CancellationToken,
    frame_log: Option<Mutex<std::fs::File>>,
}

impl<S: Store> Hub<S> {
    pub(crate) fn new(store: S, cfg: RelayConfig, snap: Snapshot) -> Self {
        let mut meshes = HashMap::new();
        let mut invite_index = HashMap::new();
        for (g, entries) in snap.meshes {
            let id = g.mesh;
            let mut st = match MeshState::new(g) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(mesh = %id.short(), error = %e, "stored mesh genesis invalid; skipping mesh");
                    continue;
                }
            };
            for e in entries {
                if let Err(err) = st.roster.apply(&e) {
                    tracing::error!(mesh = %id.short(), error = %err, "stored roster entry invalid; skipping it");
                    continue;
                }
                st.entries.push(e);
            }
            if let Some(u) = snap.usage.get(&id) {
                st.stored = *u;
            }
            meshes.insert(id, st);
        }
        for (cap, uses, revoked) in snap.invites {
            if let Some(m) = meshes.get_mut(&cap.mesh) {
                invite_index.insert(cap.id, cap.mesh);
                m.invites.insert(cap.id, InviteState { cap, uses, revoked });
            }
        }
        for (p, last_seen) in snap.presence {
            if let Some(m) = meshes.get_mut(&p.mesh) {
                m.sessions.insert(
                    p.session,
                    SessionState {
                        presence: p,
                        online: false,
                        last_seen,
                    },
                );
            }
        }
        let meshes = meshes
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Arc::new(MeshEntry {
                        state: Mutex::new(v),
                        admin: tokio::sync::Mutex::new(()),
                    }),
                )
            })
            .collect();
        let handshakes = KeyedLimiter::new(cfg.handshake_rate, cfg.handshake_burst);
        let frame_log = cfg.frame_log.as_ref().and_then(|p| {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                Ok(f) => Some(Mutex::new(f)),
                Err(e) => {
                    tracing::error!(path = %p.display(), error = %e, "cannot open frame log");
                    None
                }
            }
        });
        Self {
            store,
            admission: crate::admission::Admission::new(&cfg),
            cfg,
            meshes: RwLock::new(meshes),
            invite_index: Mutex::new(invite_index),
            nonces: Mutex::new(NonceCache::default()),
            handshakes: Mutex::new(handshakes),
            recent: Mutex::new(RecentIds::default()),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            upload_bytes: Default::default(),
            shutdown: CancellationToken::new(),
            frame_log,
        }
    }

    /// Append a received frame to the debugging frame log, if one is configured.
    pub(crate) fn log_frame(&self, frame: &[u8]) {
        if let Some(f) = &self.frame_log {
            use std::io::Write as _;
            let mut f = lock(f);
            let _ = f.write_all(&(frame.len() as u32).to_be_bytes());
            let _ = f.write_all(frame);
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn mesh(&self, id: &MeshId) -> Option<Arc<MeshEntry>> {
        self.meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Stored envelopes and queued bytes, summed over meshes and links.
    pub(crate) fn gauges(&self) -> Gauges {
        let meshes: Vec<Arc<MeshEntry>> = self
            .meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut g = Gauges::default();
        for m in meshes {
            let st = lock(&m.state);
            g.stored += st.stored.0;
            g.stored_bytes += st.stored.1;
            g.queued_bytes += st
                .links
                .values()
                .map(|l| l.queued.load(Ordering::Relaxed) as u64)
                .sum::<u64>();
        }
        g
    }

    pub(crate) fn mesh_count(&self) -> usize {
        self.meshes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn insert_mesh(&self, st: MeshState) -> bool {
        let mut w = self.meshes.write().unwrap_or_else(|p| p.into_inner());
        if w.contains_key(&st.genesis.mesh) {
            return false;
        }
        w.insert(
            st.genesis.mesh,
            Arc::new(MeshEntry {
                state: Mutex::new(st),
                admin: tokio::sync::Mutex::new(()),
            }),
        );
        true
    }

    pub(crate) fn index_invite(&self, id: InviteId, mesh: MeshId) {
        lock(&self.invite_index).entry(id).or_insert(mesh);
    }

    pub(crate) fn invite_mesh(&self, id: &InviteId) -> Option<MeshId> {
        lock(&self.invite_index).get(id).copied()
    }

    pub(crate) fn handshake_allowed(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        lock(&self.handshakes).take(&ip, Instant::now())
    }
}
