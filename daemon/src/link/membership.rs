//! The membership half of a link: the hello and the relay's snapshot (roster entries,
//! presences, `ready`), the roster as it grows, presences both ways, departures, and
//! admission claims for owners to decide.

use claudemesh_relay::Connection;
use claudemesh_schema::SessionId;
use claudemesh_schema::message::SignedPresence;
use claudemesh_schema::now_ms;
use claudemesh_schema::roster::{Applied, RosterEntry, RosterHead, RosterOp};
use claudemesh_schema::wire::{ClientFrame, Hello, PresenceRecord, RelayFrame, Welcome};
use std::sync::Arc;
use std::time::Duration;

use super::{CLIENT, End, read_frame, write};
use crate::context::Daemon;
use crate::mesh::{MeshCtx, lock};
use crate::store::PresenceRow;

/// Say hello and take the relay's snapshot; returns its welcome once `ready` came.
pub(super) async fn join(d: &Daemon, m: &MeshCtx, c: &mut Connection) -> Result<Welcome, End> {
    let mut hello = Hello::sign(
        &m.keys.member,
        m.id,
        m.keys.session,
        m.keys.session_secret.public(),
        now_ms(),
        CLIENT,
    );
    let ours = lock(&m.roster).roster.head();
    hello.roster_head = Some(ours);
    write(c, &ClientFrame::Hello(hello)).await?;
    let welcome = match read_frame(c, Duration::from_secs(10)).await? {
        RelayFrame::Welcome(w) => w,
        RelayFrame::Error { code, message, .. } => return Err(End::Refused { code, message }),
        _ => return Err(End::UnexpectedHello),
    };
    if welcome.genesis.mesh != m.id || welcome.genesis != lock(&m.row).genesis {
        return Err(End::WrongGenesis);
    }
    if let Some(theirs) = welcome.roster_head {
        behind_or_forked(m, ours, theirs)?;
    }
    let _ = d.store.all_offline(m.id).await;
    d.bump_changes();
    let mut presences = Vec::new();
    loop {
        match read_frame(c, Duration::from_secs(30)).await? {
            RelayFrame::Roster { seq, entry } => roster(d, m, seq, entry).await?,
            RelayFrame::Presence(rec) => presences.push(rec),
            RelayFrame::Ready { .. } => break,
            RelayFrame::Error {
                code,
                message,
                fatal: true,
                ..
            } => return Err(End::Refused { code, message }),
            other => {
                tracing::debug!(frame = ?std::mem::discriminant(&other), "ignored frame before ready")
            }
        }
    }
    // The entries sent must add up to the head announced.
    let now = lock(&m.roster).roster.head();
    if let Some(theirs) = welcome.roster_head
        && theirs != now
    {
        return Err(hostile(
            m,
            format!(
                "the relay announced {} roster entries but its entries lead to {} here, with another hash",
                theirs.len, now.len
            ),
        ));
    }
    for rec in presences {
        presence(d, m, rec).await;
    }
    Ok(welcome)
}

/// The relay's head at welcome against ours: behind ours (it hides entries this daemon
/// holds) or another hash at the same length (another history) is a hostile relay.
fn behind_or_forked(m: &MeshCtx, ours: RosterHead, theirs: RosterHead) -> Result<(), End> {
    if theirs.len < ours.len {
        return Err(hostile(
            m,
            format!(
                "the relay reports {} roster entries but this daemon holds {}: it is hiding membership changes (or was restored from an old backup)",
                theirs.len, ours.len
            ),
        ));
    }
    if theirs.len == ours.len && theirs.hash != ours.hash {
        return Err(hostile(
            m,
            format!(
                "the relay's roster of {} entries is another history than this daemon's: it rewrote membership changes",
                theirs.len
            ),
        ));
    }
    Ok(())
}

/// Log and build the end of a link whose relay misrepresents the roster.
fn hostile(m: &MeshCtx, reason: String) -> End {
    tracing::error!(mesh = %m.id.short(), %reason, "relay misrepresents the mesh's membership; link down");
    End::HostileRoster(reason)
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
    let (epoch, mesh_key) = m.seal_key();
    for (sid, key, profile) in all {
        match SignedPresence::sign_at(
            epoch,
            &mesh_key,
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
                    name_holder: None,
                    confirmed: false,
                    renamed_from: None,
                };
                out.push((ClientFrame::Presence(p), row));
            }
            Err(e) => tracing::error!(session = %sid.short(), error = %e, "cannot seal presence"),
        }
    }
    out
}

/// How often one session's presence may go out: changes within it (a status flip per tool
/// call or turn) are sent together at its end, so the relay learns a session's state, not
/// the timing of each turn.
pub(super) const PRESENCE_EVERY: Duration = Duration::from_secs(5);

/// One session's presence at most once per [`PRESENCE_EVERY`] (the first change at once,
/// later ones at the end of the window, the newest state only).
#[derive(Debug, Default)]
pub(super) struct Coalesce {
    last: std::collections::HashMap<SessionId, tokio::time::Instant>,
    due: std::collections::HashMap<SessionId, tokio::time::Instant>,
}

impl Coalesce {
    /// When the next held-back presence is due.
    pub(super) fn next_due(&self) -> Option<tokio::time::Instant> {
        self.due.values().min().copied()
    }

    /// Publish `sid`'s presence now (more than its status changed): what was held back
    /// for it goes with it.
    pub(super) async fn now(
        &mut self,
        d: &Daemon,
        m: &MeshCtx,
        c: &mut Connection,
        sid: SessionId,
    ) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        self.last.retain(|_, t| now < *t + PRESENCE_EVERY);
        self.last.insert(sid, now);
        self.due.remove(&sid);
        publish(d, m, c, Some(sid)).await.map(|_| ())
    }

    /// Publish `sid`'s presence after a status change: now, or at the end of its window.
    pub(super) async fn status(
        &mut self,
        d: &Daemon,
        m: &MeshCtx,
        c: &mut Connection,
        sid: SessionId,
    ) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        if let Some(t) = self.last.get(&sid)
            && now < *t + PRESENCE_EVERY
        {
            self.due.entry(sid).or_insert(*t + PRESENCE_EVERY);
            return Ok(());
        }
        self.now(d, m, c, sid).await
    }

    /// Publish what is due.
    pub(super) async fn flush_due(
        &mut self,
        d: &Daemon,
        m: &MeshCtx,
        c: &mut Connection,
    ) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        let ready: Vec<SessionId> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(s, _)| *s)
            .collect();
        for sid in ready {
            self.now(d, m, c, sid).await?;
        }
        Ok(())
    }
}

/// Send our presences (`only` one session's, or all) and record them in the local cache.
/// Returns how many were sent.
pub(super) async fn publish(
    d: &Daemon,
    m: &MeshCtx,
    c: &mut Connection,
    only: Option<SessionId>,
) -> Result<usize, End> {
    let frames = presence_frames(d, m, only);
    let n = frames.len();
    for (f, row) in frames {
        write(c, &f).await?;
        if row.session != m.keys.session {
            let _ = d.store.upsert_presence(row).await;
        }
    }
    m.presences_sent
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    d.bump_changes();
    Ok(n)
}

/// Fold the roster entry at `seq`; our own removal ends the link.
pub(super) async fn roster(
    d: &Daemon,
    m: &MeshCtx,
    seq: u64,
    entry: RosterEntry,
) -> Result<(), End> {
    let applied = lock(&m.roster).apply(seq, &entry);
    match applied {
        Ok(Applied::New) => {
            if let Err(e) = d.store.put_roster(m.id, seq, &entry).await {
                tracing::error!(seq, error = %e, "cannot store roster entry");
            }
            if entry.op == RosterOp::Remove && entry.member == m.member() {
                return Err(End::Removed);
            }
            Ok(())
        }
        Ok(Applied::Known) => Ok(()),
        // A gap, a fork, a replay: only the relay orders entries, so it rewrites history.
        Err(e) if e.is_chain() => Err(hostile(m, e.to_string())),
        // A relay that sends entries that do not verify is broken or hostile.
        Err(e) => {
            tracing::error!(seq, error = %e, "relay sent an invalid roster entry");
            Err(End::InvalidRoster(e.to_string()))
        }
    }
}

/// A peer's presence: cached if it verifies and comes from a member.
pub(super) async fn presence(d: &Daemon, m: &MeshCtx, rec: PresenceRecord) {
    let p = rec.presence;
    if p.mesh != m.id || !m.is_member(&p.member) {
        return;
    }
    let Some(key) = m.key_of(p.epoch) else {
        tracing::warn!(session = %p.session.short(), epoch = p.epoch, "presence sealed under a key epoch this member does not hold; ignored");
        return;
    };
    let profile = match p.open(&key) {
        // Held to the rules local profiles are held to before anything shows it.
        Ok(pr) => pr.from_peer(),
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
        name_holder: None,
        confirmed: false,
        renamed_from: None,
    };
    let mut row = row;
    // Stored (and its name pinned) before it is learned: frames of a link are handled in
    // order, so what this session sends next is labelled with what the pin says.
    match d.store.upsert_presence(row.clone()).await {
        Ok(pin) => {
            row.name_holder = pin.name_holder;
            row.confirmed = pin.confirmed;
            row.renamed_from = pin.renamed_from;
        }
        Err(e) => tracing::warn!(error = %e, "cannot cache presence"),
    }
    if let Some(k) = row.name_holder {
        tracing::warn!(session = %row.session.short(), member = %row.member.short(), first = %k.short(), "a peer announced a name another member holds");
    }
    m.learn_sender(&row);
    d.bump_changes();
}

/// The membership frames of a running link; `Ok(Some(frame))` hands back one that is not.
pub(super) async fn on_frame(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    f: RelayFrame,
) -> Result<Option<RelayFrame>, End> {
    match f {
        RelayFrame::Presence(rec) => presence(d, m, rec).await,
        RelayFrame::Depart { session, at } => {
            let _ = d.store.presence_offline(m.id, session, at).await;
            d.bump_changes();
        }
        RelayFrame::Roster { seq, entry } => roster(d, m, seq, entry).await?,
        RelayFrame::ClaimPending {
            claim,
            request,
            cap,
            at,
        } => {
            let (d2, m2) = (d.clone(), m.clone());
            d.spawn(
                async move { crate::membership::on_claim(&d2, &m2, claim, request, cap, at).await },
            );
        }
        other => return Ok(Some(other)),
    }
    Ok(None)
}
