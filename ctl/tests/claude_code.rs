//! claudemesh under the real Claude Code CLI (npm `@anthropic-ai/claude-code`, pinned in
//! `scripts/test`), pointed at a scripted stand-in for the Messages API on loopback that
//! records every request: what the model saw is what these tests check.
//!
//! Two daemons (alice, bob) share a mesh; bob runs Claude Code with claudemesh installed
//! into its home (`claudemesh install`: MCP server and hooks). Claude Code needs its
//! channels feature flag for pushes; the interactive channel test sets what the CLI reads
//! for it from its own config (`cachedGrowthBookFeatures.tengu_harbor` in `~/.claude.json`),
//! and the skipped-push test leaves it off.
#![allow(clippy::unwrap_used)]

use claudemesh_tests::claude::{self, Tmux, eventually};
use claudemesh_tests::model::{ModelStub, Recorded, occurrences};
use claudemesh_tests::{Node, RelayProc, mesh_with};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_claudemesh"))
}

/// Ended sessions drop out of `peers` at once here (the default grace is a minute).
const CONFIG: &str = "[peers]\noffline_grace_secs = 0\n";

struct World {
    _root: tempfile::TempDir,
    _relay: RelayProc,
    alice: Node,
    bob: Node,
    model: ModelStub,
    /// bob's Claude Code works here (its label in peers is `proj`).
    work: PathBuf,
    env: Vec<(String, String)>,
}

fn world(channels: bool) -> World {
    let root = tempfile::tempdir().unwrap();
    let (relay, mut nodes) = mesh_with(bin(), root.path(), &["alice", "bob"], &[], CONFIG);
    let bob = nodes.pop().unwrap();
    let alice = nodes.pop().unwrap();
    // bob's home is his config directory (the kit sets HOME there).
    let out = bob.run(&["install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = root.path().join("proj");
    std::fs::create_dir_all(&work).unwrap();
    claude::prepare_home(&bob.dir, &work, channels);
    log_hook_outputs(&bob.dir);
    let model = ModelStub::start();
    let env = claude::env(&bob.dir, &bob.dir, &model.url());
    World {
        _root: root,
        _relay: relay,
        alice,
        bob,
        model,
        work,
        env,
    }
}

/// Make every claudemesh hook also append what it printed to `<home>/hook-outputs.log`.
fn log_hook_outputs(home: &Path) {
    let path = home.join(".claude").join("settings.json");
    let mut st: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let log = home.join("hook-outputs.log");
    for (_, groups) in st["hooks"].as_object_mut().unwrap().iter_mut() {
        for g in groups.as_array_mut().unwrap() {
            for h in g["hooks"].as_array_mut().unwrap() {
                let cmd = h["command"].as_str().unwrap().to_string();
                h["command"] = Value::from(format!("{cmd} | tee -a '{}'", log.display()));
            }
        }
    }
    std::fs::write(&path, st.to_string()).unwrap();
}

/// How often the daemon handed each message to the model: in a hook's output, or as a
/// push Claude Code queued (its transcript's queue entries). Each at most once.
fn handed_at_most_once(w: &World) {
    let mut count: std::collections::HashMap<String, usize> = Default::default();
    let uuid = |s: &str| -> Vec<String> {
        s.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
            .filter(|t| t.len() == 36 && t.matches('-').count() == 4)
            .map(str::to_string)
            .collect()
    };
    let hooks = std::fs::read_to_string(w.bob.dir.join("hook-outputs.log")).unwrap_or_default();
    for line in hooks.lines() {
        if let Some(at) = line.find("claudemesh message ids:") {
            let end = line[at..].find(']').map(|e| at + e).unwrap_or(line.len());
            for id in uuid(&line[at..end]) {
                *count.entry(id).or_default() += 1;
            }
        }
    }
    let projects = w.bob.dir.join(".claude").join("projects");
    for dir in std::fs::read_dir(&projects).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for line in std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .lines()
            {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if v["type"] == "queue-operation" && v["operation"] == "enqueue" {
                    let content = v["content"].as_str().unwrap_or("");
                    if let Some(id) = claudemesh_schema::render::channel_tag_id(content) {
                        *count.entry(id.to_string()).or_default() += 1;
                    }
                }
            }
        }
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "handed to the model more than once: {twice:?}"
    );
}

/// alice sends `text` to `to`; returns the message id.
fn send(w: &World, to: &str, text: &str, priority: &str) -> String {
    let v = w.alice.json(&["send", to, text, "--priority", priority]);
    v["id"].as_str().unwrap().to_string()
}

fn stage(w: &World, id: &str) -> Value {
    w.alice.json(&["sent", id])
}

fn wait_stage(w: &World, id: &str, stage: &str) -> Value {
    let out = w
        .alice
        .run(&["sent", id, "--wait-for", stage, "--timeout", "30", "--json"]);
    if !out.status.success() {
        panic!(
            "message {id} did not reach {stage}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            explain(w)
        );
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What bob's side knows, for a failure message: its daemon's log, its inbox, and how
/// many model turns there were.
fn explain(w: &World) -> String {
    let mut logs = String::new();
    for e in std::fs::read_dir(w.bob.dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        logs.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    let inbox = w.bob.run(&["inbox", "--peek", "--json"]);
    // How each row is claimed (who it was shown to, by which path), read from the store.
    let claims = rusqlite::Connection::open_with_flags(
        w.bob.dir.join("daemon.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|c| {
        let mut stmt = c.prepare(
            "SELECT hex(id), hex(session), shown_at, shown_via, hex(shown_to), accepted_at, read_at
             FROM inbox ORDER BY rowid DESC LIMIT 5",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(format!(
                "{:?} session {:?} shown_at {:?} via {:?} to {:?} accepted {:?} read {:?}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<i64>>(6)?
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>()
    })
    .map(|v| v.join("\n"))
    .unwrap_or_else(|e| format!("(cannot read the store: {e})"));
    // The transcript lines that carry claudemesh text, as the daemon would read them.
    let mut sightings = String::new();
    let mut stack = vec![w.bob.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for l in text
                    .lines()
                    .filter(|l| l.contains("claudemesh message ids"))
                {
                    sightings.push_str(&format!("{}: {}\n", p.display(), &l[..l.len().min(600)]));
                }
                // The order of its entries (what confirms a message is the answer after it).
                let order: Vec<String> = text
                    .lines()
                    .map(|l| {
                        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                        format!(
                            "{}<{}<{}{}{}",
                            &v["uuid"].as_str().unwrap_or("-")
                                [..v["uuid"].as_str().map_or(1, |u| u.len().min(8))],
                            &v["parentUuid"].as_str().unwrap_or("-")
                                [..v["parentUuid"].as_str().map_or(1, |u| u.len().min(8))],
                            v["type"].as_str().unwrap_or("?"),
                            v["attachment"]["type"]
                                .as_str()
                                .map(|t| format!("/{t}"))
                                .unwrap_or_default(),
                            if l.contains("claudemesh message ids") {
                                "*"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                sightings.push_str(&format!("  entries: {}\n", order.join(" ")));
                for l in text.lines().filter(|l| l.contains("\"type\":\"system\"")) {
                    sightings.push_str(&format!("  system: {}\n", &l[..l.len().min(400)]));
                }
            }
        }
    }
    format!(
        "model turns: {}\nbob's inbox: {}\nbob's inbox claims:\n{claims}\ntranscript sightings:\n{sightings}\nbob's daemon log:\n{logs}\nhook outputs:\n{}",
        w.model.turns().len(),
        String::from_utf8_lossy(&inbox.stdout),
        std::fs::read_to_string(w.bob.dir.join("hook-outputs.log")).unwrap_or_default()
    )
}

/// Every model turn holds `text` at most once, and the last turn exactly once: the model
/// saw it, once.
fn seen_once(turns: &[Recorded], text: &str) {
    for (i, r) in turns.iter().enumerate() {
        if occurrences(r, text) > 1 {
            let input = serde_json::json!([r.body["system"], r.body["messages"]]).to_string();
            let places: Vec<&str> = input
                .match_indices(text)
                .map(|(at, _)| &input[at.saturating_sub(300)..(at + 100).min(input.len())])
                .collect();
            panic!(
                "turn {i} shows {text:?} {} times:\n{}",
                places.len(),
                places.join("\n---\n")
            );
        }
    }
    let last = turns.last().expect("a model turn");
    assert_eq!(
        occurrences(last, text),
        1,
        "the last turn holds {text:?} once"
    );
}

/// `read` came after a request that held the message.
fn read_after_seen(w: &World, id: &str, text: &str) {
    let st = wait_stage(w, id, "read");
    assert_eq!(st["stage"], "read", "{st}");
    let first = w
        .model
        .turns()
        .into_iter()
        .find(|r| occurrences(r, text) > 0)
        .unwrap_or_else(|| panic!("no model turn held {text:?}"));
    let read_at = st["read_at"].as_i64().unwrap();
    assert!(
        read_at >= first.at,
        "read at {read_at}, before the model saw it at {}",
        first.at
    );
}

/// bob's Claude Code sessions as alice lists them (`--all`: also ended ones).
fn bob_sessions(w: &World, all: bool) -> Vec<Value> {
    let mut args = vec!["peers"];
    if all {
        args.push("--all");
    }
    w.alice.json(&args)["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["member_name"] == "bob" && p["kind"] == "claude")
        .cloned()
        .collect()
}

/// Print mode (`claude -p`, no channels): messages from before, during and after a turn
/// reach the model once each through the hooks, `read` only after the model saw them;
/// `--resume` stays one peer; a health check and a finished run leave no row.
#[test]
fn print_mode_hooks_show_each_message_once_and_resume_is_one_peer() {
    let w = world(false);
    let started = w.work.join("started");
    let go = w.work.join("go");
    let before = send(&w, "bob", "before-the-turn", "next");
    wait_stage(&w, &before, "delivered");

    let tool = format!(
        "RUN:touch {}; while [ ! -e {} ]; do sleep 0.1; done; echo released",
        started.display(),
        go.display()
    );
    let run = claude::spawn_print(
        &w.work,
        &w.env,
        &["--output-format", "json", &format!("please {tool}")],
    );
    eventually("the tool call runs", 60, || started.exists());
    // bob is busy in a tool call: a `now` message shows right after it; a `next` one
    // waits for bob's next prompt (no channel in print mode: nothing can start a turn).
    let urgent = send(&w, "bob", "urgent-during-the-turn", "now");
    let later = send(&w, "bob", "later-during-the-turn", "next");
    wait_stage(&w, &urgent, "delivered");
    wait_stage(&w, &later, "delivered");
    assert_eq!(
        stage(&w, &later)["stage"],
        "delivered",
        "not read before it is shown"
    );
    std::fs::write(&go, b"").unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "claude -p failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let claude_session = result["session_id"].as_str().unwrap().to_string();

    for (id, text) in [
        (&before, "before-the-turn"),
        (&urgent, "urgent-during-the-turn"),
    ] {
        read_after_seen(&w, id, text);
    }
    let turns = w.model.turns();
    for text in ["before-the-turn", "urgent-during-the-turn"] {
        seen_once(&turns, text);
    }
    assert_eq!(
        stage(&w, &later)["stage"],
        "delivered",
        "`next` waits for a prompt"
    );
    let sessions = bob_sessions(&w, true);
    assert_eq!(sessions.len(), 1, "one peer for the run: {sessions:?}");
    let peer_id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(sessions[0]["name"], "proj", "labelled by its directory");
    // The run is over: nothing lingers in `peers`.
    w.alice.wait("peer-offline", Some(&peer_id[..8]));
    assert!(
        bob_sessions(&w, false).is_empty(),
        "{:?}",
        bob_sessions(&w, false)
    );

    // After the turn: the next run, resumed, sees the new message, and is the same peer.
    // Resumed later than the daemon keeps reading an ended session's transcript (2 s): a
    // resumed session is followed again. (Waiting here exercises that expiry; nothing to
    // synchronise on.)
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = send(&w, "bob", "after-the-turn", "next");
    wait_stage(&w, &after, "delivered");
    let out = claude::print(
        &w.work,
        &w.env,
        &["--resume", &claude_session, "hello again"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_after_seen(&w, &after, "after-the-turn");
    read_after_seen(&w, &later, "later-during-the-turn");
    let turns = w.model.turns();
    for text in [
        "before-the-turn",
        "urgent-during-the-turn",
        "later-during-the-turn",
        "after-the-turn",
    ] {
        seen_once(&turns, text);
    }
    let sessions = bob_sessions(&w, true);
    assert_eq!(
        sessions
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![peer_id.as_str()],
        "--resume keeps one peer id"
    );

    // A health check lists the server and leaves no peer behind, here or at alice's.
    let out = std::process::Command::new(claude::binary())
        .current_dir(&w.work)
        .env_clear()
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .args(["mcp", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("claudemesh") && text.contains("Connected"),
        "{text}"
    );
    assert_eq!(
        bob_sessions(&w, true).len(),
        1,
        "{:?}",
        bob_sessions(&w, true)
    );
    let own = w.bob.json(&["peers", "--all"])["meshes"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["me"] == true)
        .count();
    assert_eq!(own, 1, "bob's daemon knows one session of its own");
}

/// Start `claudemesh launch` (Claude Code with the claudemesh channel) in tmux; with the
/// channels flag on, accept Claude Code's development-channel prompt.
fn launch(w: &World, channels: bool) -> Tmux {
    let t = Tmux::start(&w.work, &w.env, bin(), &["launch"]);
    if channels {
        t.wait_for("Loading development channels", 60);
        // The prompt takes keys a moment after it is drawn: press Enter until it is gone.
        eventually(
            "Claude Code takes the development-channel answer",
            60,
            || {
                let screen = t.screen();
                if screen.contains("Enter to confirm") {
                    t.key("Enter");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                screen.contains("for shortcuts")
            },
        );
    }
    t.wait_for("for shortcuts", 60);
    w.alice.wait("peer-online", Some("bob/proj"));
    t
}

/// Interactive, channels on: a push while idle starts a turn, a push during a tool call
/// is injected after it, a `next` one waits for the turn to end; each reaches the model
/// once and is `read` only then; `send bob` reaches bob's open session.
#[test]
fn interactive_channel_pushes_reach_the_model_once() {
    let w = world(true);
    let t = launch(&w, true);
    // The person, by name, while their Claude Code is open.
    let idle = send(&w, "bob", "pushed-while-idle", "next");
    read_after_seen(&w, &idle, "pushed-while-idle");
    seen_once(&w.model.turns(), "pushed-while-idle");
    let me = &bob_sessions(&w, false)[0];
    assert!(
        me["delivery"]
            .as_array()
            .unwrap()
            .contains(&Value::from("channel")),
        "the channel is listed once seen to work: {me}"
    );

    let started = w.work.join("started");
    let go = w.work.join("go");
    t.type_line(&format!(
        "please RUN:touch {}; while [ ! -e {} ]; do sleep 0.1; done; echo released",
        started.display(),
        go.display()
    ));
    eventually("the tool call runs", 60, || started.exists());
    let urgent = send(&w, "bob", "pushed-during-a-tool-call", "now");
    let later = send(&w, "bob", "held-until-the-turn-ends", "next");
    wait_stage(&w, &urgent, "delivered");
    wait_stage(&w, &later, "delivered");
    std::fs::write(&go, b"").unwrap();
    read_after_seen(&w, &urgent, "pushed-during-a-tool-call");
    read_after_seen(&w, &later, "held-until-the-turn-ends");
    let turns = w.model.turns();
    for text in [
        "pushed-while-idle",
        "pushed-during-a-tool-call",
        "held-until-the-turn-ends",
    ] {
        seen_once(&turns, text);
    }

    handed_at_most_once(&w);
    // Exit: the session goes offline and drops out of `peers`.
    t.wait_for("for shortcuts", 30);
    t.type_line("/exit");
    t.wait_for("claudemesh-test-exited", 30);
    w.alice.wait("peer-offline", Some("bob/proj"));
    assert!(bob_sessions(&w, false).is_empty());
}

/// Interactive, channels off (no feature flag): the shim pushes, Claude Code drops it;
/// the sender sees no more than `delivered`, and the next prompt's hook shows it.
#[test]
fn a_push_claude_code_skips_stays_delivered_and_reaches_the_model_by_a_hook() {
    let w = world(false);
    let t = launch(&w, false);
    let id = send(&w, "bob", "skipped-by-claude-code", "next");
    wait_stage(&w, &id, "delivered");
    let log_dir = w.bob.dir.join("logs");
    eventually("bob's daemon sees the push was not taken", 30, || {
        std::fs::read_dir(&log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .is_ok_and(|t| t.contains("did not take a channel push"))
            })
    });
    assert_eq!(stage(&w, &id)["stage"], "delivered");
    assert!(
        w.model
            .turns()
            .iter()
            .all(|r| occurrences(r, "skipped-by-claude-code") == 0),
        "not in front of the model yet"
    );
    let me = &bob_sessions(&w, false)[0];
    assert!(
        !me["delivery"]
            .as_array()
            .unwrap()
            .contains(&Value::from("channel")),
        "a channel never seen to work is not listed: {me}"
    );
    t.type_line("hello");
    read_after_seen(&w, &id, "skipped-by-claude-code");
    seen_once(&w.model.turns(), "skipped-by-claude-code");
    handed_at_most_once(&w);
    t.type_line("/exit");
    t.wait_for("claudemesh-test-exited", 30);
}

/// Without hooks, the transcript alone tells bob's status: working while the turn runs,
/// idle when it ends.
#[test]
fn without_hooks_the_transcript_tells_the_status() {
    let w = world(true);
    let out = w.bob.run(&["uninstall"]);
    assert!(out.status.success());
    let out = w.bob.run(&["install", "--no-hooks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = launch(&w, true);
    w.alice.wait("peer-idle", Some("bob/proj"));
    let started = w.work.join("started");
    let go = w.work.join("go");
    t.type_line(&format!(
        "please RUN:touch {}; while [ ! -e {} ]; do sleep 0.1; done; echo released",
        started.display(),
        go.display()
    ));
    eventually("the tool call runs", 60, || started.exists());
    w.alice.wait("peer-working", Some("bob/proj"));
    std::fs::write(&go, b"").unwrap();
    w.alice.wait("peer-idle", Some("bob/proj"));
    let me = &bob_sessions(&w, false)[0];
    assert!(
        !me["delivery"]
            .as_array()
            .unwrap()
            .contains(&Value::from("hooks")),
        "no hooks ran: {me}"
    );
    t.type_line("/exit");
    t.wait_for("claudemesh-test-exited", 30);
}

/// `claude mcp list` with the daemon down: the server answers, and nothing starts — no
/// daemon, and no embedded relay bound on its port.
#[test]
fn a_health_check_with_the_daemon_down_starts_nothing() {
    let root = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bob = Node::with_config(
        bin(),
        root.path(),
        "bob",
        &format!("[relay]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let out = bob.run(&["install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = root.path().join("proj");
    std::fs::create_dir_all(&work).unwrap();
    claude::prepare_home(&bob.dir, &work, false);
    let model = ModelStub::start();
    let env: Vec<(String, String)> = claude::env(&bob.dir, &bob.dir, &model.url())
        .into_iter()
        .filter(|(k, _)| k != "CLAUDEMESH_NO_AUTOSTART")
        .collect();
    let out = std::process::Command::new(claude::binary())
        .current_dir(&work)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .args(["mcp", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("claudemesh") && text.contains("Connected"),
        "{text}"
    );
    assert!(
        !bob.dir.join("daemon.sock").exists(),
        "no daemon was started"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        "no relay bound on {port}"
    );
}

/// A tool of a peer's shared MCP server is a tool of bob's Claude Code: listed to the
/// model as `mcp__claudemesh__<server>__<tool>` with the host's schema and a description
/// marked as the host's, and a call the model makes runs on alice's machine and comes
/// back as its result.
#[test]
fn claude_code_calls_a_peers_shared_mcp_tool() {
    let w = world(false);
    let server = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/mcp/echo_server.py")
        .canonicalize()
        .unwrap();
    w.alice.ok(&[
        "mcp-host",
        "add",
        "echo",
        "--",
        "python3",
        server.to_str().unwrap(),
    ]);
    eventually("bob's catalog lists echo", 30, || {
        w.bob.ok(&["tools", "list"]).contains("echo")
    });
    let name = "mcp__claudemesh__echo__echo";
    let out = claude::print(
        &w.work,
        &w.env,
        &[
            "--output-format",
            "json",
            &format!("--allowedTools={name}"),
            &format!(r#"CALL:{name} {{"text":"ran on alice's machine"}}"#),
        ],
    );
    assert!(
        out.status.success(),
        "claude -p failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let turns = w.model.turns();
    let listed = turns[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} offered to the model"));
    assert!(
        listed["description"]
            .as_str()
            .unwrap()
            .contains("shared in your claudemesh mesh by alice"),
        "{listed}"
    );
    assert_eq!(listed["input_schema"]["required"][0], "text", "{listed}");
    let answered = turns
        .iter()
        .find(|t| occurrences(t, "tool_result") > 0)
        .expect("the call's result went back to the model");
    let result = answered.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .find(|b| b["type"] == "tool_result")
        .unwrap();
    let text = result["content"].to_string();
    assert!(text.contains("ran on alice's machine"), "{result}");
    assert!(
        text.contains("[result of echo__echo from alice"),
        "{result}"
    );
    assert_ne!(result["is_error"], true, "{result}");
    let audit = w.alice.json(&["tools", "audit"]);
    assert_eq!(audit["entries"][0]["tool"], "echo", "{audit}");
}
