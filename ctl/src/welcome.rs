//! Bare `claudemesh`: a short welcome that says how this machine stands (daemon, meshes)
//! and what to run next. It reads the local store only: it never starts the daemon or
//! touches the network, so it answers at once on a machine in any state.

use claudemesh_daemon::{Paths, offline};

use crate::exit::Res;

/// What the welcome knows about this machine.
struct Machine {
    daemon_up: bool,
    /// Each mesh: name, peers online (none when the daemon is down), unread.
    meshes: Vec<(String, Option<usize>, u64)>,
    /// Why the store could not be read, when it exists but cannot be.
    unreadable: Option<String>,
}

fn look(paths: &Paths) -> Machine {
    #[cfg(unix)]
    let daemon_up = std::os::unix::net::UnixStream::connect(&paths.socket).is_ok();
    #[cfg(not(unix))]
    let daemon_up = false;
    let mut m = Machine {
        daemon_up,
        meshes: Vec::new(),
        unreadable: None,
    };
    if !paths.db().exists() {
        return m;
    }
    let rows = offline::open_readonly(&paths.db()).and_then(|conn| {
        let grace = Some(crate::cache::offline_grace(paths));
        let meshes = offline::q_meshes(&conn)?;
        Ok(meshes
            .iter()
            .map(|mr| {
                let unread = offline::q_counts(&conn, mr.id).map(|c| c.1).unwrap_or(0);
                let online = daemon_up.then(|| {
                    offline::q_peers(&conn, mr, grace)
                        .unwrap_or_default()
                        .iter()
                        .filter(|p| p.online && !p.me)
                        .count()
                });
                (mr.name.clone(), online, unread)
            })
            .collect())
    });
    match rows {
        Ok(v) => m.meshes = v,
        Err(e) => m.unreadable = Some(format!("{} cannot be read: {e}", paths.db().display())),
    }
    m
}

/// The welcome's lines for a machine in state `m`.
fn text(m: &Machine) -> Vec<String> {
    let mut out = vec![
        "claudemesh: connect Claude Code sessions on one or many machines into a mesh.".into(),
        String::new(),
    ];
    out.push(format!(
        "This machine: the daemon is {}.",
        if m.daemon_up {
            "running"
        } else {
            "not running"
        }
    ));
    if let Some(e) = &m.unreadable {
        out.push(format!("Its store: {e} (`claudemesh doctor` says more)."));
    } else if m.meshes.is_empty() {
        out.push("No mesh joined yet.".into());
    } else {
        out.push(format!(
            "Meshes: {}.",
            m.meshes
                .iter()
                .map(|(name, online, unread)| {
                    let mut s = name.clone();
                    match online {
                        Some(n) => s.push_str(&format!(" ({n} online")),
                        None => s.push_str(" (offline"),
                    }
                    if *unread > 0 {
                        s.push_str(&format!(", {unread} unread"));
                    }
                    s.push(')');
                    s
                })
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    out.push(String::new());
    out.push("Next:".into());
    let steps: &[(&str, &str)] = if m.meshes.is_empty() {
        &[
            (
                "claudemesh up",
                "start the daemon and a local relay, and create your first mesh",
            ),
            (
                "claudemesh <invite-link>",
                "or join a mesh someone invited you to",
            ),
        ]
    } else if !m.daemon_up {
        &[
            (
                "claudemesh up",
                "start the daemon (and the local relay) again",
            ),
            (
                "claudemesh inbox",
                "read what arrived (answers from the local store)",
            ),
        ]
    } else {
        &[
            ("claudemesh launch", "start Claude Code in the mesh"),
            ("claudemesh peers", "who is there"),
            ("claudemesh invite", "a link for someone to join"),
            ("claudemesh info", "the mesh at a glance"),
        ]
    };
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (cmd, what) in steps {
        out.push(format!("  {cmd:<width$}  {what}"));
    }
    out.push(format!("  {:<width$}  every command", "claudemesh --help"));
    out
}

/// `claudemesh` with no arguments.
pub(crate) fn welcome() -> Res {
    let m = match Paths::from_env() {
        Ok(p) => look(&p),
        Err(e) => Machine {
            daemon_up: false,
            meshes: Vec::new(),
            unreadable: Some(e.to_string()),
        },
    };
    for l in text(&m) {
        out!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_steps_follow_the_state_of_the_machine() {
        let fresh = Machine {
            daemon_up: false,
            meshes: Vec::new(),
            unreadable: None,
        };
        let t = text(&fresh).join("\n");
        assert!(
            t.contains("not running") && t.contains("claudemesh up"),
            "{t}"
        );
        assert!(t.contains("claudemesh <invite-link>"), "{t}");
        let up = Machine {
            daemon_up: true,
            meshes: vec![("team".into(), Some(2), 3)],
            unreadable: None,
        };
        let t = text(&up).join("\n");
        assert!(t.contains("team (2 online, 3 unread)"), "{t}");
        assert!(
            t.contains("claudemesh launch") && !t.contains("claudemesh up"),
            "{t}"
        );
    }
}
