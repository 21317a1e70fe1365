//! Connecting to a relay: QUIC first, WebSocket over TLS as the fallback, the relay's
//! certificate pinned by fingerprint on both. Used by the daemon's links, by invite claims
//! and by tests that speak the raw protocol.

use claudemesh_schema::wire::{ALPN, MAX_FRAME};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::tls::{self, SERVER_NAME, SeenFingerprint};
use crate::transport::{FrameReader, FrameWriter, Transport, codec};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Try QUIC.
    pub quic: bool,
    /// Try WebSocket (after QUIC, if both).
    pub websocket: bool,
    /// Give up on the QUIC handshake after this long.
    pub quic_timeout: Duration,
    /// Give up on the WebSocket handshake after this long.
    pub ws_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            quic: true,
            websocket: true,
            quic_timeout: Duration::from_secs(3),
            ws_timeout: Duration::from_secs(5),
        }
    }
}

/// Connecting failed.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address did not resolve.
    #[error("cannot resolve relay address {addr}: {detail}")]
    Resolve {
        /// The address.
        addr: String,
        /// Detail.
        detail: String,
    },
    /// The relay presented a certificate other than the pinned one.
    #[error(
        "relay at {addr} presented a different certificate than the one pinned for it \
         (expected {expected}, got {got}); if the relay operator replaced its certificate, \
         re-join with a new invite"
    )]
    FingerprintMismatch {
        /// The address.
        addr: String,
        /// Pinned fingerprint.
        expected: String,
        /// Seen fingerprint.
        got: String,
    },
    /// The transport's handshake failed.
    #[error("{transport} connection to {addr} failed: {detail}")]
    Failed {
        /// Which transport.
        transport: &'static str,
        /// The address.
        addr: String,
        /// Detail.
        detail: String,
    },
    /// No transport was enabled.
    #[error("no transport enabled")]
    NoTransport,
}

/// An open connection to a relay.
#[derive(Debug)]
pub struct Connection {
    /// Incoming frames.
    pub reader: FrameReader,
    /// Outgoing frames.
    pub writer: FrameWriter,
    /// Which transport carried it.
    pub transport: Transport,
    /// The relay certificate's fingerprint.
    pub fingerprint: [u8; 32],
    /// The relay's address.
    pub remote: SocketAddr,
    quic: Option<(quinn::Endpoint, quinn::Connection)>,
}

impl Connection {
    /// Close the connection now.
    pub async fn close(mut self) {
        self.writer.close().await;
        if let Some((ep, conn)) = self.quic.take() {
            conn.close(0u32.into(), b"bye");
            ep.wait_idle().await;
        }
    }
}

/// Keeps a QUIC connection (and its endpoint) open after [`Connection::into_parts`];
/// dropping it closes the connection.
#[derive(Debug)]
pub struct ConnectionGuard(#[allow(dead_code)] Option<(quinn::Endpoint, quinn::Connection)>);

impl Connection {
    /// Split into reader and writer (to drive them from separate tasks).
    pub fn into_parts(self) -> (FrameReader, FrameWriter, ConnectionGuard) {
        (self.reader, self.writer, ConnectionGuard(self.quic))
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, ConnectError> {
    let mut it = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ConnectError::Resolve {
            addr: addr.to_string(),
            detail: e.to_string(),
        })?;
    it.next().ok_or_else(|| ConnectError::Resolve {
        addr: addr.to_string(),
        detail: "no addresses".into(),
    })
}

fn fp_text(fp: &[u8; 32]) -> String {
    claudemesh_schema::encoding::b64(fp)
}

fn failure(
    transport: &'static str,
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    seen: &SeenFingerprint,
    detail: String,
) -> ConnectError {
    let got = seen.lock().ok().and_then(|s| *s);
    if let (Some(expected), Some(got)) = (pin, got)
        && expected != got
    {
        return ConnectError::FingerprintMismatch {
            addr: addr.to_string(),
            expected: fp_text(&expected),
            got: fp_text(&got),
        };
    }
    ConnectError::Failed {
        transport,
        addr: addr.to_string(),
        detail,
    }
}

/// Connect to `addr`, trying QUIC then WebSocket as `opts` allow. `pin` is the expected
/// certificate fingerprint; `None` trusts whatever the relay presents (first use) and
/// reports it in [`Connection::fingerprint`].
///
/// A relay of several nodes is a comma-separated list of them (see
/// [`claudemesh_schema::invite::relay_addr_ok`]): each is tried in order until one
/// answers. A node presenting another certificate ends the attempt there (every node of
/// a relay presents the same one).
pub async fn connect(
    addr: &str,
    pin: Option<[u8; 32]>,
    opts: &ConnectOptions,
) -> Result<Connection, ConnectError> {
    let nodes = claudemesh_schema::invite::relay_nodes(addr);
    let [first, rest @ ..] = nodes.as_slice() else {
        return connect_node(addr, pin, opts, IDLE_TIMEOUT).await;
    };
    // Another node is ready to take the link: a silent one is given up on sooner.
    let idle = if rest.is_empty() {
        IDLE_TIMEOUT
    } else {
        NODES_IDLE_TIMEOUT
    };
    let mut last = match connect_node(first, pin, opts, idle).await {
        Ok(c) => return Ok(c),
        Err(e @ ConnectError::FingerprintMismatch { .. }) => return Err(e),
        Err(e) => e,
    };
    for node in rest {
        tracing::debug!(error = %last, next = %node, "relay node unreachable, trying the next");
        match connect_node(node, pin, opts, idle).await {
            Ok(c) => return Ok(c),
            Err(e @ ConnectError::FingerprintMismatch { .. }) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connect to one node.
async fn connect_node(
    addr: &str,
    pin: Option<[u8; 32]>,
    opts: &ConnectOptions,
    idle: Duration,
) -> Result<Connection, ConnectError> {
    let sa = resolve(addr).await?;
    let mut last = ConnectError::NoTransport;
    if opts.quic {
        match quic_with(sa, pin, opts.quic_timeout, idle).await {
            Ok(c) => return Ok(c),
            Err(e @ ConnectError::FingerprintMismatch { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(relay = %sa, error = %e, "quic failed, trying websocket");
                last = e;
            }
        }
    }
    if opts.websocket {
        match connect_ws(sa, pin, opts.ws_timeout).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connect over QUIC only.
pub async fn connect_quic(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    quic_with(addr, pin, timeout, IDLE_TIMEOUT).await
}

/// [`connect_quic`], dropping the connection after `idle` of silence.
async fn quic_with(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    timeout: Duration,
    idle: Duration,
) -> Result<Connection, ConnectError> {
    let seen: SeenFingerprint = Arc::new(Mutex::new(None));
    let fail = |d: String| failure("quic", addr, pin, &seen, d);
    let rustls_cfg =
        tls::client_config(pin, seen.clone(), &[ALPN]).map_err(|e| fail(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_cfg)
        .map_err(|e| fail(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(quic_transport(Some(CLIENT_KEEP_ALIVE), idle)));
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| fail(e.to_string()))?;
    let connecting = endpoint
        .connect_with(cfg, addr, SERVER_NAME)
        .map_err(|e| fail(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(_) => return Err(fail(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let (send, recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
    let fingerprint = seen.lock().ok().and_then(|s| *s).unwrap_or_default();
    Ok(Connection {
        reader: FrameReader::Quic(FramedRead::new(recv, codec())),
        writer: FrameWriter::Quic(FramedWrite::new(send, codec())),
        transport: Transport::Quic,
        fingerprint,
        remote: addr,
        quic: Some((endpoint, conn)),
    })
}

/// How often a client's QUIC connection sends a packet when it has nothing else to send.
/// A relay that restarted answers the next packet with a stateless reset (it keeps the
/// keys that recognise its old connection ids), so this bounds how long a client goes on
/// talking to a relay process that is gone: one small packet a second per idle link.
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Silence after which either side drops a QUIC connection (a relay machine that is gone
/// sends no reset).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a client of a relay of several nodes (the shorter of the two sides'
/// timeouts holds): a node killed, or its machine gone, is left for another within a
/// few seconds, at the price of a reconnect after a few seconds of network silence.
const NODES_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// QUIC transport settings shared by client and relay. Only clients send keep-alives
/// (`keep_alive`): their packets keep the connection alive for both sides, and a relay
/// with thousands of idle links sends nothing of its own. `idle`: silence after which
/// the connection is dropped.
pub(crate) fn quic_transport(
    keep_alive: Option<Duration>,
    idle: Duration,
) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive);
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    // One bidirectional stream per link, no unidirectional streams or datagrams: less
    // per-connection state on a relay holding thousands of idle links.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.datagram_receive_buffer_size(None);
    t
}

/// Connect over WebSocket (TLS, pinned) only.
pub async fn connect_ws(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    let seen: SeenFingerprint = Arc::new(Mutex::new(None));
    let fail = |d: String| failure("websocket", addr, pin, &seen, d);
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let cfg = tls::client_config(pin, seen.clone(), &[b"http/1.1"])
            .map_err(|e| fail(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let ws_cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            format!("wss://{SERVER_NAME}/ws"),
            tls,
            Some(ws_cfg),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        Ok::<_, ConnectError>(ws)
    };
    let ws = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r?,
        Err(_) => return Err(fail(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let fingerprint = seen.lock().ok().and_then(|s| *s).unwrap_or_default();
    let (w, r) = futures_util::StreamExt::split(ws);
    Ok(Connection {
        reader: FrameReader::WsClient(r),
        writer: FrameWriter::WsClient(w),
        transport: Transport::Websocket,
        fingerprint,
        remote: addr,
        quic: None,
    })
}
