//! File chunks: `chunk_put`, `chunks_held`, `chunk_get`, `chunks_drop` against the blob
//! store (see [`crate::blobs`]). Only on a member link; every chunk frame costs one write
//! token, and every refusal is a non-fatal `error` naming the request.
//!
//! The relay checks that a chunk hashes to its id (it cannot read it: the file key never
//! reaches it), keeps each mesh's chunks apart, and holds them against two quotas: the
//! mesh's and its own.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::file::{CHUNK_OVERHEAD, ChunkId, MAX_CHUNKS};
use claudemesh_schema::wire::{ErrorCode, MAX_CHUNK_FRAME, RelayFrame};
use claudemesh_schema::{ItemId, MeshId, now_ms};
use std::sync::Arc;
use std::time::Instant;

use super::Conn;
use crate::blobs::{BlobStore, Dropped, NewChunk, Over, PutChunk};
use crate::hub::{MeshEntry, lock};
use crate::store::Store;

/// Chunk puts of one link stored at once.
pub(super) const PUTS_IN_FLIGHT: usize = 8;

/// What a chunk put carries.
pub(super) struct Put {
    pub(super) file: ItemId,
    pub(super) id: ChunkId,
    pub(super) data: Vec<u8>,
    pub(super) expires_at: Option<i64>,
}

impl<S: Store> Conn<S> {
    fn chunk_error(&self, rid: u64, code: ErrorCode, message: String, retry_ms: Option<u64>) {
        self.push(&RelayFrame::Error {
            rid: Some(rid),
            code,
            message,
            fatal: false,
            retry_ms,
        });
    }

    /// The blob store, if this relay keeps chunks and the member's write budget allows one
    /// more request; otherwise the refusal is sent and `None` returned.
    fn chunk_gate(
        &self,
        rid: u64,
        entry: &MeshEntry,
        member: MemberKey,
    ) -> Option<Arc<dyn BlobStore>> {
        let Some(blobs) = self.hub.blobs.clone() else {
            self.chunk_error(
                rid,
                ErrorCode::StorageOff,
                "this relay stores no file chunks; members serve them to each other".into(),
                None,
            );
            return None;
        };
        let allowed = lock(&entry.state)
            .limits(member, &self.hub.cfg)
            .writes
            .take_or_retry_ms(Instant::now());
        if let Err(retry_ms) = allowed {
            self.chunk_error(
                rid,
                ErrorCode::RateLimited,
                "member write rate exceeded (each chunk frame costs one)".into(),
                Some(retry_ms),
            );
            return None;
        }
        Some(blobs)
    }

    fn internal(&self, rid: u64, e: &crate::blobs::BlobError) {
        tracing::error!(error = %e, "blob store read failed");
        self.chunk_error(
            rid,
            ErrorCode::Internal,
            "the relay could not read its blob store; retry later".into(),
            Some(1_000),
        );
    }

    pub(super) async fn chunk_put(
        &mut self,
        rid: u64,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        put: Put,
    ) {
        let Some(blobs) = self.chunk_gate(rid, entry, member) else {
            return;
        };
        let Put {
            file,
            id,
            data,
            expires_at,
        } = put;
        let bad = |why: String| (ErrorCode::BadFrame, why);
        let now = now_ms();
        let refusal = if data.len() > MAX_CHUNK_FRAME {
            Some(bad(format!(
                "a chunk is at most {MAX_CHUNK_FRAME} sealed bytes; this one has {}; nothing was stored",
                data.len()
            )))
        } else if data.len() < CHUNK_OVERHEAD {
            Some(bad(format!(
                "a sealed chunk has at least {CHUNK_OVERHEAD} bytes (its tag); nothing was stored"
            )))
        } else if !id.names(&data) {
            Some(bad(
                "the chunk's bytes do not hash to its id (BLAKE3 of the sealed bytes); nothing was stored"
                    .into(),
            ))
        } else if expires_at.is_some_and(|e| e <= now) {
            Some(bad("expires_at is in the past; nothing was stored".into()))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            return self.chunk_error(rid, code, message, None);
        }
        if let Some(ms) = lock(&self.hub.blob_fault).refusing(Instant::now()) {
            return self.chunk_error(
                rid,
                ErrorCode::Internal,
                format!(
                    "the relay cannot store chunks right now (its disk may be full); retry after {} s",
                    ms.div_ceil(1000)
                ),
                Some(ms),
            );
        }
        // A place among the link's puts in flight (waiting here holds the link's next
        // frame: that is the upload's backpressure).
        let Ok(place) = self.puts.clone().acquire_owned().await else {
            return;
        };
        let (hub, link) = (self.hub.clone(), self.link.clone());
        self.hub.spawn(async move {
            let answer = store_put(
                &hub, blobs, rid, mesh, member, file, id, data, expires_at, now,
            )
            .await;
            if let Some(b) = crate::hub::frame(&answer) {
                link.push(b);
            }
            drop(place);
        });
    }

    pub(super) async fn chunks_held(
        &mut self,
        rid: u64,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        ids: Vec<ChunkId>,
    ) {
        let Some(blobs) = self.chunk_gate(rid, entry, member) else {
            return;
        };
        if ids.len() > MAX_CHUNKS {
            return self.chunk_error(
                rid,
                ErrorCode::BadFrame,
                format!(
                    "chunks_held names at most {MAX_CHUNKS} ids (a file's chunks); this one has {}",
                    ids.len()
                ),
                None,
            );
        }
        match blobs.held(mesh, ids, now_ms()).await {
            Ok(held) => self.push(&RelayFrame::ChunksHeld { rid, held }),
            Err(e) => self.internal(rid, &e),
        }
    }

    pub(super) async fn chunk_get(
        &mut self,
        rid: u64,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        id: ChunkId,
    ) {
        let Some(blobs) = self.chunk_gate(rid, entry, member) else {
            return;
        };
        match blobs.get(mesh, id, now_ms()).await {
            Ok(Some(data)) => self.push(&RelayFrame::Chunk { rid, id, data }),
            Ok(None) => self.chunk_error(
                rid,
                ErrorCode::NotFound,
                "this relay holds no such chunk for the mesh (never stored, deleted or expired)"
                    .into(),
                None,
            ),
            Err(e) => self.internal(rid, &e),
        }
    }

    pub(super) async fn chunks_drop(
        &mut self,
        rid: u64,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        file: ItemId,
    ) {
        let Some(blobs) = self.chunk_gate(rid, entry, member) else {
            return;
        };
        let admin = lock(&entry.state)
            .roster
            .role(&member)
            .is_some_and(|r| r.is_admin());
        match blobs
            .drop_file(mesh, file, (!admin).then_some(member))
            .await
        {
            Ok(Dropped::Done(freed)) => {
                lock(&self.hub.blob_usage).free(&freed);
                self.push(&RelayFrame::Ok { rid });
            }
            Ok(Dropped::NotYours) => self.chunk_error(
                rid,
                ErrorCode::NotAuthorized,
                "only the member who uploaded a file's chunks, or an admin, may drop them".into(),
                None,
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot drop a file's chunks");
                self.chunk_error(
                    rid,
                    ErrorCode::Internal,
                    "the relay could not drop the file's chunks; retry later".into(),
                    Some(1_000),
                );
            }
        }
    }
}

fn refusal(rid: u64, code: ErrorCode, message: String, retry_ms: Option<u64>) -> RelayFrame {
    RelayFrame::Error {
        rid: Some(rid),
        code,
        message,
        fatal: false,
        retry_ms,
    }
}

/// Store one checked chunk against the quotas; the frame that answers the put.
#[allow(clippy::too_many_arguments)]
async fn store_put<S: Store>(
    hub: &crate::hub::Hub<S>,
    blobs: Arc<dyn BlobStore>,
    rid: u64,
    mesh: MeshId,
    member: MemberKey,
    file: ItemId,
    id: ChunkId,
    data: Vec<u8>,
    expires_at: Option<i64>,
    now: i64,
) -> RelayFrame {
    let size = data.len() as u64;
    // Without room, only a chunk the mesh holds already is taken (as one more
    // reference, which costs no bytes). Through a cluster the store counts the quotas
    // over every node (and answers `NoRoom`); this node's count is only its own puts.
    let (mesh_quota, relay_quota) = if hub.bus.is_some() {
        (u64::MAX, u64::MAX)
    } else {
        (hub.cfg.mesh_quota_blob_bytes, hub.cfg.blob_quota_bytes)
    };
    let fits = lock(&hub.blob_usage).reserve(mesh, size, mesh_quota, relay_quota);
    let res = blobs
        .put(NewChunk {
            mesh,
            file,
            id,
            data,
            uploader: member,
            expires_at,
            at: now,
            may_store: fits.is_ok(),
        })
        .await;
    if fits.is_ok() {
        lock(&hub.blob_usage).settle(mesh, size, matches!(res, Ok(PutChunk::Stored)));
    }
    match res {
        Ok(PutChunk::Stored | PutChunk::Known) => {
            if lock(&hub.blob_fault).worked() {
                tracing::warn!("file chunks are stored again");
            }
            RelayFrame::Ok { rid }
        }
        Ok(PutChunk::NoRoom) => {
            let which = match fits {
                Err(Over::Relay) => format!(
                    "the relay's file storage is full ({} bytes in all)",
                    hub.cfg.blob_quota_bytes
                ),
                Err(Over::Mesh) => format!(
                    "the mesh's file storage at the relay is full ({} bytes)",
                    hub.cfg.mesh_quota_blob_bytes
                ),
                Ok(_) => format!(
                    "the file storage at the relay is full (the mesh's {} bytes, or {} bytes in all)",
                    hub.cfg.mesh_quota_blob_bytes, hub.cfg.blob_quota_bytes
                ),
            };
            refusal(
                rid,
                ErrorCode::QuotaExceeded,
                format!("{which}; deleting files frees space"),
                None,
            )
        }
        Err(e) => {
            let (retry_ms, say) = lock(&hub.blob_fault).failed(Instant::now());
            if say {
                tracing::error!(error = %e, retry_ms, "cannot store file chunks (is the disk full?); uploaders are told to retry later, backing off; said at most once a minute");
            }
            refusal(
                rid,
                ErrorCode::Internal,
                format!(
                    "the relay could not store the chunk (its disk may be full); retry after {} s",
                    retry_ms.div_ceil(1000)
                ),
                Some(retry_ms),
            )
        }
    }
}
