//! The writing half of a connection: control frames first, then envelope deliveries,
//! batched into one flush. It keeps the link's byte counts and wakes whoever waits for
//! the queues to drain (a paused reader, a mailbox replay).

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::LinkQueues;
use crate::transport::FrameWriter;

pub(super) async fn write_loop(
    mut writer: FrameWriter,
    mut ctl: mpsc::UnboundedReceiver<Bytes>,
    mut data: mpsc::Receiver<Bytes>,
    close: CancellationToken,
    queues: Arc<LinkQueues>,
) {
    let control = |b: Bytes| {
        queues.took_control(b.len());
        b
    };
    let delivery = |b: Bytes| {
        queues.took_data(b.len());
        b
    };
    loop {
        let first = tokio::select! {
            biased;
            // Closing: send the control frames already queued (an error frame, usually).
            _ = close.cancelled() => {
                let flush_queued = async {
                    while let Ok(b) = ctl.try_recv() {
                        if writer.feed(control(b)).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.flush().await;
                };
                // Generous: a loaded machine must not cut off a claim result or a refusal.
                let _ = tokio::time::timeout(Duration::from_secs(5), flush_queued).await;
                break;
            }
            f = ctl.recv() => match f { Some(b) => control(b), None => break },
            f = data.recv() => match f { Some(b) => delivery(b), None => break },
        };
        // Write it and everything else already queued (control first), then flush once.
        let mut ok = writer.feed(first).await.is_ok();
        let mut n = 0;
        while ok && n < 1024 {
            let next = match ctl.try_recv() {
                Ok(b) => control(b),
                Err(_) => match data.try_recv() {
                    Ok(b) => delivery(b),
                    Err(_) => break,
                },
            };
            ok = writer.feed(next).await.is_ok();
            n += 1;
        }
        if !ok || writer.flush().await.is_err() {
            close.cancel();
            break;
        }
        queues.flushed();
    }
    // Give back what is still queued, so the relay-wide budget stays true.
    ctl.close();
    data.close();
    while let Ok(b) = ctl.try_recv() {
        queues.took_control(b.len());
    }
    while let Ok(b) = data.try_recv() {
        queues.took_data(b.len());
    }
    queues.flushed();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer.close()).await;
}
