//! Store-and-forward on JetStream: envelopes waiting for offline members, on one
//! replicated stream (`<P>_MAIL`, subjects `<p>.mail.<mesh>.<member>`, each message kept at
//! most the envelope TTL), so a message stored through one relay node is delivered through
//! whichever node its recipient connects to, and survives any one server. A copy per
//! recipient member: each member's acknowledgement deletes its own copy.
//!
//! Envelope ids are unique per (mesh, sender) cluster-wide through a KV bucket
//! (`<P>_MAILIDX`, created once per id): a resend by the same sender is a duplicate, the
//! same id from another sender or mesh is refused, as on the single relay.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::{MemberKey, hex};
use claudemesh_schema::{MeshId, MessageId};
use std::collections::HashMap;
use std::time::Duration;

use super::{ClusterError, counts, header, js_err};
use crate::store::{NewEnvelope, Put, Stored};

/// How long an envelope's index entry outlives the envelope (two sweeps and then some).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

/// JetStream's duplicate window for envelope publishes, by default.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How the mailboxes are laid out on the cluster.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// Stream and bucket names start with this (upper case), subjects with it (lower).
    pub prefix: String,
    /// Replicas of the stream and the id index.
    pub replicas: usize,
    /// Longest an envelope waits (the envelope TTL): older ones are dropped by JetStream.
    pub max_age: Duration,
    /// How long JetStream itself finds a resent publish ([`DUPLICATE_WINDOW`]); later
    /// resends are found by the id index.
    pub duplicate_window: Duration,
    /// What one mesh may hold undelivered, over every node.
    pub quota: Quota,
}

/// What one mesh may hold undelivered, cluster-wide (`0`: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quota {
    /// Envelopes.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Every member's mailbox, on one JetStream cluster.
pub struct ClusterMailbox {
    js: jetstream::Context,
    stream: stream::Stream,
    ids: kv::Store,
    subject_prefix: String,
    quota: Quota,
}

impl std::fmt::Debug for ClusterMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterMailbox")
            .field("subjects", &self.subject_prefix)
            .finish_non_exhaustive()
    }
}

impl ClusterMailbox {
    /// Open (creating when missing) the mailbox stream and its id index.
    pub async fn open(
        client: async_nats::Client,
        cfg: &MailboxConfig,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client);
        let (upper, lower) = (cfg.prefix.to_uppercase(), cfg.prefix.to_lowercase());
        let stream = super::settled(|| async {
            js.get_or_create_stream(stream::Config {
                name: format!("{upper}_MAIL"),
                subjects: vec![format!("{lower}.mail.*.*")],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_age: cfg.max_age,
                duplicate_window: cfg.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating the mailbox stream")(e.to_string()))
        })
        .await?;
        super::keep_config(&js, &format!("{upper}_MAIL"), cfg.replicas, cfg.max_age).await;
        let ids = super::bucket(
            &js,
            kv::Config {
                bucket: format!("{upper}_MAILIDX"),
                history: 1,
                // An id is unique as long as an envelope with it may still be stored, and
                // its entry outlives the envelope by two sweeps, so that the sweep counts
                // it as expired (its mesh's count lowered) before JetStream drops it.
                max_age: cfg.max_age + EXPIRY_MARGIN,
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            },
            "creating the envelope index",
        )
        .await?;
        super::until_ready(&stream, &format!("{lower}.mail.ready.ready"), &ids).await?;
        Ok(Self {
            js,
            stream,
            ids,
            subject_prefix: format!("{lower}.mail"),
            quota: cfg.quota,
        })
    }

    /// Take one envelope of `size` bytes off the mesh's count.
    async fn uncount(&self, mesh: &MeshId, n: u64, bytes: u64) {
        counts::take(&self.ids, &use_key(mesh), (n, bytes)).await;
    }

    fn subject(&self, mesh: &MeshId, member: &MemberKey) -> String {
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            hex(mesh.as_bytes()),
            hex(&member.0)
        )
    }

    /// Store an envelope for each of its recipients, durable on the cluster before this
    /// returns.
    pub async fn put(&self, e: &NewEnvelope) -> Result<Put, ClusterError> {
        Ok(self.put_at(e).await?.0)
    }

    /// Like [`ClusterMailbox::put`], with where each recipient's copy is in the stream.
    pub async fn put_at(
        &self,
        e: &NewEnvelope,
    ) -> Result<(Put, Vec<(MemberKey, u64)>), ClusterError> {
        // The index holds the id's owner, whether every copy is stored (`p` while the
        // copies are being published, `s` once they all are), how many recipients have not
        // acknowledged it yet, its size and expiry. A resend of a stored envelope changes
        // nothing however late it comes; one of a half-stored envelope publishes again
        // (JetStream drops the copies it has, by message id, within its window).
        let owner = format!("{} {}", hex(e.mesh.as_bytes()), hex(&e.sender.0));
        let key = id_key(&e.id);
        let tail = format!(
            "{} {} {}",
            e.recipients.len(),
            e.envelope.len(),
            e.expires_at
        );
        let pending = Bytes::from(format!("{owner} p {tail}"));
        // Counted against the mesh's quota over every node before the id is claimed: a
        // resend through another node finds the id only once it is counted (and gives
        // back its own count), so no copy is ever stored uncounted.
        let size = e.envelope.len() as i64;
        let limit = (self.quota.messages, self.quota.bytes);
        let use_key = use_key(&e.mesh);
        if !counts::add(&self.ids, &use_key, (1, size), Some(limit)).await? {
            // Full, unless it is a resend of what is stored already.
            let held = self
                .ids
                .get(&key)
                .await
                .map_err(|e| js_err("reading the envelope index")(e.to_string()))?;
            return Ok(match held.as_deref().and_then(Indexed::parse) {
                Some(i) if i.mesh == e.mesh && i.sender == e.sender && i.stored => {
                    (Put::Duplicate, Vec::new())
                }
                Some(_) => (Put::Taken, Vec::new()),
                _ => (Put::Full, Vec::new()),
            });
        }
        let (first, revision) = match self.ids.create(&key, pending).await {
            Ok(rev) => (true, rev),
            Err(err) if counts::lost_create(&err) => {
                // Counted by whoever claimed it first.
                counts::take(&self.ids, &use_key, (1, size as u64)).await;
                let held = self
                    .ids
                    .entry(&key)
                    .await
                    .map_err(|e| js_err("reading the envelope index")(e.to_string()))?
                    .ok_or_else(|| js_err("reading the envelope index")("the entry went".into()))?;
                match Indexed::parse(&held.value) {
                    Some(i) if i.mesh == e.mesh && i.sender == e.sender => {
                        if i.stored {
                            return Ok((Put::Duplicate, Vec::new()));
                        }
                        (false, held.revision)
                    }
                    _ => return Ok((Put::Taken, Vec::new())),
                }
            }
            Err(err) => {
                counts::take(&self.ids, &use_key, (1, size as u64)).await;
                return Err(js_err("writing the envelope index")(err.to_string()));
            }
        };
        let mut stored_any = false;
        let mut positions = Vec::with_capacity(e.recipients.len());
        for member in &e.recipients {
            let msg = jetstream::message::PublishMessage::build()
                .payload(e.envelope.clone())
                .header("Cm-Id", e.id.to_string().as_str())
                .header("Cm-At", e.at.to_string().as_str())
                .header("Cm-Exp", e.expires_at.to_string().as_str())
                .message_id(format!("{}.{}", hex(e.id.as_bytes()), hex(&member.0)));
            let ack = self
                .js
                .send_publish(self.subject(&e.mesh, member), msg)
                .await
                .map_err(|err| js_err("storing an envelope")(err.to_string()))?
                .await
                .map_err(|err| js_err("storing an envelope")(err.to_string()))?;
            stored_any |= !ack.duplicate;
            positions.push((*member, ack.sequence));
        }
        match self
            .ids
            .update(&key, Bytes::from(format!("{owner} s {tail}")), revision)
            .await
        {
            Ok(_) => {}
            // Another node's resend marked it first.
            Err(err) if counts::lost_update(&err) => {}
            Err(err) => return Err(js_err("marking an envelope stored")(err.to_string())),
        }
        let put = if first || stored_any {
            Put::Stored
        } else {
            Put::Duplicate
        };
        Ok((put, positions))
    }

    /// Who stored envelope `id` (mesh, sender), while the index remembers it.
    pub async fn owner(&self, id: &MessageId) -> Result<Option<(MeshId, MemberKey)>, ClusterError> {
        let v = self
            .ids
            .get(id_key(id))
            .await
            .map_err(|e| js_err("reading the envelope index")(e.to_string()))?;
        Ok(v.and_then(|v| Indexed::parse(&v))
            .map(|i| (i.mesh, i.sender)))
    }

    /// One recipient is done with envelope `id` (acknowledged, or removed from the mesh):
    /// its size, and whether it was the last one (its bytes are free).
    pub async fn settle(&self, id: &MessageId) -> Result<Option<(u64, bool)>, ClusterError> {
        let key = id_key(id);
        for _ in 0..32 {
            let Some(held) = self
                .ids
                .entry(&key)
                .await
                .map_err(|e| js_err("reading the envelope index")(e.to_string()))?
            else {
                return Ok(None);
            };
            let Some(mut i) = Indexed::parse(&held.value) else {
                return Ok(None);
            };
            if i.left == 0 {
                return Ok(Some((i.size, false)));
            }
            i.left -= 1;
            match self.ids.update(&key, i.to_bytes(), held.revision).await {
                Ok(_) => {
                    if i.left == 0 {
                        self.uncount(&i.mesh, 1, i.size).await;
                    }
                    return Ok(Some((i.size, i.left == 0)));
                }
                Err(err) if counts::lost_update(&err) => continue,
                Err(err) => return Err(js_err("counting an acknowledgement")(err.to_string())),
            }
        }
        Err(js_err("counting an acknowledgement")(
            "the index entry keeps changing; try again".into(),
        ))
    }

    /// Where `member`'s copies of `ids` are, read from its mailbox.
    pub async fn find(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        ids: &[MessageId],
    ) -> Result<HashMap<MessageId, u64>, ClusterError> {
        let subject = self.subject(mesh, member);
        let mut out = HashMap::new();
        let mut at = 1;
        while out.len() < ids.len() {
            let Some(m) =
                super::next_on_subject(&self.stream, at, &subject, "reading a mailbox").await?
            else {
                break;
            };
            at = m.sequence + 1;
            let id = message_id(&m)?;
            if ids.contains(&id) {
                out.insert(id, m.sequence);
            }
        }
        Ok(out)
    }

    /// Forget `member`'s mailbox: the ids of what was in it.
    pub async fn drop_member(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
    ) -> Result<Vec<MessageId>, ClusterError> {
        let subject = self.subject(mesh, member);
        let mut ids = Vec::new();
        let mut at = 1;
        while let Some(m) =
            super::next_on_subject(&self.stream, at, &subject, "reading a mailbox").await?
        {
            at = m.sequence + 1;
            ids.push(message_id(&m)?);
        }
        self.stream
            .purge()
            .filter(subject)
            .await
            .map_err(|e| js_err("dropping a mailbox")(e.to_string()))?;
        Ok(ids)
    }

    /// Envelopes still waiting for someone, per mesh: count and bytes, as the meshes'
    /// counters hold them.
    pub async fn usage(
        &self,
        client: &async_nats::Client,
    ) -> Result<HashMap<MeshId, (u64, u64)>, ClusterError> {
        let mut out = HashMap::new();
        for (key, (u, _)) in counts::under(client, &self.ids, "use.").await? {
            if let Some(mesh) = super::unhex::<16>(key.trim_start_matches("use."))
                && u != (0, 0)
            {
                out.insert(MeshId::from_bytes(mesh), u);
            }
        }
        Ok(out)
    }

    /// Count envelopes past their expiry as gone (JetStream drops their copies at the
    /// stream's age limit; reads skip them before): per mesh, count and bytes. Each is
    /// counted by one node only (the one whose compare-and-set wins). The same pass mends
    /// the meshes' counters: one left high by a node that died between two writes is set
    /// to what the index holds, if nothing changed it meanwhile.
    pub async fn expire(
        &self,
        client: &async_nats::Client,
        now: i64,
    ) -> Result<HashMap<MeshId, (u64, u64)>, ClusterError> {
        let before = counts::under(client, &self.ids, "use.").await?;
        let mut out: HashMap<MeshId, (u64, u64)> = HashMap::new();
        let mut held: HashMap<MeshId, (u64, u64)> = HashMap::new();
        for (key, v, revision) in super::entries_under(client, &self.ids, "id.").await? {
            let Some(mut i) = Indexed::parse(&v) else {
                tracing::warn!(key, "an envelope index entry does not parse; skipping it");
                continue;
            };
            if i.left == 0 {
                continue;
            }
            if i.expires_at >= now {
                let u = held.entry(i.mesh).or_default();
                u.0 += 1;
                u.1 += i.size;
                continue;
            }
            i.left = 0;
            if self.ids.update(&key, i.to_bytes(), revision).await.is_ok() {
                let u = out.entry(i.mesh).or_default();
                u.0 += 1;
                u.1 += i.size;
            }
        }
        let recounted = held.iter().map(|(m, u)| (use_key(m), *u)).collect();
        let left = counts::mend(&self.ids, &before, &recounted).await;
        // Changed meanwhile: take off what expired, and mend it at a quieter sweep.
        for (mesh, freed) in &out {
            if left.contains(&use_key(mesh)) {
                self.uncount(mesh, freed.0, freed.1).await;
            }
        }
        Ok(out)
    }

    /// Envelopes waiting for `member`, oldest first, after stream position `after`
    /// (`0`: from the start); each with its position, for the next page and for `ack`.
    pub async fn mailbox(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Stored)>, ClusterError> {
        let subject = self.subject(mesh, member);
        let mut out = Vec::new();
        let mut at = after + 1;
        while out.len() < limit {
            let Some(m) =
                super::next_on_subject(&self.stream, at, &subject, "reading a mailbox").await?
            else {
                break;
            };
            at = m.sequence + 1;
            let id = message_id(&m)?;
            let accepted = header(&m.headers, "Cm-At")?.parse().unwrap_or_default();
            // Past its own expiry (shorter than the stream's age limit): not delivered.
            let expires: i64 = header(&m.headers, "Cm-Exp")?.parse().unwrap_or(i64::MAX);
            if expires < claudemesh_schema::now_ms() {
                continue;
            }
            out.push((
                m.sequence,
                Stored {
                    id,
                    envelope: m.payload.to_vec(),
                    at: accepted,
                },
            ));
        }
        Ok(out)
    }

    /// `member` acknowledged the envelopes at these positions of its mailbox: its copies go.
    /// Returns how many were still stored.
    pub async fn ack(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        positions: &[u64],
    ) -> Result<usize, ClusterError> {
        let mut gone = 0;
        for &seq in positions {
            gone += usize::from(self.take(mesh, member, seq).await?);
        }
        Ok(gone)
    }

    /// Delete `member`'s copy at stream position `seq`; false if it was not there (gone
    /// already, or not a copy in this member's own mailbox: a position is not a
    /// capability).
    pub async fn take(
        &self,
        mesh: &MeshId,
        member: &MemberKey,
        seq: u64,
    ) -> Result<bool, ClusterError> {
        let subject = self.subject(mesh, member);
        match super::at_position(&self.stream, seq, "reading an acknowledged envelope").await? {
            Some(m) if m.subject.as_str() == subject => {}
            _ => return Ok(false),
        }
        match self.stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            // Deleted meanwhile (another node took the same acknowledgement).
            Err(e) if e.to_string().contains("no message found") => Ok(false),
            Err(e) => Err(js_err("deleting an acknowledged envelope")(e.to_string())),
        }
    }
}

fn id_key(id: &MessageId) -> String {
    format!("id.{}", hex(id.as_bytes()))
}

fn use_key(mesh: &MeshId) -> String {
    format!("use.{}", hex(mesh.as_bytes()))
}

fn message_id(m: &jetstream::message::StreamMessage) -> Result<MessageId, ClusterError> {
    serde_json::from_value(serde_json::Value::String(header(&m.headers, "Cm-Id")?)).map_err(|_| {
        ClusterError::Corrupt {
            what: "envelope id",
            detail: "not an id".into(),
        }
    })
}

/// An envelope's entry in the id index.
#[derive(Debug, Clone, Copy)]
struct Indexed {
    mesh: MeshId,
    sender: MemberKey,
    stored: bool,
    left: u64,
    size: u64,
    expires_at: i64,
}

impl Indexed {
    fn parse(v: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(v).ok()?;
        let mut p = text.split(' ');
        let mesh = MeshId::from_bytes(super::unhex::<16>(p.next()?)?);
        let sender = MemberKey(super::unhex::<32>(p.next()?)?);
        let stored = match p.next()? {
            "s" => true,
            "p" => false,
            _ => return None,
        };
        Some(Self {
            mesh,
            sender,
            stored,
            left: p.next()?.parse().ok()?,
            size: p.next()?.parse().ok()?,
            expires_at: p.next()?.parse().ok()?,
        })
    }

    fn to_bytes(self) -> Bytes {
        Bytes::from(format!(
            "{} {} {} {} {} {}",
            hex(self.mesh.as_bytes()),
            hex(&self.sender.0),
            if self.stored { "s" } else { "p" },
            self.left,
            self.size,
            self.expires_at
        ))
    }
}
