//! Writes the hand-made seed inputs of every fuzz target into `corpus/<target>/seed-*`:
//! real encoded frames, framed streams, IPC lines, invite links and snapshots, as the
//! programs produce them. `cargo run --bin seeds`, then `cargo fuzz cmin <target>`.

use claudemesh_schema::crypto::{BoxSecret, MemberSecret, MeshKey};
use claudemesh_schema::invite::InviteLink;
use claudemesh_schema::ipc::{Notification, Request, Response, methods as m};
use claudemesh_schema::message::{Profile, SignedPresence};
use claudemesh_schema::op::{self, Op, OpBody, SequencedOp, SnapshotBody, SnapshotTable};
use claudemesh_schema::roster::{InviteCap, MeshGenesis, Role, RosterEntry, RosterOp};
use claudemesh_schema::wire::{
    self, ClaimOutcome, ClaimRequest, ClientFrame, Envelope, ErrorCode, Hello, RelayFrame, Route,
    Seal, Welcome,
};
use claudemesh_schema::{InviteId, MeshId, MessageId, OpId, SessionId};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let p: PathBuf = dir.join(format!("seed-{name}"));
    std::fs::write(&p, bytes).expect("seed file");
}

fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn main() {
    let key = MeshKey::generate();
    let owner = MemberSecret::generate();
    let mesh = MeshId::new();
    let session = SessionId::new();
    let boxk = BoxSecret::generate().public();
    let genesis = MeshGenesis::sign(&owner, mesh, 1_700_000_000_000);
    let bob = MemberSecret::generate().public();
    let head = claudemesh_schema::roster::Roster::from_genesis(&genesis)
        .map(|r| r.head())
        .unwrap_or(claudemesh_schema::roster::RosterHead {
            len: 0,
            hash: [0; 32],
        });
    let entry = RosterEntry::sign(&owner, &head, mesh, bob, Role::Member, RosterOp::Add, 5, None);
    let invite = InviteId::new();
    let cap = InviteCap::sign(&owner, invite, mesh, Role::Member, 3, 9, true, 5);
    let env = Envelope {
        epoch: 0,
        id: MessageId::new(),
        from: session,
        from_member: owner.public(),
        to: Route::Member { member: bob },
        seal: Seal::Box,
        ct: vec![1, 2, 3, 4, 5],
    };
    let presence = SignedPresence::sign(
        &key,
        &owner,
        mesh,
        session,
        boxk,
        7,
        &Profile {
            name: "alice".into(),
            ..Profile::default()
        },
    )
    .expect("presence");
    let body = OpBody {
        id: OpId::new(),
        session,
        name: "alice".into(),
        at: 3,
        roster: Some(0),
        op: Op::SetState {
            key: "k".into(),
            value: json!({"a": [1, 2.5, "x"]}),
        },
    };
    let sealed = op::seal_op(&key, &mesh, &owner, &body).expect("op");
    let claim = ClaimRequest {
        invite,
        member: bob,
        box_key: boxk,
        at: 4,
        proof: [3; 32],
        note: Vec::new(),
        durable: false,
    };

    let client = [
        ("ping", ClientFrame::Ping { n: 1 }),
        (
            "hello",
            ClientFrame::Hello(Hello::sign(
                &owner,
                mesh,
                session,
                boxk,
                1,
                "claudemesh/0.1",
            )),
        ),
        (
            "create",
            ClientFrame::CreateMesh {
                rid: 1,
                genesis: genesis.clone(),
                token: Some(wire::CreationToken::new("cmt_0123456789")),
            },
        ),
        ("claim", ClientFrame::Claim(claim.clone())),
        ("send", ClientFrame::Send(env.clone())),
        (
            "send-all",
            ClientFrame::Send(Envelope {
                to: Route::All,
                seal: Seal::Mesh,
                ..env.clone()
            }),
        ),
        (
            "ack",
            ClientFrame::Ack {
                ids: vec![MessageId::new(), MessageId::new()],
                proofs: Vec::new(),
            },
        ),
        ("presence", ClientFrame::Presence(presence.clone())),
        (
            "roster",
            ClientFrame::Roster {
                rid: 2,
                entry: entry.clone(),
            },
        ),
        (
            "invite",
            ClientFrame::InvitePublish {
                rid: 3,
                cap: cap.clone(),
            },
        ),
        ("op", ClientFrame::Op(sealed.clone())),
        ("sync", ClientFrame::OpSync { from: 4 }),
        (
            "snapshot-part",
            ClientFrame::SnapshotPart {
                seq: 8,
                part: 0,
                parts: 2,
                data: vec![9; 20],
            },
        ),
    ];
    let relay = [
        (
            "welcome",
            RelayFrame::Welcome(Welcome {
                version: 1,
                server_time: 2,
                genesis: genesis.clone(),
                roster_entries: 1,
                roster_head: Some(head),
                presences: 0,
                max_ciphertext: wire::MAX_CIPHERTEXT as u64,
            }),
        ),
        (
            "error",
            RelayFrame::Error {
                rid: Some(1),
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                fatal: false,
                retry_ms: Some(100),
            },
        ),
        (
            "deliver",
            RelayFrame::Deliver {
                env: env.clone(),
                at: 3,
            },
        ),
        ("roster", RelayFrame::Roster { seq: 0, entry }),
        (
            "claim-pending",
            RelayFrame::ClaimPending {
                claim: claudemesh_schema::ClaimId::new(),
                request: claim,
                cap,
                at: 5,
            },
        ),
        (
            "claim-refused",
            RelayFrame::ClaimResult(ClaimOutcome::Refused {
                code: ErrorCode::InviteExpired,
                message: "expired".into(),
            }),
        ),
        (
            "ops",
            RelayFrame::Ops {
                ops: vec![SequencedOp {
                    seq: 1,
                    at: 2,
                    op: sealed,
                }],
                head: Some(1),
            },
        ),
        (
            "pong",
            RelayFrame::Pong {
                n: 1,
                server_time: 2,
            },
        ),
    ];
    let mut encoded = Vec::new();
    for (name, f) in &client {
        let b = wire::encode(f).expect("frame");
        write("wire_frame", &format!("client-{name}"), &b);
        encoded.push(b);
    }
    for (name, f) in &relay {
        let b = wire::encode(f).expect("frame");
        write("wire_frame", &format!("relay-{name}"), &b);
        encoded.push(b);
    }

    // length_prefix: [k][k chunk sizes][stream].
    let stream = framed(&encoded[..4]);
    let with = |sizes: &[u8], s: &[u8]| {
        let mut v = vec![sizes.len() as u8];
        v.extend_from_slice(sizes);
        v.extend_from_slice(s);
        v
    };
    write("length_prefix", "whole", &with(&[], &stream));
    write("length_prefix", "chunks", &with(&[0, 6, 200], &stream));
    write(
        "length_prefix",
        "empty-frames",
        &with(&[2], &framed(&[vec![], vec![], b"x".to_vec()])),
    );
    let mut truncated = framed(&encoded[..1]);
    truncated.truncate(truncated.len() - 3);
    write("length_prefix", "truncated", &with(&[9], &truncated));
    let mut huge = framed(&encoded[..1]);
    huge.extend_from_slice(&((wire::MAX_FRAME as u32) + 1).to_be_bytes());
    write("length_prefix", "over-limit", &with(&[], &huge));

    // ipc_line: what the CLI sends and the daemon answers, one per line.
    let lines = [
        Request::new(1, m::HELLO, json!({"client": "claudemesh"})),
        Request::new(
            2,
            m::SEND,
            json!({"to": "bob/api", "body": "hi", "priority": "now", "wait_ms": 500}),
        ),
        Request::new(
            3,
            claudemesh_schema::ipc::shared::STATE_SET,
            json!({"mesh": "dev", "session": session, "key": "k", "value": {"n": 1.5}}),
        ),
        Request::new(4, m::INBOX, Value::Null),
        Request::new(
            5,
            claudemesh_schema::ipc::claude::HOOK,
            json!({"event": "user_prompt_submit", "claude_session": "abc", "prompt": "p"}),
        ),
    ];
    let mut all = String::new();
    for (i, r) in lines.iter().enumerate() {
        let l = serde_json::to_string(r).expect("line");
        write("ipc_line", &format!("request-{i}"), l.as_bytes());
        all.push_str(&l);
        all.push_str("\r\n");
    }
    write("ipc_line", "requests", all.as_bytes());
    let answers = [
        serde_json::to_string(&Response::ok(
            2,
            json!({"id": MessageId::new(), "stage": "relayed"}),
        )),
        serde_json::to_string(&Response::err(3, 1001, "no mesh named dev")),
        serde_json::to_string(&Notification {
            jsonrpc: "2.0".into(),
            method: "message".into(),
            params: json!({"from": "bob", "body": "hi"}),
        }),
    ];
    for (i, a) in answers.iter().enumerate() {
        write(
            "ipc_line",
            &format!("answer-{i}"),
            a.as_ref().expect("line").as_bytes(),
        );
    }

    // invite_link.
    let link = InviteLink {
        relay: "relay.example.com:7900".into(),
        fingerprint: [7; 32],
        invite,
        secret: [9; 16],
        genesis: Some([5; 16]),
    }
    .to_link();
    write("invite_link", "link", link.as_bytes());
    write(
        "invite_link",
        "no-scheme",
        format!("  {}\n", link.trim_start_matches("claudemesh://")).as_bytes(),
    );
    let v6 = InviteLink {
        relay: "[::1]:7900".into(),
        fingerprint: [1; 32],
        invite: InviteId::new(),
        secret: [2; 16],
        genesis: None,
    }
    .to_link();
    write("invite_link", "ipv6", format!("{v6}/").as_bytes());

    // snapshot: one row of every folded table, typed from the daemon's own schema.
    let db = claudemesh_relay::sqlite::open(
        Path::new(":memory:"),
        claudemesh_schema::migrations::DAEMON,
        claudemesh_relay::sqlite::Durability::Normal,
    )
    .expect("store");
    let mut tables = Vec::new();
    for t in [
        "state_kv",
        "memories",
        "tasks",
        "reservations",
        "contexts",
        "skills",
        "reminders",
    ] {
        let mut stmt = db
            .prepare(&format!("PRAGMA table_info({t})"))
            .expect("table info");
        let cols: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
            .expect("columns")
            .collect::<Result<_, _>>()
            .expect("columns");
        let cols: Vec<(String, String)> = cols.into_iter().filter(|(c, _)| c != "n").collect();
        let row = cols
            .iter()
            .map(|(c, ty)| match (c.as_str(), ty.as_str()) {
                ("seq", _) => json!({"i": 2}),
                (_, "INTEGER") => json!({"i": 1}),
                (_, "BLOB") => json!({"b": "AAECAwQFBgcICQoLDA0ODw"}),
                (_, "REAL") => json!({"r": 0.5}),
                _ => json!({"t": "x"}),
            })
            .collect();
        tables.push(SnapshotTable {
            name: t.into(),
            columns: cols.into_iter().map(|(c, _)| c).collect(),
            rows: vec![row],
        });
    }
    let snap = SnapshotBody {
        mesh,
        seq: 2,
        hash: [4; 32],
        tables,
        roster_floor: Some(0),
    };
    // The seed is a snapshot the daemon loads.
    let mut db = db;
    let tx = db.transaction().expect("transaction");
    if let Err(e) = claudemesh_daemon::fuzz_load_snapshot(&tx, snap.mesh, &snap) {
        panic!("the seed snapshot does not load: {e}");
    }
    drop(tx);
    write(
        "snapshot",
        "tables",
        &serde_json::to_vec(&snap).expect("snapshot"),
    );
    // A column named twice: the mesh forced on the first `mesh` must be the one stored.
    let mut dup = snap.clone();
    dup.tables.truncate(1);
    dup.tables[0].columns.push("mesh".into());
    dup.tables[0].rows[0].push(json!({"b": "_____________________w"}));
    write(
        "snapshot",
        "twice",
        &serde_json::to_vec(&dup).expect("snapshot"),
    );
    let empty = SnapshotBody {
        tables: vec![],
        ..snap
    };
    write(
        "snapshot",
        "empty",
        &serde_json::to_vec(&empty).expect("snapshot"),
    );
}
