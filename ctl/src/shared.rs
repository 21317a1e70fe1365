//! The shared-state commands: `state`, `remember`, `recall`, `forget`, `task`, `audit`,
//! `debug`. All go through the daemon (which answers reads from its local copy without the
//! network).

use claudemesh_schema::ipc::methods::MeshParams;
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

async fn call<R: serde::de::DeserializeOwned>(
    method: &str,
    params: impl serde::Serialize,
) -> Result<R, Failure> {
    let p = paths()?;
    let mut c = client(&p).await?;
    Ok(c.call(method, params).await?)
}

pub(crate) async fn state(action: StateAction) -> Res {
    match action {
        StateAction::Get { key, opts } => {
            let r: StateResult = call(
                sh::STATE_GET,
                StateQuery {
                    mesh: opts.mesh,
                    key: Some(key.clone()),
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
            let r: StateResult = call(
                sh::STATE_LIST,
                StateQuery {
                    mesh: opts.mesh,
                    key: prefix,
                },
            )
            .await?;
            if opts.json {
                output::json("entries", &r);
            } else {
                output::state(&r.entries);
            }
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
    let r: RecallResult = call(
        sh::RECALL,
        RecallParams {
            mesh: opts.mesh,
            query: query.join(" "),
            tags,
            limit: Some(limit),
        },
    )
    .await?;
    if opts.json {
        output::json("memories", &r);
    } else {
        output::memories(&r.memories);
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
            let r: TaskListResult = call(
                sh::TASK_LIST,
                TaskListParams {
                    mesh: opts.mesh,
                    status,
                    assignee,
                },
            )
            .await?;
            if opts.json {
                output::json("tasks", &r);
            } else {
                output::tasks(&r.tasks);
            }
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
    let r: ReservationsResult = call(
        sh::RESERVATIONS,
        ReservationQuery {
            mesh: a.opts.mesh,
            all: true,
        },
    )
    .await?;
    let mine = r
        .reservations
        .iter()
        .find(|x| w.id.as_deref() == Some(x.id.to_string().as_str()));
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
    let r: ReservationsResult = call(
        sh::RESERVATIONS,
        ReservationQuery {
            mesh: opts.mesh,
            all,
        },
    )
    .await?;
    if opts.json {
        output::json("reservations", &r);
    } else {
        output::reservations(&r.reservations);
    }
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
            let r: sh::ScheduledResult = call(
                sh::SCHEDULED,
                sh::ScheduledQuery {
                    mesh: a.opts.mesh,
                    all: a.all,
                },
            )
            .await?;
            if a.opts.json {
                output::json("reminders", &r);
            } else {
                output::reminders(&r.reminders);
            }
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
            let r: sh::SkillsResult = call(
                sh::SKILLS,
                sh::SkillQuery {
                    mesh: opts.mesh,
                    name: None,
                    query,
                },
            )
            .await?;
            if opts.json {
                output::json("skills", &r);
            } else if r.skills.is_empty() {
                out!(
                    "No skills. Share one with `claudemesh skill share <name> --description D --file F`."
                );
            } else {
                for s in &r.skills {
                    out!("{}  — {} (by {})", s.name, s.description, s.author);
                }
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
            let r: sh::ContextsResult = call(
                sh::CONTEXTS,
                sh::ContextQuery {
                    mesh: opts.mesh,
                    query,
                },
            )
            .await?;
            if opts.json {
                output::json("contexts", &r);
            } else if r.contexts.is_empty() {
                out!("No contexts shared yet.");
            } else {
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
            }
            Ok(())
        }
    }
}
