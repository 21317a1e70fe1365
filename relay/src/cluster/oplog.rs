//! Each mesh's op log on JetStream: one stream (`<P>_OPS`, subjects `<p>.ops.<mesh>`,
//! replicated) for every mesh, so a thousand meshes are a thousand subjects, not a thousand
//! Raft groups. The dense per-mesh sequence is a header (`Cm-Seq`) the appending node
//! writes as the mesh's head + 1, and JetStream's optimistic concurrency makes it one total
//! order: a publish carries `Nats-Expected-Last-Subject-Sequence` (the stream sequence of
//! the mesh's last op as the node knows it), so of two nodes appending at once one wins and
//! the other reads the new head and tries again. No two ops get one number, and no number
//! is skipped.
//!
//! Resends are found twice over: within JetStream's duplicate window by `Nats-Msg-Id`
//! (`<mesh>.<op id>`; a publish whose ack was lost comes back as a duplicate of itself),
//! and after it by a durable index (a KV bucket, `<P>_OPIDX`: op id → sequence, and every
//! [`CHECKPOINT`]th sequence → its stream sequence, where catch-up pages start).

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::{MeshId, OpId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{ClusterError, header, js_err};
use crate::store::{Appended, NewOp};

/// Every this many sequences the index records where the op is in the stream.
pub const CHECKPOINT: u64 = 64;
/// Most attempts at one append before it is given up as contended.
const MAX_TRIES: u32 = 64;
/// JetStream's duplicate window for op publishes, by default.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How the op log is laid out on the cluster.
#[derive(Debug, Clone)]
pub struct OpLogConfig {
    /// Stream and bucket names start with this (upper case) and subjects with it in lower
    /// case: several relay deployments (or tests) can share one NATS cluster.
    pub prefix: String,
    /// Replicas of the stream and the index (3 on a 3-server cluster: one server may
    /// fail and nothing acknowledged is lost).
    pub replicas: usize,
    /// How long JetStream itself finds a resent publish ([`DUPLICATE_WINDOW`]); later
    /// resends are found by the index.
    pub duplicate_window: Duration,
}

impl Default for OpLogConfig {
    fn default() -> Self {
        Self {
            prefix: "CM".into(),
            replicas: 3,
            duplicate_window: DUPLICATE_WINDOW,
        }
    }
}

/// The mesh's head as this node last saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    /// Known at all (else read it first).
    known: bool,
    /// The mesh's last sequence.
    seq: u64,
    /// The stream sequence of that op (0: no op yet).
    stream_seq: u64,
    /// Bytes of the mesh's ops up to it, all sequences (its `Cm-Sum`).
    sum: u64,
}

/// What a mesh's log may hold, for an append to check at the head it extends: every
/// node checks against the same sum (the head's `Cm-Sum`), so the quota holds over
/// every node, not per node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Room {
    /// Most bytes of the log and its snapshot (`0`: no limit).
    pub limit: u64,
    /// Bytes of the ops a snapshot covers (the `Cm-Sum` of its op): compacted away.
    pub compacted: u64,
    /// The snapshot's bytes.
    pub snapshot: u64,
}

impl Room {
    /// Bytes the log and snapshot hold at a head summing `sum`.
    pub fn used(&self, sum: u64) -> u64 {
        sum.saturating_sub(self.compacted) + self.snapshot
    }

    fn holds(&self, sum: u64, more: u64) -> bool {
        self.limit == 0 || self.used(sum) + more <= self.limit
    }
}

/// The op logs of every mesh, on one JetStream cluster.
pub struct ClusterOpLog {
    js: jetstream::Context,
    stream: stream::Stream,
    index: kv::Store,
    subject_prefix: String,
    /// Appends of one mesh on this node go one at a time (races are across nodes only).
    heads: Mutex<HashMap<MeshId, Arc<tokio::sync::Mutex<Head>>>>,
}

impl std::fmt::Debug for ClusterOpLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOpLog")
            .field("subjects", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

fn num<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T, ClusterError> {
    s.parse().map_err(|_| ClusterError::Corrupt {
        what,
        detail: format!("{s:?} is not a number"),
    })
}

/// Whether a publish was refused because another node appended first. A clustered
/// stream answers a failed expected-last-subject-sequence with error 10164 (a constant
/// "wrong last sequence"), which this client version does not map to its kind.
fn lost_race(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || e.to_string().contains("wrong last sequence")
}

/// An op as stored: its sequence, sequencing time, author and envelope.
#[derive(Debug, Clone)]
pub struct StoredOp {
    /// Its sequence in the mesh.
    pub seq: u64,
    /// Sequenced at, unix ms.
    pub at: i64,
    /// Its author.
    pub author: MemberKey,
    /// Its id.
    pub id: String,
    /// The op envelope JSON.
    pub op: Bytes,
    /// Where it is in the stream.
    pub position: u64,
    /// Bytes of the mesh's ops up to this one, all sequences.
    pub sum: u64,
}

fn stored(m: &jetstream::message::StreamMessage) -> Result<StoredOp, ClusterError> {
    let author = header(&m.headers, "Cm-Author")?;
    let author = claudemesh_schema::encoding::unb64_array::<32>(&author)
        .map(MemberKey)
        .ok_or(ClusterError::Corrupt {
            what: "author",
            detail: "not a key".into(),
        })?;
    Ok(StoredOp {
        seq: num(&header(&m.headers, "Cm-Seq")?, "sequence")?,
        at: num(&header(&m.headers, "Cm-At")?, "time")?,
        author,
        id: header(&m.headers, "Cm-Op")?,
        op: m.payload.clone(),
        position: m.sequence,
        // Absent from no op this version wrote; read as nothing (the quota then counts
        // from the next op on).
        sum: header(&m.headers, "Cm-Sum")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    })
}

impl ClusterOpLog {
    /// Open (creating when missing) the op stream and its index on the cluster `client`
    /// is connected to.
    pub async fn open(client: async_nats::Client, cfg: &OpLogConfig) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        let upper = cfg.prefix.to_uppercase();
        let lower = cfg.prefix.to_lowercase();
        let stream = super::settled(|| async {
            js.get_or_create_stream(stream::Config {
                name: format!("{upper}_OPS"),
                subjects: vec![format!("{lower}.ops.*")],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
                // An op is never taken out of the log one by one (a snapshot compacts it
                // by purging): a relay bug or a stolen credential cannot punch a gap.
                deny_delete: true,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating the op stream")(e.to_string()))
        })
        .await?;
        super::keep_config(&js, &format!("{upper}_OPS"), cfg.replicas, Duration::ZERO).await;
        let index = super::bucket(
            &js,
            kv::Config {
                bucket: format!("{upper}_OPIDX"),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            },
            "creating the op index",
        )
        .await?;
        super::until_ready(&stream, &format!("{lower}.ops.ready"), &index).await?;
        Ok(Self {
            js,
            stream,
            index,
            subject_prefix: format!("{lower}.ops"),
            heads: Mutex::new(HashMap::new()),
        })
    }

    fn subject(&self, mesh: &MeshId) -> String {
        format!(
            "{}.{}",
            self.subject_prefix,
            claudemesh_schema::crypto::hex(mesh.as_bytes())
        )
    }

    fn id_key(mesh: &MeshId, id: &OpId) -> String {
        format!(
            "id.{}.{}",
            claudemesh_schema::crypto::hex(mesh.as_bytes()),
            claudemesh_schema::crypto::hex(id.as_bytes())
        )
    }

    fn checkpoint_key(mesh: &MeshId, seq: u64) -> String {
        format!(
            "cp.{}.{seq}",
            claudemesh_schema::crypto::hex(mesh.as_bytes())
        )
    }

    fn head_lock(&self, mesh: MeshId) -> Arc<tokio::sync::Mutex<Head>> {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        heads.entry(mesh).or_default().clone()
    }

    /// The mesh's head as the stream holds it.
    async fn read_head(&self, mesh: &MeshId) -> Result<Head, ClusterError> {
        let last =
            super::last_on_subject(&self.stream, &self.subject(mesh), "reading the mesh's head")
                .await?;
        Ok(match last {
            Some(m) => {
                let s = stored(&m)?;
                Head {
                    known: true,
                    seq: s.seq,
                    stream_seq: m.sequence,
                    sum: s.sum,
                }
            }
            None => Head {
                known: true,
                seq: 0,
                stream_seq: 0,
                sum: 0,
            },
        })
    }

    /// The server leading the op stream's replicas now (its `server_name`).
    pub async fn leader(&self) -> Result<Option<String>, ClusterError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| js_err("reading the op stream's state")(e.to_string()))?;
        Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
    }

    /// The mesh's newest sequence (0: no op yet).
    pub async fn head(&self, mesh: &MeshId) -> Result<u64, ClusterError> {
        Ok(self.read_head(mesh).await?.seq)
    }

    /// Bytes of all the mesh's ops ever appended (compacted ones too).
    pub async fn sum(&self, mesh: &MeshId) -> Result<u64, ClusterError> {
        Ok(self.read_head(mesh).await?.sum)
    }

    /// What the index says of an op id: its sequence, time and author.
    async fn indexed(
        &self,
        mesh: &MeshId,
        id: &OpId,
    ) -> Result<Option<(u64, i64, MemberKey)>, ClusterError> {
        let Some(v) = self
            .index
            .get(Self::id_key(mesh, id))
            .await
            .map_err(|e| js_err("reading the op index")(e.to_string()))?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&v).to_string();
        let mut parts = text.split(' ');
        let (Some(seq), Some(at), Some(author)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ClusterError::Corrupt {
                what: "index entry",
                detail: text,
            });
        };
        let author = claudemesh_schema::encoding::unb64_array::<32>(author)
            .map(MemberKey)
            .ok_or(ClusterError::Corrupt {
                what: "index author",
                detail: "not a key".into(),
            })?;
        Ok(Some((
            num(seq, "index sequence")?,
            num(at, "index time")?,
            author,
        )))
    }

    async fn record(
        &self,
        mesh: &MeshId,
        s: &StoredOp,
        stream_seq: u64,
    ) -> Result<(), ClusterError> {
        let id: OpId =
            serde_json::from_value(serde_json::Value::String(s.id.clone())).map_err(|_| {
                ClusterError::Corrupt {
                    what: "op id",
                    detail: s.id.clone(),
                }
            })?;
        let value = format!("{} {} {}", s.seq, s.at, s.author.to_b64());
        self.index
            .put(Self::id_key(mesh, &id), Bytes::from(value))
            .await
            .map_err(|e| js_err("writing the op index")(e.to_string()))?;
        if s.seq % CHECKPOINT == 1 {
            self.index
                .put(
                    Self::checkpoint_key(mesh, s.seq),
                    Bytes::from(stream_seq.to_string()),
                )
                .await
                .map_err(|e| js_err("writing a checkpoint")(e.to_string()))?;
        }
        Ok(())
    }

    /// Append an op with the mesh's next sequence, durable on the cluster (acknowledged by
    /// JetStream, on every replica's quorum) before this returns; or find the sequence it
    /// already has (a resend).
    pub async fn append(&self, op: &NewOp) -> Result<Appended, ClusterError> {
        let lock = self.head_lock(op.mesh);
        let mut head = lock.lock().await;
        self.append_locked(op, &mut head, Room::default()).await
    }

    /// Like [`ClusterOpLog::append`], within `room` (an op that does not fit is not
    /// stored: `full`; before refusing, `fresh` is asked for the room again, as another
    /// node's snapshot may have made some), and `then` runs with the outcome before the
    /// next append of the mesh through this node starts: in sequence order across calls.
    pub async fn append_then<F, R, Fut>(&self, op: &NewOp, room: Room, fresh: R, then: F)
    where
        F: FnOnce(Result<Appended, ClusterError>),
        R: FnOnce() -> Fut,
        Fut: Future<Output = Result<Room, ClusterError>>,
    {
        let lock = self.head_lock(op.mesh);
        let mut head = lock.lock().await;
        let mut r = self.append_locked(op, &mut head, room).await;
        if matches!(r, Ok(a) if a.full) {
            r = match fresh().await {
                Ok(room) => self.append_locked(op, &mut head, room).await,
                Err(e) => Err(e),
            };
        }
        then(r);
    }

    /// Drop the mesh's ops before sequence `seq` (a snapshot at `seq` covers them; op
    /// `seq` itself is kept as the mesh's head, and pages start after the snapshot). Their
    /// ids stay in the index.
    pub async fn compact(&self, mesh: &MeshId, seq: u64) -> Result<(), ClusterError> {
        let Some(op) = self
            .page(mesh, seq, 1)
            .await?
            .into_iter()
            .find(|o| o.seq == seq)
        else {
            return Ok(());
        };
        // Everything before op `seq`, not op `seq` itself: the mesh's last op stays, so
        // its head (read from the stream) never goes back, even for a snapshot at the head.
        self.stream
            .purge()
            .filter(self.subject(mesh))
            .sequence(op.position)
            .await
            .map_err(|e| js_err("compacting the op log")(e.to_string()))?;
        Ok(())
    }

    async fn append_locked(
        &self,
        op: &NewOp,
        head: &mut Head,
        room: Room,
    ) -> Result<Appended, ClusterError> {
        if let Some((seq, at, author)) = self.indexed(&op.mesh, &op.id).await? {
            return Ok(Appended {
                seq,
                at,
                new: false,
                taken: author != op.author,
                full: false,
            });
        }
        if !head.known {
            *head = self.read_head(&op.mesh).await?;
        }
        let subject = self.subject(&op.mesh);
        let msg_id = format!(
            "{}.{}",
            claudemesh_schema::crypto::hex(op.mesh.as_bytes()),
            claudemesh_schema::crypto::hex(op.id.as_bytes())
        );
        let size = op.op.len() as u64;
        for attempt in 0..MAX_TRIES {
            // Checked at the head this op extends: a lost race re-reads it, and checks
            // again against what the other node appended.
            if !room.holds(head.sum, size) {
                return Ok(Appended {
                    seq: 0,
                    at: op.at,
                    new: false,
                    taken: false,
                    full: true,
                });
            }
            let next = head.seq + 1;
            let sum = head.sum + size;
            let msg = jetstream::message::PublishMessage::build()
                .payload(op.op.clone())
                .header("Cm-Seq", next.to_string().as_str())
                .header("Cm-Sum", sum.to_string().as_str())
                .header("Cm-At", op.at.to_string().as_str())
                .header("Cm-Author", op.author.to_b64().as_str())
                .header("Cm-Op", op.id.to_string().as_str())
                .message_id(&msg_id)
                .expected_last_subject_sequence(head.stream_seq);
            let ack = match self.js.send_publish(subject.clone(), msg).await {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            match ack {
                // This very op, published before (its ack was lost): what it got then.
                Ok(ack) if ack.duplicate => {
                    let m = super::at_position(&self.stream, ack.sequence, "reading a resent op")
                        .await?
                        .ok_or(ClusterError::Corrupt {
                            what: "resent op",
                            detail: "its first copy is gone".into(),
                        })?;
                    let s = stored(&m)?;
                    self.record(&op.mesh, &s, ack.sequence).await?;
                    head.known = false;
                    return Ok(Appended {
                        seq: s.seq,
                        at: s.at,
                        new: false,
                        taken: s.author != op.author,
                        full: false,
                    });
                }
                Ok(ack) => {
                    *head = Head {
                        known: true,
                        seq: next,
                        stream_seq: ack.sequence,
                        sum,
                    };
                    let s = StoredOp {
                        seq: next,
                        at: op.at,
                        author: op.author,
                        id: op.id.to_string(),
                        op: op.op.clone(),
                        position: ack.sequence,
                        sum,
                    };
                    // Durable already, but the author is told only once the index has it: a
                    // resend after the duplicate window must find its sequence there. If
                    // this fails the author resends within the window and JetStream hands
                    // back the first copy (above), which records it again.
                    self.record(&op.mesh, &s, ack.sequence).await?;
                    return Ok(Appended {
                        seq: next,
                        at: op.at,
                        new: true,
                        taken: false,
                        full: false,
                    });
                }
                Err(e) if lost_race(&e) => {
                    // Another node appended first: read the new head and go again, a
                    // little later each time a few races were lost in a row.
                    *head = self.read_head(&op.mesh).await?;
                    if attempt >= 4 {
                        let jitter = u64::from(claudemesh_schema::crypto::random_bytes::<1>()[0]);
                        tokio::time::sleep(Duration::from_millis(
                            (u64::from(attempt.min(10)) * 2) + jitter % 8,
                        ))
                        .await;
                    }
                }
                Err(e) => {
                    head.known = false;
                    return Err(js_err("appending an op")(e.to_string()));
                }
            }
        }
        Err(ClusterError::Contended {
            mesh: op.mesh.short(),
        })
    }

    /// Up to `limit` ops of the mesh from sequence `from` on, in order.
    pub async fn page(
        &self,
        mesh: &MeshId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredOp>, ClusterError> {
        let from = from.max(1);
        // Start at the nearest checkpoint at or before `from` (or the stream's start).
        let mut cp = (from - 1) / CHECKPOINT * CHECKPOINT + 1;
        let mut start = 1u64;
        loop {
            match self.index.get(Self::checkpoint_key(mesh, cp)).await {
                Ok(Some(v)) => {
                    start = num(&String::from_utf8_lossy(&v), "checkpoint")?;
                    break;
                }
                Ok(None) | Err(_) if cp > CHECKPOINT => cp -= CHECKPOINT,
                _ => break,
            }
        }
        let subject = self.subject(mesh);
        let mut out = Vec::new();
        let mut at = start;
        while out.len() < limit {
            let Some(m) = super::next_on_subject(&self.stream, at, &subject, "reading ops").await?
            else {
                break;
            };
            let s = stored(&m)?;
            at = m.sequence + 1;
            if s.seq >= from {
                out.push(s);
            }
        }
        Ok(out)
    }
}
