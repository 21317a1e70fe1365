//! One interface over the two transports: a [`FrameReader`] and a [`FrameWriter`] move
//! whole frames, whether they ride a QUIC stream (4-byte length prefix) or WebSocket
//! binary messages. Both sides (relay and clients) use these.

use bytes::Bytes;
use claudemesh_schema::wire::MAX_FRAME;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt as _};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// Client-side WebSocket over pinned TLS.
pub(crate) type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// QUIC (UDP).
    Quic,
    /// WebSocket over TLS (TCP).
    Websocket,
}

impl Transport {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Websocket => "websocket",
        }
    }
}

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The peer announced or sent a frame over [`MAX_FRAME`].
    #[error("frame exceeds the {MAX_FRAME} byte limit")]
    TooLarge,
    /// A WebSocket text message (frames are binary).
    #[error("text message where a binary frame was expected")]
    NotBinary,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(String),
}

/// The QUIC framing: a 4-byte big-endian length, then that many bytes (at most [`MAX_FRAME`]).
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Receives whole frames.
#[derive(Debug)]
pub enum FrameReader {
    /// QUIC stream with length prefixes.
    Quic(FramedRead<quinn::RecvStream, LengthDelimitedCodec>),
    /// Client-side WebSocket.
    WsClient(SplitStream<ClientWs>),
    /// Relay-side WebSocket.
    WsServer(SplitStream<axum::extract::ws::WebSocket>),
}

/// Why a QUIC read failed, in words that tell a restarted relay from a silent one (quinn's
/// own text says "connection lost" for both).
fn quic_read_error(e: &std::io::Error) -> String {
    use quinn::ConnectionError as C;
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<quinn::ReadError>())
    {
        Some(quinn::ReadError::ConnectionLost(C::Reset)) => {
            "the relay no longer knows this connection (a stateless reset: it restarted)".into()
        }
        Some(quinn::ReadError::ConnectionLost(C::TimedOut)) => {
            "nothing heard from the relay within the idle timeout".into()
        }
        Some(quinn::ReadError::ConnectionLost(c)) => c.to_string(),
        _ => e.to_string(),
    }
}

impl FrameReader {
    /// The next frame; `None` when the peer closed cleanly.
    pub async fn next(&mut self) -> Option<Result<Bytes, ReadError>> {
        let mut controls = 0u32;
        loop {
            match self {
                Self::Quic(r) => {
                    return r.next().await.map(|res| {
                        res.map(|b| b.freeze()).map_err(|e| {
                            if e.get_ref().is_some_and(|i| {
                                i.downcast_ref::<tokio_util::codec::LengthDelimitedCodecError>()
                                    .is_some()
                            }) {
                                ReadError::TooLarge
                            } else {
                                ReadError::Io(quic_read_error(&e))
                            }
                        })
                    });
                }
                Self::WsClient(r) => {
                    use tokio_tungstenite::tungstenite::{Error as E, Message as M};
                    match r.next().await? {
                        Ok(M::Binary(b)) => return Some(check_len(b)),
                        Ok(M::Text(_)) => return Some(Err(ReadError::NotBinary)),
                        Ok(M::Close(_)) => return None,
                        Ok(_) => continue,
                        Err(E::Capacity(_)) => return Some(Err(ReadError::TooLarge)),
                        Err(E::ConnectionClosed | E::AlreadyClosed) => return None,
                        Err(e) => return Some(Err(ReadError::Io(e.to_string()))),
                    }
                }
                Self::WsServer(r) => {
                    use axum::extract::ws::Message as M;
                    match r.next().await? {
                        Ok(M::Binary(b)) => return Some(check_len(b)),
                        Ok(M::Text(_)) => return Some(Err(ReadError::NotBinary)),
                        Ok(M::Close(_)) => return None,
                        // WebSocket pings and pongs are answered below the protocol, so
                        // they bypass its frame budgets: a run of them ends the link.
                        Ok(_) => {
                            controls += 1;
                            if controls > MAX_CONTROL_RUN {
                                return Some(Err(ReadError::Io(
                                    "too many WebSocket control frames in a row".into(),
                                )));
                            }
                            continue;
                        }
                        Err(e) => {
                            let s = e.to_string();
                            if s.contains("Space limit exceeded") || s.contains("too long") {
                                return Some(Err(ReadError::TooLarge));
                            }
                            return Some(Err(ReadError::Io(s)));
                        }
                    }
                }
            }
        }
    }
}

/// WebSocket control frames (ping, pong) accepted between two protocol frames.
const MAX_CONTROL_RUN: u32 = 16;

fn check_len(b: Bytes) -> Result<Bytes, ReadError> {
    if b.len() > MAX_FRAME {
        Err(ReadError::TooLarge)
    } else {
        Ok(b)
    }
}

/// Sends whole frames.
#[derive(Debug)]
pub enum FrameWriter {
    /// QUIC stream with length prefixes.
    Quic(FramedWrite<quinn::SendStream, LengthDelimitedCodec>),
    /// Client-side WebSocket.
    WsClient(SplitSink<ClientWs, tokio_tungstenite::tungstenite::Message>),
    /// Relay-side WebSocket.
    WsServer(SplitSink<axum::extract::ws::WebSocket, axum::extract::ws::Message>),
}

impl FrameWriter {
    /// Queue a frame without flushing.
    pub async fn feed(&mut self, frame: Bytes) -> Result<(), ReadError> {
        let r = match self {
            Self::Quic(w) => w.feed(frame).await.map_err(|e| e.to_string()),
            Self::WsClient(w) => w
                .feed(tokio_tungstenite::tungstenite::Message::Binary(frame))
                .await
                .map_err(|e| e.to_string()),
            Self::WsServer(w) => w
                .feed(axum::extract::ws::Message::Binary(frame))
                .await
                .map_err(|e| e.to_string()),
        };
        r.map_err(ReadError::Io)
    }

    /// Flush queued frames.
    pub async fn flush(&mut self) -> Result<(), ReadError> {
        let r = match self {
            Self::Quic(w) => SinkExt::<Bytes>::flush(w)
                .await
                .map_err(|e: std::io::Error| e.to_string()),
            Self::WsClient(w) => w.flush().await.map_err(|e| e.to_string()),
            Self::WsServer(w) => w.flush().await.map_err(|e| e.to_string()),
        };
        r.map_err(ReadError::Io)
    }

    /// Send one frame and flush.
    pub async fn send(&mut self, frame: Bytes) -> Result<(), ReadError> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Close the sending side (QUIC: finish the stream; WebSocket: close frame).
    pub async fn close(&mut self) {
        match self {
            Self::Quic(w) => {
                let _ = SinkExt::<Bytes>::flush(w).await;
                let s = w.get_mut();
                if s.finish().is_ok() {
                    // Wait until the peer has everything (or gave up), so closing the
                    // connection afterwards cannot cut off the last frames.
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_secs(3), s.stopped()).await;
                }
            }
            Self::WsClient(w) => {
                let _ = w.close().await;
            }
            Self::WsServer(w) => {
                let _ = w.close().await;
            }
        }
    }
}
