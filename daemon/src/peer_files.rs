//! Peer folders: `share-dir` records folders of this machine that members may read
//! (`shared-dirs.toml` in the config directory, read again on every question, so a change
//! needs no restart); `read_peer_file` / `list_peer_files` ask a member's daemon for a
//! file or a listing of one of its folders.
//!
//! Built like `crate::stats`: a question boxed to the member, answered by its daemon (not
//! its sessions, so a busy session does not matter) with one boxed answer, end to end:
//! the relay sees two envelopes and nothing of the path or the content. Not through the
//! outbox; questions older than [`ASK_MAX_AGE_MS`] are not answered; answers per asking
//! member per window are bounded; the asker only takes the answer to its own question
//! from the member it asked.
//!
//! Serving is the trust boundary. The path asked for names a shared folder by its name,
//! then a path inside it. Refused, each with a code the asker words (never text of ours):
//! absolute paths, `..`, NUL, backslashes; anything that resolves, symlinks followed,
//! outside the folder (said the same whether or not it exists there: a symlink whose
//! target cannot be resolved is "outside" too); anything but a regular file for a read;
//! files over [`MAX_PEER_FILE_BYTES`]; a member without the `file-read` grant or outside
//! the share's `to`. A blocked member gets no answer at all. A folder holding this
//! daemon's config directory (its keys) is never shared.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::peer_files::{
    PeerFileListResult, PeerFileParams, PeerFileReadResult, ShareDirListParams, ShareDirParams,
    ShareDirRmParams, SharedDir, SharedDirsResult,
};
use claudemesh_schema::message::{
    self, MAX_PEER_FILE_BYTES, MAX_PEER_FILE_DEPTH, MAX_PEER_FILE_ENTRIES, MAX_PEER_FILE_PATH,
    PeerFileAsk, PeerFileBody, PeerFileEntry, PeerFileOp, PeerFileRefusal,
};
use claudemesh_schema::{MeshId, MessageId, now_ms};
use serde::{Deserialize, Serialize};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;
use crate::delivery::send::boxed_to_member;
use crate::error::Error;
use crate::mesh::{LinkCmd, MeshCtx, lock};

/// The file the shares are recorded in, in the config directory.
pub(crate) const FILE: &str = "shared-dirs.toml";
/// How long a question waits for its answer unless told.
const WAIT: Duration = Duration::from_secs(10);
/// A question older than this (or as far ahead of our clock) is not answered.
const ASK_MAX_AGE_MS: i64 = 60_000;
/// Answers per asking member per window: a model listing then reading a few files is
/// served; a member asking in a loop cannot spend our relay write budget.
const ANSWERS_PER_WINDOW: u32 = 20;
const ANSWER_WINDOW_MS: i64 = 10_000;
/// Largest answer body (JSON, as it is escaped again inside the sealed payload): within
/// `wire::MAX_CIPHERTEXT` with room for the payload around it. Text that would not fit
/// as text goes as base64 (96 KiB of content is 128 KiB of base64).
const MAX_ANSWER_JSON: usize = 192 * 1024;
/// Largest answer body the receiving side takes.
pub(crate) const MAX_ANSWER_BODY: usize = MAX_ANSWER_JSON + 4096;

/// `shared-dirs.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareFile {
    #[serde(default)]
    share_dir: Vec<ShareEntry>,
}

/// One `[[share_dir]]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ShareEntry {
    /// The folder, absolute and canonical when it was shared.
    path: String,
    /// The mesh it is shared in.
    mesh: MeshId,
    /// `@group` or `member:<key>`; empty: every member with `file-read`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    to: Vec<String>,
}

impl ShareEntry {
    /// What peers call it: the folder's last component.
    fn name(&self) -> String {
        Path::new(&self.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Serializes changes to the share file (read, change, write).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn file_of(d: &Daemon) -> PathBuf {
    d.paths.dir.join(FILE)
}

fn load(path: &Path) -> Result<ShareFile, Error> {
    match std::fs::read_to_string(path) {
        Ok(t) => toml::from_str(&t).map_err(|e| {
            Error::invalid(format!(
                "invalid {}: {e}; fix it or remove it (`claudemesh share-dir rm`)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShareFile::default()),
        Err(e) => Err(Error::internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn save(path: &Path, f: &ShareFile) -> Result<(), Error> {
    let text = toml::to_string_pretty(f).map_err(Error::internal)?;
    crate::paths::write_atomic(path, text.as_bytes())
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
}

/// Does sharing `dir` (canonical) expose the config directory (keys, store)?
fn holds_config(d: &Daemon, dir: &Path) -> bool {
    let cfg = std::fs::canonicalize(&d.paths.dir).unwrap_or_else(|_| d.paths.dir.clone());
    cfg.starts_with(dir) || dir.starts_with(&cfg)
}

// ---- the local commands: share-dir, list, rm ----------------------------------------

/// `share_dir`: record (or update) a share, then every share.
pub(crate) async fn share(d: &Arc<Daemon>, p: ShareDirParams) -> Result<SharedDirsResult, Error> {
    let x = d.select(p.mesh.as_deref())?;
    let given = Path::new(&p.path);
    if !given.is_absolute() {
        return Err(Error::invalid(format!(
            "{:?} is not an absolute path (the CLI resolves relative ones)",
            p.path
        )));
    }
    let dir = std::fs::canonicalize(given)
        .map_err(|e| Error::not_found(format!("cannot share {}: {e}", given.display())))?;
    if !dir.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a folder; share-dir shares folders (`claudemesh file share` shares a file)",
            dir.display()
        )));
    }
    if holds_config(d, &dir) {
        return Err(Error::forbidden(format!(
            "{} holds (or is inside) this daemon's config directory, with its keys; share a folder that does not",
            dir.display()
        )));
    }
    let path = dir
        .to_str()
        .ok_or_else(|| Error::invalid("the folder's path is not valid UTF-8"))?
        .to_string();
    let mut to = Vec::new();
    for t in &p.to {
        let t = t.trim();
        if let Some(g) = t.strip_prefix('@') {
            let g = claudemesh_schema::names::check_group(g)
                .map_err(|e| Error::invalid(e.to_string()))?;
            to.push(format!("@{g}"));
        } else {
            let peer = crate::grants::resolve_member(d, &x, t).await?;
            to.push(format!("member:{}", peer.key.to_b64()));
        }
    }
    to.sort();
    to.dedup();
    let entry = ShareEntry {
        path,
        mesh: x.id,
        to,
    };
    let name = entry.name();
    if name.is_empty() {
        return Err(Error::invalid("the file system root cannot be shared"));
    }
    let file = file_of(d);
    {
        let _w = lock(&WRITING);
        let mut f = load(&file)?;
        if let Some(other) = f
            .share_dir
            .iter()
            .find(|e| e.mesh == x.id && e.path != entry.path && e.name() == name)
        {
            return Err(Error::conflict(format!(
                "{} is already shared in {} under the name {name:?}; peers name a folder by its last component: remove that share first (`claudemesh share-dir rm {}`)",
                other.path,
                x.name(),
                other.path
            )));
        }
        f.share_dir
            .retain(|e| !(e.mesh == x.id && e.path == entry.path));
        f.share_dir.push(entry);
        save(&file, &f)?;
    }
    tracing::info!(mesh = %x.id.short(), "folder shared");
    list(d, ShareDirListParams { mesh: None }).await
}

/// `share_dir_rm`.
pub(crate) async fn remove(
    d: &Arc<Daemon>,
    p: ShareDirRmParams,
) -> Result<SharedDirsResult, Error> {
    let only = match p.mesh.as_deref() {
        Some(m) => Some(d.select(Some(m))?.id),
        None => None,
    };
    // The folder may be gone by now: match its canonical path, or the path as given.
    let canon = std::fs::canonicalize(&p.path)
        .ok()
        .and_then(|c| c.to_str().map(str::to_string));
    let file = file_of(d);
    {
        let _w = lock(&WRITING);
        let mut f = load(&file)?;
        let before = f.share_dir.len();
        f.share_dir.retain(|e| {
            let same = e.path == p.path || Some(&e.path) == canon.as_ref();
            !(same && only.is_none_or(|m| m == e.mesh))
        });
        if f.share_dir.len() == before {
            return Err(Error::not_found(format!(
                "{} is not shared; `claudemesh share-dir list` shows what is",
                p.path
            )));
        }
        save(&file, &f)?;
    }
    list(d, ShareDirListParams { mesh: p.mesh }).await
}

/// `share_dir_list`.
pub(crate) async fn list(
    d: &Arc<Daemon>,
    p: ShareDirListParams,
) -> Result<SharedDirsResult, Error> {
    let meshes = d.select_many(p.mesh.as_deref())?;
    let file = file_of(d);
    let f = load(&file)?;
    let mut shares = Vec::new();
    for x in &meshes {
        let mut named = None;
        for e in f.share_dir.iter().filter(|e| e.mesh == x.id) {
            let mut to = Vec::new();
            for t in &e.to {
                match t.strip_prefix("member:").and_then(MemberKey::from_b64) {
                    Some(k) => {
                        if named.is_none() {
                            named = Some(crate::grants::peers(d, x).await?);
                        }
                        let name = named
                            .iter()
                            .flatten()
                            .find(|p| p.key == k)
                            .and_then(|p| p.names.first().cloned())
                            .unwrap_or_else(|| "a member".into());
                        to.push(claudemesh_schema::render::keyed(&name, &k));
                    }
                    None => to.push(t.clone()),
                }
            }
            shares.push(SharedDir {
                name: e.name(),
                path: e.path.clone(),
                mesh: x.id,
                mesh_name: x.name(),
                to,
                read_only: true,
            });
        }
    }
    shares.sort_by(|a, b| a.mesh_name.cmp(&b.mesh_name).then(a.name.cmp(&b.name)));
    Ok(SharedDirsResult {
        shares,
        file: file.display().to_string(),
    })
}

// ---- serving --------------------------------------------------------------------------

/// The share name and the components inside it, or a refusal: absolute, `..`, NUL or a
/// backslash are `outside`. Empty: the list of shares.
fn parse_path(s: &str) -> Result<Option<(String, Vec<String>)>, PeerFileRefusal> {
    if s.len() > MAX_PEER_FILE_PATH
        || s.contains('\0')
        || s.contains('\\')
        || s.starts_with('/')
        || Path::new(s).is_absolute()
    {
        return Err(PeerFileRefusal::Outside);
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PeerFileRefusal::Outside),
            c => parts.push(c.to_string()),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let share = parts.remove(0);
    Ok(Some((share, parts)))
}

/// Follow `rest` from `root` (canonical) one component at a time, never leaving `root`:
/// a symlink is resolved and must land inside; one that does not resolve is `outside`
/// (its target may be anywhere; whether it exists is not ours to say).
fn resolve(root: &Path, rest: &[String]) -> Result<PathBuf, PeerFileRefusal> {
    let mut at = root.to_path_buf();
    for c in rest {
        let next = at.join(c);
        let meta = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PeerFileRefusal::NotFound);
            }
            Err(_) => return Err(PeerFileRefusal::Unreadable),
        };
        at = if meta.file_type().is_symlink() {
            match std::fs::canonicalize(&next) {
                Ok(t) if t.starts_with(root) => t,
                _ => return Err(PeerFileRefusal::Outside),
            }
        } else {
            next
        };
    }
    Ok(at)
}

/// Answer a read of `path` (canonical, inside the share).
fn read_file(path: &Path) -> PeerFileBody {
    let mut body = refusal(unset(), None);
    let Ok(f) = std::fs::File::open(path) else {
        return refusal(body.of, Some(PeerFileRefusal::Unreadable));
    };
    let Ok(meta) = f.metadata() else {
        return refusal(body.of, Some(PeerFileRefusal::Unreadable));
    };
    if !meta.is_file() {
        return refusal(body.of, Some(PeerFileRefusal::WrongKind));
    }
    body.size = meta.len();
    if meta.len() > MAX_PEER_FILE_BYTES {
        body.error = Some(PeerFileRefusal::TooLarge);
        return body;
    }
    let mut bytes = Vec::new();
    if f.take(MAX_PEER_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return refusal(body.of, Some(PeerFileRefusal::Unreadable));
    }
    body.size = bytes.len() as u64;
    if body.size > MAX_PEER_FILE_BYTES {
        // It grew while being read.
        body.error = Some(PeerFileRefusal::TooLarge);
        return body;
    }
    match String::from_utf8(bytes) {
        // Text travels as text when it still fits once escaped twice (in the answer's
        // JSON, then in the sealed payload's); else as base64.
        Ok(t) if escaped(&escaped(&t)).len() <= MAX_ANSWER_JSON => {
            body.encoding = "utf8".into();
            body.content = t;
        }
        Ok(t) => {
            body.encoding = "base64".into();
            body.content = claudemesh_schema::encoding::b64(t.as_bytes());
        }
        Err(e) => {
            body.encoding = "base64".into();
            body.content = claudemesh_schema::encoding::b64(e.as_bytes());
        }
    }
    body
}

/// `s` as a JSON string.
fn escaped(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Names, kinds and sizes under `dir` (canonical, inside the share), as `prefix/…`;
/// symlinks are listed, not followed.
fn list_dir(dir: &Path, prefix: &str) -> (Vec<PeerFileEntry>, bool) {
    let mut out = Vec::new();
    let mut truncated = false;
    let mut queue = std::collections::VecDeque::from([(dir.to_path_buf(), prefix.to_string(), 1)]);
    while let Some((at, shown, depth)) = queue.pop_front() {
        let Ok(rd) = std::fs::read_dir(&at) else {
            continue;
        };
        let mut items: Vec<_> = rd.flatten().collect();
        items.sort_by_key(|e| e.file_name());
        for e in items {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if out.len() >= MAX_PEER_FILE_ENTRIES {
                truncated = true;
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let ft = meta.file_type();
            let kind = if ft.is_symlink() {
                "symlink"
            } else if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let path = format!("{shown}/{name}");
            if ft.is_dir() {
                if depth < MAX_PEER_FILE_DEPTH {
                    queue.push_back((e.path(), path.clone(), depth + 1));
                } else if std::fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some()) {
                    truncated = true;
                }
            }
            out.push(PeerFileEntry {
                path,
                kind: kind.into(),
                size: if ft.is_file() { meta.len() } else { 0 },
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    (out, truncated)
}

/// The question id of an answer not yet tied to its question.
fn unset() -> MessageId {
    MessageId::from_bytes([0; 16])
}

fn refusal(of: MessageId, error: Option<PeerFileRefusal>) -> PeerFileBody {
    PeerFileBody {
        of,
        error,
        size: 0,
        encoding: String::new(),
        content: String::new(),
        entries: Vec::new(),
        truncated: false,
    }
}

/// May `member` (with these groups' sessions) read share `e`?
fn share_allows(e: &ShareEntry, member: &MemberKey, groups: &[String]) -> bool {
    e.to.is_empty()
        || e.to.iter().any(|t| match t.strip_prefix('@') {
            Some(g) => groups
                .iter()
                .any(|have| claudemesh_schema::names::in_group(&have.to_lowercase(), g)),
            None => t.strip_prefix("member:") == Some(member.to_b64().as_str()),
        })
}

/// What this daemon answers `ask` from `member` (not blocked, checked for the grant).
fn serve(shares: &[ShareEntry], ask: &PeerFileAsk) -> PeerFileBody {
    let parsed = match parse_path(&ask.path) {
        Ok(p) => p,
        Err(r) => return refusal(unset(), Some(r)),
    };
    let Some((name, rest)) = parsed else {
        if ask.op == PeerFileOp::Read {
            return refusal(unset(), Some(PeerFileRefusal::WrongKind));
        }
        let mut b = refusal(unset(), None);
        b.entries = shares
            .iter()
            .map(|e| PeerFileEntry {
                path: e.name(),
                kind: "dir".into(),
                size: 0,
            })
            .collect();
        b.entries.sort_by(|a, b| a.path.cmp(&b.path));
        b.entries.dedup_by(|a, b| a.path == b.path);
        return b;
    };
    let Some(share) = shares.iter().find(|e| e.name() == name) else {
        return refusal(unset(), Some(PeerFileRefusal::NotShared));
    };
    let Ok(root) = std::fs::canonicalize(&share.path) else {
        return refusal(unset(), Some(PeerFileRefusal::NotShared));
    };
    let target = match resolve(&root, &rest) {
        Ok(t) => t,
        Err(r) => return refusal(unset(), Some(r)),
    };
    match ask.op {
        PeerFileOp::Read => read_file(&target),
        PeerFileOp::List => {
            if !target.is_dir() {
                return refusal(unset(), Some(PeerFileRefusal::WrongKind));
            }
            let shown = std::iter::once(name.as_str())
                .chain(rest.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("/");
            let (entries, truncated) = list_dir(&target, &shown);
            let mut b = refusal(unset(), None);
            b.entries = entries;
            b.truncated = truncated;
            b
        }
    }
}

/// A member's daemon asks about our shared folders: answer, boxed to that member, unless
/// the question is stale, the member is blocked or asks too often.
pub(crate) async fn answer(
    d: &Arc<Daemon>,
    x: &Arc<MeshCtx>,
    from: MemberKey,
    of: MessageId,
    sent_at: i64,
    ask: PeerFileAsk,
) {
    let now = now_ms();
    if now.saturating_sub(sent_at).unsigned_abs() > ASK_MAX_AGE_MS.unsigned_abs() {
        tracing::debug!(%of, "stale peer-file question ignored");
        return;
    }
    // Blocked: nothing at all, as for everything a blocked member sends.
    if lock(&x.grants).get(&from).is_some_and(|g| g.blocked) {
        tracing::debug!(%of, from = %from.short(), "peer-file question from a blocked member dropped");
        return;
    }
    {
        let mut answered = lock(&x.peer_file_answered);
        answered.retain(|_, (since, _)| now - *since < ANSWER_WINDOW_MS);
        let (_, n) = answered.entry(from).or_insert((now, 0));
        if *n >= ANSWERS_PER_WINDOW {
            tracing::debug!(%of, from = %from.short(), "peer-file questions too often; not answered");
            return;
        }
        *n += 1;
    }
    let mut body = if !x.allows(&from, "file-read") {
        refusal(of, Some(PeerFileRefusal::NoGrant))
    } else {
        let mesh = x.id;
        let groups: Vec<String> = match d
            .store
            .read(move |c| crate::store::q_presence(c, mesh))
            .await
        {
            Ok(rows) => rows
                .into_iter()
                .filter(|p| p.member == from)
                .flat_map(|p| p.profile.groups)
                .collect(),
            Err(_) => Vec::new(),
        };
        let file = file_of(d);
        let config = d.clone();
        tokio::task::spawn_blocking(move || {
            let shares: Vec<ShareEntry> = match load(&file) {
                Ok(f) => f
                    .share_dir
                    .into_iter()
                    .filter(|e| e.mesh == mesh && share_allows(e, &from, &groups))
                    .filter(|e| {
                        std::fs::canonicalize(&e.path).is_ok_and(|p| !holds_config(&config, &p))
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "shared folders not readable; answering none");
                    Vec::new()
                }
            };
            serve(&shares, &ask)
        })
        .await
        .unwrap_or_else(|_| refusal(of, Some(PeerFileRefusal::Unreadable)))
    };
    body.of = of;
    let mut json = serde_json::to_string(&body).unwrap_or_default();
    if json.len() > MAX_ANSWER_JSON {
        // Cannot happen with the bounds above; never send what the relay would refuse.
        let size = body.size;
        body = refusal(of, Some(PeerFileRefusal::TooLarge));
        body.size = size;
        json = serde_json::to_string(&body).unwrap_or_default();
    }
    tracing::debug!(%of, from = %from.short(), refused = ?body.error, "peer-file question answered");
    let Some((id, frame)) =
        boxed_to_member(x, x.keys.session, &from, message::KIND_PEER_FILE, json)
    else {
        return;
    };
    // Not through the outbox: an answer nobody waits for any more is worth nothing.
    let _ = x
        .link
        .tx
        .send(LinkCmd::Send(id, bytes::Bytes::from(frame), None))
        .await;
}

/// An answer came: to the question waiting for it, if it is from the member asked.
pub(crate) fn answered(x: &MeshCtx, from: MemberKey, body: PeerFileBody) {
    let mut asks = lock(&x.peer_file_asks);
    if asks.get(&body.of).is_some_and(|(asked, _)| *asked == from)
        && let Some((_, tx)) = asks.remove(&body.of)
    {
        let _ = tx.send(body);
    }
}

// ---- asking -------------------------------------------------------------------------

/// The error the asker sees for a refusal (worded here, from the code alone).
fn refused(r: PeerFileRefusal, peer: &str, path: &str, size: u64) -> Error {
    match r {
        PeerFileRefusal::NotShared => Error::not_found(format!(
            "{peer} has not shared a folder named {:?} with you (not shared); `claudemesh peer-file ls {peer}` lists what it shares",
            path.split('/').next().unwrap_or("")
        )),
        PeerFileRefusal::Outside => Error::forbidden(format!(
            "{path:?} is outside the shared folder: paths are relative to a shared folder, without `..`, and symlinks out of it are not followed"
        )),
        PeerFileRefusal::NoGrant => Error::forbidden(format!(
            "{peer}'s daemon refused: you have no file-read grant there (it can `claudemesh grant <you> file-read`)"
        )),
        PeerFileRefusal::TooLarge => Error::invalid(format!(
            "{path} is too large to read from a peer ({size} bytes, over {} KiB); ask {peer} to use `claudemesh file share`",
            MAX_PEER_FILE_BYTES / 1024
        )),
        PeerFileRefusal::NotFound => {
            Error::not_found(format!("no {path:?} in {peer}'s shared folder"))
        }
        PeerFileRefusal::WrongKind => Error::invalid(format!(
            "{path:?} in {peer}'s shared folder is not a regular file (to read) or a folder (to list)"
        )),
        PeerFileRefusal::Unreadable => {
            Error::internal(format!("{peer}'s daemon could not read {path:?}"))
        }
    }
}

/// Ask `p.peer`'s daemon; its answer (not refused), with the mesh and the member asked.
async fn ask(
    d: &Arc<Daemon>,
    p: &PeerFileParams,
    op: PeerFileOp,
) -> Result<(Arc<MeshCtx>, String, MemberKey, PeerFileBody), Error> {
    let x = d.select(p.mesh.as_deref())?;
    if p.path.len() > MAX_PEER_FILE_PATH {
        return Err(Error::invalid("the path is too long"));
    }
    let peer = crate::grants::resolve_member(d, &x, &p.peer).await?;
    let name = peer
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| peer.key.short_fingerprint());
    let mesh = x.id;
    let presence = d
        .store
        .read(move |c| crate::store::q_presence(c, mesh))
        .await?;
    if !presence.iter().any(|r| r.member == peer.key && r.online) {
        return Err(Error::relay(format!(
            "{name} is offline: its daemon is not connected, so nothing of its folders can be read now; try again when `claudemesh peers` shows it online"
        )));
    }
    if !x.link.connected() {
        return Err(Error::relay(
            "the relay link is down; `claudemesh status` says why",
        ));
    }
    let wait = p
        .wait_ms
        .map_or(WAIT, |ms| Duration::from_millis(ms.clamp(1, 30_000)));
    let q = serde_json::to_string(&PeerFileAsk {
        op,
        path: p.path.clone(),
    })
    .map_err(Error::internal)?;
    let (qid, frame) = boxed_to_member(
        &x,
        x.keys.session,
        &peer.key,
        message::KIND_PEER_FILE_ASK,
        q,
    )
    .ok_or_else(|| Error::internal("cannot seal the question"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    lock(&x.peer_file_asks).insert(qid, (peer.key, tx));
    // Forgotten however this ends (a caller gone mid-wait drops it here).
    let _forget = Forget {
        x: x.clone(),
        id: qid,
    };
    let _ = x
        .link
        .tx
        .send(LinkCmd::Send(qid, bytes::Bytes::from(frame), None))
        .await;
    let Ok(Ok(body)) = tokio::time::timeout(wait, rx).await else {
        return Err(Error::timeout(format!(
            "no answer from {name} within {} s (its daemon may be busy, blocking you, or just gone offline)",
            wait.as_secs_f32()
        )));
    };
    if let Some(r) = body.error {
        return Err(refused(r, &name, &p.path, body.size));
    }
    Ok((x, name, peer.key, body))
}

/// `peer_file_read`.
pub(crate) async fn read(d: &Arc<Daemon>, p: PeerFileParams) -> Result<PeerFileReadResult, Error> {
    let (x, peer, key, b) = ask(d, &p, PeerFileOp::Read).await?;
    let ok = match b.encoding.as_str() {
        "utf8" => b.content.len() as u64 == b.size,
        "base64" => {
            claudemesh_schema::encoding::unb64(&b.content).is_ok_and(|v| v.len() as u64 == b.size)
        }
        _ => false,
    };
    if !ok || b.size > MAX_PEER_FILE_BYTES {
        return Err(Error::internal(format!(
            "{peer}'s daemon sent an answer that does not add up; not shown"
        )));
    }
    Ok(PeerFileReadResult {
        mesh: x.id,
        peer,
        member: key.to_b64(),
        path: p.path,
        size: b.size,
        encoding: b.encoding,
        content: b.content,
    })
}

/// `peer_file_list`.
pub(crate) async fn list_peer(
    d: &Arc<Daemon>,
    p: PeerFileParams,
) -> Result<PeerFileListResult, Error> {
    let (x, peer, key, mut b) = ask(d, &p, PeerFileOp::List).await?;
    b.entries.truncate(MAX_PEER_FILE_ENTRIES);
    Ok(PeerFileListResult {
        mesh: x.id,
        peer,
        member: key.to_b64(),
        path: p.path,
        entries: b.entries,
        truncated: b.truncated,
    })
}

/// Removes a question from `peer_file_asks` when dropped.
struct Forget {
    x: Arc<MeshCtx>,
    id: MessageId,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.x.peer_file_asks).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &Path) -> ShareEntry {
        ShareEntry {
            path: path.canonicalize().unwrap().display().to_string(),
            mesh: MeshId::new(),
            to: Vec::new(),
        }
    }

    fn ask(op: PeerFileOp, path: &str) -> PeerFileAsk {
        PeerFileAsk {
            op,
            path: path.into(),
        }
    }

    #[test]
    fn reads_inside_and_refuses_every_way_out() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("proj");
        std::fs::create_dir_all(share.join("src")).unwrap();
        std::fs::write(share.join("src/a.txt"), "hello\u{200B}").unwrap();
        std::fs::write(share.join("bin.dat"), [0u8, 159, 146, 150]).unwrap();
        std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.txt"), share.join("out")).unwrap();
        std::os::unix::fs::symlink(root.path().join("nothing"), share.join("dangling")).unwrap();
        std::os::unix::fs::symlink(share.join("src/a.txt"), share.join("in")).unwrap();
        std::os::unix::fs::symlink(root.path(), share.join("up")).unwrap();
        let shares = vec![entry(&share)];
        let read = |p: &str| serve(&shares, &ask(PeerFileOp::Read, p));

        let b = read("proj/src/a.txt");
        assert_eq!((b.error, b.encoding.as_str()), (None, "utf8"));
        assert_eq!(b.content, "hello\u{200B}");
        let b = read("proj/bin.dat");
        assert_eq!(b.encoding, "base64");
        assert_eq!(
            claudemesh_schema::encoding::unb64(&b.content).unwrap(),
            [0u8, 159, 146, 150]
        );
        assert_eq!(read("proj/in").content, "hello\u{200B}");
        for out in [
            "proj/../secret.txt",
            "/etc/passwd",
            "proj/out",
            "proj/up/secret.txt",
            "proj/src/../../secret.txt",
            "proj/a\0b",
            "proj\\..\\secret.txt",
        ] {
            assert_eq!(read(out).error, Some(PeerFileRefusal::Outside), "{out}");
        }
        // A link out that resolves to nothing reads like one that does.
        assert_eq!(read("proj/dangling").error, Some(PeerFileRefusal::Outside));
        assert_eq!(read("proj/nope").error, Some(PeerFileRefusal::NotFound));
        assert_eq!(read("other/x").error, Some(PeerFileRefusal::NotShared));
        assert_eq!(read("proj/src").error, Some(PeerFileRefusal::WrongKind));
        assert_eq!(read("").error, Some(PeerFileRefusal::WrongKind));
    }

    #[test]
    fn too_large_files_are_refused_with_their_size() {
        let root = tempfile::tempdir().unwrap();
        let big = vec![b'x'; MAX_PEER_FILE_BYTES as usize + 1];
        std::fs::write(root.path().join("big"), &big).unwrap();
        let exact = vec![b'\n'; MAX_PEER_FILE_BYTES as usize];
        std::fs::write(root.path().join("exact"), &exact).unwrap();
        let shares = vec![entry(root.path())];
        let name = shares[0].name();
        let b = serve(&shares, &ask(PeerFileOp::Read, &format!("{name}/big")));
        assert_eq!(b.error, Some(PeerFileRefusal::TooLarge));
        assert_eq!(b.size, big.len() as u64);
        // Text that would grow past an envelope when escaped goes as base64, and fits.
        let b = serve(&shares, &ask(PeerFileOp::Read, &format!("{name}/exact")));
        assert_eq!((b.error, b.encoding.as_str()), (None, "base64"));
        assert!(serde_json::to_string(&b).unwrap().len() <= MAX_ANSWER_JSON);
    }

    #[test]
    fn listing_is_bounded_and_does_not_follow_links() {
        let root = tempfile::tempdir().unwrap();
        let share = root.path().join("s");
        let deep = share.join("a/b/c/d");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), "x").unwrap();
        std::fs::write(share.join("top.txt"), "12345").unwrap();
        std::os::unix::fs::symlink(root.path(), share.join("up")).unwrap();
        for i in 0..MAX_PEER_FILE_ENTRIES + 5 {
            std::fs::write(share.join(format!("a/many{i:04}")), "").unwrap();
        }
        let shares = vec![entry(&share)];
        let b = serve(&shares, &ask(PeerFileOp::List, "s"));
        assert!(b.truncated);
        assert_eq!(b.entries.len(), MAX_PEER_FILE_ENTRIES);
        let top = b.entries.iter().find(|e| e.path == "s/top.txt").unwrap();
        assert_eq!((top.kind.as_str(), top.size), ("file", 5));
        let up = b.entries.iter().find(|e| e.path == "s/up").unwrap();
        assert_eq!(up.kind, "symlink");
        assert!(!b.entries.iter().any(|e| e.path.starts_with("s/up/")));
        let b = serve(&shares, &ask(PeerFileOp::List, "s/a/b"));
        assert!(b.entries.iter().any(|e| e.path == "s/a/b/c/d/f"));
        let b = serve(&shares, &ask(PeerFileOp::List, ""));
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.entries[0].path, "s");
        assert_eq!(
            serve(&shares, &ask(PeerFileOp::List, "s/up")).error,
            Some(PeerFileRefusal::Outside)
        );
    }

    #[test]
    fn to_limits_by_member_and_group() {
        let k = MemberKey([7; 32]);
        let other = MemberKey([8; 32]);
        let mut e = entry(Path::new("/"));
        assert!(share_allows(&e, &k, &[]));
        e.to = vec![format!("member:{}", k.to_b64()), "@dev".into()];
        assert!(share_allows(&e, &k, &[]));
        assert!(!share_allows(&e, &other, &["ops".into()]));
        assert!(share_allows(&e, &other, &["dev/backend".into()]));
    }
}
