//! Benchmarks for the messaging core, run on demand and printing numbers:
//!
//! ```sh
//! cargo build --release --workspace
//! target/release/bench all          # or: ipc | peers | dm | throughput | idle | attacks | load | mcp | state | claude | sessions
//! ```
//!
//! Daemons and relays are real processes of `target/release/claudemesh` (found next to this
//! binary); relay-level benchmarks drive the relay with raw protocol clients in this process,
//! which behave like daemons on the wire (acknowledge what they receive) but keep nothing on
//! disk, so the numbers are the relay's.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use bytes::Bytes;
use claudemesh_daemon::Client;
use claudemesh_relay::Connection;
use claudemesh_relay::client::connect_quic;
use claudemesh_schema::crypto::{BoxSecret, MemberSecret};
use claudemesh_schema::ipc::methods as m;
use claudemesh_schema::ipc::shared as sh;
use claudemesh_schema::roster::{MeshGenesis, Role, RosterEntry, RosterOp};
use claudemesh_schema::wire::{self, ClientFrame, Envelope, Hello, RelayFrame, Route, Seal};
use claudemesh_schema::{MeshId, MessageId, SessionId, now_ms};
use claudemesh_tests::{Node, RelayProc, mesh, mesh_with, share_certificate};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn claudemesh_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let p = me.parent().unwrap().join("claudemesh");
    assert!(
        p.exists(),
        "build the workspace first: {} is missing",
        p.display()
    );
    p
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, unit: &str, mut v: Vec<f64>) {
    let n = v.len();
    let (p50, p99, max) = (pct(&mut v, 0.5), pct(&mut v, 0.99), pct(&mut v, 1.0));
    println!("{name:<44} n={n:<6} p50={p50:>9.1}{unit} p99={p99:>9.1}{unit} max={max:>9.1}{unit}");
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

async fn ipc(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let mut n = Node::new(bin, root.path(), "bench");
    n.start();
    let mut c = Client::connect(&n.dir.join("daemon.sock")).await.unwrap();
    for _ in 0..500 {
        let _: m::HelloResult = c.call(m::HELLO, ()).await.unwrap();
    }
    let mut v = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        let _: m::HelloResult = c.call(m::HELLO, ()).await.unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report("CLI->daemon RPC round trip (hello)", "us", v);
    drop(c);
    let cpu = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<&str> = s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
    };
    let before = cpu(n.pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ticks = cpu(n.pid()) - before;
    println!(
        "idle daemon: RSS {} MB, CPU {:.2}% over 10 s",
        rss_kb(n.pid()) / 1024,
        ticks as f64 / 100.0 / 10.0 * 100.0
    );
}

async fn peers(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let run = |nodes: &Vec<Node>| {
        let mut v = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            let out = nodes[0].run(&["peers"]);
            v.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(out.status.success());
        }
        v
    };
    report("`claudemesh peers` process, daemon up", "ms", run(&nodes));
    nodes[0].stop();
    report(
        "`claudemesh peers` process, daemon down (sqlite)",
        "ms",
        run(&nodes),
    );
}

async fn dm(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    dm_between(&nodes[0], &nodes[1], 2000, "").await;
}

/// `count` direct messages from `a` to `b`, one at a time: send→relayed and send→inbox.
async fn dm_between(a: &Node, b: &Node, count: usize, label: &str) {
    let mut a = Client::connect(&a.dir.join("daemon.sock")).await.unwrap();
    let bob_sock = b.dir.join("daemon.sock");
    let (req_tx, mut req_rx) =
        tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<Instant>>(1);
    tokio::spawn(async move {
        let mut b = Client::connect(&bob_sock).await.unwrap();
        while let Some(done) = req_rx.recv().await {
            loop {
                let r: m::InboxResult = b
                    .call(
                        m::INBOX,
                        m::InboxParams {
                            wait_ms: Some(5000),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                if !r.messages.is_empty() {
                    break;
                }
            }
            let _ = done.send(Instant::now());
        }
    });
    let mut e2e = Vec::new();
    let mut acked = Vec::new();
    let warm = count / 20;
    let started = Instant::now();
    for i in 0..count {
        let (tx, rx) = tokio::sync::oneshot::channel();
        req_tx.send(tx).await.unwrap();
        let t = Instant::now();
        let r: m::SendResult = a
            .call(
                m::SEND,
                m::SendParams {
                    to: "bob".into(),
                    body: format!("ping {i}"),
                    priority: Default::default(),
                    mesh: None,
                    session: None,
                    wait_ms: Some(2000),
                    id: None,
                },
            )
            .await
            .unwrap();
        let ack = t.elapsed();
        assert_eq!(r.stage, m::Stage::Relayed);
        let got = rx.await.unwrap();
        if i >= warm {
            acked.push(ack.as_secs_f64() * 1e3);
            e2e.push((got - t).as_secs_f64() * 1e3);
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    report(
        &format!("{label}send -> relayed (durable at sender+relay)"),
        "ms",
        acked,
    );
    report(&format!("{label}send -> in recipient inbox"), "ms", e2e);
    println!("{label}one at a time: {rate:.0} msg/s");
}

/// Direct messages through relay nodes on a 3-server NATS JetStream cluster (issue 17):
/// one SQLite relay for reference, then 1, 2 and 3 nodes with alice on the first and bob
/// on the last (so from 2 nodes on, every message crosses nodes: stored through JetStream
/// by alice's node, handed live over core NATS to bob's).
async fn cluster_dm(bin: &Path) {
    use claudemesh_tests::nats::NatsCluster;
    const COUNT: usize = 500;
    {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
        dm_between(&nodes[0], &nodes[1], COUNT, "sqlite relay: ").await;
    }
    for k in 1..=3usize {
        let root = tempfile::tempdir().unwrap();
        let cluster = NatsCluster::start(&root.path().join("nats"), 3);
        let urls = cluster.urls().join(",");
        let args = ["--store", "nats", "--nats-url", urls.as_str()];
        let mut relays = vec![RelayProc::start(bin, &root.path().join("r1"), &args)];
        for i in 2..=k {
            let dir = root.path().join(format!("r{i}"));
            share_certificate(&relays[0].data_dir, &dir);
            relays.push(RelayProc::start(bin, &dir, &args));
        }
        let list: Vec<String> = relays.iter().map(|r| r.addr.to_string()).collect();
        let prefer = |i: usize| format!("prefer_node = \"{}\"\n", list[i]);
        let mut a = Node::with_config(bin, root.path(), "alice", &prefer(0));
        let mut b = Node::with_config(bin, root.path(), "bob", &prefer(k - 1));
        a.start();
        b.start();
        a.ok(&[
            "create",
            "bench",
            "--relay",
            &list.join(","),
            "--fingerprint",
            &relays[0].fingerprint,
        ]);
        let link = a.ok(&["invite"]);
        b.ok(&["join", &link, "--wait", "30"]);
        a.wait("peer-online", Some("bob"));
        b.wait("peer-online", Some("alice"));
        dm_between(&a, &b, COUNT, &format!("{k} node(s): ")).await;
        let rss: Vec<String> = relays
            .iter()
            .map(|r| format!("{} MB", peak_rss_kb(r.pid()) / 1024))
            .collect();
        println!("{k} node(s): relay node peak RSS {}", rss.join(", "));
        if k == 3 {
            failover(&a, &b, &mut relays);
        }
    }
}

/// Kill bob's node (SIGKILL) and time what users see. First with bob's daemon frozen, as
/// if it died with its node: how long alice still sees him online (the node's lease).
/// Then, bob thawed and linked again, his node killed under him: how long until a
/// message alice sends at once is in his inbox (his daemon fails over to another node).
fn failover(a: &Node, b: &Node, relays: &mut [RelayProc]) {
    let node_of = |n: &Node| {
        n.json(&["status"])["meshes"][0]["node"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let kill_node = |relays: &mut [RelayProc], node: &str| {
        if let Some(r) = relays.iter_mut().find(|r| r.addr.to_string() == node) {
            r.kill();
        }
    };
    let bob = b.pid().to_string();
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &bob])
            .status();
    };
    let bobs = node_of(b);
    signal("-STOP");
    let t = Instant::now();
    kill_node(relays, &bobs);
    a.ok(&["wait", "peer-offline", "bob", "--timeout", "60"]);
    println!(
        "failover: bob's node killed, his daemon frozen → bob offline at alice's node after {:.2} s (lease 10 s, checked every 2 s)",
        t.elapsed().as_secs_f64()
    );
    signal("-CONT");
    a.wait("peer-online", Some("bob"));
    let t = Instant::now();
    kill_node(relays, &node_of(b));
    a.ok(&["send", "bob", "after the kill"]);
    let got = b.json(&["inbox", "--wait", "60"]);
    assert!(
        got["messages"].as_array().is_some_and(|m| !m.is_empty()),
        "{got}"
    );
    println!(
        "failover: bob's node killed under him → alice's next message in his inbox after {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

fn peak_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// A raw member link for relay benchmarks.
struct Raw {
    conn: Connection,
    key: MemberSecret,
}

async fn raw_mesh(relay: &RelayProc, members: usize) -> (MeshId, Vec<Raw>) {
    let owner = MemberSecret::generate();
    let mesh = MeshId::new();
    let genesis = MeshGenesis::sign(&owner, mesh, now_ms());
    let mut oc = connect_quic(relay.addr, None, Duration::from_secs(5))
        .await
        .unwrap();
    send(
        &mut oc,
        &ClientFrame::CreateMesh {
            rid: 1,
            genesis: genesis.clone(),
            token: None,
        },
    )
    .await;
    recv(&mut oc).await;
    let hello = |k: &MemberSecret| {
        Hello::sign(
            k,
            mesh,
            SessionId::new(),
            BoxSecret::generate().public(),
            now_ms(),
            "bench",
        )
    };
    send(&mut oc, &ClientFrame::Hello(hello(&owner))).await;
    while !matches!(recv(&mut oc).await, RelayFrame::Ready { .. }) {}
    let keys: Vec<MemberSecret> = (0..members).map(|_| MemberSecret::generate()).collect();
    let mut roster = claudemesh_schema::roster::Roster::from_genesis(&genesis).unwrap();
    for (i, k) in keys.iter().enumerate() {
        let e = RosterEntry::sign(
            &owner,
            &roster.head(),
            mesh,
            k.public(),
            Role::Member,
            RosterOp::Add,
            now_ms(),
            None,
        );
        roster.apply(&e).unwrap();
        send(
            &mut oc,
            &ClientFrame::Roster {
                rid: 10 + i as u64,
                entry: e,
            },
        )
        .await;
    }
    let mut oks = 0;
    while oks < members {
        if let RelayFrame::Ok { .. } = recv(&mut oc).await {
            oks += 1;
        }
    }
    let mut out = Vec::new();
    for k in keys {
        let mut c = connect_quic(relay.addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        send(&mut c, &ClientFrame::Hello(hello(&k))).await;
        while !matches!(recv(&mut c).await, RelayFrame::Ready { .. }) {}
        out.push(Raw { conn: c, key: k });
    }
    std::mem::forget(oc);
    (mesh, out)
}

async fn send(c: &mut Connection, f: &ClientFrame) {
    c.writer
        .send(Bytes::from(wire::encode(f).unwrap()))
        .await
        .unwrap();
}

async fn recv(c: &mut Connection) -> RelayFrame {
    let b = tokio::time::timeout(Duration::from_secs(30), c.reader.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    wire::decode(&b).unwrap()
}

/// Counters shared by the relay benchmarks.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    relayed: AtomicU64,
    refused: AtomicU64,
    latencies: std::sync::Mutex<Vec<f64>>,
    seen: std::sync::Mutex<std::collections::HashSet<MessageId>>,
    all_delivered: tokio::sync::Notify,
}

/// Drive one raw member: a writer task (sends and acks), a reader task (records delivery
/// latency, acks in batches). Returns the channel to queue outgoing frames on.
fn drive(
    raw: Raw,
    t0: Instant,
    tally: Arc<Tally>,
    expect: u64,
) -> tokio::sync::mpsc::Sender<Bytes> {
    let (mut reader, mut writer, guard) = raw.conn.into_parts();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4096);
    tokio::spawn(async move {
        let _guard = guard;
        while let Some(first) = rx.recv().await {
            if writer.feed(first).await.is_err() {
                return;
            }
            while let Ok(b) = rx.try_recv() {
                if writer.feed(b).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
    });
    let out = tx.clone();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<MessageId>();
    // Acks go out in batches of whatever arrived meanwhile, as a daemon sends them.
    tokio::spawn(async move {
        while let Some(first) = ack_rx.recv().await {
            let mut ids = vec![first];
            while let Ok(id) = ack_rx.try_recv() {
                ids.push(id);
                if ids.len() >= 1024 {
                    break;
                }
            }
            let f = Bytes::from(
                wire::encode(&ClientFrame::Ack {
                    ids,
                    proofs: Vec::new(),
                })
                .unwrap(),
            );
            if out.send(f).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(b)) = reader.next().await {
            match wire::decode::<RelayFrame>(&b) {
                Ok(RelayFrame::Deliver { env, .. }) => {
                    let _ = ack_tx.send(env.id);
                    // A lagging link gets its mailbox replayed: count each id once.
                    if !tally.seen.lock().unwrap().insert(env.id) {
                        continue;
                    }
                    let sent = u64::from_be_bytes(env.ct[..8].try_into().unwrap());
                    let now = t0.elapsed().as_nanos() as u64;
                    tally
                        .latencies
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent) as f64 / 1e6);
                    if tally.delivered.fetch_add(1, Ordering::Relaxed) + 1 == expect {
                        tally.all_delivered.notify_one();
                    }
                }
                Ok(RelayFrame::Relayed { .. }) => {
                    tally.relayed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(RelayFrame::Refused { .. }) => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    tx
}

/// A relay for benchmarks: the defaults, but with handshake limits that let one machine
/// open hundreds of links at once.
fn bench_relay(bin: &Path, root: &Path, name: &str, extra: &[&str]) -> RelayProc {
    bench_relay_with(bin, root, name, extra, "")
}

/// Like [`bench_relay`], with more TOML settings.
fn bench_relay_with(bin: &Path, root: &Path, name: &str, extra: &[&str], toml: &str) -> RelayProc {
    let cfg = root.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        if toml.contains("accept_rate") {
            format!("handshake_rate = 100000.0\nhandshake_burst = 100000.0\n{toml}")
        } else {
            format!(
                "handshake_rate = 100000.0\nhandshake_burst = 100000.0\n\
                 accept_rate = 100000.0\naccept_burst = 100000.0\n{toml}"
            )
        },
    )
    .unwrap();
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    RelayProc::start(bin, &root.join(name), &args)
}

async fn throughput(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    for (label, extra) in [
        ("durability=full", vec![]),
        ("durability=normal", vec!["--durability", "normal"]),
    ] {
        let relay = bench_relay(bin, root.path(), &format!("relay-{}", extra.len()), &extra);
        let pairs = 25usize;
        let per = 8000u64;
        let (_mesh, raws) = raw_mesh(&relay, pairs * 2).await;
        let t0 = Instant::now();
        let tally = Arc::new(Tally::default());
        let expect = pairs as u64 * per;
        let mut it = raws.into_iter();
        let mut senders = Vec::new();
        for _ in 0..pairs {
            let (s, r) = (it.next().unwrap(), it.next().unwrap());
            let target = r.key.public();
            std::mem::forget(drive(r, t0, tally.clone(), expect));
            let key = MemberSecret::from_bytes(&s.key.to_bytes());
            senders.push((key, target, drive(s, t0, tally.clone(), u64::MAX)));
        }
        let start = Instant::now();
        let cpu0 = cpu_secs(relay.pid());
        let waiter = tally.clone();
        let wait = tokio::spawn(async move { waiter.all_delivered.notified().await });
        for (key, target, tx) in senders {
            tokio::spawn(async move {
                for _ in 0..per {
                    if tx.send(envelope_to(&key, &target, t0)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let ok = tokio::time::timeout(Duration::from_secs(120), wait)
            .await
            .is_ok();
        let secs = start.elapsed().as_secs_f64();
        let relay_cpu = (cpu_secs(relay.pid()) - cpu0) / secs;
        let delivered = tally.seen.lock().unwrap().len() as u64;
        println!(
            "relay throughput ({label}, {pairs} sender->receiver pairs): {:.0} envelopes/s ({delivered}/{expect} delivered in {secs:.2}s, refused {}, relay RSS {} MB, relay CPU {:.0} % of one core){}",
            delivered as f64 / secs,
            tally.refused.load(Ordering::Relaxed),
            rss_kb(relay.pid()) / 1024,
            relay_cpu * 100.0,
            if ok { "" } else { " TIMED OUT" }
        );
    }
}

fn envelope_to(
    from: &MemberSecret,
    to: &claudemesh_schema::crypto::MemberKey,
    t0: Instant,
) -> Bytes {
    let mut ct = vec![0u8; 64];
    ct[..8].copy_from_slice(&(t0.elapsed().as_nanos() as u64).to_be_bytes());
    let f = ClientFrame::Send(Envelope {
        epoch: 0,
        id: MessageId::new(),
        from: SessionId::new(),
        from_member: from.public(),
        to: Route::Member { member: *to },
        seal: Seal::Box,
        ct,
    });
    Bytes::from(wire::encode(&f).unwrap())
}

/// Memory of idle linked connections: `BENCH_IDLE_N` (default 10,000) member links in
/// meshes of 10, all from this one address (so the per-IP cap is raised for it).
async fn idle(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let relay = bench_relay_with(
        bin,
        root.path(),
        "relay",
        &[],
        "max_connections_per_ip = 100000\nmax_connections = 100000\n",
    );
    let n: usize = std::env::var("BENCH_IDLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (_mesh, warm) = raw_mesh(&relay, 9).await;
    let before = rss_kb(relay.pid());
    let t = Instant::now();
    // raw_mesh keeps the owner's link open too: 10 connections per mesh.
    let mut links = Vec::new();
    let mut conns = 0usize;
    while conns < n {
        let (_m, raws) = raw_mesh(&relay, 9).await;
        links.extend(raws);
        conns += 10;
    }
    let after = rss_kb(relay.pid());
    println!(
        "relay memory per idle linked connection: {:.1} KiB ({} links in meshes of 10, opened in {:.1}s: RSS {} MB -> {} MB, {} threads)",
        after.saturating_sub(before) as f64 / conns as f64,
        conns,
        t.elapsed().as_secs_f64(),
        before / 1024,
        after / 1024,
        threads(relay.pid()),
    );
    drop((warm, links));
}

/// Tells attack tasks to stop.
#[derive(Clone, Default)]
struct Stop(Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A legitimate pair's `send` -> `relayed` (p50/p99) and the relay's peak RSS while each
/// attack of issue 11 runs against a relay with the default limits (all attackers on this
/// one address, so the per-address caps apply to them as to one hostile host).
async fn attacks(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    // The default accept limits (50 new connections/s per address, burst 200): the
    // attackers share this one address, as one hostile host would.
    let relay = bench_relay_with(
        bin,
        root.path(),
        "relay-attacks",
        &[],
        "accept_rate = 50.0\naccept_burst = 200.0\n",
    );
    let addr = relay.addr;
    let pid = relay.pid();
    let (_mesh, raws) = raw_mesh(&relay, 4).await;
    let mut it = raws.into_iter();
    let (a, b, acker, pinger) = (
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
        it.next().unwrap(),
    );
    let (a_key, b_key) = (a.key, b.key.public());
    let mut a = a.conn;
    // The recipient acknowledges what it gets, as a daemon does.
    let (mut b_reader, mut b_writer, b_guard) = b.conn.into_parts();
    tokio::spawn(async move {
        let _g = b_guard;
        while let Some(Ok(f)) = b_reader.next().await {
            if let Ok(RelayFrame::Deliver { env, .. }) = wire::decode::<RelayFrame>(&f) {
                let ack = wire::encode(&ClientFrame::Ack {
                    ids: vec![env.id],
                    proofs: Vec::new(),
                })
                .unwrap();
                if b_writer.send(Bytes::from(ack)).await.is_err() {
                    return;
                }
            }
        }
    });
    let ping = |n: u64| Bytes::from(wire::encode(&ClientFrame::Ping { n }).unwrap());
    let (ack_reader, ack_writer, ack_guard) = acker.conn.into_parts();
    let (ping_reader, ping_writer, ping_guard) = pinger.conn.into_parts();
    let (mut ack_writer, mut ping_writer) = (Some(ack_writer), Some(ping_writer));
    // The ack flooder drains what it is sent; the ping flooder never reads.
    tokio::spawn(async move {
        let (mut r, _g) = (ack_reader, ack_guard);
        while let Some(Ok(_)) = r.next().await {}
    });
    let _never_read = (ping_reader, ping_guard);
    let mut tcp_held = Vec::new();
    let phases = [
        "none",
        "pre-hello ping floods (64 connections, reconnecting)",
        "silent TCP connections (2,000 opened, held)",
        "ack flood (frames of 4,096 unknown ids)",
        "member ping flood, never reading",
    ];
    for phase in phases {
        let stop = Stop::default();
        match phase {
            "pre-hello ping floods (64 connections, reconnecting)" => {
                for _ in 0..64 {
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        while !stop.is_cancelled() {
                            let Ok(c) = connect_quic(addr, None, Duration::from_secs(5)).await
                            else {
                                continue;
                            };
                            let (_r, mut w, _g) = c.into_parts();
                            for n in 0..100_000u64 {
                                if stop.is_cancelled() || w.feed(ping(n)).await.is_err() {
                                    break;
                                }
                                if n.is_multiple_of(256) && w.flush().await.is_err() {
                                    break;
                                }
                            }
                        }
                    });
                }
            }
            "silent TCP connections (2,000 opened, held)" => {
                for _ in 0..2000 {
                    if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                        tcp_held.push(s);
                    }
                }
            }
            "ack flood (frames of 4,096 unknown ids)" => {
                let (stop, mut w) = (stop.clone(), ack_writer.take().unwrap());
                let frame = Bytes::from(
                    wire::encode(&ClientFrame::Ack {
                        ids: (0..4096).map(|_| MessageId::new()).collect(),
                        proofs: Vec::new(),
                    })
                    .unwrap(),
                );
                tokio::spawn(async move {
                    while !stop.is_cancelled() && w.send(frame.clone()).await.is_ok() {}
                });
            }
            "member ping flood, never reading" => {
                let (stop, mut w) = (stop.clone(), ping_writer.take().unwrap());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.is_cancelled() && w.feed(ping(n)).await.is_ok() {
                        n += 1;
                        if n.is_multiple_of(256) && w.flush().await.is_err() {
                            break;
                        }
                    }
                });
            }
            _ => {}
        }
        // Peak relay memory while the pair works.
        let peak = Arc::new(AtomicU64::new(rss_kb(pid)));
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut waits = Vec::new();
        let mut queued = 0;
        let (cpu0, t0) = (cpu_secs(pid), Instant::now());
        for _ in 0..300 {
            let f = envelope_to(&a_key, &b_key, Instant::now());
            let id = match wire::decode::<ClientFrame>(&f).unwrap() {
                ClientFrame::Send(e) => e.id,
                _ => unreachable!(),
            };
            let t = Instant::now();
            a.writer.send(f).await.unwrap();
            loop {
                match recv(&mut a).await {
                    RelayFrame::Relayed { id: x, .. } if x == id => break,
                    RelayFrame::Refused { id: x, .. } if x == id => {
                        queued += 1;
                        break;
                    }
                    _ => {}
                }
            }
            let w = t.elapsed().as_secs_f64() * 1e3;
            if w > 3000.0 {
                queued += 1;
            }
            waits.push(w);
        }
        let relay_cpu = (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64();
        stop.cancel();
        let _ = sampler.await;
        let (p50, p99) = (pct(&mut waits.clone(), 0.5), pct(&mut waits, 0.99));
        println!(
            "attack: {phase}: pair send->relayed p50 {p50:.2} ms p99 {p99:.2} ms ({queued}/300 over the daemon's 3 s wait or refused), relay peak RSS {} MB, relay CPU {:.0} % of one core",
            peak.load(Ordering::Relaxed) / 1024,
            relay_cpu * 100.0
        );
    }
    drop(tcp_held);
}

async fn load(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let relay = bench_relay(bin, root.path(), "relay", &[]);
    let sessions = 100usize;
    let per = 1000u64;
    let rate_per_session = 100.0; // messages per second each
    let (_mesh, raws) = raw_mesh(&relay, sessions).await;
    let keys: Vec<_> = raws.iter().map(|r| r.key.public()).collect();
    let t0 = Instant::now();
    let tally = Arc::new(Tally::default());
    let expect = sessions as u64 * per;
    let mut txs = Vec::new();
    for r in raws {
        let key = MemberSecret::from_bytes(&r.key.to_bytes());
        txs.push((key, drive(r, t0, tally.clone(), expect)));
    }
    let peak = Arc::new(AtomicU64::new(0));
    let (pk, pid) = (peak.clone(), relay.pid());
    let sampler = tokio::spawn(async move {
        loop {
            pk.fetch_max(rss_kb(pid), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = Instant::now();
    let waiter = tally.clone();
    let wait = tokio::spawn(async move { waiter.all_delivered.notified().await });
    for (i, (key, tx)) in txs.into_iter().enumerate() {
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_per_session));
            for k in 0..per {
                tick.tick().await;
                let to = &keys[(i + 1 + (k as usize % (keys.len() - 1))) % keys.len()];
                if tx.send(envelope_to(&key, to, t0)).await.is_err() {
                    return;
                }
            }
        });
    }
    let ok = tokio::time::timeout(Duration::from_secs(300), wait)
        .await
        .is_ok();
    sampler.abort();
    let secs = start.elapsed().as_secs_f64();
    let delivered = tally.seen.lock().unwrap().len() as u64;
    println!(
        "load {sessions} sessions x {per} msgs ({rate_per_session}/s each): delivered {delivered}/{expect} ({:.1}%) in {secs:.1}s, refused {}, relay peak RSS {} MB{}",
        delivered as f64 * 100.0 / expect as f64,
        tally.refused.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed) / 1024,
        if ok { "" } else { " TIMED OUT" }
    );
    let lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    report("  delivery latency under load", "ms", lat);
}

/// `claudemesh mcp` over stdio with a minimal line-based JSON-RPC driver (a benchmark, not
/// a conformance test: the MCP conformance test uses the official Python client).
async fn mcp(bin: &Path) {
    use std::io::{BufRead as _, Write as _};
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let spawn = || {
        std::process::Command::new(bin)
            .arg("mcp")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &nodes[0].dir)
            .env("CLAUDEMESH_CONFIG_DIR", &nodes[0].dir)
            .env("CLAUDEMESH_SESSION_KEY", "bench")
            .env("CLAUDEMESH_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}"#;
    let mut starts = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let mut child = spawn();
        let mut stdin = child.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        writeln!(stdin, "{init}").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        drop(stdin);
        let _ = child.wait();
    }
    report("`claudemesh mcp` process start -> initialize", "ms", starts);
    let mut child = spawn();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, "{init}").unwrap();
    out.read_line(&mut line).unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    let mut via_mcp = Vec::new();
    for i in 0..2000u32 {
        line.clear();
        let t = Instant::now();
        writeln!(stdin, r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"mesh_info","arguments":{{}}}}}}"#, i + 10).unwrap();
        loop {
            line.clear();
            out.read_line(&mut line).unwrap();
            if line.contains(&format!("\"id\":{}", i + 10)) {
                break;
            }
        }
        if i >= 100 {
            via_mcp.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let mut c = Client::connect(&nodes[0].dir.join("daemon.sock"))
        .await
        .unwrap();
    let mut direct = Vec::new();
    for i in 0..2000 {
        let t = Instant::now();
        let _: m::StatusResult = c.call(m::STATUS, ()).await.unwrap();
        if i >= 100 {
            direct.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    report(
        "tool call mesh_info through `claudemesh mcp`",
        "us",
        via_mcp,
    );
    report("same call (status) straight to the daemon", "us", direct);
    drop(stdin);
    let _ = child.wait();

    // Channel push latency: alice's daemon sends, bob's shim emits the notification.
    let mut b = std::process::Command::new(bin)
        .arg("mcp")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &nodes[1].dir)
        .env("CLAUDEMESH_CONFIG_DIR", &nodes[1].dir)
        .env("CLAUDEMESH_SESSION_KEY", "bench-b")
        .env("CLAUDEMESH_DISPLAY_NAME", "bobc")
        .env("CLAUDEMESH_CHANNELS", "1")
        .env("CLAUDEMESH_NO_AUTOSTART", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut b_in = b.stdin.take().unwrap();
    let mut b_out = std::io::BufReader::new(b.stdout.take().unwrap());
    writeln!(b_in, "{init}").unwrap();
    line.clear();
    b_out.read_line(&mut line).unwrap();
    writeln!(
        b_in,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    nodes[0].wait("peer-online", Some("bobc"));
    let mut push = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let p = m::SendParams {
            to: "bobc".into(),
            body: format!("push {i}"),
            priority: claudemesh_schema::message::Priority::Now,
            mesh: None,
            session: None,
            wait_ms: Some(0),
            id: None,
        };
        let _: m::SendResult = c.call(m::SEND, p).await.unwrap();
        loop {
            line.clear();
            b_out.read_line(&mut line).unwrap();
            if line.contains("notifications/claude/channel") && line.contains(&format!("push {i}"))
            {
                break;
            }
        }
        if i >= 20 {
            push.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    report("send -> channel notification on the other shim", "ms", push);
    drop(b_in);
    let _ = b.wait();

    let mut hook = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let out = nodes[1].run_env(
            &["hook", "post-tool-use"],
            &[("CLAUDEMESH_SESSION_KEY", "bench-b")],
        );
        assert!(out.status.success());
        hook.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("`claudemesh hook post-tool-use` (daemon up)", "ms", hook);
}

/// Write `n` ops through `clients` concurrent local-socket clients; `make(i)` builds the
/// request of op `i`. Returns when every write is durable at the daemon.
async fn write_ops<P, F>(sock: &Path, n: usize, clients: usize, method: &'static str, make: F)
where
    P: serde::Serialize + Send + 'static,
    F: Fn(usize) -> P + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (make, next, sock) = (make.clone(), next.clone(), sock.to_path_buf());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&sock).await.unwrap();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                let _: sh::WriteResult = c.call(method, make(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn wait_synced(sock: &Path, seq: u64) {
    let mut c = Client::connect(sock).await.unwrap();
    let r: m::WaitResult = c
        .call(
            m::WAIT_FOR,
            m::WaitParams {
                condition: m::WaitCondition::Synced,
                mesh: None,
                peer: None,
                seq: Some(seq),
                timeout_ms: 600_000,
            },
        )
        .await
        .unwrap();
    assert!(r.met, "not in sync within 10 minutes");
}

/// Shared state: op write and publish throughput, catch-up of a member that was offline,
/// `state get` latency, and `recall` over many memories.
async fn state(bin: &Path) {
    let n: usize = std::env::var("CM_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // CM_BENCH_SNAPSHOT_EVERY=0 measures pure log replay; by default (10,000) the member
    // that was offline starts from the newest snapshot.
    let every = std::env::var("CM_BENCH_SNAPSHOT_EVERY").unwrap_or_else(|_| "10000".into());
    let cfg = format!("[state]\nsnapshot_every = {every}\n");
    println!("(snapshot_every = {every})");
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh_with(bin, root.path(), &["alice", "bob"], &[], &cfg);
    let (a_sock, b_sock) = (
        nodes[0].dir.join("daemon.sock"),
        nodes[1].dir.join("daemon.sock"),
    );
    nodes[1].ok(&["debug", "link", "down"]);
    nodes[1].wait("link-down", None);

    let actor = || sh::Actor {
        mesh: None,
        session: None,
        wait_ms: Some(0),
    };
    let t = Instant::now();
    write_ops(&a_sock, n, 64, sh::STATE_SET, move |i| sh::StateSetParams {
        actor: actor(),
        key: format!("key-{}", i % 5000),
        value: serde_json::json!({ "n": i, "note": "a shared value of modest size" }),
    })
    .await;
    let written = t.elapsed();
    wait_synced(&a_sock, n as u64).await;
    let published = t.elapsed();
    println!(
        "op writes, 64 clients (durable locally)      n={n:<6} {:>9.0} ops/s",
        n as f64 / written.as_secs_f64()
    );
    println!(
        "op publish (sequenced by relay, applied)     n={n:<6} {:>9.0} ops/s",
        n as f64 / published.as_secs_f64()
    );

    let t = Instant::now();
    nodes[1].ok(&["debug", "link", "up"]);
    wait_synced(&b_sock, n as u64).await;
    println!(
        "catch-up of {n} ops by a member that was offline: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let da: sh::DigestResult = Client::connect(&a_sock)
        .await
        .unwrap()
        .call(sh::DIGEST, m::MeshParams { mesh: None })
        .await
        .unwrap();
    let db: sh::DigestResult = Client::connect(&b_sock)
        .await
        .unwrap()
        .call(sh::DIGEST, m::MeshParams { mesh: None })
        .await
        .unwrap();
    assert_eq!(da.digest, db.digest, "both members fold to the same state");

    let mut c = Client::connect(&b_sock).await.unwrap();
    let mut v = Vec::new();
    for i in 0..5000 {
        let t = Instant::now();
        let r: sh::StateResult = c
            .call(
                sh::STATE_GET,
                sh::StateQuery {
                    mesh: None,
                    key: Some(format!("key-{}", i % 5000)),
                    page: Default::default(),
                },
            )
            .await
            .unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(r.entries.len(), 1);
    }
    report("state get, RPC round trip", "us", v);
    let mut v = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let out = nodes[1].run(&["state", "get", &format!("key-{i}")]);
        v.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(out.status.success());
    }
    report("`claudemesh state get` process", "ms", v);

    // Memories: n of them, then ranked recall.
    let words: Vec<String> = (0..4000).map(|i| format!("w{i:x}")).collect();
    let words = Arc::new(words);
    let w2 = words.clone();
    let t = Instant::now();
    write_ops(&a_sock, n, 64, sh::REMEMBER, move |i| {
        let mut x = i as u64 * 2654435761 + 7;
        let text: Vec<&str> = (0..14)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Zipf-ish: small indices far more often.
                let r = (x % 4000) as usize;
                w2[(r * r) / 4000].as_str()
            })
            .collect();
        sh::RememberParams {
            actor: actor(),
            text: text.join(" "),
            tags: vec![format!("t{}", i % 16)],
        }
    })
    .await;
    wait_synced(&a_sock, 2 * n as u64).await;
    wait_synced(&b_sock, 2 * n as u64).await;
    println!(
        "{n} memories written and synced to both members in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut v = Vec::new();
    for i in 0..2000usize {
        let q = format!("{} {}", words[(i * 7) % 600], words[(i * 13) % 2000]);
        let t = Instant::now();
        let r: sh::RecallResult = c
            .call(
                sh::RECALL,
                sh::RecallParams {
                    mesh: None,
                    query: q,
                    tags: vec![],
                    limit: Some(10),
                    cursor: None,
                },
            )
            .await
            .unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(!r.memories.is_empty());
    }
    report(&format!("recall (top 10) over {n} memories"), "ms", v);
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let bin = claudemesh_bin();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let all = what == "all";
        if all || what == "ipc" {
            ipc(&bin).await;
        }
        if all || what == "peers" {
            peers(&bin).await;
        }
        if all || what == "dm" {
            dm(&bin).await;
        }
        if all || what == "throughput" {
            throughput(&bin).await;
        }
        if all || what == "attacks" {
            attacks(&bin).await;
        }
        if all || what == "idle" {
            idle(&bin).await;
        }
        if all || what == "load" {
            load(&bin).await;
        }
        if all || what == "mcp" {
            mcp(&bin).await;
        }
        if all || what == "state" {
            state(&bin).await;
        }
        if all || what == "claude" {
            claude_code(&bin).await;
        }
        if all || what == "sessions" {
            sessions(&bin).await;
        }
        if all || what == "files" {
            files(&bin);
        }
        if all || what == "tools" {
            tools(&bin).await;
        }
        if all || what == "cluster" {
            cluster().await;
        }
        if all || what == "cluster-dm" {
            cluster_dm(&bin).await;
        }
    });
}

/// The clustered op log (issue 17, in progress) on a 3-server NATS JetStream cluster on
/// this box: appends/s and append latency with 8 concurrent authors through one relay
/// node, then through two nodes on different servers — on one mesh (they race for its
/// head) and spread over 8 meshes (no race). A shape, not a capacity: the three servers
/// and the clients share two cores.
async fn cluster() {
    use claudemesh_relay::cluster::oplog::{ClusterOpLog, OpLogConfig};
    use claudemesh_relay::store::NewOp;
    use claudemesh_schema::OpId;
    use claudemesh_schema::crypto::MemberKey;
    let root = tempfile::tempdir().unwrap();
    let nats = claudemesh_tests::nats::NatsCluster::start(root.path(), 3);
    let urls = nats.urls();
    let per_author = 100usize;
    for (label, nodes, meshes) in [
        ("1 node, 1 mesh", 1usize, 1usize),
        ("2 nodes, 1 mesh", 2, 1),
        ("2 nodes, 8 meshes", 2, 8),
    ] {
        let prefix = format!("B{nodes}{meshes}");
        let mut logs = Vec::new();
        for n in 0..nodes {
            let mut u = urls.clone();
            u.rotate_left(n * 2);
            let client = claudemesh_relay::cluster::connect(&u).await.unwrap();
            let cfg = OpLogConfig {
                prefix: prefix.clone(),
                replicas: 3,
                ..Default::default()
            };
            logs.push(Arc::new(ClusterOpLog::open(client, &cfg).await.unwrap()));
        }
        let mesh_ids: Vec<MeshId> = (0..meshes).map(|_| MeshId::new()).collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for a in 0..8usize {
            let log = logs[a % nodes].clone();
            let mesh = mesh_ids[a % meshes];
            tasks.push(tokio::spawn(async move {
                let author = MemberKey([a as u8 + 1; 32]);
                let mut lat = Vec::new();
                for i in 0..per_author {
                    let op = NewOp {
                        mesh,
                        id: OpId::new(),
                        author,
                        op: Bytes::from(format!("{{\"ct\":\"{i:0>200}\"}}")),
                        at: now_ms(),
                    };
                    let t = Instant::now();
                    log.append(&op).await.unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        let n = lat.len();
        report(&format!("cluster op append, {label}"), "ms", lat);
        println!("{:<44} {:.0} appends/s", "", n as f64 / secs);
        let mut heads = 0;
        for m in &mesh_ids {
            heads += logs[0].head(m).await.unwrap();
        }
        assert_eq!(heads as usize, n, "dense: every append has its sequence");
    }
}

/// Shared MCP tools as a session calls them: the echo server of the tests hosted by ann's
/// daemon (`mcp-host add`), `tools_call` over the daemon socket as the shim makes it.
/// Round trips of a trivial call from ben (ben's daemon -> relay -> ann's daemon -> the
/// server's stdio -> back), then the same call made on ann's own daemon (no relay: where
/// the time goes), then calls/s with 10 concurrent callers on ben.
async fn tools(bin: &Path) {
    use claudemesh_schema::ipc::tools as tl;
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin, root.path(), &["ann", "ben"], &[]);
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("mcp/echo_server.py");
    nodes[0].ok(&[
        "mcp-host",
        "add",
        "echo",
        "--",
        "python3",
        server.to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes[1].ok(&["tools", "list"]).contains("echo") {
        assert!(Instant::now() < deadline, "ben never listed echo");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let params = || tl::ToolsCallParams {
        mesh: None,
        session: None,
        server: "echo".into(),
        tool: "echo".into(),
        arguments: serde_json::json!({"text": "ping"}),
        timeout_ms: None,
    };
    for (label, node) in [
        ("remote, through the relay", &nodes[1]),
        ("on the host's own daemon", &nodes[0]),
    ] {
        let mut c = Client::connect(&node.dir.join("daemon.sock"))
            .await
            .unwrap();
        for _ in 0..20 {
            let _: tl::ToolsCallResult = c.call(tl::TOOLS_CALL, params()).await.unwrap();
        }
        let mut v = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let _: tl::ToolsCallResult = c.call(tl::TOOLS_CALL, params()).await.unwrap();
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "tools: trivial call ({label}), 500 sequential: p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut v, 0.5),
            pct(&mut v, 0.99)
        );
    }
    let sock = nodes[1].dir.join("daemon.sock");
    let per = 200;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&sock).await.unwrap();
            let mut v = Vec::new();
            for _ in 0..per {
                let t = Instant::now();
                let _: tl::ToolsCallResult = c.call(tl::TOOLS_CALL, params()).await.unwrap();
                v.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            v
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "tools: 10 concurrent callers x {per}: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        (10 * per) as f64 / secs,
        pct(&mut all, 0.5),
        pct(&mut all, 0.99)
    );
}

/// Shared files through the CLI as users run it: a relay and three daemons; `file share`
/// of a `CM_BENCH_FILE_MIB` (default 50) MiB file, then `file get` by two members (chunks
/// from the relay's blob store), then once more with a relay that stores no files (chunks
/// served by the sharer's daemon).
fn files(bin: &Path) {
    let mib: usize = std::env::var("CM_BENCH_FILE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for (label, relay_args) in [
        ("relay blob store", &[][..]),
        ("member to member", &["--no-blob-storage"][..]),
    ] {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh(bin, root.path(), &["ann", "ben", "cat"], relay_args);
        let src = root.path().join("data.bin");
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let data: Vec<u8> = (0..mib << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&src, &data).unwrap();
        let t = Instant::now();
        let f = nodes[0].json(&["file", "share", src.to_str().unwrap()]);
        let share = t.elapsed();
        let id = f["file"].as_str().unwrap().to_string();
        let mut gets = Vec::new();
        for n in &nodes[1..] {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !n.ok(&["file", "list"]).contains("data.bin") {
                assert!(
                    Instant::now() < deadline,
                    "{} never listed the file",
                    n.name
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = root.path().join(format!("{}.bin", n.name));
            let t = Instant::now();
            n.ok(&["file", "get", &id, "-o", out.to_str().unwrap()]);
            gets.push(t.elapsed());
            assert!(std::fs::read(&out).unwrap() == data);
        }
        let rate = |d: Duration| mib as f64 / d.as_secs_f64();
        println!(
            "files ({label}, {mib} MiB): share {:.2} s ({:.1} MiB/s); get {:.2} s ({:.1} MiB/s), {:.2} s ({:.1} MiB/s)",
            share.as_secs_f64(),
            rate(share),
            gets[0].as_secs_f64(),
            rate(gets[0]),
            gets[1].as_secs_f64(),
            rate(gets[1]),
        );
    }
}

/// The real Claude Code CLI (the test suite's pinned install) with a stand-in model on
/// loopback: a push to an idle interactive session until its sender hears `read` (the
/// daemon saw it in the transcript after the model answered), the cost of one hook call as
/// Claude Code makes it, and how soon a session that ended is offline for its peers.
async fn claude_code(bin: &Path) {
    use claudemesh_tests::claude::{self, Tmux};
    use claudemesh_tests::model::ModelStub;
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh_with(
        bin,
        root.path(),
        &["alice", "bob"],
        &[],
        "[peers]\noffline_grace_secs = 0\n",
    );
    let (alice, bob) = (&nodes[0], &nodes[1]);
    assert!(bob.run(&["install"]).status.success());
    let work = root.path().join("proj");
    std::fs::create_dir_all(&work).unwrap();
    claude::prepare_home(&bob.dir, &work, true);
    let model = ModelStub::start();
    let env = claude::env(&bob.dir, &bob.dir, &model.url());

    // Push -> read, interactive with channels.
    let t = Tmux::start(&work, &env, bin, &["launch"]);
    t.wait_for("Loading development channels", 60);
    claude::eventually("dev channel prompt answered", 60, || {
        let s = t.screen();
        if s.contains("Enter to confirm") {
            t.key("Enter");
            std::thread::sleep(Duration::from_millis(500));
        }
        s.contains("for shortcuts")
    });
    alice.wait("peer-online", Some("bob/proj"));
    let sock = alice.dir.join("daemon.sock");
    let mut c = Client::connect(&sock).await.unwrap();
    let mut v = Vec::new();
    let (mut to_model, mut after_model) = (Vec::new(), Vec::new());
    let mut first = 0.0;
    for i in 0..31 {
        let t0 = Instant::now();
        let sent_at = now_ms();
        let r: m::SendResult = c
            .call(
                m::SEND,
                m::SendParams {
                    to: "bob".into(),
                    body: format!("bench push {i}"),
                    priority: Default::default(),
                    mesh: None,
                    session: None,
                    wait_ms: Some(0),
                    id: None,
                },
            )
            .await
            .unwrap();
        let st: m::MessageStatusResult = c
            .call(
                m::MESSAGE_STATUS,
                m::MessageStatusParams {
                    id: r.id.to_string(),
                    wait_for: Some(m::Stage::Read),
                    wait_ms: Some(30_000),
                },
            )
            .await
            .unwrap();
        assert_eq!(st.stage, m::Stage::Read, "push {i} not confirmed");
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        // The session's first turn also pays for Claude Code's own start of a session.
        if i == 0 {
            first = ms;
        } else {
            v.push(ms);
            let body = format!("bench push {i}");
            if let Some(r) = model
                .turns()
                .into_iter()
                .find(|r| r.body.to_string().contains(&body))
            {
                to_model.push((r.at - sent_at) as f64);
                after_model.push(ms - (r.at - sent_at) as f64);
            }
        }
    }
    println!("push -> read, first push of the session: {first:.1}ms");
    report("push -> read confirmed (idle Claude Code)", "ms", v);
    report("  of which: send -> model request", "ms", to_model);
    report(
        "  of which: model request -> sender hears read",
        "ms",
        after_model,
    );
    t.type_line("/exit");
    t.wait_for("claudemesh-test-exited", 30);
    drop(t);

    // A print-mode run ends: how soon its peers see it offline (it then leaves `peers`
    // after the grace, 60 s by default, 0 here).
    let mut v = Vec::new();
    for i in 0..5 {
        let out = claude::print(
            &work,
            &env,
            &["--output-format", "json", &format!("run {i}")],
        );
        let t0 = Instant::now();
        assert!(out.status.success());
        // Poll alice's list (a bench may poll): gone when no session of bob's is listed.
        loop {
            let r: m::PeersResult = c.call(m::PEERS, m::PeersParams::default()).await.unwrap();
            let listed = r.meshes[0]
                .peers
                .iter()
                .any(|p| p.member_name == "bob" && p.kind == "claude");
            if !listed {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "run {i} lingers in peers"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    report("session ended -> gone from its peers' list", "ms", v);
    // One hook, as Claude Code runs it (process start to exit), nothing to show.
    let session = SessionId::new().to_string();
    let input = format!(
        r#"{{"session_id":"{session}","transcript_path":"{}/t.jsonl","cwd":"{}","hook_event_name":"UserPromptSubmit","prompt":"hi"}}"#,
        work.display(),
        work.display()
    );
    let mut v = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let out = bob.run_stdin(&["hook", "user-prompt-submit"], &[], input.as_bytes());
        assert!(out.status.success());
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    report("`claudemesh hook user-prompt-submit` (process)", "ms", v);
}

/// A hosted session as the MCP shim holds it: opened with `session_open`, then a
/// `subscribe` connection whose pushes a task forwards as `(session, body, when)`.
struct Hosted {
    id: SessionId,
    task: tokio::task::JoinHandle<()>,
}

type Pushes = tokio::sync::mpsc::UnboundedSender<(SessionId, String, Instant)>;

async fn open_hosted(sock: &Path, key: &str, name: &str, pushes: Pushes) -> Hosted {
    let mut c = Client::connect(sock).await.unwrap();
    let open: m::SessionOpenResult = c
        .call(
            m::SESSION_OPEN,
            m::SessionOpenParams {
                client_key: key.into(),
                name: Some(name.into()),
                kind: Some("claude".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = open.sessions[0].session;
    let mut sub = Client::connect(sock).await.unwrap();
    let _: serde_json::Value = sub
        .call(
            m::SUBSCRIBE,
            m::SubscribeParams {
                session: id,
                push: true,
            },
        )
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        while let Ok(n) = sub.notification().await {
            if n.method == m::NOTIFY_MESSAGE
                && let Ok(msg) = serde_json::from_value::<m::InboxMessage>(n.params)
            {
                let _ = pushes.send((id, msg.body, Instant::now()));
            }
        }
    });
    Hosted { id, task }
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn threads(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

async fn send_from(c: &mut Client, from: SessionId, to: &str, body: String) -> m::SendResult {
    c.call(
        m::SEND,
        m::SendParams {
            to: to.into(),
            body,
            priority: claudemesh_schema::message::Priority::Now,
            mesh: None,
            session: Some(from),
            wait_ms: Some(0),
            id: None,
        },
    )
    .await
    .unwrap()
}

/// Sessions the way users run them: many hosted sessions on one daemon (opened as the
/// shim opens them), messages between them, and across two daemons.
async fn sessions(bin: &Path) {
    let root = tempfile::tempdir().unwrap();
    let (relay, mut nodes) = mesh(bin, root.path(), &["alice", "bob"], &[]);
    let bob_sock = nodes[1].dir.join("daemon.sock");
    let alice_sock = nodes[0].dir.join("daemon.sock");
    let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();

    // Connect 100 sessions.
    let mut hosted = Vec::new();
    let mut per = Vec::new();
    let t_all = Instant::now();
    for i in 0..100 {
        let t = Instant::now();
        hosted.push(
            open_hosted(
                &bob_sock,
                &format!("bench-{i}"),
                &format!("s{i}"),
                push_tx.clone(),
            )
            .await,
        );
        per.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t_all.elapsed();
    report("open + subscribe one session (of 100)", "ms", per);
    println!("connect 100 sessions: {:.0} ms", total.as_secs_f64() * 1e3);
    // They become visible to other daemons once announced (a second after they open).
    let mut a = Client::connect(&alice_sock).await.unwrap();
    loop {
        let r: m::PeersResult = a.call(m::PEERS, m::PeersParams::default()).await.unwrap();
        let seen = r.meshes[0]
            .peers
            .iter()
            .filter(|p| p.member_name == "bob" && p.kind == "claude" && p.online)
            .count();
        if seen == 100 {
            break;
        }
        assert!(
            t_all.elapsed() < Duration::from_secs(60),
            "only {seen} of 100 visible"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "100 sessions visible at the other daemon: {:.0} ms after the first opened",
        t_all.elapsed().as_secs_f64() * 1e3
    );

    let mut b = Client::connect(&bob_sock).await.unwrap();
    // 1:1 on one daemon.
    let (s0, s1) = (hosted[0].id, hosted[1].id);
    let to1 = s1.to_string();
    let mut v = Vec::new();
    for i in 0..1100 {
        let t = Instant::now();
        send_from(&mut b, s0, &to1, format!("one {i}")).await;
        loop {
            let (to, body, at) = push_rx.recv().await.unwrap();
            if to == s1 && body == format!("one {i}") {
                if i >= 100 {
                    v.push((at - t).as_secs_f64() * 1e3);
                }
                break;
            }
        }
    }
    report("1:1 session -> session, one daemon", "ms", v);
    // 1:1 across daemons (alice's CLI -> bob's session s1).
    let mut v = Vec::new();
    for i in 0..1100 {
        let t = Instant::now();
        let _: m::SendResult = a
            .call(
                m::SEND,
                m::SendParams {
                    to: to1.clone(),
                    body: format!("two {i}"),
                    priority: claudemesh_schema::message::Priority::Now,
                    mesh: None,
                    session: None,
                    wait_ms: Some(0),
                    id: None,
                },
            )
            .await
            .unwrap();
        loop {
            let (to, body, at) = push_rx.recv().await.unwrap();
            if to == s1 && body == format!("two {i}") {
                if i >= 100 {
                    v.push((at - t).as_secs_f64() * 1e3);
                }
                break;
            }
        }
    }
    report("1:1 daemon A -> relay -> session on B", "ms", v);

    // Throughput: 4 senders x 5,000, unpaced, to 4 receivers, one daemon. Each sender
    // keeps 16 sends in flight (over 16 connections, as a shim opens one per call); each
    // send is still acknowledged only once durable.
    let n_each = 5000usize;
    let lanes = 16usize;
    let t = Instant::now();
    let mut senders = Vec::new();
    for k in 0..4 {
        for lane in 0..lanes {
            let (from, to) = (hosted[10 + k].id, hosted[20 + k].id.to_string());
            let sock = bob_sock.clone();
            senders.push(tokio::spawn(async move {
                let mut c = Client::connect(&sock).await.unwrap();
                for i in (lane..n_each).step_by(lanes) {
                    send_from(&mut c, from, &to, format!("tp {k} {i}")).await;
                }
            }));
        }
    }
    let mut got = std::collections::HashSet::new();
    let mut dups = 0usize;
    while got.len() < 4 * n_each {
        match tokio::time::timeout(Duration::from_secs(60), push_rx.recv()).await {
            Ok(Some((_, body, _))) => {
                if body.starts_with("tp ") && !got.insert(body) {
                    dups += 1;
                }
            }
            _ => break,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    for s in senders {
        s.await.unwrap();
    }
    println!(
        "throughput 4 senders x {n_each} unpaced ({lanes} in flight each), one daemon: {} of {} delivered, {:.0} msg/s, {dups} duplicates, daemon threads {}",
        got.len(),
        4 * n_each,
        got.len() as f64 / secs,
        threads(nodes[1].pid())
    );

    // 100 sessions x 1,000 messages, each session sending to the next at 100 msg/s.
    let per_session = 1000usize;
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..100 {
        let (from, to) = (hosted[k].id, hosted[(k + 1) % 100].id.to_string());
        let sock = bob_sock.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&sock).await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..per_session {
                tick.tick().await;
                let ns = epoch.elapsed().as_nanos();
                send_from(&mut c, from, &to, format!("load {k} {i} {ns}")).await;
            }
        }));
    }
    let mut lat = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut peak_d, mut peak_r, mut peak_t) = (0u64, 0u64, 0u64);
    let mut last_sample = Instant::now();
    while seen.len() < 100 * per_session {
        match tokio::time::timeout(Duration::from_secs(60), push_rx.recv()).await {
            Ok(Some((_, body, at))) => {
                if let Some(rest) = body.strip_prefix("load ") {
                    let ns: u128 = rest.rsplit(' ').next().unwrap().parse().unwrap();
                    if seen.insert(rest.to_string()) {
                        lat.push(((at - epoch).as_nanos() - ns) as f64 / 1e6);
                    }
                }
            }
            _ => break,
        }
        if last_sample.elapsed() > Duration::from_millis(200) {
            last_sample = Instant::now();
            peak_d = peak_d.max(rss_kb(nodes[1].pid()));
            peak_r = peak_r.max(rss_kb(relay.pid()));
            peak_t = peak_t.max(threads(nodes[1].pid()));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "100 x {per_session} (100 msg/s each): {} of {} delivered; daemon peak RSS {} MB, relay {} MB, daemon threads {}",
        seen.len(),
        100 * per_session,
        peak_d / 1024,
        peak_r / 1024,
        peak_t
    );
    report("  latency send -> pushed", "ms", lat);

    // Durability across a daemon restart: what `send` acknowledged arrives once.
    let to = hosted[1].id.to_string();
    let mut ids = Vec::new();
    for i in 0..500 {
        let r: m::SendResult = a
            .call(
                m::SEND,
                m::SendParams {
                    to: to.clone(),
                    body: format!("durable {i}"),
                    priority: Default::default(),
                    mesh: None,
                    session: None,
                    wait_ms: Some(0),
                    id: None,
                },
            )
            .await
            .unwrap();
        ids.push(r.id);
        if i == 250 {
            nodes[1].kill();
            nodes[1].start();
        }
    }
    for h in &hosted {
        h.task.abort();
    }
    let mut b = Client::connect(&bob_sock).await.unwrap();
    let mut bodies = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bodies.len() < 500 && Instant::now() < deadline {
        let r: m::InboxResult = b
            .call(
                m::INBOX,
                m::InboxParams {
                    session: Some(hosted[1].id),
                    wait_ms: Some(2000),
                    limit: Some(1000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for msg in r.messages {
            if msg.body.starts_with("durable ") {
                assert!(bodies.insert(msg.body.clone()), "duplicate {}", msg.body);
            }
        }
    }
    println!(
        "durability: {} of 500 acknowledged sends arrived once across a kill -9 of the receiving daemon",
        bodies.len()
    );
    if bodies.len() < 500 {
        // Say where the missing ones are: the daemon's whole inbox, not only the session's.
        let missing: Vec<String> = (0..500)
            .map(|i| format!("durable {i}"))
            .filter(|b| !bodies.contains(b))
            .collect();
        let all: m::InboxResult = b
            .call(
                m::INBOX,
                m::InboxParams {
                    peek: true,
                    limit: Some(100_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for body in &missing {
            let found: Vec<String> = all
                .messages
                .iter()
                .filter(|m| &m.body == body)
                .map(|m| format!("session {} (for member: {})", m.session, m.for_member))
                .collect();
            let i: usize = body["durable ".len()..].parse().unwrap();
            let st: Result<m::MessageStatusResult, _> = a
                .call(
                    m::MESSAGE_STATUS,
                    m::MessageStatusParams {
                        id: ids[i].to_string(),
                        wait_for: None,
                        wait_ms: None,
                    },
                )
                .await;
            println!(
                "  missing {body:?}: elsewhere in bob's inbox: {found:?}; at the sender: {st:?}"
            );
        }
    }
}
