//! The fold: how one sequenced op changes the shared-state tables.
//!
//! Deterministic by construction: it reads only the tables and the op (with the relay's
//! sequencing time `at`, never this machine's clock or who is local), so every daemon that
//! applies the same log ends with the same rows. Semantic refusals (a claim on a taken
//! task, an overlapping exclusive reservation) are not errors: they are folded the same
//! way everywhere and reported as [`Notice`]s to the author, when it is local.
//!
//! Own writes are also applied ahead of the log ([`apply_pending`]) where that cannot
//! conflict: items with fresh ids (memories, tasks, contexts) get a row with `seq NULL`,
//! confirmed in place when the op comes back sequenced. Everything else shows early as a
//! read-time overlay of the op outbox (state keys, forgotten memories).

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::op::{Op, OpBody, may_change_skill};
use claudemesh_schema::roster::Role;
use claudemesh_schema::{ItemId, MeshId, SessionId};
use rusqlite::{OptionalExtension, Transaction, params};

/// Something the author of an op should be told (a lost race).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) session: SessionId,
    pub(crate) kind: &'static str,
    pub(crate) text: String,
}

/// The applied op's context.
pub(crate) struct Applying<'a> {
    pub(crate) mesh: MeshId,
    pub(crate) seq: u64,
    pub(crate) at: i64,
    pub(crate) author: &'a MemberKey,
    /// The author's role at the op's standing in the roster (it is a member there: ops of
    /// non-members are never folded).
    pub(crate) role: Role,
    pub(crate) body: &'a OpBody,
}

/// An op author's claimed name as stored and shown: the name rules applied (a name that
/// breaks them, or takes a bracket or this machine's own voice, is `unnamed`).
pub(crate) fn shown_name(claimed: &str) -> String {
    claudemesh_schema::names::from_peer(claimed).unwrap_or_else(|| "unnamed".into())
}

/// Peer text inside a notice this daemon writes: one line, quoted, bounded.
fn quoted(s: &str) -> String {
    format!(
        "\"{}\"",
        claudemesh_schema::names::one_line(s, 120).replace('"', "'")
    )
}

fn tags_json(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// Fold one sequenced op. Returns notices for the op's author.
pub(crate) fn apply(tx: &Transaction<'_>, a: &Applying<'_>) -> rusqlite::Result<Vec<Notice>> {
    let mesh = a.mesh.as_bytes();
    let seq = a.seq as i64;
    // The author's name as the op claims it, held to the name rules (the same on every
    // daemon): it is shown as text only, never trusted.
    let name = shown_name(&a.body.name);
    let name = name.as_str();
    let notice = |kind: &'static str, text: String| {
        vec![Notice {
            session: a.body.session,
            kind,
            text,
        }]
    };
    match &a.body.op {
        Op::SetState { key, value } => {
            if value.is_null() {
                tx.execute(
                    "DELETE FROM state_kv WHERE mesh = ?1 AND key = ?2",
                    params![mesh, key],
                )?;
            } else {
                tx.execute(
                    "INSERT INTO state_kv (mesh, key, value, author, author_name, updated_at, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (mesh, key) DO UPDATE SET value = excluded.value,
                       author = excluded.author, author_name = excluded.author_name,
                       updated_at = excluded.updated_at, seq = excluded.seq",
                    params![mesh, key, value.to_string(), a.author.0, name, a.at, seq],
                )?;
            }
        }
        Op::Remember { .. } | Op::CreateTask { .. } | Op::ShareContext { .. } => {
            insert_item(tx, &a.mesh, a.author, a.body, a.at, Some(seq))?;
        }
        Op::Forget { memory } => {
            tx.execute(
                "DELETE FROM memories WHERE mesh = ?1 AND id = ?2",
                params![mesh, memory.as_bytes()],
            )?;
        }
        Op::ClaimTask { task } => {
            let row = task_state(tx, &a.mesh, task)?;
            match row {
                None => {
                    return Ok(notice(
                        "task",
                        format!("task {} does not exist", task.short()),
                    ));
                }
                Some((status, title, holder)) if status != "open" => {
                    let who = holder.unwrap_or_default();
                    return Ok(notice(
                        "task",
                        format!(
                            "your claim on task {} {} lost: it is {status} by {}",
                            task.short(),
                            quoted(&title),
                            quoted(&who)
                        ),
                    ));
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE tasks SET status = 'claimed', assignee = ?3, assignee_member = ?4,
                           assignee_name = ?5, updated_at = ?6
                         WHERE mesh = ?1 AND id = ?2",
                        params![
                            mesh,
                            task.as_bytes(),
                            a.body.session.as_bytes(),
                            a.author.0,
                            name,
                            a.at
                        ],
                    )?;
                }
            }
        }
        Op::CompleteTask { task, result } => {
            let Some((status, title, _)) = task_state(tx, &a.mesh, task)? else {
                return Ok(notice(
                    "task",
                    format!("task {} does not exist", task.short()),
                ));
            };
            let assignee: Option<Vec<u8>> = tx.query_row(
                "SELECT assignee_member FROM tasks WHERE mesh = ?1 AND id = ?2",
                params![mesh, task.as_bytes()],
                |r| r.get(0),
            )?;
            let may = status == "open"
                || (status == "claimed" && assignee.as_deref() == Some(&a.author.0[..]));
            if !may {
                return Ok(notice(
                    "task",
                    format!(
                        "cannot complete task {} {}: it is {status} by someone else",
                        task.short(),
                        quoted(&title)
                    ),
                ));
            }
            tx.execute(
                "UPDATE tasks SET status = 'done', result = ?3, updated_at = ?4,
                   assignee = COALESCE(assignee, ?5), assignee_member = COALESCE(assignee_member, ?6),
                   assignee_name = COALESCE(assignee_name, ?7)
                 WHERE mesh = ?1 AND id = ?2",
                params![
                    mesh,
                    task.as_bytes(),
                    result,
                    a.at,
                    a.body.session.as_bytes(),
                    a.author.0,
                    name
                ],
            )?;
        }
        Op::ReserveFiles {
            reservation,
            patterns,
            exclusive,
            ttl_secs,
            reason,
        } => {
            let conflict = reservation_conflict(tx, a, patterns, *exclusive)?;
            let expires =
                a.at.saturating_add((*ttl_secs).min(30 * 86_400) as i64 * 1000);
            tx.execute(
                "INSERT OR IGNORE INTO reservations (mesh, id, session, author, author_name,
                   patterns, exclusive, reason, created_at, expires_at, status, conflict, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    mesh,
                    reservation.as_bytes(),
                    a.body.session.as_bytes(),
                    a.author.0,
                    name,
                    tags_json(patterns),
                    *exclusive,
                    reason,
                    a.at,
                    expires,
                    if conflict.is_some() {
                        "refused"
                    } else {
                        "active"
                    },
                    conflict,
                    seq
                ],
            )?;
            if let Some(c) = conflict {
                return Ok(notice(
                    "reservation",
                    format!(
                        "your reservation of {} was refused: {c}",
                        quoted(&patterns.join(", "))
                    ),
                ));
            }
        }
        Op::ReleaseFiles { reservation } => {
            tx.execute(
                "UPDATE reservations SET status = 'released'
                 WHERE mesh = ?1 AND id = ?2 AND author = ?3 AND status = 'active'",
                params![mesh, reservation.as_bytes(), a.author.0],
            )?;
        }
        Op::ShareSkill {
            name: skill,
            description,
            instructions,
            tags,
            when_to_use,
        } => {
            if let Some(n) = skill_refused(tx, a, skill, "replace")? {
                return Ok(n);
            }
            tx.execute(
                "INSERT INTO skills (mesh, name, description, instructions, tags, when_to_use,
                   author, author_name, updated_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (mesh, name) DO UPDATE SET description = excluded.description,
                   instructions = excluded.instructions, tags = excluded.tags,
                   when_to_use = excluded.when_to_use, author = excluded.author,
                   author_name = excluded.author_name, updated_at = excluded.updated_at,
                   seq = excluded.seq",
                params![
                    mesh,
                    skill,
                    description,
                    instructions,
                    tags_json(tags),
                    when_to_use,
                    a.author.0,
                    name,
                    a.at,
                    seq
                ],
            )?;
        }
        Op::RemoveSkill { name: skill } => {
            if let Some(n) = skill_refused(tx, a, skill, "remove")? {
                return Ok(n);
            }
            tx.execute(
                "DELETE FROM skills WHERE mesh = ?1 AND name = ?2",
                params![mesh, skill],
            )?;
        }
        Op::RegisterMcp {
            name: server,
            description,
            tools,
            host,
            persistent,
            scope,
        } => {
            if claudemesh_schema::tools::check_server(server).is_err() || *host != a.body.session {
                // Calls go to the session that wrote it: a registration naming another
                // session would point members' calls at a daemon that never offered them.
                return Ok(notice(
                    "tools",
                    format!(
                        "the shared MCP server {} was not registered: invalid name or host",
                        quoted(server)
                    ),
                ));
            }
            // A hosted service's name is served by its hosts only (a standby taking over
            // replaces the one that served it); any other name is held by its registrant.
            match deployment(tx, a.mesh, server)? {
                Some((manifest, _)) if !manifest.hosted_by(a.author) => {
                    return Ok(notice(
                        "tools",
                        format!(
                            "the shared MCP server {} was not registered: it is a hosted service, served by its hosts only",
                            quoted(server)
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    if let Some(n) = held_refused(tx, a, Held::McpServer, server, "replace")? {
                        return Ok(n);
                    }
                }
            }
            // Held to the limits here too, the same on every daemon: a member's daemon
            // that skipped them does not get more into everyone's catalog.
            let (tools, _) = claudemesh_schema::tools::admit(tools.clone());
            tx.execute(
                "INSERT INTO mcp_servers (mesh, name, description, tools, host, persistent, scope,
                   author, author_name, updated_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (mesh, name) DO UPDATE SET description = excluded.description,
                   tools = excluded.tools, host = excluded.host, persistent = excluded.persistent,
                   scope = excluded.scope, author = excluded.author,
                   author_name = excluded.author_name, updated_at = excluded.updated_at,
                   seq = excluded.seq",
                params![
                    mesh,
                    server,
                    names_one_line(description),
                    serde_json::to_string(&tools).unwrap_or_else(|_| "[]".into()),
                    host.as_bytes(),
                    persistent,
                    serde_json::to_string(scope).unwrap_or_else(|_| "{}".into()),
                    a.author.0,
                    name,
                    a.at,
                    seq
                ],
            )?;
        }
        Op::RemoveMcp { name: server } => {
            // A hosted service's registration: taken out by the host that wrote it (it
            // stopped serving) or whoever may undeploy it, never by a standby.
            if deployment(tx, a.mesh, server)?.is_some() {
                let registrant: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT author FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                        params![mesh, server],
                        |r| r.get(0),
                    )
                    .optional()?;
                let own = registrant.is_some_and(|r| r.as_slice() == a.author.0.as_slice());
                if !own && held_refused(tx, a, Held::Deployment, server, "remove")?.is_some() {
                    return Ok(Vec::new());
                }
            } else if let Some(n) = held_refused(tx, a, Held::McpServer, server, "remove")? {
                return Ok(n);
            }
            tx.execute(
                "DELETE FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                params![mesh, server],
            )?;
        }
        Op::DeployMcp { manifest } => {
            if let Err(e) = manifest.check() {
                return Ok(notice(
                    "tools",
                    format!(
                        "the service {} was not deployed: {}",
                        quoted(&manifest.name),
                        names_one_line(&e.0)
                    ),
                ));
            }
            let held = deployment(tx, a.mesh, &manifest.name)?;
            if let Some(n) = held_refused(tx, a, Held::Deployment, &manifest.name, "update")? {
                return Ok(n);
            }
            // Secrets sealed by its writer (or the name's holder) only: a box from the log
            // of a former deployer of a freed name does not come with the name.
            let holder: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT author FROM deployments WHERE mesh = ?1 AND name = ?2",
                    params![mesh, manifest.name],
                    |r| r.get(0),
                )
                .optional()?;
            let holder = holder
                .and_then(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
                .map(MemberKey);
            if let Err(e) = manifest.check_sealers(a.author, holder.as_ref()) {
                return Ok(notice(
                    "tools",
                    format!(
                        "the service {} was not deployed: {}",
                        quoted(&manifest.name),
                        names_one_line(&e.0)
                    ),
                ));
            }
            if held.is_none()
                && let Some(n) =
                    held_refused(tx, a, Held::McpServer, &manifest.name, "deploy over")?
            {
                return Ok(n);
            }
            // A replayed or reordered older version never replaces a newer one.
            if held.is_some_and(|(_, v)| v >= manifest.version) {
                return Ok(Vec::new());
            }
            tx.execute(
                "INSERT INTO deployments (mesh, name, version, manifest, author, author_name,
                   updated_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (mesh, name) DO UPDATE SET version = excluded.version,
                   manifest = excluded.manifest, updated_at = excluded.updated_at,
                   seq = excluded.seq",
                params![
                    mesh,
                    manifest.name,
                    manifest.version as i64,
                    serde_json::to_string(manifest).unwrap_or_else(|_| "{}".into()),
                    a.author.0,
                    name,
                    a.at,
                    seq
                ],
            )?;
        }
        Op::UndeployMcp { name: service } => {
            if deployment(tx, a.mesh, service)?.is_none() {
                return Ok(Vec::new());
            }
            if let Some(n) = held_refused(tx, a, Held::Deployment, service, "undeploy")? {
                return Ok(n);
            }
            tx.execute(
                "DELETE FROM deployments WHERE mesh = ?1 AND name = ?2",
                params![mesh, service],
            )?;
            tx.execute(
                "DELETE FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                params![mesh, service],
            )?;
        }
        Op::HostOffer { enabled, sandbox } => {
            tx.execute(
                "INSERT INTO service_hosts (mesh, member, member_name, session, enabled, sandbox,
                   updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (mesh, member) DO UPDATE SET member_name = excluded.member_name,
                   session = excluded.session, enabled = excluded.enabled,
                   sandbox = excluded.sandbox, updated_at = excluded.updated_at",
                params![
                    mesh,
                    a.author.0,
                    name,
                    a.body.session.as_bytes(),
                    enabled,
                    claudemesh_schema::names::one_line(sandbox, 80),
                    a.at
                ],
            )?;
        }
        Op::ScheduleReminder {
            reminder,
            to,
            body,
            deliver_at,
            cron,
        } => {
            tx.execute(
                "INSERT OR IGNORE INTO reminders (mesh, id, session, author, author_name,
                   to_label, body, deliver_at, cron, status, created_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'scheduled', ?10, ?11)",
                params![
                    mesh,
                    reminder.as_bytes(),
                    a.body.session.as_bytes(),
                    a.author.0,
                    name,
                    to,
                    body,
                    deliver_at,
                    cron,
                    a.at,
                    seq
                ],
            )?;
        }
        Op::CancelReminder { reminder } => {
            tx.execute(
                "UPDATE reminders SET status = 'cancelled'
                 WHERE mesh = ?1 AND id = ?2 AND author = ?3 AND status = 'scheduled'",
                params![mesh, reminder.as_bytes(), a.author.0],
            )?;
        }
        Op::ReminderFired { reminder, due } => {
            tx.execute(
                "UPDATE reminders SET last_due = max(COALESCE(last_due, ?4), ?4),
                   fired = fired + 1,
                   status = CASE WHEN cron IS NULL THEN 'done' ELSE status END
                 WHERE mesh = ?1 AND id = ?2 AND author = ?3
                   AND (last_due IS NULL OR last_due < ?4) AND status = 'scheduled'",
                params![mesh, reminder.as_bytes(), a.author.0, due],
            )?;
        }
        Op::KeyEpoch {
            epoch,
            roster_len,
            roster_hash,
            boxes,
        } => {
            // Only an admin at the op's standing makes epochs, and only the next one: a
            // concurrent rotation (or a replay of an old one) loses by log order.
            let newest: i64 = tx.query_row(
                "SELECT COALESCE(MAX(epoch), 0) FROM key_epochs WHERE mesh = ?1",
                params![mesh],
                |r| r.get(0),
            )?;
            if !a.role.is_admin() || i64::from(*epoch) != newest + 1 {
                tracing::warn!(
                    seq,
                    epoch,
                    newest,
                    admin = a.role.is_admin(),
                    "key epoch op is not the next epoch by an admin; skipped"
                );
                return Ok(Vec::new());
            }
            let boxes = serde_json::to_string(boxes).unwrap_or_else(|_| "[]".into());
            tx.execute(
                "INSERT INTO key_epochs (mesh, epoch, author, roster_len, roster_hash, boxes, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    mesh,
                    epoch,
                    a.author.0,
                    *roster_len as i64,
                    &roster_hash[..],
                    boxes,
                    seq
                ],
            )?;
        }
        Op::SetRelay {
            relay,
            fingerprint,
            version,
        } => {
            // Only an admin at the op's standing moves the mesh, and only forward: a
            // record no newer than the one standing (a replay of an old one by the relay,
            // which keeps them all) changes nothing.
            let newest: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM mesh_relay WHERE mesh = ?1",
                params![mesh],
                |r| r.get(0),
            )?;
            let version = i64::try_from(*version).unwrap_or(i64::MAX);
            if !a.role.is_admin()
                || version <= newest
                || !claudemesh_schema::invite::relay_addr_ok(relay)
            {
                tracing::warn!(
                    seq,
                    version,
                    newest,
                    admin = a.role.is_admin(),
                    "relay record is not a newer one by an admin; skipped"
                );
                return Ok(Vec::new());
            }
            tx.execute(
                "INSERT INTO mesh_relay (mesh, relay, fingerprint, version, author, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (mesh) DO UPDATE SET relay = excluded.relay,
                   fingerprint = excluded.fingerprint, version = excluded.version,
                   author = excluded.author, seq = excluded.seq",
                params![mesh, relay, &fingerprint[..], version, a.author.0, seq],
            )?;
        }
        Op::ShareFile {
            file,
            manifest,
            keys,
            to,
            stored,
        } => {
            // A file id is taken once: a second share under it (a replay, a forger) is
            // no share.
            let n = tx.execute(
                "INSERT OR IGNORE INTO files (mesh, id, author, author_name, session, manifest,
                   to_label, stored, created_at, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    mesh,
                    file.as_bytes(),
                    a.author.0,
                    name,
                    a.body.session.as_bytes(),
                    manifest,
                    names_one_line(to),
                    *stored as i64,
                    a.at,
                    seq
                ],
            )?;
            if n == 1 {
                insert_key_boxes(tx, a, file, keys)?;
            }
        }
        Op::GrantFile { file, keys } => {
            let owner: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT author FROM files WHERE mesh = ?1 AND id = ?2",
                    params![mesh, file.as_bytes()],
                    |r| r.get(0),
                )
                .optional()?;
            match owner {
                None => {
                    return Ok(notice(
                        "file",
                        format!("file {} does not exist", file.short()),
                    ));
                }
                Some(o) if o.as_slice() != a.author.0.as_slice() && !a.role.is_admin() => {
                    return Ok(notice(
                        "file",
                        format!(
                            "only the member who shared file {} or an admin may grant it",
                            file.short()
                        ),
                    ));
                }
                Some(_) => insert_key_boxes(tx, a, file, keys)?,
            }
        }
        Op::DeleteFile { file } => {
            let owner: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT author FROM files WHERE mesh = ?1 AND id = ?2",
                    params![mesh, file.as_bytes()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(o) = owner {
                if o.as_slice() != a.author.0.as_slice() && !a.role.is_admin() {
                    return Ok(notice(
                        "file",
                        format!(
                            "only the member who shared file {} or an admin may delete it",
                            file.short()
                        ),
                    ));
                }
                tx.execute(
                    "DELETE FROM files WHERE mesh = ?1 AND id = ?2",
                    params![mesh, file.as_bytes()],
                )?;
                tx.execute(
                    "DELETE FROM file_keys WHERE mesh = ?1 AND file = ?2",
                    params![mesh, file.as_bytes()],
                )?;
            }
        }
        Op::Unknown => {}
    }
    Ok(Vec::new())
}

/// A notice for the author if it may not `verb` the skill `name` (another member shared
/// it, and the author is not an admin at the op's standing).
fn skill_refused(
    tx: &Transaction<'_>,
    a: &Applying<'_>,
    name: &str,
    verb: &str,
) -> rusqlite::Result<Option<Vec<Notice>>> {
    held_refused(tx, a, Held::Skill, name, verb)
}

/// The folded manifest of a hosted service and its version, if `name` is one.
fn deployment(
    tx: &Transaction<'_>,
    mesh: MeshId,
    name: &str,
) -> rusqlite::Result<Option<(claudemesh_schema::deploy::Manifest, u64)>> {
    let row: Option<(String, i64)> = tx
        .query_row(
            "SELECT manifest, version FROM deployments WHERE mesh = ?1 AND name = ?2",
            params![mesh.as_bytes(), name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(m, v)| Some((serde_json::from_str(&m).ok()?, v.max(0) as u64))))
}

/// Items held by name by the member that first wrote them (skills, shared MCP servers,
/// hosted services).
#[derive(Clone, Copy)]
enum Held {
    Skill,
    McpServer,
    Deployment,
}

/// Refuse a replace or remove of a named item by anyone but its holder or an admin.
fn held_refused(
    tx: &Transaction<'_>,
    a: &Applying<'_>,
    held: Held,
    name: &str,
    verb: &str,
) -> rusqlite::Result<Option<Vec<Notice>>> {
    let (sql, kind, noun) = match held {
        Held::Skill => (
            "SELECT author, author_name FROM skills WHERE mesh = ?1 AND name = ?2",
            "skill",
            "the skill",
        ),
        Held::McpServer => (
            "SELECT author, author_name FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
            "tools",
            "the shared MCP server",
        ),
        Held::Deployment => (
            "SELECT author, author_name FROM deployments WHERE mesh = ?1 AND name = ?2",
            "tools",
            "the hosted service",
        ),
    };
    let holder: Option<(Vec<u8>, String)> = tx
        .query_row(sql, params![a.mesh.as_bytes(), name], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let key = holder
        .as_ref()
        .and_then(|(k, _)| <[u8; 32]>::try_from(k.as_slice()).ok())
        .map(MemberKey);
    if holder.is_none() || may_change_skill(key.as_ref(), a.author, a.role) {
        return Ok(None);
    }
    let who = holder.map(|(_, n)| n).unwrap_or_default();
    Ok(Some(vec![Notice {
        session: a.body.session,
        kind,
        text: format!(
            "you cannot {verb} {noun} {}: {} shared it; only its author or an admin can",
            quoted(name),
            quoted(&who)
        ),
    }]))
}

/// Apply an own write ahead of the log, where it cannot conflict with anyone's.
pub(crate) fn apply_pending(
    tx: &Transaction<'_>,
    mesh: &MeshId,
    author: &MemberKey,
    body: &OpBody,
) -> rusqlite::Result<()> {
    // A pending forget only hides the memory (see `query::q_recall`): deleting it here
    // could not be undone if the relay refused the forget.
    insert_item(tx, mesh, author, body, body.at, None)
}

/// Insert the fresh-id item (memory, task, context) `body` creates: sequenced (`seq`), or
/// ahead of the log (`None`: a pending row). A sequenced insert confirms its author's
/// pending row in place, with the relay's time; nothing else is ever overwritten.
fn insert_item(
    tx: &Transaction<'_>,
    mesh: &MeshId,
    author: &MemberKey,
    body: &OpBody,
    at: i64,
    seq: Option<i64>,
) -> rusqlite::Result<()> {
    let shown = shown_name(&body.name);
    let (m, name) = (mesh.as_bytes(), shown.as_str());
    let confirm = |table: &str, also: &str| {
        format!(
            "ON CONFLICT (mesh, id) DO UPDATE SET created_at = excluded.created_at, {also}
               seq = excluded.seq
             WHERE {table}.seq IS NULL AND excluded.seq IS NOT NULL
               AND {table}.author = excluded.author"
        )
    };
    match &body.op {
        Op::Remember { memory, text, tags } => {
            tx.execute(
                &format!(
                    "INSERT INTO memories (mesh, id, text, tags, author, author_name, created_at, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) {}",
                    confirm("memories", "")
                ),
                params![m, memory.as_bytes(), text, tags_json(tags), author.0, name, at, seq],
            )?;
        }
        Op::CreateTask {
            task,
            title,
            body: details,
            priority,
            tags,
            assignee,
        } => {
            tx.execute(
                &format!(
                    "INSERT INTO tasks (mesh, id, title, body, priority, tags, suggested, status,
                       author, author_name, created_at, updated_at, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?9, ?10, ?10, ?11) {}",
                    confirm("tasks", "updated_at = excluded.updated_at,")
                ),
                params![
                    m,
                    task.as_bytes(),
                    title,
                    details,
                    priority_or_default(priority),
                    tags_json(tags),
                    assignee,
                    author.0,
                    name,
                    at,
                    seq
                ],
            )?;
        }
        Op::ShareContext {
            context,
            summary,
            files_read,
            key_findings,
            tags,
        } => {
            tx.execute(
                &format!(
                    "INSERT INTO contexts (mesh, id, session, author, author_name, summary,
                       files_read, key_findings, tags, created_at, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) {}",
                    confirm("contexts", "")
                ),
                params![
                    m,
                    context.as_bytes(),
                    body.session.as_bytes(),
                    author.0,
                    name,
                    summary,
                    tags_json(files_read),
                    tags_json(key_findings),
                    tags_json(tags),
                    at,
                    seq
                ],
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// Take back an own write that the relay refused for good.
pub(crate) fn undo_pending(
    tx: &Transaction<'_>,
    mesh: &MeshId,
    body: &OpBody,
) -> rusqlite::Result<()> {
    let m = mesh.as_bytes();
    let (table, id) = match &body.op {
        Op::Remember { memory, .. } => ("memories", memory),
        Op::CreateTask { task, .. } => ("tasks", task),
        Op::ShareContext { context, .. } => ("contexts", context),
        _ => return Ok(()),
    };
    tx.execute(
        &format!("DELETE FROM {table} WHERE mesh = ?1 AND id = ?2 AND seq IS NULL"),
        params![m, id.as_bytes()],
    )?;
    Ok(())
}

fn priority_or_default(p: &str) -> &str {
    if p.is_empty() { "normal" } else { p }
}

/// Status, title and holder name of a sequenced task.
fn task_state(
    tx: &Transaction<'_>,
    mesh: &MeshId,
    task: &ItemId,
) -> rusqlite::Result<Option<(String, String, Option<String>)>> {
    tx.query_row(
        "SELECT status, title, assignee_name FROM tasks
         WHERE mesh = ?1 AND id = ?2 AND seq IS NOT NULL",
        params![mesh.as_bytes(), task.as_bytes()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()
}

/// Why a new reservation conflicts with a live one of another session, if it does.
fn reservation_conflict(
    tx: &Transaction<'_>,
    a: &Applying<'_>,
    patterns: &[String],
    exclusive: bool,
) -> rusqlite::Result<Option<String>> {
    let mut stmt = tx.prepare_cached(
        "SELECT author_name, patterns, exclusive FROM reservations
         WHERE mesh = ?1 AND status = 'active' AND expires_at > ?2 AND session != ?3
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(
        params![a.mesh.as_bytes(), a.at, a.body.session.as_bytes()],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
            ))
        },
    )?;
    for row in rows {
        let (holder, theirs, their_excl) = row?;
        if !(exclusive || their_excl) {
            continue;
        }
        let theirs: Vec<String> = serde_json::from_str(&theirs).unwrap_or_default();
        for p in patterns {
            for q in &theirs {
                if crate::shared::glob::overlap(p, q) {
                    return Ok(Some(format!(
                        "{} is reserved by {}",
                        quoted(q),
                        quoted(&holder)
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// A share's `to` as stored: one line, bounded (it is peer text).
fn names_one_line(s: &str) -> String {
    claudemesh_schema::names::one_line(s, 120)
}

/// Add the key boxes of an op after the file's existing ones (a box for a member that has
/// one already is kept too: either opens).
fn insert_key_boxes(
    tx: &Transaction<'_>,
    a: &Applying<'_>,
    file: &ItemId,
    keys: &[claudemesh_schema::file::KeyBox],
) -> rusqlite::Result<()> {
    use claudemesh_schema::file::KeyBox;
    let mesh = a.mesh.as_bytes();
    let next: i64 = tx.query_row(
        "SELECT COALESCE(MAX(n) + 1, 0) FROM file_keys WHERE mesh = ?1 AND file = ?2",
        params![mesh, file.as_bytes()],
        |r| r.get(0),
    )?;
    // At most 1,024 boxes per op: a flood of boxes is no use to anyone.
    for (i, k) in keys.iter().take(1024).enumerate() {
        let (member, epoch, ct): (Option<&[u8]>, Option<i64>, &[u8]) = match k {
            KeyBox::Mesh { epoch, ct } => (None, Some(i64::from(*epoch)), ct),
            KeyBox::Member { member, ct } => (Some(&member.0[..]), None, ct),
        };
        tx.execute(
            "INSERT INTO file_keys (mesh, file, n, member, epoch, ct, granter, seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                mesh,
                file.as_bytes(),
                next + i as i64,
                member,
                epoch,
                ct,
                a.author.0,
                a.seq as i64
            ],
        )?;
    }
    Ok(())
}
