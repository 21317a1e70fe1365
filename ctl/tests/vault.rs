//! The vault end to end: a real relay and daemon, the CLI and the MCP shim as users run
//! them. Values go in through stdin, a file or a tool call and never come out: not in
//! listings, `--json`, errors, logs at trace level, argv, the relay's data, or the vault
//! file in clear. The test reads them back the one way the daemon does, by opening the
//! vault file with the member's key file.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{Node, RelayProc, contains, form_mesh};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// Values long and odd enough never to appear anywhere by chance.
const TOKEN: &str = "ghp_vaultNeedle_8f2c61d0a9e34b7f55aa";
const API_KEY: &str = "sk-vaultNeedle-e41b9c2277d04f1a9b3c";
const PEM: &str = "-----BEGIN KEY-----\nvaultNeedleLine-0c9d7a61f2e8\n-----END KEY-----\n";

/// A relay and one node that owns the mesh `test`, its daemon logging at `filter`.
fn one_node(root: &Path, filter: &str) -> (RelayProc, Node) {
    let relay = RelayProc::start(bin(), &root.join("relay"), &[]);
    let mut n = Node::new(bin(), root, "ann");
    n.log_filter = filter.into();
    let mut nodes = [n];
    form_mesh(&relay, &mut nodes);
    let [n] = nodes;
    (relay, n)
}

/// `claudemesh <args>` with `stdin`; asserts success and returns stdout.
fn ok_stdin(n: &Node, args: &[&str], stdin: &[u8]) -> String {
    let out = n.run_stdin(args, &[], stdin);
    assert_ok(&out, args);
    String::from_utf8(out.stdout).unwrap()
}

fn assert_ok(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "`claudemesh {}` failed ({:?}): {}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn values() -> [&'static str; 3] {
    [TOKEN, API_KEY, PEM]
}

/// Neither in `bytes`, nor any line of a multi-line value.
fn assert_no_value(bytes: &[u8], where_: &str) {
    for v in values() {
        for part in v.lines().filter(|l| l.contains("vaultNeedle")) {
            assert!(
                !contains(bytes, part.as_bytes()),
                "a vault value in {where_}"
            );
        }
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The node's mesh id and its key file's keys.
fn keys_of(n: &Node) -> (claudemesh_schema::MeshId, claudemesh_daemon::keys::MeshKeys) {
    let key_file = std::fs::read_dir(n.dir.join("keys"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .unwrap()
        .path();
    let stem = key_file.file_stem().unwrap().to_string_lossy().into_owned();
    let mesh: claudemesh_schema::MeshId = serde_json::from_value(Value::String(stem)).unwrap();
    let keys = claudemesh_daemon::keys::MeshKeys::load(&n.dir.join("keys"), &mesh).unwrap();
    (mesh, keys)
}

fn vault_file(n: &Node) -> PathBuf {
    let (mesh, _) = keys_of(n);
    n.dir.join("vault").join(format!("{mesh}.vault"))
}

/// Every entry's (name, value), read as the daemon reads them: the vault file opened
/// under the key derived from the member's key file.
fn reveal(n: &Node) -> Vec<(String, String)> {
    let (mesh, keys) = keys_of(n);
    let key = claudemesh_schema::vault::VaultKey::derive(&keys.member, &mesh);
    let plain = key.open(&std::fs::read(vault_file(n)).unwrap()).unwrap();
    let v: Value = serde_json::from_slice(&plain).unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn names(list: &Value) -> Vec<String> {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn vault_set_list_rm_round_trip_and_values_reach_no_output_log_relay_or_clear_file() {
    let root = tempfile::tempdir().unwrap();
    let (relay, n) = one_node(root.path(), "trace");
    let mut printed = Vec::new();
    // Piped stdin: one trailing newline is dropped.
    let args = [
        "vault",
        "set",
        "GITHUB_TOKEN",
        "--description",
        "CI token",
        "--json",
    ];
    let s = ok_stdin(&n, &args, format!("{TOKEN}\n").as_bytes());
    printed.extend(s.bytes());
    let r: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["entry"]["name"], "GITHUB_TOKEN");
    assert_eq!(r["entry"]["size"], TOKEN.len());
    assert_eq!(r["entry"]["description"], "CI token");
    assert_eq!(r["replaced"], false);
    let created = r["entry"]["created_at"].as_i64().unwrap();
    // `-` reads stdin too.
    printed.extend(ok_stdin(&n, &["vault", "set", "OPENAI_KEY", "-"], API_KEY.as_bytes()).bytes());
    // --file keeps the exact bytes, trailing newline included.
    let pem = root.path().join("key.pem");
    std::fs::write(&pem, PEM).unwrap();
    printed.extend(
        n.ok(&["vault", "set", "tls.key", "--file", pem.to_str().unwrap()])
            .bytes(),
    );

    let list = n.json(&["vault", "list"]);
    printed.extend(list.to_string().bytes());
    assert_eq!(names(&list), ["GITHUB_TOKEN", "OPENAI_KEY", "tls.key"]);
    let sizes: Vec<u64> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sizes,
        [TOKEN.len(), API_KEY.len(), PEM.len()].map(|l| l as u64)
    );
    for e in list["entries"].as_array().unwrap() {
        assert!(e.get("value").is_none(), "{e}");
        assert!(e["created_at"].as_i64().unwrap() > 0 && e["updated_at"].as_i64().unwrap() > 0);
    }
    let table = n.ok(&["vault", "list"]);
    assert!(
        table.contains("GITHUB_TOKEN") && table.contains("CI token"),
        "{table}"
    );
    printed.extend(table.bytes());
    assert_eq!(
        reveal(&n),
        [
            ("GITHUB_TOKEN".to_string(), TOKEN.to_string()),
            ("OPENAI_KEY".to_string(), API_KEY.to_string()),
            ("tls.key".to_string(), PEM.to_string()),
        ]
    );

    // Replacing keeps the creation time and, when none is given, the description.
    let s = ok_stdin(
        &n,
        &["vault", "set", "GITHUB_TOKEN", "--json"],
        b"ghp_second_value_for_vault\n",
    );
    let r: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(r["replaced"], true);
    assert_eq!(r["entry"]["created_at"].as_i64().unwrap(), created);
    assert_eq!(r["entry"]["description"], "CI token");
    // Put the first value back for the searches below.
    ok_stdin(&n, &["vault", "set", "GITHUB_TOKEN"], TOKEN.as_bytes());

    // Errors say what to do and hold no value.
    let out = n.run_stdin(&["vault", "set", "bad name"], &[], TOKEN.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("letters, digits"), "{err}");
    printed.extend(out.stderr);
    let big = "x".repeat(64 * 1024 + 1);
    let out = n.run_stdin(&["vault", "set", "BIG"], &[], big.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 65536"));
    let out = n.run_stdin(&["vault", "set", "EMPTY"], &[], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no value"));
    let (code, err) = n.fails(&["vault", "rm", "NOPE"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("no entry \"NOPE\"") && err.contains("vault list"),
        "{err}"
    );

    n.ok(&["vault", "rm", "OPENAI_KEY"]);
    assert_eq!(
        names(&n.json(&["vault", "list"])),
        ["GITHUB_TOKEN", "tls.key"]
    );
    let r = n.json(&["vault", "rm", "tls.key"]);
    assert_eq!(r["name"], "tls.key");
    assert_eq!(names(&n.json(&["vault", "list"])), ["GITHUB_TOKEN"]);

    // Nowhere: what the CLI printed, the daemon's log at trace level, any file of the
    // config directory (the vault file included: sealed), the relay's data.
    assert_no_value(&printed, "CLI output");
    let log = n.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log is at trace level"
    );
    assert!(
        log.contains("vault entry stored"),
        "the set was logged, by name"
    );
    assert_no_value(log.as_bytes(), "the daemon's log");
    let mut files = Vec::new();
    files_under(&n.dir, &mut files);
    files_under(&relay.data_dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with(vault_file(&n))));
    for f in &files {
        assert_no_value(
            &std::fs::read(f).unwrap_or_default(),
            &f.display().to_string(),
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&vault_file(&n)), 0o600);
        assert_eq!(mode(&n.dir.join("vault")), 0o700);
    }
}

#[test]
fn a_vault_value_given_as_an_argument_is_refused_and_a_piped_one_is_in_no_argv() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, n) = one_node(root.path(), "warn");
    let (code, err) = n.fails(&["vault", "set", "TOKEN", TOKEN]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("never taken from the command line"), "{err}");
    assert!(!err.contains("vaultNeedle"), "{err}");
    let (code, _) = n.fails(&["vault", "set", "TOKEN", "-", TOKEN]);
    assert_eq!(code, 2);
    assert!(
        names(&n.json(&["vault", "list"])).is_empty(),
        "nothing stored"
    );

    // While `vault set` waits for its stdin, neither it nor the daemon has the value in
    // its command line (what `ps` shows every user).
    let mut cmd: Command = n.command(&["vault", "set", "TOKEN", "-"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write as _;
    stdin.write_all(TOKEN.as_bytes()).unwrap();
    // Still running: stdin is open. Its command line shows once its exec is through
    // (here that can trail `spawn` by a moment).
    let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cli = loop {
        let c = cmdline(child.id());
        if contains(&c, b"\0vault\0set\0TOKEN\0-\0") {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "never read the running CLI's argv"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_no_value(&cli, "the CLI's argv");
    assert_no_value(&cmdline(n.pid()), "the daemon's argv");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_ok(&out, &["vault", "set", "TOKEN", "-"]);
    assert_eq!(reveal(&n), [("TOKEN".to_string(), TOKEN.to_string())]);
}

#[test]
fn a_tampered_vault_file_is_refused_with_what_to_do_and_never_written_over() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, n) = one_node(root.path(), "warn");
    ok_stdin(&n, &["vault", "set", "A"], TOKEN.as_bytes());
    ok_stdin(&n, &["vault", "set", "B"], API_KEY.as_bytes());
    let path = vault_file(&n);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(&path, &bad).unwrap();
    let (code, err) = n.fails(&["vault", "list"]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("cannot be opened"), "{err}");
    assert!(
        err.contains("claudemesh restore") && err.contains("move the file away"),
        "{err}"
    );
    // A write is refused too, saying so; the file stays as it is.
    let out = n.run_stdin(&["vault", "set", "C"], &[], b"another-vault-value");
    assert_eq!(out.status.code(), Some(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing will be written over it"), "{err}");
    let (code, _) = n.fails(&["vault", "rm", "A"]);
    assert_eq!(code, 10);
    assert_eq!(std::fs::read(&path).unwrap(), bad, "never written over");
    // A vault from a newer claudemesh asks for an upgrade.
    let mut future = good.clone();
    future[0] = 9;
    std::fs::write(&path, &future).unwrap();
    let (_, err) = n.fails(&["vault", "list"]);
    assert!(err.contains("upgrade"), "{err}");
    // Readable by others: refused with the fix.
    std::fs::write(&path, &good).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, err) = n.fails(&["vault", "list"]);
        assert_eq!(code, 10, "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Put back, both entries are there.
    assert_eq!(names(&n.json(&["vault", "list"])), ["A", "B"]);
}

#[test]
fn vault_entries_survive_a_daemon_restart_and_leaving_the_mesh_deletes_them() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut n) = one_node(root.path(), "warn");
    ok_stdin(
        &n,
        &["vault", "set", "TOKEN", "--description", "kept"],
        TOKEN.as_bytes(),
    );
    n.stop();
    n.start();
    let list = n.json(&["vault", "list"]);
    assert_eq!(names(&list), ["TOKEN"]);
    assert_eq!(list["entries"][0]["description"], "kept");
    assert_eq!(reveal(&n), [("TOKEN".to_string(), TOKEN.to_string())]);
    let path = vault_file(&n);
    n.ok(&["leave", "test", "--yes", "--force"]);
    assert!(!path.exists(), "left with the key it was sealed under");
}

#[test]
fn a_backup_restored_into_a_fresh_config_dir_lists_and_serves_the_vault() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut ann) = one_node(root.path(), "warn");
    ok_stdin(
        &ann,
        &["vault", "set", "TOKEN", "--description", "for CI"],
        TOKEN.as_bytes(),
    );
    ok_stdin(&ann, &["vault", "set", "API"], API_KEY.as_bytes());
    let before = ann.json(&["vault", "list"]);
    let pass = root.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let file = root.path().join("ann.cmbackup");
    let (f, p) = (file.to_str().unwrap(), pass.to_str().unwrap());
    ann.ok(&["backup", f, "--passphrase-file", p]);
    assert_no_value(&std::fs::read(&file).unwrap(), "the backup file");
    // The same identity runs from the new directory only.
    ann.stop();
    let mut fresh = Node::new(bin(), &root.path().join("elsewhere"), "ann");
    assert!(!fresh.dir.join("vault").exists());
    fresh.ok(&["restore", f, "--passphrase-file", p]);
    fresh.start();
    let after = fresh.json(&["vault", "list"]);
    assert_eq!(after["entries"], before["entries"]);
    assert_eq!(
        reveal(&fresh),
        [
            ("API".to_string(), API_KEY.to_string()),
            ("TOKEN".to_string(), TOKEN.to_string()),
        ]
    );
    // And it keeps working there.
    fresh.ok(&["vault", "rm", "API"]);
    assert_eq!(names(&fresh.json(&["vault", "list"])), ["TOKEN"]);
}

/// A command on a pseudo-terminal, as a person types at it (the same as `guards.rs`'s).
struct Pty {
    master: std::fs::File,
    child: std::process::Child,
    seen: std::sync::Arc<(std::sync::Mutex<String>, std::sync::Condvar)>,
    reader: std::thread::JoinHandle<()>,
}

impl Pty {
    fn spawn(node: &Node, args: &[&str]) -> Self {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        use std::io::Read as _;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let mut cmd = node.command(args);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().unwrap();
        drop(cmd); // only the child holds the terminal's side now
        let master = std::fs::File::from(master);
        let seen: std::sync::Arc<(std::sync::Mutex<String>, std::sync::Condvar)> =
            Default::default();
        let (mut r, s) = (master.try_clone().unwrap(), seen.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) once the child closed the terminal.
            while let Ok(n @ 1..) = r.read(&mut buf) {
                s.0.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                s.1.notify_all();
            }
        });
        Self {
            master,
            child,
            seen,
            reader,
        }
    }

    /// Wait until the output holds `needle` (bounded).
    fn expect(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut out = self.seen.0.lock().unwrap();
        while !out.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no {needle:?} in {out:?}");
            out = self.seen.1.wait_timeout(out, left).unwrap().0;
        }
    }

    fn type_line(&mut self, s: &str) {
        use std::io::Write as _;
        self.master.write_all(format!("{s}\n").as_bytes()).unwrap();
    }

    /// Wait for the exit; the exit code and everything written.
    fn finish(mut self) -> (i32, String) {
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        self.reader.join().unwrap();
        let out = self.seen.0.lock().unwrap().clone();
        (code, out)
    }
}

#[test]
fn on_a_terminal_vault_set_asks_for_the_value_and_does_not_echo_it() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, n) = one_node(root.path(), "warn");
    let mut t = Pty::spawn(&n, &["vault", "set", "TOKEN"]);
    t.expect("value of TOKEN (not shown): ");
    t.type_line(TOKEN);
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stored TOKEN"), "{out}");
    assert_no_value(out.as_bytes(), "the terminal");
    assert_eq!(reveal(&n), [("TOKEN".to_string(), TOKEN.to_string())]);
}

/// A minimal line driver for `claudemesh mcp` with its stderr kept (the Python client
/// drives the same tools in `tests/mcp/e2e_mcp.py`).
struct Shim {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: std::io::BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Shim {
    fn start(n: &Node, stderr: &Path) -> Self {
        let mut child = Command::new(bin())
            .arg("mcp")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &n.dir)
            .env("CLAUDEMESH_CONFIG_DIR", &n.dir)
            .env("CLAUDEMESH_SESSION_KEY", "vault-test")
            .env("CLAUDEMESH_DISPLAY_NAME", "ann-claude")
            .env("CLAUDEMESH_NO_AUTOSTART", "1")
            .env("CLAUDEMESH_LOG", "trace")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
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

    fn send(&mut self, v: Value) {
        use std::io::Write as _;
        writeln!(self.stdin, "{v}").unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        use std::io::BufRead as _;
        let id = self.next;
        self.next += 1;
        self.send(
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        loop {
            let mut line = String::new();
            assert!(self.out.read_line(&mut line).unwrap() > 0, "shim exited");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Call a tool; returns (is_error, the answer's whole text).
    fn tool(&mut self, name: &str, args: Value) -> (bool, String) {
        let r = self.request(
            "tools/call",
            serde_json::json!({"name": name, "arguments": args}),
        );
        let res = &r["result"];
        let text = res["content"][0]["text"].as_str().unwrap_or("").to_string();
        (res["isError"].as_bool().unwrap_or(false), text)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mcp_vault_tools_store_list_and_delete_and_never_return_or_log_a_value() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, n) = one_node(root.path(), "trace");
    let stderr = root.path().join("shim.stderr");
    let mut shim = Shim::start(&n, &stderr);
    let tools = shim.request("tools/list", serde_json::json!({}));
    let listed: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in ["vault_set", "vault_list", "vault_delete"] {
        assert!(listed.contains(&t), "{t} in {listed:?}");
    }
    let mut answers = String::new();
    let (err, set) = shim.tool(
        "vault_set",
        serde_json::json!({"name": "GITHUB_TOKEN", "value": TOKEN, "description": "from a tool"}),
    );
    assert!(!err, "{set}");
    let set: Value = serde_json::from_str(&set).unwrap();
    assert_eq!(set["entry"]["size"], TOKEN.len());
    answers.push_str(&set.to_string());
    let (err, _) = shim.tool(
        "vault_set",
        serde_json::json!({"name": "PEM", "value": PEM}),
    );
    assert!(!err);
    let (err, list) = shim.tool("vault_list", serde_json::json!({}));
    assert!(!err, "{list}");
    answers.push_str(&list);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(names(&list), ["GITHUB_TOKEN", "PEM"]);
    assert_eq!(list["entries"][0]["description"], "from a tool");
    // The CLI sees what the tools stored.
    assert_eq!(n.json(&["vault", "list"])["entries"], list["entries"]);
    // Bad calls are tool errors that quote no value (a number where text belongs, a bad
    // name, an unknown entry).
    let (err, msg) = shim.tool(
        "vault_set",
        serde_json::json!({"name": "N", "value": 982451653}),
    );
    assert!(err, "{msg}");
    assert!(!msg.contains("982451653"), "{msg}");
    let (err, msg) = shim.tool(
        "vault_set",
        serde_json::json!({"name": "no/slash", "value": API_KEY}),
    );
    assert!(err && msg.contains("not allowed"), "{msg}");
    answers.push_str(&msg);
    let (err, msg) = shim.tool("vault_delete", serde_json::json!({"name": "NOPE"}));
    assert!(err && msg.contains("no entry"), "{msg}");
    let (err, _) = shim.tool("vault_delete", serde_json::json!({"name": "PEM"}));
    assert!(!err);
    let (_, list) = shim.tool("vault_list", serde_json::json!({}));
    answers.push_str(&list);
    assert_eq!(
        names(&serde_json::from_str(&list).unwrap()),
        ["GITHUB_TOKEN"]
    );
    assert_eq!(
        reveal(&n),
        [("GITHUB_TOKEN".to_string(), TOKEN.to_string())]
    );
    drop(shim);
    assert_no_value(answers.as_bytes(), "tool answers");
    let log = std::fs::read(&stderr).unwrap();
    assert!(!log.is_empty(), "the shim logged at trace level");
    assert_no_value(&log, "the shim's log at trace level");
    assert!(!contains(&log, b"982451653"), "the shim's log");
    assert_no_value(n.log().as_bytes(), "the daemon's log");
}
