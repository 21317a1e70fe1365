//! Who is in each mesh, as this daemon knows it (`claudemesh peers`, `list_peers`).

use claudemesh_schema::ipc::methods::{MeshParams, MeshPeers, PeersResult};
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::error::Error;
use crate::mesh::lock;
use crate::store;

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
        let peers = d.store.read(move |c| store::q_peers(c, &row)).await?;
        out.push(MeshPeers {
            mesh: id,
            name,
            cached,
            peers,
        });
    }
    Ok(PeersResult { meshes: out })
}
