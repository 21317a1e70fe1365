//! The vault's rules and its sealed file format: secrets (API tokens and the like) a
//! member keeps on its own machine, one vault per mesh membership. Nothing here travels:
//! a vault is never sent to the relay or to a peer (the daemon's `vault` module stores it;
//! a later deploy wraps single values to a host member's key).
//!
//! A vault file is `version (1 byte) ‖ nonce (24) ‖ XChaCha20-Poly1305 ciphertext`, under
//! a key derived with BLAKE3 `derive_key` from the member's secret key of that mesh and
//! the mesh id, with the version and the mesh id as associated data: a file moved to
//! another mesh, or one whose version byte was changed, does not open.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use crypto_box::aead::OsRng;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

use crate::MeshId;
use crate::crypto::{MemberSecret, NONCE_LEN};

/// The format version this build writes (the first byte of a vault file).
pub const VERSION: u8 = 1;
/// Longest name, in bytes (names are ASCII).
pub const MAX_NAME: usize = 64;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Most entries in one mesh's vault.
pub const MAX_ENTRIES: usize = 1000;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 256;
/// Most bytes of values in one mesh's vault: every change rewrites and syncs the whole
/// file, and every read opens it whole.
pub const MAX_TOTAL: usize = 8 * 1024 * 1024;

/// BLAKE3 context of the vault key. Never change it: every vault file is sealed under it.
const KEY_CONTEXT: &str = "claudemesh 2026 vault key v1";
/// Prefix of the associated data (then the version byte and the mesh id).
const AD_LABEL: &[u8] = b"claudemesh vault v1";

/// A name, description or value that breaks the rules; the message says which rule and
/// never contains a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The name has characters outside `[A-Za-z0-9_.-]`, or is empty or too long.
    #[error(
        "vault name {0:?} is not allowed: use 1 to {MAX_NAME} letters, digits, `_`, `.` or `-` (like GITHUB_TOKEN)"
    )]
    Name(String),
    /// The value is empty.
    #[error("the value is empty; a vault entry needs a value")]
    EmptyValue,
    /// The value is larger than [`MAX_VALUE`].
    #[error("the value is {0} bytes; a vault entry holds at most {MAX_VALUE} bytes")]
    ValueTooLarge(usize),
    /// The description is too long or spans lines.
    #[error(
        "the description must be one line of at most {MAX_DESCRIPTION} characters, without control characters"
    )]
    Description,
}

/// Check a vault entry name: 1 to [`MAX_NAME`] ASCII letters, digits, `_`, `.` or `-`
/// (the characters of environment variable and file names, so a name can become either).
pub fn check_name(name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        // Shown cut and on one line: a name is not secret, but may be anything typed.
        Err(RuleError::Name(crate::names::one_line(name, MAX_NAME + 8)))
    }
}

/// Check a value's size: 1 to [`MAX_VALUE`] bytes.
pub fn check_value(value: &str) -> Result<(), RuleError> {
    match value.len() {
        0 => Err(RuleError::EmptyValue),
        n if n > MAX_VALUE => Err(RuleError::ValueTooLarge(n)),
        _ => Ok(()),
    }
}

/// Check a description and return it trimmed: one line, at most [`MAX_DESCRIPTION`]
/// characters, no control or invisible characters.
pub fn check_description(d: &str) -> Result<String, RuleError> {
    let t = d.trim();
    if t.chars().count() > MAX_DESCRIPTION
        || t.chars()
            .any(|c| c.is_control() || crate::names::invisible(c))
    {
        return Err(RuleError::Description);
    }
    Ok(t.to_string())
}

/// A secret value. Its `Debug` prints only its length, it is wiped from memory when
/// dropped, and it is a plain JSON string on the wire (the IPC call that sets it); reading
/// anything else fails with an error that does not quote it (serde's own would).
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the secret value as a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
        }
        // Every other kind of input ends in serde's `invalid_type`, which quotes numbers
        // and booleans: replace the message.
        d.deserialize_string(Text).map_err(|e| {
            let m = e.to_string();
            if m.contains("the secret value as a string") {
                serde::de::Error::custom("the value must be a string")
            } else {
                e
            }
        })
    }
}

impl Secret {
    /// Wrap `value`.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value itself: only for sealing it or handing it to what it is for.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value, still wiped when dropped.
    pub fn into_zeroizing(mut self) -> Zeroizing<String> {
        Zeroizing::new(std::mem::take(&mut self.0))
    }
}

impl From<Zeroizing<String>> for Secret {
    fn from(mut z: Zeroizing<String>) -> Self {
        Self(std::mem::take(&mut *z))
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A vault file that does not open. Deliberately coarse, like every crypto error: a
/// changed byte, a truncated file and a file sealed under another key look the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Written by a newer claudemesh (its first byte is a version this build does not know).
    #[error("written in vault format v{0}, which this claudemesh does not know (upgrade it)")]
    Version(u8),
    /// Changed, truncated, or sealed under another key or for another mesh.
    #[error(
        "it does not decrypt: changed outside claudemesh, damaged, or sealed under another key"
    )]
    Sealed,
}

/// The key one mesh's vault is sealed under. `Debug` prints nothing of it.
pub struct VaultKey {
    key: Zeroizing<[u8; 32]>,
    mesh: MeshId,
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultKey")
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

impl VaultKey {
    /// The vault key of `member` (this machine's member secret of `mesh`) for `mesh`.
    pub fn derive(member: &MemberSecret, mesh: &MeshId) -> Self {
        let secret = member.to_bytes();
        let mut material = Zeroizing::new([0u8; 48]);
        material[..32].copy_from_slice(&secret[..]);
        material[32..].copy_from_slice(mesh.0.as_bytes());
        Self {
            key: Zeroizing::new(blake3::derive_key(KEY_CONTEXT, &material[..])),
            mesh: *mesh,
        }
    }

    fn ad(&self, version: u8) -> Vec<u8> {
        let mut ad = Vec::with_capacity(AD_LABEL.len() + 17);
        ad.extend_from_slice(AD_LABEL);
        ad.push(version);
        ad.extend_from_slice(self.mesh.0.as_bytes());
        ad
    }

    /// Seal `plaintext` into the bytes of a vault file (a fresh random nonce each time).
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, crate::crypto::CryptoError> {
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &self.ad(VERSION),
                },
            )
            .map_err(|_| crate::crypto::CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Open the bytes of a vault file.
    pub fn open(&self, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let Some((&version, rest)) = file.split_first() else {
            return Err(OpenError::Sealed);
        };
        if version != VERSION {
            // A version byte from the future says "upgrade"; one from nowhere (0) is damage.
            return Err(if version > VERSION {
                OpenError::Version(version)
            } else {
                OpenError::Sealed
            });
        }
        if rest.len() < NONCE_LEN {
            return Err(OpenError::Sealed);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        XChaCha20Poly1305::new((&*self.key).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &self.ad(version),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule_and_errors_never_hold_values() {
        for ok in ["GITHUB_TOKEN", "a", "x.y-z_1", &"n".repeat(MAX_NAME)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "a/b",
            "ü",
            "tab\t",
            &"n".repeat(MAX_NAME + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_value(""), Err(RuleError::EmptyValue));
        let big = "s".repeat(MAX_VALUE + 1);
        let e = check_value(&big).unwrap_err();
        assert!(!e.to_string().contains("sss"), "{e}");
        assert_eq!(check_value(&"s".repeat(MAX_VALUE)), Ok(()));
        assert_eq!(check_description("  for CI  ").unwrap(), "for CI");
        assert!(check_description("two\nlines").is_err());
        assert!(check_description(&"d".repeat(MAX_DESCRIPTION + 1)).is_err());
    }

    #[test]
    fn a_secret_debugs_as_its_length_only() {
        let s = Secret::new("hunter2-very-secret".into());
        assert_eq!(format!("{s:?}"), "Secret(19 bytes)");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            "\"hunter2-very-secret\""
        );
        let back: Secret = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(back.expose(), "x");
        for bad in ["123456789", "true", "[\"s3cr3t\"]", "{\"a\": \"s3cr3t\"}"] {
            let e = serde_json::from_str::<Secret>(bad).unwrap_err().to_string();
            assert!(e.contains("must be a string"), "{e}");
            assert!(!e.contains("123456789") && !e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn a_vault_opens_only_under_its_key_mesh_and_version() {
        let member = MemberSecret::generate();
        let mesh = MeshId::new();
        let k = VaultKey::derive(&member, &mesh);
        let sealed = k.seal(b"the entries").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert!(!crate::crypto::hex(&sealed).contains(&crate::crypto::hex(b"the entries")));
        assert_eq!(&k.open(&sealed).unwrap()[..], b"the entries");
        // Sealing again uses a fresh nonce.
        assert_ne!(k.seal(b"the entries").unwrap(), sealed);
        // Another mesh, another member: no.
        let other_mesh = VaultKey::derive(&member, &MeshId::new());
        assert_eq!(other_mesh.open(&sealed), Err(OpenError::Sealed));
        let other_member = VaultKey::derive(&MemberSecret::generate(), &mesh);
        assert_eq!(other_member.open(&sealed), Err(OpenError::Sealed));
        // Any changed byte, a truncation, an empty file: no.
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(k.open(&t).is_err(), "byte {i}");
        }
        assert_eq!(k.open(&sealed[..sealed.len() - 1]), Err(OpenError::Sealed));
        assert_eq!(k.open(&[]), Err(OpenError::Sealed));
        let mut future = sealed.clone();
        future[0] = VERSION + 1;
        assert_eq!(k.open(&future), Err(OpenError::Version(VERSION + 1)));
        assert!(!format!("{k:?}").contains(&crate::crypto::hex(&k.key[..])));
    }
}
