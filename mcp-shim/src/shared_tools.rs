//! MCP tools for shared mesh state (upstream names), and skills as MCP prompts. Each tool
//! is one call to the daemon; writes act as this session, in its mesh unless `mesh` says
//! otherwise.

use claudemesh_daemon::parse_rfc3339;
use claudemesh_schema::ipc::methods::{self as m, MeshParams};
use claudemesh_schema::ipc::page::{self, Page};
use claudemesh_schema::ipc::shared::{
    self as sh, Actor, AuditResult, ClaimResult, ContextQuery, ContextsResult, ItemParams,
    RecallParams, RecallResult, RememberParams, ReservationQuery, ReservationsResult,
    ReserveParams, ScheduleParams, ScheduledQuery, ScheduledResult, ShareContextParams,
    ShareSkillParams, SkillQuery, SkillsResult, StateQuery, StateResult, StateSetParams,
    TaskCreateParams, TaskListParams, TaskListResult, WriteResult,
};
use claudemesh_schema::names;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, GetPromptResult, Prompt, PromptMessage, Role};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::server::{Shim, tool_error};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetStateArgs {
    /// The key.
    key: String,
    /// Any JSON value; null deletes the key.
    value: Value,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyArgs {
    /// The key.
    key: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListStateArgs {
    /// Only keys starting with this.
    #[serde(default)]
    prefix: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
    /// Most items in this answer (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RememberArgs {
    /// What to remember.
    content: String,
    /// Tags.
    #[serde(default)]
    tags: Vec<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecallArgs {
    /// Words to search for (ranked full-text search); empty for the newest.
    #[serde(default)]
    query: String,
    /// Only memories with all these tags.
    #[serde(default)]
    tags: Vec<String>,
    /// Most results (default 20).
    #[serde(default)]
    limit: Option<u32>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdArgs {
    /// The id (or a unique prefix of it).
    id: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTaskArgs {
    /// Title.
    title: String,
    /// Details.
    #[serde(default)]
    description: String,
    /// Suggested assignee (a peer name).
    #[serde(default)]
    assignee: Option<String>,
    /// low, normal (default), high or urgent.
    #[serde(default)]
    priority: Option<String>,
    /// Tags.
    #[serde(default)]
    tags: Vec<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteTaskArgs {
    /// The task id (or a unique prefix).
    id: String,
    /// What came of it.
    #[serde(default)]
    result: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListTasksArgs {
    /// open, claimed or done.
    #[serde(default)]
    status: Option<String>,
    /// Assignee name.
    #[serde(default)]
    assignee: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
    /// Most items in this answer (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveArgs {
    /// Glob patterns relative to the repository root (`*`, `?`, `**`).
    patterns: Vec<String>,
    /// Exclusive (default true); shared reservations may overlap each other.
    #[serde(default)]
    exclusive: Option<bool>,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    ttl_seconds: Option<u64>,
    /// Why (shown to others).
    #[serde(default)]
    reason: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListAllArgs {
    /// Include finished ones too.
    #[serde(default)]
    all: bool,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
    /// Most items in this answer (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareContextArgs {
    /// What you understood (a paragraph).
    summary: String,
    /// Files you read.
    #[serde(default)]
    files_read: Vec<String>,
    /// Key findings.
    #[serde(default)]
    key_findings: Vec<String>,
    /// Tags.
    #[serde(default)]
    tags: Vec<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryArgs {
    /// A file path, topic or keyword.
    #[serde(default)]
    query: Option<String>,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
    /// Most items in this answer (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareSkillArgs {
    /// Name: letters, digits, '-' or '_' (replaces a skill of the same name).
    name: String,
    /// One line.
    description: String,
    /// The full instructions.
    instructions: String,
    /// Tags.
    #[serde(default)]
    tags: Vec<String>,
    /// When to use it.
    #[serde(default)]
    when_to_use: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameArgs {
    /// The skill's name.
    name: String,
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleArgs {
    /// The text to deliver.
    message: String,
    /// Recipient: a peer name, @group or *; omit for yourself.
    #[serde(default)]
    to: Option<String>,
    /// Deliver this many seconds from now.
    #[serde(default)]
    in_seconds: Option<u64>,
    /// Deliver at this time: unix milliseconds, or RFC 3339 (2026-11-23T18:00:00Z).
    #[serde(default)]
    deliver_at: Option<Value>,
    /// Deliver on this 5-field cron schedule, UTC ("0 9 * * 1-5").
    #[serde(default)]
    cron: Option<String>,
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
    /// Resume after this point: the `next_cursor` of the previous answer.
    #[serde(default)]
    cursor: Option<String>,
    /// Most items in this answer (default 100, at most 1000).
    #[serde(default)]
    limit: Option<u32>,
}

/// A page of a list: lists answer at most `limit` items (default 100) and a
/// `next_cursor` while more follow, so an answer stays small whatever the mesh holds.
fn page(cursor: Option<String>, limit: Option<u32>) -> Page {
    Page::after(cursor, limit.unwrap_or(page::DEFAULT_LIMIT))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeshOnlyArgs {
    /// Mesh name, when you are in several.
    #[serde(default)]
    mesh: Option<String>,
}

impl Shim {
    /// Writes act as this session; reads default to its mesh.
    async fn actor(&self, mesh: Option<String>) -> Result<(Actor, Option<String>), String> {
        let s = self.session().await?;
        let mesh = mesh.or(Some(s.mesh.to_string()));
        Ok((
            Actor {
                mesh: mesh.clone(),
                session: Some(s.id),
                wait_ms: None,
            },
            mesh,
        ))
    }

    async fn write<P: serde::Serialize>(
        &self,
        method: &str,
        mesh: Option<String>,
        build: impl FnOnce(Actor) -> P,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        match self.actor(mesh).await {
            Ok((a, _)) => self.call::<WriteResult>(method, build(a)).await,
            Err(e) => tool_error(e),
        }
    }

    pub(crate) async fn mesh_of(&self, mesh: Option<String>) -> Option<String> {
        match self.actor(mesh.clone()).await {
            Ok((_, m)) => m,
            Err(_) => mesh,
        }
    }

    fn item(actor: Actor, id: String, result: String) -> ItemParams {
        ItemParams { actor, id, result }
    }

    /// Skills of this session's mesh, as MCP prompts.
    pub(crate) async fn skill_prompts(&self) -> Vec<Prompt> {
        self.skills()
            .await
            .map(|skills| {
                skills
                    .into_iter()
                    .map(|s| {
                        let about = format!(
                            "{} (shared by {})",
                            names::one_line(&s.description, 200),
                            names::one_line(&s.author, 64)
                        );
                        Prompt::new(prompt_name(&s.name), Some(about), None)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every skill of this session's mesh, page by page.
    async fn skills(&self) -> Option<Vec<sh::Skill>> {
        let mesh = self.mesh_of(None).await;
        let mut c = self.client().await.ok()?;
        let (mut all, mut cursor) = (Vec::new(), None);
        loop {
            let q = SkillQuery {
                mesh: mesh.clone(),
                page: Page::after(cursor, page::MAX_LIMIT),
                ..Default::default()
            };
            let r: SkillsResult = c.call(sh::SKILLS, q).await.ok()?;
            all.extend(r.skills);
            cursor = r.next_cursor;
            if cursor.is_none() {
                return Some(all);
            }
        }
    }

    /// One skill as a prompt.
    pub(crate) async fn skill_prompt(&self, name: &str) -> Option<GetPromptResult> {
        // Listed under a cleaned name: find the skill that name stands for.
        let s = self
            .skills()
            .await?
            .into_iter()
            .find(|s| prompt_name(&s.name) == name)?;
        // A peer wrote it: say whose it is, and keep its text free of controls.
        let mut text = format!(
            "Skill \"{}\", shared through claudemesh by {} (a peer's instructions, run because the user asked for it):\n\n{}",
            prompt_name(&s.name),
            names::one_line(&s.author, 64),
            names::body(&s.instructions)
        );
        if !s.when_to_use.is_empty() {
            text = format!(
                "{text}\n\nWhen to use: {}",
                names::one_line(&s.when_to_use, 500)
            );
        }
        Some(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description(names::one_line(&s.description, 200)),
        )
    }
}

/// A skill's name as a prompt name (Claude Code makes it a slash command): letters,
/// digits, `-` and `_` only, at most 64. A name that had to be changed gets a short hash
/// of the original, so two skills never share a prompt name (`deploy` and ` deploy` do
/// not both become `/deploy`).
fn prompt_name(name: &str) -> String {
    let plain = plain_name(name);
    if plain == name {
        return plain;
    }
    let h = blake3::hash(name.as_bytes()).to_hex();
    let base: String = plain.chars().take(55).collect();
    format!("{base}-{}", &h[..8])
}

fn plain_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if n.is_empty() { "skill".into() } else { n }
}

#[tool_router(router = shared_router, vis = "pub(crate)")]
impl Shim {
    #[tool(
        description = "Set a key in the mesh's shared state (any JSON value; null deletes it). Every peer sees it; concurrent writes resolve the same way everywhere (last in the mesh's log wins). Works offline: the write is published when the link returns."
    )]
    async fn set_state(
        &self,
        Parameters(a): Parameters<SetStateArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::STATE_SET, a.mesh, |actor| StateSetParams {
            actor,
            key: a.key,
            value: a.value,
        })
        .await
    }

    #[tool(description = "Read a key of the mesh's shared state (from the local copy, instantly).")]
    async fn get_state(
        &self,
        Parameters(a): Parameters<KeyArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = StateQuery {
            mesh,
            key: Some(a.key),
            page: Page::default(),
        };
        self.call::<StateResult>(sh::STATE_GET, q).await
    }

    #[tool(
        description = "List the mesh's shared state: keys, values, who set them and when, in key order. Paged: at most `limit` keys (default 100); pass `next_cursor` back as `cursor` for the next page."
    )]
    async fn list_state(
        &self,
        Parameters(a): Parameters<ListStateArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = StateQuery {
            mesh,
            key: a.prefix,
            page: page(a.cursor, a.limit),
        };
        self.call::<StateResult>(sh::STATE_LIST, q).await
    }

    #[tool(
        description = "Store a memory every peer in the mesh can recall later (facts, decisions, gotchas), with optional tags."
    )]
    async fn remember(
        &self,
        Parameters(a): Parameters<RememberArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::REMEMBER, a.mesh, |actor| RememberParams {
            actor,
            text: a.content,
            tags: a.tags,
        })
        .await
    }

    #[tool(
        description = "Search the mesh's memories: ranked full-text search, optionally only with given tags. Answers from the local copy, also offline."
    )]
    async fn recall(
        &self,
        Parameters(a): Parameters<RecallArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = RecallParams {
            mesh,
            query: a.query,
            tags: a.tags,
            limit: a.limit,
            cursor: a.cursor,
        };
        self.call::<RecallResult>(sh::RECALL, q).await
    }

    #[tool(description = "Delete a memory by id.")]
    async fn forget(
        &self,
        Parameters(a): Parameters<IdArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::FORGET, a.mesh, |actor| {
            Self::item(actor, a.id, String::new())
        })
        .await
    }

    #[tool(
        description = "Create a shared task (title, description, suggested assignee, priority, tags)."
    )]
    async fn create_task(
        &self,
        Parameters(a): Parameters<CreateTaskArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::TASK_CREATE, a.mesh, |actor| TaskCreateParams {
            actor,
            title: a.title,
            body: a.description,
            priority: a.priority,
            tags: a.tags,
            assignee: a.assignee,
        })
        .await
    }

    #[tool(
        description = "Claim an open task. If several sessions claim it, the first in the mesh's log wins, the same on every machine: `won` says whether you got it (null while offline; you are told later)."
    )]
    async fn claim_task(
        &self,
        Parameters(a): Parameters<IdArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        match self.actor(a.mesh).await {
            Ok((actor, _)) => {
                self.call::<ClaimResult>(sh::TASK_CLAIM, Self::item(actor, a.id, String::new()))
                    .await
            }
            Err(e) => tool_error(e),
        }
    }

    #[tool(
        description = "Mark a task you claimed (or an unclaimed one) done, with a result summary."
    )]
    async fn complete_task(
        &self,
        Parameters(a): Parameters<CompleteTaskArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::TASK_COMPLETE, a.mesh, |actor| {
            Self::item(actor, a.id, a.result)
        })
        .await
    }

    #[tool(
        description = "List shared tasks, newest first, optionally by status (open, claimed, done) and assignee. Paged: at most `limit` tasks (default 100); pass `next_cursor` back as `cursor` for the next page."
    )]
    async fn list_tasks(
        &self,
        Parameters(a): Parameters<ListTasksArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = TaskListParams {
            mesh,
            status: a.status,
            assignee: a.assignee,
            page: page(a.cursor, a.limit),
        };
        self.call::<TaskListResult>(sh::TASK_LIST, q).await
    }

    #[tool(
        description = "Reserve files (glob patterns) before editing them, so sessions on other machines know. Advisory. An exclusive reservation overlapping another session's live one is refused (the first in the mesh's log wins); check `list_reservations` for the outcome."
    )]
    async fn reserve_files(
        &self,
        Parameters(a): Parameters<ReserveArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::RESERVE, a.mesh, |actor| ReserveParams {
            actor,
            patterns: a.patterns,
            exclusive: a.exclusive.unwrap_or(true),
            ttl_secs: a.ttl_seconds,
            reason: a.reason,
        })
        .await
    }

    #[tool(description = "Release a file reservation by id.")]
    async fn release_files(
        &self,
        Parameters(a): Parameters<IdArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::RELEASE, a.mesh, |actor| {
            Self::item(actor, a.id, String::new())
        })
        .await
    }

    #[tool(description = "List live file reservations (who holds which files, until when, why).")]
    async fn list_reservations(
        &self,
        Parameters(a): Parameters<ListAllArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = ReservationQuery {
            mesh,
            all: a.all,
            page: page(a.cursor, a.limit),
        };
        self.call::<ReservationsResult>(sh::RESERVATIONS, q).await
    }

    #[tool(
        description = "Share what you understood about the codebase (summary, files read, key findings, tags) so peers need not re-read it."
    )]
    async fn share_context(
        &self,
        Parameters(a): Parameters<ShareContextArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::CONTEXT_SHARE, a.mesh, |actor| ShareContextParams {
            actor,
            summary: a.summary,
            files_read: a.files_read,
            key_findings: a.key_findings,
            tags: a.tags,
        })
        .await
    }

    #[tool(description = "Find shared contexts mentioning a file path, topic or keyword.")]
    async fn get_context(
        &self,
        Parameters(a): Parameters<QueryArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = ContextQuery {
            mesh,
            query: a.query,
            page: page(a.cursor, a.limit),
        };
        self.call::<ContextsResult>(sh::CONTEXTS, q).await
    }

    #[tool(description = "List what peers have shared about the codebase, newest first.")]
    async fn list_contexts(
        &self,
        Parameters(a): Parameters<ListArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = ContextQuery {
            mesh,
            query: None,
            page: page(a.cursor, a.limit),
        };
        self.call::<ContextsResult>(sh::CONTEXTS, q).await
    }

    #[tool(
        description = "Publish a reusable skill (name, description, instructions, tags, when to use) to the mesh; peers get it as a tool result and as an MCP prompt."
    )]
    async fn share_skill(
        &self,
        Parameters(a): Parameters<ShareSkillArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::SKILL_SHARE, a.mesh, |actor| ShareSkillParams {
            actor,
            name: a.name,
            description: a.description,
            instructions: a.instructions,
            tags: a.tags,
            when_to_use: a.when_to_use,
        })
        .await
    }

    #[tool(description = "Load a skill's full instructions by name.")]
    async fn get_skill(
        &self,
        Parameters(a): Parameters<NameArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = SkillQuery {
            mesh,
            name: Some(a.name),
            query: None,
            page: Page::default(),
        };
        self.call::<SkillsResult>(sh::SKILLS, q).await
    }

    #[tool(description = "Browse the mesh's skills, optionally filtered by a keyword.")]
    async fn list_skills(
        &self,
        Parameters(a): Parameters<QueryArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = SkillQuery {
            mesh,
            name: None,
            query: a.query,
            page: page(a.cursor, a.limit),
        };
        self.call::<SkillsResult>(sh::SKILLS, q).await
    }

    #[tool(description = "Remove a shared skill by name.")]
    async fn remove_skill(
        &self,
        Parameters(a): Parameters<NameArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::SKILL_REMOVE, a.mesh, |actor| {
            Self::item(actor, a.name, String::new())
        })
        .await
    }

    #[tool(
        description = "Schedule a reminder to yourself, a peer, @group or *: once (in_seconds or deliver_at) or recurring (5-field cron, UTC). Survives restarts; delivered exactly once per due time."
    )]
    async fn schedule_reminder(
        &self,
        Parameters(a): Parameters<ScheduleArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let deliver_at = match &a.deliver_at {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => match s.parse::<i64>().ok().or_else(|| parse_rfc3339(s)) {
                Some(t) => Some(t),
                None => {
                    return tool_error(format!(
                        "deliver_at {s:?}: use unix milliseconds or RFC 3339 (2026-11-23T18:00:00Z)"
                    ));
                }
            },
            Some(other) => return tool_error(format!("deliver_at {other}: not a time")),
        };
        self.write(sh::SCHEDULE, a.mesh, |actor| ScheduleParams {
            actor,
            message: a.message,
            to: a.to,
            in_seconds: a.in_seconds,
            deliver_at,
            cron: a.cron,
        })
        .await
    }

    #[tool(description = "List scheduled reminders (next due time, how often fired).")]
    async fn list_scheduled(
        &self,
        Parameters(a): Parameters<ListAllArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        let q = ScheduledQuery {
            mesh,
            all: a.all,
            page: page(a.cursor, a.limit),
        };
        self.call::<ScheduledResult>(sh::SCHEDULED, q).await
    }

    #[tool(description = "Cancel a scheduled reminder by id.")]
    async fn cancel_scheduled(
        &self,
        Parameters(a): Parameters<IdArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        self.write(sh::CANCEL, a.mesh, |actor| {
            Self::item(actor, a.id, String::new())
        })
        .await
    }

    #[tool(
        description = "Usage per peer session: messages in and out, tool calls, errors and uptime (each counted by the session's own daemon, from when it opened; peers' daemons are asked now, so offline peers show no counts), plus the mesh's shared-state counts per kind and its log sequence."
    )]
    async fn mesh_stats(
        &self,
        Parameters(a): Parameters<MeshOnlyArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        // This call's own count is in what the answer shows.
        self.report_usage().await;
        self.call::<m::MeshStatsResult>(
            m::MESH_STATS,
            m::MeshStatsParams {
                mesh,
                wait_ms: None,
            },
        )
        .await
    }

    #[tool(
        description = "Check the mesh's shared-state log for tampering: re-derives its hash chain and compares it with the relay's copy; names the first broken sequence number."
    )]
    async fn audit_log(
        &self,
        Parameters(a): Parameters<MeshOnlyArgs>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let mesh = self.mesh_of(a.mesh).await;
        self.call::<AuditResult>(sh::AUDIT_VERIFY, MeshParams { mesh })
            .await
    }
}

#[cfg(test)]
mod prompt_name_tests {
    use super::prompt_name;

    #[test]
    fn a_peer_skill_name_becomes_a_plain_prompt_name() {
        for (name, want) in [("deploy", "deploy"), ("run_tests-2", "run_tests-2")] {
            assert_eq!(prompt_name(name), want, "{name:?}");
        }
        // Changed names keep a hash of the original: no two skills share a prompt.
        for (a, b) in [
            ("deploy", " deploy"),
            ("run-tests", "run tests"),
            ("x/admin", "x\n/admin"),
        ] {
            assert_ne!(prompt_name(a), prompt_name(b), "{a:?} {b:?}");
        }
        let long = prompt_name(&"a".repeat(100));
        assert!(long.len() <= 64 && long.starts_with("aaaa"), "{long}");
        assert_ne!(long, prompt_name(&"a".repeat(101)));
        let odd = prompt_name("\u{202E}evil");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{odd}"
        );
    }
}
