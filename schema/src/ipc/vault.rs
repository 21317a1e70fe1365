//! IPC shapes of the vault (see [`crate::vault`]): set, list and delete secrets this
//! machine keeps for a mesh. A value goes in with `vault_set` and never comes back out
//! over IPC: `vault_list` answers names and metadata only, and nothing here returns a
//! value (the daemon reads values for its own use only).

use serde::{Deserialize, Serialize};

use crate::ids::MeshId;
use crate::vault::Secret;

/// `vault_set`: store (or replace) one entry.
pub const VAULT_SET: &str = "vault_set";
/// `vault_list`: the entries' names and metadata, never values.
pub const VAULT_LIST: &str = "vault_list";
/// `vault_delete`: delete one entry.
pub const VAULT_DELETE: &str = "vault_delete";

/// `vault_set` parameters. `Debug` shows the value's length only.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VaultSetParams {
    /// Mesh name or id prefix; default: the only (or default) mesh.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The entry's name: 1 to 64 of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// The value (text, at most 64 KiB).
    pub value: Secret,
    /// One line saying what it is; `None` keeps the description an existing entry has.
    #[serde(default)]
    pub description: Option<String>,
}

/// `vault_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VaultListParams {
    /// Mesh name or id prefix; default: the only (or default) mesh.
    #[serde(default)]
    pub mesh: Option<String>,
}

/// `vault_delete` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VaultDeleteParams {
    /// Mesh name or id prefix; default: the only (or default) mesh.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The entry's name.
    pub name: String,
}

/// One entry as listed: everything but its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultEntryInfo {
    /// Its name.
    pub name: String,
    /// What it is (empty when none was given).
    pub description: String,
    /// The value's size, bytes.
    pub size: u64,
    /// When it was first stored, unix ms.
    pub created_at: i64,
    /// When its value or description last changed, unix ms.
    pub updated_at: i64,
}

/// `vault_set` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultSetResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Its name here.
    pub mesh_name: String,
    /// The entry as stored (no value).
    pub entry: VaultEntryInfo,
    /// True when it replaced an entry of that name.
    pub replaced: bool,
}

/// `vault_list` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultListResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Its name here.
    pub mesh_name: String,
    /// The entries, by name.
    pub entries: Vec<VaultEntryInfo>,
}

/// `vault_delete` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VaultDeleteResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Its name here.
    pub mesh_name: String,
    /// The deleted entry's name.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_params_debug_without_the_value() {
        let p = VaultSetParams {
            name: "API".into(),
            value: Secret::new("tok-abcdef".into()),
            ..Default::default()
        };
        let d = format!("{p:?}");
        assert!(!d.contains("tok-abcdef"), "{d}");
        assert!(d.contains("10 bytes"), "{d}");
    }
}
