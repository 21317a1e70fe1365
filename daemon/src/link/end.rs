//! Why a relay connection ended, and what the link does next.

use claudemesh_relay::{ConnectError, transport::ReadError};
use claudemesh_schema::wire::ErrorCode;

/// Why a link's connection to its relay ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum End {
    /// The mesh was left or the daemon stops.
    #[error("the link stopped")]
    Stopped,
    /// `claudemesh debug link down`.
    #[error("link held down (`claudemesh debug link up` resumes)")]
    HeldDown,
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("relay went silent")]
    Silent,
    #[error("relay closed the connection")]
    Closed,
    #[error("connection lost: {0}")]
    Io(#[from] ReadError),
    #[error("bad frame from relay: {0}")]
    BadFrame(String),
    #[error("cannot encode a frame: {0}")]
    Encode(String),
    #[error("relay answered hello with an unexpected frame")]
    UnexpectedHello,
    #[error("relay refused the link ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("relay presented a different mesh genesis than ours")]
    WrongGenesis,
    #[error("this member was removed from the mesh")]
    Removed,
    #[error("relay sent an invalid roster entry: {0}")]
    InvalidRoster(String),
    /// The relay hides, reorders, replays or rewrites roster entries: it is not trusted
    /// for this mesh until it shows the roster this daemon holds.
    #[error("relay is not trustworthy for this mesh: {0}")]
    HostileRoster(String),
    #[error("relay asked to retry a shared-state write later ({0})")]
    OpsRetry(ErrorCode),
    /// Syncing the shared-state log failed (the store, or the log's own rules).
    #[error("{0}")]
    Ops(String),
    #[error("cannot read the outbox: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The mesh's relay moved (a signed `set_relay` record): dial the new one.
    #[error("the mesh moved to another relay address")]
    Moved,
}

/// What the link does after an [`End`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing: the link is over.
    Stop,
    /// Reconnect after the usual backoff.
    Retry,
    /// Reconnect at once, with the backoff reset (the relay changed).
    Now,
    /// The relay refused us for a reason that will not fix itself soon: wait long.
    Later,
}

impl End {
    pub(crate) fn next(&self) -> Next {
        match self {
            Self::Stopped => Next::Stop,
            Self::Moved => Next::Now,
            Self::WrongGenesis | Self::Removed | Self::HostileRoster(_) => Next::Later,
            Self::Refused {
                code:
                    ErrorCode::NotAMember
                    | ErrorCode::UnknownMesh
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::BadSignature,
                ..
            } => Next::Later,
            _ => Next::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_each_end() {
        let refused = |code| End::Refused {
            code,
            message: String::new(),
        };
        let cases = [
            (End::Stopped, Next::Stop),
            (End::Moved, Next::Now),
            (End::HeldDown, Next::Retry),
            (End::Silent, Next::Retry),
            (End::Removed, Next::Later),
            (End::WrongGenesis, Next::Later),
            (End::HostileRoster(String::new()), Next::Later),
            (refused(ErrorCode::NotAMember), Next::Later),
            (refused(ErrorCode::BadSignature), Next::Later),
            (refused(ErrorCode::RateLimited), Next::Retry),
            (refused(ErrorCode::Internal), Next::Retry),
            (End::OpsRetry(ErrorCode::RateLimited), Next::Retry),
            (End::OpsRetry(ErrorCode::QuotaExceeded), Next::Retry),
        ];
        for (end, next) in cases {
            assert_eq!(end.next(), next, "{end}");
        }
    }
}
