#![allow(clippy::unwrap_used)]
//! Running claudemesh as a service operators can watch: the relay's `/metrics` and command
//! line, backups, `doctor`.

use claudemesh_tests::{free_port, mesh, metrics as scrape};
use std::collections::HashMap;
use std::path::Path;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

#[test]
fn relay_metrics_move_with_traffic() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_relay, nodes) = mesh(
        bin(),
        root.path(),
        &["ann", "ben"],
        &["--metrics-listen", &listen],
    );
    let before = scrape(port);
    assert_eq!(before["claudemesh_relay_meshes"], 1.0);
    assert_eq!(before["claudemesh_relay_links"], 2.0);
    for name in [
        "claudemesh_relay_connections",
        "claudemesh_relay_envelopes_stored",
        "claudemesh_relay_handshake_failures_total",
        "claudemesh_relay_queued_bytes",
        "claudemesh_relay_envelope_commit_seconds_count",
        "claudemesh_relay_op_commit_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(before.contains_key(name), "missing {name}: {before:?}");
    }

    nodes[0].ok(&["send", "ben", "hello"]);
    nodes[0].ok(&["send", "*", "all hands"]);
    nodes[1].inbox_wait();
    nodes[0].ok(&["state", "set", "k", "v"]);
    let after = scrape(port);
    let routed = |m: &HashMap<String, f64>, r: &str| {
        m[&format!("claudemesh_relay_envelopes_routed_total{{route=\"{r}\"}}")]
    };
    // A name reaches the person: routed to the member, whose daemon picks the session.
    assert!(
        routed(&after, "member") > routed(&before, "member"),
        "{after:?}"
    );
    assert!(routed(&after, "all") > routed(&before, "all"));
    assert!(after["claudemesh_relay_ops_total"] >= before["claudemesh_relay_ops_total"] + 1.0);
    assert!(
        after["claudemesh_relay_envelope_commit_seconds_count"]
            > before["claudemesh_relay_envelope_commit_seconds_count"]
    );
    assert!(
        after["claudemesh_relay_op_commit_seconds_count"]
            > before["claudemesh_relay_op_commit_seconds_count"]
    );
}

#[test]
fn claudemesh_relay_has_the_relay_binarys_subcommands_and_checks() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let relay = claudemesh_tests::RelayProc::start(bin(), &data, &["--durability", "normal"]);
    let relay_cmd = |args: &[&str]| {
        std::process::Command::new(bin())
            .arg("relay")
            .args(args)
            .env("CLAUDEMESH_LOG", "warn")
            .env_remove("CLAUDEMESH_RELAY_CONFIG")
            .output()
            .unwrap()
    };
    // The flags may follow the subcommand, as with `claudemesh-relay`.
    let fp = relay_cmd(&["fingerprint", "--data-dir", data.to_str().unwrap()]);
    assert!(fp.status.success(), "{fp:?}");
    assert_eq!(
        String::from_utf8_lossy(&fp.stdout).trim(),
        relay.fingerprint
    );

    let defaults = relay_cmd(&["config", "default"]);
    assert!(defaults.status.success(), "{defaults:?}");
    let text = String::from_utf8_lossy(&defaults.stdout);
    assert!(
        text.contains("listen = ") && text.contains("durability = "),
        "{text}"
    );

    // No listener at all is refused before anything starts, as a usage error.
    let none = relay_cmd(&["--no-quic", "--no-websocket"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("enable at least one of quic and websocket"),
        "{none:?}"
    );
}

#[test]
fn backup_wipe_restore_keeps_identity_and_meshes_without_reinviting() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let pass = root.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let file = root.path().join("ann.cmbackup");
    let who = nodes[0].json(&["whoami"]);
    nodes[0].ok(&["state", "set", "before", "backup"]);
    let marker = "a-value-long-enough-never-to-appear-by-chance-7f3a9c";
    nodes[0].ok(&["state", "set", "marker", marker]);
    let b = nodes[0].json(&[
        "backup",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(b["files"].as_u64().unwrap() >= 3, "{b}");
    // The file holds no key or data in clear (needles long enough that random
    // ciphertext never holds them; a three-letter name would, now and then).
    let raw = std::fs::read(&file).unwrap();
    assert!(raw.starts_with(b"claudemesh-backup v1\n"));
    assert!(!claudemesh_tests::contains(&raw, marker.as_bytes()));
    let keys = std::fs::read_dir(nodes[0].dir.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kf: serde_json::Value = serde_json::from_slice(&std::fs::read(keys).unwrap()).unwrap();
    for field in ["mesh_key", "member_secret"] {
        let b64 = kf[field].as_str().unwrap();
        let bytes = claudemesh_schema::encoding::unb64(b64).unwrap();
        assert!(
            !claudemesh_tests::contains(&raw, &bytes),
            "{field} in clear"
        );
        assert!(
            !claudemesh_tests::contains(&raw, b64.as_bytes()),
            "{field} in clear"
        );
    }
    assert!(!claudemesh_tests::contains(&raw, b"SQLite format"));

    // Not while the daemon runs.
    let (code, err) = nodes[0].fails(&[
        "restore",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("daemon is running"), "{err}");

    // Wipe ann's config directory entirely.
    nodes[0].stop();
    let dir = nodes[0].dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();

    // Wrong passphrase: refused, nothing written.
    let bad = root.path().join("bad");
    std::fs::write(&bad, "not the passphrase").unwrap();
    let (code, err) = nodes[0].fails(&[
        "restore",
        file.to_str().unwrap(),
        "--passphrase-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!dir.join("daemon.db").exists());

    nodes[0].ok(&[
        "restore",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    // Restoring over an identity needs --yes.
    let (code, err) = nodes[0].fails(&[
        "restore",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert_eq!(code, 10, "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for k in std::fs::read_dir(dir.join("keys")).unwrap() {
            let mode = k.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "key files stay private");
        }
    }

    nodes[0].start();
    nodes[0].wait("link-up", None);
    assert_eq!(nodes[0].json(&["whoami"])["identities"], who["identities"]);
    assert_eq!(
        nodes[0].json(&["state", "get", "before"])["value"],
        "backup"
    );
    nodes[0].ok(&["send", "ben", "back from a backup"]);
    let got = nodes[1].inbox_wait();
    assert_eq!(got[0]["body"], "back from a backup");
    // Signed by the restored key, but nobody confirmed it: not shown as verified.
    assert_eq!(got[0]["verified"], false);
    nodes[1].ok(&["send", "ann", "welcome back"]);
    assert_eq!(nodes[0].inbox_wait()[0]["body"], "welcome back");
}

fn doctor(n: &claudemesh_tests::Node, extra: &[(&str, &str)]) -> (bool, serde_json::Value) {
    let out = n.run_env(&["doctor", "--json"], extra);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {out:?}"));
    assert_eq!(v["schema_version"], 1);
    assert_eq!(
        out.status.success(),
        v["ok"] == true,
        "exit code follows ok: {v}"
    );
    (out.status.success(), v)
}

fn checks<'a>(v: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name)
        .collect()
}

#[test]
fn doctor_reports_each_seeded_fault_with_its_fix_and_passes_a_healthy_setup() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, mut nodes) = mesh(bin(), root.path(), &["ann", "ben"], &[]);
    // A healthy setup: Claude Code registration, a user service, `claude` on PATH.
    let bin_dir = root.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let claude = bin_dir.join("claude");
    std::fs::write(&claude, "#!/bin/sh\nexit 0\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: &[(&str, &str)] = &[("PATH", &path), ("CLAUDEMESH_SERVICE_MANAGER", "none")];
    let ann = &nodes[0];
    ann.ok(&["install"]);
    assert!(ann.run_env(&["service", "install"], env).status.success());
    let (ok, v) = doctor(ann, env);
    let not_ok: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "ok")
        .collect();
    assert!(ok && not_ok.is_empty(), "healthy setup: {not_ok:?}");
    let relays = checks(&v, "relay");
    assert_eq!(relays.len(), 2, "quic and websocket: {relays:?}");
    assert!(relays[0]["detail"].as_str().unwrap().contains("round trip"));
    for name in [
        "daemon",
        "version",
        "config",
        "permissions",
        "keys",
        "claude_code",
        "mcp_server",
        "hooks",
        "service",
        "disk",
    ] {
        assert_eq!(checks(&v, name).len(), 1, "{name}: {v}");
    }

    // MCP server not registered.
    ann.ok(&["uninstall"]);
    let (ok, v) = doctor(ann, env);
    assert!(!ok);
    let c = checks(&v, "mcp_server")[0];
    assert_eq!(c["status"], "fail");
    assert_eq!(c["fix"], "claudemesh install");
    ann.ok(&["install"]);

    // Registered, but by a path that is gone (the binary moved): reinstall fixes it.
    let cj_path = ann.dir.join(".claude.json");
    let mut cj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj_path).unwrap()).unwrap();
    cj["mcpServers"]["claudemesh"]["command"] = "/nonexistent/claudemesh".into();
    std::fs::write(&cj_path, cj.to_string()).unwrap();
    let (ok, v) = doctor(ann, env);
    assert!(!ok);
    let c = checks(&v, "mcp_server")[0];
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("does not exist"),
        "{c}"
    );
    ann.ok(&["install"]);

    // A key file readable by others.
    let key = std::fs::read_dir(ann.dir.join("keys"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (ok, v) = doctor(ann, env);
        assert!(!ok);
        let c = checks(&v, "permissions")[0];
        assert_eq!(c["status"], "fail");
        assert!(
            c["fix"]
                .as_str()
                .unwrap()
                .contains(&format!("chmod 600 {}", key.display())),
            "{c}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // The relay unreachable.
    relay.kill();
    let (ok, v) = doctor(ann, env);
    assert!(!ok);
    for c in checks(&v, "relay") {
        assert_eq!(c["status"], "fail", "{c}");
        assert!(c["detail"].as_str().unwrap().contains("unreachable"), "{c}");
        assert!(c["fix"].as_str().unwrap().contains("relay"), "{c}");
        assert_eq!(c["mesh"], "test");
    }
    relay.restart();

    // The daemon down.
    nodes[0].stop();
    let (ok, v) = doctor(&nodes[0], env);
    assert!(!ok);
    let c = checks(&v, "daemon")[0];
    assert_eq!(c["status"], "fail");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("claudemesh daemon start"),
        "{c}"
    );
    nodes[0].start();
    nodes[0].wait("link-up", None);
    let (ok, v) = doctor(&nodes[0], env);
    assert!(ok, "healthy again: {v}");
}

#[cfg(unix)]
#[test]
fn a_backup_into_a_shared_directory_follows_no_planted_link() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    let pass = root.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let victim = root.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let file = shared.join("ann.cmbackup");
    // Links another user could plant under every name a backup used to write through.
    for name in [
        "ann.restore.tmp",
        "ann.cmbackup.restore.tmp",
        ".ann.cmbackup.tmp",
    ] {
        std::os::unix::fs::symlink(&victim, shared.join(name)).unwrap();
    }
    let b = nodes[0].json(&[
        "backup",
        file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(b["files"].as_u64().unwrap() >= 3, "{b}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::read(&file)
            .unwrap()
            .starts_with(b"claudemesh-backup v1\n")
    );
    assert!(
        !std::fs::symlink_metadata(&file)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn doctor_passes_a_cli_only_machine_without_claude_code() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["ann"], &[]);
    // No `claude` on PATH, never installed for Claude Code.
    let env: &[(&str, &str)] = &[
        ("PATH", "/usr/bin:/bin"),
        ("CLAUDEMESH_SERVICE_MANAGER", "none"),
    ];
    let (ok, v) = doctor(&nodes[0], env);
    let failed: Vec<_> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .collect();
    assert!(ok && failed.is_empty(), "{failed:?}");
    assert_eq!(checks(&v, "mcp_server")[0]["status"], "ok", "{v}");
    assert_eq!(checks(&v, "claude_code")[0]["status"], "warn", "{v}");
}
