//! The local protocol between the daemon and its clients (the `claudemesh` CLI, the MCP
//! shim, hooks): newline-delimited JSON-RPC 2.0 over a Unix socket (a named pipe on
//! Windows), one JSON object per line, lines at most [`MAX_LINE`] bytes.
//!
//! A client sends [`Request`]s; the daemon answers each with a [`Response`] carrying the
//! same `id`, and may push [`Notification`]s at any time. Method names and their parameter
//! and result types are listed in [`methods`]. Results are the JSON the CLI prints with
//! `--json` (plus `schema_version`), so they are a stable, versioned surface.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ClaimId, InviteId, MeshId, MessageId, SessionId};
use crate::message::{PeerStatus, Priority};
use crate::roster::Role;

pub mod claude;
// Hosted services (issue 16, tier 2).
pub mod deploy;
pub mod files;
pub mod page;
// Peer folders (issue 15).
pub mod peer_files;
pub mod shared;
pub mod tools;
pub mod trust;
// The vault (issue 16).
pub mod vault;

/// IPC protocol version, returned by `hello`.
pub const IPC_PROTOCOL: u32 = 1;
/// Version of every `--json` output and IPC result shape.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest accepted line, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// A JSON-RPC request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Request id, echoed in the response.
    pub id: u64,
    /// Method name.
    pub method: String,
    /// Parameters (an object).
    #[serde(default)]
    pub params: Value,
}

impl Request {
    /// A request with serialized `params`.
    pub fn new(id: u64, method: &str, params: impl Serialize) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            id,
            method: method.into(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RpcError {
    /// Stable code (see [`codes`]).
    pub code: i32,
    /// Human-readable message, saying what failed and what to do.
    pub message: String,
}

/// A JSON-RPC response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request id.
    pub id: u64,
    /// The result, on success (`null` is a result: `Some(Value::Null)`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub result: Option<Value>,
    /// The error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    /// A success.
    pub fn ok(id: u64, result: Value) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            id,
            result: Some(result),
            error: None,
        }
    }

    /// A failure.
    pub fn err(id: u64, code: i32, message: impl Into<String>) -> Self {
        Self {
            jsonrpc: "2.0".into(),
            id,
            result: None,
            error: Some(RpcError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// A field that is present is `Some`, even when it is `null` (serde's `Option` reads
/// `null` as `None`, which would make a `null` result look like no result at all).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A JSON-RPC notification pushed by the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Event name.
    pub method: String,
    /// Event payload.
    #[serde(default)]
    pub params: Value,
}

/// Any line a client may receive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Incoming {
    /// Answer to a request.
    Response(Response),
    /// Pushed event.
    Notification(Notification),
}

/// Stable error codes. JSON-RPC's own codes are negative; ours are 1000+.
pub mod codes {
    /// The line is not JSON.
    pub const PARSE: i32 = -32700;
    /// Not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Parameters do not fit the method.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Daemon-side failure.
    pub const INTERNAL: i32 = -32603;
    /// A mesh, peer, invite or message was not found.
    pub const NOT_FOUND: i32 = 1001;
    /// A name or prefix matched more than one thing.
    pub const AMBIGUOUS: i32 = 1002;
    /// An argument has the right type but a wrong value.
    pub const INVALID_ARGUMENT: i32 = 1003;
    /// The operation needs the relay and the relay cannot be reached.
    pub const RELAY_UNAVAILABLE: i32 = 1004;
    /// An invite was refused (expired, revoked, used up, denied, bad proof).
    pub const INVITE_REFUSED: i32 = 1005;
    /// Not allowed (e.g. not an admin).
    pub const FORBIDDEN: i32 = 1006;
    /// Timed out waiting (e.g. for an admin's approval).
    pub const TIMEOUT: i32 = 1007;
    /// Conflicts with existing state (e.g. already joined).
    pub const CONFLICT: i32 = 1008;
}

/// Method names, parameters and results.
pub mod methods {
    use super::*;

    /// `hello`: handshake, returns versions.
    pub const HELLO: &str = "hello";
    /// `status`: daemon and link status.
    pub const STATUS: &str = "status";
    /// `create`: create a mesh.
    pub const CREATE: &str = "create";
    /// `invite`: mint an invite.
    pub const INVITE: &str = "invite";
    /// `invite_list`: list invites minted here.
    pub const INVITE_LIST: &str = "invite_list";
    /// `invite_revoke`: revoke an invite.
    pub const INVITE_REVOKE: &str = "invite_revoke";
    /// `claims`: claims waiting for approval.
    pub const CLAIMS: &str = "claims";
    /// `claim_decide`: approve or deny a claim.
    pub const CLAIM_DECIDE: &str = "claim_decide";
    /// `join`: join through an invite.
    pub const JOIN: &str = "join";
    /// `list`: joined meshes.
    pub const LIST: &str = "list";
    /// `leave`: leave a mesh.
    pub const LEAVE: &str = "leave";
    /// `member_remove`: remove a member from a mesh (owner or admin).
    pub const MEMBER_REMOVE: &str = "member_remove";
    /// `member_role`: change a member's role (owner or admin).
    pub const MEMBER_ROLE: &str = "member_role";
    /// `peers`: peers per mesh.
    pub const PEERS: &str = "peers";
    /// `send`: send a message.
    pub const SEND: &str = "send";
    /// `inbox`: read (and drain) messages.
    pub const INBOX: &str = "inbox";
    /// `whoami`: identities.
    pub const WHOAMI: &str = "whoami";
    /// `profile`: show or change the daemon session's profile.
    pub const PROFILE: &str = "profile";
    /// `shutdown`: stop the daemon.
    pub const SHUTDOWN: &str = "shutdown";
    /// `wait_for`: wait until a link or a peer reaches a state.
    pub const WAIT_FOR: &str = "wait_for";
    /// `session_open`: host a new session (a peer) on this daemon.
    pub const SESSION_OPEN: &str = "session_open";
    /// `session_close`: end a hosted session (its peers see it go offline).
    pub const SESSION_CLOSE: &str = "session_close";
    /// `session_update`: change a hosted session's profile (and republish it).
    pub const SESSION_UPDATE: &str = "session_update";
    /// `subscribe`: push `message` notifications for a session's new messages on this
    /// connection (messages stay unread).
    pub const SUBSCRIBE: &str = "subscribe";
    /// `message_status`: how far a sent message got.
    pub const MESSAGE_STATUS: &str = "message_status";
    /// `ping`: round trip to the relay of a mesh.
    pub const PING: &str = "ping";
    /// `mark_read`: mark some of a session's messages read.
    pub const MARK_READ: &str = "mark_read";
    /// `mesh_use`: the mesh commands act in when none is named.
    pub const MESH_USE: &str = "mesh_use";
    /// `mesh_rename`: a joined mesh's local name.
    pub const MESH_RENAME: &str = "mesh_rename";
    /// `mesh_info`: one mesh (or each) at a glance: relay, members, groups, you, counts.
    pub const MESH_INFO: &str = "mesh_info";
    /// `mesh_stats`: usage per peer session (messages in/out, tool calls and errors,
    /// uptime), asked of each online member's daemon, with the mesh's shared-state counts.
    pub const MESH_STATS: &str = "mesh_stats";
    /// `session_stats`: a hosted session's client reports its tool-call totals.
    pub const SESSION_STATS: &str = "session_stats";

    /// `session_stats` parameters: totals since the client started (not deltas, so a
    /// report that is lost or repeated changes nothing).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SessionStatsParams {
        /// The hosted session.
        pub session: SessionId,
        /// Tool calls made.
        pub tool_calls: u64,
        /// Of those, calls that failed.
        pub tool_errors: u64,
    }

    /// `mesh_stats` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct MeshStatsParams {
        /// Mesh name or id prefix; default: the only mesh.
        #[serde(default)]
        pub mesh: Option<String>,
        /// How long to wait for peers' daemons to answer, ms (default 3000, at most
        /// 30000).
        #[serde(default)]
        pub wait_ms: Option<u64>,
    }

    /// One session in `mesh_stats`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PeerUsage {
        /// The session's name as its presence announced it.
        pub name: String,
        /// The person (member) it belongs to.
        pub member_name: String,
        /// Session id.
        pub session: SessionId,
        /// Its member's key fingerprint.
        pub fingerprint: String,
        /// One of ours (on this daemon).
        pub me: bool,
        /// Online now.
        pub online: bool,
        /// Its daemon answered (for ours: always); without an answer the counts are
        /// absent, and `note` says why.
        pub answered: bool,
        /// The counters, as the session's own daemon keeps them (from when it opened).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub usage: Option<crate::message::SessionUsage>,
        /// Why there are no counts (offline, no answer in time, not allowed).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub note: String,
    }

    /// `mesh_stats` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshStatsResult {
        /// The mesh.
        pub mesh: MeshId,
        /// Sessions listed as `peers` lists them (ours first).
        pub peers: Vec<PeerUsage>,
        /// Shared state: items per kind (`state`, `memories`, `tasks`, …).
        pub shared: std::collections::BTreeMap<String, u64>,
        /// Last applied sequence of the shared-state log.
        pub log_seq: u64,
        /// Own shared-state writes not yet sequenced.
        pub log_pending: u64,
    }

    /// A member in `mesh_info`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshMember {
        /// The person's name as last announced (held to the name rules on receipt; empty
        /// when it never announced one).
        pub name: String,
        /// Member key fingerprint (`a1b2-c3d4-…`).
        pub fingerprint: String,
        /// Role in the roster.
        pub role: Role,
        /// Any of its sessions online.
        pub online: bool,
        /// Its sessions listed in `peers` (visible, not ended beyond the grace).
        pub sessions: u32,
        /// This is us.
        pub me: bool,
    }

    /// A group in `mesh_info`: who is in it (visible sessions only).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshGroup {
        /// The group, without `@`.
        pub name: String,
        /// Its members' names, with the role each gave when joining (`ann (lead)`).
        pub members: Vec<String>,
    }

    /// One mesh in `mesh_info`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshOverview {
        /// The mesh and our identity in it (name, relay and its fingerprint, role, key).
        pub mesh: MeshInfo,
        /// Our member key's fingerprint.
        pub fingerprint: String,
        /// Link state.
        pub link: LinkState,
        /// `quic` or `websocket` when connected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub transport: Option<String>,
        /// The relay node the link is up with (for a relay of several nodes, which one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
        /// Last link error, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_error: Option<String>,
        /// Every member of the roster.
        pub members: Vec<MeshMember>,
        /// Peer sessions online (ours left out).
        pub peers_online: u64,
        /// Groups in use, by name.
        pub groups: Vec<MeshGroup>,
        /// Groups our sessions are in.
        pub your_groups: Vec<String>,
        /// Shared-state keys (the first 100, in order).
        pub state_keys: Vec<String>,
        /// Shared state: items per kind (`state`, `memories`, `tasks`, …).
        pub shared: std::collections::BTreeMap<String, u64>,
        /// Last applied sequence of the shared-state log.
        pub log_seq: u64,
        /// Own shared-state writes not yet sequenced.
        pub log_pending: u64,
        /// Unread messages.
        pub unread: u64,
        /// Messages waiting in the outbox.
        pub outbox: u64,
    }

    /// `mesh_info` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshInfoResult {
        /// One entry per mesh asked for.
        pub meshes: Vec<MeshOverview>,
    }
    /// `sent_list`: the messages sent last and how far each got.
    pub const SENT_LIST: &str = "sent_list";

    /// `sent_list` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct SentListParams {
        /// Most messages (default 20).
        #[serde(default)]
        pub limit: Option<u32>,
    }

    /// `sent_list` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SentListResult {
        /// Newest first.
        pub messages: Vec<MessageStatusResult>,
    }

    /// `mesh_set_relay`: move a mesh to another relay address (owner or admin); members
    /// follow the signed record.
    pub const MESH_SET_RELAY: &str = "mesh_set_relay";

    /// `mesh_set_relay` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct SetRelayParams {
        /// Mesh name or id prefix; default: the only mesh.
        #[serde(default)]
        pub mesh: Option<String>,
        /// The new relay `host:port`.
        pub relay: String,
        /// Its certificate fingerprint (base64url); default: the mesh's current one (the
        /// same relay at a new address).
        #[serde(default)]
        pub fingerprint: Option<String>,
        /// Connect to the new address first and check it presents that certificate (and,
        /// for another certificate, that it hosts the mesh). `up` turns it off when it
        /// publishes an address its relay is about to take.
        #[serde(default)]
        pub check: bool,
    }

    /// `mesh_set_relay` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SetRelayResult {
        /// The mesh as it is now.
        pub mesh: MeshInfo,
        /// The address it had.
        pub previous: String,
        /// Whether anything changed (false: it had that address and fingerprint already).
        pub changed: bool,
        /// Whether the relay sequenced the record before the call returned (members online
        /// have it then); false: it waits in the outbox.
        pub sequenced: bool,
        /// Its place in the mesh's log, once sequenced (`claudemesh wait synced --seq`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub seq: Option<u64>,
    }

    /// `mark_read` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MarkReadParams {
        /// The session.
        pub session: SessionId,
        /// The messages.
        pub ids: Vec<MessageId>,
        /// They were shown to whoever reads the session (an `inbox` answer confirmed),
        /// not only marked read.
        #[serde(default)]
        pub surfaced: bool,
    }
    /// Notification pushed to subscribers: one new [`InboxMessage`].
    pub const NOTIFY_MESSAGE: &str = "message";
    /// Notification pushed to subscribers when their session was closed or replaced (e.g.
    /// by a resumed session's original peer): reopen and subscribe again.
    pub const NOTIFY_SESSION_CLOSED: &str = "session_closed";

    /// Who reports a status. A fresher report of a lower-ranked source does not override a
    /// higher-ranked one: hook > manual > jsonl.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default,
    )]
    #[serde(rename_all = "snake_case")]
    pub enum StatusSource {
        /// Inferred from a transcript.
        Jsonl,
        /// Set by the session (a tool call) or the user.
        #[default]
        Manual,
        /// Reported by a Claude Code hook.
        Hook,
    }

    /// `session_update` parameters: fields left out are unchanged.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SessionUpdateParams {
        /// The session.
        pub session: SessionId,
        /// New display name.
        #[serde(default)]
        pub name: Option<String>,
        /// New summary.
        #[serde(default)]
        pub summary: Option<String>,
        /// New status.
        #[serde(default)]
        pub status: Option<PeerStatus>,
        /// Who reports the status (default: manual).
        #[serde(default)]
        pub source: StatusSource,
        /// Delivery paths seen working for this session (added to those known).
        #[serde(default)]
        pub delivery: Vec<String>,
        /// Show in listings and broadcasts.
        #[serde(default)]
        pub visible: Option<bool>,
        /// Groups to add.
        #[serde(default)]
        pub join_groups: Vec<String>,
        /// Groups to leave.
        #[serde(default)]
        pub leave_groups: Vec<String>,
        /// The role to hold in `join_groups` (`lead`, `member` or free-form; empty: none).
        #[serde(default)]
        pub group_role: Option<String>,
        /// New avatar (an emoji or a short reference; "" clears).
        #[serde(default)]
        pub avatar: Option<String>,
        /// New title, a short role label ("" clears).
        #[serde(default)]
        pub title: Option<String>,
        /// New bio, one line ("" clears).
        #[serde(default)]
        pub bio: Option<String>,
        /// New capabilities, what the session can help with (replaces the old ones).
        #[serde(default)]
        pub capabilities: Option<Vec<String>>,
    }

    /// A hosted session's profile after an update.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SessionProfile {
        /// The session.
        pub session: SessionId,
        /// Display name.
        pub name: String,
        /// Status.
        pub status: PeerStatus,
        /// Summary.
        pub summary: String,
        /// Groups.
        pub groups: Vec<String>,
        /// Visible.
        pub visible: bool,
        /// The role held in each group, by group (only those given one).
        #[serde(default)]
        pub group_roles: std::collections::BTreeMap<String, String>,
        /// Avatar.
        #[serde(default)]
        pub avatar: String,
        /// Title.
        #[serde(default)]
        pub title: String,
        /// Bio.
        #[serde(default)]
        pub bio: String,
        /// Capabilities.
        #[serde(default)]
        pub capabilities: Vec<String>,
    }

    /// `subscribe` parameters. A subscription also holds the session's lease: the session
    /// stays online while one lives (or while its process does), and goes offline when
    /// the last one ends with its process gone.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SubscribeParams {
        /// The session whose messages to push.
        pub session: SessionId,
        /// Push `message` notifications (false: only hold the lease).
        #[serde(default = "yes")]
        pub push: bool,
    }

    fn yes() -> bool {
        true
    }

    /// `message_status` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MessageStatusParams {
        /// The message id (or a unique prefix of its last 8 hex digits).
        pub id: String,
        /// Wait until the message reaches at least this stage…
        #[serde(default)]
        pub wait_for: Option<Stage>,
        /// …for at most this many ms.
        #[serde(default)]
        pub wait_ms: Option<u64>,
    }

    /// `message_status` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MessageStatusResult {
        /// The message.
        pub id: MessageId,
        /// Stage reached.
        pub stage: Stage,
        /// Queued at, unix ms.
        pub queued_at: i64,
        /// Stored by the relay at, unix ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub relayed_at: Option<i64>,
        /// Acknowledged by a recipient daemon at, unix ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub delivered_at: Option<i64>,
        /// Surfaced to a recipient session at, unix ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub surfaced_at: Option<i64>,
        /// Read by a recipient session at, unix ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub read_at: Option<i64>,
        /// How it was addressed.
        pub to: String,
    }

    /// `ping` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PingResult {
        /// The mesh.
        pub mesh: MeshId,
        /// Round trip to the relay, microseconds.
        pub relay_rtt_us: u64,
        /// Transport used.
        pub transport: String,
        /// One sealed probe per priority, through the whole message path.
        #[serde(default)]
        pub priorities: Vec<PriorityProbe>,
    }

    /// `ping` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct PingParams {
        /// Mesh name or id prefix; default: the only mesh.
        #[serde(default)]
        pub mesh: Option<String>,
        /// The session asking (a hosted one): whether a message of each priority would be
        /// pushed to it now.
        #[serde(default)]
        pub session: Option<SessionId>,
    }

    /// A probe of one priority: sealed like a direct message, sent from this daemon to
    /// itself through the relay, opened and acknowledged on its return (never stored).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PriorityProbe {
        /// The priority it carried.
        pub priority: Priority,
        /// Seal, relay, return and open, microseconds; `None` when it did not come back
        /// within 5 s (the link or the relay is not passing messages).
        pub round_trip_us: Option<u64>,
        /// Would a message of this priority be pushed to the asking session right now?
        pub pushed_now: bool,
        /// Why (or why not), in words.
        pub note: String,
    }

    /// `session_open` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct SessionOpenParams {
        /// Stable key of the client session (e.g. the Claude Code session id): opening
        /// again with the same key gives the same peer id and keys.
        pub client_key: String,
        /// Mesh name or id prefix (default: every joined mesh).
        #[serde(default)]
        pub mesh: Option<String>,
        /// Display name (default: the member's display name).
        #[serde(default)]
        pub name: Option<String>,
        /// Peer kind, e.g. `claude`.
        #[serde(default)]
        pub kind: Option<String>,
        /// Groups.
        #[serde(default)]
        pub groups: Vec<String>,
        /// Summary.
        #[serde(default)]
        pub summary: Option<String>,
        /// Working directory to share.
        #[serde(default)]
        pub cwd: Option<String>,
        /// Delivery paths the client knows work (`channel`, `hooks`, `pull`).
        #[serde(default)]
        pub delivery: Vec<String>,
        /// Role tag.
        #[serde(default)]
        pub role: Option<String>,
        /// Client software name.
        #[serde(default)]
        pub client: Option<String>,
        /// The Claude Code session id, when known: a resumed session keeps its peer id
        /// across processes.
        #[serde(default)]
        pub claude_session: Option<String>,
        /// The process the session lives in, `<pid>-<start time>` (Linux): when it ends,
        /// the session goes offline, whatever keyed it.
        #[serde(default)]
        pub process: Option<String>,
        /// The Claude Code transcript of the session (`…/projects/<slug>/<id>.jsonl`):
        /// where the daemon confirms that pushed messages reached the model.
        #[serde(default)]
        pub transcript: Option<String>,
    }

    /// One hosted session.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct SessionInfo {
        /// The mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// The session (peer id).
        pub session: SessionId,
        /// Its display name.
        pub name: String,
    }

    /// `session_open` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SessionOpenResult {
        /// One session per mesh.
        pub sessions: Vec<SessionInfo>,
    }

    /// `session_close` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SessionCloseParams {
        /// The session.
        pub session: SessionId,
    }

    /// What `wait_for` waits for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum WaitCondition {
        /// The relay link of the mesh (or of every mesh) is connected.
        LinkUp,
        /// The relay link of the mesh (or of every mesh) is not connected.
        LinkDown,
        /// The relay link of the mesh (or of every mesh) is down with an error (its last
        /// attempt failed: see `status`).
        LinkError,
        /// A peer (name or id prefix) is online.
        PeerOnline,
        /// A peer (name or id prefix) is offline.
        PeerOffline,
        /// A join request waits for an admin's approval here.
        ClaimPending,
        /// A peer (name or id prefix) is online and working.
        PeerWorking,
        /// A peer (name or id prefix) is online and idle.
        PeerIdle,
        /// The shared-state log is in sync: link up, caught up with the relay, no own
        /// write pending, and (with `seq`) at least that sequence applied.
        Synced,
    }

    /// `wait_for` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct WaitParams {
        /// The condition.
        pub condition: WaitCondition,
        /// Mesh name or id prefix (default: every mesh).
        #[serde(default)]
        pub mesh: Option<String>,
        /// The peer, for peer conditions.
        #[serde(default)]
        pub peer: Option<String>,
        /// For `synced`: the least sequence that must be applied.
        #[serde(default)]
        pub seq: Option<u64>,
        /// Give up after this many ms.
        pub timeout_ms: u64,
    }

    /// `wait_for` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct WaitResult {
        /// Whether the condition held before the timeout.
        pub met: bool,
    }

    /// `hello` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct HelloParams {
        /// Client name and version.
        pub client: String,
        /// Client's IPC protocol version.
        pub protocol: u32,
    }

    /// `hello` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct HelloResult {
        /// Daemon's IPC protocol version.
        pub protocol: u32,
        /// Daemon software version.
        pub version: String,
        /// Daemon process id.
        pub pid: u32,
    }

    /// State of a mesh's relay link.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum LinkState {
        /// Authenticated and live.
        Connected,
        /// Trying to connect (or backing off between tries).
        Connecting,
        /// Not running (no daemon, or mesh left).
        Offline,
    }

    /// One mesh in `status`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshStatus {
        /// The mesh.
        pub mesh: MeshId,
        /// Its name.
        pub name: String,
        /// Relay address.
        pub relay: String,
        /// Link state.
        pub link: LinkState,
        /// `quic` or `websocket` when connected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub transport: Option<String>,
        /// The relay node the link is up with (for a relay of several nodes, which one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
        /// Last link error, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_error: Option<String>,
        /// Messages waiting in the outbox.
        pub outbox: u64,
        /// Unread messages in the inbox.
        pub unread: u64,
        /// Peers online (excluding this daemon's own sessions).
        pub peers_online: u64,
        /// Relay clock minus ours at the last welcome, ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub clock_skew_ms: Option<i64>,
        /// Shared state: items per kind (`state`, `memories`, `tasks`, …).
        #[serde(default)]
        pub shared: std::collections::BTreeMap<String, u64>,
        /// Last applied sequence of the shared-state log.
        #[serde(default)]
        pub log_seq: u64,
        /// Own shared-state writes not yet sequenced.
        #[serde(default)]
        pub log_pending: u64,
        /// Presences this daemon sent to the relay since it started (one per session
        /// opened or changed, and one per session at each link-up).
        #[serde(default)]
        pub presences_sent: u64,
        /// Links to the relay made since the daemon started (each reconnect adds one).
        #[serde(default)]
        pub links: u64,
        /// Why the last link that was up ended (kept while the next one is up).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_drop: Option<String>,
    }

    /// `status` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct StatusResult {
        /// Daemon software version.
        pub version: String,
        /// Daemon process id.
        pub pid: u32,
        /// Milliseconds since the daemon started.
        pub uptime_ms: u64,
        /// Config directory.
        pub config_dir: String,
        /// Local socket path.
        pub socket: String,
        /// Embedded relay address, when this daemon runs one: what meshes and invites
        /// name (`[relay] public_addr`, else the listen address).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub embedded_relay: Option<String>,
        /// Where the embedded relay listens (`[relay] listen`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub embedded_relay_listen: Option<String>,
        /// The embedded relay's certificate fingerprint (base64url).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub embedded_relay_fingerprint: Option<String>,
        /// Per-mesh status.
        pub meshes: Vec<MeshStatus>,
        /// Joins waiting for an admin (or refused, until joined again).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub joins: Vec<PendingJoin>,
    }

    /// `create` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct CreateParams {
        /// Mesh name.
        pub name: String,
        /// Relay `host:port`; default: the embedded relay.
        #[serde(default)]
        pub relay: Option<String>,
        /// Expected relay certificate fingerprint (base64url SHA-256).
        #[serde(default)]
        pub fingerprint: Option<String>,
        /// Without a fingerprint, pin whatever certificate the relay shows (else the
        /// call fails and says which fingerprint it saw).
        #[serde(default)]
        pub trust_first_use: bool,
        /// Display name in this mesh.
        #[serde(default)]
        pub display_name: Option<String>,
        /// Creation token for a relay whose admission policy asks for one (the CLI reads
        /// it from `CLAUDEMESH_CREATE_TOKEN` or `--token-file`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token: Option<crate::wire::CreationToken>,
    }

    /// A joined mesh.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshInfo {
        /// The mesh.
        pub mesh: MeshId,
        /// Its name.
        pub name: String,
        /// Relay address.
        pub relay: String,
        /// Relay certificate fingerprint (base64url SHA-256).
        pub relay_fingerprint: String,
        /// Our role.
        pub role: Role,
        /// Our member key (base64url), also our member id.
        pub member: String,
        /// Our display name.
        pub display_name: String,
        /// Our daemon session.
        pub session: SessionId,
        /// When we joined, unix ms.
        pub joined_at: i64,
        /// The mesh commands act in when none is named (`claudemesh mesh use`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub default: bool,
    }

    /// `mesh_use` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct MeshUseParams {
        /// Mesh name or id prefix; `None` clears the default.
        #[serde(default)]
        pub mesh: Option<String>,
    }

    /// `mesh_rename` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshRenameParams {
        /// Mesh name or id prefix.
        pub mesh: String,
        /// Its new local name (only this machine sees it).
        pub name: String,
    }

    /// `invite` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct InviteParams {
        /// Mesh name or id prefix; default: the only mesh.
        #[serde(default)]
        pub mesh: Option<String>,
        /// Number of claims allowed.
        pub uses: u32,
        /// Lifetime in seconds.
        pub expires_secs: u64,
        /// Role for claimants.
        pub role: Role,
        /// Whether an admin approves each claim.
        pub approve: bool,
    }

    /// An invite minted by this daemon.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct InviteInfo {
        /// The invite link (present only right after minting).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub invite: Option<String>,
        /// The invite id.
        pub id: InviteId,
        /// The mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// Role for claimants.
        pub role: Role,
        /// Allowed uses.
        pub max_uses: u32,
        /// Uses so far (as last known).
        pub uses: u32,
        /// Expiry, unix ms.
        pub expires_at: i64,
        /// Approval mode.
        pub approve: bool,
        /// Revoked?
        pub revoked: bool,
    }

    /// `invite_revoke` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct InviteRevokeParams {
        /// Invite id or unambiguous prefix.
        pub id: String,
    }

    /// A claim waiting for an admin.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PendingClaim {
        /// The claim id.
        pub claim: String,
        /// The mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// The invite.
        pub invite: InviteId,
        /// Claimant's member key fingerprint.
        pub fingerprint: String,
        /// The name the claimant gave, sealed to holders of the invite (absent from older
        /// claimants, or when it does not open).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        /// Arrival, unix ms.
        pub at: i64,
    }

    /// `claim_decide` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ClaimDecideParams {
        /// Claim id or unambiguous prefix.
        pub claim: String,
        /// Admit (true) or refuse (false).
        pub accept: bool,
    }

    /// `join` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct JoinParams {
        /// The invite link.
        pub invite: String,
        /// Display name in this mesh.
        #[serde(default)]
        pub display_name: Option<String>,
        /// How long to wait for an admin to admit us, seconds. Without it, the call
        /// answers once the relay holds the claim: joined if an admin admitted at once,
        /// else pending (the daemon finishes the join in the background).
        #[serde(default)]
        pub wait_secs: Option<u64>,
    }

    /// `leave` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct LeaveParams {
        /// Mesh name or id prefix (default: the only mesh).
        #[serde(default)]
        pub mesh: Option<String>,
        /// Leave even as its last admin (no one could invite, admit or remove after).
        #[serde(default)]
        pub force: bool,
        /// Only check that it may be left, and say which mesh it is (for a prompt).
        #[serde(default)]
        pub check: bool,
    }

    /// `join` result: joined, or a join the daemon keeps pending.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct JoinResult {
        /// The mesh, once joined.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub joined: Option<MeshInfo>,
        /// The pending join, while no admin admitted us yet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pending: Option<PendingJoin>,
    }

    /// Where a pending join stands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JoinStage {
        /// Reaching the invite's relay (it may be down: the daemon keeps trying).
        Connecting,
        /// The relay holds the claim; no admin answered yet.
        Waiting,
        /// The relay holds the claim; the invite needs an admin's approval.
        Approval,
        /// Refused for good (the reason says why); nothing was joined.
        Refused,
    }

    /// A join this daemon keeps pending until an admin admits it.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PendingJoin {
        /// The invite claimed.
        pub invite: InviteId,
        /// The relay named in the invite.
        pub relay: String,
        /// Fingerprint of the new member key the claim brings (the admin sees it too).
        pub fingerprint: String,
        /// The display name the admins see.
        pub name: String,
        /// Where it stands.
        pub stage: JoinStage,
        /// The claim's id at the relay once it holds it (what `claudemesh invite approve`
        /// takes, on the admin's machine).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub claim: Option<ClaimId>,
        /// Admins online at the relay when it last answered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub admins_online: Option<u32>,
        /// Until when the relay keeps the claim waiting, unix ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kept_until: Option<i64>,
        /// Why the last attempt failed (connecting), or why it was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
        /// When `join` was run, unix ms.
        pub since: i64,
    }

    /// `peers` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct PeersParams {
        /// Mesh name or id prefix (default: all).
        #[serde(default)]
        pub mesh: Option<String>,
        /// Also sessions that ended longer ago than the grace (history).
        #[serde(default)]
        pub all: bool,
    }

    /// `member_remove` / `member_role` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MemberParams {
        /// Mesh name or id prefix.
        #[serde(default)]
        pub mesh: Option<String>,
        /// The member: a name, or a member fingerprint or session id prefix.
        pub peer: String,
        /// The new role (`member_role` only: `admin` or `member`).
        #[serde(default)]
        pub role: Option<Role>,
    }

    /// What a membership change did.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MemberResult {
        /// The mesh.
        pub mesh: MeshId,
        /// Its name.
        pub mesh_name: String,
        /// The member's fingerprint.
        pub fingerprint: String,
        /// Its names, as its sessions announce them.
        #[serde(default)]
        pub names: Vec<String>,
        /// Its role now (none: removed).
        #[serde(default)]
        pub role: Option<Role>,
    }

    /// Parameters naming one mesh (optional when only one is joined).
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct MeshParams {
        /// Mesh name or id prefix.
        #[serde(default)]
        pub mesh: Option<String>,
    }

    /// One peer.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PeerInfo {
        /// Session id (the peer id).
        pub id: SessionId,
        /// Member key (base64url).
        pub member: String,
        /// Display name: the session's label (for a member's daemon session, the member's
        /// name).
        pub name: String,
        /// The person: the member's display name.
        #[serde(default)]
        pub member_name: String,
        /// Peer kind (`cli`, `claude`, …).
        pub kind: String,
        /// Status.
        pub status: PeerStatus,
        /// Summary.
        pub summary: String,
        /// Groups.
        pub groups: Vec<String>,
        /// Host name.
        pub hostname: String,
        /// Online now (as last known).
        pub online: bool,
        /// Last seen, unix ms.
        pub last_seen: i64,
        /// Is this one of our own sessions?
        pub me: bool,
        /// Delivery paths seen working for this peer (`channel`, `hooks`, `pull`).
        #[serde(default)]
        pub delivery: Vec<String>,
        /// Role tag.
        #[serde(default)]
        pub role: String,
        /// Client software.
        #[serde(default)]
        pub client: String,
        /// File patterns this peer holds live reservations on.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub reservations: Vec<String>,
        /// Capabilities this daemon grants the peer's member, when not all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub grants: Option<Vec<String>>,
        /// This daemon drops everything the peer's member sends.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub blocked: bool,
        /// The person name was first seen with another member's key (this short
        /// fingerprint): an impostor, or two people sharing a name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name_first_seen_with: Option<String>,
        /// The first name this member was seen with, when it now shows another.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub renamed_from: Option<String>,
        /// The user confirmed this member's key (`claudemesh verify <peer> --confirm`).
        #[serde(default)]
        pub confirmed: bool,
        /// The role the peer holds in each of its groups (`join_group`), by group.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        pub group_roles: std::collections::BTreeMap<String, String>,
        /// Avatar the peer chose (`set_profile`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub avatar: String,
        /// Title, a short role label (`set_profile`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub title: String,
        /// One line about the peer (`set_profile`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub bio: String,
        /// What the peer can help with (`set_profile`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub capabilities: Vec<String>,
    }

    /// One mesh's peers.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshPeers {
        /// The mesh.
        pub mesh: MeshId,
        /// Its name.
        pub name: String,
        /// True when the list comes from the local cache because the relay link is down
        /// (or the daemon is not running).
        pub cached: bool,
        /// Peers, online first.
        pub peers: Vec<PeerInfo>,
    }

    /// `peers` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct PeersResult {
        /// Per mesh.
        pub meshes: Vec<MeshPeers>,
    }

    /// `send` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SendParams {
        /// Peer name, id or prefix; `@group`; or `*`.
        pub to: String,
        /// Message text.
        pub body: String,
        /// Priority.
        #[serde(default)]
        pub priority: Priority,
        /// Mesh name or id prefix.
        #[serde(default)]
        pub mesh: Option<String>,
        /// Sending session (default: the daemon's own).
        #[serde(default)]
        pub session: Option<SessionId>,
        /// How long to wait for the relay's acknowledgement before answering `queued`, ms.
        #[serde(default)]
        pub wait_ms: Option<u64>,
        /// An idempotency key chosen by the caller (1–128 characters; a message id as
        /// such is used as the id): a send repeated with the same key from the same session
        /// sends nothing again and answers how far the first one got.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub id: Option<String>,
    }

    /// How far a message got.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Stage {
        /// In our outbox (durably); will be sent when the relay is reachable.
        Queued,
        /// Stored by the relay.
        Relayed,
        /// Acknowledged by the recipient's daemon.
        Delivered,
        /// Handed to the recipient session (pushed into its context).
        Surfaced,
        /// Read by the recipient session (pulled, or put in its context by a hook).
        Read,
    }

    impl Stage {
        /// The stage as every output spells it (lowercase, as in JSON).
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Queued => "queued",
                Self::Relayed => "relayed",
                Self::Delivered => "delivered",
                Self::Surfaced => "surfaced",
                Self::Read => "read",
            }
        }
    }

    impl std::fmt::Display for Stage {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// `send` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SendResult {
        /// Message id.
        pub id: MessageId,
        /// Mesh.
        pub mesh: MeshId,
        /// Stage reached when answering.
        pub stage: Stage,
        /// Names of the recipients, as resolved.
        pub recipients: Vec<String>,
        /// Recipients on this machine that got it directly.
        pub local: u32,
        /// Recipients with no session online: the relay keeps it for them until they are
        /// back (absent from older daemons).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub offline: Vec<String>,
        /// This send repeated an idempotency key already sent: nothing was sent again, and
        /// `stage` is how far the first one got.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub duplicate: bool,
    }

    /// `inbox` parameters.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct InboxParams {
        /// Whose inbox: a hosted session (default: the daemon's own session in each mesh).
        #[serde(default)]
        pub session: Option<SessionId>,
        /// Cursor: only messages after this one (in arrival order); with `wait_ms`, waits
        /// for a newer one. Lets a reader that peeks wait for what is new.
        #[serde(default)]
        pub after: Option<MessageId>,
        /// Mesh name or id prefix (default: all).
        #[serde(default)]
        pub mesh: Option<String>,
        /// Wait up to this many ms for a message when none is unread.
        #[serde(default)]
        pub wait_ms: Option<u64>,
        /// Leave messages unread.
        #[serde(default)]
        pub peek: bool,
        /// Most messages to return.
        #[serde(default)]
        pub limit: Option<u32>,
        /// Leave them unread until the caller has them and says so with `mark_read`
        /// (`surfaced: true`): a reader that dies before it got the answer finds them
        /// unread again. A hosted session's are claimed meanwhile (no push shows them);
        /// a claim not confirmed lapses after a few seconds.
        #[serde(default)]
        pub confirm: bool,
        /// Read messages too, the newest `limit` (implies `peek`): the history.
        #[serde(default)]
        pub all: bool,
    }

    /// One received message.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
    pub struct InboxMessage {
        /// Message id.
        pub id: MessageId,
        /// The local session it was delivered to.
        pub session: SessionId,
        /// Mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// Sending session.
        pub from_id: SessionId,
        /// Sending member (base64url).
        pub from_member: String,
        /// Sender: the person (the member's display name, as its signed presence says).
        pub from_name: String,
        /// The sending session's label, when it has one of its own.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub from_label: String,
        /// How it was addressed (`name`, `@group`, `*`).
        pub to: String,
        /// Priority.
        pub priority: Priority,
        /// Sender clock, unix ms.
        pub sent_at: i64,
        /// Arrival here, unix ms.
        pub received_at: i64,
        /// Text.
        pub body: String,
        /// Sender verified by its member key against the mesh roster.
        pub verified: bool,
        /// When it was seen in the session's context (confirmed, by the path in the
        /// recipient's `peers` delivery list), if it was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub surfaced_at: Option<i64>,
        /// Addressed to the person, not to one session: any of the person's sessions on
        /// this machine may show it, the most recently active first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub for_member: bool,
        /// `text` for messages from peers; `task` or `reservation` for notices from this
        /// daemon about a race an own write lost in the shared-state log.
        #[serde(default = "text_kind")]
        pub kind: String,
    }

    fn text_kind() -> String {
        "text".into()
    }

    /// `inbox` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct InboxResult {
        /// Messages, oldest first.
        pub messages: Vec<InboxMessage>,
    }

    /// One identity in `whoami`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Identity {
        /// The mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// Display name.
        pub display_name: String,
        /// Member id (the member key, base64url).
        pub member_id: String,
        /// Key fingerprint.
        pub fingerprint: String,
        /// Role.
        pub role: Role,
        /// The daemon's own session.
        pub session: SessionId,
    }

    /// `whoami` result.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct WhoamiResult {
        /// Default display name for new meshes.
        pub display_name: String,
        /// Per mesh.
        pub identities: Vec<Identity>,
    }

    /// `profile` parameters: fields left out are unchanged.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    pub struct ProfileParams {
        /// Mesh name or id prefix (default: all meshes).
        #[serde(default)]
        pub mesh: Option<String>,
        /// New display name.
        #[serde(default)]
        pub name: Option<String>,
        /// New groups (replacing the old ones).
        #[serde(default)]
        pub groups: Option<Vec<String>>,
        /// New summary.
        #[serde(default)]
        pub summary: Option<String>,
        /// New status.
        #[serde(default)]
        pub status: Option<PeerStatus>,
    }

    /// `profile` result: the profile per mesh after the change.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ProfileResult {
        /// Per mesh.
        pub profiles: Vec<MeshProfile>,
    }

    /// One mesh's own profile.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MeshProfile {
        /// The mesh.
        pub mesh: MeshId,
        /// Mesh name.
        pub mesh_name: String,
        /// Display name.
        pub name: String,
        /// Groups.
        pub groups: Vec<String>,
        /// Summary.
        pub summary: String,
        /// Status.
        pub status: PeerStatus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_distinguishes_responses_and_notifications() {
        let r: Incoming = serde_json::from_str(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).unwrap();
        assert!(matches!(r, Incoming::Response(Response { id: 3, .. })));
        let n: Incoming =
            serde_json::from_str(r#"{"jsonrpc":"2.0","method":"message","params":{}}"#).unwrap();
        assert!(matches!(n, Incoming::Notification(_)));
    }

    #[test]
    fn a_null_result_is_a_result() {
        let line = serde_json::to_string(&Response::ok(4, Value::Null)).unwrap();
        assert_eq!(line, r#"{"jsonrpc":"2.0","id":4,"result":null}"#);
        let r: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(r.result, Some(Value::Null));
        let none: Response = serde_json::from_str(r#"{"jsonrpc":"2.0","id":4}"#).unwrap();
        assert_eq!(none.result, None);
        let Incoming::Response(r) = serde_json::from_str(&line).unwrap() else {
            panic!("a response read as a notification");
        };
        assert_eq!(r.result, Some(Value::Null));
    }

    #[test]
    fn request_shape() {
        let r = Request::new(1, methods::PEERS, methods::MeshParams { mesh: None });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"jsonrpc":"2.0","id":1,"method":"peers","params":{"mesh":null}}"#
        );
    }
}
