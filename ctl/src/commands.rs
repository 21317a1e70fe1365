//! What each command does: talk to the daemon (starting it when a command needs it), or
//! read the daemon's store directly when it is down and the command only reads.

use claudemesh_daemon::client::{
    Client, ClientError, autostart_disabled, connect_or_start, start_daemon,
};
use claudemesh_daemon::{DaemonConfig, Paths, offline};
use claudemesh_schema::ipc::methods::{
    self as m, ClaimDecideParams, CreateParams, HelloResult, InboxParams, InboxResult, InviteInfo,
    InviteParams, InviteRevokeParams, JoinParams, MeshInfo, MeshParams, MeshPeers, PeersResult,
    PendingClaim, ProfileParams, ProfileResult, SendParams, SendResult, Stage, StatusResult,
    WhoamiResult,
};
use claudemesh_schema::ipc::trust;
use claudemesh_schema::message::{PeerStatus, Priority};
use claudemesh_schema::roster::Role;
use std::time::Duration;

use crate::cli::*;
use crate::exit::{Exit, Failure, Res};
use crate::output;

pub(crate) fn paths() -> Result<Paths, Failure> {
    Paths::from_env().map_err(|e| Failure::new(Exit::Error, e.to_string()))
}

/// After answering from the local store with the daemon down: start it in the background
/// (without waiting) so the next command finds it running.
fn start_in_background(p: &Paths) {
    if autostart_disabled() || !p.db().exists() {
        return;
    }
    if let Ok(exe) = std::env::current_exe()
        && claudemesh_daemon::client::spawn_detached(p, &exe).is_ok()
    {
        note!("(the daemon was not running; starting it in the background)");
    }
}

pub(crate) async fn client(p: &Paths) -> Result<Client, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Exit::DaemonUnavailable,
            format!("cannot find the claudemesh executable: {e}"),
        )
    })?;
    Ok(connect_or_start(p, &exe).await?)
}

/// Display name from the environment, passed explicitly so the daemon's own environment
/// does not matter.
fn env_name(flag: Option<String>) -> Option<String> {
    flag.or_else(|| {
        std::env::var("CLAUDEMESH_DISPLAY_NAME")
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
}

/// Parse "30s", "15m", "12h", "7d", "2w" (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<u64, Failure> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        Failure::new(
            Exit::Usage,
            format!("invalid duration {s:?} (use e.g. 30m, 12h, 7d)"),
        )
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(Failure::new(
                Exit::Usage,
                format!("invalid duration unit in {s:?} (use s, m, h, d or w)"),
            ));
        }
    };
    Ok(n.saturating_mul(mult))
}

pub(crate) async fn run(cmd: Command) -> Res {
    match cmd {
        Command::Up(a) => up(a).await,
        Command::Daemon { action } => daemon(action).await,
        Command::Create(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let info: MeshInfo = c
                .call(
                    m::CREATE,
                    CreateParams {
                        name: a.name,
                        relay: a.relay,
                        fingerprint: a.fingerprint,
                        display_name: env_name(a.display_name),
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
        Command::Invite(a) => invite(a).await,
        Command::State { action } => crate::shared::state(action).await,
        Command::Remember(a) => crate::shared::remember(a.text, a.tags, a.opts).await,
        Command::Recall(a) => crate::shared::recall(a.query, a.tags, a.limit, a.opts).await,
        Command::Forget(a) => crate::shared::forget(a.id, a.opts).await,
        Command::Task { action } => crate::shared::task(action).await,
        Command::Audit { action } => crate::shared::audit(action).await,
        Command::Reserve(a) => crate::shared::reserve(a).await,
        Command::Remind(a) => crate::shared::remind(a).await,
        Command::Skill { action } => crate::shared::skill(action).await,
        Command::Grant(a) => grants(trust::GRANT, a.peer, a.caps, false, a.opts).await,
        Command::Revoke(a) => grants(trust::REVOKE, a.peer, a.caps, false, a.opts).await,
        Command::Block { peer, undo, opts } => {
            grants(trust::BLOCK, peer, Vec::new(), undo, opts).await
        }
        Command::Sent {
            id,
            wait_for,
            timeout,
            json,
        } => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let want: Option<Stage> = wait_for
                .as_deref()
                .map(|w| serde_json::from_value(serde_json::Value::String(w.into())))
                .transpose()
                .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
            let r: m::MessageStatusResult = c
                .call(
                    m::MESSAGE_STATUS,
                    m::MessageStatusParams {
                        id,
                        wait_for: want,
                        wait_ms: want.map(|_| timeout.saturating_mul(1000)),
                    },
                )
                .await?;
            if json {
                output::json("message", &r);
            } else {
                out!("{} to {}: {:?}", r.id.short(), r.to, r.stage);
            }
            match want {
                Some(w) if r.stage < w => Err(Failure::new(
                    Exit::TimedOut,
                    format!("the message did not get to {w:?} within {timeout} s"),
                )),
                _ => Ok(()),
            }
        }
        Command::Doctor(a) => crate::doctor::run(a.json).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "claudemesh", &mut script);
            output::raw(&script);
            Ok(())
        }
        Command::Backup {
            file,
            passphrase_file,
            json,
        } => crate::backup::backup(&file, passphrase_file.as_deref(), json),
        Command::Restore {
            file,
            passphrase_file,
            yes,
        } => crate::backup::restore(&file, passphrase_file.as_deref(), yes),
        Command::Grants(opts) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let r: trust::GrantsResult = c
                .call(trust::GRANTS, MeshParams { mesh: opts.mesh })
                .await?;
            print_grants(&r, opts.json);
            Ok(())
        }
        Command::Verify { peer, opts } => {
            use claudemesh_schema::ipc::trust::{VERIFY, VerifyParams, VerifyResult};
            let p = paths()?;
            let mut c = client(&p).await?;
            let r: VerifyResult = c
                .call(
                    VERIFY,
                    VerifyParams {
                        mesh: opts.mesh,
                        peer,
                    },
                )
                .await?;
            if opts.json {
                output::json("verify", &r);
            } else if r.members.is_empty() {
                out!("No other members in this mesh yet.");
            } else {
                out!("Your fingerprint: {}", r.fingerprint);
                for s in &r.members {
                    let who = if s.names.is_empty() {
                        s.fingerprint.clone()
                    } else {
                        s.names.join(", ")
                    };
                    out!("{who} ({})", s.fingerprint);
                    out!("  safety number: {}", s.safety_number);
                }
                out!(
                    "Compare with what they see in `claudemesh verify` (in person, or over a channel you trust)."
                );
            }
            Ok(())
        }
        Command::Service { action } => match action {
            ServiceAction::Install(a) => crate::service::install(a.platform, a.json).await,
            ServiceAction::Uninstall(a) => crate::service::uninstall(a.platform).await,
            ServiceAction::Status(a) => crate::service::status(a.platform, a.json).await,
        },
        Command::Context { action } => crate::shared::context(action).await,
        Command::Release(a) => crate::shared::release(a.id, a.opts).await,
        Command::Reservations { all, opts } => crate::shared::reservations(all, opts).await,
        Command::Debug { action } => crate::shared::debug(action).await,
        Command::Wait(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let condition = match a.condition.as_str() {
                "link-up" => m::WaitCondition::LinkUp,
                "link-down" => m::WaitCondition::LinkDown,
                "peer-online" => m::WaitCondition::PeerOnline,
                "claim-pending" => m::WaitCondition::ClaimPending,
                "peer-working" => m::WaitCondition::PeerWorking,
                "peer-idle" => m::WaitCondition::PeerIdle,
                "synced" => m::WaitCondition::Synced,
                _ => m::WaitCondition::PeerOffline,
            };
            let r: m::WaitResult = c
                .call(
                    m::WAIT_FOR,
                    m::WaitParams {
                        condition,
                        mesh: a.mesh,
                        peer: a.peer,
                        seq: a.seq,
                        timeout_ms: a.timeout.saturating_mul(1000),
                    },
                )
                .await?;
            if r.met {
                Ok(())
            } else {
                Err(Failure::new(
                    Exit::TimedOut,
                    format!("{} did not happen within {} s", a.condition, a.timeout),
                ))
            }
        }
        Command::Relay(_) | Command::Mcp => {
            Err(Failure::new(Exit::Error, "internal: dispatched in main"))
        }
        Command::Hook { event } => {
            crate::claude::hook(&event).await;
            Ok(())
        }
        Command::StatusLine => {
            out!("{}", crate::claude::status_line());
            Ok(())
        }
        Command::Launch(a) => {
            crate::claude::launch(a.name, a.groups, a.mesh, a.role, a.yes, a.args)
                .map_err(|e| Failure::new(Exit::Error, e))
        }
        Command::Install(a) => {
            let f = crate::install::ClaudeFiles::from_env()
                .map_err(|e| Failure::new(Exit::Error, e))?;
            let bin = crate::install::binary().map_err(|e| Failure::new(Exit::Error, e))?;
            let ch = crate::install::install(&f, &bin, !a.no_hooks, a.status_line)
                .map_err(|e| Failure::new(Exit::Error, e))?;
            if ch.files.is_empty() {
                out!("claudemesh is already installed for Claude Code; nothing changed.");
            } else {
                for p in &ch.files {
                    out!("updated {}", p.display());
                }
                out!(
                    "Restart Claude Code (or start it with `claudemesh launch`) to load claudemesh."
                );
            }
            for n in &ch.notes {
                out!("note: {n}");
            }
            Ok(())
        }
        Command::Uninstall => {
            let f = crate::install::ClaudeFiles::from_env()
                .map_err(|e| Failure::new(Exit::Error, e))?;
            let ch = crate::install::uninstall(&f).map_err(|e| Failure::new(Exit::Error, e))?;
            if ch.files.is_empty() {
                out!("claudemesh was not installed for Claude Code; nothing changed.");
            }
            for p in &ch.files {
                out!("updated {}", p.display());
            }
            Ok(())
        }
        Command::Join(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            if !a.json.json {
                note!("Asking to join; an admin's daemon must admit you…");
            }
            let info: MeshInfo = c
                .call(
                    m::JOIN,
                    JoinParams {
                        invite: a.invite,
                        display_name: env_name(a.display_name),
                        wait_secs: Some(a.wait),
                    },
                )
                .await?;
            if a.json.json {
                output::json("mesh", &info);
            } else {
                out!(
                    "Joined {} as {} ({}).",
                    info.name,
                    info.display_name,
                    info.role.as_str()
                );
                out!("See who is there with `claudemesh peers`.");
            }
            Ok(())
        }
        Command::List(a) => {
            let p = paths()?;
            let list: Vec<MeshInfo> = match Client::connect(&p.socket).await {
                Ok(mut c) => c.call(m::LIST, ()).await?,
                Err(ClientError::NotRunning { .. }) => {
                    start_in_background(&p);
                    offline_meshes(&p)?
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
        Command::Leave(a) => {
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
        Command::Peers(a) => peers(a).await,
        Command::Send(a) => send(a).await,
        Command::Inbox(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let r: InboxResult = c
                .call(
                    m::INBOX,
                    InboxParams {
                        session: match a.session.as_deref() {
                            Some(s) => Some(s.parse().map_err(|_| {
                                Failure::new(
                                    Exit::Usage,
                                    format!("--session needs a full session id, got {s:?}"),
                                )
                            })?),
                            None => None,
                        },
                        after: match a.after.as_deref() {
                            Some(s) => Some(s.parse().map_err(|_| {
                                Failure::new(
                                    Exit::Usage,
                                    format!("--after needs a full message id, got {s:?}"),
                                )
                            })?),
                            None => None,
                        },
                        mesh: a.mesh,
                        wait_ms: a.wait.map(|s| s.saturating_mul(1000)),
                        peek: a.peek,
                        limit: a.limit,
                    },
                )
                .await?;
            if a.json.json {
                output::json("messages", &r)
            } else {
                output::inbox(&r.messages)
            }
            Ok(())
        }
        Command::Status(a) => status(a.json).await,
        Command::Whoami(a) => {
            let p = paths()?;
            let r: WhoamiResult = match Client::connect(&p.socket).await {
                Ok(mut c) => c.call(m::WHOAMI, ()).await?,
                Err(ClientError::NotRunning { .. }) => {
                    start_in_background(&p);
                    let cfg = DaemonConfig::load(&p.config()).unwrap_or_default();
                    WhoamiResult {
                        display_name: claudemesh_daemon::config::default_display_name(&cfg),
                        identities: offline_meshes(&p)?
                            .iter()
                            .map(|r| m::Identity {
                                mesh: r.id,
                                mesh_name: r.name.clone(),
                                display_name: r.display_name.clone(),
                                member_id: r.member.to_b64(),
                                fingerprint: r.member.fingerprint(),
                                role: r.role,
                                session: r.session,
                            })
                            .collect(),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            if a.json {
                output::json("identities", &r);
            } else if r.identities.is_empty() {
                out!(
                    "You are {} (no meshes yet; run `claudemesh up`).",
                    r.display_name
                );
            } else {
                for i in &r.identities {
                    out!(
                        "{} in {} ({})",
                        i.display_name,
                        i.mesh_name,
                        i.role.as_str()
                    );
                    out!("  member id:   {}", i.member_id);
                    out!("  fingerprint: {}", i.fingerprint);
                }
            }
            Ok(())
        }
        Command::Profile(a) => {
            let p = paths()?;
            let mut c = client(&p).await?;
            let groups = a.groups.map(|g| {
                g.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            });
            let status = match a.status.as_deref() {
                Some(s) => Some(
                    s.parse::<PeerStatus>()
                        .map_err(|e| Failure::new(Exit::Usage, e))?,
                ),
                None => None,
            };
            let r: ProfileResult = c
                .call(
                    m::PROFILE,
                    ProfileParams {
                        mesh: a.mesh,
                        name: a.name,
                        groups,
                        summary: a.summary,
                        status,
                    },
                )
                .await?;
            if a.json.json {
                output::json("profiles", &r);
            } else {
                for p in &r.profiles {
                    let groups = p
                        .groups
                        .iter()
                        .map(|g| format!("@{g}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    out!(
                        "{}: {} ({}){}{}",
                        p.mesh_name,
                        p.name,
                        p.status.as_str(),
                        if groups.is_empty() {
                            String::new()
                        } else {
                            format!(" {groups}")
                        },
                        if p.summary.is_empty() {
                            String::new()
                        } else {
                            format!(" — {}", p.summary)
                        }
                    );
                }
            }
            Ok(())
        }
    }
}

/// How long ended sessions stay listed, from the config (ms).
pub(crate) fn offline_grace(p: &Paths) -> i64 {
    DaemonConfig::load(&p.config())
        .unwrap_or_default()
        .peers
        .offline_grace_secs as i64
        * 1000
}

fn offline_meshes(p: &Paths) -> Result<Vec<offline::MeshRow>, Failure> {
    if !p.db().exists() {
        return Ok(Vec::new());
    }
    let conn = offline::open_readonly(&p.db())
        .map_err(|e| Failure::new(Exit::Error, format!("cannot read the local store: {e}")))?;
    offline::q_meshes(&conn)
        .map_err(|e| Failure::new(Exit::Error, format!("cannot read the local store: {e}")))
}

fn select_offline(
    rows: Vec<offline::MeshRow>,
    sel: Option<&str>,
) -> Result<Vec<offline::MeshRow>, Failure> {
    let Some(sel) = sel else { return Ok(rows) };
    let lower = sel.to_lowercase().replace('-', "");
    let hits: Vec<_> = rows
        .into_iter()
        .filter(|r| {
            r.name == sel || (lower.len() >= 4 && r.id.0.simple().to_string().starts_with(&lower))
        })
        .collect();
    if hits.is_empty() {
        return Err(Failure::new(
            Exit::NotFound,
            format!("no joined mesh is called {sel:?}; `claudemesh list` shows your meshes"),
        ));
    }
    Ok(hits)
}

async fn peers(a: PeersArgs) -> Res {
    let p = paths()?;
    let (meshes, down) = match Client::connect(&p.socket).await {
        Ok(mut c) => {
            let r: PeersResult = c
                .call(
                    m::PEERS,
                    m::PeersParams {
                        mesh: a.mesh,
                        all: a.all,
                    },
                )
                .await?;
            (r.meshes, false)
        }
        Err(ClientError::NotRunning { .. }) => {
            let rows = select_offline(offline_meshes(&p)?, a.mesh.as_deref())?;
            let mut out = Vec::new();
            if !rows.is_empty() {
                let conn = offline::open_readonly(&p.db())
                    .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
                let grace = (!a.all).then(|| offline_grace(&p));
                for r in rows {
                    let peers = offline::q_peers(&conn, &r, grace)
                        .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
                    out.push(MeshPeers {
                        mesh: r.id,
                        name: r.name,
                        cached: true,
                        peers,
                    });
                }
            }
            (out, true)
        }
        Err(e) => return Err(e.into()),
    };
    if a.json.json {
        output::json("meshes", PeersResult { meshes })
    } else {
        output::peers(&meshes, down)
    }
    if down {
        start_in_background(&p);
    }
    Ok(())
}

async fn send(a: SendArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let priority: Priority = a
        .priority
        .parse()
        .map_err(|e: String| Failure::new(Exit::Usage, e))?;
    let r: SendResult = c
        .call(
            m::SEND,
            SendParams {
                to: a.to.clone(),
                body: a.message.join(" "),
                priority,
                mesh: a.mesh,
                session: None,
                wait_ms: None,
            },
        )
        .await?;
    if a.json.json {
        output::json("result", &r);
    } else {
        let who = if r.recipients.is_empty() {
            a.to.clone()
        } else {
            r.recipients.join(", ")
        };
        match r.stage {
            Stage::Queued => out!(
                "queued for {who}: the relay is not reachable right now; it will be sent when the link returns (id {})",
                r.id.short()
            ),
            Stage::Relayed => out!("sent to {who} (relayed, id {})", r.id.short()),
            Stage::Delivered | Stage::Surfaced | Stage::Read => {
                out!("delivered to {who} (id {})", r.id.short())
            }
        }
    }
    Ok(())
}

async fn status(json: bool) -> Res {
    let p = paths()?;
    match Client::connect(&p.socket).await {
        Ok(mut c) => {
            let s: StatusResult = c.call(m::STATUS, ()).await?;
            if json {
                output::json("status", &s)
            } else {
                output::status(&s)
            }
            Ok(())
        }
        Err(ClientError::NotRunning { .. }) => {
            let rows = offline_meshes(&p)?;
            if json {
                output::json(
                    "status",
                    serde_json::json!({
                        "running": false,
                        "config_dir": p.dir.display().to_string(),
                        "meshes": rows.iter().map(|r| serde_json::json!({
                            "mesh": r.id, "name": r.name, "relay": r.relay, "link": "offline"
                        })).collect::<Vec<_>>(),
                    }),
                );
            } else {
                out!(
                    "daemon not running (config: {}); start it with `claudemesh daemon start`",
                    p.dir.display()
                );
                for r in rows {
                    out!("{} via {}: offline", r.name, r.relay);
                }
            }
            Err(Failure::new(Exit::DaemonUnavailable, String::new()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn invite(a: InviteArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    match a.action {
        None => {
            let expires_secs = parse_duration(&a.expires)?;
            let role: Role = a
                .role
                .parse()
                .map_err(|e: String| Failure::new(Exit::Usage, e))?;
            let i: InviteInfo = c
                .call(
                    m::INVITE,
                    InviteParams {
                        mesh: a.mesh,
                        uses: a.uses,
                        expires_secs,
                        role,
                        approve: a.approve,
                    },
                )
                .await?;
            if a.json.json {
                output::json("invite", &i)
            } else {
                output::invite(&i)
            }
        }
        Some(InviteAction::List { mesh, json }) => {
            let l: Vec<InviteInfo> = c.call(m::INVITE_LIST, MeshParams { mesh }).await?;
            if json.json {
                output::json("invites", &l)
            } else {
                output::invite_list(&l)
            }
        }
        Some(InviteAction::Revoke { id, json }) => {
            let i: InviteInfo = c.call(m::INVITE_REVOKE, InviteRevokeParams { id }).await?;
            if json.json {
                output::json("invite", &i)
            } else {
                out!("Revoked invite {} to {}.", i.id.short(), i.mesh_name)
            }
        }
        Some(InviteAction::Pending(json)) => {
            let l: Vec<PendingClaim> = c.call(m::CLAIMS, ()).await?;
            if json.json {
                output::json("claims", &l)
            } else {
                output::claims(&l)
            }
        }
        Some(InviteAction::Approve { claim, json }) => {
            decide(&mut c, claim, true, json.json).await?
        }
        Some(InviteAction::Deny { claim, json }) => decide(&mut c, claim, false, json.json).await?,
    }
    Ok(())
}

async fn decide(c: &mut Client, claim: String, accept: bool, json: bool) -> Res {
    let r: PendingClaim = c
        .call(m::CLAIM_DECIDE, ClaimDecideParams { claim, accept })
        .await?;
    if json {
        output::json("claim", &r);
    } else if accept {
        out!("Admitted {} to {}.", r.fingerprint, r.mesh_name);
    } else {
        out!(
            "Denied the request from {} to join {}.",
            r.fingerprint,
            r.mesh_name
        );
    }
    Ok(())
}

async fn daemon(action: DaemonAction) -> Res {
    let p = paths()?;
    match action {
        DaemonAction::Run { .. } => Err(Failure::new(
            Exit::Error,
            "internal: daemon run is dispatched in main",
        )),
        DaemonAction::Start => {
            if let Ok(mut c) = Client::connect(&p.socket).await {
                let h: HelloResult = c.call(m::HELLO, ()).await?;
                out!("daemon already running (pid {})", h.pid);
                return Ok(());
            }
            let exe = std::env::current_exe()
                .map_err(|e| Failure::new(Exit::DaemonUnavailable, e.to_string()))?;
            start_daemon(&p, &exe).await?;
            let mut c = Client::connect(&p.socket).await?;
            let h: HelloResult = c.call(m::HELLO, ()).await?;
            out!("daemon started (pid {})", h.pid);
            Ok(())
        }
        DaemonAction::Stop => {
            match Client::connect(&p.socket).await {
                Ok(mut c) => {
                    let _: serde_json::Value = c.call(m::SHUTDOWN, ()).await?;
                    wait_stopped(&p).await?;
                    out!("daemon stopped");
                }
                Err(ClientError::NotRunning { .. }) => out!("daemon not running"),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        DaemonAction::Status(a) => match Client::connect(&p.socket).await {
            Ok(mut c) => {
                let s: StatusResult = c.call(m::STATUS, ()).await?;
                if a.json {
                    output::json(
                        "status",
                        serde_json::json!({"running": true, "pid": s.pid, "version": s.version, "uptime_ms": s.uptime_ms, "socket": s.socket, "config_dir": s.config_dir}),
                    );
                } else {
                    out!(
                        "daemon running (pid {}, up {}, socket {})",
                        s.pid,
                        output::span(s.uptime_ms),
                        s.socket
                    );
                }
                Ok(())
            }
            Err(ClientError::NotRunning { .. }) => {
                if a.json {
                    output::json(
                        "status",
                        serde_json::json!({"running": false, "config_dir": p.dir.display().to_string()}),
                    );
                } else {
                    out!("daemon not running");
                }
                Err(Failure::new(Exit::DaemonUnavailable, String::new()))
            }
            Err(e) => Err(e.into()),
        },
    }
}

/// Wait until the daemon of `p` has released its instance lock (it has fully exited its
/// run loop), polling the lock file.
pub(crate) async fn wait_stopped(p: &Paths) -> Res {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.lock())
            && f.try_lock().is_ok()
        {
            return Ok(());
        }
        if !p.lock().exists() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::new(
                Exit::Error,
                "the daemon did not stop within 15 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn up(a: UpArgs) -> Res {
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
                    fingerprint: None,
                    display_name: env_name(a.name),
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

async fn grants(method: &str, peer: String, caps: Vec<String>, undo: bool, opts: MeshJson) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: trust::GrantsResult = c
        .call(
            method,
            trust::GrantParams {
                mesh: opts.mesh,
                peer,
                caps,
                undo,
            },
        )
        .await?;
    print_grants(&r, opts.json);
    Ok(())
}

fn print_grants(r: &trust::GrantsResult, json: bool) {
    if json {
        output::json("grants", r);
        return;
    }
    if r.peers.is_empty() {
        out!("Every peer has every capability (none restricted or blocked).");
        return;
    }
    for g in &r.peers {
        let who = if g.names.is_empty() {
            g.fingerprint.clone()
        } else {
            g.names.join(", ")
        };
        if g.blocked {
            out!("{who} ({}): BLOCKED", g.fingerprint);
        } else {
            // Taking away a capability this version cannot enforce is only recorded.
            let advisory: Vec<&str> = trust::CAPABILITIES
                .iter()
                .copied()
                .filter(|c| !g.caps.iter().any(|x| x == c) && !trust::ENFORCED.contains(c))
                .collect();
            out!("{who} ({}): {}", g.fingerprint, g.caps.join(", "));
            if !advisory.is_empty() {
                out!(
                    "  (revoking {} is recorded but not enforced yet: shared state is sealed to the whole mesh)",
                    advisory.join(", ")
                );
            }
        }
    }
}
