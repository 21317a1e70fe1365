//! `claudemesh doctor [--json]`: one line per check, each failure with its fix.
//!
//! Check names are stable (`--json` is a contract): `version`, `daemon`, `config`,
//! `permissions`, `keys`, `relay` (one per mesh and transport), `claude_code`,
//! `mcp_server`, `hooks`, `service`, `disk`. Status is `ok`, `warn` (works, but could be
//! better) or `fail`; the exit code is 1 when any check fails.

use bytes::Bytes;
use claudemesh_daemon::client::Client;
use claudemesh_daemon::paths::{ServiceKind, service_file};
use claudemesh_daemon::{DaemonConfig, Paths, offline};
use claudemesh_schema::ipc::methods::{self as m, HelloResult};
use claudemesh_schema::wire::{self, ClientFrame, RelayFrame};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::exit::{Exit, Failure, Res};

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    status: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: "ok",
            detail: detail.into(),
            fix: None,
            mesh: None,
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: "fail",
            detail: detail.into(),
            fix: Some(fix.into()),
            mesh: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: "warn",
            ..Self::fail(name, detail, fix)
        }
    }
    fn in_mesh(mut self, mesh: &str) -> Self {
        self.mesh = Some(mesh.to_string());
        self
    }
}

#[cfg(unix)]
fn mode(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}
#[cfg(not(unix))]
fn mode(_: &Path) -> Option<u32> {
    None
}

fn permissions(paths: &Paths) -> Check {
    // Modes of a directory that cannot be read say nothing about what is in it.
    if let Some(why) = crate::daemon::unreadable(paths) {
        return Check::fail(
            "permissions",
            why,
            format!("chmod 700 {}", paths.dir.display()),
        );
    }
    let mut bad = Vec::new();
    // Secrets must be private; the config (no secrets) only must not be writable by others.
    let want = |p: &Path, m: u32, bad: &mut Vec<(String, u32, u32)>| {
        let forbidden = if m == 0o644 { 0o022 } else { 0o077 };
        if let Some(have) = mode(p)
            && have & forbidden != 0
        {
            bad.push((p.display().to_string(), have, m));
        }
    };
    want(&paths.dir, 0o700, &mut bad);
    want(&paths.keys(), 0o700, &mut bad);
    if let Ok(rd) = std::fs::read_dir(paths.keys()) {
        for e in rd.flatten() {
            want(&e.path(), 0o600, &mut bad);
        }
    }
    want(&paths.config(), 0o644, &mut bad);
    want(&paths.socket, 0o600, &mut bad);
    if bad.is_empty() {
        return Check::ok(
            "permissions",
            "config directory, keys and socket are private to you",
        );
    }
    let detail = bad
        .iter()
        .map(|(p, have, _)| format!("{p} is {have:o}"))
        .collect::<Vec<_>>()
        .join(", ");
    let fix = bad
        .iter()
        .map(|(p, _, m)| format!("chmod {m:o} {p}"))
        .collect::<Vec<_>>()
        .join("; ");
    Check::fail("permissions", format!("open to others: {detail}"), fix)
}

/// Ping a relay over one transport: round trip and clock skew.
async fn ping_relay(addr: &str, fp: [u8; 32], quic: bool) -> Result<(Duration, i64), String> {
    let sa = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let timeout = Duration::from_secs(3);
    let mut c = if quic {
        claudemesh_relay::client::connect_quic(sa, Some(fp), timeout).await
    } else {
        claudemesh_relay::client::connect_ws(sa, Some(fp), timeout).await
    }
    .map_err(|e| e.to_string())?;
    let f = wire::encode(&ClientFrame::Ping { n: 7 }).map_err(|e| e.to_string())?;
    let t = Instant::now();
    c.writer
        .send(Bytes::from(f))
        .await
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(timeout, c.reader.next())
        .await
        .map_err(|_| "no answer to a ping within 3 s".to_string())?;
    let rtt = t.elapsed();
    match reply {
        Some(Ok(b)) => match wire::decode::<RelayFrame>(&b) {
            Ok(RelayFrame::Pong { server_time, .. }) => {
                let local = claudemesh_schema::now_ms() - (rtt.as_millis() / 2) as i64;
                Ok((rtt, server_time - local))
            }
            Ok(_) => Err("unexpected answer to a ping".into()),
            Err(e) => Err(e.to_string()),
        },
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the relay closed the connection".into()),
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    })
}

fn claude_checks(out: &mut Vec<Check>) {
    let claude = which("claude");
    match &claude {
        Some(p) => out.push(Check::ok("claude_code", format!("found {}", p.display()))),
        None => out.push(Check::warn(
            "claude_code",
            "`claude` is not on PATH",
            "install Claude Code (https://docs.anthropic.com/claude-code), or ignore this if you use another MCP client",
        )),
    }
    let files = match crate::install::ClaudeFiles::from_env() {
        Ok(f) => f,
        Err(e) => {
            out.push(Check::fail("mcp_server", e, "set HOME"));
            return;
        }
    };
    // A machine that only uses the CLI (no Claude Code, never set up for it) is healthy:
    // there is nothing to register the MCP server or the hooks with.
    if claude.is_none() && !files.claude_json.exists() && !files.settings.exists() {
        out.push(Check::ok(
            "mcp_server",
            "Claude Code is not set up here; not needed for the CLI (`claudemesh install` once it is)",
        ));
        return;
    }
    let read = |p: &Path| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    };
    let cj = read(&files.claude_json);
    let server = cj.as_ref().map(|v| v["mcpServers"]["claudemesh"].clone());
    let registered = server
        .as_ref()
        .and_then(|s| s["args"].as_array().cloned())
        .is_some_and(|a| a.first().and_then(|x| x.as_str()) == Some("mcp"));
    let command = server
        .as_ref()
        .and_then(|s| s["command"].as_str().map(str::to_string))
        .unwrap_or_default();
    // Claude Code runs the command with its own PATH: it must name a file that is there.
    let resolves = if command.contains('/') {
        Path::new(&command).is_file()
    } else {
        which(&command).is_some()
    };
    out.push(if registered && resolves {
        Check::ok(
            "mcp_server",
            format!("registered in {} ({command})", files.claude_json.display()),
        )
    } else if registered {
        Check::fail(
            "mcp_server",
            format!(
                "the registered command {command:?} in {} does not exist",
                files.claude_json.display()
            ),
            "claudemesh install (registers this binary by its full path)",
        )
    } else {
        Check::fail(
            "mcp_server",
            format!(
                "claudemesh is not an MCP server in {}",
                files.claude_json.display()
            ),
            "claudemesh install",
        )
    });
    let hook_commands: Vec<String> = read(&files.settings)
        .and_then(|v| v["hooks"].as_object().cloned())
        .map(|h| {
            let mut cmds = Vec::new();
            for groups in h.values() {
                for g in groups.as_array().into_iter().flatten() {
                    for hk in g["hooks"].as_array().into_iter().flatten() {
                        if let Some(c) = hk["command"].as_str()
                            && crate::install::runs_claudemesh(c, "hook")
                        {
                            cmds.push(c.to_string());
                        }
                    }
                }
            }
            cmds
        })
        .unwrap_or_default();
    let hooks = !hook_commands.is_empty();
    let missing: Vec<&String> = hook_commands
        .iter()
        .filter(|c| {
            let prog = crate::install::program(c);
            if prog.contains('/') {
                !Path::new(prog).is_file()
            } else {
                which(prog).is_none()
            }
        })
        .collect();
    out.push(if hooks && missing.is_empty() {
        Check::ok("hooks", format!("registered in {}", files.settings.display()))
    } else if hooks {
        Check::fail(
            "hooks",
            format!("a registered hook runs a program that does not exist: {}", missing[0]),
            "claudemesh install (registers this binary by its full path)",
        )
    } else {
        Check::warn(
            "hooks",
            "no claudemesh hooks in Claude Code's settings (messages then arrive only by push or pull)",
            "claudemesh install",
        )
    });
}

fn disk(paths: &Paths) -> Check {
    let dir = if paths.dir.exists() {
        paths.dir.clone()
    } else {
        std::env::temp_dir()
    };
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(&dir)
        .output();
    let avail_kb = out.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
    });
    match avail_kb {
        Some(kb) if kb < 100 * 1024 => Check::fail(
            "disk",
            format!("only {} MiB free where {} lives", kb / 1024, dir.display()),
            "free disk space: the daemon refuses writes it cannot make durable",
        ),
        Some(kb) => Check::ok("disk", format!("{} MiB free", kb / 1024)),
        None => Check::warn(
            "disk",
            "could not measure free space",
            "check `df -h` by hand",
        ),
    }
}

pub(crate) async fn run(json: bool) -> Res {
    // Not `daemon::paths()`: a config directory that cannot be read is one of the things
    // the report says.
    let paths = Paths::from_env().map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    let mut checks = Vec::new();
    let mine = env!("CARGO_PKG_VERSION");

    // The daemon.
    let daemon_version = match Client::connect(&paths.socket).await {
        Ok(mut c) => match c.call::<HelloResult>(m::HELLO, ()).await {
            Ok(h) => {
                checks.push(Check::ok(
                    "daemon",
                    format!("running (pid {}), answering", h.pid),
                ));
                Some(h.version)
            }
            Err(e) => {
                checks.push(Check::fail(
                    "daemon",
                    format!("running but not answering: {e}"),
                    "claudemesh daemon stop; claudemesh daemon start",
                ));
                None
            }
        },
        Err(_) => {
            checks.push(Check::fail(
                "daemon",
                format!("not running for {}", paths.dir.display()),
                "claudemesh daemon start (or `claudemesh service install` to keep it running)",
            ));
            None
        }
    };
    // Links the daemon stopped trusting: the relay rewrote or hid membership changes.
    if daemon_version.is_some()
        && let Ok(mut c) = Client::connect(&paths.socket).await
        && let Ok(st) = c.call::<m::StatusResult>(m::STATUS, ()).await
    {
        for ms in st.meshes {
            if let Some(e) = ms.last_error.as_deref()
                && e.contains("not trustworthy")
            {
                checks.push(
                    Check::fail(
                        "link",
                        e.to_string(),
                        "the relay rewrote or hid membership changes: tell the mesh's owner, and use a relay you trust (the daemon retries it only after a long delay)",
                    )
                    .in_mesh(&ms.name),
                );
            }
        }
    }
    checks.push(match &daemon_version {
        Some(v) if v != mine => Check::warn(
            "version",
            format!("claudemesh {mine}, daemon {v}"),
            "restart the daemon to run the installed version: claudemesh daemon stop; claudemesh daemon start",
        ),
        _ => Check::ok("version", format!("claudemesh {mine}, protocol {}", wire::PROTOCOL_VERSION)),
    });

    // Config and keys.
    match DaemonConfig::load(&paths.config()) {
        Ok(_) => checks.push(Check::ok(
            "config",
            format!("{} parses", paths.config().display()),
        )),
        Err(e) => checks.push(Check::fail(
            "config",
            e.to_string(),
            format!("fix or delete {}", paths.config().display()),
        )),
    }
    checks.push(permissions(&paths));
    let meshes = if paths.db().exists() {
        offline::open_readonly(&paths.db())
            .ok()
            .and_then(|c| offline::q_meshes(&c).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut bad_keys = Vec::new();
    for r in &meshes {
        if let Err(e) = claudemesh_daemon::keys::MeshKeys::load(&paths.keys(), &r.id) {
            bad_keys.push(format!("{}: {e}", r.name));
        }
    }
    checks.push(if bad_keys.is_empty() {
        Check::ok("keys", format!("{} mesh key file(s) load", meshes.len()))
    } else {
        Check::fail(
            "keys",
            bad_keys.join("; "),
            "restore them from a backup (`claudemesh restore`), or leave and rejoin the mesh",
        )
    });

    // Each mesh's relay, over the transports the daemon may use. One failing while the
    // other works is a warning (the link falls back); both failing is a failure.
    let link = DaemonConfig::load(&paths.config())
        .map(|c| c.link)
        .unwrap_or_default();
    for r in &meshes {
        let transports: Vec<bool> = [(true, link.quic), (false, link.websocket)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(q, _)| q)
            .collect();
        let mut results = Vec::new();
        let _probing = crate::output::Progress::start(&format!("reaching the relay of {}", r.name));
        for quic in transports {
            results.push((quic, ping_relay(&r.relay, r.relay_fp, quic).await));
        }
        let any_ok = results.iter().any(|(_, r)| r.is_ok());
        for (quic, res) in results {
            let t = if quic { "quic" } else { "websocket" };
            checks.push(match res {
                Ok((rtt, skew)) if skew.abs() > 30_000 => Check::warn(
                    "relay",
                    format!("{t} to {}: {} µs, clock {} s off", r.relay, rtt.as_micros(), skew / 1000),
                    "fix this machine's clock (NTP): hellos outside ±60 s are refused",
                )
                .in_mesh(&r.name),
                Ok((rtt, skew)) => Check::ok(
                    "relay",
                    format!("{t} to {}: round trip {} µs, clock skew {skew} ms", r.relay, rtt.as_micros()),
                )
                .in_mesh(&r.name),
                Err(e) if any_ok => Check::warn(
                    "relay",
                    format!("{t} to {} unreachable (the other transport works): {e}", r.relay),
                    format!("allow {} to {} through the firewall for the faster path", if quic { "UDP" } else { "TCP" }, r.relay),
                )
                .in_mesh(&r.name),
                Err(e) => Check::fail(
                    "relay",
                    format!("{t} to {} unreachable: {e}", r.relay),
                    format!("check that the relay at {} runs and that this machine can reach it (firewall: UDP and TCP)", r.relay),
                )
                .in_mesh(&r.name),
            });
        }
    }

    claude_checks(&mut checks);
    let svc = service_file(ServiceKind::native());
    checks.push(match &svc {
        Some(f) if f.exists() => Check::ok("service", format!("installed: {}", f.display())),
        // Recommending `service install` where it cannot work would only break things.
        _ if crate::service::manager_enabled()
            && let Err(why) = crate::service::usable(ServiceKind::native()) =>
        {
            Check::warn(
                "service",
                format!("the daemon runs by hand: {why}"),
                "keep it running with `claudemesh up`; on a server, `loginctl enable-linger $USER` and a new login, then `claudemesh service install`",
            )
        }
        _ => Check::warn(
            "service",
            "the daemon is not installed as a user service",
            "claudemesh service install",
        ),
    });
    checks.push(disk(&paths));

    let failed = checks.iter().filter(|c| c.status == "fail").count();
    if json {
        crate::output::json(
            "doctor",
            serde_json::json!({ "ok": failed == 0, "checks": checks }),
        );
    } else {
        for c in &checks {
            let mark = match c.status {
                "ok" => "ok  ",
                "warn" => "warn",
                _ => "FAIL",
            };
            let mesh = c
                .mesh
                .as_deref()
                .map(|m| format!(" [{m}]"))
                .unwrap_or_default();
            out!("{mark}  {}{mesh}: {}", c.name, c.detail);
            if let Some(f) = &c.fix
                && c.status != "ok"
            {
                out!("      fix: {f}");
            }
        }
    }
    if failed > 0 {
        return Err(Failure::new(
            Exit::Error,
            if json {
                String::new()
            } else {
                format!("{failed} check(s) failed")
            },
        ));
    }
    Ok(())
}
