//! Mesh-key epochs: the mesh key changes when a member leaves or is removed.
//!
//! Epoch 0 is the key a mesh was created with. An admin who removes a member (or sees one
//! leave) makes epoch `n + 1`: a fresh key, boxed to each remaining member's key
//! ([`box_epoch_key`]) and carried in a signed op of the log ([`crate::op::Op::KeyEpoch`]),
//! so every member applies it at the same place, in order, and catches up on it after
//! being offline. The removed member's key is not among the boxes, and the relay refuses
//! its link, so nothing sealed under the new epoch opens for it. Old epochs stay in every
//! member's [`Keyring`] for reading history.
//!
//! What is sealed with a mesh key names its epoch (the `epoch` field of envelopes, ops and
//! presences, omitted for 0) and binds it in the associated data ([`ad_label`]), so a relay
//! that changes the field only makes the ciphertext fail to open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::MeshId;
use crate::crypto::{BoxKey, Canonical, CryptoError, MemberKey, MemberSecret, MeshKey};
use crate::encoding;

/// A key epoch number.
pub type Epoch = u32;

/// Whether `epoch` is 0 (serde helper: epoch 0 is not written, so old readers see what
/// they always saw).
pub fn is_zero(epoch: &Epoch) -> bool {
    *epoch == 0
}

/// The associated-data label of a mesh-sealed statement at `epoch`: `base` (`…/v1`) for
/// epoch 0, exactly as before epochs existed; otherwise `base` with `+epoch` and the epoch
/// appended by the caller (see [`ad`]).
pub fn ad_label(base: &str, epoch: Epoch) -> String {
    if epoch == 0 {
        base.to_string()
    } else {
        format!("{base}+epoch")
    }
}

/// Start the associated data of a mesh-sealed statement: the label for `epoch` and, for
/// epochs after 0, the epoch (u32) right after it.
pub fn ad(base: &str, epoch: Epoch) -> Canonical {
    let c = Canonical::new(&ad_label(base, epoch));
    if epoch == 0 { c } else { c.u32(epoch) }
}

/// Every mesh key a member holds, by epoch.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<Epoch, MeshKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("epochs", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding only epoch 0.
    pub fn new(epoch0: MeshKey) -> Self {
        Self {
            keys: BTreeMap::from([(0, epoch0)]),
        }
    }

    /// Add `key` as `epoch`; false (and nothing changes) if that epoch is held already.
    pub fn insert(&mut self, epoch: Epoch, key: MeshKey) -> bool {
        if self.keys.contains_key(&epoch) {
            return false;
        }
        self.keys.insert(epoch, key);
        true
    }

    /// The newest epoch and its key: what new things are sealed with.
    pub fn current(&self) -> (Epoch, &MeshKey) {
        match self.keys.last_key_value() {
            Some((e, k)) => (*e, k),
            // `new` always holds epoch 0 and nothing removes it.
            None => unreachable!("a keyring always holds epoch 0"),
        }
    }

    /// The key of `epoch`, if held.
    pub fn get(&self, epoch: Epoch) -> Option<&MeshKey> {
        self.keys.get(&epoch)
    }

    /// The epoch-0 key (invite secrets derive from it).
    pub fn root(&self) -> &MeshKey {
        match self.keys.get(&0) {
            Some(k) => k,
            None => unreachable!("a keyring always holds epoch 0"),
        }
    }

    /// Every epoch held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Epoch, &MeshKey)> {
        self.keys.iter().map(|(e, k)| (*e, k))
    }
}

/// One member's copy of an epoch key: boxed from the rotating admin's member key to the
/// member's (both converted to x25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBox {
    /// The member it is for.
    pub member: MemberKey,
    /// `crypto_box` of canonical(`claudemesh/epoch-key/v1` | mesh | epoch | key).
    #[serde(with = "encoding::bytes")]
    pub ct: Vec<u8>,
}

fn epoch_key_bytes(mesh: &MeshId, epoch: Epoch, key: &MeshKey) -> Vec<u8> {
    Canonical::new("claudemesh/epoch-key/v1")
        .fixed(mesh.as_bytes())
        .u32(epoch)
        .fixed(key.as_bytes())
        .into_bytes()
}

/// Box `key` (epoch `epoch` of `mesh`) from admin `from` to member `to`.
pub fn box_epoch_key(
    mesh: &MeshId,
    epoch: Epoch,
    key: &MeshKey,
    from: &MemberSecret,
    to: &MemberKey,
) -> Result<EpochBox, CryptoError> {
    let b = BoxKey::new(&from.box_secret(), &to.box_public()?);
    let mut pt = epoch_key_bytes(mesh, epoch, key);
    let ct = b.seal(&pt);
    zeroize::Zeroize::zeroize(&mut pt);
    Ok(EpochBox {
        member: *to,
        ct: ct?,
    })
}

/// Open `me`'s box of epoch `epoch` of `mesh` from admin `from`; fails unless the box is
/// `me`'s and names this mesh and epoch.
pub fn open_epoch_box(
    mesh: &MeshId,
    epoch: Epoch,
    b: &EpochBox,
    from: &MemberKey,
    me: &MemberSecret,
) -> Result<MeshKey, CryptoError> {
    if b.member != me.public() {
        return Err(CryptoError::Decrypt);
    }
    let k = BoxKey::new(&me.box_secret(), &from.box_public()?);
    let mut pt = k.open(&b.ct)?;
    let prefix = Canonical::new("claudemesh/epoch-key/v1")
        .fixed(mesh.as_bytes())
        .u32(epoch)
        .into_bytes();
    let r = if pt.len() == prefix.len() + 32 && pt.starts_with(&prefix) {
        let mut key = [0u8; 32];
        key.copy_from_slice(&pt[prefix.len()..]);
        Ok(MeshKey::from_bytes(key))
    } else {
        Err(CryptoError::Decrypt)
    };
    zeroize::Zeroize::zeroize(&mut pt);
    r
}

/// Seal a fresh key for epoch `epoch` to each of `members` (the remaining members; the
/// author is boxed to itself too, like any member).
pub fn make_epoch(
    mesh: &MeshId,
    epoch: Epoch,
    from: &MemberSecret,
    members: &[MemberKey],
) -> Result<(MeshKey, Vec<EpochBox>), CryptoError> {
    let key = MeshKey::generate();
    let boxes = members
        .iter()
        .map(|m| box_epoch_key(mesh, epoch, &key, from, m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key, boxes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_opens_only_for_its_member_mesh_and_epoch() {
        let mesh = MeshId::new();
        let admin = MemberSecret::generate();
        let bob = MemberSecret::generate();
        let eve = MemberSecret::generate();
        let (key, boxes) = make_epoch(&mesh, 1, &admin, &[admin.public(), bob.public()]).unwrap();
        let bobs = boxes.iter().find(|b| b.member == bob.public()).unwrap();
        let opened = open_epoch_box(&mesh, 1, bobs, &admin.public(), &bob).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
        // (case, mesh, epoch, box, from, me) → opens?
        let forged = EpochBox {
            member: eve.public(),
            ct: bobs.ct.clone(),
        };
        let cases: Vec<(&str, MeshId, Epoch, &EpochBox, MemberKey, &MemberSecret)> = vec![
            ("another member", mesh, 1, bobs, admin.public(), &eve),
            ("relabelled box", mesh, 1, &forged, admin.public(), &eve),
            ("another epoch", mesh, 2, bobs, admin.public(), &bob),
            ("another mesh", MeshId::new(), 1, bobs, admin.public(), &bob),
            ("another sender", mesh, 1, bobs, eve.public(), &bob),
        ];
        for (case, m, e, b, from, me) in cases {
            assert!(open_epoch_box(&m, e, b, &from, me).is_err(), "{case}");
        }
    }

    #[test]
    fn ad_of_epoch_zero_is_unchanged_and_epochs_differ() {
        let base = "claudemesh/msg-ad/v1";
        assert_eq!(ad(base, 0).into_bytes(), Canonical::new(base).into_bytes());
        let (e1, e2) = (ad(base, 1).into_bytes(), ad(base, 2).into_bytes());
        assert_ne!(e1, Canonical::new(base).into_bytes());
        assert_ne!(e1, e2);
    }

    #[test]
    fn keyring_seals_with_the_newest_and_keeps_old_epochs() {
        let k0 = MeshKey::generate();
        let mut ring = Keyring::new(k0.clone());
        assert_eq!(ring.current().0, 0);
        let k1 = MeshKey::generate();
        assert!(ring.insert(1, k1.clone()));
        assert!(
            !ring.insert(1, MeshKey::generate()),
            "an epoch is never replaced"
        );
        assert_eq!(ring.current().0, 1);
        assert_eq!(ring.current().1.as_bytes(), k1.as_bytes());
        assert_eq!(ring.get(0).unwrap().as_bytes(), k0.as_bytes());
        assert_eq!(ring.root().as_bytes(), k0.as_bytes());
    }
}
