//! Mesh creation against a real relay on loopback, as an attacker and as a legitimate
//! creator: the admission policies (`token`, `allowlist`), creation tokens issued through
//! the relay's own `token` command line while it runs, and the per-address creation limit,
//! while an existing mesh's pair keeps routing.
#![allow(clippy::unwrap_used)]

use clap::Parser as _;
use claudemesh_relay::admission::{self, NewToken};
use claudemesh_relay::cli::{RelayCli, RelayCommand};
use claudemesh_relay::config::AdmissionMode;
use claudemesh_relay::sqlite::Durability;
use claudemesh_relay::{Connection, RelayConfig};
use claudemesh_schema::crypto::MemberSecret;
use claudemesh_schema::roster::MeshGenesis;
use claudemesh_schema::wire::{ClientFrame, CreationToken, ErrorCode, RelayFrame};
use claudemesh_schema::{MeshId, now_ms};
use claudemesh_tests::raw::{Fixture, Member, add_member, quic, recv, relay, send, still_routes};

/// `claudemesh-relay token …` with this relay's data directory, as an operator runs it
/// (while the relay runs); returns what it prints on stdout.
async fn token_cli(f: &Fixture, args: &[&str]) -> String {
    let data = f.cfg.data_dir.to_str().unwrap();
    let cli = RelayCli::try_parse_from(
        ["claudemesh-relay", "token"]
            .into_iter()
            .chain(args.iter().copied())
            .chain(["--data-dir", data]),
    )
    .unwrap();
    let Some(RelayCommand::Token { what }) = &cli.args.command else {
        panic!("not a token command")
    };
    let cfg = cli.args.config().unwrap();
    claudemesh_relay::cli::token(&cfg, what)
        .await
        .unwrap()
        .stdout
}

/// A token issued with `token create`.
async fn issue(f: &Fixture, args: &[&str]) -> CreationToken {
    let out = token_cli(f, &[&["create"], args].concat()).await;
    CreationToken::new(out.trim())
}

/// What the relay answered a mesh creation.
#[derive(Debug)]
enum Created {
    Ok,
    Refused {
        code: ErrorCode,
        message: String,
        fatal: bool,
        retry_ms: Option<u64>,
    },
}

/// Ask for a new mesh owned by `owner` on connection `c`.
async fn create(
    c: &mut Connection,
    rid: u64,
    owner: &MemberSecret,
    mesh: MeshId,
    token: Option<&CreationToken>,
) -> Created {
    send(
        c,
        &ClientFrame::CreateMesh {
            rid,
            genesis: {
                let g = MeshGenesis::sign(owner, mesh, now_ms());
                claudemesh_tests::raw::track(&g);
                g
            },
            token: token.cloned(),
        },
    )
    .await;
    match recv(c).await {
        RelayFrame::Ok { rid: r } if r == rid => Created::Ok,
        RelayFrame::Error {
            rid: r,
            code,
            message,
            fatal,
            retry_ms,
        } => {
            assert!(r == Some(rid) || fatal, "a refusal answers its request");
            Created::Refused {
                code,
                message,
                fatal,
                retry_ms,
            }
        }
        other => panic!("unexpected answer to create_mesh: {other:?}"),
    }
}

/// Assert a non-fatal `creation_refused` whose message says `says`.
fn assert_refused(got: Created, says: &str) {
    match got {
        Created::Refused {
            code: ErrorCode::CreationRefused,
            message,
            fatal: false,
            retry_ms: None,
        } => assert!(message.contains(says), "{message:?} should say {says:?}"),
        other => panic!("expected creation_refused ({says}), got {other:?}"),
    }
}

/// Say hello as `m` to `mesh` on a fresh connection: `Ok` once ready, else the error code.
async fn hello(f: &Fixture, m: &Member, mesh: MeshId) -> Result<Connection, ErrorCode> {
    let mut c = quic(f).await;
    send(&mut c, &ClientFrame::Hello(m.hello(mesh, now_ms()))).await;
    loop {
        match recv(&mut c).await {
            RelayFrame::Ready { .. } => return Ok(c),
            RelayFrame::Error { code, .. } => return Err(code),
            _ => {}
        }
    }
}

/// A mesh created by `owner` (with `token`), with the owner's link and a member's link.
async fn pair(
    f: &Fixture,
    token: Option<&CreationToken>,
) -> (Member, Connection, Member, Connection) {
    let owner = Member::new();
    let mesh = MeshId::new();
    let mut a = quic(f).await;
    assert!(matches!(
        create(&mut a, 1, &owner.key, mesh, token).await,
        Created::Ok
    ));
    let mut a = hello(f, &owner, mesh).await.unwrap();
    let member = Member::new();
    add_member(&mut a, &owner, mesh, &member, 2).await;
    let b = hello(f, &member, mesh).await.unwrap();
    (owner, a, member, b)
}

fn token_admission(c: &mut RelayConfig) {
    c.admission = AdmissionMode::Token;
}

#[tokio::test]
async fn under_token_admission_an_anonymous_create_is_refused_and_nothing_is_stored() {
    let mut f = relay(token_admission).await;
    let owner = Member::new();
    let mesh = MeshId::new();
    let mut c = quic(&f).await;
    assert_refused(
        create(&mut c, 1, &owner.key, mesh, None).await,
        "pass it with CLAUDEMESH_CREATE_TOKEN",
    );
    // A guessed token of the right shape, and something that is not a token at all.
    let guess = CreationToken::new(&format!(
        "cmrt_{}",
        claudemesh_schema::encoding::b64(&claudemesh_schema::crypto::random_bytes::<32>())
    ));
    for t in [guess, CreationToken::new("hunter2")] {
        let got = create(&mut c, 2, &owner.key, mesh, Some(&t)).await;
        if let Created::Refused { message, .. } = &got {
            assert!(
                !message.contains(t.expose()),
                "the refusal repeats no token"
            );
        }
        assert_refused(got, "does not know that creation token");
    }
    // The connection is still usable, and the mesh does not exist, before or after a restart.
    assert_eq!(
        hello(&f, &owner, mesh).await.err(),
        Some(ErrorCode::UnknownMesh)
    );
    f = f.restart().await;
    assert_eq!(
        hello(&f, &owner, mesh).await.err(),
        Some(ErrorCode::UnknownMesh)
    );
    f.relay.shutdown().await;
}

#[tokio::test]
async fn a_token_from_token_create_creates_exactly_its_number_of_uses() {
    let f = relay(|c| {
        token_admission(c);
        c.create_rate_per_hour = 0;
    })
    .await;
    // Issued while the relay runs: no restart needed.
    let token = issue(&f, &["--uses", "3", "--note", "for the test"]).await;
    // Eight creators race with the one token: exactly three get a mesh.
    let owners: Vec<Member> = (0..8).map(|_| Member::new()).collect();
    let meshes: Vec<MeshId> = (0..8).map(|_| MeshId::new()).collect();
    let mut tasks = Vec::new();
    for (o, m) in owners.iter().zip(&meshes) {
        let (key, mesh, token) = (
            MemberSecret::from_bytes(&o.key.to_bytes()),
            *m,
            token.clone(),
        );
        let mut c = quic(&f).await;
        tasks.push(tokio::spawn(async move {
            create(&mut c, 1, &key, mesh, Some(&token)).await
        }));
    }
    let mut created = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Created::Ok => created.push(i),
            got => assert_refused(got, "no uses left"),
        }
    }
    assert_eq!(created.len(), 3, "{created:?}");
    // The meshes created are real (their owners link up); the others do not exist.
    for (i, (o, m)) in owners.iter().zip(&meshes).enumerate() {
        let linked = hello(&f, o, *m).await;
        if created.contains(&i) {
            assert!(linked.is_ok(), "mesh {i} was created");
        } else {
            assert_eq!(linked.err(), Some(ErrorCode::UnknownMesh), "mesh {i}");
        }
    }
    let list = token_cli(&f, &["list"]).await;
    assert!(list.contains("0/3") && list.contains("used up"), "{list}");
    assert!(
        !list.contains(&token.expose()[5..]),
        "list never shows the token"
    );
    f.relay.shutdown().await;
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let f = relay(token_admission).await;
    let token = issue(&f, &["--uses", "5"]).await;
    let owner = MemberSecret::generate();
    let mut c = quic(&f).await;
    assert!(matches!(
        create(&mut c, 1, &owner, MeshId::new(), Some(&token)).await,
        Created::Ok
    ));
    // Revoked while the relay runs: the next creation is refused at once.
    let id = &token.expose()[5..13];
    token_cli(&f, &["revoke", id]).await;
    assert_refused(
        create(&mut c, 2, &owner, MeshId::new(), Some(&token)).await,
        "was revoked",
    );
    // A token past its expiry (issued through the same library call `token create` makes,
    // with no time left, so the test does not wait for a clock).
    let expired = admission::issue(
        &f.cfg.data_dir.join("relay.db"),
        Durability::Full,
        &NewToken {
            uses: 1,
            expires_in_secs: Some(0),
            note: String::new(),
        },
    )
    .unwrap()
    .token;
    assert_refused(
        create(&mut c, 3, &owner, MeshId::new(), Some(&expired)).await,
        "has expired",
    );
    let list = token_cli(&f, &["list"]).await;
    assert!(
        list.contains("revoked") && list.contains("expired"),
        "{list}"
    );
    f.relay.shutdown().await;
}

#[tokio::test]
async fn under_allowlist_admission_only_listed_owners_create() {
    let listed = Member::new();
    let key = listed.pk().to_b64();
    let f = relay(|c| {
        c.admission = AdmissionMode::Allowlist;
        c.allowed_owners = vec![key];
    })
    .await;
    let stranger = Member::new();
    let mesh = MeshId::new();
    let mut c = quic(&f).await;
    assert_refused(
        create(&mut c, 1, &stranger.key, mesh, None).await,
        "allowed_owners",
    );
    // A token does not get an unlisted key past the allowlist.
    let token = issue(&f, &[]).await;
    assert_refused(
        create(&mut c, 2, &stranger.key, mesh, Some(&token)).await,
        "allowed_owners",
    );
    assert_eq!(
        hello(&f, &stranger, mesh).await.err(),
        Some(ErrorCode::UnknownMesh)
    );
    let mine = MeshId::new();
    assert!(matches!(
        create(&mut c, 3, &listed.key, mine, None).await,
        Created::Ok
    ));
    assert!(hello(&f, &listed, mine).await.is_ok());
    f.relay.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_creates_from_one_address_is_rate_limited_while_a_pair_keeps_routing() {
    // The default creation limit (an open relay); the handshake limit is lifted so that
    // only the creation limit can refuse.
    let f = relay(|c| {
        c.handshake_rate = 100_000.0;
        c.handshake_burst = 100_000.0;
    })
    .await;
    let burst = f.cfg.create_burst as usize;
    let (owner, mut a, member, mut b) = pair(&f, None).await;
    still_routes(&owner, &mut a, &member, &mut b).await;

    let attacker = MemberSecret::generate();
    let mut created = Vec::new();
    let mut limited = Vec::new();
    for rid in 0..63 {
        // A connection per create: one connection may send only a few frames before hello.
        let mut c = quic(&f).await;
        let mesh = MeshId::new();
        match create(&mut c, rid, &attacker, mesh, None).await {
            Created::Ok => created.push(mesh),
            Created::Refused {
                code: ErrorCode::RateLimited,
                message,
                fatal: false,
                retry_ms: Some(ms),
            } => {
                assert!(message.contains("retry in"), "{message}");
                // At 10 an hour the next creation is minutes away, not milliseconds.
                assert!(ms > 60_000, "{ms}");
                limited.push(mesh);
            }
            other => panic!("expected ok or rate_limited, got {other:?}"),
        }
    }
    // The pair's mesh came from the same address and counts too.
    assert_eq!(created.len(), burst - 1);
    assert_eq!(limited.len(), 63 - (burst - 1));
    still_routes(&owner, &mut a, &member, &mut b).await;
    let probe = Member {
        key: MemberSecret::from_bytes(&attacker.to_bytes()),
        ..Member::new()
    };
    assert_eq!(
        hello(&f, &probe, limited[0]).await.err(),
        Some(ErrorCode::UnknownMesh),
        "a refused creation stores nothing"
    );
    assert!(hello(&f, &probe, created[0]).await.is_ok());
    f.relay.shutdown().await;
}
