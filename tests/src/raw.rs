//! The relay protocol spoken raw, for protocol and attack tests: an in-process relay in a
//! temporary directory on loopback, members with their keys, and frame helpers. No daemon:
//! the test plays the client, frame by frame, the way an attacker would.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use bytes::Bytes;
use claudemesh_relay::client::connect_quic;
use claudemesh_relay::{Connection, Relay, RelayConfig, RelayHandle};
use claudemesh_schema::InviteId;
use claudemesh_schema::crypto::{BoxSecret, MemberKey, MemberSecret};
use claudemesh_schema::roster::{MeshGenesis, Role, Roster, RosterEntry, RosterOp};
use claudemesh_schema::wire::{
    self, ClientFrame, Envelope, ErrorCode, Hello, RelayFrame, Route, Seal,
};
use claudemesh_schema::{MeshId, MessageId, SessionId, now_ms};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The rosters of meshes the tests in this process created, as the relay should hold them
/// (entries are signed against their head: the roster is a hash chain).
static ROSTERS: Mutex<BTreeMap<MeshId, Roster>> = Mutex::new(BTreeMap::new());

/// Follow the roster of a mesh created with `g`, so [`entry`] can sign against its head.
pub fn track(g: &MeshGenesis) {
    ROSTERS
        .lock()
        .unwrap()
        .insert(g.mesh, Roster::from_genesis(g).unwrap());
}

/// A roster entry by `by` signed against the tracked head of `mesh` (see [`track`]) and
/// applied to it: the caller sends it and the relay is expected to take it.
pub fn entry(
    by: &MemberSecret,
    mesh: MeshId,
    member: MemberKey,
    role: Role,
    op: RosterOp,
    invite: Option<InviteId>,
) -> RosterEntry {
    let mut all = ROSTERS.lock().unwrap();
    let r = all.get_mut(&mesh).expect("the mesh's genesis was tracked");
    let e = RosterEntry::sign(by, &r.head(), mesh, member, role, op, now_ms(), invite);
    r.apply(&e).unwrap();
    e
}

/// A relay running in this process, with its data directory.
#[derive(Debug)]
pub struct Fixture {
    /// The running relay.
    pub relay: RelayHandle,
    /// Its configuration (for a restart on the same data).
    pub cfg: RelayConfig,
    /// Keeps the data directory.
    pub dir: tempfile::TempDir,
}

/// Start a relay on loopback with the defaults changed by `tweak`; its metrics listener
/// is always on (tests read counters from it).
pub async fn relay(tweak: impl FnOnce(&mut RelayConfig)) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("relay"),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..RelayConfig::default()
    };
    tweak(&mut cfg);
    let r = Relay::bind(cfg.clone()).await.unwrap();
    Fixture {
        relay: r.spawn(),
        cfg,
        dir,
    }
}

/// A relay node on the NATS cluster at `urls` (prefix `prefix`), with the certificate in
/// `data_dir` (copy one there for several nodes presenting the same).
pub async fn cluster_node(urls: &[String], prefix: &str, data_dir: &std::path::Path) -> Fixture {
    cluster_node_with(urls, prefix, data_dir, |_| {}).await
}

/// Like [`cluster_node`], its configuration changed by `tweak` first.
pub async fn cluster_node_with(
    urls: &[String],
    prefix: &str,
    data_dir: &std::path::Path,
    tweak: impl FnOnce(&mut RelayConfig),
) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        store: claudemesh_relay::config::StoreKind::Nats,
        nats_urls: urls.to_vec(),
        nats_prefix: prefix.into(),
        ..RelayConfig::default()
    };
    tweak(&mut cfg);
    let r = Relay::bind_cluster(cfg.clone()).await.unwrap();
    Fixture {
        relay: r.spawn(),
        cfg,
        dir,
    }
}

impl Fixture {
    /// Stop the relay gracefully and start it again on the same data (new ports).
    pub async fn restart(self) -> Fixture {
        let Fixture { relay, cfg, dir } = self;
        relay.shutdown().await;
        let r = Relay::bind(cfg.clone()).await.unwrap();
        Fixture {
            relay: r.spawn(),
            cfg,
            dir,
        }
    }

    /// One metric's value from `/metrics` (the sum over its labels, if it has some, or
    /// the one line matching `name{labels}` when `name` includes them).
    pub async fn metric(&self, name: &str) -> u64 {
        let body = self.get_metrics("/metrics").await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// A plain-HTTP GET on the metrics listener; the body.
    pub async fn get_metrics(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = self.relay.metrics_addr().expect("metrics listener");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }
}

/// A QUIC connection to the relay, before hello.
pub async fn quic(f: &Fixture) -> Connection {
    connect_quic(
        f.relay.addr(),
        Some(f.relay.fingerprint()),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

/// Send one frame.
pub async fn send(c: &mut Connection, f: &ClientFrame) {
    c.writer
        .send(Bytes::from(wire::encode(f).unwrap()))
        .await
        .unwrap();
}

/// The next frame (within 10 s).
pub async fn recv(c: &mut Connection) -> RelayFrame {
    let b = tokio::time::timeout(Duration::from_secs(10), c.reader.next())
        .await
        .expect("relay answered in time")
        .expect("connection open")
        .expect("frame readable");
    wire::decode(&b).unwrap()
}

/// Read frames until one matches.
pub async fn until<T>(c: &mut Connection, mut pick: impl FnMut(RelayFrame) -> Option<T>) -> T {
    loop {
        if let Some(t) = pick(recv(c).await) {
            return t;
        }
    }
}

/// The next frame is a fatal error with `code` and a message.
pub async fn expect_error(c: &mut Connection, code: ErrorCode) {
    match recv(c).await {
        RelayFrame::Error {
            code: got,
            fatal,
            message,
            ..
        } => {
            assert_eq!(got, code, "{message}");
            assert!(fatal, "{code} closes the connection");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Read until the relay closes the connection (or 30 s pass: then it panics); the frames
/// read on the way.
pub async fn until_closed(c: &mut Connection) -> Vec<RelayFrame> {
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(b)) = c.reader.next().await {
            if let Ok(f) = wire::decode::<RelayFrame>(&b) {
                seen.push(f);
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the relay did not close the connection");
    seen
}

/// A member: its key, one session and that session's box key.
#[derive(Debug)]
pub struct Member {
    /// The member key.
    pub key: MemberSecret,
    /// Its session.
    pub session: SessionId,
    /// The session's box key.
    pub session_key: BoxSecret,
}

impl Default for Member {
    fn default() -> Self {
        Self::new()
    }
}

impl Member {
    /// Fresh keys.
    pub fn new() -> Self {
        Self {
            key: MemberSecret::generate(),
            session: SessionId::new(),
            session_key: BoxSecret::generate(),
        }
    }
    /// The public key.
    pub fn pk(&self) -> MemberKey {
        self.key.public()
    }
    /// A signed hello for `mesh` at `ts`.
    pub fn hello(&self, mesh: MeshId, ts: i64) -> Hello {
        Hello::sign(
            &self.key,
            mesh,
            self.session,
            self.session_key.public(),
            ts,
            "test",
        )
    }
    /// An (opaque) envelope from this member to `to`, under `id`.
    pub fn envelope(&self, id: MessageId, to: &Member) -> Envelope {
        Envelope {
            epoch: 0,
            id,
            from: self.session,
            from_member: self.pk(),
            to: Route::Member { member: to.pk() },
            seal: Seal::Box,
            ct: vec![7; 40],
        }
    }
}

/// Say hello as `m` on a new connection and read up to `ready`.
pub async fn link(f: &Fixture, mesh: MeshId, m: &Member) -> Connection {
    let mut c = quic(f).await;
    send(&mut c, &ClientFrame::Hello(m.hello(mesh, now_ms()))).await;
    until(&mut c, |f| {
        matches!(f, RelayFrame::Ready { .. }).then_some(())
    })
    .await;
    c
}

/// A mesh with an owner link and a member link, both past `ready`.
pub async fn mesh(f: &Fixture) -> (MeshId, Member, Connection, Member, Connection) {
    let owner = Member::new();
    let mesh = MeshId::new();
    let mut a = quic(f).await;
    let genesis = MeshGenesis::sign(&owner.key, mesh, now_ms());
    track(&genesis);
    send(
        &mut a,
        &ClientFrame::CreateMesh {
            rid: 1,
            genesis,
            token: None,
        },
    )
    .await;
    assert_eq!(recv(&mut a).await, RelayFrame::Ok { rid: 1 });
    send(&mut a, &ClientFrame::Hello(owner.hello(mesh, now_ms()))).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ready { .. }).then_some(())
    })
    .await;
    let member = Member::new();
    add_member(&mut a, &owner, mesh, &member, 2).await;
    let b = link(f, mesh, &member).await;
    (mesh, owner, a, member, b)
}

/// The owner (linked on `a`) adds `m` to the roster.
pub async fn add_member(a: &mut Connection, owner: &Member, mesh: MeshId, m: &Member, rid: u64) {
    let entry = entry(&owner.key, mesh, m.pk(), Role::Member, RosterOp::Add, None);
    send(a, &ClientFrame::Roster { rid, entry }).await;
    until(a, |f| {
        matches!(f, RelayFrame::Ok { rid: r } if r == rid).then_some(())
    })
    .await;
}

/// The owner sends the member an envelope; the member receives it. Returns how long the
/// owner waited for `relayed`.
pub async fn still_routes(
    owner: &Member,
    a: &mut Connection,
    member: &Member,
    b: &mut Connection,
) -> Duration {
    let id = MessageId::new();
    let t = std::time::Instant::now();
    send(a, &ClientFrame::Send(owner.envelope(id, member))).await;
    until(a, |f| {
        matches!(f, RelayFrame::Relayed { id: x, .. } if x == id).then_some(())
    })
    .await;
    let waited = t.elapsed();
    until(b, |f| {
        matches!(f, RelayFrame::Deliver { env, .. } if env.id == id).then_some(())
    })
    .await;
    waited
}

/// Publish an invite by `owner` (linked on `a`) to `mesh`.
pub async fn publish(
    a: &mut Connection,
    owner: &Member,
    mesh: MeshId,
    uses: u32,
    approve: bool,
    rid: u64,
) -> claudemesh_schema::roster::InviteCap {
    use claudemesh_schema::roster::{InviteCap, Role};
    let cap = InviteCap::sign(
        &owner.key,
        InviteId::new(),
        mesh,
        Role::Member,
        uses,
        now_ms() + 3_600_000,
        approve,
        now_ms(),
    );
    send(
        a,
        &ClientFrame::InvitePublish {
            rid,
            cap: cap.clone(),
        },
    )
    .await;
    until(a, |f| {
        matches!(f, RelayFrame::Ok { rid: r } if r == rid).then_some(())
    })
    .await;
    cap
}

/// A durable claim on `invite` by a fresh key (its proof is garbage: only an admin's
/// daemon could check it), with that key.
pub fn durable_claim(invite: InviteId) -> (wire::ClaimRequest, MemberSecret) {
    let key = MemberSecret::generate();
    let req = wire::ClaimRequest {
        invite,
        member: key.public(),
        box_key: BoxSecret::generate().public(),
        at: now_ms(),
        proof: [0; 32],
        note: Vec::new(),
        durable: true,
    };
    (req, key)
}

/// Send `req` on a new connection and return the first answer about it.
pub async fn claim_once(f: &Fixture, req: &wire::ClaimRequest) -> RelayFrame {
    let mut c = quic(f).await;
    send(&mut c, &ClientFrame::Claim(req.clone())).await;
    until(&mut c, |f| match f {
        RelayFrame::ClaimWaiting { .. } | RelayFrame::ClaimResult(_) | RelayFrame::Error { .. } => {
            Some(f)
        }
        _ => None,
    })
    .await
}

/// The answer to a request that expects one (`rid`): `None` for `ok`, else the error code.
pub async fn answer(c: &mut Connection, rid: u64) -> Option<ErrorCode> {
    until(c, |f| match f {
        RelayFrame::Ok { rid: r } if r == rid => Some(None),
        RelayFrame::Error {
            rid: Some(r), code, ..
        } if r == rid => Some(Some(code)),
        _ => None,
    })
    .await
}

/// The answer to envelope `id`: `None` once relayed, or the code it was refused with.
pub async fn refusal_of(c: &mut Connection, id: MessageId) -> Option<ErrorCode> {
    until(c, |f| match f {
        RelayFrame::Relayed { id: x, .. } if x == id => Some(None),
        RelayFrame::Refused { id: x, code, .. } if x == id => Some(Some(code)),
        _ => None,
    })
    .await
}

/// This process's resident memory, bytes (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
