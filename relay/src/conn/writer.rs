//! The writing half of a connection: control frames first, then envelope deliveries,
//! batched into one flush.

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::transport::FrameWriter;
pub(super) async fn write_loop(
    mut writer: FrameWriter,
    mut ctl: mpsc::UnboundedReceiver<Bytes>,
    mut data: mpsc::Receiver<Bytes>,
    close: CancellationToken,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    let took = |b: Bytes| {
        queued.fetch_sub(b.len(), Ordering::Relaxed);
        b
    };
    loop {
        let first = tokio::select! {
            biased;
            // Closing: send the control frames already queued (an error frame, usually).
            _ = close.cancelled() => {
                let flush_queued = async {
                    while let Ok(b) = ctl.try_recv() {
                        if writer.feed(b).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.flush().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), flush_queued).await;
                break;
            }
            f = ctl.recv() => match f { Some(b) => took(b), None => break },
            f = data.recv() => match f { Some(b) => b, None => break },
        };
        // Write it and everything else already queued (control first), then flush once.
        let mut ok = writer.feed(first).await.is_ok();
        let mut n = 0;
        while ok && n < 1024 {
            let next = match ctl.try_recv() {
                Ok(b) => took(b),
                Err(_) => match data.try_recv() {
                    Ok(b) => b,
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
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
}
