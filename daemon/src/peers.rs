//! Who is in each mesh, as this daemon knows it (`claudemesh peers`, `list_peers`).

use claudemesh_schema::SessionId;
use claudemesh_schema::ipc::methods::{MeshPeers, PeerInfo, PeersParams, PeersResult};
use rusqlite::Connection;
use std::sync::Arc;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::lock;
use crate::store::{self, MeshRow};

/// `peers`.
pub(crate) async fn list(d: &Arc<Daemon>, p: PeersParams) -> Result<PeersResult, Error> {
    let grace = (!p.all).then(|| d.cfg.peers.offline_grace_secs as i64 * 1000);
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    let mut out = Vec::new();
    for x in targets {
        let row = lock(&x.row).clone();
        let cached = !x.link.connected();
        let (id, name) = (row.id, row.name.clone());
        let peers = d.store.read(move |c| q_peers(c, &row, grace)).await?;
        out.push(MeshPeers {
            mesh: id,
            name,
            cached,
            peers,
        });
    }
    Ok(PeersResult { meshes: out })
}

/// Peers of a mesh as shown by `peers`: people (a member's daemon session) and their
/// sessions, online first. Our own daemon session is left out; our other sessions are
/// marked `me`. With `grace` (ms), sessions that ended longer ago are left out too: they
/// are history, not peers (members always stay, with their last-seen time).
pub fn q_peers(
    conn: &Connection,
    mesh: &MeshRow,
    grace: Option<i64>,
) -> store::Result<Vec<PeerInfo>> {
    let now = claudemesh_schema::now_ms();
    // Live file reservations, by holder (a store from before shared state has none).
    let mut held: std::collections::HashMap<SessionId, Vec<String>> = Default::default();
    for r in
        crate::shared::query::q_reservations(conn, mesh.id, false, now, None, &Default::default())
            .map(|r| r.0)
            .unwrap_or_default()
    {
        held.entry(r.holder_id).or_default().extend(r.patterns);
    }
    let grants = store::q_grants(conn, mesh.id).unwrap_or_default();
    let mut peers: Vec<PeerInfo> = store::q_presence(conn, mesh.id)?
        .into_iter()
        .filter(|p| p.session != mesh.session)
        // A session its own signed presence says is hidden (`set_visible(false)`) is not
        // listed here, whatever its daemon does; our own sessions always are.
        .filter(|p| p.profile.visible || p.member == mesh.member)
        .filter(|p| grace.is_none_or(|g| !crate::delivery::send::stale(p, g, now)))
        .map(|p| {
            let (person, _) = p.names();
            PeerInfo {
                id: p.session,
                member: p.member.to_b64(),
                member_name: person,
                name: p.profile.name,
                kind: p.profile.kind,
                status: p.profile.status,
                summary: p.profile.summary,
                groups: p.profile.groups,
                hostname: p.profile.hostname,
                online: p.online,
                last_seen: p.last_seen,
                me: p.member == mesh.member,
                delivery: p.profile.delivery,
                role: p.profile.role,
                client: p.profile.client,
                reservations: held.remove(&p.session).unwrap_or_default(),
                grants: grants
                    .get(&p.member)
                    .map(|g| g.caps.iter().cloned().collect()),
                blocked: grants.get(&p.member).is_some_and(|g| g.blocked),
                name_first_seen_with: p.name_holder.map(|k| k.short_fingerprint()),
                renamed_from: p.renamed_from.clone(),
                confirmed: p.confirmed,
                group_roles: p.profile.group_roles,
                avatar: p.profile.avatar,
                title: p.profile.title,
                bio: p.profile.bio,
                capabilities: p.profile.capabilities,
            }
        })
        .collect();
    // People together, each one's daemon session first, online before offline.
    peers.sort_by(|a, b| {
        b.online
            .cmp(&a.online)
            .then_with(|| {
                a.member_name
                    .to_lowercase()
                    .cmp(&b.member_name.to_lowercase())
            })
            .then_with(|| a.member.cmp(&b.member))
            .then_with(|| (a.kind != "cli").cmp(&(b.kind != "cli")))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(peers)
}

/// The listed peers `address` covers (a person: all their sessions; a session; a group;
/// everyone), or an error when it is ambiguous.
pub(crate) fn matching(peers: &[PeerInfo], address: &str) -> Result<Vec<PeerInfo>, Error> {
    use claudemesh_schema::select::{Candidate, Pick, Selector, pick};
    let keys: Vec<Option<claudemesh_schema::crypto::MemberKey>> = peers
        .iter()
        .map(|p| claudemesh_schema::crypto::MemberKey::from_b64(&p.member))
        .collect();
    let mut cands = Vec::new();
    let mut idx = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let Some(k) = keys[i] else { continue };
        cands.push(Candidate {
            session: p.id,
            member: k,
            member_name: &p.member_name,
            label: &p.name,
            groups: &p.groups,
            online: p.online,
            visible: true,
        });
        idx.push(i);
    }
    Ok(match pick(&Selector::parse(address), &cands) {
        Pick::None => Vec::new(),
        Pick::All => peers.to_vec(),
        Pick::Group(v) => v.iter().map(|&i| peers[idx[i]].clone()).collect(),
        Pick::Session(i) => vec![peers[idx[i]].clone()],
        Pick::Member(k) => peers
            .iter()
            .zip(&keys)
            .filter(|(_, pk)| **pk == Some(k))
            .map(|(p, _)| p.clone())
            .collect(),
        Pick::Ambiguous(v) => {
            return Err(Error::ambiguous(format!(
                "{address:?} matches several peers ({}); use `name/session` or an id",
                v.iter()
                    .map(|&i| format!(
                        "{}/{} {}",
                        peers[idx[i]].member_name,
                        peers[idx[i]].name,
                        peers[idx[i]].id.short()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    })
}
