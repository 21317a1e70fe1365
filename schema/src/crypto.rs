//! Keys, signatures and the three sealing modes.
//!
//! | what | primitive | used for |
//! |---|---|---|
//! | member key | ed25519 | hello, roster entries, invites, presence, mesh-sealed messages |
//! | session key | x25519 (`crypto_box`, XSalsa20-Poly1305) | direct messages to a session |
//! | mesh key | 32 bytes, XChaCha20-Poly1305 | broadcast/group messages, presence profiles |
//! | anonymous seal | `crypto_box_seal` | handing the mesh key to an invite claimant |
//!
//! A member's ed25519 key converts to an x25519 key (`to_scalar_bytes` / `to_montgomery`),
//! so the sender side of a direct message box is the member itself: a recipient that knows
//! the sender's member key (from the signed roster) can open and authenticate the box
//! without having seen the sender session's presence.
//!
//! All randomness comes from the OS (`crypto_box::aead::OsRng`).

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use crypto_box::aead::OsRng;
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

use crate::encoding;

/// A crypto operation failed. Deliberately coarse: callers learn *that* something did not
/// verify or decrypt, never which byte or key, so errors are no oracle.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// A signature did not verify against the claimed key.
    #[error("signature does not verify")]
    BadSignature,
    /// A ciphertext did not decrypt (wrong key, tampered, or truncated).
    #[error("ciphertext does not decrypt with this key")]
    Decrypt,
    /// Bytes that should be a key are not a valid key.
    #[error("invalid key bytes")]
    BadKey,
    /// Encryption failed (only on absurd input sizes).
    #[error("encryption failed")]
    Encrypt,
}

/// Length of the nonce prefixed to every sealed blob (XChaCha20 and XSalsa20 both use 24).
pub const NONCE_LEN: usize = 24;

/// An ed25519 member public key: the identity of one member of one mesh.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MemberKey(#[serde(with = "encoding::array")] pub [u8; 32]);

impl MemberKey {
    /// Verify `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadKey)?;
        // Strict verification: refuses weak (small-order) keys and malleable signatures.
        vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
            .map_err(|_| CryptoError::BadSignature)
    }

    /// The x25519 public key of this member (the sender side of direct-message boxes).
    pub fn box_public(&self) -> Result<BoxPublic, CryptoError> {
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadKey)?;
        Ok(BoxPublic(vk.to_montgomery().to_bytes()))
    }

    /// Is this a valid curve point (so `verify` can ever succeed)?
    pub fn is_valid(&self) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).is_ok()
    }

    /// The key in base64url, as on the wire; used as the member id.
    pub fn to_b64(&self) -> String {
        encoding::b64(&self.0)
    }

    /// Parse the base64url form.
    pub fn from_b64(s: &str) -> Option<Self> {
        encoding::unb64_array(s).map(Self)
    }

    /// First 8 hex digits, for display and prefix matching.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }

    /// Human-comparable fingerprint: BLAKE3 of the key, 20 hex digits in 5 groups.
    pub fn fingerprint(&self) -> String {
        let h = blake3::hash(&self.0);
        let hx = hex(&h.as_bytes()[..10]);
        hx.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The first two groups of [`MemberKey::fingerprint`] (`a1b2-c3d4`): what is shown
    /// with every sender, in `peers` and in a model's context, and typed back to `verify`.
    pub fn short_fingerprint(&self) -> String {
        self.fingerprint().chars().take(9).collect()
    }
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberKey({})", self.short())
    }
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_b64())
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "encoding::array")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex(&self.0[..4]))
    }
}

/// The secret half of a member key. Never serialized except into the key file.
pub struct MemberSecret(ed25519_dalek::SigningKey);

impl MemberSecret {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut OsRng))
    }

    /// From the 32 secret bytes stored in a key file.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(b))
    }

    /// The 32 secret bytes, for the key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public member key.
    pub fn public(&self) -> MemberKey {
        MemberKey(self.0.verifying_key().to_bytes())
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.0.sign(msg).to_bytes())
    }

    /// The x25519 secret matching [`MemberKey::box_public`].
    pub fn box_secret(&self) -> BoxSecret {
        BoxSecret(crypto_box::SecretKey::from_bytes(self.0.to_scalar_bytes()))
    }
}

impl fmt::Debug for MemberSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberSecret(public={})", self.public().short())
    }
}

/// An x25519 public key (a session's, or an invite claimant's one-time key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BoxPublic(#[serde(with = "encoding::array")] pub [u8; 32]);

impl fmt::Debug for BoxPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoxPublic({})", hex(&self.0[..4]))
    }
}

/// An x25519 secret key.
pub struct BoxSecret(crypto_box::SecretKey);

impl BoxSecret {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(crypto_box::SecretKey::generate(&mut OsRng))
    }

    /// From 32 stored bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(crypto_box::SecretKey::from_bytes(b))
    }

    /// The 32 secret bytes, for storage.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> BoxPublic {
        BoxPublic(*self.0.public_key().as_bytes())
    }

    /// A name for this key that reveals nothing of it (a keyed hash of its bytes), for
    /// caches of boxes computed with it; far cheaper than [`BoxSecret::public`].
    pub fn key_id(&self) -> [u8; 32] {
        blake3::derive_key("claudemesh box secret id v1", &self.0.to_bytes())
    }
}

impl fmt::Debug for BoxSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoxSecret(public={:?})", self.public())
    }
}

/// Encrypt-and-authenticate `plaintext` from `sender` to `recipient` (libsodium
/// `crypto_box_easy`: X25519 + XSalsa20-Poly1305). Output: 24-byte nonce, then ciphertext.
pub fn box_seal(
    sender: &BoxSecret,
    recipient: &BoxPublic,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    BoxKey::new(sender, recipient).seal(plaintext)
}

/// Open a [`box_seal`] blob as `recipient`, authenticating `sender`.
pub fn box_open(
    recipient: &BoxSecret,
    sender: &BoxPublic,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    BoxKey::new(recipient, sender).open(sealed)
}

/// The box between one secret key and one public key, with the X25519 exchange done
/// once: sealing and opening with it cost only the symmetric cipher (the exchange is
/// most of a box's cost, ~40 µs on this project's machine). Seals and opens exactly as
/// [`box_seal`] and [`box_open`] with the same two keys.
pub struct BoxKey(crypto_box::SalsaBox);

impl BoxKey {
    /// The box between `ours` and `theirs`.
    pub fn new(ours: &BoxSecret, theirs: &BoxPublic) -> Self {
        Self(crypto_box::SalsaBox::new(
            &crypto_box::PublicKey::from(theirs.0),
            &ours.0,
        ))
    }

    /// Seal `plaintext` (a fresh random nonce, then the ciphertext).
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = crypto_box::SalsaBox::generate_nonce(&mut OsRng);
        let ct = self
            .0
            .encrypt(&nonce, plaintext)
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open a sealed blob, authenticating the other key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(crypto_box::Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Decrypt)
    }
}

impl fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxKey(..)")
    }
}

/// Anonymous seal to `recipient` (libsodium `crypto_box_seal`).
pub fn anon_seal(recipient: &BoxPublic, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    crypto_box::PublicKey::from(recipient.0)
        .seal(&mut OsRng, plaintext)
        .map_err(|_| CryptoError::Encrypt)
}

/// Open an [`anon_seal`] blob.
pub fn anon_open(recipient: &BoxSecret, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    recipient.0.unseal(sealed).map_err(|_| CryptoError::Decrypt)
}

/// The 32-byte symmetric key every member of a mesh holds. Never sent in clear, never
/// stored at a relay.
#[derive(Clone)]
pub struct MeshKey([u8; 32]);

impl Drop for MeshKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl MeshKey {
    /// A fresh random mesh key.
    pub fn generate() -> Self {
        let k = XChaCha20Poly1305::generate_key(&mut OsRng);
        Self(k.into())
    }

    /// From 32 stored bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw bytes (for the key file and for sealing to a claimant).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seal `plaintext` with XChaCha20-Poly1305, binding `ad` (associated data that the
    /// receiver must supply identically). Output: 24-byte nonce, then ciphertext.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: ad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open a [`MeshKey::seal`] blob.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: ad })
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Derive a purpose-specific 32-byte key from the mesh key (BLAKE3 derive_key).
    pub fn derive(&self, context: &str, extra: &[u8]) -> [u8; 32] {
        let mut material = Vec::with_capacity(32 + extra.len());
        material.extend_from_slice(&self.0);
        material.extend_from_slice(extra);
        let out = blake3::derive_key(context, &material);
        material.zeroize();
        out
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshKey(..)")
    }
}

/// The safety number of two members of a mesh: 60 digits in 12 groups of 5, the same
/// whichever of the two computes it. Reading it aloud (or comparing it over another trusted
/// channel) proves that no one in between, relay included, swapped a key.
pub fn safety_number(mesh: &crate::MeshId, a: &MemberKey, b: &MemberKey) -> String {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new_derive_key("claudemesh 2026 safety number v1");
    h.update(mesh.as_bytes()).update(&lo.0).update(&hi.0);
    let mut out = [0u8; 60];
    h.finalize_xof().fill(&mut out);
    out.chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keyed BLAKE3 MAC over length-prefixed parts, domain-separated by `label`.
pub fn mac(key: &[u8; 32], label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&(label.len() as u32).to_be_bytes());
    h.update(label.as_bytes());
    for p in parts {
        h.update(&(p.len() as u32).to_be_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// Constant-time equality for MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fill `N` random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use crypto_box::aead::rand_core::RngCore as _;
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

/// Builds the canonical byte strings that get signed: a domain label, then fixed-size
/// fields and length-prefixed variable fields, so no two different inputs produce the same
/// bytes.
#[derive(Debug)]
pub struct Canonical(Vec<u8>);

impl Canonical {
    /// Start a transcript for `label` (e.g. `"claudemesh/hello/v1"`).
    pub fn new(label: &str) -> Self {
        let mut v = Vec::with_capacity(160);
        v.extend_from_slice(&(label.len() as u32).to_be_bytes());
        v.extend_from_slice(label.as_bytes());
        Self(v)
    }

    /// Append a fixed-size field.
    pub fn fixed(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    /// Append a variable-size field (length-prefixed).
    pub fn var(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    /// Append a signed 64-bit integer (big-endian).
    pub fn i64(self, n: i64) -> Self {
        self.fixed(&n.to_be_bytes())
    }

    /// Append an unsigned 32-bit integer (big-endian).
    pub fn u32(self, n: u32) -> Self {
        self.fixed(&n.to_be_bytes())
    }

    /// The finished bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn member_key_converts_to_box_key() {
        let m = MemberSecret::generate();
        assert_eq!(m.box_secret().public(), m.public().box_public().unwrap());
    }

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let m = MemberSecret::generate();
        let sig = m.sign(b"hello");
        m.public().verify(b"hello", &sig).unwrap();
        assert_eq!(
            m.public().verify(b"hellO", &sig),
            Err(CryptoError::BadSignature)
        );
        let other = MemberSecret::generate();
        assert_eq!(
            other.public().verify(b"hello", &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn box_round_trip_authenticates_sender() {
        let alice = MemberSecret::generate();
        let bob_session = BoxSecret::generate();
        let sealed = box_seal(&alice.box_secret(), &bob_session.public(), b"hi bob").unwrap();
        let opened =
            box_open(&bob_session, &alice.public().box_public().unwrap(), &sealed).unwrap();
        assert_eq!(opened, b"hi bob");
        let mallory = MemberSecret::generate();
        assert_eq!(
            box_open(
                &bob_session,
                &mallory.public().box_public().unwrap(),
                &sealed
            ),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn anon_seal_round_trip() {
        let claimant = BoxSecret::generate();
        let sealed = anon_seal(&claimant.public(), b"mesh key").unwrap();
        assert_eq!(anon_open(&claimant, &sealed).unwrap(), b"mesh key");
        assert!(anon_open(&BoxSecret::generate(), &sealed).is_err());
    }

    #[test]
    fn mesh_seal_binds_associated_data() {
        let k = MeshKey::generate();
        let s = k.seal(b"ad", b"secret").unwrap();
        assert_eq!(k.open(b"ad", &s).unwrap(), b"secret");
        assert!(k.open(b"other", &s).is_err());
        assert!(MeshKey::generate().open(b"ad", &s).is_err());
        assert!(k.open(b"ad", &s[..10]).is_err());
    }

    #[test]
    fn canonical_is_unambiguous() {
        let a = Canonical::new("x").var(b"ab").var(b"c").into_bytes();
        let b = Canonical::new("x").var(b"a").var(b"bc").into_bytes();
        assert_ne!(a, b);
    }

    #[test]
    fn safety_numbers_are_symmetric_and_depend_on_both_keys_and_the_mesh() {
        let mesh = crate::MeshId::new();
        let (a, b) = (
            MemberSecret::generate().public(),
            MemberSecret::generate().public(),
        );
        let n = safety_number(&mesh, &a, &b);
        assert_eq!(n, safety_number(&mesh, &b, &a));
        assert_eq!(n.split(' ').count(), 12);
        assert!(
            n.split(' ')
                .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit()))
        );
        let c = MemberSecret::generate().public();
        assert_ne!(n, safety_number(&mesh, &a, &c));
        assert_ne!(n, safety_number(&crate::MeshId::new(), &a, &b));
    }

    proptest! {
        #[test]
        fn mesh_seal_round_trips(pt in proptest::collection::vec(any::<u8>(), 0..2048),
                                 ad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let k = MeshKey::generate();
            let s = k.seal(&ad, &pt).unwrap();
            prop_assert_eq!(k.open(&ad, &s).unwrap(), pt);
        }

        #[test]
        fn flipping_any_byte_breaks_mesh_seal(pt in proptest::collection::vec(any::<u8>(), 1..256),
                                              idx in any::<usize>()) {
            let k = MeshKey::generate();
            let mut s = k.seal(b"", &pt).unwrap();
            let i = idx % s.len();
            s[i] ^= 1;
            prop_assert!(k.open(b"", &s).is_err());
        }
    }
}
