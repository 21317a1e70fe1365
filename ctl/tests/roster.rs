#![allow(clippy::unwrap_used)]
//! The roster attacked by its relay, end to end: the real `claudemesh` binary as relay and
//! daemons on loopback; ann (the owner) and cat reach the relay directly, ben through a
//! malicious relay operator in the middle (`claudemesh_tests::proxy`: the relay's own
//! certificate, rewriting what the relay sends to ben). The operator replays, hides,
//! skips and substitutes roster entries; ben must refuse each, say why, and keep the
//! membership history it holds.

use claudemesh_schema::roster::MeshGenesis;
use claudemesh_schema::roster::{RosterEntry, RosterHead, RosterOp, chain_next, chain_origin};
use claudemesh_schema::wire::RelayFrame;
use claudemesh_tests::proxy::Proxy;
use claudemesh_tests::{Node, RelayProc};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// What the relay really sent ben, across connections.
#[derive(Default)]
struct Seen {
    genesis: Option<MeshGenesis>,
    entries: BTreeMap<u64, RosterEntry>,
}

impl Seen {
    /// The head after the first `n` entries seen.
    fn head(&self, n: u64) -> RosterHead {
        let mut hash = chain_origin(self.genesis.as_ref().unwrap());
        for (seq, e) in self.entries.range(..n) {
            hash = chain_next(&hash, *seq, e);
        }
        RosterHead { len: n, hash }
    }
}

/// The operator's rewrite of one frame to ben (given what the relay really sent so far).
type Attack = Box<dyn FnMut(&Seen, RelayFrame) -> RelayFrame + Send>;

/// A frame ben's daemon ignores: what a dropped frame is replaced with.
fn nothing() -> RelayFrame {
    RelayFrame::Pong {
        n: 0,
        server_time: 0,
    }
}

#[derive(Default)]
struct Operator {
    seen: Mutex<Seen>,
    attack: Mutex<Option<Attack>>,
}

impl Operator {
    fn set(&self, a: Attack) {
        *self.attack.lock().unwrap() = Some(a);
    }
}

/// A mesh of ann (owner), cat (direct) and ben (through the operator), all online.
struct Fixture {
    _root: tempfile::TempDir,
    _relay: RelayProc,
    _proxy: Proxy,
    op: Arc<Operator>,
    ann: Node,
    ben: Node,
    cat: Node,
}

fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let op = Arc::new(Operator::default());
    let o = op.clone();
    let proxy = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |_, f| {
            {
                let mut seen = o.seen.lock().unwrap();
                match &f {
                    RelayFrame::Welcome(w) => seen.genesis = Some(w.genesis.clone()),
                    RelayFrame::Roster { seq, entry } => {
                        seen.entries.insert(*seq, entry.clone());
                    }
                    _ => {}
                }
            }
            let mut attack = o.attack.lock().unwrap();
            match attack.as_mut() {
                Some(a) => a(&o.seen.lock().unwrap(), f),
                None => f,
            }
        }),
    );
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
    ann.create_on(&relay, "test");
    cat.ok(&["join", &ann.ok(&["invite"]), "--wait", "20"]);
    let via = proxy.invite_via(&ann.ok(&["invite"]));
    ben.ok(&["join", &via, "--wait", "20"]);
    for (a, b) in [
        ("ann", "ben"),
        ("ann", "cat"),
        ("ben", "cat"),
        ("cat", "ben"),
    ] {
        let n = nodes.iter().find(|n| n.name == a).unwrap();
        n.wait("peer-online", Some(b));
    }
    let mut it = nodes.into_iter();
    let (ann, ben, cat) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    Fixture {
        _root: root,
        _relay: relay,
        _proxy: proxy,
        op,
        ann,
        ben,
        cat,
    }
}

/// Ben's link error once its link is down with one.
fn link_error(ben: &Node) -> String {
    ben.wait("link-error", None);
    let st = ben.json(&["status"]);
    let e = st["meshes"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if e.contains("not trustworthy") {
        // `doctor` says so too, with what to do.
        let out = ben.run(&["doctor", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let link = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "link")
            .cloned()
            .unwrap_or_default();
        assert_eq!(link["status"], "fail", "{v}");
        assert!(link["fix"].as_str().unwrap_or("").contains("relay"), "{v}");
    }
    e
}

/// Is cat a member in ben's roster (can ben address cat as a member)?
fn ben_knows_cat(ben: &Node) -> bool {
    ben.run(&["verify", "cat"]).status.success()
}

#[test]
fn a_relay_replaying_an_old_admission_after_a_removal_is_refused_and_the_member_stays_removed() {
    let f = fixture();
    assert!(ben_knows_cat(&f.ben), "control: cat is a member");
    // After cat's removal reaches ben, the operator turns ben's next frame into cat's old
    // admission, resent as the entry after the removal.
    let mut removal = None;
    f.op.set(Box::new(move |seen, frame| match (&frame, removal) {
        (RelayFrame::Roster { seq, entry }, None) if entry.op == RosterOp::Remove => {
            removal = Some(*seq);
            frame
        }
        (_, Some(at)) => {
            let add = seen
                .entries
                .values()
                .find(|e| e.op == RosterOp::Add && e.member == seen.entries[&at].member)
                .unwrap()
                .clone();
            RelayFrame::Roster {
                seq: at + 1,
                entry: add,
            }
        }
        _ => frame,
    }));
    f.cat.ok(&["leave", "test", "--yes"]);
    // Something for ben, in case nothing else follows the removal.
    let _ = f.ann.run(&["send", "ben", "after the removal"]);
    let err = link_error(&f.ben);
    assert!(err.contains("not trustworthy"), "{err}");
    assert!(err.contains("signed for position"), "{err}");
    assert!(!ben_knows_cat(&f.ben), "cat was re-admitted at ben");
    // What ben stored survives a restart: still without cat.
    let mut ben = f.ben;
    ben.stop();
    *f.op.attack.lock().unwrap() = None;
    ben.start();
    ben.wait("link-up", None);
    assert!(!ben_knows_cat(&ben), "cat came back after a restart");
}

#[test]
fn a_member_the_relay_hides_a_removal_from_notices_it_from_the_next_op_and_at_hello() {
    let f = fixture();
    // The removal of cat never reaches ben.
    f.op.set(Box::new(|_, frame| match &frame {
        RelayFrame::Roster { entry, .. } if entry.op == RosterOp::Remove => nothing(),
        _ => frame,
    }));
    f.cat.ok(&["leave", "test", "--yes"]);
    // Ann's next write was made after the removal, and says so (signed).
    f.ann.ok(&["state", "set", "after", "removal"]);
    let err = link_error(&f.ben);
    assert!(err.contains("withholding membership changes"), "{err}");
    assert!(err.contains("written after 3 roster entries"), "{err}");
    assert!(err.contains("gave this daemon only 2"), "{err}");

    // Ben learns the removal (the operator lets it through), then the operator hides it
    // again at hello: its welcome reports the old head and the entry is dropped.
    let mut ben = f.ben;
    ben.stop();
    *f.op.attack.lock().unwrap() = None;
    ben.start();
    ben.wait("link-up", None);
    ben.wait("synced", None);
    assert!(!ben_knows_cat(&ben), "ben has the removal");
    ben.stop();
    f.op.set(Box::new(|seen, frame| match frame {
        RelayFrame::Welcome(mut w) => {
            w.roster_entries -= 1;
            w.roster_head = Some(seen.head(w.roster_entries));
            RelayFrame::Welcome(w)
        }
        RelayFrame::Roster { entry, .. } if entry.op == RosterOp::Remove => nothing(),
        other => other,
    }));
    ben.start();
    let err = link_error(&ben);
    assert!(
        err.contains("reports 2 roster entries but this daemon holds 3"),
        "{err}"
    );
    assert!(!ben_knows_cat(&ben));
}

#[test]
fn a_gap_or_a_fork_in_the_roster_is_refused() {
    let f = fixture();
    let mut ben = f.ben;
    // Gap: the next entry arrives one place further on.
    f.op.set(Box::new(|_, frame| match frame {
        RelayFrame::Roster { seq, entry } if entry.op == RosterOp::Remove => RelayFrame::Roster {
            seq: seq + 1,
            entry,
        },
        other => other,
    }));
    f.cat.ok(&["leave", "test", "--yes"]);
    let err = link_error(&ben);
    assert!(err.contains("entries were skipped"), "{err}");
    assert!(ben_knows_cat(&ben), "an entry after a gap was applied");

    // Fork: on reconnect, another entry in place of one ben holds (ben's own admission,
    // entry 1, in place of cat's, entry 0).
    ben.stop();
    f.op.set(Box::new(|seen, frame| match frame {
        RelayFrame::Roster { seq: 0, .. } => RelayFrame::Roster {
            seq: 0,
            entry: seen.entries[&1].clone(),
        },
        other => other,
    }));
    ben.start();
    let err = link_error(&ben);
    assert!(
        err.contains("a different roster entry at position 0"),
        "{err}"
    );
}
