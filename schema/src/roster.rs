//! Membership: who may connect to a mesh and who may change that.
//!
//! A mesh begins with a [`MeshGenesis`] signed by its owner. Every later change is a
//! [`RosterEntry`] signed by an admin (or, for leaving, by the member itself). The relay
//! checks each entry before accepting it and hands the whole list to every daemon on
//! connect; daemons re-check it, so a relay cannot add members on its own. [`Roster`] is
//! the fold of genesis plus entries, in relay order.
//!
//! Invites are [`InviteCap`]s: signed by an admin, stored at the relay so it can count uses
//! and refuse expired or revoked ones, but carrying no secret (see [`crate::invite`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::crypto::{Canonical, CryptoError, MemberKey, MemberSecret, Signature};
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
    ) -> Vec<u8> {
        Canonical::new("claudemesh/roster/v1")
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
            )
            .into_bytes()
    }

    /// Create and sign an entry.
    pub fn sign(
        signer: &MemberSecret,
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
        ));
        Self {
            mesh,
            member,
            role,
            op,
            by,
            at,
            invite,
            sig,
        }
    }

    /// The signed bytes followed by the signature: a commitment to this exact entry.
    pub fn commitment(&self) -> Vec<u8> {
        let mut v = Self::canonical(
            &self.mesh,
            &self.member,
            self.role,
            self.op,
            &self.by,
            self.at,
            self.invite.as_ref(),
        );
        v.extend_from_slice(&self.sig.0);
        v
    }

    /// Check the signature (not the authority: see [`Roster::apply`]).
    pub fn verify_sig(&self) -> Result<(), RosterError> {
        let c = Self::canonical(
            &self.mesh,
            &self.member,
            self.role,
            self.op,
            &self.by,
            self.at,
            self.invite.as_ref(),
        );
        self.by.verify(&c, &self.sig)?;
        Ok(())
    }
}

/// Current membership of one mesh: the fold of its genesis and entries.
#[derive(Debug, Clone)]
pub struct Roster {
    mesh: MeshId,
    owner: MemberKey,
    members: BTreeMap<MemberKey, Role>,
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
        })
    }

    /// Fold a genesis and entries, stopping at the first invalid entry.
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

    /// Check `e` (signature and authority) without applying it.
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

    /// Check and apply `e`.
    pub fn apply(&mut self, e: &RosterEntry) -> Result<(), RosterError> {
        self.check(e)?;
        match e.op {
            RosterOp::Add => {
                self.members.insert(e.member, e.role);
            }
            RosterOp::Remove => {
                self.members.remove(&e.member);
            }
        }
        Ok(())
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
        let (owner, g, _) = setup();
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
            RosterEntry::sign(&owner, g.mesh, member, role, op, 2, invite)
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
            g.mesh,
            m.public(),
            Role::Member,
            RosterOp::Add,
            2,
            None,
        ))
        .unwrap();
        let x = MemberSecret::generate();
        let by_member =
            RosterEntry::sign(&m, g.mesh, x.public(), Role::Member, RosterOp::Add, 3, None);
        assert!(matches!(
            r.apply(&by_member),
            Err(RosterError::NotAuthorized { .. })
        ));
        let mut forged = RosterEntry::sign(
            &owner,
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
            let e = RosterEntry::sign(&owner, g.mesh, who, role, op, i as i64, None);
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

    #[test]
    fn owner_cannot_be_removed() {
        let (owner, g, r) = setup();
        let e = RosterEntry::sign(
            &owner,
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
