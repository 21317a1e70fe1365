//! Shared mesh state as an op log (brief §4).
//!
//! A write (set a key, store a memory, claim a task, …) is an [`Op`] inside an [`OpBody`],
//! signed by the author's member key and sealed with the mesh key into an [`OpEnvelope`].
//! The relay reads only the envelope's id and author: it gives each new envelope the next
//! per-mesh sequence number, stores it and fans it out as a [`SequencedOp`]. Every daemon
//! applies ops in sequence order, so races (two claims on one task, two writes to one key)
//! resolve by log order, the same way on every machine.
//!
//! Each daemon chains what it applies: `hash(seq) = H(hash(seq - 1), seq, at, id, author,
//! ct)`, starting from [`chain_origin`]. A relay that alters, drops or reorders a stored op
//! changes the hash at that sequence number, which `claudemesh audit verify` reports.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{Canonical, CryptoError, MemberKey, MemberSecret, MeshKey, Signature};
use crate::encoding;
use crate::epoch::Epoch;
use crate::ids::{ItemId, MeshId, OpId, SessionId};
use crate::message::OpenError;
use crate::roster::Role;

/// Longest state key, in bytes.
pub const MAX_KEY: usize = 256;
/// Largest text field of an op (a value, a memory, a skill body), in bytes.
pub const MAX_TEXT: usize = 64 * 1024;

/// Snapshot ciphertext travels in parts of at most this many bytes.
pub const SNAPSHOT_PART: usize = 512 * 1024;
/// Largest snapshot ciphertext a relay accepts (64 MiB).
pub const MAX_SNAPSHOT: usize = 64 << 20;

/// A sealed op as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEnvelope {
    /// Op id; the relay dedupes appends by it.
    pub id: OpId,
    /// Author member; the relay refuses envelopes whose author is not the link's member.
    pub author: MemberKey,
    /// The sealed [`OpBody`] (see [`seal_op`]).
    #[serde(with = "encoding::bytes")]
    pub ct: Vec<u8>,
    /// A copy of the body's [`OpBody::roster`] in the clear, so the relay can refuse a claim
    /// beyond the roster it holds. Daemons refuse an op whose copy differs from the signed
    /// one; a relay that does not know the field drops it, which daemons accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<u64>,
    /// The key epoch `ct` is sealed under (bound in its associated data; omitted for 0).
    #[serde(default, skip_serializing_if = "crate::epoch::is_zero")]
    pub epoch: Epoch,
}

/// An op with its place in the mesh's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedOp {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the relay sequenced it, unix ms. Ops use this clock (not the author's) for
    /// anything time-dependent, so every daemon folds them identically.
    pub at: i64,
    /// The op.
    pub op: OpEnvelope,
}

/// Has a daemon applied ops (up to `next - 1`) that its relay never showed on the current
/// link (`shown`: the highest sequence in any op or page head it sent)? Then the relay's
/// log is behind the daemon's: restored from an old backup, or another relay. A page's
/// head alone says nothing: it was read before the page was sent, and live ops sequenced
/// since overtake it.
pub fn relay_behind(shown: u64, next: u64) -> bool {
    shown.saturating_add(1) < next
}

/// Puts sequenced ops that arrive in any order, duplicated, back in sequence order: a
/// daemon applies ops only in sequence, while live fan-out and catch-up pages interleave.
#[derive(Debug, Default)]
pub struct Reorder {
    /// Next sequence to apply.
    pub next: u64,
    ahead: std::collections::BTreeMap<u64, SequencedOp>,
}

impl Reorder {
    /// Start expecting `next`.
    pub fn new(next: u64) -> Self {
        Self {
            next,
            ahead: std::collections::BTreeMap::new(),
        }
    }

    /// Ops held because an earlier one is missing.
    pub fn waiting(&self) -> usize {
        self.ahead.len()
    }

    /// Continue from `next` (a snapshot covered everything before it).
    pub fn skip_to(&mut self, next: u64) {
        self.ahead = self.ahead.split_off(&next);
        self.next = next;
    }

    /// Take `ops`; return those now next in line, in order (possibly none). Ops before
    /// `next` (already applied) and repeats are dropped.
    pub fn push(&mut self, ops: Vec<SequencedOp>) -> Vec<SequencedOp> {
        for o in ops {
            if o.seq >= self.next {
                self.ahead.insert(o.seq, o);
            }
        }
        let mut run = Vec::new();
        while let Some(o) = self.ahead.remove(&self.next) {
            run.push(o);
            self.next += 1;
        }
        run
    }
}

/// What the author signed, inside the seal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpBody {
    /// Same as the envelope's id.
    pub id: OpId,
    /// The authoring session.
    pub session: SessionId,
    /// The authoring session's display name when it wrote.
    pub name: String,
    /// Author clock, unix ms (informational).
    pub at: i64,
    /// How many roster entries the author's daemon had applied when it wrote: the op's
    /// place in the roster's history (see [`crate::roster::op_standing`]). Absent in ops
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<u64>,
    /// The change.
    pub op: Op,
}

/// Whether `author`, with `role` at the op's standing, may replace or remove a skill that
/// `holder` shared (`None`: no such skill yet): only its author or an admin may.
pub fn may_change_skill(holder: Option<&MemberKey>, author: &MemberKey, role: Role) -> bool {
    holder.is_none_or(|h| h == author) || role.is_admin()
}

/// One change to shared state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// Set a key (`null` deletes it).
    SetState {
        /// The key.
        key: String,
        /// Any JSON value.
        value: Value,
    },
    /// Store a memory.
    Remember {
        /// New memory id.
        memory: ItemId,
        /// The text.
        text: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// Delete a memory.
    Forget {
        /// The memory.
        memory: ItemId,
    },
    /// Create a task (open, unclaimed).
    CreateTask {
        /// New task id.
        task: ItemId,
        /// Title.
        title: String,
        /// Details.
        #[serde(default)]
        body: String,
        /// `low`, `normal`, `high`, `urgent`.
        #[serde(default)]
        priority: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
        /// Who the author suggests should take it (a peer name), if anyone.
        #[serde(default)]
        assignee: Option<String>,
    },
    /// Claim an open task; the first claim in log order wins.
    ClaimTask {
        /// The task.
        task: ItemId,
    },
    /// Mark a task done (by its assignee, or anyone if it was never claimed).
    CompleteTask {
        /// The task.
        task: ItemId,
        /// Result summary.
        #[serde(default)]
        result: String,
    },
    /// Reserve files matching globs; an exclusive reservation that overlaps a live
    /// reservation of another session (or any reservation overlapping a live exclusive
    /// one) is refused, by log order.
    ReserveFiles {
        /// New reservation id.
        reservation: ItemId,
        /// Glob patterns (`*`, `?`, `**`).
        patterns: Vec<String>,
        /// Exclusive (the default) or shared.
        exclusive: bool,
        /// Lifetime from sequencing, seconds.
        ttl_secs: u64,
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Release a reservation.
    ReleaseFiles {
        /// The reservation.
        reservation: ItemId,
    },
    /// Share what a session learned about the codebase.
    ShareContext {
        /// New context id.
        context: ItemId,
        /// Summary.
        summary: String,
        /// Files read.
        #[serde(default)]
        files_read: Vec<String>,
        /// Key findings.
        #[serde(default)]
        key_findings: Vec<String>,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// Publish (or replace) a skill by name.
    ShareSkill {
        /// Skill name.
        name: String,
        /// One-line description.
        description: String,
        /// Full instructions.
        instructions: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
        /// When to use it.
        #[serde(default)]
        when_to_use: String,
    },
    /// Remove a skill.
    RemoveSkill {
        /// Skill name.
        name: String,
    },
    /// Schedule a reminder: once (`deliver_at`) or on a 5-field `cron`.
    ScheduleReminder {
        /// New reminder id.
        reminder: ItemId,
        /// Recipient: empty for the author session, else a peer name or `@group`.
        #[serde(default)]
        to: String,
        /// Text delivered.
        body: String,
        /// One-shot due time, unix ms.
        #[serde(default)]
        deliver_at: Option<i64>,
        /// Recurring schedule (UTC), `min hour dom month dow`.
        #[serde(default)]
        cron: Option<String>,
    },
    /// Cancel a reminder.
    CancelReminder {
        /// The reminder.
        reminder: ItemId,
    },
    /// The firing daemon delivered a reminder for the due time `due`.
    ReminderFired {
        /// The reminder.
        reminder: ItemId,
        /// The due time fired, unix ms.
        due: i64,
    },
    /// A new mesh-key epoch (see [`crate::epoch`]): a fresh key boxed to each member the
    /// author kept, written by an admin after a member left or was removed. Folded only if
    /// its author is an admin at the op's standing and `epoch` is one past the newest
    /// epoch folded so far (a concurrent rotation loses by log order).
    KeyEpoch {
        /// The new epoch.
        epoch: Epoch,
        /// How many roster entries the author had applied when it made the epoch (the
        /// boxes go to the members of that roster).
        roster_len: u64,
        /// The roster chain hash after those entries.
        #[serde(with = "encoding::array")]
        roster_hash: [u8; 32],
        /// The key, once per member.
        boxes: Vec<crate::epoch::EpochBox>,
    },
    /// Where the mesh's relay is (see `PROTOCOL.md` §8b): the address members dial and
    /// the certificate fingerprint they pin, written by the owner or an admin when the
    /// relay moves. Folded only if its author is an admin at the op's standing and
    /// `version` is above every version folded so far, so a replay of an older record
    /// (by the relay, which stores them) changes nothing. The relay cannot write one: it
    /// holds no mesh key and no admin's member key.
    SetRelay {
        /// Relay `host:port`.
        relay: String,
        /// The relay's certificate fingerprint (SHA-256 of its certificate).
        #[serde(with = "encoding::array")]
        fingerprint: [u8; 32],
        /// One above the newest version the author had folded (the first record is 1).
        version: u64,
    },
    /// Share a file (see [`crate::file`]): its manifest sealed under the file key, and
    /// the key wrapped for whoever may read it. The chunks are stored before the op is
    /// written, so a reader that sees it can fetch them.
    ShareFile {
        /// New file id.
        file: ItemId,
        /// [`crate::file::FileKey::seal_manifest`].
        #[serde(with = "encoding::bytes")]
        manifest: Vec<u8>,
        /// The file key, per reader (one `mesh` box for a mesh-wide share).
        keys: Vec<crate::file::KeyBox>,
        /// Who it was shared with, as the author addressed it (`""`: the whole mesh).
        #[serde(default)]
        to: String,
        /// Sealed size in bytes (what storing it costs; the plaintext size is sealed).
        stored: u64,
    },
    /// Give more members the key of a file shared before: only its author or an admin
    /// may, and nothing is uploaded again.
    GrantFile {
        /// The file.
        file: ItemId,
        /// The key, per new reader.
        keys: Vec<crate::file::KeyBox>,
    },
    /// Delete a file (its author or an admin): gone from lists; its chunks are dropped.
    DeleteFile {
        /// The file.
        file: ItemId,
    },
    /// Publish (or replace) a shared MCP server by name (see [`crate::tools`]): its
    /// tools as its hosting daemon listed them, and who runs it. Only the member that
    /// registered a name or an admin may replace or remove it.
    RegisterMcp {
        /// Server name ([`crate::tools::check_server`]).
        name: String,
        /// One-line description.
        #[serde(default)]
        description: String,
        /// Its tools.
        tools: Vec<crate::tools::ToolSpec>,
        /// The hosting daemon's own session: where calls are boxed to.
        host: SessionId,
        /// Kept while the host daemon runs (else it ends with the session that
        /// registered it).
        #[serde(default)]
        persistent: bool,
        /// Who may see and call it.
        #[serde(default)]
        scope: crate::tools::Scope,
    },
    /// Remove a shared MCP server.
    RemoveMcp {
        /// Server name.
        name: String,
    },
    /// Deploy (or update) a hosted service: its manifest. Held by the member that first
    /// deployed the name (or an admin); a version only replaces an older one.
    DeployMcp {
        /// The manifest.
        manifest: crate::deploy::Manifest,
    },
    /// Take a hosted service down everywhere (its hosts stop it; it leaves the catalog).
    UndeployMcp {
        /// The service.
        name: String,
    },
    /// This member's daemon runs hosted services for the mesh (or no longer does).
    HostOffer {
        /// Whether it accepts services now.
        enabled: bool,
        /// Its sandbox, as it describes it (e.g. `bubblewrap 0.8.0`).
        #[serde(default)]
        sandbox: String,
    },
    /// An op kind this build does not know (written by a newer version): chained, skipped.
    #[serde(other)]
    Unknown,
}

impl Op {
    /// The op's kind name, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SetState { .. } => "set_state",
            Self::Remember { .. } => "remember",
            Self::Forget { .. } => "forget",
            Self::CreateTask { .. } => "create_task",
            Self::ClaimTask { .. } => "claim_task",
            Self::CompleteTask { .. } => "complete_task",
            Self::ReserveFiles { .. } => "reserve_files",
            Self::ReleaseFiles { .. } => "release_files",
            Self::ShareContext { .. } => "share_context",
            Self::ShareSkill { .. } => "share_skill",
            Self::RemoveSkill { .. } => "remove_skill",
            Self::ScheduleReminder { .. } => "schedule_reminder",
            Self::CancelReminder { .. } => "cancel_reminder",
            Self::ReminderFired { .. } => "reminder_fired",
            Self::KeyEpoch { .. } => "key_epoch",
            Self::SetRelay { .. } => "set_relay",
            Self::ShareFile { .. } => "share_file",
            Self::GrantFile { .. } => "grant_file",
            Self::DeleteFile { .. } => "delete_file",
            Self::RegisterMcp { .. } => "register_mcp",
            Self::RemoveMcp { .. } => "remove_mcp",
            Self::DeployMcp { .. } => "deploy_mcp",
            Self::UndeployMcp { .. } => "undeploy_mcp",
            Self::HostOffer { .. } => "host_offer",
            Self::Unknown => "unknown",
        }
    }
}

fn op_ad(epoch: Epoch, mesh: &MeshId, id: &OpId, author: &MemberKey) -> Vec<u8> {
    crate::epoch::ad("claudemesh/op-ad/v1", epoch)
        .fixed(mesh.as_bytes())
        .fixed(id.as_bytes())
        .fixed(&author.0)
        .into_bytes()
}

fn op_sig_bytes(mesh: &MeshId, id: &OpId, json: &[u8]) -> Vec<u8> {
    Canonical::new("claudemesh/op/v1")
        .fixed(mesh.as_bytes())
        .fixed(id.as_bytes())
        .var(json)
        .into_bytes()
}

/// Sign `body` with the author's member key and seal it with the epoch-0 mesh key.
pub fn seal_op(
    key: &MeshKey,
    mesh: &MeshId,
    author: &MemberSecret,
    body: &OpBody,
) -> Result<OpEnvelope, CryptoError> {
    seal_op_at(0, key, mesh, author, body)
}

/// Sign `body` with the author's member key and seal it with the key of `epoch`.
pub fn seal_op_at(
    epoch: Epoch,
    key: &MeshKey,
    mesh: &MeshId,
    author: &MemberSecret,
    body: &OpBody,
) -> Result<OpEnvelope, CryptoError> {
    let json = serde_json::to_vec(body).map_err(|_| CryptoError::Encrypt)?;
    let sig = author.sign(&op_sig_bytes(mesh, &body.id, &json));
    let mut inner = Vec::with_capacity(64 + json.len());
    inner.extend_from_slice(&sig.0);
    inner.extend_from_slice(&json);
    let pk = author.public();
    let ct = key.seal(&op_ad(epoch, mesh, &body.id, &pk), &inner)?;
    Ok(OpEnvelope {
        id: body.id,
        author: pk,
        ct,
        roster: body.roster,
        epoch,
    })
}

/// Open an [`OpEnvelope`] with `key`, the key of its [`OpEnvelope::epoch`]: decrypt, check the author's signature and that the body names
/// the envelope's id.
pub fn open_op(key: &MeshKey, mesh: &MeshId, env: &OpEnvelope) -> Result<OpBody, OpenError> {
    let inner = key.open(&op_ad(env.epoch, mesh, &env.id, &env.author), &env.ct)?;
    if inner.len() < 64 {
        return Err(OpenError::Crypto(CryptoError::Decrypt));
    }
    let (sig, json) = inner.split_at(64);
    let mut s = [0u8; 64];
    s.copy_from_slice(sig);
    env.author
        .verify(&op_sig_bytes(mesh, &env.id, json), &Signature(s))?;
    let body: OpBody = serde_json::from_slice(json)?;
    if body.id != env.id || env.roster.is_some_and(|r| body.roster != Some(r)) {
        return Err(OpenError::Mismatch);
    }
    Ok(body)
}

/// The chain hash before the first op of `mesh`.
pub fn chain_origin(mesh: &MeshId) -> [u8; 32] {
    blake3::derive_key("claudemesh 2026 op chain origin v1", mesh.as_bytes())
}

/// The chain hash after applying `op` on top of `prev`.
pub fn chain_next(prev: &[u8; 32], op: &SequencedOp) -> [u8; 32] {
    let bytes = Canonical::new("claudemesh/op-chain/v1")
        .fixed(prev)
        .i64(op.seq as i64)
        .i64(op.at)
        .fixed(op.op.id.as_bytes())
        .fixed(&op.op.author.0)
        .var(&op.op.ct)
        .into_bytes();
    *blake3::hash(&bytes).as_bytes()
}

/// The folded state of a mesh right after the op at `seq`, as one member captured it. A new
/// member (or one too far behind) starts from the newest snapshot instead of replaying the
/// whole log; the relay may then drop the ops it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// The mesh.
    pub mesh: MeshId,
    /// The last op folded in.
    pub seq: u64,
    /// The chain hash after that op (the chain continues from it).
    #[serde(with = "encoding::array")]
    pub hash: [u8; 32],
    /// The folded tables, sequenced rows only.
    pub tables: Vec<SnapshotTable>,
    /// The roster floor after that op (see [`crate::roster::op_standing`]); absent if no
    /// op before it made a roster claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster_floor: Option<u64>,
}

/// One folded table in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotTable {
    /// Table name.
    pub name: String,
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; each value is `null` or `{"i": int}`, `{"r": real}`, `{"t": text}`,
    /// `{"b": base64url}`.
    pub rows: Vec<Vec<Value>>,
}

fn snapshot_ad(mesh: &MeshId, seq: u64, author: &MemberKey) -> Vec<u8> {
    Canonical::new("claudemesh/snapshot-ad/v1")
        .fixed(mesh.as_bytes())
        .i64(seq as i64)
        .fixed(&author.0)
        .into_bytes()
}

fn snapshot_sig_bytes(mesh: &MeshId, seq: u64, json: &[u8]) -> Vec<u8> {
    Canonical::new("claudemesh/snapshot/v1")
        .fixed(mesh.as_bytes())
        .i64(seq as i64)
        .var(json)
        .into_bytes()
}

/// Sign a snapshot with the author's member key and seal it with the mesh key.
pub fn seal_snapshot(
    key: &MeshKey,
    author: &MemberSecret,
    body: &SnapshotBody,
) -> Result<Vec<u8>, CryptoError> {
    let json = serde_json::to_vec(body).map_err(|_| CryptoError::Encrypt)?;
    let sig = author.sign(&snapshot_sig_bytes(&body.mesh, body.seq, &json));
    let mut inner = Vec::with_capacity(64 + json.len());
    inner.extend_from_slice(&sig.0);
    inner.extend_from_slice(&json);
    key.seal(&snapshot_ad(&body.mesh, body.seq, &author.public()), &inner)
}

/// Open a snapshot of `mesh` at `seq` by `author`; checks the signature and that the body
/// is what the envelope says.
pub fn open_snapshot(
    key: &MeshKey,
    mesh: &MeshId,
    seq: u64,
    author: &MemberKey,
    ct: &[u8],
) -> Result<SnapshotBody, OpenError> {
    let inner = key.open(&snapshot_ad(mesh, seq, author), ct)?;
    if inner.len() < 64 {
        return Err(OpenError::Crypto(CryptoError::Decrypt));
    }
    let (sig, json) = inner.split_at(64);
    let mut s = [0u8; 64];
    s.copy_from_slice(sig);
    author.verify(&snapshot_sig_bytes(mesh, seq, json), &Signature(s))?;
    let body: SnapshotBody = serde_json::from_slice(json)?;
    if body.mesh != *mesh || body.seq != seq {
        return Err(OpenError::Mismatch);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn a_relay_is_behind_only_when_it_never_showed_what_was_applied() {
        for (shown, next, behind, case) in [
            (0, 1, false, "nothing applied, nothing shown"),
            (10, 11, false, "applied up to the head"),
            // Live op 11 overtook the page whose head (10) was read before it.
            (11, 12, false, "live ops overtook the page head"),
            (5, 12, true, "applied 11, the relay showed at most 5"),
            (10, 12, true, "one op the relay never showed"),
            (u64::MAX, u64::MAX, false, "no overflow"),
        ] {
            assert_eq!(relay_behind(shown, next), behind, "{case}");
        }
    }

    fn sequenced(seq: u64) -> SequencedOp {
        SequencedOp {
            seq,
            at: seq as i64,
            op: OpEnvelope {
                epoch: 0,
                id: OpId::new(),
                author: MemberKey([0; 32]),
                ct: Vec::new(),
                roster: None,
            },
        }
    }

    proptest! {
        /// Any arrival order, with repeats and ops already applied, in any chunks: each of
        /// next..=n comes out exactly once, in order.
        #[test]
        fn reorder_yields_each_sequence_once_in_order(
            n in 1u64..60,
            start in 1u64..5,
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..200),
            chunk in 1usize..9,
        ) {
            let mut arrivals: Vec<u64> = (1..=n).collect();
            arrivals.extend(order.iter().map(|i| i.index(n as usize) as u64 + 1));
            // A deterministic shuffle driven by the generated indices.
            for (k, i) in order.iter().enumerate() {
                let len = arrivals.len();
                arrivals.swap(k % len, i.index(len));
            }
            let mut r = Reorder::new(start);
            let mut out = Vec::new();
            for c in arrivals.chunks(chunk) {
                out.extend(r.push(c.iter().map(|&s| sequenced(s)).collect()).into_iter().map(|o| o.seq));
            }
            let want: Vec<u64> = (start..=n).collect();
            prop_assert_eq!(out, want);
            prop_assert_eq!(r.next, n.max(start - 1) + 1);
        }
    }

    #[test]
    fn reorder_skips_what_a_snapshot_covered() {
        let mut r = Reorder::new(1);
        assert!(r.push(vec![sequenced(3), sequenced(5)]).is_empty());
        r.skip_to(4);
        assert!(
            r.push(vec![]).is_empty(),
            "3 was covered; 4 is still missing"
        );
        let got: Vec<u64> = r
            .push(vec![sequenced(4)])
            .into_iter()
            .map(|o| o.seq)
            .collect();
        assert_eq!(got, vec![4, 5]);
    }

    use super::*;

    fn body(op: Op) -> OpBody {
        OpBody {
            id: OpId::new(),
            session: SessionId::new(),
            name: "alice".into(),
            at: 1,
            roster: Some(2),
            op,
        }
    }

    #[test]
    fn a_skill_is_changed_only_by_its_author_or_an_admin() {
        let (a, b) = (
            MemberSecret::generate().public(),
            MemberSecret::generate().public(),
        );
        let cases = [
            ("a new skill, by a member", None, Role::Member, true),
            ("its author replaces it", Some(&a), Role::Member, true),
            ("another member", Some(&b), Role::Member, false),
            ("an admin", Some(&b), Role::Admin, true),
            ("the owner", Some(&b), Role::Owner, true),
        ];
        for (what, holder, role, want) in cases {
            assert_eq!(may_change_skill(holder, &a, role), want, "{what}");
        }
    }

    #[test]
    fn an_op_names_its_epoch_and_a_changed_epoch_does_not_open() {
        let (k0, k1) = (MeshKey::generate(), MeshKey::generate());
        let mesh = MeshId::new();
        let author = MemberSecret::generate();
        let b = body(Op::SetState {
            key: "k".into(),
            value: serde_json::json!(1),
        });
        let env = seal_op_at(1, &k1, &mesh, &author, &b).unwrap();
        assert_eq!(env.epoch, 1);
        assert_eq!(open_op(&k1, &mesh, &env).unwrap(), b);
        // (case, key, epoch named in the envelope) → must not open
        let cases = [
            ("old key", &k0, 1),
            ("relabelled to 0", &k1, 0),
            ("relabelled to 2", &k1, 2),
        ];
        for (case, key, epoch) in cases {
            let mut e = env.clone();
            e.epoch = epoch;
            assert!(open_op(key, &mesh, &e).is_err(), "{case}");
        }
        // Epoch 0 is written without the field, as before epochs existed.
        let env0 = seal_op(&k0, &mesh, &author, &b).unwrap();
        let json = serde_json::to_value(&env0).unwrap();
        assert!(json.get("epoch").is_none());
        assert!(serde_json::to_value(&env).unwrap().get("epoch").is_some());
    }

    #[test]
    fn sealed_ops_open_only_with_the_right_key_mesh_and_bytes() {
        let key = MeshKey::generate();
        let mesh = MeshId::new();
        let author = MemberSecret::generate();
        let b = body(Op::SetState {
            key: "k".into(),
            value: serde_json::json!({"a": 1}),
        });
        let env = seal_op(&key, &mesh, &author, &b).unwrap();
        assert_eq!(open_op(&key, &mesh, &env).unwrap(), b);
        assert!(open_op(&MeshKey::generate(), &mesh, &env).is_err());
        assert!(open_op(&key, &MeshId::new(), &env).is_err());
        let mut bad = env.clone();
        let n = bad.ct.len() - 1;
        bad.ct[n] ^= 1;
        assert!(open_op(&key, &mesh, &bad).is_err());
        let mut other = env.clone();
        other.author = MemberSecret::generate().public();
        assert!(open_op(&key, &mesh, &other).is_err());
        // The clear copy of the roster claim must match the signed one, or be absent (a
        // relay that does not know the field drops it).
        assert_eq!(env.roster, Some(2));
        let mut claim = env.clone();
        claim.roster = Some(1);
        assert!(matches!(
            open_op(&key, &mesh, &claim),
            Err(OpenError::Mismatch)
        ));
        claim.roster = None;
        assert_eq!(open_op(&key, &mesh, &claim).unwrap(), b);
        // The plaintext is not in the ciphertext.
        let ct = String::from_utf8_lossy(&env.ct).to_string();
        assert!(!ct.contains("set_state"));
    }

    #[test]
    fn snapshots_open_only_as_sealed() {
        let key = MeshKey::generate();
        let mesh = MeshId::new();
        let author = MemberSecret::generate();
        let body = SnapshotBody {
            mesh,
            seq: 10,
            hash: [7; 32],
            tables: vec![SnapshotTable {
                name: "state_kv".into(),
                columns: vec!["key".into()],
                rows: vec![vec![serde_json::json!({"t": "k"})]],
            }],
            roster_floor: Some(3),
        };
        let ct = seal_snapshot(&key, &author, &body).unwrap();
        let pk = author.public();
        assert_eq!(open_snapshot(&key, &mesh, 10, &pk, &ct).unwrap(), body);
        assert!(open_snapshot(&key, &mesh, 11, &pk, &ct).is_err());
        assert!(open_snapshot(&key, &mesh, 10, &MemberSecret::generate().public(), &ct).is_err());
        let mut bad = ct.clone();
        bad[30] ^= 1;
        assert!(open_snapshot(&key, &mesh, 10, &pk, &bad).is_err());
    }

    #[test]
    fn unknown_op_kinds_parse_as_unknown() {
        let v = serde_json::json!({"id": OpId::new(), "session": SessionId::new(), "name": "x",
            "at": 1, "op": {"kind": "from_the_future", "x": 1}});
        let b: OpBody = serde_json::from_value(v).unwrap();
        assert_eq!(b.op, Op::Unknown);
    }

    #[test]
    fn the_chain_depends_on_every_field_and_the_order() {
        let mesh = MeshId::new();
        let op = |seq, ct: Vec<u8>| SequencedOp {
            seq,
            at: 10,
            op: OpEnvelope {
                epoch: 0,
                id: OpId::from_bytes([seq as u8; 16]),
                author: MemberSecret::generate().public(),
                ct,
                roster: None,
            },
        };
        let a = op(1, vec![1, 2]);
        let b = op(2, vec![3]);
        let o = chain_origin(&mesh);
        let ab = chain_next(&chain_next(&o, &a), &b);
        let ba = chain_next(&chain_next(&o, &b), &a);
        assert_ne!(ab, ba);
        let mut a2 = a.clone();
        a2.op.ct[0] ^= 1;
        assert_ne!(chain_next(&o, &a), chain_next(&o, &a2));
        let mut a3 = a.clone();
        a3.at += 1;
        assert_ne!(chain_next(&o, &a), chain_next(&o, &a3));
    }
}
