//! The shared-state commands: `state`, `remember`, `recall`, `forget`, `task`, `audit`,
//! `debug`. All go through the daemon (which answers reads from its local copy without the
//! network).

use claudemesh_schema::ipc::methods::MeshParams;
use claudemesh_schema::ipc::page::Page;
use claudemesh_schema::ipc::shared::{
    self as sh, Actor, AuditResult, ClaimResult, DigestResult, ItemParams, LinkPauseParams,
    RecallParams, RecallResult, RememberParams, ReservationQuery, ReservationsResult,
    ReserveParams, StateQuery, StateResult, StateSetParams, TaskCreateParams, TaskListParams,
    TaskListResult, WriteResult,
};
use serde_json::Value;

use crate::cli::{
    AuditAction, ContextAction, DebugAction, ItemArgs, MeshJson, RecallArgs, RememberArgs,
    RemindArgs, ReservationsArgs, ReserveArgs, SkillAction, StateAction, TaskAction,
};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::output;

fn actor(mesh: Option<String>) -> Actor {
    Actor {
        mesh,
        session: None,
        wait_ms: None,
    }
}

fn tags(s: Option<String>) -> Vec<String> {
    s.unwrap_or_default()
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn written(what: &str, w: &WriteResult, json: bool) {
    if json {
        output::json("result", w);
        return;
    }
    let id =
        w.id.as_deref()
            .map(|i| format!(" {}", &i[..8.min(i.len())]))
            .unwrap_or_default();
    match w.seq {
        Some(seq) => say!("{what}{id} (seq {seq})"),
        None => say!("{what}{id} (pending: saved here, published when the relay link is up)"),
    }
}

/// One call to the daemon (started if it is not running).
pub(crate) async fn call<R: serde::de::DeserializeOwned>(
    method: &str,
    params: impl serde::Serialize,
) -> Result<R, Failure> {
    let p = paths()?;
    let mut c = client(&p).await?;
    Ok(c.call(method, params).await?)
}

/// Items asked for per page: the most a page may hold (its byte budget still bounds it).
const PAGE: u32 = claudemesh_schema::ipc::page::MAX_LIMIT;

/// A list shown as the daemon pages it out (`claudemesh_schema::ipc::page`): each page is
/// printed as it arrives, so a list of any length starts at once and is held whole neither
/// here nor in the daemon. With `json`, the pages make one JSON object with the whole list
/// under that key, as before paging; else `show` prints each page.
async fn list<R, P>(
    method: &str,
    params: impl Fn(Page) -> P,
    json: Option<&'static str>,
    next: impl Fn(&R) -> Option<String>,
    mut show: impl FnMut(&R),
) -> Result<(), Failure>
where
    R: serde::de::DeserializeOwned + serde::Serialize,
    P: serde::Serialize,
{
    let p = paths()?;
    let mut c = client(&p).await?;
    let mut out = json.map(output::JsonList::new);
    let mut cursor = None;
    loop {
        let r: R = c.call(method, params(Page::after(cursor, PAGE))).await?;
        match &mut out {
            Some(j) => j.page(&r),
            None => show(&r),
        }
        cursor = next(&r);
        if cursor.is_none() {
            break;
        }
    }
    if let Some(j) = out {
        j.end();
    }
    Ok(())
}

/// A table printed page by page, or `empty` when the list has nothing.
struct Rows {
    table: output::Table,
    any: bool,
    empty: &'static str,
}

impl Rows {
    fn new(header: &[&str], empty: &'static str) -> Self {
        Self {
            table: output::Table::stdout(header),
            any: false,
            empty,
        }
    }

    fn page(&mut self, rows: Vec<Vec<String>>) {
        if !rows.is_empty() {
            self.any = true;
            self.table.page(rows);
        }
    }

    fn end(self, json: bool) {
        if !self.any && !json {
            out!("{}", self.empty);
        }
    }
}

pub(crate) async fn state(action: StateAction) -> Res {
    match action {
        StateAction::Get { key, opts } => {
            let r: StateResult = call(
                sh::STATE_GET,
                StateQuery {
                    mesh: opts.mesh,
                    key: Some(key.clone()),
                    page: Page::default(),
                },
            )
            .await?;
            let Some(e) = r.entries.first() else {
                return Err(Failure::new(
                    Exit::NotFound,
                    format!("no key {key:?} in this mesh"),
                ));
            };
            if opts.json {
                output::json("entry", e);
            } else {
                match &e.value {
                    Value::String(s) => out!("{s}"),
                    v => out!("{v}"),
                }
            }
            Ok(())
        }
        StateAction::Set { key, value, opts } => {
            let text = value.join(" ");
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let what = if value.is_null() {
                format!("deleted {key}")
            } else {
                format!("set {key}")
            };
            let w: WriteResult = call(
                sh::STATE_SET,
                StateSetParams {
                    actor: actor(opts.mesh),
                    key: key.clone(),
                    value,
                },
            )
            .await?;
            written(&what, &w, opts.json);
            Ok(())
        }
        StateAction::Watch { prefix, opts } => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let _: Value = c
                .call(
                    sh::STATE_WATCH,
                    sh::WatchParams {
                        mesh: opts.mesh,
                        prefix,
                    },
                )
                .await?;
            use std::io::Write as _;
            note!("watching shared state (Ctrl-C stops)");
            while let Ok(n) = c.notification().await {
                if n.method != sh::NOTIFY_STATE_CHANGE {
                    continue;
                }
                if opts.json {
                    out!("{}", n.params);
                } else if let Some(missed) = n.params.get("lagged") {
                    out!("(missed {missed} changes: this watcher fell behind)");
                } else if let Ok(ch) = serde_json::from_value::<sh::StateChange>(n.params) {
                    let v = match ch.value {
                        Value::Null => "(deleted)".to_string(),
                        Value::String(s) => s,
                        v => v.to_string(),
                    };
                    out!("{} = {v}  (by {}, seq {})", ch.key, ch.by, ch.seq);
                }
                let _ = std::io::stdout().flush();
            }
            Err(Failure::new(
                Exit::DaemonUnavailable,
                "the daemon closed the connection",
            ))
        }
        StateAction::List { prefix, opts } => {
            let mut rows = Rows::new(output::STATE_HEADER, output::STATE_EMPTY);
            list(
                sh::STATE_LIST,
                |page| StateQuery {
                    mesh: opts.mesh.clone(),
                    key: prefix.clone(),
                    page,
                },
                opts.json.then_some("entries"),
                |r: &StateResult| r.next_cursor.clone(),
                |r| rows.page(output::state_rows(&r.entries)),
            )
            .await?;
            rows.end(opts.json);
            Ok(())
        }
    }
}

pub(crate) async fn remember(a: RememberArgs) -> Res {
    let RememberArgs {
        text,
        tags: t,
        opts,
    } = a;
    let w: WriteResult = call(
        sh::REMEMBER,
        RememberParams {
            actor: actor(opts.mesh),
            text: text.join(" "),
            tags: tags(t),
        },
    )
    .await?;
    written("remembered", &w, opts.json);
    Ok(())
}

pub(crate) async fn recall(a: RecallArgs) -> Res {
    let RecallArgs {
        query,
        tags,
        limit,
        opts,
    } = a;
    // `--limit` is how many in all; pages are fetched until it is reached.
    let p = paths()?;
    let mut c = client(&p).await?;
    let mut json = opts.json.then(|| output::JsonList::new("memories"));
    let (mut left, mut cursor, mut any) = (limit.max(1), None, false);
    loop {
        let r: RecallResult = c
            .call(
                sh::RECALL,
                RecallParams {
                    mesh: opts.mesh.clone(),
                    query: query.join(" "),
                    tags: tags.clone(),
                    limit: Some(left.min(PAGE)),
                    cursor,
                },
            )
            .await?;
        left = left.saturating_sub(r.memories.len() as u32);
        any |= !r.memories.is_empty();
        match &mut json {
            Some(j) => j.page(&r),
            None => output::memories(&r.memories),
        }
        cursor = r.next_cursor;
        if cursor.is_none() || left == 0 {
            break;
        }
    }
    match json {
        Some(j) => j.end(),
        None if !any => out!("{}", output::MEMORIES_EMPTY),
        None => {}
    }
    Ok(())
}

fn item(id: String, opts: &MeshJson, result: String) -> ItemParams {
    ItemParams {
        actor: actor(opts.mesh.clone()),
        id,
        result,
    }
}

pub(crate) async fn forget(a: ItemArgs) -> Res {
    let ItemArgs { id, opts } = a;
    let w: WriteResult = call(sh::FORGET, item(id, &opts, String::new())).await?;
    written("forgot", &w, opts.json);
    Ok(())
}

pub(crate) async fn task(action: TaskAction) -> Res {
    match action {
        TaskAction::Create {
            title,
            body,
            priority,
            tags: t,
            assignee,
            opts,
        } => {
            let w: WriteResult = call(
                sh::TASK_CREATE,
                TaskCreateParams {
                    actor: actor(opts.mesh),
                    title: title.join(" "),
                    body,
                    priority: Some(priority),
                    tags: tags(t),
                    assignee,
                },
            )
            .await?;
            written("created task", &w, opts.json);
            Ok(())
        }
        TaskAction::Claim(a) => {
            let r: ClaimResult = call(sh::TASK_CLAIM, item(a.id, &a.opts, String::new())).await?;
            if a.opts.json {
                output::json("result", &r);
            } else {
                let t = &r.task;
                match r.won {
                    Some(true) => out!("claimed task {} \"{}\"", t.id.short(), t.title),
                    Some(false) => {}
                    None => out!(
                        "claim on task {} \"{}\" is pending: it is decided by log order when the relay link is up; you will be told if it loses",
                        t.id.short(),
                        t.title
                    ),
                }
            }
            if r.won == Some(false) {
                return Err(Failure::new(
                    Exit::Conflict,
                    format!(
                        "task {} \"{}\" was claimed first by {}",
                        r.task.id.short(),
                        r.task.title,
                        r.task.assignee.clone().unwrap_or_default()
                    ),
                ));
            }
            Ok(())
        }
        TaskAction::Complete { id, result, opts } => {
            let w: WriteResult = call(sh::TASK_COMPLETE, item(id, &opts, result)).await?;
            written("completed task", &w, opts.json);
            Ok(())
        }
        TaskAction::List {
            status,
            assignee,
            opts,
        } => {
            let mut rows = Rows::new(output::TASKS_HEADER, output::TASKS_EMPTY);
            list(
                sh::TASK_LIST,
                |page| TaskListParams {
                    mesh: opts.mesh.clone(),
                    status: status.clone(),
                    assignee: assignee.clone(),
                    page,
                },
                opts.json.then_some("tasks"),
                |r: &TaskListResult| r.next_cursor.clone(),
                |r| rows.page(output::task_rows(&r.tasks)),
            )
            .await?;
            rows.end(opts.json);
            Ok(())
        }
    }
}

pub(crate) async fn audit(action: AuditAction) -> Res {
    let AuditAction::Verify(opts) = action;
    let r: AuditResult = call(sh::AUDIT_VERIFY, MeshParams { mesh: opts.mesh }).await?;
    if opts.json {
        output::json("audit", &r);
    } else if let Some(seq) = r.first_broken {
        out!(
            "BROKEN at seq {seq}: {}",
            r.problem.clone().unwrap_or_default()
        );
    } else {
        let relay = r
            .relay_head
            .map(|h| format!("relay head {h}"))
            .unwrap_or_else(|| "relay not checked".into());
        out!(
            "ok: {} ops chain correctly (local head {}, {relay}){}",
            r.checked,
            r.local_head,
            r.problem
                .as_deref()
                .map(|p| format!("; {p}"))
                .unwrap_or_default()
        );
    }
    match r.first_broken {
        Some(seq) => Err(Failure::new(
            Exit::Error,
            if opts.json {
                String::new()
            } else {
                format!("the op log is broken at seq {seq}")
            },
        )),
        None => Ok(()),
    }
}

pub(crate) async fn debug(action: DebugAction) -> Res {
    match action {
        DebugAction::Digest(opts) => {
            let r: DigestResult = call(sh::DIGEST, MeshParams { mesh: opts.mesh }).await?;
            if opts.json {
                output::json("digest", &r);
            } else {
                out!("{} seq {} pending {}", r.digest, r.seq, r.pending);
            }
            Ok(())
        }
        DebugAction::Clock { advance } => {
            let secs = crate::cli::parse_duration(&advance)?;
            let _: Value = call(
                sh::DEBUG_CLOCK,
                sh::ClockParams {
                    advance_ms: (secs as i64).saturating_mul(1000),
                },
            )
            .await?;
            Ok(())
        }
        DebugAction::Link { state, mesh } => {
            let _: Value = call(
                sh::LINK_PAUSE,
                LinkPauseParams {
                    mesh,
                    paused: state == "down",
                },
            )
            .await?;
            Ok(())
        }
    }
}

pub(crate) async fn reserve(a: ReserveArgs) -> Res {
    let ttl = crate::cli::parse_duration(&a.ttl)?;
    let w: WriteResult = call(
        sh::RESERVE,
        ReserveParams {
            actor: actor(a.opts.mesh.clone()),
            patterns: a.patterns.clone(),
            exclusive: !a.shared,
            ttl_secs: Some(ttl.max(1)),
            reason: a.reason,
        },
    )
    .await?;
    if a.opts.json {
        output::json("result", &w);
        return Ok(());
    }
    let what = format!("reserved {}", a.patterns.join(", "));
    if w.seq.is_none() {
        written(&what, &w, false);
        return Ok(());
    }
    // Sequenced: say whether it held against the others.
    let mut mine = None;
    list(
        sh::RESERVATIONS,
        |page| ReservationQuery {
            mesh: a.opts.mesh.clone(),
            all: true,
            page,
        },
        None,
        |r: &ReservationsResult| r.next_cursor.clone(),
        |r| {
            mine = r
                .reservations
                .iter()
                .find(|x| w.id.as_deref() == Some(x.id.to_string().as_str()))
                .cloned()
                .or(mine.take());
        },
    )
    .await?;
    let mine = mine.as_ref();
    match mine {
        Some(x) if x.status == "refused" => Err(Failure::new(
            Exit::Conflict,
            format!(
                "reservation refused: {}",
                x.conflict.clone().unwrap_or_default()
            ),
        )),
        _ => {
            written(&what, &w, false);
            Ok(())
        }
    }
}

pub(crate) async fn release(a: ItemArgs) -> Res {
    let ItemArgs { id, opts } = a;
    let w: WriteResult = call(sh::RELEASE, item(id, &opts, String::new())).await?;
    written("released", &w, opts.json);
    Ok(())
}

pub(crate) async fn reservations(a: ReservationsArgs) -> Res {
    let ReservationsArgs { all, opts } = a;
    let mut rows = Rows::new(output::RESERVATIONS_HEADER, output::RESERVATIONS_EMPTY);
    list(
        sh::RESERVATIONS,
        |page| ReservationQuery {
            mesh: opts.mesh.clone(),
            all,
            page,
        },
        opts.json.then_some("reservations"),
        |r: &ReservationsResult| r.next_cursor.clone(),
        |r| rows.page(output::reservation_rows(&r.reservations)),
    )
    .await?;
    rows.end(opts.json);
    Ok(())
}

pub(crate) async fn remind(a: RemindArgs) -> Res {
    let words: Vec<&str> = a.message.iter().map(String::as_str).collect();
    let scheduling = [
        a.after.is_some().then_some("--in"),
        a.at.is_some().then_some("--at"),
        a.cron.is_some().then_some("--cron"),
        a.to.is_some().then_some("--to"),
    ];
    let listing = matches!(words.as_slice(), ["list"]);
    if let ["list"] | ["cancel", _] = words.as_slice()
        && let Some(flag) = scheduling.iter().flatten().next()
    {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "`remind {}` takes no {flag}; to schedule a reminder whose text starts with that \
                 word, quote the whole text",
                words[0]
            ),
        ));
    }
    if a.all && !listing {
        return Err(Failure::new(Exit::Usage, "--all goes with `remind list`"));
    }
    match words.as_slice() {
        ["list"] => {
            let mut rows = Rows::new(output::REMINDERS_HEADER, output::REMINDERS_EMPTY);
            list(
                sh::SCHEDULED,
                |page| sh::ScheduledQuery {
                    mesh: a.opts.mesh.clone(),
                    all: a.all,
                    page,
                },
                a.opts.json.then_some("reminders"),
                |r: &sh::ScheduledResult| r.next_cursor.clone(),
                |r| rows.page(output::reminder_rows(&r.reminders)),
            )
            .await?;
            rows.end(a.opts.json);
            return Ok(());
        }
        ["cancel", id] => {
            let w: WriteResult =
                call(sh::CANCEL, item(id.to_string(), &a.opts, String::new())).await?;
            written("cancelled", &w, a.opts.json);
            return Ok(());
        }
        _ => {}
    }
    let in_seconds = a
        .after
        .as_deref()
        .map(crate::cli::parse_duration)
        .transpose()?;
    let deliver_at = match a.at.as_deref() {
        None => None,
        Some(s) => Some(match s.parse::<i64>() {
            Ok(secs) => secs.saturating_mul(1000),
            Err(_) => claudemesh_daemon::parse_rfc3339(s).ok_or_else(|| {
                Failure::new(
                    Exit::Usage,
                    format!("--at {s:?}: use RFC 3339 (2026-11-23T18:00:00Z) or unix seconds"),
                )
            })?,
        }),
    };
    if let Some(at) = deliver_at
        && at <= claudemesh_schema::now_ms()
    {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "--at {}: that time has passed (times are UTC unless they say otherwise)",
                a.at.as_deref().unwrap_or_default()
            ),
        ));
    }
    if in_seconds.is_none() && deliver_at.is_none() && a.cron.is_none() {
        return Err(Failure::new(
            Exit::Usage,
            "say when: --in 30m, --at <time> or --cron \"0 9 * * 1-5\"",
        ));
    }
    let w: WriteResult = call(
        sh::SCHEDULE,
        sh::ScheduleParams {
            actor: actor(a.opts.mesh),
            message: a.message.join(" "),
            to: a.to,
            in_seconds,
            deliver_at,
            cron: a.cron,
        },
    )
    .await?;
    written("scheduled reminder", &w, a.opts.json);
    Ok(())
}

pub(crate) async fn skill(action: SkillAction) -> Res {
    match action {
        SkillAction::Share {
            name,
            description,
            file,
            when,
            tags: t,
            opts,
        } => {
            let instructions = match file {
                Some(f) => std::fs::read_to_string(&f).map_err(|e| {
                    Failure::new(Exit::Usage, format!("cannot read {}: {e}", f.display()))
                })?,
                None => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                        Failure::new(Exit::Usage, format!("cannot read stdin: {e}"))
                    })?;
                    s
                }
            };
            if instructions.trim().is_empty() {
                return Err(Failure::new(
                    Exit::Usage,
                    "no instructions: pass --file or pipe them in",
                ));
            }
            let w: WriteResult = call(
                sh::SKILL_SHARE,
                sh::ShareSkillParams {
                    actor: actor(opts.mesh),
                    name: name.clone(),
                    description,
                    instructions,
                    tags: tags(t),
                    when_to_use: when,
                },
            )
            .await?;
            written(&format!("shared skill {name}"), &w, opts.json);
            Ok(())
        }
        SkillAction::Get { name, opts } => {
            let r: sh::SkillsResult = call(
                sh::SKILLS,
                sh::SkillQuery {
                    mesh: opts.mesh,
                    name: Some(name.clone()),
                    query: None,
                    page: Page::default(),
                },
            )
            .await?;
            let Some(s) = r.skills.first() else {
                return Err(Failure::new(
                    Exit::NotFound,
                    format!("no skill named {name:?}"),
                ));
            };
            if opts.json {
                output::json("skill", s);
            } else {
                out!("{}", s.instructions);
            }
            Ok(())
        }
        SkillAction::List { query, opts } => {
            let mut any = false;
            list(
                sh::SKILLS,
                |page| sh::SkillQuery {
                    mesh: opts.mesh.clone(),
                    name: None,
                    query: query.clone(),
                    page,
                },
                opts.json.then_some("skills"),
                |r: &sh::SkillsResult| r.next_cursor.clone(),
                |r| {
                    any |= !r.skills.is_empty();
                    let lines: String = r
                        .skills
                        .iter()
                        .map(|s| format!("{}  — {} (by {})\n", s.name, s.description, s.author))
                        .collect();
                    output::raw(lines.as_bytes());
                },
            )
            .await?;
            if !any && !opts.json {
                out!(
                    "No skills. Share one with `claudemesh skill share <name> --description D --file F`."
                );
            }
            Ok(())
        }
        SkillAction::Remove { name, opts } => {
            let w: WriteResult =
                call(sh::SKILL_REMOVE, item(name.clone(), &opts, String::new())).await?;
            written(&format!("removed skill {name}"), &w, opts.json);
            Ok(())
        }
    }
}

pub(crate) async fn context(action: ContextAction) -> Res {
    match action {
        ContextAction::Share {
            summary,
            files,
            findings,
            tags: t,
            opts,
        } => {
            let w: WriteResult = call(
                sh::CONTEXT_SHARE,
                sh::ShareContextParams {
                    actor: actor(opts.mesh),
                    summary: summary.join(" "),
                    files_read: tags(files),
                    key_findings: findings,
                    tags: tags(t),
                },
            )
            .await?;
            written("shared context", &w, opts.json);
            Ok(())
        }
        ContextAction::List { query, opts } => {
            let mut any = false;
            list(
                sh::CONTEXTS,
                |page| sh::ContextQuery {
                    mesh: opts.mesh.clone(),
                    query: query.clone(),
                    page,
                },
                opts.json.then_some("contexts"),
                |r: &sh::ContextsResult| r.next_cursor.clone(),
                |r| {
                    any |= !r.contexts.is_empty();
                    for c in &r.contexts {
                        out!(
                            "{} ({}, {})",
                            c.summary,
                            c.author,
                            output::ago(c.created_at)
                        );
                        if !c.files_read.is_empty() {
                            out!("  files: {}", c.files_read.join(", "));
                        }
                        for f in &c.key_findings {
                            out!("  - {f}");
                        }
                    }
                },
            )
            .await?;
            if !any && !opts.json {
                out!("No contexts shared yet.");
            }
            Ok(())
        }
    }
}
