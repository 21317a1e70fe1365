//! IPC shapes of peer folders: folders this machine shares for members to read
//! (`share_dir`, `share_dir_list`, `share_dir_rm`), and reading or listing another
//! member's shared folder (`peer_file_read`, `peer_file_list`), end to end through the
//! relay (see `PROTOCOL.md`, "Peer folders").

use serde::{Deserialize, Serialize};

use crate::ids::MeshId;
use crate::message::PeerFileEntry;

/// `share_dir`: share a folder of this machine (read-only) with a mesh's members.
pub const SHARE_DIR: &str = "share_dir";
/// `share_dir_list`: the folders this machine shares.
pub const SHARE_DIR_LIST: &str = "share_dir_list";
/// `share_dir_rm`: stop sharing a folder.
pub const SHARE_DIR_RM: &str = "share_dir_rm";
/// `peer_file_read`: a file from a member's shared folder.
pub const PEER_FILE_READ: &str = "peer_file_read";
/// `peer_file_list`: names, kinds and sizes in a member's shared folder.
pub const PEER_FILE_LIST: &str = "peer_file_list";

/// `share_dir` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShareDirParams {
    /// Mesh name or id prefix; default: the only (or default) mesh.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The folder, absolute (the CLI resolves a relative one first).
    pub path: String,
    /// Who may read it: member selectors (name, fingerprint prefix) or `@group`; empty:
    /// every member holding the `file-read` grant.
    #[serde(default)]
    pub to: Vec<String>,
}

/// `share_dir_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShareDirListParams {
    /// Only this mesh (name or id prefix); default: every mesh.
    #[serde(default)]
    pub mesh: Option<String>,
}

/// `share_dir_rm` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShareDirRmParams {
    /// Only in this mesh (name or id prefix); default: every mesh it is shared in.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The folder, absolute.
    pub path: String,
}

/// One shared folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedDir {
    /// What peers call it: the first component of the paths they ask for.
    pub name: String,
    /// The folder on this machine.
    pub path: String,
    /// The mesh it is shared in.
    pub mesh: MeshId,
    /// That mesh's name here.
    pub mesh_name: String,
    /// Who may read it (`@group`, or a member as `name [key …]`); empty: every member
    /// holding `file-read`.
    pub to: Vec<String>,
    /// Always true: peers can read, never write.
    pub read_only: bool,
}

/// `share_dir`, `share_dir_list` and `share_dir_rm` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedDirsResult {
    /// The shared folders (after the change), by mesh then name.
    pub shares: Vec<SharedDir>,
    /// Where they are recorded.
    pub file: String,
}

/// `peer_file_read` / `peer_file_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PeerFileParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The member (name, fingerprint or session id prefix).
    pub peer: String,
    /// `<shared folder name>/<path inside>`; for a listing, empty lists the shared
    /// folders.
    #[serde(default)]
    pub path: String,
    /// How long to wait for the answer, ms (default 10000, at most 30000).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// `peer_file_read` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerFileReadResult {
    /// The mesh.
    pub mesh: MeshId,
    /// The member's name, as its presence shows it.
    pub peer: String,
    /// Its member key (base64url).
    pub member: String,
    /// The path read.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// `utf8` or `base64`.
    pub encoding: String,
    /// The text, or unpadded base64url of the bytes.
    pub content: String,
}

/// `peer_file_list` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerFileListResult {
    /// The mesh.
    pub mesh: MeshId,
    /// The member's name, as its presence shows it.
    pub peer: String,
    /// Its member key (base64url).
    pub member: String,
    /// The folder listed (empty: the shared folders).
    pub path: String,
    /// Entries, sorted by path.
    pub entries: Vec<PeerFileEntry>,
    /// Some were left out (count or depth bounds).
    pub truncated: bool,
}
