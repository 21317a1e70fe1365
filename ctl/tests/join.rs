#![allow(clippy::unwrap_used)]
//! Joining, attacked end to end: the real `claudemesh` binary as relay and
//! daemons on loopback, with a malicious relay operator in the middle where the attack needs
//! one (`claudemesh_tests::proxy`: it presents the relay's own certificate, as its operator
//! can, and rewrites what the relay sends).

use claudemesh_schema::crypto::{self, MemberSecret, MeshKey};
use claudemesh_schema::invite::{self, InviteLink, JoinSecret};
use claudemesh_schema::roster::{MeshGenesis, Roster, RosterEntry, RosterOp};
use claudemesh_schema::wire::{ClaimOutcome, ClaimRequest, ClientFrame, RelayFrame};
use claudemesh_schema::{MeshId, now_ms};
use claudemesh_tests::proxy::{Proxy, Rewrite};
use claudemesh_tests::{Node, RelayProc};
use std::path::Path;
use std::sync::Arc;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// What the operator, holding the invite link, does with the admin's answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attack {
    /// Nothing: the proxy is transparent (the control).
    None,
    /// Answer with a mesh of its own: its own genesis, key and roster entry.
    OwnMesh,
    /// Keep the genesis and entry, seal another mesh key to the claimant.
    OtherKey,
    /// Keep the admin's sealed key and entry, swap in a genesis with another owner.
    OtherOwner,
}

/// The operator's rewrite of the claim's answer. It knows the link's secret, so every
/// forged answer carries a valid MAC.
fn rewrite(attack: Attack, link: InviteLink) -> Rewrite {
    Arc::new(move |client: &[ClientFrame], f: RelayFrame| {
        let RelayFrame::ClaimResult(ClaimOutcome::Accepted {
            claim,
            genesis,
            entry,
            sealed,
            ..
        }) = f
        else {
            return f;
        };
        let request: &ClaimRequest = client
            .iter()
            .find_map(|c| match c {
                ClientFrame::Claim(r) => Some(r),
                _ => None,
            })
            .expect("the claimant sent its claim");
        let operator = MemberSecret::generate();
        let seal_key = |mesh: MeshId, key: MeshKey| {
            let js = JoinSecret {
                mesh,
                mesh_key: *key.as_bytes(),
                name: "test".into(),
                admitted_by: "ann".into(),
                genesis: None,
                epochs: Vec::new(),
            };
            crypto::anon_seal(&request.box_key, &serde_json::to_vec(&js).unwrap()).unwrap()
        };
        let (genesis, entry, sealed) = match attack {
            Attack::None => (genesis, entry, sealed),
            Attack::OwnMesh => {
                let own = MeshGenesis::sign(&operator, MeshId::new(), now_ms());
                let entry = RosterEntry::sign(
                    &operator,
                    &Roster::from_genesis(&own).unwrap().head(),
                    own.mesh,
                    request.member,
                    entry.role,
                    RosterOp::Add,
                    now_ms(),
                    Some(link.invite),
                );
                let sealed = seal_key(own.mesh, MeshKey::generate());
                (own, entry, sealed)
            }
            Attack::OtherKey => {
                let sealed = seal_key(genesis.mesh, MeshKey::generate());
                (genesis, entry, sealed)
            }
            Attack::OtherOwner => {
                let other = MeshGenesis::sign(&operator, genesis.mesh, genesis.created_at);
                (other, entry, sealed)
            }
        };
        let mac = invite::accept_mac(
            &link.secret,
            &claim,
            &sealed,
            &entry.commitment(),
            &genesis.commitment(),
        );
        RelayFrame::ClaimResult(ClaimOutcome::Accepted {
            claim,
            genesis,
            entry,
            sealed,
            mac,
        })
    })
}

fn key_files(n: &Node) -> usize {
    std::fs::read_dir(n.dir.join("keys"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_join_refuses_a_mesh_or_key_the_invite_was_not_made_for_and_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut ann = Node::new(bin(), root.path(), "ann");
    ann.start();
    ann.create_on(&relay, "test");
    let cases = [
        (Attack::OwnMesh, "a mesh of its own"),
        (Attack::OtherKey, "a mesh of its own"),
        (Attack::OtherOwner, "genesis differs"),
        (Attack::None, ""),
    ];
    for (i, (attack, says)) in cases.into_iter().enumerate() {
        let link = InviteLink::parse(&ann.ok(&["invite"])).unwrap();
        assert!(link.genesis.is_some(), "a new link names its genesis");
        let proxy = Proxy::start(relay.addr, &relay.data_dir, rewrite(attack, link.clone()));
        // The link as the operator serves it: same relay certificate, its address.
        let via = InviteLink {
            relay: proxy.addr.to_string(),
            ..link
        }
        .to_link();
        let mut ben = Node::new(bin(), root.path(), &format!("ben{i}"));
        ben.start();
        let out = ben.run(&["join", &via, "--wait", "20"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let meshes = ben.json(&["list"]);
        let joined = meshes["meshes"].as_array().map(Vec::len).unwrap_or(0);
        if attack == Attack::None {
            assert!(out.status.success(), "{attack:?}: {err}");
            assert_eq!(joined, 1, "{meshes}");
            assert_eq!(key_files(&ben), 1);
            continue;
        }
        assert!(!out.status.success(), "{attack:?}: the join was accepted");
        assert_eq!(out.status.code(), Some(7), "{attack:?}: {err}");
        assert!(err.contains(says), "{attack:?}: {err}");
        assert!(err.contains("nothing was joined"), "{attack:?}: {err}");
        assert_eq!(joined, 0, "{attack:?}: {meshes}");
        assert_eq!(key_files(&ben), 0, "{attack:?}: a key file was written");
    }
}

claudemesh_tests::per_store! {
    /// Issue 13, item 4: joining a mesh this machine is in already is refused before any claim
    /// reaches the relay, so the invite keeps its uses and the roster gets no second key.
    fn joining_a_mesh_twice_is_refused_before_claiming_and_spends_no_use(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = claudemesh_tests::mesh_on(bin(), root.path(), store, &["ann"], &[]);
        let ann = &nodes[0];
        let mut ben = Node::new(bin(), root.path(), "ben");
        ben.start();
        let inv = ann.json(&["invite", "--uses", "3"]);
        let link = inv["invite"].as_str().unwrap().to_string();
        let id = inv["id"].as_str().unwrap().to_string();
        ben.ok(&["join", &link, "--wait", "20"]);
        let (code, err) = ben.fails(&["join", &link, "--wait", "20"]);
        assert_eq!(code, 10, "{err}");
        assert!(err.contains("already in test"), "{err}");
        assert!(err.contains("nothing was claimed"), "{err}");
        // The owner's own invite, too: its machine is in the mesh.
        let (code, err) = ann.fails(&["join", &link]);
        assert_eq!(code, 10, "{err}");
        let invites = ann.json(&["invite", "list"]);
        let uses = invites["invites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id.as_str())
            .map(|i| i["uses"].as_u64().unwrap());
        assert_eq!(uses, Some(1), "{invites}");
        let members = ann.json(&["verify"]);
        assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
        assert_eq!(ben.json(&["list"])["meshes"].as_array().unwrap().len(), 1);
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Issue 13, item 5: with no admin's daemon online, `join` leaves a claim waiting at the
/// relay and returns; the claim and the joiner's pending join survive restarts of the
/// relay and of the joiner's daemon, and the join finishes once an admin's daemon is
/// online again (it answers the claim the relay kept for it).
#[test]
fn a_join_waits_for_an_admin_across_restarts_of_the_relay_and_the_joiner() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut ann = Node::new(bin(), root.path(), "ann");
    ann.start();
    ann.create_on(&relay, "test");
    let link = ann.ok(&["invite"]);
    ann.stop();

    let mut ben = Node::new(bin(), root.path(), "ben");
    ben.start();
    let said = ben.ok(&["join", &link]);
    assert!(
        said.contains("pending; you will be admitted when an admin is online"),
        "{said}"
    );
    let status = ben.json(&["status"]);
    let joins = status["joins"].as_array().unwrap();
    assert_eq!(joins.len(), 1, "{status}");
    assert_eq!(joins[0]["stage"], "waiting", "{status}");
    let fingerprint = joins[0]["fingerprint"].as_str().unwrap().to_string();
    assert!(ben.ok(&["status"]).contains(&fingerprint));
    assert_eq!(key_files(&ben), 0, "no mesh key before an admin answered");

    // The relay and the joiner's daemon restart; the claim is still the same one.
    relay.stop();
    relay.restart();
    ben.stop();
    ben.start();
    let status = ben.json(&["status"]);
    assert_eq!(
        status["joins"][0]["fingerprint"],
        fingerprint.as_str(),
        "{status}"
    );
    // Waiting on it (what `--wait` does) is joining it, not claiming again.
    let waiter = ben.spawn(&["join", &link, "--wait", "20"]);

    ann.start();
    let out = waiter.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("Joined test"), "{}", stdout(&out));
    ann.wait("peer-online", Some("ben"));
    ben.wait("peer-online", Some("ann"));
    let status = ben.json(&["status"]);
    assert!(
        status.get("joins").is_none(),
        "nothing pending after the join: {status}"
    );
    let who = ann.json(&["verify"]);
    let members = who["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{who}");
    assert_eq!(members[0]["fingerprint"], fingerprint.as_str(), "{who}");
    let invites = ann.json(&["invite", "list"]);
    assert_eq!(invites["invites"][0]["uses"], 1, "{invites}");
    ben.ok(&["send", "ann", "hello from the pending join"]);
    assert_eq!(ann.inbox_wait().len(), 1);
}

claudemesh_tests::per_store! {
    /// Issue 13, item 6: a claim on an `--approve` invite can be matched to a person: the
    /// joiner is shown the name and key fingerprint it asks with (and the claim to approve),
    /// the admin sees the same name and fingerprint, and the joiner waiting with `--wait`
    /// sees where it stands before it is admitted.
    fn an_approve_claim_shows_the_claimants_name_and_fingerprint_on_both_sides(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = claudemesh_tests::mesh_on(bin(), root.path(), store, &["ann"], &[]);
        let ann = &nodes[0];
        let mut ben = Node::new(bin(), root.path(), "ben");
        ben.start();
        let link = ann.ok(&["invite", "--approve"]);
        let said = ben.ok(&["join", &link]);
        assert!(said.contains("waiting for an admin to approve"), "{said}");
        let status = ben.json(&["status"]);
        let pending = &status["joins"][0];
        assert_eq!(pending["stage"], "approval", "{status}");
        assert_eq!(pending["name"], "ben", "{status}");
        let fingerprint = pending["fingerprint"].as_str().unwrap().to_string();
        let claim = pending["claim"].as_str().unwrap().to_string();
        assert!(
            said.contains(&fingerprint) && said.contains("as ben"),
            "{said}"
        );
        assert!(
            said.contains(&claim[..8]),
            "the claim to approve is named: {said}"
        );

        ann.wait("claim-pending", None);
        let shown = ann.ok(&["invite", "pending"]);
        assert!(
            shown.contains("ben") && shown.contains(&fingerprint),
            "{shown}"
        );
        let claims = ann.json(&["invite", "pending"]);
        assert_eq!(claims["claims"][0]["name"], "ben", "{claims}");
        assert_eq!(claims["claims"][0]["fingerprint"], fingerprint.as_str());

        let waiter = ben.spawn(&["join", &link, "--wait", "20"]);
        let approved = ann.ok(&["invite", "approve", &claim[..8]]);
        assert!(
            approved.contains("ben") && approved.contains(&fingerprint),
            "{approved}"
        );
        let out = waiter.wait_with_output().unwrap();
        let progress = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{progress}");
        assert!(
            progress.contains("waiting for an admin to approve"),
            "{progress}"
        );
        assert!(progress.contains(&fingerprint), "{progress}");
        assert!(stdout(&out).contains("Joined test"), "{}", stdout(&out));
    }
}

claudemesh_tests::per_store! {
    /// A pending join whose invite is revoked is refused, and says so (`status`, and a `join
    /// --wait` of it), with nothing joined.
    fn a_pending_join_of_a_revoked_invite_is_refused_and_status_says_why(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = claudemesh_tests::mesh_on(bin(), root.path(), store, &["ann"], &[]);
        let ann = &nodes[0];
        let mut ben = Node::new(bin(), root.path(), "ben");
        ben.start();
        let inv = ann.json(&["invite", "--approve"]);
        let link = inv["invite"].as_str().unwrap().to_string();
        ben.ok(&["join", &link]);
        ann.wait("claim-pending", None);
        ann.ok(&["invite", "revoke", inv["id"].as_str().unwrap()]);
        let (code, err) = ben.fails(&["join", &link, "--wait", "20"]);
        assert_eq!(code, 7, "{err}");
        assert!(err.contains("revoked"), "{err}");
        let status = ben.ok(&["status"]);
        assert!(
            status.contains("refused") && status.contains("revoked"),
            "{status}"
        );
        assert!(ben.json(&["list"])["meshes"].as_array().unwrap().is_empty());
        assert_eq!(key_files(&ben), 0);
    }
}

/// An admin's daemon answers claims that waited days, so the claim's age no longer
/// bounds replays: a member's own claim played again after its removal (by the relay
/// operator, who saw it pass) is refused, because its key was a member before.
#[test]
fn a_removed_members_claim_replayed_is_refused_by_the_admin() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut ann = Node::new(bin(), root.path(), "ann");
    ann.start();
    let addr = relay.addr.to_string();
    ann.create_on(&relay, "test");
    let link = ann.ok(&["invite", "--uses", "3"]);
    // The operator's proxy keeps what the claimant sent.
    let seen: Arc<std::sync::Mutex<Vec<ClaimRequest>>> = Default::default();
    let keep = seen.clone();
    let proxy = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |client: &[ClientFrame], f: RelayFrame| {
            for c in client {
                if let ClientFrame::Claim(r) = c {
                    let mut k = keep.lock().unwrap();
                    if !k.contains(r) {
                        k.push(r.clone());
                    }
                }
            }
            f
        }),
    );
    let mut ben = Node::new(bin(), root.path(), "ben");
    ben.start();
    ben.ok(&["join", &proxy.invite_via(&link), "--wait", "20"]);
    ann.wait("peer-online", Some("ben"));
    ann.ok(&["member", "remove", "ben"]);
    let request = seen
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("the claim was seen");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let opts = claudemesh_relay::ConnectOptions::default();
        let pin = claudemesh_schema::encoding::unb64_array::<32>(&relay.fingerprint);
        let mut c = claudemesh_relay::connect(&addr, pin, &opts).await.unwrap();
        let b = claudemesh_schema::wire::encode(&ClientFrame::Claim(request)).unwrap();
        c.writer.send(bytes::Bytes::from(b)).await.unwrap();
        loop {
            let b = c.reader.next().await.unwrap().unwrap();
            match claudemesh_schema::wire::decode::<RelayFrame>(&b).unwrap() {
                RelayFrame::ClaimResult(o) => break o,
                RelayFrame::Error { code, message, .. } => panic!("{code}: {message}"),
                _ => {}
            }
        }
    });
    match outcome {
        ClaimOutcome::Refused { message, .. } => {
            assert!(message.contains("member before"), "{message}")
        }
        ClaimOutcome::Accepted { .. } => panic!("the removed member's claim was admitted again"),
    }
    assert!(
        ann.json(&["verify"])["members"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(ann.json(&["invite", "list"])["invites"][0]["uses"], 1);
}
