//! What travels sealed: message payloads and presence profiles, and the functions that
//! seal and open them. The relay only ever sees the outputs of these functions.
//!
//! - Direct messages (to one session or one member) are `crypto_box`ed from the sender's
//!   member key (converted to x25519) to the recipient session's key, so opening the box
//!   also authenticates the sender member.
//! - Group and broadcast messages are sealed with the mesh key and carry an ed25519
//!   signature of the sender member inside the ciphertext, because every member holds the
//!   mesh key and could otherwise impersonate any other.
//! - Presence profiles are sealed with the mesh key; the [`SignedPresence`] around them is
//!   signed by the member, binding the session's public key to the member.

use serde::{Deserialize, Serialize};

use crate::crypto::{
    BoxKey, BoxPublic, BoxSecret, Canonical, CryptoError, MemberKey, MemberSecret, MeshKey,
    Signature,
};
use crate::encoding;
use crate::epoch::Epoch;
use crate::ids::{MeshId, MessageId, SessionId};

/// Delivery priority, decided by the sender and honoured by the recipient's daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Deliver immediately, even to a busy session.
    Now,
    /// Deliver when the session is idle (the default).
    #[default]
    Next,
    /// Deliver only when the session asks.
    Low,
}

impl Priority {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Now => "now",
            Self::Next => "next",
            Self::Low => "low",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "now" => Ok(Self::Now),
            "next" => Ok(Self::Next),
            "low" => Ok(Self::Low),
            other => Err(format!(
                "unknown priority {other:?} (expected now, next or low)"
            )),
        }
    }
}

/// What a session is doing, as shown to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerStatus {
    /// Waiting for input; receives `now` and `next` messages.
    #[default]
    Idle,
    /// Busy; receives only `now` messages.
    Working,
    /// Do not disturb; receives only `now` messages.
    Dnd,
}

impl PeerStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Working => "working",
            Self::Dnd => "dnd",
        }
    }
}

impl std::str::FromStr for PeerStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "idle" => Ok(Self::Idle),
            "working" => Ok(Self::Working),
            "dnd" => Ok(Self::Dnd),
            other => Err(format!(
                "unknown status {other:?} (expected idle, working or dnd)"
            )),
        }
    }
}

/// A way messages reach a session's reader, as listed in its profile's `delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryPath {
    /// Pushed into the session (Claude Code's channel notifications).
    Channel,
    /// Put into the model's context by Claude Code hooks.
    Hooks,
    /// Pulled by the session (`check_messages`, `claudemesh inbox`).
    Pull,
}

impl DeliveryPath {
    /// The name used in profiles and stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Hooks => "hooks",
            Self::Pull => "pull",
        }
    }
}

/// A peer's public profile, sealed with the mesh key inside its presence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// Display name: the session's label (a member's daemon session carries the member's
    /// name).
    pub name: String,
    /// The person: the member's display name (empty from daemons before 0.2).
    pub member_name: String,
    /// What kind of peer: `cli` (a daemon's own session), `claude`, or another client name.
    pub kind: String,
    /// Current status.
    pub status: PeerStatus,
    /// What the peer is working on.
    pub summary: String,
    /// Groups, without the leading `@`.
    pub groups: Vec<String>,
    /// Host name of the peer's machine.
    pub hostname: String,
    /// Working directory, when the peer shares it.
    pub cwd: String,
    /// Hidden peers are left out of listings and broadcasts but still get direct messages.
    pub visible: bool,
    /// How messages reach this peer, as its daemon has seen: `channel` (pushed into the
    /// session), `hooks` (put into context by Claude Code hooks), `pull` (the session asks).
    pub delivery: Vec<String>,
    /// Free-form role tag (e.g. `reviewer`), set with `claudemesh launch --role`.
    pub role: String,
    /// The client software (e.g. `claude-code`).
    pub client: String,
    /// An emoji or short picture reference the peer chose (`set_profile`).
    pub avatar: String,
    /// A short role label (`set_profile`), e.g. "backend lead".
    pub title: String,
    /// One line about the peer (`set_profile`).
    pub bio: String,
    /// What the peer can help with (`set_profile`).
    pub capabilities: Vec<String>,
    /// The role the session gave when joining each group (`join_group`: `lead`,
    /// `member` or free-form), by group name; only groups in `groups` count.
    pub group_roles: std::collections::BTreeMap<String, String>,
}

/// Longest avatar, title, bio, capability and group role a peer may announce, in
/// characters (longer ones are cut on receipt).
pub const MAX_AVATAR: usize = 64;
/// See [`MAX_AVATAR`].
pub const MAX_TITLE: usize = 64;
/// See [`MAX_AVATAR`].
pub const MAX_BIO: usize = 280;
/// See [`MAX_AVATAR`].
pub const MAX_CAPABILITY: usize = 64;
/// Most capabilities a profile lists.
pub const MAX_CAPABILITIES: usize = 16;
/// See [`MAX_AVATAR`].
pub const MAX_GROUP_ROLE: usize = 32;

impl Profile {
    /// This profile as announced by another machine, held to the rules local profiles are
    /// held to before anything shows it: names and groups that break the name rules are
    /// dropped (the peer is then shown by its key), free text becomes one clean line of
    /// bounded length, the kind is a plain word, and delivery lists only known paths.
    pub fn from_peer(self) -> Profile {
        let word = |s: &str| {
            let w = crate::names::one_line(s, 32);
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                w
            } else if w.is_empty() {
                String::new()
            } else {
                "other".to_string()
            }
        };
        let mut groups: Vec<String> = self
            .groups
            .iter()
            .filter_map(|g| crate::names::group_from_peer(g))
            .collect();
        groups.truncate(32);
        Profile {
            name: crate::names::from_peer(&self.name).unwrap_or_default(),
            member_name: crate::names::from_peer(&self.member_name).unwrap_or_default(),
            kind: word(&self.kind),
            status: self.status,
            summary: crate::names::one_line(&self.summary, 280),
            hostname: crate::names::one_line(&self.hostname, 64),
            cwd: crate::names::one_line(&self.cwd, 256),
            visible: self.visible,
            delivery: self
                .delivery
                .into_iter()
                .filter(|d| matches!(d.as_str(), "channel" | "hooks" | "pull"))
                .collect(),
            role: crate::names::one_line(&self.role, 64),
            client: word(&self.client),
            // Free text other models read: one clean line each, bounded, like a summary.
            avatar: crate::names::one_line(&self.avatar, MAX_AVATAR),
            title: crate::names::one_line(&self.title, MAX_TITLE),
            bio: crate::names::one_line(&self.bio, MAX_BIO),
            capabilities: {
                let mut c: Vec<String> = self
                    .capabilities
                    .iter()
                    .map(|c| crate::names::one_line(c, MAX_CAPABILITY))
                    .filter(|c| !c.is_empty())
                    .collect();
                c.truncate(MAX_CAPABILITIES);
                c
            },
            group_roles: self
                .group_roles
                .iter()
                .filter_map(|(g, r)| {
                    let g = crate::names::group_from_peer(g)?;
                    let r = crate::names::one_line(r, MAX_GROUP_ROLE);
                    (groups.contains(&g) && !r.is_empty()).then_some((g, r))
                })
                .collect(),
            groups,
        }
    }
}

/// The plaintext of a message envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePayload {
    /// Must equal the envelope id (binds the ciphertext to its id, so a relay cannot
    /// replay it under a new one).
    pub id: MessageId,
    /// Sending session.
    pub from_session: SessionId,
    /// Sender's display name at send time (the person).
    pub from_name: String,
    /// The sending session's label, when it is not the person's daemon session.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_label: String,
    /// How the sender addressed it: a peer name, `@group` or `*`.
    pub to: String,
    /// Priority.
    pub priority: Priority,
    /// Sender's clock, unix ms.
    pub sent_at: i64,
    /// Kind of message: `text` for now.
    pub kind: String,
    /// The message text.
    pub body: String,
    /// The sessions a group message was sent to, sealed with it: a relay that routes it
    /// to anyone else is found out (empty: a broadcast, or a direct message, whose box
    /// already names its recipient).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_sessions: Vec<SessionId>,
}

/// Body of a `receipt` payload: the recipient's daemon telling the sender how far a
/// message got on its side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// The message the receipt is about.
    pub of: MessageId,
    /// `surfaced` or `read`.
    pub stage: String,
    /// When, unix ms.
    pub at: i64,
}

/// Payload `kind` of receipts (ordinary messages are `text`).
pub const KIND_RECEIPT: &str = "receipt";

/// Payload kind of a `ping_mesh` probe (sent by a daemon to itself through the relay;
/// never stored or shown).
pub const KIND_PROBE: &str = "probe";
/// Payload kind of a `mesh_stats` question to a member's daemon (boxed to the member;
/// the body is empty): answered with a [`KIND_STATS`] payload, never stored or shown.
pub const KIND_STATS_ASK: &str = "stats_ask";
/// Payload kind of the answer to a [`KIND_STATS_ASK`]: a [`StatsBody`].
pub const KIND_STATS: &str = "stats";
/// Most sessions one stats answer lists (more are left out).
pub const MAX_STATS_SESSIONS: usize = 64;

/// Body of a `stats` payload: a daemon's counters for its visible sessions, for the
/// member that asked. Counts run from when each session opened on that daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsBody {
    /// The question this answers.
    pub of: MessageId,
    /// One entry per visible session of the answering member on that daemon.
    pub sessions: Vec<SessionUsage>,
}

/// Usage counters of one session, as its own daemon counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionUsage {
    /// The session.
    pub session: SessionId,
    /// Since it opened (or reopened) on its daemon, ms.
    pub uptime_ms: u64,
    /// Messages it sent.
    pub messages_out: u64,
    /// Messages it received.
    pub messages_in: u64,
    /// Tool calls its MCP client made.
    pub tool_calls: u64,
    /// Of those, calls that failed.
    pub tool_errors: u64,
}

/// Payload kind of a request for file chunks, boxed to a member's daemon that may hold
/// them (the body is a [`ChunkAskBody`]); answered with [`KIND_CHUNK`] payloads. Never
/// stored or shown.
pub const KIND_CHUNK_ASK: &str = "chunk_ask";
/// Payload kind of one chunk served by a member's daemon: a [`ChunkBody`].
pub const KIND_CHUNK: &str = "chunk";
/// Payload kind of a "fetched" receipt, boxed to the member who shared a file when
/// another member's daemon fetched all of it (the body is a [`FetchedBody`]).
pub const KIND_FILE_FETCHED: &str = "file_fetched";
/// Most chunks one [`ChunkAskBody`] asks for.
pub const MAX_CHUNK_ASK: usize = 16;

/// Whether a payload kind belongs to files (handled by the daemon, never shown).
pub fn is_file_kind(kind: &str) -> bool {
    [KIND_CHUNK_ASK, KIND_CHUNK, KIND_FILE_FETCHED].contains(&kind)
}

/// Body of a `chunk_ask` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAskBody {
    /// The file the chunks belong to.
    pub file: crate::ItemId,
    /// At most [`MAX_CHUNK_ASK`] chunk ids.
    pub ids: Vec<crate::file::ChunkId>,
}

/// Body of a `chunk` payload: the sealed chunk (check it against its id), or `None` when
/// the answering daemon does not hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkBody {
    /// The chunk.
    pub id: crate::file::ChunkId,
    /// Its sealed bytes.
    #[serde(
        default,
        with = "crate::encoding::opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<Vec<u8>>,
}

/// Body of a `file_fetched` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedBody {
    /// The file fetched.
    pub file: crate::ItemId,
}

// Peer folders (`read_peer_file`, `list_peer_files`): a question boxed to a member's
// daemon, answered by that daemon (not its sessions) with one boxed answer.

/// Payload kind of a question to a member's daemon about a folder it shares (boxed to
/// the member; the body is a [`PeerFileAsk`]): answered with a [`KIND_PEER_FILE`]
/// payload, never stored or shown.
pub const KIND_PEER_FILE_ASK: &str = "peer_file_ask";
/// Payload kind of the answer to a [`KIND_PEER_FILE_ASK`]: a [`PeerFileBody`].
pub const KIND_PEER_FILE: &str = "peer_file";
/// Most bytes of file content one answer carries (base64 of it still fits one sealed
/// envelope, [`crate::wire::MAX_CIPHERTEXT`]); bigger files go by `claudemesh file share`.
pub const MAX_PEER_FILE_BYTES: u64 = 96 * 1024;
/// Most entries one listing answer carries (more: `truncated`).
pub const MAX_PEER_FILE_ENTRIES: usize = 500;
/// How deep a listing goes below the folder asked for (1: its own entries only).
pub const MAX_PEER_FILE_DEPTH: usize = 3;
/// Longest path a question may name, in bytes.
pub const MAX_PEER_FILE_PATH: usize = 4096;

/// What a [`KIND_PEER_FILE_ASK`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerFileOp {
    /// The bytes of one regular file.
    Read,
    /// Names, kinds and sizes under a folder (no contents).
    List,
}

/// Body of a [`KIND_PEER_FILE_ASK`] payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFileAsk {
    /// Read or list.
    pub op: PeerFileOp,
    /// `/`-separated, relative: the first component names one of the answering daemon's
    /// shared folders, the rest a path inside it (empty: list the shared folders).
    pub path: String,
}

/// Why an answering daemon refused: a code only, so the asker words the error and a
/// peer cannot put text of its choosing into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerFileRefusal {
    /// No folder of that name is shared with the asker.
    NotShared,
    /// The path is absolute, has `..`, NUL, or resolves (symlinks followed) outside the
    /// shared folder. Said the same whether or not anything exists there.
    Outside,
    /// The asker does not hold the `file-read` grant at the answering daemon.
    NoGrant,
    /// The file is over [`MAX_PEER_FILE_BYTES`].
    TooLarge,
    /// Nothing of that name inside the shared folder.
    NotFound,
    /// Read asked of something that is not a regular file, or list of a non-folder.
    WrongKind,
    /// The file could not be read.
    Unreadable,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFileEntry {
    /// Its path as a question names it (`<share>/<path inside>`).
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Bytes (files only; 0 otherwise).
    pub size: u64,
}

/// Body of a [`KIND_PEER_FILE`] payload: exactly one of `error`, `content` (read) or
/// `entries` (list) says what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFileBody {
    /// The question this answers.
    pub of: MessageId,
    /// The refusal, if refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PeerFileRefusal>,
    /// Read: the file's size in bytes (for `too_large` too).
    #[serde(default)]
    pub size: u64,
    /// Read: `utf8` (content is the text) or `base64` (content is unpadded base64url).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub encoding: String,
    /// Read: the content.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    /// List: the entries, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<PeerFileEntry>,
    /// List: more entries (or deeper ones) were left out.
    #[serde(default)]
    pub truncated: bool,
}

/// Payload `kind` of reminders delivered by the scheduling member's daemon.
pub const KIND_REMINDER: &str = "reminder";

/// Why a sealed payload could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Decryption or signature failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Decrypted but not a valid payload.
    #[error("sealed payload is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    /// The payload names another message or sender than its envelope.
    #[error("sealed payload does not match its envelope")]
    Mismatch,
}

fn mesh_msg_ad(epoch: Epoch, id: &MessageId, from: &MemberKey) -> Vec<u8> {
    crate::epoch::ad("claudemesh/msg-ad/v1", epoch)
        .fixed(id.as_bytes())
        .fixed(&from.0)
        .into_bytes()
}

fn mesh_msg_sig_bytes(id: &MessageId, json: &[u8]) -> Vec<u8> {
    Canonical::new("claudemesh/msg/v1")
        .fixed(id.as_bytes())
        .var(json)
        .into_bytes()
}

/// Smallest sealed plaintext; sizes above it are rounded up to the next power of two.
pub const PAD_MIN: usize = 256;

/// Above this, size classes are multiples of it (a power of two would double a large
/// message).
const PAD_STEP: usize = 64 * 1024;

/// How long a payload's plaintext is once padded: [`PAD_MIN`], the next power of two up
/// to 64 KiB, then the next multiple of 64 KiB, never past what a sealed envelope may
/// carry. The relay (and anyone watching) learns a size class, not a message's length.
pub fn padded_len(n: usize) -> usize {
    // Room for the signature, nonce and tag around the plaintext.
    let cap = crate::wire::MAX_CIPHERTEXT - 128;
    let class = if n <= PAD_STEP {
        n.max(PAD_MIN).next_power_of_two()
    } else {
        n.div_ceil(PAD_STEP) * PAD_STEP
    };
    if class > cap {
        n.max(cap.min(class))
    } else {
        class
    }
}

/// The payload's JSON followed by spaces up to its size class. JSON allows trailing
/// whitespace, so readers (this version's and older ones) parse it unchanged.
fn padded_json(p: &MessagePayload) -> Result<Vec<u8>, CryptoError> {
    let mut json = serde_json::to_vec(p).map_err(|_| CryptoError::Encrypt)?;
    json.resize(padded_len(json.len()), b' ');
    Ok(json)
}

/// Seal a group/broadcast payload with the epoch-0 mesh key, signed by the sender.
pub fn seal_for_mesh(
    key: &MeshKey,
    sender: &MemberSecret,
    p: &MessagePayload,
) -> Result<Vec<u8>, CryptoError> {
    seal_for_mesh_at(0, key, sender, p)
}

/// Seal a group/broadcast payload with the mesh key of `epoch` (named in the envelope and
/// bound in the associated data), signed by the sender.
pub fn seal_for_mesh_at(
    epoch: Epoch,
    key: &MeshKey,
    sender: &MemberSecret,
    p: &MessagePayload,
) -> Result<Vec<u8>, CryptoError> {
    let json = padded_json(p)?;
    let sig = sender.sign(&mesh_msg_sig_bytes(&p.id, &json));
    let mut inner = Vec::with_capacity(64 + json.len());
    inner.extend_from_slice(&sig.0);
    inner.extend_from_slice(&json);
    key.seal(&mesh_msg_ad(epoch, &p.id, &sender.public()), &inner)
}

/// Open a [`seal_for_mesh`] ciphertext (epoch 0) from `from`, checking its signature and id.
pub fn open_from_mesh(
    key: &MeshKey,
    from: &MemberKey,
    id: &MessageId,
    ct: &[u8],
) -> Result<MessagePayload, OpenError> {
    open_from_mesh_at(0, key, from, id, ct)
}

/// Open a [`seal_for_mesh_at`] ciphertext of `epoch` from `from`, checking its signature
/// and id.
pub fn open_from_mesh_at(
    epoch: Epoch,
    key: &MeshKey,
    from: &MemberKey,
    id: &MessageId,
    ct: &[u8],
) -> Result<MessagePayload, OpenError> {
    let inner = key.open(&mesh_msg_ad(epoch, id, from), ct)?;
    if inner.len() < 64 {
        return Err(OpenError::Crypto(CryptoError::Decrypt));
    }
    let (sig, json) = inner.split_at(64);
    let mut s = [0u8; 64];
    s.copy_from_slice(sig);
    from.verify(&mesh_msg_sig_bytes(id, json), &Signature(s))?;
    let p: MessagePayload = serde_json::from_slice(json)?;
    if p.id != *id {
        return Err(OpenError::Mismatch);
    }
    Ok(p)
}

/// Seal a direct payload from `sender` (member key) to a recipient box key (a session's,
/// or a member's own converted key).
pub fn seal_direct(
    sender: &MemberSecret,
    recipient: &BoxPublic,
    p: &MessagePayload,
) -> Result<Vec<u8>, CryptoError> {
    seal_direct_with(&BoxKey::new(&sender.box_secret(), recipient), p)
}

/// [`seal_direct`] with the box already computed (from the sender member's box secret to
/// the recipient's key).
pub fn seal_direct_with(key: &BoxKey, p: &MessagePayload) -> Result<Vec<u8>, CryptoError> {
    let json = padded_json(p)?;
    key.seal(&json)
}

/// Open a [`seal_direct`] ciphertext, authenticating sender member `from`.
pub fn open_direct(
    recipient: &BoxSecret,
    from: &MemberKey,
    id: &MessageId,
    ct: &[u8],
) -> Result<MessagePayload, OpenError> {
    open_direct_with(&BoxKey::new(recipient, &from.box_public()?), id, ct)
}

/// [`open_direct`] with the box already computed (from the recipient's secret to the
/// sender member's box key).
pub fn open_direct_with(
    key: &BoxKey,
    id: &MessageId,
    ct: &[u8],
) -> Result<MessagePayload, OpenError> {
    let json = key.open(ct)?;
    let p: MessagePayload = serde_json::from_slice(&json)?;
    if p.id != *id {
        return Err(OpenError::Mismatch);
    }
    Ok(p)
}

/// A session's presence: its key and sealed profile, signed by its member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPresence {
    /// The mesh.
    pub mesh: MeshId,
    /// The session.
    pub session: SessionId,
    /// The member the session belongs to.
    pub member: MemberKey,
    /// The session's x25519 key: direct messages to it are boxed to this key.
    pub session_key: BoxPublic,
    /// Monotonic version (unix ms of the update); receivers keep the highest.
    pub seq: i64,
    /// [`Profile`] JSON sealed with the mesh key.
    #[serde(with = "encoding::bytes")]
    pub profile: Vec<u8>,
    /// Member signature over all of the above.
    pub sig: Signature,
    /// The key epoch `profile` is sealed under (not signed: bound in the seal's associated
    /// data; omitted for 0).
    #[serde(default, skip_serializing_if = "crate::epoch::is_zero")]
    pub epoch: Epoch,
}

impl SignedPresence {
    fn canonical(
        mesh: &MeshId,
        session: &SessionId,
        member: &MemberKey,
        key: &BoxPublic,
        seq: i64,
        profile: &[u8],
    ) -> Vec<u8> {
        Canonical::new("claudemesh/presence/v1")
            .fixed(mesh.as_bytes())
            .fixed(session.as_bytes())
            .fixed(&member.0)
            .fixed(&key.0)
            .i64(seq)
            .var(profile)
            .into_bytes()
    }

    fn profile_ad(epoch: Epoch, session: &SessionId, member: &MemberKey) -> Vec<u8> {
        crate::epoch::ad("claudemesh/profile-ad/v1", epoch)
            .fixed(session.as_bytes())
            .fixed(&member.0)
            .into_bytes()
    }

    /// Seal `profile` with the epoch-0 key and sign the presence.
    pub fn sign(
        key: &MeshKey,
        signer: &MemberSecret,
        mesh: MeshId,
        session: SessionId,
        session_key: BoxPublic,
        seq: i64,
        profile: &Profile,
    ) -> Result<Self, CryptoError> {
        Self::sign_at(0, key, signer, mesh, session, session_key, seq, profile)
    }

    /// Seal `profile` with the key of `epoch` and sign the presence.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_at(
        epoch: Epoch,
        key: &MeshKey,
        signer: &MemberSecret,
        mesh: MeshId,
        session: SessionId,
        session_key: BoxPublic,
        seq: i64,
        profile: &Profile,
    ) -> Result<Self, CryptoError> {
        let member = signer.public();
        let json = serde_json::to_vec(profile).map_err(|_| CryptoError::Encrypt)?;
        let sealed = key.seal(&Self::profile_ad(epoch, &session, &member), &json)?;
        let sig = signer.sign(&Self::canonical(
            &mesh,
            &session,
            &member,
            &session_key,
            seq,
            &sealed,
        ));
        Ok(Self {
            mesh,
            session,
            member,
            session_key,
            seq,
            profile: sealed,
            sig,
            epoch,
        })
    }

    /// Check the member signature.
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.member.verify(
            &Self::canonical(
                &self.mesh,
                &self.session,
                &self.member,
                &self.session_key,
                self.seq,
                &self.profile,
            ),
            &self.sig,
        )
    }

    /// Verify and open the profile with `key`, the key of [`Self::epoch`].
    pub fn open(&self, key: &MeshKey) -> Result<Profile, OpenError> {
        self.verify()?;
        let json = key.open(
            &Self::profile_ad(self.epoch, &self.session, &self.member),
            &self.profile,
        )?;
        Ok(serde_json::from_slice(&json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_messages_and_profiles_open_only_under_the_epoch_they_name() {
        let (k0, k1) = (MeshKey::generate(), MeshKey::generate());
        let alice = MemberSecret::generate();
        let id = MessageId::new();
        let ct = seal_for_mesh_at(1, &k1, &alice, &payload(id)).unwrap();
        assert!(open_from_mesh_at(1, &k1, &alice.public(), &id, &ct).is_ok());
        // (case, key, epoch) → must not open
        for (case, key, epoch) in [
            ("old key", &k0, 1),
            ("epoch 0", &k1, 0),
            ("epoch 2", &k1, 2),
        ] {
            assert!(
                open_from_mesh_at(epoch, key, &alice.public(), &id, &ct).is_err(),
                "{case}"
            );
        }
        let profile = Profile::default();
        let p = SignedPresence::sign_at(
            1,
            &k1,
            &alice,
            MeshId::new(),
            SessionId::new(),
            BoxSecret::generate().public(),
            1,
            &profile,
        )
        .unwrap();
        assert_eq!(p.epoch, 1);
        assert!(p.open(&k1).is_ok());
        assert!(p.open(&k0).is_err());
        let mut relabelled = p.clone();
        relabelled.epoch = 0;
        assert!(relabelled.open(&k1).is_err());
    }

    fn payload(id: MessageId) -> MessagePayload {
        MessagePayload {
            id,
            from_session: SessionId::new(),
            from_name: "alice".into(),
            from_label: String::new(),
            to: "*".into(),
            priority: Priority::Now,
            sent_at: 42,
            kind: "text".into(),
            body: "hello mesh".into(),
            to_sessions: Vec::new(),
        }
    }

    #[test]
    fn mesh_message_round_trip_and_impersonation_fails() {
        let key = MeshKey::generate();
        let alice = MemberSecret::generate();
        let bob = MemberSecret::generate();
        let id = MessageId::new();
        let ct = seal_for_mesh(&key, &alice, &payload(id)).unwrap();
        assert_eq!(
            open_from_mesh(&key, &alice.public(), &id, &ct)
                .unwrap()
                .body,
            "hello mesh"
        );
        // A relay claiming bob sent it: associated data and signature no longer match.
        assert!(open_from_mesh(&key, &bob.public(), &id, &ct).is_err());
        // Replayed under another id.
        assert!(open_from_mesh(&key, &alice.public(), &MessageId::new(), &ct).is_err());
    }

    #[test]
    fn sealed_sizes_are_size_classes_not_lengths() {
        for (n, want) in [
            (0, 256),
            (1, 256),
            (256, 256),
            (257, 512),
            (1000, 1024),
            (70_000, 131_072),
        ] {
            assert_eq!(padded_len(n), want, "{n}");
        }
        let key = MeshKey::generate();
        let alice = MemberSecret::generate();
        let bob = BoxSecret::generate();
        let mut sizes = std::collections::BTreeSet::new();
        for len in [1usize, 10, 25, 40] {
            let mut p = payload(MessageId::new());
            p.body = "x".repeat(len);
            let ct = seal_for_mesh(&key, &alice, &p).unwrap();
            assert_eq!(
                open_from_mesh(&key, &alice.public(), &p.id, &ct).unwrap(),
                p
            );
            sizes.insert(ct.len());
            let ct = seal_direct(&alice, &bob.public(), &p).unwrap();
            assert_eq!(open_direct(&bob, &alice.public(), &p.id, &ct).unwrap(), p);
            sizes.insert(ct.len() + 1_000_000);
        }
        assert_eq!(
            sizes.len(),
            2,
            "one size per seal for bodies of 1 to 40 bytes: {sizes:?}"
        );
    }

    #[test]
    fn direct_message_round_trip() {
        let alice = MemberSecret::generate();
        let bob_session = BoxSecret::generate();
        let id = MessageId::new();
        let ct = seal_direct(&alice, &bob_session.public(), &payload(id)).unwrap();
        let p = open_direct(&bob_session, &alice.public(), &id, &ct).unwrap();
        assert_eq!(p.priority, Priority::Now);
        assert!(open_direct(&bob_session, &alice.public(), &MessageId::new(), &ct).is_err());
        // The precomputed box seals and opens the same bytes as the one-off one.
        let to_bob = BoxKey::new(&alice.box_secret(), &bob_session.public());
        let from_alice = BoxKey::new(&bob_session, &alice.public().box_public().unwrap());
        let p2 = payload(id);
        let ct2 = seal_direct_with(&to_bob, &p2).unwrap();
        assert_eq!(
            open_direct(&bob_session, &alice.public(), &id, &ct2).unwrap(),
            p2
        );
        assert_eq!(open_direct_with(&from_alice, &id, &ct).unwrap(), p);
        let other = BoxKey::new(
            &BoxSecret::generate(),
            &alice.public().box_public().unwrap(),
        );
        assert!(open_direct_with(&other, &id, &ct).is_err());
    }

    #[test]
    fn presence_signs_and_seals() {
        let key = MeshKey::generate();
        let m = MemberSecret::generate();
        let s = BoxSecret::generate();
        let prof = Profile {
            name: "bob".into(),
            groups: vec!["dev".into()],
            ..Default::default()
        };
        let p = SignedPresence::sign(
            &key,
            &m,
            MeshId::new(),
            SessionId::new(),
            s.public(),
            7,
            &prof,
        )
        .unwrap();
        assert_eq!(p.open(&key).unwrap(), prof);
        let mut forged = p.clone();
        forged.session_key = BoxSecret::generate().public();
        assert!(forged.open(&key).is_err());
        assert!(p.open(&MeshKey::generate()).is_err());
    }
}
