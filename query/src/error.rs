//! The query side's errors, each mapped once to an HTTP status.

use datafusion::error::DataFusionError;

/// Errors answering a query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL does not parse or does not plan: unknown table or column, wrong types.
    #[error("{0}")]
    Sql(String),
    /// The statement would change something; apiscope's SQL is read-only.
    #[error("apiscope's SQL is read-only: only SELECT, WITH, EXPLAIN and SHOW are allowed ({0})")]
    ReadOnly(String),
    /// The query failed while running, for a reason of its own (a bad cast, say).
    #[error("query failed: {0}")]
    Execution(String),
    /// The query needed more memory, time or result rows than it may use.
    #[error("query refused: {0}")]
    ResourcesExhausted(String),
    /// Too many queries are running; this one may be retried shortly.
    #[error("query refused: {0}")]
    Busy(String),
    /// The request itself is malformed (not the SQL in it).
    #[error("{0}")]
    BadRequest(String),
    /// Reading the store failed, or a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result` with the query side's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status answering this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Sql(_) => 400,
            Error::ReadOnly(_) => 403,
            Error::Execution(_) => 422,
            // Well-formed, but over a limit: sending it again will not help.
            Error::ResourcesExhausted(_) => 422,
            Error::Busy(_) => 503,
            Error::BadRequest(_) => 400,
            Error::Internal(_) => 500,
        }
    }

    /// The `outcome` label of the query metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::Sql(_) | Error::BadRequest(_) => "invalid",
            Error::ReadOnly(_) => "refused",
            Error::Execution(_) | Error::Internal(_) => "failed",
            Error::ResourcesExhausted(_) => "over_limit",
            Error::Busy(_) => "busy",
        }
    }

    /// A short title for the problem type.
    pub fn title(&self) -> &'static str {
        match self {
            Error::Sql(_) => "invalid SQL",
            Error::ReadOnly(_) => "read-only",
            Error::Execution(_) => "query failed",
            Error::ResourcesExhausted(_) => "query limit reached",
            Error::Busy(_) => "too many queries",
            Error::BadRequest(_) => "bad request",
            Error::Internal(_) => "internal error",
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        let root = error.find_root();
        let message = match root {
            DataFusionError::SQL(parser_error, _) => parser_error.to_string(),
            other => other.message().into_owned(),
        };
        match root {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => Error::Sql(message),
            DataFusionError::ResourcesExhausted(_) => Error::ResourcesExhausted(message),
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
                Error::Execution(message)
            }
            _ => Error::Internal(error.to_string()),
        }
    }
}
