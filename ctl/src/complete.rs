//! Shell completion that knows your mesh: commands and flags come from the command line's
//! definition, and peer names, mesh names and message ids from the local store, read as
//! you type. The shell script `completions <shell>` prints only asks this binary
//! (`CLAUDEMESH_COMPLETE=<shell> claudemesh -- <words>`); nothing here starts the daemon or touches
//! the network, so a completion never waits.

use clap::CommandFactory as _;
use clap_complete::engine::CompletionCandidate;
use claudemesh_daemon::{Paths, offline};

use crate::cli::Cli;
use crate::exit::{Exit, Failure};

/// The variable the shell script sets when it asks for completions (namespaced: a
/// `COMPLETE` some other tool left in the environment must not turn `claudemesh mcp`
/// into a completion answer).
const VAR: &str = "CLAUDEMESH_COMPLETE";

/// Can the shell take `v` as it is? Some shells (bash, PowerShell) put a candidate on the
/// command line unquoted, and names are peers' choice: only plain words are offered.
fn plain(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '/' | '+'))
}

/// Answer the shell and exit, when this run is a completion request; else return.
pub(crate) fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(VAR)
        .complete();
}

/// The script a shell loads to complete `claudemesh` (it calls this binary by its path).
pub(crate) fn script(shell: clap_complete::Shell) -> Result<Vec<u8>, Failure> {
    let name = shell.to_string();
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells.completer(&name).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!("no completion for {name}: use bash, zsh, fish, elvish or powershell"),
        )
    })?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(Exit::Error, format!("cannot find this binary: {e}")))?;
    let mut buf = Vec::new();
    completer
        .write_registration(
            VAR,
            "claudemesh",
            "claudemesh",
            &exe.to_string_lossy(),
            &mut buf,
        )
        .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    Ok(buf)
}

/// The local store, read-only; none before the first `up` (or when unreadable).
fn store() -> Option<(Paths, rusqlite::Connection)> {
    let p = Paths::from_env().ok()?;
    if !p.db().exists() {
        return None;
    }
    let conn = offline::open_readonly(&p.db()).ok()?;
    Some((p, conn))
}

/// Peer names (and `@group`s) of every joined mesh.
pub(crate) fn peers() -> Vec<CompletionCandidate> {
    let Some((p, conn)) = store() else {
        return Vec::new();
    };
    let grace = crate::cache::offline_grace(&p);
    let mut names = std::collections::BTreeMap::new();
    for m in offline::q_meshes(&conn).unwrap_or_default() {
        for peer in offline::q_peers(&conn, &m, Some(grace)).unwrap_or_default() {
            if peer.me {
                continue;
            }
            let name = if peer.member_name.is_empty() {
                peer.name.clone()
            } else {
                peer.member_name.clone()
            };
            // Completion output is a terminal's: names were held to the name rules on
            // receipt, and are cleaned again here.
            let name = claudemesh_schema::names::one_line(&name, 64);
            if plain(&name) {
                names.insert(name, format!("{} ({})", peer.hostname, m.name));
            }
            for g in &peer.groups {
                let g = format!("@{}", claudemesh_schema::names::one_line(g, 64));
                if plain(&g) {
                    names.insert(g, format!("group in {}", m.name));
                }
            }
        }
    }
    names
        .into_iter()
        .map(|(n, help)| CompletionCandidate::new(n).help(Some(help.into())))
        .collect()
}

/// Names of the joined meshes.
pub(crate) fn meshes() -> Vec<CompletionCandidate> {
    let Some((_, conn)) = store() else {
        return Vec::new();
    };
    offline::q_meshes(&conn)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| plain(&m.name))
        .map(|m| CompletionCandidate::new(m.name))
        .collect()
}

fn ids(received: bool) -> Vec<CompletionCandidate> {
    let Some((_, conn)) = store() else {
        return Vec::new();
    };
    offline::q_recent_ids(&conn, received, 50)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, what)| {
            CompletionCandidate::new(id.short())
                .help(Some(claudemesh_schema::names::one_line(&what, 60).into()))
        })
        .collect()
}

/// Ids of messages received lately (for `reply`).
pub(crate) fn received_ids() -> Vec<CompletionCandidate> {
    ids(true)
}

/// Ids of messages sent lately (for `sent`).
pub(crate) fn sent_ids() -> Vec<CompletionCandidate> {
    ids(false)
}
