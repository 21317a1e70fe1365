//! Where a daemon keeps its files. One config directory = one daemon, so several daemons
//! (several identities) can run on one machine side by side.
//!
//! Layout of the config directory (0700):
//! - `config.toml`: settings (display name, embedded relay, link options)
//! - `daemon.db`: the SQLite store (meshes, roster, presence cache, inbox, outbox)
//! - `keys/<mesh id>.key` (0600, in a 0700 directory): member key, mesh key, session keys
//! - `vault/<mesh id>.vault` (0600, in a 0700 directory): secrets kept here, sealed
//! - `daemon.sock`: the local socket (0600), unless the path would be too long
//! - `daemon.lock`: single-instance lock, holds the daemon's pid
//! - `logs/`: daemon logs
//! - `relay/`: the embedded relay's data, when enabled

use std::path::{Path, PathBuf};

/// Environment variable naming the config directory.
pub const ENV_CONFIG_DIR: &str = "CLAUDEMESH_CONFIG_DIR";
/// Environment variable overriding the socket path.
pub const ENV_SOCKET: &str = "CLAUDEMESH_SOCKET";

/// Longest socket path we bind (sun_path is 108 bytes on Linux, 104 on macOS).
const MAX_SOCKET_PATH: usize = 100;

/// The config directory could not be determined.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find a home directory for the claudemesh config; set {ENV_CONFIG_DIR} to a directory"
)]
pub struct NoHome;

/// Paths of one daemon instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The config directory.
    pub dir: PathBuf,
    /// The local socket.
    pub socket: PathBuf,
}

impl Paths {
    /// From the environment: `CLAUDEMESH_CONFIG_DIR`, else `~/.claudemesh`.
    pub fn from_env() -> Result<Self, NoHome> {
        let dir = match std::env::var_os(ENV_CONFIG_DIR) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let home = std::env::var_os("HOME")
                    .or_else(|| std::env::var_os("USERPROFILE"))
                    .filter(|h| !h.is_empty())
                    .ok_or(NoHome)?;
                PathBuf::from(home).join(".claudemesh")
            }
        };
        let socket = std::env::var_os(ENV_SOCKET)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Ok(Self::with_socket(dir, socket))
    }

    /// For an explicit config directory (tests, embedding).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_socket(dir.into(), None)
    }

    fn with_socket(dir: PathBuf, socket: Option<PathBuf>) -> Self {
        let socket = socket.unwrap_or_else(|| default_socket(&dir));
        Self { dir, socket }
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// `daemon.db`.
    pub fn db(&self) -> PathBuf {
        self.dir.join("daemon.db")
    }
    /// `keys/`.
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }
    /// `vault/`: one sealed vault file per mesh (see the daemon's `vault`).
    pub fn vault(&self) -> PathBuf {
        self.dir.join("vault")
    }
    /// `joins/`: joins waiting for an admin (each file holds a new member key).
    pub fn joins(&self) -> PathBuf {
        self.dir.join("joins")
    }
    /// `daemon.lock`.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }
    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// `relay/` (embedded relay data).
    pub fn relay_data(&self) -> PathBuf {
        self.dir.join("relay")
    }
}

fn default_socket(dir: &Path) -> PathBuf {
    let p = dir.join("daemon.sock");
    if p.as_os_str().len() <= MAX_SOCKET_PATH {
        return p;
    }
    // Deep config directory: put the socket in a short directory of this user's own (the
    // runtime directory, or one we create and check in the temporary directory), named
    // after a hash of the config directory so each daemon still has its own. Never
    // straight in a directory other users can write to.
    let h = blake3::hash(dir.as_os_str().as_encoded_bytes());
    short_socket_dir().join(format!("claudemesh-{}.sock", &h.to_hex()[..16]))
}

/// Where sockets of deep config directories go: `$XDG_RUNTIME_DIR`, else
/// `<tmp>/claudemesh-<uid>` (checked by [`ensure_socket_dir`] before it is used).
fn short_socket_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    #[cfg(unix)]
    let who = rustix::process::geteuid().as_raw().to_string();
    #[cfg(not(unix))]
    let who = "user".to_string();
    std::env::temp_dir().join(format!("claudemesh-{who}"))
}

/// Get the directory of a socket outside the config directory ready: the short directory
/// this module chooses for deep config directories is created and checked
/// ([`ensure_socket_dir`]); one the user named (`CLAUDEMESH_SOCKET`) is used as it is,
/// never changed (the socket itself is 0600, and each side checks the other's uid).
pub fn socket_dir_ready(parent: &Path) -> std::io::Result<()> {
    if parent == short_socket_dir() {
        ensure_socket_dir(parent)
    } else {
        std::fs::create_dir_all(parent)
    }
}

/// Make the directory a socket is bound in safe to use: our own, private. A directory we
/// create is made 0700; one that exists must already be a real directory (not a link)
/// owned by us that no one else can write to. Nothing is ever chmodded here: a shared
/// directory (`/tmp`) is refused, not changed.
pub fn ensure_socket_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
        match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(path)?;
        let me = rustix::process::geteuid().as_raw();
        let refuse = |why: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} {why}: the socket must be in a directory only you can write to (set CLAUDEMESH_SOCKET, or remove it)",
                    path.display()
                ),
            ))
        };
        if !meta.is_dir() {
            return refuse("is not a directory");
        }
        if meta.uid() != me {
            return refuse("belongs to another user");
        }
        if meta.mode() & 0o022 != 0 {
            return refuse("is writable by other users");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(path)?;
    Ok(())
}

/// From now on, files and directories this process creates are its user's only (the
/// store holds the plaintext inbox; logs name peers), whatever umask it was started with.
pub fn private_umask() {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Create `path` (and parents) with mode 0700, tightening it if it exists and is ours
/// (never another user's directory).
pub fn ensure_private_dir(path: &Path) -> std::io::Result<()> {
    // Durably: `keys/` made when a mesh is created and never synced into the config
    // directory is gone after a power cut, with every key file in it.
    claudemesh_relay::durable::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let meta = std::fs::metadata(path)?;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} belongs to another user", path.display()),
            ));
        }
        if meta.permissions().mode() & 0o777 != 0o700 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_dirs_get_short_sockets() {
        let short = Paths::new("/tmp/x");
        assert_eq!(short.socket, PathBuf::from("/tmp/x/daemon.sock"));
        let long = Paths::new(format!("/tmp/{}", "d".repeat(120)));
        assert!(long.socket.as_os_str().len() <= MAX_SOCKET_PATH + 40);
        assert_ne!(
            long.socket,
            Paths::new(format!("/tmp/{}", "e".repeat(120))).socket
        );
        assert_ne!(
            long.socket.parent(),
            Some(std::env::temp_dir().as_path()),
            "never straight in the shared temporary directory"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_socket_directory_is_ours_and_private_or_refused_never_chmodded() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh");
        ensure_socket_dir(&fresh).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&fresh), 0o700, "created private");
        ensure_socket_dir(&fresh).unwrap();
        // A shared, sticky directory like /tmp: refused and left as it was.
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ensure_socket_dir(&shared).is_err());
        assert_eq!(mode(&shared), 0o1777, "not chmodded");
        let group = root.path().join("group");
        std::fs::create_dir(&group).unwrap();
        std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(ensure_socket_dir(&group).is_err());
        // A planted link to somewhere else: refused, not followed.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(ensure_socket_dir(&link).is_err());
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_socket_dir(&file).is_err());
    }
}

/// The systemd user unit's name.
pub const SYSTEMD_UNIT: &str = "claudemesh.service";
/// The launchd agent's label.
pub const LAUNCHD_LABEL: &str = "dev.claudemesh.daemon";

/// Which service manager runs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// systemd user unit (Linux).
    Systemd,
    /// launchd agent (macOS).
    Launchd,
}

impl ServiceKind {
    /// This platform's manager.
    pub fn native() -> Self {
        if cfg!(target_os = "macos") {
            Self::Launchd
        } else {
            Self::Systemd
        }
    }
}

/// The exact text a service file of `kind` holds for config directory `dir` (to tell
/// whose daemon a unit runs).
pub fn service_marker(kind: ServiceKind, dir: &Path) -> String {
    match kind {
        ServiceKind::Systemd => {
            format!("Environment=\"CLAUDEMESH_CONFIG_DIR={}\"\n", dir.display())
        }
        ServiceKind::Launchd => {
            let d = dir
                .display()
                .to_string()
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;");
            format!("<key>CLAUDEMESH_CONFIG_DIR</key>\n        <string>{d}</string>\n")
        }
    }
}

/// Where `claudemesh service install` puts the service file of `kind`:
/// `$XDG_CONFIG_HOME/systemd/user/claudemesh.service` (default `~/.config/...`), or
/// `~/Library/LaunchAgents/dev.claudemesh.daemon.plist`.
pub fn service_file(kind: ServiceKind) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    match kind {
        ServiceKind::Systemd => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|x| !x.is_empty())
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".config")))?;
            Some(base.join("systemd/user").join(SYSTEMD_UNIT))
        }
        ServiceKind::Launchd => Some(
            home?
                .join("Library/LaunchAgents")
                .join(format!("{LAUNCHD_LABEL}.plist")),
        ),
    }
}

/// Write `bytes` to `path` atomically and durably (it survives a power cut whole or not
/// at all), with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    claudemesh_relay::durable::write_atomic(path, bytes, 0o600)
}
