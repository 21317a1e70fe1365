//! IPC shapes of shared MCP tools (see [`crate::tools`]): local MCP servers this daemon
//! hosts for its mesh (`mcp_host_*`), the mesh's catalog of servers and calls to their
//! tools (`tools_*`), and the host's audit log of calls it answered.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{MeshId, SessionId};
use crate::tools::ToolSpec;

/// `mcp_host_add`: declare a local stdio MCP server for this daemon to run and publish.
pub const MCP_HOST_ADD: &str = "mcp_host_add";
/// `mcp_host_list`: the servers this daemon hosts, with their state.
pub const MCP_HOST_LIST: &str = "mcp_host_list";
/// `mcp_host_remove`: stop hosting a server (it leaves the catalog).
pub const MCP_HOST_REMOVE: &str = "mcp_host_remove";
/// `mcp_host_logs`: the last lines a hosted server wrote to stderr.
pub const MCP_HOST_LOGS: &str = "mcp_host_logs";
/// `tools_list`: the mesh's catalog of shared servers and their tools.
pub const TOOLS_LIST: &str = "tools_list";
/// `tools_call`: call a tool of a shared server, wherever it is hosted.
pub const TOOLS_CALL: &str = "tools_call";
/// `tools_audit`: calls this daemon's hosted servers were asked to run.
pub const TOOLS_AUDIT: &str = "tools_audit";
/// `tools_watch`: [`NOTIFY_TOOLS_CHANGED`] notifications for as long as the connection
/// lives.
pub const TOOLS_WATCH: &str = "tools_watch";
/// Notification: a mesh's catalog changed (a server registered, replaced or removed).
pub const NOTIFY_TOOLS_CHANGED: &str = "tools_changed";

/// `mcp_host_add` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct McpHostAddParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Server name ([`crate::tools::check_server`]).
    pub name: String,
    /// The command and its arguments (run without a shell).
    pub command: Vec<String>,
    /// Working directory, absolute (default: the config directory's `mcp/<name>`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment, `KEY=VALUE` (on top of the daemon's own).
    #[serde(default)]
    pub env: Vec<String>,
    /// One-line description for the catalog.
    #[serde(default)]
    pub description: String,
    /// Only these tools are offered and may be called (empty: all the server lists).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Who may see and call it: `mesh` (default), `@group`, or member selectors
    /// separated by commas.
    #[serde(default)]
    pub scope: Option<String>,
    /// The session registering it: the server then ends with that session (an MCP
    /// client's `mesh_mcp_register`). `None`: kept until removed.
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Replace a server of the same name this daemon hosts.
    #[serde(default)]
    pub replace: bool,
}

/// A server this daemon hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostedServer {
    /// Mesh.
    pub mesh: MeshId,
    /// Mesh name.
    pub mesh_name: String,
    /// Server name.
    pub name: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Description.
    pub description: String,
    /// Allowlist (empty: all tools).
    pub allow: Vec<String>,
    /// Scope as written (`mesh`, `@group`, fingerprints).
    pub scope: String,
    /// Kept until removed (else it ends with `session`).
    pub persistent: bool,
    /// `starting`, `running`, `restarting` (after a crash, waiting out its backoff) or
    /// `failed` (could not start; retried with backoff).
    pub state: String,
    /// Process id while running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Times restarted after it exited.
    pub restarts: u32,
    /// Tools offered (after the allowlist).
    pub tools: usize,
    /// Why it last stopped or failed, if it did.
    #[serde(default)]
    pub last_error: String,
    /// Its registration is written to the mesh's log (sequenced when the link is up).
    pub published: bool,
}

/// `mcp_host_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct McpHostListParams {
    /// Mesh name or id prefix (default: every mesh).
    #[serde(default)]
    pub mesh: Option<String>,
}

/// `mcp_host_list` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McpHostListResult {
    /// Hosted servers, by mesh then name.
    pub servers: Vec<HostedServer>,
}

/// `mcp_host_remove` and `mcp_host_logs` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct McpHostNameParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Server name.
    pub name: String,
    /// `mcp_host_logs`: most lines (default 200).
    #[serde(default)]
    pub lines: Option<usize>,
}

/// `mcp_host_logs` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McpHostLogsResult {
    /// The server.
    pub name: String,
    /// Its last stderr lines (and the daemon's lines about starts and exits), oldest
    /// first.
    pub lines: Vec<String>,
}

/// `tools_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolsListParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The asking session (servers scoped to groups are listed for its groups).
    #[serde(default)]
    pub session: Option<SessionId>,
}

/// One tool in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogTool {
    /// As its server lists it.
    #[serde(flatten)]
    pub spec: ToolSpec,
    /// `<server>__<tool>`, the name MCP clients are offered (`None`: not offerable as its
    /// own tool; `mesh_tool_call` still reaches it).
    #[serde(default)]
    pub qualified: Option<String>,
}

/// One server in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CatalogServer {
    /// Server name.
    pub name: String,
    /// Description (peer text).
    pub description: String,
    /// The hosting member's name as its op claims it, with its key (`render::keyed`).
    pub host_name: String,
    /// The hosting member's fingerprint.
    pub host_fingerprint: String,
    /// The hosting daemon's session.
    pub host_session: SessionId,
    /// Hosted by this daemon.
    pub mine: bool,
    /// The hosting daemon is online now.
    pub online: bool,
    /// When it was last seen, unix ms, if offline.
    #[serde(default)]
    pub offline_since: Option<i64>,
    /// Kept while its host runs (else it ends with the session that registered it).
    pub persistent: bool,
    /// Scope as a label (`mesh`, `@group`, fingerprints).
    pub scope: String,
    /// When it was registered (or last replaced), unix ms.
    pub updated_at: i64,
    /// Its tools.
    pub tools: Vec<CatalogTool>,
}

/// `tools_list` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolsListResult {
    /// Mesh.
    pub mesh: MeshId,
    /// Servers, by name.
    pub servers: Vec<CatalogServer>,
}

/// `tools_call` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolsCallParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The calling session (default: the daemon's own).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// Server name.
    pub server: String,
    /// Tool name (its own, not `<server>__<tool>`).
    pub tool: String,
    /// Arguments (an object; default `{}`).
    #[serde(default)]
    pub arguments: Value,
    /// How long to wait, ms (default [`crate::tools::DEFAULT_DEADLINE_MS`]).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `tools_call` result: the server's `tools/call` result as it gave it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolsCallResult {
    /// The server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// The host's name (keyed).
    pub host_name: String,
    /// Round trip, ms.
    pub ms: u64,
    /// `content`, `isError`, `structuredContent` as the server gave them.
    pub result: Value,
}

/// `tools_audit` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolsAuditParams {
    /// Mesh name or id prefix (default: every mesh).
    #[serde(default)]
    pub mesh: Option<String>,
    /// Most entries, newest first (default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One call a hosted server was asked to run. Arguments and results are never kept:
/// only who asked for what, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Mesh.
    pub mesh: MeshId,
    /// The call's id.
    pub call: String,
    /// When it arrived, unix ms.
    pub at: i64,
    /// The caller's name (keyed) and fingerprint.
    pub caller: String,
    /// The caller's fingerprint.
    pub caller_fingerprint: String,
    /// Server.
    pub server: String,
    /// Tool.
    pub tool: String,
    /// `ok`, `tool_error` (the tool ran and said it failed), or the refusal's code.
    pub outcome: String,
    /// How long it ran, ms.
    pub ms: u64,
    /// Size of the arguments and of the result, bytes.
    pub arguments_bytes: u64,
    /// Size of the result, bytes.
    pub result_bytes: u64,
}

/// `tools_audit` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolsAuditResult {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
}

/// `tools_watch` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolsWatchParams {
    /// Only this mesh (name or id prefix).
    #[serde(default)]
    pub mesh: Option<String>,
}

/// [`NOTIFY_TOOLS_CHANGED`] parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ToolsChanged {
    /// The mesh whose catalog changed.
    pub mesh: MeshId,
}
