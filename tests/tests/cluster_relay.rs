//! Relay nodes over a real 3-server NATS JetStream cluster, attacked at the protocol:
//! what one relay refuses, a cluster refuses through whichever node is asked. A hello
//! replayed through another node, a member removed through one node connecting through
//! another (or still linked there), a member linked through two nodes at once (so that
//! its rate limits would count twice).
#![allow(clippy::unwrap_used)]

use claudemesh_schema::now_ms;
use claudemesh_schema::roster::{Role, RosterOp};
use claudemesh_schema::wire::{ClientFrame, ErrorCode, RelayFrame};
use claudemesh_tests::nats::NatsCluster;
use claudemesh_tests::raw::{
    Fixture, Member, add_member, cluster_node, entry, expect_error, link, mesh, quic, send, until,
};
use claudemesh_tests::share_certificate;
use std::path::Path;

/// Two nodes on `cluster`, presenting one certificate.
async fn two_nodes(cluster: &NatsCluster, root: &Path) -> (Fixture, Fixture) {
    let urls = cluster.urls();
    let d1 = root.join("n1");
    let n1 = cluster_node(&urls, "CR", &d1).await;
    let d2 = root.join("n2");
    share_certificate(&d1, &d2);
    let n2 = cluster_node(&urls, "CR", &d2).await;
    assert_eq!(n1.relay.fingerprint(), n2.relay.fingerprint());
    (n1, n2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_replayed_through_another_node_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes(&cluster, root.path()).await;
    let (mesh, _owner, _a, member, _b) = mesh(&n1).await;
    // A hello captured on its way to node 1 (fresh, validly signed), sent to node 2.
    let hello = member.hello(mesh, now_ms());
    let mut first = quic(&n1).await;
    send(&mut first, &ClientFrame::Hello(hello.clone())).await;
    until(&mut first, |f| {
        matches!(f, RelayFrame::Ready { .. }).then_some(())
    })
    .await;
    let mut replay = quic(&n2).await;
    send(&mut replay, &ClientFrame::Hello(hello)).await;
    expect_error(&mut replay, ErrorCode::ReplayedHello).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_through_one_node_is_out_through_every_node() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes(&cluster, root.path()).await;
    let (mesh, owner, mut a, member, _b) = mesh(&n1).await;
    // Another member, added through node 1, linked through node 2.
    let mallory = Member::new();
    add_member(&mut a, &owner, mesh, &mallory, 10).await;
    let mut held = link(&n2, mesh, &mallory).await;
    // Removed through node 1: node 2 closes the link it holds.
    let remove = entry(
        &owner.key,
        mesh,
        mallory.pk(),
        Role::Member,
        RosterOp::Remove,
        None,
    );
    send(
        &mut a,
        &ClientFrame::Roster {
            rid: 11,
            entry: remove,
        },
    )
    .await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ok { rid: 11 }).then_some(())
    })
    .await;
    let code = until(&mut held, |f| match f {
        RelayFrame::Error { code, fatal, .. } => Some((code, fatal)),
        _ => None,
    })
    .await;
    assert_eq!(code, (ErrorCode::NotAMember, true));
    // And refuses a new hello.
    let mut again = quic(&n2).await;
    send(
        &mut again,
        &ClientFrame::Hello(mallory.hello(mesh, now_ms())),
    )
    .await;
    expect_error(&mut again, ErrorCode::NotAMember).await;
    // The member who stays is still welcome through node 2.
    link(&n2, mesh, &member).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_linked_through_one_node_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes(&cluster, root.path()).await;
    let (mesh, _owner, _a, member, mut b) = mesh(&n1).await;
    // The same member links through node 2: its link through node 1 is the older one.
    let _newer = link(&n2, mesh, &member).await;
    expect_error(&mut b, ErrorCode::Replaced).await;
}

/// Append `op` through `store`; where it landed.
async fn append(
    store: &claudemesh_relay::cluster::store::ClusterStore,
    op: claudemesh_relay::store::NewOp,
) -> claudemesh_relay::store::Appended {
    use claudemesh_relay::store::Store as _;
    let (tx, rx) = tokio::sync::oneshot::channel();
    store
        .append_op(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await
        .unwrap();
    rx.await.unwrap().unwrap()
}

/// A snapshot taken at the log's head (the usual case) compacts what it covers, and the
/// next op still gets the next sequence number: the head never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_at_the_head_keeps_the_sequence_going() {
    use claudemesh_relay::cluster::store::{ClusterStore, ClusterStoreConfig};
    use claudemesh_relay::store::{NewOp, Store as _, StoredSnapshot};
    use claudemesh_schema::crypto::MemberKey;
    use claudemesh_schema::{MeshId, OpId};
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let client = claudemesh_relay::cluster::connect(&cluster.urls())
        .await
        .unwrap();
    let store = ClusterStore::open(
        client,
        &ClusterStoreConfig {
            prefix: "SN".into(),
            replicas: 3,
            message_ttl: std::time::Duration::from_secs(3600),
            duplicate_window: std::time::Duration::from_secs(120),
        },
    )
    .await
    .unwrap();
    let (mesh, author) = (MeshId::new(), MemberKey([7; 32]));
    let op = |n: u32| NewOp {
        mesh,
        id: OpId::new(),
        author,
        op: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        at: now_ms(),
    };
    for n in 1..=3 {
        assert_eq!(append(&store, op(n)).await.seq, u64::from(n));
    }
    let snap = |seq: u64| StoredSnapshot {
        mesh,
        seq,
        author,
        ct: vec![seq as u8; 100],
        at: now_ms(),
    };
    assert!(store.put_snapshot(snap(3)).await.unwrap().kept);
    assert_eq!(
        append(&store, op(4)).await.seq,
        4,
        "the head did not go back"
    );
    let page = store.ops(mesh, 1, 100, 1 << 20).await.unwrap();
    assert_eq!((page.first, page.head), (4, 4));
    assert_eq!(
        page.ops.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![4],
        "only what the snapshot does not cover"
    );
    assert_eq!(store.snapshot(mesh).await.unwrap().unwrap().seq, 3);
    // Again at the new head; an older one is not kept.
    assert!(store.put_snapshot(snap(4)).await.unwrap().kept);
    assert!(!store.put_snapshot(snap(3)).await.unwrap().kept);
    assert_eq!(append(&store, op(5)).await.seq, 5);
    let page = store.ops(mesh, 1, 100, 1 << 20).await.unwrap();
    assert_eq!((page.first, page.head), (5, 5));
    assert_eq!(
        store.snapshot(mesh).await.unwrap().unwrap().ct,
        vec![4u8; 100]
    );
}
