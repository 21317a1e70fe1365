//! One relay link per joined mesh: an actor that owns the connection. It connects (QUIC,
//! then WebSocket), joins (hello, the relay's roster and presence snapshot), sends the
//! outbox and the op outbox, then relays frames both ways until the connection ends, and
//! reconnects with exponential backoff and jitter. Frames are handled by protocol:
//! [`messages`] (envelopes, receipts), [`membership`] (roster, presence, claims) and the
//! shared-state log ([`crate::shared::oplog`]).
//!
//! Delivery invariant: an incoming envelope is acknowledged to the relay only after its
//! inbox row is committed, and an outgoing one leaves the outbox only after the relay said
//! `relayed` (which it says only after its own commit). Everything in between is resent
//! and deduped by message id.

mod end;
mod membership;
mod messages;

use bytes::Bytes;
use claudemesh_relay::{ConnectOptions, Connection};
use claudemesh_schema::ipc::methods::LinkState;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{self, ClientFrame, RelayFrame};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub(crate) use end::End;
use end::Next;

use crate::context::Daemon;
use crate::mesh::{LinkCmd, LinkStatus, MeshCtx, RelayRefusal, lock};
use crate::shared::oplog::LinkOps;

/// Client name sent in hellos.
pub(crate) const CLIENT: &str = concat!("claudemesh/", env!("CARGO_PKG_VERSION"));
/// After a refusal that will not fix itself soon.
const LATER_MS: u64 = 300_000;
const PING_EVERY: Duration = Duration::from_secs(15);
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// Keepalive pings use ids far above request ids, so their pongs never answer a request.
const KEEPALIVE: u64 = 1 << 62;

/// Between half of `ms` and all of it ("equal jitter"): links that failed together do not
/// retry together, and no wait is longer than the backoff it came from.
fn jitter(ms: u64) -> Duration {
    jittered(ms, random_unit())
}

/// A random number in [0, 1].
fn random_unit() -> f64 {
    u32::from_le_bytes(claudemesh_schema::crypto::random_bytes::<4>()) as f64 / u32::MAX as f64
}

fn jittered(ms: u64, unit: f64) -> Duration {
    let factor = 0.5 + unit.clamp(0.0, 1.0) / 2.0;
    Duration::from_millis((ms as f64 * factor) as u64).max(Duration::from_millis(1))
}

/// The wait before the next attempt after one that took `spent` and failed: the jittered
/// backoff less what the attempt itself took (a QUIC handshake that times out is part of
/// the pause), so attempts start at most `backoff` apart, and `backoff` is capped.
fn retry_wait(backoff: u64, unit: f64, spent: Duration) -> Duration {
    jittered(backoff, unit).saturating_sub(spent)
}

/// The source address this machine would use to reach `to` now (`None`: no route). A
/// change means the network changed (a Wi-Fi switch, a VPN, a cable): worth a retry at
/// once. Connecting a UDP socket sends nothing.
fn route_to(to: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    let any: std::net::SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(to).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Run the link of mesh `m` until the mesh is left or the daemon stops.
pub(crate) async fn run(
    d: Arc<Daemon>,
    m: Arc<MeshCtx>,
    mut rx: mpsc::Receiver<LinkCmd>,
    status: watch::Sender<LinkStatus>,
) {
    let first = d.cfg.link.initial_backoff_ms.max(1);
    let cap = d.cfg.link.max_backoff_ms.max(first);
    let mut backoff = first;
    // Which node of a relay of several is dialled next: each failed or lost link moves on
    // to the next, from a random first one (so members spread over the nodes).
    let mut turn = {
        let relay = lock(&m.row).relay.clone();
        let nodes = claudemesh_schema::invite::relay_nodes(&relay);
        match &d.cfg.link.prefer_node {
            Some(p) if let Some(i) = nodes.iter().position(|n| n == p) => i,
            _ => usize::from(claudemesh_schema::crypto::random_bytes::<1>()[0]),
        }
    };
    let opts = ConnectOptions {
        quic: d.cfg.link.quic,
        websocket: d.cfg.link.websocket,
        quic_timeout: Duration::from_millis(d.cfg.link.quic_timeout_ms),
        ws_timeout: Duration::from_millis(d.cfg.link.ws_timeout_ms),
    };
    let report = |f: &dyn Fn(&mut LinkStatus)| {
        status.send_modify(|s| f(s));
        d.bump_changes();
    };
    loop {
        if m.stop.is_cancelled() {
            break;
        }
        report(&|s| {
            s.state = LinkState::Connecting;
            s.transport = None;
            s.node = None;
        });
        if *m.paused.borrow() {
            report(&|s| {
                s.state = LinkState::Offline;
                s.last_error = Some(End::HeldDown.to_string());
            });
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
        // A mesh hosted on this daemon's own relay is dialled where that relay listens now.
        let target = crate::context::LocalRelay::route(d.relay.as_ref(), &relay, &fp);
        // This attempt starts at node `turn` and tries the others after it.
        let mut nodes = claudemesh_schema::invite::relay_nodes(&target);
        if nodes.len() > 1 {
            let n = nodes.len();
            nodes.rotate_left(turn % n);
        }
        let dial = nodes.join(",");
        let first_node = nodes.first().copied().unwrap_or_default().to_string();
        // The attempt's own time (a QUIC handshake that times out, the WebSocket
        // fallback) counts toward the pause that follows a failure.
        let started = Instant::now();
        let conn = tokio::select! {
            biased;
            _ = m.stop.cancelled() => break,
            _ = m.redial.notified() => continue,
            c = claudemesh_relay::connect(&dial, Some(fp), &opts) => c,
        };
        let links_before = status.borrow().links;
        let end = match conn {
            Ok(c) => {
                tracing::debug!(transport = c.transport.as_str(), "connected to relay");
                connection(&d, &m, c, &mut rx, &status).await
            }
            Err(e) => End::from(e),
        };
        let started_up = status.borrow().links > links_before;
        let delay = match end.next() {
            Next::Stop => break,
            Next::Now => {
                backoff = first;
                tracing::info!(relay = %lock(&m.row).relay, "the mesh's relay changed; dialling it");
                continue;
            }
            Next::Retry => {
                turn = turn.wrapping_add(1);
                // A link that was up for a while starts the backoff again.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = first;
                }
                let spent = if started_up {
                    Duration::ZERO
                } else {
                    started.elapsed()
                };
                let dl = retry_wait(backoff, random_unit(), spent);
                backoff = backoff.saturating_mul(2).min(cap);
                dl
            }
            Next::Later => jitter(LATER_MS),
        };
        // Where the relay is, to notice the network changing while we wait (found before
        // the link is reported down: a change from then on is seen).
        // (A name is looked up for a second at most: an offline resolver must not hold
        // the link's command loop.)
        let relay_addr = match first_node.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::lookup_host(first_node.as_str()),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|mut a| a.next()),
        };
        let route = relay_addr.and_then(route_to);
        tracing::info!(error = %end, retry_in_ms = delay.as_millis() as u64, "relay link down");
        let err = end.to_string();
        report(&|s| {
            s.state = LinkState::Connecting;
            s.transport = None;
            s.node = None;
            s.last_error = Some(err.clone());
            if started_up {
                s.last_end = Some(err.clone());
            }
        });
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut look = tokio::time::interval(Duration::from_secs(1));
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = m.stop.cancelled() => {
                    report(&|s| s.state = LinkState::Offline);
                    return;
                }
                _ = &mut sleep => break,
                // The relay moved while this link waited to retry the old one; or someone
                // asked for a retry now (`debug link up`).
                _ = m.redial.notified() => {
                    backoff = first;
                    break;
                }
                _ = m.retry_now.notified() => {
                    tracing::info!("retrying the relay link now, as asked");
                    backoff = first;
                    break;
                }
                _ = look.tick(), if relay_addr.is_some() => {
                    if relay_addr.and_then(route_to) != route {
                        tracing::info!("the network changed; retrying the relay link now");
                        backoff = first;
                        break;
                    }
                }
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(c) => refuse_while_down(c),
                },
            }
        }
    }
    report(&|s| {
        s.state = LinkState::Offline;
        s.transport = None;
        s.node = None;
    });
}

/// Answer a command that needs the relay while the link is down. Outbox entries and ops
/// are durable already and go out on reconnect; a `send` still waiting hears it stays
/// queued (its waiter is dropped).
fn refuse_while_down(cmd: LinkCmd) {
    let down = || RelayRefusal {
        code: None,
        message: "the relay is not reachable right now".into(),
    };
    match cmd {
        LinkCmd::Request(_, reply) => reply.refuse(down()),
        LinkCmd::ReadOps(_, _, reply) => {
            let _ = reply.send(Err(down()));
        }
        _ => {}
    }
}

/// Answer commands until the channel closes (while the link is held down).
async fn drain_while_down(rx: &mut mpsc::Receiver<LinkCmd>) {
    while let Some(c) = rx.recv().await {
        refuse_while_down(c);
    }
}

pub(super) async fn write(c: &mut Connection, f: &ClientFrame) -> Result<(), End> {
    let b = wire::encode(f).map_err(|e| End::Encode(e.to_string()))?;
    Ok(c.writer.send(Bytes::from(b)).await?)
}

pub(super) async fn read_frame(c: &mut Connection, limit: Duration) -> Result<RelayFrame, End> {
    match tokio::time::timeout(limit, c.reader.next()).await {
        Err(_) => Err(End::Silent),
        Ok(None) => Err(End::Closed),
        Ok(Some(Err(e))) => Err(End::Io(e)),
        Ok(Some(Ok(b))) => wire::decode::<RelayFrame>(&b).map_err(|e| End::BadFrame(e.to_string())),
    }
}

/// Requests waiting for the relay's `ok` / `error`, by request id.
type Requests = HashMap<u64, crate::mesh::Reply>;

/// One connection, from hello to its end.
async fn connection(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    mut c: Connection,
    rx: &mut mpsc::Receiver<LinkCmd>,
    status: &watch::Sender<LinkStatus>,
) -> End {
    let mut requests = Requests::new();
    let mut ops = None;
    let end = run_connection(d, m, &mut c, rx, status, &mut requests, &mut ops).await;
    if let Some(lo) = ops.as_mut() {
        lo.fail_reads();
    }
    for (_, p) in requests.drain() {
        p.refuse(RelayRefusal {
            code: None,
            message: "the relay link dropped".into(),
        });
    }
    if matches!(end, End::Stopped) {
        c.close().await;
    }
    end
}

async fn run_connection(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    c: &mut Connection,
    rx: &mut mpsc::Receiver<LinkCmd>,
    status: &watch::Sender<LinkStatus>,
    requests: &mut Requests,
    ops: &mut Option<LinkOps>,
) -> End {
    let welcome = match membership::join(d, m, c).await {
        Ok(w) => w,
        Err(e) => return e,
    };
    // What waited for a key epoch on the last link comes again on this one.
    lock(&m.later).clear();
    status.send_modify(|s| {
        s.state = LinkState::Connected;
        s.transport = Some(c.transport);
        s.node = Some(c.remote.to_string());
        s.last_error = None;
        s.skew_ms = Some(welcome.server_time - now_ms());
        s.links += 1;
    });
    d.bump_changes();
    tracing::info!(transport = c.transport.as_str(), "relay link up");
    if let Err(e) = membership::publish(d, m, c, None).await {
        return e;
    }
    let mut out = match messages::Outbound::start(d, m, c).await {
        Ok(o) => o,
        Err(e) => return e,
    };
    let lo = match crate::shared::oplog::start(d, m, c).await {
        Ok(lo) => ops.insert(lo),
        Err(e) => return End::Ops(e),
    };
    let mut paused = m.paused.subscribe();
    let mut next_rid: u64 = 1;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut ping_n = 0u64;
    let mut presence = membership::Coalesce::default();
    loop {
        let retry_at = out.next_retry();
        let presence_due = presence.next_due();
        let r: Result<(), End> = tokio::select! {
            biased;
            _ = m.stop.cancelled() => Err(End::Stopped),
            _ = async { let _ = paused.wait_for(|p| *p).await; } => Err(End::HeldDown),
            _ = m.redial.notified() => Err(End::Moved),
            // Applying ops failed: sync again from the stored head.
            _ = m.resync.notified() => resync(d, m, c, lo).await,
            _ = m.rekey.notified() => {
                d.spawn(crate::shared::epochs::maybe_rotate_owned(d.clone(), m.clone()));
                out.deliver_later(d, m).await;
                Ok(())
            }
            Some(first) = out.acks.recv() => {
                let ids = messages::ack_batch(first, &mut out.acks);
                // Each id with our signature: the sender's proof that we stored it.
                let proofs = ids
                    .iter()
                    .map(|id| m.keys.member.sign(&wire::delivery_proof(&m.id, id)))
                    .collect();
                write(c, &ClientFrame::Ack { ids, proofs }).await
            }
            Some(first) = out.seen.recv() => {
                let receipts = messages::seen_batch(first, &mut out.seen);
                write(c, &ClientFrame::ReceiptsSeen { receipts }).await
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                out.retry_due(c).await
            }
            _ = tokio::time::sleep_until(presence_due.unwrap_or_else(tokio::time::Instant::now)), if presence_due.is_some() => {
                presence.flush_due(d, m, c).await
            }
            cmd = rx.recv() => match cmd {
                None => Err(End::Stopped),
                Some(LinkCmd::PublishStatus(sid)) => presence.status(d, m, c, sid).await,
                Some(LinkCmd::Publish(Some(sid))) => presence.now(d, m, c, sid).await,
                Some(cmd) => command(d, m, c, cmd, &mut out, lo, requests, &mut next_rid).await,
            },
            f = read_frame(c, IDLE_LIMIT) => match f {
                Ok(f) => frame(d, m, c, f, &mut out, lo, requests).await,
                Err(e) => Err(e),
            },
            _ = ping.tick() => {
                ping_n += 1;
                write(c, &ClientFrame::Ping { n: ping_n | KEEPALIVE }).await
            }
        };
        if let Err(end) = r {
            return end;
        }
    }
}

async fn resync(d: &Daemon, m: &MeshCtx, c: &mut Connection, lo: &mut LinkOps) -> Result<(), End> {
    let mesh = m.id;
    let _ = d.store.flush().await;
    let head = d
        .store
        .read(move |c| crate::shared::query::q_head(c, mesh))
        .await
        .map_err(|e| End::Ops(format!("cannot read the op log: {e}")))?;
    let next = head.map(|x| x.0).unwrap_or(0) + 1;
    lo.reset(next);
    write(c, &ClientFrame::OpSync { from: next }).await
}

/// A command from the rest of the daemon.
#[allow(clippy::too_many_arguments)]
async fn command(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    c: &mut Connection,
    cmd: LinkCmd,
    out: &mut messages::Outbound,
    lo: &mut LinkOps,
    requests: &mut Requests,
    next_rid: &mut u64,
) -> Result<(), End> {
    let mut rid = || {
        let r = *next_rid;
        *next_rid += 1;
        r
    };
    match cmd {
        LinkCmd::Send(id, frame, waiter) => out.send(c, id, frame, waiter).await,
        LinkCmd::Request(build, reply) => {
            let rid = rid();
            requests.insert(rid, reply);
            write(c, &build(rid)).await
        }
        // Handled by the loop's coalescing (a session's own publish goes there too).
        LinkCmd::PublishStatus(sid) => membership::publish(d, m, c, Some(sid)).await.map(|_| ()),
        LinkCmd::Publish(only) => membership::publish(d, m, c, only).await.map(|_| ()),
        LinkCmd::Depart(session) => write(c, &ClientFrame::Depart { session }).await,
        LinkCmd::Op(id, frame) => match lo.send(id, frame) {
            Some(f) => Ok(c.writer.send(f).await?),
            None => Ok(()),
        },
        LinkCmd::ReadOps(from, limit, reply) => {
            let rid = rid();
            lo.reads.insert(rid, reply);
            write(c, &ClientFrame::OpRead { rid, from, limit }).await
        }
        LinkCmd::Snapshot(frames) => {
            for f in frames {
                c.writer.feed(f).await?;
            }
            Ok(c.writer.flush().await?)
        }
        LinkCmd::Redeliver => write(c, &ClientFrame::Redeliver).await,
    }
}

/// A frame from the relay, handed to the protocol it belongs to.
async fn frame(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    c: &mut Connection,
    f: RelayFrame,
    out: &mut messages::Outbound,
    lo: &mut LinkOps,
    requests: &mut Requests,
) -> Result<(), End> {
    let f = match on_op_frame(d, m, lo, f).await? {
        OpFrame::Handled => return Ok(()),
        OpFrame::Send(reply) => return write(c, &reply).await,
        OpFrame::Other(f) => f,
    };
    let roster_entry = matches!(f, RelayFrame::Roster { .. });
    let f = membership::on_frame(d, m, f).await?;
    if roster_entry {
        // A removal (or a leave) calls for a new mesh key, made by an admin.
        d.spawn(crate::shared::epochs::maybe_rotate_owned(
            d.clone(),
            m.clone(),
        ));
    }
    let Some(f) = f else {
        return Ok(());
    };
    match f {
        RelayFrame::Relayed { id, at } => out.relayed(d, id, at).await,
        RelayFrame::Refused {
            id,
            code,
            message,
            retry_ms,
        } => {
            crate::files::answer_done(m, &id, None);
            out.refused(d, id, code, message, retry_ms).await
        }
        RelayFrame::Deliver { env, at } => out.deliver(d, m, env, at).await,
        RelayFrame::Receipt {
            id,
            member,
            at,
            proof,
        } => {
            // Only what the recipient signed counts: the relay's word alone does not.
            let signed =
                proof.is_some_and(|p| member.verify(&wire::delivery_proof(&m.id, &id), &p).is_ok());
            if signed {
                crate::files::answer_done(m, &id, Some(&member));
                out.delivered(d, id, member, at).await;
            } else {
                tracing::debug!(%id, "a delivery report without the recipient's proof; ignored");
                out.ignore_receipt(id, member);
            }
        }
        RelayFrame::Ok { rid }
        | RelayFrame::ChunksHeld { rid, .. }
        | RelayFrame::Chunk { rid, .. } => {
            if let Some(p) = requests.remove(&rid) {
                p.answer(f);
            }
        }
        RelayFrame::Error {
            rid,
            code,
            message,
            fatal,
            ..
        } => {
            if let Some(p) = rid.and_then(|r| requests.remove(&r)) {
                p.refuse(RelayRefusal {
                    code: Some(code),
                    message: message.clone(),
                });
            } else {
                tracing::warn!(%code, %message, "relay error");
            }
            if fatal {
                return Err(End::Refused { code, message });
            }
        }
        // Pings sent as requests carry their request id as `n`.
        RelayFrame::Pong { n, .. } => {
            if let Some(p) = requests.remove(&n) {
                p.answer(f);
            }
        }
        other => {
            tracing::debug!(frame = ?std::mem::discriminant(&other), "unexpected frame on a member link");
        }
    }
    Ok(())
}

enum OpFrame {
    Handled,
    Send(ClientFrame),
    Other(RelayFrame),
}

/// Frames of the shared-state op log.
async fn on_op_frame(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    lo: &mut LinkOps,
    f: RelayFrame,
) -> Result<OpFrame, End> {
    Ok(match f {
        RelayFrame::Ops { ops, head } => match lo.received(d, m, ops, head).await {
            Ok(Some(f)) => OpFrame::Send(f),
            Ok(None) => OpFrame::Handled,
            Err(w) => {
                tracing::error!(mesh = %m.id.short(), error = %w, "relay withholds roster entries; link down");
                return Err(End::HostileRoster(w.to_string()));
            }
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
            tracing::debug!(seq, kept, "relay stored our snapshot");
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
                return Err(End::OpsRetry(code));
            }
            OpFrame::Handled
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
    })
}

#[cfg(test)]
mod tests {
    use super::retry_wait;
    use std::time::Duration;

    #[test]
    fn a_retry_never_waits_longer_than_its_backoff_and_counts_the_attempt() {
        let ms = Duration::from_millis;
        for (backoff, unit, spent, want) in [
            // Equal jitter: between half the backoff and all of it.
            (30_000, 0.0, ms(0), ms(15_000)),
            (30_000, 1.0, ms(0), ms(30_000)),
            (30_000, 7.0, ms(0), ms(30_000)),
            (30_000, -1.0, ms(0), ms(15_000)),
            (1_000, 0.5, ms(0), ms(750)),
            // A handshake that timed out is part of the pause.
            (30_000, 1.0, ms(8_000), ms(22_000)),
            (1_000, 0.0, ms(3_000), ms(0)),
            // Never zero from jitter alone.
            (1, 0.0, ms(0), ms(1)),
        ] {
            assert_eq!(
                retry_wait(backoff, unit, spent),
                want,
                "{backoff} {unit} {spent:?}"
            );
        }
    }
}
