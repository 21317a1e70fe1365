//! Sessions hosted by the daemon besides its own: each is a peer with its own id, key and
//! profile (the MCP shim and the hooks of one Claude Code session open the same one).
//!
//! **Identity.** Ids and keys derive from the member key and a client key: for Claude
//! Code `claude:<session id>` (the shim reads `CLAUDE_CODE_SESSION_ID`, hooks get
//! `session_id`), so resuming (`--resume`, `-c`) reopens the same peer, whichever of shim
//! and hooks comes first. One Claude Code process is one peer: a hook that reports a new
//! Claude session id (after `/clear`) from the process of an open session speaks for that
//! session, and the new id becomes an alias of it.
//!
//! **Lease.** A session is online while its process lives or a subscription holds it
//! (the shim keeps one for its lifetime). When neither does, it goes offline; one that
//! was never announced (a `claude mcp list` health check lives well under a second) is
//! forgotten instead. A session with neither a process nor a subscription (an API client
//! opening one by hand) lives until it is closed.
//!
//! **Status engine.** hook > manual > jsonl (the transcript); a fresher report of a lower
//! source does not override a higher one; `dnd` is cleared only manually; `working`
//! decays to `idle`.

use claudemesh_schema::ipc::methods::{
    SessionCloseParams, SessionInfo, SessionOpenParams, SessionOpenResult, SessionProfile,
    SessionUpdateParams, StatusSource,
};
use claudemesh_schema::message::{DeliveryPath, PeerStatus, Profile};
use claudemesh_schema::{MeshId, SessionId, names, now_ms};
use std::sync::Arc;
use std::time::Duration;

use crate::context::{Daemon, TranscriptCmd};
use crate::error::Error;
use crate::mesh::{Channel, LinkCmd, LocalSession, MeshCtx, derive_session, lock};
use crate::store::SessionRow;

/// How long a new session stays private before it is announced, unless it shows use
/// sooner: long enough for a health check (`initialize`, `tools/list`, exit) to come and go
/// unseen, short enough that a real session appears at once to the eye.
const SETTLE: Duration = Duration::from_secs(1);
/// How long a status report counts as fresh: within it, a lower-ranked source cannot
/// override a higher-ranked one.
const FRESH_MS: i64 = 60_000;
/// `working` without a fresh report decays to `idle` after this long (a crashed or
/// hook-less session must not look busy forever).
const WORKING_TTL_MS: i64 = 10 * 60_000;
/// How often the sweeper looks at hosted sessions (it also wakes when a lease may end).
const SWEEP_EVERY: Duration = Duration::from_secs(2);

fn clean(s: &Option<String>, max: usize) -> Option<String> {
    s.as_ref()
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty() && x.len() <= max)
}

/// The label of a session opened without a name: its working directory's last part.
fn default_label(cwd: Option<&str>) -> String {
    cwd.and_then(|c| std::path::Path::new(c).file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| names::check("session label", n).ok())
        .unwrap_or_else(|| "session".into())
}

/// `session_open`: open (or reopen) the session `p` speaks for, in each selected mesh.
pub(crate) async fn open(
    d: &Arc<Daemon>,
    p: SessionOpenParams,
) -> Result<SessionOpenResult, Error> {
    let key = p.client_key.trim().to_string();
    if key.is_empty() || key.len() > 256 {
        return Err(Error::invalid("client_key must be 1 to 256 characters"));
    }
    let targets = d.select_many(p.mesh.as_deref())?;
    let name = match &p.name {
        Some(n) => Some(names::check("display name", n)?),
        None => None,
    };
    let mut groups = Vec::new();
    for g in &p.groups {
        let g = g.trim().trim_start_matches('@');
        if !g.is_empty() {
            groups.push(names::check_group(g)?);
        }
    }
    let claude = clean(&p.claude_session, 128);
    let process = clean(&p.process, 64);
    // A transcript is a `.jsonl` file named by an absolute path.
    let transcript = clean(&p.transcript, 4096)
        .map(std::path::PathBuf::from)
        .filter(|t| t.is_absolute() && t.extension().is_some_and(|e| e == "jsonl"));
    let mut out = Vec::new();
    for m in targets {
        let (sid, fresh) = resolve(d, &m, &key, process.as_deref()).await?;
        let now = now_ms();
        // Known (open, or closed and now reopened): keep its profile, take what is new.
        let known = {
            let mut sessions = lock(&m.sessions);
            sessions.get_mut(&sid).map(|l| {
                let reopened = !l.open;
                let new_process = process.is_some() && l.process != process;
                if reopened || new_process {
                    // Counted from this opening: a new client's totals start at zero.
                    l.usage = crate::mesh::Usage::since(now);
                }
                l.open = true;
                l.active_at = now;
                if process.is_some() {
                    l.process = process.clone();
                }
                if claude.is_some() {
                    l.claude_session = claude.clone();
                }
                let new_transcript = transcript.is_some() && l.transcript != transcript;
                if new_transcript {
                    l.transcript = transcript.clone();
                }
                if let Some(n) = &name {
                    l.profile.name = n.clone();
                }
                (
                    reopened,
                    new_process,
                    new_transcript,
                    l.announced,
                    row_of(m.id, sid, l),
                )
            })
        };
        let (reopened, new_process, new_transcript, announced, row) = match known {
            Some(k) => k,
            None => {
                let profile = Profile {
                    name: name
                        .clone()
                        .unwrap_or_else(|| default_label(p.cwd.as_deref())),
                    member_name: lock(&m.row).display_name.clone(),
                    kind: p.kind.clone().unwrap_or_else(|| "session".into()),
                    status: Default::default(),
                    summary: p.summary.clone().unwrap_or_default(),
                    groups: groups.clone(),
                    hostname: d.hostname.clone(),
                    cwd: p.cwd.clone().unwrap_or_default(),
                    visible: true,
                    // Paths are listed once seen to work.
                    delivery: Vec::new(),
                    role: p
                        .role
                        .clone()
                        .map(|r| r.chars().take(64).collect())
                        .unwrap_or_default(),
                    client: p
                        .client
                        .clone()
                        .map(|c| c.chars().take(64).collect())
                        .unwrap_or_default(),
                    ..Profile::default()
                };
                let (_, secret) = derive_session(&m.keys, &m.id, &fresh);
                let l = LocalSession {
                    client_key: fresh.clone(),
                    secret,
                    profile,
                    open: true,
                    claude_session: claude.clone(),
                    process: process.clone(),
                    holds: 0,
                    held: false,
                    transcript: transcript.clone(),
                    // No report yet: any source may set the first one.
                    status_source: StatusSource::Jsonl,
                    status_at: now,
                    active_at: now,
                    announced: false,
                    pushes: false,
                    pulling: 0,
                    channel: Channel::Untried,
                    usage: crate::mesh::Usage::since(now),
                };
                let row = row_of(m.id, sid, &l);
                lock(&m.sessions).insert(sid, l);
                (true, false, transcript.is_some(), false, row)
            }
        };
        d.store.open_session(row, now).await?;
        if new_process {
            // Whatever the old process was shown and never confirmed left with it.
            d.store.forget_shown(sid).await?;
            if let Some(l) = lock(&m.sessions).get_mut(&sid) {
                l.channel = Channel::Untried;
            }
            d.wake([sid]);
        }
        // Follow its transcript: a new one, or again after a reopen (a closed session's
        // transcript is let go of a little after it ends).
        let follow = if new_transcript || reopened || new_process {
            lock(&m.sessions)
                .get(&sid)
                .and_then(|l| l.transcript.clone())
        } else {
            None
        };
        if let Some(t) = follow {
            let _ = d.transcripts.send(TranscriptCmd::Follow {
                mesh: m.id,
                session: sid,
                path: t,
            });
        }
        if !announced {
            settle_then_announce(d, &m, sid);
        } else if reopened {
            let _ = m.link.tx.send(LinkCmd::Publish(Some(sid))).await;
        }
        if reopened || new_process {
            d.bump_changes();
        }
        out.push(SessionInfo {
            mesh: m.id,
            mesh_name: m.name(),
            session: sid,
            name: lock(&m.sessions)
                .get(&sid)
                .map(|l| l.profile.name.clone())
                .unwrap_or_default(),
        });
    }
    Ok(SessionOpenResult { sessions: out })
}

fn row_of(mesh: MeshId, session: SessionId, l: &LocalSession) -> SessionRow {
    SessionRow {
        mesh,
        session,
        client_key: l.client_key.clone(),
        profile: l.profile.clone(),
        open: l.open,
        claude_session: l.claude_session.clone(),
        process: l.process.clone(),
        held: l.held,
        transcript: l.transcript.as_ref().map(|t| t.display().to_string()),
        announced: l.announced,
    }
}

/// Which session `key` (from `process`) speaks for, and the client key a new one derives
/// from. The process of an open session wins (one Claude Code process is one peer), then an
/// alias, then the key itself. A key seen for the first time with an open session's process
/// becomes an alias of that session.
async fn resolve(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    key: &str,
    process: Option<&str>,
) -> Result<(SessionId, String), Error> {
    let (derived, _) = derive_session(&m.keys, &m.id, key);
    let by_process = process.and_then(|p| {
        lock(&m.sessions)
            .iter()
            .find(|(_, l)| l.open && l.process.as_deref() == Some(p))
            .map(|(id, _)| *id)
    });
    let alias = lock(&m.aliases).get(key).copied();
    let bound = alias.is_some() || lock(&m.sessions).contains_key(&derived);
    match (by_process, alias) {
        (Some(s), _) => {
            if !bound && s != derived {
                lock(&m.aliases).insert(key.to_string(), s);
                d.store.set_alias(m.id, key.to_string(), s).await?;
                tracing::info!(session = %s.short(), "a new claude session id in the same process keeps its peer");
            }
            Ok((s, key.to_string()))
        }
        (None, Some(s)) if lock(&m.sessions).contains_key(&s) => Ok((s, key.to_string())),
        (None, _) => Ok((derived, key.to_string())),
    }
}

/// Announce `sid` after [`SETTLE`] if it is still open and not announced by then.
fn settle_then_announce(d: &Arc<Daemon>, m: &Arc<MeshCtx>, sid: SessionId) {
    let (d2, m2) = (d.clone(), m.clone());
    d.spawn(async move {
        tokio::select! {
            _ = d2.shutdown.cancelled() => {}
            _ = tokio::time::sleep(SETTLE) => announce(&d2, &m2, sid).await,
        }
    });
}

/// Send the session's presence for the first time (no-op once announced or closed).
pub(crate) async fn announce(d: &Daemon, m: &MeshCtx, sid: SessionId) {
    let row = match lock(&m.sessions).get_mut(&sid) {
        Some(l) if l.open && !l.announced => {
            l.announced = true;
            Some(row_of(m.id, sid, l))
        }
        _ => None,
    };
    if let Some(row) = row {
        let _ = d.store.open_session(row, now_ms()).await;
        let _ = m.link.tx.send(LinkCmd::Publish(Some(sid))).await;
        d.bump_changes();
    }
}

/// The session shows use (a hook, a tool call, its transcript grew): it becomes the most
/// recently active one, and is announced now if it was not yet.
pub(crate) async fn touch(d: &Daemon, m: &MeshCtx, sid: SessionId) {
    let before = m.designated();
    if let Some(l) = lock(&m.sessions).get_mut(&sid) {
        l.active_at = now_ms();
    }
    if m.designated() != before {
        // Messages to the person now belong to another session.
        d.arrived(m, &[], true);
    }
    announce(d, m, sid).await;
}

/// The mesh and context of a hosted session.
pub(crate) fn find(d: &Daemon, sid: &SessionId) -> Option<Arc<MeshCtx>> {
    d.meshes()
        .into_iter()
        .find(|m| lock(&m.sessions).contains_key(sid))
}

/// A path was seen to work for the session: list it in its presence.
pub(crate) async fn path_seen(d: &Daemon, m: &MeshCtx, sid: SessionId, path: DeliveryPath) {
    let name = path.as_str();
    let changed = match lock(&m.sessions).get_mut(&sid) {
        Some(l) if !l.profile.delivery.iter().any(|x| x == name) => {
            l.profile.delivery.push(name.to_string());
            l.profile.delivery.sort();
            if path == DeliveryPath::Channel {
                l.channel = Channel::Works;
            }
            l.announced.then(|| row_of(m.id, sid, l))
        }
        _ => None,
    };
    if let Some(row) = changed {
        let _ = d.store.open_session(row, now_ms()).await;
        let _ = m.link.tx.send(LinkCmd::Publish(Some(sid))).await;
        d.bump_changes();
    }
}

/// A pull waits on `sid` (see [`pulling`]); dropping it lets pushes go on.
#[derive(Debug)]
pub(crate) struct Pulling {
    d: Arc<Daemon>,
    m: Arc<MeshCtx>,
    sid: SessionId,
}

/// Mark a pull as waiting on `sid` for as long as the guard lives.
pub(crate) fn pulling(d: &Arc<Daemon>, m: &Arc<MeshCtx>, sid: SessionId) -> Option<Pulling> {
    lock(&m.sessions).get_mut(&sid)?.pulling += 1;
    Some(Pulling {
        d: d.clone(),
        m: m.clone(),
        sid,
    })
}

impl Drop for Pulling {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.m.sessions).get_mut(&self.sid) {
            l.pulling = l.pulling.saturating_sub(1);
        }
        self.d.wake([self.sid]);
    }
}

/// A subscription holds the session (see the module doc); dropping the guard lets go.
#[derive(Debug)]
pub(crate) struct Hold {
    d: Arc<Daemon>,
    m: Arc<MeshCtx>,
    sid: SessionId,
}

/// Hold `sid` for as long as the returned guard lives; `pushes` records that the holder
/// takes channel pushes.
pub(crate) fn hold(d: &Arc<Daemon>, sid: SessionId, pushes: bool) -> Option<Hold> {
    let m = find(d, &sid)?;
    {
        let mut sessions = lock(&m.sessions);
        let l = sessions.get_mut(&sid)?;
        l.holds += 1;
        l.held = true;
        l.pushes |= pushes;
    }
    Some(Hold {
        d: d.clone(),
        m,
        sid,
    })
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.m.sessions).get_mut(&self.sid) {
            l.holds = l.holds.saturating_sub(1);
            if l.holds == 0 {
                l.pushes = false;
            }
        }
        self.d.sweep.notify_one();
    }
}

/// A `SessionEnd` hook: close the session `key` (or the open one of `process`) speaks
/// for, in every mesh, unless a subscription still holds it (the MCP shim closes it
/// itself as it exits). Nothing is opened for it.
pub(crate) async fn end(d: &Arc<Daemon>, key: &str, process: Option<&str>) -> Result<(), Error> {
    for m in d.meshes() {
        let (derived, _) = derive_session(&m.keys, &m.id, key);
        let sid = {
            let sessions = lock(&m.sessions);
            process
                .and_then(|p| {
                    sessions
                        .iter()
                        .find(|(_, l)| l.open && l.process.as_deref() == Some(p))
                        .map(|(id, _)| *id)
                })
                .or_else(|| lock(&m.aliases).get(key).copied())
                .unwrap_or(derived)
        };
        let held = lock(&m.sessions).get(&sid).is_some_and(|l| l.holds > 0);
        if !held {
            close_in(d, &m, sid).await?;
        }
    }
    Ok(())
}

/// `session_close`.
pub(crate) async fn close(d: &Arc<Daemon>, p: SessionCloseParams) -> Result<SessionInfo, Error> {
    for m in d.meshes() {
        if let Some(info) = close_in(d, &m, p.session).await? {
            return Ok(info);
        }
    }
    Err(Error::not_found(format!("no open session {}", p.session)))
}

/// Close `session` in mesh `m` if it is open there: it goes offline for peers and keeps
/// its inbox and key; one never announced is forgotten.
async fn close_in(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    session: SessionId,
) -> Result<Option<SessionInfo>, Error> {
    let closed = {
        let mut sessions = lock(&m.sessions);
        match sessions.get_mut(&session) {
            Some(l) if l.open => {
                l.open = false;
                let r = (l.profile.name.clone(), l.announced, l.transcript.is_some());
                if !l.announced {
                    sessions.remove(&session);
                }
                Some(r)
            }
            _ => None,
        }
    };
    let Some((name, announced, transcript)) = closed else {
        return Ok(None);
    };
    let _ = d.transcripts.send(TranscriptCmd::Forget {
        mesh: m.id,
        session,
    });
    // What it was handed and never confirmed may be shown elsewhere (a message to the
    // person) or when it comes back. With a transcript, that waits until the watcher has
    // read its last lines (which may still confirm them); see `released`.
    if !transcript {
        let _ = d.store.forget_shown(session).await;
    }
    d.wake([session]);
    d.arrived(m, &[], true);
    let now = now_ms();
    if announced {
        d.store.close_session(m.id, session, now).await?;
        let _ = d.store.presence_offline(m.id, session, now).await;
        let _ = m.link.tx.send(LinkCmd::Depart(session)).await;
    } else {
        lock(&m.aliases).retain(|_, s| *s != session);
        d.store.forget_session_rows(m.id, session).await?;
        tracing::debug!(session = %session.short(), "session ended before it was announced; forgotten");
    }
    d.bump_changes();
    Ok(Some(SessionInfo {
        mesh: m.id,
        mesh_name: m.name(),
        session,
        name,
    }))
}

/// `session_update`: change a hosted session's profile and republish it.
pub(crate) async fn update(
    d: &Arc<Daemon>,
    p: SessionUpdateParams,
) -> Result<SessionProfile, Error> {
    let name = match &p.name {
        Some(n) => Some(names::check("display name", n)?),
        None => None,
    };
    let mut join = Vec::new();
    for g in &p.join_groups {
        let g = g.trim().trim_start_matches('@');
        if !g.is_empty() {
            join.push(names::check_group(g)?);
        }
    }
    // What peers' models will read: held to the rules peers hold them to on receipt
    // (`Profile::from_peer`), so what this session sees of itself is what others see.
    let line = |s: &Option<String>, max: usize| s.as_deref().map(|v| names::one_line(v, max));
    let group_role = line(&p.group_role, claudemesh_schema::message::MAX_GROUP_ROLE);
    let avatar = line(&p.avatar, claudemesh_schema::message::MAX_AVATAR);
    let title = line(&p.title, claudemesh_schema::message::MAX_TITLE);
    let bio = line(&p.bio, claudemesh_schema::message::MAX_BIO);
    let capabilities = p.capabilities.as_ref().map(|c| {
        let mut v: Vec<String> = c
            .iter()
            .map(|x| names::one_line(x, claudemesh_schema::message::MAX_CAPABILITY))
            .filter(|x| !x.is_empty())
            .collect();
        v.truncate(claudemesh_schema::message::MAX_CAPABILITIES);
        v
    });
    let Some(m) = find(d, &p.session) else {
        return Err(Error::not_found(format!("no open session {}", p.session)));
    };
    let profile_only =
        avatar.is_none() && title.is_none() && bio.is_none() && capabilities.is_none();
    // Only the status (a hook at each turn or tool call): its presence is coalesced.
    let status_only = name.is_none()
        && p.summary.is_none()
        && p.visible.is_none()
        && p.delivery.is_empty()
        && join.is_empty()
        && p.leave_groups.is_empty()
        && profile_only;
    let now = now_ms();
    let (row, profile) = {
        let mut sessions = lock(&m.sessions);
        let Some(l) = sessions.get_mut(&p.session) else {
            return Err(Error::not_found(format!("no open session {}", p.session)));
        };
        if let Some(n) = &name {
            l.profile.name = n.clone();
        }
        if let Some(s) = &p.summary {
            l.profile.summary = s.chars().take(500).collect();
        }
        if let Some(s) = p.status
            && accept_status(
                l.profile.status,
                l.status_source,
                l.status_at,
                s,
                p.source,
                now,
            )
        {
            l.profile.status = s;
            l.status_source = p.source;
            l.status_at = now;
        }
        if let Some(v) = p.visible {
            l.profile.visible = v;
        }
        for g in &join {
            let had = l
                .profile
                .groups
                .iter()
                .find(|x| x.eq_ignore_ascii_case(g))
                .cloned();
            let g = match had {
                Some(x) => x,
                None => {
                    l.profile.groups.push(g.clone());
                    g.clone()
                }
            };
            match group_role.as_deref() {
                Some("") => {
                    l.profile.group_roles.remove(&g);
                }
                Some(r) => {
                    l.profile.group_roles.insert(g, r.to_string());
                }
                None => {}
            }
        }
        for g in &p.leave_groups {
            let g = g.trim().trim_start_matches('@');
            l.profile.groups.retain(|x| !x.eq_ignore_ascii_case(g));
            l.profile
                .group_roles
                .retain(|x, _| !x.eq_ignore_ascii_case(g));
        }
        if let Some(a) = &avatar {
            l.profile.avatar = a.clone();
        }
        if let Some(t) = &title {
            l.profile.title = t.clone();
        }
        if let Some(b) = &bio {
            l.profile.bio = b.clone();
        }
        if let Some(c) = &capabilities {
            l.profile.capabilities = c.clone();
        }
        (row_of(m.id, p.session, l), l.profile.clone())
    };
    d.store.open_session(row, now).await?;
    touch(d, &m, p.session).await;
    // A status change may release held messages.
    d.wake([p.session]);
    let cmd = if status_only {
        LinkCmd::PublishStatus(p.session)
    } else {
        LinkCmd::Publish(Some(p.session))
    };
    let _ = m.link.tx.send(cmd).await;
    d.bump_changes();
    Ok(SessionProfile {
        session: p.session,
        name: profile.name,
        status: profile.status,
        summary: profile.summary,
        groups: profile.groups,
        visible: profile.visible,
        group_roles: profile.group_roles,
        avatar: profile.avatar,
        title: profile.title,
        bio: profile.bio,
        capabilities: profile.capabilities,
    })
}

/// What the transcript says of the session's status (the lowest-ranked source).
pub(crate) async fn transcript_status(
    d: &Arc<Daemon>,
    mesh: MeshId,
    sid: SessionId,
    s: PeerStatus,
) {
    let Some(m) = d.mesh(&mesh) else { return };
    let now = now_ms();
    let before = m.designated();
    let changed = match lock(&m.sessions).get_mut(&sid) {
        Some(l) if l.open => {
            l.active_at = now;
            if l.profile.status != s
                && accept_status(
                    l.profile.status,
                    l.status_source,
                    l.status_at,
                    s,
                    StatusSource::Jsonl,
                    now,
                )
            {
                l.profile.status = s;
                l.status_source = StatusSource::Jsonl;
                l.status_at = now;
                l.announced
            } else {
                false
            }
        }
        _ => false,
    };
    if m.designated() != before {
        d.arrived(&m, &[], true);
    }
    if changed {
        d.wake([sid]);
        let _ = m.link.tx.send(LinkCmd::PublishStatus(sid)).await;
        d.bump_changes();
    }
}

/// The transcript watcher let go of a closed session's transcript: what the session was
/// handed and its transcript never confirmed is free for other paths and sessions.
pub(crate) async fn released(d: &Arc<Daemon>, mesh: MeshId, sid: SessionId) {
    let Some(m) = d.mesh(&mesh) else { return };
    let closed = lock(&m.sessions).get(&sid).is_none_or(|l| !l.open);
    if closed {
        let _ = d.store.forget_shown(sid).await;
        d.arrived(&m, &[], true);
    }
}

/// The status engine: may `new` from `source` replace `current` (set by `cur_source` at
/// `cur_at`)? Higher-ranked sources win; a lower one wins only once the current report is
/// stale; `dnd` is cleared only manually.
pub(crate) fn accept_status(
    current: PeerStatus,
    cur_source: StatusSource,
    cur_at: i64,
    new: PeerStatus,
    source: StatusSource,
    now: i64,
) -> bool {
    if current == PeerStatus::Dnd && new != PeerStatus::Dnd && source != StatusSource::Manual {
        return false;
    }
    if source == StatusSource::Manual && new == PeerStatus::Dnd {
        return true;
    }
    source >= cur_source || now - cur_at > FRESH_MS
}

/// The process of a session, `<pid>-<start time>`: is it still that process? `None` when
/// it cannot be told (no `/proc`, or a key that names no process).
pub(crate) fn process_alive(key: &str) -> Option<bool> {
    let (pid, start) = key.split_once('-')?;
    let (pid, start): (u32, u64) = (pid.parse().ok()?, start.parse().ok()?);
    if !std::path::Path::new("/proc/self/stat").exists() {
        return None;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Some(false);
    };
    let close = stat.rfind(')')?;
    let now_start: u64 = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some(now_start == start)
}

/// Is the lease of `l` over? (See the module doc.)
fn lease_over(l: &LocalSession) -> bool {
    if l.holds > 0 {
        return false;
    }
    match l.process.as_deref().map(process_alive) {
        Some(Some(alive)) => !alive,
        // A process we cannot check, or none: held sessions end with their last hold.
        _ => l.held,
    }
}

/// Follow the transcripts of the open sessions loaded at start-up.
pub(crate) fn follow_transcripts(d: &Daemon) {
    for m in d.meshes() {
        for (sid, l) in lock(&m.sessions).iter().filter(|(_, l)| l.open) {
            if let Some(t) = &l.transcript {
                let _ = d.transcripts.send(TranscriptCmd::Follow {
                    mesh: m.id,
                    session: *sid,
                    path: t.clone(),
                });
            }
        }
    }
}

/// Keeps hosted sessions honest: closes those whose lease ended (their peers see them go
/// offline within one sweep, or at once when a hold ends), and lets a stale `working`
/// decay to `idle`.
pub(crate) async fn sweeper(d: Arc<Daemon>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    // Sessions loaded from the store get one sweep period to be held again (a shim
    // reconnecting after a daemon restart).
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = d.sweep.notified() => {}
        }
        let now = now_ms();
        for m in d.meshes() {
            let (dead, decayed) = {
                let mut sessions = lock(&m.sessions);
                let mut dead = Vec::new();
                let mut decayed = Vec::new();
                for (sid, l) in sessions.iter_mut().filter(|(_, l)| l.open) {
                    if lease_over(l) {
                        dead.push(*sid);
                    } else if l.profile.status == PeerStatus::Working
                        && now - l.status_at > WORKING_TTL_MS
                    {
                        l.profile.status = PeerStatus::Idle;
                        l.status_source = StatusSource::Jsonl;
                        l.status_at = now;
                        decayed.push(*sid);
                    }
                }
                (dead, decayed)
            };
            for session in dead {
                tracing::info!(session = %session.short(), "session's process and holders are gone; offline");
                let _ = close_in(&d, &m, session).await;
            }
            for sid in decayed {
                d.wake([sid]);
                let _ = m.link.tx.send(LinkCmd::PublishStatus(sid)).await;
                d.bump_changes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerStatus::*;
    use StatusSource::*;

    #[test]
    fn status_engine_ranks_sources_and_protects_dnd() {
        let t = 1_000_000;
        // A fresh hook status is not overridden by a manual or jsonl report…
        assert!(!accept_status(Working, Hook, t, Idle, Manual, t + 1000));
        assert!(!accept_status(Working, Hook, t, Idle, Jsonl, t + 1000));
        // …but a stale one is.
        assert!(accept_status(
            Working,
            Hook,
            t,
            Idle,
            Jsonl,
            t + FRESH_MS + 1
        ));
        // Higher or equal sources always win.
        assert!(accept_status(Idle, Manual, t, Working, Hook, t + 1));
        assert!(accept_status(Idle, Hook, t, Working, Hook, t + 1));
        // DND is cleared only manually, and a manual DND always applies.
        assert!(!accept_status(
            Dnd,
            Manual,
            t,
            Idle,
            Hook,
            t + FRESH_MS * 10
        ));
        assert!(accept_status(Dnd, Manual, t, Idle, Manual, t + 1));
        assert!(accept_status(Working, Hook, t, Dnd, Manual, t + 1));
    }

    #[test]
    fn process_keys_track_the_process() {
        assert_eq!(process_alive("not-a-process"), None);
        assert_eq!(process_alive("999999999-1"), Some(false));
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let close = stat.rfind(')').unwrap();
        let start: u64 = stat[close + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(process_alive(&format!("{me}-{start}")), Some(true));
        assert_eq!(process_alive(&format!("{me}-{}", start + 1)), Some(false));
    }

    #[test]
    fn labels_default_to_the_working_directory() {
        assert_eq!(default_label(Some("/home/bob/src/api")), "api");
        assert_eq!(default_label(Some("/")), "session");
        assert_eq!(default_label(None), "session");
    }
}
