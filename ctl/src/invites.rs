//! Bringing people in: `invite` (mint, list, revoke; approve or deny waiting joins) and
//! `join` with a link.

use claudemesh_daemon::client::Client;
use claudemesh_schema::ipc::methods::{
    self as m, ClaimDecideParams, InviteInfo, InviteParams, InviteRevokeParams, JoinParams,
    JoinResult, MeshInfo, MeshParams, PendingClaim,
};
use claudemesh_schema::roster::Role;

use crate::cli::{InviteAction, InviteArgs, JoinArgs, parse_duration};
use crate::daemon::{client, paths};
use crate::exit::{Exit, Failure, Res};
use crate::meshes::env_name;
use crate::output;

pub(crate) async fn invite(a: InviteArgs) -> Res {
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
    } else {
        let who = match &r.name {
            Some(n) => format!(
                "{} ({})",
                claudemesh_schema::names::one_line(n, 64),
                r.fingerprint
            ),
            None => r.fingerprint.clone(),
        };
        if accept {
            say!("Admitted {who} to {}.", r.mesh_name);
        } else {
            say!("Denied the request from {who} to join {}.", r.mesh_name);
        }
    }
    Ok(())
}

pub(crate) async fn join(a: JoinArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let json = a.json.json;
    let invite = crate::stdin::or_stdin(a.invite, "invite link")?
        .trim()
        .to_string();
    let params = |wait_secs| JoinParams {
        invite: invite.clone(),
        display_name: env_name(a.display_name.clone()),
        wait_secs,
    };
    if !json {
        note!("Claiming the invite…");
    }
    // First the claim: the daemon answers once the relay holds it (or an admin that is
    // online admitted it at once), so the user sees where it stands, with the key
    // fingerprint the admin sees, before any long wait.
    let r: JoinResult = c.call(m::JOIN, params(None)).await?;
    let pending = match (r.joined, r.pending) {
        (Some(info), _) => return joined(&info, json),
        (None, Some(p)) => p,
        (None, None) => {
            return Err(Failure::new(
                Exit::Error,
                "the daemon said neither joined nor pending",
            ));
        }
    };
    let Some(secs) = a.wait else {
        if json {
            output::json("pending", serde_json::json!({ "pending": pending }));
        } else {
            for l in output::pending_join(&pending) {
                out!("{l}");
            }
            note!(
                "The daemon finishes the join in the background: `claudemesh status` shows it, \
                 `claudemesh join <link> --wait` waits for it."
            );
        }
        return Ok(());
    };
    if !json {
        for l in output::pending_join(&pending) {
            note!("{l}");
        }
        note!("Waiting up to {secs} s to be admitted…");
    }
    let r: JoinResult = {
        let _waiting = output::Progress::start("waiting for an admin to admit you");
        c.call(m::JOIN, params(Some(secs))).await?
    };
    match r.joined {
        Some(info) => joined(&info, json),
        None => Err(Failure::new(
            Exit::TimedOut,
            "not admitted yet; the join stays pending (`claudemesh status` shows it)",
        )),
    }
}

fn joined(info: &MeshInfo, json: bool) -> Res {
    if json {
        output::json("mesh", info);
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
