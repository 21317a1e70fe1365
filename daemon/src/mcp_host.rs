//! Local MCP servers this daemon runs for a mesh (`claudemesh mcp-host add`, an MCP
//! client's `mesh_mcp_register`): declared in `mcp_hosted`, spawned and supervised here
//! (restarted after a crash with backoff, stderr kept in a ring buffer), and published in
//! the mesh's catalog with a `register_mcp` op carrying their `tools/list`. The daemon, not
//! a Claude session, runs them, so members' calls work while the session that added one
//! is busy or closed. Calls themselves are `tools`' business; this module speaks MCP to
//! the server over its stdio (newline-delimited JSON-RPC) and keeps it alive.
//!
//! A server registered by a session (`session` set) ends with that session. Servers are
//! killed with their whole process group when removed or when the daemon stops; on Linux
//! each one also runs under `setpriv --pdeathsig KILL` where `setpriv` exists, so a daemon
//! killed outright does not leave them behind.

use claudemesh_schema::ipc::tools::{HostedServer, McpHostAddParams, McpHostListResult};
use claudemesh_schema::op::Op;
use claudemesh_schema::tools::{self, Scope, ToolSpec};
use claudemesh_schema::{MeshId, SessionId, now_ms};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;
use crate::error::Error;
use crate::mcp_client::{CallError, Hosted, Run, Spec, Stdio};
use crate::mesh::{MeshCtx, lock};

/// Longest JSON-RPC line read from a server's stdout: past it the server is restarted.
const MAX_LINE: usize = 8 << 20;
/// How long a server gets to answer `initialize` and `tools/list`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Restart backoff: first wait, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A server that ran this long before it exited starts again with the first backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How often a running server is asked `ping`, and how long it has to answer.
const HEALTH_EVERY: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);
/// MCP protocol version this client speaks first.
const PROTOCOL_VERSION: &str = "2025-06-18";

/// Where hosted servers run by default: `<config>/mcp/<mesh>/<name>`.
fn default_cwd(d: &Daemon, mesh: &MeshId, name: &str) -> PathBuf {
    d.paths.dir.join("mcp").join(mesh.short()).join(name)
}

pub(crate) async fn parse_scope(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    s: Option<&str>,
) -> Result<Scope, Error> {
    let s = s.map(str::trim).unwrap_or("");
    if s.is_empty() || s == "mesh" || s == "*" {
        return Ok(Scope::Mesh);
    }
    if let Some(g) = s.strip_prefix('@') {
        let group = claudemesh_schema::names::check_group(g)
            .map_err(|e| Error::invalid(e.to_string()))?
            .to_lowercase();
        return Ok(Scope::Group { group });
    }
    let peers = crate::grants::peers(d, m).await?;
    let mut members = Vec::new();
    for sel in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let found: Vec<_> = peers.iter().filter(|p| p.selected_by(sel)).collect();
        match found.as_slice() {
            [p] => members.push(p.key),
            [] => {
                return Err(Error::not_found(format!(
                    "no member {sel:?} in this mesh (scope: `mesh`, `@group`, or member names or fingerprints separated by commas)"
                )));
            }
            _ => {
                return Err(Error::ambiguous(format!(
                    "{sel:?} names several members; use a fingerprint prefix"
                )));
            }
        }
    }
    // The host's own member always may.
    members.push(m.member());
    members.sort();
    members.dedup();
    Ok(Scope::Members { members })
}

/// `mcp_host_add`: declare a server, start it, and publish it once it listed its tools.
pub(crate) async fn add(d: &Arc<Daemon>, p: McpHostAddParams) -> Result<HostedServer, Error> {
    let m = d.select(p.mesh.as_deref())?;
    tools::check_server(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    if p.command.first().is_none_or(|c| c.trim().is_empty()) {
        return Err(Error::invalid(
            "give the server's command after `--`, e.g. `claudemesh mcp-host add time -- uvx mcp-server-time`",
        ));
    }
    for e in &p.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(Error::invalid(format!(
                "environment entries are KEY=VALUE; {:?} is not",
                e.split('=').next().unwrap_or_default()
            )));
        }
    }
    let cwd = match p.cwd.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) if !std::path::Path::new(c).is_absolute() => {
            return Err(Error::invalid(format!(
                "the working directory {c:?} must be absolute"
            )));
        }
        Some(c) => Some(PathBuf::from(c)),
        None => None,
    };
    if let Some(s) = p.session
        && !m.is_local(&s)
    {
        return Err(Error::not_found(format!("session {s} is not hosted here")));
    }
    let scope = parse_scope(d, &m, p.scope.as_deref()).await?;
    // A name held in the catalog by another member is theirs (the fold would refuse ours).
    let (mesh, name) = (m.id, p.name.clone());
    let holder: Option<Vec<u8>> = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT author FROM mcp_servers WHERE mesh = ?1 AND name = ?2",
                params![mesh.as_bytes(), name],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await?;
    if holder.is_some_and(|h| h.as_slice() != m.member().0.as_slice()) && !m.role().is_admin() {
        return Err(Error::conflict(format!(
            "another member shares a server named {:?} in this mesh; choose another name",
            p.name
        )));
    }
    let existing = lock(&d.hosted).get(&(m.id, p.name.clone())).cloned();
    if let Some(h) = existing {
        if !p.replace {
            return Err(Error::conflict(format!(
                "this daemon already hosts {:?}; remove it first or pass --replace",
                p.name
            )));
        }
        stop(d, &h).await;
    }
    let spec = Spec {
        command: p.command.clone(),
        cwd,
        env: p.env.clone(),
        description: claudemesh_schema::names::one_line(&p.description, 120),
        allow: p.allow.clone(),
        scope,
        session: p.session,
        deployed: None,
    };
    let row = (
        m.id,
        p.name.clone(),
        serde_json::to_string(&spec.command).map_err(Error::internal)?,
        spec.cwd.as_ref().map(|c| c.display().to_string()),
        serde_json::to_string(&spec.env).map_err(Error::internal)?,
        spec.description.clone(),
        serde_json::to_string(&spec.allow).map_err(Error::internal)?,
        serde_json::to_string(&spec.scope).map_err(Error::internal)?,
        spec.session,
    );
    d.store
        .write(move |tx| {
            let (mesh, name, command, cwd, env, description, allow, scope, session) = row;
            tx.execute(
                "INSERT INTO mcp_hosted (mesh, name, command, cwd, env, description, allow, scope,
                   session, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (mesh, name) DO UPDATE SET command = excluded.command,
                   cwd = excluded.cwd, env = excluded.env, description = excluded.description,
                   allow = excluded.allow, scope = excluded.scope, session = excluded.session,
                   added_at = excluded.added_at",
                params![
                    mesh.as_bytes(),
                    name,
                    command,
                    cwd,
                    env,
                    description,
                    allow,
                    scope,
                    session.map(|s| s.as_bytes().to_vec()),
                    now_ms()
                ],
            )?;
            Ok(())
        })
        .await?;
    let h = start(d, &m, p.name.clone(), spec);
    Ok(h.info(m.name()))
}

/// Start supervising a declared server (or a hosted service, from `deploy`).
pub(crate) fn start(d: &Arc<Daemon>, m: &Arc<MeshCtx>, name: String, spec: Spec) -> Arc<Hosted> {
    let h = Arc::new(Hosted {
        mesh: m.id,
        name: name.clone(),
        spec,
        run: std::sync::Mutex::new(Run {
            state: "starting",
            ..Run::default()
        }),
        logs: std::sync::Mutex::new(VecDeque::new()),
        client: std::sync::Mutex::new(None),
        stop: d.shutdown.child_token(),
        slots: tokio::sync::Semaphore::new(tools::MAX_RUNNING),
    });
    lock(&d.hosted).insert((m.id, name.clone()), h.clone());
    let span = tracing::info_span!("mcp_host", mesh = %m.id.short(), server = %name);
    use tracing::Instrument as _;
    d.tasks
        .spawn(supervise(d.clone(), m.clone(), h.clone()).instrument(span.clone()));
    if let Some(s) = h.spec.session {
        d.tasks
            .spawn(follow_session(d.clone(), m.clone(), h.clone(), s).instrument(span));
    }
    h
}

/// Stop a server (kill it) and forget it here; its row and catalog entry stay.
pub(crate) async fn stop(d: &Daemon, h: &Arc<Hosted>) {
    h.stop.cancel();
    lock(&d.hosted).remove(&(h.mesh, h.name.clone()));
}

/// `mcp_host_remove`: stop it, forget it, and take it out of the catalog.
pub(crate) async fn remove(d: &Arc<Daemon>, mesh: Option<&str>, name: &str) -> Result<(), Error> {
    let m = d.select(mesh)?;
    let h = lock(&d.hosted).get(&(m.id, name.to_string())).cloned();
    let (id, n) = (m.id, name.to_string());
    let deleted = d
        .store
        .write(move |tx| {
            tx.execute(
                "DELETE FROM mcp_hosted WHERE mesh = ?1 AND name = ?2",
                params![id.as_bytes(), n],
            )
        })
        .await?;
    if h.is_none() && deleted == 0 {
        return Err(Error::not_found(format!(
            "this daemon hosts no server named {name:?} (see `claudemesh mcp-host list`)"
        )));
    }
    if let Some(h) = h {
        stop(d, &h).await;
    }
    unpublish(d, &m, name).await
}

/// Take our registration of `name` out of the catalog, if there is one.
pub(crate) async fn unpublish(d: &Arc<Daemon>, m: &Arc<MeshCtx>, name: &str) -> Result<(), Error> {
    let (id, n, me) = (m.id, name.to_string(), m.keys.session);
    let ours: bool = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT 1 FROM mcp_servers WHERE mesh = ?1 AND name = ?2 AND host = ?3",
                params![id.as_bytes(), n, me.as_bytes()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
        .await?;
    if ours {
        crate::shared::oplog::write(
            d,
            m,
            None,
            Op::RemoveMcp {
                name: name.to_string(),
            },
            Some(0),
        )
        .await?;
    }
    Ok(())
}

/// A server a session registered ends with that session: its close bumps `changes`.
async fn follow_session(d: Arc<Daemon>, m: Arc<MeshCtx>, h: Arc<Hosted>, session: SessionId) {
    let mut changes = d.changes.subscribe();
    loop {
        let open = lock(&m.sessions).get(&session).is_some_and(|l| l.open);
        if !open {
            tracing::info!(session = %session.short(), "the session that registered it ended; removing it");
            if let Err(e) = remove(&d, Some(&m.id.to_string()), &h.name).await {
                tracing::warn!(error = %e, "cannot remove a server its session registered");
            }
            return;
        }
        tokio::select! {
            _ = h.stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// `mcp_host_list`.
pub(crate) fn list(d: &Daemon, mesh: Option<&str>) -> Result<McpHostListResult, Error> {
    let meshes = d.select_many(mesh)?;
    let mut servers: Vec<HostedServer> = Vec::new();
    for m in meshes {
        let name = m.name();
        let mut hs: Vec<_> = lock(&d.hosted)
            .values()
            .filter(|h| h.mesh == m.id)
            .cloned()
            .collect();
        hs.sort_by(|a, b| a.name.cmp(&b.name));
        servers.extend(hs.iter().map(|h| h.info(name.clone())));
    }
    Ok(McpHostListResult { servers })
}

/// `mcp_host_logs`.
pub(crate) fn logs(
    d: &Daemon,
    mesh: Option<&str>,
    name: &str,
    lines: Option<usize>,
) -> Result<Vec<String>, Error> {
    let m = d.select(mesh)?;
    let h = lock(&d.hosted)
        .get(&(m.id, name.to_string()))
        .cloned()
        .ok_or_else(|| {
            Error::not_found(format!(
                "this daemon hosts no server named {name:?} (see `claudemesh mcp-host list`)"
            ))
        })?;
    let n = lines.unwrap_or(200).max(1);
    let l = lock(&h.logs);
    Ok(l.iter().skip(l.len().saturating_sub(n)).cloned().collect())
}

/// At start: run every declared server, and take out of the catalog what this daemon
/// published once and no longer hosts.
pub(crate) async fn resume(d: Arc<Daemon>) {
    type Row = (
        Vec<u8>,
        String,
        String,
        Option<String>,
        String,
        String,
        String,
        String,
        Option<Vec<u8>>,
    );
    let rows: Vec<Row> = match d
        .store
        .read(|c| {
            let mut stmt = c.prepare(
                "SELECT mesh, name, command, cwd, env, description, allow, scope, session
                 FROM mcp_hosted ORDER BY mesh, name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the hosted MCP servers; none started");
            return;
        }
    };
    let mut declared: HashMap<MeshId, Vec<String>> = HashMap::new();
    for (mesh, name, command, cwd, env, description, allow, scope, session) in rows {
        let Some(m) = MeshId::from_slice(&mesh).and_then(|id| d.mesh(&id)) else {
            continue;
        };
        // A session's server whose session is gone (closed while the daemon was down)
        // ends as soon as `follow_session` sees it closed.
        let session = session.and_then(|s| SessionId::from_slice(&s));
        let spec = Spec {
            command: serde_json::from_str(&command).unwrap_or_default(),
            cwd: cwd.map(PathBuf::from),
            env: serde_json::from_str(&env).unwrap_or_default(),
            description,
            allow: serde_json::from_str(&allow).unwrap_or_default(),
            scope: serde_json::from_str(&scope).unwrap_or_default(),
            session,
            deployed: None,
        };
        declared.entry(m.id).or_default().push(name.clone());
        start(&d, &m, name, spec);
    }
    for m in d.meshes() {
        let (id, me) = (m.id, m.keys.session);
        let published: Vec<String> = d
            .store
            .read(move |c| {
                let mut stmt =
                    c.prepare("SELECT name FROM mcp_servers WHERE mesh = ?1 AND host = ?2")?;
                let rows = stmt.query_map(params![id.as_bytes(), me.as_bytes()], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .unwrap_or_default();
        let mut ours = declared.get(&m.id).cloned().unwrap_or_default();
        // Hosted services are `deploy`'s to register and take out.
        let id = m.id;
        ours.extend(
            d.store
                .read(move |c| {
                    let mut stmt = c.prepare("SELECT name FROM deployments WHERE mesh = ?1")?;
                    let rows = stmt.query_map(params![id.as_bytes()], |r| r.get(0))?;
                    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
                })
                .await
                .unwrap_or_default(),
        );
        for name in published.into_iter().filter(|n| !ours.contains(n)) {
            if let Err(e) = unpublish(&d, &m, &name).await {
                tracing::warn!(server = %name, error = %e, "cannot take a server no longer hosted out of the catalog");
            }
        }
    }
}

/// Keep one server running until it is stopped: start it, publish its tools, follow its
/// `list_changed`, restart it with backoff when it exits.
async fn supervise(d: Arc<Daemon>, m: Arc<MeshCtx>, h: Arc<Hosted>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        if h.stop.is_cancelled() {
            break;
        }
        h.set(|r| r.state = "starting");
        let started = tokio::time::Instant::now();
        let outcome = run_once(&d, &m, &h).await;
        *lock(&h.client) = None;
        h.set(|r| r.pid = None);
        if h.stop.is_cancelled() {
            break;
        }
        let why = match outcome {
            Ok(status) => format!("exited ({status})"),
            Err(e) => e,
        };
        tracing::warn!(why = %why, "hosted MCP server stopped; restarting");
        h.log(format!(
            "[claudemesh] {why}; restarting in {} ms",
            backoff.as_millis()
        ));
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_FIRST;
        }
        h.set(|r| {
            r.state = "restarting";
            r.restarts += 1;
            r.last_error = why;
        });
        tokio::select! {
            _ = h.stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
    h.set(|r| r.state = "stopped");
}

/// The command line as run: under `setpriv --pdeathsig KILL` on Linux where it exists.
fn command_line(spec: &Spec) -> Vec<String> {
    let mut argv = spec.command.clone();
    if cfg!(target_os = "linux")
        && let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .find(|p| std::path::Path::new(p).exists())
    {
        let mut v = vec![
            setpriv.to_string(),
            "--pdeathsig".into(),
            "KILL".into(),
            "--".into(),
        ];
        v.append(&mut argv);
        argv = v;
    }
    argv
}

/// Run the server once: until it exits (`Ok` with its status) or cannot be started or
/// spoken to (`Err`), or the hosted server is stopped.
async fn run_once(d: &Arc<Daemon>, m: &Arc<MeshCtx>, h: &Arc<Hosted>) -> Result<String, String> {
    use tokio::process::Command;
    let (argv, cwd) = match &h.spec.deployed {
        Some(dep) => {
            let inner = crate::sandbox::wrap(&dep.sandbox, &h.spec.command)?;
            let mut spec = h.spec.clone();
            spec.command = inner;
            (command_line(&spec), dep.sandbox.cwd.clone())
        }
        None => {
            let cwd = h
                .spec
                .cwd
                .clone()
                .unwrap_or_else(|| default_cwd(d, &h.mesh, &h.name));
            if h.spec.cwd.is_none() {
                std::fs::create_dir_all(&cwd).map_err(|e| {
                    format!("cannot create its working directory {}: {e}", cwd.display())
                })?;
            }
            (command_line(&h.spec), cwd)
        }
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&cwd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match &h.spec.deployed {
        // Only the service's own environment, set on the wrapper (which hands it on), never
        // on its command line.
        Some(dep) => {
            cmd.env_clear();
            for (k, v) in &dep.env {
                cmd.env(k, v);
            }
            for (k, _, v) in &dep.secrets {
                cmd.env(k, v.as_str());
            }
        }
        None => {
            for e in &h.spec.env {
                if let Some((k, v)) = e.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
    }
    // The daemon's own logging settings are not the server's.
    cmd.env_remove("CLAUDEMESH_LOG");
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", h.spec.command[0]))?;
    let pid = child.id();
    h.set(|r| r.pid = pid);
    h.log(format!(
        "[claudemesh] started (pid {})",
        pid.unwrap_or_default()
    ));
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("its stdio could not be opened".into());
    };
    let io = Arc::new(Stdio::new(stdin));
    // Its stdout: answers and notifications; its stderr: the log ring.
    use tracing::Instrument as _;
    let reader = {
        let io = io.clone();
        d.tasks.spawn(
            async move {
                use futures_util::StreamExt as _;
                let mut lines = tokio_util::codec::FramedRead::new(
                    stdout,
                    tokio_util::codec::LinesCodec::new_with_max_length(MAX_LINE),
                );
                while let Some(Ok(line)) = lines.next().await {
                    io.on_line(&line).await;
                }
                io.close();
            }
            .in_current_span(),
        )
    };
    let errs = {
        let h = h.clone();
        d.tasks.spawn(
            async move {
                use futures_util::StreamExt as _;
                let mut lines = tokio_util::codec::FramedRead::new(
                    stderr,
                    tokio_util::codec::LinesCodec::new_with_max_length(64 * 1024),
                );
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(l) => h.log(l),
                        Err(_) => h.log("[claudemesh] (an overlong stderr line was dropped)"),
                    }
                }
            }
            .in_current_span(),
        )
    };
    let kill = |child: &mut tokio::process::Child| {
        #[cfg(unix)]
        if let Some(pid) = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = child.start_kill();
    };
    let result = async {
        let init = io
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "claudemesh", "version": env!("CARGO_PKG_VERSION")},
                }),
                START_TIMEOUT,
            )
            .await
            .map_err(|e| format!("it did not answer `initialize`: {}", explain(&e)))?;
        if init.get("capabilities").and_then(|c| c.get("tools")).is_none() {
            h.log("[claudemesh] the server does not declare tools; listing them anyway");
        }
        io.notify("notifications/initialized")
            .await
            .map_err(|e| format!("it closed its input: {}", explain(&e)))?;
        let tools = list_tools(&io, &h.spec.allow)
            .await
            .map_err(|e| format!("it did not answer `tools/list`: {}", explain(&e)))?;
        *lock(&h.client) = Some(io.clone());
        h.set(|r| {
            r.state = "running";
            r.last_error.clear();
        });
        publish(d, m, h, tools).await;
        loop {
            tokio::select! {
                _ = h.stop.cancelled() => return Ok(None),
                s = child.wait() => return Ok(Some(s)),
                // Health: a server that stops answering `ping` is restarted.
                _ = tokio::time::sleep(HEALTH_EVERY) => {
                    // An error answer is an answer: only silence counts.
                    if let Err(e @ (CallError::Timeout | CallError::Closed)) =
                        io.request("ping", json!({}), HEALTH_TIMEOUT).await
                    {
                        return Err(format!("it stopped answering `ping`: {}", explain(&e)));
                    }
                }
                _ = io.list_changed.notified() => {
                    match list_tools(&io, &h.spec.allow).await {
                        Ok(tools) => publish(d, m, h, tools).await,
                        Err(e) => h.log(format!("[claudemesh] tools/list after list_changed failed: {}", explain(&e))),
                    }
                }
            }
        }
    }
    .await;
    io.close();
    let out = match result {
        Ok(Some(Ok(status))) => Ok(status.to_string()),
        Ok(Some(Err(e))) => Err(format!("cannot wait for it: {e}")),
        Ok(None) => {
            kill(&mut child);
            let _ = child.wait().await;
            h.log("[claudemesh] stopped");
            Ok("stopped".into())
        }
        Err(e) => {
            kill(&mut child);
            let _ = child.wait().await;
            Err(e)
        }
    };
    // Its output ends with it; a grandchild holding stderr open is not waited for.
    reader.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), errs).await;
    out
}

fn explain(e: &CallError) -> String {
    match e {
        CallError::Timeout => "no answer in time".into(),
        CallError::Closed => "it exited or closed its output".into(),
        CallError::Rpc(m) => format!("error {:?}", claudemesh_schema::names::one_line(m, 200)),
    }
}

/// `tools/list`, every page, filtered by the allowlist and held to the limits.
async fn list_tools(io: &Stdio, allow: &[String]) -> Result<Vec<ToolSpec>, CallError> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..32 {
        let params = match &cursor {
            Some(c) => json!({ "cursor": c }),
            None => json!({}),
        };
        let page = io.request("tools/list", params, START_TIMEOUT).await?;
        if let Some(list) = page.get("tools").and_then(Value::as_array) {
            for t in list {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                all.push(ToolSpec {
                    name: name.to_string(),
                    description: t
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    input_schema: t
                        .get("inputSchema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object"})),
                });
            }
        }
        cursor = page
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_string);
        if cursor.is_none() || all.len() > 4 * tools::MAX_TOOLS {
            break;
        }
    }
    if !allow.is_empty() {
        all.retain(|t| allow.contains(&t.name));
    }
    Ok(tools::admit(all).0)
}

/// A server's tools are known (started, or `list_changed`): publish them. A hosted
/// service is `deploy`'s to register (only while this daemon serves it): its tools are
/// recorded and `deploy` is woken.
async fn publish(d: &Arc<Daemon>, m: &Arc<MeshCtx>, h: &Arc<Hosted>, tools: Vec<ToolSpec>) {
    if h.spec.deployed.is_some() {
        h.set(|r| r.tools = tools);
        d.bump_changes();
        return;
    }
    register(d, m, h, tools).await;
}

/// Write the registration op if what the catalog holds for it differs.
pub(crate) async fn register(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    h: &Arc<Hosted>,
    tools: Vec<ToolSpec>,
) {
    let op = Op::RegisterMcp {
        name: h.name.clone(),
        description: h.spec.description.clone(),
        tools: tools.clone(),
        host: m.keys.session,
        persistent: h.spec.session.is_none(),
        scope: h.spec.scope.clone(),
    };
    h.set(|r| r.tools = tools.clone());
    let (id, name) = (m.id, h.name.clone());
    let held: Option<(String, String, Vec<u8>, bool, String)> = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT description, tools, host, persistent, scope FROM mcp_servers
                 WHERE mesh = ?1 AND name = ?2",
                params![id.as_bytes(), name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?)
        })
        .await
        .ok()
        .flatten();
    let same = held.is_some_and(|(desc, t, host, persistent, scope)| {
        desc == h.spec.description
            && serde_json::from_str::<Vec<ToolSpec>>(&t).ok().as_ref() == Some(&tools)
            && host.as_slice() == m.keys.session.as_bytes()
            && persistent == h.spec.session.is_none()
            && serde_json::from_str::<Scope>(&scope).ok().as_ref() == Some(&h.spec.scope)
    });
    if same {
        h.set(|r| r.published = true);
        return;
    }
    match crate::shared::oplog::write(d, m, None, op, Some(0)).await {
        Ok(_) => {
            h.set(|r| r.published = true);
            h.log(format!("[claudemesh] published {} tools", tools.len()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish a hosted MCP server");
            h.log(format!("[claudemesh] cannot publish: {e}"));
        }
    }
}
