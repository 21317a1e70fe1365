//! Mesh-creation admission: who may create a mesh on this relay, and how often.
//!
//! What it is: the one decision the connection code asks for before it stores a new mesh
//! ([`Admission::admit`]): the relay's policy (`admission` in [`RelayConfig`]: `open`,
//! `token` or `allowlist`), the per-address creation limit (`create_rate_per_hour`,
//! `create_burst`; an IPv6 address counts by its /64), and the creation tokens an operator
//! issues, lists and revokes with `claudemesh-relay token …` ([`issue`], [`list`],
//! [`revoke`]).
//!
//! Tokens are `cmrt_` and 43 characters of base64url (256 random bits). `relay.db` (on a
//! relay cluster, the cluster's token bucket: [`crate::cluster::tokens`], the same rules,
//! so every node admits by the same tokens and a use is spent once) keeps only their
//! SHA-256, with uses, expiry and note (`creation_tokens`); the token itself is
//! printed once. The relay reads the table at check time through a connection of its own,
//! so a token issued or revoked while it runs counts from the next creation, without a
//! restart. Spending a use is one `IMMEDIATE` transaction that checks and counts together,
//! so concurrent creations never spend more uses than a token has. A use is spent when
//! admission passes, just before the mesh is stored; if storing the mesh then fails (a disk
//! error), that use is not given back.
//!
//! What it is not: not member authentication (hellos and rosters are), not the handshake
//! rate limit (`hub`), not the mesh count limit (`max_meshes`, checked before). It never logs
//! or repeats a token: refusals say what to do, not what was presented.

use claudemesh_schema::crypto::{MemberKey, random_bytes};
use claudemesh_schema::encoding::b64;
use claudemesh_schema::now_ms;
use claudemesh_schema::wire::{CreationToken, ErrorCode, RelayFrame};
use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{AdmissionMode, RelayConfig};
use crate::hub::lock;
use crate::limits::KeyedLimiter;
use crate::sqlite::{self, Durability, SqliteError};

/// What every creation token starts with.
pub const TOKEN_PREFIX: &str = "cmrt_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Characters of a token's id (the start of its random part).
const ID_LEN: usize = 8;
/// Longest note on a token.
const MAX_NOTE: usize = 200;

/// Managing creation tokens failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The relay database could not be opened or written.
    #[error("cannot use the creation tokens in {path}: {source}")]
    Db {
        /// `relay.db`.
        path: PathBuf,
        /// The cause.
        source: SqliteError,
    },
    /// No token has this id.
    #[error("no creation token has the id {0:?}; `claudemesh-relay token list` shows them")]
    UnknownId(String),
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The relay cluster's token bucket could not be reached or written.
    #[error("cannot use the creation tokens on the NATS cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// A token to issue.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Meshes it may create (at least 1).
    pub uses: u32,
    /// Valid for this long from now, seconds; `None` never expires.
    pub expires_in_secs: Option<u64>,
    /// The operator's note (who it is for).
    pub note: String,
}

/// A stored token as `token list` shows it: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The first characters after `cmrt_`.
    pub id: String,
    /// Meshes it may create in all.
    pub max_uses: u32,
    /// Meshes it created.
    pub uses: u32,
    /// Expiry, unix ms.
    pub expires_at: Option<i64>,
    /// The operator's note.
    pub note: String,
    /// Issued at, unix ms.
    pub created_at: i64,
    /// Last creation, unix ms.
    pub last_used_at: Option<i64>,
    /// Revoked at, unix ms.
    pub revoked_at: Option<i64>,
}

impl TokenInfo {
    /// A token `new` just issued at `now` as `id`.
    fn fresh(id: String, new: &NewToken, expires_at: Option<i64>, now: i64) -> Self {
        Self {
            id,
            max_uses: new.uses,
            uses: 0,
            expires_at,
            note: new.note.clone(),
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        }
    }

    /// Uses left.
    pub fn left(&self) -> u32 {
        self.max_uses.saturating_sub(self.uses)
    }

    /// `active`, `revoked`, `expired` or `used up`.
    pub fn status(&self, now: i64) -> &'static str {
        match verdict(Some(&self.row()), now) {
            Ok(()) => "active",
            Err(Why::TokenRevoked) => "revoked",
            Err(Why::TokenExpired) => "expired",
            Err(_) => "used up",
        }
    }

    pub(crate) fn row(&self) -> TokenRow {
        TokenRow {
            max_uses: self.max_uses,
            uses: self.uses,
            expires_at: self.expires_at,
            revoked: self.revoked_at.is_some(),
        }
    }
}

/// A token just issued: shown once, then only its hash is kept.
#[derive(Debug)]
pub struct Issued {
    /// The token.
    pub token: CreationToken,
    /// What `token list` will show of it.
    pub info: TokenInfo,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> TokenError + '_ {
    move |e| TokenError::Db {
        path: path.to_path_buf(),
        source: SqliteError::Query(e),
    }
}

fn open(path: &Path, durability: Durability) -> Result<Connection, TokenError> {
    sqlite::open(path, claudemesh_schema::migrations::RELAY, durability).map_err(|source| {
        TokenError::Db {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Check what a new token asks for: its expiry, unix ms.
fn expiry_of(new: &NewToken, now: i64) -> Result<Option<i64>, TokenError> {
    if new.uses == 0 {
        return Err(TokenError::Invalid("--uses must be at least 1".into()));
    }
    if new.note.chars().count() > MAX_NOTE || new.note.chars().any(char::is_control) {
        return Err(TokenError::Invalid(format!(
            "--note must be at most {MAX_NOTE} characters on one line"
        )));
    }
    Ok(match new.expires_in_secs {
        None => None,
        Some(s) => Some(
            i64::try_from(s)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .and_then(|ms| now.checked_add(ms))
                .ok_or_else(|| TokenError::Invalid("--expires is too far away".into()))?,
        ),
    })
}

/// A fresh token and its id (the token's start).
fn draw() -> (CreationToken, String) {
    let token = CreationToken::new(&format!(
        "{TOKEN_PREFIX}{}",
        b64(&random_bytes::<TOKEN_BYTES>())
    ));
    let id = token.expose()[TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + ID_LEN].to_string();
    (token, id)
}

/// The id of a token of a token's shape.
fn id_of(token: &CreationToken) -> Option<&str> {
    token
        .expose()
        .get(TOKEN_PREFIX.len()..TOKEN_PREFIX.len() + ID_LEN)
}

/// Issue a token into `db` (`relay.db`, created if missing): `uses` creations, expiring after
/// `expires_in_secs`. Safe while the relay runs.
pub fn issue(db: &Path, durability: Durability, new: &NewToken) -> Result<Issued, TokenError> {
    let now = now_ms();
    let expires_at = expiry_of(new, now)?;
    let conn = open(db, durability)?;
    // The id is the token's start; on the (2^-48) chance it is taken, draw again.
    for _ in 0..4 {
        let (token, id) = draw();
        let n = conn
            .execute(
                "INSERT INTO creation_tokens (id, hash, max_uses, expires_at, note, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![
                    id,
                    hash(&token).as_slice(),
                    new.uses,
                    expires_at,
                    new.note,
                    now
                ],
            )
            .map_err(db_err(db))?;
        if n == 1 {
            let info = TokenInfo::fresh(id, new, expires_at, now);
            return Ok(Issued { token, info });
        }
    }
    Err(TokenError::Invalid(
        "could not draw an unused token id; try again".into(),
    ))
}

/// [`issue`] on a relay cluster's token bucket.
pub async fn issue_on(
    tokens: &crate::cluster::tokens::ClusterTokens,
    new: &NewToken,
) -> Result<Issued, TokenError> {
    let now = now_ms();
    let expires_at = expiry_of(new, now)?;
    for _ in 0..4 {
        let (token, id) = draw();
        let info = TokenInfo::fresh(id.clone(), new, expires_at, now);
        if tokens.issue(&id, &hash(&token), &info).await? {
            return Ok(Issued { token, info });
        }
    }
    Err(TokenError::Invalid(
        "could not draw an unused token id; try again".into(),
    ))
}

/// [`list`] on a relay cluster's token bucket.
pub async fn list_on(
    tokens: &crate::cluster::tokens::ClusterTokens,
) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(tokens.list().await?)
}

/// [`revoke`] on a relay cluster's token bucket: every node refuses it from now on.
pub async fn revoke_on(
    tokens: &crate::cluster::tokens::ClusterTokens,
    id: &str,
) -> Result<TokenInfo, TokenError> {
    let id = valid_id(id)?;
    tokens
        .revoke(id, now_ms())
        .await?
        .ok_or_else(|| TokenError::UnknownId(id.to_string()))
}

fn valid_id(id: &str) -> Result<&str, TokenError> {
    let id = id.trim();
    let id = id.strip_prefix(TOKEN_PREFIX).unwrap_or(id);
    if id.len() != ID_LEN {
        return Err(TokenError::Invalid(format!(
            "a token id is the {ID_LEN} characters `claudemesh-relay token list` shows"
        )));
    }
    Ok(id)
}

const INFO_COLUMNS: &str =
    "id, max_uses, uses, expires_at, note, created_at, last_used_at, revoked_at";

fn info_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(0)?,
        max_uses: r.get(1)?,
        uses: r.get(2)?,
        expires_at: r.get(3)?,
        note: r.get(4)?,
        created_at: r.get(5)?,
        last_used_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

/// Every token in `db`, oldest first (none when the relay never ran there).
pub fn list(db: &Path) -> Result<Vec<TokenInfo>, TokenError> {
    if !db.exists() {
        return Ok(Vec::new());
    }
    let conn = open(db, Durability::Full)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {INFO_COLUMNS} FROM creation_tokens ORDER BY created_at, id"
        ))
        .map_err(db_err(db))?;
    let rows = stmt.query_map([], info_row).map_err(db_err(db))?;
    rows.collect::<Result<_, _>>().map_err(db_err(db))
}

/// Revoke the token with this id (`cmrt_` in front is accepted): no mesh is created with it
/// from now on, by a running relay too. Revoking twice keeps the first time.
pub fn revoke(db: &Path, id: &str) -> Result<TokenInfo, TokenError> {
    let id = valid_id(id)?;
    if !db.exists() {
        return Err(TokenError::UnknownId(id.to_string()));
    }
    let conn = open(db, Durability::Full)?;
    conn.execute(
        "UPDATE creation_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
        params![id, now_ms()],
    )
    .map_err(db_err(db))?;
    conn.query_row(
        &format!("SELECT {INFO_COLUMNS} FROM creation_tokens WHERE id = ?1"),
        [id],
        info_row,
    )
    .optional()
    .map_err(db_err(db))?
    .ok_or_else(|| TokenError::UnknownId(id.to_string()))
}

/// SHA-256 of the whole token: what `relay.db` keeps.
fn hash(token: &CreationToken) -> [u8; 32] {
    Sha256::digest(token.expose().as_bytes()).into()
}

/// A token's hash, if it has a token's shape (anything else cannot be one we issued).
fn token_hash(token: &CreationToken) -> Option<[u8; 32]> {
    let t = token.expose();
    let body = t.strip_prefix(TOKEN_PREFIX)?;
    (body.len() == 43
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| hash(token))
}

/// Why a creation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    TokenMissing,
    TokenUnknown,
    TokenRevoked,
    TokenExpired,
    TokenUsedUp,
    NotListed,
    /// Too many creations from this address; retry after this many ms.
    Limited(u64),
    /// The token table could not be read.
    Unavailable,
}

/// What the policy says before any token is looked up.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Admit,
    /// Admit if this token (by hash) has a use left.
    Spend([u8; 32]),
    Refuse(Why),
}

/// The policy decision for a creation by `owner`, presenting `token`.
fn decide(
    mode: AdmissionMode,
    allowed: &HashSet<MemberKey>,
    owner: &MemberKey,
    token: Option<&CreationToken>,
) -> Step {
    match mode {
        AdmissionMode::Open => Step::Admit,
        AdmissionMode::Allowlist if allowed.contains(owner) => Step::Admit,
        AdmissionMode::Allowlist => Step::Refuse(Why::NotListed),
        AdmissionMode::Token => match token {
            None => Step::Refuse(Why::TokenMissing),
            Some(t) => match token_hash(t) {
                Some(h) => Step::Spend(h),
                None => Step::Refuse(Why::TokenUnknown),
            },
        },
    }
}

/// A stored token's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenRow {
    pub(crate) max_uses: u32,
    pub(crate) uses: u32,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked: bool,
}

/// May a token in this state (`None`: not stored) create a mesh at `now`?
fn verdict(row: Option<&TokenRow>, now: i64) -> Result<(), Why> {
    let Some(r) = row else {
        return Err(Why::TokenUnknown);
    };
    if r.revoked {
        Err(Why::TokenRevoked)
    } else if r.expires_at.is_some_and(|e| now >= e) {
        Err(Why::TokenExpired)
    } else if r.uses >= r.max_uses {
        Err(Why::TokenUsedUp)
    } else {
        Ok(())
    }
}

/// Check a token and spend one use, in one transaction.
fn spend(conn: &mut Connection, hash: &[u8; 32], now: i64) -> rusqlite::Result<Result<(), Why>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row = tx
        .query_row(
            "SELECT max_uses, uses, expires_at, revoked_at IS NOT NULL
             FROM creation_tokens WHERE hash = ?1",
            [hash.as_slice()],
            |r| {
                Ok(TokenRow {
                    max_uses: r.get(0)?,
                    uses: r.get(1)?,
                    expires_at: r.get(2)?,
                    revoked: r.get(3)?,
                })
            },
        )
        .optional()?;
    let v = verdict(row.as_ref(), now);
    if v.is_ok() {
        tx.execute(
            "UPDATE creation_tokens SET uses = uses + 1, last_used_at = ?2 WHERE hash = ?1",
            params![hash.as_slice(), now],
        )?;
    }
    tx.commit()?;
    Ok(v)
}

/// A refused creation, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_ms: Option<u64>,
}

impl Refusal {
    /// The (non-fatal) error frame answering request `rid`.
    pub(crate) fn frame(&self, rid: u64) -> RelayFrame {
        RelayFrame::Error {
            rid: Some(rid),
            code: self.code,
            message: self.message.clone(),
            fatal: false,
            retry_ms: self.retry_ms,
        }
    }

    fn new(why: Why, owner: &MemberKey, per_hour: u32) -> Self {
        const ASK: &str = "ask the relay's operator for a new one (claudemesh-relay token create)";
        let refused = |message: String| Self {
            code: ErrorCode::CreationRefused,
            message,
            retry_ms: None,
        };
        match why {
            Why::TokenMissing => refused(
                "this relay requires a creation token to create a mesh; ask its operator for \
                 one (claudemesh-relay token create) and pass it with CLAUDEMESH_CREATE_TOKEN \
                 or --token-file"
                    .into(),
            ),
            Why::TokenUnknown => refused(format!(
                "this relay does not know that creation token (mistyped, or issued by another \
                 relay); {ASK}"
            )),
            Why::TokenRevoked => refused(format!("that creation token was revoked; {ASK}")),
            Why::TokenExpired => refused(format!("that creation token has expired; {ASK}")),
            Why::TokenUsedUp => refused(format!("that creation token has no uses left; {ASK}")),
            Why::NotListed => refused(format!(
                "this relay creates meshes only for the owner keys its operator allowed \
                 (allowed_owners), and {} is not one; ask its operator to add the key",
                owner.to_b64()
            )),
            Why::Limited(ms) => Self {
                code: ErrorCode::RateLimited,
                message: format!(
                    "this address created as many meshes as the relay allows ({per_hour} an \
                     hour); retry in {}",
                    span(ms)
                ),
                retry_ms: Some(ms),
            },
            Why::Unavailable => Self {
                code: ErrorCode::Internal,
                message: "the relay cannot check creation tokens right now; try again, and \
                          tell its operator if it persists"
                    .into(),
                retry_ms: None,
            },
        }
    }
}

fn span(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    if s < 120 {
        format!("{s} s")
    } else {
        format!("{} min", s.div_ceil(60))
    }
}

/// The relay's admission state: policy, per-address limiter, token table.
#[derive(Debug)]
pub(crate) struct Admission {
    mode: AdmissionMode,
    allowed: HashSet<MemberKey>,
    per_hour: u32,
    limiter: Option<Mutex<KeyedLimiter<IpAddr>>>,
    db: PathBuf,
    durability: Durability,
    conn: Arc<Mutex<Option<Connection>>>,
    /// On a relay cluster, the tokens are there, not in `relay.db`.
    cluster: Option<crate::cluster::tokens::ClusterTokens>,
}

impl Admission {
    /// From a validated config (an unparsable `allowed_owners` entry admits no one).
    pub(crate) fn new(cfg: &RelayConfig) -> Self {
        let limiter = (cfg.create_rate_per_hour > 0).then(|| {
            Mutex::new(KeyedLimiter::new(
                f64::from(cfg.create_rate_per_hour) / 3600.0,
                f64::from(cfg.create_burst.max(1)),
            ))
        });
        Self {
            mode: cfg.admission,
            allowed: cfg.owner_keys().unwrap_or_default().into_iter().collect(),
            per_hour: cfg.create_rate_per_hour,
            limiter,
            db: cfg.data_dir.join("relay.db"),
            durability: cfg.durability,
            conn: Arc::new(Mutex::new(None)),
            cluster: None,
        }
    }

    /// Admit by the tokens of a relay cluster (shared by every node).
    pub(crate) fn on_cluster(&mut self, tokens: crate::cluster::tokens::ClusterTokens) {
        self.cluster = Some(tokens);
    }

    /// May `owner`, connected from `ip` and presenting `token`, create a mesh now? Counts the
    /// attempt against the address's limit and, under `token`, spends one use of the token.
    pub(crate) async fn admit(
        &self,
        ip: IpAddr,
        owner: &MemberKey,
        token: Option<&CreationToken>,
    ) -> Result<(), Refusal> {
        let why = match self.check(ip, owner, token).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        // Policy refusals are few (the address limit comes first); limited ones may be many.
        if matches!(why, Why::Limited(_)) {
            tracing::debug!(%ip, "mesh creation rate limited");
        } else {
            tracing::info!(%ip, owner = %owner.short(), reason = ?why, "mesh creation refused");
        }
        Err(Refusal::new(why, owner, self.per_hour))
    }

    async fn check(
        &self,
        ip: IpAddr,
        owner: &MemberKey,
        token: Option<&CreationToken>,
    ) -> Result<(), Why> {
        if let Some(l) = &self.limiter
            && let Err(wait) = lock(l).take(&crate::limits::address_key(ip), Instant::now())
        {
            return Err(Why::Limited(wait.as_millis() as u64 + 1));
        }
        let hash = match decide(self.mode, &self.allowed, owner, token) {
            Step::Admit => return Ok(()),
            Step::Refuse(why) => return Err(why),
            Step::Spend(h) => h,
        };
        if let Some(tokens) = &self.cluster {
            let id = token.and_then(id_of).ok_or(Why::TokenUnknown)?;
            let now = now_ms();
            return match tokens
                .spend(id, &hash, now, |row| verdict(Some(row), now).is_ok())
                .await
            {
                Ok(row) => verdict(row.as_ref(), now),
                Err(e) => {
                    tracing::error!(error = %e, "cannot check a creation token");
                    Err(Why::Unavailable)
                }
            };
        }
        let (conn, db, durability) = (self.conn.clone(), self.db.clone(), self.durability);
        let spent = tokio::task::spawn_blocking(move || {
            let mut slot = lock(&conn);
            let mut c = match slot.take() {
                Some(c) => c,
                None => open(&db, durability)?,
            };
            let r = spend(&mut c, &hash, now_ms()).map_err(db_err(&db));
            // After a failure the connection is dropped and reopened next time, in case
            // the connection itself is what broke.
            if r.is_ok() {
                *slot = Some(c);
            }
            r
        })
        .await;
        match spent {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot check a creation token");
                Err(Why::Unavailable)
            }
            Err(e) => {
                tracing::error!(error = %e, "creation token check failed");
                Err(Why::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claudemesh_schema::crypto::MemberSecret;

    fn token() -> CreationToken {
        CreationToken::new(&format!("{TOKEN_PREFIX}{}", b64(&[7u8; 32])))
    }

    #[test]
    fn the_policy_decides_by_mode_owner_and_token_as_in_this_table() {
        let listed = MemberSecret::generate().public();
        let stranger = MemberSecret::generate().public();
        let allowed: HashSet<_> = [listed].into();
        let good = token();
        let bad = CreationToken::new("cmrt_short");
        let other = CreationToken::new(&format!("ghp_{}", b64(&[7u8; 32])));
        use AdmissionMode::*;
        let table: [(AdmissionMode, &MemberKey, Option<&CreationToken>, Step); 11] = [
            (Open, &stranger, None, Step::Admit),
            // A token is not needed, and not spent, where the policy does not ask for one.
            (Open, &stranger, Some(&good), Step::Admit),
            (Token, &stranger, None, Step::Refuse(Why::TokenMissing)),
            (Token, &listed, None, Step::Refuse(Why::TokenMissing)),
            (Token, &stranger, Some(&good), Step::Spend(hash(&good))),
            (
                Token,
                &stranger,
                Some(&bad),
                Step::Refuse(Why::TokenUnknown),
            ),
            (
                Token,
                &stranger,
                Some(&other),
                Step::Refuse(Why::TokenUnknown),
            ),
            (Allowlist, &listed, None, Step::Admit),
            (Allowlist, &stranger, None, Step::Refuse(Why::NotListed)),
            // A token does not get a key past the allowlist.
            (
                Allowlist,
                &stranger,
                Some(&good),
                Step::Refuse(Why::NotListed),
            ),
            (Allowlist, &listed, Some(&good), Step::Admit),
        ];
        for (i, (mode, owner, tok, want)) in table.into_iter().enumerate() {
            assert_eq!(decide(mode, &allowed, owner, tok), want, "row {i}");
        }
    }

    #[test]
    fn a_token_admits_while_stored_unrevoked_unexpired_and_with_uses_left() {
        let row = |max_uses, uses, expires_at, revoked| TokenRow {
            max_uses,
            uses,
            expires_at,
            revoked,
        };
        let now = 1_000;
        let table = [
            (None, Err(Why::TokenUnknown)),
            (Some(row(1, 0, None, false)), Ok(())),
            (Some(row(3, 2, Some(now + 1), false)), Ok(())),
            (Some(row(1, 1, None, false)), Err(Why::TokenUsedUp)),
            (Some(row(1, 0, Some(now), false)), Err(Why::TokenExpired)),
            (
                Some(row(1, 0, Some(now - 1), false)),
                Err(Why::TokenExpired),
            ),
            (Some(row(1, 0, None, true)), Err(Why::TokenRevoked)),
            // Revoked says more than expired or used up.
            (Some(row(1, 1, Some(0), true)), Err(Why::TokenRevoked)),
        ];
        for (i, (r, want)) in table.into_iter().enumerate() {
            assert_eq!(verdict(r.as_ref(), now), want, "row {i}");
        }
    }

    #[test]
    fn refusals_say_what_to_do_and_never_repeat_the_token() {
        let owner = MemberSecret::generate().public();
        for why in [
            Why::TokenMissing,
            Why::TokenUnknown,
            Why::TokenRevoked,
            Why::TokenExpired,
            Why::TokenUsedUp,
            Why::NotListed,
        ] {
            let r = Refusal::new(why, &owner, 10);
            assert_eq!(r.code, ErrorCode::CreationRefused);
            assert!(r.message.contains("operator"), "{why:?}: {}", r.message);
            assert!(!r.message.contains(token().expose()));
        }
        assert!(
            Refusal::new(Why::TokenMissing, &owner, 10)
                .message
                .contains("CLAUDEMESH_CREATE_TOKEN")
        );
        let r = Refusal::new(Why::Limited(360_000), &owner, 10);
        assert_eq!(
            (r.code, r.retry_ms),
            (ErrorCode::RateLimited, Some(360_000))
        );
        assert!(r.message.contains("retry in 6 min"), "{}", r.message);
    }

    #[test]
    fn issued_tokens_are_stored_by_hash_spent_once_per_use_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let new = NewToken {
            uses: 2,
            expires_in_secs: Some(3600),
            note: "for ada".into(),
        };
        let Issued { token, info } = issue(&db, Durability::Normal, &new).unwrap();
        assert!(token.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(token.expose().len(), TOKEN_PREFIX.len() + 43);
        assert!(token.expose()[TOKEN_PREFIX.len()..].starts_with(&info.id));
        let bytes = std::fs::read(&db).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("relay.db-wal")).unwrap_or_default();
        for b in [bytes, wal] {
            assert!(
                !b.windows(20).any(|w| w == &token.expose().as_bytes()[..20]),
                "the token itself is not stored"
            );
        }
        let h = token_hash(&token).unwrap();
        let mut c = open(&db, Durability::Normal).unwrap();
        let now = now_ms();
        assert_eq!(spend(&mut c, &h, now).unwrap(), Ok(()));
        assert_eq!(spend(&mut c, &h, now).unwrap(), Ok(()));
        assert_eq!(spend(&mut c, &h, now).unwrap(), Err(Why::TokenUsedUp));
        assert_eq!(
            spend(&mut c, &[0; 32], now).unwrap(),
            Err(Why::TokenUnknown)
        );
        let listed = list(&db).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].uses, listed[0].left()), (2, 0));
        assert_eq!(listed[0].note, "for ada");
        assert_eq!(listed[0].status(now), "used up");

        let other = issue(&db, Durability::Normal, &NewToken { uses: 1, ..new }).unwrap();
        let r = revoke(&db, &format!("{TOKEN_PREFIX}{}", other.info.id)).unwrap();
        assert_eq!(r.status(now), "revoked");
        let h = token_hash(&other.token).unwrap();
        assert_eq!(spend(&mut c, &h, now).unwrap(), Err(Why::TokenRevoked));
        assert!(matches!(
            revoke(&db, "AAAAAAAA"),
            Err(TokenError::UnknownId(_))
        ));
        assert!(matches!(revoke(&db, "short"), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn bad_token_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let new = |uses, note: &str| NewToken {
            uses,
            expires_in_secs: None,
            note: note.into(),
        };
        assert!(matches!(
            issue(&db, Durability::Normal, &new(0, "")),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            issue(&db, Durability::Normal, &new(1, "two\nlines")),
            Err(TokenError::Invalid(_))
        ));
        assert!(list(&dir.path().join("absent.db")).unwrap().is_empty());
    }
}
