//! The MCP server: tools, the session it opens on the daemon, and channel push.

use claudemesh_daemon::Paths;
use claudemesh_daemon::client::{Client, ClientError, connect_or_start};
use claudemesh_schema::SessionId;
use claudemesh_schema::ipc::Notification;
use claudemesh_schema::ipc::methods::{self as m, InboxMessage};
use claudemesh_schema::message::{PeerStatus, Priority};
use claudemesh_schema::{names, render};

use crate::claude;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, CustomNotification, Implementation, ServerCapabilities,
    ServerConfig, ServerNotification,
};
use rmcp::{ServerHandler, ServiceExt as _, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The shim could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShimError {
    /// The MCP transport failed.
    #[error("MCP transport failed: {0}")]
    Transport(String),
}

/// This session as opened on the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) mesh: claudemesh_schema::MeshId,
}

#[derive(Debug)]
struct Inner {
    paths: Paths,
    exe: PathBuf,
    /// The session, once opened (a failed open is retried on the next call).
    session: tokio::sync::Mutex<Option<Session>>,
    /// Whether the client takes channel pushes, and its name; known once `initialize` is
    /// done.
    client_info: tokio::sync::watch::Sender<Option<(bool, String)>>,
    key: String,
    /// Tool calls made, and how many failed: reported to the daemon (`mesh_stats`).
    tool_calls: std::sync::atomic::AtomicU64,
    tool_errors: std::sync::atomic::AtomicU64,
    /// Counts changed since the last report.
    counted: tokio::sync::Notify,
}

/// The MCP server state (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Shim {
    inner: Arc<Inner>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SendMessageArgs {
    /// Recipient: a peer's display name or id (or unique prefix), `@group`, or `*` for
    /// everyone in the mesh.
    to: String,
    /// The message text.
    message: String,
    /// `now` (interrupts a busy peer), `next` (default: when the peer is idle) or `low`
    /// (only when the peer checks).
    #[serde(default)]
    priority: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// An idempotency key you choose (1-128 characters): retrying with the same key sends
    /// nothing again and answers how far the first send got (`duplicate: true`).
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CheckMessagesArgs {
    /// Only look: leave the messages unread.
    #[serde(default)]
    peek: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    /// Give up after this many seconds (default 60, at most 600).
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MessageStatusArgs {
    /// The id `send_message` returned (or its last 8 characters).
    message_id: String,
    /// Wait until the message got at least this far: relayed, delivered, surfaced or read.
    #[serde(default)]
    wait_for: Option<String>,
    /// How long to wait, seconds (default 30, at most 600).
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SummaryArgs {
    /// One line on what you are working on.
    summary: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StatusArgs {
    /// `idle`, `working` or `dnd`.
    status: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct VisibleArgs {
    /// Show this session in peer lists and broadcasts.
    visible: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProfileArgs {
    /// New display name.
    #[serde(default)]
    name: Option<String>,
    /// New summary.
    #[serde(default)]
    summary: Option<String>,
    /// An emoji (or a short picture reference) shown beside your name.
    #[serde(default)]
    avatar: Option<String>,
    /// A short role label, e.g. "backend lead".
    #[serde(default)]
    title: Option<String>,
    /// One line about you.
    #[serde(default)]
    bio: Option<String>,
    /// What you can help with (replaces the list).
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GroupArgs {
    /// Group name (with or without the leading `@`); `team/sub` is a subgroup, and
    /// messages to `@team` reach it too.
    group: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JoinGroupArgs {
    /// Group name (with or without the leading `@`); `team/sub` is a subgroup, and
    /// messages to `@team` reach it too.
    group: String,
    /// Your role in it: `lead`, `member` or your own word (shown to the others).
    #[serde(default)]
    role: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MeshArgs {
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

fn ok_json(v: impl Serialize) -> Result<CallToolResult, rmcp::ErrorData> {
    let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
}

pub(crate) fn tool_error(msg: impl Into<String>) -> Result<CallToolResult, rmcp::ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(msg.into())]))
}

fn client_error(e: ClientError) -> Result<CallToolResult, rmcp::ErrorData> {
    tool_error(e.to_string())
}

/// The channel notification for one message (see [`claudemesh_schema::render`]): `meta`
/// has identifier keys and string values only (Claude Code drops anything else), and its
/// `message_id` is how the daemon finds the push again in the transcript.
pub(crate) fn channel_notification(msg: &InboxMessage) -> CustomNotification {
    let meta: serde_json::Map<String, serde_json::Value> = render::channel_meta(msg)
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    CustomNotification::new(
        "notifications/claude/channel",
        Some(serde_json::json!({ "content": render::channel_content(msg), "meta": meta })),
    )
}

/// The channel notification for a shared-state change (`kind: state_change`).
pub(crate) fn state_change_notification(
    ch: &claudemesh_schema::ipc::shared::StateChange,
) -> CustomNotification {
    let value = match &ch.value {
        serde_json::Value::Null => "(deleted)".to_string(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    // Keys, values and names come from peers: cleaned and escaped like message bodies,
    // so a value cannot close the `<channel>` tag or read as anything but a value.
    let one = |s: &str| render::escape(&names::one_line(s, 256)).replace('"', "&quot;");
    let content = format!(
        "[state] {} = {} (set by {})",
        one(&ch.key),
        render::escape(&names::one_line(&value, 1000)),
        one(&ch.by)
    );
    let meta = serde_json::json!({
        "from_id": ch.by_id.to_string(),
        "from_name": one(&ch.by),
        "mesh": one(&ch.mesh_name),
        "priority": "low",
        "kind": "state_change",
        "key": one(&ch.key),
        "seq": ch.seq.to_string(),
        "sent_at": ch.at.to_string(),
    });
    CustomNotification::new(
        "notifications/claude/channel",
        Some(serde_json::json!({ "content": content, "meta": meta })),
    )
}

impl Shim {
    fn new(paths: Paths, exe: PathBuf, key: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                paths,
                exe,
                session: tokio::sync::Mutex::new(None),
                client_info: tokio::sync::watch::channel(None).0,
                key,
                tool_calls: Default::default(),
                tool_errors: Default::default(),
                counted: Default::default(),
            }),
            tool_router: Self::tool_router()
                + Self::shared_router()
                + Self::file_router()
                // Peer folders.
                + Self::peer_files_router()
                + Self::remote_tools_router()
                // Hosted services.
                + Self::deploy_router()
                // The vault.
                + Self::vault_router(),
        }
    }

    pub(crate) async fn client(&self) -> Result<Client, ClientError> {
        connect_or_start(&self.inner.paths, &self.inner.exe).await
    }

    /// Open (once) this session on the daemon; retried after a failure.
    pub(crate) async fn session(&self) -> Result<Session, String> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let (_, client_name) = self
            .inner
            .client_info
            .subscribe()
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "shutting down".to_string())?
            .clone()
            .unwrap_or_default();
        let mut c = self.client().await.map_err(|e| e.to_string())?;
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        let groups = env("CLAUDEMESH_GROUPS")
            .unwrap_or_default()
            .split(',')
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        let cwd = env("CLAUDE_PROJECT_DIR").or_else(|| {
            std::env::current_dir()
                .ok()
                .map(|d| d.display().to_string())
        });
        let r: m::SessionOpenResult = c
            .call(
                m::SESSION_OPEN,
                m::SessionOpenParams {
                    client_key: self.inner.key.clone(),
                    mesh: env("CLAUDEMESH_MESH"),
                    name: env("CLAUDEMESH_DISPLAY_NAME"),
                    kind: Some(
                        if client_name == "claude-code" {
                            "claude"
                        } else {
                            "mcp"
                        }
                        .into(),
                    ),
                    groups,
                    summary: None,
                    cwd,
                    delivery: Vec::new(),
                    role: env("CLAUDEMESH_ROLE"),
                    client: Some(client_name).filter(|s| !s.is_empty()),
                    claude_session: claude::session_id(),
                    process: claude::process_key(),
                    transcript: claude::transcript().map(|t| t.display().to_string()),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let first = r
            .sessions
            .first()
            .ok_or("no mesh joined; run `claudemesh up`")?;
        let s = Session {
            id: first.session,
            mesh: first.mesh,
        };
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Tell the daemon this session's tool-call totals (totals, so a lost or repeated
    /// report changes nothing). Only once the session is open: opening it is a tool's job.
    pub(crate) async fn report_usage(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(s) = self.inner.session.lock().await.clone() else {
            return;
        };
        let params = m::SessionStatsParams {
            session: s.id,
            tool_calls: self.inner.tool_calls.load(Relaxed),
            tool_errors: self.inner.tool_errors.load(Relaxed),
        };
        if let Ok(mut c) = self.client().await {
            let _ = c.call::<serde_json::Value>(m::SESSION_STATS, params).await;
        }
    }

    /// Call the daemon and render its answer (or its error) as a tool result.
    pub(crate) async fn call<R: serde::de::DeserializeOwned + Serialize>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return client_error(e),
        };
        match c.call::<R>(method, params).await {
            Ok(r) => ok_json(r),
            Err(e) => client_error(e),
        }
    }

    async fn update(
        &self,
        f: impl FnOnce(&mut m::SessionUpdateParams),
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let s = match self.session().await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let mut p = m::SessionUpdateParams {
            session: s.id,
            name: None,
            summary: None,
            status: None,
            source: m::StatusSource::Manual,
            delivery: Vec::new(),
            visible: None,
            join_groups: Vec::new(),
            leave_groups: Vec::new(),
            group_role: None,
            avatar: None,
            title: None,
            bio: None,
            capabilities: None,
        };
        f(&mut p);
        self.call::<m::SessionProfile>(m::SESSION_UPDATE, p).await
    }

    async fn inbox(
        &self,
        wait_ms: Option<u64>,
        peek: bool,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let s = match self.session().await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return client_error(e),
        };
        // Read only once this process has them: a daemon killed before its answer
        // reached us leaves them unread (they come again), never read and lost.
        let r: m::InboxResult = match c
            .call(
                m::INBOX,
                m::InboxParams {
                    session: Some(s.id),
                    wait_ms,
                    peek,
                    confirm: !peek,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return client_error(e),
        };
        if !peek && !r.messages.is_empty() {
            let ids = r.messages.iter().map(|x| x.id).collect();
            let marked = c
                .call::<serde_json::Value>(
                    m::MARK_READ,
                    m::MarkReadParams {
                        session: s.id,
                        ids,
                        surfaced: true,
                    },
                )
                .await;
            if let Err(e) = marked {
                // They are in this answer; unconfirmed, they come again next time.
                tracing::warn!(error = %e, "cannot mark messages read");
            }
        }
        ok_json(r)
    }
}

#[tool_router(router = tool_router)]
impl Shim {
    #[tool(
        description = "Send a message to another session in your claudemesh mesh: a peer (display name or id from list_peers), a group (@name) or everyone (*). Priority `now` interrupts a busy peer, `next` (default) arrives when it is idle, `low` waits until it checks. Returns the message id and how far it got (queued, relayed)."
    )]
    async fn send_message(
        &self,
        Parameters(a): Parameters<SendMessageArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let priority = match a.priority.as_deref().map(str::parse::<Priority>) {
            None => Priority::Next,
            Some(Ok(p)) => p,
            Some(Err(e)) => return tool_error(e),
        };
        let s = match self.session().await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let p = m::SendParams {
            to: a.to,
            body: a.message,
            priority,
            mesh: a.mesh,
            session: Some(s.id),
            wait_ms: None,
            id: a.id,
        };
        self.call::<m::SendResult>(m::SEND, p).await
    }

    #[tool(
        description = "List the sessions in your mesh(es): name, id, status (idle/working/dnd/offline), what they work on, host, groups. Works offline from the local cache."
    )]
    async fn list_peers(
        &self,
        Parameters(a): Parameters<MeshArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let own = self.session().await.ok().map(|s| s.id);
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => return client_error(e),
        };
        match c
            .call::<m::PeersResult>(m::PEERS, m::MeshParams { mesh: a.mesh })
            .await
        {
            Ok(mut r) => {
                for mesh in &mut r.meshes {
                    mesh.peers.retain(|p| Some(p.id) != own);
                }
                ok_json(r)
            }
            Err(e) => client_error(e),
        }
    }

    #[tool(
        description = "Read messages sent to this session that you have not read yet (oldest first). They are marked read unless `peek` is true."
    )]
    async fn check_messages(
        &self,
        Parameters(a): Parameters<CheckMessagesArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.inbox(None, a.peek).await
    }

    #[tool(
        description = "Wait until a message arrives for this session (or the timeout passes), then return unread messages and mark them read. For clients that cannot receive pushed messages."
    )]
    async fn wait_for_message(
        &self,
        Parameters(a): Parameters<WaitArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let secs = a.timeout_seconds.unwrap_or(60).min(600);
        self.inbox(Some(secs * 1000), false).await
    }

    #[tool(
        description = "How far a message you sent got, with times: queued (on this machine), relayed (stored at the relay), delivered (on the recipient's machine), surfaced (shown to the recipient session) or read (the recipient session read it). Can wait for a stage."
    )]
    async fn message_status(
        &self,
        Parameters(a): Parameters<MessageStatusArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let wait_for = match a.wait_for.as_deref() {
            None => None,
            Some(s) => {
                match serde_json::from_value::<m::Stage>(serde_json::Value::String(s.to_string())) {
                    Ok(st) => Some(st),
                    Err(_) => {
                        return tool_error(format!(
                            "unknown stage {s:?} (use relayed, delivered, surfaced or read)"
                        ));
                    }
                }
            }
        };
        let wait_ms = wait_for.map(|_| a.timeout_seconds.unwrap_or(30).min(600) * 1000);
        let p = m::MessageStatusParams {
            id: a.message_id,
            wait_for,
            wait_ms,
        };
        self.call::<m::MessageStatusResult>(m::MESSAGE_STATUS, p)
            .await
    }

    #[tool(description = "Tell your peers what you are working on (one line).")]
    async fn set_summary(
        &self,
        Parameters(a): Parameters<SummaryArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.update(|p| p.summary = Some(a.summary)).await
    }

    #[tool(
        description = "Set your status: idle, working or dnd (do not disturb: only `now` messages reach you)."
    )]
    async fn set_status(
        &self,
        Parameters(a): Parameters<StatusArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        match a.status.parse::<PeerStatus>() {
            Ok(st) => self.update(|p| p.status = Some(st)).await,
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Show or hide this session in peer lists and broadcasts (direct messages still arrive)."
    )]
    async fn set_visible(
        &self,
        Parameters(a): Parameters<VisibleArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.update(|p| p.visible = Some(a.visible)).await
    }

    #[tool(
        description = "Change this session's profile as peers see it: display name, summary, avatar, title, bio, capabilities (only the fields given change)."
    )]
    async fn set_profile(
        &self,
        Parameters(a): Parameters<ProfileArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.update(|p| {
            p.name = a.name;
            p.summary = a.summary;
            p.avatar = a.avatar;
            p.title = a.title;
            p.bio = a.bio;
            p.capabilities = a.capabilities;
        })
        .await
    }

    #[tool(
        description = "Join a group, so messages to @group reach you (and to any group above it: @team reaches @team/sub), optionally with a role (lead, member or your own word)."
    )]
    async fn join_group(
        &self,
        Parameters(a): Parameters<JoinGroupArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.update(|p| {
            p.join_groups = vec![a.group];
            p.group_role = a.role;
        })
        .await
    }

    #[tool(description = "Leave a group.")]
    async fn leave_group(
        &self,
        Parameters(a): Parameters<GroupArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.update(|p| p.leave_groups = vec![a.group]).await
    }

    #[tool(
        description = "Overview of your mesh(es): relay and link, you (name, key fingerprint, role, groups), every member with role and whether online, groups and who is in them (with roles), shared-state keys and counts (memories, tasks, reservations, contexts, skills, reminders), unread and queued messages."
    )]
    async fn mesh_info(
        &self,
        Parameters(a): Parameters<MeshArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.call::<m::MeshInfoResult>(m::MESH_INFO, m::MeshParams { mesh: a.mesh })
            .await
    }

    #[tool(
        description = "Test the whole message path: the round trip to the relay, then one sealed probe per priority (now, next, low) sent through the relay and back, with its round trip and whether a message of that priority would be pushed to you right now (and why not). Diagnoses push delivery."
    )]
    async fn ping_mesh(
        &self,
        Parameters(a): Parameters<MeshArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let session = self.session().await.ok().map(|s| s.id);
        self.call::<m::PingResult>(
            m::PING,
            m::PingParams {
                mesh: a.mesh,
                session,
            },
        )
        .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Shim {
    /// Every tool call, counted (and its failure) for `mesh_stats`.
    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        use std::sync::atomic::Ordering::Relaxed;
        self.inner.tool_calls.fetch_add(1, Relaxed);
        // A tool of a shared server (`<server>__<tool>`): called where it is hosted.
        let remote = (!self.tool_router.has_route(&request.name))
            .then(|| claudemesh_schema::tools::split_qualified(&request.name))
            .flatten()
            .map(|(s, t)| (s.to_string(), t.to_string()));
        let r = match remote {
            Some((server, tool)) => self
                .call_remote(&server, &tool, request.arguments, None, None)
                .await
                .map(rmcp::model::CallToolResponse::Complete),
            None => {
                let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
                self.tool_router.call(tcc).await
            }
        };
        let failed = match &r {
            Ok(rmcp::model::CallToolResponse::Complete(c)) => c.is_error == Some(true),
            Ok(_) => false,
            Err(_) => true,
        };
        if failed {
            self.inner.tool_errors.fetch_add(1, Relaxed);
        }
        self.inner.counted.notify_one();
        r
    }

    /// Our tools, then every shared server's tools this session may call.
    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let mut tools = self.tool_router.list_all();
        if !claude::is_health_check() {
            let ours: std::collections::HashSet<String> =
                tools.iter().map(|t| t.name.to_string()).collect();
            tools.extend(
                self.remote_tools()
                    .await
                    .into_iter()
                    .filter(|t| !ours.contains(t.name.as_ref())),
            );
        }
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    fn get_info(&self) -> ServerConfig {
        let mut caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .build();
        let mut exp = std::collections::BTreeMap::new();
        exp.insert("claude/channel".to_string(), serde_json::Map::new());
        caps.experimental = Some(exp);
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("claudemesh", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "claudemesh connects you with other coding sessions. Use list_peers to see who is there, \
                 send_message to talk to them, and check_messages (or wait_for_message) to read what they sent. \
                 The mesh also shares state: set_state/get_state, remember/recall, tasks (create_task, claim_task), \
                 file reservations (reserve_files before editing shared files), contexts, skills and reminders.",
            )
    }

    async fn list_prompts(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, rmcp::ErrorData> {
        Ok(rmcp::model::ListPromptsResult::with_all_items(
            self.skill_prompts().await,
        ))
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, rmcp::ErrorData> {
        match self.skill_prompt(&request.name).await {
            Some(p) => Ok(p.into()),
            None => Err(rmcp::ErrorData::invalid_params(
                format!("no skill named {:?} in this mesh", request.name),
                None,
            )),
        }
    }
}

/// How long after `initialize` the first push waits: Claude Code registers its channel
/// handler only after `tools/list`, and drops a notification that comes sooner.
const FIRST_PUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(1000);

/// Serve MCP on stdin/stdout until the client goes away (its stdin closes, or it sends
/// SIGINT/SIGTERM as Claude Code does at exit); then close the session, so it goes
/// offline at once.
pub async fn run(paths: Paths, exe: PathBuf) -> Result<(), ShimError> {
    let shim = Shim::new(paths, exe, claude::client_key());
    let running = shim
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| ShimError::Transport(e.to_string()))?;
    let peer = running.peer().clone();
    let declares = peer
        .peer_info()
        .and_then(|i| {
            i.capabilities
                .experimental
                .as_ref()
                .map(|e| e.contains_key("claude/channel"))
        })
        .unwrap_or(false);
    let client_name = peer
        .peer_info()
        .map(|i| i.client_info.name.clone())
        .unwrap_or_default();
    let channels = claude::channels_possible(&client_name, declares) && !claude::messages_held();
    shim.inner
        .client_info
        .send_replace(Some((channels, client_name)));
    // A health check (`claude mcp list`) lists the tools and exits: it is not a session.
    let health_check = claude::is_health_check();
    // Hold the session for as long as this process lives, pushing its messages as channel
    // notifications when the client may take them; keep going across daemon restarts.
    let pusher = {
        let shim = shim.clone();
        tokio::spawn(async move {
            if health_check {
                return;
            }
            if channels {
                tokio::time::sleep(FIRST_PUSH_AFTER).await;
            }
            let mut delay = std::time::Duration::from_millis(100);
            // Ids pushed lately, across daemon restarts: a message the daemon pushed and
            // then (killed before its commit) received again reaches the model once.
            let mut pushed = claudemesh_schema::dedupe::Recent::default();
            loop {
                if let Ok(s) = shim.session().await
                    && let Ok(mut c) = shim.client().await
                    && c.call::<serde_json::Value>(
                        m::SUBSCRIBE,
                        m::SubscribeParams {
                            session: s.id,
                            push: channels,
                        },
                    )
                    .await
                    .is_ok()
                    && (!channels
                        || c.call::<serde_json::Value>(
                            claudemesh_schema::ipc::shared::STATE_WATCH,
                            claudemesh_schema::ipc::shared::WatchParams {
                                mesh: Some(s.mesh.to_string()),
                                prefix: None,
                            },
                        )
                        .await
                        .is_ok())
                {
                    delay = std::time::Duration::from_millis(100);
                    while let Ok(n) = c.notification().await {
                        let Notification { method, params, .. } = n;
                        if method == m::NOTIFY_SESSION_CLOSED {
                            // Closed under us (a daemon restart, a lease sweep): reopen,
                            // which resolves to the same session, and subscribe again.
                            *shim.inner.session.lock().await = None;
                            break;
                        }
                        if method == claudemesh_schema::ipc::shared::NOTIFY_STATE_CHANGE {
                            let Ok(ch) = serde_json::from_value::<
                                claudemesh_schema::ipc::shared::StateChange,
                            >(params) else {
                                continue;
                            };
                            // Own writes are not news to this session.
                            if ch.by_id == s.id {
                                continue;
                            }
                            let note = ServerNotification::CustomNotification(
                                state_change_notification(&ch),
                            );
                            if peer.send_notification(note).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        if method != m::NOTIFY_MESSAGE {
                            continue;
                        }
                        let Ok(msg) = serde_json::from_value::<InboxMessage>(params) else {
                            continue;
                        };
                        if !pushed.insert(msg.id) {
                            continue;
                        }
                        let note =
                            ServerNotification::CustomNotification(channel_notification(&msg));
                        if peer.send_notification(note).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        })
    };
    // The catalog of shared servers: its changes become `tools/list_changed`.
    let catalog = {
        let (shim, peer) = (shim.clone(), running.peer().clone());
        tokio::spawn(async move {
            if !health_check {
                shim.follow_catalog(peer).await;
            }
        })
    };
    // Counts go to the daemon one report at a time: calls made during a report are in
    // the next one (a `Notify` keeps one permit, so none is missed and none piles up).
    let reporter = {
        let shim = shim.clone();
        tokio::spawn(async move {
            loop {
                shim.inner.counted.notified().await;
                shim.report_usage().await;
            }
        })
    };
    tokio::select! {
        _ = running.waiting() => {}
        _ = stop_signal() => {}
    }
    pusher.abort();
    reporter.abort();
    catalog.abort();
    let opened = shim.inner.session.lock().await.clone();
    if let Some(s) = opened
        && let Ok(mut c) = shim.client().await
    {
        let _ = c
            .call::<serde_json::Value>(m::SESSION_CLOSE, m::SessionCloseParams { session: s.id })
            .await;
    }
    Ok(())
}

/// SIGINT or SIGTERM (Claude Code stops its MCP servers with SIGINT).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_schema::{MeshId, MessageId};

    #[test]
    fn channel_meta_has_identifier_keys_and_string_values() {
        let msg = InboxMessage {
            id: MessageId::new(),
            session: SessionId::new(),
            mesh: MeshId::new(),
            mesh_name: "team".into(),
            from_id: SessionId::new(),
            from_member: "k".into(),
            from_name: "alice".into(),
            to: "bob".into(),
            priority: Priority::Now,
            sent_at: 5,
            received_at: 6,
            body: "deploy is green".into(),
            verified: true,
            surfaced_at: None,
            kind: "text".into(),
            from_label: String::new(),
            for_member: false,
        };
        let n = channel_notification(&msg);
        assert_eq!(n.method, "notifications/claude/channel");
        let p = n.params.unwrap();
        assert_eq!(
            p["content"],
            "[now] alice [key unknown, verified]:\n| deploy is green"
        );
        for (k, v) in p["meta"].as_object().unwrap() {
            assert!(k.chars().next().unwrap().is_ascii_alphabetic() || k.starts_with('_'));
            assert!(
                k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{k}"
            );
            assert!(v.is_string(), "{k} is not a string");
        }
    }
}
