#![allow(clippy::unwrap_used)]
//! Guards around what cannot be undone or is easy to misread (issue 13, item 6), driven
//! through the real `claudemesh` binary, on a pseudo-terminal where a person would type:
//! the backup passphrase (not echoed, asked twice), `leave` (asked on a terminal, `--yes`
//! elsewhere, refused for the last admin without `--force`), a config directory that
//! cannot be read, `send '*'` and `send @group` to no one, and `send` to someone offline.

use claudemesh_tests::{Node, mesh, mesh_on};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// A command running on a pseudo-terminal (stdin, stdout and stderr), with what it wrote.
struct Pty {
    master: std::fs::File,
    child: Child,
    seen: Arc<(Mutex<String>, Condvar)>,
    reader: std::thread::JoinHandle<()>,
}

impl Pty {
    fn spawn(node: &Node, args: &[&str]) -> Self {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        let mut cmd = node.command(args);
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().unwrap();
        drop(cmd); // our copies of the terminal's side: only the child holds it now
        let master = std::fs::File::from(master);
        let seen: Arc<(Mutex<String>, Condvar)> = Default::default();
        let (mut reader, s) = (master.try_clone().unwrap(), seen.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) once the child closed the terminal.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                s.0.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                s.1.notify_all();
            }
        });
        Self {
            master,
            child,
            seen,
            reader,
        }
    }

    /// Wait until the output holds `needle` (bounded), then return all of it.
    fn expect(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = self.seen.0.lock().unwrap();
        while !out.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} in {out:?}");
            out = self.seen.1.wait_timeout(out, left).unwrap().0;
        }
        out.clone()
    }

    fn type_line(&mut self, s: &str) {
        self.master.write_all(format!("{s}\n").as_bytes()).unwrap();
    }

    /// Wait for the exit; the exit code and everything written.
    fn finish(mut self) -> (i32, String) {
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        // Everything it wrote is read once the terminal is closed.
        self.reader.join().unwrap();
        let out = self.seen.0.lock().unwrap().clone();
        (code, out)
    }
}

#[test]
fn the_backup_passphrase_is_not_echoed_and_is_asked_twice() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    let ann = &nodes[0];
    let file = root.path().join("ann.backup");
    let f = file.to_str().unwrap();

    // A typo in the second one: nothing is written.
    let mut t = Pty::spawn(ann, &["backup", f]);
    t.expect("passphrase: ");
    t.type_line("correct horse battery");
    t.expect("passphrase again: ");
    t.type_line("correct horse batery");
    let (code, out) = t.finish();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("differ"), "{out}");
    assert!(!out.contains("horse"), "the passphrase was echoed: {out}");
    assert!(!file.exists());

    let mut t = Pty::spawn(ann, &["backup", f]);
    t.expect("passphrase: ");
    t.type_line("correct horse battery");
    t.expect("passphrase again: ");
    t.type_line("correct horse battery");
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("horse"), "the passphrase was echoed: {out}");
    assert!(file.exists());

    // Restoring asks once (it is checked against the backup anyway).
    let mut bob = Node::new(bin(), root.path(), "bob");
    bob.start();
    bob.stop();
    let mut t = Pty::spawn(&bob, &["restore", f, "--yes"]);
    t.expect("passphrase: ");
    t.type_line("correct horse battery");
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("passphrase again"), "{out}");
    assert!(!out.contains("horse"), "{out}");
}

#[test]
fn leave_asks_on_a_terminal_wants_yes_elsewhere_and_keeps_the_last_admin() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let (ann, ben) = (&nodes[0], &nodes[1]);
    let joined = |n: &Node| n.json(&["list"])["meshes"].as_array().unwrap().len();

    // Not on a terminal, no --yes: nothing happens, and it says how.
    let (code, err) = ben.fails(&["leave", "test"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(joined(ben), 1);

    // On a terminal: asked, and "no" keeps it.
    let mut t = Pty::spawn(ben, &["leave", "test"]);
    t.expect("[y/N]");
    t.type_line("n");
    let (code, out) = t.finish();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(joined(ben), 1);

    // The owner is the mesh's only admin: refused, with what to do, even with --yes.
    let (code, err) = ann.fails(&["leave", "test", "--yes"]);
    assert_eq!(code, 8, "{err}");
    assert!(
        err.contains("--force") && err.contains("member role"),
        "{err}"
    );
    let t = Pty::spawn(ann, &["leave", "test"]);
    let (code, out) = {
        // Refused before anything is asked.
        let out = t.expect("only owner");
        assert!(!out.contains("[y/N]"), "{out}");
        t.finish()
    };
    assert_eq!(code, 8, "{out}");
    assert_eq!(joined(ann), 1);

    // "yes" on the terminal leaves.
    let mut t = Pty::spawn(ben, &["leave", "test"]);
    t.expect("[y/N]");
    t.type_line("y");
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Left test"), "{out}");
    assert_eq!(joined(ben), 0);

    ann.ok(&["leave", "test", "--yes", "--force"]);
    assert_eq!(joined(ann), 0);
}

#[test]
fn a_config_directory_that_cannot_be_read_is_reported_not_taken_for_no_mesh() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    nodes[0].stop();
    let ann = &nodes[0];
    // Not a directory: every reader fails, root included (mode 000 stops only others).
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let mut cases = vec![file.clone()];
    #[cfg(unix)]
    if rustix::process::geteuid().as_raw() != 0 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&ann.dir, std::fs::Permissions::from_mode(0o000)).unwrap();
        cases.push(ann.dir.clone());
    }
    for dir in &cases {
        let env = [("CLAUDEMESH_CONFIG_DIR", dir.to_str().unwrap())];
        for args in [&["list"][..], &["status"], &["peers"]] {
            let out = ann.run_env(args, &env);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} on {dir:?}: {err}");
            assert!(
                err.contains("cannot read the config directory"),
                "{args:?}: {err}"
            );
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("No meshes"),
                "{args:?}: it looked like no mesh"
            );
        }
        let out = ann.run_env(&["doctor"], &env);
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("private to you"), "{said}");
        assert!(said.contains("cannot read the config directory"), "{said}");
        assert!(!out.status.success(), "{said}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&ann.dir, std::fs::Permissions::from_mode(0o700));
    }
}

#[test]
fn everyone_and_a_group_with_no_one_in_them_are_refused_alike() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    let ann = &nodes[0];
    for to in ["*", "@dev"] {
        let (code, err) = ann.fails(&["send", to, "hello?"]);
        assert_eq!(code, 4, "{to}: {err}");
        assert!(err.contains("nothing was sent"), "{to}: {err}");
    }
    let (_, err) = ann.fails(&["send", "*", "hello?"]);
    assert!(err.contains("nobody else is in test"), "{err}");
}

claudemesh_tests::per_store! {
    fn a_message_to_someone_offline_says_so_and_reaches_them_when_back(store) {
        let root = tempfile::tempdir().unwrap();
        let (_relay, mut nodes) = mesh_on(bin(), root.path(), store, &["ann", "ben"], &[]);
        let mut ben = nodes.pop().unwrap();
        let ann = &nodes[0];
        ben.stop();
        ann.wait("peer-offline", Some("ben"));
        let said = ann.ok(&["send", "ben", "are you there?"]);
        assert!(said.contains("is offline"), "{said}");
        assert!(said.contains("reaches them when they are back"), "{said}");
        let r = ann.json(&["send", "ben", "second"]);
        assert_eq!(r["offline"].as_array().unwrap().len(), 1, "{r}");
        // `*` to a mesh whose other members are offline still goes: they get it when back.
        ann.ok(&["send", "*", "to all"]);
        ben.start();
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(ben.inbox_wait());
        }
        let bodies: Vec<_> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
        assert!(bodies.contains(&"are you there?"), "{bodies:?}");
        // Online again: a plain "sent".
        ann.wait("peer-online", Some("ben"));
        let said = ann.ok(&["send", "ben", "welcome back"]);
        assert!(said.starts_with("sent to ben"), "{said}");
    }
}

/// On a terminal, `file share` and `file get` say how far they are (read from the daemon
/// while the transfer runs), and wipe the line when done.
#[test]
fn file_transfers_show_their_progress_on_a_terminal() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let src = root.path().join("big.bin");
    // Not all zeros, so nothing on the way could shrink it.
    let data: Vec<u8> = (0..32u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let t = Pty::spawn(&nodes[0], &["file", "share", src.to_str().unwrap()]);
    t.expect(" of 32.0 MiB (");
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("big.bin"), "{out}");
    let id = out
        .split("shared ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes[1].ok(&["file", "list"]).contains("big.bin") {
        assert!(Instant::now() < deadline, "ben never listed it");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dest = root.path().join("ben-big.bin");
    let t = Pty::spawn(
        &nodes[1],
        &["file", "get", &id, "-o", dest.to_str().unwrap()],
    );
    t.expect("fetching ben-big.bin ");
    t.expect(" of 32.0 MiB (");
    let (code, out) = t.finish();
    assert_eq!(code, 0, "{out}");
    assert!(std::fs::read(&dest).unwrap() == data);
}
