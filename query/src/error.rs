//! The query side's errors, each mapped once to an HTTP status and a SQLSTATE.

use datafusion::error::DataFusionError;

/// Errors answering a query, and refusing a client. Each maps here, once, to what every
/// front-end answers: an HTTP status, a PostgreSQL SQLSTATE, a metrics outcome.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL does not parse.
    #[error("{0}")]
    Syntax(String),
    /// The SQL does not plan: unknown table, column or function, wrong types.
    #[error("{0}")]
    Sql(String),
    /// The SQL asks for something the engine does not do.
    #[error("{0}")]
    Unsupported(String),
    /// The statement would change something; apiscope's SQL is read-only.
    #[error("apiscope's SQL is read-only: only SELECT, WITH, EXPLAIN and SHOW are allowed ({0})")]
    ReadOnly(String),
    /// The query failed while running, for a reason of its own (a bad cast, say).
    #[error("query failed: {0}")]
    Execution(String),
    /// The query needed more memory than it may use, or was cancelled to keep the daemon
    /// under its memory ceiling.
    #[error("query refused: {0}")]
    ResourcesExhausted(String),
    /// The query ran longer than `query_timeout`.
    #[error("query refused: {0}")]
    TimedOut(String),
    /// The answer has more rows than `max_result_rows`.
    #[error("query refused: {0}")]
    TooManyRows(String),
    /// Too many queries are running; this one may be retried shortly.
    #[error("query refused: {0}")]
    Busy(String),
    /// The caller sends statements faster than its rate limit.
    #[error("{0}")]
    RateLimited(String),
    /// The request itself is malformed (not the SQL in it).
    #[error("{0}")]
    BadRequest(String),
    /// The client did not prove who it is: a wrong password or token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The client connected in a way this server does not accept (without TLS, say).
    #[error("{0}")]
    Refused(String),
    /// The listener holds as many connections as it may.
    #[error("{0}")]
    TooManyConnections(String),
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
            Error::Syntax(_) | Error::Sql(_) | Error::Unsupported(_) | Error::BadRequest(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::ReadOnly(_) | Error::Refused(_) => 403,
            Error::Execution(_) => 422,
            // Well-formed, but over a limit: sending it again will not help.
            Error::ResourcesExhausted(_) | Error::TimedOut(_) | Error::TooManyRows(_) => 422,
            Error::RateLimited(_) => 429,
            Error::Busy(_) | Error::TooManyConnections(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The SQLSTATE answering this error on the PostgreSQL protocol, the code PostgreSQL
    /// itself gives the same condition.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Syntax(_) => "42601",             // syntax_error
            Error::Sql(_) => "42000",                // syntax_error_or_access_rule_violation
            Error::Unsupported(_) => "0A000",        // feature_not_supported
            Error::ReadOnly(_) => "25006",           // read_only_sql_transaction
            Error::Execution(_) => "22000",          // data_exception
            Error::ResourcesExhausted(_) => "53200", // out_of_memory
            Error::TimedOut(_) => "57014",           // query_canceled
            Error::TooManyRows(_) => "54000",        // program_limit_exceeded
            Error::Busy(_) => "53000",               // insufficient_resources
            Error::RateLimited(_) => "53400",        // configuration_limit_exceeded
            Error::BadRequest(_) => "22023",         // invalid_parameter_value
            Error::Unauthenticated(_) => "28P01",    // invalid_password
            Error::Refused(_) => "28000",            // invalid_authorization_specification
            Error::TooManyConnections(_) => "53300", // too_many_connections
            Error::Internal(_) => "XX000",           // internal_error
        }
    }

    /// The `outcome` label of the query metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::Syntax(_) | Error::Sql(_) | Error::Unsupported(_) | Error::BadRequest(_) => {
                "invalid"
            }
            Error::ReadOnly(_)
            | Error::Unauthenticated(_)
            | Error::Refused(_)
            | Error::RateLimited(_)
            | Error::TooManyConnections(_) => "refused",
            Error::Execution(_) | Error::Internal(_) => "failed",
            Error::ResourcesExhausted(_) | Error::TimedOut(_) | Error::TooManyRows(_) => {
                "over_limit"
            }
            Error::Busy(_) => "busy",
        }
    }

    /// A short title for the problem type.
    pub fn title(&self) -> &'static str {
        match self {
            Error::Syntax(_) | Error::Sql(_) => "invalid SQL",
            Error::Unsupported(_) => "not supported",
            Error::ReadOnly(_) => "read-only",
            Error::Execution(_) => "query failed",
            Error::ResourcesExhausted(_) | Error::TimedOut(_) | Error::TooManyRows(_) => {
                "query limit reached"
            }
            Error::Busy(_) => "too many queries",
            Error::RateLimited(_) => "rate limited",
            Error::BadRequest(_) => "bad request",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Refused(_) => "refused",
            Error::TooManyConnections(_) => "too many connections",
            Error::Internal(_) => "internal error",
        }
    }

    /// The `outcome` label of an error known by its SQLSTATE only (one the PostgreSQL
    /// front-end already sent), from the same mappings as [`Error::sqlstate`].
    pub fn outcome_of_sqlstate(code: &str) -> &'static str {
        let kinds = [
            Error::Syntax(String::new()),
            Error::Sql(String::new()),
            Error::Unsupported(String::new()),
            Error::ReadOnly(String::new()),
            Error::Execution(String::new()),
            Error::ResourcesExhausted(String::new()),
            Error::TimedOut(String::new()),
            Error::TooManyRows(String::new()),
            Error::Busy(String::new()),
            Error::RateLimited(String::new()),
            Error::BadRequest(String::new()),
            Error::Unauthenticated(String::new()),
            Error::Refused(String::new()),
            Error::TooManyConnections(String::new()),
        ];
        kinds
            .iter()
            .find(|kind| kind.sqlstate() == code)
            .map_or("failed", Error::outcome)
    }

    /// The error answering a query whose task failed: see [`Error::from_panic`].
    pub fn from_task(failed: tokio::task::JoinError) -> Error {
        match failed.try_into_panic() {
            Ok(panic) => Error::from_panic(panic),
            Err(failed) => Error::Internal(format!("the query's task failed: {failed}")),
        }
    }

    /// A panic is a bug: its message is logged once here, and the answer is internal.
    pub fn from_panic(panic: Box<dyn std::any::Any + Send>) -> Error {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        tracing::error!(panic = %message, "a query panicked; this is a bug, please report it");
        Error::Internal(format!(
            "the query panicked ({message}); this is a bug in apiscope"
        ))
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
            DataFusionError::SQL(..) => Error::Syntax(message),
            DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::Configuration(_) => Error::Sql(message),
            DataFusionError::NotImplemented(_) => Error::Unsupported(message),
            DataFusionError::ResourcesExhausted(_) => Error::ResourcesExhausted(message),
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
                Error::Execution(message)
            }
            _ => Error::Internal(error.to_string()),
        }
    }
}
