//! Joining a mesh through an invite, as a claimant: the claim waits at the relay until an
//! admin's daemon answers it, however long that takes (up to the relay's claim TTL).
//!
//! `join` first writes the claim to `joins/<invite id>.json` (mode 0600: it holds the new
//! member key and the link with its secret), then a task per pending join claims at the
//! invite's relay and waits on the connection. When the relay ends the wait, the relay
//! restarts, or this daemon restarts ([`resume`]), the task sends the *same* request again:
//! the relay finds the claim it keeps (and its answer, once an admin gave one), so a
//! claim is made once and spends at most one use. The answer is checked as it always was
//! (the MAC with the invite secret, the entry, the sealed key, [`invite::check_admission`]);
//! only then is the mesh stored and the file removed.

use bytes::Bytes;
use claudemesh_relay::{ConnectOptions, Connection};
use claudemesh_schema::crypto::{self, BoxSecret, MemberSecret, MeshKey};
use claudemesh_schema::invite::{self, ClaimNote, InviteLink, JoinSecret};
use claudemesh_schema::ipc::methods::{JoinParams, JoinResult, MeshInfo, PendingJoin};
use claudemesh_schema::message::PeerStatus;
use claudemesh_schema::roster::{MeshGenesis, RosterEntry, RosterOp};
use claudemesh_schema::wire::{
    self, ClaimOutcome, ClaimRequest, ClientFrame, ErrorCode, RelayFrame,
};
use claudemesh_schema::{ClaimId, InviteId, encoding, names, now_ms};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zeroize::Zeroize as _;

use crate::context::{Daemon, Pending, Stage};
use crate::error::Error;
use crate::keys::MeshKeys;
use crate::mesh::lock;
use crate::store::{self, MeshRow};

/// How long a plain `join` waits for the relay's first answer before it says "pending".
const FIRST_ANSWER: Duration = Duration::from_secs(15);
/// How long a plain `join` waits for an admin that is online to admit it.
const ADMIT_NOW: Duration = Duration::from_secs(10);
/// A connection on which nothing arrives for this long is given up and made again (the
/// relay ends a claimant's wait after `claim_wait_secs`, 300 s by default).
const SILENCE: Duration = Duration::from_secs(900);
const INITIAL_BACKOFF_MS: u64 = 250;

/// What the claim task needs and `joins/<invite>.json` keeps.
struct Claim {
    link: InviteLink,
    member: MemberSecret,
    bx: BoxSecret,
    request: ClaimRequest,
    display: String,
}

/// The file of a pending join. It holds secrets (the link's, the new keys): mode 0600,
/// written atomically, zeroed from memory when dropped.
#[derive(Serialize, Deserialize)]
struct JoinFile {
    version: u32,
    link: String,
    member_secret: String,
    box_secret: String,
    display_name: String,
    at: i64,
    #[serde(default)]
    note: String,
    since: i64,
    /// Why the join was refused for good; the file stays (for `status`) until the next
    /// `join` of the invite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

impl Drop for JoinFile {
    fn drop(&mut self) {
        self.link.zeroize();
        self.member_secret.zeroize();
        self.box_secret.zeroize();
    }
}

fn file_of(d: &Daemon, invite: &InviteId) -> PathBuf {
    d.paths.joins().join(format!("{invite}.json"))
}

fn write_file(path: &Path, c: &Claim, since: i64, refused: Option<String>) -> Result<(), Error> {
    let f = JoinFile {
        version: 1,
        link: c.link.to_link(),
        member_secret: encoding::b64(&c.member.to_bytes()[..]),
        box_secret: encoding::b64(&c.bx.to_bytes()[..]),
        display_name: c.display.clone(),
        at: c.request.at,
        note: encoding::b64(&c.request.note),
        since,
        refused,
    };
    let mut json = serde_json::to_vec_pretty(&f).map_err(Error::internal)?;
    let dir = path.parent().unwrap_or(path);
    let r = crate::paths::ensure_private_dir(dir)
        .and_then(|()| crate::paths::write_atomic(path, &json))
        .map_err(|e| Error::internal(format!("cannot record the join in {}: {e}", path.display())));
    json.zeroize();
    r
}

fn read_file(path: &Path) -> Result<(Claim, i64, Option<String>), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "it has mode {:o}; it must be 0600 (run: chmod 600 {})",
                mode & 0o777,
                path.display()
            ));
        }
    }
    let mut text = std::fs::read(path).map_err(|e| e.to_string())?;
    let parsed: Result<JoinFile, _> = serde_json::from_slice(&text);
    text.zeroize();
    let f = parsed.map_err(|_| "not valid JSON".to_string())?;
    let link = InviteLink::parse(&f.link).map_err(|e| e.to_string())?;
    let member = encoding::unb64_array::<32>(&f.member_secret).ok_or("bad member key")?;
    let bx = encoding::unb64_array::<32>(&f.box_secret).ok_or("bad box key")?;
    let note = encoding::unb64(&f.note).map_err(|_| "bad note")?;
    let (member, bx) = (MemberSecret::from_bytes(&member), BoxSecret::from_bytes(bx));
    let request = request(&link, &member, &bx, f.at, note);
    Ok((
        Claim {
            link,
            member,
            bx,
            request,
            display: f.display_name.clone(),
        },
        f.since,
        f.refused.clone(),
    ))
}

/// The claim, the same every time it is sent (the relay finds its claim by it).
fn request(
    link: &InviteLink,
    member: &MemberSecret,
    bx: &BoxSecret,
    at: i64,
    note: Vec<u8>,
) -> ClaimRequest {
    ClaimRequest {
        invite: link.invite,
        member: member.public(),
        box_key: bx.public(),
        at,
        proof: invite::claim_proof(
            &link.secret,
            &link.invite,
            &member.public(),
            &bx.public(),
            at,
        ),
        note,
        durable: true,
    }
}

fn connect_opts(d: &Daemon) -> ConnectOptions {
    ConnectOptions {
        quic: d.cfg.link.quic,
        websocket: d.cfg.link.websocket,
        quic_timeout: Duration::from_millis(d.cfg.link.quic_timeout_ms),
        ws_timeout: Duration::from_millis(d.cfg.link.ws_timeout_ms),
    }
}

/// The joined mesh an invite link is for, if this daemon is in it already: the link names
/// the mesh's genesis hash (links made before it existed do not), and a roster entry held
/// here names the invite when anyone (us included) was admitted through it before.
async fn joined_already(d: &Arc<Daemon>, link: &InviteLink) -> Result<Option<String>, Error> {
    for m in d.meshes() {
        let g = invite::genesis_hash(&lock(&m.row).genesis);
        if link.genesis.is_some_and(|l| crypto::ct_eq(&l, &g)) {
            return Ok(Some(m.name()));
        }
        let id = m.id;
        let entries = d.store.read(move |c| store::q_roster(c, id)).await?;
        if entries.iter().any(|(_, e)| e.invite == Some(link.invite)) {
            return Ok(Some(m.name()));
        }
    }
    Ok(None)
}

/// `join`: claim an invite (or find the join of it already pending) and wait as asked.
pub(crate) async fn join(d: &Arc<Daemon>, p: JoinParams) -> Result<JoinResult, Error> {
    let link = InviteLink::parse(&p.invite).map_err(|e| Error::invalid(e.to_string()))?;
    // Before claiming: a claim admits a fresh key, so joining a mesh we are in would add a
    // second member (a ghost with no session) and spend one of the invite's uses.
    if let Some(name) = joined_already(d, &link).await? {
        return Err(Error::conflict(format!(
            "you are already in {name} (this invite is for it); nothing was claimed and the \
             invite's uses are untouched"
        )));
    }
    let pending = {
        let _g = d.membership.lock().await;
        let known = lock(&d.joins).get(&link.invite).cloned();
        match known {
            // Joining again while the join is pending waits on that claim: no second key.
            Some(pj) if !matches!(*pj.stage.borrow(), Stage::Refused(_)) => pj,
            _ => start(d, link, p.display_name.as_deref())?,
        }
    };
    let mut rx = pending.stage.subscribe();
    let deadline = |t: Duration| tokio::time::Instant::now() + t;
    match p.wait_secs {
        None => {
            let first = deadline(FIRST_ANSWER);
            until(d, &mut rx, first, |s| {
                !matches!(s, Stage::Connecting { error: None })
            })
            .await;
            let admits_now = matches!(
                *rx.borrow(),
                Stage::Waiting {
                    admins_online: 1..,
                    approve: false,
                    ..
                }
            );
            if admits_now {
                until(d, &mut rx, deadline(ADMIT_NOW), Stage::settled).await;
            }
        }
        Some(n) => {
            let n = n.clamp(1, 3600);
            if !until(d, &mut rx, deadline(Duration::from_secs(n)), Stage::settled).await {
                return Err(Error::timeout(format!(
                    "no admin admitted you within {n} s; the join stays pending and finishes \
                     when an admin's daemon is online (`claudemesh status` shows it)"
                )));
            }
        }
    }
    let stage = rx.borrow().clone();
    match stage {
        Stage::Joined(info) => Ok(JoinResult {
            joined: Some(info),
            pending: None,
        }),
        Stage::Refused(why) => Err(Error::invite(why)),
        _ => Ok(JoinResult {
            joined: None,
            pending: Some(pending.info()),
        }),
    }
}

/// Wait until `done` holds for the stage (true), the deadline passes or the daemon stops.
async fn until(
    d: &Daemon,
    rx: &mut watch::Receiver<Stage>,
    deadline: tokio::time::Instant,
    done: impl Fn(&Stage) -> bool,
) -> bool {
    loop {
        if done(&rx.borrow_and_update()) {
            return true;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return done(&rx.borrow()) },
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = d.shutdown.cancelled() => return false,
        }
    }
}

/// A new pending join: fresh keys, the claim written to disk before the relay sees it.
fn start(d: &Arc<Daemon>, link: InviteLink, name: Option<&str>) -> Result<Arc<Pending>, Error> {
    let display = match name {
        Some(n) => names::check("display name", n)?,
        None => names::check("display name", &crate::config::default_display_name(&d.cfg))
            .unwrap_or_else(|_| "me".to_string()),
    };
    let member = MemberSecret::generate();
    let bx = BoxSecret::generate();
    let at = now_ms();
    let note = invite::seal_claim_note(
        &link.secret,
        &link.invite,
        &member.public(),
        &bx.public(),
        at,
        &ClaimNote {
            name: display.clone(),
        },
    );
    let request = request(&link, &member, &bx, at, note);
    let c = Claim {
        link,
        member,
        bx,
        request,
        display,
    };
    write_file(&file_of(d, &c.link.invite), &c, at, None)?;
    tracing::info!(invite = %c.link.invite.short(), fingerprint = %c.member.public().fingerprint(), "join pending");
    Ok(register(d, c, at, None))
}

fn register(d: &Arc<Daemon>, c: Claim, since: i64, refused: Option<String>) -> Arc<Pending> {
    let stage = match &refused {
        Some(why) => Stage::Refused(why.clone()),
        None => Stage::Connecting { error: None },
    };
    let pj = Arc::new(Pending {
        invite: c.link.invite,
        relay: c.link.relay.clone(),
        fingerprint: c.member.public().fingerprint(),
        name: c.display.clone(),
        since,
        stage: watch::Sender::new(stage),
    });
    lock(&d.joins).insert(c.link.invite, pj.clone());
    d.bump_changes();
    if refused.is_none() {
        d.spawn(claimer(d.clone(), pj.clone(), c));
    }
    pj
}

/// At start-up: pick up the joins still pending (or refused, for `status`).
pub(crate) fn resume(d: &Arc<Daemon>) {
    let dir = d.paths.joins();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match read_file(&path) {
            Ok((c, since, refused)) => {
                // Joined before a crash let us remove the file: nothing is pending.
                let joined = d.meshes().iter().any(|m| {
                    let g = invite::genesis_hash(&lock(&m.row).genesis);
                    c.link.genesis.is_some_and(|l| crypto::ct_eq(&l, &g))
                        || m.member() == c.member.public()
                });
                if joined {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                register(d, c, since, refused);
            }
            Err(why) => {
                tracing::error!(path = %path.display(), %why, "cannot read a pending join; it is left as it is");
            }
        }
    }
}

/// The pending joins, for `status`.
pub(crate) fn list(d: &Daemon) -> Vec<PendingJoin> {
    let mut v: Vec<PendingJoin> = lock(&d.joins).values().map(|p| p.info()).collect();
    v.sort_by_key(|p| p.since);
    v
}

/// An admin's answer to our claim, as the relay passed it on.
struct Answer {
    claim: ClaimId,
    genesis: MeshGenesis,
    entry: RosterEntry,
    sealed: Vec<u8>,
    mac: [u8; 32],
}

/// What one connection to the relay came to.
enum Try {
    /// An admin admitted us (not checked yet).
    Accepted(Box<Answer>),
    /// Refused for good.
    Refused(String),
    /// Connect again after `wait` (the backoff when `None`); `error` says what failed.
    Again {
        error: Option<String>,
        wait: Option<Duration>,
    },
}

/// The task of one pending join: claim, wait, come back, until admitted or refused.
async fn claimer(d: Arc<Daemon>, pj: Arc<Pending>, c: Claim) {
    let mut backoff = INITIAL_BACKOFF_MS;
    loop {
        if now_ms() - pj.since > invite::CLAIM_TTL_MAX_MS {
            refuse(
                &d,
                &pj,
                &c,
                "no admin answered the claim within 7 days; ask for a new invite".into(),
            );
            return;
        }
        let r = tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            r = attempt(&d, &pj, &c) => r,
        };
        let wait = match r {
            Try::Accepted(answer) => match admit(&d, &c, *answer).await {
                Ok(info) => {
                    let _ = std::fs::remove_file(file_of(&d, &c.link.invite));
                    lock(&d.joins).remove(&c.link.invite);
                    pj.set(&d, Stage::Joined(info));
                    return;
                }
                Err(Admit::Refused(why)) => {
                    refuse(&d, &pj, &c, why);
                    return;
                }
                // The relay keeps the answer until we say hello: fetch it again.
                Err(Admit::Failed(why)) => {
                    tracing::error!(%why, "admitted, but the mesh could not be stored; trying again");
                    pj.set(&d, Stage::Connecting { error: Some(why) });
                    None
                }
            },
            Try::Refused(why) => {
                refuse(&d, &pj, &c, why);
                return;
            }
            Try::Again { error, wait } => {
                if let Some(e) = error {
                    tracing::debug!(error = %e, "claim attempt failed; trying again");
                    pj.set(&d, Stage::Connecting { error: Some(e) });
                } else {
                    backoff = INITIAL_BACKOFF_MS;
                }
                wait
            }
        };
        let wait = wait.unwrap_or_else(|| {
            let w = jitter(backoff);
            backoff = (backoff * 2).min(d.cfg.link.max_backoff_ms.max(INITIAL_BACKOFF_MS));
            w
        });
        tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn jitter(ms: u64) -> Duration {
    let r = u32::from_le_bytes(crypto::random_bytes::<4>());
    let factor = 0.5 + (r as f64 / u32::MAX as f64);
    Duration::from_millis((ms as f64 * factor) as u64).max(Duration::from_millis(1))
}

/// Refused for good: say so in `status` (the file keeps the reason across restarts, and
/// the next `join` of the invite replaces it).
fn refuse(d: &Daemon, pj: &Pending, c: &Claim, why: String) {
    tracing::warn!(invite = %c.link.invite.short(), %why, "join refused");
    if let Err(e) = write_file(&file_of(d, &c.link.invite), c, pj.since, Some(why.clone())) {
        tracing::warn!(error = %e, "cannot record the refusal");
    }
    pj.set(d, Stage::Refused(why));
}

async fn send_raw(c: &mut Connection, f: &ClientFrame) -> Result<(), String> {
    let b = wire::encode(f).map_err(|e| e.to_string())?;
    c.writer
        .send(Bytes::from(b))
        .await
        .map_err(|e| format!("lost the relay connection: {e}"))
}

/// One connection: send the claim, then take what the relay says about it.
async fn attempt(d: &Daemon, pj: &Pending, c: &Claim) -> Try {
    let relay = &c.link.relay;
    let mut conn =
        match claudemesh_relay::connect(relay, Some(c.link.fingerprint), &connect_opts(d)).await {
            Ok(conn) => conn,
            Err(e) => {
                return Try::Again {
                    error: Some(format!(
                        "cannot reach the relay named in the invite ({relay}): {e}"
                    )),
                    wait: None,
                };
            }
        };
    if let Err(e) = send_raw(&mut conn, &ClientFrame::Claim(c.request.clone())).await {
        return Try::Again {
            error: Some(e),
            wait: None,
        };
    }
    loop {
        let f = match tokio::time::timeout(SILENCE, conn.reader.next()).await {
            Err(_) => {
                conn.close().await;
                return Try::Again {
                    error: None,
                    wait: None,
                };
            }
            Ok(None) => {
                return Try::Again {
                    error: Some(format!("the relay at {relay} closed the connection")),
                    wait: None,
                };
            }
            Ok(Some(Err(e))) => {
                return Try::Again {
                    error: Some(format!(
                        "the connection to the relay at {relay} failed: {e}"
                    )),
                    wait: None,
                };
            }
            Ok(Some(Ok(b))) => match wire::decode::<RelayFrame>(&b) {
                Ok(f) => f,
                Err(e) => {
                    return Try::Again {
                        error: Some(format!("bad frame from the relay at {relay}: {e}")),
                        wait: None,
                    };
                }
            },
        };
        match f {
            RelayFrame::ClaimWaiting {
                claim,
                admins_online,
                approve,
                kept_until,
            } => {
                tracing::info!(claim = %claim.short(), admins_online, approve, "claim waits for an admin");
                pj.set(
                    d,
                    Stage::Waiting {
                        claim,
                        admins_online,
                        approve,
                        kept_until,
                    },
                );
            }
            RelayFrame::ClaimResult(ClaimOutcome::Accepted {
                claim,
                genesis,
                entry,
                sealed,
                mac,
            }) => {
                conn.close().await;
                return Try::Accepted(Box::new(Answer {
                    claim,
                    genesis,
                    entry,
                    sealed,
                    mac,
                }));
            }
            RelayFrame::ClaimResult(ClaimOutcome::Refused { code, message }) => {
                return Try::Refused(format!("the invite was refused ({code}): {message}"));
            }
            RelayFrame::Error {
                code,
                message,
                retry_ms,
                ..
            } => {
                return match code {
                    ErrorCode::InviteExpired
                    | ErrorCode::InviteRevoked
                    | ErrorCode::InviteUsedUp
                    | ErrorCode::InviteUnknown
                    | ErrorCode::ClaimRefused => {
                        Try::Refused(format!("the invite was refused ({code}): {message}"))
                    }
                    // The relay ended this wait; the claim waits on (an older relay forgot
                    // it: sending it again makes it anew).
                    ErrorCode::NoAdminOnline => Try::Again {
                        error: None,
                        wait: Some(Duration::from_millis(INITIAL_BACKOFF_MS)),
                    },
                    ErrorCode::RateLimited => Try::Again {
                        error: Some(format!("the relay is busy ({message})")),
                        wait: retry_ms.map(Duration::from_millis),
                    },
                    _ => Try::Again {
                        error: Some(format!("the relay refused the claim ({code}): {message}")),
                        wait: None,
                    },
                };
            }
            _ => {}
        }
    }
}

/// Why an admission did not happen.
enum Admit {
    /// The answer is not one to accept: refused for good.
    Refused(String),
    /// This machine could not store it: try again.
    Failed(String),
}

/// Check an admin's answer as the claimant, then store the mesh.
async fn admit(d: &Arc<Daemon>, c: &Claim, answer: Answer) -> Result<MeshInfo, Admit> {
    let Answer {
        claim,
        genesis,
        entry,
        sealed,
        mac,
    } = answer;
    let link = &c.link;
    let expected = invite::accept_mac(
        &link.secret,
        &claim,
        &sealed,
        &entry.commitment(),
        &genesis.commitment(),
    );
    if !crypto::ct_eq(&expected, &mac) {
        return Err(Admit::Refused(
            "the answer to the claim is not authenticated by the invite; refusing it (the relay may be tampering)".into(),
        ));
    }
    if entry.member != c.member.public()
        || entry.invite != Some(link.invite)
        || entry.op != RosterOp::Add
        || entry.mesh != genesis.mesh
        || genesis.verify().is_err()
    {
        return Err(Admit::Refused(
            "the admission does not match this claim; refusing it".into(),
        ));
    }
    let opened = crypto::anon_open(&c.bx, &sealed)
        .map_err(|_| Admit::Refused("cannot open the mesh key sealed to us".into()))?;
    let js: JoinSecret = serde_json::from_slice(&opened)
        .map_err(|_| Admit::Refused("the sealed join data is malformed".into()))?;
    // The MAC shows only that whoever answered holds the link; the key and genesis must
    // be the ones the link was made for.
    if let Err(why) = invite::check_admission(link, &js, &genesis) {
        tracing::warn!(mesh = %genesis.mesh.short(), %why, "admission refused");
        return Err(Admit::Refused(why.to_string()));
    }
    let _g = d.membership.lock().await;
    if d.mesh(&genesis.mesh).is_some() {
        return Err(Admit::Refused(format!(
            "you are already in {}",
            names::one_line(&js.name, 64)
        )));
    }
    // The name comes from whoever admitted us: held to the name rules, and never one that
    // reads as a mesh id or id prefix (`--mesh` would take it for another mesh).
    let mut name = names::check("mesh name", &js.name)
        .ok()
        .filter(|n| !crate::membership::looks_like_an_id(n))
        .unwrap_or_else(|| "mesh".into());
    let existing: Vec<String> = d.meshes().iter().map(|m| m.name()).collect();
    if existing.contains(&name) {
        let base = name.clone();
        let mut i = 2;
        while existing.contains(&name) {
            name = format!("{base}-{i}");
            i += 1;
        }
    }
    let member = MemberSecret::from_bytes(&c.member.to_bytes());
    let mut keys = MeshKeys::generate(member, MeshKey::from_bytes(js.mesh_key));
    keys.epochs = js
        .epochs
        .iter()
        .filter(|e| e.epoch > 0)
        .map(|e| (e.epoch, MeshKey::from_bytes(e.key)))
        .collect();
    keys.save(&d.paths.keys(), &genesis.mesh)
        .map_err(|e| Admit::Failed(e.to_string()))?;
    let row = MeshRow {
        id: genesis.mesh,
        name,
        relay: link.relay.clone(),
        relay_fp: link.fingerprint,
        member: keys.member.public(),
        session: keys.session,
        role: entry.role,
        display_name: c.display.clone(),
        groups: Vec::new(),
        summary: String::new(),
        status: PeerStatus::Idle,
        genesis,
        joined_at: now_ms(),
    };
    if let Err(e) = d.store.insert_mesh(row.clone()).await {
        let _ = MeshKeys::remove(&d.paths.keys(), &row.id);
        return Err(Admit::Failed(format!("cannot record the mesh: {e}")));
    }
    let info = crate::membership::mesh_info(&row);
    d.add_mesh(
        row,
        keys,
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Default::default(),
    );
    tracing::info!(mesh = %info.mesh.short(), admitted_by = %js.admitted_by, "joined mesh");
    Ok(info)
}
