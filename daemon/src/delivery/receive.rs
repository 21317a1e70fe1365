//! Incoming envelopes: open and verify them into inbox rows (one per local session they
//! are for), or into receipts about messages we sent.

use claudemesh_schema::crypto::BoxSecret;
use claudemesh_schema::ipc::methods::InboxMessage;
use claudemesh_schema::message::{self, KIND_REMINDER, MessagePayload};
use claudemesh_schema::tools;
use claudemesh_schema::wire::{Envelope, Route, Seal};
use claudemesh_schema::{SessionId, now_ms};

use crate::mesh::{MeshCtx, Sender, lock};
use crate::store::InboxRow;

/// What an incoming envelope turned out to be.
#[derive(Debug)]
pub(crate) enum Opened {
    /// A message: one inbox row per local session it is for.
    Rows(Vec<InboxRow>),
    /// A receipt about a message we sent.
    Receipt(message::ReceiptBody),
    /// A member's daemon asks for our sessions' usage (`mesh_stats`); sent at `sent_at`.
    StatsAsk { sent_at: i64 },
    /// A member's daemon answers our `mesh_stats` question.
    Stats(message::StatsBody),
    /// A file payload boxed to our member: a chunk request, a chunk, a fetched receipt
    /// (see [`message::is_file_kind`]).
    File { kind: String, body: String },
    /// Peer folders: a member's daemon asks about a folder we share; sent at `sent_at`.
    PeerFileAsk {
        sent_at: i64,
        ask: message::PeerFileAsk,
    },
    /// Peer folders: a member's daemon answers our question.
    PeerFile(message::PeerFileBody),
    /// Shared tools: a member's daemon calls a server we host; sent at `sent_at`.
    ToolCall { sent_at: i64, call: tools::CallBody },
    /// Shared tools: the hosting daemon answers our call.
    ToolResult(tools::ResultBody),
    /// Hosted services: a member asks for a service's log lines; sent at `sent_at`.
    DeployLogs {
        sent_at: i64,
        ask: claudemesh_schema::deploy::LogsAsk,
    },
    /// Nothing for us (not addressed to us, not from a member, does not open).
    Nothing,
    /// Sealed under a key epoch newer than any this daemon has folded: its `key_epoch` op
    /// is not applied yet (a link's deliveries come before its op catch-up). Not
    /// acknowledged: the link keeps it and delivers it again once an epoch is applied or
    /// opened (and the relay sends it again on the next link).
    Later,
}

/// Open an envelope delivered to this daemon. Refusals are logged, never with content.
pub(crate) fn open(m: &MeshCtx, env: &Envelope, at: i64, sender: Option<&Sender>) -> Opened {
    if env.seal == Seal::Mesh && m.key_of(env.epoch).is_none() && env.epoch > lock(&m.epochs).newest
    {
        tracing::info!(id = %env.id, epoch = env.epoch, "message sealed under a key epoch not applied here yet; kept until it is");
        return Opened::Later;
    }
    let rows = open_rows(m, env, at, sender);
    match rows {
        Ok(r) if r.is_empty() => Opened::Nothing,
        Ok(r) => Opened::Rows(r),
        Err(c) => c,
    }
}

fn open_rows(
    m: &MeshCtx,
    env: &Envelope,
    at: i64,
    sender: Option<&Sender>,
) -> Result<Vec<InboxRow>, Opened> {
    if !m.is_member(&env.from_member) {
        tracing::warn!(id = %env.id, from = %env.from_member.short(), "message from a non-member dropped");
        return Ok(Vec::new());
    }
    let own = m.keys.session;
    // A message to our member is the person's: stored once, on our own session, for any
    // of the person's sessions here to show.
    let for_member = matches!(&env.to, Route::Member { .. });
    let targets: Vec<SessionId> = match &env.to {
        Route::Session { session } if m.is_local(session) => vec![*session],
        Route::Member { member } if *member == m.member() => vec![own],
        // A group message: a sender that ignored a session's hidden presence still does
        // not reach it here.
        Route::Sessions { sessions } => sessions
            .iter()
            .copied()
            .filter(|s| m.takes_groups(s) && *s != env.from)
            .collect(),
        Route::All => {
            let mut v = vec![own];
            v.extend(m.open_visible_sessions());
            v
        }
        _ => Vec::new(),
    };
    if targets.is_empty() {
        tracing::debug!(id = %env.id, "envelope for no session of ours");
        return Ok(Vec::new());
    }
    let opened = match (env.seal, &env.to) {
        (Seal::Mesh, _) => match m.key_of(env.epoch) {
            Some(key) => {
                message::open_from_mesh_at(env.epoch, &key, &env.from_member, &env.id, &env.ct)
            }
            None => {
                tracing::warn!(id = %env.id, epoch = env.epoch, "message sealed under a key epoch this member does not hold; dropped");
                return Ok(Vec::new());
            }
        },
        (Seal::Box, Route::Member { .. }) => open_direct(m, &m.keys.member.box_secret(), env),
        (Seal::Box, Route::Session { session }) if *session == own => {
            open_direct(m, &m.keys.session_secret, env)
        }
        (Seal::Box, Route::Session { session }) => match lock(&m.sessions).get(session) {
            Some(l) => open_direct(m, &l.secret, env),
            None => return Ok(Vec::new()),
        },
        (Seal::Box, _) => {
            tracing::warn!(id = %env.id, "boxed envelope to several sessions dropped");
            return Ok(Vec::new());
        }
    };
    let p = match opened {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(id = %env.id, error = %e, "message does not open; dropped");
            return Ok(Vec::new());
        }
    };
    // A `ping_mesh` probe that came back after its wait (a reconnect replayed it): it
    // was only ever a measurement.
    if p.kind == message::KIND_PROBE {
        return Ok(Vec::new());
    }
    if p.from_session != env.from {
        tracing::warn!(id = %env.id, "message names another sender session than its envelope; dropped");
        return Ok(Vec::new());
    }
    // The sending session must belong to the sending member (as its signed presence says),
    // and the names shown are the ones from that presence, not the ones the sender typed.
    // File payloads come boxed to our member; a served chunk is larger than a message
    // may be (the envelope bounds it).
    if message::is_file_kind(&p.kind) {
        if !matches!(env.to, Route::Member { .. }) || env.seal != Seal::Box {
            return Ok(Vec::new());
        }
        return Err(Opened::File {
            kind: p.kind,
            body: p.body,
        });
    }
    // Shared tools: calls and results come boxed to a daemon's own session (the host's,
    // the caller's), from a session of the sending member; a result may be larger than
    // a message (the envelope bounds it).
    let deploy_logs = claudemesh_schema::deploy::KIND_DEPLOY_LOGS;
    if p.kind == tools::KIND_TOOL_CALL || p.kind == tools::KIND_TOOL_RESULT || p.kind == deploy_logs
    {
        let to_own = matches!(env.to, Route::Session { session } if session == own);
        if !to_own || env.seal != Seal::Box || sender.is_some_and(|s| s.member != env.from_member) {
            return Ok(Vec::new());
        }
        if p.kind == deploy_logs {
            return match serde_json::from_str(&p.body) {
                Ok(ask) => Err(Opened::DeployLogs {
                    sent_at: p.sent_at,
                    ask,
                }),
                Err(_) => Ok(Vec::new()),
            };
        }
        if p.kind == tools::KIND_TOOL_CALL {
            return match serde_json::from_str::<tools::CallBody>(&p.body) {
                Ok(call) => Err(Opened::ToolCall {
                    sent_at: p.sent_at,
                    call,
                }),
                Err(_) => Ok(Vec::new()),
            };
        }
        return match serde_json::from_str::<tools::ResultBody>(&p.body) {
            Ok(b) => Err(Opened::ToolResult(b)),
            Err(_) => Ok(Vec::new()),
        };
    }
    let mut p = p;
    // A peer-folder answer carries up to 96 KiB of file content (as base64: more than a
    // message body may hold); its own bound is checked here instead.
    let max_body = if p.kind == message::KIND_PEER_FILE {
        crate::delivery::MAX_BODY.max(crate::peer_files::MAX_ANSWER_BODY)
    } else {
        crate::delivery::MAX_BODY
    };
    if p.body.len() > max_body {
        // The sender's daemon refuses these; one that did not is not ours to store.
        tracing::warn!(id = %env.id, size = p.body.len(), "message over the size limit; dropped");
        return Ok(Vec::new());
    }
    // The names shown are never the ones the payload claims: they come from the sending
    // session's signed presence (held to the name rules on receipt), or, for a session
    // that never announced itself, from another session of the same member; else none.
    let (person, label) = match sender {
        Some(s) if s.member != env.from_member => {
            tracing::warn!(id = %env.id, "message from a session of another member; dropped");
            return Ok(Vec::new());
        }
        // A name another member was first seen with: shown, with whose it is not.
        Some(s) => (
            renamed(
                flagged(&s.names.0, s.name_holder),
                s.renamed_from.as_deref(),
            ),
            s.names.1.clone(),
        ),
        None => match m.member_name(&env.from_member) {
            Some((name, holder)) => (flagged(&name, holder), String::new()),
            None => (String::new(), String::new()),
        },
    };
    // Peer folders: questions and answers come boxed to our member, and go to
    // `peer_files` as they are (file content is not a message body: it is cleaned where
    // it is shown, not here).
    if p.kind == message::KIND_PEER_FILE_ASK || p.kind == message::KIND_PEER_FILE {
        if !matches!(env.to, Route::Member { .. }) || env.seal != Seal::Box {
            return Ok(Vec::new());
        }
        if p.kind == message::KIND_PEER_FILE_ASK {
            return match serde_json::from_str::<message::PeerFileAsk>(&p.body) {
                Ok(ask) => Err(Opened::PeerFileAsk {
                    sent_at: p.sent_at,
                    ask,
                }),
                Err(_) => Ok(Vec::new()),
            };
        }
        return match serde_json::from_str::<message::PeerFileBody>(&p.body) {
            Ok(b) => Err(Opened::PeerFile(b)),
            Err(_) => Ok(Vec::new()),
        };
    }
    p.from_name = person;
    p.from_label = label;
    // Remote text is stored as it will be shown: no terminal escapes, no invisible
    // characters; a peer cannot send what reads as this machine's own reminder (a
    // reminder a peer set for us is a message from that peer).
    p.body = claudemesh_schema::names::body(&p.body);
    p.to = claudemesh_schema::names::one_line(&p.to, 64);
    // Stats questions and answers, like receipts, come boxed to our member.
    if p.kind == message::KIND_STATS_ASK || p.kind == message::KIND_STATS {
        if !matches!(env.to, Route::Member { .. }) || env.seal != Seal::Box {
            return Ok(Vec::new());
        }
        if p.kind == message::KIND_STATS_ASK {
            return Err(Opened::StatsAsk { sent_at: p.sent_at });
        }
        return match serde_json::from_str::<message::StatsBody>(&p.body) {
            Ok(b) => Err(Opened::Stats(b)),
            Err(_) => Ok(Vec::new()),
        };
    }
    p.kind = if p.kind == message::KIND_RECEIPT {
        message::KIND_RECEIPT.into()
    } else {
        "text".into()
    };
    if p.kind == message::KIND_RECEIPT {
        // Receipts come boxed to our member from a member; the body names our message.
        if matches!(env.to, Route::Member { .. })
            && env.seal == Seal::Box
            && let Ok(r) = serde_json::from_str::<message::ReceiptBody>(&p.body)
        {
            return Err(Opened::Receipt(r));
        }
        return Ok(Vec::new());
    }
    // Grants: a direct message needs `dm`, a group or broadcast one `broadcast`; a blocked
    // member has neither. Dropped silently (the envelope is still acknowledged).
    let cap = match (&env.seal, &env.to) {
        (Seal::Box, _) => "dm",
        // A "group" of one is a direct message.
        (_, Route::Sessions { sessions }) if sessions.len() <= 1 => "dm",
        (_, Route::All | Route::Sessions { .. }) => "broadcast",
        _ => "dm",
    };
    if !m.allows(&env.from_member, cap) {
        tracing::debug!(id = %env.id, from = %env.from_member.short(), cap, "message dropped by grants");
        return Ok(Vec::new());
    }
    // A group message goes only to the sessions sealed into it, whatever the relay's
    // route says.
    let targets: Vec<SessionId> = if p.to_sessions.is_empty() {
        targets
    } else {
        let kept: Vec<SessionId> = targets
            .into_iter()
            .filter(|t| p.to_sessions.contains(t))
            .collect();
        if kept.is_empty() {
            tracing::warn!(id = %env.id, "a group message routed to sessions it was not sent to; dropped");
            return Ok(Vec::new());
        }
        kept
    };
    let mut rows = rows_for(m, &p, &env.from_member, targets, at, for_member);
    // Verified: the user confirmed this member's key, and its name is its own.
    let verified = sender.is_some_and(|s| s.confirmed && s.name_holder.is_none());
    for r in &mut rows {
        r.msg.verified = verified;
    }
    Ok(rows)
}

/// A person's name as shown, saying so when another member was first seen with it.
fn flagged(name: &str, holder: Option<claudemesh_schema::crypto::MemberKey>) -> String {
    match holder {
        Some(first) if !name.is_empty() => format!(
            "{name} (not the {name} first seen, key {})",
            first.short_fingerprint()
        ),
        _ => name.to_string(),
    }
}

/// A name as shown, saying which name its member was first seen with when that differs.
fn renamed(name: String, first: Option<&str>) -> String {
    match first {
        Some(f) if !name.is_empty() => format!("{name} (was {f})"),
        _ => name,
    }
}

/// Open a direct message boxed to `ours`, with the box to its sender computed once.
fn open_direct(
    m: &MeshCtx,
    ours: &BoxSecret,
    env: &Envelope,
) -> Result<MessagePayload, message::OpenError> {
    let key = m.boxes.to_member(ours, &env.from_member)?;
    message::open_direct_with(&key, &env.id, &env.ct)
}

pub(super) fn rows_for(
    m: &MeshCtx,
    p: &MessagePayload,
    from_member: &claudemesh_schema::crypto::MemberKey,
    targets: Vec<SessionId>,
    at: i64,
    for_member: bool,
) -> Vec<InboxRow> {
    let mesh_name = m.name();
    targets
        .into_iter()
        .map(|session| InboxRow {
            pushed_to: None,
            msg: InboxMessage {
                id: p.id,
                session,
                mesh: m.id,
                mesh_name: mesh_name.clone(),
                from_id: p.from_session,
                from_member: from_member.to_b64(),
                from_name: p.from_name.clone(),
                from_label: p.from_label.clone(),
                to: p.to.clone(),
                priority: p.priority,
                sent_at: p.sent_at,
                received_at: at.max(now_ms()),
                body: p.body.clone(),
                verified: true,
                surfaced_at: None,
                kind: if p.kind == KIND_REMINDER {
                    KIND_REMINDER.into()
                } else {
                    "text".into()
                },
                for_member,
            },
        })
        .collect()
}
