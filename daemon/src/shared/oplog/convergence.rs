//! Property: whatever the interleaving of writes, publishing, delivery (out of order,
//! duplicated), disconnects and restarts, every replica ends with the same folded state,
//! equal to a fresh replica that applied the whole log at once.
//!
//! The replicas are real SQLite stores with the daemon's migrations, written through the
//! same functions the daemon uses (`apply_pending`, `apply_run`); only the relay's
//! sequencing is modelled (a vector with dedupe by op id), since it is a counter.

use claudemesh_relay::sqlite::{self, Durability};
use claudemesh_schema::crypto::{MemberSecret, MeshKey};
use claudemesh_schema::op::{self, Op, OpBody, OpEnvelope, SequencedOp};
use claudemesh_schema::wire::{self, ClientFrame};
use claudemesh_schema::{ItemId, MeshId, OpId, SessionId, migrations};
use proptest::prelude::*;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::apply_run;
use crate::shared::{fold, query};
use claudemesh_schema::op::Reorder;

struct Relay {
    log: Vec<SequencedOp>,
    ids: HashMap<OpId, u64>,
}

impl Relay {
    fn append(&mut self, env: OpEnvelope) {
        if self.ids.contains_key(&env.id) {
            return;
        }
        let seq = self.log.len() as u64 + 1;
        self.ids.insert(env.id, seq);
        self.log.push(SequencedOp {
            seq,
            // Deterministic "relay clock", far enough apart for reservation lifetimes.
            at: seq as i64 * 60_000,
            op: env,
        });
    }
}

struct Replica {
    path: PathBuf,
    conn: Option<Connection>,
    member: MemberSecret,
    session: SessionId,
    online: bool,
    order: Reorder,
    unsent: Vec<OpEnvelope>,
}

fn open(path: &Path) -> Connection {
    sqlite::open(path, migrations::DAEMON, Durability::Normal).unwrap()
}

impl Replica {
    fn conn(&mut self) -> &mut Connection {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path));
        }
        self.conn.as_mut().unwrap()
    }

    fn head(&mut self, mesh: MeshId) -> u64 {
        query::q_head(self.conn(), mesh)
            .unwrap()
            .map(|h| h.0)
            .unwrap_or(0)
    }

    fn ids(&mut self, table: &str, mesh: MeshId) -> Vec<ItemId> {
        let c = self.conn();
        let mut stmt = c
            .prepare(&format!(
                "SELECT id FROM {table} WHERE mesh = ?1 ORDER BY id"
            ))
            .unwrap();
        stmt.query_map(params![mesh.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|v| ItemId::from_slice(&v.unwrap()).unwrap())
            .collect()
    }

    fn write(&mut self, mesh: MeshId, key: &MeshKey, op: Op) {
        let body = OpBody {
            id: OpId::new(),
            session: self.session,
            name: "r".into(),
            at: 0,
            op,
        };
        let env = op::seal_op(key, &mesh, &self.member, &body).unwrap();
        let frame = wire::encode(&ClientFrame::Op(env.clone())).unwrap();
        let author = self.member.public();
        let tx = self.conn().transaction().unwrap();
        tx.execute(
            "INSERT INTO op_outbox (id, mesh, frame, body, created_at) VALUES (?1, ?2, ?3, ?4, 0)",
            params![
                body.id.as_bytes(),
                mesh.as_bytes(),
                frame,
                serde_json::to_string(&body).unwrap()
            ],
        )
        .unwrap();
        fold::apply_pending(&tx, &mesh, &author, &body).unwrap();
        tx.commit().unwrap();
        if self.online {
            self.unsent.push(env);
        }
    }

    fn reconnect(&mut self, mesh: MeshId) {
        self.online = true;
        let next = self.head(mesh) + 1;
        self.order = Reorder::new(next);
        let c = self.conn();
        let mut stmt = c
            .prepare("SELECT frame FROM op_outbox WHERE mesh = ?1 ORDER BY n")
            .unwrap();
        let frames: Vec<Vec<u8>> = stmt
            .query_map(params![mesh.as_bytes()], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        drop(stmt);
        self.unsent = frames
            .iter()
            .map(|f| match wire::decode::<ClientFrame>(f).unwrap() {
                ClientFrame::Op(env) => env,
                other => panic!("not an op frame: {other:?}"),
            })
            .collect();
    }

    fn receive(&mut self, mesh: MeshId, key: &MeshKey, ops: Vec<SequencedOp>) {
        let run = self.order.push(ops);
        if run.is_empty() {
            return;
        }
        apply(self.conn(), mesh, key, run);
    }
}

fn apply(conn: &mut Connection, mesh: MeshId, key: &MeshKey, run: Vec<SequencedOp>) {
    let opened = run
        .into_iter()
        .map(|o| {
            let b = op::open_op(key, &mesh, &o.op).map_err(|e| e.to_string());
            (o, b)
        })
        .collect();
    let tx = conn.transaction().unwrap();
    apply_run(&tx, mesh, opened, None, |_, _, _| Ok(())).unwrap();
    tx.commit().unwrap();
}

#[derive(Debug, Clone)]
enum Event {
    Write { r: usize, kind: u8, a: u8, b: u8 },
    Publish { r: usize, n: usize },
    Deliver { r: usize, n: usize, shuffle: u64 },
    Disconnect { r: usize },
    Reconnect { r: usize },
    Restart { r: usize },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (0..3usize, 0..12u8, any::<u8>(), any::<u8>())
            .prop_map(|(r, kind, a, b)| Event::Write { r, kind, a, b }),
        3 => (0..3usize, 1..4usize).prop_map(|(r, n)| Event::Publish { r, n }),
        3 => (0..3usize, 1..6usize, any::<u64>())
            .prop_map(|(r, n, shuffle)| Event::Deliver { r, n, shuffle }),
        1 => (0..3usize).prop_map(|r| Event::Disconnect { r }),
        1 => (0..3usize).prop_map(|r| Event::Reconnect { r }),
        1 => (0..3usize).prop_map(|r| Event::Restart { r }),
    ]
}

fn pick(ids: &[ItemId], a: u8) -> Option<ItemId> {
    (!ids.is_empty()).then(|| ids[a as usize % ids.len()])
}

fn make_op(rep: &mut Replica, mesh: MeshId, kind: u8, a: u8, b: u8) -> Option<Op> {
    let globs = ["src/**", "src/a.rs", "src/*.rs", "docs/*.md", "**/*.md"];
    Some(match kind {
        0 | 1 => Op::SetState {
            key: format!("k{}", a % 3),
            value: if b.is_multiple_of(5) {
                serde_json::Value::Null
            } else {
                serde_json::json!(b)
            },
        },
        2 => Op::Remember {
            memory: ItemId::new(),
            text: format!("memory {a} {b}"),
            tags: vec![format!("t{}", b % 2)],
        },
        3 => Op::Forget {
            memory: pick(&rep.ids("memories", mesh), a)?,
        },
        4 => Op::CreateTask {
            task: ItemId::new(),
            title: format!("task {a}"),
            body: String::new(),
            priority: String::new(),
            tags: vec![],
            assignee: None,
        },
        5 | 6 => Op::ClaimTask {
            task: pick(&rep.ids("tasks", mesh), a)?,
        },
        7 => Op::CompleteTask {
            task: pick(&rep.ids("tasks", mesh), a)?,
            result: "done".into(),
        },
        8 => Op::ReserveFiles {
            reservation: ItemId::new(),
            patterns: vec![globs[a as usize % globs.len()].to_string()],
            exclusive: b.is_multiple_of(2),
            ttl_secs: 60 * (1 + (b as u64 % 4)),
            reason: String::new(),
        },
        9 => Op::ReleaseFiles {
            reservation: pick(&rep.ids("reservations", mesh), a)?,
        },
        10 => Op::ShareSkill {
            name: format!("s{}", a % 2),
            description: format!("d{b}"),
            instructions: "do it".into(),
            tags: vec![],
            when_to_use: String::new(),
        },
        _ => Op::RemoveSkill {
            name: format!("s{}", a % 2),
        },
    })
}

fn shuffled(mut v: Vec<SequencedOp>, mut seed: u64) -> Vec<SequencedOp> {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
    v
}

/// Run `events`, heal, check convergence; returns the fresh replica, the sessions and mesh.
fn run_events(events: Vec<Event>) -> (tempfile::TempDir, Connection, Vec<SessionId>, MeshId) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = MeshId::new();
    let key = MeshKey::generate();
    let mut relay = Relay {
        log: Vec::new(),
        ids: HashMap::new(),
    };
    let mut reps: Vec<Replica> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("r{i}.db"));
            Replica {
                conn: Some(open(&path)),
                path,
                member: MemberSecret::generate(),
                session: SessionId::new(),
                online: true,
                order: Reorder::new(1),
                unsent: Vec::new(),
            }
        })
        .collect();
    for e in events {
        match e {
            Event::Write { r, kind, a, b } => {
                if let Some(op) = make_op(&mut reps[r], mesh, kind, a, b) {
                    reps[r].write(mesh, &key, op);
                }
            }
            Event::Publish { r, n } => {
                if reps[r].online {
                    let k = n.min(reps[r].unsent.len());
                    for env in reps[r].unsent.drain(..k) {
                        relay.append(env);
                    }
                }
            }
            Event::Deliver { r, n, shuffle } => {
                if reps[r].online {
                    let from = reps[r].order.next.saturating_sub(1) as usize;
                    let mut batch: Vec<SequencedOp> =
                        relay.log.iter().skip(from).take(n).cloned().collect();
                    // A duplicate of something already applied, too.
                    if from > 0 {
                        batch.push(relay.log[from - 1].clone());
                    }
                    for o in shuffled(batch, shuffle) {
                        reps[r].receive(mesh, &key, vec![o]);
                    }
                }
            }
            Event::Disconnect { r } => {
                reps[r].online = false;
                reps[r].unsent.clear();
            }
            Event::Reconnect { r } => reps[r].reconnect(mesh),
            Event::Restart { r } => {
                reps[r].conn = None;
                reps[r].online = false;
                reps[r].unsent.clear();
            }
        }
    }
    // Heal: everyone reconnects, publishes and catches up.
    for r in reps.iter_mut() {
        r.reconnect(mesh);
        for env in r.unsent.drain(..) {
            relay.append(env);
        }
    }
    for r in reps.iter_mut() {
        let from = r.order.next.saturating_sub(1) as usize;
        let rest: Vec<SequencedOp> = relay.log.iter().skip(from).cloned().collect();
        r.receive(mesh, &key, rest);
    }
    let mut fresh = open(&dir.path().join("fresh.db"));
    if !relay.log.is_empty() {
        apply(&mut fresh, mesh, &key, relay.log.clone());
    }
    let want = query::q_digest(&fresh, mesh).unwrap();
    assert_eq!(want.seq, relay.log.len() as u64);
    for (i, r) in reps.iter_mut().enumerate() {
        let got = query::q_digest(r.conn(), mesh).unwrap();
        assert_eq!(got.pending, 0, "replica {i} still has pending ops");
        assert_eq!(got, want, "replica {i} diverged");
    }
    // A snapshot of the fold loads into an empty store as the same state.
    if let Some((seq, hash)) = query::q_head(&fresh, mesh).unwrap() {
        let tx = fresh.transaction().unwrap();
        let snap = crate::shared::snapshot::capture(&tx, mesh, seq, hash).unwrap();
        drop(tx);
        let mut other = open(&dir.path().join("from-snapshot.db"));
        let tx = other.transaction().unwrap();
        crate::shared::snapshot::load(&tx, mesh, &snap).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            query::q_digest(&other, mesh).unwrap(),
            want,
            "snapshot round trip"
        );
    }
    let sessions = reps.iter().map(|r| r.session).collect();
    (dir, fresh, sessions, mesh)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_replica_folds_to_the_same_state(events in proptest::collection::vec(event(), 1..80)) {
        drop(run_events(events));
    }
}

#[test]
fn a_claim_race_has_one_winner_by_log_order() {
    // Two replicas claim the same task while apart; the first in the log wins on both.
    let (_dir, fresh, sessions, mesh) = run_events(vec![
        Event::Write {
            r: 0,
            kind: 4,
            a: 0,
            b: 0,
        },
        Event::Publish { r: 0, n: 1 },
        Event::Deliver {
            r: 1,
            n: 1,
            shuffle: 0,
        },
        Event::Deliver {
            r: 2,
            n: 1,
            shuffle: 0,
        },
        Event::Write {
            r: 1,
            kind: 5,
            a: 0,
            b: 0,
        },
        Event::Write {
            r: 2,
            kind: 5,
            a: 0,
            b: 0,
        },
        Event::Publish { r: 2, n: 1 },
        Event::Publish { r: 1, n: 1 },
    ]);
    let tasks = query::q_tasks(&fresh, mesh, None, None, &Default::default()).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status, "claimed");
    assert_eq!(
        tasks[0].assignee_id,
        Some(sessions[2]),
        "replica 2 published first"
    );
}
