//! One client connection, transport-agnostic: the run loop that reads frames and
//! dispatches them by the connection's state, and the cleanup when it ends. What each
//! frame does lives in a submodule named for its part of the protocol:
//! [`handshake`] (before hello: ping, mesh creation, hello, invite claims),
//! [`envelopes`] (send, ack, mailbox replay), [`presence`] (presence, depart),
//! [`admin`] (roster, invites, claim decisions); [`writer`] drains the link's queues.
//!
//! Every refusal is an `error` frame with a stable code; fatal ones close only this
//! connection. Nothing a client sends can make the relay stop serving others: frames are
//! size-limited before parsing, parse failures are answered, and every lock is short.

mod admin;
mod envelopes;
mod handshake;
mod presence;
mod writer;

use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{self, ClientFrame, ErrorCode, RelayFrame};
use claudemesh_schema::{ClaimId, MeshId, SessionId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::hub::{Hub, LinkHandle, MeshEntry, error_frame, frame, lock};
use crate::limits::TokenBucket;
use crate::store::Store;
use crate::transport::{FrameReader, FrameWriter, ReadError, Transport};

/// Serve one connection until it closes.
pub(crate) async fn serve<S: Store>(
    hub: Arc<Hub<S>>,
    mut reader: FrameReader,
    writer: FrameWriter,
    remote: SocketAddr,
    transport: Transport,
) {
    hub.stats.connections.fetch_add(1, Ordering::Relaxed);
    let close = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let (data, data_rx) = mpsc::channel::<Bytes>(hub.cfg.send_queue);
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer_task = tokio::spawn(writer::write_loop(
        writer,
        rx,
        data_rx,
        close.clone(),
        queued.clone(),
    ));
    let link = LinkHandle {
        id: hub.next_id(),
        tx,
        queued,
        data,
        close: close.clone(),
        lagged: Arc::new(tokio::sync::Notify::new()),
    };
    let span = tracing::debug_span!("conn", id = link.id, %remote, transport = transport.as_str());
    let mut conn = Conn {
        hub: hub.clone(),
        link,
        remote,
        state: State::New,
        rate: TokenBucket::new(hub.cfg.member_rate, hub.cfg.member_burst, Instant::now()),
        drain: None,
        resync_pending: false,
        op_sync: None,
        upload: None,
    };
    async {
        let end = conn.run(&mut reader).await;
        tracing::debug!(reason = %end, "connection closing");
        conn.cleanup();
    }
    .instrument(span)
    .await;
    if let Some(d) = conn.drain.take() {
        d.abort();
    }
    if let Some(d) = conn.op_sync.take() {
        d.abort();
    }
    drop(conn);
    close.cancel();
    let _ = writer_task.await;
    hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

enum State {
    New,
    Claiming {
        mesh: MeshId,
        claim: ClaimId,
    },
    Linked {
        mesh: MeshId,
        entry: Arc<MeshEntry>,
        member: MemberKey,
    },
}

struct Conn<S> {
    hub: Arc<Hub<S>>,
    link: LinkHandle,
    remote: SocketAddr,
    state: State,
    rate: TokenBucket,
    drain: Option<tokio::task::JoinHandle<()>>,
    resync_pending: bool,
    op_sync: Option<tokio::task::JoinHandle<()>>,
    upload: Option<crate::oplog::Upload>,
}

/// Why a connection ended (for the debug log).
type End = String;

impl<S: Store> Conn<S> {
    fn push(&self, f: &RelayFrame) {
        if let Some(b) = frame(f) {
            self.link.push(b);
        }
    }

    fn error(&self, rid: Option<u64>, code: ErrorCode, msg: &str) {
        self.link.push(error_frame(rid, code, msg, false));
    }

    /// Send a fatal error and end the connection.
    fn fatal(&self, code: ErrorCode, msg: &str) -> End {
        if !matches!(self.state, State::Linked { .. }) {
            self.hub
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(code = %code, msg, "refusing connection");
        self.link.push(error_frame(None, code, msg, true));
        format!("{code}: {msg}")
    }

    async fn run(&mut self, reader: &mut FrameReader) -> End {
        let first_deadline = Duration::from_secs(self.hub.cfg.hello_timeout_secs);
        let idle = Duration::from_secs(self.hub.cfg.idle_timeout_secs);
        loop {
            let limit = if matches!(self.state, State::New) {
                first_deadline
            } else {
                idle
            };
            let lagged = self.link.lagged.clone();
            let next = tokio::select! {
                biased;
                _ = self.link.close.cancelled() => return "closed by relay".into(),
                _ = self.hub.shutdown.cancelled() => {
                    return self.fatal(ErrorCode::ShuttingDown, "relay is shutting down; reconnect shortly");
                }
                // Live deliveries were skipped because the peer reads slower than others
                // send: replay its mailbox (from the start; the peer dedupes by id).
                _ = lagged.notified() => {
                    if self.drain.as_ref().is_some_and(|d| !d.is_finished()) {
                        self.resync_pending = true;
                    } else {
                        self.resync();
                    }
                    continue;
                }
                // A replay finished: run another if the link lagged meanwhile.
                _ = async {
                    match self.drain.as_mut() {
                        Some(d) => { let _ = d.await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    self.drain = None;
                    if std::mem::take(&mut self.resync_pending) {
                        self.resync();
                    }
                    continue;
                }
                r = tokio::time::timeout(limit, reader.next()) => r,
            };
            let bytes = match next {
                Err(_) => {
                    return self.fatal(ErrorCode::Unexpected, "no frame within the time limit");
                }
                Ok(None) => return "peer closed".into(),
                Ok(Some(Err(ReadError::TooLarge))) => {
                    return self.fatal(
                        ErrorCode::FrameTooLarge,
                        &format!("frame exceeds the {} byte limit", wire::MAX_FRAME),
                    );
                }
                Ok(Some(Err(ReadError::NotBinary))) => {
                    return self.fatal(ErrorCode::BadFrame, "frames must be binary messages");
                }
                Ok(Some(Err(e))) => return format!("read error: {e}"),
                Ok(Some(Ok(b))) => b,
            };
            self.hub.log_frame(&bytes);
            let f: ClientFrame = match wire::decode(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    return self.fatal(ErrorCode::BadFrame, &format!("malformed frame: {e}"));
                }
            };
            if let Err(end) = self.dispatch(f).await {
                return end;
            }
        }
    }

    async fn dispatch(&mut self, f: ClientFrame) -> Result<(), End> {
        if let ClientFrame::Ping { n } = f {
            self.push(&RelayFrame::Pong {
                n,
                server_time: now_ms(),
            });
            return Ok(());
        }
        match &self.state {
            State::New => match f {
                ClientFrame::Hello(h) => self.hello(h).await,
                ClientFrame::CreateMesh { rid, genesis } => self.create_mesh(rid, genesis).await,
                ClientFrame::Claim(req) => self.claim(req),
                _ => Err(self.fatal(ErrorCode::Unexpected, "send hello first")),
            },
            State::Claiming { .. } => Err(self.fatal(
                ErrorCode::Unexpected,
                "only ping is allowed while a claim waits",
            )),
            State::Linked {
                mesh,
                entry,
                member,
            } => {
                let (mesh, entry, member) = (*mesh, entry.clone(), *member);
                match f {
                    ClientFrame::Send(env) => {
                        self.send(mesh, &entry, member, env).await;
                        Ok(())
                    }
                    ClientFrame::Ack { ids } => {
                        self.ack(mesh, &entry, member, ids).await;
                        Ok(())
                    }
                    ClientFrame::Presence(p) => self.presence(mesh, &entry, member, p).await,
                    ClientFrame::Depart { session } => {
                        self.depart(mesh, &entry, member, session).await;
                        Ok(())
                    }
                    ClientFrame::Roster { rid, entry: e } => {
                        self.roster(rid, &entry, member, e).await;
                        Ok(())
                    }
                    ClientFrame::InvitePublish { rid, cap } => {
                        self.invite_publish(rid, &entry, member, cap).await;
                        Ok(())
                    }
                    ClientFrame::InviteRevoke { rid, revocation } => {
                        self.invite_revoke(rid, &entry, member, revocation).await;
                        Ok(())
                    }
                    ClientFrame::ClaimDecision { rid, decision } => {
                        self.claim_decision(rid, &entry, member, decision).await;
                        Ok(())
                    }
                    ClientFrame::Op(env) => {
                        if let Err(wait) = self.rate.take(Instant::now()) {
                            if let Some(f) = frame(&RelayFrame::OpRefused {
                                id: env.id,
                                code: ErrorCode::RateLimited,
                                message: "member write rate exceeded".into(),
                                retry_ms: Some(wait.as_millis() as u64 + 1),
                            }) {
                                self.link.push(f);
                            }
                            return Ok(());
                        }
                        crate::oplog::append(&self.hub, &self.link, mesh, &entry, member, env)
                            .await;
                        Ok(())
                    }
                    ClientFrame::OpSync { from } => {
                        if let Some(old) = self.op_sync.take() {
                            old.abort();
                        }
                        self.op_sync = Some(tokio::spawn(crate::oplog::sync(
                            self.hub.clone(),
                            self.link.data.clone(),
                            mesh,
                            from,
                        )));
                        Ok(())
                    }
                    ClientFrame::SnapshotPart {
                        seq,
                        part,
                        parts,
                        data,
                    } => {
                        crate::oplog::snapshot_part(
                            &self.hub,
                            &self.link,
                            &mut self.upload,
                            mesh,
                            member,
                            (seq, part, parts, data),
                        )
                        .await;
                        Ok(())
                    }
                    ClientFrame::OpRead { rid, from, limit } => {
                        crate::oplog::read(&self.hub, &self.link, mesh, rid, from, limit).await;
                        Ok(())
                    }
                    ClientFrame::Hello(_)
                    | ClientFrame::CreateMesh { .. }
                    | ClientFrame::Claim(_)
                    | ClientFrame::Ping { .. } => Err(self.fatal(
                        ErrorCode::Unexpected,
                        "this frame is only valid before hello",
                    )),
                }
            }
        }
    }

    /// Undo this connection's registrations.
    fn cleanup(&mut self) {
        match std::mem::replace(&mut self.state, State::New) {
            State::New => {}
            State::Claiming { mesh, claim } => {
                if let Some(e) = self.hub.mesh(&mesh) {
                    lock(&e.state).claims.remove(&claim);
                }
            }
            State::Linked {
                mesh,
                entry,
                member,
            } => {
                let now = now_ms();
                let offline: Vec<SessionId> = {
                    let mut st = lock(&entry.state);
                    match st.links.get(&member) {
                        Some(l) if l.id == self.link.id => {
                            st.links.remove(&member);
                        }
                        Some(_) => {
                            // Replaced by a newer connection: its sessions stay online.
                            drop(st);
                            self.hub.stats.links.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                        // Removed from the mesh: the roster change took the link out.
                        None => {}
                    }
                    let mut gone = Vec::new();
                    for (id, s) in st.sessions.iter_mut() {
                        if s.presence.member == member && s.online {
                            s.online = false;
                            s.last_seen = now;
                            gone.push(*id);
                        }
                    }
                    for id in &gone {
                        if let Some(f) = frame(&RelayFrame::Depart {
                            session: *id,
                            at: now,
                        }) {
                            st.broadcast(&f, Some(&member));
                        }
                    }
                    gone
                };
                self.hub.stats.links.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(mesh = %mesh.short(), member = %member.short(), "link down");
                if !offline.is_empty() {
                    let hub = self.hub.clone();
                    tokio::spawn(async move {
                        let _ = hub.store.touch_presence(mesh, offline, now).await;
                    });
                }
            }
        }
    }
}
