//! File chunks on the cluster: the relay's [`BlobStore`] for relay nodes, so a chunk
//! uploaded through one node is served by every other. Two KV buckets: `<P>_CHUNKS`, the
//! sealed bytes under `<mesh>.<chunk>` (a chunk is at most a chunk frame, far under
//! JetStream's message size), and `<P>_CHUNKREFS`, which file uses which chunk:
//! `<mesh>.<chunk>.<file>` → uploader, size, expiry. Bytes are written before the reference
//! that names them, and a chunk no reference names any more is deleted. Content-addressed
//! per mesh, checked again when served, as on one relay.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::{MemberKey, hex};
use claudemesh_schema::file::ChunkId;
use claudemesh_schema::{ItemId, MeshId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

use super::{ClusterError, entries_under, js_err};
use crate::blobs::{BlobError, BlobFuture, BlobStore, Dropped, Freed, NewChunk, PutChunk};

impl From<ClusterError> for BlobError {
    fn from(e: ClusterError) -> Self {
        BlobError::Cluster(Box::new(e))
    }
}

/// A file's reference to a chunk.
#[derive(Serialize, Deserialize)]
struct ChunkRef {
    uploader: MemberKey,
    size: u64,
    expires_at: Option<i64>,
}

impl ChunkRef {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// Chunks of file shares, on a JetStream cluster.
pub struct ClusterBlobs {
    client: async_nats::Client,
    chunks: kv::Store,
    refs: kv::Store,
    /// What is stored per mesh, read when opened (for [`BlobStore::usage`]).
    usage: Freed,
}

impl std::fmt::Debug for ClusterBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBlobs").finish_non_exhaustive()
    }
}

fn chunk_key(mesh: &MeshId, id: &ChunkId) -> String {
    format!("{}.{}", hex(mesh.as_bytes()), id.hex())
}

fn parse_ref(v: &[u8]) -> Result<ChunkRef, ClusterError> {
    serde_json::from_slice(v).map_err(|e| ClusterError::Corrupt {
        what: "chunk reference",
        detail: e.to_string(),
    })
}

impl ClusterBlobs {
    /// Open (creating when missing) the chunk buckets of deployment `prefix`.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let upper = prefix.to_uppercase();
        let bucket = |name: String, what| {
            super::bucket(
                &js,
                kv::Config {
                    bucket: name,
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    // A chunk frame's bytes, with room for the headers.
                    max_value_size: 2 << 20,
                    ..Default::default()
                },
                what,
            )
        };
        let chunks = bucket(format!("{upper}_CHUNKS"), "creating the chunk bucket").await?;
        let refs = bucket(format!("{upper}_CHUNKREFS"), "creating the chunk index").await?;
        for b in [&chunks, &refs] {
            super::until_bucket_ready(b).await?;
        }
        let mut blobs = Self {
            client,
            chunks,
            refs,
            usage: Freed::new(),
        };
        let mut seen = HashSet::new();
        for (key, v, _) in entries_under(&blobs.client, &blobs.refs, "").await? {
            let mut parts = key.split('.');
            let (Some(mesh), Some(chunk)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(mesh) = super::unhex::<16>(mesh).map(MeshId::from_bytes) else {
                continue;
            };
            if seen.insert((mesh, chunk.to_string())) {
                let u = blobs.usage.entry(mesh).or_default();
                u.0 += 1;
                u.1 += parse_ref(&v)?.size;
            }
        }
        Ok(blobs)
    }

    /// The references of a chunk: (key, reference).
    async fn refs_of(
        &self,
        mesh: &MeshId,
        id: &ChunkId,
    ) -> Result<Vec<(String, ChunkRef)>, ClusterError> {
        let prefix = format!("{}.", chunk_key(mesh, id));
        let mut out = Vec::new();
        for (k, v, _) in entries_under(&self.client, &self.refs, &prefix).await? {
            out.push((k, parse_ref(&v)?));
        }
        Ok(out)
    }

    async fn live(&self, mesh: &MeshId, id: &ChunkId, now: i64) -> Result<bool, ClusterError> {
        Ok(self
            .refs_of(mesh, id)
            .await?
            .iter()
            .any(|(_, r)| r.live(now)))
    }

    /// Delete the chunks among `ids` that no reference names any more: how many, bytes.
    async fn drop_unused(
        &self,
        mesh: &MeshId,
        ids: HashMap<String, u64>,
    ) -> Result<(u64, u64), ClusterError> {
        let (mut n, mut bytes) = (0, 0);
        for (chunk, size) in ids {
            let prefix = format!("{}.{chunk}.", hex(mesh.as_bytes()));
            if !entries_under(&self.client, &self.refs, &prefix)
                .await?
                .is_empty()
            {
                continue;
            }
            self.chunks
                .purge(format!("{}.{chunk}", hex(mesh.as_bytes())))
                .await
                .map_err(|e| js_err("deleting a chunk")(e.to_string()))?;
            n += 1;
            bytes += size;
        }
        Ok((n, bytes))
    }

    async fn do_put(&self, c: NewChunk) -> Result<PutChunk, ClusterError> {
        let key = chunk_key(&c.mesh, &c.id);
        let held = self
            .chunks
            .get(&key)
            .await
            .map_err(|e| js_err("reading a chunk")(e.to_string()))?
            .is_some();
        if !held && !c.may_store {
            return Ok(PutChunk::NoRoom);
        }
        let size = c.data.len() as u64;
        let fresh = if held {
            false
        } else {
            match self.chunks.create(&key, Bytes::from(c.data)).await {
                Ok(_) => true,
                // Stored through another node meanwhile.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                Err(e) => return Err(js_err("storing a chunk")(e.to_string())),
            }
        };
        let r = ChunkRef {
            uploader: c.uploader,
            size,
            expires_at: c.expires_at,
        };
        let v = serde_json::to_vec(&r).map_err(|e| ClusterError::Corrupt {
            what: "chunk reference",
            detail: e.to_string(),
        })?;
        // A file's chunk put again keeps its first reference (uploader, expiry).
        match self
            .refs
            .create(format!("{key}.{}", hex(c.file.as_bytes())), Bytes::from(v))
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(js_err("recording a chunk's file")(e.to_string())),
        }
        Ok(if fresh {
            PutChunk::Stored
        } else {
            PutChunk::Known
        })
    }

    async fn do_get(
        &self,
        mesh: MeshId,
        id: ChunkId,
        now: i64,
    ) -> Result<Option<Vec<u8>>, ClusterError> {
        if !self.live(&mesh, &id, now).await? {
            return Ok(None);
        }
        let Some(data) = self
            .chunks
            .get(chunk_key(&mesh, &id))
            .await
            .map_err(|e| js_err("reading a chunk")(e.to_string()))?
        else {
            return Ok(None);
        };
        if !id.names(&data) {
            tracing::error!(mesh = %mesh.short(), "a stored chunk does not match its id; not served");
            return Ok(None);
        }
        Ok(Some(data.to_vec()))
    }

    async fn do_drop_file(
        &self,
        mesh: MeshId,
        file: ItemId,
        by: Option<MemberKey>,
    ) -> Result<Dropped, ClusterError> {
        let suffix = format!(".{}", hex(file.as_bytes()));
        let mine: Vec<(String, ChunkRef)> = entries_under(
            &self.client,
            &self.refs,
            &format!("{}.", hex(mesh.as_bytes())),
        )
        .await?
        .into_iter()
        .filter(|(k, _, _)| k.ends_with(&suffix))
        .map(|(k, v, _)| parse_ref(&v).map(|r| (k, r)))
        .collect::<Result<_, _>>()?;
        let ours: Vec<&(String, ChunkRef)> = match by {
            Some(m) => {
                let by_them: Vec<_> = mine.iter().filter(|(_, r)| r.uploader == m).collect();
                if !mine.is_empty() && by_them.is_empty() {
                    return Ok(Dropped::NotYours);
                }
                by_them
            }
            None => mine.iter().collect(),
        };
        let mut chunks = HashMap::new();
        for (k, r) in ours {
            self.refs
                .purge(k)
                .await
                .map_err(|e| js_err("dropping a chunk's file")(e.to_string()))?;
            if let Some(chunk) = k.split('.').nth(1) {
                chunks.insert(chunk.to_string(), r.size);
            }
        }
        let (n, bytes) = self.drop_unused(&mesh, chunks).await?;
        let mut freed = Freed::new();
        if n > 0 {
            freed.insert(mesh, (n, bytes));
        }
        Ok(Dropped::Done(freed))
    }

    async fn do_sweep(&self, now: i64) -> Result<Freed, ClusterError> {
        let mut expired: HashMap<MeshId, HashMap<String, u64>> = HashMap::new();
        for (k, v, _) in entries_under(&self.client, &self.refs, "").await? {
            let r = parse_ref(&v)?;
            if r.live(now) {
                continue;
            }
            let mut parts = k.split('.');
            let (Some(mesh), Some(chunk)) =
                (parts.next().and_then(super::unhex::<16>), parts.next())
            else {
                continue;
            };
            self.refs
                .purge(&k)
                .await
                .map_err(|e| js_err("dropping an expired chunk reference")(e.to_string()))?;
            expired
                .entry(MeshId::from_bytes(mesh))
                .or_default()
                .insert(chunk.to_string(), r.size);
        }
        let mut freed = Freed::new();
        for (mesh, chunks) in expired {
            let (n, bytes) = self.drop_unused(&mesh, chunks).await?;
            if n > 0 {
                freed.insert(mesh, (n, bytes));
            }
        }
        Ok(freed)
    }
}

impl BlobStore for ClusterBlobs {
    fn usage(&self) -> Result<Freed, BlobError> {
        Ok(self.usage.clone())
    }

    fn put(&self, c: NewChunk) -> BlobFuture<'_, PutChunk> {
        Box::pin(async move { Ok(self.do_put(c).await?) })
    }

    fn held(&self, mesh: MeshId, ids: Vec<ChunkId>, now: i64) -> BlobFuture<'_, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.live(&mesh, &id, now).await?);
            }
            Ok(out)
        })
    }

    fn get(&self, mesh: MeshId, id: ChunkId, now: i64) -> BlobFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.do_get(mesh, id, now).await?) })
    }

    fn drop_file(
        &self,
        mesh: MeshId,
        file: ItemId,
        by: Option<MemberKey>,
    ) -> BlobFuture<'_, Dropped> {
        Box::pin(async move { Ok(self.do_drop_file(mesh, file, by).await?) })
    }

    fn sweep(&self, now: i64) -> BlobFuture<'_, Freed> {
        Box::pin(async move { Ok(self.do_sweep(now).await?) })
    }
}
