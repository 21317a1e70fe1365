//! IPC shapes of trust between members: safety numbers (`verify`) and per-peer grants
//! (`grant`, `revoke`, `block`, `grants`).

use serde::{Deserialize, Serialize};

use crate::ids::MeshId;

/// `verify`.
pub const VERIFY: &str = "verify";

/// `verify` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct VerifyParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Only this peer (name, id prefix or member fingerprint prefix).
    #[serde(default)]
    pub peer: Option<String>,
    /// Record that the user compared the safety number with this peer (one member):
    /// its messages are then shown as verified.
    #[serde(default)]
    pub confirm: bool,
}

/// One member's safety number with us.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SafetyNumber {
    /// The member key (base64url).
    pub member: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Names its sessions go by.
    pub names: Vec<String>,
    /// 12 groups of 5 digits, equal on both sides.
    pub safety_number: String,
    /// The user confirmed it (`verify <peer> --confirm`).
    #[serde(default)]
    pub confirmed: bool,
}

/// `verify` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Our fingerprint in it.
    pub fingerprint: String,
    /// Other members.
    pub members: Vec<SafetyNumber>,
}

/// `grant`: give a peer capabilities back.
pub const GRANT: &str = "grant";
/// `revoke`: take capabilities from a peer.
pub const REVOKE: &str = "revoke";
/// `block`: drop everything a peer sends, silently (or undo that).
pub const BLOCK: &str = "block";
/// `grants`: peers whose capabilities differ from the default.
pub const GRANTS: &str = "grants";

/// The capabilities, all granted by default.
pub const CAPABILITIES: &[&str] = &[
    "dm",
    "broadcast",
    "state-read",
    "state-write",
    "file-read",
    "tools",
];
/// Capabilities this version enforces at this daemon: `dm` and `broadcast` on arriving
/// messages, `state-write` on what its sessions read of shared state, `file-read` on
/// every read or listing of a folder this daemon shares (`share-dir`), `tools` on every
/// call to an MCP server this daemon hosts (`mcp-host`). `state-read` is
/// recorded and shown but not enforceable while shared state is sealed with the mesh key
/// every member holds.
pub const ENFORCED: &[&str] = &["dm", "broadcast", "state-write", "file-read", "tools"];

/// `grant` / `revoke` / `block` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The peer (name, id or fingerprint prefix).
    pub peer: String,
    /// Capabilities to grant or revoke (`all` for every one).
    #[serde(default)]
    pub caps: Vec<String>,
    /// For `block`: lift the block instead.
    #[serde(default)]
    pub undo: bool,
}

/// One peer's grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerGrants {
    /// The member key (base64url).
    pub member: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Names its sessions go by.
    pub names: Vec<String>,
    /// Capabilities granted.
    pub caps: Vec<String>,
    /// Everything it sends is dropped.
    pub blocked: bool,
}

/// `grants` result (and the answer to `grant`, `revoke`, `block`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantsResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Peers with non-default grants.
    pub peers: Vec<PeerGrants>,
}
