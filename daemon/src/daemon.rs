//! The daemon process: single-instance lock, store, embedded relay, one link per mesh, the
//! local socket server, and orderly shutdown.

use claudemesh_relay::{Relay, RelayConfig, RelayHandle};
use claudemesh_schema::MeshId;
use claudemesh_schema::roster::Roster;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DaemonConfig;
use crate::error::Error;
use crate::keys::MeshKeys;
use crate::mesh::{LinkHandle, LinkStatus, MeshCtx, RosterState};
use crate::paths::{Paths, ensure_private_dir};
use crate::store::{self, Grant, MeshRow, Store};

/// Starting or running the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon holds the lock for this config directory.
    #[error(
        "a claudemesh daemon is already running for {dir} (pid {pid}); use it, or stop it with `claudemesh daemon stop`"
    )]
    AlreadyRunning {
        /// The config directory.
        dir: PathBuf,
        /// Its pid, as written in the lock file.
        pid: String,
    },
    /// A file or directory could not be used.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The embedded relay failed to start.
    #[error("embedded relay: {0}")]
    Relay(#[from] claudemesh_relay::RelayError),
    /// The local socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The running daemon's shared state.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) paths: Paths,
    pub(crate) cfg: DaemonConfig,
    pub(crate) store: Store,
    meshes: RwLock<HashMap<MeshId, Arc<MeshCtx>>>,
    pub(crate) started: Instant,
    pub(crate) shutdown: CancellationToken,
    pub(crate) relay: Option<(String, [u8; 32])>,
    /// Bumped whenever messages are added to the inbox (wakes `inbox --wait`).
    pub(crate) inbox_gen: watch::Sender<u64>,
    /// Shared keys changed by applied ops (`state_change` notifications).
    pub(crate) state_events:
        tokio::sync::broadcast::Sender<claudemesh_schema::ipc::shared::StateChange>,
    /// Bumped on any link-state or presence change (wakes `wait_for`).
    pub(crate) changes: watch::Sender<u64>,
    pub(crate) tasks: TaskTracker,
    pub(crate) hostname: String,
    /// Shift of the reminder scheduler's clock, ms (`claudemesh debug clock`).
    pub(crate) clock_offset: std::sync::atomic::AtomicI64,
    /// Serializes mesh creation and joins (name checks).
    pub(crate) membership: tokio::sync::Mutex<()>,
    _lock: Mutex<std::fs::File>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Daemon {
    pub(crate) fn meshes(&self) -> Vec<Arc<MeshCtx>> {
        let mut v: Vec<_> = self
            .meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|m| crate::mesh::lock(&m.row).joined_at);
        v
    }

    pub(crate) fn mesh(&self, id: &MeshId) -> Option<Arc<MeshCtx>> {
        self.meshes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Find a mesh by name, id or id prefix; with `None`, the only mesh.
    pub(crate) fn select(&self, sel: Option<&str>) -> Result<Arc<MeshCtx>, Error> {
        let all = self.meshes();
        let Some(sel) = sel.map(str::trim).filter(|s| !s.is_empty()) else {
            return match all.len() {
                0 => Err(Error::not_found(
                    "you have not joined any mesh yet; run `claudemesh up`, `claudemesh create <name>` or `claudemesh join <invite>`",
                )),
                1 => Ok(all[0].clone()),
                _ => Err(Error::ambiguous(format!(
                    "you are in several meshes ({}); pass --mesh <name>",
                    all.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
                ))),
            };
        };
        if let Some(m) = all.iter().find(|m| m.name() == sel) {
            return Ok(m.clone());
        }
        let lower = sel.to_lowercase().replace('-', "");
        let by_id: Vec<_> = all
            .iter()
            .filter(|m| lower.len() >= 4 && m.id.0.simple().to_string().starts_with(&lower))
            .cloned()
            .collect();
        match by_id.len() {
            1 => Ok(by_id[0].clone()),
            0 => Err(Error::not_found(format!(
                "no joined mesh is called {sel:?}; `claudemesh list` shows your meshes"
            ))),
            _ => Err(Error::ambiguous(format!(
                "{sel:?} matches several meshes; use more of the id"
            ))),
        }
    }

    /// The mesh `sel` names, or every joined mesh when `None` (an error when none is).
    pub(crate) fn select_many(&self, sel: Option<&str>) -> Result<Vec<Arc<MeshCtx>>, Error> {
        match sel {
            Some(s) => Ok(vec![self.select(Some(s))?]),
            None => {
                let all = self.meshes();
                if all.is_empty() {
                    // Same message as selecting with nothing joined.
                    return Err(self
                        .select(None)
                        .err()
                        .unwrap_or_else(|| Error::not_found("no mesh")));
                }
                Ok(all)
            }
        }
    }

    /// Register a mesh and start its link. `None` if its stored genesis does not verify.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_mesh(
        self: &Arc<Self>,
        row: MeshRow,
        keys: MeshKeys,
        entries: Vec<(u64, claudemesh_schema::roster::RosterEntry)>,
        sessions: Vec<store::SessionRow>,
        aliases: Vec<(MeshId, String, claudemesh_schema::SessionId)>,
        grants: HashMap<claudemesh_schema::crypto::MemberKey, Grant>,
    ) -> Option<Arc<MeshCtx>> {
        let mut roster = match Roster::from_genesis(&row.genesis) {
            Ok(r) => RosterState { roster: r, len: 0 },
            Err(e) => {
                tracing::error!(mesh = %row.id.short(), error = %e, "stored mesh genesis does not verify; mesh disabled");
                return None;
            }
        };
        for (seq, e) in &entries {
            if let Err(err) = roster.apply(*seq, e) {
                tracing::warn!(mesh = %row.id.short(), seq, error = %err, "stored roster entry invalid");
            }
        }
        let hosted = sessions
            .into_iter()
            .filter(|r| r.mesh == row.id)
            .map(|r| {
                let (sid, secret) = crate::mesh::derive_session(&keys, &row.id, &r.client_key);
                (
                    sid,
                    crate::mesh::LocalSession {
                        lease_key: r.client_key.clone(),
                        client_key: r.client_key,
                        secret,
                        profile: r.profile,
                        open: r.open,
                        claude_session: r.claude_session,
                        status_source: Default::default(),
                        status_at: claudemesh_schema::now_ms(),
                    },
                )
            })
            .collect();
        let alias_map: HashMap<String, claudemesh_schema::SessionId> = aliases
            .into_iter()
            .filter(|(mesh, ..)| *mesh == row.id)
            .map(|(_, k, s)| (k, s))
            .collect();
        let (tx, rx) = mpsc::channel(1024);
        let (status_tx, status_rx) = watch::channel(LinkStatus::default());
        let ctx = Arc::new(MeshCtx {
            id: row.id,
            keys,
            row: Mutex::new(row),
            roster: Mutex::new(roster),
            link: LinkHandle {
                tx,
                status: status_rx,
            },
            waiters: Mutex::new(HashMap::new()),
            stop: self.shutdown.child_token(),
            sessions: Mutex::new(hosted),
            aliases: Mutex::new(alias_map),
            op_waiters: Mutex::new(HashMap::new()),
            paused: watch::channel(false).0,
            op_caught_up: Default::default(),
            snapshots_pending: Default::default(),
            resync: tokio::sync::Notify::new(),
            grants: Mutex::new(grants),
        });
        self.meshes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.id, ctx.clone());
        self.tasks
            .spawn(crate::link::run(self.clone(), ctx.clone(), rx, status_tx));
        Some(ctx)
    }

    /// Stop a mesh's link and forget it in memory.
    pub(crate) fn remove_mesh(&self, id: &MeshId) -> Option<Arc<MeshCtx>> {
        let m = self
            .meshes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(m) = &m {
            m.stop.cancel();
        }
        m
    }

    pub(crate) fn bump_inbox(&self) {
        self.inbox_gen.send_modify(|g| *g += 1);
    }

    pub(crate) fn bump_changes(&self) {
        self.changes.send_modify(|g| *g += 1);
    }
}

/// A daemon running in this process.
#[derive(Debug)]
pub struct DaemonHandle {
    daemon: Arc<Daemon>,
    relay: Option<RelayHandle>,
    server: tokio::task::JoinHandle<()>,
}

impl DaemonHandle {
    /// The local socket path.
    pub fn socket(&self) -> PathBuf {
        self.daemon.paths.socket.clone()
    }

    /// The embedded relay's address, when one runs.
    pub fn relay_addr(&self) -> Option<String> {
        self.daemon.relay.as_ref().map(|(a, _)| a.clone())
    }

    /// Resolves when something asked the daemon to stop (`claudemesh daemon stop`).
    pub async fn stopped(&self) {
        self.daemon.shutdown.cancelled().await;
    }

    /// Stop gracefully: close the socket and links, flush the store.
    pub async fn shutdown(self) {
        self.daemon.shutdown.cancel();
        let _ = self.server.await;
        self.daemon.tasks.close();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), self.daemon.tasks.wait()).await;
        let _ = self.daemon.store.flush().await;
        if let Some(r) = self.relay {
            r.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.daemon.paths.socket);
        tracing::info!("daemon stopped");
    }
}

fn take_lock(paths: &Paths) -> Result<std::fs::File, DaemonError> {
    let path = paths.lock();
    let io = |source| DaemonError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(DaemonError::AlreadyRunning {
                dir: paths.dir.clone(),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    f.set_len(0).map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(f)
}

/// Start a daemon for `paths`: take the lock, open the store, start the embedded relay (if
/// configured) and every mesh link, and listen on the local socket. Returns once the
/// socket accepts connections.
pub async fn start(paths: Paths) -> Result<DaemonHandle, DaemonError> {
    ensure_private_dir(&paths.dir).map_err(|source| DaemonError::Io {
        path: paths.dir.clone(),
        source,
    })?;
    let lock = take_lock(&paths)?;
    let mut cfg = DaemonConfig::load(&paths.config())?;
    let store = Store::open(&paths.db())?;
    let (relay_handle, relay) = if cfg.relay.enabled {
        let rc = RelayConfig {
            listen: cfg.relay.listen,
            data_dir: paths.relay_data(),
            ..RelayConfig::default()
        };
        let r = Relay::bind(rc).await?;
        let fp = r.fingerprint();
        if cfg.relay.listen.port() == 0 {
            // Keep the port the system picked: meshes and invites name it.
            cfg.relay.listen.set_port(r.local_addr().port());
            cfg.save(&paths.config())?;
        }
        let public = cfg.relay_public_addr();
        (Some(r.spawn()), Some((public, fp)))
    } else {
        (None, None)
    };
    let (inbox_gen, _) = watch::channel(0u64);
    let (changes, _) = watch::channel(0u64);
    let daemon = Arc::new(Daemon {
        paths: paths.clone(),
        cfg,
        store: store.clone(),
        meshes: RwLock::new(HashMap::new()),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        relay,
        inbox_gen,
        state_events: tokio::sync::broadcast::channel(1024).0,
        changes,
        tasks: TaskTracker::new(),
        hostname: hostname(),
        clock_offset: Default::default(),
        membership: tokio::sync::Mutex::new(()),
        _lock: Mutex::new(lock),
    });
    let rows = store.read(store::q_meshes).await?;
    let hosted = store.read(store::q_sessions).await?;
    let aliases = store.read(store::q_aliases).await?;
    for row in rows {
        let keys = match MeshKeys::load(&paths.keys(), &row.id) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(mesh = %row.name, error = %e, "cannot load mesh keys; mesh disabled");
                continue;
            }
        };
        let id = row.id;
        let entries = store.read(move |c| store::q_roster(c, id)).await?;
        let grants = store.read(move |c| store::q_grants(c, id)).await?;
        daemon.add_mesh(row, keys, entries, hosted.clone(), aliases.clone(), grants);
    }
    let listener =
        crate::rpc::bind(&paths.socket, &paths.dir).map_err(|source| DaemonError::Socket {
            path: paths.socket.clone(),
            source,
        })?;
    let server = tokio::spawn(crate::rpc::serve(daemon.clone(), listener));
    daemon.tasks.spawn(crate::sessions::sweeper(daemon.clone()));
    daemon.tasks.spawn(crate::reminders::run(daemon.clone()));
    tracing::info!(dir = %paths.dir.display(), socket = %paths.socket.display(), "daemon ready");
    Ok(DaemonHandle {
        daemon,
        relay: relay_handle,
        server,
    })
}

/// Run a daemon until `shutdown` resolves or a client asks it to stop.
pub async fn run(paths: Paths, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let h = start(paths).await?;
    tokio::select! {
        _ = shutdown => {}
        _ = h.stopped() => {}
    }
    h.shutdown().await;
    Ok(())
}
