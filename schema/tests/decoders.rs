//! The decoders that read untrusted input never panic, and what they decode round-trips:
//! relay frames (`wire::decode`), invite links (`InviteLink::parse`), local IPC lines
//! (`Request`, `Incoming`) and snapshots (`op::open_snapshot`). The same decoders are
//! fuzzed for longer in `fuzz/` (`scripts/fuzz`); these cheap properties run in CI.
#![allow(clippy::unwrap_used)]

use claudemesh_schema::crypto::{BoxPublic, MemberKey, MemberSecret, MeshKey, Signature};
use claudemesh_schema::invite::InviteLink;
use claudemesh_schema::ipc::{Incoming, Notification, Request, Response};
use claudemesh_schema::op::{self, OpEnvelope, SequencedOp, SnapshotBody, SnapshotTable};
use claudemesh_schema::roster::RosterHead;
use claudemesh_schema::wire::{self, ClientFrame, Envelope, ErrorCode, RelayFrame, Route, Seal};
use claudemesh_schema::{InviteId, MeshId, MessageId, OpId, SessionId};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Value, json};

// ---- generators ----

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<[u8; 16]>().prop_map(uuid::Uuid::from_bytes)
}

fn member() -> impl Strategy<Value = MemberKey> {
    any::<[u8; 32]>().prop_map(MemberKey)
}

fn signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..64)
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        uuid().prop_map(|u| Route::Session {
            session: SessionId(u)
        }),
        member().prop_map(|member| Route::Member { member }),
        vec(uuid().prop_map(SessionId), 0..4).prop_map(|sessions| Route::Sessions { sessions }),
        Just(Route::All),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        uuid(),
        uuid(),
        member(),
        route(),
        prop_oneof![Just(Seal::Box), Just(Seal::Mesh)],
        bytes(),
    )
        .prop_map(|(id, from, from_member, to, seal, ct)| Envelope {
            epoch: 0,
            id: MessageId(id),
            from: SessionId(from),
            from_member,
            to,
            seal,
            ct,
        })
}

fn op_envelope() -> impl Strategy<Value = OpEnvelope> {
    (
        uuid(),
        member(),
        bytes(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(id, author, ct, roster)| OpEnvelope {
            epoch: 0,
            id: OpId(id),
            author,
            ct,
            roster,
        })
}

fn sequenced() -> impl Strategy<Value = SequencedOp> {
    (any::<u64>(), any::<i64>(), op_envelope()).prop_map(|(seq, at, op)| SequencedOp {
        seq,
        at,
        op,
    })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadFrame,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::NotAMember,
        ErrorCode::IdTaken,
        ErrorCode::CreationRefused,
        ErrorCode::RosterChanged,
        ErrorCode::Unknown,
    ])
}

fn hello() -> impl Strategy<Value = ClientFrame> {
    (
        vec(any::<u32>(), 0..3),
        (uuid(), member(), uuid(), any::<[u8; 32]>()),
        any::<i64>(),
        any::<[u8; 16]>(),
        signature(),
        ".{0,12}",
        proptest::option::of((any::<u64>(), any::<[u8; 32]>())),
    )
        .prop_map(
            |(versions, (mesh, member, session, key), ts, nonce, sig, client, head)| {
                ClientFrame::Hello(wire::Hello {
                    versions,
                    mesh: MeshId(mesh),
                    member,
                    session: SessionId(session),
                    session_key: BoxPublic(key),
                    ts,
                    nonce,
                    sig,
                    client,
                    roster_head: head.map(|(len, hash)| RosterHead { len, hash }),
                })
            },
        )
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        any::<u64>().prop_map(|n| ClientFrame::Ping { n }),
        hello(),
        envelope().prop_map(ClientFrame::Send),
        vec(uuid().prop_map(MessageId), 0..8).prop_map(|ids| ClientFrame::Ack {
            proofs: ids
                .iter()
                .map(|i| Signature([i.0.as_bytes()[0]; 64]))
                .collect(),
            ids,
        }),
        uuid().prop_map(|u| ClientFrame::Depart {
            session: SessionId(u)
        }),
        op_envelope().prop_map(ClientFrame::Op),
        any::<u64>().prop_map(|from| ClientFrame::OpSync { from }),
        (any::<u64>(), any::<u32>(), any::<u32>(), bytes()).prop_map(|(seq, part, parts, data)| {
            ClientFrame::SnapshotPart {
                seq,
                part,
                parts,
                data,
            }
        }),
        (any::<u64>(), any::<u64>(), any::<u32>())
            .prop_map(|(rid, from, limit)| ClientFrame::OpRead { rid, from, limit }),
        (
            uuid(),
            member(),
            any::<[u8; 32]>(),
            any::<i64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(invite, member, b, at, proof)| {
                ClientFrame::Claim(wire::ClaimRequest {
                    invite: InviteId(invite),
                    member,
                    box_key: BoxPublic(b),
                    at,
                    proof,
                    note: Vec::new(),
                    durable: false,
                })
            }),
    ]
}

fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    prop_oneof![
        any::<u64>().prop_map(|rid| RelayFrame::Ok { rid }),
        (
            proptest::option::of(any::<u64>()),
            error_code(),
            ".{0,20}",
            any::<bool>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(rid, code, message, fatal, retry_ms)| RelayFrame::Error {
                rid,
                code,
                message,
                fatal,
                retry_ms
            }),
        (uuid(), any::<i64>()).prop_map(|(id, at)| RelayFrame::Relayed {
            id: MessageId(id),
            at
        }),
        (envelope(), any::<i64>()).prop_map(|(env, at)| RelayFrame::Deliver { env, at }),
        (uuid(), member(), any::<i64>()).prop_map(|(id, member, at)| RelayFrame::Receipt {
            id: MessageId(id),
            proof: (at % 2 == 0).then_some(Signature([7; 64])),
            member,
            at
        }),
        any::<u64>().prop_map(|queued| RelayFrame::Ready { queued }),
        (vec(sequenced(), 0..3), proptest::option::of(any::<u64>()))
            .prop_map(|(ops, head)| RelayFrame::Ops { ops, head }),
        (any::<u64>(), member(), any::<u32>(), any::<u32>(), bytes()).prop_map(
            |(seq, author, part, parts, data)| RelayFrame::SnapshotPart {
                seq,
                author,
                part,
                parts,
                data
            }
        ),
        (any::<u64>(), any::<i64>())
            .prop_map(|(n, server_time)| RelayFrame::Pong { n, server_time }),
    ]
}

/// JSON without floats (serde_json, as built here, may move an `f64` by a ULP in a trip).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Small edits of a valid input: flip, insert or delete bytes at random places.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6).prop_map(move |edits| {
        let mut b = base.clone();
        for (at, byte, kind) in edits {
            let i = at.index(b.len() + 1);
            match kind {
                0 if i < b.len() => b[i] = byte,
                1 => b.insert(i, byte),
                _ if i < b.len() => {
                    b.remove(i);
                }
                _ => b.push(byte),
            }
        }
        b
    })
}

fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        client_frame().prop_map(|f| wire::encode(&f).unwrap()),
        relay_frame().prop_map(|f| wire::encode(&f).unwrap()),
    ]
    .prop_flat_map(mutate)
}

fn link() -> impl Strategy<Value = InviteLink> {
    (
        "[a-z0-9.-]{1,24}|\\[[0-9a-f:]{2,16}\\]",
        any::<u16>(),
        any::<[u8; 32]>(),
        uuid(),
        any::<[u8; 16]>(),
        proptest::option::of(any::<[u8; 16]>()),
    )
        .prop_map(
            |(host, port, fingerprint, invite, secret, genesis)| InviteLink {
                relay: format!("{host}:{port}"),
                fingerprint,
                invite: InviteId(invite),
                secret,
                genesis,
            },
        )
}

fn decode_any(b: &[u8]) {
    let _ = wire::decode::<ClientFrame>(b);
    let _ = wire::decode::<RelayFrame>(b);
}

fn parse_line(line: &str) {
    let _ = serde_json::from_str::<Request>(line);
    let _ = serde_json::from_str::<Incoming>(line);
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(b in vec(any::<u8>(), 0..512)) {
        decode_any(&b);
    }

    #[test]
    fn edited_frames_never_panic_the_frame_decoder(b in frame_bytes()) {
        decode_any(&b);
    }

    #[test]
    fn client_frames_round_trip(f in client_frame()) {
        let bytes = wire::encode(&f).unwrap();
        prop_assert_eq!(wire::decode::<ClientFrame>(&bytes).unwrap(), f);
    }

    #[test]
    fn relay_frames_round_trip(f in relay_frame()) {
        let bytes = wire::encode(&f).unwrap();
        prop_assert_eq!(wire::decode::<RelayFrame>(&bytes).unwrap(), f);
    }

    #[test]
    fn arbitrary_text_never_panics_the_invite_parser(s in ".{0,160}") {
        let _ = InviteLink::parse(&s);
    }

    #[test]
    fn edited_links_never_panic_the_invite_parser(
        b in link().prop_flat_map(|l| mutate(l.to_link().into_bytes()))
    ) {
        let _ = InviteLink::parse(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn invite_links_round_trip(l in link(), pad in "[ \t\n]{0,3}", slash in any::<bool>()) {
        let s = l.to_link();
        let typed = format!("{pad}{s}{}{pad}", if slash { "/" } else { "" });
        prop_assert_eq!(InviteLink::parse(&typed).unwrap(), l.clone());
        let bare = s.strip_prefix("claudemesh://").unwrap();
        prop_assert_eq!(InviteLink::parse(bare).unwrap(), l);
    }

    #[test]
    fn arbitrary_text_never_panics_the_ipc_line_parser(s in ".{0,200}") {
        parse_line(&s);
    }

    #[test]
    fn edited_ipc_lines_never_panic_the_parser(
        b in (any::<u64>(), "[a-z_]{1,12}", json_value())
            .prop_map(|(id, m, p)| serde_json::to_vec(&Request::new(id, &m, p)).unwrap())
            .prop_flat_map(mutate)
    ) {
        parse_line(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn ipc_requests_round_trip(id in any::<u64>(), method in "[a-z_]{1,16}", params in json_value()) {
        let r = Request::new(id, &method, params.clone());
        let back: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        prop_assert_eq!((back.jsonrpc.as_str(), back.id), ("2.0", id));
        prop_assert_eq!(back.method, method);
        prop_assert_eq!(back.params, params);
    }

    #[test]
    fn ipc_answers_round_trip(
        id in any::<u64>(),
        result in json_value(),
        code in any::<i32>(),
        message in ".{0,20}",
        method in "[a-z_]{1,12}",
    ) {
        for r in [Response::ok(id, result.clone()), Response::err(id, code, message.clone())] {
            let line = serde_json::to_string(&r).unwrap();
            let Incoming::Response(back) = serde_json::from_str(&line).unwrap() else {
                panic!("a response read as a notification: {line}");
            };
            prop_assert_eq!(back.id, id);
            prop_assert_eq!(back.result, r.result);
            prop_assert_eq!(back.error, r.error);
        }
        let n = Notification { jsonrpc: "2.0".into(), method: method.clone(), params: result };
        let line = serde_json::to_string(&n).unwrap();
        let Incoming::Notification(back) = serde_json::from_str(&line).unwrap() else {
            panic!("a notification read as a response: {line}");
        };
        prop_assert_eq!(back.method, method);
        prop_assert_eq!(back.params, n.params);
    }
}

proptest! {
    // Each case signs, seals and opens: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshots_round_trip_through_their_seal(
        seq in any::<u64>(),
        hash in any::<[u8; 32]>(),
        rows in vec(vec(json_value(), 0..4), 0..4),
        junk in vec(any::<u8>(), 0..256),
    ) {
        let (key, author) = (MeshKey::generate(), MemberSecret::generate());
        let body = SnapshotBody {
            mesh: MeshId::new(),
            seq,
            hash,
            tables: vec![SnapshotTable {
                name: "state_kv".into(),
                columns: vec!["mesh".into(), "seq".into()],
                rows,
            }],
            roster_floor: None,
        };
        let ct = op::seal_snapshot(&key, &author, &body).unwrap();
        let opened = op::open_snapshot(&key, &body.mesh, seq, &author.public(), &ct).unwrap();
        prop_assert_eq!(opened, body.clone());
        // Arbitrary ciphertext is refused, never a panic.
        prop_assert!(op::open_snapshot(&key, &body.mesh, seq, &author.public(), &junk).is_err());
    }
}
