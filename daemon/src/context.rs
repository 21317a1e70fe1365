//! The daemon's shared state, below every domain module: paths, config, the store, the
//! joined meshes and the event channels. Domain code reaches the rest of the daemon only
//! through this struct; it never starts tasks of the layers above (new links go to the
//! supervisor in `daemon` over [`Daemon::links`]).

use claudemesh_schema::MeshId;
use claudemesh_schema::ipc::methods::{JoinStage, MeshInfo, PendingJoin};
use claudemesh_schema::roster::Roster;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DaemonConfig;
use crate::error::Error;
use crate::keys::MeshKeys;
use crate::mesh::{LinkCmd, LinkHandle, LinkStatus, MeshCtx, RosterState};
use crate::paths::Paths;
use crate::store::{self, Grant, MeshRow, Store};

/// What the transcript watcher is asked to do.
#[derive(Debug)]
pub(crate) enum TranscriptCmd {
    /// Follow `path` as the transcript of `session` (replacing an earlier one).
    Follow {
        mesh: MeshId,
        session: claudemesh_schema::SessionId,
        path: std::path::PathBuf,
    },
    /// Stop following the session's transcript.
    Forget {
        mesh: MeshId,
        session: claudemesh_schema::SessionId,
    },
}

/// A session's bell: wakes whoever waits for the session's messages, and hands messages
/// to its push subscription without a store round trip.
///
/// Listeners arm [`Bell::notified`] (`enable`) before looking, so a ring between the look
/// and the wait is not lost.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    notify: tokio::sync::Notify,
    /// The store changed for the session since its subscription last looked.
    dirty: std::sync::atomic::AtomicBool,
    /// Push subscriptions caught up with the store (they take handed-over messages).
    live: std::sync::atomic::AtomicU32,
    /// Messages handed over (stored, or being stored, as shown through the channel),
    /// not yet pushed.
    fresh: Mutex<Vec<claudemesh_schema::ipc::methods::InboxMessage>>,
}

impl Bell {
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Something for the session changed in the store: look again.
    pub(crate) fn ring(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Hand `msg` to the session's push subscription.
    pub(crate) fn hand(&self, msg: claudemesh_schema::ipc::methods::InboxMessage) {
        crate::mesh::lock(&self.fresh).push(msg);
        self.notify.notify_waiters();
    }

    /// What was handed over since the last take.
    pub(crate) fn take_fresh(&self) -> Vec<claudemesh_schema::ipc::methods::InboxMessage> {
        std::mem::take(&mut *crate::mesh::lock(&self.fresh))
    }

    /// Did the store change since the last call?
    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Is a push subscription caught up and taking handed-over messages?
    pub(crate) fn live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// A push subscription caught up (`true`) or fell behind / left (`false`).
    pub(crate) fn set_live(&self, was: bool, now: bool) {
        use std::sync::atomic::Ordering::AcqRel;
        match (was, now) {
            (false, true) => {
                self.live.fetch_add(1, AcqRel);
            }
            (true, false) => {
                self.live.fetch_sub(1, AcqRel);
            }
            _ => {}
        }
    }
}

/// Where a pending join (`joining`) stands, as its task last saw it.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Connecting {
        error: Option<String>,
    },
    Waiting {
        claim: claudemesh_schema::ClaimId,
        admins_online: u32,
        approve: bool,
        kept_until: Option<i64>,
    },
    Joined(MeshInfo),
    Refused(String),
}

impl Stage {
    pub(crate) fn settled(&self) -> bool {
        matches!(self, Self::Joined(_) | Self::Refused(_))
    }
}

/// A join waiting for an admin: what `status` shows, and the stage its task publishes.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) invite: claudemesh_schema::InviteId,
    pub(crate) relay: String,
    pub(crate) fingerprint: String,
    pub(crate) name: String,
    pub(crate) since: i64,
    pub(crate) stage: watch::Sender<Stage>,
}

impl Pending {
    pub(crate) fn set(&self, d: &Daemon, s: Stage) {
        self.stage.send_replace(s);
        d.bump_changes();
    }

    pub(crate) fn info(&self) -> PendingJoin {
        let (stage, claim, admins_online, kept_until, error) = match &*self.stage.borrow() {
            Stage::Connecting { error } => (JoinStage::Connecting, None, None, None, error.clone()),
            Stage::Waiting {
                claim,
                admins_online,
                approve,
                kept_until,
            } => (
                if *approve {
                    JoinStage::Approval
                } else {
                    JoinStage::Waiting
                },
                Some(*claim),
                Some(*admins_online),
                *kept_until,
                None,
            ),
            // Gone from the list right after; shown as waiting meanwhile.
            Stage::Joined(_) => (JoinStage::Waiting, None, None, None, None),
            Stage::Refused(why) => (JoinStage::Refused, None, None, None, Some(why.clone())),
        };
        PendingJoin {
            invite: self.invite,
            relay: self.relay.clone(),
            fingerprint: self.fingerprint.clone(),
            name: self.name.clone(),
            stage,
            claim,
            admins_online,
            kept_until,
            error,
            since: self.since,
        }
    }
}

/// A mesh link for the supervisor to run: the mesh, its command queue, its status.
pub(crate) type LinkStart = (
    Arc<MeshCtx>,
    mpsc::Receiver<LinkCmd>,
    watch::Sender<LinkStatus>,
);

/// The relay this daemon runs in-process (`[relay]` in `config.toml`).
#[derive(Debug, Clone)]
pub(crate) struct LocalRelay {
    /// What meshes and invites name: `[relay] public_addr`, else the listen address.
    pub(crate) public: String,
    /// Where it listens.
    pub(crate) listen: std::net::SocketAddr,
    /// Its certificate fingerprint. A mesh whose relay presents it is hosted here.
    pub(crate) fingerprint: [u8; 32],
}

impl LocalRelay {
    /// The address this daemon dials its own relay at: the listen address (loopback for
    /// an unspecified one). The public address may not resolve or route from here (a
    /// name for other machines, a port forwarded on the router), and a mesh recorded
    /// before the relay moved still reaches it.
    pub(crate) fn dial(&self) -> String {
        let l = self.listen;
        match l.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("127.0.0.1:{}", l.port()),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("[::1]:{}", l.port()),
            _ => l.to_string(),
        }
    }

    /// The address to dial for a mesh whose relay is `addr` with certificate `fp`: this
    /// relay's own address when the mesh is hosted here, else `addr`.
    pub(crate) fn route(relay: Option<&Self>, addr: &str, fp: &[u8; 32]) -> String {
        match relay {
            Some(r) if r.fingerprint == *fp => r.dial(),
            _ => addr.to_string(),
        }
    }
}

/// The settings key of the default mesh.
pub(crate) const DEFAULT_MESH: &str = "default_mesh";

/// The store's health as the daemon last saw it (kept by `recovery`).
#[derive(Debug, Default)]
pub(crate) struct StoreHealth {
    /// Writes are failing (since a fault was noted, until a probe write succeeds).
    pub(crate) failing: bool,
    /// Failed writes in this fault (said when it ends).
    pub(crate) failures: u64,
    /// The probe's current wait: kept across a fault that comes back within a minute of
    /// its end (a write that fails for another reason than space), so that keeps backing
    /// off instead of starting over.
    pub(crate) wait: std::time::Duration,
    /// When a fault was last said and last ended: one ERROR line a minute at most.
    pub(crate) said_at: Option<Instant>,
    pub(crate) ended_at: Option<Instant>,
}

/// The running daemon's shared state.
#[derive(Debug)]
pub(crate) struct Daemon {
    /// The mesh commands act in when several are joined and none is named
    /// (`claudemesh mesh use`; stored under [`DEFAULT_MESH`]).
    pub(crate) default_mesh: Mutex<Option<MeshId>>,
    pub(crate) paths: Paths,
    pub(crate) cfg: DaemonConfig,
    pub(crate) store: Store,
    /// Whether store writes are failing now (see `recovery`).
    pub(crate) store_health: Mutex<StoreHealth>,
    /// A store fault began: wakes `recovery::run`.
    pub(crate) store_fault: tokio::sync::Notify,
    pub(crate) meshes: RwLock<HashMap<MeshId, Arc<MeshCtx>>>,
    pub(crate) started: Instant,
    pub(crate) shutdown: CancellationToken,
    pub(crate) relay: Option<LocalRelay>,
    /// One bell per session: rings when something that session may take arrived or its
    /// status changed (wakes its push subscription and its `inbox --wait`), and carries
    /// messages handed straight to its push subscription.
    pub(crate) bells: Mutex<HashMap<claudemesh_schema::SessionId, Arc<Bell>>>,
    /// Local MCP servers this daemon hosts, by mesh and name (`mcp_host`).
    pub(crate) hosted: Mutex<HashMap<(MeshId, String), Arc<crate::mcp_client::Hosted>>>,
    /// Hosted services this daemon is fetching or could not start, by mesh and name
    /// (`deploy`; once started they are in `hosted`).
    pub(crate) preparing: Mutex<HashMap<(MeshId, String), crate::mcp_client::Preparing>>,
    /// Meshes whose catalog of shared MCP servers changed (`tools_changed`).
    pub(crate) tools_events: tokio::sync::broadcast::Sender<MeshId>,
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
    /// Joins waiting for an admin, by invite (`joining`).
    pub(crate) joins: Mutex<HashMap<claudemesh_schema::InviteId, Arc<Pending>>>,
    /// New mesh links, for the supervisor to spawn.
    pub(crate) links: mpsc::UnboundedSender<LinkStart>,
    /// The transcript watcher's commands.
    pub(crate) transcripts: mpsc::UnboundedSender<TranscriptCmd>,
    /// Wakes the session sweeper (a lease may have ended).
    pub(crate) sweep: tokio::sync::Notify,
    pub(crate) _lock: Mutex<std::fs::File>,
}

pub(crate) fn hostname() -> String {
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
            let default = self.default_mesh();
            return match all.len() {
                0 => Err(Error::not_found(
                    "you have not joined any mesh yet; run `claudemesh up`, `claudemesh create <name>` or `claudemesh join <invite>`",
                )),
                1 => Ok(all[0].clone()),
                _ => match all.iter().find(|m| Some(m.id) == default) {
                    Some(m) => Ok(m.clone()),
                    None => Err(Error::ambiguous(format!(
                        "you are in several meshes ({}); pass --mesh <name>, or pick one for \
                         when you do not: `claudemesh mesh use <name>`",
                        all.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
                    ))),
                },
            };
        };
        // A full id names one mesh whatever the names say (callers pass ids, and a mesh's
        // name comes from whoever admitted us: it must not capture another mesh's id).
        if let Ok(id) = sel.parse::<MeshId>() {
            return all
                .iter()
                .find(|m| m.id == id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("no joined mesh has the id {id}")));
        }
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

    /// The default mesh (`mesh use`), if it is still joined.
    pub(crate) fn default_mesh(&self) -> Option<MeshId> {
        let d = *crate::mesh::lock(&self.default_mesh);
        d.filter(|id| self.mesh(id).is_some())
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
            Ok(r) => RosterState::new(r),
            Err(e) => {
                tracing::error!(mesh = %row.id.short(), error = %e, "stored mesh genesis does not verify; mesh disabled");
                return None;
            }
        };
        // Stored entries are a chain: the first that does not follow ends it (the relay
        // sends the rest again).
        for (seq, e) in &entries {
            if let Err(err) = roster.apply(*seq, e) {
                tracing::warn!(mesh = %row.id.short(), seq, error = %err, "stored roster entry invalid; the roster ends before it");
                break;
            }
        }
        let hosted = sessions
            .into_iter()
            .filter(|r| r.mesh == row.id)
            .map(|r| {
                let (sid, secret) = crate::mesh::derive_session(&keys, &row.id, &r.client_key);
                let now = claudemesh_schema::now_ms();
                (
                    sid,
                    crate::mesh::LocalSession {
                        client_key: r.client_key,
                        secret,
                        profile: r.profile,
                        open: r.open,
                        claude_session: r.claude_session,
                        process: r.process,
                        holds: 0,
                        held: r.held,
                        transcript: r.transcript.map(std::path::PathBuf::from),
                        status_source: claudemesh_schema::ipc::methods::StatusSource::Jsonl,
                        status_at: now,
                        // Not known to be active until it shows use again.
                        active_at: 0,
                        announced: r.announced,
                        pushes: false,
                        pulling: 0,
                        channel: Default::default(),
                        usage: crate::mesh::Usage::since(now),
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
        let mut ring = claudemesh_schema::epoch::Keyring::new(keys.mesh_key.clone());
        for (epoch, key) in &keys.epochs {
            ring.insert(*epoch, key.clone());
        }
        let ctx = Arc::new(MeshCtx {
            id: row.id,
            epochs: Mutex::new(crate::mesh::Epochs::new(ring)),
            rekey: tokio::sync::Notify::new(),
            later: Mutex::new(Vec::new()),
            keys,
            row: Mutex::new(row),
            roster: Mutex::new(roster),
            link: LinkHandle {
                tx,
                status: status_rx,
            },
            stop: self.shutdown.child_token(),
            sessions: Mutex::new(hosted),
            aliases: Mutex::new(alias_map),
            op_waiters: Mutex::new(HashMap::new()),
            paused: watch::channel(false).0,
            op_caught_up: Default::default(),
            snapshots_pending: Default::default(),
            presences_sent: Default::default(),
            senders: Default::default(),
            boxes: Default::default(),
            received: Default::default(),
            probes: Default::default(),
            stats_asks: Default::default(),
            stats_answered: Default::default(),
            chunk_asks: Default::default(),
            chunks_served: Default::default(),
            chunk_answers: Default::default(),
            transfers: Default::default(),
            progress: Default::default(),
            // Peer folders.
            peer_file_asks: Default::default(),
            tool_calls: Default::default(),
            tool_seen: Default::default(),
            peer_file_answered: Default::default(),
            retry_now: Default::default(),
            own_usage: Mutex::new(crate::mesh::Usage::since(claudemesh_schema::now_ms())),
            resync: tokio::sync::Notify::new(),
            redial: tokio::sync::Notify::new(),
            grants: Mutex::new(grants),
        });
        self.meshes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.id, ctx.clone());
        // The supervisor is gone only when the daemon stops; the link then never runs.
        let _ = self.links.send((ctx.clone(), rx, status_tx));
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

    /// The bell of `session` (see [`Daemon::bells`]).
    pub(crate) fn bell(&self, session: claudemesh_schema::SessionId) -> Arc<Bell> {
        crate::mesh::lock(&self.bells)
            .entry(session)
            .or_default()
            .clone()
    }

    /// The bell of `session` if anyone listens to it.
    pub(crate) fn bell_if_any(&self, session: claudemesh_schema::SessionId) -> Option<Arc<Bell>> {
        crate::mesh::lock(&self.bells).get(&session).cloned()
    }

    /// Ring the bell of each of `sessions`.
    pub(crate) fn wake(&self, sessions: impl IntoIterator<Item = claudemesh_schema::SessionId>) {
        let w = crate::mesh::lock(&self.bells);
        for s in sessions {
            if let Some(b) = w.get(&s) {
                b.ring();
            }
        }
    }

    /// Messages arrived for `sessions` of mesh `m`; a message to the person (`person`) may
    /// be shown by any of the person's sessions here.
    pub(crate) fn arrived(
        &self,
        m: &MeshCtx,
        sessions: &[claudemesh_schema::SessionId],
        person: bool,
    ) {
        if person {
            let mut all = vec![m.keys.session];
            all.extend(crate::mesh::lock(&m.sessions).keys().copied());
            self.wake(all);
        }
        self.wake(sessions.iter().copied());
    }

    /// Run `task` in the daemon's tracker (shutdown waits for it) under the current span
    /// (so its log lines name the mesh, session or message it works for).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument as _;
        self.tasks.spawn(task.in_current_span());
    }

    pub(crate) fn bump_changes(&self) {
        self.changes.send_modify(|g| *g += 1);
    }
}
