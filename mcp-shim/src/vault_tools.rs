//! MCP tools for the vault (upstream names): `vault_set`, `vault_list`, `vault_delete`,
//! each one call to the daemon's `vault_*` methods (see
//! `claudemesh_schema::ipc::vault`). A value goes in and never comes back: no tool
//! returns one, and the arguments holding it `Debug` without it.

use claudemesh_schema::ipc::vault::{
    VAULT_DELETE, VAULT_LIST, VAULT_SET, VaultDeleteParams, VaultDeleteResult, VaultListParams,
    VaultListResult, VaultSetParams, VaultSetResult,
};
use claudemesh_schema::vault::Secret;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::server::Shim;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VaultSetArgs {
    /// The secret's name: 1 to 64 letters, digits, `_`, `.` or `-` (like GITHUB_TOKEN).
    name: String,
    /// The secret itself (UTF-8 text, at most 64 KiB).
    #[schemars(with = "String")]
    value: Secret,
    /// One line saying what it is; omit it to keep the one an entry of that name has.
    #[serde(default)]
    description: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

impl std::fmt::Debug for VaultSetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSetArgs")
            .field("name", &self.name)
            .field("value", &self.value)
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VaultListArgs {
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VaultDeleteArgs {
    /// The secret's name, as vault_list shows it.
    name: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[tool_router(router = vault_router, vis = "pub(crate)")]
impl Shim {
    #[tool(
        description = "Store a secret (an API token, a password) in this machine's vault for the mesh, or replace the one of that name. It is sealed on this machine and never sent to the relay or to peers; no tool shows it again (vault_list gives names and sizes only)."
    )]
    async fn vault_set(
        &self,
        Parameters(a): Parameters<VaultSetArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        self.call::<VaultSetResult>(
            VAULT_SET,
            VaultSetParams {
                mesh,
                name: a.name,
                value: a.value,
                description: a.description,
            },
        )
        .await
    }

    #[tool(
        description = "The secrets in this machine's vault for the mesh: name, description, size in bytes, when stored and last changed. Never the values."
    )]
    async fn vault_list(
        &self,
        Parameters(a): Parameters<VaultListArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        self.call::<VaultListResult>(VAULT_LIST, VaultListParams { mesh })
            .await
    }

    #[tool(description = "Delete a secret from this machine's vault for the mesh.")]
    async fn vault_delete(
        &self,
        Parameters(a): Parameters<VaultDeleteArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        self.call::<VaultDeleteResult>(VAULT_DELETE, VaultDeleteParams { mesh, name: a.name })
            .await
    }
}
