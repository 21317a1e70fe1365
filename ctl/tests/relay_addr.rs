#![allow(clippy::unwrap_used)]
//! Where a mesh's relay is, end to end: `up` applying `--listen`/`--public-addr` to the
//! embedded relay and to the meshes it hosts (invites carry the public address, members
//! follow), a failed `up` changing nothing, `down` and `up --no-relay`, and
//! `mesh set-relay` moving every member while neither a relay (replaying an old record) nor
//! a member that is not an admin can move anyone. Real binaries on loopback.

use claudemesh_schema::op::{self, Op, OpBody};
use claudemesh_schema::wire::{self, ClientFrame, Hello, RelayFrame};
use claudemesh_schema::{MeshId, OpId, now_ms};
use claudemesh_tests::proxy::Proxy;
use claudemesh_tests::{Node, mesh};
use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::sync::{Arc, Mutex};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// `up` starts and restarts the daemon itself (a background process, not the node's
/// child), which `CLAUDEMESH_NO_AUTOSTART` forbids: lift it for these commands.
const AUTOSTART: &[(&str, &str)] = &[("CLAUDEMESH_NO_AUTOSTART", "")];

/// Stops the daemons `up` started in the background when the test ends (pass or fail).
struct Down<'a>(Vec<&'a Node>);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = n.run(&["down"]);
        }
    }
}

/// The address `localhost` resolves to first here (so a relay listening on it is what
/// a daemon dialling `localhost:port` reaches).
fn localhost() -> IpAddr {
    ("localhost", 0)
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
        .ip()
}

/// A port free for both TCP and UDP on `ip` right now.
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let t = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

fn up(n: &Node, args: &[&str]) -> std::process::Output {
    let mut a = vec!["up"];
    a.extend_from_slice(args);
    n.run_env(&a, AUTOSTART)
}

fn up_ok(n: &Node, args: &[&str]) -> String {
    let out = up(n, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`up {}` failed: {text}",
        args.join(" ")
    );
    text
}

fn mesh0(n: &Node) -> Value {
    n.json(&["list"])["meshes"][0].clone()
}

/// The link state of the first mesh, as `status` reports it right now (no waiting).
fn link_now(n: &Node) -> String {
    n.json(&["status"])["meshes"][0]["link"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn up_again_with_listen_and_public_addr_moves_the_relay_its_mesh_and_invites_and_members_follow() {
    let root = tempfile::tempdir().unwrap();
    let lh = localhost();
    let (p1, p2, p3) = (free_port(lh), free_port(lh), free_port(lh));
    let alice = Node::with_config(
        bin(),
        root.path(),
        "alice",
        &format!("[relay]\nlisten = \"{}\"\n", SocketAddr::new(lh, p1)),
    );
    let mut bob = Node::new(bin(), root.path(), "bob");
    let _down = Down(vec![&alice]);

    // The Quick start: a relay on this machine and a personal mesh naming it.
    let first = up_ok(&alice, &[]);
    assert!(first.contains("claudemesh is up."), "{first}");
    let was = SocketAddr::new(lh, p1).to_string();
    assert_eq!(mesh0(&alice)["relay"], was.as_str());

    // The recipe for other machines, run after it: the relay moves, and so does the mesh.
    let listen = SocketAddr::new(lh, p2).to_string();
    let public = format!("localhost:{p2}");
    let out = up_ok(&alice, &["--listen", &listen, "--public-addr", &public]);
    assert!(out.contains("claudemesh is up."), "{out}");
    assert!(
        out.contains(&format!(
            "relay: listening on {listen}; invites name {public}"
        )),
        "the public address is labelled as such: {out}"
    );
    assert!(!out.contains("local relay"), "{out}");
    assert!(
        out.contains(&format!(
            "changed: the relay listens on {listen} (was {was})"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "changed: mesh personal now names {public} (was {was})"
        )),
        "{out}"
    );
    // Verified before "up" was said: connected now, without waiting.
    assert_eq!(link_now(&alice), "connected");
    assert_eq!(mesh0(&alice)["relay"], public.as_str());
    let invite = alice.ok(&["invite"]);
    assert!(
        invite.starts_with(&format!("claudemesh://join/{public}/")),
        "{invite}"
    );

    // Another machine joins with that invite, and they talk.
    bob.start();
    bob.ok(&["join", &invite, "--wait", "20"]);
    alice.wait("peer-online", Some("bob"));
    bob.ok(&["send", "alice", "over the public address"]);
    assert_eq!(bodies(&alice.inbox_wait()), vec!["over the public address"]);

    // Another port: the old one is gone, and bob (a member elsewhere) follows the record
    // alice's daemon wrote through the old address before moving.
    let listen3 = SocketAddr::new(lh, p3).to_string();
    let public3 = format!("localhost:{p3}");
    let out = up_ok(&alice, &["--listen", &listen3, "--public-addr", &public3]);
    assert!(out.contains("claudemesh is up."), "{out}");
    assert!(
        out.contains(&format!(
            "changed: mesh personal now names {public3} (was {public})"
        )),
        "{out}"
    );
    assert_eq!(link_now(&alice), "connected");
    alice.ok(&["send", "bob", "after the move"]);
    assert_eq!(bodies(&bob.inbox_wait()), vec!["after the move"]);
    assert_eq!(mesh0(&bob)["relay"], public3.as_str());
    assert!(
        alice
            .ok(&["invite"])
            .starts_with(&format!("claudemesh://join/{public3}/"))
    );

    // A public name that does not resolve here (a name for other machines): this daemon
    // still reaches its own relay, where it listens.
    let unresolvable = format!("relay.invalid:{p3}");
    let out = up_ok(&alice, &["--public-addr", &unresolvable]);
    assert!(out.contains("claudemesh is up."), "{out}");
    assert_eq!(link_now(&alice), "connected");
    assert!(
        alice
            .ok(&["invite"])
            .starts_with(&format!("claudemesh://join/{unresolvable}/"))
    );

    // Nothing to change: up says so by changing nothing, and the daemon keeps running.
    let pid = alice.json(&["status"])["pid"].clone();
    let again = up_ok(&alice, &[]);
    assert!(!again.contains("changed:"), "{again}");
    assert_eq!(alice.json(&["status"])["pid"], pid);
}

#[test]
fn a_failed_up_changes_nothing_and_names_config_toml_and_down_and_no_relay_work() {
    let root = tempfile::tempdir().unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let alice = Node::with_config(
        bin(),
        root.path(),
        "alice",
        &format!("[relay]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut bob = Node::new(bin(), root.path(), "bob");
    let _down = Down(vec![&alice]);
    up_ok(&alice, &[]);
    bob.start();
    bob.ok(&["join", &alice.ok(&["invite"]), "--wait", "20"]);

    // A port someone else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let cfg = alice.dir.join("config.toml");
    let before = std::fs::read_to_string(&cfg).unwrap();
    let pid = alice.json(&["status"])["pid"].clone();
    let out = up(&alice, &["--listen", &busy]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {busy}")) && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        before,
        "nothing saved"
    );
    assert_eq!(
        alice.json(&["status"])["pid"],
        pid,
        "the daemon kept running"
    );
    assert_eq!(link_now(&alice), "connected");

    // A machine that only joins: `up` never stops its working daemon to try a bad port,
    // and `--no-relay` runs it as it is.
    let bob_pid = bob.json(&["status"])["pid"].clone();
    let (code, err) = {
        let o = up(&bob, &["--listen", &busy]);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(bob.json(&["status"])["pid"], bob_pid);
    let out = up_ok(&bob, &["--no-relay"]);
    assert!(out.contains("claudemesh is up."), "{out}");
    assert!(out.contains("relay: none on this machine"), "{out}");
    assert_eq!(bob.json(&["status"])["pid"], bob_pid, "nothing to restart");

    // The relay hosts alice's mesh: --no-relay would cut bob off, so it is refused.
    let out = up(&alice, &["--no-relay"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("personal is hosted on this machine's relay"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before);

    // `down` stops the daemon and its relay; bob's link to it goes down.
    let out = alice.ok(&["down"]);
    assert!(
        out.contains(&format!("and its embedded relay on 127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.contains("Nobody reaches personal"), "{out}");
    let (code, _) = alice.fails(&["daemon", "status"]);
    assert_eq!(code, 3);
    bob.wait("link-down", None);
    assert_eq!(alice.ok(&["down"]), "claudemesh is not running.");

    // A bad port already in config.toml (edited by hand): `up` says where it comes from,
    // starts nothing, saves nothing.
    let edited = before.replace(&format!("127.0.0.1:{port}"), &busy);
    assert_ne!(edited, before);
    std::fs::write(&cfg, &edited).unwrap();
    let out = up(&alice, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`[relay] listen`"), "{err}");
    assert!(err.contains(&cfg.display().to_string()), "{err}");
    assert!(err.contains("--no-relay"), "{err}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), edited);
    let (code, _) = alice.fails(&["daemon", "status"]);
    assert_eq!(code, 3, "nothing was started");

    // Fixed with --listen: the relay runs there, the mesh names it, and bob follows (the
    // relay kept its certificate, so the record bob gets is alice's).
    let new_port = free_port(ip);
    let fixed = format!("127.0.0.1:{new_port}");
    let out = up_ok(&alice, &["--listen", &fixed]);
    assert!(out.contains("claudemesh is up."), "{out}");
    assert!(
        out.contains(&format!("changed: mesh personal now names {fixed}")),
        "{out}"
    );
    assert!(std::fs::read_to_string(&cfg).unwrap().contains(&fixed));
    drop(taken);
}

/// A relay operator between the members and the relay (it presents the relay's own
/// certificate): it keeps every op it forwards, sees what it delivers, and may swap an op
/// for an older one it kept.
#[derive(Default)]
struct Operator {
    /// Envelopes of `set_relay` ops seen, by sequence (the operator cannot open them; the
    /// test names which sequence is which).
    ops: Mutex<Vec<(u64, op::OpEnvelope)>>,
    delivered: Mutex<HashSet<String>>,
    /// (sequence to replace, envelope to put there, only for this member).
    swap: Mutex<Option<(u64, op::OpEnvelope, claudemesh_schema::crypto::MemberKey)>>,
    swapped: Mutex<u32>,
}

fn operator(relay: &claudemesh_tests::RelayProc, o: Arc<Operator>) -> Proxy {
    Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |sent, f| {
            let member = sent.iter().find_map(|c| match c {
                ClientFrame::Hello(h) => Some(h.member),
                _ => None,
            });
            match f {
                RelayFrame::Deliver { env, at } => {
                    o.delivered.lock().unwrap().insert(env.id.to_string());
                    RelayFrame::Deliver { env, at }
                }
                RelayFrame::Ops { mut ops, head } => {
                    for s in &ops {
                        o.ops.lock().unwrap().push((s.seq, s.op.clone()));
                    }
                    if let Some((seq, env, who)) = o.swap.lock().unwrap().clone()
                        && member == Some(who)
                    {
                        for s in ops.iter_mut().filter(|s| s.seq == seq) {
                            s.op = env.clone();
                            *o.swapped.lock().unwrap() += 1;
                        }
                    }
                    RelayFrame::Ops { ops, head }
                }
                other => other,
            }
        }),
    )
}

/// Wait (through the daemon) until `n` applied the log up to `seq`.
fn synced(n: &Node, seq: u64) {
    n.ok(&[
        "wait",
        "synced",
        "--seq",
        &seq.to_string(),
        "--timeout",
        "20",
    ]);
}

/// `mesh set-relay` by ann, returning the record's sequence.
fn set_relay(ann: &Node, addr: &str) -> u64 {
    let r = ann.json(&["mesh", "set-relay", addr]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(r["sequenced"], true, "{r}");
    assert_eq!(r["mesh"]["relay"], addr, "{r}");
    r["seq"].as_u64().unwrap()
}

/// A message from `from` to `to` arrives, and went through `via`.
fn arrives_via(from: &Node, to: &Node, via: &Operator, body: &str) {
    let sent = from.json(&["send", &to.name, body]);
    let got = to.inbox_wait();
    assert_eq!(bodies(&got), vec![body.to_string()]);
    let id = sent["id"].as_str().unwrap().to_string();
    assert!(
        via.delivered.lock().unwrap().contains(&id),
        "{body:?} did not come through the address the mesh names"
    );
}

#[test]
fn set_relay_moves_every_member_and_neither_a_relay_nor_a_member_can_move_anyone() {
    let root = tempfile::tempdir().unwrap();
    let (relay, nodes) = mesh(bin(), root.path(), &["ann", "ben", "cat"], &[]);
    let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
    let (o1, o2) = (Arc::new(Operator::default()), Arc::new(Operator::default()));
    let (p1, p2) = (operator(&relay, o1.clone()), operator(&relay, o2.clone()));
    let (a1, a2) = (p1.addr.to_string(), p2.addr.to_string());

    // Only the owner or an admin may move the mesh.
    let (code, err) = ben.fails(&["mesh", "set-relay", &a1]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("only the owner or an admin"), "{err}");
    // An address nobody answers at is refused before anyone is sent there.
    let dead = format!("127.0.0.1:{}", free_port("127.0.0.1".parse().unwrap()));
    let (code, err) = ann.fails(&["mesh", "set-relay", &dead]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("nothing changed"), "{err}");

    // The owner moves it to the second address: every member follows.
    let v1 = set_relay(ann, &a2);
    for n in [ben, cat] {
        synced(n, v1);
        assert_eq!(mesh0(n)["relay"], a2.as_str(), "{} followed", n.name);
    }
    arrives_via(ann, ben, &o2, "at the second address");
    arrives_via(ben, cat, &o2, "cat too");
    // ...and back to the first (through the second, whose operator keeps that record).
    let v2 = set_relay(ann, &a1);
    for n in [ben, cat] {
        synced(n, v2);
        assert_eq!(mesh0(n)["relay"], a1.as_str());
    }
    let record_v2 = o2
        .ops
        .lock()
        .unwrap()
        .iter()
        .find(|(s, _)| *s == v2)
        .map(|(_, e)| e.clone())
        .expect("the second address forwarded the record that moved everyone away");
    // ...and to the second again.
    let v3 = set_relay(ann, &a2);
    for n in [ben, cat] {
        synced(n, v3);
        assert_eq!(mesh0(n)["relay"], a2.as_str());
    }
    arrives_via(ann, ben, &o2, "back at the second address");

    // The relay's attack: replay ann's genuine older record ("go to the first address")
    // in place of ben's next op. It is signed by the owner and opens, but it is not newer
    // than the record standing, so ben stays.
    let ben_key =
        claudemesh_schema::crypto::MemberKey::from_b64(mesh0(ben)["member"].as_str().unwrap())
            .unwrap();
    let next = ann.json(&["state", "set", "k", "1"])["seq"]
        .as_u64()
        .unwrap()
        + 1;
    *o2.swap.lock().unwrap() = Some((next, record_v2, ben_key));
    let w = ann.json(&["state", "set", "k", "2"]);
    assert_eq!(w["seq"].as_u64(), Some(next), "{w}");
    synced(ben, next);
    assert_eq!(
        *o2.swapped.lock().unwrap(),
        1,
        "the operator replayed the record"
    );
    // Ben folded the replayed record in place of ann's write (it never saw k = 2).
    assert_eq!(ben.json(&["state", "get", "k"])["value"], 1);
    assert_eq!(ann.json(&["state", "get", "k"])["value"], 2);
    drop(p1);
    assert_eq!(mesh0(ben)["relay"], a2.as_str(), "the replay moved ben");
    arrives_via(ann, ben, &o2, "still here after the replay");

    // A member's attack: cat signs and seals a record (it holds the mesh key) and sends it
    // on a link of its own. The relay sequences it; no daemon folds it.
    let mesh_id: MeshId = mesh0(cat)["mesh"].as_str().unwrap().parse().unwrap();
    let keys = claudemesh_daemon::keys::MeshKeys::load(&cat.dir.join("keys"), &mesh_id).unwrap();
    let body = OpBody {
        id: OpId::new(),
        session: keys.session,
        name: "cat".into(),
        at: now_ms(),
        roster: None,
        op: Op::SetRelay {
            relay: dead.clone(),
            fingerprint: [7; 32],
            version: 1_000,
        },
    };
    let env = op::seal_op(&keys.mesh_key, &mesh_id, &keys.member, &body).unwrap();
    let seq = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let fp = claudemesh_schema::encoding::unb64_array::<32>(&relay.fingerprint).unwrap();
            let mut c = claudemesh_relay::connect(
                &relay.addr.to_string(),
                Some(fp),
                &claudemesh_relay::ConnectOptions::default(),
            )
            .await
            .unwrap();
            let hello = Hello::sign(
                &keys.member,
                mesh_id,
                keys.session,
                keys.session_secret.public(),
                now_ms(),
                "attack",
            );
            send(&mut c, &ClientFrame::Hello(hello)).await;
            until(&mut c, |f| {
                matches!(f, RelayFrame::Ready { .. }).then_some(())
            })
            .await;
            send(&mut c, &ClientFrame::Op(env)).await;
            let seq = until(&mut c, |f| match f {
                RelayFrame::OpAck { seq, .. } => Some(seq),
                _ => None,
            })
            .await;
            c.close().await;
            seq
        });
    for n in [ann, ben] {
        synced(n, seq);
        assert_eq!(mesh0(n)["relay"], a2.as_str(), "cat moved {}", n.name);
    }
    arrives_via(ann, ben, &o2, "nobody moved");
}

async fn send(c: &mut claudemesh_relay::Connection, f: &ClientFrame) {
    c.writer
        .send(bytes::Bytes::from(wire::encode(f).unwrap()))
        .await
        .unwrap();
}

async fn until<T>(
    c: &mut claudemesh_relay::Connection,
    mut pick: impl FnMut(RelayFrame) -> Option<T>,
) -> T {
    loop {
        let b = c.reader.next().await.unwrap().unwrap();
        if let Some(t) = pick(wire::decode::<RelayFrame>(&b).unwrap()) {
            return t;
        }
    }
}
