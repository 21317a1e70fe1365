//! claudemesh-relay: the thin relay between claudemesh daemons.
//!
//! It authenticates members against signed rosters, fans out presence (opaque, sealed
//! profiles), routes envelopes to sessions, members, lists or everyone, and stores them
//! for offline members until their daemon acknowledges them. It sequences the sealed ops of each mesh's
//! shared-state log and serves catch-up from them. It never holds a mesh key and
//! never sees plaintext: it reads only the routing header of an envelope.
//!
//! It is also a library: the daemon embeds it for the zero-configuration local default,
//! and the daemon and tests use [`client`] to speak the protocol. [`cli`] is the command line
//! of both `claudemesh-relay` and `claudemesh relay`; [`admission`] decides who may create a
//! mesh and keeps the operator's creation tokens.
//!
//! Read [`server`] (listeners) then `conn` (the protocol state machine) first.
//!
//! What it is not: not a broker that owns mesh state, not a message database, not a place
//! where keys live.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod admission;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
mod conn;
pub mod durable;
mod hub;
mod limits;
mod metrics;
mod oplog;
pub mod server;
pub mod sqlite;
pub mod store;
pub mod tls;
pub mod transport;

pub use client::{ConnectError, ConnectOptions, Connection, connect};
pub use config::RelayConfig;
pub use server::{Relay, RelayError, RelayHandle};
pub use transport::{FrameReader, FrameWriter, Transport};
