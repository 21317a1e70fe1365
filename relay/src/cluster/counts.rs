//! Counts every node shares, for quotas that hold over the whole cluster rather than per
//! node: a pair (items, bytes) in one KV entry, changed only by compare-and-set, so two
//! nodes admitting at once both count against the same number and one of them re-reads
//! it. A node that dies between its write and its count leaves a count wrong (high, so it
//! refuses early and never admits too much); a sweep that recounts from what is stored
//! mends it with [`mend`], if nothing changed the count meanwhile.

use async_nats::jetstream::kv;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

use super::{ClusterError, entries_under, js_err};

/// Items and bytes.
pub type Pair = (u64, u64);

/// Most compare-and-set attempts on one count before it is given up as contended.
const MAX_TRIES: usize = 64;

/// A count as stored (a garbled one reads as empty, and is mended).
pub fn parse(v: &[u8]) -> Pair {
    let text = std::str::from_utf8(v).unwrap_or("");
    let mut p = text.split(' ').map(|x| x.parse::<u64>().ok());
    match (p.next().flatten(), p.next().flatten()) {
        (Some(n), Some(b)) => (n, b),
        _ => (0, 0),
    }
}

fn encode((n, bytes): Pair) -> Bytes {
    Bytes::from(format!("{n} {bytes}"))
}

/// Another writer created the entry first. A clustered stream answers the losing create
/// with 10164, "wrong last sequence", which this client version reports as another kind
/// of error than `AlreadyExists`.
pub fn lost_create(err: &kv::CreateError) -> bool {
    err.kind() == kv::CreateErrorKind::AlreadyExists
        || err.to_string().contains("wrong last sequence")
}

/// Another writer changed the entry first (compare-and-set lost).
pub fn lost_update(err: &kv::UpdateError) -> bool {
    err.kind() == kv::UpdateErrorKind::WrongLastRevision
        || err.to_string().contains("wrong last sequence")
}

/// Whether `count` stays within `limit` (`0` in either part: no limit on it).
pub fn within(count: Pair, limit: Pair) -> bool {
    (limit.0 == 0 || count.0 <= limit.0) && (limit.1 == 0 || count.1 <= limit.1)
}

/// Add `delta` (negative: take away, never below zero) to the count at `key`. With
/// `limit`, only if the result stays within it: `false` when it would not, and nothing
/// changed.
pub async fn add(
    kv: &kv::Store,
    key: &str,
    delta: (i64, i64),
    limit: Option<Pair>,
) -> Result<bool, ClusterError> {
    let what = "counting against a quota";
    for _ in 0..MAX_TRIES {
        let held = kv
            .entry(key)
            .await
            .map_err(|e| js_err(what)(e.to_string()))?;
        let now = held
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| parse(&e.value))
            .unwrap_or_default();
        let next = (
            now.0.saturating_add_signed(delta.0),
            now.1.saturating_add_signed(delta.1),
        );
        if limit.is_some_and(|l| !within(next, l)) {
            return Ok(false);
        }
        let written = match &held {
            Some(e) => match kv.update(key, encode(next), e.revision).await {
                Ok(_) => true,
                Err(err) if lost_update(&err) => false,
                Err(err) => return Err(js_err(what)(err.to_string())),
            },
            None => match kv.create(key, encode(next)).await {
                Ok(_) => true,
                Err(err) if lost_create(&err) => false,
                Err(err) => return Err(js_err(what)(err.to_string())),
            },
        };
        if written {
            return Ok(true);
        }
    }
    Err(js_err(what)("the count keeps changing; try again".into()))
}

/// Take `delta` off the count at `key`, logging a failure: the count stays high (refusing
/// early, never admitting too much) until a sweep mends it.
pub async fn take(kv: &kv::Store, key: &str, delta: Pair) {
    if let Err(e) = add(kv, key, (-(delta.0 as i64), -(delta.1 as i64)), None).await {
        tracing::warn!(key, error = %e, "cannot lower a shared count; the next sweep mends it");
    }
}

/// The counts under `prefix`: key → (count, revision), read before a recount.
pub async fn under(
    client: &async_nats::Client,
    kv: &kv::Store,
    prefix: &str,
) -> Result<HashMap<String, (Pair, u64)>, ClusterError> {
    Ok(entries_under(client, kv, prefix)
        .await?
        .into_iter()
        .map(|(k, v, rev)| (k, (parse(&v), rev)))
        .collect())
}

/// The count at `key` alone, as [`under`] reads them.
pub async fn at(kv: &kv::Store, key: &str) -> Result<HashMap<String, (Pair, u64)>, ClusterError> {
    let held = kv
        .entry(key)
        .await
        .map_err(|e| js_err("reading a shared count")(e.to_string()))?;
    Ok(held
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| (key.to_string(), (parse(&e.value), e.revision)))
        .into_iter()
        .collect())
}

/// Set each count in `before` or `recounted` to what was recounted (zero where nothing
/// was), where it differs and nothing changed it since `before` was read. The keys left
/// alone because they changed meanwhile (or a write failed): mended at a quieter sweep.
pub async fn mend(
    kv: &kv::Store,
    before: &HashMap<String, (Pair, u64)>,
    recounted: &HashMap<String, Pair>,
) -> HashSet<String> {
    let keys: HashSet<&String> = before.keys().chain(recounted.keys()).collect();
    let mut left = HashSet::new();
    for key in keys {
        let want = recounted.get(key).copied().unwrap_or_default();
        let done = match before.get(key) {
            Some((have, _)) if *have == want => true,
            Some((_, rev)) => kv.update(key, encode(want), *rev).await.is_ok(),
            None if want == (0, 0) => true,
            None => kv.create(key, encode(want)).await.is_ok(),
        };
        if !done {
            left.insert(key.clone());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_and_limits_hold_per_part() {
        let cases: [(&[u8], Pair); 4] = [
            (b"3 300", (3, 300)),
            (b"0 0", (0, 0)),
            (b"garbled", (0, 0)),
            (b"7", (0, 0)),
        ];
        for (v, want) in cases {
            assert_eq!(parse(v), want, "{v:?}");
        }
        let limits = [
            ((10, 100), (0, 0), true),
            ((10, 100), (10, 0), true),
            ((11, 100), (10, 0), false),
            ((1, 101), (0, 100), false),
            ((1, 100), (5, 100), true),
        ];
        for (count, limit, ok) in limits {
            assert_eq!(within(count, limit), ok, "{count:?} within {limit:?}");
        }
    }
}
