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
