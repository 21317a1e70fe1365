//! Invite links and claim proofs.
//!
//! An invite link names the relay, pins its certificate, and carries a 16-byte invite
//! secret `s = derive(mesh_key, invite_id)`. It holds no key that decrypts anything: with
//! `s` a claimant can only *ask* to join. The claim proves knowledge of `s` with a MAC that
//! binds the claimant's fresh keys, so a relay in the middle cannot swap in its own key; an
//! admin's daemon (which can re-derive `s` from the mesh key) checks the proof, seals the
//! mesh key to the claimant's key, and MACs its answer with `s` so the claimant knows the
//! answer came from a member and not from the relay.
//!
//! The link also commits to the mesh: `g = genesis_hash(genesis)`. The claimant accepts an
//! answer only if the mesh key it receives derives `s` and the genesis it receives hashes to
//! `g` ([`check_admission`]): someone who holds the link (the relay operator it was sent
//! through, say) knows `s` and can MAC an answer, but cannot make a mesh key that derives
//! `s`, nor a genesis that hashes to `g`, so it cannot hand the claimant a mesh of its own.
//!
//! Link format: `claudemesh://join/<relay host:port>/<cert sha256, base64url>/<code>` where
//! `code` is base64url of `invite_id (16 bytes) || s (16 bytes) || g (16 bytes)`. Links made
//! before the genesis hash (a 32-byte code) still parse, with `genesis: None`; they are
//! accepted only when the admin's sealed answer names the genesis itself.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::crypto::{BoxPublic, MemberKey, MeshKey, ct_eq, mac};
use crate::encoding::{self, b64, unb64, unb64_array};
use crate::ids::{ClaimId, InviteId, MeshId};
use crate::roster::MeshGenesis;

/// The scheme and path prefix of invite links.
pub const LINK_PREFIX: &str = "claudemesh://join/";

/// A parsed invite link.
#[derive(Clone, PartialEq, Eq)]
pub struct InviteLink {
    /// Relay address, `host:port` (QUIC on UDP, TLS/WebSocket on TCP, same port).
    pub relay: String,
    /// SHA-256 of the relay certificate (DER).
    pub fingerprint: [u8; 32],
    /// The invite.
    pub invite: InviteId,
    /// The invite secret.
    pub secret: [u8; 16],
    /// [`genesis_hash`] of the mesh's genesis (`None` in links made before it existed).
    pub genesis: Option<[u8; 16]>,
}

impl fmt::Debug for InviteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("InviteLink")
            .field("relay", &self.relay)
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

/// Why an invite link did not parse.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InviteParseError {
    /// Wrong shape.
    #[error(
        "not a claudemesh invite (expected claudemesh://join/<relay>/<fingerprint>/<code>); \
         ask the inviter to run `claudemesh invite` again and copy the whole link"
    )]
    Shape,
    /// The fingerprint is not 32 bytes of base64url.
    #[error("the relay fingerprint in the invite is damaged; copy the whole link again")]
    Fingerprint,
    /// The code is not 48 (or, in older links, 32) bytes of base64url.
    #[error("the invite code is damaged; copy the whole link again")]
    Code,
}

/// Most node addresses one relay address may list.
pub const MAX_RELAY_NODES: usize = 8;

/// Whether `addr` is a relay address as links and meshes carry it: `host:port` with a
/// non-empty host, a port from 1, and nothing that would break a link or a terminal line
/// (no `/`, whitespace or control characters; at most 255 bytes). A relay of several
/// nodes (sharing one cluster and one certificate) is a comma-separated list of them,
/// at most [`MAX_RELAY_NODES`]; daemons fail over from one to the next.
pub fn relay_addr_ok(addr: &str) -> bool {
    let nodes: Vec<&str> = addr.split(',').collect();
    addr.len() <= 255
        && nodes.len() <= MAX_RELAY_NODES
        && !addr
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        && nodes.iter().all(|n| {
            n.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            })
        })
}

/// The node addresses of a relay address, in order (one for a single relay).
pub fn relay_nodes(addr: &str) -> Vec<&str> {
    addr.split(',').filter(|n| !n.is_empty()).collect()
}

impl InviteLink {
    /// Render as a link.
    pub fn to_link(&self) -> String {
        let mut code = Vec::with_capacity(48);
        code.extend_from_slice(self.invite.as_bytes());
        code.extend_from_slice(&self.secret);
        if let Some(g) = &self.genesis {
            code.extend_from_slice(g);
        }
        format!(
            "{LINK_PREFIX}{}/{}/{}",
            self.relay,
            b64(&self.fingerprint),
            b64(&code)
        )
    }

    /// Parse a link (surrounding whitespace and a missing scheme are tolerated).
    pub fn parse(s: &str) -> Result<Self, InviteParseError> {
        let s = s.trim();
        let rest = s
            .strip_prefix(LINK_PREFIX)
            .or_else(|| s.strip_prefix("join/"))
            .unwrap_or(s);
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let [relay, fp, code] = parts.as_slice() else {
            return Err(InviteParseError::Shape);
        };
        let port_ok = relay
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || !relay_addr_ok(relay) || (s.contains("://") && !s.starts_with(LINK_PREFIX)) {
            return Err(InviteParseError::Shape);
        }
        let fingerprint = unb64_array::<32>(fp).ok_or(InviteParseError::Fingerprint)?;
        let code = unb64(code).map_err(|_| InviteParseError::Code)?;
        if code.len() != 32 && code.len() != 48 {
            return Err(InviteParseError::Code);
        }
        let invite = InviteId::from_slice(&code[..16]).ok_or(InviteParseError::Code)?;
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&code[16..32]);
        let genesis = (code.len() == 48).then(|| {
            let mut g = [0u8; 16];
            g.copy_from_slice(&code[32..]);
            g
        });
        Ok(Self {
            relay: relay.to_string(),
            fingerprint,
            invite,
            secret,
            genesis,
        })
    }
}

/// The invite secret of `invite` in the mesh with `key`.
pub fn invite_secret(key: &MeshKey, invite: &InviteId) -> [u8; 16] {
    let full = key.derive("claudemesh 2026 invite secret v1", invite.as_bytes());
    let mut s = [0u8; 16];
    s.copy_from_slice(&full[..16]);
    s
}

/// A 16-byte commitment to one exact genesis (its signed bytes and signature), carried in
/// invite links and in the sealed answer to a claim.
pub fn genesis_hash(genesis: &MeshGenesis) -> [u8; 16] {
    let full = blake3::derive_key("claudemesh 2026 genesis hash v1", &genesis.commitment());
    let mut g = [0u8; 16];
    g.copy_from_slice(&full[..16]);
    g
}

/// Why a claimant refuses an admin's answer although its MAC checks out (a MAC only shows
/// that the answer was made by someone holding the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionRefusal {
    /// The mesh key received does not derive the link's secret: not the invite's mesh.
    #[error(
        "the mesh key in the answer is not the one the invite was made with: someone holding \
         the link (the relay?) answered with a mesh of its own; nothing was joined. Ask the \
         inviter to check their relay, or for a new invite over another relay"
    )]
    WrongKey,
    /// The genesis received is not the one the link (or the sealed answer) names.
    #[error(
        "the mesh in the answer is not the one the invite names (its genesis differs): the \
         relay may be tampering; nothing was joined. Ask the inviter for a new invite"
    )]
    WrongGenesis,
    /// An old link and an old admin: nothing says which genesis is the right one.
    #[error(
        "this invite link was made by an older claudemesh and does not say which mesh it is \
         for, so the answer cannot be checked; nothing was joined. Ask the inviter for a new \
         invite (`claudemesh invite`)"
    )]
    Unbound,
}

/// The claimant's check of what an admin sealed to it against what the link commits to:
/// the mesh key must derive the link's secret (only a member can seal that key: the relay
/// never holds it), the sealed mesh id must be the genesis's, and the genesis must hash to
/// the link's genesis hash and to the one in the sealed answer, whichever are present; at
/// least one must be.
pub fn check_admission(
    link: &InviteLink,
    sealed: &JoinSecret,
    genesis: &MeshGenesis,
) -> Result<(), AdmissionRefusal> {
    let key = MeshKey::from_bytes(sealed.mesh_key);
    if !ct_eq(&invite_secret(&key, &link.invite), &link.secret) {
        return Err(AdmissionRefusal::WrongKey);
    }
    if sealed.mesh != genesis.mesh {
        return Err(AdmissionRefusal::WrongGenesis);
    }
    let g = genesis_hash(genesis);
    let named: Vec<&[u8; 16]> = [link.genesis.as_ref(), sealed.genesis.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    if named.is_empty() {
        return Err(AdmissionRefusal::Unbound);
    }
    if named.iter().any(|n| !ct_eq(*n, &g)) {
        return Err(AdmissionRefusal::WrongGenesis);
    }
    Ok(())
}

fn proof_key(secret: &[u8; 16]) -> [u8; 32] {
    blake3::derive_key("claudemesh 2026 invite proof v1", secret)
}

/// The claimant's proof: MAC over the invite, the claimant's two new public keys and the
/// claim time (admins refuse stale claims, so a recorded claim cannot be replayed later).
pub fn claim_proof(
    secret: &[u8; 16],
    invite: &InviteId,
    member: &MemberKey,
    box_key: &BoxPublic,
    at: i64,
) -> [u8; 32] {
    mac(
        &proof_key(secret),
        "claim",
        &[invite.as_bytes(), &member.0, &box_key.0, &at.to_be_bytes()],
    )
}

/// The admin's MAC over its acceptance: the claim, the sealed join secret, and commitments
/// to the exact roster entry and mesh genesis, so a relay can change none of them.
pub fn accept_mac(
    secret: &[u8; 16],
    claim: &ClaimId,
    sealed: &[u8],
    entry: &[u8],
    genesis: &[u8],
) -> [u8; 32] {
    mac(
        &proof_key(secret),
        "accept",
        &[claim.as_bytes(), sealed, entry, genesis],
    )
}

/// How long a claim may wait at a relay for an admin, at most, ms: a relay's
/// `claim_ttl_secs` is capped by it, and admins refuse claims made longer ago.
pub const CLAIM_TTL_MAX_MS: i64 = 7 * 24 * 3600 * 1000;

/// How far claimant's and admin's clocks may differ, ms: a claim from further in the
/// future, or older than [`CLAIM_TTL_MAX_MS`] by more than this, is refused.
pub const CLAIM_SKEW_MS: i64 = 65 * 60 * 1000;

/// The claimant's words to the admins, sealed in [`crate::wire::ClaimRequest::note`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimNote {
    /// The display name the claimant will use (held to the name rules where shown).
    pub name: String,
}

fn note_key(secret: &[u8; 16]) -> MeshKey {
    MeshKey::from_bytes(blake3::derive_key("claudemesh 2026 claim note v1", secret))
}

fn note_ad(
    invite: &InviteId,
    member: &MemberKey,
    box_key: &BoxPublic,
    at: i64,
) -> crate::crypto::Canonical {
    crate::crypto::Canonical::new("claudemesh/claim-note/v1")
        .fixed(invite.as_bytes())
        .fixed(&member.0)
        .fixed(&box_key.0)
        .i64(at)
}

/// Seal `note` for whoever holds the invite secret (the mesh's admins derive it from the
/// mesh key; the relay never learns it), bound to the claim's invite, keys and time so a
/// relay cannot move it to another claim.
pub fn seal_claim_note(
    secret: &[u8; 16],
    invite: &InviteId,
    member: &MemberKey,
    box_key: &BoxPublic,
    at: i64,
    note: &ClaimNote,
) -> Vec<u8> {
    let json = serde_json::to_vec(note).unwrap_or_default();
    note_key(secret)
        .seal(&note_ad(invite, member, box_key, at).into_bytes(), &json)
        .unwrap_or_default()
}

/// Open a claim's note; `None` when it has none, or it was not sealed for this request
/// with the invite's secret.
pub fn open_claim_note(
    secret: &[u8; 16],
    request: &crate::wire::ClaimRequest,
) -> Option<ClaimNote> {
    if request.note.is_empty() {
        return None;
    }
    let ad = note_ad(
        &request.invite,
        &request.member,
        &request.box_key,
        request.at,
    );
    let plain = note_key(secret)
        .open(&ad.into_bytes(), &request.note)
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// Why an admin's daemon refuses a claim (the text is shown to the claimant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// The proof does not match the invite's secret: a wrong code, or a guess.
    WrongCode,
    /// The claim was made longer ago than a claim may wait ([`CLAIM_TTL_MAX_MS`]), or in
    /// the future (beyond [`CLAIM_SKEW_MS`]).
    TooOld,
    /// The claimant's key was a member of the mesh before: a claim always brings a fresh
    /// key, so this is an old claim played again (by a relay, say) to re-admit a key that
    /// was removed or that left.
    KeyKnown,
    /// The capability the relay supplied is for another invite.
    Mismatch,
    /// The capability is not signed by an admin of the mesh.
    NotByAnAdmin,
    /// The capability expired.
    Expired,
    /// The capability was revoked.
    Revoked,
}

impl fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrongCode => "the invite code is wrong",
            Self::TooOld => "the claim is too old; run `claudemesh join` again",
            Self::KeyKnown => {
                "the claim's key was a member before; run `claudemesh join` again for a fresh key"
            }
            Self::Mismatch => "the claim does not match the invite",
            Self::NotByAnAdmin => "the invite is not signed by an admin of this mesh",
            Self::Expired => "the invite has expired",
            Self::Revoked => "the invite was revoked",
        })
    }
}

/// An admin's check of a claim, in this order: the proof (which only a holder of the
/// invite secret can make: the relay does not know it), its freshness, then the
/// capability the relay supplied — that it is this invite's, signed by an admin of
/// `roster` (which is what makes its role and approval mode trustworthy), unexpired and
/// not `revoked` as far as this admin knows.
pub fn check_claim(
    mesh_key: &MeshKey,
    roster: &crate::roster::Roster,
    history: &crate::roster::RosterHistory,
    request: &crate::wire::ClaimRequest,
    cap: &crate::roster::InviteCap,
    revoked: bool,
    now: i64,
) -> Result<(), ClaimRefusal> {
    let secret = invite_secret(mesh_key, &request.invite);
    let expected = claim_proof(
        &secret,
        &request.invite,
        &request.member,
        &request.box_key,
        request.at,
    );
    if !ct_eq(&expected, &request.proof) {
        return Err(ClaimRefusal::WrongCode);
    }
    // A claim may wait at the relay while no admin is online, so it may be days old; a
    // replay of an old claim is what the key check below refuses.
    if request.at > now + CLAIM_SKEW_MS || request.at < now - CLAIM_TTL_MAX_MS - CLAIM_SKEW_MS {
        return Err(ClaimRefusal::TooOld);
    }
    if history.ever(&request.member).is_some() || roster.is_member(&request.member) {
        return Err(ClaimRefusal::KeyKnown);
    }
    if cap.id != request.invite {
        return Err(ClaimRefusal::Mismatch);
    }
    if cap.verify(roster).is_err() {
        return Err(ClaimRefusal::NotByAnAdmin);
    }
    if now > cap.expires_at {
        return Err(ClaimRefusal::Expired);
    }
    if revoked {
        return Err(ClaimRefusal::Revoked);
    }
    Ok(())
}

/// What an admin seals to an admitted claimant.
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinSecret {
    /// The mesh.
    pub mesh: MeshId,
    /// The mesh key.
    #[serde(with = "encoding::array")]
    pub mesh_key: [u8; 32],
    /// The mesh's display name.
    pub name: String,
    /// Display name of the admin who admitted the claimant.
    pub admitted_by: String,
    /// [`genesis_hash`] of the mesh's genesis (absent from answers of older admins), so an
    /// answer to a link made without one still names its mesh.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt16")]
    pub genesis: Option<[u8; 16]>,
    /// The keys of the mesh's later key epochs (see [`crate::epoch`]), so the new member
    /// reads what was sealed before it joined; epochs made after it joined come boxed to
    /// its member key. `mesh_key` stays the epoch-0 key (invite secrets derive from it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<JoinEpoch>,
}

/// One later epoch's key in a [`JoinSecret`].
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinEpoch {
    /// The epoch.
    pub epoch: crate::epoch::Epoch,
    /// Its key.
    #[serde(with = "encoding::array")]
    pub key: [u8; 32],
}

impl fmt::Debug for JoinEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinEpoch")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

mod opt16 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<[u8; 16]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => crate::encoding::array::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 16]>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            crate::encoding::unb64_array::<16>(&s)
                .ok_or_else(|| serde::de::Error::custom("expected 16 bytes of base64url"))
        })
        .transpose()
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSecret")
            .field("mesh", &self.mesh)
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn relay_addresses_name_one_node_or_a_list_of_them() {
        let ok = [
            "relay.example:7900",
            "127.0.0.1:1",
            "[::1]:7900",
            "a:1,b:2,c:3",
            "a:1,a:1",
        ];
        for a in ok {
            assert!(relay_addr_ok(a), "{a}");
        }
        let bad = [
            "",
            "host",
            ":7900",
            "host:0",
            "host:70000",
            "a:1,",
            ",a:1",
            "a:1,,b:2",
            "a:1, b:2",
            "a:1,b",
            "a/b:1",
            "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9",
        ];
        for a in bad {
            assert!(!relay_addr_ok(a), "{a}");
        }
        assert_eq!(relay_nodes("a:1,b:2"), vec!["a:1", "b:2"]);
        assert_eq!(relay_nodes("a:1"), vec!["a:1"]);
    }

    use super::*;
    use crate::crypto::{BoxSecret, MemberSecret};
    use crate::roster::MeshGenesis;

    #[test]
    fn claims_are_checked_proof_first_then_freshness_then_the_capability() {
        use crate::roster::{
            InviteCap, MeshGenesis, Role, Roster, RosterEntry, RosterHistory, RosterOp,
        };
        use crate::wire::ClaimRequest;
        let owner = MemberSecret::generate();
        let stranger = MemberSecret::generate();
        let mesh = MeshId::new();
        let key = MeshKey::generate();
        let now = 10_000_000_000;
        let roster = Roster::from_genesis(&MeshGenesis::sign(&owner, mesh, now - 1000)).unwrap();
        let invite = InviteId::new();
        let cap = |by: &MemberSecret, id: InviteId, expires: i64| {
            InviteCap::sign(by, id, mesh, Role::Member, 1, expires, false, now - 10)
        };
        let claimant = MemberSecret::generate().public();
        let box_key = BoxSecret::generate().public();
        let request = |secret: [u8; 16], at: i64| ClaimRequest {
            invite,
            member: claimant,
            box_key,
            at,
            proof: claim_proof(&secret, &invite, &claimant, &box_key, at),
            note: Vec::new(),
            durable: true,
        };
        let right = invite_secret(&key, &invite);
        let good = cap(&owner, invite, now + 60_000);
        let old = now - CLAIM_TTL_MAX_MS - CLAIM_SKEW_MS - 1;
        // Made while no admin was online, days ago: still answered.
        let days = now - 6 * 24 * 3600 * 1000;
        let future = now + CLAIM_SKEW_MS + 1;
        // The claimant's key was admitted once (and then removed): a replayed claim.
        let mut seen = RosterHistory::new(owner.public());
        let mut known = Roster::from_genesis(&MeshGenesis::sign(&owner, mesh, now - 1000)).unwrap();
        for op in [RosterOp::Add, RosterOp::Remove] {
            let e = RosterEntry::sign(
                &owner,
                &known.head(),
                mesh,
                claimant,
                Role::Member,
                op,
                now - 500,
                Some(invite),
            );
            seen.push(known.len(), &e);
            known.apply(&e).unwrap();
        }

        type Case = (
            &'static str,
            ClaimRequest,
            InviteCap,
            bool,
            Result<(), ClaimRefusal>,
        );
        let cases: Vec<Case> = vec![
            ("valid", request(right, now), good.clone(), false, Ok(())),
            (
                "waited days",
                request(right, days),
                good.clone(),
                false,
                Ok(()),
            ),
            (
                "from the future",
                request(right, future),
                good.clone(),
                false,
                Err(ClaimRefusal::TooOld),
            ),
            (
                "wrong code",
                request([0; 16], now),
                good.clone(),
                false,
                Err(ClaimRefusal::WrongCode),
            ),
            (
                "wrong code beats age",
                request([0; 16], old),
                good.clone(),
                false,
                Err(ClaimRefusal::WrongCode),
            ),
            (
                "too old",
                request(right, old),
                good.clone(),
                false,
                Err(ClaimRefusal::TooOld),
            ),
            (
                "another invite's cap",
                request(right, now),
                cap(&owner, InviteId::new(), now + 60_000),
                false,
                Err(ClaimRefusal::Mismatch),
            ),
            (
                "cap by a non-admin",
                request(right, now),
                cap(&stranger, invite, now + 60_000),
                false,
                Err(ClaimRefusal::NotByAnAdmin),
            ),
            (
                "expired",
                request(right, now),
                cap(&owner, invite, now - 1),
                false,
                Err(ClaimRefusal::Expired),
            ),
            (
                "revoked",
                request(right, now),
                good.clone(),
                true,
                Err(ClaimRefusal::Revoked),
            ),
        ];
        let empty = RosterHistory::new(owner.public());
        for (what, req, c, revoked, want) in cases {
            assert_eq!(
                check_claim(&key, &roster, &empty, &req, &c, revoked, now),
                want,
                "{what}"
            );
        }
        assert_eq!(
            check_claim(&key, &known, &seen, &request(right, now), &good, false, now),
            Err(ClaimRefusal::KeyKnown),
            "a claim of a key admitted once and removed since"
        );
    }

    #[test]
    fn a_claim_note_opens_only_with_the_invite_secret_and_for_its_own_request() {
        let (invite, secret) = (InviteId::new(), [5u8; 16]);
        let (member, box_key) = (
            MemberSecret::generate().public(),
            BoxSecret::generate().public(),
        );
        let note = ClaimNote { name: "ben".into() };
        let mut req = crate::wire::ClaimRequest {
            invite,
            member,
            box_key,
            at: 7,
            proof: [0; 32],
            note: seal_claim_note(&secret, &invite, &member, &box_key, 7, &note),
            durable: true,
        };
        assert_eq!(open_claim_note(&secret, &req), Some(note));
        assert_eq!(open_claim_note(&[6u8; 16], &req), None, "another secret");
        req.member = MemberSecret::generate().public();
        assert_eq!(
            open_claim_note(&secret, &req),
            None,
            "moved to another claim"
        );
        req.note.clear();
        assert_eq!(open_claim_note(&secret, &req), None);
    }

    #[test]
    fn link_round_trip_and_debug_hides_secret() {
        for genesis in [Some([3u8; 16]), None] {
            let l = InviteLink {
                relay: "127.0.0.1:7900".into(),
                fingerprint: [7u8; 32],
                invite: InviteId::new(),
                secret: [9u8; 16],
                genesis,
            };
            let s = l.to_link();
            assert!(s.starts_with("claudemesh://join/127.0.0.1:7900/"));
            assert_eq!(InviteLink::parse(&s).unwrap(), l);
            assert_eq!(InviteLink::parse(&format!("  {s}\n")).unwrap(), l);
            let dbg = format!("{l:?}");
            assert!(!dbg.contains(&b64(&l.secret)));
        }
    }

    /// A mesh, an invite link to it as its admin makes it, and the join secret sealed.
    fn admission() -> (InviteLink, JoinSecret, MeshGenesis) {
        let key = MeshKey::generate();
        let genesis = MeshGenesis::sign(&MemberSecret::generate(), MeshId::new(), 1_000);
        let invite = InviteId::new();
        let link = InviteLink {
            relay: "h:1".into(),
            fingerprint: [1; 32],
            invite,
            secret: invite_secret(&key, &invite),
            genesis: Some(genesis_hash(&genesis)),
        };
        let js = JoinSecret {
            mesh: genesis.mesh,
            mesh_key: *key.as_bytes(),
            name: "m".into(),
            admitted_by: "a".into(),
            genesis: Some(genesis_hash(&genesis)),
            epochs: Vec::new(),
        };
        (link, js, genesis)
    }

    #[test]
    fn an_admission_must_match_the_key_and_genesis_the_link_commits_to() {
        let (link, js, genesis) = admission();
        let (_, other_js, other_genesis) = admission();
        let with = |f: &dyn Fn(&mut InviteLink, &mut JoinSecret, &mut MeshGenesis)| {
            let (mut l, mut j, mut g) = (link.clone(), js.clone(), genesis.clone());
            f(&mut l, &mut j, &mut g);
            check_admission(&l, &j, &g)
        };
        use AdmissionRefusal::*;
        type Case<'a> = (
            &'static str,
            Box<dyn Fn(&mut InviteLink, &mut JoinSecret, &mut MeshGenesis) + 'a>,
            Result<(), AdmissionRefusal>,
        );
        let cases: Vec<Case<'_>> = vec![
            ("as made", Box::new(|_, _, _| {}), Ok(())),
            (
                "an old link, a new admin",
                Box::new(|l, _, _| l.genesis = None),
                Ok(()),
            ),
            (
                "a new link, an old admin",
                Box::new(|_, j, _| j.genesis = None),
                Ok(()),
            ),
            (
                "an old link, an old admin",
                Box::new(|l, j, _| {
                    l.genesis = None;
                    j.genesis = None;
                }),
                Err(Unbound),
            ),
            (
                "a mesh of its own (key, id and genesis)",
                Box::new(|_, j, g| {
                    *j = other_js.clone();
                    *g = other_genesis.clone();
                }),
                Err(WrongKey),
            ),
            (
                "another key, the right genesis",
                Box::new(|_, j, _| j.mesh_key = other_js.mesh_key),
                Err(WrongKey),
            ),
            (
                "the right key, another owner's genesis of the same mesh",
                Box::new(|_, _, g| {
                    *g = MeshGenesis::sign(&MemberSecret::generate(), g.mesh, g.created_at)
                }),
                Err(WrongGenesis),
            ),
            (
                "... also with an old link (the sealed hash catches it)",
                Box::new(|l, _, g| {
                    l.genesis = None;
                    *g = MeshGenesis::sign(&MemberSecret::generate(), g.mesh, g.created_at);
                }),
                Err(WrongGenesis),
            ),
            (
                "... also with an old admin (the link catches it)",
                Box::new(|_, j, g| {
                    j.genesis = None;
                    *g = MeshGenesis::sign(&MemberSecret::generate(), g.mesh, g.created_at);
                }),
                Err(WrongGenesis),
            ),
            (
                "the sealed mesh id is not the genesis's",
                Box::new(|_, j, _| j.mesh = MeshId::new()),
                Err(WrongGenesis),
            ),
            (
                "the sealed genesis hash disagrees with the link",
                Box::new(|_, j, _| j.genesis = Some([0; 16])),
                Err(WrongGenesis),
            ),
        ];
        for (what, f, want) in cases {
            assert_eq!(with(&*f), want, "{what}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_flipped_byte_of_key_secret_or_genesis_fails_the_admission(
            part in 0..8usize,
            at in 0..200usize,
            bit in 0..8u32,
        ) {
            let (mut link, mut js, mut genesis) = admission();
            let flip = |b: &mut [u8]| {
                let i = at % b.len();
                b[i] ^= 1 << bit;
            };
            match part {
                0 => flip(&mut js.mesh_key),
                1 => flip(&mut link.secret),
                2 => flip(link.genesis.as_mut().unwrap()),
                3 => flip(js.genesis.as_mut().unwrap()),
                // Any byte of the signed genesis: owner, signature, time, mesh id.
                4 => flip(&mut genesis.owner.0),
                5 => flip(&mut genesis.sig.0),
                6 => {
                    let mut t = genesis.created_at.to_be_bytes();
                    flip(&mut t);
                    genesis.created_at = i64::from_be_bytes(t);
                }
                _ => {
                    let mut m = *genesis.mesh.as_bytes();
                    flip(&mut m);
                    genesis.mesh = MeshId(uuid::Uuid::from_bytes(m));
                }
            }
            proptest::prop_assert!(check_admission(&link, &js, &genesis).is_err());
        }
    }

    #[test]
    fn bad_links_are_refused() {
        assert_eq!(
            InviteLink::parse("https://example.com"),
            Err(InviteParseError::Shape)
        );
        assert_eq!(
            InviteLink::parse("claudemesh://join/h:1/short/xxx"),
            Err(InviteParseError::Fingerprint)
        );
        let fp = b64(&[1u8; 32]);
        assert_eq!(
            InviteLink::parse(&format!("claudemesh://join/h:1/{fp}/AAAA")),
            Err(InviteParseError::Code)
        );
    }

    #[test]
    fn proof_binds_claimant_keys() {
        let key = MeshKey::generate();
        let inv = InviteId::new();
        let s = invite_secret(&key, &inv);
        let m = MemberSecret::generate().public();
        let b = BoxSecret::generate().public();
        let p = claim_proof(&s, &inv, &m, &b, 5);
        assert_eq!(p, claim_proof(&invite_secret(&key, &inv), &inv, &m, &b, 5));
        assert_ne!(
            p,
            claim_proof(&s, &inv, &m, &BoxSecret::generate().public(), 5)
        );
        assert_ne!(
            p,
            claim_proof(&s, &inv, &m, &b, 6),
            "the claim time is covered"
        );
        assert_ne!(s, invite_secret(&key, &InviteId::new()));
    }
}
