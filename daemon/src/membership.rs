//! Joining and shaping meshes: create, invite (mint, list, revoke), answer claims as an
//! admin (automatically, or after `invite approve`), join as a claimant, leave, and change
//! our profile.

use bytes::Bytes;
use claudemesh_relay::{ConnectOptions, Connection};
use claudemesh_schema::crypto::{self, MemberSecret, MeshKey};
use claudemesh_schema::invite::{self, InviteLink, JoinSecret};
use claudemesh_schema::ipc::methods::{
    ClaimDecideParams, CreateParams, Identity, InviteInfo, InviteParams, InviteRevokeParams,
    LeaveParams, MemberParams, MemberResult, MeshInfo, MeshParams, MeshProfile, PendingClaim,
    ProfileParams, ProfileResult, SetRelayParams, SetRelayResult, WhoamiResult,
};
use claudemesh_schema::message::PeerStatus;
use claudemesh_schema::roster::{
    InviteCap, InviteRevocation, MeshGenesis, Role, RosterEntry, RosterHead, RosterOp,
};
use claudemesh_schema::wire::{
    self, ClaimDecision, ClaimRequest, ClientFrame, ErrorCode, RelayFrame,
};
use claudemesh_schema::{ClaimId, InviteId, MeshId, encoding, now_ms};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroize as _;

use crate::config::default_display_name;
use crate::context::Daemon;
use crate::error::Error;
use crate::keys::MeshKeys;
use crate::mesh::{LinkCmd, MeshCtx, RelayRefusal, RequestBuilder, lock};
use crate::store::{self, MeshRow};
use claudemesh_schema::names;

fn connect_opts(d: &Daemon) -> ConnectOptions {
    ConnectOptions {
        quic: d.cfg.link.quic,
        websocket: d.cfg.link.websocket,
        quic_timeout: Duration::from_millis(d.cfg.link.quic_timeout_ms),
        ws_timeout: Duration::from_millis(d.cfg.link.ws_timeout_ms),
    }
}

fn display_name(d: &Daemon, given: Option<&str>) -> Result<String, Error> {
    match given {
        Some(n) => Ok(names::check("display name", n)?),
        None => Ok(names::check("display name", &default_display_name(&d.cfg))
            .unwrap_or_else(|_| "me".to_string())),
    }
}

pub(crate) fn mesh_info(row: &MeshRow) -> MeshInfo {
    MeshInfo {
        mesh: row.id,
        name: row.name.clone(),
        relay: row.relay.clone(),
        relay_fingerprint: encoding::b64(&row.relay_fp),
        role: row.role,
        member: row.member.to_b64(),
        display_name: row.display_name.clone(),
        session: row.session,
        joined_at: row.joined_at,
        default: false,
    }
}

/// Would `--mesh <name>` read `name` as a mesh id or id prefix (hex digits and dashes,
/// four or more)? Such names are refused: a name must never capture another mesh's id.
pub(crate) fn looks_like_an_id(name: &str) -> bool {
    let hex: String = name.chars().filter(|c| *c != '-').collect();
    hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Every joined mesh, the default one marked.
pub(crate) fn list(d: &Daemon) -> Vec<MeshInfo> {
    let default = d.default_mesh();
    d.meshes()
        .iter()
        .map(|x| MeshInfo {
            default: Some(x.id) == default,
            ..mesh_info(&lock(&x.row))
        })
        .collect()
}

/// `mesh_use`: remember the mesh commands act in when none is named (or forget it).
pub(crate) async fn mesh_use(
    d: &Daemon,
    p: claudemesh_schema::ipc::methods::MeshUseParams,
) -> Result<Option<MeshInfo>, Error> {
    let m = match &p.mesh {
        Some(s) => Some(d.select(Some(s))?),
        None => None,
    };
    d.store
        .set_setting(
            crate::context::DEFAULT_MESH,
            m.as_ref().map(|m| m.id.to_string()),
        )
        .await?;
    *lock(&d.default_mesh) = m.as_ref().map(|m| m.id);
    Ok(m.map(|m| MeshInfo {
        default: true,
        ..mesh_info(&lock(&m.row))
    }))
}

/// `mesh_rename`: a joined mesh's local name (the mesh itself, and what others call it,
/// are unchanged).
pub(crate) async fn mesh_rename(
    d: &Daemon,
    p: claudemesh_schema::ipc::methods::MeshRenameParams,
) -> Result<MeshInfo, Error> {
    let m = d.select(Some(&p.mesh))?;
    let name = names::check("mesh name", &p.name)?;
    if looks_like_an_id(&name) {
        return Err(Error::invalid(format!(
            "{name:?} reads as a mesh id; pick a name with other characters"
        )));
    }
    if d.meshes().iter().any(|o| o.id != m.id && o.name() == name) {
        return Err(Error::conflict(format!(
            "another mesh here is already called {name:?}; pick another name"
        )));
    }
    d.store.rename_mesh(m.id, name.clone()).await?;
    lock(&m.row).name = name;
    d.bump_changes();
    Ok(mesh_info(&lock(&m.row)))
}

async fn send_raw(c: &mut Connection, f: &ClientFrame) -> Result<(), Error> {
    let b = wire::encode(f).map_err(|e| Error::internal(e.to_string()))?;
    c.writer
        .send(Bytes::from(b))
        .await
        .map_err(|e| Error::relay(format!("lost the relay connection: {e}")))
}

async fn recv_raw(c: &mut Connection, limit: Duration) -> Result<Option<RelayFrame>, Error> {
    match tokio::time::timeout(limit, c.reader.next()).await {
        Err(_) => Ok(None),
        Ok(None) => Err(Error::relay("the relay closed the connection")),
        Ok(Some(Err(e))) => Err(Error::relay(format!("relay connection failed: {e}"))),
        Ok(Some(Ok(b))) => wire::decode::<RelayFrame>(&b)
            .map(Some)
            .map_err(|e| Error::relay(format!("bad frame from relay: {e}"))),
    }
}

/// How often a roster change is signed again after another admin's change came first.
const ROSTER_RETRIES: usize = 4;

/// Send a roster change signed against the roster head held here. When the relay says
/// another change came first (`roster_changed`), the link has applied that change already
/// (frames arrive in order), so the change is signed again against the new head.
pub(crate) async fn change_roster(
    m: &MeshCtx,
    build: impl Fn(&RosterHead) -> RequestBuilder,
) -> Result<(), RelayRefusal> {
    let mut tries = 0;
    loop {
        let head = lock(&m.roster).roster.head();
        match m.link.request(build(&head)).await {
            Err(r) if r.code == Some(ErrorCode::RosterChanged) && tries < ROSTER_RETRIES => {
                tries += 1;
                tracing::debug!(error = %r.message, "roster changed meanwhile; signing again");
            }
            other => return other,
        }
    }
}

fn refusal(r: RelayRefusal) -> Error {
    match r.code {
        None => Error::relay(r.message),
        Some(ErrorCode::NotAuthorized) => Error::forbidden(r.message),
        Some(ErrorCode::RosterChanged) => Error::conflict(format!(
            "the roster kept changing while this change was made ({}); try again",
            r.message
        )),
        Some(code) => Error::relay(format!("relay refused ({code}): {}", r.message)),
    }
}

/// `create`: a new mesh with us as owner, registered at the relay.
pub(crate) async fn create(d: &Arc<Daemon>, p: CreateParams) -> Result<MeshInfo, Error> {
    let _g = d.membership.lock().await;
    let name = names::check("mesh name", &p.name)?;
    if d.meshes().iter().any(|m| m.name() == name) {
        return Err(Error::conflict(format!(
            "you already have a mesh called {name:?}; pick another name"
        )));
    }
    let display = display_name(d, p.display_name.as_deref())?;
    // `addr` is recorded in the mesh (and its invites); `dial` is where to reach it from here.
    let (addr, pin, dial) = match (&p.relay, &d.relay) {
        (Some(a), _) => {
            let pin = match &p.fingerprint {
                Some(f) => Some(encoding::unb64_array::<32>(f.trim()).ok_or_else(|| {
                    Error::invalid("the fingerprint must be 43 characters of base64url (as printed by `claudemesh-relay fingerprint`)")
                })?),
                None => None,
            };
            (a.clone(), pin, a.clone())
        }
        (None, Some(r)) => (r.public.clone(), Some(r.fingerprint), r.dial()),
        (None, None) => {
            return Err(Error::not_found(
                "no relay configured: run `claudemesh up` to start a local one, or pass --relay <host:port>",
            ));
        }
    };
    let mut conn = claudemesh_relay::connect(&dial, pin, &connect_opts(d))
        .await
        .map_err(|e| Error::relay(format!("cannot reach the relay at {dial}: {e}")))?;
    let fp = conn.fingerprint;
    if pin.is_none() && !p.trust_first_use {
        // Never pin a certificate silently: whoever sits between us and the relay would
        // be pinned instead.
        return Err(Error::invalid(format!(
            "the relay at {addr} presents the certificate fingerprint {}; compare it with `claudemesh-relay fingerprint` on the relay's machine, then pass --fingerprint {} (or --trust-first-use to pin it unchecked)",
            encoding::b64(&fp),
            encoding::b64(&fp)
        )));
    }
    let keys = MeshKeys::generate(MemberSecret::generate(), MeshKey::generate());
    let mesh = MeshId::new();
    let now = now_ms();
    let genesis = MeshGenesis::sign(&keys.member, mesh, now);
    send_raw(
        &mut conn,
        &ClientFrame::CreateMesh {
            rid: 1,
            genesis: genesis.clone(),
            token: p.token.clone(),
        },
    )
    .await?;
    loop {
        match recv_raw(&mut conn, Duration::from_secs(10)).await? {
            Some(RelayFrame::Ok { rid: 1 }) => break,
            Some(RelayFrame::Error { code, message, .. }) => {
                let m =
                    format!("the relay at {addr} refused to create the mesh ({code}): {message}");
                // Its admission policy: not allowed, not worth retrying as is.
                return Err(if code == ErrorCode::CreationRefused {
                    Error::forbidden(m)
                } else {
                    Error::relay(m)
                });
            }
            Some(_) => continue,
            None => return Err(Error::relay("the relay did not answer the mesh creation")),
        }
    }
    conn.close().await;
    keys.save(&d.paths.keys(), &mesh)
        .map_err(|e| Error::internal(e.to_string()))?;
    let row = MeshRow {
        id: mesh,
        name,
        relay: addr,
        relay_fp: fp,
        member: keys.member.public(),
        session: keys.session,
        role: Role::Owner,
        display_name: display,
        groups: Vec::new(),
        summary: String::new(),
        status: PeerStatus::Idle,
        genesis,
        joined_at: now,
    };
    if let Err(e) = d.store.insert_mesh(row.clone()).await {
        let _ = MeshKeys::remove(&d.paths.keys(), &mesh);
        return Err(Error::internal(format!("cannot record the mesh: {e}")));
    }
    let info = mesh_info(&row);
    d.add_mesh(
        row,
        keys,
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Default::default(),
    );
    tracing::info!(mesh = %mesh.short(), "mesh created");
    Ok(info)
}

fn invite_info(
    m: &MeshCtx,
    cap: &InviteCap,
    uses: u32,
    revoked: bool,
    with_link: bool,
) -> InviteInfo {
    let link = with_link.then(|| {
        let row = lock(&m.row);
        InviteLink {
            relay: row.relay.clone(),
            fingerprint: row.relay_fp,
            invite: cap.id,
            secret: invite::invite_secret(&m.keys.mesh_key, &cap.id),
            genesis: Some(invite::genesis_hash(&row.genesis)),
        }
        .to_link()
    });
    InviteInfo {
        invite: link,
        id: cap.id,
        mesh: cap.mesh,
        mesh_name: m.name(),
        role: cap.role,
        max_uses: cap.max_uses,
        uses,
        expires_at: cap.expires_at,
        approve: cap.approve,
        revoked,
    }
}

/// `invite`: mint an invite, register its capability at the relay, return the link.
pub(crate) async fn invite(d: &Arc<Daemon>, p: InviteParams) -> Result<InviteInfo, Error> {
    let m = d.select(p.mesh.as_deref())?;
    if !m.role().is_admin() {
        return Err(Error::forbidden(format!(
            "only admins can invite to {}; ask an admin",
            m.name()
        )));
    }
    if p.uses == 0 {
        return Err(Error::invalid("--uses must be at least 1"));
    }
    if !(60..=365 * 24 * 3600).contains(&p.expires_secs) {
        return Err(Error::invalid(
            "--expires must be between 1 minute and 365 days",
        ));
    }
    if p.role == Role::Owner {
        return Err(Error::invalid(
            "an invite can grant member or admin, not owner",
        ));
    }
    let now = now_ms();
    let cap = InviteCap::sign(
        &m.keys.member,
        InviteId::new(),
        m.id,
        p.role,
        p.uses,
        now + p.expires_secs as i64 * 1000,
        p.approve,
        now,
    );
    let c2 = cap.clone();
    m.link
        .request(Box::new(move |rid| ClientFrame::InvitePublish {
            rid,
            cap: c2,
        }))
        .await
        .map_err(refusal)?;
    d.store.insert_invite(&cap, now).await?;
    tracing::info!(mesh = %m.id.short(), invite = %cap.id.short(), "invite minted");
    Ok(invite_info(&m, &cap, 0, false, true))
}

/// `invite_list`: invites minted on this machine.
pub(crate) async fn invite_list(d: &Arc<Daemon>, p: MeshParams) -> Result<Vec<InviteInfo>, Error> {
    let only = match &p.mesh {
        Some(s) => Some(d.select(Some(s))?.id),
        None => None,
    };
    let rows = d.store.read(store::q_invites).await?;
    Ok(rows
        .into_iter()
        .filter(|(cap, _, _)| only.is_none_or(|o| o == cap.mesh))
        .filter_map(|(cap, uses, revoked)| {
            d.mesh(&cap.mesh)
                .map(|m| invite_info(&m, &cap, uses, revoked, !revoked))
        })
        .collect())
}

/// `invite_revoke`.
pub(crate) async fn invite_revoke(
    d: &Arc<Daemon>,
    p: InviteRevokeParams,
) -> Result<InviteInfo, Error> {
    let want = p.id.trim().to_lowercase().replace('-', "");
    if want.len() < 4 {
        return Err(Error::invalid(
            "give at least 4 characters of the invite id",
        ));
    }
    let rows = d.store.read(store::q_invites).await?;
    let hits: Vec<_> = rows
        .into_iter()
        .filter(|(c, _, _)| c.id.0.simple().to_string().starts_with(&want))
        .collect();
    let (cap, uses, _) = match hits.len() {
        0 => {
            return Err(Error::not_found(format!(
                "no invite {:?}; `claudemesh invite list` shows them",
                p.id
            )));
        }
        1 => hits
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("invite vanished"))?,
        _ => {
            return Err(Error::ambiguous(
                "several invites match; give more of the id",
            ));
        }
    };
    let m = d
        .mesh(&cap.mesh)
        .ok_or_else(|| Error::not_found("the invite's mesh is no longer joined"))?;
    let rev = InviteRevocation::sign(&m.keys.member, cap.id, m.id, now_ms());
    m.link
        .request(Box::new(move |rid| ClientFrame::InviteRevoke {
            rid,
            revocation: rev,
        }))
        .await
        .map_err(refusal)?;
    d.store.invite_revoked(cap.id).await?;
    Ok(invite_info(&m, &cap, uses, true, false))
}

/// A claim arrived at this admin's link: check the proof, then admit, refuse, or park it
/// for approval.
pub(crate) async fn on_claim(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    claim: ClaimId,
    request: ClaimRequest,
    cap: InviteCap,
    at: i64,
) {
    if cap.mesh != m.id || !m.role().is_admin() {
        return;
    }
    if let Err(reason) = check_claim(d, m, &request, &cap).await {
        tracing::warn!(claim = %claim.short(), %reason, "claim refused");
        let _ = m
            .link
            .request(Box::new(move |rid| ClientFrame::ClaimDecision {
                rid,
                decision: ClaimDecision::Refuse {
                    claim,
                    reason: reason.to_string(),
                },
            }))
            .await;
        return;
    }
    if cap.approve {
        let req = serde_json::to_string(&request).unwrap_or_default();
        let capj = serde_json::to_string(&cap).unwrap_or_default();
        if let Err(e) = d.store.insert_claim(claim, m.id, req, capj, at).await {
            tracing::error!(error = %e, "cannot record claim");
        }
        d.bump_changes();
        tracing::info!(claim = %claim.short(), fingerprint = %request.member.fingerprint(),
            name = claimant_name(m, &request).as_deref().unwrap_or("?"),
            "claim waits for approval: `claudemesh invite approve {}`", claim.short());
        return;
    }
    if let Err(e) = accept(d, m, claim, &request, &cap).await {
        tracing::debug!(claim = %claim.short(), error = %e, "claim not accepted here");
    }
}

/// Check a claim without trusting the relay: the proof (made with the invite secret, which
/// the relay does not know), its freshness, and the capability's signature, expiry and
/// (as far as this daemon knows) revocation. The relay supplies the capability, so its
/// signature by an admin is what makes its role and approval mode trustworthy.
async fn check_claim(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    request: &ClaimRequest,
    cap: &InviteCap,
) -> Result<(), invite::ClaimRefusal> {
    let local = d.store.read(store::q_invites).await.unwrap_or_default();
    let revoked = local
        .iter()
        .any(|(c, _, revoked)| c.id == cap.id && *revoked);
    let roster = lock(&m.roster);
    invite::check_claim(
        &m.keys.mesh_key,
        &roster.roster,
        &roster.history,
        request,
        cap,
        revoked,
        now_ms(),
    )
}

async fn accept(
    d: &Arc<Daemon>,
    m: &Arc<MeshCtx>,
    claim: ClaimId,
    request: &ClaimRequest,
    cap: &InviteCap,
) -> Result<(), Error> {
    let secret = invite::invite_secret(&m.keys.mesh_key, &request.invite);
    let genesis_hash = invite::genesis_hash(&lock(&m.row).genesis);
    let js = JoinSecret {
        mesh: m.id,
        mesh_key: *m.keys.mesh_key.as_bytes(),
        name: m.name(),
        admitted_by: lock(&m.row).display_name.clone(),
        genesis: Some(genesis_hash),
        epochs: m
            .keyring()
            .iter()
            .filter(|(e, _)| *e > 0)
            .map(|(epoch, k)| invite::JoinEpoch {
                epoch,
                key: *k.as_bytes(),
            })
            .collect(),
    };
    let mut json = serde_json::to_vec(&js).map_err(|e| Error::internal(e.to_string()))?;
    let sealed = crypto::anon_seal(&request.box_key, &json);
    json.zeroize();
    let sealed = sealed.map_err(|e| Error::internal(e.to_string()))?;
    let genesis = lock(&m.row).genesis.commitment();
    let (member, role, invite) = (request.member, cap.role, cap.id);
    change_roster(m, |head| {
        let entry = RosterEntry::sign(
            &m.keys.member,
            head,
            m.id,
            member,
            role,
            RosterOp::Add,
            now_ms(),
            Some(invite),
        );
        let mac = invite::accept_mac(&secret, &claim, &sealed, &entry.commitment(), &genesis);
        let sealed = sealed.clone();
        Box::new(move |rid| ClientFrame::ClaimDecision {
            rid,
            decision: ClaimDecision::Accept {
                claim,
                entry,
                sealed,
                mac,
            },
        })
    })
    .await
    .map_err(refusal)?;
    let _ = d.store.invite_used(cap.id).await;
    tracing::info!(claim = %claim.short(), member = %request.member.short(), "claimant admitted");
    Ok(())
}

/// `claims`: claims waiting for approval here.
pub(crate) async fn claims(d: &Arc<Daemon>) -> Result<Vec<PendingClaim>, Error> {
    let rows = d.store.read(store::q_claims).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, mesh, req, _cap, at)| {
            let req: ClaimRequest = serde_json::from_str(&req).ok()?;
            let m = d.mesh(&mesh);
            Some(PendingClaim {
                claim: id.to_string(),
                mesh,
                mesh_name: m.as_ref().map(|m| m.name()).unwrap_or_default(),
                invite: req.invite,
                fingerprint: req.member.fingerprint(),
                name: m.and_then(|m| claimant_name(&m, &req)),
                at,
            })
        })
        .collect())
}

/// `claim_decide`: approve or deny a parked claim.
pub(crate) async fn claim_decide(
    d: &Arc<Daemon>,
    p: ClaimDecideParams,
) -> Result<PendingClaim, Error> {
    let want = p.claim.trim().to_lowercase().replace('-', "");
    let rows = d.store.read(store::q_claims).await?;
    let hits: Vec<_> = rows
        .into_iter()
        .filter(|(id, ..)| want.len() >= 4 && id.0.simple().to_string().starts_with(&want))
        .collect();
    let (id, mesh, req, cap, at) = match hits.len() {
        0 => {
            return Err(Error::not_found(format!(
                "no pending claim {:?}; `claudemesh invite pending` lists them",
                p.claim
            )));
        }
        1 => hits
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("claim vanished"))?,
        _ => {
            return Err(Error::ambiguous(
                "several claims match; give more of the id",
            ));
        }
    };
    let request: ClaimRequest =
        serde_json::from_str(&req).map_err(|_| Error::internal("stored claim is corrupt"))?;
    let cap: InviteCap =
        serde_json::from_str(&cap).map_err(|_| Error::internal("stored claim is corrupt"))?;
    let m = d
        .mesh(&mesh)
        .ok_or_else(|| Error::not_found("the claim's mesh is no longer joined"))?;
    let result = if p.accept {
        match check_claim(d, &m, &request, &cap).await {
            Ok(()) => accept(d, &m, id, &request, &cap).await,
            Err(reason) => Err(Error::invite(reason.to_string())),
        }
    } else {
        m.link
            .request(Box::new(move |rid| ClientFrame::ClaimDecision {
                rid,
                decision: ClaimDecision::Refuse {
                    claim: id,
                    reason: "an admin denied the request".into(),
                },
            }))
            .await
            .map_err(refusal)
    };
    let _ = d.store.delete_claim(id).await;
    result.map_err(|e| {
        if e.to_string().contains("already decided") {
            Error::not_found(
                "the claimant is no longer waiting; ask them to run `claudemesh join` again",
            )
        } else {
            e
        }
    })?;
    Ok(PendingClaim {
        claim: id.to_string(),
        mesh,
        mesh_name: m.name(),
        invite: request.invite,
        fingerprint: request.member.fingerprint(),
        name: claimant_name(&m, &request),
        at,
    })
}

/// The name a claimant gave in its sealed note, held to the name rules (it is someone
/// else's text); `None` when there is none or it does not open with the invite's secret.
fn claimant_name(m: &MeshCtx, request: &ClaimRequest) -> Option<String> {
    let secret = invite::invite_secret(&m.keys.mesh_key, &request.invite);
    let note = invite::open_claim_note(&secret, request)?;
    names::check("display name", &note.name).ok()
}

/// `mesh_set_relay`: move a mesh to another relay address (or certificate), as the owner
/// or an admin. The move is a signed `set_relay` op in the mesh's log (PROTOCOL §8b): every
/// member's daemon folds it (only an admin's, only a newer version than the one standing)
/// and dials the new address, so a relay, which cannot sign one, cannot move anyone.
pub(crate) async fn set_relay(d: &Arc<Daemon>, p: SetRelayParams) -> Result<SetRelayResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    if !m.role().is_admin() {
        return Err(Error::forbidden(format!(
            "only the owner or an admin can move {} to another relay; ask one of them",
            m.name()
        )));
    }
    let relay = p.relay.trim().to_string();
    if !invite::relay_addr_ok(&relay) {
        return Err(Error::invalid(format!(
            "{relay:?} is not a relay address: give host:port (for example relay.example.org:7900)"
        )));
    }
    let (previous, current_fp, genesis) = {
        let r = lock(&m.row);
        (r.relay.clone(), r.relay_fp, r.genesis.clone())
    };
    let fp = match &p.fingerprint {
        Some(f) => encoding::unb64_array::<32>(f.trim()).ok_or_else(|| {
            Error::invalid("the fingerprint must be 43 characters of base64url (as printed by `claudemesh-relay fingerprint`)")
        })?,
        None => current_fp,
    };
    let result = |m: &MeshCtx, changed, seq: Option<u64>| SetRelayResult {
        mesh: mesh_info(&lock(&m.row)),
        previous: previous.clone(),
        changed,
        sequenced: seq.is_some() || !changed,
        seq,
    };
    if relay == previous && fp == current_fp {
        return Ok(result(&m, false, None));
    }
    if p.check {
        probe_relay(d, &m, &relay, fp, fp != current_fp, &genesis).await?;
    }
    // Members learn the new address through the relay they use now.
    if !m.link.connected() {
        return Err(Error::relay(format!(
            "the link to {previous} is down, and members learn the new address through it; \
             try again once `claudemesh status` shows {} connected",
            m.name()
        )));
    }
    let mesh = m.id;
    let newest = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM mesh_relay WHERE mesh = ?1",
                rusqlite::params![mesh.as_bytes()],
                |r| r.get::<_, i64>(0),
            )?)
        })
        .await?;
    let version = newest.max(0) as u64 + 1;
    let w = crate::shared::oplog::write(
        d,
        &m,
        None,
        claudemesh_schema::op::Op::SetRelay {
            relay: relay.clone(),
            fingerprint: fp,
            version,
        },
        Some(10_000),
    )
    .await?;
    if w.seq.is_none() {
        return Ok(result(&m, true, None));
    }
    let standing = d
        .store
        .read(move |c| {
            Ok(c.query_row(
                "SELECT version, relay FROM mesh_relay WHERE mesh = ?1",
                rusqlite::params![mesh.as_bytes()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .ok())
        })
        .await?;
    match standing {
        Some((v, _)) if v == version as i64 => {
            tracing::info!(mesh = %m.id.short(), from = %previous, to = %relay, "moved the mesh to another relay address");
            Ok(result(&m, true, w.seq))
        }
        Some((_, other)) => Err(Error::conflict(format!(
            "another admin moved {} meanwhile (to {other}); check `claudemesh list` and try again",
            m.name()
        ))),
        None => Err(Error::forbidden(format!(
            "the mesh's log did not take the move (this member is not an admin there); nothing changed for {}",
            m.name()
        ))),
    }
}

/// Check, before anyone is sent there, that `addr` is a relay with certificate `fp` and,
/// for another certificate than the mesh's (another relay), that it hosts this mesh. With
/// the same certificate it is the relay already in use: a hello there would replace this
/// daemon's own link, so the certificate alone is checked.
async fn probe_relay(
    d: &Arc<Daemon>,
    m: &MeshCtx,
    addr: &str,
    fp: [u8; 32],
    hello: bool,
    genesis: &MeshGenesis,
) -> Result<(), Error> {
    let dial = crate::context::LocalRelay::route(d.relay.as_ref(), addr, &fp);
    let mut conn = claudemesh_relay::connect(&dial, Some(fp), &connect_opts(d))
        .await
        .map_err(|e| match e {
            claudemesh_relay::ConnectError::FingerprintMismatch { got, .. } => Error::invalid(format!(
                "the relay at {addr} presents the certificate fingerprint {got}, not {}; if it is \
                 the mesh's relay with a new certificate, compare it with `claudemesh-relay \
                 fingerprint` on the relay's machine and pass --fingerprint {got}; nothing changed",
                encoding::b64(&fp)
            )),
            e => Error::relay(format!(
                "cannot reach the relay at {addr} ({e}); members could not either, so nothing changed"
            )),
        })?;
    if hello {
        let h = wire::Hello::sign(
            &m.keys.member,
            m.id,
            m.keys.session,
            m.keys.session_secret.public(),
            now_ms(),
            // The link's client name (this module sits below `link`, so it is spelled here).
            concat!("claudemesh/", env!("CARGO_PKG_VERSION")),
        );
        send_raw(&mut conn, &ClientFrame::Hello(h)).await?;
        let answer = recv_raw(&mut conn, Duration::from_secs(10)).await;
        conn.close().await;
        match answer? {
            Some(RelayFrame::Welcome(w)) if w.genesis == *genesis => {}
            Some(RelayFrame::Welcome(_)) => {
                return Err(Error::invalid(format!(
                    "the relay at {addr} holds another mesh under this id; nothing changed"
                )));
            }
            Some(RelayFrame::Error { code, message, .. }) => {
                return Err(Error::invalid(format!(
                    "the relay at {addr} does not host {} ({code}: {message}): members moved there \
                     could not connect; nothing changed",
                    m.name()
                )));
            }
            _ => {
                return Err(Error::relay(format!(
                    "the relay at {addr} did not answer a hello; nothing changed"
                )));
            }
        }
    } else {
        conn.close().await;
    }
    Ok(())
}

/// `leave`: tell the relay (unless we own the mesh), then forget the mesh and its keys.
pub(crate) async fn leave(d: &Arc<Daemon>, p: LeaveParams) -> Result<MeshInfo, Error> {
    let m = d.select(p.mesh.as_deref())?;
    let info = mesh_info(&lock(&m.row));
    let role = m.role();
    // The last admin leaving strands the mesh: no one could invite, admit, remove or
    // rotate its key again.
    let me = m.member();
    let other_admin = lock(&m.roster)
        .roster
        .members()
        .any(|(k, r)| *k != me && r.is_admin());
    if role.is_admin() && !other_admin && !p.force {
        return Err(Error::forbidden(format!(
            "you are the only {} of {} with admin rights: once you leave, no one can invite, \
             admit or remove members. Make someone an admin first (`claudemesh member role \
             <name> admin --mesh {}`), or pass --force to leave anyway",
            role.as_str(),
            m.name(),
            m.name()
        )));
    }
    if p.check {
        return Ok(info);
    }
    if role != Role::Owner {
        let me = m.member();
        let left = change_roster(&m, |head| {
            let e = RosterEntry::sign(
                &m.keys.member,
                head,
                m.id,
                me,
                role,
                RosterOp::Remove,
                now_ms(),
                None,
            );
            Box::new(move |rid| ClientFrame::Roster { rid, entry: e })
        })
        .await;
        if let Err(r) = left {
            tracing::warn!(error = %r.message, "leaving without telling the relay");
        }
    }
    d.remove_mesh(&m.id);
    d.store.delete_mesh(m.id).await?;
    MeshKeys::remove(&d.paths.keys(), &m.id).map_err(|e| Error::internal(e.to_string()))?;
    crate::vault::forget(&d.paths, &m.id);
    Ok(info)
}

/// `member_remove` (no role) and `member_role`: a roster entry signed by us, an admin.
pub(crate) async fn member_change(
    d: &Arc<Daemon>,
    p: MemberParams,
    role: Option<Role>,
) -> Result<MemberResult, Error> {
    let m = d.select(p.mesh.as_deref())?;
    if !m.role().is_admin() {
        return Err(Error::forbidden(format!(
            "only the owner or an admin of {} can change its members (you are a {})",
            m.name(),
            m.role().as_str()
        )));
    }
    if role == Some(Role::Owner) {
        return Err(Error::invalid("the role is admin or member"));
    }
    let peer = crate::grants::resolve_member(d, &m, &p.peer).await?;
    if lock(&m.roster).roster.owner() == peer.key {
        return Err(Error::forbidden(
            "the owner of a mesh cannot be removed or given another role",
        ));
    }
    let (op, new_role) = match role {
        Some(r) => (RosterOp::Add, r),
        None => (RosterOp::Remove, Role::Member),
    };
    let key = peer.key;
    change_roster(&m, |head| {
        let e = RosterEntry::sign(
            &m.keys.member,
            head,
            m.id,
            key,
            new_role,
            op,
            now_ms(),
            None,
        );
        Box::new(move |rid| ClientFrame::Roster { rid, entry: e })
    })
    .await
    .map_err(refusal)?;
    tracing::info!(mesh = %m.id.short(), member = %key.short(), ?role, "roster changed");
    Ok(MemberResult {
        mesh: m.id,
        mesh_name: m.name(),
        fingerprint: key.fingerprint(),
        names: peer.names,
        role,
    })
}

/// `whoami`.
pub(crate) fn whoami(d: &Daemon) -> WhoamiResult {
    WhoamiResult {
        display_name: default_display_name(&d.cfg),
        identities: d
            .meshes()
            .iter()
            .map(|m| {
                let role = m.role();
                let row = lock(&m.row);
                Identity {
                    mesh: m.id,
                    mesh_name: row.name.clone(),
                    display_name: row.display_name.clone(),
                    member_id: row.member.to_b64(),
                    fingerprint: row.member.fingerprint(),
                    role,
                    session: row.session,
                }
            })
            .collect(),
    }
}

/// `profile`: change (and republish) our profile in one or all meshes.
pub(crate) async fn profile(d: &Arc<Daemon>, p: ProfileParams) -> Result<ProfileResult, Error> {
    let targets = match &p.mesh {
        Some(s) => vec![d.select(Some(s))?],
        None => d.meshes(),
    };
    let name = match &p.name {
        Some(n) => Some(names::check("display name", n)?),
        None => None,
    };
    let groups = match &p.groups {
        Some(g) => {
            let mut out = Vec::new();
            for x in g {
                let x = x.trim().trim_start_matches('@');
                if x.is_empty() {
                    continue;
                }
                out.push(names::check_group(x)?);
            }
            Some(out)
        }
        None => None,
    };
    let changed = name.is_some() || groups.is_some() || p.summary.is_some() || p.status.is_some();
    let mut out = Vec::new();
    for m in targets {
        if changed {
            d.store
                .update_profile(
                    m.id,
                    name.clone(),
                    groups.clone(),
                    p.summary.clone(),
                    p.status,
                )
                .await?;
            {
                let mut row = lock(&m.row);
                if let Some(n) = &name {
                    row.display_name = n.clone();
                }
                if let Some(g) = &groups {
                    row.groups = g.clone();
                }
                if let Some(s) = &p.summary {
                    row.summary = s.clone();
                }
                if let Some(s) = p.status {
                    row.status = s;
                }
            }
            let _ = m.link.tx.try_send(LinkCmd::Publish(None));
        }
        let row = lock(&m.row);
        out.push(MeshProfile {
            mesh: m.id,
            mesh_name: row.name.clone(),
            name: row.display_name.clone(),
            groups: row.groups.clone(),
            summary: row.summary.clone(),
            status: row.status,
        });
    }
    Ok(ProfileResult { profiles: out })
}

/// `verify`: the safety number with every other member (or the one named), with the names
/// their sessions go by.
pub(crate) async fn verify(
    d: &Arc<Daemon>,
    p: claudemesh_schema::ipc::trust::VerifyParams,
) -> Result<claudemesh_schema::ipc::trust::VerifyResult, Error> {
    use claudemesh_schema::ipc::trust::{SafetyNumber, VerifyResult};
    let m = d.select(p.mesh.as_deref())?;
    let (me, mesh) = (m.member(), m.id);
    let mut pins = d.store.read(move |c| store::q_pins(c, mesh)).await?;
    let chosen: Vec<_> = crate::grants::peers(d, &m)
        .await?
        .into_iter()
        .filter(|x| p.peer.as_deref().is_none_or(|q| x.selected_by(q)))
        .collect();
    if p.confirm {
        let [one] = chosen.as_slice() else {
            return Err(Error::invalid(match p.peer {
                None => "name the peer to confirm (its fingerprint, as `verify` shows it)".into(),
                Some(q) => format!(
                    "{q:?} matches {} members; confirm one by its fingerprint",
                    chosen.len()
                ),
            }));
        };
        d.store.confirm_member(mesh, one.key).await?;
        for s in lock(&m.senders).values_mut() {
            if s.member == one.key {
                s.confirmed = true;
            }
        }
        pins = d.store.read(move |c| store::q_pins(c, mesh)).await?;
    }
    let mut out: Vec<SafetyNumber> = chosen
        .into_iter()
        .map(|x| SafetyNumber {
            member: x.key.to_b64(),
            fingerprint: x.key.fingerprint(),
            safety_number: crypto::safety_number(&mesh, &me, &x.key),
            confirmed: pins.is_confirmed(&x.key),
            names: x.names,
        })
        .collect();
    if out.is_empty()
        && let Some(q) = &p.peer
    {
        return Err(Error::not_found(format!(
            "no member of {} matches {q:?}; `claudemesh verify` lists them all",
            m.name()
        )));
    }
    out.sort_by(|a, b| a.names.cmp(&b.names).then_with(|| a.member.cmp(&b.member)));
    Ok(VerifyResult {
        mesh,
        fingerprint: me.fingerprint(),
        members: out,
    })
}
