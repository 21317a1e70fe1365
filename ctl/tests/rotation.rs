#![allow(clippy::unwrap_used)]
//! Mesh-key rotation: after a member is removed (or leaves) an admin's daemon makes a new
//! key epoch boxed to the members that stay. These scenarios run the real binary and then
//! play the removed member with everything it holds: its key file, copied before it lost
//! the mesh, against every ciphertext its relay saw.

use claudemesh_schema::crypto::{MemberSecret, MeshKey};
use claudemesh_schema::encoding;
use claudemesh_schema::epoch::{self, Epoch};
use claudemesh_schema::message;
use claudemesh_schema::op::{self, Op, OpEnvelope};
use claudemesh_schema::wire::{ClientFrame, Envelope, Seal};
use claudemesh_tests::{Node, mesh, mesh_on};
use serde_json::Value;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// Everything a member's key file holds: its member secret and every mesh key by epoch.
struct Held {
    member: MemberSecret,
    keys: Vec<(Epoch, MeshKey)>,
}

fn held(node: &Node) -> Held {
    let keys = node.dir.join("keys");
    let file = std::fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let key = |s: &Value| MeshKey::from_bytes(encoding::unb64_array(s.as_str().unwrap()).unwrap());
    let mut out = vec![(0, key(&v["mesh_key"]))];
    for e in v["epochs"].as_array().cloned().unwrap_or_default() {
        out.push((e["epoch"].as_u64().unwrap() as Epoch, key(&e["key"])));
    }
    Held {
        member: MemberSecret::from_bytes(
            &encoding::unb64_array(v["member_secret"].as_str().unwrap()).unwrap(),
        ),
        keys: out,
    }
}

/// The frames the relay received, from its `--frame-log` (4-byte length, then JSON).
fn frames(log: &Path) -> Vec<ClientFrame> {
    let bytes = std::fs::read(log).unwrap();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        let n = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        if let Ok(f) = serde_json::from_slice::<ClientFrame>(&bytes[i + 4..i + 4 + n]) {
            out.push(f);
        }
        i += 4 + n;
    }
    out
}

fn synced_to(n: &Node, seq: u64) {
    n.ok(&[
        "wait",
        "synced",
        "--seq",
        &seq.to_string(),
        "--timeout",
        "20",
    ]);
}

/// The mesh-sealed envelopes and the ops the relay saw.
fn sealed(log: &Path) -> (Vec<Envelope>, Vec<OpEnvelope>) {
    let (mut envs, mut ops) = (Vec::new(), Vec::new());
    for f in frames(log) {
        match f {
            ClientFrame::Send(e) if e.seal == Seal::Mesh => envs.push(e),
            ClientFrame::Op(o) => ops.push(o),
            _ => {}
        }
    }
    (envs, ops)
}

/// `gone` (what the removed member holds) opens nothing sealed under `epoch`: neither the
/// broadcast nor the shared-state write sent after it lost the mesh, whichever epoch the
/// envelope is relabelled to; and no box of the rotation opens for its member key.
fn assert_cut_off(gone: &Held, log: &Path, mesh: claudemesh_schema::MeshId, epoch: Epoch) {
    let (envs, ops) = sealed(log);
    let mesh_id = mesh;
    // The rotation itself: sealed under the epoch before (the removed member can open
    // that op), but without a box it can open.
    let rotations: Vec<(OpEnvelope, op::OpBody)> = ops
        .iter()
        .filter_map(|o| {
            let (_, k) = gone.keys.iter().find(|(e, _)| *e == o.epoch)?;
            let b = op::open_op(k, &mesh_id, o).ok()?;
            matches!(b.op, Op::KeyEpoch { epoch: e, .. } if e == epoch).then(|| (o.clone(), b))
        })
        .collect();
    assert!(
        !rotations.is_empty(),
        "the relay carried a rotation to epoch {epoch}"
    );
    for (o, b) in &rotations {
        let Op::KeyEpoch { boxes, .. } = &b.op else {
            unreachable!()
        };
        assert!(boxes.len() >= 2, "boxed to the members that stay");
        assert!(
            boxes.iter().all(|x| x.member != gone.member.public()),
            "no box for the removed member"
        );
        for x in boxes {
            assert!(
                epoch::open_epoch_box(&mesh_id, epoch, x, &o.author, &gone.member).is_err(),
                "the removed member opened a box"
            );
        }
    }
    let after_envs: Vec<&Envelope> = envs.iter().filter(|e| e.epoch == epoch).collect();
    let after_ops: Vec<&OpEnvelope> = ops.iter().filter(|o| o.epoch == epoch).collect();
    assert!(
        !after_envs.is_empty(),
        "a broadcast was sealed under epoch {epoch}"
    );
    assert!(
        !after_ops.is_empty(),
        "an op was sealed under epoch {epoch}"
    );
    for (_, k) in &gone.keys {
        for e in 0..=epoch + 1 {
            for env in &after_envs {
                assert!(
                    message::open_from_mesh_at(e, k, &env.from_member, &env.id, &env.ct).is_err(),
                    "the removed member opened a broadcast sealed after it left"
                );
            }
            for o in &after_ops {
                let mut o = (*o).clone();
                o.epoch = e;
                assert!(
                    op::open_op(k, &mesh_id, &o).is_err(),
                    "the removed member opened an op sealed after it left"
                );
            }
        }
    }
}

fn mesh_id(n: &Node) -> claudemesh_schema::MeshId {
    let v = n.json(&["whoami"]);
    serde_json::from_value(v["identities"][0]["mesh"].clone()).unwrap()
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect()
}

/// After the writes sealed under the new epoch, the members that stay read them.
fn remaining_read_new_epoch(from: &Node, to: &Node, seq: u64, tag: &str) {
    let body = format!("after the removal: {tag}");
    from.ok(&["send", "*", &body]);
    assert_eq!(bodies(&to.inbox_wait()), vec![body]);
    from.ok(&["state", "set", "secret", tag]);
    synced_to(to, seq);
    assert_eq!(to.json(&["state", "get", "secret"])["value"], tag);
}

#[test]
fn after_member_remove_the_remaining_members_read_the_new_epoch_and_the_removed_member_opens_nothing_sealed_after()
 {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("frames.log");
    let (_relay, nodes) = mesh(
        bin(),
        root.path(),
        &["ann", "ben", "cat"],
        &["--frame-log", log.to_str().unwrap()],
    );
    let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
    let mesh = mesh_id(ann);
    ann.ok(&["member", "remove", "cat"]);
    cat.ok(&["wait", "link-error", "--timeout", "20"]);
    // Ann (the owner) rotates: op 1 is the new epoch, folded by both who stay.
    synced_to(ann, 1);
    synced_to(ben, 1);
    remaining_read_new_epoch(ann, ben, 2, "osprey-77");
    // Ben writes too (under the epoch he was boxed), and ann reads it.
    ben.ok(&["state", "set", "from-ben", "heron"]);
    synced_to(ann, 3);
    assert_eq!(ann.json(&["state", "get", "from-ben"])["value"], "heron");
    let gone = held(cat);
    assert_eq!(gone.keys.len(), 1, "the removed member got no new key");
    assert_cut_off(&gone, &log, mesh, 1);
}

#[test]
fn after_a_member_leaves_an_admin_rotates_and_the_member_that_left_opens_nothing_sealed_after() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("frames.log");
    let (_relay, nodes) = mesh(
        bin(),
        root.path(),
        &["ann", "ben", "cat"],
        &["--frame-log", log.to_str().unwrap()],
    );
    let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
    let mesh = mesh_id(ann);
    // Leaving deletes the key file: keep a copy, as a member that means harm would.
    let gone = held(cat);
    cat.ok(&["leave", "test", "--yes"]);
    synced_to(ann, 1);
    synced_to(ben, 1);
    remaining_read_new_epoch(ann, ben, 2, "kestrel-12");
    assert_cut_off(&gone, &log, mesh, 1);
}

claudemesh_tests::per_store! {
    fn a_member_admitted_after_a_rotation_reads_what_was_sealed_before_and_after_it(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        // History under epoch 0, then cat's removal and the rotation (op 2).
        nodes[0].ok(&["state", "set", "before", "epoch-0"]);
        nodes[0].ok(&["member", "remove", "cat"]);
        synced_to(&nodes[0], 2);
        nodes[0].ok(&["state", "set", "after", "epoch-1"]);
        synced_to(&nodes[0], 3);
        // Dan joins afterwards: the join secret carries epoch 1; he folds the whole log.
        let mut dan = Node::new(bin(), root.path(), "dan");
        dan.start();
        let link = nodes[0].ok(&["invite"]);
        dan.ok(&["join", &link, "--wait", "20"]);
        synced_to(&dan, 3);
        assert_eq!(dan.json(&["state", "get", "before"])["value"], "epoch-0");
        assert_eq!(dan.json(&["state", "get", "after"])["value"], "epoch-1");
        assert_eq!(held(&dan).keys.len(), 2, "dan holds epochs 0 and 1");
        // And what is sealed now (epoch 1) reaches him.
        dan.wait("peer-online", Some("ann"));
        nodes[0].ok(&["send", "*", "welcome, dan"]);
        assert_eq!(bodies(&dan.inbox_wait()), vec!["welcome, dan"]);
    }
}

claudemesh_tests::per_store! {
    fn a_member_offline_during_the_rotation_catches_up_on_the_new_epoch_and_its_messages(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        nodes[1].stop();
        let (ann, cat) = (&nodes[0], &nodes[2]);
        ann.ok(&["member", "remove", "cat"]);
        cat.ok(&["wait", "link-error", "--timeout", "20"]);
        synced_to(ann, 1);
        // Sealed under epoch 1 while ben is away: a broadcast waiting at the relay, and ops
        // that ben's catch-up receives in one run with the rotation before them.
        ann.ok(&["send", "*", "while you were out"]);
        for i in 0..3 {
            ann.ok(&["state", "set", &format!("k{i}"), "v"]);
        }
        synced_to(ann, 4);
        nodes[1].start();
        let ben = &nodes[1];
        synced_to(ben, 4);
        for i in 0..3 {
            assert_eq!(ben.json(&["state", "get", &format!("k{i}")])["value"], "v");
        }
        assert_eq!(bodies(&ben.inbox_wait()), vec!["while you were out"]);
        assert_eq!(
            held(ben).keys.len(),
            1,
            "later epochs live in the store, as boxes"
        );
    }
}
