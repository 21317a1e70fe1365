//! A malicious relay operator in the middle: a QUIC listener that presents the real relay's
//! own certificate (its operator holds it, so pinning does not stop it), forwards every
//! frame to the real relay and back, and lets the test rewrite what the relay sends to a
//! client on the way. It runs on its own thread and runtime, so synchronous tests (driving
//! the `claudemesh` binary) can use it.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use bytes::Bytes;
use claudemesh_relay::client::connect_quic;
use claudemesh_relay::tls::Identity;
use claudemesh_relay::transport::{FrameReader, FrameWriter, codec};
use claudemesh_schema::wire::{self, ALPN, ClientFrame, RelayFrame};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::codec::{FramedRead, FramedWrite};

/// Rewrites one frame from the relay, given what the client sent on that connection so
/// far.
pub type Rewrite = Arc<dyn Fn(&[ClientFrame], RelayFrame) -> RelayFrame + Send + Sync>;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where it listens (UDP, QUIC only).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("addr", &self.addr).finish()
    }
}

impl Proxy {
    /// `invite` as the operator serves it: the same link (and relay certificate), this
    /// proxy's address, so the joiner's link runs through it.
    pub fn invite_via(&self, invite: &str) -> String {
        let link = claudemesh_schema::invite::InviteLink::parse(invite).expect("an invite link");
        claudemesh_schema::invite::InviteLink {
            relay: self.addr.to_string(),
            ..link
        }
        .to_link()
    }

    /// Listen on a free loopback port with the certificate of the relay whose data
    /// directory is `relay_dir`, forwarding to the relay at `relay`.
    pub fn start(relay: SocketAddr, relay_dir: &Path, rewrite: Rewrite) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let identity = Identity::load_or_generate(relay_dir, None, None).unwrap();
        let tls = identity.server_config(&[ALPN]).unwrap();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let fp = identity.fingerprint;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
                addr_tx.send(ep.local_addr().unwrap()).unwrap();
                let serve = async {
                    while let Some(incoming) = ep.accept().await {
                        let rewrite = rewrite.clone();
                        tokio::spawn(async move {
                            if let Ok(conn) = incoming.await {
                                let _ = forward(conn, relay, fp, rewrite).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
                ep.close(0u32.into(), b"bye");
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn forward(
    conn: quinn::Connection,
    relay: SocketAddr,
    fp: [u8; 32],
    rewrite: Rewrite,
) -> Option<()> {
    let (send, recv) = conn.accept_bi().await.ok()?;
    let mut from_client = FrameReader::Quic(FramedRead::new(recv, codec()));
    let mut to_client = FrameWriter::Quic(FramedWrite::new(send, codec()));
    let upstream = connect_quic(relay, Some(fp), Duration::from_secs(5))
        .await
        .ok()?;
    let (mut from_relay, mut to_relay, _guard) = upstream.into_parts();
    let sent: Arc<Mutex<Vec<ClientFrame>>> = Arc::default();
    let seen = sent.clone();
    let up = async move {
        while let Some(Ok(b)) = from_client.next().await {
            if let Ok(f) = wire::decode::<ClientFrame>(&b) {
                seen.lock().unwrap().push(f);
            }
            if to_relay.send(b).await.is_err() {
                break;
            }
        }
        to_relay.close().await;
    };
    let down = async move {
        while let Some(Ok(b)) = from_relay.next().await {
            let out = match wire::decode::<RelayFrame>(&b) {
                Ok(f) => {
                    let client = sent.lock().unwrap().clone();
                    Bytes::from(wire::encode(&rewrite(&client, f)).unwrap())
                }
                Err(_) => b,
            };
            if to_client.send(out).await.is_err() {
                break;
            }
        }
        to_client.close().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    conn.close(0u32.into(), b"bye");
    Some(())
}
