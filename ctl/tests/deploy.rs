//! Hosted services end to end: a member (bob) deploys an MCP server to another member's
//! daemon that offered to host (hoster); it runs there in the sandbox, with bob's vault
//! secret as its environment, is restarted after a crash, and its logs reach bob. The
//! service is `tests/mcp/sandbox_probe.py`, which probes its sandbox from inside.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{Node, RelayProc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

fn probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/mcp/sandbox_probe.py")
        .canonicalize()
        .unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sandbox_works() -> bool {
    Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The text of a probe tool's answer, or the error when the call failed.
fn probe_call(n: &Node, tool: &str, args: &str) -> Result<String, String> {
    let out = n.run(&["tools", "call", "probe", tool, args, "--json"]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn service(n: &Node, name: &str) -> Option<Value> {
    n.json(&["deploy", "list"])["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// Wait until `n` can call `probe` at `version` of its manifest.
fn wait_running(n: &Node, version: u64) {
    wait_until("the service runs and serves calls", || {
        service(n, "probe").is_some_and(|s| s["version"] == version && s["status"] == "running")
            && probe_call(n, "version", "{}").is_ok()
    });
}

fn ok_stdin(n: &Node, args: &[&str], stdin: &[u8]) -> String {
    let out = n.run_stdin(args, &[], stdin);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every frame a tap saw, encoded.
type Frames = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Two members through a tap that records every frame, so a test can grep them.
fn two_through_tap(root: &Path) -> (RelayProc, claudemesh_tests::proxy::Proxy, Frames, Vec<Node>) {
    use claudemesh_schema::wire::{self, ClientFrame, RelayFrame};
    use claudemesh_tests::proxy::Proxy;
    use std::sync::Arc;
    let relay = RelayProc::start(bin(), &root.join("relay"), &[]);
    let frames: Frames = Arc::default();
    let f2 = frames.clone();
    let tap = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |sent: &[ClientFrame], f: RelayFrame| {
            let mut all = f2.lock().unwrap();
            all.push(wire::encode(&f).unwrap());
            if let Some(c) = sent.last() {
                all.push(wire::encode(c).unwrap());
            }
            f
        }),
    );
    let mut nodes: Vec<Node> = ["hoster", "bob"]
        .iter()
        .map(|n| Node::new(bin(), root, n))
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
    nodes[1].wait("peer-online", Some("hoster"));
    (relay, tap, frames, nodes)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// Every process's command line on this machine (what `ps` shows).
fn all_cmdlines() -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            all.extend(c);
            all.push(b'\n');
        }
    }
    all
}

#[test]
fn a_service_deployed_from_bob_runs_sandboxed_on_the_host_with_his_secret_restarts_and_logs_back() {
    if !sandbox_works() {
        panic!("bubblewrap cannot sandbox here; scripts/test installs the `bubblewrap` package");
    }
    let root = tempfile::tempdir().unwrap();
    let (relay, tap, frames, nodes) = two_through_tap(root.path());
    let (hoster, bob) = (&nodes[0], &nodes[1]);
    let secret = "vault-value-9f2c71d4-only-on-bob-and-in-the-sandbox";
    let mut printed = String::new();

    // Nobody hosts yet: a deploy says so.
    let (_, err) = bob.fails(&[
        "deploy",
        "add",
        "probe",
        "--file",
        "/etc/hostname",
        "--",
        "x",
    ]);
    assert!(err.contains("host enable"), "{err}");

    let st = hoster.json(&["host", "enable"]);
    printed.push_str(&st.to_string());
    assert_eq!(st["enabled"], true, "{st}");
    assert_eq!(st["sandbox_ok"], true, "{st}");
    wait_until("bob sees the host", || {
        bob.json(&["host", "status"])["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["enabled"] == true && h["me"] == false)
    });

    printed.push_str(&ok_stdin(
        bob,
        &["vault", "set", "token", "--json"],
        secret.as_bytes(),
    ));
    // Something of the host user's own, next to the daemon's keys.
    let private = hoster.dir.join("private-note.txt");
    std::fs::write(&private, "the host's own words").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let src = root.path().join("bob-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(probe(), src.join("sandbox_probe.py")).unwrap();
    let file = src.join("sandbox_probe.py");
    let out = bob.ok(&[
        "deploy",
        "add",
        "probe",
        "--file",
        file.to_str().unwrap(),
        "--env",
        "TOKEN=$vault:token",
        "--env",
        "MODE=plain-value",
        "--description",
        "probes its sandbox",
        "--json",
        "--",
        "python3",
        "sandbox_probe.py",
    ]);
    printed.push_str(&out);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], 1, "{v}");
    assert!(
        v["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "TOKEN=$vault:token"),
        "{v}"
    );
    wait_running(bob, 1);
    let s = service(bob, "probe").unwrap();
    printed.push_str(&s.to_string());
    assert_eq!(s["hosts"][0]["serving"], true, "{s}");
    assert_eq!(s["tools"], 6, "{s}");

    // The secret arrived as its environment.
    let sha = {
        use sha2::Digest as _;
        claudemesh_schema::crypto::hex(&sha2::Sha256::digest(secret.as_bytes()))
    };
    assert_eq!(
        probe_call(bob, "secret_sha", r#"{"name":"TOKEN"}"#).unwrap(),
        sha
    );
    // It cannot read the host user's home (nor the daemon's keys), but reads the system.
    let read = |p: &Path| probe_call(bob, "read", &format!(r#"{{"path":"{}"}}"#, p.display()));
    assert!(
        read(&private).unwrap().starts_with("denied:"),
        "{:?}",
        read(&private)
    );
    assert!(
        read(&hoster.dir.join("config.toml"))
            .unwrap()
            .starts_with("denied:"),
        "the daemon's directory is hidden"
    );
    assert!(
        read(Path::new("/etc/os-release"))
            .unwrap()
            .starts_with("ok:")
    );
    // No network unless allowed: the host's loopback listener is out of reach.
    let c = probe_call(bob, "connect", &format!(r#"{{"port":{port}}}"#)).unwrap();
    assert!(c.starts_with("refused:"), "{c}");

    // It crashes: the host restarts it.
    assert!(probe_call(bob, "crash", "{}").is_err());
    wait_until("the host restarted it", || {
        probe_call(bob, "starts", "{}").is_ok_and(|n| n == "2")
    });

    // Its logs reach bob, with the secret it printed masked.
    let logs = bob.json(&["deploy", "logs", "probe"]);
    printed.push_str(&logs.to_string());
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains("probe started")).count(),
        2,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("probe crashing on request"))
    );
    assert!(
        lines.iter().any(|l| l.contains("[$vault:token]")),
        "{lines:?}"
    );
    printed.push_str(&bob.ok(&["deploy", "logs", "probe"]));
    printed.push_str(&hoster.ok(&["deploy", "list"]));
    printed.push_str(&hoster.ok(&["host", "status"]));

    // The secret is on no command line while the service runs.
    assert!(
        !claudemesh_tests::contains(&all_cmdlines(), secret.as_bytes()),
        "the secret is in a process's command line"
    );

    // An update allows the network: a new version, the same secret.
    let out = bob.ok(&["deploy", "update", "probe", "--network", "--json"]);
    printed.push_str(&out);
    // The host replaces the running version: calls meanwhile may find it restarting.
    wait_until("the new version connects", || {
        probe_call(bob, "connect", &format!(r#"{{"port":{port}}}"#)).is_ok_and(|c| c == "connected")
    });
    assert_eq!(service(bob, "probe").unwrap()["version"], 2);
    assert_eq!(
        probe_call(bob, "secret_sha", r#"{"name":"TOKEN"}"#).unwrap(),
        sha
    );
    drop(listener);

    // Undeployed: the host stops it and it leaves the catalog.
    bob.ok(&["deploy", "rm", "probe"]);
    wait_until("the host stopped it", || {
        hoster.json(&["host", "status"])["running"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    wait_until("it left bob's catalog", || {
        !bob.json(&["tools", "list"])["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "probe")
    });

    // Nowhere but in bob's vault and the sandbox: not in what the CLI printed, the
    // daemons' logs, the relay's frames or its storage, or either daemon's database.
    assert!(!printed.contains(secret), "the secret was printed");
    for n in &nodes {
        assert!(
            !n.log().contains(secret),
            "{}'s log holds the secret",
            n.name
        );
    }
    drop(tap);
    for f in frames.lock().unwrap().iter() {
        assert!(
            !claudemesh_tests::contains(f, secret.as_bytes()),
            "a relay frame holds the secret"
        );
    }
    let mut stored = files_under(&relay.data_dir);
    stored.extend(files_under(&hoster.dir));
    stored.push(bob.dir.join("claudemesh.db"));
    for p in stored {
        let b = std::fs::read(&p).unwrap_or_default();
        assert!(
            !claudemesh_tests::contains(&b, secret.as_bytes()),
            "{} holds the secret",
            p.display()
        );
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A git source at a commit; an update to another commit; and a member who did not
/// deploy it cannot change or remove it.
#[test]
fn a_git_service_is_updated_to_a_new_commit_and_only_its_deployer_changes_it() {
    if !sandbox_works() {
        panic!("bubblewrap cannot sandbox here; scripts/test installs the `bubblewrap` package");
    }
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) =
        claudemesh_tests::mesh(bin(), root.path(), &["hoster", "bob", "carol"], &[]);
    let (hoster, bob, carol) = (&nodes[0], &nodes[1], &nodes[2]);
    hoster.ok(&["host", "enable"]);
    wait_until("bob sees the host", || {
        bob.json(&["host", "status"])["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["enabled"] == true)
    });
    let repo = root.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    std::fs::copy(probe(), repo.join("server.py")).unwrap();
    git(&repo, &["add", "server.py"]);
    git(&repo, &["commit", "--quiet", "-m", "v1"]);
    let c1 = git(&repo, &["rev-parse", "HEAD"]);
    let url = format!("file://{}", repo.display());
    let (_, err) = bob.fails(&[
        "deploy",
        "add",
        "probe",
        "--git",
        &url,
        "--",
        "python3",
        "server.py",
    ]);
    assert!(err.contains("--commit"), "a branch is not a version: {err}");
    bob.ok(&[
        "deploy",
        "add",
        "probe",
        "--git",
        &url,
        "--commit",
        &c1,
        "--",
        "python3",
        "server.py",
    ]);
    wait_running(bob, 1);
    assert_eq!(probe_call(bob, "version", "{}").unwrap(), "1");

    let text = std::fs::read_to_string(repo.join("server.py"))
        .unwrap()
        .replace("PROBE_VERSION = \"1\"", "PROBE_VERSION = \"2\"");
    std::fs::write(repo.join("server.py"), text).unwrap();
    git(&repo, &["commit", "--quiet", "-am", "v2"]);
    let c2 = git(&repo, &["rev-parse", "HEAD"]);
    // A commit alone: the same repository at another commit.
    bob.ok(&["deploy", "update", "probe", "--commit", &c2]);
    wait_until("the new commit serves", || {
        probe_call(bob, "version", "{}").is_ok_and(|v| v == "2")
    });

    // carol did not deploy it and is no admin.
    wait_until("carol sees it", || service(carol, "probe").is_some());
    for args in [
        vec!["deploy", "rm", "probe"],
        vec!["deploy", "scope", "probe", "@ops"],
        vec!["deploy", "update", "probe", "--network"],
    ] {
        let (code, err) = carol.fails(&args);
        assert_eq!(code, 8, "{args:?}: {err}");
        assert!(err.contains("only they or an admin"), "{err}");
    }
    // carol's logs request is refused too (only the deployer, an admin or a host).
    let (_, err) = carol.fails(&["deploy", "logs", "probe"]);
    assert!(err.contains("deployer"), "{err}");
    assert_eq!(probe_call(carol, "version", "{}").unwrap(), "2");
    let s = service(bob, "probe").unwrap();
    assert_eq!(s["version"], 2);
}

/// Two hosts for one service: the first serves, the second runs it on standby and takes
/// over when the first goes offline; calls keep working.
#[test]
fn a_standby_host_takes_over_when_the_serving_host_goes_offline() {
    if !sandbox_works() {
        panic!("bubblewrap cannot sandbox here; scripts/test installs the `bubblewrap` package");
    }
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) =
        claudemesh_tests::mesh(bin(), root.path(), &["first", "second", "bob"], &[]);
    nodes[0].ok(&["host", "enable"]);
    nodes[1].ok(&["host", "enable"]);
    wait_until("bob sees both hosts", || {
        nodes[2].json(&["host", "status"])["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["enabled"] == true)
            .count()
            == 2
    });
    let file = root.path().join("sandbox_probe.py");
    std::fs::copy(probe(), &file).unwrap();
    nodes[2].ok(&[
        "deploy",
        "add",
        "probe",
        "--file",
        file.to_str().unwrap(),
        "--host",
        "first",
        "--host",
        "second",
        "--",
        "python3",
        "sandbox_probe.py",
    ]);
    wait_running(&nodes[2], 1);
    let serving = |n: &Node| -> Option<String> {
        service(n, "probe")?["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["serving"] == true)
            .and_then(|h| h["name"].as_str().map(str::to_string))
    };
    assert!(
        serving(&nodes[2]).is_some_and(|s| s.starts_with("first")),
        "{:?}",
        service(&nodes[2], "probe")
    );
    // The standby runs it too, ready.
    wait_until("the standby runs it", || {
        nodes[1].json(&["host", "status"])["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "probe")
    });
    nodes[0].stop();
    wait_until("the standby serves", || {
        serving(&nodes[2]).is_some_and(|s| s.starts_with("second"))
            && probe_call(&nodes[2], "version", "{}").is_ok()
    });
    // Back: the first host serves again (it comes first in the manifest).
    nodes[0].start();
    wait_until("the first host serves again", || {
        serving(&nodes[2]).is_some_and(|s| s.starts_with("first"))
            && probe_call(&nodes[2], "version", "{}").is_ok()
    });
}

/// The MCP tools of hosted services, driven by the official Python MCP client: bob's
/// session deploys `mcp-server-time` from PyPI to alice's daemon and uses it (see
/// `tests/mcp/deploy_mcp.py`).
#[test]
fn an_mcp_session_deploys_a_pypi_server_and_calls_it_as_its_own_tools() {
    if !sandbox_works() {
        panic!("bubblewrap cannot sandbox here; scripts/test installs the `bubblewrap` package");
    }
    let python = std::env::var_os("CLAUDEMESH_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python"),
        PathBuf::from,
    );
    let time = python.with_file_name("mcp-server-time");
    assert!(
        time.exists(),
        "mcp-server-time is not installed next to {}: run `bash scripts/test`",
        python.display()
    );
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = claudemesh_tests::mesh(bin(), root.path(), &["alice", "bob"], &[]);
    nodes[0].ok(&["host", "enable"]);
    wait_until("bob sees the host", || {
        nodes[1].json(&["host", "status"])["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["enabled"] == true)
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp/deploy_mcp.py");
    let out = Command::new(&python)
        .arg(script)
        .env("CM_BIN", bin())
        .env("CM_DIR_B", &nodes[1].dir)
        .env("CM_TIME_SERVER", &time)
        .env("CM_TIME_VERSION", "2026.10.19")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python MCP client run failed:\n{stdout}\n{}\nhost log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        nodes[0].ok(&["deploy", "list"])
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["undeployed"], true, "{v}");
}
