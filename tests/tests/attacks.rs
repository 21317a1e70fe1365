//! Attacks on the relay, performed. Each test runs one against a real relay on loopback
//! (in this process, so its memory is this process's) and asserts that the relay bounds
//! what the attacker gets, keeps serving a legitimate pair, and loses nothing it
//! acknowledged. Waits are for events (a frame, a close, a counter reaching a value),
//! each bounded.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use claudemesh_relay::client::connect_ws;
use claudemesh_schema::roster::MeshGenesis;
use claudemesh_schema::wire::{self, ClaimRequest, ClientFrame, ErrorCode, RelayFrame};
use claudemesh_schema::{MeshId, MessageId, now_ms};
use claudemesh_tests::raw::{
    Fixture, Member, add_member, answer, claim_once, durable_claim, expect_error, link, mesh,
    publish, quic, recv, refusal_of, relay, rss_bytes, send, still_routes, until, until_closed,
};
use std::time::Duration;
use tokio::io::AsyncReadExt as _;

/// How long a daemon waits for `relayed` before it answers `queued`.
const DAEMON_WAIT: Duration = Duration::from_secs(3);

/// Wait until a counter reaches `at_least` (polled; bounded at 60 s).
async fn counter_reaches(f: &Fixture, name: &str, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = f.metric(name).await;
        if v >= at_least {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {v}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until a gauge falls to `at_most`.
async fn gauge_falls_to(f: &Fixture, name: &str, at_most: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = f.metric(name).await;
        if v <= at_most {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` TCP connections to the relay from another loopback address (Linux routes all of
/// 127/8 to loopback), so per-address limits see a second host.
async fn connect_from(f: &Fixture, from: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        out.push(s.connect(f.relay.addr()).await.unwrap());
    }
    out
}

fn ping(n: u64) -> Bytes {
    Bytes::from(wire::encode(&ClientFrame::Ping { n }).unwrap())
}

const MIB: u64 = 1 << 20;

/// This process (the relay's) grew by less than `bound` since `before` (where measurable).
fn grew_less_than(before: Option<u64>, bound: u64) {
    if let (Some(b0), Some(b1)) = (before, rss_bytes()) {
        assert!(
            b1.saturating_sub(b0) < bound,
            "memory grew by {} MiB",
            b1.saturating_sub(b0) / MIB
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_before_hello_is_cut_off_after_a_few_frames() {
    let f = relay(|_| {}).await;
    let (_mesh, owner, mut a, member, mut b) = mesh(&f).await;
    let before = rss_bytes();
    let mut floods = Vec::new();
    for _ in 0..6 {
        let (mut reader, mut writer, guard) = quic(&f).await.into_parts();
        // Write as fast as the transport takes it and never read while writing.
        let flood = tokio::spawn(async move {
            for n in 0..200_000u64 {
                if writer.feed(ping(n)).await.is_err() {
                    break;
                }
                if n % 1024 == 0 && writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.flush().await;
            writer
        });
        floods.push((flood, guard));
        // The relay answers a few pings, then closes with a clear error.
        let mut pongs = 0;
        let mut refused = None;
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(bytes)) = reader.next().await {
                match wire::decode::<RelayFrame>(&bytes).unwrap() {
                    RelayFrame::Pong { .. } => pongs += 1,
                    RelayFrame::Error { code, fatal, .. } => refused = Some((code, fatal)),
                    _ => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the flooding connection was not closed");
        assert!(pongs <= f.cfg.preauth_frames, "{pongs} pongs before hello");
        assert_eq!(refused, Some((ErrorCode::RateLimited, true)));
    }
    for (flood, _guard) in floods {
        let _ = flood.await;
    }
    grew_less_than(before, 64 * MIB);
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_pings_without_reading_is_paused_then_closed() {
    let f = relay(|c| c.idle_timeout_secs = 2).await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    let attacker = Member::new();
    add_member(&mut a, &owner, mesh_id, &attacker, 3).await;
    let (_reader, mut writer, _guard) = link(&f, mesh_id, &attacker).await.into_parts();
    let before = rss_bytes();
    let flood = tokio::spawn(async move {
        for n in 0..300_000u64 {
            if writer.feed(ping(n)).await.is_err() {
                break;
            }
            if n % 1024 == 0 && writer.flush().await.is_err() {
                break;
            }
        }
    });
    // Meanwhile the legitimate pair is served as usual, each send promptly `relayed`,
    // until the relay has stopped reading the attacker (its answers piled up) and, once
    // the idle limit passed without it reading, closed it. (The pair's member pings, so
    // the 2 s idle limit spares it.)
    let closed = "claudemesh_relay_connections_closed_total{reason=\"not_reading\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while f.metric(closed).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the attacker was never closed"
        );
        assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
        send(&mut b, &ClientFrame::Ping { n: rounds }).await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.abort();
    grew_less_than(before, 64 * MIB);
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_dribbling_connections_are_closed_at_the_hello_deadline() {
    let f = relay(|c| c.hello_timeout_secs = 2).await;
    let (_mesh, owner, mut a, member, mut b) = mesh(&f).await;
    let addr = f.relay.addr();
    // TCP connections that never start TLS, and ones that dribble a TLS record header.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut dribblers = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        dribblers.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for byte in [0x16u8, 0x03, 0x01, 0x00] {
                if s.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await
            .is_ok()
        }));
    }
    // WebSocket clients past TLS and the upgrade that only ping (fewer pings than the
    // pre-hello budget), and QUIC connections that never open a stream.
    let mut pingers = Vec::new();
    for _ in 0..5 {
        let c = connect_ws(addr, Some(f.relay.fingerprint()), Duration::from_secs(5))
            .await
            .unwrap();
        let (mut reader, mut writer, _g) = c.into_parts();
        pingers.push(tokio::spawn(async move {
            let pinging = tokio::spawn(async move {
                for n in 0..100 {
                    if writer.send(ping(n)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            let closed = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(_)) = reader.next().await {}
            })
            .await
            .is_ok();
            pinging.abort();
            closed
        }));
    }
    let mut quiet_quic = Vec::new();
    for _ in 0..5 {
        quiet_quic.push(quic(&f).await);
    }
    for mut s in silent {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0) | Err(_))),
            "a silent TCP connection stayed open"
        );
    }
    for d in dribblers {
        assert!(d.await.unwrap(), "a dribbling connection stayed open");
    }
    for p in pingers {
        assert!(
            p.await.unwrap(),
            "a pinging WebSocket connection stayed open"
        );
    }
    for mut c in quiet_quic {
        until_closed(&mut c).await;
    }
    gauge_falls_to(&f, "claudemesh_relay_preauth_connections", 0).await;
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_one_address_beyond_its_share_and_not_others() {
    let f = relay(|c| {
        c.max_preauth_per_ip = 8;
        c.hello_timeout_secs = 60;
    })
    .await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    // 40 connections from another loopback address hold their place before hello.
    let mut held = connect_from(&f, "127.0.0.2", 40).await;
    let refused = counter_reaches(&f, "claudemesh_relay_connections_refused_total", 32).await;
    assert_eq!(refused, 32, "8 are admitted before hello, the rest refused");
    // The refused ones were closed at once; their address cannot open more.
    let mut closed = 0;
    for s in &mut held {
        let mut buf = [0u8; 8];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 32);
    // Another address (the legitimate one) still connects and links.
    let late = Member::new();
    add_member(&mut a, &owner, mesh_id, &late, 9).await;
    let _late_link = link(&f, mesh_id, &late).await;
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_flood_of_unknown_ids_never_reaches_the_store_or_delays_sends() {
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    let attacker = Member::new();
    add_member(&mut a, &owner, mesh_id, &attacker, 3).await;
    let (mut att_reader, mut att_writer, _guard) = link(&f, mesh_id, &attacker).await.into_parts();
    let frames = 200u64;
    let per_frame = 4096;
    let flood = tokio::spawn(async move {
        for _ in 0..frames {
            let ids = (0..per_frame).map(|_| MessageId::new()).collect();
            let b = Bytes::from(
                wire::encode(&ClientFrame::Ack {
                    ids,
                    proofs: Vec::new(),
                })
                .unwrap(),
            );
            att_writer.send(b).await.unwrap();
        }
        // One frame over the cap is refused, not half-applied.
        let ids = (0..5000).map(|_| MessageId::new()).collect();
        let b = Bytes::from(
            wire::encode(&ClientFrame::Ack {
                ids,
                proofs: Vec::new(),
            })
            .unwrap(),
        );
        att_writer.send(b).await.unwrap();
        att_writer
    });
    let refused = tokio::spawn(async move {
        loop {
            let b = att_reader.next().await.unwrap().unwrap();
            if let RelayFrame::Error { code, fatal, .. } = wire::decode(&b).unwrap() {
                return (code, fatal);
            }
        }
    });
    // Throughout, the pair's sends are `relayed` within a daemon's wait, and an ack the
    // member really owes still produces a receipt.
    while !flood.is_finished() {
        assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    }
    let _writer = flood.await.unwrap();
    assert_eq!(
        refused.await.unwrap(),
        (ErrorCode::BadFrame, false),
        "an oversized ack is refused without closing the link"
    );
    let dropped = counter_reaches(
        &f,
        "claudemesh_relay_acks_dropped_total",
        frames * per_frame,
    )
    .await;
    assert_eq!(
        dropped,
        frames * per_frame,
        "every unknown id stopped before the store"
    );
    let id = MessageId::new();
    send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
    until(&mut b, |f| {
        matches!(f, RelayFrame::Deliver { env, .. } if env.id == id).then_some(())
    })
    .await;
    send(
        &mut b,
        &ClientFrame::Ack {
            ids: vec![id],
            proofs: Vec::new(),
        },
    )
    .await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Receipt { id: x, .. } if x == id).then_some(())
    })
    .await;
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_message_id_is_refused_to_its_second_sender_even_after_a_restart() {
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    // The member uses an id first (as one predicting another's id would).
    let id = MessageId::new();
    send(&mut b, &ClientFrame::Send(member.envelope(id, &owner))).await;
    assert_eq!(refusal_of(&mut b, id).await, None);
    // The owner's envelope under that id is refused, honestly: not `relayed`.
    send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
    assert_eq!(refusal_of(&mut a, id).await, Some(ErrorCode::IdTaken));
    // So is another mesh's sender.
    let other = Member::new();
    let other_mesh = MeshId::new();
    let mut c = quic(&f).await;
    send(
        &mut c,
        &ClientFrame::CreateMesh {
            rid: 1,
            genesis: {
                let g = MeshGenesis::sign(&other.key, other_mesh, now_ms());
                claudemesh_tests::raw::track(&g);
                g
            },
            token: None,
        },
    )
    .await;
    assert_eq!(recv(&mut c).await, RelayFrame::Ok { rid: 1 });
    send(
        &mut c,
        &ClientFrame::Hello(other.hello(other_mesh, now_ms())),
    )
    .await;
    until(&mut c, |f| {
        matches!(f, RelayFrame::Ready { .. }).then_some(())
    })
    .await;
    let peer = Member::new();
    add_member(&mut c, &other, other_mesh, &peer, 2).await;
    send(&mut c, &ClientFrame::Send(other.envelope(id, &peer))).await;
    assert_eq!(refusal_of(&mut c, id).await, Some(ErrorCode::IdTaken));
    // After a restart (no memory of recent ids) the store still knows whose it is.
    drop((a, b, c));
    let f = f.restart().await;
    // The first sender's message was kept: the owner's mailbox still has it.
    let mut a = link(&f, mesh_id, &owner).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Deliver { env, .. } if env.id == id && env.from_member == member.pk())
            .then_some(())
    })
    .await;
    send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
    assert_eq!(refusal_of(&mut a, id).await, Some(ErrorCode::IdTaken));
    // The first sender's resend is still its own duplicate.
    let mut b = link(&f, mesh_id, &member).await;
    send(&mut b, &ClientFrame::Send(member.envelope(id, &owner))).await;
    assert_eq!(refusal_of(&mut b, id).await, None);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_refill_a_members_send_budget() {
    let f = relay(|c| {
        c.member_rate = 0.01;
        c.member_burst = 3.0;
    })
    .await;
    let (mesh_id, owner, a, member, _b) = mesh(&f).await;
    let mut a = a;
    for _ in 0..3 {
        let id = MessageId::new();
        send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
        assert_eq!(refusal_of(&mut a, id).await, None);
    }
    drop(a);
    let mut a = link(&f, mesh_id, &owner).await;
    let id = MessageId::new();
    send(&mut a, &ClientFrame::Send(owner.envelope(id, &member))).await;
    let (code, retry) = until(&mut a, |f| match f {
        RelayFrame::Refused {
            id: x,
            code,
            retry_ms,
            ..
        } if x == id => Some((code, retry_ms)),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(retry.is_some_and(|ms| ms > 1000), "{retry:?}");
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_replayed_after_a_relay_restart_is_refused() {
    let f = relay(|_| {}).await;
    let (mesh_id, _owner, _a, member, b) = mesh(&f).await;
    drop(b);
    // A hello captured on the wire, used once.
    let captured = member.hello(mesh_id, now_ms());
    let mut c = quic(&f).await;
    send(&mut c, &ClientFrame::Hello(captured.clone())).await;
    until(&mut c, |f| {
        matches!(f, RelayFrame::Ready { .. }).then_some(())
    })
    .await;
    drop(c);
    let f = f.restart().await;
    let mut replay = quic(&f).await;
    send(&mut replay, &ClientFrame::Hello(captured)).await;
    expect_error(&mut replay, ErrorCode::ReplayedHello).await;
    // A fresh hello from the member is welcome.
    let _ok = link(&f, mesh_id, &member).await;
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_op_log_quota_refuses_writes_honestly_and_keeps_the_mesh_working() {
    use claudemesh_schema::OpId;
    use claudemesh_schema::op::OpEnvelope;
    let f = relay(|c| c.mesh_quota_op_bytes = 16 * 1024).await;
    let (_mesh, owner, mut a, member, mut b) = mesh(&f).await;
    let mut acked = 0;
    let code = loop {
        let id = OpId::new();
        let env = OpEnvelope {
            epoch: 0,
            id,
            author: owner.pk(),
            ct: vec![5; 1024],
            roster: None,
        };
        send(&mut a, &ClientFrame::Op(env)).await;
        let r = until(&mut a, |f| match f {
            RelayFrame::OpAck { id: x, .. } if x == id => Some(None),
            RelayFrame::OpRefused {
                id: x,
                code,
                retry_ms,
                ..
            } if x == id => Some(Some((code, retry_ms))),
            _ => None,
        })
        .await;
        match r {
            None => acked += 1,
            Some(refusal) => break refusal,
        }
        assert!(acked < 100, "the op quota never applied");
    };
    assert!(acked >= 5, "{acked} ops fit in 16 KiB of 1 KiB ops");
    assert_eq!(code.0, ErrorCode::QuotaExceeded);
    assert!(code.1.is_some(), "a retry hint: the writer keeps its op");
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

/// `GET path` over TLS on the relay's public port (pinned to its certificate); the body.
async fn public_get(f: &Fixture, path: &str) -> String {
    use tokio::io::AsyncWriteExt as _;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let cfg =
        claudemesh_relay::tls::client_config(Some(f.relay.fingerprint()), seen, &[b"http/1.1"])
            .unwrap();
    let tcp = tokio::net::TcpStream::connect(f.relay.addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_detail_lives_behind_the_metrics_listener() {
    let f = relay(|_| {}).await;
    let (_mesh, _owner, _a, _member, _b) = mesh(&f).await;
    // The public port says the relay is up and which it is, nothing about its activity.
    let public: serde_json::Value = serde_json::from_str(&public_get(&f, "/health").await).unwrap();
    assert_eq!(public["status"], "ok");
    assert!(public["fingerprint"].is_string());
    for count in [
        "meshes",
        "links",
        "connections",
        "envelopes_routed",
        "queued_bytes",
    ] {
        assert!(
            public.get(count).is_none(),
            "public /health shows {count}: {public}"
        );
    }
    let detail: serde_json::Value = serde_json::from_str(&f.get_metrics("/health").await).unwrap();
    assert_eq!(detail["meshes"], 1);
    assert_eq!(detail["status"], "ok");
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_from_one_address_is_refused_before_any_handshake() {
    let f = relay(|c| {
        c.accept_rate = 0.5;
        c.accept_burst = 5.0;
    })
    .await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    // Ten new connections in a row from another address: five fit the burst.
    let _held = connect_from(&f, "127.0.0.3", 10).await;
    let refused = counter_reaches(&f, "claudemesh_relay_connections_refused_total", 5).await;
    assert_eq!(refused, 5);
    // The pair's address has its own budget (its two links used two of five).
    let late = Member::new();
    add_member(&mut a, &owner, mesh_id, &late, 9).await;
    let _late_link = link(&f, mesh_id, &late).await;
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_id_after_a_restart_is_never_forwarded() {
    use claudemesh_schema::wire::{Envelope, Route};
    let f = relay(|_| {}).await;
    let (mesh_id, alice, mut a, bob, b) = mesh(&f).await;
    let mallory = Member::new();
    add_member(&mut a, &alice, mesh_id, &mallory, 3).await;
    let mut m = link(&f, mesh_id, &mallory).await;
    drop(b); // Bob is offline.
    // Alice writes to everyone; Mallory, a recipient, learns the id.
    let x = MessageId::new();
    let env = Envelope {
        epoch: 0,
        to: Route::All,
        ..alice.envelope(x, &bob)
    };
    send(&mut a, &ClientFrame::Send(env)).await;
    assert_eq!(refusal_of(&mut a, x).await, None);
    until(&mut m, |f| {
        matches!(f, RelayFrame::Deliver { env, .. } if env.id == x).then_some(())
    })
    .await;
    drop((a, m));
    // The relay restarts: its memory of recent ids is gone.
    let f = f.restart().await;
    let mut b = link(&f, mesh_id, &bob).await;
    let mut m = link(&f, mesh_id, &mallory).await;
    send(&mut m, &ClientFrame::Send(mallory.envelope(x, &bob))).await;
    assert_eq!(refusal_of(&mut m, x).await, Some(ErrorCode::IdTaken));
    // Bob gets Alice's message from his mailbox, and never Mallory's under its id.
    send(&mut b, &ClientFrame::Ping { n: 77 }).await;
    let mut from = Vec::new();
    until(&mut b, |f| match f {
        RelayFrame::Deliver { env, .. } if env.id == x => {
            from.push(env.from_member);
            None
        }
        RelayFrame::Pong { n: 77, .. } if !from.is_empty() => Some(()),
        _ => None,
    })
    .await;
    assert!(
        from.iter().all(|k| *k == alice.pk()),
        "a squatter's copy was forwarded"
    );
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimant_stays_under_the_pre_hello_budget_and_caps() {
    use ClaimRequest;
    use claudemesh_schema::crypto::{BoxSecret, MemberSecret};
    use claudemesh_schema::roster::{InviteCap, Role};
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, _member, _b) = mesh(&f).await;
    let invite = claudemesh_schema::InviteId::new();
    let cap = InviteCap::sign(
        &owner.key,
        invite,
        mesh_id,
        Role::Member,
        1,
        now_ms() + 3_600_000,
        true,
        now_ms(),
    );
    send(&mut a, &ClientFrame::InvitePublish { rid: 77, cap }).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ok { rid: 77 }).then_some(())
    })
    .await;
    let claim = || {
        ClientFrame::Claim(ClaimRequest {
            invite,
            member: MemberSecret::generate().public(),
            box_key: BoxSecret::generate().public(),
            at: now_ms(),
            proof: [0; 32], // garbage: only an admin's daemon can check it
            note: Vec::new(),
            durable: false,
        })
    };
    // A claimant (the relay cannot check its proof) is still counted before hello, and
    // its pings still spend the pre-hello budget.
    let mut c = quic(&f).await;
    send(&mut c, &claim()).await;
    until(&mut c, |f| {
        matches!(f, RelayFrame::ClaimWaiting { .. }).then_some(())
    })
    .await;
    assert_eq!(f.metric("claudemesh_relay_preauth_connections").await, 1);
    for n in 0..50 {
        if c.writer.send(ping(n)).await.is_err() {
            break;
        }
    }
    let seen = until_closed(&mut c).await;
    let pongs = seen
        .iter()
        .filter(|f| matches!(f, RelayFrame::Pong { .. }))
        .count();
    assert!(
        pongs < f.cfg.preauth_frames as usize,
        "{pongs} pongs to a claimant"
    );
    // And one invite holds at most a few waiting claims.
    let mut codes = Vec::new();
    let mut held = Vec::new();
    for _ in 0..12 {
        let mut c = quic(&f).await;
        send(&mut c, &claim()).await;
        match recv(&mut c).await {
            RelayFrame::ClaimWaiting { .. } => held.push(c),
            RelayFrame::Error { code, .. } => codes.push(code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held.len(), 8);
    assert_eq!(codes, vec![ErrorCode::RateLimited; 4]);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_naming_too_many_sessions_is_refused_before_it_can_poison_a_mailbox() {
    use claudemesh_schema::SessionId;
    use claudemesh_schema::wire::{Envelope, Route};
    let f = relay(|_| {}).await;
    let (_mesh, owner, mut a, member, mut b) = mesh(&f).await;
    // A route padded with made-up sessions up to the frame limit would have made the
    // deliver frame larger than any frame, failing the recipient's link at every replay.
    let padded = |n: usize| {
        let mut sessions = vec![member.session];
        sessions.extend((1..n).map(|_| SessionId::new()));
        sessions
    };
    let too_many = MessageId::new();
    let env = Envelope {
        epoch: 0,
        to: Route::Sessions {
            sessions: padded(1025),
        },
        ..owner.envelope(too_many, &member)
    };
    send(&mut a, &ClientFrame::Send(env)).await;
    assert_eq!(
        refusal_of(&mut a, too_many).await,
        Some(ErrorCode::BadFrame)
    );
    // At the cap the route is taken (here refused only because the raw member announced no
    // session), not refused for its length.
    let at_cap = MessageId::new();
    let env = Envelope {
        epoch: 0,
        to: Route::Sessions {
            sessions: padded(1024),
        },
        ..owner.envelope(at_cap, &member)
    };
    send(&mut a, &ClientFrame::Send(env)).await;
    assert_eq!(
        refusal_of(&mut a, at_cap).await,
        Some(ErrorCode::UnknownRecipient)
    );
    assert!(still_routes(&owner, &mut a, &member, &mut b).await < DAEMON_WAIT);
    f.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_claiming_roster_entries_the_relay_does_not_have_is_refused() {
    use claudemesh_schema::OpId;
    use claudemesh_schema::op::OpEnvelope;
    let f = relay(|_| {}).await;
    // One roster entry: the member's admission.
    let (_mesh, owner, mut a, _member, _b) = mesh(&f).await;
    // A claim beyond it would hold up every daemon's fold, waiting for entries that never
    // come; a claim within it is sequenced.
    for (claim, refused) in [(2, true), (1, false)] {
        let id = OpId::new();
        let env = OpEnvelope {
            epoch: 0,
            id,
            author: owner.pk(),
            ct: vec![5; 64],
            roster: Some(claim),
        };
        send(&mut a, &ClientFrame::Op(env)).await;
        let got = until(&mut a, |f| match f {
            RelayFrame::OpAck { id: x, .. } if x == id => Some(None),
            RelayFrame::OpRefused { id: x, code, .. } if x == id => Some(Some(code)),
            _ => None,
        })
        .await;
        assert_eq!(
            got,
            refused.then_some(ErrorCode::NotAuthorized),
            "claim {claim}"
        );
    }
}

/// A claim kept at the relay while no admin is online: a member that is not an admin can
/// neither admit nor refuse it, it survives relay restarts before and after the admin's
/// answer, its claimant gets that one answer however often it comes back with the same
/// request (spending the invite's use once), a second decision is refused, and once the
/// new member said hello the request is just a member's claim (refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_claim_is_decided_only_by_an_admin_and_replayed_it_spends_nothing() {
    use claudemesh_schema::roster::{Role, Roster, RosterEntry, RosterOp};
    use claudemesh_schema::wire::{ClaimDecision, ClaimOutcome};
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, member, mut b) = mesh(&f).await;
    let cap = publish(&mut a, &owner, mesh_id, 2, false, 30).await;
    let (req, key) = durable_claim(cap.id);
    let RelayFrame::ClaimWaiting {
        claim,
        kept_until: Some(_),
        ..
    } = claim_once(&f, &req).await
    else {
        panic!("the claim was not kept")
    };
    until(&mut a, |f| {
        matches!(f, RelayFrame::ClaimPending { claim: c, .. } if c == claim).then_some(())
    })
    .await;
    // The member (not an admin) tries to decide it, either way.
    let g = MeshGenesis::sign(&member.key, mesh_id, now_ms());
    let forged = RosterEntry::sign(
        &member.key,
        &Roster::from_genesis(&g).unwrap().head(),
        mesh_id,
        req.member,
        Role::Member,
        RosterOp::Add,
        now_ms(),
        Some(cap.id),
    );
    let decisions = [
        ClaimDecision::Accept {
            claim,
            entry: forged,
            sealed: vec![1; 48],
            mac: [2; 32],
        },
        ClaimDecision::Refuse {
            claim,
            reason: "no".into(),
        },
    ];
    for (i, decision) in decisions.into_iter().enumerate() {
        let rid = 40 + i as u64;
        send(&mut b, &ClientFrame::ClaimDecision { rid, decision }).await;
        assert_eq!(answer(&mut b, rid).await, Some(ErrorCode::NotAuthorized));
    }
    drop((a, b));
    let f = f.restart().await;
    let mut a = link(&f, mesh_id, &owner).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::ClaimPending { claim: c, .. } if c == claim).then_some(())
    })
    .await;
    let admit = |claim, member| ClaimDecision::Accept {
        claim,
        entry: claudemesh_tests::raw::entry(
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
    send(
        &mut a,
        &ClientFrame::ClaimDecision {
            rid: 42,
            decision: admit(claim, req.member),
        },
    )
    .await;
    assert_eq!(answer(&mut a, 42).await, None);
    drop(a);
    let f = f.restart().await;
    for _ in 0..2 {
        match claim_once(&f, &req).await {
            RelayFrame::ClaimResult(ClaimOutcome::Accepted { claim: c, .. }) => {
                assert_eq!(c, claim)
            }
            other => panic!("the kept answer was not given: {other:?}"),
        }
    }
    let mut a = link(&f, mesh_id, &owner).await;
    let again = ClaimDecision::Refuse {
        claim,
        reason: "changed my mind".into(),
    };
    send(
        &mut a,
        &ClientFrame::ClaimDecision {
            rid: 43,
            decision: again,
        },
    )
    .await;
    assert_eq!(answer(&mut a, 43).await, Some(ErrorCode::Unexpected));
    // One use was spent: one is left for someone else, then none.
    let (second, _) = durable_claim(cap.id);
    let RelayFrame::ClaimWaiting { claim: c2, .. } = claim_once(&f, &second).await else {
        panic!("the invite's second use was gone")
    };
    send(
        &mut a,
        &ClientFrame::ClaimDecision {
            rid: 44,
            decision: admit(c2, second.member),
        },
    )
    .await;
    assert_eq!(answer(&mut a, 44).await, None);
    let (third, _) = durable_claim(cap.id);
    assert!(matches!(
        claim_once(&f, &third).await,
        RelayFrame::Error {
            code: ErrorCode::InviteUsedUp,
            ..
        }
    ));
    // The new member says hello: the relay forgets the answer, and the same request is
    // now a claim like any other, refused (the invite is used up, and the key a member).
    let newcomer = Member {
        key,
        ..Member::new()
    };
    let _n = link(&f, mesh_id, &newcomer).await;
    let replayed = claim_once(&f, &req).await;
    assert!(
        matches!(
            replayed,
            RelayFrame::Error {
                code: ErrorCode::ClaimRefused | ErrorCode::InviteUsedUp,
                ..
            }
        ),
        "{replayed:?}"
    );
    f.relay.shutdown().await;
}

/// At most 8 claims wait on an invite, and the stored ones still count after a restart;
/// revoking the invite refuses them all, and a claimant that comes back later hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_claims_stay_capped_across_a_restart_and_a_revoked_invite_refuses_them() {
    use claudemesh_schema::roster::InviteRevocation;
    use claudemesh_schema::wire::ClaimOutcome;
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, _member, _b) = mesh(&f).await;
    let cap = publish(&mut a, &owner, mesh_id, 20, true, 30).await;
    let mut kept = Vec::new();
    for _ in 0..8 {
        let (req, _) = durable_claim(cap.id);
        assert!(matches!(
            claim_once(&f, &req).await,
            RelayFrame::ClaimWaiting { .. }
        ));
        kept.push(req);
    }
    let rate_limited = |f: RelayFrame| {
        matches!(
            f,
            RelayFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    };
    assert!(rate_limited(claim_once(&f, &durable_claim(cap.id).0).await));
    drop(a);
    let f = f.restart().await;
    assert!(rate_limited(claim_once(&f, &durable_claim(cap.id).0).await));
    let mut a = link(&f, mesh_id, &owner).await;
    send(
        &mut a,
        &ClientFrame::InviteRevoke {
            rid: 50,
            revocation: InviteRevocation::sign(&owner.key, cap.id, mesh_id, now_ms()),
        },
    )
    .await;
    assert_eq!(answer(&mut a, 50).await, None);
    let f = f.restart().await;
    for req in &kept {
        match claim_once(&f, req).await {
            RelayFrame::ClaimResult(ClaimOutcome::Refused { code, .. }) => {
                assert_eq!(code, ErrorCode::InviteRevoked)
            }
            other => panic!("a kept claim was not refused: {other:?}"),
        }
    }
    f.relay.shutdown().await;
}
