//! Store-and-forward on a real 3-server NATS JetStream cluster on loopback: an envelope
//! stored through one relay node is delivered through another, once; an acknowledgement
//! through any node deletes the member's copy; ids are unique per sender cluster-wide;
//! a killed server loses nothing stored.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use claudemesh_relay::cluster::mailbox::{ClusterMailbox, MailboxConfig};
use claudemesh_relay::store::{NewEnvelope, Put};
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::{MeshId, MessageId, now_ms};
use claudemesh_tests::nats::NatsCluster;
use std::time::Duration;

/// JetStream's own duplicate window in these tests: short, so a resend after it meets
/// the durable index alone.
const MAILBOX_WINDOW: Duration = Duration::from_secs(1);

async fn node(urls: &[String], first: usize, prefix: &str) -> ClusterMailbox {
    let mut urls = urls.to_vec();
    urls.rotate_left(first);
    let client = claudemesh_relay::cluster::connect(&urls).await.unwrap();
    let cfg = MailboxConfig {
        prefix: prefix.into(),
        replicas: 3,
        max_age: Duration::from_secs(3600),
        duplicate_window: MAILBOX_WINDOW,
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
