//! Shared files end to end: real relay, real daemons, the CLI as users run it.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::{Node, mesh, mesh_on};
use serde_json::Value;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// `n` bytes nobody could guess (a xorshift stream; no dependency for it).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn share(n: &Node, path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["file", "share", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    n.json(&args)
}

fn get(n: &Node, id: &str, out: &Path) -> Value {
    n.json(&["file", "get", id, "-o", out.to_str().unwrap()])
}

fn list(n: &Node) -> Vec<Value> {
    n.json(&["file", "list"])["files"]
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until `n` lists the file `id` (its share op reached that daemon).
fn wait_listed(n: &Node, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(f) = list(n).into_iter().find(|f| f["id"] == id) {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never listed file {id}",
            n.name
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

claudemesh_tests::per_store! {
    fn a_file_shared_with_one_peer_is_for_no_one_else_until_granted(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben", "cat"], &[]);
        let src = root.path().join("plan.md");
        std::fs::write(&src, "# the plan\nship it on friday\n").unwrap();
        let f = share(&nodes[0], &src, &["--to", "ben"]);
        let id = f["file"].as_str().unwrap().to_string();
        assert_eq!(f["name"], "plan.md");
        // Ben reads it; cat sees that it exists, not what it is, and cannot fetch it.
        let got = root.path().join("ben-plan.md");
        let g = get(&nodes[1], &id, &got);
        assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&src).unwrap());
        assert_eq!(g["name"], "plan.md");
        let seen = wait_listed(&nodes[2], &id);
        assert_eq!(seen["readable"], false, "{seen}");
        assert!(seen["name"].is_null(), "{seen}");
        let out = root.path().join("cat-plan.md");
        let (code, err) = nodes[2].fails(&["file", "get", &id, "-o", out.to_str().unwrap()]);
        assert_ne!(code, 0);
        assert!(err.contains("not with you"), "{err}");
        assert!(!out.exists());
        // Cat is not the author: it cannot grant itself.
        let (_, err) = nodes[2].fails(&["file", "grant", &id, "cat"]);
        assert!(err.contains("only they or an admin"), "{err}");
        // Ann grants: cat fetches with nothing uploaded again.
        nodes[0].ok(&["file", "grant", &id, "cat"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while list(&nodes[2])
            .iter()
            .any(|f| f["id"] == id.as_str() && f["readable"] == false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the grant never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        get(&nodes[2], &id, &out);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
        // Ann sees who fetched it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let st = nodes[0].json(&["file", "status", &id]);
            let who: Vec<String> = st["fetched"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["who"].as_str().unwrap().to_string())
                .collect();
            if who.len() == 2 {
                assert!(who.iter().any(|w| w.starts_with("ben")), "{st}");
                assert!(who.iter().any(|w| w.starts_with("cat")), "{st}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fetches never reported: {st}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Deleting it takes it from every list.
        nodes[0].ok(&["file", "rm", &id]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while list(&nodes[1]).iter().any(|f| f["id"] == id.as_str()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the delete never arrived"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

claudemesh_tests::per_store! {
    fn a_mesh_wide_file_reaches_every_member_byte_for_byte(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let src = root.path().join("data.bin");
        let data = random_bytes(3 * 128 * 1024 + 77, 7);
        std::fs::write(&src, &data).unwrap();
        let f = share(&nodes[0], &src, &["--tags", "build,nightly"]);
        let id = f["file"].as_str().unwrap().to_string();
        assert_eq!(f["chunks"], 4);
        assert_eq!(f["size"], data.len());
        let listed = wait_listed(&nodes[1], &id);
        assert_eq!(listed["readable"], true);
        assert_eq!(listed["tags"], serde_json::json!(["build", "nightly"]));
        let out = root.path().join("got.bin");
        get(&nodes[1], &id, &out);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // Fetching it again to the same place finds it there; another file there is kept
        // unless forced.
        let again = get(&nodes[1], &id, &out);
        assert_eq!(again["from_cache"], 4, "{again}");
        std::fs::write(&out, b"something else").unwrap();
        let (_, err) = nodes[1].fails(&["file", "get", &id, "-o", out.to_str().unwrap()]);
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"something else");
        nodes[1].ok(&["file", "get", &id, "-o", out.to_str().unwrap(), "--force"]);
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
}

/// Files in a directory (recursively), to watch a transfer's progress from outside.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

claudemesh_tests::per_store! {
    /// kill -9 of the sharing daemon mid-upload and of the fetching one mid-download: each
    /// picks its transfer up again when it starts, and the target path never holds a part.
    fn killed_transfers_resume_and_never_leave_a_torn_file(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        for n in nodes.iter_mut() {
            n.stop();
            n.log_filter = "info".into();
            n.start();
        }
        nodes[0].wait("link-up", None);
        nodes[1].wait("link-up", None);
        let src = root.path().join("big.bin");
        let data = random_bytes(48 << 20, 11);
        std::fs::write(&src, &data).unwrap();
        // The share runs in the background (its CLI call dies with the daemon).
        let mut call = nodes[0].spawn(&["file", "share", src.to_str().unwrap()]);
        let cache = nodes[0].dir.join("files");
        wait_until("the upload started", || count_files(&cache) >= 24);
        nodes[0].kill();
        let _ = call.wait();
        nodes[0].start();
        wait_until("ann's share resumed and finished", || {
            nodes[0]
                .log()
                .contains("an interrupted file transfer finished")
        });
        let id = {
            let mut id = None;
            wait_until("ben lists the file", || {
                id = list(&nodes[1])
                    .into_iter()
                    .find(|f| f["name"] == "big.bin")
                    .map(|f| f["id"].as_str().unwrap().to_string());
                id.is_some()
            });
            id.unwrap()
        };
        let out = root.path().join("ben-big.bin");
        let part = root.path().join("ben-big.bin.claudemesh-part");
        let mut fetch = nodes[1].spawn(&["file", "get", &id, "-o", out.to_str().unwrap()]);
        wait_until("the download started", || {
            std::fs::metadata(&part).is_ok_and(|m| m.len() >= 4 << 20)
        });
        nodes[1].kill();
        let _ = fetch.wait();
        assert!(!out.exists(), "a part was never at the target path");
        nodes[1].start();
        wait_until("ben's fetch resumed and finished", || {
            nodes[1]
                .log()
                .contains("an interrupted file transfer finished")
        });
        assert!(!part.exists());
        assert!(
            std::fs::read(&out).unwrap() == data,
            "the resumed file is the file"
        );
    }
}

/// Finds any 64-byte window of a plaintext in other bytes: every such window contains a
/// 32-byte block of the plaintext that starts at a multiple of 32, so those blocks are
/// indexed (by a rolling hash) and every 32-byte window of the haystack is looked up.
struct Windows {
    plain: std::sync::Arc<Vec<u8>>,
    blocks: std::collections::HashMap<u64, usize>,
    /// One bit per hash prefix: most windows are ruled out without the map.
    filter: Vec<u64>,
}

const ROLL_BASE: u64 = 0x100000001b3;

impl Windows {
    fn new(plain: std::sync::Arc<Vec<u8>>) -> Self {
        let mut blocks = std::collections::HashMap::new();
        let mut filter = vec![0u64; 1 << 20];
        for (i, b) in plain.chunks_exact(32).enumerate() {
            let h = Self::hash(b);
            blocks.insert(h, i * 32);
            filter[(h >> 44) as usize] |= 1 << (h & 63);
        }
        Self {
            plain,
            blocks,
            filter,
        }
    }

    fn hash(b: &[u8]) -> u64 {
        b.iter().fold(0u64, |h, &x| {
            h.wrapping_mul(ROLL_BASE).wrapping_add(x as u64 + 1)
        })
    }

    /// Where in `hay` a plaintext block shows, if anywhere.
    fn find_in(&self, hay: &[u8]) -> Option<usize> {
        if hay.len() < 32 {
            return None;
        }
        let top = (0..31).fold(1u64, |p, _| p.wrapping_mul(ROLL_BASE));
        let mut h = Self::hash(&hay[..32]);
        for i in 0..=hay.len() - 32 {
            if i > 0 {
                h = h
                    .wrapping_sub((hay[i - 1] as u64 + 1).wrapping_mul(top))
                    .wrapping_mul(ROLL_BASE)
                    .wrapping_add(hay[i + 31] as u64 + 1);
            }
            if self.filter[(h >> 44) as usize] & (1 << (h & 63)) != 0
                && let Some(&at) = self.blocks.get(&h)
                && hay[i..i + 32] == self.plain[at..at + 32]
            {
                return Some(i);
            }
        }
        None
    }
}

fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            all_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// The acceptance scenario: 50 MiB shared with the whole mesh, fetched by two members
/// whose links (and the sharer's) run through a tap on the relay's port; nothing the
/// relay stores or sends holds 64 bytes of the file or its name.
#[test]
fn fifty_mebibytes_shared_mesh_wide_reach_two_members_and_the_relay_sees_only_ciphertext() {
    use claudemesh_schema::wire::{self, ClientFrame, RelayFrame};
    use claudemesh_tests::proxy::Proxy;
    use std::sync::{Arc, Mutex};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let name = "quarterly-numbers-7f3a9c.bin";
    let data = Arc::new(random_bytes(50 << 20, 23));
    let windows = Arc::new(Windows::new(data.clone()));
    // (frames seen, where plaintext or the name showed)
    let seen: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
    let (w, s) = (windows.clone(), seen.clone());
    let tap = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |sent: &[ClientFrame], f: RelayFrame| {
            // What the relay sends, and the newest thing the client sent.
            let mut frames: Vec<Vec<u8>> = vec![wire::encode(&f).unwrap()];
            let mut sealed: Vec<Vec<u8>> = Vec::new();
            match &f {
                RelayFrame::Chunk { data, .. } => sealed.push(data.clone()),
                RelayFrame::Deliver { env, .. } => sealed.push(env.ct.clone()),
                RelayFrame::Ops { ops, .. } => sealed.extend(ops.iter().map(|o| o.op.ct.clone())),
                _ => {}
            }
            if let Some(c) = sent.last() {
                frames.push(wire::encode(c).unwrap());
                match c {
                    ClientFrame::ChunkPut { data, .. } => sealed.push(data.clone()),
                    ClientFrame::Send(env) => sealed.push(env.ct.clone()),
                    ClientFrame::Op(env) => sealed.push(env.ct.clone()),
                    _ => {}
                }
            }
            let mut s = s.lock().unwrap();
            s.0 += 1;
            for fr in &frames {
                if claudemesh_tests::contains(fr, name.as_bytes()) {
                    s.1.push("the name in a frame".into());
                }
            }
            for b in &sealed {
                if let Some(at) = w.find_in(b) {
                    s.1.push(format!("plaintext at {at} of a frame"));
                }
            }
            f
        }),
    );
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    // The mesh's relay address is the tap's (it presents the relay's certificate).
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &tap.addr.to_string(),
        "--fingerprint",
        &relay.fingerprint,
    ]);
    for i in 1..3 {
        let link = nodes[0].ok(&["invite"]);
        nodes[i].ok(&["join", &link, "--wait", "20"]);
    }
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                a.wait("peer-online", Some(&b.name));
            }
        }
    }
    let src = root.path().join(name);
    std::fs::write(&src, data.as_slice()).unwrap();
    let t = std::time::Instant::now();
    let f = share(&nodes[0], &src, &[]);
    eprintln!("shared in {:?}", t.elapsed());
    let id = f["file"].as_str().unwrap().to_string();
    assert_eq!(f["chunks"], 400, "{f}");
    for n in &nodes[1..] {
        wait_listed(n, &id);
        let out = root.path().join(format!("{}-copy.bin", n.name));
        let t = std::time::Instant::now();
        let g = get(n, &id, &out);
        eprintln!("{} fetched in {:?}: {g}", n.name, t.elapsed());
        let got = std::fs::read(&out).unwrap();
        assert!(got == *data, "{} got the file byte for byte", n.name);
        assert_eq!(
            g["blake3"].as_str().unwrap(),
            blake3::hash(&data).to_hex().as_str()
        );
    }
    drop(tap);
    let (frames, leaks) = seen.lock().unwrap().clone();
    assert!(frames > 800, "the tap saw the transfers ({frames} frames)");
    assert!(leaks.is_empty(), "{leaks:?}");
    let mut stored = Vec::new();
    all_files(&relay.data_dir, &mut stored);
    for p in stored {
        let b = std::fs::read(&p).unwrap_or_default();
        assert!(
            !claudemesh_tests::contains(&b, name.as_bytes()),
            "the name in {}",
            p.display()
        );
        assert_eq!(windows.find_in(&b), None, "plaintext in {}", p.display());
    }
}

/// A relay that stores no files: the sharer's daemon serves the chunks itself, boxed
/// member to member, and the fetch checks each against the manifest as ever.
#[test]
fn with_relay_storage_off_a_member_fetches_from_the_sharing_daemon() {
    let root = tempfile::tempdir().unwrap();
    let (relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &["--no-blob-storage"]);
    let src = root.path().join("notes.bin");
    let data = random_bytes(1 << 20, 5);
    std::fs::write(&src, &data).unwrap();
    let f = share(&nodes[0], &src, &[]);
    assert_eq!(f["stored"], "peers", "{f}");
    let id = f["file"].as_str().unwrap().to_string();
    wait_listed(&nodes[1], &id);
    let out = root.path().join("ben-notes.bin");
    let t = std::time::Instant::now();
    let g = get(&nodes[1], &id, &out);
    eprintln!("fetched 1 MiB from a peer in {:?}", t.elapsed());
    assert_eq!(g["from_peers"], 8, "{g}");
    assert_eq!(g["from_relay"], 0, "{g}");
    assert!(std::fs::read(&out).unwrap() == data);
    // The relay kept no chunk (only the share op, sealed).
    let mut stored = Vec::new();
    all_files(&relay.data_dir, &mut stored);
    let w = Windows::new(std::sync::Arc::new(data));
    for p in stored {
        let b = std::fs::read(&p).unwrap_or_default();
        assert_eq!(w.find_in(&b), None, "plaintext in {}", p.display());
    }
    // With the sharer gone, nobody holds the chunks: a clear error, nothing written.
    let mut nodes = nodes;
    nodes[0].stop();
    let out2 = root.path().join("again.bin");
    std::fs::remove_dir_all(nodes[1].dir.join("files")).unwrap();
    let (_, err) = nodes[1].fails(&["file", "get", &id, "-o", out2.to_str().unwrap()]);
    assert!(err.contains("no member online holds it"), "{err}");
    assert!(!out2.exists());
}

// Attacks: a malicious relay operator, a malicious member, another local user.

/// The relay's answer `f` to a `chunk_put` the client sent (by its `rid`), if it is one.
fn answers_put(sent: &[claudemesh_schema::wire::ClientFrame], rid: u64) -> bool {
    sent.iter().any(
        |c| matches!(c, claudemesh_schema::wire::ClientFrame::ChunkPut { rid: r, .. } if *r == rid),
    )
}

/// One member's mesh whose link runs through `proxy` (presenting `relay`'s certificate).
fn mesh_through(
    root: &Path,
    relay: &claudemesh_tests::RelayProc,
    proxy: &claudemesh_tests::proxy::Proxy,
    names: &[&str],
    log: &str,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            let mut n = Node::new(bin(), root, n);
            n.log_filter = log.into();
            n
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    nodes[0].ok(&[
        "create",
        "test",
        "--relay",
        &proxy.addr.to_string(),
        "--fingerprint",
        &relay.fingerprint,
    ]);
    for i in 1..nodes.len() {
        let link = nodes[0].ok(&["invite"]);
        nodes[i].ok(&["join", &link, "--wait", "20"]);
    }
    for a in &nodes {
        for b in &nodes {
            if a.name != b.name {
                a.wait("peer-online", Some(&b.name));
            }
        }
    }
    nodes
}

/// Attack (a relay operator, helped by a crash): an upload stops after the relay stored a
/// chunk (the proxy turns the relay's `ok` into a refusal), the user edits the file, and
/// the daemon resumes the upload at its next start. Chunk nonces are derived from the file
/// key and the index, so sealing the edited file again under the recorded key would hand
/// the relay two ciphertexts under one nonce: their XOR is the XOR of the two plaintexts.
/// The resumed upload sees that the file no longer seals to the chunks it first sealed
/// and stops: no second ciphertext under that nonce reaches the relay, nothing is shared.
#[test]
fn a_resumed_upload_of_a_file_edited_meanwhile_never_reuses_a_nonce_at_the_relay() {
    use claudemesh_schema::wire::{ErrorCode, RelayFrame};
    use claudemesh_tests::proxy::Proxy;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let refuse = Arc::new(AtomicBool::new(true));
    let r2 = refuse.clone();
    let proxy = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(move |sent, f| match f {
            RelayFrame::Ok { rid } if r2.load(Ordering::SeqCst) && answers_put(sent, rid) => {
                RelayFrame::Error {
                    rid: Some(rid),
                    code: ErrorCode::NotAuthorized,
                    message: "refused by the operator".into(),
                    fatal: false,
                    retry_ms: None,
                }
            }
            f => f,
        }),
    );
    let mut nodes = mesh_through(root.path(), &relay, &proxy, &["ann"], "info");
    let src = root.path().join("secret.txt");
    let (first, edited) = (random_bytes(3000, 41), random_bytes(3000, 42));
    std::fs::write(&src, &first).unwrap();
    let (code, err) = nodes[0].fails(&["file", "share", src.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("refused by the operator"), "{err}");
    // The relay did store the chunk.
    let blobs = |relay: &claudemesh_tests::RelayProc| {
        let mut v = Vec::new();
        all_files(&relay.data_dir.join("blobs"), &mut v);
        v.into_iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(blobs(&relay).len(), 1, "the first chunk is at the relay");
    std::fs::write(&src, &edited).unwrap();
    refuse.store(false, Ordering::SeqCst);
    nodes[0].stop();
    nodes[0].start();
    nodes[0].wait_logged("an interrupted file transfer");
    let xor: Vec<u8> = first.iter().zip(&edited).map(|(a, b)| a ^ b).collect();
    let held = blobs(&relay);
    for a in &held {
        for b in &held {
            let same_nonce = a.len() == b.len()
                && a != b
                && a.iter()
                    .zip(b)
                    .take(xor.len())
                    .map(|(x, y)| x ^ y)
                    .eq(xor.iter().copied());
            assert!(!same_nonce, "two ciphertexts under one nonce at the relay");
        }
    }
    assert!(
        nodes[0]
            .log()
            .contains("changed since its upload was interrupted"),
        "{}",
        nodes[0].log()
    );
    assert!(list(&nodes[0]).is_empty(), "nothing was shared");
}

/// Attack (a malicious relay): every chunk the relay sends is altered (one bit flipped).
/// The reader checks each against its id, takes none of them, and fetches the file from
/// the sharer's daemon instead: byte for byte, BLAKE3 checked.
#[test]
fn chunks_a_relay_alters_are_refused_and_the_file_comes_from_the_sharer() {
    use claudemesh_schema::wire::RelayFrame;
    use claudemesh_tests::proxy::Proxy;
    use std::sync::Arc;
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let proxy = Proxy::start(
        relay.addr,
        &relay.data_dir,
        Arc::new(|_, f| match f {
            RelayFrame::Chunk { rid, id, mut data } => {
                data[0] ^= 1;
                RelayFrame::Chunk { rid, id, data }
            }
            f => f,
        }),
    );
    let nodes = mesh_through(root.path(), &relay, &proxy, &["ann", "ben"], "warn");
    let src = root.path().join("data.bin");
    let data = random_bytes(300_000, 7);
    std::fs::write(&src, &data).unwrap();
    let f = share(&nodes[0], &src, &[]);
    assert_eq!(f["stored"], "relay", "{f}");
    let id = f["file"].as_str().unwrap().to_string();
    wait_listed(&nodes[1], &id);
    let out = root.path().join("ben.bin");
    let g = get(&nodes[1], &id, &out);
    assert_eq!(g["from_relay"], 0, "{g}");
    assert_eq!(g["from_peers"], 3, "{g}");
    assert!(std::fs::read(&out).unwrap() == data);
}

/// Attack (another local user): where the reader saves into a directory others can
/// write, a symlink planted at the temporary name (`<target>.claudemesh-part`) would have
/// the reader's daemon truncate the file it points to and write the download into it.
/// The daemon never opens the part file through a symlink: the fetch fails and the file
/// pointed to is untouched.
#[test]
fn a_symlink_planted_at_the_part_file_is_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let src = root.path().join("report.txt");
    std::fs::write(&src, "the report\n").unwrap();
    let f = share(&nodes[0], &src, &[]);
    let id = f["file"].as_str().unwrap().to_string();
    wait_listed(&nodes[1], &id);
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let victim = root.path().join("ben-keys");
    std::fs::write(&victim, "precious\n").unwrap();
    let target = shared.join("report.txt");
    std::os::unix::fs::symlink(&victim, shared.join("report.txt.claudemesh-part")).unwrap();
    let r = nodes[1].run(&["file", "get", &id, "-o", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the file the planted link points to was overwritten"
    );
    assert!(!r.status.success(), "the fetch went through the link");
    assert!(std::fs::symlink_metadata(&target).is_err(), "nothing saved");
}

/// Attack (another local user reading the reader's files): the chunk cache, the default
/// download directory, a part file and a saved file are all the daemon user's alone.
#[test]
fn cached_chunks_and_fetched_files_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let src = root.path().join("data.bin");
    std::fs::write(&src, random_bytes(200_000, 9)).unwrap();
    let id = share(&nodes[0], &src, &["--to", "ben"])["file"]
        .as_str()
        .unwrap()
        .to_string();
    wait_listed(&nodes[1], &id);
    let out = root.path().join("ben.bin");
    get(&nodes[1], &id, &out);
    let mut paths = vec![out];
    for n in &nodes {
        let files = n.dir.join("files");
        paths.push(files.clone());
        all_files(&files, &mut paths);
    }
    assert!(paths.len() > 5, "{paths:?}");
    for p in paths {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
    }
}

/// Two fetches of one file to one target at once (a user and a model, say): one writes
/// it, the other finds it in place; both succeed and the file is whole.
#[test]
fn concurrent_fetches_to_one_target_both_end_with_the_whole_file() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let src = root.path().join("data.bin");
    let data = random_bytes(1 << 20, 11);
    std::fs::write(&src, &data).unwrap();
    let id = share(&nodes[0], &src, &[])["file"]
        .as_str()
        .unwrap()
        .to_string();
    wait_listed(&nodes[1], &id);
    let out = root.path().join("ben.bin");
    let o = out.to_str().unwrap();
    let kids: Vec<_> = (0..2)
        .map(|_| nodes[1].spawn(&["file", "get", &id, "-o", o, "--json"]))
        .collect();
    for k in kids {
        let r = k.wait_with_output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(!root.path().join("ben.bin.claudemesh-part").exists());
}

/// The mesh a node is in, and its keys there (from its key file).
fn keys_of(n: &Node) -> (claudemesh_schema::MeshId, claudemesh_daemon::keys::MeshKeys) {
    let key_file = std::fs::read_dir(n.dir.join("keys"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".key"))
        .unwrap()
        .path();
    let stem = key_file.file_stem().unwrap().to_string_lossy().into_owned();
    let mesh: claudemesh_schema::MeshId = serde_json::from_value(Value::String(stem)).unwrap();
    let keys = claudemesh_daemon::keys::MeshKeys::load(&n.dir.join("keys"), &mesh).unwrap();
    (mesh, keys)
}

/// A raw link to `relay` as `from`'s member (its daemon stopped: the test plays it, the
/// way a member running other code would), and a sender of boxed payloads of `kind` to
/// `to`'s member over it.
async fn raw_member(
    relay: &claudemesh_tests::RelayProc,
    from: &Node,
    to: &Node,
) -> (
    claudemesh_relay::Connection,
    impl Fn(&str, String) -> claudemesh_schema::wire::ClientFrame,
) {
    use claudemesh_schema::crypto::BoxKey;
    use claudemesh_schema::message::{self, MessagePayload};
    use claudemesh_schema::wire::{self, ClientFrame, Envelope, Route, Seal};
    use claudemesh_schema::{MessageId, SessionId, now_ms};
    let (mesh, me) = keys_of(from);
    let them = keys_of(to).1.member.public();
    let fp: [u8; 32] = claudemesh_schema::encoding::unb64_array(&relay.fingerprint).unwrap();
    let mut c = claudemesh_relay::client::connect_quic(
        relay.addr,
        Some(fp),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let session = SessionId::new();
    let sk = claudemesh_schema::crypto::BoxSecret::generate();
    let hello = wire::Hello::sign(&me.member, mesh, session, sk.public(), now_ms(), "test");
    claudemesh_tests::raw::send(&mut c, &ClientFrame::Hello(hello)).await;
    let boxed = BoxKey::new(&me.member.box_secret(), &them.box_public().unwrap());
    let member = me.member.public();
    let frame = move |kind: &str, body: String| {
        let id = MessageId::new();
        let p = MessagePayload {
            id,
            from_session: session,
            from_name: String::new(),
            from_label: String::new(),
            to: kind.into(),
            priority: message::Priority::Low,
            sent_at: now_ms(),
            kind: kind.into(),
            body,
            to_sessions: Vec::new(),
        };
        ClientFrame::Send(Envelope {
            epoch: 0,
            id,
            from: session,
            from_member: member,
            to: Route::Member { member: them },
            seal: Seal::Box,
            ct: message::seal_direct_with(&boxed, &p).unwrap(),
        })
    };
    (c, frame)
}

/// Attack (a malicious member): it asks the sharer's daemon for chunks, boxed as `chunk_ask`
/// from its own member key, and never reads the answers. The relay keeps every answer
/// until the asker acknowledges it, in the mesh's undelivered-message quota, so a daemon
/// answering every ask would let one member fill that quota for the whole mesh. The
/// sharer stops answering once that member leaves 64 answers unacknowledged; when the
/// asker's daemon reads them (its receipts), an honest fetch of more chunks than that
/// from the same sharer goes through.
#[test]
fn an_asker_that_never_reads_its_chunk_answers_gets_no_more_than_a_window() {
    use claudemesh_schema::ItemId;
    use claudemesh_schema::file::ChunkId;
    use claudemesh_schema::message::{self, ChunkAskBody};
    use claudemesh_schema::wire::RelayFrame;
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(
        bin(),
        &root.path().join("relay"),
        &["--no-blob-storage"],
    );
    let mut nodes: Vec<Node> = ["ann", "ben"]
        .iter()
        .map(|n| {
            let mut n = Node::new(bin(), root.path(), n);
            n.log_filter = "info".into();
            n
        })
        .collect();
    claudemesh_tests::form_mesh(&relay, &mut nodes);
    let src = root.path().join("big.bin");
    let data = random_bytes(100 * 128 * 1024, 13);
    std::fs::write(&src, &data).unwrap();
    let f = share(&nodes[0], &src, &[]);
    assert_eq!(f["stored"], "peers", "{f}");
    let id = f["file"].as_str().unwrap().to_string();
    let file: ItemId = serde_json::from_value(f["file"].clone()).unwrap();
    wait_listed(&nodes[1], &id);
    // Ben's daemon goes; the attacker speaks as ben's member, raw.
    nodes[1].stop();
    let (mesh, _) = keys_of(&nodes[1]);
    let ann = keys_of(&nodes[0]).1.member.public();
    // The chunks ann holds (her cache), 160 asks of them.
    let mut held: Vec<ChunkId> =
        std::fs::read_dir(nodes[0].dir.join("files").join(mesh.to_string()))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let b: Vec<u8> = (0..n.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(n.get(i..i + 2)?, 16).ok())
                    .collect::<Option<_>>()?;
                ChunkId::from_slice(&b)
            })
            .collect();
    held.truncate(16);
    assert_eq!(held.len(), 16);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (mut c, boxed) = raw_member(&relay, &nodes[1], &nodes[0]).await;
        let ask = serde_json::to_string(&ChunkAskBody {
            file,
            ids: held.clone(),
        })
        .unwrap();
        for _ in 0..10 {
            claudemesh_tests::raw::send(&mut c, &boxed(message::KIND_CHUNK_ASK, ask.clone())).await;
        }
        // Deliveries from ann, read and never acknowledged.
        let mut answers = 0;
        while answers < 64 {
            if let RelayFrame::Deliver { env, .. } = claudemesh_tests::raw::recv(&mut c).await
                && env.from_member == ann
            {
                answers += 1;
            }
        }
    });
    // She stopped answering there (160 were asked).
    nodes[0].wait_logged("leaves chunk answers unacknowledged");
    // Ben's daemon reads what waited for it; an honest fetch of 100 chunks from ann.
    nodes[1].start();
    nodes[1].wait("peer-online", Some("ann"));
    nodes[0].wait_logged("a member read its chunk answers");
    let out = root.path().join("ben.bin");
    let g = get(&nodes[1], &id, &out);
    assert_eq!(g["from_peers"], 100, "{g}");
    assert!(std::fs::read(&out).unwrap() == data);
}

/// Attack (a malicious member): cat, who was never given the file, sends its author a
/// boxed `file_fetched` receipt for it, as its daemon would after a fetch. The author's
/// `file status` lists only who could open the file; ben's receipt (he fetched it) is
/// listed.
#[test]
fn a_fetched_receipt_from_a_member_the_file_is_not_for_is_not_recorded() {
    use claudemesh_schema::message::{FetchedBody, KIND_FILE_FETCHED};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    claudemesh_tests::form_mesh(&relay, &mut nodes);
    let src = root.path().join("plan.md");
    std::fs::write(&src, "# plan\n").unwrap();
    let f = share(&nodes[0], &src, &["--to", "ben"]);
    let id = f["file"].as_str().unwrap().to_string();
    let file = serde_json::from_value(f["file"].clone()).unwrap();
    wait_listed(&nodes[2], &id);
    nodes[2].stop();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (mut c, boxed) = raw_member(&relay, &nodes[2], &nodes[0]).await;
        let body = serde_json::to_string(&FetchedBody { file }).unwrap();
        claudemesh_tests::raw::send(&mut c, &boxed(KIND_FILE_FETCHED, body)).await;
        // Ann's daemon took it (her acknowledgement comes back as a receipt).
        loop {
            if let claudemesh_schema::wire::RelayFrame::Receipt { .. } =
                claudemesh_tests::raw::recv(&mut c).await
            {
                break;
            }
        }
    });
    // Ben fetches it for real: his receipt reaches ann long after cat's (which she
    // records, or not, as soon as she has it), so once his shows, cat's was handled.
    get(&nodes[1], &id, &root.path().join("ben-plan.md"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let fetched = loop {
        let st = nodes[0].json(&["file", "status", &id]);
        let v = st["fetched"].as_array().unwrap().clone();
        let ben = v
            .iter()
            .any(|x| x["who"].as_str().unwrap().starts_with("ben"));
        if ben || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let who: Vec<&str> = fetched.iter().map(|x| x["who"].as_str().unwrap()).collect();
    assert_eq!(who.len(), 1, "{who:?}");
    assert!(who[0].starts_with("ben"), "{who:?}");
}

/// Attack (a malicious member writing ops its daemon would not): cat, not an admin and
/// never given ann's file, writes a `share_file` under ann's file id (its own manifest
/// and key), a `grant_file` of it boxing a key to itself, and a `delete_file` of it, each
/// signed and sealed as a member may. Every daemon folds them as no-ops: the file stays
/// ann's, in every list, readable by ben only, and cat still cannot fetch it. A
/// `set_state` cat writes after them is folded, so they were folded before it.
#[test]
fn a_members_forged_share_grant_and_delete_of_anothers_file_fold_to_nothing() {
    use claudemesh_schema::file::{FileKey, KeyBox, Manifest};
    use claudemesh_schema::op::{Op, OpBody, seal_op_at};
    use claudemesh_schema::wire::ClientFrame;
    use claudemesh_schema::{ItemId, OpId, SessionId, now_ms};
    let root = tempfile::tempdir().unwrap();
    let relay = claudemesh_tests::RelayProc::start(bin(), &root.path().join("relay"), &[]);
    let mut nodes: Vec<Node> = ["ann", "ben", "cat"]
        .iter()
        .map(|n| Node::new(bin(), root.path(), n))
        .collect();
    claudemesh_tests::form_mesh(&relay, &mut nodes);
    let src = root.path().join("plan.md");
    std::fs::write(&src, "# the plan\n").unwrap();
    let f = share(&nodes[0], &src, &["--to", "ben"]);
    let id = f["file"].as_str().unwrap().to_string();
    let file: ItemId = serde_json::from_value(f["file"].clone()).unwrap();
    wait_listed(&nodes[2], &id);
    nodes[2].stop();
    let (mesh, cat) = keys_of(&nodes[2]);
    let (epoch, mk) = cat
        .epochs
        .iter()
        .max_by_key(|(e, _)| *e)
        .cloned()
        .unwrap_or((0, cat.mesh_key.clone()));
    let key = FileKey::generate();
    let man = Manifest {
        name: "plan.md".into(),
        size: 7,
        mime: "text/plain".into(),
        blake3: *blake3::hash(b"forged\n").as_bytes(),
        chunks: vec![0; 32],
        tags: vec![],
        expires_at: None,
    };
    let to_cat = KeyBox::for_member(&mesh, &file, &cat.member, &cat.member.public(), &key).unwrap();
    let ops = [
        Op::ShareFile {
            file,
            manifest: key.seal_manifest(&mesh, &file, &man).unwrap(),
            keys: vec![to_cat.clone()],
            to: "cat".into(),
            stored: 23,
        },
        Op::GrantFile {
            file,
            keys: vec![to_cat],
        },
        Op::DeleteFile { file },
        Op::SetState {
            key: "forged-ops".into(),
            value: serde_json::json!("sent"),
        },
    ];
    let folded = |n: &Node| {
        let o = n.run(&["state", "get", "forged-ops", "--json"]);
        o.status.success()
            && serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|v| v["value"] == "sent")
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (mut c, _) = raw_member(&relay, &nodes[2], &nodes[0]).await;
        let session = SessionId::new();
        for op in ops {
            let body = OpBody {
                id: OpId::new(),
                session,
                name: "cat".into(),
                at: now_ms(),
                roster: None,
                op,
            };
            let env = seal_op_at(epoch, &mk, &mesh, &cat.member, &body).unwrap();
            claudemesh_tests::raw::send(&mut c, &ClientFrame::Op(env)).await;
        }
        // Until the relay sequenced all four.
        let mut answered = 0;
        while answered < 4 {
            match claudemesh_tests::raw::recv(&mut c).await {
                claudemesh_schema::wire::RelayFrame::OpAck { .. } => answered += 1,
                claudemesh_schema::wire::RelayFrame::OpRefused { message, .. } => {
                    panic!("the relay refused an op: {message}")
                }
                _ => {}
            }
        }
    });
    for n in &nodes[..2] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !folded(n) {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never folded",
                n.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mine = list(n).into_iter().find(|x| x["id"] == id.as_str());
        let mine = mine.unwrap_or_else(|| panic!("{} lost the file", n.name));
        assert!(
            mine["author"].as_str().unwrap().starts_with("ann"),
            "{mine}"
        );
        let st = n.json(&["file", "status", &id]);
        let readers: Vec<&str> = st["readers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            readers.iter().all(|r| !r.starts_with("cat")),
            "{} lists {readers:?}",
            n.name
        );
    }
    let out = root.path().join("ben-plan.md");
    get(&nodes[1], &id, &out);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "# the plan\n");
    nodes[2].start();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !folded(&nodes[2]) {
        assert!(std::time::Instant::now() < deadline, "cat never folded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = root.path().join("cat-plan.md");
    let (code, err) = nodes[2].fails(&["file", "get", &id, "-o", out.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not with you"), "{err}");
}

/// Attack (peer text reaching a terminal): ann tags a file with terminal escapes and a
/// line break that would forge a row of its own. Ben's `file list` table shows every cell
/// as one line without control characters; `-o` naming a directory saves the file there
/// under its (checked) name.
#[test]
fn tags_with_escapes_cannot_move_the_terminal_or_forge_a_row() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let src = root.path().join("notes.md");
    std::fs::write(&src, "notes\n").unwrap();
    let tag = "x\u{1b}[2J\u{1b}]0;pwned\u{7}\n  0000000  fake.sh  1 B  admin  *  y";
    let f = share(&nodes[0], &src, &["--tags", tag]);
    let id = f["file"].as_str().unwrap().to_string();
    wait_listed(&nodes[1], &id);
    let table = nodes[1].ok(&["file", "list"]);
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );
    assert_eq!(table.lines().count(), 2, "header and one row: {table}");
    let dir = root.path().join("inbox");
    std::fs::create_dir(&dir).unwrap();
    let g = get(&nodes[1], &id, &dir);
    assert_eq!(g["path"], dir.join("notes.md").to_str().unwrap(), "{g}");
}
