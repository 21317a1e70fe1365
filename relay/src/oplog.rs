//! The relay's side of the shared-state op log: sequence and store sealed ops, fan them out
//! in sequence order, and serve catch-up and audit reads.
//!
//! Sequence numbers are assigned inside the store's write transaction (one writer thread,
//! so they are dense and never reused even across a failed commit), and fan-out happens in
//! the commit callbacks, which run in commit order: every link sees live ops in sequence
//! order, and a link that syncs gets everything committed before its read from the store
//! and everything after it live (it registered for fan-out at hello, before any sync).

use bytes::Bytes;
use claudemesh_schema::MeshId;
use claudemesh_schema::crypto::MemberKey;
use claudemesh_schema::now_ms;
use claudemesh_schema::op::{MAX_SNAPSHOT, OpEnvelope, SNAPSHOT_PART};
use claudemesh_schema::wire::{ErrorCode, MAX_CIPHERTEXT, RelayFrame};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::hub::{Hub, LinkHandle, MeshEntry, frame, lock};
use crate::store::{NewOp, Store, StoredSnapshot};

/// Why an op was refused for the mesh's log quota.
const LOG_FULL: &str = "the mesh's shared-state log at the relay is full; a snapshot compacts it. \
                        Your change is kept and sent again later";

/// Ops per catch-up read.
const PAGE_OPS: usize = 2048;
/// Bytes of op JSON per frame (well under the 1 MiB frame limit).
const PAGE_BYTES: usize = 768 * 1024;

/// An `ops` or `op_page` frame around already-encoded op envelopes, without re-encoding
/// them.
fn page_frame(prefix: &[u8], ops: &[(u64, i64, Vec<u8>)], suffix: &str) -> Bytes {
    let mut v = Vec::with_capacity(ops.iter().map(|o| o.2.len() + 40).sum::<usize>() + 64);
    v.extend_from_slice(prefix);
    for (i, (seq, at, op)) in ops.iter().enumerate() {
        if i > 0 {
            v.push(b',');
        }
        v.extend_from_slice(format!(r#"{{"seq":{seq},"at":{at},"op":"#).as_bytes());
        v.extend_from_slice(op);
        v.push(b'}');
    }
    v.extend_from_slice(suffix.as_bytes());
    Bytes::from(v)
}

fn ops_frame(ops: &[(u64, i64, Vec<u8>)], head: Option<u64>) -> Bytes {
    let suffix = match head {
        Some(h) => format!(r#"],"head":{h}}}"#),
        None => "]}".to_string(),
    };
    page_frame(br#"{"t":"ops","ops":["#, ops, &suffix)
}

fn refuse(
    link: &LinkHandle,
    id: claudemesh_schema::OpId,
    code: ErrorCode,
    msg: &str,
    retry: Option<u64>,
) {
    if let Some(f) = frame(&RelayFrame::OpRefused {
        id,
        code,
        message: msg.to_string(),
        retry_ms: retry,
    }) {
        link.push(f);
    }
}

/// Sequence, store and fan out one op from `member`'s link. Rate limiting is the caller's.
pub(crate) async fn append<S: Store>(
    hub: &Arc<Hub<S>>,
    link: &LinkHandle,
    mesh: MeshId,
    entry: &Arc<MeshEntry>,
    member: MemberKey,
    env: OpEnvelope,
) {
    let id = env.id;
    if env.author != member {
        return refuse(
            link,
            id,
            ErrorCode::NotAuthorized,
            "op author is not the member of this link",
            None,
        );
    }
    if env.ct.len() > MAX_CIPHERTEXT {
        return refuse(
            link,
            id,
            ErrorCode::FrameTooLarge,
            &format!("op ciphertext exceeds the {MAX_CIPHERTEXT} byte limit"),
            None,
        );
    }
    let json = match serde_json::to_vec(&env) {
        Ok(v) => Bytes::from(v),
        Err(_) => return refuse(link, id, ErrorCode::BadFrame, "cannot encode op", None),
    };
    let size = json.len() as u64;
    {
        let st = lock(&entry.state);
        // An op names its place in the roster's history (daemons fold it by the author's
        // membership there): a place this relay's roster does not have yet would hold up
        // every daemon's fold, waiting for entries that never come.
        if env.roster.is_some_and(|r| r > st.entries.len() as u64) {
            drop(st);
            return refuse(
                link,
                id,
                ErrorCode::NotAuthorized,
                "the op claims roster entries this relay does not have",
                None,
            );
        }
        if !st.roster.is_member(&member) {
            drop(st);
            return refuse(
                link,
                id,
                ErrorCode::NotAuthorized,
                "the op's author is no longer a member",
                None,
            );
        }
        // Through a cluster the store checks the quota over every node (`full`); this
        // node's own count is only what it appended itself.
        let over = hub.bus.is_none() && st.op_bytes + size > hub.cfg.mesh_quota_op_bytes;
        if over || !hub.disk.room_for(size) {
            drop(st);
            return refuse(link, id, ErrorCode::QuotaExceeded, LOG_FULL, Some(30_000));
        }
    }
    let (tx, entry, stats) = (link.clone(), entry.clone(), hub.clone());
    let received = std::time::Instant::now();
    let op = NewOp {
        mesh,
        id,
        author: member,
        op: json.clone(),
        at: now_ms(),
    };
    let res = hub
        .store
        .append_op(
            op,
            Box::new(move |r| match r {
                Ok(a) if a.full => {
                    refuse(&tx, id, ErrorCode::QuotaExceeded, LOG_FULL, Some(30_000))
                }
                Ok(a) if a.taken => refuse(
                    &tx,
                    id,
                    ErrorCode::IdTaken,
                    "another member already used this op id; it was not stored",
                    None,
                ),
                Ok(a) => {
                    stats.stats.op_commit.observe(received.elapsed());
                    if let Some(f) = frame(&RelayFrame::OpAck { id, seq: a.seq }) {
                        tx.push(f);
                    }
                    if a.new {
                        stats.stats.ops.fetch_add(1, Ordering::Relaxed);
                        let f = ops_frame(&[(a.seq, a.at, json.to_vec())], None);
                        let mut st = lock(&entry.state);
                        st.op_bytes += size;
                        stats.disk.ops.fetch_add(size, Ordering::Relaxed);
                        st.broadcast(&f, None);
                        stats.bus_mesh(&mesh, crate::cluster::bus::Kind::Frame, None, &f);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot store op");
                    refuse(
                        &tx,
                        id,
                        ErrorCode::Internal,
                        "relay could not store the op; it will be retried",
                        Some(1_000),
                    );
                }
            }),
        )
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "store unavailable");
    }
}

/// Stream the log from `from` to a link (through its bounded delivery queue, so a large
/// catch-up waits for the reader instead of piling up), the last page naming the head.
pub(crate) async fn sync<S: Store>(
    hub: Arc<Hub<S>>,
    link: LinkHandle,
    mesh: MeshId,
    mut from: u64,
) {
    loop {
        let page = match hub.store.ops(mesh, from.max(1), PAGE_OPS, PAGE_BYTES).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read op log");
                return;
            }
        };
        // The ops before `first` were dropped after a snapshot: send it, then go on.
        if from < page.first {
            match send_snapshot(&hub, &link, mesh).await {
                Some(seq) if seq + 1 >= page.first => {
                    from = seq + 1;
                    continue;
                }
                _ => {
                    tracing::error!(mesh = %mesh.short(), from, first = page.first, "ops were dropped but no snapshot covers them");
                    from = page.first;
                    continue;
                }
            }
        }
        let Some(last) = page.ops.last().map(|o| o.0) else {
            let _ = link.send_data(None, ops_frame(&[], Some(page.head))).await;
            return;
        };
        let done = last >= page.head;
        let f = ops_frame(&page.ops, done.then_some(page.head));
        if link.send_data(None, f).await.is_err() || done {
            return;
        }
        from = last + 1;
    }
}

/// Answer an `op_read` with one page.
pub(crate) async fn read<S: Store>(
    hub: &Arc<Hub<S>>,
    link: &LinkHandle,
    mesh: MeshId,
    rid: u64,
    from: u64,
    limit: u32,
) {
    let limit = (limit as usize).clamp(1, PAGE_OPS);
    match hub.store.ops(mesh, from.max(1), limit, PAGE_BYTES).await {
        Ok(p) => {
            let suffix = format!(r#"],"head":{},"first":{}}}"#, p.head, p.first);
            let prefix = format!(r#"{{"t":"op_page","rid":{rid},"ops":["#);
            link.push(page_frame(prefix.as_bytes(), &p.ops, &suffix));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read op log");
            link.push(crate::hub::error_frame(
                Some(rid),
                ErrorCode::Internal,
                "relay could not read the op log",
                false,
            ));
        }
    }
}

/// Bytes of snapshot uploads all links together may hold in memory at once.
const UPLOADS_IN_MEMORY: usize = 256 << 20;

/// A snapshot being uploaded on one link, part by part. Its bytes count against the
/// relay-wide [`UPLOADS_IN_MEMORY`] until it is stored or dropped.
#[derive(Debug)]
pub(crate) struct Upload {
    seq: u64,
    parts: u32,
    next: u32,
    data: Vec<u8>,
    budget: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.data.len(), Ordering::Relaxed);
    }
}

/// Take one uploaded snapshot part; after the last, store the snapshot (dropping the ops it
/// covers) and tell the uploader. Out-of-order or oversized uploads are refused and reset.
pub(crate) async fn snapshot_part<S: Store>(
    hub: &Arc<Hub<S>>,
    link: &LinkHandle,
    upload: &mut Option<Upload>,
    mesh: MeshId,
    member: MemberKey,
    (seq, part, parts, data): (u64, u32, u32, Vec<u8>),
) {
    let max_parts = (MAX_SNAPSHOT / SNAPSHOT_PART + 1) as u32;
    let fresh = part == 0;
    if fresh {
        *upload = Some(Upload {
            seq,
            parts,
            next: 0,
            data: Vec::new(),
            budget: hub.upload_bytes.clone(),
        });
    }
    let ok = match upload.as_mut() {
        Some(u) => {
            u.seq == seq
                && u.parts == parts
                && u.next == part
                && parts <= max_parts
                && data.len() <= SNAPSHOT_PART
                && u.data.len() + data.len() <= MAX_SNAPSHOT
        }
        None => false,
    };
    if !ok {
        *upload = None;
        link.push(crate::hub::error_frame(
            None,
            ErrorCode::BadFrame,
            "snapshot parts out of order or too large; upload dropped",
            false,
        ));
        return;
    }
    let held = hub.upload_bytes.fetch_add(data.len(), Ordering::Relaxed) + data.len();
    if held > UPLOADS_IN_MEMORY {
        hub.upload_bytes.fetch_sub(data.len(), Ordering::Relaxed);
        *upload = None;
        link.push(crate::hub::error_frame(
            None,
            ErrorCode::RateLimited,
            "too many snapshot uploads in progress at this relay; upload dropped",
            false,
        ));
        return;
    }
    let Some(u) = upload.as_mut() else { return };
    u.data.extend_from_slice(&data);
    u.next += 1;
    if u.next < u.parts {
        return;
    }
    let Some(mut u) = upload.take() else { return };
    let ct = std::mem::take(&mut u.data);
    u.budget.fetch_sub(ct.len(), Ordering::Relaxed);
    let snap = StoredSnapshot {
        mesh,
        seq: u.seq,
        author: member,
        ct,
        at: now_ms(),
    };
    match hub.store.put_snapshot(snap).await {
        Ok(s) => {
            let kept = s.kept;
            if let Some(e) = hub.mesh(&mesh) {
                lock(&e.state).set_op_bytes(&hub.disk, s.op_bytes);
            }
            tracing::debug!(mesh = %mesh.short(), seq = u.seq, kept, "snapshot uploaded");
            if let Some(f) = frame(&RelayFrame::SnapshotStored { seq: u.seq, kept }) {
                link.push(f);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store snapshot");
            link.push(crate::hub::error_frame(
                None,
                ErrorCode::Internal,
                "relay could not store the snapshot",
                false,
            ));
        }
    }
}

/// Send the stored snapshot in parts (ahead of the ops after it).
async fn send_snapshot<S: Store>(
    hub: &Arc<Hub<S>>,
    link: &LinkHandle,
    mesh: MeshId,
) -> Option<u64> {
    let snap = match hub.store.snapshot(mesh).await {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read snapshot");
            return None;
        }
    };
    let chunks: Vec<&[u8]> = if snap.ct.is_empty() {
        vec![&[][..]]
    } else {
        snap.ct.chunks(SNAPSHOT_PART).collect()
    };
    let parts = chunks.len() as u32;
    for (i, c) in chunks.into_iter().enumerate() {
        let f = frame(&RelayFrame::SnapshotPart {
            seq: snap.seq,
            author: snap.author,
            part: i as u32,
            parts,
            data: c.to_vec(),
        })?;
        link.send_data(None, f).await.ok()?;
    }
    Some(snap.seq)
}
