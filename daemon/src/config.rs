//! Daemon settings (`config.toml` in the config directory). Every field is optional; the
//! defaults are documented on each field.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The config file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Reading or writing failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config {path}: {detail}; fix or delete the file")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Detail.
        detail: String,
    },
}

/// Daemon settings.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Display name used when a mesh is created or joined without `--name`.
    /// Default: `CLAUDEMESH_DISPLAY_NAME`, else the login name.
    pub display_name: Option<String>,
    /// The embedded relay (what `claudemesh up` turns on).
    pub relay: EmbeddedRelay,
    /// How links reach relays.
    pub link: LinkConfig,
    /// Shared state.
    pub state: StateConfig,
    /// What `peers` lists.
    pub peers: PeersConfig,
    /// How long the inbox keeps what was read.
    pub inbox: InboxConfig,
}

/// Inbox retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Messages read longer ago than this many days are deleted (unread ones never are),
    /// and so is the record of messages sent that long ago. 0 keeps everything. Default 30.
    pub keep_read_days: u64,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self { keep_read_days: 30 }
    }
}

/// Peer-listing settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeersConfig {
    /// A session that ended (not a member's daemon) stays listed, offline, this long, then
    /// drops out of `peers` and `list_peers` (its history stays; `peers --all` shows it).
    /// Default 60.
    pub offline_grace_secs: u64,
}

impl Default for PeersConfig {
    fn default() -> Self {
        Self {
            offline_grace_secs: 60,
        }
    }
}

/// Shared-state settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Capture a snapshot after every this many ops of the log (the daemon whose member
    /// wrote the op at that sequence does it), so new members need not replay everything
    /// and the relay can drop old ops. 0 never snapshots. Default 10000.
    pub snapshot_every: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 10_000,
        }
    }
}

/// The relay the daemon runs in-process when no other relay is configured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedRelay {
    /// Run it. Default `false` (set by `claudemesh up`).
    pub enabled: bool,
    /// Where it listens. Default `127.0.0.1:7900`; use `0.0.0.0:7900` to let other
    /// machines join.
    pub listen: SocketAddr,
    /// Address written into meshes and invites (what other machines dial). Default: the
    /// listen address (with `127.0.0.1` for an unspecified IP).
    pub public_addr: Option<String>,
}

impl Default for EmbeddedRelay {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 7900)),
            public_addr: None,
        }
    }
}

/// Link settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Try QUIC. Default `true`.
    pub quic: bool,
    /// Fall back to WebSocket. Default `true`.
    pub websocket: bool,
    /// QUIC handshake timeout, ms, before falling back. Default 3000.
    pub quic_timeout_ms: u64,
    /// WebSocket handshake timeout, ms. Default 5000.
    pub ws_timeout_ms: u64,
    /// Longest pause between reconnect attempts, ms. Default 30000.
    pub max_backoff_ms: u64,
    /// First pause after a link fails, ms (doubling up to `max_backoff_ms`). Default 250.
    pub initial_backoff_ms: u64,
    /// For a relay of several nodes: the node (`host:port`, as the mesh lists it) tried
    /// first, say the nearest one; the others follow in turn. Default none: a random one.
    pub prefer_node: Option<String>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            quic: true,
            websocket: true,
            quic_timeout_ms: 3000,
            ws_timeout_ms: 5000,
            max_backoff_ms: 30_000,
            initial_backoff_ms: 250,
            prefer_node: None,
        }
    }
}

impl DaemonConfig {
    /// Read `path`; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    /// Write `path` atomically (temp file + rename), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        crate::paths::write_atomic(path, text.as_bytes()).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The embedded relay's public address.
    pub fn relay_public_addr(&self) -> String {
        if let Some(a) = &self.relay.public_addr {
            return a.clone();
        }
        let l = self.relay.listen;
        if l.ip().is_unspecified() {
            format!("127.0.0.1:{}", l.port())
        } else {
            l.to_string()
        }
    }
}

/// The display name to use when none is given: `CLAUDEMESH_DISPLAY_NAME`, the configured
/// default, the login name, or `"me"`.
pub fn default_display_name(cfg: &DaemonConfig) -> String {
    if let Ok(n) = std::env::var("CLAUDEMESH_DISPLAY_NAME")
        && !n.trim().is_empty()
    {
        return n.trim().to_string();
    }
    if let Some(n) = &cfg.display_name
        && !n.trim().is_empty()
    {
        return n.trim().to_string();
    }
    for var in ["USER", "LOGNAME", "USERNAME"] {
        if let Ok(n) = std::env::var(var)
            && !n.trim().is_empty()
        {
            return n.trim().to_string();
        }
    }
    login_from_passwd().unwrap_or_else(|| "me".to_string())
}

/// The login name of the current user from `/etc/passwd`, for environments without
/// `USER` (services, containers). The uid is read from a file we just created, so no
/// unsafe call is needed.
#[cfg(unix)]
fn login_from_passwd() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let probe = std::env::temp_dir().join(format!("claudemesh-uid-{}", std::process::id()));
    std::fs::write(&probe, b"").ok()?;
    let uid = std::fs::metadata(&probe).ok()?.uid();
    let _ = std::fs::remove_file(&probe);
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(not(unix))]
fn login_from_passwd() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_defaults_and_save_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        assert_eq!(DaemonConfig::load(&p).unwrap(), DaemonConfig::default());
        let mut c = DaemonConfig::default();
        c.relay.enabled = true;
        c.display_name = Some("ada".into());
        c.save(&p).unwrap();
        assert_eq!(DaemonConfig::load(&p).unwrap(), c);
        std::fs::write(&p, "bogus = 1").unwrap();
        assert!(DaemonConfig::load(&p).is_err());
    }
}
