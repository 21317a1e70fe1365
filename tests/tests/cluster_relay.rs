//! Relay nodes over a real 3-server NATS JetStream cluster, attacked at the protocol:
//! what one relay refuses, a cluster refuses through whichever node is asked. A hello
//! replayed through another node, a member removed through one node connecting through
//! another (or still linked there), a member linked through two nodes at once (so that
//! its rate limits would count twice), an invite spent or revoked through one node and
//! claimed through another.
#![allow(clippy::unwrap_used)]

use claudemesh_relay::{Connection, RelayConfig};
use claudemesh_schema::roster::{InviteRevocation, Role, RosterOp};
use claudemesh_schema::wire::{
    ClaimDecision, ClaimOutcome, ClaimRequest, ClientFrame, ErrorCode, RelayFrame,
};
use claudemesh_schema::{ClaimId, MessageId, now_ms};
use claudemesh_tests::nats::NatsCluster;
use claudemesh_tests::raw::{
    Fixture, Member, add_member, answer, claim_once, cluster_node_with, durable_claim, entry,
    expect_error, link, mesh, publish, quic, refusal_of, send, until,
};
use claudemesh_tests::share_certificate;
use std::path::Path;

/// Two nodes on `cluster`, presenting one certificate.
async fn two_nodes(cluster: &NatsCluster, root: &Path) -> (Fixture, Fixture) {
    two_nodes_with(cluster, root, |_| {}).await
}

/// Two nodes on `cluster`, presenting one certificate, configured by `tweak`.
async fn two_nodes_with(
    cluster: &NatsCluster,
    root: &Path,
    tweak: impl Fn(&mut RelayConfig),
) -> (Fixture, Fixture) {
    let urls = cluster.urls();
    let d1 = root.join("n1");
    let n1 = cluster_node_with(&urls, "CR", &d1, &tweak).await;
    let d2 = root.join("n2");
    share_certificate(&d1, &d2);
    let n2 = cluster_node_with(&urls, "CR", &d2, &tweak).await;
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

/// The relay's store on `cluster` for the deployment `prefix`, as a node opens it (an op
/// log of at most `op_bytes` per mesh; `0`: no limit).
async fn cluster_store(
    cluster: &NatsCluster,
    prefix: &str,
    op_bytes: u64,
) -> claudemesh_relay::cluster::store::ClusterStore {
    use claudemesh_relay::cluster::store::{ClusterStore, ClusterStoreConfig};
    let client = claudemesh_relay::cluster::connect(&cluster.urls())
        .await
        .unwrap();
    let cfg = ClusterStoreConfig {
        prefix: prefix.into(),
        replicas: 3,
        message_ttl: std::time::Duration::from_secs(3600),
        duplicate_window: std::time::Duration::from_secs(120),
        mesh_quota: Default::default(),
        mesh_quota_op_bytes: op_bytes,
        max_meshes: 0,
        creations_per_hour: 0,
        node: "test".into(),
    };
    ClusterStore::open(client, &cfg).await.unwrap()
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
    use claudemesh_relay::store::{NewOp, Store as _, StoredSnapshot};
    use claudemesh_schema::crypto::MemberKey;
    use claudemesh_schema::{MeshId, OpId};
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let store = cluster_store(&cluster, "SN", 0).await;
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

/// Open a connection to `f` and claim with `req` on it; the claim's id once it waits.
async fn claim_waiting(f: &Fixture, req: &ClaimRequest) -> (ClaimId, Connection) {
    let mut c = quic(f).await;
    send(&mut c, &ClientFrame::Claim(req.clone())).await;
    let claim = until(&mut c, |f| match f {
        RelayFrame::ClaimWaiting { claim, .. } => Some(claim),
        RelayFrame::Error { .. } => panic!("the claim was refused: {f:?}"),
        _ => None,
    })
    .await;
    (claim, c)
}

/// The answer a waiting claimant hears.
async fn claim_result(c: &mut Connection) -> ClaimOutcome {
    until(c, |f| match f {
        RelayFrame::ClaimResult(o) => Some(o),
        _ => None,
    })
    .await
}

/// An invite published through node 1 (while node 2 runs) is claimed through node 2,
/// with its only admin linked on node 1: the admin hears each claim, its answer reaches
/// the claimant on node 2, the invite's uses are spent cluster-wide (a third claim
/// through node 2 finds it used up), and revoking an invite through node 1 refuses its
/// claimant waiting on node 2 and every later claim through node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_are_claimed_decided_spent_and_revoked_through_any_node() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes(&cluster, root.path()).await;
    let (mesh_id, owner, mut a, _member, _b) = mesh(&n1).await;
    let cap = publish(&mut a, &owner, mesh_id, 2, false, 30).await;
    let admit = |claim, member| ClaimDecision::Accept {
        claim,
        entry: entry(
            &owner.key,
            mesh_id,
            member,
            Role::Member,
            RosterOp::Add,
            Some(cap.id),
        ),
        sealed: vec![3; 48],
        mac: [4; 32],
    };
    for rid in [31, 32] {
        let (req, _key) = durable_claim(cap.id);
        let (claim, mut c) = claim_waiting(&n2, &req).await;
        until(&mut a, |f| {
            matches!(f, RelayFrame::ClaimPending { claim: x, .. } if x == claim).then_some(())
        })
        .await;
        send(
            &mut a,
            &ClientFrame::ClaimDecision {
                rid,
                decision: admit(claim, req.member),
            },
        )
        .await;
        assert_eq!(answer(&mut a, rid).await, None);
        match claim_result(&mut c).await {
            ClaimOutcome::Accepted { claim: x, .. } => assert_eq!(x, claim),
            other => panic!("the claimant on node 2 was not admitted: {other:?}"),
        }
    }
    let (third, _) = durable_claim(cap.id);
    match claim_once(&n2, &third).await {
        RelayFrame::Error { code, .. } => assert_eq!(code, ErrorCode::InviteUsedUp),
        other => panic!("a used-up invite was claimed through node 2: {other:?}"),
    }

    let cap = publish(&mut a, &owner, mesh_id, 5, false, 40).await;
    let (req, _key) = durable_claim(cap.id);
    let (_claim, mut waiting) = claim_waiting(&n2, &req).await;
    send(
        &mut a,
        &ClientFrame::InviteRevoke {
            rid: 41,
            revocation: InviteRevocation::sign(&owner.key, cap.id, mesh_id, now_ms()),
        },
    )
    .await;
    assert_eq!(answer(&mut a, 41).await, None);
    match claim_result(&mut waiting).await {
        ClaimOutcome::Refused { code, .. } => assert_eq!(code, ErrorCode::InviteRevoked),
        other => panic!("the claimant on node 2 was not refused: {other:?}"),
    }
    let (later, _) = durable_claim(cap.id);
    match claim_once(&n2, &later).await {
        RelayFrame::Error { code, .. } => assert_eq!(code, ErrorCode::InviteRevoked),
        other => panic!("a revoked invite was claimed through node 2: {other:?}"),
    }
}

/// Send `env` on `c`: `None` once relayed, or the code it was refused with.
async fn sent(c: &mut Connection, env: claudemesh_schema::wire::Envelope) -> Option<ErrorCode> {
    let id = env.id;
    send(c, &ClientFrame::Send(env)).await;
    refusal_of(c, id).await
}

/// A mesh's undelivered-message quota holds over every node, not per node: with room
/// for 10, six sent through node 1 and six through node 2 store ten (the last two
/// through node 2 are refused `quota_exceeded`); once their recipient, linked through
/// node 2, has acknowledged them all, there is room again through node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshs_message_quota_holds_over_every_node() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes_with(&cluster, root.path(), |c| c.mesh_quota_messages = 10).await;
    let (mesh, owner, mut a, member, b) = mesh(&n1).await;
    drop(b);
    let mut b = link(&n2, mesh, &member).await;
    let carol = Member::new();
    add_member(&mut a, &owner, mesh, &carol, 20).await;
    for i in 0..6 {
        let r = sent(&mut a, owner.envelope(MessageId::new(), &carol)).await;
        assert_eq!(r, None, "send {i} through node 1");
    }
    let mut through_2 = Vec::new();
    for _ in 0..6 {
        through_2.push(sent(&mut b, member.envelope(MessageId::new(), &carol)).await);
    }
    assert_eq!(
        through_2,
        [
            None,
            None,
            None,
            None,
            Some(ErrorCode::QuotaExceeded),
            Some(ErrorCode::QuotaExceeded)
        ],
        "node 2 counted what node 1 stored"
    );
    // carol reads and acknowledges all ten through node 2; her senders hear it.
    let mut c = link(&n2, mesh, &carol).await;
    let mut ids = Vec::new();
    while ids.len() < 10 {
        ids.push(
            until(&mut c, |f| match f {
                RelayFrame::Deliver { env, .. } => Some(env.id),
                _ => None,
            })
            .await,
        );
    }
    send(
        &mut c,
        &ClientFrame::Ack {
            ids,
            proofs: Vec::new(),
        },
    )
    .await;
    for (conn, n) in [(&mut a, 6), (&mut b, 4)] {
        for _ in 0..n {
            until(conn, |f| {
                matches!(f, RelayFrame::Receipt { .. }).then_some(())
            })
            .await;
        }
    }
    let r = sent(&mut a, owner.envelope(MessageId::new(), &carol)).await;
    assert_eq!(r, None, "acknowledged through node 2, freed for node 1");
}

/// A mesh's op-log quota holds over every node: with room for 1000 bytes, ten 100-byte
/// ops appended through two nodes in turn fill it and the next is refused through
/// either; a snapshot stored through one node compacts the log, and the other node,
/// which has not seen that snapshot, appends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshs_log_quota_holds_over_every_node() {
    use claudemesh_relay::store::{NewOp, Store as _, StoredSnapshot};
    use claudemesh_schema::crypto::MemberKey;
    use claudemesh_schema::{MeshId, OpId};
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(cluster_store(&cluster, "SQ", 1000).await);
    }
    let (mesh, author) = (MeshId::new(), MemberKey([7; 32]));
    let op = || NewOp {
        mesh,
        id: OpId::new(),
        author,
        op: bytes::Bytes::from(vec![b'x'; 100]),
        at: now_ms(),
    };
    for n in 1..=10u64 {
        let a = append(&nodes[(n % 2) as usize], op()).await;
        assert_eq!((a.seq, a.full), (n, false), "op {n}");
    }
    for node in &nodes {
        assert!(append(node, op()).await.full, "over the quota");
    }
    let snap = StoredSnapshot {
        mesh,
        seq: 10,
        author,
        ct: vec![1; 100],
        at: now_ms(),
    };
    let kept = nodes[1].put_snapshot(snap).await.unwrap();
    assert!(kept.kept);
    assert_eq!(kept.op_bytes, 100, "the snapshot alone");
    let a = append(&nodes[0], op()).await;
    assert_eq!(
        (a.seq, a.full),
        (11, false),
        "room again through the other node"
    );
}

/// Put a chunk of `data` for `file` on `c`: `None` once stored, or the refusal's code.
async fn chunk_put(
    c: &mut Connection,
    rid: u64,
    file: claudemesh_schema::ItemId,
    data: Vec<u8>,
) -> Option<ErrorCode> {
    let id = claudemesh_schema::file::ChunkId::of(&data);
    let f = ClientFrame::ChunkPut {
        rid,
        file,
        id,
        data,
        expires_at: None,
    };
    send(c, &f).await;
    answer(c, rid).await
}

/// A mesh's file-storage quota holds over every node: with room for three chunks, two
/// stored through node 1 and one through node 2 fill it, and a fourth through node 2 is
/// refused; the file dropped through node 1 makes room through node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meshs_file_quota_holds_over_every_node() {
    use claudemesh_schema::ItemId;
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes_with(&cluster, root.path(), |c| {
        c.mesh_quota_blob_bytes = 3 * 50_000
    })
    .await;
    let (mesh, _owner, mut a, member, b) = mesh(&n1).await;
    drop(b);
    let mut b = link(&n2, mesh, &member).await;
    let chunk = |seed: u8| vec![seed; 50_000];
    let (first, second) = (ItemId::new(), ItemId::new());
    assert_eq!(chunk_put(&mut a, 1, first, chunk(1)).await, None);
    assert_eq!(chunk_put(&mut a, 2, first, chunk(2)).await, None);
    assert_eq!(chunk_put(&mut b, 3, second, chunk(3)).await, None);
    assert_eq!(
        chunk_put(&mut b, 4, second, chunk(4)).await,
        Some(ErrorCode::QuotaExceeded),
        "node 2 counted what node 1 stored"
    );
    send(
        &mut a,
        &ClientFrame::ChunksDrop {
            rid: 5,
            file: first,
        },
    )
    .await;
    assert_eq!(answer(&mut a, 5).await, None);
    assert_eq!(
        chunk_put(&mut b, 6, second, chunk(4)).await,
        None,
        "dropped through node 1, freed for node 2"
    );
}

/// Ask `f` to create a fresh mesh: `None` once created, or the refusal's code.
async fn create(f: &Fixture, rid: u64) -> Option<ErrorCode> {
    use claudemesh_schema::roster::MeshGenesis;
    let owner = Member::new();
    let genesis = MeshGenesis::sign(&owner.key, claudemesh_schema::MeshId::new(), now_ms());
    let mut c = quic(f).await;
    send(
        &mut c,
        &ClientFrame::CreateMesh {
            rid,
            genesis,
            token: None,
        },
    )
    .await;
    answer(&mut c, rid).await
}

/// Mesh creations are limited over every node: one address that may create three an
/// hour (each node's own bucket letting it create two at once) creates two through node
/// 1 and one through node 2, and the next through node 2 is refused; a cluster that may
/// host two meshes hosts two, one created through each node, and refuses a third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_creations_are_limited_over_every_node() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes_with(&cluster, root.path(), |c| {
        c.create_rate_per_hour = 1;
        c.create_burst = 2;
    })
    .await;
    let made = [
        create(&n1, 1).await,
        create(&n1, 2).await,
        create(&n2, 3).await,
        create(&n2, 4).await,
    ];
    assert_eq!(made, [None, None, None, Some(ErrorCode::RateLimited)]);

    let urls = cluster.urls();
    let limited = |c: &mut RelayConfig| {
        c.max_meshes = 2;
        c.create_rate_per_hour = 0;
    };
    let (d1, d2) = (root.path().join("m1"), root.path().join("m2"));
    let m1 = cluster_node_with(&urls, "CM2", &d1, limited).await;
    share_certificate(&d1, &d2);
    let m2 = cluster_node_with(&urls, "CM2", &d2, limited).await;
    let made = [
        create(&m1, 5).await,
        create(&m2, 6).await,
        create(&m1, 7).await,
    ];
    assert_eq!(made, [None, None, Some(ErrorCode::QuotaExceeded)]);
}

/// Creation tokens are the cluster's: a token issued once (by `claudemesh-relay token
/// create` against the cluster) admits through every node, and its three uses are spent
/// once over all of them, however many creations race for them through two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_tokens_uses_are_spent_once_over_every_node() {
    use claudemesh_relay::admission::{NewToken, issue_on};
    use claudemesh_relay::config::AdmissionMode;
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes_with(&cluster, root.path(), |c| {
        c.admission = AdmissionMode::Token;
        c.create_rate_per_hour = 0;
    })
    .await;
    let client = claudemesh_relay::cluster::connect(&cluster.urls())
        .await
        .unwrap();
    let tokens = claudemesh_relay::cluster::tokens::ClusterTokens::open(client, "CR", 3)
        .await
        .unwrap();
    let new = NewToken {
        uses: 3,
        expires_in_secs: None,
        note: "race".into(),
    };
    let token = issue_on(&tokens, &new).await.unwrap().token;
    // Eight creations in flight at once, four through each node.
    let mut conns = Vec::new();
    for i in 0..8u64 {
        conns.push(quic(if i % 2 == 0 { &n1 } else { &n2 }).await);
    }
    for (rid, c) in (100u64..).zip(conns.iter_mut()) {
        let owner = Member::new();
        let genesis = claudemesh_schema::roster::MeshGenesis::sign(
            &owner.key,
            claudemesh_schema::MeshId::new(),
            now_ms(),
        );
        let token = Some(token.clone());
        send(
            c,
            &ClientFrame::CreateMesh {
                rid,
                genesis,
                token,
            },
        )
        .await;
    }
    let mut made = Vec::new();
    for (rid, c) in (100u64..).zip(conns.iter_mut()) {
        made.push(answer(c, rid).await);
    }
    let admitted = made.iter().filter(|m| m.is_none()).count();
    assert_eq!(admitted, 3, "{made:?}");
    assert!(
        made.iter()
            .all(|m| m.is_none() || *m == Some(ErrorCode::CreationRefused)),
        "{made:?}"
    );
    let listed = claudemesh_relay::admission::list_on(&tokens).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].uses, listed[0].left()), (3, 0));
}

/// A claim made through a node whose live copy never reached the others (bus messages
/// are not durable; here the node "dies" after storing it) reaches an admin linked to
/// another node at that node's next sweep; and a claim decided elsewhere whose answer
/// was missed live reaches its claimant waiting here at the next sweep too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_missed_live_are_read_from_the_cluster_at_the_next_sweep() {
    use claudemesh_relay::store::{Store as _, StoredClaim};
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, _n2) = two_nodes_with(&cluster, root.path(), |c| c.sweep_secs = 1).await;
    let (mesh_id, owner, mut a, _member, _b) = mesh(&n1).await;
    let cap = publish(&mut a, &owner, mesh_id, 5, false, 30).await;
    // The dying node's writes, through a store of the same deployment.
    let elsewhere = cluster_store(&cluster, "CR", 0).await;

    let (req, _key) = durable_claim(cap.id);
    let missed = ClaimId::new();
    elsewhere
        .put_claim(StoredClaim {
            id: missed,
            mesh: mesh_id,
            request: req,
            at: now_ms(),
            expires_at: now_ms() + 3_600_000,
            outcome: None,
        })
        .await
        .unwrap();
    until(&mut a, |f| {
        matches!(f, RelayFrame::ClaimPending { claim, .. } if claim == missed).then_some(())
    })
    .await;

    let (req, _key) = durable_claim(cap.id);
    let (claim, mut waiting) = claim_waiting(&n1, &req).await;
    elsewhere
        .decide_claims(
            vec![claim],
            ClaimOutcome::Refused {
                code: ErrorCode::ClaimRefused,
                message: "denied through another node".into(),
            },
            now_ms() + 3_600_000,
        )
        .await
        .unwrap();
    match claim_result(&mut waiting).await {
        ClaimOutcome::Refused { code, .. } => assert_eq!(code, ErrorCode::ClaimRefused),
        other => panic!("the claimant was not told the answer decided elsewhere: {other:?}"),
    }
}

/// A member's rate limits go with it from node to node: its write budget spent through
/// node 1, it links through node 2 and finds it spent there too (as on one relay, where
/// reconnecting refills nothing: several nodes must not multiply it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_to_another_node_does_not_refill_a_members_send_budget() {
    use futures_util::StreamExt as _;
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&root.path().join("nats"), 3);
    let (n1, n2) = two_nodes_with(&cluster, root.path(), |c| {
        c.member_rate = 0.01;
        c.member_burst = 3.0;
    })
    .await;
    let (mesh_id, owner, mut a, member, _b) = mesh(&n1).await;
    for _ in 0..3 {
        let id = MessageId::new();
        send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
        assert_eq!(refusal_of(&mut a, id).await, None);
    }
    // The nodes' bus, watched for node 1 handing over what the owner has left.
    let watch = async_nats::connect(cluster.urls()[0].as_str())
        .await
        .unwrap();
    let mut bus = watch.subscribe("cr.mesh.*").await.unwrap();
    watch.flush().await.unwrap();
    let mut moved = link(&n2, mesh_id, &owner).await;
    expect_error(&mut a, ErrorCode::Replaced).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(m) = bus.next().await {
            if m.headers
                .as_ref()
                .and_then(|h| h.get("Cm-Kind"))
                .is_some_and(|k| k.as_str() == "budget")
            {
                return;
            }
        }
    })
    .await
    .expect("node 1 hands the owner's budget over");
    // Node 2 applies the handover as it hears it, which may be just after a first send
    // of the owner's arrives: what counts is that no fresh burst (3) gets through.
    let mut through = 0;
    loop {
        let id = MessageId::new();
        send(&mut moved, &ClientFrame::Send(owner.envelope(id, &member))).await;
        match refusal_of(&mut moved, id).await {
            None => through += 1,
            Some(code) => {
                assert_eq!(code, ErrorCode::RateLimited);
                break;
            }
        }
        assert!(
            through < 3,
            "the burst spent through node 1 came back whole through node 2"
        );
    }
}
