//! `claudemesh backup <file>` / `restore <file>`: the config directory (keys, meshes and
//! their local state, vaults, config, and the embedded relay's data) in one file sealed
//! with a passphrase: Argon2id (64 MiB, 3 passes) derives the key, XChaCha20-Poly1305
//! seals.
//!
//! File format: the line `claudemesh-backup v1`, a JSON header line (KDF parameters, salt,
//! nonce — authenticated as associated data), then the ciphertext of a JSON list of files.
//! SQLite databases are copied with `VACUUM INTO`, so a backup taken while the daemon runs
//! is consistent.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use claudemesh_daemon::Paths;
use claudemesh_schema::crypto::random_bytes;
use claudemesh_schema::encoding::{b64, unb64};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::cli::{BackupArgs, RestoreArgs};
use crate::exit::{Exit, Failure, Res};

const MAGIC: &str = "claudemesh-backup v1";
const M_KIB: u32 = 64 * 1024;
const T: u32 = 3;
const P: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
    nonce: String,
    created_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    path: String,
    mode: u32,
    data: String,
}

fn key(pass: &str, salt: &[u8], h: &Header) -> Result<[u8; 32], Failure> {
    if h.kdf != "argon2id" || h.m_kib > 1 << 20 || h.t > 16 || h.p > 16 {
        return Err(Failure::new(
            Exit::Error,
            "unsupported backup key derivation parameters",
        ));
    }
    let params = Params::new(h.m_kib, h.t, h.p, Some(32))
        .map_err(|e| Failure::new(Exit::Error, format!("bad key derivation parameters: {e}")))?;
    let mut k = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass.as_bytes(), salt, &mut k)
        .map_err(|e| Failure::new(Exit::Error, format!("key derivation failed: {e}")))?;
    Ok(k)
}

/// The passphrase: from `--passphrase-file`, else `CLAUDEMESH_BACKUP_PASSPHRASE`, else
/// typed: on a terminal without echo, and for a new backup (`confirm`) twice, since a typo
/// would make the backup unopenable; elsewhere the first line of stdin. Never logged.
pub(crate) fn passphrase(file: Option<&Path>, confirm: bool) -> Result<String, Failure> {
    let p = if let Some(f) = file {
        std::fs::read_to_string(f)
            .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", f.display())))?
    } else if let Ok(p) = std::env::var("CLAUDEMESH_BACKUP_PASSPHRASE") {
        p
    } else {
        let p = crate::prompt::secret("passphrase: ")?;
        if confirm && crate::prompt::interactive() {
            let again = crate::prompt::secret("passphrase again: ")?;
            if again != p {
                return Err(Failure::new(
                    Exit::Usage,
                    "the two passphrases differ; nothing was written, run it again",
                ));
            }
        }
        p
    };
    let p = p.trim_end_matches(['\n', '\r']).to_string();
    if p.chars().count() < 8 {
        return Err(Failure::new(
            Exit::Usage,
            "the passphrase must have at least 8 characters",
        ));
    }
    Ok(p)
}

#[cfg(unix)]
fn mode_of(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    m.permissions().mode() & 0o777
}
#[cfg(not(unix))]
fn mode_of(_: &std::fs::Metadata) -> u32 {
    0o600
}

/// What goes into a backup: every file of the config directory except runtime files,
/// logs and SQLite side files; databases as consistent copies.
fn collect(dir: &Path, rel: &Path, tmp: &Path, out: &mut Vec<Entry>) -> Res {
    let here = dir.join(rel);
    let entries = std::fs::read_dir(&here)
        .map_err(|e| Failure::new(Exit::Error, format!("cannot read {}: {e}", here.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let rel_path = rel.join(&name);
        // Follow symlinks (a linked config.toml is common): back up what they point to.
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            if rel_path == Path::new("logs") || name.ends_with(".tmp") {
                continue;
            }
            collect(dir, &rel_path, tmp, out)?;
            continue;
        }
        let skip = ["daemon.sock", "daemon.lock"].contains(&name.as_str())
            || name.ends_with("-wal")
            || name.ends_with("-shm")
            || name.ends_with(".tmp");
        if skip {
            continue;
        }
        let data = if name.ends_with(".db") {
            let copy = tmp.join(format!("{}.copy", out.len()));
            let conn = rusqlite::Connection::open_with_flags(
                e.path(),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|err| {
                Failure::new(
                    Exit::Error,
                    format!("cannot open {}: {err}", e.path().display()),
                )
            })?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(|err| Failure::new(Exit::Error, err.to_string()))?;
            conn.execute("VACUUM INTO ?1", [copy.display().to_string()])
                .map_err(|err| {
                    Failure::new(
                        Exit::Error,
                        format!("cannot copy {}: {err}", e.path().display()),
                    )
                })?;
            std::fs::read(&copy).map_err(|err| Failure::new(Exit::Error, err.to_string()))?
        } else {
            std::fs::read(e.path()).map_err(|err| {
                Failure::new(
                    Exit::Error,
                    format!("cannot read {}: {err}", e.path().display()),
                )
            })?
        };
        out.push(Entry {
            path: rel_path.to_string_lossy().to_string(),
            mode: mode_of(&meta),
            data: b64(&data),
        });
    }
    Ok(())
}

pub(crate) fn backup(a: BackupArgs) -> Res {
    let (file, pass_file, json) = (&a.file, a.passphrase_file.as_deref(), a.json);
    let paths = crate::daemon::paths()?;
    if !paths.dir.exists() {
        return Err(Failure::new(
            Exit::NotFound,
            format!("{} does not exist: nothing to back up", paths.dir.display()),
        ));
    }
    let pass = passphrase(pass_file, true)?;
    let tmp = tempdir_in(&paths.dir)?;
    let mut files = Vec::new();
    let r = collect(&paths.dir, Path::new(""), &tmp, &mut files);
    let _ = std::fs::remove_dir_all(&tmp);
    r?;
    let plain = serde_json::to_vec(&files).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    let salt = random_bytes::<16>();
    let nonce = random_bytes::<24>();
    let header = Header {
        kdf: "argon2id".into(),
        m_kib: M_KIB,
        t: T,
        p: P,
        salt: b64(&salt),
        nonce: b64(&nonce),
        created_at: claudemesh_schema::now_ms(),
    };
    let hline =
        serde_json::to_string(&header).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    let k = key(&pass, &salt, &header)?;
    let ct = XChaCha20Poly1305::new((&k).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: hline.as_bytes(),
            },
        )
        .map_err(|_| Failure::new(Exit::Error, "encryption failed"))?;
    let mut out = Vec::with_capacity(ct.len() + 256);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(hline.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&ct);
    write_private(file, &out)?;
    if json {
        crate::output::json(
            "backup",
            serde_json::json!({"file": file, "files": files.len(), "bytes": out.len()}),
        );
    } else {
        out!(
            "backed up {} files ({} bytes) to {}; keep the passphrase: without it the backup cannot be opened",
            files.len(),
            out.len(),
            file.display()
        );
    }
    Ok(())
}

pub(crate) fn restore(a: RestoreArgs) -> Res {
    let (file, pass_file, yes) = (&a.file, a.passphrase_file.as_deref(), a.yes);
    let paths = crate::daemon::paths()?;
    let raw = std::fs::read(file)
        .map_err(|e| Failure::new(Exit::Usage, format!("cannot read {}: {e}", file.display())))?;
    let mut parts = raw.splitn(3, |b| *b == b'\n');
    let (Some(magic), Some(hline), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Failure::new(
            Exit::Usage,
            format!("{} is not a claudemesh backup", file.display()),
        ));
    };
    if magic != MAGIC.as_bytes() {
        return Err(Failure::new(
            Exit::Usage,
            format!("{} is not a claudemesh backup", file.display()),
        ));
    }
    let header: Header = serde_json::from_slice(hline)
        .map_err(|e| Failure::new(Exit::Usage, format!("backup header is damaged: {e}")))?;
    let (Ok(salt), Ok(nonce)) = (unb64(&header.salt), unb64(&header.nonce)) else {
        return Err(Failure::new(Exit::Usage, "backup header is damaged"));
    };
    if nonce.len() != 24 {
        return Err(Failure::new(Exit::Usage, "backup header is damaged"));
    }
    // Hold the daemon's instance lock for the whole restore: no daemon can start (a hook
    // or the MCP shim would otherwise autostart one) while files are being replaced.
    let Some(_lock) = hold_lock(&paths) else {
        return Err(Failure::new(
            Exit::Error,
            "the daemon is running: stop it first (`claudemesh daemon stop`), then restore",
        ));
    };
    let existing = paths.db().exists() || paths.keys().exists();
    if existing && !yes {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "{} already holds an identity; pass --yes to replace it with the backup",
                paths.dir.display()
            ),
        ));
    }
    let pass = passphrase(pass_file, false)?;
    let k = key(&pass, &salt, &header)?;
    let plain = XChaCha20Poly1305::new((&k).into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: ct,
                aad: hline,
            },
        )
        .map_err(|_| {
            Failure::new(
                Exit::Error,
                "wrong passphrase, or the backup file is damaged",
            )
        })?;
    let files: Vec<Entry> = serde_json::from_slice(&plain)
        .map_err(|e| Failure::new(Exit::Error, format!("backup content is damaged: {e}")))?;
    // Check and decode everything before touching the directory.
    let mut decoded = Vec::with_capacity(files.len());
    for f in &files {
        let rel = Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Failure::new(
                Exit::Error,
                format!("backup names an unsafe path {:?}", f.path),
            ));
        }
        let data =
            unb64(&f.data).map_err(|_| Failure::new(Exit::Error, "backup content is damaged"))?;
        // Owner bits only: nothing restored is readable by others.
        decoded.push((rel.to_path_buf(), data, (f.mode & 0o700) | 0o600));
    }
    // The backup replaces the identity: keys of meshes joined after it must not stay, nor
    // their vaults (sealed under those keys, nothing could open them).
    let _ = std::fs::remove_dir_all(paths.keys());
    let _ = std::fs::remove_dir_all(paths.vault());
    claudemesh_daemon::paths::ensure_private_dir(&paths.dir).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot create {}: {e}", paths.dir.display()),
        )
    })?;
    for (rel, data, mode) in &decoded {
        let target = paths.dir.join(rel);
        if let Some(parent) = target.parent() {
            claudemesh_daemon::paths::ensure_private_dir(parent).map_err(|e| {
                Failure::new(
                    Exit::Error,
                    format!("cannot create {}: {e}", parent.display()),
                )
            })?;
        }
        // A restored database must not meet the old one's write-ahead log.
        for side in ["-wal", "-shm"] {
            let mut p = target.as_os_str().to_owned();
            p.push(side);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        write_mode(&target, data, *mode)?;
    }
    out!(
        "restored {} files into {}; start the daemon (`claudemesh daemon start`) and your meshes reconnect",
        files.len(),
        paths.dir.display()
    );
    Ok(())
}

/// The instance lock, held (`None` when a daemon holds it).
fn hold_lock(paths: &Paths) -> Option<std::fs::File> {
    let _ = claudemesh_daemon::paths::ensure_private_dir(&paths.dir);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(paths.lock())
        .ok()?;
    f.try_lock().ok()?;
    Some(f)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, Failure> {
    // Copies an interrupted backup left behind hold plaintext databases: remove them.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(".backup-") && n.ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // A fresh name, created (not reused): a directory or link someone planted under a
    // predictable name is never written into.
    let t = dir.join(format!(".backup-{}.tmp", unique()));
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(&t)
        .map_err(|e| Failure::new(Exit::Error, format!("cannot create {}: {e}", t.display())))?;
    Ok(t)
}

/// A name part no one can predict.
fn unique() -> String {
    b64(&random_bytes::<12>())
}

fn write_private(path: &Path, data: &[u8]) -> Res {
    write_mode(path, data, 0o600)
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Res {
    // Next to the target, under a fresh name, created exclusively: a planted file or
    // link of that name makes the write fail instead of being followed.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", unique()));
    let r = (|| -> std::io::Result<()> {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(mode);
        }
        let mut f = o.open(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
        f.sync_all()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e| Failure::new(Exit::Error, format!("cannot write {}: {e}", path.display())))
}
