//! The local socket server: newline-delimited JSON-RPC 2.0 (see `claudemesh_schema::ipc`),
//! one task per connection, one task per request (so a long `inbox --wait` does not block
//! other calls on the same connection).
//!
//! Only processes of the same user may connect: the socket is 0600 inside a 0700
//! directory, and each connection's peer uid is checked again.

use claudemesh_schema::ipc::methods::{self as m, MeshParams};
use claudemesh_schema::ipc::{IPC_PROTOCOL, MAX_LINE, Notification, Request, Response, codes};
use futures_util::{SinkExt as _, StreamExt as _};
use interprocess::local_socket::tokio::{Listener, Stream};
use interprocess::local_socket::traits::tokio::Listener as _;
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec, LinesCodecError};

use crate::context::Daemon;
use crate::error::Error;

fn err_response(id: u64, e: &Error) -> Response {
    Response::err(id, e.code(), e.to_string())
}

/// Bind the socket (0600). The caller holds the instance lock, so a leftover socket file
/// is stale and is replaced.
pub(crate) fn bind(socket: &Path, dir: &Path) -> std::io::Result<Listener> {
    if let Some(parent) = socket.parent()
        && parent != dir
    {
        crate::paths::socket_dir_ready(parent)?;
    }
    let name = socket.to_fs_name::<GenericFilePath>()?;
    let opts = ListenerOptions::new().name(name).try_overwrite(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt as _;
        opts.mode(0o600)
    };
    opts.create_tokio()
}

#[cfg(unix)]
fn same_user(d: &Daemon, s: &Stream) -> bool {
    use interprocess::local_socket::traits::StreamCommon as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(&d.paths.dir) else {
        return false;
    };
    match s.peer_creds() {
        Ok(c) => c.euid() == Some(meta.uid()),
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn same_user(_d: &Daemon, _s: &Stream) -> bool {
    true
}

pub(crate) async fn serve(d: Arc<Daemon>, listener: Listener) {
    loop {
        let stream = tokio::select! {
            biased;
            _ = d.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "local socket accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if !same_user(&d, &stream) {
            tracing::warn!("refused a local connection from another user");
            continue;
        }
        d.tasks.spawn(connection(d.clone(), stream));
    }
}

async fn connection(d: Arc<Daemon>, stream: Stream) {
    let (r, w) = tokio::io::split(stream);
    let mut lines = FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE));
    // Answers and pushed notifications share the connection's one writer.
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let (ntx, mut nrx) = mpsc::channel::<Notification>(64);
    let mut requests = tokio::task::JoinSet::new();
    let writer = async move {
        let mut out = FramedWrite::new(w, LinesCodec::new());
        let mut notes_open = true;
        loop {
            let line = tokio::select! {
                l = rx.recv() => match l {
                    Some(l) => l,
                    None => break,
                },
                n = nrx.recv(), if notes_open => match n {
                    Some(n) => serde_json::to_string(&n).unwrap_or_default(),
                    None => {
                        notes_open = false;
                        continue;
                    }
                },
            };
            if out.send(line).await.is_err() {
                break;
            }
        }
    };
    let reader = async move {
        loop {
            let line = tokio::select! {
                biased;
                _ = d.shutdown.cancelled() => break,
                l = lines.next() => l,
            };
            let line = match line {
                None => break,
                Some(Ok(l)) => l,
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    let resp = Response::err(
                        0,
                        codes::INVALID_REQUEST,
                        format!("request line exceeds {MAX_LINE} bytes"),
                    );
                    let _ = tx
                        .send(serde_json::to_string(&resp).unwrap_or_default())
                        .await;
                    break;
                }
                Some(Err(_)) => break,
            };
            if line.trim().is_empty() {
                continue;
            }
            let req: Request = match serde_json::from_str(&line) {
                Ok(r) => r,
                Err(e) => {
                    let resp =
                        Response::err(0, codes::PARSE, format!("not a JSON-RPC request: {e}"));
                    let _ = tx
                        .send(serde_json::to_string(&resp).unwrap_or_default())
                        .await;
                    continue;
                }
            };
            if req.method == claudemesh_schema::ipc::shared::STATE_WATCH {
                let resp =
                    match params::<claudemesh_schema::ipc::shared::WatchParams>(req.params.clone())
                    {
                        Ok(wp) => match wp.mesh.as_deref().map(|s| d.select(Some(s))).transpose() {
                            Ok(only) => {
                                requests.spawn(crate::shared::state_watch(
                                    d.clone(),
                                    only.map(|m| m.id),
                                    wp.prefix,
                                    ntx.clone(),
                                ));
                                Response::ok(req.id, Value::Object(Default::default()))
                            }
                            Err(e) => err_response(req.id, &e),
                        },
                        Err(e) => err_response(req.id, &e),
                    };
                let _ = tx
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
                continue;
            }
            if req.method == claudemesh_schema::ipc::tools::TOOLS_WATCH {
                let resp = match params::<claudemesh_schema::ipc::tools::ToolsWatchParams>(
                    req.params.clone(),
                ) {
                    Ok(wp) => match wp.mesh.as_deref().map(|s| d.select(Some(s))).transpose() {
                        Ok(only) => {
                            requests.spawn(crate::tools::watch(
                                d.clone(),
                                only.map(|m| m.id),
                                ntx.clone(),
                            ));
                            Response::ok(req.id, Value::Object(Default::default()))
                        }
                        Err(e) => err_response(req.id, &e),
                    },
                    Err(e) => err_response(req.id, &e),
                };
                let _ = tx
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
                continue;
            }
            if req.method == m::SUBSCRIBE {
                let resp = match params::<m::SubscribeParams>(req.params.clone()) {
                    Ok(sp) if d.meshes().iter().any(|x| x.is_local(&sp.session)) => {
                        requests.spawn(crate::delivery::inbox::subscription(
                            d.clone(),
                            sp.session,
                            sp.push,
                            ntx.clone(),
                        ));
                        Response::ok(req.id, Value::Object(Default::default()))
                    }
                    Ok(_) => {
                        err_response(req.id, &Error::not_found("no such session on this daemon"))
                    }
                    Err(e) => err_response(req.id, &e),
                };
                let _ = tx
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
                continue;
            }
            let (d2, tx2) = (d.clone(), tx.clone());
            // Requests die with their connection: an abandoned `inbox --wait` must not mark
            // messages read that nobody will see.
            while requests.try_join_next().is_some() {}
            requests.spawn(async move {
                let id = req.id;
                let resp = match dispatch(&d2, req).await {
                    Ok(v) => Response::ok(id, v),
                    Err(e) => err_response(id, &e),
                };
                let _ = tx2
                    .send(serde_json::to_string(&resp).unwrap_or_default())
                    .await;
            });
        }
        requests.abort_all();
        drop(tx);
        drop(ntx);
    };
    // The writer ends once every sender of answers and notifications is gone.
    tokio::join!(reader, writer);
}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, Error> {
    let v = if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    };
    serde_json::from_value(v).map_err(|e| Error::Params(format!("invalid parameters: {e}")))
}

fn json<T: Serialize>(t: T) -> Result<Value, Error> {
    serde_json::to_value(t).map_err(Error::internal)
}

async fn dispatch(d: &Arc<Daemon>, req: Request) -> Result<Value, Error> {
    use crate::{delivery, joining, membership, shared};
    use claudemesh_schema::ipc::deploy as dp;
    use claudemesh_schema::ipc::files as fi;
    use claudemesh_schema::ipc::peer_files as pf;
    use claudemesh_schema::ipc::shared as sh;
    use claudemesh_schema::ipc::tools as tl;
    use claudemesh_schema::ipc::vault as va;
    let p = req.params;
    match req.method.as_str() {
        m::HELLO => json(m::HelloResult {
            protocol: IPC_PROTOCOL,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        }),
        m::STATUS => json(crate::status::status(d).await?),
        m::CREATE => json(membership::create(d, params(p)?).await?),
        m::INVITE => json(membership::invite(d, params(p)?).await?),
        m::INVITE_LIST => json(membership::invite_list(d, params(p)?).await?),
        m::INVITE_REVOKE => json(membership::invite_revoke(d, params(p)?).await?),
        m::CLAIMS => json(membership::claims(d).await?),
        m::CLAIM_DECIDE => json(membership::claim_decide(d, params(p)?).await?),
        m::JOIN => json(joining::join(d, params(p)?).await?),
        m::LIST => json(membership::list(d)),
        m::MESH_USE => json(membership::mesh_use(d, params(p)?).await?),
        m::MESH_RENAME => json(membership::mesh_rename(d, params(p)?).await?),
        m::LEAVE => json(membership::leave(d, params(p)?).await?),
        m::MESH_SET_RELAY => json(membership::set_relay(d, params(p)?).await?),
        m::MEMBER_REMOVE => json(membership::member_change(d, params(p)?, None).await?),
        m::MEMBER_ROLE => {
            let p: m::MemberParams = params(p)?;
            let role = p
                .role
                .ok_or_else(|| Error::invalid("name the role: admin or member"))?;
            json(membership::member_change(d, p, Some(role)).await?)
        }
        m::PEERS => json(crate::peers::list(d, params(p)?).await?),
        m::SEND => json(delivery::send::send(d, params(p)?).await?),
        m::INBOX => json(delivery::inbox::read(d, params(p)?).await?),
        m::WHOAMI => json(membership::whoami(d)),
        m::PROFILE => json(membership::profile(d, params(p)?).await?),
        m::WAIT_FOR => json(crate::status::wait_for(d, params(p)?).await?),
        m::SESSION_OPEN => json(crate::sessions::open(d, params(p)?).await?),
        m::SESSION_CLOSE => json(crate::sessions::close(d, params(p)?).await?),
        m::SESSION_UPDATE => json(crate::sessions::update(d, params(p)?).await?),
        m::SESSION_STATS => json(crate::stats::report(d, params(p)?)?),
        m::MESH_STATS => json(crate::stats::mesh_stats(d, params(p)?).await?),
        claudemesh_schema::ipc::claude::HOOK => json(crate::hooks::hook(d, params(p)?).await?),
        m::MESSAGE_STATUS => json(delivery::inbox::message_status(d, params(p)?).await?),
        m::PING => json(crate::status::ping(d, params(p)?).await?),
        m::MESH_INFO => json(crate::status::mesh_info(d, params(p)?).await?),
        claudemesh_schema::ipc::trust::VERIFY => json(membership::verify(d, params(p)?).await?),
        claudemesh_schema::ipc::trust::GRANT => {
            json(crate::grants::change(d, params(p)?, "grant").await?)
        }
        claudemesh_schema::ipc::trust::REVOKE => {
            json(crate::grants::change(d, params(p)?, "revoke").await?)
        }
        claudemesh_schema::ipc::trust::BLOCK => {
            json(crate::grants::change(d, params(p)?, "block").await?)
        }
        claudemesh_schema::ipc::trust::GRANTS => {
            let p: MeshParams = params(p)?;
            let m = d.select(p.mesh.as_deref())?;
            json(crate::grants::list(d, &m).await?)
        }
        // Shared files.
        fi::FILE_SHARE => json(crate::files::share(d, params(p)?).await?),
        fi::FILE_GET => json(crate::files::get(d, params(p)?).await?),
        fi::FILE_LIST => json(crate::files::list(d, params(p)?).await?),
        fi::FILE_STATUS => json(crate::files::status(d, params(p)?).await?),
        fi::FILE_DELETE => json(crate::files::delete(d, params(p)?).await?),
        fi::FILE_GRANT => json(crate::files::grant(d, params(p)?).await?),
        fi::FILE_TRANSFERS => json(crate::files::transfers(d)),
        sh::STATE_SET => json(shared::state_set(d, params(p)?).await?),
        sh::STATE_GET => json(shared::state_get(d, params(p)?, false).await?),
        sh::STATE_LIST => json(shared::state_get(d, params(p)?, true).await?),
        sh::REMEMBER => json(shared::remember(d, params(p)?).await?),
        sh::RECALL => json(shared::recall(d, params(p)?).await?),
        sh::FORGET => json(shared::forget(d, params(p)?).await?),
        sh::TASK_CREATE => json(shared::task_create(d, params(p)?).await?),
        sh::TASK_CLAIM => json(shared::task_claim(d, params(p)?).await?),
        sh::TASK_COMPLETE => json(shared::task_complete(d, params(p)?).await?),
        sh::TASK_LIST => json(shared::task_list(d, params(p)?).await?),
        sh::DIGEST => json(shared::digest(d, params(p)?).await?),
        sh::AUDIT_VERIFY => json(shared::audit_verify(d, params(p)?).await?),
        sh::LINK_PAUSE => json(shared::link_pause(d, params(p)?).await?),
        sh::RESERVE => json(shared::reserve(d, params(p)?).await?),
        sh::RELEASE => json(shared::release(d, params(p)?).await?),
        sh::RESERVATIONS => json(shared::reservations(d, params(p)?).await?),
        sh::CONTEXT_SHARE => json(shared::share_context(d, params(p)?).await?),
        sh::CONTEXTS => json(shared::contexts(d, params(p)?).await?),
        sh::SKILL_SHARE => json(shared::share_skill(d, params(p)?).await?),
        sh::SKILL_REMOVE => json(shared::remove_skill(d, params(p)?).await?),
        sh::SKILLS => json(shared::skills(d, params(p)?).await?),
        sh::SCHEDULE => json(shared::schedule(d, params(p)?).await?),
        sh::SCHEDULED => json(crate::reminders::list(d, params(p)?).await?),
        sh::CANCEL => json(shared::cancel(d, params(p)?).await?),
        sh::DEBUG_CLOCK => {
            let c: sh::ClockParams = params(p)?;
            let now = d
                .clock_offset
                .fetch_add(c.advance_ms, std::sync::atomic::Ordering::Relaxed)
                + c.advance_ms;
            d.bump_changes();
            Ok(serde_json::json!({ "offset_ms": now }))
        }
        // Peer folders.
        pf::SHARE_DIR => json(crate::peer_files::share(d, params(p)?).await?),
        pf::SHARE_DIR_LIST => json(crate::peer_files::list(d, params(p)?).await?),
        pf::SHARE_DIR_RM => json(crate::peer_files::remove(d, params(p)?).await?),
        pf::PEER_FILE_READ => json(crate::peer_files::read(d, params(p)?).await?),
        pf::PEER_FILE_LIST => json(crate::peer_files::list_peer(d, params(p)?).await?),
        // Shared MCP tools.
        tl::MCP_HOST_ADD => json(crate::mcp_host::add(d, params(p)?).await?),
        tl::MCP_HOST_LIST => {
            let lp: tl::McpHostListParams = params(p)?;
            json(crate::mcp_host::list(d, lp.mesh.as_deref())?)
        }
        tl::MCP_HOST_REMOVE => {
            let np: tl::McpHostNameParams = params(p)?;
            crate::mcp_host::remove(d, np.mesh.as_deref(), &np.name).await?;
            Ok(Value::Object(Default::default()))
        }
        tl::MCP_HOST_LOGS => {
            let np: tl::McpHostNameParams = params(p)?;
            let lines = crate::mcp_host::logs(d, np.mesh.as_deref(), &np.name, np.lines)?;
            json(tl::McpHostLogsResult {
                name: np.name,
                lines,
            })
        }
        tl::TOOLS_LIST => json(crate::tools::list(d, params(p)?).await?),
        tl::TOOLS_CALL => json(crate::tools::call(d, params(p)?).await?),
        tl::TOOLS_AUDIT => json(crate::tools::audit_log(d, params(p)?).await?),
        // Hosted services.
        dp::HOST_SET => json(crate::deploy::host_set(d, params(p)?).await?),
        dp::HOST_STATUS => json(crate::deploy::host_status(d, params(p)?).await?),
        dp::DEPLOY_ADD => json(crate::deploy::add(d, params(p)?).await?),
        dp::DEPLOY_LIST => json(crate::deploy::list(d, params(p)?).await?),
        dp::DEPLOY_LOGS => json(crate::deploy::logs(d, params(p)?).await?),
        dp::DEPLOY_REMOVE => {
            crate::deploy::remove(d, params(p)?).await?;
            Ok(Value::Object(Default::default()))
        }
        dp::DEPLOY_SCOPE => json(crate::deploy::scope(d, params(p)?).await?),
        dp::DEPLOY_SCHEMA => json(crate::deploy::schema(d, params(p)?).await?),
        // The vault.
        va::VAULT_SET => json(crate::vault::set(d, params(p)?).await?),
        va::VAULT_LIST => json(crate::vault::list(d, params(p)?).await?),
        va::VAULT_DELETE => json(crate::vault::delete(d, params(p)?).await?),
        m::MARK_READ => json(delivery::inbox::mark_read(d, params(p)?).await?),
        m::SENT_LIST => json(delivery::inbox::sent_list(d, params(p)?).await?),
        m::SHUTDOWN => {
            let token = d.shutdown.clone();
            d.spawn(async move {
                // Let the answer reach the client before the server stops.
                tokio::time::sleep(Duration::from_millis(20)).await;
                token.cancel();
            });
            Ok(Value::Object(Default::default()))
        }
        other => Err(Error::UnknownMethod(format!("unknown method {other:?}"))),
    }
}
