//! One client connection, transport-agnostic: the pre-hello phase (ping, mesh creation,
//! invite claims), the hello check, and the member link loop (send, ack, presence, roster,
//! invites, claim decisions).
//!
//! Every refusal is an `error` frame with a stable code; fatal ones close only this
//! connection. Nothing a client sends can make the relay stop serving others: frames are
//! size-limited before parsing, parse failures are answered, and every lock is short.

use bytes::Bytes;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::roster::{RosterEntry, RosterOp};
use claudemesh_schema::wire::{
    self, ClaimDecision, ClaimOutcome, ClaimRequest, ClientFrame, Envelope, ErrorCode, Hello,
    MAX_CIPHERTEXT, RelayFrame, Route, SUPPORTED_VERSIONS, Welcome,
};
use claudemesh_schema::{ClaimId, MeshId, SessionId};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::hub::{
    Hub, InviteState, LinkHandle, MeshEntry, MeshState, PendingClaim, SessionState, deliver_frame,
    error_frame, frame, lock,
};
use crate::limits::TokenBucket;
use crate::store::{NewEnvelope, Store};
use crate::transport::{FrameReader, FrameWriter, ReadError, Transport};

/// Most sessions one member may announce in a mesh.
const MAX_SESSIONS_PER_MEMBER: usize = 256;
/// Largest sealed profile a presence may carry.
const MAX_PROFILE: usize = 16 * 1024;
/// Stored envelopes sent per mailbox page on reconnect.
const MAILBOX_PAGE: usize = 512;

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
    let writer_task = tokio::spawn(write_loop(
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

async fn write_loop(
    mut writer: FrameWriter,
    mut ctl: mpsc::UnboundedReceiver<Bytes>,
    mut data: mpsc::Receiver<Bytes>,
    close: CancellationToken,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    let took = |b: Bytes| {
        queued.fetch_sub(b.len(), Ordering::Relaxed);
        b
    };
    loop {
        let first = tokio::select! {
            biased;
            // Closing: send the control frames already queued (an error frame, usually).
            _ = close.cancelled() => {
                let flush_queued = async {
                    while let Ok(b) = ctl.try_recv() {
                        if writer.feed(b).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.flush().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), flush_queued).await;
                break;
            }
            f = ctl.recv() => match f { Some(b) => took(b), None => break },
            f = data.recv() => match f { Some(b) => b, None => break },
        };
        // Write it and everything else already queued (control first), then flush once.
        let mut ok = writer.feed(first).await.is_ok();
        let mut n = 0;
        while ok && n < 1024 {
            let next = match ctl.try_recv() {
                Ok(b) => took(b),
                Err(_) => match data.try_recv() {
                    Ok(b) => b,
                    Err(_) => break,
                },
            };
            ok = writer.feed(next).await.is_ok();
            n += 1;
        }
        if !ok || writer.flush().await.is_err() {
            close.cancel();
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
}

/// Send a member its stored envelopes, oldest first. With `first` the first page is
/// already read; without, everything queued to the store is committed first, so envelopes
/// whose live copy was skipped are all in the mailbox.
async fn replay_mailbox<S: Store>(
    hub: Arc<Hub<S>>,
    data: mpsc::Sender<Bytes>,
    mesh: MeshId,
    member: MemberKey,
    first: Option<Vec<crate::store::Stored>>,
) {
    let mut page = match first {
        Some(p) => p,
        None => {
            if crate::store::flushed(&hub.store).await.is_err() {
                return;
            }
            match hub.store.mailbox(mesh, member, None, MAILBOX_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read mailbox");
                    return;
                }
            }
        }
    };
    loop {
        let Some(last) = page.last().map(|s| s.id) else {
            return;
        };
        let full = page.len() == MAILBOX_PAGE;
        for s in page {
            if data.send(deliver_frame(&s.envelope, s.at)).await.is_err() {
                return;
            }
        }
        if !full {
            return;
        }
        page = match hub
            .store
            .mailbox(mesh, member, Some(last), MAILBOX_PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read mailbox");
                return;
            }
        };
    }
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
                ClientFrame::CreateMesh {
                    rid,
                    genesis,
                    token,
                } => self.create_mesh(rid, genesis, token).await,
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

    fn check_handshake_rate(&self) -> Result<(), End> {
        if let Err(wait) = self.hub.handshake_allowed(self.remote.ip()) {
            self.hub
                .stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            self.link.push(
                frame(&RelayFrame::Error {
                    rid: None,
                    code: ErrorCode::RateLimited,
                    message: "too many handshakes from this address; retry later".into(),
                    fatal: true,
                    retry_ms: Some(wait.as_millis() as u64 + 1),
                })
                .unwrap_or_default(),
            );
            return Err("handshake rate limited".into());
        }
        Ok(())
    }

    async fn create_mesh(
        &mut self,
        rid: u64,
        genesis: claudemesh_schema::roster::MeshGenesis,
        token: Option<wire::CreationToken>,
    ) -> Result<(), End> {
        self.check_handshake_rate()?;
        let Ok(st) = MeshState::new(genesis.clone()) else {
            return Err(self.fatal(
                ErrorCode::BadSignature,
                "mesh genesis signature does not verify",
            ));
        };
        if self.hub.mesh(&genesis.mesh).is_some() {
            self.error(
                Some(rid),
                ErrorCode::MeshExists,
                "a mesh with this id already exists",
            );
            return Ok(());
        }
        if self.hub.mesh_count() as u64 >= self.hub.cfg.max_meshes {
            self.error(
                Some(rid),
                ErrorCode::QuotaExceeded,
                "this relay hosts as many meshes as it allows",
            );
            return Ok(());
        }
        // Admission last: a token's use is spent only for a creation that is stored next.
        let ip = self.remote.ip();
        if let Err(r) = self
            .hub
            .admission
            .admit(ip, &genesis.owner, token.as_ref())
            .await
        {
            self.push(&r.frame(rid));
            return Ok(());
        }
        if let Err(e) = self.hub.store.create_mesh(genesis.clone()).await {
            tracing::error!(error = %e, "cannot store new mesh");
            self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the mesh; try again",
            );
            return Ok(());
        }
        if !self.hub.insert_mesh(st) {
            self.error(
                Some(rid),
                ErrorCode::MeshExists,
                "a mesh with this id already exists",
            );
            return Ok(());
        }
        tracing::info!(mesh = %genesis.mesh.short(), "mesh created");
        self.push(&RelayFrame::Ok { rid });
        Ok(())
    }

    async fn hello(&mut self, h: Hello) -> Result<(), End> {
        self.check_handshake_rate()?;
        let now = now_ms();
        let Some(version) = h
            .versions
            .iter()
            .copied()
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max()
        else {
            return Err(self.fatal(
                ErrorCode::UnsupportedVersion,
                &format!("no common protocol version (relay speaks {SUPPORTED_VERSIONS:?}); upgrade claudemesh"),
            ));
        };
        if now.abs_diff(h.ts) > wire::HELLO_WINDOW_MS as u64 {
            return Err(self.fatal(
                ErrorCode::StaleHello,
                &format!(
                    "hello timestamp is {} s away from the relay clock (limit 60 s); check this machine's clock",
                    now.saturating_sub(h.ts) / 1000
                ),
            ));
        }
        if h.verify_sig().is_err() {
            return Err(self.fatal(ErrorCode::BadSignature, "hello signature does not verify"));
        }
        let fresh =
            lock(&self.hub.nonces).insert(h.nonce, now, now + 2 * wire::HELLO_WINDOW_MS + 1);
        if !fresh {
            return Err(self.fatal(
                ErrorCode::ReplayedHello,
                "hello nonce was already used (replay refused)",
            ));
        }
        let Some(entry) = self.hub.mesh(&h.mesh) else {
            return Err(self.fatal(ErrorCode::UnknownMesh, "this relay does not know the mesh"));
        };
        let (welcome, roster, presences, claims) = {
            let mut st = lock(&entry.state);
            if !st.roster.is_member(&h.member) {
                drop(st);
                return Err(self.fatal(
                    ErrorCode::NotAMember,
                    "this key is not a member of the mesh",
                ));
            }
            if let Some(old) = st.links.insert(h.member, self.link.clone()) {
                old.push(error_frame(
                    None,
                    ErrorCode::Replaced,
                    "a newer connection of this member replaced this one",
                    true,
                ));
                old.close.cancel();
            }
            let welcome = Welcome {
                version,
                server_time: now,
                genesis: st.genesis.clone(),
                roster_entries: st.entries.len() as u64,
                presences: st.sessions.len() as u64,
                max_ciphertext: MAX_CIPHERTEXT as u64,
            };
            let roster: Vec<RelayFrame> = st
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| RelayFrame::Roster {
                    seq: i as u64,
                    entry: e.clone(),
                })
                .collect();
            let presences: Vec<RelayFrame> = st
                .sessions
                .values()
                .map(|s| RelayFrame::Presence(s.record()))
                .collect();
            let is_admin = st.roster.role(&h.member).is_some_and(|r| r.is_admin());
            let claims: Vec<RelayFrame> = if is_admin {
                st.claims
                    .iter()
                    .map(|(id, c)| RelayFrame::ClaimPending {
                        claim: *id,
                        request: c.request.clone(),
                        cap: c.cap.clone(),
                        at: c.at,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (welcome, roster, presences, claims)
        };
        self.hub.stats.links.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(mesh = %h.mesh.short(), member = %h.member.short(), "link up");
        self.state = State::Linked {
            mesh: h.mesh,
            entry: entry.clone(),
            member: h.member,
        };
        self.push(&RelayFrame::Welcome(welcome));
        for f in roster.iter().chain(presences.iter()) {
            self.push(f);
        }
        // Sends that resolved this member as offline just before the link was registered
        // may still be in the store queue: wait for them, so the mailbox read sees them.
        if let Err(e) = crate::store::flushed(&self.hub.store).await {
            tracing::error!(error = %e, "store flush failed");
        }
        // Count the mailbox for `ready`, then stream it from a task so acks are read
        // concurrently.
        let first = self
            .hub
            .store
            .mailbox(h.mesh, h.member, None, MAILBOX_PAGE)
            .await;
        let first = match first {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot read mailbox");
                Vec::new()
            }
        };
        self.push(&RelayFrame::Ready {
            queued: first.len() as u64,
        });
        for f in &claims {
            self.push(f);
        }
        if !first.is_empty() {
            self.drain = Some(tokio::spawn(replay_mailbox(
                self.hub.clone(),
                self.link.data.clone(),
                h.mesh,
                h.member,
                Some(first),
            )));
        }
        Ok(())
    }

    fn claim(&mut self, req: ClaimRequest) -> Result<(), End> {
        self.check_handshake_rate()?;
        let now = now_ms();
        let Some(mesh) = self.hub.invite_mesh(&req.invite) else {
            return Err(self.fatal(
                ErrorCode::InviteUnknown,
                "this relay does not know the invite; check the link",
            ));
        };
        let Some(entry) = self.hub.mesh(&mesh) else {
            return Err(self.fatal(
                ErrorCode::InviteUnknown,
                "this relay does not know the invite; check the link",
            ));
        };
        let claim = ClaimId::new();
        let (admins, cap) = {
            let mut st = lock(&entry.state);
            let Some(inv) = st.invites.get(&req.invite).cloned() else {
                drop(st);
                return Err(self.fatal(
                    ErrorCode::InviteUnknown,
                    "this relay does not know the invite",
                ));
            };
            if let Some((code, msg)) = inv.refusal(now) {
                drop(st);
                return Err(self.fatal(code, msg));
            }
            if st.roster.is_member(&req.member) {
                drop(st);
                return Err(self.fatal(ErrorCode::ClaimRefused, "this key is already a member"));
            }
            let admins = st.admin_links();
            st.claims.insert(
                claim,
                PendingClaim {
                    request: req.clone(),
                    cap: inv.cap.clone(),
                    at: now,
                    claimant: self.link.clone(),
                },
            );
            (admins, inv.cap)
        };
        tracing::info!(mesh = %mesh.short(), claim = %claim.short(), admins = admins.len(), "invite claim waiting");
        let pending = frame(&RelayFrame::ClaimPending {
            claim,
            request: req,
            cap: cap.clone(),
            at: now,
        });
        if let Some(p) = pending {
            for a in &admins {
                a.push(p.clone());
            }
        }
        self.push(&RelayFrame::ClaimWaiting {
            claim,
            admins_online: admins.len() as u32,
            approve: cap.approve,
        });
        self.state = State::Claiming { mesh, claim };
        Ok(())
    }

    fn refuse(
        &self,
        id: claudemesh_schema::MessageId,
        code: ErrorCode,
        message: String,
        retry_ms: Option<u64>,
    ) {
        self.push(&RelayFrame::Refused {
            id,
            code,
            message,
            retry_ms,
        });
    }

    async fn send(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        env: Envelope,
    ) {
        let id = env.id;
        if env.from_member != member {
            return self.refuse(
                id,
                ErrorCode::NotAuthorized,
                "from_member is not the member of this link".into(),
                None,
            );
        }
        if env.ct.len() > MAX_CIPHERTEXT {
            return self.refuse(
                id,
                ErrorCode::FrameTooLarge,
                format!("ciphertext exceeds the {MAX_CIPHERTEXT} byte limit"),
                None,
            );
        }
        if let Err(wait) = self.rate.take(Instant::now()) {
            return self.refuse(
                id,
                ErrorCode::RateLimited,
                "member message rate exceeded".into(),
                Some(wait.as_millis() as u64 + 1),
            );
        }
        let now = now_ms();
        let tx = self.link.clone();
        // A resend of something recently accepted is not forwarded live again, but it goes
        // through the store like any send: the insert is a no-op if the first copy was
        // committed, and stores it if that write failed.
        let resend = lock(&self.hub.recent).contains(&id);
        let env_json = match serde_json::to_vec(&env) {
            Ok(v) => Bytes::from(v),
            Err(_) => {
                return self.refuse(
                    id,
                    ErrorCode::BadFrame,
                    "cannot encode envelope".into(),
                    None,
                );
            }
        };
        let size = env_json.len() as u64;
        let (recipients, online) = {
            let mut st = lock(&entry.state);
            let recipients = match resolve(&st, &member, &env.to) {
                Ok(r) => r,
                Err(msg) => {
                    drop(st);
                    return self.refuse(id, ErrorCode::UnknownRecipient, msg, None);
                }
            };
            if recipients.is_empty() {
                // Nobody else in the mesh: nothing to store or forward.
                drop(st);
                self.push(&RelayFrame::Relayed { id, at: now });
                return;
            }
            if st.stored.0 + 1 > self.hub.cfg.mesh_quota_messages
                || st.stored.1 + size > self.hub.cfg.mesh_quota_bytes
            {
                drop(st);
                return self.refuse(
                    id,
                    ErrorCode::QuotaExceeded,
                    "the mesh's undelivered-message quota at the relay is full".into(),
                    Some(5_000),
                );
            }
            st.stored.0 += 1;
            st.stored.1 += size;
            let online: Vec<LinkHandle> = recipients
                .iter()
                .filter_map(|m| st.links.get(m).cloned())
                .collect();
            (recipients, online)
        };
        // Accepted: from now on a resend of this id is a duplicate (until a store failure
        // below takes that back).
        lock(&self.hub.recent).insert(id);
        let kind = match &env.to {
            Route::Session { .. } => 0,
            Route::Member { .. } => 1,
            Route::Sessions { .. } => 2,
            Route::All => 3,
        };
        self.hub.stats.routed[kind].fetch_add(1, Ordering::Relaxed);
        let accepted = Instant::now();
        // Forward at once; the relay's copy is committed in the background and the sender
        // hears `relayed` only after that commit.
        if !resend {
            let deliver = deliver_frame(&env_json, now);
            for l in &online {
                l.push_data(deliver.clone());
            }
        }
        self.hub.stats.envelopes.fetch_add(1, Ordering::Relaxed);
        let relayed = frame(&RelayFrame::Relayed { id, at: now });
        let internal = frame(&RelayFrame::Refused {
            id,
            code: ErrorCode::Internal,
            message: "relay could not store the message; it will be retried".into(),
            retry_ms: Some(1_000),
        });
        let entry2 = entry.clone();
        let hub = self.hub.clone();
        let rec = NewEnvelope {
            id,
            mesh,
            sender: member,
            envelope: env_json,
            recipients,
            at: now,
            expires_at: now + self.hub.cfg.message_ttl_secs as i64 * 1000,
        };
        let res = self
            .hub
            .store
            .put_envelope(
                rec,
                Box::new(move |r| {
                    let release = |st: &mut MeshState| {
                        st.stored.0 = st.stored.0.saturating_sub(1);
                        st.stored.1 = st.stored.1.saturating_sub(size);
                    };
                    hub.stats.envelope_commit.observe(accepted.elapsed());
                    match r {
                        Ok(new) => {
                            if !new {
                                release(&mut lock(&entry2.state));
                            }
                            if let Some(f) = relayed {
                                tx.push(f);
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot store envelope");
                            lock(&hub.recent).remove(&id);
                            release(&mut lock(&entry2.state));
                            if let Some(f) = internal {
                                tx.push(f);
                            }
                        }
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    async fn ack(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        ids: Vec<claudemesh_schema::MessageId>,
    ) {
        if ids.is_empty() {
            return;
        }
        let now = now_ms();
        let entry2 = entry.clone();
        let dedupe_until = now + self.hub.cfg.dedupe_window_secs as i64 * 1000;
        let res = self
            .hub
            .store
            .ack(
                mesh,
                member,
                ids,
                dedupe_until,
                Box::new(move |r| {
                    let Ok(acked) = r else { return };
                    let mut st = lock(&entry2.state);
                    for a in acked {
                        if let Some(b) = a.freed {
                            st.stored.0 = st.stored.0.saturating_sub(1);
                            st.stored.1 = st.stored.1.saturating_sub(b);
                        }
                        if let Some(l) = st.links.get(&a.sender)
                            && let Some(f) = frame(&RelayFrame::Receipt {
                                id: a.id,
                                member,
                                at: now,
                            })
                        {
                            l.push(f);
                        }
                    }
                }),
            )
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "store unavailable");
        }
    }

    async fn presence(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        p: claudemesh_schema::message::SignedPresence,
    ) -> Result<(), End> {
        if p.mesh != mesh || p.member != member {
            self.error(
                None,
                ErrorCode::NotAuthorized,
                "presence must be for this mesh and member",
            );
            return Ok(());
        }
        if p.profile.len() > MAX_PROFILE {
            self.error(
                None,
                ErrorCode::FrameTooLarge,
                "presence profile exceeds 16 KiB",
            );
            return Ok(());
        }
        // Presence updates share the member's message budget.
        if self.rate.take(Instant::now()).is_err() {
            self.error(None, ErrorCode::RateLimited, "too many updates; slow down");
            return Ok(());
        }
        if p.verify().is_err() {
            self.error(
                None,
                ErrorCode::BadSignature,
                "presence signature does not verify",
            );
            return Ok(());
        }
        let now = now_ms();
        let record = {
            let mut st = lock(&entry.state);
            if let Some(old) = st.sessions.get(&p.session) {
                if old.presence.member != member {
                    drop(st);
                    self.error(
                        None,
                        ErrorCode::NotAuthorized,
                        "session belongs to another member",
                    );
                    return Ok(());
                }
                if old.presence.seq > p.seq && old.online {
                    return Ok(());
                }
            } else {
                let n = st
                    .sessions
                    .values()
                    .filter(|s| s.presence.member == member)
                    .count();
                if n >= MAX_SESSIONS_PER_MEMBER {
                    drop(st);
                    self.error(
                        None,
                        ErrorCode::QuotaExceeded,
                        "too many sessions for this member",
                    );
                    return Ok(());
                }
            }
            let s = SessionState {
                presence: p.clone(),
                online: true,
                last_seen: now,
            };
            let rec = s.record();
            st.sessions.insert(p.session, s);
            if let Some(f) = frame(&RelayFrame::Presence(rec.clone())) {
                st.broadcast(&f, Some(&member));
            }
            rec
        };
        let _ = self.hub.store.put_presence(record.presence, now).await;
        Ok(())
    }

    async fn depart(
        &mut self,
        mesh: MeshId,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        session: SessionId,
    ) {
        let now = now_ms();
        {
            let mut st = lock(&entry.state);
            let Some(s) = st.sessions.get_mut(&session) else {
                return;
            };
            if s.presence.member != member {
                return;
            }
            s.online = false;
            s.last_seen = now;
            if let Some(f) = frame(&RelayFrame::Depart { session, at: now }) {
                st.broadcast(&f, Some(&member));
            }
        }
        let _ = self
            .hub
            .store
            .touch_presence(mesh, vec![session], now)
            .await;
    }

    async fn roster(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        e: RosterEntry,
    ) {
        if e.invite.is_some() {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "admissions through invites go through claims",
            );
        }
        if e.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "entries must be signed by this link's member",
            );
        }
        let _guard = entry.admin.lock().await;
        let seq = {
            let st = lock(&entry.state);
            if let Err(err) = st.roster.check(&e) {
                drop(st);
                return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
            }
            if e.op == RosterOp::Add
                && st.roster.members().count() as u64 >= self.hub.cfg.max_members
            {
                drop(st);
                return self.error(
                    Some(rid),
                    ErrorCode::QuotaExceeded,
                    "the mesh has as many members as this relay allows",
                );
            }
            st.entries.len() as u64
        };
        if let Err(err) = self.hub.store.append_roster(seq, e.clone()).await {
            tracing::error!(error = %err, "cannot store roster entry");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the change; try again",
            );
        }
        let removed_link = {
            let mut st = lock(&entry.state);
            if st.roster.apply(&e).is_err() {
                return self.error(
                    Some(rid),
                    ErrorCode::Internal,
                    "roster changed concurrently; try again",
                );
            }
            st.entries.push(e.clone());
            if let Some(f) = frame(&RelayFrame::Roster {
                seq,
                entry: e.clone(),
            }) {
                st.broadcast(&f, None);
            }
            if e.op == RosterOp::Remove {
                st.links.remove(&e.member)
            } else {
                None
            }
        };
        if let Some(l) = removed_link {
            l.push(error_frame(
                None,
                ErrorCode::NotAMember,
                "this member was removed from the mesh",
                true,
            ));
            l.close.cancel();
        }
        if e.op == RosterOp::Remove {
            match self.hub.store.drop_mailbox(e.mesh, e.member).await {
                Ok((n, bytes)) => {
                    let mut st = lock(&entry.state);
                    st.stored.0 = st.stored.0.saturating_sub(n);
                    st.stored.1 = st.stored.1.saturating_sub(bytes);
                }
                Err(err) => tracing::warn!(error = %err, "cannot drop a removed member's mailbox"),
            }
        }
        self.push(&RelayFrame::Ok { rid });
    }

    async fn invite_publish(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        cap: claudemesh_schema::roster::InviteCap,
    ) {
        if cap.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "invites must be signed by this link's member",
            );
        }
        let _guard = entry.admin.lock().await;
        {
            let st = lock(&entry.state);
            if let Err(err) = cap.verify(&st.roster) {
                drop(st);
                return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
            }
        }
        if self.hub.invite_mesh(&cap.id).is_some() {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "an invite with this id already exists",
            );
        }
        if let Err(err) = self.hub.store.put_invite(cap.clone()).await {
            tracing::error!(error = %err, "cannot store invite");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the invite; try again",
            );
        }
        self.hub.index_invite(cap.id, cap.mesh);
        lock(&entry.state)
            .invites
            .entry(cap.id)
            .or_insert(InviteState {
                cap,
                uses: 0,
                revoked: false,
            });
        self.push(&RelayFrame::Ok { rid });
    }

    async fn invite_revoke(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        rev: claudemesh_schema::roster::InviteRevocation,
    ) {
        if rev.by != member {
            return self.error(
                Some(rid),
                ErrorCode::NotAuthorized,
                "revocations must be signed by this link's member",
            );
        }
        let _guard = entry.admin.lock().await;
        {
            let st = lock(&entry.state);
            if let Err(err) = rev.verify(&st.roster) {
                drop(st);
                return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
            }
            if !st.invites.contains_key(&rev.id) {
                drop(st);
                return self.error(Some(rid), ErrorCode::InviteUnknown, "no such invite");
            }
        }
        if let Err(err) = self.hub.store.revoke_invite(rev.id, rev.at).await {
            tracing::error!(error = %err, "cannot store revocation");
            return self.error(
                Some(rid),
                ErrorCode::Internal,
                "relay could not store the revocation; try again",
            );
        }
        let refused: Vec<PendingClaim> = {
            let mut st = lock(&entry.state);
            if let Some(i) = st.invites.get_mut(&rev.id) {
                i.revoked = true;
            }
            let ids: Vec<ClaimId> = st
                .claims
                .iter()
                .filter(|(_, c)| c.cap.id == rev.id)
                .map(|(k, _)| *k)
                .collect();
            ids.iter().filter_map(|k| st.claims.remove(k)).collect()
        };
        for c in refused {
            finish_claim(
                &c.claimant,
                ClaimOutcome::Refused {
                    code: ErrorCode::InviteRevoked,
                    message: "the invite was revoked".into(),
                },
            );
        }
        self.push(&RelayFrame::Ok { rid });
    }

    async fn claim_decision(
        &mut self,
        rid: u64,
        entry: &Arc<MeshEntry>,
        member: MemberKey,
        d: ClaimDecision,
    ) {
        let now = now_ms();
        let _guard = entry.admin.lock().await;
        match d {
            ClaimDecision::Refuse { claim, reason } => {
                let c = {
                    let mut st = lock(&entry.state);
                    if !st.roster.role(&member).is_some_and(|r| r.is_admin()) {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "only admins decide claims",
                        );
                    }
                    st.claims.remove(&claim)
                };
                let Some(c) = c else {
                    return self.error(
                        Some(rid),
                        ErrorCode::Unexpected,
                        "claim already decided or withdrawn",
                    );
                };
                finish_claim(
                    &c.claimant,
                    ClaimOutcome::Refused {
                        code: ErrorCode::ClaimRefused,
                        message: reason,
                    },
                );
                self.push(&RelayFrame::Ok { rid });
            }
            ClaimDecision::Accept {
                claim,
                entry: e,
                sealed,
                mac,
            } => {
                let (c, seq, genesis) = {
                    let mut st = lock(&entry.state);
                    if !st.roster.role(&member).is_some_and(|r| r.is_admin()) {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "only admins decide claims",
                        );
                    }
                    let Some(c) = st.claims.get(&claim) else {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::Unexpected,
                            "claim already decided or withdrawn",
                        );
                    };
                    let valid = e.op == RosterOp::Add
                        && e.member == c.request.member
                        && e.role == c.cap.role
                        && e.invite == Some(c.cap.id)
                        && e.by == member;
                    if !valid {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::NotAuthorized,
                            "entry does not match the claim",
                        );
                    }
                    if let Err(err) = st.roster.check(&e) {
                        drop(st);
                        return self.error(Some(rid), ErrorCode::NotAuthorized, &err.to_string());
                    }
                    if st.roster.members().count() as u64 >= self.hub.cfg.max_members {
                        drop(st);
                        return self.error(
                            Some(rid),
                            ErrorCode::QuotaExceeded,
                            "the mesh has as many members as this relay allows",
                        );
                    }
                    let cap_id = c.cap.id;
                    let refusal = st.invites.get(&cap_id).map(|i| i.refusal(now));
                    match refusal {
                        None => {
                            drop(st);
                            return self.error(
                                Some(rid),
                                ErrorCode::InviteUnknown,
                                "invite unknown",
                            );
                        }
                        Some(Some((code, msg))) => {
                            let c = st.claims.remove(&claim);
                            drop(st);
                            if let Some(c) = c {
                                finish_claim(
                                    &c.claimant,
                                    ClaimOutcome::Refused {
                                        code,
                                        message: msg.into(),
                                    },
                                );
                            }
                            return self.error(Some(rid), code, msg);
                        }
                        Some(None) => {}
                    }
                    let Some(c) = st.claims.remove(&claim) else {
                        return;
                    };
                    if let Some(i) = st.invites.get_mut(&cap_id) {
                        i.uses += 1;
                    }
                    (c, st.entries.len() as u64, st.genesis.clone())
                };
                if let Err(err) = self.hub.store.append_roster(seq, e.clone()).await {
                    tracing::error!(error = %err, "cannot store admission");
                    let mut st = lock(&entry.state);
                    if let Some(i) = st.invites.get_mut(&c.cap.id) {
                        i.uses = i.uses.saturating_sub(1);
                    }
                    st.claims.insert(claim, c);
                    drop(st);
                    return self.error(
                        Some(rid),
                        ErrorCode::Internal,
                        "relay could not store the admission; try again",
                    );
                }
                {
                    let mut st = lock(&entry.state);
                    if let Err(err) = st.roster.apply(&e) {
                        tracing::error!(error = %err, "admission no longer valid after store");
                    } else {
                        st.entries.push(e.clone());
                        if let Some(f) = frame(&RelayFrame::Roster {
                            seq,
                            entry: e.clone(),
                        }) {
                            st.broadcast(&f, None);
                        }
                    }
                }
                tracing::info!(mesh = %e.mesh.short(), member = %e.member.short(), "member admitted through invite");
                finish_claim(
                    &c.claimant,
                    ClaimOutcome::Accepted {
                        claim,
                        genesis,
                        entry: e,
                        sealed,
                        mac,
                    },
                );
                self.push(&RelayFrame::Ok { rid });
            }
        }
    }

    fn resync(&mut self) {
        let State::Linked { mesh, member, .. } = &self.state else {
            return;
        };
        tracing::debug!(link = self.link.id, "link lagging; replaying its mailbox");
        self.drain = Some(tokio::spawn(replay_mailbox(
            self.hub.clone(),
            self.link.data.clone(),
            *mesh,
            *member,
            None,
        )));
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

fn finish_claim(claimant: &LinkHandle, outcome: ClaimOutcome) {
    if let Some(f) = frame(&RelayFrame::ClaimResult(outcome)) {
        claimant.push(f);
    }
    claimant.close.cancel();
}

/// Which members an envelope goes to.
fn resolve(st: &MeshState, sender: &MemberKey, route: &Route) -> Result<Vec<MemberKey>, String> {
    let member_of = |s: &SessionId| -> Option<MemberKey> {
        st.sessions
            .get(s)
            .map(|x| x.presence.member)
            .filter(|m| st.roster.is_member(m))
    };
    match route {
        Route::Session { session } => member_of(session)
            .map(|m| vec![m])
            .ok_or_else(|| format!("unknown session {}", session.short())),
        Route::Member { member } => {
            if st.roster.is_member(member) {
                Ok(vec![*member])
            } else {
                Err(format!("{} is not a member", member.short()))
            }
        }
        Route::Sessions { sessions } => {
            let mut out: Vec<MemberKey> = sessions.iter().filter_map(member_of).collect();
            out.sort();
            out.dedup();
            if out.is_empty() {
                Err("none of the listed sessions is known".into())
            } else {
                Ok(out)
            }
        }
        Route::All => Ok(st
            .roster
            .members()
            .map(|(m, _)| *m)
            .filter(|m| m != sender)
            .collect()),
    }
}
