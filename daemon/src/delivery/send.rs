//! Outgoing messages: resolve an address (`name`, id prefix, `@group`, `*`) against the
//! presence cache, seal, commit to the outbox (the durable point), hand to the link and
//! wait briefly for the relay; and receipts back to the senders of what we received.

use bytes::Bytes;
use claudemesh_schema::crypto::BoxPublic;
use claudemesh_schema::ipc::methods::{InboxMessage, SendParams, SendResult, Stage};
use claudemesh_schema::message::{self, MessagePayload};
use claudemesh_schema::select::{Candidate, Pick, Selector, pick};
use claudemesh_schema::wire::{self, ClientFrame, Envelope, Route, Seal};
use claudemesh_schema::{MessageId, SessionId, now_ms};
use std::sync::Arc;
use std::time::Duration;

use super::push::Handover;
use super::{MAX_BODY, receive::rows_for};
use crate::context::Daemon;
use crate::error::Error;
use crate::mesh::{LinkCmd, MeshCtx, lock};
use crate::store::{self, InboxRow, PresenceRow};

/// Default time `send` waits for the relay's acknowledgement.
const DEFAULT_WAIT: Duration = Duration::from_secs(3);

/// A resolved address.
struct Target {
    route: Route,
    /// Box key for direct messages; `None` seals with the mesh key.
    key: Option<BoxPublic>,
    names: Vec<String>,
    label: String,
    /// Our own member: delivered here, to the person's inbox, without the relay.
    local_member: bool,
    /// The members it is addressed to, the only ones whose receipts count (empty: every
    /// member, a broadcast).
    members: Vec<claudemesh_schema::crypto::MemberKey>,
    /// Recipients (as named in `names`) with no session online: the relay keeps the
    /// message for them until they are back.
    offline: Vec<String>,
}

fn describe(p: &PresenceRow) -> String {
    let (person, label) = p.names();
    format!(
        "{}{} (key {}, id {}, {}{})",
        person,
        if label.is_empty() {
            String::new()
        } else {
            format!("/{label}")
        },
        p.member.short_fingerprint(),
        p.session.short(),
        if p.profile.hostname.is_empty() {
            "?"
        } else {
            &p.profile.hostname
        },
        if p.online { ", online" } else { ", offline" }
    )
}

/// A recipient as `send` reports it: the name and the member key it went to.
fn keyed(name: &str, member: &claudemesh_schema::crypto::MemberKey) -> String {
    claudemesh_schema::render::keyed(name, member)
}

/// Is `p` a session that ended longer than the grace ago (no longer listed in `peers`)?
pub(crate) fn stale(p: &PresenceRow, grace_ms: i64, now: i64) -> bool {
    p.profile.kind != "cli" && !p.online && now - p.last_seen > grace_ms
}

/// Resolve `to` among the peers of one mesh (see [`claudemesh_schema::select`]).
fn resolve(
    d: &Daemon,
    m: &MeshCtx,
    peers: &[PresenceRow],
    to: &str,
    from: SessionId,
) -> Result<Option<Target>, Error> {
    let grace = d.cfg.peers.offline_grace_secs as i64 * 1000;
    let now = now_ms();
    let others: Vec<&PresenceRow> = peers
        .iter()
        .filter(|p| p.session != from && m.is_member(&p.member))
        .collect();
    let names: Vec<(String, String)> = others
        .iter()
        .map(|p| {
            let (person, _) = p.names();
            (person, p.profile.name.clone())
        })
        .collect();
    let candidates = |live: bool| -> (Vec<Candidate<'_>>, Vec<usize>) {
        let mut c = Vec::new();
        let mut idx = Vec::new();
        for (i, p) in others.iter().enumerate() {
            if live && stale(p, grace, now) {
                continue;
            }
            c.push(Candidate {
                session: p.session,
                member: p.member,
                member_name: &names[i].0,
                label: &names[i].1,
                groups: &p.profile.groups,
                online: p.online,
                visible: p.profile.visible,
            });
            idx.push(i);
        }
        (c, idx)
    };
    let sel = Selector::parse(to);
    let (live, live_idx) = candidates(true);
    let mut picked = pick(&sel, &live);
    let mut map = live_idx;
    if matches!(picked, Pick::Member(_) | Pick::Session(_)) {
        // A name (or label, or id prefix) that also fits a member or session gone quiet
        // is ambiguous, never quietly the live one: else anyone could take an offline
        // member's name and read what is sent to it.
        let (all, all_idx) = candidates(false);
        let everyone = pick(&sel, &all);
        let member_of = |p: &Pick, cands: &[Candidate<'_>]| match p {
            Pick::Member(k) => Some(*k),
            Pick::Session(i) => Some(cands[*i].member),
            _ => None,
        };
        match everyone {
            Pick::Ambiguous(v) => {
                picked = Pick::Ambiguous(v);
                map = all_idx;
            }
            // Counting sessions gone quiet, the address means someone else: ambiguous.
            ref e if member_of(e, &all) != member_of(&picked, &live) => {
                let mut v: Vec<usize> = Vec::new();
                for (i, c) in all.iter().enumerate() {
                    let m = Some(c.member);
                    if (m == member_of(e, &all) || m == member_of(&picked, &live))
                        && !v.iter().any(|&j| all[j].member == c.member)
                    {
                        v.push(i);
                    }
                }
                picked = Pick::Ambiguous(v);
                map = all_idx;
            }
            _ => {}
        }
    }
    // A person's name another member was first seen with: never quietly the newcomer.
    if let (Pick::Member(k), Selector::Word(w)) = (&picked, &sel)
        && let Some(p) = others.iter().find(|p| {
            p.member == *k
                && p.name_holder.is_some()
                // Addressed by the name (not by its key).
                && p.names().0.to_lowercase().starts_with(&w.to_lowercase())
        })
    {
        let first = p
            .name_holder
            .map(|h| h.short_fingerprint())
            .unwrap_or_default();
        return Err(Error::ambiguous(format!(
            "{to:?} was first seen as another member (key {first}); this one is key {}. Address it by its key (`claudemesh peers` shows both) if you mean it",
            k.short_fingerprint()
        )));
    }
    if picked == Pick::None && matches!(sel, Selector::Word(_)) {
        // An ended session is still reached by its id (its inbox waits for a resume).
        let (all, all_idx) = candidates(false);
        let again = pick(&sel, &all);
        if matches!(again, Pick::Session(_)) {
            picked = again;
            map = all_idx;
        }
    }
    let row = |i: usize| others[map[i]];
    Ok(match picked {
        Pick::None => {
            // Our own person (a session writing to its own name) is not in the cache.
            let own = lock(&m.row).display_name.clone();
            match sel {
                Selector::Word(w) if w.eq_ignore_ascii_case(&own) => Some(Target {
                    route: Route::Member { member: m.member() },
                    key: None,
                    names: vec![own.clone()],
                    label: own,
                    local_member: true,
                    members: vec![m.member()],
                    offline: Vec::new(),
                }),
                _ => None,
            }
        }
        Pick::All => Some(Target {
            route: Route::All,
            key: None,
            names: others
                .iter()
                .filter(|p| p.profile.visible && !stale(p, grace, now))
                .map(|p| keyed(&p.names().0, &p.member))
                .collect(),
            label: "*".into(),
            local_member: false,
            members: Vec::new(),
            offline: Vec::new(),
        }),
        Pick::Group(v) => Some(Target {
            route: Route::Sessions {
                sessions: v.iter().map(|&i| row(i).session).collect(),
            },
            key: None,
            names: v
                .iter()
                .map(|&i| keyed(&row(i).names().0, &row(i).member))
                .collect(),
            label: to.to_string(),
            local_member: false,
            members: v.iter().map(|&i| row(i).member).collect(),
            offline: {
                let mut out: Vec<String> = Vec::new();
                for &i in &v {
                    let k = row(i).member;
                    let name = keyed(&row(i).names().0, &k);
                    if !v.iter().any(|&j| row(j).member == k && row(j).online)
                        && !out.contains(&name)
                    {
                        out.push(name);
                    }
                }
                out
            },
        }),
        Pick::Session(i) => {
            let p = row(i);
            let name = keyed(&p.names().0, &p.member);
            Some(Target {
                route: Route::Session { session: p.session },
                key: Some(p.session_key),
                names: vec![name.clone()],
                label: to.to_string(),
                local_member: false,
                members: vec![p.member],
                offline: if p.online { Vec::new() } else { vec![name] },
            })
        }
        Pick::Member(k) => {
            let person = others
                .iter()
                .find(|p| p.member == k)
                .map(|p| p.names().0)
                .unwrap_or_default();
            if k == m.member() {
                Some(Target {
                    route: Route::Member { member: k },
                    key: None,
                    names: vec![person.clone()],
                    label: person,
                    local_member: true,
                    members: vec![k],
                    offline: Vec::new(),
                })
            } else {
                let key = k
                    .box_public()
                    .map_err(|e| Error::internal(format!("member key does not convert: {e}")))?;
                let online = others.iter().any(|p| p.member == k && p.online);
                Some(Target {
                    route: Route::Member { member: k },
                    key: Some(key),
                    names: vec![keyed(&person, &k)],
                    offline: if online {
                        Vec::new()
                    } else {
                        vec![keyed(&person, &k)]
                    },
                    label: person,
                    local_member: false,
                    members: vec![k],
                })
            }
        }
        Pick::Ambiguous(v) => {
            return Err(Error::ambiguous(format!(
                "{to:?} matches several peers: {}; use `name/session` or the id shown by `claudemesh peers`",
                v.iter()
                    .map(|&i| describe(row(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    })
}

/// The members an address (a person, `name/session`, id prefix or `@group`) means in
/// `m`, with their names as shown: who a file share or grant is for. `*` is not an
/// address here (a mesh-wide share needs no list).
pub(crate) async fn members_for(
    d: &Daemon,
    m: &MeshCtx,
    to: &str,
) -> Result<Vec<(claudemesh_schema::crypto::MemberKey, String)>, Error> {
    let id = m.id;
    let peers = d.store.read(move |c| store::q_presence(c, id)).await?;
    let Some(t) = resolve(d, m, &peers, to, m.keys.session)? else {
        return Err(Error::not_found(format!(
            "no peer matches {to:?}; `claudemesh peers` lists who is in the mesh"
        )));
    };
    if t.members.is_empty() {
        return Err(Error::not_found(format!("nobody is in {to}")));
    }
    let mut out: Vec<(claudemesh_schema::crypto::MemberKey, String)> = Vec::new();
    for k in t.members {
        if out.iter().any(|(o, _)| *o == k) {
            continue;
        }
        let name = peers
            .iter()
            .find(|p| p.member == k)
            .map(|p| keyed(&p.names().0, &k))
            .unwrap_or_else(|| k.short_fingerprint());
        out.push((k, name));
    }
    Ok(out)
}

/// Send a message: resolve, seal, commit to the outbox, hand to the link, and wait
/// briefly for the relay's acknowledgement.
pub(crate) async fn send(d: &Arc<Daemon>, p: SendParams) -> Result<SendResult, Error> {
    let Some(key) = p.id.as_deref() else {
        return send_as(d, p, MessageId::new(), "text").await;
    };
    // Keyed by the mesh it goes to and the session it is from: the same key elsewhere is
    // another message.
    let m = d.select(p.mesh.as_deref())?;
    let from = p.session.unwrap_or(m.keys.session);
    let hash = idempotency_hash(key, &m.id, &from)?;
    // The first use of a key picks a time-ordered id and records it before anything is
    // sent, so a retry after any crash finds the same id, and the message sorts by when
    // it was first sent (mailboxes replay in id order), as unkeyed ones do.
    let fresh = MessageId::new();
    let id = d
        .store
        .write(move |tx| store::id_for_send_key(tx, &hash, fresh, now_ms()))
        .await?;
    let id = store::id16(id, MessageId::from_slice, "message id")?;
    // Sent before under this key: answer for that one. (Two sends racing with one key
    // are not this case: a caller retries after an answer or a failure, not alongside;
    // the second then fails on the outbox's unique id, and recipients dedupe by id.)
    if let Some((mesh, to, st)) = d.store.read(move |c| store::q_sent_by_id(c, id)).await?
        && mesh == m.id
    {
        return Ok(SendResult {
            id,
            mesh,
            stage: st.stage(),
            recipients: vec![to],
            local: 0,
            offline: Vec::new(),
            duplicate: true,
        });
    }
    send_as(d, p, id, "text").await
}

/// What names idempotency key `key` sent in `mesh` by `session` in the store: derived
/// from all three (never the key itself, even when it looks like an id), so keys of two
/// sessions or two meshes never meet, and no caller can name another's message by its id.
pub(crate) fn idempotency_hash(
    key: &str,
    mesh: &claudemesh_schema::MeshId,
    session: &SessionId,
) -> Result<[u8; 32], Error> {
    let key = key.trim();
    if key.is_empty() || key.chars().count() > 128 || key.chars().any(char::is_control) {
        return Err(Error::invalid(
            "an idempotency key (--id) is 1 to 128 printable characters",
        ));
    }
    let mut material = mesh.as_bytes().to_vec();
    material.extend_from_slice(session.as_bytes());
    material.extend_from_slice(key.as_bytes());
    Ok(blake3::derive_key(
        "claudemesh 2026 send idempotency key v1",
        &material,
    ))
}

/// Send with a given message id (a resend after a crash dedupes on it) and payload kind.
pub(crate) async fn send_as(
    d: &Arc<Daemon>,
    p: SendParams,
    id: MessageId,
    kind: &str,
) -> Result<SendResult, Error> {
    let to = p.to.trim().to_string();
    if to.is_empty() {
        return Err(Error::invalid(
            "no recipient given; use a peer name or id, @group, or *",
        ));
    }
    // No address is longer (names, `name/session`, ids, groups); a longer one would only
    // cost the resolver (and "did you mean") time.
    if to.chars().count() > 256 {
        return Err(Error::invalid(format!(
            "a recipient is a peer name or id, @group or *; this one is {} characters",
            to.chars().count()
        )));
    }
    if p.body.is_empty() {
        return Err(Error::invalid("the message is empty"));
    }
    if p.body.len() > MAX_BODY {
        return Err(Error::invalid(format!(
            "the message is {} bytes; the limit is {MAX_BODY} (share large content as a file)",
            p.body.len()
        )));
    }
    let broad = to == "*" || to.starts_with('@');
    let meshes = if broad && p.mesh.is_none() {
        vec![d.select(None)?]
    } else {
        d.select_many(p.mesh.as_deref())?
    };
    let mut found: Vec<(Arc<MeshCtx>, Target)> = Vec::new();
    // Names seen, for "did you mean".
    let mut known: Vec<String> = Vec::new();
    // A full session id needs no list: one row (or a session here) says who it is.
    let exact: Option<SessionId> = to.parse().ok();
    for m in meshes {
        let id = m.id;
        let from = p.session.unwrap_or(m.keys.session);
        if let Some(s) = p.session
            && !m.is_local(&s)
        {
            continue;
        }
        let peers = match exact {
            Some(sid) if sid != from && lock(&m.sessions).get(&sid).is_some_and(|l| l.open) => {
                found.push((
                    m.clone(),
                    Target {
                        route: Route::Session { session: sid },
                        key: None,
                        names: vec![lock(&m.row).display_name.clone()],
                        label: to.clone(),
                        local_member: false,
                        members: vec![m.member()],
                        offline: Vec::new(),
                    },
                ));
                continue;
            }
            Some(sid) => {
                // A peer session we heard from or about lately: its signed presence is in
                // memory, so no store read stands between the call and the seal.
                let known = lock(&m.senders).get(&sid).cloned();
                if let Some(s) = known
                    && sid != from
                    && m.is_member(&s.member)
                {
                    found.push((
                        m.clone(),
                        Target {
                            route: Route::Session { session: sid },
                            key: Some(s.session_key),
                            names: vec![keyed(&s.names.0, &s.member)],
                            label: to.clone(),
                            local_member: false,
                            members: vec![s.member],
                            offline: Vec::new(),
                        },
                    ));
                    continue;
                }
                let rows: Vec<PresenceRow> = d
                    .store
                    .read(move |c| store::q_presence_of(c, id, sid))
                    .await?
                    .into_iter()
                    .collect();
                for r in &rows {
                    m.learn_sender(r);
                }
                rows
            }
            None => d.store.read(move |c| store::q_presence(c, id)).await?,
        };
        for r in &peers {
            let (person, label) = r.names();
            known.push(person);
            known.push(label);
        }
        if let Some(t) = resolve(d, &m, &peers, &to, from)? {
            found.push((m, t));
        }
    }
    let (m, target) = match found.len() {
        0 => {
            return Err(Error::not_found(if let Some(g) = to.strip_prefix('@') {
                format!(
                    "nobody is in @{g}; nothing was sent (`claudemesh peers` shows peers and their groups)"
                )
            } else {
                match claudemesh_schema::select::suggest(&to, known.iter().map(String::as_str)) {
                    Some(near) => format!(
                        "no peer matches {to:?}; did you mean {near:?}? (`claudemesh peers` lists who you can message)"
                    ),
                    None => format!(
                        "no peer matches {to:?}; `claudemesh peers` lists who you can message"
                    ),
                }
            }));
        }
        1 => found.remove(0),
        // The default mesh (`mesh use`) decides when it is one of them.
        _ if let Some(i) = d
            .default_mesh()
            .and_then(|def| found.iter().position(|(m, _)| m.id == def)) =>
        {
            found.swap_remove(i)
        }
        _ => {
            return Err(Error::ambiguous(format!(
                "{to:?} matches peers in several meshes ({}); pass --mesh",
                found
                    .iter()
                    .map(|(m, _)| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let session = p.session.unwrap_or(m.keys.session);
    // Everyone, when there is no one else: refused like an empty group, not "sent" to no
    // one (other members get a broadcast even while offline; sessions here get it too).
    if target.route == Route::All {
        let me = m.member();
        let others_here =
            m.open_visible_sessions().iter().any(|s| *s != session) || session != m.keys.session;
        let alone = !lock(&m.roster).roster.members().any(|(k, _)| *k != me) && !others_here;
        if alone {
            return Err(Error::not_found(format!(
                "nobody else is in {} yet; nothing was sent (`claudemesh invite` makes a link for someone to join)",
                m.name()
            )));
        }
    }
    let now = now_ms();
    let from_name = lock(&m.row).display_name.clone();
    let from_label = if session == m.keys.session {
        String::new()
    } else {
        m.session_name(&session).unwrap_or_default()
    };
    if session != m.keys.session {
        crate::sessions::touch(d, &m, session).await;
    }
    m.count_out(&session);
    if target.local_member {
        return send_to_own_person(d, &m, id, session, from_name, from_label, &target, &p, kind)
            .await;
    }
    if let Route::Session { session: to } = target.route
        && m.is_local(&to)
    {
        return send_to_local_session(
            d,
            &m,
            id,
            session,
            (from_name, from_label),
            to,
            &target,
            &p,
            kind,
        )
        .await;
    }
    let payload = MessagePayload {
        id,
        from_session: session,
        from_name,
        from_label,
        to: target.label.clone(),
        priority: p.priority,
        sent_at: now,
        kind: kind.into(),
        body: p.body,
        // A group's members are sealed into it: the relay's route is only a copy.
        to_sessions: match &target.route {
            Route::Sessions { sessions } => sessions.clone(),
            _ => Vec::new(),
        },
    };
    let (seal, epoch, ct) = match &target.key {
        Some(k) => (
            Seal::Box,
            0,
            message::seal_direct_with(&m.boxes.to_key(&m.keys.member.box_secret(), k), &payload),
        ),
        None => {
            let (epoch, key) = m.seal_key();
            (
                Seal::Mesh,
                epoch,
                message::seal_for_mesh_at(epoch, &key, &m.keys.member, &payload),
            )
        }
    };
    let ct = ct.map_err(|e| Error::internal(format!("cannot seal message: {e}")))?;
    // A broadcast reaches our other local sessions here: the relay sends `*` to every
    // member but the sender's.
    let local: Vec<InboxRow> = if target.route == Route::All {
        let mut others = vec![m.keys.session];
        others.extend(m.open_visible_sessions());
        others.retain(|s| *s != session);
        rows_for(&m, &payload, &m.member(), others, now, false)
    } else {
        Vec::new()
    };
    let env = Envelope {
        id,
        from: session,
        from_member: m.member(),
        to: target.route,
        seal,
        ct,
        epoch,
    };
    let frame = Bytes::from(
        wire::encode(&ClientFrame::Send(env)).map_err(|e| Error::invalid(e.to_string()))?,
    );
    // The outbox commit (the durable point) and the trip to the relay overlap: the frame
    // goes to the link as soon as the write is queued, and `send` answers only after the
    // commit. Writes queued later (the relay's `relayed`) commit after it.
    let (queued_tx, queued) = tokio::sync::oneshot::channel();
    d.store
        .enqueue_then(
            m.id,
            id,
            frame.to_vec(),
            target.label.clone(),
            p.priority,
            now,
            Some(target.members.clone()),
            move |r| {
                let _ = queued_tx.send(r);
            },
        )
        .await
        .map_err(|e| Error::internal(format!("cannot queue the message: {e}")))?;
    let connected = m.link.connected();
    let wait = p.wait_ms.map(Duration::from_millis).unwrap_or(DEFAULT_WAIT);
    let (waiter, relayed) = if connected && !wait.is_zero() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    if connected {
        let _ = m
            .link
            .tx
            .send(LinkCmd::Send(id, frame.clone(), waiter))
            .await;
    }
    match queued.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Error::internal(format!(
                "cannot record the message ({e}); it may still reach its recipients"
            )));
        }
        Err(_) => return Err(Error::internal("the store stopped")),
    }
    // From here the message is durable: whatever happens next, it will be sent. Hand it
    // to the link again (a no-op if it is in flight): should the link have reconnected
    // before the commit, its new connection did not find it in the outbox yet.
    let _ = m.link.tx.send(LinkCmd::Send(id, frame, None)).await;
    let local_count = local.len() as u32;
    if !local.is_empty() {
        let mut local = local;
        let mut plan = Handover::plan(d, &m, &mut local);
        let (targets, person) = plan.take_wake();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let m3 = m.clone();
        d.store
            .insert_inbox_then(
                local,
                move |new| {
                    m3.count_in(new);
                    plan.push(new)
                },
                move |r| {
                    let _ = tx.send(r);
                },
            )
            .await?;
        rx.await
            .map_err(|_| Error::internal("the store stopped"))??;
        d.arrived(&m, &targets, person);
    }
    let mut stage = Stage::Queued;
    if let Some(rx) = relayed {
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(()))) => stage = Stage::Relayed,
            Ok(Ok(Err(refused))) => return Err(Error::invalid(refused)),
            // Not yet (or the link dropped): it stays queued and goes out on reconnect.
            _ => {}
        }
    }
    Ok(SendResult {
        id,
        mesh: m.id,
        stage,
        recipients: target.names,
        local: local_count,
        offline: target.offline,
        duplicate: false,
    })
}

/// A message to another session on this daemon: stored straight into its inbox (with the
/// sender's record of it) in one transaction; nothing goes through the relay, and nothing
/// needs sealing, since it never leaves this machine.
#[allow(clippy::too_many_arguments)]
async fn send_to_local_session(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    id: MessageId,
    session: SessionId,
    (from_name, from_label): (String, String),
    to: SessionId,
    target: &Target,
    p: &SendParams,
    kind: &str,
) -> Result<SendResult, Error> {
    let now = now_ms();
    let payload = MessagePayload {
        id,
        from_session: session,
        from_name,
        from_label,
        to: target.label.clone(),
        priority: p.priority,
        sent_at: now,
        kind: kind.into(),
        body: p.body.clone(),
        to_sessions: Vec::new(),
    };
    let mut rows = rows_for(m, &payload, &m.member(), vec![to], now, false);
    deliver_here(d, m, id, target, p, now, &mut rows).await?;
    Ok(SendResult {
        id,
        mesh: m.id,
        stage: Stage::Delivered,
        recipients: target.names.clone(),
        local: 1,
        offline: Vec::new(),
        duplicate: false,
    })
}

/// Store a message delivered on this daemon (its `sent` row and the recipients' rows, in
/// one transaction); sessions taking pushes get it as it commits, the rest are woken
/// after.
async fn deliver_here(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    id: MessageId,
    target: &Target,
    p: &SendParams,
    now: i64,
    rows: &mut Vec<InboxRow>,
) -> Result<(), Error> {
    let mut plan = Handover::plan(d, m, rows);
    let (wake, person) = plan.take_wake();
    let (d2, m2, m3) = (d.clone(), m.clone(), m.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    d.store
        .deliver_local_then(
            m.id,
            id,
            target.label.clone(),
            p.priority,
            now,
            std::mem::take(rows),
            move |new| {
                m3.count_in(new);
                plan.push(new)
            },
            move |r| {
                if r.is_ok() {
                    d2.arrived(&m2, &wake, person);
                    d2.bump_changes();
                }
                let _ = tx.send(r);
            },
        )
        .await?;
    rx.await
        .map_err(|_| Error::internal("the store stopped"))??;
    Ok(())
}

/// A message from one of our sessions to our own person: it goes to the person's inbox
/// here (the relay never routes to the sender's own member).
#[allow(clippy::too_many_arguments)]
async fn send_to_own_person(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    id: MessageId,
    session: SessionId,
    from_name: String,
    from_label: String,
    target: &Target,
    p: &SendParams,
    kind: &str,
) -> Result<SendResult, Error> {
    let now = now_ms();
    let payload = MessagePayload {
        id,
        from_session: session,
        from_name,
        from_label,
        to: target.label.clone(),
        priority: p.priority,
        sent_at: now,
        kind: kind.into(),
        body: p.body.clone(),
        to_sessions: Vec::new(),
    };
    let mut rows = rows_for(m, &payload, &m.member(), vec![m.keys.session], now, true);
    deliver_here(d, m, id, target, p, now, &mut rows).await?;
    Ok(SendResult {
        id,
        mesh: m.id,
        stage: Stage::Delivered,
        recipients: target.names.clone(),
        local: 1,
        offline: Vec::new(),
        duplicate: false,
    })
}

/// Tell the senders of `msgs` (all delivered to local sessions) that they were surfaced or
/// read. Receipts are boxed to the sender member and go through the outbox like messages;
/// for our own member's messages (local fan-out) the sent row is updated directly.
pub(crate) async fn send_receipts(d: &Arc<Daemon>, msgs: &[InboxMessage], read: bool) {
    let now = now_ms();
    let stage = if read { "read" } else { "surfaced" };
    for msg in msgs {
        let Some(m) = d.mesh(&msg.mesh) else { continue };
        let Some(from) = claudemesh_schema::crypto::MemberKey::from_b64(&msg.from_member) else {
            continue;
        };
        if from == m.member() {
            let _ = d.store.sent_stage(msg.id, from, read, now).await;
            d.bump_changes();
            continue;
        }
        let body = serde_json::to_string(&message::ReceiptBody {
            of: msg.id,
            stage: stage.into(),
            at: now,
        })
        .unwrap_or_default();
        let Some((id, frame)) =
            boxed_to_member(&m, msg.session, &from, message::KIND_RECEIPT, body)
        else {
            continue;
        };
        if d.store
            .enqueue(
                m.id,
                id,
                frame.clone(),
                "receipt".into(),
                message::Priority::Low,
                now,
                None,
            )
            .await
            .is_ok()
        {
            let _ = m
                .link
                .tx
                .send(LinkCmd::Send(id, Bytes::from(frame), None))
                .await;
        }
    }
}

/// A control payload (a receipt, a stats question or answer) from our session `from`,
/// boxed to `to`'s member key (whichever of its daemons the relay hands it to opens it),
/// as a `send` frame with its id. `None` if it cannot be sealed.
pub(crate) fn boxed_to_member(
    m: &MeshCtx,
    from: SessionId,
    to: &claudemesh_schema::crypto::MemberKey,
    kind: &str,
    body: String,
) -> Option<(MessageId, Vec<u8>)> {
    let boxed = m.boxes.to_member(&m.keys.member.box_secret(), to).ok()?;
    boxed_frame(m, from, Route::Member { member: *to }, &boxed, kind, body)
}

/// A control payload boxed to one session's key (a daemon's own session: only that
/// daemon opens it), as a `send` frame with its id.
pub(crate) fn boxed_to_session(
    m: &MeshCtx,
    from: SessionId,
    to: SessionId,
    key: &BoxPublic,
    kind: &str,
    body: String,
) -> Option<(MessageId, Vec<u8>)> {
    let boxed = m.boxes.to_key(&m.keys.member.box_secret(), key);
    boxed_frame(m, from, Route::Session { session: to }, &boxed, kind, body)
}

fn boxed_frame(
    m: &MeshCtx,
    from: SessionId,
    to: Route,
    boxed: &claudemesh_schema::crypto::BoxKey,
    kind: &str,
    body: String,
) -> Option<(MessageId, Vec<u8>)> {
    let id = MessageId::new();
    let payload = MessagePayload {
        id,
        from_session: from,
        from_name: String::new(),
        from_label: String::new(),
        to: kind.into(),
        priority: message::Priority::Low,
        sent_at: now_ms(),
        kind: kind.into(),
        body,
        to_sessions: Vec::new(),
    };
    let ct = message::seal_direct_with(boxed, &payload).ok()?;
    let env = Envelope {
        epoch: 0,
        id,
        from,
        from_member: m.member(),
        to,
        seal: Seal::Box,
        ct,
    };
    let frame = wire::encode(&ClientFrame::Send(env)).ok()?;
    Some((id, frame))
}
