//! The relay's durable state, behind the [`Store`] trait so another backend (for example
//! NATS JetStream for mailboxes plus PostgreSQL for rosters, brief §7) is a new
//! implementation, not a rewrite. [`SqliteStore`] is the default.
//!
//! What is stored: mesh genesis and roster entries (signed, public keys only), invite
//! capabilities and use counts, last signed presence per session (profile sealed), and
//! envelopes (ciphertext) until every recipient member has acknowledged them. Never a mesh
//! key, never plaintext.

use claudemesh_schema::crypto::{MemberKey, Signature};
use claudemesh_schema::message::SignedPresence;
use claudemesh_schema::migrations;
use claudemesh_schema::roster::{InviteCap, MeshGenesis, RosterEntry};
use claudemesh_schema::wire::{ClaimOutcome, ClaimRequest, ReceiptSeen};
use claudemesh_schema::{ClaimId, InviteId, MeshId, MessageId, OpId, SessionId};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::sqlite::{self, Durability, SqliteError, Writer};

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite layer failed.
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    /// A hello nonce was already used (through another relay node of a cluster).
    #[error("hello nonce was already used (replay refused)")]
    Replayed,
    /// The clustered store failed (see [`crate::cluster`]).
    #[error(transparent)]
    Cluster(Box<dyn std::error::Error + Send + Sync>),
    /// The mesh id is taken (registered through another relay node of a cluster).
    #[error("a mesh with this id already exists")]
    Exists,
    /// The admission's invite was revoked (through another relay node of a cluster).
    #[error("the invite was revoked")]
    Revoked,
    /// A limit counted over every relay node of a cluster refuses.
    #[error("{what}")]
    Limit {
        /// Which limit, said to the client.
        what: &'static str,
        /// When to try again, if waiting helps.
        retry_ms: Option<u64>,
    },
    /// A stored row does not parse (the file was edited or is corrupt).
    #[error("stored {what} is corrupt: {detail}")]
    Corrupt {
        /// Which kind of row.
        what: &'static str,
        /// Detail.
        detail: String,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(SqliteError::Query(e))
    }
}

/// Called on the store's writer thread once an operation is committed (or failed).
pub type Done<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;

/// Everything the relay keeps in memory, read once at startup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Meshes with their roster entries in order.
    pub meshes: Vec<(MeshGenesis, Vec<RosterEntry>)>,
    /// Invites: capability, uses, revoked.
    pub invites: Vec<(InviteCap, u32, bool)>,
    /// Presences with last-seen time.
    pub presence: Vec<(SignedPresence, i64)>,
    /// Per mesh: envelopes still stored, and their bytes.
    pub usage: HashMap<MeshId, (u64, u64)>,
    /// Per mesh: bytes of its op log and snapshot.
    pub op_usage: HashMap<MeshId, u64>,
    /// Hello nonces still inside the replay window, with their expiry (unix ms).
    pub nonces: Vec<([u8; 16], i64)>,
    /// Envelopes accepted in the last [`RECENT_LOAD_MS`]: id, mesh, sender, accepted at.
    pub recent: Vec<(MessageId, MeshId, MemberKey, i64)>,
    /// Invite claims kept for their claimants (waiting, or decided and not yet fetched),
    /// unexpired.
    pub claims: Vec<StoredClaim>,
}

/// An invite claim the relay keeps across its claimant's connections (a cluster keeps it
/// as this, in JSON).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredClaim {
    /// Its id.
    pub id: ClaimId,
    /// The mesh of its invite.
    pub mesh: MeshId,
    /// The claimant's request, as sent.
    pub request: ClaimRequest,
    /// Arrival at the relay, unix ms.
    pub at: i64,
    /// Forgotten at, unix ms.
    pub expires_at: i64,
    /// The answer, once decided.
    pub outcome: Option<ClaimOutcome>,
}

/// How far back [`Snapshot::recent`] reaches: twice the hello window, so that after a
/// restart only ids timestamped well before it need a store lookup.
pub const RECENT_LOAD_MS: i64 = 2 * claudemesh_schema::wire::HELLO_WINDOW_MS;

/// An envelope to store.
#[derive(Debug, Clone)]
pub struct NewEnvelope {
    /// Its id.
    pub id: MessageId,
    /// Its mesh.
    pub mesh: MeshId,
    /// The sending member.
    pub sender: MemberKey,
    /// The envelope JSON.
    pub envelope: bytes::Bytes,
    /// Members that must acknowledge it.
    pub recipients: Vec<MemberKey>,
    /// Accepted at, unix ms.
    pub at: i64,
    /// Dropped if still undelivered at, unix ms.
    pub expires_at: i64,
}

/// A stored envelope waiting for a member.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id.
    pub id: MessageId,
    /// The envelope JSON.
    pub envelope: Vec<u8>,
    /// Accepted at, unix ms.
    pub at: i64,
}

/// What storing an envelope did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored for its recipients.
    Stored,
    /// Its sender already stored it in this mesh (a resend): nothing changed.
    Duplicate,
    /// Another sender or mesh already used its id: nothing stored.
    Taken,
    /// The mesh's undelivered-message quota is full (counted over every node of a
    /// cluster): nothing stored.
    Full,
}

/// Result of one acknowledgement.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The envelope.
    pub id: MessageId,
    /// Who sent it (to receive a receipt).
    pub sender: MemberKey,
    /// Bytes freed when this was the last recipient.
    pub freed: Option<u64>,
}

/// What an acknowledgement leaves for each envelope's sender: a receipt, kept until the
/// sender's daemon has it (see [`Store::receipts`]).
#[derive(Debug, Clone, Default)]
pub struct AckReceipts {
    /// When the recipient acknowledged, unix ms.
    pub at: i64,
    /// The recipient's signed proofs, by envelope (forwarded, never checked here).
    pub proofs: HashMap<MessageId, Signature>,
    /// Kept for the sender until then, unix ms.
    pub until: i64,
}

/// A receipt kept for a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    /// The envelope.
    pub id: MessageId,
    /// The recipient member that acknowledged it.
    pub member: MemberKey,
    /// When, unix ms.
    pub at: i64,
    /// The recipient's proof, when it sent one.
    pub proof: Option<Signature>,
}

/// Envelopes dropped by expiry, per mesh: count and bytes.
pub type Pruned = HashMap<MeshId, (u64, u64)>;

/// Envelopes stored, per mesh: count and bytes.
pub type Usage = HashMap<MeshId, (u64, u64)>;

/// The relay's durable state.
pub trait Store: Send + Sync + 'static {
    /// Read everything kept in memory.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Register a mesh, created from `source` (the address a per-address limit counts).
    /// A store that other relay nodes write too (a cluster) counts the limits that hold
    /// over all of them (meshes hosted, creations per address per hour) and refuses
    /// with [`StoreError::Limit`]; one relay counts them in memory.
    fn create_mesh(
        &self,
        g: MeshGenesis,
        source: IpAddr,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Append a roster entry (and count a use of `entry.invite`, if any).
    fn append_roster(
        &self,
        seq: u64,
        entry: RosterEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Append the roster entry admitting a claimant, count the use of its invite, and
    /// record the claim's outcome, in one transaction (a crash never admits without
    /// recording the answer, or the reverse).
    fn admit(
        &self,
        seq: u64,
        entry: RosterEntry,
        claim: ClaimId,
        outcome: ClaimOutcome,
        expires_at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Keep a new claim (awaited: the claimant is told it waits only once it is stored).
    fn put_claim(&self, c: StoredClaim) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Record the outcome of claims (refusals), kept until `expires_at`.
    fn decide_claims(
        &self,
        ids: Vec<ClaimId>,
        outcome: ClaimOutcome,
        expires_at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forget claims (fetched, or dropped).
    fn delete_claims(
        &self,
        ids: Vec<ClaimId>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Store an invite capability.
    fn put_invite(&self, cap: InviteCap) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Mark an invite revoked.
    fn revoke_invite(
        &self,
        id: InviteId,
        at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remember a hello nonce until `expires_at` (awaited: the hello is answered only
    /// once a restart would still refuse its replay).
    fn put_nonce(
        &self,
        nonce: [u8; 16],
        expires_at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remember a presence (queued; not awaited).
    fn put_presence(
        &self,
        p: SignedPresence,
        last_seen: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Update last-seen of sessions (queued; not awaited).
    fn touch_presence(
        &self,
        mesh: MeshId,
        sessions: Vec<SessionId>,
        last_seen: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Store an envelope; `done` says whether it was new, a resend, or another's id.
    fn put_envelope(
        &self,
        e: NewEnvelope,
        done: Done<Put>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Who stored envelope `id` (mesh, sender), if it is still known.
    fn owner(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<(MeshId, MemberKey)>, StoreError>> + Send;
    /// `done` runs once everything queued before it is committed.
    fn barrier(&self, done: Done<()>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A member acknowledged envelopes: their mailbox rows go, and a receipt for each
    /// envelope's sender is kept in the same transaction.
    fn ack(
        &self,
        mesh: MeshId,
        member: MemberKey,
        ids: Vec<MessageId>,
        dedupe_until: i64,
        receipts: AckReceipts,
        done: Done<Vec<Acked>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Receipts kept for `sender`, in (id, member) order after `after`.
    fn receipts(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        after: Option<ReceiptSeen>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredReceipt>, StoreError>> + Send;
    /// `sender`'s daemon has these receipts: stop keeping them.
    fn receipts_seen(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        seen: Vec<ReceiptSeen>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Envelopes waiting for `member`, oldest first, after `after`.
    fn mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
        after: Option<MessageId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Stored>, StoreError>> + Send;
    /// Forget a removed member's mailbox; returns envelopes (and bytes) no one else needed.
    fn drop_mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
    ) -> impl Future<Output = Result<(u64, u64), StoreError>> + Send;
    /// Drop envelopes and dedupe ids past their expiry.
    ///
    /// Also forgets expired hello nonces and claims, and the ids of ops compacted into a snapshot
    /// that were sequenced before `op_ids_before` (kept until then so a late resend gets its
    /// old sequence number back).
    fn prune(
        &self,
        now: i64,
        op_ids_before: i64,
    ) -> impl Future<Output = Result<Pruned, StoreError>> + Send;
    /// Append an op to its mesh's log with the next sequence number, or find the sequence
    /// it already has (a resend). `done` runs on commit, in sequence order across calls.
    fn append_op(
        &self,
        op: NewOp,
        done: Done<Appended>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Keep `snap` as the mesh's newest snapshot if it is newer than the one stored and not
    /// past the log's head, and drop the ops it covers; `Ok(false)` if it was not kept.
    fn put_snapshot(
        &self,
        snap: StoredSnapshot,
    ) -> impl Future<Output = Result<Snapshotted, StoreError>> + Send;
    /// The mesh's newest snapshot.
    fn snapshot(
        &self,
        mesh: MeshId,
    ) -> impl Future<Output = Result<Option<StoredSnapshot>, StoreError>> + Send;
    /// Up to `limit` ops (and at most about `max_bytes`) from sequence `from` on.
    fn ops(
        &self,
        mesh: MeshId,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<OpsPage, StoreError>> + Send;
    /// Envelopes stored per mesh (count, bytes) as the store counts them now, for a store
    /// that other relay nodes write and free too (a cluster); `None` with one relay,
    /// whose own count is exact.
    fn usage_now(&self) -> impl Future<Output = Result<Option<Usage>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// Every claim kept now, for a store that other relay nodes write too (a cluster):
    /// claims made and decided through them, which this relay may have missed live.
    /// `None` with one relay, whose memory is the whole truth.
    fn claims_now(
        &self,
    ) -> impl Future<Output = Result<Option<Vec<StoredClaim>>, StoreError>> + Send {
        async { Ok(None) }
    }
    /// The mesh as stored now, for a store that other relay nodes write too (a
    /// cluster): what they changed since [`Store::load`]. `None` when this relay's memory
    /// is the whole truth (one relay), or the mesh is not stored.
    fn mesh_now(
        &self,
        mesh: MeshId,
    ) -> impl Future<Output = Result<Option<MeshNow>, StoreError>> + Send {
        let _ = mesh;
        async { Ok(None) }
    }
    /// The invite as stored now, and whether it was revoked, for a store that other
    /// relay nodes write too (a cluster: the invite may have been published or revoked
    /// through another node). `None` when this relay's memory is the whole truth (one
    /// relay), or the invite is not stored.
    fn invite_now(
        &self,
        id: InviteId,
    ) -> impl Future<Output = Result<Option<(InviteCap, bool)>, StoreError>> + Send {
        let _ = id;
        async { Ok(None) }
    }
}

/// A mesh as a clustered store holds it now (see [`Store::mesh_now`]).
#[derive(Debug, Clone)]
pub struct MeshNow {
    /// Its genesis.
    pub genesis: MeshGenesis,
    /// Its roster entries, in order.
    pub roster: Vec<RosterEntry>,
    /// The claims the roster's entries answer (an admission carries its answer):
    /// `(roster sequence, claim, answer, kept until)`.
    pub admitted: Vec<(u64, ClaimId, ClaimOutcome, i64)>,
    /// Its sessions' presences.
    pub presence: Vec<PresenceNow>,
}

/// A session's presence as a cluster keeps it.
#[derive(Debug, Clone)]
pub struct PresenceNow {
    /// The signed presence.
    pub record: SignedPresence,
    /// Last seen, unix ms.
    pub last_seen: i64,
    /// Whether a link of it is up.
    pub online: bool,
    /// The node its link is (or was last) up at, when known.
    pub node: Option<String>,
}

/// An op to append.
#[derive(Debug, Clone)]
pub struct NewOp {
    /// Its mesh.
    pub mesh: MeshId,
    /// Its id.
    pub id: OpId,
    /// Its author.
    pub author: MemberKey,
    /// The op envelope JSON.
    pub op: bytes::Bytes,
    /// Sequenced at, unix ms.
    pub at: i64,
}

/// Where an appended op landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its sequencing time (the first one, for a resend).
    pub at: i64,
    /// False when the id was already in the log.
    pub new: bool,
    /// True when the id is another author's op in this mesh: nothing was stored, and
    /// `seq`/`at` are not this op's.
    pub taken: bool,
    /// True when the mesh's log is at its quota (counted over every node of a cluster):
    /// nothing was stored, and `seq` is not this op's.
    pub full: bool,
}

/// What storing a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshotted {
    /// False when it was not newer than the stored one (or past the log's head).
    pub kept: bool,
    /// Bytes of the mesh's log and snapshot afterwards.
    pub op_bytes: u64,
}

/// A sealed snapshot of a mesh's shared state.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Its mesh.
    pub mesh: MeshId,
    /// The last op folded in.
    pub seq: u64,
    /// The member that captured and signed it.
    pub author: MemberKey,
    /// The ciphertext.
    pub ct: Vec<u8>,
    /// Stored at, unix ms.
    pub at: i64,
}

/// A page of a mesh's op log.
#[derive(Debug, Clone, Default)]
pub struct OpsPage {
    /// `(seq, at, envelope JSON)`, in order.
    pub ops: Vec<(u64, i64, Vec<u8>)>,
    /// The newest sequence.
    pub head: u64,
    /// The oldest sequence still stored.
    pub first: u64,
}

/// Wait until everything queued to `store` before this call is committed.
pub async fn flushed<S: Store>(store: &S) -> Result<(), StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store
        .barrier(Box::new(move |r| {
            let _ = tx.send(r);
        }))
        .await?;
    rx.await
        .map_err(|_| StoreError::Sqlite(SqliteError::Closed))?
}

/// The default store: one SQLite file in WAL mode.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Writer,
    reader: Arc<Mutex<rusqlite::Connection>>,
}

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

fn key_from(v: Vec<u8>) -> Result<MemberKey, StoreError> {
    let arr: [u8; 32] = v.try_into().map_err(|_| StoreError::Corrupt {
        what: "member key",
        detail: "not 32 bytes".into(),
    })?;
    Ok(MemberKey(arr))
}

fn id_from(v: &[u8]) -> Result<MessageId, StoreError> {
    MessageId::from_slice(v).ok_or_else(|| StoreError::Corrupt {
        what: "message id",
        detail: "not 16 bytes".into(),
    })
}

impl SqliteStore {
    /// Open (creating and migrating) `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let conn = sqlite::open(path, migrations::RELAY, durability)?;
        let reader = sqlite::open_reader(path)?;
        let (writer, _thread) = Writer::spawn(conn, "relay-store")
            .map_err(|e| SqliteError::Commit(format!("cannot start store thread: {e}")))?;
        Ok(Self {
            writer,
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// The writer thread's handle: what else keeps its index in `relay.db` (the blob
    /// store) commits through it, in the same group commits.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Sqlite(SqliteError::Commit(format!("reader task failed: {e}"))))?
    }
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut snap = Snapshot::default();
        let mut by_mesh: HashMap<MeshId, usize> = HashMap::new();
        let mut stmt = conn.prepare("SELECT genesis FROM meshes ORDER BY created_at")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for row in rows {
            let g: MeshGenesis = serde_json::from_str(&row?).map_err(corrupt("mesh genesis"))?;
            by_mesh.insert(g.mesh, snap.meshes.len());
            snap.meshes.push((g, Vec::new()));
        }
        let mut stmt = conn.prepare("SELECT entry FROM roster ORDER BY mesh, seq")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            let e: RosterEntry = serde_json::from_str(&row?).map_err(corrupt("roster entry"))?;
            if let Some(&i) = by_mesh.get(&e.mesh) {
                snap.meshes[i].1.push(e);
            }
        }
        let mut stmt = conn.prepare("SELECT cap, uses, revoked_at IS NOT NULL FROM invites")?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })? {
            let (cap, uses, revoked) = row?;
            let cap: InviteCap = serde_json::from_str(&cap).map_err(corrupt("invite"))?;
            snap.invites.push((cap, uses as u32, revoked));
        }
        let mut stmt = conn.prepare("SELECT record, last_seen FROM presence")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (rec, seen) = row?;
            let p: SignedPresence = serde_json::from_str(&rec).map_err(corrupt("presence"))?;
            snap.presence.push((p, seen));
        }
        let mut stmt = conn.prepare(
            "SELECT mesh, count(*), coalesce(sum(size), 0) FROM messages
             WHERE envelope IS NOT NULL GROUP BY mesh",
        )?;
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (mesh, n, bytes) = row?;
            if let Some(m) = MeshId::from_slice(&mesh) {
                snap.usage.insert(m, (n as u64, bytes as u64));
            }
        }
        let mut stmt = conn.prepare(
            "SELECT mesh, sum(n) FROM (
                 SELECT mesh, coalesce(sum(length(op)), 0) AS n FROM ops GROUP BY mesh
                 UNION ALL SELECT mesh, length(ct) FROM snapshots)
             GROUP BY mesh",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
            let (mesh, n) = row?;
            if let Some(m) = MeshId::from_slice(&mesh) {
                snap.op_usage.insert(m, n as u64);
            }
        }
        let mut stmt = conn.prepare(
            "SELECT id, mesh, sender, created_at FROM messages WHERE created_at > ?1 LIMIT 200000",
        )?;
        let since = claudemesh_schema::now_ms() - RECENT_LOAD_MS;
        for row in stmt.query_map(params![since], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })? {
            let (id, mesh, sender, at) = row?;
            if let (Ok(id), Some(mesh), Ok(sender)) =
                (id_from(&id), MeshId::from_slice(&mesh), key_from(sender))
            {
                snap.recent.push((id, mesh, sender, at));
            }
        }
        let mut stmt = conn.prepare(
            "SELECT id, mesh, request, at, expires_at, outcome FROM claims
             WHERE expires_at > ?1 ORDER BY at",
        )?;
        for row in stmt.query_map(params![claudemesh_schema::now_ms()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })? {
            let (id, mesh, request, at, expires_at, outcome) = row?;
            let (Some(id), Some(mesh)) = (ClaimId::from_slice(&id), MeshId::from_slice(&mesh))
            else {
                return Err(StoreError::Corrupt {
                    what: "claim",
                    detail: "bad id".into(),
                });
            };
            snap.claims.push(StoredClaim {
                id,
                mesh,
                request: serde_json::from_str(&request).map_err(corrupt("claim"))?,
                at,
                expires_at,
                outcome: match outcome {
                    Some(o) => Some(serde_json::from_str(&o).map_err(corrupt("claim outcome"))?),
                    None => None,
                },
            });
        }
        let mut stmt =
            conn.prepare("SELECT nonce, expires_at FROM hello_nonces WHERE expires_at > ?1")?;
        for row in stmt.query_map(params![claudemesh_schema::now_ms()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (nonce, exp) = row?;
            if let Ok(n) = <[u8; 16]>::try_from(nonce.as_slice()) {
                snap.nonces.push((n, exp));
            }
        }
        Ok(snap)
    }

    async fn put_nonce(&self, nonce: [u8; 16], expires_at: i64) -> Result<(), StoreError> {
        self.writer
            .call(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO hello_nonces (nonce, expires_at) VALUES (?1, ?2)
                     ON CONFLICT (nonce) DO NOTHING",
                )?
                .execute(params![&nonce[..], expires_at])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn create_mesh(&self, g: MeshGenesis, _source: IpAddr) -> Result<(), StoreError> {
        let json = serde_json::to_string(&g).map_err(corrupt("mesh genesis"))?;
        self.writer
            .call(move |tx| {
                tx.execute(
                    "INSERT INTO meshes (id, genesis, created_at) VALUES (?1, ?2, ?3)",
                    params![g.mesh.as_bytes(), json, g.created_at],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    async fn append_roster(&self, seq: u64, entry: RosterEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(corrupt("roster entry"))?;
        self.writer
            .call(move |tx| {
                tx.execute(
                    "INSERT INTO roster (mesh, seq, entry) VALUES (?1, ?2, ?3)",
                    params![entry.mesh.as_bytes(), seq as i64, json],
                )?;
                if let Some(inv) = entry.invite {
                    tx.execute(
                        "UPDATE invites SET uses = uses + 1 WHERE id = ?1",
                        params![inv.as_bytes()],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn admit(
        &self,
        seq: u64,
        entry: RosterEntry,
        claim: ClaimId,
        outcome: ClaimOutcome,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&entry).map_err(corrupt("roster entry"))?;
        let outcome = serde_json::to_string(&outcome).map_err(corrupt("claim outcome"))?;
        self.writer
            .call(move |tx| {
                tx.execute(
                    "INSERT INTO roster (mesh, seq, entry) VALUES (?1, ?2, ?3)",
                    params![entry.mesh.as_bytes(), seq as i64, json],
                )?;
                if let Some(inv) = entry.invite {
                    tx.execute(
                        "UPDATE invites SET uses = uses + 1 WHERE id = ?1",
                        params![inv.as_bytes()],
                    )?;
                }
                tx.execute(
                    "UPDATE claims SET outcome = ?2, expires_at = ?3 WHERE id = ?1",
                    params![claim.as_bytes(), outcome, expires_at],
                )?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn put_claim(&self, c: StoredClaim) -> Result<(), StoreError> {
        let request = serde_json::to_string(&c.request).map_err(corrupt("claim"))?;
        let outcome = match &c.outcome {
            Some(o) => Some(serde_json::to_string(o).map_err(corrupt("claim outcome"))?),
            None => None,
        };
        self.writer
            .call(move |tx| {
                tx.execute(
                    // REPLACE: a row the hub no longer holds (a refusal evicted while its
                    // delete failed) must not block the same claimant's claim for good.
                    "INSERT OR REPLACE INTO claims (id, mesh, invite, member, request, at, expires_at, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        c.id.as_bytes(),
                        c.mesh.as_bytes(),
                        c.request.invite.as_bytes(),
                        &c.request.member.0[..],
                        request,
                        c.at,
                        c.expires_at,
                        outcome
                    ],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    async fn decide_claims(
        &self,
        ids: Vec<ClaimId>,
        outcome: ClaimOutcome,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let outcome = serde_json::to_string(&outcome).map_err(corrupt("claim outcome"))?;
        self.writer
            .call(move |tx| {
                for id in &ids {
                    tx.execute(
                        "UPDATE claims SET outcome = ?2, expires_at = ?3 WHERE id = ?1",
                        params![id.as_bytes(), outcome, expires_at],
                    )?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn delete_claims(&self, ids: Vec<ClaimId>) -> Result<(), StoreError> {
        self.writer
            .call(move |tx| {
                for id in &ids {
                    tx.execute("DELETE FROM claims WHERE id = ?1", params![id.as_bytes()])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn put_invite(&self, cap: InviteCap) -> Result<(), StoreError> {
        let json = serde_json::to_string(&cap).map_err(corrupt("invite"))?;
        self.writer
            .call(move |tx| {
                tx.execute(
                    "INSERT INTO invites (id, mesh, cap, max_uses, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (id) DO NOTHING",
                    params![cap.id.as_bytes(), cap.mesh.as_bytes(), json, cap.max_uses, cap.expires_at],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    async fn revoke_invite(&self, id: InviteId, at: i64) -> Result<(), StoreError> {
        self.writer
            .call(move |tx| {
                tx.execute(
                    "UPDATE invites SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                    params![id.as_bytes(), at],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    async fn put_presence(&self, p: SignedPresence, last_seen: i64) -> Result<(), StoreError> {
        let json = serde_json::to_string(&p).map_err(corrupt("presence"))?;
        self.writer
            .submit("presence", move |tx| {
                tx.execute(
                    "INSERT INTO presence (mesh, session, member, record, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (mesh, session) DO UPDATE SET
                        member = excluded.member, record = excluded.record,
                        last_seen = excluded.last_seen",
                    params![
                        p.mesh.as_bytes(),
                        p.session.as_bytes(),
                        p.member.0,
                        json,
                        last_seen
                    ],
                )
                .map(|_| ())
            })
            .await?;
        Ok(())
    }

    async fn touch_presence(
        &self,
        mesh: MeshId,
        sessions: Vec<SessionId>,
        last_seen: i64,
    ) -> Result<(), StoreError> {
        self.writer
            .submit("presence last-seen", move |tx| {
                let mut stmt = tx.prepare_cached(
                    "UPDATE presence SET last_seen = ?3 WHERE mesh = ?1 AND session = ?2",
                )?;
                for s in sessions {
                    stmt.execute(params![mesh.as_bytes(), s.as_bytes(), last_seen])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn put_envelope(&self, e: NewEnvelope, done: Done<Put>) -> Result<(), StoreError> {
        self.writer
            .call_then(
                move |tx| {
                    let inserted = tx.prepare_cached(
                        "INSERT INTO messages (id, mesh, sender, envelope, size, created_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                    )?
                    .execute(params![
                        e.id.as_bytes(),
                        e.mesh.as_bytes(),
                        e.sender.0,
                        &e.envelope[..],
                        e.envelope.len() as i64,
                        e.at,
                        e.expires_at
                    ])?;
                    if inserted == 0 {
                        let same = tx
                            .prepare_cached("SELECT mesh = ?2 AND sender = ?3 FROM messages WHERE id = ?1")?
                            .query_row(params![e.id.as_bytes(), e.mesh.as_bytes(), e.sender.0], |r| {
                                r.get::<_, bool>(0)
                            })
                            .optional()?;
                        return Ok(if same == Some(true) { Put::Duplicate } else { Put::Taken });
                    }
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR IGNORE INTO mailbox (mesh, member, id) VALUES (?1, ?2, ?3)",
                    )?;
                    for r in &e.recipients {
                        stmt.execute(params![e.mesh.as_bytes(), r.0, e.id.as_bytes()])?;
                    }
                    Ok(Put::Stored)
                },
                move |r| done(r.map_err(StoreError::from)),
            )
            .await?;
        Ok(())
    }

    async fn owner(&self, id: MessageId) -> Result<Option<(MeshId, MemberKey)>, StoreError> {
        self.read(move |c| {
            let row = c
                .prepare_cached("SELECT mesh, sender FROM messages WHERE id = ?1")?
                .query_row(params![id.as_bytes()], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            Ok(match row {
                Some((m, s)) => MeshId::from_slice(&m).zip(key_from(s).ok()),
                None => None,
            })
        })
        .await
    }

    async fn barrier(&self, done: Done<()>) -> Result<(), StoreError> {
        self.writer
            .call_then(|_| Ok(()), move |r| done(r.map_err(StoreError::from)))
            .await?;
        Ok(())
    }

    async fn ack(
        &self,
        mesh: MeshId,
        member: MemberKey,
        ids: Vec<MessageId>,
        dedupe_until: i64,
        receipts: AckReceipts,
        done: Done<Vec<Acked>>,
    ) -> Result<(), StoreError> {
        self.writer
            .call_then(
                move |tx| {
                    let mut out = Vec::new();
                    let mut keep = tx.prepare_cached(
                        "INSERT OR IGNORE INTO receipts (mesh, sender, id, member, at, proof, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    let mut del = tx.prepare_cached(
                        "DELETE FROM mailbox WHERE mesh = ?1 AND member = ?2 AND id = ?3",
                    )?;
                    let mut left =
                        tx.prepare_cached("SELECT 1 FROM mailbox WHERE id = ?1 LIMIT 1")?;
                    let mut info =
                        tx.prepare_cached("SELECT sender, size FROM messages WHERE id = ?1")?;
                    let mut clear = tx.prepare_cached(
                        "UPDATE messages SET envelope = NULL, expires_at = min(expires_at, ?2)
                         WHERE id = ?1",
                    )?;
                    for id in ids {
                        if del.execute(params![mesh.as_bytes(), member.0, id.as_bytes()])? == 0 {
                            continue;
                        }
                        let Some((sender, size)) = info
                            .query_row(params![id.as_bytes()], |r| {
                                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                            })
                            .optional()?
                        else {
                            continue;
                        };
                        let Ok(sender) = key_from(sender) else {
                            continue;
                        };
                        keep.execute(params![
                            mesh.as_bytes(),
                            sender.0,
                            id.as_bytes(),
                            member.0,
                            receipts.at,
                            receipts.proofs.get(&id).map(|p| p.0.to_vec()),
                            receipts.until
                        ])?;
                        let remaining = left.exists(params![id.as_bytes()])?;
                        let freed = if remaining {
                            None
                        } else {
                            clear.execute(params![id.as_bytes(), dedupe_until])?;
                            Some(size as u64)
                        };
                        out.push(Acked { id, sender, freed });
                    }
                    Ok(out)
                },
                move |r| done(r.map_err(StoreError::from)),
            )
            .await?;
        Ok(())
    }

    async fn receipts(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        after: Option<ReceiptSeen>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, member, at, proof FROM receipts
                 WHERE mesh = ?1 AND sender = ?2 AND (id, member) > (?3, ?4)
                 ORDER BY id, member LIMIT ?5",
            )?;
            let (aid, amember) = after
                .map(|a| (a.id.as_bytes().to_vec(), a.member.0.to_vec()))
                .unwrap_or_default();
            let rows = stmt.query_map(
                params![mesh.as_bytes(), sender.0, aid, amember, limit as i64],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (id, member, at, proof) = row?;
                let Some(id) = MessageId::from_slice(&id) else {
                    continue;
                };
                let Ok(member) = key_from(member) else {
                    continue;
                };
                // A proof of the wrong length is dropped: the sender would refuse it anyway.
                let proof = proof
                    .and_then(|p| <[u8; 64]>::try_from(p.as_slice()).ok())
                    .map(Signature);
                out.push(StoredReceipt {
                    id,
                    member,
                    at,
                    proof,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn receipts_seen(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        seen: Vec<ReceiptSeen>,
    ) -> Result<(), StoreError> {
        self.writer
            .call(move |tx| {
                let mut del = tx.prepare_cached(
                    "DELETE FROM receipts WHERE mesh = ?1 AND sender = ?2 AND id = ?3 AND member = ?4",
                )?;
                for r in seen {
                    del.execute(params![mesh.as_bytes(), sender.0, r.id.as_bytes(), r.member.0])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT m.id, m.envelope, m.created_at FROM mailbox b
                 JOIN messages m ON m.id = b.id
                 WHERE b.mesh = ?1 AND b.member = ?2 AND b.id > ?3 AND m.envelope IS NOT NULL
                 ORDER BY b.id LIMIT ?4",
            )?;
            let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
            let rows = stmt.query_map(
                params![mesh.as_bytes(), member.0, after, limit as i64],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (id, envelope, at) = row?;
                out.push(Stored {
                    id: id_from(&id)?,
                    envelope,
                    at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn drop_mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
    ) -> Result<(u64, u64), StoreError> {
        let freed = self
            .writer
            .call(move |tx| {
                let ids: Vec<Vec<u8>> = {
                    let mut stmt =
                        tx.prepare("SELECT id FROM mailbox WHERE mesh = ?1 AND member = ?2")?;
                    let rows = stmt.query_map(params![mesh.as_bytes(), member.0], |r| r.get(0))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                tx.execute(
                    "DELETE FROM mailbox WHERE mesh = ?1 AND member = ?2",
                    params![mesh.as_bytes(), member.0],
                )?;
                // Nor does it get receipts any more.
                tx.execute(
                    "DELETE FROM receipts WHERE mesh = ?1 AND sender = ?2",
                    params![mesh.as_bytes(), member.0],
                )?;
                let (mut n, mut bytes) = (0u64, 0u64);
                for id in ids {
                    let left: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM mailbox WHERE id = ?1)",
                        params![id],
                        |r| r.get(0),
                    )?;
                    if left {
                        continue;
                    }
                    let size: Option<i64> = tx
                        .query_row(
                            "SELECT size FROM messages WHERE id = ?1 AND envelope IS NOT NULL",
                            params![id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(size) = size {
                        tx.execute(
                            "UPDATE messages SET envelope = NULL WHERE id = ?1",
                            params![id],
                        )?;
                        n += 1;
                        bytes += size as u64;
                    }
                }
                Ok((n, bytes))
            })
            .await?;
        Ok(freed)
    }

    async fn append_op(&self, op: NewOp, done: Done<Appended>) -> Result<(), StoreError> {
        self.writer
            .call_then(
                move |tx| {
                    let known = tx
                        .prepare_cached(
                            "SELECT seq, at, author = ?3 FROM ops WHERE mesh = ?1 AND id = ?2",
                        )?
                        .query_row(
                            params![op.mesh.as_bytes(), op.id.as_bytes(), op.author.0],
                            |r| {
                                Ok((
                                    r.get::<_, i64>(0)?,
                                    r.get::<_, i64>(1)?,
                                    r.get::<_, bool>(2)?,
                                ))
                            },
                        )
                        .optional()?;
                    if let Some((seq, at, same)) = known {
                        return Ok(Appended {
                            seq: seq as u64,
                            at,
                            new: false,
                            taken: !same,
                            full: false,
                        });
                    }
                    let seq: i64 = tx
                        .prepare_cached(
                            "INSERT INTO op_heads (mesh, head) VALUES (?1, 1)
                             ON CONFLICT (mesh) DO UPDATE SET head = head + 1
                             RETURNING head",
                        )?
                        .query_row(params![op.mesh.as_bytes()], |r| r.get(0))?;
                    tx.prepare_cached(
                        "INSERT INTO ops (mesh, seq, id, author, op, at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        op.mesh.as_bytes(),
                        seq,
                        op.id.as_bytes(),
                        op.author.0,
                        &op.op[..],
                        op.at
                    ])?;
                    Ok(Appended {
                        seq: seq as u64,
                        at: op.at,
                        new: true,
                        taken: false,
                        full: false,
                    })
                },
                move |r| done(r.map_err(StoreError::from)),
            )
            .await?;
        Ok(())
    }

    async fn put_snapshot(&self, snap: StoredSnapshot) -> Result<Snapshotted, StoreError> {
        Ok(self
            .writer
            .call(move |tx| {
                let mesh = snap.mesh.as_bytes().to_vec();
                let head: i64 = tx
                    .query_row(
                        "SELECT head FROM op_heads WHERE mesh = ?1",
                        params![mesh],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let have: i64 = tx
                    .query_row(
                        "SELECT seq FROM snapshots WHERE mesh = ?1",
                        params![mesh],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let seq = snap.seq as i64;
                let op_bytes = |tx: &rusqlite::Transaction<'_>| -> rusqlite::Result<u64> {
                    tx.query_row(
                        "SELECT (SELECT coalesce(sum(length(op)), 0) FROM ops WHERE mesh = ?1)
                              + (SELECT coalesce(sum(length(ct)), 0) FROM snapshots WHERE mesh = ?1)",
                        params![mesh],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(|n| n as u64)
                };
                // Only the author of op `seq` captures the snapshot at `seq` (the rule every
                // daemon follows): another member cannot replace the log with its bytes.
                let author_of_seq: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT author FROM ops WHERE mesh = ?1 AND seq = ?2",
                        params![mesh, seq],
                        |r| r.get(0),
                    )
                    .optional()?;
                if seq <= have || seq > head || author_of_seq.as_deref() != Some(&snap.author.0[..]) {
                    return Ok(Snapshotted {
                        kept: false,
                        op_bytes: op_bytes(tx)?,
                    });
                }
                tx.execute(
                    "INSERT INTO snapshots (mesh, seq, author, ct, at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (mesh) DO UPDATE SET seq = excluded.seq, author = excluded.author,
                       ct = excluded.ct, at = excluded.at",
                    params![mesh, seq, snap.author.0, snap.ct, snap.at],
                )?;
                // Drop the bodies, keep id -> seq: a late resend of a covered op must get
                // its old sequence number back, not a new one.
                tx.execute(
                    "UPDATE ops SET op = X'' WHERE mesh = ?1 AND seq <= ?2",
                    params![mesh, seq],
                )?;
                tx.execute(
                    "UPDATE op_heads SET first = ?2 + 1 WHERE mesh = ?1",
                    params![mesh, seq],
                )?;
                Ok(Snapshotted {
                    kept: true,
                    op_bytes: op_bytes(tx)?,
                })
            })
            .await?)
    }

    async fn snapshot(&self, mesh: MeshId) -> Result<Option<StoredSnapshot>, StoreError> {
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT seq, author, ct, at FROM snapshots WHERE mesh = ?1",
                    params![mesh.as_bytes()],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()?;
            match row {
                None => Ok(None),
                Some((seq, author, ct, at)) => Ok(Some(StoredSnapshot {
                    mesh,
                    seq: seq as u64,
                    author: key_from(author)?,
                    ct,
                    at,
                })),
            }
        })
        .await
    }

    async fn ops(
        &self,
        mesh: MeshId,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<OpsPage, StoreError> {
        self.read(move |conn| {
            // One read transaction: head, first and the rows from the same moment.
            let conn = conn.unchecked_transaction()?;
            let (head, first) = conn
                .prepare_cached("SELECT head, first FROM op_heads WHERE mesh = ?1")?
                .query_row(params![mesh.as_bytes()], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()?
                .unwrap_or((0, 1));
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at, op FROM ops WHERE mesh = ?1 AND seq >= ?2 AND length(op) > 0
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    mesh.as_bytes(),
                    from.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                },
            )?;
            let mut page = OpsPage {
                ops: Vec::new(),
                head,
                first,
            };
            let mut bytes = 0;
            for row in rows {
                let row = row?;
                bytes += row.2.len() + 48;
                if bytes > max_bytes && !page.ops.is_empty() {
                    break;
                }
                page.ops.push(row);
            }
            Ok(page)
        })
        .await
    }

    async fn prune(&self, now: i64, op_ids_before: i64) -> Result<Pruned, StoreError> {
        let r = self
            .writer
            .call(move |tx| {
                let mut out: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
                {
                    let mut stmt = tx.prepare(
                        "SELECT mesh, count(*), coalesce(sum(size), 0) FROM messages
                         WHERE expires_at < ?1 AND envelope IS NOT NULL GROUP BY mesh",
                    )?;
                    let rows = stmt.query_map(params![now], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    })?;
                    for row in rows {
                        let (m, n, b) = row?;
                        out.insert(m, (n as u64, b as u64));
                    }
                }
                tx.execute(
                    "DELETE FROM mailbox WHERE id IN (SELECT id FROM messages WHERE expires_at < ?1)",
                    params![now],
                )?;
                tx.execute("DELETE FROM messages WHERE expires_at < ?1", params![now])?;
                tx.execute("DELETE FROM hello_nonces WHERE expires_at < ?1", params![now])?;
                tx.execute("DELETE FROM claims WHERE expires_at < ?1", params![now])?;
                tx.execute("DELETE FROM receipts WHERE expires_at < ?1", params![now])?;
                tx.execute(
                    "DELETE FROM ops WHERE op = X'' AND at < ?1",
                    params![op_ids_before],
                )?;
                Ok(out)
            })
            .await?;
        Ok(r.into_iter()
            .filter_map(|(m, v)| MeshId::from_slice(&m).map(|m| (m, v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(mesh: MeshId, id: OpId) -> NewOp {
        NewOp {
            mesh,
            id,
            author: MemberKey([1; 32]),
            op: bytes::Bytes::from_static(br#"{"x":1}"#),
            at: 5,
        }
    }

    async fn append(s: &SqliteStore, o: NewOp) -> Appended {
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.append_op(
            o,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .unwrap();
        rx.await.unwrap().unwrap()
    }

    /// A receipt outlives the envelope it is about until its sender has it (or it expires).
    #[tokio::test]
    async fn an_ack_keeps_a_receipt_for_the_sender_until_it_is_seen_or_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("r.db"), Durability::Normal).unwrap();
        let (mesh, sender, to) = (MeshId::new(), MemberKey([1; 32]), MemberKey([2; 32]));
        let (one, two) = (MessageId::new(), MessageId::new());
        for id in [one, two] {
            let (tx, rx) = tokio::sync::oneshot::channel();
            s.put_envelope(
                NewEnvelope {
                    id,
                    mesh,
                    sender,
                    envelope: bytes::Bytes::from_static(b"{}"),
                    recipients: vec![to],
                    at: 1,
                    expires_at: 1_000,
                },
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .await
            .unwrap();
            rx.await.unwrap().unwrap();
        }
        let proof = Signature([7; 64]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let receipts = AckReceipts {
            at: 5,
            proofs: [(one, proof)].into_iter().collect(),
            until: 100,
        };
        s.ack(
            mesh,
            to,
            vec![one, two],
            10,
            receipts,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap().len(), 2);
        let kept = s.receipts(mesh, sender, None, 10).await.unwrap();
        let mut want = vec![
            StoredReceipt {
                id: one,
                member: to,
                at: 5,
                proof: Some(proof),
            },
            StoredReceipt {
                id: two,
                member: to,
                at: 5,
                proof: None,
            },
        ];
        want.sort_by_key(|r| r.id);
        assert_eq!(kept, want);
        // Paged by (id, member); nothing is kept for the recipient.
        let after = ReceiptSeen {
            id: want[0].id,
            member: to,
        };
        assert_eq!(
            s.receipts(mesh, sender, Some(after), 10).await.unwrap(),
            want[1..]
        );
        assert!(s.receipts(mesh, to, None, 10).await.unwrap().is_empty());
        s.receipts_seen(mesh, sender, vec![after]).await.unwrap();
        assert_eq!(s.receipts(mesh, sender, None, 10).await.unwrap(), want[1..]);
        s.prune(101, 0).await.unwrap();
        assert!(s.receipts(mesh, sender, None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn sequences_are_dense_resends_keep_theirs_even_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("r.db"), Durability::Normal).unwrap();
        let mesh = MeshId::new();
        let (a, b, c) = (OpId::new(), OpId::new(), OpId::new());
        assert_eq!(append(&s, op(mesh, a)).await.seq, 1);
        assert_eq!(append(&s, op(mesh, b)).await.seq, 2);
        let again = append(&s, op(mesh, a)).await;
        assert_eq!((again.seq, again.new), (1, false));
        // A snapshot at 2 drops the bodies of 1 and 2, not their ids.
        let kept = s
            .put_snapshot(StoredSnapshot {
                mesh,
                seq: 2,
                author: MemberKey([1; 32]),
                ct: vec![9; 10],
                at: 6,
            })
            .await
            .unwrap();
        // What is left: op c's body (none yet), no bodies of 1 and 2, the snapshot.
        assert_eq!(
            kept,
            Snapshotted {
                kept: true,
                op_bytes: 10
            }
        );
        let late = append(&s, op(mesh, b)).await;
        assert_eq!(
            (late.seq, late.new),
            (2, false),
            "a late resend is not re-sequenced"
        );
        assert_eq!(append(&s, op(mesh, c)).await.seq, 3);
        let page = s.ops(mesh, 1, 100, 1 << 20).await.unwrap();
        assert_eq!((page.first, page.head), (3, 3));
        assert_eq!(page.ops.iter().map(|o| o.0).collect::<Vec<_>>(), vec![3]);
        // Older or future snapshots are not kept.
        for seq in [1, 9] {
            let snap = StoredSnapshot {
                mesh,
                seq,
                author: MemberKey([1; 32]),
                ct: vec![],
                at: 7,
            };
            assert!(!s.put_snapshot(snap).await.unwrap().kept);
        }
        // A snapshot offered by someone who did not author op `seq` is not kept.
        append(&s, op(mesh, OpId::new())).await;
        let foreign = StoredSnapshot {
            mesh,
            seq: 4,
            author: MemberKey([3; 32]),
            ct: vec![1; 16],
            at: 8,
        };
        assert!(!s.put_snapshot(foreign).await.unwrap().kept);
        // Another author resending a known id is told it is taken, not given its seq.
        let squat = NewOp {
            author: MemberKey([2; 32]),
            ..op(mesh, c)
        };
        let r = append(&s, squat).await;
        assert!(r.taken && !r.new);
    }
}
