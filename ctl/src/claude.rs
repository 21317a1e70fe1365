//! Claude Code glue: `claudemesh mcp` (the server Claude Code runs; it lives in the
//! mcp-shim crate), hooks (`claudemesh hook <event>`), the status line, and
//! `claudemesh launch`.

use claudemesh_daemon::client::Client;
use claudemesh_daemon::{Paths, offline};
use claudemesh_schema::ipc::claude::{HOOK, HookEvent, HookParams, HookResult};
use serde_json::{Value, json};
use std::io::Read as _;
use std::time::Duration;

use crate::cli::{HookArgs, LaunchArgs};
use crate::commands::block_on;
use crate::exit::{Exit, Failure, Res};

/// `claudemesh mcp`: stdout carries only MCP frames; logs go to stderr, quiet by default.
pub(crate) fn mcp() -> Res {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLAUDEMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // rmcp logs whole requests, answers and unparsable lines at debug (`received
    // request`): tool arguments, a `vault_set` value among them, would reach the log
    // Claude Code keeps of this stderr. rmcp is held to info at most (quieter filters
    // keep it quieter).
    let verbose = filter
        .max_level_hint()
        .is_none_or(|l| l > tracing_subscriber::filter::LevelFilter::INFO);
    let filter = match "rmcp=info".parse() {
        Ok(d) if verbose => filter.add_directive(d),
        _ => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let paths =
        Paths::from_env().map_err(|e| Failure::new(Exit::DaemonUnavailable, e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::DaemonUnavailable,
            format!("cannot find the claudemesh executable: {e}"),
        )
    })?;
    block_on(async move {
        claudemesh_mcp_shim::run(paths, exe)
            .await
            .map_err(|e| Failure::new(Exit::Error, e.to_string()))
    })
}

/// Handle one hook event: one `hook` call to the daemon, which decides what the model
/// sees (see the daemon's `hooks`). Never fails loudly: a hook must not disturb Claude
/// Code, so every problem ends in a silent exit 0.
pub(crate) async fn hook(a: HookArgs) -> Res {
    let event = a.event.as_str();
    let mut input = String::new();
    let _ = std::io::stdin().take(1 << 20).read_to_string(&mut input);
    let hook_json: Value = serde_json::from_str(&input).unwrap_or(Value::Null);
    let Some(ev) = HookEvent::from_arg(event) else {
        return Ok(());
    };
    let run = async {
        let paths = Paths::from_env().ok()?;
        // Hooks never start a daemon: Claude Code must not wait on one coming up.
        let mut c = Client::connect(&paths.socket).await.ok()?;
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        let text = |k: &str| hook_json[k].as_str().map(str::to_string);
        let r: HookResult = c
            .call(
                HOOK,
                HookParams {
                    event: ev,
                    claude_session: text("session_id")
                        .or_else(claudemesh_mcp_shim::claude::session_id),
                    transcript: text("transcript_path"),
                    cwd: text("cwd"),
                    prompt: text("prompt"),
                    reason: text("reason"),
                    process: claudemesh_mcp_shim::claude::process_key(),
                    name: env("CLAUDEMESH_DISPLAY_NAME"),
                    mesh: env("CLAUDEMESH_MESH"),
                    role: env("CLAUDEMESH_ROLE"),
                    groups: env("CLAUDEMESH_GROUPS")
                        .unwrap_or_default()
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect(),
                    message_mode: env("CLAUDEMESH_MESSAGE_MODE"),
                },
            )
            .await
            .ok()?;
        match (ev, r.block, r.context) {
            (HookEvent::Stop, Some(reason), _) => {
                Some(json!({"decision": "block", "reason": reason}))
            }
            (HookEvent::Stop, None, _) => None,
            (_, _, Some(ctx)) => Some(json!({"hookSpecificOutput": {
                "hookEventName": ev.claude_name(),
                "additionalContext": ctx,
            }})),
            _ => None,
        }
    };
    if let Ok(Some(out)) = tokio::time::timeout(Duration::from_secs(5), run).await {
        crate::output::line(&out.to_string());
    }
    Ok(())
}

/// One line for Claude Code's status bar, from the local store (no daemon call, no
/// network): mesh, peers online / known, unread. With the daemon down nobody is shown
/// online: the cache cannot vouch for it.
pub(crate) fn status_line() -> Res {
    out!("{}", status_line_text());
    Ok(())
}

fn status_line_text() -> String {
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
    #[cfg(unix)]
    let up = std::os::unix::net::UnixStream::connect(&paths.socket).is_ok();
    #[cfg(not(unix))]
    let up = true;
    let grace = Some(crate::cache::offline_grace(&paths));
    let parts: Vec<String> = meshes
        .iter()
        .map(|mr| {
            let unread = offline::q_counts(&conn, mr.id).map(|c| c.1).unwrap_or(0);
            let unread = if unread > 0 {
                format!(" · {unread} unread")
            } else {
                String::new()
            };
            if !up {
                return format!("{} daemon down{unread}", mr.name);
            }
            let peers = offline::q_peers(&conn, mr, grace).unwrap_or_default();
            let online = peers.iter().filter(|p| p.online && !p.me).count();
            let total = peers.iter().filter(|p| !p.me).count();
            format!("{} {online}/{total} online{unread}", mr.name)
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

/// `claudemesh launch`: join first when `--join` says so, then run Claude Code with
/// claudemesh's channel loaded (in push mode) and the remaining arguments passed through.
/// Replaces this process (on Unix).
pub(crate) fn launch(mut a: LaunchArgs) -> Res {
    if let Some(link) = a.join.take() {
        // Joined before Claude Code starts, so its session opens in the new mesh; a join
        // that fails stops here, with the join's own error and exit code.
        block_on(crate::invites::join(crate::cli::JoinArgs {
            invite: link,
            display_name: None,
            wait: Some(300),
            json: crate::cli::JsonArg { json: false },
        }))?;
    }
    let claude = which("claude").ok_or_else(|| {
        Failure::new(
            Exit::Error,
            "Claude Code (`claude`) is not on your PATH; install it from https://docs.anthropic.com/claude-code, then run this again",
        )
    })?;
    let mut cmd = std::process::Command::new(claude);
    let (args, env, notice) = claude_command_line(&a);
    // `--quiet` (global) silences it, as every note.
    if let Some(n) = notice {
        note!("{n}");
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let e = cmd.exec();
        Err(Failure::new(
            Exit::Error,
            format!("cannot start claude: {e}"),
        ))
    }
    #[cfg(not(unix))]
    {
        let st = cmd
            .status()
            .map_err(|e| Failure::new(Exit::Error, format!("cannot start claude: {e}")))?;
        // Claude's own exit code; killed by a signal, it has none.
        std::process::exit(st.code().unwrap_or(Exit::Error.code().into()));
    }
}

/// What `launch` runs: `claude`'s arguments (all of them flags of the pinned Claude Code,
/// checked by a test against its `--help`), the environment the shim and hooks read, and
/// the note to print first.
fn claude_command_line(
    a: &LaunchArgs,
) -> (Vec<String>, Vec<(&'static str, String)>, Option<String>) {
    let push = a.message_mode == "push";
    let print_mode = a.args.iter().any(|x| x == "-p" || x == "--print");
    let mut args = Vec::new();
    if push {
        args.extend([
            "--dangerously-load-development-channels".to_string(),
            "server:claudemesh".to_string(),
        ]);
    }
    match a.resume.as_deref() {
        Some("") => args.push("--resume".into()),
        Some(id) => args.extend(["--resume".to_string(), id.to_string()]),
        None => {}
    }
    if a.continue_last {
        args.push("--continue".into());
    }
    if let Some(p) = &a.system_prompt {
        // Appended, not replacing Claude Code's own prompt: that one tells the model how
        // its tools (ours included) work.
        args.extend(["--append-system-prompt".to_string(), p.clone()]);
    }
    args.extend(a.args.iter().cloned());
    let mut env = vec![
        (
            "CLAUDEMESH_CHANNELS",
            if push { "1" } else { "0" }.to_string(),
        ),
        ("CLAUDEMESH_MESSAGE_MODE", a.message_mode.clone()),
    ];
    for (k, v) in [
        ("CLAUDEMESH_DISPLAY_NAME", &a.name),
        ("CLAUDEMESH_GROUPS", &a.groups),
        ("CLAUDEMESH_MESH", &a.mesh),
        ("CLAUDEMESH_ROLE", &a.role),
    ] {
        if let Some(v) = v {
            env.push((k, v.clone()));
        }
    }
    // Claude Code confirms development channels at every start and offers no setting to
    // pre-accept them; say so rather than pretend `-y` covers it.
    let notice = (push && !print_mode).then(|| {
        format!(
            "claudemesh: Claude Code will ask to confirm loading the claudemesh channel (\"Loading development channels\"); choose 1 to get messages pushed into the session.{}",
            if a.yes {
                " -y cannot answer this one for you: Claude Code has no way to pre-accept it."
            } else {
                ""
            }
        )
    });
    (args, env, notice)
}
