#![allow(clippy::unwrap_used)]
//! A relay node whose state is on a real 3-server NATS JetStream cluster (`--store nats`),
//! end to end: the real `claudemesh` binary as relay, daemons and CLI, on loopback. What
//! members do on one SQLite relay works the same, and the node keeps nothing of its own:
//! killed (with a NATS server killed too), a new node process serves every acknowledged
//! message and op. The end-to-end scenarios of the other files that concern the relay run
//! on a cluster too, members on different nodes (`per_store!`, their `::nats` tests).

use claudemesh_tests::nats::NatsCluster;
use claudemesh_tests::{Node, RelayProc, form_mesh, free_port, metrics, share_certificate};
use serde_json::Value;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A relay node on `cluster`, its certificate in `data_dir`.
fn node_on(cluster: &NatsCluster, data_dir: &Path) -> RelayProc {
    let urls = cluster.urls().join(",");
    RelayProc::start(bin(), data_dir, &["--store", "nats", "--nats-url", &urls])
}

fn state(n: &Node, key: &str) -> Value {
    n.json(&["state", "get", key])["value"].clone()
}

/// Wait until `n` applied the shared-state log up to `seq`.
fn synced(n: &Node, seq: u64) {
    n.ok(&[
        "wait",
        "synced",
        "--seq",
        &seq.to_string(),
        "--timeout",
        "30",
    ]);
}

/// Set a key, online: the relay sequenced it at once.
fn set(n: &Node, key: &str, value: &str) -> u64 {
    let w = n.json(&["state", "set", key, value]);
    w["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("not sequenced: {w}"))
}

#[test]
fn members_of_a_clustered_relay_message_and_share_state_as_on_one_relay() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let relay = node_on(&cluster, &root.path().join("relay"));
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    form_mesh(&relay, &mut nodes);
    let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);

    let sent = ann.json(&["send", "ben", "hello", "ben"]);
    assert_eq!(sent["stage"], "relayed", "{sent}");
    let got = ben.inbox_wait();
    assert_eq!(bodies(&got), vec!["hello ben"]);
    assert_eq!(got[0]["id"], sent["id"]);

    ben.ok(&["profile", "--groups", "dev"]);
    ann.wait("peer-online", Some("@dev"));
    ann.ok(&["send", "@dev", "standup"]);
    assert_eq!(bodies(&ben.inbox_wait()), vec!["standup"]);
    ann.ok(&["send", "*", "lunch?"]);
    assert_eq!(bodies(&ben.inbox_wait()), vec!["lunch?"]);
    assert_eq!(
        bodies(&cat.inbox_wait()),
        vec!["lunch?"],
        "cat is not in @dev: only the broadcast"
    );
    assert!(ann.inbox_peek().is_empty(), "no copy to the sender");

    // Shared state: ops sequenced by the cluster's op log, folded alike by everyone.
    let seq = set(cat, "color", "green");
    for n in [ann, ben] {
        synced(n, seq);
        assert_eq!(state(n, "color"), "green", "{}", n.name);
    }

    // Exactly once: nothing else arrived anywhere.
    for n in &nodes {
        assert!(n.inbox_peek().is_empty(), "{} has more", n.name);
    }
    // The node keeps no database of its own: everything is on the cluster.
    assert!(
        !relay.db().exists(),
        "a clustered node wrote {:?}",
        relay.db()
    );
}

#[test]
fn a_killed_node_and_a_killed_nats_server_lose_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let mut relay = node_on(&cluster, &root.path().join("relay"));
    let mut nodes: Vec<Node> = ["alice", "bob"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    form_mesh(&relay, &mut nodes);
    nodes[1].stop();
    nodes[0].wait("peer-offline", Some("bob"));
    for i in 0..10 {
        let r = nodes[0].json(&["send", "bob", &format!("message {i}")]);
        assert_eq!(r["stage"], "relayed", "{r}");
    }
    let seq = set(&nodes[0], "build", "passing");
    // Both kinds of failure at once: the relay node's process and one NATS server.
    relay.kill();
    cluster.kill("n1");
    for i in 10..20 {
        let r = nodes[0].json(&["send", "bob", &format!("message {i}")]);
        assert_eq!(r["stage"], "queued", "no relay: the daemon keeps it");
    }
    // A new node process (same address and certificate) on the two servers left.
    relay.restart();
    nodes[1].start();
    let mut got = Vec::new();
    while got.len() < 20 {
        let page = bodies(&nodes[1].inbox_wait());
        assert!(!page.is_empty(), "bob has only {got:?}");
        got.extend(page);
    }
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    want.sort();
    assert_eq!(got, want, "every message once");
    synced(&nodes[1], seq);
    assert_eq!(state(&nodes[1], "build"), "passing");
    assert!(nodes[1].inbox_peek().is_empty());
}

/// Two relay nodes on one cluster, one certificate, the mesh's relay address naming both.
/// Node 2 is down while the mesh forms (every daemon lands on node 1); then node 1 is
/// killed during traffic and node 2 comes up: each daemon fails over to it, and bob, who
/// was offline when alice's messages were stored through node 1, gets each once there.
#[test]
fn daemons_fail_over_to_another_node_and_get_what_was_stored_through_the_dead_one() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let mut n1 = node_on(&cluster, &root.path().join("relay1"));
    // Node 2 presents node 1's certificate: the pinned fingerprint holds on both.
    let dir2 = root.path().join("relay2");
    share_certificate(&n1.data_dir, &dir2);
    let mut n2 = node_on(&cluster, &dir2);
    assert_eq!(n2.fingerprint, n1.fingerprint);
    n2.kill();
    let relay = format!("{},{}", n1.addr, n2.addr);

    let mut nodes: Vec<Node> = ["alice", "bob"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &relay,
        "--fingerprint",
        &n1.fingerprint,
    ]);
    let link = nodes[0].ok(&["invite"]);
    nodes[1].ok(&["join", &link, "--wait", "30"]);
    nodes[0].wait("peer-online", Some("bob"));
    nodes[1].wait("peer-online", Some("alice"));
    let (alice, bob) = (&nodes[0], &nodes[1]);
    alice.ok(&["send", "bob", "live through node 1"]);
    assert_eq!(bodies(&bob.inbox_wait()), vec!["live through node 1"]);

    nodes[1].stop();
    nodes[0].wait("peer-offline", Some("bob"));
    for i in 0..10 {
        let r = nodes[0].json(&["send", "bob", &format!("stored {i}")]);
        assert_eq!(r["stage"], "relayed", "{r}");
    }
    let seq = set(&nodes[0], "owner", "alice");
    n1.kill();
    n2.restart();
    nodes[0].wait("link-up", None);
    nodes[1].start();
    let mut got = Vec::new();
    while got.len() < 10 {
        let page = bodies(&nodes[1].inbox_wait());
        assert!(!page.is_empty(), "bob has only {got:?}");
        got.extend(page);
    }
    got.sort();
    let want: Vec<String> = (0..10).map(|i| format!("stored {i}")).collect();
    assert_eq!(
        got, want,
        "each stored message once, through the other node"
    );
    synced(&nodes[1], seq);
    assert_eq!(state(&nodes[1], "owner"), "alice");
    // Both on node 2 now: live again, both ways.
    nodes[1].wait("peer-online", Some("alice"));
    nodes[0].ok(&["send", "bob", "live through node 2"]);
    assert_eq!(bodies(&nodes[1].inbox_wait()), vec!["live through node 2"]);
    nodes[1].ok(&["send", "alice", "back"]);
    assert_eq!(bodies(&nodes[0].inbox_wait()), vec!["back"]);
    assert!(nodes[1].inbox_peek().is_empty());
}

/// Three relay nodes on one cluster, one certificate; the mesh's relay address lists all
/// three and each member prefers another node (ann node 1, ben node 2, cat node 3). Node
/// `i` serves `/metrics` on `metrics[i]`, when given.
fn three_nodes(root: &Path, metrics: &[u16]) -> (NatsCluster, Vec<RelayProc>, Vec<Node>) {
    let cluster = NatsCluster::start(&root.join("nats"), 3);
    let urls = cluster.urls().join(",");
    let start = |dir: &Path, i: usize| {
        let listen = metrics.get(i).map(|p| format!("127.0.0.1:{p}"));
        let mut args = vec!["--store", "nats", "--nats-url", urls.as_str()];
        if let Some(l) = &listen {
            args.extend(["--metrics-listen", l.as_str()]);
        }
        RelayProc::start(bin(), dir, &args)
    };
    let mut relays = vec![start(&root.join("relay1"), 0)];
    for i in 2..=3 {
        let dir = root.join(format!("relay{i}"));
        share_certificate(&relays[0].data_dir, &dir);
        relays.push(start(&dir, i - 1));
    }
    let list: Vec<String> = relays.iter().map(|r| r.addr.to_string()).collect();
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .zip(&list)
        .map(|(n, prefer)| {
            Node::with_config(bin(), root, n, &format!("prefer_node = \"{prefer}\"\n"))
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &list.join(","),
        "--fingerprint",
        &relays[0].fingerprint,
    ]);
    for i in 1..nodes.len() {
        let link = nodes[0].ok(&["invite"]);
        nodes[i].ok(&["join", &link, "--wait", "30"]);
    }
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                a.wait("peer-online", Some(&b.name));
            }
        }
    }
    (cluster, relays, nodes)
}

#[test]
fn members_on_three_nodes_message_see_each_other_and_share_state_as_on_one_relay() {
    let root = tempfile::tempdir().unwrap();
    let (_cluster, relays, mut nodes) = three_nodes(root.path(), &[]);
    // Each member is linked to its own node.
    for (n, r) in nodes.iter().zip(&relays) {
        let st = n.json(&["status"]);
        assert_eq!(
            st["meshes"][0]["node"].as_str(),
            Some(r.addr.to_string().as_str()),
            "{}: {st}",
            n.name
        );
    }
    {
        let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
        let sent = ann.json(&["send", "ben", "across", "nodes"]);
        assert_eq!(sent["stage"], "relayed", "{sent}");
        let got = ben.inbox_wait();
        assert_eq!(bodies(&got), vec!["across nodes"]);
        assert_eq!(got[0]["id"], sent["id"]);
        ben.ok(&["send", "cat", "two", "to", "three"]);
        assert_eq!(bodies(&cat.inbox_wait()), vec!["two to three"]);
        // Presence crosses nodes: groups set on node 3 are seen on node 1.
        cat.ok(&["profile", "--groups", "ops"]);
        ann.wait("peer-online", Some("@ops"));
        ann.ok(&["send", "@ops", "deploy?"]);
        assert_eq!(bodies(&cat.inbox_wait()), vec!["deploy?"]);
        ann.ok(&["send", "*", "lunch"]);
        assert_eq!(bodies(&ben.inbox_wait()), vec!["lunch"]);
        assert_eq!(bodies(&cat.inbox_wait()), vec!["lunch"]);

        // Two authors on different nodes at once: one dense sequence, folded alike.
        let mut seqs: Vec<u64> = std::thread::scope(|s| {
            let t1 = s.spawn(|| {
                (0..10)
                    .map(|i| set(ann, "k", &format!("ann {i}")))
                    .collect::<Vec<_>>()
            });
            let t2 = s.spawn(|| {
                (0..10)
                    .map(|i| set(ben, "k", &format!("ben {i}")))
                    .collect::<Vec<_>>()
            });
            let mut all = t1.join().unwrap();
            all.extend(t2.join().unwrap());
            all
        });
        seqs.sort_unstable();
        let a = *seqs.last().unwrap();
        assert_eq!(
            seqs,
            (a - 19..=a).collect::<Vec<_>>(),
            "twenty writes, twenty consecutive sequence numbers"
        );
        for n in [ann, ben, cat] {
            synced(n, a);
        }
        let v = state(ann, "k");
        assert_eq!(state(ben, "k"), v);
        assert_eq!(state(cat, "k"), v);
        let applied: Vec<u64> = [ann, ben, cat]
            .iter()
            .map(|n| {
                n.json(&["status"])["meshes"][0]["log_seq"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect();
        assert!(applied.iter().all(|&s| s >= a), "{applied:?}");
    }

    // Store-and-forward across nodes: cat offline, ann sends through node 1, cat comes
    // back on node 3.
    nodes[2].stop();
    nodes[0].wait("peer-offline", Some("cat"));
    let r = nodes[0].json(&["send", "cat", "while", "you", "were", "out"]);
    assert_eq!(r["stage"], "relayed", "{r}");
    nodes[2].start();
    assert_eq!(bodies(&nodes[2].inbox_wait()), vec!["while you were out"]);
    for n in &nodes {
        assert!(n.inbox_peek().is_empty(), "{} has more", n.name);
    }

    // Files: shared through node 1, its chunks stored on the cluster; fetched through
    // node 3 once the sharer is gone.
    let src = root.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let f = nodes[0].json(&["file", "share", src.to_str().unwrap()]);
    let id = f["file"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !nodes[2].json(&["file", "list"])["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["id"] == id.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "cat never listed {id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nodes[0].stop();
    let out = root.path().join("got.bin");
    nodes[2].ok(&["file", "get", &id, "-o", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        data,
        "byte for byte, from the cluster"
    );
}

/// A node killed never says that its sessions left: once its lease lapses the other nodes
/// take them offline, and `/metrics` counts one node fewer. Cat's daemon is frozen before
/// its node is killed, so it cannot reconnect elsewhere; thawed, it is back through another
/// node.
#[test]
fn the_sessions_of_a_killed_node_go_offline_at_the_others_until_they_link_again() {
    let root = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let (_cluster, mut relays, nodes) = three_nodes(root.path(), &ports);
    let nodes_seen = |port: u16| metrics(port)["claudemesh_relay_cluster_nodes"];
    claudemesh_tests::claude::eventually("every node hears the other two", 30, || {
        ports.iter().all(|p| nodes_seen(*p) == 3.0)
    });

    let cat = nodes[2].pid().to_string();
    let freeze = |sig: &str| {
        let st = std::process::Command::new("kill")
            .args([sig, &cat])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {cat}");
    };
    freeze("-STOP");
    relays[2].kill();
    for n in &nodes[..2] {
        n.ok(&["wait", "peer-offline", "cat", "--timeout", "60"]);
    }
    let (_, peers) = nodes[0].peers();
    assert!(
        peers.iter().any(|(name, online)| name == "cat" && !online),
        "{peers:?}"
    );
    claudemesh_tests::claude::eventually("node 1 counts two nodes", 30, || {
        nodes_seen(ports[0]) == 2.0
    });
    // Ben, on a living node, stays online at ann's node throughout.
    nodes[0].ok(&["send", "ben", "still", "here?"]);
    assert_eq!(bodies(&nodes[1].inbox_wait()), vec!["still here?"]);

    freeze("-CONT");
    nodes[0].wait("peer-online", Some("cat"));
    nodes[0].ok(&["send", "cat", "welcome", "back"]);
    assert_eq!(bodies(&nodes[2].inbox_wait()), vec!["welcome back"]);
}
