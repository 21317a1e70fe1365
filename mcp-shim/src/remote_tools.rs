//! Shared MCP tools in the shim: the upstream tools (`mesh_mcp_register`,
//! `mesh_mcp_list`, `mesh_tool_call`, `mesh_mcp_remove`), and every tool of the mesh's
//! shared servers offered as a first-class tool `<server>__<tool>` with its host's schema.
//! The list follows the catalog: the daemon's `tools_changed` becomes
//! `notifications/tools/list_changed`, so a session gains and loses tools without a
//! restart. What a host wrote (descriptions, results) reaches the model marked as the
//! host's text and escaped (see [`claudemesh_schema::render::remote_tool_description`]).

use claudemesh_schema::ipc::tools::{
    self as tl, HostedServer, McpHostAddParams, McpHostNameParams, ToolsCallParams,
    ToolsCallResult, ToolsListParams, ToolsListResult,
};
use claudemesh_schema::render;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Tool};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use crate::server::{Shim, tool_error};

/// Most shared tools offered as tools of their own.
const MAX_OFFERED: usize = 256;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterArgs {
    /// Server name: a-z, 0-9 and `-` (peers see its tools as `<server_name>__<tool>`).
    server_name: String,
    /// The command that starts the stdio MCP server, e.g. `uvx`.
    command: String,
    /// Its arguments, e.g. `["mcp-server-time"]`.
    #[serde(default)]
    args: Vec<String>,
    /// One-line description for the catalog.
    #[serde(default)]
    description: Option<String>,
    /// Keep it running after this session ends (default: it ends with this session).
    #[serde(default)]
    persistent: bool,
    /// Offer only these tools (default: all it lists).
    #[serde(default)]
    allow: Vec<String>,
    /// Who may call it: `mesh` (default), `@group`, or member names separated by commas.
    #[serde(default)]
    scope: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerArgs {
    /// Server name.
    server_name: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListArgs {
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallArgs {
    /// Server name, as mesh_mcp_list shows it.
    server_name: String,
    /// Tool name (the tool's own, not `<server>__<tool>`).
    tool_name: String,
    /// Its arguments, as its input schema describes them.
    #[serde(default)]
    args: Option<serde_json::Map<String, Value>>,
    /// Give up after this many ms (default 30000).
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

/// A shared tool's result as the model gets it: whose tool answered first, then its
/// content with text escaped; `isError` and `structuredContent` as the host gave them.
pub(crate) fn shown_result(r: &ToolsCallResult) -> CallToolResult {
    let mut content = vec![ContentBlock::text(render::remote_tool_result(
        &r.server,
        &r.tool,
        &r.host_name,
    ))];
    for part in r
        .result
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut part = part.clone();
        if let Some(Value::String(t)) = part.get_mut("text") {
            *t = render::remote_tool_text(t);
        }
        match serde_json::from_value::<ContentBlock>(part) {
            Ok(b) => content.push(b),
            Err(_) => content.push(ContentBlock::text(
                "(a content block this client cannot show was left out)",
            )),
        }
    }
    let mut out = if r.result.get("isError").and_then(Value::as_bool) == Some(true) {
        CallToolResult::error(content)
    } else {
        CallToolResult::success(content)
    };
    out.structured_content = r.result.get("structuredContent").cloned();
    out
}

impl Shim {
    /// The mesh's shared tools this session may call, as first-class MCP tools.
    pub(crate) async fn remote_tools(&self) -> Vec<Tool> {
        let Ok(s) = self.session().await else {
            return Vec::new();
        };
        let Ok(mut c) = self.client().await else {
            return Vec::new();
        };
        let Ok(r) = c
            .call::<ToolsListResult>(
                tl::TOOLS_LIST,
                ToolsListParams {
                    mesh: Some(s.mesh.to_string()),
                    session: Some(s.id),
                },
            )
            .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // Servers come sorted by name; past the cap (a member registering servers in a
        // loop must not fill the model's context), the rest stay reachable through
        // mesh_mcp_list and mesh_tool_call.
        for server in r.servers.iter().filter(|x| !x.mine) {
            if out.len() >= MAX_OFFERED {
                break;
            }
            for t in &server.tools {
                let Some(name) = &t.qualified else { continue };
                let Value::Object(schema) = t.spec.input_schema.clone() else {
                    continue;
                };
                out.push(Tool::new(
                    name.clone(),
                    render::remote_tool_description(
                        &server.name,
                        &server.host_name,
                        &t.spec.description,
                    ),
                    Arc::new(schema),
                ));
            }
        }
        out
    }

    /// Call `<server>__<tool>` for the model.
    pub(crate) async fn call_remote(
        &self,
        server: &str,
        tool: &str,
        arguments: Option<serde_json::Map<String, Value>>,
        timeout_ms: Option<u64>,
        mesh: Option<String>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let s = match self.session().await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return tool_error(e.to_string()),
        };
        let r = c
            .call::<ToolsCallResult>(
                tl::TOOLS_CALL,
                ToolsCallParams {
                    mesh: mesh.or_else(|| Some(s.mesh.to_string())),
                    session: Some(s.id),
                    server: server.to_string(),
                    tool: tool.to_string(),
                    arguments: arguments.map(Value::Object).unwrap_or(Value::Null),
                    timeout_ms,
                },
            )
            .await;
        match r {
            Ok(r) => Ok(shown_result(&r)),
            Err(e) => tool_error(e.to_string()),
        }
    }

    /// Follow the catalog: tell the client its tool list changed whenever the daemon
    /// says the mesh's catalog did (reconnecting across daemon restarts).
    pub(crate) async fn follow_catalog(&self, peer: rmcp::Peer<rmcp::RoleServer>) {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            if let Ok(s) = self.session().await
                && let Ok(mut c) = self.client().await
                && c.call::<Value>(
                    tl::TOOLS_WATCH,
                    tl::ToolsWatchParams {
                        mesh: Some(s.mesh.to_string()),
                    },
                )
                .await
                .is_ok()
            {
                delay = std::time::Duration::from_millis(100);
                while let Ok(n) = c.notification().await {
                    if n.method == tl::NOTIFY_TOOLS_CHANGED
                        && peer.notify_tool_list_changed().await.is_err()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

#[tool_router(router = remote_tools_router, vis = "pub(crate)")]
impl Shim {
    #[tool(
        description = "Share a local stdio MCP server with your claudemesh mesh: this machine's claudemesh daemon starts it (and restarts it if it crashes), publishes its tools, and runs peers' calls to them even while you are busy. Peers then see its tools as `<server_name>__<tool>` or call them with mesh_tool_call. It ends with this session unless persistent."
    )]
    async fn mesh_mcp_register(
        &self,
        Parameters(a): Parameters<RegisterArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let session = if a.persistent {
            None
        } else {
            match self.session().await {
                Ok(s) => Some(s.id),
                Err(e) => return tool_error(e),
            }
        };
        let mut command = vec![a.command];
        command.extend(a.args);
        self.call::<HostedServer>(
            tl::MCP_HOST_ADD,
            McpHostAddParams {
                mesh: a.mesh,
                name: a.server_name,
                command,
                cwd: None,
                env: Vec::new(),
                description: a.description.unwrap_or_default(),
                allow: a.allow,
                scope: a.scope,
                session,
                replace: true,
            },
        )
        .await
    }

    #[tool(
        description = "List the MCP servers shared in your claudemesh mesh: name, description, hosting peer, whether its host is online (offline: since when), scope, and each tool with its input schema."
    )]
    async fn mesh_mcp_list(
        &self,
        Parameters(a): Parameters<ListArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let session = self.session().await.ok();
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return tool_error(e.to_string()),
        };
        let r = c
            .call::<ToolsListResult>(
                tl::TOOLS_LIST,
                ToolsListParams {
                    mesh: a
                        .mesh
                        .or_else(|| session.as_ref().map(|s| s.mesh.to_string())),
                    session: session.map(|s| s.id),
                },
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => return tool_error(e.to_string()),
        };
        // Hosts' text is quoted and escaped: a description is a peer's, not the system's.
        let mut out = format!(
            "{} shared MCP servers. Descriptions are their hosts' text, quoted.\n",
            r.servers.len()
        );
        for s in &r.servers {
            let state = match (s.online, s.offline_since) {
                (true, _) => "online".to_string(),
                (false, Some(t)) => format!(
                    "host offline since {} s",
                    (claudemesh_schema::now_ms() - t).max(0) / 1000
                ),
                (false, None) => "host offline".into(),
            };
            out.push_str(&format!(
                "\n{} — hosted by {} ({state}, scope {}{})\n| {}\n",
                render::escape(&s.name),
                render::escape(&claudemesh_schema::names::one_line(&s.host_name, 160)),
                render::escape(&s.scope),
                if s.mine { ", on this machine" } else { "" },
                render::remote_tool_text(&claudemesh_schema::names::one_line(&s.description, 300)),
            ));
            for t in &s.tools {
                out.push_str(&format!(
                    "  - {}{}: | {}\n    input schema: {}\n",
                    render::escape(&t.spec.name),
                    t.qualified
                        .as_deref()
                        .map(|q| format!(" (tool {q})"))
                        .unwrap_or_default(),
                    render::remote_tool_text(&claudemesh_schema::names::one_line(
                        &t.spec.description,
                        400
                    )),
                    render::remote_tool_text(&t.spec.input_schema.to_string()),
                ));
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(out)]))
    }

    #[tool(
        description = "Call a tool of an MCP server shared in your claudemesh mesh (see mesh_mcp_list); it runs on its host's machine, end to end encrypted, and returns the tool's result. Errors say why: host offline, not allowed, timeout (30 s by default)."
    )]
    async fn mesh_tool_call(
        &self,
        Parameters(a): Parameters<CallArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.call_remote(&a.server_name, &a.tool_name, a.args, a.timeout_ms, a.mesh)
            .await
    }

    #[tool(
        description = "Stop sharing an MCP server this machine hosts for the mesh (its tools leave every peer's list)."
    )]
    async fn mesh_mcp_remove(
        &self,
        Parameters(a): Parameters<ServerArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return tool_error(e.to_string()),
        };
        match c
            .call::<Value>(
                tl::MCP_HOST_REMOVE,
                McpHostNameParams {
                    mesh: a.mesh,
                    name: a.server_name.clone(),
                    lines: None,
                },
            )
            .await
        {
            Ok(_) => Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                "{} is no longer shared",
                render::escape(&a.server_name)
            ))])),
            Err(e) => tool_error(e.to_string()),
        }
    }
}
