#![allow(clippy::unwrap_used)]
//! End-to-end scenarios: the real `claudemesh` binary as relay, daemons and CLI, each
//! daemon with its own config directory, all on loopback. Those about what members do
//! through the relay run on each relay store ([`claudemesh_tests::per_store!`]): one
//! SQLite relay, and three relay nodes over NATS JetStream with the members on different
//! nodes.

use claudemesh_tests::{Node, Relay, RelayProc, contains, db_bytes, mesh, mesh_on};
use serde_json::Value;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect()
}

claudemesh_tests::per_store! {
    fn two_daemons_exchange_messages_exactly_once_both_ways(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let (a, b) = (&nodes[0], &nodes[1]);

        let (_, peers_a) = a.peers();
        assert_eq!(peers_a, vec![("bob".to_string(), true)]);
        let (_, peers_b) = b.peers();
        assert_eq!(peers_b, vec![("alice".to_string(), true)]);

        // Bob compared safety numbers with alice: her messages show as verified.
        let alice_fp = b.json(&["verify", "alice"])["members"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .to_string();
        let v = b.json(&["verify", &alice_fp, "--confirm"]);
        assert_eq!(v["members"][0]["confirmed"], true, "{v}");
        let sent = a.json(&["send", "bob", "hello", "bob", "--priority", "now"]);
        assert_eq!(sent["stage"], "relayed");
        let got = b.inbox_wait();
        assert_eq!(got.len(), 1, "{got:?}");
        let m = &got[0];
        assert_eq!(m["body"], "hello bob");
        assert_eq!(m["from_name"], "alice");
        assert_eq!(m["priority"], "now");
        assert_eq!(m["verified"], true);
        assert_eq!(m["id"], sent["id"]);
        assert!(m["sent_at"].as_i64().unwrap() > 1_700_000_000_000);

        b.ok(&["send", "alice", "hi", "alice", "--priority", "low"]);
        let back = a.inbox_wait();
        assert_eq!(bodies(&back), vec!["hi alice"]);
        assert_eq!(back[0]["priority"], "low");
        assert_eq!(back[0]["from_name"], "bob");
        assert_eq!(back[0]["verified"], false, "alice never confirmed bob");

        // Exactly once: nothing further is pending on either side.
        assert!(a.inbox_peek().is_empty());
        assert!(b.inbox_peek().is_empty());
    }
}

claudemesh_tests::per_store! {
    fn group_and_broadcast_reach_the_right_members_only(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
        ben.ok(&["profile", "--groups", "dev,ops"]);
        // Ann learns Ben's new groups through his presence update.
        ann.wait("peer-online", Some("@dev"));

        let r = ann.json(&["send", "@dev", "standup", "in", "5"]);
        let to = r["recipients"].as_array().unwrap();
        assert_eq!(to.len(), 1, "{r}");
        assert!(
            to[0].as_str().unwrap().starts_with("ben [key "),
            "a recipient is named with its key: {r}"
        );
        assert_eq!(bodies(&ben.inbox_wait()), vec!["standup in 5"]);

        ann.ok(&["send", "*", "lunch?"]);
        assert_eq!(bodies(&ben.inbox_wait()), vec!["lunch?"]);
        let cat_got = cat.inbox_wait();
        assert_eq!(
            bodies(&cat_got),
            vec!["lunch?"],
            "cat is not in @dev and gets only the broadcast"
        );
        assert_eq!(cat_got[0]["to"], "*");
        assert!(
            ann.inbox_peek().is_empty(),
            "the sender does not get its own broadcast"
        );

        let (code, err) = ann.fails(&["send", "@nobody", "x"]);
        assert_eq!(code, 4, "{err}");
    }
}

/// The mesh key of `node`'s only mesh, read from its key file.
fn mesh_key(node: &Node) -> Vec<u8> {
    let keys = node.dir.join("keys");
    let file = std::fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let v: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    claudemesh_schema::encoding::unb64(v["mesh_key"].as_str().unwrap()).unwrap()
}

#[test]
fn relay_database_and_frames_hold_neither_plaintext_nor_mesh_key() {
    let root = tempfile::tempdir().unwrap();
    let frames = root.path().join("frames.log");
    let frames_arg = frames.to_str().unwrap().to_string();
    let (relay, mut nodes) = mesh(
        bin(),
        root.path(),
        &["alice", "bob", "carol"],
        &["--frame-log", &frames_arg],
    );
    let secret_direct = "the launch code is tangerine-42";
    let secret_broadcast = "everyone: the password is osprey-77";
    nodes[1].ok(&["profile", "--summary", "working on the secret summary"]);
    nodes[0].ok(&["send", "bob", secret_direct]);
    assert_eq!(bodies(&nodes[1].inbox_wait()), vec![secret_direct]);
    // Carol is offline: the broadcast is stored at the relay for her.
    nodes[2].stop();
    nodes[0].ok(&["send", "*", secret_broadcast]);
    assert_eq!(bodies(&nodes[1].inbox_wait()), vec![secret_broadcast]);

    let key = mesh_key(&nodes[0]);
    assert_eq!(key.len(), 32);
    let key_b64 = claudemesh_schema::encoding::b64(&key);
    let db = db_bytes(&relay.db());
    let log = std::fs::read(&frames).unwrap();
    assert!(
        contains(&log, b"\"t\":\"send\""),
        "the frame log captured the traffic"
    );
    for (what, bytes) in [("relay database", &db), ("captured frames", &log)] {
        for needle in [
            secret_direct.as_bytes(),
            secret_broadcast.as_bytes(),
            b"secret summary",
            b"alice",
            &key[..],
            key_b64.as_bytes(),
        ] {
            assert!(
                !contains(bytes, needle),
                "{what} contains {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
    // Carol still gets it later.
    nodes[2].start();
    assert_eq!(bodies(&nodes[2].inbox_wait()), vec![secret_broadcast]);
}

#[test]
fn with_the_relay_down_peers_answer_from_cache_and_sends_queue() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    relay.stop();
    a.wait("link-down", None);
    b.wait("link-down", None);

    let (cached, peers) = a.peers();
    assert!(
        cached,
        "peers must say the list is cached while the relay is down"
    );
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].0, "bob");
    let v = a.json(&["peers"]);
    assert!(v["meshes"][0]["peers"][0]["last_seen"].as_i64().unwrap() > 0);

    let r = a.json(&["send", "bob", "sent while the relay was down"]);
    assert_eq!(r["stage"], "queued");
    let status = a.json(&["status"]);
    assert_eq!(status["meshes"][0]["outbox"], 1);

    relay.restart();
    a.wait("link-up", None);
    assert_eq!(
        bodies(&b.inbox_wait()),
        vec!["sent while the relay was down"]
    );
    // Delivered once: the outbox is empty and nothing else is pending.
    a.wait("link-up", None);
    assert!(b.inbox_peek().is_empty());
}

#[test]
fn a_stopped_daemon_still_lists_peers_from_its_store() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    nodes[0].stop();
    let out = nodes[0].ok(&["peers"]);
    assert!(out.contains("bob"), "{out}");
    assert!(out.contains("the daemon is not running"), "{out}");
    let (cached, peers) = nodes[0].peers();
    assert!(cached);
    assert_eq!(peers[0].0, "bob");
}

claudemesh_tests::per_store! {
    fn messages_for_a_stopped_daemon_wait_at_the_relay(store) {
        let root = tempfile::tempdir().unwrap();
        let (relay, mut nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        nodes[1].stop();
        nodes[0].wait("peer-offline", Some("bob"));
        let r = nodes[0].json(&["send", "bob", "while you were out"]);
        assert_eq!(
            r["stage"], "relayed",
            "an offline peer's message is held by the relay"
        );
        // Held at the relay as ciphertext, for bob.
        assert!(!contains(&relay.stored_bytes(), b"while you were out"));
        nodes[1].start();
        assert_eq!(bodies(&nodes[1].inbox_wait()), vec!["while you were out"]);
    }
}

#[test]
fn inbox_wait_before_any_mesh_answers_empty_at_its_deadline() {
    let root = tempfile::tempdir().unwrap();
    let mut n = Node::new(bin(), root.path(), "solo");
    n.start();
    let v = n.json(&["inbox", "--wait", "1"]);
    assert!(v["messages"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn a_send_survives_the_sender_daemon_being_killed() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, mut nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    relay.stop();
    nodes[0].wait("link-down", None);
    let r = nodes[0].json(&["send", "bob", "written before the crash"]);
    assert_eq!(r["stage"], "queued");
    nodes[0].kill();
    relay.restart();
    nodes[0].start();
    assert_eq!(
        bodies(&nodes[1].inbox_wait()),
        vec!["written before the crash"]
    );
    assert!(nodes[1].inbox_peek().is_empty());
}

#[test]
fn nothing_acknowledged_is_lost_when_the_relay_is_killed() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, mut nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    nodes[1].stop();
    nodes[0].wait("peer-offline", Some("bob"));
    for i in 0..20 {
        let r = nodes[0].json(&["send", "bob", &format!("message {i}")]);
        assert_eq!(r["stage"], "relayed");
    }
    relay.kill();
    relay.restart();
    nodes[1].start();
    let mut got = Vec::new();
    while got.len() < 20 {
        got.extend(bodies(&nodes[1].inbox_wait()));
    }
    let want: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
}

#[test]
fn with_quic_blocked_the_daemon_falls_back_to_websocket() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(bin(), &root.path().join("relay"), &["--no-quic"]);
    // Something else holds the UDP port and swallows every datagram: QUIC cannot connect.
    let blackhole = std::net::UdpSocket::bind(relay.addr).unwrap();
    let mut a = Node::new(bin(), root.path(), "alice");
    let mut b = Node::new(bin(), root.path(), "bob");
    a.start();
    b.start();
    a.create_on(&relay, "ws");
    let link = a.ok(&["invite"]);
    b.ok(&["join", &link, "--wait", "20"]);
    a.wait("peer-online", Some("bob"));
    for n in [&a, &b] {
        let s = n.json(&["status"]);
        assert_eq!(s["meshes"][0]["transport"], "websocket");
    }
    a.ok(&["send", "bob", "over websocket"]);
    assert_eq!(bodies(&b.inbox_wait()), vec!["over websocket"]);
    drop(blackhole);
}

/// Run `claudemesh relay token …` (the same command line as `claudemesh-relay token …`)
/// against a relay's data and config (on a cluster, its NATS servers); returns stdout.
fn relay_token(relay: &Relay, config: &Path, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["relay", "token"])
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(&relay.nodes[0].data_dir);
    if let Some(nats) = &relay.nats {
        cmd.args(["--store", "nats", "--nats-url", &nats.urls().join(",")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "token {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

claudemesh_tests::per_store! {
    fn create_on_a_token_relay_needs_the_token_from_the_environment_and_spends_it(store) {
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("relay.toml");
        std::fs::write(&config, "admission = \"token\"\n").unwrap();
        let relay = Relay::start(
            bin(),
            root.path(),
            store,
            &["--config", config.to_str().unwrap()],
        );
        let mut ada = Node::new(bin(), root.path(), "ada");
        ada.start();
        // On a cluster each creation goes through another node than the last: the token's
        // uses are spent over all of them.
        let addrs: Vec<String> = relay.nodes.iter().map(|r| r.addr.to_string()).collect();
        let fp = relay.fingerprint();
        let tries = std::cell::Cell::new(0);
        let create = |name: &'static str| {
            let i = tries.get();
            tries.set(i + 1);
            vec![
                "create",
                name,
                "--relay",
                addrs[i % addrs.len()].as_str(),
                "--fingerprint",
                fp,
            ]
        };

        // Without a token: refused, with what to do, exit 8 (not allowed).
        let (code, err) = ada.fails(&create("team"));
        assert_eq!(code, 8, "{err}");
        assert!(
            err.contains("creation_refused") && err.contains("CLAUDEMESH_CREATE_TOKEN"),
            "{err}"
        );

        // The operator issues a one-use token while the relay runs.
        let token = relay_token(&relay, &config, &["create", "--note", "for ada"]);
        let token = token.trim();
        assert!(token.starts_with("cmrt_"), "{token:?}");
        let out = ada.run_env(&create("team"), &[("CLAUDEMESH_CREATE_TOKEN", token)]);
        assert!(out.status.success(), "{out:?}");
        let meshes = ada.json(&["list"]);
        assert_eq!(meshes["meshes"][0]["name"], "team", "{meshes}");

        // Its one use is spent: a second mesh is refused, and the message does not repeat it.
        let out = ada.run_env(&create("again"), &[("CLAUDEMESH_CREATE_TOKEN", token)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{err}");
        assert!(
            err.contains("no uses left") && !err.contains(token),
            "{err}"
        );
        // Something that is not a token, from a file, is a usage error that does not echo it.
        let file = root.path().join("token.txt");
        std::fs::write(&file, "hunter2\n").unwrap();
        let mut with_file = create("again");
        with_file.extend(["--token-file", file.to_str().unwrap()]);
        let (code, err) = ada.fails(&with_file);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("cmrt_") && !err.contains("hunter2"), "{err}");

        let list = relay_token(&relay, &config, &["list"]);
        assert!(list.contains("0/1") && list.contains("for ada"), "{list}");
        assert!(
            !list.contains(&token[5..]),
            "the list never shows the token"
        );
        // A token revoked while the relay runs is refused (on a cluster, by every node).
        let second = relay_token(&relay, &config, &["create"]);
        let second = second.trim();
        relay_token(&relay, &config, &["revoke", &second[5..13]]);
        let out = ada.run_env(&create("revoked"), &[("CLAUDEMESH_CREATE_TOKEN", second)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{err}");
        assert!(err.contains("was revoked"), "{err}");
        // Nothing the daemon wrote (store, logs, config) holds the token.
        for entry in std::fs::read_dir(&ada.dir).unwrap() {
            let p = entry.unwrap().path();
            let files: Vec<_> = if p.is_dir() {
                std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect()
            } else {
                vec![p]
            };
            for f in files.into_iter().filter(|f| f.is_file()) {
                let bytes = std::fs::read(&f).unwrap();
                assert!(
                    !contains(&bytes, token.as_bytes()),
                    "{} holds the token",
                    f.display()
                );
            }
        }
    }
}

claudemesh_tests::per_store! {
    fn used_up_and_revoked_invites_are_refused_and_approval_admits_or_denies(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice"], &[]);
        let alice = &nodes[0];
        let mut bob = Node::new(bin(), root.path(), "bob");
        let mut carol = Node::new(bin(), root.path(), "carol");
        let mut dave = Node::new(bin(), root.path(), "dave");
        for n in [&mut bob, &mut carol, &mut dave] {
            n.start();
        }

        // The link carries no key material.
        let link = alice.ok(&["invite", "--uses", "1"]);
        let key = mesh_key(alice);
        assert!(!link.contains(&claudemesh_schema::encoding::b64(&key)));
        assert!(!contains(link.as_bytes(), &key));

        bob.ok(&["join", &link, "--wait", "20"]);
        let (code, err) = carol.fails(&["join", &link, "--wait", "20"]);
        assert_eq!(code, 7, "{err}");
        assert!(err.contains("invite_used_up"), "{err}");

        let v = alice.json(&["invite"]);
        let revoked_link = v["invite"].as_str().unwrap().to_string();
        alice.ok(&["invite", "revoke", v["id"].as_str().unwrap()]);
        let (code, err) = carol.fails(&["join", &revoked_link, "--wait", "20"]);
        assert_eq!(code, 7, "{err}");
        assert!(err.contains("invite_revoked"), "{err}");

        // Approval mode: the claim waits until an admin decides.
        let approve_link = alice.ok(&["invite", "--approve", "--uses", "2"]);
        let carol_join = carol.spawn(&["join", &approve_link, "--wait", "30"]);
        alice.wait("claim-pending", None);
        let pending = alice.json(&["invite", "pending"]);
        let claim = pending["claims"][0]["claim"].as_str().unwrap().to_string();
        alice.ok(&["invite", "approve", &claim]);
        let out = carol_join.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        carol.wait("peer-online", Some("alice"));

        let dave_join = dave.spawn(&["join", &approve_link, "--wait", "30"]);
        alice.wait("claim-pending", None);
        let pending = alice.json(&["invite", "pending"]);
        let claim = pending["claims"][0]["claim"].as_str().unwrap().to_string();
        alice.ok(&["invite", "deny", &claim]);
        let out = dave_join.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(7),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dave.json(&["list"])["meshes"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
}

claudemesh_tests::per_store! {
    fn a_daemon_hosts_several_sessions_each_a_peer(store) {
        use claudemesh_daemon::Client;
        use claudemesh_schema::ipc::methods as m;
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bob_sock = nodes[1].dir.join("daemon.sock");
        let open = |key: &str, name: &str, groups: Vec<String>| {
            rt.block_on(async {
                let mut c = Client::connect(&bob_sock).await.unwrap();
                let r: m::SessionOpenResult = c
                    .call(
                        m::SESSION_OPEN,
                        m::SessionOpenParams {
                            client_key: key.into(),
                            name: Some(name.into()),
                            kind: Some("claude".into()),
                            groups,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                r.sessions[0].session
            })
        };
        let inbox = |session: Option<claudemesh_schema::SessionId>| -> Vec<String> {
            rt.block_on(async {
                let mut c = Client::connect(&bob_sock).await.unwrap();
                let r: m::InboxResult = c
                    .call(
                        m::INBOX,
                        m::InboxParams {
                            session,
                            wait_ms: Some(20_000),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                r.messages.into_iter().map(|x| x.body).collect()
            })
        };
        let peek = |session: Option<claudemesh_schema::SessionId>| -> usize {
            rt.block_on(async {
                let mut c = Client::connect(&bob_sock).await.unwrap();
                let r: m::InboxResult = c
                    .call(
                        m::INBOX,
                        m::InboxParams {
                            session,
                            peek: true,
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                r.messages.len()
            })
        };
        let close = |session: claudemesh_schema::SessionId| {
            rt.block_on(async {
                let mut c = Client::connect(&bob_sock).await.unwrap();
                let _: m::SessionInfo = c
                    .call(m::SESSION_CLOSE, m::SessionCloseParams { session })
                    .await
                    .unwrap();
            })
        };
        let s1 = open("claude-session-1", "bob-api", vec!["dev".into()]);
        let s2 = open("claude-session-2", "bob-web", vec![]);
        assert_eq!(
            open("claude-session-1", "bob-api", vec!["dev".into()]),
            s1,
            "same client key, same peer"
        );
        nodes[0].wait("peer-online", Some("bob-api"));
        nodes[0].wait("peer-online", Some("bob-web"));

        nodes[0].ok(&["send", "bob-api", "to the api session"]);
        assert_eq!(inbox(Some(s1)), vec!["to the api session"]);
        nodes[0].ok(&["send", "@dev", "dev only"]);
        assert_eq!(inbox(Some(s1)), vec!["dev only"]);
        assert_eq!(peek(Some(s2)), 0);
        assert_eq!(peek(None), 0, "the daemon's own session got none of these");

        nodes[0].ok(&["send", "*", "everyone"]);
        for s in [Some(s1), Some(s2), None] {
            assert_eq!(inbox(s), vec!["everyone"], "{s:?}");
        }

        // A hosted session's broadcast reaches the other local sessions and remote peers,
        // not itself.
        rt.block_on(async {
            let mut c = Client::connect(&bob_sock).await.unwrap();
            let _: m::SendResult = c
                .call(
                    m::SEND,
                    m::SendParams {
                        to: "*".into(),
                        body: "from bob-api".into(),
                        priority: Default::default(),
                        mesh: None,
                        session: Some(s1),
                        wait_ms: None,
                        id: None,
                    },
                )
                .await
                .unwrap();
        });
        let got = nodes[0].inbox_wait();
        assert_eq!(bodies(&got), vec!["from bob-api"]);
        // The person, and the session that wrote.
        assert_eq!(got[0]["from_name"], "bob");
        assert_eq!(got[0]["from_label"], "bob-api");
        assert_eq!(inbox(Some(s2)), vec!["from bob-api"]);
        assert_eq!(inbox(None), vec!["from bob-api"]);
        assert_eq!(peek(Some(s1)), 0);

        // Closing a session takes it offline for others; a daemon restart keeps the open one.
        close(s2);
        nodes[0].wait("peer-offline", Some("bob-web"));
        // A direct message to the closed session waits in its inbox until it reopens.
        nodes[0].ok(&["send", "bob-web", "while you were closed"]);
        assert_eq!(open("claude-session-2", "bob-web", vec![]), s2);
        assert_eq!(inbox(Some(s2)), vec!["while you were closed"]);
        close(s2);
        nodes[0].wait("peer-offline", Some("bob-web"));
        nodes[1].stop();
        nodes[0].wait("peer-offline", Some("bob-api"));
        nodes[1].start();
        nodes[0].wait("peer-online", Some("bob-api"));
        let (_, peers) = nodes[0].peers();
        assert!(peers.contains(&("bob-web".to_string(), false)), "{peers:?}");
        assert_eq!(
            peers.iter().filter(|(n, _)| n == "bob-api").count(),
            1,
            "listed once after a restart: {peers:?}"
        );
    }
}

#[test]
fn hooks_report_status_and_surface_messages_by_priority() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let hook = |event: &str| -> String {
        let out = bob.run_env(
            &["hook", event],
            &[
                ("CLAUDEMESH_SESSION_KEY", "claude-test-1"),
                ("CLAUDEMESH_DISPLAY_NAME", "bob-claude"),
                ("CLAUDEMESH_ROLE", "reviewer"),
            ],
        );
        assert!(out.status.success(), "hooks always exit 0");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(hook("session-start"), "", "nothing to surface yet");
    alice.wait("peer-idle", Some("bob-claude"));
    assert_eq!(hook("user-prompt-submit"), "");
    alice.wait("peer-working", Some("bob-claude"));
    let v = alice.json(&["peers"]);
    let peer = v["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bob-claude")
        .unwrap()
        .clone();
    assert_eq!(
        peer["delivery"],
        serde_json::json!(["hooks"]),
        "peers show the hooks path"
    );
    assert_eq!(peer["role"], "reviewer");
    assert_eq!(peer["client"], "claude-code");
    let id = peer["id"].as_str().unwrap().to_string();
    // Sent in this order over one link, they arrive in this order: once `now` is in the
    // session's inbox, so are the others.
    for (prio, text) in [
        ("low", "fyi"),
        ("next", "when you are free"),
        ("now", "prod is down"),
    ] {
        alice.ok(&["send", &id, text, "--priority", prio]);
    }
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["inbox", "--session", &id, "--peek", "--wait", "20"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let msgs = bob.json(&args)["messages"].as_array().cloned().unwrap();
        assert!(!msgs.is_empty(), "messages reach bob's session");
        after = Some(msgs.last().unwrap()["id"].as_str().unwrap().to_string());
        if msgs.iter().any(|m| m["body"] == "prod is down") {
            break;
        }
    }
    // Mid-turn only `now` surfaces; at the next prompt `next` does; `low` waits for a pull.
    let v: Value = serde_json::from_str(&hook("post-tool-use")).unwrap();
    let ctx = v["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(ctx.contains("- [now] alice [key "), "{ctx}");
    assert!(ctx.contains("\n    | prod is down\n"), "{ctx}");
    assert!(
        !ctx.contains("when you are free") && !ctx.contains("fyi"),
        "{ctx}"
    );
    assert_eq!(
        hook("stop"),
        "",
        "no urgent message left to hold the turn for"
    );
    alice.wait("peer-idle", Some("bob-claude"));
    let v: Value = serde_json::from_str(&hook("user-prompt-submit")).unwrap();
    let ctx = v["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(ctx.contains("- alice [key "), "{ctx}");
    assert!(ctx.contains("\n    | when you are free\n"), "{ctx}");
    assert!(
        !ctx.contains("fyi") && !ctx.contains("prod is down"),
        "shown once, `low` never: {ctx}"
    );
    assert_eq!(hook("user-prompt-submit"), "", "each message shown once");
    // The low one is still there for a pull.
    let left = bob.json(&["inbox", "--session", &id]);
    assert_eq!(left["messages"][0]["body"], "fyi");
}

#[test]
fn install_is_idempotent_and_uninstall_removes_it() {
    let root = tempfile::tempdir().unwrap();
    let n = Node::new(bin(), root.path(), "solo");
    n.ok(&["install", "--status-line"]);
    let cj: Value =
        serde_json::from_str(&std::fs::read_to_string(n.dir.join(".claude.json")).unwrap())
            .unwrap();
    // Claude Code runs it with its own PATH: the binary is registered by its full path.
    let exe = std::fs::canonicalize(bin()).unwrap();
    assert_eq!(
        cj["mcpServers"]["claudemesh"],
        serde_json::json!({"command": exe.display().to_string(), "args": ["mcp"]})
    );
    assert!(
        n.ok(&["install", "--status-line"])
            .contains("nothing changed")
    );
    n.ok(&["uninstall"]);
    let cj: Value =
        serde_json::from_str(&std::fs::read_to_string(n.dir.join(".claude.json")).unwrap())
            .unwrap();
    assert_eq!(cj, serde_json::json!({}));
    assert!(n.ok(&["status-line"]).starts_with("claudemesh:"));
}

#[test]
fn a_session_goes_offline_when_its_claude_process_exits() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    // Stand-in for the Claude Code process the session lives in.
    let mut claude = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = claude.id().to_string();
    let out = nodes[1].run_stdin(
        &["hook", "session-start"],
        &[
            ("CLAUDEMESH_LEASE_PID", pid.as_str()),
            ("CLAUDEMESH_DISPLAY_NAME", "bob-claude"),
        ],
        br#"{"session_id": "cc-1", "source": "startup"}"#,
    );
    assert!(out.status.success());
    nodes[0].wait("peer-online", Some("bob-claude"));
    claude.kill().unwrap();
    claude.wait().unwrap();
    nodes[0].wait("peer-offline", Some("bob-claude"));
    // The daemon's own peer is unaffected.
    nodes[0].wait("peer-online", Some("bob"));
}

#[test]
fn hooks_exit_zero_quietly_on_bad_input_or_no_daemon() {
    use std::io::Write as _;
    let root = tempfile::tempdir().unwrap();
    let mut n = Node::new(bin(), root.path(), "solo");
    let run = |n: &Node, stdin: &[u8]| {
        let mut child = std::process::Command::new(bin())
            .args(["hook", "user-prompt-submit"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &n.dir)
            .env("CLAUDEMESH_CONFIG_DIR", &n.dir)
            .env("CLAUDEMESH_SESSION_KEY", "claude-hook-test")
            .env("CLAUDEMESH_NO_AUTOSTART", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    // No daemon at all.
    let out = run(&n, b"{\"session_id\": \"x\"}");
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    // A daemon, and garbage on stdin.
    n.start();
    for input in [
        &b"\x00\xff not json"[..],
        b"",
        b"[1,2,3]",
        &[b'{'; 4096][..],
    ] {
        let out = run(&n, input);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn launch_runs_claude_with_the_channel_and_passes_flags_through() {
    let root = tempfile::tempdir().unwrap();
    let n = Node::new(bin(), root.path(), "solo");
    let fake = root.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join("claude");
    std::fs::write(&script, "#!/bin/sh\necho \"args: $*\"\necho \"name=$CLAUDEMESH_DISPLAY_NAME role=$CLAUDEMESH_ROLE channels=$CLAUDEMESH_CHANNELS\"\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Flag-first: `claudemesh --resume X …` means `claudemesh launch …`.
    let out = n.run_env(
        &[
            "--resume", "abc", "--name", "ada", "--role", "reviewer", "-y", "--model", "opus",
        ],
        &[("PATH", path.as_str())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("args: --dangerously-load-development-channels server:claudemesh --resume abc --model opus"), "{text}");
    // `-y` cannot answer Claude Code's own prompt for development channels: it says so.
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains("Loading development channels") && note.contains("-y cannot answer"),
        "{note}"
    );
    assert!(text.contains("name=ada role=reviewer channels=1"), "{text}");
    // Without claude on PATH: a clear error.
    let out = n.run_env(&["launch"], &[("PATH", "/nonexistent")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not on your PATH"));
}

#[test]
fn a_resumed_claude_session_is_the_same_peer_not_a_twin() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let start_claude = || {
        std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap()
    };
    let hook = |claude: &std::process::Child, event: &str, stdin: &str| -> String {
        let pid = claude.id().to_string();
        let out = bob.run_stdin(
            &["hook", event],
            &[
                ("CLAUDEMESH_LEASE_PID", pid.as_str()),
                ("CLAUDEMESH_DISPLAY_NAME", "bob-claude"),
            ],
            stdin.as_bytes(),
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let bobs = |online: bool| -> Vec<String> {
        alice.json(&["peers", "--all"])["meshes"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "bob-claude" && (!online || p["online"] == true))
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };

    let mut claude1 = start_claude();
    hook(&claude1, "session-start", r#"{"session_id": "S"}"#);
    alice.wait("peer-online", Some("bob-claude"));
    let id1 = bobs(true).pop().unwrap();
    alice.ok(&["send", &id1, "before you left"]);
    // Wait until it is stored in bob's session inbox (it is what the resumed session must see).
    let got = bob.json(&["inbox", "--session", &id1, "--peek", "--wait", "20"]);
    assert_eq!(got["messages"][0]["body"], "before you left");

    // Claude exits; later `claude --resume S` runs in a new process, with the same id.
    claude1.kill().unwrap();
    claude1.wait().unwrap();
    alice.wait("peer-offline", Some("bob-claude"));
    let mut claude2 = start_claude();
    let ctx = hook(
        &claude2,
        "session-start",
        r#"{"session_id": "S", "source": "resume"}"#,
    );
    assert!(
        ctx.contains("before you left"),
        "the resumed session sees its messages: {ctx}"
    );
    alice.wait("peer-online", Some(&id1[..8]));
    assert_eq!(
        bobs(false),
        vec![id1.clone()],
        "one bob-claude, with its old id"
    );
    // `/clear` gives the same process a new Claude session id: still the same peer.
    hook(&claude2, "user-prompt-submit", r#"{"session_id": "S2"}"#);
    assert_eq!(bobs(false), vec![id1.clone()], "still one bob-claude");
    // The lease follows the new process.
    claude2.kill().unwrap();
    claude2.wait().unwrap();
    alice.wait("peer-offline", Some("bob-claude"));
    // And resuming the cleared session (its new id) is the same peer again.
    let mut claude3 = start_claude();
    hook(
        &claude3,
        "session-start",
        r#"{"session_id": "S2", "source": "resume"}"#,
    );
    alice.wait("peer-online", Some(&id1[..8]));
    assert_eq!(bobs(false), vec![id1]);
    claude3.kill().unwrap();
    claude3.wait().unwrap();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["solo", "other"], &[]);
    let n = &nodes[0];
    // `head -1` reads one line and closes the pipe; the rest must not panic.
    for args in ["completions bash", "peers", "status", "--help", "list"] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; \"$0\" {args} | head -1 >/dev/null"
            ))
            .arg(bin())
            .env("CLAUDEMESH_CONFIG_DIR", &n.dir)
            .env("HOME", &n.dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "claudemesh {args}: {err}");
        assert_eq!(out.status.code(), Some(0), "claudemesh {args}: {err}");
    }
}

#[test]
fn the_status_line_claims_nobody_online_with_the_daemon_down() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let line = nodes[0].ok(&["status-line"]);
    assert!(line.contains("1/1 online"), "{line}");
    nodes[0].stop();
    let line = nodes[0].ok(&["status-line"]);
    assert!(
        line.contains("daemon down") && !line.contains("online"),
        "{line}"
    );
}

/// No window caps the backlog: 1,100 messages to a session that never reads are all
/// pushed, and all can then be marked read.
#[test]
fn a_backlog_of_1100_is_all_pushed_and_all_marked_read() {
    use claudemesh_daemon::Client;
    use claudemesh_schema::ipc::methods as m;
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bob_sock = nodes[1].dir.join("daemon.sock");
        let mut c = Client::connect(&bob_sock).await.unwrap();
        let open: m::SessionOpenResult = c
            .call(
                m::SESSION_OPEN,
                m::SessionOpenParams {
                    client_key: "backlog".into(),
                    name: Some("reader".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let session = open.sessions[0].session;
        let mut sub = Client::connect(&bob_sock).await.unwrap();
        let _: Value = sub
            .call(
                m::SUBSCRIBE,
                m::SubscribeParams {
                    session,
                    push: true,
                },
            )
            .await
            .unwrap();
        nodes[0].wait("peer-online", Some("bob/reader"));
        let mut a = Client::connect(&nodes[0].dir.join("daemon.sock"))
            .await
            .unwrap();
        let to = session.to_string();
        for i in 0..1100 {
            let _: m::SendResult = a
                .call(
                    m::SEND,
                    m::SendParams {
                        to: to.clone(),
                        body: format!("backlog {i}"),
                        priority: claudemesh_schema::message::Priority::Now,
                        mesh: None,
                        session: None,
                        wait_ms: Some(0),
                        id: None,
                    },
                )
                .await
                .unwrap();
        }
        let mut ids = std::collections::BTreeSet::new();
        while ids.len() < 1100 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(60), sub.notification())
                .await
                .expect("all 1,100 pushed within a minute")
                .unwrap();
            if n.method == m::NOTIFY_MESSAGE {
                let msg: m::InboxMessage = serde_json::from_value(n.params).unwrap();
                assert!(ids.insert(msg.id), "pushed twice: {}", msg.body);
            }
        }
        let _: Value = c
            .call(
                m::MARK_READ,
                m::MarkReadParams {
                    session,
                    ids: ids.into_iter().collect(),
                    surfaced: false,
                },
            )
            .await
            .unwrap();
        let left: m::InboxResult = c
            .call(
                m::INBOX,
                m::InboxParams {
                    session: Some(session),
                    peek: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(
            left.messages.is_empty(),
            "{} left unread",
            left.messages.len()
        );
    });
}

/// A message to the person, shown by a hook to one of their Claude sessions that then ends
/// before its model answered (its transcript never confirmed it), is not lost with that
/// session: the person's next session is shown it.
#[test]
fn a_person_message_shown_to_a_session_that_ends_unconfirmed_goes_to_the_next() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let transcripts = root.path().join("transcripts");
    std::fs::create_dir_all(&transcripts).unwrap();
    let mut claude_a = Stand::new();
    let claude_b = Stand::new();
    let hook = |claude: &Stand, sid: &str, event: &str, extra: &str| -> String {
        let pid = claude.0.id().to_string();
        let path = transcripts.join(format!("{sid}.jsonl"));
        if !path.exists() {
            std::fs::write(&path, "").unwrap();
        }
        let stdin = format!(
            r#"{{"session_id": "{sid}", "transcript_path": {}{extra}}}"#,
            Value::from(path.display().to_string())
        );
        let out = bob.run_stdin(
            &["hook", event],
            &[
                ("CLAUDEMESH_LEASE_PID", pid.as_str()),
                ("CLAUDEMESH_DISPLAY_NAME", &format!("bob-{sid}")),
            ],
            stdin.as_bytes(),
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    hook(&claude_b, "B", "session-start", "");
    hook(&claude_a, "A", "session-start", "");
    hook(
        &claude_a,
        "A",
        "user-prompt-submit",
        r#", "prompt": "work""#,
    );
    alice.wait("peer-working", Some("bob-A"));

    // To the person; session A (the most recently active) is shown it mid-turn.
    alice.ok(&[
        "send",
        "bob",
        "for bob, whichever session",
        "--priority",
        "now",
    ]);
    let got = bob.json(&["inbox", "--peek", "--wait", "20"]);
    assert_eq!(got["messages"][0]["body"], "for bob, whichever session");
    let out: Value = serde_json::from_str(&hook(&claude_a, "A", "post-tool-use", "")).unwrap();
    let ctx = out["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap();
    assert!(ctx.contains("for bob, whichever session"), "A: {ctx}");
    // Claude Code records the hook's context in A's transcript (so no deadline re-shows
    // it); its model never answers.
    let entry = serde_json::json!({"type": "attachment", "isSidechain": false,
        "attachment": {"type": "hook_additional_context", "content": [ctx],
            "hookName": "PostToolUse", "hookEvent": "PostToolUse"}});
    std::fs::write(transcripts.join("A.jsonl"), format!("{entry}\n")).unwrap();
    // While A holds it, B is not shown it too.
    let ctx = hook(&claude_b, "B", "user-prompt-submit", r#", "prompt": "hi""#);
    assert!(!ctx.contains("for bob"), "B while A holds it: {ctx}");

    // A ends before its model answered.
    hook(
        &claude_a,
        "A",
        "session-end",
        r#", "reason": "prompt_input_exit""#,
    );
    claude_a.end();
    alice.wait("peer-offline", Some("bob-A"));
    // Once the daemon has read A's transcript to its end (nothing confirmed it there), the
    // message is free: B's next hook shows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ctx = hook(&claude_b, "B", "post-tool-use", "");
        if ctx.contains("for bob, whichever session") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never shown the message A lost"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A stand-in for a Claude Code process (what a session's lease follows); killed on drop.
struct Stand(std::process::Child);

impl Stand {
    fn new() -> Self {
        Self(
            std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap(),
        )
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Stand {
    fn drop(&mut self) {
        self.end();
    }
}

claudemesh_tests::per_store! {
    /// Opening a session costs one presence, however many are open: the 100th open sends
    /// what the 1st did (its own presence), never the others' again.
    fn opening_a_session_sends_one_presence_however_many_are_open(store) {
        use claudemesh_daemon::Client;
        use claudemesh_schema::ipc::methods as m;
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = || {
            bob.json(&["status"])["meshes"][0]["presences_sent"]
                .as_u64()
                .unwrap()
        };
        let sock = bob.dir.join("daemon.sock");
        let open = |i: usize| {
            rt.block_on(async {
                let mut c = Client::connect(&sock).await.unwrap();
                let _: m::SessionOpenResult = c
                    .call(
                        m::SESSION_OPEN,
                        m::SessionOpenParams {
                            client_key: format!("bench-session-{i}"),
                            name: Some(format!("bob-{i}")),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
            })
        };
        let before = sent();
        open(0);
        alice.wait("peer-online", Some("bob-0"));
        assert_eq!(sent() - before, 1, "the first open sends its own presence");
        for i in 1..100 {
            open(i);
        }
        for i in 1..100 {
            alice.wait("peer-online", Some(&format!("bob-{i}")));
        }
        assert_eq!(
            sent() - before,
            100,
            "each open sent one presence, the 100th as the 1st"
        );
    }
}

/// `n` has applied the shared-state log up to `seq` (and so every roster entry the relay
/// sent before those ops).
fn synced_to(n: &Node, seq: u64) {
    n.ok(&[
        "wait",
        "synced",
        "--seq",
        &seq.to_string(),
        "--timeout",
        "20",
    ]);
}

claudemesh_tests::per_store! {
    fn only_owners_and_admins_remove_members_or_change_roles_and_the_removed_member_is_cut_off(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);

        // A member may not.
        let (code, err) = ben.fails(&["member", "remove", "cat"]);
        assert_eq!(code, 8, "{err}");
        assert!(err.contains("only the owner or an admin"), "{err}");
        let (code, err) = ben.fails(&["member", "role", "ben", "admin"]);
        assert_eq!(code, 8, "{err}");

        // Nobody changes the owner; an unknown peer is not found.
        assert_eq!(
            ann.fails(&["member", "remove", "ann"]).0,
            4,
            "ann is not her own peer"
        );
        let (code, err) = ann.fails(&["member", "remove", "nobody"]);
        assert_eq!(code, 4, "{err}");

        // The owner makes ben an admin; once ben has the entry, ben may remove cat.
        let out = ann.ok(&["member", "role", "ben", "admin"]);
        assert!(out.contains("ben") && out.contains("admin"), "{out}");
        ann.ok(&["state", "set", "after-promotion", "1"]);
        synced_to(ben, 1);
        assert_eq!(ben.json(&["whoami"])["identities"][0]["role"], "admin");
        let r = ben.json(&["member", "remove", "cat"]);
        assert!(r["role"].is_null(), "{r}");
        assert!(
            r["fingerprint"].as_str().is_some_and(|f| !f.is_empty()),
            "{r}"
        );

        // Cat is cut off, and nobody counts it as a member any more.
        cat.ok(&["wait", "link-error", "--timeout", "20"]);
        let st = cat.json(&["status"]);
        let e = st["meshes"][0]["last_error"].as_str().unwrap_or_default();
        assert!(e.contains("removed from the mesh"), "{st}");
        ann.ok(&["state", "set", "after-removal", "1"]);
        synced_to(ann, 2);
        assert_eq!(
            ann.fails(&["verify", "cat"]).0,
            4,
            "cat is still a member at ann"
        );

        // And back: ben is a member again, and may no longer change anyone.
        ann.ok(&["member", "role", "ben", "member"]);
        ann.ok(&["state", "set", "after-demotion", "1"]);
        synced_to(ben, 3);
        assert_eq!(ben.json(&["whoami"])["identities"][0]["role"], "member");
        assert_eq!(ben.fails(&["member", "remove", "ann"]).0, 8);
    }
}

claudemesh_tests::per_store! {
    fn inbox_marks_read_only_what_reached_its_reader_and_history_keeps_what_was_read(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let (ann, ben) = (&nodes[0], &nodes[1]);
        ann.ok(&["send", "ben", "first"]);
        let v = ben.json(&["inbox", "--peek", "--wait", "20"]);
        assert_eq!(bodies(v["messages"].as_array().unwrap()), vec!["first"]);
        // A reader whose output goes nowhere (its pipe closed) never had the message: it
        // stays unread.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = ben
            .command(&["inbox"])
            .stdout(writer)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "a closed pipe ends it quietly: {status}");
        assert_eq!(bodies(&ben.inbox_peek()), vec!["first"]);
        // One that prints it has read it.
        assert!(ben.ok(&["inbox"]).contains("first"));
        assert!(ben.inbox_peek().is_empty());
        // What was read stays in reach, newest last.
        ann.ok(&["send", "ben", "second"]);
        assert_eq!(bodies(&ben.inbox_wait()), vec!["second"]);
        let h = ben.json(&["history"]);
        assert_eq!(
            bodies(h["messages"].as_array().unwrap()),
            vec!["first", "second"]
        );
        let all = ben.ok(&["inbox", "--all", "--limit", "1"]);
        assert!(all.contains("second") && !all.contains("first"), "{all}");
    }
}

#[test]
fn inbox_follow_prints_messages_as_they_arrive_and_reads_them() {
    use std::io::BufRead as _;
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    let mut follow = ben.spawn(&["inbox", "--follow", "--json"]);
    let mut lines = std::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    for body in ["one", "two", "three"] {
        ann.ok(&["send", "ben", body]);
        let line = lines.next().unwrap().unwrap();
        let msg: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(msg["body"], body, "{line}");
    }
    // Each printed message is confirmed read before the next is asked for; the last may
    // not be yet when the follower is killed (then it comes again, never lost).
    let _ = follow.kill();
    let _ = follow.wait();
    let left = bodies(&ben.inbox_peek());
    assert!(left.is_empty() || left == ["three"], "{left:?}");
}

#[test]
fn the_cli_speaks_one_language_priorities_stages_ids_durations_and_confirmations() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    // One word per priority: `now` is shown as now.
    let sent = ann.json(&["send", "ben", "ship it", "--priority", "now"]);
    let id = sent["id"].as_str().unwrap().to_string();
    assert_eq!(bodies(&ben.inbox_wait()), vec!["ship it"]);
    ann.ok(&["send", "ben", "line one\nline two"]);
    let shown = ben.ok(&["inbox", "--wait", "20"]);
    // A multi-line body sits indented under its header.
    assert!(shown.contains(":\n    line one\n    line two"), "{shown}");
    ann.ok(&["send", "ben", "again", "--priority", "now"]);
    let shown = ben.ok(&["inbox", "--wait", "20"]);
    assert!(
        shown.contains("[now]") && !shown.contains("URGENT"),
        "{shown}"
    );
    let (code, err) = ann.fails(&["send", "ben", "x", "--priority", "urgent"]);
    assert_eq!(code, 2, "{err}");
    // Stages lowercase; any prefix of the id `send` printed, or of its short form.
    let short = &id[id.len() - 8..];
    for prefix in [&id[..28], &short[..4], short] {
        let line = ann.ok(&["sent", prefix]);
        assert!(
            line.starts_with(&format!("{short} to ben: ")),
            "{prefix}: {line}"
        );
        let stage = line.trim().rsplit(' ').next().unwrap();
        assert!(
            ["relayed", "delivered", "surfaced", "read"].contains(&stage),
            "{line}"
        );
    }
    // No id: the last sends, newest first.
    let list = ann.json(&["sent"]);
    let tos: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["to"].as_str().unwrap())
        .collect();
    assert_eq!(tos, vec!["ben", "ben", "ben"]);
    assert_eq!(list["messages"][2]["id"], id.as_str());
    // A typo is answered with the name it most likely meant.
    let (code, err) = ann.fails(&["send", "bne", "hi"]);
    assert_eq!(code, 4);
    assert!(err.contains("did you mean \"ben\""), "{err}");
    // Durations need a unit (`--ttl 5 years` would be 5 s and a pattern "years").
    let (code, err) = ann.fails(&["reserve", "src/*", "--ttl", "5", "years"]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a unit"), "{err}");
    // `remind` refuses flags its subcommands do not take, and times already past.
    let (code, err) = ann.fails(&["remind", "list", "--to", "ben"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = ann.fails(&["remind", "stand-up", "--at", "2001-01-01T09:00:00Z"]);
    assert_eq!(code, 2);
    assert!(err.contains("has passed"), "{err}");
    // Confirmations say what happened.
    ann.ok(&["state", "set", "k", "1"]);
    let out = ann.ok(&["state", "set", "k", "null"]);
    assert!(out.starts_with("deleted k"), "{out}");
    // `whoami` shows the key and id in the forms `peers` shows (short fingerprint
    // groups, 8 hex digits of the session id), not the member key.
    let j = ann.json(&["whoami"]);
    let sid = j["identities"][0]["session"].as_str().unwrap().to_string();
    let member = j["identities"][0]["member_id"]
        .as_str()
        .unwrap()
        .to_string();
    let who = ann.ok(&["whoami"]);
    assert!(!who.contains(&member), "{who}");
    let in_peers = ben.json(&["peers"])["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == sid.as_str());
    assert!(in_peers, "ben lists ann's session {sid}");
    assert!(who.contains(&format!("id:  {}", &sid[..8])), "{who}");
}

claudemesh_tests::per_store! {
    fn send_takes_a_file_or_stdin_and_reply_answers_the_session_that_wrote(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let (ann, ben) = (&nodes[0], &nodes[1]);
        // Longer than a command line takes, from a file.
        let notes = root.path().join("notes.md");
        let long = "x".repeat(100_000);
        std::fs::write(&notes, &long).unwrap();
        ann.ok(&["send", "ben", "--file", notes.to_str().unwrap()]);
        let got = ben.inbox_wait();
        assert_eq!(got[0]["body"].as_str().map(str::len), Some(100_000));
        let id = got[0]["id"].as_str().unwrap().to_string();
        // A file that is not text is refused before anything is sent.
        let bin_file = root.path().join("blob");
        std::fs::write(&bin_file, [0xff, 0xfe, 0x00]).unwrap();
        let (code, err) = ann.fails(&["send", "ben", "--file", bin_file.to_str().unwrap()]);
        assert_eq!(code, 2);
        assert!(err.contains("not UTF-8"), "{err}");
        // Ben answers by the id inbox showed (its short form), from stdin.
        let short = &id[id.len() - 8..];
        let out = ben.run_stdin(&["reply", short, "-"], &[], b"got it\n");
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ann"),
            "{out:?}"
        );
        assert_eq!(bodies(&ann.inbox_wait()), vec!["got it"]);
        let (code, err) = ben.fails(&["reply", "00000000", "nobody wrote this"]);
        assert_eq!(code, 4, "{err}");
    }
}

#[test]
fn a_default_mesh_answers_for_commands_that_name_none_and_a_mesh_can_be_renamed_here() {
    let root = tempfile::tempdir().unwrap();
    let (relay, nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    let ann = &nodes[0];
    ann.create_on(&relay, "work");
    let (code, err) = ann.fails(&["state", "set", "k", "1"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("mesh use"), "says how to pick one: {err}");
    ann.ok(&["mesh", "use", "work"]);
    ann.ok(&["state", "set", "k", "1"]);
    assert_eq!(
        ann.json(&["state", "get", "k", "--mesh", "work"])["value"],
        1
    );
    let list = ann.json(&["list"]);
    let default: Vec<&str> = list["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["default"] == true)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(default, vec!["work"]);
    // A local name: --mesh takes it; a name another mesh has here is refused.
    ann.ok(&["mesh", "rename", "work", "job"]);
    assert_eq!(
        ann.json(&["state", "get", "k", "--mesh", "job"])["value"],
        1
    );
    let (code, err) = ann.fails(&["mesh", "rename", "job", "test"]);
    assert_eq!(code, 10, "{err}");
    // A name that reads as another mesh's id would capture `--mesh <id>`: refused, and an
    // id always names its own mesh.
    let test_id = ann.json(&["list"])["meshes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "test")
        .unwrap()["mesh"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, err) = ann.fails(&["mesh", "rename", "job", &test_id]);
    assert_eq!(code, 2, "{err}");
    let (code, _) = ann.fails(&["mesh", "rename", "job", "beef"]);
    assert_eq!(code, 2);
    ann.ok(&["state", "set", "t", "1", "--mesh", &test_id]);
    assert_eq!(
        ann.json(&["state", "get", "t", "--mesh", "test"])["value"],
        1
    );
    assert_eq!(ann.fails(&["state", "get", "t", "--mesh", "job"]).0, 4);
    // The default survives a restart of the daemon; --clear forgets it.
    let mut nodes = nodes;
    nodes[0].stop();
    nodes[0].start();
    nodes[0].ok(&["state", "set", "k", "2"]);
    assert_eq!(
        nodes[0].json(&["state", "get", "k", "--mesh", "job"])["value"],
        2
    );
    nodes[0].ok(&["mesh", "use", "--clear"]);
    let (code, _) = nodes[0].fails(&["state", "set", "k", "3"]);
    assert_eq!(code, 5);
}

/// What the shell gets for `claudemesh <words>` with the cursor on the last one.
fn complete(n: &Node, words: &[&str]) -> Vec<String> {
    let mut args = vec!["--", "claudemesh"];
    args.extend_from_slice(words);
    let out = n
        .command(&args)
        .env("CLAUDEMESH_COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", words.len().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn completion_offers_peers_meshes_and_message_ids_from_the_local_store() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["ann", "ben", "bea"], &[]);
    nodes[2].ok(&["profile", "--groups", "backend"]);
    nodes[0].wait("peer-online", Some("bea"));
    let sent = nodes[1].json(&["send", "ann", "hello"]);
    let id = sent["id"].as_str().unwrap().to_string();
    assert_eq!(bodies(&nodes[0].inbox_wait()), vec!["hello"]);
    let ann = &nodes[0];
    assert_eq!(complete(ann, &["send", "b"]), vec!["bea", "ben"]);
    let groups = complete(ann, &["send", "@"]);
    assert!(groups.contains(&"@backend".to_string()), "{groups:?}");
    assert_eq!(complete(ann, &["peers", "--mesh", ""]), vec!["test"]);
    let ids = complete(ann, &["reply", ""]);
    assert_eq!(
        ids.first(),
        Some(&id[id.len() - 8..].to_string()),
        "{ids:?}"
    );
    assert!(ids.iter().skip(1).all(|c| c.starts_with("--")), "{ids:?}");
    // From the store alone: with the daemon stopped too.
    nodes[0].stop();
    assert_eq!(complete(&nodes[0], &["send", "be"]), vec!["bea", "ben"]);
}

#[test]
fn quiet_drops_confirmations_but_not_data_or_errors_and_pipes_get_no_colour() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    for args in [
        &["-q", "send", "ben", "one"][..],
        &["send", "ben", "two", "--quiet"][..],
        &["state", "set", "k", "1", "-q"][..],
    ] {
        let out = ann.run(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let got = ben.inbox_wait();
    assert!(!got.is_empty());
    // Data asked for still prints; errors still print, without colour codes in a pipe.
    assert!(ann.ok(&["-q", "state", "list"]).contains("k"));
    let out = ann.run(&["-q", "send", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: no peer matches"), "{err}");
    assert!(!err.contains('\x1b'), "{err}");
}

fn links(n: &Node) -> (u64, String) {
    let st = n.json(&["status"]);
    let m = &st["meshes"][0];
    (
        m["links"].as_u64().unwrap(),
        m["last_drop"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn a_restarted_relay_is_noticed_within_a_second_with_nothing_sent() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    ann.wait("peer-online", Some("ben"));
    let (before, _) = links(ann);
    // A crash and a restart on the same address: the old connections are gone, and the
    // new process answers their next packet with a stateless reset (it recognises their
    // connection ids). Idle links send a keep-alive every second, so they redial with
    // nothing sent, long before the 10 s idle timeout (or the old 10 s keep-alive).
    relay.kill();
    relay.restart();
    let t = std::time::Instant::now();
    let deadline = t + std::time::Duration::from_secs(8);
    let (after, why) = loop {
        let (n, why) = links(ann);
        if n > before && ann.json(&["status"])["meshes"][0]["link"] == "connected" {
            break (n, why);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ann's link did not notice the restart: {}",
            ann.ok(&["status"])
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // For BENCHMARKS.md: how long the daemon took to notice and be linked again.
    eprintln!("relinked {:?} after the restart", t.elapsed());
    assert_eq!(after, before + 1, "one redial");
    assert!(why.contains("reset"), "told apart from a timeout: {why}");
    let text = ann.ok(&["status"]);
    assert!(text.contains("reconnected 1 time, last after:"), "{text}");
    let id = ann.json(&["send", "ben", "after the restart"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    ann.ok(&["sent", &id, "--wait-for", "relayed", "--timeout", "10"]);
    assert_eq!(bodies(&ben.inbox_wait()), vec!["after the restart"]);
}

/// `debug link up` ends a backoff wait at once (here one of ten minutes), and a link that
/// waits never waits longer than its cap (the wait is table-tested in `link`).
#[test]
fn debug_link_up_retries_a_waiting_link_at_once() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut ann = Node::with_config(bin(), root.path(), "ann", "initial_backoff_ms = 600000\n");
    ann.start();
    ann.create_on(&relay, "test");
    ann.wait("link-up", None);
    relay.kill();
    ann.wait("link-down", None);
    relay.restart();
    ann.ok(&["debug", "link", "up"]);
    ann.wait("link-up", None);
    assert_eq!(links(&ann).0, 2, "{}", ann.ok(&["status"]));
}

/// A network change (the route to the relay now leaves from another address) ends a
/// backoff wait at once, with nobody asking: here the wait would be ten minutes.
#[test]
fn a_network_change_retries_a_waiting_link_at_once() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(bin(), &root.path().join("relay"), &[]);
    // On a loopback address of its own, so the test can move the route to it.
    let to = std::net::Ipv4Addr::new(127, 77, 0, 9);
    relay.kill();
    relay.addr.set_ip(to.into());
    relay.restart();
    let mut ann = Node::with_config(bin(), root.path(), "ann", "initial_backoff_ms = 600000\n");
    ann.log_filter = "info".into();
    ann.start();
    ann.create_on(&relay, "test");
    ann.wait("link-up", None);
    relay.kill();
    ann.wait("link-down", None);
    relay.restart();
    let _change = claudemesh_tests::RouteChange::apply(to, std::net::Ipv4Addr::new(127, 77, 0, 5));
    ann.wait("link-up", None);
    assert_eq!(links(&ann).0, 2, "{}", ann.ok(&["status"]));
    assert!(ann.log().contains("the network changed"), "{}", ann.log());
}

claudemesh_tests::per_store! {
    /// `send --id KEY`: a retry after a failed call sends nothing twice, even when the daemon
    /// died after recording the message and before answering.
    fn a_send_retried_with_its_idempotency_key_arrives_once(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let first = nodes[0].json(&["send", "ben", "once", "--id", "deploy-42"]);
        assert!(first.get("duplicate").is_none(), "{first}");
        let again = nodes[0].json(&["send", "ben", "once", "--id", "deploy-42"]);
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["id"], first["id"], "{again}");
        let text = nodes[0].ok(&["send", "ben", "once", "--id", "deploy-42"]);
        assert!(text.contains("nothing sent again"), "{text}");
        // A new key is a new message (keys are per sending session).
        let other = nodes[0].json(&["send", "ben", "twice", "--id", "deploy-43"]);
        assert_ne!(other["id"], first["id"]);
        // Keyed ids are time-ordered like any other (mailboxes replay in id order): a keyed
        // send sorts after the sends before it.
        let id = |v: &Value| v["id"].as_str().unwrap().to_string();
        assert_eq!(id(&first).as_bytes()[14], b'7', "a v7 id: {first}");
        assert!(id(&other) > id(&first), "{first} then {other}");

        // The call "fails" after the message is recorded: the link is down (queued) and the
        // daemon is killed before anything else; the caller retries after the restart.
        nodes[0].ok(&["debug", "link", "down"]);
        let queued = nodes[0].json(&["send", "ben", "after a crash", "--id", "crash-1"]);
        assert_eq!(queued["stage"], "queued", "{queued}");
        nodes[0].kill();
        nodes[0].start();
        nodes[0].ok(&["debug", "link", "up"]);
        let retried = nodes[0].json(&["send", "ben", "after a crash", "--id", "crash-1"]);
        assert_eq!(retried["duplicate"], true, "{retried}");
        assert_eq!(retried["id"], queued["id"]);
        assert!(id(&queued) > id(&other), "{other} then {queued}");
        let st = nodes[0].json(&[
            "sent",
            queued["id"].as_str().unwrap(),
            "--wait-for",
            "delivered",
        ]);
        assert_eq!(st["stage"], "delivered", "{st}");
        let (code, err) = nodes[0].fails(&["send", "ben", "x", "--id", &"k".repeat(129)]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("1 to 128"), "{err}");
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(bodies(&nodes[1].inbox_wait()));
        }
        assert_eq!(got, ["once", "twice", "after a crash"]);
        assert!(
            nodes[1].inbox_peek().is_empty(),
            "{:?}",
            nodes[1].inbox_peek()
        );
    }
}

claudemesh_tests::per_store! {
    /// Receipts are store-and-forward: the sender's daemon is down when the recipient's
    /// acknowledges, and still learns `delivered` when it is back.
    fn a_sender_offline_when_its_message_is_delivered_learns_it_when_back(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        nodes[1].stop();
        nodes[0].wait("peer-offline", Some("ben"));
        let sent = nodes[0].json(&["send", "ben", "while you were out"]);
        assert_eq!(sent["stage"], "relayed", "{sent}");
        let id = sent["id"].as_str().unwrap().to_string();
        nodes[0].stop();
        nodes[1].start();
        // Looked at, not read: only the delivery receipt (the relay's) says anything.
        let got = nodes[1].json(&["inbox", "--peek", "--wait", "20"]);
        assert_eq!(
            bodies(got["messages"].as_array().unwrap()),
            ["while you were out"]
        );
        nodes[0].start();
        let st = nodes[0].json(&["sent", &id, "--wait-for", "delivered", "--timeout", "20"]);
        assert_eq!(st["stage"], "delivered", "{st}");
        // Read now: the read receipt (boxed, through the outbox like a message) follows.
        nodes[1].inbox_wait();
        let st = nodes[0].json(&["sent", &id, "--wait-for", "read", "--timeout", "20"]);
        assert_eq!(st["stage"], "read", "{st}");
    }
}
