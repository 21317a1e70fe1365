//! `claudemesh mcp` driven by the official Python MCP client (the `mcp` package, installed
//! into `target/mcp-venv` by `scripts/test`), against a real relay and two real daemons.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::mesh;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAUDEMESH_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python");
    assert!(
        p.exists(),
        "the Python MCP client is not installed: run `bash scripts/test` (it creates target/mcp-venv)"
    );
    p
}

fn run(channels: bool) -> serde_json::Value {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp/e2e_mcp.py");
    let out = Command::new(python())
        .arg(script)
        .env("CM_BIN", bin)
        .env("CM_DIR_A", &nodes[0].dir)
        .env("CM_DIR_B", &nodes[1].dir)
        .env("CM_CHANNELS", if channels { "1" } else { "0" })
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python MCP client run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["ok"], true);
    v
}

#[test]
fn a_real_mcp_client_uses_every_tool_and_gets_channel_pushes() {
    let v = run(true);
    eprintln!("mcp e2e: {v}");
    assert!(v["channel_latency_ms"].is_number());
}

#[test]
fn without_channel_support_messages_wait_to_be_pulled() {
    let v = run(false);
    assert!(v.get("channel_latency_ms").is_none());
}
