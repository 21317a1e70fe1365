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
        .env("COMPLETE", "bash")
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
