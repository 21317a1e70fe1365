//! IPC shapes of shared files (see [`crate::file`]): share, get, list, status, delete,
//! grant. Paths are absolute paths on the daemon's machine (the CLI resolves relative
//! ones against its working directory); contents never travel in these calls except a
//! small text file's content returned by `file_get` when no path is asked for.

use serde::{Deserialize, Serialize};

use crate::ids::{ItemId, MeshId, SessionId};

/// `file_share`.
pub const FILE_SHARE: &str = "file_share";
/// `file_get`.
pub const FILE_GET: &str = "file_get";
/// `file_list`.
pub const FILE_LIST: &str = "file_list";
/// `file_status`.
pub const FILE_STATUS: &str = "file_status";
/// `file_delete`.
pub const FILE_DELETE: &str = "file_delete";
/// `file_grant`.
pub const FILE_GRANT: &str = "file_grant";
/// `file_transfers`: transfers running now, with how far each got (for progress lines).
pub const FILE_TRANSFERS: &str = "file_transfers";

/// Largest content `file_get` returns inline (text only); larger or binary files are
/// saved and their path returned.
pub const MAX_INLINE: u64 = 64 * 1024;

/// `file_share` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileShareParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Sharing session (default: the daemon's own).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Absolute path of the file to share.
    pub path: String,
    /// Only for this peer or `@group` (default: the whole mesh).
    #[serde(default)]
    pub to: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Ephemeral: dropped after `ttl_secs` (default 24 h) instead of kept until deleted.
    #[serde(default)]
    pub ephemeral: bool,
    /// Lifetime of an ephemeral share, seconds.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The name shown (default: the file's own name).
    #[serde(default)]
    pub name: Option<String>,
}

/// `file_share` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileShareResult {
    /// The mesh.
    pub mesh: MeshId,
    /// The new file's id.
    pub file: ItemId,
    /// Its name.
    pub name: String,
    /// Size, bytes.
    pub size: u64,
    /// Chunks.
    pub chunks: u32,
    /// Who may read it (`*` for the whole mesh), as resolved.
    pub to: Vec<String>,
    /// Where readers fetch the chunks: `relay` (its blob store) or `peers` (this
    /// daemon serves them: the relay stores none).
    pub stored: String,
    /// The share's log sequence, once sequenced.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `file_get` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileGetParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// File id or id prefix.
    pub file: String,
    /// Absolute path to save it to (default: returned inline when it is small text,
    /// else saved under the daemon's `downloads/` directory).
    #[serde(default)]
    pub out: Option<String>,
    /// Replace an existing file at `out`.
    #[serde(default)]
    pub force: bool,
}

/// `file_get` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileGetResult {
    /// The file.
    pub file: ItemId,
    /// Its name.
    pub name: String,
    /// Size, bytes.
    pub size: u64,
    /// Media type.
    pub mime: String,
    /// Where it was saved (absent when returned inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The content, for a small text file asked for without a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Chunks fetched from the relay, from peers, and found here already.
    pub from_relay: u32,
    /// Chunks served by members' daemons.
    pub from_peers: u32,
    /// Chunks this daemon had.
    pub from_cache: u32,
    /// BLAKE3 of the content (hex), checked against the manifest.
    pub blake3: String,
}

/// `file_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileListParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Only files with all these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only files shared by this peer (name).
    #[serde(default)]
    pub author: Option<String>,
    /// `all` (default), `mine` (shared by this member) or `for_me` (readable here).
    #[serde(default)]
    pub scope: Option<String>,
}

/// One shared file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileInfo {
    /// Its id.
    pub id: ItemId,
    /// Its name, when this member may read it (else only that it exists).
    #[serde(default)]
    pub name: Option<String>,
    /// Size, bytes (when readable).
    #[serde(default)]
    pub size: Option<u64>,
    /// Media type (when readable).
    #[serde(default)]
    pub mime: Option<String>,
    /// Tags (when readable).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Who shared it, as shown.
    pub author: String,
    /// The author's member fingerprint.
    pub author_fingerprint: String,
    /// Who it is for, as the author addressed it (`""`: the whole mesh).
    pub to: String,
    /// Whether this member holds its key.
    pub readable: bool,
    /// Shared by this member.
    pub mine: bool,
    /// When, unix ms (the relay's sequencing time).
    pub created_at: i64,
    /// For an ephemeral share: gone after this, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Sealed bytes stored.
    pub stored: u64,
}

/// `file_list` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileListResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Newest first.
    pub files: Vec<FileInfo>,
}

/// `file_status` / `file_delete` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Acting session (default: the daemon's own).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// File id or id prefix.
    pub file: String,
}

/// Someone who fetched a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fetch {
    /// Who, as shown.
    pub who: String,
    /// Their member fingerprint.
    pub fingerprint: String,
    /// When, unix ms.
    pub at: i64,
}

/// `file_status` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatusResult {
    /// The file.
    pub file: FileInfo,
    /// Who may read it: members holding a box of its key (`*`: the whole mesh).
    pub readers: Vec<String>,
    /// Who fetched it (known to the member who shared it: their daemons send it a boxed
    /// receipt).
    pub fetched: Vec<Fetch>,
}

/// `file_delete` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDeleteResult {
    /// The file.
    pub file: ItemId,
    /// The delete's log sequence, once sequenced.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `file_grant` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileGrantParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Acting session (default: the daemon's own).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// File id or id prefix.
    pub file: String,
    /// The peer (a person's name, id prefix) or `@group` to give the key to.
    pub to: String,
}

/// `file_grant` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileGrantResult {
    /// The file.
    pub file: ItemId,
    /// Members given the key, as shown.
    pub granted: Vec<String>,
    /// The grant's log sequence, once sequenced.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// A transfer running now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileTransfer {
    /// The file (for an upload, the id it will have).
    pub file: ItemId,
    /// The local path read or written.
    pub path: String,
    /// `sealing` or `storing` (an upload), `fetching` (a download).
    pub phase: String,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// `file_transfers` result.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FileTransfersResult {
    /// Every transfer running on this daemon.
    pub transfers: Vec<FileTransfer>,
}
