//! The relay's blob store spoken raw: chunk frames from member links against a real relay
//! (its files on disk, its index in relay.db), the way a daemon or an attacker sends them.
#![allow(clippy::unwrap_used)]

use claudemesh_relay::Connection;
use claudemesh_schema::file::{ChunkId, MAX_CHUNKS};
use claudemesh_schema::wire::{ClientFrame, ErrorCode, MAX_CHUNK_FRAME, RelayFrame};
use claudemesh_schema::{ItemId, now_ms};
use claudemesh_tests::raw::{Fixture, Member, add_member, link, mesh, relay, send, until};
use std::time::Duration;

/// The answer to request `rid` (other frames, such as roster or presence, are skipped).
async fn answer(c: &mut Connection, rid: u64) -> RelayFrame {
    until(c, |f| match &f {
        RelayFrame::Ok { rid: r }
        | RelayFrame::ChunksHeld { rid: r, .. }
        | RelayFrame::Chunk { rid: r, .. }
        | RelayFrame::Error { rid: Some(r), .. }
            if *r == rid =>
        {
            Some(f)
        }
        _ => None,
    })
    .await
}

/// The error code answering `rid`, checked non-fatal and explained.
async fn refused(c: &mut Connection, rid: u64) -> (ErrorCode, String) {
    match answer(c, rid).await {
        RelayFrame::Error {
            code,
            message,
            fatal,
            ..
        } => {
            assert!(!fatal, "{code}: {message}");
            assert!(!message.is_empty());
            (code, message)
        }
        other => panic!("expected an error for {rid}, got {other:?}"),
    }
}

/// Sealed-looking bytes (the relay cannot tell them from a real sealed chunk).
fn sealed(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed ^ (i as u8).wrapping_mul(31))
        .collect()
}

async fn put(
    c: &mut Connection,
    rid: u64,
    file: ItemId,
    data: &[u8],
    expires_at: Option<i64>,
) -> RelayFrame {
    let f = ClientFrame::ChunkPut {
        rid,
        file,
        id: ChunkId::of(data),
        data: data.to_vec(),
        expires_at,
    };
    send(c, &f).await;
    answer(c, rid).await
}

async fn get(c: &mut Connection, rid: u64, id: ChunkId) -> Option<Vec<u8>> {
    send(c, &ClientFrame::ChunkGet { rid, id }).await;
    match answer(c, rid).await {
        RelayFrame::Chunk { id: got, data, .. } => {
            assert_eq!(got, id);
            Some(data)
        }
        RelayFrame::Error {
            code: ErrorCode::NotFound,
            fatal: false,
            ..
        } => None,
        other => panic!("unexpected answer to chunk_get: {other:?}"),
    }
}

async fn held(c: &mut Connection, rid: u64, ids: Vec<ChunkId>) -> Vec<bool> {
    send(c, &ClientFrame::ChunksHeld { rid, ids }).await;
    match answer(c, rid).await {
        RelayFrame::ChunksHeld { held, .. } => held,
        other => panic!("unexpected answer to chunks_held: {other:?}"),
    }
}

async fn drop_file(c: &mut Connection, rid: u64, file: ItemId) -> RelayFrame {
    send(c, &ClientFrame::ChunksDrop { rid, file }).await;
    answer(c, rid).await
}

/// Chunk files in the relay's blob directory.
fn chunk_files(f: &Fixture) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    }
    walk(&f.cfg.data_dir.join("blobs"))
}

#[tokio::test]
async fn chunks_round_trip_are_stored_once_and_survive_a_restart() {
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, _member, mut b) = mesh(&f).await;
    let file = ItemId::new();
    let data = sealed(1, MAX_CHUNK_FRAME);
    let id = ChunkId::of(&data);
    assert_eq!(held(&mut b, 1, vec![id]).await, vec![false]);
    assert_eq!(get(&mut b, 2, id).await, None);
    assert_eq!(
        put(&mut a, 3, file, &data, None).await,
        RelayFrame::Ok { rid: 3 }
    );
    // Another member reads it back, byte for byte; a second put (or another file using the
    // same chunk) is taken and stores nothing more.
    assert_eq!(held(&mut b, 4, vec![id]).await, vec![true]);
    assert_eq!(get(&mut b, 5, id).await.as_deref(), Some(&data[..]));
    assert_eq!(
        put(&mut a, 6, file, &data, None).await,
        RelayFrame::Ok { rid: 6 }
    );
    assert_eq!(
        put(&mut b, 7, ItemId::new(), &data, None).await,
        RelayFrame::Ok { rid: 7 }
    );
    assert_eq!(chunk_files(&f), 1, "content-addressed: stored once");
    assert_eq!(f.metric("claudemesh_relay_blob_chunks").await, 1);
    assert_eq!(
        f.metric("claudemesh_relay_blob_bytes").await,
        MAX_CHUNK_FRAME as u64
    );
    drop((a, b));

    // Durable: a new relay process on the same data serves it, and counts it.
    let f = f.restart().await;
    let mut a = link(&f, mesh_id, &owner).await;
    assert_eq!(get(&mut a, 8, id).await.as_deref(), Some(&data[..]));
    assert_eq!(held(&mut a, 9, vec![id]).await, vec![true]);
    assert_eq!(
        f.metric("claudemesh_relay_blob_bytes").await,
        MAX_CHUNK_FRAME as u64
    );
}

#[tokio::test]
async fn a_chunk_is_served_only_to_its_mesh_and_only_if_it_hashes_to_its_id() {
    let f = relay(|_| {}).await;
    let (_, _, mut a, _, _b) = mesh(&f).await;
    let (_, _, mut other, _, _) = mesh(&f).await;
    let data = sealed(2, 4096);
    let id = ChunkId::of(&data);

    // A wrong id: refused, nothing stored.
    let mut tampered = data.clone();
    tampered[0] ^= 1;
    send(
        &mut a,
        &ClientFrame::ChunkPut {
            rid: 1,
            file: ItemId::new(),
            id,
            data: tampered.clone(),
            expires_at: None,
        },
    )
    .await;
    let (code, message) = refused(&mut a, 1).await;
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains("hash"), "{message}");
    assert_eq!(chunk_files(&f), 0);
    assert_eq!(
        held(&mut a, 2, vec![id, ChunkId::of(&tampered)]).await,
        vec![false, false]
    );
    assert_eq!(get(&mut a, 3, id).await, None);

    // Stored in mesh A: mesh B does not get it with the right id, nor learn it is held.
    assert_eq!(
        put(&mut a, 4, ItemId::new(), &data, None).await,
        RelayFrame::Ok { rid: 4 }
    );
    assert_eq!(get(&mut a, 5, id).await.as_deref(), Some(&data[..]));
    assert_eq!(get(&mut other, 6, id).await, None);
    assert_eq!(held(&mut other, 7, vec![id]).await, vec![false]);
}

#[tokio::test]
async fn the_mesh_quota_refuses_new_bytes_but_takes_chunks_already_held() {
    let quota = 3 * 50_000;
    let f = relay(|c| c.mesh_quota_blob_bytes = quota).await;
    let (_, _, mut a, _, _b) = mesh(&f).await;
    let (_, _, mut other, _, _) = mesh(&f).await;
    let file = ItemId::new();
    let chunks: Vec<Vec<u8>> = (0..4).map(|i| sealed(10 + i, 50_000)).collect();
    for (i, c) in chunks[..3].iter().enumerate() {
        let rid = i as u64 + 1;
        assert_eq!(
            put(&mut a, rid, file, c, None).await,
            RelayFrame::Ok { rid }
        );
    }
    send(
        &mut a,
        &ClientFrame::ChunkPut {
            rid: 10,
            file,
            id: ChunkId::of(&chunks[3]),
            data: chunks[3].clone(),
            expires_at: None,
        },
    )
    .await;
    let (code, message) = refused(&mut a, 10).await;
    assert_eq!(code, ErrorCode::QuotaExceeded);
    assert!(
        message.contains("mesh") && message.contains("deleting files"),
        "{message}"
    );
    assert_eq!(
        held(&mut a, 11, vec![ChunkId::of(&chunks[3])]).await,
        vec![false]
    );
    // A chunk the mesh holds costs nothing more: another file may use it.
    assert_eq!(
        put(&mut a, 12, ItemId::new(), &chunks[0], None).await,
        RelayFrame::Ok { rid: 12 }
    );
    // The quota is the mesh's: another mesh still stores.
    assert_eq!(
        put(&mut other, 13, ItemId::new(), &chunks[3], None).await,
        RelayFrame::Ok { rid: 13 }
    );
    // Deleting the file frees the space (chunk 0 stays: file 12 uses it).
    assert_eq!(
        drop_file(&mut a, 14, file).await,
        RelayFrame::Ok { rid: 14 }
    );
    assert_eq!(
        put(&mut a, 15, file, &chunks[3], None).await,
        RelayFrame::Ok { rid: 15 }
    );
    assert!(get(&mut a, 16, ChunkId::of(&chunks[0])).await.is_some());
    assert_eq!(get(&mut a, 17, ChunkId::of(&chunks[1])).await, None);
}

#[tokio::test]
async fn only_the_uploader_or_an_admin_drops_a_files_chunks() {
    let f = relay(|_| {}).await;
    let (mesh_id, owner, mut a, _member, mut b) = mesh(&f).await;
    let third = Member::new();
    add_member(&mut a, &owner, mesh_id, &third, 50).await;
    let mut c = link(&f, mesh_id, &third).await;
    let (mine, shared_with) = (ItemId::new(), ItemId::new());
    let only = sealed(3, 1000);
    let both = sealed(4, 1000);
    for (rid, file, data) in [(1, mine, &only), (2, mine, &both), (3, shared_with, &both)] {
        assert_eq!(
            put(&mut b, rid, file, data, None).await,
            RelayFrame::Ok { rid }
        );
    }
    // Another member may not drop the member's file.
    let (code, _) = match drop_file(&mut c, 4, mine).await {
        RelayFrame::Error {
            code,
            message,
            fatal: false,
            ..
        } => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(code, ErrorCode::NotAuthorized);
    assert!(get(&mut c, 5, ChunkId::of(&only)).await.is_some());
    // The owner (an admin) may: what only that file used is gone, what another file uses
    // stays.
    assert_eq!(drop_file(&mut a, 6, mine).await, RelayFrame::Ok { rid: 6 });
    assert_eq!(get(&mut c, 7, ChunkId::of(&only)).await, None);
    assert!(get(&mut c, 8, ChunkId::of(&both)).await.is_some());
    // The uploader drops the other file: the last reference goes, and the bytes.
    assert_eq!(
        drop_file(&mut b, 9, shared_with).await,
        RelayFrame::Ok { rid: 9 }
    );
    assert_eq!(get(&mut c, 10, ChunkId::of(&both)).await, None);
    assert_eq!(chunk_files(&f), 0);
    assert_eq!(f.metric("claudemesh_relay_blob_bytes").await, 0);
}

#[tokio::test]
async fn a_relay_without_blob_storage_answers_storage_off() {
    let f = relay(|c| c.blob_storage = false).await;
    let (_, _, mut a, _, _b) = mesh(&f).await;
    let data = sealed(5, 100);
    let id = ChunkId::of(&data);
    let frames = [
        ClientFrame::ChunkPut {
            rid: 1,
            file: ItemId::new(),
            id,
            data,
            expires_at: None,
        },
        ClientFrame::ChunksHeld {
            rid: 2,
            ids: vec![id],
        },
        ClientFrame::ChunkGet { rid: 3, id },
        ClientFrame::ChunksDrop {
            rid: 4,
            file: ItemId::new(),
        },
    ];
    for (i, fr) in frames.iter().enumerate() {
        send(&mut a, fr).await;
        let (code, message) = refused(&mut a, i as u64 + 1).await;
        assert_eq!(code, ErrorCode::StorageOff, "{message}");
    }
    assert_eq!(chunk_files(&f), 0);
}

#[tokio::test]
async fn expired_chunks_are_not_served() {
    let f = relay(|_| {}).await;
    let (_, _, mut a, _, mut b) = mesh(&f).await;
    let data = sealed(6, 2048);
    let id = ChunkId::of(&data);
    // An ephemeral share a few seconds long (the put and the first reads must fit in it).
    let until_ms = now_ms() + 3_000;
    assert_eq!(
        put(&mut a, 1, ItemId::new(), &data, Some(until_ms)).await,
        RelayFrame::Ok { rid: 1 }
    );
    assert_eq!(get(&mut b, 2, id).await.as_deref(), Some(&data[..]));
    // Wait for the wall clock to pass the expiry (not for the relay to do anything).
    let left = until_ms - now_ms();
    if left >= 0 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 5)).await;
    }
    assert_eq!(get(&mut b, 3, id).await, None);
    assert_eq!(held(&mut b, 4, vec![id]).await, vec![false]);
    // An expiry already past is refused outright.
    send(
        &mut a,
        &ClientFrame::ChunkPut {
            rid: 5,
            file: ItemId::new(),
            id,
            data: data.clone(),
            expires_at: Some(now_ms() - 1),
        },
    )
    .await;
    assert_eq!(refused(&mut a, 5).await.0, ErrorCode::BadFrame);
}

#[tokio::test]
async fn oversized_chunks_and_floods_of_ids_are_refused_and_the_link_keeps_working() {
    let f = relay(|_| {}).await;
    let (_, _, mut a, _, _b) = mesh(&f).await;
    // One byte over the limit (the frame itself is within MAX_FRAME).
    let big = sealed(7, MAX_CHUNK_FRAME + 1);
    send(
        &mut a,
        &ClientFrame::ChunkPut {
            rid: 1,
            file: ItemId::new(),
            id: ChunkId::of(&big),
            data: big,
            expires_at: None,
        },
    )
    .await;
    let (code, message) = refused(&mut a, 1).await;
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains(&MAX_CHUNK_FRAME.to_string()), "{message}");
    assert_eq!(chunk_files(&f), 0);
    // Thousands of ids in one question.
    let ids: Vec<ChunkId> = (0..MAX_CHUNKS * 2 + 1)
        .map(|i| ChunkId::of(&i.to_be_bytes()))
        .collect();
    send(&mut a, &ClientFrame::ChunksHeld { rid: 2, ids }).await;
    let (code, message) = refused(&mut a, 2).await;
    assert_eq!(code, ErrorCode::BadFrame);
    assert!(message.contains(&MAX_CHUNKS.to_string()), "{message}");
    // The same link still works: a ping, a put and a full-sized question.
    send(&mut a, &ClientFrame::Ping { n: 77 }).await;
    until(&mut a, |f| {
        matches!(f, RelayFrame::Pong { n: 77, .. }).then_some(())
    })
    .await;
    let data = sealed(8, 300);
    assert_eq!(
        put(&mut a, 3, ItemId::new(), &data, None).await,
        RelayFrame::Ok { rid: 3 }
    );
    let mut ids = vec![ChunkId::of(b"nothing"); MAX_CHUNKS - 1];
    ids.push(ChunkId::of(&data));
    let got = held(&mut a, 4, ids).await;
    assert_eq!(got.len(), MAX_CHUNKS);
    assert!(got[MAX_CHUNKS - 1] && !got[0]);
}
