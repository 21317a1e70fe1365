//! MCP tools for peer folders (upstream names): read a file from, or list, a folder
//! another member's daemon shares (`claudemesh share-dir`), end to end through the relay.
//! What the peer sent reaches the model quoted, like message bodies (see
//! [`claudemesh_schema::render::peer_file`]), never as text of its own.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::peer_files::{
    self as pf, PeerFileListResult, PeerFileParams, PeerFileReadResult,
};
use claudemesh_schema::render;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::server::{Shim, tool_error};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadPeerFileArgs {
    /// The peer: a name from list_peers, or a fingerprint prefix.
    peer: String,
    /// `<shared folder>/<path inside>`, as list_peer_files shows it.
    path: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListPeerFilesArgs {
    /// The peer: a name from list_peers, or a fingerprint prefix.
    peer: String,
    /// A folder to list, `<shared folder>/<path inside>`; none: the folders it shares.
    #[serde(default)]
    path: Option<String>,
    /// The same as `path` (upstream's name for it).
    #[serde(default)]
    dir: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

fn text(s: String) -> Result<CallToolResult, rmcp::ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(s)]))
}

fn member(b64: &str) -> MemberKey {
    MemberKey::from_b64(b64).unwrap_or(MemberKey([0; 32]))
}

#[tool_router(router = peer_files_router, vis = "pub(crate)")]
impl Shim {
    #[tool(
        description = "Read a file from a folder another peer shares with you (`claudemesh share-dir` on its machine; read-only, at most 96 KiB). Its daemon answers, end to end encrypted, even while that peer's session is busy. Errors say why: not shared, outside the shared folder, no file-read grant, too large, peer offline, no answer in time."
    )]
    async fn read_peer_file(
        &self,
        Parameters(a): Parameters<ReadPeerFileArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return tool_error(e.to_string()),
        };
        let p = PeerFileParams {
            mesh,
            peer: a.peer,
            path: a.path,
            wait_ms: None,
        };
        match c.call::<PeerFileReadResult>(pf::PEER_FILE_READ, p).await {
            Ok(r) => text(render::peer_file(
                &r.peer,
                &member(&r.member),
                &r.path,
                r.size,
                &r.content,
                r.encoding == "base64",
            )),
            Err(e) => tool_error(e.to_string()),
        }
    }

    #[tool(
        description = "List what another peer shares with you: with no path, its shared folders; with `path` (a folder as shown), the names, kinds and sizes in it (a few levels deep, bounded; no contents)."
    )]
    async fn list_peer_files(
        &self,
        Parameters(a): Parameters<ListPeerFilesArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let path = match (a.path, a.dir) {
            (Some(p), Some(d)) if p != d => {
                return tool_error("give the folder as `path` or `dir`, not two different ones");
            }
            (p, d) => p.or(d).unwrap_or_default(),
        };
        let mesh = self.mesh_of(a.mesh).await;
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return tool_error(e.to_string()),
        };
        let p = PeerFileParams {
            mesh,
            peer: a.peer,
            path,
            wait_ms: None,
        };
        match c.call::<PeerFileListResult>(pf::PEER_FILE_LIST, p).await {
            Ok(r) => text(render::peer_listing(
                &r.peer,
                &member(&r.member),
                &r.path,
                &r.entries,
                r.truncated,
            )),
            Err(e) => tool_error(e.to_string()),
        }
    }
}
