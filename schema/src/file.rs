//! Files shared in a mesh, end to end encrypted and content-addressed.
//!
//! A file is cut into chunks of [`CHUNK_SIZE`] bytes (the last one shorter), each sealed
//! with XChaCha20-Poly1305 under a random per-file key. A chunk's id is the BLAKE3 hash of
//! its sealed bytes, so whoever stores or serves chunks (the relay's blob store, a member's
//! daemon) can be checked without being trusted: a chunk that does not hash to its id is
//! refused. The chunk nonce is derived from the file key and the chunk's index (the key is
//! never used for another file), so sealing a chunk again after a crash gives the same
//! bytes and id, and an upload resumes where it stopped.
//!
//! The [`Manifest`] (name, size, type, plaintext hash, chunk ids, tags) is sealed under
//! the file key too and travels in a [`crate::op::Op::ShareFile`] op, next to the file key
//! wrapped for whoever may read it ([`KeyBox`]): to each recipient member's key, or under
//! the mesh key of the current epoch. Granting access later appends another op with more
//! boxes; nothing is uploaded again.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroize;

use crate::crypto::{BoxKey, Canonical, CryptoError, MemberKey, MemberSecret, MeshKey};
use crate::epoch::Epoch;
use crate::{ItemId, MeshId, encoding};

/// Plaintext bytes per chunk (the last chunk of a file is shorter). Small enough that a
/// sealed chunk, base64 in a boxed message, fits one envelope when a member serves it.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Sealing adds this much to a chunk (the Poly1305 tag; the nonce is derived, not sent).
pub const CHUNK_OVERHEAD: usize = 16;
/// Most chunks in one file: the manifest lists them all and rides in one op.
pub const MAX_CHUNKS: usize = 2048;
/// The largest file that can be shared (256 MiB).
pub const MAX_FILE: u64 = (CHUNK_SIZE * MAX_CHUNKS) as u64;
/// Longest file name kept in a manifest, bytes.
pub const MAX_NAME: usize = 255;

/// A chunk's id: BLAKE3 of its sealed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(#[serde(with = "encoding::array")] pub [u8; 32]);

impl ChunkId {
    /// The id of these sealed bytes.
    pub fn of(sealed: &[u8]) -> Self {
        Self(*blake3::hash(sealed).as_bytes())
    }

    /// Whether `sealed` is the chunk this id names.
    pub fn names(&self, sealed: &[u8]) -> bool {
        crate::crypto::ct_eq(&Self::of(sealed).0, &self.0)
    }

    /// Hex, as in file names of a blob store.
    pub fn hex(&self) -> String {
        crate::crypto::hex(&self.0)
    }

    /// From 32 stored bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Self)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.hex()[..16])
    }
}

/// A file's symmetric key: random, used for this file only.
#[derive(Clone)]
pub struct FileKey([u8; 32]);

impl Drop for FileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// How many chunks a file of `size` bytes has (an empty file has one, empty).
pub fn chunk_count(size: u64) -> usize {
    (size.div_ceil(CHUNK_SIZE as u64) as usize).max(1)
}

fn chunk_ad(file: &ItemId, index: u32) -> Vec<u8> {
    Canonical::new("claudemesh/file-chunk/v1")
        .fixed(file.as_bytes())
        .u32(index)
        .into_bytes()
}

fn manifest_ad(mesh: &MeshId, file: &ItemId) -> Vec<u8> {
    Canonical::new("claudemesh/file-manifest/v1")
        .fixed(mesh.as_bytes())
        .fixed(file.as_bytes())
        .into_bytes()
}

impl FileKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(crate::crypto::random_bytes::<32>())
    }

    /// From stored bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The key's bytes (to store it, zeroized by the caller).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    fn nonce(&self, label: &str, index: u32) -> XNonce {
        let h = crate::crypto::mac(&self.0, label, &[&index.to_be_bytes()]);
        *XNonce::from_slice(&h[..24])
    }

    /// Seal chunk `index` of file `file`. Deterministic: the same chunk seals to the same
    /// bytes (and id) every time, so an interrupted upload can resume.
    pub fn seal_chunk(
        &self,
        file: &ItemId,
        index: u32,
        plain: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if plain.len() > CHUNK_SIZE {
            return Err(CryptoError::Encrypt);
        }
        let ad = chunk_ad(file, index);
        self.cipher()
            .encrypt(
                &self.nonce("claudemesh/file-chunk-nonce/v1", index),
                Payload {
                    msg: plain,
                    aad: &ad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)
    }

    /// Open chunk `index` of file `file`: fails unless it is that chunk of that file.
    pub fn open_chunk(
        &self,
        file: &ItemId,
        index: u32,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let ad = chunk_ad(file, index);
        self.cipher()
            .decrypt(
                &self.nonce("claudemesh/file-chunk-nonce/v1", index),
                Payload {
                    msg: sealed,
                    aad: &ad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }

    /// Seal a manifest (random nonce, prefixed).
    pub fn seal_manifest(
        &self,
        mesh: &MeshId,
        file: &ItemId,
        m: &Manifest,
    ) -> Result<Vec<u8>, CryptoError> {
        let json = serde_json::to_vec(m).map_err(|_| CryptoError::Encrypt)?;
        MeshKey::from_bytes(self.0).seal(&manifest_ad(mesh, file), &json)
    }

    /// Open a manifest of file `file` in `mesh`.
    pub fn open_manifest(
        &self,
        mesh: &MeshId,
        file: &ItemId,
        sealed: &[u8],
    ) -> Result<Manifest, CryptoError> {
        let json = MeshKey::from_bytes(self.0).open(&manifest_ad(mesh, file), sealed)?;
        let m: Manifest = serde_json::from_slice(&json).map_err(|_| CryptoError::Decrypt)?;
        m.check().map_err(|_| CryptoError::Decrypt)?;
        Ok(m)
    }
}

/// What a shared file is, sealed under its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's name (no directory).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type (`text/plain`, `application/octet-stream`, …).
    #[serde(default)]
    pub mime: String,
    /// BLAKE3 of the whole plaintext.
    #[serde(with = "encoding::array")]
    pub blake3: [u8; 32],
    /// The chunks in order, 32-byte ids back to back.
    #[serde(with = "encoding::bytes")]
    pub chunks: Vec<u8>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Gone after this time (unix ms) for an ephemeral share; `None`: kept until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A manifest that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub &'static str);

impl Manifest {
    /// The chunk ids in order.
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.chunks
            .chunks_exact(32)
            .filter_map(ChunkId::from_slice)
            .collect()
    }

    /// The rules every reader checks: a name without directories, a size within
    /// [`MAX_FILE`] and as many chunks as the size needs.
    pub fn check(&self) -> Result<(), ManifestError> {
        check_name(&self.name)?;
        if self.size > MAX_FILE {
            return Err(ManifestError("the file is larger than a share may be"));
        }
        if !self.chunks.len().is_multiple_of(32) || self.chunks.len() / 32 != chunk_count(self.size)
        {
            return Err(ManifestError("the chunk list does not match the size"));
        }
        Ok(())
    }
}

/// A file name as a manifest may hold it: one path component, printable (no control
/// characters, and none of the invisible ones that make a name read as another: a
/// right-to-left override turns `notes\u{202E}txt.sh` into `notesha.txt` on screen).
pub fn check_name(name: &str) -> Result<(), ManifestError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ManifestError("a file name is 1 to 255 bytes"));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(crate::names::invisible)
    {
        return Err(ManifestError(
            "a file name is one path component without control characters",
        ));
    }
    Ok(())
}

/// The file key, wrapped for one reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum KeyBox {
    /// For every member holding the mesh key of `epoch`.
    Mesh {
        /// The epoch whose key seals it.
        epoch: Epoch,
        /// [`MeshKey::seal`] of the file key.
        #[serde(with = "encoding::bytes")]
        ct: Vec<u8>,
    },
    /// For one member: `crypto_box` from the granting member's key to the reader's.
    Member {
        /// The reader.
        member: MemberKey,
        /// The box.
        #[serde(with = "encoding::bytes")]
        ct: Vec<u8>,
    },
}

fn key_ad(mesh: &MeshId, file: &ItemId) -> Vec<u8> {
    Canonical::new("claudemesh/file-key/v1")
        .fixed(mesh.as_bytes())
        .fixed(file.as_bytes())
        .into_bytes()
}

impl KeyBox {
    /// Wrap `key` under the mesh key of `epoch`.
    pub fn for_mesh(
        mesh: &MeshId,
        file: &ItemId,
        epoch: Epoch,
        mesh_key: &MeshKey,
        key: &FileKey,
    ) -> Result<Self, CryptoError> {
        Ok(Self::Mesh {
            epoch,
            ct: mesh_key.seal(&key_ad(mesh, file), &key.0)?,
        })
    }

    /// Wrap `key` from `from` to member `to`.
    pub fn for_member(
        mesh: &MeshId,
        file: &ItemId,
        from: &MemberSecret,
        to: &MemberKey,
        key: &FileKey,
    ) -> Result<Self, CryptoError> {
        let b = BoxKey::new(&from.box_secret(), &to.box_public()?);
        let mut pt = key_ad(mesh, file);
        pt.extend_from_slice(&key.0);
        let ct = b.seal(&pt);
        pt.zeroize();
        Ok(Self::Member {
            member: *to,
            ct: ct?,
        })
    }

    /// Whether this box is for `me` (a member) at all.
    pub fn is_for(&self, me: &MemberKey) -> bool {
        match self {
            Self::Mesh { .. } => true,
            Self::Member { member, .. } => member == me,
        }
    }

    /// Open the box: `mesh_key` gives the mesh key of an epoch (`None`: not held), `from`
    /// is the member that wrote the box (the op's author), `me` the reader.
    pub fn open(
        &self,
        mesh: &MeshId,
        file: &ItemId,
        mesh_key: impl Fn(Epoch) -> Option<MeshKey>,
        from: &MemberKey,
        me: &MemberSecret,
    ) -> Result<FileKey, CryptoError> {
        match self {
            Self::Mesh { epoch, ct } => {
                let k = mesh_key(*epoch).ok_or(CryptoError::Decrypt)?;
                let mut pt = k.open(&key_ad(mesh, file), ct)?;
                let r = <[u8; 32]>::try_from(pt.as_slice())
                    .map(FileKey)
                    .map_err(|_| CryptoError::Decrypt);
                pt.zeroize();
                r
            }
            Self::Member { member, ct } => {
                if *member != me.public() {
                    return Err(CryptoError::Decrypt);
                }
                let b = BoxKey::new(&me.box_secret(), &from.box_public()?);
                let mut pt = b.open(ct)?;
                let prefix = key_ad(mesh, file);
                let r = if pt.len() == prefix.len() + 32 && pt.starts_with(&prefix) {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(&pt[prefix.len()..]);
                    Ok(FileKey(k))
                } else {
                    Err(CryptoError::Decrypt)
                };
                pt.zeroize();
                r
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_seal_deterministically_and_open_only_in_place() {
        let k = FileKey::generate();
        let f = ItemId::new();
        let a = k.seal_chunk(&f, 0, b"hello").unwrap();
        assert_eq!(a, k.seal_chunk(&f, 0, b"hello").unwrap(), "resumable");
        assert_eq!(a.len(), 5 + CHUNK_OVERHEAD);
        assert_ne!(a, k.seal_chunk(&f, 1, b"hello").unwrap());
        assert_eq!(k.open_chunk(&f, 0, &a).unwrap(), b"hello");
        // (what is opened, where) → refused
        let cases: [(&[u8], u32, ItemId); 3] =
            [(&a, 1, f), (&a, 0, ItemId::new()), (&a[1..], 0, f)];
        for (ct, i, file) in cases {
            assert!(k.open_chunk(&file, i, ct).is_err());
        }
        assert!(FileKey::generate().open_chunk(&f, 0, &a).is_err());
        assert!(ChunkId::of(&a).names(&a));
        assert!(!ChunkId::of(&a).names(&a[1..]));
    }

    #[test]
    fn chunk_counts() {
        for (size, n) in [
            (0, 1),
            (1, 1),
            (CHUNK_SIZE as u64, 1),
            (CHUNK_SIZE as u64 + 1, 2),
            (MAX_FILE, MAX_CHUNKS),
        ] {
            assert_eq!(chunk_count(size), n, "{size}");
        }
    }

    #[test]
    fn names_are_one_component() {
        for (name, ok) in [
            ("notes.md", true),
            ("a b.txt", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a\\b", false),
            ("a\nb", false),
        ] {
            assert_eq!(check_name(name).is_ok(), ok, "{name:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn keys_open_for_whom_they_were_wrapped() {
        let mesh = MeshId::new();
        let file = ItemId::new();
        let key = FileKey::generate();
        let (a, b, c) = (
            MemberSecret::generate(),
            MemberSecret::generate(),
            MemberSecret::generate(),
        );
        let mk = MeshKey::generate();
        let to_b = KeyBox::for_member(&mesh, &file, &a, &b.public(), &key).unwrap();
        assert!(to_b.is_for(&b.public()) && !to_b.is_for(&c.public()));
        let none = |_| None;
        let got = to_b.open(&mesh, &file, none, &a.public(), &b).unwrap();
        assert_eq!(got.as_bytes(), key.as_bytes());
        assert!(to_b.open(&mesh, &file, none, &a.public(), &c).is_err());
        assert!(
            to_b.open(&mesh, &ItemId::new(), none, &a.public(), &b)
                .is_err()
        );
        assert!(
            to_b.open(&MeshId::new(), &file, none, &a.public(), &b)
                .is_err()
        );
        let all = KeyBox::for_mesh(&mesh, &file, 0, &mk, &key).unwrap();
        let held = |e: Epoch| (e == 0).then(|| mk.clone());
        let got = all.open(&mesh, &file, held, &a.public(), &c).unwrap();
        assert_eq!(got.as_bytes(), key.as_bytes());
        assert!(all.open(&mesh, &file, none, &a.public(), &c).is_err());
        assert!(
            all.open(&mesh, &ItemId::new(), held, &a.public(), &c)
                .is_err()
        );
    }

    #[test]
    fn manifests_are_checked_when_opened() {
        let mesh = MeshId::new();
        let file = ItemId::new();
        let key = FileKey::generate();
        let mut m = Manifest {
            name: "a.txt".into(),
            size: 3,
            mime: "text/plain".into(),
            blake3: *blake3::hash(b"abc").as_bytes(),
            chunks: vec![7; 32],
            tags: vec![],
            expires_at: None,
        };
        let s = key.seal_manifest(&mesh, &file, &m).unwrap();
        assert_eq!(key.open_manifest(&mesh, &file, &s).unwrap(), m);
        assert!(key.open_manifest(&mesh, &ItemId::new(), &s).is_err());
        m.chunks = vec![7; 64];
        let s = key.seal_manifest(&mesh, &file, &m).unwrap();
        assert!(
            key.open_manifest(&mesh, &file, &s).is_err(),
            "two chunks for 3 bytes"
        );
    }

    /// Attack: a malicious author seals a manifest whose name climbs out of the download
    /// directory, moves the terminal's cursor, or reads as another name (a bidirectional
    /// override), or that claims more than a share may hold. Every reader refuses it when
    /// opening it, so no such name is ever shown or written to disk.
    #[test]
    fn a_hostile_manifest_is_refused_when_opened() {
        let (mesh, file, key) = (MeshId::new(), ItemId::new(), FileKey::generate());
        let good = Manifest {
            name: "a.txt".into(),
            size: 3,
            mime: "text/plain".into(),
            blake3: [0; 32],
            chunks: vec![7; 32],
            tags: vec![],
            expires_at: None,
        };
        let opens = |m: &Manifest| {
            let s = key.seal_manifest(&mesh, &file, m).unwrap();
            key.open_manifest(&mesh, &file, &s).is_ok()
        };
        assert!(opens(&good));
        for name in [
            "../../.bashrc",
            "/etc/passwd",
            "..\\..\\x",
            "\u{1b}[2J\u{1b}[31mred",
            "evil\u{202E}hs.txt",
            "zero\u{200B}width",
            "bom\u{FEFF}",
        ] {
            let m = Manifest {
                name: name.into(),
                ..good.clone()
            };
            assert!(!opens(&m), "{name:?} opened");
        }
        // Shown as text to the model (quoted there), never a path: a name may hold `<`.
        assert!(opens(&Manifest {
            name: "<system-reminder>".into(),
            ..good.clone()
        }));
        for (size, chunks) in [
            (MAX_FILE + 1, MAX_CHUNKS + 1),
            (3, 10_000),
            (MAX_FILE, MAX_CHUNKS - 1),
            (u64::MAX, 1),
        ] {
            let m = Manifest {
                size,
                chunks: vec![7; 32 * chunks],
                ..good.clone()
            };
            assert!(!opens(&m), "{size} bytes in {chunks} chunks opened");
        }
    }
}
