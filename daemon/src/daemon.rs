//! The daemon process: single-instance lock, store, embedded relay, one link per mesh, the
//! local socket server, and orderly shutdown.

use claudemesh_relay::config::AdmissionMode;
use claudemesh_relay::{Relay, RelayConfig, RelayHandle};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::DaemonConfig;
use crate::context::{Daemon, LinkStart, LocalRelay, hostname};
use crate::keys::MeshKeys;
use crate::paths::{Paths, ensure_private_dir};
use crate::store::{self, Store};

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
        self.daemon.relay.as_ref().map(|r| r.public.clone())
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
    // Everything the daemon creates (the store with the plaintext inbox, logs, the
    // embedded relay's files) is for this user only, whatever the caller's umask.
    crate::paths::private_umask();
    ensure_private_dir(&paths.dir).map_err(|source| DaemonError::Io {
        path: paths.dir.clone(),
        source,
    })?;
    let lock = take_lock(&paths)?;
    let mut cfg = DaemonConfig::load(&paths.config())?;
    let store = Store::open(&paths.db())?;
    // Stores made before the umask above may be readable by others: not any more.
    #[cfg(unix)]
    for f in [
        paths.db(),
        paths.db().with_extension("db-wal"),
        paths.db().with_extension("db-shm"),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::symlink_metadata(&f)
            && m.is_file()
            && m.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
        }
    }
    let (relay_handle, relay) = if cfg.relay.enabled {
        let rc = RelayConfig {
            listen: cfg.relay.listen,
            data_dir: paths.relay_data(),
            // The local relay is this user's own: anyone who reaches it may create meshes,
            // as many as they like (a public relay runs standalone, with token admission).
            admission: AdmissionMode::Open,
            create_rate_per_hour: 0,
            ..RelayConfig::default()
        };
        let r = Relay::bind(rc).await?;
        let fp = r.fingerprint();
        if cfg.relay.listen.port() == 0 {
            // Keep the port the system picked: meshes and invites name it.
            cfg.relay.listen.set_port(r.local_addr().port());
            cfg.save(&paths.config())?;
        }
        let local = LocalRelay {
            public: cfg.relay_public_addr(),
            listen: cfg.relay.listen,
            fingerprint: fp,
        };
        (Some(r.spawn()), Some(local))
    } else {
        (None, None)
    };
    let (links, link_rx) = mpsc::unbounded_channel();
    let (transcripts, transcript_rx) = mpsc::unbounded_channel();
    let (changes, _) = watch::channel(0u64);
    let default_mesh = store
        .read(|c| store::q_setting(c, crate::context::DEFAULT_MESH))
        .await?
        .and_then(|v| v.parse().ok());
    let daemon = Arc::new(Daemon {
        default_mesh: Mutex::new(default_mesh),
        paths: paths.clone(),
        cfg,
        store: store.clone(),
        store_health: Default::default(),
        store_fault: Default::default(),
        meshes: RwLock::new(HashMap::new()),
        started: Instant::now(),
        shutdown: CancellationToken::new(),
        relay,
        bells: Mutex::new(HashMap::new()),
        state_events: tokio::sync::broadcast::channel(1024).0,
        hosted: Mutex::new(HashMap::new()),
        preparing: Mutex::new(HashMap::new()),
        tools_events: tokio::sync::broadcast::channel(64).0,
        changes,
        tasks: TaskTracker::new(),
        hostname: hostname(),
        clock_offset: Default::default(),
        membership: tokio::sync::Mutex::new(()),
        joins: Mutex::new(HashMap::new()),
        links,
        transcripts,
        sweep: tokio::sync::Notify::new(),
        _lock: Mutex::new(lock),
    });
    daemon
        .tasks
        .spawn(crate::transcript::run(daemon.clone(), transcript_rx));
    daemon.tasks.spawn(supervise_links(daemon.clone(), link_rx));
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
    crate::sessions::follow_transcripts(&daemon);
    crate::joining::resume(&daemon);
    let listener =
        crate::rpc::bind(&paths.socket, &paths.dir).map_err(|source| DaemonError::Socket {
            path: paths.socket.clone(),
            source,
        })?;
    let server = tokio::spawn(crate::rpc::serve(daemon.clone(), listener));
    daemon.tasks.spawn(crate::sessions::sweeper(daemon.clone()));
    daemon.tasks.spawn(crate::reminders::run(daemon.clone()));
    daemon.tasks.spawn(crate::recovery::run(daemon.clone()));
    daemon.tasks.spawn(crate::files::resume(daemon.clone()));
    {
        // The replay guard is seeded before any hosted server can take a call.
        let d = daemon.clone();
        daemon.tasks.spawn(async move {
            crate::tools::load_seen(&d).await;
            crate::mcp_host::resume(d.clone()).await;
            crate::deploy::run(d).await;
        });
    }
    daemon
        .tasks
        .spawn(crate::delivery::inbox::retention(daemon.clone()));
    tracing::info!(dir = %paths.dir.display(), socket = %paths.socket.display(), "daemon ready");
    Ok(DaemonHandle {
        daemon,
        relay: relay_handle,
        server,
    })
}

/// Run every mesh link handed over by [`Daemon::add_mesh`], each in the daemon's task
/// tracker under a span naming its mesh.
async fn supervise_links(d: Arc<Daemon>, mut rx: mpsc::UnboundedReceiver<LinkStart>) {
    loop {
        let (m, cmds, status) = tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            l = rx.recv() => match l {
                Some(l) => l,
                None => return,
            },
        };
        let span = tracing::info_span!("link", mesh = %m.id.short());
        d.tasks
            .spawn(crate::link::run(d.clone(), m, cmds, status).instrument(span));
    }
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
