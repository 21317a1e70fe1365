//! Answers from the daemon's store when the daemon is down (`peers`, `list`, `whoami`,
//! `status`, the status line): read-only, never the network.

use claudemesh_daemon::{DaemonConfig, Paths, offline};

use crate::exit::{Exit, Failure};

/// How long ended sessions stay listed, from the config (ms).
pub(crate) fn offline_grace(p: &Paths) -> i64 {
    DaemonConfig::load(&p.config())
        .unwrap_or_default()
        .peers
        .offline_grace_secs as i64
        * 1000
}

/// The joined meshes (none before the first `up`).
pub(crate) fn meshes(p: &Paths) -> Result<Vec<offline::MeshRow>, Failure> {
    // `try_exists`: a store that cannot even be looked at is an error, not "no mesh".
    match p.db().try_exists() {
        Ok(false) => return Ok(Vec::new()),
        Ok(true) => {}
        Err(e) => {
            return Err(Failure::new(
                Exit::Error,
                format!("cannot look for the local store {}: {e}", p.db().display()),
            ));
        }
    }
    let conn = offline::open_readonly(&p.db())
        .map_err(|e| Failure::new(Exit::Error, format!("cannot read the local store: {e}")))?;
    offline::q_meshes(&conn)
        .map_err(|e| Failure::new(Exit::Error, format!("cannot read the local store: {e}")))
}

/// The rows a `--mesh` selection (a name or an id prefix) picks; all without one.
pub(crate) fn select(
    rows: Vec<offline::MeshRow>,
    sel: Option<&str>,
) -> Result<Vec<offline::MeshRow>, Failure> {
    let Some(sel) = sel else { return Ok(rows) };
    let lower = sel.to_lowercase().replace('-', "");
    let hits: Vec<_> = rows
        .into_iter()
        .filter(|r| {
            r.name == sel || (lower.len() >= 4 && r.id.0.simple().to_string().starts_with(&lower))
        })
        .collect();
    if hits.is_empty() {
        return Err(Failure::new(
            Exit::NotFound,
            format!("no joined mesh is called {sel:?}; `claudemesh list` shows your meshes"),
        ));
    }
    Ok(hits)
}
