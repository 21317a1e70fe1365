//! One joined mesh as the running daemon holds it: its keys, our identity row, the folded
//! roster, and the handle of its relay link.

use bytes::Bytes;
use claudemesh_relay::Transport;
use claudemesh_schema::crypto::{BoxKey, BoxPublic, BoxSecret, CryptoError, MemberKey};
use claudemesh_schema::ipc::methods::LinkState;
use claudemesh_schema::message::Profile;
use claudemesh_schema::op::SequencedOp;
use claudemesh_schema::roster::{Applied, Role, Roster, RosterEntry, RosterError, RosterHistory};
use claudemesh_schema::wire::{ClientFrame, ErrorCode, RelayFrame};
use claudemesh_schema::{MeshId, MessageId, OpId, SessionId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::keys::MeshKeys;
use crate::store::MeshRow;
use claudemesh_schema::crypto::MeshKey;
use claudemesh_schema::epoch::{Epoch, EpochBox, Keyring, open_epoch_box};

/// Lock a std mutex, recovering from poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the link reports about itself.
#[derive(Debug, Clone)]
pub(crate) struct LinkStatus {
    pub(crate) state: LinkState,
    pub(crate) transport: Option<Transport>,
    /// The relay node the link is up with (one of the relay's addresses).
    pub(crate) node: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) skew_ms: Option<i64>,
    /// Links made since the daemon started (a reconnect adds one).
    pub(crate) links: u64,
    /// Why the last link ended (kept while the next one is up).
    pub(crate) last_end: Option<String>,
}

impl Default for LinkStatus {
    fn default() -> Self {
        Self {
            state: LinkState::Connecting,
            transport: None,
            node: None,
            last_error: None,
            skew_ms: None,
            links: 0,
            last_end: None,
        }
    }
}

/// A relay's refusal of a request.
#[derive(Debug, Clone)]
pub(crate) struct RelayRefusal {
    pub(crate) code: Option<ErrorCode>,
    pub(crate) message: String,
}

/// Told when the relay committed an envelope (`Ok`), or why it refused it for good.
pub(crate) type RelayedWaiter = oneshot::Sender<Result<(), String>>;

/// Builds a request frame once the link has picked its request id.
pub(crate) type RequestBuilder = Box<dyn FnOnce(u64) -> ClientFrame + Send>;

/// Who waits for the answer to a request: to hear it succeeded, or to read the frame
/// that answered it (a chunk, a list).
#[derive(Debug)]
pub(crate) enum Reply {
    Done(oneshot::Sender<Result<(), RelayRefusal>>),
    Frame(oneshot::Sender<Result<RelayFrame, RelayRefusal>>),
}

impl Reply {
    pub(crate) fn answer(self, f: RelayFrame) {
        match self {
            Self::Done(tx) => {
                let _ = tx.send(Ok(()));
            }
            Self::Frame(tx) => {
                let _ = tx.send(Ok(f));
            }
        }
    }

    pub(crate) fn refuse(self, r: RelayRefusal) {
        match self {
            Self::Done(tx) => {
                let _ = tx.send(Err(r));
            }
            Self::Frame(tx) => {
                let _ = tx.send(Err(r));
            }
        }
    }
}

/// Someone waiting for a chunk asked of a member's daemon: the member asked, and where
/// to hand the sealed bytes.
pub(crate) type ChunkWaiter = (MemberKey, oneshot::Sender<Vec<u8>>);

/// Commands for a link actor.
pub(crate) enum LinkCmd {
    /// Send an outbox entry (already durable) now, if connected; the waiter (a `send`
    /// call) hears when the relay committed it, or is dropped if the link drops first.
    Send(MessageId, Bytes, Option<RelayedWaiter>),
    /// Send a request and report the relay's answer.
    Request(RequestBuilder, Reply),
    /// Publish a presence: one session's (its profile changed, it opened), or with `None`
    /// every announced one (the daemon's own profile changed).
    Publish(Option<SessionId>),
    /// Publish a session's presence after only its status changed: at most once per few
    /// seconds (the relay learns its state, not the timing of each turn).
    PublishStatus(SessionId),
    /// A hosted session ended.
    Depart(SessionId),
    /// Send a shared-state op (already durable in the op outbox) now, if connected.
    Op(OpId, Bytes),
    /// Read a page of the relay's op log (`from`, `limit`) for an audit.
    ReadOps(u64, u32, oneshot::Sender<Result<OpPage, RelayRefusal>>),
    /// Upload a sealed snapshot (its parts, in order).
    Snapshot(Vec<Bytes>),
    /// Ask the relay for its mailbox again (envelopes this daemon could not store).
    Redeliver,
}

/// One page of the relay's log, as read for an audit.
#[derive(Debug)]
pub(crate) struct OpPage {
    pub(crate) ops: Vec<SequencedOp>,
    pub(crate) head: u64,
    pub(crate) first: u64,
}

/// The sending side of a mesh's link.
#[derive(Debug)]
pub(crate) struct LinkHandle {
    pub(crate) tx: mpsc::Sender<LinkCmd>,
    pub(crate) status: watch::Receiver<LinkStatus>,
}

impl std::fmt::Debug for LinkCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send(id, ..) => write!(f, "Send({id:?})"),
            Self::Request(..) => f.write_str("Request"),
            Self::Publish(s) => write!(f, "Publish({s:?})"),
            Self::PublishStatus(s) => write!(f, "PublishStatus({s:?})"),
            Self::Depart(s) => write!(f, "Depart({s:?})"),
            Self::Op(id, _) => write!(f, "Op({id:?})"),
            Self::ReadOps(from, limit, _) => write!(f, "ReadOps({from}, {limit})"),
            Self::Snapshot(parts) => write!(f, "Snapshot({} parts)", parts.len()),
            Self::Redeliver => f.write_str("Redeliver"),
        }
    }
}

impl LinkHandle {
    pub(crate) fn connected(&self) -> bool {
        self.status.borrow().state == LinkState::Connected
    }

    /// Send a request through the relay and wait for its answer.
    pub(crate) async fn request(&self, build: RequestBuilder) -> Result<(), RelayRefusal> {
        let (tx, rx) = oneshot::channel();
        self.send_request(build, Reply::Done(tx)).await?;
        match tokio::time::timeout(std::time::Duration::from_secs(15), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(Self::unavailable()),
        }
    }

    /// Send a request through the relay and return the frame that answered it (`ok`
    /// included); waits at most `limit` for it.
    pub(crate) async fn ask(
        &self,
        build: RequestBuilder,
        limit: std::time::Duration,
    ) -> Result<RelayFrame, RelayRefusal> {
        let (tx, rx) = oneshot::channel();
        self.send_request(build, Reply::Frame(tx)).await?;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(Self::unavailable()),
        }
    }

    fn unavailable() -> RelayRefusal {
        RelayRefusal {
            code: None,
            message:
                "the relay is not reachable right now; check `claudemesh status` and try again"
                    .into(),
        }
    }

    async fn send_request(&self, build: RequestBuilder, reply: Reply) -> Result<(), RelayRefusal> {
        if !self.connected() {
            // A link that is (re)connecting right now gets a moment to come up.
            let mut st = self.status.clone();
            let up = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                st.wait_for(|s| s.state == LinkState::Connected),
            )
            .await;
            if !matches!(up, Ok(Ok(_))) {
                return Err(Self::unavailable());
            }
        }
        self.tx
            .send(LinkCmd::Request(build, reply))
            .await
            .map_err(|_| Self::unavailable())
    }
}

/// One joined mesh.
#[derive(Debug)]
pub(crate) struct MeshCtx {
    pub(crate) id: MeshId,
    pub(crate) keys: MeshKeys,
    pub(crate) row: Mutex<MeshRow>,
    pub(crate) roster: Mutex<RosterState>,
    pub(crate) link: LinkHandle,
    pub(crate) stop: CancellationToken,
    /// Sessions hosted here besides the daemon's own.
    pub(crate) sessions: Mutex<HashMap<SessionId, LocalSession>>,
    /// Client keys that speak for another key's session (the Claude session id after a
    /// `/clear`, say).
    pub(crate) aliases: Mutex<HashMap<String, SessionId>>,
    /// Shared-state writes waiting to hear their sequence number.
    pub(crate) op_waiters: Mutex<HashMap<OpId, Vec<oneshot::Sender<u64>>>>,
    /// This daemon's grants for other members (no entry: every capability).
    pub(crate) grants: Mutex<HashMap<MemberKey, crate::store::Grant>>,
    /// Applying ops failed: the link syncs again from the stored head (a stored permit,
    /// so a request made while the link is busy or down is not lost).
    pub(crate) resync: tokio::sync::Notify,
    /// Snapshots captured here and not yet stored by the relay.
    pub(crate) snapshots_pending: std::sync::atomic::AtomicU64,
    /// The link has applied the relay's log up to the head it reported at sync.
    pub(crate) op_caught_up: std::sync::atomic::AtomicBool,
    /// Who sent lately, by sending session: the member its signed presence names and the
    /// names it shows (what an arriving message is checked and labelled with), newest
    /// presence kept.
    pub(crate) senders: Mutex<HashMap<SessionId, Sender>>,
    /// Messages that came in lately, by (sending session, id): a resend of one of them
    /// is not pushed ahead of its store (the store finds it a duplicate). Seeded from the
    /// inbox when the first link starts.
    pub(crate) received: Mutex<claudemesh_schema::dedupe::FirstSeen<(SessionId, MessageId)>>,
    /// `ping_mesh` probes on their way through the relay and back, by id.
    pub(crate) probes: Mutex<HashMap<MessageId, oneshot::Sender<()>>>,
    /// `mesh_stats` questions waiting for their answers, by question id: where to hand
    /// an answer, and the member it was asked of (an answer from anyone else is dropped).
    pub(crate) stats_asks: Mutex<
        HashMap<
            MessageId,
            (
                MemberKey,
                oneshot::Sender<claudemesh_schema::message::StatsBody>,
            ),
        >,
    >,
    /// Stats questions answered lately, per asking member: since when, how many.
    pub(crate) stats_answered: Mutex<HashMap<MemberKey, (i64, u32)>>,
    /// File chunks asked of members' daemons, waiting for them: by chunk id, the members
    /// asked (an answer from anyone else is dropped) and where to hand the sealed bytes.
    pub(crate) chunk_asks: Mutex<HashMap<claudemesh_schema::file::ChunkId, Vec<ChunkWaiter>>>,
    /// Chunks served lately, per asking member: since when, how many.
    pub(crate) chunks_served: Mutex<HashMap<MemberKey, (i64, u32)>>,
    /// Chunk answers sent and not yet acknowledged by the asking member's daemon (its
    /// signed receipt clears one): the relay keeps each until then, in the mesh's quota.
    pub(crate) chunk_answers: Mutex<HashMap<MemberKey, std::collections::HashSet<MessageId>>>,
    /// File transfers running, by target path (a download) or file (an upload): a second
    /// one for the same target waits for the first instead of writing alongside it.
    pub(crate) transfers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How far each running transfer got, by its local path (`file_transfers`).
    pub(crate) progress: Mutex<HashMap<String, claudemesh_schema::ipc::files::FileTransfer>>,
    // Peer folders (`crate::peer_files`).
    /// `read_peer_file` / `list_peer_files` questions waiting for their answers, by
    /// question id: the member asked (an answer from anyone else is dropped), where to
    /// hand the answer.
    pub(crate) peer_file_asks: Mutex<
        HashMap<
            MessageId,
            (
                MemberKey,
                oneshot::Sender<claudemesh_schema::message::PeerFileBody>,
            ),
        >,
    >,
    /// Peer-folder questions answered lately, per asking member: since when, how many.
    pub(crate) peer_file_answered: Mutex<HashMap<MemberKey, (i64, u32)>>,
    /// Tool calls sent to hosting daemons, waiting for their results: by call id, the
    /// host member (a result from anyone else is dropped), where to hand it.
    pub(crate) tool_calls: Mutex<
        HashMap<
            MessageId,
            (
                MemberKey,
                oneshot::Sender<claudemesh_schema::tools::ResultBody>,
            ),
        >,
    >,
    /// Calls to our hosted servers seen lately, with their deadlines: a call is run once
    /// (a relay replaying one within its deadline gets nothing). Seeded from the audit
    /// log at start.
    pub(crate) tool_seen: Mutex<HashMap<MessageId, i64>>,
    /// The daemon's own session's usage (the CLI's), from when the mesh was loaded.
    pub(crate) own_usage: Mutex<Usage>,
    /// Boxes computed lately between our keys and peers' (the X25519 exchange is most of
    /// what sealing or opening a direct message costs).
    pub(crate) boxes: BoxKeys,
    /// Presences this daemon has sent for the mesh (each session open costs one).
    pub(crate) presences_sent: std::sync::atomic::AtomicU64,
    /// True while the link is held down on purpose (`claudemesh debug link down`).
    pub(crate) paused: watch::Sender<bool>,
    /// The mesh keys of every epoch this member holds, and what the fold knows of the
    /// newest epoch (see `schema::epoch`).
    pub(crate) epochs: Mutex<Epochs>,
    /// Something happened that may call for a key rotation (an epoch folded, the log
    /// caught up): the link checks (`shared::epochs::maybe_rotate`).
    pub(crate) rekey: tokio::sync::Notify,
    /// Envelopes this link was given that are sealed under a key epoch not applied yet,
    /// with their relay time; delivered again once one is (never acknowledged before).
    pub(crate) later: Mutex<Vec<(claudemesh_schema::wire::Envelope, i64)>>,
    /// The mesh's relay changed (a `set_relay` record was folded): the link drops its
    /// connection, or its wait for the next attempt, and dials the new address at once.
    pub(crate) redial: tokio::sync::Notify,
    /// Retry now if the link is waiting to (`debug link up`): the backoff starts again.
    pub(crate) retry_now: tokio::sync::Notify,
}

/// Key epochs as this daemon holds them.
#[derive(Debug)]
pub(crate) struct Epochs {
    /// Every key held, by epoch: new things are sealed with the newest.
    pub(crate) ring: Keyring,
    /// The newest epoch the fold accepted (this member may lack its key: it was left out).
    pub(crate) newest: Epoch,
    /// How many roster entries its author had applied when it made that epoch (0 for
    /// epoch 0): a removal at or after this position still needs a new epoch.
    pub(crate) newest_roster_len: u64,
    /// A rotation this daemon wrote is waiting to be sequenced and folded.
    pub(crate) rotating: bool,
    /// Keys opened from this member's box in `key_epoch` ops as they were opened, before
    /// the fold (queued behind them) decides: ops and messages sealed under them open
    /// while the op commits. Never sealed with (only `ring` is).
    pub(crate) candidates: Vec<(Epoch, MeshKey)>,
}

impl Epochs {
    pub(crate) fn new(ring: Keyring) -> Self {
        Self {
            ring,
            newest: 0,
            newest_roster_len: 0,
            rotating: false,
            candidates: Vec::new(),
        }
    }
}

impl MeshCtx {
    /// Count messages newly stored for local sessions (ours or hosted ones).
    pub(crate) fn count_in(&self, new: &[(MessageId, SessionId)]) {
        for (_, s) in new {
            self.with_usage(s, |u| u.messages_in += 1);
        }
    }

    /// Count a message sent by a local session.
    pub(crate) fn count_out(&self, session: &SessionId) {
        self.with_usage(session, |u| u.messages_out += 1);
    }

    fn with_usage(&self, session: &SessionId, f: impl FnOnce(&mut Usage)) {
        if *session == self.keys.session {
            f(&mut lock(&self.own_usage));
        } else if let Some(l) = lock(&self.sessions).get_mut(session) {
            f(&mut l.usage);
        }
    }
}

impl MeshCtx {
    /// The newest epoch held and its key: what new messages, presences and ops are
    /// sealed with.
    pub(crate) fn seal_key(&self) -> (Epoch, MeshKey) {
        let e = lock(&self.epochs);
        let (n, k) = e.ring.current();
        (n, k.clone())
    }

    /// The key of `epoch`, if this member holds it (or has opened it from a `key_epoch`
    /// op not yet folded).
    pub(crate) fn key_of(&self, epoch: Epoch) -> Option<MeshKey> {
        let e = lock(&self.epochs);
        e.ring.get(epoch).cloned().or_else(|| {
            e.candidates
                .iter()
                .find(|(x, _)| *x == epoch)
                .map(|(_, k)| k.clone())
        })
    }

    /// Every key held, newest epoch first.
    pub(crate) fn keys_newest_first(&self) -> Vec<MeshKey> {
        let e = lock(&self.epochs);
        let mut v: Vec<MeshKey> = e.ring.iter().map(|(_, k)| k.clone()).collect();
        v.reverse();
        v
    }

    /// A copy of every key held.
    pub(crate) fn keyring(&self) -> Keyring {
        lock(&self.epochs).ring.clone()
    }

    /// Record an epoch the fold accepted (`boxes` by `author`, made after `roster_len`
    /// entries), opening this member's box if there is one. Returns whether a new key
    /// was learned.
    pub(crate) fn learn_epoch(
        &self,
        epoch: Epoch,
        author: &MemberKey,
        roster_len: u64,
        boxes: &[EpochBox],
    ) -> bool {
        let me = self.keys.member.public();
        let key = boxes
            .iter()
            .find(|b| b.member == me)
            .and_then(|b| open_epoch_box(&self.id, epoch, b, author, &self.keys.member).ok());
        let mut e = lock(&self.epochs);
        if epoch >= e.newest {
            e.newest = epoch;
            e.newest_roster_len = roster_len;
            e.rotating = false;
        }
        match key {
            Some(k) => e.ring.insert(epoch, k),
            None => {
                tracing::warn!(mesh = %self.id.short(), epoch, "a key epoch was made without a key for this member; what is sealed under it will not open here");
                false
            }
        }
    }
}

/// A sending session as its latest signed presence describes it.
#[derive(Debug, Clone)]
pub(crate) struct Sender {
    pub(crate) seq: i64,
    pub(crate) member: MemberKey,
    /// The session's box key (direct messages to it are sealed to this key).
    pub(crate) session_key: BoxPublic,
    /// The person, and the session's label.
    pub(crate) names: (String, String),
    /// Another member holds the person name (it was first seen with that key).
    pub(crate) name_holder: Option<MemberKey>,
    /// The user confirmed this member's key.
    pub(crate) confirmed: bool,
    /// The member's first name, when it now shows another.
    pub(crate) renamed_from: Option<String>,
}

impl MeshCtx {
    /// Remember `p` as the description of its session's messages (unless a newer one is
    /// known).
    pub(crate) fn learn_sender(&self, p: &crate::store::PresenceRow) {
        let mut s = lock(&self.senders);
        // A session belongs to the member first seen with it: another member's presence
        // for it (a relay's or that member's doing) never takes it over.
        if s.get(&p.session)
            .is_some_and(|x| x.seq > p.seq || x.member != p.member)
        {
            return;
        }
        s.insert(
            p.session,
            Sender {
                seq: p.seq,
                member: p.member,
                session_key: p.session_key,
                names: p.names(),
                name_holder: p.name_holder,
                confirmed: p.confirmed,
                renamed_from: p.renamed_from.clone(),
            },
        );
    }
}

impl MeshCtx {
    /// The person name a member's sessions announced lately, if any did, with the member
    /// that name was first seen with when that is another.
    pub(crate) fn member_name(&self, member: &MemberKey) -> Option<(String, Option<MemberKey>)> {
        lock(&self.senders)
            .values()
            .filter(|s| s.member == *member && !s.names.0.is_empty())
            .max_by_key(|s| s.seq)
            .map(|s| (s.names.0.clone(), s.name_holder))
    }
}

/// Most boxes a mesh keeps computed; past it the cache starts over (a hundred sessions
/// talking to a hundred peers fit).
const BOX_CACHE: usize = 16_384;

/// Boxes between one of our secret keys (the member's, or a session's) and a peer's
/// public key, computed once. Keyed by [`BoxSecret::key_id`] (never the secret itself)
/// and the peer's key as given (a member key is converted once, in the computation).
#[derive(Default)]
pub(crate) struct BoxKeys(Mutex<HashMap<BoxId, Arc<BoxKey>>>);

/// Which box: our secret's id, the peer key's bytes, and whether that is a member key.
type BoxId = ([u8; 32], [u8; 32], bool);

impl std::fmt::Debug for BoxKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoxKeys({})", lock(&self.0).len())
    }
}

impl BoxKeys {
    fn get_or(
        &self,
        key: BoxId,
        make: impl FnOnce() -> Result<BoxKey, CryptoError>,
    ) -> Result<Arc<BoxKey>, CryptoError> {
        if let Some(b) = lock(&self.0).get(&key) {
            return Ok(b.clone());
        }
        // Computed outside the lock: two first uses at once compute it twice, harmlessly.
        let b = Arc::new(make()?);
        let mut map = lock(&self.0);
        if map.len() >= BOX_CACHE {
            map.clear();
        }
        map.insert(key, b.clone());
        Ok(b)
    }

    /// The box from `ours` to a session's (or converted member's) box key.
    pub(crate) fn to_key(&self, ours: &BoxSecret, theirs: &BoxPublic) -> Arc<BoxKey> {
        let key = (ours.key_id(), theirs.0, false);
        match self.get_or(key, || Ok(BoxKey::new(ours, theirs))) {
            Ok(b) => b,
            // Not reachable (nothing in it fails), but never worth a panic.
            Err(_) => Arc::new(BoxKey::new(ours, theirs)),
        }
    }

    /// The box from `ours` to member `theirs` (its signing key converted to a box key).
    pub(crate) fn to_member(
        &self,
        ours: &BoxSecret,
        theirs: &MemberKey,
    ) -> Result<Arc<BoxKey>, CryptoError> {
        self.get_or((ours.key_id(), theirs.0, true), || {
            Ok(BoxKey::new(ours, &theirs.box_public()?))
        })
    }
}

/// What the channel path of a session has shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Channel {
    /// No push tried yet (or the session's client cannot take pushes).
    #[default]
    Untried,
    /// Claude Code took a push into its queue: pushes reach this session.
    Works,
    /// A push was not taken within the deadline: Claude Code dropped it (channels off,
    /// print mode, not listed in `--channels`); hooks and pulls carry messages instead.
    Dropped,
}

/// A session hosted by this daemon (a Claude Code session, say).
#[derive(Debug)]
pub(crate) struct LocalSession {
    /// The key its id and box key derive from (`claude:<session id>` for Claude Code).
    pub(crate) client_key: String,
    pub(crate) secret: BoxSecret,
    pub(crate) profile: Profile,
    /// Closed sessions keep their key and inbox: direct messages sent while they were
    /// closed wait there for the session to reopen (with the same client key).
    pub(crate) open: bool,
    /// The Claude Code session id it speaks for now (changes with `/clear`).
    pub(crate) claude_session: Option<String>,
    /// The process it lives in (`<pid>-<start>`): its end ends the session.
    pub(crate) process: Option<String>,
    /// Live subscriptions holding it (the MCP shim keeps one for its lifetime).
    pub(crate) holds: u32,
    /// A subscription has held it: with none left and no live process, it is over.
    pub(crate) held: bool,
    /// Its Claude Code transcript, where pushes and hook context are confirmed.
    pub(crate) transcript: Option<std::path::PathBuf>,
    /// Who set the current status, and when (unix ms): the status engine's memory.
    pub(crate) status_source: claudemesh_schema::ipc::methods::StatusSource,
    pub(crate) status_at: i64,
    /// Last sign of use (a hook, a tool call, transcript growth), unix ms: messages to
    /// the person go to the most recently active session.
    pub(crate) active_at: i64,
    /// Presence sent to the relay: until then (a health check closes within a second) the
    /// session is private to this daemon and a close forgets it.
    pub(crate) announced: bool,
    /// A subscription asked for channel pushes.
    pub(crate) pushes: bool,
    /// Pulls (`check_messages`, `wait_for_message`) waiting now: no push competes with them.
    pub(crate) pulling: u32,
    pub(crate) channel: Channel,
    /// What it did since it opened (`mesh_stats`).
    pub(crate) usage: Usage,
}

/// A session's usage counters, kept in memory from when it opened (or reopened) here:
/// what `mesh_stats` reports for it, to us and to members who ask.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// When it opened, unix ms.
    pub(crate) since: i64,
    pub(crate) messages_in: u64,
    pub(crate) messages_out: u64,
    /// Totals its MCP client reported (`session_stats`).
    pub(crate) tool_calls: u64,
    pub(crate) tool_errors: u64,
}

impl Usage {
    pub(crate) fn since(at: i64) -> Self {
        Self {
            since: at,
            ..Self::default()
        }
    }

    pub(crate) fn report(
        &self,
        session: SessionId,
        now: i64,
    ) -> claudemesh_schema::message::SessionUsage {
        claudemesh_schema::message::SessionUsage {
            session,
            uptime_ms: now.saturating_sub(self.since).max(0) as u64,
            messages_out: self.messages_out,
            messages_in: self.messages_in,
            tool_calls: self.tool_calls,
            tool_errors: self.tool_errors,
        }
    }
}

/// The id and key of the hosted session `client_key` of `member` in `mesh`. Derived, not
/// stored: the same client key always gives the same peer (a resumed session is not a new
/// peer), and no session secret ever needs to be written down.
pub(crate) fn derive_session(
    keys: &MeshKeys,
    mesh: &MeshId,
    client_key: &str,
) -> (SessionId, BoxSecret) {
    use zeroize::Zeroize as _;
    let mut material = keys.member.to_bytes().to_vec();
    material.extend_from_slice(mesh.as_bytes());
    material.extend_from_slice(client_key.as_bytes());
    let k = blake3::derive_key("claudemesh 2026 hosted session v1", &material);
    material.zeroize();
    let id = blake3::derive_key("claudemesh 2026 hosted session id v1", &k);
    let mut b = [0u8; 16];
    b.copy_from_slice(&id[..16]);
    let sid = SessionId(uuid::Builder::from_random_bytes(b).into_uuid());
    (sid, BoxSecret::from_bytes(k))
}

/// The folded roster (a hash chain of entries) and its history.
#[derive(Debug)]
pub(crate) struct RosterState {
    pub(crate) roster: Roster,
    /// Membership after any number of entries: what the fold checks op authors against.
    pub(crate) history: RosterHistory,
    /// Position of the newest removal (or leave) applied: a key epoch made before it
    /// still opens for the member removed there.
    pub(crate) last_removal: Option<u64>,
}

impl RosterState {
    pub(crate) fn new(roster: Roster) -> Self {
        Self {
            history: RosterHistory::new(roster.owner()),
            roster,
            last_removal: None,
        }
    }

    /// How many entries are applied (dense: entries are applied only in order).
    pub(crate) fn len(&self) -> u64 {
        self.roster.len()
    }

    /// Apply the entry at `seq` if it is the next one in the chain; the entry already
    /// applied there is `Known`; a gap, a fork or a replay is refused.
    pub(crate) fn apply(&mut self, seq: u64, e: &RosterEntry) -> Result<Applied, RosterError> {
        let a = self.roster.apply_at(seq, e)?;
        if a == Applied::New {
            self.history.push(seq, e);
            if e.op == claudemesh_schema::roster::RosterOp::Remove {
                self.last_removal = Some(seq);
            }
        }
        Ok(a)
    }
}

/// A signed op that stands after more roster entries than this daemon was given: the
/// relay (which sends entries before the ops after them) is withholding membership
/// changes.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "op {seq} by {author} was written after {claimed} roster entries, but the relay gave this daemon only {known}: it is withholding membership changes"
)]
pub(crate) struct Withheld {
    pub(crate) seq: u64,
    pub(crate) author: String,
    pub(crate) claimed: u64,
    pub(crate) known: u64,
}

impl MeshCtx {
    pub(crate) fn member(&self) -> MemberKey {
        self.keys.member.public()
    }

    pub(crate) fn name(&self) -> String {
        lock(&self.row).name.clone()
    }

    pub(crate) fn role(&self) -> Role {
        let from_roster = lock(&self.roster).roster.role(&self.member());
        from_roster.unwrap_or_else(|| lock(&self.row).role)
    }

    pub(crate) fn is_member(&self, m: &MemberKey) -> bool {
        lock(&self.roster).roster.is_member(m)
    }

    /// The session that takes messages to the person now: the most recently active open
    /// hosted session, if any.
    pub(crate) fn designated(&self) -> Option<SessionId> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, l)| l.open)
            .max_by_key(|(id, l)| (l.active_at, **id))
            .map(|(id, _)| *id)
    }

    /// Open hosted sessions that receive broadcasts.
    pub(crate) fn open_visible_sessions(&self) -> Vec<SessionId> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, l)| l.open && l.profile.visible)
            .map(|(s, _)| *s)
            .collect()
    }

    /// Is `s` a local session that takes group messages: our own, or a hosted one that is
    /// visible (a hidden session gets only what is addressed to it alone).
    pub(crate) fn takes_groups(&self, s: &SessionId) -> bool {
        *s == self.keys.session
            || lock(&self.sessions)
                .get(s)
                .is_some_and(|l| l.profile.visible)
    }

    /// Is `s` one of the sessions this daemon holds in this mesh (its own or hosted)?
    pub(crate) fn is_local(&self, s: &SessionId) -> bool {
        *s == self.keys.session || lock(&self.sessions).contains_key(s)
    }

    /// Display name of a local session.
    pub(crate) fn session_name(&self, s: &SessionId) -> Option<String> {
        if *s == self.keys.session {
            return Some(lock(&self.row).display_name.clone());
        }
        lock(&self.sessions).get(s).map(|l| l.profile.name.clone())
    }

    /// Our daemon session's profile as published.
    pub(crate) fn profile(&self, hostname: &str) -> Profile {
        let row = lock(&self.row);
        Profile {
            name: row.display_name.clone(),
            member_name: row.display_name.clone(),
            kind: "cli".into(),
            status: row.status,
            summary: row.summary.clone(),
            groups: row.groups.clone(),
            hostname: hostname.to_string(),
            cwd: String::new(),
            visible: true,
            // The daemon's own session is read with `claudemesh inbox`.
            delivery: vec!["pull".into()],
            role: String::new(),
            client: "claudemesh-cli".into(),
            ..Profile::default()
        }
    }
}
