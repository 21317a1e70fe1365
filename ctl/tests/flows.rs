#![allow(clippy::unwrap_used)]
//! The upstream flows people rely on (issue 13, item 9): the bare-command welcome, an
//! invite link as the whole command line, `launch`'s own flags, `info`, mesh templates.
//! Real relay and daemons on loopback, driven through the CLI.

use claudemesh_tests::{Node, mesh};
use std::path::{Path, PathBuf};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

#[test]
fn bare_claudemesh_welcomes_with_the_state_of_the_machine_and_exits_0() {
    let root = tempfile::tempdir().unwrap();
    // A machine with nothing set up: it says so and what to run, and starts nothing.
    let fresh = Node::new(bin(), root.path(), "fresh");
    let out = fresh.run(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the daemon is not running"), "{text}");
    assert!(text.contains("No mesh joined yet"), "{text}");
    assert!(
        text.contains("claudemesh up") && text.contains("claudemesh <invite-link>"),
        "{text}"
    );
    assert!(
        !fresh.dir.join("daemon.db").exists(),
        "the welcome starts nothing"
    );

    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let text = nodes[0].ok(&[]);
    assert!(text.contains("the daemon is running"), "{text}");
    assert!(text.contains("Meshes: test (1 online)."), "{text}");
    assert!(text.contains("claudemesh launch"), "{text}");
}

#[test]
fn an_invite_link_alone_joins_the_mesh() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice"], &[]);
    let mut bob = Node::new(bin(), root.path(), "bob");
    bob.start();
    let link = nodes[0].ok(&["invite"]);
    let out = bob.ok(&[&link]);
    assert!(out.contains("Joined test as bob"), "{out}");
    bob.wait("peer-online", Some("alice"));
}

/// A stand-in for `claude` on PATH that prints its arguments and the environment
/// claudemesh hands it.
fn fake_claude(root: &Path) -> String {
    let fake = root.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let script = fake.join("claude");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"arg: $a\"; done\necho \"env: channels=$CLAUDEMESH_CHANNELS mode=$CLAUDEMESH_MESSAGE_MODE name=$CLAUDEMESH_DISPLAY_NAME\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn args_of(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("arg: ").map(str::to_string))
        .collect()
}

/// The pinned Claude Code CLI (`scripts/test` installs it), when there.
fn real_claude() -> Option<PathBuf> {
    std::env::var_os("CLAUDEMESH_TEST_CLAUDE")
        .map(PathBuf::from)
        .or_else(|| {
            Some(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/claude-code/node_modules/.bin/claude"),
            )
        })
        .filter(|p| p.exists())
}

#[test]
fn launch_takes_resume_continue_join_message_mode_system_prompt_and_quiet() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice"], &[]);
    let alice = &nodes[0];
    let path = fake_claude(root.path());
    let env = [("PATH", path.as_str())];

    // `launch --resume X`, with a system prompt and one of claude's own flags, quietly.
    let out = alice.run_env(
        &[
            "launch",
            "--resume",
            "abc",
            "--system-prompt",
            "be brief",
            "--model",
            "opus",
            "--quiet",
        ],
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        args_of(&out.stdout),
        [
            "--dangerously-load-development-channels",
            "server:claudemesh",
            "--resume",
            "abc",
            "--append-system-prompt",
            "be brief",
            "--model",
            "opus"
        ]
    );
    assert!(out.stderr.is_empty(), "--quiet prints nothing: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("env: channels=1 mode=push"));

    // `-c` in inbox mode: no channel is loaded, and the session knows its mode.
    let out = alice.run_env(&["-c", "--message-mode", "inbox"], &env);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(args_of(&out.stdout), ["--continue"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("env: channels=0 mode=inbox"),
        "{out:?}"
    );
    assert!(
        out.stderr.is_empty(),
        "no channel prompt to warn about: {out:?}"
    );
    // `--resume` alone lets Claude Code offer its list.
    let out = alice.run_env(&["launch", "-r"], &env);
    assert_eq!(args_of(&out.stdout)[2..], ["--resume"], "{out:?}");
    // A bad mode is refused before anything starts.
    let (code, err) = alice.fails(&["launch", "--message-mode", "loud"]);
    assert_eq!(code, 2, "{err}");

    // `--join <link>` joins first, then launches in the new mesh.
    let mut bob = Node::new(bin(), root.path(), "bob");
    bob.start();
    let link = alice.ok(&["invite"]);
    let out = bob.run_env(
        &["launch", "--join", &link, "--name", "bob-claude", "-q"],
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Joined test as bob"), "{text}");
    assert!(text.contains("name=bob-claude"), "{text}");
    bob.wait("peer-online", Some("alice"));
    // A link that does not parse stops before claude starts.
    let out = bob.run_env(&["launch", "--join", "claudemesh://join/nonsense"], &env);
    assert!(!out.status.success());
    assert!(args_of(&out.stdout).is_empty(), "{out:?}");

    // Every flag launch passes exists in the pinned Claude Code.
    if let Some(claude) = real_claude() {
        let help = std::process::Command::new(claude)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in [
            "-r, --resume [value]",
            "-c, --continue",
            "--append-system-prompt <prompt>",
        ] {
            assert!(
                help.contains(flag),
                "claude --help has no {flag:?}:\n{help}"
            );
        }
    }
}

#[test]
fn hooks_in_inbox_mode_say_how_many_wait_and_in_off_mode_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let mut claude = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = claude.id().to_string();
    let hook = |mode: &str, event: &str| -> String {
        let out = bob.run_stdin(
            &["hook", event],
            &[
                ("CLAUDEMESH_LEASE_PID", pid.as_str()),
                ("CLAUDEMESH_DISPLAY_NAME", "bob-claude"),
                ("CLAUDEMESH_MESSAGE_MODE", mode),
            ],
            br#"{"session_id": "S"}"#,
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    hook("inbox", "session-start");
    alice.wait("peer-online", Some("bob-claude"));
    let id = alice.json(&["peers"])["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bob-claude")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    alice.ok(&["send", &id, "the secret plan"]);
    let got = bob.json(&["inbox", "--session", &id, "--peek", "--wait", "20"]);
    assert_eq!(got["messages"][0]["body"], "the secret plan");

    let ctx = hook("inbox", "user-prompt-submit");
    assert!(
        ctx.contains("1 message waiting; call check_messages"),
        "{ctx}"
    );
    assert!(
        !ctx.contains("secret plan"),
        "inbox mode shows no text: {ctx}"
    );
    assert_eq!(hook("off", "user-prompt-submit"), "", "off shows nothing");
    // Still unread: it waits for the session to ask.
    let got = bob.json(&["inbox", "--session", &id, "--peek"]);
    assert_eq!(got["messages"][0]["body"], "the secret plan");
    // In push mode the same hook shows it.
    let ctx = hook("push", "user-prompt-submit");
    assert!(ctx.contains("the secret plan"), "{ctx}");
    claude.kill().unwrap();
    claude.wait().unwrap();
}

#[test]
fn create_from_a_template_sets_up_groups_skills_and_a_template_key() {
    let root = tempfile::tempdir().unwrap();
    let (relay, nodes) = mesh(bin(), root.path(), &["alice", "bob"], &[]);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let list = alice.ok(&["create", "--list-templates"]);
    for t in ["solo", "pair", "team"] {
        assert!(list.contains(t), "{list}");
    }
    // An unknown template is refused before any mesh is created.
    let addr = relay.addr.to_string();
    let (code, err) = alice.fails(&[
        "create",
        "x",
        "--template",
        "party",
        "--relay",
        &addr,
        "--fingerprint",
        &relay.fingerprint,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("solo, pair, team"), "{err}");
    assert_eq!(alice.json(&["list"])["meshes"].as_array().unwrap().len(), 1);

    let out = alice.ok(&[
        "create",
        "crew",
        "--template",
        "team",
        "--relay",
        &addr,
        "--fingerprint",
        &relay.fingerprint,
    ]);
    assert!(out.contains("From the team template"), "{out}");
    // The writes are ordinary ops: sequenced once the new mesh's link is up.
    alice.ok(&["wait", "synced", "--mesh", "crew", "--timeout", "20"]);
    let skills = alice.json(&["skill", "list", "--mesh", "crew"]);
    let names: Vec<_> = skills["skills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{skills}");
    for n in ["standup", "review", "handoff"] {
        assert!(names.iter().any(|x| x == n), "{names:?}");
    }
    let key = alice.json(&["state", "get", "template", "--mesh", "crew"]);
    assert_eq!(key["value"]["name"], "team", "{key}");
    let info = alice.json(&["info", "--mesh", "crew"]);
    assert_eq!(
        info["meshes"][0]["your_groups"],
        serde_json::json!(["dev"]),
        "{info}"
    );
    // A member who joins reads the same: they are ordinary shared state.
    let link = alice.ok(&["invite", "--mesh", "crew"]);
    bob.ok(&["join", &link, "--wait", "20"]);
    bob.ok(&["wait", "synced", "--mesh", "crew", "--timeout", "20"]);
    let skills = bob.json(&["skill", "list", "--mesh", "crew"]);
    assert_eq!(skills["skills"].as_array().unwrap().len(), 3, "{skills}");
}
