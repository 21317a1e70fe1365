//! Files and directories that survive power loss, shared by the relay and the daemon.
//!
//! POSIX makes a file's bytes durable with an `fsync` of the file, and its *name* only with
//! an `fsync` of the directory that holds it. A new directory is a name in its parent too:
//! without a sync of the parent, a power cut can take the directory and everything in it,
//! however carefully each file inside was synced. (SQLite syncs the directory of the
//! database after creating its WAL, not the directory above.) Guarded by
//! `ctl/tests/power.rs`, whose disk forgets every name and byte that was not synced.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique within the process: two writers of the same path at once
/// (two uploads of one content-addressed chunk) must not share a temporary file.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Create `path` and its missing parents, like `std::fs::create_dir_all`, and make each
/// directory it created durable in its parent.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    let mut created = Vec::new();
    let mut p = path;
    while !p.exists() {
        created.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    std::fs::create_dir_all(path)?;
    // Outermost first: a parent's own name is durable before the names inside it.
    for dir in created.iter().rev() {
        sync_parent(dir);
    }
    Ok(())
}

/// Write `bytes` to `path` (mode `mode` if it is new) so that after a crash or a power cut
/// `path` holds either what it held before or all of `bytes`: a temporary file, synced,
/// renamed over `path`, the rename synced in the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path);
    Ok(())
}

/// Make the entry naming `path` durable. Best effort: some filesystems refuse to sync a
/// directory (and Windows cannot open one as a file), and failing the write for it would
/// only trade a rare loss for a certain one.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_and_directories_nest() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        let f = deep.join("key.pem");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
