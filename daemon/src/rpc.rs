//! The local socket server: newline-delimited JSON-RPC 2.0 (see `claudemesh_schema::ipc`),
//! one task per connection, one task per request (so a long `inbox --wait` does not block
//! other calls on the same connection).
//!
//! Only processes of the same user may connect: the socket is 0600 inside a 0700
//! directory, and each connection's peer uid is checked again.

use claudemesh_schema::ipc::methods::{
    self as m, InboxParams, InboxResult, MeshParams, MeshPeers, MeshStatus, PeersResult,
    StatusResult,
};
use claudemesh_schema::ipc::{IPC_PROTOCOL, MAX_LINE, Request, Response, codes};
use claudemesh_schema::now_ms;
use futures_util::{SinkExt as _, StreamExt as _};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

use crate::daemon::Daemon;
use crate::mesh::lock;
use crate::store;

/// An error answered to a client: a stable code and a message saying what to do.
#[derive(Debug, Clone)]
pub(crate) struct RpcErr {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl RpcErr {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::new(codes::NOT_FOUND, m)
    }
    pub(crate) fn ambiguous(m: impl Into<String>) -> Self {
        Self::new(codes::AMBIGUOUS, m)
    }
    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        Self::new(codes::INVALID_ARGUMENT, m)
    }
    pub(crate) fn relay(m: impl Into<String>) -> Self {
        Self::new(codes::RELAY_UNAVAILABLE, m)
    }
    pub(crate) fn invite(m: impl Into<String>) -> Self {
        Self::new(codes::INVITE_REFUSED, m)
    }
    pub(crate) fn forbidden(m: impl Into<String>) -> Self {
        Self::new(codes::FORBIDDEN, m)
    }
    pub(crate) fn timeout(m: impl Into<String>) -> Self {
        Self::new(codes::TIMEOUT, m)
    }
    pub(crate) fn conflict(m: impl Into<String>) -> Self {
        Self::new(codes::CONFLICT, m)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(codes::INTERNAL, format!("daemon error: {e}"))
    }
}

/// Bind the socket (0600). The caller holds the instance lock, so a leftover socket file
/// is stale and is replaced.
pub(crate) fn bind(socket: &Path, dir: &Path) -> std::io::Result<Listener> {
    if let Some(parent) = socket.parent()
        && parent != dir
    {
        crate::paths::ensure_private_dir(parent)?;
    }
    let name = socket.to_fs_name::<GenericFilePath>()?;
    let opts = ListenerOptions::new().name(name).try_overwrite(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
        opts.mode(0o600)
    };
    opts.create_tokio()
}

#[cfg(unix)]
fn same_user(d: &Daemon, s: &Stream) -> bool {
    use interprocess::local_socket::traits::StreamCommon as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(&d.paths.dir) else {
        return false;
    };
    match s.peer_creds() {
        Ok(c) => c.euid() == Some(meta.uid()),
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn same_user(_d: &Daemon, _s: &Stream) -> bool {
    true
}

pub(crate) async fn serve(d: Arc<Daemon>, listener: Listener) {
    loop {
        let stream = tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "local socket accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if !same_user(&d, &stream) {
            tracing::warn!("refused a local connection from another user");
            continue;
        }
        d.tasks.spawn(connection(d.clone(), stream));
    }
}

async fn connection(d: Arc<Daemon>, stream: Stream) {
    let (r, w) = tokio::io::split(stream);
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE));
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let mut requests = tokio::task::JoinSet::new();
    let writer = tokio::spawn(async move {
        let mut out = FramedWrite::new(w, LinesCodec::new());
        while let Some(line) = rx.recv().await {
            if out.send(line).await.is_err() {
                break;
            }
        }
    });
    loop {
        let line = tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => break,
            l = lines.next() => l,
        };
        let line = match line {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                let resp = Response::err(
                    0,
                    codes::INVALID_REQUEST,
                    format!("request line exceeds {MAX_LINE} bytes"),
                );
                let _ = tx
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
                break;
            }
            Some(Err(_)) => break,
        };
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let resp = Response::err(0, codes::PARSE, format!("not a JSON-RPC request: {e}"));
                let _ = tx
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
                continue;
            }
        };
        if req.method == claudemesh_schema::ipc::shared::STATE_WATCH {
            let resp =
                match params::<claudemesh_schema::ipc::shared::WatchParams>(req.params.clone()) {
                    Ok(wp) => match wp.mesh.as_deref().map(|s| d.select(Some(s))).transpose() {
                        Ok(only) => {
                            requests.spawn(state_watch(
                                d.clone(),
                                only.map(|m| m.id),
                                wp.prefix,
                                tx.clone(),
                            ));
                            Response::ok(req.id, Value::Object(Default::default()))
                        }
                        Err(e) => Response::err(req.id, e.code, e.message),
                    },
                    Err(e) => Response::err(req.id, e.code, e.message),
                };
            let _ = tx
                .send(serde_json::to_string(&resp).unwrap_or_default())
                .await;
            continue;
        }
        if req.method == m::SUBSCRIBE {
            let resp = match params::<m::SubscribeParams>(req.params.clone()) {
                Ok(sp) if d.meshes().iter().any(|x| x.is_local(&sp.session)) => {
                    requests.spawn(subscription(d.clone(), sp.session, tx.clone()));
                    Response::ok(req.id, Value::Object(Default::default()))
                }
                Ok(_) => Response::err(req.id, codes::NOT_FOUND, "no such session on this daemon"),
                Err(e) => Response::err(req.id, e.code, e.message),
            };
            let _ = tx
                .send(serde_json::to_string(&resp).unwrap_or_default())
                .await;
            continue;
        }
        let (d2, tx2) = (d.clone(), tx.clone());
        // Requests die with their connection: an abandoned `inbox --wait` must not mark
        // messages read that nobody will see.
        while requests.try_join_next().is_some() {}
        requests.spawn(async move {
            let id = req.id;
            let resp = match dispatch(&d2, req).await {
                Ok(v) => Response::ok(id, v),
                Err(e) => Response::err(id, e.code, e.message),
            };
            let _ = tx2
                .send(serde_json::to_string(&resp).unwrap_or_default())
                .await;
        });
    }
    requests.abort_all();
    drop(tx);
    let _ = writer.await;
}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcErr> {
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    };
    serde_json::from_value(v)
        .map_err(|e| RpcErr::new(codes::INVALID_PARAMS, format!("invalid parameters: {e}")))
}

fn json<T: Serialize>(t: T) -> Result<Value, RpcErr> {
    serde_json::to_value(t).map_err(RpcErr::internal)
}

async fn dispatch(d: &Arc<Daemon>, req: Request) -> Result<Value, RpcErr> {
    use crate::{delivery, membership, shared};
    use claudemesh_schema::ipc::shared as sh;
    let p = req.params;
    match req.method.as_str() {
        m::HELLO => json(m::HelloResult {
            protocol: IPC_PROTOCOL,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        }),
        m::STATUS => json(status(d).await?),
        m::CREATE => json(membership::create(d, params(p)?).await?),
        m::INVITE => json(membership::invite(d, params(p)?).await?),
        m::INVITE_LIST => json(membership::invite_list(d, params(p)?).await?),
        m::INVITE_REVOKE => json(membership::invite_revoke(d, params(p)?).await?),
        m::CLAIMS => json(membership::claims(d).await?),
        m::CLAIM_DECIDE => json(membership::claim_decide(d, params(p)?).await?),
        m::JOIN => json(membership::join(d, params(p)?).await?),
        m::LIST => json(
            d.meshes()
                .iter()
                .map(|x| membership::mesh_info(&lock(&x.row)))
                .collect::<Vec<_>>(),
        ),
        m::LEAVE => json(membership::leave(d, params(p)?).await?),
        m::PEERS => json(peers(d, params(p)?).await?),
        m::SEND => json(delivery::send(d, params(p)?).await?),
        m::INBOX => json(inbox(d, params(p)?).await?),
        m::WHOAMI => json(membership::whoami(d)),
        m::PROFILE => json(membership::profile(d, params(p)?).await?),
        m::WAIT_FOR => json(wait_for(d, params(p)?).await?),
        m::SESSION_OPEN => json(crate::sessions::open(d, params(p)?).await?),
        m::SESSION_CLOSE => json(crate::sessions::close(d, params(p)?).await?),
        m::SESSION_UPDATE => json(crate::sessions::update(d, params(p)?).await?),
        m::MESSAGE_STATUS => json(message_status(d, params(p)?).await?),
        m::PING => json(ping(d, params(p)?).await?),
        claudemesh_schema::ipc::trust::VERIFY => json(membership::verify(d, params(p)?).await?),
        claudemesh_schema::ipc::trust::GRANT => {
            json(crate::grants::change(d, params(p)?, "grant").await?)
        }
        claudemesh_schema::ipc::trust::REVOKE => {
            json(crate::grants::change(d, params(p)?, "revoke").await?)
        }
        claudemesh_schema::ipc::trust::BLOCK => {
            json(crate::grants::change(d, params(p)?, "block").await?)
        }
        claudemesh_schema::ipc::trust::GRANTS => {
            let p: MeshParams = params(p)?;
            let m = d.select(p.mesh.as_deref())?;
            json(crate::grants::list(d, &m).await?)
        }
        sh::STATE_SET => json(shared::state_set(d, params(p)?).await?),
        sh::STATE_GET => json(shared::state_get(d, params(p)?, false).await?),
        sh::STATE_LIST => json(shared::state_get(d, params(p)?, true).await?),
        sh::REMEMBER => json(shared::remember(d, params(p)?).await?),
        sh::RECALL => json(shared::recall(d, params(p)?).await?),
        sh::FORGET => json(shared::forget(d, params(p)?).await?),
        sh::TASK_CREATE => json(shared::task_create(d, params(p)?).await?),
        sh::TASK_CLAIM => json(shared::task_claim(d, params(p)?).await?),
        sh::TASK_COMPLETE => json(shared::task_complete(d, params(p)?).await?),
        sh::TASK_LIST => json(shared::task_list(d, params(p)?).await?),
        sh::DIGEST => json(shared::digest(d, params(p)?).await?),
        sh::AUDIT_VERIFY => json(shared::audit_verify(d, params(p)?).await?),
        sh::LINK_PAUSE => json(shared::link_pause(d, params(p)?).await?),
        sh::RESERVE => json(shared::reserve(d, params(p)?).await?),
        sh::RELEASE => json(shared::release(d, params(p)?).await?),
        sh::RESERVATIONS => json(shared::reservations(d, params(p)?).await?),
        sh::CONTEXT_SHARE => json(shared::share_context(d, params(p)?).await?),
        sh::CONTEXTS => json(shared::contexts(d, params(p)?).await?),
        sh::SKILL_SHARE => json(shared::share_skill(d, params(p)?).await?),
        sh::SKILL_REMOVE => json(shared::remove_skill(d, params(p)?).await?),
        sh::SKILLS => json(shared::skills(d, params(p)?).await?),
        sh::SCHEDULE => json(shared::schedule(d, params(p)?).await?),
        sh::SCHEDULED => json(crate::reminders::list(d, params(p)?).await?),
        sh::CANCEL => json(shared::cancel(d, params(p)?).await?),
        sh::DEBUG_CLOCK => {
            let c: sh::ClockParams = params(p)?;
            let now = d
                .clock_offset
                .fetch_add(c.advance_ms, std::sync::atomic::Ordering::Relaxed)
                + c.advance_ms;
            d.bump_changes();
            Ok(serde_json::json!({ "offset_ms": now }))
        }
        m::MARK_READ => {
            let p: m::MarkReadParams = params(p)?;
            let session = p.session;
            let unread = d
                .store
                .read(move |c| store::q_unread(c, None, &[session], 1000))
                .await
                .map_err(RpcErr::internal)?;
            let read: Vec<_> = unread
                .into_iter()
                .filter(|x| p.ids.contains(&x.id))
                .collect();
            let ids = read.iter().map(|x| (x.id, session)).collect();
            d.store
                .mark_read(ids, now_ms())
                .await
                .map_err(RpcErr::internal)?;
            delivery::send_receipts(d, &read, true).await;
            Ok(Value::Object(Default::default()))
        }
        m::SHUTDOWN => {
            let token = d.shutdown.clone();
            tokio::spawn(async move {
                // Let the answer reach the client before the server stops.
                tokio::time::sleep(Duration::from_millis(20)).await;
                token.cancel();
            });
            Ok(Value::Object(Default::default()))
        }
        other => Err(RpcErr::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method {other:?}"),
        )),
    }
}

async fn status(d: &Arc<Daemon>) -> Result<StatusResult, RpcErr> {
    let mut meshes = Vec::new();
    for x in d.meshes() {
        let (id, own_member, own_session) = {
            let r = lock(&x.row);
            (x.id, r.member, r.session)
        };
        let (outbox, unread, online, (shared, log_seq, log_pending)) = d
            .store
            .read(move |c| {
                let (o, u) = store::q_counts(c, id)?;
                let online = store::q_presence(c, id)?
                    .iter()
                    .filter(|p| p.online && p.member != own_member && p.session != own_session)
                    .count() as u64;
                Ok((o, u, online, crate::shared::query::q_counts(c, id)?))
            })
            .await
            .map_err(RpcErr::internal)?;
        let st = x.link.status.borrow().clone();
        let row = lock(&x.row);
        meshes.push(MeshStatus {
            mesh: id,
            name: row.name.clone(),
            relay: row.relay.clone(),
            link: st.state,
            transport: st.transport.map(|t| t.as_str().to_string()),
            last_error: st.last_error,
            outbox,
            unread,
            peers_online: online,
            clock_skew_ms: st.skew_ms,
            shared,
            log_seq,
            log_pending,
        });
    }
    Ok(StatusResult {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: d.started.elapsed().as_millis() as u64,
        config_dir: d.paths.dir.display().to_string(),
        socket: d.paths.socket.display().to_string(),
        embedded_relay: d.relay.as_ref().map(|(a, _)| a.clone()),
        meshes,
    })
}

async fn peers(d: &Arc<Daemon>, p: MeshParams) -> Result<PeersResult, RpcErr> {
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    let mut out = Vec::new();
    for x in targets {
        let row = lock(&x.row).clone();
        let cached = !x.link.connected();
        let (id, name) = (row.id, row.name.clone());
        let peers = d
            .store
            .read(move |c| store::q_peers(c, &row))
            .await
            .map_err(RpcErr::internal)?;
        out.push(MeshPeers {
            mesh: id,
            name,
            cached,
            peers,
        });
    }
    Ok(PeersResult { meshes: out })
}

async fn inbox(d: &Arc<Daemon>, p: InboxParams) -> Result<InboxResult, RpcErr> {
    let mesh = match &p.mesh {
        Some(s) => Some(d.select(Some(s))?.id),
        None => None,
    };
    let sessions: Vec<_> = match p.session {
        Some(s) => {
            if !d.meshes().iter().any(|m| m.is_local(&s)) {
                return Err(RpcErr::not_found(format!("no session {s} on this daemon")));
            }
            vec![s]
        }
        None => d.meshes().iter().map(|m| m.keys.session).collect(),
    };
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(3_600_000));
    let mut gen_rx = d.inbox_gen.subscribe();
    let messages = loop {
        gen_rx.borrow_and_update();
        let s2 = sessions.clone();
        let mut msgs = d
            .store
            .read(move |c| store::q_unread(c, mesh, &s2, 1000))
            .await
            .map_err(RpcErr::internal)?;
        if let Some(cursor) = p.after
            && let Some(pos) = msgs.iter().position(|x| x.id == cursor)
        {
            msgs.drain(..=pos);
        }
        msgs.truncate(limit as usize);
        if !msgs.is_empty() || tokio::time::Instant::now() >= deadline {
            break msgs;
        }
        tokio::select! {
            _ = gen_rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = d.shutdown.cancelled() => break msgs,
        }
    };
    if !p.peek && !messages.is_empty() {
        let ids = messages.iter().map(|m| (m.id, m.session)).collect();
        d.store
            .mark_read(ids, now_ms())
            .await
            .map_err(RpcErr::internal)?;
        crate::delivery::send_receipts(d, &messages, true).await;
    }
    Ok(InboxResult { messages })
}
async fn wait_for(d: &Arc<Daemon>, p: m::WaitParams) -> Result<m::WaitResult, RpcErr> {
    use m::{LinkState, WaitCondition as W};
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    if targets.is_empty() {
        return Err(RpcErr::not_found("you have not joined any mesh yet"));
    }
    let peer = match p.condition {
        W::PeerOnline | W::PeerOffline | W::PeerWorking | W::PeerIdle => Some(
            p.peer
                .as_deref()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| RpcErr::invalid("name the peer to wait for"))?,
        ),
        _ => None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(p.timeout_ms.min(3_600_000));
    let mut changes = d.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let met = match p.condition {
            W::LinkUp => targets
                .iter()
                .all(|x| x.link.status.borrow().state == LinkState::Connected),
            W::LinkDown => targets
                .iter()
                .all(|x| x.link.status.borrow().state != LinkState::Connected),
            W::Synced => {
                let min = p.seq.unwrap_or(0);
                let mut all = true;
                for x in &targets {
                    let up = x.link.status.borrow().state == LinkState::Connected
                        && x.op_caught_up.load(std::sync::atomic::Ordering::Acquire)
                        && x.snapshots_pending
                            .load(std::sync::atomic::Ordering::Acquire)
                            == 0;
                    if !up {
                        all = false;
                        break;
                    }
                    let mesh = x.id;
                    let (head, pending) = d
                        .store
                        .read(move |c| {
                            let head = crate::shared::query::q_head(c, mesh)?.map(|h| h.0);
                            let pending = crate::shared::query::q_pending(c, mesh)?.len();
                            Ok((head.unwrap_or(0), pending))
                        })
                        .await
                        .map_err(RpcErr::internal)?;
                    if head < min || pending > 0 {
                        all = false;
                        break;
                    }
                }
                all
            }
            W::ClaimPending => !d
                .store
                .read(store::q_claims)
                .await
                .map_err(RpcErr::internal)?
                .is_empty(),
            W::PeerOnline | W::PeerOffline | W::PeerWorking | W::PeerIdle => {
                let cond = p.condition;
                let q = peer.clone().unwrap_or_default();
                let rows: Vec<_> = targets.iter().map(|x| lock(&x.row).clone()).collect();
                let found = d
                    .store
                    .read(move |c| {
                        let mut states = Vec::new();
                        for r in &rows {
                            for p in store::q_peers(c, r)? {
                                let id = p.id.0.simple().to_string();
                                let hit = match q.strip_prefix('@') {
                                    Some(g) => p.groups.iter().any(|x| x.to_lowercase() == g),
                                    None => {
                                        p.name.to_lowercase() == q
                                            || (q.len() >= 4 && id.starts_with(&q.replace('-', "")))
                                    }
                                };
                                if hit {
                                    states.push((p.online, p.status));
                                }
                            }
                        }
                        Ok(states)
                    })
                    .await
                    .map_err(RpcErr::internal)?;
                use claudemesh_schema::message::PeerStatus;
                match cond {
                    W::PeerOnline => found.iter().any(|(o, _)| *o),
                    W::PeerWorking => found.iter().any(|(o, s)| *o && *s == PeerStatus::Working),
                    W::PeerIdle => found.iter().any(|(o, s)| *o && *s == PeerStatus::Idle),
                    _ => !found.is_empty() && found.iter().all(|(o, _)| !*o),
                }
            }
        };
        if met {
            return Ok(m::WaitResult { met: true });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(m::WaitResult { met: false }),
            _ = d.shutdown.cancelled() => return Ok(m::WaitResult { met: false }),
        }
    }
}

/// The session's status, as far as this daemon knows (hosted sessions; the daemon's own
/// session is always idle).
fn local_status(
    d: &Daemon,
    session: claudemesh_schema::SessionId,
) -> claudemesh_schema::message::PeerStatus {
    for x in d.meshes() {
        if let Some(l) = lock(&x.sessions).get(&session) {
            return l.profile.status;
        }
    }
    claudemesh_schema::message::PeerStatus::Idle
}

/// Push each new unread message of `session` once, as a `message` notification, for as
/// long as the connection lives, gated by priority on the session's status: an idle
/// session gets `now` and `next`, a working or dnd one only `now`, and `low` is never
/// pushed (it waits to be pulled). Held messages are pushed when the session turns idle.
/// Messages stay unread: reading is the client's call.
async fn subscription(
    d: Arc<Daemon>,
    session: claudemesh_schema::SessionId,
    tx: mpsc::Sender<String>,
) {
    use claudemesh_schema::message::{PeerStatus, Priority};
    let mut gen_rx = d.inbox_gen.subscribe();
    let mut changes = d.changes.subscribe();
    loop {
        gen_rx.borrow_and_update();
        changes.borrow_and_update();
        let Ok(msgs) = d
            .store
            .read(move |c| store::q_unread(c, None, &[session], 1000))
            .await
        else {
            return;
        };
        // The session was closed or replaced: tell the client so it can reopen.
        let open = d.meshes().iter().any(|x| {
            x.keys.session == session || lock(&x.sessions).get(&session).is_some_and(|l| l.open)
        });
        if !open {
            let n = claudemesh_schema::ipc::Notification {
                jsonrpc: "2.0".into(),
                method: m::NOTIFY_SESSION_CLOSED.into(),
                params: Value::Null,
            };
            let _ = tx.send(serde_json::to_string(&n).unwrap_or_default()).await;
            return;
        }
        let status = local_status(&d, session);
        for msg in msgs {
            let allowed = match (msg.priority, status) {
                (Priority::Low, _) => false,
                (Priority::Now, _) => true,
                (Priority::Next, PeerStatus::Idle) => true,
                (Priority::Next, _) => false,
            };
            // Pushed once, ever: `surfaced_at` is durable, so a reconnecting client (or a
            // restarted daemon) does not get the same message into its context twice.
            if !allowed || msg.surfaced_at.is_some() {
                continue;
            }
            let n = claudemesh_schema::ipc::Notification {
                jsonrpc: "2.0".into(),
                method: m::NOTIFY_MESSAGE.into(),
                params: serde_json::to_value(&msg).unwrap_or(Value::Null),
            };
            if tx
                .send(serde_json::to_string(&n).unwrap_or_default())
                .await
                .is_err()
            {
                return;
            }
            let _ = d.store.mark_surfaced(msg.id, msg.session, now_ms()).await;
            crate::delivery::send_receipts(&d, std::slice::from_ref(&msg), false).await;
        }
        tokio::select! {
            r = gen_rx.changed() => if r.is_err() { return },
            r = changes.changed() => if r.is_err() { return },
            _ = d.shutdown.cancelled() => return,
        }
    }
}

/// Push `state_change` notifications for as long as the connection lives. A watcher too
/// slow to keep up is told how many changes it missed (`lagged`), never blocked on.
async fn state_watch(
    d: Arc<Daemon>,
    only: Option<claudemesh_schema::MeshId>,
    prefix: Option<String>,
    tx: mpsc::Sender<String>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = d.state_events.subscribe();
    loop {
        let ev = tokio::select! {
            r = rx.recv() => r,
            _ = d.shutdown.cancelled() => return,
        };
        let params = match ev {
            Ok(c) => {
                if only.is_some_and(|m| m != c.mesh)
                    || prefix.as_deref().is_some_and(|p| !c.key.starts_with(p))
                {
                    continue;
                }
                serde_json::to_value(&c).unwrap_or(Value::Null)
            }
            Err(RecvError::Lagged(n)) => serde_json::json!({ "lagged": n }),
            Err(RecvError::Closed) => return,
        };
        let n = claudemesh_schema::ipc::Notification {
            jsonrpc: "2.0".into(),
            method: claudemesh_schema::ipc::shared::NOTIFY_STATE_CHANGE.into(),
            params,
        };
        if tx
            .send(serde_json::to_string(&n).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn message_status(
    d: &Arc<Daemon>,
    p: m::MessageStatusParams,
) -> Result<m::MessageStatusResult, RpcErr> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.unwrap_or(0).min(600_000));
    let mut changes = d.changes.subscribe();
    loop {
        changes.borrow_and_update();
        let q = p.id.clone();
        let hits = d
            .store
            .read(move |c| store::q_sent_find(c, &q))
            .await
            .map_err(RpcErr::internal)?;
        let (id, to, st) = match hits.len() {
            0 => return Err(RpcErr::not_found(format!("no sent message {:?}", p.id))),
            1 => hits
                .into_iter()
                .next()
                .ok_or_else(|| RpcErr::internal("vanished"))?,
            _ => {
                return Err(RpcErr::ambiguous(
                    "several messages match; give more of the id",
                ));
            }
        };
        let stage = if st.read.is_some() {
            m::Stage::Read
        } else if st.surfaced.is_some() {
            m::Stage::Surfaced
        } else if st.delivered.is_some() {
            m::Stage::Delivered
        } else if st.relayed.is_some() {
            m::Stage::Relayed
        } else {
            m::Stage::Queued
        };
        let done = p.wait_for.is_none_or(|w| stage >= w) || tokio::time::Instant::now() >= deadline;
        if done {
            return Ok(m::MessageStatusResult {
                id,
                stage,
                queued_at: st.created,
                relayed_at: st.relayed,
                delivered_at: st.delivered,
                surfaced_at: st.surfaced,
                read_at: st.read,
                to,
            });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = d.shutdown.cancelled() => {}
        }
    }
}

async fn ping(d: &Arc<Daemon>, p: MeshParams) -> Result<m::PingResult, RpcErr> {
    let x = d.select(p.mesh.as_deref())?;
    let t = std::time::Instant::now();
    x.link
        .request(Box::new(|rid| claudemesh_schema::wire::ClientFrame::Ping {
            n: rid,
        }))
        .await
        .map_err(|e| RpcErr::relay(e.message))?;
    let transport = x
        .link
        .status
        .borrow()
        .transport
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();
    Ok(m::PingResult {
        mesh: x.id,
        relay_rtt_us: t.elapsed().as_micros() as u64,
        transport,
    })
}
