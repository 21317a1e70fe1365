//! One client connection, transport-agnostic: the run loop that reads frames and
//! dispatches them by the connection's state, and the cleanup when it ends. What each
//! frame does lives in a submodule named for its part of the protocol:
//! [`handshake`] (before hello: ping, mesh creation, hello, invite claims),
//! [`envelopes`] (send, ack, mailbox replay), [`presence`] (presence, depart),
//! [`admin`] (roster, invites, claim decisions), [`chunks`] (file chunks in the blob
//! store); [`writer`] drains the link's queues.
//!
//! Every refusal is an `error` frame with a stable code; fatal ones close only this
//! connection. Nothing a client sends can make the relay stop serving others: frames are
//! size-limited before parsing, parse failures are answered, and every lock is short.

mod admin;
mod chunks;
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

use crate::hub::{Hub, LinkHandle, LinkQueues, MeshEntry, error_frame, frame, lock};
use crate::limits::Slot;
use crate::store::Store;
use crate::transport::{FrameReader, FrameWriter, ReadError, Transport};

/// Serve one connection until it closes. `slot` is its place under the connection caps;
/// `hello_by` is the deadline for its hello, counted from accept.
pub(crate) async fn serve<S: Store>(
    hub: Arc<Hub<S>>,
    mut reader: FrameReader,
    writer: FrameWriter,
    remote: SocketAddr,
    transport: Transport,
    slot: Slot,
    hello_by: Instant,
) {
    hub.stats.connections.fetch_add(1, Ordering::Relaxed);
    let close = CancellationToken::new();
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let (data, data_rx) = mpsc::channel::<Bytes>(hub.cfg.send_queue);
    let queues = LinkQueues::new(hub.budget.clone(), hub.cfg.link_queue_bytes);
    let link = LinkHandle {
        id: hub.next_id(),
        tx,
        data,
        queues: queues.clone(),
        close: close.clone(),
        lagged: Arc::new(tokio::sync::Notify::new()),
    };
    let span = tracing::debug_span!("conn", id = link.id, %remote, transport = transport.as_str());
    let writer_task = hub.tasks.spawn(
        writer::write_loop(writer, rx, data_rx, close.clone(), queues).instrument(span.clone()),
    );
    let mut conn = Conn {
        hub: hub.clone(),
        link,
        remote,
        state: State::New,
        slot,
        hello_by,
        last_read: Instant::now(),
        preauth_frames: 0,
        drain: None,
        resync_pending: false,
        op_sync: None,
        upload: None,
        puts: Arc::new(tokio::sync::Semaphore::new(chunks::PUTS_IN_FLIGHT)),
    };
    async {
        let end = conn.run(&mut reader).await;
        hub.stats.closed[end.kind() as usize].fetch_add(1, Ordering::Relaxed);
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
    // The connection keeps its place under the caps until its writer is gone.
    let Conn { slot, .. } = conn;
    close.cancel();
    // The writer gets a grace period to flush its last frames; a peer that does not read
    // cannot hold the connection open past it.
    let mut writer_task = writer_task;
    if tokio::time::timeout(Duration::from_secs(10), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
        let _ = writer_task.await;
    }
    drop(slot);
    hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

enum State {
    New,
    Claiming {
        mesh: MeshId,
        claim: ClaimId,
        /// The claim outlives this connection (the claimant comes back for the answer).
        durable: bool,
        /// The connection ends if no admin decided by then (a claim that is not durable
        /// is withdrawn with it).
        until: Instant,
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
    slot: Slot,
    hello_by: Instant,
    /// When the last frame was read (the idle limit counts from it).
    last_read: Instant,
    preauth_frames: u32,
    drain: Option<tokio::task::JoinHandle<()>>,
    resync_pending: bool,
    op_sync: Option<tokio::task::JoinHandle<()>>,
    upload: Option<crate::oplog::Upload>,
    /// Chunk puts being stored for this link (each waits for its fsync): a few at once,
    /// so an upload is not one fsync per round trip and the link's other frames are not
    /// held behind them; the next put waits for a place.
    puts: Arc<tokio::sync::Semaphore>,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer closed it.
    PeerClosed,
    /// Reading failed (a reset, a protocol error of the transport).
    ReadFailed(String),
    /// This side refused it with a fatal error frame.
    Refused(ErrorCode),
    /// No hello by the deadline, a claim undecided in time, or a link silent past the idle
    /// limit.
    TimedOut,
    /// The peer stopped reading what it is sent.
    NotReading,
    /// Closed from elsewhere in the relay: replaced by a newer link, its member removed, a
    /// claim decided, its queues over their limit.
    Closed,
    /// The relay is shutting down.
    ShuttingDown,
}

/// Labels of [`End::kind`], for the `connections_closed_total` metric.
pub(crate) const END_KINDS: [&str; 7] = [
    "peer_closed",
    "read_failed",
    "refused",
    "timed_out",
    "not_reading",
    "closed_by_relay",
    "shutting_down",
];

impl End {
    /// Index into [`END_KINDS`].
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Self::PeerClosed => 0,
            Self::ReadFailed(_) => 1,
            Self::Refused(_) => 2,
            Self::TimedOut => 3,
            Self::NotReading => 4,
            Self::Closed => 5,
            Self::ShuttingDown => 6,
        }
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReadFailed(e) => write!(f, "read failed: {e}"),
            Self::Refused(code) => write!(f, "refused ({code})"),
            other => f.write_str(END_KINDS[other.kind() as usize]),
        }
    }
}

/// What the run loop does next.
enum Step {
    Frame(Bytes),
    Again,
}

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
        End::Refused(code)
    }

    /// The connection said hello: it leaves the pre-auth caps and may queue up to the full
    /// link limit.
    fn authenticated(&mut self) {
        self.slot.authenticated();
        self.link.queues.set_limit(self.hub.cfg.link_queue_bytes);
    }

    /// The deadline of the next frame: before hello, the absolute hello deadline; while a
    /// claim waits, the claim's (a claimant just waits); linked, the idle limit counted from
    /// the last frame read (waking up for other reasons does not extend it).
    fn next_deadline(&self) -> Instant {
        match &self.state {
            State::New => self.hello_by,
            State::Claiming { until, .. } => *until,
            State::Linked { .. } => {
                self.last_read + Duration::from_secs(self.hub.cfg.idle_timeout_secs)
            }
        }
    }

    async fn run(&mut self, reader: &mut FrameReader) -> End {
        loop {
            match self.next_step(reader).await {
                Ok(Step::Again) => continue,
                Ok(Step::Frame(bytes)) => {
                    if let Err(end) = self.on_bytes(bytes).await {
                        return end;
                    }
                }
                Err(end) => return end,
            }
        }
    }

    /// Wait for the next frame, or for something the loop must do first.
    async fn next_step(&mut self, reader: &mut FrameReader) -> Result<Step, End> {
        let deadline = tokio::time::Instant::from_std(self.next_deadline());
        let lagged = self.link.lagged.clone();
        let queues = self.link.queues.clone();
        // While answers to this peer pile up, stop reading from it: what it sends next
        // waits in the transport's buffers, not in the relay's memory.
        let writable = queues.wait_until(|q| !q.backed_up());
        tokio::select! {
            biased;
            _ = self.link.close.cancelled() => Err(End::Closed),
            _ = self.hub.shutdown.cancelled() => {
                self.fatal(ErrorCode::ShuttingDown, "relay is shutting down; reconnect shortly");
                Err(End::ShuttingDown)
            }
            // Live deliveries were skipped because the peer reads slower than others
            // send: replay its mailbox (from the start; the peer dedupes by id).
            _ = lagged.notified() => {
                if self.drain.as_ref().is_some_and(|d| !d.is_finished()) {
                    self.resync_pending = true;
                } else {
                    self.resync();
                }
                Ok(Step::Again)
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
                Ok(Step::Again)
            }
            r = async {
                writable.await;
                tokio::time::timeout_at(deadline, reader.next()).await
            } => self.read_result(r),
            // Paused past the deadline: the peer does not read.
            _ = tokio::time::sleep_until(deadline), if queues.backed_up() => Err(End::NotReading),
        }
    }

    fn read_result(
        &self,
        r: Result<Option<Result<Bytes, ReadError>>, tokio::time::error::Elapsed>,
    ) -> Result<Step, End> {
        match r {
            Err(_) => Err(match self.state {
                State::New => {
                    self.fatal(ErrorCode::Unexpected, "no hello within the time limit");
                    End::TimedOut
                }
                State::Claiming { until, durable, .. } if Instant::now() >= until => {
                    self.fatal(
                        ErrorCode::NoAdminOnline,
                        if durable {
                            "no admin decided the claim yet; it is kept here: send it again to wait on"
                        } else {
                            "no admin decided the claim in time; try again later"
                        },
                    );
                    End::TimedOut
                }
                _ => {
                    self.fatal(ErrorCode::Unexpected, "no frame within the idle limit");
                    End::TimedOut
                }
            }),
            Ok(None) => Err(End::PeerClosed),
            Ok(Some(Err(ReadError::TooLarge))) => Err(self.fatal(
                ErrorCode::FrameTooLarge,
                &format!("frame exceeds the {} byte limit", wire::MAX_FRAME),
            )),
            Ok(Some(Err(ReadError::NotBinary))) => {
                Err(self.fatal(ErrorCode::BadFrame, "frames must be binary messages"))
            }
            Ok(Some(Err(e))) => Err(End::ReadFailed(e.to_string())),
            Ok(Some(Ok(b))) => Ok(Step::Frame(b)),
        }
    }

    async fn on_bytes(&mut self, bytes: Bytes) -> Result<(), End> {
        self.last_read = Instant::now();
        if matches!(self.state, State::New | State::Claiming { .. }) {
            self.preauth_frames += 1;
            if self.preauth_frames > self.hub.cfg.preauth_frames {
                return Err(self.fatal(
                    ErrorCode::RateLimited,
                    "too many frames before hello; send hello first",
                ));
            }
        }
        self.hub.log_frame(&bytes);
        let f: ClientFrame = match wire::decode(&bytes) {
            Ok(f) => f,
            Err(e) => {
                return Err(self.fatal(ErrorCode::BadFrame, &format!("malformed frame: {e}")));
            }
        };
        self.dispatch(f).await
    }

    async fn dispatch(&mut self, f: ClientFrame) -> Result<(), End> {
        if let ClientFrame::Ping { n } = f {
            // A member's pings share its write budget; an unanswered ping over budget is
            // what a flood deserves (a daemon pings every 15 s).
            if let State::Linked { entry, member, .. } = &self.state
                && lock(&entry.state)
                    .limits(*member, &self.hub.cfg)
                    .writes
                    .take(Instant::now())
                    .is_err()
            {
                return Ok(());
            }
            self.push(&RelayFrame::Pong {
                n,
                server_time: now_ms(),
            });
            return Ok(());
        }
        match &self.state {
            State::New => match f {
                ClientFrame::Hello(h) => self.hello(h).await,
                ClientFrame::CreateMesh {
                    rid,
                    genesis,
                    token,
                } => self.create_mesh(rid, genesis, token).await,
                ClientFrame::Claim(req) => self.claim(req).await,
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
                    ClientFrame::Ack { ids, proofs } => {
                        self.ack(mesh, &entry, member, ids, proofs).await;
                        Ok(())
                    }
                    ClientFrame::Redeliver => {
                        // One replay at a time, as for a lagging link (a second request
                        // while one runs is one more after it), and each costs a write
                        // token: a client cannot keep the relay replaying.
                        let allowed = lock(&entry.state)
                            .limits(member, &self.hub.cfg)
                            .writes
                            .take(Instant::now())
                            .is_ok();
                        if allowed {
                            self.link.lagged.notify_one();
                        }
                        Ok(())
                    }
                    ClientFrame::ReceiptsSeen { receipts } => {
                        self.receipts_seen(mesh, member, receipts).await;
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
                        let allowed = lock(&entry.state)
                            .limits(member, &self.hub.cfg)
                            .writes
                            .take_or_retry_ms(Instant::now());
                        if let Err(retry_ms) = allowed {
                            if let Some(f) = frame(&RelayFrame::OpRefused {
                                id: env.id,
                                code: ErrorCode::RateLimited,
                                message: "member write rate exceeded".into(),
                                retry_ms: Some(retry_ms),
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
                        self.op_sync = Some(self.hub.spawn(crate::oplog::sync(
                            self.hub.clone(),
                            self.link.clone(),
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
                    ClientFrame::ChunkPut {
                        rid,
                        file,
                        id,
                        data,
                        expires_at,
                    } => {
                        let put = chunks::Put {
                            file,
                            id,
                            data,
                            expires_at,
                        };
                        self.chunk_put(rid, mesh, &entry, member, put).await;
                        Ok(())
                    }
                    ClientFrame::ChunksHeld { rid, ids } => {
                        self.chunks_held(rid, mesh, &entry, member, ids).await;
                        Ok(())
                    }
                    ClientFrame::ChunkGet { rid, id } => {
                        self.chunk_get(rid, mesh, &entry, member, id).await;
                        Ok(())
                    }
                    ClientFrame::ChunksDrop { rid, file } => {
                        self.chunks_drop(rid, mesh, &entry, member, file).await;
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
            State::Claiming {
                mesh,
                claim,
                durable,
                ..
            } => {
                if let Some(e) = self.hub.mesh(&mesh) {
                    let mut st = lock(&e.state);
                    // A claim is withdrawn only by the connection waiting on it (its
                    // claimant may have come back on a newer one, here or elsewhere).
                    let mine = st
                        .claims
                        .get(&claim)
                        .is_some_and(|c| c.claimant.as_ref().is_some_and(|l| l.id == self.link.id));
                    if !durable {
                        if mine && st.claims.remove(&claim).is_some_and(|c| c.waiting()) {
                            self.hub.bus_decided(&mesh, claim, None, 0);
                        }
                    } else if let Some(c) = st.claims.get_mut(&claim)
                        && c.claimant.as_ref().is_some_and(|l| l.id == self.link.id)
                    {
                        // The claim stays for its claimant's next connection.
                        c.claimant = None;
                    }
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
                    if st.moved.remove(&self.link.id) {
                        // Its member linked through another node, which holds its sessions.
                        drop(st);
                        self.hub.stats.links.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    match st.links.get(&member) {
                        Some(l) if l.id == self.link.id => {
                            st.links.remove(&member);
                            self.hub.hand_over_budget(&mut st, &mesh, member);
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
                            self.hub.bus_mesh(
                                &mesh,
                                crate::cluster::bus::Kind::Depart,
                                Some(&member),
                                &f,
                            );
                        }
                    }
                    gone
                };
                self.hub.stats.links.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(mesh = %mesh.short(), member = %member.short(), "link down");
                if !offline.is_empty() {
                    let hub = self.hub.clone();
                    self.hub.spawn(async move {
                        let _ = hub.store.touch_presence(mesh, offline, now).await;
                    });
                }
            }
        }
    }
}
