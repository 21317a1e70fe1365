#![allow(clippy::unwrap_used)]
//! Long lists end to end: a real relay and daemon holding 100,000 shared keys and 50,000
//! tasks, listed through the local socket (page by page), the real CLI (streamed) and the
//! MCP shim driven by the official Python MCP client.

use claudemesh_tests::{Node, mesh};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEYS: usize = 100_000;
const TASKS: usize = 50_000;
/// Tasks whose body is 20,000 control characters: each is ~120 KB of JSON once escaped,
/// so together they outgrow the 1 MiB request line limit. Written one at a time: a window
/// of thousands of such ops in flight at once stalls the link (see the report).
const BIG_TASKS: usize = 10;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

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

/// A raw JSON-RPC connection to a daemon's socket: what any local client speaks.
struct Ipc {
    w: UnixStream,
    r: BufReader<UnixStream>,
    next: u64,
}

impl Ipc {
    fn open(n: &Node) -> Self {
        let s = UnixStream::connect(n.dir.join("daemon.sock")).unwrap();
        Self {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            next: 1,
        }
    }

    fn answer(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.r.read_line(&mut line).unwrap() > 0, "daemon hung up");
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.w, "{req}").unwrap();
        loop {
            let v = self.answer();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Many writes, pipelined a window at a time: the daemon runs a connection's requests
    /// concurrently and commits them in groups, so this is as fast as a bulk import. Each
    /// write waits until it is sequenced (the default), which keeps the op outbox to one
    /// window: far ahead of the relay, writes slow down as the outbox grows.
    fn bulk(&mut self, n: usize, req: impl Fn(usize) -> (&'static str, Value)) {
        const WINDOW: usize = 2048;
        for start in (0..n).step_by(WINDOW) {
            let end = (start + WINDOW).min(n);
            let mut out = String::new();
            for i in start..end {
                let (method, params) = req(i);
                let id = self.next;
                self.next += 1;
                out.push_str(
                    &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                        .to_string(),
                );
                out.push('\n');
            }
            self.w.write_all(out.as_bytes()).unwrap();
            for _ in start..end {
                let v = self.answer();
                assert!(v["error"].is_null(), "bulk write failed: {v}");
            }
        }
    }
}

fn key(i: usize) -> String {
    format!("k{i:06}")
}

/// Every item of a paged IPC list, checking each page against the limit.
fn ipc_pages(ipc: &mut Ipc, method: &str, params: Value, list: &str, limit: u64) -> Vec<Value> {
    let (mut all, mut cursor) = (Vec::new(), Value::Null);
    loop {
        let mut p = params.clone();
        p["limit"] = limit.into();
        if !cursor.is_null() {
            p["cursor"] = cursor.clone();
        }
        let page = ipc.call(method, p);
        let items = page[list].as_array().unwrap().clone();
        assert!(items.len() as u64 <= limit);
        let line = page.to_string().len();
        assert!(
            line < 2 << 20,
            "a page is one op past its byte budget at most: {line} bytes"
        );
        all.extend(items);
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            return all;
        }
    }
}

#[test]
fn lists_of_100000_keys_and_50000_tasks_page_through_ipc_the_cli_and_mcp() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice"], &[]);
    let alice = &nodes[0];
    let mut ipc = Ipc::open(alice);
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("lists: {what} at {:?}", t0.elapsed());

    ipc.bulk(KEYS, |i| ("state_set", json!({"key": key(i), "value": i})));
    phase("keys written");
    let big_body = "\u{1}".repeat(20_000);
    ipc.bulk(TASKS - BIG_TASKS, |i| {
        ("task_create", json!({"title": format!("task {i}")}))
    });
    for i in TASKS - BIG_TASKS..TASKS {
        let t = json!({"title": format!("task {i}"), "body": big_body});
        ipc.call("task_create", t);
    }
    phase("tasks written");
    // Every write sequenced by the relay and applied back: the lists read folded rows.
    alice.ok(&[
        "wait",
        "synced",
        "--seq",
        &(KEYS + TASKS).to_string(),
        "--timeout",
        "600",
    ]);
    phase("synced");
    let expected: Vec<String> = (0..KEYS).map(key).collect();

    // IPC, page by page. Writes made while paging do not shift it: a key before the
    // cursor is not seen, one after it is, and every key there before is seen once.
    let (mut seen, mut cursor) = (Vec::new(), Value::Null);
    let mut wrote = false;
    loop {
        let mut p = json!({"limit": 1000});
        if !cursor.is_null() {
            p["cursor"] = cursor.clone();
        }
        let page = ipc.call("state_list", p);
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["key"].as_str().unwrap().to_string());
        }
        cursor = page["next_cursor"].clone();
        if !wrote {
            wrote = true;
            for k in ["a-before", "k050000-after"] {
                ipc.call("state_set", json!({"key": k, "value": 1}));
            }
            ipc.call("state_set", json!({"key": key(KEYS - 1), "value": null}));
        }
        if cursor.is_null() {
            break;
        }
    }
    let mut want = expected.clone();
    let at = want.partition_point(|k| k.as_str() < "k050000-after");
    want.insert(at, "k050000-after".into());
    want.pop();
    assert_eq!(seen.len(), want.len());
    assert!(seen == want, "keys paged in order, each once");
    // Back to the 100,000 keys of the bulk write.
    ipc.call("state_set", json!({"key": "a-before", "value": null}));
    ipc.call("state_set", json!({"key": "k050000-after", "value": null}));
    ipc.call(
        "state_set",
        json!({"key": key(KEYS - 1), "value": KEYS - 1}),
    );

    let tasks = ipc_pages(&mut ipc, "task_list", json!({}), "tasks", 1000);
    assert_eq!(tasks.len(), TASKS);
    let ids: std::collections::HashSet<&str> =
        tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), TASKS, "each task once");
    let bigs = tasks
        .iter()
        .filter(|t| t["body"] == big_body.as_str())
        .count();
    assert_eq!(bigs, BIG_TASKS, "big bodies come whole");
    let newest_first = tasks
        .windows(2)
        .all(|w| w[0]["created_at"].as_i64() >= w[1]["created_at"].as_i64());
    assert!(newest_first);
    let mine = ipc_pages(
        &mut ipc,
        "task_list",
        json!({"status": "open"}),
        "tasks",
        777,
    );
    assert_eq!(mine.len(), TASKS, "a filtered list pages too");

    phase("listed through IPC");
    // The CLI streams the pages into one JSON object, as one line.
    phase("before `state list --json`");
    let v = alice.json(&["state", "list"]);
    let keys: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert!(keys == expected, "the CLI lists every key in order");
    assert!(
        v.get("next_cursor").is_none(),
        "the CLI gives the whole list"
    );
    assert!(v["mesh"].is_string());
    phase("`state list --json` of the keys");
    let v = alice.json(&["task", "list"]);
    let cli_ids: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let ipc_ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(
        cli_ids == ipc_ids,
        "the CLI lists the tasks IPC pages, in order"
    );
    // As a table: a header and a row per key.
    let table = alice.ok(&["state", "list", "k0"]);
    assert_eq!(table.lines().count(), 1 + KEYS);
    phase("`state list` table of the keys");
    let table = alice.ok(&["task", "list"]);
    assert_eq!(table.lines().count(), 1 + TASKS);

    phase("listed through the CLI");
    // MCP, through the official Python client.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp/lists_mcp.py");
    let out = Command::new(python())
        .arg(script)
        .env("CM_BIN", bin())
        .env("CM_DIR", &alice.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python MCP client run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let mcp_keys: Vec<&str> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(mcp_keys == expected, "MCP pages every key in order");
    let mcp_ids: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(mcp_ids == ipc_ids, "MCP pages every task in order");
    assert!(v["key_pages"].as_u64().unwrap() >= (KEYS / 1000) as u64);
    phase("listed through MCP");
}
