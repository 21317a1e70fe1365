//! Your meshes: `up` (the one-command start) and `down`, `create`, `list`, `leave`,
//! `member`, and `mesh set-relay`.

use claudemesh_daemon::DaemonConfig;
use claudemesh_daemon::client::{Client, ClientError};
use claudemesh_schema::ipc::methods::{
    self as m, CreateParams, MeshInfo, SetRelayParams, SetRelayResult, StatusResult,
};
use claudemesh_schema::wire::CreationToken;

use crate::cli::{CreateArgs, JsonArg, LeaveArgs, MemberAction, MeshAction, UpArgs};
use crate::daemon::{client, paths, start_in_background, wait_stopped};
use crate::exit::{Exit, Failure, Res};
use crate::{cache, output};

/// How long `up` waits for each mesh's link before saying it is not up.
const LINK_WAIT_MS: u64 = 20_000;

/// `up`: apply the relay settings given (validated before anything is saved or stopped),
/// start the daemon with them, keep the meshes this relay hosts naming its public address,
/// create a personal mesh if there is none, and say "up" only once every link is.
pub(crate) async fn up(a: UpArgs) -> Res {
    let p = paths()?;
    claudemesh_daemon::paths::ensure_private_dir(&p.dir).map_err(|e| {
        Failure::new(
            Exit::Error,
            format!("cannot create {}: {e}", p.dir.display()),
        )
    })?;
    let cfg_path = p.config();
    // The message names the file and says to fix or delete it.
    let old =
        DaemonConfig::load(&cfg_path).map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    let mut new = old.clone();
    new.relay.enabled = !a.no_relay;
    if let Some(l) = a.listen {
        new.relay.listen = l;
    }
    if let Some(pa) = &a.public_addr {
        let pa = pa.trim();
        if !claudemesh_schema::invite::relay_addr_ok(pa) {
            return Err(Failure::new(
                Exit::Usage,
                format!(
                    "--public-addr {pa:?} is not host:port (what other machines dial, e.g. myhost.example.org:7900)"
                ),
            ));
        }
        new.relay.public_addr = Some(pa.to_string());
    }
    let mut running = match Client::connect(&p.socket).await {
        Ok(c) => Some(c),
        Err(ClientError::NotRunning { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let before = match running.as_mut() {
        Some(c) => Some(c.call::<StatusResult>(m::STATUS, ()).await?),
        None => None,
    };
    let live = before.as_ref().map(Live::of);
    let wanted = Live::wanted(&new);
    let mut changed = describe(&old, &new, live.as_ref());
    // Validate before anything is saved or stopped: the address must be free. The one this
    // daemon's relay holds is; another address on the same port (0.0.0.0:7900 after
    // 127.0.0.1:7900) can only be tried once that relay let go of the port, so it is tried
    // after the stop below, and the daemon is started again as it was if it fails.
    let live_listen = live.as_ref().and_then(|l| l.listen);
    let try_after_stop = new.relay.enabled
        && live_listen
            .is_some_and(|l| l != new.relay.listen && l.port() == new.relay.listen.port());
    let bind_error = |e: std::io::Error, after: &str| {
        let how = if a.listen.is_some() {
            "Pass another --listen (port 0 picks a free one)".to_string()
        } else {
            format!(
                "It is `[relay] listen` in {}: run `claudemesh up --listen <addr:port>` with a free one",
                cfg_path.display()
            )
        };
        Failure::new(
            Exit::Error,
            format!(
                "the embedded relay cannot listen on {}: {e}; nothing was changed{after}. {how}, \
                 or `claudemesh up --no-relay` to run without a relay here",
                new.relay.listen
            ),
        )
    };
    if new.relay.enabled
        && !try_after_stop
        && live_listen != Some(new.relay.listen)
        && let Err(e) = try_bind(new.relay.listen)
    {
        return Err(bind_error(e, ""));
    }
    let hosted = hosted_meshes(&p, before.as_ref(), running.as_mut()).await?;
    if a.no_relay && old.relay.enabled && !hosted.is_empty() {
        let names: Vec<&str> = hosted.iter().map(|h| h.name.as_str()).collect();
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "{} {} hosted on this machine's relay: without it nobody reaches {}; nothing was \
                 changed. Move {} first (`claudemesh mesh set-relay <host:port> --fingerprint <fp> \
                 --mesh <name>`, to a relay that holds its data) or leave {}",
                names.join(", "),
                if names.len() == 1 { "is" } else { "are" },
                if names.len() == 1 { "it" } else { "them" },
                if names.len() == 1 { "it" } else { "them" },
                if names.len() == 1 { "it" } else { "them" },
            ),
        ));
    }
    let restart = match (&live, &before) {
        (Some(l), Some(_)) => *l != wanted,
        _ => false,
    };
    if (restart || running.is_none()) && claudemesh_daemon::client::autostart_disabled() {
        return Err(Failure::new(
            Exit::DaemonUnavailable,
            format!(
                "`up` would {} the daemon, but CLAUDEMESH_NO_AUTOSTART is set; nothing was \
                 changed. Start it yourself (`claudemesh daemon start`, or its service) and run \
                 `claudemesh up` again, or unset the variable",
                if restart { "restart" } else { "start" }
            ),
        ));
    }
    if let (Some(c), true) = (running.as_mut(), restart) {
        // Tell the members where the relay will be while it still answers where they dial
        // it now (a new port is not reachable before the restart). Best effort: after the
        // restart the records are written again through the new address. On the same port
        // members reach the new listener anyway, and its bind is not tried yet: wait.
        if new.relay.enabled && !try_after_stop {
            let public = new.relay_public_addr();
            for h in hosted.iter().filter(|h| h.admin && h.relay != public) {
                let _: Result<SetRelayResult, _> = c
                    .call(
                        m::MESH_SET_RELAY,
                        SetRelayParams {
                            mesh: Some(h.id.clone()),
                            relay: public.clone(),
                            fingerprint: None,
                            check: false,
                        },
                    )
                    .await;
            }
        }
    }
    if try_after_stop && let Some(c) = running.take() {
        stop_daemon(c, &p).await?;
        if let Err(e) = try_bind(new.relay.listen) {
            let again = match start(&p).await {
                Ok(()) => ", and the daemon runs as before".to_string(),
                Err(e2) => format!(", but the daemon did not start again ({e2})"),
            };
            return Err(bind_error(e, &again));
        }
    }
    if new != old {
        new.save(&cfg_path)
            .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
    }
    if restart || running.is_none() {
        if let Some(c) = running.take() {
            stop_daemon(c, &p).await?;
        }
        if let Err(e) = start(&p).await {
            // The old settings worked a moment ago (or nothing ran): put them back.
            let back = if new != old && old.save(&cfg_path).is_ok() {
                let restarted = before.is_some() && start(&p).await.is_ok();
                format!(
                    "; the previous settings are back in {}{}",
                    cfg_path.display(),
                    if restarted {
                        " and the daemon runs with them"
                    } else {
                        ""
                    }
                )
            } else {
                String::new()
            };
            return Err(Failure::new(
                Exit::DaemonUnavailable,
                format!("the daemon did not start: {e}{back}"),
            ));
        }
    }
    let mut c = Client::connect(&p.socket).await?;
    let mut meshes: Vec<MeshInfo> = c.call(m::LIST, ()).await?;
    let mut created = false;
    if meshes.is_empty() && new.relay.enabled {
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
    let down = links_down(&mut c, &meshes).await?;
    // The meshes this relay hosts name its public address (invites carry it; members follow
    // the signed record). Written once their link is up, through the relay itself.
    let s: StatusResult = c.call(m::STATUS, ()).await?;
    if let (Some(public), Some(fp)) = (&s.embedded_relay, &s.embedded_relay_fingerprint) {
        for mi in meshes
            .iter_mut()
            .filter(|mi| &mi.relay_fingerprint == fp && &mi.relay != public && mi.role.is_admin())
        {
            if down.iter().any(|(id, _)| *id == mi.mesh) {
                continue;
            }
            let r: SetRelayResult = c
                .call(
                    m::MESH_SET_RELAY,
                    SetRelayParams {
                        mesh: Some(mi.mesh.to_string()),
                        relay: public.clone(),
                        fingerprint: None,
                        check: false,
                    },
                )
                .await?;
            changed.push(format!(
                "mesh {} now names {} (was {}): invites carry it, and members follow",
                mi.name, public, r.previous
            ));
            *mi = r.mesh;
        }
    }
    // Meshes whose record was written before the restart: say so too.
    for h in &hosted {
        if let Some(mi) = meshes.iter().find(|mi| mi.mesh.to_string() == h.id)
            && mi.relay != h.relay
            && !changed
                .iter()
                .any(|c| c.starts_with(&format!("mesh {} ", mi.name)))
        {
            changed.push(format!(
                "mesh {} now names {} (was {}): invites carry it, and members follow",
                mi.name, mi.relay, h.relay
            ));
        }
    }
    let s: StatusResult = c.call(m::STATUS, ()).await?;
    if a.json.json {
        output::json(
            "up",
            serde_json::json!({
                "up": down.is_empty(),
                "created": created,
                "changed": changed,
                "meshes": meshes,
                "status": s,
            }),
        );
    } else {
        if down.is_empty() {
            out!("claudemesh is up.");
        } else {
            out!("claudemesh is running, but not every mesh's link is up:");
        }
        match (&s.embedded_relay, &s.embedded_relay_listen) {
            (Some(public), Some(listen)) => out!(
                "  relay: listening on {listen}; invites name {public} (set with --public-addr; in {})",
                cfg_path.display()
            ),
            _ => out!("  relay: none on this machine (`claudemesh up` starts one)"),
        }
        for c in &changed {
            out!("  changed: {c}");
        }
        for mi in &meshes {
            let link = match down.iter().find(|(id, _)| *id == mi.mesh) {
                Some((_, why)) => format!("link down: {why}"),
                None => "link up".to_string(),
            };
            out!(
                "  mesh {} ({}) via {} — you are {} ({}); {link}",
                mi.name,
                mi.mesh.short(),
                mi.relay,
                mi.display_name,
                mi.role.as_str()
            );
        }
        if created {
            out!("Created your personal mesh {:?}.", a.mesh);
        }
        if meshes.is_empty() {
            out!(
                "No meshes yet: join one with `claudemesh join - < link.txt`, or create one on a relay with `claudemesh create <name> --relay <host:port>`."
            );
        } else if down.is_empty() {
            say!(
                "Next: `claudemesh invite` to bring in another machine, `claudemesh peers` to see who is here,"
            );
            say!("      `claudemesh send <peer> <message>` and `claudemesh inbox` to talk.");
        }
    }
    if down.is_empty() {
        Ok(())
    } else {
        let names: Vec<String> = down
            .iter()
            .filter_map(|(id, _)| meshes.iter().find(|mi| mi.mesh == *id))
            .map(|mi| format!("{} (via {})", mi.name, mi.relay))
            .collect();
        Err(Failure::new(
            Exit::RelayUnreachable,
            format!(
                "no link within {} s for {}; `claudemesh status` shows why, `claudemesh doctor` checks the relays",
                LINK_WAIT_MS / 1000,
                names.join(", ")
            ),
        ))
    }
}

/// What the embedded relay does: as a running daemon reports it, or as a config asks.
#[derive(Debug, PartialEq, Eq)]
struct Live {
    listen: Option<std::net::SocketAddr>,
    public: Option<String>,
}

impl Live {
    fn of(s: &StatusResult) -> Self {
        Self {
            listen: s
                .embedded_relay_listen
                .as_deref()
                .and_then(|l| l.parse().ok()),
            public: s.embedded_relay.clone(),
        }
    }

    fn wanted(c: &DaemonConfig) -> Self {
        if !c.relay.enabled {
            return Self {
                listen: None,
                public: None,
            };
        }
        Self {
            listen: Some(c.relay.listen),
            public: Some(c.relay_public_addr()),
        }
    }
}

/// The relay settings that change, in words.
fn describe(old: &DaemonConfig, new: &DaemonConfig, live: Option<&Live>) -> Vec<String> {
    let mut out = Vec::new();
    let was_on = live.map_or(old.relay.enabled, |l| l.listen.is_some());
    let was_listen = live.and_then(|l| l.listen).unwrap_or(old.relay.listen);
    let was_public = live
        .and_then(|l| l.public.clone())
        .unwrap_or_else(|| old.relay_public_addr());
    match (was_on, new.relay.enabled) {
        (true, false) => out.push("no embedded relay here any more".to_string()),
        (false, true) if live.is_some() => {
            out.push(format!("the embedded relay runs, on {}", new.relay.listen))
        }
        (true, true) => {
            if was_listen != new.relay.listen {
                out.push(format!(
                    "the relay listens on {} (was {was_listen})",
                    new.relay.listen
                ));
            }
            if was_public != new.relay_public_addr() {
                out.push(format!(
                    "the relay's public address is {} (was {was_public})",
                    new.relay_public_addr()
                ));
            }
        }
        _ => {}
    }
    out
}

/// Can the embedded relay listen on `addr`? It takes the port over UDP (QUIC) and TCP
/// (WebSocket); both are tried and released at once.
fn try_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    drop(std::net::TcpListener::bind(addr)?);
    drop(std::net::UdpSocket::bind(addr)?);
    Ok(())
}

/// A mesh hosted on this machine's relay, as it was before `up` changed anything.
#[derive(Debug)]
struct Hosted {
    id: String,
    name: String,
    relay: String,
    admin: bool,
}

/// The meshes this machine's relay hosts: those pinned to its certificate (as the running
/// daemon reports it, or, with the daemon down, as its files hold it).
async fn hosted_meshes(
    p: &claudemesh_daemon::Paths,
    status: Option<&StatusResult>,
    client: Option<&mut Client>,
) -> Result<Vec<Hosted>, Failure> {
    if let (Some(s), Some(c)) = (status, client) {
        let Some(fp) = &s.embedded_relay_fingerprint else {
            return Ok(Vec::new());
        };
        let list: Vec<MeshInfo> = c.call(m::LIST, ()).await?;
        return Ok(list
            .into_iter()
            .filter(|mi| &mi.relay_fingerprint == fp)
            .map(|mi| Hosted {
                id: mi.mesh.to_string(),
                name: mi.name,
                relay: mi.relay,
                admin: mi.role.is_admin(),
            })
            .collect());
    }
    // Only read the relay's certificate if it has one: never make one here.
    let dir = p.relay_data();
    if !dir.join("relay-cert.pem").exists() {
        return Ok(Vec::new());
    }
    let Ok(id) = claudemesh_relay::tls::Identity::load_or_generate(&dir, None, None) else {
        return Ok(Vec::new());
    };
    Ok(cache::meshes(p)?
        .into_iter()
        .filter(|r| r.relay_fp == id.fingerprint)
        .map(|r| Hosted {
            id: r.id.to_string(),
            name: r.name,
            relay: r.relay,
            admin: r.role.is_admin(),
        })
        .collect())
}

/// Ask the daemon to stop and wait until it has.
async fn stop_daemon(mut c: Client, p: &claudemesh_daemon::Paths) -> Res {
    let _: serde_json::Value = c.call(m::SHUTDOWN, ()).await?;
    wait_stopped(p).await
}

/// Start the daemon as every command does (its user service when one is installed for
/// this config directory, else a background process) and wait until it is ready.
async fn start(p: &claudemesh_daemon::Paths) -> Result<(), ClientError> {
    let exe = std::env::current_exe()
        .map_err(|e| ClientError::Start(format!("cannot find the claudemesh executable: {e}")))?;
    claudemesh_daemon::client::connect_or_start(p, &exe)
        .await
        .map(|_| ())
}

/// The meshes whose link does not come up within [`LINK_WAIT_MS`], each with the link's
/// last error.
async fn links_down(
    c: &mut Client,
    meshes: &[MeshInfo],
) -> Result<Vec<(claudemesh_schema::MeshId, String)>, Failure> {
    let mut down = Vec::new();
    for mi in meshes {
        let r: m::WaitResult = c
            .call(
                m::WAIT_FOR,
                m::WaitParams {
                    condition: m::WaitCondition::LinkUp,
                    mesh: Some(mi.mesh.to_string()),
                    peer: None,
                    seq: None,
                    timeout_ms: LINK_WAIT_MS,
                },
            )
            .await?;
        if !r.met {
            down.push(mi.mesh);
        }
    }
    if down.is_empty() {
        return Ok(Vec::new());
    }
    let s: StatusResult = c.call(m::STATUS, ()).await?;
    Ok(down
        .into_iter()
        .map(|id| {
            let why = s
                .meshes
                .iter()
                .find(|ms| ms.mesh == id)
                .and_then(|ms| ms.last_error.clone())
                .unwrap_or_else(|| "not connected yet".to_string());
            (id, why)
        })
        .collect())
}

/// `down`: stop the daemon and, with it, the embedded relay.
pub(crate) async fn down(a: JsonArg) -> Res {
    let p = paths()?;
    let mut c = match Client::connect(&p.socket).await {
        Ok(c) => c,
        Err(ClientError::NotRunning { .. }) => {
            if a.json {
                output::json("down", serde_json::json!({"stopped": false}));
            } else {
                out!("claudemesh is not running.");
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let s: StatusResult = c.call(m::STATUS, ()).await?;
    let list: Vec<MeshInfo> = c.call(m::LIST, ()).await?;
    stop_daemon(c, &p).await?;
    let hosted: Vec<&str> = match &s.embedded_relay_fingerprint {
        Some(fp) => list
            .iter()
            .filter(|mi| &mi.relay_fingerprint == fp)
            .map(|mi| mi.name.as_str())
            .collect(),
        None => Vec::new(),
    };
    if a.json {
        output::json(
            "down",
            serde_json::json!({"stopped": true, "pid": s.pid, "relay": s.embedded_relay_listen, "hosted": hosted}),
        );
        return Ok(());
    }
    match &s.embedded_relay_listen {
        Some(l) => out!(
            "Stopped the daemon (pid {}) and its embedded relay on {l}.",
            s.pid
        ),
        None => out!("Stopped the daemon (pid {}); it ran no relay.", s.pid),
    }
    if !hosted.is_empty() {
        out!(
            "Nobody reaches {} until `claudemesh up` starts the relay again.",
            hosted.join(", ")
        );
    }
    out!("Commands that need the daemon start it again (CLAUDEMESH_NO_AUTOSTART=1 prevents that).");
    Ok(())
}

/// `mesh set-relay`, `use`, `stats`, `rename`.
pub(crate) async fn mesh(action: MeshAction) -> Res {
    let a = match action {
        MeshAction::SetRelay(a) => a,
        MeshAction::Use {
            mesh,
            clear: _,
            json,
        } => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let info: Option<MeshInfo> = c.call(m::MESH_USE, m::MeshUseParams { mesh }).await?;
            if json.json {
                output::json("mesh", &info);
            } else {
                match info {
                    Some(i) => out!(
                        "{} ({}) is your default mesh: commands use it when you name none",
                        i.name,
                        i.mesh.short()
                    ),
                    None => out!("no default mesh: with several, commands ask for --mesh"),
                }
            }
            return Ok(());
        }
        MeshAction::Stats(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let r: m::MeshStatsResult = c
                .call(
                    m::MESH_STATS,
                    m::MeshStatsParams {
                        mesh: a.mesh,
                        wait_ms: None,
                    },
                )
                .await?;
            if a.json {
                output::json("stats", &r);
            } else {
                output::mesh_stats(&r);
            }
            return Ok(());
        }
        MeshAction::Rename { mesh, name, json } => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let info: MeshInfo = c
                .call(
                    m::MESH_RENAME,
                    m::MeshRenameParams {
                        mesh: mesh.clone(),
                        name,
                    },
                )
                .await?;
            if json.json {
                output::json("mesh", &info);
            } else {
                out!(
                    "renamed {mesh:?} to {:?} on this machine ({})",
                    info.name,
                    info.mesh.short()
                );
            }
            return Ok(());
        }
    };
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: SetRelayResult = c
        .call(
            m::MESH_SET_RELAY,
            SetRelayParams {
                mesh: a.mesh,
                relay: a.relay,
                fingerprint: a.fingerprint,
                check: !a.no_check,
            },
        )
        .await?;
    if a.json.json {
        output::json("set_relay", &r);
        return Ok(());
    }
    let mi = &r.mesh;
    if !r.changed {
        out!(
            "{} already uses {} ({}); nothing changed.",
            mi.name,
            mi.relay,
            mi.relay_fingerprint
        );
    } else if r.sequenced {
        out!(
            "Moved {} from {} to {} (certificate {}).",
            mi.name,
            r.previous,
            mi.relay,
            mi.relay_fingerprint
        );
        out!(
            "Members online follow now; the others learn it from {} when they reconnect, so keep the relay reachable there until they have. New invites carry {}.",
            r.previous,
            mi.relay
        );
    } else {
        out!(
            "The move of {} to {} is signed and queued: it goes out when the link to {} returns, and members follow then.",
            mi.name,
            mi.relay,
            r.previous
        );
    }
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
    if a.list_templates {
        for t in crate::templates::TEMPLATES {
            out!("  {:<5}  {}", t.name, t.about);
        }
        return Ok(());
    }
    let Some(name) = a.name else {
        return Err(Failure::new(
            Exit::Usage,
            "name the mesh: `claudemesh create <name>`",
        ));
    };
    // Refused before anything is created.
    let template = a
        .template
        .as_deref()
        .map(crate::templates::find)
        .transpose()?;
    let token = creation_token(a.token_file.as_deref())?;
    let p = paths()?;
    let mut c = client(&p).await?;
    let info: MeshInfo = c
        .call(
            m::CREATE,
            CreateParams {
                name,
                relay: a.relay,
                fingerprint: a.fingerprint,
                trust_first_use: a.trust_first_use,
                display_name: env_name(a.display_name),
                token,
            },
        )
        .await?;
    let applied = match template {
        Some(t) => crate::templates::apply(&mut c, &info.mesh.to_string(), t)
            .await
            .map_err(|f| {
                Failure::new(
                    f.code,
                    format!(
                        "created mesh {} but the {} template was not fully applied: {} (run `claudemesh create` with another name, or make the changes by hand)",
                        info.name, t.name, f.message
                    ),
                )
            })?,
        None => Vec::new(),
    };
    if a.json.json {
        output::json("mesh", &info);
    } else {
        out!(
            "Created mesh {} ({}) on relay {}.",
            info.name,
            info.mesh.short(),
            info.relay
        );
        if let Some(t) = template {
            out!("From the {} template: {}.", t.name, applied.join("; "));
        }
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
            default: false,
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
    let params = |check| m::LeaveParams {
        mesh: Some(a.mesh.clone()),
        force: a.force,
        check,
    };
    // Asked first (the daemon refuses the last admin before anyone is asked anything).
    let info: MeshInfo = c.call(m::LEAVE, params(true)).await?;
    if !a.yes {
        if !crate::prompt::interactive() {
            return Err(Failure::new(
                Exit::Usage,
                format!(
                    "leaving {} deletes this machine's keys for it (coming back needs a new \
                     invite); run it on a terminal to confirm, or pass --yes",
                    info.name
                ),
            ));
        }
        let q = format!(
            "Leave {} and delete this machine's keys for it? Coming back needs a new invite. [y/N] ",
            info.name
        );
        if !crate::prompt::yes(&q)? {
            return Err(Failure::new(
                Exit::Error,
                format!("not leaving {}; nothing changed", info.name),
            ));
        }
    }
    let info: MeshInfo = c.call(m::LEAVE, params(false)).await?;
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

/// `claudemesh info`: one mesh (or each) at a glance (`mesh_info`, as the MCP tool).
pub(crate) async fn info(a: crate::cli::MeshJson) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: m::MeshInfoResult = c.call(m::MESH_INFO, m::MeshParams { mesh: a.mesh }).await?;
    if a.json {
        output::json("meshes", &r.meshes);
    } else {
        output::mesh_overview(&r.meshes);
    }
    Ok(())
}
