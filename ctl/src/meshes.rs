//! Your meshes: `up` (the one-command start), `create`, `list`, `leave`.

use claudemesh_daemon::DaemonConfig;
use claudemesh_daemon::client::{Client, ClientError};
use claudemesh_schema::ipc::methods::{
    self as m, CreateParams, MeshInfo, MeshParams, StatusResult,
};
use claudemesh_schema::wire::CreationToken;

use crate::cli::{CreateArgs, JsonArg, LeaveArgs, MemberAction, UpArgs};
use crate::daemon::{client, paths, start_in_background, wait_stopped};
use crate::exit::{Exit, Failure, Res};
use crate::{cache, output};

pub(crate) async fn up(a: UpArgs) -> Res {
    let p = paths()?;
    claudemesh_daemon::paths::ensure_private_dir(&p.dir).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot create {}: {e}", p.dir.display()),
        )
    })?;
    let mut cfg =
        DaemonConfig::load(&p.config()).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    let before = cfg.clone();
    cfg.relay.enabled = true;
    if let Some(l) = a.listen {
        cfg.relay.listen = l;
    }
    if let Some(pa) = a.public_addr {
        cfg.relay.public_addr = Some(pa);
    }
    if cfg != before {
        cfg.save(&p.config())
            .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
        // A running daemon must restart to pick up the relay settings.
        if let Ok(mut c) = Client::connect(&p.socket).await {
            let _: serde_json::Value = c.call(m::SHUTDOWN, ()).await?;
            wait_stopped(&p).await?;
        }
    }
    let mut c = client(&p).await?;
    let mut meshes: Vec<MeshInfo> = c.call(m::LIST, ()).await?;
    let mut created = false;
    if meshes.is_empty() {
        let info: MeshInfo = c
            .call(
                m::CREATE,
                CreateParams {
                    name: a.mesh.clone(),
                    relay: None,
                    // The embedded relay's certificate is known from its own files.
                    fingerprint: None,
                    trust_first_use: false,
                    display_name: env_name(a.name),
                    // The embedded relay admits anyone.
                    token: None,
                },
            )
            .await?;
        meshes.push(info);
        created = true;
    }
    let s: StatusResult = c.call(m::STATUS, ()).await?;
    if a.json.json {
        output::json(
            "up",
            serde_json::json!({"created": created, "meshes": meshes, "status": s}),
        );
        return Ok(());
    }
    out!("claudemesh is up.");
    if let Some(r) = &s.embedded_relay {
        out!("  local relay: {r}");
    }
    for mi in &meshes {
        out!(
            "  mesh {} ({}) — you are {} ({})",
            mi.name,
            mi.mesh.short(),
            mi.display_name,
            mi.role.as_str()
        );
    }
    if created {
        out!("Created your personal mesh {:?}.", a.mesh);
    }
    out!(
        "Next: `claudemesh invite` to bring in another machine, `claudemesh peers` to see who is here,"
    );
    out!("      `claudemesh send <peer> <message>` and `claudemesh inbox` to talk.");
    Ok(())
}

/// The variable `create` reads a creation token from.
const TOKEN_ENV: &str = "CLAUDEMESH_CREATE_TOKEN";

/// The creation token for `create`: from `--token-file`, else `CLAUDEMESH_CREATE_TOKEN`
/// (never an argument: argv is visible to every user of the machine). Errors never show it.
fn creation_token(file: Option<&std::path::Path>) -> Result<Option<CreationToken>, Failure> {
    let (token, from) = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                Failure::new(
                    Exit::Usage,
                    format!("cannot read the token file {}: {e}", f.display()),
                )
            })?;
            (CreationToken::new(&text), format!("{}", f.display()))
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => (CreationToken::new(&v), TOKEN_ENV.to_string()),
            _ => return Ok(None),
        },
    };
    let t = token.expose();
    if !t.starts_with("cmrt_") || t.contains(char::is_whitespace) {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "{from} does not hold a creation token (one line starting with cmrt_, as \
                 `claudemesh-relay token create` prints)"
            ),
        ));
    }
    Ok(Some(token))
}

pub(crate) async fn create(a: CreateArgs) -> Res {
    let token = creation_token(a.token_file.as_deref())?;
    let p = paths()?;
    let mut c = client(&p).await?;
    let info: MeshInfo = c
        .call(
            m::CREATE,
            CreateParams {
                name: a.name,
                relay: a.relay,
                fingerprint: a.fingerprint,
                trust_first_use: a.trust_first_use,
                display_name: env_name(a.display_name),
                token,
            },
        )
        .await?;
    if a.json.json {
        output::json("mesh", &info);
    } else {
        out!(
            "Created mesh {} ({}) on relay {}.",
            info.name,
            info.mesh.short(),
            info.relay
        );
        out!(
            "Invite someone with `claudemesh invite --mesh {}`.",
            info.name
        );
    }
    Ok(())
}

pub(crate) async fn list(a: JsonArg) -> Res {
    let p = paths()?;
    let list: Vec<MeshInfo> = match Client::connect(&p.socket).await {
        Ok(mut c) => c.call(m::LIST, ()).await?,
        Err(ClientError::NotRunning { .. }) => {
            start_in_background(&p);
            cache::meshes(&p)?
        }
        .iter()
        .map(|r| MeshInfo {
            mesh: r.id,
            name: r.name.clone(),
            relay: r.relay.clone(),
            relay_fingerprint: claudemesh_schema::encoding::b64(&r.relay_fp),
            role: r.role,
            member: r.member.to_b64(),
            display_name: r.display_name.clone(),
            session: r.session,
            joined_at: r.joined_at,
        })
        .collect(),
        Err(e) => return Err(e.into()),
    };
    if a.json {
        output::json("meshes", &list)
    } else {
        output::mesh_list(&list)
    }
    Ok(())
}

pub(crate) async fn leave(a: LeaveArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let info: MeshInfo = c.call(m::LEAVE, MeshParams { mesh: Some(a.mesh) }).await?;
    if a.json.json {
        output::json("mesh", &info);
    } else {
        out!("Left {} and deleted its keys from this machine.", info.name);
    }
    Ok(())
}

/// `member remove|role`: a roster change signed by this member (owner or admin).
pub(crate) async fn member(action: MemberAction) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let (method, params, json) = match action {
        MemberAction::Remove(a) => (
            m::MEMBER_REMOVE,
            m::MemberParams {
                mesh: a.mesh,
                peer: a.peer,
                role: None,
            },
            a.json.json,
        ),
        MemberAction::Role(a) => (
            m::MEMBER_ROLE,
            m::MemberParams {
                mesh: a.mesh,
                peer: a.peer,
                role: a.role.parse().ok(),
            },
            a.json.json,
        ),
    };
    let r: m::MemberResult = c.call(method, params).await?;
    if json {
        output::json("member", &r);
    } else {
        let who = match r.names.first() {
            Some(n) => format!("{n} ({})", r.fingerprint),
            None => r.fingerprint.clone(),
        };
        match r.role {
            Some(role) => out!("{who} is now {} of {}.", role.as_str(), r.mesh_name),
            None => out!("Removed {who} from {}.", r.mesh_name),
        }
    }
    Ok(())
}

/// Display name from the environment, passed explicitly so the daemon's own environment
/// does not matter.
pub(crate) fn env_name(flag: Option<String>) -> Option<String> {
    flag.or_else(|| {
        std::env::var("CLAUDEMESH_DISPLAY_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
}
