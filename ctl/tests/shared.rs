#![allow(clippy::unwrap_used)]
//! Shared mesh state end to end: real relay and daemon processes, the real CLI.

use claudemesh_tests::{Node, contains, mesh, mesh_on, mesh_with};
use serde_json::Value;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

fn digest(n: &Node) -> Value {
    n.json(&["debug", "digest"])
}

/// Wait until `n` is in sync and has applied at least `seq`.
fn synced(n: &Node, seq: u64) {
    n.ok(&[
        "wait",
        "synced",
        "--seq",
        &seq.to_string(),
        "--timeout",
        "30",
    ]);
}

fn state_value(n: &Node, key: &str) -> Value {
    n.json(&["state", "get", key])["value"].clone()
}

claudemesh_tests::per_store! {
    fn three_daemons_converge_after_one_was_cut_off(store) {
        let root = tempfile::tempdir().unwrap();
        let (relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);

        let task = ann.json(&["task", "create", "fix", "the", "flaky", "build"]);
        let task_id = task["id"].as_str().unwrap().to_string();
        let seq = task["seq"]
            .as_u64()
            .expect("online write is sequenced at once");
        for n in &nodes {
            synced(n, seq);
        }

        // Cat goes offline; everyone keeps writing, to the same keys, the same task, and
        // overlapping files.
        cat.ok(&["debug", "link", "down"]);
        cat.wait("link-down", None);
        let cat_claim = cat.json(&["task", "claim", &task_id[..8]]);
        assert!(
            cat_claim["won"].is_null(),
            "offline claim is pending: {cat_claim}"
        );
        let w = cat.json(&["state", "set", "color", "green"]);
        assert!(w["seq"].is_null(), "offline write is pending: {w}");
        cat.ok(&["state", "set", "only-cat", "{\"n\": 1}"]);
        cat.ok(&[
            "remember", "cat", "thinks", "the", "cache", "is", "stale", "--tags", "cache",
        ]);
        cat.ok(&["reserve", "src/cache/**", "--reason", "refactor"]);
        // Offline reads answer at once, with own writes on top.
        assert_eq!(state_value(cat, "color"), "green");

        ann.ok(&["state", "set", "color", "red"]);
        ben.ok(&["state", "set", "color", "blue"]);
        let ben_claim = ben.json(&["task", "claim", &task_id]);
        assert_eq!(ben_claim["won"], true, "{ben_claim}");
        ann.ok(&["remember", "deploys", "go", "through", "staging", "first"]);
        ann.ok(&[
            "context",
            "share",
            "the",
            "cache",
            "layer",
            "is",
            "write-through",
            "--files",
            "src/cache/mod.rs",
            "--finding",
            "eviction is LRU",
        ]);
        let skill = ann.run_stdin(
            &[
                "skill",
                "share",
                "release",
                "--description",
                "cut a release",
            ],
            &[],
            b"run the secret-release-procedure script",
        );
        assert!(skill.status.success(), "{skill:?}");
        ben.ok(&["reserve", "src/cache/mod.rs", "--reason", "bugfix"]);
        let ann_res = ann.json(&["reserve", "src/**/*.rs", "--shared"]);
        assert!(ann_res["seq"].is_u64());

        // Cat comes back: its writes are published in order and lose the races they lost.
        cat.ok(&["debug", "link", "up"]);
        cat.wait("link-up", None);
        synced(cat, 0);
        let head = digest(cat)["seq"].as_u64().unwrap();
        synced(ann, head);
        synced(ben, head);

        let digests: Vec<Value> = nodes.iter().map(digest).collect();
        for d in &digests {
            assert_eq!(d["digest"], digests[0]["digest"], "{digests:?}");
            assert_eq!(d["seq"], head);
            assert_eq!(d["pending"], 0);
        }
        assert_eq!(digests[0]["counts"]["memories"], 2);
        assert_eq!(digests[0]["counts"]["skills"], 1);
        assert_eq!(digests[0]["counts"]["contexts"], 1);
        assert_eq!(
            cat.ok(&["skill", "get", "release"]),
            "run the secret-release-procedure script"
        );
        let ctx = cat.json(&["context", "list", "cache"]);
        assert_eq!(ctx["contexts"][0]["key_findings"][0], "eviction is LRU");
        // Cat's write was sequenced last, so it wins on every machine.
        for n in &nodes {
            assert_eq!(state_value(n, "color"), "green");
            let tasks = n.json(&["task", "list"]);
            let t = &tasks["tasks"][0];
            assert_eq!(t["status"], "claimed");
            let winner = format!("ben [key {}]", short_fingerprint(ben));
            assert_eq!(
                t["assignee"],
                winner.as_str(),
                "the same single winner everywhere"
            );
            let res = n.json(&["reservations", "--all"]);
            let by: Vec<(String, String)> = res["reservations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["holder"]
                            .as_str()
                            .unwrap()
                            .split(" [key ")
                            .next()
                            .unwrap()
                            .to_string(),
                        r["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert!(by.contains(&("ben".into(), "active".into())), "{by:?}");
            assert!(by.contains(&("cat".into(), "refused".into())), "{by:?}");
        }
        // Reservations show in `peers`, counts in `status`.
        let peers = ann.json(&["peers"]);
        let ben_peer = peers["meshes"][0]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ben")
            .cloned()
            .unwrap();
        assert_eq!(
            ben_peer["reservations"],
            serde_json::json!(["src/cache/mod.rs"])
        );
        let st = cat.json(&["status"]);
        assert_eq!(st["meshes"][0]["shared"]["memories"], 2, "{st}");
        assert_eq!(st["meshes"][0]["log_seq"], head);
        assert_eq!(st["meshes"][0]["log_pending"], 0);
        // The loser is told, in its inbox, by its own daemon.
        let told = cat.inbox_wait();
        let kinds: Vec<&str> = told.iter().map(|m| m["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&"task"), "{told:?}");
        assert!(kinds.contains(&"reservation"), "{told:?}");
        assert!(
            told.iter()
                .any(|m| m["body"].as_str().unwrap().contains("claimed by \"ben\"")),
            "{told:?}"
        );

        // The relay stored only ciphertext.
        let bytes = relay.stored_bytes();
        for secret in [
            &b"flaky build"[..],
            b"color",
            b"green",
            b"staging",
            b"stale",
            b"src/cache",
            b"refactor",
            b"secret-release-procedure",
            b"write-through",
            b"eviction",
        ] {
            assert!(
                !contains(&bytes, secret),
                "relay db contains {:?}",
                String::from_utf8_lossy(secret)
            );
        }
    }
}

#[test]
fn audit_verify_names_the_op_altered_at_the_relay() {
    let root = tempfile::tempdir().unwrap();
    let (relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    for i in 0..5 {
        ann.ok(&["state", "set", &format!("k{i}"), &i.to_string()]);
    }
    let head = digest(ann)["seq"].as_u64().unwrap();
    synced(ben, head);
    let ok = ben.json(&["audit", "verify"]);
    assert!(ok["first_broken"].is_null(), "{ok}");
    assert_eq!(ok["checked"], 5);
    assert_eq!(ok["relay_head"], 5);

    // Flip one byte of the third op's ciphertext in the relay's database.
    let db = rusqlite::Connection::open(relay.db()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let op: Vec<u8> = db
        .query_row("SELECT op FROM ops WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    let mut v: Value = serde_json::from_slice(&op).unwrap();
    let ct = v["ct"].as_str().unwrap().to_string();
    let mut chars: Vec<char> = ct.chars().collect();
    chars[40] = if chars[40] == 'A' { 'B' } else { 'A' };
    v["ct"] = Value::String(chars.into_iter().collect());
    db.execute(
        "UPDATE ops SET op = ?1 WHERE seq = 3",
        [serde_json::to_vec(&v).unwrap()],
    )
    .unwrap();
    drop(db);

    let out = ben.run(&["audit", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["first_broken"], 3, "{r}");
    assert!(r["problem"].as_str().unwrap().contains("seq 3"), "{r}");
    let (_, err) = ben.fails(&["audit", "verify"]);
    assert!(err.contains("seq 3"), "{err}");
}

#[test]
fn recall_ranks_memories_with_the_relay_stopped() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    ann.ok(&[
        "remember",
        "the",
        "deploy",
        "script",
        "lives",
        "in",
        "ops/deploy.sh",
        "--tags",
        "ops",
    ]);
    ann.ok(&[
        "remember", "staging", "deploy", "needs", "a", "VPN", "before", "deploy", "--tags",
        "ops,vpn",
    ]);
    ann.ok(&["remember", "lunch", "is", "at", "noon"]);
    let head = digest(ann)["seq"].as_u64().unwrap();
    synced(ben, head);
    relay.stop();
    ben.wait("link-down", None);

    let r = ben.json(&["recall", "deploy", "vpn"]);
    let texts: Vec<&str> = r["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 2, "{r}");
    assert!(texts[0].contains("VPN"), "best match first: {texts:?}");
    let scores: Vec<f64> = r["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["score"].as_f64().unwrap())
        .collect();
    assert!(scores[0] >= scores[1]);
    let tagged = ben.json(&["recall", "deploy", "--tag", "vpn"]);
    assert_eq!(tagged["memories"].as_array().unwrap().len(), 1);
    let none = ben.json(&["recall", "kubernetes"]);
    assert!(none["memories"].as_array().unwrap().is_empty());

    // Forget works offline too, and is published when the relay returns.
    let id = r["memories"][1]["id"].as_str().unwrap().to_string();
    ben.ok(&["forget", &id[..8]]);
    assert_eq!(
        ben.json(&["recall", "deploy"])["memories"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    relay.restart();
    ben.wait("link-up", None);
    synced(ben, 0);
    let head = digest(ben)["seq"].as_u64().unwrap();
    synced(ann, head);
    assert_eq!(digest(ann)["digest"], digest(ben)["digest"]);
    assert_eq!(
        ann.json(&["recall", "deploy"])["memories"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

fn reminder(n: &Node, id: &str) -> Value {
    let all = n.json(&["remind", "list", "--all"]);
    all["reminders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{} does not know reminder {id}: {all}", n.name))
}

/// Every node in sync with `n`'s log head.
fn all_synced(nodes: &[Node], n: &Node) {
    synced(n, 0);
    let head = digest(n)["seq"].as_u64().unwrap();
    for x in nodes {
        synced(x, head);
    }
}

claudemesh_tests::per_store! {
    fn reminders_fire_once_per_due_time_also_across_a_restart_of_the_firing_daemon(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let cron = nodes[0].json(&["remind", "standup", "--cron", "*/10 * * * *", "--to", "ben"]);
        let cron_id = cron["id"].as_str().unwrap().to_string();
        let once = nodes[0].json(&["remind", "drink", "water", "--in", "1h"]);
        let once_id = once["id"].as_str().unwrap().to_string();
        all_synced(&nodes, &nodes[0]);
        for n in &nodes {
            let r = reminder(n, &cron_id);
            assert_eq!(r["fired"], 0);
            assert_eq!(r["status"], "scheduled");
            assert!(r["next_due"].is_i64(), "{r}");
        }

        // The next period comes: ann's daemon (the scheduler's) delivers it, once. (Just past
        // it: a fixed 10 minutes would reach the one after when the real clock passes a
        // 10-minute mark between the `remind` and this.)
        let next_due = reminder(&nodes[0], &cron_id)["next_due"].as_i64().unwrap();
        let secs = (next_due - claudemesh_schema::now_ms()) / 1000 + 2;
        nodes[0].ok(&["debug", "clock", "--advance", &format!("{secs}s")]);
        let got = nodes[1].inbox_wait();
        assert_eq!(bodies(&got), vec!["standup"], "{got:?}");
        // A reminder another member set arrives as a message from that member: the
        // `reminder` kind is kept for this machine's own (a peer cannot forge one).
        assert_eq!(got[0]["kind"], "text");
        assert_eq!(got[0]["from_name"], "ann");
        // The firing is folded everywhere.
        nodes[0].ok(&["wait", "synced", "--seq", "3", "--timeout", "30"]);
        all_synced(&nodes, &nodes[0]);
        let first_due = reminder(&nodes[0], &cron_id)["last_due"].as_i64().unwrap();
        for n in &nodes {
            let r = reminder(n, &cron_id);
            assert_eq!(r["fired"], 1, "{} {r}", n.name);
            assert_eq!(r["last_due"], first_due);
        }
        assert!(
            nodes[2].inbox_peek().is_empty(),
            "only the addressed peer gets it"
        );

        // Kill the firing daemon and start it again: the period already delivered is not
        // delivered again; the next one is, once.
        nodes[0].kill();
        nodes[0].start();
        nodes[0].wait("link-up", None);
        all_synced(&nodes, &nodes[0]);
        assert_eq!(reminder(&nodes[0], &cron_id)["fired"], 1);
        // The restart reset ann's clock shift: move it just past the next period, never as
        // far as the one after (a fixed 20 minutes did reach it when the real clock passed a
        // 10-minute mark during the test: a third firing, rightly).
        let next_due = reminder(&nodes[0], &cron_id)["next_due"].as_i64().unwrap();
        let secs = (next_due - claudemesh_schema::now_ms()) / 1000 + 2;
        nodes[0].ok(&["debug", "clock", "--advance", &format!("{secs}s")]);
        let got = nodes[1].inbox_wait();
        assert_eq!(bodies(&got), vec!["standup"], "{got:?}");
        nodes[0].ok(&["wait", "synced", "--seq", "4", "--timeout", "30"]);
        all_synced(&nodes, &nodes[0]);
        for n in &nodes {
            let r = reminder(n, &cron_id);
            assert_eq!(r["fired"], 2, "{} {r}", n.name);
            assert!(r["last_due"].as_i64().unwrap() > first_due);
        }

        // Cancel the recurring one; the one-shot fires once, to ann herself, and is done.
        nodes[0].ok(&["remind", "cancel", &cron_id[..8]]);
        nodes[0].ok(&["debug", "clock", "--advance", "1h"]);
        let mine = nodes[0].inbox_wait();
        assert_eq!(bodies(&mine), vec!["drink water"], "{mine:?}");
        assert_eq!(mine[0]["kind"], "reminder");
        nodes[0].ok(&["wait", "synced", "--seq", "6", "--timeout", "30"]);
        all_synced(&nodes, &nodes[0]);
        for n in &nodes {
            let r = reminder(n, &once_id);
            assert_eq!(r["fired"], 1, "{} {r}", n.name);
            assert_eq!(r["status"], "done");
            assert_eq!(reminder(n, &cron_id)["status"], "cancelled");
        }
        assert!(nodes[1].inbox_peek().is_empty(), "no third standup");
        let listed = nodes[1].json(&["remind", "list"]);
        assert!(
            listed["reminders"].as_array().unwrap().is_empty(),
            "{listed}"
        );
    }
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["body"].as_str().unwrap_or("").to_string())
        .collect()
}

claudemesh_tests::per_store! {
    fn state_watch_prints_changes_made_anywhere_in_the_mesh(store) {
        use std::io::BufRead as _;
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let mut watch = nodes[1].spawn(&["state", "watch", "deploy/", "--json"]);
        let mut err = std::io::BufReader::new(watch.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("watching"), "{line}");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        nodes[0].ok(&["state", "set", "other", "1"]);
        nodes[0].ok(&["state", "set", "deploy/status", "green"]);
        nodes[0].ok(&["state", "set", "deploy/status", "null"]);
        let first: Value =
            serde_json::from_str(&rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap())
                .unwrap();
        assert_eq!(first["key"], "deploy/status", "the prefix filters: {first}");
        assert_eq!(first["value"], "green");
        assert_eq!(first["by"], "ann");
        let second: Value =
            serde_json::from_str(&rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap())
                .unwrap();
        assert!(second["value"].is_null(), "deletion: {second}");
        assert!(second["seq"].as_u64() > first["seq"].as_u64());
        let _ = watch.kill();
        let _ = watch.wait();
    }
}

#[test]
fn a_new_member_starts_from_a_snapshot_and_the_relay_drops_the_ops_it_covers() {
    let root = tempfile::tempdir().unwrap();
    let cfg = "[state]\nsnapshot_every = 5\n";
    let (relay, nodes) = mesh_with(bin(), root.path(), &["ann", "ben"], &[], cfg);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    for i in 0..6 {
        ann.ok(&["state", "set", &format!("k{i}"), &i.to_string()]);
    }
    ann.ok(&[
        "remember",
        "snapshots",
        "carry",
        "memories",
        "too",
        "--tags",
        "snap",
    ]);
    ann.ok(&["task", "create", "ship", "it"]);
    ben.ok(&["state", "set", "k0", "from ben"]);
    for i in 6..10 {
        ann.ok(&["state", "set", &format!("k{i}"), &i.to_string()]);
    }
    // 13 ops: ann wrote the 5th and the 10th (ben the 9th), so ann snapshots at 5 and at 10,
    // and the relay keeps only the newest and the ops after it.
    all_synced(&nodes, ann);
    let head = digest(ann)["seq"].as_u64().unwrap();
    assert_eq!(head, 13);
    let audit = ann.json(&["audit", "verify"]);
    assert_eq!(audit["relay_first"], 11, "{audit}");
    assert!(audit["first_broken"].is_null(), "{audit}");
    let relay_ops: i64 = rusqlite::Connection::open(relay.db())
        .unwrap()
        .query_row("SELECT count(*) FROM ops WHERE length(op) > 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(relay_ops, 3, "ops 11..=13 remain");

    // Cat joins now: it gets the snapshot at 10 plus three ops, and folds to the same state.
    let mut cat = Node::with_config(bin(), root.path(), "cat", cfg);
    cat.start();
    let link = ann.ok(&["invite"]);
    cat.ok(&["join", &link, "--wait", "20"]);
    synced(&cat, head);
    let want = digest(ann);
    let got = digest(&cat);
    assert_eq!(got["digest"], want["digest"], "{got} vs {want}");
    assert_eq!(got["counts"]["memories"], 1);
    assert_eq!(state_value(&cat, "k0"), "from ben");
    assert_eq!(state_value(&cat, "k9"), 9);
    let r = cat.json(&["recall", "memories"]);
    assert_eq!(
        r["memories"].as_array().unwrap().len(),
        1,
        "the FTS index is rebuilt: {r}"
    );
    // Its chain starts at the snapshot and checks out against the relay.
    let audit = cat.json(&["audit", "verify"]);
    assert!(audit["first_broken"].is_null(), "{audit}");
    assert_eq!(audit["checked"], 3);
    // And it keeps going from there.
    cat.ok(&["state", "set", "k10", "10"]);
    all_synced(&nodes, &cat);
    assert_eq!(digest(ann)["digest"], digest(&cat)["digest"]);
}

fn share_skill(n: &Node, description: &str) -> std::process::Output {
    n.run_stdin(
        &["skill", "share", "deploy", "--description", description],
        &[],
        b"run deploy.sh",
    )
}

fn skill_description(n: &Node) -> Option<String> {
    let v = n.json(&["skill", "list"]);
    v["skills"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "deploy"))
        .and_then(|s| s["description"].as_str().map(str::to_string))
}

claudemesh_tests::per_store! {
    fn a_member_cannot_replace_or_remove_another_members_skill_but_its_author_and_an_admin_can(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let (ann, ben, cat) = (&nodes[0], &nodes[1], &nodes[2]);
        let all_at = |want: Option<&str>| {
            let head = digest(ann)["seq"]
                .as_u64()
                .unwrap()
                .max(digest(ben)["seq"].as_u64().unwrap())
                .max(digest(cat)["seq"].as_u64().unwrap());
            for n in &nodes {
                synced(n, head);
            }
            let digests: Vec<Value> = nodes.iter().map(digest).collect();
            for (n, d) in nodes.iter().zip(&digests) {
                assert_eq!(d["digest"], digests[0]["digest"], "{digests:?}");
                assert_eq!(skill_description(n).as_deref(), want, "on {}", n.name);
            }
        };
        assert!(share_skill(ben, "ben's").status.success());
        all_at(Some("ben's"));
        // Cat (a member) tries to replace and to remove it: folded as no change everywhere.
        assert!(share_skill(cat, "cat's").status.success());
        all_at(Some("ben's"));
        cat.ok(&["skill", "remove", "deploy"]);
        all_at(Some("ben's"));
        // Its author can; the owner (an admin) can.
        assert!(share_skill(ben, "ben's v2").status.success());
        all_at(Some("ben's v2"));
        assert!(share_skill(ann, "ann's").status.success());
        all_at(Some("ann's"));
        ann.ok(&["skill", "remove", "deploy"]);
        all_at(None);
    }
}

/// The short fingerprint `peers` and `whoami` show for `n`'s member key.
fn short_fingerprint(n: &Node) -> String {
    let fp = n.json(&["whoami"])["identities"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    fp.chars().take(9).collect()
}

claudemesh_tests::per_store! {
    fn a_shared_write_names_the_key_that_signed_it_not_only_the_name_it_claims(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let (ann, ben) = (&nodes[0], &nodes[1]);
        let (ann_fp, ben_fp) = (short_fingerprint(ann), short_fingerprint(ben));
        assert_ne!(ann_fp, ben_fp);
        // Ben takes ann's name, then writes everywhere an author is shown.
        ben.ok(&["profile", "--name", "ann"]);
        ben.ok(&["state", "set", "deploy", "\"approved\""]);
        ben.ok(&["remember", "ann", "approved", "the", "deploy"]);
        ben.ok(&["task", "create", "ship", "it"]);
        ben.ok(&["context", "share", "review:", "all", "good"]);
        let head = digest(ben)["seq"].as_u64().unwrap();
        synced(ann, head);
        let by_ben = format!("ann [key {ben_fp}]");
        let state = ann.json(&["state", "get", "deploy"]);
        assert_eq!(state["updated_by"], by_ben.as_str(), "{state}");
        let mem = ann.json(&["recall", "deploy"]);
        assert_eq!(mem["memories"][0]["author"], by_ben.as_str(), "{mem}");
        let tasks = ann.json(&["task", "list"]);
        assert_eq!(tasks["tasks"][0]["created_by"], by_ben.as_str(), "{tasks}");
        let ctx = ann.json(&["context", "list"]);
        assert_eq!(ctx["contexts"][0]["author"], by_ben.as_str(), "{ctx}");
        // The human tables carry it too, so the two "ann"s never read alike.
        let shown = ann.ok(&["state", "list"]);
        assert!(shown.contains(&ben_fp), "{shown}");
        assert!(!shown.contains(&ann_fp), "{shown}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// "The relay's log is behind this daemon's" is for a relay that lost ops (restored from
/// an old backup), said once per link; reconnects while others write (live ops overtaking
/// the catch-up page) never raise it.
#[test]
fn only_a_relay_that_lost_ops_is_reported_behind() {
    const BEHIND: &str = "the relay's log is behind";
    let root = tempfile::tempdir().unwrap();
    let (mut relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    for i in 0..6 {
        ann.ok(&["debug", "link", "down"]);
        for j in 0..5 {
            ben.ok(&["state", "set", &format!("k{i}-{j}"), "1"]);
        }
        ann.ok(&["debug", "link", "up"]);
        for j in 0..5 {
            ben.ok(&["state", "set", &format!("live{i}-{j}"), "1"]);
        }
    }
    all_synced(&nodes, ben);
    assert_eq!(state_value(ann, "live5-4"), 1);
    assert!(!ann.log().contains(BEHIND), "{}", ann.log());

    // A backup of the relay, more writes, then the backup put back: the relay lost them.
    relay.stop();
    let backup = root.path().join("relay-backup");
    copy_dir(&relay.data_dir, &backup);
    relay.restart();
    ben.ok(&["state", "set", "after-the-backup", "1"]);
    all_synced(&nodes, ben);
    relay.stop();
    // Put back as a restore does: the backup's files only (a WAL written since, left
    // beside the old database, would replay the lost ops into it).
    for e in std::fs::read_dir(&relay.data_dir).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    copy_dir(&backup, &relay.data_dir);
    relay.restart();
    ann.wait_logged(BEHIND);
    assert_eq!(ann.log().matches(BEHIND).count(), 1, "once per link");
}
