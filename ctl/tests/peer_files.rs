//! Peer folders (`share-dir`, `peer-file ls|cat`) between real daemons through a real
//! relay: reads inside a shared folder work, every way out of it is refused (each tried
//! as an attack), the `file-read` grant and `--to` are enforced by the sharing daemon,
//! and the relay stores nothing of what was read.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{Node, contains, mesh, mesh_on};
use std::path::{Path, PathBuf};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// A folder `proj` with a text file, a binary file and a subfolder, beside a secret file
/// and with links out of it; returns (the folder, the secret file).
fn folder(root: &Path) -> (PathBuf, PathBuf) {
    let proj = root.join("share-src").join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(proj.join("notes.txt"), "PEERFILE-TEXT-4c1d\nsecond line\n").unwrap();
    std::fs::write(proj.join("src/lib.rs"), "fn main() {}\n").unwrap();
    let binary: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe, 0x80]).collect();
    std::fs::write(proj.join("blob.bin"), binary).unwrap();
    let secret = root.join("share-src").join("secret.txt");
    std::fs::write(&secret, "SECRET-OUTSIDE-9e2b").unwrap();
    std::os::unix::fs::symlink(&secret, proj.join("out-link")).unwrap();
    std::os::unix::fs::symlink(root.join("share-src/missing"), proj.join("dangling")).unwrap();
    std::os::unix::fs::symlink(proj.join("notes.txt"), proj.join("in-link")).unwrap();
    std::fs::write(
        proj.join("big.log"),
        vec![b'y'; claudemesh_schema::message::MAX_PEER_FILE_BYTES as usize + 10],
    )
    .unwrap();
    (proj, secret)
}

fn cat(n: &Node, peer: &str, path: &str) -> Vec<u8> {
    let out = n.run(&["peer-file", "cat", peer, path]);
    assert!(
        out.status.success(),
        "peer-file cat {peer} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn refused(n: &Node, peer: &str, path: &str, why: &str) -> String {
    let (_, err) = n.fails(&["peer-file", "cat", peer, path]);
    assert!(err.contains(why), "cat {path}: wanted {why:?}, got {err}");
    err
}

claudemesh_tests::per_store! {
    fn a_peer_reads_text_and_binary_files_of_a_shared_folder_and_the_relay_sees_none_of_it(store) {
        let root = tempfile::tempdir().unwrap();
        let (relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let (alice, bob) = (&nodes[0], &nodes[1]);
        let (proj, _) = folder(root.path());
        // `--read-only` is accepted (it is the only mode).
        alice.ok(&["share-dir", proj.to_str().unwrap(), "--read-only"]);
        let list = alice.json(&["share-dir", "list"]);
        let shares = list["shares"].as_array().unwrap();
        assert_eq!(shares.len(), 1, "{list}");
        assert_eq!(shares[0]["name"], "proj");
        assert_eq!(shares[0]["read_only"], true);
        assert!(list["file"].as_str().unwrap().ends_with("shared-dirs.toml"));

        assert_eq!(
            cat(bob, "alice", "proj/notes.txt"),
            b"PEERFILE-TEXT-4c1d\nsecond line\n"
        );
        assert_eq!(
            cat(bob, "alice", "proj/blob.bin"),
            std::fs::read(proj.join("blob.bin")).unwrap()
        );
        // A link that stays inside is followed.
        assert_eq!(
            cat(bob, "alice", "./proj//in-link"),
            b"PEERFILE-TEXT-4c1d\nsecond line\n"
        );

        let top = bob.json(&["peer-file", "ls", "alice"]);
        assert_eq!(top["entries"][0]["path"], "proj", "{top}");
        let v = bob.json(&["peer-file", "ls", "alice", "proj"]);
        let entries = v["entries"].as_array().unwrap();
        let find = |p: &str| entries.iter().find(|e| e["path"] == p).cloned();
        let notes = find("proj/notes.txt").unwrap();
        assert_eq!(
            (notes["kind"].as_str(), notes["size"].as_u64()),
            (Some("file"), Some(31))
        );
        assert_eq!(find("proj/src").unwrap()["kind"], "dir");
        assert_eq!(find("proj/src/lib.rs").unwrap()["kind"], "file");
        assert_eq!(find("proj/out-link").unwrap()["kind"], "symlink");
        // Listings carry names and sizes, never contents.
        assert!(!v.to_string().contains("PEERFILE-TEXT"));
        let human = bob.ok(&["peer-file", "ls", "alice", "proj"]);
        assert!(human.contains("proj/notes.txt  31 bytes"), "{human}");

        // End to end: what was read is nowhere in the relay's storage.
        let stored = relay.stored_bytes();
        assert!(!stored.is_empty());
        assert!(!contains(&stored, b"PEERFILE-TEXT-4c1d"));
        assert!(!contains(&stored, b"notes.txt"));
    }
}

#[test]
fn paths_outside_the_shared_folder_are_refused_whether_or_not_they_exist() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let (proj, secret) = folder(root.path());
    alice.ok(&["share-dir", proj.to_str().unwrap()]);

    let outside = "outside the shared folder";
    let mut errors = Vec::new();
    for path in [
        "proj/../secret.txt",
        "proj/src/../../secret.txt",
        "../secret.txt",
        secret.to_str().unwrap(),
        "/etc/passwd",
        "proj/out-link",
        // A link to nothing outside reads exactly like a link to something.
        "proj/dangling",
    ] {
        let err = refused(bob, "alice", path, outside);
        assert!(!err.contains("SECRET-OUTSIDE"), "{err}");
        errors.push(err.replace(path, "<path>"));
    }
    assert_eq!(errors[5], errors[6], "a refusal does not tell what exists");
    let err = bob.fails(&["peer-file", "ls", "alice", "proj/.."]).1;
    assert!(err.contains(outside), "{err}");
    // Not shared, missing, too large: each said as such.
    refused(bob, "alice", "other/notes.txt", "not shared");
    refused(bob, "alice", "proj/nope.txt", "no \"proj/nope.txt\"");
    let err = refused(bob, "alice", "proj/big.log", "too large");
    assert!(err.contains("claudemesh file share"), "{err}");
    refused(bob, "alice", "proj/src", "not a regular file");
}

#[test]
fn the_file_read_grant_is_enforced_and_changes_apply_without_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let (proj, _) = folder(root.path());
    // Nothing shared yet.
    refused(bob, "alice", "proj/notes.txt", "not shared");
    alice.ok(&["share-dir", proj.to_str().unwrap()]);
    assert!(!cat(bob, "alice", "proj/notes.txt").is_empty());

    alice.ok(&["revoke", "bob", "file-read"]);
    refused(bob, "alice", "proj/notes.txt", "no file-read grant");
    let err = bob.fails(&["peer-file", "ls", "alice", "proj"]).1;
    assert!(err.contains("no file-read grant"), "{err}");
    // Revoking it is no longer "recorded only".
    let grants = alice.ok(&["grants"]);
    assert!(!grants.contains("not enforced"), "{grants}");
    alice.ok(&["grant", "bob", "file-read"]);
    assert!(!cat(bob, "alice", "proj/notes.txt").is_empty());

    alice.ok(&["share-dir", "rm", proj.to_str().unwrap()]);
    refused(bob, "alice", "proj/notes.txt", "not shared");
    assert_eq!(
        alice.json(&["share-dir", "list"])["shares"],
        serde_json::json!([])
    );
}

claudemesh_tests::per_store! {
    fn to_limits_which_members_may_read(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob", "carol"], &[]);
        let (alice, bob, carol) = (&nodes[0], &nodes[1], &nodes[2]);
        let (proj, _) = folder(root.path());
        alice.ok(&["share-dir", proj.to_str().unwrap(), "--to", "bob"]);
        let list = alice.json(&["share-dir", "list"]);
        assert!(
            list["shares"][0]["to"][0]
                .as_str()
                .unwrap()
                .starts_with("bob [key "),
            "{list}"
        );
        assert!(!cat(bob, "alice", "proj/notes.txt").is_empty());
        refused(carol, "alice", "proj/notes.txt", "not shared");
        let top = carol.json(&["peer-file", "ls", "alice"]);
        assert_eq!(top["entries"], serde_json::json!([]), "carol sees no share");

        // Shared with @dev as well: carol joins it (her status comes in the same presence,
        // so once alice sees her working she sees the group).
        alice.ok(&[
            "share-dir",
            proj.to_str().unwrap(),
            "--to",
            "bob",
            "--to",
            "@dev",
        ]);
        carol.ok(&["profile", "--groups", "dev", "--status", "working"]);
        alice.wait("peer-working", Some("carol"));
        assert!(!cat(carol, "alice", "proj/notes.txt").is_empty());
    }
}

claudemesh_tests::per_store! {
    fn an_offline_peer_is_reported_offline(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["alice", "bob"], &[]);
        let (proj, _) = folder(root.path());
        nodes[0].ok(&["share-dir", proj.to_str().unwrap()]);
        nodes[0].stop();
        nodes[1].wait("peer-offline", Some("alice"));
        let (_, err) = nodes[1].fails(&["peer-file", "cat", "alice", "proj/notes.txt"]);
        assert!(err.contains("offline"), "{err}");
        let (_, err) = nodes[1].fails(&["peer-file", "ls", "alice"]);
        assert!(err.contains("offline"), "{err}");
    }
}

#[test]
fn share_dir_refuses_a_folder_holding_the_daemon_keys() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (_, err) = nodes[0].fails(&["share-dir", root.path().to_str().unwrap()]);
    assert!(err.contains("config directory"), "{err}");
    let (_, err) = nodes[0].fails(&["share-dir", nodes[0].dir.to_str().unwrap()]);
    assert!(err.contains("config directory"), "{err}");
}
