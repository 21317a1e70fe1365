//! One MCP server this daemon hosts, as the rest of the daemon sees it: what it was
//! declared to be, how it is doing (state, restarts, tools offered, its stderr ring), and
//! the JSON-RPC connection to it over its stdin and stdout. Starting, supervising and
//! publishing it is `mcp_host`'s; running members' calls on it is `tools`'.

use claudemesh_schema::ipc::tools::HostedServer;
use claudemesh_schema::tools::{Scope, ToolSpec};
use claudemesh_schema::{MeshId, SessionId};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::mesh::lock;

/// Lines of a server's stderr (and of what the daemon says about it) kept.
const LOG_LINES: usize = 500;
/// Longest line kept from a server's stderr.
const LOG_LINE_BYTES: usize = 2000;

/// What a hosted server is declared to be (a `mcp_hosted` row).
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) command: Vec<String>,
    pub(crate) cwd: Option<PathBuf>,
    /// `KEY=VALUE`.
    pub(crate) env: Vec<String>,
    pub(crate) description: String,
    pub(crate) allow: Vec<String>,
    pub(crate) scope: Scope,
    pub(crate) session: Option<SessionId>,
    /// A hosted service (`deploy`): run sandboxed, with its secrets, served by the
    /// manifest's scope alone (the host opted in with `host enable`).
    pub(crate) deployed: Option<Deployed>,
}

/// What a hosted service adds to a hosted server.
#[derive(Clone)]
pub(crate) struct Deployed {
    /// The manifest's version.
    pub(crate) version: u64,
    pub(crate) sandbox: crate::sandbox::Sandbox,
    /// The whole environment (the wrapper's is cleared), plain values included.
    pub(crate) env: Vec<(String, String)>,
    /// `$vault:` values, opened at spawn: (variable, vault entry, value).
    pub(crate) secrets: Vec<(String, String, zeroize::Zeroizing<String>)>,
}

impl std::fmt::Debug for Deployed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("Deployed")
            .field("version", &self.version)
            .field("sandbox", &self.sandbox)
            .field(
                "secrets",
                &self
                    .secrets
                    .iter()
                    .map(|(k, n, _)| (k, n))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// How it is doing now.
#[derive(Debug, Default)]
pub(crate) struct Run {
    pub(crate) state: &'static str,
    pub(crate) pid: Option<u32>,
    pub(crate) restarts: u32,
    /// Tools offered (after the allowlist and the limits).
    pub(crate) tools: Vec<ToolSpec>,
    pub(crate) last_error: String,
    pub(crate) published: bool,
}

/// One server this daemon hosts.
#[derive(Debug)]
pub(crate) struct Hosted {
    pub(crate) mesh: MeshId,
    pub(crate) name: String,
    pub(crate) spec: Spec,
    pub(crate) run: std::sync::Mutex<Run>,
    pub(crate) logs: std::sync::Mutex<VecDeque<String>>,
    pub(crate) client: std::sync::Mutex<Option<Arc<Stdio>>>,
    pub(crate) stop: CancellationToken,
    /// Calls running on it now (at most [`tools::MAX_RUNNING`]).
    pub(crate) slots: tokio::sync::Semaphore,
}

impl Hosted {
    pub(crate) fn log(&self, line: impl Into<String>) {
        let mut l = lock(&self.logs);
        if l.len() >= LOG_LINES {
            l.pop_front();
        }
        let mut line = line.into();
        // A service that prints a secret it was given does not put it in its log ring
        // (which its deployer reads from afar).
        if let Some(dep) = &self.spec.deployed {
            for (_, name, value) in &dep.secrets {
                if value.len() >= 4 && line.contains(value.as_str()) {
                    line = line.replace(value.as_str(), &format!("[$vault:{name}]"));
                }
            }
        }
        if line.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        l.push_back(line);
    }

    pub(crate) fn set(&self, f: impl FnOnce(&mut Run)) {
        f(&mut lock(&self.run));
    }

    /// The tools offered now.
    pub(crate) fn tools(&self) -> Vec<ToolSpec> {
        lock(&self.run).tools.clone()
    }

    /// The running server's connection, if it is up.
    pub(crate) fn client(&self) -> Option<Arc<Stdio>> {
        lock(&self.client).clone()
    }

    pub(crate) fn info(&self, mesh_name: String) -> HostedServer {
        let r = lock(&self.run);
        HostedServer {
            mesh: self.mesh,
            mesh_name,
            name: self.name.clone(),
            command: self.spec.command.clone(),
            description: self.spec.description.clone(),
            allow: self.spec.allow.clone(),
            scope: self.spec.scope.label(),
            persistent: self.spec.session.is_none(),
            state: r.state.to_string(),
            pid: r.pid,
            restarts: r.restarts,
            tools: r.tools.len(),
            last_error: r.last_error.clone(),
            published: r.published,
        }
    }
}

/// How a request to a server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// No answer within the time given.
    Timeout,
    /// The server's stdio closed (it exited).
    Closed,
    /// A JSON-RPC error answer (its message: the server's text).
    Rpc(String),
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, CallError>>>;

/// A JSON-RPC connection to a server over its stdin and stdout.
#[derive(Debug)]
pub(crate) struct Stdio {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    pending: std::sync::Mutex<Option<Pending>>,
    next: AtomicU64,
    /// The server said `notifications/tools/list_changed`.
    pub(crate) list_changed: Notify,
}

impl Stdio {
    /// A connection over a server's stdin (its stdout goes to [`Stdio::on_line`]).
    pub(crate) fn new(stdin: tokio::process::ChildStdin) -> Self {
        Self {
            stdin: tokio::sync::Mutex::new(stdin),
            pending: std::sync::Mutex::new(Some(HashMap::new())),
            next: AtomicU64::new(1),
            list_changed: Notify::new(),
        }
    }

    async fn write(&self, v: &Value) -> Result<(), CallError> {
        let mut line = serde_json::to_vec(v).map_err(|e| CallError::Rpc(e.to_string()))?;
        line.push(b'\n');
        let mut w = self.stdin.lock().await;
        w.write_all(&line).await.map_err(|_| CallError::Closed)?;
        w.flush().await.map_err(|_| CallError::Closed)
    }

    /// Send a request and wait up to `timeout` for its answer.
    pub(crate) async fn request(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(p) => p.insert(id, tx),
            None => return Err(CallError::Closed),
        };
        // Forgotten however this ends (a caller that stops waiting drops it here).
        struct Forget<'a>(&'a Stdio, u64);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                if let Some(p) = lock(&self.0.pending).as_mut() {
                    p.remove(&self.1);
                }
            }
        }
        let _forget = Forget(self, id);
        self.write(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => Err(CallError::Timeout),
        }
    }

    pub(crate) async fn notify(&self, method: &str) -> Result<(), CallError> {
        self.write(&json!({"jsonrpc": "2.0", "method": method}))
            .await
    }

    /// One line from the server: an answer to ours, a notification, or a request of its
    /// own (answered: `ping` with nothing, anything else as not supported).
    pub(crate) async fn on_line(&self, line: &str) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let method = v.get("method").and_then(Value::as_str);
        match (v.get("id"), method) {
            (Some(id), None) => {
                let Some(id) = id.as_u64() else { return };
                let r = match (v.get("result"), v.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (None, Some(e)) => Err(CallError::Rpc(
                        e.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("error")
                            .to_string(),
                    )),
                    (None, None) => Err(CallError::Rpc("an answer with no result".into())),
                };
                let tx = lock(&self.pending).as_mut().and_then(|p| p.remove(&id));
                if let Some(tx) = tx {
                    let _ = tx.send(r);
                }
            }
            (Some(id), Some(m)) => {
                let answer = if m == "ping" {
                    json!({"jsonrpc": "2.0", "id": id, "result": {}})
                } else {
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "not supported by claudemesh"}})
                };
                let _ = self.write(&answer).await;
            }
            (None, Some("notifications/tools/list_changed")) => self.list_changed.notify_one(),
            _ => {}
        }
    }

    pub(crate) fn close(&self) {
        // Dropping the senders fails every waiting request with `Closed`.
        lock(&self.pending).take();
    }
}

/// How a service is doing on this daemon before `mcp_host` runs it (fetching its source)
/// or when it could not be started.
#[derive(Debug, Clone)]
pub(crate) struct Preparing {
    pub(crate) version: u64,
    pub(crate) state: String,
    pub(crate) lines: Vec<String>,
}
