//! Daemon and link status, waiting for conditions (`claudemesh wait …`), and the relay
//! round trip (`ping`).

use claudemesh_schema::ipc::methods::{self as m, MeshParams, MeshStatus, StatusResult};
use claudemesh_schema::message::Priority;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::lock;
use crate::store;

pub(crate) async fn status(d: &Arc<Daemon>) -> Result<StatusResult, Error> {
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
            .await?;
        let st = x.link.status.borrow().clone();
        let row = lock(&x.row);
        meshes.push(MeshStatus {
            mesh: id,
            name: row.name.clone(),
            relay: row.relay.clone(),
            link: st.state,
            transport: st.transport.map(|t| t.as_str().to_string()),
            node: st.node,
            last_error: st.last_error,
            outbox,
            unread,
            peers_online: online,
            clock_skew_ms: st.skew_ms,
            shared,
            log_seq,
            log_pending,
            presences_sent: x.presences_sent.load(std::sync::atomic::Ordering::Relaxed),
            links: st.links,
            last_drop: st.last_end,
        });
    }
    Ok(StatusResult {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_ms: d.started.elapsed().as_millis() as u64,
        config_dir: d.paths.dir.display().to_string(),
        socket: d.paths.socket.display().to_string(),
        embedded_relay: d.relay.as_ref().map(|r| r.public.clone()),
        embedded_relay_listen: d.relay.as_ref().map(|r| r.listen.to_string()),
        embedded_relay_fingerprint: d
            .relay
            .as_ref()
            .map(|r| claudemesh_schema::encoding::b64(&r.fingerprint)),
        meshes,
        joins: crate::joining::list(d),
    })
}

pub(crate) async fn wait_for(d: &Arc<Daemon>, p: m::WaitParams) -> Result<m::WaitResult, Error> {
    use m::{LinkState, WaitCondition as W};
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    if targets.is_empty() {
        return Err(Error::not_found("you have not joined any mesh yet"));
    }
    let peer = match p.condition {
        W::PeerOnline | W::PeerOffline | W::PeerWorking | W::PeerIdle => Some(
            p.peer
                .as_deref()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::invalid("name the peer to wait for"))?,
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
            W::LinkError => targets.iter().all(|x| {
                let s = x.link.status.borrow();
                s.state != LinkState::Connected && s.last_error.is_some()
            }),
            W::Synced => {
                let min = p.seq.unwrap_or(0);
                let mut all = true;
                for x in &targets {
                    let up = x.link.status.borrow().state == LinkState::Connected
                        && x.op_caught_up.load(std::sync::atomic::Ordering::Acquire)
                        && x.snapshots_pending
                            .load(std::sync::atomic::Ordering::Acquire)
                            == 0
                        // A key rotation this daemon owes is not yet in the log.
                        && !crate::shared::epochs::owed(x);
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
                        .await?;
                    if head < min || pending > 0 {
                        all = false;
                        break;
                    }
                }
                all
            }
            W::ClaimPending => !d.store.read(store::q_claims).await?.is_empty(),
            W::PeerOnline | W::PeerOffline | W::PeerWorking | W::PeerIdle => {
                let cond = p.condition;
                let q = peer.clone().unwrap_or_default();
                let rows: Vec<_> = targets.iter().map(|x| lock(&x.row).clone()).collect();
                let all = d
                    .store
                    .read(move |c| {
                        let mut all = Vec::new();
                        for r in &rows {
                            all.extend(crate::peers::q_peers(c, r, None)?);
                        }
                        Ok(all)
                    })
                    .await?;
                let found: Vec<_> = crate::peers::matching(&all, &q)?
                    .into_iter()
                    .map(|p| (p.online, p.status))
                    .collect();
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

/// How long a probe may take to come back before it counts as lost.
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// Send one probe through the relay and back to this daemon; its round trip.
async fn probe(x: &Arc<crate::mesh::MeshCtx>, priority: Priority) -> Result<Option<u64>, Error> {
    use crate::mesh::LinkCmd;
    use claudemesh_schema::message::{self, MessagePayload};
    use claudemesh_schema::wire::{self, ClientFrame, Envelope, Route, Seal};
    let id = claudemesh_schema::MessageId::new();
    let own = x.keys.session;
    let t = std::time::Instant::now();
    // Sealed and routed as a direct message to a session: the relay cannot tell it apart.
    let payload = MessagePayload {
        id,
        from_session: own,
        from_name: String::new(),
        from_label: String::new(),
        to: String::new(),
        priority,
        sent_at: claudemesh_schema::now_ms(),
        kind: message::KIND_PROBE.into(),
        body: String::new(),
        to_sessions: Vec::new(),
    };
    let to = x.keys.session_secret.public();
    let ct = message::seal_direct_with(&x.boxes.to_key(&x.keys.member.box_secret(), &to), &payload)
        .map_err(|e| Error::internal(format!("cannot seal a probe: {e}")))?;
    let env = Envelope {
        id,
        from: own,
        from_member: x.member(),
        to: Route::Session { session: own },
        seal: Seal::Box,
        ct,
        epoch: 0,
    };
    let frame = bytes::Bytes::from(wire::encode(&ClientFrame::Send(env)).map_err(Error::internal)?);
    let (tx, rx) = tokio::sync::oneshot::channel();
    lock(&x.probes).insert(id, tx);
    let _ = x.link.tx.send(LinkCmd::Send(id, frame, None)).await;
    let back = tokio::time::timeout(PROBE_WAIT, rx).await;
    lock(&x.probes).remove(&id);
    Ok(matches!(back, Ok(Ok(()))).then(|| t.elapsed().as_micros() as u64))
}

pub(crate) async fn ping(d: &Arc<Daemon>, p: m::PingParams) -> Result<m::PingResult, Error> {
    let x = d.select(p.mesh.as_deref())?;
    let t = std::time::Instant::now();
    x.link
        .request(Box::new(|rid| claudemesh_schema::wire::ClientFrame::Ping {
            n: rid,
        }))
        .await
        .map_err(|e| Error::relay(e.message))?;
    let transport = x
        .link
        .status
        .borrow()
        .transport
        .map(|t| t.as_str().to_string())
        .unwrap_or_default();
    let relay_rtt_us = t.elapsed().as_micros() as u64;
    // Whether the asking session would get each priority pushed now: its status and
    // whether its channel works decide (the same rules `delivery::push` applies).
    let asking = p.session.unwrap_or(x.keys.session);
    let (status, channel) = if asking == x.keys.session {
        (None, None)
    } else {
        lock(&x.sessions)
            .get(&asking)
            .map(|l| (Some(l.profile.status), Some(l.channel)))
            .unwrap_or((None, None))
    };
    let mut priorities = Vec::new();
    for priority in [Priority::Now, Priority::Next, Priority::Low] {
        let round_trip_us = probe(&x, priority).await?;
        let (pushed_now, note) = match (status, channel) {
            (None, _) => (
                false,
                "this daemon's own session is read with `claudemesh inbox`, never pushed"
                    .to_string(),
            ),
            (Some(s), ch) => {
                let gate = crate::delivery::push::push_allowed(priority, s);
                let works = ch.is_some_and(|c| c != crate::mesh::Channel::Dropped);
                match (gate, works) {
                    (true, true) => (true, format!("pushed at once (you are {})", s.as_str())),
                    (true, false) => (
                        false,
                        "allowed now, but this session's channel does not take pushes: it arrives by a hook or check_messages".to_string(),
                    ),
                    (false, _) if priority == Priority::Low => (
                        false,
                        "low waits until you call check_messages".to_string(),
                    ),
                    (false, _) => (
                        false,
                        format!("waits until you are idle (you are {})", s.as_str()),
                    ),
                }
            }
        };
        priorities.push(m::PriorityProbe {
            priority,
            round_trip_us,
            pushed_now,
            note,
        });
    }
    Ok(m::PingResult {
        mesh: x.id,
        relay_rtt_us,
        transport,
        priorities,
    })
}

/// `mesh_info`: each selected mesh at a glance, from the local store: the mesh and our
/// identity in it, its link, every roster member (with the name its presence announced,
/// held to the name rules on receipt), groups in use and who is in them, our groups,
/// shared-state keys and counts, inbox and outbox. Hidden sessions are counted nowhere.
pub(crate) async fn mesh_info(d: &Arc<Daemon>, p: MeshParams) -> Result<m::MeshInfoResult, Error> {
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    let grace = d.cfg.peers.offline_grace_secs as i64 * 1000;
    let mut out = Vec::new();
    for x in targets {
        let row = lock(&x.row).clone();
        let (id, me, own) = (x.id, row.member, row.session);
        let hidden = x.hidden_writers();
        let (presence, (outbox, unread), (shared, log_seq, log_pending), keys) = d
            .store
            .read(move |c| {
                Ok((
                    store::q_presence(c, id)?,
                    store::q_counts(c, id)?,
                    crate::shared::query::q_counts(c, id)?,
                    // The first keys only: `mesh_info` shows a sample.
                    crate::shared::query::q_state(
                        c,
                        id,
                        None,
                        None,
                        &hidden,
                        None,
                        &claudemesh_schema::ipc::page::Page::first(100),
                    )?
                    .0,
                ))
            })
            .await?;
        let now = claudemesh_schema::now_ms();
        // Listed like `peers` lists them: visible (ours always), not ended beyond the grace.
        let listed: Vec<_> = presence
            .iter()
            .filter(|p| p.session != own)
            .filter(|p| p.member == me || p.profile.visible)
            .filter(|p| !crate::delivery::send::stale(p, grace, now))
            .collect();
        let roster: Vec<_> = lock(&x.roster)
            .roster
            .members()
            .map(|(k, r)| (*k, *r))
            .collect();
        let mut members: Vec<m::MeshMember> = roster
            .iter()
            .map(|(k, role)| {
                let mine: Vec<_> = listed.iter().filter(|p| p.member == *k).collect();
                let name = if *k == me {
                    row.display_name.clone()
                } else {
                    mine.iter()
                        .map(|p| p.names().0)
                        .find(|n| !n.is_empty())
                        .or_else(|| x.member_name(k).map(|(n, _)| n))
                        .unwrap_or_default()
                };
                m::MeshMember {
                    name,
                    fingerprint: k.fingerprint(),
                    role: *role,
                    online: *k == me || mine.iter().any(|p| p.online),
                    sessions: mine.len() as u32,
                    me: *k == me,
                }
            })
            .collect();
        members.sort_by(|a, b| {
            b.me.cmp(&a.me)
                .then(b.online.cmp(&a.online))
                .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
        });
        let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut your_groups: Vec<String> = row.groups.clone();
        for p in &listed {
            for g in &p.profile.groups {
                let who = match p.profile.group_roles.get(g) {
                    Some(r) if !r.is_empty() => format!("{} ({r})", p.names().0),
                    _ => p.names().0,
                };
                let v = groups.entry(g.clone()).or_default();
                if !v.contains(&who) {
                    v.push(who);
                }
                if p.member == me && !your_groups.contains(g) {
                    your_groups.push(g.clone());
                }
            }
        }
        let st = x.link.status.borrow().clone();
        out.push(m::MeshOverview {
            mesh: crate::membership::mesh_info(&row),
            fingerprint: me.fingerprint(),
            link: st.state,
            transport: st.transport.map(|t| t.as_str().to_string()),
            node: st.node,
            last_error: st.last_error,
            members,
            peers_online: listed.iter().filter(|p| p.online && p.member != me).count() as u64,
            groups: groups
                .into_iter()
                .map(|(name, members)| m::MeshGroup { name, members })
                .collect(),
            your_groups,
            state_keys: keys.into_iter().take(100).map(|e| e.key).collect(),
            shared,
            log_seq,
            log_pending,
            unread,
            outbox,
        });
    }
    Ok(m::MeshInfoResult { meshes: out })
}
