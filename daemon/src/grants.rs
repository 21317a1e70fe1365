//! Per-peer grants: this daemon's local policy on what other members may send it. A member
//! without a row has every capability; `block` drops everything it sends, silently (its
//! daemon still hears that the envelope was delivered, so a blocked peer learns nothing).
//! `dm` and `broadcast` are enforced in [`crate::delivery`] on every incoming message;
//! `state-write` on every read of shared state here: items that member wrote (keys,
//! memories, tasks, contexts, skills, also as prompts) are hidden from this daemon's
//! sessions. It is a view, not a veto: the member's ops stay in the shared log and in
//! everyone's fold, so it can still overwrite or delete shared items. `file-read` on every
//! question about a folder this daemon shares (`crate::peer_files`): without it the
//! member is told so. `state-read` is recorded only: every member holds the mesh key that
//! seals shared state.

use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::ipc::trust::{CAPABILITIES, GrantParams, GrantsResult, PeerGrants};
use std::sync::Arc;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{MeshCtx, lock};
use crate::store::{self, Grant};

impl MeshCtx {
    /// Members whose shared-state writes this daemon's sessions do not see.
    pub(crate) fn hidden_writers(&self) -> crate::shared::query::Hidden {
        crate::shared::query::Hidden::new(
            lock(&self.grants)
                .iter()
                .filter(|(_, g)| !g.allows("state-write"))
                .map(|(k, _)| *k),
        )
    }

    /// May `member` do `cap` here?
    pub(crate) fn allows(&self, member: &MemberKey, cap: &str) -> bool {
        lock(&self.grants).get(member).is_none_or(|g| g.allows(cap))
    }
}

/// Another member of a mesh, with the names and sessions its presences show.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) key: MemberKey,
    pub(crate) names: Vec<String>,
    sessions: Vec<String>,
}

impl Peer {
    /// Does selector `q` name this member: one of its session names, or (4+ characters) a
    /// prefix of its fingerprint or of one of its session ids?
    pub(crate) fn selected_by(&self, q: &str) -> bool {
        let q = q.trim().to_lowercase();
        let hex = q.replace('-', "");
        self.names.iter().any(|n| n.to_lowercase() == q)
            || (hex.len() >= 4
                && (self.key.fingerprint().replace('-', "").starts_with(&hex)
                    || self.sessions.iter().any(|s| s.starts_with(&hex))))
    }
}

/// The other members of `m` (from its roster), named from the presence cache.
pub(crate) async fn peers(d: &Arc<Daemon>, m: &MeshCtx) -> Result<Vec<Peer>, Error> {
    let mesh = m.id;
    let presences = d.store.read(move |c| store::q_presence(c, mesh)).await?;
    let me = m.member();
    let keys: Vec<MemberKey> = lock(&m.roster)
        .roster
        .members()
        .map(|(k, _)| *k)
        .filter(|k| *k != me)
        .collect();
    Ok(keys
        .into_iter()
        .map(|key| {
            let mine = presences.iter().filter(|p| p.member == key);
            let mut names: Vec<String> = mine.clone().map(|p| p.profile.name.clone()).collect();
            names.sort();
            names.dedup();
            let sessions = mine.map(|p| p.session.0.simple().to_string()).collect();
            Peer {
                key,
                names,
                sessions,
            }
        })
        .collect())
}

/// The one member a peer selector names (see [`Peer::selected_by`]).
pub(crate) async fn resolve_member(d: &Arc<Daemon>, m: &MeshCtx, q: &str) -> Result<Peer, Error> {
    let mut hits: Vec<Peer> = peers(d, m)
        .await?
        .into_iter()
        .filter(|p| p.selected_by(q))
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(Error::not_found(format!(
            "no member of {} matches {q:?}; `claudemesh verify` lists them",
            m.name()
        ))),
        _ => Err(Error::ambiguous(format!(
            "{q:?} matches several members; use a fingerprint prefix"
        ))),
    }
}

fn check_caps(caps: &[String]) -> Result<Vec<String>, Error> {
    if caps.iter().any(|c| c == "all") {
        return Ok(CAPABILITIES.iter().map(|c| c.to_string()).collect());
    }
    if caps.is_empty() {
        return Err(Error::invalid(format!(
            "name the capabilities: {} (or all)",
            CAPABILITIES.join(", ")
        )));
    }
    for c in caps {
        if !CAPABILITIES.contains(&c.as_str()) {
            return Err(Error::invalid(format!(
                "unknown capability {c:?}: use {} (or all)",
                CAPABILITIES.join(", ")
            )));
        }
    }
    Ok(caps.to_vec())
}

/// `grant`, `revoke` or `block` (per `what`), then the mesh's grants.
pub(crate) async fn change(
    d: &Arc<Daemon>,
    p: GrantParams,
    what: &str,
) -> Result<GrantsResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let member = resolve_member(d, &m, &p.peer).await?.key;
    let mut g = lock(&m.grants).get(&member).cloned().unwrap_or_default();
    match what {
        "grant" => g.caps.extend(check_caps(&p.caps)?),
        "revoke" => {
            for c in check_caps(&p.caps)? {
                g.caps.remove(&c);
            }
        }
        _ => g.blocked = !p.undo,
    }
    let (mesh, caps, blocked) = (m.id, g.caps.clone(), g.blocked);
    let default = g == Grant::default();
    d.store
        .put_grant(mesh, member, (!default).then_some(caps), blocked)
        .await?;
    {
        let mut all = lock(&m.grants);
        if default {
            all.remove(&member);
        } else {
            all.insert(member, g);
        }
    }
    tracing::info!(mesh = %m.id.short(), member = %member.short(), what, "grants changed");
    list(d, &m).await
}

/// Peers of `m` with non-default grants.
pub(crate) async fn list(d: &Arc<Daemon>, m: &MeshCtx) -> Result<GrantsResult, Error> {
    let named = peers(d, m).await?;
    let mut out: Vec<PeerGrants> = lock(&m.grants)
        .iter()
        .map(|(k, g)| PeerGrants {
            member: k.to_b64(),
            fingerprint: k.fingerprint(),
            names: named
                .iter()
                .find(|p| p.key == *k)
                .map(|p| p.names.clone())
                .unwrap_or_default(),
            caps: g.caps.iter().cloned().collect(),
            blocked: g.blocked,
        })
        .collect();
    out.sort_by(|a, b| a.names.cmp(&b.names).then_with(|| a.member.cmp(&b.member)));
    Ok(GrantsResult {
        mesh: m.id,
        peers: out,
    })
}
