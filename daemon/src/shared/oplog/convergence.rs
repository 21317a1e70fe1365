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
use claudemesh_schema::roster::{Role, RosterEntry, RosterHead, RosterHistory, RosterOp};

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
            roster: Some(2),
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

    fn receive(
        &mut self,
        mesh: MeshId,
        key: &MeshKey,
        roster: &RosterHistory,
        ops: Vec<SequencedOp>,
    ) {
        let run = self.order.push(ops);
        if run.is_empty() {
            return;
        }
        apply(self.conn(), mesh, key, roster, run);
    }
}

/// The roster of the model's mesh: replica 0 owns it and added the other two.
fn roster(members: &[MemberSecret], mesh: MeshId) -> RosterHistory {
    let mut h = RosterHistory::new(members[0].public());
    for (i, m) in members[1..].iter().enumerate() {
        let e = RosterEntry::sign(
            &members[0],
            &RosterHead {
                len: i as u64,
                hash: [0; 32],
            },
            mesh,
            m.public(),
            Role::Member,
            RosterOp::Add,
            1,
            None,
        );
        h.push(i as u64, &e);
    }
    h
}

fn apply(
    conn: &mut Connection,
    mesh: MeshId,
    key: &MeshKey,
    roster: &RosterHistory,
    run: Vec<SequencedOp>,
) {
    let opened = run
        .into_iter()
        .map(|o| {
            let b = op::open_op(key, &mesh, &o.op).map_err(|e| e.to_string());
            (o, b)
        })
        .collect();
    let tx = conn.transaction().unwrap();
    apply_run(&tx, mesh, opened, None, roster, |_, _, _| Ok(())).unwrap();
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
    let keys: Vec<MemberSecret> = reps
        .iter()
        .map(|r| MemberSecret::from_bytes(&r.member.to_bytes()))
        .collect();
    let members = roster(&keys, mesh);
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
                        reps[r].receive(mesh, &key, &members, vec![o]);
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
        r.receive(mesh, &key, &members, rest);
    }
    let mut fresh = open(&dir.path().join("fresh.db"));
    if !relay.log.is_empty() {
        apply(&mut fresh, mesh, &key, &members, relay.log.clone());
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
        let snap = crate::shared::snapshot::capture(&tx, mesh, seq, hash, Some(2)).unwrap();
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
    let tasks = query::q_tasks(
        &fresh,
        mesh,
        None,
        None,
        &Default::default(),
        None,
        &Default::default(),
    )
    .unwrap()
    .0;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status, "claimed");
    assert_eq!(
        tasks[0].assignee_id,
        Some(sessions[2]),
        "replica 2 published first"
    );
}

/// A model mesh with a hand-made log: members' keys, the roster's history, and the ops as
/// the relay sequenced them.
struct Log {
    mesh: MeshId,
    key: MeshKey,
    ops: Vec<SequencedOp>,
}

impl Log {
    fn new() -> Self {
        Self {
            mesh: MeshId::new(),
            key: MeshKey::generate(),
            ops: Vec::new(),
        }
    }

    /// `by` writes `op`, claiming `roster` entries (what its daemon had applied).
    fn write(&mut self, by: &MemberSecret, roster: Option<u64>, op: Op) {
        let body = OpBody {
            id: OpId::new(),
            session: SessionId::new(),
            name: "w".into(),
            at: 0,
            roster,
            op,
        };
        let env = op::seal_op(&self.key, &self.mesh, by, &body).unwrap();
        let seq = self.ops.len() as u64 + 1;
        self.ops.push(SequencedOp {
            seq,
            at: seq as i64 * 1000,
            op: env,
        });
    }

    fn set(&mut self, by: &MemberSecret, roster: Option<u64>, key: &str) {
        self.write(
            by,
            roster,
            Op::SetState {
                key: key.into(),
                value: serde_json::json!(1),
            },
        );
    }

    /// Apply ops `from..to` (1-based, inclusive) on `conn` with `roster`; the notices.
    fn apply(
        &self,
        conn: &mut Connection,
        roster: &RosterHistory,
        from: u64,
        to: u64,
    ) -> rusqlite::Result<Vec<fold::Notice>> {
        let opened = self.ops[(from - 1) as usize..to as usize]
            .iter()
            .map(|o| {
                let b = op::open_op(&self.key, &self.mesh, &o.op).map_err(|e| e.to_string());
                (o.clone(), b)
            })
            .collect();
        let tx = conn.transaction().unwrap();
        let mut notices = Vec::new();
        apply_run(&tx, self.mesh, opened, None, roster, |_, _, n| {
            notices.extend(n);
            Ok(())
        })?;
        tx.commit().unwrap();
        Ok(notices)
    }
}

fn keys_of(conn: &Connection, mesh: MeshId) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT key FROM state_kv WHERE mesh = ?1 ORDER BY key")
        .unwrap();
    stmt.query_map(params![mesh.as_bytes()], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn entry(
    by: &MemberSecret,
    mesh: MeshId,
    who: &MemberSecret,
    role: Role,
    op: RosterOp,
) -> RosterEntry {
    // Not checked here (histories are fed entries as given): any place will do.
    let head = RosterHead {
        len: 0,
        hash: [0; 32],
    };
    RosterEntry::sign(by, &head, mesh, who.public(), role, op, 1, None)
}

#[test]
fn ops_of_removed_or_never_admitted_keys_are_skipped_on_every_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new();
    let (owner, member, stranger) = (
        MemberSecret::generate(),
        MemberSecret::generate(),
        MemberSecret::generate(),
    );
    let mesh = log.mesh;
    // The roster: the owner adds the member (entry 0), then removes it (entry 1).
    let mut before = RosterHistory::new(owner.public());
    before.push(
        0,
        &entry(&owner, mesh, &member, Role::Member, RosterOp::Add),
    );
    let mut after = before.clone();
    after.push(
        1,
        &entry(&owner, mesh, &member, Role::Member, RosterOp::Remove),
    );

    log.set(&owner, Some(1), "owner-1");
    log.set(&member, Some(1), "member-while-a-member");
    log.set(&stranger, Some(1), "never-admitted");
    log.set(&stranger, None, "never-admitted-unplaced");
    log.set(&owner, Some(2), "owner-after-the-removal");
    log.set(&member, Some(1), "removed-claiming-an-old-place");
    log.set(&member, None, "removed-claiming-no-place");
    log.set(&member, Some(0), "removed-claiming-the-genesis");
    let n = log.ops.len() as u64;

    // A applied the first ops live, before the removal reached it.
    let mut a = open(&dir.path().join("a.db"));
    log.apply(&mut a, &before, 1, 4).unwrap();
    // An op standing after an entry A does not hold waits (the run rolls back).
    let e = log.apply(&mut a, &before, 5, n).unwrap_err().to_string();
    assert!(e.contains("only 1 are known"), "{e}");
    assert_eq!(query::q_head(&a, mesh).unwrap().unwrap().0, 4);
    log.apply(&mut a, &after, 5, n).unwrap();
    // B caught up later, with the whole roster.
    let mut b = open(&dir.path().join("b.db"));
    log.apply(&mut b, &after, 1, n).unwrap();
    // C started from B's snapshot after the owner's op, then applied the rest.
    let mut c = open(&dir.path().join("c.db"));
    {
        let mut s = open(&dir.path().join("s.db"));
        log.apply(&mut s, &after, 1, 5).unwrap();
        let tx = s.transaction().unwrap();
        let (seq, hash) = query::q_head(&tx, mesh).unwrap().unwrap();
        let floor: Option<i64> = tx
            .query_row(
                "SELECT roster_floor FROM op_heads WHERE mesh = ?1",
                params![mesh.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let snap = crate::shared::snapshot::capture(&tx, mesh, seq, hash, floor.map(|f| f as u64))
            .unwrap();
        drop(tx);
        let tx = c.transaction().unwrap();
        crate::shared::snapshot::load(&tx, mesh, &snap).unwrap();
        tx.commit().unwrap();
    }
    log.apply(&mut c, &after, 6, n).unwrap();

    let want = vec![
        "member-while-a-member".to_string(),
        "owner-1".to_string(),
        "owner-after-the-removal".to_string(),
    ];
    let digest = query::q_digest(&b, mesh).unwrap();
    for (name, conn) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(keys_of(conn, mesh), want, "{name}");
        assert_eq!(query::q_digest(conn, mesh).unwrap(), digest, "{name}");
        // Skipped ops stay in the log and the chain.
        let logged: i64 = conn
            .query_row(
                "SELECT count(*) FROM op_log WHERE mesh = ?1 AND error IS NULL",
                params![mesh.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let from = if name == "c" { n - 5 } else { n };
        assert_eq!(logged as u64, from, "{name}");
    }
}

#[test]
fn a_skill_is_replaced_or_removed_only_by_its_author_or_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new();
    let mesh = log.mesh;
    let [owner, ann, ben, adm] = std::array::from_fn(|_| MemberSecret::generate());
    let mut roster = RosterHistory::new(owner.public());
    roster.push(0, &entry(&owner, mesh, &ann, Role::Member, RosterOp::Add));
    roster.push(1, &entry(&owner, mesh, &ben, Role::Member, RosterOp::Add));
    roster.push(2, &entry(&owner, mesh, &adm, Role::Admin, RosterOp::Add));
    let share = |d: &str| Op::ShareSkill {
        name: "deploy".into(),
        description: d.into(),
        instructions: "do it".into(),
        tags: vec![],
        when_to_use: String::new(),
    };
    let remove = || Op::RemoveSkill {
        name: "deploy".into(),
    };
    let at = Some(3);
    // (who, op, the description after it, or None if the skill is gone)
    let steps: Vec<(&MemberSecret, Op, Option<&str>)> = vec![
        (&ann, share("ann's"), Some("ann's")),
        (&ben, share("ben's"), Some("ann's")),
        (&ben, remove(), Some("ann's")),
        (&ann, share("ann's again"), Some("ann's again")),
        (&adm, share("the admin's"), Some("the admin's")),
        (&ann, share("ann's once more"), Some("the admin's")),
        (&owner, remove(), None),
        (&ben, share("ben's, now free"), Some("ben's, now free")),
    ];
    let mut a = open(&dir.path().join("a.db"));
    for (i, (who, op, want)) in steps.into_iter().enumerate() {
        log.write(who, at, op);
        let seq = i as u64 + 1;
        let notices = log.apply(&mut a, &roster, seq, seq).unwrap();
        let got: Option<String> = a
            .query_row(
                "SELECT description FROM skills WHERE mesh = ?1 AND name = 'deploy'",
                params![mesh.as_bytes()],
                |r| r.get(0),
            )
            .ok();
        assert_eq!(got.as_deref(), want, "step {seq}");
        // A refused change is told to its author.
        let refused = matches!(seq, 2 | 3 | 6);
        assert_eq!(
            notices.len(),
            usize::from(refused),
            "step {seq}: {notices:?}"
        );
        if refused {
            assert!(notices[0].text.contains("only its author or an admin"));
        }
    }
    let mut b = open(&dir.path().join("b.db"));
    log.apply(&mut b, &roster, 1, log.ops.len() as u64).unwrap();
    assert_eq!(
        query::q_digest(&a, mesh).unwrap(),
        query::q_digest(&b, mesh).unwrap()
    );
}

#[test]
fn a_key_epoch_folds_only_as_the_next_epoch_by_an_admin_and_the_same_on_every_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new();
    let mesh = log.mesh;
    let [owner, adm, ann] = std::array::from_fn(|_| MemberSecret::generate());
    let mut roster = RosterHistory::new(owner.public());
    roster.push(0, &entry(&owner, mesh, &adm, Role::Admin, RosterOp::Add));
    roster.push(1, &entry(&owner, mesh, &ann, Role::Member, RosterOp::Add));
    let rotate = |by: &MemberSecret, epoch: u32| {
        let members = [owner.public(), adm.public(), ann.public()];
        let (_, boxes) = claudemesh_schema::epoch::make_epoch(&mesh, epoch, by, &members).unwrap();
        Op::KeyEpoch {
            epoch,
            roster_len: 2,
            roster_hash: [0; 32],
            boxes,
        }
    };
    let epochs = |c: &Connection| -> Vec<(i64, Vec<u8>, i64)> {
        let mut stmt = c
            .prepare("SELECT epoch, author, seq FROM key_epochs WHERE mesh = ?1 ORDER BY epoch")
            .unwrap();
        stmt.query_map(params![mesh.as_bytes()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    };
    // (who, epoch written, the epochs folded after it as (epoch, seq))
    type Folded = Vec<(i64, i64)>;
    let steps: Vec<(&MemberSecret, u32, Folded)> = vec![
        (&ann, 1, vec![]),                 // a member is not an admin
        (&owner, 2, vec![]),               // not the next epoch
        (&owner, 1, vec![(1, 3)]),         // the next epoch, by the owner
        (&adm, 1, vec![(1, 3)]),           // a concurrent rotation loses by log order
        (&adm, 2, vec![(1, 3), (2, 5)]),   // the next one, by an admin
        (&owner, 2, vec![(1, 3), (2, 5)]), // a replay of a taken epoch
    ];
    let mut a = open(&dir.path().join("a.db"));
    for (i, (who, epoch, want)) in steps.into_iter().enumerate() {
        log.write(who, Some(2), rotate(who, epoch));
        let seq = i as u64 + 1;
        log.apply(&mut a, &roster, seq, seq).unwrap();
        let got: Vec<(i64, i64)> = epochs(&a).into_iter().map(|(e, _, s)| (e, s)).collect();
        assert_eq!(got, want, "step {seq}");
    }
    assert_eq!(epochs(&a)[0].1, owner.public().0.to_vec());
    // Another daemon applying the whole log at once folds the same epochs.
    let mut b = open(&dir.path().join("b.db"));
    log.apply(&mut b, &roster, 1, log.ops.len() as u64).unwrap();
    assert_eq!(epochs(&a), epochs(&b));
}
