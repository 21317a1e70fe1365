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

/// Where the relay keeps its state (`store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// One SQLite file in `data_dir`: one relay.
    #[default]
    Sqlite,
    /// A NATS JetStream cluster (`nats_urls`): several relay nodes share it.
    Nats,
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
    /// Where state lives: `sqlite` (default) or `nats` (relay nodes over JetStream).
    pub store: StoreKind,
    /// With `store = "nats"`: the NATS servers to connect to (any of them; credentials in
    /// the URL belong in this file or `CLAUDEMESH_NATS_URL`, never on a command line).
    pub nats_urls: Vec<String>,
    /// With `store = "nats"`: prefix of every stream, bucket and subject. Default `CM`.
    pub nats_prefix: String,
    /// With `store = "nats"`: replicas of each stream and bucket. Default 3.
    pub nats_replicas: usize,
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
    /// How long the id of an op compacted into a snapshot is remembered, so that a late
    /// resend gets its old sequence number back, seconds. Default 30 days.
    pub op_dedupe_secs: u64,
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
    /// Time from accepting a connection (TCP or QUIC) until its hello must have arrived,
    /// seconds: it covers the TLS handshake, the HTTP upgrade and the hello itself, however
    /// many frames come before. Default 10.
    pub hello_timeout_secs: u64,
    /// Frames a connection may send before its hello (pings, a mesh creation, a claim);
    /// one more closes it. Default 8.
    pub preauth_frames: u32,
    /// How long a claimant's connection waits for an admin's decision, seconds; then the
    /// relay ends it (the claim stays: the claimant comes back for it). Default 300.
    pub claim_wait_secs: u64,
    /// How long a claim is kept waiting for an admin, and its answer for the claimant,
    /// seconds; at most 7 days (admins refuse older claims). Default 604 800 (7 days).
    pub claim_ttl_secs: u64,
    /// How often expired state is swept and, on a cluster, what other nodes changed (and
    /// this node may have missed live) is read again, seconds. Default 60.
    pub sweep_secs: u64,
    /// New connections accepted per second per IP (IPv6: one /64), before any TLS or QUIC
    /// handshake work; beyond it the connection is refused at once. Default 50.
    pub accept_rate: f64,
    /// Burst of new connections per IP. Default 200.
    pub accept_burst: f64,
    /// Most open connections. Default 20 000.
    pub max_connections: usize,
    /// Most open connections from one IP address (IPv6: one /64). Default 1 000.
    pub max_connections_per_ip: usize,
    /// Most connections still before hello. Default 2 048.
    pub max_preauth_connections: usize,
    /// Most connections still before hello from one IP address (IPv6: one /64). Default 64.
    pub max_preauth_per_ip: usize,
    /// Presence updates per second per member (their burst is `presence_burst`).
    /// Default 50.
    pub presence_rate: f64,
    /// Burst of presence updates per member. Default 512.
    pub presence_burst: f64,
    /// Most bytes of frames queued to one connection and not yet written; a link that
    /// leaves more unread is closed. The relay stops reading a connection while 1 MiB of
    /// answers to it wait. Default 64 MiB.
    pub link_queue_bytes: usize,
    /// Most bytes queued to all connections together. Beyond it, live deliveries wait in
    /// the mailbox and the links holding the most unread bytes are closed. Default 1 GiB.
    pub queued_bytes_budget: usize,
    /// Most bytes the relay stores in envelopes, ops and snapshots together; beyond it,
    /// sends and shared-state writes are refused with `quota_exceeded` (nothing already
    /// accepted is dropped). Default 16 GiB.
    pub disk_budget_bytes: u64,
    /// Most bytes of one mesh's shared-state op log (snapshots let members compact it).
    /// Writes beyond it are refused with `quota_exceeded`; the writer keeps them in its
    /// outbox. Default 64 MiB.
    pub mesh_quota_op_bytes: u64,
    /// Store file chunks for members (`chunk_put`, `chunk_get`, …), under
    /// `<data_dir>/blobs`. With `false` every chunk frame is answered `storage_off` and
    /// members serve chunks to each other. Default `true`.
    pub blob_storage: bool,
    /// Most bytes of file chunks one mesh stores; beyond it `chunk_put` is refused with
    /// `quota_exceeded` until files are deleted. Default 1 GiB.
    pub mesh_quota_blob_bytes: u64,
    /// Most bytes of file chunks the relay stores over all meshes (apart from
    /// `disk_budget_bytes`). Default 8 GiB.
    pub blob_quota_bytes: u64,
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
            store: StoreKind::Sqlite,
            nats_urls: Vec::new(),
            nats_prefix: "CM".into(),
            nats_replicas: 3,
            quic: true,
            websocket: true,
            cert: None,
            key: None,
            durability: Durability::Full,
            message_ttl_secs: 7 * 24 * 3600,
            dedupe_window_secs: 3600,
            op_dedupe_secs: 30 * 24 * 3600,
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
            preauth_frames: 8,
            claim_wait_secs: 300,
            claim_ttl_secs: 7 * 24 * 3600,
            sweep_secs: 60,
            accept_rate: 50.0,
            accept_burst: 200.0,
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            max_preauth_connections: 2_048,
            max_preauth_per_ip: 64,
            presence_rate: 50.0,
            presence_burst: 512.0,
            link_queue_bytes: 64 << 20,
            queued_bytes_budget: 1 << 30,
            disk_budget_bytes: 16 << 30,
            mesh_quota_op_bytes: 64 << 20,
            blob_storage: true,
            mesh_quota_blob_bytes: 1 << 30,
            blob_quota_bytes: 8 << 30,
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
        if self.store == StoreKind::Nats && self.nats_urls.is_empty() {
            return Err(ConfigError::Invalid(
                "store = \"nats\" needs nats_urls (or --nats-url)".into(),
            ));
        }
        if self.nats_prefix.is_empty()
            || self.nats_prefix.len() > 32
            || !self.nats_prefix.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ConfigError::Invalid(
                "nats_prefix must be 1 to 32 letters or digits".into(),
            ));
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(ConfigError::Invalid(
                "nats_replicas must be between 1 and 5 (JetStream's limit)".into(),
            ));
        }
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
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_preauth_connections == 0
            || self.max_preauth_per_ip == 0
        {
            return Err(ConfigError::Invalid(
                "connection caps must be at least 1".into(),
            ));
        }
        if self.link_queue_bytes < (1 << 20) || self.queued_bytes_budget < self.link_queue_bytes {
            return Err(ConfigError::Invalid(
                "link_queue_bytes must be at least 1 MiB and queued_bytes_budget at least link_queue_bytes".into(),
            ));
        }
        if self.claim_ttl_secs == 0
            || self.claim_ttl_secs as i64 * 1000 > claudemesh_schema::invite::CLAIM_TTL_MAX_MS
        {
            return Err(ConfigError::Invalid(
                "claim_ttl_secs must be between 1 and 604800 (7 days: admins refuse older claims)"
                    .into(),
            ));
        }
        if !(1..=3600).contains(&self.sweep_secs) {
            return Err(ConfigError::Invalid(
                "sweep_secs must be between 1 and 3600".into(),
            ));
        }
        if self.hello_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "hello_timeout_secs must be at least 1".into(),
            ));
        }
        if self.handshake_rate <= 0.0
            || self.member_rate <= 0.0
            || self.presence_rate <= 0.0
            || self.accept_rate <= 0.0
        {
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

    /// The defaults as commented TOML: the configuration reference, one line of
    /// explanation above each key.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Self::default()).unwrap_or_default();
        let mut out = String::from(
            "# claudemesh-relay configuration. Every key is optional; shown are the defaults.\n\n",
        );
        for line in body.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| *k == key) {
                out.push_str("# ");
                out.push_str(doc);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        }
        // Keys whose default is "none" are not in the TOML: name them commented out.
        for (k, doc) in KEY_DOCS {
            if !body
                .lines()
                .any(|l| l.split('=').next().unwrap_or("").trim() == *k)
            {
                out.push_str(&format!("# {doc}\n# {k} = ...\n"));
            }
        }
        out
    }
}

/// One line per key for [`RelayConfig::default_toml`] (a test checks every key has one).
const KEY_DOCS: &[(&str, &str)] = &[
    (
        "listen",
        "QUIC on this UDP port, TLS (WebSocket at /ws, /health) on the same TCP port.",
    ),
    (
        "store",
        "sqlite (one relay) or nats (relay nodes sharing a NATS JetStream cluster).",
    ),
    (
        "nats_urls",
        "With store = nats: NATS server URLs (any of the cluster's; credentials only here).",
    ),
    (
        "nats_prefix",
        "With store = nats: prefix of every stream, bucket and subject (letters, digits).",
    ),
    (
        "nats_replicas",
        "With store = nats: replicas of each stream and bucket (3: one server may fail).",
    ),
    (
        "data_dir",
        "relay.db, the generated certificate and the QUIC reset key.",
    ),
    ("quic", "Serve QUIC."),
    ("websocket", "Serve WebSocket over TLS."),
    (
        "cert",
        "PEM certificate chain to serve instead of a generated self-signed one.",
    ),
    ("key", "PEM private key for cert."),
    (
        "durability",
        "full (survives power loss) or normal (survives a crash).",
    ),
    (
        "message_ttl_secs",
        "How long an undelivered envelope is kept.",
    ),
    (
        "dedupe_window_secs",
        "How long a delivered envelope's id is remembered to drop resends.",
    ),
    (
        "op_dedupe_secs",
        "How long the id of a compacted op is remembered to drop late resends.",
    ),
    (
        "admission",
        "Who may create meshes: open, token (claudemesh-relay token create) or allowlist.",
    ),
    (
        "allowed_owners",
        "Owner keys (base64url) allowed to create meshes; only with admission = \"allowlist\".",
    ),
    (
        "create_rate_per_hour",
        "Meshes one IP (IPv6: one /64) may create per hour, whatever the policy; 0 for no limit.",
    ),
    ("create_burst", "Burst of mesh creations per IP."),
    ("max_meshes", "Most meshes this relay hosts."),
    ("max_members", "Most members per mesh."),
    (
        "mesh_quota_messages",
        "Most undelivered envelopes stored per mesh.",
    ),
    (
        "mesh_quota_bytes",
        "Most undelivered bytes stored per mesh.",
    ),
    (
        "handshake_rate",
        "Handshakes (hellos, claims, mesh creations) per second per IP.",
    ),
    ("handshake_burst", "Burst of handshakes per IP."),
    (
        "member_rate",
        "Writes (envelopes, ops, acks, pings) per second per member; kept across reconnects.",
    ),
    ("member_burst", "Burst of writes per member."),
    ("presence_rate", "Presence updates per second per member."),
    ("presence_burst", "Burst of presence updates per member."),
    (
        "idle_timeout_secs",
        "Close a link that sent nothing for this long (clients ping every 15 s).",
    ),
    (
        "hello_timeout_secs",
        "From accept (TCP or QUIC) to the hello: TLS, HTTP upgrade and hello must fit.",
    ),
    (
        "preauth_frames",
        "Frames a connection may send before its hello; one more closes it.",
    ),
    (
        "claim_wait_secs",
        "How long a claimant's connection waits for a decision (the claim stays).",
    ),
    (
        "claim_ttl_secs",
        "How long a claim waits for an admin, and its answer for the claimant (at most 7 days).",
    ),
    (
        "sweep_secs",
        "How often expired state is swept and, on a cluster, what other nodes changed is read again.",
    ),
    (
        "accept_rate",
        "New connections per second per IP, refused before any handshake work beyond it.",
    ),
    ("accept_burst", "Burst of new connections per IP."),
    ("max_connections", "Most open connections."),
    (
        "max_connections_per_ip",
        "Most open connections from one IP (IPv6: one /64).",
    ),
    (
        "max_preauth_connections",
        "Most connections still before hello.",
    ),
    (
        "max_preauth_per_ip",
        "Most connections still before hello from one IP (IPv6: one /64).",
    ),
    (
        "link_queue_bytes",
        "Most bytes queued to one connection; a link that leaves more unread is closed.",
    ),
    (
        "queued_bytes_budget",
        "Most bytes queued to all connections together; beyond it the fattest links close.",
    ),
    (
        "disk_budget_bytes",
        "Most bytes stored in envelopes and op logs together; beyond it writes get quota_exceeded.",
    ),
    (
        "mesh_quota_op_bytes",
        "Most bytes of one mesh's op log and snapshot; beyond it ops get quota_exceeded.",
    ),
    (
        "blob_storage",
        "Store file chunks for members under data_dir/blobs; false: chunk frames get storage_off.",
    ),
    (
        "mesh_quota_blob_bytes",
        "Most bytes of file chunks one mesh stores; beyond it chunk_put gets quota_exceeded.",
    ),
    (
        "blob_quota_bytes",
        "Most bytes of file chunks stored over all meshes (apart from disk_budget_bytes).",
    ),
    (
        "send_queue",
        "Envelope deliveries buffered per connection before its mailbox replays instead.",
    ),
    ("log_json", "Log as JSON lines."),
    (
        "metrics_listen",
        "Serve /metrics and the detailed /health over plain HTTP here (a trusted network).",
    ),
    (
        "metrics_on_tls_port",
        "Also serve /metrics on the public TLS port (unauthenticated).",
    ),
    (
        "frame_log",
        "Debugging: append every received frame to this file (routing headers and ciphertext only).",
    ),
];

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
    fn every_key_is_documented_in_the_reference() {
        let text = RelayConfig::default_toml();
        let json = serde_json::to_value(RelayConfig::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(
                KEY_DOCS.iter().any(|(k, _)| k == key),
                "{key} has no line in KEY_DOCS"
            );
            assert!(
                text.contains(key.as_str()),
                "{key} missing from config default"
            );
        }
        assert_eq!(KEY_DOCS.len(), json.as_object().unwrap().len());
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
