//! Shared-state snapshots from arbitrary plaintext: what a member reads after the relay's
//! snapshot decrypted and its signature checked (`op::open_snapshot` decodes the JSON), then
//! loads into its store (`shared::snapshot::load`, through `fuzz_load_snapshot`) in a fresh
//! in-memory daemon database, rolled back after each input.
//!
//! Never a panic; a body that decodes survives encode → decode and seal → open; a load
//! that succeeds leaves rows only in the snapshot's mesh, every one sequenced at or before
//! the snapshot, and the chain head at the snapshot.
#![no_main]

use claudemesh_fuzz::same_json;
use claudemesh_schema::crypto::{MemberSecret, MeshKey};
use claudemesh_schema::migrations::DAEMON;
use claudemesh_schema::op::{self, SnapshotBody};
use libfuzzer_sys::fuzz_target;
use rusqlite::{Connection, params};
use std::cell::RefCell;

/// The folded tables (`daemon::shared::query::TABLES`).
const TABLES: &[&str] = &[
    "state_kv",
    "memories",
    "tasks",
    "reservations",
    "contexts",
    "skills",
    "reminders",
];

thread_local! {
    static DB: RefCell<Connection> = RefCell::new(
        claudemesh_relay::sqlite::open(
            std::path::Path::new(":memory:"),
            DAEMON,
            claudemesh_relay::sqlite::Durability::Normal,
        )
        .expect("an in-memory daemon store"),
    );
    static KEYS: (MeshKey, MemberSecret) = (MeshKey::generate(), MemberSecret::generate());
}

fn json(b: &SnapshotBody) -> serde_json::Value {
    serde_json::to_value(b).expect("a snapshot encodes")
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<SnapshotBody>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&body).expect("a snapshot encodes");
    let again: SnapshotBody = serde_json::from_slice(&bytes).expect("an encoded snapshot decodes");
    assert!(
        same_json(&json(&body), &json(&again)),
        "the snapshot changed in a round trip"
    );

    KEYS.with(|(key, author)| {
        let ct = op::seal_snapshot(key, author, &body).expect("a snapshot seals");
        let opened = op::open_snapshot(key, &body.mesh, body.seq, &author.public(), &ct)
            .expect("a sealed snapshot opens");
        assert!(
            same_json(&json(&body), &json(&opened)),
            "the snapshot changed in its seal"
        );
    });

    DB.with(|db| {
        let mut db = db.borrow_mut();
        let tx = db.transaction().expect("a transaction");
        if claudemesh_daemon::fuzz_load_snapshot(&tx, body.mesh, &body).is_ok() {
            let mesh = body.mesh.as_bytes().as_slice();
            for t in TABLES {
                // Sequence numbers are u64 on the wire and i64 in SQLite: compare as u64.
                let (elsewhere, unsequenced, max): (i64, i64, Option<i64>) = tx
                    .query_row(
                        &format!(
                            "SELECT count(*) FILTER (WHERE mesh != ?1),
                                    count(*) FILTER (WHERE seq IS NULL OR seq < 1), max(seq)
                             FROM {t}"
                        ),
                        params![mesh],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .expect("the table reads");
                assert_eq!(elsewhere, 0, "rows of {t} in another mesh");
                assert_eq!(unsequenced, 0, "rows of {t} with no valid seq");
                assert!(
                    max.is_none_or(|m| m as u64 <= body.seq),
                    "rows of {t} after the snapshot's seq"
                );
            }
            let head: i64 = tx
                .query_row(
                    "SELECT seq FROM op_heads WHERE mesh = ?1",
                    params![mesh],
                    |r| r.get(0),
                )
                .expect("a chain head");
            assert_eq!(
                head as u64, body.seq,
                "the chain head is not the snapshot's"
            );
        }
        // Dropped: rolled back, the next input starts from an empty store.
    });
});
