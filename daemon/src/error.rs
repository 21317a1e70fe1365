//! What a daemon operation can fail with. Domain code returns [`Error`]; only `rpc` turns
//! it into a JSON-RPC error code (the one mapping is [`Error::code`]).

use claudemesh_schema::ipc::codes;

use crate::store::StoreError;

/// A failed daemon operation. The message says what failed and what to do next.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Error {
    /// A mesh, peer, invite, session or message does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name or prefix matched more than one thing.
    #[error("{0}")]
    Ambiguous(String),
    /// An argument has the right type but a wrong value.
    #[error("{0}")]
    Invalid(String),
    /// The parameters do not fit the method.
    #[error("{0}")]
    Params(String),
    /// No such method.
    #[error("{0}")]
    UnknownMethod(String),
    /// The operation needs the relay and cannot reach it.
    #[error("{0}")]
    Relay(String),
    /// An invite was refused.
    #[error("{0}")]
    Invite(String),
    /// Not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Gave up waiting.
    #[error("{0}")]
    Timeout(String),
    /// Conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// The daemon itself failed (its store, a task).
    #[error("daemon error: {0}")]
    Internal(String),
}

impl From<claudemesh_schema::names::NameError> for Error {
    fn from(e: claudemesh_schema::names::NameError) -> Self {
        Self::Invalid(e.0)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl Error {
    /// The stable IPC code of this error (README: exit codes follow from these).
    pub(crate) fn code(&self) -> i32 {
        match self {
            Self::NotFound(_) => codes::NOT_FOUND,
            Self::Ambiguous(_) => codes::AMBIGUOUS,
            Self::Invalid(_) => codes::INVALID_ARGUMENT,
            Self::Params(_) => codes::INVALID_PARAMS,
            Self::UnknownMethod(_) => codes::METHOD_NOT_FOUND,
            Self::Relay(_) => codes::RELAY_UNAVAILABLE,
            Self::Invite(_) => codes::INVITE_REFUSED,
            Self::Forbidden(_) => codes::FORBIDDEN,
            Self::Timeout(_) => codes::TIMEOUT,
            Self::Conflict(_) => codes::CONFLICT,
            Self::Internal(_) => codes::INTERNAL,
        }
    }

    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub(crate) fn ambiguous(m: impl Into<String>) -> Self {
        Self::Ambiguous(m.into())
    }
    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub(crate) fn relay(m: impl Into<String>) -> Self {
        Self::Relay(m.into())
    }
    pub(crate) fn invite(m: impl Into<String>) -> Self {
        Self::Invite(m.into())
    }
    pub(crate) fn forbidden(m: impl Into<String>) -> Self {
        Self::Forbidden(m.into())
    }
    pub(crate) fn timeout(m: impl Into<String>) -> Self {
        Self::Timeout(m.into())
    }
    pub(crate) fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }
}
