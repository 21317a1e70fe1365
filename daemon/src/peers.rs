//! Who is in each mesh, as this daemon knows it (`claudemesh peers`, `list_peers`).

use claudemesh_schema::SessionId;
use claudemesh_schema::ipc::methods::{MeshParams, MeshPeers, PeerInfo, PeersResult};
use rusqlite::Connection;
use std::sync::Arc;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::lock;
use crate::store::{self, MeshRow};

pub(crate) async fn list(d: &Arc<Daemon>, p: MeshParams) -> Result<PeersResult, Error> {
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    let mut out = Vec::new();
    for x in targets {
        let row = lock(&x.row).clone();
        let cached = !x.link.connected();
        let (id, name) = (row.id, row.name.clone());
        let peers = d.store.read(move |c| q_peers(c, &row)).await?;
        out.push(MeshPeers {
            mesh: id,
            name,
            cached,
            peers,
        });
    }
    Ok(PeersResult { meshes: out })
}

/// Peers of a mesh as shown by `peers`: online first, then by name. Our own daemon
/// session is left out; our other sessions are marked `me`.
pub fn q_peers(conn: &Connection, mesh: &MeshRow) -> store::Result<Vec<PeerInfo>> {
    // Live file reservations, by holder (a store from before shared state has none).
    let mut held: std::collections::HashMap<SessionId, Vec<String>> = Default::default();
    for r in crate::shared::query::q_reservations(conn, mesh.id, false, claudemesh_schema::now_ms())
        .unwrap_or_default()
    {
        held.entry(r.holder_id).or_default().extend(r.patterns);
    }
    let grants = store::q_grants(conn, mesh.id).unwrap_or_default();
    let mut peers: Vec<PeerInfo> = store::q_presence(conn, mesh.id)?
        .into_iter()
        .filter(|p| p.session != mesh.session)
        .map(|p| PeerInfo {
            id: p.session,
            member: p.member.to_b64(),
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
        })
        .collect();
    peers.sort_by(|a, b| b.online.cmp(&a.online).then_with(|| a.name.cmp(&b.name)));
    Ok(peers)
}
