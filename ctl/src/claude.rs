//! Claude Code glue that is not MCP: hooks (`claudemesh hook <event>`), the status line,
//! and `claudemesh launch`.

use claudemesh_daemon::client::Client;
use claudemesh_daemon::{Paths, offline};
use claudemesh_schema::ipc::methods::{self as m, InboxMessage};
use claudemesh_schema::message::{PeerStatus, Priority};
use serde_json::{Value, json};
use std::io::Read as _;
use std::time::Duration;

/// How long a channel push may go unconfirmed (no pull or read) before hooks surface the
/// message again.
const PUSH_CONFIRM_MS: i64 = 30_000;

/// Render messages for Claude's context.
fn render(msgs: &[InboxMessage]) -> String {
    let mut s = String::from("Messages from your claudemesh peers (verified senders):\n");
    for msg in msgs {
        let marker = match msg.priority {
            Priority::Now => "[URGENT] ",
            Priority::Low => "[low] ",
            Priority::Next => "",
        };
        s.push_str(&format!(
            "- {marker}{}: {} [peer id {}]\n",
            msg.from_name,
            msg.body,
            msg.from_id.short()
        ));
    }
    s.push_str("Reply with the send_message tool (or `claudemesh send <name> <text>`) when an answer is expected.");
    s
}

/// Handle one hook event. Never fails loudly: a hook must not disturb Claude Code, so
/// every problem ends in a silent exit 0 (with a note on stderr under `CLAUDEMESH_LOG`).
pub(crate) async fn hook(event: &str) {
    let mut input = String::new();
    let _ = std::io::stdin().take(1 << 20).read_to_string(&mut input);
    let hook_json: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
    let run = async {
        let key = claudemesh_mcp_shim::session_key()?;
        let paths = Paths::from_env().ok()?;
        let mut c = Client::connect(&paths.socket).await.ok()?;
        let open: m::SessionOpenResult = c
            .call(
                m::SESSION_OPEN,
                m::SessionOpenParams {
                    client_key: key,
                    kind: Some("claude".into()),
                    cwd: hook_json["cwd"].as_str().map(str::to_string),
                    name: std::env::var("CLAUDEMESH_DISPLAY_NAME")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    mesh: std::env::var("CLAUDEMESH_MESH")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    delivery: vec!["hooks".into()],
                    role: std::env::var("CLAUDEMESH_ROLE")
                        .ok()
                        .filter(|s| !s.is_empty()),
                    client: Some("claude-code".into()),
                    claude_session: hook_json["session_id"].as_str().map(str::to_string),
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        let session = open.sessions.first()?.session;
        let status = match event {
            "user-prompt-submit" | "post-tool-use" => PeerStatus::Working,
            _ => PeerStatus::Idle,
        };
        let upd = m::SessionUpdateParams {
            session,
            name: None,
            summary: None,
            status: Some(status),
            source: m::StatusSource::Hook,
            delivery: vec!["hooks".into()],
            visible: None,
            join_groups: Vec::new(),
            leave_groups: Vec::new(),
        };
        let _: Option<m::SessionProfile> = c.call(m::SESSION_UPDATE, upd).await.ok();
        let unread: m::InboxResult = c
            .call(
                m::INBOX,
                m::InboxParams {
                    session: Some(session),
                    peek: true,
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        // Priority gate: at the start of a turn the session was idle, so `now` and `next`
        // messages surface; mid-turn only `now`; `low` waits until the session asks.
        // Messages a channel push surfaced moments ago are not repeated; if a push was not
        // followed by a read within the deadline, the hook is the fallback path.
        let now = claudemesh_schema::now_ms();
        let take: Vec<InboxMessage> = unread
            .messages
            .into_iter()
            .filter(|x| x.surfaced_at.is_none_or(|t| now - t > PUSH_CONFIRM_MS))
            .filter(|x| match event {
                "user-prompt-submit" | "session-start" => x.priority != Priority::Low,
                _ => x.priority == Priority::Now,
            })
            .collect();
        if take.is_empty() {
            return None;
        }
        let out = match event {
            "stop" => json!({"decision": "block", "reason": render(&take)}),
            "user-prompt-submit" | "post-tool-use" | "session-start" => {
                let name = match event {
                    "user-prompt-submit" => "UserPromptSubmit",
                    "post-tool-use" => "PostToolUse",
                    _ => "SessionStart",
                };
                json!({"hookSpecificOutput": {"hookEventName": name, "additionalContext": render(&take)}})
            }
            _ => return None,
        };
        let ids = take.iter().map(|x| x.id).collect();
        let _: Option<Value> = c
            .call(m::MARK_READ, m::MarkReadParams { session, ids })
            .await
            .ok();
        Some(out)
    };
    if let Ok(Some(out)) = tokio::time::timeout(Duration::from_secs(5), run).await {
        println!("{out}");
    }
}

/// One line for Claude Code's status bar, from the local store only (no daemon call, no
/// network): mesh, peers online / known, unread.
pub(crate) fn status_line() -> String {
    let Ok(paths) = Paths::from_env() else {
        return "claudemesh: not set up".into();
    };
    if !paths.db().exists() {
        return "claudemesh: no mesh (run `claudemesh up`)".into();
    }
    let Ok(conn) = offline::open_readonly(&paths.db()) else {
        return "claudemesh: unavailable".into();
    };
    let Ok(meshes) = offline::q_meshes(&conn) else {
        return "claudemesh: unavailable".into();
    };
    let parts: Vec<String> = meshes
        .iter()
        .map(|mr| {
            let peers = offline::q_peers(&conn, mr).unwrap_or_default();
            let online = peers.iter().filter(|p| p.online && !p.me).count();
            let total = peers.iter().filter(|p| !p.me).count();
            let unread = offline::q_counts(&conn, mr.id).map(|c| c.1).unwrap_or(0);
            if unread > 0 {
                format!("{} {online}/{total} online · {unread} unread", mr.name)
            } else {
                format!("{} {online}/{total} online", mr.name)
            }
        })
        .collect();
    if parts.is_empty() {
        "claudemesh: no mesh".into()
    } else {
        format!("claudemesh: {}", parts.join(" | "))
    }
}

/// Find `name` on PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `claudemesh launch`: run Claude Code with claudemesh's channel loaded, passing the
/// remaining arguments through. Replaces this process (on Unix).
pub(crate) fn launch(
    name: Option<String>,
    groups: Option<String>,
    mesh: Option<String>,
    role: Option<String>,
    args: Vec<String>,
) -> Result<(), String> {
    let claude = which("claude").ok_or(
        "Claude Code (`claude`) is not on your PATH; install it from https://docs.anthropic.com/claude-code, then run this again",
    )?;
    let mut cmd = std::process::Command::new(claude);
    cmd.arg("--dangerously-load-development-channels")
        .arg("server:claudemesh")
        .args(&args);
    cmd.env("CLAUDEMESH_CHANNELS", "1");
    if let Some(n) = name {
        cmd.env("CLAUDEMESH_DISPLAY_NAME", n);
    }
    if let Some(g) = groups {
        cmd.env("CLAUDEMESH_GROUPS", g);
    }
    if let Some(mm) = mesh {
        cmd.env("CLAUDEMESH_MESH", mm);
    }
    if let Some(r) = role {
        cmd.env("CLAUDEMESH_ROLE", r);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let e = cmd.exec();
        Err(format!("cannot start claude: {e}"))
    }
    #[cfg(not(unix))]
    {
        let st = cmd
            .status()
            .map_err(|e| format!("cannot start claude: {e}"))?;
        std::process::exit(st.code().unwrap_or(1));
    }
}
