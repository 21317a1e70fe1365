//! One relay link per joined mesh: connect (QUIC, then WebSocket), say hello, fold the
//! roster and presence snapshot, drain the outbox, then relay frames both ways until the
//! connection drops; reconnect with exponential backoff and jitter.
//!
//! Delivery invariant: an incoming envelope is acknowledged to the relay only after its
//! inbox row is committed, and an outgoing one leaves the outbox only after the relay said
//! `relayed` (which it says only after its own commit). Everything in between is resent
//! and deduped by message id.

use bytes::Bytes;
use claudemesh_relay::{ConnectOptions, Connection};
use claudemesh_schema::ipc::methods::LinkState;
use claudemesh_schema::message::SignedPresence;
use claudemesh_schema::now_ms;
use claudemesh_schema::roster::{RosterEntry, RosterOp};
use claudemesh_schema::wire::{self, ClientFrame, ErrorCode, Hello, PresenceRecord, RelayFrame};
use claudemesh_schema::{MessageId, SessionId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

use crate::context::Daemon;
use crate::mesh::{LinkCmd, LinkStatus, MeshCtx, RelayRefusal, lock};
use crate::store::PresenceRow;

/// Client name sent in hellos.
pub(crate) const CLIENT: &str = concat!("claudemesh/", env!("CARGO_PKG_VERSION"));
const INITIAL_BACKOFF_MS: u64 = 250;
const PING_EVERY: Duration = Duration::from_secs(15);
const IDLE_LIMIT: Duration = Duration::from_secs(45);

enum Outcome {
    /// The mesh was left or the daemon stops.
    Stopped,
    /// Try again after the usual backoff.
    Retry(String),
    /// The relay refused us for a reason that will not fix itself soon.
    Refused(String),
}

fn jitter(ms: u64) -> Duration {
    let r = u32::from_le_bytes(claudemesh_schema::crypto::random_bytes::<4>());
    let factor = 0.5 + (r as f64 / u32::MAX as f64);
    Duration::from_millis((ms as f64 * factor) as u64)
}

pub(crate) async fn run(
    d: Arc<Daemon>,
    m: Arc<MeshCtx>,
    mut rx: mpsc::Receiver<LinkCmd>,
    status: watch::Sender<LinkStatus>,
) {
    let mut backoff = INITIAL_BACKOFF_MS;
    let opts = ConnectOptions {
        quic: d.cfg.link.quic,
        websocket: d.cfg.link.websocket,
        quic_timeout: Duration::from_millis(d.cfg.link.quic_timeout_ms),
        ws_timeout: Duration::from_millis(d.cfg.link.ws_timeout_ms),
    };
    loop {
        if m.stop.is_cancelled() {
            break;
        }
        status.send_modify(|s| {
            s.state = LinkState::Connecting;
            s.transport = None;
        });
        d.bump_changes();
        let held = *m.paused.borrow();
        if held {
            status.send_modify(|s| {
                s.state = LinkState::Offline;
                s.last_error = Some("link held down (`claudemesh debug link up` resumes)".into());
            });
            d.bump_changes();
            let mut p = m.paused.subscribe();
            tokio::select! {
                biased;
                _ = m.stop.cancelled() => break,
                _ = async { let _ = p.wait_for(|x| !*x).await; } => {}
                _ = drain_while_down(&mut rx) => return,
            }
            continue;
        }
        let (relay, fp) = {
            let r = lock(&m.row);
            (r.relay.clone(), r.relay_fp)
        };
        let conn = tokio::select! {
            biased;
            _ = m.stop.cancelled() => break,
            c = claudemesh_relay::connect(&relay, Some(fp), &opts) => c,
        };
        let started = Instant::now();
        let outcome = match conn {
            Ok(c) => {
                tracing::debug!(mesh = %m.id.short(), transport = c.transport.as_str(), "connected to relay");
                session(&d, &m, c, &mut rx, &status).await
            }
            Err(e) => Outcome::Retry(e.to_string()),
        };
        let (err, mut delay) = match outcome {
            Outcome::Stopped => break,
            Outcome::Retry(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = INITIAL_BACKOFF_MS;
                }
                let dl = jitter(backoff);
                backoff = (backoff * 2).min(d.cfg.link.max_backoff_ms.max(INITIAL_BACKOFF_MS));
                (e, dl)
            }
            Outcome::Refused(e) => (e, jitter(300_000)),
        };
        if delay.is_zero() {
            delay = Duration::from_millis(1);
        }
        tracing::info!(mesh = %m.id.short(), error = %err, retry_in_ms = delay.as_millis() as u64, "relay link down");
        status.send_modify(|s| {
            s.state = LinkState::Connecting;
            s.transport = None;
            s.last_error = Some(err);
        });
        d.bump_changes();
        fail_waiters(&m);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = m.stop.cancelled() => {
                    status.send_modify(|s| s.state = LinkState::Offline);
                    d.bump_changes();
                    return;
                }
                _ = &mut sleep => break,
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(c) => refuse_while_down(c),
                },
            }
        }
    }
    status.send_modify(|s| {
        s.state = LinkState::Offline;
        s.transport = None;
    });
    d.bump_changes();
}

/// `send` calls waiting for `relayed` learn the link dropped: their message stays queued.
/// Answer a command that needs the relay while the link is down.
fn refuse_while_down(cmd: LinkCmd) {
    let down = || RelayRefusal {
        code: None,
        message: "the relay is not reachable right now".into(),
    };
    match cmd {
        LinkCmd::Request(_, reply) => {
            let _ = reply.send(Err(down()));
        }
        LinkCmd::ReadOps(_, _, reply) => {
            let _ = reply.send(Err(down()));
        }
        // Outbox entries and ops are already durable; they go out on reconnect.
        _ => {}
    }
}

/// Answer commands until the channel closes (used while the link is held down).
async fn drain_while_down(rx: &mut mpsc::Receiver<LinkCmd>) {
    while let Some(c) = rx.recv().await {
        refuse_while_down(c);
    }
}

fn fail_waiters(m: &MeshCtx) {
    lock(&m.waiters).clear();
}

async fn write(c: &mut Connection, f: &ClientFrame) -> Result<(), String> {
    let b = wire::encode(f).map_err(|e| e.to_string())?;
    c.writer
        .send(Bytes::from(b))
        .await
        .map_err(|e| e.to_string())
}

/// Signed presences of the sessions this daemon holds in the mesh: `only` one, or all
/// (its own and every announced hosted one), with the cache rows that record them locally.
fn presence_frames(
    d: &Daemon,
    m: &MeshCtx,
    only: Option<SessionId>,
) -> Vec<(ClientFrame, PresenceRow)> {
    let now = now_ms();
    let mut all = Vec::new();
    if only.is_none_or(|s| s == m.keys.session) {
        all.push((
            m.keys.session,
            m.keys.session_secret.public(),
            m.profile(&d.hostname),
        ));
    }
    for (sid, l) in lock(&m.sessions)
        .iter()
        .filter(|(s, l)| l.open && l.announced && only.is_none_or(|o| o == **s))
    {
        let mut profile = l.profile.clone();
        profile.hostname = d.hostname.clone();
        all.push((*sid, l.secret.public(), profile));
    }
    let mut out = Vec::new();
    for (sid, key, profile) in all {
        match SignedPresence::sign(
            &m.keys.mesh_key,
            &m.keys.member,
            m.id,
            sid,
            key,
            now,
            &profile,
        ) {
            Ok(p) => {
                let row = PresenceRow {
                    mesh: m.id,
                    session: sid,
                    member: m.member(),
                    session_key: key,
                    seq: now,
                    profile,
                    online: true,
                    last_seen: now,
                };
                out.push((ClientFrame::Presence(p), row));
            }
            Err(e) => tracing::error!(error = %e, "cannot seal presence"),
        }
    }
    out
}

/// Send our presences (`only` one, or all) and record them in the local cache.
async fn publish(
    d: &Daemon,
    m: &MeshCtx,
    c: &mut Connection,
    only: Option<SessionId>,
) -> Result<(), String> {
    for (f, row) in presence_frames(d, m, only) {
        write(c, &f).await?;
        if row.session != m.keys.session {
            let _ = d.store.upsert_presence(row).await;
        }
    }
    d.bump_changes();
    Ok(())
}

async fn read_frame(c: &mut Connection, limit: Duration) -> Result<RelayFrame, String> {
    match tokio::time::timeout(limit, c.reader.next()).await {
        Err(_) => Err("relay went silent".into()),
        Ok(None) => Err("relay closed the connection".into()),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(b))) => {
            wire::decode::<RelayFrame>(&b).map_err(|e| format!("bad frame from relay: {e}"))
        }
    }
}

fn refusal_outcome(code: ErrorCode, message: &str) -> Outcome {
    let text = format!("relay refused the link ({code}): {message}");
    match code {
        ErrorCode::NotAMember
        | ErrorCode::UnknownMesh
        | ErrorCode::UnsupportedVersion
        | ErrorCode::BadSignature => Outcome::Refused(text),
        _ => Outcome::Retry(text),
    }
}

async fn session(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    mut c: Connection,
    rx: &mut mpsc::Receiver<LinkCmd>,
    status: &watch::Sender<LinkStatus>,
) -> Outcome {
    let hello = Hello::sign(
        &m.keys.member,
        m.id,
        m.keys.session,
        m.keys.session_secret.public(),
        now_ms(),
        CLIENT,
    );
    if let Err(e) = write(&mut c, &ClientFrame::Hello(hello)).await {
        return Outcome::Retry(e);
    }
    let welcome = match read_frame(&mut c, Duration::from_secs(10)).await {
        Ok(RelayFrame::Welcome(w)) => w,
        Ok(RelayFrame::Error { code, message, .. }) => return refusal_outcome(code, &message),
        Ok(_) => return Outcome::Retry("relay answered hello with an unexpected frame".into()),
        Err(e) => return Outcome::Retry(e),
    };
    if welcome.genesis.mesh != m.id || welcome.genesis != lock(&m.row).genesis {
        return Outcome::Refused("relay presented a different mesh genesis than ours".into());
    }
    let skew = welcome.server_time - now_ms();
    let _ = d.store.all_offline(m.id).await;
    d.bump_changes();
    // Snapshot: roster entries, presences, then `ready`.
    let mut presences = Vec::new();
    loop {
        match read_frame(&mut c, Duration::from_secs(30)).await {
            Ok(RelayFrame::Roster { seq, entry }) => {
                if let Err(o) = on_roster(d, m, seq, entry).await {
                    return o;
                }
            }
            Ok(RelayFrame::Presence(rec)) => presences.push(rec),
            Ok(RelayFrame::Ready { .. }) => break,
            Ok(RelayFrame::Error {
                code,
                message,
                fatal: true,
                ..
            }) => return refusal_outcome(code, &message),
            Ok(other) => {
                tracing::debug!(frame = ?std::mem::discriminant(&other), "ignored frame before ready")
            }
            Err(e) => return Outcome::Retry(e),
        }
    }
    for rec in presences {
        on_presence(d, m, rec).await;
    }
    status.send_modify(|s| {
        s.state = LinkState::Connected;
        s.transport = Some(c.transport);
        s.last_error = None;
        s.skew_ms = Some(skew);
    });
    d.bump_changes();
    tracing::info!(mesh = %m.id.short(), transport = c.transport.as_str(), "relay link up");
    if let Err(e) = publish(d, m, &mut c, None).await {
        return Outcome::Retry(e);
    }
    // Drain the outbox in order.
    let mut in_flight: HashMap<MessageId, Bytes> = HashMap::new();
    let id = m.id;
    let queued = match d
        .store
        .read(move |conn| crate::store::q_outbox(conn, id))
        .await
    {
        Ok(q) => q,
        Err(e) => return Outcome::Retry(format!("cannot read outbox: {e}")),
    };
    for (id, frame) in queued {
        let b = Bytes::from(frame);
        if c.writer.feed(b.clone()).await.is_err() {
            return Outcome::Retry("write failed".into());
        }
        in_flight.insert(id, b);
    }
    if c.writer.flush().await.is_err() {
        return Outcome::Retry("write failed".into());
    }
    let mut lo = match crate::shared::oplog::start(d, m, &mut c).await {
        Ok(lo) => lo,
        Err(e) => return Outcome::Retry(e),
    };
    let mut paused = m.paused.subscribe();

    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<MessageId>();
    let mut pending: HashMap<u64, oneshot::Sender<Result<(), RelayRefusal>>> = HashMap::new();
    let mut next_rid: u64 = 1;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut ping_n = 0u64;
    let outcome = loop {
        tokio::select! {
            biased;
            _ = m.stop.cancelled() => break Outcome::Stopped,
            _ = async { let _ = paused.wait_for(|p| *p).await; } => break Outcome::Retry("link held down".into()),
            // Applying ops failed: sync again from the stored head.
            _ = m.resync.notified() => {
                let mesh = m.id;
                let _ = d.store.flush().await;
                let r = match d.store.read(move |c| crate::shared::query::q_head(c, mesh)).await {
                    Ok(h) => {
                        let next = h.map(|x| x.0).unwrap_or(0) + 1;
                        lo.reset(next);
                        write(&mut c, &ClientFrame::OpSync { from: next }).await
                    }
                    Err(e) => Err(format!("cannot read the op log: {e}")),
                };
                if let Err(e) = r {
                    break Outcome::Retry(e);
                }
            }
            Some(first) = ack_rx.recv() => {
                let mut ids = vec![first];
                while let Ok(id) = ack_rx.try_recv() {
                    ids.push(id);
                    if ids.len() >= 1024 {
                        break;
                    }
                }
                if let Err(e) = write(&mut c, &ClientFrame::Ack { ids }).await {
                    break Outcome::Retry(e);
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break Outcome::Stopped };
                let r = match cmd {
                    LinkCmd::Send(id, frame) => {
                        match in_flight.entry(id) {
                            std::collections::hash_map::Entry::Occupied(_) => Ok(()),
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(frame.clone());
                                c.writer.send(frame).await.map_err(|e| e.to_string())
                            }
                        }
                    }
                    LinkCmd::Request(build, reply) => {
                        let rid = next_rid;
                        next_rid += 1;
                        pending.insert(rid, reply);
                        write(&mut c, &build(rid)).await
                    }
                    LinkCmd::Publish(only) => publish(d, m, &mut c, only).await,
                    LinkCmd::Depart(session) => write(&mut c, &ClientFrame::Depart { session }).await,
                    LinkCmd::Op(id, frame) => match lo.send(id, frame) {
                        Some(f) => c.writer.send(f).await.map_err(|e| e.to_string()),
                        None => Ok(()),
                    },
                    LinkCmd::ReadOps(from, limit, reply) => {
                        let rid = next_rid;
                        next_rid += 1;
                        lo.reads.insert(rid, reply);
                        write(&mut c, &ClientFrame::OpRead { rid, from, limit }).await
                    }
                    LinkCmd::Snapshot(frames) => {
                        let mut r = Ok(());
                        for f in frames {
                            if let Err(e) = c.writer.feed(f).await {
                                r = Err(e.to_string());
                                break;
                            }
                        }
                        match r {
                            Ok(()) => c.writer.flush().await.map_err(|e| e.to_string()),
                            Err(e) => Err(e),
                        }
                    }
                };
                if let Err(e) = r {
                    break Outcome::Retry(e);
                }
            }
            f = read_frame(&mut c, IDLE_LIMIT) => {
                let f = match f {
                    Ok(f) => f,
                    Err(e) => break Outcome::Retry(e),
                };
                let f = match on_op_frame(d, m, &mut lo, f).await {
                    OpFrame::Handled => continue,
                    OpFrame::Reconnect(why) => break Outcome::Retry(why),
                    OpFrame::Send(reply) => {
                        if let Err(e) = write(&mut c, &reply).await {
                            break Outcome::Retry(e);
                        }
                        continue;
                    }
                    OpFrame::Other(f) => f,
                };
                if let Some(o) = on_frame(d, m, f, &mut in_flight, &mut pending, &ack_tx).await {
                    break o;
                }
            }
            _ = ping.tick() => {
                // Keepalive pings use ids far above request ids, so their pongs never
                // answer a request.
                ping_n += 1;
                if let Err(e) = write(&mut c, &ClientFrame::Ping { n: ping_n | (1 << 62) }).await {
                    break Outcome::Retry(e);
                }
            }
        }
    };
    lo.fail_reads();
    for (_, p) in pending.drain() {
        let _ = p.send(Err(RelayRefusal {
            code: None,
            message: "the relay link dropped".into(),
        }));
    }
    if matches!(outcome, Outcome::Stopped) {
        c.close().await;
    }
    outcome
}

enum OpFrame {
    Handled,
    Reconnect(String),
    Send(ClientFrame),
    Other(RelayFrame),
}

/// Frames of the shared-state op log.
async fn on_op_frame(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    lo: &mut crate::shared::oplog::LinkOps,
    f: RelayFrame,
) -> OpFrame {
    match f {
        RelayFrame::Ops { ops, head } => match lo.received(d, m, ops, head).await {
            Some(f) => OpFrame::Send(f),
            None => OpFrame::Handled,
        },
        RelayFrame::OpAck { id, seq } => {
            lo.acked(d, id, seq);
            OpFrame::Handled
        }
        RelayFrame::SnapshotPart {
            seq,
            author,
            part,
            parts,
            data,
        } => {
            lo.snapshot_part(d, m, (seq, author, part, parts, data))
                .await;
            OpFrame::Handled
        }
        RelayFrame::SnapshotStored { seq, kept } => {
            tracing::debug!(mesh = %m.id.short(), seq, kept, "relay stored our snapshot");
            let _ = m.snapshots_pending.fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |n| Some(n.saturating_sub(1)),
            );
            d.bump_changes();
            OpFrame::Handled
        }
        RelayFrame::OpRefused {
            id, code, message, ..
        } => {
            if lo.refused(d, m, id, code, &message) {
                OpFrame::Reconnect(format!("relay asked to retry a write later ({code})"))
            } else {
                OpFrame::Handled
            }
        }
        RelayFrame::OpPage {
            rid,
            ops,
            head,
            first,
        } => {
            if let Some(r) = lo.reads.remove(&rid) {
                let _ = r.send(Ok(crate::mesh::OpPage { ops, head, first }));
            }
            OpFrame::Handled
        }
        RelayFrame::Error {
            rid: Some(rid),
            code,
            message,
            fatal: false,
            ..
        } if lo.reads.contains_key(&rid) => {
            if let Some(r) = lo.reads.remove(&rid) {
                let _ = r.send(Err(RelayRefusal {
                    code: Some(code),
                    message,
                }));
            }
            OpFrame::Handled
        }
        other => OpFrame::Other(other),
    }
}

async fn on_frame(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    f: RelayFrame,
    in_flight: &mut HashMap<MessageId, Bytes>,
    pending: &mut HashMap<u64, oneshot::Sender<Result<(), RelayRefusal>>>,
    ack_tx: &mpsc::UnboundedSender<MessageId>,
) -> Option<Outcome> {
    match f {
        RelayFrame::Relayed { id, at } => {
            in_flight.remove(&id);
            if let Some(w) = lock(&m.waiters).remove(&id) {
                let _ = w.send(Ok(()));
            }
            let d2 = d.clone();
            tokio::spawn(async move {
                if let Err(e) = d2.store.relayed(id, at).await {
                    tracing::warn!(error = %e, "cannot record relayed message");
                }
                d2.bump_changes();
            });
        }
        RelayFrame::Refused {
            id,
            code,
            message,
            retry_ms,
        } => {
            let frame = in_flight.remove(&id);
            match (code, frame) {
                (
                    ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::Internal,
                    Some(frame),
                ) => {
                    let delay = Duration::from_millis(retry_ms.unwrap_or(1000).clamp(10, 60_000));
                    tracing::debug!(%id, %code, "relay asked to retry later");
                    let tx = m.link.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(LinkCmd::Send(id, frame)).await;
                    });
                }
                _ => {
                    tracing::warn!(%id, %code, %message, "relay refused a message for good");
                    if let Some(w) = lock(&m.waiters).remove(&id) {
                        let _ = w.send(Err(format!(
                            "the relay refused the message ({code}): {message}"
                        )));
                    }
                    let store = d.store.clone();
                    tokio::spawn(async move {
                        let _ = store.undeliverable(id, format!("{code}: {message}")).await;
                    });
                }
            }
        }
        RelayFrame::Deliver { env, at } => {
            let id = env.id;
            let (mesh, from) = (m.id, env.from);
            let sender = d
                .store
                .read(move |c| crate::store::q_presence_of(c, mesh, from))
                .await
                .ok()
                .flatten();
            match crate::delivery::receive::open(m, &env, at, sender.as_ref()) {
                crate::delivery::receive::Opened::Rows(rows) => {
                    let ack = ack_tx.clone();
                    let (d2, m2) = (d.clone(), m.clone());
                    let targets: Vec<_> = rows.iter().map(|r| r.msg.session).collect();
                    let person = rows.iter().any(|r| r.msg.for_member);
                    let r = d
                        .store
                        .insert_inbox_then(rows, move |r| match r {
                            Ok(_) => {
                                d2.arrived(&m2, &targets, person);
                                let _ = ack.send(id);
                            }
                            Err(e) => tracing::error!(error = %e, "cannot store received message; it stays at the relay"),
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "store unavailable");
                    }
                }
                crate::delivery::receive::Opened::Receipt(r) => {
                    let (d2, ack) = (d.clone(), ack_tx.clone());
                    tokio::spawn(async move {
                        if d2
                            .store
                            .sent_stage(r.of, r.stage == "read", r.at)
                            .await
                            .is_ok()
                        {
                            d2.bump_changes();
                            let _ = ack.send(id);
                        }
                    });
                }
                // Not for us or not openable: acknowledge so the relay stops resending it.
                crate::delivery::receive::Opened::Nothing => {
                    let _ = ack_tx.send(id);
                }
            }
        }
        RelayFrame::Receipt { id, at, .. } => {
            let d2 = d.clone();
            tokio::spawn(async move {
                let _ = d2.store.delivered(id, at).await;
                d2.bump_changes();
            });
        }
        RelayFrame::Presence(rec) => on_presence(d, m, rec).await,
        RelayFrame::Depart { session, at } => {
            let _ = d.store.presence_offline(m.id, session, at).await;
            d.bump_changes();
        }
        RelayFrame::Roster { seq, entry } => {
            if let Err(o) = on_roster(d, m, seq, entry).await {
                return Some(o);
            }
        }
        RelayFrame::ClaimPending {
            claim,
            request,
            cap,
            at,
        } => {
            let (d, m) = (d.clone(), m.clone());
            tokio::spawn(async move {
                crate::membership::on_claim(&d, &m, claim, request, cap, at).await
            });
        }
        RelayFrame::Ok { rid } => {
            if let Some(p) = pending.remove(&rid) {
                let _ = p.send(Ok(()));
            }
        }
        RelayFrame::Error {
            rid,
            code,
            message,
            fatal,
            ..
        } => {
            if let Some(p) = rid.and_then(|r| pending.remove(&r)) {
                let _ = p.send(Err(RelayRefusal {
                    code: Some(code),
                    message: message.clone(),
                }));
            } else {
                tracing::warn!(%code, %message, "relay error");
            }
            if fatal {
                return Some(refusal_outcome(code, &message));
            }
        }
        // Pings sent as requests carry their request id as `n`.
        RelayFrame::Pong { n, .. } => {
            if let Some(p) = pending.remove(&n) {
                let _ = p.send(Ok(()));
            }
        }
        RelayFrame::Welcome(_)
        | RelayFrame::Ops { .. }
        | RelayFrame::OpAck { .. }
        | RelayFrame::OpRefused { .. }
        | RelayFrame::OpPage { .. }
        | RelayFrame::SnapshotPart { .. }
        | RelayFrame::SnapshotStored { .. }
        | RelayFrame::Ready { .. }
        | RelayFrame::ClaimWaiting { .. }
        | RelayFrame::ClaimResult(_) => {
            tracing::debug!("unexpected frame on a member link");
        }
    }
    None
}

async fn on_roster(d: &Daemon, m: &MeshCtx, seq: u64, entry: RosterEntry) -> Result<(), Outcome> {
    let applied = lock(&m.roster).apply(seq, &entry);
    match applied {
        Ok(true) => {
            if let Err(e) = d.store.put_roster(m.id, seq, &entry).await {
                tracing::error!(error = %e, "cannot store roster entry");
            }
            if entry.op == RosterOp::Remove && entry.member == m.member() {
                return Err(Outcome::Refused(
                    "this member was removed from the mesh".into(),
                ));
            }
        }
        Ok(false) => {}
        Err(e) => {
            // A relay that sends entries that do not verify is broken or hostile.
            tracing::error!(seq, error = %e, "relay sent an invalid roster entry");
            return Err(Outcome::Retry(format!(
                "relay sent an invalid roster entry: {e}"
            )));
        }
    }
    Ok(())
}

async fn on_presence(d: &Daemon, m: &MeshCtx, rec: PresenceRecord) {
    let p = rec.presence;
    if p.mesh != m.id || !m.is_member(&p.member) {
        return;
    }
    let profile = match p.open(&m.keys.mesh_key) {
        Ok(pr) => pr,
        Err(e) => {
            tracing::warn!(session = %p.session.short(), error = %e, "presence does not verify; ignored");
            return;
        }
    };
    let row = PresenceRow {
        mesh: m.id,
        session: p.session,
        member: p.member,
        session_key: p.session_key,
        seq: p.seq,
        profile,
        online: rec.online,
        last_seen: rec.last_seen,
    };
    if let Err(e) = d.store.upsert_presence(row).await {
        tracing::warn!(error = %e, "cannot cache presence");
    }
    d.bump_changes();
}
