//! File chunks on the cluster: the relay's [`BlobStore`] for relay nodes, so a chunk
//! uploaded through one node is served by every other. Two KV buckets: `<P>_CHUNKS`, the
//! sealed bytes under `<mesh>.<chunk>` (a chunk is at most a chunk frame, far under
//! JetStream's message size), and `<P>_CHUNKREFS`, which file uses which chunk:
//! `<mesh>.<chunk>.<file>` → uploader, size, expiry. Bytes are written before the reference
//! that names them, and a chunk no reference names any more is deleted. Content-addressed
//! per mesh, checked again when served, as on one relay. The quotas are counted over every
//! node ([`super::counts`], under `use.<mesh>` and `use.all` in `<P>_CHUNKREFS`): a chunk's
//! bytes are counted before they are stored, and given back when its last reference goes.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::{MemberKey, hex};
use claudemesh_schema::file::ChunkId;
use claudemesh_schema::{ItemId, MeshId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

use super::{ClusterError, counts, entries_under, js_err};
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
    /// Most bytes of chunks one mesh stores, and all meshes together (`0`: no limit).
    quota: (u64, u64),
    /// What is stored per mesh, read when opened (for [`BlobStore::usage`]).
    usage: Freed,
}

impl std::fmt::Debug for ClusterBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBlobs").finish_non_exhaustive()
    }
}

/// The count of what all meshes store.
const ALL: &str = "use.all";

fn use_key(mesh: &MeshId) -> String {
    format!("use.{}", hex(mesh.as_bytes()))
}

/// A reference's key names a mesh and a chunk (the counts' keys do not).
fn ref_parts(key: &str) -> Option<(MeshId, &str)> {
    let mut parts = key.split('.');
    let mesh = super::unhex::<16>(parts.next()?).map(MeshId::from_bytes)?;
    Some((mesh, parts.next()?))
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
    /// Open (creating when missing) the chunk buckets of deployment `prefix`, with room
    /// for `quota` bytes per mesh and in all (`0`: no limit).
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
        quota: (u64, u64),
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
            quota,
            usage: Freed::new(),
        };
        blobs.usage = blobs.recount(i64::MIN).await?.0;
        Ok(blobs)
    }

    /// What the references alive at `now` hold, per mesh (each chunk once); and the
    /// expired references, per mesh: their chunks and sizes.
    #[allow(clippy::type_complexity)]
    async fn recount(
        &self,
        now: i64,
    ) -> Result<(Freed, Vec<(String, MeshId, String, u64)>), ClusterError> {
        let mut usage = Freed::new();
        let mut expired = Vec::new();
        let mut seen = HashSet::new();
        for (key, v, _) in entries_under(&self.client, &self.refs, "").await? {
            let Some((mesh, chunk)) = ref_parts(&key) else {
                continue;
            };
            let r = match parse_ref(&v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key, error = %e, "a chunk reference does not parse; skipping it");
                    continue;
                }
            };
            let chunk = chunk.to_string();
            if !r.live(now) {
                expired.push((key, mesh, chunk, r.size));
            } else if seen.insert((mesh, chunk)) {
                let u = usage.entry(mesh).or_default();
                u.0 += 1;
                u.1 += r.size;
            }
        }
        Ok((usage, expired))
    }

    /// Count `size` new bytes for `mesh` against both quotas, over every node: `false`
    /// when either has no room (nothing counted).
    async fn reserve(&self, mesh: &MeshId, size: u64) -> Result<bool, ClusterError> {
        let key = use_key(mesh);
        let delta = (1, size as i64);
        if !counts::add(&self.refs, &key, delta, Some((0, self.quota.0))).await? {
            return Ok(false);
        }
        match counts::add(&self.refs, ALL, delta, Some((0, self.quota.1))).await {
            Ok(true) => Ok(true),
            other => {
                counts::take(&self.refs, &key, (1, size)).await;
                other
            }
        }
    }

    /// Give back what freed chunks counted.
    async fn release(&self, mesh: &MeshId, freed: (u64, u64)) {
        if freed != (0, 0) {
            counts::take(&self.refs, &use_key(mesh), freed).await;
            counts::take(&self.refs, ALL, freed).await;
        }
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
            // Only the one whose purge finds the revision it read frees (and uncounts) the
            // chunk: two droppers of its last two references at once free it once.
            let key = format!("{}.{chunk}", hex(mesh.as_bytes()));
            let Some(held) = self
                .chunks
                .entry(&key)
                .await
                .map_err(|e| js_err("reading a chunk")(e.to_string()))?
                .filter(|e| e.operation == kv::Operation::Put)
            else {
                continue;
            };
            if self
                .chunks
                .purge_expect_revision(&key, Some(held.revision))
                .await
                .is_err()
            {
                continue;
            }
            n += 1;
            bytes += size;
        }
        self.release(mesh, (n, bytes)).await;
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
            // Counted over every node before the bytes are stored.
            if !self.reserve(&c.mesh, size).await? {
                return Ok(PutChunk::NoRoom);
            }
            match self.chunks.create(&key, Bytes::from(c.data)).await {
                Ok(_) => true,
                // Stored through another node meanwhile (and counted there).
                Err(e) if counts::lost_create(&e) => {
                    self.release(&c.mesh, (1, size)).await;
                    false
                }
                Err(e) => {
                    self.release(&c.mesh, (1, size)).await;
                    return Err(js_err("storing a chunk")(e.to_string()));
                }
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
            Err(e) if counts::lost_create(&e) => {}
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
        let before = counts::under(&self.client, &self.refs, "use.").await?;
        let (alive, expired_refs) = self.recount(now).await?;
        let mut expired: HashMap<MeshId, HashMap<String, u64>> = HashMap::new();
        for (key, mesh, chunk, size) in expired_refs {
            self.refs
                .purge(&key)
                .await
                .map_err(|e| js_err("dropping an expired chunk reference")(e.to_string()))?;
            expired.entry(mesh).or_default().insert(chunk, size);
        }
        let mut freed = Freed::new();
        for (mesh, chunks) in expired {
            let (n, bytes) = self.drop_unused(&mesh, chunks).await?;
            if n > 0 {
                freed.insert(mesh, (n, bytes));
            }
        }
        // Mend counts a dead node left wrong (those just lowered are mended next time).
        let mut recounted: HashMap<String, (u64, u64)> = HashMap::new();
        let mut all = (0, 0);
        for (mesh, u) in &alive {
            recounted.insert(use_key(mesh), *u);
            all = (all.0 + u.0, all.1 + u.1);
        }
        recounted.insert(ALL.into(), all);
        counts::mend(&self.refs, &before, &recounted).await;
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
