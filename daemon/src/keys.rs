//! Secret key files: one per mesh, `keys/<mesh id>.key`, mode 0600 in a 0700 directory.
//!
//! A key file holds the member's ed25519 secret, the mesh key, and the secrets of the
//! daemon's sessions in that mesh. It is written atomically (temp file, fsync, rename) so
//! a crash never leaves half a key.

use claudemesh_schema::MeshId;
use claudemesh_schema::SessionId;
use claudemesh_schema::crypto::{BoxSecret, MemberSecret, MeshKey};
use claudemesh_schema::encoding;
use claudemesh_schema::epoch::Epoch;
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};
use zeroize::Zeroize as _;

/// A key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing failed.
    #[error("cannot access key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is damaged.
    #[error(
        "key file {path} is damaged ({detail}); restore it from a backup or leave and re-join the mesh"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        detail: String,
    },
    /// The file is readable by others.
    #[error("key file {path} has mode {mode:o}; it must be 0600 (run: chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// The secrets of one mesh membership.
pub struct MeshKeys {
    /// The member key.
    pub member: MemberSecret,
    /// The mesh key.
    pub mesh_key: MeshKey,
    /// The daemon's own session.
    pub session: SessionId,
    /// Its x25519 secret.
    pub session_secret: BoxSecret,
    /// Keys of epochs after 0 given at join (those made before this member was admitted);
    /// later epochs come boxed in the op log and are opened from the store.
    pub epochs: Vec<(Epoch, MeshKey)>,
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKeys")
            .field("member", &self.member.public().short())
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    mesh: MeshId,
    member_secret: String,
    mesh_key: String,
    session: SessionId,
    session_secret: String,
    /// Later epochs' keys given at join (absent in files written before epochs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    epochs: Vec<EpochKey>,
}

#[derive(Serialize, Deserialize)]
struct EpochKey {
    epoch: Epoch,
    key: String,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        self.member_secret.zeroize();
        self.mesh_key.zeroize();
        self.session_secret.zeroize();
        for e in &mut self.epochs {
            e.key.zeroize();
        }
    }
}

/// Path of the key file of `mesh`.
pub fn key_path(keys_dir: &Path, mesh: &MeshId) -> PathBuf {
    keys_dir.join(format!("{mesh}.key"))
}

impl MeshKeys {
    /// Fresh keys for a new membership (the mesh key comes from the creator or the admin).
    pub fn generate(member: MemberSecret, mesh_key: MeshKey) -> Self {
        Self {
            member,
            mesh_key,
            session: SessionId::new(),
            session_secret: BoxSecret::generate(),
            epochs: Vec::new(),
        }
    }

    /// Write the key file for `mesh`.
    pub fn save(&self, keys_dir: &Path, mesh: &MeshId) -> Result<(), KeyError> {
        let path = key_path(keys_dir, mesh);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        crate::paths::ensure_private_dir(keys_dir).map_err(io)?;
        let kf = KeyFile {
            version: 1,
            mesh: *mesh,
            member_secret: encoding::b64(&self.member.to_bytes()[..]),
            mesh_key: encoding::b64(self.mesh_key.as_bytes()),
            session: self.session,
            session_secret: encoding::b64(&self.session_secret.to_bytes()[..]),
            epochs: self
                .epochs
                .iter()
                .map(|(epoch, k)| EpochKey {
                    epoch: *epoch,
                    key: encoding::b64(k.as_bytes()),
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&kf).map_err(|e| KeyError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let r = crate::paths::write_atomic(&path, &json).map_err(io);
        json.zeroize();
        r
    }

    /// Read the key file of `mesh`, refusing one that others can read.
    pub fn load(keys_dir: &Path, mesh: &MeshId) -> Result<Self, KeyError> {
        let path = key_path(keys_dir, mesh);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path, mode });
            }
        }
        let mut text = std::fs::read(&path).map_err(io)?;
        let parsed: Result<KeyFile, _> = serde_json::from_slice(&text);
        text.zeroize();
        let corrupt = |detail: &str| KeyError::Corrupt {
            path: path.clone(),
            detail: detail.into(),
        };
        let kf = parsed.map_err(|_| corrupt("not valid JSON"))?;
        if kf.mesh != *mesh {
            return Err(corrupt("it belongs to another mesh"));
        }
        let member: [u8; 32] =
            encoding::unb64_array(&kf.member_secret).ok_or_else(|| corrupt("bad member key"))?;
        let mesh_key: [u8; 32] =
            encoding::unb64_array(&kf.mesh_key).ok_or_else(|| corrupt("bad mesh key"))?;
        let sess: [u8; 32] =
            encoding::unb64_array(&kf.session_secret).ok_or_else(|| corrupt("bad session key"))?;
        let mut epochs = Vec::with_capacity(kf.epochs.len());
        for e in &kf.epochs {
            let k: [u8; 32] =
                encoding::unb64_array(&e.key).ok_or_else(|| corrupt("bad epoch key"))?;
            epochs.push((e.epoch, MeshKey::from_bytes(k)));
        }
        Ok(Self {
            member: MemberSecret::from_bytes(&member),
            mesh_key: MeshKey::from_bytes(mesh_key),
            session: kf.session,
            session_secret: BoxSecret::from_bytes(sess),
            epochs,
        })
    }

    /// Delete the key file of `mesh`.
    pub fn remove(keys_dir: &Path, mesh: &MeshId) -> Result<(), KeyError> {
        let path = key_path(keys_dir, mesh);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyError::Io { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let mesh = MeshId::new();
        let k = MeshKeys::generate(MemberSecret::generate(), MeshKey::generate());
        k.save(&keys, &mesh).unwrap();
        let back = MeshKeys::load(&keys, &mesh).unwrap();
        assert_eq!(back.member.public(), k.member.public());
        assert_eq!(back.mesh_key.as_bytes(), k.mesh_key.as_bytes());
        assert_eq!(back.session, k.session);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let p = key_path(&keys, &mesh);
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
                0o700
            );
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                MeshKeys::load(&keys, &mesh),
                Err(KeyError::Permissions { .. })
            ));
        }
        assert!(MeshKeys::load(&keys, &MeshId::new()).is_err());
    }
}
