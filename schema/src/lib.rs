//! The claudemesh contract: every byte that crosses a process or machine boundary is
//! defined here, and nothing here does IO.
//!
//! - [`wire`]: the relay protocol (frames exchanged between a daemon and a relay over a
//!   QUIC stream or WebSocket binary messages), its framing limits and version.
//! - [`ipc`]: the local protocol between the daemon and its clients (CLI, MCP shim, hooks):
//!   newline-delimited JSON-RPC 2.0 with pushed notifications.
//! - [`crypto`]: keys, signatures, and the three sealing modes (mesh key, box to a
//!   session, anonymous seal for invites).
//! - [`roster`]: signed mesh genesis, membership entries and invite capabilities, and the
//!   fold that decides who is a member and who is an admin.
//! - [`message`]: what is inside a sealed envelope or a sealed presence profile.
//! - [`invite`]: the invite link format and the claim proofs.
//! - [`file`]: shared files: chunks sealed under a per-file key, content-addressed, and
//!   the manifest and key boxes a share op carries.
//! - [`op`]: shared mesh state as a relay-ordered log of sealed ops, and its hash chain.
//! - [`migrations`]: the SQL schema of the daemon and relay stores.
//! - [`names`]: what a mesh, display or group name may be.
//! - [`render`]: how messages read in a model's context, and how to find them again.
//! - [`select`]: addresses (`bob`, `bob/api`, `@dev`, `*`, id prefixes) and what they match.
//! - [`tools`]: shared MCP servers: the registry entry, the boxed call and result, and
//!   the names a caller's MCP client sees.
//! - [`vault`]: secrets kept on their owner's machine: name rules, limits, the sealed file.
//!
//! Read `wire` first; `PROTOCOL.md` at the repository root is the prose version of it.
//!
//! Architecture invariant: this crate depends on no async runtime, no database and no
//! network crate, so it builds fast and its tests are deterministic.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod crypto;
pub mod dedupe;
pub mod deploy;
pub mod encoding;
pub mod epoch;
pub mod file;
pub mod ids;
pub mod invite;
pub mod ipc;
pub mod message;
pub mod migrations;
pub mod names;
pub mod op;
pub mod render;
pub mod roster;
pub mod select;
pub mod tools;
pub mod vault;
pub mod wire;

pub use ids::{ClaimId, InviteId, ItemId, MeshId, MessageId, OpId, SessionId};

/// Current unix time in milliseconds. The one clock read of this crate, kept here so the
/// rest of the code takes timestamps as arguments and stays testable.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
