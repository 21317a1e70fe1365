//! Hosted services (issue 16, tier 2): `host enable|disable|status` (this daemon as a host
//! of the mesh's services) and `deploy add|update|list|logs|rm|scope|schema` (MCP servers
//! deployed to the members' daemons that host, run sandboxed there; see
//! `claudemesh_schema::deploy`). Each is one call to the daemon's `host_*` / `deploy_*`
//! methods (`claudemesh_schema::ipc::deploy`).

use claudemesh_schema::ipc::deploy::{
    self as dp, DeployListResult, DeployLogsResult, DeployParams, DeploySchemaResult,
    HostSetParams, HostStatusResult, MeshParams, ScopeParams, ServiceInfo, ServiceParams,
};
use claudemesh_schema::names;
use serde_json::Value;

use crate::cli::{DeployAction, DeploySpec, HostAction};
use crate::exit::{Exit, Failure, Res};
use crate::output;
use crate::shared::call;

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(Exit::Usage, msg)
}

/// A fingerprint as `peers` and `verify` show it (its first two groups).
fn short_fp(fp: &str) -> String {
    fp.chars().take(9).collect()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

pub(crate) async fn host(a: HostAction) -> Res {
    match a {
        HostAction::Enable(opts) => set(opts, true).await,
        HostAction::Disable(opts) => set(opts, false).await,
        HostAction::Status(opts) => {
            let r: HostStatusResult = call(dp::HOST_STATUS, MeshParams { mesh: opts.mesh }).await?;
            if opts.json {
                output::json("host", &r);
                return Ok(());
            }
            host_status(&r);
            Ok(())
        }
    }
}

async fn set(opts: crate::cli::MeshJson, enabled: bool) -> Res {
    let r: Value = call(
        dp::HOST_SET,
        HostSetParams {
            mesh: opts.mesh,
            enabled,
        },
    )
    .await?;
    if opts.json {
        output::json("host", &r);
        return Ok(());
    }
    if enabled {
        say!(
            "this daemon now hosts the mesh's services: members can deploy to it (`claudemesh deploy add`), and it runs them sandboxed"
        );
    } else {
        say!("this daemon no longer hosts services; those it ran move to their next host");
    }
    // What the daemon said of its sandbox, when it answered with its status.
    if let Ok(s) = serde_json::from_value::<HostStatusResult>(r)
        && enabled
        && !s.sandbox_ok
    {
        note!(
            "warning: this machine has no working sandbox ({}); no service runs here until it has one",
            names::one_line(&s.sandbox, 300)
        );
    }
    Ok(())
}

fn host_status(r: &HostStatusResult) {
    out!(
        "This daemon {} services for mesh {}.",
        if r.enabled {
            "hosts"
        } else {
            "does not host (`claudemesh host enable` offers it)"
        },
        r.mesh.short()
    );
    out!(
        "Sandbox: {}{}",
        names::one_line(&r.sandbox, 300),
        if r.sandbox_ok {
            ""
        } else {
            " (services cannot run here)"
        }
    );
    if r.running.is_empty() {
        out!("Running here: none");
    } else {
        let running: Vec<String> = r.running.iter().map(|s| names::one_line(s, 64)).collect();
        out!("Running here: {}", running.join(", "));
    }
    if r.hosts.is_empty() {
        out!("No member of this mesh hosts services yet.");
        return;
    }
    out!();
    // The sandbox's text is the longest cell: last, so a terminal cuts it.
    output::table(
        &["HOST", "KEY", "ENABLED", "ONLINE", "SANDBOX"],
        r.hosts
            .iter()
            .map(|h| {
                vec![
                    format!(
                        "{}{}",
                        names::one_line(&h.name, 80),
                        if h.me { " (you)" } else { "" }
                    ),
                    short_fp(&h.fingerprint),
                    yes_no(h.enabled).into(),
                    yes_no(h.online).into(),
                    names::one_line(&h.sandbox, 200),
                ]
            })
            .collect(),
    );
}

/// The serving host of a service, as shown (`-` when none is).
fn serving(s: &ServiceInfo) -> String {
    s.hosts
        .iter()
        .find(|h| h.serving)
        .map(|h| names::one_line(&h.name, 80))
        .unwrap_or_else(|| "-".into())
}

/// The parameters of `deploy add` / `deploy update` from the command line, checked as far
/// as they can be here (the daemon checks the whole manifest again).
fn params(
    name: String,
    spec: DeploySpec,
    network: Option<bool>,
    command: Vec<String>,
    update: bool,
) -> Result<DeployParams, Failure> {
    let file = match spec.file {
        Some(f) => Some(
            std::path::absolute(&f)
                .map_err(|e| usage(format!("{}: {e}", f.display())))?
                .display()
                .to_string(),
        ),
        None => None,
    };
    for e in &spec.env {
        let entry = claudemesh_schema::deploy::parse_env(e).map_err(|e| usage(e.to_string()))?;
        if let claudemesh_schema::deploy::EnvValue::Plain { value } = &entry.value
            && value.starts_with(':')
        {
            note!(
                "warning: {}'s value starts with `:`; if you meant a vault secret, the shell may have expanded `$vault`: quote it, '{}=$vault:NAME'",
                entry.key,
                entry.key
            );
        }
    }
    Ok(DeployParams {
        mesh: spec.opts.mesh,
        name,
        file,
        git: spec.git,
        commit: spec.commit,
        npm: spec.npm,
        pypi: spec.pypi,
        command,
        env: (!spec.env.is_empty()).then_some(spec.env),
        network,
        memory_mb: spec.memory,
        scope: spec.scope,
        allow: (!spec.allow.is_empty()).then_some(spec.allow),
        hosts: spec.hosts,
        description: spec.description,
        update,
    })
}

/// Say what a deploy did, from the daemon's answer (a service, when it gives one).
fn deployed(r: Value, name: &str, json: bool, update: bool) {
    if json {
        output::json("service", &r);
        return;
    }
    let verb = if update { "updated" } else { "deployed" };
    match serde_json::from_value::<ServiceInfo>(r) {
        Ok(s) => {
            let hosts: Vec<String> = s
                .hosts
                .iter()
                .map(|h| names::one_line(&h.name, 80))
                .collect();
            say!(
                "{verb} {} v{} (scope {}) to {}: {}; peers call its tools as `{}__<tool>` (`claudemesh deploy logs {}` shows how it runs)",
                s.name,
                s.version,
                names::one_line(&s.scope, 200),
                if hosts.is_empty() {
                    "no host".to_string()
                } else {
                    hosts.join(", ")
                },
                s.status,
                s.name,
                s.name
            );
        }
        Err(_) => say!("{verb} {name}"),
    }
}

pub(crate) async fn deploy(a: DeployAction) -> Res {
    match a {
        DeployAction::Add {
            name,
            spec,
            network,
            command,
        } => {
            let json = spec.opts.json;
            let p = params(name.clone(), spec, Some(network), command, false)?;
            let r: Value = call(dp::DEPLOY_ADD, p).await?;
            deployed(r, &name, json, false);
            Ok(())
        }
        DeployAction::Update {
            name,
            spec,
            network,
            no_network,
            command,
        } => {
            let json = spec.opts.json;
            let network = match (network, no_network) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let p = params(name.clone(), spec, network, command, true)?;
            let r: Value = call(dp::DEPLOY_ADD, p).await?;
            deployed(r, &name, json, true);
            Ok(())
        }
        DeployAction::List(opts) => {
            let r: DeployListResult = call(dp::DEPLOY_LIST, MeshParams { mesh: opts.mesh }).await?;
            if opts.json {
                output::json("services", &r);
                return Ok(());
            }
            list(&r);
            Ok(())
        }
        DeployAction::Logs { name, lines, opts } => {
            let r: DeployLogsResult = call(
                dp::DEPLOY_LOGS,
                ServiceParams {
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
            out!(
                "== {} on {} ({}, {} restarts)",
                names::one_line(&r.name, 64),
                names::one_line(&r.host, 80),
                names::one_line(&r.state, 64),
                r.restarts
            );
            // The host's and the service's text: one line each, no control characters.
            for l in &r.lines {
                out!("{}", names::one_line(l, 4000));
            }
            Ok(())
        }
        DeployAction::Rm { name, opts } => {
            let r: Value = call(
                dp::DEPLOY_REMOVE,
                ServiceParams {
                    mesh: opts.mesh,
                    name: name.clone(),
                    lines: None,
                },
            )
            .await?;
            if opts.json {
                let mut out = serde_json::Map::new();
                out.insert("name".into(), Value::from(name));
                if let Value::Object(m) = r {
                    out.extend(m);
                }
                output::json("removed", Value::Object(out));
            } else {
                say!("took {name} down on every host; it left the mesh's catalog");
            }
            Ok(())
        }
        DeployAction::Scope { name, scope, opts } => {
            let r: Value = call(
                dp::DEPLOY_SCOPE,
                ScopeParams {
                    mesh: opts.mesh,
                    name: name.clone(),
                    scope: scope.clone(),
                },
            )
            .await?;
            if opts.json {
                output::json("service", &r);
                return Ok(());
            }
            match serde_json::from_value::<ServiceInfo>(r) {
                Ok(s) => say!(
                    "{} v{} may now be called by: {}",
                    s.name,
                    s.version,
                    names::one_line(&s.scope, 200)
                ),
                Err(_) => say!(
                    "{name} may now be called by: {}",
                    names::one_line(&scope, 200)
                ),
            }
            Ok(())
        }
        DeployAction::Schema { name, opts } => {
            let r: DeploySchemaResult = call(
                dp::DEPLOY_SCHEMA,
                ServiceParams {
                    mesh: opts.mesh,
                    name,
                    lines: None,
                },
            )
            .await?;
            if opts.json {
                output::json("schema", &r);
                return Ok(());
            }
            if r.tools.is_empty() {
                out!(
                    "{} lists no tools (yet: see `claudemesh deploy logs {}`).",
                    r.name,
                    r.name
                );
            }
            for (i, t) in r.tools.iter().enumerate() {
                if i > 0 {
                    out!();
                }
                out!(
                    "{}__{}  {}",
                    names::one_line(&r.name, 64),
                    names::one_line(&t.name, 64),
                    names::one_line(&t.description, 400)
                );
                let schema = serde_json::to_string_pretty(&t.input_schema)
                    .unwrap_or_else(|_| t.input_schema.to_string());
                // The service's text: controls and invisible characters dropped.
                for l in names::body(&schema).lines() {
                    out!("    {l}");
                }
            }
            Ok(())
        }
    }
}

fn list(r: &DeployListResult) {
    if r.services.is_empty() {
        out!(
            "No hosted services in this mesh (`claudemesh deploy add <name> --git URL --commit SHA -- <command…>` deploys one; `claudemesh host status` lists the hosts)."
        );
        return;
    }
    output::table(
        &[
            "NAME", "VERSION", "STATUS", "HOST", "TOOLS", "SCOPE", "SOURCE",
        ],
        r.services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    format!("v{}", s.version),
                    s.status.clone(),
                    serving(s),
                    s.tools.to_string(),
                    s.scope.clone(),
                    s.source.clone(),
                ]
            })
            .collect(),
    );
    for s in &r.services {
        if let Some(l) = &s.local {
            out!(
                "{} here: {}, {} restarts{}",
                names::one_line(&s.name, 64),
                names::one_line(&l.state, 64),
                l.restarts,
                if l.last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last: {}", names::one_line(&l.last_error, 200))
                }
            );
        }
    }
}
