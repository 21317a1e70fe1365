#![allow(clippy::unwrap_used)]
//! Power loss: the relay's and both daemons' data on a disk that drops whatever was not
//! synced (`claudemesh_tests::power`), every process killed, the power cut, everything
//! started again. Every acknowledged send must reach its recipient and every acknowledged
//! shared-state write must be on both members: `kill -9` alone keeps the page cache, so
//! only this proves the commits really wait for the disk.

use claudemesh_tests::power::{Disk, Lost};
use claudemesh_tests::{Node, RelayProc, form_mesh};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::sync::mpsc;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// What the CLI acknowledged: message bodies each recipient must get, and state keys
/// with the value last written.
#[derive(Debug, Default)]
struct Acked {
    to: BTreeMap<String, BTreeSet<String>>,
    state: BTreeMap<String, String>,
}

impl Acked {
    fn send(&mut self, from: &Node, to: &Node, body: &str) {
        let r = from.json(&["send", &to.name, body]);
        assert!(
            r["stage"] == "relayed" || r["stage"] == "queued",
            "an acknowledged send is relayed or queued: {r}"
        );
        self.sent(to, body);
    }

    fn sent(&mut self, to: &Node, body: &str) {
        self.to
            .entry(to.name.clone())
            .or_default()
            .insert(body.to_string());
    }

    fn set(&mut self, by: &Node, key: &str, value: &str) {
        by.ok(&["state", "set", key, value]);
        self.state.insert(key.to_string(), value.to_string());
    }
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

/// SIGKILL by pid, so that workers still holding `&Node` keep running their commands
/// (which then fail) while the processes die; `Node::kill` reaps them afterwards.
fn kill9(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Every process off, the power cut, every process on again; the relay comes back with
/// the certificate the daemons pinned.
fn power_cycle(disk: &mut Disk, relay: &mut RelayProc, nodes: &mut [&mut Node]) {
    relay.kill();
    for n in nodes.iter_mut() {
        n.kill();
    }
    let lost = disk.power_cut();
    // The cut must have had something to drop (at the least SQLite's never-synced -shm
    // files), or it proved nothing.
    assert_ne!(lost, Lost::default(), "the power cut dropped nothing");
    let pinned = relay.fingerprint.clone();
    relay.restart();
    assert_eq!(
        relay.fingerprint, pinned,
        "the relay's certificate (pinned by every member) survived the power cut"
    );
    for n in nodes.iter_mut() {
        n.start();
    }
}

/// `to` holds every message acknowledged for it, each once.
fn delivered(to: &Node, acked: &Acked) {
    let want = acked.to.get(&to.name).cloned().unwrap_or_default();
    // Each round either finds all, or waits for the next arrival (`--wait` takes the
    // unread ones; `--all` lists read ones too).
    for _ in 0..=want.len() {
        let all = to.json(&["inbox", "--all", "--limit", "1000"]);
        let bodies: Vec<String> = all["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect();
        let have: BTreeSet<String> = bodies.iter().cloned().collect();
        assert_eq!(have.len(), bodies.len(), "a message twice: {bodies:?}");
        let missing: Vec<&String> = want.difference(&have).collect();
        if missing.is_empty() {
            return;
        }
        let v = to.json(&["inbox", "--wait", "20"]);
        assert!(
            !v["messages"].as_array().unwrap().is_empty(),
            "{} never got {} acknowledged messages: {missing:?}",
            to.name,
            missing.len()
        );
    }
}

/// Both members in sync, with the same log and every acknowledged write.
fn converged(a: &Node, b: &Node, acked: &Acked) {
    for n in [a, b] {
        n.wait("link-up", None);
        n.ok(&["wait", "synced", "--timeout", "30"]);
    }
    let head = a.json(&["debug", "digest"])["seq"].as_u64().unwrap();
    b.ok(&[
        "wait",
        "synced",
        "--seq",
        &head.to_string(),
        "--timeout",
        "30",
    ]);
    let digest = |n: &Node| n.json(&["debug", "digest"]);
    assert_eq!(digest(a), digest(b));
    for n in [a, b] {
        for (k, v) in &acked.state {
            let got = n.json(&["state", "get", k]);
            assert_eq!(got["value"], v.as_str(), "{} lost {k}: {got}", n.name);
        }
    }
}

/// Send or write until the command fails (its daemon was killed); report each
/// acknowledgement on `tick`. Returns what was acknowledged.
fn until_killed(
    tick: &mpsc::Sender<()>,
    mut attempt: impl FnMut(usize) -> Option<String>,
) -> Vec<String> {
    let mut acked = Vec::new();
    // Bounded: the main thread kills everything after a few acknowledgements each.
    for i in 0..2_000 {
        match attempt(i) {
            Some(x) => acked.push(x),
            None => break,
        }
        let _ = tick.send(());
    }
    acked
}

#[test]
fn every_acknowledged_send_and_write_survives_a_power_cut() {
    let root = tempfile::tempdir().unwrap();
    let mut disk = Disk::mount(&root.path().join("disk"));
    let mut nodes = [
        Node::new(bin(), disk.path(), "alice"),
        Node::new(bin(), disk.path(), "bob"),
    ];
    // The users' own files (config directories, config.toml) are old news to the disk;
    // everything from here on is written by the relay and the daemons.
    disk.sync_all();
    let mut relay = RelayProc::start(bin(), &disk.path().join("relay"), &[]);
    form_mesh(&relay, &mut nodes);
    let [alice, bob] = &mut nodes;
    let mut acked = Acked::default();

    // 1. All up: delivered, read, sequenced.
    for i in 0..4 {
        acked.send(alice, bob, &format!("to bob, all up {i}"));
        acked.send(bob, alice, &format!("to alice, all up {i}"));
        acked.set(alice, &format!("alice/up/{i}"), &format!("a{i}"));
        acked.set(bob, &format!("bob/up/{i}"), &format!("b{i}"));
    }
    delivered(bob, &acked);
    delivered(alice, &acked);
    // 2. Bob gone: what alice sends is held by the relay (acknowledged once it committed).
    bob.kill();
    for i in 0..4 {
        acked.send(alice, bob, &format!("to bob, held by the relay {i}"));
        acked.set(alice, &format!("alice/bob-gone/{i}"), &format!("g{i}"));
    }
    // 3. Alice cut off: what she sends and writes waits in her outboxes.
    alice.ok(&["debug", "link", "down"]);
    alice.wait("link-down", None);
    for i in 0..4 {
        acked.send(alice, bob, &format!("to bob, in alice's outbox {i}"));
        acked.set(alice, &format!("alice/offline/{i}"), &format!("o{i}"));
    }

    power_cycle(&mut disk, &mut relay, &mut [&mut *alice, &mut *bob]);
    delivered(bob, &acked);
    delivered(alice, &acked);
    converged(alice, bob, &acked);

    // 4. The power goes while both members send and write as fast as they can: what was
    // acknowledged before the cut survives it, whatever was in flight.
    let (tick, ticks) = mpsc::channel();
    let send = |from: &Node, to: &Node, i: usize| {
        let body = format!("to {}, racing the cut {i}", to.name);
        ok(&from.run(&["send", &to.name, &body])).then_some(body)
    };
    let set = |by: &Node, i: usize| {
        let key = format!("{}/racing/{i}", by.name);
        ok(&by.run(&["state", "set", &key, &format!("r{i}")])).then_some(key)
    };
    let (a, b) = (&*alice, &*bob);
    let (to_bob, to_alice, by_alice, by_bob) = std::thread::scope(|s| {
        let [t1, t2, t3, t4] = [(); 4].map(|()| tick.clone());
        let workers = [
            s.spawn(move || until_killed(&t1, |i| send(a, b, i))),
            s.spawn(move || until_killed(&t2, |i| send(b, a, i))),
            s.spawn(move || until_killed(&t3, |i| set(a, i))),
            s.spawn(move || until_killed(&t4, |i| set(b, i))),
        ];
        drop(tick);
        // A few dozen acknowledgements in all, then the lights go out mid-stream.
        for _ in 0..40 {
            if ticks.recv().is_err() {
                break; // every worker stopped: the assertions below say why
            }
        }
        kill9(relay.pid());
        kill9(a.pid());
        kill9(b.pid());
        let [w, x, y, z] = workers.map(|w| w.join().unwrap());
        (w, x, y, z)
    });
    for body in &to_bob {
        acked.sent(bob, body);
    }
    for body in &to_alice {
        acked.sent(alice, body);
    }
    for key in by_alice.iter().chain(&by_bob) {
        let i = key.rsplit('/').next().unwrap();
        acked.state.insert(key.clone(), format!("r{i}"));
    }
    assert!(
        !to_bob.is_empty() || !to_alice.is_empty(),
        "some sends were acknowledged before the cut"
    );

    power_cycle(&mut disk, &mut relay, &mut [&mut *alice, &mut *bob]);
    delivered(bob, &acked);
    delivered(alice, &acked);
    converged(alice, bob, &acked);
}
