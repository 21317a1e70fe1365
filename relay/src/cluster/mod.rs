//! Relays as nodes over NATS JetStream (issue 17; brief §7: an existing distributed
//! engine, never a home-made cluster protocol). The single relay on SQLite stays the
//! default; `claudemesh-relay --store nats` runs a node of a cluster, whose state is all
//! here: the shared-state op log ([`oplog`]: each mesh's ops get dense, gap-free sequence
//! numbers in one total order however many relay nodes append concurrently, durable —
//! acknowledged by JetStream, replicated — before the author is told), store-and-forward
//! ([`mailbox`]: an envelope stored through one node is delivered through any other,
//! once), the rest of the relay's [`crate::store::Store`] ([`store`]: rosters, invites,
//! claims, presence, nonces, receipts, snapshots), file chunks ([`blobs`]) and the live
//! traffic between nodes ([`bus`], core NATS).
//!
//! Quotas hold over every node ([`counts`]: shared counts changed by compare-and-set),
//! and so do mesh-creation tokens ([`tokens`]); per-connection limits guard each node and
//! count per node.
//!
//! What it is not: a cluster protocol of its own. Membership, replication and failover
//! are JetStream's; nodes only say they are alive ([`bus::Leases`]).

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::RawMessageErrorKind;
use bytes::Bytes;

pub mod blobs;
pub mod bus;
pub mod counts;
pub mod mailbox;
pub mod oplog;
pub mod store;
pub mod tokens;

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
    /// Stored state is not what this relay writes (edited, or another program's).
    #[error("stored {what} is corrupt: {detail}")]
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
                .map_err(|_: std::io::Error| ClusterError::Connect {
                    url: redacted(u),
                    // The parser's message may quote the URL, password and all.
                    detail: "not a NATS URL (nats://[user:password@]host:port)".into(),
                })
        })
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Connect {
            url: urls
                .iter()
                .map(|u| redacted(u))
                .collect::<Vec<_>>()
                .join(","),
            detail: e.to_string(),
        })
}

/// A NATS URL without its credentials (`nats://***@host:4222`), for messages and logs.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_string(),
    };
    if scheme.is_empty() {
        host
    } else {
        format!("{scheme}://{host}")
    }
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

/// A read that may find nothing: `None` when the server says there is no such message.
fn found<T>(
    r: Result<T, async_nats::jetstream::stream::RawMessageError>,
    what: &'static str,
) -> Result<Option<T>, ClusterError> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(js_err(what)(e.to_string())),
    }
}

/// Retry `probe` until it answers: a replicated stream or bucket, just created, serves
/// nothing ("no responders") until its replicas elected a leader.
async fn until_answers<F, Fut>(mut probe: F) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ClusterError>>,
{
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Wait until a stream and its bucket, just created, answer reads: a read of the last
/// message on `probe` (found or not) and of a key of the bucket.
pub(crate) async fn until_ready(
    stream: &async_nats::jetstream::stream::Stream,
    probe: &str,
    bucket: &kv::Store,
) -> Result<(), ClusterError> {
    until_answers(|| async {
        found(
            stream.get_last_raw_message_by_subject(probe).await,
            "waiting for a new stream to answer",
        )?;
        until_bucket_answers(bucket).await
    })
    .await
}

async fn until_bucket_answers(bucket: &kv::Store) -> Result<(), ClusterError> {
    bucket
        .get("ready")
        .await
        .map(|_| ())
        .map_err(|e| js_err("waiting for a new bucket to answer")(e.to_string()))
}

/// Wait until a bucket, just created, answers reads.
pub(crate) async fn until_bucket_ready(bucket: &kv::Store) -> Result<(), ClusterError> {
    until_answers(|| until_bucket_answers(bucket)).await
}

/// The newest value of every key of `bucket` under `prefix` (`""`: all), with its
/// revision; deleted keys left out. One pass of an ordered consumer over the bucket's
/// stream, filtered by subject: the server sends only what is under the prefix.
pub(crate) async fn entries_under(
    client: &async_nats::Client,
    bucket: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, Bytes, u64)>, ClusterError> {
    use futures_util::StreamExt as _;
    let what = "listing a bucket";
    let consumer = bucket
        .stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}{prefix}>", bucket.prefix),
            replay_policy: async_nats::jetstream::consumer::ReplayPolicy::Instant,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err(what)(e.to_string()))?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| js_err(what)(e.to_string()))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| js_err(what)(e.to_string()))?;
        let info = m.info().map_err(|e| js_err(what)(e.to_string()))?;
        let (pending, revision) = (info.pending, info.stream_sequence);
        let removed = m.headers.as_ref().is_some_and(|h| {
            h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some()
        });
        if !removed && let Some(key) = m.subject.as_str().strip_prefix(bucket.prefix.as_str()) {
            out.push((key.to_string(), m.payload.clone(), revision));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Bytes from lower-case hex (how ids are written into subjects and keys).
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether a failed JetStream request may succeed if asked again soon: the cluster is
/// still forming (a server not yet a peer, no meta leader yet) or a leader is being
/// elected.
fn transient(e: &ClusterError) -> bool {
    let ClusterError::JetStream { detail, .. } = e else {
        return false;
    };
    [
        "no suitable peers",
        "peer offline",
        "no responders",
        "timed out",
        "10008",
    ]
    .iter()
    .any(|t| detail.contains(t))
}

/// Run `f` until it succeeds or fails for good, for at most 30 s: a relay node started
/// with (or just after) its NATS servers waits for their cluster to form.
pub(crate) async fn settled<T, F, Fut>(mut f: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() < until => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

/// Bring the stream `name`, found already there, to the replicas and age this node is
/// configured with: an operator who changed `nats_replicas` or `message_ttl_secs` gets
/// what the config says, not the first node's settings for ever (JetStream changes both
/// in place). A change the server refuses is said and left: the node runs on the
/// stream as it is.
pub(crate) async fn keep_config(
    js: &async_nats::jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: std::time::Duration,
) {
    let info = match js.get_stream(name).await {
        Ok(mut s) => match s.info().await {
            Ok(i) => i.config.clone(),
            Err(e) => {
                tracing::warn!(stream = name, error = %e, "cannot read a stream's configuration");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(stream = name, error = %e, "cannot read a stream's configuration");
            return;
        }
    };
    if info.num_replicas == replicas && info.max_age == max_age {
        return;
    }
    tracing::warn!(
        stream = name,
        replicas_before = info.num_replicas,
        replicas,
        max_age_before_secs = info.max_age.as_secs(),
        max_age_secs = max_age.as_secs(),
        "changing a stream to this node's configuration (configure every node alike)"
    );
    let mut want = info;
    want.num_replicas = replicas;
    want.max_age = max_age;
    if let Err(e) = js.update_stream(want).await {
        tracing::warn!(stream = name, error = %e, "JetStream refused the stream's new configuration; it stays as it was");
    }
}

/// The bucket named in `cfg`, created when missing (and brought to `cfg`'s replicas and
/// age when found: [`keep_config`]).
pub(crate) async fn bucket(
    js: &async_nats::jetstream::Context,
    cfg: kv::Config,
    what: &'static str,
) -> Result<kv::Store, ClusterError> {
    let kv = settled(|| async {
        match js.get_key_value(&cfg.bucket).await {
            Ok(kv) => Ok(kv),
            // Only a bucket that is not there is created: any other failure (no quorum,
            // a timeout) is said, not answered by creating over it.
            Err(e) if e.to_string().contains("not found") => js
                .create_key_value(cfg.clone())
                .await
                .map_err(|e| js_err(what)(e.to_string())),
            Err(e) => Err(js_err(what)(e.to_string())),
        }
    })
    .await?;
    keep_config(
        js,
        &format!("KV_{}", cfg.bucket),
        cfg.num_replicas,
        cfg.max_age,
    )
    .await;
    Ok(kv)
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
    found(
        stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject)
            .send()
            .await,
        what,
    )
}

/// The last message on `subject`, from the stream's leader, if any.
pub(crate) async fn last_on_subject(
    stream: &async_nats::jetstream::stream::Stream,
    subject: &str,
    what: &'static str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ClusterError> {
    found(stream.get_last_raw_message_by_subject(subject).await, what)
}

/// The message at stream position `seq`, from the stream's leader, if it is still stored.
pub(crate) async fn at_position(
    stream: &async_nats::jetstream::stream::Stream,
    seq: u64,
    what: &'static str,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, ClusterError> {
    found(stream.get_raw_message(seq).await, what)
}

pub(crate) fn js_err(what: &'static str) -> impl FnOnce(String) -> ClusterError {
    move |detail| ClusterError::JetStream { what, detail }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_credentials_in_messages() {
        for (url, shown) in [
            ("nats://user:secret@n1:4222", "nats://***@n1:4222"),
            ("nats://n1:4222", "nats://n1:4222"),
            ("tls://a:b@c@n2:4222", "tls://***@n2:4222"),
            ("user:pw@host:1", "***@host:1"),
        ] {
            assert_eq!(super::redacted(url), shown);
        }
    }
}
