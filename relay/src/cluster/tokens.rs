//! Mesh-creation tokens on the cluster, so that every relay node admits by the same tokens
//! and a token's uses are spent once over all nodes: what `relay.db`'s `creation_tokens`
//! table is for one relay ([`crate::admission`] keeps the rules; this is where they are
//! kept).
//!
//! Layout: bucket `<P>_TOKENS` (KV, replicated), one entry `t.<id>` per token (its id is
//! the token's first characters, so a creation finds it from the token alone) holding the
//! token's SHA-256 (never the token), uses, expiry, note and times. Issuing creates the
//! entry (an id drawn twice is refused by the create, and drawn again); spending a use
//! and revoking compare-and-set it, so two nodes spending the last use at once admit one.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use claudemesh_schema::crypto::hex;
use serde::{Deserialize, Serialize};

use super::{ClusterError, counts, entries_under, js_err};
use crate::admission::{TokenInfo, TokenRow};

/// Attempts at a compare-and-set that keeps losing to other nodes.
const MAX_TRIES: usize = 32;

#[derive(Serialize, Deserialize)]
struct TokenValue {
    hash: String,
    max_uses: u32,
    uses: u32,
    expires_at: Option<i64>,
    note: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TokenValue {
    fn info(&self, id: &str) -> TokenInfo {
        TokenInfo {
            id: id.to_string(),
            max_uses: self.max_uses,
            uses: self.uses,
            expires_at: self.expires_at,
            note: self.note.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
        }
    }

    fn row(&self) -> TokenRow {
        self.info("").row()
    }
}

fn key(id: &str) -> String {
    format!("t.{id}")
}

fn parse(v: &[u8]) -> Result<TokenValue, ClusterError> {
    serde_json::from_slice(v).map_err(|e| ClusterError::Corrupt {
        what: "creation token",
        detail: e.to_string(),
    })
}

fn encode(v: &TokenValue) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The cluster's creation tokens.
#[derive(Debug, Clone)]
pub struct ClusterTokens {
    client: async_nats::Client,
    kv: kv::Store,
}

/// A token's entry as found: its value and revision.
type Found = Option<(TokenValue, u64)>;

impl ClusterTokens {
    /// Open (creating it when missing) the deployment `prefix`'s token bucket.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        let kv = super::bucket(
            &js,
            kv::Config {
                bucket: format!("{}_TOKENS", prefix.to_uppercase()),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
            "creating the creation-token bucket",
        )
        .await?;
        super::until_bucket_ready(&kv).await?;
        Ok(Self { client, kv })
    }

    async fn find(&self, id: &str) -> Result<Found, ClusterError> {
        let e = self
            .kv
            .entry(key(id))
            .await
            .map_err(|e| js_err("reading a creation token")(e.to_string()))?;
        match e {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((parse(&e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Store a new token `id` (with `hash`); `false` when the id is taken.
    pub(crate) async fn issue(
        &self,
        id: &str,
        hash: &[u8; 32],
        info: &TokenInfo,
    ) -> Result<bool, ClusterError> {
        let v = TokenValue {
            hash: hex(hash),
            max_uses: info.max_uses,
            uses: 0,
            expires_at: info.expires_at,
            note: info.note.clone(),
            created_at: info.created_at,
            last_used_at: None,
            revoked_at: None,
        };
        match self.kv.create(key(id), encode(&v)).await {
            Ok(_) => Ok(true),
            Err(e) if counts::lost_create(&e) => Ok(false),
            Err(e) => Err(js_err("issuing a creation token")(e.to_string())),
        }
    }

    /// Every token, oldest first.
    pub(crate) async fn list(&self) -> Result<Vec<TokenInfo>, ClusterError> {
        let mut out = Vec::new();
        for (k, v, _) in entries_under(&self.client, &self.kv, "t.").await? {
            let id = k.strip_prefix("t.").unwrap_or(&k);
            out.push(parse(&v)?.info(id));
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Revoke token `id` (the first time stands); `None`: no such token.
    pub(crate) async fn revoke(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<TokenInfo>, ClusterError> {
        for _ in 0..MAX_TRIES {
            let Some((mut v, revision)) = self.find(id).await? else {
                return Ok(None);
            };
            if v.revoked_at.is_some() {
                return Ok(Some(v.info(id)));
            }
            v.revoked_at = Some(now);
            match self.kv.update(key(id), encode(&v), revision).await {
                Ok(_) => return Ok(Some(v.info(id))),
                Err(e) if counts::lost_update(&e) => continue,
                Err(e) => return Err(js_err("revoking a creation token")(e.to_string())),
            }
        }
        Err(js_err("revoking a creation token")(
            "the token keeps changing; try again".into(),
        ))
    }

    /// Check token `id` against `hash` and, if `verdict` admits it, spend one use: the
    /// stored row as it was (`None`: no such token, or another token's hash).
    pub(crate) async fn spend(
        &self,
        id: &str,
        hash: &[u8; 32],
        now: i64,
        verdict: impl Fn(&TokenRow) -> bool,
    ) -> Result<Option<TokenRow>, ClusterError> {
        let hash = hex(hash);
        for _ in 0..MAX_TRIES {
            let Some((mut v, revision)) = self.find(id).await? else {
                return Ok(None);
            };
            if v.hash != hash {
                return Ok(None);
            }
            let row = v.row();
            if !verdict(&row) {
                return Ok(Some(row));
            }
            v.uses += 1;
            v.last_used_at = Some(now);
            match self.kv.update(key(id), encode(&v), revision).await {
                Ok(_) => return Ok(Some(row)),
                Err(e) if counts::lost_update(&e) => continue,
                Err(e) => return Err(js_err("spending a creation token")(e.to_string())),
            }
        }
        Err(js_err("spending a creation token")(
            "the token keeps changing; try again".into(),
        ))
    }
}
