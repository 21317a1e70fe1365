//! Sessions hosted by the daemon besides its own: each is a peer with its own id, key and
//! profile (the MCP shim opens one per Claude Code session). Ids and keys derive from the
//! member key and the client's stable key, so reopening is the same peer.

use claudemesh_schema::ipc::methods::{
    SessionCloseParams, SessionInfo, SessionOpenParams, SessionOpenResult, SessionProfile,
    SessionUpdateParams,
};
use claudemesh_schema::message::Profile;
use claudemesh_schema::now_ms;
use std::sync::Arc;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{LinkCmd, LocalSession, derive_session, lock};
use crate::store::SessionRow;
use claudemesh_schema::ipc::methods::StatusSource;
use claudemesh_schema::message::PeerStatus;
use claudemesh_schema::names;

/// `session_open`.
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
            groups.push(names::check("group name", g)?);
        }
    }
    let claude = p
        .claude_session
        .clone()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty() && c.len() <= 128);
    let mut out = Vec::new();
    for m in targets {
        let (derived, secret) = derive_session(&m.keys, &m.id, &key);
        // Which session does this key speak for? Its own, unless it was aliased to the
        // session a resumed Claude session had before.
        let mut sid = lock(&m.aliases).get(&key).copied().unwrap_or(derived);
        if let Some(cs) = &claude {
            let original = lock(&m.sessions)
                .iter()
                .find(|(id, l)| l.claude_session.as_deref() == Some(cs.as_str()) && **id != derived)
                .map(|(id, _)| *id);
            if let Some(orig) = original
                && orig != sid
            {
                lock(&m.aliases).insert(key.clone(), orig);
                d.store.set_alias(m.id, key.clone(), orig).await?;
                // A twin opened under this key before we knew: retire it.
                let twin_open = lock(&m.sessions).get(&derived).is_some_and(|l| l.open);
                if twin_open {
                    close_in(d, &m, derived).await?;
                }
                tracing::info!(session = %orig.short(), "resumed claude session keeps its peer");
                sid = orig;
            }
        }
        // Existing (open, or closed and now reopened): keep its profile, add how it is
        // reached, remember its Claude session id.
        let existing = {
            let mut sessions = lock(&m.sessions);
            sessions.get_mut(&sid).map(|l| {
                let mut changed = !l.open;
                l.open = true;
                l.lease_key = key.clone();
                for path in &p.delivery {
                    if matches!(path.as_str(), "channel" | "hooks" | "pull")
                        && !l.profile.delivery.contains(path)
                    {
                        l.profile.delivery.push(path.clone());
                        l.profile.delivery.sort();
                        changed = true;
                    }
                }
                let new_claude = claude.is_some() && l.claude_session.is_none();
                if new_claude {
                    l.claude_session = claude.clone();
                }
                let row = SessionRow {
                    mesh: m.id,
                    session: sid,
                    client_key: l.client_key.clone(),
                    profile: l.profile.clone(),
                    open: true,
                    claude_session: l.claude_session.clone(),
                };
                (l.profile.name.clone(), changed, new_claude, row)
            })
        };
        if let Some((name, changed, new_claude, row)) = existing {
            if changed {
                d.store.open_session(row, now_ms()).await?;
                let _ = m.link.tx.send(LinkCmd::Publish).await;
                d.bump_changes();
            }
            if new_claude && let Some(cs) = &claude {
                d.store.set_claude_session(m.id, sid, cs.clone()).await?;
            }
            out.push(SessionInfo {
                mesh: m.id,
                mesh_name: m.name(),
                session: sid,
                name,
            });
            continue;
        }
        let sid = derived;
        let profile = Profile {
            name: name
                .clone()
                .unwrap_or_else(|| lock(&m.row).display_name.clone()),
            kind: p.kind.clone().unwrap_or_else(|| "session".into()),
            status: Default::default(),
            summary: p.summary.clone().unwrap_or_default(),
            groups: groups.clone(),
            hostname: d.hostname.clone(),
            cwd: p.cwd.clone().unwrap_or_default(),
            visible: true,
            delivery: {
                let mut d: Vec<String> = p
                    .delivery
                    .iter()
                    .filter(|x| matches!(x.as_str(), "channel" | "hooks" | "pull"))
                    .cloned()
                    .collect();
                d.sort();
                d.dedup();
                d
            },
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
        };
        d.store
            .open_session(
                SessionRow {
                    mesh: m.id,
                    session: sid,
                    client_key: key.clone(),
                    profile: profile.clone(),
                    open: true,
                    claude_session: claude.clone(),
                },
                now_ms(),
            )
            .await?;
        if let Some(cs) = &claude {
            d.store.set_claude_session(m.id, sid, cs.clone()).await?;
        }
        let info = SessionInfo {
            mesh: m.id,
            mesh_name: m.name(),
            session: sid,
            name: profile.name.clone(),
        };
        lock(&m.sessions).insert(
            sid,
            LocalSession {
                client_key: key.clone(),
                lease_key: key.clone(),
                secret,
                profile,
                open: true,
                claude_session: claude.clone(),
                status_source: StatusSource::Manual,
                status_at: now_ms(),
            },
        );
        let _ = m.link.tx.send(LinkCmd::Publish).await;
        d.bump_changes();
        out.push(info);
    }
    Ok(SessionOpenResult { sessions: out })
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

/// Close `session` in mesh `m` if it is open there: it goes offline for peers, keeps its
/// inbox and key.
async fn close_in(
    d: &Arc<Daemon>,
    m: &Arc<crate::mesh::MeshCtx>,
    session: claudemesh_schema::SessionId,
) -> Result<Option<SessionInfo>, Error> {
    let removed = {
        let mut sessions = lock(&m.sessions);
        match sessions.get_mut(&session) {
            Some(l) if l.open => {
                l.open = false;
                Some(l.profile.clone())
            }
            _ => None,
        }
    };
    let Some(profile) = removed else {
        return Ok(None);
    };
    let now = now_ms();
    d.store.close_session(m.id, session, now).await?;
    let _ = d.store.presence_offline(m.id, session, now).await;
    let _ = m.link.tx.send(LinkCmd::Depart(session)).await;
    d.bump_changes();
    Ok(Some(SessionInfo {
        mesh: m.id,
        mesh_name: m.name(),
        session,
        name: profile.name,
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
            join.push(names::check("group name", g)?);
        }
    }
    for m in d.meshes() {
        let updated = {
            let mut sessions = lock(&m.sessions);
            let Some(l) = sessions.get_mut(&p.session) else {
                continue;
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
                    now_ms(),
                )
            {
                l.profile.status = s;
                l.status_source = p.source;
                l.status_at = now_ms();
            }
            if let Some(v) = p.visible {
                l.profile.visible = v;
            }
            for path in &p.delivery {
                if matches!(path.as_str(), "channel" | "hooks" | "pull")
                    && !l.profile.delivery.contains(path)
                {
                    l.profile.delivery.push(path.clone());
                    l.profile.delivery.sort();
                }
            }
            for g in &join {
                if !l.profile.groups.iter().any(|x| x.eq_ignore_ascii_case(g)) {
                    l.profile.groups.push(g.clone());
                }
            }
            for g in &p.leave_groups {
                let g = g.trim().trim_start_matches('@');
                l.profile.groups.retain(|x| !x.eq_ignore_ascii_case(g));
            }
            l.profile.clone()
        };
        let client_key = d
            .store
            .read(crate::store::q_sessions)
            .await?
            .into_iter()
            .find(|r| r.mesh == m.id && r.session == p.session)
            .map(|r| r.client_key)
            .unwrap_or_default();
        d.store
            .open_session(
                SessionRow {
                    mesh: m.id,
                    session: p.session,
                    client_key,
                    profile: updated.clone(),
                    open: true,
                    claude_session: None,
                },
                now_ms(),
            )
            .await?;
        let _ = m.link.tx.send(LinkCmd::Publish).await;
        d.bump_changes();
        return Ok(SessionProfile {
            session: p.session,
            name: updated.name,
            status: updated.status,
            summary: updated.summary,
            groups: updated.groups,
            visible: updated.visible,
        });
    }
    Err(Error::not_found(format!("no open session {}", p.session)))
}

/// How long a status report counts as fresh: within it, a lower-ranked source cannot
/// override a higher-ranked one.
const FRESH_MS: i64 = 60_000;
/// `working` without a fresh report decays to `idle` after this long (a crashed or
/// hook-less session must not look busy forever).
const WORKING_TTL_MS: i64 = 10 * 60_000;
/// How often the sweeper looks at hosted sessions.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

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

/// The Claude Code process behind a session key `claude-<pid>-<start>`: is it still the
/// same process? `None` for keys that do not name a process.
fn process_alive(client_key: &str) -> Option<bool> {
    let rest = client_key.strip_prefix("claude-")?;
    let (pid, start) = rest.split_once('-')?;
    let (pid, start): (u32, u64) = (pid.parse().ok()?, start.parse().ok()?);
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

/// Keeps hosted sessions honest: closes those whose Claude Code process has exited (its
/// peers see it go offline within one sweep), and lets a stale `working` decay to `idle`.
pub(crate) async fn sweeper(d: Arc<Daemon>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        for m in d.meshes() {
            let (dead, decayed) = {
                let mut sessions = lock(&m.sessions);
                let mut dead = Vec::new();
                let mut decayed = false;
                for (sid, l) in sessions.iter_mut().filter(|(_, l)| l.open) {
                    if process_alive(&l.lease_key) == Some(false) {
                        dead.push(*sid);
                    } else if l.profile.status == PeerStatus::Working
                        && now - l.status_at > WORKING_TTL_MS
                    {
                        l.profile.status = PeerStatus::Idle;
                        l.status_source = StatusSource::Jsonl;
                        l.status_at = now;
                        decayed = true;
                    }
                }
                (dead, decayed)
            };
            for session in dead {
                tracing::info!(session = %session.short(), "claude process gone; session offline");
                let _ = close(&d, SessionCloseParams { session }).await;
            }
            if decayed {
                let _ = m.link.tx.send(LinkCmd::Publish).await;
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
        assert_eq!(process_alive("ppid-12"), None);
        assert_eq!(process_alive("claude-999999999-1"), Some(false));
        let me = std::process::id();
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        let close = stat.rfind(')').unwrap();
        let start: u64 = stat[close + 1..]
            .split_whitespace()
            .nth(19)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(process_alive(&format!("claude-{me}-{start}")), Some(true));
        assert_eq!(
            process_alive(&format!("claude-{me}-{}", start + 1)),
            Some(false)
        );
    }
}
