//! The listeners: QUIC on the UDP port, TLS on the TCP port of the same number (serving
//! `/ws` for WebSocket links and `/health`), the expiry sweeper, and graceful shutdown.

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::get;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{ALPN, MAX_FRAME};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, DiskBlobs};
use crate::config::RelayConfig;
use crate::conn::serve;
use crate::hub::{Hub, lock};
use crate::limits::Slot;
use crate::store::{SqliteStore, Store, StoreError};
use crate::tls::{Identity, TlsError};
use crate::transport::{FrameReader, FrameWriter, Transport, codec};

/// Starting or running the relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The data directory could not be created.
    #[error("cannot create relay data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding a listener failed.
    #[error("cannot listen on {addr} ({what}): {source}; is another relay running there?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The NATS cluster could not be reached or set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The blob store failed.
    #[error(transparent)]
    Blobs(#[from] crate::blobs::BlobError),
}

/// A bound relay, ready to run.
#[derive(Debug)]
pub struct Relay<S: Store = SqliteStore> {
    hub: Arc<Hub<S>>,
    identity: Identity,
    tcp: Option<TcpListener>,
    quic: Option<quinn::Endpoint>,
    metrics: Option<TcpListener>,
    addr: SocketAddr,
}

impl Relay<SqliteStore> {
    /// Create the data directory, load or generate the certificate, open the store and
    /// bind the listeners (port 0 picks a free port, the same for UDP and TCP).
    pub async fn bind(cfg: RelayConfig) -> Result<Self, RelayError> {
        cfg.validate()?;
        create_private_dir(&cfg.data_dir)?;
        let db = cfg.data_dir.join("relay.db");
        let store = SqliteStore::open(&db, cfg.durability)?;
        let blobs = if cfg.blob_storage {
            let b = DiskBlobs::open(cfg.data_dir.join("blobs"), &db, store.writer())?;
            Some(Arc::new(b) as Arc<dyn BlobStore>)
        } else {
            None
        };
        Self::bind_with_stores(cfg, store, blobs).await
    }
}

impl Relay<crate::cluster::store::ClusterStore> {
    /// Like [`Relay::bind`] for a node of a cluster: the state is on the NATS JetStream
    /// cluster at `nats_urls` (shared by every node), the certificate in `data_dir` (the
    /// same on every node: invites pin one fingerprint). File chunks too are on the
    /// cluster (unless `blob_storage` is off).
    pub async fn bind_cluster(cfg: RelayConfig) -> Result<Self, RelayError> {
        use crate::cluster::store::{ClusterStore, ClusterStoreConfig};
        cfg.validate()?;
        create_private_dir(&cfg.data_dir)?;
        let client = crate::cluster::connect(&cfg.nats_urls).await?;
        let bus = crate::cluster::bus::Bus::new(client.clone(), &cfg.nats_prefix);
        let store = ClusterStore::open(
            client.clone(),
            &ClusterStoreConfig {
                prefix: cfg.nats_prefix.clone(),
                replicas: cfg.nats_replicas,
                message_ttl: Duration::from_secs(cfg.message_ttl_secs),
                duplicate_window: crate::cluster::mailbox::DUPLICATE_WINDOW,
                mesh_quota: crate::cluster::mailbox::Quota {
                    messages: cfg.mesh_quota_messages,
                    bytes: cfg.mesh_quota_bytes,
                },
                mesh_quota_op_bytes: cfg.mesh_quota_op_bytes,
                max_meshes: cfg.max_meshes,
                // Over every node, per clock hour: the hourly rate and the burst
                // together (each node's own bucket still spaces them out).
                creations_per_hour: if cfg.create_rate_per_hour == 0 {
                    0
                } else {
                    u64::from(cfg.create_rate_per_hour) + u64::from(cfg.create_burst)
                },
                node: bus.node().to_string(),
            },
        )
        .await?;
        let blobs = if cfg.blob_storage {
            let b = crate::cluster::blobs::ClusterBlobs::open(
                client.clone(),
                &cfg.nats_prefix,
                cfg.nats_replicas,
                (cfg.mesh_quota_blob_bytes, cfg.blob_quota_bytes),
            )
            .await?;
            Some(Arc::new(b) as Arc<dyn BlobStore>)
        } else {
            None
        };
        let tokens = crate::cluster::tokens::ClusterTokens::open(
            client,
            &cfg.nats_prefix,
            cfg.nats_replicas,
        )
        .await?;
        // Tokens issued into this node's own database before it ran on the cluster are
        // not the cluster's: said once, so an operator is not left wondering.
        if let Ok(old) = crate::admission::list(&cfg.data_dir.join("relay.db"))
            && !old.is_empty()
        {
            tracing::warn!(
                tokens = old.len(),
                "relay.db holds creation tokens, which a node of a cluster does not use: issue them again with `claudemesh-relay token create` and this node's config (store = \"nats\")"
            );
        }
        Self::bind_all(cfg, store, blobs, Some((Arc::new(bus), tokens))).await
    }
}

fn create_private_dir(path: &std::path::Path) -> Result<(), RelayError> {
    let err = |source| RelayError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    // Durably: the store's own syncs cover the files inside, not the directory's name.
    crate::durable::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

impl<S: Store> Relay<S> {
    /// Like [`Relay::bind`] with another store, and no blob store: chunk frames are
    /// answered `storage_off` (see [`Relay::bind_with_stores`]).
    pub async fn bind_with_store(cfg: RelayConfig, store: S) -> Result<Self, RelayError> {
        Self::bind_with_stores(cfg, store, None).await
    }

    /// Like [`Relay::bind`] with another store and blob store (`None`: chunk frames are
    /// answered `storage_off`, whatever `blob_storage` says).
    pub async fn bind_with_stores(
        cfg: RelayConfig,
        store: S,
        blobs: Option<Arc<dyn BlobStore>>,
    ) -> Result<Self, RelayError> {
        Self::bind_all(cfg, store, blobs, None).await
    }

    async fn bind_all(
        cfg: RelayConfig,
        store: S,
        blobs: Option<Arc<dyn BlobStore>>,
        cluster: Option<(
            Arc<crate::cluster::bus::Bus>,
            crate::cluster::tokens::ClusterTokens,
        )>,
    ) -> Result<Self, RelayError> {
        let identity =
            Identity::load_or_generate(&cfg.data_dir, cfg.cert.as_deref(), cfg.key.as_deref())?;
        let snap = store.load()?;
        let (tcp, quic, addr) = bind_sockets(&cfg, &identity).await?;
        let metrics = match cfg.metrics_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| RelayError::Bind {
                            addr,
                            what: "tcp (metrics)",
                            source,
                        })?,
                )
            }
            None => None,
        };
        let mut hub = Hub::new(store, cfg, snap);
        if let Some((bus, tokens)) = cluster {
            hub.leases = Mutex::new(crate::cluster::bus::Leases::new(bus.node(), Instant::now()));
            hub.admission.on_cluster(tokens);
            hub.bus = Some(bus);
        }
        if let Some(b) = blobs {
            let stored = b.usage()?;
            hub = hub.with_blobs(b, &stored);
        }
        let hub = Arc::new(hub);
        Ok(Self {
            hub,
            identity,
            tcp,
            quic,
            metrics,
            addr,
        })
    }

    /// The address clients connect to (`host:port`, both transports).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// SHA-256 fingerprint of the relay certificate (what invites pin).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.identity.fingerprint
    }

    /// Where `/metrics` and the detailed `/health` are served (`metrics_listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Run until `shutdown` is cancelled, then close links, drain and flush the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let hub = self.hub.clone();
        let tracker = hub.tasks.clone();
        tracing::info!(
            addr = %self.addr,
            quic = self.quic.is_some(),
            websocket = self.tcp.is_some(),
            fingerprint = %claudemesh_schema::encoding::b64(&self.identity.fingerprint),
            "relay listening"
        );
        if let Some(ep) = self.quic.clone() {
            tracker.spawn(quic_loop(hub.clone(), ep));
        }
        if let Some(tcp) = self.tcp {
            let tls = Arc::new(self.identity.server_config(&[b"http/1.1"])?);
            tracker.spawn(tcp_loop(hub.clone(), tcp, tls, self.identity.fingerprint));
        }
        tracker.spawn(sweeper(hub.clone()));
        if hub.bus.is_some() {
            tracker.spawn(hub.clone().follow_bus());
            tracker.spawn(hub.clone().follow_nodes());
        }
        if let Some(l) = self.metrics {
            if let Ok(addr) = l.local_addr() {
                tracing::info!(%addr, "metrics listening (plain HTTP)");
            }
            tracker.spawn(metrics_loop(hub.clone(), l));
        }
        shutdown.cancelled().await;
        tracing::info!("relay shutting down");
        hub.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 5 s");
        }
        if let Some(ep) = &self.quic {
            ep.close(0u32.into(), b"relay shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        // Everything acknowledged is committed already; this waits for queued
        // bookkeeping (presence, acks) too.
        if let Err(e) = crate::store::flushed(&hub.store).await {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Run in the background on the current runtime.
    pub fn spawn(self) -> RelayHandle {
        let addr = self.addr;
        let fingerprint = self.identity.fingerprint;
        let metrics = self.metrics_addr();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(self.run(cancel.clone()));
        RelayHandle {
            addr,
            fingerprint,
            metrics,
            cancel,
            task: Some(task),
        }
    }
}

async fn bind_sockets(
    cfg: &RelayConfig,
    identity: &Identity,
) -> Result<(Option<TcpListener>, Option<quinn::Endpoint>, SocketAddr), RelayError> {
    let quic_config = || -> Result<quinn::ServerConfig, RelayError> {
        let tls = identity.server_config(&[ALPN])?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        sc.transport_config(Arc::new(crate::client::quic_transport(
            None,
            crate::client::IDLE_TIMEOUT,
        )));
        Ok(sc)
    };
    // With port 0 the TCP port is chosen first and UDP must get the same number; retry
    // if that UDP port happens to be taken.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tcp = if cfg.websocket {
            Some(
                TcpListener::bind(cfg.listen)
                    .await
                    .map_err(|source| RelayError::Bind {
                        addr: cfg.listen,
                        what: "tcp",
                        source,
                    })?,
            )
        } else {
            None
        };
        let addr = match &tcp {
            Some(t) => t.local_addr().map_err(|source| RelayError::Bind {
                addr: cfg.listen,
                what: "tcp",
                source,
            })?,
            None => cfg.listen,
        };
        if !cfg.quic {
            return Ok((tcp, None, addr));
        }
        match std::net::UdpSocket::bind(addr) {
            Ok(sock) => {
                let addr = sock.local_addr().map_err(|source| RelayError::Bind {
                    addr,
                    what: "udp",
                    source,
                })?;
                let ep = quinn::Endpoint::new(
                    endpoint_config(&cfg.data_dir)?,
                    Some(quic_config()?),
                    sock,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(|source| RelayError::Bind {
                    addr,
                    what: "udp",
                    source,
                })?;
                return Ok((tcp, Some(ep), addr));
            }
            Err(e) if cfg.listen.port() == 0 && tcp.is_some() && attempts < 20 => {
                tracing::debug!(error = %e, "udp port taken, picking another");
                continue;
            }
            Err(source) => {
                return Err(RelayError::Bind {
                    addr,
                    what: "udp",
                    source,
                });
            }
        }
    }
}

/// The QUIC endpoint's keys, kept in the data directory so that after a restart (or a
/// crash) the relay tells clients of the previous process at once that their connection
/// is gone, instead of leaving them to an idle timeout. Both are needed: the reset key
/// makes the reset, and the connection-ID generator's key lets the new process recognise
/// the old process's connection IDs as its own (quinn drops packets whose ID it does not
/// recognise without answering, so a fresh generator key meant no reset at all).
fn endpoint_config(data_dir: &std::path::Path) -> Result<quinn::EndpointConfig, RelayError> {
    let path = data_dir.join("quic-reset.key");
    let bytes = match std::fs::read(&path) {
        Ok(b) if b.len() == 64 => b,
        _ => {
            let b = claudemesh_schema::crypto::random_bytes::<64>().to_vec();
            crate::tls::write_private(&path, &b)?;
            b
        }
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
    // The generator's key, derived from the same secret (one file, one thing to keep).
    let tag = ring::hmac::sign(&reset, b"claudemesh quic connection-id generator");
    let mut k = [0u8; 8];
    k.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(k);
    let mut cfg = quinn::EndpointConfig::new(Arc::new(reset));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(cfg)
}

async fn quic_loop<S: Store>(hub: Arc<Hub<S>>, ep: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = hub.shutdown.cancelled() => return,
            i = ep.accept() => match i { Some(i) => i, None => return },
        };
        let remote = incoming.remote_address();
        // Counted before the handshake: a refused address costs one packet, no state.
        let slot = match hub.admit(remote.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%remote, why, "connection refused");
                incoming.refuse();
                continue;
            }
        };
        let hello_by = Instant::now() + Duration::from_secs(hub.cfg.hello_timeout_secs);
        let hub2 = hub.clone();
        hub.tasks.spawn(async move {
            let hub = hub2;
            let deadline = tokio::time::Instant::from_std(hello_by);
            let conn = match tokio::time::timeout_at(deadline, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "quic handshake failed");
                    hub.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => return,
            };
            let Ok(Ok((send, recv))) = tokio::time::timeout_at(deadline, conn.accept_bi()).await
            else {
                conn.close(1u32.into(), b"no stream opened");
                return;
            };
            serve(
                hub,
                // Small initial buffers: most links are idle; buffers grow with traffic.
                FrameReader::Quic(FramedRead::with_capacity(recv, codec(), 512)),
                FrameWriter::Quic(FramedWrite::with_capacity(send, codec(), 512)),
                remote,
                Transport::Quic,
                slot,
                hello_by,
            )
            .await;
            // The writer finished its stream and waited for the peer to have it.
            conn.close(0u32.into(), b"bye");
        });
    }
}

/// What one TLS connection's HTTP handlers need.
struct HttpState<S> {
    hub: Arc<Hub<S>>,
    remote: SocketAddr,
    fingerprint: [u8; 32],
    /// Taken by the WebSocket upgrade, which keeps it for the link's life.
    slot: Arc<Mutex<Option<Slot>>>,
    hello_by: Instant,
}

impl<S> Clone for HttpState<S> {
    fn clone(&self) -> Self {
        Self {
            hub: self.hub.clone(),
            remote: self.remote,
            fingerprint: self.fingerprint,
            slot: self.slot.clone(),
            hello_by: self.hello_by,
        }
    }
}

async fn tcp_loop<S: Store>(
    hub: Arc<Hub<S>>,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    fingerprint: [u8; 32],
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = hub.shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match hub.admit(remote.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%remote, why, "connection refused");
                drop(stream);
                continue;
            }
        };
        let hello_by = Instant::now() + Duration::from_secs(hub.cfg.hello_timeout_secs);
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let hub2 = hub.clone();
        hub.tasks.spawn(async move {
            let hub = hub2;
            let deadline = tokio::time::Instant::from_std(hello_by);
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "tls handshake failed");
                    hub.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => return,
            };
            let slot = Arc::new(Mutex::new(Some(slot)));
            let state = HttpState {
                hub: hub.clone(),
                remote,
                fingerprint,
                slot: slot.clone(),
                hello_by,
            };
            let mut app = Router::new()
                .route("/ws", get(ws_handler::<S>))
                .route("/health", get(health::<S>));
            if hub.cfg.metrics_on_tls_port {
                app = app.route("/metrics", get(metrics::<S>));
            }
            let app = app.with_state(state);
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move {
                        use tower_service::Service as _;
                        app.call(req.map(axum::body::Body::new)).await
                    }
                });
            // The HTTP phase (requests up to the WebSocket upgrade) must end before the
            // hello deadline: a connection that sends nothing, dribbles its headers or
            // only polls /health is closed then. (Keep-alive stays on: turning it off
            // would answer the upgrade with `Connection: close`.)
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "http connection error");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(%remote, "no request before the hello deadline; closing");
                }
                _ = hub.shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

async fn ws_handler<S: Store>(
    State(st): State<HttpState<S>>,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    let Some(slot) = lock(&st.slot).take() else {
        return (axum::http::StatusCode::CONFLICT, "one link per connection").into_response();
    };
    // Accept somewhat more than MAX_FRAME so an oversized frame gets a clear error frame
    // from the protocol layer instead of a bare close.
    let hub = st.hub.clone();
    // The write buffer is bounded too: the WebSocket layer answers pings itself, and a
    // peer that pings without reading must not grow it (past the bound, writes fail and
    // the link ends).
    ws.max_message_size(MAX_FRAME * 2)
        .max_frame_size(MAX_FRAME * 2)
        .max_write_buffer_size(MAX_FRAME * 2 + (128 << 10))
        .on_upgrade(move |socket| {
            let (w, r) = futures_util::StreamExt::split(socket);
            let fut = serve(
                st.hub,
                FrameReader::WsServer(r),
                FrameWriter::WsServer(w),
                st.remote,
                Transport::Websocket,
                slot,
                st.hello_by,
            );
            async move {
                // Track the link so shutdown waits for it.
                let _ = hub.tasks.spawn(fut).await;
            }
        })
        .into_response()
}

/// `/health` on the public port: alive, and which relay (the fingerprint invites pin).
/// Activity levels are for the metrics listener.
async fn health<S: Store>(State(st): State<HttpState<S>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": claudemesh_schema::wire::PROTOCOL_VERSION,
        "fingerprint": claudemesh_schema::encoding::b64(&st.fingerprint),
    }))
}

/// `/health` on the metrics listener, with the counts.
fn health_detail<S: Store>(hub: &Hub<S>) -> serde_json::Value {
    let (connections, preauth) = hub.gate.counts();
    serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": claudemesh_schema::wire::PROTOCOL_VERSION,
        "meshes": hub.mesh_count(),
        "links": hub.stats.links.load(Ordering::Relaxed),
        "connections": connections,
        "preauth_connections": preauth,
        "queued_bytes": hub.budget.used(),
        "stored_bytes": hub.disk.envelopes.load(Ordering::Relaxed),
        "op_bytes": hub.disk.ops.load(Ordering::Relaxed),
        "blob_bytes": lock(&hub.blob_usage).totals().1,
        "envelopes_routed": hub.stats.envelopes.load(Ordering::Relaxed),
        "handshake_failures": hub.stats.handshake_failures.load(Ordering::Relaxed),
    })
}

async fn metrics<S: Store>(State(st): State<HttpState<S>>) -> impl IntoResponse {
    metrics_response(&st.hub)
}

fn metrics_response<S: Store>(hub: &Hub<S>) -> impl IntoResponse + use<S> {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(hub),
    )
}

/// Plain-HTTP `/metrics` and `/health` for scrapers (`metrics_listen`).
async fn metrics_loop<S: Store>(hub: Arc<Hub<S>>, tcp: TcpListener) {
    // Scrapers are few: bound the connections, and each one's life.
    let slots = Arc::new(tokio::sync::Semaphore::new(32));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
        };
        let hub2 = hub.clone();
        hub.tasks.spawn(async move {
            let hub = hub2;
            let _slot = slot;
            let shutdown = hub.shutdown.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hub = hub.clone();
                    async move {
                        let resp = match req.uri().path() {
                            "/metrics" => metrics_response(&hub).into_response(),
                            "/health" => axum::Json(health_detail(&hub)).into_response(),
                            _ => (axum::http::StatusCode::NOT_FOUND, "not found").into_response(),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(10), conn) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn sweeper<S: Store>(hub: Arc<Hub<S>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(hub.cfg.sweep_secs));
    loop {
        tokio::select! {
            biased;
            _ = hub.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let op_ids_before = now - hub.cfg.op_dedupe_secs as i64 * 1000;
        match hub.store.prune(now, op_ids_before).await {
            Ok(pruned) => {
                for (mesh, (n, bytes)) in pruned {
                    tracing::info!(mesh = %mesh.short(), envelopes = n, "expired undelivered envelopes dropped");
                    if let Some(e) = hub.mesh(&mesh) {
                        let mut st = lock(&e.state);
                        st.free(&hub.disk, n, bytes);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
        // On a cluster, what other nodes changed and this node may have missed on the bus
        // (a dropped message): each mesh with a link here is read again, so a member
        // removed through another node is unlinked here within a sweep.
        if hub.bus.is_some() {
            for (mesh, e) in hub.all_meshes() {
                if lock(&e.state).links.is_empty() {
                    continue;
                }
                if let Err(err) = hub.follow(&mesh).await {
                    tracing::warn!(mesh = %mesh.short(), error = %err, "cannot read a mesh from the cluster");
                }
            }
        }
        // On a cluster, other nodes store and free a mesh's envelopes too: each mesh's
        // count comes from the store, so the quota holds cluster-wide (to within what the
        // nodes accept between two sweeps) and frees through any node reach every node.
        match hub.store.usage_now().await {
            Ok(Some(usage)) => {
                for (mesh, e) in hub.all_meshes() {
                    let u = usage.get(&mesh).copied().unwrap_or_default();
                    lock(&e.state).set_stored(&hub.disk, u);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot count what the cluster stores"),
        }
        // Claims made or decided through other nodes that this node missed live.
        match hub.store.claims_now().await {
            Ok(Some(claims)) => hub.follow_claims(claims, now).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the cluster's claims"),
        }
        hub.expire_claims(now);
        if let Some(b) = &hub.blobs {
            match b.sweep(now).await {
                Ok(freed) => {
                    for (mesh, (n, _)) in &freed {
                        tracing::info!(mesh = %mesh.short(), chunks = n, "expired file chunks dropped");
                    }
                    lock(&hub.blob_usage).free(&freed);
                }
                Err(e) => tracing::warn!(error = %e, "file chunk expiry sweep failed"),
            }
        }
    }
}

/// A relay running in the background.
#[derive(Debug)]
pub struct RelayHandle {
    addr: SocketAddr,
    fingerprint: [u8; 32],
    metrics: Option<SocketAddr>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), RelayError>>>,
}

impl RelayHandle {
    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The metrics listener's address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stop gracefully and wait.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Stop without waiting for connections to close (as close to a crash as an
    /// in-process relay gets: nothing more is written after this returns).
    pub fn abort(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
