//! Shared files: `file_share`, `file_get`, `file_list`, `file_status`, `file_delete`,
//! `file_grant`, and serving chunks to members' daemons.
//!
//! A share streams the file once: each chunk is sealed (see `schema::file`), kept in this
//! daemon's chunk cache (`files/<mesh>/<chunk hex>`, so it can serve them) and stored in
//! the relay's blob store unless that is off; only when every chunk is stored is the
//! share op written, so a reader that sees the op can fetch it. A fetch takes each chunk
//! from the cache, else the relay, else a member's daemon (a boxed `chunk_ask`, answered
//! with boxed `chunk`s), checks it against its id, writes it into a temporary file next
//! to the target and renames that into place after the whole file's BLAKE3 matched.
//!
//! Interrupted transfers resume: an upload's key and plan are recorded before the first
//! chunk (sealing is deterministic, so the same chunks come out again and the relay
//! says which it holds); a download finds how much of its temporary file is right by
//! sealing it again. Both are picked up again when the daemon starts.
//!
//! Not here: the relay's blob store (relay `blobs`), peers' shared folders.

use claudemesh_schema::crypto::{MemberKey, hex};
use claudemesh_schema::file::{
    self, CHUNK_SIZE, ChunkId, FileKey, KeyBox, MAX_CHUNKS, MAX_FILE, Manifest,
};
use claudemesh_schema::ipc::files::*;
use claudemesh_schema::message::{
    self, ChunkAskBody, ChunkBody, FetchedBody, KIND_CHUNK, KIND_CHUNK_ASK, KIND_FILE_FETCHED,
};
use claudemesh_schema::op::Op;
use claudemesh_schema::wire::{ClientFrame, ErrorCode, RelayFrame};
use claudemesh_schema::{ItemId, MeshId, now_ms};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;
use crate::delivery::send::{boxed_to_member, members_for};
use crate::error::Error;
use crate::mesh::{LinkCmd, MeshCtx, lock};

/// Chunks in flight at once, to the relay or to members.
const WINDOW: usize = 8;
/// How long one chunk may take from the relay, or from a member's daemon.
const CHUNK_WAIT: Duration = Duration::from_secs(20);
/// Default lifetime of an ephemeral share.
const EPHEMERAL_SECS: u64 = 24 * 3600;
/// Chunks served per asking member per window: a 256 MiB file in a minute, not more.
const SERVED_PER_WINDOW: u32 = 2048;
const SERVED_WINDOW_MS: i64 = 60_000;
/// Chunk answers an asking member may leave unacknowledged. The relay keeps each answer
/// until the asker's daemon acknowledges it, in the mesh's undelivered-message quota: an
/// asker that never reads (offline, or hostile) would otherwise have this daemon fill
/// that quota for the whole mesh. Past it, its asks go unanswered until it reads; an
/// honest fetch has at most a window of chunks in flight.
const MAX_UNACKED_ANSWERS: usize = 64;

/// What a share op will say, kept with an upload until the op is written.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Plan {
    name: String,
    mime: String,
    tags: Vec<String>,
    expires_at: Option<i64>,
    /// `""`: the whole mesh.
    to: String,
    /// Readers' member keys (empty for the whole mesh); the author is always one.
    readers: Vec<MemberKey>,
    reader_names: Vec<String>,
    session: Option<claudemesh_schema::SessionId>,
    /// The chunk ids as first sealed, recorded before any chunk leaves this machine. A
    /// resumed upload seals the file again under the same key and the same derived
    /// nonces, so it may go on only if that gives the same chunks: other content under a
    /// nonce already used would show the relay the XOR of the two plaintexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Vec<ChunkId>>,
}

fn cache_dir(d: &Daemon, mesh: &MeshId) -> PathBuf {
    d.paths.dir.join("files").join(mesh.to_string())
}

fn cache_path(d: &Daemon, mesh: &MeshId, id: &ChunkId) -> PathBuf {
    cache_dir(d, mesh).join(id.hex())
}

/// A chunk from the cache, if it is there and right.
fn cached(d: &Daemon, mesh: &MeshId, id: &ChunkId) -> Option<Vec<u8>> {
    let b = std::fs::read(cache_path(d, mesh, id)).ok()?;
    id.names(&b).then_some(b)
}

/// Keep a chunk in the cache (not synced: a torn one fails its id and is fetched again).
fn keep(d: &Daemon, mesh: &MeshId, id: &ChunkId, data: &[u8]) -> std::io::Result<()> {
    let dir = cache_dir(d, mesh);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(id.hex());
    if path.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{}.tmp", id.hex()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

fn mime_of(name: &str, head: &[u8]) -> String {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let by_ext = match ext.as_deref() {
        Some("md") => Some("text/markdown"),
        Some("txt" | "log" | "rs" | "py" | "ts" | "js" | "toml" | "yaml" | "yml" | "sh") => {
            Some("text/plain")
        }
        Some("json") => Some("application/json"),
        Some("html") => Some("text/html"),
        Some("png") => Some("image/png"),
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("pdf") => Some("application/pdf"),
        Some("zip") => Some("application/zip"),
        _ => None,
    };
    match by_ext {
        Some(m) => m.into(),
        None if std::str::from_utf8(head).is_ok() && !head.contains(&0) => "text/plain".into(),
        None => "application/octet-stream".into(),
    }
}

fn is_text(mime: &str) -> bool {
    mime.starts_with("text/") || mime == "application/json"
}

/// Drop the record of a transfer (`up` or `down`): it finished, or never can.
async fn forget_transfer(
    d: &Daemon,
    mesh: MeshId,
    file: ItemId,
    direction: &str,
) -> Result<(), Error> {
    let direction = direction.to_string();
    d.store
        .write(move |tx| {
            tx.execute(
                "DELETE FROM file_transfers WHERE mesh = ?1 AND file = ?2 AND direction = ?3",
                params![mesh.as_bytes(), file.as_bytes(), direction],
            )
        })
        .await?;
    Ok(())
}

/// A running transfer's entry in `file_transfers`, gone when this is dropped.
struct Tracking {
    m: Arc<MeshCtx>,
    path: String,
}

impl Tracking {
    fn new(m: &Arc<MeshCtx>, file: ItemId, path: &Path, phase: &str, total: u64) -> Self {
        let path = path.to_string_lossy().into_owned();
        lock(&m.progress).insert(
            path.clone(),
            FileTransfer {
                file,
                path: path.clone(),
                phase: phase.into(),
                done: 0,
                total,
            },
        );
        Self { m: m.clone(), path }
    }

    fn set(&self, phase: &str, done: u64) {
        if let Some(t) = lock(&self.m.progress).get_mut(&self.path) {
            if t.phase != phase {
                t.phase = phase.into();
            }
            t.done = done.min(t.total);
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        lock(&self.m.progress).remove(&self.path);
    }
}

/// `file_transfers`.
pub(crate) fn transfers(d: &Daemon) -> FileTransfersResult {
    let mut transfers: Vec<FileTransfer> = d
        .meshes()
        .iter()
        .flat_map(|m| lock(&m.progress).values().cloned().collect::<Vec<_>>())
        .collect();
    transfers.sort_by(|a, b| a.path.cmp(&b.path));
    FileTransfersResult { transfers }
}

/// The lock of one transfer target: held while it runs.
async fn transfer_lock(m: &MeshCtx, target: &str) -> tokio::sync::OwnedMutexGuard<()> {
    let l = lock(&m.transfers)
        .entry(target.to_string())
        .or_default()
        .clone();
    l.lock_owned().await
}

/// Whether `path` holds exactly the content a manifest describes.
fn holds(path: &Path, man: &Manifest) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).is_ok()
        && claudemesh_schema::crypto::ct_eq(h.finalize().as_bytes(), &man.blake3)
}

/// `file_share`.
pub(crate) async fn share(d: &Arc<Daemon>, p: FileShareParams) -> Result<FileShareResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let path = PathBuf::from(&p.path);
    if !path.is_absolute() {
        return Err(Error::invalid("give the file's absolute path"));
    }
    let meta = std::fs::metadata(&path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(Error::invalid(format!(
            "{} is {} bytes; a share holds at most {MAX_FILE} (256 MiB): split it",
            path.display(),
            meta.len()
        )));
    }
    let name = match &p.name {
        Some(n) => n.trim().to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    file::check_name(&name).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(s) = p.session
        && !m.is_local(&s)
    {
        return Err(Error::not_found(format!("session {s} is not hosted here")));
    }
    let tags: Vec<String> = p
        .tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    let to = p.to.as_deref().map(str::trim).unwrap_or("");
    let (to, readers, reader_names) = if to.is_empty() || to == "*" {
        (String::new(), Vec::new(), vec!["*".to_string()])
    } else {
        let found = members_for(d, &m, to).await?;
        let names = found.iter().map(|(_, n)| n.clone()).collect();
        (
            to.to_string(),
            found.into_iter().map(|(k, _)| k).collect(),
            names,
        )
    };
    let head = {
        let mut f = std::fs::File::open(&path)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
        let mut b = vec![0u8; 4096];
        let n = f.read(&mut b).unwrap_or(0);
        b.truncate(n);
        b
    };
    let plan = Plan {
        mime: mime_of(&name, &head),
        name,
        tags,
        expires_at: p
            .ephemeral
            .then(|| now_ms() + 1000 * p.ttl_secs.unwrap_or(EPHEMERAL_SECS).max(1) as i64),
        to,
        readers,
        reader_names,
        session: p.session,
        sealed: None,
    };
    let file = ItemId::new();
    let key = FileKey::generate();
    let (mesh, plan_json, key_bytes, path_s) = (
        m.id,
        serde_json::to_string(&plan).map_err(Error::internal)?,
        key.as_bytes().to_vec(),
        p.path.clone(),
    );
    d.store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO file_transfers (mesh, file, direction, path, key, share, started_at)
                 VALUES (?1, ?2, 'up', ?3, ?4, ?5, ?6)",
                params![
                    mesh.as_bytes(),
                    file.as_bytes(),
                    path_s,
                    key_bytes,
                    plan_json,
                    now_ms()
                ],
            )
        })
        .await?;
    upload(d, &m, file, &key, &path, &plan).await
}

/// Seal, store and announce one upload (again, after an interruption: the same chunks).
async fn upload(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    file: ItemId,
    key: &FileKey,
    path: &Path,
    plan: &Plan,
) -> Result<FileShareResult, Error> {
    let total = std::fs::metadata(path).map(|x| x.len()).unwrap_or(0);
    let track = Arc::new(Tracking::new(m, file, path, "sealing", total));
    // Seal into the cache, one chunk in memory at a time.
    let (dd, mesh, key2, path2, t2) = (
        d.clone(),
        m.id,
        key.clone(),
        path.to_path_buf(),
        track.clone(),
    );
    let (ids, hash, size) = tokio::task::spawn_blocking(move || {
        seal_file(&dd, &mesh, &file, &key2, &path2, &|n| t2.set("sealing", n))
    })
    .await
    .map_err(Error::internal)??;
    match &plan.sealed {
        Some(first) if *first != ids => {
            // The file changed since the upload began: its key must seal nothing else.
            for id in ids.iter().filter(|i| !first.contains(i)) {
                let _ = std::fs::remove_file(cache_path(d, &m.id, id));
            }
            forget_transfer(d, m.id, file, "up").await?;
            let _ = m
                .link
                .ask(
                    Box::new(move |rid| ClientFrame::ChunksDrop { rid, file }),
                    CHUNK_WAIT,
                )
                .await;
            return Err(Error::conflict(format!(
                "{} changed since its upload was interrupted; share it again",
                path.display()
            )));
        }
        Some(_) => {}
        None => {
            let mut recorded = plan.clone();
            recorded.sealed = Some(ids.clone());
            let (mesh, json) = (
                m.id,
                serde_json::to_string(&recorded).map_err(Error::internal)?,
            );
            d.store
                .write(move |tx| {
                    tx.execute(
                        "UPDATE file_transfers SET share = ?3
                         WHERE mesh = ?1 AND file = ?2 AND direction = 'up'",
                        params![mesh.as_bytes(), file.as_bytes(), json],
                    )
                })
                .await?;
        }
    }
    let stored = store_chunks(d, m, file, &ids, plan.expires_at, &track).await?;
    drop(track);
    let manifest = Manifest {
        name: plan.name.clone(),
        size,
        mime: plan.mime.clone(),
        blake3: hash,
        chunks: ids.iter().flat_map(|i| i.0).collect(),
        tags: plan.tags.clone(),
        expires_at: plan.expires_at,
    };
    let sealed = key
        .seal_manifest(&m.id, &file, &manifest)
        .map_err(Error::internal)?;
    let me = m.member();
    let mut keys = Vec::new();
    if plan.readers.is_empty() {
        let (epoch, mk) = m.seal_key();
        keys.push(KeyBox::for_mesh(&m.id, &file, epoch, &mk, key).map_err(Error::internal)?);
    } else {
        let mut readers = plan.readers.clone();
        if !readers.contains(&me) {
            readers.push(me);
        }
        for r in readers {
            keys.push(
                KeyBox::for_member(&m.id, &file, &m.keys.member, &r, key)
                    .map_err(Error::internal)?,
            );
        }
    }
    let sealed_bytes: u64 = size + (ids.len() * file::CHUNK_OVERHEAD) as u64;
    let op = Op::ShareFile {
        file,
        manifest: sealed,
        keys,
        to: plan.to.clone(),
        stored: sealed_bytes,
    };
    let session = plan.session.filter(|s| m.is_local(s));
    let w = crate::shared::oplog::write(d, m, session, op, None).await?;
    forget_transfer(d, m.id, file, "up").await?;
    Ok(FileShareResult {
        mesh: m.id,
        file,
        name: plan.name.clone(),
        size,
        chunks: ids.len() as u32,
        to: plan.reader_names.clone(),
        stored: stored.into(),
        seq: w.seq,
    })
}

/// Read `path` chunk by chunk: seal each into the cache; the ids, the plaintext hash
/// and the size read.
fn seal_file(
    d: &Daemon,
    mesh: &MeshId,
    file: &ItemId,
    key: &FileKey,
    path: &Path,
    sealed_so_far: &dyn Fn(u64),
) -> Result<(Vec<ChunkId>, [u8; 32], u64), Error> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = blake3::Hasher::new();
    let mut ids = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let mut n = 0;
        while n < CHUNK_SIZE {
            let r = f
                .read(&mut buf[n..])
                .map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 && !ids.is_empty() {
            break;
        }
        if ids.len() >= MAX_CHUNKS {
            return Err(Error::invalid(format!(
                "{} grew past {MAX_FILE} bytes while it was read",
                path.display()
            )));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        let sealed = key
            .seal_chunk(file, ids.len() as u32, &buf[..n])
            .map_err(Error::internal)?;
        let id = ChunkId::of(&sealed);
        keep(d, mesh, &id, &sealed).map_err(|e| {
            Error::internal(format!(
                "cannot keep a chunk in {}: {e}",
                cache_dir(d, mesh).display()
            ))
        })?;
        ids.push(id);
        sealed_so_far(size);
        if n < CHUNK_SIZE {
            break;
        }
    }
    Ok((ids, *hasher.finalize().as_bytes(), size))
}

/// Store chunks at the relay (those it does not hold yet); `"peers"` when its blob
/// store is off (this daemon serves them).
async fn store_chunks(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    file: ItemId,
    ids: &[ChunkId],
    expires_at: Option<i64>,
    track: &Tracking,
) -> Result<&'static str, Error> {
    let list = ids.to_vec();
    let held = match m
        .link
        .ask(
            Box::new(move |rid| ClientFrame::ChunksHeld { rid, ids: list }),
            CHUNK_WAIT,
        )
        .await
    {
        Ok(RelayFrame::ChunksHeld { held, .. }) if held.len() == ids.len() => held,
        Ok(_) => vec![false; ids.len()],
        Err(r) if r.code == Some(ErrorCode::StorageOff) => return Ok("peers"),
        Err(r) => {
            return Err(Error::relay(format!(
                "cannot store the file: {}",
                r.message
            )));
        }
    };
    let missing: Vec<ChunkId> = ids
        .iter()
        .zip(held)
        .filter(|(_, h)| !h)
        .map(|(i, _)| *i)
        .collect();
    let missing_n = missing.len();
    use futures_util::StreamExt as _;
    let (d0, m0) = (d.clone(), m.clone());
    let mut puts = futures_util::stream::iter(missing.into_iter().map(move |id| {
        let (d, m) = (d0.clone(), m0.clone());
        async move {
            let data = cached(&d, &m.id, &id)
                .ok_or_else(|| Error::internal("a sealed chunk left the cache mid-upload"))?;
            let mut wait = Duration::from_millis(250);
            loop {
                let data = data.clone();
                let r = m
                    .link
                    .ask(
                        Box::new(move |rid| ClientFrame::ChunkPut {
                            rid,
                            file,
                            id,
                            data,
                            expires_at,
                        }),
                        CHUNK_WAIT,
                    )
                    .await;
                match r {
                    Ok(_) => return Ok::<bool, Error>(true),
                    Err(r) if r.code == Some(ErrorCode::StorageOff) => return Ok(false),
                    // Busy or full for now: back off and try again (bounded).
                    Err(r)
                        if matches!(r.code, Some(ErrorCode::RateLimited) | None)
                            && wait < Duration::from_secs(30) =>
                    {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(r) => {
                        return Err(Error::relay(format!(
                            "the relay did not store a chunk: {}",
                            r.message
                        )));
                    }
                }
            }
        }
    }))
    .buffer_unordered(WINDOW);
    let held_bytes = (ids.len() - missing_n) as u64 * CHUNK_SIZE as u64;
    let mut stored = 0u64;
    track.set("storing", held_bytes);
    while let Some(r) = puts.next().await {
        if !r? {
            return Ok("peers");
        }
        stored += CHUNK_SIZE as u64;
        track.set("storing", held_bytes + stored);
    }
    Ok("relay")
}

/// One folded share, as stored.
struct Row {
    id: ItemId,
    author: MemberKey,
    author_name: String,
    manifest: Vec<u8>,
    to: String,
    stored: u64,
    created_at: i64,
    boxes: Vec<(KeyBox, MemberKey)>,
}

fn q_files(
    c: &rusqlite::Connection,
    mesh: MeshId,
    only: Option<ItemId>,
) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, author, author_name, manifest, to_label, stored, created_at FROM files
         WHERE mesh = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY created_at DESC, id",
    )?;
    let only = only.map(|o| o.as_bytes().to_vec());
    let rows = stmt.query_map(params![mesh.as_bytes(), only], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, author, author_name, manifest, to, stored, created_at) = row?;
        let (Some(id), Ok(author)) = (
            ItemId::from_slice(&id),
            <[u8; 32]>::try_from(author.as_slice()),
        ) else {
            continue;
        };
        let mut boxes = Vec::new();
        let mut k = c.prepare_cached(
            "SELECT member, epoch, ct, granter FROM file_keys WHERE mesh = ?1 AND file = ?2 ORDER BY n",
        )?;
        let ks = k.query_map(params![mesh.as_bytes(), id.as_bytes()], |r| {
            Ok((
                r.get::<_, Option<Vec<u8>>>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        for kr in ks {
            let (member, epoch, ct, granter) = kr?;
            let Ok(granter) = <[u8; 32]>::try_from(granter.as_slice()) else {
                continue;
            };
            let b = match (member, epoch) {
                (Some(mb), _) => match <[u8; 32]>::try_from(mb.as_slice()) {
                    Ok(mb) => KeyBox::Member {
                        member: MemberKey(mb),
                        ct,
                    },
                    Err(_) => continue,
                },
                (None, Some(e)) => KeyBox::Mesh {
                    epoch: e as u32,
                    ct,
                },
                (None, None) => continue,
            };
            boxes.push((b, MemberKey(granter)));
        }
        out.push(Row {
            id,
            author: MemberKey(author),
            author_name,
            manifest,
            to,
            stored: stored as u64,
            created_at,
            boxes,
        });
    }
    Ok(out)
}

/// The file key and manifest of a share, if this member may read it.
fn open_row(m: &MeshCtx, r: &Row) -> Option<(FileKey, Manifest)> {
    let me = m.member();
    for (b, granter) in &r.boxes {
        if !b.is_for(&me) {
            continue;
        }
        if let Ok(k) = b.open(&m.id, &r.id, |e| m.key_of(e), granter, &m.keys.member)
            && let Ok(man) = k.open_manifest(&m.id, &r.id, &r.manifest)
        {
            return Some((k, man));
        }
    }
    None
}

fn info(m: &MeshCtx, r: &Row, opened: Option<&Manifest>) -> FileInfo {
    FileInfo {
        id: r.id,
        name: opened.map(|x| x.name.clone()),
        size: opened.map(|x| x.size),
        mime: opened.map(|x| x.mime.clone()),
        tags: opened.map(|x| x.tags.clone()).unwrap_or_default(),
        author: crate::shared::query::by(r.author_name.clone(), &r.author.0),
        author_fingerprint: r.author.fingerprint(),
        to: r.to.clone(),
        readable: opened.is_some(),
        mine: r.author == m.member(),
        created_at: r.created_at,
        expires_at: opened.and_then(|x| x.expires_at),
        stored: r.stored,
    }
}

/// The share a file id (or a unique prefix of one) names.
async fn find(d: &Daemon, m: &MeshCtx, file: &str) -> Result<Row, Error> {
    let want = file.trim().to_ascii_lowercase().replace('-', "");
    if want.is_empty() || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::invalid(format!(
            "{file:?} is not a file id; `claudemesh file list` shows them"
        )));
    }
    let mesh = m.id;
    let rows = d.store.read(move |c| Ok(q_files(c, mesh, None)?)).await?;
    let mut hits: Vec<Row> = rows
        .into_iter()
        .filter(|r| r.id.0.simple().to_string().starts_with(&want))
        .collect();
    match hits.len() {
        0 => Err(Error::not_found(format!(
            "no file {file} in {}; `claudemesh file list` shows them",
            m.name()
        ))),
        1 => Ok(hits.remove(0)),
        n => Err(Error::ambiguous(format!(
            "{file} matches {n} files; give more of the id"
        ))),
    }
}

fn live(man: &Manifest, now: i64) -> bool {
    man.expires_at.is_none_or(|e| e > now)
}

/// `file_list`.
pub(crate) async fn list(d: &Arc<Daemon>, p: FileListParams) -> Result<FileListResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let mesh = m.id;
    let rows = d.store.read(move |c| Ok(q_files(c, mesh, None)?)).await?;
    let now = now_ms();
    let scope = p.scope.as_deref().unwrap_or("all");
    if !["all", "mine", "for_me"].contains(&scope) {
        return Err(Error::invalid("scope is all, mine or for_me"));
    }
    let mut files = Vec::new();
    for r in &rows {
        let opened = open_row(&m, r).map(|(_, man)| man);
        if opened.as_ref().is_some_and(|man| !live(man, now)) {
            continue;
        }
        let i = info(&m, r, opened.as_ref());
        if (scope == "mine" && !i.mine) || (scope == "for_me" && !i.readable) {
            continue;
        }
        if !p.tags.iter().all(|t| i.tags.contains(t)) {
            continue;
        }
        if let Some(a) = &p.author
            && !i.author.to_lowercase().starts_with(&a.to_lowercase())
        {
            continue;
        }
        files.push(i);
    }
    Ok(FileListResult { mesh, files })
}

/// `file_status`.
pub(crate) async fn status(d: &Arc<Daemon>, p: FileParams) -> Result<FileStatusResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let r = find(d, &m, &p.file).await?;
    let opened = open_row(&m, &r).map(|(_, man)| man);
    let (mesh, id) = (m.id, r.id);
    let (fetches, presence) = d
        .store
        .read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT member, at FROM file_fetches WHERE mesh = ?1 AND file = ?2 ORDER BY at",
            )?;
            let v = s
                .query_map(params![mesh.as_bytes(), id.as_bytes()], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((v, crate::store::q_presence(c, mesh)?))
        })
        .await?;
    let name_of = |k: &MemberKey| {
        presence
            .iter()
            .find(|p| p.member == *k)
            .map(|p| p.names().0)
            .or_else(|| (*k == m.member()).then(|| lock(&m.row).display_name.clone()))
            .map(|n| claudemesh_schema::render::keyed(&n, k))
            .unwrap_or_else(|| k.short_fingerprint())
    };
    let mut readers = Vec::new();
    for (b, _) in &r.boxes {
        let who = match b {
            KeyBox::Mesh { .. } => "*".to_string(),
            KeyBox::Member { member, .. } => name_of(member),
        };
        if !readers.contains(&who) {
            readers.push(who);
        }
    }
    let fetched = fetches
        .into_iter()
        .filter_map(|(k, at)| {
            let k = MemberKey(<[u8; 32]>::try_from(k.as_slice()).ok()?);
            Some(Fetch {
                who: name_of(&k),
                fingerprint: k.fingerprint(),
                at,
            })
        })
        .collect();
    Ok(FileStatusResult {
        file: info(&m, &r, opened.as_ref()),
        readers,
        fetched,
    })
}

/// `file_delete`: the share goes from every member's list; its chunks from the relay.
pub(crate) async fn delete(d: &Arc<Daemon>, p: FileParams) -> Result<FileDeleteResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let r = find(d, &m, &p.file).await?;
    if r.author != m.member() && !m.role().is_admin() {
        return Err(Error::forbidden(format!(
            "file {} was shared by {}; only they or an admin may delete it",
            r.id.short(),
            r.author_name
        )));
    }
    let opened = open_row(&m, &r);
    let session = p.session.filter(|s| m.is_local(s));
    let w =
        crate::shared::oplog::write(d, &m, session, Op::DeleteFile { file: r.id }, None).await?;
    let file = r.id;
    // Best effort: the relay drops what no other file uses; a relay that is away keeps
    // them until their author deletes them again (or their expiry, if ephemeral).
    let _ = m
        .link
        .ask(
            Box::new(move |rid| ClientFrame::ChunksDrop { rid, file }),
            CHUNK_WAIT,
        )
        .await;
    if let Some((_, man)) = opened {
        for id in man.chunk_ids() {
            let _ = std::fs::remove_file(cache_path(d, &m.id, &id));
        }
    }
    Ok(FileDeleteResult {
        file: r.id,
        seq: w.seq,
    })
}

/// `file_grant`: the file key boxed to more members, in an op; nothing is uploaded.
pub(crate) async fn grant(d: &Arc<Daemon>, p: FileGrantParams) -> Result<FileGrantResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let r = find(d, &m, &p.file).await?;
    if r.author != m.member() && !m.role().is_admin() {
        return Err(Error::forbidden(format!(
            "file {} was shared by {}; only they or an admin may grant it",
            r.id.short(),
            r.author_name
        )));
    }
    let Some((key, _)) = open_row(&m, &r) else {
        return Err(Error::forbidden(format!(
            "this member does not hold the key of file {}; only a reader can grant it",
            r.id.short()
        )));
    };
    if r.boxes
        .iter()
        .any(|(b, _)| matches!(b, KeyBox::Mesh { .. }))
    {
        return Err(Error::invalid(format!(
            "file {} is shared with the whole mesh already",
            r.id.short()
        )));
    }
    let found = members_for(d, &m, &p.to).await?;
    let mut keys = Vec::new();
    let mut granted = Vec::new();
    for (k, name) in found {
        keys.push(
            KeyBox::for_member(&m.id, &r.id, &m.keys.member, &k, &key).map_err(Error::internal)?,
        );
        granted.push(name);
    }
    let session = p.session.filter(|s| m.is_local(s));
    let w = crate::shared::oplog::write(d, &m, session, Op::GrantFile { file: r.id, keys }, None)
        .await?;
    Ok(FileGrantResult {
        file: r.id,
        granted,
        seq: w.seq,
    })
}

/// Where fetched chunks came from.
#[derive(Default)]
struct Sources {
    relay: u32,
    peers: u32,
    cache: u32,
}

/// Fetch `file` to `out` once its share op has reached this daemon (it may come after the
/// message naming it), waiting for the fold until `until`: `Ok(false)` if it never came.
pub(crate) async fn get_when_shared(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    file: ItemId,
    out: &Path,
    until: tokio::time::Instant,
) -> Result<bool, Error> {
    let mut changes = d.changes.subscribe();
    loop {
        let got = get(
            d,
            FileGetParams {
                mesh: Some(m.id.to_string()),
                file: file.to_string(),
                out: Some(out.display().to_string()),
                force: true,
            },
        )
        .await;
        match got {
            Ok(_) => return Ok(true),
            Err(Error::NotFound(_)) => {
                let woke = tokio::time::timeout_at(until, changes.changed()).await;
                if !matches!(woke, Ok(Ok(()))) {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// `file_get`.
pub(crate) async fn get(d: &Arc<Daemon>, p: FileGetParams) -> Result<FileGetResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let r = find(d, &m, &p.file).await?;
    let Some((key, man)) = open_row(&m, &r) else {
        let to = if r.to.is_empty() {
            "its readers".into()
        } else {
            r.to.clone()
        };
        return Err(Error::forbidden(format!(
            "file {} was shared with {to}, not with you; ask {} to `claudemesh file grant {} <you>`",
            r.id.short(),
            r.author_name,
            r.id.short()
        )));
    };
    if !live(&man, now_ms()) {
        return Err(Error::not_found(format!(
            "file {} was ephemeral and has expired",
            r.id.short()
        )));
    }
    let inline = p.out.is_none() && man.size <= MAX_INLINE && is_text(&man.mime);
    let target = match &p.out {
        Some(o) => {
            let o = PathBuf::from(o);
            if !o.is_absolute() {
                return Err(Error::invalid("give an absolute path to save to"));
            }
            if o.is_dir() { o.join(&man.name) } else { o }
        }
        None => {
            let dir = d.paths.dir.join("downloads");
            std::fs::create_dir_all(&dir).map_err(Error::internal)?;
            dir.join(format!("{}-{}", r.id.short(), man.name))
        }
    };
    let tpath = target.to_string_lossy().into_owned();
    // One transfer per target: a fetch already running there (resumed at start, say)
    // finishes first, and this one then finds the file in place.
    let _running = transfer_lock(&m, &tpath).await;
    if target.exists() {
        let (t2, m2) = (target.clone(), man.clone());
        let same = tokio::task::spawn_blocking(move || holds(&t2, &m2))
            .await
            .map_err(Error::internal)?;
        if same && !inline {
            return Ok(FileGetResult {
                file: r.id,
                name: man.name.clone(),
                size: man.size,
                mime: man.mime.clone(),
                path: Some(tpath),
                content: None,
                from_relay: 0,
                from_peers: 0,
                from_cache: man.chunk_ids().len() as u32,
                blake3: hex(&man.blake3),
            });
        }
        if !p.force && !inline {
            return Err(Error::conflict(format!(
                "{} exists with other content; pass --force to replace it",
                target.display()
            )));
        }
    }
    let (mesh, file) = (m.id, r.id);
    d.store
        .write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO file_transfers (mesh, file, direction, path, started_at)
                 VALUES (?1, ?2, 'down', ?3, ?4)",
                params![mesh.as_bytes(), file.as_bytes(), tpath, now_ms()],
            )
        })
        .await?;
    let src = download(d, &m, &r, &key, &man, &target).await?;
    let content = if inline {
        let c = std::fs::read(&target).map_err(Error::internal)?;
        let _ = std::fs::remove_file(&target);
        Some(String::from_utf8_lossy(&c).into_owned())
    } else {
        None
    };
    Ok(FileGetResult {
        file: r.id,
        name: man.name.clone(),
        size: man.size,
        mime: man.mime.clone(),
        path: (!inline).then(|| target.to_string_lossy().into_owned()),
        content,
        from_relay: src.relay,
        from_peers: src.peers,
        from_cache: src.cache,
        blake3: hex(&man.blake3),
    })
}

fn part_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".claudemesh-part");
    PathBuf::from(s)
}

/// How many leading chunks of a partial download are right (sealing them again gives
/// the manifest's ids).
fn verified_prefix(part: &Path, key: &FileKey, file: &ItemId, ids: &[ChunkId]) -> usize {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(part);
    let Ok(mut f) = opened else {
        return 0;
    };
    let mut buf = vec![0u8; CHUNK_SIZE];
    for (i, id) in ids.iter().enumerate() {
        let mut n = 0;
        while n < CHUNK_SIZE {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(r) => n += r,
                Err(_) => return i,
            }
        }
        let ok = key
            .seal_chunk(file, i as u32, &buf[..n])
            .is_ok_and(|s| id.names(&s));
        if !ok || (n < CHUNK_SIZE && i + 1 < ids.len()) {
            return i;
        }
        if n < CHUNK_SIZE {
            return i + 1;
        }
    }
    ids.len()
}

/// Fetch every chunk into the temporary file, check it all, rename it into place, and
/// tell the author.
async fn download(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    r: &Row,
    key: &FileKey,
    man: &Manifest,
    target: &Path,
) -> Result<Sources, Error> {
    let ids = man.chunk_ids();
    let part = part_path(target);
    let (p2, k2, f2, i2) = (part.clone(), key.clone(), r.id, ids.clone());
    let start = tokio::task::spawn_blocking(move || verified_prefix(&p2, &k2, &f2, &i2))
        .await
        .map_err(Error::internal)?;
    // Never through a symlink: in a directory others can write, one planted at the
    // part's name would have this daemon truncate and overwrite whatever it points to.
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", part.display())))?;
    out.set_len((start * CHUNK_SIZE) as u64)
        .map_err(Error::internal)?;
    let mut src = Sources {
        cache: start as u32,
        ..Sources::default()
    };
    let track = Tracking::new(m, r.id, target, "fetching", man.size);
    let mut written = (start * CHUNK_SIZE) as u64;
    track.set("fetching", written);
    use futures_util::StreamExt as _;
    let (d0, m0, author, file) = (d.clone(), m.clone(), r.author, r.id);
    let todo: Vec<(usize, ChunkId)> = ids.iter().copied().enumerate().skip(start).collect();
    let mut gets = futures_util::stream::iter(todo.into_iter().map(move |(i, id)| {
        let (d, m) = (d0.clone(), m0.clone());
        async move {
            fetch_chunk(&d, &m, file, author, id)
                .await
                .map(|(b, s)| (i, b, s))
        }
    }))
    .buffered(WINDOW);
    while let Some(got) = gets.next().await {
        let (i, sealed, from) = got?;
        let plain = key
            .open_chunk(&r.id, i as u32, &sealed)
            .map_err(|_| Error::internal(format!("chunk {i} does not open under the file key")))?;
        out.seek(std::io::SeekFrom::Start((i * CHUNK_SIZE) as u64))
            .and_then(|_| out.write_all(&plain))
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", part.display())))?;
        written += plain.len() as u64;
        track.set("fetching", written);
        match from {
            From::Relay => src.relay += 1,
            From::Peer => src.peers += 1,
            From::Cache => src.cache += 1,
        }
    }
    out.sync_all().map_err(Error::internal)?;
    drop(out);
    // The whole file, as the author hashed it: nothing else is renamed into place.
    let (p2, want) = (part.clone(), man.blake3);
    let ok = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let mut h = blake3::Hasher::new();
        let mut f = std::fs::File::open(&p2)?;
        std::io::copy(&mut f, &mut h)?;
        Ok(claudemesh_schema::crypto::ct_eq(
            h.finalize().as_bytes(),
            &want,
        ))
    })
    .await
    .map_err(Error::internal)?
    .map_err(Error::internal)?;
    if !ok {
        let _ = std::fs::remove_file(&part);
        return Err(Error::internal(
            "the fetched file does not match the hash its author sealed; nothing was saved",
        ));
    }
    std::fs::rename(&part, target).map_err(|e| {
        Error::internal(format!("cannot move the file to {}: {e}", target.display()))
    })?;
    // The new name, durable (best effort: some filesystems cannot sync a directory).
    if let Some(dir) = target.parent()
        && let Ok(f) = std::fs::File::open(dir)
    {
        let _ = f.sync_all();
    }
    forget_transfer(d, m.id, r.id, "down").await?;
    if r.author != m.member()
        && let Ok(body) = serde_json::to_string(&FetchedBody { file: r.id })
        && let Some((id, frame)) =
            boxed_to_member(m, m.keys.session, &r.author, KIND_FILE_FETCHED, body)
    {
        // The relay keeps it for an author who is offline.
        let _ = m
            .link
            .tx
            .send(LinkCmd::Send(id, bytes::Bytes::from(frame), None))
            .await;
    }
    Ok(src)
}

enum From {
    Relay,
    Peer,
    Cache,
}

/// One chunk, checked against its id: from the cache, the relay, or a member's daemon
/// (the author's first).
async fn fetch_chunk(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    file: ItemId,
    author: MemberKey,
    id: ChunkId,
) -> Result<(Vec<u8>, From), Error> {
    if let Some(b) = cached(d, &m.id, &id) {
        return Ok((b, From::Cache));
    }
    let relay = m
        .link
        .ask(
            Box::new(move |rid| ClientFrame::ChunkGet { rid, id }),
            CHUNK_WAIT,
        )
        .await;
    let why = match relay {
        Ok(RelayFrame::Chunk { data, .. }) if id.names(&data) => {
            let _ = keep(d, &m.id, &id, &data);
            return Ok((data, From::Relay));
        }
        Ok(_) => "the relay sent a chunk that does not match its id".to_string(),
        Err(r) => r.message,
    };
    // From members' daemons that are online: the author's first, then any other's
    // (an offline one would get the question only when it is back, long after).
    let mesh = m.id;
    let presence = d
        .store
        .read(move |c| crate::store::q_presence(c, mesh))
        .await?;
    let mut ask: Vec<MemberKey> = Vec::new();
    if presence.iter().any(|p| p.online && p.member == author) {
        ask.push(author);
    }
    for p in &presence {
        if p.online && !ask.contains(&p.member) {
            ask.push(p.member);
        }
    }
    ask.retain(|k| *k != m.member());
    for member in ask {
        let (tx, rx) = tokio::sync::oneshot::channel();
        lock(&m.chunk_asks)
            .entry(id)
            .or_default()
            .push((member, tx));
        let body = serde_json::to_string(&ChunkAskBody {
            file,
            ids: vec![id],
        })
        .map_err(Error::internal)?;
        if let Some((mid, frame)) =
            boxed_to_member(m, m.keys.session, &member, KIND_CHUNK_ASK, body)
        {
            let _ = m
                .link
                .tx
                .send(LinkCmd::Send(mid, bytes::Bytes::from(frame), None))
                .await;
        }
        let got = tokio::time::timeout(CHUNK_WAIT, rx).await;
        if let Some(v) = lock(&m.chunk_asks).get_mut(&id) {
            v.retain(|(k, tx)| *k != member && !tx.is_closed());
        }
        if let Ok(Ok(data)) = got {
            let _ = keep(d, &m.id, &id, &data);
            return Ok((data, From::Peer));
        }
    }
    lock(&m.chunk_asks).remove(&id);
    Err(Error::relay(format!(
        "a chunk of the file is on no reachable store ({why}); no member online holds it"
    )))
}

/// A boxed file payload from member `from`: a chunk request, a chunk, a fetched receipt.
pub(crate) async fn on_message(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    from: MemberKey,
    kind: &str,
    body: &str,
) {
    match kind {
        KIND_CHUNK_ASK => {
            let Ok(ask) = serde_json::from_str::<ChunkAskBody>(body) else {
                return;
            };
            let now = now_ms();
            for id in ask.ids.into_iter().take(message::MAX_CHUNK_ASK) {
                {
                    let mut served = lock(&m.chunks_served);
                    served.retain(|_, (since, _)| now - *since < SERVED_WINDOW_MS);
                    let (_, n) = served.entry(from).or_insert((now, 0));
                    if *n >= SERVED_PER_WINDOW {
                        tracing::debug!(from = %from.short(), "chunk requests too often; not served");
                        return;
                    }
                    *n += 1;
                }
                if lock(&m.chunk_answers)
                    .get(&from)
                    .is_some_and(|s| s.len() >= MAX_UNACKED_ANSWERS)
                {
                    tracing::info!(
                        from = %from.short(),
                        "a member leaves chunk answers unacknowledged; its asks go unanswered until it reads them"
                    );
                    return;
                }
                let data = cached(d, &m.id, &id);
                let Ok(body) = serde_json::to_string(&ChunkBody { id, data }) else {
                    continue;
                };
                if let Some((mid, frame)) =
                    boxed_to_member(m, m.keys.session, &from, KIND_CHUNK, body)
                {
                    lock(&m.chunk_answers).entry(from).or_default().insert(mid);
                    let _ = m
                        .link
                        .tx
                        .send(LinkCmd::Send(mid, bytes::Bytes::from(frame), None))
                        .await;
                }
            }
        }
        KIND_CHUNK => {
            let Ok(c) = serde_json::from_str::<ChunkBody>(body) else {
                return;
            };
            let Some(data) = c.data.filter(|b| c.id.names(b)) else {
                // Not held there (or not the chunk): the asker moves on at its deadline.
                return;
            };
            let mut asks = lock(&m.chunk_asks);
            if let Some(v) = asks.get_mut(&c.id) {
                let (mine, rest): (Vec<_>, Vec<_>) = v.drain(..).partition(|(k, _)| *k == from);
                *v = rest;
                for (_, tx) in mine {
                    let _ = tx.send(data.clone());
                }
            }
        }
        KIND_FILE_FETCHED => {
            let Ok(f) = serde_json::from_str::<FetchedBody>(body) else {
                return;
            };
            let (mesh, me) = (m.id, m.member());
            let r = d
                .store
                .write(move |tx| {
                    let ours: Option<Vec<u8>> = tx
                        .query_row(
                            "SELECT author FROM files WHERE mesh = ?1 AND id = ?2",
                            params![mesh.as_bytes(), f.file.as_bytes()],
                            |r| r.get(0),
                        )
                        .optional()?;
                    // Only from a member the file was shared with: anyone else's receipt is
                    // a claim about a file it could not open.
                    let reader: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM file_keys WHERE mesh = ?1 AND file = ?2
                           AND (member = ?3 OR member IS NULL))",
                        params![mesh.as_bytes(), f.file.as_bytes(), from.0],
                        |r| r.get(0),
                    )?;
                    if ours.as_deref() == Some(&me.0[..]) && reader {
                        tx.execute(
                            "INSERT OR REPLACE INTO file_fetches (mesh, file, member, at)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![mesh.as_bytes(), f.file.as_bytes(), from.0, now_ms()],
                        )?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot record who fetched a file");
            }
        }
        _ => {}
    }
}

/// Envelope `id` reached `member`'s daemon (its signed receipt), or the relay refused it
/// (`member` `None`): a chunk answer no longer waits on that asker.
pub(crate) fn answer_done(
    m: &MeshCtx,
    id: &claudemesh_schema::MessageId,
    member: Option<&MemberKey>,
) {
    let mut all = lock(&m.chunk_answers);
    all.retain(|k, ids| {
        if member.is_none_or(|x| x == k) {
            let full = ids.len() >= MAX_UNACKED_ANSWERS;
            if ids.remove(id) && full {
                tracing::info!(from = %k.short(), "a member read its chunk answers; its asks are answered again");
            }
        }
        !ids.is_empty()
    });
}

/// Pick up transfers a stop interrupted (run once the daemon's meshes are loaded).
pub(crate) async fn resume(d: Arc<Daemon>) {
    let rows = d
        .store
        .read(|c| {
            let mut s = c.prepare(
                "SELECT mesh, file, direction, path, key, share FROM file_transfers ORDER BY started_at",
            )?;
            let v = s
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<Vec<u8>>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
        .await;
    let Ok(rows) = rows else {
        return;
    };
    for (mesh, file, dir, path, key, plan) in rows {
        let (Some(mesh), Some(file)) = (MeshId::from_slice(&mesh), ItemId::from_slice(&file))
        else {
            continue;
        };
        let Some(m) = d.meshes().into_iter().find(|x| x.id == mesh) else {
            continue;
        };
        let d2 = d.clone();
        d.spawn(async move {
            // Give the link its first connection.
            let mut st = m.link.status.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                st.wait_for(|s| {
                    s.state == claudemesh_schema::ipc::methods::LinkState::Connected
                }),
            )
            .await;
            let r = if dir == "up" {
                let (Some(key), Some(plan)) = (
                    key.and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok()),
                    plan.and_then(|p| serde_json::from_str::<Plan>(&p).ok()),
                ) else {
                    return;
                };
                upload(&d2, &m, file, &FileKey::from_bytes(key), Path::new(&path), &plan)
                    .await
                    .map(|_| ())
            } else {
                async {
                    let r = find(&d2, &m, &file.0.simple().to_string()).await?;
                    let Some((key, man)) = open_row(&m, &r) else {
                        return Ok(());
                    };
                    let _running = transfer_lock(&m, &path).await;
                    if Path::new(&path).exists() {
                        return Ok(());
                    }
                    download(&d2, &m, &r, &key, &man, Path::new(&path))
                        .await
                        .map(|_| ())
                }
                .await
            };
            match r {
                Ok(()) => tracing::info!(%file, direction = %dir, "an interrupted file transfer finished"),
                // The relay away: tried again at the next start. Anything else (the file
                // gone, deleted, no longer readable) will not get better: forgotten (a
                // download's part file stays, so running it again resumes).
                Err(e @ (Error::Relay(_) | Error::Timeout(_))) => tracing::warn!(%file, direction = %dir, error = %e, "an interrupted file transfer failed; tried again at the next start"),
                Err(e) => {
                    tracing::warn!(%file, direction = %dir, error = %e, "an interrupted file transfer cannot finish; forgotten (run it again)");
                    let _ = forget_transfer(&d2, m.id, file, &dir).await;
                }
            }
        });
    }
}
