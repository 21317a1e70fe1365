//! The vault: secrets (API tokens and the like) a member keeps on this machine, one vault
//! per mesh membership, in `vault/<mesh id>.vault` (0600, in a 0700 directory). Values go
//! in through `vault_set` and never leave through IPC: `vault_list` shows names and
//! metadata, and the one way to read a value is [`read_secret`], for the daemon's own use
//! (the deploy feature wraps a value to a hosting member's key with it). Nothing of the
//! vault is sent to the relay or to a peer.
//!
//! The file is sealed ([`claudemesh_schema::vault`]: XChaCha20-Poly1305 under a key
//! derived from this member's secret key of the mesh, the mesh id and a version byte as
//! associated data) and rewritten whole, atomically and synced, on every change. It is
//! inside the config directory, so `claudemesh backup` carries it with the key it is
//! sealed under. A file that does not open (changed, damaged, or sealed under a key this
//! machine no longer has) is never written over: every call says so until the user
//! restores it or moves it away, so a write can never silently drop the other entries.
//!
//! Why not the OS keychain (the `keyring` crate): the daemon often runs headless (a
//! systemd user service on a server, a container) where no Secret Service is running, so
//! the file would be needed anyway; the keychain would be a second store to keep in step
//! with backups; and `keyring` brings its own dependency tree (D-Bus, platform bindings)
//! for no protection the 0600 file and the member key do not already give against other
//! users.

use claudemesh_schema::MeshId;
use claudemesh_schema::crypto::MemberSecret;
use claudemesh_schema::ipc::vault::{
    VaultDeleteParams, VaultDeleteResult, VaultEntryInfo, VaultListParams, VaultListResult,
    VaultSetParams, VaultSetResult,
};
use claudemesh_schema::vault::{self as rules, OpenError, RuleError, VaultKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::{Zeroize as _, Zeroizing};

use crate::context::Daemon;
use crate::error::Error;
use crate::paths::Paths;

/// Serialises the read-modify-write of vault files. Changes are rare and short, so one
/// lock for every mesh is enough (and one daemon per config directory is guaranteed by
/// its instance lock). Reads take no lock: a file is replaced by a rename, whole.
static WRITES: Mutex<()> = Mutex::new(());

/// A vault operation failed. Messages say what to do and never hold a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum VaultError {
    /// A name, value or description breaks the rules.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// No entry of that name.
    #[error(
        "the vault of mesh {mesh} has no entry {name:?}; `claudemesh vault list --mesh {mesh}` shows the names"
    )]
    NotFound {
        /// The mesh's name.
        mesh: String,
        /// The name asked for.
        name: String,
    },
    /// Too many entries or bytes.
    #[error(
        "the vault of mesh {mesh} is full (at most {} entries and {} MiB of values); delete entries with `claudemesh vault rm <name>`",
        rules::MAX_ENTRIES,
        rules::MAX_TOTAL >> 20
    )]
    Full {
        /// The mesh's name.
        mesh: String,
    },
    /// The file does not open.
    #[error(
        "the vault of mesh {mesh} ({path}) cannot be opened: {why}. Nothing was read or changed, \
         and nothing will be written over it: restore it from a backup (`claudemesh restore`), \
         or move the file away to start an empty vault (its entries are then lost)"
    )]
    Damaged {
        /// The mesh's name.
        mesh: String,
        /// The file.
        path: PathBuf,
        /// Why it does not open.
        why: OpenError,
    },
    /// The file is readable by others.
    #[error("vault file {path} has mode {mode:o}; it must be 0600 (run: chmod 600 {path})")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Reading or writing failed.
    #[error("cannot access vault file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Rule(_) => Self::invalid(e.to_string()),
            VaultError::NotFound { .. } => Self::not_found(e.to_string()),
            // The file on disk is in the way of the operation: the user decides what
            // becomes of it.
            VaultError::Full { .. }
            | VaultError::Damaged { .. }
            | VaultError::Permissions { .. } => Self::conflict(e.to_string()),
            VaultError::Io { .. } => Self::internal(e),
        }
    }
}

/// The sealed content of a vault file.
#[derive(Default, Serialize, Deserialize)]
struct Stored {
    /// By name.
    entries: Vec<Entry>,
}

/// One entry as stored. Its value is wiped from memory when dropped; `Debug` shows
/// everything but the value.
#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    #[serde(default)]
    description: String,
    value: String,
    created_at: i64,
    updated_at: i64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("size", &self.value.len())
            .finish_non_exhaustive()
    }
}

impl Entry {
    fn info(&self) -> VaultEntryInfo {
        VaultEntryInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            size: self.value.len() as u64,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Path of the vault file of `mesh` in the vault directory `dir`.
fn vault_path(dir: &Path, mesh: &MeshId) -> PathBuf {
    dir.join(format!("{mesh}.vault"))
}

/// One mesh's vault file: where it is, the key it is sealed under, and the mesh's name
/// (for messages).
struct Vault {
    dir: PathBuf,
    path: PathBuf,
    key: VaultKey,
    mesh_name: String,
}

impl Vault {
    fn new(dir: PathBuf, mesh: &MeshId, member: &MemberSecret, mesh_name: String) -> Self {
        Self {
            path: vault_path(&dir, mesh),
            dir,
            key: VaultKey::derive(member, mesh),
            mesh_name,
        }
    }

    fn io(&self, source: std::io::Error) -> VaultError {
        VaultError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The entries; none when the file does not exist yet.
    fn load(&self) -> Result<Stored, VaultError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
            Err(e) => return Err(self.io(e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&self.path)
                .map_err(|e| self.io(e))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::Permissions {
                    path: self.path.clone(),
                    mode,
                });
            }
        }
        let damaged = |why| VaultError::Damaged {
            mesh: self.mesh_name.clone(),
            path: self.path.clone(),
            why,
        };
        let plain = self.key.open(&bytes).map_err(damaged)?;
        // Sealed by us, so it parses; if it does not, it is damage all the same.
        serde_json::from_slice(&plain).map_err(|_| damaged(OpenError::Sealed))
    }

    /// Seal and write `stored` in place of the file, durably.
    fn save(&self, stored: &Stored) -> Result<(), VaultError> {
        crate::paths::ensure_private_dir(&self.dir).map_err(|source| VaultError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let plain = Zeroizing::new(serde_json::to_vec(stored).map_err(|e| self.io(e.into()))?);
        let sealed = self
            .key
            .seal(&plain)
            .map_err(|e| self.io(std::io::Error::other(e.to_string())))?;
        crate::paths::write_atomic(&self.path, &sealed).map_err(|e| self.io(e))
    }

    fn set(
        &self,
        name: &str,
        value: Zeroizing<String>,
        description: Option<String>,
        now: i64,
    ) -> Result<(VaultEntryInfo, bool), VaultError> {
        let _w = WRITES.lock().unwrap_or_else(|p| p.into_inner());
        let mut stored = self.load()?;
        let replaced = match stored
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
        {
            Ok(i) => {
                let e = &mut stored.entries[i];
                e.value.zeroize();
                e.value.push_str(&value);
                if let Some(d) = description {
                    e.description = d;
                }
                e.updated_at = now;
                true
            }
            Err(i) => {
                if stored.entries.len() >= rules::MAX_ENTRIES {
                    return Err(self.full());
                }
                stored.entries.insert(
                    i,
                    Entry {
                        name: name.to_string(),
                        description: description.unwrap_or_default(),
                        value: value.to_string(),
                        created_at: now,
                        updated_at: now,
                    },
                );
                false
            }
        };
        let total: usize = stored.entries.iter().map(|e| e.value.len()).sum();
        if total > rules::MAX_TOTAL {
            return Err(self.full());
        }
        self.save(&stored)?;
        let info = stored
            .entries
            .iter()
            .find(|e| e.name == name)
            .map(Entry::info)
            .ok_or_else(|| self.io(std::io::Error::other("entry vanished while storing it")))?;
        Ok((info, replaced))
    }

    fn delete(&self, name: &str) -> Result<(), VaultError> {
        let _w = WRITES.lock().unwrap_or_else(|p| p.into_inner());
        let mut stored = self.load()?;
        let Ok(i) = stored
            .entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
        else {
            return Err(self.not_found(name));
        };
        stored.entries.remove(i);
        self.save(&stored)
    }

    fn list(&self) -> Result<Vec<VaultEntryInfo>, VaultError> {
        Ok(self.load()?.entries.iter().map(Entry::info).collect())
    }

    fn value(&self, name: &str) -> Result<Zeroizing<String>, VaultError> {
        let stored = self.load()?;
        stored
            .entries
            .iter()
            .find(|e| e.name == name)
            .map(|e| Zeroizing::new(e.value.clone()))
            .ok_or_else(|| self.not_found(name))
    }

    fn full(&self) -> VaultError {
        VaultError::Full {
            mesh: self.mesh_name.clone(),
        }
    }

    fn not_found(&self, name: &str) -> VaultError {
        VaultError::NotFound {
            mesh: self.mesh_name.clone(),
            name: claudemesh_schema::names::one_line(name, rules::MAX_NAME + 8),
        }
    }
}

/// The vault of the mesh `sel` names (or the only/default mesh), and that mesh's id.
fn vault_of(d: &Daemon, sel: Option<&str>) -> Result<(Vault, MeshId), Error> {
    let m = d.select(sel)?;
    Ok((
        Vault::new(d.paths.vault(), &m.id, &m.keys.member, m.name()),
        m.id,
    ))
}

/// Run `f` on a blocking thread: vault calls read, seal and sync a file.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
        .map_err(Error::from)
}

/// `vault_set`: store or replace an entry (an omitted description keeps the old one).
pub(crate) async fn set(d: &Arc<Daemon>, p: VaultSetParams) -> Result<VaultSetResult, Error> {
    rules::check_name(&p.name).map_err(VaultError::from)?;
    rules::check_value(p.value.expose()).map_err(VaultError::from)?;
    let description = p
        .description
        .as_deref()
        .map(rules::check_description)
        .transpose()
        .map_err(VaultError::from)?;
    let (v, mesh) = vault_of(d, p.mesh.as_deref())?;
    let mesh_name = v.mesh_name.clone();
    let name = p.name.clone();
    let value = p.value.into_zeroizing();
    let now = claudemesh_schema::now_ms();
    let (entry, replaced) = blocking(move || v.set(&name, value, description, now)).await?;
    tracing::debug!(mesh = %mesh.short(), name = %entry.name, size = entry.size, replaced, "vault entry stored");
    Ok(VaultSetResult {
        mesh,
        mesh_name,
        entry,
        replaced,
    })
}

/// `vault_list`: names and metadata, never values.
pub(crate) async fn list(d: &Arc<Daemon>, p: VaultListParams) -> Result<VaultListResult, Error> {
    let (v, mesh) = vault_of(d, p.mesh.as_deref())?;
    let mesh_name = v.mesh_name.clone();
    let entries = blocking(move || v.list()).await?;
    Ok(VaultListResult {
        mesh,
        mesh_name,
        entries,
    })
}

/// `vault_delete`.
pub(crate) async fn delete(
    d: &Arc<Daemon>,
    p: VaultDeleteParams,
) -> Result<VaultDeleteResult, Error> {
    let (v, mesh) = vault_of(d, p.mesh.as_deref())?;
    let mesh_name = v.mesh_name.clone();
    let name = p.name.clone();
    blocking(move || v.delete(&name)).await?;
    tracing::debug!(mesh = %mesh.short(), name = %p.name, "vault entry deleted");
    Ok(VaultDeleteResult {
        mesh,
        mesh_name,
        name: p.name,
    })
}

/// The value of the vault entry `name` of the joined mesh `mesh`, for the daemon's own
/// use: the one way a value leaves the vault. No IPC method returns it; the deploy
/// feature calls this to wrap a secret to the key of the member that hosts a service.
/// The caller keeps it in the [`Zeroizing`] it comes in, and never logs it.
pub(crate) async fn read_secret(
    d: &Daemon,
    mesh: &MeshId,
    name: &str,
) -> Result<Zeroizing<String>, VaultError> {
    rules::check_name(name)?;
    let Some(m) = d.mesh(mesh) else {
        return Err(VaultError::NotFound {
            mesh: mesh.short(),
            name: name.to_string(),
        });
    };
    let v = Vault::new(d.paths.vault(), &m.id, &m.keys.member, m.name());
    let name = name.to_string();
    tokio::task::spawn_blocking(move || v.value(&name))
        .await
        .map_err(|e| VaultError::Io {
            path: d.paths.vault(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Delete the vault of a mesh this machine left: it is sealed under the member key that
/// left with it, so nothing could open it again (a backup holds both).
pub(crate) fn forget(paths: &Paths, mesh: &MeshId) {
    let path = vault_path(&paths.vault(), mesh);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the vault of a mesh left")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(dir: &Path, member: &MemberSecret, mesh: &MeshId) -> Vault {
        Vault::new(dir.join("vault"), mesh, member, "test".into())
    }

    fn z(s: &str) -> Zeroizing<String> {
        Zeroizing::new(s.to_string())
    }

    #[test]
    fn vault_entries_round_trip_sealed_and_private() {
        let root = tempfile::tempdir().unwrap();
        let (member, mesh) = (MemberSecret::generate(), MeshId::new());
        let v = vault(root.path(), &member, &mesh);
        assert!(v.list().unwrap().is_empty(), "no file: an empty vault");
        let (e, replaced) = v
            .set("B_TOKEN", z("value-bbb"), Some("b".into()), 10)
            .unwrap();
        assert!(!replaced);
        assert_eq!((e.size, e.created_at, e.updated_at), (9, 10, 10));
        v.set("A_TOKEN", z("value-aaa"), None, 11).unwrap();
        // Replacing keeps the creation time and, with no new one, the description.
        let (e, replaced) = v.set("B_TOKEN", z("value-b2"), None, 12).unwrap();
        assert!(replaced);
        assert_eq!(
            (e.description.as_str(), e.created_at, e.updated_at),
            ("b", 10, 12)
        );
        let names: Vec<_> = v.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["A_TOKEN", "B_TOKEN"]);
        assert_eq!(&*v.value("B_TOKEN").unwrap(), "value-b2");
        let raw = std::fs::read(&v.path).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"value-aaa"), "sealed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&v.path), 0o600);
            assert_eq!(mode(&v.dir), 0o700);
        }
        v.delete("A_TOKEN").unwrap();
        assert!(matches!(
            v.delete("A_TOKEN"),
            Err(VaultError::NotFound { .. })
        ));
        assert!(matches!(
            v.value("A_TOKEN"),
            Err(VaultError::NotFound { .. })
        ));
        // Another member's key does not open it, and writes through it are refused.
        let before = std::fs::read(&v.path).unwrap();
        let other = vault(root.path(), &MemberSecret::generate(), &mesh);
        assert!(matches!(other.list(), Err(VaultError::Damaged { .. })));
        assert!(matches!(
            other.set("C", z("c"), None, 13),
            Err(VaultError::Damaged { .. })
        ));
        assert_eq!(
            std::fs::read(&v.path).unwrap(),
            before,
            "a refused write changes nothing"
        );
        assert_eq!(v.list().unwrap().len(), 1);
    }

    #[test]
    fn a_full_vault_refuses_new_entries_but_takes_replacements() {
        let root = tempfile::tempdir().unwrap();
        let (member, mesh) = (MemberSecret::generate(), MeshId::new());
        let v = vault(root.path(), &member, &mesh);
        let mut stored = Stored::default();
        for i in 0..rules::MAX_ENTRIES {
            stored.entries.push(Entry {
                name: format!("K{i:04}"),
                description: String::new(),
                value: "v".into(),
                created_at: 1,
                updated_at: 1,
            });
        }
        v.save(&stored).unwrap();
        assert!(matches!(
            v.set("ZZZ", z("v"), None, 2),
            Err(VaultError::Full { .. })
        ));
        v.set("K0001", z("new"), None, 2).unwrap();
        // Bytes: one value short of the budget, written at once; the last fits exactly.
        let big = "x".repeat(rules::MAX_VALUE);
        let mut stored = Stored::default();
        for i in 0..rules::MAX_TOTAL / rules::MAX_VALUE - 1 {
            stored.entries.push(Entry {
                name: format!("B{i:04}"),
                description: String::new(),
                value: big.clone(),
                created_at: 1,
                updated_at: 1,
            });
        }
        v.save(&stored).unwrap();
        v.set("LAST", z(&big), None, 3).unwrap();
        assert!(matches!(
            v.set("MORE", z("x"), None, 4),
            Err(VaultError::Full { .. })
        ));
        assert_eq!(v.list().unwrap().len(), rules::MAX_TOTAL / rules::MAX_VALUE);
    }

    #[test]
    fn vault_errors_never_show_a_value() {
        let root = tempfile::tempdir().unwrap();
        let (member, mesh) = (MemberSecret::generate(), MeshId::new());
        let v = vault(root.path(), &member, &mesh);
        v.set("K", z("s3cr3t-value"), None, 1).unwrap();
        let mut raw = std::fs::read(&v.path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x55;
        std::fs::write(&v.path, &raw).unwrap();
        let e = v.list().unwrap_err().to_string();
        assert!(
            e.contains("cannot be opened") && e.contains("restore"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        let stored = Stored {
            entries: vec![Entry {
                name: "K".into(),
                description: String::new(),
                value: "s3cr3t-value".into(),
                created_at: 1,
                updated_at: 1,
            }],
        };
        assert!(!format!("{:?}", stored.entries).contains("s3cr3t"));
    }
}
