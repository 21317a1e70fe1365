//! The relay protocol: what a daemon (or an invite claimant) and a relay say to each other.
//!
//! **Transport.** Over QUIC (ALPN `claudemesh/1`) the client opens one bidirectional stream
//! and both sides write frames on it, each a 4-byte big-endian length followed by that many
//! bytes. Over WebSocket (`GET /ws` on the relay's TLS port) each binary message is one
//! frame, without the length prefix. Both transports use the relay's TLS certificate, which
//! clients pin by the SHA-256 of its DER encoding.
//!
//! **Frames** are JSON objects tagged by `"t"` ([`ClientFrame`], [`RelayFrame`]), at most
//! [`MAX_FRAME`] bytes. Byte fields are unpadded base64url, ids are UUID strings, times are
//! unix milliseconds.
//!
//! **A connection** starts with exactly one of:
//! - [`ClientFrame::Hello`]: a member's daemon joins its mesh link; the relay answers
//!   [`RelayFrame::Welcome`] or an error and closes;
//! - [`ClientFrame::CreateMesh`]: registers a new mesh (then the client may `Hello`), with a
//!   [`CreationToken`] when the relay's admission policy asks for one;
//! - [`ClientFrame::Claim`]: an invite claimant asks for admission and waits for
//!   [`RelayFrame::ClaimResult`];
//! - [`ClientFrame::Ping`]: liveness/round-trip probe, allowed before hello.
//!
//! **Versioning.** `Hello.versions` lists the protocol versions the client speaks; the relay
//! picks the highest it also speaks and names it in `Welcome.version`, or refuses with
//! [`ErrorCode::UnsupportedVersion`]. Unknown JSON fields are ignored by both sides, so
//! additive changes do not need a new version.

use serde::{Deserialize, Serialize};

use crate::crypto::{BoxPublic, Canonical, CryptoError, MemberKey, MemberSecret, Signature};
use crate::encoding;
use crate::file::ChunkId;
use crate::ids::{ClaimId, InviteId, ItemId, MeshId, MessageId, OpId, SessionId};
use crate::message::SignedPresence;
use crate::op::{OpEnvelope, SequencedOp};
use crate::roster::{InviteCap, InviteRevocation, MeshGenesis, RosterEntry, RosterHead};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Versions this build accepts, newest last.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];
/// Largest frame either side accepts, in bytes (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest envelope ciphertext a relay accepts (256 KiB).
pub const MAX_CIPHERTEXT: usize = 256 * 1024;
/// ALPN protocol id for QUIC.
pub const ALPN: &[u8] = b"claudemesh/1";
/// Allowed clock difference for a hello, in ms (±60 s).
pub const HELLO_WINDOW_MS: i64 = 60_000;

/// Where an envelope goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Route {
    /// One session.
    Session {
        /// The recipient session.
        session: SessionId,
    },
    /// One member (its daemon decides which of its sessions sees it).
    Member {
        /// The recipient member.
        member: MemberKey,
    },
    /// A list of sessions (a group resolved by the sender).
    Sessions {
        /// The recipient sessions.
        sessions: Vec<SessionId>,
    },
    /// Every member of the mesh except the sender.
    All,
}

/// How an envelope's ciphertext is sealed, which tells the recipient how to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seal {
    /// `crypto_box` from the sender member's key to the recipient's box key.
    Box,
    /// Mesh key, with the sender's signature inside.
    Mesh,
}

/// A sealed message in transit. The relay reads only `id`, `from*` and `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Message id; every hop dedupes by it.
    pub id: MessageId,
    /// Sending session.
    pub from: SessionId,
    /// Sending member; the relay refuses envelopes whose `from_member` is not the member
    /// authenticated on the link.
    pub from_member: MemberKey,
    /// Recipients.
    pub to: Route,
    /// Sealing mode.
    pub seal: Seal,
    /// The ciphertext (see [`crate::message`]).
    #[serde(with = "encoding::bytes")]
    pub ct: Vec<u8>,
    /// For `seal: "mesh"`, the key epoch `ct` is sealed under (bound in its associated
    /// data; omitted for 0, and for boxes).
    #[serde(default, skip_serializing_if = "crate::epoch::is_zero")]
    pub epoch: crate::epoch::Epoch,
}

/// The signed opening of a member link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u32>,
    /// The mesh.
    pub mesh: MeshId,
    /// The member key (must be in the mesh roster).
    pub member: MemberKey,
    /// The daemon's own session on this link.
    pub session: SessionId,
    /// That session's x25519 key.
    pub session_key: BoxPublic,
    /// Client clock, unix ms; refused outside ±[`HELLO_WINDOW_MS`].
    pub ts: i64,
    /// 16 random bytes; a relay refuses a nonce it has seen.
    #[serde(with = "encoding::array")]
    pub nonce: [u8; 16],
    /// Member signature over `claudemesh/hello/v1 | mesh | member | session | session_key |
    /// ts | nonce`.
    pub sig: Signature,
    /// Client software, e.g. `claudemesh/0.1.0`.
    #[serde(default)]
    pub client: String,
    /// The roster head this member holds (not signed: it informs the relay, which logs a
    /// member holding entries it does not have). Absent from old clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster_head: Option<RosterHead>,
}

impl Hello {
    fn canonical(
        mesh: &MeshId,
        member: &MemberKey,
        session: &SessionId,
        key: &BoxPublic,
        ts: i64,
        nonce: &[u8; 16],
    ) -> Vec<u8> {
        Canonical::new("claudemesh/hello/v1")
            .fixed(mesh.as_bytes())
            .fixed(&member.0)
            .fixed(session.as_bytes())
            .fixed(&key.0)
            .i64(ts)
            .fixed(nonce)
            .into_bytes()
    }

    /// Build and sign a hello with a fresh nonce.
    pub fn sign(
        member: &MemberSecret,
        mesh: MeshId,
        session: SessionId,
        session_key: BoxPublic,
        ts: i64,
        client: &str,
    ) -> Self {
        let nonce = crate::crypto::random_bytes::<16>();
        let pk = member.public();
        let sig = member.sign(&Self::canonical(
            &mesh,
            &pk,
            &session,
            &session_key,
            ts,
            &nonce,
        ));
        Self {
            versions: SUPPORTED_VERSIONS.to_vec(),
            mesh,
            member: pk,
            session,
            session_key,
            ts,
            nonce,
            sig,
            client: client.to_string(),
            roster_head: None,
        }
    }

    /// Check the signature.
    pub fn verify_sig(&self) -> Result<(), CryptoError> {
        self.member.verify(
            &Self::canonical(
                &self.mesh,
                &self.member,
                &self.session,
                &self.session_key,
                self.ts,
                &self.nonce,
            ),
            &self.sig,
        )
    }

    /// The checks a relay makes before it looks at the mesh: a common version (the
    /// highest, returned), a timestamp within [`HELLO_WINDOW_MS`] of `now`, a valid
    /// signature — in that order.
    pub fn check(&self, now: i64) -> Result<u32, HelloRefusal> {
        let version = self
            .versions
            .iter()
            .copied()
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max()
            .ok_or(HelloRefusal::NoCommonVersion)?;
        if now.abs_diff(self.ts) > HELLO_WINDOW_MS as u64 {
            return Err(HelloRefusal::Stale {
                behind_secs: now.saturating_sub(self.ts) / 1000,
            });
        }
        self.verify_sig().map_err(|_| HelloRefusal::BadSignature)?;
        Ok(version)
    }
}

/// Why [`Hello::check`] refused a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRefusal {
    /// None of its versions is one this build speaks.
    NoCommonVersion,
    /// Its timestamp is this many seconds behind the relay's clock (negative: ahead).
    Stale {
        /// Seconds behind.
        behind_secs: i64,
    },
    /// The signature does not verify.
    BadSignature,
}

impl HelloRefusal {
    /// The wire code.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::NoCommonVersion => ErrorCode::UnsupportedVersion,
            Self::Stale { .. } => ErrorCode::StaleHello,
            Self::BadSignature => ErrorCode::BadSignature,
        }
    }
}

impl std::fmt::Display for HelloRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCommonVersion => write!(
                f,
                "no common protocol version (relay speaks {SUPPORTED_VERSIONS:?}); upgrade claudemesh"
            ),
            Self::Stale { behind_secs } => write!(
                f,
                "hello timestamp is {behind_secs} s away from the relay clock (limit {} s); check this machine's clock",
                HELLO_WINDOW_MS / 1000
            ),
            Self::BadSignature => f.write_str("hello signature does not verify"),
        }
    }
}

/// A claimant's request to join through an invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The invite being claimed.
    pub invite: InviteId,
    /// The claimant's new member key.
    pub member: MemberKey,
    /// A fresh x25519 key the mesh key will be sealed to.
    pub box_key: BoxPublic,
    /// Claim time, unix ms (covered by the proof).
    pub at: i64,
    /// Keyed MAC proving knowledge of the invite secret (see [`crate::invite`]).
    #[serde(with = "encoding::array")]
    pub proof: [u8; 32],
    /// The claimant's name for the admins, sealed with a key derived from the invite
    /// secret and bound to this request ([`crate::invite::seal_claim_note`]): the relay
    /// stores it but cannot read or move it. At most [`MAX_CLAIM_NOTE`] bytes; empty from
    /// older claimants.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "encoding::bytes"
    )]
    pub note: Vec<u8>,
    /// The claimant comes back for the answer (sending this same request again): the
    /// relay keeps the claim, and its answer, after the connection ends. Older claimants
    /// wait on one connection only, and their claim is withdrawn when it ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub durable: bool,
}

/// Most bytes of a [`ClaimRequest::note`] a relay stores.
pub const MAX_CLAIM_NOTE: usize = 1024;

/// An admin's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum ClaimDecision {
    /// Admit the claimant.
    Accept {
        /// The claim.
        claim: ClaimId,
        /// Roster entry adding the claimant, signed by the admin, naming the invite.
        entry: RosterEntry,
        /// The join secret ([`crate::invite::JoinSecret`]) sealed to the claimant's box key.
        #[serde(with = "encoding::bytes")]
        sealed: Vec<u8>,
        /// MAC with the invite secret over the claim id, `sealed`, the entry and the mesh
        /// genesis, so the claimant knows the answer came from someone holding the mesh key
        /// and that the relay changed nothing.
        #[serde(with = "encoding::array")]
        mac: [u8; 32],
    },
    /// Refuse the claim.
    Refuse {
        /// The claim.
        claim: ClaimId,
        /// Short reason shown to the claimant.
        reason: String,
    },
}

/// Stable error codes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON of a known frame type.
    BadFrame,
    /// The frame exceeds [`MAX_FRAME`] (or the ciphertext exceeds [`MAX_CIPHERTEXT`]).
    FrameTooLarge,
    /// No common protocol version.
    UnsupportedVersion,
    /// A signature did not verify.
    BadSignature,
    /// Hello timestamp outside the allowed window.
    StaleHello,
    /// Hello nonce already used.
    ReplayedHello,
    /// The key is not a member of the mesh.
    NotAMember,
    /// The mesh does not exist on this relay.
    UnknownMesh,
    /// The mesh already exists.
    MeshExists,
    /// A frame that needs a hello came before it (or a second hello).
    Unexpected,
    /// Too many handshakes or messages; retry after the hinted delay.
    RateLimited,
    /// The mesh's store-and-forward quota is full.
    QuotaExceeded,
    /// The recipient is not known to the relay.
    UnknownRecipient,
    /// The signer may not do this.
    NotAuthorized,
    /// Invite unknown.
    InviteUnknown,
    /// Invite expired.
    InviteExpired,
    /// Invite revoked.
    InviteRevoked,
    /// Invite has no uses left.
    InviteUsedUp,
    /// Claim refused by an admin (or the proof was wrong).
    ClaimRefused,
    /// No admin is online to answer a claim.
    NoAdminOnline,
    /// This link was replaced by a newer connection of the same member.
    Replaced,
    /// The relay is shutting down.
    ShuttingDown,
    /// Relay-side failure.
    Internal,
    /// An envelope with this id was already accepted from another sender or mesh: the
    /// send is refused, never acknowledged (pick a fresh id).
    IdTaken,
    /// The relay's admission policy does not let this key create a mesh (it needs a
    /// creation token, or the owner key is not on the allowlist).
    CreationRefused,
    /// A roster entry was signed against an older roster head (another admin's change
    /// came first): sign it again against the new head and retry.
    RosterChanged,
    /// The thing asked for is not stored here (a chunk the relay does not have).
    NotFound,
    /// This relay does not store file chunks (`blob_storage = false`): members serve
    /// them to each other instead.
    StorageOff,
    /// A code this build does not know (sent by a newer relay); read the message.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::UnsupportedVersion => "unsupported_version",
            Self::BadSignature => "bad_signature",
            Self::StaleHello => "stale_hello",
            Self::ReplayedHello => "replayed_hello",
            Self::NotAMember => "not_a_member",
            Self::UnknownMesh => "unknown_mesh",
            Self::MeshExists => "mesh_exists",
            Self::Unexpected => "unexpected",
            Self::RateLimited => "rate_limited",
            Self::QuotaExceeded => "quota_exceeded",
            Self::UnknownRecipient => "unknown_recipient",
            Self::NotAuthorized => "not_authorized",
            Self::InviteUnknown => "invite_unknown",
            Self::InviteExpired => "invite_expired",
            Self::InviteRevoked => "invite_revoked",
            Self::InviteUsedUp => "invite_used_up",
            Self::ClaimRefused => "claim_refused",
            Self::NoAdminOnline => "no_admin_online",
            Self::Replaced => "replaced",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::IdTaken => "id_taken",
            Self::CreationRefused => "creation_refused",
            Self::RosterChanged => "roster_changed",
            Self::NotFound => "not_found",
            Self::StorageOff => "storage_off",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A presence as the relay reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The signed presence, as published by its member.
    pub presence: SignedPresence,
    /// Is the session's link connected now?
    pub online: bool,
    /// Last time the relay saw the session's link, unix ms.
    pub last_seen: i64,
}

/// The relay's answer to a valid hello. It is followed by the mesh's roster entries
/// (`roster` frames, in order), the known presences (`presence` frames), then `ready`, then
/// any stored envelopes (`deliver` frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Negotiated protocol version.
    pub version: u32,
    /// Relay clock, unix ms (lets clients report skew).
    pub server_time: i64,
    /// The mesh genesis.
    pub genesis: MeshGenesis,
    /// Number of `roster` frames that follow.
    pub roster_entries: u64,
    /// The relay's roster head (entries and chain hash) once those frames are applied. A
    /// member holding more entries, or another hash at the same length, knows the relay
    /// is hiding or rewriting membership changes. Absent from old relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster_head: Option<RosterHead>,
    /// Number of `presence` frames that follow.
    pub presences: u64,
    /// Largest ciphertext the relay accepts.
    pub max_ciphertext: u64,
}

/// A mesh-creation token, issued by a relay's operator (`claudemesh-relay token create`)
/// and presented in [`ClientFrame::CreateMesh`]. It is a secret: `Debug` does not show it,
/// and it is wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CreationToken(String);

impl CreationToken {
    /// Wrap a token as given (surrounding whitespace removed, as from a file).
    pub fn new(token: &str) -> Self {
        Self(token.trim().to_string())
    }

    /// The token itself, to hash or to send; never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CreationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CreationToken(..)")
    }
}

impl Drop for CreationToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The outcome of a claim, sent to the claimant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum ClaimOutcome {
    /// Admitted.
    Accepted {
        /// The claim.
        claim: ClaimId,
        /// The mesh genesis.
        genesis: MeshGenesis,
        /// The entry adding the claimant.
        entry: RosterEntry,
        /// Sealed [`crate::invite::JoinSecret`].
        #[serde(with = "encoding::bytes")]
        sealed: Vec<u8>,
        /// Admin MAC (see [`ClaimDecision::Accept`]).
        #[serde(with = "encoding::array")]
        mac: [u8; 32],
    },
    /// Refused.
    Refused {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// One receipt named in [`ClientFrame::ReceiptsSeen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReceiptSeen {
    /// The envelope the receipt is about.
    pub id: MessageId,
    /// The recipient member that acknowledged it.
    pub member: MemberKey,
}

/// Most receipts one `receipts_seen` frame names.
pub const MAX_RECEIPTS_SEEN: usize = 4096;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum ClientFrame {
    /// Open a member link.
    Hello(Hello),
    /// Register a new mesh.
    CreateMesh {
        /// Request id echoed in `ok`/`error`.
        rid: u64,
        /// The signed genesis.
        genesis: MeshGenesis,
        /// A creation token from the relay's operator, for a relay whose admission policy
        /// is `token`; absent otherwise (and in frames of older clients).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<CreationToken>,
    },
    /// Claim an invite.
    Claim(ClaimRequest),
    /// Send an envelope. Answered by `relayed` (stored durably) or `refused`.
    Send(Envelope),
    /// Acknowledge delivered envelopes (the relay deletes its copies).
    Ack {
        /// Acknowledged ids.
        ids: Vec<MessageId>,
        /// For each id (same order), the acknowledging member's signature over
        /// [`delivery_proof`]: what lets the sender believe `delivered` without trusting
        /// the relay. Empty from daemons before proofs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        proofs: Vec<Signature>,
    },
    /// Receipts this daemon has recorded (each a `receipt` frame it was sent): the relay
    /// stops keeping them. Until then it sends them again at every link.
    ReceiptsSeen {
        /// Which: the envelope and the member whose acknowledgement it reported.
        receipts: Vec<ReceiptSeen>,
    },
    /// Send the mailbox again (what this daemon could not store before: its disk was
    /// full). Not acknowledged; a replay already running is replaced.
    Redeliver,
    /// Publish or update a session's presence.
    Presence(SignedPresence),
    /// A session ended.
    Depart {
        /// The session.
        session: SessionId,
    },
    /// Add or remove a member.
    Roster {
        /// Request id.
        rid: u64,
        /// The signed entry.
        entry: RosterEntry,
    },
    /// Publish an invite capability.
    InvitePublish {
        /// Request id.
        rid: u64,
        /// The capability.
        cap: InviteCap,
    },
    /// Revoke an invite.
    InviteRevoke {
        /// Request id.
        rid: u64,
        /// The revocation.
        revocation: InviteRevocation,
    },
    /// Answer a pending claim.
    ClaimDecision {
        /// Request id.
        rid: u64,
        /// The decision.
        decision: ClaimDecision,
    },
    /// Append a sealed op to the mesh's log. Answered by `op_ack` (sequenced and stored)
    /// or `op_refused`; a resend of a known id is answered with its existing sequence.
    Op(OpEnvelope),
    /// Send the log from sequence `from` on (as `ops` frames, the last with `head`), then
    /// keep this link subscribed to new ops (it already is, from the hello on).
    OpSync {
        /// First sequence wanted.
        from: u64,
    },
    /// One part of a sealed snapshot of the log's fold at `seq` (parts in order, each at
    /// most [`crate::op::SNAPSHOT_PART`] bytes). After the last part the relay keeps it
    /// (if newer than the one it has), drops the ops it covers and answers
    /// `snapshot_stored`.
    SnapshotPart {
        /// The last op folded in.
        seq: u64,
        /// This part's index, from 0.
        part: u32,
        /// Number of parts.
        parts: u32,
        /// The bytes.
        #[serde(with = "encoding::bytes")]
        data: Vec<u8>,
    },
    /// Read part of the log without applying it (for `audit verify`); answered by
    /// `op_page`.
    OpRead {
        /// Request id.
        rid: u64,
        /// First sequence wanted.
        from: u64,
        /// Most ops wanted.
        limit: u32,
    },
    /// Liveness probe.
    Ping {
        /// Echoed in `pong`.
        n: u64,
    },
    /// Store one sealed file chunk (see [`crate::file`]) in the mesh's blob store.
    /// Answered by `ok` once it is durable (at once if it was stored already) or `error`
    /// (`quota_exceeded`, `storage_off`, `bad_frame` when `data` does not hash to `id`).
    ChunkPut {
        /// Request id.
        rid: u64,
        /// The file it belongs to (chunks are kept while a file uses them).
        file: ItemId,
        /// BLAKE3 of `data`.
        id: ChunkId,
        /// The sealed chunk, at most [`MAX_CHUNK_FRAME`] bytes.
        #[serde(with = "encoding::bytes")]
        data: Vec<u8>,
        /// Dropped after this time (unix ms) for an ephemeral share.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    /// Which of these chunks the blob store holds (to resume an upload). Answered by
    /// `chunks_held`.
    ChunksHeld {
        /// Request id.
        rid: u64,
        /// At most [`crate::file::MAX_CHUNKS`] ids.
        ids: Vec<ChunkId>,
    },
    /// Fetch a stored chunk. Answered by `chunk` or `error` (`not_found`, `storage_off`).
    ChunkGet {
        /// Request id.
        rid: u64,
        /// The chunk.
        id: ChunkId,
    },
    /// Drop the chunks of a file (its uploader, or an admin of the mesh). Answered by
    /// `ok`; chunks another file still uses stay.
    ChunksDrop {
        /// Request id.
        rid: u64,
        /// The file.
        file: ItemId,
    },
}

/// Most bytes of sealed data in one `chunk_put` or `chunk` frame.
pub const MAX_CHUNK_FRAME: usize = crate::file::CHUNK_SIZE + crate::file::CHUNK_OVERHEAD;

/// Frames a relay sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum RelayFrame {
    /// Hello accepted.
    Welcome(Welcome),
    /// A request (`rid`) succeeded.
    Ok {
        /// The request id.
        rid: u64,
    },
    /// Something failed. `fatal` errors are followed by the relay closing the connection.
    Error {
        /// The request id, when the error answers one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// Human-readable detail (never contains secrets).
        message: String,
        /// Whether the connection is closing.
        fatal: bool,
        /// For `rate_limited`: retry after this many ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
    /// The envelope is stored durably; the sender may forget it.
    Relayed {
        /// The envelope id.
        id: MessageId,
        /// Relay time, unix ms.
        at: i64,
    },
    /// The envelope was not accepted; the sender keeps it and may retry later.
    Refused {
        /// The envelope id.
        id: MessageId,
        /// Why.
        code: ErrorCode,
        /// Detail.
        message: String,
        /// For rate limits and quotas: retry after this many ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
    /// An envelope for this member.
    Deliver {
        /// The envelope.
        env: Envelope,
        /// When the relay accepted it, unix ms.
        at: i64,
    },
    /// A recipient member's daemon acknowledged an envelope this member sent.
    Receipt {
        /// The envelope id.
        id: MessageId,
        /// The recipient member.
        member: MemberKey,
        /// When, unix ms.
        at: i64,
        /// The recipient member's signature over [`delivery_proof`], when it sent one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Signature>,
    },
    /// A presence appeared or changed.
    Presence(PresenceRecord),
    /// A session went offline.
    Depart {
        /// The session.
        session: SessionId,
        /// When, unix ms.
        at: i64,
    },
    /// A roster entry: part of the snapshot after `welcome`, or a change just accepted.
    Roster {
        /// Position in the mesh's roster log, from 0.
        seq: u64,
        /// The entry.
        entry: RosterEntry,
    },
    /// The snapshot after `welcome` is complete.
    Ready {
        /// Envelopes waiting for this member, about to follow as `deliver` frames.
        queued: u64,
    },
    /// A claim for an invite, sent to online admins.
    ClaimPending {
        /// The claim id (answer with `claim_decision`).
        claim: ClaimId,
        /// The request.
        request: ClaimRequest,
        /// The invite capability it claims.
        cap: InviteCap,
        /// When the claim arrived, unix ms.
        at: i64,
    },
    /// The claim is registered and waits for an admin.
    ClaimWaiting {
        /// The claim id.
        claim: ClaimId,
        /// Admins online now (the claim is forwarded to admins as they connect).
        admins_online: u32,
        /// Whether the invite needs explicit approval.
        approve: bool,
        /// For a durable claim: until when the relay keeps it waiting (unix ms), so the
        /// claimant may go away and come back for the answer. Absent from older relays.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_until: Option<i64>,
    },
    /// The answer to a claim.
    ClaimResult(ClaimOutcome),
    /// An op was sequenced and stored.
    OpAck {
        /// The op.
        id: OpId,
        /// Its sequence number.
        seq: u64,
    },
    /// An op was not accepted; the author keeps it and may retry.
    OpRefused {
        /// The op.
        id: OpId,
        /// Why.
        code: ErrorCode,
        /// Detail.
        message: String,
        /// For rate limits: retry after this many ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
    /// Ops of the mesh's log in sequence order: new ones as they are stored, or a page of
    /// an `op_sync` (whose last page names the `head`, the newest sequence at the time).
    Ops {
        /// The ops.
        ops: Vec<SequencedOp>,
        /// Set on the last page of a sync.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<u64>,
    },
    /// A part of the newest snapshot, sent during a sync that starts before the oldest op
    /// still stored; the ops after it follow.
    SnapshotPart {
        /// The last op folded in.
        seq: u64,
        /// Its author (whose signature is inside).
        author: MemberKey,
        /// This part's index, from 0.
        part: u32,
        /// Number of parts.
        parts: u32,
        /// The bytes.
        #[serde(with = "encoding::bytes")]
        data: Vec<u8>,
    },
    /// The relay stored the snapshot this link uploaded.
    SnapshotStored {
        /// Its sequence.
        seq: u64,
        /// Whether it replaced the relay's newest (false: the relay has one at least as new).
        kept: bool,
    },
    /// Answer to `op_read`.
    OpPage {
        /// The request id.
        rid: u64,
        /// The ops (fewer than asked for at the end of the log).
        ops: Vec<SequencedOp>,
        /// The newest sequence in the log.
        head: u64,
        /// The oldest sequence still stored (older ones were dropped after a snapshot).
        first: u64,
    },
    /// Answer to `chunks_held`: for each id asked (same order), whether it is stored.
    ChunksHeld {
        /// The request id.
        rid: u64,
        /// Held or not, per id.
        held: Vec<bool>,
    },
    /// Answer to `chunk_get`.
    Chunk {
        /// The request id.
        rid: u64,
        /// The chunk.
        id: ChunkId,
        /// Its sealed bytes (check them against `id`: the relay is not trusted).
        #[serde(with = "encoding::bytes")]
        data: Vec<u8>,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's `n`.
        n: u64,
        /// Relay clock, unix ms.
        server_time: i64,
    },
}

/// A frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Bigger than [`MAX_FRAME`].
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Actual size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Encode a frame body (without length prefix).
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, FrameError> {
    let v = serde_json::to_vec(frame)?;
    if v.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: v.len(),
            max: MAX_FRAME,
        });
    }
    Ok(v)
}

/// Decode a frame body.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    if bytes.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME,
        });
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// What a recipient member signs when it acknowledges envelope `id` of `mesh` (stored in
/// its inbox): the sender checks it against the member the message was addressed to, so
/// a relay cannot report a delivery that did not happen.
pub fn delivery_proof(mesh: &MeshId, id: &MessageId) -> Vec<u8> {
    Canonical::new("claudemesh/delivered/v1")
        .fixed(mesh.as_bytes())
        .fixed(id.as_bytes())
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_proof_names_its_mesh_id_and_member() {
        let ben = MemberSecret::generate();
        let (mesh, id) = (MeshId::new(), MessageId::new());
        let proof = ben.sign(&delivery_proof(&mesh, &id));
        assert!(
            ben.public()
                .verify(&delivery_proof(&mesh, &id), &proof)
                .is_ok()
        );
        let other = MemberSecret::generate().public();
        for (who, m, i) in [
            (other, mesh, id),
            (ben.public(), MeshId::new(), id),
            (ben.public(), mesh, MessageId::new()),
        ] {
            assert!(who.verify(&delivery_proof(&m, &i), &proof).is_err());
        }
    }
    use crate::crypto::BoxSecret;

    #[test]
    fn hello_checks_version_then_clock_then_signature() {
        let m = MemberSecret::generate();
        let now = 1_000_000_000;
        let hello = |versions: Vec<u32>, ts: i64| {
            let mut h = Hello::sign(
                &m,
                MeshId::new(),
                SessionId::new(),
                BoxSecret::generate().public(),
                ts,
                "t",
            );
            h.versions = versions;
            h
        };
        let forged = |mut h: Hello| {
            h.ts += 1;
            h
        };
        let cases: Vec<(&str, Hello, Result<u32, HelloRefusal>)> = vec![
            ("current", hello(vec![1], now), Ok(1)),
            ("newer client too", hello(vec![1, 7], now), Ok(1)),
            (
                "only newer",
                hello(vec![7], now),
                Err(HelloRefusal::NoCommonVersion),
            ),
            (
                "none",
                hello(vec![], now),
                Err(HelloRefusal::NoCommonVersion),
            ),
            ("59 s behind", hello(vec![1], now - 59_000), Ok(1)),
            ("60 s ahead", hello(vec![1], now + 60_000), Ok(1)),
            (
                "61 s behind",
                hello(vec![1], now - 61_000),
                Err(HelloRefusal::Stale { behind_secs: 61 }),
            ),
            (
                "61 s ahead",
                hello(vec![1], now + 61_000),
                Err(HelloRefusal::Stale { behind_secs: -61 }),
            ),
            (
                "tampered",
                forged(hello(vec![1], now)),
                Err(HelloRefusal::BadSignature),
            ),
            (
                "stale and tampered: the clock is named first",
                forged(hello(vec![1], now - 120_000)),
                Err(HelloRefusal::Stale { behind_secs: 119 }),
            ),
        ];
        for (what, h, want) in cases {
            assert_eq!(h.check(now), want, "{what}");
        }
        assert_eq!(
            HelloRefusal::NoCommonVersion.code(),
            ErrorCode::UnsupportedVersion
        );
        assert!(
            HelloRefusal::Stale { behind_secs: 61 }
                .to_string()
                .contains("61 s")
        );
    }

    #[test]
    fn error_codes_keep_their_wire_names_and_unknown_ones_still_decode() {
        for (code, name) in [
            (ErrorCode::BadFrame, "bad_frame"),
            (ErrorCode::QuotaExceeded, "quota_exceeded"),
            (ErrorCode::IdTaken, "id_taken"),
            (ErrorCode::CreationRefused, "creation_refused"),
        ] {
            assert_eq!(code.as_str(), name);
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&format!("\"{name}\"")).unwrap(),
                code
            );
        }
        let later: ErrorCode = serde_json::from_str("\"some_code_from_a_newer_relay\"").unwrap();
        assert_eq!(later, ErrorCode::Unknown);
    }

    #[test]
    fn hello_signature_covers_every_field() {
        let m = MemberSecret::generate();
        let h = Hello::sign(
            &m,
            MeshId::new(),
            SessionId::new(),
            BoxSecret::generate().public(),
            5,
            "t",
        );
        h.verify_sig().unwrap();
        let mut h2 = h.clone();
        h2.ts += 1;
        assert!(h2.verify_sig().is_err());
        let mut h3 = h.clone();
        h3.nonce[0] ^= 1;
        assert!(h3.verify_sig().is_err());
        let mut h4 = h.clone();
        h4.mesh = MeshId::new();
        assert!(h4.verify_sig().is_err());
    }

    #[test]
    fn frames_round_trip_with_tags() {
        let f = ClientFrame::Ping { n: 7 };
        let bytes = encode(&f).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"t":"ping","n":7}"#
        );
        assert_eq!(decode::<ClientFrame>(&bytes).unwrap(), f);
        let e = RelayFrame::Error {
            rid: None,
            code: ErrorCode::StaleHello,
            message: "x".into(),
            fatal: true,
            retry_ms: None,
        };
        let s = String::from_utf8(encode(&e).unwrap()).unwrap();
        assert!(s.contains(r#""code":"stale_hello""#), "{s}");
    }

    #[test]
    fn create_mesh_carries_a_token_only_when_given_and_old_frames_still_parse() {
        let genesis = MeshGenesis::sign(&MemberSecret::generate(), MeshId::new(), 5);
        let plain = ClientFrame::CreateMesh {
            rid: 1,
            genesis: genesis.clone(),
            token: None,
        };
        let s = String::from_utf8(encode(&plain).unwrap()).unwrap();
        assert!(!s.contains("token"), "{s}");
        assert_eq!(decode::<ClientFrame>(s.as_bytes()).unwrap(), plain);
        let with = ClientFrame::CreateMesh {
            rid: 1,
            genesis,
            token: Some(CreationToken::new(" cmrt_abc\n")),
        };
        let s = String::from_utf8(encode(&with).unwrap()).unwrap();
        assert!(s.contains(r#""token":"cmrt_abc""#), "{s}");
        assert_eq!(decode::<ClientFrame>(s.as_bytes()).unwrap(), with);
        assert!(
            !format!("{with:?}").contains("cmrt_abc"),
            "Debug hides the token"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            decode::<ClientFrame>(b"\x00\xffnot json"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode::<ClientFrame>(br#"{"t":"nope"}"#),
            Err(FrameError::Malformed(_))
        ));
        let big = vec![b' '; MAX_FRAME + 1];
        assert!(matches!(
            decode::<ClientFrame>(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn envelope_json_shape() {
        let env = Envelope {
            epoch: 0,
            id: MessageId::new(),
            from: SessionId::new(),
            from_member: MemberSecret::generate().public(),
            to: Route::Sessions {
                sessions: vec![SessionId::new()],
            },
            seal: Seal::Mesh,
            ct: vec![1, 2, 3],
        };
        let v: serde_json::Value = serde_json::to_value(&env).unwrap();
        assert_eq!(v["to"]["kind"], "sessions");
        assert_eq!(v["seal"], "mesh");
        assert_eq!(v["ct"], "AQID");
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
    }
}
