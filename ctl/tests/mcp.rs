//! `claudemesh mcp` driven by the official Python MCP client (the `mcp` package, installed
//! into `target/mcp-venv` by `scripts/test`), against a real relay and two real daemons.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{mesh, mesh_on};
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
    // Peer folders: read_peer_file and list_peer_files ran (`peer_files` in the script).
    assert_eq!(v["peer_files"], true, "{v}");
    // The vault tools ran, and none returned a value (`vault` in the script).
    assert_eq!(v["vault"], true, "{v}");
}

#[test]
fn without_channel_support_messages_wait_to_be_pulled() {
    let v = run(false);
    assert!(v.get("channel_latency_ms").is_none());
    // Every shared-state tool ran (see `shared_state` in the script).
    assert!(v["shared_ops"].as_u64().unwrap() >= 11, "{v}");
    // Every shared-file tool ran, and alice saw bob's fetch (see `shared_files`).
    assert!(v["files_fetched"].as_u64().unwrap() >= 1, "{v}");
}

/// A minimal line driver for `claudemesh mcp`, for scenarios around it (process restarts);
/// protocol conformance is the Python client's job above.
struct Shim {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::io::BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Shim {
    fn start(bin: &Path, dir: &Path, key: &str, name: &str) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("mcp");
        Self::spawn(cmd, dir, key, name)
    }

    /// The shim as the child of a `sh` that stands in for its MCP client.
    fn start_under_sh(bin: &Path, dir: &Path, key: &str, name: &str) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("\"$0\" mcp; exit $?").arg(bin);
        Self::spawn(cmd, dir, key, name)
    }

    fn spawn(mut cmd: Command, dir: &Path, key: &str, name: &str) -> Self {
        let mut child = cmd
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir)
            .env("CLAUDEMESH_CONFIG_DIR", dir)
            .env("CLAUDEMESH_SESSION_KEY", key)
            .env("CLAUDEMESH_DISPLAY_NAME", name)
            .env("CLAUDEMESH_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut s = Self {
            child,
            stdin,
            out,
            next: 1,
        };
        s.request("initialize", serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}));
        s.send(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, v: serde_json::Value) {
        use std::io::Write as _;
        writeln!(self.stdin.as_mut().unwrap(), "{v}").unwrap();
    }

    fn request(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use std::io::BufRead as _;
        let id = self.next;
        self.next += 1;
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "shim exited");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Call a tool; returns (is_error, parsed text).
    fn tool(&mut self, name: &str, args: serde_json::Value) -> (bool, serde_json::Value) {
        let r = self.request(
            "tools/call",
            serde_json::json!({"name": name, "arguments": args}),
        );
        let res = &r["result"];
        let text = res["content"][0]["text"].as_str().unwrap_or("").to_string();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (res["isError"].as_bool().unwrap_or(false), v)
    }
}

impl Shim {
    /// Close the client's end, as a client that is done does, and wait for the shim to exit.
    fn finish(&mut self) -> std::process::ExitStatus {
        self.stdin = None;
        self.child.wait().unwrap()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_shim_keeps_its_session_across_a_daemon_restart() {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let mut shim = Shim::start(bin, &nodes[1].dir, "restart-test", "bob-claude");
    let (err, _) = shim.tool("set_summary", serde_json::json!({"summary": "before"}));
    assert!(!err);
    nodes[0].wait("peer-online", Some("bob-claude"));
    let id = nodes[0].json(&["peers"])["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bob-claude")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The daemon goes away; messages sent meanwhile wait at the relay.
    nodes[1].stop();
    nodes[0].wait("peer-offline", Some("bob-claude"));
    nodes[0].ok(&["send", &id, "while your daemon restarted"]);
    let (err, v) = shim.tool("mesh_info", serde_json::json!({}));
    assert!(
        err,
        "a clear tool error while the daemon is down, not a crash: {v}"
    );
    nodes[1].start();
    // The same session (same id) comes back with the daemon, and nothing was lost.
    nodes[0].wait("peer-online", Some(&id[..8]));
    let (err, v) = shim.tool(
        "wait_for_message",
        serde_json::json!({"timeout_seconds": 20}),
    );
    assert!(!err, "{v}");
    assert_eq!(v["messages"][0]["body"], "while your daemon restarted");
    assert_eq!(v["messages"][0]["session"].as_str(), Some(id.as_str()));
}

/// A session keyed by `CLAUDEMESH_SESSION_KEY` ends with its process like any other: when
/// the client and the shim are killed (no goodbye), it goes offline.
#[test]
fn a_session_keyed_by_hand_goes_offline_when_its_process_dies() {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let mut shim = Shim::start_under_sh(bin, &nodes[1].dir, "fixed-key", "bob-client");
    let (err, _) = shim.tool("set_summary", serde_json::json!({"summary": "here"}));
    assert!(!err);
    nodes[0].wait("peer-online", Some("bob-client"));
    // SIGKILL the client (the sh) and the shim under it.
    let sh = shim.child.id();
    let children = std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap();
    let _ = shim.child.kill();
    for pid in children.split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let _ = shim.child.wait();
    nodes[0].wait("peer-offline", Some("bob-client"));
}

/// A client that only looks (`initialize`, `tools/list`, exit: what `claude mcp list` and
/// other health checks do) is not a peer: no member ever sees it, and its own daemon
/// forgets it.
#[test]
fn a_client_that_lists_the_tools_and_exits_leaves_no_peer() {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let mut probe = Shim::start_under_sh(bin, &nodes[1].dir, "probe-key", "bob-probe");
    let tools = probe.request("tools/list", serde_json::json!({}));
    assert!(tools["result"]["tools"].as_array().unwrap().len() > 10);
    assert!(probe.finish().success());
    // A real session after it: once alice sees it, she has seen all bob announced before.
    let mut real = Shim::start_under_sh(bin, &nodes[1].dir, "real-key", "bob-real");
    let (err, _) = real.tool("set_summary", serde_json::json!({"summary": "here"}));
    assert!(!err);
    nodes[0].wait("peer-online", Some("bob-real"));
    for (who, node) in [("alice", &nodes[0]), ("bob", &nodes[1])] {
        let v = node.json(&["peers", "--all"]);
        let names: Vec<_> = v["meshes"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n == "bob-probe"),
            "{who} lists the probe: {names:?}"
        );
        assert!(names.iter().any(|n| n == "bob-real"), "{who}: {names:?}");
    }
}

/// The `peers --json` rows of `node`'s only mesh.
fn peer_rows(node: &claudemesh_tests::Node) -> Vec<serde_json::Value> {
    node.json(&["peers"])["meshes"][0]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

claudemesh_tests::per_store! {
    /// Profiles, group roles and nested groups travel in the signed presence to another
    /// daemon; `set_visible(false)` hides a session there from `peers`, `list_peers`, groups
    /// and broadcasts, while direct messages still reach it.
    fn profiles_groups_and_visibility_hold_across_two_daemons(store) {
        let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin, root.path(), store, &["alice", "bob"], &[]);
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let mut a = Shim::start(bin, &alice.dir, "vis-a", "alice-claude");
        let mut b = Shim::start(bin, &bob.dir, "vis-b", "bob-claude");
        let (err, _) = a.tool("set_summary", serde_json::json!({"summary": "here"}));
        assert!(!err);
        let (err, v) = b.tool(
            "set_profile",
            serde_json::json!({"title": "backend lead", "bio": "knows the parser", "avatar": "🦀", "capabilities": ["rust", "sql"]}),
        );
        assert!(!err, "{v}");
        assert_eq!(v["title"], "backend lead", "{v}");
        let (err, v) = b.tool(
            "join_group",
            serde_json::json!({"group": "@dev/backend", "role": "lead"}),
        );
        assert!(!err, "{v}");
        assert_eq!(v["group_roles"]["dev/backend"], "lead", "{v}");
        // `@dev` covers `@dev/backend`: alice sees bob-claude in it.
        alice.wait("peer-online", Some("@dev"));
        let row = peer_rows(alice)
            .into_iter()
            .find(|p| p["name"] == "bob-claude")
            .unwrap();
        assert_eq!(row["title"], "backend lead", "{row}");
        assert_eq!(row["bio"], "knows the parser", "{row}");
        assert_eq!(row["avatar"], "🦀", "{row}");
        assert_eq!(
            row["capabilities"],
            serde_json::json!(["rust", "sql"]),
            "{row}"
        );
        assert_eq!(row["group_roles"]["dev/backend"], "lead", "{row}");
        let info = alice.json(&["info"]);
        let groups = &info["meshes"][0]["groups"];
        assert_eq!(groups[0]["name"], "dev/backend", "{info}");
        assert_eq!(
            groups[0]["members"],
            serde_json::json!(["bob (lead)"]),
            "{info}"
        );
        let (err, v) = a.tool("mesh_info", serde_json::json!({}));
        assert!(!err, "{v}");
        let m = &v["meshes"][0];
        assert_eq!(m["link"], "connected", "{v}");
        assert_eq!(m["members"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(m["groups"], *groups, "the tool and the CLI agree: {v}");

        // `@dev` and `@all` reach bob-claude.
        let (err, _) = a.tool(
            "send_message",
            serde_json::json!({"to": "@dev", "message": "to dev"}),
        );
        assert!(!err);
        let (err, _) = a.tool(
            "send_message",
            serde_json::json!({"to": "@all", "message": "to all"}),
        );
        assert!(!err);
        let mut got = Vec::new();
        while got.len() < 2 {
            let (err, v) = b.tool(
                "wait_for_message",
                serde_json::json!({"timeout_seconds": 20}),
            );
            assert!(!err, "{v}");
            let msgs = v["messages"].as_array().unwrap().clone();
            assert!(!msgs.is_empty(), "bob-claude gets @dev and @all");
            got.extend(
                msgs.into_iter()
                    .map(|m| m["body"].as_str().unwrap().to_string()),
            );
        }
        assert_eq!(got, ["to dev", "to all"]);
        assert_eq!(
            bob.inbox_wait()
                .iter()
                .map(|m| m["body"].clone())
                .collect::<Vec<_>>(),
            ["to all"],
            "bob's own inbox has the broadcast"
        );
        let bob_claude = peer_rows(alice)
            .into_iter()
            .find(|p| p["name"] == "bob-claude")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();

        // Hidden. Bob's presences travel in order over one link: once alice has the group
        // bob's daemon announces after it, she has the hidden presence too.
        let (err, v) = b.tool("set_visible", serde_json::json!({"visible": false}));
        assert!(!err, "{v}");
        bob.ok(&["profile", "--groups", "marker"]);
        alice.wait("peer-online", Some("@marker"));
        assert!(
            !peer_rows(alice).iter().any(|p| p["name"] == "bob-claude"),
            "peers on another daemon leaves a hidden session out"
        );
        let (err, v) = a.tool("list_peers", serde_json::json!({}));
        assert!(!err);
        let names: Vec<_> = v["meshes"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["bob"], "list_peers too");
        let (code, err) = alice.fails(&["send", "@dev", "nobody visible"]);
        assert_eq!(code, 4, "{err}");
        // A broadcast, then a direct message: only the direct message reaches it.
        alice.ok(&["send", "*", "broadcast while hidden"]);
        alice.ok(&["send", &bob_claude, "dm while hidden"]);
        let (err, v) = b.tool(
            "wait_for_message",
            serde_json::json!({"timeout_seconds": 20}),
        );
        assert!(!err, "{v}");
        let bodies: Vec<_> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(bodies, ["dm while hidden"], "{v}");
        let own: Vec<_> = bob.inbox_wait().iter().map(|m| m["body"].clone()).collect();
        assert_eq!(own, ["broadcast while hidden"]);
        // Its own daemon still lists it (marked as ours).
        assert!(peer_rows(bob).iter().any(|p| p["name"] == "bob-claude"));
    }
}

/// A tool called with an argument it does not take is refused, naming the argument,
/// instead of doing something else quietly.
#[test]
fn unknown_tool_arguments_are_an_error() {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let mut a = Shim::start(bin, &nodes[0].dir, "args-a", "alice-claude");
    for (tool, args) in [
        (
            "set_status",
            serde_json::json!({"status": "idle", "bogus": 1}),
        ),
        (
            "send_message",
            serde_json::json!({"to": "bob", "message": "x", "prio": "now"}),
        ),
        (
            "set_state",
            serde_json::json!({"key": "k", "value": 1, "ttl": 5}),
        ),
        ("mesh_info", serde_json::json!({"verbose": true})),
        (
            "share_file",
            serde_json::json!({"path": "/etc/hostname", "ephemeral": true}),
        ),
        (
            "get_file",
            serde_json::json!({"file_id": "0a1b", "out": "/tmp/x"}),
        ),
        (
            "grant_file_access",
            serde_json::json!({"file_id": "0a1b", "to": "bob", "all": true}),
        ),
    ] {
        let (err, v) = a.tool(tool, args);
        let msg = v.as_str().unwrap_or_default();
        assert!(
            err && msg.contains("unknown field `") && msg.contains("expected"),
            "{tool}: {v}"
        );
    }
    assert!(
        nodes[1].inbox_peek().is_empty(),
        "the refused send sent nothing"
    );
    assert_eq!(
        nodes[0].json(&["file", "list"])["files"],
        serde_json::json!([]),
        "the refused share shared nothing"
    );
}

/// `mesh_stats` (the tool) and `mesh stats` (the CLI): usage per session, each counted by
/// its own daemon and asked of it over the mesh when someone else looks; a peer whose
/// daemon is gone shows no counts and says so.
#[test]
fn mesh_stats_reports_each_sessions_messages_tool_calls_errors_and_uptime() {
    let bin = Path::new(env!("CARGO_BIN_EXE_claudemesh"));
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let mut a = Shim::start(bin, &nodes[0].dir, "stats-a", "alice-claude");
    for body in ["one", "two"] {
        let (err, v) = a.tool(
            "send_message",
            serde_json::json!({"to": "bob", "message": body, "id": format!("key-{body}")}),
        );
        assert!(!err, "{v}");
        assert!(v.get("duplicate").is_none(), "{v}");
    }
    // A retry with the same idempotency key sends nothing again (bob gets two, below).
    let (err, v) = a.tool(
        "send_message",
        serde_json::json!({"to": "bob", "message": "two", "id": "key-two"}),
    );
    assert!(!err, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    let (err, _) = a.tool("set_status", serde_json::json!({"status": "asleep"}));
    assert!(err, "an unknown status is a failed call");
    nodes[1].ok(&["send", "alice-claude", "back"]);
    let (err, v) = a.tool(
        "wait_for_message",
        serde_json::json!({"timeout_seconds": 20}),
    );
    assert!(!err, "{v}");
    let row = |v: &serde_json::Value, name: &str| -> serde_json::Value {
        v["peers"]
            .as_array()
            .unwrap_or_else(|| panic!("no peers in {v}"))
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    // Its own view: this call counts too (send ×3, set_status, wait, mesh_stats).
    let (err, v) = a.tool("mesh_stats", serde_json::json!({}));
    assert!(!err, "{v}");
    let own = row(&v, "alice-claude");
    assert_eq!(own["me"], true, "{v}");
    let u = &own["usage"];
    assert_eq!(
        (
            &u["tool_calls"],
            &u["tool_errors"],
            &u["messages_out"],
            &u["messages_in"]
        ),
        (
            &serde_json::json!(6),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(1)
        ),
        "{v}"
    );
    assert!(u["uptime_ms"].is_u64(), "{v}");
    assert!(v["shared"].is_object() && v["log_seq"].is_u64(), "{v}");

    // Bob's view, through the CLI: alice's daemon answered for its sessions.
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let v = bob.json(&["mesh", "stats"]);
    let theirs = row(&v, "alice-claude");
    assert_eq!(theirs["answered"], true, "{v}");
    assert_eq!(theirs["me"], false, "{v}");
    assert_eq!(theirs["usage"]["tool_calls"], 6, "{v}");
    assert_eq!(theirs["usage"]["tool_errors"], 1, "{v}");
    assert_eq!(theirs["usage"]["messages_out"], 2, "{v}");
    assert_eq!(theirs["usage"]["messages_in"], 1, "{v}");
    let me = row(&v, "bob");
    assert_eq!(me["me"], true, "{v}");
    assert_eq!(me["usage"]["messages_in"], 2, "{v}");
    assert_eq!(me["usage"]["messages_out"], 1, "{v}");
    assert_eq!(row(&v, "alice")["answered"], true, "{v}");
    let text = bob.ok(&["mesh", "stats"]);
    assert!(
        text.contains("TOOL CALLS") && text.contains("alice-claude"),
        "{text}"
    );

    // A member alice blocked learns nothing of her sessions: her daemon does not answer.
    alice.ok(&["block", "bob"]);
    let v = bob.json(&["mesh", "stats"]);
    let refused = row(&v, "alice-claude");
    assert_eq!(refused["answered"], false, "{v}");
    assert!(refused["usage"].is_null(), "{v}");
    assert!(
        refused["note"].as_str().unwrap().starts_with("no answer"),
        "{v}"
    );
    alice.ok(&["block", "bob", "--undo"]);

    // Alice's daemon is gone: no counts, and why.
    drop(a);
    let alice_name = alice.name.clone();
    nodes[0].stop();
    nodes[1].wait("peer-offline", Some(&alice_name));
    let v = nodes[1].json(&["mesh", "stats"]);
    let gone = row(&v, "alice");
    assert_eq!(gone["answered"], false, "{v}");
    assert!(gone["usage"].is_null(), "{v}");
    assert_eq!(gone["note"], "offline", "{v}");
}
