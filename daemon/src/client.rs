//! The client side of the local protocol, used by the CLI, the MCP shim, hooks and tests:
//! connect to a daemon's socket (starting the daemon if needed) and call methods.

use claudemesh_schema::ipc::page::MAX_RESPONSE_LINE;
use claudemesh_schema::ipc::{Incoming, Notification, Request};
use futures_util::{SinkExt as _, StreamExt as _};
use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::traits::tokio::Stream as _;
use interprocess::local_socket::{GenericFilePath, ToFsName as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use crate::paths::Paths;

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error("the claudemesh daemon is not running (no answer on {socket})")]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
    },
    /// Another user's process listens on the socket: nothing is sent to it.
    #[error(
        "{socket} is served by another user (uid {uid}), not by your daemon; nothing was sent. Remove it if you can, or set CLAUDEMESH_SOCKET to a path in a private directory"
    )]
    Foreign {
        /// The socket path.
        socket: PathBuf,
        /// The uid serving it.
        uid: u32,
    },
    /// The daemon could not be started.
    #[error("could not start the claudemesh daemon: {0}")]
    Start(String),
    /// The connection failed mid-call.
    #[error("lost the connection to the daemon: {0}")]
    Io(String),
    /// The daemon answered something unexpected.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Rpc {
        /// Stable code (`claudemesh_schema::ipc::codes`).
        code: i32,
        /// What happened and what to do.
        message: String,
    },
}

/// Refuse a socket served by another user: whatever we would send (an invite link, a
/// message body) is for our own daemon only.
#[cfg(unix)]
fn same_user_server(stream: &Stream, socket: &Path) -> Result<(), ClientError> {
    use interprocess::local_socket::traits::StreamCommon as _;
    let me = rustix::process::geteuid().as_raw();
    match stream.peer_creds().ok().and_then(|c| c.euid()) {
        Some(uid) if uid == me => Ok(()),
        Some(uid) => Err(ClientError::Foreign {
            socket: socket.to_path_buf(),
            uid,
        }),
        // Credentials unavailable on this platform: the socket's directory is private.
        None => Ok(()),
    }
}

#[cfg(not(unix))]
fn same_user_server(_: &Stream, _: &Path) -> Result<(), ClientError> {
    Ok(())
}

/// A connection to a daemon.
#[derive(Debug)]
pub struct Client {
    reader: FramedRead<ReadHalf<Stream>, LinesCodec>,
    writer: FramedWrite<WriteHalf<Stream>, LinesCodec>,
    next_id: u64,
    notes: VecDeque<Notification>,
}

impl Client {
    /// Connect to the daemon listening on `socket`.
    pub async fn connect(socket: &Path) -> Result<Self, ClientError> {
        let not_running = || ClientError::NotRunning {
            socket: socket.to_path_buf(),
        };
        let name = socket
            .to_fs_name::<GenericFilePath>()
            .map_err(|_| not_running())?;
        let stream = Stream::connect(name).await.map_err(|_| not_running())?;
        same_user_server(&stream, socket)?;
        let (r, w) = tokio::io::split(stream);
        Ok(Self {
            // Answers are paged (`ipc::page`), but one item can be a whole op; the daemon's
            // request limit (`MAX_LINE`) is for what clients send, not for what it answers.
            reader: FramedRead::new(r, LinesCodec::new_with_max_length(MAX_RESPONSE_LINE)),
            writer: FramedWrite::new(w, LinesCodec::new()),
            next_id: 1,
            notes: VecDeque::new(),
        })
    }

    /// Call `method` and decode its result.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        params: impl Serialize,
    ) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = serde_json::to_string(&Request::new(id, method, params))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.writer
            .send(line)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        loop {
            let line = match self.reader.next().await {
                None => return Err(ClientError::Io("the daemon closed the connection".into())),
                Some(Err(e)) => return Err(ClientError::Io(e.to_string())),
                Some(Ok(l)) => l,
            };
            match serde_json::from_str::<Incoming>(&line) {
                Ok(Incoming::Response(r)) if r.id == id => {
                    if let Some(e) = r.error {
                        return Err(ClientError::Rpc {
                            code: e.code,
                            message: e.message,
                        });
                    }
                    let v = r.result.unwrap_or(serde_json::Value::Null);
                    return serde_json::from_value(v)
                        .map_err(|e| ClientError::Protocol(e.to_string()));
                }
                Ok(Incoming::Response(_)) => continue,
                Ok(Incoming::Notification(n)) => self.notes.push_back(n),
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    /// Wait for the next pushed notification.
    pub async fn notification(&mut self) -> Result<Notification, ClientError> {
        if let Some(n) = self.notes.pop_front() {
            return Ok(n);
        }
        loop {
            let line = match self.reader.next().await {
                None => return Err(ClientError::Io("the daemon closed the connection".into())),
                Some(Err(e)) => return Err(ClientError::Io(e.to_string())),
                Some(Ok(l)) => l,
            };
            if let Ok(Incoming::Notification(n)) = serde_json::from_str::<Incoming>(&line) {
                return Ok(n);
            }
        }
    }
}

/// `CLAUDEMESH_NO_AUTOSTART=1`: front ends never start a daemon themselves (tests, and
/// users who run it strictly as a service).
pub fn autostart_disabled() -> bool {
    std::env::var_os("CLAUDEMESH_NO_AUTOSTART").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Connect to the daemon of `paths`, starting `exe daemon run` in the background if none
/// answers (unless autostart is disabled). Waits for the new daemon to say it is ready
/// (not a fixed sleep).
pub async fn connect_or_start(paths: &Paths, exe: &Path) -> Result<Client, ClientError> {
    match Client::connect(&paths.socket).await {
        Ok(c) => Ok(c),
        Err(ClientError::NotRunning { .. }) if !autostart_disabled() => {
            if !start_service(paths).await {
                start_daemon(paths, exe).await?;
            }
            Client::connect(&paths.socket).await
        }
        Err(e) => Err(e),
    }
}

/// When `claudemesh service install` set up a user service for this config directory, ask
/// the service manager to start it and wait for its socket; false when there is no such
/// service (or the manager cannot start it), so the caller starts a daemon itself.
async fn start_service(paths: &Paths) -> bool {
    use crate::paths::{LAUNCHD_LABEL, SYSTEMD_UNIT, ServiceKind, service_file};
    if std::env::var("CLAUDEMESH_SERVICE_MANAGER").is_ok_and(|v| v == "none") {
        return false;
    }
    let kind = ServiceKind::native();
    let Some(file) = service_file(kind) else {
        return false;
    };
    // Only a service for this very config directory.
    let dir = std::path::absolute(&paths.dir).unwrap_or_else(|_| paths.dir.clone());
    let ours = std::fs::read_to_string(&file)
        .is_ok_and(|s| s.contains(&crate::paths::service_marker(kind, &dir)));
    if !ours {
        return false;
    }
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let status = match kind {
        ServiceKind::Systemd => {
            tokio::process::Command::new("systemctl")
                .args(["--user", "start", SYSTEMD_UNIT])
                .status()
                .await
        }
        ServiceKind::Launchd => {
            tokio::process::Command::new("launchctl")
                .args(["kickstart", &format!("gui/{uid}/{LAUNCHD_LABEL}")])
                .status()
                .await
        }
    };
    if !status.is_ok_and(|s| s.success()) {
        return false;
    }
    // The service manager does not say when the daemon listens: wait for the socket, and
    // give up early when systemd reports the unit failed (a bad binary or config).
    for i in 0..150 {
        if Client::connect(&paths.socket).await.is_ok() {
            return true;
        }
        if kind == ServiceKind::Systemd && i % 5 == 4 {
            let failed = tokio::process::Command::new("systemctl")
                .args(["--user", "is-failed", "--quiet", SYSTEMD_UNIT])
                .status()
                .await
                .is_ok_and(|s| s.success());
            if failed {
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Start `exe daemon run` detached (own process group, no terminal) and wait until it
/// reports `ready` on its stdout, or its error.
pub async fn start_daemon(paths: &Paths, exe: &Path) -> Result<(), ClientError> {
    use tokio::io::AsyncBufReadExt as _;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["daemon", "run", "--notify-ready"])
        .env(crate::paths::ENV_CONFIG_DIR, &paths.dir)
        .env(crate::paths::ENV_SOCKET, &paths.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(false);
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Start(format!("cannot run {}: {e}", exe.display())))?;
    let Some(out) = child.stdout.take() else {
        return Err(ClientError::Start("no stdout from the daemon".into()));
    };
    let mut lines = tokio::io::BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .map_err(|_| {
            ClientError::Start(
                "the daemon did not become ready within 15 s; see the logs in the config directory"
                    .into(),
            )
        })?
        .map_err(|e| ClientError::Start(e.to_string()))?;
    match line {
        Some(l) if l.starts_with("ready") => Ok(()),
        Some(l) if l.contains("already running") => Ok(()),
        Some(l) => Err(ClientError::Start(
            l.trim_start_matches("error: ").to_string(),
        )),
        None => Err(ClientError::Start(format!(
            "the daemon exited during startup; run `claudemesh daemon run` to see why (logs: {})",
            paths.logs().display()
        ))),
    }
}

/// Start `exe daemon run` detached without waiting for it (used after answering a read
/// from the local store, so the answer stays fast and the next command finds a daemon).
pub fn spawn_detached(paths: &Paths, exe: &Path) -> std::io::Result<()> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["daemon", "run", "--notify-ready"])
        .env(crate::paths::ENV_CONFIG_DIR, &paths.dir)
        .env(crate::paths::ENV_SOCKET, &paths.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    cmd.spawn().map(|_| ())
}
