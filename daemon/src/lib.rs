//! claudemesh-daemon: the per-machine daemon, the source of truth for every mesh this
//! machine has joined.
//!
//! It keeps a SQLite copy of each mesh (roster, presence cache, inbox, outbox), holds one
//! relay link per mesh (QUIC first, WebSocket fallback, reconnecting with backoff), seals
//! and opens messages, and serves the CLI, the MCP shim and hooks over a local socket.
//!
//! Read [`daemon`] (start-up and shutdown) first, then `link` (the relay link actor) and
//! `delivery` (addressing, sealing, opening).
//!
//! What it is not: not a relay (it embeds one only for the zero-configuration default),
//! not a UI. Only the daemon writes `daemon.db`; the CLI may read it when the daemon is
//! down.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(clippy::print_stdout)]

pub mod client;
pub mod config;
mod context;
pub mod daemon;
mod delivery;
mod deploy;
mod error;
mod files;
mod grants;
mod hooks;
mod joining;
pub mod keys;
mod link;
mod mcp_client;
mod mcp_host;
mod membership;
mod mesh;
pub mod paths;
mod peers;
// Peer folders (issue 15).
mod peer_files;
mod recovery;
mod reminders;
mod rpc;
mod sandbox;
mod sessions;
mod shared;
mod stats;
mod status;
mod store;
mod tools;
mod transcript;
// The vault (issue 16).
mod vault;

pub use client::{Client, ClientError, connect_or_start};
pub use config::DaemonConfig;
pub use daemon::{DaemonError, DaemonHandle, run, start};
pub use delivery::MAX_BODY;
pub use paths::Paths;
pub use shared::cron::parse_rfc3339;

/// The CLI's read-only window on `daemon.db`, for answering with the daemon down. Only the
/// daemon writes the store; this module is all of it the rest of the workspace sees.
pub mod offline {
    pub use crate::peers::q_peers;
    pub use crate::store::{MeshRow, StoreError, open_readonly, q_counts, q_meshes, q_recent_ids};
}

/// Fuzzing entry point (`fuzz/fuzz_targets/snapshot.rs`), not an API: load a decoded
/// snapshot `body` into the folded tables of `mesh`, as the link does after opening one.
#[doc(hidden)]
pub fn fuzz_load_snapshot(
    tx: &rusqlite::Transaction<'_>,
    mesh: claudemesh_schema::MeshId,
    body: &claudemesh_schema::op::SnapshotBody,
) -> Result<(), String> {
    shared::snapshot::load(tx, mesh, body).map_err(|e| e.to_string())
}
