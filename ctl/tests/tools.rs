//! Shared MCP tools end to end: a member's daemon hosts a real stdio MCP server (the one
//! in `tests/mcp/echo_server.py`), another member calls its tools through the relay with
//! `claudemesh tools call`; the host gates, audits, restarts; the relay sees only
//! ciphertext.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{Node, mesh, mesh_on};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

fn echo_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/mcp/echo_server.py")
        .canonicalize()
        .unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `host` hosts the echo server as `echo` (starts logged to `starts`).
fn host_echo(host: &Node, starts: &Path, extra: &[&str]) -> Value {
    let env = format!("ECHO_STARTS={}", starts.display());
    let server = echo_server();
    let mut args = vec![
        "mcp-host",
        "add",
        "echo",
        "--description",
        "echoes for tests",
        "--env",
        &env,
    ];
    args.extend_from_slice(extra);
    // `--json` before `--`: after it, everything is the server's command line.
    args.extend_from_slice(&["--json", "--", "python3", server.to_str().unwrap()]);
    serde_json::from_str(&host.ok(&args)).unwrap()
}

/// The catalog entry of `server` as `n` sees it.
fn listed(n: &Node, server: &str) -> Option<Value> {
    n.json(&["tools", "list"])["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == server)
        .cloned()
}

fn call(n: &Node, server: &str, tool: &str, args: &str) -> Value {
    n.json(&["tools", "call", server, tool, args])
}

fn first_text(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

claudemesh_tests::per_store! {
    fn a_members_mcp_server_is_called_through_the_mesh_and_kept_alive_by_its_host(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let starts = root.path().join("starts");
        let s = host_echo(alice, &starts, &[]);
        assert_eq!(s["published"], true, "{s}");
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["tools"], 8, "{s}");
        wait_until("bob sees echo in the catalog", || {
            listed(bob, "echo").is_some()
        });
        let entry = listed(bob, "echo").unwrap();
        assert_eq!(entry["online"], true, "{entry}");
        assert_eq!(entry["mine"], false);
        assert_eq!(entry["scope"], "mesh");
        let qualified: Vec<_> = entry["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["qualified"].as_str().unwrap().to_string())
            .collect();
        assert!(
            qualified.contains(&"echo__echo".to_string()),
            "{qualified:?}"
        );

        // Calls: the result is the server's, content and structured content alike.
        let r = call(bob, "echo", "echo", r#"{"text":"hello over the mesh"}"#);
        assert_eq!(first_text(&r), "hello over the mesh", "{r}");
        let r = call(bob, "echo", "add", r#"{"a":2,"b":40}"#);
        assert_eq!(r["result"]["structuredContent"]["sum"], 42, "{r}");
        let r = call(bob, "echo", "fail", "{}");
        assert_eq!(
            r["result"]["isError"], true,
            "a tool error is the tool's: {r}"
        );
        let (code, err) = bob.fails(&["tools", "call", "echo", "nope", "{}"]);
        assert_eq!(code, 4, "{err}");
        assert!(err.contains("has no tool \"nope\""), "{err}");
        let (code, err) = bob.fails(&["tools", "call", "echo", "echo", "[1]"]);
        assert_eq!(code, 2, "{err}");

        // The server crashes: its host restarts it and calls work again.
        let (_, err) = bob.fails(&["tools", "call", "echo", "crash", "{}"]);
        assert!(err.contains("not running"), "{err}");
        wait_until("the host restarted echo", || {
            let l = alice.json(&["mcp-host", "list"]);
            let s = &l["servers"][0];
            s["restarts"].as_u64().unwrap_or(0) >= 1 && s["state"] == "running"
        });
        let r = call(bob, "echo", "echo", r#"{"text":"back"}"#);
        assert_eq!(first_text(&r), "back", "{r}");
        assert_eq!(std::fs::read_to_string(&starts).unwrap().lines().count(), 2);
        let logs = alice.ok(&["mcp-host", "logs", "echo"]);
        assert!(
            logs.contains("crashing on request"),
            "stderr is kept: {logs}"
        );
        assert!(logs.contains("restarting"), "{logs}");

        // The server's own list_changed reaches the catalog.
        call(bob, "echo", "grow", "{}");
        wait_until("bob sees the new tool", || {
            listed(bob, "echo").is_some_and(|e| {
                e["tools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["name"] == "extra")
            })
        });
        assert_eq!(first_text(&call(bob, "echo", "extra", "{}")), "extra");

        // Without the `tools` grant: refused, and the host's audit log says so.
        alice.ok(&["revoke", "bob", "tools"]);
        let (code, err) = bob.fails(&["tools", "call", "echo", "echo", r#"{"text":"x"}"#]);
        assert_eq!(code, 8, "{err}");
        assert!(err.contains("`tools` grant"), "{err}");
        let audit = alice.json(&["tools", "audit"]);
        let entries = audit["entries"].as_array().unwrap();
        assert_eq!(entries[0]["outcome"], "no_grant", "{audit}");
        assert!(
            entries[0]["caller"].as_str().unwrap().starts_with("bob"),
            "{audit}"
        );
        assert!(
            entries
                .iter()
                .any(|e| e["outcome"] == "ok" && e["tool"] == "echo"),
            "{audit}"
        );
        assert!(
            !audit.to_string().contains("hello over the mesh"),
            "the audit log keeps no arguments or results"
        );
        alice.ok(&["grant", "bob", "tools"]);
        assert_eq!(
            first_text(&call(bob, "echo", "echo", r#"{"text":"y"}"#)),
            "y"
        );

        // Removed: it leaves the catalog.
        alice.ok(&["mcp-host", "rm", "echo"]);
        wait_until("echo leaves bob's catalog", || {
            listed(bob, "echo").is_none()
        });
        let (code, _) = bob.fails(&["tools", "call", "echo", "echo", r#"{"text":"z"}"#]);
        assert_eq!(code, 4);
    }
}

#[test]
fn a_host_offline_is_said_at_once_and_calls_work_when_it_is_back() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let starts = root.path().join("starts");
    host_echo(&nodes[0], &starts, &[]);
    wait_until("bob sees echo", || listed(&nodes[1], "echo").is_some());
    assert_eq!(
        first_text(&call(&nodes[1], "echo", "echo", r#"{"text":"1"}"#)),
        "1"
    );
    nodes[0].stop();
    nodes[1].wait("peer-offline", Some("alice"));
    let entry = listed(&nodes[1], "echo").unwrap();
    assert_eq!(
        entry["online"], false,
        "the catalog lists it offline: {entry}"
    );
    let t = Instant::now();
    let (code, err) = nodes[1].fails(&["tools", "call", "echo", "echo", r#"{"text":"2"}"#]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "within the deadline");
    // Back: the host starts its server again at its start; calls work.
    nodes[0].start();
    nodes[1].wait("peer-online", Some("alice"));
    wait_until("alice's echo runs again", || {
        nodes[0].json(&["mcp-host", "list"])["servers"][0]["state"] == "running"
    });
    assert_eq!(
        first_text(&call(&nodes[1], "echo", "echo", r#"{"text":"3"}"#)),
        "3"
    );
    // A call that takes longer than the caller waits: a clear timeout.
    let (code, err) = nodes[1].fails(&[
        "tools",
        "call",
        "echo",
        "slow",
        r#"{"ms":5000}"#,
        "--timeout",
        "1",
    ]);
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("within 1 s"), "{err}");
}

claudemesh_tests::per_store! {
    /// A group or member scope keeps a server from everyone else's calls, whatever they
    /// claim; the host's own member always may.
    fn a_scoped_server_refuses_members_outside_its_scope(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob", "carol"], &[]);
        let starts = root.path().join("starts");
        host_echo(&nodes[0], &starts, &["--scope", "bob", "--allow", "echo"]);
        wait_until("carol sees echo", || listed(&nodes[2], "echo").is_some());
        let entry = listed(&nodes[1], "echo").unwrap();
        assert_eq!(
            entry["tools"].as_array().unwrap().len(),
            1,
            "allowlist: {entry}"
        );
        assert_eq!(
            first_text(&call(&nodes[1], "echo", "echo", r#"{"text":"bob may"}"#)),
            "bob may"
        );
        let (code, err) = nodes[2].fails(&["tools", "call", "echo", "echo", r#"{"text":"no"}"#]);
        assert_eq!(code, 8, "{err}");
        assert!(err.contains("not allowed"), "{err}");
        let audit = nodes[0].json(&["tools", "audit"]);
        assert_eq!(audit["entries"][0]["outcome"], "not_allowed", "{audit}");
    }
}

/// Attack (the relay operator): arguments and results cross the relay; neither shows in
/// a frame it sees or in anything it stores.
#[test]
fn the_relay_sees_neither_arguments_nor_results() {
    use claudemesh_schema::wire::{self, ClientFrame, RelayFrame};
    use claudemesh_tests::proxy::Proxy;
    use std::sync::{Arc, Mutex};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let arg = "argument-6c1f0e9b-never-on-the-relay";
    let res = "result-3d7a2c44-never-on-the-relay";
    let seen: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
    let s = seen.clone();
    let tap = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |sent: &[ClientFrame], f: RelayFrame| {
            let mut frames = vec![wire::encode(&f).unwrap()];
            if let Some(c) = sent.last() {
                frames.push(wire::encode(c).unwrap());
            }
            let mut s = s.lock().unwrap();
            s.0 += 1;
            for fr in &frames {
                for needle in [arg, res] {
                    if claudemesh_tests::contains(fr, needle.as_bytes()) {
                        s.1.push(format!("{needle} in a frame"));
                    }
                }
            }
            f
        }),
    );
    let mut nodes: Vec<Node> = ["alice", "bob"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &tap.addr.to_string(),
        "--fingerprint",
        &relay.fingerprint,
    ]);
    let link = nodes[0].ok(&["invite"]);
    nodes[1].ok(&["join", &link, "--wait", "20"]);
    nodes[0].wait("peer-online", Some("bob"));
    nodes[1].wait("peer-online", Some("alice"));
    let starts = root.path().join("starts");
    let env = format!("SECRET_RESULT={res}");
    host_echo(&nodes[0], &starts, &["--env", &env]);
    wait_until("bob sees echo", || listed(&nodes[1], "echo").is_some());
    let r = call(&nodes[1], "echo", "echo", &format!(r#"{{"text":"{arg}"}}"#));
    assert_eq!(first_text(&r), arg);
    let r = call(&nodes[1], "echo", "whoami", r#"{"name":"SECRET_RESULT"}"#);
    assert_eq!(first_text(&r), res);
    drop(tap);
    let (frames, leaks) = seen.lock().unwrap().clone();
    assert!(frames > 10, "the tap saw the calls ({frames} frames)");
    assert!(leaks.is_empty(), "{leaks:?}");
    let mut stack = vec![relay.data_dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).unwrap_or_default();
                for needle in [arg, res] {
                    assert!(
                        !claudemesh_tests::contains(&b, needle.as_bytes()),
                        "{needle} in {}",
                        p.display()
                    );
                }
            }
        }
    }
}

claudemesh_tests::per_store! {
    /// The real Python MCP client on bob's side: shared tools appear and leave with
    /// `tools/list_changed`, as `<server>__<tool>` and through `mesh_tool_call`, and a call
    /// of `mcp-server-time` (PyPI) through the mesh matches a direct call of it.
    fn a_real_mcp_client_gains_and_loses_shared_tools_and_calls_them(store) {
        let python = std::env::var_os("CLAUDEMESH_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python")
            });
        let time = python.with_file_name("mcp-server-time");
        assert!(
            time.exists(),
            "mcp-server-time is not installed next to {}: run `bash scripts/test`",
            python.display()
        );
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp/tools_mcp.py");
        let out = std::process::Command::new(&python)
            .arg(script)
            .env("CM_BIN", bin())
            .env("CM_DIR_A", &nodes[0].dir)
            .env("CM_DIR_B", &nodes[1].dir)
            .env("CM_ECHO_SERVER", echo_server())
            .env("CM_TIME_SERVER", &time)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python MCP client run failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["session_server_ended"], true, "{v}");
    }
}

/// Attack (the relay operator): it hands the host a call it already delivered, in place
/// of the next one. The host runs each call once: the replay runs nothing, the caller of
/// the swallowed call hears a timeout, and later calls work.
#[test]
fn a_call_replayed_by_the_relay_is_not_run_again() {
    use claudemesh_schema::wire::{ClientFrame, RelayFrame, Route};
    use claudemesh_tests::proxy::Proxy;
    use std::sync::{Arc, Mutex};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    // The host daemon's session, once known; the first call delivered to it; replayed yet.
    type Kept = (
        Option<claudemesh_schema::SessionId>,
        Option<RelayFrame>,
        bool,
    );
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let k = kept.clone();
    let tap = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |_sent: &[ClientFrame], f: RelayFrame| {
            let mut k = k.lock().unwrap();
            let RelayFrame::Deliver { env, .. } = &f else {
                return f;
            };
            if k.0.is_none()
                || env.to
                    != (Route::Session {
                        session: k.0.unwrap(),
                    })
            {
                return f;
            }
            match (k.1.clone(), k.2) {
                (None, _) => {
                    k.1 = Some(f.clone());
                    f
                }
                (Some(first), false) => {
                    k.2 = true;
                    first
                }
                _ => f,
            }
        }),
    );
    let mut nodes: Vec<Node> = ["alice", "bob"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &tap.addr.to_string(),
        "--fingerprint",
        &relay.fingerprint,
    ]);
    let link = nodes[0].ok(&["invite"]);
    nodes[1].ok(&["join", &link, "--wait", "20"]);
    nodes[0].wait("peer-online", Some("bob"));
    nodes[1].wait("peer-online", Some("alice"));
    let calls = root.path().join("calls");
    let env = format!("ECHO_CALLS={}", calls.display());
    host_echo(&nodes[0], &root.path().join("starts"), &["--env", &env]);
    wait_until("bob sees echo", || listed(&nodes[1], "echo").is_some());
    let session: claudemesh_schema::SessionId =
        serde_json::from_value(nodes[0].json(&["whoami"])["identities"][0]["session"].clone())
            .unwrap();
    kept.lock().unwrap().0 = Some(session);
    assert_eq!(
        first_text(&call(&nodes[1], "echo", "echo", r#"{"text":"once"}"#)),
        "once"
    );
    // The relay swaps the next call for the first one.
    let (code, err) = nodes[1].fails(&[
        "tools",
        "call",
        "echo",
        "add",
        r#"{"a":1,"b":1}"#,
        "--timeout",
        "3",
    ]);
    assert_eq!(code, 9, "the swallowed call times out: {err}");
    assert!(kept.lock().unwrap().2, "the relay replayed the first call");
    assert_eq!(
        first_text(&call(&nodes[1], "echo", "echo", r#"{"text":"again"}"#)),
        "again"
    );
    let ran = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["echo", "echo"],
        "the replayed call ran once, the swallowed one never"
    );
}

claudemesh_tests::per_store! {
    /// A result too large for one answer goes as a file shared with the caller alone; the
    /// caller's daemon fetches it within the call and returns it as any result.
    fn a_result_larger_than_a_message_arrives_as_a_file(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob", "carol"], &[]);
        host_echo(&nodes[0], &root.path().join("starts"), &[]);
        wait_until("bob sees echo", || listed(&nodes[1], "echo").is_some());
        let r = call(&nodes[1], "echo", "big", r#"{"kib":600}"#);
        let text = first_text(&r);
        assert_eq!(text.len(), 600 * 1024);
        assert!(
            text.starts_with("abcdefghijklmnopqrstuvwxyzab"),
            "{}",
            &text[..40]
        );
        let for_bob = nodes[1].json(&["file", "list"]).to_string();
        assert!(
            for_bob.contains("echo__big-result.json"),
            "it went as a file: {for_bob}"
        );
        // The file was for bob alone: carol sees that it exists, never its name or content.
        let listed_for_carol = nodes[2].json(&["file", "list"]).to_string();
        assert!(
            !listed_for_carol.contains("echo__big"),
            "{listed_for_carol}"
        );
    }
}
