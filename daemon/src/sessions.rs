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

use crate::daemon::Daemon;
use crate::membership::valid_name;
use crate::mesh::{LinkCmd, LocalSession, derive_session, lock};
use crate::rpc::RpcErr;
use crate::store::SessionRow;

/// `session_open`.
pub(crate) async fn open(
    d: &Arc<Daemon>,
    p: SessionOpenParams,
) -> Result<SessionOpenResult, RpcErr> {
    let key = p.client_key.trim().to_string();
    if key.is_empty() || key.len() > 256 {
        return Err(RpcErr::invalid("client_key must be 1 to 256 characters"));
    }
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => {
            let all = d.meshes();
            if all.is_empty() {
                return Err(d
                    .select(None)
                    .err()
                    .unwrap_or_else(|| RpcErr::not_found("no mesh")));
            }
            all
        }
    };
    let name = match &p.name {
        Some(n) => Some(valid_name("display name", n)?),
        None => None,
    };
    let mut groups = Vec::new();
    for g in &p.groups {
        let g = g.trim().trim_start_matches('@');
        if !g.is_empty() {
            groups.push(valid_name("group name", g)?);
        }
    }
    let mut out = Vec::new();
    for m in targets {
        let (sid, secret) = derive_session(&m.keys, &m.id, &key);
        // Already open (the MCP shim and the hooks of one Claude session both open it):
        // keep its profile.
        let existing = lock(&m.sessions)
            .get(&sid)
            .filter(|l| l.open)
            .map(|l| l.profile.name.clone());
        if let Some(name) = existing {
            out.push(SessionInfo {
                mesh: m.id,
                mesh_name: m.name(),
                session: sid,
                name,
            });
            continue;
        }
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
        };
        d.store
            .open_session(
                SessionRow {
                    mesh: m.id,
                    session: sid,
                    client_key: key.clone(),
                    profile: profile.clone(),
                    open: true,
                },
                now_ms(),
            )
            .await
            .map_err(RpcErr::internal)?;
        let info = SessionInfo {
            mesh: m.id,
            mesh_name: m.name(),
            session: sid,
            name: profile.name.clone(),
        };
        lock(&m.sessions).insert(
            sid,
            LocalSession {
                secret,
                profile,
                open: true,
            },
        );
        let _ = m.link.tx.try_send(LinkCmd::Publish);
        out.push(info);
    }
    Ok(SessionOpenResult { sessions: out })
}

/// `session_close`.
pub(crate) async fn close(d: &Arc<Daemon>, p: SessionCloseParams) -> Result<SessionInfo, RpcErr> {
    for m in d.meshes() {
        let removed = {
            let mut sessions = lock(&m.sessions);
            match sessions.get_mut(&p.session) {
                Some(l) if l.open => {
                    l.open = false;
                    Some(l.profile.clone())
                }
                _ => None,
            }
        };
        if let Some(profile) = removed {
            let now = now_ms();
            d.store
                .close_session(m.id, p.session, now)
                .await
                .map_err(RpcErr::internal)?;
            let _ = d.store.presence_offline(m.id, p.session, now).await;
            let _ = m.link.tx.try_send(LinkCmd::Depart(p.session));
            d.bump_changes();
            return Ok(SessionInfo {
                mesh: m.id,
                mesh_name: m.name(),
                session: p.session,
                name: profile.name,
            });
        }
    }
    Err(RpcErr::not_found(format!("no open session {}", p.session)))
}

/// `session_update`: change a hosted session's profile and republish it.
pub(crate) async fn update(
    d: &Arc<Daemon>,
    p: SessionUpdateParams,
) -> Result<SessionProfile, RpcErr> {
    let name = match &p.name {
        Some(n) => Some(valid_name("display name", n)?),
        None => None,
    };
    let mut join = Vec::new();
    for g in &p.join_groups {
        let g = g.trim().trim_start_matches('@');
        if !g.is_empty() {
            join.push(valid_name("group name", g)?);
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
            if let Some(s) = p.status {
                l.profile.status = s;
            }
            if let Some(v) = p.visible {
                l.profile.visible = v;
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
            .await
            .map_err(RpcErr::internal)?
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
                },
                now_ms(),
            )
            .await
            .map_err(RpcErr::internal)?;
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
    Err(RpcErr::not_found(format!("no open session {}", p.session)))
}
