//! Bringing people in: `invite` (mint, list, revoke; approve or deny waiting joins) and
//! `join` with a link.

use claudemesh_daemon::client::Client;
use claudemesh_schema::ipc::methods::{
    self as m, ClaimDecideParams, InviteInfo, InviteParams, InviteRevokeParams, JoinParams,
    MeshInfo, MeshParams, PendingClaim,
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

pub(crate) async fn join(a: JoinArgs) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    if !a.json.json {
        note!("Asking to join; an admin's daemon must admit you…");
    }
    let info: MeshInfo = c
        .call(
            m::JOIN,
            JoinParams {
                invite: crate::stdin::or_stdin(a.invite, "invite link")?
                    .trim()
                    .to_string(),
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
