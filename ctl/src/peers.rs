//! Who is there and in what state: `peers`, `status`, `whoami`, `profile`, and `wait` for a
//! link or a peer to reach a state. The reads answer from the local cache with the daemon
//! down.

use claudemesh_daemon::DaemonConfig;
use claudemesh_daemon::client::{Client, ClientError};
use claudemesh_daemon::offline;
use claudemesh_schema::ipc::methods::{
    self as m, MeshPeers, PeersResult, ProfileParams, ProfileResult, StatusResult, WhoamiResult,
};
use claudemesh_schema::message::PeerStatus;

use crate::cli::{JsonArg, PeersArgs, ProfileArgs, WaitArgs};
use crate::daemon::{client, paths, start_in_background};
use crate::exit::{Exit, Failure, Res};
use crate::{cache, output};

pub(crate) async fn peers(a: PeersArgs) -> Res {
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
            let rows = cache::select(cache::meshes(&p)?, a.mesh.as_deref())?;
            let mut out = Vec::new();
            if !rows.is_empty() {
                let conn = offline::open_readonly(&p.db())
                    .map_err(|e| Failure::new(Exit::Error, e.to_string()))?;
                let grace = (!a.all).then(|| cache::offline_grace(&p));
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

pub(crate) async fn status(a: JsonArg) -> Res {
    let json = a.json;
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
            let rows = cache::meshes(&p)?;
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

pub(crate) async fn whoami(a: JsonArg) -> Res {
    let p = paths()?;
    let r: WhoamiResult = match Client::connect(&p.socket).await {
        Ok(mut c) => c.call(m::WHOAMI, ()).await?,
        Err(ClientError::NotRunning { .. }) => {
            start_in_background(&p);
            let cfg = DaemonConfig::load(&p.config()).unwrap_or_default();
            WhoamiResult {
                display_name: claudemesh_daemon::config::default_display_name(&cfg),
                identities: cache::meshes(&p)?
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
            // The same forms `peers` shows (KEY and ID columns); the full member id is
            // in `--json`.
            out!(
                "  key: {}  (`claudemesh verify` reads it out)",
                i.fingerprint
            );
            out!("  id:  {}", i.session.short());
        }
    }
    Ok(())
}

pub(crate) async fn profile(a: ProfileArgs) -> Res {
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

pub(crate) async fn wait(a: WaitArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let condition = match a.condition.as_str() {
        "link-up" => m::WaitCondition::LinkUp,
        "link-down" => m::WaitCondition::LinkDown,
        "link-error" => m::WaitCondition::LinkError,
        "peer-online" => m::WaitCondition::PeerOnline,
        "claim-pending" => m::WaitCondition::ClaimPending,
        "peer-working" => m::WaitCondition::PeerWorking,
        "peer-idle" => m::WaitCondition::PeerIdle,
        "synced" => m::WaitCondition::Synced,
        _ => m::WaitCondition::PeerOffline,
    };
    let _waiting = output::Progress::start(&format!("waiting for {}", a.condition));
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
