//! The one error type of the core. Variants are what callers act on: the API maps
//! each to an HTTP status, the services retry on `Conflict`.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something malformed or out of range (HTTP 400).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },

    /// No such pool, worker, eval or alloc (HTTP 404).
    #[error("{0} not found")]
    NotFound(String),

    /// The pool was disbanded: it takes no new workers or evals (HTTP 409).
    #[error("pool {0} is disbanded")]
    Disbanded(String),

    /// The worker's TTL ran out; it must register again (HTTP 410).
    #[error("worker {0} expired; register again")]
    Expired(String),

    /// A conditional write lost: someone else changed the record first. Services
    /// re-read and retry; it reaches the API only when retrying makes no sense (HTTP 409).
    #[error("conflict: {0}")]
    Conflict(String),

    /// An idempotency key reused with a different request (HTTP 409): the eval it
    /// names was submitted with other values.
    #[error("idempotency key {0} was used for a different eval; use a new key")]
    IdempotencyMismatch(String),

    /// Missing or wrong credentials (HTTP 401).
    #[error("missing or invalid token")]
    Unauthorized,

    /// Good credentials, wrong scope (HTTP 403).
    #[error("{0}")]
    Forbidden(String),

    /// The queue was deleted (its pool disbanded or its worker removed).
    #[error("queue {0} does not exist")]
    QueueGone(String),

    /// The backend failed: I/O, SQL, an AWS call. Never the caller's fault (HTTP 5xx).
    #[error("backend: {0}")]
    Backend(String),
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid { code, message: message.into() }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        Error::NotFound(what.to_string())
    }

    pub fn backend(context: impl fmt::Display, err: impl fmt::Display) -> Self {
        Error::Backend(format!("{context}: {err}"))
    }

    /// A short machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { code, .. } => code,
            Error::NotFound(_) => "not_found",
            Error::Disbanded(_) => "pool_disbanded",
            Error::Expired(_) => "worker_expired",
            Error::Conflict(_) => "conflict",
            Error::IdempotencyMismatch(_) => "idempotency_mismatch",
            Error::Unauthorized => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::QueueGone(_) => "queue_gone",
            Error::Backend(_) => "backend_error",
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict(_))
    }
}
