//! Membership: who may connect to a mesh and who may change that.
//!
//! A mesh begins with a [`MeshGenesis`] signed by its owner. Every later change is a
//! [`RosterEntry`] signed by an admin (or, for leaving, by the member itself). The relay
//! checks each entry before accepting it and hands the whole list to every daemon on
//! connect; daemons re-check it, so a relay cannot add members on its own. [`Roster`] is
//! the fold of genesis plus entries, in relay order.
//!
//! The entries form a hash chain: each signs its position ([`RosterPlace`]: its `seq` and
//! the chain hash of everything before it), so a relay can neither reorder, replay, skip
//! nor substitute one ([`Roster::apply_at`] refuses a gap, a fork, a replay, a wrong
//! predecessor). A relay can still withhold the newest entries; the [`RosterHead`] in
//! hello and welcome, and the roster place every op claims, let a member notice.
//! Entries signed before the chain existed (no place) are accepted only as a prefix of
//! the roster, never after a chained entry, and never twice.
//!
//! Invites are [`InviteCap`]s: signed by an admin, stored at the relay so it can count uses
//! and refuse expired or revoked ones, but carrying no secret (see [`crate::invite`]).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::{Canonical, CryptoError, MemberKey, MemberSecret, Signature};
use crate::encoding;
use crate::ids::{InviteId, MeshId};

/// A member's role in one mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created the mesh; an admin that cannot be removed by others.
    Owner,
    /// May invite, approve claims and remove members.
    Admin,
    /// May connect, message and read mesh state.
    Member,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Owner => 0,
            Self::Admin => 1,
            Self::Member => 2,
        }
    }

    /// Owner or admin.
    pub fn is_admin(self) -> bool {
        matches!(self, Self::Owner | Self::Admin)
    }

    /// Lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            other => Err(format!("unknown role {other:?} (expected member or admin)")),
        }
    }
}

/// Why a roster change or invite was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RosterError {
    /// The entry names another mesh.
    #[error("entry belongs to another mesh")]
    WrongMesh,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The signer is not allowed to make this change.
    #[error("{by} is not allowed to make this change (admins only)")]
    NotAuthorized {
        /// Short id of the signer.
        by: String,
    },
    /// The owner cannot be removed or re-added.
    #[error("the mesh owner cannot be removed or replaced")]
    Owner,
    /// Removing someone who is not a member.
    #[error("not a member")]
    NotMember,
    /// An entry beyond the next one: entries before it are missing.
    #[error("roster entry {got} came before entry {expected}: entries were skipped")]
    Gap {
        /// The position of the next entry.
        expected: u64,
        /// The position it came at.
        got: u64,
    },
    /// Another entry than the one applied at a position already held.
    #[error(
        "a different roster entry at position {seq} than the one applied here: membership history was rewritten"
    )]
    Fork {
        /// The position.
        seq: u64,
    },
    /// The entry was signed for another position than the one it came at.
    #[error(
        "roster entry signed for position {signed} came at position {at} (a replay, or signed against an old roster)"
    )]
    WrongPlace {
        /// The position it names.
        signed: u64,
        /// The position it came at.
        at: u64,
    },
    /// The entry does not chain from the entries before it.
    #[error("roster entry {seq} does not follow the entries before it (another history)")]
    WrongPredecessor {
        /// Its position.
        seq: u64,
    },
    /// An entry without a place in the chain after entries that have one (or a relay
    /// asked to store one).
    #[error(
        "roster entry {seq} names no place in the roster chain (signed by an old claudemesh: upgrade it)"
    )]
    Unchained {
        /// Its position.
        seq: u64,
    },
    /// An entry without a place that repeats an earlier one.
    #[error("roster entry {seq} repeats an earlier entry (a replay)")]
    Replay {
        /// Its position.
        seq: u64,
    },
}

impl RosterError {
    /// Is this about the entry's place in the chain (the relay's doing, when it comes
    /// from a relay), rather than about who signed it?
    pub fn is_chain(&self) -> bool {
        matches!(
            self,
            Self::Gap { .. }
                | Self::Fork { .. }
                | Self::WrongPlace { .. }
                | Self::WrongPredecessor { .. }
                | Self::Unchained { .. }
                | Self::Replay { .. }
        )
    }
}

/// A chain hash: of the genesis (before any entry), or of the roster up to an entry.
pub type ChainHash = [u8; 32];

/// Where an entry stands in the roster's hash chain, as its signer saw the roster: its
/// position (from 0) and the chain hash of the entries before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RosterPlace {
    /// Position of the entry, from 0.
    pub seq: u64,
    /// Chain hash after the `seq` entries before it ([`chain_origin`] for the first).
    #[serde(with = "encoding::array")]
    pub prev: ChainHash,
}

/// The head of a roster: how many entries it holds and the chain hash after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RosterHead {
    /// Number of entries.
    pub len: u64,
    /// Chain hash after them ([`chain_origin`] when there are none).
    #[serde(with = "encoding::array")]
    pub hash: ChainHash,
}

impl RosterHead {
    /// The place of the entry that would follow this head.
    pub fn next(&self) -> RosterPlace {
        RosterPlace {
            seq: self.len,
            prev: self.hash,
        }
    }
}

/// The chain hash before any entry: a function of the genesis alone.
pub fn chain_origin(g: &MeshGenesis) -> ChainHash {
    blake3::derive_key("claudemesh 2026 roster chain origin v1", &g.commitment())
}

/// The chain hash after the entry `e` at `seq`, following `prev`.
pub fn chain_next(prev: &ChainHash, seq: u64, e: &RosterEntry) -> ChainHash {
    let b = Canonical::new("claudemesh/roster-chain/v1")
        .fixed(prev)
        .fixed(&seq.to_be_bytes())
        .var(&e.commitment())
        .into_bytes();
    *blake3::hash(&b).as_bytes()
}

/// What [`Roster::apply_at`] did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was the next entry: applied.
    New,
    /// It is the entry already applied at its position: nothing to do.
    Known,
}

impl From<CryptoError> for RosterError {
    fn from(_: CryptoError) -> Self {
        Self::BadSignature
    }
}

/// The first, self-signed statement of a mesh: its id and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshGenesis {
    /// The mesh.
    pub mesh: MeshId,
    /// The owner's member key.
    pub owner: MemberKey,
    /// Creation time, unix ms.
    pub created_at: i64,
    /// Owner's signature over `claudemesh/genesis/v1 | mesh | owner | created_at`.
    pub sig: Signature,
}

impl MeshGenesis {
    fn canonical(mesh: &MeshId, owner: &MemberKey, at: i64) -> Vec<u8> {
        Canonical::new("claudemesh/genesis/v1")
            .fixed(mesh.as_bytes())
            .fixed(&owner.0)
            .i64(at)
            .into_bytes()
    }

    /// Create and sign a genesis.
    pub fn sign(owner: &MemberSecret, mesh: MeshId, created_at: i64) -> Self {
        let pk = owner.public();
        let sig = owner.sign(&Self::canonical(&mesh, &pk, created_at));
        Self {
            mesh,
            owner: pk,
            created_at,
            sig,
        }
    }

    /// The signed bytes followed by the signature: a commitment to this exact genesis.
    pub fn commitment(&self) -> Vec<u8> {
        let mut v = Self::canonical(&self.mesh, &self.owner, self.created_at);
        v.extend_from_slice(&self.sig.0);
        v
    }

    /// Check the owner's signature.
    pub fn verify(&self) -> Result<(), RosterError> {
        self.owner.verify(
            &Self::canonical(&self.mesh, &self.owner, self.created_at),
            &self.sig,
        )?;
        Ok(())
    }
}

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RosterOp {
    /// Add a member, or change its role.
    Add,
    /// Remove a member (by an admin, or the member itself leaving).
    Remove,
}

/// One signed membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The mesh.
    pub mesh: MeshId,
    /// The member added or removed.
    pub member: MemberKey,
    /// The role granted (ignored for removals).
    pub role: Role,
    /// Add or remove.
    pub op: RosterOp,
    /// The signer.
    pub by: MemberKey,
    /// When, unix ms.
    pub at: i64,
    /// The invite this addition consumes, if any (the relay counts its uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<InviteId>,
    /// Its place in the roster's hash chain (signed). Absent only in entries signed before
    /// the roster was a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<RosterPlace>,
    /// Signature by `by`.
    pub sig: Signature,
}

impl RosterEntry {
    /// Is this the entry that admits `claimant` through `cap`, signed by `admin`: an add
    /// of exactly that key, with the invite's role, naming the invite?
    pub fn admits(&self, claimant: &MemberKey, cap: &InviteCap, admin: &MemberKey) -> bool {
        self.op == RosterOp::Add
            && self.member == *claimant
            && self.role == cap.role
            && self.invite == Some(cap.id)
            && self.by == *admin
    }

    #[allow(clippy::too_many_arguments)]
    fn canonical(
        mesh: &MeshId,
        member: &MemberKey,
        role: Role,
        op: RosterOp,
        by: &MemberKey,
        at: i64,
        invite: Option<&InviteId>,
        place: Option<&RosterPlace>,
    ) -> Vec<u8> {
        let label = match place {
            Some(_) => "claudemesh/roster/v2",
            None => "claudemesh/roster/v1",
        };
        let c = Canonical::new(label)
            .fixed(mesh.as_bytes())
            .fixed(&member.0)
            .fixed(&[role.byte(), matches!(op, RosterOp::Remove) as u8])
            .fixed(&by.0)
            .i64(at)
            .fixed(
                invite
                    .map(|i| *i.as_bytes())
                    .unwrap_or([0u8; 16])
                    .as_slice(),
            );
        match place {
            Some(p) => c.fixed(&p.seq.to_be_bytes()).fixed(&p.prev),
            None => c,
        }
        .into_bytes()
    }

    fn signed_bytes(&self) -> Vec<u8> {
        Self::canonical(
            &self.mesh,
            &self.member,
            self.role,
            self.op,
            &self.by,
            self.at,
            self.invite.as_ref(),
            self.place.as_ref(),
        )
    }

    /// Create and sign an entry to follow the roster whose head is `after`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        signer: &MemberSecret,
        after: &RosterHead,
        mesh: MeshId,
        member: MemberKey,
        role: Role,
        op: RosterOp,
        at: i64,
        invite: Option<InviteId>,
    ) -> Self {
        Self::sign_placed(
            signer,
            Some(after.next()),
            mesh,
            member,
            role,
            op,
            at,
            invite,
        )
    }

    /// Create and sign an entry as claudemesh did before the roster was a chain (no
    /// place): what old rosters hold. Relays refuse new ones; kept for tests of rosters
    /// stored before the change.
    pub fn sign_unchained(
        signer: &MemberSecret,
        mesh: MeshId,
        member: MemberKey,
        role: Role,
        op: RosterOp,
        at: i64,
        invite: Option<InviteId>,
    ) -> Self {
        Self::sign_placed(signer, None, mesh, member, role, op, at, invite)
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_placed(
        signer: &MemberSecret,
        place: Option<RosterPlace>,
        mesh: MeshId,
        member: MemberKey,
        role: Role,
        op: RosterOp,
        at: i64,
        invite: Option<InviteId>,
    ) -> Self {
        let by = signer.public();
        let sig = signer.sign(&Self::canonical(
            &mesh,
            &member,
            role,
            op,
            &by,
            at,
            invite.as_ref(),
            place.as_ref(),
        ));
        Self {
            mesh,
            member,
            role,
            op,
            by,
            at,
            invite,
            place,
            sig,
        }
    }

    /// The signed bytes followed by the signature: a commitment to this exact entry.
    pub fn commitment(&self) -> Vec<u8> {
        let mut v = self.signed_bytes();
        v.extend_from_slice(&self.sig.0);
        v
    }

    /// Check the signature (not the authority: see [`Roster::apply`]).
    pub fn verify_sig(&self) -> Result<(), RosterError> {
        self.by.verify(&self.signed_bytes(), &self.sig)?;
        Ok(())
    }
}

/// Current membership of one mesh: the fold of its genesis and entries.
#[derive(Debug, Clone)]
pub struct Roster {
    mesh: MeshId,
    owner: MemberKey,
    members: BTreeMap<MemberKey, Role>,
    /// The chain hash before any entry.
    origin: ChainHash,
    /// The chain hash after each entry applied.
    chain: Vec<ChainHash>,
    /// A chained entry was applied: no unchained one may follow.
    chained: bool,
    /// Hashes of the unchained entries applied (a repeat is a replay).
    unchained: BTreeSet<[u8; 32]>,
}

impl Roster {
    /// A roster holding only the owner.
    pub fn from_genesis(g: &MeshGenesis) -> Result<Self, RosterError> {
        g.verify()?;
        let mut members = BTreeMap::new();
        members.insert(g.owner, Role::Owner);
        Ok(Self {
            mesh: g.mesh,
            owner: g.owner,
            members,
            origin: chain_origin(g),
            chain: Vec::new(),
            chained: false,
            unchained: BTreeSet::new(),
        })
    }

    /// How many entries are applied.
    pub fn len(&self) -> u64 {
        self.chain.len() as u64
    }

    /// Whether no entry is applied.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The chain hash after the first `n` entries, if that many are applied.
    pub fn hash_after(&self, n: u64) -> Option<ChainHash> {
        match n {
            0 => Some(self.origin),
            n => self.chain.get(usize::try_from(n - 1).ok()?).copied(),
        }
    }

    /// The head: entries applied and the chain hash after them.
    pub fn head(&self) -> RosterHead {
        RosterHead {
            len: self.len(),
            hash: self.chain.last().copied().unwrap_or(self.origin),
        }
    }

    /// Check that `e`, arriving at position `seq`, belongs there (not applying it):
    /// the entry already applied there (`Known`), or the next entry, chained to the head
    /// and signed by someone allowed to make the change (`New`). Refused: a position
    /// beyond the next (a gap), another entry at a position held (a fork), an entry
    /// signed for another position (a replay) or after another history, an unchained
    /// entry after a chained one or repeating an earlier one.
    pub fn check_at(&self, seq: u64, e: &RosterEntry) -> Result<Applied, RosterError> {
        if e.mesh != self.mesh {
            return Err(RosterError::WrongMesh);
        }
        let len = self.len();
        if seq < len {
            let prev = self.hash_after(seq).ok_or(RosterError::Fork { seq })?;
            let same = self.hash_after(seq + 1) == Some(chain_next(&prev, seq, e));
            return if same {
                Ok(Applied::Known)
            } else {
                Err(RosterError::Fork { seq })
            };
        }
        if seq > len {
            return Err(RosterError::Gap {
                expected: len,
                got: seq,
            });
        }
        match &e.place {
            Some(p) if p.seq != seq => {
                return Err(RosterError::WrongPlace {
                    signed: p.seq,
                    at: seq,
                });
            }
            Some(p) if p.prev != self.head().hash => {
                return Err(RosterError::WrongPredecessor { seq });
            }
            Some(_) => {}
            None if self.chained => return Err(RosterError::Unchained { seq }),
            None if self
                .unchained
                .contains(blake3::hash(&e.commitment()).as_bytes()) =>
            {
                return Err(RosterError::Replay { seq });
            }
            None => {}
        }
        self.check(e)?;
        Ok(Applied::New)
    }

    /// Check a new entry offered to follow the head (what a relay accepts to store): it
    /// must name its place in the chain.
    pub fn check_next(&self, e: &RosterEntry) -> Result<(), RosterError> {
        if e.place.is_none() {
            return Err(RosterError::Unchained { seq: self.len() });
        }
        self.check_at(self.len(), e).map(|_| ())
    }

    /// Check `e` at `seq` ([`Roster::check_at`]) and apply it if it is new.
    pub fn apply_at(&mut self, seq: u64, e: &RosterEntry) -> Result<Applied, RosterError> {
        let a = self.check_at(seq, e)?;
        if a == Applied::New {
            self.fold(seq, e);
        }
        Ok(a)
    }

    fn fold(&mut self, seq: u64, e: &RosterEntry) {
        match e.op {
            RosterOp::Add => {
                self.members.insert(e.member, e.role);
            }
            RosterOp::Remove => {
                self.members.remove(&e.member);
            }
        }
        if e.place.is_some() {
            self.chained = true;
        } else {
            self.unchained
                .insert(*blake3::hash(&e.commitment()).as_bytes());
        }
        let next = chain_next(&self.head().hash, seq, e);
        self.chain.push(next);
    }

    /// Fold a genesis and entries (at positions 0, 1, …), stopping at the first invalid
    /// entry.
    pub fn from_log<'a>(
        g: &MeshGenesis,
        entries: impl IntoIterator<Item = &'a RosterEntry>,
    ) -> Result<Self, RosterError> {
        let mut r = Self::from_genesis(g)?;
        for e in entries {
            r.apply(e)?;
        }
        Ok(r)
    }

    /// Check `e`'s signature and authority only (not its place: see
    /// [`Roster::check_at`]).
    pub fn check(&self, e: &RosterEntry) -> Result<(), RosterError> {
        if e.mesh != self.mesh {
            return Err(RosterError::WrongMesh);
        }
        e.verify_sig()?;
        let by_admin = self.role(&e.by).is_some_and(Role::is_admin);
        match e.op {
            RosterOp::Add => {
                if e.role == Role::Owner || e.member == self.owner {
                    return Err(RosterError::Owner);
                }
                if !by_admin {
                    return Err(RosterError::NotAuthorized { by: e.by.short() });
                }
            }
            RosterOp::Remove => {
                if e.member == self.owner {
                    return Err(RosterError::Owner);
                }
                if !self.members.contains_key(&e.member) {
                    return Err(RosterError::NotMember);
                }
                if !(by_admin || e.by == e.member) {
                    return Err(RosterError::NotAuthorized { by: e.by.short() });
                }
            }
        }
        Ok(())
    }

    /// Check and apply `e` as the next entry.
    pub fn apply(&mut self, e: &RosterEntry) -> Result<(), RosterError> {
        let seq = self.len();
        match self.apply_at(seq, e)? {
            Applied::New => Ok(()),
            // Not reachable: nothing is known at the head's position.
            Applied::Known => Err(RosterError::Fork { seq }),
        }
    }

    /// The mesh.
    pub fn mesh(&self) -> MeshId {
        self.mesh
    }

    /// The owner.
    pub fn owner(&self) -> MemberKey {
        self.owner
    }

    /// A member's role, if it is a member.
    pub fn role(&self, m: &MemberKey) -> Option<Role> {
        self.members.get(m).copied()
    }

    /// Is `m` a current member?
    pub fn is_member(&self, m: &MemberKey) -> bool {
        self.members.contains_key(m)
    }

    /// All current members and roles.
    pub fn members(&self) -> impl Iterator<Item = (&MemberKey, &Role)> {
        self.members.iter()
    }
}

/// Membership over the roster's whole history: who was a member, with which role, after
/// the first `n` entries, for every `n`. Built from entries [`Roster::apply`] accepted, in
/// roster order, so every daemon holding the same roster answers the same.
#[derive(Debug, Clone)]
pub struct RosterHistory {
    owner: MemberKey,
    /// Per member: (number of entries applied when it took effect, role or removed).
    changes: BTreeMap<MemberKey, Vec<(u64, Option<Role>)>>,
    len: u64,
}

impl RosterHistory {
    /// The history of a mesh with no entries yet.
    pub fn new(owner: MemberKey) -> Self {
        Self {
            owner,
            changes: BTreeMap::new(),
            len: 0,
        }
    }

    /// Record the entry at `seq` (from 0, in roster order; one [`Roster::apply`] accepted).
    pub fn push(&mut self, seq: u64, e: &RosterEntry) {
        self.len = seq + 1;
        let role = match e.op {
            RosterOp::Add => Some(e.role),
            RosterOp::Remove => None,
        };
        self.changes
            .entry(e.member)
            .or_default()
            .push((self.len, role));
    }

    /// How many entries it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `m`'s role once the first `at` entries were applied.
    pub fn role_at(&self, m: &MemberKey, at: u64) -> Option<Role> {
        if *m == self.owner {
            return Some(Role::Owner);
        }
        self.changes
            .get(m)?
            .iter()
            .take_while(|(n, _)| *n <= at)
            .last()
            .and_then(|(_, r)| *r)
    }

    /// The highest role `m` ever held (for ops that name no place in the roster).
    pub fn ever(&self, m: &MemberKey) -> Option<Role> {
        if *m == self.owner {
            return Some(Role::Owner);
        }
        let roles = self.changes.get(m)?.iter().filter_map(|(_, r)| *r);
        roles.min_by_key(|r| r.byte())
    }

    /// The role an op's author had at the op's standing.
    pub fn role_of(&self, m: &MemberKey, standing: OpStanding) -> Option<Role> {
        match standing {
            OpStanding::At(n) => self.role_at(m, n),
            OpStanding::Unplaced => self.ever(m),
        }
    }
}

/// Where an op stands in the roster's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStanding {
    /// After the first `n` roster entries: its author must be a member there.
    At(u64),
    /// Nowhere: no op of the log up to it named a place (ops written before ops carried
    /// one). Its author must have been admitted at some point.
    Unplaced,
}

/// The standing of the next op of the log, and the new floor.
///
/// Every op carries `claim`: how many roster entries its author's daemon had applied when it
/// wrote. The log's *floor* is the highest claim of the ops before; an op stands at
/// `max(floor, claim)`. So a removed member cannot write "before its removal" by claiming
/// an old place once any member who saw the removal wrote, and the standing is a function
/// of the log alone: the same on every daemon, whenever its roster entries arrived. An op
/// without a claim stands at the floor (or is unplaced if there is none yet).
///
/// `Err(n)`: the op stands after `n` entries but only `known` are held here; it cannot be
/// decided yet (the relay sends roster entries before the ops that depend on them, so this
/// means the roster is still arriving, or is being withheld).
pub fn op_standing(
    floor: Option<u64>,
    claim: Option<u64>,
    known: u64,
) -> Result<(OpStanding, Option<u64>), u64> {
    let at = match (floor, claim) {
        (None, None) => return Ok((OpStanding::Unplaced, None)),
        (f, c) => f.max(c).unwrap_or(0),
    };
    if at > known {
        return Err(at);
    }
    Ok((OpStanding::At(at), Some(at)))
}

/// An invite capability, signed by an admin and published to the relay.
///
/// It holds no secret: the secret half of an invite is derived from the mesh key
/// ([`crate::invite::invite_secret`]) and travels only inside the invite link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCap {
    /// The invite.
    pub id: InviteId,
    /// The mesh.
    pub mesh: MeshId,
    /// Role granted to claimants.
    pub role: Role,
    /// How many claims may succeed.
    pub max_uses: u32,
    /// Expiry, unix ms.
    pub expires_at: i64,
    /// Whether an admin must confirm each claim.
    pub approve: bool,
    /// The issuing admin.
    pub by: MemberKey,
    /// Issue time, unix ms.
    pub at: i64,
    /// Signature by `by`.
    pub sig: Signature,
}

impl InviteCap {
    #[allow(clippy::too_many_arguments)]
    fn canonical(
        id: &InviteId,
        mesh: &MeshId,
        role: Role,
        max_uses: u32,
        expires_at: i64,
        approve: bool,
        by: &MemberKey,
        at: i64,
    ) -> Vec<u8> {
        Canonical::new("claudemesh/invite/v1")
            .fixed(id.as_bytes())
            .fixed(mesh.as_bytes())
            .fixed(&[role.byte(), approve as u8])
            .u32(max_uses)
            .i64(expires_at)
            .fixed(&by.0)
            .i64(at)
            .into_bytes()
    }

    /// Create and sign a capability.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        signer: &MemberSecret,
        id: InviteId,
        mesh: MeshId,
        role: Role,
        max_uses: u32,
        expires_at: i64,
        approve: bool,
        at: i64,
    ) -> Self {
        let by = signer.public();
        let sig = signer.sign(&Self::canonical(
            &id, &mesh, role, max_uses, expires_at, approve, &by, at,
        ));
        Self {
            id,
            mesh,
            role,
            max_uses,
            expires_at,
            approve,
            by,
            at,
            sig,
        }
    }

    /// Check the signature and that the issuer is an admin of `roster`.
    pub fn verify(&self, roster: &Roster) -> Result<(), RosterError> {
        if self.mesh != roster.mesh() {
            return Err(RosterError::WrongMesh);
        }
        let c = Self::canonical(
            &self.id,
            &self.mesh,
            self.role,
            self.max_uses,
            self.expires_at,
            self.approve,
            &self.by,
            self.at,
        );
        self.by.verify(&c, &self.sig)?;
        if self.role == Role::Owner || !roster.role(&self.by).is_some_and(Role::is_admin) {
            return Err(RosterError::NotAuthorized {
                by: self.by.short(),
            });
        }
        Ok(())
    }
}

/// Revocation of an invite, signed by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRevocation {
    /// The invite.
    pub id: InviteId,
    /// The mesh.
    pub mesh: MeshId,
    /// The revoking admin.
    pub by: MemberKey,
    /// When, unix ms.
    pub at: i64,
    /// Signature by `by`.
    pub sig: Signature,
}

impl InviteRevocation {
    fn canonical(id: &InviteId, mesh: &MeshId, by: &MemberKey, at: i64) -> Vec<u8> {
        Canonical::new("claudemesh/invite-revoke/v1")
            .fixed(id.as_bytes())
            .fixed(mesh.as_bytes())
            .fixed(&by.0)
            .i64(at)
            .into_bytes()
    }

    /// Create and sign a revocation.
    pub fn sign(signer: &MemberSecret, id: InviteId, mesh: MeshId, at: i64) -> Self {
        let by = signer.public();
        let sig = signer.sign(&Self::canonical(&id, &mesh, &by, at));
        Self {
            id,
            mesh,
            by,
            at,
            sig,
        }
    }

    /// Check the signature and that the revoker is an admin of `roster`.
    pub fn verify(&self, roster: &Roster) -> Result<(), RosterError> {
        if self.mesh != roster.mesh() {
            return Err(RosterError::WrongMesh);
        }
        self.by.verify(
            &Self::canonical(&self.id, &self.mesh, &self.by, self.at),
            &self.sig,
        )?;
        if !roster.role(&self.by).is_some_and(Role::is_admin) {
            return Err(RosterError::NotAuthorized {
                by: self.by.short(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (MemberSecret, MeshGenesis, Roster) {
        let owner = MemberSecret::generate();
        let g = MeshGenesis::sign(&owner, MeshId::new(), 1);
        let r = Roster::from_genesis(&g).unwrap();
        (owner, g, r)
    }

    #[test]
    fn an_admission_entry_must_match_the_claim_exactly() {
        let (owner, g, r) = setup();
        let claimant = MemberSecret::generate().public();
        let other = MemberSecret::generate().public();
        let cap = InviteCap::sign(
            &owner,
            InviteId::new(),
            g.mesh,
            Role::Member,
            1,
            99,
            false,
            1,
        );
        let entry = |member, role, op, invite| {
            RosterEntry::sign(&owner, &r.head(), g.mesh, member, role, op, 2, invite)
        };
        let admin = owner.public();
        let cases = [
            (
                "exact",
                entry(claimant, Role::Member, RosterOp::Add, Some(cap.id)),
                admin,
                true,
            ),
            (
                "another key",
                entry(other, Role::Member, RosterOp::Add, Some(cap.id)),
                admin,
                false,
            ),
            (
                "a higher role",
                entry(claimant, Role::Admin, RosterOp::Add, Some(cap.id)),
                admin,
                false,
            ),
            (
                "a removal",
                entry(claimant, Role::Member, RosterOp::Remove, Some(cap.id)),
                admin,
                false,
            ),
            (
                "no invite",
                entry(claimant, Role::Member, RosterOp::Add, None),
                admin,
                false,
            ),
            (
                "another invite",
                entry(claimant, Role::Member, RosterOp::Add, Some(InviteId::new())),
                admin,
                false,
            ),
            (
                "signed by someone else than the deciding admin",
                entry(claimant, Role::Member, RosterOp::Add, Some(cap.id)),
                other,
                false,
            ),
        ];
        for (what, e, by, want) in cases {
            assert_eq!(e.admits(&claimant, &cap, &by), want, "{what}");
        }
    }

    #[test]
    fn owner_adds_member_and_member_leaves() {
        let (owner, g, mut r) = setup();
        let m = MemberSecret::generate();
        let add = RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            m.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        );
        r.apply(&add).unwrap();
        assert_eq!(r.role(&m.public()), Some(Role::Member));
        let leave = RosterEntry::sign(
            &m,
            &r.head(),
            g.mesh,
            m.public(),
            Role::Member,
            RosterOp::Remove,
            3,
            None,
        );
        r.apply(&leave).unwrap();
        assert!(!r.is_member(&m.public()));
    }

    #[test]
    fn members_cannot_add_and_forgeries_fail() {
        let (owner, g, mut r) = setup();
        let m = MemberSecret::generate();
        r.apply(&RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            m.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        ))
        .unwrap();
        let x = MemberSecret::generate();
        let by_member = RosterEntry::sign(
            &m,
            &r.head(),
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            3,
            None,
        );
        assert!(matches!(
            r.apply(&by_member),
            Err(RosterError::NotAuthorized { .. })
        ));
        let mut forged = RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            3,
            None,
        );
        forged.role = Role::Admin;
        assert_eq!(r.apply(&forged), Err(RosterError::BadSignature));
        let other_mesh = RosterEntry::sign(
            &owner,
            &r.head(),
            MeshId::new(),
            x.public(),
            Role::Member,
            RosterOp::Add,
            3,
            None,
        );
        assert_eq!(r.apply(&other_mesh), Err(RosterError::WrongMesh));
    }

    #[test]
    fn history_answers_membership_after_any_number_of_entries() {
        let (owner, g, mut r) = setup();
        let (m, x) = (MemberSecret::generate(), MemberSecret::generate());
        let mut h = RosterHistory::new(g.owner);
        let entries = [
            (m.public(), Role::Member, RosterOp::Add),
            (m.public(), Role::Admin, RosterOp::Add),
            (m.public(), Role::Member, RosterOp::Remove),
            (m.public(), Role::Member, RosterOp::Add),
        ];
        for (i, (who, role, op)) in entries.into_iter().enumerate() {
            let e = RosterEntry::sign(&owner, &r.head(), g.mesh, who, role, op, i as i64, None);
            r.apply(&e).unwrap();
            h.push(i as u64, &e);
        }
        assert_eq!(h.len(), 4);
        let (mk, xk, ok) = (m.public(), x.public(), owner.public());
        let cases = [
            (mk, 0, None),
            (mk, 1, Some(Role::Member)),
            (mk, 2, Some(Role::Admin)),
            (mk, 3, None),
            (mk, 4, Some(Role::Member)),
            (mk, 99, Some(Role::Member)),
            (xk, 4, None),
            (ok, 0, Some(Role::Owner)),
        ];
        for (who, at, want) in cases {
            assert_eq!(h.role_at(&who, at), want, "after {at}");
        }
        assert_eq!(h.ever(&mk), Some(Role::Admin));
        assert_eq!(h.ever(&xk), None, "never admitted");
        assert_eq!(h.role_of(&mk, OpStanding::At(3)), None);
        assert_eq!(h.role_of(&mk, OpStanding::Unplaced), Some(Role::Admin));
    }

    #[test]
    fn an_op_stands_at_the_highest_claim_so_far_and_waits_for_entries_it_needs() {
        use OpStanding::*;
        // (floor, claim, known) -> standing and new floor, or the entries it needs.
        let cases = [
            ("nothing placed yet", None, None, 0, Ok((Unplaced, None))),
            ("a first claim", None, Some(2), 5, Ok((At(2), Some(2)))),
            (
                "a claim of the genesis",
                None,
                Some(0),
                0,
                Ok((At(0), Some(0))),
            ),
            ("a newer claim", Some(2), Some(4), 5, Ok((At(4), Some(4)))),
            (
                "an older claim stands at the floor",
                Some(4),
                Some(1),
                5,
                Ok((At(4), Some(4))),
            ),
            (
                "no claim stands at the floor",
                Some(3),
                None,
                5,
                Ok((At(3), Some(3))),
            ),
            (
                "a claim beyond the entries held",
                Some(1),
                Some(6),
                5,
                Err(6),
            ),
            (
                "a floor beyond them (from a snapshot)",
                Some(7),
                None,
                5,
                Err(7),
            ),
        ];
        for (what, floor, claim, known, want) in cases {
            assert_eq!(op_standing(floor, claim, known), want, "{what}");
        }
    }

    /// A chain: the owner adds `m` (admin), `x`, then removes `x`.
    fn chain() -> (MeshGenesis, Vec<RosterEntry>, MemberKey) {
        let (owner, g, mut r) = setup();
        let (m, x) = (MemberSecret::generate(), MemberSecret::generate());
        let mut out = Vec::new();
        for (who, role, op) in [
            (m.public(), Role::Admin, RosterOp::Add),
            (x.public(), Role::Member, RosterOp::Add),
            (x.public(), Role::Member, RosterOp::Remove),
        ] {
            let e = RosterEntry::sign(&owner, &r.head(), g.mesh, who, role, op, 5, None);
            r.apply(&e).unwrap();
            out.push(e);
        }
        (g, out, x.public())
    }

    #[test]
    fn entries_are_accepted_only_at_their_place_in_the_chain() {
        let (g, c, _) = chain();
        let held = |n: usize| Roster::from_log(&g, &c[..n]).unwrap();
        let mut forked = c[1].clone();
        forked.at += 1;
        // (held entries, position, entry) -> outcome
        type Case<'a> = (
            &'a str,
            usize,
            u64,
            RosterEntry,
            Result<Applied, RosterError>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("the next entry", 2, 2, c[2].clone(), Ok(Applied::New)),
            ("the first entry", 0, 0, c[0].clone(), Ok(Applied::New)),
            (
                "an entry held, resent",
                2,
                1,
                c[1].clone(),
                Ok(Applied::Known),
            ),
            (
                "a gap",
                1,
                2,
                c[2].clone(),
                Err(RosterError::Gap {
                    expected: 1,
                    got: 2,
                }),
            ),
            (
                "an old add replayed after the removal",
                3,
                3,
                c[1].clone(),
                Err(RosterError::WrongPlace { signed: 1, at: 3 }),
            ),
            (
                "an entry delivered at a later place",
                1,
                1,
                c[2].clone(),
                Err(RosterError::WrongPlace { signed: 2, at: 1 }),
            ),
            (
                "another entry at a place held",
                2,
                0,
                c[1].clone(),
                Err(RosterError::Fork { seq: 0 }),
            ),
            (
                "an altered entry at a place held",
                2,
                1,
                forked.clone(),
                Err(RosterError::Fork { seq: 1 }),
            ),
        ];
        for (what, n, seq, e, want) in cases {
            assert_eq!(held(n).check_at(seq, &e), want, "{what}");
        }
    }

    #[test]
    fn an_entry_from_another_history_or_without_a_place_is_refused_after_the_chain() {
        let owner = MemberSecret::generate();
        let g = MeshGenesis::sign(&owner, MeshId::new(), 1);
        let mut r = Roster::from_genesis(&g).unwrap();
        let (m, x) = (MemberSecret::generate(), MemberSecret::generate());
        let add = |r: &Roster, who: &MemberSecret, role| {
            RosterEntry::sign(
                &owner,
                &r.head(),
                g.mesh,
                who.public(),
                role,
                RosterOp::Add,
                2,
                None,
            )
        };
        let e0 = add(&r, &m, Role::Member);
        // Signed against the same head as e0: a concurrent admin's entry, or a fork.
        let rival = add(&r, &x, Role::Member);
        r.apply(&e0).unwrap();
        let after = r.head();
        assert_eq!(
            r.check_at(1, &rival),
            Err(RosterError::WrongPlace { signed: 0, at: 1 })
        );
        let wrong_prev = RosterEntry::sign(
            &owner,
            &RosterHead {
                len: 1,
                hash: [7; 32],
            },
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        );
        assert_eq!(
            r.check_at(1, &wrong_prev),
            Err(RosterError::WrongPredecessor { seq: 1 })
        );
        let unchained = RosterEntry::sign_unchained(
            &owner,
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        );
        assert_eq!(
            r.check_at(1, &unchained),
            Err(RosterError::Unchained { seq: 1 })
        );
        assert_eq!(
            Roster::from_genesis(&g).unwrap().check_next(&unchained),
            Err(RosterError::Unchained { seq: 0 }),
            "a relay stores only chained entries"
        );
        // A forged place: the signature covers it.
        let mut moved = add(&r, &x, Role::Member);
        moved.place = Some(RosterPlace {
            seq: 1,
            prev: after.hash,
        });
        moved.member = m.public();
        assert_eq!(r.check_at(1, &moved), Err(RosterError::BadSignature));
        // Authority still counts at the right place.
        let by_member = RosterEntry::sign(
            &m,
            &r.head(),
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        );
        assert!(matches!(
            r.check_at(1, &by_member),
            Err(RosterError::NotAuthorized { .. })
        ));
    }

    #[test]
    fn unchained_entries_are_a_prefix_applied_once_and_the_chain_continues_from_them() {
        let owner = MemberSecret::generate();
        let g = MeshGenesis::sign(&owner, MeshId::new(), 1);
        let m = MemberSecret::generate();
        let old = |role, op, at| {
            RosterEntry::sign_unchained(&owner, g.mesh, m.public(), role, op, at, None)
        };
        let (add, remove) = (
            old(Role::Admin, RosterOp::Add, 2),
            old(Role::Member, RosterOp::Remove, 3),
        );
        let mut r = Roster::from_log(&g, [&add, &remove]).unwrap();
        assert!(!r.is_member(&m.public()));
        // The old add again, after the removal: a replay.
        assert_eq!(r.check_at(2, &add), Err(RosterError::Replay { seq: 2 }));
        // New entries chain from the hash of the legacy prefix.
        let x = MemberSecret::generate();
        let next = RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            x.public(),
            Role::Member,
            RosterOp::Add,
            4,
            None,
        );
        assert_eq!(r.apply_at(2, &next), Ok(Applied::New));
        // A roster that folded the legacy prefix in another order is another history.
        let reordered = {
            let mut o = Roster::from_genesis(&g).unwrap();
            let readd = old(Role::Member, RosterOp::Add, 9);
            o.apply(&readd).unwrap();
            o.apply(&remove).unwrap();
            o
        };
        assert_eq!(
            reordered.check_at(2, &next),
            Err(RosterError::WrongPredecessor { seq: 2 })
        );
        assert_eq!(r.check_at(3, &add), Err(RosterError::Unchained { seq: 3 }));
    }

    proptest::proptest! {
        /// Whatever a relay does with a valid chain (reorder, repeat, drop, misplace), a
        /// daemon ends up with a prefix of it: the same entries, hashes and members.
        #[test]
        fn any_delivery_of_a_chain_yields_a_prefix_of_it(
            deliveries in proptest::collection::vec((0usize..3, 0u64..5, proptest::bool::ANY), 0..12)
        ) {
            let (g, c, _) = chain();
            let full = Roster::from_log(&g, &c).unwrap();
            let mut r = Roster::from_genesis(&g).unwrap();
            for (i, seq, at_own) in deliveries {
                let seq = if at_own { i as u64 } else { seq };
                let before = r.head();
                match r.apply_at(seq, &c[i]) {
                    Ok(Applied::New) => proptest::prop_assert_eq!(seq, i as u64),
                    Ok(Applied::Known) => proptest::prop_assert_eq!(r.head(), before),
                    Err(_) => proptest::prop_assert_eq!(r.head(), before),
                }
            }
            let n = r.len();
            proptest::prop_assert_eq!(r.head().hash, full.hash_after(n).unwrap());
            let want = Roster::from_log(&g, &c[..n as usize]).unwrap();
            let members = |x: &Roster| x.members().map(|(k, r)| (*k, *r)).collect::<Vec<_>>();
            proptest::prop_assert_eq!(members(&r), members(&want));
        }
    }

    #[test]
    fn owner_cannot_be_removed() {
        let (owner, g, r) = setup();
        let e = RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            owner.public(),
            Role::Owner,
            RosterOp::Remove,
            2,
            None,
        );
        assert_eq!(r.check(&e), Err(RosterError::Owner));
    }

    #[test]
    fn invite_caps_need_an_admin() {
        let (owner, g, mut r) = setup();
        let cap = InviteCap::sign(
            &owner,
            InviteId::new(),
            g.mesh,
            Role::Member,
            1,
            10,
            false,
            1,
        );
        cap.verify(&r).unwrap();
        let m = MemberSecret::generate();
        r.apply(&RosterEntry::sign(
            &owner,
            &r.head(),
            g.mesh,
            m.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        ))
        .unwrap();
        let by_member = InviteCap::sign(&m, InviteId::new(), g.mesh, Role::Member, 1, 10, false, 1);
        assert!(by_member.verify(&r).is_err());
        let rev = InviteRevocation::sign(&owner, cap.id, g.mesh, 5);
        rev.verify(&r).unwrap();
    }
}
