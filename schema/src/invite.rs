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
//! Link format: `claudemesh://join/<relay host:port>/<cert sha256, base64url>/<code>` where
//! `code` is base64url of `invite_id (16 bytes) || s (16 bytes)`.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::crypto::{BoxPublic, MemberKey, MeshKey, mac};
use crate::encoding::{self, b64, unb64, unb64_array};
use crate::ids::{ClaimId, InviteId, MeshId};

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
    /// The code is not 32 bytes of base64url.
    #[error("the invite code is damaged; copy the whole link again")]
    Code,
}

impl InviteLink {
    /// Render as a link.
    pub fn to_link(&self) -> String {
        let mut code = Vec::with_capacity(32);
        code.extend_from_slice(self.invite.as_bytes());
        code.extend_from_slice(&self.secret);
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
        if !port_ok || (s.contains("://") && !s.starts_with(LINK_PREFIX)) {
            return Err(InviteParseError::Shape);
        }
        let fingerprint = unb64_array::<32>(fp).ok_or(InviteParseError::Fingerprint)?;
        let code = unb64(code).map_err(|_| InviteParseError::Code)?;
        if code.len() != 32 {
            return Err(InviteParseError::Code);
        }
        let invite = InviteId::from_slice(&code[..16]).ok_or(InviteParseError::Code)?;
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&code[16..]);
        Ok(Self {
            relay: relay.to_string(),
            fingerprint,
            invite,
            secret,
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

/// How old (or how far in the future) a claim may be when an admin answers it, ms.
pub const CLAIM_WINDOW_MS: i64 = 65 * 60 * 1000;

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
    use super::*;
    use crate::crypto::{BoxSecret, MemberSecret};

    #[test]
    fn link_round_trip_and_debug_hides_secret() {
        let l = InviteLink {
            relay: "127.0.0.1:7900".into(),
            fingerprint: [7u8; 32],
            invite: InviteId::new(),
            secret: [9u8; 16],
        };
        let s = l.to_link();
        assert!(s.starts_with("claudemesh://join/127.0.0.1:7900/"));
        assert_eq!(InviteLink::parse(&s).unwrap(), l);
        assert_eq!(InviteLink::parse(&format!("  {s}\n")).unwrap(), l);
        let dbg = format!("{l:?}");
        assert!(!dbg.contains(&b64(&l.secret)));
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
