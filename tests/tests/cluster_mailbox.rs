//! Store-and-forward on a real 3-server NATS JetStream cluster on loopback: an envelope
//! stored through one relay node is delivered through another, once; an acknowledgement
//! through any node deletes the member's copy; ids are unique per sender cluster-wide;
//! a killed server loses nothing stored; a mesh's quota is one count over every node.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use claudemesh_relay::cluster::mailbox::{ClusterMailbox, MailboxConfig, Quota};
use claudemesh_relay::store::{NewEnvelope, Put};
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::{MeshId, MessageId, now_ms};
use claudemesh_tests::nats::NatsCluster;
use std::time::Duration;

/// JetStream's own duplicate window in these tests: short, so a resend after it meets
/// the durable index alone.
const MAILBOX_WINDOW: Duration = Duration::from_secs(1);

async fn node(urls: &[String], first: usize, prefix: &str) -> ClusterMailbox {
    node_with(urls, first, prefix, Quota::default()).await
}

async fn node_with(urls: &[String], first: usize, prefix: &str, quota: Quota) -> ClusterMailbox {
    let mut urls = urls.to_vec();
    urls.rotate_left(first);
    let client = claudemesh_relay::cluster::connect(&urls).await.unwrap();
    let cfg = MailboxConfig {
        prefix: prefix.into(),
        replicas: 3,
        max_age: Duration::from_secs(3600),
        duplicate_window: MAILBOX_WINDOW,
        quota,
    };
    ClusterMailbox::open(client, &cfg).await.unwrap()
}

fn envelope(mesh: MeshId, sender: MemberKey, to: &[MemberKey], text: &str) -> NewEnvelope {
    NewEnvelope {
        id: MessageId::new(),
        mesh,
        sender,
        envelope: Bytes::from(format!("{{\"ct\":\"{text}\"}}")),
        recipients: to.to_vec(),
        at: now_ms(),
        expires_at: now_ms() + 3_600_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_stored_through_one_node_is_delivered_through_another_once() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    let (n1, n2, n3) = (
        node(&urls, 0, "M1").await,
        node(&urls, 1, "M1").await,
        node(&urls, 2, "M1").await,
    );
    let mesh = MeshId::new();
    let (alice, bob, carol) = (MemberKey([1; 32]), MemberKey([2; 32]), MemberKey([3; 32]));
    // bob is offline: alice's message is stored through node 1.
    let e = envelope(mesh, alice, &[bob], "for bob");
    assert_eq!(n1.put(&e).await.unwrap(), Put::Stored);
    // bob connects to node 3: there it is, once; carol has nothing.
    let got = n3.mailbox(&mesh, &bob, 0, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.id, e.id);
    assert_eq!(got[0].1.envelope, e.envelope.to_vec());
    assert!(n3.mailbox(&mesh, &carol, 0, 10).await.unwrap().is_empty());
    // alice's daemon resends it through node 2 (it reconnected there): a duplicate.
    assert_eq!(n2.put(&e).await.unwrap(), Put::Duplicate);
    assert_eq!(n1.mailbox(&mesh, &bob, 0, 10).await.unwrap().len(), 1);
    // Its id from another sender, or in another mesh: refused.
    let forged = NewEnvelope {
        sender: carol,
        ..e.clone()
    };
    assert_eq!(n2.put(&forged).await.unwrap(), Put::Taken);
    let elsewhere = NewEnvelope {
        mesh: MeshId::new(),
        ..e.clone()
    };
    assert_eq!(n3.put(&elsewhere).await.unwrap(), Put::Taken);

    // Attack: carol acknowledges bob's copy by its position: it stays.
    let pos = got[0].0;
    assert_eq!(n2.ack(&mesh, &carol, &[pos]).await.unwrap(), 0);
    assert_eq!(n1.mailbox(&mesh, &bob, 0, 10).await.unwrap().len(), 1);

    // Two recipients: a copy each; the stream's leader dies; nothing stored is lost.
    let both = envelope(mesh, alice, &[bob, carol], "for both");
    assert_eq!(n1.put(&both).await.unwrap(), Put::Stored);
    let mut js = async_nats_leader(&urls, "M1_MAIL").await;
    tokio::task::block_in_place(|| cluster.kill(&js.remove(0)));
    let after: Vec<_> = loop {
        match n2.mailbox(&mesh, &bob, 0, 10).await {
            Ok(v) => break v,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!(
        after.iter().map(|x| x.1.id).collect::<Vec<_>>(),
        [e.id, both.id]
    );
    let carols = n3.mailbox(&mesh, &carol, 0, 10).await.unwrap();
    assert_eq!(carols.len(), 1);

    // bob acknowledges through node 2 (sent again while the stream elects a new leader,
    // as a daemon resends an acknowledgement): his copies go, carol's stays.
    let positions: Vec<u64> = after.iter().map(|x| x.0).collect();
    while n2.ack(&mesh, &bob, &positions).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n3.mailbox(&mesh, &bob, 0, 10).await.unwrap().is_empty());
    assert_eq!(n2.mailbox(&mesh, &carol, 0, 10).await.unwrap().len(), 1);
}

/// The server leading `stream` now.
async fn async_nats_leader(urls: &[String], stream: &str) -> Vec<String> {
    let client = claudemesh_relay::cluster::connect(urls).await.unwrap();
    claudemesh_relay::cluster::stream_leader(client, stream)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// A resend after JetStream's duplicate window (a daemon that was away a while) is a
/// duplicate by the durable index alone: nothing is stored or delivered twice. An
/// envelope past its own expiry is not delivered, though the stream keeps messages longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resend_is_not_stored_twice_and_an_expired_envelope_is_not_delivered() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    let (n1, n2) = (node(&urls, 0, "M2").await, node(&urls, 1, "M2").await);
    let mesh = MeshId::new();
    let (alice, bob) = (MemberKey([1; 32]), MemberKey([2; 32]));
    let e = envelope(mesh, alice, &[bob], "once");
    assert_eq!(n1.put(&e).await.unwrap(), Put::Stored);
    // The window is time itself: nothing to await but its passing.
    tokio::time::sleep(MAILBOX_WINDOW * 2).await;
    assert_eq!(n2.put(&e).await.unwrap(), Put::Duplicate);
    let got = n2.mailbox(&mesh, &bob, 0, 10).await.unwrap();
    assert_eq!(got.iter().map(|x| x.1.id).collect::<Vec<_>>(), [e.id]);

    let stale = NewEnvelope {
        expires_at: now_ms() - 1,
        ..envelope(mesh, alice, &[bob], "too late")
    };
    assert_eq!(n1.put(&stale).await.unwrap(), Put::Stored);
    let got = n1.mailbox(&mesh, &bob, 0, 10).await.unwrap();
    assert_eq!(got.iter().map(|x| x.1.id).collect::<Vec<_>>(), [e.id]);
}

/// A mesh's quota is one count over every node: with room for three envelopes, puts
/// through three nodes store three and refuse the rest as `Full` (a refused id may be
/// sent again later); the last recipient's acknowledgement frees its place. A count
/// left wrong (a node that died between two writes) is mended by the next sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshs_quota_is_one_count_over_every_node_and_the_sweep_mends_it() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    let quota = Quota {
        messages: 3,
        bytes: 0,
    };
    let nodes = [
        node_with(&urls, 0, "M3", quota).await,
        node_with(&urls, 1, "M3", quota).await,
        node_with(&urls, 2, "M3", quota).await,
    ];
    let mesh = MeshId::new();
    let (alice, bob, carol) = (MemberKey([1; 32]), MemberKey([2; 32]), MemberKey([3; 32]));
    let mut puts = Vec::new();
    for i in 0..6 {
        let e = envelope(mesh, alice, &[bob, carol], &format!("m{i}"));
        puts.push((nodes[i % 3].put(&e).await.unwrap(), e));
    }
    let stored: Vec<Put> = puts.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        stored,
        [
            Put::Stored,
            Put::Stored,
            Put::Stored,
            Put::Full,
            Put::Full,
            Put::Full
        ]
    );
    // Full, a resend of what is stored is still a duplicate (through any node).
    assert_eq!(nodes[1].put(&puts[0].1).await.unwrap(), Put::Duplicate);
    // bob acknowledges the first through node 2: carol has not, so it still counts.
    let client = claudemesh_relay::cluster::connect(&urls).await.unwrap();
    let first = &puts[0].1;
    let bobs = nodes[1].mailbox(&mesh, &bob, 0, 10).await.unwrap();
    assert_eq!(nodes[1].ack(&mesh, &bob, &[bobs[0].0]).await.unwrap(), 1);
    nodes[1].settle(&first.id).await.unwrap();
    assert_eq!(nodes[2].put(&puts[3].1).await.unwrap(), Put::Full);
    // carol's acknowledgement through node 3 frees it: the refused id is stored now.
    let carols = nodes[2].mailbox(&mesh, &carol, 0, 10).await.unwrap();
    assert_eq!(
        nodes[2].ack(&mesh, &carol, &[carols[0].0]).await.unwrap(),
        1
    );
    nodes[2].settle(&first.id).await.unwrap();
    assert_eq!(nodes[0].put(&puts[3].1).await.unwrap(), Put::Stored);
    let size = first.envelope.len() as u64;
    assert_eq!(
        nodes[0].usage(&client).await.unwrap().get(&mesh),
        Some(&(3, 3 * size))
    );
    // A node died between storing and counting: the count is wrong until the sweep.
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("M3_MAILIDX").await.unwrap();
    let key = format!("use.{}", claudemesh_schema::crypto::hex(mesh.as_bytes()));
    kv.put(&key, "99 99".into()).await.unwrap();
    assert_eq!(nodes[1].put(&puts[4].1).await.unwrap(), Put::Full);
    nodes[1].expire(&client, now_ms()).await.unwrap();
    assert_eq!(
        nodes[2].usage(&client).await.unwrap().get(&mesh),
        Some(&(3, 3 * size)),
        "mended to what the index holds"
    );
}

/// A node configured with another message lifetime or replica count than the streams were
/// created with brings them to its configuration (an operator's change takes effect at the
/// next start, not never): the mailbox stream and its index, in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_message_lifetime_and_replica_count_reach_the_streams() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let urls = cluster.urls();
    let _first = node(&urls, 0, "KC").await;
    let client = claudemesh_relay::cluster::connect(&urls).await.unwrap();
    let cfg = MailboxConfig {
        prefix: "KC".into(),
        replicas: 1,
        max_age: Duration::from_secs(7200),
        duplicate_window: MAILBOX_WINDOW,
        quota: Quota::default(),
    };
    let _changed = ClusterMailbox::open(client, &cfg).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(urls[0].as_str()).await.unwrap());
    for (name, age) in [("KC_MAIL", 7200), ("KV_KC_MAILIDX", 7200 + 300)] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        assert_eq!(
            (info.num_replicas, info.max_age),
            (1, Duration::from_secs(age)),
            "{name}"
        );
    }
}
