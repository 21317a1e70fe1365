//! The relay's blob store: sealed file chunks (see `claudemesh_schema::file`) kept for the
//! members of a mesh, behind the [`BlobStore`] trait so a clustered backend (an object
//! store, say) is a new implementation, not a rewrite. [`DiskBlobs`] is the default;
//! relay nodes of a cluster use `cluster::blobs`.
//!
//! Chunks are content-addressed per mesh: the id is the BLAKE3 of the sealed bytes, checked
//! at upload, so a chunk put twice, or used by two files, is stored once. The relay cannot
//! read a chunk (it never holds a file key); it only proves a chunk is the one its id names.
//! A mesh's chunks are never served to another mesh, whatever the id.
//!
//! [`DiskBlobs`] keeps the bytes as files, `<root>/<mesh hex>/<2 hex>/<id hex>`, written
//! durably (temporary file, fsync, rename, directory fsync), and an index in `relay.db`
//! (`chunks`, `chunk_refs`: which file uses which chunk, its uploader, expiry). A chunk's
//! row is committed only after its file is durable, so the index never names bytes that a
//! power cut took; a file without a row (an upload cut short) is never served.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::file::ChunkId;
use claudemesh_schema::wire::MAX_CHUNK_FRAME;
use claudemesh_schema::{ItemId, MeshId};
use rusqlite::{OptionalExtension as _, params};
use std::collections::HashMap;
use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::sqlite::{self, SqliteError, Writer};

/// A blob store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// Reading or writing a chunk file failed (a full disk, an I/O error).
    #[error("cannot {what} chunk file {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The index in `relay.db` failed.
    #[error(transparent)]
    Index(#[from] SqliteError),
    /// The clustered blob store failed (see [`crate::cluster`]).
    #[error(transparent)]
    Cluster(Box<dyn std::error::Error + Send + Sync>),
    /// A blocking task did not finish (the runtime is shutting down).
    #[error("blob store task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for BlobError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Index(SqliteError::Query(e))
    }
}

/// What the blob store methods return: boxed, so the trait can be a trait object.
pub type BlobFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BlobError>> + Send + 'a>>;

/// A chunk to store.
#[derive(Debug, Clone)]
pub struct NewChunk {
    /// Its mesh.
    pub mesh: MeshId,
    /// The file that uses it.
    pub file: ItemId,
    /// BLAKE3 of `data` (checked by the caller).
    pub id: ChunkId,
    /// The sealed bytes.
    pub data: Vec<u8>,
    /// The member uploading it.
    pub uploader: MemberKey,
    /// Dropped after this time, unix ms; `None`: kept until the file is dropped.
    pub expires_at: Option<i64>,
    /// Now, unix ms.
    pub at: i64,
    /// Whether new bytes may be stored (false when the quota has no room for them: then
    /// only a chunk the mesh already holds is taken, as one more reference).
    pub may_store: bool,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutChunk {
    /// The bytes are new to the mesh and now stored.
    Stored,
    /// The mesh held the bytes already: only the file's reference was recorded.
    Known,
    /// The bytes are new and `may_store` was false: nothing was stored.
    NoRoom,
}

/// Chunks whose bytes are gone, per mesh: how many and their bytes.
pub type Freed = HashMap<MeshId, (u64, u64)>;

/// What dropping a file's chunks did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// The references are gone; these chunks were used by no other file and are deleted.
    Done(Freed),
    /// The file has chunks, none uploaded by the member asking: nothing dropped.
    NotYours,
}

/// Stored chunks of file shares.
pub trait BlobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Per mesh: chunks stored and their bytes (read once at startup).
    fn usage(&self) -> Result<Freed, BlobError>;
    /// Store a chunk for a file; answered once the bytes and the reference are durable.
    fn put(&self, c: NewChunk) -> BlobFuture<'_, PutChunk>;
    /// For each id, whether `mesh` holds it with an unexpired reference at `now`.
    fn held(&self, mesh: MeshId, ids: Vec<ChunkId>, now: i64) -> BlobFuture<'_, Vec<bool>>;
    /// The bytes of a chunk `mesh` holds with an unexpired reference at `now`.
    fn get(&self, mesh: MeshId, id: ChunkId, now: i64) -> BlobFuture<'_, Option<Vec<u8>>>;
    /// Drop the references of `file`: all of them (`by: None`, an admin), or those `by`
    /// uploaded. Chunks no file references any more are deleted.
    fn drop_file(
        &self,
        mesh: MeshId,
        file: ItemId,
        by: Option<MemberKey>,
    ) -> BlobFuture<'_, Dropped>;
    /// Drop references expired at `now` and the chunks left without one.
    fn sweep(&self, now: i64) -> BlobFuture<'_, Freed>;
}

/// The default blob store: chunk files under a directory, the index in `relay.db`.
#[derive(Debug)]
pub struct DiskBlobs {
    root: PathBuf,
    writer: Writer,
    reader: Arc<Mutex<rusqlite::Connection>>,
    /// Puts share it, drops and sweeps take it alone: a chunk's file is never deleted
    /// between a put's write of it and the commit of its row.
    gate: tokio::sync::RwLock<()>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BlobError + 'a {
    move |source| BlobError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

async fn blocking<R, F>(f: F) -> Result<R, BlobError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, BlobError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Task(e.to_string()))?
}

/// Whether a reference to (mesh, id) is live at `?3`.
const LIVE: &str = "SELECT EXISTS (SELECT 1 FROM chunk_refs WHERE mesh = ?1 AND id = ?2
                    AND (expires_at IS NULL OR expires_at > ?3))";

impl DiskBlobs {
    /// A blob store keeping its files under `root` and its index in the database at `db`
    /// (migrated already), written through `writer` (the relay store's).
    pub fn open(root: PathBuf, db: &Path, writer: Writer) -> Result<Self, BlobError> {
        crate::durable::create_dir_all(&root).map_err(io("create the directory of", &root))?;
        let reader = sqlite::open_reader(db)?;
        Ok(Self {
            root,
            writer,
            reader: Arc::new(Mutex::new(reader)),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    fn path(&self, mesh: &MeshId, id: &ChunkId) -> PathBuf {
        let hex = id.hex();
        self.root
            .join(claudemesh_schema::crypto::hex(mesh.as_bytes()))
            .join(&hex[..2])
            .join(hex)
    }

    async fn read<R, F>(&self, f: F) -> Result<R, BlobError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<R, BlobError> + Send + 'static,
    {
        let reader = self.reader.clone();
        blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
    }

    /// Delete the files of chunks whose rows are gone. A file left behind (a crash before
    /// this) is never served: only rows are.
    async fn unlink(&self, gone: Vec<(MeshId, ChunkId)>) {
        let paths: Vec<PathBuf> = gone.iter().map(|(m, id)| self.path(m, id)).collect();
        let _ = blocking(move || {
            for p in paths {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %p.display(), error = %e, "cannot delete a dropped chunk's file");
                }
            }
            Ok(())
        })
        .await;
    }
}

/// Delete the chunk rows among `ids` of `mesh` that no reference uses any more; their ids
/// and sizes.
fn drop_unused(
    tx: &rusqlite::Transaction<'_>,
    mesh: &MeshId,
    ids: impl IntoIterator<Item = Vec<u8>>,
) -> rusqlite::Result<Vec<(ChunkId, u64)>> {
    let mut del = tx.prepare_cached(
        "DELETE FROM chunks WHERE mesh = ?1 AND id = ?2
         AND NOT EXISTS (SELECT 1 FROM chunk_refs r WHERE r.mesh = ?1 AND r.id = ?2)
         RETURNING size",
    )?;
    let mut out = Vec::new();
    for id in ids {
        let size: Option<i64> = del
            .query_row(params![mesh.as_bytes(), id], |r| r.get(0))
            .optional()?;
        if let (Some(size), Some(id)) = (size, ChunkId::from_slice(&id)) {
            out.push((id, size as u64));
        }
    }
    Ok(out)
}

impl BlobStore for DiskBlobs {
    fn usage(&self) -> Result<Freed, BlobError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare("SELECT mesh, count(*), coalesce(sum(size), 0) FROM chunks GROUP BY mesh")?;
        let mut out = Freed::new();
        for row in stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })? {
            let (mesh, n, bytes) = row?;
            if let Some(m) = MeshId::from_slice(&mesh) {
                out.insert(m, (n as u64, bytes as u64));
            }
        }
        Ok(out)
    }

    fn put(&self, c: NewChunk) -> BlobFuture<'_, PutChunk> {
        Box::pin(async move {
            let _shared = self.gate.read().await;
            let (mesh, id) = (c.mesh, c.id);
            let held = self
                .read(move |conn| {
                    Ok(conn
                        .prepare_cached("SELECT size FROM chunks WHERE mesh = ?1 AND id = ?2")?
                        .query_row(params![mesh.as_bytes(), &id.0[..]], |r| r.get::<_, i64>(0))
                        .optional()?)
                })
                .await?;
            if held.is_none() && !c.may_store {
                return Ok(PutChunk::NoRoom);
            }
            let path = self.path(&mesh, &id);
            let size = c.data.len() as u64;
            // Bytes the mesh holds are not written again, unless their file went missing
            // (deleted as damaged by a read): a put of the same chunk heals it.
            let data = c.data;
            blocking(move || {
                let intact = std::fs::metadata(&path).is_ok_and(|m| m.len() == size);
                if held.is_some() && intact {
                    return Ok(());
                }
                if let Some(dir) = path.parent() {
                    crate::durable::create_dir_all(dir)
                        .map_err(io("create the directory of", &path))?;
                }
                crate::durable::write_atomic(&path, &data, 0o600).map_err(io("write", &path))
            })
            .await?;
            let (file, uploader, expires_at, at) = (c.file, c.uploader, c.expires_at, c.at);
            let fresh = self
                .writer
                .call(move |tx| {
                    let fresh = tx
                        .prepare_cached(
                            "INSERT INTO chunks (mesh, id, size, stored_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (mesh, id) DO NOTHING",
                        )?
                        .execute(params![mesh.as_bytes(), &id.0[..], size as i64, at])?
                        == 1;
                    // A file's chunk put again keeps its first reference (uploader, expiry).
                    tx.prepare_cached(
                        "INSERT INTO chunk_refs (mesh, file, id, uploader, expires_at, at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (mesh, file, id) DO NOTHING",
                    )?
                    .execute(params![
                        mesh.as_bytes(),
                        file.as_bytes(),
                        &id.0[..],
                        &uploader.0[..],
                        expires_at,
                        at
                    ])?;
                    Ok(fresh)
                })
                .await?;
            Ok(if fresh {
                PutChunk::Stored
            } else {
                PutChunk::Known
            })
        })
    }

    fn held(&self, mesh: MeshId, ids: Vec<ChunkId>, now: i64) -> BlobFuture<'_, Vec<bool>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare_cached(LIVE)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(
                    stmt.query_row(params![mesh.as_bytes(), &id.0[..], now], |r| {
                        r.get::<_, bool>(0)
                    })?,
                );
            }
            Ok(out)
        }))
    }

    fn get(&self, mesh: MeshId, id: ChunkId, now: i64) -> BlobFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let live = self
                .read(move |conn| {
                    Ok(conn
                        .prepare_cached(LIVE)?
                        .query_row(params![mesh.as_bytes(), &id.0[..], now], |r| {
                            r.get::<_, bool>(0)
                        })?)
                })
                .await?;
            if !live {
                return Ok(None);
            }
            let path = self.path(&mesh, &id);
            blocking(move || {
                let f = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::error!(path = %path.display(), "an indexed chunk's file is missing; it is served again once re-uploaded");
                        return Ok(None);
                    }
                    Err(e) => return Err(io("open", &path)(e)),
                };
                // Never more than one chunk in memory, whatever the file has become.
                let mut data = Vec::with_capacity(MAX_CHUNK_FRAME);
                f.take(MAX_CHUNK_FRAME as u64 + 1)
                    .read_to_end(&mut data)
                    .map_err(io("read", &path))?;
                if data.len() > MAX_CHUNK_FRAME || !id.names(&data) {
                    tracing::error!(path = %path.display(), "a stored chunk does not match its id (damaged on disk); deleting it so a re-upload heals it");
                    let _ = std::fs::remove_file(&path);
                    return Ok(None);
                }
                Ok(Some(data))
            })
            .await
        })
    }

    fn drop_file(
        &self,
        mesh: MeshId,
        file: ItemId,
        by: Option<MemberKey>,
    ) -> BlobFuture<'_, Dropped> {
        Box::pin(async move {
            let _alone = self.gate.write().await;
            let r = self
                .writer
                .call(move |tx| {
                    let ids: Vec<Vec<u8>> = match by {
                        Some(m) => {
                            let (all, mine): (i64, i64) = tx.query_row(
                                "SELECT count(*), coalesce(sum(uploader = ?3), 0) FROM chunk_refs
                                 WHERE mesh = ?1 AND file = ?2",
                                params![mesh.as_bytes(), file.as_bytes(), &m.0[..]],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )?;
                            if all > 0 && mine == 0 {
                                return Ok(None);
                            }
                            let mut stmt = tx.prepare(
                                "DELETE FROM chunk_refs WHERE mesh = ?1 AND file = ?2
                                 AND uploader = ?3 RETURNING id",
                            )?;
                            stmt.query_map(
                                params![mesh.as_bytes(), file.as_bytes(), &m.0[..]],
                                |r| r.get(0),
                            )?
                            .collect::<rusqlite::Result<_>>()?
                        }
                        None => {
                            let mut stmt = tx.prepare(
                                "DELETE FROM chunk_refs WHERE mesh = ?1 AND file = ?2 RETURNING id",
                            )?;
                            stmt.query_map(params![mesh.as_bytes(), file.as_bytes()], |r| r.get(0))?
                                .collect::<rusqlite::Result<_>>()?
                        }
                    };
                    drop_unused(tx, &mesh, ids).map(Some)
                })
                .await?;
            let Some(gone) = r else {
                return Ok(Dropped::NotYours);
            };
            let mut freed = Freed::new();
            for (_, size) in &gone {
                let e = freed.entry(mesh).or_default();
                e.0 += 1;
                e.1 += size;
            }
            self.unlink(gone.into_iter().map(|(id, _)| (mesh, id)).collect())
                .await;
            Ok(Dropped::Done(freed))
        })
    }

    fn sweep(&self, now: i64) -> BlobFuture<'_, Freed> {
        Box::pin(async move {
            let _alone = self.gate.write().await;
            let gone = self
                .writer
                .call(move |tx| {
                    let expired: Vec<(Vec<u8>, Vec<u8>)> = {
                        let mut stmt = tx.prepare(
                            "DELETE FROM chunk_refs WHERE expires_at IS NOT NULL AND expires_at <= ?1
                             RETURNING mesh, id",
                        )?;
                        stmt.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?
                            .collect::<rusqlite::Result<_>>()?
                    };
                    let mut by_mesh: HashMap<MeshId, Vec<Vec<u8>>> = HashMap::new();
                    for (m, id) in expired {
                        if let Some(m) = MeshId::from_slice(&m) {
                            by_mesh.entry(m).or_default().push(id);
                        }
                    }
                    let mut gone = Vec::new();
                    for (m, ids) in by_mesh {
                        for (id, size) in drop_unused(tx, &m, ids)? {
                            gone.push((m, id, size));
                        }
                    }
                    Ok(gone)
                })
                .await?;
            let mut freed = Freed::new();
            for (m, _, size) in &gone {
                let e = freed.entry(*m).or_default();
                e.0 += 1;
                e.1 += size;
            }
            self.unlink(gone.into_iter().map(|(m, id, _)| (m, id)).collect())
                .await;
            Ok(freed)
        })
    }
}

/// Which quota a chunk does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Over {
    /// The mesh's (`mesh_quota_blob_bytes`).
    Mesh,
    /// The relay's (`blob_quota_bytes`).
    Relay,
}

/// Bytes and chunks stored, per mesh and in all, with the bytes of puts under way (held
/// against the quotas until their write ends).
#[derive(Debug, Default)]
pub(crate) struct BlobUsage {
    meshes: HashMap<MeshId, MeshBlobs>,
    chunks: u64,
    bytes: u64,
    pending: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct MeshBlobs {
    chunks: u64,
    bytes: u64,
    pending: u64,
}

impl BlobUsage {
    pub(crate) fn new(stored: &Freed) -> Self {
        let mut u = Self::default();
        for (m, (n, b)) in stored {
            u.meshes.insert(
                *m,
                MeshBlobs {
                    chunks: *n,
                    bytes: *b,
                    pending: 0,
                },
            );
            u.chunks += n;
            u.bytes += b;
        }
        u
    }

    /// Hold `size` bytes for a put in `mesh`, if both quotas have room.
    pub(crate) fn reserve(
        &mut self,
        mesh: MeshId,
        size: u64,
        mesh_max: u64,
        relay_max: u64,
    ) -> Result<(), Over> {
        let m = self.meshes.entry(mesh).or_default();
        if m.bytes + m.pending + size > mesh_max {
            return Err(Over::Mesh);
        }
        if self.bytes + self.pending + size > relay_max {
            return Err(Over::Relay);
        }
        m.pending += size;
        self.pending += size;
        Ok(())
    }

    /// A reserved put ended: its bytes are stored (`stored`) or were not needed.
    pub(crate) fn settle(&mut self, mesh: MeshId, size: u64, stored: bool) {
        let m = self.meshes.entry(mesh).or_default();
        m.pending = m.pending.saturating_sub(size);
        self.pending = self.pending.saturating_sub(size);
        if stored {
            m.chunks += 1;
            m.bytes += size;
            self.chunks += 1;
            self.bytes += size;
        }
    }

    /// Chunks were deleted.
    pub(crate) fn free(&mut self, freed: &Freed) {
        for (mesh, (n, b)) in freed {
            let m = self.meshes.entry(*mesh).or_default();
            let (n, b) = ((*n).min(m.chunks), (*b).min(m.bytes));
            m.chunks -= n;
            m.bytes -= b;
            self.chunks = self.chunks.saturating_sub(n);
            self.bytes = self.bytes.saturating_sub(b);
        }
    }

    /// Chunks and bytes stored in all.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (self.chunks, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn chunk(mesh: MeshId, file: ItemId, data: &[u8], by: MemberKey) -> NewChunk {
        NewChunk {
            mesh,
            file,
            id: ChunkId::of(data),
            data: data.to_vec(),
            uploader: by,
            expires_at: None,
            at: 1,
            may_store: true,
        }
    }

    fn files(root: &Path) -> usize {
        fn walk(p: &Path, n: &mut usize) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), n);
                } else {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(root, &mut n);
        n
    }

    #[tokio::test]
    async fn chunks_are_stored_once_kept_while_referenced_and_swept_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let store = SqliteStore::open(&db, sqlite::Durability::Normal).unwrap();
        let root = dir.path().join("blobs");
        let b = DiskBlobs::open(root.clone(), &db, store.writer()).unwrap();
        let (mesh, other) = (MeshId::new(), MeshId::new());
        let (f1, f2) = (ItemId::new(), ItemId::new());
        let (alice, bob) = (MemberKey([1; 32]), MemberKey([2; 32]));
        let c = chunk(mesh, f1, &[7; 100], alice);
        let id = c.id;
        assert_eq!(b.put(c.clone()).await.unwrap(), PutChunk::Stored);
        assert_eq!(b.put(c.clone()).await.unwrap(), PutChunk::Known);
        // Known bytes are taken even without room; new ones are not.
        let second = NewChunk {
            file: f2,
            may_store: false,
            ..c.clone()
        };
        assert_eq!(b.put(second).await.unwrap(), PutChunk::Known);
        let no_room = NewChunk {
            may_store: false,
            ..chunk(mesh, f1, &[8; 100], alice)
        };
        assert_eq!(b.put(no_room).await.unwrap(), PutChunk::NoRoom);
        assert_eq!(files(&root), 1, "stored once");
        assert_eq!(b.usage().unwrap().get(&mesh), Some(&(1, 100)));
        assert_eq!(b.get(mesh, id, 2).await.unwrap().unwrap(), vec![7; 100]);
        assert_eq!(b.get(other, id, 2).await.unwrap(), None, "other mesh");
        assert_eq!(
            b.held(other, vec![id], 2).await.unwrap(),
            vec![false],
            "other mesh"
        );
        // Bob uploaded nothing of f1: refused. Alice drops f1; f2 still uses the chunk.
        assert_eq!(
            b.drop_file(mesh, f1, Some(bob)).await.unwrap(),
            Dropped::NotYours
        );
        assert_eq!(
            b.drop_file(mesh, f1, Some(alice)).await.unwrap(),
            Dropped::Done(Freed::new())
        );
        assert!(b.get(mesh, id, 2).await.unwrap().is_some());
        // An admin drops f2: the chunk is gone, file and row.
        let Dropped::Done(freed) = b.drop_file(mesh, f2, None).await.unwrap() else {
            panic!("admin drop refused");
        };
        assert_eq!(freed.get(&mesh), Some(&(1, 100)));
        assert_eq!(b.get(mesh, id, 2).await.unwrap(), None);
        assert_eq!(files(&root), 0);
        // Expiring references: unserved after expiry, swept then.
        let e = NewChunk {
            expires_at: Some(50),
            ..chunk(mesh, f1, &[9; 64], alice)
        };
        let eid = e.id;
        assert_eq!(b.put(e).await.unwrap(), PutChunk::Stored);
        assert_eq!(b.held(mesh, vec![eid], 49).await.unwrap(), vec![true]);
        assert_eq!(b.held(mesh, vec![eid], 50).await.unwrap(), vec![false]);
        assert_eq!(b.get(mesh, eid, 50).await.unwrap(), None);
        assert!(b.sweep(49).await.unwrap().is_empty());
        assert_eq!(b.sweep(50).await.unwrap().get(&mesh), Some(&(1, 64)));
        assert_eq!(files(&root), 0);
        // A damaged file is not served, and a put of the same chunk heals it.
        let c = chunk(mesh, f1, &[5; 80], alice);
        let cid = c.id;
        b.put(c.clone()).await.unwrap();
        std::fs::write(b.path(&mesh, &cid), [6; 80]).unwrap();
        assert_eq!(b.get(mesh, cid, 2).await.unwrap(), None);
        assert_eq!(b.put(c).await.unwrap(), PutChunk::Known);
        assert_eq!(b.get(mesh, cid, 2).await.unwrap().unwrap(), vec![5; 80]);
    }

    #[test]
    fn usage_holds_puts_under_way_against_both_quotas() {
        let (a, b) = (MeshId::new(), MeshId::new());
        let mut u = BlobUsage::new(&Freed::from([(a, (1, 60))]));
        assert_eq!(u.reserve(a, 50, 100, 1000), Err(Over::Mesh));
        u.reserve(a, 40, 100, 1000).unwrap();
        assert_eq!(
            u.reserve(a, 1, 100, 1000),
            Err(Over::Mesh),
            "pending counts"
        );
        u.settle(a, 40, false);
        u.reserve(a, 40, 100, 1000).unwrap();
        u.settle(a, 40, true);
        assert_eq!(u.totals(), (2, 100));
        assert_eq!(u.reserve(b, 50, 100, 120), Err(Over::Relay));
        u.free(&Freed::from([(a, (2, 100))]));
        assert_eq!(u.totals(), (0, 0));
        u.reserve(b, 100, 100, 120).unwrap();
    }
}
