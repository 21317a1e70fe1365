//! IPC shapes of shared mesh state (the op log's fold): key-value state, memories, tasks,
//! file reservations, contexts, skills, reminders, and the log's digest and audit.
//!
//! Every write names the acting session (default: the daemon's own) and returns a
//! [`WriteResult`]: the op is durable in the daemon's op outbox and applied locally at
//! once; `seq` is set once the relay sequenced it and it came back (then every member
//! folds it at the same place).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ItemId, MeshId, OpId, SessionId};
use crate::ipc::page::Page;

/// `state_set`.
pub const STATE_SET: &str = "state_set";
/// `state_get`.
pub const STATE_GET: &str = "state_get";
/// `state_list`.
pub const STATE_LIST: &str = "state_list";
/// `remember`.
pub const REMEMBER: &str = "remember";
/// `recall`.
pub const RECALL: &str = "recall";
/// `forget`.
pub const FORGET: &str = "forget";
/// `task_create`.
pub const TASK_CREATE: &str = "task_create";
/// `task_claim`.
pub const TASK_CLAIM: &str = "task_claim";
/// `task_complete`.
pub const TASK_COMPLETE: &str = "task_complete";
/// `task_list`.
pub const TASK_LIST: &str = "task_list";
/// `digest`: a hash of the folded state.
pub const DIGEST: &str = "digest";
/// `audit_verify`: check the op log's hash chain, locally and against the relay.
pub const AUDIT_VERIFY: &str = "audit_verify";
/// `link_pause`: take a mesh's relay link down (offline mode) or bring it back.
pub const LINK_PAUSE: &str = "link_pause";
/// Pushed to subscribers when a shared key changes.
pub const NOTIFY_STATE_CHANGE: &str = "state_change";

/// Who writes, where.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Actor {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Acting session (default: the daemon's own).
    #[serde(default)]
    pub session: Option<SessionId>,
    /// How long to wait for the op to be sequenced and applied, ms (default 2000 when
    /// the relay link is up; a write never fails for want of a link).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// The result of any write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResult {
    /// The mesh.
    pub mesh: MeshId,
    /// The op.
    pub op: OpId,
    /// The item created or changed, when it has an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its place in the log, once sequenced and applied here; `None` while pending
    /// (offline): it is published in order when the link returns.
    pub seq: Option<u64>,
}

/// `state_set` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateSetParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Key.
    pub key: String,
    /// Any JSON value; `null` deletes the key.
    pub value: Value,
}

/// `state_get` / `state_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StateQuery {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// The key (`state_get`) or a key prefix (`state_list`).
    #[serde(default)]
    pub key: Option<String>,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// One shared key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateEntry {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Value,
    /// Who wrote it last.
    pub updated_by: String,
    /// When, unix ms.
    pub updated_at: i64,
    /// True when the value is this daemon's own write not yet sequenced.
    pub pending: bool,
}

/// `state_get` / `state_list` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Matching keys, sorted.
    pub entries: Vec<StateEntry>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `remember` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RememberParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Text.
    pub text: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `recall` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RecallParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Full-text query (words; empty lists the newest).
    #[serde(default)]
    pub query: String,
    /// Only memories with all these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Most results (default 20, at most 1000; a page also closes at `page::PAGE_BYTES`).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Id.
    pub id: ItemId,
    /// Text.
    pub text: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Author's name.
    pub author: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// Relevance (higher is better; 0 without a query).
    pub score: f64,
    /// Not yet sequenced.
    pub pending: bool,
}

/// `recall` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecallResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Best first.
    pub memories: Vec<Memory>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Parameters naming one item by id or id prefix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Id or unique prefix.
    pub id: String,
    /// Result summary (`task_complete`).
    #[serde(default)]
    pub result: String,
}

/// `task_create` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskCreateParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Title.
    pub title: String,
    /// Details.
    #[serde(default)]
    pub body: String,
    /// `low`, `normal` (default), `high`, `urgent`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Suggested assignee (a peer name).
    #[serde(default)]
    pub assignee: Option<String>,
}

/// `task_list` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TaskListParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// `open`, `claimed` or `done`.
    #[serde(default)]
    pub status: Option<String>,
    /// Assignee name (or suggested assignee of open tasks).
    #[serde(default)]
    pub assignee: Option<String>,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// One task.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Task {
    /// Id.
    pub id: ItemId,
    /// Title.
    pub title: String,
    /// Details.
    pub body: String,
    /// Priority.
    pub priority: String,
    /// Tags.
    pub tags: Vec<String>,
    /// `open`, `claimed`, `done`.
    pub status: String,
    /// Who claimed it (name), if anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// The claiming session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee_id: Option<SessionId>,
    /// Suggested assignee at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested: Option<String>,
    /// Result summary once done.
    pub result: String,
    /// Creator's name.
    pub created_by: String,
    /// Created, unix ms.
    pub created_at: i64,
    /// Last change, unix ms.
    pub updated_at: i64,
    /// Created here and not yet sequenced.
    pub pending: bool,
}

/// `task_list` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskListResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Tasks, newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `task_claim` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimResult {
    /// The write.
    pub write: WriteResult,
    /// `Some(true)` if this claim won, `Some(false)` if another claim came first in the
    /// log, `None` while pending (you are told when it is decided).
    pub won: Option<bool>,
    /// The task as it stands now.
    pub task: Task,
}

/// `digest` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DigestResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Last applied sequence.
    pub seq: u64,
    /// Hex BLAKE3 of the folded state (sequenced rows only).
    pub digest: String,
    /// Own writes not yet sequenced.
    pub pending: u64,
    /// Rows per table.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// `audit_verify` result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Ops checked.
    pub checked: u64,
    /// Last applied sequence here.
    pub local_head: u64,
    /// The relay's newest sequence (`None` when it could not be asked).
    pub relay_head: Option<u64>,
    /// The oldest sequence the relay still stores (older ones are covered by a snapshot).
    #[serde(default)]
    pub relay_first: Option<u64>,
    /// The first sequence whose op fails a check, if any.
    pub first_broken: Option<u64>,
    /// What is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `link_pause` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkPauseParams {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// True to take the link down and keep it down.
    pub paused: bool,
}

/// `reserve_files`.
pub const RESERVE: &str = "reserve_files";
/// `release_files`.
pub const RELEASE: &str = "release_files";
/// `list_reservations`.
pub const RESERVATIONS: &str = "list_reservations";
/// `share_context`.
pub const CONTEXT_SHARE: &str = "share_context";
/// `get_context` / `list_contexts`.
pub const CONTEXTS: &str = "list_contexts";
/// `share_skill`.
pub const SKILL_SHARE: &str = "share_skill";
/// `remove_skill`.
pub const SKILL_REMOVE: &str = "remove_skill";
/// `list_skills` / `get_skill`.
pub const SKILLS: &str = "list_skills";

/// `reserve_files` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Glob patterns (`*`, `?`, `**`), relative to the repository root.
    pub patterns: Vec<String>,
    /// Exclusive (default) or shared.
    #[serde(default = "yes")]
    pub exclusive: bool,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

fn yes() -> bool {
    true
}

/// One file reservation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reservation {
    /// Id.
    pub id: ItemId,
    /// Holder's name.
    pub holder: String,
    /// Holder's session.
    pub holder_id: SessionId,
    /// Patterns.
    pub patterns: Vec<String>,
    /// Exclusive?
    pub exclusive: bool,
    /// Why.
    pub reason: String,
    /// Made, unix ms.
    pub created_at: i64,
    /// Lapses, unix ms.
    pub expires_at: i64,
    /// `active`, `released`, `expired`, or `refused` (it overlapped a live one).
    pub status: String,
    /// What it overlapped, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
}

/// `list_reservations` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ReservationQuery {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Include released, expired and refused ones.
    #[serde(default)]
    pub all: bool,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// `list_reservations` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationsResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Oldest first.
    pub reservations: Vec<Reservation>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `share_context` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareContextParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// What this session understood.
    pub summary: String,
    /// Files it read.
    #[serde(default)]
    pub files_read: Vec<String>,
    /// Key findings.
    #[serde(default)]
    pub key_findings: Vec<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// One shared context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Context {
    /// Id.
    pub id: ItemId,
    /// Author's name.
    pub author: String,
    /// Summary.
    pub summary: String,
    /// Files read.
    pub files_read: Vec<String>,
    /// Key findings.
    pub key_findings: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Shared, unix ms.
    pub created_at: i64,
    /// Not yet sequenced.
    pub pending: bool,
}

/// `list_contexts` parameters (`query` filters, as `get_context` does).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContextQuery {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Only contexts mentioning this (in summary, findings, files or tags).
    #[serde(default)]
    pub query: Option<String>,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// `list_contexts` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContextsResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Newest first.
    pub contexts: Vec<Context>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `share_skill` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareSkillParams {
    /// Writer.
    #[serde(flatten)]
    pub actor: Actor,
    /// Name (replaces a skill of the same name).
    pub name: String,
    /// One line.
    pub description: String,
    /// Full instructions.
    pub instructions: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When to use it.
    #[serde(default)]
    pub when_to_use: String,
}

/// One skill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Skill {
    /// Name.
    pub name: String,
    /// One line.
    pub description: String,
    /// Full instructions.
    pub instructions: String,
    /// Tags.
    pub tags: Vec<String>,
    /// When to use it.
    pub when_to_use: String,
    /// Author's name.
    pub author: String,
    /// Last change, unix ms.
    pub updated_at: i64,
}

/// `list_skills` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SkillQuery {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Exactly this skill.
    #[serde(default)]
    pub name: Option<String>,
    /// Only skills mentioning this keyword.
    #[serde(default)]
    pub query: Option<String>,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// `list_skills` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkillsResult {
    /// The mesh.
    pub mesh: MeshId,
    /// By name.
    pub skills: Vec<Skill>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `schedule_reminder`.
pub const SCHEDULE: &str = "schedule_reminder";
/// `list_scheduled`.
pub const SCHEDULED: &str = "list_scheduled";
/// `cancel_scheduled`.
pub const CANCEL: &str = "cancel_scheduled";
/// `debug_clock`: shift the reminder scheduler's clock of this daemon (for tests and
/// dry runs; nothing else uses it).
pub const DEBUG_CLOCK: &str = "debug_clock";

/// `schedule_reminder` parameters: exactly one of `in_seconds`, `deliver_at`, `cron`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleParams {
    /// Writer (its session gets reminders addressed to nobody).
    #[serde(flatten)]
    pub actor: Actor,
    /// The text delivered.
    pub message: String,
    /// Recipient: a peer name, `@group` or `*`; empty or absent for yourself.
    #[serde(default)]
    pub to: Option<String>,
    /// Deliver this many seconds from now.
    #[serde(default)]
    pub in_seconds: Option<u64>,
    /// Deliver at this unix time, ms.
    #[serde(default)]
    pub deliver_at: Option<i64>,
    /// Deliver on this 5-field cron schedule (UTC).
    #[serde(default)]
    pub cron: Option<String>,
}

/// One reminder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reminder {
    /// Id.
    pub id: ItemId,
    /// Who scheduled it.
    pub author: String,
    /// Recipient label (empty: the author's session).
    pub to: String,
    /// Text.
    pub message: String,
    /// One-shot due time, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<i64>,
    /// Recurring schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// Next due time, unix ms (none once done or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<i64>,
    /// Last due time delivered, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<i64>,
    /// Times delivered.
    pub fired: u64,
    /// `scheduled`, `done`, `cancelled`.
    pub status: String,
}

/// `list_scheduled` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ScheduledQuery {
    /// Mesh name or id prefix.
    #[serde(default)]
    pub mesh: Option<String>,
    /// Also done and cancelled ones.
    #[serde(default)]
    pub all: bool,
    /// Which page (absent: the whole list at once).
    #[serde(flatten)]
    pub page: Page,
}

/// `list_scheduled` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledResult {
    /// The mesh.
    pub mesh: MeshId,
    /// Soonest first.
    pub reminders: Vec<Reminder>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `debug_clock` parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClockParams {
    /// Milliseconds to move the scheduler clock forward by.
    pub advance_ms: i64,
}

/// `state_watch`: stream `state_change` notifications (the request is answered once, then
/// notifications follow on the connection).
pub const STATE_WATCH: &str = "state_watch";

/// `state_watch` parameters.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WatchParams {
    /// Only this mesh (name or id prefix; default: every mesh).
    #[serde(default)]
    pub mesh: Option<String>,
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// A shared key changed (pushed as `state_change`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StateChange {
    /// The mesh.
    pub mesh: MeshId,
    /// Its name.
    pub mesh_name: String,
    /// The key.
    pub key: String,
    /// The new value (`null`: deleted).
    pub value: Value,
    /// Who changed it.
    pub by: String,
    /// Their session.
    pub by_id: SessionId,
    /// Its place in the log.
    pub seq: u64,
    /// When the relay sequenced it, unix ms.
    pub at: i64,
}
