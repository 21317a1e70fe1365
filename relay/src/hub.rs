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
use claudemesh_schema::wire::{
    self, ClaimOutcome, ClaimRequest, ErrorCode, PresenceRecord, RelayFrame,
};
use claudemesh_schema::{ClaimId, InviteId, MeshId, MessageId, SessionId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RelayConfig;
use crate::limits::{Gate, GateLimits, KeyedLimiter, NonceCache, TokenBucket};
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

/// Most bytes of answers a connection may have queued before its hello.
pub(crate) const PREAUTH_QUEUE: usize = 64 << 10;
/// The relay stops reading a connection while this many bytes of answers to it wait.
pub(crate) const READ_PAUSE: usize = 1 << 20;
/// Once the relay-wide budget is spent, links holding more than this are closed first.
const FAT_LINK: usize = 1 << 20;

/// Bytes queued to all connections, against `queued_bytes_budget`.
#[derive(Debug)]
pub(crate) struct QueueBudget {
    used: AtomicUsize,
    max: usize,
}

impl QueueBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn spent(&self) -> bool {
        self.used() > self.max
    }
}

/// What a connection's reader, writer and the hub share about its queues.
#[derive(Debug)]
pub(crate) struct LinkQueues {
    /// Bytes of control frames queued and not yet written.
    control: AtomicUsize,
    /// Bytes of envelope deliveries (and op pages) queued and not yet written.
    data: AtomicUsize,
    /// Control bytes beyond which the link is closed (small before hello).
    limit: AtomicUsize,
    /// Delivery bytes beyond which live copies are skipped (the mailbox has them).
    data_limit: usize,
    budget: Arc<QueueBudget>,
    /// Woken by the writer after each flush.
    drained: tokio::sync::Notify,
    /// Envelope ids handed to this link and not yet acknowledged: only these can be
    /// acknowledged, so an ack of anything else never reaches the store.
    delivered: Mutex<HashSet<MessageId>>,
}

impl LinkQueues {
    pub(crate) fn new(budget: Arc<QueueBudget>, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            control: AtomicUsize::new(0),
            data: AtomicUsize::new(0),
            limit: AtomicUsize::new(PREAUTH_QUEUE),
            data_limit: (limit / 4).max(READ_PAUSE),
            budget,
            drained: tokio::sync::Notify::new(),
            delivered: Mutex::new(HashSet::new()),
        })
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.control.load(Ordering::Relaxed) + self.data.load(Ordering::Relaxed)
    }

    /// Raise the control limit once the connection is authenticated.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The writer took a control frame of `n` bytes off the queue.
    pub(crate) fn took_control(&self, n: usize) {
        self.control.fetch_sub(n, Ordering::Relaxed);
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// The writer took a delivery of `n` bytes off the queue.
    pub(crate) fn took_data(&self, n: usize) {
        self.data.fetch_sub(n, Ordering::Relaxed);
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// The writer flushed.
    pub(crate) fn flushed(&self) {
        self.drained.notify_waiters();
    }

    /// Wait until `ready` holds, re-checking after every flush.
    pub(crate) async fn wait_until(&self, ready: impl Fn(&Self) -> bool) {
        loop {
            let flushed = self.drained.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if ready(self) {
                return;
            }
            flushed.await;
        }
    }

    /// Is the reader to pause (answers to this peer are piling up)?
    pub(crate) fn backed_up(&self) -> bool {
        self.queued() > READ_PAUSE
    }

    /// Record that `id` was handed to this link.
    fn delivering(&self, id: MessageId) {
        lock(&self.delivered).insert(id);
    }

    /// Keep the ids this link was given (and forget them: each is acknowledged once).
    pub(crate) fn acknowledgeable(&self, ids: &mut Vec<MessageId>) {
        let mut d = lock(&self.delivered);
        ids.retain(|id| d.remove(id));
    }
}

/// The sending side of a connection, as the hub sees it.
///
/// Two queues: control frames (acks, receipts, presence, roster, claims), which cannot be
/// recovered if lost, and envelope deliveries, which can, because every envelope is in the
/// recipient's mailbox until acknowledged. A control queue over its limit means the peer is
/// stuck: the connection is closed. A full delivery queue only marks the link as lagging:
/// the live copy is skipped and the connection replays its mailbox once it has caught up.
/// Both count against the relay-wide [`QueueBudget`].
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::UnboundedSender<Bytes>,
    pub(crate) data: mpsc::Sender<Bytes>,
    pub(crate) queues: Arc<LinkQueues>,
    pub(crate) close: CancellationToken,
    pub(crate) lagged: Arc<tokio::sync::Notify>,
}

impl LinkHandle {
    /// End the link: a fatal error frame saying why, then close.
    pub(crate) fn end(&self, code: ErrorCode, message: &str) {
        self.push(error_frame(None, code, message, true));
        self.close.cancel();
    }

    /// Queue a control frame without waiting. Control frames come in bursts (a commit
    /// acknowledges a whole batch of sends at once), so the queue is not bounded by a
    /// channel; a peer that leaves more than its limit unread is closed, and so is a link
    /// holding more than [`FAT_LINK`] once the relay-wide budget is spent.
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        let n = frame.len();
        let q = &self.queues;
        let own = q.control.fetch_add(n, Ordering::Relaxed) + n;
        q.budget.used.fetch_add(n, Ordering::Relaxed);
        let over = own > q.limit.load(Ordering::Relaxed)
            || (q.budget.spent() && own + q.data.load(Ordering::Relaxed) > FAT_LINK);
        if over {
            q.took_control(n);
            tracing::warn!(
                link = self.id,
                queued = own,
                "link does not read what it is sent, closing it"
            );
            self.close.cancel();
            return false;
        }
        if self.tx.send(frame).is_err() {
            q.took_control(n);
            return false;
        }
        true
    }

    /// Queue envelope `id`'s delivery without waiting; a full queue (or a spent budget)
    /// marks the link lagging, and the mailbox replay brings it later.
    pub(crate) fn push_delivery(&self, id: MessageId, frame: Bytes) {
        let q = &self.queues;
        q.delivering(id);
        let n = frame.len();
        if q.data.load(Ordering::Relaxed) + n > q.data_limit || q.budget.spent() {
            self.lagged.notify_one();
            return;
        }
        q.data.fetch_add(n, Ordering::Relaxed);
        q.budget.used.fetch_add(n, Ordering::Relaxed);
        if let Err(e) = self.data.try_send(frame) {
            q.took_data(n);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.lagged.notify_one();
            }
        }
    }

    /// Queue a delivery (`id`) or an op page (`None`), waiting while this link's delivery
    /// queue is full: for replays, which must not be skipped. Err when the link closed.
    pub(crate) async fn send_data(&self, id: Option<MessageId>, frame: Bytes) -> Result<(), ()> {
        let q = &self.queues;
        let n = frame.len();
        tokio::select! {
            _ = q.wait_until(|q| {
                let d = q.data.load(Ordering::Relaxed);
                d == 0 || d + n <= q.data_limit
            }) => {}
            _ = self.close.cancelled() => return Err(()),
        }
        if let Some(id) = id {
            q.delivering(id);
        }
        q.data.fetch_add(n, Ordering::Relaxed);
        q.budget.used.fetch_add(n, Ordering::Relaxed);
        if self.data.send(frame).await.is_err() {
            q.took_data(n);
            return Err(());
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    pub(crate) presence: SignedPresence,
    pub(crate) online: bool,
    pub(crate) last_seen: i64,
    /// On a cluster, the other node its link is up at (`None`: here, or not known):
    /// online only while that node holds its lease.
    pub(crate) node: Option<String>,
    /// Taken offline here because its node's lease lapsed: back online when the node is
    /// heard again.
    pub(crate) lapsed: bool,
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

/// Most refused claims a mesh keeps for claimants that are away.
const MAX_REFUSALS_KEPT: usize = 64;

/// How long a refusal is kept for a claimant that is away, ms.
pub(crate) const REFUSAL_KEPT_MS: i64 = 24 * 3600 * 1000;

/// What [`MeshState::decide`] leaves the store to do.
#[derive(Debug)]
pub(crate) struct Decided {
    /// The claim is stored: record its outcome.
    pub(crate) durable: bool,
    /// Older refusals dropped to make room: forget them.
    pub(crate) evicted: Vec<ClaimId>,
}

/// An invite claim the relay holds: waiting for an admin, or decided and waiting for its
/// claimant to come back for the answer (durable claims only; see
/// [`ClaimRequest::durable`]).
#[derive(Debug)]
pub(crate) struct PendingClaim {
    pub(crate) request: ClaimRequest,
    pub(crate) cap: InviteCap,
    pub(crate) at: i64,
    /// Forgotten at, unix ms (the sweeper drops it, store and memory).
    pub(crate) expires_at: i64,
    /// The claimant's connection while one waits on it.
    pub(crate) claimant: Option<LinkHandle>,
    /// The answer, once decided.
    pub(crate) outcome: Option<ClaimOutcome>,
}

impl PendingClaim {
    /// Still waiting for an admin's decision.
    pub(crate) fn waiting(&self) -> bool {
        self.outcome.is_none()
    }

    /// Give the answer to the claimant if one waits on a connection (and end it).
    pub(crate) fn tell(&mut self) {
        if let (Some(c), Some(o)) = (self.claimant.take(), &self.outcome) {
            if let Some(f) = frame(&RelayFrame::ClaimResult(o.clone())) {
                c.push(f);
            }
            c.close.cancel();
        }
    }
}

/// One mesh.
#[derive(Debug)]
pub(crate) struct MeshState {
    pub(crate) genesis: MeshGenesis,
    pub(crate) roster: Roster,
    pub(crate) entries: Vec<RosterEntry>,
    pub(crate) invites: HashMap<InviteId, InviteState>,
    pub(crate) links: HashMap<MemberKey, LinkHandle>,
    /// Links closed because their member linked again through another node: they end
    /// without taking its sessions offline (the newer link holds them).
    pub(crate) moved: HashSet<u64>,
    pub(crate) sessions: HashMap<SessionId, SessionState>,
    pub(crate) claims: HashMap<ClaimId, PendingClaim>,
    /// Undelivered envelopes stored, and their bytes (for the quota).
    pub(crate) stored: (u64, u64),
    /// Rate limits per member, kept across its reconnects.
    limits: HashMap<MemberKey, MemberLimits>,
    /// Bytes of the op log and snapshot stored (for the op quota).
    pub(crate) op_bytes: u64,
}

/// Bytes the relay stores, against `disk_budget_bytes`: undelivered envelopes and the
/// op logs (with their snapshots), summed over meshes.
#[derive(Debug)]
pub(crate) struct DiskUsage {
    pub(crate) envelopes: AtomicU64,
    pub(crate) ops: AtomicU64,
    max: u64,
}

impl DiskUsage {
    pub(crate) fn new(max: u64) -> Self {
        Self {
            envelopes: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            max,
        }
    }

    /// Would storing `bytes` more stay within the budget?
    pub(crate) fn room_for(&self, bytes: u64) -> bool {
        self.envelopes.load(Ordering::Relaxed) + self.ops.load(Ordering::Relaxed) + bytes
            <= self.max
    }
}

/// A member's budgets: writes (envelopes, ops, acks, pings) and presence updates.
#[derive(Debug)]
pub(crate) struct MemberLimits {
    pub(crate) writes: TokenBucket,
    pub(crate) presence: TokenBucket,
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
            moved: HashSet::new(),
            sessions: HashMap::new(),
            claims: HashMap::new(),
            stored: (0, 0),
            limits: HashMap::new(),
            op_bytes: 0,
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

    /// Count one more stored envelope of `bytes`.
    pub(crate) fn charge(&mut self, disk: &DiskUsage, bytes: u64) {
        self.stored.0 += 1;
        self.stored.1 += bytes;
        disk.envelopes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Count `n` stored envelopes of `bytes` in all as gone.
    pub(crate) fn free(&mut self, disk: &DiskUsage, n: u64, bytes: u64) {
        let bytes = bytes.min(self.stored.1);
        self.stored.0 = self.stored.0.saturating_sub(n);
        self.stored.1 -= bytes;
        disk.envelopes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Set what is stored for the mesh to what the store counts (a cluster, where other
    /// nodes store and free too).
    pub(crate) fn set_stored(&mut self, disk: &DiskUsage, stored: (u64, u64)) {
        disk.envelopes.fetch_sub(self.stored.1, Ordering::Relaxed);
        disk.envelopes.fetch_add(stored.1, Ordering::Relaxed);
        self.stored = stored;
    }

    /// Set the op log's size after a change of unknown size (a snapshot compaction).
    pub(crate) fn set_op_bytes(&mut self, disk: &DiskUsage, n: u64) {
        disk.ops.fetch_sub(self.op_bytes, Ordering::Relaxed);
        disk.ops.fetch_add(n, Ordering::Relaxed);
        self.op_bytes = n;
    }

    /// `member`'s rate limits (created full on first use; kept while the relay runs, so
    /// reconnecting does not refill them).
    pub(crate) fn limits(&mut self, member: MemberKey, cfg: &RelayConfig) -> &mut MemberLimits {
        self.limits.entry(member).or_insert_with(|| {
            let now = Instant::now();
            MemberLimits {
                writes: TokenBucket::new(cfg.member_rate, cfg.member_burst, now),
                presence: TokenBucket::new(cfg.presence_rate, cfg.presence_burst, now),
            }
        })
    }

    /// Record the answer to a waiting claim and give it to its claimant if one waits on a
    /// connection. A claim that is not durable is forgotten at once; a durable one keeps
    /// its answer until `keep_until` for a claimant that comes back. `None` if the claim
    /// is not waiting (decided already, or withdrawn).
    pub(crate) fn decide(
        &mut self,
        id: ClaimId,
        outcome: ClaimOutcome,
        keep_until: i64,
    ) -> Option<Decided> {
        let c = self.claims.get_mut(&id).filter(|c| c.waiting())?;
        c.outcome = Some(outcome);
        c.expires_at = keep_until;
        c.tell();
        let durable = c.request.durable;
        if !durable {
            self.claims.remove(&id);
        }
        // Refusals are kept only as a courtesy to a claimant that is away; the oldest go
        // first, so refused claims cannot pile up (a claim costs its maker nothing but a
        // handshake).
        let mut refused: Vec<(i64, ClaimId)> = self
            .claims
            .iter()
            .filter(|(_, c)| matches!(c.outcome, Some(ClaimOutcome::Refused { .. })))
            .map(|(k, c)| (c.at, *k))
            .collect();
        let mut evicted = Vec::new();
        if refused.len() > MAX_REFUSALS_KEPT {
            refused.sort();
            for (_, k) in &refused[..refused.len() - MAX_REFUSALS_KEPT] {
                self.claims.remove(k);
                evicted.push(*k);
            }
        }
        Some(Decided { durable, evicted })
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

/// Ids accepted recently and whose they are (mesh, sender), so resends are acknowledged
/// without being forwarded twice and an id another sender already used is refused.
///
/// It knows every id accepted since `complete_after` (unix ms: the relay's start, then the
/// acceptance time of the newest id it had to forget). An id whose v7 timestamp is after
/// that (with a clock margin) and which it does not know is fresh; any other unknown id
/// must be looked up in the store before it is forwarded.
#[derive(Debug)]
pub(crate) struct RecentIds {
    owners: HashMap<MessageId, (MeshId, MemberKey)>,
    order: VecDeque<(MessageId, i64)>,
    complete_after: i64,
}

const RECENT_CAP: usize = 200_000;

impl RecentIds {
    pub(crate) fn new(started_at: i64) -> Self {
        Self {
            owners: HashMap::new(),
            order: VecDeque::new(),
            complete_after: started_at,
        }
    }

    /// Who sent `id`, if it was accepted recently.
    pub(crate) fn owner(&self, id: &MessageId) -> Option<(MeshId, MemberKey)> {
        self.owners.get(id).copied()
    }

    /// Can an id this set does not know still have been accepted before (before a restart,
    /// or forgotten since)? Then the store decides.
    pub(crate) fn may_be_known_elsewhere(&self, id: &MessageId) -> bool {
        let Some(ts) = id.0.get_timestamp() else {
            return true;
        };
        let (secs, nanos) = ts.to_unix();
        let ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
        ms <= self.complete_after + wire::HELLO_WINDOW_MS
    }

    /// Forget `id` if `owner` holds it (its store write failed; a resend must be stored).
    pub(crate) fn release(&mut self, id: &MessageId, owner: (MeshId, MemberKey)) {
        if self.owners.get(id) == Some(&owner) {
            self.owners.remove(id);
        }
    }

    /// Record `id` as `owner`'s (accepted at `now`); false if another owner holds it.
    pub(crate) fn claim(&mut self, id: MessageId, owner: (MeshId, MemberKey), now: i64) -> bool {
        match self.owners.get(&id) {
            Some(o) => *o == owner,
            None => {
                self.owners.insert(id, owner);
                self.order.push_back((id, now));
                if self.order.len() > RECENT_CAP
                    && let Some((old, at)) = self.order.pop_front()
                {
                    self.owners.remove(&old);
                    self.complete_after = self.complete_after.max(at);
                }
                true
            }
        }
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
    /// Acknowledged ids dropped before the store: not given to that link, or over budget.
    pub(crate) acks_dropped: AtomicU64,
    /// Connections closed, by [`crate::conn::END_KINDS`].
    pub(crate) closed: [AtomicU64; 7],
    /// Connections refused at accept by the connection caps.
    pub(crate) refused_at_accept: AtomicU64,
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
    /// The other relay nodes of a cluster (`None`: this relay is alone).
    pub(crate) bus: Option<Arc<crate::cluster::bus::Bus>>,
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
    pub(crate) upload_bytes: Arc<AtomicUsize>,
    pub(crate) shutdown: CancellationToken,
    frame_log: Option<Mutex<std::fs::File>>,
    /// Caps on open connections.
    pub(crate) gate: Arc<Gate>,
    /// New connections per address.
    accepts: Mutex<KeyedLimiter<IpAddr>>,
    /// Bytes queued to all connections.
    pub(crate) budget: Arc<QueueBudget>,
    /// Bytes stored, against the disk budget.
    pub(crate) disk: DiskUsage,
    /// Envelopes failing to store (a full disk): senders back off.
    pub(crate) storage: Mutex<crate::limits::StorageFault>,
    /// Every task the relay spawns, so shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    /// File chunks kept for members; `None` with `blob_storage = false`.
    pub(crate) blobs: Option<Arc<dyn crate::blobs::BlobStore>>,
    /// Bytes and chunks the blob store holds, against its quotas.
    pub(crate) blob_usage: Mutex<crate::blobs::BlobUsage>,
    /// Chunks failing to store (a full disk): uploaders back off.
    pub(crate) blob_fault: Mutex<crate::limits::StorageFault>,
    /// On a cluster, which relay nodes are alive.
    pub(crate) leases: Mutex<crate::cluster::bus::Leases>,
}

impl<S: Store> Hub<S> {
    pub(crate) fn new(store: S, cfg: RelayConfig, snap: Snapshot) -> Self {
        let disk = DiskUsage::new(cfg.disk_budget_bytes);
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
            // Stored entries are a chain: one that does not follow ends it (what follows
            // would not chain either), so members are never handed a gap.
            for e in entries {
                if let Err(err) = st.roster.apply(&e) {
                    tracing::error!(mesh = %id.short(), seq = st.entries.len(), error = %err, "stored roster entry invalid; the roster ends before it");
                    break;
                }
                st.entries.push(e);
            }
            if let Some(u) = snap.usage.get(&id) {
                st.stored = *u;
                disk.envelopes.fetch_add(u.1, Ordering::Relaxed);
            }
            if let Some(&n) = snap.op_usage.get(&id) {
                st.op_bytes = n;
                disk.ops.fetch_add(n, Ordering::Relaxed);
            }
            meshes.insert(id, st);
        }
        for (cap, uses, revoked) in snap.invites {
            if let Some(m) = meshes.get_mut(&cap.mesh) {
                invite_index.insert(cap.id, cap.mesh);
                m.invites.insert(cap.id, InviteState { cap, uses, revoked });
            }
        }
        for c in snap.claims {
            let Some(m) = meshes.get_mut(&c.mesh) else {
                continue;
            };
            let Some(inv) = m.invites.get(&c.request.invite) else {
                continue;
            };
            let cap = inv.cap.clone();
            m.claims.insert(
                c.id,
                PendingClaim {
                    request: c.request,
                    cap,
                    at: c.at,
                    expires_at: c.expires_at,
                    claimant: None,
                    outcome: c.outcome,
                },
            );
        }
        for (p, last_seen) in snap.presence {
            if let Some(m) = meshes.get_mut(&p.mesh) {
                m.sessions.insert(
                    p.session,
                    SessionState {
                        presence: p,
                        online: false,
                        last_seen,
                        node: None,
                        lapsed: false,
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
        // Memory of recent ids starts with those the store accepted just before this start,
        // so only ids timestamped well before it need a store lookup.
        let mut recent = RecentIds::new(claudemesh_schema::now_ms() - crate::store::RECENT_LOAD_MS);
        for (id, mesh, sender, at) in snap.recent {
            recent.claim(id, (mesh, sender), at);
        }
        let handshakes = KeyedLimiter::new(cfg.handshake_rate, cfg.handshake_burst);
        let mut nonces = NonceCache::default();
        let now = claudemesh_schema::now_ms();
        for (n, exp) in snap.nonces {
            nonces.insert(n, now, exp);
        }
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
            bus: None,
            leases: Mutex::new(crate::cluster::bus::Leases::new("", Instant::now())),
            admission: crate::admission::Admission::new(&cfg),
            meshes: RwLock::new(meshes),
            invite_index: Mutex::new(invite_index),
            nonces: Mutex::new(nonces),
            handshakes: Mutex::new(handshakes),
            recent: Mutex::new(recent),
            next_id: AtomicU64::new(1),
            stats: Stats::default(),
            upload_bytes: Default::default(),
            shutdown: CancellationToken::new(),
            frame_log,
            gate: Gate::new(GateLimits {
                total: cfg.max_connections,
                per_address: cfg.max_connections_per_ip,
                preauth: cfg.max_preauth_connections,
                preauth_per_address: cfg.max_preauth_per_ip,
            }),
            budget: QueueBudget::new(cfg.queued_bytes_budget),
            accepts: Mutex::new(KeyedLimiter::new(cfg.accept_rate, cfg.accept_burst)),
            disk,
            storage: Default::default(),
            tasks: TaskTracker::new(),
            blobs: None,
            blob_usage: Default::default(),
            blob_fault: Default::default(),
            cfg,
        }
    }

    /// Keep file chunks in `blobs`, which holds `stored` (per mesh: chunks, bytes).
    pub(crate) fn with_blobs(
        mut self,
        blobs: Arc<dyn crate::blobs::BlobStore>,
        stored: &crate::blobs::Freed,
    ) -> Self {
        self.blobs = Some(blobs);
        self.blob_usage = Mutex::new(crate::blobs::BlobUsage::new(stored));
        self
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

    /// Spawn a tracked task in the current span (shutdown waits for it).
    /// Forget claims past their expiry (the store prunes its rows by the same time); a
    /// claimant still waiting on one hears that it expired.
    pub(crate) fn expire_claims(&self, now: i64) {
        let meshes: Vec<Arc<MeshEntry>> = self
            .meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for e in meshes {
            let mut st = lock(&e.state);
            let gone: Vec<ClaimId> = st
                .claims
                .iter()
                .filter(|(_, c)| c.expires_at < now)
                .map(|(k, _)| *k)
                .collect();
            for id in gone {
                if let Some(mut c) = st.claims.remove(&id)
                    && c.waiting()
                {
                    c.outcome = Some(ClaimOutcome::Refused {
                        code: ErrorCode::NoAdminOnline,
                        message: "no admin answered the claim before it expired; ask for a new invite or run `claudemesh join` again".into(),
                    });
                    c.tell();
                }
            }
        }
    }

    pub(crate) fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use tracing::Instrument as _;
        self.tasks.spawn(fut.in_current_span())
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
        }
        g.queued_bytes = self.budget.used() as u64;
        g
    }

    pub(crate) fn mesh_count(&self) -> usize {
        self.meshes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Bring a mesh's roster up to what the store holds now, when other relay nodes write
    /// it too (a cluster): a member admitted or removed through another node is known
    /// here before its hello is answered, and this node's links hear of the change. With
    /// one relay the store has nothing newer and this does nothing.
    pub(crate) async fn follow(&self, mesh: &MeshId) -> Result<(), crate::store::StoreError> {
        let Some(now) = self.store.mesh_now(*mesh).await? else {
            return Ok(());
        };
        let entry = match self.mesh(mesh) {
            Some(e) => e,
            None => {
                let Ok(st) = MeshState::new(now.genesis.clone()) else {
                    return Ok(());
                };
                self.insert_mesh(st);
                let Some(e) = self.mesh(mesh) else {
                    return Ok(());
                };
                e
            }
        };
        // Serialized with this node's own roster changes.
        let _guard = entry.admin.lock().await;
        let removed: Vec<LinkHandle> = {
            let mut st = lock(&entry.state);
            let have = st.entries.len();
            let mut removed = Vec::new();
            for (seq, e) in now.roster.into_iter().enumerate().skip(have) {
                if let Err(err) = st.roster.apply(&e) {
                    tracing::error!(mesh = %mesh.short(), seq, error = %err, "a roster entry from the cluster does not follow; the roster ends before it");
                    break;
                }
                if let Some(f) = frame(&RelayFrame::Roster {
                    seq: seq as u64,
                    entry: e.clone(),
                }) {
                    st.broadcast(&f, None);
                }
                if e.op == claudemesh_schema::roster::RosterOp::Remove
                    && let Some(l) = st.links.remove(&e.member)
                {
                    removed.push(l);
                }
                // An admission through another node spent a use of its invite here too.
                if let Some(inv) = e.invite
                    && let Some(i) = st.invites.get_mut(&inv)
                {
                    i.uses += 1;
                }
                st.entries.push(e);
            }
            // Claims admitted through another node: a claimant waiting here hears it.
            for (seq, claim, outcome, keep_until) in now.admitted {
                if seq as usize >= have && (seq as usize) < st.entries.len() {
                    let _ = st.decide(claim, outcome, keep_until);
                }
            }
            // Sessions linked elsewhere: what this node knows of its own links stands. A
            // session kept online through a node whose lease lapsed (killed, it never said
            // its sessions left) or through this node (which holds no link of it) is not.
            let (me, leases) = {
                let l = lock(&self.leases);
                (self.bus.as_ref().map(|b| b.node().to_string()), l.clone())
            };
            let at = Instant::now();
            for now in now.presence {
                let p = now.record;
                if st.links.contains_key(&p.member) || !st.roster.is_member(&p.member) {
                    continue;
                }
                let keep = st
                    .sessions
                    .get(&p.session)
                    .is_none_or(|s| s.presence.member == p.member && s.presence.seq <= p.seq);
                if keep {
                    let online = now.online
                        && now
                            .node
                            .as_deref()
                            .is_none_or(|n| Some(n) != me.as_deref() && leases.alive(n, at));
                    let before = st.sessions.get(&p.session).map(|s| s.online);
                    let s = SessionState {
                        presence: p,
                        online,
                        last_seen: now.last_seen,
                        node: now.node,
                        // Stored online, but its node is not: back when the node is.
                        lapsed: now.online && !online,
                    };
                    // This node's links hear what changed (a presence missed live, a
                    // session gone with its node).
                    let told = match (before, online) {
                        (Some(true), false) => frame(&RelayFrame::Depart {
                            session: s.presence.session,
                            at: s.last_seen,
                        }),
                        (None | Some(false), true) => frame(&RelayFrame::Presence(s.record())),
                        _ => None,
                    };
                    if let Some(f) = told {
                        st.broadcast(&f, Some(&s.presence.member));
                    }
                    st.sessions.insert(s.presence.session, s);
                }
            }
            removed
        };
        for l in removed {
            l.end(
                ErrorCode::NotAMember,
                "this member was removed from the mesh",
            );
        }
        Ok(())
    }

    /// Tell the other nodes' links in `mesh` (not `except`'s) what this node's got.
    pub(crate) fn bus_mesh(
        &self,
        mesh: &MeshId,
        kind: crate::cluster::bus::Kind,
        except: Option<&MemberKey>,
        frame: &Bytes,
    ) {
        if let Some(b) = &self.bus {
            b.to_mesh(mesh, kind, except, frame);
        }
    }

    /// Tell the other nodes that `claim` was decided here (`outcome`), or forgotten
    /// (`None`: withdrawn by its claimant, or fetched by the new member): a claimant may
    /// wait on one of them, and their admins must not decide it again.
    pub(crate) fn bus_decided(
        &self,
        mesh: &MeshId,
        claim: ClaimId,
        outcome: Option<ClaimOutcome>,
        keep_until: i64,
    ) {
        let Some(b) = &self.bus else { return };
        let d = crate::cluster::bus::Decided {
            claim,
            outcome,
            keep_until,
        };
        match serde_json::to_vec(&d) {
            Ok(v) => b.to_mesh(mesh, crate::cluster::bus::Kind::Decided, None, &v.into()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a claim's answer for the other nodes")
            }
        }
    }

    /// Bring an invite up to what the store holds now, when other relay nodes write it
    /// too (a cluster: it may have been published, revoked or spent through another
    /// node), with its mesh's roster, whose admissions count its uses. With one relay the
    /// store has nothing newer and this does nothing.
    pub(crate) async fn follow_invite(
        &self,
        id: &InviteId,
    ) -> Result<(), crate::store::StoreError> {
        let Some((cap, revoked)) = self.store.invite_now(*id).await? else {
            return Ok(());
        };
        let mesh = cap.mesh;
        self.follow(&mesh).await?;
        let Some(entry) = self.mesh(&mesh) else {
            return Ok(());
        };
        self.index_invite(*id, mesh);
        let mut st = lock(&entry.state);
        let uses = st.entries.iter().filter(|e| e.invite == Some(*id)).count() as u32;
        let i = st
            .invites
            .entry(*id)
            .or_insert(InviteState { cap, uses, revoked });
        i.revoked |= revoked;
        Ok(())
    }

    /// Bring the claims this node keeps up to what the store keeps (`stored`, read at
    /// `now`), on a cluster where a claim made or decided through another node may have
    /// been missed live (a bus message is not durable): a waiting claim not known here is
    /// kept and handed to this node's admins, a claim decided elsewhere is decided here
    /// (its claimant, if it waits on this node, hears it), and one gone from the store
    /// (withdrawn, or admitted and fetched) is forgotten unless its claimant waits here.
    pub(crate) async fn follow_claims(&self, stored: Vec<crate::store::StoredClaim>, now: i64) {
        /// A claim this young may be on its way to the store: not forgotten yet.
        const SETTLE_MS: i64 = 60_000;
        let mut by_mesh: HashMap<MeshId, Vec<crate::store::StoredClaim>> = HashMap::new();
        for c in stored.into_iter().filter(|c| c.expires_at > now) {
            by_mesh.entry(c.mesh).or_default().push(c);
        }
        for (mesh, entry) in self.all_meshes() {
            let stored = by_mesh.remove(&mesh).unwrap_or_default();
            // The invites of claims new here, read first (made through another node).
            let unknown: Vec<InviteId> = {
                let st = lock(&entry.state);
                stored
                    .iter()
                    .filter(|c| {
                        !st.claims.contains_key(&c.id)
                            && !st.invites.contains_key(&c.request.invite)
                    })
                    .map(|c| c.request.invite)
                    .collect()
            };
            for id in unknown {
                if let Err(e) = self.follow_invite(&id).await {
                    tracing::warn!(mesh = %mesh.short(), error = %e, "cannot read the invite of a claim made through another node");
                }
            }
            let mut st = lock(&entry.state);
            let ids: HashSet<ClaimId> = stored.iter().map(|c| c.id).collect();
            for c in stored {
                match st.claims.get(&c.id) {
                    None if c.outcome.is_none() => {
                        let Some(cap) = st.invites.get(&c.request.invite).map(|i| i.cap.clone())
                        else {
                            continue;
                        };
                        if let Some(f) = frame(&RelayFrame::ClaimPending {
                            claim: c.id,
                            request: c.request.clone(),
                            cap: cap.clone(),
                            at: c.at,
                        }) {
                            for a in st.admin_links() {
                                a.push(f.clone());
                            }
                        }
                        st.claims.insert(
                            c.id,
                            PendingClaim {
                                request: c.request,
                                cap,
                                at: c.at,
                                expires_at: c.expires_at,
                                claimant: None,
                                outcome: None,
                            },
                        );
                    }
                    Some(local) if local.waiting() => {
                        if let Some(o) = c.outcome {
                            let _ = st.decide(c.id, o, c.expires_at);
                        }
                    }
                    _ => {}
                }
            }
            st.claims.retain(|id, c| {
                ids.contains(id)
                    || c.claimant.is_some()
                    || !c.request.durable
                    || now - c.at < SETTLE_MS
            });
        }
    }

    /// Hand `frame` to `member` if it is connected to another node (`id`: a delivery).
    pub(crate) fn bus_member(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        id: Option<MessageId>,
        frame: &Bytes,
    ) {
        if let Some(b) = &self.bus {
            b.to_member(mesh, member, id, frame);
        }
    }

    /// Apply what the other nodes publish to meshes, until shutdown: presence and
    /// departures are kept (sessions on other nodes are routable and in welcomes), a
    /// roster change is read from the store, and every frame reaches this node's links.
    pub(crate) async fn follow_bus(self: Arc<Self>) {
        use crate::cluster::bus::Kind;
        use futures_util::StreamExt as _;
        let Some(bus) = self.bus.clone() else {
            return;
        };
        let mut sub = match bus.meshes().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot follow the other relay nodes; members on them are not seen live");
                return;
            }
        };
        loop {
            let m = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                m = sub.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            let Some(ev) = bus.event(&m) else {
                continue;
            };
            // A mesh this node has not seen yet (created through another node since
            // this one started) is read first; a roster change is read again.
            if ev.kind == Kind::Roster || self.mesh(&ev.mesh).is_none() {
                // Missed now, caught up by the next sweep (or the member's next hello).
                if let Err(e) = self.follow(&ev.mesh).await {
                    tracing::warn!(mesh = %ev.mesh.short(), error = %e, "cannot read a mesh changed through another node");
                }
                if ev.kind == Kind::Roster {
                    continue;
                }
            }
            let Some(entry) = self.mesh(&ev.mesh) else {
                continue;
            };
            let mut st = lock(&entry.state);
            // The member linked through another node: its link here is the older one.
            // One link per member across the cluster, as on one relay (and its rate
            // limits, kept with its link's node, are not multiplied by the node count).
            if ev.kind == Kind::Linked {
                if let Some(m) = ev.except
                    && let Some(old) = st.links.remove(&m)
                {
                    st.moved.insert(old.id);
                    old.end(
                        ErrorCode::Replaced,
                        "a newer connection of this member (through another relay node) replaced this one",
                    );
                    self.hand_over_budget(&mut st, &ev.mesh, m);
                }
                // Its sessions are the new node's now: that node's lease governs them.
                if let Some(m) = ev.except {
                    for s in st.sessions.values_mut().filter(|s| s.presence.member == m) {
                        s.node = Some(ev.node.clone());
                    }
                }
                continue;
            }
            // Kept wherever the member may link next: its bucket there refills from what
            // it had left, as on one relay.
            if ev.kind == Kind::Budget {
                if let Some(m) = ev.except
                    && st.roster.is_member(&m)
                    && let Ok(b) = serde_json::from_slice::<crate::cluster::bus::Budget>(&ev.frame)
                {
                    let now = Instant::now();
                    let l = st.limits(m, &self.cfg);
                    l.writes.at_most(b.writes, now);
                    l.presence.at_most(b.presence, now);
                }
                continue;
            }
            // A claim waiting through another node: this node's admins may decide it.
            if ev.kind == Kind::Claim {
                if let Ok(RelayFrame::ClaimPending {
                    claim,
                    request,
                    cap,
                    at,
                }) = wire::decode::<RelayFrame>(&ev.frame)
                    && cap.mesh == ev.mesh
                    && !st.claims.contains_key(&claim)
                {
                    st.claims.insert(
                        claim,
                        PendingClaim {
                            request,
                            cap,
                            at,
                            expires_at: at + self.cfg.claim_ttl_secs as i64 * 1000,
                            claimant: None,
                            outcome: None,
                        },
                    );
                    for a in st.admin_links() {
                        a.push(ev.frame.clone());
                    }
                }
                continue;
            }
            if ev.kind == Kind::Decided {
                if let Ok(d) = serde_json::from_slice::<crate::cluster::bus::Decided>(&ev.frame) {
                    match d.outcome {
                        Some(o) => {
                            let _ = st.decide(d.claim, o, d.keep_until);
                        }
                        None => {
                            st.claims.remove(&d.claim);
                        }
                    }
                }
                continue;
            }
            match (ev.kind, wire::decode::<RelayFrame>(&ev.frame)) {
                (Kind::Presence, Ok(RelayFrame::Presence(rec))) => {
                    if rec.presence.mesh != ev.mesh || !st.roster.is_member(&rec.presence.member) {
                        continue;
                    }
                    let newer = st
                        .sessions
                        .get(&rec.presence.session)
                        .is_none_or(|s| s.presence.member == rec.presence.member);
                    if !newer {
                        continue;
                    }
                    st.sessions.insert(
                        rec.presence.session,
                        SessionState {
                            presence: rec.presence,
                            online: rec.online,
                            last_seen: rec.last_seen,
                            node: Some(ev.node.clone()),
                            lapsed: false,
                        },
                    );
                }
                (Kind::Depart, Ok(RelayFrame::Depart { session, at })) => {
                    if let Some(s) = st.sessions.get_mut(&session) {
                        s.online = false;
                        s.last_seen = at;
                        s.node = Some(ev.node.clone());
                        s.lapsed = false;
                    }
                }
                _ => {}
            }
            st.broadcast(&ev.frame, ev.except.as_ref());
        }
    }

    /// Hear the relay nodes' heartbeats until shutdown and, each heartbeat interval, take
    /// offline the sessions linked through a node whose lease lapsed: this node's links
    /// hear them depart, as they would had their links ended.
    pub(crate) async fn follow_nodes(self: Arc<Self>) {
        use futures_util::StreamExt as _;
        let Some(bus) = self.bus.clone() else {
            return;
        };
        let mut sub = match bus.heartbeats().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot hear the other relay nodes; sessions of a node that dies stay online here");
                return;
            }
        };
        lock(&self.leases).listening(Instant::now());
        let mut tick = tokio::time::interval(crate::cluster::bus::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                m = sub.next() => match m {
                    Some(m) => {
                        let Some(n) = bus.heartbeat(&m) else { continue };
                        // Its own statement: the leases are never locked while a mesh is
                        // (`follow` locks them in that order).
                        let back = lock(&self.leases).heard(n, Instant::now());
                        if back {
                            tracing::info!(node = n, "a relay node is heard again; its sessions are back online");
                            self.revive_sessions(n);
                        }
                    }
                    None => return,
                },
                _ = tick.tick() => self.expire_sessions(Instant::now()),
            }
        }
    }

    /// On a cluster, tell the other nodes what `member` has left of its rate limits here
    /// (its link here ends, or moved to another node): wherever it links next holds it to
    /// that, so changing nodes refills nothing.
    pub(crate) fn hand_over_budget(&self, st: &mut MeshState, mesh: &MeshId, member: MemberKey) {
        let Some(bus) = &self.bus else {
            return;
        };
        let now = Instant::now();
        let l = st.limits(member, &self.cfg);
        let left = crate::cluster::bus::Budget {
            writes: l.writes.level(now),
            presence: l.presence.level(now),
        };
        if let Ok(b) = serde_json::to_vec(&left) {
            bus.to_mesh(
                mesh,
                crate::cluster::bus::Kind::Budget,
                Some(&member),
                &Bytes::from(b),
            );
        }
    }

    /// Back online: the sessions taken offline here when `node`'s lease lapsed (it was
    /// cut off, not dead, and they stayed linked there).
    fn revive_sessions(&self, node: &str) {
        for (_, e) in self.all_meshes() {
            let mut st = lock(&e.state);
            let back: Vec<SessionId> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.lapsed && s.node.as_deref() == Some(node))
                .map(|(id, _)| *id)
                .collect();
            for id in back {
                let Some(s) = st.sessions.get_mut(&id) else {
                    continue;
                };
                s.online = true;
                s.lapsed = false;
                let f = frame(&RelayFrame::Presence(s.record()));
                let member = s.presence.member;
                if let Some(f) = f {
                    st.broadcast(&f, Some(&member));
                }
            }
        }
    }

    /// Take offline every session linked through a node that is gone at `now`.
    fn expire_sessions(&self, now: Instant) {
        let leases = lock(&self.leases).clone();
        let at = claudemesh_schema::now_ms();
        for (mesh, e) in self.all_meshes() {
            let mut st = lock(&e.state);
            let gone: Vec<SessionId> = st
                .sessions
                .iter()
                .filter(|(_, s)| {
                    s.online && s.node.as_deref().is_some_and(|n| !leases.alive(n, now))
                })
                .map(|(id, _)| *id)
                .collect();
            for session in gone {
                if let Some(s) = st.sessions.get_mut(&session) {
                    s.online = false;
                    s.last_seen = at;
                    s.lapsed = true;
                }
                tracing::info!(mesh = %mesh.short(), session = %session.short(), "session offline: the relay node it was linked through is gone");
                if let Some(f) = frame(&RelayFrame::Depart { session, at }) {
                    st.broadcast(&f, None);
                }
            }
        }
    }

    /// Every mesh this node holds.
    pub(crate) fn all_meshes(&self) -> Vec<(MeshId, Arc<MeshEntry>)> {
        self.meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
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

    /// Admit a new connection from `ip`: within its address's accept rate and under the
    /// connection caps. Err says why not (for the debug log).
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<crate::limits::Slot, String> {
        let key = crate::limits::address_key(ip);
        if lock(&self.accepts).take(&key, Instant::now()).is_err() {
            self.stats.refused_at_accept.fetch_add(1, Ordering::Relaxed);
            return Err("too many new connections from this address (accept_rate)".into());
        }
        self.gate.admit(ip).map_err(|full| {
            self.stats.refused_at_accept.fetch_add(1, Ordering::Relaxed);
            full.to_string()
        })
    }

    pub(crate) fn handshake_allowed(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        lock(&self.handshakes).take(&crate::limits::address_key(ip), Instant::now())
    }
}
