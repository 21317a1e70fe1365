//! Relay configuration: a TOML file, every field optional with the documented default.
//! `claudemesh-relay config default` prints the defaults; flags override the file.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::sqlite::Durability;
use claudemesh_schema::crypto::MemberKey;

/// Who may create a mesh on a relay (`admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionMode {
    /// Anyone.
    #[default]
    Open,
    /// Whoever presents a creation token the operator issued.
    Token,
    /// Only the owner keys in `allowed_owners`.
    Allowlist,
}

impl AdmissionMode {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Token => "token",
            Self::Allowlist => "allowlist",
        }
    }
}

/// The configuration was invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read relay config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this config.
    #[error("invalid relay config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid relay config: {0}")]
    Invalid(String),
}

/// Relay settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Address to listen on. QUIC uses this UDP port; TLS (WebSocket at `/ws`, `/health`)
    /// uses the same TCP port. Default `0.0.0.0:7900`.
    pub listen: SocketAddr,
    /// Directory for `relay.db` and the generated certificate. Default `./relay-data`.
    pub data_dir: PathBuf,
    /// Serve QUIC. Default `true`.
    pub quic: bool,
    /// Serve WebSocket over TLS. Default `true`.
    pub websocket: bool,
    /// PEM certificate chain to serve instead of a generated self-signed one. Default none.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`. Default none.
    pub key: Option<PathBuf>,
    /// `full` (survives power loss) or `normal` (survives a crash). Default `full`.
    pub durability: Durability,
    /// How long an undelivered envelope is kept, seconds. Default 7 days.
    pub message_ttl_secs: u64,
    /// How long a delivered envelope's id is remembered to drop resends, seconds.
    /// Default 1 hour.
    pub dedupe_window_secs: u64,
    /// Most meshes this relay hosts. Default 100 000.
    pub max_meshes: u64,
    /// Most members per mesh. Default 10 000.
    pub max_members: u64,
    /// Most undelivered envelopes stored per mesh. Default 100 000.
    pub mesh_quota_messages: u64,
    /// Most undelivered bytes stored per mesh. Default 256 MiB.
    pub mesh_quota_bytes: u64,
    /// Who may create a mesh here: `open` (anyone), `token` (whoever presents a creation
    /// token from `claudemesh-relay token create`; each creation spends one of its uses) or
    /// `allowlist` (only the owner keys in `allowed_owners`). Default `open` (also the
    /// daemon's embedded local relay); a relay on a public address wants `token`.
    pub admission: AdmissionMode,
    /// Owner member keys (ed25519 public keys, base64url) that may create meshes under
    /// `admission = "allowlist"`; set only with that policy. `claudemesh create` makes a
    /// fresh owner key for each mesh, so this suits clients that bring their own key; for
    /// people, use `token`. Default empty.
    pub allowed_owners: Vec<String>,
    /// Meshes one IP address (an IPv6 /64) may create per hour, whatever the admission
    /// policy; 0 turns the limit off (the daemon's embedded local relay does). Default 10.
    pub create_rate_per_hour: u32,
    /// Meshes one address may create at once before the hourly rate applies. Default 5.
    pub create_burst: u32,
    /// Handshakes (hellos, claims, mesh creations) per second per IP. Default 20.
    pub handshake_rate: f64,
    /// Burst of handshakes per IP. Default 60.
    pub handshake_burst: f64,
    /// Envelopes per second per member. Default 20 000.
    pub member_rate: f64,
    /// Burst of envelopes per member. Default 50 000.
    pub member_burst: f64,
    /// Close a link that sent nothing for this long, seconds (clients ping every 15 s).
    /// Default 45.
    pub idle_timeout_secs: u64,
    /// Time allowed for the first frame of a connection, seconds. Default 10.
    pub hello_timeout_secs: u64,
    /// Envelope deliveries buffered per connection. When a connection reads slower than
    /// others send to it, live copies beyond this are skipped and its mailbox is replayed
    /// once it catches up. Default 4096.
    pub send_queue: usize,
    /// Log as JSON lines. Default `false`.
    pub log_json: bool,
    /// Serve `/metrics` (and `/health`) over plain HTTP here, for a Prometheus inside a
    /// trusted network. Default none.
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve `/metrics` on the public TLS port (unauthenticated: it shows activity
    /// levels to anyone who can reach the relay). Default `false`.
    pub metrics_on_tls_port: bool,
    /// Debugging aid: append every frame received from clients to this file (4-byte
    /// big-endian length, then the frame). It holds only what the relay sees anyway:
    /// routing headers and ciphertext, and the creation tokens clients present. Default none.
    pub frame_log: Option<PathBuf>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7900)),
            data_dir: PathBuf::from("relay-data"),
            quic: true,
            websocket: true,
            cert: None,
            key: None,
            durability: Durability::Full,
            message_ttl_secs: 7 * 24 * 3600,
            dedupe_window_secs: 3600,
            max_meshes: 100_000,
            max_members: 10_000,
            admission: AdmissionMode::Open,
            allowed_owners: Vec::new(),
            create_rate_per_hour: 10,
            create_burst: 5,
            mesh_quota_messages: 100_000,
            mesh_quota_bytes: 256 << 20,
            handshake_rate: 20.0,
            handshake_burst: 60.0,
            member_rate: 20_000.0,
            member_burst: 50_000.0,
            idle_timeout_secs: 45,
            hello_timeout_secs: 10,
            send_queue: 4096,
            log_json: false,
            metrics_listen: None,
            metrics_on_tls_port: false,
            frame_log: None,
        }
    }
}

impl RelayConfig {
    /// Read a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.quic && !self.websocket {
            return Err(ConfigError::Invalid(
                "enable at least one of quic and websocket".into(),
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::Invalid(
                "set both cert and key, or neither".into(),
            ));
        }
        if self.handshake_rate <= 0.0 || self.member_rate <= 0.0 {
            return Err(ConfigError::Invalid("rates must be positive".into()));
        }
        self.check_admission()?;
        if self.send_queue < 16 {
            return Err(ConfigError::Invalid(
                "send_queue must be at least 16".into(),
            ));
        }
        Ok(())
    }

    fn check_admission(&self) -> Result<(), ConfigError> {
        match self.admission {
            AdmissionMode::Allowlist if self.allowed_owners.is_empty() => {
                return Err(ConfigError::Invalid(
                    "admission = \"allowlist\" needs at least one owner key in allowed_owners"
                        .into(),
                ));
            }
            AdmissionMode::Open | AdmissionMode::Token if !self.allowed_owners.is_empty() => {
                return Err(ConfigError::Invalid(format!(
                    "allowed_owners is used only with admission = \"allowlist\" (admission is \"{}\"); \
                     remove it or change admission",
                    self.admission.as_str()
                )));
            }
            _ => {}
        }
        self.owner_keys()?;
        if self.create_rate_per_hour > 0 && self.create_burst == 0 {
            return Err(ConfigError::Invalid(
                "create_burst must be at least 1 (or set create_rate_per_hour = 0 for no limit)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The keys of `allowed_owners`, parsed.
    pub fn owner_keys(&self) -> Result<Vec<MemberKey>, ConfigError> {
        self.allowed_owners
            .iter()
            .map(|s| {
                MemberKey::from_b64(s.trim())
                    .filter(MemberKey::is_valid)
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "allowed_owners: {s:?} is not a member key (an ed25519 public key: 43 characters of base64url)"
                        ))
                    })
            })
            .collect()
    }

    /// The defaults as commented TOML.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Self::default()).unwrap_or_default();
        format!(
            "# claudemesh-relay configuration. Every key is optional; shown are the defaults.\n\
             # cert/key: PEM files to use instead of a generated self-signed certificate.\n\
             # See docs in relay/src/config.rs for each field.\n\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = RelayConfig::default_toml();
        let back: RelayConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.listen, RelayConfig::default().listen);
        back.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_combinations_are_refused() {
        assert!(toml::from_str::<RelayConfig>("lissten = \"0.0.0.0:1\"").is_err());
        let c: RelayConfig = toml::from_str("quic = false\nwebsocket = false").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn admission_combinations_are_checked() {
        let key = claudemesh_schema::crypto::MemberSecret::generate()
            .public()
            .to_b64();
        let check = |text: &str| toml::from_str::<RelayConfig>(text).unwrap().validate();
        check("admission = \"token\"").unwrap();
        check(&format!(
            "admission = \"allowlist\"\nallowed_owners = [\"{key}\"]"
        ))
        .unwrap();
        check("create_rate_per_hour = 0\ncreate_burst = 0").unwrap();
        for (bad, says) in [
            ("admission = \"allowlist\"".to_string(), "at least one"),
            (
                "admission = \"allowlist\"\nallowed_owners = [\"nope\"]".to_string(),
                "\"nope\" is not a member key",
            ),
            (
                format!("admission = \"token\"\nallowed_owners = [\"{key}\"]"),
                "only with admission = \"allowlist\"",
            ),
            ("create_burst = 0".to_string(), "create_burst"),
        ] {
            let e = check(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(toml::from_str::<RelayConfig>("admission = \"closed\"").is_err());
    }
}
