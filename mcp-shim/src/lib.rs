//! claudemesh-mcp-shim: the MCP stdio server Claude Code spawns as `claudemesh mcp`.
//!
//! It holds no state of its own: it opens a session (a peer) on the local daemon, answers
//! MCP tool calls by calling the daemon over its local socket, and forwards the session's
//! new messages to Claude Code as `notifications/claude/channel` when the client can take
//! them. What it is not: it never talks to a relay, and stdout carries only MCP frames
//! (logs go to stderr).
#![deny(clippy::print_stdout)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod claude;
// Hosted services (issue 16, tier 2).
mod deploy_tools;
mod file_tools;
// Peer folders (issue 15).
mod peer_files_tools;
mod remote_tools;
mod server;
mod shared_tools;
// The vault (issue 16).
mod vault_tools;

pub use server::{ShimError, run};
