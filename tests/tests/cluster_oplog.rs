//! The clustered op log on a real 3-server NATS JetStream cluster on loopback: relay nodes
//! connected to different servers append one mesh's ops concurrently and get one dense,
//! gap-free sequence; a resend gets its first sequence back; killing the stream's leader
//! loses nothing acknowledged.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use claudemesh_relay::cluster::oplog::{ClusterOpLog, OpLogConfig};
use claudemesh_relay::store::NewOp;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::{MeshId, OpId, now_ms};
use claudemesh_tests::nats::NatsCluster;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

fn op(mesh: MeshId, author: MemberKey, n: usize) -> NewOp {
    NewOp {
        mesh,
        id: OpId::new(),
        author,
        op: Bytes::from(format!("{{\"sealed\":\"op {n} of {}\"}}", author.short())),
        at: now_ms(),
    }
}

/// A relay node's op log: its own client, connected to `url` first.
async fn node(urls: &[String], prefix: &str) -> Arc<ClusterOpLog> {
    let client = claudemesh_relay::cluster::connect(urls).await.unwrap();
    let cfg = OpLogConfig {
        prefix: prefix.into(),
        replicas: 3,
        ..Default::default()
    };
    Arc::new(ClusterOpLog::open(client, &cfg).await.unwrap())
}

fn rotated(urls: &[String], first: usize) -> Vec<String> {
    let mut v = urls.to_vec();
    v.rotate_left(first);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_appending_concurrently_get_one_dense_sequence() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    // Two relay nodes, on different NATS servers.
    let a = node(&rotated(&urls, 0), "T1").await;
    let b = node(&rotated(&urls, 2), "T1").await;
    let mesh = MeshId::new();
    let per_task = 40;
    let mut tasks = Vec::new();
    for (n, log) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..3u8 {
            let log = log.clone();
            let author = MemberKey([n as u8 * 16 + t + 1; 32]);
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..per_task {
                    let o = op(mesh, author, i);
                    let r = log.append(&o).await.unwrap();
                    assert!(r.new && !r.taken, "{r:?}");
                    got.push((r.seq, o.id.to_string()));
                }
                got
            }));
        }
    }
    let mut told: BTreeMap<u64, String> = BTreeMap::new();
    for t in tasks {
        for (seq, id) in t.await.unwrap() {
            assert!(told.insert(seq, id).is_none(), "sequence {seq} given twice");
        }
    }
    let total = 6 * per_task as u64;
    assert_eq!(told.len() as u64, total);
    assert_eq!(*told.keys().next().unwrap(), 1);
    assert_eq!(*told.keys().last().unwrap(), total, "no gap: 1..={total}");
    for log in [&a, &b] {
        assert_eq!(log.head(&mesh).await.unwrap(), total);
        let page = log.page(&mesh, 1, 10_000).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|s| s.seq).collect();
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "one order, read alike"
        );
        for s in &page {
            assert_eq!(
                told[&s.seq], s.id,
                "the op stored at {} is the one told",
                s.seq
            );
        }
        // Catch-up from the middle starts where asked (past a checkpoint).
        let mid = log.page(&mesh, 100, 5).await.unwrap();
        assert_eq!(
            mid.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
    }
    // Another mesh's log is its own.
    let other = MeshId::new();
    let r = b.append(&op(other, MemberKey([9; 32]), 0)).await.unwrap();
    assert_eq!(r.seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_gets_its_first_sequence_and_another_authors_id_is_taken() {
    let root = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    let a = node(&rotated(&urls, 0), "T2").await;
    let b = node(&rotated(&urls, 1), "T2").await;
    let mesh = MeshId::new();
    let alice = MemberKey([1; 32]);
    let first = op(mesh, alice, 0);
    let r1 = a.append(&first).await.unwrap();
    assert_eq!((r1.seq, r1.new), (1, true));
    a.append(&op(mesh, alice, 1)).await.unwrap();
    // The same op again, through another node (a daemon that reconnected elsewhere).
    let again = b.append(&first).await.unwrap();
    assert_eq!(
        (again.seq, again.at, again.new, again.taken),
        (1, r1.at, false, false)
    );
    // Its id under another author: not stored, said so.
    let forged = NewOp {
        author: MemberKey([2; 32]),
        ..first.clone()
    };
    let t = b.append(&forged).await.unwrap();
    assert!(t.taken && !t.new, "{t:?}");
    assert_eq!(a.head(&mesh).await.unwrap(), 2);
    assert_eq!(b.page(&mesh, 1, 10).await.unwrap().len(), 2);
}

/// Kill -9 the NATS server leading the op stream while two nodes append: appends that
/// fail meanwhile are sent again (as a daemon would), and in the end every acknowledged
/// op is in the log exactly once, at the sequence it was told, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(root.path(), 3);
    let urls = cluster.urls();
    let a = node(&rotated(&urls, 0), "T3").await;
    let b = node(&rotated(&urls, 1), "T3").await;
    let mesh = MeshId::new();
    let leader = a
        .leader()
        .await
        .unwrap()
        .expect("the op stream has a leader");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, String)>();
    let mut tasks = Vec::new();
    for (n, log) in [a.clone(), b.clone()].into_iter().enumerate() {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let author = MemberKey([n as u8 + 1; 32]);
            for i in 0..60 {
                let o = op(mesh, author, i);
                // Sent again until acknowledged, as the daemon's outbox does.
                let r = loop {
                    match log.append(&o).await {
                        Ok(r) => break r,
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    }
                };
                assert!(!r.taken);
                tx.send((r.seq, o.id.to_string())).unwrap();
            }
        }));
    }
    drop(tx);
    // Once some are acknowledged, the leader dies.
    let mut told: BTreeMap<u64, String> = BTreeMap::new();
    while told.len() < 30 {
        let (seq, id) = rx.recv().await.unwrap();
        assert!(told.insert(seq, id).is_none());
    }
    tokio::task::block_in_place(|| cluster.kill(&leader));
    while let Some((seq, id)) = rx.recv().await {
        if let Some(prev) = told.insert(seq, id.clone()) {
            assert_eq!(prev, id, "sequence {seq} told for two ops");
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(told.len(), 120, "every op acknowledged once");
    let page = a.page(&mesh, 1, 1000).await.unwrap();
    let seqs: Vec<u64> = page.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        (1..=120).collect::<Vec<_>>(),
        "dense, after the failover"
    );
    let ids: HashSet<&str> = page.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 120, "no op twice");
    for s in &page {
        assert_eq!(told[&s.seq], s.id);
    }
}
