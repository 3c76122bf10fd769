//! The collector's errors, each mapped once to its HTTP status and gRPC code.

use std::time::Duration;

/// A failed file, store or encoding operation, as the write side reports it.
pub(crate) fn storage(error: impl std::fmt::Display) -> Error {
    Error::Storage(error.to_string())
}

/// Errors of the ingest path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The payload cannot be decoded: malformed protobuf or JSON, a bad gzip stream.
    #[error("{0}")]
    InvalidInput(String),
    /// A content type other than OTLP's protobuf or JSON.
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    /// A content encoding other than gzip or identity.
    #[error("unsupported content encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    /// The body, after decompression, is over the configured limit.
    #[error("request body is larger than the limit of {limit} bytes (counted after decompression)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A limit on buffered rows, memory or WAL size is reached: retry after a flush.
    #[error("apiscope is at a limit: {what}; retry later")]
    Overloaded {
        /// Which limit, with its value.
        what: String,
    },
    /// The daemon is shutting down and takes no more data.
    #[error("apiscope is shutting down; retry against a running instance")]
    ShuttingDown,
    /// Writing Parquet or renaming files failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// Another process has the data directory open (see `owner`).
    #[error("{0}")]
    InUse(String),
    /// A bug: the task handling the request panicked. Sending the same request again would
    /// hit it again, so this is not retryable.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result` with the collector's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long clients are told to wait before retrying a refused request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Error {
    /// The HTTP status answering this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) => 400,
            Error::UnsupportedMediaType(_) => 415,
            Error::UnsupportedEncoding(_) => 415,
            Error::TooLarge { .. } => 413,
            Error::Overloaded { .. } => 503,
            Error::ShuttingDown => 503,
            Error::Storage(_) | Error::InUse(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The gRPC code answering this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::InvalidInput(_) => tonic::Code::InvalidArgument,
            Error::UnsupportedMediaType(_) => tonic::Code::InvalidArgument,
            Error::UnsupportedEncoding(_) => tonic::Code::Unimplemented,
            Error::TooLarge { .. } => tonic::Code::ResourceExhausted,
            Error::Overloaded { .. } => tonic::Code::Unavailable,
            Error::ShuttingDown => tonic::Code::Unavailable,
            Error::Storage(_) | Error::InUse(_) => tonic::Code::Unavailable,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    /// When the client should retry, for errors that are worth retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Overloaded { .. } | Error::ShuttingDown | Error::Storage(_) => Some(RETRY_AFTER),
            Error::InvalidInput(_)
            | Error::UnsupportedMediaType(_)
            | Error::UnsupportedEncoding(_)
            | Error::TooLarge { .. }
            | Error::InUse(_)
            | Error::Internal(_) => None,
        }
    }

    /// The error answering a request whose task failed: a panic is a bug, logged here once
    /// with its message, and answered as internal (never as a retryable storage error, which
    /// exporters would send again forever).
    pub fn from_task(failed: tokio::task::JoinError) -> Error {
        let message = match failed.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned()),
            Err(failed) => failed.to_string(),
        };
        tracing::error!(panic = %message, "a request's task panicked; this is a bug, please report it");
        Error::Internal(format!(
            "the request's task failed ({message}); this is a bug in apiscope"
        ))
    }
}
