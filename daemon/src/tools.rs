//! Shared MCP tools: the mesh's catalog (folded `register_mcp` ops), calls to a tool
//! wherever its server is hosted, and, on the hosting daemon, running a member's call
//! against the server `mcp_host` keeps alive.
//!
//! A call is a payload boxed to the hosting daemon's session and its result one boxed
//! back to the calling daemon's: end to end, like messages; the relay sees two envelopes
//! and their sizes. The host gates each call by the caller's `tools` grant, the server's
//! scope and its tool allowlist, runs it once (a replay within its deadline is dropped),
//! and writes it to its audit log (who, what, how it ended; never arguments or results).

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::tools::{
    AuditEntry, CatalogServer, CatalogTool, ToolsAuditParams, ToolsAuditResult, ToolsCallParams,
    ToolsCallResult, ToolsListParams, ToolsListResult,
};
use claudemesh_schema::tools::{
    self, CallBody, KIND_TOOL_CALL, KIND_TOOL_RESULT, Refusal, ResultBody, Scope, ToolSpec,
};
use claudemesh_schema::{MessageId, SessionId, now_ms};
use rusqlite::params;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::Daemon;
use crate::delivery::send::boxed_to_session;
use crate::error::Error;
use crate::mcp_client::CallError;
use crate::mesh::{LinkCmd, MeshCtx, lock};

/// Audit rows kept (the oldest go first).
const AUDIT_KEEP: i64 = 10_000;
/// A call sent this far ahead of our clock is not run (its deadline would be ours to
/// trust).
const MAX_AHEAD_MS: i64 = 60_000;

/// A catalog row.
struct Row {
    name: String,
    description: String,
    tools: Vec<ToolSpec>,
    host: SessionId,
    persistent: bool,
    scope: Scope,
    author: MemberKey,
    author_name: String,
    updated_at: i64,
}

fn q_rows(
    c: &rusqlite::Connection,
    mesh: claudemesh_schema::MeshId,
    name: Option<&str>,
) -> crate::store::Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(
        "SELECT name, description, tools, host, persistent, scope, author, author_name, updated_at
         FROM mcp_servers WHERE mesh = ?1 AND (?2 IS NULL OR name = ?2) ORDER BY name",
    )?;
    let rows = stmt.query_map(params![mesh.as_bytes(), name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, bool>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, i64>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, description, tools, host, persistent, scope, author, author_name, updated_at) =
            row?;
        let (Some(host), Ok(author)) = (SessionId::from_slice(&host), <[u8; 32]>::try_from(author))
        else {
            continue;
        };
        out.push(Row {
            name,
            description,
            tools: serde_json::from_str(&tools).unwrap_or_default(),
            host,
            persistent,
            scope: serde_json::from_str(&scope).unwrap_or_default(),
            author: MemberKey(author),
            author_name,
            updated_at,
        });
    }
    Ok(out)
}

/// `tools_list`: every server of the mesh the asking session may see, with whether its
/// host is online.
pub(crate) async fn list(d: &Arc<Daemon>, p: ToolsListParams) -> Result<ToolsListResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let id = m.id;
    let (rows, presence) = d
        .store
        .read(move |c| Ok((q_rows(c, id, None)?, crate::store::q_presence(c, id)?)))
        .await?;
    let me = m.member();
    let groups: Vec<String> = p
        .session
        .and_then(|s| lock(&m.sessions).get(&s).map(|l| l.profile.groups.clone()))
        .unwrap_or_default();
    let servers = rows
        .into_iter()
        .filter(|r| p.session.is_none() || r.author == me || r.scope.admits(&me, &groups))
        .map(|r| {
            let mine = r.host == m.keys.session;
            let host = presence.iter().find(|h| h.session == r.host);
            let online = mine || host.is_some_and(|h| h.online && h.member == r.author);
            CatalogServer {
                description: r.description,
                host_name: crate::shared::query::by(r.author_name, &r.author.0),
                host_fingerprint: r.author.fingerprint(),
                host_session: r.host,
                mine,
                online,
                offline_since: (!online).then(|| host.map(|h| h.last_seen)).flatten(),
                persistent: r.persistent,
                scope: r.scope.label(),
                updated_at: r.updated_at,
                tools: r
                    .tools
                    .into_iter()
                    .map(|t| CatalogTool {
                        qualified: tools::qualified(&r.name, &t.name),
                        spec: t,
                    })
                    .collect(),
                name: r.name,
            }
        })
        .collect();
    Ok(ToolsListResult {
        mesh: m.id,
        servers,
    })
}

fn refused(r: Refusal, detail: &str) -> Error {
    let text = if detail.is_empty() {
        r.explain().to_string()
    } else {
        format!(
            "{}: {}",
            r.explain(),
            claudemesh_schema::names::one_line(detail, 300)
        )
    };
    match r {
        Refusal::NoGrant | Refusal::NotAllowed => Error::forbidden(text),
        Refusal::Timeout | Refusal::Stale => Error::timeout(text),
        Refusal::Unavailable => Error::relay(text),
        Refusal::NotHosted => Error::not_found(text),
        Refusal::TooLarge | Refusal::Failed => Error::invalid(text),
    }
}

/// `tools_call`: run a tool of a shared server where it is hosted and return its result.
pub(crate) async fn call(d: &Arc<Daemon>, p: ToolsCallParams) -> Result<ToolsCallResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let session = p.session.unwrap_or(m.keys.session);
    if !m.is_local(&session) && session != m.keys.session {
        return Err(Error::not_found(format!(
            "session {session} is not hosted here"
        )));
    }
    tools::check_server(&p.server).map_err(|e| Error::invalid(e.to_string()))?;
    let arguments = match p.arguments {
        Value::Null => json!({}),
        Value::Object(o) => Value::Object(o),
        _ => return Err(Error::invalid("a tool's arguments are a JSON object")),
    };
    let args_len = arguments.to_string().len();
    if args_len > tools::MAX_ARGUMENTS {
        return Err(Error::invalid(format!(
            "the arguments are {args_len} bytes; the limit is {} (send large inputs as a shared file)",
            tools::MAX_ARGUMENTS
        )));
    }
    let deadline_ms = p
        .timeout_ms
        .unwrap_or(tools::DEFAULT_DEADLINE_MS)
        .clamp(1, tools::MAX_DEADLINE_MS);
    let (id, server) = (m.id, p.server.clone());
    let (rows, host_presence) = d
        .store
        .read(move |c| {
            let rows = q_rows(c, id, Some(&server))?;
            let host = match rows.first() {
                Some(r) => crate::store::q_presence_of(c, id, r.host)?,
                None => None,
            };
            Ok((rows, host))
        })
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Err(Error::not_found(format!(
            "no shared MCP server named {:?} in this mesh (see `claudemesh tools list`)",
            p.server
        )));
    };
    if !row.tools.iter().any(|t| t.name == p.tool) {
        let names: Vec<_> = row.tools.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::not_found(format!(
            "server {:?} has no tool {:?}; it offers: {}",
            p.server,
            p.tool,
            names.join(", ")
        )));
    }
    let host_name = crate::shared::query::by(row.author_name.clone(), &row.author.0);
    let body = CallBody {
        server: p.server.clone(),
        tool: p.tool.clone(),
        arguments,
        deadline_ms,
        session: Some(session),
    };
    let started = Instant::now();
    let done = |result: ResultBody| -> Result<ToolsCallResult, Error> {
        if let Some(r) = result.error {
            return Err(refused(r, &result.detail));
        }
        Ok(ToolsCallResult {
            server: p.server.clone(),
            tool: p.tool.clone(),
            host_name: host_name.clone(),
            ms: started.elapsed().as_millis() as u64,
            result: result.result.unwrap_or(Value::Null),
        })
    };
    // Hosted here: run it in place.
    if row.host == m.keys.session {
        let r = execute(d, &m, m.member(), MessageId::new(), body).await;
        return done(r);
    }
    let host = match host_presence {
        Some(h) if h.member == row.author => h,
        _ => {
            return Err(Error::relay(format!(
                "the host of {:?} ({host_name}) has never been seen online here; try again once it is",
                p.server
            )));
        }
    };
    if !host.online {
        let ago = (now_ms() - host.last_seen).max(0) / 1000;
        return Err(Error::relay(format!(
            "the host of {:?} ({host_name}) is offline (last seen {ago} s ago); the call was not sent",
            p.server
        )));
    }
    if !m.link.connected() {
        return Err(Error::relay(
            "the relay link is down; the call was not sent (see `claudemesh status`)",
        ));
    }
    let json = serde_json::to_string(&body).map_err(Error::internal)?;
    let (call_id, frame) = boxed_to_session(
        &m,
        m.keys.session,
        row.host,
        &host.session_key,
        KIND_TOOL_CALL,
        json,
    )
    .ok_or_else(|| Error::internal("cannot seal the call"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    lock(&m.tool_calls).insert(call_id, (row.author, tx));
    let _forget = Forget {
        m: m.clone(),
        id: call_id,
    };
    m.link
        .tx
        .send(LinkCmd::Send(call_id, bytes::Bytes::from(frame), None))
        .await
        .map_err(|_| Error::relay("the relay link stopped; the call was not sent"))?;
    let until = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
    match tokio::time::timeout_at(until, rx).await {
        Ok(Ok(ResultBody {
            file: Some(file),
            error: None,
            ..
        })) => {
            let result = fetch_result(d, &m, file, until).await?;
            done(ResultBody {
                of: call_id,
                error: None,
                detail: String::new(),
                result: Some(result),
                file: None,
            })
        }
        Ok(Ok(r)) => done(r),
        Ok(Err(_)) => Err(Error::internal("the call was dropped")),
        Err(_) => Err(Error::timeout(format!(
            "no result from the host of {:?} ({host_name}) within {} s (it may be busy, or went offline)",
            p.server,
            deadline_ms as f64 / 1000.0
        ))),
    }
}

/// Share a result too large for an answer with the calling member alone: its JSON as an
/// ephemeral file (an hour), written privately and removed once sealed into the cache.
async fn share_result(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    caller: &MemberKey,
    id: MessageId,
    call: &CallBody,
    json: String,
) -> Result<claudemesh_schema::ItemId, Error> {
    let dir = d.paths.dir.join("mcp").join("results");
    std::fs::create_dir_all(&dir).map_err(Error::internal)?;
    let path = dir.join(format!("{id}.json"));
    {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&path).map_err(Error::internal)?;
        f.write_all(json.as_bytes()).map_err(Error::internal)?;
    }
    let shared = crate::files::share(
        d,
        claudemesh_schema::ipc::files::FileShareParams {
            mesh: Some(m.id.to_string()),
            session: None,
            path: path.display().to_string(),
            to: Some(caller.fingerprint()),
            tags: vec!["tool-result".into()],
            ephemeral: true,
            ttl_secs: Some(3600),
            name: Some(format!("{}__{}-result.json", call.server, call.tool)),
        },
    )
    .await;
    let _ = std::fs::remove_file(&path);
    Ok(shared?.file)
}

/// Fetch a result the host shared as a file: once its share op is folded here (it may
/// come after the answer), within the call's deadline.
async fn fetch_result(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    file: claudemesh_schema::ItemId,
    until: tokio::time::Instant,
) -> Result<Value, Error> {
    let dir = d.paths.dir.join("mcp").join("results");
    std::fs::create_dir_all(&dir).map_err(Error::internal)?;
    let out = dir.join(format!("{file}.fetched.json"));
    if !crate::files::get_when_shared(d, m, file, &out, until).await? {
        return Err(Error::timeout(
            "the host shared its large result as a file, but it did not arrive in time",
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(Error::internal);
    let _ = std::fs::remove_file(&out);
    serde_json::from_str(&text?).map_err(|_| Error::invalid("the host's result file is not JSON"))
}

/// Removes a waiting call when dropped.
struct Forget {
    m: Arc<MeshCtx>,
    id: MessageId,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.m.tool_calls).remove(&self.id);
    }
}

/// A result came: to the call waiting for it, if it is from the member asked.
pub(crate) fn answered(m: &MeshCtx, from: MemberKey, body: ResultBody) {
    let mut calls = lock(&m.tool_calls);
    if calls.get(&body.of).is_some_and(|(host, _)| *host == from)
        && let Some((_, tx)) = calls.remove(&body.of)
    {
        let _ = tx.send(body);
    }
}

/// A member's daemon calls a server we host: run it (or refuse) and box the result back
/// to the calling daemon's session.
pub(crate) async fn serve(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    from: MemberKey,
    from_session: SessionId,
    id: MessageId,
    sent_at: i64,
    call: CallBody,
) {
    let now = now_ms();
    let deadline = sent_at.saturating_add(call.deadline_ms.min(tools::MAX_DEADLINE_MS) as i64);
    let fresh = now <= deadline && sent_at <= now + MAX_AHEAD_MS;
    // Run once: a call seen before (a relay replaying it) gets nothing at all.
    let first = {
        let mut seen = lock(&m.tool_seen);
        seen.retain(|_, until| *until >= now);
        seen.insert(id, deadline.max(now)).is_none()
    };
    if !first {
        tracing::warn!(call = %id, from = %from.short(), "a tool call seen before; dropped (a replay)");
        return;
    }
    let result = if fresh {
        execute(d, m, from, id, call.clone()).await
    } else {
        audit(d, m, id, &from, &call, "stale", 0, 0, 0).await;
        ResultBody {
            of: id,
            error: Some(Refusal::Stale),
            detail: String::new(),
            result: None,
            file: None,
        }
    };
    let mesh = m.id;
    let caller = match d
        .store
        .read(move |c| crate::store::q_presence_of(c, mesh, from_session))
        .await
    {
        Ok(Some(p)) if p.member == from => p,
        _ => {
            tracing::warn!(call = %id, "the calling daemon's key is not known here; no result sent");
            return;
        }
    };
    // Too large for an answer: the result goes as a file for the caller alone.
    let result = match result.result.as_ref().map(Value::to_string) {
        Some(json) if json.len() > tools::MAX_RESULT => {
            match share_result(d, m, &from, id, &call, json).await {
                Ok(file) => ResultBody {
                    of: id,
                    error: None,
                    detail: String::new(),
                    result: None,
                    file: Some(file),
                },
                Err(e) => {
                    tracing::warn!(call = %id, error = %e, "cannot share a large tool result as a file");
                    ResultBody {
                        of: id,
                        error: Some(Refusal::TooLarge),
                        detail: String::new(),
                        result: None,
                        file: None,
                    }
                }
            }
        }
        _ => result,
    };
    let seal = |r: &ResultBody| {
        boxed_to_session(
            m,
            m.keys.session,
            from_session,
            &caller.session_key,
            KIND_TOOL_RESULT,
            serde_json::to_string(r).ok()?,
        )
    };
    // A result within MAX_RESULT can still outgrow an envelope once escaped twice (JSON
    // text in a JSON payload): the caller hears `too_large`, not silence.
    let sealed = seal(&result).or_else(|| {
        seal(&ResultBody {
            of: id,
            error: Some(Refusal::TooLarge),
            detail: String::new(),
            result: None,
            file: None,
        })
    });
    let Some((rid, frame)) = sealed else {
        return;
    };
    // Not through the outbox: a result nobody waits for any more is worth nothing.
    let _ = m
        .link
        .tx
        .send(LinkCmd::Send(rid, bytes::Bytes::from(frame), None))
        .await;
}

/// Run a call against the hosted server, checks first; audited however it ends.
async fn execute(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    from: MemberKey,
    id: MessageId,
    call: CallBody,
) -> ResultBody {
    let started = Instant::now();
    let args_len = call.arguments.to_string().len() as u64;
    let refuse = |r: Refusal, detail: String| ResultBody {
        of: id,
        error: Some(r),
        detail,
        result: None,
        file: None,
    };
    let outcome = async {
        let Some(h) = lock(&d.hosted).get(&(m.id, call.server.clone())).cloned() else {
            return refuse(Refusal::NotHosted, String::new());
        };
        // A hosted service is gated by its manifest's scope alone: this daemon's owner
        // offered to host the mesh's services (`host enable`).
        if from != m.member() && h.spec.deployed.is_none() && !m.allows(&from, "tools") {
            return refuse(Refusal::NoGrant, String::new());
        }
        // Groups matter only to a group scope (a presence read on the call's path).
        if from != m.member() && !matches!(h.spec.scope, Scope::Group { .. }) {
            if !h.spec.scope.admits(&from, &[]) {
                return refuse(Refusal::NotAllowed, String::new());
            }
        } else if from != m.member() {
            let groups = match call.session {
                Some(s) => {
                    let mesh = m.id;
                    d.store
                        .read(move |c| crate::store::q_presence_of(c, mesh, s))
                        .await
                        .ok()
                        .flatten()
                        .filter(|p| p.member == from)
                        .map(|p| p.profile.groups)
                        .unwrap_or_default()
                }
                None => Vec::new(),
            };
            if !h.spec.scope.admits(&from, &groups) {
                return refuse(Refusal::NotAllowed, String::new());
            }
        }
        if !h.tools().iter().any(|t| t.name == call.tool) {
            return refuse(Refusal::NotAllowed, String::new());
        }
        let Some(io) = h.client() else {
            return refuse(Refusal::Unavailable, String::new());
        };
        let wait = Duration::from_millis(call.deadline_ms.min(tools::MAX_DEADLINE_MS));
        let Ok(Ok(_slot)) = tokio::time::timeout(wait, h.slots.acquire()).await else {
            return refuse(Refusal::Timeout, String::new());
        };
        let left = wait.saturating_sub(started.elapsed());
        match io
            .request(
                "tools/call",
                json!({ "name": call.tool, "arguments": call.arguments }),
                left,
            )
            .await
        {
            Ok(v) if v.to_string().len() > tools::MAX_FILE_RESULT => {
                refuse(Refusal::TooLarge, String::new())
            }
            Ok(v) => ResultBody {
                of: id,
                error: None,
                detail: String::new(),
                result: Some(v),
                file: None,
            },
            Err(CallError::Timeout) => refuse(Refusal::Timeout, String::new()),
            Err(CallError::Closed) => refuse(Refusal::Unavailable, String::new()),
            Err(CallError::Rpc(msg)) => refuse(Refusal::Failed, msg),
        }
    }
    .await;
    let (label, result_len) = match (&outcome.error, &outcome.result) {
        (Some(r), _) => (refusal_code(*r), 0),
        (None, Some(v)) => (
            if v.get("isError").and_then(Value::as_bool) == Some(true) {
                "tool_error"
            } else {
                "ok"
            },
            v.to_string().len() as u64,
        ),
        (None, None) => ("ok", 0),
    };
    if outcome.error == Some(Refusal::NoGrant) || outcome.error == Some(Refusal::NotAllowed) {
        tracing::warn!(call = %id, from = %from.short(), server = %call.server, tool = %call.tool, "tool call refused");
    }
    audit(
        d,
        m,
        id,
        &from,
        &call,
        label,
        started.elapsed().as_millis() as u64,
        args_len,
        result_len,
    )
    .await;
    outcome
}

fn refusal_code(r: Refusal) -> &'static str {
    match r {
        Refusal::NotHosted => "not_hosted",
        Refusal::NoGrant => "no_grant",
        Refusal::NotAllowed => "not_allowed",
        Refusal::Unavailable => "unavailable",
        Refusal::Timeout => "timeout",
        Refusal::TooLarge => "too_large",
        Refusal::Stale => "stale",
        Refusal::Failed => "failed",
    }
}

/// Record a call in the audit log. A call that ran is recorded off its path (the
/// in-memory `tool_seen` guards against a replay meanwhile); a refusal before it is
/// answered, so the host's owner who looks right after sees it.
#[allow(clippy::too_many_arguments)]
async fn audit(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    id: MessageId,
    from: &MemberKey,
    call: &CallBody,
    outcome: &'static str,
    ms: u64,
    args_len: u64,
    result_len: u64,
) {
    let name = m.member_name(from).map(|(n, _)| n).unwrap_or_default();
    let (mesh, from, server, tool) = (m.id, *from, call.server.clone(), call.tool.clone());
    let d2 = d.clone();
    let write = async move {
        let r = d2
            .store
            .write(move |tx| {
                tx.execute(
                    "INSERT OR REPLACE INTO tool_audit (call, mesh, at, caller, caller_name, server,
                       tool, outcome, ms, arguments_bytes, result_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        id.as_bytes(),
                        mesh.as_bytes(),
                        now_ms(),
                        from.0,
                        name,
                        server,
                        tool,
                        outcome,
                        ms as i64,
                        args_len as i64,
                        result_len as i64
                    ],
                )?;
                tx.execute(
                    "DELETE FROM tool_audit WHERE call IN
                       (SELECT call FROM tool_audit ORDER BY at DESC LIMIT -1 OFFSET ?1)",
                    params![AUDIT_KEEP],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot write the tool-call audit log");
        }
    };
    if outcome == "ok" || outcome == "tool_error" {
        d.spawn(write);
    } else {
        write.await;
    }
}

/// Seed the replay guard from the audit log (calls whose deadlines may not have passed).
pub(crate) async fn load_seen(d: &Arc<Daemon>) {
    let since = now_ms() - tools::MAX_DEADLINE_MS as i64;
    let rows: Vec<(Vec<u8>, Vec<u8>)> = d
        .store
        .read(move |c| {
            let mut stmt = c.prepare("SELECT mesh, call FROM tool_audit WHERE at >= ?1")?;
            let rows = stmt.query_map(params![since], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
        .unwrap_or_default();
    let until = now_ms() + tools::MAX_DEADLINE_MS as i64;
    for (mesh, call) in rows {
        if let (Some(m), Some(id)) = (
            claudemesh_schema::MeshId::from_slice(&mesh).and_then(|i| d.mesh(&i)),
            MessageId::from_slice(&call),
        ) {
            lock(&m.tool_seen).insert(id, until);
        }
    }
}

/// `tools_audit`.
pub(crate) async fn audit_log(
    d: &Arc<Daemon>,
    p: ToolsAuditParams,
) -> Result<ToolsAuditResult, Error> {
    let meshes: Vec<_> = d
        .select_many(p.mesh.as_deref())?
        .iter()
        .map(|m| m.id)
        .collect();
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000) as i64;
    let rows = d
        .store
        .read(move |c| {
            let mut stmt = c.prepare(
                "SELECT mesh, call, at, caller, caller_name, server, tool, outcome, ms,
                   arguments_bytes, result_bytes
                 FROM tool_audit ORDER BY at DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?;
    let mut entries = Vec::new();
    for (mesh, call, at, caller, name, server, tool, outcome, ms, a, r) in rows {
        let (Some(mesh), Some(call), Ok(caller)) = (
            claudemesh_schema::MeshId::from_slice(&mesh),
            MessageId::from_slice(&call),
            <[u8; 32]>::try_from(caller),
        ) else {
            continue;
        };
        if !meshes.contains(&mesh) {
            continue;
        }
        let key = MemberKey(caller);
        entries.push(AuditEntry {
            mesh,
            call: call.to_string(),
            at,
            caller: crate::shared::query::by(name, &key.0),
            caller_fingerprint: key.fingerprint(),
            server,
            tool,
            outcome,
            ms: ms.max(0) as u64,
            arguments_bytes: a.max(0) as u64,
            result_bytes: r.max(0) as u64,
        });
    }
    Ok(ToolsAuditResult { entries })
}

/// Push `tools_changed` notifications for as long as the connection lives.
pub(crate) async fn watch(
    d: Arc<Daemon>,
    only: Option<claudemesh_schema::MeshId>,
    tx: tokio::sync::mpsc::Sender<claudemesh_schema::ipc::Notification>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = d.tools_events.subscribe();
    loop {
        let ev = tokio::select! {
            r = rx.recv() => r,
            _ = d.shutdown.cancelled() => return,
        };
        let mesh = match ev {
            Ok(m) if only.is_none_or(|o| o == m) => m,
            Ok(_) => continue,
            // Missed some: say that the catalog changed (a client lists it again).
            Err(RecvError::Lagged(_)) => match only {
                Some(o) => o,
                None => continue,
            },
            Err(RecvError::Closed) => return,
        };
        let n = claudemesh_schema::ipc::Notification {
            jsonrpc: "2.0".into(),
            method: claudemesh_schema::ipc::tools::NOTIFY_TOOLS_CHANGED.into(),
            params: serde_json::to_value(claudemesh_schema::ipc::tools::ToolsChanged { mesh })
                .unwrap_or(Value::Null),
        };
        if tx.send(n).await.is_err() {
            return;
        }
    }
}
