//! Relays as nodes over NATS JetStream (issue 17; brief §7: an existing distributed
//! engine, never a home-made cluster protocol). The single relay on SQLite stays the
//! default; this module is the clustered engine's side of the relay's state, built up
//! piece by piece. Today it holds the shared-state op log ([`oplog`]: each mesh's ops get
//! dense, gap-free sequence numbers in one total order however many relay nodes append
//! concurrently, durable — acknowledged by JetStream, replicated — before the author is
//! told) and store-and-forward ([`mailbox`]: an envelope stored through one node is
//! delivered through any other, once).
//!
//! What it is not (yet): the relay's [`crate::store::Store`] for a cluster. Live fan-out
//! across nodes, rosters, cluster-wide quotas and the relay nodes themselves come next, on
//! the same engine (see ARCHITECTURE.md, "Beyond one relay").

pub mod mailbox;
pub mod oplog;

/// A cluster operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Connecting to the NATS cluster failed.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// The URL tried (no credentials).
        url: String,
        /// What the client said.
        detail: String,
    },
    /// A JetStream request failed (the stream or bucket, what was asked, what the server
    /// said).
    #[error("JetStream {what} failed: {detail}")]
    JetStream {
        /// What was asked.
        what: &'static str,
        /// What the server or client said.
        detail: String,
    },
    /// Appending lost the race for the mesh's head too many times in a row (other nodes
    /// keep appending): the author's daemon sends the op again.
    #[error("the op log of mesh {mesh} is too contended; try again")]
    Contended {
        /// The mesh, short.
        mesh: String,
    },
    /// A stored op is not what this relay writes (edited, or another program's).
    #[error("stored op {what} is corrupt: {detail}")]
    Corrupt {
        /// Which part.
        what: &'static str,
        /// Detail.
        detail: String,
    },
}

/// Connect to a NATS cluster through any of `urls` (the client fails over between them and
/// reconnects for as long as it lives).
pub async fn connect(urls: &[String]) -> Result<async_nats::Client, ClusterError> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e: std::io::Error| ClusterError::Connect {
                    url: u.clone(),
                    detail: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Connect {
            url: urls.join(","),
            detail: e.to_string(),
        })
}

/// The server leading a stream's replicas now (its `server_name`), if it has one.
pub async fn stream_leader(
    client: async_nats::Client,
    stream: &str,
) -> Result<Option<String>, ClusterError> {
    let js = async_nats::jetstream::new(client);
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| js_err("finding a stream")(e.to_string()))?;
    let info = s
        .info()
        .await
        .map_err(|e| js_err("reading a stream's state")(e.to_string()))?;
    Ok(info.cluster.as_ref().and_then(|c| c.leader.clone()))
}

/// Wait until a stream or bucket just created answers reads: a replicated one serves
/// nothing ("no responders") until its replicas elected a leader. `probe` is a read whose
/// answer (found or not) means ready.
pub(crate) async fn until_ready<F, Fut>(
    what: &'static str,
    mut probe: F,
) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= until => return Err(js_err(what)(e)),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

pub(crate) fn js_err(what: &'static str) -> impl FnOnce(String) -> ClusterError {
    move |detail| ClusterError::JetStream { what, detail }
}
