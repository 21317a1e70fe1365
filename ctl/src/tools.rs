//! Shared MCP tools: `mcp-host` (local MCP servers this daemon runs and publishes to the
//! mesh: add, list, rm, logs) and `tools` (the mesh's catalog, calling a tool wherever
//! it is hosted, the audit log of calls this machine's servers answered).

use claudemesh_schema::ipc::tools::{
    self as tl, HostedServer, McpHostAddParams, McpHostListParams, McpHostListResult,
    McpHostLogsResult, McpHostNameParams, ToolsAuditParams, ToolsAuditResult, ToolsCallParams,
    ToolsCallResult, ToolsListParams, ToolsListResult,
};
use claudemesh_schema::names;
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::cli::{McpHostAction, ToolsAction};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::output;

/// How long `mcp-host add` waits for the server to list its tools unless told.
const ADD_WAIT: u64 = 30;

fn hosted_line(s: &HostedServer) -> String {
    let mut line = format!(
        "{}  {}  {} tools  scope {}  mesh {}",
        s.name, s.state, s.tools, s.scope, s.mesh_name
    );
    if let Some(pid) = s.pid {
        line.push_str(&format!("  pid {pid}"));
    }
    if s.restarts > 0 {
        line.push_str(&format!("  restarts {}", s.restarts));
    }
    if !s.persistent {
        line.push_str("  (ends with its session)");
    }
    if !s.last_error.is_empty() {
        line.push_str(&format!("  last: {}", names::one_line(&s.last_error, 160)));
    }
    line
}

pub(crate) async fn mcp_host(a: McpHostAction) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    match a {
        McpHostAction::Add {
            name,
            description,
            allow,
            scope,
            env,
            cwd,
            replace,
            wait,
            opts,
            command,
        } => {
            let cwd = match cwd {
                Some(d) => Some(
                    std::path::absolute(&d)
                        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", d.display())))?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            let mesh = opts.mesh.clone();
            let mut s: HostedServer = c
                .call(
                    tl::MCP_HOST_ADD,
                    McpHostAddParams {
                        mesh: mesh.clone(),
                        name: name.clone(),
                        command,
                        cwd,
                        env,
                        description: description.unwrap_or_default(),
                        allow,
                        scope,
                        session: None,
                        replace,
                    },
                )
                .await?;
            // Wait until it listed its tools and its registration is written (or it
            // failed to start), so the next command sees it in the catalog.
            let until = Instant::now() + Duration::from_secs(wait.unwrap_or(ADD_WAIT));
            while !(s.published || Instant::now() >= until || s.restarts > 0) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let l: McpHostListResult = c
                    .call(tl::MCP_HOST_LIST, McpHostListParams { mesh: mesh.clone() })
                    .await?;
                if let Some(x) = l.servers.into_iter().find(|x| x.name == name) {
                    s = x;
                }
            }
            if opts.json {
                output::json("server", &s);
                return Ok(());
            }
            if s.published {
                say!(
                    "hosting {}: {} tools published to mesh {} (scope {}); peers call them as `{}__<tool>`",
                    s.name,
                    s.tools,
                    s.mesh_name,
                    s.scope,
                    s.name
                );
                Ok(())
            } else {
                Err(Failure::new(
                    Exit::Error,
                    format!(
                        "{} is declared but not running yet ({}{}); it keeps retrying — see `claudemesh mcp-host logs {}`",
                        s.name,
                        s.state,
                        if s.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", names::one_line(&s.last_error, 200))
                        },
                        s.name
                    ),
                ))
            }
        }
        McpHostAction::List(opts) => {
            let r: McpHostListResult = c
                .call(tl::MCP_HOST_LIST, McpHostListParams { mesh: opts.mesh })
                .await?;
            if opts.json {
                output::json("servers", &r);
                return Ok(());
            }
            if r.servers.is_empty() {
                out!(
                    "No MCP servers hosted here (`claudemesh mcp-host add <name> -- <command…>` adds one)."
                );
            }
            for s in &r.servers {
                out!("{}", hosted_line(s));
            }
            Ok(())
        }
        McpHostAction::Rm { name, opts } => {
            let _: Value = c
                .call(
                    tl::MCP_HOST_REMOVE,
                    McpHostNameParams {
                        mesh: opts.mesh,
                        name: name.clone(),
                        lines: None,
                    },
                )
                .await?;
            if opts.json {
                output::json("removed", serde_json::json!({ "name": name }));
            } else {
                say!("stopped hosting {name}; it left the mesh's catalog");
            }
            Ok(())
        }
        McpHostAction::Logs { name, lines, opts } => {
            let r: McpHostLogsResult = c
                .call(
                    tl::MCP_HOST_LOGS,
                    McpHostNameParams {
                        mesh: opts.mesh,
                        name,
                        lines: Some(lines),
                    },
                )
                .await?;
            if opts.json {
                output::json("logs", &r);
                return Ok(());
            }
            for l in &r.lines {
                out!("{}", names::one_line(l, 4000));
            }
            Ok(())
        }
    }
}

pub(crate) async fn tools(a: ToolsAction) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    match a {
        ToolsAction::List(opts) => {
            let r: ToolsListResult = c
                .call(
                    tl::TOOLS_LIST,
                    ToolsListParams {
                        mesh: opts.mesh,
                        session: None,
                    },
                )
                .await?;
            if opts.json {
                output::json("servers", &r);
                return Ok(());
            }
            if r.servers.is_empty() {
                out!("No shared MCP servers in this mesh (`claudemesh mcp-host add` shares one).");
            }
            for s in &r.servers {
                let state = if s.online {
                    "online".to_string()
                } else {
                    match s.offline_since {
                        Some(t) => format!("host offline, last seen {}", output::ago(t)),
                        None => "host offline".into(),
                    }
                };
                out!(
                    "{}  {} tools  by {}  {}  scope {}{}",
                    s.name,
                    s.tools.len(),
                    names::one_line(&s.host_name, 80),
                    state,
                    s.scope,
                    if s.description.is_empty() {
                        String::new()
                    } else {
                        format!("  — {}", names::one_line(&s.description, 120))
                    }
                );
                for t in &s.tools {
                    out!(
                        "    {}  {}",
                        t.spec.name,
                        names::one_line(&t.spec.description, 100)
                    );
                }
            }
            Ok(())
        }
        ToolsAction::Call {
            server,
            tool,
            arguments,
            timeout,
            opts,
        } => {
            let arguments = match arguments {
                None => Value::Object(Default::default()),
                Some(a) => {
                    let text = crate::stdin::or_stdin(a, "arguments")?;
                    serde_json::from_str(&text).map_err(|e| {
                        Failure::new(
                            Exit::Usage,
                            format!("the arguments are not JSON ({e}); give an object such as '{{\"city\": \"Paris\"}}'"),
                        )
                    })?
                }
            };
            let r: ToolsCallResult = c
                .call(
                    tl::TOOLS_CALL,
                    ToolsCallParams {
                        mesh: opts.mesh,
                        session: None,
                        server,
                        tool,
                        arguments,
                        timeout_ms: Some(timeout.saturating_mul(1000)),
                    },
                )
                .await?;
            if opts.json {
                output::json("call", &r);
                return Ok(());
            }
            let is_error = r.result.get("isError").and_then(Value::as_bool) == Some(true);
            for part in r
                .result
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match part.get("text").and_then(Value::as_str) {
                    Some(t) if part.get("type").and_then(Value::as_str) == Some("text") => {
                        out!("{}", names::body(t))
                    }
                    _ => out!("{}", part),
                }
            }
            if is_error {
                return Err(Failure::new(Exit::Error, "the tool reported an error"));
            }
            Ok(())
        }
        ToolsAction::Audit { limit, opts } => {
            let r: ToolsAuditResult = c
                .call(
                    tl::TOOLS_AUDIT,
                    ToolsAuditParams {
                        mesh: opts.mesh,
                        limit: Some(limit),
                    },
                )
                .await?;
            if opts.json {
                output::json("entries", &r);
                return Ok(());
            }
            if r.entries.is_empty() {
                out!("No calls to servers hosted here yet.");
            }
            for e in &r.entries {
                out!(
                    "{}  {}  {}__{}  {}  {} ms",
                    output::ago(e.at),
                    names::one_line(&e.caller, 80),
                    e.server,
                    e.tool,
                    e.outcome,
                    e.ms
                );
            }
            Ok(())
        }
    }
}
