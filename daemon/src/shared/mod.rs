//! Shared mesh state: the RPC surface of key-value state, memories, tasks, file
//! reservations, contexts and skills. Writes become ops ([`crate::shared::oplog`]); reads answer
//! from the folded tables ([`query`]) without touching the network.

pub(crate) mod cron;
pub(crate) mod epochs;
pub(crate) mod fold;
pub(crate) mod glob;
pub(crate) mod oplog;
pub(crate) mod query;
pub(crate) mod snapshot;

use claudemesh_schema::ipc::page::{self, Page};
use claudemesh_schema::ipc::shared::{
    Actor, AuditResult, ClaimResult, ContextQuery, ContextsResult, DigestResult, ItemParams,
    LinkPauseParams, RecallParams, RecallResult, RememberParams, ReservationQuery,
    ReservationsResult, ReserveParams, ShareContextParams, ShareSkillParams, SkillQuery,
    SkillsResult, StateQuery, StateResult, StateSetParams, TaskCreateParams, TaskListParams,
    TaskListResult, WriteResult,
};
use claudemesh_schema::op::{MAX_KEY, MAX_TEXT, Op};
use claudemesh_schema::{ItemId, SessionId};
use std::sync::Arc;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::MeshCtx;

/// The mesh and session a write acts in: the named mesh, else the mesh hosting the named
/// session, else the only mesh.
fn actor(d: &Daemon, a: &Actor) -> Result<(Arc<MeshCtx>, SessionId), Error> {
    let m = match (&a.mesh, a.session) {
        (None, Some(s)) => match d.meshes().into_iter().find(|m| m.is_local(&s)) {
            Some(m) => m,
            None => d.select(None)?,
        },
        (sel, _) => d.select(sel.as_deref())?,
    };
    let s = a.session.unwrap_or(m.keys.session);
    if !m.is_local(&s) {
        return Err(Error::not_found(format!(
            "session {s} is not one of this daemon's sessions in mesh {}",
            m.name()
        )));
    }
    Ok((m, s))
}

/// Where a page resumes: its cursor decoded, or an invalid-parameters error.
pub(crate) fn position<T: serde::de::DeserializeOwned>(p: &Page) -> Result<Option<T>, Error> {
    p.position().map_err(|e| Error::invalid(e.to_string()))
}

fn check_text(what: &str, s: &str, max: usize) -> Result<(), Error> {
    if s.len() > max {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; the limit is {max}",
            s.len()
        )));
    }
    Ok(())
}

fn check_tags(tags: &[String]) -> Result<(), Error> {
    if tags.len() > 32 || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
        return Err(Error::invalid(
            "tags: at most 32, each 1 to 64 bytes".to_string(),
        ));
    }
    Ok(())
}

async fn write(
    d: &Arc<Daemon>,
    a: &Actor,
    op: Op,
    id: Option<ItemId>,
) -> Result<(Arc<MeshCtx>, WriteResult), Error> {
    let (m, s) = actor(d, a)?;
    let mut w = oplog::write(d, &m, Some(s), op, a.wait_ms).await?;
    w.id = id.map(|i| i.to_string());
    Ok((m, w))
}

/// Resolve an item id or unique prefix in `table`.
async fn find(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    table: &'static str,
    what: &str,
    id: &str,
) -> Result<ItemId, Error> {
    if let Ok(full) = id.parse::<ItemId>() {
        return Ok(full);
    }
    let (mesh, p) = (m.id, id.to_string());
    let hits = d
        .store
        .read(move |c| query::q_ids_like(c, table, mesh, &p))
        .await?;
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::not_found(format!("no {what} with id {id:?}"))),
        _ => Err(Error::ambiguous(format!(
            "{id:?} matches several {what}s; use more of the id"
        ))),
    }
}

pub(crate) async fn state_set(d: &Arc<Daemon>, p: StateSetParams) -> Result<WriteResult, Error> {
    if p.key.is_empty() || p.key.len() > MAX_KEY {
        return Err(Error::invalid(format!(
            "a state key is 1 to {MAX_KEY} bytes"
        )));
    }
    check_text("the value", &p.value.to_string(), MAX_TEXT)?;
    let op = Op::SetState {
        key: p.key,
        value: p.value,
    };
    Ok(write(d, &p.actor, op, None).await?.1)
}

pub(crate) async fn state_get(
    d: &Arc<Daemon>,
    p: StateQuery,
    prefix: bool,
) -> Result<StateResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let (mesh, hidden) = (m.id, m.hidden_writers());
    let after: Option<String> = position(&p.page)?;
    let (entries, next_cursor) = d
        .store
        .read(move |c| {
            let after = after.as_deref();
            if prefix {
                query::q_state(c, mesh, None, p.key.as_deref(), &hidden, after, &p.page)
            } else {
                let key = p.key.as_deref().unwrap_or_default();
                query::q_state(c, mesh, Some(key), None, &hidden, after, &p.page)
            }
        })
        .await?;
    Ok(StateResult {
        mesh,
        entries,
        next_cursor,
    })
}

pub(crate) async fn remember(d: &Arc<Daemon>, p: RememberParams) -> Result<WriteResult, Error> {
    if p.text.trim().is_empty() {
        return Err(Error::invalid("nothing to remember: the text is empty"));
    }
    check_text("the memory", &p.text, MAX_TEXT)?;
    check_tags(&p.tags)?;
    let id = ItemId::new();
    let op = Op::Remember {
        memory: id,
        text: p.text,
        tags: p.tags,
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

pub(crate) async fn recall(d: &Arc<Daemon>, p: RecallParams) -> Result<RecallResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let (mesh, hidden) = (m.id, m.hidden_writers());
    let limit = p.limit.unwrap_or(20).clamp(1, 1000);
    let after = p
        .cursor
        .as_deref()
        .map(page::decode)
        .transpose()
        .map_err(|e| Error::invalid(e.to_string()))?;
    let (memories, next_cursor) = d
        .store
        .read(move |c| query::q_recall(c, mesh, &p.query, &p.tags, limit, &hidden, after))
        .await?;
    Ok(RecallResult {
        mesh,
        memories,
        next_cursor,
    })
}

pub(crate) async fn forget(d: &Arc<Daemon>, p: ItemParams) -> Result<WriteResult, Error> {
    let (m, _) = actor(d, &p.actor)?;
    let id = find(d, &m, "memories", "memory", &p.id).await?;
    Ok(write(d, &p.actor, Op::Forget { memory: id }, Some(id))
        .await?
        .1)
}

pub(crate) async fn task_create(
    d: &Arc<Daemon>,
    p: TaskCreateParams,
) -> Result<WriteResult, Error> {
    if p.title.trim().is_empty() {
        return Err(Error::invalid("a task needs a title"));
    }
    check_text("the title", &p.title, 1024)?;
    check_text("the body", &p.body, MAX_TEXT)?;
    check_tags(&p.tags)?;
    let priority = p.priority.unwrap_or_else(|| "normal".into());
    if !["low", "normal", "high", "urgent"].contains(&priority.as_str()) {
        return Err(Error::invalid(format!(
            "priority {priority:?}: use low, normal, high or urgent"
        )));
    }
    let id = ItemId::new();
    let op = Op::CreateTask {
        task: id,
        title: p.title,
        body: p.body,
        priority,
        tags: p.tags,
        assignee: p.assignee.filter(|a| !a.is_empty()),
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

pub(crate) async fn task_claim(d: &Arc<Daemon>, p: ItemParams) -> Result<ClaimResult, Error> {
    let (m, session) = actor(d, &p.actor)?;
    let id = find(d, &m, "tasks", "task", &p.id).await?;
    let (m, write) = write(d, &p.actor, Op::ClaimTask { task: id }, Some(id)).await?;
    let task = task_now(d, &m, id).await?;
    let won = write
        .seq
        .map(|_| task.assignee_id == Some(session) && task.status != "open");
    Ok(ClaimResult { write, won, task })
}

pub(crate) async fn task_complete(d: &Arc<Daemon>, p: ItemParams) -> Result<WriteResult, Error> {
    let (m, _) = actor(d, &p.actor)?;
    let id = find(d, &m, "tasks", "task", &p.id).await?;
    check_text("the result", &p.result, MAX_TEXT)?;
    let op = Op::CompleteTask {
        task: id,
        result: p.result,
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

async fn task_now(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    id: ItemId,
) -> Result<claudemesh_schema::ipc::shared::Task, Error> {
    let mesh = m.id;
    d.store
        .read(move |c| query::q_task(c, mesh, id))
        .await?
        .ok_or_else(|| Error::not_found(format!("task {id} is not known here yet")))
}

pub(crate) async fn task_list(d: &Arc<Daemon>, p: TaskListParams) -> Result<TaskListResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    if let Some(s) = &p.status
        && !["open", "claimed", "done"].contains(&s.as_str())
    {
        return Err(Error::invalid(format!(
            "status {s:?}: use open, claimed or done"
        )));
    }
    let (mesh, hidden) = (m.id, m.hidden_writers());
    let after = position(&p.page)?;
    let (tasks, next_cursor) = d
        .store
        .read(move |c| {
            let (status, assignee) = (p.status.as_deref(), p.assignee.as_deref());
            query::q_tasks(c, mesh, status, assignee, &hidden, after, &p.page)
        })
        .await?;
    Ok(TaskListResult {
        mesh,
        tasks,
        next_cursor,
    })
}

pub(crate) async fn digest(
    d: &Arc<Daemon>,
    p: claudemesh_schema::ipc::methods::MeshParams,
) -> Result<DigestResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    // Ops queued for application count: wait for them.
    d.store.flush().await?;
    let mesh = m.id;
    Ok(d.store.read(move |c| query::q_digest(c, mesh)).await?)
}

pub(crate) async fn audit_verify(
    d: &Arc<Daemon>,
    p: claudemesh_schema::ipc::methods::MeshParams,
) -> Result<AuditResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    oplog::audit(d, &m).await
}

pub(crate) async fn link_pause(
    d: &Arc<Daemon>,
    p: LinkPauseParams,
) -> Result<serde_json::Value, Error> {
    let m = d.select(p.mesh.as_deref())?;
    m.paused.send_replace(p.paused);
    if !p.paused && !m.link.connected() {
        // A link waiting out its backoff tries again now.
        m.retry_now.notify_one();
    }
    tracing::info!(mesh = %m.id.short(), paused = p.paused, "relay link held down by request");
    Ok(serde_json::json!({ "mesh": m.id, "paused": p.paused }))
}

pub(crate) async fn reserve(d: &Arc<Daemon>, p: ReserveParams) -> Result<WriteResult, Error> {
    if p.patterns.is_empty() || p.patterns.len() > 64 {
        return Err(Error::invalid("reserve 1 to 64 file patterns"));
    }
    for pat in &p.patterns {
        if pat.is_empty() || pat.len() > 512 || pat.starts_with('/') {
            return Err(Error::invalid(format!(
                "pattern {pat:?}: use a relative path or glob (*, ?, **), at most 512 bytes"
            )));
        }
    }
    check_text("the reason", &p.reason, 1024)?;
    let id = ItemId::new();
    let op = Op::ReserveFiles {
        reservation: id,
        patterns: p.patterns,
        exclusive: p.exclusive,
        ttl_secs: p.ttl_secs.unwrap_or(3600).clamp(1, 30 * 86_400),
        reason: p.reason,
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

pub(crate) async fn release(d: &Arc<Daemon>, p: ItemParams) -> Result<WriteResult, Error> {
    let (m, _) = actor(d, &p.actor)?;
    let id = find(d, &m, "reservations", "reservation", &p.id).await?;
    Ok(
        write(d, &p.actor, Op::ReleaseFiles { reservation: id }, Some(id))
            .await?
            .1,
    )
}

pub(crate) async fn reservations(
    d: &Arc<Daemon>,
    p: ReservationQuery,
) -> Result<ReservationsResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let mesh = m.id;
    let now = claudemesh_schema::now_ms();
    let after = position(&p.page)?;
    let (reservations, next_cursor) = d
        .store
        .read(move |c| query::q_reservations(c, mesh, p.all, now, after, &p.page))
        .await?;
    Ok(ReservationsResult {
        mesh,
        reservations,
        next_cursor,
    })
}

pub(crate) async fn share_context(
    d: &Arc<Daemon>,
    p: ShareContextParams,
) -> Result<WriteResult, Error> {
    if p.summary.trim().is_empty() {
        return Err(Error::invalid("a context needs a summary"));
    }
    let size: usize = p.summary.len()
        + p.files_read.iter().map(String::len).sum::<usize>()
        + p.key_findings.iter().map(String::len).sum::<usize>();
    if size > MAX_TEXT {
        return Err(Error::invalid(format!(
            "this context is {size} bytes; the limit is {MAX_TEXT}"
        )));
    }
    check_tags(&p.tags)?;
    let id = ItemId::new();
    let op = Op::ShareContext {
        context: id,
        summary: p.summary,
        files_read: p.files_read,
        key_findings: p.key_findings,
        tags: p.tags,
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

pub(crate) async fn contexts(d: &Arc<Daemon>, p: ContextQuery) -> Result<ContextsResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let (mesh, hidden) = (m.id, m.hidden_writers());
    let after = position(&p.page)?;
    let (contexts, next_cursor) = d
        .store
        .read(move |c| {
            let q = p.query.as_deref().filter(|q| !q.is_empty());
            query::q_contexts(c, mesh, q, &hidden, after, &p.page)
        })
        .await?;
    Ok(ContextsResult {
        mesh,
        contexts,
        next_cursor,
    })
}

pub(crate) async fn share_skill(
    d: &Arc<Daemon>,
    p: ShareSkillParams,
) -> Result<WriteResult, Error> {
    let valid = !p.name.is_empty()
        && p.name.len() <= 64
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(Error::invalid(
            "a skill name is 1 to 64 letters, digits, '-' or '_'",
        ));
    }
    check_text("the instructions", &p.instructions, MAX_TEXT)?;
    check_text("the description", &p.description, 1024)?;
    check_tags(&p.tags)?;
    let op = Op::ShareSkill {
        name: p.name,
        description: p.description,
        instructions: p.instructions,
        tags: p.tags,
        when_to_use: p.when_to_use,
    };
    Ok(write(d, &p.actor, op, None).await?.1)
}

pub(crate) async fn remove_skill(d: &Arc<Daemon>, p: ItemParams) -> Result<WriteResult, Error> {
    let (m, _) = actor(d, &p.actor)?;
    let known = skills(
        d,
        SkillQuery {
            mesh: Some(m.id.to_string()),
            name: Some(p.id.clone()),
            query: None,
            page: Page::default(),
        },
    )
    .await?;
    if known.skills.is_empty() {
        return Err(Error::not_found(format!("no skill named {:?}", p.id)));
    }
    Ok(write(d, &p.actor, Op::RemoveSkill { name: p.id }, None)
        .await?
        .1)
}

pub(crate) async fn skills(d: &Arc<Daemon>, p: SkillQuery) -> Result<SkillsResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let (mesh, hidden) = (m.id, m.hidden_writers());
    let after: Option<String> = position(&p.page)?;
    let (skills, next_cursor) = d
        .store
        .read(move |c| {
            query::q_skills(
                c,
                mesh,
                p.name.as_deref(),
                p.query.as_deref().filter(|q| !q.is_empty()),
                &hidden,
                after.as_deref(),
                &p.page,
            )
        })
        .await?;
    Ok(SkillsResult {
        mesh,
        skills,
        next_cursor,
    })
}

pub(crate) async fn schedule(
    d: &Arc<Daemon>,
    p: claudemesh_schema::ipc::shared::ScheduleParams,
) -> Result<WriteResult, Error> {
    if p.message.trim().is_empty() {
        return Err(Error::invalid("a reminder needs a message"));
    }
    check_text("the message", &p.message, crate::delivery::MAX_BODY)?;
    let now = claudemesh_schema::now_ms();
    let (deliver_at, cron) = schedule_fields(p.in_seconds, p.deliver_at, p.cron, now)?;
    let id = ItemId::new();
    let op = Op::ScheduleReminder {
        reminder: id,
        to: p.to.unwrap_or_default().trim().to_string(),
        body: p.message,
        deliver_at,
        cron,
    };
    Ok(write(d, &p.actor, op, Some(id)).await?.1)
}

pub(crate) async fn cancel(d: &Arc<Daemon>, p: ItemParams) -> Result<WriteResult, Error> {
    let (m, _) = actor(d, &p.actor)?;
    let id = find(d, &m, "reminders", "reminder", &p.id).await?;
    Ok(
        write(d, &p.actor, Op::CancelReminder { reminder: id }, Some(id))
            .await?
            .1,
    )
}

/// Push `state_change` notifications for as long as the connection lives. A watcher too
/// slow to keep up is told how many changes it missed (`lagged`), never blocked on.
pub(crate) async fn state_watch(
    d: Arc<Daemon>,
    only: Option<claudemesh_schema::MeshId>,
    prefix: Option<String>,
    tx: tokio::sync::mpsc::Sender<claudemesh_schema::ipc::Notification>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = d.state_events.subscribe();
    loop {
        let ev = tokio::select! {
            r = rx.recv() => r,
            _ = d.shutdown.cancelled() => return,
        };
        let params = match ev {
            Ok(c) => {
                if only.is_some_and(|m| m != c.mesh)
                    || prefix.as_deref().is_some_and(|p| !c.key.starts_with(p))
                {
                    continue;
                }
                serde_json::to_value(&c).unwrap_or(serde_json::Value::Null)
            }
            Err(RecvError::Lagged(n)) => serde_json::json!({ "lagged": n }),
            Err(RecvError::Closed) => return,
        };
        let n = claudemesh_schema::ipc::Notification {
            jsonrpc: "2.0".into(),
            method: claudemesh_schema::ipc::shared::NOTIFY_STATE_CHANGE.into(),
            params,
        };
        if tx.send(n).await.is_err() {
            return;
        }
    }
}

/// Check a schedule and turn it into the op's fields.
pub(crate) fn schedule_fields(
    in_seconds: Option<u64>,
    deliver_at: Option<i64>,
    cron: Option<String>,
    now: i64,
) -> Result<(Option<i64>, Option<String>), Error> {
    match (
        in_seconds,
        deliver_at,
        cron.filter(|c| !c.trim().is_empty()),
    ) {
        (Some(s), None, None) => Ok((Some(now + (s.min(10 * 365 * 86_400) as i64) * 1000), None)),
        (None, Some(at), None) => Ok((Some(at), None)),
        (None, None, Some(c)) => {
            let parsed: cron::Cron = c.parse().map_err(Error::invalid)?;
            if parsed.next_after(now).is_none() {
                return Err(Error::invalid(format!("cron {c:?} never fires")));
            }
            Ok((None, Some(c.trim().to_string())))
        }
        _ => Err(Error::invalid(
            "give exactly one of in_seconds, deliver_at or cron",
        )),
    }
}
