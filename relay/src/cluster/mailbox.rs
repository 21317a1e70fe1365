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
use std::time::Duration;

use super::{ClusterError, header, js_err};
use crate::store::{NewEnvelope, Put, Stored};

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
}

/// Every member's mailbox, on one JetStream cluster.
pub struct ClusterMailbox {
    js: jetstream::Context,
    stream: stream::Stream,
    ids: kv::Store,
    subject_prefix: String,
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
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("{upper}_MAIL"),
                subjects: vec![format!("{lower}.mail.*.*")],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                max_age: cfg.max_age,
                duplicate_window: cfg.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating the mailbox stream")(e.to_string()))?;
        let ids = super::bucket(
            &js,
            kv::Config {
                bucket: format!("{upper}_MAILIDX"),
                history: 1,
                // An id is unique as long as an envelope with it may still be stored.
                max_age: cfg.max_age,
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
        })
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
        // The index holds the id's owner and whether every copy is stored: `p` while the
        // copies are being published, `s` once they all are. A resend of a stored envelope
        // changes nothing however late it comes; one of a half-stored envelope publishes
        // again (JetStream drops the copies it has, by message id, within its window).
        let owner = format!("{} {}", hex(e.mesh.as_bytes()), hex(&e.sender.0));
        let key = format!("id.{}", hex(e.id.as_bytes()));
        let pending = Bytes::from(format!("{owner} p"));
        let (first, revision) = match self.ids.create(&key, pending).await {
            Ok(rev) => (true, rev),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                let held = self
                    .ids
                    .entry(&key)
                    .await
                    .map_err(|e| js_err("reading the envelope index")(e.to_string()))?
                    .ok_or_else(|| js_err("reading the envelope index")("the entry went".into()))?;
                let text = String::from_utf8_lossy(&held.value);
                match text.strip_prefix(owner.as_str()) {
                    Some(" s") => return Ok(Put::Duplicate),
                    Some(" p") => (false, held.revision),
                    _ => return Ok(Put::Taken),
                }
            }
            Err(err) => return Err(js_err("writing the envelope index")(err.to_string())),
        };
        let mut stored_any = false;
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
        }
        match self
            .ids
            .update(&key, Bytes::from(format!("{owner} s")), revision)
            .await
        {
            Ok(_) => {}
            // Another node's resend marked it first.
            Err(err)
                if err.kind() == kv::UpdateErrorKind::WrongLastRevision
                    || err.to_string().contains("wrong last sequence") => {}
            Err(err) => return Err(js_err("marking an envelope stored")(err.to_string())),
        }
        Ok(if first || stored_any {
            Put::Stored
        } else {
            Put::Duplicate
        })
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
            let id: MessageId =
                serde_json::from_value(serde_json::Value::String(header(&m.headers, "Cm-Id")?))
                    .map_err(|_| ClusterError::Corrupt {
                        what: "envelope id",
                        detail: "not an id".into(),
                    })?;
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
        let subject = self.subject(mesh, member);
        let mut gone = 0;
        for &seq in positions {
            // Only a copy in this member's own mailbox: a position is not a capability.
            match super::at_position(&self.stream, seq, "reading an acknowledged envelope").await? {
                Some(m) if m.subject.as_str() == subject => {}
                _ => continue,
            }
            match self.stream.delete_message(seq).await {
                Ok(true) => gone += 1,
                Ok(false) => {}
                // Deleted meanwhile (another node took the same acknowledgement).
                Err(e) if e.to_string().contains("no message found") => {}
                Err(e) => return Err(js_err("deleting an acknowledged envelope")(e.to_string())),
            }
        }
        Ok(gone)
    }
}
