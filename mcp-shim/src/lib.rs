//! claudemesh-mcp-shim: the MCP stdio server Claude Code spawns as `claudemesh mcp`.
//!
//! Not built yet: the messaging core (relay, daemon, CLI) comes first. The shim will speak
//! MCP on stdio and forward tool calls to the local daemon over its socket, so it holds no
//! state of its own. What it is not: it never talks to a relay directly.
