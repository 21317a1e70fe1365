//! Which function runs each command: one line per command. The behaviour lives in the
//! module named for what the command does.
//!
//! Commands that talk to the daemon run on a current-thread runtime ([`block_on`]); the
//! daemon and the relay in the foreground build their own ([`server_runtime`]); the rest need
//! none.

use std::future::Future;

use crate::cli::{Command, InboxArgs};
use crate::exit::{Exit, Failure, Res};
use crate::{
    backup, claude, cli, daemon, doctor, install, invites, meshes, messaging, peer_files, peers,
    relay, service, shared, trust, welcome,
};

pub(crate) fn run(cmd: Option<Command>) -> Res {
    let Some(cmd) = cmd else {
        return welcome::welcome();
    };
    match cmd {
        Command::Up(a) => block_on(meshes::up(a)),
        Command::Down(a) => block_on(meshes::down(a)),
        Command::Mesh { action } => block_on(meshes::mesh(action)),
        Command::Daemon { action } => daemon::run(action),
        Command::Create(a) => block_on(meshes::create(a)),
        Command::Invite(a) => block_on(invites::invite(a)),
        Command::Join(a) => block_on(invites::join(a)),
        Command::List(a) => block_on(meshes::list(a)),
        Command::Leave(a) => block_on(meshes::leave(a)),
        Command::Member { action } => block_on(meshes::member(action)),
        Command::Peers(a) => block_on(peers::peers(a)),
        Command::Send(a) => block_on(messaging::send(a)),
        Command::Inbox(a) => block_on(messaging::inbox(a)),
        Command::Reply(a) => block_on(messaging::reply(a)),
        Command::History(a) => block_on(messaging::inbox(InboxArgs {
            mesh: a.mesh,
            wait: None,
            peek: true,
            session: a.session,
            after: None,
            limit: a.limit,
            follow: false,
            all: true,
            json: a.json,
        })),
        Command::Sent(a) => block_on(messaging::sent(a)),
        Command::Status(a) => block_on(peers::status(a)),
        Command::Info(a) => block_on(meshes::info(a)),
        Command::Whoami(a) => block_on(peers::whoami(a)),
        Command::Profile(a) => block_on(peers::profile(a)),
        Command::Wait(a) => block_on(peers::wait(a)),
        Command::Relay(a) => relay::run(a),
        Command::Mcp => claude::mcp(),
        Command::Install(a) => install::register(a),
        Command::Uninstall => install::unregister(),
        Command::Hook(a) => block_on(claude::hook(a)),
        Command::StatusLine => claude::status_line(),
        Command::Launch(a) => claude::launch(a),
        Command::State { action } => block_on(shared::state(action)),
        Command::Remember(a) => block_on(shared::remember(a)),
        Command::Recall(a) => block_on(shared::recall(a)),
        Command::Forget(a) => block_on(shared::forget(a)),
        Command::Task { action } => block_on(shared::task(action)),
        Command::File { action } => block_on(crate::files::file(action)),
        Command::Reserve(a) => block_on(shared::reserve(a)),
        Command::Release(a) => block_on(shared::release(a)),
        Command::Reservations(a) => block_on(shared::reservations(a)),
        Command::Verify(a) => block_on(trust::verify(a)),
        Command::Grant(a) => block_on(trust::grant(a)),
        Command::Revoke(a) => block_on(trust::revoke(a)),
        Command::Block(a) => block_on(trust::block(a)),
        Command::Grants(a) => block_on(trust::list(a)),
        Command::Completions(a) => cli::completions(a),
        Command::Doctor(a) => block_on(doctor::run(a.json)),
        Command::Backup(a) => backup::backup(a),
        Command::Restore(a) => backup::restore(a),
        Command::Service { action } => block_on(service::run(action)),
        Command::Skill { action } => block_on(shared::skill(action)),
        Command::Context { action } => block_on(shared::context(action)),
        Command::Remind(a) => block_on(shared::remind(a)),
        // Peer folders.
        Command::ShareDir(a) => block_on(peer_files::share_dir(a)),
        Command::PeerFile { action } => block_on(peer_files::peer_file(action)),
        Command::McpHost { action } => block_on(crate::tools::mcp_host(action)),
        Command::Tools { action } => block_on(crate::tools::tools(action)),
        // Hosted services.
        Command::Host { action } => block_on(crate::deploy::host(action)),
        Command::Deploy { action } => block_on(crate::deploy::deploy(action)),
        // The vault.
        Command::Vault { action } => block_on(crate::vault::vault(action)),
        Command::Audit { action } => block_on(shared::audit(action)),
        Command::Debug { action } => block_on(shared::debug(action)),
    }
}

/// Run a client command to completion on a current-thread runtime: it talks to one daemon
/// over one socket, and a second thread would only cost start-up time.
pub(crate) fn block_on(f: impl Future<Output = Res>) -> Res {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(no_runtime)?
        .block_on(f)
}

/// The runtime of a server in the foreground (the daemon, `claudemesh relay`): two workers,
/// enough for a per-user process on a laptop.
pub(crate) fn server_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(no_runtime)
}

fn no_runtime(e: std::io::Error) -> Failure {
    Failure::new(Exit::Error, format!("cannot start the async runtime: {e}"))
}
