//! The relay protocol spoken raw against an in-process relay: refusals of bad handshakes,
//! malformed and oversized frames, and invite checks, while legitimate links keep working.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use claudemesh_relay::client::connect_ws;
use claudemesh_relay::{Connection, FrameWriter};
use claudemesh_schema::crypto::{BoxSecret, MemberSecret, MeshKey};
use claudemesh_schema::invite;
use claudemesh_schema::roster::{InviteCap, InviteRevocation, Role, RosterOp};
use claudemesh_schema::wire::{
    self, ClaimDecision, ClaimOutcome, ClaimRequest, ClientFrame, Envelope, ErrorCode, RelayFrame,
    Route, Seal,
};
use claudemesh_schema::{ClaimId, InviteId, MeshId, MessageId, now_ms};
use claudemesh_tests::raw::{
    Fixture, Member, expect_error, mesh, quic, recv, relay, send, still_routes, until,
};
use std::time::Duration;

#[tokio::test]
async fn bad_handshakes_and_frames_are_refused_while_others_keep_working() {
    let f = relay(|_| {}).await;
    let (mesh, owner, mut a, member, mut b) = mesh(&f).await;

    // Replayed hello: the member's hello accepted once, refused on a second connection.
    let other = Member::new();
    let entry = claudemesh_tests::raw::entry(
        &owner.key,
        mesh,
        other.pk(),
        Role::Member,
        RosterOp::Add,
        None,
    );
    send(&mut a, &ClientFrame::Roster { rid: 9, entry }).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ok { rid: 9 }).then_some(())
    })
    .await;
    let hello = other.hello(mesh, now_ms());
    let mut c1 = quic(&f).await;
    send(&mut c1, &ClientFrame::Hello(hello.clone())).await;
    assert!(matches!(recv(&mut c1).await, RelayFrame::Welcome(_)));
    let mut c2 = quic(&f).await;
    send(&mut c2, &ClientFrame::Hello(hello)).await;
    expect_error(&mut c2, ErrorCode::ReplayedHello).await;

    // Stale timestamp, two minutes old (and one from the future).
    for skew in [-120_000, 120_000] {
        let mut c = quic(&f).await;
        send(
            &mut c,
            &ClientFrame::Hello(member.hello(mesh, now_ms() + skew)),
        )
        .await;
        expect_error(&mut c, ErrorCode::StaleHello).await;
    }

    // Bad signature.
    let mut h = member.hello(mesh, now_ms());
    h.sig.0[3] ^= 0x40;
    let mut c = quic(&f).await;
    send(&mut c, &ClientFrame::Hello(h)).await;
    expect_error(&mut c, ErrorCode::BadSignature).await;

    // A valid signature by a key that is not a member.
    let stranger = Member::new();
    let mut c = quic(&f).await;
    send(&mut c, &ClientFrame::Hello(stranger.hello(mesh, now_ms()))).await;
    expect_error(&mut c, ErrorCode::NotAMember).await;

    // Garbage bytes in a well-formed length prefix.
    let mut c = quic(&f).await;
    c.writer
        .send(Bytes::from_static(b"\x00\xffnot json at all"))
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::BadFrame).await;

    // An oversized frame over QUIC: a length prefix beyond the limit.
    let mut c = quic(&f).await;
    let FrameWriter::Quic(w) = &mut c.writer else {
        panic!("quic writer")
    };
    let raw = w.get_mut();
    raw.write_all(&(wire::MAX_FRAME as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    raw.write_all(&[b'x'; 1024]).await.unwrap();
    expect_error(&mut c, ErrorCode::FrameTooLarge).await;

    // An oversized frame over WebSocket.
    let mut c = connect_ws(
        f.relay.addr(),
        Some(f.relay.fingerprint()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    c.writer
        .send(Bytes::from(vec![b'{'; wire::MAX_FRAME + 10]))
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::FrameTooLarge).await;

    // A frame that needs a hello, before the hello.
    let mut c = quic(&f).await;
    send(
        &mut c,
        &ClientFrame::Ack {
            ids: vec![],
            proofs: Vec::new(),
        },
    )
    .await;
    expect_error(&mut c, ErrorCode::Unexpected).await;

    // An envelope claiming another member as sender is refused, not routed.
    let forged = Envelope {
        epoch: 0,
        id: MessageId::new(),
        from: member.session,
        from_member: member.pk(),
        to: Route::All,
        seal: Seal::Mesh,
        ct: vec![1; 10],
    };
    send(&mut a, &ClientFrame::Send(forged.clone())).await;
    let code = until(&mut a, |f| match f {
        RelayFrame::Refused { id, code, .. } if id == forged.id => Some(code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::NotAuthorized);

    // Through all of that, the legitimate links kept working.
    still_routes(&owner, &mut a, &member, &mut b).await;
    f.relay.shutdown().await;
}

async fn claim(f: &Fixture, invite: InviteId) -> Connection {
    let mut c = quic(f).await;
    let m = MemberSecret::generate();
    let b = BoxSecret::generate();
    let req = ClaimRequest {
        invite,
        member: m.public(),
        box_key: b.public(),
        at: now_ms(),
        proof: [0; 32],
        note: Vec::new(),
        durable: false,
    };
    send(&mut c, &ClientFrame::Claim(req)).await;
    c
}

#[tokio::test]
async fn expired_revoked_used_up_and_unknown_invites_are_refused() {
    let f = relay(|_| {}).await;
    let (mesh, owner, mut a, _member, _b) = mesh(&f).await;
    let now = now_ms();
    let publish = |cap: InviteCap, rid: u64| ClientFrame::InvitePublish { rid, cap };

    let expired = InviteCap::sign(
        &owner.key,
        InviteId::new(),
        mesh,
        Role::Member,
        5,
        now - 1_000,
        false,
        now,
    );
    let revoked = InviteCap::sign(
        &owner.key,
        InviteId::new(),
        mesh,
        Role::Member,
        5,
        now + 600_000,
        false,
        now,
    );
    let single = InviteCap::sign(
        &owner.key,
        InviteId::new(),
        mesh,
        Role::Member,
        1,
        now + 600_000,
        false,
        now,
    );
    for (i, cap) in [&expired, &revoked, &single].into_iter().enumerate() {
        send(&mut a, &publish(cap.clone(), 10 + i as u64)).await;
        let rid = 10 + i as u64;
        until(&mut a, |f| {
            matches!(f, RelayFrame::Ok { rid: r } if r == rid).then_some(())
        })
        .await;
    }
    send(
        &mut a,
        &ClientFrame::InviteRevoke {
            rid: 20,
            revocation: InviteRevocation::sign(&owner.key, revoked.id, mesh, now),
        },
    )
    .await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ok { rid: 20 }).then_some(())
    })
    .await;

    expect_error(&mut claim(&f, expired.id).await, ErrorCode::InviteExpired).await;
    expect_error(&mut claim(&f, revoked.id).await, ErrorCode::InviteRevoked).await;
    expect_error(
        &mut claim(&f, InviteId::new()).await,
        ErrorCode::InviteUnknown,
    )
    .await;

    // The single-use invite: first claim admitted by the owner, second refused.
    let mut c = quic(&f).await;
    let newcomer = MemberSecret::generate();
    let bx = BoxSecret::generate();
    send(
        &mut c,
        &ClientFrame::Claim(ClaimRequest {
            invite: single.id,
            member: newcomer.public(),
            box_key: bx.public(),
            at: now_ms(),
            proof: [0; 32],
            note: Vec::new(),
            durable: false,
        }),
    )
    .await;
    assert!(matches!(
        recv(&mut c).await,
        RelayFrame::ClaimWaiting {
            admins_online: 1,
            ..
        }
    ));
    let claim_id: ClaimId = until(&mut a, |f| match f {
        RelayFrame::ClaimPending { claim, .. } => Some(claim),
        _ => None,
    })
    .await;
    let entry = claudemesh_tests::raw::entry(
        &owner.key,
        mesh,
        newcomer.public(),
        Role::Member,
        RosterOp::Add,
        Some(single.id),
    );
    let sealed = claudemesh_schema::crypto::anon_seal(&bx.public(), b"join secret").unwrap();
    let secret = invite::invite_secret(&MeshKey::generate(), &single.id);
    let mac = invite::accept_mac(&secret, &claim_id, &sealed, &entry.commitment(), b"genesis");
    send(
        &mut a,
        &ClientFrame::ClaimDecision {
            rid: 30,
            decision: ClaimDecision::Accept {
                claim: claim_id,
                entry,
                sealed,
                mac,
            },
        },
    )
    .await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Ok { rid: 30 }).then_some(())
    })
    .await;
    assert!(matches!(
        recv(&mut c).await,
        RelayFrame::ClaimResult(ClaimOutcome::Accepted { .. })
    ));
    expect_error(&mut claim(&f, single.id).await, ErrorCode::InviteUsedUp).await;
    f.relay.shutdown().await;
}

#[tokio::test]
async fn handshake_floods_are_rate_limited() {
    let f = relay(|c| {
        c.handshake_rate = 1.0;
        c.handshake_burst = 3.0;
    })
    .await;
    let stranger = Member::new();
    let mesh = MeshId::new();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let mut c = quic(&f).await;
        send(&mut c, &ClientFrame::Hello(stranger.hello(mesh, now_ms()))).await;
        if let RelayFrame::Error { code, .. } = recv(&mut c).await {
            codes.push(code);
        }
    }
    assert_eq!(&codes[..3], &[ErrorCode::UnknownMesh; 3]);
    assert_eq!(&codes[3..], &[ErrorCode::RateLimited; 2]);
    f.relay.shutdown().await;
}

#[tokio::test]
async fn a_message_refused_for_quota_is_stored_when_resent_later() {
    let f = relay(|c| c.mesh_quota_messages = 2).await;
    let (_mesh, owner, mut a, member, mut b) = mesh(&f).await;
    let env = |ct: u8| Envelope {
        epoch: 0,
        id: MessageId::new(),
        from: owner.session,
        from_member: owner.pk(),
        to: Route::Member {
            member: member.pk(),
        },
        seal: Seal::Box,
        ct: vec![ct; 32],
    };
    let (e1, e2, e3) = (env(1), env(2), env(3));
    for e in [&e1, &e2] {
        send(&mut a, &ClientFrame::Send(e.clone())).await;
        until(&mut a, |f| {
            matches!(f, RelayFrame::Relayed { id, .. } if id == e.id).then_some(())
        })
        .await;
    }
    // Two undelivered envelopes fill the quota: the third is refused, with a retry hint.
    send(&mut a, &ClientFrame::Send(e3.clone())).await;
    let (code, retry) = until(&mut a, |f| match f {
        RelayFrame::Refused {
            id, code, retry_ms, ..
        } if id == e3.id => Some((code, retry_ms)),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::QuotaExceeded);
    assert!(retry.is_some());
    // The recipient acknowledges what it got, which frees the quota.
    for e in [&e1, &e2] {
        until(&mut b, |f| {
            matches!(f, RelayFrame::Deliver { env, .. } if env.id == e.id).then_some(())
        })
        .await;
    }
    send(
        &mut b,
        &ClientFrame::Ack {
            ids: vec![e1.id, e2.id],
            proofs: Vec::new(),
        },
    )
    .await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Receipt { id, .. } if id == e2.id).then_some(())
    })
    .await;
    // The resend of the refused id is stored and delivered, not mistaken for a duplicate.
    send(&mut a, &ClientFrame::Send(e3.clone())).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Relayed { id, .. } if id == e3.id).then_some(())
    })
    .await;
    until(&mut b, |f| {
        matches!(f, RelayFrame::Deliver { env, .. } if env.id == e3.id).then_some(())
    })
    .await;
    f.relay.shutdown().await;
}

#[tokio::test]
async fn a_slow_reader_is_not_disconnected_and_gets_every_message() {
    let f = relay(|c| c.send_queue = 16).await;
    let (_mesh, owner, a, member, mut b) = mesh(&f).await;
    let n = 600;
    // The sender reads its acknowledgements as it goes, as a daemon does.
    let (mut a_reader, mut a_writer, _guard) = a.into_parts();
    let acks = tokio::spawn(async move {
        let mut relayed = 0;
        while relayed < n {
            let b = a_reader.next().await.unwrap().unwrap();
            if let RelayFrame::Relayed { .. } = wire::decode(&b).unwrap() {
                relayed += 1;
            }
        }
    });
    let mut ids = std::collections::HashSet::new();
    // The member does not read while the owner sends far more than its queue holds.
    for i in 0..n {
        let id = MessageId::new();
        ids.insert(id);
        let env = Envelope {
            epoch: 0,
            id,
            from: owner.session,
            from_member: owner.pk(),
            to: Route::Member {
                member: member.pk(),
            },
            seal: Seal::Box,
            ct: vec![(i % 251) as u8; 200],
        };
        a_writer
            .send(Bytes::from(wire::encode(&ClientFrame::Send(env)).unwrap()))
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), acks)
        .await
        .unwrap()
        .unwrap();
    // Now it reads: live copies it missed come from its mailbox, each id at least once.
    let mut got = std::collections::HashSet::new();
    while got.len() < n {
        match recv(&mut b).await {
            RelayFrame::Deliver { env, .. } => {
                assert!(ids.contains(&env.id));
                got.insert(env.id);
            }
            RelayFrame::Error { code, .. } => panic!("link closed: {code}"),
            _ => {}
        }
    }
    f.relay.shutdown().await;
}
