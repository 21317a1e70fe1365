//! Test kit for claudemesh end-to-end tests: real relays and real daemons, as processes of
//! the real `claudemesh` binary, in temporary directories on loopback.
//!
//! Every process is started with a readiness handshake (it prints `ready …` on stdout
//! once it listens), so tests never sleep to synchronise; waiting for network events uses
//! the daemon's own `claudemesh wait …` and `inbox --wait`. Processes are killed when
//! their guard drops. [`power`] gives their data a disk that can lose power.
//!
//! The binary path comes from the caller (`env!("CARGO_BIN_EXE_claudemesh")` in the `ctl`
//! package's integration tests), so tests always run the binary of the current build.

pub mod claude;
pub mod model;
pub mod nats;
pub mod power;
pub mod proxy;
pub mod raw;

use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Send a signal to a process (SIGKILL via `Child::kill`, others via `kill(1)`).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Spawn `cmd` with stdout piped and wait for its `ready …` line.
fn spawn_ready(mut cmd: Command, what: &str) -> (Child, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read readiness line");
    assert!(line.starts_with("ready"), "{what} did not start: {line:?}");
    (child, line.trim().to_string())
}

/// A `claudemesh relay` process.
#[derive(Debug)]
pub struct RelayProc {
    bin: PathBuf,
    child: Option<Child>,
    /// Where it listens (same port for UDP and TCP).
    pub addr: SocketAddr,
    /// Its certificate fingerprint (base64url).
    pub fingerprint: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    extra: Vec<String>,
    /// Where its log (stderr) goes, when not to the test's own stderr.
    log: Option<PathBuf>,
}

impl RelayProc {
    /// [`RelayProc::start`], with its log appended to `log` (for tests that read it).
    pub fn start_logged(bin: &Path, data_dir: &Path, extra: &[&str], log: &Path) -> Self {
        let mut r = Self {
            bin: bin.to_path_buf(),
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            fingerprint: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: Some(log.to_path_buf()),
        };
        r.restart();
        r
    }

    /// Start a relay on a free loopback port with its data in `data_dir`: `bin` is the
    /// `claudemesh` binary (run as `claudemesh relay`) or the `claudemesh-relay` binary.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let mut r = Self {
            bin: bin.to_path_buf(),
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            fingerprint: String::new(),
            data_dir: data_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: None,
        };
        r.restart();
        r
    }

    /// Start it again (same address and data) after a stop or kill.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "relay is still running");
        let standalone = self
            .bin
            .file_stem()
            .is_some_and(|n| n == "claudemesh-relay");
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            if standalone { "run" } else { "relay" },
            "--notify-ready",
            "--listen",
            &self.addr.to_string(),
        ])
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(&self.extra)
        .env("CLAUDEMESH_LOG", "warn");
        match &self.log {
            Some(log) => cmd.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("relay log file"),
            ),
            None => cmd.stderr(Stdio::inherit()),
        };
        let (child, line) = spawn_ready(cmd, "relay");
        let mut parts = line.split_whitespace().skip(1);
        self.addr = parts.next().expect("addr").parse().expect("relay addr");
        self.fingerprint = parts.next().expect("fingerprint").to_string();
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-TERM");
            let _ = c.wait();
        }
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The relay's database file.
    pub fn db(&self) -> PathBuf {
        self.data_dir.join("relay.db")
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One daemon with its own config directory, driven through the real CLI.
#[derive(Debug)]
pub struct Node {
    bin: PathBuf,
    /// Display name (also `CLAUDEMESH_DISPLAY_NAME`).
    pub name: String,
    /// Config directory.
    pub dir: PathBuf,
    /// The daemon's log filter (`CLAUDEMESH_LOG`), `warn` unless a test reads more.
    pub log_filter: String,
    child: Option<Child>,
}

impl Node {
    /// A node in `root/<name>` with fast reconnects; not started yet.
    pub fn new(bin: &Path, root: &Path, name: &str) -> Self {
        Self::with_config(bin, root, name, "")
    }

    /// A node whose `config.toml` also holds `extra` (TOML sections after `[link]`).
    pub fn with_config(bin: &Path, root: &Path, name: &str, extra: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "[link]\nquic_timeout_ms = 1500\nws_timeout_ms = 3000\nmax_backoff_ms = 400\n{extra}"
            ),
        )
        .expect("node config");
        Self {
            bin: bin.to_path_buf(),
            name: name.to_string(),
            dir,
            log_filter: "warn".into(),
            child: None,
        }
    }

    /// Start the daemon (`claudemesh daemon run`) and wait until it listens.
    pub fn start(&mut self) -> &mut Self {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["daemon", "run", "--notify-ready"]);
        self.env(&mut cmd);
        cmd.stderr(Stdio::inherit());
        let (child, _) = spawn_ready(cmd, &format!("daemon {}", self.name));
        self.child = Some(child);
        self
    }

    /// The daemon's process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL the daemon.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the daemon gracefully (`claudemesh daemon stop`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let out = self.run(&["daemon", "stop"]);
            assert!(
                out.status.success(),
                "daemon stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = c.wait();
        }
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("CLAUDEMESH_CONFIG_DIR", &self.dir)
            .env("CLAUDEMESH_DISPLAY_NAME", &self.name)
            .env("CLAUDEMESH_NO_AUTOSTART", "1")
            .env("CLAUDEMESH_LOG", &self.log_filter);
    }

    /// Run the CLI with this node's environment.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// Run the CLI with `stdin` as its input, this node's environment plus `extra`.
    pub fn run_stdin(&self, args: &[&str], extra: &[(&str, &str)], stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.env(&mut cmd);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run claudemesh");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin);
        }
        child.wait_with_output().expect("run claudemesh")
    }

    /// Run the CLI with this node's environment plus `extra` variables.
    pub fn run_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run claudemesh")
    }

    /// The CLI as this node runs it, to be given its own stdio.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        cmd
    }

    /// Start the CLI in the background (for commands that block, like `join`).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.env(&mut cmd);
        cmd.spawn().expect("spawn claudemesh")
    }

    /// Create the mesh `name` on `relay` (its certificate pinned), with this node as owner.
    pub fn create_on(&self, relay: &RelayProc, name: &str) -> String {
        self.ok(&[
            "create",
            name,
            "--relay",
            &relay.addr.to_string(),
            "--fingerprint",
            &relay.fingerprint,
        ])
    }

    /// Run the CLI and return stdout; panics (with stderr) if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`claudemesh {}` on {} failed ({:?}): {}{}",
            args.join(" "),
            self.name,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run the CLI with `--json` and parse the output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        let v: Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"));
        assert_eq!(
            v["schema_version"], 1,
            "every --json output carries schema_version"
        );
        v
    }

    /// Run the CLI expecting failure; returns the exit code and stderr.
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`claudemesh {}` unexpectedly succeeded",
            args.join(" ")
        );
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Wait (through the daemon, event-driven) for a condition; panics on timeout.
    pub fn wait(&self, condition: &str, peer: Option<&str>) {
        let mut args = vec!["wait", condition];
        if let Some(p) = peer {
            args.push(p);
        }
        args.extend(["--timeout", "20"]);
        self.ok(&args);
    }

    /// Everything the daemon logged to its `logs/` directory so far.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        all
    }

    /// Wait until the daemon has logged `needle` (polling its log file, for conditions
    /// with no other outside sign); panics after 20 s.
    pub fn wait_logged(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never logged {needle:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Block until a message arrives and return all unread messages.
    pub fn inbox_wait(&self) -> Vec<Value> {
        let v = self.json(&["inbox", "--wait", "20"]);
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Unread messages right now, without marking them read.
    pub fn inbox_peek(&self) -> Vec<Value> {
        let v = self.json(&["inbox", "--peek"]);
        v["messages"].as_array().cloned().unwrap_or_default()
    }

    /// Names of peers as `peers --json` lists them, with their online flag.
    pub fn peers(&self) -> (bool, Vec<(String, bool)>) {
        let v = self.json(&["peers"]);
        let m = &v["meshes"][0];
        let peers = m["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["online"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        (m["cached"].as_bool().unwrap_or(false), peers)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copy the relay certificate and key in data directory `from` into `to` (created): a
/// further relay node presenting the same certificate (a relay of several nodes).
pub fn share_certificate(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("node data dir");
    for f in ["relay-cert.pem", "relay-key.pem"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy the relay certificate");
    }
}

/// A relay plus nodes that all joined one mesh (the first created it and invited the
/// others), each seeing every other online.
pub fn mesh(
    bin: &Path,
    root: &Path,
    names: &[&str],
    relay_args: &[&str],
) -> (RelayProc, Vec<Node>) {
    mesh_with(bin, root, names, relay_args, "")
}

/// [`mesh`], with `config` added to every node's `config.toml`.
pub fn mesh_with(
    bin: &Path,
    root: &Path,
    names: &[&str],
    relay_args: &[&str],
    config: &str,
) -> (RelayProc, Vec<Node>) {
    let relay = RelayProc::start(bin, &root.join("relay"), relay_args);
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::with_config(bin, root, n, config))
        .collect();
    form_mesh(&relay, &mut nodes);
    (relay, nodes)
}

/// Start `nodes` and make them one mesh `test` on `relay`: the first creates it and
/// invites the others; returns once each sees every other online.
pub fn form_mesh(relay: &RelayProc, nodes: &mut [Node]) {
    form_mesh_at(&relay.addr.to_string(), &relay.fingerprint, nodes);
}

/// [`form_mesh`] on the relay at `addr` (one address or a comma-separated list of nodes)
/// presenting the certificate `fingerprint`.
pub fn form_mesh_at(addr: &str, fingerprint: &str, nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        addr,
        "--fingerprint",
        fingerprint,
    ]);
    for i in 1..nodes.len() {
        let link = nodes[0].ok(&["invite"]);
        nodes[i].ok(&["join", &link, "--wait", "20"]);
    }
    for a in nodes.iter() {
        for b in nodes.iter() {
            if a.name != b.name {
                a.wait("peer-online", Some(&b.name));
            }
        }
    }
}

/// The relay store a scenario runs on (see [`per_store!`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// One relay process on its SQLite database: the default.
    Sqlite,
    /// A relay of three nodes (one certificate) over a 3-server NATS JetStream cluster; the
    /// mesh's address lists all three and member `i` prefers node `i % 3`, so members of
    /// one scenario sit on different nodes.
    Nats,
}

/// The relay a scenario's mesh lives on: one process, or three nodes and their NATS
/// cluster. Everything is killed when it drops.
#[derive(Debug)]
pub struct Relay {
    /// Its processes: one, or one per node.
    pub nodes: Vec<RelayProc>,
    /// The NATS cluster under the nodes ([`Store::Nats`]).
    pub nats: Option<nats::NatsCluster>,
    root: PathBuf,
}

impl Relay {
    /// Start a relay on `store` with its data under `root/relay*` (and `root/nats`), each
    /// process with `extra` arguments.
    pub fn start(bin: &Path, root: &Path, store: Store, extra: &[&str]) -> Self {
        match store {
            Store::Sqlite => Self {
                nodes: vec![RelayProc::start(bin, &root.join("relay"), extra)],
                nats: None,
                root: root.to_path_buf(),
            },
            Store::Nats => {
                let cluster = nats::NatsCluster::start(&root.join("nats"), 3);
                let urls = cluster.urls().join(",");
                let mut args = vec!["--store", "nats", "--nats-url", urls.as_str()];
                args.extend_from_slice(extra);
                let mut nodes = vec![RelayProc::start(bin, &root.join("relay1"), &args)];
                for i in 2..=3 {
                    let dir = root.join(format!("relay{i}"));
                    share_certificate(&nodes[0].data_dir, &dir);
                    nodes.push(RelayProc::start(bin, &dir, &args));
                }
                Self {
                    nodes,
                    nats: Some(cluster),
                    root: root.to_path_buf(),
                }
            }
        }
    }

    /// The mesh's relay address: its nodes' addresses, comma-separated.
    pub fn addr(&self) -> String {
        let list: Vec<String> = self.nodes.iter().map(|r| r.addr.to_string()).collect();
        list.join(",")
    }

    /// The certificate fingerprint every node presents.
    pub fn fingerprint(&self) -> &str {
        &self.nodes[0].fingerprint
    }

    /// The `config.toml` lines (under `[link]`) that make member `i` prefer its node.
    pub fn prefer(&self, i: usize) -> String {
        if self.nodes.len() < 2 {
            return String::new();
        }
        format!(
            "prefer_node = \"{}\"\n",
            self.nodes[i % self.nodes.len()].addr
        )
    }

    /// Every byte the relay keeps at rest: its SQLite database (with WAL), or every file
    /// under the NATS servers' directories (JetStream's stores and the servers' logs).
    pub fn stored_bytes(&self) -> Vec<u8> {
        if self.nats.is_none() {
            return db_bytes(&self.nodes[0].db());
        }
        let mut out = Vec::new();
        let mut stack = vec![self.root.join("nats")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.extend(b);
                }
            }
        }
        assert!(
            !out.is_empty(),
            "the NATS servers store nothing under {}",
            self.root.display()
        );
        out
    }
}

/// [`mesh`] on `store`: a relay plus nodes that all joined one mesh, member `i` linked to
/// node `i % 3` on a cluster.
pub fn mesh_on(
    bin: &Path,
    root: &Path,
    store: Store,
    names: &[&str],
    relay_args: &[&str],
) -> (Relay, Vec<Node>) {
    mesh_on_with(bin, root, store, names, relay_args, "")
}

/// [`mesh_on`], with `config` added to every node's `config.toml`.
pub fn mesh_on_with(
    bin: &Path,
    root: &Path,
    store: Store,
    names: &[&str],
    relay_args: &[&str],
    config: &str,
) -> (Relay, Vec<Node>) {
    let relay = Relay::start(bin, root, store, relay_args);
    let mut nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Node::with_config(bin, root, n, &format!("{}{config}", relay.prefer(i))))
        .collect();
    form_mesh_at(&relay.addr(), relay.fingerprint(), &mut nodes);
    if relay.nodes.len() > 1 {
        for (i, n) in nodes.iter().enumerate() {
            n.ok(&["wait", "link-up", "--timeout", "20"]);
            let st = n.json(&["status"]);
            let at = relay.nodes[i % relay.nodes.len()].addr.to_string();
            assert_eq!(
                st["meshes"][0]["node"].as_str(),
                Some(at.as_str()),
                "{} is linked to its own relay node: {st}",
                n.name
            );
        }
    }
    (relay, nodes)
}

/// Declare an end-to-end scenario once and run it on every relay store:
/// `per_store! { fn name(store) { … } }` defines the tests `name::sqlite` and `name::nats`,
/// each calling the body with its [`Store`] (usually passed on to [`mesh_on`]).
#[macro_export]
macro_rules! per_store {
    ($(#[$attr:meta])* fn $name:ident($store:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn scenario($store: $crate::Store) $body

            #[test]
            fn sqlite() {
                scenario($crate::Store::Sqlite)
            }

            #[test]
            fn nats() {
                scenario($crate::Store::Nats)
            }
        }
    };
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Scrape a relay's `/metrics` on loopback `port` (its `--metrics-listen`): the
/// `name{labels}` of each sample and its value.
pub fn metrics(port: u16) -> std::collections::HashMap<String, f64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .expect("ask for /metrics");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read /metrics");
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase().contains("text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("a sample line");
            (k.to_string(), v.parse::<f64>().expect("a sample value"))
        })
        .collect()
}

/// Does `haystack` contain `needle` anywhere?
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// All bytes of a SQLite database, including its WAL and shared-memory files.
pub fn db_bytes(db: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(p)) {
            out.extend(b);
        }
    }
    out
}

/// A small filesystem of its own (a tmpfs mounted by the test, which runs as root), to
/// fill up: a full disk at one end without filling the machine's. Unmounted on drop.
#[derive(Debug)]
pub struct SmallDisk {
    /// Where it is mounted.
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mount `size` (as `mount -o size=` takes it, e.g. `"16m"`) at `path` (created).
    pub fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs for a full-disk test (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_path_buf(),
        }
    }

    /// Fill it up to the last byte: writes fail with ENOSPC until [`SmallDisk::free`].
    pub fn fill(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last partial block, byte by byte.
        while f.write_all(&[0]).is_ok() {}
        let _ = f.flush();
    }

    /// Free what [`SmallDisk::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// A network change a daemon can see: the source address this machine uses to reach
/// `to` (a loopback address, so nothing leaves the machine) moves to another loopback
/// address, as it does when a Wi-Fi or VPN switch changes the route. Needs root; undone on
/// drop.
#[derive(Debug)]
pub struct RouteChange {
    to: std::net::Ipv4Addr,
    src: std::net::Ipv4Addr,
}

impl RouteChange {
    /// Route `to` (a 127/8 address) from `src` (another) from now on.
    pub fn apply(to: std::net::Ipv4Addr, src: std::net::Ipv4Addr) -> Self {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "cannot change a route for a network-change test (needs root and iproute2): ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["addr", "add", &format!("{src}/32"), "dev", "lo"]);
        let change = Self { to, src };
        ip(&[
            "route",
            "add",
            "local",
            &format!("{to}/32"),
            "dev",
            "lo",
            "src",
            &src.to_string(),
            "table",
            "local",
        ]);
        change
    }
}

impl Drop for RouteChange {
    fn drop(&mut self) {
        let to = format!("{}/32", self.to);
        let src = format!("{}/32", self.src);
        let _ = Command::new("ip")
            .args(["route", "del", "local", &to, "dev", "lo", "table", "local"])
            .status();
        let _ = Command::new("ip")
            .args(["addr", "del", &src, "dev", "lo"])
            .status();
    }
}
