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

use async_nats::jetstream::stream::RawMessageErrorKind;

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

/// Wait until a stream and its bucket, just created, answer reads: a replicated one
/// serves nothing ("no responders") until its replicas elected a leader. A read of the
/// last message on `probe` (found or not) and of a key of the bucket means ready.
pub(crate) async fn until_ready(
    stream: &async_nats::jetstream::stream::Stream,
    probe: &str,
    bucket: &async_nats::jetstream::kv::Store,
) -> Result<(), ClusterError> {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let stream_up = match stream.get_last_raw_message_by_subject(probe).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        let up = match stream_up {
            Ok(()) => bucket
                .get("ready")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match up {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= until => {
                return Err(js_err("waiting for a new stream to answer")(e));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// The bucket named in `cfg`, created when missing.
pub(crate) async fn bucket(
    js: &async_nats::jetstream::Context,
    cfg: async_nats::jetstream::kv::Config,
    what: &'static str,
) -> Result<async_nats::jetstream::kv::Store, ClusterError> {
    match js.get_key_value(&cfg.bucket).await {
        Ok(kv) => Ok(kv),
        // Only a bucket that is not there is created: any other failure (no quorum, a
        // timeout) is said, not answered by creating over it.
        Err(e) if e.to_string().contains("not found") => js
            .create_key_value(cfg)
            .await
            .map_err(|e| js_err(what)(e.to_string())),
        Err(e) => Err(js_err(what)(e.to_string())),
    }
}

/// A header this relay writes on every message it stores.
pub(crate) fn header(
    m: &async_nats::HeaderMap,
    name: &'static str,
) -> Result<String, ClusterError> {
    m.get(name)
        .map(|v| v.as_str().to_string())
        .ok_or(ClusterError::Corrupt {
            what: "header",
            detail: format!("{name} missing"),
        })
}

/// The first message on `subject` at stream position `from` or later, if any. Read from
/// the stream's leader (not a direct get, which any replica answers, possibly behind): a
/// mailbox read just after a store, or a page just after an append, sees it.
pub(crate) async fn next_on_subject(
    stream: &async_nats::jetstream::stream::Stream,
    from: u64,
    subject: &str,
    what: &'static str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ClusterError> {
    match stream
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(subject)
        .send()
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(js_err(what)(e.to_string())),
    }
}

/// The last message on `subject`, from the stream's leader, if any.
pub(crate) async fn last_on_subject(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    what: &'static str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ClusterError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(js_err(what)(e.to_string())),
    }
}

/// The message at stream position `seq`, from the stream's leader, if it is still stored.
pub(crate) async fn at_position(
    stream: &async_nats::jetstream::stream::Stream,
    seq: u64,
    what: &'static str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ClusterError> {
    match stream.get_raw_message(seq).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(js_err(what)(e.to_string())),
    }
}

pub(crate) fn js_err(what: &'static str) -> impl FnOnce(String) -> ClusterError {
    move |detail| ClusterError::JetStream { what, detail }
}
