#![allow(clippy::unwrap_used)]
//! `claudemesh service`: the unit and plist it writes, idempotence, removal. The service
//! manager itself is not called (`CLAUDEMESH_SERVICE_MANAGER=none`); `systemd-analyze
//! verify` checks the unit where it exists.

use claudemesh_tests::Node;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

const NO_MANAGER: &[(&str, &str)] = &[("CLAUDEMESH_SERVICE_MANAGER", "none")];

fn json(n: &Node, args: &[&str]) -> Value {
    let out = n.run_env(args, NO_MANAGER);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_systemd_unit_verifies_installs_once_and_uninstalls_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let n = Node::new(bin(), root.path(), "svc");
    let unit = n.dir.join(".config/systemd/user/claudemesh.service");

    let first = json(
        &n,
        &["service", "install", "--platform", "systemd", "--json"],
    );
    assert_eq!(first["changed"], true, "{first}");
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = bin().canonicalize().unwrap();
    assert!(
        text.contains(&format!("ExecStart=\"{}\" daemon run", exe.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("CLAUDEMESH_CONFIG_DIR={}", n.dir.display())),
        "{text}"
    );
    assert!(text.contains("Restart=on-failure"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let v = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let st = json(
        &n,
        &["service", "status", "--platform", "systemd", "--json"],
    );
    assert_eq!(st["installed"], true);

    // Twice changes nothing.
    let modified = std::fs::metadata(&unit).unwrap().modified().unwrap();
    let second = json(
        &n,
        &["service", "install", "--platform", "systemd", "--json"],
    );
    assert_eq!(second["changed"], false, "{second}");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), text);
    assert_eq!(
        std::fs::metadata(&unit).unwrap().modified().unwrap(),
        modified
    );

    let out = n.run_env(
        &["service", "uninstall", "--platform", "systemd"],
        NO_MANAGER,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!unit.exists());
    let st = json(
        &n,
        &["service", "status", "--platform", "systemd", "--json"],
    );
    assert_eq!(st["installed"], false);
    // Nothing else was left in the unit directory.
    let left: Vec<_> = std::fs::read_dir(unit.parent().unwrap()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_launchd_plist_parses_with_the_expected_keys() {
    let root = tempfile::tempdir().unwrap();
    let n = Node::new(bin(), root.path(), "svc");
    let plist = n
        .dir
        .join("Library/LaunchAgents/dev.claudemesh.daemon.plist");
    let first = json(
        &n,
        &["service", "install", "--platform", "launchd", "--json"],
    );
    assert_eq!(first["changed"], true);
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&plist)
        .output()
        .unwrap();
    assert!(parsed.status.success(), "{parsed:?}");
    let v: Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(v["Label"], "dev.claudemesh.daemon");
    let exe = bin().canonicalize().unwrap();
    assert_eq!(
        v["ProgramArguments"],
        serde_json::json!([exe.display().to_string(), "daemon", "run"])
    );
    assert_eq!(v["RunAtLoad"], true);
    assert_eq!(v["KeepAlive"]["SuccessfulExit"], false);
    assert_eq!(
        v["EnvironmentVariables"]["CLAUDEMESH_CONFIG_DIR"],
        n.dir.display().to_string()
    );
    let again = json(
        &n,
        &["service", "install", "--platform", "launchd", "--json"],
    );
    assert_eq!(again["changed"], false);
    let out = n.run_env(
        &["service", "uninstall", "--platform", "launchd"],
        NO_MANAGER,
    );
    assert!(out.status.success());
    assert!(!plist.exists());
}

#[test]
fn install_sh_installs_binaries_and_completions_into_a_prefix() {
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    // Prebuilt binaries (the relay binary is stood in for when this crate's tests run alone).
    let bins = root.path().join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy(bin(), bins.join("claudemesh")).unwrap();
    let relay = bin().with_file_name("claudemesh-relay");
    std::fs::copy(
        if relay.exists() {
            relay.as_path()
        } else {
            bin()
        },
        bins.join("claudemesh-relay"),
    )
    .unwrap();
    let prefix = root.path().join("prefix");
    let out = Command::new("bash")
        .arg(&script)
        .args([
            "--binaries",
            bins.to_str().unwrap(),
            "--prefix",
            prefix.to_str().unwrap(),
        ])
        .env("HOME", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let installed = prefix.join("bin/claudemesh");
    let v = Command::new(&installed).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("claudemesh "));
    for f in [
        "share/bash-completion/completions/claudemesh",
        "share/zsh/site-functions/_claudemesh",
        "share/fish/vendor_completions.d/claudemesh.fish",
    ] {
        let text = std::fs::read_to_string(prefix.join(f)).unwrap();
        assert!(text.contains("claudemesh"), "{f}");
    }
    let bash = std::fs::read_to_string(prefix.join("share/bash-completion/completions/claudemesh"))
        .unwrap();
    // The script asks the installed binary as you type; that binary knows the verbs.
    assert!(bash.contains(installed.to_str().unwrap()), "{bash}");
    let verbs = Command::new(&installed)
        .args(["--", "claudemesh", "re"])
        .env("CLAUDEMESH_COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "1")
        .output()
        .unwrap();
    let verbs = String::from_utf8_lossy(&verbs.stdout);
    assert!(
        verbs.contains("remember") && verbs.contains("reply"),
        "completions know the verbs: {verbs}"
    );
    // Running it again replaces the binaries in place.
    let again = Command::new("bash")
        .arg(&script)
        .args([
            "--binaries",
            bins.to_str().unwrap(),
            "--prefix",
            prefix.to_str().unwrap(),
            "--no-completions",
        ])
        .env("HOME", root.path())
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
}

/// A `systemctl` on PATH that answers `show-environment` and `daemon-reload` as `session`
/// says and fails `enable` (the unit does not start), recording every call.
fn fake_systemctl(dir: &Path, session: bool) -> String {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("systemctl.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n  *show-environment*|*daemon-reload*|*disable*) {} ;;\n  *enable*) echo 'Failed to enable unit: Unit claudemesh.service failed' >&2; exit 1 ;;\nesac\nexit 0\n",
        log.display(),
        if session {
            "exit 0"
        } else {
            "echo 'Failed to connect to bus: No medium found' >&2; exit 1"
        }
    );
    let f = bin.join("systemctl");
    std::fs::write(&f, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn daemon_pid(n: &Node) -> Option<u64> {
    let out = n.run(&["daemon", "status", "--json"]);
    serde_json::from_slice::<Value>(&out.stdout).ok()?["pid"].as_u64()
}

#[test]
fn service_install_without_a_user_session_changes_nothing_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = claudemesh_tests::mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let ann = &nodes[0];
    let pid = daemon_pid(ann).expect("ann's daemon runs");
    let path = fake_systemctl(root.path(), false);
    let out = ann.run_env(
        &["service", "install", "--platform", "systemd"],
        &[("PATH", &path)],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no usable systemd user session") && err.contains("keeps running"),
        "{err}"
    );
    assert!(
        !ann.dir
            .join(".config/systemd/user/claudemesh.service")
            .exists()
    );
    // The same daemon still runs, and the mesh still works.
    assert_eq!(daemon_pid(ann), Some(pid));
    ann.ok(&["send", "ben", "still here"]);
    assert_eq!(nodes[1].inbox_wait()[0]["body"], "still here");
    // doctor does not recommend what cannot work here.
    let out = ann.run_env(&["doctor", "--json"], &[("PATH", &path)]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let svc = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "service")
        .cloned()
        .unwrap();
    assert!(
        svc["detail"].as_str().unwrap().contains("runs by hand"),
        "{svc}"
    );
    assert!(
        !svc["fix"]
            .as_str()
            .unwrap()
            .starts_with("claudemesh service install")
    );
}

#[test]
fn a_service_that_does_not_take_over_is_removed_and_the_daemon_started_again() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = claudemesh_tests::mesh(bin(), root.path(), &["ann", "ben"], &[]);
    let path = fake_systemctl(root.path(), true);
    let env: &[(&str, &str)] = &[("PATH", &path), ("CLAUDEMESH_NO_AUTOSTART", "0")];
    let out = nodes[0].run_env(&["service", "install", "--platform", "systemd"], env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not take over") && err.contains("started again"),
        "{err}"
    );
    assert!(
        !nodes[0]
            .dir
            .join(".config/systemd/user/claudemesh.service")
            .exists()
    );
    let calls = std::fs::read_to_string(root.path().join("systemctl.log")).unwrap();
    assert!(
        calls.contains("enable --now") && calls.contains("disable"),
        "{calls}"
    );
    // A daemon answers again (started by hand) and the mesh works.
    nodes[0].ok(&["send", "ben", "back"]);
    assert_eq!(nodes[1].inbox_wait()[0]["body"], "back");
    // It is not the test's child: stop it.
    nodes[0].ok(&["daemon", "stop"]);
    nodes[0].stop();
}

#[test]
fn a_daemon_started_by_hand_during_the_handover_is_not_taken_for_the_service() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, mut nodes) = claudemesh_tests::mesh(bin(), root.path(), &["ann", "ben"], &[]);
    // A manager whose unit never runs our daemon (its MainPID is 1), while something (a
    // hook, the MCP shim) starts one by hand the moment the old one stops.
    let fake = root.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in\n  *MainPID*) echo 1 ;;\n  *enable*) '{}' daemon start >/dev/null 2>&1 ;;\nesac\nexit 0\n",
        bin().display()
    );
    let f = fake.join("systemctl");
    std::fs::write(&f, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: &[(&str, &str)] = &[("PATH", &path), ("CLAUDEMESH_NO_AUTOSTART", "0")];
    let out = nodes[0].run_env(&["service", "install", "--platform", "systemd"], env);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("started by hand"), "{err}");
    assert!(
        !nodes[0]
            .dir
            .join(".config/systemd/user/claudemesh.service")
            .exists()
    );
    // The hand daemon serves the mesh meanwhile; stop it (it is not the test's child).
    nodes[0].ok(&["send", "ben", "still served"]);
    assert_eq!(nodes[1].inbox_wait()[0]["body"], "still served");
    nodes[0].ok(&["daemon", "stop"]);
    nodes[0].stop();
}
