//! SQL migrations of the two stores, applied in order and tracked by `PRAGMA user_version`
//! (the runner lives with the stores; this crate only holds the text).
//!
//! Rules: a migration is never edited once released; a change is a new file.

/// Daemon store migrations (`daemon.db`), index `i` brings the schema to version `i + 1`.
pub const DAEMON: &[&str] = &[
    include_str!("../sql/daemon/0001_init.sql"),
    include_str!("../sql/daemon/0002_receipts.sql"),
    include_str!("../sql/daemon/0003_shared_state.sql"),
    include_str!("../sql/daemon/0004_snapshots.sql"),
    include_str!("../sql/daemon/0005_grants.sql"),
    include_str!("../sql/daemon/0006_own_reminders.sql"),
    include_str!("../sql/daemon/0007_confirmed_delivery.sql"),
    include_str!("../sql/daemon/0008_pending_index.sql"),
    include_str!("../sql/daemon/0009_roster_floor.sql"),
    include_str!("../sql/daemon/0010_name_pins.sql"),
    include_str!("../sql/daemon/0011_sent_recipients.sql"),
    include_str!("../sql/daemon/0012_key_epochs.sql"),
    include_str!("../sql/daemon/0013_inbox_gone.sql"),
    include_str!("../sql/daemon/0014_mesh_relay.sql"),
    include_str!("../sql/daemon/0015_settings.sql"),
    include_str!("../sql/daemon/0016_presence_extra.sql"),
    include_str!("../sql/daemon/0017_list_order.sql"),
    include_str!("../sql/daemon/0018_send_keys.sql"),
    include_str!("../sql/daemon/0019_files.sql"),
    include_str!("../sql/daemon/0020_mcp.sql"),
    include_str!("../sql/daemon/0021_deploy.sql"),
];

/// Relay store migrations (`relay.db`).
pub const RELAY: &[&str] = &[
    include_str!("../sql/relay/0001_init.sql"),
    include_str!("../sql/relay/0002_ops.sql"),
    include_str!("../sql/relay/0003_snapshots.sql"),
    include_str!("../sql/relay/0004_creation_tokens.sql"),
    include_str!("../sql/relay/0005_hello_nonces.sql"),
    include_str!("../sql/relay/0006_claims.sql"),
    include_str!("../sql/relay/0007_receipts.sql"),
    include_str!("../sql/relay/0008_blobs.sql"),
];
