//! The relay's [`Store`] on a NATS JetStream cluster: what one relay node keeps in SQLite,
//! kept where every node of the cluster reads it, replicated, so a node can die and
//! another serves its members with nothing acknowledged lost.
//!
//! Layout (names start with the deployment's prefix `<P>`):
//! - `<P>_STATE` (KV): mesh genesis `g.<mesh>`, roster entries `r.<mesh>.<seq>` (written
//!   with create, so a sequence number is taken once cluster-wide; an entry admitting a
//!   claimant carries the claim's outcome, so admission and its answer are one write),
//!   invites `i.<id>` (revoked by compare-and-set; their uses are counted from the
//!   roster, never kept as a counter two nodes could race on), claims `c.<id>`, presence
//!   `p.<mesh>.<session>`, snapshot metadata `s.<mesh>`.
//! - `<P>_NONCES` (KV, entries expire with the hello window): a hello nonce is created
//!   once cluster-wide, so a replay through another node is refused too.
//! - `<P>_RCPT` (KV): receipts kept for senders, `<mesh>.<sender>.<id>.<member>`.
//! - `<P>_SNAP` (object store): snapshot ciphertexts, up to 64 MiB.
//! - the mailboxes ([`super::mailbox`]) and the op log ([`super::oplog`]).
//!
//! What it is not: the in-memory side of a cluster. A node's hub reads rosters and
//! presence changed through other nodes at each hello, each roster event on the bus and
//! each sweep; an invite when it is claimed or revoked; the claims at each sweep.

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::{MemberKey, Signature, hex};
use claudemesh_schema::message::SignedPresence;
use claudemesh_schema::roster::{InviteCap, MeshGenesis, RosterEntry};
use claudemesh_schema::wire::{ClaimOutcome, ReceiptSeen};
use claudemesh_schema::{ClaimId, InviteId, MeshId, MessageId, SessionId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio_util::task::TaskTracker;

use super::mailbox::{ClusterMailbox, MailboxConfig};
use super::oplog::{ClusterOpLog, OpLogConfig, Room};
use super::{ClusterError, counts, entries_under, js_err};
use crate::store::{
    AckReceipts, Acked, Appended, Done, MeshNow, NewEnvelope, NewOp, OpsPage, PresenceNow, Pruned,
    Put, Snapshot, Snapshotted, Store, StoreError, Stored, StoredClaim, StoredReceipt,
    StoredSnapshot, Usage,
};

/// How the relay's state is laid out on the cluster.
#[derive(Debug, Clone)]
pub struct ClusterStoreConfig {
    /// Stream, bucket and subject names start with this: several deployments (or tests)
    /// can share one NATS cluster.
    pub prefix: String,
    /// Replicas of every stream and bucket (3 on a 3-server cluster).
    pub replicas: usize,
    /// Longest an envelope waits for its recipients (the relay's message TTL).
    pub message_ttl: Duration,
    /// JetStream's own window for finding resent publishes.
    pub duplicate_window: Duration,
    /// What one mesh may hold undelivered, over every node.
    pub mesh_quota: super::mailbox::Quota,
    /// Most bytes of one mesh's op log and snapshot, over every node (`0`: no limit).
    pub mesh_quota_op_bytes: u64,
    /// Most meshes hosted, over every node (`0`: no limit).
    pub max_meshes: u64,
    /// Meshes one address may create per clock hour, over every node (`0`: no limit).
    pub creations_per_hour: u64,
    /// This node's id (as on the bus): a presence names the node its link is up at.
    pub node: String,
}

impl From<ClusterError> for StoreError {
    fn from(e: ClusterError) -> Self {
        StoreError::Cluster(Box::new(e))
    }
}

fn json<T: Serialize>(v: &T, what: &'static str) -> Result<Bytes, ClusterError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ClusterError::Corrupt {
            what,
            detail: e.to_string(),
        })
}

fn parse<T: for<'de> Deserialize<'de>>(v: &[u8], what: &'static str) -> Result<T, ClusterError> {
    serde_json::from_slice(v).map_err(|e| ClusterError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// A roster entry as stored, with the claim it answers when it admits a claimant.
#[derive(Serialize, Deserialize)]
struct RosterValue {
    entry: RosterEntry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admits: Option<Admits>,
}

#[derive(Serialize, Deserialize)]
struct Admits {
    claim: ClaimId,
    outcome: ClaimOutcome,
    expires_at: i64,
}

#[derive(Serialize, Deserialize)]
struct InviteValue {
    cap: InviteCap,
    revoked_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct PresenceValue {
    record: SignedPresence,
    last_seen: i64,
    /// A link of the session is up at some node (set with each presence, cleared when
    /// the session departs or its link ends).
    #[serde(default)]
    online: bool,
    /// The node that link is up at: while that node's lease lapses, the session is not
    /// online whatever `online` says (a node killed never clears its sessions).
    #[serde(default)]
    node: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
struct SnapshotMeta {
    seq: u64,
    author: MemberKey,
    at: i64,
    size: u64,
    object: String,
}

#[derive(Serialize, Deserialize)]
struct ReceiptValue {
    at: i64,
    proof: Option<Signature>,
    until: i64,
}

/// The count of meshes hosted, in the state bucket.
const MESHES: &str = "use.meshes";

fn genesis_key(mesh: &MeshId) -> String {
    format!("g.{}", hex(mesh.as_bytes()))
}

fn roster_key(mesh: &MeshId, seq: u64) -> String {
    format!("r.{}.{seq:012}", hex(mesh.as_bytes()))
}

fn invite_key(id: &InviteId) -> String {
    format!("i.{}", hex(id.as_bytes()))
}

fn claim_key(id: &ClaimId) -> String {
    format!("c.{}", hex(id.as_bytes()))
}

fn presence_key(mesh: &MeshId, session: &SessionId) -> String {
    format!("p.{}.{}", hex(mesh.as_bytes()), hex(session.as_bytes()))
}

fn snapshot_key(mesh: &MeshId) -> String {
    format!("s.{}", hex(mesh.as_bytes()))
}

fn receipts_prefix(mesh: &MeshId, sender: &MemberKey) -> String {
    format!("{}.{}.", hex(mesh.as_bytes()), hex(&sender.0))
}

/// Whether a KV write failed because the revision it expected is no longer the newest.
/// The relay's state on a JetStream cluster; cheap to clone.
#[derive(Clone)]
pub struct ClusterStore {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    state: kv::Store,
    nonces: kv::Store,
    receipts: kv::Store,
    snapshots: object_store::ObjectStore,
    mail: ClusterMailbox,
    ops: ClusterOpLog,
    client: async_nats::Client,
    /// Where each member's copy of an envelope sits in the mail stream, as learnt from
    /// storing or reading it here (an acknowledgement through another node scans).
    positions: Mutex<HashMap<(MeshId, MemberKey, MessageId), u64>>,
    /// Held (shared) by every write still in flight; a barrier takes it exclusively.
    writes: Arc<tokio::sync::RwLock<()>>,
    tasks: TaskTracker,
    /// What [`Store::load`] hands over, read when the store was opened.
    loaded: Mutex<Option<Snapshot>>,
    /// Most bytes of one mesh's log and snapshot.
    op_quota: u64,
    /// Mesh creations per address and clock hour (keys expire after two hours).
    rates: kv::Store,
    /// Most meshes, and creations per address per hour.
    creation_limits: (u64, u64),
    /// Each mesh's room for ops, as last read.
    rooms: Mutex<HashMap<MeshId, Room>>,
}

/// Most meshes whose op room is remembered (beyond, it is read again).
const MAX_ROOMS: usize = 65_536;

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore").finish_non_exhaustive()
    }
}

/// Most stream positions kept in memory; past it they are forgotten (all at once: they are
/// only a shortcut, found again by reading the member's mailbox).
const MAX_POSITIONS: usize = 200_000;

fn forget_if_full(p: &mut HashMap<(MeshId, MemberKey, MessageId), u64>) {
    if p.len() >= MAX_POSITIONS {
        p.clear();
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn open_bucket(
    js: &jetstream::Context,
    name: String,
    replicas: usize,
    max_age: Duration,
    what: &'static str,
) -> Result<kv::Store, ClusterError> {
    super::bucket(
        js,
        kv::Config {
            bucket: name,
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        what,
    )
    .await
}

impl ClusterStore {
    /// Open (creating what is missing) the relay's state on the cluster `client` is
    /// connected to, and read what the relay keeps in memory.
    pub async fn open(
        client: async_nats::Client,
        cfg: &ClusterStoreConfig,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let upper = cfg.prefix.to_uppercase();
        let mail = ClusterMailbox::open(
            client.clone(),
            &MailboxConfig {
                prefix: cfg.prefix.clone(),
                replicas: cfg.replicas,
                max_age: cfg.message_ttl,
                duplicate_window: cfg.duplicate_window,
                quota: cfg.mesh_quota,
            },
        )
        .await?;
        let ops = ClusterOpLog::open(
            client.clone(),
            &OpLogConfig {
                prefix: cfg.prefix.clone(),
                replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
            },
        )
        .await?;
        let state = open_bucket(
            &js,
            format!("{upper}_STATE"),
            cfg.replicas,
            Duration::ZERO,
            "creating the state bucket",
        )
        .await?;
        let window = claudemesh_schema::wire::HELLO_WINDOW_MS as u64;
        let nonces = open_bucket(
            &js,
            format!("{upper}_NONCES"),
            cfg.replicas,
            Duration::from_millis(2 * window + 60_000),
            "creating the nonce bucket",
        )
        .await?;
        let receipts = open_bucket(
            &js,
            format!("{upper}_RCPT"),
            cfg.replicas,
            Duration::ZERO,
            "creating the receipt bucket",
        )
        .await?;
        let snap_name = format!("{upper}_SNAP");
        let snapshots = super::settled(|| async {
            match js.get_object_store(&snap_name).await {
                Ok(s) => Ok(s),
                Err(e) if e.to_string().contains("not found") => js
                    .create_object_store(object_store::Config {
                        bucket: snap_name.clone(),
                        storage: stream::StorageType::File,
                        num_replicas: cfg.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| js_err("creating the snapshot store")(e.to_string())),
                Err(e) => Err(js_err("opening the snapshot store")(e.to_string())),
            }
        })
        .await?;
        let rates = open_bucket(
            &js,
            format!("{upper}_RATES"),
            cfg.replicas,
            Duration::from_secs(2 * 3600),
            "creating the rate bucket",
        )
        .await?;
        for b in [&state, &nonces, &receipts, &rates] {
            super::until_bucket_ready(b).await?;
        }
        let store = Self {
            inner: Arc::new(Inner {
                node: cfg.node.clone(),
                state,
                nonces,
                receipts,
                snapshots,
                mail,
                ops,
                client,
                positions: Mutex::new(HashMap::new()),
                writes: Arc::new(tokio::sync::RwLock::new(())),
                tasks: TaskTracker::new(),
                loaded: Mutex::new(None),
                op_quota: cfg.mesh_quota_op_bytes,
                rates,
                creation_limits: (cfg.max_meshes, cfg.creations_per_hour),
                rooms: Mutex::new(HashMap::new()),
            }),
        };
        let snap = store.read_all().await?;
        *locked(&store.inner.loaded) = Some(snap);
        Ok(store)
    }

    async fn read_all(&self) -> Result<Snapshot, ClusterError> {
        let i = &self.inner;
        let now = claudemesh_schema::now_ms();
        let mut snap = Snapshot::default();
        let mut meshes: Vec<MeshGenesis> = Vec::new();
        let mut rosters: HashMap<MeshId, Vec<(String, RosterValue)>> = HashMap::new();
        let mut invites: Vec<InviteValue> = Vec::new();
        let mut claims: HashMap<ClaimId, StoredClaim> = HashMap::new();
        let before = counts::at(&i.state, MESHES).await?;
        for (key, value, _) in entries_under(&i.client, &i.state, "").await? {
            match key.split('.').next() {
                Some("g") => meshes.push(parse(&value, "mesh genesis")?),
                Some("r") => {
                    let v: RosterValue = parse(&value, "roster entry")?;
                    rosters.entry(v.entry.mesh).or_default().push((key, v));
                }
                Some("i") => invites.push(parse(&value, "invite")?),
                Some("c") => {
                    let c: StoredClaim = parse(&value, "claim")?;
                    claims.insert(c.id, c);
                }
                Some("p") => {
                    let p: PresenceValue = parse(&value, "presence")?;
                    snap.presence.push((p.record, p.last_seen));
                }
                _ => {}
            }
        }
        meshes.sort_by_key(|g| g.created_at);
        // The meshes' count, mended if a node died between counting and registering (and
        // nothing counted a mesh since it was read, before the scan).
        let recounted = HashMap::from([(MESHES.to_string(), (meshes.len() as u64, 0))]);
        counts::mend(&i.state, &before, &recounted).await;
        let mut uses: HashMap<InviteId, u32> = HashMap::new();
        for g in meshes {
            let mut entries = rosters.remove(&g.mesh).unwrap_or_default();
            // Keys carry the zero-padded sequence: their order is the roster's.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut list = Vec::with_capacity(entries.len());
            for (_, v) in entries {
                if let Some(inv) = v.entry.invite {
                    *uses.entry(inv).or_default() += 1;
                }
                // The claim's own record may have missed the outcome (a node died between
                // the two writes): the admitting entry has it.
                if let Some(a) = v.admits
                    && let Some(c) = claims.get_mut(&a.claim)
                    && c.outcome.is_none()
                {
                    c.outcome = Some(a.outcome);
                    c.expires_at = a.expires_at;
                }
                list.push(v.entry);
            }
            let op_bytes = self.op_bytes(&g.mesh).await?;
            if op_bytes > 0 {
                snap.op_usage.insert(g.mesh, op_bytes);
            }
            snap.meshes.push((g, list));
        }
        for v in invites {
            let n = uses.get(&v.cap.id).copied().unwrap_or(0);
            snap.invites.push((v.cap, n, v.revoked_at.is_some()));
        }
        let mut claims: Vec<StoredClaim> = claims
            .into_values()
            .filter(|c| c.expires_at > now)
            .collect();
        claims.sort_by_key(|c| c.at);
        snap.claims = claims;
        for (key, value, _) in entries_under(&i.client, &i.nonces, "n.").await? {
            let exp: i64 = String::from_utf8_lossy(&value).parse().unwrap_or(0);
            if exp > now
                && let Some(n) = super::unhex::<16>(key.trim_start_matches("n."))
            {
                snap.nonces.push((n, exp));
            }
        }
        snap.usage = i.mail.usage(&i.client).await?;
        Ok(snap)
    }

    async fn snapshot_meta(
        &self,
        mesh: &MeshId,
    ) -> Result<Option<(SnapshotMeta, u64)>, ClusterError> {
        match self
            .inner
            .state
            .entry(snapshot_key(mesh))
            .await
            .map_err(|e| js_err("reading a snapshot's metadata")(e.to_string()))?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((parse(&e.value, "snapshot metadata")?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Bytes of the mesh's op log (what is past its snapshot) and its snapshot.
    /// Bytes of the mesh's op log and snapshot now: what the head's sum adds since the
    /// snapshot's op, and the snapshot.
    async fn op_bytes(&self, mesh: &MeshId) -> Result<u64, ClusterError> {
        let room = self.room(mesh, true).await?;
        Ok(room.used(self.inner.ops.sum(mesh).await?))
    }

    /// What the mesh's log may hold (its snapshot read again when `fresh`, else as this
    /// node last read it: another node's newer snapshot only makes that stricter, and an
    /// append it would refuse asks again).
    async fn room(&self, mesh: &MeshId, fresh: bool) -> Result<Room, ClusterError> {
        if !fresh && let Some(r) = locked(&self.inner.rooms).get(mesh) {
            return Ok(*r);
        }
        let (compacted, snapshot) = match self.snapshot_meta(mesh).await? {
            None => (0, 0),
            Some((m, _)) => {
                let at = self
                    .inner
                    .ops
                    .page(mesh, m.seq, 1)
                    .await?
                    .into_iter()
                    .find(|o| o.seq == m.seq)
                    .map(|o| o.sum);
                // Its op gone (compacted by a newer snapshot meanwhile): the next read
                // finds that one.
                (at.unwrap_or(0), m.size)
            }
        };
        let room = Room {
            limit: self.inner.op_quota,
            compacted,
            snapshot,
        };
        let mut rooms = locked(&self.inner.rooms);
        if rooms.len() >= MAX_ROOMS {
            rooms.clear();
        }
        rooms.insert(*mesh, room);
        Ok(room)
    }

    /// Where `member`'s copies of `ids` are in the mail stream: known ones from memory,
    /// the rest by reading the member's mailbox.
    async fn positions_of(
        &self,
        mesh: MeshId,
        member: MemberKey,
        ids: &[MessageId],
    ) -> Result<HashMap<MessageId, u64>, ClusterError> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let p = locked(&self.inner.positions);
            for id in ids {
                match p.get(&(mesh, member, *id)) {
                    Some(&pos) => {
                        out.insert(*id, pos);
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            out.extend(self.inner.mail.find(&mesh, &member, &missing).await?);
        }
        Ok(out)
    }

    async fn do_ack(
        &self,
        mesh: MeshId,
        member: MemberKey,
        ids: Vec<MessageId>,
        receipts: AckReceipts,
    ) -> Result<Vec<Acked>, ClusterError> {
        let i = &self.inner;
        let positions = self.positions_of(mesh, member, &ids).await?;
        let mut out = Vec::new();
        for id in ids {
            let Some(&pos) = positions.get(&id) else {
                continue;
            };
            let Some((owner_mesh, sender)) = i.mail.owner(&id).await? else {
                continue;
            };
            if owner_mesh != mesh {
                continue;
            }
            // The receipt first: if this node dies before the copy goes, the copy is
            // delivered again and acknowledged again, and the receipt written again.
            let key = format!(
                "{}{}.{}",
                receipts_prefix(&mesh, &sender),
                hex(id.as_bytes()),
                hex(&member.0)
            );
            let v = ReceiptValue {
                at: receipts.at,
                proof: receipts.proofs.get(&id).copied(),
                until: receipts.until,
            };
            i.receipts
                .put(key, json(&v, "receipt")?)
                .await
                .map_err(|e| js_err("keeping a receipt")(e.to_string()))?;
            // The position stays known: a mailbox page read before this ack may start
            // after it.
            if !i.mail.take(&mesh, &member, pos).await? {
                continue;
            }
            let freed = match i.mail.settle(&id).await? {
                Some((size, true)) => Some(size),
                _ => None,
            };
            out.push(Acked { id, sender, freed });
        }
        Ok(out)
    }

    async fn do_put_snapshot(&self, snap: StoredSnapshot) -> Result<Snapshotted, ClusterError> {
        let i = &self.inner;
        let mesh = snap.mesh;
        let held = self.snapshot_meta(&mesh).await?;
        let have = held.as_ref().map(|(m, _)| m.seq).unwrap_or(0);
        let head = i.ops.head(&mesh).await?;
        // Only the author of op `seq` captures the snapshot at `seq` (the rule every
        // daemon follows): another member cannot replace the log with its bytes.
        let author_of_seq = i
            .ops
            .page(&mesh, snap.seq, 1)
            .await?
            .into_iter()
            .find(|o| o.seq == snap.seq)
            .map(|o| o.author);
        if snap.seq <= have || snap.seq > head || author_of_seq != Some(snap.author) {
            return Ok(Snapshotted {
                kept: false,
                op_bytes: self.op_bytes(&mesh).await?,
            });
        }
        let object = format!("{}.{}", hex(mesh.as_bytes()), snap.seq);
        i.snapshots
            .put(object.as_str(), &mut snap.ct.as_slice())
            .await
            .map_err(|e| js_err("storing a snapshot")(e.to_string()))?;
        let meta = SnapshotMeta {
            seq: snap.seq,
            author: snap.author,
            at: snap.at,
            size: snap.ct.len() as u64,
            object: object.clone(),
        };
        let value = json(&meta, "snapshot metadata")?;
        let won = match &held {
            Some((_, rev)) => match i.state.update(snapshot_key(&mesh), value, *rev).await {
                Ok(_) => true,
                Err(e) if counts::lost_update(&e) => false,
                Err(e) => return Err(js_err("keeping a snapshot")(e.to_string())),
            },
            None => match i.state.create(snapshot_key(&mesh), value).await {
                Ok(_) => true,
                Err(e) if counts::lost_create(&e) => false,
                Err(e) => return Err(js_err("keeping a snapshot")(e.to_string())),
            },
        };
        if !won {
            // Another node kept a snapshot meanwhile: this one's bytes go.
            let _ = i.snapshots.delete(&object).await;
            return Ok(Snapshotted {
                kept: false,
                op_bytes: self.op_bytes(&mesh).await?,
            });
        }
        if let Some((old, _)) = held
            && old.object != object
            && let Err(e) = i.snapshots.delete(&old.object).await
        {
            tracing::warn!(mesh = %mesh.short(), error = %e, "cannot drop a replaced snapshot");
        }
        // The ops it covers go; their ids stay in the op index, so a late resend of one
        // gets its old sequence number back.
        i.ops.compact(&mesh, snap.seq).await?;
        Ok(Snapshotted {
            kept: true,
            op_bytes: self.op_bytes(&mesh).await?,
        })
    }

    async fn do_snapshot(&self, mesh: MeshId) -> Result<Option<StoredSnapshot>, ClusterError> {
        let Some((meta, _)) = self.snapshot_meta(&mesh).await? else {
            return Ok(None);
        };
        let mut obj = self
            .inner
            .snapshots
            .get(&meta.object)
            .await
            .map_err(|e| js_err("reading a snapshot")(e.to_string()))?;
        let mut ct =
            Vec::with_capacity((meta.size as usize).min(claudemesh_schema::op::MAX_SNAPSHOT));
        obj.read_to_end(&mut ct)
            .await
            .map_err(|e| js_err("reading a snapshot")(e.to_string()))?;
        Ok(Some(StoredSnapshot {
            mesh,
            seq: meta.seq,
            author: meta.author,
            ct,
            at: meta.at,
        }))
    }

    async fn do_ops(
        &self,
        mesh: MeshId,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<OpsPage, ClusterError> {
        let first = self
            .snapshot_meta(&mesh)
            .await?
            .map(|(m, _)| m.seq + 1)
            .unwrap_or(1);
        let ops = self.inner.ops.page(&mesh, from.max(first), limit).await?;
        // Read after the page: the head is never behind an op the page holds.
        let head = self.inner.ops.head(&mesh).await?;
        let mut page = OpsPage {
            ops: Vec::new(),
            head,
            first,
        };
        let mut bytes = 0;
        for o in ops {
            bytes += o.op.len() + 48;
            if bytes > max_bytes && !page.ops.is_empty() {
                break;
            }
            page.ops.push((o.seq, o.at, o.op.to_vec()));
        }
        Ok(page)
    }

    async fn update_json<T, F>(
        &self,
        kv: &kv::Store,
        key: String,
        what: &'static str,
        f: F,
    ) -> Result<(), ClusterError>
    where
        T: Serialize + for<'de> Deserialize<'de>,
        F: Fn(&mut T) -> bool,
    {
        for _ in 0..16 {
            let Some(e) = kv
                .entry(key.clone())
                .await
                .map_err(|e| js_err(what)(e.to_string()))?
            else {
                return Ok(());
            };
            if e.operation != kv::Operation::Put {
                return Ok(());
            }
            let mut v: T = parse(&e.value, what)?;
            if !f(&mut v) {
                return Ok(());
            }
            match kv.update(&key, json(&v, what)?, e.revision).await {
                Ok(_) => return Ok(()),
                Err(err) if counts::lost_update(&err) => continue,
                Err(err) => return Err(js_err(what)(err.to_string())),
            }
        }
        Err(js_err(what)("the entry keeps changing; try again".into()))
    }

    /// Before an admission through `id` is written: the invite is still not revoked, by
    /// a compare-and-set on its entry, so a revocation through another node either comes
    /// first (and this refuses) or after (as if the admission were done before it).
    async fn spend_invite(&self, id: &InviteId) -> Result<(), StoreError> {
        let state = &self.inner.state;
        let key = invite_key(id);
        for _ in 0..32 {
            let Some(held) = state
                .entry(&key)
                .await
                .map_err(|e| js_err("reading an invite")(e.to_string()))?
                .filter(|e| e.operation == kv::Operation::Put)
            else {
                return Err(StoreError::Revoked);
            };
            if parse::<InviteValue>(&held.value, "invite")?
                .revoked_at
                .is_some()
            {
                return Err(StoreError::Revoked);
            }
            match state.update(&key, held.value.clone(), held.revision).await {
                Ok(_) => return Ok(()),
                Err(e) if counts::lost_update(&e) => continue,
                Err(e) => return Err(js_err("spending an invite")(e.to_string()).into()),
            }
        }
        Err(js_err("spending an invite")("the invite keeps changing; try again".into()).into())
    }

    async fn do_mesh_now(&self, mesh: MeshId) -> Result<Option<MeshNow>, ClusterError> {
        let i = &self.inner;
        let Some(g) = i
            .state
            .get(genesis_key(&mesh))
            .await
            .map_err(|e| js_err("reading a mesh")(e.to_string()))?
        else {
            return Ok(None);
        };
        let genesis: MeshGenesis = parse(&g, "mesh genesis")?;
        let prefix = format!("r.{}.", hex(mesh.as_bytes()));
        let mut entries = entries_under(&i.client, &i.state, &prefix).await?;
        // Keys carry the zero-padded sequence: their order is the roster's.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut roster = Vec::with_capacity(entries.len());
        let mut admitted = Vec::new();
        for (seq, (_, v, _)) in entries.into_iter().enumerate() {
            let v: RosterValue = parse(&v, "roster entry")?;
            if let Some(a) = v.admits {
                admitted.push((seq as u64, a.claim, a.outcome, a.expires_at));
            }
            roster.push(v.entry);
        }
        let prefix = format!("p.{}.", hex(mesh.as_bytes()));
        let mut presence = Vec::new();
        for (_, v, _) in entries_under(&i.client, &i.state, &prefix).await? {
            let p: PresenceValue = parse(&v, "presence")?;
            presence.push(PresenceNow {
                record: p.record,
                last_seen: p.last_seen,
                online: p.online,
                node: p.node,
            });
        }
        Ok(Some(MeshNow {
            genesis,
            roster,
            admitted,
            presence,
        }))
    }

    async fn do_prune(&self, now: i64) -> Result<Pruned, ClusterError> {
        let i = &self.inner;
        for (key, value, _) in entries_under(&i.client, &i.state, "c.").await? {
            let c: StoredClaim = parse(&value, "claim")?;
            if c.expires_at < now {
                let _ = i.state.purge(&key).await;
            }
        }
        for (key, value, _) in entries_under(&i.client, &i.receipts, "").await? {
            let r: ReceiptValue = parse(&value, "receipt")?;
            if r.until < now {
                let _ = i.receipts.purge(&key).await;
            }
        }
        i.mail.expire(&i.client, now).await
    }

    fn spawn_write<F>(&self, fut: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let writes = self.inner.writes.clone();
        let tasks = self.inner.tasks.clone();
        async move {
            // Taken before the task starts: a barrier asked for after this call waits for it.
            let guard = writes.read_owned().await;
            tasks.spawn(async move {
                fut.await;
                drop(guard);
            });
        }
    }
}

impl Store for ClusterStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        locked(&self.inner.loaded)
            .take()
            .ok_or_else(|| StoreError::Corrupt {
                what: "cluster state",
                detail: "already handed over once; open the store again to read it again".into(),
            })
    }

    async fn create_mesh(&self, g: MeshGenesis, source: IpAddr) -> Result<(), StoreError> {
        let i = &self.inner;
        let (max_meshes, per_hour) = i.creation_limits;
        // Counted over every node: the creations from one address this clock hour, and
        // the meshes hosted (given back if the mesh is not registered after all).
        if per_hour > 0 {
            let now = claudemesh_schema::now_ms();
            let hour = now.div_euclid(3_600_000);
            let source = crate::limits::address_key(source).to_string();
            let key = format!("c.{}.{hour}", hex(source.as_bytes()));
            if !counts::add(&i.rates, &key, (1, 0), Some((per_hour, 0))).await? {
                let retry = (hour + 1) * 3_600_000 - now;
                return Err(StoreError::Limit {
                    what: "this address created as many meshes as the relay allows this hour",
                    retry_ms: Some(retry.max(1) as u64),
                });
            }
        }
        if !counts::add(&i.state, MESHES, (1, 0), Some((max_meshes, 0))).await? {
            return Err(StoreError::Limit {
                what: "this relay hosts as many meshes as it allows",
                retry_ms: None,
            });
        }
        let v = json(&g, "mesh genesis")?;
        match i.state.create(genesis_key(&g.mesh), v).await {
            Ok(_) => Ok(()),
            Err(e) => {
                counts::take(&i.state, MESHES, (1, 0)).await;
                if counts::lost_create(&e) {
                    Err(StoreError::Exists)
                } else {
                    Err(js_err("registering a mesh")(e.to_string()).into())
                }
            }
        }
    }

    async fn append_roster(&self, seq: u64, entry: RosterEntry) -> Result<(), StoreError> {
        if let Some(inv) = entry.invite {
            self.spend_invite(&inv).await?;
        }
        let key = roster_key(&entry.mesh, seq);
        let v = json(
            &RosterValue {
                entry,
                admits: None,
            },
            "roster entry",
        )?;
        self.inner
            .state
            .create(key, v)
            .await
            .map_err(|e| js_err("appending a roster entry")(e.to_string()))?;
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
        if let Some(inv) = entry.invite {
            self.spend_invite(&inv).await?;
        }
        let key = roster_key(&entry.mesh, seq);
        let v = RosterValue {
            entry,
            admits: Some(Admits {
                claim,
                outcome: outcome.clone(),
                expires_at,
            }),
        };
        self.inner
            .state
            .create(key, json(&v, "roster entry")?)
            .await
            .map_err(|e| js_err("admitting a member")(e.to_string()))?;
        // Admitted: the entry carries the answer, so a failure here loses nothing (the
        // next start reads it from the entry).
        if let Err(e) = self
            .update_json::<StoredClaim, _>(
                &self.inner.state,
                claim_key(&claim),
                "recording a claim's answer",
                |c| {
                    c.outcome = Some(outcome.clone());
                    c.expires_at = expires_at;
                    true
                },
            )
            .await
        {
            tracing::warn!(error = %e, "the claim's answer is kept in its roster entry only");
        }
        Ok(())
    }

    async fn put_claim(&self, c: StoredClaim) -> Result<(), StoreError> {
        self.inner
            .state
            .put(claim_key(&c.id), json(&c, "claim")?)
            .await
            .map_err(|e| js_err("keeping a claim")(e.to_string()))?;
        Ok(())
    }

    async fn decide_claims(
        &self,
        ids: Vec<ClaimId>,
        outcome: ClaimOutcome,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        for id in ids {
            self.update_json::<StoredClaim, _>(
                &self.inner.state,
                claim_key(&id),
                "deciding a claim",
                |c| {
                    c.outcome = Some(outcome.clone());
                    c.expires_at = expires_at;
                    true
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_claims(&self, ids: Vec<ClaimId>) -> Result<(), StoreError> {
        for id in ids {
            self.inner
                .state
                .purge(claim_key(&id))
                .await
                .map_err(|e| js_err("forgetting a claim")(e.to_string()))?;
        }
        Ok(())
    }

    async fn put_invite(&self, cap: InviteCap) -> Result<(), StoreError> {
        let key = invite_key(&cap.id);
        let v = json(
            &InviteValue {
                cap,
                revoked_at: None,
            },
            "invite",
        )?;
        match self.inner.state.create(key, v).await {
            Ok(_) => Ok(()),
            Err(e) if counts::lost_create(&e) => Ok(()),
            Err(e) => Err(js_err("keeping an invite")(e.to_string()).into()),
        }
    }

    async fn revoke_invite(&self, id: InviteId, at: i64) -> Result<(), StoreError> {
        self.update_json::<InviteValue, _>(
            &self.inner.state,
            invite_key(&id),
            "revoking an invite",
            |v| {
                if v.revoked_at.is_some() {
                    return false;
                }
                v.revoked_at = Some(at);
                true
            },
        )
        .await?;
        Ok(())
    }

    async fn put_nonce(&self, nonce: [u8; 16], expires_at: i64) -> Result<(), StoreError> {
        let key = format!("n.{}", hex(&nonce));
        match self
            .inner
            .nonces
            .create(key, Bytes::from(expires_at.to_string()))
            .await
        {
            Ok(_) => Ok(()),
            // Used through another node: the replay is refused here too.
            Err(e) if counts::lost_create(&e) => Err(StoreError::Replayed),
            Err(e) => Err(js_err("recording a hello nonce")(e.to_string()).into()),
        }
    }

    async fn put_presence(&self, p: SignedPresence, last_seen: i64) -> Result<(), StoreError> {
        let key = presence_key(&p.mesh, &p.session);
        let v = json(
            &PresenceValue {
                record: p,
                last_seen,
                online: true,
                node: Some(self.inner.node.clone()),
            },
            "presence",
        )?;
        let state = self.inner.state.clone();
        self.spawn_write(async move {
            if let Err(e) = state.put(key, v).await {
                tracing::warn!(error = %e, "cannot keep a presence");
            }
        })
        .await;
        Ok(())
    }

    async fn touch_presence(
        &self,
        mesh: MeshId,
        sessions: Vec<SessionId>,
        last_seen: i64,
    ) -> Result<(), StoreError> {
        let me = self.clone();
        self.spawn_write(async move {
            for s in sessions {
                let r = me
                    .update_json::<PresenceValue, _>(
                        &me.inner.state,
                        presence_key(&mesh, &s),
                        "touching a presence",
                        |p| {
                            p.last_seen = last_seen;
                            p.online = false;
                            true
                        },
                    )
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot update a presence's last-seen time");
                    return;
                }
            }
        })
        .await;
        Ok(())
    }

    async fn put_envelope(&self, e: NewEnvelope, done: Done<Put>) -> Result<(), StoreError> {
        let me = self.clone();
        self.spawn_write(async move {
            let r = me.inner.mail.put_at(&e).await;
            if let Ok((_, positions)) = &r {
                let mut p = locked(&me.inner.positions);
                forget_if_full(&mut p);
                for (member, pos) in positions {
                    p.insert((e.mesh, *member, e.id), *pos);
                }
            }
            done(r.map(|(put, _)| put).map_err(StoreError::from));
        })
        .await;
        Ok(())
    }

    async fn owner(&self, id: MessageId) -> Result<Option<(MeshId, MemberKey)>, StoreError> {
        Ok(self.inner.mail.owner(&id).await?)
    }

    async fn barrier(&self, done: Done<()>) -> Result<(), StoreError> {
        let w = self.inner.writes.clone().write_owned().await;
        drop(w);
        done(Ok(()));
        Ok(())
    }

    async fn ack(
        &self,
        mesh: MeshId,
        member: MemberKey,
        ids: Vec<MessageId>,
        _dedupe_until: i64,
        receipts: AckReceipts,
        done: Done<Vec<Acked>>,
    ) -> Result<(), StoreError> {
        // The id index keeps every id for the whole message TTL: resends are found as long
        // as the single relay's `dedupe_until` would find them, and longer.
        let me = self.clone();
        self.spawn_write(async move {
            done(
                me.do_ack(mesh, member, ids, receipts)
                    .await
                    .map_err(StoreError::from),
            );
        })
        .await;
        Ok(())
    }

    async fn receipts(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        after: Option<ReceiptSeen>,
        limit: usize,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let i = &self.inner;
        let prefix = receipts_prefix(&mesh, &sender);
        let now = claudemesh_schema::now_ms();
        let mut out = Vec::new();
        for (key, value, _) in entries_under(&i.client, &i.receipts, &prefix).await? {
            let rest = key.trim_start_matches(prefix.as_str());
            let mut parts = rest.split('.');
            let (Some(id), Some(member)) = (
                parts.next().and_then(super::unhex::<16>),
                parts.next().and_then(super::unhex::<32>),
            ) else {
                continue;
            };
            let v: ReceiptValue = parse(&value, "receipt")?;
            if v.until < now {
                continue;
            }
            out.push(StoredReceipt {
                id: MessageId::from_bytes(id),
                member: MemberKey(member),
                at: v.at,
                proof: v.proof,
            });
        }
        out.sort_by_key(|a| (a.id, a.member));
        if let Some(a) = after {
            out.retain(|r| (r.id, r.member) > (a.id, a.member));
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn receipts_seen(
        &self,
        mesh: MeshId,
        sender: MemberKey,
        seen: Vec<ReceiptSeen>,
    ) -> Result<(), StoreError> {
        let prefix = receipts_prefix(&mesh, &sender);
        for r in seen {
            let key = format!("{prefix}{}.{}", hex(r.id.as_bytes()), hex(&r.member.0));
            self.inner
                .receipts
                .purge(key)
                .await
                .map_err(|e| js_err("forgetting a receipt")(e.to_string()))?;
        }
        Ok(())
    }

    async fn mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let start = match after {
            Some(id) => self
                .positions_of(mesh, member, &[id])
                .await?
                .get(&id)
                .copied()
                .unwrap_or(0),
            None => 0,
        };
        let page = self
            .inner
            .mail
            .mailbox(&mesh, &member, start, limit)
            .await?;
        let mut p = locked(&self.inner.positions);
        forget_if_full(&mut p);
        Ok(page
            .into_iter()
            .map(|(pos, s)| {
                p.insert((mesh, member, s.id), pos);
                s
            })
            .collect())
    }

    async fn drop_mailbox(
        &self,
        mesh: MeshId,
        member: MemberKey,
    ) -> Result<(u64, u64), StoreError> {
        let i = &self.inner;
        let ids = i.mail.drop_member(&mesh, &member).await?;
        let (mut n, mut bytes) = (0, 0);
        for id in ids {
            locked(&i.positions).remove(&(mesh, member, id));
            if let Some((size, true)) = i.mail.settle(&id).await? {
                n += 1;
                bytes += size;
            }
        }
        // Nor does it get receipts any more.
        for (key, _, _) in
            entries_under(&i.client, &i.receipts, &receipts_prefix(&mesh, &member)).await?
        {
            let _ = i.receipts.purge(&key).await;
        }
        Ok((n, bytes))
    }

    async fn prune(&self, now: i64, _op_ids_before: i64) -> Result<Pruned, StoreError> {
        Ok(self.do_prune(now).await?)
    }

    async fn append_op(&self, op: NewOp, done: Done<Appended>) -> Result<(), StoreError> {
        let room = match self.room(&op.mesh, false).await {
            Ok(r) => r,
            Err(e) => {
                done(Err(e.into()));
                return Ok(());
            }
        };
        // `done` runs under the mesh's append lock: in sequence order across calls.
        self.inner
            .ops
            .append_then(
                &op,
                room,
                || self.room(&op.mesh, true),
                |r| done(r.map_err(StoreError::from)),
            )
            .await;
        Ok(())
    }

    async fn put_snapshot(&self, snap: StoredSnapshot) -> Result<Snapshotted, StoreError> {
        Ok(self.do_put_snapshot(snap).await?)
    }

    async fn snapshot(&self, mesh: MeshId) -> Result<Option<StoredSnapshot>, StoreError> {
        Ok(self.do_snapshot(mesh).await?)
    }

    async fn ops(
        &self,
        mesh: MeshId,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<OpsPage, StoreError> {
        Ok(self.do_ops(mesh, from, limit, max_bytes).await?)
    }

    async fn claims_now(&self) -> Result<Option<Vec<StoredClaim>>, StoreError> {
        let i = &self.inner;
        let mut out = Vec::new();
        for (_, value, _) in entries_under(&i.client, &i.state, "c.")
            .await
            .map_err(StoreError::from)?
        {
            out.push(parse::<StoredClaim>(&value, "claim")?);
        }
        Ok(Some(out))
    }

    async fn usage_now(&self) -> Result<Option<Usage>, StoreError> {
        let i = &self.inner;
        Ok(Some(i.mail.usage(&i.client).await?))
    }

    async fn invite_now(&self, id: InviteId) -> Result<Option<(InviteCap, bool)>, StoreError> {
        let v = self
            .inner
            .state
            .get(invite_key(&id))
            .await
            .map_err(|e| js_err("reading an invite")(e.to_string()))?;
        let Some(v) = v else { return Ok(None) };
        let v: InviteValue = parse(&v, "invite")?;
        Ok(Some((v.cap, v.revoked_at.is_some())))
    }

    async fn mesh_now(&self, mesh: MeshId) -> Result<Option<MeshNow>, StoreError> {
        Ok(self.do_mesh_now(mesh).await?)
    }
}
