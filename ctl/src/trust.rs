//! Trust between members: `grant`, `revoke`, `block` capabilities, list them (`grants`),
//! and `verify` safety numbers.

use claudemesh_schema::ipc::methods::MeshParams;
use claudemesh_schema::ipc::trust::{self, VERIFY, VerifyParams, VerifyResult};

use crate::cli::{BlockArgs, GrantArgs, MeshJson, VerifyArgs};
use crate::daemon::{client, paths};
use crate::exit::Res;
use crate::output;

pub(crate) async fn grant(a: GrantArgs) -> Res {
    change(trust::GRANT, a.peer, a.caps, false, a.opts).await
}

pub(crate) async fn revoke(a: GrantArgs) -> Res {
    change(trust::REVOKE, a.peer, a.caps, false, a.opts).await
}

pub(crate) async fn block(a: BlockArgs) -> Res {
    change(trust::BLOCK, a.peer, Vec::new(), a.undo, a.opts).await
}

pub(crate) async fn list(opts: MeshJson) -> Res {
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: trust::GrantsResult = c
        .call(trust::GRANTS, MeshParams { mesh: opts.mesh })
        .await?;
    print(&r, opts.json);
    Ok(())
}

pub(crate) async fn verify(a: VerifyArgs) -> Res {
    let VerifyArgs {
        peer,
        confirm,
        opts,
    } = a;
    let p = paths()?;
    let mut c = client(&p).await?;
    let r: VerifyResult = c
        .call(
            VERIFY,
            VerifyParams {
                mesh: opts.mesh,
                peer,
                confirm,
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
            out!(
                "{who} ({}){}",
                s.fingerprint,
                if s.confirmed { ", confirmed" } else { "" }
            );
            out!("  safety number: {}", s.safety_number);
        }
        if confirm {
            out!("Confirmed: messages from this member are shown as verified from now on.");
        } else {
            out!(
                "Compare with what they see in `claudemesh verify` (in person, or over a channel you trust); when it matches, `claudemesh verify <fingerprint> --confirm` shows their messages as verified."
            );
        }
    }
    Ok(())
}

/// Change one peer's capabilities (or block); prints the peers restricted afterwards.
async fn change(method: &str, peer: String, caps: Vec<String>, undo: bool, opts: MeshJson) -> Res {
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
    print(&r, opts.json);
    Ok(())
}

/// The peers whose capabilities differ from the default, and what is only advisory.
fn print(r: &trust::GrantsResult, json: bool) {
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
